"""`llava-edge eval` (ppl, compare, accuracy) and `llava-edge bench`: the commands print what the library
computes, as a table or as JSON, and turn its refusals into one `error:` line with exit status 1. (The
numbers themselves are checked in tests/test_evaluate.py and tests/test_bench.py.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import test_evaluate
from click.testing import CliRunner

from llava_edge.cli import main
from llava_edge.evaluate import accuracy, chunk_plan, compare_many, perplexity
from llava_edge.loader import load_text_model

# the same tiny models as the library's tests: an F32 decoder and its Q4_0; a LLaVA bundle (torch)
models = test_evaluate.models
bundles = test_evaluate.bundles
words, image = test_evaluate.words, test_evaluate.image
CTX = test_evaluate.CTX


def cli(*args) -> tuple[int, str, str]:
    """Run the command in-process: (exit code, stdout, stderr); an uncaught exception fails the test."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text(words(400), encoding="utf-8")
    return path


@pytest.mark.parametrize("stride", [None, 16])
def test_ppl(models, text, stride):
    extra = [] if stride is None else ["--stride", stride]
    code, table, stderr = cli("eval", "ppl", models["f32"], text, "--ctx", CTX, *extra)
    assert code == 0, stderr
    code, out, _ = cli("eval", "ppl", models["f32"], text, "--ctx", CTX, *extra, "--json")
    r = json.loads(out)
    assert math.isfinite(r["ppl"]) and r["ppl"] > 1
    assert r == perplexity(models["f32"], text.read_text(encoding="utf-8"), ctx=CTX, stride=stride)
    _, tok = load_text_model(models["f32"])
    assert r["n_chunks"] == len(chunk_plan(len(tok.encode(text.read_text())), CTX, stride))
    assert f"PPL     {r['ppl']:.4f} +/- {r['ppl_err']:.5f}" in table


def test_ppl_refusals(models, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("a few words")
    code, stdout, stderr = cli("eval", "ppl", models["f32"], short, "--ctx", CTX)
    assert code == 1 and stdout == "" and stderr.startswith("error: ") and "needs more than 64" in stderr
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    code, _, stderr = cli("eval", "ppl", models["f32"], binary)
    assert code == 1 and stderr == f"error: {binary}: not UTF-8 text (invalid start byte at byte 0)\n"


def test_compare_with_itself_is_zero(models, text):
    args = ["eval", "compare", models["f32"], models["f32"], "--text", text, "-p", "the red circle"]
    code, out, stderr = cli(*args, "--ctx", CTX, "--json")
    assert code == 0, stderr
    (r,) = json.loads(out)
    assert r["mean_kl"] == pytest.approx(0, abs=1e-9) and r["max_kl"] == pytest.approx(0, abs=1e-9)
    assert r["top1_agreement"] == 1.0 and r["n_prompts"] == 2
    _, tok = load_text_model(models["f32"])
    assert r["n_positions"] == len(tok.encode(text.read_text())) + len(tok.encode("the red circle"))


def test_compare_quantized_and_several_models(models, text):
    args = ["eval", "compare", models["f32"], models["q4_0"], models["f32"], "--text", text, "--ctx", CTX]
    code, table, stderr = cli(*args)
    assert code == 0, stderr
    code, out, _ = cli(*args, "--json")
    q4, same = json.loads(out)
    assert q4["mean_kl"] > 1e-4 and q4["max_kl"] >= q4["mean_kl"] and 0 < q4["top1_agreement"] <= 1
    assert same["mean_kl"] == pytest.approx(0, abs=1e-9)
    direct = compare_many(models["f32"], [models["q4_0"], models["f32"]], [text.read_text()], ctx=CTX)
    assert [q4, same] == direct
    rows = table.splitlines()  # one row per compared model
    assert rows[2].startswith(str(models["q4_0"])) and f"{q4['mean_kl']:.6f}" in rows[2]


def test_compare_needs_inputs(models):
    code, stdout, stderr = cli("eval", "compare", models["f32"], models["q4_0"])
    assert code == 1 and stdout == "" and stderr.startswith("error: nothing to compare")


def test_accuracy_per_type(bundles, tmp_path):
    qs = [
        {"image": "img0.png", "question": "What color is it?", "answer": "red", "type": "color"},
        {"image": "img1.png", "question": "How many shapes?", "answer": "two", "type": "count"},
        {"image": "img0.png", "question": "Which color?", "answer": "blue", "type": "color"},
    ]
    for i in range(2):
        image(20 + i, tmp_path / f"img{i}.png")
    (tmp_path / "q.json").write_text(json.dumps(qs))
    args = ["eval", "accuracy", bundles["f32"], tmp_path / "q.json", "-n", 6]
    code, out, stderr = cli(*args, "--json")
    assert code == 0, stderr
    r = json.loads(out)
    assert r == accuracy(bundles["f32"], tmp_path / "q.json", max_tokens=6)
    assert r["n"] == 3 and set(r["by_type"]) == {"color", "count"}
    assert r["by_type"]["color"]["n"] == 2 and r["by_type"]["count"]["n"] == 1
    assert sum(t["correct"] for t in r["by_type"].values()) == r["correct"]
    assert [x["type"] for x in r["items"]] == ["color", "count", "color"]
    code, table, _ = cli(*args)
    for name, t in r["by_type"].items():
        assert f"  {name}" in table and f"{100 * t['accuracy']:.1f} % ({t['correct']}/{t['n']})" in table
    code, out, _ = cli(*args, "--limit", 2, "--json")
    limited = json.loads(out)
    assert limited["n"] == 2 and limited["items"] == r["items"][:2]


def test_accuracy_refuses_a_bad_question_set(bundles, tmp_path):
    (tmp_path / "q.json").write_text('[{"image": "missing.png", "question": "q?", "answer": "a"}]')
    code, stdout, stderr = cli("eval", "accuracy", bundles["f32"], tmp_path / "q.json")
    assert code == 1 and stdout == "" and stderr.startswith("error: ") and "does not exist" in stderr


def test_tiny_bench_through_the_cli(tmp_path):
    """The smoke shape, one run, both engines, every measurement (a small bandwidth array): a JSON
    without errors, with llama.cpp's numbers beside ours."""
    pytest.importorskip("llama_cpp")
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "llava_edge.cli",
        "bench",
        "--shape",
        "tiny",
        "--types",
        "q4_0",
        "--runs",
        "1",
    ]
    # one thread and short sequences: on a busy machine llama.cpp's spinning second thread costs seconds
    cmd += ["-t", "1", "--decode-tokens", "16", "--prefill-tokens", "64", "--prefill-chunk", "64"]
    cmd += ["--bandwidth-gib", "0.0625", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["errors"] == [] and r["command"][:2] == ["llava-edge", "bench"]
    e = r["text"]["q4_0"]
    for engine in ("ours", "llama.cpp"):
        assert e[engine]["decode_tps"]["median"] > 0 and e[engine]["prefill_tps"]["median"] > 0
    assert r["vision"]["ours"]["fp32"]["encode_s"]["median"] > 0 and "llama.cpp" in r["vision"]
    assert "decode tokens/s" in proc.stdout and "Q4_0" in proc.stdout  # the table


def test_bench_refuses_bad_options():
    proc = subprocess.run(
        [sys.executable, "-m", "llava_edge.cli", "bench", "--types", "q3_k"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "q3_k" in proc.stderr and "Traceback" not in proc.stderr
