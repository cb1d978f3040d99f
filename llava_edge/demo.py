"""The demo model that ships inside the package (used by `llava-edge chat` when no -m is given)."""

from __future__ import annotations

from pathlib import Path

from .bundle import MODEL_FILE
from .errors import ModelError

DEMO_DIR = Path(__file__).parent / "demo_model"


def demo_bundle() -> Path:
    if not (DEMO_DIR / MODEL_FILE).is_file():
        raise ModelError(
            f"no -m given and this installation has no demo model in {DEMO_DIR}; "
            "pass a bundle made by `llava-edge convert` (or -m llm.gguf --mmproj mmproj.gguf)"
        )
    return DEMO_DIR
