"""Reading a Hugging Face checkpoint directory safely: config, tensors, tokenizer files.

Safetensors only by default. A pickle `.bin` can run arbitrary code when unpickled, so it is refused unless
the caller opts in, and even then it is loaded with `weights_only=True` (no arbitrary objects).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import ConvertError


def load_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ConvertError(f"{model_dir}: no config.json: not a Hugging Face checkpoint directory")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None


def load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None


class Checkpoint:
    """The tensors of a checkpoint directory, by name; loaded one at a time where the format allows."""

    def __init__(self, model_dir: str | Path, *, trust_pickle: bool = False):
        self.dir = Path(model_dir)
        self.config = load_config(self.dir)
        self._files: dict[str, Path] = {}
        self._loaded: dict[str, torch.Tensor] = {}
        safetensors = sorted(self.dir.glob("*.safetensors"))
        pickles = sorted(self.dir.glob("pytorch_model*.bin")) or sorted(self.dir.glob("*.bin"))
        if safetensors:
            from safetensors import safe_open

            for f in safetensors:
                with safe_open(f, framework="pt") as st:
                    for name in st.keys():
                        self._files[name] = f
        elif pickles:
            if not trust_pickle:
                raise ConvertError(
                    f"{self.dir}: only pickle checkpoints ({pickles[0].name}) found. Unpickling can run "
                    "arbitrary code; convert it to safetensors, or pass --trust-pickle to load it with "
                    "torch.load(weights_only=True)"
                )
            for f in pickles:
                try:
                    state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                except Exception as e:  # torch raises UnpicklingError and friends for refused objects
                    raise ConvertError(f"{f}: refused by torch.load(weights_only=True): {e}") from None
                self._loaded.update(state)
        else:
            raise ConvertError(f"{self.dir}: no *.safetensors (or pickle *.bin) weight files")

    def names(self) -> list[str]:
        return list(self._files) + list(self._loaded)

    def __contains__(self, name: str) -> bool:
        return name in self._files or name in self._loaded

    def get(self, name: str) -> torch.Tensor:
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._files:
            raise ConvertError(f"{self.dir}: tensor {name} not found in the checkpoint")
        from safetensors import safe_open

        with safe_open(self._files[name], framework="pt") as st:
            return st.get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape without loading its data."""
        if name in self._files:
            from safetensors import safe_open

            with safe_open(self._files[name], framework="pt") as st:
                return tuple(st.get_slice(name).get_shape())
        return tuple(self.get(name).shape)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.names():
            yield name, self.get(name)
