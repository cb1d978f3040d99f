"""Model weights mapped in 2 MiB pages (llava_edge/hugepages.py): the page-cache refresh keeps the bytes,
leaves small files alone, and on Linux with transparent huge pages maps a freshly written file in 2 MiB
pages."""

import mmap
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from llava_edge import gguf_file, hugepages
from llava_edge.demo import demo_bundle
from llava_edge.gguf_file import GGUFFile
from llava_edge.hugepages import HUGE_PAGE, huge_mapped_bytes, prefer_huge_pages


def _thp_enabled() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def _fresh_file(path: Path, n: int) -> bytes:
    return _fresh_file_from(path, np.random.default_rng(0).integers(0, 256, n, np.uint8).tobytes())


def _fresh_file_from(path: Path, data: bytes) -> bytes:
    n = len(data)
    with open(path, "wb") as f:
        for i in range(0, n, 4096):  # small writes: the page cache holds it in small folios
            f.write(data[i : i + 4096])
        f.flush()
        os.fsync(f.fileno())  # clean pages, so the refresh can drop them
    return data


def test_small_files_keep_their_map(tmp_path):
    data = _fresh_file(tmp_path / "w.bin", 1 << 20)
    with open(tmp_path / "w.bin", "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        assert prefer_huge_pages(buf, f.fileno(), len(data)) is buf  # under the size limit: advice only
        assert buf[:] == data
        buf.close()


@pytest.mark.skipif(
    sys.platform != "linux" or not _thp_enabled() or not hasattr(mmap, "MADV_HUGEPAGE"),
    reason="needs Linux with transparent huge pages",
)
def test_weights_end_up_in_huge_pages_cold_or_cached_small(tmp_path):
    n = 8 * HUGE_PAGE
    # Cold: not in the page cache, read through the advised map -> 2 MiB folios (advise() alone does this).
    data = _fresh_file(tmp_path / "cold.bin", n)
    with open(tmp_path / "cold.bin", "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        buf = prefer_huge_pages(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), f.fileno(), n, min_bytes=0)
        assert buf[:] == data
        assert huge_mapped_bytes(buf) >= 0.9 * n
        buf.close()
    # Cached in small folios (just written by small writes): the refresh reads it back in 2 MiB folios.
    data = _fresh_file(tmp_path / "warm.bin", n)
    with open(tmp_path / "warm.bin", "rb") as f:
        buf = prefer_huge_pages(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), f.fileno(), n, min_bytes=0)
        assert buf[:] == data
        assert huge_mapped_bytes(buf) >= 0.9 * n
        buf.close()


@pytest.mark.skipif(
    sys.platform != "linux" or not _thp_enabled() or not hasattr(mmap, "MADV_HUGEPAGE"),
    reason="needs Linux with transparent huge pages",
)
def test_gguf_open_serves_its_tensors_from_the_refreshed_map(tmp_path, monkeypatch):
    # A fresh copy of a real GGUF, cached in small folios; no size limit, so open() refreshes it: the
    # tensors must come from the new map (the first one is closed), byte for byte.
    path = tmp_path / "model.gguf"
    _fresh_file_from(path, (demo_bundle() / "model.gguf").read_bytes())
    monkeypatch.setattr(
        gguf_file,
        "prefer_huge_pages",
        lambda buf, fd, size: hugepages.prefer_huge_pages(buf, fd, size, min_bytes=0),
    )
    with GGUFFile.open(demo_bundle() / "model.gguf") as a, GGUFFile.open(path, huge_pages=True) as b:
        assert huge_mapped_bytes(b._mm) >= 0.9 * (path.stat().st_size // HUGE_PAGE * HUGE_PAGE)
        assert list(a.tensors) == list(b.tensors)
        for name in a.tensors:
            assert np.array_equal(a.raw(name), b.raw(name))
