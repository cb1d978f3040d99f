"""Opening model files: a GGUF decoder with its tokenizer."""

from __future__ import annotations

from pathlib import Path

from .gguf_file import GGUFFile
from .model import Mistral
from .tokenizer import Tokenizer
from .validate import check_tokenizer_fits


def load_text_model(path: str | Path) -> tuple[Mistral, Tokenizer]:
    """A llama-architecture GGUF (Mistral, Llama) -> (model, tokenizer). Weights stay memory-mapped."""
    f = GGUFFile.open(path, huge_pages=True)
    tokenizer = Tokenizer.from_gguf_metadata(f.metadata, path=str(path))
    model = Mistral(f)
    check_tokenizer_fits(tokenizer, model.args, path)
    return model, tokenizer
