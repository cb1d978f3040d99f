"""Image decoding: formats, EXIF orientation, the one RGB conversion per mode, and hostile files."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_edge.errors import ImageError
from llava_edge.image import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, load_image

REPO = Path(__file__).resolve().parents[1]


def noise(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    a = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(a if channels > 1 else a[..., 0], mode=mode)


def blocks(w: int, h: int) -> Image.Image:
    """Flat 8x8 blocks of distinct colours: asymmetric, and survives JPEG nearly unchanged."""
    y, x = np.mgrid[0:h, 0:w] // 8
    a = np.stack([x * 37 % 256, y * 59 % 256, (x * 11 + y * 23) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(a)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def png_1bit_zeros(w: int, h: int) -> bytes:
    """A valid 1-bit black PNG of any size, written without holding its pixels (w x h can be huge)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(1 + (w + 7) // 8)  # filter byte 0 + packed bits
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "fmt,kw",
    [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
     ("WEBP", {"lossless": True}), ("GIF", {})],
)  # fmt: skip
def test_lossless_formats_round_trip(tmp_path, fmt, kw):
    img = noise(37, 23, seed=1)
    if fmt == "GIF":  # at most 256 colours
        img = img.quantize(64).convert("RGB")
    path = write(tmp_path, f"x.{fmt.lower()}", encode(img, fmt, **kw))
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (37, 23)
    assert np.array_equal(np.asarray(out), np.asarray(img))


def test_jpeg_and_all_input_kinds(tmp_path):
    data = encode(blocks(64, 40), "JPEG", quality=95)
    path = write(tmp_path, "x.jpg", data)
    ref = np.asarray(Image.open(path).convert("RGB"))
    for source in (path, str(path), data, bytearray(data), memoryview(data), Image.open(io.BytesIO(data))):
        out = load_image(source)
        assert out.mode == "RGB" and np.array_equal(np.asarray(out), ref)
    assert np.abs(ref.astype(int) - np.asarray(blocks(64, 40), int)).mean() < 3  # it is the picture


@pytest.mark.parametrize(
    "fmt,kw",
    [("GIF", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("MPO", {"quality": 95})],  # MPO: phone JPEGs
)
def test_multi_frame_files_give_the_first_frame(tmp_path, fmt, kw):
    frames = [Image.new("RGB", (16, 8), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **kw)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = np.asarray(load_image(write(tmp_path, f"anim.{fmt.lower()}", data))).astype(int)
    assert np.abs(out - (255, 0, 0)).max() <= (2 if fmt == "MPO" else 0)


# ---------------------------------------------------------------- EXIF orientation

# What each EXIF orientation asks the viewer to do to the stored pixels (EXIF 2.3, tag 0x0112).
ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),  # 90 degrees counter-clockwise
}


def jpeg_with_orientation(img: Image.Image, orientation: int | None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif)


@pytest.mark.parametrize("orientation", [3, 6, 8, 1, 2, 4, 5, 7])
def test_exif_orientation_applied(tmp_path, orientation):
    img = blocks(48, 24)
    stored = np.asarray(load_image(jpeg_with_orientation(img, None)))  # same encoder input: same pixels
    path = write(tmp_path, f"o{orientation}.jpg", jpeg_with_orientation(img, orientation))
    out = load_image(path)
    assert out.size == ((24, 48) if orientation >= 5 else (48, 24))
    assert np.array_equal(np.asarray(out), ORIENT[orientation](stored))
    # a PIL image opened by the caller gets the same treatment
    assert np.array_equal(np.asarray(load_image(Image.open(path))), np.asarray(out))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_damaged_exif_keeps_stored_pixels(monkeypatch):
    img = blocks(16, 8)
    stored = np.asarray(load_image(jpeg_with_orientation(img, None)))
    damaged = encode(img, "JPEG", quality=95, exif=b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xff")
    for data in (damaged, jpeg_with_orientation(img, 9)):  # unreadable block; out-of-range value
        assert np.array_equal(np.asarray(load_image(data)), stored)

    def broken(image):
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr("llava_edge.image.ImageOps.exif_transpose", broken)
    assert np.array_equal(np.asarray(load_image(jpeg_with_orientation(img, 6))), stored)


# ---------------------------------------------------------------- modes -> RGB


def composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return rgb * a + 255 * (1 - a)


def test_rgba_composited_over_white(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = [[10, 200, 30]]
    rgba[:, :2, 3] = 0  # transparent -> white
    rgba[:, 2:4, 3] = 255  # opaque -> its colour
    rgba[:, 4:, 3] = 128  # half -> the blend
    img = Image.fromarray(rgba, "RGBA")
    out = np.asarray(load_image(write(tmp_path, "a.png", encode(img, "PNG"))))
    assert (out[:, :2] == 255).all()
    assert (out[:, 2:4] == (10, 200, 30)).all()
    assert np.abs(out[:, 4:] - composite_on_white(rgba[:, 4:, :3], rgba[:, 4:, 3])).max() <= 1
    assert_same_as_transformers(img, out)


def assert_same_as_transformers(img: Image.Image, out: np.ndarray) -> None:
    """transformers' convert_to_rgb (which its processors apply) composites the same way."""
    pytest.importorskip("transformers")
    from transformers.image_transforms import convert_to_rgb

    assert np.array_equal(convert_to_rgb(img, return_numpy=True), out)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparent_index(tmp_path, fmt):
    p = Image.fromarray(np.array([[0, 1, 2], [2, 1, 0]], np.uint8), "P")
    p.putpalette([9, 9, 9, 200, 0, 0, 0, 0, 200] + [0] * (253 * 3))
    path = write(tmp_path, f"p.{fmt.lower()}", encode(p, fmt, transparency=0))
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    out = np.asarray(load_image(path))
    expected = np.array([[[255] * 3, [200, 0, 0], [0, 0, 200]], [[0, 0, 200], [200, 0, 0], [255] * 3]])
    assert np.array_equal(out, expected)
    assert_same_as_transformers(Image.open(path), out)


def test_palette_with_alpha_table_and_without(tmp_path):
    p = Image.fromarray(np.array([[0, 1, 2, 3]], np.uint8), "P")
    p.putpalette([0, 0, 0, 100, 150, 200, 250, 0, 0, 40, 40, 40] + [0] * (252 * 3))
    opaque = np.asarray(load_image(write(tmp_path, "p.png", encode(p, "PNG"))))
    assert np.array_equal(opaque[0], [[0, 0, 0], [100, 150, 200], [250, 0, 0], [40, 40, 40]])
    path = write(tmp_path, "pa.png", encode(p, "PNG", transparency=bytes([0, 255, 64, 200])))
    out = np.asarray(load_image(path))[0]
    assert np.array_equal(out[:2], [[255, 255, 255], [100, 150, 200]])
    pal = np.array([[250, 0, 0], [40, 40, 40]])
    assert np.abs(out[2:] - composite_on_white(pal, np.array([64, 200]))).max() <= 1
    assert_same_as_transformers(Image.open(path), out[None])


def test_grey_modes(tmp_path):
    grey = noise(9, 5, seed=3, mode="L")
    g = np.asarray(grey)
    for mode_img in (grey, grey.convert("1")):
        out = np.asarray(load_image(encode(mode_img, "PNG")))
        src = np.asarray(mode_img.convert("L"))
        assert np.array_equal(out, np.repeat(src[..., None], 3, axis=-1))
    assert set(np.unique(np.asarray(load_image(encode(grey.convert("1"), "PNG"))))) <= {0, 255}
    la = Image.merge("LA", [grey, Image.fromarray(np.where(g > 128, 255, 0).astype(np.uint8))])
    out = np.asarray(load_image(write(tmp_path, "la.png", encode(la, "PNG"))))
    assert np.array_equal(out[..., 0], np.where(g > 128, g, 255))
    assert_same_as_transformers(Image.open(tmp_path / "la.png"), out)


V16 = np.array([0, 1, 128, 129, 257, 1000, 32767, 32768, 65534, 65535], np.uint16)
V16_TO_8 = np.array([0, 0, 0, 1, 1, 4, 127, 128, 255, 255], np.uint8)  # round(v / 257)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    img = Image.fromarray(V16.reshape(2, 5))
    path = write(tmp_path, "g16.png", encode(img, "PNG"))
    assert Image.open(path).mode == "I;16"
    out = np.asarray(load_image(path))
    assert np.array_equal(out, np.repeat(V16_TO_8.reshape(2, 5, 1), 3, axis=-1))
    # all 65536 levels: monotone, exact at the ends, never more than half a step from v / 257
    ramp = Image.fromarray(np.arange(65536, dtype=np.uint16).reshape(256, 256))
    r = np.asarray(load_image(encode(ramp, "PNG")))[..., 0].ravel().astype(int)
    assert r[0] == 0 and r[-1] == 255 and (np.diff(r) >= 0).all()
    assert np.abs(r - np.arange(65536) / 257).max() <= 0.5


def test_16bit_big_endian_int_and_float_modes(tmp_path):
    be = Image.frombytes("I;16B", (10, 1), V16.astype(">u2").tobytes())
    assert np.array_equal(np.asarray(load_image(be))[0, :, 1], V16_TO_8)
    tif = write(tmp_path, "be.tif", encode(be, "TIFF"))
    assert np.array_equal(np.asarray(load_image(tif))[0, :, 2], V16_TO_8)
    i32 = Image.fromarray(np.array([[-5, 0, 257, 65535, 70000]], np.int32), "I")
    assert np.array_equal(np.asarray(load_image(i32))[0, :, 0], [0, 0, 1, 255, 255])
    f = Image.fromarray(np.array([[np.nan, -1, 0, 0.25, 0.5, 1, 2]], np.float32), "F")
    assert np.array_equal(np.asarray(load_image(f))[0, :, 0], [0, 0, 0, 64, 128, 255, 255])


def test_cmyk_jpeg(tmp_path):
    colors = [(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 0, 255), (100, 50, 25, 128)]
    cmyk = Image.new("CMYK", (32, 16))
    for i, c in enumerate(colors):
        cmyk.paste(c, (i * 8, 0, i * 8 + 8, 16))
    path = write(tmp_path, "cmyk.jpg", encode(cmyk, "JPEG", quality=100))
    decoded = np.asarray(Image.open(path)).astype(np.int64)
    assert Image.open(path).mode == "CMYK"
    out = np.asarray(load_image(path))
    c, k = decoded[..., :3], decoded[..., 3:]
    assert np.array_equal(out, np.round((255 - c) * (255 - k) / 255))
    for i, rgb in enumerate([(0, 255, 255), (255, 0, 255), (0, 0, 0), (77, 102, 115)]):
        assert np.abs(out[8, i * 8 + 4].astype(int) - rgb).max() <= 4


# ---------------------------------------------------------------- bad input


def test_text_file_named_jpg(tmp_path):
    path = write(tmp_path, "notes.jpg", b"these are my notes, not a photo\n" * 10)
    with pytest.raises(ImageError, match="notes.jpg: not an image in a supported format") as e:
        load_image(path)
    assert e.value.source == str(path)


@pytest.mark.parametrize("fmt,cut", [("JPEG", 0.5), ("PNG", 0.6), ("WEBP", 0.5)])
def test_truncated_file(tmp_path, fmt, cut):
    data = encode(noise(200, 150), fmt)
    path = write(tmp_path, f"cut.{fmt.lower()}", data[: int(len(data) * cut)])
    with pytest.raises(ImageError, match=r"cut\.\w+: (truncated or corrupt|cannot read the image header)"):
        load_image(path)


def test_unsupported_and_missing(tmp_path):
    allowed = ", ".join(ALLOWED_FORMATS)
    cases = {
        "x.ppm": (encode(noise(4, 4), "PPM"), f"not an image in a supported format \\({allowed}\\)"),
        "x.ico": (encode(noise(16, 16), "ICO"), "ICO images are not supported"),
        "x.pdf": (encode(noise(4, 4), "PDF"), "PDF images are not supported"),
        "x.heic": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC images are not supported"),
        "empty.png": (b"", "the file is empty"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(ImageError, match=f"{name}: {message}"):
            load_image(write(tmp_path, name, data))
    with pytest.raises(ImageError, match="missing.png: cannot read the file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="cannot read the file"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="<image bytes>: not an image"):
        load_image(b"GIF87 no")
    with pytest.raises(TypeError):
        load_image(np.zeros((4, 4, 3), np.uint8))


def test_pixel_cap_is_checked_before_decoding(tmp_path):
    big = write(tmp_path, "big.png", png_1bit_zeros(7000, 7000))
    assert 7000 * 7000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageError, match=f"big.png: image is 7000x7000 = 49000000 pixels, over the limit of "
                                         f"{DEFAULT_MAX_PIXELS}"):  # fmt: skip
        load_image(big)
    small = encode(noise(100, 100), "PNG")
    assert load_image(small, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageError, match="over the limit of 9999"):
        load_image(small, max_pixels=9999)
    with pytest.raises(ImageError, match="<PIL image>: image is 100x100"):
        load_image(noise(100, 100), max_pixels=9999)
    with pytest.raises(ValueError):
        load_image(small, max_pixels=0)


CHILD = textwrap.dedent(
    """
    import resource, sys, time
    from PIL import Image
    from llava_edge.errors import ImageError
    from llava_edge.image import load_image

    if sys.argv[2] == "no-pillow-limit":
        Image.MAX_IMAGE_PIXELS = None  # an application may switch Pillow's check off; ours still holds
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20), vm + (512 << 20)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    try:
        load_image(sys.argv[1])
        print("LOADED")
    except ImageError as e:
        print("ImageError:", e)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, time.perf_counter() - t)
    """
)


def _no_sanitizer(env):
    """The child is pure Python under an address-space cap, which a preloaded sanitizer runtime (it
    reserves terabytes of shadow memory) cannot live with; .ci/asan.sh covers the kernels."""
    return {k: v for k, v in env.items() if k != "LD_PRELOAD"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
@pytest.mark.parametrize(
    "pillow,message",
    [
        ("pillow-limit", "image is too large to decode safely"),
        ("no-pillow-limit", "image is 20000x20000 = 400000000 pixels, over the limit"),
    ],
)
def test_decompression_bomb_is_refused_without_decoding(tmp_path, pillow, message):
    """A valid 20000x20000 PNG (48 kB on disk, 400 MB decoded, 1.2 GB as RGB), in a memory-capped child."""
    path = write(tmp_path, "bomb.png", png_1bit_zeros(20000, 20000))
    assert path.stat().st_size < 100_000
    env = {**_no_sanitizer(os.environ), "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), pillow], capture_output=True, text=True, env=env, timeout=60
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"ImageError: {path}: {message}"), run.stdout
    grew_kb, seconds = lines[1].split()
    assert int(grew_kb) < 20_000, f"peak memory grew by {grew_kb} kB: the image was decoded"
    assert float(seconds) < 2.0
