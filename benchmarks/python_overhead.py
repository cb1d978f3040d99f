"""The Python share of a decoded token: our decode loop on decoders too narrow (dim 64) for the kernels to
cost anything, at 2 and 32 layers (Mistral-7B's depth). What is left is the per-op dispatch of the layer
loop, the sampler and the cache bookkeeping: the most Python can add to a real 7B token.

    python benchmarks/python_overhead.py [--threads 2] [--tokens 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from llava_edge import _kernels
from llava_edge.generate import generate_step
from llava_edge.loader import load_text_model
from llava_edge.sampling import make_sampler
from llava_edge.tiny import write_tiny_model


def ms_per_token(path: Path, tokens: int, repeats: int) -> float:
    """Best of `repeats` greedy decodes of `tokens` tokens after a 4-token prompt, in milliseconds."""
    model, _ = load_text_model(path)
    best = float("inf")
    for _ in range(repeats):
        cache = model.make_cache(tokens + 16)
        steps = generate_step(model, cache, [1, 5, 6, 7], sampler=make_sampler(temp=0.0))
        next(steps)  # the prefill and the first token are not decode
        t0 = time.perf_counter()
        for _ in range(tokens):
            next(steps)
        best = min(best, (time.perf_counter() - t0) / tokens)
    return best * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    _kernels.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for layers in (2, 32):
            path = write_tiny_model(
                Path(tmp) / f"l{layers}.gguf", dim=64, n_layers=layers, ffn_dim=128, file_type="q4_0"
            )
            ms = ms_per_token(path, args.tokens, args.repeats)
            print(f"{layers:2d} layers: {ms:.3f} ms per token, {ms / layers * 1e3:.1f} us per layer")


if __name__ == "__main__":
    main()
