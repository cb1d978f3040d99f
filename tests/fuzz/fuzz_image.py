"""Fuzz the image path: load_image (format allow-list, pixel cap, decode, EXIF, RGB conversion) and the
preprocessing of what it returns, pad and anyres. Only ImageError may come out.

    python tests/fuzz/fuzz_image.py CORPUS_DIR SEED_DIR -max_total_time=120 -timeout=10
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import instrumented, run  # noqa: E402

with instrumented():
    # Pillow's Python-side parsers too (headers, chunks, EXIF); its C decoders are not instrumented.
    from PIL import (  # noqa: F401
        BmpImagePlugin,
        GifImagePlugin,
        Image,
        ImageOps,
        JpegImagePlugin,
        PngImagePlugin,
        TiffImagePlugin,
        WebPImagePlugin,
    )

    from llava_edge.errors import ImageError
    from llava_edge.image import load_image
    from llava_edge.preprocess import PreprocessConfig, preprocess

PAD = PreprocessConfig(image_size=28, patch_size=14, aspect_mode="pad")
ANYRES = PreprocessConfig(
    image_size=28, patch_size=14, aspect_mode="anyres", grid_pinpoints=((28, 56), (56, 56))
)
MAX_PIXELS = 4_000_000  # below the default cap, so that a single input stays well inside the time limit

ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}")  # a pointer, as repr() of objects shows them


def test_one_input(data: bytes) -> None:
    try:
        img = load_image(data, max_pixels=MAX_PIXELS)
        assert img.mode == "RGB" and img.width > 0 and img.height > 0
        for cfg in (PAD, ANYRES):
            pixels = preprocess(img, cfg)
            assert pixels.shape[1:] == (3, 28, 28), pixels.shape
    except ImageError as e:
        assert not ADDRESS.search(str(e)), f"an address in the message: {e}"


if __name__ == "__main__":
    run(test_one_input)
