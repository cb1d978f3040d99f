// AVX-512 (F/BW/VL/VNNI) matmul kernel for Q8_0 weights (Q4_0: gemm_avx512_q4_0.cpp). Activations are quantized once per matmul into a packed layout
// that matches how the weight blocks unpack into registers, so the inner loop is loads, vpdpbusd and one
// float scale-and-accumulate per 128 values; weight blocks are decoded once per micro-tile and reused for
// every token of it.
//
// Packed Q8 activations ("q8x4"), per group of 4 blocks (128 values), 256 bytes:
//   [0, 64)    int8  lo: a_k[0:16] for k = 0..3 (value j of block k at byte 16k + j)
//   [64, 128)  int8  hi: a_k[16:32]
//   [128, 192) int32 bias[16]: lane j = -C * (sum of the 8 codes that meet lane j in the two vpdpbusd),
//              C = 128 (code + 128): the unsigned operand's offset
//   [192, 256) f32   d[16]: lane j = the scale of block j / 4 (rounded through fp16, as Q8_0 stores it)
// Codes and scales are those of quantize_row_q8_0_ref, bit for bit. A partial last group is zero-padded.
// Lane j of an int32 product then holds sum over 8 values of block j / 4 of w * a, exactly.
#include "gemm.h"
#include "simd_avx512.h"

#include <cstring>

#if LE_X86_SIMD

namespace le {

using namespace avx512;

namespace {

constexpr int64_t kQ8x4GroupBytes = 256;

int64_t act_bytes_q8x4(int64_t n_in) { return (n_in / QK8_0 + 3) / 4 * kQ8x4GroupBytes; }

// x [n_in] -> packed q8x4 groups.
LE_TARGET_AVX512 void pack_act_q8x4(const float* LE_RESTRICT x, uint8_t* LE_RESTRICT act, int64_t n_in) {
    const int64_t nb = n_in / QK8_0;
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t g = 0; g * 4 < nb; ++g) {
        alignas(64) int8_t lo[64], hi[64];
        alignas(64) float d[16];
        for (int k = 0; k < 4; ++k) {
            const int64_t b = 4 * g + k;
            __m128i q_lo = _mm_setzero_si128(), q_hi = _mm_setzero_si128();
            float db = 0.0f;
            if (b < nb) db = _cvtsh_ss(quantize_block_q8_0(x + 32 * b, q_lo, q_hi));
            _mm_store_si128(reinterpret_cast<__m128i*>(lo + 16 * k), q_lo);
            _mm_store_si128(reinterpret_cast<__m128i*>(hi + 16 * k), q_hi);
            for (int s = 0; s < 4; ++s) d[4 * k + s] = db;
        }
        uint8_t* out = act + g * kQ8x4GroupBytes;
        const __m512i vlo = _mm512_load_si512(lo), vhi = _mm512_load_si512(hi);
        const __m512i sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, vlo), ones, vhi);
        _mm512_storeu_si512(out, vlo);
        _mm512_storeu_si512(out + 64, vhi);
        _mm512_storeu_si512(out + 128, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sums, 7)));
        _mm512_storeu_ps(reinterpret_cast<float*>(out + 192), _mm512_load_ps(d));
    }
}

// ---- weight groups: 4 blocks of one row decoded into the q8x4 lane order -------------------------------

struct WGroup {
    __m512i lo, hi;  // unsigned operands of vpdpbusd
    __m512 d;        // lane j: scale of block j / 4
};

struct Q8_0Weights {
    static constexpr int64_t kGroupBytes = 4 * 34;

    LE_TARGET_AVX512 static void arrange(__m256i y0, __m256i y1, __m256i y2, __m256i y3, WGroup& g) {
        const __m512i z01 = _mm512_inserti64x4(_mm512_castsi256_si512(y0), y1, 1);
        const __m512i z23 = _mm512_inserti64x4(_mm512_castsi256_si512(y2), y3, 1);
        const __m512i bias = _mm512_set1_epi8(char(0x80));  // code + 128: unsigned for vpdpbusd
        g.lo = _mm512_xor_si512(_mm512_shuffle_i64x2(z01, z23, _MM_SHUFFLE(2, 0, 2, 0)), bias);
        g.hi = _mm512_xor_si512(_mm512_shuffle_i64x2(z01, z23, _MM_SHUFFLE(3, 1, 3, 1)), bias);
    }

    // Scales at words 0, 17, 34, 51 of the group: from two 64-byte halves.
    LE_TARGET_AVX512 static __m512 scales(__m512i r0, __m512i r1) {
        const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 51, 51, 51, 51, 34, 34,
                                             34, 34, 17, 17, 17, 17, 0, 0, 0, 0);
        return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(r0, idx, r1)));
    }

    LE_TARGET_AVX512 static void load(const uint8_t* LE_RESTRICT b, WGroup& g) {
        arrange(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2)),
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 36)),
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 70)),
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 104)), g);
        g.d = scales(_mm512_loadu_si512(b), _mm512_loadu_si512(b + 64));
    }

    LE_TARGET_AVX512 static void load_tail(const uint8_t* LE_RESTRICT b, int nt, WGroup& g) {
        const __m256i z = _mm256_setzero_si256();
        const __m256i y0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
        const __m256i y1 = nt > 1 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 36)) : z;
        const __m256i y2 = nt > 2 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 70)) : z;
        arrange(y0, y1, y2, z, g);
        // Missing blocks: zero codes become 0x80 after the offset, but their activations are zero-padded and
        // their bias lanes zero, so they add nothing; their scales must be finite: masked loads give 0.
        const int words = 17 * nt;  // 17, 34 or 51
        const __m512i r0 = _mm512_maskz_loadu_epi16(words >= 32 ? ~__mmask32(0) : __mmask32((1u << words) - 1), b);
        const __m512i r1 =
            words > 32 ? _mm512_maskz_loadu_epi16(__mmask32((1u << (words - 32)) - 1), b + 64) : _mm512_setzero_si512();
        g.d = scales(r0, r1);
    }
};

// R weight rows x T tokens, the whole of n_in: acc[r][t] gathers, per 128 values, lane-wise
// float(int32 partial dot) * (weight scale * activation scale); the 16 lanes are summed once at the end.
// One group (128 values) of R rows x T tokens into acc. a: the group in token 0's packed row.
template <class W, int R, int T, bool TAIL>
LE_TARGET_AVX512 inline void step_q8x4(__m512 (&acc)[R][T], const uint8_t* LE_RESTRICT w, int64_t w_stride,
                                       const uint8_t* LE_RESTRICT a, int64_t act_stride, int tail_blocks) {
    __m512i alo[T], ahi[T];
    for (int t = 0; t < T; ++t) {
        alo[t] = _mm512_load_si512(a + t * act_stride);
        ahi[t] = _mm512_load_si512(a + t * act_stride + 64);
    }
    for (int r = 0; r < R; ++r) {
        WGroup wg;
        if (TAIL) {
            W::load_tail(w + r * w_stride, tail_blocks, wg);
        } else {
            W::load(w + r * w_stride, wg);
        }
        for (int t = 0; t < T; ++t) {
            const uint8_t* at = a + t * act_stride;
            __m512i p = _mm512_load_si512(at + 128);
            p = _mm512_dpbusd_epi32(p, wg.lo, alo[t]);
            p = _mm512_dpbusd_epi32(p, wg.hi, ahi[t]);
            const __m512 s = _mm512_mul_ps(wg.d, _mm512_load_ps(reinterpret_cast<const float*>(at + 192)));
            acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, acc[r][t]);
        }
    }
}

// R weight rows x T tokens, the whole of n_in: acc[r][t] gathers, per 128 values, lane-wise
// float(int32 partial dot) * (weight scale * activation scale); the 16 lanes are summed once at the end.
template <class W, int R, int T>
LE_TARGET_AVX512 void micro_q8x4(const uint8_t* LE_RESTRICT w, int64_t w_stride, const uint8_t* LE_RESTRICT act,
                                 int64_t act_stride, int64_t n_groups, int tail_blocks, float* LE_RESTRICT y,
                                 int64_t ldy) {
    __m512 acc[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
    const uint8_t* pf = w + prefetch_ahead<T>(R * w_stride);
    for (int64_t g = 0; g < n_groups; ++g) {
        prefetch_step<R * W::kGroupBytes>(pf, g);  // later rows, at this pass's pace
        step_q8x4<W, R, T, false>(acc, w + g * W::kGroupBytes, w_stride, act + g * kQ8x4GroupBytes, act_stride, 0);
    }
    if (tail_blocks > 0)
        step_q8x4<W, R, T, true>(acc, w + n_groups * W::kGroupBytes, w_stride, act + n_groups * kQ8x4GroupBytes,
                                 act_stride, tail_blocks);
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <class W, int T>
LE_TARGET_AVX512 void rows_q8x4(const uint8_t* LE_RESTRICT w, int64_t w_stride, int64_t n_rows,
                                const uint8_t* LE_RESTRICT act, int64_t act_stride, int64_t n_groups, int tail,
                                float* LE_RESTRICT y, int64_t ldy) {
    constexpr int R = 4;  // 2, 6 and 8 measured no faster for decode
    int64_t r = 0;
    for (; r + R <= n_rows; r += R)
        micro_q8x4<W, 4, T>(w + r * w_stride, w_stride, act, act_stride, n_groups, tail, y + r, ldy);
    switch (n_rows - r) {
        case 1: micro_q8x4<W, 1, T>(w + r * w_stride, w_stride, act, act_stride, n_groups, tail, y + r, ldy); break;
        case 2: micro_q8x4<W, 2, T>(w + r * w_stride, w_stride, act, act_stride, n_groups, tail, y + r, ldy); break;
        case 3: micro_q8x4<W, 3, T>(w + r * w_stride, w_stride, act, act_stride, n_groups, tail, y + r, ldy); break;
        default: break;
    }
}

// W [n_rows] x act [n_tok] -> y[t * ldy + r]: token quads outermost, so a quad's activations stay in L1
// while the (L2-sized, see ops.cpp) block of rows streams past.
template <class W>
LE_TARGET_AVX512 void gemm_q8x4(const uint8_t* LE_RESTRICT w, int64_t w_stride, int64_t n_rows,
                                const uint8_t* LE_RESTRICT act, int64_t act_stride, int64_t n_tok, float* LE_RESTRICT y,
                                int64_t ldy, int64_t n_in) {
    check_blocks(n_in, QK8_0, "gemm_q8x4_avx512");
    const int64_t nb = n_in / QK8_0;
    const int64_t n_groups = nb / 4;
    const int tail = int(nb % 4);
    constexpr int T = 4;
    int64_t t = 0;
    for (; t + T <= n_tok; t += T)
        rows_q8x4<W, T>(w, w_stride, n_rows, act + t * act_stride, act_stride, n_groups, tail, y + t * ldy, ldy);
    const uint8_t* a = act + t * act_stride;
    float* yt = y + t * ldy;
    switch (n_tok - t) {
        case 1: rows_q8x4<W, 1>(w, w_stride, n_rows, a, act_stride, n_groups, tail, yt, ldy); break;
        case 2: rows_q8x4<W, 2>(w, w_stride, n_rows, a, act_stride, n_groups, tail, yt, ldy); break;
        case 3: rows_q8x4<W, 3>(w, w_stride, n_rows, a, act_stride, n_groups, tail, yt, ldy); break;
        default: break;
    }
}

}  // namespace

void fill_gemm_avx512(GemmKernels* table) {
    GemmKernels& q8 = table[int(GGMLType::Q8_0)];
    q8 = {"avx512", &act_bytes_q8x4, &pack_act_q8x4, &gemm_q8x4<Q8_0Weights>};
    fill_gemm_avx512_q4_0(table);
    fill_gemm_avx512_k(table);
    fill_gemm_avx512_float(table);
}

}  // namespace le

#else  // not x86

namespace le {
void fill_gemm_avx512(GemmKernels*) {}
}  // namespace le

#endif
