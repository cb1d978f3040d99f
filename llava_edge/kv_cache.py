"""KV caches, one object per decoder layer, passed into the model (never owned by it).

Every cache answers `update_and_fetch(k, v)`: store this step's keys/values and return the keys, values and
key positions the step's queries attend over. The attention kernel masks by position (causal, and a
window: the model's sliding window, or the cache's own `window` for the pinned rolling cache), so a cache
may return keys in any slot order. Key positions only steer the mask: RoPE is applied before caching.

- `FullKVCache`: a linear buffer up to the context size; past it, a clear ContextLengthError.
- `RollingKVCache`: for sliding-window models. Memory is bounded by the window and the result is exact for
  prefill chunks of any size: a chunk's queries see the ring as it was before the chunk plus the whole
  chunk, then only the last `window` keys are kept.
- `PinnedRollingKVCache`: the opt-in rolling mode for models without a window. The first `n_pinned`
  positions (BOS, system text, the first image) stay; the other `n_ctx - n_pinned` slots are a ring. A
  query at position p sees the pinned prefix and the `ring` most recent positions (p among them), whatever
  the chunk sizes: an approximation of the full context, but a well-defined one.

Cancelling (Ctrl-C) inside a forward pass must leave every cache as it was before it: `checkpoint()` returns
a mark, `rollback(mark)` restores that state, `release(mark)` forgets the mark. Marks nest (a prefill of
several chunks holds one, each chunk's forward another). A ring cache keeps an undo log of the slots it
overwrites while a mark is held, at most one ring's worth plus the current chunk.
"""

from __future__ import annotations

import numpy as np

from .errors import ContextLengthError

KV_TYPES = {"f16": np.float16, "f32": np.float32}  # f16 by default; f32 for exact reference checks


class FullKVCache:
    window = 0  # no window of its own: the model's applies
    max_chunk = None

    def __init__(self, n_ctx: int, n_kv_heads: int, head_dim: int, dtype=np.float16):
        if n_ctx <= 0:
            raise ValueError(f"context size must be positive, got {n_ctx}")
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

    # Writes only go past the offset, so the offset is the whole state to restore.
    def checkpoint(self) -> int:
        return self.offset

    def rollback(self, mark: int) -> None:
        self.offset = mark

    def release(self, mark: int) -> None:
        pass


class _RingKVCache:
    """Slots [0, n_pinned) hold positions [0, n_pinned) for good; slots [n_pinned, capacity) are a ring over
    the later positions. A query sees the pinned keys and keys less than `ring` positions behind it."""

    def __init__(self, n_pinned: int, ring: int, n_kv_heads: int, head_dim: int, dtype):
        n = n_pinned + ring
        self.keys = np.zeros((n, n_kv_heads, head_dim), dtype)
        self.values = np.zeros((n, n_kv_heads, head_dim), dtype)
        self.positions = np.full(n, -1, np.int32)  # -1: empty slot, masked out
        self.n_pinned, self.ring = n_pinned, ring
        self.offset = 0
        self._marks: list[tuple[int, int]] = []  # (undo log length, offset) per checkpoint
        self._undo: list[tuple] = []  # (slots, keys, values, positions) as they were before a store

    @property
    def capacity(self) -> int:
        return self.keys.shape[0]

    room = None  # no limit: the ring forgets what the window no longer sees

    @property
    def window(self) -> int:
        return self.ring

    @property
    def max_chunk(self) -> int | None:
        # Pinned keys are shown to a chunk's queries at one shifted position (see _key_positions), which
        # is only within every query's window when the chunk is no longer than the ring.
        return self.ring if self.n_pinned else None

    def _slots(self, positions: np.ndarray) -> np.ndarray:
        p = self.n_pinned
        return np.where(positions < p, positions, p + (positions - p) % self.ring)

    def _key_positions(self, positions: np.ndarray, end: int) -> np.ndarray:
        """Positions as the mask should see them: a pinned key j is moved up to end - ring (never past
        the chunk's first query) so that the window never hides it, and stays hidden from queries before j."""
        if not self.n_pinned:
            return positions
        pinned = (positions >= 0) & (positions < self.n_pinned)
        return np.where(pinned, np.maximum(positions, end - self.ring), positions).astype(np.int32)

    def update_and_fetch(self, k: np.ndarray, v: np.ndarray):
        n = k.shape[0]
        if self.max_chunk is not None and n > self.max_chunk:
            raise ValueError(f"a chunk of {n} positions is longer than the rolling part ({self.ring})")
        start, end = self.offset, self.offset + n
        positions = np.arange(start, end, dtype=np.int32)
        if n == 1:
            # The slot being overwritten holds position offset - ring, which the new query can no longer
            # see (its distance is exactly the window), so writing first is exact and copies nothing.
            self._store(k, v, positions)
            return self.keys, self.values, self._key_positions(self.positions, end)
        keys = np.concatenate([self.keys, k.astype(self.keys.dtype)])
        values = np.concatenate([self.values, v.astype(self.values.dtype)])
        key_pos = self._key_positions(np.concatenate([self.positions, positions]), end)
        keep = (positions < self.n_pinned) | (positions >= end - self.ring)  # each slot written once
        self._store(k[keep], v[keep], positions[keep])
        self.offset = end
        return keys, values, key_pos

    def _store(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray) -> None:
        slots = self._slots(positions)
        if self._marks:
            self._undo.append((slots, self.keys[slots], self.values[slots], self.positions[slots]))
        self.keys[slots] = k
        self.values[slots] = v
        self.positions[slots] = positions
        self.offset = int(positions[-1]) + 1

    def trim(self, n: int) -> int:
        """Ring caches cannot undo after the fact: the slots overwritten by the trimmed tokens are gone
        (use checkpoint/rollback around the work that may have to be undone)."""
        return 0

    def checkpoint(self) -> int:
        """A mark: the depth of the checkpoint stack, each entry (undo log length, offset)."""
        self._marks.append((len(self._undo), self.offset))
        return len(self._marks) - 1

    def rollback(self, mark: int) -> None:
        log_len, offset = self._marks[mark]
        for slots, k, v, pos in reversed(self._undo[log_len:]):
            self.keys[slots], self.values[slots], self.positions[slots] = k, v, pos
        del self._undo[log_len:]
        self.offset = offset
        self.release(mark)

    def release(self, mark: int) -> None:
        del self._marks[mark:]
        if not self._marks:
            self._undo.clear()
            return
        # Undoing to the enclosing mark only needs each slot's content from before that mark: an entry that
        # saved a position written after it is overwritten again by an earlier entry during the undo.
        log_len, offset = self._marks[-1]
        pruned = []
        for slots, k, v, pos in self._undo[log_len:]:
            old = pos < offset
            if old.any():
                pruned.append((slots[old], k[old], v[old], pos[old]))
        self._undo[log_len:] = pruned


class RollingKVCache(_RingKVCache):
    """The exact ring for a sliding-window model: `window` slots, nothing pinned."""

    def __init__(self, window: int, n_kv_heads: int, head_dim: int, dtype=np.float16):
        if window <= 0:
            raise ValueError(f"sliding window must be positive, got {window}")
        super().__init__(0, window, n_kv_heads, head_dim, dtype)


class PinnedRollingKVCache(_RingKVCache):
    """`n_ctx` slots: the first `n_pinned` positions kept, the rest rolling. `n_pinned` may be set later with
    `pin()`, before anything is stored (a chat pins its first turn once it is tokenized)."""

    def __init__(self, n_ctx: int, n_pinned: int, n_kv_heads: int, head_dim: int, dtype=np.float16):
        _check_pinned(n_ctx, n_pinned)
        super().__init__(n_pinned, n_ctx - n_pinned, n_kv_heads, head_dim, dtype)

    def pin(self, n_pinned: int) -> None:
        if self.offset:
            raise ValueError(f"pin() after {self.offset} positions were stored; pin before the first")
        _check_pinned(self.capacity, n_pinned)
        self.n_pinned, self.ring = n_pinned, self.capacity - n_pinned


def _check_pinned(n_ctx: int, n_pinned: int) -> None:
    if n_ctx <= 0:
        raise ValueError(f"context size must be positive, got {n_ctx}")
    if n_pinned < 0:
        raise ValueError(f"pinned positions must be >= 0, got {n_pinned}")
    if n_pinned >= n_ctx:
        raise ContextLengthError(
            f"the pinned prefix ({n_pinned} positions) leaves no room to roll in a context of {n_ctx}"
        )


def make_cache(
    n_layers: int,
    n_ctx: int,
    n_kv_heads: int,
    head_dim: int,
    sliding_window: int | None,
    kv_type: str = "f16",
    *,
    rolling: bool = False,
    n_pinned: int = 0,
):
    """One cache per layer: rolling when the model has a window smaller than the context (exact, and
    unlimited in length by itself); for a model without one, a full cache, or with `rolling` a pinned
    rolling cache that keeps the first `n_pinned` positions."""
    if kv_type not in KV_TYPES:
        raise ValueError(f"KV cache type must be one of {sorted(KV_TYPES)}, got {kv_type!r}")
    dtype = KV_TYPES[kv_type]
    if sliding_window and sliding_window < n_ctx:
        return [RollingKVCache(sliding_window, n_kv_heads, head_dim, dtype) for _ in range(n_layers)]
    if rolling:
        return [PinnedRollingKVCache(n_ctx, n_pinned, n_kv_heads, head_dim, dtype) for _ in range(n_layers)]
    return [FullKVCache(n_ctx, n_kv_heads, head_dim, dtype) for _ in range(n_layers)]
