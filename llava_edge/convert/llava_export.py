"""Convert a LLaVA checkpoint directory to a model bundle: `model.gguf` + `vision.onnx` (see `bundle.py`).

Layouts read (the tensor names are found by probing, so each component may use either spelling):
- llava-hf `LlavaForConditionalGeneration` (v1.5) / `LlavaNextForConditionalGeneration` (v1.6): decoder
  `language_model.model.*` + `language_model.lm_head` (hub repos and transformers 5 `save_pretrained`) or
  `model.language_model.*` + `lm_head` (transformers 5 names in memory); tower `vision_tower.vision_model.*`
  (hub), `vision_tower.*` (transformers 5) or `model.vision_tower.*`; projector
  `[model.]multi_modal_projector.linear_1/2`; `[model.]image_newline`.
- original LLaVA `LlavaMistralForCausalLM` / `LlavaLlamaForCausalLM`: decoder `model.*` + `lm_head`,
  projector `model.mm_projector.0/2`, tower `model.vision_tower.vision_tower.vision_model.*` (v1.6 only: the
  v1.5 checkpoints leave the stock CLIP tower out; give its folder), `model.image_newline`, and `mm_*` config
  fields beside the text model's.

Tensor types: the decoder follows `quant_rules` exactly as the text converter does. The projector weights
are F32 in an f32 file and F16 in every other (they are ~1% of a 7B model, feed every image token, and
llama.cpp's mmproj files keep them at F16 too); biases and `v.image_newline` are F32.

Nothing is downloaded: every config and weight comes from the given folders.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import MODEL_FILE, VISION_FILE, LlavaMeta
from ..errors import ConvertError, LlavaEdgeError
from ..ggml_types import GGMLType
from ..gguf_file import GGUFValueType
from ..gguf_writer import GGUFWriter
from ..preprocess import CLIP_MEAN, CLIP_STD, PreprocessConfig
from ..quant_rules import FILE_TYPES
from .checkpoint import Checkpoint, load_json
from .gguf_export import decoder_metadata, decoder_tensors, write_tensors
from .vocab import sentencepiece_metadata

HF_ARCHITECTURES = {"LlavaForConditionalGeneration": "pad", "LlavaNextForConditionalGeneration": "anyres"}
ORIGINAL_ARCHITECTURES = {"LlavaMistralForCausalLM": "mistral", "LlavaLlamaForCausalLM": "llama"}
TEMPLATE_FOR_DECODER = {"mistral": "mistral_instruct", "llama": "llava_v1"}

# The tower every LLaVA-1.5/1.6 was trained with, for original configs that only name it.
CLIP_L_336 = "openai/clip-vit-large-patch14-336"
CLIP_L_336_CONFIG = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    image_size=336,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
)

_HF_DECODER = ("language_model.model.", "model.language_model.")
_HF_HEAD = ("language_model.lm_head.weight", "lm_head.weight")
_HF_PROJECTOR = (
    ("multi_modal_projector.linear_1.", "multi_modal_projector.linear_2."),
    ("model.multi_modal_projector.linear_1.", "model.multi_modal_projector.linear_2."),
)
_HF_TOWER = (
    "vision_tower.vision_model.",
    "vision_tower.",
    "model.vision_tower.vision_model.",
    "model.vision_tower.",
)
_ORIGINAL_TOWER = ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower.vision_tower.")
_TOWER_DIR = ("vision_model.", "")  # a CLIPModel / CLIPVisionModel folder
_NEWLINE = ("image_newline", "model.image_newline")
_PROBE = "embeddings.patch_embedding.weight"

# Original-config fields that belong to the text model (everything else there is LLaVA's).
_TEXT_FIELDS = (
    "vocab_size hidden_size intermediate_size num_attention_heads num_hidden_layers num_key_value_heads "
    "head_dim max_position_embeddings rms_norm_eps rope_theta rope_scaling rope_parameters sliding_window "
    "tie_word_embeddings bos_token_id eos_token_id hidden_act"
).split()


@dataclass
class LlavaPlan:
    """Everything `export_llava` needs, read from configs and tensor names only (no weights loaded)."""

    model_dir: Path
    layout: str  # "llava-hf" | "original"
    ckpt: Checkpoint
    text_config: dict
    decoder_meta: dict  # llama.* keys
    decoder_prefix: str
    head: str
    projector: dict[str, str]  # GGUF name -> checkpoint name
    newline: str | None  # checkpoint name of image_newline (anyres only)
    vision_config: Any  # transformers CLIPVisionConfig
    tower_ckpt: Checkpoint
    tower_prefix: str
    select_layer: int
    drop_cls: bool
    n_tower_layers: int  # encoder layers the features need
    image_token_id: int
    chat_template: str
    preprocess: PreprocessConfig
    name: str


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _first_present(ckpt: Checkpoint, candidates, suffix: str = "") -> str | None:
    return next((c for c in candidates if f"{c}{suffix}" in ckpt), None)


def _as_int(value: Any, where: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConvertError(f"{where}: {field} must be an integer, found {value!r}")
    return value


def _clip_vision_config(cfg: dict, where: str):
    """A transformers CLIPVisionConfig from a tower config dict (a CLIPModel's `vision_config` inside)."""
    from transformers import CLIPVisionConfig

    if isinstance(cfg.get("vision_config"), dict):
        cfg = cfg["vision_config"]
    model_type = cfg.get("model_type", "clip_vision_model")
    if model_type not in ("clip_vision_model", "clip"):
        raise ConvertError(f"{where}: vision tower model_type {model_type!r}: only CLIP towers are supported")
    try:
        return CLIPVisionConfig.from_dict({k: v for k, v in cfg.items() if k != "model_type"})
    except Exception as e:  # transformers validates field types and values
        raise ConvertError(f"{where}: not a usable CLIP vision config ({e})") from None


def _hf_config(cfg: dict, where: str):
    from transformers import LlavaConfig, LlavaNextConfig

    arch = cfg["architectures"][0]
    cls = LlavaConfig if arch == "LlavaForConditionalGeneration" else LlavaNextConfig
    try:
        return cls.from_dict(cfg)  # fills the defaults transformers would use for absent fields
    except Exception as e:
        raise ConvertError(f"{where}: transformers cannot read it as {cls.__name__} ({e})") from None


def _text_config(cfg: dict, decoder: str, where: str) -> dict:
    """The decoder's config dict with transformers' defaults filled in."""
    from transformers import LlamaConfig, MistralConfig

    cls = MistralConfig if decoder == "mistral" else LlamaConfig
    try:
        return cls.from_dict({k: cfg[k] for k in _TEXT_FIELDS if k in cfg}).to_dict()
    except Exception as e:
        raise ConvertError(f"{where}: cannot read the text model fields as {cls.__name__} ({e})") from None


def _pinpoints(value: Any, where: str, field: str) -> list[tuple[int, int]]:
    ok = isinstance(value, (list, tuple)) and value
    ok = ok and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value)
    ok = ok and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for p in value for x in p)
    if not ok:
        raise ConvertError(
            f"{where}: {field} must be a list of [a, b] pairs of positive ints, found {value!r}"
        )
    return [(int(a), int(b)) for a, b in value]


def _size_field(value: Any, key: str) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if key in value:
            return value[key]
        if value.get("height") == value.get("width"):
            return value.get("height")
        return -1  # not square: refused by the caller
    return None


def _image_processor_config(folders: list[Path]) -> tuple[dict, Path | None]:
    """The image processor's settings: `preprocessor_config.json` (transformers 4 and the hub), or the
    `image_processor` entry of `processor_config.json` (transformers 5 `save_pretrained`)."""
    for folder in folders:
        if (folder / "preprocessor_config.json").is_file():
            return load_json(folder / "preprocessor_config.json"), folder / "preprocessor_config.json"
        nested = load_json(folder / "processor_config.json").get("image_processor")
        if isinstance(nested, dict):
            return nested, folder / "processor_config.json"
    return {}, None


def preprocess_config(
    folders: list[Path], image_size: int, patch_size: int, aspect_mode: str, pinpoints: list[tuple[int, int]]
) -> PreprocessConfig:
    """PreprocessConfig from the first image processor config in `folders` (CLIP's defaults if none).

    The tower's input size is fixed by the ONNX graph, so the processor's crop and shortest edge must equal
    it; grid pinpoints (height, width) are the model's and must agree with the processor's if it has them.
    """
    proc, path = _image_processor_config(folders)
    where = str(path) if path else "preprocessing"
    for field, key in (("crop_size", "height"), ("size", "shortest_edge")):
        size = _size_field(proc.get(field), key)
        if size is not None and size != image_size:
            raise ConvertError(
                f"{where}: {field} is {proc[field]!r} but the vision tower takes {image_size} px images "
                "(a square crop equal to the shortest edge is required)"
            )
    resample = proc.get("resample", 3)
    if resample != 3:
        raise ConvertError(f"{where}: resample {resample!r}: only bicubic (3) is supported")
    if aspect_mode == "anyres" and "image_grid_pinpoints" in proc:
        theirs = _pinpoints(proc["image_grid_pinpoints"], where, "image_grid_pinpoints")
        if theirs != pinpoints:
            raise ConvertError(
                f"{where}: image_grid_pinpoints {theirs} differ from the model config's {pinpoints}"
            )
    try:
        return PreprocessConfig(
            image_size=image_size,
            patch_size=patch_size,
            mean=tuple(float(x) for x in proc.get("image_mean", CLIP_MEAN)),
            std=tuple(float(x) for x in proc.get("image_std", CLIP_STD)),
            aspect_mode=aspect_mode,
            grid_pinpoints=tuple(pinpoints) if aspect_mode == "anyres" else (),
        )
    except (ValueError, TypeError) as e:
        raise ConvertError(f"{where}: {e}") from None


def plan_llava(
    model_dir: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    vision_tower_dir: str | os.PathLike | None = None,
) -> LlavaPlan:
    """Read and check a LLaVA checkpoint's configs and tensor names; every refusal happens here, before
    anything is exported."""
    model_dir = Path(model_dir)
    ckpt = Checkpoint(model_dir, trust_pickle=trust_pickle)
    cfg = ckpt.config
    where = f"{model_dir}/config.json"
    archs = cfg.get("architectures") or ["?"]
    arch = archs[0]
    if arch in HF_ARCHITECTURES:
        return _plan_hf(model_dir, ckpt, cfg, where, HF_ARCHITECTURES[arch])
    if arch in ORIGINAL_ARCHITECTURES:
        return _plan_original(model_dir, ckpt, cfg, where, arch, trust_pickle, vision_tower_dir)
    supported = ", ".join([*HF_ARCHITECTURES, *ORIGINAL_ARCHITECTURES])
    raise ConvertError(f"{where}: architectures {archs!r}: not a supported LLaVA model ({supported})")


def _plan_hf(model_dir: Path, ckpt: Checkpoint, cfg: dict, where: str, aspect_mode: str) -> LlavaPlan:
    config = _hf_config(cfg, where)
    text = config.text_config.to_dict()
    decoder = text.get("model_type")
    if decoder not in TEMPLATE_FOR_DECODER:
        raise ConvertError(f"{where}: text_config.model_type {decoder!r}: only mistral and llama decoders")
    vision = config.vision_config
    if getattr(vision, "model_type", None) != "clip_vision_model":
        raise ConvertError(
            f"{where}: vision_config.model_type {getattr(vision, 'model_type', None)!r}: only CLIP towers"
        )
    layer = config.vision_feature_layer
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise ConvertError(f"{where}: vision_feature_layer {layer!r}: only a single layer is supported")
    strategy = config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise ConvertError(f"{where}: vision_feature_select_strategy {strategy!r}: expected default or full")
    if getattr(config, "projector_hidden_act", "gelu") != "gelu":
        raise ConvertError(
            f"{where}: projector_hidden_act {config.projector_hidden_act!r}: only exact gelu (mlp2x_gelu)"
        )
    if getattr(config, "multimodal_projector_bias", True) is not True:
        raise ConvertError(f"{where}: multimodal_projector_bias is false: the projector must have biases")
    image_token_id = _as_int(config.image_token_id, where, "image_token_index")

    decoder_prefix = _first_present(ckpt, _HF_DECODER, "embed_tokens.weight") or _HF_DECODER[0]
    head = _first_present(ckpt, _HF_HEAD) or _HF_HEAD[0 if decoder_prefix == _HF_DECODER[0] else 1]
    pinpoints = []
    if aspect_mode == "anyres":
        pinpoints = _pinpoints(config.image_grid_pinpoints, where, "image_grid_pinpoints")
    return _finish_plan(
        model_dir,
        "llava-hf",
        ckpt,
        where,
        text=text,
        decoder=decoder,
        decoder_prefix=decoder_prefix,
        head=head,
        projector_candidates=_HF_PROJECTOR,
        vision=vision,
        tower_ckpt=ckpt,
        tower_prefix=_first_present(ckpt, _HF_TOWER, _PROBE) or _HF_TOWER[0],
        select_layer=layer,
        drop_cls=strategy == "default",
        strategy_field=f"vision_feature_select_strategy {strategy!r}",
        image_token_id=image_token_id,
        aspect_mode=aspect_mode,
        pinpoints=pinpoints,
        preprocess_folders=[model_dir],
    )


def _plan_original(
    model_dir: Path,
    ckpt: Checkpoint,
    cfg: dict,
    where: str,
    arch: str,
    trust_pickle: bool,
    vision_tower_dir: str | os.PathLike | None,
) -> LlavaPlan:
    decoder = ORIGINAL_ARCHITECTURES[arch]
    text = _text_config(cfg, decoder, where)
    projector_type = cfg.get("mm_projector_type", "linear")  # LLaVA's own default
    if projector_type != "mlp2x_gelu":
        raise ConvertError(f"{where}: mm_projector_type {projector_type!r}: only mlp2x_gelu is supported")
    if cfg.get("mm_use_im_start_end"):
        raise ConvertError(f"{where}: mm_use_im_start_end is true: image start/end tokens are not supported")
    aspect = cfg.get("image_aspect_ratio")
    merge = cfg.get("mm_patch_merge_type", "flat")
    if aspect == "pad":
        if merge != "flat":
            raise ConvertError(
                f"{where}: mm_patch_merge_type {merge!r} with image_aspect_ratio 'pad': expected flat"
            )
        pinpoints = []
    elif aspect == "anyres":
        if merge != "spatial_unpad":
            raise ConvertError(
                f"{where}: mm_patch_merge_type {merge!r} with anyres: only spatial_unpad is supported"
            )
        # LLaVA reads its pinpoints as (width, height) (llava/mm_utils.py); ours are (height, width).
        pinpoints = [
            (h, w) for w, h in _pinpoints(cfg.get("image_grid_pinpoints"), where, "image_grid_pinpoints")
        ]
    else:
        raise ConvertError(
            f"{where}: image_aspect_ratio {aspect!r}: expected 'pad' (v1.5) or 'anyres' (v1.6)"
        )
    if "mm_vision_select_layer" not in cfg:
        raise ConvertError(f"{where}: no mm_vision_select_layer (which tower layer feeds the projector)")
    layer = _as_int(cfg["mm_vision_select_layer"], where, "mm_vision_select_layer")
    feature = cfg.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise ConvertError(f"{where}: mm_vision_select_feature {feature!r}: expected patch or cls_patch")

    # The tower: weights from the checkpoint when it has them (v1.6 finetuned them), else from a CLIP folder.
    named = cfg.get("mm_vision_tower") or cfg.get("vision_tower")
    tower_dir = Path(vision_tower_dir) if vision_tower_dir is not None else None
    if tower_dir is None and isinstance(named, str) and Path(named).is_dir():
        tower_dir = Path(named)
    if tower_dir is not None and not (tower_dir / "config.json").is_file():
        raise ConvertError(f"{tower_dir}: no config.json: not a CLIP vision tower folder")
    if isinstance(cfg.get("vision_config"), dict):
        vision = _clip_vision_config(cfg["vision_config"], f"{where}: vision_config")
    elif tower_dir is not None:
        vision = _clip_vision_config(load_json(tower_dir / "config.json"), f"{tower_dir}/config.json")
    elif named == CLIP_L_336:
        vision = _clip_vision_config(CLIP_L_336_CONFIG, CLIP_L_336)
    else:
        raise ConvertError(
            f"{where}: mm_vision_tower {named!r} is not a local folder and not {CLIP_L_336}: pass "
            "vision_tower_dir (--vision-tower) pointing at a local copy of it"
        )
    tower_prefix = _first_present(ckpt, _ORIGINAL_TOWER, _PROBE)
    tower_ckpt = ckpt
    if tower_prefix is None:
        if tower_dir is None:
            raise ConvertError(
                f"{model_dir}: the checkpoint carries no vision tower weights ({_ORIGINAL_TOWER[0]}*), as "
                f"LLaVA-1.5 checkpoints don't: pass vision_tower_dir (--vision-tower) pointing at a local "
                f"copy of {named or 'the CLIP tower'}"
            )
        tower_ckpt = Checkpoint(tower_dir, trust_pickle=trust_pickle)
        tower_prefix = _first_present(tower_ckpt, _TOWER_DIR, _PROBE)
        if tower_prefix is None:
            raise ConvertError(f"{tower_dir}: no CLIP tower tensors (vision_model.{_PROBE} not found)")
    return _finish_plan(
        model_dir,
        "original",
        ckpt,
        where,
        text=text,
        decoder=decoder,
        decoder_prefix="model.",
        head="lm_head.weight",
        projector_candidates=(("model.mm_projector.0.", "model.mm_projector.2."),),
        vision=vision,
        tower_ckpt=tower_ckpt,
        tower_prefix=tower_prefix,
        select_layer=layer,
        drop_cls=feature == "patch",
        strategy_field=f"mm_vision_select_feature {feature!r}",
        image_token_id=-1,
        aspect_mode=aspect,
        pinpoints=pinpoints,
        preprocess_folders=[model_dir] + ([tower_dir] if tower_dir is not None else []),
    )


def _finish_plan(
    model_dir: Path,
    layout: str,
    ckpt: Checkpoint,
    where: str,
    *,
    text: dict,
    decoder: str,
    decoder_prefix: str,
    head: str,
    projector_candidates,
    vision,
    tower_ckpt: Checkpoint,
    tower_prefix: str,
    select_layer: int,
    drop_cls: bool,
    strategy_field: str,
    image_token_id: int,
    aspect_mode: str,
    pinpoints: list[tuple[int, int]],
    preprocess_folders: list[Path],
) -> LlavaPlan:
    """Checks shared by both layouts: decoder, projector, newline, select layer, tokenizer id."""
    meta = decoder_metadata(text, where)
    n_embd, vocab = meta["llama.embedding_length"], meta["llama.vocab_size"]
    if head not in ckpt and not text.get("tie_word_embeddings"):
        raise ConvertError(f"{model_dir}: tensor {head} (the output head) is missing from the checkpoint")
    if f"{decoder_prefix}embed_tokens.weight" not in ckpt:
        raise ConvertError(
            f"{model_dir}: tensor {decoder_prefix}embed_tokens.weight is missing: no decoder found"
        )

    # Projector: the candidate spelling with most tensors present; then every tensor and shape checked.
    width = int(vision.hidden_size)
    first, second = max(
        projector_candidates, key=lambda c: sum(f"{p}{s}" in ckpt for p in c for s in ("weight", "bias"))
    )
    projector = {
        "mm.0.weight": f"{first}weight",
        "mm.0.bias": f"{first}bias",
        "mm.2.weight": f"{second}weight",
        "mm.2.bias": f"{second}bias",
    }
    expected = {
        "mm.0.weight": (n_embd, width),
        "mm.0.bias": (n_embd,),
        "mm.2.weight": (n_embd, n_embd),
        "mm.2.bias": (n_embd,),
    }
    for gguf_name, name in projector.items():
        if name not in ckpt:
            raise ConvertError(f"{model_dir}: projector tensor {name} is missing from the checkpoint")
        if ckpt.shape(name) != expected[gguf_name]:
            raise ConvertError(
                f"{model_dir}: projector tensor {name} has shape {list(ckpt.shape(name))}, expected "
                f"{list(expected[gguf_name])} (vision width {width} -> text hidden size {n_embd})"
            )
    newline = None
    if aspect_mode == "anyres":
        newline = _first_present(ckpt, _NEWLINE if layout == "llava-hf" else ("model.image_newline",))
        if newline is None:
            raise ConvertError(f"{model_dir}: tensor image_newline (anyres models need it) is missing")
        if ckpt.shape(newline) != (n_embd,):
            raise ConvertError(
                f"{model_dir}: tensor {newline} has shape {list(ckpt.shape(newline))}, expected [{n_embd}]"
            )
        if not drop_cls:
            raise ConvertError(f"{where}: {strategy_field} keeps CLS, which anyres tiling does not support")

    n_total = int(vision.num_hidden_layers)
    n_layers = select_layer if select_layer >= 0 else n_total + 1 + select_layer
    if not 0 < n_layers <= n_total:
        field = "vision_feature_layer" if layout == "llava-hf" else "mm_vision_select_layer"
        raise ConvertError(
            f"{where}: {field} {select_layer} is out of range for a {n_total}-layer tower "
            f"(valid: {-n_total}..{n_total}, 0 excluded)"
        )
    if image_token_id != -1 and not 0 <= image_token_id < vocab:
        raise ConvertError(
            f"{where}: image_token_index {image_token_id} is outside the vocabulary (0..{vocab - 1})"
        )

    preprocess = preprocess_config(
        preprocess_folders, int(vision.image_size), int(vision.patch_size), aspect_mode, pinpoints
    )
    return LlavaPlan(
        model_dir=model_dir,
        layout=layout,
        ckpt=ckpt,
        text_config=text,
        decoder_meta=meta,
        decoder_prefix=decoder_prefix,
        head=head,
        projector=projector,
        newline=newline,
        vision_config=vision,
        tower_ckpt=tower_ckpt,
        tower_prefix=tower_prefix,
        select_layer=select_layer,
        drop_cls=drop_cls,
        n_tower_layers=n_layers,
        image_token_id=image_token_id,
        chat_template=TEMPLATE_FOR_DECODER[decoder],
        preprocess=preprocess,
        name=str(ckpt.config.get("_name_or_path") or model_dir.name),
    )


def build_tower(plan: LlavaPlan):
    """A float32 CLIPVisionModel holding the embeddings, pre-layernorm and the encoder layers the selected
    features need (later layers are never built or read)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig.from_dict(
        {**plan.vision_config.to_dict(), "num_hidden_layers": plan.n_tower_layers}
    )
    config._attn_implementation = "eager"
    tower = CLIPVisionModel(config).float().eval()
    wanted = tower.state_dict()
    state = {}
    for name in wanted:
        source = f"{plan.tower_prefix}{name}"
        if source in plan.tower_ckpt:
            state[name] = plan.tower_ckpt.get(source).float()
            if tuple(state[name].shape) != tuple(wanted[name].shape):
                raise ConvertError(
                    f"{plan.tower_ckpt.dir}: tensor {source} has shape {list(state[name].shape)}, the tower "
                    f"config says {list(wanted[name].shape)}"
                )
        elif not name.startswith("post_layernorm."):  # LLaVA never applies the post-layernorm
            raise ConvertError(f"{plan.tower_ckpt.dir}: vision tower tensor {source} is missing")
    with torch.no_grad():
        tower.load_state_dict(state, strict=False)
    return tower


def _projector_types(file_type: str, plan: LlavaPlan) -> dict[str, GGMLType]:
    matrix = GGMLType.F32 if file_type == "f32" else GGMLType.F16
    types = {
        "mm.0.weight": matrix,
        "mm.2.weight": matrix,
        "mm.0.bias": GGMLType.F32,
        "mm.2.bias": GGMLType.F32,
    }
    if plan.newline is not None:
        types["v.image_newline"] = GGMLType.F32
    return types


VISION_PRECISIONS = ("fp32", "int8")
INT8_VISION_FILE = "vision-int8.onnx"


def _int8_tower(fp32: Path, dst: Path, facts: dict, progress: bool) -> dict:
    """Replace the fp32 tower by its int8 version; say how close their features are on a random image."""
    import numpy as np

    from ..vision_int8 import feature_cosine, quantize_tower_int8
    from ..vision_tower import VisionTower, file_sha256

    quantize_tower_int8(fp32, dst)
    s = facts["image_size"]
    pixels = np.random.default_rng(0).standard_normal((1, 3, s, s)).astype(np.float32)
    cos = feature_cosine(
        VisionTower(fp32, threads=1).encode(pixels), VisionTower(dst, threads=1).encode(pixels)
    )
    _say(
        progress,
        f"int8 vision tower -> {dst} (feature cosine to fp32 on a random image: min {cos['min']:.5f}, "
        f"mean {cos['mean']:.5f})",
    )
    fp32.unlink()
    return {**facts, "onnx_file": dst.name, "sha256": file_sha256(dst), "int8_cosine": cos}


def export_llava(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    file_type: str = "f16",
    *,
    trust_pickle: bool = False,
    vision_tower_dir: str | os.PathLike | None = None,
    vision_precision: str = "fp32",
    progress: bool = True,
) -> Path:
    """LLaVA checkpoint folder -> bundle folder `out_dir` with `model.gguf` and `vision.onnx`; returns
    out_dir. The ONNX is written (and checked against torch) first, so the GGUF can record its SHA-256.
    `vision_precision` "int8": the bundle carries `vision-int8.onnx` instead (see llava_edge.vision_int8)."""
    from .vision_export import export_vision_onnx

    out_dir = Path(out_dir)
    if file_type not in FILE_TYPES:
        raise ConvertError(f"unknown --type {file_type!r}; choose one of {', '.join(FILE_TYPES)}")
    if vision_precision not in VISION_PRECISIONS:
        raise ConvertError(
            f"unknown vision precision {vision_precision!r}; choose one of {', '.join(VISION_PRECISIONS)}"
        )
    plan = plan_llava(model_dir, trust_pickle=trust_pickle, vision_tower_dir=vision_tower_dir)
    meta = plan.decoder_meta
    tokenizer = sentencepiece_metadata(plan.model_dir, meta["llama.vocab_size"])
    tokens = tokenizer["tokenizer.ggml.tokens"]
    if plan.image_token_id >= 0 and tokens[plan.image_token_id].startswith("[PAD"):
        raise ConvertError(
            f"{plan.model_dir}: image token id {plan.image_token_id} is not a token of the tokenizer "
            "(expected <image> in added_tokens.json or tokenizer.json)"
        )
    ckpt = plan.ckpt
    tensors = decoder_tensors(ckpt, meta, plan.decoder_prefix, plan.head)  # refuses before any export
    names = dict(plan.projector)
    if plan.newline is not None:
        names["v.image_newline"] = plan.newline
    for gguf_name, name in names.items():
        tensors.append((gguf_name, ckpt.shape(name), lambda name=name: ckpt.get(name).float().numpy()))
    _say(
        progress,
        f"{plan.model_dir}: {plan.layout} layout, {plan.preprocess.aspect_mode}, {plan.chat_template}",
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, partial = out_dir / VISION_FILE, out_dir / f".{VISION_FILE}.partial"
    _say(progress, f"vision tower: {plan.n_tower_layers} encoder layers -> {onnx_path}")
    try:
        facts = export_vision_onnx(
            build_tower(plan), partial, select_layer=plan.n_tower_layers, drop_cls=plan.drop_cls
        )
    except LlavaEdgeError:
        partial.unlink(missing_ok=True)
        raise
    except Exception as e:  # torch.onnx raises many kinds
        partial.unlink(missing_ok=True)
        raise ConvertError(f"{plan.model_dir}: exporting the vision tower to ONNX failed: {e}") from e
    os.replace(partial, onnx_path)  # a complete file or none: the GGUF below names its hash
    facts = {**facts, "onnx_file": VISION_FILE}
    if vision_precision == "int8":
        facts = _int8_tower(onnx_path, out_dir / INT8_VISION_FILE, facts, progress)

    llava = LlavaMeta(
        projector_type="mlp2x_gelu",
        vision_onnx=facts["onnx_file"],
        vision_onnx_sha256=facts["sha256"],
        vision_width=facts["width"],
        vision_tokens=facts["n_tokens"],
        select_layer=plan.select_layer,
        image_token_id=plan.image_token_id,
        chat_template=plan.chat_template,
    )
    LlavaMeta.from_gguf_metadata(llava.to_gguf_metadata())  # the runtime's own checks, before writing
    value_types = {
        "llava.vision_width": GGUFValueType.UINT32,
        "llava.vision_tokens": GGUFValueType.UINT32,
        "llava.select_layer": GGUFValueType.INT32,
        "llava.image_token_id": GGUFValueType.INT32,
    }

    gguf_path = out_dir / MODEL_FILE
    _say(progress, f"decoder + projector -> {gguf_path} ({file_type})")
    with GGUFWriter(gguf_path) as w:
        w.add("general.architecture", "llama")
        w.add("general.name", plan.name)
        w.add("general.file_type", FILE_TYPES[file_type][0])
        w.add("general.quantization_version", 2)
        for key, value in meta.items():
            w.add(key, value)
        for key, value in tokenizer.items():
            w.add(key, value)
        for key, value in llava.to_gguf_metadata().items():
            w.add(key, value, value_types.get(key))
        for key, value in plan.preprocess.to_gguf_metadata().items():
            w.add(key, value)
        write_tensors(
            w,
            tensors,
            file_type,
            meta["llama.block_count"],
            progress,
            types=_projector_types(file_type, plan),
        )
    return out_dir
