"""The LLaVA model bundle: a directory with `model.gguf` (decoder + projector + tokenizer + every fact
needed to run) and `vision.onnx` (the CLIP tower up to the selected layer, CLS removed).

Our own `llava.*` GGUF keys (the decoder keeps llama.cpp's `llama.*` keys and tensor names):

- llava.projector_type (str): "mlp2x_gelu": mm.0 (Linear) -> exact GELU -> mm.2 (Linear).
- llava.vision_onnx (str): file name of the tower, beside the GGUF.
- llava.vision_onnx_sha256 (str): its SHA-256 in hex; a bundle whose ONNX does not match is refused.
- llava.vision_width (u32): width of the tower's features (the projector's input).
- llava.vision_tokens (u32): feature tokens per tile, CLS removed (576 for CLIP-L/14 at 336).
- llava.select_layer (i32): the tower layer the features come from (informational: the ONNX applies it).
- llava.image_token_id (i32): llava-hf models: the `<image>` token id in the vocabulary. -1: the original
  LLaVA way, the prompt is split at "<image>" and each side tokenized separately.
- llava.chat_template (str): built-in template name, "mistral_instruct" or "llava_v1".
- llava.image_size, llava.patch_size, llava.image_mean, llava.image_std, llava.aspect_mode,
  llava.grid_pinpoints: preprocessing (see preprocess.PreprocessConfig).

Tensors besides the decoder's: `mm.0.weight` [vision_width -> n_embd], `mm.0.bias`, `mm.2.weight`
[n_embd -> n_embd], `mm.2.bias`, and for anyres models `v.image_newline` [n_embd].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import GGUFError

MODEL_FILE = "model.gguf"
VISION_FILE = "vision.onnx"
TEMPLATES = ("mistral_instruct", "llava_v1")


@dataclass(frozen=True)
class LlavaMeta:
    projector_type: str
    vision_onnx: str
    vision_onnx_sha256: str
    vision_width: int
    vision_tokens: int
    select_layer: int
    image_token_id: int  # -1: split the prompt at "<image>"
    chat_template: str

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], path=None) -> LlavaMeta:
        def get(key: str, kind: type):
            value = meta.get(key)
            if value is None:
                raise GGUFError(path, key, "missing: this GGUF is not a llava-edge LLaVA bundle model")
            if kind is int and (isinstance(value, bool) or not hasattr(value, "__index__")):
                raise GGUFError(path, key, f"expected an integer, found {value!r}")
            if kind is str and not isinstance(value, str):
                raise GGUFError(path, key, f"expected a string, found {value!r}")
            return kind(value)

        m = cls(
            projector_type=get("llava.projector_type", str),
            vision_onnx=get("llava.vision_onnx", str),
            vision_onnx_sha256=get("llava.vision_onnx_sha256", str),
            vision_width=get("llava.vision_width", int),
            vision_tokens=get("llava.vision_tokens", int),
            select_layer=get("llava.select_layer", int),
            image_token_id=get("llava.image_token_id", int),
            chat_template=get("llava.chat_template", str),
        )
        if m.projector_type != "mlp2x_gelu":
            raise GGUFError(
                path, "llava.projector_type", f"only 'mlp2x_gelu' is supported, found {m.projector_type!r}"
            )
        if m.chat_template not in TEMPLATES:
            raise GGUFError(
                path, "llava.chat_template", f"expected one of {TEMPLATES}, found {m.chat_template!r}"
            )
        if "/" in m.vision_onnx or "\\" in m.vision_onnx or m.vision_onnx in ("", ".", ".."):
            raise GGUFError(
                path,
                "llava.vision_onnx",
                f"must be a plain file name beside the GGUF, found {m.vision_onnx!r}",
            )
        if m.vision_width <= 0 or m.vision_tokens <= 0:
            raise GGUFError(path, "llava.vision_width", "vision width and tokens must be positive")
        return m

    def to_gguf_metadata(self) -> dict[str, Any]:
        return {f"llava.{k}": v for k, v in self.__dict__.items()}
