"""Human-readable descriptions of a model file and of the machine's kernels (`llava-edge info`)."""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from .ggml_types import GGMLType
from .gguf_file import GGUFFile


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _short(value) -> str:
    if isinstance(value, np.ndarray) or isinstance(value, list):
        return f"[{len(value)} items]"
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_file(path) -> str:
    with GGUFFile.open(path) as f:
        lines = [f"{path}: GGUF v{f.version}, {len(f.tensors)} tensors, {len(f.metadata)} metadata keys"]
        arch = f.get("general.architecture", "?")
        lines.append(f"architecture: {arch}   name: {f.get('general.name', '-')}")
        lines.append("hyperparameters:")
        for key, value in f.metadata.items():
            if key.startswith(f"{arch}.") or key.startswith("llava."):
                lines.append(f"  {key} = {_short(value)}")
        by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for t in f.tensors.values():
            row = by_type[GGMLType(t.type).name]
            row[0] += 1
            row[1] += int(np.prod(t.shape))
            row[2] += t.nbytes
        lines.append("tensor types:")
        for name, (count, params, nbytes) in sorted(by_type.items(), key=lambda kv: -kv[1][2]):
            lines.append(
                f"  {name:<6} {count:>5} tensors  {params / 1e6:>10.2f} M params  {_size(nbytes):>10}"
            )
        total = sum(t.nbytes for t in f.tensors.values())
        n_params = sum(int(np.prod(t.shape)) for t in f.tensors.values())
        lines.append(
            f"  total  {len(f.tensors):>5} tensors  {n_params / 1e6:>10.2f} M params  {_size(total):>10}"
        )
        tokens = f.get("tokenizer.ggml.tokens")
        if tokens is not None:
            lines.append(
                f"tokenizer: {f.get('tokenizer.ggml.model')}, {len(tokens)} tokens, "
                f"bos={f.get('tokenizer.ggml.bos_token_id')} eos={f.get('tokenizer.ggml.eos_token_id')}"
            )
        template = f.get("tokenizer.chat_template")
        lines.append(f"chat template: {_short(template) if template else '(none)'}")
    return "\n".join(lines)


def describe_system() -> str:
    from . import _kernels

    return (
        f"kernels: instruction set {_kernels.isa()} (override with LLAVA_EDGE_ISA), "
        f"threads {_kernels.get_num_threads()}, cpus {os.cpu_count()}"
    )
