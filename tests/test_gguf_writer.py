"""GGUF writer: files gguf-py reads as written, 100 random files that round-trip byte for byte, type
inference, refusal of what the reader would refuse, and no partial output on failure."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from llava_edge.ggml_types import BLOCK_LAYOUT, GGMLType
from llava_edge.gguf_file import GGUFFile, GGUFValueType
from llava_edge.gguf_writer import GGUFWriter, write_gguf

GV = gguf.GGUFValueType  # gguf-py's numbering is the reference for what the file says
V = GGUFValueType
NUMERIC = {
    V.UINT8: np.uint8, V.INT8: np.int8, V.UINT16: np.uint16, V.INT16: np.int16, V.UINT32: np.uint32,
    V.INT32: np.int32, V.UINT64: np.uint64, V.INT64: np.int64,
}  # fmt: skip
ALPHABET = list("abcXYZ019 ._-\n\t\"'\\") + ["é", "ß", "ж", "日本", "▁", "🙂", "\u200b", "\x00"]


# -- random valid files ----------------------------------------------------------------------------------


def random_string(rng: np.random.Generator, max_len: int = 12) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.integers(0, max_len + 1)))


def random_scalar(rng: np.random.Generator, vtype: V):
    if vtype in NUMERIC:
        info = np.iinfo(NUMERIC[vtype])
        return int(rng.integers(info.min, info.max, endpoint=True, dtype=NUMERIC[vtype]))
    if vtype == V.FLOAT32:
        return float(np.float32(rng.standard_normal() * 10.0 ** rng.integers(-30, 30)))
    if vtype == V.FLOAT64:
        return float(rng.standard_normal() * 10.0 ** rng.integers(-300, 300))
    if vtype == V.BOOL:
        return bool(rng.integers(2))
    return random_string(rng)


def random_array(rng: np.random.Generator, etype: V, n: int):
    if etype == V.STRING:
        return [random_string(rng) for _ in range(n)]
    if etype == V.BOOL:
        return rng.integers(0, 2, n).astype(bool)
    if etype in (V.FLOAT32, V.FLOAT64):
        dtype = np.float32 if etype == V.FLOAT32 else np.float64
        return (rng.standard_normal(n) * 1000).astype(dtype)
    info = np.iinfo(NUMERIC[etype])
    return rng.integers(info.min, info.max, n, endpoint=True, dtype=NUMERIC[etype])


def random_shape(rng: np.random.Generator, ggml_type: GGMLType) -> tuple[int, ...]:
    block = BLOCK_LAYOUT[ggml_type][0]
    dims = [block * int(rng.integers(1, 5))] + [int(rng.integers(1, 4)) for _ in range(rng.integers(0, 4))]
    if rng.random() < 0.05:
        dims[rng.integers(len(dims))] = 0  # llama.cpp allows empty tensors
    return tuple(dims)


def random_gguf(rng: np.random.Generator, index: int):
    """(metadata, value_types, tensors) for write_gguf, using every value type across the set."""
    metadata, value_types = {}, {}
    scalar_types = [t for t in V if t != V.ARRAY]
    for k in range(rng.integers(1, 10)):
        key = f"k{k}.{random_string(rng, 6)}"
        if rng.random() < 0.4:
            etype = V(rng.choice(scalar_types))
            metadata[key] = random_array(rng, etype, int(rng.integers(0, 6)))
            value_types[key] = (V.ARRAY, etype)
        else:
            vtype = V(rng.choice(scalar_types))
            metadata[key] = random_scalar(rng, vtype)
            value_types[key] = (vtype,)
    alignment = rng.choice([32, 32, 1, 8, 64, 256])
    if alignment != 32 or rng.random() < 0.2:
        metadata["general.alignment"] = int(alignment)
        value_types["general.alignment"] = (V.UINT32,)
    tensors = {}
    for t in range(rng.integers(0, 6)):
        ggml_type = GGMLType(rng.choice(list(GGMLType)))
        shape = random_shape(rng, ggml_type)
        block, size = BLOCK_LAYOUT[ggml_type]
        nbytes = shape[0] // block * size * int(np.prod(shape[1:]))
        name = f"blk.{t}." + random_string(rng, 8)
        if t == 0 and index % 10 == 0:
            name = name[:1] + "n" * (63 - len(name[:1].encode()))  # the longest name llama.cpp allows
        tensors[name] = (ggml_type, shape, rng.integers(0, 256, nbytes, dtype=np.uint8))
    return metadata, value_types, tensors


def assert_same_value(got, want) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    else:
        assert type(got) is type(want) and got == want


def assert_gguf_py_reads(path: Path, metadata, value_types, tensors) -> None:
    """gguf-py, the reference reader, sees exactly what was written."""
    ref = gguf.GGUFReader(path)
    fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == list(metadata)
    for key, value in metadata.items():
        types = [V(int(t)) for t in fields[key].types]
        empty_array = value_types[key][0] == V.ARRAY and len(value) == 0
        # gguf-py drops the element type of an empty array
        assert types == (list(value_types[key][:1]) if empty_array else list(value_types[key]))
        contents = fields[key].contents()
        want = value.tolist() if isinstance(value, np.ndarray) else value
        assert contents == want, key
    assert [t.name for t in ref.tensors] == list(tensors)
    for t in ref.tensors:
        ggml_type, shape, data = tensors[t.name]
        assert (GGMLType(int(t.tensor_type)), tuple(int(d) for d in t.shape)) == (ggml_type, shape)
        assert np.asarray(t.data).tobytes() == data.tobytes()
        assert t.data_offset % ref.alignment == 0


def seen_ggml_here(tensors) -> set[GGMLType]:
    return {ggml_type for ggml_type, _, _ in tensors.values()}


def test_random_files_round_trip(tmp_path):
    rng = np.random.default_rng(20240601)
    seen_types, seen_ggml, cross_checked = set(), set(), 0
    for i in range(100):
        metadata, value_types, tensors = random_gguf(rng, i)
        seen_types |= {tuple(v) for v in value_types.values()}
        seen_ggml |= {t for t, _, _ in tensors.values()}
        path = tmp_path / f"r{i}.gguf"
        write_gguf(path, metadata, tensors, value_types)

        with GGUFFile.open(path) as f:
            assert list(f.metadata) == list(metadata)
            for key, value in metadata.items():
                assert_same_value(f.metadata[key], value)
            assert f.value_types == value_types
            assert f.alignment == metadata.get("general.alignment", 32)
            assert list(f.tensors) == list(tensors)
            for name, (ggml_type, shape, data) in tensors.items():
                assert (f.tensors[name].type, f.tensors[name].shape) == (ggml_type, shape)
                assert f.raw(name).tobytes() == data.tobytes()
            # what the reader gives back writes the very same file
            again = tmp_path / f"r{i}.again.gguf"
            write_gguf(
                again,
                f.metadata,
                {n: (t.type, t.shape, f.raw(n)) for n, t in f.tensors.items()},
                f.value_types,
            )
            assert again.read_bytes() == path.read_bytes()

        # gguf 0.19 sizes Q8_1 blocks as 40 bytes (llama.cpp static_asserts 36) and cannot read them
        if GGMLType.Q8_1 not in seen_ggml_here(tensors):
            assert_gguf_py_reads(path, metadata, value_types, tensors)
            cross_checked += 1
    assert {(t,) for t in V if t != V.ARRAY} <= seen_types
    assert {t[1] for t in seen_types if len(t) == 2} == {t for t in V if t != V.ARRAY}
    assert seen_ggml == set(GGMLType)
    assert cross_checked >= 75


def test_alignment_from_constructor(tmp_path):
    path = tmp_path / "a.gguf"
    with GGUFWriter(path, alignment=64) as w:
        w.add("general.name", "x")
        for n, k in (("a", 3), ("b", 5)):
            w.add_tensor_info(n, (k,), GGMLType.F32)
        w.write_tensor("a", np.ones(3, np.float32))
        w.write_tensor("b", np.arange(5, dtype=np.float32))
    ref = gguf.GGUFReader(path)
    assert ref.alignment == 64 and ref.fields["general.alignment"].types == [GV.UINT32]
    assert [t.data_offset % 64 for t in ref.tensors] == [0, 0]
    assert ref.tensors[1].data.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="contradicts"):
        GGUFWriter(tmp_path / "b.gguf", alignment=64).add("general.alignment", 128)
    with pytest.raises(ValueError, match="UINT32"):
        GGUFWriter(tmp_path / "b.gguf").add("general.alignment", 64, V.INT32)
    with pytest.raises(ValueError, match="power of two"):
        GGUFWriter(tmp_path / "b.gguf", alignment=48)


# -- type inference, checked by gguf-py --------------------------------------------------------------------


def test_inferred_value_types(tmp_path):
    path = tmp_path / "t.gguf"
    values = {
        "bool": (True, [GV.BOOL]),
        "u32": (7, [GV.UINT32]),
        "u32_max": (2**32 - 1, [GV.UINT32]),
        "u64": (2**32, [GV.UINT64]),
        "u64_max": (2**64 - 1, [GV.UINT64]),
        "neg": (-1, [GV.INT64]),
        "f32": (0.5, [GV.FLOAT32]),
        "np_f64": (np.float64(0.1), [GV.FLOAT64]),
        "np_i16": (np.int16(-3), [GV.INT16]),
        "str": ("tëxt", [GV.STRING]),
        "strs": (["a", "bé"], [GV.ARRAY, GV.STRING]),
        "ints": ([1, 2**31], [GV.ARRAY, GV.UINT32]),
        "neg_ints": ([-1, 5], [GV.ARRAY, GV.INT64]),
        "floats": ([1, 2.5], [GV.ARRAY, GV.FLOAT32]),
        "bools": ([True, False], [GV.ARRAY, GV.BOOL]),
        "np_i32": (np.array([1, -2], np.int32), [GV.ARRAY, GV.INT32]),
        "np_f32_big_endian": (np.array([1.5], ">f4"), [GV.ARRAY, GV.FLOAT32]),
    }
    explicit = {
        "explicit_u8": [GV.UINT8],
        "explicit_i8_array": [GV.ARRAY, GV.INT8],
        "explicit_empty": [GV.ARRAY],  # gguf-py drops the element type of an empty array
    }
    with GGUFWriter(path) as w:
        for key, (value, _) in values.items():
            w.add(key, value)
        w.add("explicit_u8", 200, V.UINT8)
        w.add("explicit_i8_array", [1, -1], V.ARRAY, element_type=V.INT8)
        w.add("explicit_empty", [], element_type=V.FLOAT64)
    ref = gguf.GGUFReader(path)
    expected = {key: types for key, (_, types) in values.items()} | explicit
    assert [k for k in ref.fields if not k.startswith("GGUF.")] == list(expected)
    for key, types in expected.items():
        assert [GV(int(t)) for t in ref.fields[key].types] == types, key
    assert ref.fields["u64_max"].contents() == 2**64 - 1 and ref.fields["neg"].contents() == -1
    assert ref.fields["np_f32_big_endian"].contents() == [1.5]
    with GGUFFile.open(path) as f:
        assert f.value_types["explicit_empty"] == (V.ARRAY, V.FLOAT64)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda w: w.add("", 1), "non-empty"),
        (lambda w: (w.add("k", 1), w.add("k", 2)), "twice"),
        (lambda w: w.add("k", 300, V.UINT8), "does not fit UINT8"),
        (lambda w: w.add("k", -1, V.UINT64), "does not fit UINT64"),
        (lambda w: w.add("k", 2**64), "fit no single"),
        (lambda w: w.add("k", [1, 2**63], V.ARRAY, element_type=V.INT64), "does not fit INT64"),
        (lambda w: w.add("k", 1.5, V.INT32), "integers"),
        (lambda w: w.add("k", 1e39, V.FLOAT32), "too large for FLOAT32"),
        (lambda w: w.add("k", 2, V.BOOL), "does not fit BOOL"),
        (lambda w: w.add("k", [[1]], V.ARRAY, element_type=V.ARRAY), "nested"),
        (lambda w: w.add("k", np.zeros((2, 2), np.int32)), "1-D"),
        (lambda w: w.add("k", np.zeros(2, np.float16)), "no GGUF value type"),
        (lambda w: w.add("k", []), "element_type"),
        (lambda w: w.add("k", [1, "a"]), "cannot infer"),
        (lambda w: w.add("k", b"bytes"), "cannot store"),
        (lambda w: w.add("k", "\ud800"), "UTF-8"),
        (
            lambda w: w.add_tensor_info("n" * 64, (4,), GGMLType.F32),
            "name of 64 bytes is over the reader's limit of 63",
        ),
        (lambda w: w.add_tensor_info("", (4,), GGMLType.F32), "non-empty"),
        (
            lambda w: (
                w.add_tensor_info("t", (4,), GGMLType.F32),
                w.add_tensor_info("t", (4,), GGMLType.F32),
            ),
            "twice",
        ),
        (lambda w: w.add_tensor_info("t", (), GGMLType.F32), "1 to 4"),
        (lambda w: w.add_tensor_info("t", (1, 1, 1, 1, 1), GGMLType.F32), "1 to 4"),
        (lambda w: w.add_tensor_info("t", (4, -1), GGMLType.F32), "negative"),
        (lambda w: w.add_tensor_info("t", (2**62, 2**62), GGMLType.F32), "too large"),
        (lambda w: w.add_tensor_info("t", (33,), GGMLType.Q8_0), "multiple of the Q8_0 block"),
    ],
)
def test_writer_refuses_what_the_reader_refuses(tmp_path, call, match):
    w = GGUFWriter(tmp_path / "bad.gguf")
    with pytest.raises((ValueError, TypeError), match=match):
        call(w)
    w.abort()
    assert os.listdir(tmp_path) == []


def test_tensor_write_checks(tmp_path):
    path = tmp_path / "t.gguf"
    w = GGUFWriter(path)
    w.add_tensor_info("a", (4, 2), GGMLType.F32)
    w.add_tensor_info("q", (32,), GGMLType.Q8_0)
    with pytest.raises(ValueError, match="out of order; expected 'a'"):
        w.write_tensor("q", bytes(34))
    with pytest.raises(ValueError, match="never declared"):
        w.write_tensor("zzz", bytes(32))
    with pytest.raises(ValueError, match="is 32 bytes, got 28"):
        w.write_tensor("a", np.zeros(7, np.float32))
    with pytest.raises(TypeError, match="float32 or uint8"):
        w.write_tensor("a", np.zeros(8, np.int32))
    w.write_tensor("a", np.arange(8, dtype=np.float32).reshape(2, 4).T)  # not contiguous: written in C order
    with pytest.raises(ValueError, match="after the first tensor"):
        w.add("late", 1)
    with pytest.raises(TypeError, match="uint8 bytes"):
        w.write_tensor("q", np.zeros(17, np.float16))
    w.write_tensor("q", memoryview(bytes(range(34))))
    w.close()
    with GGUFFile.open(path) as f:
        assert f.array("a").tolist() == [[0, 4, 1, 5], [2, 6, 3, 7]]  # numpy order: GGUF shape reversed
        assert f.raw("q").tobytes() == bytes(range(34))


# -- no partial output -----------------------------------------------------------------------------------


def test_exception_mid_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError, match="converter failed"):
        with GGUFWriter(path) as w:
            w.add("general.name", "x")
            w.add_tensor_info("a", (8,), GGMLType.F32)
            w.add_tensor_info("b", (8,), GGMLType.F32)
            w.write_tensor("a", np.ones(8, np.float32))
            assert len(os.listdir(tmp_path)) == 1  # the temporary exists while writing
            raise RuntimeError("converter failed")
    assert os.listdir(tmp_path) == []


def test_failure_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.gguf"
    path.write_bytes(b"previous model")
    with pytest.raises(ValueError, match="declared but never written"):
        with GGUFWriter(path) as w:
            w.add_tensor_info("a", (8,), GGMLType.F32)
    assert os.listdir(tmp_path) == ["out.gguf"] and path.read_bytes() == b"previous model"


def test_abandoned_writer_removes_its_temporary(tmp_path):
    w = GGUFWriter(tmp_path / "out.gguf")
    w.add_tensor_info("a", (8,), GGMLType.F32)
    w.write_tensor("a", np.ones(8, np.float32))
    assert len(os.listdir(tmp_path)) == 1
    del w
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_output_mode_follows_umask(tmp_path):
    path = tmp_path / "out.gguf"
    write_gguf(path, {"general.name": "x"}, {})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with GGUFFile.open(path) as f:  # a file with no tensors is valid, as in llama.cpp
        assert f.metadata == {"general.name": "x"} and f.tensors == {}
