"""Samplers and logits processors: pure functions of the logits (and the tokens so far).

`make_sampler` returns a callable logits -> token id; temperature 0 is argmax. The filters run in
llama.cpp's default order (top-k, top-p, min-p, then temperature) so that the same settings mean the same
thing as there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Sampler = Callable[[np.ndarray], int]
LogitsProcessor = Callable[[Sequence[int], np.ndarray], np.ndarray]


def make_sampler(
    temp: float = 0.8,
    top_k: int = 40,
    top_p: float = 0.95,
    min_p: float = 0.05,
    seed: int | None = None,
) -> Sampler:
    if temp < 0:
        raise ValueError(f"temperature must be >= 0, got {temp}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not 0.0 <= min_p < 1.0:
        raise ValueError(f"min_p must be in [0, 1), got {min_p}")
    if temp == 0:
        return lambda logits: int(np.argmax(logits))
    rng = np.random.default_rng(seed)

    def sample(logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=np.float64)
        ids = np.argsort(-logits, kind="stable")  # candidates, most likely first
        if top_k > 0:
            ids = ids[:top_k]
        z = logits[ids]
        probs = np.exp(z - z[0])
        probs /= probs.sum()
        if top_p < 1.0:
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            keep = int(np.searchsorted(np.cumsum(probs), top_p)) + 1
            ids, z, probs = ids[:keep], z[:keep], probs[:keep]
        if min_p > 0.0:
            keep = probs >= min_p * probs[0]
            ids, z = ids[keep], z[keep]
        p = np.exp((z - z[0]) / temp)
        p /= p.sum()
        return int(ids[rng.choice(len(ids), p=p)])

    return sample


def repetition_penalty(penalty: float, last_n: int = 64) -> LogitsProcessor:
    """llama.cpp / CTRL penalty: divide positive logits, multiply negative ones, of recently seen tokens."""
    if penalty <= 0:
        raise ValueError(f"repetition penalty must be > 0, got {penalty}")

    def process(tokens: Sequence[int], logits: np.ndarray) -> np.ndarray:
        recent = np.unique(np.asarray(tokens[-last_n:] if last_n > 0 else tokens, dtype=np.int64))
        if penalty == 1.0 or recent.size == 0:
            return logits
        logits = logits.copy()
        selected = logits[recent]
        logits[recent] = np.where(selected > 0, selected / penalty, selected * penalty)
        return logits

    return process


def make_logits_processors(repeat_penalty: float = 1.0, repeat_last_n: int = 64) -> list[LogitsProcessor]:
    return [repetition_penalty(repeat_penalty, repeat_last_n)] if repeat_penalty != 1.0 else []
