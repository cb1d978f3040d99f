"""Semantic checks across the parts of a model, after each part has parsed: the facts one file states
must agree with the shapes another part has. Each failure is a ModelError naming the file and the field."""

from __future__ import annotations

import os

from .errors import ModelError


def check_tokenizer_fits(tokenizer, args, path: str | os.PathLike) -> None:
    """Every id the tokenizer can produce must be a row of token_embd (and of the output head)."""
    if tokenizer.vocab_size > args.vocab_size:
        raise ModelError(
            f"{path}: tokenizer.ggml.tokens: {tokenizer.vocab_size} tokens, but token_embd.weight has only "
            f"{args.vocab_size} rows"
        )


def check_vision_matches(
    vision, *, image_size: int, width: int, tokens: int | None, onnx_path, gguf_path
) -> None:
    """The ONNX tower's input and output shapes against what the GGUF says (llava.image_size,
    llava.vision_width, llava.vision_tokens). Dynamic ONNX dimensions are checked at run time instead."""
    channels, height, w = vision.input_shape
    if channels != 3 or height != w:
        raise ModelError(
            f"{onnx_path}: input pixel_values is [N,{channels},{height},{w}]; expected [N,3,S,S] RGB squares"
        )
    if height != image_size:
        raise ModelError(
            f"{onnx_path}: input pixel_values is {height}x{w} pixels, but {gguf_path} llava.image_size is "
            f"{image_size}"
        )
    if vision.width is not None and vision.width != width:
        raise ModelError(
            f"{onnx_path}: features are {vision.width} wide, but {gguf_path} llava.vision_width is {width}"
        )
    if tokens is not None and vision.n_tokens is not None and vision.n_tokens != tokens:
        raise ModelError(
            f"{onnx_path}: {vision.n_tokens} feature tokens per image, but {gguf_path} llava.vision_tokens "
            f"is {tokens}"
        )
