// AVX2 (+FMA, F16C) matmul kernels (gemm.h), for x86 CPUs without AVX-512: 32 values per register, the
// int8 products by vpmaddubsw (unsigned x signed -> int16 pairs) then vpmaddwd into int32; R rows x T tokens
// of accumulators per micro-tile (16 ymm registers: smaller tiles than AVX-512's).
//
// Packed activations for Q4_0 / Q8_0 ("q8a"): the Q8_0 codes of every block (32 bytes each, natural order),
// then the block scales as f32 (rounded through fp16, as Q8_0 stores them). For the K-quants ("q8k", 320
// bytes per super-block): codes [0, 256), d (f32) at 256, sums of 32 codes (8 x int16) at 264, sums of 16
// codes (16 x int16) at 288. Codes and scales are quantize_row_q8_0_ref's / quantize_row_q8_K_ref's, bit
// for bit.
#include "gemm.h"
#include "simd_avx2.h"

#if LE_X86_SIMD

namespace le {

using namespace avx2;

namespace {

// ---- Q4_0 / Q8_0 --------------------------------------------------------------------------------------

int64_t act_bytes_q8a(int64_t n_in) {
    const int64_t nb = n_in / QK8_0;
    return nb * 32 + (nb * 4 + 31) / 32 * 32;
}

LE_TARGET_AVX2 void pack_act_q8a(const float* LE_RESTRICT x, uint8_t* LE_RESTRICT act, int64_t n_in) {
    const int64_t nb = n_in / QK8_0;
    float* d = reinterpret_cast<float*>(act + nb * 32);
    for (int64_t b = 0; b < nb; ++b) {
        __m256i q;
        d[b] = _cvtsh_ss(quantize_block_q8_0(x + 32 * b, q));
        _mm256_store_si256(reinterpret_cast<__m256i*>(act + 32 * b), q);
    }
}

// A weight block as (|w|, w): the int8 product is |w| . (a * sign w), which vpmaddubsw can take.
struct Q4_0Weights {
    static constexpr int64_t kBlockBytes = 18;
    LE_TARGET_AVX2 static __m256i load(const uint8_t* LE_RESTRICT b) {
        const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2));
        const __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), _mm256_set1_epi8(0x0F));
        return _mm256_sub_epi8(nib, _mm256_set1_epi8(8));
    }
};

struct Q8_0Weights {
    static constexpr int64_t kBlockBytes = 34;
    LE_TARGET_AVX2 static __m256i load(const uint8_t* LE_RESTRICT b) {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
    }
};

template <class W, int R, int T>
LE_TARGET_AVX2 void micro_q8a(const uint8_t* LE_RESTRICT w, int64_t w_stride, const uint8_t* LE_RESTRICT act,
                              int64_t act_stride, int64_t nb, float* LE_RESTRICT y, int64_t ldy) {
    __m256 acc[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; ++b) {
        prefetch_step<R * W::kBlockBytes>(w + R * w_stride, b);  // the next R rows (gemm.h)
        __m256i a[T];
        float da[T];
        for (int t = 0; t < T; ++t) {
            a[t] = _mm256_load_si256(reinterpret_cast<const __m256i*>(act + t * act_stride + 32 * b));
            da[t] = reinterpret_cast<const float*>(act + t * act_stride + nb * 32)[b];
        }
        for (int r = 0; r < R; ++r) {
            const uint8_t* blk = w + r * w_stride + b * W::kBlockBytes;
            const __m256i wv = W::load(blk);
            const __m256i aw = _mm256_sign_epi8(wv, wv);
            const float dw = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(blk));
            for (int t = 0; t < T; ++t) {
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(a[t], wv)), ones);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * da[t]), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum_ps(acc[r][t]);
}

// ---- K-quants ----------------------------------------------------------------------------------------

constexpr int64_t kQ8KBytes = 320;

int64_t act_bytes_q8k(int64_t n_in) { return n_in / QK_K * kQ8KBytes; }

LE_TARGET_AVX2 void pack_act_q8k(const float* LE_RESTRICT x, uint8_t* LE_RESTRICT act, int64_t n_in) {
    const int64_t nb = n_in / QK_K;
    for (int64_t i = 0; i < nb; ++i, x += QK_K, act += kQ8KBytes) {
        int16_t bsums[16];
        float d;
        quantize_block_q8_K(x, reinterpret_cast<int8_t*>(act), d, bsums);
        std::memset(act + 256, 0, 64);
        std::memcpy(act + 256, &d, sizeof(d));
        int16_t s32[8];
        for (int j = 0; j < 8; ++j) s32[j] = int16_t(bsums[2 * j] + bsums[2 * j + 1]);
        std::memcpy(act + 264, s32, sizeof(s32));
        std::memcpy(act + 288, bsums, sizeof(bsums));
    }
}

// Q4_K / Q5_K scales and mins: 12 bytes of 6-bit fields -> bytes [sc0..7, m0..7] (get_scale_min_k4).
LE_TARGET_AVX2 inline __m128i unpack_scales_k4(const uint8_t* LE_RESTRICT s12) {
    uint32_t u[4];
    std::memcpy(u, s12, 12);
    constexpr uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    u[3] = ((u[2] >> 4) & kmask2) | (((u[1] >> 6) & kmask3) << 4);
    const uint32_t mins_lo = u[1] & kmask1;
    u[1] = (u[2] & kmask2) | (((u[0] >> 6) & kmask3) << 4);
    u[2] = mins_lo;
    u[0] &= kmask1;
    return _mm_setr_epi32(int(u[0]), int(u[1]), int(u[2]), int(u[3]));
}

// Word broadcast of byte j of a 16-byte lane pattern, as int16 (unsigned bytes).
LE_TARGET_AVX2 inline __m256i bcast_u8_words(__m256i bytes, int j) {
    return _mm256_shuffle_epi8(bytes, _mm256_set1_epi16(short(0xff00 | j)));
}

struct KState {
    __m256i q[8];  // 8 registers of 32 codes (sub-block k in register k), unsigned
    __m256i sc;    // Q4_K/Q5_K: [sc0..7, m0..7] in both lanes; Q6_K: 16 int8 scales in both lanes
    __m128i mins;  // Q4_K/Q5_K: 8 mins as int16
    float d, dmin;
};

struct Q4_KWeights {
    static constexpr int64_t kBlockBytes = 144;
    static constexpr bool kHasMin = true;
    LE_TARGET_AVX2 static void load(const uint8_t* LE_RESTRICT b, KState& S) {
        S.d = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(b));
        S.dmin = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(b + 2));
        const __m128i sm = unpack_scales_k4(b + 4);
        S.sc = _mm256_broadcastsi128_si256(sm);
        S.mins = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
        const __m256i m4 = _mm256_set1_epi8(0x0F);
        for (int c = 0; c < 4; ++c) {
            const __m256i z = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16 + 32 * c));
            S.q[2 * c] = _mm256_and_si256(z, m4);
            S.q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(z, 4), m4);
        }
    }
    LE_TARGET_AVX2 static __m256i scale(const KState& S, int k) { return bcast_u8_words(S.sc, k); }
};

struct Q5_KWeights {
    static constexpr int64_t kBlockBytes = 176;
    static constexpr bool kHasMin = true;
    LE_TARGET_AVX2 static void load(const uint8_t* LE_RESTRICT b, KState& S) {
        S.d = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(b));
        S.dmin = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(b + 2));
        const __m128i sm = unpack_scales_k4(b + 4);
        S.sc = _mm256_broadcastsi128_si256(sm);
        S.mins = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
        const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
        // bit k of qh[l] is the 5th bit of value 32k + l (sub-block k)
        for (int c = 0; c < 4; ++c) {
            const __m256i z = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 48 + 32 * c));
            for (int half = 0; half < 2; ++half) {
                const int k = 2 * c + half;
                const __m256i lo = half ? _mm256_and_si256(_mm256_srli_epi16(z, 4), m4) : _mm256_and_si256(z, m4);
                const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(h, k), one);
                S.q[k] = _mm256_or_si256(lo, _mm256_slli_epi16(hb, 4));
            }
        }
    }
    LE_TARGET_AVX2 static __m256i scale(const KState& S, int k) { return bcast_u8_words(S.sc, k); }
};

struct Q6_KWeights {
    static constexpr int64_t kBlockBytes = 210;
    static constexpr bool kHasMin = false;
    LE_TARGET_AVX2 static void load(const uint8_t* LE_RESTRICT b, KState& S) {
        S.d = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(b + 208));
        S.dmin = 0.0f;
        S.sc = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)));
        const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x30);
        for (int half = 0; half < 2; ++half) {
            const uint8_t* ql = b + 64 * half;
            const __m256i q0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
            const __m256i q1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
            const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * half));
            // values l, l+32, l+64, l+96 of the half: low / low / high / high nibbles with qh bits 0-1 .. 6-7
            S.q[4 * half + 0] = _mm256_or_si256(_mm256_and_si256(q0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m2));
            S.q[4 * half + 1] = _mm256_or_si256(_mm256_and_si256(q1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m2));
            S.q[4 * half + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q0, 4), m4), _mm256_and_si256(h, m2));
            S.q[4 * half + 3] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(h, 2), m2));
        }
    }
    // Register k (32 values) spans scales 2k and 2k+1 (16 values each): words of the low lane get the
    // first, of the high lane the second, sign-extended.
    LE_TARGET_AVX2 static __m256i scale(const KState& S, int k) {
        const __m256i ctrl = _mm256_setr_m128i(_mm_set1_epi8(char(2 * k)), _mm_set1_epi8(char(2 * k + 1)));
        return _mm256_srai_epi16(_mm256_shuffle_epi8(S.sc, ctrl), 8);
    }
};

template <class W, int R, int T>
LE_TARGET_AVX2 void micro_k(const uint8_t* LE_RESTRICT w, int64_t w_stride, const uint8_t* LE_RESTRICT act,
                            int64_t act_stride, int64_t nsb, float* LE_RESTRICT y, int64_t ldy) {
    __m256 acc[R][T];
    float accm[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) {
            acc[r][t] = _mm256_setzero_ps();
            accm[r][t] = 0.0f;
        }
    for (int64_t i = 0; i < nsb; ++i) {
        prefetch_step<R * W::kBlockBytes>(w + R * w_stride, i);
        const uint8_t* a = act + i * kQ8KBytes;
        for (int r = 0; r < R; ++r) {
            KState S;
            W::load(w + r * w_stride + i * W::kBlockBytes, S);
            for (int t = 0; t < T; ++t) {
                const uint8_t* at = a + t * act_stride;
                __m256i isum = _mm256_setzero_si256();
                if (!W::kHasMin) {  // Q6_K: codes are value + 32: start from -32 * sum_j scale_j * sum16_j
                    const __m256i s16 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(S.sc));
                    const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at + 288));
                    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(_mm256_madd_epi16(s16, bs), 5));
                }
                for (int k = 0; k < 8; ++k) {
                    const __m256i av = _mm256_load_si256(reinterpret_cast<const __m256i*>(at + 32 * k));
                    isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(S.q[k], av), W::scale(S, k)));
                }
                float da;
                std::memcpy(&da, at + 256, sizeof(da));
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(S.d * da), acc[r][t]);
                if (W::kHasMin) {
                    __m128i m = _mm_madd_epi16(S.mins, _mm_loadu_si128(reinterpret_cast<const __m128i*>(at + 264)));
                    m = _mm_add_epi32(m, _mm_unpackhi_epi64(m, m));
                    m = _mm_add_epi32(m, _mm_shuffle_epi32(m, 1));
                    accm[r][t] -= (S.dmin * da) * float(_mm_cvtsi128_si32(m));
                }
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum_ps(acc[r][t]) + accm[r][t];
}

// ---- float weights -------------------------------------------------------------------------------------

struct F32Weights {
    using T = float;
    LE_TARGET_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
};
struct F16Weights {
    using T = fp16_t;
    LE_TARGET_AVX2 static __m256 load(const fp16_t* p) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
};
struct BF16Weights {
    using T = bf16_t;
    LE_TARGET_AVX2 static __m256 load(const bf16_t* p) {
        const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    }
};

// R rows x T tokens over n values, 8 at a time; a tail of n % 8 goes through a zero-padded copy.
template <class W, int R, int T>
LE_TARGET_AVX2 void micro_f(const uint8_t* LE_RESTRICT w, int64_t w_stride, const uint8_t* LE_RESTRICT act,
                            int64_t act_stride, int64_t n, float* LE_RESTRICT y, int64_t ldy) {
    using WT = typename W::T;
    const float* x = reinterpret_cast<const float*>(act);
    const int64_t xs = act_stride / int64_t(sizeof(float));
    __m256 acc[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        prefetch_step<R * 8 * int64_t(sizeof(WT))>(w + R * w_stride, i / 8);
        for (int r = 0; r < R; ++r) {
            const __m256 wv = W::load(reinterpret_cast<const WT*>(w + r * w_stride) + i);
            for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * xs + i), acc[r][t]);
        }
    }
    if (i < n) {
        alignas(32) WT wt[8];
        alignas(32) float xt[8];
        for (int r = 0; r < R; ++r) {
            for (int j = 0; j < 8; ++j) wt[j] = i + j < n ? reinterpret_cast<const WT*>(w + r * w_stride)[i + j] : WT(0);
            const __m256 wv = W::load(wt);
            for (int t = 0; t < T; ++t) {
                for (int j = 0; j < 8; ++j) xt[j] = i + j < n ? x[t * xs + i + j] : 0.0f;
                acc[r][t] = _mm256_fmadd_ps(wv, _mm256_load_ps(xt), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum_ps(acc[r][t]);
}

int64_t act_bytes_f32(int64_t n_in) { return n_in * int64_t(sizeof(float)); }

// ---- drivers: R rows x T tokens micro-tiles, every tail through smaller instantiations -------------------

// Uniform entry points of the three micro-kernel families, for the tiling templates below.
template <class W, int R, int T>
struct MicroQ8a {
    static void run(const uint8_t* w, int64_t ws, const uint8_t* a, int64_t as, int64_t len, float* y, int64_t ldy) {
        micro_q8a<W, R, T>(w, ws, a, as, len, y, ldy);
    }
};
template <class W, int R, int T>
struct MicroK {
    static void run(const uint8_t* w, int64_t ws, const uint8_t* a, int64_t as, int64_t len, float* y, int64_t ldy) {
        micro_k<W, R, T>(w, ws, a, as, len, y, ldy);
    }
};
template <class W, int R, int T>
struct MicroF {
    static void run(const uint8_t* w, int64_t ws, const uint8_t* a, int64_t as, int64_t len, float* y, int64_t ldy) {
        micro_f<W, R, T>(w, ws, a, as, len, y, ldy);
    }
};

template <template <class, int, int> class M, class W, int R, int T>
void rows(const uint8_t* w, int64_t ws, int64_t n_rows, const uint8_t* a, int64_t as, int64_t len, float* y, int64_t ldy) {
    int64_t r = 0;
    for (; r + R <= n_rows; r += R) M<W, R, T>::run(w + r * ws, ws, a, as, len, y + r, ldy);
    for (; r < n_rows; ++r) M<W, 1, T>::run(w + r * ws, ws, a, as, len, y + r, ldy);
}

// Token pairs (R_MULTI rows each), then a single token with R_ONE rows (decode).
template <template <class, int, int> class M, class W, int R_ONE, int R_MULTI>
void gemm_tiles(const uint8_t* w, int64_t ws, int64_t n_rows, const uint8_t* a, int64_t as, int64_t n_tok, float* y,
                int64_t ldy, int64_t len) {
    int64_t t = 0;
    for (; t + 2 <= n_tok; t += 2) rows<M, W, R_MULTI, 2>(w, ws, n_rows, a + t * as, as, len, y + t * ldy, ldy);
    if (t < n_tok) rows<M, W, R_ONE, 1>(w, ws, n_rows, a + t * as, as, len, y + t * ldy, ldy);
}

template <class W>
void gemm_q8a(const uint8_t* LE_RESTRICT w, int64_t ws, int64_t n_rows, const uint8_t* LE_RESTRICT act, int64_t as,
              int64_t n_tok, float* LE_RESTRICT y, int64_t ldy, int64_t n_in) {
    check_blocks(n_in, QK8_0, "gemm_q8a_avx2");
    gemm_tiles<MicroQ8a, W, 4, 2>(w, ws, n_rows, act, as, n_tok, y, ldy, n_in / QK8_0);
}

template <class W>
void gemm_k(const uint8_t* LE_RESTRICT w, int64_t ws, int64_t n_rows, const uint8_t* LE_RESTRICT act, int64_t as,
            int64_t n_tok, float* LE_RESTRICT y, int64_t ldy, int64_t n_in) {
    check_blocks(n_in, QK_K, "gemm_k_avx2");
    gemm_tiles<MicroK, W, 2, 1>(w, ws, n_rows, act, as, n_tok, y, ldy, n_in / QK_K);
}

template <class W>
void gemm_f(const uint8_t* LE_RESTRICT w, int64_t ws, int64_t n_rows, const uint8_t* LE_RESTRICT act, int64_t as,
            int64_t n_tok, float* LE_RESTRICT y, int64_t ldy, int64_t n_in) {
    gemm_tiles<MicroF, W, 4, 4>(w, ws, n_rows, act, as, n_tok, y, ldy, n_in);
}

}  // namespace

void fill_gemm_avx2(GemmKernels* table) {
    table[int(GGMLType::Q4_0)] = {"avx2", &act_bytes_q8a, &pack_act_q8a, &gemm_q8a<Q4_0Weights>};
    table[int(GGMLType::Q8_0)] = {"avx2", &act_bytes_q8a, &pack_act_q8a, &gemm_q8a<Q8_0Weights>};
    table[int(GGMLType::Q4_K)] = {"avx2", &act_bytes_q8k, &pack_act_q8k, &gemm_k<Q4_KWeights>};
    table[int(GGMLType::Q5_K)] = {"avx2", &act_bytes_q8k, &pack_act_q8k, &gemm_k<Q5_KWeights>};
    table[int(GGMLType::Q6_K)] = {"avx2", &act_bytes_q8k, &pack_act_q8k, &gemm_k<Q6_KWeights>};
    table[int(GGMLType::F32)] = {"avx2", &act_bytes_f32, nullptr, &gemm_f<F32Weights>};
    table[int(GGMLType::F16)] = {"avx2", &act_bytes_f32, nullptr, &gemm_f<F16Weights>};
    table[int(GGMLType::BF16)] = {"avx2", &act_bytes_f32, nullptr, &gemm_f<BF16Weights>};
}

}  // namespace le

#else  // not x86

namespace le {
void fill_gemm_avx2(GemmKernels*) {}
}  // namespace le

#endif
