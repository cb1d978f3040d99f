"""Export a Hugging Face Mistral / Llama decoder to a llama.cpp-compatible GGUF (architecture `llama`).

Keys and tensor names are llama.cpp's, and Q/K rows are permuted as its converter does, so the file
means exactly the same thing to llama.cpp as to us. Tensors are converted and written one at a time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from ..errors import ConvertError
from ..ggml_types import GGMLType
from ..gguf_writer import GGUFWriter
from ..quant_rules import FILE_TYPES, encode_tensor, tensor_type
from .checkpoint import Checkpoint
from .vocab import sentencepiece_metadata

TEXT_ARCHITECTURES = ("MistralForCausalLM", "LlamaForCausalLM")

_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def is_text_model(model_dir: Path) -> bool:
    """Whether the checkpoint's config names a plain Mistral/Llama decoder (else: try LLaVA)."""
    from .checkpoint import load_config

    return (load_config(model_dir).get("architectures") or ["?"])[0] in TEXT_ARCHITECTURES


def rope_theta(cfg: dict) -> float:
    # transformers 5 moved rope settings into `rope_parameters`; older configs have `rope_theta`.
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ConvertError(f"rope scaling {kind!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def decoder_metadata(cfg: dict, where: str) -> dict:
    """llama.* hyperparameters from a text-model config dict."""
    try:
        dim, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        meta = {
            "llama.context_length": int(cfg.get("max_position_embeddings", 4096)),
            "llama.embedding_length": dim,
            "llama.block_count": int(cfg["num_hidden_layers"]),
            "llama.feed_forward_length": int(cfg["intermediate_size"]),
            "llama.attention.head_count": n_heads,
            "llama.attention.head_count_kv": int(cfg.get("num_key_value_heads") or n_heads),
            "llama.attention.layer_norm_rms_epsilon": float(cfg.get("rms_norm_eps", 1e-5)),
            "llama.rope.freq_base": rope_theta(cfg),
            "llama.rope.dimension_count": dim // n_heads,
            "llama.vocab_size": int(cfg["vocab_size"]),
        }
    except KeyError as e:
        raise ConvertError(f"{where}: config has no {e.args[0]}") from None
    head_dim = cfg.get("head_dim")
    if head_dim not in (None, dim // n_heads):
        raise ConvertError(
            f"{where}: head_dim {head_dim} != hidden_size / num_attention_heads: not supported"
        )
    if cfg.get("sliding_window"):
        meta["llama.attention.sliding_window"] = int(cfg["sliding_window"])
    return meta


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of each head from rotate-half order (HF) to interleaved pairs (llama.cpp's normal RoPE)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def decoder_tensor_names(
    n_layers: int, prefix: str = "model.", head: str = "lm_head.weight"
) -> dict[str, str]:
    """HF name -> GGUF name for a Mistral/Llama decoder whose weights live under `prefix`."""
    names = {
        f"{prefix}embed_tokens.weight": "token_embd.weight",
        f"{prefix}norm.weight": "output_norm.weight",
        head: "output.weight",
    }
    for i in range(n_layers):
        for hf, gg in _LAYER_NAMES.items():
            names[f"{prefix}layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    return names


def decoder_tensors(
    ckpt: Checkpoint, meta: dict, prefix: str = "model.", head: str = "lm_head.weight"
) -> list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
    """(GGUF name, shape, loader) for every decoder tensor under `prefix`, Q/K rows permuted for llama.cpp.

    Without `head` in the checkpoint the embeddings are tied: llama.cpp then reuses token_embd.
    """
    n_layers, n_heads = meta["llama.block_count"], meta["llama.attention.head_count"]
    n_kv_heads = meta["llama.attention.head_count_kv"]
    names = decoder_tensor_names(n_layers, prefix, head)
    if head not in ckpt:
        names.pop(head)
    missing = [hf for hf in names if hf not in ckpt]
    if missing:
        raise ConvertError(f"{ckpt.dir}: tensors missing from the checkpoint: {', '.join(missing[:4])}")
    rows = ckpt.shape(f"{prefix}embed_tokens.weight")[0]
    if rows != meta["llama.vocab_size"]:
        raise ConvertError(
            f"{ckpt.dir}: {prefix}embed_tokens.weight has {rows} rows but the config's vocab_size is "
            f"{meta['llama.vocab_size']}"
        )

    def loader(hf_name: str, gguf_name: str):
        def load() -> np.ndarray:
            w = ckpt.get(hf_name).float().numpy()
            if gguf_name.endswith("attn_q.weight"):
                w = permute_qk(w, n_heads)
            elif gguf_name.endswith("attn_k.weight"):
                w = permute_qk(w, n_kv_heads)
            return w

        return load

    return [(gg, ckpt.shape(hf), loader(hf, gg)) for hf, gg in names.items()]


def write_tensors(
    writer: GGUFWriter,
    tensors: Iterable[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]],
    file_type: str,
    n_layers: int,
    progress: bool = True,
    types: Mapping[str, GGMLType] | None = None,
) -> None:
    """Declare then stream tensors: (GGUF name, numpy shape, loader returning float32 data).

    Each tensor's type follows `quant_rules.tensor_type` unless `types` names it.
    """
    tensors = list(tensors)
    chosen = []
    for name, shape, _ in tensors:
        gguf_shape = tuple(reversed(shape))
        if types and name in types:
            chosen.append(GGMLType(types[name]))
        else:
            chosen.append(tensor_type(name, gguf_shape, file_type, n_layers))
        writer.add_tensor_info(name, gguf_shape, chosen[-1])
    for i, ((name, _, load), ggml_type) in enumerate(zip(tensors, chosen, strict=True)):
        if progress:
            print(
                f"\r[{i + 1}/{len(tensors)}] {name:<32} {ggml_type.name:<5}",
                end="",
                file=sys.stderr,
                flush=True,
            )
        writer.write_tensor(name, encode_tensor(load(), ggml_type))
    if progress:
        print(file=sys.stderr)


def export_text_model(
    model_dir: str | Path,
    out_path: str | Path,
    file_type: str = "f16",
    *,
    trust_pickle: bool = False,
    progress: bool = True,
) -> Path:
    """HF MistralForCausalLM / LlamaForCausalLM directory -> GGUF file. Returns the output path."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if file_type not in FILE_TYPES:
        raise ConvertError(f"unknown --type {file_type!r}; choose one of {', '.join(FILE_TYPES)}")
    ckpt = Checkpoint(model_dir, trust_pickle=trust_pickle)
    cfg = ckpt.config
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in TEXT_ARCHITECTURES:
        raise ConvertError(f"{model_dir}/config.json: architecture {arch!r} is not a supported text model")
    meta = decoder_metadata(cfg, f"{model_dir}/config.json")
    n_layers = meta["llama.block_count"]

    tensors = decoder_tensors(ckpt, meta)
    with GGUFWriter(out_path) as w:
        w.add("general.architecture", "llama")
        w.add("general.name", cfg.get("_name_or_path") or model_dir.name)
        w.add("general.file_type", FILE_TYPES[file_type][0])
        w.add("general.quantization_version", 2)
        for key, value in meta.items():
            w.add(key, value)
        for key, value in sentencepiece_metadata(model_dir, meta["llama.vocab_size"]).items():
            w.add(key, value)
        write_tensors(w, tensors, file_type, n_layers, progress)
    return out_path
