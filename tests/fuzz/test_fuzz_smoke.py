"""Each fuzz harness for a short bounded run (tests/fuzz/run.sh runs them longer), and every saved input
that once failed, replayed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SECONDS = int(os.environ.get("LLAVA_EDGE_FUZZ_SECONDS", "20"))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seeds")
    subprocess.run([sys.executable, str(HERE / "seeds.py"), str(out)], check=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("harness", ["gguf", "image"])
def test_fuzz_harness_finds_nothing(seeds, tmp_path, harness):
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    argv = [
        sys.executable,
        str(HERE / f"fuzz_{harness}.py"),
        str(corpus),
        str(seeds / harness),
        f"-max_total_time={SECONDS}",
        "-timeout=10",
        "-rss_limit_mb=4096",
        f"-artifact_prefix={artifacts}/",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=SECONDS + 120)
    found = sorted(p.name for p in artifacts.iterdir())
    assert out.returncode == 0 and not found, f"{found}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"


@pytest.mark.parametrize("harness", ["gguf", "image"])
def test_saved_findings_stay_fixed(harness):
    """Inputs the fuzzers once failed on (tests/fuzz/regressions/HARNESS/), through the harness again."""
    folder = HERE / "regressions" / harness
    inputs = sorted(folder.glob("*")) if folder.is_dir() else []
    if not inputs:
        pytest.skip(f"no saved {harness} findings")
    argv = [sys.executable, str(HERE / f"fuzz_{harness}.py"), *map(str, inputs), "-timeout=10"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
