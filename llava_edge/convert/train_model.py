"""The model side of training: open a llava-hf checkpoint (or create a new small LLaVA from a JSON config),
choose what trains, add LoRA, and save the result as a checkpoint folder `export_llava` can read.

A new-model config (`--config`) is JSON with transformers' own field names:

    {
      "vision_config": {"image_size": 112, "patch_size": 8, "hidden_size": 192, "intermediate_size": 768,
                        "num_hidden_layers": 5, "num_attention_heads": 3},
      "text_config": {"model_type": "mistral", "hidden_size": 256, "intermediate_size": 768,
                      "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                      "max_position_embeddings": 1024, "sliding_window": null},
      "vision_feature_layer": -1,
      "tokenizer": "path/to/tokenizer.model",
      "tokenizer_vocab_size": 1024,
      "vision_tower": "path/to/a/CLIPVisionModel/folder"
    }

`vision_config` is a CLIPVisionConfig (defaults: quick_gelu, layer_norm_eps 1e-5), `text_config` a
MistralConfig or LlamaConfig (defaults: rope_theta 10000, rms_norm_eps 1e-5, untied embeddings, no window).
The tokenizer is a SentencePiece BPE model: `tokenizer` names one (e.g. Mistral's), or, without it, one of
`tokenizer_vocab_size` pieces (default 1024) is trained on the training text (identity normalisation, byte
fallback, digits split: what the runtime tokenizer reproduces). `<image>` and `<pad>` are added after its
pieces, and the vocabulary is padded to a multiple of 64, as llava-hf does. `vision_feature_layer`
defaults to -1 (the last layer: a new tower computes nothing it does not use; LLaVA's CLIP towers use -2).
`vision_tower` (optional) starts the tower from a pretrained CLIP folder; its config then replaces
`vision_config`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConvertError
from ..preprocess import PreprocessConfig
from ..tokenizer import Tokenizer
from .checkpoint import load_json
from .llava_export import TEMPLATE_FOR_DECODER, preprocess_config
from .vocab import sentencepiece_metadata

# Files of a checkpoint folder that are not weights or config: copied next to a trained model.
SIDE_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
)
CONFIG_COPY = "llava_edge_train_config.json"  # the new-model config, kept beside the initial weights
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"

_VISION_DEFAULTS = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=32)
_TEXT_DEFAULTS = dict(
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    max_position_embeddings=1024,
)
_CONFIG_KEYS = {
    "vision_config",
    "text_config",
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "tokenizer",
    "tokenizer_vocab_size",
    "vision_tower",
}


# -- opening a checkpoint ------------------------------------------------------------------------------


def load_llava(model_dir: str | os.PathLike):
    """The transformers LlavaForConditionalGeneration of a llava-hf checkpoint folder, float32."""
    import torch
    from transformers import LlavaForConditionalGeneration

    model_dir = Path(model_dir)
    cfg = load_json(model_dir / "config.json")
    if not cfg:
        raise ConvertError(f"{model_dir}: no config.json: not a checkpoint folder")
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch != "LlavaForConditionalGeneration":
        raise ConvertError(
            f"{model_dir}/config.json: architectures {arch!r}: training supports llava-hf "
            "LlavaForConditionalGeneration checkpoints (convert others with transformers' scripts first)"
        )
    text_type = cfg.get("text_config", {}).get("model_type")
    if text_type not in TEMPLATE_FOR_DECODER:
        raise ConvertError(
            f"{model_dir}/config.json: text_config.model_type {text_type!r}: expected mistral or llama"
        )
    try:
        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    except Exception as e:  # transformers raises many kinds on bad folders
        raise ConvertError(f"{model_dir}: transformers cannot load it ({e})") from e
    return model


def runtime_tokenizer(model_dir: Path, vocab_size: int) -> Tokenizer:
    """The tokenizer the exported bundle will carry (same metadata `export_llava` writes)."""
    return Tokenizer.from_gguf_metadata(sentencepiece_metadata(model_dir, vocab_size), path=str(model_dir))


def image_token_count(config) -> int:
    """Feature rows per image: one per patch, plus CLS when the select strategy keeps it."""
    v = config.vision_config
    n = (v.image_size // v.patch_size) ** 2
    return n + (1 if config.vision_feature_select_strategy == "full" else 0)


def model_preprocess_config(model_dir: Path, config) -> PreprocessConfig:
    v = config.vision_config
    return preprocess_config([model_dir], int(v.image_size), int(v.patch_size), "pad", [])


def chat_template_name(config) -> str:
    """The template `export_llava` writes into the bundle for this decoder: training must use the same."""
    return TEMPLATE_FOR_DECODER[config.text_config.model_type]


def copy_side_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


# -- a new model from a config -------------------------------------------------------------------------


def read_new_model_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    cfg = load_json(path)
    if not isinstance(cfg, dict) or not cfg:
        raise ConvertError(f"{path}: expected a JSON object describing the model (see --help)")
    unknown = set(cfg) - _CONFIG_KEYS
    if unknown:
        raise ConvertError(f"{path}: unknown keys {sorted(unknown)}; expected some of {sorted(_CONFIG_KEYS)}")
    for key in ("vision_config", "text_config"):
        if not isinstance(cfg.get(key, {}), dict):
            raise ConvertError(f"{path}: {key} must be an object of transformers config fields")
    if "text_config" not in cfg:
        raise ConvertError(f"{path}: text_config is required (the decoder's size)")
    if "vision_config" not in cfg and "vision_tower" not in cfg:
        raise ConvertError(f"{path}: give vision_config (a new tower) or vision_tower (a pretrained one)")
    return cfg


def train_sentencepiece(lines: Iterable[str], vocab_size: int) -> bytes:
    """A SentencePiece BPE model trained on `lines`, in the form the runtime tokenizer reproduces."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _hf_tokenizer(out: Path):
    """transformers' tokenizer for out/tokenizer.model with `<image>` and `<pad>` added after its pieces
    (llava-hf's convention)."""
    from tokenizers import pre_tokenizers
    from transformers import AddedToken, LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(out, add_bos_token=True, add_eos_token=False)
    # every stretch of text between special tokens gets its own dummy prefix, as the runtime and llama.cpp
    # tokenize (transformers' "legacy" behaviour, which its conversion of a new SentencePiece model lacks)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="always", split=False
    )
    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<image>", "<pad>")], special_tokens=True
    )
    tok.pad_token = "<pad>"
    return tok


def _write_processor(out: Path, config, tokenizer) -> None:
    """transformers' LlavaProcessor for the new model (CLIP preprocessing at the tower's size, `<image>`
    expanded to one token per feature row) with its tokenizer, so that transformers users tokenize prompts as
    training does."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    s = int(config.vision_config.image_size)
    image_processor = CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=int(config.vision_config.patch_size),
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLS; the "default" strategy drops it again
    ).save_pretrained(out)


def create_model(cfg: dict, out: Path, text_lines: Iterable[str], seed: int, where: str = "--config") -> Path:
    """Write a new randomly initialised LLaVA checkpoint (weights, config, tokenizer, preprocessor) to
    `out` and return it. `text_lines` feed the tokenizer training when the config names no tokenizer."""
    import torch
    from sentencepiece import sentencepiece_model_pb2
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        MistralConfig,
    )

    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("tokenizer"):
        src = Path(cfg["tokenizer"])
        if not src.is_file():
            raise ConvertError(f"{where}: tokenizer {str(src)!r} is not a file")
        spm_bytes = src.read_bytes()
    else:
        spm_bytes = train_sentencepiece(text_lines, int(cfg.get("tokenizer_vocab_size", 1024)))
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(spm_bytes)
    except Exception as e:
        raise ConvertError(f"{where}: tokenizer is not a SentencePiece model ({e})") from None
    (out / "tokenizer.model").write_bytes(spm_bytes)
    tokenizer = _hf_tokenizer(out)
    image_id, pad_id = (int(i) for i in tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]))
    n_pieces = len(proto.pieces)
    if (image_id, pad_id) != (n_pieces, n_pieces + 1):
        raise ConvertError(
            f"{where}: <image>/<pad> got ids {image_id}/{pad_id}, expected {n_pieces}/{n_pieces + 1}"
        )

    text = dict(cfg["text_config"])
    model_type = text.pop("model_type", "mistral")
    if model_type not in TEMPLATE_FOR_DECODER:
        raise ConvertError(f"{where}: text_config.model_type {model_type!r}: expected mistral or llama")
    spec = proto.trainer_spec
    text = {**_TEXT_DEFAULTS, "bos_token_id": spec.bos_id, "eos_token_id": spec.eos_id, **text}
    text.setdefault("vocab_size", -(-(n_pieces + 2) // 64) * 64)
    if text["vocab_size"] < n_pieces + 2:
        raise ConvertError(f"{where}: text_config.vocab_size {text['vocab_size']} < {n_pieces + 2} tokens")
    tower = None
    try:
        if model_type == "mistral":
            text.setdefault("sliding_window", None)
            text_config = MistralConfig(**text)
        else:
            text_config = LlamaConfig(**text)
        if cfg.get("vision_tower"):
            tower = CLIPVisionModel.from_pretrained(cfg["vision_tower"], dtype=torch.float32)
            vision_config = tower.config
        else:
            vision_config = CLIPVisionConfig(**{**_VISION_DEFAULTS, **cfg["vision_config"]})
        config = LlavaConfig(
            vision_config=vision_config,
            text_config=text_config,
            image_token_id=image_id,
            vision_feature_layer=cfg.get("vision_feature_layer", -1),
            vision_feature_select_strategy=cfg.get("vision_feature_select_strategy", "default"),
            projector_hidden_act="gelu",
            tie_word_embeddings=False,
            pad_token_id=pad_id,
        )
    except (TypeError, ValueError, OSError) as e:
        raise ConvertError(f"{where}: not a usable model description ({e})") from None
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).float()
    if tower is not None:
        model.model.vision_tower.load_state_dict(tower.state_dict())
    model.save_pretrained(out)
    _write_processor(out, config, tokenizer)
    (out / CONFIG_COPY).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


# -- what trains ---------------------------------------------------------------------------------------


def _tower_layers_used(config) -> int:
    n = config.vision_config.num_hidden_layers
    layer = config.vision_feature_layer
    return layer if layer >= 0 else n + 1 + layer


def set_trainable(model, *, projector: bool, decoder: bool, vision: bool) -> None:
    """requires_grad per component. Tower parts that never reach the selected features stay frozen."""
    m = model.model
    for p in model.parameters():
        p.requires_grad_(False)
    for p in m.multi_modal_projector.parameters():
        p.requires_grad_(projector)
    for p in [*m.language_model.parameters(), *model.lm_head.parameters()]:
        p.requires_grad_(decoder)
    if vision:
        used = _tower_layers_used(model.config)
        tower = m.vision_tower.vision_model if hasattr(m.vision_tower, "vision_model") else m.vision_tower
        for p in [*tower.embeddings.parameters(), *tower.pre_layrnorm.parameters()]:
            p.requires_grad_(True)
        for layer in tower.encoder.layers[:used]:
            for p in layer.parameters():
                p.requires_grad_(True)


def add_lora(model, r: int, alpha: float, dropout: float):
    """Wrap `model` with LoRA adapters on every decoder linear layer; returns the peft model. The base
    weights freeze; re-enable the projector (etc.) afterwards with requires_grad."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConvertError("LoRA needs the peft package (pip install 'llava-edge[convert]')") from None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, bias="none")
    return get_peft_model(model, config)
