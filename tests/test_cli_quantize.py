"""`llava-edge quantize`: the file it writes has the types asked for, `info` reports them, our runtime and
llama.cpp load it; refusals print one `error:` line, exit 1 and leave nothing behind. (The quantizer's
byte-for-byte agreement with llama.cpp for every type is tests/test_quantize.py's.)"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from llava_edge.cli import main
from llava_edge.ggml_types import GGMLType
from llava_edge.gguf_file import GGUFFile
from llava_edge.gguf_writer import write_gguf
from llava_edge.loader import load_text_model
from llava_edge.tiny import write_tiny_model

IDS = [1, 17, 250, 33, 98, 402, 7, 311, 64, 5]


def cli(*args) -> tuple[int, str, str]:
    """Run the command in-process: (exit code, stdout, stderr). Anything but a deliberate exit (an
    uncaught exception, which a user would see as a traceback) fails the test."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def tensor_types(path: Path) -> dict[str, GGMLType]:
    with GGUFFile.open(path) as f:
        return {n: GGMLType(t.type) for n, t in f.tensors.items()}


def folder(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """A tiny random decoder of width 256 (so that K-quant blocks fit its rows), as F32 and F16 GGUFs."""
    root = tmp_path_factory.mktemp("cli-quant")
    return {
        t: write_tiny_model(root / f"src-{t}.gguf", dim=256, ffn_dim=768, sliding_window=None, file_type=t)
        for t in ("f32", "f16")
    }


@pytest.mark.parametrize(
    "src_type, ftype, main_type",
    [("f16", "q8_0", GGMLType.Q8_0), ("f32", "Q4_0", GGMLType.Q4_0), ("f16", "q4_k_m", GGMLType.Q4_K)],
)
def test_quantize_then_info_and_load(sources, tmp_path, src_type, ftype, main_type):
    out = tmp_path / "out.gguf"
    code, stdout, stderr = cli("quantize", sources[src_type], out, ftype, "-t", 2)
    assert code == 0, stderr
    assert f"[1/{len(tensor_types(out))}]" in stderr  # progress
    assert f"-> {out} ({ftype.upper()}" in stdout and "MB/s" in stdout  # the summary

    types = tensor_types(out)
    assert types["blk.1.attn_q.weight"] == main_type
    assert types["blk.0.attn_norm.weight"] == GGMLType.F32
    if ftype == "q4_k_m":  # the mix gives the output more bits
        assert types["output.weight"] == GGMLType.Q6_K
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t.name] = counts.get(t.name, 0) + 1
    code, info, _ = cli("info", out)
    assert code == 0
    for name, count in counts.items():
        assert f"{name:<6} {count:>5} tensors" in info

    model, _ = load_text_model(out)
    logits = model(np.array(IDS, np.int32), model.make_cache(32), all_logits=True)
    source, _ = load_text_model(sources[src_type])
    ref = source(np.array(IDS, np.int32), source.make_cache(32), all_logits=True)
    assert np.isfinite(logits).all()
    cosine = (logits * ref).sum(-1) / np.linalg.norm(logits, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cosine.min() > 0.9, cosine  # the same model, rounded; a misread tensor gives ~0


def test_llama_cpp_loads_the_output(sources, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    out = tmp_path / "q4_k_m.gguf"
    assert cli("quantize", sources["f16"], out, "q4_k_m", "-q")[0] == 0
    llm = llama_cpp.Llama(
        model_path=str(out), n_ctx=32, logits_all=True, verbose=False, n_threads=1, n_threads_batch=1
    )
    llm.eval(IDS)
    theirs = np.array(llm.scores[: len(IDS)], np.float32)
    del llm
    model, _ = load_text_model(out)
    mine = model(np.array(IDS, np.int32), model.make_cache(32), all_logits=True)
    cosine = (theirs * mine).sum(-1) / np.linalg.norm(theirs, axis=-1) / np.linalg.norm(mine, axis=-1)
    assert cosine.min() > 0.99, cosine


def test_json_and_keep(sources, tmp_path):
    out = tmp_path / "kept.gguf"
    args = ["--keep", "blk.*.ffn_down.weight=q8_0", "--keep", "output.weight=F16", "-q", "--json"]
    code, stdout, stderr = cli("quantize", sources["f16"], out, "q4_k_m", *args)
    assert code == 0 and stderr == ""  # -q: no progress
    stats = json.loads(stdout)
    types = tensor_types(out)
    assert {types[f"blk.{i}.ffn_down.weight"] for i in range(2)} == {GGMLType.Q8_0}
    assert types["output.weight"] == GGMLType.F16
    assert types["blk.1.attn_q.weight"] == GGMLType.Q4_K
    assert {t["name"]: t["to"] for t in stats["tensors"]} == {n: t.name for n, t in types.items()}
    assert stats["ftype"] == "Q4_K_M" and stats["size_out"] == out.stat().st_size
    assert sum(stats["types"].values()) == stats["n_tensors"] == len(types)


def test_bundle_gguf_brings_its_tower(sources, tmp_path):
    """A bundle's model.gguf: the projector stays F16 unless asked, and vision.onnx comes along."""
    rng = np.random.default_rng(0)
    src = tmp_path / "bundle" / "model.gguf"
    src.parent.mkdir()
    (src.parent / "vision.onnx").write_bytes(b"tower bytes")
    with GGUFFile.open(sources["f32"]) as f:
        tensors = {n: (t.type, t.shape, f.raw(n)) for n, t in f.tensors.items()}
        tensors["mm.0.weight"] = (GGMLType.F32, (256, 256), rng.standard_normal((256, 256), np.float32))
        write_gguf(src, {**f.metadata, "llava.vision_onnx": "vision.onnx"}, tensors, f.value_types)
    (tmp_path / "q4").mkdir()
    code, stdout, _ = cli("quantize", src, tmp_path / "q4" / "model.gguf", "q4_0", "-q")
    assert code == 0 and "vision tower:" in stdout
    assert (tmp_path / "q4" / "vision.onnx").read_bytes() == b"tower bytes"
    assert tensor_types(tmp_path / "q4" / "model.gguf")["mm.0.weight"] == GGMLType.F16
    out = tmp_path / "q4" / "all.gguf"
    assert cli("quantize", src, out, "q4_0", "-q", "--quantize-projector")[0] == 0
    assert tensor_types(out)["mm.0.weight"] == GGMLType.Q4_0


def test_requantizing_needs_the_flag(sources, tmp_path):
    q8 = tmp_path / "q8.gguf"
    assert cli("quantize", sources["f16"], q8, "q8_0", "-q")[0] == 0
    out = tmp_path / "q4.gguf"
    code, stdout, stderr = cli("quantize", q8, out, "q4_0", "-q")
    assert code == 1 and stdout == ""
    assert stderr.startswith("error: ") and "already Q8_0" in stderr and "--allow-requantize" in stderr
    assert folder(tmp_path) == ["q8.gguf"]
    assert cli("quantize", q8, out, "q4_0", "-q", "--allow-requantize")[0] == 0
    assert tensor_types(out)["blk.1.attn_q.weight"] == GGMLType.Q4_0


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown type", "unknown type 'q3_k'; choose one of F32, F16"),
        ("bad keep", "expected NAME=TYPE"),
        ("keep type", "unknown tensor type 'Q3_K'"),
        ("not gguf", "not a GGUF file"),
        ("same file", "would overwrite the input"),
        ("hard link", "would overwrite the input"),
    ],
)
def test_refusals_are_one_line_and_leave_nothing(sources, tmp_path, case, message):
    src = tmp_path / "src.gguf"
    src.write_bytes(sources["f16"].read_bytes())
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out, ftype, extra = tmp_path / "out.gguf", "q4_0", []
    if case == "unknown type":
        ftype = "q3_k"
    elif case == "bad keep":
        extra = ["--keep", "output.weight"]
    elif case == "keep type":
        extra = ["--keep", "output.weight=Q3_K"]
    elif case == "not gguf":
        src.write_text("not a model at all")
    elif case == "same file":
        out = tmp_path / "." / "src.gguf"
    elif case == "hard link":
        os.link(src, tmp_path / "link.gguf")
        out = tmp_path / "link.gguf"
    before = folder(tmp_path)
    code, stdout, stderr = cli("quantize", src, out, ftype, *extra)
    assert code == 1 and stdout == ""
    assert stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1, stderr
    assert folder(tmp_path) == before  # no output, no temporary file
    if case != "not gguf":
        assert hashlib.sha256(src.read_bytes()).hexdigest() == digest


def test_refusal_from_the_real_command_has_no_traceback(tmp_path):
    junk = tmp_path / "notes.gguf"
    junk.write_text("not a model at all")
    proc = subprocess.run(
        [sys.executable, "-m", "llava_edge.cli", "quantize", str(junk), str(tmp_path / "o.gguf"), "Q4_0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"error: {junk}: magic: expected b'GGUF', found b'not ': not a GGUF file\n"
    assert folder(tmp_path) == ["notes.gguf"]
