// Operator drivers: contract checks, work split over the thread pool, calls into the row kernels.
#include "ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "gemm.h"
#include "quants.h"
#include "threadpool.h"

namespace le {
namespace {

// Below these amounts of work per chunk, waking another thread costs more than it saves.
constexpr int64_t kMinMacsPerChunk = 1 << 15;
constexpr int64_t kMinElemsPerChunk = 1 << 14;
// Activation rows of one token tile should stay in L2 while every weight row of a chunk passes by.
constexpr int64_t kActTileBytes = 256 * 1024;
// A block of weight rows that stays in L2 while every token tile passes it.
constexpr int64_t kWeightBlockBytes = 256 * 1024;
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

const OpsKernels& ops_kernels_for_isa(ISA isa) {
    if (!isa_supported(isa))
        throw std::invalid_argument(std::string("ISA ") + isa_name(isa) + " is not supported on this CPU/build");
    static const OpsKernels avx2 = make_ops_kernels_avx2();
    static const OpsKernels avx512 = make_ops_kernels_avx512();
    static const OpsKernels neon = make_ops_kernels_neon();
    switch (isa) {
        case ISA::AVX2: return avx2;
        case ISA::AVX512: return avx512;
        case ISA::NEON: return neon;
        case ISA::REF: break;
    }
    return ops_kernels_ref;
}

const OpsKernels& ops_kernels() {
    static const OpsKernels& table = ops_kernels_for_isa(active_isa());
    return table;
}

// W [n_out, n_in] x X [n_tok, n_in] -> Y [n_tok, n_out]
void matmul(GGMLType wt, const void* LE_RESTRICT w, const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n_out,
            int64_t n_in, int64_t n_tok) {
    const MatmulOut out{wt, w, y, n_out};
    matmul_many(&out, 1, x, n_in, n_tok);
}

void matmul_many(const MatmulOut* outs, int n_outs, const float* LE_RESTRICT x, int64_t n_in, int64_t n_tok) {
    require(n_outs >= 0 && n_tok >= 0, "matmul", "negative size");
    int64_t total_rows = 0;
    for (int i = 0; i < n_outs; ++i) {
        check_weight_type(outs[i].wt, "matmul");
        check_block_multiple(outs[i].wt, n_in, "matmul");
        require(outs[i].n_out >= 0, "matmul", "negative size");
        total_rows += outs[i].n_out;
    }
    if (total_rows == 0 || n_tok == 0) return;

    // Activations in the layout each weight type's kernels want, one row per token, quantized once per
    // packer (a Q4_K_M layer's Q4_K Q and K share one; a Q6_K V packs its own).
    struct Operand {
        const GemmKernels* gk;
        const uint8_t* act;
        int64_t act_stride;
    };
    std::vector<Operand> ops(static_cast<size_t>(n_outs));
    std::vector<int> packed_by(static_cast<size_t>(n_outs));  // entry whose packing entry i reuses
    int64_t scratch_bytes = 0;
    for (int i = 0; i < n_outs; ++i) {
        const GemmKernels& gk = gemm_kernels(outs[i].wt);
        ops[i] = {&gk, reinterpret_cast<const uint8_t*>(x), n_in * int64_t(sizeof(float))};
        packed_by[i] = i;
        if (gk.pack_act == nullptr) continue;
        for (int j = 0; j < i; ++j)
            if (ops[j].gk->pack_act == gk.pack_act) packed_by[i] = j;
        if (packed_by[i] != i) continue;
        ops[i].act_stride = (gk.act_bytes(n_in) + kActRowAlign - 1) / kActRowAlign * kActRowAlign;
        scratch_bytes += n_tok * ops[i].act_stride;
    }
    std::vector<uint8_t>& scratch = act_scratch();
    if (int64_t(scratch.size()) < scratch_bytes + kActRowAlign) scratch.resize(size_t(scratch_bytes + kActRowAlign));
    const uintptr_t base = reinterpret_cast<uintptr_t>(scratch.data());
    uint8_t* buf = scratch.data() + ((kActRowAlign - base % kActRowAlign) % kActRowAlign);
    for (int i = 0; i < n_outs; ++i) {
        if (ops[i].gk->pack_act == nullptr) continue;
        if (packed_by[i] != i) {  // packed already (j < i): share its rows, keep this weight's own kernels
            ops[i].act = ops[size_t(packed_by[i])].act;
            ops[i].act_stride = ops[size_t(packed_by[i])].act_stride;
            continue;
        }
        const Operand& op = ops[i];
        uint8_t* dst = buf;
        parallel_for(
            n_tok,
            [&](int64_t t0, int64_t t1) {
                for (int64_t t = t0; t < t1; ++t) op.gk->pack_act(x + t * n_in, dst + t * op.act_stride, n_in);
            },
            std::max<int64_t>(1, kMinElemsPerChunk / n_in));
        ops[i].act = buf;
        buf += n_tok * op.act_stride;
    }

    // One job over the rows of every output, so a small matrix (K, V) shares its start-up with its
    // neighbours. Inside a chunk, blocks of rows small enough to stay in L2 meet every token tile in turn,
    // so weights come from memory once per tile and the kernel reuses them across tokens.
    const auto rows = [&](int i, int64_t r0, int64_t r1) {
        const MatmulOut& o = outs[i];
        const Operand& op = ops[size_t(i)];
        const int64_t w_stride = row_size(o.wt, n_in);
        const uint8_t* wb = static_cast<const uint8_t*>(o.w);
        const int64_t tile = std::clamp<int64_t>(kActTileBytes / op.act_stride, 1, n_tok);
        const int64_t row_block = n_tok == 1 ? o.n_out : std::max<int64_t>(4, kWeightBlockBytes / w_stride / 4 * 4);
        for (int64_t rb = r0; rb < r1; rb += row_block) {
            const int64_t re = std::min(r1, rb + row_block);
            for (int64_t t0 = 0; t0 < n_tok; t0 += tile) {
                const int64_t t1 = std::min(n_tok, t0 + tile);
                op.gk->gemm(wb + rb * w_stride, w_stride, re - rb, op.act + t0 * op.act_stride, op.act_stride,
                            t1 - t0, o.y + t0 * o.n_out + rb, o.n_out, n_in);
            }
        }
    };
    parallel_for(
        total_rows,
        [&](int64_t r0, int64_t r1) {
            int64_t first = 0;  // global index of output i's first row
            for (int i = 0; i < n_outs && first < r1; first += outs[i].n_out, ++i) {
                const int64_t lo = std::max(r0, first), hi = std::min(r1, first + outs[i].n_out);
                if (lo < hi) rows(i, lo - first, hi - first);
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

    // One item = one (query, KV head): the group of query heads that share it read each K / V row once.
    const int64_t n_items = n_q * n_kv;
    const AttnArgs args{hd, group, kv_type, kv_row, kv_tok, k_pos, n_k, window, scale};
    parallel_for(
        n_items,
        [&](int64_t i0, int64_t i1) {
            std::vector<int32_t> idx(static_cast<size_t>(n_k));
            std::vector<float> scores(static_cast<size_t>(n_k * group));
            for (int64_t item = i0; item < i1; ++item) {
                const int64_t iq = item / n_kv, kvh = item % n_kv;
                const int64_t h0 = kvh * group;  // first query head of this KV head
                const float* qg = q + (iq * n_head + h0) * hd;
                float* og = out + (iq * n_head + h0) * hd;
                ker.attend_group(args, qg, q_pos[iq], kb + kvh * kv_row, vb + kvh * kv_row, og, idx.data(), scores.data());
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
