"""The Mistral / Llama decoder (GGUF architecture `llama`), forward on our C++ kernels.

Weights stay in their quantized form, used in place from the memory-mapped GGUF. Q and K rows are stored
permuted the way llama.cpp's converter writes them, so RoPE here rotates adjacent pairs ("normal" RoPE).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import _kernels as K
from .errors import Cancelled, ModelError
from .ggml_types import SUPPORTED, GGMLType
from .gguf_file import GGUFFile
from .kv_cache import make_cache

# Caps on hyperparameters, far above any model we run (Mistral-7B: 4096 wide, 32 blocks, 32k vocabulary),
# so that a hostile file is refused before it sizes anything by them.
MAX_BLOCKS = 512
MAX_DIM = 1 << 16
MAX_VOCAB = 1 << 22
MAX_CONTEXT = 1 << 22


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    norm_eps: float
    rope_theta: float
    context_length: int
    sliding_window: int | None  # None: full causal attention

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> ModelArgs:
        """The hyperparameters, each checked for type and range before anything is sized by it."""
        arch = f.get("general.architecture")
        if arch != "llama":
            raise ModelError(f"{f.path}: general.architecture: expected 'llama', found {_show(arch)}")

        def integer(key: str, lo: int, hi: int, default: int | None = None) -> int:
            value = f.get(f"llama.{key}", default)
            if value is None:
                raise ModelError(f"{f.path}: llama.{key}: missing")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ModelError(f"{f.path}: llama.{key}: expected an integer, found {_show(value)}")
            if not lo <= value <= hi:
                raise ModelError(f"{f.path}: llama.{key}: {value} is outside {lo}..{hi}")
            return int(value)

        def real(key: str, lo: float, hi: float, default: float | None = None) -> float:
            value = f.get(f"llama.{key}", default)
            if value is None:
                raise ModelError(f"{f.path}: llama.{key}: missing")
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ModelError(f"{f.path}: llama.{key}: expected a number, found {_show(value)}")
            if not lo <= value <= hi:  # also refuses NaN
                raise ModelError(f"{f.path}: llama.{key}: {value} is outside {lo:g}..{hi:g}")
            return float(value)

        dim = integer("embedding_length", 1, MAX_DIM)
        n_heads = integer("attention.head_count", 1, dim)
        n_kv_heads = integer("attention.head_count_kv", 1, n_heads, default=n_heads)
        if n_heads % n_kv_heads or dim % n_heads or (dim // n_heads) % 2:
            raise ModelError(
                f"{f.path}: llama.attention.head_count={n_heads} / head_count_kv={n_kv_heads} do not divide "
                f"embedding_length={dim} into heads of an even size"
            )
        head_dim = dim // n_heads
        n_rot = integer("rope.dimension_count", 0, MAX_DIM, default=head_dim)
        if n_rot != head_dim:
            raise ModelError(
                f"{f.path}: llama.rope.dimension_count={n_rot}: only full rotary ({head_dim}) is supported"
            )
        tokens = f.get("tokenizer.ggml.tokens")
        n_tokens = len(tokens) if isinstance(tokens, list) else None
        window = integer("attention.sliding_window", 0, MAX_CONTEXT, default=0)
        return cls(
            dim=dim,
            n_layers=integer("block_count", 1, MAX_BLOCKS),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            ffn_dim=integer("feed_forward_length", 1, MAX_DIM * 16),
            vocab_size=integer("vocab_size", 1, MAX_VOCAB, default=n_tokens),
            norm_eps=real("attention.layer_norm_rms_epsilon", 0.0, 1.0),
            rope_theta=real("rope.freq_base", 1.0, 1e12, default=10000.0),
            context_length=integer("context_length", 1, MAX_CONTEXT),
            sliding_window=window or None,
        )


def _show(value) -> str:
    """A metadata value in a one-line message: short, and no object addresses."""
    if isinstance(value, (list, np.ndarray)):
        return f"an array of {len(value)} elements"
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


class Linear:
    """A weight matrix [n_out, n_in] in its stored type, read in place from the mapped file."""

    def __init__(self, f: GGUFFile, name: str, n_in: int, n_out: int):
        info = f.tensors.get(name)
        if info is None:
            raise ModelError(f"{f.path}: tensor {name} is missing")
        if tuple(info.shape) != (n_in, n_out):
            raise ModelError(
                f"{f.path}: tensor {name}: expected shape {(n_in, n_out)}, found {tuple(info.shape)}"
            )
        if info.type not in SUPPORTED:
            raise ModelError(f"{f.path}: tensor {name}: type {GGMLType(info.type).name} is not supported")
        self.name, self.type, self.n_in, self.n_out = name, int(info.type), n_in, n_out
        self.data = f.raw(name)

    def __call__(self, x: np.ndarray) -> np.ndarray:  # x [n_tok, n_in] -> [n_tok, n_out]
        return K.matmul(self.data, self.type, x)

    def rows(self, ids: np.ndarray) -> np.ndarray:  # embedding lookup -> [len(ids), n_in]
        return K.get_rows(self.data, self.type, self.n_in, ids)


def matmuls(x: np.ndarray, *linears: Linear) -> tuple[np.ndarray, ...]:
    """Each linear applied to x, as one job over the thread pool (x quantized once): the same bits as
    calling them one by one, but a small matrix (K, V) no longer pays a start-up of its own."""
    return K.matmul_many([w.data for w in linears], [w.type for w in linears], x)


def _norm(f: GGUFFile, name: str, dim: int) -> np.ndarray:
    info = f.tensors.get(name)
    if info is None:
        raise ModelError(f"{f.path}: tensor {name} is missing")
    if tuple(info.shape) != (dim,) or info.type != GGMLType.F32:
        raise ModelError(f"{f.path}: tensor {name}: expected F32 of shape ({dim},)")
    return f.array(name)


class Layer:
    def __init__(self, f: GGUFFile, i: int, a: ModelArgs):
        p, kv_dim = f"blk.{i}.", a.n_kv_heads * a.head_dim
        self.attn_norm = _norm(f, p + "attn_norm.weight", a.dim)
        self.wq = Linear(f, p + "attn_q.weight", a.dim, a.dim)
        self.wk = Linear(f, p + "attn_k.weight", a.dim, kv_dim)
        self.wv = Linear(f, p + "attn_v.weight", a.dim, kv_dim)
        self.wo = Linear(f, p + "attn_output.weight", a.dim, a.dim)
        self.ffn_norm = _norm(f, p + "ffn_norm.weight", a.dim)
        self.w_gate = Linear(f, p + "ffn_gate.weight", a.dim, a.ffn_dim)
        self.w_up = Linear(f, p + "ffn_up.weight", a.dim, a.ffn_dim)
        self.w_down = Linear(f, p + "ffn_down.weight", a.ffn_dim, a.dim)


class Mistral:
    def __init__(self, f: GGUFFile):
        a = self.args = ModelArgs.from_gguf(f)
        self.file = f  # keeps the memory map alive as long as the weights are used
        self.tok_embeddings = Linear(f, "token_embd.weight", a.dim, a.vocab_size)
        self.layers = [Layer(f, i, a) for i in range(a.n_layers)]
        self.norm = _norm(f, "output_norm.weight", a.dim)
        # Models with tied embeddings have no `output`; llama.cpp then reuses token_embd.
        name = "output.weight" if "output.weight" in f.tensors else "token_embd.weight"
        self.output = Linear(f, name, a.dim, a.vocab_size)

    def make_cache(
        self, n_ctx: int | None = None, kv_type: str = "f16", rolling: bool = False, n_pinned: int = 0
    ):
        """Per-layer caches for up to n_ctx positions (default: the model's context). `rolling`: past n_ctx,
        keep the first n_pinned positions and roll the rest (models with a sliding window always roll)."""
        a = self.args
        n_ctx = n_ctx or a.context_length
        return make_cache(
            a.n_layers,
            n_ctx,
            a.n_kv_heads,
            a.head_dim,
            a.sliding_window,
            kv_type,
            rolling=rolling,
            n_pinned=n_pinned,
        )

    def embed(self, tokens) -> np.ndarray:
        ids = np.ascontiguousarray(tokens, dtype=np.int32)
        return self.tok_embeddings.rows(ids)

    def __call__(
        self,
        tokens=None,
        cache=None,
        *,
        input_embeddings=None,
        all_logits: bool = False,
        should_stop: Callable[[], bool] | None = None,
    ):
        """tokens [n] or input_embeddings [n, dim] -> logits [vocab] of the last position ([n, vocab] if
        all_logits). `cache` is the per-layer list from make_cache(); it advances by n. `should_stop` is
        polled before each layer: when it returns True the caches are restored and Cancelled is raised."""
        if should_stop is None:
            return self._forward(tokens, cache, input_embeddings, all_logits, None)
        marks = [c.checkpoint() for c in cache]
        try:
            logits = self._forward(tokens, cache, input_embeddings, all_logits, should_stop)
        except BaseException:
            for c, mark in zip(cache, marks, strict=True):
                c.rollback(mark)
            raise
        for c, mark in zip(cache, marks, strict=True):
            c.release(mark)
        return logits

    def _forward(self, tokens, cache, input_embeddings, all_logits, should_stop):
        a = self.args
        x = self.embed(tokens) if input_embeddings is None else np.array(input_embeddings, np.float32)
        n = x.shape[0]
        pos = np.arange(cache[0].offset, cache[0].offset + n, dtype=np.int32)
        window = a.sliding_window or cache[0].window
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            if should_stop is not None and should_stop():
                raise Cancelled
            h = K.rms_norm(x, layer.attn_norm, a.norm_eps)
            q, k, v = matmuls(h, layer.wq, layer.wk, layer.wv)
            q = q.reshape(n, a.n_heads, a.head_dim)
            k = k.reshape(n, a.n_kv_heads, a.head_dim)
            v = v.reshape(n, a.n_kv_heads, a.head_dim)
            K.rope(q, pos, a.rope_theta)
            K.rope(k, pos, a.rope_theta)
            keys, values, key_pos = layer_cache.update_and_fetch(k, v)
            attn = K.attention(q, pos, keys, values, key_pos, window)  # [n, n_heads, head_dim]
            x += layer.wo(attn.reshape(n, a.dim))
            h = K.rms_norm(x, layer.ffn_norm, a.norm_eps)
            x += layer.w_down(K.silu_mul(*matmuls(h, layer.w_gate, layer.w_up)))
        x = x if all_logits else x[-1:]
        logits = self.output(K.rms_norm(x, self.norm, a.norm_eps))
        return logits if all_logits else logits[0]
