"""Which GGML type each tensor gets for a requested file type (llama.cpp's conventions), and encoding.

Shared by the converter and the quantizer so that the same name means the same mix in both. The rules are
llama.cpp's `llama-quant.cpp` (llama_tensor_get_type) for the llama architecture and the file types below,
restated, with one difference: a row length that a K-quant block (256) does not divide falls back to Q8_0
where llama.cpp picks Q5_0 (for Q4_K) or Q5_1 (for Q5_K), types our kernels do not run. Rows a 32-block
does not divide become F16, as in llama.cpp.

What llama.cpp does, and so do we, for the llama architecture:
- Never quantized: tensors with fewer than 2 dimensions, names not ending in "weight", `*_norm.weight`,
  position and patch embeddings. The quantizer copies them as they are; the converter writes them F32.
- F32 / F16 / BF16 files: every other tensor in that type.
- `output.weight` (and `token_embd.weight` when the model has no `output.weight`, i.e. tied embeddings):
  Q8_0 when the main type's block does not divide its rows (or the main type is Q8_0), else Q6_K.
- `attn_v`: Q4_K_M and Q5_K_M raise the use_more_bits layers to Q6_K; Q4_K_S raises the first 4 to Q5_K;
  on a 70B-shaped model (80 layers, grouped-query attention) a Q4_K attn_v is raised to Q5_K.
- `ffn_down`: Q4_K_M and Q5_K_M raise the use_more_bits layers to Q6_K; Q4_K_S raises the first eighth to
  Q5_K.
- Everything else, token_embd included: the main type.
llama.cpp counts attn_v / ffn_down tensors in layer order where we read the layer number from the name:
the same thing for any model that has one of each per layer.
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

FLOAT_TYPES = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16})

# Substrings of names llama.cpp never quantizes (tensor_allows_quantization, the ones a llama-architecture
# or LLaVA file can hold).
_NEVER_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", ".position_embd", ".patch_embd")


def fallback(ggml_type: GGMLType, n_in: int) -> GGMLType:
    """A type whose block divides the row length: Q8_0 for the K-quants, then F16 (see the docstring)."""
    for t in (ggml_type, GGMLType.Q8_0, GGMLType.F16):
        if n_in % BLOCK_LAYOUT[t][0] == 0:
            return t
    return GGMLType.F16


def is_quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Whether llama.cpp would ever store this tensor in another type than its source type."""
    return len(shape) >= 2 and name.endswith("weight") and not any(s in name for s in _NEVER_QUANTIZED)


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _layer(name: str) -> int:
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit() else -1


def main_type(file_type: str) -> GGMLType:
    try:
        return FILE_TYPES[file_type][1]
    except KeyError:
        raise ValueError(f"unknown type {file_type!r}; choose one of {', '.join(FILE_TYPES)}") from None


def tensor_type(
    name: str,
    shape: tuple[int, ...],
    file_type: str,
    n_layers: int = 0,
    *,
    tied_embeddings: bool = False,
    model_70b: bool = False,
) -> GGMLType:
    """The type for tensor `name` of GGUF shape (ne0, ne1, ...) in a file of `file_type`.

    `tied_embeddings`: the model has no output.weight (token_embd then follows the output rule);
    `model_70b`: 80 layers with grouped-query attention, where llama.cpp gives attn_v more bits.
    """
    wanted = mix_type(name, shape, file_type, n_layers, tied_embeddings=tied_embeddings, model_70b=model_70b)
    return fallback(wanted, shape[0]) if len(shape) else wanted


def mix_type(
    name: str,
    shape: tuple[int, ...],
    file_type: str,
    n_layers: int = 0,
    *,
    tied_embeddings: bool = False,
    model_70b: bool = False,
) -> GGMLType:
    """tensor_type before the fallback for rows that the type's block does not divide."""
    main = main_type(file_type)
    if not is_quantizable(name, shape):
        return GGMLType.F32
    if main in FLOAT_TYPES:
        return main
    n_in = shape[0]
    if name == "output.weight" or (tied_embeddings and name == "token_embd.weight"):
        return GGMLType.Q8_0 if n_in % BLOCK_LAYOUT[main][0] or main == GGMLType.Q8_0 else GGMLType.Q6_K
    wanted, layer = main, _layer(name)
    if "attn_v.weight" in name and layer >= 0:
        if file_type in ("q4_k_m", "q5_k_m") and _more_bits(layer, n_layers):
            wanted = GGMLType.Q6_K
        elif file_type == "q4_k_s" and layer < 4:
            wanted = GGMLType.Q5_K
        if model_70b and wanted == GGMLType.Q4_K:
            wanted = GGMLType.Q5_K
    elif "ffn_down" in name and layer >= 0:
        if file_type in ("q4_k_m", "q5_k_m") and _more_bits(layer, n_layers):
            wanted = GGMLType.Q6_K
        elif file_type == "q4_k_s" and layer < n_layers // 8:
            wanted = GGMLType.Q5_K
    return wanted


def encode_tensor(data: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """float32 array (numpy order, rows last) -> the GGUF tensor's bytes in ggml_type."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if ggml_type == GGMLType.F32:
        return data
    if ggml_type == GGMLType.F16:
        return data.astype(np.float16)
    return _kernels.quantize(int(ggml_type), data.reshape(-1, data.shape[-1]))
