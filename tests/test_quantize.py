"""The quantizer: the same files as llama.cpp's own quantizer, byte for byte and type for type; readable by
llama.cpp and by us; the same quality; clear refusals that leave nothing behind."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")

import gguf  # noqa: E402
from conftest import CACHE  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402
from tiny_models import MISTRAL_SPM  # noqa: E402

from llava_edge import _kernels  # noqa: E402
from llava_edge.convert.gguf_export import export_text_model  # noqa: E402
from llava_edge.errors import GGUFError  # noqa: E402
from llava_edge.evaluate import compare_many, position_stats  # noqa: E402
from llava_edge.ggml_types import GGMLType  # noqa: E402
from llava_edge.gguf_file import GGUFFile  # noqa: E402
from llava_edge.gguf_writer import write_gguf  # noqa: E402
from llava_edge.info import describe_file  # noqa: E402
from llava_edge.loader import load_text_model  # noqa: E402
from llava_edge.quant_rules import FILE_TYPES, tensor_type  # noqa: E402
from llava_edge.quantize import QuantizeError, quantize_file  # noqa: E402
from llava_edge.tiny import write_tiny_model  # noqa: E402

ALL_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k"]


def llama_cpp_quantize(src: Path, dst: Path, ftype: str) -> Path:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[ftype][0]
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    return dst


def read(path: Path) -> tuple[dict, dict[str, tuple[GGMLType, tuple, bytes]]]:
    with GGUFFile.open(path) as f:
        tensors = {n: (t.type, t.shape, f.raw(n).tobytes()) for n, t in f.tensors.items()}
        return dict(f.metadata), tensors


def same_metadata(a: dict, b: dict) -> list[str]:
    keys = set(a) | set(b)
    return sorted(k for k in keys if k not in a or k not in b or not np.array_equal(np.asarray(a[k]), b[k]))


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """A random 8-layer decoder of width 256 (K-quant rows; use_more_bits picks layers 0, 3, 6, 7) with a
    small vocabulary, so that every mix is quick to make twice, as F32 and F16 GGUFs."""
    root = tmp_path_factory.mktemp("quant")
    return {
        t: write_tiny_model(
            root / f"src-{t}.gguf", dim=256, n_layers=8, ffn_dim=768, sliding_window=None, file_type=t
        )
        for t in ("f32", "f16")
    }


@pytest.fixture(scope="module")
def made(sources, tmp_path_factory):
    """(source type, file type) -> (our file, llama.cpp's file, our stats), each made once."""
    root = tmp_path_factory.mktemp("made")
    done: dict = {}

    def get(src_type: str, ftype: str):
        if (src_type, ftype) not in done:
            ours, theirs = root / f"ours-{src_type}-{ftype}.gguf", root / f"llama-{src_type}-{ftype}.gguf"
            stats = quantize_file(sources[src_type], ours, ftype, progress=False)
            llama_cpp_quantize(sources[src_type], theirs, ftype)
            done[src_type, ftype] = (ours, theirs, stats)
        return done[src_type, ftype]

    return get


CASES = [("f16", t) for t in ALL_TYPES] + [("f32", t) for t in ("f16", "q8_0", "q4_0")]


@pytest.mark.parametrize("src_type, ftype", CASES)
def test_same_file_as_llama_cpp(made, src_type, ftype):
    """Every tensor in the same type with the same bytes, and the same metadata, as llama.cpp writes."""
    ours, theirs, stats = made(src_type, ftype)
    meta_ours, t_ours = read(ours)
    meta_theirs, t_theirs = read(theirs)
    assert same_metadata(meta_ours, meta_theirs) == []
    assert meta_ours["general.file_type"] == FILE_TYPES[ftype][0]
    assert meta_ours["general.quantization_version"] == 2
    assert set(t_ours) == set(t_theirs)
    types = {n: (t_ours[n][0].name, t_theirs[n][0].name) for n in t_ours}
    assert {n: t for n, t in types.items() if t[0] != t[1]} == {}
    assert [n for n in t_ours if t_ours[n] != t_theirs[n]] == []
    assert stats["size_out"] == ours.stat().st_size and stats["n_tensors"] == len(t_ours)


def test_mixes_raise_the_layers_llama_cpp_raises(made):
    """The mixes are not trivially uniform: the layers and tensors given more bits, spelled out."""
    _, t = read(made("f16", "q4_k_m")[0])
    six = sorted(n for n, (ty, _, _) in t.items() if ty == GGMLType.Q6_K)
    layers = [f"blk.{i}.{w}.weight" for i in (0, 3, 6, 7) for w in ("attn_v", "ffn_down")]
    assert six == sorted(["output.weight", *layers])
    _, t = read(made("f16", "q4_k_s")[0])
    five = sorted(n for n, (ty, _, _) in t.items() if ty == GGMLType.Q5_K)
    assert five == sorted([f"blk.{i}.attn_v.weight" for i in range(4)] + ["blk.0.ffn_down.weight"])
    _, t = read(made("f16", "q4_0")[0])
    assert t["output.weight"][0] == GGMLType.Q6_K and t["token_embd.weight"][0] == GGMLType.Q4_0
    assert {ty for n, (ty, s, _) in t.items() if len(s) == 1} == {GGMLType.F32}


@pytest.mark.parametrize("ftype, gtype", [("q8_0", GGMLType.Q8_0), ("q4_0", GGMLType.Q4_0)])
def test_q8_0_q4_0_bytes_equal_gguf_quants(sources, made, ftype, gtype):
    ours, _, _ = made("f32", ftype)
    _, src = read(sources["f32"])
    _, out = read(ours)
    checked = 0
    for name, (ty, shape, data) in out.items():
        if ty != gtype:
            continue
        x = np.frombuffer(src[name][2], np.float32).reshape(shape[::-1])
        assert data == gguf_quantize(x, gguf.GGMLQuantizationType(int(gtype))).tobytes(), name
        checked += 1
    assert checked >= 57


@pytest.mark.parametrize("ftype", ALL_TYPES)
def test_every_type_dequantizes_like_gguf_and_our_runtime(made, ftype):
    ours, _, _ = made("f16", ftype)
    with GGUFFile.open(ours) as f:
        for name, info in f.tensors.items():
            raw = f.raw(name)
            ref = gguf_dequantize(raw, gguf.GGMLQuantizationType(int(info.type))).reshape(-1, info.shape[0])
            mine = _kernels.dequantize(int(info.type), raw, info.shape[0])
            np.testing.assert_array_equal(mine, ref.astype(np.float32), err_msg=name)


def _ids(vocab: int, n: int = 48) -> list[int]:
    return [1] + np.random.default_rng(5).integers(3, vocab, n - 1).tolist()


@pytest.mark.parametrize("ftype", ALL_TYPES)
def test_every_file_runs_in_llama_cpp_and_ours(made, ftype):
    ours, _, stats = made("f16", ftype)
    ids = _ids(int(read(ours)[0]["llama.vocab_size"]))
    # F32 KV caches on both sides: what remains is the runtimes' own rounding
    llm = llama_cpp.Llama(
        model_path=str(ours),
        n_ctx=64,
        logits_all=True,
        verbose=False,
        type_k=0,
        type_v=0,
        n_threads=1,  # a spinning second thread on a busy machine costs seconds per call
        n_threads_batch=1,
    )
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)], np.float32)
    del llm
    model, _ = load_text_model(ours)
    mine = model(np.array(ids), model.make_cache(64, kv_type="f32"), all_logits=True)
    st = position_stats(theirs, mine)
    # Both runtimes round activations to Q8_0/Q8_K, each its own way: on this random 8-layer model that alone
    # gives a KL near 1e-2 (as far as either is from the dequantized weights); a misread tensor gives ~1.
    assert st["same_top1"].mean() >= 0.85 and st["kl"].mean() < 0.05, (
        st["same_top1"].mean(),
        st["kl"].mean(),
    )
    # `llava-edge info` reports the per-type counts of the file
    text = describe_file(ours)
    for name, count in stats["types"].items():
        assert f"{name:<6} {count:>5} tensors" in text


def test_tied_embeddings_follow_the_output_rule(sources, tmp_path):
    """Without output.weight, llama.cpp quantizes token_embd like the output (Q6_K); so do we."""
    with GGUFFile.open(sources["f16"]) as f:
        tensors = {n: (t.type, t.shape, f.raw(n)) for n, t in f.tensors.items() if n != "output.weight"}
        write_gguf(tmp_path / "tied.gguf", f.metadata, tensors, f.value_types)
    quantize_file(tmp_path / "tied.gguf", tmp_path / "ours.gguf", "q4_k_m", progress=False)
    llama_cpp_quantize(tmp_path / "tied.gguf", tmp_path / "theirs.gguf", "q4_k_m")
    _, ours = read(tmp_path / "ours.gguf")
    _, theirs = read(tmp_path / "theirs.gguf")
    assert ours["token_embd.weight"][0] == GGMLType.Q6_K
    assert ours == theirs


def test_rules_for_rows_a_block_does_not_divide():
    """llama.cpp falls back Q4_K -> Q5_0, Q5_K -> Q5_1, which our kernels do not run: we use Q8_0 there.
    Q6_K -> Q8_0 and 32-block types -> F16 are llama.cpp's own fallbacks."""
    assert tensor_type("blk.1.attn_q.weight", (64, 64), "q4_k_m", 8) == GGMLType.Q8_0
    assert tensor_type("blk.1.attn_q.weight", (64, 64), "q5_k_m", 8) == GGMLType.Q8_0
    assert tensor_type("blk.0.attn_v.weight", (64, 64), "q4_k_m", 8) == GGMLType.Q8_0
    assert tensor_type("output.weight", (64, 100), "q4_0", 8) == GGMLType.Q8_0
    assert tensor_type("output.weight", (48, 100), "q4_0", 8) == GGMLType.F16
    assert tensor_type("blk.1.attn_q.weight", (48, 64), "q8_0", 8) == GGMLType.F16
    assert tensor_type("blk.1.attn_norm.weight", (256,), "q4_k_m", 8) == GGMLType.F32
    # 70B: 80 layers with grouped-query attention give every Q4_K attn_v Q5_K
    assert tensor_type("blk.11.attn_v.weight", (8192, 1024), "q4_k_m", 80, model_70b=True) == GGMLType.Q5_K
    assert tensor_type("blk.11.attn_v.weight", (8192, 1024), "q4_k_m", 80) == GGMLType.Q4_K


def test_keep_patterns_and_projector(sources, tmp_path):
    out = tmp_path / "kept.gguf"
    keep = {"blk.*.ffn_down.weight": "q8_0", "output.weight": "F16", "blk.0.*": "Q6_K"}
    quantize_file(sources["f16"], out, "Q4_K_M", keep=keep, progress=False)
    _, t = read(out)
    assert {t[f"blk.{i}.ffn_down.weight"][0] for i in range(8)} == {GGMLType.Q8_0}
    assert t["output.weight"][0] == GGMLType.F16
    assert t["blk.0.attn_q.weight"][0] == GGMLType.Q6_K
    assert t["blk.0.attn_norm.weight"][0] == GGMLType.F32  # 1-D tensors are never overridden
    assert t["blk.1.attn_q.weight"][0] == GGMLType.Q4_K
    with pytest.raises(QuantizeError, match="unknown tensor type 'Q3_K'"):
        quantize_file(
            sources["f16"], tmp_path / "x.gguf", "q4_0", keep=["output.weight=Q3_K"], progress=False
        )
    with pytest.raises(QuantizeError, match="expected NAME=TYPE"):
        quantize_file(sources["f16"], tmp_path / "x.gguf", "q4_0", keep=["output.weight"], progress=False)


# -- LLaVA bundles ----------------------------------------------------------------------------------------


def test_projector_stays_float_and_the_tower_comes_along(sources, tmp_path):
    """A bundle's GGUF: mm.* matrices F16 (F32 in an F32 file) unless asked, 1-D tensors as they are, the
    llava.* keys carried, and the vision.onnx it names put beside the output."""
    rng = np.random.default_rng(0)
    extra = {
        "mm.0.weight": (GGMLType.F32, (64, 256), rng.standard_normal((256, 64), np.float32)),
        "mm.0.bias": (GGMLType.F32, (256,), rng.standard_normal(256, np.float32)),
        "mm.2.weight": (GGMLType.F32, (256, 256), rng.standard_normal((256, 256), np.float32)),
        "v.image_newline": (GGMLType.F32, (256,), rng.standard_normal(256, np.float32)),
    }
    src = tmp_path / "bundle" / "model.gguf"
    src.parent.mkdir()
    (src.parent / "vision.onnx").write_bytes(b"tower bytes")
    with GGUFFile.open(sources["f32"]) as f:
        tensors = {n: (t.type, t.shape, f.raw(n)) for n, t in f.tensors.items()} | extra
        write_gguf(src, {**f.metadata, "llava.vision_onnx": "vision.onnx"}, tensors, f.value_types)
    out = tmp_path / "q4" / "model.gguf"
    out.parent.mkdir()
    stats = quantize_file(src, out, "q4_k_m", progress=False)
    assert (out.parent / "vision.onnx").read_bytes() == b"tower bytes" and stats["vision_onnx"]
    meta, t = read(out)
    assert meta["llava.vision_onnx"] == "vision.onnx"
    assert t["mm.0.weight"][0] == t["mm.2.weight"][0] == GGMLType.F16
    assert t["mm.0.bias"] == read(src)[1]["mm.0.bias"] and t["v.image_newline"][0] == GGMLType.F32
    assert t["blk.0.attn_q.weight"][0] == GGMLType.Q4_K
    quantize_file(src, tmp_path / "f32.gguf", "f32", progress=False)
    assert read(tmp_path / "f32.gguf")[1]["mm.0.weight"][0] == GGMLType.F32
    quantize_file(src, tmp_path / "all.gguf", "q4_k_m", quantize_projector=True, progress=False)
    _, t = read(tmp_path / "all.gguf")
    # mm.0 rows of 64 values cannot be Q4_K (blocks of 256): Q8_0, where llama.cpp would pick Q5_0
    assert (t["mm.0.weight"][0], t["mm.2.weight"][0]) == (GGMLType.Q8_0, GGMLType.Q4_K)


# -- refusals ---------------------------------------------------------------------------------------------


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_bad_input_is_refused_and_leaves_nothing(sources, tmp_path):
    junk = tmp_path / "notes.gguf"
    junk.write_text("not a model at all")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        quantize_file(junk, tmp_path / "out.gguf", "q4_0", progress=False)
    with pytest.raises(QuantizeError, match="unknown type 'q3_k'"):
        quantize_file(sources["f16"], tmp_path / "out.gguf", "q3_k", progress=False)
    src = tmp_path / "src.gguf"
    shutil.copy(sources["f16"], src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(QuantizeError, match="overwrite the input"):
        quantize_file(src, tmp_path / "." / "src.gguf", "q4_0", progress=False)
    os.link(src, tmp_path / "hardlink.gguf")
    with pytest.raises(QuantizeError, match="overwrite the input"):
        quantize_file(src, tmp_path / "hardlink.gguf", "q4_0", progress=False)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    assert leftovers(tmp_path, {"notes.gguf", "src.gguf", "hardlink.gguf"}) == []


def test_requantizing_needs_consent(made, tmp_path):
    q8 = made("f16", "q8_0")[0]
    with pytest.raises(QuantizeError, match="already Q8_0.*allow_requantize"):
        quantize_file(q8, tmp_path / "q4.gguf", "q4_0", progress=False)
    assert leftovers(tmp_path, set()) == []
    stats = quantize_file(q8, tmp_path / "q4.gguf", "q4_0", allow_requantize=True, progress=False)
    assert stats["types"]["Q4_0"] == 57
    # the same type again is a copy, which needs no consent (as in llama.cpp)
    quantize_file(q8, tmp_path / "again.gguf", "q8_0", progress=False)
    assert read(tmp_path / "again.gguf")[1] == read(q8)[1]


def test_full_disk_leaves_no_partial_file(sources, tmp_path):
    """The write fails half way (RLIMIT_FSIZE: EFBIG, as ENOSPC would): a clear error, no output, no temp."""
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))\n"
        "from llava_edge.errors import LlavaEdgeError\n"
        "from llava_edge.quantize import quantize_file\n"
        "try:\n"
        f"    quantize_file({str(sources['f16'])!r}, {str(out / 'm.gguf')!r}, 'q8_0', progress=False)\n"
        "except LlavaEdgeError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "cannot write the output" in r.stdout and "m.gguf" in r.stdout
    assert leftovers(out, set()) == []


def test_too_small_disk_is_refused_before_writing(sources, tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(QuantizeError, match="needs .* MiB but only .* MiB are free"):
            quantize_file(sources["f16"], disk / "m.gguf", "q8_0", progress=False)
        assert leftovers(disk, set()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_memory_stays_below_the_file_size(sources, tmp_path):
    """Peak RSS grows by a few slabs and the largest output tensor, not by the file (28 MB of F32)."""
    code = (
        "import resource, json\n"
        "from llava_edge.quantize import quantize_file\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"quantize_file({str(sources['f32'])!r}, {str(tmp_path / 'm.gguf')!r}, 'q8_0', threads=2,\n"
        "              progress=False)\n"
        "print(json.dumps([base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, peak = json.loads(r.stdout)
    grown = (peak - base) * 1024
    assert grown < 0.5 * sources["f32"].stat().st_size, f"RSS grew by {grown / 2**20:.1f} MiB"


# -- quality on a trained model ---------------------------------------------------------------------------

TRAIN_STEPS, TRAIN_BATCH, TRAIN_LEN = 60, 8, 128
STDLIB_MODULES = """argparse ast asyncio.events asyncio.tasks base64 bisect calendar collections configparser
contextlib copy csv dataclasses datetime decimal difflib email.message enum fnmatch fractions functools
getopt gettext glob gzip heapq hmac imaplib inspect ipaddress json.decoder logging mailbox mimetypes numbers
optparse pathlib pickle pprint queue random sched secrets selectors shelve shlex shutil smtplib socket
statistics string subprocess tarfile tempfile textwrap threading timeit tokenize trace traceback typing
unittest.case urllib.parse urllib.request uuid warnings weakref zipfile""".split()


def docstring_corpus() -> str:
    """English prose that is already on every machine: the docstrings of stdlib modules (~500 KB)."""
    import ast
    import importlib.util

    parts = []
    for name in STDLIB_MODULES:
        tree = ast.parse(Path(importlib.util.find_spec(name).origin).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 60:
                    parts.append(doc)
    return "\n\n".join(parts)


def train_tiny_mistral(out: Path, ids: np.ndarray) -> None:
    """A 2-layer Mistral of width 256 with the real vocabulary, trained briefly on `ids`.

    Only the embedding and output rows of tokens that occur are trained, plus one output row that stands for
    every other token (its logit + log of their count enters the softmax): at export all those rows get it,
    so the full 32000-way softmax is the one trained, for a fifth of the cost per step.
    """
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = MistralForCausalLM(config)
    ids = torch.as_tensor(ids, dtype=torch.long)
    used, local = torch.unique(ids, return_inverse=True)
    n_rest = config.vocab_size - len(used)
    emb = torch.nn.Parameter(model.model.embed_tokens.weight[used].detach().clone())
    head = torch.nn.Parameter(model.lm_head.weight[used].detach().clone())
    rest = torch.nn.Parameter(torch.zeros(1, config.hidden_size))
    model.model.embed_tokens.weight.requires_grad_(False)
    model.lm_head.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad] + [emb, head, rest]
    opt = torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=TRAIN_STEPS, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(TRAIN_STEPS):
        starts = torch.randint(0, len(ids) - TRAIN_LEN - 1, (TRAIN_BATCH,), generator=g)
        x = torch.stack([local[s : s + TRAIN_LEN + 1] for s in starts])
        h = model.model(inputs_embeds=emb[x[:, :-1]]).last_hidden_state
        logits = torch.cat([h @ head.T, h @ rest.T + float(np.log(n_rest))], -1)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(used) + 1), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        model.lm_head.weight[:] = rest
        model.lm_head.weight[used] = head
        model.model.embed_tokens.weight[used] = emb
    model.eval().save_pretrained(out)
    shutil.copy(MISTRAL_SPM, out / "tokenizer.model")


@pytest.fixture(scope="session")
def trained() -> tuple[Path, list[int]]:
    """(F16 GGUF of the trained model, held-out token ids), trained once and kept in the test cache."""
    import sentencepiece

    text = docstring_corpus()
    key = hashlib.sha256(f"{text}|{TRAIN_STEPS}|{TRAIN_BATCH}|{TRAIN_LEN}|v2".encode()).hexdigest()[:16]
    root = CACHE / f"trained-mistral-256x2-{key}"
    if not (root / "f16.gguf").is_file():
        ids = np.array(
            sentencepiece.SentencePieceProcessor(model_file=str(MISTRAL_SPM)).encode(text), np.int32
        )
        cut = int(len(ids) * 0.9)
        tmp = CACHE / f".{root.name}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        train_tiny_mistral(tmp / "hf", ids[:cut])
        export_text_model(tmp / "hf", tmp / "f16.gguf", "f16", progress=False)
        (tmp / "heldout.json").write_text(json.dumps(ids[cut:].tolist()))
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    return root / "f16.gguf", json.loads((root / "heldout.json").read_text())


@pytest.mark.slow
def test_quality_matches_llama_cpp_quantizer(trained, tmp_path):
    """Mean KL from the F16 model on held-out text: ours at most 1.05x llama.cpp's for the same type."""
    f16, heldout = trained
    files = []
    for ftype in ("q4_0", "q4_k_m", "q6_k"):
        quantize_file(f16, tmp_path / f"ours-{ftype}.gguf", ftype, progress=False)
        llama_cpp_quantize(f16, tmp_path / f"theirs-{ftype}.gguf", ftype)
        files += [tmp_path / f"ours-{ftype}.gguf", tmp_path / f"theirs-{ftype}.gguf"]
    results = compare_many(f16, files, [[1] + heldout[:159]], ctx=160)
    kl = {r["model_b"]: r["mean_kl"] for r in results}
    for ftype in ("q4_0", "q4_k_m", "q6_k"):
        mine, theirs = kl[str(tmp_path / f"ours-{ftype}.gguf")], kl[str(tmp_path / f"theirs-{ftype}.gguf")]
        assert 0 < mine <= 1.05 * theirs, f"{ftype}: KL ours {mine:.3g}, llama.cpp {theirs:.3g}"
    ours = [kl[str(tmp_path / f"ours-{t}.gguf")] for t in ("q6_k", "q4_k_m", "q4_0")]
    assert ours == sorted(ours), ours
    # trained, not random: the F16 model predicts held-out text far better than chance (PPL 32000)
    assert results[0]["ppl_a"] < 1500, results[0]["ppl_a"]
