"""LLaVA's `mlp2x_gelu` projector on our kernels: Linear -> exact GELU -> Linear."""

from __future__ import annotations

import numpy as np

from . import _kernels as K
from .errors import ModelError
from .ggml_types import SUPPORTED, GGMLType
from .gguf_file import GGUFFile


class _Dense:
    def __init__(self, f: GGUFFile, prefix: str, n_in: int | None, n_out: int | None):
        w, b = f.tensors.get(prefix + ".weight"), f.tensors.get(prefix + ".bias")
        if w is None or b is None:
            raise ModelError(f"{f.path}: projector tensors {prefix}.weight / {prefix}.bias are missing")
        if len(w.shape) != 2 or w.type not in SUPPORTED:
            raise ModelError(f"{f.path}: {prefix}.weight must be a 2-D matrix of a supported type")
        self.n_in, self.n_out = w.shape
        if (n_in is not None and self.n_in != n_in) or (n_out is not None and self.n_out != n_out):
            raise ModelError(
                f"{f.path}: {prefix}.weight is {self.n_in} -> {self.n_out}, expected {n_in} -> {n_out}"
            )
        if tuple(b.shape) != (self.n_out,) or b.type not in (GGMLType.F32, GGMLType.F16):
            raise ModelError(f"{f.path}: {prefix}.bias must be F32/F16 of shape ({self.n_out},)")
        self.weight, self.type = f.raw(prefix + ".weight"), int(w.type)
        self.bias = np.asarray(f.array(prefix + ".bias"), np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:  # [n, n_in] -> [n, n_out]
        y = K.matmul(self.weight, self.type, x)
        y += self.bias
        return y


class Projector:
    """Image features [n, vision_width] -> decoder embeddings [n, n_embd]."""

    def __init__(self, f: GGUFFile, vision_width: int | None, n_embd: int | None):
        self.fc1 = _Dense(f, "mm.0", vision_width, n_embd)
        self.fc2 = _Dense(f, "mm.2", self.fc1.n_out, n_embd)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, np.float32)
        return self.fc2(K.gelu(self.fc1(x)))
