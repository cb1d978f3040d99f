"""GGUF reader: a matrix of hand-made bad files (llama.cpp tests/test-gguf.cpp's corruptions and more),
truncation at every byte, random byte flips, and agreement with gguf-py on files gguf-py writes.

Bad files are built byte by byte here, from the GGUF spec, not with our writer."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import gguf
import numpy as np
import pytest

from llava_edge.errors import GGUFError
from llava_edge.ggml_types import GGMLType
from llava_edge.gguf_file import GGUFFile, Limits

GV = gguf.GGUFValueType  # the reference's numbering, so a mistake in ours cannot hide in both
GT = gguf.GGMLQuantizationType
REPO = Path(__file__).resolve().parents[1]


# -- byte builders ------------------------------------------------------------------------------------


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b)) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def kv_str(key: str, value: str | bytes) -> bytes:
    return kv(key, GV.STRING, gstr(value))


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, GV.UINT32, u32(value))


def tinfo(name: str | bytes, shape: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return gstr(name) + u32(len(shape)) + b"".join(u64(d) for d in shape) + u32(ggml_type) + u64(offset)


def gguf_bytes(
    kvs: list[bytes] = (),
    tensors: list[bytes] = (),
    data: bytes = b"",
    *,
    magic: bytes = b"GGUF",
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    alignment: int = 32,
    pad: bool = True,
) -> bytes:
    head = magic + u32(version)
    head += u64(len(tensors) if n_tensors is None else n_tensors) + u64(len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    if pad:
        body += bytes(-len(body) % alignment)
    return body + data


ARCH = kv_str("general.architecture", "llama")
W = tinfo("w", (8,), GT.F32, 0)  # one F32 tensor of 8 values = 32 bytes at offset 0
DATA = np.arange(8, dtype=np.float32).tobytes()


def valid(**kw) -> bytes:
    return gguf_bytes([ARCH], [W], DATA, **kw)


# -- the matrix of bad files: (case, bytes, field the error must name) -----------------------------------


def meta(*kvs: bytes, **kw) -> bytes:
    return gguf_bytes(list(kvs), **kw)


def tens(*infos: bytes, data: bytes = b"", **kw) -> bytes:
    return gguf_bytes([], list(infos), data, **kw)


def arr(etype: int, count: int, payload: bytes = b"") -> bytes:
    return kv("k", GV.ARRAY, u32(etype) + u64(count) + payload)


def f32(name: str, shape: tuple[int, ...], offset: int = 0) -> bytes:
    return tinfo(name, shape, GT.F32, offset)


BIG = 0x7FFFFFFFFFFFFFC0  # test-gguf.cpp DATA_MEM_SIZE_OVERFLOW: two I8 tensors of this many bytes
M1 = 2**64 - 1  # -1 as uint64

BAD: list[tuple[str, bytes, str]] = [
    # header (test-gguf.cpp HEADER_*)
    ("empty", b"", "magic"),
    ("bad_magic", valid(magic=b"FUGG"), "magic"),
    ("magic_only", b"GGUF", "version"),
    ("version_0", valid(version=0), "version"),
    ("version_1", valid(version=1), "version"),
    ("version_future", valid(version=4), "version"),
    ("version_big_endian", valid(version=0x03000000), "version"),
    ("n_tensors_max", valid(n_tensors=M1), "n_tensors"),
    ("n_tensors_over_limit", valid(n_tensors=1 << 20), "n_tensors"),
    ("n_tensors_more_than_fit", valid(n_tensors=1000), "n_tensors"),
    ("n_kv_max", valid(n_kv=M1), "n_kv"),
    ("n_kv_more_than_fit", valid(n_kv=1000), "n_kv"),
    ("n_kv_one_too_many", meta(ARCH, n_kv=2, pad=False), "metadata key #1"),
    # metadata keys (KV_BAD_KEY_SIZE, KV_EMPTY_KEY, KV_DUPLICATE_KEY)
    ("key_len_max", meta(u64(M1) + b"k" * 40), "metadata key #0"),
    ("key_len_over_limit", meta(u64(1 << 20) + b"k" * 40), "metadata key #0"),
    ("key_len_past_eof", meta(u64(1000) + b"k" * 40), "metadata key #0"),
    ("key_empty", meta(kv_u32("", 1)), "metadata key #0"),
    ("key_not_utf8", meta(kv(b"\xff\xfe", GV.UINT32, u32(1))), "metadata key #0"),
    ("key_duplicate", meta(kv_u32("a.b", 1), kv_u32("a.b", 2)), "metadata key 'a.b'"),
    # value types (KV_BAD_TYPE) and values
    ("kv_type_13", meta(kv("k", 13, u32(0))), "metadata key 'k' type"),
    ("kv_type_huge", meta(kv("k", M1 >> 32, u32(0))), "metadata key 'k' type"),
    ("value_past_eof", meta(kv("k", GV.UINT64, b"\1\2"), pad=False), "metadata key 'k'"),
    ("string_len_max", meta(kv("k", GV.STRING, u64(M1) + b"x" * 40)), "metadata key 'k'"),
    ("string_len_over_limit", meta(kv("k", GV.STRING, u64(1 << 27) + b"x" * 40)), "metadata key 'k'"),
    ("string_len_past_eof", meta(kv("k", GV.STRING, u64(1000) + b"x" * 40)), "metadata key 'k'"),
    ("string_not_utf8", meta(kv_str("k", b"ok\xc3\x28")), "metadata key 'k'"),
    ("bool_2", meta(kv("k", GV.BOOL, b"\2")), "metadata key 'k'"),
    # arrays
    ("array_count_max", meta(arr(GV.UINT8, M1)), "metadata key 'k'"),
    ("array_count_wraps", meta(arr(GV.UINT64, 2**61 + 1)), "metadata key 'k'"),
    ("array_count_over_limit", meta(arr(GV.UINT8, 1 << 25)), "metadata key 'k'"),
    ("array_count_past_eof", meta(arr(GV.UINT32, 1 << 23)), "metadata key 'k'"),
    ("string_array_past_eof", meta(arr(GV.STRING, 1 << 23)), "metadata key 'k'"),
    # at the array limit: 128 MiB if a reader allocated before checking, over the test's 64 MiB cap
    ("u64_array_at_limit_past_eof", meta(arr(GV.UINT64, 1 << 24)), "metadata key 'k'"),
    ("string_array_at_limit_past_eof", meta(arr(GV.STRING, 1 << 24)), "metadata key 'k'"),
    ("string_array_elem_too_long", meta(arr(GV.STRING, 2, gstr("a") + u64(M1))), "metadata key 'k'[1]"),
    ("string_array_not_utf8", meta(arr(GV.STRING, 2, gstr("a") + gstr(b"\xff"))), "metadata key 'k'[1]"),
    ("string_array_elem_past_eof", meta(arr(GV.STRING, 1, u64(100) + b"ab")), "metadata key 'k'[0]"),
    ("array_nested", meta(arr(GV.ARRAY, 1, u32(GV.UINT8) + u64(0))), "metadata key 'k'"),
    ("array_bad_elem_type", meta(arr(13, 1, bytes(8))), "metadata key 'k'"),
    ("array_bool_2", meta(arr(GV.BOOL, 3, b"\1\0\2")), "metadata key 'k'"),
    # general.alignment (KV_BAD_ALIGN, KV_WRONG_TYPE_ALIGN)
    ("align_13", meta(kv_u32("general.alignment", 13)), "general.alignment"),
    ("align_0", meta(kv_u32("general.alignment", 0)), "general.alignment"),
    ("align_2_31", meta(kv_u32("general.alignment", 2**31)), "general.alignment"),
    ("align_int32", meta(kv("general.alignment", GV.INT32, u32(32))), "general.alignment"),
    ("align_uint64", meta(kv("general.alignment", GV.UINT64, u64(32))), "general.alignment"),
    (
        "align_array",
        meta(kv("general.alignment", GV.ARRAY, u32(GV.UINT32) + u64(1) + u32(32))),
        "general.alignment",
    ),
    # tensor names (TENSORS_BAD_NAME_SIZE, TENSORS_DUPLICATE_NAME)
    ("name_64_bytes", tens(f32("n" * 64, (8,)), data=DATA), "tensor #0 name"),
    ("name_len_max", tens(u64(M1) + b"n" * 40), "tensor #0 name"),
    ("name_empty", tens(f32("", (8,)), data=DATA), "tensor #0 name"),
    ("name_not_utf8", tens(tinfo(b"\x80w", (8,), GT.F32, 0), data=DATA), "tensor #0 name"),
    ("name_duplicate", tens(W, f32("w", (8,), 32), data=DATA * 2), "tensor 'w' name"),
    # shapes (TENSORS_BAD_N_DIMS, TENSORS_BAD_SHAPE, TENSORS_NE_TOO_BIG)
    ("n_dims_0", tens(f32("w", ()), data=DATA), "tensor 'w' n_dims"),
    ("n_dims_5", tens(f32("w", (8, 1, 1, 1, 1)), data=DATA), "tensor 'w' n_dims"),
    ("n_dims_huge", tens(gstr("w") + u32(M1 >> 32) + u64(8) * 4), "tensor 'w' n_dims"),
    ("dim_minus_1", tens(f32("w", (M1,)), data=DATA), "tensor 'w' shape"),
    ("dim_minus_1_second", tens(f32("w", (8, M1)), data=DATA), "tensor 'w' shape"),
    ("ne_too_big", tens(f32("w", (4 * (2**31 - 1), 4 * (2**31 - 1), 4)), data=DATA), "tensor 'w' shape"),
    ("ne_overflow_beside_zero", tens(f32("w", (0, 2**62, 2**62))), "tensor 'w' shape"),
    ("bytes_overflow_beside_zero", tens(f32("w", (0, 2**61, 3))), "tensor 'w' shape"),  # fuzzer's find
    ("ne0_not_block_multiple", tens(tinfo("w", (33,), GT.Q8_0, 0), data=bytes(64)), "tensor 'w' shape"),
    # types (TENSORS_BAD_TYPE)
    ("type_unknown", tens(tinfo("w", (8,), 42, 0), data=DATA), "tensor 'w' type"),
    ("tensor_type_huge", tens(tinfo("w", (8,), M1 >> 32, 0), data=DATA), "tensor 'w' type"),
    ("type_removed_q4_2", tens(tinfo("w", (32,), 4, 0), data=bytes(32)), "tensor 'w' type"),
    ("type_iq4_xs", tens(tinfo("w", (256,), GT.IQ4_XS, 0), data=bytes(160)), "tensor 'w' type"),
    # sizes that overflow 64-bit arithmetic (TENSORS_NBYTES_TOO_BIG, NBYTES_PAD_WRAP, DATA_MEM_SIZE_OVERFLOW)
    ("f32_ne0_2_62", tens(f32("w", (2**62,)), data=DATA), "tensor 'w' data"),
    ("i64_nbytes_too_big", tens(tinfo("w", (2**31, 2**31), GT.I64, 0), data=DATA), "tensor 'w' data"),
    ("f32_pad_wrap", tens(f32("w", (4, 2**30 - 1, 2**30 + 1)), data=DATA), "tensor 'w' data"),
    (
        "i8_mem_overflow",
        tens(tinfo("a", (BIG,), GT.I8, 0), tinfo("b", (BIG,), GT.I8, BIG), data=bytes(32)),
        "tensor 'a' data",
    ),
    # offsets (TENSORS_BAD_OFFSET, TENSORS_INCONSISTENT_ALIGN) and placement
    ("offset_max", tens(f32("w", (8,), M1), data=DATA), "tensor 'w' offset"),
    ("offset_unaligned", tens(f32("w", (8,), 4), data=DATA * 2), "tensor 'w' offset"),
    (
        "offsets_inconsistent_align",
        tens(f32("a", (3,)), f32("b", (3,), 12), data=bytes(64)),
        "tensor 'b' offset",
    ),
    ("offsets_overlap", tens(f32("a", (16,)), f32("b", (8,), 32), data=bytes(128)), "tensor 'b' offset"),
    ("offsets_same", tens(W, f32("b", (8,), 0), data=DATA * 2), "tensor 'b' offset"),
    ("offsets_gap", tens(W, f32("b", (8,), 64), data=DATA * 3), "tensor 'b' offset"),
    ("offsets_out_of_order", tens(f32("a", (8,), 32), f32("b", (8,)), data=DATA * 2), "tensor 'a' offset"),
    ("offset_past_eof", tens(f32("w", (8,), 1 << 40), data=DATA), "tensor 'w' offset"),
    # data (DATA_NOT_ENOUGH_DATA) and the data section
    ("data_one_byte_short", tens(W, data=DATA[:-1]), "tensor 'w' data"),
    ("data_missing", tens(W), "tensor 'w' data"),
    ("data_second_short", tens(W, f32("b", (8,), 32), data=DATA + DATA[:-1]), "tensor 'b' data"),
    ("data_section_past_eof", tens(f32("w", (0,)), pad=False), "data section"),
]

assert len({case for case, _, _ in BAD}) == len(BAD)


def test_llama_cpp_only_type_is_named(bad_files):
    with pytest.raises(GGUFError, match="unknown tensor type 23 \\(IQ4_XS"):
        GGUFFile.open(bad_files["type_iq4_xs"])


def write_cases(directory: Path) -> dict[str, Path]:
    paths = {}
    for case, data, _ in BAD:
        paths[case] = directory / f"{case}.gguf"
        paths[case].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    return write_cases(tmp_path_factory.mktemp("bad"))


def assert_good_message(err: GGUFError, path: Path, field: str) -> None:
    msg = str(err)
    assert str(path) in msg, msg
    assert field in err.field and field in msg, (field, msg)
    assert "\n" not in msg and not re.search(r"0x[0-9a-fA-F]{6,}", msg), msg


@pytest.mark.parametrize(("case", "field"), [(case, field) for case, _, field in BAD])
def test_bad_file_is_refused_with_a_clear_message(bad_files, case, field):
    with pytest.raises(GGUFError) as info:
        GGUFFile.open(bad_files[case])
    assert_good_message(info.value, bad_files[case], field)


_CHILD = r"""
import json, resource, sys
from pathlib import Path
from llava_edge.errors import GGUFError
from llava_edge.gguf_file import GGUFFile

def address_space():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()

cap = address_space() + (64 << 20)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
try:
    block = bytearray(128 << 20)  # must fail, or the cap proves nothing
    guard = "not enforced"
except MemoryError:
    guard = "enforced"
results = {}
for path in sorted(Path(sys.argv[1]).glob("*.gguf")):
    try:
        GGUFFile.open(path).close()
        results[path.stem] = "opened"
    except GGUFError:
        results[path.stem] = "GGUFError"
    except BaseException as e:
        results[path.stem] = f"{type(e).__name__}: {e}"
print(json.dumps({"guard": guard, "results": results}))
"""


def _no_sanitizer(env):
    """The child is pure Python under an address-space cap, which a preloaded sanitizer runtime (it
    reserves terabytes of shadow memory) cannot live with; .ci/asan.sh covers the kernels."""
    return {k: v for k, v in env.items() if k != "LD_PRELOAD"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_bad_files_need_no_big_allocation(bad_files):
    """The whole matrix again, in a process whose address space is capped at its size + 64 MiB."""
    directory = next(iter(bad_files.values())).parent
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_no_sanitizer(os.environ), "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["guard"] == "enforced"
    assert report["results"] == {case: "GGUFError" for case in sorted(bad_files)}


def test_open_refuses_missing_file_directory_and_fifo(tmp_path):
    paths = [tmp_path / "missing.gguf", tmp_path]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.gguf")  # opening it for reading would block forever
        paths.append(tmp_path / "fifo.gguf")
    for path in paths:
        with pytest.raises(GGUFError) as info:
            GGUFFile.open(path)
        assert_good_message(info.value, path, "file")


# -- files llama.cpp accepts must open -------------------------------------------------------------------


def open_bytes(tmp_path: Path, data: bytes, name: str = "x.gguf") -> GGUFFile:
    path = tmp_path / name
    path.write_bytes(data)
    return GGUFFile.open(path)


def test_minimal_files_that_llama_cpp_accepts(tmp_path):
    with open_bytes(tmp_path, gguf_bytes()) as f:  # HEADER_EMPTY: no keys, no tensors
        assert (f.version, f.metadata, f.tensors) == (3, {}, {})
    with open_bytes(tmp_path, valid(version=2)) as f:  # v2 has the same layout
        assert f.version == 2 and f.array("w").tolist() == list(range(8))
    # TENSORS_CUSTOM_ALIGN: alignment 1, tensors packed without padding
    infos = [f32("a", (3,)), tinfo("b", (1,), GT.I8, 12)]
    one = gguf_bytes([kv_u32("general.alignment", 1)], infos, bytes(13), alignment=1)
    with open_bytes(tmp_path, one) as f:
        assert f.alignment == 1 and f.tensors["b"].offset == f.data_offset + 12
    # the last tensor's padding may be missing, as llama.cpp's mmap loader allows
    with open_bytes(tmp_path, gguf_bytes([], [tinfo("w", (3,), GT.F32, 0)], DATA[:12])) as f:
        assert f.array("w").tolist() == [0, 1, 2]


def test_zero_sized_dimension_is_allowed_like_llama_cpp(tmp_path):
    # TENSORS_ZERO_DIM: llama.cpp accepts it; the tensor holds no bytes and takes no room
    data = gguf_bytes([], [tinfo("z", (8, 0), GT.F32, 0), tinfo("e", (0, 3), GT.Q8_0, 0), W], DATA)
    with open_bytes(tmp_path, data) as f:
        assert f.tensors["z"].nbytes == 0 and f.raw("z").shape == (0, 32)
        assert f.array("z").shape == (0, 8)
        assert f.raw("e").shape == (3, 0)
        assert f.array("w").tolist() == list(range(8))


# -- truncation and byte flips -----------------------------------------------------------------------------


def reference_file(path: Path) -> Path:
    """A small file written by gguf-py, the reference writer; its last tensor ends on the alignment."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_string("tokenizer.chat_template", "{{ messages }} ü")
    w.add_key_value("u8", 7, GV.UINT8)
    w.add_key_value("f64", -2.5, GV.FLOAT64)
    w.add_bool("flag", True)
    w.add_array("tokens", ["<s>", "</s>", "▁a"])
    w.add_key_value("scores", [0.5, -1.0], GV.ARRAY, sub_type=GV.FLOAT32)
    w.add_tensor("blk.0.attn_q.weight", np.arange(12, dtype=np.float16).reshape(3, 4))
    w.add_tensor("q", np.full((2, 34), 3, np.uint8), raw_dtype=GT.Q8_0)
    w.add_tensor("last", np.arange(8, dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_every_truncation_is_refused(tmp_path):
    data = reference_file(tmp_path / "ref.gguf").read_bytes()
    with GGUFFile.open(tmp_path / "ref.gguf") as f:
        assert f.tensors["last"].offset + f.tensors["last"].nbytes == len(data)  # no trailing padding
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data)
    with open(cut, "r+b") as handle:  # shortened in place: rewriting 600 files costs seconds on some disks
        for n in reversed(range(len(data))):
            handle.truncate(n)
            with pytest.raises(GGUFError) as info:
                GGUFFile.open(cut)
            assert str(cut) in str(info.value)


def test_random_byte_flips_give_a_file_or_a_gguf_error(tmp_path):
    data = reference_file(tmp_path / "ref.gguf").read_bytes()
    rng = np.random.default_rng(1)
    path = tmp_path / "flip.gguf"
    path.write_bytes(data)
    refused = 0
    with open(path, "r+b") as handle:  # rewritten in place, same size: much faster than new files
        for _ in range(1500):
            mutated = bytearray(data)
            for pos in rng.integers(0, len(data), size=rng.integers(1, 4)):
                mutated[pos] = rng.integers(0, 256)
            os.pwrite(handle.fileno(), mutated, 0)
            try:
                GGUFFile.open(path).close()
            except GGUFError:
                refused += 1
    assert refused > 100  # most flips land in the header and must be caught


# -- agreement with gguf-py ------------------------------------------------------------------------------


def test_reads_gguf_py_files_like_gguf_py(tmp_path):
    path = tmp_path / "ref.gguf"
    w = gguf.GGUFWriter(path, "llama")
    scalars = {
        GV.UINT8: 200, GV.INT8: -100, GV.UINT16: 60000, GV.INT16: -30000, GV.UINT32: 4_000_000_000,
        GV.INT32: -2_000_000_000, GV.FLOAT32: 0.1, GV.BOOL: False, GV.STRING: "héllo\n\"wörld\"",
        GV.UINT64: 2**64 - 1, GV.INT64: -(2**63), GV.FLOAT64: 1e300,
    }  # fmt: skip
    arrays = {
        GV.UINT8: [0, 255], GV.INT8: [-128, 127], GV.UINT16: [1, 65535], GV.INT16: [-32768, 5],
        GV.UINT32: [2**32 - 1], GV.INT32: [-1, 2, -3], GV.FLOAT32: [1.5, -0.25, 3e38],
        GV.BOOL: [True, False, True], GV.STRING: ["", "a", "日本"], GV.UINT64: [2**63], GV.INT64: [-5, 2**62],
        GV.FLOAT64: [0.1, -1e-300],
    }  # fmt: skip
    for vtype, value in scalars.items():
        w.add_key_value(f"s.{vtype.name}", value, vtype)
    for vtype, value in arrays.items():
        w.add_key_value(f"a.{vtype.name}", value, GV.ARRAY, sub_type=vtype)
    rng = np.random.default_rng(0)
    tensors = {
        "f32": (rng.standard_normal((2, 3, 5)).astype(np.float32), None),
        "f16": (rng.standard_normal((7,)).astype(np.float16), None),
        "f64": (rng.standard_normal((1, 2, 3, 4)), None),
        "i8": (rng.integers(-128, 127, (4, 4), dtype=np.int8), None),
        "i16": (rng.integers(-1000, 1000, (3,), dtype=np.int16), None),
        "i32": (rng.integers(-(2**31), 2**31, (2, 2), dtype=np.int32), None),
        "i64": (rng.integers(-(2**62), 2**62, (5,), dtype=np.int64), None),
        "bf16": (rng.integers(0, 2**16, (3, 4), dtype=np.uint16), GT.BF16),
        "q8_0": (rng.integers(0, 256, (3, 2 * 34), dtype=np.uint8), GT.Q8_0),
        "q4_k": (rng.integers(0, 256, (2, 144), dtype=np.uint8), GT.Q4_K),
        "q6_k": (rng.integers(0, 256, (1, 2, 210), dtype=np.uint8), GT.Q6_K),
    }
    for name, (data, raw_dtype) in tensors.items():
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    ref = gguf.GGUFReader(path)
    with GGUFFile.open(path) as f:
        assert f.version == 3 and f.alignment == 32 and f.data_offset == ref.data_offset
        for vtype, value in scalars.items():
            key = f"s.{vtype.name}"
            expected = float(np.float32(value)) if vtype == GV.FLOAT32 else value
            assert f.metadata[key] == expected
            assert type(f.metadata[key]) is type(value)
            assert f.value_types[key] == (vtype,)
        for vtype, value in arrays.items():
            key = f"a.{vtype.name}"
            assert f.value_types[key] == (GV.ARRAY, vtype)
            if vtype == GV.STRING:
                assert f.metadata[key] == value
            else:
                expected = np.array(value, dtype=ref.fields[key].parts[-1].dtype)
                assert f.metadata[key].dtype == expected.dtype and not f.metadata[key].flags.writeable
                np.testing.assert_array_equal(f.metadata[key], expected)
        assert list(f.metadata) == [k for k in ref.fields if not k.startswith("GGUF.")]
        assert list(f.tensors) == [t.name for t in ref.tensors]
        for t in ref.tensors:
            ours = f.tensors[t.name]
            assert ours.shape == tuple(int(d) for d in t.shape)
            assert ours.type == GGMLType(int(t.tensor_type))
            assert ours.offset == t.data_offset and ours.nbytes == t.n_bytes
            assert f.raw(t.name).tobytes() == np.asarray(t.data).tobytes()
            data, raw_dtype = tensors[t.name]
            if raw_dtype is None or raw_dtype == GT.BF16:
                np.testing.assert_array_equal(f.array(t.name), data)
                assert f.array(t.name).dtype == data.dtype
            else:
                assert f.array(t.name).tobytes() == data.tobytes()


@pytest.fixture(scope="module")
def llama_cpp_vocabs(request) -> list[Path]:
    """Real GGUF files written by llama.cpp's converter, from the llama-cpp-python sdist."""
    try:
        metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        pytest.skip("llama-cpp-python is not installed; its sdist carries llama.cpp's vocab GGUFs")
    return sorted((request.getfixturevalue("llama_cpp_src") / "models").glob("ggml-vocab-*.gguf"))


def test_reads_llama_cpp_vocab_like_gguf_py(llama_cpp_vocabs):
    (path,) = [p for p in llama_cpp_vocabs if p.name == "ggml-vocab-llama-spm.gguf"]
    ref = gguf.GGUFReader(path)
    with GGUFFile.open(path) as f:
        assert list(f.metadata) == [k for k in ref.fields if not k.startswith("GGUF.")]
        for key, value in f.metadata.items():
            assert [GV(int(t)) for t in ref.fields[key].types] == list(f.value_types[key])
            want = ref.fields[key].contents()
            if f.value_types[key] == (GV.FLOAT32,):
                want = float(np.float32(want))
            assert (value.tolist() if isinstance(value, np.ndarray) else value) == want, key
        assert len(f.metadata["tokenizer.ggml.tokens"]) == 32000


@pytest.mark.slow
def test_reads_every_llama_cpp_vocab(llama_cpp_vocabs):
    assert len(llama_cpp_vocabs) > 10
    for path in llama_cpp_vocabs:
        with GGUFFile.open(path) as f:
            assert len(f.metadata["tokenizer.ggml.tokens"]) > 1000, path.name


# -- views, close, limits ----------------------------------------------------------------------------------


def test_views_are_read_only_and_do_not_copy(tmp_path):
    with open_bytes(tmp_path, valid()) as f:
        raw, arr = f.raw("w"), f.array("w")
        assert raw.shape == (1, 32) and arr.shape == (8,) and arr.dtype == np.float32
        assert np.shares_memory(raw, f.raw("w")) and np.shares_memory(raw, arr)  # both point into the mmap
        with pytest.raises(ValueError):
            raw[0, 0] = 1
        with pytest.raises(ValueError):
            arr[0] = 1
        with pytest.raises(KeyError, match="no tensor named 'nope'"):
            f.raw("nope")


def test_close_with_live_views_keeps_them_valid(tmp_path):
    f = open_bytes(tmp_path, valid())
    arr = f.array("w")
    f.close()
    f.close()  # twice is fine
    assert arr.tolist() == list(range(8))  # the mapping lives as long as a view does
    with pytest.raises(ValueError, match="closed"):
        f.raw("w")
    del arr  # unmapped here; must not crash


def test_metadata_arrays_are_read_only_copies(tmp_path):
    data = gguf_bytes([kv("a", GV.ARRAY, u32(GV.INT32) + u64(3) + struct.pack("<3i", 1, -2, 3))])
    with open_bytes(tmp_path, data) as f:
        value = f.get("a")
    assert value.tolist() == [1, -2, 3] and value.dtype == np.int32  # still usable after close
    with pytest.raises(ValueError):
        value[0] = 0
    assert f.get("missing", 5) == 5


def test_custom_limits(tmp_path):
    data = gguf_bytes([kv("a", GV.ARRAY, u32(GV.UINT8) + u64(3) + b"abc"), kv_str("s", "x" * 100)])
    path = tmp_path / "l.gguf"
    path.write_bytes(data)
    GGUFFile.open(path).close()
    cases = [
        (Limits(max_array_len=2), "'a'"),
        (Limits(max_string_bytes=99), "'s'"),
        (Limits(max_kv=1), "n_kv"),
    ]
    for limits, field in cases:
        with pytest.raises(GGUFError) as info:
            GGUFFile.open(path, limits=limits)
        assert_good_message(info.value, path, field)
    with pytest.raises(ValueError):
        Limits(max_dims=5)
