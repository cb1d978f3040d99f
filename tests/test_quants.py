"""Quantization kernels: formats bit-exact with gguf-py and llama.cpp, dot products, dispatch, hostile calls.

Error bars follow llama.cpp's tests/test-quantize-fns.cpp: on 4096 values of 0.1 + 2 cos(i + offset),
sqrt(sum of squared errors) / n < 0.002 after a round trip, and |dot - f64 dot of the inputs| / n < 0.02.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

import llava_edge
from llava_edge import _kernels as K
from llava_edge.ggml_types import BLOCK_LAYOUT, GGMLType

GQ = gguf.GGMLQuantizationType
QUANT_TYPES = [GGMLType.Q4_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]
FLOAT_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16]
ALL_TYPES = FLOAT_TYPES + QUANT_TYPES
K_TYPES = [GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]
X86 = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}


def block(t: int) -> int:
    return BLOCK_LAYOUT[GGMLType(t)][0]


def odd_lengths(t: int) -> list[int]:
    """Row lengths of 1, 3, 17 blocks (and 127/129 for small blocks): odd counts catch tail bugs."""
    b = block(t)
    counts = [1, 3, 17, 33, 127, 129, 1023] if b == 1 else [1, 3, 17, 127, 129] if b == 32 else [1, 3, 17]
    return [b * c for c in counts]


def synthetic(n: int, offset: float, amplitude: float = 2.0) -> np.ndarray:
    """llama.cpp test-quantize-fns generate_data: 0.1 + amplitude * cos(i + offset)."""
    return (0.1 + amplitude * np.cos(np.arange(n, dtype=np.float64) + offset)).astype(np.float32)


def hash64(n: int, seed: int) -> np.ndarray:
    """n pseudo-random uint64 from an integer hash (splitmix-style): the same on every platform."""
    i = np.arange(n, dtype=np.uint64) + np.array([seed], np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    h = i * np.uint64(0xD1B54A32D192ED03)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(29)
    return h


def lcg(n: int, seed: int) -> np.ndarray:
    """Platform-independent pseudo-random floats (exact arithmetic only): uniform in [-2, 2) times a scale
    2^-6..2^5 drawn per 32 values, so block scales vary widely."""
    h = hash64(n, seed)
    mant = (h >> np.uint64(40)).astype(np.int64) - (1 << 23)  # 24 bits, signed
    exp = (np.repeat(h[::32] >> np.uint64(8), 32)[:n] % np.uint64(12)).astype(np.int64) - 6
    return np.ldexp(mant.astype(np.float64) / (1 << 22), exp).astype(np.float32)


def gaussian_like(n: int, seed: int) -> np.ndarray:
    """Bell-shaped values like real weights: a sum of 4 uniforms, exact in float64, platform-independent."""
    total = np.zeros(n)
    for k in range(4):
        total += ((hash64(n, seed * 4 + k) >> np.uint64(40)).astype(np.int64) - (1 << 23)) / float(1 << 23)
    return total.astype(np.float32)


def same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality of float32 arrays, except that any NaN matches any NaN."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb) and np.array_equal(a.view(np.uint32)[~na], b.view(np.uint32)[~nb]))


def rows_for(t: int, n: int, count: int, seed: int) -> np.ndarray:
    return np.stack([lcg(n, seed * 1000 + r) for r in range(count)])


# ---------------------------------------------------------------------------------------------------------
# Layout and type ids


def test_type_constants_and_layout_match_gguf():
    for t in ALL_TYPES + [GGMLType.Q8_K]:
        assert getattr(K, f"TYPE_{t.name}") == int(t) == int(GQ[t.name])
        assert (K.block_size(t), K.type_size(t)) == BLOCK_LAYOUT[t] == gguf.GGML_QUANT_SIZES[GQ[t.name]]
        assert K.type_name(t) == t.name
    assert K.row_size(GGMLType.Q4_K, 512) == 288
    assert K.act_type(GGMLType.Q4_0) == K.act_type(GGMLType.Q8_0) == GGMLType.Q8_0
    assert {K.act_type(t) for t in K_TYPES} == {GGMLType.Q8_K}
    assert {K.act_type(t) for t in FLOAT_TYPES} == {GGMLType.F32}


# ---------------------------------------------------------------------------------------------------------
# llama.cpp's bars (test-quantize-fns.cpp)


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_round_trip_error_llama_cpp_bar(t):
    x = synthetic(4096, 0.0)
    y = K.dequantize(t, K.quantize(t, x), 4096)[0]
    # llama.cpp's "rmse" is sqrt(sum of squares) / n (not / sqrt(n)): 0.002 <-> an RMS error of 0.128.
    total_error = np.sqrt(np.sum((x.astype(np.float64) - y) ** 2)) / x.size
    assert total_error < 0.002
    # And the real RMS error against what each format can do on this signal (amplitude 2): catches a
    # quantizer that is merely "not terrible".
    # Bars are 1.25x what llama.cpp's own quantizers reach here (ours are bit-exact with them).
    rms_bar = {
        "F32": 0,
        "F16": 3.5e-4,
        "BF16": 2.9e-3,
        "Q8_0": 6e-3,
        "Q6_K": 2.1e-2,
        "Q5_K": 4.3e-2,
        "Q4_K": 7.9e-2,
        "Q4_0": 9e-2,
    }[t.name]
    assert np.sqrt(np.mean((x.astype(np.float64) - y) ** 2)) <= rms_bar


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_vec_dot_error_llama_cpp_bar(t):
    w, x = synthetic(4096, 0.0), synthetic(4096, 1.0)
    q = K.quantize(t, w)
    got = K.vec_dot(t, q, x)
    # llama.cpp's bar: against the f64 dot of the unquantized inputs.
    assert abs(got - np.dot(w.astype(np.float64), x)) / w.size < 0.02
    # Against the dequantized weights only the activation quantization is left: a tighter bar.
    wd = K.dequantize(t, q, 4096)[0].astype(np.float64)
    bar = 1e-6 if t in FLOAT_TYPES else 5e-4  # about 2x the activation-quantization error seen here
    assert abs(got - np.dot(wd, x)) / w.size < bar


# ---------------------------------------------------------------------------------------------------------
# Q8_0 / Q4_0 quantization bit-exact with gguf-py


def adversarial_blocks() -> dict[str, np.ndarray]:
    """32-value blocks that stress scale selection and rounding."""
    b = {}
    b["zeros"] = np.zeros(32)
    b["neg_zeros"] = np.full(32, -0.0)
    b["zero_then_neg_zero"] = np.array([0.0, -0.0] * 16)
    b["outlier"] = np.r_[np.linspace(-0.01, 0.01, 31), 1000.0]
    b["negative_outlier"] = np.r_[-1000.0, np.linspace(-0.01, 0.01, 31)]
    b["all_equal"] = np.full(32, 0.731)
    b["all_equal_negative"] = np.full(32, -3.25)
    b["negative_max"] = np.r_[np.linspace(-1, 1, 31), -7.5]
    b["tie_pos_first"] = np.r_[5.0, -5.0, np.linspace(-1, 1, 30)]
    b["tie_neg_first"] = np.r_[-5.0, 5.0, np.linspace(-1, 1, 30)]
    b["half_steps_q8"] = np.r_[127.0, np.arange(-15.5, 15.5, 1.0)]  # d = 1: x.5 ties round away from 0
    b["half_steps_q4"] = np.r_[-8.0, np.arange(-7.5, 8.0, 0.5)]  # d = 1: codes at x + 8.5 exactly
    b["huge_fp16_max"] = np.r_[65504.0, -65504.0, np.linspace(-60000, 60000, 30)]
    b["beyond_fp16"] = np.r_[1e6, np.linspace(-5e5, 5e5, 31)]  # d overflows fp16 to inf
    b["float_max"] = np.r_[3.0e38, -3.0e38, np.linspace(-1e38, 1e38, 30)]
    b["tiny_normal"] = np.linspace(-1e-30, 1e-30, 32)  # d underflows fp16 to 0
    b["tiny_with_zero_d"] = np.r_[1.4e-45, np.zeros(31)]  # max / -8 rounds to 0 in float32
    return {k: np.asarray(v, dtype=np.float32) for k, v in b.items()}


def denormal_blocks() -> dict[str, np.ndarray]:
    """Blocks whose scale is a nonzero subnormal: 1/d overflows to inf and x*inf converts to an integer
    the way x86 does (cvttss2si), which is what numpy, and so gguf-py, give on x86."""
    return {
        "denormal": np.full(32, 1e-40, dtype=np.float32),
        "tiny_mixed": np.r_[1e-38, -5e-39, np.zeros(30)].astype(np.float32),
    }


@pytest.mark.parametrize("t", [GGMLType.Q8_0, GGMLType.Q4_0], ids=lambda t: t.name)
def test_q8_0_q4_0_quantize_bit_exact_with_gguf(t):
    for n in odd_lengths(t):
        for rows, seed in [(1, 1), (3, 2), (17, 3)]:
            x = rows_for(t, n, rows, seed)
            np.testing.assert_array_equal(K.quantize(t, x), gguf_quantize(x, GQ[t.name]), err_msg=f"n={n}")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((33, 1024)).astype(np.float32) * np.float32(3.0)
    np.testing.assert_array_equal(K.quantize(t, x), gguf_quantize(x, GQ[t.name]))


@pytest.mark.parametrize("t", [GGMLType.Q8_0, GGMLType.Q4_0], ids=lambda t: t.name)
def test_q8_0_q4_0_quantize_adversarial_bit_exact_with_gguf(t):
    cases = adversarial_blocks()
    if X86:
        cases |= denormal_blocks()
    for name, blk in cases.items():
        x = blk.reshape(1, 32)
        with np.errstate(all="ignore"):  # gguf-py's numpy multiplies by inf for the subnormal scales
            want = gguf_quantize(x, GQ[t.name])
        np.testing.assert_array_equal(K.quantize(t, x), want, err_msg=name)
    # All cases side by side in one row: blocks must not leak into each other.
    row = np.concatenate(list(cases.values())).reshape(1, -1)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(K.quantize(t, row), gguf_quantize(row, GQ[t.name]))


def test_nan_and_inf_input_do_not_crash():
    x = np.array([np.nan, np.inf, -np.inf] + [1.0] * 253, dtype=np.float32).reshape(1, 256)
    for t in ALL_TYPES:
        q = K.quantize(t, x)
        assert q.shape == (1, K.row_size(t, 256))
        assert K.dequantize(t, q, 256).shape == (1, 256)
        K.vec_dot(t, q[0], x[0])
        K.vec_dot(t, K.quantize(t, np.ones((1, 256), np.float32))[0], x[0])


# ---------------------------------------------------------------------------------------------------------
# Dequantization bit-exact with gguf-py


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_dequantize_random_bytes_bit_exact_with_gguf(t):
    # Every byte pattern is a valid block of these types (scales may be NaN/inf fp16: NaN matches NaN).
    rng = np.random.default_rng(int(t) + 100)
    for n in odd_lengths(t)[:3]:
        rows = 5
        data = rng.integers(0, 256, size=(rows, K.row_size(t, n)), dtype=np.uint8)
        with np.errstate(all="ignore"):
            want = gguf_dequantize(data, GQ[t.name]).reshape(rows, n)
        assert same_floats(K.dequantize(t, data, n), want), f"n={n}"


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_dequantize_our_output_bit_exact_with_gguf(t):
    for n in odd_lengths(t):
        x = rows_for(t, n, 3, int(t))
        q = K.quantize(t, x)
        assert same_floats(K.dequantize(t, q, n), gguf_dequantize(q, GQ[t.name]).reshape(3, n)), f"n={n}"


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_dequantize_reads_read_only_and_unaligned_buffers(t, tmp_path):
    n = block(t) * 64 if block(t) == 1 else block(t) * 3
    x = rows_for(t, n, 4, 11)
    q = K.quantize(t, x)
    want = K.dequantize(t, q, n)
    path = tmp_path / "w.bin"
    path.write_bytes(b"\x00" + q.tobytes())
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    assert not mm.flags.writeable
    assert same_floats(K.dequantize(t, mm[1:], n), want)  # read-only and at an odd address
    assert same_floats(K.dequantize(t, q.tobytes(), n), want)  # bytes
    assert same_floats(K.dequantize(t, memoryview(q.tobytes()), n), want)
    del mm


# ---------------------------------------------------------------------------------------------------------
# fp16 / bf16 conversions


def test_f16_all_bit_patterns():
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    want = halves.view(np.float16).astype(np.float32)
    got = K.dequantize(GGMLType.F16, halves, 65536)[0]
    assert same_floats(got, want)
    # Every half value survives float -> half; NaN stays NaN.
    back = K.quantize(GGMLType.F16, got).view(np.uint16)
    nan = np.isnan(want)
    assert np.array_equal(back[~nan], halves[~nan])
    assert np.isnan(back.view(np.float16)[nan]).all()


def test_f16_rounding_matches_numpy():
    halves = np.arange(0, 0x7C00, dtype=np.uint32).astype(np.uint16)  # finite, non-negative halves
    lo = halves.view(np.float16).astype(np.float64)
    hi = np.r_[lo[1:], 65520.0]
    mid = ((lo + hi) / 2).astype(np.float32)  # exact ties (representable in float32)
    mid_bits = mid.view(np.uint32)
    near = np.concatenate([mid_bits, mid_bits - 1, mid_bits + 1]).view(np.float32)
    rng = np.random.default_rng(5)
    rand = rng.integers(0, 2**32, size=2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    special = np.array(
        [
            65504,
            65519.996,
            65520,
            1e9,
            2.0**-24,
            2.0**-25,
            2.0**-25 * 1.0000001,
            2.0**-26,
            6.1035156e-05,
            6.0975552e-05,
            np.inf,
            np.nan,
        ],
        dtype=np.float32,
    )
    x = np.concatenate([near, -near, rand, special, -special])
    got = K.quantize(GGMLType.F16, x.reshape(1, -1))[0].view(np.uint16)
    with np.errstate(all="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], want[~nan])
    assert np.isnan(got.view(np.float16)[nan]).all()


def test_bf16_all_bit_patterns_and_rounding_match_gguf():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = K.dequantize(GGMLType.BF16, bits, 65536)[0]
    assert np.array_equal(got.view(np.uint32), (bits.astype(np.uint32) << 16))
    assert same_floats(got, gguf_dequantize(bits.view(np.uint8), GQ.BF16))
    rng = np.random.default_rng(6)
    x = rng.integers(0, 2**32, size=1_000_000, dtype=np.uint64).astype(np.uint32)
    x[:4] = [0x7FC00001, 0x7F800001, 0xFF812345, 0x3F808000]  # NaNs (quiet, signalling) and a tie
    x = x.view(np.float32).reshape(1, -1)
    assert np.array_equal(K.quantize(GGMLType.BF16, x), gguf_quantize(x, GQ.BF16).reshape(1, -1))


# ---------------------------------------------------------------------------------------------------------
# Dot products: the integer math, emulated independently in numpy


def q8_K_emulated(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """llama.cpp quantize_row_q8_K_ref in numpy: (d [nb] f32, q [nb, 256] i8, bsums [nb, 16] i16)."""
    xb = x.reshape(-1, 256).astype(np.float32)
    nb = xb.shape[0]
    d = np.zeros(nb, np.float32)
    q = np.zeros((nb, 256), np.int8)
    for i in range(nb):
        j = int(np.argmax(np.abs(xb[i])))
        if xb[i, j] == 0:
            continue
        iscale = np.float32(-127.0) / xb[i, j]
        q[i] = np.minimum(127, np.rint(iscale * xb[i]))  # float rounding: ties to even, like nearest_int
        d[i] = np.float32(1.0) / iscale
    bsums = q.astype(np.int32).reshape(nb, 16, 16).sum(-1).astype(np.int16)
    return d, q, bsums


def q8_K_bytes(d, q, bsums) -> np.ndarray:
    rec = np.zeros(d.size, dtype=[("d", "<f4"), ("q", "i1", 256), ("b", "<i2", 16)])
    rec["d"], rec["q"], rec["b"] = d, q, bsums
    return rec.view(np.uint8).reshape(d.size * 292)


def f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32).reshape(-1)


def unpack_scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 scale bytes of Q4_K/Q5_K -> (scales [nb, 8], mins [nb, 8]) as ints."""
    s = s.astype(np.int64)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


def k_weights(t: int, raw: np.ndarray):
    """Unpack K-quant blocks -> (codes [nb, 256] signed, scale per value [nb, 256], d, dmin, mins [nb, 8])."""
    b = raw.reshape(-1, K.type_size(t))
    nb = b.shape[0]
    if t == GGMLType.Q6_K:
        ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208].view(np.int8), f16(b[:, 208:210])
        codes = np.zeros((nb, 256), np.int64)
        for h in range(2):
            lo = ql[:, 64 * h : 64 * h + 64].astype(np.int64)
            hi = qh[:, 32 * h : 32 * h + 32].astype(np.int64)
            base = 128 * h
            codes[:, base : base + 32] = (lo[:, :32] & 15) | (((hi >> 0) & 3) << 4)
            codes[:, base + 32 : base + 64] = (lo[:, 32:] & 15) | (((hi >> 2) & 3) << 4)
            codes[:, base + 64 : base + 96] = (lo[:, :32] >> 4) | (((hi >> 4) & 3) << 4)
            codes[:, base + 96 : base + 128] = (lo[:, 32:] >> 4) | (((hi >> 6) & 3) << 4)
        return codes - 32, np.repeat(sc.astype(np.int64), 16, axis=1), d, None, None
    d, dmin, (sc, mn) = f16(b[:, 0:2]), f16(b[:, 2:4]), unpack_scale_min_k4(b[:, 4:16])
    qs = b[:, -128:].astype(np.int64).reshape(nb, 4, 32)
    codes = np.stack([qs & 15, qs >> 4], axis=2).reshape(nb, 256)
    if t == GGMLType.Q5_K:
        qh = b[:, 16:48].astype(np.int64)
        codes = codes + 16 * np.concatenate([(qh >> c) & 1 for c in range(8)], axis=1)
    return codes, np.repeat(sc, 32, axis=1), d, dmin, mn


def vec_dot_emulated(t: int, wq: np.ndarray, x: np.ndarray) -> np.float32:
    """The dot product in numpy: exact integer block sums, then llama.cpp's generic float order."""
    f32 = np.float32
    if t in (GGMLType.Q4_0, GGMLType.Q8_0):
        a = gguf_quantize(x.reshape(1, -1), GQ.Q8_0).reshape(-1, 34)
        da, qa = f16(a[:, :2]), a[:, 2:].view(np.int8).astype(np.int64)
        if t == GGMLType.Q4_0:
            w = wq.reshape(-1, 18)
            dw, nib = f16(w[:, :2]), w[:, 2:].astype(np.int64)
            qw = np.concatenate([nib & 15, nib >> 4], axis=1) - 8
        else:
            w = wq.reshape(-1, 34)
            dw, qw = f16(w[:, :2]), w[:, 2:].view(np.int8).astype(np.int64)
        sumi = (qw * qa).sum(axis=1)
        s = f32(0)
        for ib in range(sumi.size):
            if t == GGMLType.Q4_0:
                s = f32(s + f32(f32(sumi[ib]) * dw[ib]) * da[ib])
            else:
                s = f32(s + f32(sumi[ib]) * f32(dw[ib] * da[ib]))
        return s
    d8, q8, bsums = q8_K_emulated(x)
    codes, scale, d, dmin, mins = k_weights(t, wq)
    lanes = (codes * q8.astype(np.int64) * scale).reshape(-1, 32, 8).sum(axis=1)  # int32-exact
    sums = np.zeros(8, f32)
    s = f32(0)
    for i in range(d8.size):
        sums = sums + f32(d[i] * d8[i]) * lanes[i].astype(f32)
        if dmin is not None:
            summ = int((bsums[i].astype(np.int64) * mins[i][np.arange(16) // 2]).sum())
            s = f32(s - f32(dmin[i] * d8[i]) * f32(summ))
    for lane in range(8):
        s = f32(s + sums[lane])
    return s


def test_q8_K_activations_match_emulation():
    x = np.concatenate([lcg(256 * 5, 3), np.zeros(256, np.float32), np.full(256, -2.5, np.float32)])
    x[100] = -50.0  # a negative maximum
    got = K.quantize_act(GGMLType.Q4_K, x)
    assert np.array_equal(got, q8_K_bytes(*q8_K_emulated(x)))
    d, q, b = q8_K_emulated(x)
    assert np.all(q >= -127)  # -127/max keeps codes symmetric
    assert np.all(d[5] == 0) and np.all(q[5] == 0) and np.all(b[5] == 0)


@pytest.mark.parametrize("t", QUANT_TYPES, ids=lambda t: t.name)
def test_vec_dot_ref_matches_integer_emulation_exactly(t):
    for n in odd_lengths(t):
        for seed in range(3):
            w = lcg(n, 40 + seed)
            x = lcg(n, 80 + seed)
            q = K.quantize(t, w)
            got = np.float32(K._vec_dot_isa("ref", t, q, x))
            want = vec_dot_emulated(t, q, x)
            assert got.view(np.uint32) == want.view(np.uint32), f"n={n} seed={seed}: {got} != {want}"


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_vec_dot_active_isa_close_to_ref(t):
    for n in odd_lengths(t):
        w, x = lcg(n, 5), lcg(n, 6)
        q = K.quantize(t, w)
        ref = K._vec_dot_isa("ref", t, q, x)
        scale = np.abs(K.dequantize(t, q, n)[0].astype(np.float64) * x).sum()
        assert abs(K.vec_dot(t, q, x) - ref) <= 1e-5 * scale + 1e-30


def random_weight_rows(t: int, n: int, rows: int, seed: int) -> np.ndarray:
    """Random bytes as weight rows (every code, -128 included for Q8_0), with finite fp16 scales."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(rows, K.row_size(t, n)), dtype=np.uint8)
    blocks = data.reshape(rows, -1, K.type_size(t))
    scales = rng.uniform(-1, 1, blocks.shape[:2]).astype(np.float16)
    blocks[..., :2] = scales[..., None].view(np.uint8)
    return data


@pytest.mark.parametrize("isa", K.supported_isas())
@pytest.mark.parametrize("t", [GGMLType.Q4_0, GGMLType.Q8_0], ids=lambda t: t.name)
def test_every_isa_vec_dot_matches_ref_on_extremes(isa, t):
    """Each compiled variant against the reference on odd block counts, every weight code, activations
    at the ends of their range, and zero blocks."""
    for nblocks in (1, 2, 3, 17, 127, 129):
        n = 32 * nblocks
        weights = random_weight_rows(t, n, 4, nblocks)
        acts = [lcg(n, nblocks), np.where(lcg(n, 7) > 0, 1.0, -1.0).astype(np.float32)]  # codes +-127
        zero_block = lcg(n, 8)
        zero_block[32 : 64 if n >= 64 else 32] = 0
        acts.append(zero_block)
        for q in weights:
            wd = K.dequantize(t, q, n)[0].astype(np.float64)
            for x in acts:
                ref = K._vec_dot_isa("ref", t, q, x)
                got = K._vec_dot_isa(isa, t, q, x)
                assert abs(got - ref) <= 1e-5 * np.abs(wd * x).sum(), f"{isa} n={n}: {got} vs {ref}"


@pytest.mark.parametrize("t", FLOAT_TYPES, ids=lambda t: t.name)
def test_float_vec_dot_is_the_f64_dot(t):
    for n in odd_lengths(t):
        w, x = lcg(n, 1), lcg(n, 2)
        q = K.quantize(t, w)
        wd = K.dequantize(t, q, n)[0].astype(np.float64)
        # Products and sums in double: the result is the f64 dot rounded once (up to summation order).
        assert K.vec_dot(t, q, x) == pytest.approx(np.float32(np.dot(wd, x.astype(np.float64))), rel=1e-6)


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_zero_blocks_give_zeros(t):
    n = 4 * max(block(t), 64)
    for z in (np.zeros((2, n), np.float32), np.full((2, n), -0.0, np.float32)):
        q = K.quantize(t, z)
        y = K.dequantize(t, q, n)
        assert not np.isnan(y).any() and np.all(y == 0)
        assert K.vec_dot(t, q[0], lcg(n, 3)) == 0.0
    # A zero block between live ones, and zero activations against live weights.
    x = lcg(n, 9)
    lo, hi = (block(t), 2 * block(t)) if block(t) > 1 else (5, 9)
    x[lo:hi] = 0
    q = K.quantize(t, x.reshape(1, -1))
    assert not np.isnan(K.dequantize(t, q, n)).any()
    assert K.vec_dot(t, q[0], np.zeros(n, np.float32)) == 0.0


# ---------------------------------------------------------------------------------------------------------
# Guard bytes: kernels write exactly their output


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_quantize_and_dequantize_leave_guard_bytes(t):
    guard = 64
    for n in odd_lengths(t)[:3]:
        rows = 3
        x = rows_for(t, n, rows, 21)
        rb = K.row_size(t, n)
        buf = np.full(guard + rows * rb + guard, 0xA5, np.uint8)
        assert K._quantize_into(t, x, buf, guard) == rows * rb
        assert np.all(buf[:guard] == 0xA5) and np.all(buf[guard + rows * rb :] == 0xA5)
        assert np.array_equal(buf[guard : guard + rows * rb].reshape(rows, rb), K.quantize(t, x))

        out = np.full(guard + rows * n + guard, np.float32(-7.25))
        assert K._dequantize_into(t, buf[guard : guard + rows * rb], n, out, guard) == rows * n
        assert np.all(out[:guard] == -7.25) and np.all(out[guard + rows * n :] == -7.25)
        want = K.dequantize(t, K.quantize(t, x), n)
        assert same_floats(out[guard : guard + rows * n].reshape(rows, n), want)


# ---------------------------------------------------------------------------------------------------------
# Hostile calls: clear Python errors, never a crash


def test_bad_arguments_raise_clear_errors():
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(TypeError, match="float32"):
        K.quantize(GGMLType.Q8_0, x.astype(np.float64))
    with pytest.raises(TypeError, match="float32"):
        K.quantize(GGMLType.Q8_0, x.astype(">f4"))
    with pytest.raises(TypeError, match="numpy"):
        K.quantize(GGMLType.Q8_0, [[0.0] * 32])
    with pytest.raises(ValueError, match="C-contiguous"):
        K.quantize(GGMLType.Q8_0, np.zeros((64, 2), np.float32).T)
    with pytest.raises(ValueError, match="dimensions"):
        K.quantize(GGMLType.Q8_0, np.zeros((1, 1, 32), np.float32))
    with pytest.raises(ValueError, match="multiple of Q4_K's block size 256"):
        K.quantize(GGMLType.Q4_K, np.zeros((1, 288), np.float32))
    for bad in (3, 15 + 100, -1, 31):  # Q4_1: a real GGML type we do not run
        with pytest.raises(ValueError, match="not supported"):
            K.quantize(bad, x)
    with pytest.raises(ValueError, match="whole number"):
        K.dequantize(GGMLType.Q4_0, np.zeros(37, np.uint8), 64)
    with pytest.raises(ValueError, match="positive"):
        K.dequantize(GGMLType.Q4_0, np.zeros(36, np.uint8), 0)
    with pytest.raises(ValueError, match="multiple"):
        K.dequantize(GGMLType.Q4_0, np.zeros(36, np.uint8), 48)
    with pytest.raises(ValueError, match="too large"):  # n * 4 bytes would overflow int64
        K.dequantize(GGMLType.F32, np.zeros(36, np.uint8), 2**62)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.dequantize(GGMLType.Q8_0, np.zeros((34, 2), np.uint8).T, 32)
    with pytest.raises(TypeError, match="buffer protocol"):
        K.dequantize(GGMLType.Q8_0, "not bytes", 32)
    w = K.quantize(GGMLType.Q4_0, np.ones(64, np.float32))
    with pytest.raises(ValueError, match="bytes"):
        K.vec_dot(GGMLType.Q4_0, w[:-1], np.ones(64, np.float32))
    with pytest.raises(ValueError, match="bytes"):
        K.vec_dot(GGMLType.Q4_0, w, np.ones(96, np.float32))
    with pytest.raises(ValueError, match="writable"):
        K._quantize_into(GGMLType.Q8_0, x, bytes(1000), 0)
    with pytest.raises(ValueError, match="does not fit"):
        K._quantize_into(GGMLType.Q8_0, x, np.zeros(100, np.uint8), 40)
    with pytest.raises(ValueError, match="does not fit"):
        K._quantize_into(GGMLType.Q8_0, x, np.zeros(1000, np.uint8), -4)
    with pytest.raises(ValueError, match="ISA"):
        K._vec_dot_isa("sse9", GGMLType.Q4_0, w, np.ones(64, np.float32))


def test_empty_input():
    assert K.quantize(GGMLType.Q4_0, np.zeros((0, 64), np.float32)).shape == (0, 36)
    assert K.dequantize(GGMLType.Q4_0, b"", 64).shape == (0, 64)


# ---------------------------------------------------------------------------------------------------------
# Instruction-set dispatch: every ISA this machine supports, forced through LLAVA_EDGE_ISA in a subprocess


ISA_SCRIPT = r"""
import sys
import numpy as np
from llava_edge import _kernels as K
rng = np.random.default_rng(0)
out = {"isa": np.array(K.isa())}
for t in [0, 1, 30, 2, 8, 12, 13, 14]:
    n = 768 if t in (12, 13, 14) else 544
    x = (rng.standard_normal((3, n)) * 2).astype(np.float32)
    x[1, : max(K.block_size(t) * 2, 8)] = 0  # a zero block in the middle row
    q = K.quantize(t, x)
    out[f"q{t}"] = q
    out[f"d{t}"] = K.dequantize(t, q, n)
    out[f"a{t}"] = K.quantize_act(t, x)
    out[f"v{t}"] = np.array([K.vec_dot(t, q[r], x[(r + 1) % 3]) for r in range(3)], np.float64)
np.savez(sys.argv[1], **out)
"""


def run_forced(isa: str | None, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("LLAVA_EDGE_ISA", None)
    if isa is not None:
        env["LLAVA_EDGE_ISA"] = isa
    root = str(Path(llava_edge.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", ISA_SCRIPT, str(out)], env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def ref_results(tmp_path_factory):
    path = tmp_path_factory.mktemp("isa") / "ref.npz"
    proc = run_forced("ref", path)
    assert proc.returncode == 0, proc.stderr
    return dict(np.load(path))


@pytest.mark.parametrize("isa", K.supported_isas())
def test_forced_isa_matches_reference(isa, ref_results, tmp_path):
    path = tmp_path / f"{isa}.npz"
    proc = run_forced(isa.upper() if isa == "avx2" else isa, path)  # the override is case-insensitive
    assert proc.returncode == 0, proc.stderr
    got = dict(np.load(path))
    assert str(got["isa"]) == isa
    for key, ref in ref_results.items():
        if key == "isa":
            continue
        if key.startswith("v"):  # dot products: SIMD may sum in another order
            np.testing.assert_allclose(got[key], ref, rtol=1e-5, atol=1e-4, err_msg=f"{isa} {key}")
        else:  # formats are defined bit for bit
            assert same_floats(got[key], ref) if key.startswith("d") else np.array_equal(got[key], ref), key


def test_default_isa_is_the_best_supported(tmp_path):
    proc = run_forced(None, tmp_path / "auto.npz")
    assert proc.returncode == 0, proc.stderr
    best = [i for i in ("avx512", "avx2", "neon", "ref") if i in K.supported_isas()][0]
    assert str(np.load(tmp_path / "auto.npz")["isa"]) == best


def test_unknown_isa_fails_import_with_message(tmp_path):
    proc = run_forced("sse9", tmp_path / "x.npz")
    assert proc.returncode != 0
    assert "LLAVA_EDGE_ISA=sse9" in proc.stderr and "ref, avx2, avx512, neon" in proc.stderr


def test_unsupported_isa_fails_import_with_message(tmp_path):
    missing = [i for i in ("neon", "avx512", "avx2") if i not in K.supported_isas()]
    if not missing:
        pytest.skip("this machine supports every ISA")
    proc = run_forced(missing[0], tmp_path / "x.npz")
    assert proc.returncode != 0
    assert f"LLAVA_EDGE_ISA={missing[0]}" in proc.stderr and "supported here: ref" in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# llama.cpp itself (through llama-cpp-python's shared libraries), and digests of its output


class Ggml:
    """ctypes access to llama.cpp's reference quantizers and its CPU dot products."""

    class _TraitsCpu(ctypes.Structure):
        _fields_ = [
            ("from_float", ctypes.c_void_p),
            ("vec_dot", ctypes.c_void_p),
            ("vec_dot_type", ctypes.c_int),
            ("nrows", ctypes.c_int64),
        ]

    _DOT = ctypes.CFUNCTYPE(
        None,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_float),
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
    )

    def __init__(self, lib_dir: Path):
        def load(stem: str) -> ctypes.CDLL:
            for name in (f"{stem}.so", f"{stem}.dylib", f"{stem.removeprefix('lib')}.dll"):
                if (lib_dir / name).exists():
                    return ctypes.CDLL(str(lib_dir / name))
            pytest.skip(f"no {stem} in {lib_dir}")

        self.base = load("libggml-base")
        self.cpu = load("libggml-cpu")
        self.cpu.ggml_cpu_init()
        self.cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(self._TraitsCpu)

    def quantize_ref(self, t: int, x: np.ndarray) -> np.ndarray:
        name = {2: "q4_0", 8: "q8_0", 12: "q4_K", 13: "q5_K", 14: "q6_K", 15: "q8_K"}[int(t)]
        fn = getattr(self.base, f"quantize_row_{name}_ref")
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
        x = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])
        # Zeroed: llama.cpp's Q8_K leaves bsums of an all-zero block unwritten, where we store zeros.
        out = np.zeros((x.shape[0], K.row_size(t, x.shape[1])), np.uint8)
        for r in range(x.shape[0]):
            fn(x[r].ctypes.data, out[r].ctypes.data, x.shape[1])
        return out

    def vec_dot(self, t: int, w: np.ndarray, act: np.ndarray, n: int) -> float:
        traits = self.cpu.ggml_get_type_traits_cpu(int(t)).contents
        s = ctypes.c_float()
        self._DOT(traits.vec_dot)(n, ctypes.byref(s), 0, w.ctypes.data, 0, act.ctypes.data, 0, 1)
        return s.value


@pytest.fixture(scope="module")
def ggml() -> Ggml:
    llama_cpp = pytest.importorskip("llama_cpp")
    return Ggml(Path(llama_cpp.__file__).parent / "lib")


def llama_cpp_cases() -> np.ndarray:
    """Rows of 1024: random at several scales plus super-blocks that stress the K-quant scale search."""
    rows = [lcg(1024, s) * np.float32(sc) for s, sc in enumerate([1, 1e-3, 1e3, 1, 1])]
    rows += [gaussian_like(1024, 70 + s) for s in range(128)]
    # Halves and integers: exact ties for the final code rounding (nearest_int rounds them to even).
    rows += [np.round(gaussian_like(1024, 300 + s) * np.float32(40)) / 2 for s in range(64)]
    special = np.stack([lcg(1024, 50 + r) for r in range(8)])
    special[0, :256] = 0  # zero super-block
    special[0, 256 + 32 : 256 + 64] = 0  # zero sub-block
    special[1, 7] = 100.0  # outlier
    special[2] = np.abs(special[2])  # all positive: min clamps to 0
    special[3] = -np.abs(special[3])  # all negative
    special[4] = 1.5  # constant
    special[5] *= np.float32(1e-16)  # under llama.cpp's GROUP_MAX_EPS
    special[6, ::2] = 0  # half zeros
    special[7] = np.round(special[7] * 4) / 4 + 0.0  # values on a grid: many exact ties (and no -0.0)
    return np.concatenate([np.stack(rows), special]).astype(np.float32)


@pytest.mark.parametrize("t", QUANT_TYPES + [GGMLType.Q8_K], ids=lambda t: t.name)
def test_quantize_bit_exact_with_llama_cpp_ref(t, ggml):
    rng = np.random.default_rng(int(t))
    normal = rng.standard_normal((256, 1024)).astype(np.float32)
    heavy = (rng.standard_t(3, (64, 1024)) * 0.02).astype(np.float32)  # weight-like, with outliers
    x = np.concatenate([llama_cpp_cases(), normal, heavy])
    ours = K.quantize_act(GGMLType.Q4_K, x) if t == GGMLType.Q8_K else K.quantize(t, x)
    np.testing.assert_array_equal(ours, ggml.quantize_ref(t, x))
    if t == GGMLType.Q4_0:
        # The one known difference, where we follow gguf-py: an all-zero block that starts with -0.0 gets
        # d = +0.0 (gguf-py divides that -0.0 by -8), where llama.cpp always stores d = -0.0.
        z = np.zeros((1, 32), np.float32)
        z[0, 0] = -0.0
        assert K.quantize(t, z)[0, :2].tolist() == [0, 0]
        assert ggml.quantize_ref(t, z)[0, :2].tolist() == [0, 128]


@pytest.mark.parametrize("t", QUANT_TYPES, ids=lambda t: t.name)
def test_vec_dot_close_to_llama_cpp(t, ggml):
    for seed in range(4):
        w, x = lcg(4096, 200 + seed), lcg(4096, 300 + seed)
        q, act = K.quantize(t, w), K.quantize_act(t, x)
        theirs = ggml.vec_dot(t, q, act, 4096)  # llama.cpp's SIMD kernel on the same bytes
        scale = np.abs(K.dequantize(t, q, 4096)[0].astype(np.float64) * x).sum()
        assert abs(K.vec_dot(t, q, x) - theirs) <= 1e-5 * scale


# sha256 of quantize(t, llama_cpp_cases()) as produced by llama.cpp's quantize_row_*_ref (llama-cpp-python
# 0.3.36); pins our output to llama.cpp's where llama-cpp-python is not installed.
LLAMA_CPP_DIGESTS = {
    "Q4_0": "6b0eb466b705b60515f18cc18c498b44fc0f146ad2bab87d76c24ab6279d42dc",
    "Q8_0": "df6381f8b8c3834c54272416c839d38bde6492997014c03445b28c97fe6bc238",
    "Q4_K": "cac16e0833d62675eedc37910279c79044a908fc5f33651a163d6d2919df197e",
    "Q5_K": "b05d592e628c9a244b1c9a127bf9ac5ed034ab1833b84c67fb59b22e07bfa7e7",
    "Q6_K": "123f01ed52f1f0875e5a708fdca852d3c4e9e57d9480c4d70a609277f84655c8",
    "Q8_K": "234103e7bf89c47ee00ad3f3793b2c8d8eefbd5e537222c7e3cd34e335029e00",
}


@pytest.mark.parametrize("name", list(LLAMA_CPP_DIGESTS))
def test_quantize_digest_matches_llama_cpp(name):
    x = llama_cpp_cases()  # integer hash and IEEE float32 products: the same on every platform
    q = K.quantize_act(GGMLType.Q4_K, x) if name == "Q8_K" else K.quantize(GGMLType[name], x)
    assert hashlib.sha256(q.tobytes()).hexdigest() == LLAMA_CPP_DIGESTS[name]
