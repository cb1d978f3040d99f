// Operator drivers: contract checks, work split over the thread pool, calls into the row kernels.
#include "ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "quants.h"
#include "threadpool.h"

namespace le {
namespace {

// Below these amounts of work per chunk, waking another thread costs more than it saves.
constexpr int64_t kMinMacsPerChunk = 1 << 15;
constexpr int64_t kMinElemsPerChunk = 1 << 14;
// Activation rows of one token tile should stay in L2 while every weight row of a chunk passes by.
constexpr int64_t kActTileBytes = 256 * 1024;
constexpr int64_t kActRowAlign = 64;  // activation rows start on cache lines (SIMD loads, no false sharing)

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument(what); }

void require(bool ok, const char* fn, const std::string& what) {
    if (!ok) fail(std::string(fn) + ": " + what);
}

void check_weight_type(GGMLType t, const char* fn) {
    require(is_weight_type(t), fn, "unsupported weight type " + std::to_string(int(t)));
}

void check_block_multiple(GGMLType t, int64_t n, const char* fn) {
    const int64_t bs = block_size(t);
    require(n > 0 && n % bs == 0, fn,
            std::string(type_name(t)) + " rows need a positive multiple of " + std::to_string(bs) + " values, got " +
                std::to_string(n));
}

// Per-thread scratch that keeps its capacity between calls (prefill would otherwise fault in fresh pages
// for every matmul).
std::vector<uint8_t>& act_scratch() {
    thread_local std::vector<uint8_t> buf;
    return buf;
}

// W rows [n_rows] x activation rows [n_toks] -> Y [n_toks, n_rows] with row stride ldy. One weight row at a
// time against every token of the tile, so the row is fetched once and reused from L1. The SIMD step
// replaces this with a register-blocked micro-kernel (several rows x several tokens per inner loop).
void matmul_block_ref(VecDotFn dot, const uint8_t* LE_RESTRICT w, int64_t w_stride, int64_t n_rows,
                      const uint8_t* LE_RESTRICT act, int64_t act_stride, int64_t n_toks, float* LE_RESTRICT y,
                      int64_t ldy, int64_t n_in) {
    for (int64_t r = 0; r < n_rows; ++r) {
        const uint8_t* w_row = w + r * w_stride;
        for (int64_t t = 0; t < n_toks; ++t) y[t * ldy + r] = dot(w_row, act + t * act_stride, n_in);
    }
}

}  // namespace

bool is_weight_type(GGMLType t) {
    switch (t) {
        case GGMLType::F32:
        case GGMLType::F16:
        case GGMLType::BF16:
        case GGMLType::Q4_0:
        case GGMLType::Q8_0:
        case GGMLType::Q4_K:
        case GGMLType::Q5_K:
        case GGMLType::Q6_K:
            return true;
        default:
            return false;
    }
}

// SIMD tables will be picked here from isa.h's active_isa(), once; until then every ISA runs the reference.
const OpsKernels& ops_kernels() { return ops_kernels_ref; }

// W [n_out, n_in] x X [n_tok, n_in] -> Y [n_tok, n_out]
void matmul(GGMLType wt, const void* LE_RESTRICT w, const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n_out,
            int64_t n_in, int64_t n_tok) {
    check_weight_type(wt, "matmul");
    check_block_multiple(wt, n_in, "matmul");
    require(n_out >= 0 && n_tok >= 0, "matmul", "negative size");
    if (n_out == 0 || n_tok == 0) return;

    // Activations in the type the weight's dot product wants, one row per token, quantized once.
    const GGMLType at = act_type(wt);
    const uint8_t* act;
    int64_t act_stride;
    if (at == GGMLType::F32) {
        act = reinterpret_cast<const uint8_t*>(x);
        act_stride = n_in * int64_t(sizeof(float));
    } else {
        const int64_t act_bytes = row_size(at, n_in);
        act_stride = (act_bytes + kActRowAlign - 1) / kActRowAlign * kActRowAlign;
        std::vector<uint8_t>& scratch = act_scratch();
        if (int64_t(scratch.size()) < n_tok * act_stride + kActRowAlign)
            scratch.resize(size_t(n_tok * act_stride + kActRowAlign));
        const uintptr_t base = reinterpret_cast<uintptr_t>(scratch.data());
        uint8_t* buf = scratch.data() + ((kActRowAlign - base % kActRowAlign) % kActRowAlign);
        parallel_for(
            n_tok,
            [&](int64_t t0, int64_t t1) {
                for (int64_t t = t0; t < t1; ++t) quantize_act_row(wt, x + t * n_in, buf + t * act_stride, n_in);
            },
            std::max<int64_t>(1, kMinElemsPerChunk / n_in));
        act = buf;
    }

    // Split output rows over threads; inside a chunk, walk token tiles so each weight row is read from
    // memory once per tile and reused from L1 for every token of it.
    const int64_t w_stride = row_size(wt, n_in);
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const VecDotFn dot = vec_dot_fn(wt);
    const int64_t tile = std::clamp<int64_t>(kActTileBytes / act_stride, 1, n_tok);
    parallel_for(
        n_out,
        [&](int64_t r0, int64_t r1) {
            for (int64_t t0 = 0; t0 < n_tok; t0 += tile) {
                const int64_t t1 = std::min(n_tok, t0 + tile);
                matmul_block_ref(dot, wb + r0 * w_stride, w_stride, r1 - r0, act + t0 * act_stride, act_stride, t1 - t0,
                                 y + t0 * n_out + r0, n_out, n_in);
            }
        },
        std::max<int64_t>(1, kMinMacsPerChunk / (n_in * n_tok)));
}

// W [n_rows, n_in], ids [n] -> Y [n, n_in]
void get_rows(GGMLType wt, const void* LE_RESTRICT w, int64_t n_rows, int64_t n_in, const int32_t* LE_RESTRICT ids,
              int64_t n, float* LE_RESTRICT y) {
    check_weight_type(wt, "get_rows");
    check_block_multiple(wt, n_in, "get_rows");
    require(n_rows >= 0 && n >= 0, "get_rows", "negative size");
    for (int64_t i = 0; i < n; ++i) {
        if (ids[i] < 0 || ids[i] >= n_rows)
            throw std::out_of_range("get_rows: ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
                                    " is outside [0, " + std::to_string(n_rows) + ")");
    }
    const int64_t w_stride = row_size(wt, n_in);
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    parallel_for(
        n,
        [&](int64_t i0, int64_t i1) {
            for (int64_t i = i0; i < i1; ++i) dequantize_row(wt, wb + int64_t(ids[i]) * w_stride, y + i * n_in, n_in);
        },
        std::max<int64_t>(1, kMinElemsPerChunk / n_in));
}

// X [n, d], w [d] -> Y [n, d]
void rms_norm(const float* LE_RESTRICT x, const float* LE_RESTRICT w, float* LE_RESTRICT y, int64_t n, int64_t d,
              float eps) {
    require(n >= 0 && d > 0, "rms_norm", "need n >= 0 and d > 0");
    const OpsKernels& k = ops_kernels();
    parallel_for(
        n,
        [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) k.rms_norm_row(x + r * d, w, y + r * d, d, eps);
        },
        std::max<int64_t>(1, kMinElemsPerChunk / d));
}

void rope_inv_freq(float theta, int64_t n_rot, float* LE_RESTRICT inv_freq) {
    // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all f32. Our pow is correctly
    // rounded; torch's vectorised pow can be 1 ulp off (for theta 1e6, dim 128 it is at i = 37), which
    // moves that angle by pos * 3e-11 rad: under 1e-6 rad up to position 32768.
    for (int64_t i = 0; i < n_rot / 2; ++i) {
        const float e = float(2 * i) / float(n_rot);
        const float p = float(std::pow(double(theta), double(e)));
        inv_freq[i] = 1.0f / p;
    }
}

// X [n_tok, n_head, head_dim] in place, pos [n_tok]
void rope(float* LE_RESTRICT x, const int32_t* LE_RESTRICT pos, int64_t n_tok, int64_t n_head, int64_t head_dim,
          int64_t n_rot, float theta) {
    require(n_tok >= 0 && n_head > 0 && head_dim > 0, "rope", "need n_tok >= 0, n_head > 0, head_dim > 0");
    require(n_rot > 0 && n_rot % 2 == 0 && n_rot <= head_dim, "rope",
            "n_rot must be even and in [2, head_dim = " + std::to_string(head_dim) + "], got " + std::to_string(n_rot));
    require(std::isfinite(theta) && theta > 0.0f, "rope", "theta must be positive and finite");
    std::vector<float> inv_freq(size_t(n_rot / 2));
    rope_inv_freq(theta, n_rot, inv_freq.data());
    const OpsKernels& k = ops_kernels();
    parallel_for(
        n_tok,
        [&](int64_t t0, int64_t t1) {
            std::vector<float> cos(size_t(n_rot / 2)), sin(size_t(n_rot / 2));
            for (int64_t t = t0; t < t1; ++t) {
                for (int64_t i = 0; i < n_rot / 2; ++i) {
                    // f32 angle exactly as transformers forms it; cos/sin of that f32 value, correctly rounded
                    const float angle = float(pos[t]) * inv_freq[size_t(i)];
                    cos[size_t(i)] = float(std::cos(double(angle)));
                    sin[size_t(i)] = float(std::sin(double(angle)));
                }
                for (int64_t h = 0; h < n_head; ++h)
                    k.rope_pairs(x + (t * n_head + h) * head_dim, cos.data(), sin.data(), n_rot);
            }
        },
        std::max<int64_t>(1, kMinElemsPerChunk / (n_head * head_dim)));
}

// Q [n_q, n_head, hd] x K, V [n_k, n_kv, hd] -> O [n_q, n_head, hd]
void attention(const float* LE_RESTRICT q, const int32_t* LE_RESTRICT q_pos, int64_t n_q, int64_t n_head, int64_t hd,
               GGMLType kv_type, const void* LE_RESTRICT k, const void* LE_RESTRICT v, const int32_t* LE_RESTRICT k_pos,
               int64_t n_k, int64_t n_kv, int64_t window, float* LE_RESTRICT out) {
    require(kv_type == GGMLType::F32 || kv_type == GGMLType::F16 || kv_type == GGMLType::Q8_0, "attention",
            "KV cache type must be F32, F16 or Q8_0");
    check_block_multiple(kv_type, hd, "attention");
    require(n_q >= 0 && n_k >= 0, "attention", "negative size");
    require(n_kv > 0 && n_head > 0 && n_head % n_kv == 0, "attention",
            "n_head = " + std::to_string(n_head) + " must be a positive multiple of n_kv = " + std::to_string(n_kv));
    require(window >= 0, "attention", "window must be >= 0");

    const int64_t group = n_head / n_kv;
    const int64_t kv_row = row_size(kv_type, hd);
    const int64_t kv_tok = n_kv * kv_row;  // bytes per cache slot
    const float scale = float(1.0 / std::sqrt(double(hd)));
    const auto* kb = static_cast<const uint8_t*>(k);
    const auto* vb = static_cast<const uint8_t*>(v);
    const OpsKernels& ker = ops_kernels();

    // One item = one (query, head). A KV row is read as f32: in place for F32, else dequantized into a
    // row-sized scratch (an f16/q8 dot product without the copy is the SIMD step's job).
    parallel_for(
        n_q * n_head,
        [&](int64_t i0, int64_t i1) {
            std::vector<float> scores(static_cast<size_t>(n_k)), acc(static_cast<size_t>(hd));
            std::vector<float> k_buf(static_cast<size_t>(hd)), v_buf(static_cast<size_t>(hd));
            std::vector<int32_t> visible(static_cast<size_t>(n_k));
            auto kv_row_f32 = [&](const uint8_t* row, float* buf) -> const float* {
                if (kv_type == GGMLType::F32) return reinterpret_cast<const float*>(row);
                dequantize_row(kv_type, row, buf, hd);
                return buf;
            };
            for (int64_t item = i0; item < i1; ++item) {
                const int64_t iq = item / n_head, h = item % n_head, kvh = h / group;
                const int64_t p = q_pos[iq];
                const float* qv = q + item * hd;
                float* o = out + item * hd;

                int64_t n_vis = 0;
                float max = -std::numeric_limits<float>::infinity();
                for (int64_t j = 0; j < n_k; ++j) {
                    const int64_t kp = k_pos[j];
                    if (kp < 0 || kp > p || (window > 0 && p - kp >= window)) continue;
                    const float* kr = kv_row_f32(kb + j * kv_tok + kvh * kv_row, k_buf.data());
                    const float s = ker.dot_f32(qv, kr, hd) * scale;
                    scores[size_t(n_vis)] = s;
                    visible[size_t(n_vis)] = int32_t(j);
                    max = std::max(max, s);
                    ++n_vis;
                }
                std::fill(acc.begin(), acc.end(), 0.0f);
                double sum = 0.0;
                for (int64_t m = 0; m < n_vis; ++m) {
                    const float e = std::exp(scores[size_t(m)] - max);
                    sum += e;
                    const float* vr =
                        kv_row_f32(vb + int64_t(visible[size_t(m)]) * kv_tok + kvh * kv_row, v_buf.data());
                    ker.axpy_f32(e, vr, acc.data(), hd);
                }
                const float inv = n_vis > 0 ? float(1.0 / sum) : 0.0f;  // no visible key: zeros
                for (int64_t d = 0; d < hd; ++d) o[d] = acc[size_t(d)] * inv;
            }
        },
        1);
}

void silu_mul(const float* LE_RESTRICT g, const float* LE_RESTRICT u, float* LE_RESTRICT y, int64_t n) {
    const OpsKernels& k = ops_kernels();
    parallel_for(n, [&](int64_t a, int64_t b) { k.silu_mul(g + a, u + a, y + a, b - a); }, kMinElemsPerChunk);
}

void gelu(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    const OpsKernels& k = ops_kernels();
    parallel_for(n, [&](int64_t a, int64_t b) { k.gelu(x + a, y + a, b - a); }, kMinElemsPerChunk);
}

void gelu_quick(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    const OpsKernels& k = ops_kernels();
    parallel_for(n, [&](int64_t a, int64_t b) { k.gelu_quick(x + a, y + a, b - a); }, kMinElemsPerChunk);
}

// X [n, d] -> Y [n, d]
void softmax(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n, int64_t d) {
    require(n >= 0 && d > 0, "softmax", "need n >= 0 and d > 0");
    const OpsKernels& k = ops_kernels();
    parallel_for(
        n,
        [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) k.softmax_row(x + r * d, y + r * d, d);
        },
        std::max<int64_t>(1, kMinElemsPerChunk / d));
}

// A [n, d] += B [b_rows, d], b_rows in {1, n}
void add_inplace(float* LE_RESTRICT a, const float* LE_RESTRICT b, int64_t n, int64_t d, int64_t b_rows) {
    require(n >= 0 && d >= 0 && (b_rows == n || b_rows == 1), "add_inplace", "b must have n rows or 1 row");
    const OpsKernels& k = ops_kernels();
    if (b_rows == n) {
        parallel_for(n * d, [&](int64_t i0, int64_t i1) { k.add(a + i0, b + i0, i1 - i0); }, kMinElemsPerChunk);
        return;
    }
    parallel_for(
        n,
        [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) k.add(a + r * d, b, d);
        },
        std::max<int64_t>(1, kMinElemsPerChunk / std::max<int64_t>(d, 1)));
}

}  // namespace le
