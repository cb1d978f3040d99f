// Portable reference row kernels: the numerical definition every SIMD variant is tested against.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops.h"
#include "quants.h"

namespace le {
namespace {

// x [d], w [d] -> y [d]
void rms_norm_row_ref(const float* LE_RESTRICT x, const float* LE_RESTRICT w, float* LE_RESTRICT y, int64_t d,
                      float eps) {
    double sum_sq = 0.0;  // f64: d = 4096 f32 squares would lose ~3 digits in a plain f32 sum
    for (int64_t i = 0; i < d; ++i) sum_sq += double(x[i]) * double(x[i]);
    const float mean_sq = float(sum_sq / double(d));
    const float scale = float(1.0 / std::sqrt(double(mean_sq + eps)));  // f32 (ms + eps), as torch
    for (int64_t i = 0; i < d; ++i) y[i] = (x[i] * scale) * w[i];       // (x * rsqrt) * w, as torch
}

// x [n_rot] pairs rotated in place
void rope_pairs_ref(float* LE_RESTRICT x, const float* LE_RESTRICT cos, const float* LE_RESTRICT sin, int64_t n_rot) {
    for (int64_t i = 0; i < n_rot / 2; ++i) {
        const float x0 = x[2 * i], x1 = x[2 * i + 1];
        // transformers: q * cos + rotate_half(q) * sin, each product rounded separately
        x[2 * i] = x0 * cos[i] - x1 * sin[i];
        x[2 * i + 1] = x1 * cos[i] + x0 * sin[i];
    }
}

float dot_f32_ref(const float* LE_RESTRICT x, const float* LE_RESTRICT y, int64_t n) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) sum += x[i] * y[i];
    return sum;
}

void axpy_f32_ref(float a, const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void silu_mul_ref(const float* LE_RESTRICT g, const float* LE_RESTRICT u, float* LE_RESTRICT y, int64_t n) {
    // g / (1 + e^-g): for g < -88 e^-g is inf and the result is -0, not NaN
    for (int64_t i = 0; i < n; ++i) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void gelu_ref(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    // 0.5 x (1 + erf(x/sqrt2)) written with erfc: no cancellation for negative x
    constexpr float kInvSqrt2 = 0.70710678118654752f;
    for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * std::erfc(-x[i] * kInvSqrt2);
}

void gelu_quick_ref(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-1.702f * x[i]));
}

// x [d] -> y [d]
void softmax_row_ref(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t d) {
    float max = -std::numeric_limits<float>::infinity();
    bool any_nan = false;
    for (int64_t i = 0; i < d; ++i) {
        max = x[i] > max ? x[i] : max;
        any_nan |= std::isnan(x[i]);
    }
    if (max == -std::numeric_limits<float>::infinity() && !any_nan) {  // every entry masked
        for (int64_t i = 0; i < d; ++i) y[i] = 0.0f;
        return;
    }
    double sum = 0.0;
    for (int64_t i = 0; i < d; ++i) {
        y[i] = std::exp(x[i] - max);
        sum += y[i];
    }
    const float inv = float(1.0 / sum);
    for (int64_t i = 0; i < d; ++i) y[i] *= inv;
}

void add_ref(float* LE_RESTRICT a, const float* LE_RESTRICT b, int64_t n) {
    for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

// q [group, hd] -> out [group, hd]: per head, scores of the visible keys, max-subtracted exp, weighted sum
// of V rows. K / V rows are read as f32: in place for F32, else dequantized into a row of scratch.
void attend_group_ref(const AttnArgs& a, const float* LE_RESTRICT q, int64_t p, const uint8_t* LE_RESTRICT k,
                      const uint8_t* LE_RESTRICT v, float* LE_RESTRICT out, int32_t* LE_RESTRICT visible,
                      float* LE_RESTRICT scores) {
    std::vector<float> k_buf(size_t(a.hd)), v_buf(size_t(a.hd)), acc(size_t(a.hd));
    auto row_f32 = [&](const uint8_t* row, float* buf) -> const float* {
        if (a.kv_type == GGMLType::F32) return reinterpret_cast<const float*>(row);
        dequantize_row(a.kv_type, row, buf, a.hd);
        return buf;
    };
    for (int64_t h = 0; h < a.group; ++h) {
        const float* qv = q + h * a.hd;
        float* o = out + h * a.hd;
        int64_t n_vis = 0;
        float max = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < a.n_k; ++j) {
            const int64_t kp = a.k_pos[j];
            if (kp < 0 || kp > p || (a.window > 0 && p - kp >= a.window)) continue;
            const float s = dot_f32_ref(qv, row_f32(k + j * a.kv_tok, k_buf.data()), a.hd) * a.scale;
            scores[n_vis] = s;
            visible[n_vis] = int32_t(j);
            max = std::max(max, s);
            ++n_vis;
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        double sum = 0.0;
        for (int64_t m = 0; m < n_vis; ++m) {
            const float e = std::exp(scores[m] - max);
            sum += e;
            axpy_f32_ref(e, row_f32(v + int64_t(visible[m]) * a.kv_tok, v_buf.data()), acc.data(), a.hd);
        }
        const float inv = n_vis > 0 ? float(1.0 / sum) : 0.0f;  // no visible key: zeros
        for (int64_t d = 0; d < a.hd; ++d) o[d] = acc[size_t(d)] * inv;
    }
}

}  // namespace

const OpsKernels ops_kernels_ref = {
    "ref",        rms_norm_row_ref, rope_pairs_ref, dot_f32_ref,     axpy_f32_ref,     silu_mul_ref,
    gelu_ref,     gelu_quick_ref,   softmax_row_ref, add_ref,        attend_group_ref,
};

}  // namespace le
