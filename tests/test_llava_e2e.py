"""LLaVA end to end: converted tiny checkpoints run by our runtime equal transformers, position by position,
and chat sessions reuse the cache without changing the answers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402
from tiny_llava import (  # noqa: E402
    IMAGE_TOKEN_ID,
    load_reference_llava,
    reference_features,
    reference_logits,
    save_tiny_llava,
)

from llava_edge.convert.llava_export import export_llava  # noqa: E402
from llava_edge.generate import stream_generate  # noqa: E402
from llava_edge.llava import IMAGE_SLOT, LlavaModel  # noqa: E402
from llava_edge.preprocess import preprocess  # noqa: E402
from llava_edge.sampling import make_sampler  # noqa: E402

QUESTION = "[INST] <image>\nWhat is in the picture? [/INST]"


def test_image(w=83, h=52, seed=0) -> Image.Image:
    """A non-square picture with structure (gradients and a block), not only noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    img[h // 4 : h // 2, w // 3 : w // 2] = rng.integers(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


test_image.__test__ = False


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(hf dir, bundle dir, reference model) for each kind and layout under test."""
    root = tmp_path_factory.mktemp("llava")
    out = {}
    for kind in ("v1.5", "v1.6"):
        for layout in ("hf", "original"):
            hf = save_tiny_llava(root / f"{kind}-{layout}", kind, layout, seed=11)
            bundle = export_llava(hf, root / f"{kind}-{layout}-bundle", "f32", progress=False)
            out[kind, layout] = (hf, bundle, load_reference_llava(hf))
    return out


def split_at_image(pieces):
    i = pieces.index(IMAGE_SLOT)
    return pieces[:i], pieces[i + 1 :]


def our_logits(model, pieces, img):
    cache = model.decoder.make_cache(kv_type="f32")
    emb = model.embed_prompt(pieces, [img])
    return model.decoder(cache=cache, input_embeddings=emb, all_logits=True)


@pytest.mark.parametrize("kind", ["v1.5", "v1.6"])
@pytest.mark.parametrize("layout", ["hf", "original"])
def test_features_and_logits_match_transformers(bundles, kind, layout):
    _, bundle, ref = bundles[kind, layout]
    model = LlavaModel.load(bundle)
    img = test_image()
    pixels = preprocess(img, model.preprocess_config)
    sizes = (img.height, img.width)
    want = reference_features(ref, pixels, sizes).numpy()
    got = model.image_embeddings(img)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()

    pieces = model.tokenize(QUESTION, add_bos=True)
    before, after = split_at_image(pieces)
    want = reference_logits(ref, before, after, pixels, sizes)
    ours = our_logits(model, pieces, img)
    text = np.r_[0 : len(before), len(ours) - len(after) : len(ours)]  # text positions around the image
    assert np.abs(ours[text] - want[text]).max() <= 1e-4 * np.abs(want[text]).max()
    assert (ours.argmax(-1)[text] == want.argmax(-1)[text]).all()


@pytest.mark.parametrize("kind", ["v1.5", "v1.6"])
def test_original_layout_equals_hf_layout(bundles, kind):
    """The same weights in the original LLaVA layout give the same logits (the vocabularies differ in
    size, 32000 vs 32064 padded, so compare the shared ids)."""
    a = LlavaModel.load(bundles[kind, "hf"][1])
    b = LlavaModel.load(bundles[kind, "original"][1])
    img = test_image(seed=3)
    la = our_logits(a, a.tokenize(QUESTION, add_bos=True), img)
    lb = our_logits(b, b.tokenize(QUESTION, add_bos=True), img)
    assert la.shape[0] == lb.shape[0]
    np.testing.assert_allclose(la[:, :32000], lb, atol=1e-4 * np.abs(lb).max())


def test_tokens_follow_each_checkpoint_convention(bundles, mistral_tokenizer_model):
    import sentencepiece

    # original LLaVA: the prompt is split at <image>, each side tokenized apart, BOS once
    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_tokenizer_model))
    model = LlavaModel.load(bundles["v1.5", "original"][1])
    left, right = QUESTION.split("<image>")
    assert model.tokenize(QUESTION, add_bos=True) == [1, *sp.encode(left), IMAGE_SLOT, *sp.encode(right)]

    # llava-hf: the processor's ids, with its run of image tokens standing for the image
    from transformers import AutoProcessor

    hf, bundle, _ = bundles["v1.5", "hf"]
    processor = AutoProcessor.from_pretrained(hf)
    img = test_image()
    want = processor(text=QUESTION, images=img, return_tensors="np")["input_ids"][0].tolist()
    model = LlavaModel.load(bundle)
    ours = model.tokenize(QUESTION, add_bos=True)
    n_image = len(model.image_embeddings(img))
    expanded = [t for p in ours for t in ([IMAGE_TOKEN_ID] * n_image if p is IMAGE_SLOT else [p])]
    assert expanded == want


def run_cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "llava_edge.cli", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


class CountingDecoder:
    """Wraps the decoder to count how many positions each call feeds."""

    def __init__(self, decoder):
        self.inner, self.fed = decoder, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, tokens=None, cache=None, *, input_embeddings=None, all_logits=False):
        x = tokens if input_embeddings is None else input_embeddings
        self.fed += len(x)
        return self.inner(tokens, cache, input_embeddings=input_embeddings, all_logits=all_logits)


def cold_answer(model, pieces, images, n):
    cache = model.decoder.make_cache(kv_type="f32")
    emb = model.embed_prompt(pieces, images)
    steps = stream_generate(
        model.decoder,
        model.tokenizer,
        cache,
        input_embeddings=emb,
        max_tokens=n,
        sampler=make_sampler(temp=0),
    )
    return [s.token for s in steps]


@pytest.mark.parametrize("kind", ["v1.5", "v1.6"])
def test_session_encodes_and_prefills_each_image_once(bundles, kind):
    model = LlavaModel.load(bundles[kind, "hf"][1])
    model.decoder = counting = CountingDecoder(model.decoder)
    first, second = test_image(seed=1), test_image(71, 90, seed=2)
    session = model.chat(kv_type="f32")
    greedy = make_sampler(temp=0)
    questions = [("What is this?", [first]), ("And the colours?", []), ("What about this one?", [second])]
    starts = []
    for q, imgs in questions:
        list(session.ask(q, images=imgs, max_tokens=6, sampler=greedy))
        starts.append(session.turns[-1].prompt_end)
    assert model.vision_calls == 2  # each image through the tower once
    n_first, n_second = len(model.image_embeddings(first)), len(model.image_embeddings(second))
    n_tokens = sum(1 for p in session.fed if p is not IMAGE_SLOT)
    # every position fed exactly once: each image span once, each token once
    assert counting.fed == n_first + n_second + n_tokens
    for turn, end in zip(session.turns, starts, strict=True):
        pieces = session.fed[:end]
        images = [first, second][: sum(1 for p in pieces if p is IMAGE_SLOT)]
        assert cold_answer(model, pieces, images, len(turn.tokens)) == turn.tokens


def test_cli_chat_greedy_equals_transformers_generate(bundles, tmp_path):
    hf, bundle, ref = bundles["v1.5", "hf"]
    img_path = tmp_path / "picture.png"
    test_image(seed=4).save(img_path)
    model = LlavaModel.load(bundle)
    img = test_image(seed=4)
    pieces = model.tokenize(QUESTION, add_bos=True)
    n_image = len(model.image_embeddings(img))
    ids = [t for p in pieces for t in ([IMAGE_TOKEN_ID] * n_image if p is IMAGE_SLOT else [p])]
    pixels = torch.as_tensor(preprocess(img, model.preprocess_config))
    with torch.no_grad():
        out = ref.generate(
            input_ids=torch.tensor([ids]),
            pixel_values=pixels,
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=2,
            pad_token_id=2,
        )
    new = out[0, len(ids) :].tolist()
    new = new[: new.index(2)] if 2 in new else new
    out = run_cli(
        "chat", str(img_path), "-m", str(bundle), "-p", "What is in the picture?",
        "--temp", "0", "-n", "24", "--kv-type", "f32", "-q",
    )  # fmt: skip
    assert out.rstrip("\n") == model.tokenizer.decode(new)


def test_cli_convert_quantized_bundle_then_chat(tmp_path):
    hf = save_tiny_llava(tmp_path / "hf", "v1.6", "hf_old", seed=5)
    bundle = tmp_path / "bundle"
    run_cli("convert", str(hf), str(bundle), "--type", "q8_0")
    img_path = tmp_path / "p.png"
    test_image(40, 61, seed=6).save(img_path)
    out = run_cli(
        "chat", str(img_path), "-m", str(bundle), "-p", "Describe it.", "--temp", "0", "-n", "8", "-q"
    )
    session = LlavaModel.load(bundle).chat()
    expected = "".join(
        r.text
        for r in session.ask("Describe it.", images=[img_path], max_tokens=8, sampler=make_sampler(temp=0))
    )
    assert out.rstrip("\n") == expected
