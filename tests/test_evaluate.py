"""Quality measurement: perplexity as llama.cpp computes it, model-to-model KL, exact-answer accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llava_edge.evaluate import (
    EvalError,
    accuracy,
    chunk_plan,
    compare,
    compare_many,
    format_table,
    log_softmax,
    normalize_answer,
    perplexity,
)
from llava_edge.loader import load_text_model
from llava_edge.quantize import quantize_file
from llava_edge.tiny import _WORDS, write_tiny_model

CTX = 64


def words(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(_WORDS, n))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny random decoder (F32, no window) and its Q4_0 quantization."""
    root = tmp_path_factory.mktemp("eval")
    f32 = write_tiny_model(root / "f32.gguf", dim=64, ffn_dim=192, sliding_window=None, file_type="f32")
    quantize_file(f32, root / "q4_0.gguf", "q4_0", progress=False)
    return {"f32": f32, "q4_0": root / "q4_0.gguf"}


def logits_of(path: Path, ids) -> np.ndarray:
    model, _ = load_text_model(path)
    return model(np.asarray(ids, np.int32), model.make_cache(len(ids)), all_logits=True)


def test_chunk_plans_are_llama_cpps():
    assert chunk_plan(300, 64, None) == [(0, 32), (64, 32), (128, 32), (192, 32)]
    assert chunk_plan(100, 64, 16) == [(0, 47), (16, 47), (32, 47)]
    assert chunk_plan(63, 64, None) == []
    with pytest.raises(EvalError, match="stride"):
        chunk_plan(300, 64, 64)


@pytest.mark.parametrize("stride", [None, 16])
def test_perplexity_is_the_chunked_mean_nll(models, stride):
    """Recomputed here from whole-chunk logits: BOS in front of every chunk, the scored positions only."""
    text = words(400)
    r = perplexity(models["f32"], text, ctx=CTX, stride=stride)
    _, tok = load_text_model(models["f32"])
    ids = tok.encode(text, add_bos=True)
    nll = []
    for start, first in chunk_plan(len(ids), CTX, stride):
        chunk = [tok.bos_id] + ids[start + 1 : start + CTX]
        lp = log_softmax(logits_of(models["f32"], chunk))
        nll += [-lp[j, ids[start + j + 1]] for j in range(first, CTX - 1)]
    nll = np.array(nll)
    assert r["n_scored"] == len(nll) and r["n_tokens"] == len(ids)
    assert r["ppl"] == pytest.approx(np.exp(nll.mean()), rel=1e-5)
    err = np.sqrt(((nll**2).mean() - nll.mean() ** 2) / (len(nll) - 1)) * np.exp(nll.mean())
    assert r["ppl_err"] == pytest.approx(err, rel=1e-4)
    assert "PPL" in format_table(r) and f"{r['ppl']:.4f}" in format_table(r)


def test_perplexity_agrees_with_llama_cpp_logits(models):
    """The same chunks run by llama.cpp give the same perplexity (F32 weights and caches on both sides)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    text = words(300, seed=1)
    ours = perplexity(models["f32"], text, ctx=CTX, kv_type="f32")
    _, tok = load_text_model(models["f32"])
    ids = tok.encode(text, add_bos=True)
    llm = llama_cpp.Llama(
        model_path=str(models["f32"]),
        n_ctx=CTX,
        logits_all=True,
        verbose=False,
        type_k=0,
        type_v=0,
        n_threads=1,
        n_threads_batch=1,
    )
    nll = []
    for start, first in chunk_plan(len(ids), CTX, None):
        llm.reset()
        llm.eval([tok.bos_id] + ids[start + 1 : start + CTX])
        lp = log_softmax(np.array(llm.scores[:CTX], np.float32))
        nll += [-lp[j, ids[start + j + 1]] for j in range(first, CTX - 1)]
    assert ours["ppl"] == pytest.approx(np.exp(np.mean(nll)), rel=1e-4)


def test_perplexity_refuses_short_text(models):
    with pytest.raises(EvalError, match="needs more than 64"):
        perplexity(models["f32"], "a few words", ctx=CTX)


def test_compare_identical_models_is_zero(models):
    r = compare(models["f32"], models["f32"], [words(40), [1, 5, 9, 200]], ctx=CTX)
    assert r["mean_kl"] == 0 and r["max_kl"] == 0 and r["top1_agreement"] == 1.0
    assert r["ppl_a"] == r["ppl_b"]


def test_compare_equals_the_kl_of_the_logits(models):
    """mean / max KL(a || b), the worst position and top-1 agreement, recomputed from both models' logits;
    a prompt longer than ctx is scored in pieces that each start with BOS."""
    long_text, ids = words(150, seed=3), [1, 7, 300, 12, 45, 99, 3, 250]
    r = compare(models["f32"], models["q4_0"], [long_text, ids], ctx=CTX)
    _, tok = load_text_model(models["f32"])
    pieces = []
    long_ids = tok.encode(long_text, add_bos=True)
    for s in range(0, len(long_ids), CTX):
        pieces.append((0, s, [tok.bos_id] + long_ids[s + 1 : s + CTX] if s else long_ids[:CTX]))
    pieces.append((1, 0, ids))
    kl, same, where = [], [], []
    for p, s, piece in pieces:
        la, lb = log_softmax(logits_of(models["f32"], piece)), log_softmax(logits_of(models["q4_0"], piece))
        kl.append((np.exp(la) * (la - lb)).sum(-1))
        same.append(la.argmax(-1) == lb.argmax(-1))
        where += [(p, s + i) for i in range(len(piece))]
    kl, same = np.concatenate(kl), np.concatenate(same)
    assert r["n_positions"] == len(kl) == len(long_ids) + len(ids)
    assert r["mean_kl"] == pytest.approx(kl.mean(), rel=1e-6) and r["mean_kl"] > 1e-4
    assert r["max_kl"] == pytest.approx(kl.max(), rel=1e-6)
    assert (r["worst"]["prompt"], r["worst"]["position"]) == where[int(kl.argmax())]
    assert r["top1_agreement"] == pytest.approx(same.mean())
    table = format_table(r)
    assert "mean KL(a||b)" in table and f"position {r['worst']['position']}" in table
    many = compare_many(models["f32"], [models["q4_0"], models["f32"]], [long_text, ids], ctx=CTX)
    assert many[0] == r and many[1]["mean_kl"] == 0
    rows = format_table(many).splitlines()
    assert len(rows) == 4 and rows[2].startswith(str(models["q4_0"])) and f"{r['mean_kl']:.6f}" in rows[2]
    json.dumps(many)  # --json


def test_normalize_answer():
    assert normalize_answer("The Red circle.") == normalize_answer("red  circle") == "red circle"
    assert normalize_answer("Two!") == "2" and normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("no") != normalize_answer("yes")


def test_runs_without_torch(models):
    code = (
        "import sys, json\n"
        "from llava_edge.evaluate import perplexity, compare\n"
        "from llava_edge.quantize import quantize_file\n"
        f"r = perplexity({str(models['f32'])!r}, {words(200)!r}, ctx=64)\n"
        f"c = compare({str(models['f32'])!r}, {str(models['q4_0'])!r}, ['the red circle'])\n"
        "print(json.dumps(['torch' in sys.modules, r['ppl'] > 1, c['mean_kl'] > 0]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [False, True, True]


# -- LLaVA bundles ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """A tiny LLaVA-1.5 bundle (F32) and its Q8_0 quantization in another folder."""
    pytest.importorskip("torch")
    from tiny_llava import save_tiny_llava

    from llava_edge.convert.llava_export import export_llava

    root = tmp_path_factory.mktemp("bundles")
    hf = save_tiny_llava(root / "hf", "v1.5", "hf", seed=3, sliding_window=None)
    f32 = export_llava(hf, root / "f32", "f32", progress=False)
    (root / "q8").mkdir()
    quantize_file(f32 / "model.gguf", root / "q8" / "model.gguf", "q8_0", progress=False)
    return {"f32": f32, "q8": root / "q8"}


def image(seed: int, path: Path | None = None):
    from PIL import Image

    img = Image.fromarray((np.random.default_rng(seed).random((40, 60, 3)) * 255).astype(np.uint8))
    if path is not None:
        img.save(path)
    return img


def test_compare_on_image_prompts(bundles):
    """Image prompts + model a's greedy answer, scored at every position, image positions included."""
    from llava_edge.llava import LlavaModel

    model = LlavaModel.load(bundles["f32"])
    n_image = model.image_embeddings(image(0)).shape[0]
    r = compare(bundles["f32"], bundles["q8"], images=[image(0), image(1)], answer_tokens=5)
    same = compare(bundles["f32"], bundles["f32"], images=[image(0)], answer_tokens=5)
    assert same["mean_kl"] == 0 and same["top1_agreement"] == 1
    assert r["n_images"] == 2 and r["n_positions"] > 2 * n_image
    assert 0 < r["mean_kl"] < 0.05 and r["top1_agreement"] > 0.8
    assert r["worst"]["input"] == "image" and r["worst"]["prompt"] in (0, 1)


def test_accuracy_counts_normalized_exact_answers(bundles, tmp_path):
    items = [{"image": f"img{i}.png", "question": q} for i, q in enumerate(["What is it?", "What color?"])]
    for i in range(2):
        image(10 + i, tmp_path / f"img{i}.png")
    # First learn what the model says, then label one answer right (spelled differently) and one wrong.
    (tmp_path / "q.json").write_text(json.dumps([{**it, "answer": "x"} for it in items]))
    said = [r["predicted"] for r in accuracy(bundles["f32"], tmp_path / "q.json", max_tokens=8)["items"]]
    labels = ["The " + said[0].upper() + "!", said[1] + " zebra"]
    (tmp_path / "q.json").write_text(
        json.dumps([{**it, "answer": a} for it, a in zip(items, labels, strict=True)])
    )
    r = accuracy(bundles["f32"], tmp_path / "q.json", max_tokens=8)
    assert [x["correct"] for x in r["items"]] == [True, False] and r["accuracy"] == 0.5
    assert [x["predicted"] for x in r["items"]] == said
    assert "50.0 % (1/2)" in format_table(r)


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "cannot read the question set"),
        ("[]", "non-empty JSON list"),
        ('[{"image": "img.png"}]', "item #0 needs string fields"),
        ('[{"image": "img.png", "question": "q?"}]', "item #0 needs an answer"),
        ('[{"image": "missing.png", "question": "q?", "answer": "a"}]', "does not exist"),
    ],
)
def test_bad_question_sets_are_refused(tmp_path, content, message):
    image(0, tmp_path / "img.png")
    (tmp_path / "q.json").write_text(content)
    with pytest.raises(EvalError, match=message):
        accuracy(tmp_path / "no-bundle", tmp_path / "q.json")
