"""Image input: one file (or bytes, or a PIL image) -> one RGB picture, the same way every time.

Every input goes through the same steps: format allow-list, pixel-count cap read from the header
before any pixel is decoded, decode, EXIF orientation, and one conversion to 8-bit RGB:

- EXIF orientation (XMP `tiff:Orientation` too) is applied with `PIL.ImageOps.exif_transpose`;
  metadata too damaged to read leaves the pixels as stored rather than refusing the photo.
- Transparency (RGBA, LA, PA, premultiplied RGBa/La, and P/L/RGB with a `transparency` colour, as in
  palette PNGs and GIFs) is composited over opaque white (ALPHA_BACKGROUND) with Pillow's
  `alpha_composite`: the rule transformers' `convert_to_rgb` uses, so both give the model the same pixels.
- 16-bit grey (I;16, I;16L, I;16B, I;16N) is scaled, not clipped: v8 = round(v16 / 257), so
  0 -> 0 and 65535 -> 255 (Pillow's own `convert` clips every value above 255 to white).
- I (32-bit integer) is taken to hold 16-bit samples (what Pillow gives 16-bit TIFF data): clipped to
  [0, 65535], then round(v / 257).
- F (32-bit float) is taken as linear [0, 1]: round(v * 255) clipped to [0, 255]; NaN -> 0.
- CMYK: Pillow's conversion, R = round((255 - C) * (255 - K) / 255) and likewise G, B; no ICC profile.
- 1, L, P, RGBX, YCbCr, LAB, HSV: Pillow's `convert("RGB")` (1 -> 0 or 255, grey -> R = G = B).
  48/64-bit RGB(A) PNGs arrive already reduced to 8 bits by Pillow's decoder (high byte).
- GIF, WebP and TIFF with several frames: the first frame.

Truncated or corrupt data is an error, not a grey fill, unless the process has set Pillow's global
`ImageFile.LOAD_TRUNCATED_IMAGES`.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from llava_edge.errors import ImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# 40 MP covers 6000x6000 and every common camera and phone default; decoded RGB is at most 120 MB.
# Pillow's own bomb check (89 MP warning, 179 MP error) is far above this.
DEFAULT_MAX_PIXELS = 40_000_000
ALPHA_BACKGROUND = (255, 255, 255)

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")

# Formats people try that Pillow cannot (or we will not) open: named in the error to help the user.
_KNOWN_OTHER_FORMATS = (
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"%PDF", "PDF"),
    (0, b"%!PS", "PostScript/EPS"),
    (0, b"8BPS", "Photoshop PSD"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "XML/SVG"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (4, b"jP  ", "JPEG 2000"),
    (0, b"qoif", "QOI"),
)


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `source` (a path, the bytes of a file, or a PIL image) into an 8-bit RGB PIL image.

    Raises ImageError naming the source and the problem: unreadable file, not an image, a format
    outside ALLOWED_FORMATS, more than `max_pixels` pixels (checked from the header, before decoding),
    truncated or corrupt data.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if isinstance(source, Image.Image):
        return _decode(source, "<PIL image>", max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = "<image bytes>"
        data = bytes(source)
        with _open(io.BytesIO(data), name, data[:16]) as im:
            return _decode(im, name, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        name = name.decode(errors="replace") if isinstance(name, bytes) else name
        try:
            fp = open(source, "rb")  # closed below, after the lazy decode
        except OSError as e:
            raise ImageError(name, f"cannot read the file: {e.strerror or e}") from e
        with fp:
            head = fp.read(16)
            fp.seek(0)
            with _open(fp, name, head) as im:
                return _decode(im, name, max_pixels)
    raise TypeError(f"load_image takes a path, bytes or a PIL image, not {type(source).__name__}")


def to_rgb(im: Image.Image) -> Image.Image:
    """The one conversion of a decoded image of any supported mode to 8-bit RGB (see module doc)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _UINT16_MODES or mode == "I":
        v = np.asarray(im).astype(np.int64)  # native values whatever the byte order
        grey = Image.fromarray(_scale_16_to_8(np.clip(v, 0, 65535)), mode="L")
        t = im.info.get("transparency")
        if isinstance(t, int):  # a tRNS grey level on 16-bit data: those pixels are transparent
            grey = grey.convert("LA")
            grey.putalpha(Image.fromarray(np.where(v == t, 0, 255).astype(np.uint8), mode="L"))
        return to_rgb(grey)
    if mode == "F":
        v = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        grey = np.rint(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _PLAIN_MODES:
        return im.convert("RGB")
    raise ValueError(f"pixel mode {mode!r} is not supported")


def _scale_16_to_8(v: np.ndarray) -> np.ndarray:
    # round(v / 257) in integers; 2v + 257 is odd, so v / 257 + 1/2 is never a tie
    return ((2 * v + 257) // 514).astype(np.uint8)


def _open(fp, name: str, head: bytes) -> Image.Image:
    """Image.open limited to ALLOWED_FORMATS: reads the header only, decodes nothing."""
    try:
        return Image.open(fp, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageError(name, f"image is too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(name, _not_an_image(head)) from e
    except Exception as e:  # Pillow's header parsers raise many types on hostile input
        raise ImageError(name, f"cannot read the image header: {type(e).__name__}: {e}") from e


def _not_an_image(head: bytes) -> str:
    allowed = ", ".join(ALLOWED_FORMATS)
    for offset, magic, what in _KNOWN_OTHER_FORMATS:
        if head[offset : offset + len(magic)] == magic:
            return f"{what} images are not supported (supported: {allowed}); convert it to PNG or JPEG"
    if not head:
        return "the file is empty"
    return f"not an image in a supported format ({allowed})"


def _decode(im: Image.Image, name: str, max_pixels: int) -> Image.Image:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(name, f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(
            name,
            f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
            "(pass a larger max_pixels to accept it)",
        )
    try:
        im.load()
    except Exception as e:  # truncated data raises OSError; corrupt streams raise others
        raise ImageError(name, f"truncated or corrupt image data ({type(e).__name__}: {e})") from e
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:
        pass  # unreadable orientation metadata: keep the pixels as stored (documented above)
    try:
        return to_rgb(im)
    except ValueError as e:
        raise ImageError(name, str(e)) from e
