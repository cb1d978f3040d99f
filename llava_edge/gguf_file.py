"""Validated GGUF reader.

`GGUFFile.open` parses and checks the whole header (metadata and tensor table) before anything else runs,
then serves tensor data as read-only numpy views into a shared read-only mmap. Every count and length is
checked against the bytes left in the file *before* it is used to allocate or loop, so a hostile file gets
a one-line GGUFError naming the file and the field, never a crash or an allocation larger than the file.

What is accepted is what llama.cpp's gguf.cpp accepts (GGUF v2/v3, little-endian), with these differences:
- refused although llama.cpp allows them: empty tensor names, tensors with 0 dimensions, strings that are
  not UTF-8, BOOL bytes other than 0 and 1, and anything over the documented `Limits`;
- allowed although llama.cpp's full loader refuses it: a file that ends right after the last tensor's data
  without the padding up to the alignment (llama.cpp's mmap model loader accepts that too).
A dimension of 0 is allowed, as llama.cpp allows it (the tensor then holds no bytes). Tensor data must be
packed in table order at aligned offsets, exactly as llama.cpp requires (gguf.cpp: "tensor has offset X,
expected Y"), which rules out overlaps, gaps and out-of-order data in one check.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from enum import IntEnum
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GGUFError
from .ggml_types import BLOCK_LAYOUT, GGMLType
from .hugepages import prefer_huge_pages

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # v2 and v3 share one layout; v3 only added big-endian files, which we refuse
GGUF_DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64  # llama.cpp stores names in char[64] with a terminating NUL: at most 63 bytes
INT64_MAX = 2**63 - 1


class GGUFValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Fixed-size value types -> numpy dtype (little-endian, as stored). STRING and ARRAY have no fixed size.
VALUE_DTYPE: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("?"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}

# Tensor types that array() returns as typed values; the others (quantized) come back as raw bytes.
TENSOR_DTYPE: dict[GGMLType, np.dtype] = {
    GGMLType.F32: np.dtype("<f4"),
    GGMLType.F16: np.dtype("<f2"),
    GGMLType.F64: np.dtype("<f8"),
    GGMLType.I8: np.dtype("<i1"),
    GGMLType.I16: np.dtype("<i2"),
    GGMLType.I32: np.dtype("<i4"),
    GGMLType.I64: np.dtype("<i8"),
    GGMLType.BF16: np.dtype("<u2"),  # numpy has no bfloat16: the bits, for the caller to widen
}

# llama.cpp types we cannot size or run, named so that the error tells the user what the file holds.
_LLAMA_CPP_ONLY_TYPES = dict(
    zip(
        (16, 17, 18, 19, 20, 21, 22, 23, 29, 34, 35, 39, 40, 41),
        "IQ2_XXS IQ2_XS IQ3_XXS IQ1_S IQ4_NL IQ3_S IQ2_S IQ4_XS IQ1_M TQ1_0 TQ2_0 MXFP4 NVFP4 Q1_0".split(),
        strict=True,
    )
)

# The smallest possible encodings, to bound counts by the bytes left before looping over them.
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, 1-byte key, value type, 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, 1-byte name, n_dims, one dim, type, offset
_STRING_LENGTH_BYTES = 8


@dataclass(frozen=True)
class Limits:
    """Caps on what a GGUF file may declare, on top of "it must fit in the file".

    The defaults are far above any real model (Llama-3-405B has ~1.1k tensors and a few dozen keys;
    vocabularies and merge lists hold a few hundred thousand strings; chat templates are tens of KiB) and
    low enough that parsing stays cheap. Metadata is copied into Python objects: numeric arrays cost their
    size in the file; a string array costs ~60-90 bytes of Python objects per element, at most ~8x its
    size in the file.
    """

    max_tensors: int = 1 << 16
    max_kv: int = 1 << 16
    max_key_bytes: int = 1 << 16  # metadata key length in UTF-8 bytes
    max_string_bytes: int = 1 << 26  # 64 MiB: one string value, or one element of a string array
    max_array_len: int = 1 << 24  # elements in one metadata array
    max_dims: int = GGML_MAX_DIMS  # can only be lowered: ggml tensors have at most 4 dimensions
    max_name_bytes: int = GGML_MAX_NAME - 1  # tensor name length; can only be lowered, as ggml stores 63
    max_alignment: int = 1 << 20  # general.alignment

    def __post_init__(self) -> None:
        if not 1 <= self.max_dims <= GGML_MAX_DIMS:
            raise ValueError(f"Limits.max_dims must be 1..{GGML_MAX_DIMS}, got {self.max_dims}")
        if not 1 <= self.max_name_bytes <= GGML_MAX_NAME - 1:
            raise ValueError(
                f"Limits.max_name_bytes must be 1..{GGML_MAX_NAME - 1}, got {self.max_name_bytes}"
            )


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: shape[0] = ne0 = the contiguous row length
    type: GGMLType
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def n_rows(self) -> int:
        return prod(self.shape[1:])

    @property
    def row_bytes(self) -> int:
        block, size = BLOCK_LAYOUT[self.type]
        return self.shape[0] // block * size


def show(text: str | bytes, limit: int = 60) -> str:
    """A key or name as it goes into a one-line message: quoted, escaped, and cut if long."""
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} long)"
    return repr(text)


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def align_up(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


class _Cursor:
    """Little-endian reads from the mapped file; each checks that the bytes exist before touching them."""

    def __init__(self, buf: Any, path: Path):
        self.buf = buf
        self.path = path
        self.pos = 0
        self.size = len(buf)

    @property
    def left(self) -> int:
        return self.size - self.pos

    def error(self, field: str, problem: str) -> GGUFError:
        return GGUFError(self.path, field, problem)

    def need(self, n: int, field: str) -> None:
        if n > self.left:
            raise self.error(
                field,
                f"needs {n} bytes at offset {self.pos} but the file ends at {self.size} "
                "(truncated file or corrupt length)",
            )

    def unpack(self, fmt: str, field: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, field)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def u32(self, field: str) -> int:
        return self.unpack("<I", field)

    def u64(self, field: str) -> int:
        return self.unpack("<Q", field)

    def string(self, field: str, cap: int, what: str = "string") -> str:
        n = self.u64(f"{field} length")
        if n > cap:
            raise self.error(field, f"{what} length {n} is over the limit of {cap} bytes")
        self.need(n, field)
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(field, f"{what} is not valid UTF-8: {show(data)}") from None

    def array(self, dtype: np.dtype, count: int, field: str) -> np.ndarray:
        self.need(count * dtype.itemsize, field)
        values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += count * dtype.itemsize
        return values


def _value_type(code: int, field: str, cur: _Cursor) -> GGUFValueType:
    try:
        return GGUFValueType(code)
    except ValueError:
        raise cur.error(field, f"unknown value type {code} (known: 0..12)") from None


def _read_bools(cur: _Cursor, count: int, field: str) -> np.ndarray:
    raw = cur.array(np.dtype("u1"), count, field)
    if raw.size and raw.max() > 1:
        raise cur.error(field, f"BOOL value {int(raw.max())} is neither 0 nor 1")
    return raw.view(np.bool_)


def _read_value(cur: _Cursor, vtype: GGUFValueType, field: str, limits: Limits) -> Any:
    if vtype == GGUFValueType.STRING:
        return cur.string(field, limits.max_string_bytes)
    if vtype == GGUFValueType.BOOL:
        return bool(_read_bools(cur, 1, field)[0])
    # .item() turns the numpy scalar into the Python int/float of exactly that value
    return cur.array(VALUE_DTYPE[vtype], 1, field)[0].item()


_U64 = struct.Struct("<Q")


def _read_strings(cur: _Cursor, count: int, field: str, cap: int) -> list[str]:
    """cur.string() count times, inlined: vocabularies hold up to ~500k strings and this loop is the cost."""
    buf, pos, size, unpack = cur.buf, cur.pos, cur.size, _U64.unpack_from
    out: list[str] = []
    append = out.append
    try:
        for _ in range(count):
            (n,) = unpack(buf, pos)  # struct.error past the end of the file
            end = pos + 8 + n
            if n > cap or end > size:
                break
            append(buf[pos + 8 : end].decode("utf-8"))
            pos = end
        else:
            cur.pos = pos
            return out
    except (struct.error, UnicodeDecodeError):
        pass
    cur.pos = pos
    cur.string(f"{field}[{len(out)}]", cap)  # the failing element again, checked, to raise its exact error
    raise AssertionError(f"{field}[{len(out)}] failed once and then read fine")  # unreachable


def _read_array(cur: _Cursor, field: str, limits: Limits) -> tuple[GGUFValueType, Any]:
    etype = _value_type(cur.u32(f"{field} element type"), f"{field} element type", cur)
    if etype == GGUFValueType.ARRAY:
        raise cur.error(field, "nested arrays are not allowed (llama.cpp refuses them too)")
    count = cur.u64(f"{field} count")
    if count > limits.max_array_len:
        raise cur.error(field, f"array of {count} elements is over the limit of {limits.max_array_len}")
    min_bytes = _STRING_LENGTH_BYTES if etype == GGUFValueType.STRING else VALUE_DTYPE[etype].itemsize
    if count * min_bytes > cur.left:
        raise cur.error(
            field,
            f"array of {count} {etype.name} elements needs at least {count * min_bytes} bytes, "
            f"but only {cur.left} are left in the file",
        )
    if etype == GGUFValueType.STRING:
        return etype, _read_strings(cur, count, field, limits.max_string_bytes)
    values = (
        _read_bools(cur, count, field)
        if etype == GGUFValueType.BOOL
        else cur.array(VALUE_DTYPE[etype], count, field)
    )
    values.setflags(write=False)
    return etype, values


def _read_metadata(cur: _Cursor, n_kv: int, limits: Limits) -> tuple[dict[str, Any], dict[str, tuple]]:
    metadata: dict[str, Any] = {}
    value_types: dict[str, tuple] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}", limits.max_key_bytes, what="key")
        if not key:
            raise cur.error(f"metadata key #{i}", "key is empty")
        field = f"metadata key {show(key)}"
        if key in metadata:
            raise cur.error(field, f"duplicate key (key #{i} repeats an earlier one)")
        vtype = _value_type(cur.u32(f"{field} type"), f"{field} type", cur)
        if vtype == GGUFValueType.ARRAY:
            etype, metadata[key] = _read_array(cur, field, limits)
            value_types[key] = (vtype, etype)
        else:
            metadata[key] = _read_value(cur, vtype, field, limits)
            value_types[key] = (vtype,)
    return metadata, value_types


def _alignment(cur: _Cursor, metadata: dict[str, Any], value_types: dict[str, tuple], limits: Limits) -> int:
    if ALIGNMENT_KEY not in metadata:
        return GGUF_DEFAULT_ALIGNMENT
    field = f"metadata key {show(ALIGNMENT_KEY)}"
    vtypes = value_types[ALIGNMENT_KEY]
    if vtypes != (GGUFValueType.UINT32,):
        found = "ARRAY of " + vtypes[1].name if len(vtypes) == 2 else vtypes[0].name
        raise cur.error(field, f"must be a UINT32, found {found}")
    alignment = metadata[ALIGNMENT_KEY]
    if not is_power_of_two(alignment):
        raise cur.error(field, f"alignment {alignment} is not a power of two")
    if alignment > limits.max_alignment:
        raise cur.error(field, f"alignment {alignment} is over the limit of {limits.max_alignment}")
    return alignment


def _read_tensor_info(
    cur: _Cursor, i: int, limits: Limits
) -> tuple[str, tuple[int, ...], GGMLType, int, int]:
    """One tensor-table entry: (name, shape, type, offset relative to the data section, nbytes)."""
    name = cur.string(f"tensor #{i} name", limits.max_name_bytes, what="name")
    if not name:
        raise cur.error(f"tensor #{i} name", "name is empty")
    field = f"tensor {show(name)}"

    n_dims = cur.u32(f"{field} n_dims")
    if not 1 <= n_dims <= limits.max_dims:
        raise cur.error(f"{field} n_dims", f"has {n_dims} dimensions; a tensor has 1 to {limits.max_dims}")
    shape = tuple(cur.u64(f"{field} shape") for _ in range(n_dims))
    for j, ne in enumerate(shape):
        if ne > INT64_MAX:
            raise cur.error(
                f"{field} shape", f"dimension {j} is {ne} ({ne - 2**64} as int64); it must be 0..2^63-1"
            )
    # zeros are skipped so that (0, 2^62, 2^62) is refused too: its row count would not fit an int64
    if prod(ne for ne in shape if ne) > INT64_MAX:
        raise cur.error(f"{field} shape", f"shape {list(shape)} has more than 2^63-1 elements")
    # An empty tensor passes the size checks below (0 bytes), but numpy still multiplies its other
    # dimensions by the element size when it shapes a view: keep that under 2^63 for 8-byte elements.
    if 0 in shape and prod(ne for ne in shape if ne) > INT64_MAX // 8:
        raise cur.error(f"{field} shape", f"empty shape {list(shape)}: its other dimensions are too large")

    code = cur.u32(f"{field} type")
    try:
        ggml_type = GGMLType(code)
    except ValueError:
        problem = f"unknown tensor type {code}"
        if code in _LLAMA_CPP_ONLY_TYPES:
            problem += f" ({_LLAMA_CPP_ONLY_TYPES[code]}, a llama.cpp type that llava-edge cannot read)"
        raise cur.error(f"{field} type", problem) from None
    block, size = BLOCK_LAYOUT[ggml_type]
    if shape[0] % block:
        raise cur.error(
            f"{field} shape",
            f"row length {shape[0]} is not a multiple of the {ggml_type.name} block size {block}",
        )
    offset = cur.u64(f"{field} offset")
    return name, shape, ggml_type, offset, shape[0] // block * size * prod(shape[1:])


def _read_tensors(
    cur: _Cursor, n_tensors: int, alignment: int, limits: Limits
) -> tuple[int, dict[str, TensorInfo]]:
    """The tensor table, then the placement checks; returns (data_offset, tensors)."""
    entries = []
    names: set[str] = set()
    for i in range(n_tensors):
        entry = _read_tensor_info(cur, i, limits)
        if entry[0] in names:
            raise cur.error(f"tensor {show(entry[0])} name", f"duplicate tensor name (tensor #{i})")
        names.add(entry[0])
        entries.append(entry)

    data_offset = align_up(cur.pos, alignment)
    if n_tensors and data_offset > cur.size:
        raise cur.error(
            "data section", f"starts at {data_offset}, past the end of the file ({cur.size} bytes)"
        )

    tensors: dict[str, TensorInfo] = {}
    expected = 0  # llama.cpp requires each tensor right after the previous one, padded to the alignment
    previous = None
    for name, shape, ggml_type, offset, nbytes in entries:
        field = f"tensor {show(name)} offset"
        if offset % alignment:
            raise cur.error(field, f"offset {offset} is not a multiple of the alignment {alignment}")
        if offset < expected:
            raise cur.error(
                field, f"offset {offset} overlaps tensor {show(previous)}, which ends at {expected}"
            )
        if offset > expected:
            raise cur.error(
                field,
                f"offset {offset} leaves a gap; expected {expected} "
                "(tensor data must be packed in table order, as llama.cpp requires)",
            )
        start = data_offset + offset
        if start + nbytes > cur.size:
            raise cur.error(
                f"tensor {show(name)} data",
                f"{nbytes} bytes at offset {start} run past the end of the file ({cur.size} bytes)",
            )
        tensors[name] = TensorInfo(name, shape, ggml_type, start, nbytes)
        expected = offset + align_up(nbytes, alignment)
        previous = name
    return data_offset, tensors


class GGUFFile:
    """A parsed, validated GGUF file whose tensor data stays in a read-only shared mmap.

    Use `GGUFFile.open(path)`, as a context manager or with `.close()`. Arrays from `raw()` and `array()`
    are views into the mapping (no copy). `close()` is safe while such views are alive: the mapping then
    stays until the last view is freed, and the views stay valid. Metadata values are copies and do not
    depend on the file at all. The file must not be truncated by someone else while mapped (SIGBUS).

    Attributes: `path`; `version` (2 or 3); `alignment`; `data_offset` (absolute start of tensor data);
    `metadata` (key -> value, file order: int/float/bool/str scalars, list[str] for string arrays,
    read-only numpy arrays of the exact dtype for numeric and bool arrays); `value_types` (key ->
    (GGUFValueType,) or (ARRAY, element type), enough for a writer to reproduce the file);
    `tensors` (name -> TensorInfo, file order).
    """

    def __init__(
        self,
        path: Path,
        buf: mmap.mmap | None,
        version: int,
        alignment: int,
        data_offset: int,
        metadata: dict[str, Any],
        value_types: dict[str, tuple],
        tensors: dict[str, TensorInfo],
    ):
        self.path = path
        self._mm = buf
        self.version = version
        self.alignment = alignment
        self.data_offset = data_offset
        self.metadata = metadata
        self.value_types = value_types
        self.tensors = tensors

    @classmethod
    def open(
        cls, path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS, huge_pages: bool = False
    ) -> GGUFFile:
        """huge_pages: fault the whole file in now, in 2 MiB pages where Linux can (hugepages.py): for model
        weights that decode streams every token; costs one read of the file when its cache is refreshed."""
        path = Path(path)
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # before open(): opening a FIFO would block
                raise GGUFError(path, "file", "is not a regular file")
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise GGUFError(path, "file", "is not a regular file")
                if st.st_size == 0:
                    raise GGUFError(path, "magic", "the file is empty")
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # read-only, shared
                try:
                    parsed = _parse(_Cursor(buf, path), limits)
                    if huge_pages:  # only a file that parsed: a hostile one is never read in whole
                        buf = prefer_huge_pages(buf, f.fileno(), st.st_size)
                except BaseException:
                    _unmap(buf)
                    raise
        except OSError as e:
            raise GGUFError(path, "file", f"cannot open: {e.strerror or e}") from None
        return cls(path, buf, *parsed)

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        buf, self._mm = self._mm, None
        if buf is not None:
            _unmap(buf)

    def __repr__(self) -> str:
        counts = f"{len(self.metadata)} keys, {len(self.tensors)} tensors"
        return f"GGUFFile({str(self.path)!r}, v{self.version}, {counts})"

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def _info(self, name: str) -> TensorInfo:
        if self._mm is None:
            raise ValueError(f"{self.path}: the file is closed")
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {show(name)}") from None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view, shape [n_rows, row_bytes]."""
        info = self._info(name)
        data = np.frombuffer(self._mm, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        return data.reshape(info.n_rows, info.row_bytes)

    def array(self, name: str) -> np.ndarray:
        """Float and integer tensors as typed read-only views in numpy order (GGUF shape reversed).

        BF16 comes back as its uint16 bits; quantized types as raw() bytes.
        """
        info = self._info(name)
        dtype = TENSOR_DTYPE.get(info.type)
        if dtype is None:
            return self.raw(name)
        data = np.frombuffer(self._mm, dtype=dtype, count=info.nbytes // dtype.itemsize, offset=info.offset)
        return data.reshape(info.shape[::-1])


def _unmap(buf: mmap.mmap) -> None:
    try:
        buf.close()
    except BufferError:
        pass  # views from raw()/array() still use it; it is unmapped when the last one is freed


def _parse(cur: _Cursor, limits: Limits) -> tuple:
    """Header, metadata and tensor table, checked; returns the rest of GGUFFile's constructor arguments."""
    magic = bytes(cur.buf[: min(4, cur.size)])
    if magic != GGUF_MAGIC:
        raise cur.error("magic", f"expected b'GGUF', found {magic!r}: not a GGUF file")
    cur.pos = 4
    version = cur.u32("version")
    if version not in GGUF_VERSIONS:
        if version == 0:
            problem = "version 0 is not a GGUF version (corrupt header)"
        elif version & 0xFFFF == 0:
            problem = f"version {version} looks byte-swapped: big-endian GGUF files are not supported"
        elif version == 1:
            problem = "GGUF version 1 is obsolete and not supported; reconvert the model"
        else:
            problem = f"unsupported GGUF version {version}; this reader supports versions 2 and 3"
        raise cur.error("version", problem)

    n_tensors = cur.u64("n_tensors")
    n_kv = cur.u64("n_kv")
    if n_tensors > limits.max_tensors:
        raise cur.error("n_tensors", f"{n_tensors} tensors is over the limit of {limits.max_tensors}")
    if n_tensors * _MIN_TENSOR_INFO_BYTES > cur.left:
        raise cur.error(
            "n_tensors", f"{n_tensors} tensors cannot fit in the {cur.left} bytes left in the file"
        )
    if n_kv > limits.max_kv:
        raise cur.error("n_kv", f"{n_kv} metadata keys is over the limit of {limits.max_kv}")
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > cur.left:
        raise cur.error(
            "n_kv",
            f"{n_kv} metadata keys and {n_tensors} tensors cannot fit in the {cur.left} bytes left",
        )

    metadata, value_types = _read_metadata(cur, n_kv, limits)
    alignment = _alignment(cur, metadata, value_types, limits)
    data_offset, tensors = _read_tensors(cur, n_tensors, alignment, limits)
    return version, alignment, data_offset, metadata, value_types, tensors
