// AVX2 (+FMA, F16C) variants of the Q4_0 / Q8_0 dot products. Compiled per function with target attributes,
// so the build stays portable: these only run when the dispatch (isa.h) has seen the CPU support them.
//
// Integer block sums are exact, as in the _ref kernels; the float accumulation differs (8 lanes, FMA), so
// results agree with the reference to float rounding, not bit for bit. Activations must come from
// quantize_row_q8_0 (codes in [-127, 127]): the sign trick below cannot negate -128.
#include "quants_impl.h"
#include "simd_avx2.h"

#if LE_X86_SIMD

#include <immintrin.h>


namespace le {

namespace {

LE_TARGET_AVX2 inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// 16 packed bytes -> 32 bytes of nibbles: value j in byte j (low nibbles are values 0..15, high 16..31).
LE_TARGET_AVX2 inline __m256i unpack_q4_0(const uint8_t* qs) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

}  // namespace

LE_TARGET_AVX2 float vec_dot_q4_0_q8_0_avx2(const block_q4_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a,
                                            int64_t n) {
    check_blocks(n, QK8_0, "vec_dot_q4_0_q8_0_avx2");
    const int64_t nb = n / QK8_0;
    const __m256i eight = _mm256_set1_epi8(8);
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; ++i) {
        const __m256i nib = unpack_q4_0(w[i].qs);
        const __m256i q8 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i].qs));
        // (nib - 8) . q8 = nib . q8 - 8 . q8; maddubs takes the unsigned nibbles as they are (pairs <= 3810)
        const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(nib, q8), _mm256_maddubs_epi16(eight, q8));
        const __m256i p32 = _mm256_madd_epi16(p16, ones16);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[i].d) * _cvtsh_ss(a[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p32), acc);
    }
    return hsum_ps(acc);
}

LE_TARGET_AVX2 float vec_dot_q8_0_q8_0_avx2(const block_q8_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a,
                                            int64_t n) {
    check_blocks(n, QK8_0, "vec_dot_q8_0_q8_0_avx2");
    const int64_t nb = n / QK8_0;
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; ++i) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[i].qs));
        const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i].qs));
        // x . y = |x| . (y * sign x): maddubs needs one unsigned operand (|-128| = 0x80 reads as 128)
        const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
        const __m256i p32 = _mm256_madd_epi16(p16, ones16);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[i].d) * _cvtsh_ss(a[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p32), acc);
    }
    return hsum_ps(acc);
}

// Activation quantizers, bit-exact with the _ref ones (simd_avx2.h).
LE_TARGET_AVX2 void quantize_row_q8_0_avx2(const float* LE_RESTRICT x, block_q8_0* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK8_0, "quantize_row_q8_0_avx2");
    for (int64_t i = 0; i < n / QK8_0; ++i) {
        __m256i q;
        y[i].d = avx2::quantize_block_q8_0(x + QK8_0 * i, q);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].qs), q);
    }
}

LE_TARGET_AVX2 void quantize_row_q8_K_avx2(const float* LE_RESTRICT x, block_q8_K* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK_K, "quantize_row_q8_K_avx2");
    for (int64_t i = 0; i < n / QK_K; ++i) avx2::quantize_block_q8_K(x + QK_K * i, y[i].qs, y[i].d, y[i].bsums);
}

}  // namespace le

#endif  // LE_X86_SIMD
