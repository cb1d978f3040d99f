"""Shared fixtures. Heavy references (torch, transformers, llama.cpp) are imported lazily per test."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("LLAVA_EDGE_TEST_CACHE", Path.home() / ".cache" / "llava-edge-tests"))


def _llama_cpp_source() -> Path:
    """The llama.cpp tree inside the llama-cpp-python source distribution of the installed version.

    It carries llama.cpp's converters and vocab test files; it is fetched from PyPI once and cached.
    """
    version = metadata.version("llama-cpp-python")
    root = CACHE / f"llama_cpp_python-{version}"
    src = root / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if src.is_dir():
        return src
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--no-build-isolation",
            f"llama-cpp-python=={version}",
            "-d",
            str(root),
        ],
        check=True,
    )
    (archive,) = root.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return src


@pytest.fixture(scope="session", autouse=True)
def _run_outside_the_source_tree(tmp_path_factory):
    """Tests that start `python -m llava_edge...` must import the installed package (with its compiled
    extension), not the bare sources that the repository root would put first on sys.path."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(here)


@pytest.fixture(scope="session")
def llama_cpp_src() -> Path:
    return _llama_cpp_source()


@pytest.fixture(scope="session")
def mistral_tokenizer_model() -> Path:
    """The real Mistral-7B SentencePiece model (32000 pieces) shipped in the mistral-common wheel."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    assert path.is_file(), f"mistral-common does not ship {path}"
    return path
