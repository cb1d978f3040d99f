"""LLaVA image preprocessing in numpy + Pillow, equal to transformers' PIL-backend processors.

v1.5 ("pad"): pad to a square with the CLIP mean colour, then CLIP preprocessing (bicubic resize of the
shortest side, centre crop, x/255, normalise) -- `CLIPImageProcessor` after LLaVA's `expand2square`,
which is also `LlavaImageProcessor(do_pad=True)`.
v1.6 ("anyres"): a global view (the whole image resized to S x S, aspect not kept) followed by S x S
tiles, row-major, of the image fitted into the best grid resolution and centred on black --
`LlavaNextImageProcessor`. After the vision tower, `anyres_arrange` lays the tile features out as
`LlavaNextForConditionalGeneration.pack_image_features` does ("spatial_unpad" + image_newline).

Conventions: image sizes are (width, height), as PIL gives them. Grid pinpoints are (height, width)
pairs, in the order of the Hugging Face config's `image_grid_pinpoints` (and `llava.grid_pinpoints`,
flattened), which is how transformers reads them; the order decides ties (see select_best_resolution).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from llava_edge.errors import GGUFError, ImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LLAVA_V16_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
# Very elongated images blow up: padded to a square (1000x40000 -> 40000x40000) or resized by their
# shortest edge (1x4000 -> 336x1344000). Past 100 MP (300 MB of RGB) we refuse rather than allocate.
MAX_SQUARE_PIXELS = 100_000_000

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
ASPECT_MODES = ("pad", "anyres")

Size = tuple[int, int]  # (width, height)
Pinpoints = Sequence[Sequence[int]]  # (height, width) pairs


def mean_color(mean: Sequence[float] = CLIP_MEAN) -> tuple[int, int, int]:
    """The padding colour of v1.5: each mean channel x 255, truncated (LLaVA's `int(x * 255)`)."""
    r, g, b = (int(m * 255) for m in mean)
    return r, g, b


def expand_to_square(
    img: Image.Image,
    background: tuple[int, int, int] = mean_color(CLIP_MEAN),
    *,
    max_pixels: int = MAX_SQUARE_PIXELS,
) -> Image.Image:
    """Pad the short side to a square of `background`; the image sits at offset (long - short) // 2."""
    _check_rgb(img)
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    if side * side > max_pixels:
        raise ImageError(
            f"{w}x{h} image",
            f"too elongated to pad to a square: {side}x{side} pixels is over the limit of {max_pixels}",
        )
    square = Image.new("RGB", (side, side), tuple(background))
    square.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return square


def shortest_edge_size(size: Size, shortest: int) -> Size:
    """(width, height) after scaling the short side to `shortest`; the long side is truncated, not
    rounded (transformers' get_resize_output_image_size, after torchvision)."""
    w, h = size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(shortest * long / short)
    return (shortest, new_long) if w <= h else (new_long, shortest)


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W]: x / 255 in float64 rounded to float32, then (x - mean) / std
    in float32 -- the same floating-point steps as transformers, so the result is bit-identical."""
    x = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)  # [H, W, 3]
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def clip_preprocess(
    img: Image.Image,
    size: int = 336,
    crop: int = 336,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    resample: str = "bicubic",
) -> np.ndarray:
    """RGB image -> float32 [3, crop, crop]: `CLIPImageProcessor` (PIL backend) with shortest_edge=size."""
    _check_rgb(img)
    if not 0 < crop <= size:
        raise ValueError(f"crop ({crop}) must be in 1..size ({size})")
    w, h = shortest_edge_size(img.size, size)
    if w * h > MAX_SQUARE_PIXELS:  # 1x4000 -> 336x1344000: refuse rather than allocate 1.3 GB
        raise ImageError(
            f"{img.width}x{img.height} image",
            f"too elongated for a shortest-edge resize to {size}: {w}x{h} pixels is over the limit of "
            f"{MAX_SQUARE_PIXELS} (pad it to a square first, as the 'pad' aspect mode does)",
        )
    resized = img.resize((w, h), resample=_resample(resample))
    top, left = (h - crop) // 2, (w - crop) // 2
    pixels = np.asarray(resized)[top : top + crop, left : left + crop]  # [crop, crop, 3]
    return normalize(pixels, mean, std)


def select_best_resolution(size: Size, pinpoints: Pinpoints) -> Size:
    """The grid resolution (width, height) for an image of `size` (width, height): the pinpoint that
    keeps the most pixels of the image once it is scaled to fit (never counting more than the original
    has); among equals, the one with the least padding; among those, the first listed."""
    _check_size(size)
    w, h = size
    best, best_kept, best_waste = None, 0, math.inf
    for ph, pw in pinpoints:
        scale = min(pw / w, ph / h)
        kept = min(int(w * scale) * int(h * scale), w * h)
        waste = pw * ph - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (pw, ph), kept, waste
    if best is None:
        raise ValueError("no grid pinpoints given")
    return best


def fit_size(size: Size, target: Size) -> Size:
    """(width, height) of `size` scaled to fit `target` keeping its aspect; the scaled side is rounded
    up (transformers' get_patch_output_size, LLaVA's resize_and_pad_image)."""
    w, h = size
    tw, th = target
    scale_w, scale_h = tw / w, th / h
    if scale_w < scale_h:
        return tw, min(math.ceil(h * scale_w), th)
    return min(math.ceil(w * scale_h), tw), th


def anyres_pixels(
    img: Image.Image,
    pinpoints: Pinpoints = LLAVA_V16_PINPOINTS,
    patch: int = 336,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    resample: str = "bicubic",
) -> np.ndarray:
    """RGB image -> float32 [1 + n_tiles, 3, patch, patch]: the global view, then the tiles row-major."""
    _check_rgb(img)
    _check_pinpoints(pinpoints, patch)
    method = _resample(resample)
    bw, bh = select_best_resolution(img.size, pinpoints)
    fw, fh = fit_size(img.size, (bw, bh))
    canvas = np.zeros((bh, bw, 3), dtype=np.uint8)  # black padding (0 before normalisation)
    top, left = (bh - fh) // 2, (bw - fw) // 2
    canvas[top : top + fh, left : left + fw] = np.asarray(img.resize((fw, fh), resample=method))
    tiles = canvas.reshape(bh // patch, patch, bw // patch, patch, 3).transpose(0, 2, 1, 3, 4)
    tiles = tiles.reshape(-1, patch, patch, 3)  # [n_tiles, patch, patch, 3], row-major
    global_view = np.asarray(img.resize((patch, patch), resample=method))
    out = np.empty((1 + len(tiles), 3, patch, patch), dtype=np.float32)
    out[0] = normalize(global_view, mean, std)
    for i, tile in enumerate(tiles):
        out[1 + i] = normalize(tile, mean, std)
    return out


def _unpadded_box(image_size: Size, grid_h: int, grid_w: int) -> tuple[int, int, int, int]:
    """Rows [r0, r1) and columns [c0, c1) of a grid_h x grid_w feature grid that hold the image, not the
    padding. The scaled side is rounded to 7 decimals before truncation (transformers' unpad_image guard
    against 23.9999999 -> 23); an odd leftover keeps the extra row/column."""
    w, h = image_size
    if w / h > grid_w / grid_h:
        new_h = int(round(h * (grid_w / w), 7))
        pad = (grid_h - new_h) // 2
        return pad, grid_h - pad, 0, grid_w
    new_w = int(round(w * (grid_h / h), 7))
    pad = (grid_w - new_w) // 2
    return 0, grid_h, pad, grid_w - pad


def anyres_arrange(
    features: np.ndarray,
    image_size: Size,
    best_resolution: Size,
    image_newline: np.ndarray,
    *,
    patch_grid: int = 24,
    tile_size: int = 336,
) -> np.ndarray:
    """Tower features [1 + n_tiles, patch_grid**2, dim] -> image tokens [n_tokens, dim]: the global view's
    tokens, then the tile features laid out as one grid, padding rows/columns removed, `image_newline`
    after every grid row."""
    _check_size(image_size)
    bw, bh = best_resolution
    tiles_h, tiles_w = bh // tile_size, bw // tile_size
    dim = features.shape[-1] if features.ndim else 0
    if features.shape != (1 + tiles_h * tiles_w, patch_grid * patch_grid, dim) or image_newline.shape != (
        dim,
    ):
        raise ValueError(
            f"features {features.shape} and image_newline {image_newline.shape} do not fit a "
            f"{tiles_w}x{tiles_h} grid of {patch_grid}x{patch_grid} tokens plus a global view"
        )
    g = patch_grid
    grid = features[1:].reshape(tiles_h, tiles_w, g, g, dim).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(tiles_h * g, tiles_w * g, dim)  # [rows, cols, dim]
    r0, r1, c0, c1 = _unpadded_box(image_size, tiles_h * g, tiles_w * g)
    grid = grid[r0:r1, c0:c1]
    newline = np.broadcast_to(image_newline.astype(features.dtype), (grid.shape[0], 1, dim))
    body = np.concatenate([grid, newline], axis=1).reshape(-1, dim)  # [rows * (cols + 1), dim]
    return np.concatenate([features[0], body], axis=0)


def anyres_token_count(
    image_size: Size,
    pinpoints: Pinpoints = LLAVA_V16_PINPOINTS,
    *,
    patch_grid: int = 24,
    tile_size: int = 336,
) -> int:
    """The number of rows `anyres_arrange` returns for an image of `image_size` (width, height)."""
    _check_size(image_size)
    _check_pinpoints(pinpoints, tile_size)
    bw, bh = select_best_resolution(image_size, pinpoints)
    r0, r1, c0, c1 = _unpadded_box(image_size, bh // tile_size * patch_grid, bw // tile_size * patch_grid)
    return patch_grid * patch_grid + (r1 - r0) * (c1 - c0 + 1)


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything preprocessing needs, as stored in the bundle's GGUF under `llava.*`."""

    image_size: int = 336
    patch_size: int = 14
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    aspect_mode: str = "pad"  # "pad" (v1.5) | "anyres" (v1.6)
    grid_pinpoints: tuple[tuple[int, int], ...] = ()  # (height, width) pairs, anyres only
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        problems = _config_problems(self.__dict__)
        if problems:
            field, problem = problems[0]
            raise ValueError(f"PreprocessConfig.{field}: {problem}")

    @property
    def patch_grid(self) -> int:
        """Patches per side of one tile: 24 for CLIP-L/14 at 336."""
        return self.image_size // self.patch_size

    @property
    def pad_color(self) -> tuple[int, int, int]:
        return mean_color(self.mean)

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any], path: str | None = None) -> PreprocessConfig:
        """Build from the `llava.*` keys; a missing or malformed key is a GGUFError naming it."""

        def get(key: str) -> Any:
            if key not in metadata:
                raise GGUFError(path, key, "missing (needed for image preprocessing)")
            return metadata[key]

        def integer(key: str) -> int:
            v = get(key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise GGUFError(path, key, f"expected an integer, found {_show(v)}")
            return int(v)

        def numbers(key: str, kind: type | tuple[type, ...]) -> list:
            v = get(key)
            if not _is_seq(v) or not all(isinstance(x, kind) and not isinstance(x, bool) for x in v):
                raise GGUFError(path, key, f"expected an array of numbers, found {_show(v)}")
            return [x.item() if isinstance(x, np.generic) else x for x in v]

        mode = get("llava.aspect_mode")
        if mode not in ASPECT_MODES:
            raise GGUFError(path, "llava.aspect_mode", f"expected one of {ASPECT_MODES}, found {_show(mode)}")
        flat = numbers("llava.grid_pinpoints", (int, np.integer)) if mode == "anyres" else []
        if len(flat) % 2:
            raise GGUFError(
                path, "llava.grid_pinpoints", f"expected (height, width) pairs, found {len(flat)} ints"
            )
        fields = dict(
            image_size=integer("llava.image_size"),
            patch_size=integer("llava.patch_size"),
            mean=tuple(float(x) for x in numbers("llava.image_mean", (float, int, np.number))),
            std=tuple(float(x) for x in numbers("llava.image_std", (float, int, np.number))),
            aspect_mode=mode,
            grid_pinpoints=tuple(zip(flat[0::2], flat[1::2], strict=True)),
        )
        problems = _config_problems(fields)
        if problems:
            field, problem = problems[0]
            raise GGUFError(path, _GGUF_KEYS[field], problem)
        return cls(**fields)

    def to_gguf_metadata(self) -> dict[str, Any]:
        """The `llava.*` keys `from_gguf_metadata` reads back."""
        meta: dict[str, Any] = {
            "llava.image_size": self.image_size,
            "llava.patch_size": self.patch_size,
            "llava.image_mean": list(self.mean),
            "llava.image_std": list(self.std),
            "llava.aspect_mode": self.aspect_mode,
        }
        if self.aspect_mode == "anyres":
            meta["llava.grid_pinpoints"] = [x for pair in self.grid_pinpoints for x in pair]
        return meta


_GGUF_KEYS = {
    "image_size": "llava.image_size",
    "patch_size": "llava.patch_size",
    "mean": "llava.image_mean",
    "std": "llava.image_std",
    "aspect_mode": "llava.aspect_mode",
    "grid_pinpoints": "llava.grid_pinpoints",
}


def preprocess(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """RGB image -> `vision.onnx` input, float32 [N, 3, S, S]: N = 1 for "pad", 1 + tiles for "anyres"."""
    s = cfg.image_size
    if cfg.aspect_mode == "anyres":
        return anyres_pixels(img, cfg.grid_pinpoints, s, cfg.mean, cfg.std, cfg.resample)
    square = expand_to_square(img, cfg.pad_color)
    return clip_preprocess(square, s, s, cfg.mean, cfg.std, cfg.resample)[None]


def image_token_count(image_size: Size, cfg: PreprocessConfig) -> int:
    """How many embedding rows one image of `image_size` (width, height) becomes in the prompt."""
    if cfg.aspect_mode == "anyres":
        return anyres_token_count(
            image_size, cfg.grid_pinpoints, patch_grid=cfg.patch_grid, tile_size=cfg.image_size
        )
    return cfg.patch_grid * cfg.patch_grid


def _config_problems(f: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, problem) for each invalid field of a PreprocessConfig given as a mapping."""
    s, p = f["image_size"], f["patch_size"]
    out = []
    if not (isinstance(s, int) and 0 < s <= 4096):
        out.append(("image_size", f"expected an integer in 1..4096, found {_show(s)}"))
    elif not (isinstance(p, int) and 0 < p <= s and s % p == 0):
        out.append(("patch_size", f"expected a divisor of image_size {s}, found {_show(p)}"))
    if len(f["mean"]) != 3:
        out.append(("mean", f"expected 3 values, found {_show(f['mean'])}"))
    if len(f["std"]) != 3 or not all(math.isfinite(x) and x > 0 for x in f["std"]):
        out.append(("std", f"expected 3 positive values, found {_show(f['std'])}"))
    if f["aspect_mode"] not in ASPECT_MODES:
        out.append(("aspect_mode", f"expected one of {ASPECT_MODES}, found {_show(f['aspect_mode'])}"))
    elif f["aspect_mode"] == "anyres" and isinstance(s, int) and s > 0:
        try:
            _check_pinpoints(f["grid_pinpoints"], s)
        except ValueError as e:
            out.append(("grid_pinpoints", str(e)))
    if f.get("resample", "bicubic") not in RESAMPLE:
        out.append(("resample", f"expected one of {tuple(RESAMPLE)}, found {_show(f['resample'])}"))
    return out


def _check_pinpoints(pinpoints: Pinpoints, tile: int) -> None:
    if len(pinpoints) == 0:
        raise ValueError("no grid pinpoints given")
    for pair in pinpoints:
        if len(pair) != 2 or not all(isinstance(x, (int, np.integer)) and 0 < x <= 16 * tile for x in pair):
            raise ValueError(
                f"pinpoint {_show(pair)} is not a (height, width) pair of sizes in 1..{16 * tile}"
            )
        if pair[0] % tile or pair[1] % tile:
            raise ValueError(
                f"pinpoint {tuple(int(x) for x in pair)} is not a multiple of the tile size {tile}"
            )


def _check_rgb(img: Image.Image) -> None:
    if not isinstance(img, Image.Image) or img.mode != "RGB":
        what = img.mode if isinstance(img, Image.Image) else type(img).__name__
        raise ValueError(f"expected an RGB PIL image (use llava_edge.image.load_image), got {what}")


def _check_size(size: Size) -> None:
    w, h = size
    if not (isinstance(w, (int, np.integer)) and isinstance(h, (int, np.integer)) and w > 0 and h > 0):
        raise ImageError(f"{w}x{h} image", "an image needs a positive integer width and height")


def _resample(name: str) -> Image.Resampling:
    if name not in RESAMPLE:
        raise ValueError(f"resample must be one of {tuple(RESAMPLE)}, got {name!r}")
    return RESAMPLE[name]


def _is_seq(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _show(v: Any, limit: int = 60) -> str:
    text = repr(v.tolist() if isinstance(v, np.ndarray) else v)
    return text if len(text) <= limit else text[: limit - 3] + "..."
