"""Which GGML type each tensor gets for a requested file type (llama.cpp's conventions), and encoding.

Shared by the converter and the quantizer so that the same name means the same mix in both.
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from .ggml_types import BLOCK_LAYOUT, GGMLType

# llama.cpp `enum llama_ftype` values written to general.file_type, and the main tensor type of each.
FILE_TYPES: dict[str, tuple[int, GGMLType]] = {
    "f32": (0, GGMLType.F32),
    "f16": (1, GGMLType.F16),
    "q4_0": (2, GGMLType.Q4_0),
    "q8_0": (7, GGMLType.Q8_0),
    "q4_k_s": (14, GGMLType.Q4_K),
    "q4_k_m": (15, GGMLType.Q4_K),
    "q5_k_m": (17, GGMLType.Q5_K),
    "q6_k": (18, GGMLType.Q6_K),
    "bf16": (32, GGMLType.BF16),
}


def fallback(ggml_type: GGMLType, n_in: int) -> GGMLType:
    """A type whose block divides the row length, as llama.cpp falls back for odd shapes."""
    for t in (ggml_type, GGMLType.Q8_0, GGMLType.F16):
        if n_in % BLOCK_LAYOUT[t][0] == 0:
            return t
    return GGMLType.F16


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(name: str, shape: tuple[int, ...], file_type: str, n_layers: int = 0) -> GGMLType:
    """The type for tensor `name` of GGUF shape (ne0, ne1, ...) in a file of `file_type`."""
    try:
        _, main = FILE_TYPES[file_type]
    except KeyError:
        raise ValueError(f"unknown type {file_type!r}; choose one of {', '.join(FILE_TYPES)}") from None
    if len(shape) < 2 or name.endswith("_norm.weight") or main in (GGMLType.F32,):
        return GGMLType.F32 if len(shape) < 2 or main == GGMLType.F32 else main
    if main in (GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0):
        return fallback(main, shape[0])
    # The output head is the most sensitive matrix: llama.cpp keeps it at Q6_K in its 4/5-bit mixes.
    if name == "output.weight":
        return fallback(GGMLType.Q6_K, shape[0])
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    if name.endswith(("attn_v.weight", "ffn_down.weight")) and layer >= 0:
        if file_type in ("q4_k_m", "q5_k_m") and _more_bits(layer, n_layers):
            return fallback(GGMLType.Q6_K, shape[0])
        if file_type == "q4_k_s" and layer < (4 if "attn_v" in name else n_layers // 8):
            return fallback(GGMLType.Q5_K, shape[0])
    return fallback(main, shape[0])


def encode_tensor(data: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """float32 array (numpy order, rows last) -> the GGUF tensor's bytes in ggml_type."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if ggml_type == GGMLType.F32:
        return data
    if ggml_type == GGMLType.F16:
        return data.astype(np.float16)
    return _kernels.quantize(int(ggml_type), data.reshape(-1, data.shape[-1]))
