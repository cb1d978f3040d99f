"""The generation loop and the `generate` CLI, end to end on converted tiny models."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from llava_edge.generate import stream_generate
from llava_edge.loader import load_text_model
from llava_edge.sampling import make_sampler
from llava_edge.tiny import write_tiny_model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_model(
        tmp_path_factory.mktemp("tiny") / "tiny.gguf", file_type="f32", sliding_window=None, context_length=64
    )


def greedy_ids(model, ids, n):
    """Greedy continuation by full recomputation (no cache reuse across steps): the loop's oracle."""
    ids = list(ids)
    for _ in range(n):
        logits = model(np.array(ids), model.make_cache(kv_type="f32"))
        ids.append(int(np.argmax(logits)))
    return ids


def test_loop_equals_recomputation_and_streams_the_decoded_text(tiny_gguf):
    model, tok = load_text_model(tiny_gguf)
    prompt = tok.encode("the red circle is on the left")
    expected = greedy_ids(model, prompt, 12)[len(prompt) :]
    cache = model.make_cache(kv_type="f32")
    steps = list(
        stream_generate(
            model, tok, cache, prompt, max_tokens=12, sampler=make_sampler(temp=0), continuation=True
        )
    )
    tokens = [s.token for s in steps if s.finish_reason is None]
    if steps[-1].finish_reason == "stop":
        expected = expected[: expected.index(tok.eos_id)]
    assert tokens[: len(expected)] == expected[: len(tokens)]
    text = "".join(s.text for s in steps)
    assert text == tok.decode(prompt + expected)[len(tok.decode(prompt)) :]
    assert steps[-1].generation_tokens == 12 or steps[-1].finish_reason == "stop"


def test_context_limit_stops_with_length(tiny_gguf):
    model, tok = load_text_model(tiny_gguf)
    cache = model.make_cache(n_ctx=20, kv_type="f32")
    prompt = tok.encode("the red circle")
    steps = list(
        stream_generate(
            model,
            tok,
            cache,
            prompt,
            max_tokens=1000,
            sampler=make_sampler(temp=1.0, seed=0, top_k=0, top_p=1.0, min_p=0.0),
        )
    )
    last = steps[-1]
    assert last.finish_reason in ("length", "stop")
    if last.finish_reason == "length":
        assert len(prompt) + last.generation_tokens == 21  # the last sampled token needs no cache slot
        assert cache[0].offset == 20


def test_stop_string_cuts_the_text(tiny_gguf):
    model, tok = load_text_model(tiny_gguf)
    prompt = tok.encode("one two")
    free = "".join(s.text for s in stream_generate(model, tok, model.make_cache(), prompt, max_tokens=24))
    assert len(free) > 4
    stop = free[2:4]
    steps = list(stream_generate(model, tok, model.make_cache(), prompt, max_tokens=24, stop=[stop]))
    assert steps[-1].finish_reason == "stop"
    assert "".join(s.text for s in steps) == free[: free.index(stop)]


def test_cli_generate_streams_text(tiny_gguf):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "llava_edge.cli",
            "generate",
            "-m",
            str(tiny_gguf),
            "-p",
            "the blue star",
            "-n",
            "8",
            "--temp",
            "0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("the blue star")
    assert "tokens/s" in out.stderr and "finish:" in out.stderr
