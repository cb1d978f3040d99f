"""Ours vs llama.cpp, side by side: `python benchmarks/bench.py --help` (the same as `llava-edge bench`).

Everything lives in `llava_edge.bench`; this wrapper exists so the benchmark runs from a checkout.
"""

import sys

from llava_edge.bench import main

if __name__ == "__main__":
    sys.exit(main())
