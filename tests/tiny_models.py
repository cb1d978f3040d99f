"""Tiny random Hugging Face models, saved like real checkpoints, for end-to-end parity tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import mistral_common

MISTRAL_SPM = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


def save_tiny_decoder(
    out: Path,
    *,
    arch: str = "mistral",
    sliding_window: int | None = 8,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    head_scale: float = 40.0,
    rope_theta: float = 10000.0,
) -> Path:
    """A random MistralForCausalLM / LlamaForCausalLM with the real Mistral vocabulary (32000 pieces).

    The output head is scaled up so the next-token distributions are peaked, not near-uniform: argmax and
    KL comparisons then mean something.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=rope_theta,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "mistral":
        config = MistralConfig(sliding_window=sliding_window, **common)
        model = MistralForCausalLM(config)
    else:
        config = LlamaConfig(**common)
        model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    shutil.copy(MISTRAL_SPM, out / "tokenizer.model")
    return out


def load_reference(model_dir: Path, sliding_window="config"):
    """The transformers model from a saved tiny checkpoint, float32, eager attention."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype="float32")
    return model.eval()
