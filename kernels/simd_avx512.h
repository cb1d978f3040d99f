// AVX-512 building blocks shared by quants_avx512.cpp and gemm_avx512*.cpp: block quantizers bit-exact
// with quantize_row_q8_0_ref / quantize_row_q8_K_ref, and small reductions. Only for x86 builds; every
// function carries the target attribute, so including this header changes nothing for other code.
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

#define LE_TARGET_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512dq")))

namespace le {
namespace avx512 {

// quantize_row_q8_0_ref's rounding: half away from zero, then the int32 (out-of-range and NaN give
// INT32_MIN, as cvttss2si and the reference's trunc_to_i32 do).
LE_TARGET_AVX512 inline __m512i round_half_away_epi32(__m512 v) {
    const __m512i t = _mm512_cvttps_epi32(v);
    const __m512 frac = _mm512_sub_ps(v, _mm512_cvtepi32_ps(t));
    const __mmask16 valid = _mm512_cmpneq_epi32_mask(t, _mm512_set1_epi32(INT32_MIN));
    const __mmask16 up = _mm512_mask_cmp_ps_mask(valid, frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __mmask16 down = _mm512_mask_cmp_ps_mask(valid, frac, _mm512_set1_ps(-0.5f), _CMP_LE_OQ);
    const __m512i one = _mm512_set1_epi32(1);
    const __m512i r = _mm512_mask_add_epi32(t, up, t, one);
    return _mm512_mask_sub_epi32(r, down, r, one);
}

// llama.cpp's nearest_int through the float adder, lane-wise (same bits for every input, NaN included).
LE_TARGET_AVX512 inline __m512i nearest_int_epi32(__m512 v) {
    const __m512 shifted = _mm512_add_ps(v, _mm512_set1_ps(12582912.0f));
    return _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(shifted), _mm512_set1_epi32(0x007fffff)),
                            _mm512_set1_epi32(0x00400000));
}

// One Q8_0 block x [32] -> codes (values 0..15 in q_lo, 16..31 in q_hi) and its fp16 scale, bit-exact with
// quantize_row_q8_0_ref.
LE_TARGET_AVX512 inline fp16_t quantize_block_q8_0(const float* LE_RESTRICT x, __m128i& q_lo, __m128i& q_hi) {
    const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    // max(|x|, acc) keeps acc when |x| is NaN, as std::max(amax, |x|) does in the reference
    const __m512 amax_v = _mm512_max_ps(_mm512_abs_ps(x1), _mm512_max_ps(_mm512_abs_ps(x0), _mm512_setzero_ps()));
    const float amax = _mm512_reduce_max_ps(amax_v);
    const float d = amax / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m512 idv = _mm512_set1_ps(id);
    q_lo = _mm512_cvtepi32_epi8(round_half_away_epi32(_mm512_mul_ps(x0, idv)));
    q_hi = _mm512_cvtepi32_epi8(round_half_away_epi32(_mm512_mul_ps(x1, idv)));
    return fp16_t(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
}

// One Q8_K block x [256] -> codes q [256], scale d, sums of 16 codes; bit-exact with quantize_row_q8_K_ref
// (an all-zero block gives zeros everywhere).
LE_TARGET_AVX512 inline void quantize_block_q8_K(const float* LE_RESTRICT x, int8_t* LE_RESTRICT q, float& d,
                                                 int16_t* LE_RESTRICT bsums) {
    __m512 amax_v = _mm512_setzero_ps();
    for (int i = 0; i < 16; ++i) amax_v = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + 16 * i)), amax_v);
    const float amax = _mm512_reduce_max_ps(amax_v);
    if (amax == 0.0f) {
        std::memset(q, 0, QK_K);
        std::memset(bsums, 0, QK_K / 16 * sizeof(int16_t));
        d = 0.0f;
        return;
    }
    // The reference keeps the first value of largest magnitude (its sign sets the scale's).
    float max = 0.0f;
    for (int i = 0; i < 16; ++i) {
        const __m512 v = _mm512_loadu_ps(x + 16 * i);
        const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(amax), _CMP_EQ_OQ);
        if (hit) {
            max = x[16 * i + __builtin_ctz(hit)];
            break;
        }
    }
    const float iscale = -127.f / max;
    const __m512 is = _mm512_set1_ps(iscale);
    const __m512i hi = _mm512_set1_epi32(127);
    for (int i = 0; i < 16; ++i) {
        const __m512i c = _mm512_min_epi32(nearest_int_epi32(_mm512_mul_ps(is, _mm512_loadu_ps(x + 16 * i))), hi);
        const __m128i c8 = _mm512_cvtepi32_epi8(c);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * i), c8);
        // 16 codes summed: |sum| <= 16 * 128, exact in int16
        __m128i s = _mm_sad_epu8(_mm_xor_si128(c8, _mm_set1_epi8(char(0x80))), _mm_setzero_si128());
        s = _mm_add_epi64(s, _mm_unpackhi_epi64(s, s));
        bsums[i] = int16_t(_mm_cvtsi128_si32(s) - 16 * 128);
    }
    d = 1 / iscale;
}

LE_TARGET_AVX512 inline float hsum_128(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

LE_TARGET_AVX512 inline float hsum_256(__m256 v) {
    return hsum_128(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}

}  // namespace avx512
}  // namespace le

#endif  // LE_X86_SIMD
