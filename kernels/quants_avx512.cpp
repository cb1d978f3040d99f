// AVX-512 (F/BW/VL/VNNI) variants of the Q4_0 / Q8_0 dot products: two blocks per 512-bit register, the
// u8 x s8 products summed by vpdpbusd. Same contract as the AVX2 variants (quants_avx2.cpp): exact integer
// block sums, float accumulation in 16 lanes, activations with codes in [-127, 127].
#include "quants_impl.h"
#include "simd_avx512.h"

#if LE_X86_SIMD

#include <immintrin.h>


namespace le {

namespace {

// 16 packed bytes -> 32 bytes of nibbles, value j in byte j.
LE_TARGET_AVX512 inline __m256i unpack_q4_0_256(const uint8_t* qs) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0F));
}

LE_TARGET_AVX512 inline __m512i concat_256(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

LE_TARGET_AVX512 inline __m256i load_256(const int8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// Lanes 0..7 scaled by d0, lanes 8..15 by d1 (the two blocks of one iteration).
LE_TARGET_AVX512 inline __m512 two_scales(float d0, float d1) {
    const __m512d lo = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(d0)));
    return _mm512_castpd_ps(_mm512_insertf64x4(lo, _mm256_castps_pd(_mm256_set1_ps(d1)), 1));
}

LE_TARGET_AVX512 inline float hsum_256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

}  // namespace

LE_TARGET_AVX512 float vec_dot_q4_0_q8_0_avx512(const block_q4_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a,
                                                int64_t n) {
    check_blocks(n, QK8_0, "vec_dot_q4_0_q8_0_avx512");
    const int64_t nb = n / QK8_0;
    const __m512i eight = _mm512_set1_epi8(8);
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        const __m512i nib = concat_256(unpack_q4_0_256(w[i].qs), unpack_q4_0_256(w[i + 1].qs));
        const __m512i q8 = concat_256(load_256(a[i].qs), load_256(a[i + 1].qs));
        // (nib - 8) . q8 = nib . q8 - 8 . q8, both as u8 x s8 dot products of 4 bytes per int32 lane
        const __m512i p32 = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), nib, q8),
                                             _mm512_dpbusd_epi32(_mm512_setzero_si512(), eight, q8));
        const __m512 d = two_scales(_cvtsh_ss(w[i].d) * _cvtsh_ss(a[i].d),
                                    _cvtsh_ss(w[i + 1].d) * _cvtsh_ss(a[i + 1].d));
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p32), acc);
    }
    float sum = _mm512_reduce_add_ps(acc);
    if (i < nb) {  // odd block count: the last block in 256 bits
        const __m256i nib = unpack_q4_0_256(w[i].qs);
        const __m256i q8 = load_256(a[i].qs);
        const __m256i zero = _mm256_setzero_si256();
        const __m256i p32 = _mm256_sub_epi32(_mm256_dpbusd_epi32(zero, nib, q8),
                                             _mm256_dpbusd_epi32(zero, _mm256_set1_epi8(8), q8));
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[i].d) * _cvtsh_ss(a[i].d));
        sum += hsum_256(_mm256_mul_ps(d, _mm256_cvtepi32_ps(p32)));
    }
    return sum;
}

LE_TARGET_AVX512 float vec_dot_q8_0_q8_0_avx512(const block_q8_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a,
                                                int64_t n) {
    check_blocks(n, QK8_0, "vec_dot_q8_0_q8_0_avx512");
    const int64_t nb = n / QK8_0;
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        const __m512i x = concat_256(load_256(w[i].qs), load_256(w[i + 1].qs));
        const __m512i y = concat_256(load_256(a[i].qs), load_256(a[i + 1].qs));
        // x . y = |x| . (y * sign x): vpdpbusd needs one unsigned operand (|-128| = 0x80 reads as 128)
        const __m512i sy = _mm512_mask_sub_epi8(y, _mm512_movepi8_mask(x), _mm512_setzero_si512(), y);
        const __m512i p32 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(x), sy);
        const __m512 d = two_scales(_cvtsh_ss(w[i].d) * _cvtsh_ss(a[i].d),
                                    _cvtsh_ss(w[i + 1].d) * _cvtsh_ss(a[i + 1].d));
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p32), acc);
    }
    float sum = _mm512_reduce_add_ps(acc);
    if (i < nb) {
        const __m256i x = load_256(w[i].qs);
        const __m256i y = load_256(a[i].qs);
        const __m256i p32 =
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[i].d) * _cvtsh_ss(a[i].d));
        sum += hsum_256(_mm256_mul_ps(d, _mm256_cvtepi32_ps(p32)));
    }
    return sum;
}

// Activation quantizers, bit-exact with the _ref ones (simd_avx512.h).
LE_TARGET_AVX512 void quantize_row_q8_0_avx512(const float* LE_RESTRICT x, block_q8_0* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK8_0, "quantize_row_q8_0_avx512");
    for (int64_t i = 0; i < n / QK8_0; ++i) {
        __m128i lo, hi;
        y[i].d = avx512::quantize_block_q8_0(x + QK8_0 * i, lo, hi);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y[i].qs), lo);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y[i].qs + 16), hi);
    }
}

LE_TARGET_AVX512 void quantize_row_q8_K_avx512(const float* LE_RESTRICT x, block_q8_K* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK_K, "quantize_row_q8_K_avx512");
    for (int64_t i = 0; i < n / QK_K; ++i) avx512::quantize_block_q8_K(x + QK_K * i, y[i].qs, y[i].d, y[i].bsums);
}

}  // namespace le

#endif  // LE_X86_SIMD
