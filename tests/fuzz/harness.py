"""The shared driver of the fuzz harnesses: atheris (coverage-guided, libFuzzer) when it is installed,
otherwise a plain random-mutation loop over the seeds with the same contract.

The contract every harness checks: whatever the bytes, the code under test returns or raises a typed
LlavaEdgeError. Any other exception is a finding (atheris stops and writes the input to
`-artifact_prefix`); a crash is one too, and so is an input that runs past the per-input time limit
(atheris `-timeout=`, here SIGALRM).

    python tests/fuzz/fuzz_gguf.py CORPUS_DIR [SEED_DIR...] -max_total_time=60 -timeout=10 ...

The fallback understands `-max_total_time=`, `-timeout=`, `-artifact_prefix=`, `-seed=` and `-runs=`, reads
seeds from the directories given (atheris writes new interesting inputs to the first one), and, like
libFuzzer, runs files named one by one once each and stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

try:
    import atheris
except ImportError:  # the fallback below; say so, so nobody mistakes it for coverage-guided fuzzing
    atheris = None


def instrumented():
    """Context manager: imports inside it get atheris's coverage instrumentation (a no-op without it)."""
    return atheris.instrument_imports() if atheris is not None else contextlib.nullcontext()


def run(test_one_input: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if atheris is not None and not os.environ.get("LLAVA_EDGE_FUZZ_NO_ATHERIS"):
        atheris.Setup(argv, test_one_input)
        atheris.Fuzz()
        return
    sys.exit(_mutation_loop(test_one_input, argv))


# -- fallback: random mutations, no coverage feedback ---------------------------------------------------

_INTERESTING = [0, 1, 2, 3, 4, 7, 8, 16, 31, 32, 63, 64, 127, 128, 255, 256, 2**15, 2**16, 2**31 - 1, 2**31]
_INTERESTING += [2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


def _mutate(data: bytearray, rng: random.Random, seeds: list[bytes]) -> bytearray:
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        n = len(data)
        op = rng.randrange(7)
        if op == 0 and n:  # flip a bit
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # a random byte
            data[rng.randrange(n)] = rng.randrange(256)
        elif op == 2 and n >= 8:  # an interesting little-endian integer of 1, 2, 4 or 8 bytes
            width = rng.choice((1, 2, 4, 8))
            i = rng.randrange(max(1, n - width))
            value = rng.choice(_INTERESTING) % (1 << (8 * width))
            data[i : i + width] = value.to_bytes(width, "little")
        elif op == 3 and n:  # truncate
            del data[rng.randrange(n) :]
        elif op == 4 and n:  # delete a chunk
            i = rng.randrange(n)
            del data[i : i + rng.randrange(1, 64)]
        elif op == 5:  # insert random bytes
            i = rng.randrange(n + 1)
            data[i:i] = rng.randbytes(rng.randrange(1, 32))
        elif op == 6 and seeds:  # splice in a piece of another seed
            other = rng.choice(seeds)
            if other:
                a = rng.randrange(len(other))
                piece = other[a : a + rng.randrange(1, 256)]
                i = rng.randrange(n + 1)
                data[i : i + len(piece)] = piece
    return data


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout


def _mutation_loop(test_one_input, argv: list[str]) -> int:
    opts = {a.split("=", 1)[0][1:]: a.split("=", 1)[1] for a in argv[1:] if a.startswith("-") and "=" in a}
    dirs = [Path(a) for a in argv[1:] if not a.startswith("-")]
    seconds = float(opts.get("max_total_time", 20))
    timeout = int(opts.get("timeout", 10))
    runs = int(opts.get("runs", -1))
    prefix = opts.get("artifact_prefix", "./")
    rng = random.Random(int(opts.get("seed", time.time_ns() % 2**32)))
    files = [d for d in dirs if d.is_file()]
    if files:  # as libFuzzer does: inputs named one by one are each run once
        seconds, runs = float("inf"), len(files)
    seeds = [p.read_bytes() for d in dirs if d.is_dir() for p in sorted(d.iterdir()) if p.is_file()]
    seeds = [f.read_bytes() for f in files] or seeds
    print(f"fallback mutation fuzzer (atheris not installed): {len(seeds)} seeds, {seconds:g} s", flush=True)
    signal.signal(signal.SIGALRM, _on_alarm)
    deadline, execs = time.monotonic() + seconds, 0
    while time.monotonic() < deadline and execs != runs:
        base = seeds[execs] if execs < len(seeds) else (rng.choice(seeds) if seeds else b"")
        data = bytes(base if execs < len(seeds) else _mutate(bytearray(base), rng, seeds))
        execs += 1
        signal.alarm(timeout)
        try:
            test_one_input(data)
        except _Timeout:
            return _report(data, prefix, "timeout", f"input ran past {timeout} s", execs)
        except Exception:
            return _report(data, prefix, "crash", traceback.format_exc(), execs)
        finally:
            signal.alarm(0)
    print(f"done: {execs} execs, no finding", flush=True)
    return 0


def _report(data: bytes, prefix: str, kind: str, what: str, execs: int) -> int:
    path = f"{prefix}{kind}-{hashlib.sha1(data).hexdigest()}"
    Path(path).write_bytes(data)
    print(f"== finding after {execs} execs: {what}\nwrote the input to {path}", flush=True)
    return 1
