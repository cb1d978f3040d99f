"""LLaVA preprocessing against transformers' PIL-backend processors and LlavaNext's feature packing.

Images are generated here (noise, gradients, shapes) at sizes chosen to hit every branch: square,
landscape, portrait, 1x1, 1x4000, larger and smaller than every pinpoint, odd leftovers in the crop and
the padding, and sizes where transformers' unpad rounding guard changes the result.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from llava_edge.errors import GGUFError, ImageError
from llava_edge.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    LLAVA_V16_PINPOINTS,
    PreprocessConfig,
    anyres_arrange,
    anyres_pixels,
    anyres_token_count,
    clip_preprocess,
    expand_to_square,
    image_token_count,
    mean_color,
    preprocess,
    select_best_resolution,
)

KINDS = ("noise", "gradient", "shapes")


def make_image(w: int, h: int, kind: str, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + 7919 * w + h)
    if kind == "noise":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    y, x = np.mgrid[0:h, 0:w]
    grad = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=-1)
    img = Image.fromarray(grad.astype(np.uint8))
    if kind == "shapes":
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, x1 = sorted(rng.integers(0, w, 2).tolist())
            y0, y1 = sorted(rng.integers(0, h, 2).tolist())
            fill = tuple(rng.integers(0, 256, 3).tolist())
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return img


# (width, height)
PIXEL_SIZES = [
    (336, 336),
    (640, 480),
    (1280, 720),
    (720, 1280),
    (300, 900),
    (900, 300),
    (1, 1),
    (1, 4000),
    (4000, 1),
    (100, 100),
    (1008, 336),
    (336, 1008),
    (50, 80),
    (337, 335),
    (2000, 1500),
    (55, 88),
]
# no extreme aspect: a shortest-edge resize of 1x4000 is 336x1344000 (see test_clip_refuses_extreme_aspect)
CLIP_SIZES = [(336, 336), (640, 480), (720, 1280), (300, 900), (900, 300), (1, 1), (3, 1), (100, 100),
              (50, 80), (337, 335), (2000, 1500)]  # fmt: skip
# sizes where transformers' round(x, 7) guard in unpad changes the count (x = 14.999999999999998 etc.)
GUARD_SIZES = [(55, 88), (176, 55), (47, 1128)]
TOKEN_SIZES = [
    (336, 336), (672, 672), (1000, 1000), (2000, 2000), (100, 100), (10, 10),  # square
    (640, 480), (480, 640), (1024, 768),  # 4:3, 3:4
    (1280, 720), (1920, 1080), (720, 1280), (1080, 1920),  # 16:9, 9:16
    (300, 900), (336, 1008), (900, 300), (1008, 336),  # 1:3, 3:1
    (1, 1), (1, 4000), (4000, 1), (5000, 3000), (3000, 5000), (50, 80),
    (337, 335), (673, 671), (1, 2), (2, 1),
    *GUARD_SIZES,
]  # fmt: skip


def sized(sizes):
    """(w, h, kind) params, cycling through the image kinds."""
    params = []
    for i, (w, h) in enumerate(sizes):
        kind = KINDS[i % len(KINDS)]
        params.append(pytest.param(w, h, kind, id=f"{w}x{h}-{kind}"))
    return params


# ---------------------------------------------------------------- references


def _proc_kwargs() -> dict:
    return dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


@pytest.fixture(scope="module")
def clip_ref():
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPImageProcessorPil(**_proc_kwargs())


@pytest.fixture(scope="module")
def llava_pad_ref():
    transformers = pytest.importorskip("transformers")
    return transformers.LlavaImageProcessorPil(**_proc_kwargs(), do_pad=True)


@pytest.fixture(scope="module")
def llava_next_ref():
    transformers = pytest.importorskip("transformers")
    pinpoints = [list(p) for p in LLAVA_V16_PINPOINTS]
    return transformers.LlavaNextImageProcessorPil(**_proc_kwargs(), image_grid_pinpoints=pinpoints)


@pytest.fixture(scope="module")
def llava_next_processor(llava_next_ref, mistral_tokenizer_model, tmp_path_factory):
    """LlavaNextProcessor as llava-hf/llava-v1.6-mistral-7b-hf configures it, built offline."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("tok")
    shutil.copy(mistral_tokenizer_model, Path(d) / "tokenizer.model")
    tok = transformers.LlamaTokenizer.from_pretrained(str(d))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    assert tok.convert_tokens_to_ids("<image>") == 32000
    # num_additional_image_tokens=1 (the CLS) with "default" (CLS dropped): 576 base tokens, as the
    # released processor config sets it; the constructor's default of 0 would count 575.
    return transformers.LlavaNextProcessor(
        image_processor=llava_next_ref,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


@pytest.fixture(scope="module")
def llava_next_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=336, patch_size=14, hidden_size=8,
                           intermediate_size=16, num_hidden_layers=1, num_attention_heads=2),
        text_config=dict(model_type="mistral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, vocab_size=64),
        image_grid_pinpoints=[list(p) for p in LLAVA_V16_PINPOINTS],
        image_token_index=63,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlavaNextModel(config).eval()


def expand2square_llava(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA's `expand2square` (llava/mm_utils.py), as it is applied before CLIPImageProcessor."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out


def pixel_values(processor, img: Image.Image) -> np.ndarray:
    return np.asarray(processor(images=img, return_tensors="np")["pixel_values"][0])


def assert_same_pixels(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    diff = np.abs(ours - ref)
    assert diff.max() <= 1e-5, f"max |diff| {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"


# ---------------------------------------------------------------- v1.5 ("pad")


def test_mean_color_is_llava_int_truncation():
    assert mean_color(CLIP_MEAN) == (122, 116, 104)
    assert PreprocessConfig().pad_color == (122, 116, 104)


@pytest.mark.parametrize("w,h", [(5, 2), (2, 5), (6, 3), (3, 6), (4, 4)])
def test_expand_to_square_offsets(w, h):
    img = Image.new("RGB", (w, h), (1, 2, 3))
    sq = np.asarray(expand_to_square(img))
    side = max(w, h)
    assert sq.shape == (side, side, 3)
    top, left = ((w - h) // 2, 0) if w > h else (0, (h - w) // 2)
    mask = np.zeros((side, side), bool)
    mask[top : top + h, left : left + w] = True
    assert (sq[mask] == (1, 2, 3)).all()
    assert (sq[~mask] == (122, 116, 104)).all()


@pytest.mark.parametrize("w,h,kind", sized(CLIP_SIZES))
def test_clip_preprocess_equals_clip_image_processor(clip_ref, w, h, kind):
    img = make_image(w, h, kind)
    assert_same_pixels(clip_preprocess(img), pixel_values(clip_ref, img))


@pytest.mark.parametrize("w,h,kind", sized(PIXEL_SIZES))
def test_pad_mode_equals_expand2square_then_clip(clip_ref, llava_pad_ref, w, h, kind):
    img = make_image(w, h, kind, seed=1)
    ours = preprocess(img, PreprocessConfig(aspect_mode="pad"))
    assert ours.shape == (1, 3, 336, 336)
    assert_same_pixels(ours[0], pixel_values(clip_ref, expand2square_llava(img, (122, 116, 104))))
    assert_same_pixels(ours[0], pixel_values(llava_pad_ref, img))


def test_clip_refuses_extreme_aspect():
    # the reference allocates a 336x1344000 image here (1.3 GB, half a minute); we refuse up front
    with pytest.raises(ImageError, match="1x4000 image.*too elongated"):
        clip_preprocess(Image.new("RGB", (1, 4000)))
    with pytest.raises(ImageError, match="10x200 image.*200x200"):
        expand_to_square(Image.new("RGB", (10, 200)), max_pixels=10_000)


def test_non_rgb_input_is_refused():
    with pytest.raises(ValueError, match="RGB PIL image"):
        clip_preprocess(Image.new("RGBA", (4, 4)))
    with pytest.raises(ValueError, match="RGB PIL image"):
        anyres_pixels(np.zeros((4, 4, 3), np.uint8))


# ---------------------------------------------------------------- v1.6 ("anyres")


@pytest.mark.parametrize("w,h,kind", sized(PIXEL_SIZES))
def test_anyres_pixels_equal_llava_next_image_processor(llava_next_ref, w, h, kind):
    img = make_image(w, h, kind, seed=2)
    ours = anyres_pixels(img)
    bw, bh = select_best_resolution((w, h), LLAVA_V16_PINPOINTS)
    assert ours.shape == (1 + (bw // 336) * (bh // 336), 3, 336, 336)
    assert_same_pixels(ours, pixel_values(llava_next_ref, img))


def test_anyres_dispatch_and_padding_is_black():
    cfg = PreprocessConfig(aspect_mode="anyres", grid_pinpoints=LLAVA_V16_PINPOINTS)
    img = make_image(900, 300, "noise")
    out = preprocess(img, cfg)
    assert np.array_equal(out, anyres_pixels(img))
    # 900x300 -> (1008, 336): fitted to 1008x336 exactly, 3 tiles, no padding
    assert out.shape == (4, 3, 336, 336)
    wide = preprocess(make_image(1000, 300, "noise"), cfg)  # fitted to 1008x303: 16 black rows top, 17 bottom
    black = (0 - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    for tile in wide[1:]:
        assert np.allclose(tile[:, :16, :], black[:, None, None])
        assert np.allclose(tile[:, -17:, :], black[:, None, None])
        assert not np.allclose(tile[:, 16, :], black[:, None])


def test_select_best_resolution_equals_transformers():
    from transformers.image_processing_utils import select_best_resolution as ref

    rng = np.random.default_rng(3)
    sizes = [(w, h) for w, h in TOKEN_SIZES] + [tuple(rng.integers(1, 3000, 2).tolist()) for _ in range(300)]
    for w, h in sizes:
        rh, rw = ref((h, w), [list(p) for p in LLAVA_V16_PINPOINTS])
        assert select_best_resolution((w, h), LLAVA_V16_PINPOINTS) == (rw, rh), (w, h)


def test_select_best_resolution_ties_take_the_first_pinpoint():
    # A small square fits every pinpoint equally; [336, 672] (height, width) comes first and wastes least:
    # one row of two tiles (original LLaVA reads the same list as (width, height): two rows of one).
    assert select_best_resolution((100, 100), LLAVA_V16_PINPOINTS) == (672, 336)
    assert select_best_resolution((100, 100), [(672, 336), (336, 672)]) == (336, 672)
    assert select_best_resolution((1000, 1000), LLAVA_V16_PINPOINTS) == (672, 672)


@pytest.mark.parametrize("w,h", TOKEN_SIZES, ids=[f"{w}x{h}" for w, h in TOKEN_SIZES])
def test_anyres_token_count_equals_llava_next_processor(llava_next_processor, w, h):
    img = Image.new("RGB", (w, h))
    ids = np.asarray(
        llava_next_processor(images=img, text="<image>\nWhat?", return_tensors="np")["input_ids"]
    )
    expected = int((ids == 32000).sum())
    assert anyres_token_count((w, h)) == expected
    cfg = PreprocessConfig(aspect_mode="anyres", grid_pinpoints=LLAVA_V16_PINPOINTS)
    assert image_token_count((w, h), cfg) == expected


def test_known_token_counts():
    # REFERENCE.md: a square photo gives 2928 tokens, a 16:9 photo about 1948; a square no larger than a
    # tile picks the 1x2 grid and gives 1176; 1x4000 keeps no image column, only the 24 newlines.
    assert anyres_token_count((1000, 1000)) == 2928
    assert anyres_token_count((1280, 720)) == 1948
    assert anyres_token_count((336, 336)) == 1176
    assert anyres_token_count((1, 4000)) == 576 + 24
    assert anyres_token_count((4000, 1)) == 576
    assert image_token_count((123, 456), PreprocessConfig()) == 576


@pytest.mark.parametrize("w,h", GUARD_SIZES)
def test_unpad_rounding_guard_matters(w, h):
    """Without round(x, 7) these sizes lose a row or column: the guard is exercised, not assumed."""
    bw, bh = select_best_resolution((w, h), LLAVA_V16_PINPOINTS)
    gh, gw = bh // 336 * 24, bw // 336 * 24
    if w / h > gw / gh:
        naive_rows, cols = gh - 2 * ((gh - int(h * (gw / w))) // 2), gw
    else:
        naive_rows, cols = gh, gw - 2 * ((gw - int(w * (gh / h))) // 2)
    assert anyres_token_count((w, h)) != 576 + naive_rows * (cols + 1)


ARRANGE_SIZES = [(336, 336), (640, 480), (1280, 720), (720, 1280), (300, 900), (900, 300), (1, 1),
                 (1, 4000), (4000, 1), (5000, 3000), (337, 335), *GUARD_SIZES]  # fmt: skip


@pytest.mark.parametrize("w,h", ARRANGE_SIZES, ids=[f"{w}x{h}" for w, h in ARRANGE_SIZES])
def test_anyres_arrange_equals_pack_image_features(llava_next_model, w, h):
    import torch

    rng = np.random.default_rng(w * 10007 + h)
    dim = 7
    best = select_best_resolution((w, h), LLAVA_V16_PINPOINTS)
    n = 1 + (best[0] // 336) * (best[1] // 336)
    features = rng.standard_normal((n, 576, dim)).astype(np.float32)
    newline = rng.standard_normal(dim).astype(np.float32)
    ours = anyres_arrange(features, (w, h), best, newline)
    with torch.no_grad():
        ref, lens = llava_next_model.pack_image_features(
            [torch.from_numpy(features)], torch.tensor([[h, w]]), "default", torch.from_numpy(newline)
        )
    assert np.array_equal(ours, ref[0].numpy())
    assert len(ours) == int(lens[0]) == anyres_token_count((w, h))
    assert np.array_equal(ours[:576], features[0])  # the global view comes first


def test_anyres_arrange_layout_by_hand():
    """A 1x2 grid (best 672x336) of a 2:1 image: no padding; row r = tile0 row r, tile1 row r, newline."""
    g, dim = 24, 1
    features = np.arange(3 * g * g, dtype=np.float32).reshape(3, g * g, dim)
    newline = np.array([-1.0], np.float32)
    out = anyres_arrange(features, (672, 336), (672, 336), newline)[:, 0]
    assert len(out) == g * g + g * (2 * g + 1)
    row5 = out[g * g + 5 * (2 * g + 1) :][: 2 * g + 1]
    assert np.array_equal(row5[:g], features[1, 5 * g : 6 * g, 0])
    assert np.array_equal(row5[g : 2 * g], features[2, 5 * g : 6 * g, 0])
    assert row5[-1] == -1.0


def test_anyres_arrange_refuses_mismatched_shapes():
    features = np.zeros((4, 576, 3), np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        anyres_arrange(features, (640, 480), (672, 672), np.zeros(3, np.float32))  # needs 1 + 4
    with pytest.raises(ValueError, match="do not fit"):
        anyres_arrange(np.zeros((5, 576, 3), np.float32), (640, 480), (672, 672), np.zeros(4, np.float32))


def test_anyres_token_count_refuses_empty_sizes():
    with pytest.raises(ImageError, match="0x5 image"):
        anyres_token_count((0, 5))


# ---------------------------------------------------------------- PreprocessConfig


def v16_metadata() -> dict:
    return {
        "llava.image_size": 336,
        "llava.patch_size": 14,
        "llava.image_mean": np.asarray(CLIP_MEAN, np.float32),
        "llava.image_std": np.asarray(CLIP_STD, np.float32),
        "llava.aspect_mode": "anyres",
        "llava.grid_pinpoints": np.asarray([x for p in LLAVA_V16_PINPOINTS for x in p], np.int32),
    }


def test_config_from_gguf_metadata():
    cfg = PreprocessConfig.from_gguf_metadata(v16_metadata(), "m.gguf")
    assert cfg.aspect_mode == "anyres" and cfg.patch_grid == 24 and cfg.image_size == 336
    assert cfg.grid_pinpoints == LLAVA_V16_PINPOINTS
    assert all(type(x) is int for p in cfg.grid_pinpoints for x in p)
    assert np.array_equal(np.asarray(cfg.mean, np.float32), np.asarray(CLIP_MEAN, np.float32))
    assert PreprocessConfig.from_gguf_metadata(cfg.to_gguf_metadata()) == cfg
    v15 = PreprocessConfig()
    assert "llava.grid_pinpoints" not in v15.to_gguf_metadata()
    assert PreprocessConfig.from_gguf_metadata(v15.to_gguf_metadata()) == v15
    # float32 mean/std from a GGUF give the same pixels as the float64 defaults
    img = make_image(500, 300, "shapes")
    assert np.array_equal(preprocess(img, cfg), anyres_pixels(img))


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("llava.aspect_mode", None, "llava.aspect_mode: missing"),
        ("llava.aspect_mode", "crop", "llava.aspect_mode: expected one of"),
        ("llava.image_size", "336", "llava.image_size: expected an integer"),
        ("llava.image_size", 0, "llava.image_size: expected an integer in 1..4096"),
        ("llava.patch_size", 15, "llava.patch_size: expected a divisor of image_size 336"),
        ("llava.image_mean", [0.5, 0.5], "llava.image_mean: expected 3 values"),
        ("llava.image_std", [0.5, 0.0, 0.5], "llava.image_std: expected 3 positive values"),
        ("llava.image_std", "x", "llava.image_std: expected an array of numbers"),
        ("llava.grid_pinpoints", None, "llava.grid_pinpoints: missing"),
        ("llava.grid_pinpoints", [336, 672, 672], "llava.grid_pinpoints: expected .height, width. pairs"),
        (
            "llava.grid_pinpoints",
            [336, 600],
            r"llava.grid_pinpoints: pinpoint \(336, 600\) is not a multiple",
        ),
        ("llava.grid_pinpoints", [], "llava.grid_pinpoints: no grid pinpoints"),
        ("llava.grid_pinpoints", [1.5, 2.5], "llava.grid_pinpoints: expected an array of numbers"),
    ],
)
def test_config_errors_name_the_key(key, value, message):
    meta = v16_metadata()
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    with pytest.raises(GGUFError, match=f"^bad.gguf: {message}"):
        PreprocessConfig.from_gguf_metadata(meta, "bad.gguf")


def test_config_validates_direct_construction():
    with pytest.raises(ValueError, match="grid_pinpoints: no grid pinpoints"):
        PreprocessConfig(aspect_mode="anyres")
    with pytest.raises(ValueError, match="resample"):
        PreprocessConfig(resample="cubic")
    assert PreprocessConfig(image_size=224, patch_size=14).patch_grid == 16
