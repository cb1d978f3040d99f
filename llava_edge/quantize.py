"""Quantize or requantize a GGUF file (`llava-edge quantize IN.gguf OUT.gguf TYPE`).

Each tensor's type follows `quant_rules` (llama.cpp's mixes); projector and vision tensors (`mm.*`, `v.*`)
stay F16 (F32 in an F32 file) unless asked; `keep` patterns override both. Slabs of rows stream from the
memory-mapped source through a thread pool (the kernels release the GIL) to the writer, and the source
pages are dropped once converted: peak memory is a few slabs plus the largest output tensor (the writer
takes a tensor whole), not the model. The output appears under its name only when complete.

`python -m llava_edge.quantize --bench-7b DIR` measures us and llama.cpp on a 7B-shaped F16 file.
"""

from __future__ import annotations

import fnmatch
import mmap
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _kernels
from .errors import LlavaEdgeError
from .ggml_types import BLOCK_LAYOUT, SUPPORTED, GGMLType
from .gguf_file import GGUFFile, GGUFValueType, TensorInfo, align_up
from .gguf_writer import GGUFWriter
from .quant_rules import FILE_TYPES, FLOAT_TYPES, fallback, is_quantizable, mix_type

QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION: the block layouts of ggml-common.h
SLAB_VALUES = 1 << 20  # values per unit of work: 4 MiB of float32
PROJECTOR_PREFIXES = ("mm.", "v.", "model.image_newline")


class QuantizeError(LlavaEdgeError):
    """A file cannot be quantized as asked: bad arguments, a refused source, or an unwritable output."""


@dataclass(frozen=True)
class Plan:
    name: str
    source: TensorInfo
    type: GGMLType
    reason: str  # "rule", "keep", "projector", "copy" (never quantized), "fallback"

    @property
    def copy(self) -> bool:
        return self.type == self.source.type

    @property
    def nbytes(self) -> int:
        block, size = BLOCK_LAYOUT[self.type]
        return self.source.shape[0] // block * size * self.source.n_rows


def parse_ftype(ftype: str) -> str:
    key = str(ftype).lower()
    if key not in FILE_TYPES:
        names = ", ".join(k.upper() for k in FILE_TYPES)
        raise QuantizeError(f"unknown type {ftype!r}; choose one of {names}")
    return key


def parse_tensor_type(name: str | GGMLType, where: str) -> GGMLType:
    if isinstance(name, GGMLType):
        found = name
    else:
        found = GGMLType.__members__.get(str(name).upper())
    if found is None or found not in SUPPORTED:
        names = ", ".join(t.name for t in sorted(SUPPORTED))
        raise QuantizeError(f"{where}: unknown tensor type {name!r}; choose one of {names}")
    return found


def parse_keep(items: Mapping[str, str | GGMLType] | list[str] | tuple[str, ...]) -> dict[str, GGMLType]:
    """`{"pattern": "TYPE"}` or ["pattern=TYPE", ...] (the CLI form) -> {pattern: GGMLType}."""
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            pattern, sep, type_name = str(item).rpartition("=")
            if not sep or not pattern:
                raise QuantizeError(f"--keep {item!r}: expected NAME=TYPE, e.g. 'output.weight=Q8_0'")
            pairs.append((pattern, type_name))
    return {pattern: parse_tensor_type(t, f"--keep {pattern}={t}") for pattern, t in pairs}


def plan_tensors(
    f: GGUFFile,
    ftype: str,
    *,
    keep: Mapping[str, GGMLType] | None = None,
    quantize_projector: bool = False,
) -> list[Plan]:
    """The output type of every tensor of `f` for `ftype` (a FILE_TYPES key), in file order."""
    keep = keep or {}
    arch = f.get("general.architecture", "llama")
    layers = {int(n.split(".")[1]) for n in f.tensors if n.startswith("blk.") and n.split(".")[1].isdigit()}
    n_layers = int(f.get(f"{arch}.block_count", max(layers, default=-1) + 1))
    n_heads, n_kv = f.get(f"{arch}.attention.head_count"), f.get(f"{arch}.attention.head_count_kv")
    # llama.cpp's LLM_TYPE_70B: a llama model of 80 layers with grouped-query attention
    model_70b = arch == "llama" and n_layers == 80 and n_kv is not None and n_kv != n_heads
    tied = "output.weight" not in f.tensors and "token_embd.weight" in f.tensors
    projector_matrix = GGMLType.F32 if ftype == "f32" else GGMLType.F16
    plans = []
    for name, info in f.tensors.items():
        pattern = next((p for p in keep if fnmatch.fnmatchcase(name, p)), None)
        if len(info.shape) < 2:
            plans.append(Plan(name, info, info.type, "copy"))
        elif pattern is not None:
            wanted = keep[pattern]
            got = fallback(wanted, info.shape[0])
            plans.append(Plan(name, info, got, "keep" if got == wanted else "fallback"))
        elif name.startswith(PROJECTOR_PREFIXES) and not quantize_projector:
            plans.append(Plan(name, info, projector_matrix, "projector"))
        elif not is_quantizable(name, info.shape):
            plans.append(Plan(name, info, info.type, "copy"))
        else:
            wanted = mix_type(name, info.shape, ftype, n_layers, tied_embeddings=tied, model_70b=model_70b)
            got = fallback(wanted, info.shape[0])
            plans.append(Plan(name, info, got, "rule" if got == wanted else "fallback"))
    return plans


def _check_sources(path: Path, plans: list[Plan], allow_requantize: bool) -> None:
    for p in plans:
        src = p.source.type
        if p.copy or src in FLOAT_TYPES:
            continue
        if src not in SUPPORTED:
            raise QuantizeError(
                f"{path}: tensor {p.name} is {src.name}, a type llava-edge cannot decode, so it cannot "
                f"become {p.type.name}; quantize from the F32/F16/BF16 original instead"
            )
        if not allow_requantize:
            raise QuantizeError(
                f"{path}: tensor {p.name} is already {src.name}; requantizing it to {p.type.name} adds a "
                "second rounding error. Quantize from an F32/F16/BF16 file, or allow it explicitly "
                "(allow_requantize=True, --allow-requantize)"
            )


class _Source:
    """The source file's tensor bytes through our own read-only mapping, so pages can be dropped."""

    def __init__(self, path: Path):
        with open(path, "rb") as fh:
            self.mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

    def rows(self, info: TensorInfo, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of a tensor as bytes [rows, row_bytes] (a view)."""
        rb = info.row_bytes
        return np.frombuffer(self.mm, np.uint8, (r1 - r0) * rb, info.offset + r0 * rb).reshape(r1 - r0, rb)

    def release(self, start: int, length: int) -> None:
        """Drop the mapped pages fully inside [start, start + length): they count as our memory otherwise."""
        lo = align_up(start, mmap.PAGESIZE)
        hi = (start + length) // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo and hasattr(mmap, "MADV_DONTNEED"):
            self.mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:
            pass  # a view is still alive; the mapping goes with it


def _convert(src: _Source, p: Plan, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) of a tensor in its planned type (runs in a worker thread)."""
    raw = src.rows(p.source, r0, r1)
    n = p.source.shape[0]
    if p.copy:
        return raw
    if p.source.type == GGMLType.F32:
        x = raw.view(np.float32)
    else:
        x = _kernels.dequantize(int(p.source.type), raw, n)
    if p.type == GGMLType.F32:
        return np.ascontiguousarray(x)
    return _kernels.quantize(int(p.type), x)


def _slabs(plans: list[Plan]) -> Iterator[tuple[int, int, int]]:
    """(plan index, first row, end row) units of work, in file order."""
    for i, p in enumerate(plans):
        rows = p.source.n_rows
        step = rows if p.copy else max(1, SLAB_VALUES // max(1, p.source.shape[0]))
        for r0 in range(0, rows, step):
            yield i, r0, min(rows, r0 + step)
        if rows == 0:
            yield i, 0, 0


def _say(progress: bool, text: str, end: str = "\n") -> None:
    if progress:
        print(text, end=end, file=sys.stderr, flush=True)


def quantize_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    ftype: str,
    *,
    allow_requantize: bool = False,
    keep: Mapping[str, str | GGMLType] | list[str] | None = None,
    quantize_projector: bool = False,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Write `dst`: the GGUF `src` with its tensors in the types of file type `ftype` (F32, F16, BF16, Q8_0,
    Q4_0, Q4_K_S, Q4_K_M, Q5_K_M, Q6_K; any case). Returns statistics (see `summary`).

    `keep`: {fnmatch pattern: tensor type} (or ["pattern=TYPE", ...]) for tensors of 2+ dimensions; the
    first matching pattern wins over every rule, with the usual fallback when the type's block does not
    divide the rows. `quantize_projector`: give `mm.*` / `v.*` matrices the file's main type too.
    Metadata is copied, with general.file_type and general.quantization_version set. A bundle's
    vision.onnx is linked (or copied) beside `dst` when it is not there yet.
    """
    t_start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    ftype = parse_ftype(ftype)
    keep_types = parse_keep(keep or {})
    threads = int(threads or _kernels.get_num_threads())
    if threads < 1:
        raise QuantizeError(f"threads must be at least 1, got {threads}")
    if src.resolve() == dst.resolve() or (dst.exists() and src.exists() and os.path.samefile(src, dst)):
        raise QuantizeError(f"{dst}: the output would overwrite the input; choose another output path")
    if dst.is_dir():
        raise QuantizeError(f"{dst}: is a directory; give the output file's path")
    if not dst.parent.is_dir():
        raise QuantizeError(f"{dst}: the folder {dst.parent} does not exist")

    with GGUFFile.open(src) as f:
        if int(f.get("split.count", 1)) > 1:
            raise QuantizeError(f"{src}: is one part of a split GGUF; merge the parts first")
        plans = plan_tensors(f, ftype, keep=keep_types, quantize_projector=quantize_projector)
        _check_sources(src, plans, allow_requantize)
        metadata, value_types, alignment = dict(f.metadata), dict(f.value_types), f.alignment
        header_bytes = f.data_offset

    needed = header_bytes + sum(align_up(p.nbytes, alignment) for p in plans)
    free = shutil.disk_usage(dst.parent).free
    if free < needed:
        raise QuantizeError(
            f"{dst}: needs {needed / 2**20:.1f} MiB but only {free / 2**20:.1f} MiB are free on that disk"
        )

    file_type_id = FILE_TYPES[ftype][0]
    metadata["general.file_type"] = file_type_id
    value_types["general.file_type"] = (GGUFValueType.UINT32,)
    metadata["general.quantization_version"] = QUANTIZATION_VERSION
    value_types["general.quantization_version"] = (GGUFValueType.UINT32,)

    source = _Source(src)
    writer = GGUFWriter(dst)
    try:
        for key, value in metadata.items():
            vtypes = value_types[key]
            writer.add(key, value, vtypes[0], element_type=vtypes[1] if len(vtypes) > 1 else None)
        for p in plans:
            writer.add_tensor_info(p.name, p.source.shape, p.type)
        _stream(source, writer, plans, threads, progress)
        writer.close()
    except BaseException as e:
        writer.abort()
        if isinstance(e, OSError):
            raise QuantizeError(f"{dst}: cannot write the output: {e.strerror or e}") from e
        raise
    finally:
        source.close()
    _say(progress, "")

    seconds = time.perf_counter() - t_start
    bytes_in = sum(p.source.nbytes for p in plans)
    stats = {
        "kind": "quantize",
        "src": str(src),
        "dst": str(dst),
        "ftype": ftype.upper(),
        "file_type": file_type_id,
        "threads": threads,
        "n_tensors": len(plans),
        "bytes_in": bytes_in,
        "bytes_out": sum(p.nbytes for p in plans),
        "size_in": src.stat().st_size,
        "size_out": dst.stat().st_size,
        "seconds": seconds,
        "mb_per_s": bytes_in / 1e6 / seconds if seconds > 0 else 0.0,
        "types": dict(Counter(p.type.name for p in plans)),
        "fallbacks": [p.name for p in plans if p.reason == "fallback"],
        "tensors": [
            {"name": p.name, "shape": list(p.source.shape), "from": p.source.type.name, "to": p.type.name}
            for p in plans
        ],
    }
    onnx = _bring_vision_onnx(src, dst, metadata)
    if onnx is not None:
        stats["vision_onnx"] = onnx
    return stats


def _stream(source: _Source, writer: GGUFWriter, plans: list[Plan], threads: int, progress: bool) -> None:
    """Convert slabs in a pool, write them in order; at most 2 x threads slabs in flight."""
    window: list[tuple[int, int, int, Future]] = []
    slabs = _slabs(plans)
    n = len(plans)
    with ThreadPoolExecutor(threads, thread_name_prefix="quantize") as pool:
        try:
            while True:
                while len(window) < 2 * threads:
                    nxt = next(slabs, None)
                    if nxt is None:
                        break
                    i, r0, r1 = nxt
                    window.append((i, r0, r1, pool.submit(_convert, source, plans[i], r0, r1)))
                if not window:
                    return
                i, r0, r1, fut = window.pop(0)
                p = plans[i]
                data = fut.result()
                if r0 == 0:
                    chunks = _Chunks(writer, p)
                    _say(
                        progress,
                        f"\r[{i + 1}/{n}] {p.name:<40} {p.source.type.name:>5} -> {p.type.name:<5}",
                        "",
                    )
                chunks.add(data)
                del data
                info = p.source
                source.release(info.offset + r0 * info.row_bytes, (r1 - r0) * info.row_bytes)
        finally:
            for *_, fut in window:
                fut.cancel()


class _Chunks:
    """Gathers a tensor's converted slabs for the writer, which takes a tensor in one call: a tensor of one
    slab goes straight through, a larger one through a buffer of its output size."""

    def __init__(self, writer: GGUFWriter, p: Plan):
        self.writer, self.plan = writer, p
        self.buf: np.ndarray | None = None
        self.filled = 0

    def add(self, data: np.ndarray) -> None:
        p = self.plan
        flat = data.reshape(-1).view(np.uint8)
        if self.buf is None and flat.nbytes == p.nbytes:
            self.writer.write_tensor(p.name, flat)
            return
        if self.buf is None:
            self.buf = np.empty(p.nbytes, np.uint8)
        self.buf[self.filled : self.filled + flat.nbytes] = flat
        self.filled += flat.nbytes
        if self.filled == p.nbytes:
            self.writer.write_tensor(p.name, self.buf)
            self.buf = None


def _bring_vision_onnx(src: Path, dst: Path, metadata: Mapping) -> str | None:
    """A bundle's GGUF names its tower file; put that file beside the output too (hard link, else copy)."""
    name = metadata.get("llava.vision_onnx")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        return None
    there, here = dst.parent / name, src.parent / name
    if there.exists() or not here.is_file():
        return str(there) if there.exists() else None
    try:
        os.link(here, there)
    except OSError:
        tmp = there.with_name(f".{name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(here, tmp)
            os.replace(tmp, there)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise QuantizeError(
                f"{dst} is written, but copying {here} beside it failed: {e.strerror or e}"
            ) from e
    return str(there)


def summary(stats: Mapping) -> str:
    """quantize_file's statistics as a few lines for people."""
    types = ", ".join(f"{n} {t}" for t, n in sorted(stats["types"].items(), key=lambda kv: -kv[1]))
    lines = [
        f"{stats['src']} -> {stats['dst']} ({stats['ftype']}, general.file_type {stats['file_type']})",
        f"  {stats['n_tensors']} tensors: {types}",
        f"  tensor data {stats['bytes_in'] / 2**20:.1f} MiB -> {stats['bytes_out'] / 2**20:.1f} MiB; "
        f"file {stats['size_out'] / 2**20:.1f} MiB",
        f"  {stats['seconds']:.2f} s, {stats['mb_per_s']:.1f} MB/s of input on {stats['threads']} threads",
    ]
    if stats["fallbacks"]:
        shown = ", ".join(stats["fallbacks"][:4]) + (" ..." if len(stats["fallbacks"]) > 4 else "")
        lines.append(f"  {len(stats['fallbacks'])} tensors fell back (rows not a block multiple): {shown}")
    if "vision_onnx" in stats:
        lines.append(f"  vision tower: {stats['vision_onnx']}")
    return "\n".join(lines)


# -- the 7B benchmark ------------------------------------------------------------------------------------

MISTRAL_7B = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, vocab=32000)


def write_7b_f16(path: str | os.PathLike, seed: int = 0) -> Path:
    """A Mistral-7B-shaped F16 GGUF with random weights (~14.5 GB): speed and memory tests only."""
    from .tiny import tiny_vocab

    a = MISTRAL_7B
    tokens, scores, types = tiny_vocab()
    extra = a["vocab"] - len(tokens)
    tokens = tokens + [f"<unused{i}>" for i in range(extra)]
    scores = np.concatenate([scores, np.zeros(extra, np.float32)])
    types = np.concatenate([types, np.full(extra, 5, np.int32)])
    head_dim, kv = a["dim"] // a["n_heads"], a["n_kv_heads"] * a["dim"] // a["n_heads"]
    shapes = {"token_embd.weight": (a["dim"], a["vocab"])}  # GGUF order (ne0, ne1)
    for i in range(a["n_layers"]):
        p = f"blk.{i}."
        shapes |= {
            p + "attn_norm.weight": (a["dim"],),
            p + "attn_q.weight": (a["dim"], a["dim"]),
            p + "attn_k.weight": (a["dim"], kv),
            p + "attn_v.weight": (a["dim"], kv),
            p + "attn_output.weight": (a["dim"], a["dim"]),
            p + "ffn_norm.weight": (a["dim"],),
            p + "ffn_gate.weight": (a["dim"], a["ffn_dim"]),
            p + "ffn_up.weight": (a["dim"], a["ffn_dim"]),
            p + "ffn_down.weight": (a["ffn_dim"], a["dim"]),
        }
    shapes["output_norm.weight"] = (a["dim"],)
    shapes["output.weight"] = (a["dim"], a["vocab"])
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(1 << 24, np.float32) * 0.02).astype(np.float16)  # tiled, shifted per tensor
    with GGUFWriter(path) as w:
        meta = {
            "general.architecture": "llama",
            "general.name": "random Mistral-7B-shaped model (benchmark)",
            "general.file_type": FILE_TYPES["f16"][0],
            "general.quantization_version": QUANTIZATION_VERSION,
            "llama.context_length": 4096,
            "llama.embedding_length": a["dim"],
            "llama.block_count": a["n_layers"],
            "llama.feed_forward_length": a["ffn_dim"],
            "llama.attention.head_count": a["n_heads"],
            "llama.attention.head_count_kv": a["n_kv_heads"],
            "llama.attention.layer_norm_rms_epsilon": 1e-5,
            "llama.rope.freq_base": 10000.0,
            "llama.rope.dimension_count": head_dim,
            "llama.vocab_size": a["vocab"],
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0,
        }
        for key, value in meta.items():
            w.add(key, value)
        for name, shape in shapes.items():
            w.add_tensor_info(name, shape, GGMLType.F32 if len(shape) == 1 else GGMLType.F16)
        for i, (name, shape) in enumerate(shapes.items()):
            if len(shape) == 1:
                w.write_tensor(name, np.ones(shape[0], np.float32))
            else:
                w.write_tensor(name, np.resize(np.roll(pool, i * 7919), shape[0] * shape[1]))
    return Path(path)


def _peak_rss_mb() -> float:
    """This process's peak resident memory since exec (VmHWM; ru_maxrss would count the parent's pages at
    fork), or ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _measure(cmd: list[str]) -> dict:
    """Run a `--run` child; wall seconds and the memory it reports on its last line of output."""
    import json
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise QuantizeError(f"{' '.join(cmd[:6])} ... failed with exit code {proc.returncode}")
    return {"seconds": seconds, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _llama_cpp_quantize(src: str, dst: str, ftype: str, threads: int) -> None:
    """llama.cpp's own quantizer through llama-cpp-python (only for comparisons)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[ftype][0]
    params.nthread = threads
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise QuantizeError(f"llama.cpp failed to quantize {src}")


def same_tensor_data(a: str | os.PathLike, b: str | os.PathLike) -> list[str]:
    """Names of tensors whose type or bytes differ between two GGUF files (either missing counts)."""
    with GGUFFile.open(a) as fa, GGUFFile.open(b) as fb:
        names = sorted(set(fa.tensors) | set(fb.tensors))
        differ = []
        for name in names:
            ta, tb = fa.tensors.get(name), fb.tensors.get(name)
            if ta is None or tb is None or ta.type != tb.type or ta.shape != tb.shape:
                differ.append(name)
            elif not np.array_equal(fa.raw(name), fb.raw(name)):
                differ.append(name)
        return differ


def bench_7b(
    workdir: str | os.PathLike,
    ftypes: str | list[str] = "q4_k_m",
    *,
    threads: int | None = None,
    keep_files: bool = False,
) -> dict:
    """Quantize a 7B-shaped F16 file with llama.cpp and with us (each in a fresh process, same threads) to
    each of `ftypes` ("q4_0,q4_k_m" or a list): peak RSS, seconds, MB/s of input, and whether the two
    outputs hold the same tensors. The source is written first (and deleted after, unless kept)."""
    workdir = Path(workdir)
    types = [parse_ftype(t) for t in (ftypes.split(",") if isinstance(ftypes, str) else ftypes)]
    threads = int(threads or _kernels.get_num_threads())
    src = workdir / "bench-7b-f16.gguf"
    made = not src.exists()
    if made:
        t0 = time.perf_counter()
        write_7b_f16(src)
        print(f"wrote {src} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    size = src.stat().st_size
    result: dict = {"kind": "bench_7b", "src": str(src), "src_bytes": size, "threads": threads, "runs": {}}
    try:
        for ftype in types:
            run: dict = {}
            outs = {}
            try:
                for tool in ("llama.cpp", "llava-edge"):
                    out = outs[tool] = workdir / f"bench-7b-{ftype}-{tool}.gguf"
                    cmd = [
                        sys.executable,
                        "-m",
                        "llava_edge.quantize",
                        "--run",
                        tool,
                        str(src),
                        str(out),
                        ftype,
                    ]
                    m = _measure([*cmd, "--threads", str(threads)])
                    m["mb_per_s"] = size / 1e6 / m["seconds"]
                    m["out_bytes"] = out.stat().st_size
                    run[tool] = m
                    print(f"{ftype} {tool}: {m}", file=sys.stderr)
                run["differing_tensors"] = same_tensor_data(outs["llama.cpp"], outs["llava-edge"])
            finally:
                if not keep_files:
                    for out in outs.values():
                        out.unlink(missing_ok=True)
            result["runs"][ftype.upper()] = run
    finally:
        if made and not keep_files:
            src.unlink(missing_ok=True)
    return result


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m llava_edge.quantize", description=__doc__.split("\n")[0])
    ap.add_argument("--bench-7b", metavar="DIR", help="benchmark us against llama.cpp on a 7B-shaped file")
    ap.add_argument(
        "--run", choices=["llava-edge", "llama.cpp"], default="llava-edge", help=argparse.SUPPRESS
    )
    ap.add_argument("args", nargs="*", metavar="IN OUT TYPE")
    ap.add_argument("--type", default="q4_k_m", help="file types for --bench-7b, comma-separated")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep-files", action="store_true", help="--bench-7b: keep the files it made")
    opts = ap.parse_args(argv)
    try:
        if opts.bench_7b:
            print(
                json.dumps(
                    bench_7b(opts.bench_7b, opts.type, threads=opts.threads, keep_files=opts.keep_files)
                )
            )
            return
        if len(opts.args) != 3:
            ap.error("expected IN OUT TYPE")
        src, dst, ftype = opts.args
        if opts.run == "llama.cpp":
            import llama_cpp  # noqa: F401  (loaded before the baseline, as our kernels are)
        base = _peak_rss_mb()
        if opts.run == "llama.cpp":
            _llama_cpp_quantize(src, dst, parse_ftype(ftype), opts.threads or 1)
        else:
            print(summary(quantize_file(src, dst, ftype, threads=opts.threads, progress=False)))
        print(json.dumps({"peak_rss_mb": _peak_rss_mb(), "rss_before_mb": base}))
    except LlavaEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
