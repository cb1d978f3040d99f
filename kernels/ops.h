// Decoder / projector operators on f32 activations: matmul over quantized weights, embedding lookup,
// RMSNorm, RoPE, attention over an F32 / F16 / Q8_0 KV cache, SiLU*mul, GELU, softmax, add.
//
// Two layers: the drivers below check their contract, split the work over the thread pool and call row
// kernels through an OpsKernels table. Each row kernel has a portable `_ref` version (ops_ref.cpp) that
// always builds; SIMD versions fill another table, picked once at load, never per call.
// Drivers throw std::invalid_argument on a broken precondition (pybind11 maps it to ValueError) and
// std::out_of_range on a bad index (IndexError). Sizes are int64; arrays are dense, row-major.
#pragma once

#include "common.h"
#include "isa.h"

namespace le {

// Weight types matmul and get_rows accept: F32, F16, BF16, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K.
bool is_weight_type(GGMLType t);

// W [n_out, n_in] (rows of row_size(wt, n_in) bytes, used in place) x X [n_tok, n_in] -> Y [n_tok, n_out]
// Y = X W^T. Each X row is quantized once to act_type(wt); Y[t, r] depends only on W row r and X row t,
// so results are bit-identical for any thread count and any n_tok.
void matmul(GGMLType wt, const void* LE_RESTRICT w, const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n_out,
            int64_t n_in, int64_t n_tok);

// Several weights that read the same X, e.g. a layer's Q, K and V: outs[i].y [n_tok, outs[i].n_out] =
// X outs[i].w^T, the same bits as separate matmul calls. X is quantized once per activation layout and the
// rows of all weights are shared out as one job over the thread pool.
struct MatmulOut {
    GGMLType wt;
    const void* w;
    float* y;
    int64_t n_out;
};
void matmul_many(const MatmulOut* outs, int n_outs, const float* LE_RESTRICT x, int64_t n_in, int64_t n_tok);

// W [n_rows, n_in] of type wt, ids [n] -> Y [n, n_in] (dequantized rows). Throws std::out_of_range.
void get_rows(GGMLType wt, const void* LE_RESTRICT w, int64_t n_rows, int64_t n_in, const int32_t* LE_RESTRICT ids,
              int64_t n, float* LE_RESTRICT y);

// X [n, d], w [d] -> Y [n, d]; y = x * rsqrt(mean(x^2) + eps) * w (transformers' MistralRMSNorm order).
void rms_norm(const float* LE_RESTRICT x, const float* LE_RESTRICT w, float* LE_RESTRICT y, int64_t n, int64_t d,
              float eps);

// X [n_tok, n_head, head_dim] rotated in place; pos [n_tok]. llama.cpp "normal" RoPE: the pair
// (x[2i], x[2i+1]), i < n_rot/2, turns by pos * theta^(-2i/n_rot); dims >= n_rot are left alone.
// Angles are computed as transformers does, in f32 (see rope_inv_freq).
void rope(float* LE_RESTRICT x, const int32_t* LE_RESTRICT pos, int64_t n_tok, int64_t n_head, int64_t head_dim,
          int64_t n_rot, float theta);
// inv_freq [n_rot/2] as transformers computes it: 1 / f32(theta ** f32(2i / n_rot)), in f32.
void rope_inv_freq(float theta, int64_t n_rot, float* LE_RESTRICT inv_freq);

// Q [n_q, n_head, hd] x K, V [n_k, n_kv, hd] (type kv_type: F32, F16 or Q8_0) -> O [n_q, n_head, hd].
// Head h reads KV head h / (n_head / n_kv); scale 1/sqrt(hd). Key j is visible to query i iff
// k_pos[j] >= 0 && k_pos[j] <= q_pos[i] && (window == 0 || q_pos[i] - k_pos[j] < window); keys may be in
// any order (ring buffer). A query that sees no key gets a zero output.
void attention(const float* LE_RESTRICT q, const int32_t* LE_RESTRICT q_pos, int64_t n_q, int64_t n_head, int64_t hd,
               GGMLType kv_type, const void* LE_RESTRICT k, const void* LE_RESTRICT v, const int32_t* LE_RESTRICT k_pos,
               int64_t n_k, int64_t n_kv, int64_t window, float* LE_RESTRICT out);

// Elementwise over n values: silu(g) * u; exact erf GELU; quick GELU x * sigmoid(1.702 x).
void silu_mul(const float* LE_RESTRICT g, const float* LE_RESTRICT u, float* LE_RESTRICT y, int64_t n);
void gelu(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
void gelu_quick(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);

// X [n, d] -> Y [n, d], softmax over each row. A row of only -inf gives zeros.
void softmax(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n, int64_t d);

// A [n, d] += B [n, d] (b_rows == n) or B [d] broadcast over rows (b_rows == 1).
void add_inplace(float* LE_RESTRICT a, const float* LE_RESTRICT b, int64_t n, int64_t d, int64_t b_rows);

// What attention's per-group kernel needs to know about the cache and the mask.
struct AttnArgs {
    int64_t hd;        // head size
    int64_t group;     // query heads per KV head
    GGMLType kv_type;  // F32, F16 or Q8_0
    int64_t kv_row;    // bytes of one head's K (or V) row
    int64_t kv_tok;    // bytes of one cache slot (every KV head)
    const int32_t* k_pos;
    int64_t n_k;
    int64_t window;
    float scale;       // 1 / sqrt(hd)
};

// Row kernels behind the drivers. Each has a `_ref` twin in ops_ref.cpp; all take dense rows.
struct OpsKernels {
    const char* name;
    // x [d], w [d] -> y [d]
    void (*rms_norm_row)(const float* LE_RESTRICT x, const float* LE_RESTRICT w, float* LE_RESTRICT y, int64_t d,
                         float eps);
    // x [n_rot] pairs rotated in place by (cos[i], sin[i]), i < n_rot/2
    void (*rope_pairs)(float* LE_RESTRICT x, const float* LE_RESTRICT cos, const float* LE_RESTRICT sin, int64_t n_rot);
    // sum x[i] * y[i] over n
    float (*dot_f32)(const float* LE_RESTRICT x, const float* LE_RESTRICT y, int64_t n);
    // y [n] += a * x [n]
    void (*axpy_f32)(float a, const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
    void (*silu_mul)(const float* LE_RESTRICT g, const float* LE_RESTRICT u, float* LE_RESTRICT y, int64_t n);
    void (*gelu)(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
    void (*gelu_quick)(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
    // x [d] -> y [d]
    void (*softmax_row)(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t d);
    // a [n] += b [n]
    void (*add)(float* LE_RESTRICT a, const float* LE_RESTRICT b, int64_t n);
    // One query position p and one KV head: q [group, hd] against every key j < n_k that p sees (k, v: that
    // head's row in slot 0; slot j at + j * kv_tok) -> out [group, hd]. Scratch: idx [n_k], scores
    // [group * n_k], contents undefined.
    void (*attend_group)(const AttnArgs& a, const float* LE_RESTRICT q, int64_t p, const uint8_t* LE_RESTRICT k,
                         const uint8_t* LE_RESTRICT v, float* LE_RESTRICT out, int32_t* LE_RESTRICT idx,
                         float* LE_RESTRICT scores);
};

extern const OpsKernels ops_kernels_ref;
// The reference table with an ISA's variants in place (ops_<isa>.cpp; the reference table off that ISA).
OpsKernels make_ops_kernels_avx2();
OpsKernels make_ops_kernels_avx512();
OpsKernels make_ops_kernels_neon();
// The table the drivers use, chosen once at load from active_isa(); an ISA without its own variant of a
// row kernel has the reference's in that slot.
const OpsKernels& ops_kernels();
// The table of an explicit ISA (tests; throws std::invalid_argument if the ISA is unsupported).
const OpsKernels& ops_kernels_for_isa(ISA isa);

}  // namespace le
