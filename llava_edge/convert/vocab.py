"""SentencePiece tokenizer of a checkpoint -> GGUF `tokenizer.ggml.*` metadata (llama.cpp's keys)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConvertError
from .checkpoint import load_json

# GGUF / llama.cpp token types; SentencePiece's ModelProto piece types use the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def sentencepiece_metadata(model_dir: Path, vocab_size: int | None = None) -> dict:
    """Metadata for tokenizer.model in model_dir, with added tokens and padding up to vocab_size."""
    from sentencepiece import sentencepiece_model_pb2

    path = model_dir / "tokenizer.model"
    if not path.is_file():
        raise ConvertError(f"{model_dir}: no tokenizer.model (a SentencePiece model is required)")
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf's DecodeError
        raise ConvertError(f"{path}: not a SentencePiece model ({e})") from None
    if proto.trainer_spec.model_type != 2:  # BPE; llama.cpp's "llama" tokenizer is SentencePiece BPE
        raise ConvertError(
            f"{path}: SentencePiece model type {proto.trainer_spec.model_type}: only BPE is supported"
        )
    tokens = [p.piece for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    types = [p.type for p in proto.pieces]

    # Tokens added on top of the SentencePiece model (llava-hf's <image>, <pad>), by id.
    added = {int(i): tok for tok, i in load_json(model_dir / "added_tokens.json").items()}
    tokenizer_json = load_json(model_dir / "tokenizer.json")
    specials = set()
    for entry in tokenizer_json.get("added_tokens", []):
        added[int(entry["id"])] = entry["content"]
        if entry.get("special"):
            specials.add(int(entry["id"]))
    for i in sorted(added):
        if i < len(tokens):
            continue  # already a SentencePiece piece (<s>, </s>, <unk>)
        if i != len(tokens):
            raise ConvertError(
                f"{model_dir}: added token {added[i]!r} has id {i}, leaving a gap after {len(tokens)}"
            )
        tokens.append(added[i])
        scores.append(-1000.0)
        types.append(CONTROL if i in specials else USER_DEFINED)
    if vocab_size is not None:
        if vocab_size < len(tokens):
            raise ConvertError(
                f"{model_dir}: config vocab_size {vocab_size} < {len(tokens)} tokenizer pieces"
            )
        for i in range(len(tokens), vocab_size):  # embedding rows with no token (padded tables)
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(UNUSED)

    config = load_json(model_dir / "tokenizer_config.json")
    spec = proto.trainer_spec
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.array(scores, np.float32),
        "tokenizer.ggml.token_type": np.array(types, np.int32),
        "tokenizer.ggml.bos_token_id": spec.bos_id,
        "tokenizer.ggml.eos_token_id": spec.eos_id,
        "tokenizer.ggml.unknown_token_id": spec.unk_id,
        "tokenizer.ggml.add_bos_token": bool(config.get("add_bos_token", True)),
        "tokenizer.ggml.add_eos_token": bool(config.get("add_eos_token", False)),
        "tokenizer.ggml.add_space_prefix": bool(proto.normalizer_spec.add_dummy_prefix),
    }
    pad = tokens.index("<pad>") if "<pad>" in tokens else spec.pad_id
    if pad >= 0:
        meta["tokenizer.ggml.padding_token_id"] = pad
    template = config.get("chat_template")
    if not template and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text()
    if isinstance(template, str) and template:
        meta["tokenizer.chat_template"] = template
    return meta
