"""Export a LLaVA vision tower (transformers `CLIPVisionModel`) to ONNX: pixels -> the selected layer.

The graph holds only what LLaVA uses: patch + position embeddings, the pre-layernorm and the encoder layers
up to the selected one (layers past it and the post-layernorm are left out), with CLS dropped:
`pixel_values` float32 [N,3,H,W] (N dynamic) -> `features` float32 [N, tokens, width].

Exporter choice (measured on a 4-layer tower, torch 2.13): the dynamo exporter (opset 18) and the legacy
TorchScript one give the same onnxruntime parity (~1e-6 relative); dynamo's graph is ~100 nodes with static
token/width dims, the legacy one ~270 (shape arithmetic, Identity nodes) with symbolic output dims. Eager
attention exports fewer nodes than SDPA (103 vs 133) at equal parity, so the export runs with it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from ..vision_tower import INPUT_NAME, file_sha256

OUTPUT_NAME = "features"
PARITY_RTOL = 1e-4  # export is refused if onnxruntime and torch differ more (relative to max |torch|)


def find_vision_tower(llava_model: nn.Module) -> nn.Module:
    """The CLIP vision tower of a Llava / LlavaNext model (transformers 4: `.vision_tower`; 5:
    `.model.vision_tower`)."""
    for owner in (llava_model, getattr(llava_model, "model", None)):
        tower = getattr(owner, "vision_tower", None)
        if isinstance(tower, nn.Module):
            return tower
    raise ModelError(f"{type(llava_model).__name__} has no vision_tower (expected a LLaVA model)")


def _clip_parts(tower: nn.Module) -> nn.Module:
    """The module holding embeddings / pre_layrnorm / encoder: the tower itself in transformers 5,
    `tower.vision_model` in transformers 4."""
    parts = getattr(tower, "vision_model", tower)
    for name in ("embeddings", "pre_layrnorm", "encoder"):
        if not isinstance(getattr(parts, name, None), nn.Module):
            raise ModelError(
                f"{type(tower).__name__} is not a CLIP vision tower: it has no {name!r} "
                "(only CLIP towers with a pre-layernorm are supported)"
            )
    return parts


class SelectedLayer(nn.Module):
    """Embeddings -> pre-layernorm -> the first `n_layers` encoder layers [-> drop CLS]."""

    def __init__(self, clip: nn.Module, n_layers: int, drop_cls: bool):
        super().__init__()
        self.embeddings = clip.embeddings
        self.pre_layrnorm = clip.pre_layrnorm
        self.layers = nn.ModuleList(list(clip.encoder.layers)[:n_layers])
        self.drop_cls = drop_cls
        # transformers 4 layers take (hidden, attention_mask, causal_attention_mask); 5 takes (hidden, mask)
        params = inspect.signature(self.layers[0].forward).parameters if n_layers else {}
        self._masks = (None, None) if "causal_attention_mask" in params else (None,)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.pre_layrnorm(self.embeddings(pixel_values))  # [N, 1 + patches, width]
        for layer in self.layers:
            out = layer(h, *self._masks)
            h = out[0] if isinstance(out, tuple) else out
        return h[:, 1:] if self.drop_cls else h


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter warns about every torchvision op it cannot register when torchvision is absent."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _eager_attention(config):
    previous = getattr(config, "_attn_implementation", None)
    if previous is None:
        yield
        return
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = previous


def export_vision_onnx(
    vision_tower: nn.Module,
    out_path: str | os.PathLike,
    *,
    select_layer: int = -2,
    drop_cls: bool = True,
    opset: int = 18,
) -> dict:
    """Write `vision_tower` (a `CLIPVisionModel`) as ONNX: `pixel_values` [N,3,H,W] -> `features`
    = hidden_states[select_layer] (pre-layernorm applied, post-layernorm not) [N, tokens, width], CLS
    removed when `drop_cls`. The file is checked against torch in onnxruntime before returning.

    Returns the facts the GGUF records: image_size, patch_size, width, n_tokens (per image),
    select_layer, n_layers (encoder layers in the graph), drop_cls, onnx_file (name) and sha256.
    """
    out_path = Path(out_path)
    clip = _clip_parts(vision_tower)
    config = vision_tower.config
    n_total = len(clip.encoder.layers)
    # hidden_states = [embeddings, layer 1 out, ..., layer n_total out]: index k = k layers run
    n_layers = select_layer if select_layer >= 0 else n_total + 1 + select_layer
    if not 0 <= n_layers <= n_total:
        raise ModelError(
            f"select_layer {select_layer} is out of range for a tower with {n_total} layers "
            f"(valid: {-(n_total + 1)}..{n_total})"
        )
    image_size, patch_size = int(config.image_size), int(config.patch_size)
    width = int(config.hidden_size)
    n_tokens = (image_size // patch_size) ** 2 + (0 if drop_cls else 1)

    module = SelectedLayer(clip, n_layers, drop_cls).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, image_size, image_size, generator=generator)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _eager_attention(config), torch.no_grad(), _quiet_exporter():
        torch.onnx.export(
            module,
            (example,),
            str(out_path),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"pixel_values": {0: torch.export.Dim("N")}},
            external_data=False,  # one self-contained file, so its SHA-256 covers the weights
            optimize=True,
            verbose=False,
        )
        reference = module(example[:1]).numpy()
    _check_parity(out_path, example[:1].numpy(), reference)
    return {
        "image_size": image_size,
        "patch_size": patch_size,
        "width": width,
        "n_tokens": n_tokens,
        "select_layer": select_layer,
        "n_layers": n_layers,
        "drop_cls": drop_cls,
        "onnx_file": out_path.name,
        "sha256": file_sha256(out_path),
    }


def _check_parity(path: Path, pixels: np.ndarray, reference: np.ndarray) -> None:
    from ..vision_tower import VisionTower

    got = VisionTower(path, threads=1).encode(pixels)
    scale = float(np.abs(reference).max()) or 1.0
    err = float(np.abs(got - reference).max()) / scale
    if got.shape != reference.shape or not err <= PARITY_RTOL:
        raise ModelError(
            f"{path}: exported vision ONNX does not match torch: shape {got.shape} vs {reference.shape}, "
            f"max error {err:.3g} x max|ref| (limit {PARITY_RTOL})"
        )
