"""`llava-edge bench`: where we stand against llama.cpp, side by side in one run, on the same files.

What it measures (DESIGN.md section 8), each engine in its own child process so that peak RSS
(VmHWM, read at the child's end: getrusage's ru_maxrss would include the parent) is that engine's alone:

- decoder, per GGUF type (`--types`, default q4_0,q8_0,q4_k_m), ours (`loader.load_text_model` on our
  kernels) and llama.cpp (llama-cpp-python's `Llama`), same file, same thread count:
  - load: opening the file until a model and its KV cache exist (ours: `load_text_model` +
    `make_cache`; llama.cpp: the `Llama(...)` constructor, which also creates its context);
  - decode tokens/s: a short prompt (`--prompt-tokens`, untimed; it also faults every weight page in),
    then `--decode-tokens` greedy steps, one token per model call, timing only those calls (ours:
    `model(np.array([tok]), cache)` as `generate.generate_step` does; llama.cpp: `Llama.eval([tok])`),
    argmax included on both sides;
  - prefill tokens/s: a `--prefill-tokens` prompt into a fresh cache, timed (ours: `generate.prefill`
    with chunk `--prefill-chunk`; llama.cpp: `Llama.eval` with n_batch = n_ubatch = `--prefill-chunk`);
  - peak RSS of the child;
  - agreement, a sanity check and not a target: the cosine of both engines' logits after the prompt, and
    how many greedy tokens they share before diverging (a random 32-layer network amplifies rounding
    differences, so this prefix is short even when the logits agree closely).
  Runs are interleaved (ours, llama.cpp, ours, ...) `--runs` times; every figure is reported as
  min / median / max and the ratio ours / llama.cpp is taken on medians (tokens/s: above 1 means ours is
  faster; seconds and MB: below 1 means ours is better).
  Decode, with both engines selected, is timed differently (`--decode-turn`, default 16): in each run one
  child loads both engines and they decode in turns of 16 tokens (ours, llama.cpp, llama.cpp, ours, ...)
  until each has made `--decode-tokens`. Decode streams every weight once per token, so it follows the
  memory bandwidth the machine's neighbours leave, which swings by up to 2x within a minute here (33 to
  57 GB/s measured in one session); turns a few seconds long put both engines in the same weather. The
  decode ratio is then the median of the runs' own ratios (min and max shown beside it), and each engine's
  tokens/s come from those runs. After every pair of turns the child also reads a 512 MiB array (as the
  bandwidth test does, best of 3) and reports the median per run: the weather both engines decoded in.
  Load, prefill and peak RSS still come from one child per engine.
- memory read bandwidth on 1 and `--threads` threads: numpy `float64` max-reduction over a
  `--bandwidth-gib` array, the best of 10 passes; with several threads, a thread pool reduces disjoint
  slices (numpy releases the GIL in reductions). Decode floor = bytes streamed per token / bandwidth at
  `--threads`, where bytes per token = the file's tensor bytes minus `token_embd` (its rows are gathered,
  not streamed; the KV cache read, 128 KiB per token of context at 7B, under 1% here, is ignored).
  "of floor" is floor time / measured time. Each paired decode run is also set against its own floor, from
  the bandwidth read between its turns: under contention both engines sit near it, and no kernel can
  lead by more than the distance to it.
- vision tower: a llama.cpp LLaVA mmproj of the CLIP-L/14-336 shape (F16 weights, 23 stored layers, as
  llama.cpp's converter writes it) and one random 336x336 image; one child per engine, which warms up
  (mtmd: its own warm-up at load; ours: one untimed encode) and then times `--runs` encodes.
  llama.cpp: `mtmd_encode_chunk` (CLIP + projector; preprocessing happens in `mtmd_tokenize`, untimed)
  through llama-cpp-python's `mtmd_cpp` bindings, flash attention `--vision-flash-attn` (mtmd's default,
  auto), warm-up on (mtmd's default). Ours: the ONNX built from that same mmproj by
  `mmproj_onnx.build_clip_onnx`, run by `vision_tower.VisionTower.encode`, then our `projector.Projector`;
  pixels normalised as CLIP does, untimed. `--vision-precision int8` (experimental) also times an ONNX made by
  onnxruntime's `quantize_dynamic` (int8 weights, per-channel, constant-B MatMuls only) and reports the
  cosine of its features to the fp32 tower's (the bar for using it is >= 0.999).

The files (random weights, deterministic in `--seed`; `--cache-dir`, default ~/.cache/llava-edge/bench,
keyed by shape, type, seed and generator version; never commit them):
- decoder `text-{shape}-{type}-s{seed}-g{version}.gguf`: llama architecture, Mistral-7B-Instruct-v0.2
  shape for `--shape 7b` (dim 4096, 32 layers, 32 / 8 heads, FFN 14336, vocab 32000, rope theta 1e6, no
  sliding window), `--shape tiny` (dim 256, 2 layers, vocab 1000) for smoke tests. Per-tensor types from
  `quant_rules.tensor_type`. Quantized tensors are not made by quantizing floats (7e9 of them would take
  long): each block gets random quantization codes (uniform random bytes) and fp16 scales (d, and dmin for
  K-quants) chosen so that the dequantized weights have mean ~0 and standard deviation 0.02, each block's
  scale jittered by +-25% (and of random sign where there is no dmin). Every bit pattern of the code and
  sub-scale bytes is a valid block, and both engines' kernels do the same work whatever the values, so this
  measures the real thing. Norm weights are 1. The vocabulary is `tiny.tiny_vocab()` padded with made-up
  pieces; prompts are random token ids.
- `mmproj-{shape}-s{seed}-g{version}.gguf` (F16 weights N(0, 0.02), biases and norms as CLIP's init),
  with the ONNX tower built from it (and its int8 variant) beside it;
- `mmtext-{dim}-s{seed}-g{version}.gguf`: a one-layer decoder of the projector's output width, which mtmd
  needs for its vocabulary and width check (loaded vocabulary-only; never timed).

Usage: `llava-edge bench` or `python benchmarks/bench.py`, e.g.
  python benchmarks/bench.py --types q4_0 --only decode,prefill,vision,bandwidth --json bench.json
`main(argv)` is the command line; `run_bench(...) -> dict` and `format_table(result) -> str` the library.

On a shared machine, other processes distort the comparison, and not evenly: llama.cpp's worker threads
spin at every barrier, so when another process takes a core its 2-thread decode collapses (measured here:
0.2-0.3 tokens/s with 2 threads next to 2.1 with 1 thread, against 7.4 on a quiet machine), while ours
degrades gracefully. So every child's result carries `others_cpu_share`, the fraction of all CPUs that
other processes used while it ran (from /proc/stat, minus the child's own CPU time), shown in the table;
`--quiet-wait S` makes each child first wait up to S seconds for a quiet machine (`--quiet-threshold`).
Compare ratios only from runs where that share is small.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .ggml_types import BLOCK_LAYOUT, GGMLType
from .gguf_writer import GGUFWriter
from .vision_int8 import feature_cosine, quantize_tower_int8

GENERATOR_VERSION = 1  # bump when the generated files change: it is part of their cache names
WEIGHT_STD = 0.02
ENGINES = ("ours", "llama.cpp")
MEASURES = ("decode", "prefill", "vision", "bandwidth")
DEFAULT_TYPES = ("q4_0", "q8_0", "q4_k_m")
VISION_PRECISIONS = ("fp32", "int8")
COSINE_BAR = 0.999
# Both engines' logits after the prompt, same file: 0.993-0.995 on the random 7B files (rounding amplified
# over 32 random layers), 0.9999 on the tiny ones; a broken kernel gives ~0.
AGREEMENT_BAR = 0.98


@dataclass(frozen=True)
class TextShape:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab: int
    rope_theta: float = 1e6
    context_length: int = 32768


@dataclass(frozen=True)
class VisionShape:
    width: int
    n_layers: int  # stored layers: the converter keeps layers up to -2 (CLIP-L: 24 - 1)
    n_heads: int
    ffn_dim: int
    patch: int
    image: int
    n_embd: int  # projector output: the decoder's width
    description: str


TEXT_SHAPES = {
    "7b": TextShape(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, vocab=32000),
    "tiny": TextShape(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=768, vocab=1000),
}
VISION_SHAPES = {
    "7b": VisionShape(1024, 23, 16, 4096, 14, 336, 4096, "CLIP-L/14-336 + mlp2x_gelu projector"),
    "tiny": VisionShape(64, 2, 4, 128, 14, 56, 256, "tiny CLIP + mlp2x_gelu projector"),
}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llava-edge" / "bench"


# ---- generating the files ----------------------------------------------------------------------------

# Byte offsets of the fp16 super-scale d and of dmin (None: the type has none) inside one block.
_SCALE_FIELDS: dict[GGMLType, tuple[int, int | None]] = {
    GGMLType.Q4_0: (0, None),
    GGMLType.Q8_0: (0, None),
    GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208, None),
}


def _set_f16(blocks: np.ndarray, offset: int, values: np.ndarray) -> None:
    blocks[:, offset : offset + 2] = values.astype("<f2").view(np.uint8).reshape(-1, 2)


def _moments(ggml_type: GGMLType, blocks: np.ndarray) -> tuple[float, float]:
    # gguf-py's numpy reference, not our kernels: the files must not depend on the code being measured
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    x = dequantize(blocks, GGMLQuantizationType(int(ggml_type))).astype(np.float64)
    return float(x.mean()), float(x.std())


@functools.cache
def _scale_plan(ggml_type: GGMLType) -> tuple[float, float]:
    """(d, dmin / d) for random codes: dequantized mean ~0 and standard deviation WEIGHT_STD.

    Values are linear in d and dmin, so two dequantizations of a sample of random blocks settle both."""
    d_off, m_off = _SCALE_FIELDS[ggml_type]
    sample = np.random.default_rng(1234).integers(0, 256, (4096, BLOCK_LAYOUT[ggml_type][1]), np.uint8)
    ones, zeros = np.ones(len(sample), np.float32), np.zeros(len(sample), np.float32)
    _set_f16(sample, d_off, ones)
    m_ratio = 0.0
    if m_off is not None:
        _set_f16(sample, m_off, zeros)
        mean_d, _ = _moments(ggml_type, sample)
        _set_f16(sample, d_off, zeros)
        _set_f16(sample, m_off, ones)
        mean_m, _ = _moments(ggml_type, sample)
        m_ratio = -mean_d / mean_m  # d * mean_d + dmin * mean_m = 0
        _set_f16(sample, d_off, ones)
        _set_f16(sample, m_off, np.full(len(sample), m_ratio, np.float32))
    _, std = _moments(ggml_type, sample)
    return WEIGHT_STD / std, m_ratio


def random_quant_blocks(ggml_type: GGMLType, n_rows: int, n_in: int, rng: np.random.Generator) -> np.ndarray:
    """A [n_rows, n_in] weight of type ggml_type as raw blocks: random codes, realistic fp16 scales."""
    block, size = BLOCK_LAYOUT[ggml_type]
    n_blocks = n_rows * n_in // block
    blocks = np.frombuffer(bytearray(rng.bytes(n_blocks * size)), np.uint8).reshape(n_blocks, size)
    d, m_ratio = _scale_plan(ggml_type)
    d_off, m_off = _SCALE_FIELDS[ggml_type]
    scale = d * rng.uniform(0.75, 1.25, n_blocks).astype(np.float32)
    if m_off is None:
        scale *= rng.choice(np.array([-1.0, 1.0], np.float32), n_blocks)  # as a signed absmax gives
    else:
        _set_f16(blocks, m_off, scale * np.float32(m_ratio))
    _set_f16(blocks, d_off, scale)
    return blocks


def _float_weight(shape: tuple[int, ...], dtype, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(shape, np.float32) * np.float32(WEIGHT_STD)).astype(dtype)


def _vocab(size: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """tiny_vocab(): special, byte and common pieces, padded with made-up pieces to `size`."""
    from .tiny import tiny_vocab

    tokens, scores, types = tiny_vocab()
    if size < len(tokens):
        raise ValueError(f"vocabulary size {size} is below the {len(tokens)} base pieces")
    n_more = size - len(tokens)
    tokens = tokens + [f"▁w{i:05d}" for i in range(n_more)]
    scores = np.concatenate([scores, -1.0 - np.arange(n_more, dtype=np.float32) * 1e-4])
    types = np.concatenate([types, np.ones(n_more, np.int32)])
    return tokens, scores.astype(np.float32), types.astype(np.int32)


def _text_tensors(s: TextShape) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> numpy shape [rows, row length], in llama.cpp's order."""
    head_dim = s.dim // s.n_heads
    shapes = {"token_embd.weight": (s.vocab, s.dim)}
    for i in range(s.n_layers):
        p = f"blk.{i}."
        shapes.update(
            {
                p + "attn_norm.weight": (s.dim,),
                p + "attn_q.weight": (s.dim, s.dim),
                p + "attn_k.weight": (s.n_kv_heads * head_dim, s.dim),
                p + "attn_v.weight": (s.n_kv_heads * head_dim, s.dim),
                p + "attn_output.weight": (s.dim, s.dim),
                p + "ffn_norm.weight": (s.dim,),
                p + "ffn_gate.weight": (s.ffn_dim, s.dim),
                p + "ffn_up.weight": (s.ffn_dim, s.dim),
                p + "ffn_down.weight": (s.dim, s.ffn_dim),
            }
        )
    shapes["output_norm.weight"] = (s.dim,)
    shapes["output.weight"] = (s.vocab, s.dim)
    return shapes


def write_text_gguf(path: Path, s: TextShape, file_type: str, seed: int, name: str) -> Path:
    """A llama-architecture GGUF of shape `s` with random weights (module docstring), streamed."""
    from .quant_rules import FILE_TYPES, tensor_type

    tokens, scores, types = _vocab(s.vocab)
    shapes = _text_tensors(s)
    chosen = {n: tensor_type(n, tuple(reversed(sh)), file_type, s.n_layers) for n, sh in shapes.items()}
    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama")
        w.add("general.name", name)
        w.add("general.file_type", FILE_TYPES[file_type][0])
        w.add("general.quantization_version", 2)
        w.add("llama.context_length", s.context_length)
        w.add("llama.embedding_length", s.dim)
        w.add("llama.block_count", s.n_layers)
        w.add("llama.feed_forward_length", s.ffn_dim)
        w.add("llama.attention.head_count", s.n_heads)
        w.add("llama.attention.head_count_kv", s.n_kv_heads)
        w.add("llama.attention.layer_norm_rms_epsilon", 1e-5)
        w.add("llama.rope.freq_base", float(s.rope_theta))
        w.add("llama.rope.dimension_count", s.dim // s.n_heads)
        w.add("llama.vocab_size", s.vocab)
        w.add("tokenizer.ggml.model", "llama")
        w.add("tokenizer.ggml.tokens", tokens)
        w.add("tokenizer.ggml.scores", scores)
        w.add("tokenizer.ggml.token_type", types)
        w.add("tokenizer.ggml.bos_token_id", 1)
        w.add("tokenizer.ggml.eos_token_id", 2)
        w.add("tokenizer.ggml.unknown_token_id", 0)
        w.add("tokenizer.ggml.add_bos_token", True)
        w.add("tokenizer.ggml.add_eos_token", False)
        for n, sh in shapes.items():
            w.add_tensor_info(n, tuple(reversed(sh)), chosen[n])
        for i, (n, sh) in enumerate(shapes.items()):
            rng = np.random.default_rng([seed, i])
            t = chosen[n]
            if len(sh) == 1:
                data = np.ones(sh, np.float32)
            elif t in (GGMLType.F32, GGMLType.F16):
                data = _float_weight(sh, np.float32 if t == GGMLType.F32 else np.float16, rng)
            else:
                data = random_quant_blocks(t, sh[0], sh[1], rng)
            w.write_tensor(n, data)
    return path


def write_mmproj(path: Path, v: VisionShape, seed: int) -> Path:
    """A llama.cpp LLaVA mmproj (projector `mlp`) with random weights, laid out key for key and tensor for
    tensor as llama.cpp's `convert_image_encoder_to_gguf.py` writes one (2-D and conv weights F16)."""
    d, ff, p = v.width, v.ffn_dim, v.patch
    n_pos = (v.image // p) ** 2 + 1
    f16, f32 = GGMLType.F16, GGMLType.F32
    # (name, numpy shape, type, init): "w" N(0, 0.02), "one", "zero"
    tensors = [
        ("mm.0.weight", (v.n_embd, d), f16, "w"),
        ("mm.0.bias", (v.n_embd,), f32, "zero"),
        ("mm.2.weight", (v.n_embd, v.n_embd), f16, "w"),
        ("mm.2.bias", (v.n_embd,), f32, "zero"),
        ("v.class_embd", (d,), f32, "w"),
        ("v.patch_embd.weight", (d, 3, p, p), f16, "w"),
        ("v.position_embd.weight", (n_pos, d), f16, "w"),
        ("v.pre_ln.weight", (d,), f32, "one"),
        ("v.pre_ln.bias", (d,), f32, "zero"),
    ]
    for i in range(v.n_layers):
        b = f"v.blk.{i}."
        for k in ("attn_k", "attn_v", "attn_q", "attn_out"):
            tensors += [(b + k + ".weight", (d, d), f16, "w"), (b + k + ".bias", (d,), f32, "zero")]
        tensors += [(b + "ln1.weight", (d,), f32, "one"), (b + "ln1.bias", (d,), f32, "zero")]
        # the converter's names: CLIP fc1 (D -> FF) is "ffn_down", fc2 (FF -> D) "ffn_up"
        tensors += [(b + "ffn_down.weight", (ff, d), f16, "w"), (b + "ffn_down.bias", (ff,), f32, "zero")]
        tensors += [(b + "ffn_up.weight", (d, ff), f16, "w"), (b + "ffn_up.bias", (d,), f32, "zero")]
        tensors += [(b + "ln2.weight", (d,), f32, "one"), (b + "ln2.bias", (d,), f32, "zero")]
    with GGUFWriter(path) as w:
        w.add("general.architecture", "clip")
        w.add("clip.has_text_encoder", False)
        w.add("clip.has_vision_encoder", True)
        w.add("clip.has_llava_projector", True)
        w.add("general.file_type", 1)
        w.add("general.name", "llava-edge bench random CLIP")
        w.add("general.description", "image encoder for LLaVA")
        w.add("clip.projector_type", "mlp")
        w.add("clip.vision.image_size", v.image)
        w.add("clip.vision.patch_size", p)
        w.add("clip.vision.embedding_length", d)
        w.add("clip.vision.feed_forward_length", ff)
        w.add("clip.vision.projection_dim", 768)
        w.add("clip.vision.attention.head_count", v.n_heads)
        w.add("clip.vision.attention.layer_norm_epsilon", 1e-5)
        w.add("clip.vision.block_count", v.n_layers)
        w.add("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
        w.add("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])
        w.add("clip.use_gelu", False)
        for name, shape, t, _ in tensors:
            w.add_tensor_info(name, tuple(reversed(shape)), t)
        for i, (name, shape, t, init) in enumerate(tensors):
            dtype = np.float16 if t == f16 else np.float32
            if init == "w":
                data = _float_weight(shape, dtype, np.random.default_rng([seed, 1000 + i]))
            else:
                data = np.full(shape, 1.0 if init == "one" else 0.0, dtype)
            w.write_tensor(name, data)
    return path


def _cached(path: Path, make: Callable[[Path], object], log: Callable[[str], None]) -> Path:
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"generating {path} ...")
    t0 = time.perf_counter()
    make(path)
    log(f"  done in {time.perf_counter() - t0:.1f} s ({path.stat().st_size / 1e9:.2f} GB)")
    return path


def text_model_path(cache_dir: Path, shape: str, file_type: str, seed: int, log=print) -> Path:
    name = f"text-{shape}-{file_type}-s{seed}-g{GENERATOR_VERSION}.gguf"
    s = TEXT_SHAPES[shape]
    desc = f"llava-edge bench random {shape} {file_type}"
    return _cached(cache_dir / name, lambda p: write_text_gguf(p, s, file_type, seed, desc), log)


def vision_files(cache_dir: Path, shape: str, seed: int, precisions: Sequence[str], log=print) -> dict:
    """mmproj, its companion text model for mtmd, and the ONNX tower(s) built from the mmproj."""
    v = VISION_SHAPES[shape]
    stem = f"s{seed}-g{GENERATOR_VERSION}"
    mmproj = _cached(cache_dir / f"mmproj-{shape}-{stem}.gguf", lambda p: write_mmproj(p, v, seed), log)
    # mtmd tokenizes the prompt with the text model's vocabulary and checks its width against the projector
    companion = TextShape(dim=v.n_embd, n_layers=1, n_heads=8, n_kv_heads=8, ffn_dim=256, vocab=600)
    mmtext = _cached(
        cache_dir / f"mmtext-{v.n_embd}-{stem}.gguf",
        lambda p: write_text_gguf(p, companion, "q8_0", seed, "llava-edge bench mtmd companion"),
        log,
    )
    from .mmproj_onnx import BUILD_VERSION, build_clip_onnx

    onnx = {}
    fp32 = cache_dir / f"clip-{shape}-{stem}-b{BUILD_VERSION}-fp32.onnx"
    onnx["fp32"] = _cached(fp32, lambda p: build_clip_onnx(mmproj, p), log)
    if "int8" in precisions:
        onnx["int8"] = _cached(
            fp32.with_name(fp32.name.replace("-fp32", "-int8")), lambda p: quantize_tower_int8(fp32, p), log
        )
    return {"mmproj": mmproj, "mmtext": mmtext, "onnx": onnx}


# ---- child processes (top-level imports stay light: a child loads only what it measures) ---------------


def _peak_rss_mb() -> float:
    """This process's peak resident set. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over
    an exec from the (v)forked parent, so a child started by a large parent would report the parent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


def _prompts(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Token ids: BOS, then random ids (past the special and byte pieces); the same for both engines."""
    rng = np.random.default_rng(spec["seed"])
    vocab = spec["vocab"]
    short = np.concatenate([[1], rng.integers(259, vocab, spec["prompt_tokens"] - 1)]).astype(np.int32)
    long = np.concatenate([[1], rng.integers(259, vocab, spec["prefill_tokens"] - 1)]).astype(np.int32)
    return short, long


class _OursText:
    """Our decoder behind the calls the measurements make; the constructor is what "load" times."""

    def __init__(self, spec: dict):
        from . import _kernels
        from .loader import load_text_model

        _kernels.set_num_threads(spec["threads"])
        self.spec = spec
        self.model, _ = load_text_model(spec["model"])
        self.cache = self.model.make_cache(spec["n_ctx"])

    def eval(self, ids: np.ndarray) -> np.ndarray:
        """Logits after a prompt (`generate.prefill`, chunk `--prefill-chunk`)."""
        from .generate import prefill

        return prefill(self.model, self.cache, ids, chunk=self.spec["prefill_chunk"])

    def step(self, token: int) -> np.ndarray:
        """One decode step, as `generate.generate_step` makes it."""
        return self.model(np.array([token], np.int32), self.cache)

    def reset(self) -> None:
        self.cache = None  # freed before the new one exists, as a fresh process would have it
        self.cache = self.model.make_cache(self.spec["n_ctx"])


class _LlamaText:
    """llama.cpp (llama-cpp-python's `Llama`) behind the same calls."""

    def __init__(self, spec: dict):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=spec["model"],
            n_ctx=spec["n_ctx"],
            n_threads=spec["threads"],
            n_threads_batch=spec["threads"],
            n_batch=spec["prefill_chunk"],
            n_ubatch=spec["prefill_chunk"],
            flash_attn=spec["llama_flash_attn"],
            use_mmap=True,
            n_gpu_layers=0,
            verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()

    def _logits(self) -> np.ndarray:
        ptr = self._llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def eval(self, ids: np.ndarray) -> np.ndarray:
        self.llm.eval(ids.tolist())
        return self._logits()

    def step(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self._logits()

    def reset(self) -> None:
        self.llm.reset()  # the next eval clears the KV cache from position 0


_ENGINES = {"ours": _OursText, "llama.cpp": _LlamaText}


def _greedy(engine, logits: np.ndarray, n: int) -> tuple[float, list[int], np.ndarray]:
    """n greedy decode steps from `logits`: (seconds, tokens, last logits); argmax timed too."""
    tokens = []
    t0 = time.perf_counter()
    for _ in range(n):
        tok = int(np.argmax(logits))
        tokens.append(tok)
        logits = engine.step(tok)
    return time.perf_counter() - t0, tokens, logits


def _child_text(spec: dict) -> dict:
    short, long = _prompts(spec)
    t0 = time.perf_counter()
    engine = _ENGINES[spec["engine"]](spec)
    out = {"load_s": time.perf_counter() - t0}
    logits = engine.eval(short)  # warm-up: every page faulted in
    out["prompt_logits"] = np.asarray(logits, np.float64).tolist()
    if "decode" in spec["measures"]:
        seconds, out["tokens"], _ = _greedy(engine, logits, spec["decode_tokens"])
        out["decode_tps"] = spec["decode_tokens"] / seconds
    if "prefill" in spec["measures"]:
        engine.reset()
        t0 = time.perf_counter()
        logits = engine.eval(long)
        out["prefill_tps"] = len(long) / (time.perf_counter() - t0)
        out["prefill_finite"] = bool(np.isfinite(logits).all())
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _child_paired_decode(spec: dict) -> dict:
    """Both engines in one process, decoding in turns of `turn_tokens` tokens each, the order swapped every
    turn: both then meet the same machine. On a shared host the memory bandwidth left to us swings by up
    to 2x within a minute (measured here: 33 to 57 GB/s), which separate runs cannot tell from a
    difference in speed; decode, which streams every weight per token, follows it."""
    short, _ = _prompts(spec)
    engines = {name: _ENGINES[name](spec) for name in ENGINES}
    logits = {name: e.eval(short) for name, e in engines.items()}  # warm-up, as in _child_text
    probe = np.ones(2**26, np.float64)  # 512 MiB: the weather between turns, for the report
    seconds = dict.fromkeys(engines, 0.0)
    tokens: dict[str, list[int]] = {name: [] for name in engines}
    bandwidth = []
    order, done = list(engines), 0
    while done < spec["decode_tokens"]:
        n = min(spec["turn_tokens"], spec["decode_tokens"] - done)
        for name in order:
            s, toks, logits[name] = _greedy(engines[name], logits[name], n)
            seconds[name] += s
            tokens[name] += toks
        bandwidth.append(_read_gb_per_s(probe, spec["threads"], 3))
        order.reverse()
        done += n
    out = {name: {"decode_tps": done / seconds[name], "tokens": tokens[name]} for name in engines}
    out["bandwidth_gb_per_s"] = statistics.median(bandwidth)
    return out


def _read_gb_per_s(data: np.ndarray, threads: int, passes: int) -> float:
    """Streaming-read rate over `data`: float64 max-reductions of `threads` slices in a thread pool (numpy
    releases the GIL), the best of `passes` (on a shared machine the others are the neighbours' noise)."""
    from concurrent.futures import ThreadPoolExecutor

    parts = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        best = math.inf
        for _ in range(passes):
            t0 = time.perf_counter()
            list(pool.map(np.max, parts))
            best = min(best, time.perf_counter() - t0)
    return data.nbytes / best / 1e9


def _child_bandwidth(spec: dict) -> dict:
    """Streaming-read bandwidth: float64 max-reduction, best of 10 passes, on 1 and `threads` threads."""
    n_bytes = int(spec["bandwidth_gib"] * 2**30) // 64 * 64
    data = np.ones(n_bytes // 8, np.float64)  # written once: every page is resident before timing
    return {"gb_per_s": {str(t): _read_gb_per_s(data, t, 10) for t in sorted({1, spec["threads"]})}}


def _pixels(spec: dict) -> np.ndarray:
    """One random RGB image as uint8 [H, W, 3]; what both engines see."""
    size = spec["image"]
    return np.random.default_rng(spec["seed"]).integers(0, 256, (size, size, 3), np.uint8)


def _child_ours_vision(spec: dict) -> dict:
    from . import _kernels
    from .gguf_file import GGUFFile
    from .projector import Projector
    from .vision_tower import VisionTower

    _kernels.set_num_threads(spec["threads"])
    # normalised as CLIP does; preprocessing is not timed on either side
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    x = ((_pixels(spec) / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1)[None].copy()
    t0 = time.perf_counter()
    tower = VisionTower(spec["onnx"], threads=spec["threads"])
    mmproj = GGUFFile.open(spec["mmproj"])
    projector = Projector(mmproj, None, None)
    out = {"load_s": time.perf_counter() - t0}
    features = tower.encode(x)  # warm-up: onnxruntime's first run plans its memory
    projector(features[0])
    tower_s, projector_s, total = [], [], []
    for _ in range(spec["runs"]):
        t0 = time.perf_counter()
        features = tower.encode(x)
        t1 = time.perf_counter()
        embeddings = projector(features[0])
        t2 = time.perf_counter()
        tower_s.append(t1 - t0)
        projector_s.append(t2 - t1)
        total.append(t2 - t0)
    out.update(encode_s=total, tower_s=tower_s, projector_s=projector_s)
    out["finite"] = bool(np.isfinite(embeddings).all())
    out["peak_rss_mb"] = _peak_rss_mb()
    if spec.get("reference_onnx"):  # after the RSS reading: the reference tower is not this engine's
        del tower
        reference = VisionTower(spec["reference_onnx"], threads=spec["threads"]).encode(x)[0]
        out["cosine_vs_fp32"] = feature_cosine(reference, features[0])
    return out


def _child_llama_vision(spec: dict) -> dict:
    import ctypes

    import llama_cpp
    from llama_cpp import mtmd_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True  # mtmd needs the vocabulary and the width, not the weights
    text = llama_cpp.llama_model_load_from_file(spec["mmtext"].encode(), params)
    if not text:
        raise RuntimeError(f"llama.cpp could not load {spec['mmtext']}")
    ctx_params = mtmd_cpp.mtmd_context_params_default()
    ctx_params.use_gpu = False
    ctx_params.print_timings = False
    ctx_params.n_threads = spec["threads"]
    ctx_params.flash_attn_type = {"auto": -1, "off": 0, "on": 1}[spec["vision_flash_attn"]]
    t0 = time.perf_counter()
    ctx = mtmd_cpp.mtmd_init_from_file(spec["mmproj"].encode(), text, ctx_params)
    if not ctx:
        raise RuntimeError(f"mtmd could not load {spec['mmproj']}")
    out = {"load_s": time.perf_counter() - t0}
    rgb = np.ascontiguousarray(_pixels(spec))
    bitmap = mtmd_cpp.mtmd_bitmap_init(
        rgb.shape[1], rgb.shape[0], rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    )
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    marker = mtmd_cpp.mtmd_default_marker()
    prompt = mtmd_cpp.mtmd_input_text(marker, len(marker), True, True)
    bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
    if mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(prompt), bitmaps, 1) != 0:
        raise RuntimeError("mtmd_tokenize failed")
    image = None
    for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
        chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
        if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            image = chunk
    if image is None:
        raise RuntimeError("mtmd_tokenize produced no image chunk")
    n_tokens = mtmd_cpp.mtmd_input_chunk_get_n_tokens(image)
    total = []
    for _ in range(spec["runs"]):
        t0 = time.perf_counter()
        if mtmd_cpp.mtmd_encode_chunk(ctx, image) != 0:
            raise RuntimeError("mtmd_encode_chunk failed")
        total.append(time.perf_counter() - t0)
    n_embd = llama_cpp.llama_model_n_embd(text)
    embd = np.ctypeslib.as_array(mtmd_cpp.mtmd_get_output_embd(ctx), shape=(n_tokens * n_embd,))
    out.update(encode_s=total, n_tokens=int(n_tokens), finite=bool(np.isfinite(embd).all()))
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


_CHILDREN = {
    "text": _child_text,
    "paired_decode": _child_paired_decode,
    "bandwidth": _child_bandwidth,
    "ours_vision": _child_ours_vision,
    "llama_vision": _child_llama_vision,
}


def _child_entry(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = _CHILDREN[spec["kind"]](spec)
    Path(result_path).write_text(json.dumps(result))


def _busy_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (/proc/stat), None if unknown."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def others_cpu_share(seconds: float = 2.0) -> float | None:
    """Fraction of all CPUs that other processes used over the next `seconds` (this one is idle)."""
    before = _busy_cpu_seconds()
    if before is None:
        return None
    time.sleep(seconds)
    return max(0.0, (_busy_cpu_seconds() - before) / (seconds * (os.cpu_count() or 1)))


def wait_until_quiet(threshold: float, max_wait: float, log: Callable[[str], None]) -> float | None:
    """Sample the other processes' CPU share until it is below `threshold` or `max_wait` seconds pass;
    returns the last share seen."""
    deadline = time.monotonic() + max_wait
    share = others_cpu_share()
    while share is not None and share > threshold and time.monotonic() < deadline:
        log(f"  waiting for a quiet machine: other processes use {share:.0%} of the CPUs")
        time.sleep(8.0)
        share = others_cpu_share()
    return share


def _run_child(spec: dict, timeout: float) -> dict:
    """Run one measurement in a fresh interpreter; its result, or {"error": ...}."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(spec["threads"])
    with tempfile.TemporaryDirectory(prefix="llava-edge-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        code = "import sys; from llava_edge.bench import _child_entry; _child_entry(sys.argv[1], sys.argv[2])"
        cmd = [sys.executable, "-c", code, str(spec_path), str(result_path)]
        busy, mine, wall = _busy_cpu_seconds(), _children_cpu_seconds(), time.monotonic()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"{spec['kind']}: timed out after {timeout:.0f} s"}
        if proc.returncode != 0 or not result_path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
            return {"error": f"{spec['kind']}: exit status {proc.returncode}: " + " | ".join(tail)}
        result = json.loads(result_path.read_text())
        if busy is not None:  # how much of the machine other processes took while the child ran
            others = _busy_cpu_seconds() - busy - (_children_cpu_seconds() - mine)
            result["others_cpu_share"] = max(
                0.0, others / ((time.monotonic() - wall) * (os.cpu_count() or 1))
            )
        return result


# ---- the whole run -----------------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict:
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "runs": list(values),
    }


def _streamed_bytes(path: Path) -> tuple[int, int]:
    """(file size, bytes of every tensor but token_embd): what one decode step reads."""
    from .gguf_file import GGUFFile

    with GGUFFile.open(path) as f:
        streamed = sum(t.nbytes for name, t in f.tensors.items() if name != "token_embd.weight")
    return path.stat().st_size, streamed


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def run_bench(
    *,
    shape: str = "7b",
    types: Sequence[str] = DEFAULT_TYPES,
    only: Sequence[str] = MEASURES,
    engines: Sequence[str] = ENGINES,
    threads: int = 2,
    runs: int = 3,
    decode_tokens: int = 128,
    turn_tokens: int = 16,
    prompt_tokens: int = 16,
    prefill_tokens: int = 640,
    prefill_chunk: int = 640,
    n_ctx: int = 1024,
    llama_flash_attn: bool = True,
    vision_flash_attn: str = "auto",
    vision_precision: Sequence[str] = ("fp32",),
    bandwidth_gib: float = 2.0,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = 1800.0,
    quiet_wait: float = 0.0,
    quiet_threshold: float = 0.1,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the selected measurements; return the result dict that `format_table` prints and `main`
    writes as JSON. Failures of one child are recorded under "errors" and the run goes on. With
    `quiet_wait` > 0, each child waits (at most that many seconds) until other processes use less than
    `quiet_threshold` of the CPUs."""
    from .quant_rules import FILE_TYPES

    if shape not in TEXT_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(TEXT_SHAPES)}")
    for name, values, allowed in (
        ("type", types, FILE_TYPES),
        ("measurement", only, MEASURES),
        ("engine", engines, ENGINES),
        ("vision precision", vision_precision, VISION_PRECISIONS),
    ):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ValueError(f"unknown {name} {bad[0]!r}; choose from {', '.join(allowed)}")
    if prompt_tokens < 1 or prefill_tokens < 1 or decode_tokens < 1 or runs < 1 or threads < 1:
        raise ValueError("token counts, runs and threads must be at least 1")
    if turn_tokens < 0:
        raise ValueError("--decode-turn must be 0 (no turns) or more")
    if max(prompt_tokens + decode_tokens, prefill_tokens) > n_ctx:
        raise ValueError(f"n_ctx {n_ctx} is smaller than the longest sequence the run needs")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    config = dict(
        shape=shape,
        text_shape=asdict(TEXT_SHAPES[shape]),
        threads=threads,
        runs=runs,
        decode_tokens=decode_tokens,
        turn_tokens=turn_tokens,
        prompt_tokens=prompt_tokens,
        prefill_tokens=prefill_tokens,
        prefill_chunk=prefill_chunk,
        n_ctx=n_ctx,
        seed=seed,
        cache_dir=str(cache),
        quiet_wait=quiet_wait,
        quiet_threshold=quiet_threshold,
        llama_cpp=dict(
            flash_attn=llama_flash_attn,
            use_mmap=True,
            n_batch=prefill_chunk,
            n_ubatch=prefill_chunk,
            kv_cache="f16",
        ),
        ours=dict(kv_cache="f16", prefill="generate.prefill", prefill_chunk=prefill_chunk),
    )
    result: dict = {"config": config, "machine": _machine(), "errors": []}
    base = dict(threads=threads, seed=seed)

    def child(spec: dict) -> dict | None:
        if quiet_wait > 0:
            wait_until_quiet(quiet_threshold, quiet_wait, log)
        r = _run_child({**base, **spec}, timeout)
        if "error" in r:
            log(f"  error: {r['error']}")
            result["errors"].append(r["error"])
            return None
        return r

    if "bandwidth" in only:
        log(f"bandwidth: {bandwidth_gib:g} GiB, 1 and {threads} threads ...")
        r = child({"kind": "bandwidth", "bandwidth_gib": bandwidth_gib})
        if r:
            kernel = "numpy float64 max, thread pool over slices, best of 10"
            result["bandwidth"] = {"kernel": kernel, "gib": bandwidth_gib, **r}
    text_measures = [m for m in ("decode", "prefill") if m in only]
    if text_measures:
        spec = dict(
            measures=text_measures,
            vocab=TEXT_SHAPES[shape].vocab,
            n_ctx=n_ctx,
            decode_tokens=decode_tokens,
            turn_tokens=turn_tokens,
            prompt_tokens=prompt_tokens,
            prefill_tokens=prefill_tokens,
            prefill_chunk=prefill_chunk,
            llama_flash_attn=llama_flash_attn,
        )
        result["text"] = {}
        for file_type in types:
            path = text_model_path(cache, shape, file_type, seed, log)
            entry = _run_text(path, {**spec, "model": str(path)}, engines, runs, child, log)
            _text_ratios(entry, result.get("bandwidth"), threads)
            result["text"][file_type] = entry
            disagreement = agreement_error(path.name, entry)
            if disagreement:
                result["errors"].append(disagreement)
    if "vision" in only:
        spec = dict(image=VISION_SHAPES[shape].image, runs=runs, vision_flash_attn=vision_flash_attn)
        files = vision_files(cache, shape, seed, vision_precision, log)
        result["vision"] = _run_vision(files, spec, shape, vision_precision, engines, child, log)
    result["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    return result


_TEXT_FIELDS = ("load_s", "decode_tps", "prefill_tps", "peak_rss_mb", "others_cpu_share")


def _run_text(path: Path, spec: dict, engines: Sequence[str], runs: int, child, log) -> dict:
    """One GGUF: `runs` children per engine, interleaved so that slow spells of a shared machine hit both.
    With both engines and `turn_tokens` > 0, decode is measured apart, in `runs` paired children (see
    _child_paired_decode), and the per-engine children measure the rest."""
    size, streamed = _streamed_bytes(path)
    entry: dict = {"file": str(path), "file_bytes": size, "streamed_bytes_per_token": streamed}
    paired = "decode" in spec["measures"] and spec["turn_tokens"] > 0 and set(ENGINES) <= set(engines)
    alone = [m for m in spec["measures"] if not (paired and m == "decode")]
    samples: dict[str, list[dict]] = {e: [] for e in engines}
    pairs: list[dict] = []
    for i in range(runs):
        if paired:
            turns = f"both engines taking turns of {spec['turn_tokens']} tokens"
            log(f"{path.name}: decode, {turns}, run {i + 1}/{runs} ...")
            r = child({**spec, "kind": "paired_decode"})
            if r:
                pairs.append(r)
                log("  " + ", ".join(f"{e} {r[e]['decode_tps']:.3g} tokens/s" for e in ENGINES))
        for engine in engines:
            log(f"{path.name}: {engine}, run {i + 1}/{runs} ...")
            r = child({**spec, "measures": alone, "kind": "text", "engine": engine})
            if r:
                samples[engine].append(r)
                log("  " + ", ".join(f"{k} {r[k]:.3g}" for k in _TEXT_FIELDS if k in r))
    for engine, rs in samples.items():
        if rs:
            entry[engine] = {k: summary([r[k] for r in rs]) for k in _TEXT_FIELDS if k in rs[0]}
            entry[engine]["finite"] = all(r.get("prefill_finite", True) for r in rs)
    if pairs:
        for engine in ENGINES:
            entry.setdefault(engine, {})["decode_tps"] = summary([r[engine]["decode_tps"] for r in pairs])
        per_token = entry["streamed_bytes_per_token"]
        dp = entry["decode_pairs"] = {
            "turn_tokens": spec["turn_tokens"],
            "ratio": summary([r["ours"]["decode_tps"] / r["llama.cpp"]["decode_tps"] for r in pairs]),
            "bandwidth_gb_per_s": summary([r["bandwidth_gb_per_s"] for r in pairs]),
            # each run against its own floor: bytes per token / the bandwidth read between its turns
            "of_floor": {
                e: summary([r[e]["decode_tps"] * per_token / (r["bandwidth_gb_per_s"] * 1e9) for r in pairs])
                for e in ENGINES
            },
        }
        shares = [r["others_cpu_share"] for r in pairs if "others_cpu_share" in r]
        if shares:
            dp["others_cpu_share"] = summary(shares)
    if all(samples.get(e) for e in ENGINES):  # same file, same maths: a sanity check, not a target
        a, b = (np.asarray(samples[e][0]["prompt_logits"], np.float64) for e in ENGINES)
        entry["agreement"] = {
            "prompt_logits_cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
            "prompt_top1_same": bool(a.argmax() == b.argmax()),
        }
        first = None
        if pairs:
            first = [pairs[0][e]["tokens"] for e in ENGINES]
        elif "decode" in alone:
            first = [samples[e][0]["tokens"] for e in ENGINES]
        if first:
            entry["agreement"]["greedy_common_prefix"] = _common_prefix(*first)
            entry["agreement"]["of"] = spec["decode_tokens"]
    return entry


def agreement_error(name: str, entry: dict) -> str | None:
    """Why a file's speed figures mean nothing, if the engines computed different things: timing a kernel
    that computes something else is not a comparison."""
    cosine = entry.get("agreement", {}).get("prompt_logits_cosine")
    if cosine is None or cosine >= AGREEMENT_BAR:
        return None
    return (
        f"{name}: ours and llama.cpp disagree after the prompt (logits cosine {cosine:.4f} < "
        f"{AGREEMENT_BAR}): the speed figures for this file are not comparable"
    )


def _text_ratios(entry: dict, bandwidth: dict | None, threads: int) -> None:
    ours, llama = entry.get("ours"), entry.get("llama.cpp")
    if ours and llama:
        entry["ratio"] = {
            k: ours[k]["median"] / llama[k]["median"]
            for k in ours
            if k in llama and k not in ("finite", "others_cpu_share")
        }
        if "decode_pairs" in entry:  # each run's ratio is the fair one; their median
            entry["ratio"]["decode_tps"] = entry["decode_pairs"]["ratio"]["median"]
    if bandwidth and "decode_tps" in (ours or llama or {}):
        floor_tps = bandwidth["gb_per_s"][str(threads)] * 1e9 / entry["streamed_bytes_per_token"]
        entry["floor"] = {"tps": floor_tps, "bandwidth_threads": threads}
        for name, e in (("ours", ours), ("llama.cpp", llama)):
            if e and "decode_tps" in e:
                entry["floor"][f"fraction_{name}"] = e["decode_tps"]["median"] / floor_tps


def _vision_entry(r: dict) -> dict:
    entry = {k: summary(r[k]) for k in ("encode_s", "tower_s", "projector_s") if k in r}
    keep = ("load_s", "peak_rss_mb", "finite", "n_tokens", "cosine_vs_fp32", "others_cpu_share")
    entry.update({k: r[k] for k in keep if k in r})
    return entry


def _run_vision(files: dict, spec: dict, shape: str, precisions, engines, child, log) -> dict:
    """One child per engine (and precision), each timing `runs` encodes of the same image."""
    out = {
        "shape": asdict(VISION_SHAPES[shape]),
        "flash_attn_llama_cpp": spec["vision_flash_attn"],
        "mmproj": str(files["mmproj"]),
        "mmtext": str(files["mmtext"]),
        "onnx": {k: str(p) for k, p in files["onnx"].items()},
    }
    if "ours" in engines:
        out["ours"] = {}
        for precision in precisions:
            log(f"vision: ours {precision}, {spec['runs']} runs ...")
            ours = {**spec, "kind": "ours_vision", "onnx": out["onnx"][precision], "mmproj": out["mmproj"]}
            if precision != "fp32":
                ours["reference_onnx"] = out["onnx"]["fp32"]
            r = child(ours)
            if r:
                out["ours"][precision] = _vision_entry(r)
    if "llama.cpp" in engines:
        log(f"vision: llama.cpp, {spec['runs']} runs ...")
        r = child({**spec, "kind": "llama_vision", "mmproj": out["mmproj"], "mmtext": out["mmtext"]})
        if r:
            out["llama.cpp"] = _vision_entry(r)
    if out.get("llama.cpp"):
        llama = out["llama.cpp"]["encode_s"]["median"]
        out["ratio_encode_s"] = {p: e["encode_s"]["median"] / llama for p, e in out.get("ours", {}).items()}
    return out


def _machine() -> dict:
    from importlib import metadata

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from . import _kernels

    so = Path(_kernels.__file__)
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "load_average_1min_at_start": os.getloadavg()[0],
        "isa": _kernels.isa(),
        "kernels": {
            "file": str(so),
            "built": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(so.stat().st_mtime)),
        },
        "python": platform.python_version(),
        "llama_cpp_python": version("llama-cpp-python"),
        "onnxruntime": version("onnxruntime"),
        "numpy": np.__version__,
    }


# ---- printing ----------------------------------------------------------------------------------------


def _num(x: float) -> str:
    """Three significant figures, without exponents for the magnitudes a benchmark shows."""
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}" if x else "0"


def _pct(s: dict | None) -> str:
    return " / ".join(f"{s[k]:.0%}" for k in ("min", "median", "max")) if s else "-"


def _mmm(s: dict | None) -> str:
    return " / ".join(_num(s[k]) for k in ("min", "median", "max")) if s else "-"


def format_table(result: dict) -> str:
    c = result["config"]
    lines = [
        f"llava-edge bench: shape {c['shape']}, {c['threads']} threads, {c['runs']} runs "
        "(min / median / max; ratio = ours / llama.cpp on medians)"
    ]
    m = result.get("machine", {})
    if "load_average_1min_at_end" in m:
        lines.append(
            f"{m['cpu']}; load average (1 min) {m['load_average_1min_at_start']:.1f} at start, "
            f"{m['load_average_1min_at_end']:.1f} at end; kernels built {m['kernels']['built']}"
        )
    bw = result.get("bandwidth")
    if bw:
        rates = ", ".join(f"{g:.1f} GB/s on {t} thread{'s' * (t != '1')}" for t, g in bw["gb_per_s"].items())
        lines.append(f"memory read bandwidth: {rates} ({bw['kernel']}, {bw['gib']:g} GiB)")
    row = "  {:<18}{:>28}{:>28}{:>8}"
    for file_type, e in result.get("text", {}).items():
        head = (
            f"{file_type.upper()}: file {e['file_bytes'] / 1e9:.2f} GB, "
            f"{e['streamed_bytes_per_token'] / 1e9:.2f} GB read per token"
        )
        if "floor" in e:
            head += f", bandwidth floor {_num(e['floor']['tps'])} tokens/s"
        lines += ["", head, row.format("", "ours", "llama.cpp", "ratio")]
        ours, llama, ratio = e.get("ours", {}), e.get("llama.cpp", {}), e.get("ratio", {})
        for key, label in (
            ("decode_tps", "decode tokens/s"),
            ("prefill_tps", "prefill tokens/s"),
            ("load_s", "load s"),
            ("peak_rss_mb", "peak RSS MB"),
        ):
            if key in ours or key in llama:
                r = f"{ratio[key]:.2f}" if key in ratio else "-"
                lines.append(row.format(label, _mmm(ours.get(key)), _mmm(llama.get(key)), r))
            if key == "decode_tps" and "floor" in e:
                pct = [e["floor"].get(f"fraction_{n}") for n in ENGINES]
                lines.append(row.format("  of floor", *(f"{f:.0%}" if f else "-" for f in pct), ""))
        if "others_cpu_share" in ours or "others_cpu_share" in llama:
            shares = (_pct(ours.get("others_cpu_share")), _pct(llama.get("others_cpu_share")))
            lines.append(row.format("others' CPU share", *shares, ""))
        if "decode_pairs" in e:
            dp = e["decode_pairs"]
            lines.append(
                f"  decode: both engines in one process, taking turns of {dp['turn_tokens']} tokens; "
                f"ratio per run {_mmm(dp['ratio'])} (the ratio column: its median)"
            )
            others = f", others' CPU share {_pct(dp['others_cpu_share'])}" if "others_cpu_share" in dp else ""
            weather = _mmm(dp["bandwidth_gb_per_s"])
            lines.append(f"  memory bandwidth between turns (median per run) {weather} GB/s{others}")
            if "of_floor" in dp:
                fr = ", ".join(f"{n} {_pct(dp['of_floor'][n])}" for n in ENGINES)
                lines.append(f"  decode per run as a fraction of the floor at that run's bandwidth: {fr}")
        if "agreement" in e:
            g = e["agreement"]
            line = f"  engines agree: logits after the prompt cosine {g['prompt_logits_cosine']:.4f}"
            if "greedy_common_prefix" in g:
                line += f", first {g['greedy_common_prefix']} of {g['of']} greedy tokens identical"
            lines.append(line)
    vision = result.get("vision")
    if vision:
        s = vision["shape"]
        lines += [
            "",
            f"vision: {s['description']}, one {s['image']}x{s['image']} image, encode seconds "
            f"(llama.cpp flash attention {vision['flash_attn_llama_cpp']})",
            "  {:<18}{:>28}{:>8}{:>10}{:>10}{:>10}".format(
                "", "encode s", "ratio", "load s", "RSS MB", "others"
            ),
        ]
        engines = [(f"ours {p}", e) for p, e in vision.get("ours", {}).items()]
        engines += [("llama.cpp", vision["llama.cpp"])] if "llama.cpp" in vision else []
        for label, e in engines:
            precision = label.removeprefix("ours ")
            r = vision.get("ratio_encode_s", {}).get(precision) if label != "llama.cpp" else None
            others = f"{e['others_cpu_share']:.0%}" if "others_cpu_share" in e else "-"
            lines.append(
                "  {:<18}{:>28}{:>8}{:>10}{:>10}{:>10}".format(
                    label,
                    _mmm(e["encode_s"]),
                    f"{r:.2f}" if r else "",
                    _num(e["load_s"]),
                    _num(e["peak_rss_mb"]),
                    others,
                )
            )
            if "tower_s" in e:
                lines.append(f"    tower {_mmm(e['tower_s'])} s, projector {_mmm(e['projector_s'])} s")
            if "cosine_vs_fp32" in e:
                cos = e["cosine_vs_fp32"]
                ok = "meets" if cos["min"] >= COSINE_BAR else "misses"
                lines.append(
                    f"    cosine to the fp32 tower's features: min {cos['min']:.5f}, mean {cos['mean']:.5f} "
                    f"({ok} the {COSINE_BAR} bar)"
                )
    for err in result.get("errors", []):
        lines.append(f"error: {err}")
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------------


def _csv(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip().lower() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)} (comma-separated)")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    from .quant_rules import FILE_TYPES

    p = argparse.ArgumentParser(
        prog="llava-edge bench",
        description="Decode, prefill, vision tower and memory bandwidth, ours vs llama.cpp, on generated "
        "random-weight files of real shapes (cached). See `llava_edge.bench` for what is measured.",
    )
    p.add_argument("--shape", choices=sorted(TEXT_SHAPES), default="7b", help="Model shapes (default: 7b).")
    p.add_argument(
        "--types",
        type=_csv(list(FILE_TYPES)),
        default=list(DEFAULT_TYPES),
        help="Decoder GGUF types, comma-separated (default: q4_0,q8_0,q4_k_m).",
    )
    p.add_argument(
        "--only",
        type=_csv(MEASURES),
        default=list(MEASURES),
        help="Measurements, comma-separated (default: all of decode,prefill,vision,bandwidth).",
    )
    p.add_argument("--engines", type=_csv(ENGINES), default=list(ENGINES), help="Default: ours,llama.cpp.")
    p.add_argument("-t", "--threads", type=int, default=2, help="Threads for every engine (default: 2).")
    p.add_argument("--runs", type=int, default=3, help="Repeats of every measurement (default: 3).")
    p.add_argument("--decode-tokens", type=int, default=128, help="Timed decode steps (default: 128).")
    p.add_argument(
        "--decode-turn",
        type=int,
        default=16,
        help="With both engines, decode is timed with both in one process taking turns of this many tokens, "
        "so both meet the same machine (it needs both engines' memory at once: ~12.5 GB at 7B Q4_0); "
        "0 times each in its own process instead (default: 16).",
    )
    p.add_argument(
        "--prompt-tokens", type=int, default=16, help="Untimed prompt before decoding (default: 16)."
    )
    p.add_argument("--prefill-tokens", type=int, default=640, help="Timed prompt length (default: 640).")
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=640,
        help="Tokens per model call in prefill: our generate.prefill chunk and llama.cpp's n_batch and "
        "n_ubatch (default: 640, the whole prompt at once).",
    )
    p.add_argument("--n-ctx", type=int, default=1024, help="KV cache size, both engines (default: 1024).")
    p.add_argument(
        "--llama-flash-attn",
        choices=["on", "off"],
        default="on",
        help="llama.cpp decoder flash attention (default: on, what llama.cpp's own 'auto' picks on CPU; "
        "llama-cpp-python's Llama would default to off).",
    )
    p.add_argument(
        "--vision-flash-attn",
        choices=["auto", "on", "off"],
        default="auto",
        help="llama.cpp CLIP flash attention (default: auto, mtmd's default).",
    )
    p.add_argument(
        "--vision-precision",
        type=_csv(VISION_PRECISIONS),
        default=["fp32"],
        help="Our tower's ONNX: fp32, int8 (experimental: onnxruntime dynamic quantization, reported with "
        "its cosine to fp32), or both comma-separated (default: fp32).",
    )
    p.add_argument(
        "--bandwidth-gib", type=float, default=2.0, help="Array size for the bandwidth test (default: 2)."
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of the generated weights and prompts.")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"Where generated files are kept (default: {default_cache_dir()}).",
    )
    p.add_argument("--json", type=Path, default=None, help="Also write the result as JSON here.")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="Before each child, wait up to this many seconds for other processes to use less than "
        "--quiet-threshold of the CPUs (default: 0, do not wait).",
    )
    p.add_argument(
        "--quiet-threshold", type=float, default=0.1, help="CPU share counted as quiet (default: 0.1)."
    )
    p.add_argument(
        "--timeout", type=float, default=1800.0, help="Seconds before one child is abandoned (default 1800)."
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        result = run_bench(
            shape=args.shape,
            types=args.types,
            only=args.only,
            engines=args.engines,
            threads=args.threads,
            runs=args.runs,
            decode_tokens=args.decode_tokens,
            turn_tokens=args.decode_turn,
            prompt_tokens=args.prompt_tokens,
            prefill_tokens=args.prefill_tokens,
            prefill_chunk=args.prefill_chunk,
            n_ctx=args.n_ctx,
            llama_flash_attn=args.llama_flash_attn == "on",
            vision_flash_attn=args.vision_flash_attn,
            vision_precision=args.vision_precision,
            bandwidth_gib=args.bandwidth_gib,
            seed=args.seed,
            cache_dir=args.cache_dir,
            timeout=args.timeout,
            quiet_wait=args.quiet_wait,
            quiet_threshold=args.quiet_threshold,
            log=log,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["command"] = ["llava-edge", "bench", *(sys.argv[1:] if argv is None else argv)]
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
