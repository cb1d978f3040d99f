// AVX2 (+FMA, F16C) row kernels (ops.h): the same algorithms as ops_avx512.cpp in 8 lanes.
#include "ops.h"
#include "simd_avx2.h"

#if LE_X86_SIMD

#include <algorithm>
#include <cmath>
#include <limits>

namespace le {

using namespace avx2;

namespace {

// Loads / stores of the first n (< 8) floats, the rest zero: tails of odd-length rows.
LE_TARGET_AVX2 inline __m256i tail_mask(int64_t left) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(std::min<int64_t>(left, 8))), idx);
}
LE_TARGET_AVX2 inline __m256 load_n(const float* p, int64_t left) {
    return left >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, tail_mask(left));
}
LE_TARGET_AVX2 inline void store_n(float* p, __m256 v, int64_t left) {
    if (left >= 8) {
        _mm256_storeu_ps(p, v);
    } else {
        _mm256_maskstore_ps(p, tail_mask(left), v);
    }
}

LE_TARGET_AVX2 void rms_norm_row_avx2(const float* LE_RESTRICT x, const float* LE_RESTRICT w, float* LE_RESTRICT y,
                                      int64_t d, float eps) {
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (int64_t i = 0; i < d; i += 8) {
        const __m256 v = load_n(x + i, d - i);
        const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        s0 = _mm256_fmadd_pd(lo, lo, s0);
        s1 = _mm256_fmadd_pd(hi, hi, s1);
    }
    const __m256d s = _mm256_add_pd(s0, s1);
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    const double sum_sq = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    const float mean_sq = float(sum_sq / double(d));
    const __m256 scale = _mm256_set1_ps(float(1.0 / std::sqrt(double(mean_sq + eps))));
    for (int64_t i = 0; i < d; i += 8)
        store_n(y + i, _mm256_mul_ps(_mm256_mul_ps(load_n(x + i, d - i), scale), load_n(w + i, d - i)), d - i);
}

LE_TARGET_AVX2 void rope_pairs_avx2(float* LE_RESTRICT x, const float* LE_RESTRICT cos, const float* LE_RESTRICT sin,
                                    int64_t n_rot) {
    const int64_t half = n_rot / 2;
    int64_t i = 0;
    const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    const __m256 sign = _mm256_setr_ps(-1.0f, 1.0f, -1.0f, 1.0f, -1.0f, 1.0f, -1.0f, 1.0f);
    for (; i + 4 <= half; i += 4) {
        const __m256 c = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cos + i)), dup);
        const __m256 s = _mm256_mul_ps(_mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sin + i)), dup), sign);
        const __m256 v = _mm256_loadu_ps(x + 2 * i);
        const __m256 sw = _mm256_permute_ps(v, 0xB1);
        _mm256_storeu_ps(x + 2 * i, _mm256_add_ps(_mm256_mul_ps(v, c), _mm256_mul_ps(sw, s)));
    }
    for (; i < half; ++i) {  // as the reference
        const float x0 = x[2 * i], x1 = x[2 * i + 1];
        x[2 * i] = x0 * cos[i] - x1 * sin[i];
        x[2 * i + 1] = x1 * cos[i] + x0 * sin[i];
    }
}

LE_TARGET_AVX2 float dot_f32_avx2(const float* LE_RESTRICT x, const float* LE_RESTRICT y, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(load_n(x + i, n - i), load_n(y + i, n - i), acc);
    return hsum_ps(acc);
}

LE_TARGET_AVX2 void axpy_f32_avx2(float a, const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    const __m256 av = _mm256_set1_ps(a);
    for (int64_t i = 0; i < n; i += 8) store_n(y + i, _mm256_fmadd_ps(av, load_n(x + i, n - i), load_n(y + i, n - i)), n - i);
}

LE_TARGET_AVX2 void silu_mul_avx2(const float* LE_RESTRICT g, const float* LE_RESTRICT u, float* LE_RESTRICT y,
                                  int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256 gv = load_n(g + i, n - i);
        const __m256 s = _mm256_div_ps(gv, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
        store_n(y + i, _mm256_mul_ps(s, load_n(u + i, n - i)), n - i);
    }
}

// erfc lane-wise (see ops_avx512.cpp's erfc_ps).
LE_TARGET_AVX2 inline __m256 erfc_ps(__m256 z) {
    const __m256 a = abs_ps(z);
    const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_set1_ps(0.5f), a, _mm256_set1_ps(1.0f)));
    static constexpr float c[10] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                                    -0.18628806f, 0.09678418f,  0.37409196f, 1.00002368f, -1.26551223f};
    __m256 p = _mm256_set1_ps(c[0]);
    for (int i = 1; i < 10; ++i) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c[i]));
    const __m256 hi = _mm256_mul_ps(a, a);
    const __m256 lo = _mm256_fmsub_ps(a, a, hi);
    const __m256 e = _mm256_mul_ps(exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), hi)), exp_ps(_mm256_sub_ps(p, lo)));
    const __m256 r = _mm256_mul_ps(t, e);
    return _mm256_blendv_ps(r, _mm256_sub_ps(_mm256_set1_ps(2.0f), r), _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_LT_OQ));
}

LE_TARGET_AVX2 void gelu_avx2(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    const __m256 half = _mm256_set1_ps(0.5f), k = _mm256_set1_ps(-0.70710678118654752f);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256 v = load_n(x + i, n - i);
        store_n(y + i, _mm256_mul_ps(_mm256_mul_ps(half, v), erfc_ps(_mm256_mul_ps(v, k))), n - i);
    }
}

LE_TARGET_AVX2 void gelu_quick_avx2(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), k = _mm256_set1_ps(-1.702f);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256 v = load_n(x + i, n - i);
        store_n(y + i, _mm256_div_ps(v, _mm256_add_ps(one, exp_ps(_mm256_mul_ps(k, v)))), n - i);
    }
}

LE_TARGET_AVX2 void softmax_row_avx2(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t d) {
    float max = -std::numeric_limits<float>::infinity();
    bool any_nan = false;
    for (int64_t i = 0; i < d; ++i) {
        max = x[i] > max ? x[i] : max;
        any_nan |= std::isnan(x[i]);
    }
    if (max == -std::numeric_limits<float>::infinity() && !any_nan) {
        for (int64_t i = 0; i < d; ++i) y[i] = 0.0f;
        return;
    }
    const __m256 mv = _mm256_set1_ps(max);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t i = 0; i < d; i += 8) {
        const __m256 e = _mm256_and_ps(exp_ps(_mm256_sub_ps(load_n(x + i, d - i), mv)), _mm256_castsi256_ps(tail_mask(d - i)));
        sum = _mm256_add_ps(sum, e);
        store_n(y + i, e, d - i);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / hsum_ps(sum));
    for (int64_t i = 0; i < d; i += 8) store_n(y + i, _mm256_mul_ps(load_n(y + i, d - i), inv), d - i);
}

LE_TARGET_AVX2 void add_avx2(float* LE_RESTRICT a, const float* LE_RESTRICT b, int64_t n) {
    for (int64_t i = 0; i < n; i += 8) store_n(a + i, _mm256_add_ps(load_n(a + i, n - i), load_n(b + i, n - i)), n - i);
}

// ---- attention (see ops_avx512.cpp) --------------------------------------------------------------------

// 8 values [8c, 8c + 8) of a cache row as f32, the first `left` of them (hd may be odd for F32 / F16).
template <GGMLType KV>
LE_TARGET_AVX2 inline __m256 kv_chunk(const uint8_t* LE_RESTRICT row, int64_t c, int64_t left) {
    if (KV == GGMLType::F32) return load_n(reinterpret_cast<const float*>(row) + 8 * c, left);
    if (KV == GGMLType::F16) {
        const fp16_t* p = reinterpret_cast<const fp16_t*>(row) + 8 * c;
        if (left >= 8) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        alignas(16) fp16_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t j = 0; j < left; ++j) t[j] = p[j];
        return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
    }
    const uint8_t* b = row + (c / 4) * int64_t(sizeof(block_q8_0));  // Q8_0: 4 chunks per block, no tail
    const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * (c % 4)))));
    return _mm256_mul_ps(q, _mm256_set1_ps(_cvtsh_ss(*reinterpret_cast<const uint16_t*>(b))));
}

template <GGMLType KV, int G>
LE_TARGET_AVX2 void attend_group_t(const AttnArgs& a, const float* LE_RESTRICT q, int64_t p, const uint8_t* LE_RESTRICT k,
                                   const uint8_t* LE_RESTRICT v, float* LE_RESTRICT out, int32_t* LE_RESTRICT idx,
                                   float* LE_RESTRICT s) {
    const int64_t hd = a.hd, nc = (hd + 7) / 8;
    const int64_t lowest = a.window > 0 ? std::max<int64_t>(0, p - a.window + 1) : 0;
    int64_t n_vis = 0;
    for (int64_t j = 0; j < a.n_k; ++j) {
        const int64_t kp = a.k_pos[j];
        idx[n_vis] = int32_t(j);
        n_vis += (kp >= lowest && kp <= p) ? 1 : 0;
    }
    if (n_vis == 0) {
        for (int64_t i = 0; i < G * hd; ++i) out[i] = 0.0f;
        return;
    }
    constexpr int64_t kAhead = 8;
    for (int64_t m = 0; m < n_vis; ++m) {
        const uint8_t* row = k + int64_t(idx[m]) * a.kv_tok;
        if (m + kAhead < n_vis) {
            const char* pf = reinterpret_cast<const char*>(k + int64_t(idx[m + kAhead]) * a.kv_tok);
            for (int64_t off = 0; off < a.kv_row; off += 64) _mm_prefetch(pf + off, _MM_HINT_T0);
        }
        __m256 acc[G];
        for (int h = 0; h < G; ++h) acc[h] = _mm256_setzero_ps();
        for (int64_t c = 0; c < nc; ++c) {
            const int64_t left = hd - 8 * c;
            const __m256 kc = kv_chunk<KV>(row, c, left);
            for (int h = 0; h < G; ++h) acc[h] = _mm256_fmadd_ps(load_n(q + h * hd + 8 * c, left), kc, acc[h]);
        }
        for (int h = 0; h < G; ++h) s[m * G + h] = hsum_ps(acc[h]) * a.scale;
    }
    float inv[G];
    for (int h = 0; h < G; ++h) {
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t m = 0; m < n_vis; ++m) mx = std::max(mx, s[m * G + h]);
        float sum = 0.0f;
        for (int64_t m = 0; m < n_vis; m += 8) {
            alignas(32) float t[8];
            for (int j = 0; j < 8; ++j) t[j] = m + j < n_vis ? s[(m + j) * G + h] - mx : -200.0f;
            _mm256_store_ps(t, exp_ps(_mm256_load_ps(t)));
            for (int j = 0; j < 8 && m + j < n_vis; ++j) {
                s[(m + j) * G + h] = t[j];
                sum += t[j];
            }
        }
        inv[h] = 1.0f / sum;
    }
    constexpr int NC = G >= 4 ? 2 : 4;
    for (int64_t c0 = 0; c0 < nc; c0 += NC) {
        __m256 acc[G][NC];
        for (int h = 0; h < G; ++h)
            for (int c = 0; c < NC; ++c) acc[h][c] = _mm256_setzero_ps();
        const int64_t n_here = std::min<int64_t>(NC, nc - c0);
        for (int64_t m = 0; m < n_vis; ++m) {
            const uint8_t* row = v + int64_t(idx[m]) * a.kv_tok;
            if (m + kAhead < n_vis) _mm_prefetch(reinterpret_cast<const char*>(v + int64_t(idx[m + kAhead]) * a.kv_tok) + c0 * a.kv_row * 8 / hd, _MM_HINT_T0);
            for (int c = 0; c < NC; ++c) {
                if (c >= n_here) break;
                const __m256 vc = kv_chunk<KV>(row, c0 + c, hd - 8 * (c0 + c));
                for (int h = 0; h < G; ++h) acc[h][c] = _mm256_fmadd_ps(_mm256_set1_ps(s[m * G + h]), vc, acc[h][c]);
            }
        }
        for (int h = 0; h < G; ++h) {
            const __m256 iv = _mm256_set1_ps(inv[h]);
            for (int c = 0; c < n_here; ++c)
                store_n(out + h * hd + 8 * (c0 + c), _mm256_mul_ps(acc[h][c], iv), hd - 8 * (c0 + c));
        }
    }
}

template <GGMLType KV>
LE_TARGET_AVX2 void attend_kv(const AttnArgs& a, const float* LE_RESTRICT q, int64_t p, const uint8_t* LE_RESTRICT k,
                              const uint8_t* LE_RESTRICT v, float* LE_RESTRICT out, int32_t* LE_RESTRICT idx,
                              float* LE_RESTRICT s) {
    int64_t h = 0;
    for (; h + 4 <= a.group; h += 4) attend_group_t<KV, 4>(a, q + h * a.hd, p, k, v, out + h * a.hd, idx, s);
    for (; h + 2 <= a.group; h += 2) attend_group_t<KV, 2>(a, q + h * a.hd, p, k, v, out + h * a.hd, idx, s);
    for (; h < a.group; ++h) attend_group_t<KV, 1>(a, q + h * a.hd, p, k, v, out + h * a.hd, idx, s);
}

LE_TARGET_AVX2 void attend_group_avx2(const AttnArgs& a, const float* LE_RESTRICT q, int64_t p,
                                      const uint8_t* LE_RESTRICT k, const uint8_t* LE_RESTRICT v, float* LE_RESTRICT out,
                                      int32_t* LE_RESTRICT idx, float* LE_RESTRICT s) {
    switch (a.kv_type) {
        case GGMLType::F16: attend_kv<GGMLType::F16>(a, q, p, k, v, out, idx, s); break;
        case GGMLType::Q8_0: attend_kv<GGMLType::Q8_0>(a, q, p, k, v, out, idx, s); break;
        default: attend_kv<GGMLType::F32>(a, q, p, k, v, out, idx, s); break;
    }
}

}  // namespace

OpsKernels make_ops_kernels_avx2() {
    OpsKernels k = ops_kernels_ref;
    k.name = "avx2";
    k.rms_norm_row = &rms_norm_row_avx2;
    k.rope_pairs = &rope_pairs_avx2;
    k.dot_f32 = &dot_f32_avx2;
    k.axpy_f32 = &axpy_f32_avx2;
    k.silu_mul = &silu_mul_avx2;
    k.gelu = &gelu_avx2;
    k.gelu_quick = &gelu_quick_avx2;
    k.softmax_row = &softmax_row_avx2;
    k.add = &add_avx2;
    k.attend_group = &attend_group_avx2;
    return k;
}

}  // namespace le

#else  // not x86

namespace le {
OpsKernels make_ops_kernels_avx2() { return ops_kernels_ref; }
}  // namespace le

#endif
