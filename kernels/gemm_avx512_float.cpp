// AVX-512 matmul kernels for float weights (F32, F16, BF16) against f32 activations read in place:
// 16 values per fma, R rows x T tokens of accumulators so each weight vector is converted once and used
// T times. f32 accumulation in 16 lanes, summed once at the end (the _ref vec_dot sums in double; matmul's
// contract is f32 accuracy, see tests/test_ops.py).
#include "gemm.h"
#include "simd_avx512.h"

#if LE_X86_SIMD

namespace le {

namespace {

struct F32Weights {
    using T = float;
    LE_TARGET_AVX512 static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
    LE_TARGET_AVX512 static __m512 load_tail(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};

struct F16Weights {
    using T = fp16_t;
    LE_TARGET_AVX512 static __m512 load(const fp16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    LE_TARGET_AVX512 static __m512 load_tail(const fp16_t* p, __mmask16 m) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
    }
};

struct BF16Weights {
    using T = bf16_t;
    LE_TARGET_AVX512 static __m512 widen(__m256i h) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    LE_TARGET_AVX512 static __m512 load(const bf16_t* p) {
        return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    LE_TARGET_AVX512 static __m512 load_tail(const bf16_t* p, __mmask16 m) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
};

// R rows x T tokens over n values: acc[r][t] += w_r[16 values] * x_t[16 values], masked tail.
template <class W, int R, int T>
LE_TARGET_AVX512 void micro_f(const uint8_t* LE_RESTRICT w, int64_t w_stride, const float* LE_RESTRICT x,
                              int64_t x_stride, int64_t n, float* LE_RESTRICT y, int64_t ldy) {
    using WT = typename W::T;
    __m512 acc[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
    const uint8_t* pf = w + prefetch_ahead<T>(R * w_stride);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        prefetch_step<R * 16 * int64_t(sizeof(WT))>(pf, i / 16);  // later rows (gemm.h)
        for (int r = 0; r < R; ++r) {
            const __m512 wv = W::load(reinterpret_cast<const WT*>(w + r * w_stride) + i);
            for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * x_stride + i), acc[r][t]);
        }
    }
    if (i < n) {
        const __mmask16 m = __mmask16((1u << (n - i)) - 1);
        for (int r = 0; r < R; ++r) {
            const __m512 wv = W::load_tail(reinterpret_cast<const WT*>(w + r * w_stride) + i, m);
            for (int t = 0; t < T; ++t)
                acc[r][t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + t * x_stride + i), acc[r][t]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <class W, int T>
LE_TARGET_AVX512 void rows_f(const uint8_t* LE_RESTRICT w, int64_t w_stride, int64_t n_rows, const float* LE_RESTRICT x,
                             int64_t x_stride, int64_t n, float* LE_RESTRICT y, int64_t ldy) {
    constexpr int R = 4;
    int64_t r = 0;
    for (; r + R <= n_rows; r += R) micro_f<W, R, T>(w + r * w_stride, w_stride, x, x_stride, n, y + r, ldy);
    switch (n_rows - r) {
        case 1: micro_f<W, 1, T>(w + r * w_stride, w_stride, x, x_stride, n, y + r, ldy); break;
        case 2: micro_f<W, 2, T>(w + r * w_stride, w_stride, x, x_stride, n, y + r, ldy); break;
        case 3: micro_f<W, 3, T>(w + r * w_stride, w_stride, x, x_stride, n, y + r, ldy); break;
        default: break;
    }
}

template <class W>
LE_TARGET_AVX512 void gemm_f(const uint8_t* LE_RESTRICT w, int64_t w_stride, int64_t n_rows,
                             const uint8_t* LE_RESTRICT act, int64_t act_stride, int64_t n_tok, float* LE_RESTRICT y,
                             int64_t ldy, int64_t n_in) {
    const float* x = reinterpret_cast<const float*>(act);
    const int64_t xs = act_stride / int64_t(sizeof(float));
    constexpr int T = 4;
    int64_t t = 0;
    for (; t + T <= n_tok; t += T) rows_f<W, T>(w, w_stride, n_rows, x + t * xs, xs, n_in, y + t * ldy, ldy);
    switch (n_tok - t) {
        case 1: rows_f<W, 1>(w, w_stride, n_rows, x + t * xs, xs, n_in, y + t * ldy, ldy); break;
        case 2: rows_f<W, 2>(w, w_stride, n_rows, x + t * xs, xs, n_in, y + t * ldy, ldy); break;
        case 3: rows_f<W, 3>(w, w_stride, n_rows, x + t * xs, xs, n_in, y + t * ldy, ldy); break;
        default: break;
    }
}

int64_t act_bytes_f32(int64_t n_in) { return n_in * int64_t(sizeof(float)); }

}  // namespace

void fill_gemm_avx512_float(GemmKernels* table) {
    table[int(GGMLType::F32)] = {"avx512", &act_bytes_f32, nullptr, &gemm_f<F32Weights>};
    table[int(GGMLType::F16)] = {"avx512", &act_bytes_f32, nullptr, &gemm_f<F16Weights>};
    table[int(GGMLType::BF16)] = {"avx512", &act_bytes_f32, nullptr, &gemm_f<BF16Weights>};
}

}  // namespace le

#else  // not x86

namespace le {
void fill_gemm_avx512_float(GemmKernels*) {}
}  // namespace le

#endif
