"""Tiny random LLaVA checkpoints, saved the ways real ones are found on disk, and their torch references.

Kinds: "v1.5" (`LlavaForConditionalGeneration`, pad-to-square, one tile) and "v1.6"
(`LlavaNextForConditionalGeneration`, anyres tiles + `image_newline`).

Layouts:
- "hf": what transformers 5 `save_pretrained` writes (`language_model.model.*`, `language_model.lm_head`,
  `vision_tower.embeddings...`, `multi_modal_projector.*`, `image_newline`), tokenizer.json with `<image>`
  = 32000 and `<pad>` = 32001, text vocabulary padded to 32064 as llava-hf does.
- "hf_old": the llava-hf hub repos (written by transformers 4): the tower under `vision_tower.vision_model.`,
  an `added_tokens.json`, `preprocessor_config.json` apart from `processor_config.json`, a config in the
  older style (`rope_theta`, `torch_dtype`, `ignore_index`).
- "hf_state": the names of the transformers 5 model in memory (`model.language_model.*`, `lm_head.weight`,
  `model.vision_tower.*`, `model.multi_modal_projector.*`, `model.image_newline`).
- "original": haotian-liu/LLaVA (`LlavaMistralForCausalLM`): decoder under `model.*`,
  `model.mm_projector.0/2`, `model.vision_tower.vision_tower.vision_model.*`, `model.image_newline`, text
  fields at the top of config.json beside `mm_*` fields, no `<image>` token and a 32000-token vocabulary.
  A `vision_config` dict says what the tower is (real original configs only name it in `mm_vision_tower`).
  Grid pinpoints are listed as (width, height) pairs, which is how LLaVA's own code reads them.

For one seed every layout holds the same weights (the original layout keeps the first 32000 rows of the
embeddings and output head), so the layouts can be compared with each other.

The tower and projector get weights large enough to move the residual stream (transformers' 0.02-std init
leaves every layer near identity), and the output head is scaled up so next-token distributions are peaked.

`load_reference_llava(dir)` gives the transformers model for any of these; for the original layout it is
built from the original config and the re-keyed tensors, with `image_token_id` = vocab size (no such token:
feed it `inputs_embeds`, e.g. through `reference_logits`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from tiny_models import MISTRAL_SPM

IMAGE_TOKEN_ID, PAD_TOKEN_ID, HF_VOCAB, SPM_VOCAB = 32000, 32001, 32064, 32000
V16_PINPOINTS = [[28, 56], [56, 28], [56, 56]]  # (height, width), for 28-px tiles
KINDS = ("v1.5", "v1.6")
LAYOUTS = ("hf", "hf_old", "hf_state", "original")
CLIP_L_336 = "openai/clip-vit-large-patch14-336"


def _randomize(module, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim >= 2 and "embedding" not in name:
                p.copy_(noise * 1.5 / np.sqrt(p.shape[-1] if p.ndim == 2 else p[0].numel()))
            else:
                p.copy_(0.3 * noise)


def build_tiny_llava(
    kind: str = "v1.5",
    *,
    vocab_size: int = HF_VOCAB,
    seed: int = 0,
    text_arch: str = "mistral",
    sliding_window: int | None = 8,
    image_size: int | None = None,
    pinpoints: list[list[int]] | None = None,
    vision_layers: int = 3,
    select_layer: int = -2,
    select_strategy: str = "default",
    head_scale: float = 40.0,
):
    """The random transformers model (float32, eval, eager attention), not saved."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        MistralConfig,
    )

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    image_size = image_size or (56 if kind == "v1.5" else 28)
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=14,
        projection_dim=32,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text_fields = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    if text_arch == "mistral":
        text = MistralConfig(sliding_window=sliding_window, **text_fields)
    else:
        text = LlamaConfig(**text_fields)
    common = dict(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=select_layer,
        vision_feature_select_strategy=select_strategy,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    if kind == "v1.5":
        config = LlavaConfig(**common)
        cls = LlavaForConditionalGeneration
    else:
        config = LlavaNextConfig(image_grid_pinpoints=pinpoints or V16_PINPOINTS, **common)
        cls = LlavaNextForConditionalGeneration
    config._attn_implementation = "eager"
    model = cls(config)
    _randomize(model.model.vision_tower, seed + 1)
    _randomize(model.model.multi_modal_projector, seed + 2)
    with torch.no_grad():
        if kind == "v1.6":
            g = torch.Generator().manual_seed(seed + 3)
            model.model.image_newline.copy_(torch.randn(model.model.image_newline.shape, generator=g))
        model.lm_head.weight.mul_(head_scale)
    return model.float().eval()


def _save_tensors(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def _image_processor(model):
    from transformers import CLIPImageProcessor, LlavaNextImageProcessor

    s = model.config.vision_config.image_size
    common = dict(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    if hasattr(model.config, "image_grid_pinpoints"):
        return LlavaNextImageProcessor(image_grid_pinpoints=model.config.image_grid_pinpoints, **common)
    return CLIPImageProcessor(**common)


def _hf_processor(out: Path, model, *, hub_style: bool) -> None:
    """tokenizer.model, transformers' tokenizer files with `<image>` = 32000 and `<pad>` = 32001, and a
    Llava(Next)Processor set up as the llava-hf repos are (so `AutoProcessor` expands `<image>`)."""
    from transformers import AddedToken, LlamaTokenizer, LlavaNextProcessor, LlavaProcessor

    shutil.copy(MISTRAL_SPM, out / "tokenizer.model")
    # BOS, and "▁" prepended to the text after <image> too (legacy), as the llava-hf hub tokenizers do
    tok = LlamaTokenizer.from_pretrained(out, add_bos_token=True, legacy=True)
    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<image>", "<pad>")], special_tokens=True
    )
    tok.pad_token = "<pad>"
    assert tok.convert_tokens_to_ids(["<image>", "<pad>"]) == [IMAGE_TOKEN_ID, PAD_TOKEN_ID]
    cls = LlavaNextProcessor if hasattr(model.config, "image_grid_pinpoints") else LlavaProcessor
    processor = cls(
        image_processor=_image_processor(model),
        tokenizer=tok,
        patch_size=model.config.vision_config.patch_size,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLS; "default" drops it again
        image_token="<image>",
    )
    processor.save_pretrained(out)
    if hub_style:  # transformers 4 wrote the image processor apart, and an added_tokens.json
        path = out / "processor_config.json"
        path.write_text(
            json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "image_processor"})
        )
        _image_processor(model).save_pretrained(out)
        (out / "added_tokens.json").write_text(json.dumps({"<image>": IMAGE_TOKEN_ID, "<pad>": PAD_TOKEN_ID}))


def _old_style_config(out: Path) -> None:
    """config.json as transformers 4 wrote it for the llava-hf hub repos."""
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    text = cfg["text_config"]
    text["rope_theta"] = text.pop("rope_parameters")["rope_theta"]
    text.pop("head_dim", None)
    cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    cfg["ignore_index"] = -100
    cfg["pad_token_id"] = PAD_TOKEN_ID
    cfg["vocab_size"] = text["vocab_size"]
    cfg["transformers_version"] = "4.45.0"
    path.write_text(json.dumps(cfg, indent=2))


def _original_config(model) -> dict:
    """An original LLaVA config.json: text fields at the top level beside the mm_* fields."""
    c = model.config
    t = c.text_config
    v16 = hasattr(c, "image_grid_pinpoints")
    mistral = t.model_type == "mistral"
    cfg = {
        "architectures": ["LlavaMistralForCausalLM" if mistral else "LlavaLlamaForCausalLM"],
        "model_type": "llava_mistral" if mistral else "llava_llama",
        "hidden_act": "silu",
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_attention_heads": t.num_attention_heads,
        "num_hidden_layers": t.num_hidden_layers,
        "num_key_value_heads": t.num_key_value_heads,
        "max_position_embeddings": t.max_position_embeddings,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_parameters["rope_theta"],
        "vocab_size": t.vocab_size,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
        "use_cache": True,
        "image_aspect_ratio": "anyres" if v16 else "pad",
        "mm_hidden_size": c.vision_config.hidden_size,
        "mm_patch_merge_type": "spatial_unpad" if v16 else "flat",
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch" if c.vision_feature_select_strategy == "default" else "cls_patch",
        "mm_vision_select_layer": c.vision_feature_layer,
        "mm_vision_tower": CLIP_L_336,
        "tokenizer_model_max_length": 512,
        "tokenizer_padding_side": "right",
        "use_mm_proj": True,
        "vision_config": c.vision_config.to_dict(),
    }
    if mistral:
        cfg["sliding_window"] = t.sliding_window
    if v16:
        cfg["image_grid_pinpoints"] = c.image_grid_pinpoints
    return cfg


# in-memory (transformers 5) name prefix -> original LLaVA name prefix
_ORIGINAL_PREFIXES = (
    ("model.language_model.", "model."),
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
    ("model.image_newline", "model.image_newline"),
    ("lm_head.", "lm_head."),
)


def _rekey(name: str, pairs) -> str:
    for src, dst in pairs:
        if name.startswith(src):
            return dst + name[len(src) :]
    raise KeyError(name)


def save_tiny_llava(
    out: str | Path,
    kind: str = "v1.5",
    layout: str = "hf",
    *,
    seed: int = 0,
    tower_dir: str | Path | None = None,
    **model_kwargs,
) -> Path:
    """Write a tiny random LLaVA checkpoint directory (see the module docstring for kinds and layouts).

    `tower_dir` (original layout only): save the vision tower there as a CLIPVisionModel, leave its
    weights and the `vision_config` out of the checkpoint, and name the folder in `mm_vision_tower`, as
    LLaVA-1.5 checkpoints do. Other keyword arguments go to `build_tiny_llava`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Every layout holds the same weights for a seed; the original one keeps the first 32000 rows of the
    # embeddings and head (its vocabulary has no <image>, <pad> or padding rows).
    model = build_tiny_llava(kind, vocab_size=HF_VOCAB, seed=seed, **model_kwargs)

    if layout == "original":
        state = {_rekey(k, _ORIGINAL_PREFIXES): v for k, v in model.state_dict().items()}
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            state[name] = state[name][:SPM_VOCAB]
        cfg = _original_config(model)
        cfg["vocab_size"] = SPM_VOCAB
        if tower_dir is not None:
            from transformers import CLIPVisionModel

            tower = CLIPVisionModel(model.config.vision_config)
            tower.load_state_dict(model.model.vision_tower.state_dict())
            tower.save_pretrained(tower_dir)
            _image_processor(model).save_pretrained(tower_dir)
            state = {k: v for k, v in state.items() if not k.startswith("model.vision_tower.")}
            cfg["mm_vision_tower"] = str(tower_dir)
            del cfg["vision_config"]
        _save_tensors(state, out / "model.safetensors")
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
        shutil.copy(MISTRAL_SPM, out / "tokenizer.model")
        (out / "tokenizer_config.json").write_text(
            json.dumps({"add_bos_token": True, "add_eos_token": False, "model_max_length": 512})
        )
        return out

    model.save_pretrained(out)
    _hf_processor(out, model, hub_style=layout == "hf_old")
    if layout == "hf_old":
        from safetensors.torch import load_file

        state = load_file(out / "model.safetensors")
        pairs = (("vision_tower.", "vision_tower.vision_model."), ("", ""))
        _save_tensors({_rekey(k, pairs): v for k, v in state.items()}, out / "model.safetensors")
        _old_style_config(out)
    elif layout == "hf_state":
        for f in out.glob("*.safetensors"):
            f.unlink()
        _save_tensors(model.state_dict(), out / "model.safetensors")
    return out


def load_reference_llava(model_dir: str | Path, vision_tower_dir: str | Path | None = None):
    """The transformers Llava / LlavaNext model (float32, eval, eager attention) for a tiny checkpoint of
    any layout above. Original-layout towers kept outside the checkpoint come from `vision_tower_dir` or
    the local folder named by `mm_vision_tower`."""
    import torch
    from safetensors.torch import load_file
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        MistralConfig,
    )

    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    arch = cfg["architectures"][0]
    classes = {
        "LlavaForConditionalGeneration": LlavaForConditionalGeneration,
        "LlavaNextForConditionalGeneration": LlavaNextForConditionalGeneration,
    }
    if arch in classes:
        model = classes[arch].from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
        return model.eval()

    text_keys = (
        "vocab_size hidden_size intermediate_size num_attention_heads num_hidden_layers num_key_value_heads "
        "max_position_embeddings rms_norm_eps rope_theta tie_word_embeddings bos_token_id eos_token_id"
    ).split()
    text = {k: cfg[k] for k in text_keys if k in cfg}
    if cfg["model_type"] == "llava_mistral":
        text_config = MistralConfig(sliding_window=cfg.get("sliding_window"), **text)
    else:
        text_config = LlamaConfig(**text)
    tower_dir = vision_tower_dir or (cfg["mm_vision_tower"] if "vision_config" not in cfg else None)
    if "vision_config" in cfg:
        vision_config = CLIPVisionConfig(**cfg["vision_config"])
    else:
        vision_config = CLIPVisionConfig.from_pretrained(tower_dir)
    common = dict(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=cfg["vocab_size"],  # the original layout has no image token
        vision_feature_layer=cfg["mm_vision_select_layer"],
        vision_feature_select_strategy="default" if cfg["mm_vision_select_feature"] == "patch" else "full",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    if cfg["image_aspect_ratio"] == "anyres":
        # LLaVA reads pinpoints as (width, height), transformers as (height, width): swap to mean the same
        pinpoints = [[h, w] for w, h in cfg["image_grid_pinpoints"]]
        config = LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
        cls = LlavaNextForConditionalGeneration
    else:
        config, cls = LlavaConfig(**common), LlavaForConditionalGeneration
    config._attn_implementation = "eager"
    model = cls(config)
    back = [(dst, src) for src, dst in _ORIGINAL_PREFIXES]
    back.sort(key=lambda p: -len(p[0]))  # the tower prefix before the decoder's "model."
    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update({_rekey(k, back): v for k, v in load_file(f).items()})
    if not any(k.startswith("model.vision_tower.") for k in state):
        tower = CLIPVisionModel.from_pretrained(tower_dir, dtype=torch.float32)
        state.update({f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()})
    model.load_state_dict(state, strict=True)
    return model.float().eval()


def reference_features(model, pixel_values, image_sizes=None):
    """Projected image embeddings [tokens, n_embd] of one image (v1.6: unpadded, with newlines), as the
    model splices them into the prompt. v1.6 `pixel_values` are [tiles, 3, S, S], `image_sizes` (H, W)."""
    import torch

    c = model.config
    kwargs = dict(
        vision_feature_layer=c.vision_feature_layer,
        vision_feature_select_strategy=c.vision_feature_select_strategy,
    )
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(pixel_values, np.float32))
        if hasattr(c, "image_grid_pinpoints"):
            sizes = torch.as_tensor([list(image_sizes)])
            out = model.model.get_image_features(x[None], image_sizes=sizes, **kwargs)
        else:
            out = model.model.get_image_features(x, **kwargs)
    return out.pooler_output[0].reshape(-1, c.text_config.hidden_size)


def reference_logits(model, ids_before, ids_after, pixel_values, image_sizes=None) -> np.ndarray:
    """Logits [tokens, vocab] of `ids_before` + image embeddings + `ids_after`, built as inputs_embeds (so it
    works for every layout, the original one without an image token included)."""
    import torch

    embed = model.get_input_embeddings()
    with torch.no_grad():
        parts = [
            embed(torch.tensor(ids_before, dtype=torch.long)),
            reference_features(model, pixel_values, image_sizes),
            embed(torch.tensor(ids_after, dtype=torch.long)),
        ]
        logits = model(inputs_embeds=torch.cat(parts)[None]).logits[0]
    return logits.numpy()
