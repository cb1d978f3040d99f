"""Seed corpora for the fuzzers: small valid files of every kind the harnesses read.

    python tests/fuzz/seeds.py OUT_DIR [--llama-cpp-vocab DIR]

writes OUT_DIR/gguf/* (tiny decoders in several tensor types, a LLaVA bundle GGUF with projector and
preprocessing keys, a file with every metadata value type, and llama.cpp's vocab GGUFs when their folder
is given) and OUT_DIR/image/* (tiny pictures in every allowed format and the pixel modes the loader
converts). Everything is generated here; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from llava_edge.bundle import LlavaMeta
from llava_edge.ggml_types import GGMLType
from llava_edge.gguf_file import GGUFFile, GGUFValueType
from llava_edge.gguf_writer import write_gguf
from llava_edge.preprocess import PreprocessConfig
from llava_edge.tiny import write_tiny_model

TINY = dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, context_length=64)
VISION_WIDTH = 16


def gguf_seeds(out: Path, llama_cpp_vocab: Path | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for file_type in ("q8_0", "f16", "q4_0"):
        paths.append(write_tiny_model(out / f"tiny-{file_type}.gguf", file_type=file_type, **TINY))
    paths.append(write_tiny_model(out / "tiny-window.gguf", file_type="q8_0", sliding_window=8, **TINY))
    paths.append(_llava_gguf(out / "llava.gguf", paths[0], anyres=False))
    paths.append(_llava_gguf(out / "llava-anyres.gguf", paths[0], anyres=True))
    paths.append(_every_value_type(out / "value-types.gguf"))
    if llama_cpp_vocab is not None:
        for src in sorted(llama_cpp_vocab.glob("ggml-vocab-llama-spm.gguf")):
            paths.append(Path(shutil.copy(src, out / src.name)))
    return paths


def _llava_gguf(path: Path, decoder: Path, *, anyres: bool) -> Path:
    """The tiny decoder plus what a llava-edge bundle adds: `llava.*` keys and the projector."""
    rng = np.random.default_rng(1)
    with GGUFFile.open(decoder) as f:
        dim = f.get("llama.embedding_length")
        metadata, value_types = dict(f.metadata), dict(f.value_types)
        tensors = {n: (t.type, t.shape, np.array(f.raw(n))) for n, t in f.tensors.items()}
    meta = LlavaMeta("mlp2x_gelu", "vision.onnx", "0" * 64, VISION_WIDTH, 4, -2, -1, "llava_v1")
    metadata.update(meta.to_gguf_metadata())
    cfg = PreprocessConfig(
        image_size=28,
        patch_size=14,
        aspect_mode="anyres" if anyres else "pad",
        grid_pinpoints=((28, 56), (56, 28)) if anyres else (),
    )
    metadata.update(cfg.to_gguf_metadata())

    def f32(*shape):
        return rng.normal(0, 0.1, shape).astype(np.float32)

    tensors["mm.0.weight"] = (GGMLType.F32, (VISION_WIDTH, dim), f32(dim, VISION_WIDTH))
    tensors["mm.0.bias"] = (GGMLType.F32, (dim,), f32(dim))
    tensors["mm.2.weight"] = (GGMLType.F32, (dim, dim), f32(dim, dim))
    tensors["mm.2.bias"] = (GGMLType.F32, (dim,), f32(dim))
    if anyres:
        tensors["v.image_newline"] = (GGMLType.F32, (dim,), f32(dim))
    write_gguf(path, metadata, tensors, value_types)
    return path


def _every_value_type(path: Path) -> Path:
    V = GGUFValueType
    metadata = {
        "general.architecture": "llama",
        "general.alignment": 64,
        "u8": 7,
        "i8": -7,
        "u16": 700,
        "i16": -700,
        "u32": 70000,
        "i32": -70000,
        "f32": 1.5,
        "bool": True,
        "string": "ünïcode",
        "u64": 2**40,
        "i64": -(2**40),
        "f64": 0.125,
        "array.u8": [1, 2, 3],
        "array.f32": [0.5, -1.0],
        "array.bool": [True, False],
        "array.string": ["a", "bc", ""],
        "array.empty": [],
    }
    value_types = {
        "general.alignment": (V.UINT32,),
        "u8": (V.UINT8,),
        "i8": (V.INT8,),
        "u16": (V.UINT16,),
        "i16": (V.INT16,),
        "u32": (V.UINT32,),
        "i32": (V.INT32,),
        "f32": (V.FLOAT32,),
        "u64": (V.UINT64,),
        "i64": (V.INT64,),
        "f64": (V.FLOAT64,),
        "array.u8": (V.ARRAY, V.UINT8),
        "array.f32": (V.ARRAY, V.FLOAT32),
        "array.bool": (V.ARRAY, V.BOOL),
        "array.string": (V.ARRAY, V.STRING),
        "array.empty": (V.ARRAY, V.INT32),
    }
    tensors = {
        "a": (GGMLType.F32, (3, 2), np.arange(6, dtype=np.float32)),
        "b": (GGMLType.Q8_0, (32,), bytes(34)),
        "empty": (GGMLType.F16, (0, 4), b""),
        "c": (GGMLType.I32, (5,), np.arange(5, dtype=np.int32)),
    }
    write_gguf(path, metadata, tensors, value_types)
    return path


def image_seeds(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (5, 7, 4), dtype=np.uint8))
    grey16 = Image.fromarray(rng.integers(0, 65536, (4, 6), dtype=np.uint16))
    pictures = {
        "rgb.png": (rgb, "PNG", {}),
        "rgba.png": (rgba, "PNG", {}),
        "palette.png": (rgb.convert("P"), "PNG", {"transparency": 0}),
        "grey.png": (rgb.convert("L"), "PNG", {}),
        "grey16.png": (grey16, "PNG", {}),
        "mono.png": (rgb.convert("1"), "PNG", {}),
        "rgb.jpg": (rgb, "JPEG", {"quality": 80}),
        "progressive.jpg": (rgb, "JPEG", {"progressive": True}),
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG", {}),
        "exif.jpg": (rgb, "JPEG", {"exif": _exif_rotated()}),
        "rgb.webp": (rgb, "WEBP", {"lossless": True}),
        "lossy.webp": (rgba, "WEBP", {"quality": 50}),
        "rgb.gif": (rgb.convert("P"), "GIF", {}),
        "anim.gif": (rgb.convert("P"), "GIF", {"save_all": True, "append_images": [rgba.convert("P")]}),
        "rgb.bmp": (rgb, "BMP", {}),
        "rgba.bmp": (rgba, "BMP", {}),
        "rgb.tiff": (rgb, "TIFF", {}),
        "lzw.tiff": (rgb, "TIFF", {"compression": "tiff_lzw"}),
        "deflate.tiff": (rgba, "TIFF", {"compression": "tiff_adobe_deflate"}),
        "packbits.tiff": (rgb.convert("L"), "TIFF", {"compression": "packbits"}),
        "grey16.tiff": (grey16, "TIFF", {}),
        "float.tiff": (Image.fromarray(rng.random((3, 4), dtype=np.float32)), "TIFF", {}),
    }
    paths = []
    for name, (im, fmt, opts) in pictures.items():
        buf = io.BytesIO()
        im.save(buf, fmt, **opts)
        path = out / name
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    return exif.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--llama-cpp-vocab", type=Path, help="llama.cpp's models/ folder (vocab GGUFs)")
    args = parser.parse_args()
    gguf_seeds(args.out / "gguf", args.llama_cpp_vocab)
    image_seeds(args.out / "image")


if __name__ == "__main__":
    main()
