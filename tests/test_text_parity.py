"""The decoder is the same model as the reference: transformers (numerics) and llama.cpp (file format)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_models import load_reference, save_tiny_decoder  # noqa: E402

from llava_edge.convert.gguf_export import export_text_model  # noqa: E402
from llava_edge.kv_cache import RollingKVCache  # noqa: E402
from llava_edge.loader import load_text_model  # noqa: E402

N_TOKENS = 44


def prompt_ids(n: int = N_TOKENS, seed: int = 1) -> list[int]:
    rng = np.random.default_rng(seed)
    return [1] + rng.integers(3, 32000, n - 1).tolist()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """HF dir, F32 GGUF and reference logits for each tiny model variant."""
    root = tmp_path_factory.mktemp("text")
    out = {}
    for name, kwargs in {
        "mistral_w8": dict(arch="mistral", sliding_window=8),
        "mistral_nowin": dict(arch="mistral", sliding_window=None),
        "llama": dict(arch="llama", heads=4, kv_heads=4),
    }.items():
        hf = save_tiny_decoder(root / name, **kwargs)
        gguf = export_text_model(hf, root / f"{name}-f32.gguf", "f32", progress=False)
        ref = load_reference(hf)
        with torch.no_grad():
            logits = ref(torch.tensor([prompt_ids()])).logits[0].numpy()
        out[name] = (hf, gguf, logits)
    return out


def run_chunks(model, ids, chunk: int, kv_type: str = "f32") -> np.ndarray:
    cache = model.make_cache(kv_type=kv_type)
    parts = [model(ids[i : i + chunk], cache, all_logits=True) for i in range(0, len(ids), chunk)]
    return np.concatenate(parts)


@pytest.mark.parametrize("name", ["mistral_w8", "mistral_nowin", "llama"])
@pytest.mark.parametrize("chunk", [N_TOKENS, 3, 8, 1])
def test_logits_match_transformers(models, name, chunk):
    _, gguf, ref = models[name]
    model, _ = load_text_model(gguf)
    ours = run_chunks(model, prompt_ids(), chunk)
    err = np.abs(ours - ref).max()
    assert err <= 1e-4 * np.abs(ref).max(), f"max |ours - transformers| = {err:.3g}"
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_f16_kv_cache_stays_close(models):
    _, gguf, ref = models["mistral_w8"]
    model, _ = load_text_model(gguf)
    ours = run_chunks(model, prompt_ids(), 5, kv_type="f16")
    assert np.abs(ours - ref).max() <= 2e-3 * np.abs(ref).max()


def test_sliding_window_matches_reference_and_bounds_cache(models):
    _, gguf_w, ref_w = models["mistral_w8"]
    _, _, ref_full = models["mistral_nowin"]
    model, _ = load_text_model(gguf_w)
    cache = model.make_cache(kv_type="f32")
    assert all(isinstance(c, RollingKVCache) and c.capacity == 8 for c in cache)
    ours = np.concatenate([model(np.array([t]), cache, all_logits=True) for t in prompt_ids()])
    assert all(c.keys.shape[0] == 8 and c.values.shape[0] == 8 for c in cache)
    # Same weights (same seed), only the window differs: identical before position 8, different after,
    # in the reference and in ours alike.
    scale = np.abs(ref_w).max()
    assert np.abs(ref_w[:8] - ref_full[:8]).max() <= 1e-5 * scale
    per_pos_ref = np.abs(ref_w - ref_full).max(-1)
    assert (per_pos_ref[8:] > 1e-2 * scale).all()
    assert np.abs(ours - ref_w).max() <= 1e-4 * scale


def test_cli_greedy_equals_transformers_generate(models, mistral_tokenizer_model):
    import subprocess
    import sys

    import sentencepiece

    hf, gguf, _ = models["mistral_w8"]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_tokenizer_model))
    prompt = "The quick brown fox jumps over"
    ids = [1] + sp.encode(prompt)
    ref = load_reference(hf)
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=2, pad_token_id=2
        )
    new = out[0, len(ids) :].tolist()
    if 2 in new:
        new = new[: new.index(2)]
    assert len(new) >= 32, "pick another prompt: the reference stops too early to compare 32 tokens"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "llava_edge.cli",
            "generate",
            "-m",
            str(gguf),
            "-p",
            prompt,
            "-n",
            "40",
            "--temp",
            "0",
            "--kv-type",
            "f32",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert cli.stdout.rstrip("\n") == sp.decode(ids[1:] + new)
