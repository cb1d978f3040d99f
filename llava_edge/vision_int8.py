"""An int8 copy of an ONNX vision tower, and how far its features are from the fp32 tower's.

onnxruntime's dynamic quantization: the weights of every MatMul with a constant weight (the projections and
MLPs: nearly all of a ViT's arithmetic) become int8 per output channel; activations are quantized per call.
Attention's activation x activation products, layer norms and the patch convolution stay fp32. A quarter of
the file size, and faster where the CPU has VNNI. The fp32 tower stays the default; callers that choose int8
check the feature cosine (`feature_cosine`) on their own images.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np


def quantize_tower_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the int8 version of the ONNX tower `src` to `dst` (temp name, then rename)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises pre-processing on the root logger; nothing to act on here
    try:
        quantize_dynamic(
            src,
            tmp,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            extra_options={"MatMulConstBOnly": True},
        )
        os.replace(tmp, dst)
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)
    return dst


def feature_cosine(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Cosine similarity of two feature tensors [..., width], per token: the smallest and the mean."""
    a = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    b = other.reshape(-1, other.shape[-1]).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"feature shapes differ: {reference.shape} vs {other.shape}")
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.einsum("ij,ij->i", a, b) / np.maximum(den, 1e-30)
    return {"min": float(cos.min()), "mean": float(cos.mean())}
