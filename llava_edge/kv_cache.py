"""KV caches, one object per decoder layer, passed into the model (never owned by it).

Every cache answers `update_and_fetch(k, v)`: store this step's keys/values and return the keys, values and
key positions the step's queries attend over. The attention kernel masks by position (causal, and the
sliding window when the model has one), so a cache may return keys in any slot order.

- `FullKVCache`: a linear buffer up to the context size; past it, a clear ContextLengthError.
- `RollingKVCache`: for sliding-window models. Memory is bounded by the window and the result is exact for
  prefill chunks of any size: a chunk's queries see the ring as it was before the chunk plus the whole
  chunk, then only the last `window` keys are kept.
"""

from __future__ import annotations

import numpy as np

from .errors import ContextLengthError

KV_TYPES = {"f16": np.float16, "f32": np.float32}  # f16 by default; f32 for exact reference checks


class FullKVCache:
    def __init__(self, n_ctx: int, n_kv_heads: int, head_dim: int, dtype=np.float16):
        # np.zeros maps untouched pages lazily: a long context costs memory only as it fills.
        self.keys = np.zeros((n_ctx, n_kv_heads, head_dim), dtype)
        self.values = np.zeros((n_ctx, n_kv_heads, head_dim), dtype)
        self.positions = np.arange(n_ctx, dtype=np.int32)
        self.offset = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[0]

    @property
    def room(self) -> int | None:
        """Tokens that still fit."""
        return self.capacity - self.offset

    def update_and_fetch(self, k: np.ndarray, v: np.ndarray):
        start, n = self.offset, k.shape[0]
        if start + n > self.capacity:
            raise ContextLengthError(
                f"context full: {start} tokens cached + {n} new > context size {self.capacity}"
            )
        self.keys[start : start + n] = k
        self.values[start : start + n] = v
        self.offset = start + n
        end = self.offset
        return self.keys[:end], self.values[:end], self.positions[:end]

    def trim(self, n: int) -> int:
        """Forget the last n tokens (undo a partial answer); returns how many were removed."""
        n = min(n, self.offset)
        self.offset -= n
        return n


class RollingKVCache:
    def __init__(self, window: int, n_kv_heads: int, head_dim: int, dtype=np.float16):
        if window <= 0:
            raise ValueError(f"sliding window must be positive, got {window}")
        self.keys = np.zeros((window, n_kv_heads, head_dim), dtype)
        self.values = np.zeros((window, n_kv_heads, head_dim), dtype)
        self.positions = np.full(window, -1, np.int32)  # -1: empty slot, masked out
        self.offset = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[0]

    room = None  # no limit: the ring forgets what the window no longer sees

    def update_and_fetch(self, k: np.ndarray, v: np.ndarray):
        n, window = k.shape[0], self.capacity
        positions = np.arange(self.offset, self.offset + n, dtype=np.int32)
        if n == 1:
            # The slot being overwritten holds position offset - window, which the new query can no longer
            # see (its distance is exactly the window), so writing first is exact and copies nothing.
            self._store(k, v, positions)
            return self.keys, self.values, self.positions
        keys = np.concatenate([self.keys, k.astype(self.keys.dtype)])
        values = np.concatenate([self.values, v.astype(self.values.dtype)])
        key_pos = np.concatenate([self.positions, positions])
        self._store(k[-window:], v[-window:], positions[-window:])
        return keys, values, key_pos

    def _store(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray) -> None:
        slots = positions % self.capacity
        self.keys[slots] = k
        self.values[slots] = v
        self.positions[slots] = positions
        self.offset = int(positions[-1]) + 1

    def trim(self, n: int) -> int:
        """Rolling caches cannot undo: the slots overwritten by the trimmed tokens are gone."""
        return 0


def make_cache(
    n_layers: int,
    n_ctx: int,
    n_kv_heads: int,
    head_dim: int,
    sliding_window: int | None,
    kv_type: str = "f16",
):
    """One cache per layer: rolling when the model has a window smaller than the context."""
    if kv_type not in KV_TYPES:
        raise ValueError(f"KV cache type must be one of {sorted(KV_TYPES)}, got {kv_type!r}")
    dtype = KV_TYPES[kv_type]
    if sliding_window and sliding_window < n_ctx:
        return [RollingKVCache(sliding_window, n_kv_heads, head_dim, dtype) for _ in range(n_layers)]
    return [FullKVCache(n_ctx, n_kv_heads, head_dim, dtype) for _ in range(n_layers)]
