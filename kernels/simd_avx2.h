// AVX2 (+FMA, F16C) building blocks shared by quants_avx2.cpp, gemm_avx2.cpp and ops_avx2.cpp: block
// quantizers bit-exact with the _ref ones, reductions, a vector exp. Every function carries the target
// attribute; nothing here changes how other code is compiled.
#pragma once

// No silent fusing of a * b + c into one fma: GCC implements the arithmetic intrinsics as plain vector
// operators, which it contracts by default on FMA targets. Kernels that promise the reference's bits
// (quantizers, RoPE, RMSNorm's scaling) depend on every product being rounded on its own; where an fma is
// wanted, it is written as one.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "quants_impl.h"

#if LE_X86_SIMD

#include <immintrin.h>

#define LE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace le {
namespace avx2 {

LE_TARGET_AVX2 inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

LE_TARGET_AVX2 inline float hmax_ps(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

LE_TARGET_AVX2 inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

// quantize_row_q8_0_ref's rounding (half away from zero; NaN / out of range -> INT32_MIN).
LE_TARGET_AVX2 inline __m256i round_half_away_epi32(__m256 v) {
    const __m256i t = _mm256_cvttps_epi32(v);
    const __m256 frac = _mm256_sub_ps(v, _mm256_cvtepi32_ps(t));
    const __m256i invalid = _mm256_cmpeq_epi32(t, _mm256_set1_epi32(INT32_MIN));
    const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ));
    const __m256i down = _mm256_castps_si256(_mm256_cmp_ps(frac, _mm256_set1_ps(-0.5f), _CMP_LE_OQ));
    // up / down are all-ones (-1) where they hold: t - up + down
    const __m256i r = _mm256_add_epi32(_mm256_sub_epi32(t, up), down);
    return _mm256_blendv_epi8(r, t, invalid);
}

// llama.cpp's nearest_int through the float adder, lane-wise.
LE_TARGET_AVX2 inline __m256i nearest_int_epi32(__m256 v) {
    const __m256 shifted = _mm256_add_ps(v, _mm256_set1_ps(12582912.0f));
    return _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(shifted), _mm256_set1_epi32(0x007fffff)),
                            _mm256_set1_epi32(0x00400000));
}

// 4 x 8 int32 -> 32 int8, low byte of each (in order).
LE_TARGET_AVX2 inline __m256i pack_low_bytes(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i m = _mm256_set1_epi32(0xff);
    // packus on masked values is exact; the lane interleave of the packs is undone by one permute
    const __m256i ab = _mm256_packus_epi32(_mm256_and_si256(a, m), _mm256_and_si256(b, m));
    const __m256i cd = _mm256_packus_epi32(_mm256_and_si256(c, m), _mm256_and_si256(d, m));
    const __m256i abcd = _mm256_packus_epi16(ab, cd);
    return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// One Q8_0 block x [32] -> 32 codes and the fp16 scale, bit-exact with quantize_row_q8_0_ref.
LE_TARGET_AVX2 inline fp16_t quantize_block_q8_0(const float* LE_RESTRICT x, __m256i& q) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        amax = _mm256_max_ps(abs_ps(v[i]), amax);  // a NaN |x| keeps amax, as std::max(amax, |x|)
    }
    const float d = hmax_ps(amax) / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 idv = _mm256_set1_ps(id);
    q = pack_low_bytes(round_half_away_epi32(_mm256_mul_ps(v[0], idv)), round_half_away_epi32(_mm256_mul_ps(v[1], idv)),
                       round_half_away_epi32(_mm256_mul_ps(v[2], idv)), round_half_away_epi32(_mm256_mul_ps(v[3], idv)));
    return fp16_t(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
}

// One Q8_K block x [256] -> codes, scale, sums of 16; bit-exact with quantize_row_q8_K_ref.
LE_TARGET_AVX2 inline void quantize_block_q8_K(const float* LE_RESTRICT x, int8_t* LE_RESTRICT q, float& d,
                                               int16_t* LE_RESTRICT bsums) {
    __m256 amax_v = _mm256_setzero_ps();
    for (int i = 0; i < 32; ++i) amax_v = _mm256_max_ps(abs_ps(_mm256_loadu_ps(x + 8 * i)), amax_v);
    const float amax = hmax_ps(amax_v);
    if (amax == 0.0f) {
        std::memset(q, 0, QK_K);
        std::memset(bsums, 0, QK_K / 16 * sizeof(int16_t));
        d = 0.0f;
        return;
    }
    float max = 0.0f;  // the first value of largest magnitude, as the reference
    for (int i = 0; i < 32; ++i) {
        const int hit = _mm256_movemask_ps(_mm256_cmp_ps(abs_ps(_mm256_loadu_ps(x + 8 * i)), _mm256_set1_ps(amax), _CMP_EQ_OQ));
        if (hit) {
            max = x[8 * i + __builtin_ctz(unsigned(hit))];
            break;
        }
    }
    const float iscale = -127.f / max;
    const __m256 is = _mm256_set1_ps(iscale);
    const __m256i hi = _mm256_set1_epi32(127);
    for (int i = 0; i < 8; ++i) {
        __m256i c[4];
        for (int j = 0; j < 4; ++j)
            c[j] = _mm256_min_epi32(nearest_int_epi32(_mm256_mul_ps(is, _mm256_loadu_ps(x + 32 * i + 8 * j))), hi);
        const __m256i c8 = pack_low_bytes(c[0], c[1], c[2], c[3]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * i), c8);
        // sums of 16 codes: sad against 0 on the codes + 128, minus 16 * 128
        const __m256i s = _mm256_sad_epu8(_mm256_xor_si256(c8, _mm256_set1_epi8(char(0x80))), _mm256_setzero_si256());
        bsums[2 * i] = int16_t(_mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) - 16 * 128);
        bsums[2 * i + 1] = int16_t(_mm256_extract_epi64(s, 2) + _mm256_extract_epi64(s, 3) - 16 * 128);
    }
    d = 1 / iscale;
}

// e^x lane-wise within 2 ulp (Cephes expf): subnormal results below -87.3, 0 below -104, inf above 88.72;
// NaN stays NaN.
LE_TARGET_AVX2 inline __m256 exp_ps(__m256 x) {
    const __m256 xc = _mm256_min_ps(_mm256_set1_ps(88.8f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    // 2^n as two normal factors (n in [-150, 128]): the product under- or overflows only at the end, to a
    // subnormal, 0 or inf as it should
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i h1 = _mm256_srai_epi32(ni, 1), h2 = _mm256_sub_epi32(ni, h1);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h1, _mm256_set1_epi32(127)), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h2, _mm256_set1_epi32(127)), 23));
    const __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN: x itself
}

}  // namespace avx2
}  // namespace le

#endif  // LE_X86_SIMD
