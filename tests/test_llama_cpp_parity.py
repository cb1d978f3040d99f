"""GGUF compatibility with llama.cpp (through llama-cpp-python): our files in llama.cpp, its files in ours."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")

from tiny_models import load_reference, save_tiny_decoder  # noqa: E402

from llava_edge.convert.gguf_export import export_text_model  # noqa: E402
from llava_edge.loader import load_text_model  # noqa: E402

N_TOKENS = 200  # enough positions that a 98% agreement bar is meaningful


def prompt_ids(n: int = N_TOKENS, seed: int = 2) -> list[int]:
    rng = np.random.default_rng(seed)
    return [1] + rng.integers(3, 32000, n - 1).tolist()


def llama_cpp_logits(path, ids) -> np.ndarray:
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_batch=256, logits_all=True, n_threads=2, verbose=False, seed=0
    )
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    del llm
    return out


def ours_logits(path, ids, kv_type="f32") -> np.ndarray:
    model, _ = load_text_model(path)
    return model(np.array(ids), model.make_cache(kv_type=kv_type), all_logits=True)


def log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def mean_kl(p_logits, q_logits) -> float:
    """Mean over positions of KL(p || q)."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("peer")
    # llama.cpp never applies Mistral's window, so compare on a window-less model (and inside the window
    # of a windowed one below).
    return save_tiny_decoder(root / "hf", sliding_window=None, seed=3), root


@pytest.mark.parametrize(
    "file_type, max_rel, min_agree, max_kl",
    [
        ("f32", 1e-3, 1.0, None),
        ("f16", 1e-2, 1.0, None),
        ("q8_0", None, 0.98, 1e-3),
        ("q4_0", None, 0.98, 1e-3),
    ],
)
def test_llama_cpp_runs_our_files_the_same(tiny, file_type, max_rel, min_agree, max_kl):
    hf, root = tiny
    path = export_text_model(hf, root / f"ours-{file_type}.gguf", file_type, progress=False)
    ids = prompt_ids()
    theirs = llama_cpp_logits(path, ids)
    ours = ours_logits(path, ids)
    agree = (theirs.argmax(-1) == ours.argmax(-1)).mean()
    assert agree >= min_agree, f"argmax agreement {agree:.3f}"
    if max_rel is not None:
        err = np.abs(theirs - ours).max()
        assert err <= max_rel * np.abs(theirs).max(), f"max diff {err:.3g}"
    if max_kl is not None:
        kl = mean_kl(theirs, ours)
        assert kl <= max_kl, f"mean KL(llama.cpp || ours) = {kl:.3g}"


def test_inside_window_agrees_on_windowed_model(tmp_path):
    hf = save_tiny_decoder(tmp_path / "hf", sliding_window=8, seed=4)
    path = export_text_model(hf, tmp_path / "w8.gguf", "f32", progress=False)
    ids = prompt_ids(8)
    theirs, ours = llama_cpp_logits(path, ids), ours_logits(path, ids)
    assert np.abs(theirs - ours).max() <= 1e-3 * np.abs(theirs).max()


def test_we_run_llama_cpp_converted_file(tiny, llama_cpp_src):
    """A GGUF written by llama.cpp's own convert_hf_to_gguf.py matches transformers in our runtime."""
    hf, root = tiny
    out = root / "theirs-f32.gguf"
    env = dict(os.environ, PYTHONPATH=str(llama_cpp_src / "gguf-py"), NO_LOCAL_GGUF="")
    subprocess.run(
        [
            sys.executable,
            str(llama_cpp_src / "convert_hf_to_gguf.py"),
            str(hf),
            "--outfile",
            str(out),
            "--outtype",
            "f32",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    ids = prompt_ids()
    with torch.no_grad():
        ref = load_reference(hf)(torch.tensor([ids])).logits[0].numpy()
    ours = ours_logits(out, ids)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()
