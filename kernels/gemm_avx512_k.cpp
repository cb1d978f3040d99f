// AVX-512 matmul kernels for the K-quants (Q4_K, Q5_K, Q6_K weights x Q8_K activations).
//
// Per 64 values of a super-block ("register k", k = 0..3): vpdpbusd of the unsigned codes with the int8
// activations leaves 16 dwords of 4 products each; these fit int16 (|sum| <= 4 * 63 * 128 = 32256), so
// vpackssdw folds two registers into one of words without saturating, and one vpdpwssd against the
// sub-block scales as int16 words adds both into the row's int32 sum: per 256 values, 4 vpdpbusd + 2
// vpackssdw + 2 vpdpwssd (vpmaddubsw + vpdpwssd per register would be 8 multiplies and 4 scale shuffles;
// one Zen 4 core: 28 -> 34 GB/s on an in-cache Q4_K matrix). One float fma per super-block and token then
// applies d * d_act. Q4_K/Q5_K's "min" term (dmin * m_j * sum of activations of sub-block j) has its own
// float scale: it is formed once per row for four tokens at a time (one 128-bit lane each).
//
// Packed Q8_K activations, per super-block (kQ8KBytes = 320 bytes), codes and scale bit-exact with
// quantize_row_q8_K_ref:
//   [0, 256)   int8 codes, as the weight registers unpack: Q4_K/Q5_K: sub-blocks (0,2) (1,3) (4,6) (5,7)
//              of 32 values, 64 bytes per pair; Q6_K: natural order
//   [256, 260) f32 d
//   [288, 320) int16 sums: Q4_K/Q5_K: 8 sums of 32 codes (sub-block j at word j); Q6_K: 16 sums of 16
#include "gemm.h"
#include "simd_avx512.h"

#if LE_X86_SIMD

namespace le {

using namespace avx512;

namespace {

constexpr int64_t kQ8KBytes = 320;

int64_t act_bytes_q8k(int64_t n_in) { return n_in / QK_K * kQ8KBytes; }

template <bool Q6>
LE_TARGET_AVX512 void pack_act_q8k(const float* LE_RESTRICT x, uint8_t* LE_RESTRICT act, int64_t n_in) {
    const int64_t nb = n_in / QK_K;
    for (int64_t i = 0; i < nb; ++i, x += QK_K, act += kQ8KBytes) {
        alignas(64) int8_t q[QK_K];
        int16_t bsums[16];
        float d;
        quantize_block_q8_K(x, q, d, bsums);
        int16_t* sums = reinterpret_cast<int16_t*>(act + 288);
        if (Q6) {
            std::memcpy(act, q, QK_K);
            std::memcpy(sums, bsums, sizeof(bsums));
        } else {
            constexpr int kOrder[8] = {0, 2, 1, 3, 4, 6, 5, 7};  // sub-block at each 32-byte slot
            for (int s = 0; s < 8; ++s) std::memcpy(act + 32 * s, q + 32 * kOrder[s], 32);
            for (int j = 0; j < 8; ++j) sums[j] = int16_t(bsums[2 * j] + bsums[2 * j + 1]);
            for (int j = 8; j < 16; ++j) sums[j] = 0;
        }
        std::memcpy(act + 256, &d, sizeof(d));
        std::memset(act + 260, 0, 28);
    }
}

// ---- weight super-blocks --------------------------------------------------------------------------------
// What is shared by the (up to 4) rows of a micro-tile is decoded once for all of them: the 6-bit scales
// and mins of Q4_K/Q5_K (one 128-bit lane per row) and the fp16 super-block scales.

// Q4_K / Q5_K scales and mins of 4 rows (bytes [4, 16) of lane r: the 12 scale bytes of row r) -> per lane
// bytes [sc0..7, m0..7] (get_scale_min_k4 for all 8 sub-blocks at once).
LE_TARGET_AVX512 inline __m512i unpack_scales_k4(__m512i x) {
    const __m512i a = _mm512_shuffle_epi8(
        x, _mm512_broadcast_i32x4(_mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15)));
    const __m512i b = _mm512_shuffle_epi8(
        x, _mm512_broadcast_i32x4(_mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 8, 9, 10, 11)));
    const __m512i a_lo = _mm512_and_si512(
        a, _mm512_broadcast_i32x4(_mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0)));
    const __m512i a_hi = _mm512_and_si512(
        _mm512_srli_epi16(a, 4), _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15)));
    const __m512i b_hi = _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(b, 6), _mm512_set1_epi8(3)), 4);
    return _mm512_ternarylogic_epi32(a_lo, a_hi, b_hi, 0xFE);  // a_lo | a_hi | b_hi
}

// Bytes [0, 16) at b + r * stride of each of n (1..4) rows into lane r; missing rows zero.
LE_TARGET_AVX512 inline __m512i load_lanes(const uint8_t* LE_RESTRICT b, int64_t stride, int n) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
    v = _mm512_inserti32x4(v, n > 1 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + stride)) : _mm_setzero_si128(), 1);
    v = _mm512_inserti32x4(v, n > 2 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 * stride)) : _mm_setzero_si128(), 2);
    v = _mm512_inserti32x4(v, n > 3 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 3 * stride)) : _mm_setzero_si128(), 3);
    return v;
}

// fp16 words w0 (scale) and w1 (min scale; none if w1 < 0, giving 0) of every lane -> f32 [d0, dmin0, d1,
// dmin1, ...] for the 4 lanes (rows).
template <int w0, int w1>
LE_TARGET_AVX512 inline __m512 fp16_pairs(__m512i raw) {
    constexpr short m = w1 < 0 ? 0 : w1;
    const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                         24 + m, 24 + w0, 16 + m, 16 + w0, 8 + m, 8 + w0, m, w0);
    const __m512i h = _mm512_maskz_permutexvar_epi16(w1 < 0 ? 0x55 : 0xFF, idx, raw);  // 0x55: odd words zero
    return _mm512_zextps256_ps512(_mm256_cvtph_ps(_mm512_castsi512_si128(h)));
}

// Scale-word indices for register pair j (registers 2j, 2j + 1): vpackssdw interleaves their dwords per
// 128-bit lane, 4 of each, so word w of the pair comes from dword 4 * (w / 8) + w % 4 of register
// 2j + (w % 8 >= 4).
// Q4_K/Q5_K: register k holds sub-blocks (0,2) (1,3) (4,6) (5,7) in its two 256-bit halves.
LE_TARGET_AVX512 inline __m512i k4_scale_idx(int j) {
    const short a = short(4 * j), b = short(4 * j + 1), c = short(4 * j + 2), d = short(4 * j + 3);
    return _mm512_set_epi16(d, d, d, d, c, c, c, c, d, d, d, d, c, c, c, c, b, b, b, b, a, a, a, a, b, b, b, b, a, a, a, a);
}
// Q6_K: register k holds 16-value groups 4k .. 4k + 3, 4 dwords each.
LE_TARGET_AVX512 inline __m512i k6_scale_idx(int j) {
    const short o = short(8 * j);
    return _mm512_set_epi16(o + 7, o + 7, o + 7, o + 7, o + 3, o + 3, o + 3, o + 3, o + 6, o + 6, o + 6, o + 6, o + 2, o + 2, o + 2, o + 2,
                            o + 5, o + 5, o + 5, o + 5, o + 1, o + 1, o + 1, o + 1, o + 4, o + 4, o + 4, o + 4, o + 0, o + 0, o + 0, o + 0);
}

struct KQuad {        // shared by the rows of a micro-tile
    __m512i mins;     // Q4_K/Q5_K: lane r = row r's 8 mins as int16
    __m512i sc16;     // Q4_K/Q5_K: lane r = row r's 8 scales as int16
    __m512 dd;        // [d0, dmin0, d1, dmin1, ...]
};

struct KRow {
    __m512i z0, z1;   // qs bytes [0, 64) and [64, 128) (Q6_K: ql)
    __m512i h;        // Q5_K: qh broadcast; Q6_K: qh of half 0 broadcast, shifted (see Q6_KWeights)
    __m512i h1;       // Q6_K: the same for half 1
    __m512i s0, s1;   // scale words of register pairs (0, 1) and (2, 3)
    __m512i bias;     // Q6_K: -32 * scales as int16 (low half), for the +32 offset of the codes
};

// Q4_K / Q5_K: row r's scale words for register pairs (0, 1) and (2, 3).
LE_TARGET_AVX512 inline void scale_words_k4(const KQuad& Q, int r, KRow& R) {
    const __m512i row = _mm512_set1_epi16(short(8 * r));
    R.s0 = _mm512_permutexvar_epi16(_mm512_add_epi16(k4_scale_idx(0), row), Q.sc16);
    R.s1 = _mm512_permutexvar_epi16(_mm512_add_epi16(k4_scale_idx(1), row), Q.sc16);
}

struct Q4_KWeights {
    static constexpr int64_t kBlockBytes = 144;
    static constexpr bool kHasMin = true;
    LE_TARGET_AVX512 static void quad(const uint8_t* LE_RESTRICT b, int64_t stride, int n, KQuad& Q) {
        const __m512i raw = load_lanes(b, stride, n);  // lane r: row r's d, dmin, 12 scale bytes
        const __m512i scales = unpack_scales_k4(raw);  // lane r: row r's [sc0..7, m0..7]
        Q.mins = _mm512_shuffle_epi8(scales, _mm512_broadcast_i32x4(_mm_setr_epi8(8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1)));
        Q.sc16 = _mm512_shuffle_epi8(scales, _mm512_broadcast_i32x4(_mm_setr_epi8(0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1, 6, -1, 7, -1)));
        Q.dd = fp16_pairs<0, 1>(raw);
    }
    LE_TARGET_AVX512 static void row(const uint8_t* LE_RESTRICT b, const KQuad& Q, int r, KRow& R) {
        scale_words_k4(Q, r, R);
        R.z0 = _mm512_loadu_si512(b + 16);
        R.z1 = _mm512_loadu_si512(b + 80);
    }
    LE_TARGET_AVX512 static __m512i q(const KRow& R, int k) {
        const __m512i z = k < 2 ? R.z0 : R.z1;
        const __m512i m4 = _mm512_set1_epi8(0x0F);
        return (k & 1) ? _mm512_and_si512(_mm512_srli_epi16(z, 4), m4) : _mm512_and_si512(z, m4);
    }
};

struct Q5_KWeights {
    static constexpr int64_t kBlockBytes = 176;
    static constexpr bool kHasMin = true;
    LE_TARGET_AVX512 static void quad(const uint8_t* LE_RESTRICT b, int64_t stride, int n, KQuad& Q) {
        Q4_KWeights::quad(b, stride, n, Q);  // d, dmin and scales at the same offsets
    }
    LE_TARGET_AVX512 static void row(const uint8_t* LE_RESTRICT b, const KQuad& Q, int r, KRow& R) {
        scale_words_k4(Q, r, R);
        R.z0 = _mm512_loadu_si512(b + 48);
        R.z1 = _mm512_loadu_si512(b + 112);
        R.h = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16)));
    }
    LE_TARGET_AVX512 static __m512i q(const KRow& R, int k) {
        // Bit 2c (2c+1) of qh[l] is the 5th bit of value 64c + l (64c + 32 + l); register k holds chunks
        // c = k/2*2 and c+1, low (even k) or high (odd k) nibbles.
        const int c = (k / 2) * 2, bit = k & 1;
        const __m512i sel = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(char(1 << (2 * c + bit)))),
                                               _mm256_set1_epi8(char(1 << (2 * c + 2 + bit))), 1);
        const __m512i lo = Q4_KWeights::q(R, k);
        return _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(R.h, sel), lo, _mm512_set1_epi8(16));
    }
};

struct Q6_KWeights {
    static constexpr int64_t kBlockBytes = 210;
    static constexpr bool kHasMin = false;
    LE_TARGET_AVX512 static void quad(const uint8_t* LE_RESTRICT b, int64_t stride, int n, KQuad& Q) {
        Q.dd = fp16_pairs<7, -1>(load_lanes(b + 194, stride, n));  // d: bytes [208, 210)
    }
    // Register k holds values [64k, 64k + 64): ql nibbles of half k/2 (low for even k) and 2 high bits from
    // qh of that half: bits (0,1) / (2,3) for the two 32-value runs of an even k, (4,5) / (6,7) of an odd k.
    // h = qh >> (0 | 2) per 256-bit half puts an odd k's bits at (4,5) and, shifted left 4, an even k's.
    LE_TARGET_AVX512 static void row(const uint8_t* LE_RESTRICT b, const KQuad&, int, KRow& R) {
        R.z0 = _mm512_loadu_si512(b);
        R.z1 = _mm512_loadu_si512(b + 64);
        const __m512i shifts = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        R.h = _mm512_srlv_epi16(_mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128))), shifts);
        R.h1 = _mm512_srlv_epi16(_mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 160))), shifts);
        const __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)));
        R.s0 = _mm512_permutexvar_epi16(k6_scale_idx(0), _mm512_zextsi256_si512(s16));
        R.s1 = _mm512_permutexvar_epi16(k6_scale_idx(1), _mm512_zextsi256_si512(s16));
        R.bias = _mm512_zextsi256_si512(_mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(s16, 5)));
    }
    LE_TARGET_AVX512 static __m512i q(const KRow& R, int k) {
        const __m512i z = k < 2 ? R.z0 : R.z1;
        const __m512i h = k < 2 ? R.h : R.h1;
        const __m512i hb = (k & 1) ? h : _mm512_slli_epi16(h, 4);
        const __m512i m4 = _mm512_set1_epi8(0x0F);
        const __m512i lo = (k & 1) ? _mm512_and_si512(_mm512_srli_epi16(z, 4), m4) : _mm512_and_si512(z, m4);
        return _mm512_ternarylogic_epi32(lo, hb, _mm512_set1_epi8(0x30), 0xF8);  // lo | (hb & 0x30)
    }
};

// R rows (<= 4) x T tokens (<= 4) over the whole of n_in. acc[r][t]: float lanes of d_w * d_a * (scaled
// int sum) per super-block. accm[t]: the min terms of token t, 4 lanes per row (128-bit lane r). Both are
// laid out so that each (row, token) sees the same operations whatever R and T are.
template <class W, int R, int T>
LE_TARGET_AVX512 void micro_k(const uint8_t* LE_RESTRICT w, int64_t w_stride, const uint8_t* LE_RESTRICT act,
                              int64_t act_stride, int64_t nsb, float* LE_RESTRICT y, int64_t ldy) {
    static_assert(R >= 1 && R <= 4 && T >= 1 && T <= 4, "micro-tile size");
    __m512 acc[R][T];
    __m512 accm[T];
    for (int t = 0; t < T; ++t) {
        accm[t] = _mm512_setzero_ps();
        for (int r = 0; r < R; ++r) acc[r][t] = _mm512_setzero_ps();
    }
    const uint8_t* pf = w + prefetch_ahead<T>(R * w_stride);
    for (int64_t i = 0; i < nsb; ++i) {
        prefetch_step<R * W::kBlockBytes>(pf, i);  // later rows, at this pass's pace
        const uint8_t* a = act + i * kQ8KBytes;
        const uint8_t* wb = w + i * W::kBlockBytes;
        KQuad Q;
        W::quad(wb, w_stride, R, Q);
        __m512 dd[T];  // [d_r * d_t, dmin_r * d_t] pairs
        // The same in memory: a row's scale is then a broadcast load rather than a permute on the vector pipes
        // (Q6_K and Q5_K prefill, one core: 5-6% faster; Q4_K the same).
        alignas(64) float ddv[T][16];
        for (int t = 0; t < T; ++t) {
            dd[t] = _mm512_mul_ps(Q.dd, _mm512_set1_ps(*reinterpret_cast<const float*>(a + t * act_stride + 256)));
            _mm512_store_ps(ddv[t], dd[t]);
        }
        if (W::kHasMin) {
            // lane 4r + j: -dmin_r * d_t against the j-th pair-sum of mins_r x sums_t
            const __m512i dmin_idx = _mm512_set_epi32(7, 7, 7, 7, 5, 5, 5, 5, 3, 3, 3, 3, 1, 1, 1, 1);
            for (int t = 0; t < T; ++t) {
                const __m512i s = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + t * act_stride + 288)));
                const __m512 m = _mm512_cvtepi32_ps(_mm512_madd_epi16(Q.mins, s));
                accm[t] = _mm512_fnmadd_ps(m, _mm512_permutexvar_ps(dmin_idx, dd[t]), accm[t]);
            }
        }
        for (int r = 0; r < R; ++r) {
            KRow Rw;
            W::row(wb + r * w_stride, Q, r, Rw);
            __m512i isum[T];
            for (int t = 0; t < T; ++t) {
                if (W::kHasMin) {
                    isum[t] = _mm512_setzero_si512();
                } else {  // Q6_K: codes are value + 32; start from -32 * sum_k scale_k * (sum of 16 activations)
                    const __m512i bs = _mm512_zextsi256_si512(
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + t * act_stride + 288)));
                    isum[t] = _mm512_dpwssd_epi32(_mm512_setzero_si512(), Rw.bias, bs);
                }
            }
            __m512i q[4];
            for (int k = 0; k < 4; ++k) q[k] = W::q(Rw, k);
            for (int t = 0; t < T; ++t) {
                __m512i x[4];
                for (int k = 0; k < 4; ++k)
                    x[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[k], _mm512_load_si512(a + t * act_stride + 64 * k));
                isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_packs_epi32(x[0], x[1]), Rw.s0);
                isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_packs_epi32(x[2], x[3]), Rw.s1);
            }
            for (int t = 0; t < T; ++t) {
                const __m512 s = _mm512_set1_ps(ddv[t][2 * r]);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), s, acc[r][t]);
            }
        }
    }
    for (int t = 0; t < T; ++t) {
        alignas(64) float m[16];
        _mm512_store_ps(m, accm[t]);
        for (int r = 0; r < R; ++r) {
            const float min_term = W::kHasMin ? hsum_128(_mm_load_ps(m + 4 * r)) : 0.0f;
            y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]) + min_term;
        }
    }
}

template <class W, int T>
LE_TARGET_AVX512 void rows_k(const uint8_t* LE_RESTRICT w, int64_t w_stride, int64_t n_rows,
                             const uint8_t* LE_RESTRICT act, int64_t act_stride, int64_t nsb, float* LE_RESTRICT y,
                             int64_t ldy) {
    constexpr int R = 4;
    int64_t r = 0;
    for (; r + R <= n_rows; r += R) micro_k<W, R, T>(w + r * w_stride, w_stride, act, act_stride, nsb, y + r, ldy);
    switch (n_rows - r) {
        case 1: micro_k<W, 1, T>(w + r * w_stride, w_stride, act, act_stride, nsb, y + r, ldy); break;
        case 2: micro_k<W, 2, T>(w + r * w_stride, w_stride, act, act_stride, nsb, y + r, ldy); break;
        case 3: micro_k<W, 3, T>(w + r * w_stride, w_stride, act, act_stride, nsb, y + r, ldy); break;
        default: break;
    }
}

template <class W>
LE_TARGET_AVX512 void gemm_k(const uint8_t* LE_RESTRICT w, int64_t w_stride, int64_t n_rows,
                             const uint8_t* LE_RESTRICT act, int64_t act_stride, int64_t n_tok, float* LE_RESTRICT y,
                             int64_t ldy, int64_t n_in) {
    check_blocks(n_in, QK_K, "gemm_k_avx512");
    const int64_t nsb = n_in / QK_K;
    constexpr int T = 4;
    int64_t t = 0;
    for (; t + T <= n_tok; t += T)
        rows_k<W, T>(w, w_stride, n_rows, act + t * act_stride, act_stride, nsb, y + t * ldy, ldy);
    const uint8_t* a = act + t * act_stride;
    float* yt = y + t * ldy;
    switch (n_tok - t) {
        case 1: rows_k<W, 1>(w, w_stride, n_rows, a, act_stride, nsb, yt, ldy); break;
        case 2: rows_k<W, 2>(w, w_stride, n_rows, a, act_stride, nsb, yt, ldy); break;
        case 3: rows_k<W, 3>(w, w_stride, n_rows, a, act_stride, nsb, yt, ldy); break;
        default: break;
    }
}

}  // namespace

void fill_gemm_avx512_k(GemmKernels* table) {
    table[int(GGMLType::Q4_K)] = {"avx512", &act_bytes_q8k, &pack_act_q8k<false>, &gemm_k<Q4_KWeights>};
    table[int(GGMLType::Q5_K)] = {"avx512", &act_bytes_q8k, &pack_act_q8k<false>, &gemm_k<Q5_KWeights>};
    table[int(GGMLType::Q6_K)] = {"avx512", &act_bytes_q8k, &pack_act_q8k<true>, &gemm_k<Q6_KWeights>};
}

}  // namespace le

#else  // not x86

namespace le {
void fill_gemm_avx512_k(GemmKernels*) {}
}  // namespace le

#endif
