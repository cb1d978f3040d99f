"""Fuzz the GGUF path: reader, tensor views, decoder and tokenizer set-up, one decoder step, and the LLaVA
bundle facts (llava.* keys, preprocessing, projector). Only LlavaEdgeError may come out.

    python tests/fuzz/fuzz_gguf.py CORPUS_DIR SEED_DIR -max_total_time=120 -timeout=10
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from harness import instrumented, run  # noqa: E402

with instrumented():
    from llava_edge.bundle import LlavaMeta
    from llava_edge.errors import LlavaEdgeError
    from llava_edge.gguf_file import GGUFFile
    from llava_edge.model import Mistral
    from llava_edge.preprocess import PreprocessConfig
    from llava_edge.projector import Projector
    from llava_edge.tokenizer import Tokenizer
    from llava_edge.validate import check_tokenizer_fits

_DIR = Path(tempfile.mkdtemp(prefix="fuzz-gguf-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
_PATH = _DIR / "input.gguf"


def exercise(path: Path) -> None:
    """Everything a load does with a GGUF, then one decoder step on a small context."""
    with GGUFFile.open(path) as f:
        for name in f.tensors:
            f.raw(name).sum()
            f.array(name)
        model = None
        if f.get("general.architecture") == "llama":
            tokenizer = Tokenizer.from_gguf_metadata(f.metadata, path=str(path))
            ids = tokenizer.encode("hi there <image>\n", add_bos=True, parse_special=True)
            tokenizer.decode(ids)
            model = Mistral(f)
            check_tokenizer_fits(tokenizer, model.args, path)
            cache = model.make_cache(min(8, model.args.context_length), kv_type="f32")
            ids = ids[: cache[0].capacity] or [0]
            model(np.array(ids, np.int32), cache)
        if any(key.startswith("llava.") for key in f.metadata):
            meta = LlavaMeta.from_gguf_metadata(f.metadata, path)
            PreprocessConfig.from_gguf_metadata(f.metadata, str(path))
            projector = Projector(f, meta.vision_width, model.args.dim if model else None)
            projector(np.ones((2, meta.vision_width), np.float32))


ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}")  # a pointer, as repr() of objects shows them


def test_one_input(data: bytes) -> None:
    # A fresh file each time: a mapping of the previous input must never see its file rewritten (SIGBUS).
    _PATH.unlink(missing_ok=True)
    _PATH.write_bytes(data)
    try:
        exercise(_PATH)
    except LlavaEdgeError as e:
        assert not ADDRESS.search(str(e)), f"an address in the message: {e}"


if __name__ == "__main__":
    run(test_one_input)
