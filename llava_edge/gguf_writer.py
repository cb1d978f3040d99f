"""Streaming GGUF writer (version 3, little-endian): tensors go to disk one at a time, in declared order.

Declare metadata (`add`) and tensors (`add_tensor_info`) first; the header, metadata and tensor table are
written when the first tensor is written (or at close), with offsets computed from the declared shapes and
types. Output goes to a hidden temporary file next to the target and is renamed into place only when
`close()` succeeds, so an error or an interrupted run never leaves a partial file at the target path.

The writer refuses anything `GGUFFile.open` would refuse under the default `Limits`, so whatever it writes
can be read back. Caller mistakes (wrong byte size, wrong order, values out of range) raise ValueError or
TypeError naming the key or tensor.

Type inference in `add` (an explicit `vtype` / `element_type` overrides it):
  bool -> BOOL; int -> UINT32 if in [0, 2^32), UINT64 if in [2^32, 2^64), INT64 if negative;
  float -> FLOAT32; str -> STRING; numpy scalar -> its own type;
  list/tuple of str -> ARRAY of STRING, of bool -> ARRAY of BOOL, of int -> ARRAY of the type the int rule
  gives for its smallest and largest element, of float (or ints and floats) -> ARRAY of FLOAT32;
  1-D numpy array -> ARRAY of the matching type (float16 has no GGUF value type and is refused).
"""

from __future__ import annotations

import os
import secrets
import struct
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import IO, Any

import numpy as np

from .ggml_types import BLOCK_LAYOUT, GGMLType
from .gguf_file import (
    ALIGNMENT_KEY,
    DEFAULT_LIMITS,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    INT64_MAX,
    TENSOR_DTYPE,
    VALUE_DTYPE,
    GGUFValueType,
    align_up,
    is_power_of_two,
    show,
)

GGUF_WRITE_VERSION = 3
_V = GGUFValueType
_INT_TYPES = (_V.UINT8, _V.INT8, _V.UINT16, _V.INT16, _V.UINT32, _V.INT32, _V.UINT64, _V.INT64)
_DTYPE_TO_VALUE = {dtype: vtype for vtype, dtype in VALUE_DTYPE.items()}


def _int_range(vtype: GGUFValueType) -> tuple[int, int]:
    info = np.iinfo(VALUE_DTYPE[vtype])
    return int(info.min), int(info.max)


def _infer_int(key: str, lo: int, hi: int) -> GGUFValueType:
    if lo >= 0 and hi < 2**32:
        return _V.UINT32
    if lo >= 0 and hi < 2**64:
        return _V.UINT64
    if lo >= -(2**63) and hi <= INT64_MAX:
        return _V.INT64
    raise ValueError(f"metadata key {show(key)}: integers {lo}..{hi} fit no single GGUF integer type")


def _infer_value_type(key: str, value: Any) -> tuple[GGUFValueType, GGUFValueType | None]:
    if isinstance(value, (bool, np.bool_)):
        return _V.BOOL, None
    if isinstance(value, np.generic) and value.dtype.newbyteorder("<") in _DTYPE_TO_VALUE:
        return _DTYPE_TO_VALUE[value.dtype.newbyteorder("<")], None
    if isinstance(value, int):
        return _infer_int(key, value, value), None
    if isinstance(value, float):
        return _V.FLOAT32, None
    if isinstance(value, str):
        return _V.STRING, None
    if isinstance(value, np.ndarray) and value.dtype.kind not in "UO":
        dtype = value.dtype.newbyteorder("<") if value.dtype.byteorder != "|" else value.dtype
        if dtype not in _DTYPE_TO_VALUE:
            raise TypeError(f"metadata key {show(key)}: numpy {value.dtype} has no GGUF value type")
        return _V.ARRAY, _DTYPE_TO_VALUE[dtype]
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        if not items:
            raise ValueError(f"metadata key {show(key)}: an empty array needs an explicit element_type")
        if all(isinstance(v, str) for v in items):
            return _V.ARRAY, _V.STRING
        if all(isinstance(v, (bool, np.bool_)) for v in items):
            return _V.ARRAY, _V.BOOL
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
            return _V.ARRAY, _infer_int(key, int(min(items)), int(max(items)))
        if all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in items
        ):
            return _V.ARRAY, _V.FLOAT32
        raise TypeError(f"metadata key {show(key)}: cannot infer one GGUF element type for this list")
    raise TypeError(f"metadata key {show(key)}: cannot store a {type(value).__name__} in GGUF")


def _encode_string(field: str, value: Any, cap: int, what: str = "string") -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{field}: expected str, got {type(value).__name__}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{field}: string cannot be encoded as UTF-8 ({e.reason})") from None
    if len(data) > cap:
        raise ValueError(f"{field}: {what} of {len(data)} bytes is over the reader's limit of {cap}")
    return struct.pack("<Q", len(data)) + data


def _number_kind(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    return type(value).__name__


_NUMPY_KIND = {"b": "bool", "i": "int", "u": "int", "f": "float"}


def _encode_numbers(field: str, values: Any, etype: GGUFValueType) -> bytes:
    """A list or 1-D array of a fixed-size type, range-checked first (numpy would wrap silently)."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"{field}: GGUF arrays are 1-D, got shape {values.shape}")
        kinds = {_NUMPY_KIND.get(values.dtype.kind, str(values.dtype))} if values.size else set()
    else:
        values = list(values)
        kinds = {_number_kind(v) for v in values}
    if kinds - {"bool", "int", "float"}:
        raise TypeError(f"{field}: {etype.name} needs numbers, got {', '.join(sorted(kinds))}")
    if etype == _V.BOOL or etype in _INT_TYPES:
        if "float" in kinds:
            raise TypeError(
                f"{field}: {etype.name} needs {'booleans' if etype == _V.BOOL else 'integers'}, got floats"
            )
        lo, hi = (0, 1) if etype == _V.BOOL else _int_range(etype)
        # compared as Python ints: numpy would wrap, or compare int64 with uint64 through float64
        if len(values):
            low, high = (
                (values.min(), values.max()) if isinstance(values, np.ndarray) else (min(values), max(values))
            )
            if int(low) < lo or int(high) > hi:
                bad = int(low) if int(low) < lo else int(high)
                raise ValueError(f"{field}: {bad} does not fit {etype.name} ({lo}..{hi})")
    try:
        wide = np.asarray(values, dtype=np.float64 if etype == _V.FLOAT32 else VALUE_DTYPE[etype])
    except OverflowError:
        raise ValueError(f"{field}: a value is too large for {etype.name}") from None
    if etype == _V.FLOAT32:
        with np.errstate(over="ignore"):
            narrow = wide.astype(np.float32)
        if (np.isinf(narrow) & np.isfinite(wide)).any():
            raise ValueError(f"{field}: a value is too large for FLOAT32; use FLOAT64")
        wide = narrow
    return wide.astype(VALUE_DTYPE[etype]).tobytes()


def encode_value(
    key: str, value: Any, vtype: GGUFValueType, element_type: GGUFValueType | None = None
) -> bytes:
    """The bytes of one metadata value (type code(s), then the value) as GGUF stores it after the key."""
    field = f"metadata key {show(key)}"
    limits = DEFAULT_LIMITS
    if vtype == _V.STRING:
        return struct.pack("<I", vtype) + _encode_string(field, value, limits.max_string_bytes)
    if vtype != _V.ARRAY:
        if element_type is not None:
            raise ValueError(f"{field}: element_type is only for ARRAY values")
        if isinstance(value, (str, bytes, list, tuple, np.ndarray)):
            raise TypeError(f"{field}: {vtype.name} needs a single number, got {type(value).__name__}")
        return struct.pack("<I", vtype) + _encode_numbers(field, [value], vtype)
    if element_type is None or element_type == _V.ARRAY:
        raise ValueError(f"{field}: an ARRAY needs an element_type other than ARRAY (no nested arrays)")
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{field}: ARRAY needs a list, tuple or numpy array, got {type(value).__name__}")
    if len(value) > limits.max_array_len:
        raise ValueError(
            f"{field}: {len(value)} elements is over the reader's limit of {limits.max_array_len}"
        )
    head = struct.pack("<IIQ", vtype, element_type, len(value))
    if element_type == _V.STRING:
        return head + b"".join(
            _encode_string(f"{field}[{i}]", v, limits.max_string_bytes) for i, v in enumerate(value)
        )
    return head + _encode_numbers(field, value, element_type)


def encode_kv(key: str, value: Any, vtype: GGUFValueType, element_type: GGUFValueType | None = None) -> bytes:
    """One whole metadata entry: the key, the type code(s), the value."""
    encoded_key = _encode_string(f"metadata key {show(key)}", key, DEFAULT_LIMITS.max_key_bytes, "key")
    return encoded_key + encode_value(key, value, vtype, element_type)


def _discard(fh: IO[bytes], tmp: Path) -> None:
    try:
        fh.close()  # flushes the buffer: fails again on a full disk, and the file must still go
    except OSError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class _Declared:
    name: str
    encoded_name: bytes  # length-prefixed UTF-8, as it goes into the tensor table
    shape: tuple[int, ...]
    type: GGMLType
    nbytes: int


class GGUFWriter:
    """Streaming writer; see the module docstring. Use as a context manager, or call close()/abort()."""

    def __init__(self, path: str | os.PathLike, *, alignment: int = GGUF_DEFAULT_ALIGNMENT):
        self.path = Path(path)
        _check_alignment(alignment)
        self.alignment = alignment
        self._alignment_from_ctor = alignment != GGUF_DEFAULT_ALIGNMENT
        self._kv: dict[str, bytes] = {}
        self._tensors: list[_Declared] = []
        self._names: set[str] = set()
        self._next = 0  # index of the next tensor write_tensor expects
        self._fh: IO[bytes] | None = None
        self._tmp: Path | None = None
        self._cleanup: weakref.finalize | None = None
        self._closed = False

    # -- declaring -------------------------------------------------------------------------------------

    def _check_declaring(self, what: str) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: cannot {what}: the writer is closed")
        if self._fh is not None:
            raise ValueError(f"{self.path}: cannot {what} after the first tensor has been written")

    def add(
        self,
        key: str,
        value: Any,
        vtype: GGUFValueType | None = None,
        *,
        element_type: GGUFValueType | None = None,
    ) -> None:
        """Add one metadata key. Types are inferred as the module docstring says unless given."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata key {key!r}: keys must be non-empty strings")
        field = f"metadata key {show(key)}"
        self._check_declaring(f"add {field}")
        if key in self._kv:
            raise ValueError(f"{field}: added twice")
        if vtype is None and element_type is not None:
            vtype = _V.ARRAY
        elif vtype is None:
            vtype, element_type = _infer_value_type(key, value)
        vtype = GGUFValueType(vtype)
        element_type = None if element_type is None else GGUFValueType(element_type)
        encoded = encode_kv(key, value, vtype, element_type)
        if key == ALIGNMENT_KEY:
            self._set_alignment_from_key(value, vtype)
        self._kv[key] = encoded

    def _set_alignment_from_key(self, value: Any, vtype: GGUFValueType) -> None:
        if vtype != _V.UINT32:
            raise ValueError(f"metadata key {show(ALIGNMENT_KEY)}: must be UINT32, got {vtype.name}")
        _check_alignment(value)
        if self._alignment_from_ctor and value != self.alignment:
            raise ValueError(
                f"metadata key {show(ALIGNMENT_KEY)}: {value} contradicts alignment={self.alignment} "
                "given to GGUFWriter"
            )
        self.alignment = int(value)

    def add_tensor_info(self, name: str, shape: tuple[int, ...], ggml_type: GGMLType) -> None:
        """Declare a tensor; shape in GGUF order (ne0, the contiguous row length, first)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor {name!r}: names must be non-empty strings")
        field = f"tensor {show(name)}"
        self._check_declaring(f"declare {field}")
        if name in self._names:
            raise ValueError(f"{field}: declared twice")
        encoded_name = _encode_string(field, name, DEFAULT_LIMITS.max_name_bytes, "name")
        ggml_type = GGMLType(ggml_type)
        shape = tuple(int(ne) for ne in shape)
        if not 1 <= len(shape) <= DEFAULT_LIMITS.max_dims:
            raise ValueError(f"{field}: shape {shape} must have 1 to {DEFAULT_LIMITS.max_dims} dimensions")
        if any(not 0 <= ne <= INT64_MAX for ne in shape) or prod(ne for ne in shape if ne) > INT64_MAX:
            raise ValueError(f"{field}: shape {shape} has a negative or too large dimension")
        block, size = BLOCK_LAYOUT[ggml_type]
        if shape[0] % block:
            raise ValueError(
                f"{field}: row length {shape[0]} is not a multiple of the {ggml_type.name} block {block}"
            )
        nbytes = shape[0] // block * size * prod(shape[1:])
        self._tensors.append(_Declared(name, encoded_name, shape, ggml_type, nbytes))
        self._names.add(name)

    # -- writing ---------------------------------------------------------------------------------------

    def _header(self) -> bytes:
        kv = dict(self._kv)
        if self.alignment != GGUF_DEFAULT_ALIGNMENT and ALIGNMENT_KEY not in kv:
            kv[ALIGNMENT_KEY] = encode_kv(ALIGNMENT_KEY, self.alignment, _V.UINT32)
        parts = [
            GGUF_MAGIC,
            struct.pack("<IQQ", GGUF_WRITE_VERSION, len(self._tensors), len(kv)),
            *kv.values(),
        ]
        offset = 0  # relative to the data section; each tensor starts aligned, as readers require
        for t in self._tensors:
            parts.append(t.encoded_name)
            parts.append(struct.pack(f"<I{len(t.shape)}QIQ", len(t.shape), *t.shape, t.type, offset))
            offset += align_up(t.nbytes, self.alignment)
        header = b"".join(parts)
        return header + bytes(align_up(len(header), self.alignment) - len(header))

    def _open(self) -> None:
        """Create the temporary file and write everything up to the data section."""
        header = self._header()  # built first: a bad key raises before anything touches the disk
        # a random hidden name in the target's directory, so that the final rename is atomic; created with
        # mode 0666 minus the umask, like any new file (tempfile.mkstemp would make the output 0600)
        tmp = self.path.parent / f".{self.path.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        self._fh = os.fdopen(fd, "wb", buffering=1 << 20)
        self._tmp = tmp
        self._cleanup = weakref.finalize(self, _discard, self._fh, tmp)  # even if never closed
        self._fh.write(header)

    def write_tensor(self, name: str, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Write the next declared tensor's data (exactly its byte size), then pad to the alignment.

        numpy data must have the tensor type's dtype (float32 for F32, uint16 bits for BF16, ...) or be
        uint8 bytes; any shape, as long as the byte count matches.
        """
        if self._closed:
            raise ValueError(f"{self.path}: cannot write tensor {show(name)}: the writer is closed")
        if self._next >= len(self._tensors) or self._tensors[self._next].name != name:
            if name not in self._names:
                raise ValueError(f"tensor {show(name)}: was never declared with add_tensor_info")
            expected = self._tensors[self._next].name if self._next < len(self._tensors) else None
            raise ValueError(f"tensor {show(name)}: written out of order; expected {show(expected or '')}")
        info = self._tensors[self._next]
        view = _as_bytes(info, data)
        if view.nbytes != info.nbytes:
            raise ValueError(
                f"tensor {show(name)}: {info.type.name} {list(info.shape)} is {info.nbytes} bytes, "
                f"got {view.nbytes}"
            )
        if self._fh is None:
            self._open()
        self._fh.write(view)
        self._fh.write(bytes(align_up(info.nbytes, self.alignment) - info.nbytes))
        self._next += 1

    def close(self) -> None:
        """Finish the file and move it into place. On any error the temporary file is removed."""
        if self._closed:
            return
        try:
            if self._next < len(self._tensors):
                raise ValueError(f"tensor {show(self._tensors[self._next].name)}: declared but never written")
            if self._fh is None:
                self._open()
            self._fh.flush()
            os.fsync(self._fh.fileno())  # data on disk before the rename makes it visible
            self._fh.close()
            os.replace(self._tmp, self.path)
            self._cleanup.detach()
            self._closed = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written so far; the target path is left as it was."""
        self._closed = True
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> GGUFWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _check_alignment(alignment: Any) -> None:
    if not isinstance(alignment, (int, np.integer)) or not is_power_of_two(int(alignment)):
        raise ValueError(f"alignment must be a power of two, got {alignment!r}")
    if alignment > DEFAULT_LIMITS.max_alignment:
        raise ValueError(
            f"alignment {alignment} is over the reader's limit of {DEFAULT_LIMITS.max_alignment}"
        )


def _as_bytes(info: _Declared, data: Any) -> memoryview:
    """A flat byte view of the tensor data, without copying contiguous input."""
    if isinstance(data, np.ndarray):
        want = TENSOR_DTYPE.get(info.type)
        if data.dtype != np.uint8 and (want is None or data.dtype != want):
            expected = f"{want} or uint8" if want is not None else "uint8 bytes"
            raise TypeError(
                f"tensor {show(info.name)}: {info.type.name} data must be {expected}, got {data.dtype}"
            )
        flat = np.ascontiguousarray(data).reshape(-1)
        return memoryview(flat.view(np.uint8))
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    raise TypeError(f"tensor {show(info.name)}: expected bytes or a numpy array, got {type(data).__name__}")


def write_gguf(
    path: str | os.PathLike,
    metadata: Mapping[str, Any],
    tensors: Mapping[str, tuple[GGMLType, tuple[int, ...], Any]],
    value_types: Mapping[str, tuple] | None = None,
) -> None:
    """Write a whole GGUF file at once: metadata in dict order, then tensors name -> (type, shape, data).

    value_types maps keys to (vtype,) or (ARRAY, element_type), as GGUFFile.value_types gives them, so
    that `write_gguf(out, f.metadata, {n: (t.type, t.shape, f.raw(n)) ...}, f.value_types)` reproduces a
    version-3 file byte for byte. An alignment other than 32 comes from metadata["general.alignment"].
    """
    value_types = value_types or {}
    with GGUFWriter(path) as w:
        for key, value in metadata.items():
            vtypes = value_types.get(key, (None,))
            w.add(key, value, vtypes[0], element_type=vtypes[1] if len(vtypes) > 1 else None)
        for name, (ggml_type, shape, _) in tensors.items():
            w.add_tensor_info(name, shape, ggml_type)
        for name, (_, _, data) in tensors.items():
            w.write_tensor(name, data)
