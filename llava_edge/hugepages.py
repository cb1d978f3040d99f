"""Weights in 2 MiB page-cache folios on Linux, still mapped in place from the file.

Decode streams every weight once per token, and how fast a core streams depends on how the file lies in
physical memory. The same 7B Q4_0 weights, from a copy the page cache held in small folios (a file just
written with small writes) and from one held in 2 MiB folios, measured here (AMD EPYC, Linux 6.18, our
matmul over the 32 ffn_gate matrices, same process, turns interleaved): one thread 22.9 -> 27.1 GB/s, two
threads 29.2 -> 30.7 GB/s with neighbours holding the bandwidth, whole decode 6.59 -> 6.89 tokens/s. What
counts is the folios, not the page tables: the 2 MiB folios mapped through 4 KiB page tables
(MADV_NOHUGEPAGE) stream as fast.

Linux reads a file into 2 MiB folios when a mapping marked MADV_HUGEPAGE faults on pages that are not
cached. Pages already cached in small folios stay small, so `prefer_huge_pages` drops the file's clean,
unmapped cache pages (POSIX_FADV_DONTNEED) and faults them back in through a marked map. That costs one
read of the file from disk, once (9 s for 4 GB here); the folios stay cached for later runs and other
processes. Where the system has no transparent huge pages for files, the map just works as before.
"""

from __future__ import annotations

import mmap
import os
import re

import numpy as np

HUGE_PAGE = 2 << 20
# Below this a file gains nothing worth a page-cache refresh (and tests' tiny files stay untouched).
MIN_FILE_BYTES = 256 << 20
# Share of the file that must end up in 2 MiB mappings for the map to count as done.
ENOUGH = 0.9


def advise(buf: mmap.mmap) -> None:
    """Mark the map for 2 MiB pages where the OS has them (later faults read in 2 MiB folios)."""
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass  # the kernel has no transparent huge pages: 4 KiB pages, as without the advice


def huge_mapped_bytes(buf: mmap.mmap) -> int | None:
    """Bytes of buf now mapped by 2 MiB pages (FilePmdMapped in /proc/self/smaps), None if unknown."""
    view = np.frombuffer(buf, np.uint8)
    start = view.ctypes.data
    del view
    try:
        with open("/proc/self/smaps") as f:
            text = f.read()
    except OSError:
        return None
    inside = False
    for line in text.splitlines():
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            inside = int(m.group(1), 16) <= start < int(m.group(2), 16)
        elif inside and line.startswith("FilePmdMapped:"):
            return int(line.split()[1]) * 1024
    return None


def _file_huge_pages_in_use() -> bool:
    """Whether the page cache holds any file in 2 MiB folios now (FileHugePages in /proc/meminfo)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("FileHugePages:"):
                    return int(line.split()[1]) > 0
    except (OSError, ValueError, IndexError):
        pass
    return False


def _touch(buf: mmap.mmap) -> None:
    """Fault every page in (one read per 4 KiB page: the kernel maps whole folios at once)."""
    view = np.frombuffer(buf, np.uint8)
    int(view[:: mmap.PAGESIZE].sum(dtype=np.uint64))
    del view


def prefer_huge_pages(buf: mmap.mmap, fd: int, size: int, min_bytes: int = MIN_FILE_BYTES) -> mmap.mmap:
    """buf (a whole-file read-only map of fd), faulted in and, where Linux can, in 2 MiB pages; returns the
    map to use (a fresh one if the cache was refreshed; buf is then closed). Needs no other view of buf.
    Files under min_bytes only get the advice."""
    advise(buf)
    if size < min_bytes or not hasattr(os, "posix_fadvise") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return buf
    _touch(buf)
    huge = huge_mapped_bytes(buf)
    if huge is None or huge >= ENOUGH * (size // HUGE_PAGE * HUGE_PAGE):
        return buf
    if huge == 0 and not _file_huge_pages_in_use():
        return buf  # no sign this system caches files in 2 MiB folios: a refresh would only cost a read
    # Cached in small folios: drop them (our map first, or they stay pinned) and read the file back in
    # through a marked map. Pages other processes still map are kept by the kernel, and stay small.
    buf.close()
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # a filesystem that refuses the advice: the pages stay as they were
    buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    advise(buf)
    _touch(buf)
    return buf
