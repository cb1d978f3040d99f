"""A tiny random-weight Llama-architecture GGUF that the package builds for itself, with no downloads.

It exists so that `llava-edge generate` can be tried right after install, before any real model is on the
machine: the pipeline is real (GGUF, tokenizer, kernels, cache, sampler), the words it picks are random.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .gguf_writer import GGUFWriter
from .quant_rules import FILE_TYPES, encode_tensor, tensor_type

_WORDS = (
    "the a an of to in and is it that on for with as was at by this be are from or one had not but what all "
    "were when we there can your which their said if do will each about how up out them then she many "
    "some so "
    "these would other into has more her two like him see time could no make than first been its who now "
    "people my made over did down only way find use may water long little very after words called just where "
    "most know image photo picture red green blue circle square star left right top bottom small large"
).split()


def tiny_vocab() -> tuple[list[str], np.ndarray, np.ndarray]:
    """<unk>, <s>, </s>, the 256 byte pieces, then single letters and common words (with and without ▁)."""
    tokens, types = ["<unk>", "<s>", "</s>"], [2, 3, 3]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    pieces = ["▁"] + [chr(c) for c in range(33, 127)] + ["▁" + chr(c) for c in range(97, 123)]
    pieces += ["▁" + w for w in _WORDS] + list(dict.fromkeys(w for w in _WORDS if len(w) > 1))
    pieces = list(dict.fromkeys(pieces))
    tokens += pieces
    types += [1] * len(pieces)
    # Longer pieces score higher so that BPE merges prefer whole words.
    scores = [0.0] * 259 + [float(len(p)) - i * 1e-4 for i, p in enumerate(pieces)]
    return tokens, np.array(scores, np.float32), np.array(types, np.int32)


def write_tiny_model(
    path: str | Path,
    *,
    dim: int = 128,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    ffn_dim: int = 384,
    context_length: int = 2048,
    sliding_window: int | None = 256,
    file_type: str = "q8_0",
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    tokens, scores, types = tiny_vocab()
    vocab, head_dim = len(tokens), dim // n_heads
    shapes = {"token_embd.weight": (vocab, dim)}  # numpy order [rows, row length]
    for i in range(n_layers):
        p = f"blk.{i}."
        shapes.update(
            {
                p + "attn_norm.weight": (dim,),
                p + "attn_q.weight": (dim, dim),
                p + "attn_k.weight": (n_kv_heads * head_dim, dim),
                p + "attn_v.weight": (n_kv_heads * head_dim, dim),
                p + "attn_output.weight": (dim, dim),
                p + "ffn_norm.weight": (dim,),
                p + "ffn_gate.weight": (ffn_dim, dim),
                p + "ffn_up.weight": (ffn_dim, dim),
                p + "ffn_down.weight": (dim, ffn_dim),
            }
        )
    shapes["output_norm.weight"] = (dim,)
    shapes["output.weight"] = (vocab, dim)

    path = Path(path)
    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama")
        w.add("general.name", "llava-edge tiny random model")
        w.add("general.file_type", FILE_TYPES[file_type][0])
        w.add("general.quantization_version", 2)
        w.add("llama.context_length", context_length)
        w.add("llama.embedding_length", dim)
        w.add("llama.block_count", n_layers)
        w.add("llama.feed_forward_length", ffn_dim)
        w.add("llama.attention.head_count", n_heads)
        w.add("llama.attention.head_count_kv", n_kv_heads)
        w.add("llama.attention.layer_norm_rms_epsilon", 1e-5)
        w.add("llama.rope.freq_base", 10000.0)
        w.add("llama.rope.dimension_count", head_dim)
        w.add("llama.vocab_size", vocab)
        if sliding_window:
            w.add("llama.attention.sliding_window", sliding_window)
        w.add("tokenizer.ggml.model", "llama")
        w.add("tokenizer.ggml.tokens", tokens)
        w.add("tokenizer.ggml.scores", scores)
        w.add("tokenizer.ggml.token_type", types)
        w.add("tokenizer.ggml.bos_token_id", 1)
        w.add("tokenizer.ggml.eos_token_id", 2)
        w.add("tokenizer.ggml.unknown_token_id", 0)
        w.add("tokenizer.ggml.add_bos_token", True)
        w.add("tokenizer.ggml.add_eos_token", False)
        types_out = {n: tensor_type(n, tuple(reversed(s)), file_type, n_layers) for n, s in shapes.items()}
        for name, shape in shapes.items():
            w.add_tensor_info(name, tuple(reversed(shape)), types_out[name])
        for name, shape in shapes.items():
            if len(shape) == 1:
                data = np.ones(shape, np.float32)
            else:
                data = rng.normal(0.0, 1.0 / np.sqrt(shape[1]), shape).astype(np.float32)
                if name == "output.weight":
                    data *= 6.0  # peaked next-token distributions: sampling looks like choosing words
            w.write_tensor(name, encode_tensor(data, types_out[name]))
    return path


def cached_tiny_model() -> Path:
    """The default tiny model, built once into the user's cache directory."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llava-edge"
    path = root / "tiny-random-q8_0.gguf"
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        write_tiny_model(path)
    return path
