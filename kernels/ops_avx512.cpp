// AVX-512 row kernels (ops.h): elementwise ops with a vector exp, RMSNorm, RoPE, and attention that reads
// the F16 / Q8_0 / F32 cache in place (no dequantized copies), each K and V row once for every query head
// of its group.
#include "ops.h"
#include "simd_avx512.h"

#if LE_X86_SIMD

#include <cmath>
#include <limits>

namespace le {

using namespace avx512;

namespace {

// e^x lane-wise, within 2 ulp: x = n ln2 + r, |r| <= ln2 / 2, Cephes' expf polynomial for e^r, times 2^n
// by vscalefps (which gives 0 or inf at the ends of the range). NaN stays NaN.
LE_TARGET_AVX512 inline __m512 exp_ps(__m512 x) {
    x = _mm512_min_ps(_mm512_set1_ps(100.0f), _mm512_max_ps(_mm512_set1_ps(-110.0f), x));  // NaN passes through
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

LE_TARGET_AVX512 inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
}

// x [d], w [d] -> y [d]: sum of squares in double (as the reference), then (x * scale) * w in f32.
LE_TARGET_AVX512 void rms_norm_row_avx512(const float* LE_RESTRICT x, const float* LE_RESTRICT w,
                                          float* LE_RESTRICT y, int64_t d, float eps) {
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < d; i += 16) {
        const __m512 v = _mm512_maskz_loadu_ps(tail_mask(d - i), x + i);
        const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        s0 = _mm512_fmadd_pd(lo, lo, s0);
        s1 = _mm512_fmadd_pd(hi, hi, s1);
    }
    const double sum_sq = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    const float mean_sq = float(sum_sq / double(d));
    const __m512 scale = _mm512_set1_ps(float(1.0 / std::sqrt(double(mean_sq + eps))));
    for (int64_t i = 0; i < d; i += 16) {
        const __mmask16 m = tail_mask(d - i);
        const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), scale), _mm512_maskz_loadu_ps(m, w + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

// Pairs (x[2i], x[2i+1]) turned by (cos[i], sin[i]); products rounded separately, as the reference.
LE_TARGET_AVX512 void rope_pairs_avx512(float* LE_RESTRICT x, const float* LE_RESTRICT cos,
                                        const float* LE_RESTRICT sin, int64_t n_rot) {
    const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    const __mmask16 odd = 0xAAAA;
    const int64_t half = n_rot / 2;
    for (int64_t i = 0; i < half; i += 8) {
        const int64_t left = std::min<int64_t>(8, half - i);
        const __mmask8 m8 = __mmask8((1u << left) - 1);
        const __mmask16 m16 = __mmask16((1u << (2 * left)) - 1);
        const __m512 c = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_maskz_loadu_ps(m8, cos + i)));
        const __m512 s = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_maskz_loadu_ps(m8, sin + i)));
        const __m512 sn = _mm512_mask_sub_ps(_mm512_sub_ps(_mm512_setzero_ps(), s), odd, s, _mm512_setzero_ps());
        const __m512 v = _mm512_maskz_loadu_ps(m16, x + 2 * i);
        const __m512 sw = _mm512_permute_ps(v, 0xB1);  // (x1, x0) in each pair
        // even lane: x0 c + x1 (-s) = x0 c - x1 s; odd lane: x1 c + x0 s
        _mm512_mask_storeu_ps(x + 2 * i, m16, _mm512_add_ps(_mm512_mul_ps(v, c), _mm512_mul_ps(sw, sn)));
    }
}

LE_TARGET_AVX512 float dot_f32_avx512(const float* LE_RESTRICT x, const float* LE_RESTRICT y, int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

LE_TARGET_AVX512 void axpy_f32_avx512(float a, const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    const __m512 av = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

LE_TARGET_AVX512 void silu_mul_avx512(const float* LE_RESTRICT g, const float* LE_RESTRICT u, float* LE_RESTRICT y,
                                      int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
        // g / (1 + e^-g): e^-g = inf for g < -88 gives -0, not NaN, as the reference
        const __m512 s = _mm512_div_ps(gv, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

// erfc(z) lane-wise, relative error ~1e-6 everywhere: Numerical Recipes' erfcc (a Chebyshev fit with
// fractional error < 1.2e-7) with e^(-z^2) split as e^(-hi) * e^(-lo), hi + lo = z^2 exactly, so that the
// large exponent of the tail (z ~ 9 before the result underflows) adds no error of its own.
LE_TARGET_AVX512 inline __m512 erfc_ps(__m512 z) {
    const __m512 a = _mm512_abs_ps(z);
    const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(_mm512_set1_ps(0.5f), a, _mm512_set1_ps(1.0f)));
    static constexpr float c[10] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                                    -0.18628806f, 0.09678418f,  0.37409196f, 1.00002368f, -1.26551223f};
    __m512 p = _mm512_set1_ps(c[0]);
    for (int i = 1; i < 10; ++i) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c[i]));
    const __m512 hi = _mm512_mul_ps(a, a);
    const __m512 lo = _mm512_fmsub_ps(a, a, hi);
    const __m512 e = _mm512_mul_ps(exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), hi)), exp_ps(_mm512_sub_ps(p, lo)));
    const __m512 r = _mm512_mul_ps(t, e);
    // z < 0: erfc(z) = 2 - erfc(-z)
    return _mm512_mask_sub_ps(r, _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_set1_ps(2.0f), r);
}

// 0.5 x erfc(-x / sqrt 2), as the reference writes it (no 1 + erf cancellation for x << 0).
LE_TARGET_AVX512 void gelu_avx512(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    const __m512 half = _mm512_set1_ps(0.5f), k = _mm512_set1_ps(-0.70710678118654752f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_mul_ps(half, v), erfc_ps(_mm512_mul_ps(v, k))));
    }
}

LE_TARGET_AVX512 void gelu_quick_avx512(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f), k = _mm512_set1_ps(-1.702f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_div_ps(v, _mm512_add_ps(one, exp_ps(_mm512_mul_ps(k, v)))));
    }
}

// x [d] -> y [d]; a row of only -inf gives zeros, a NaN anywhere NaNs everywhere (as the reference).
LE_TARGET_AVX512 void softmax_row_avx512(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t d) {
    const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512 mx = ninf;
    __mmask16 nan = 0;
    for (int64_t i = 0; i < d; i += 16) {
        const __m512 v = _mm512_mask_loadu_ps(ninf, tail_mask(d - i), x + i);
        mx = _mm512_max_ps(v, mx);  // a NaN lane keeps mx
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    }
    const float max = _mm512_reduce_max_ps(mx);
    if (max == -std::numeric_limits<float>::infinity() && !nan) {
        for (int64_t i = 0; i < d; i += 16) _mm512_mask_storeu_ps(y + i, tail_mask(d - i), _mm512_setzero_ps());
        return;
    }
    const __m512 mv = _mm512_set1_ps(max);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < d; i += 16) {
        const __mmask16 m = tail_mask(d - i);
        const __m512 e = _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mv)));
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(y + i, m, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int64_t i = 0; i < d; i += 16) {
        const __mmask16 m = tail_mask(d - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i), inv));
    }
}

LE_TARGET_AVX512 void add_avx512(float* LE_RESTRICT a, const float* LE_RESTRICT b, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(a + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i)));
    }
}

// ---- attention ------------------------------------------------------------------------------------------

// r[i] = sum of the 16 lanes of v[i], for 16 vectors at once (a transposing tree of 45 shuffles and adds).
LE_TARGET_AVX512 inline __m512 hsum16(const __m512 (&v)[16]) {
    __m512 w[8], x[4];
    for (int i = 0; i < 8; ++i)
        w[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; ++i) {
        const __m512d a = _mm512_castps_pd(w[2 * i]), b = _mm512_castps_pd(w[2 * i + 1]);
        x[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    // x[i], 128-bit lane L, element j: lane L's sum of v[4i + j]; now add the four lanes.
    const __m512 y0 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 y1 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(x[2], x[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(y0, y1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(y0, y1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// 16 values [16c, 16c + 16) of a cache row as f32 (masked past hd).
template <GGMLType KV>
LE_TARGET_AVX512 inline __m512 kv_chunk(const uint8_t* LE_RESTRICT row, int64_t c, __mmask16 m) {
    if (KV == GGMLType::F32) return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + 16 * c);
    if (KV == GGMLType::F16)
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const fp16_t*>(row) + 16 * c));
    // Q8_0: block c / 2, its half c % 2 (hd is a multiple of 32, so no tail)
    const uint8_t* b = row + (c / 2) * int64_t(sizeof(block_q8_0));
    const __m512 q = _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 + 16 * (c % 2)))));
    return _mm512_mul_ps(q, _mm512_set1_ps(_cvtsh_ss(*reinterpret_cast<const uint16_t*>(b))));
}

// Scores of the visible keys for G heads, softmax, then V in register blocks of NC chunks x G heads.
template <GGMLType KV, int G>
LE_TARGET_AVX512 void attend_group_t(const AttnArgs& a, const float* LE_RESTRICT q, int64_t p,
                                     const uint8_t* LE_RESTRICT k, const uint8_t* LE_RESTRICT v,
                                     float* LE_RESTRICT out, int32_t* LE_RESTRICT idx, float* LE_RESTRICT s) {
    const int64_t hd = a.hd, nc = (hd + 15) / 16;
    const __mmask16 last = tail_mask(hd - 16 * (nc - 1));

    // Visible keys, in slot order: 0 <= k_pos <= p, and inside the window.
    int64_t n_vis = 0;
    const __m512i pv = _mm512_set1_epi32(int32_t(p));
    const __m512i lowest = _mm512_set1_epi32(a.window > 0 ? int32_t(std::max<int64_t>(0, p - a.window + 1)) : 0);
    for (int64_t j = 0; j < a.n_k; j += 16) {
        const __mmask16 m = tail_mask(a.n_k - j);
        const __m512i kp = _mm512_maskz_loadu_epi32(m, a.k_pos + j);
        const __mmask16 vis = _mm512_mask_cmple_epi32_mask(_mm512_mask_cmpge_epi32_mask(m, kp, lowest), kp, pv);
        _mm512_mask_compressstoreu_epi32(idx + n_vis, vis,
                                         _mm512_add_epi32(_mm512_set1_epi32(int32_t(j)),
                                                          _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)));
        n_vis += __builtin_popcount(vis);
    }
    if (n_vis == 0) {
        for (int64_t i = 0; i < G * hd; ++i) out[i] = 0.0f;
        return;
    }

    // Scores, stored key-major (s[m * G + h]): KB = 16 / G keys at a time, each K row converted once and
    // dotted with the G query heads; the 16 sums come out of one transposing reduction. Rows are kv_tok
    // bytes apart (every KV head of a slot in between): fetch whole rows a few keys ahead.
    constexpr int KB = 16 / G;
    constexpr int64_t kAhead = 8;
    for (int64_t m0 = 0; m0 < n_vis; m0 += KB) {
        const uint8_t* rows[KB];
        for (int i = 0; i < KB; ++i) rows[i] = k + int64_t(idx[std::min<int64_t>(m0 + i, n_vis - 1)]) * a.kv_tok;
        for (int i = 0; i < KB; ++i) {
            if (m0 + kAhead + i < n_vis) {
                const char* pf = reinterpret_cast<const char*>(k + int64_t(idx[m0 + kAhead + i]) * a.kv_tok);
                for (int64_t off = 0; off < a.kv_row; off += 64) _mm_prefetch(pf + off, _MM_HINT_T0);
            }
        }
        __m512 acc[16];
        for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
        for (int64_t c = 0; c < nc; ++c) {
            const __mmask16 cm = c + 1 < nc ? __mmask16(0xffff) : last;
            __m512 kc[KB];
            for (int i = 0; i < KB; ++i) kc[i] = kv_chunk<KV>(rows[i], c, cm);
            for (int h = 0; h < G; ++h) {
                const __m512 qc = _mm512_maskz_loadu_ps(cm, q + h * hd + 16 * c);
                for (int i = 0; i < KB; ++i) acc[i * G + h] = _mm512_fmadd_ps(qc, kc[i], acc[i * G + h]);
            }
        }
        const int64_t n_here = std::min<int64_t>(KB, n_vis - m0);
        _mm512_mask_storeu_ps(s + m0 * G, tail_mask(n_here * G), _mm512_mul_ps(hsum16(acc), _mm512_set1_ps(a.scale)));
    }

    // Softmax numerators in place, per head (lane h of every G): max, exp, sums.
    alignas(64) float lane[16];
    __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t i = 0; i < n_vis * G; i += 16) mx = _mm512_max_ps(_mm512_mask_loadu_ps(mx, tail_mask(n_vis * G - i), s + i), mx);
    _mm512_store_ps(lane, mx);
    float maxh[G];
    for (int h = 0; h < G; ++h) {
        maxh[h] = lane[h];
        for (int i = h + G; i < 16; i += G) maxh[h] = std::max(maxh[h], lane[i]);
    }
    for (int i = 0; i < 16; ++i) lane[i] = maxh[i % G];
    const __m512 mv = _mm512_load_ps(lane);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n_vis * G; i += 16) {
        const __mmask16 tm = tail_mask(n_vis * G - i);
        const __m512 e = _mm512_maskz_mov_ps(tm, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, s + i), mv)));
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(s + i, tm, e);
    }
    _mm512_store_ps(lane, sum);
    float inv[G];
    for (int h = 0; h < G; ++h) {
        float t = 0.0f;
        for (int i = h; i < 16; i += G) t += lane[i];
        inv[h] = 1.0f / t;
    }

    // V: NC chunks of 16 values x G heads of accumulators at a time, every visible row (a pass reads only
    // its chunks of each row, so V is still read once in all).
    constexpr int NC = G >= 8 ? 2 : 4;
    const int64_t chunk_bytes = a.kv_row * 16 / hd;  // bytes of 16 values in a row (Q8_0: 17)
    for (int64_t c0 = 0; c0 < nc; c0 += NC) {
        const int64_t pf_lo = c0 * chunk_bytes / 64 * 64, pf_hi = std::min(a.kv_row, (c0 + NC) * chunk_bytes);
        __m512 acc[G][NC];
        for (int h = 0; h < G; ++h)
            for (int c = 0; c < NC; ++c) acc[h][c] = _mm512_setzero_ps();
        const int64_t n_here = std::min<int64_t>(NC, nc - c0);
        for (int64_t m = 0; m < n_vis; ++m) {
            const uint8_t* row = v + int64_t(idx[m]) * a.kv_tok;
            if (m + kAhead < n_vis) {
                const char* pf = reinterpret_cast<const char*>(v + int64_t(idx[m + kAhead]) * a.kv_tok);
                for (int64_t off = pf_lo; off < pf_hi; off += 64) _mm_prefetch(pf + off, _MM_HINT_T0);
            }
            for (int c = 0; c < NC; ++c) {
                if (c >= n_here) break;
                const __mmask16 cm = c0 + c + 1 < nc ? __mmask16(0xffff) : last;
                const __m512 vc = kv_chunk<KV>(row, c0 + c, cm);
                for (int h = 0; h < G; ++h) acc[h][c] = _mm512_fmadd_ps(_mm512_set1_ps(s[m * G + h]), vc, acc[h][c]);
            }
        }
        for (int h = 0; h < G; ++h) {
            const __m512 iv = _mm512_set1_ps(inv[h]);
            for (int c = 0; c < n_here; ++c) {
                const __mmask16 cm = c0 + c + 1 < nc ? __mmask16(0xffff) : last;
                _mm512_mask_storeu_ps(out + h * hd + 16 * (c0 + c), cm, _mm512_mul_ps(acc[h][c], iv));
            }
        }
    }
}

template <GGMLType KV>
LE_TARGET_AVX512 void attend_kv(const AttnArgs& a, const float* LE_RESTRICT q, int64_t p, const uint8_t* LE_RESTRICT k,
                                const uint8_t* LE_RESTRICT v, float* LE_RESTRICT out, int32_t* LE_RESTRICT idx,
                                float* LE_RESTRICT s) {
    // Head groups of 4 (GQA 4:1, Mistral), then 2 and 1 for what is left.
    int64_t h = 0;
    for (; h + 4 <= a.group; h += 4) attend_group_t<KV, 4>(a, q + h * a.hd, p, k, v, out + h * a.hd, idx, s);
    for (; h + 2 <= a.group; h += 2) attend_group_t<KV, 2>(a, q + h * a.hd, p, k, v, out + h * a.hd, idx, s);
    for (; h < a.group; ++h) attend_group_t<KV, 1>(a, q + h * a.hd, p, k, v, out + h * a.hd, idx, s);
}

LE_TARGET_AVX512 void attend_group_avx512(const AttnArgs& a, const float* LE_RESTRICT q, int64_t p,
                                          const uint8_t* LE_RESTRICT k, const uint8_t* LE_RESTRICT v,
                                          float* LE_RESTRICT out, int32_t* LE_RESTRICT idx, float* LE_RESTRICT s) {
    switch (a.kv_type) {
        case GGMLType::F16: attend_kv<GGMLType::F16>(a, q, p, k, v, out, idx, s); break;
        case GGMLType::Q8_0: attend_kv<GGMLType::Q8_0>(a, q, p, k, v, out, idx, s); break;
        default: attend_kv<GGMLType::F32>(a, q, p, k, v, out, idx, s); break;
    }
}

}  // namespace

OpsKernels make_ops_kernels_avx512() {
    OpsKernels k = ops_kernels_ref;
    k.name = "avx512";
    k.rms_norm_row = &rms_norm_row_avx512;
    k.rope_pairs = &rope_pairs_avx512;
    k.dot_f32 = &dot_f32_avx512;
    k.axpy_f32 = &axpy_f32_avx512;
    k.silu_mul = &silu_mul_avx512;
    k.gelu = &gelu_avx512;
    k.gelu_quick = &gelu_quick_avx512;
    k.softmax_row = &softmax_row_avx512;
    k.add = &add_avx512;
    k.attend_group = &attend_group_avx512;
    return k;
}

}  // namespace le

#else  // not x86

namespace le {
OpsKernels make_ops_kernels_avx512() { return ops_kernels_ref; }
}  // namespace le

#endif
