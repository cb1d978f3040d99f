"""The benchmark runs end to end on the tiny shape (both engines, every measurement) and writes a complete
JSON of positive, finite numbers; the random quantized blocks it generates have the intended statistics."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llava_edge.bench import WEIGHT_STD, agreement_error, random_quant_blocks
from llava_edge.ggml_types import GGMLType

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
SUMMARY = ("min", "median", "max")


@pytest.mark.parametrize("ggml_type", [GGMLType.Q4_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K])
def test_random_blocks_dequantize_to_realistic_weights(ggml_type):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    blocks = random_quant_blocks(ggml_type, 64, 1024, np.random.default_rng(0))
    w = dequantize(blocks, GGMLQuantizationType(int(ggml_type))).reshape(64, 1024)
    assert np.isfinite(w).all()
    assert abs(w.std() / WEIGHT_STD - 1) < 0.05
    assert abs(w.mean()) < 0.05 * WEIGHT_STD
    again = random_quant_blocks(ggml_type, 64, 1024, np.random.default_rng(0))
    assert np.array_equal(blocks, again)  # deterministic in the seed: the cache key means something


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def check_summary(s: dict, runs: int, where: str) -> None:
    assert set(SUMMARY) <= set(s), where
    assert all(positive(s[k]) for k in SUMMARY), (where, s)
    assert s["min"] <= s["median"] <= s["max"], (where, s)
    assert len(s["runs"]) == runs and all(positive(v) for v in s["runs"]), (where, s)


def test_tiny_bench_writes_every_field(tmp_path):
    out, runs, threads = tmp_path / "bench.json", 2, 2
    cmd = [sys.executable, str(SCRIPT), "--shape", "tiny", "--types", "q4_k_m", "--runs", str(runs)]
    cmd += ["--threads", str(threads), "--vision-precision", "fp32,int8", "--bandwidth-gib", "0.0625"]
    cmd += ["--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["errors"] == []
    assert "decode tokens/s" in proc.stdout and "vision" in proc.stdout  # the table was printed

    assert {"1", str(threads)} == set(r["bandwidth"]["gb_per_s"])
    assert all(positive(v) for v in r["bandwidth"]["gb_per_s"].values())

    e = r["text"]["q4_k_m"]
    assert positive(e["file_bytes"]) and 0 < e["streamed_bytes_per_token"] < e["file_bytes"]
    for engine in ("ours", "llama.cpp"):
        for field in ("load_s", "decode_tps", "prefill_tps", "peak_rss_mb"):
            check_summary(e[engine][field], runs, f"{engine} {field}")
        assert e[engine]["finite"] is True
        assert all(0 <= v < 2 for v in e[engine]["others_cpu_share"]["runs"])  # a share of all CPUs
    assert set(e["ratio"]) == {"load_s", "decode_tps", "prefill_tps", "peak_rss_mb"}
    assert all(positive(v) for v in e["ratio"].values())
    # decode: both engines in one child per run, taking turns; the ratio is the median of the runs' own
    pairs = e["decode_pairs"]
    assert pairs["turn_tokens"] == 16
    check_summary(pairs["ratio"], runs, "decode ratio per run")
    rates = (e["ours"]["decode_tps"]["runs"], e["llama.cpp"]["decode_tps"]["runs"])
    per_run = [o / t for o, t in zip(*rates, strict=True)]
    assert pairs["ratio"]["runs"] == pytest.approx(per_run)
    assert e["ratio"]["decode_tps"] == pairs["ratio"]["median"]
    check_summary(pairs["bandwidth_gb_per_s"], runs, "memory bandwidth between decode turns")
    assert "taking turns of 16 tokens" in proc.stdout
    assert positive(e["floor"]["tps"])
    assert positive(e["floor"]["fraction_ours"]) and positive(e["floor"]["fraction_llama.cpp"])
    assert "  of floor" in proc.stdout
    for engine, rate in zip(("ours", "llama.cpp"), rates, strict=True):  # each run against its own floor
        floor_tps = [b * 1e9 / e["streamed_bytes_per_token"] for b in pairs["bandwidth_gb_per_s"]["runs"]]
        expected = [t / f for t, f in zip(rate, floor_tps, strict=True)]
        assert pairs["of_floor"][engine]["runs"] == pytest.approx(expected)
    assert "as a fraction of the floor at that run's bandwidth" in proc.stdout
    agree = e["agreement"]
    assert agree["prompt_logits_cosine"] > 0.99  # same file, same maths (top-1 may flip on a near-tie)
    assert 0 <= agree["greedy_common_prefix"] <= agree["of"] == 128

    v = r["vision"]
    for precision in ("fp32", "int8"):
        ours = v["ours"][precision]
        for field in ("encode_s", "tower_s", "projector_s"):
            check_summary(ours[field], runs, f"vision {precision} {field}")
        assert positive(ours["load_s"]) and positive(ours["peak_rss_mb"]) and ours["finite"] is True
        assert positive(v["ratio_encode_s"][precision])
    cosine = v["ours"]["int8"]["cosine_vs_fp32"]
    assert 0.9 < cosine["min"] <= cosine["mean"] <= 1.0 + 1e-9
    llama = v["llama.cpp"]
    check_summary(llama["encode_s"], runs, "vision llama.cpp")
    assert positive(llama["load_s"]) and positive(llama["peak_rss_mb"]) and llama["finite"] is True
    assert llama["n_tokens"] == (v["shape"]["image"] // v["shape"]["patch"]) ** 2
    assert r["config"]["threads"] == threads and r["machine"]["llama_cpp_python"]


def test_decode_turn_zero_times_each_engine_in_its_own_child(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(SCRIPT), "--shape", "tiny", "--types", "q4_0", "--runs", "1"]
    cmd += ["--only", "decode", "--decode-turn", "0", "--decode-tokens", "32"]
    cmd += ["--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    e = json.loads(out.read_text())["text"]["q4_0"]
    assert "decode_pairs" not in e and "taking turns" not in proc.stdout
    for engine in ("ours", "llama.cpp"):
        check_summary(e[engine]["decode_tps"], 1, engine)
    assert e["ratio"]["decode_tps"] == pytest.approx(
        e["ours"]["decode_tps"]["median"] / e["llama.cpp"]["decode_tps"]["median"]
    )
    assert 0 <= e["agreement"]["greedy_common_prefix"] <= e["agreement"]["of"] == 32


def test_engines_that_disagree_make_an_error():
    """The 7B files agree at cosine 0.993-0.995; a broken kernel (seen: -0.03) must not become a table."""
    assert agreement_error("f.gguf", {"agreement": {"prompt_logits_cosine": 0.9936}}) is None
    assert agreement_error("f.gguf", {}) is None  # one engine only: nothing to compare
    err = agreement_error("f.gguf", {"agreement": {"prompt_logits_cosine": -0.0278}})
    assert err is not None and "f.gguf" in err and "-0.0278" in err and "not comparable" in err
