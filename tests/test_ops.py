"""Operators of llava_edge._kernels against float64 numpy references (and transformers where it defines
the semantics): matmul over every weight type, get_rows, rms_norm, rope, attention, elementwise ops,
argument checking, and the thread pool."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from llava_edge import _kernels as K
from llava_edge.ggml_types import BLOCK_LAYOUT, GGMLType, row_bytes

WEIGHT_TYPES = [
    GGMLType.F32,
    GGMLType.F16,
    GGMLType.BF16,
    GGMLType.Q4_0,
    GGMLType.Q8_0,
    GGMLType.Q4_K,
    GGMLType.Q5_K,
    GGMLType.Q6_K,
]
FLOAT_TYPES = {GGMLType.F32, GGMLType.F16, GGMLType.BF16}


def nmse(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sum((y.astype(np.float64) - ref) ** 2) / max(np.sum(ref**2), 1e-300))


@pytest.fixture
def threads():
    """Restores the thread count a test changes."""
    saved = K.get_num_threads()
    yield
    K.set_num_threads(saved)


def quantized(t: GGMLType, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(raw rows of type t, their dequantized float64 values)."""
    q = K.quantize(int(t), np.ascontiguousarray(w, dtype=np.float32))
    assert q.dtype == np.uint8 and q.shape == (w.shape[0], row_bytes(t, w.shape[1]))
    return q, K.dequantize(int(t), q, w.shape[1]).astype(np.float64)


def in_sizes(t: GGMLType) -> list[int]:
    block = BLOCK_LAYOUT[t][0]
    return [1, 3, 17, 33, 127, 1023] if block == 1 else [block, 3 * block] if block == 32 else [256, 512]


# ------------------------------------------------------------------------------------------- matmul


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_matmul_matches_f64_reference(t):
    rng = np.random.default_rng(1)
    for n_in in in_sizes(t):
        for n_out, n_tok in [(1, 1), (17, 3), (129, 17)]:
            w = rng.standard_normal((n_out, n_in)).astype(np.float32)
            w[0, : min(n_in, 32)] = 0.0  # an all-zero block
            if n_in >= 64:
                w[-1, 40] = 30.0  # an outlier
            x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
            q, wd = quantized(t, w)
            y = K.matmul(q, int(t), x)
            assert y.shape == (n_tok, n_out) and y.dtype == np.float32
            ref = x.astype(np.float64) @ wd.T
            if t in FLOAT_TYPES:  # f32 activations: only f32 rounding of the sum
                bound = 1e-5 * (np.abs(x.astype(np.float64)) @ np.abs(wd).T) + 1e-30
                assert np.all(np.abs(y - ref) <= bound), (t.name, n_in, n_out, n_tok)
            else:  # activations quantized to Q8_0 / Q8_K
                assert nmse(y, ref) <= 5e-4, (t.name, n_in, n_out, n_tok, nmse(y, ref))


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_matmul_same_bits_for_any_tokens_and_threads(t, threads):
    rng = np.random.default_rng(2)
    n_in = 512 if BLOCK_LAYOUT[t][0] == 256 else 1024
    # 129 tokens span several token tiles; 1023 rows split unevenly over 2 threads
    w = rng.standard_normal((1023, n_in)).astype(np.float32)
    x = rng.standard_normal((129, n_in)).astype(np.float32)
    q, _ = quantized(t, w)
    K.set_num_threads(1)
    y1 = K.matmul(q, int(t), x)
    K.set_num_threads(2)
    y2 = K.matmul(q, int(t), x)
    np.testing.assert_array_equal(y1, y2)
    for i in [0, 64, 128]:
        np.testing.assert_array_equal(K.matmul(q, int(t), x[i : i + 1])[0], y1[i])
        np.testing.assert_array_equal(K.matmul(q, int(t), x[i]), y1[i])  # 1-D x -> 1-D y


@pytest.mark.parametrize("n_tok", [1, 3, 129])
def test_matmul_many_same_bits_as_separate_calls(n_tok, threads):
    """Weights of different types (so different activation packings, some shared) and sizes, one job."""
    rng = np.random.default_rng(4)
    # Q4_K and Q5_K share one packing, as Q4_0 and Q8_0 do on some ISAs
    types = [
        GGMLType.Q4_K,
        GGMLType.Q5_K,
        GGMLType.Q6_K,
        GGMLType.Q4_0,
        GGMLType.F16,
        GGMLType.Q8_0,
        GGMLType.Q4_K,
    ]
    ws = [
        quantized(t, rng.standard_normal((n_out, 512)).astype(np.float32))[0]
        for t, n_out in zip(types, [96, 1, 33, 64, 5, 130, 7], strict=True)
    ]
    x = rng.standard_normal((n_tok, 512)).astype(np.float32)
    for n_threads in (1, 2, 3):
        K.set_num_threads(n_threads)
        ys = K.matmul_many(ws, [int(t) for t in types], x)
        assert isinstance(ys, tuple) and len(ys) == len(ws)
        for y, w, t in zip(ys, ws, types, strict=True):
            np.testing.assert_array_equal(y, K.matmul(w, int(t), x))
        for y, w, t in zip(K.matmul_many(ws, [int(t) for t in types], x[0]), ws, types, strict=True):
            np.testing.assert_array_equal(y, K.matmul(w, int(t), x[0]))  # 1-D x -> 1-D outputs
    assert K.matmul_many([], [], x) == ()


def test_matmul_many_errors_name_the_weight():
    x = np.zeros((2, 256), np.float32)
    good = np.zeros((4, row_bytes(GGMLType.Q4_K, 256)), np.uint8)
    with pytest.raises(ValueError, match="2 weights but 1 types"):
        K.matmul_many([good, good], [int(GGMLType.Q4_K)], x)
    with pytest.raises(ValueError, match=r"ws\[1\] holds 100 bytes"):
        K.matmul_many([good, np.zeros(100, np.uint8)], [int(GGMLType.Q4_K)] * 2, x)
    with pytest.raises(ValueError, match="unsupported weight type 99"):
        K.matmul_many([good, good], [int(GGMLType.Q4_K), 99], x)


def test_matmul_weights_in_place_from_readonly_memmap(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((33, 256)).astype(np.float32)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    q, _ = quantized(GGMLType.Q4_K, w)
    path = tmp_path / "w.bin"
    path.write_bytes(b"\0" * 32 + q.tobytes())  # a tensor at an aligned offset inside a file
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=32, shape=q.shape)
    assert not mm.flags.writeable
    expected = K.matmul(q, int(GGMLType.Q4_K), x)
    np.testing.assert_array_equal(K.matmul(mm, int(GGMLType.Q4_K), x), expected)
    np.testing.assert_array_equal(K.matmul(q.tobytes(), int(GGMLType.Q4_K), x), expected)  # flat bytes
    np.testing.assert_array_equal(K.matmul(q.reshape(-1), int(GGMLType.Q4_K), x), expected)
    # the reader's natural view of F32 / F16 tensors: [n_out, n_in] in their own dtype
    for t, dt in [(GGMLType.F32, np.float32), (GGMLType.F16, np.float16)]:
        wt = w.astype(dt)
        np.testing.assert_array_equal(K.matmul(wt, int(t), x), K.matmul(wt.view(np.uint8), int(t), x))


def test_matmul_from_many_python_threads(threads):
    """Kernels release the GIL; concurrent callers share the pool and still get their own answers."""
    K.set_num_threads(2)
    rng = np.random.default_rng(4)
    w = rng.standard_normal((257, 128)).astype(np.float32)
    xs = [rng.standard_normal((5, 128)).astype(np.float32) for _ in range(6)]
    expected = [K.matmul(w, 0, x) for x in xs]
    results: list = [None] * len(xs)

    def work(i: int) -> None:
        for _ in range(20):
            results[i] = K.matmul(w, 0, xs[i])

    pool = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_matmul_empty_sizes():
    w = np.ones((4, 32), np.float32)
    assert K.matmul(w, 0, np.zeros((0, 32), np.float32)).shape == (0, 4)
    assert K.matmul(np.zeros((0, 32), np.float32), 0, np.ones((2, 32), np.float32)).shape == (2, 0)


# ----------------------------------------------------------------------------------------- get_rows


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_get_rows_dequantizes_the_chosen_rows(t):
    rng = np.random.default_rng(5)
    n_in = in_sizes(t)[-1]
    w = rng.standard_normal((129, n_in)).astype(np.float32)
    q, wd = quantized(t, w)
    ids = np.array([0, 128, 5, 5, 77, 1], np.int32)
    y = K.get_rows(q, int(t), n_in, ids)
    assert y.shape == (len(ids), n_in) and y.dtype == np.float32
    np.testing.assert_array_equal(y, wd[ids].astype(np.float32))
    assert K.get_rows(q, int(t), n_in, np.zeros(0, np.int32)).shape == (0, n_in)


def test_get_rows_out_of_range_ids():
    w = np.ones((7, 32), np.float32)
    for bad in (7, -1, 2**31 - 1):
        with pytest.raises(IndexError, match=r"ids\[1\]"):
            K.get_rows(w, 0, 32, np.array([0, bad], np.int32))


# ----------------------------------------------------------------------- rms_norm and elementwise ops


def test_rms_norm_matches_f64():
    rng = np.random.default_rng(6)
    for n, d in [(1, 1), (3, 17), (17, 1023), (2, 4096)]:
        x = (rng.standard_normal((n, d)) * rng.uniform(0.01, 100)).astype(np.float32)
        w = rng.standard_normal(d).astype(np.float32)
        y = K.rms_norm(x, w, 1e-5)
        xd = x.astype(np.float64)
        ref = xd / np.sqrt(np.mean(xd**2, axis=-1, keepdims=True) + 1e-5) * w
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-7 * np.abs(ref).max())
    x = np.zeros((2, 33), np.float32)
    np.testing.assert_array_equal(K.rms_norm(x, np.ones(33, np.float32), 1e-6), x)  # no NaN for zeros
    x3 = rng.standard_normal((2, 3, 17)).astype(np.float32)  # any leading dims
    np.testing.assert_array_equal(
        K.rms_norm(x3, np.ones(17, np.float32), 1e-5).reshape(6, 17),
        K.rms_norm(x3.reshape(6, 17), np.ones(17, np.float32), 1e-5),
    )


def test_rms_norm_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers.models.mistral.modeling_mistral import MistralRMSNorm

    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4096)).astype(np.float32)
    w = rng.standard_normal(4096).astype(np.float32)
    norm = MistralRMSNorm(4096, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(w))
        ref = norm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(K.rms_norm(x, w, 1e-5), ref, rtol=2e-6, atol=1e-6)


def _elementwise_inputs(rng: np.random.Generator) -> list[np.ndarray]:
    special = np.array([0.0, -0.0, 1e-30, -1e-30, 5.0, -5.0, 20.0, -20.0, 90.0, -90.0, 100.0, -100.0])
    return [rng.standard_normal(n).astype(np.float32) * 4 for n in (1, 3, 17, 1023, 50_000)] + [
        special.astype(np.float32),
        rng.standard_normal((3, 17, 5)).astype(np.float32),
    ]


def test_silu_mul_gelu_gelu_quick_match_f64():
    from math import erfc

    rng = np.random.default_rng(8)
    erfc_v = np.vectorize(erfc)  # 0.5 x (1 + erf(x / sqrt2)) without the cancellation for x << 0
    for x in _elementwise_inputs(rng):
        xd = x.astype(np.float64)
        u = rng.standard_normal(x.shape).astype(np.float32)
        cases = [
            (K.silu_mul(x, u), xd / (1 + np.exp(-xd)) * u),
            (K.gelu(x), 0.5 * xd * erfc_v(-xd / np.sqrt(2))),
            (K.gelu_quick(x), xd / (1 + np.exp(-1.702 * xd))),
        ]
        for y, ref in cases:
            assert y.shape == x.shape and y.dtype == np.float32
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-37)
    # gelu's negative tail keeps its relative accuracy (no 1 + erf cancellation in f32)
    x = np.array([-5.0, -8.0, -12.0], np.float32)
    np.testing.assert_allclose(K.gelu(x), 0.5 * x * erfc_v(-x.astype(np.float64) / np.sqrt(2)), rtol=1e-5)


def test_softmax_matches_f64():
    rng = np.random.default_rng(9)
    for shape in [(1, 1), (3, 17), (17, 1023), (2, 3, 129)]:
        x = (rng.standard_normal(shape) * 30).astype(np.float32)
        xd = x.astype(np.float64)
        e = np.exp(xd - xd.max(-1, keepdims=True))
        np.testing.assert_allclose(K.softmax(x), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-30)
    x = np.array([[1.0, -np.inf, 3.0], [-np.inf] * 3, [1e30, 1e30, -1e30]], np.float32)
    y = K.softmax(x)
    np.testing.assert_allclose(y[0], np.exp([1.0, 0, 3.0]) * [1, 0, 1] / (np.exp(1) + np.exp(3)), rtol=1e-6)
    np.testing.assert_array_equal(y[1], 0.0)  # a fully masked row gives zeros, not NaN
    np.testing.assert_allclose(y[2], [0.5, 0.5, 0.0])


def test_add_inplace_same_shape_and_broadcast_with_guards():
    rng = np.random.default_rng(10)
    for n, d in [(1, 1), (3, 17), (129, 1023)]:
        buf = rng.standard_normal(n * d + 2).astype(np.float32)
        guard = buf[[0, -1]].copy()
        a = buf[1:-1].reshape(n, d)
        a0 = a.copy()
        b = rng.standard_normal((n, d)).astype(np.float32)
        assert K.add_inplace(a, b) is None
        np.testing.assert_array_equal(a, a0 + b)
        bias = rng.standard_normal(d).astype(np.float32)
        K.add_inplace(a, bias)
        np.testing.assert_array_equal(a, (a0 + b) + bias)
        np.testing.assert_array_equal(buf[[0, -1]], guard)


# --------------------------------------------------------------------------------------------- rope


def rope_ref_f64(x: np.ndarray, pos: np.ndarray, theta: float, n_rot: int) -> np.ndarray:
    """llama.cpp normal RoPE in float64 on transformers' f32 angles (f32 exponent, f32 pow, f32 1/p)."""
    half = n_rot // 2
    e = (np.arange(half) * 2).astype(np.float32) / np.float32(n_rot)
    inv = np.float32(1.0) / (np.float64(np.float32(theta)) ** e.astype(np.float64)).astype(np.float32)
    angle = (pos.astype(np.float32)[:, None] * inv[None, :]).astype(np.float64)  # [n_tok, half], f32 product
    c, s = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    out = x.astype(np.float64).copy()
    x0, x1 = out[..., 0:n_rot:2].copy(), out[..., 1:n_rot:2].copy()
    out[..., 0:n_rot:2] = x0 * c - x1 * s
    out[..., 1:n_rot:2] = x0 * s + x1 * c
    return out


def hf_to_llama(x: np.ndarray) -> np.ndarray:
    """llama.cpp converter's Q/K row permutation, seen per head: HF dim h*hd/2 + j -> llama dim 2j + h."""
    n, nh, hd = x.shape
    return x.reshape(n, nh, 2, hd // 2).swapaxes(2, 3).reshape(n, nh, hd).copy()


def llama_to_hf(x: np.ndarray) -> np.ndarray:
    n, nh, hd = x.shape
    return x.reshape(n, nh, hd // 2, 2).swapaxes(2, 3).reshape(n, nh, hd).copy()


def test_rope_matches_f64_with_guards():
    rng = np.random.default_rng(11)
    for n_tok, n_head, hd, n_rot, theta in [
        (1, 1, 2, 2, 1e4),
        (3, 3, 34, 34, 1e4),
        (17, 4, 128, 128, 1e6),
        (33, 2, 64, 32, 5e5),
    ]:
        pos = rng.integers(0, 4096, n_tok).astype(np.int32)
        buf = rng.standard_normal((n_tok + 2, n_head, hd)).astype(np.float32)
        guard = buf[[0, -1]].copy()
        x = buf[1:-1]
        x0 = x.copy()
        assert K.rope(x, pos, theta, n_rot) is None
        np.testing.assert_allclose(
            x, rope_ref_f64(x0, pos, theta, n_rot), rtol=0, atol=1e-6 * np.abs(x0).max()
        )
        np.testing.assert_array_equal(x[..., n_rot:], x0[..., n_rot:])  # dims past n_rot untouched
        np.testing.assert_array_equal(buf[[0, -1]], guard)
    x = rng.standard_normal((2, 1, 8)).astype(np.float32)
    x0 = x.copy()
    K.rope(x, np.zeros(2, np.int32), 1e4)
    np.testing.assert_array_equal(x, x0)  # position 0 is the identity


def test_rope_on_permuted_rows_equals_rotate_half():
    """Adjacent-pair RoPE after the converter's permutation = transformers' rotate-half (numpy, in f32)."""
    rng = np.random.default_rng(12)
    n_tok, n_head, hd, theta = 40, 3, 64, 1e4
    pos = np.arange(n_tok, dtype=np.int32) * 37
    q = rng.standard_normal((n_tok, n_head, hd)).astype(np.float32)
    # transformers, step by step in f32 (pow correctly rounded; torch's own pow is the next test's business)
    e = np.arange(0, hd, 2).astype(np.float32) / np.float32(hd)
    inv_freq = np.float32(1.0) / (np.float64(theta) ** e.astype(np.float64)).astype(np.float32)
    freqs = pos.astype(np.float32)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    rotate_half = np.concatenate([-q[..., hd // 2 :], q[..., : hd // 2]], axis=-1)
    hf = q * cos + rotate_half * sin
    x = hf_to_llama(q)
    K.rope(x, pos, theta)
    np.testing.assert_allclose(llama_to_hf(x), hf, rtol=0, atol=1e-6 * np.abs(q).max())


@pytest.mark.parametrize("theta", [1e4, 1e6])
def test_rope_matches_transformers_mistral(theta):
    torch = pytest.importorskip("torch")
    from transformers import MistralConfig
    from transformers.models.mistral.modeling_mistral import MistralRotaryEmbedding, apply_rotary_pos_emb

    rng = np.random.default_rng(13)
    n_head, hd = 2, 128
    cfg = MistralConfig(
        hidden_size=n_head * hd,
        num_attention_heads=n_head,
        num_key_value_heads=n_head,
        head_dim=hd,
        max_position_embeddings=32768,
    )
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    rotary = MistralRotaryEmbedding(cfg)
    pos = np.concatenate([np.arange(64), rng.integers(64, 32768, 100), [32767]]).astype(np.int32)
    q = rng.standard_normal((len(pos), n_head, hd)).astype(np.float32)
    with torch.no_grad():
        cos, sin = rotary(torch.from_numpy(q), torch.from_numpy(pos.astype(np.int64))[None])
        qt = torch.from_numpy(q).transpose(0, 1)[None]  # [1, n_head, n_tok, hd]
        ref, _ = apply_rotary_pos_emb(qt, qt, cos, sin)
    ref = ref[0].transpose(0, 1).numpy()
    x = hf_to_llama(q)
    K.rope(x, pos, theta)
    # torch's vectorised f32 pow rounds one of theta=1e6's 64 frequencies the other way (see rope_inv_freq)
    np.testing.assert_allclose(llama_to_hf(x), ref, rtol=0, atol=1e-6 * np.abs(q).max())


# ---------------------------------------------------------------------------------------- attention


def attention_ref(q, q_pos, k, v, k_pos, window):
    """float64: for each query, softmax over the visible keys, in whatever order they come."""
    n_q, n_head, hd = q.shape
    group = n_head // k.shape[1]
    out = np.zeros((n_q, n_head, hd))
    for i in range(n_q):
        vis = (k_pos >= 0) & (k_pos <= q_pos[i])
        if window:
            vis &= q_pos[i] - k_pos < window
        if not vis.any():
            continue
        for h in range(n_head):
            kk = k[vis, h // group].astype(np.float64)
            s = kk @ q[i, h].astype(np.float64) / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[i, h] = (p / p.sum()) @ v[vis, h // group].astype(np.float64)
    return out


def make_cache(rng, n_pos, n_kv, hd, dtype, n_empty=0, shuffle=True):
    """KV rows for positions 0..n_pos-1 plus empty slots (pos -1), in shuffled slot order."""
    n_slots = n_pos + n_empty
    k = rng.standard_normal((n_slots, n_kv, hd)).astype(dtype)
    v = rng.standard_normal((n_slots, n_kv, hd)).astype(dtype)
    k_pos = np.concatenate([np.arange(n_pos), -np.ones(n_empty)]).astype(np.int32)
    if shuffle:
        k_pos = k_pos[rng.permutation(n_slots)]
    return k, v, k_pos


@pytest.mark.parametrize("kv_dtype", [np.float16, np.float32])
@pytest.mark.parametrize(
    "n_head,n_kv,hd,window",
    [(4, 4, 32, 0), (8, 2, 64, 0), (4, 1, 17, 8), (6, 3, 128, 8)],
)
def test_attention_matches_f64(kv_dtype, n_head, n_kv, hd, window, threads):
    rng = np.random.default_rng(14)
    n_pos = 40
    k, v, k_pos = make_cache(rng, n_pos, n_kv, hd, kv_dtype, n_empty=5)
    cases = [
        np.arange(n_pos, dtype=np.int32),  # prefill: every position
        np.array([n_pos - 1], np.int32),  # decode
        np.array([0, 7, 8, 9, 33], np.int32),  # window edges
    ]
    for q_pos in cases:
        q = rng.standard_normal((len(q_pos), n_head, hd)).astype(np.float32)
        K.set_num_threads(2)
        out = K.attention(q, q_pos, k, v, k_pos, window)
        ref = attention_ref(q, q_pos, k, v, k_pos, window)
        assert out.shape == q.shape and out.dtype == np.float32
        assert nmse(out, ref) <= 1e-10
        assert np.abs(out - ref).max() <= 1e-5
        K.set_num_threads(1)
        np.testing.assert_array_equal(K.attention(q, q_pos, k, v, k_pos, window), out)


def test_attention_window_and_ring_semantics():
    """A ring of window + chunk slots holding only recent positions gives the full-cache answer."""
    rng = np.random.default_rng(15)
    n_head, n_kv, hd, window = 4, 2, 32, 8
    k, v, k_pos = make_cache(rng, 40, n_kv, hd, np.float16, shuffle=False)
    q_pos = np.arange(36, 40, dtype=np.int32)
    q = rng.standard_normal((4, n_head, hd)).astype(np.float32)
    full = K.attention(q, q_pos, k, v, k_pos, window)
    ring_n = window + len(q_pos) - 1  # positions 29..39 at slot pos % ring_n
    keep = np.arange(40 - ring_n, 40)
    slots = keep % ring_n
    rk, rv, rp = np.empty_like(k[:ring_n]), np.empty_like(v[:ring_n]), np.empty(ring_n, np.int32)
    rk[slots], rv[slots], rp[slots] = k[keep], v[keep], keep
    # same keys, another order: equal up to f32 summation order
    np.testing.assert_allclose(K.attention(q, q_pos, rk, rv, rp, window), full, rtol=0, atol=1e-6)
    # the window really cuts: without it, the answer changes
    assert np.abs(K.attention(q, q_pos, k, v, k_pos, 0) - full).max() > 1e-3


def test_attention_no_visible_key_gives_zeros():
    rng = np.random.default_rng(16)
    k, v, _ = make_cache(rng, 4, 1, 32, np.float16)
    q = rng.standard_normal((2, 2, 32)).astype(np.float32)
    out = K.attention(q, np.array([3, 3], np.int32), k, v, np.full(4, -1, np.int32))  # all slots empty
    np.testing.assert_array_equal(out, 0.0)
    out = K.attention(q, np.array([0, 5], np.int32), k, v, np.array([1, 2, 3, 4], np.int32))
    np.testing.assert_array_equal(out[0], 0.0)  # query 0 is before every key
    assert np.abs(out[1]).max() > 0
    assert K.attention(q, np.array([0, 5], np.int32), k[:0], v[:0], np.zeros(0, np.int32)).shape == (2, 2, 32)


def test_attention_q8_0_cache():
    rng = np.random.default_rng(17)
    n_head, n_kv, hd = 4, 2, 64
    k, v, k_pos = make_cache(rng, 40, n_kv, hd, np.float32, n_empty=3)
    kq = K.quantize(int(GGMLType.Q8_0), k.reshape(-1, hd)).reshape(len(k_pos), n_kv, -1)
    vq = K.quantize(int(GGMLType.Q8_0), v.reshape(-1, hd)).reshape(len(k_pos), n_kv, -1)
    kd = K.dequantize(int(GGMLType.Q8_0), kq.reshape(-1, kq.shape[-1]), hd).reshape(k.shape)
    vd = K.dequantize(int(GGMLType.Q8_0), vq.reshape(-1, vq.shape[-1]), hd).reshape(v.shape)
    q_pos = np.arange(40, dtype=np.int32)
    q = rng.standard_normal((40, n_head, hd)).astype(np.float32)
    out = K.attention(q, q_pos, kq, vq, k_pos, 8, kv_type=int(GGMLType.Q8_0))
    ref = attention_ref(q, q_pos, kd, vd, k_pos, 8)
    assert nmse(out, ref) <= 1e-10
    with pytest.raises(ValueError, match="kv_type"):
        K.attention(q, q_pos, kq, vq, k_pos, 8)


# ------------------------------------------------------------------------------------ bad arguments


def test_bad_arguments_raise_clear_errors():
    w = np.ones((4, 32), np.float32)
    x = np.ones((2, 32), np.float32)
    q4 = K.quantize(int(GGMLType.Q4_0), w)
    with pytest.raises(TypeError, match="matmul: x must have dtype float32, got float64"):
        K.matmul(w, 0, x.astype(np.float64))
    with pytest.raises(TypeError, match="matmul: x must be a numpy"):
        K.matmul(w, 0, x.tolist())
    with pytest.raises(ValueError, match="C-contiguous"):
        K.matmul(w, 0, np.ones((32, 2), np.float32).T)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.matmul(np.ones((32, 4), np.float32).T, 0, x)
    with pytest.raises(ValueError, match="dimensions"):
        K.matmul(w, 0, np.ones((1, 2, 32), np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        K.matmul(q4, int(GGMLType.Q4_0), np.ones((2, 48), np.float32))
    with pytest.raises(ValueError, match="bytes"):
        K.matmul(q4[:, :-1].copy(), int(GGMLType.Q4_0), x)
    with pytest.raises(ValueError, match="bytes"):
        K.matmul(w, int(GGMLType.Q4_0), x)  # f32 bytes are not Q4_0 rows
    with pytest.raises(ValueError, match="unsupported weight type 3"):
        K.matmul(q4, 3, x)
    with pytest.raises(ValueError, match="aligned"):
        K.matmul(np.zeros(4 * 32 * 4 + 1, np.uint8)[1:], 0, x)
    with pytest.raises(TypeError, match="buffer"):
        K.matmul(42, 0, x)
    with pytest.raises(ValueError, match="n_in"):
        K.get_rows(w, 0, 0, np.zeros(1, np.int32))
    with pytest.raises(TypeError, match="int32"):
        K.get_rows(w, 0, 32, np.zeros(1, np.int64))

    with pytest.raises(ValueError, match="w has shape"):
        K.rms_norm(x, np.ones(31, np.float32), 1e-5)
    with pytest.raises(ValueError, match="eps"):
        K.rms_norm(x, np.ones(32, np.float32), -1.0)

    r = np.ones((3, 2, 8), np.float32)
    with pytest.raises(ValueError, match="read-only"):
        ro = r.copy()
        ro.flags.writeable = False
        K.rope(ro, np.zeros(3, np.int32), 1e4)
    with pytest.raises(ValueError, match="pos has shape"):
        K.rope(r, np.zeros(2, np.int32), 1e4)
    with pytest.raises(ValueError, match="n_rot"):
        K.rope(r, np.zeros(3, np.int32), 1e4, 3)
    with pytest.raises(ValueError, match="n_rot"):
        K.rope(r, np.zeros(3, np.int32), 1e4, 10)
    with pytest.raises(ValueError, match="theta"):
        K.rope(r, np.zeros(3, np.int32), 0.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.rope(np.ones((3, 2, 16), np.float32)[:, :, ::2], np.zeros(3, np.int32), 1e4)

    q = np.ones((2, 4, 32), np.float32)
    kv = np.ones((5, 2, 32), np.float16)
    qp, kp = np.zeros(2, np.int32), np.zeros(5, np.int32)
    with pytest.raises(ValueError, match="not a multiple"):
        K.attention(np.ones((2, 3, 32), np.float32), qp, kv, kv, kp)
    with pytest.raises(ValueError, match="v has shape"):
        K.attention(q, qp, kv, kv[:4], kp)
    with pytest.raises(TypeError, match="v must have dtype float16"):
        K.attention(q, qp, kv, kv.astype(np.float32), kp)
    with pytest.raises(TypeError, match="k must have dtype"):
        K.attention(q, qp, kv.astype(np.float64), kv, kp)
    with pytest.raises(ValueError, match="last dim"):
        K.attention(q, qp, kv[..., :16].copy(), kv[..., :16].copy(), kp)
    with pytest.raises(ValueError, match="k_pos has shape"):
        K.attention(q, qp, kv, kv, kp[:4])
    with pytest.raises(ValueError, match="q_pos has shape"):
        K.attention(q, qp[:1], kv, kv, kp)
    with pytest.raises(ValueError, match="negative"):
        K.attention(q, np.array([0, -1], np.int32), kv, kv, kp)
    with pytest.raises(ValueError, match="window"):
        K.attention(q, qp, kv, kv, kp, -1)
    with pytest.raises(ValueError, match="does not match"):
        K.attention(q, qp, kv, kv, kp, 0, int(GGMLType.F32))

    with pytest.raises(ValueError, match="up has shape"):
        K.silu_mul(np.ones(3, np.float32), np.ones(4, np.float32))
    with pytest.raises(TypeError, match="float32"):
        K.gelu(np.ones(3, np.float16))
    with pytest.raises(ValueError, match="b has shape"):
        K.add_inplace(np.ones((2, 3), np.float32), np.ones(2, np.float32))
    a = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="share memory"):
        K.add_inplace(a.reshape(-1)[:4], a.reshape(-1)[2:6])
    with pytest.raises(ValueError, match="share memory"):
        K.add_inplace(a, a)
    with pytest.raises(ValueError):
        K.set_num_threads(0)


# -------------------------------------------------------------------------------------- thread pool


def test_thread_count_round_trip(threads):
    import os

    assert 1 <= K.get_num_threads() <= len(os.sched_getaffinity(0))
    for n in (1, 3, 2):
        K.set_num_threads(n)
        assert K.get_num_threads() == n
    # more threads than cores still gives the same bits
    rng = np.random.default_rng(18)
    w = rng.standard_normal((301, 64)).astype(np.float32)
    x = rng.standard_normal((7, 64)).astype(np.float32)
    K.set_num_threads(1)
    y1 = K.matmul(w, 0, x)
    K.set_num_threads(5)
    np.testing.assert_array_equal(K.matmul(w, 0, x), y1)


# ----------------------------------------------------------- every compiled ISA against the reference
# Each ISA this machine supports is forced through LLAVA_EDGE_ISA in a subprocess (the choice is made once,
# at load) and runs the same battery as the reference; odd sizes reach every tail of the micro-kernels.

ISA_OPS_SCRIPT = r"""
import sys
import numpy as np
from llava_edge import _kernels as K

rng = np.random.default_rng(20)
out = {"isa": np.array(K.isa())}
same_bits = []
for t in [0, 1, 30, 2, 8, 12, 13, 14]:
    bs = K.block_size(t)
    counts = {1: [1, 3, 15, 16, 17, 33, 127, 129, 1023], 32: [1, 2, 3, 4, 5, 7, 8, 9, 17], 256: [1, 2, 3]}[bs]
    for nb in counts:
        n_in = bs * nb
        w = rng.standard_normal((13, n_in)).astype(np.float32)
        w[0, : min(n_in, 64)] = 0.0  # all-zero blocks
        w[-1, n_in // 2] = 40.0  # an outlier
        x = rng.standard_normal((7, n_in)).astype(np.float32)
        x[2] = 0.0  # an all-zero token
        q = K.quantize(t, w)
        y = K.matmul(q, t, x)
        out[f"mm_{t}_{nb}"] = y
        # decode == prefill, bit for bit, for a token inside a micro-tile and one in a tail
        same_bits.append(all(np.array_equal(K.matmul(q, t, x[i]), y[i]) for i in (1, 6)))
# every type in one matmul_many: the same bits as separate calls, whichever packings this ISA shares
types = [0, 1, 30, 2, 8, 12, 13, 14]
ws = [K.quantize(t, rng.standard_normal((9, 512)).astype(np.float32)) for t in types]
x = rng.standard_normal((5, 512)).astype(np.float32)
ys = K.matmul_many(ws, types, x)
same_bits.append(all(np.array_equal(y, K.matmul(w, t, x)) for y, w, t in zip(ys, ws, types)))
for kv in ["f32", "f16", "q8_0"]:
    shapes = [(4, 4, 32, 0), (8, 2, 64, 0), (4, 1, 32, 5), (6, 2, 128, 9), (8, 1, 32, 0), (3, 3, 17, 0)]
    for n_head, n_kv, hd, window in shapes:
        if kv == "q8_0" and hd % 32:
            continue
        n_k = 41
        kf = rng.standard_normal((n_k, n_kv, hd)).astype(np.float32)
        vf = rng.standard_normal((n_k, n_kv, hd)).astype(np.float32)
        kp = rng.permutation(np.r_[np.arange(n_k - 4), -np.ones(4)]).astype(np.int32)
        qp = np.array([0, 3, 17, 36, 36, 40], np.int32)
        qv = rng.standard_normal((len(qp), n_head, hd)).astype(np.float32)
        if kv == "q8_0":
            k = K.quantize(8, kf.reshape(-1, hd)).reshape(n_k, n_kv, -1)
            v = K.quantize(8, vf.reshape(-1, hd)).reshape(n_k, n_kv, -1)
            o = K.attention(qv, qp, k, v, kp, window, kv_type=8)
        else:
            dt = np.float32 if kv == "f32" else np.float16
            o = K.attention(qv, qp, kf.astype(dt), vf.astype(dt), kp, window)
        out[f"at_{kv}_{n_head}_{n_kv}_{hd}_{window}"] = o
for n in [1, 3, 17, 33, 127, 129, 1023]:
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    x[0] = -100.0 if n > 1 else x[0]
    u = rng.standard_normal(n).astype(np.float32)
    out[f"silu_{n}"] = K.silu_mul(x, u)
    out[f"gelu_{n}"] = K.gelu(x)
    out[f"gelu_quick_{n}"] = K.gelu_quick(x)
    out[f"softmax_{n}"] = K.softmax((x * 8).reshape(1, n))
    out[f"rms_{n}"] = K.rms_norm(x.reshape(1, n), u, 1e-5)
    a = x.copy()
    K.add_inplace(a, u)
    out[f"add_{n}"] = a
for hd, n_rot in [(2, 2), (34, 34), (128, 128), (64, 30)]:
    r = rng.standard_normal((5, 3, hd)).astype(np.float32)
    K.rope(r, np.array([0, 1, 77, 4095, 32767], np.int32), 1e6, n_rot)
    out[f"rope_{hd}_{n_rot}"] = r
out["same_bits"] = np.array(same_bits)
np.savez(sys.argv[1], **out)
"""


def _run_isa_ops(isa: str, path) -> dict:
    import os
    import subprocess
    import sys
    from pathlib import Path

    import llava_edge

    env = dict(os.environ, LLAVA_EDGE_ISA=isa)
    root = str(Path(llava_edge.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", ISA_OPS_SCRIPT, str(path)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return dict(np.load(path))


@pytest.fixture(scope="module")
def ref_ops(tmp_path_factory):
    return _run_isa_ops("ref", tmp_path_factory.mktemp("isa_ops") / "ref.npz")


@pytest.mark.parametrize("isa", [i for i in K.supported_isas() if i != "ref"])
def test_forced_isa_ops_match_reference(isa, ref_ops, tmp_path):
    got = _run_isa_ops(isa, tmp_path / f"{isa}.npz")
    assert str(got["isa"]) == isa
    assert got["same_bits"].all(), "decode and prefill, and matmul_many and matmul, must give the same bits"
    for key, ref in ref_ops.items():
        if key in ("isa", "same_bits"):
            continue
        g = got[key]
        assert g.shape == ref.shape and g.dtype == ref.dtype, key
        if key.startswith("mm_"):
            # SIMD and reference agree on every quantized code; only the float summation order differs
            _, t, nb = key.split("_")
            scale = np.abs(ref).max() + 1e-30
            assert nmse(g, ref.astype(np.float64)) <= 1e-9 or np.abs(g - ref).max() <= 1e-5 * scale, key
            assert np.abs(g - ref).max() <= 1e-4 * scale, (key, np.abs(g - ref).max() / scale)
        elif key.startswith("at_"):
            assert nmse(g, ref.astype(np.float64)) <= 1e-10 and np.abs(g - ref).max() <= 1e-5, key
        elif key.startswith("rope_"):
            np.testing.assert_array_equal(g, ref, err_msg=key)  # the same float operations, bit for bit
        else:
            np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-37, err_msg=key)
