"""Samplers: the filters keep exactly the tokens llama.cpp's definitions keep; sampling follows softmax."""

from __future__ import annotations

import numpy as np
import pytest

from llava_edge.sampling import make_logits_processors, make_sampler, repetition_penalty


def test_temperature_zero_is_argmax():
    rng = np.random.default_rng(0)
    sample = make_sampler(temp=0)
    for _ in range(50):
        logits = rng.normal(size=1000).astype(np.float32)
        assert sample(logits) == int(np.argmax(logits))


def support(sampler, logits, draws=3000) -> set[int]:
    return {sampler(logits) for _ in range(draws)}


def test_top_k_keeps_the_k_most_likely():
    logits = np.array([0.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    s = make_sampler(temp=100.0, top_k=3, top_p=1.0, min_p=0.0, seed=1)
    assert support(s, logits) == {1, 2, 3}


def test_top_p_keeps_smallest_prefix_reaching_mass():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    s = make_sampler(temp=1.0, top_k=0, top_p=0.79, min_p=0.0, seed=2)
    assert support(s, np.log(probs)) == {0, 1}  # 0.5 + 0.3 reaches 0.79
    s = make_sampler(temp=1.0, top_k=0, top_p=0.81, min_p=0.0, seed=2)
    assert support(s, np.log(probs)) == {0, 1, 2}


def test_min_p_drops_tokens_below_fraction_of_top():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    s = make_sampler(temp=1.0, top_k=0, top_p=1.0, min_p=0.25, seed=3)  # threshold 0.125
    assert support(s, np.log(probs)) == {0, 1, 2}


def test_sampling_follows_the_tempered_softmax():
    logits = np.array([1.0, 0.5, 0.0, -1.0])
    temp = 0.7
    s = make_sampler(temp=temp, top_k=0, top_p=1.0, min_p=0.0, seed=4)
    n = 20000
    counts = np.bincount([s(logits) for _ in range(n)], minlength=4)
    expected = np.exp(logits / temp) / np.exp(logits / temp).sum() * n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 16.3  # p = 0.001 for 3 degrees of freedom


def test_seed_makes_sampling_reproducible():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(20, 500))
    a, b = make_sampler(seed=7), make_sampler(seed=7)
    assert [a(x) for x in logits] == [b(x) for x in logits]
    c = make_sampler(seed=8)
    assert [a(x) for x in logits] != [c(x) for x in logits]


def test_repetition_penalty_matches_llama_cpp_rule():
    logits = np.array([2.0, -2.0, 1.0, -1.0])
    out = repetition_penalty(2.0)([0, 1, 1], logits)
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0, -1.0])
    assert make_logits_processors(1.0) == []
    np.testing.assert_allclose(logits, [2.0, -2.0, 1.0, -1.0])  # input untouched


@pytest.mark.parametrize("kwargs", [dict(temp=-1), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=1.0)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        make_sampler(**kwargs)
