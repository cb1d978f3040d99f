// AVX-512 (F/BW/VL/VNNI) matmul kernel for Q4_0 weights, 8 blocks (256 values) per step.
//
// Q4_0 decode is bound by the vector pipes as much as by memory (in cache, one core, the 4-block kernel of
// gemm_avx512.cpp moved ~30 GB/s against ~28 GB/s of DRAM per core), so this layout is chosen to spend the
// fewest vector operations per weight byte: per 8 blocks and row, 2 word permutes gather the codes, 6 ops
// split the nibbles, 4 vpdpbusd accumulate ALL of them into one int32 register whose lanes k and k + 8 both
// hold block k, and the scaling runs once on 8 lanes (fold the halves, convert, one fma) instead of twice
// on 16.
//
// Weight codes: qs byte i of a block holds value i (low nibble) and value i + 16 (high nibble). The two
// gathered registers hold, for block k = 0..7 of the step:
//   P1: lane k = qs[0:4], lane k + 8 = qs[4:8];   P2: lane k = qs[8:12], lane k + 8 = qs[12:16]
// so lo(P1), hi(P1), lo(P2), hi(P2) hold values (0-3 | 4-7), (16-19 | 20-23), (8-11 | 12-15), (24-27 | 28-31).
//
// Packed Q8 activations ("q8x8"), per 8 blocks (256 values), 384 bytes:
//   [0, 256)   int8 codes in the four registers' value order above (64 bytes each)
//   [256, 320) int32 bias[16]: lane j = -8 * (sum of the 16 codes that meet lane j): the nibbles' offset
//   [320, 352) f32 d[8]: block k's scale (rounded through fp16, as Q8_0 stores it)
//   [352, 384) zero
// Codes and scales are those of quantize_row_q8_0_ref, bit for bit. A partial last step is zero-padded.
#include "gemm.h"
#include "simd_avx512.h"

#include <cstring>

#if LE_X86_SIMD

namespace le {

using namespace avx512;

namespace {

constexpr int64_t kStepBlocks = 8;
constexpr int64_t kStepBytes = kStepBlocks * 18;  // weight bytes per step and row
constexpr int64_t kActBytes = 384;                // packed activation bytes per step

int64_t act_bytes_q8x8(int64_t n_in) { return (n_in / QK8_0 + kStepBlocks - 1) / kStepBlocks * kActBytes; }

// Dword indices that move a step's codes, stored block after block (block k's dword j holds values 4j..4j+3),
// into the registers' order above: register lane L takes block k = L & 7, dword j0 + (L >> 3), where j0 is
// 0, 4, 2, 6 for registers 0-3. Blocks 0-3 come from the first two source registers, 4-7 from the last two.
template <int J0>
LE_TARGET_AVX512 inline __m512i code_idx() {
    return _mm512_setr_epi32(J0, 8 + J0, 16 + J0, 24 + J0, J0, 8 + J0, 16 + J0, 24 + J0, J0 + 1, 9 + J0, 17 + J0,
                             25 + J0, J0 + 1, 9 + J0, 17 + J0, 25 + J0);
}

template <int J0>
LE_TARGET_AVX512 inline __m512i code_register(const __m512i* src) {
    const __m512i idx = code_idx<J0>();
    return _mm512_mask_blend_epi32(0xF0F0, _mm512_permutex2var_epi32(src[0], idx, src[1]),
                                   _mm512_permutex2var_epi32(src[2], idx, src[3]));
}

LE_TARGET_AVX512 void pack_act_q8x8(const float* LE_RESTRICT x, uint8_t* LE_RESTRICT act, int64_t n_in) {
    const int64_t nb = n_in / QK8_0;
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t s = 0; s * kStepBlocks < nb; ++s) {
        uint8_t* out = act + s * kActBytes;
        alignas(64) int8_t codes[kStepBlocks * QK8_0] = {};  // block after block; missing blocks stay zero
        alignas(32) float d[kStepBlocks] = {};
        for (int k = 0; k < kStepBlocks && s * kStepBlocks + k < nb; ++k) {
            __m128i q_lo, q_hi;
            d[k] = _cvtsh_ss(quantize_block_q8_0(x + QK8_0 * (s * kStepBlocks + k), q_lo, q_hi));
            _mm_store_si128(reinterpret_cast<__m128i*>(codes + QK8_0 * k), q_lo);
            _mm_store_si128(reinterpret_cast<__m128i*>(codes + QK8_0 * k + 16), q_hi);
        }
        __m512i src[4];
        for (int i = 0; i < 4; ++i) src[i] = _mm512_load_si512(codes + 64 * i);
        const __m512i reg[4] = {code_register<0>(src), code_register<4>(src), code_register<2>(src),
                                code_register<6>(src)};
        __m512i sums = _mm512_setzero_si512();
        for (int r = 0; r < 4; ++r) {
            _mm512_storeu_si512(out + 64 * r, reg[r]);
            sums = _mm512_dpbusd_epi32(sums, ones, reg[r]);
        }
        _mm512_storeu_si512(out + 256, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sums, 3)));
        std::memcpy(out + 320, d, sizeof d);
        std::memset(out + 352, 0, 32);
    }
}

// Word indices of the two gathers. P1 reads words of the 64 bytes at +2 (blocks 0-3: block k's qs at word
// 9k) and at +74 (blocks 4-7: word 9k - 36, i.e. index 32 + 9k - 36); P2 the 64 bytes at +10 and +80 (qs
// from byte 8 on: word 9k, and 32 + 9k - 35). Both windows stay inside the step's 144 bytes.
constexpr uint16_t gather_word(int w, int hi_base) {
    const int k = (w >> 1) & 7, pair = w >> 4;          // lane k + 8 * pair, word (w & 1) of it
    const int base = k < 4 ? 9 * k : 32 + 9 * k - hi_base;
    return uint16_t(base + 2 * pair + (w & 1));
}

template <int HI_BASE>
LE_TARGET_AVX512 inline __m512i gather_idx() {
    alignas(64) static constexpr uint16_t idx[32] = {
        gather_word(0, HI_BASE),  gather_word(1, HI_BASE),  gather_word(2, HI_BASE),  gather_word(3, HI_BASE),
        gather_word(4, HI_BASE),  gather_word(5, HI_BASE),  gather_word(6, HI_BASE),  gather_word(7, HI_BASE),
        gather_word(8, HI_BASE),  gather_word(9, HI_BASE),  gather_word(10, HI_BASE), gather_word(11, HI_BASE),
        gather_word(12, HI_BASE), gather_word(13, HI_BASE), gather_word(14, HI_BASE), gather_word(15, HI_BASE),
        gather_word(16, HI_BASE), gather_word(17, HI_BASE), gather_word(18, HI_BASE), gather_word(19, HI_BASE),
        gather_word(20, HI_BASE), gather_word(21, HI_BASE), gather_word(22, HI_BASE), gather_word(23, HI_BASE),
        gather_word(24, HI_BASE), gather_word(25, HI_BASE), gather_word(26, HI_BASE), gather_word(27, HI_BASE),
        gather_word(28, HI_BASE), gather_word(29, HI_BASE), gather_word(30, HI_BASE), gather_word(31, HI_BASE)};
    return _mm512_load_si512(idx);
}

struct Step {
    __m512i q[4];  // unsigned operands of vpdpbusd, in the activation registers' order
    __m256 d;      // block k's scale
};

// The 8 blocks at b (144 bytes, never read past).
LE_TARGET_AVX512 inline void load_step(const uint8_t* LE_RESTRICT b, Step& s) {
    const __m512i p1 = _mm512_permutex2var_epi16(_mm512_loadu_si512(b + 2), gather_idx<36>(), _mm512_loadu_si512(b + 74));
    const __m512i p2 = _mm512_permutex2var_epi16(_mm512_loadu_si512(b + 10), gather_idx<35>(), _mm512_loadu_si512(b + 80));
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    s.q[0] = _mm512_and_si512(p1, m4);
    s.q[1] = _mm512_and_si512(_mm512_srli_epi16(p1, 4), m4);
    s.q[2] = _mm512_and_si512(p2, m4);
    s.q[3] = _mm512_and_si512(_mm512_srli_epi16(p2, 4), m4);
    // Scales at words 0, 9, ..., 63: from the first 128 bytes. In a general register, not a third permute:
    // the integer ports are idle, the vector ones are the bottleneck.
    uint64_t lo = 0, hi = 0;
    for (int k = 0; k < 4; ++k) {
        uint16_t h0, h1;
        std::memcpy(&h0, b + 18 * k, 2);
        std::memcpy(&h1, b + 18 * (k + 4), 2);
        lo |= uint64_t(h0) << (16 * k);
        hi |= uint64_t(h1) << (16 * k);
    }
    s.d = _mm256_cvtph_ps(_mm_insert_epi64(_mm_cvtsi64_si128(int64_t(lo)), int64_t(hi), 1));
}

// The last nt (1..7) blocks of a row, copied into a zeroed step: missing blocks have zero scales.
LE_TARGET_AVX512 inline void load_step_tail(const uint8_t* LE_RESTRICT b, int nt, Step& s) {
    alignas(64) uint8_t buf[kStepBytes] = {};
    std::memcpy(buf, b, size_t(nt) * 18);
    load_step(buf, s);
}

// One step (8 blocks) of R rows x T tokens into acc; a: the step in token 0's packed row. acc[r][t] lane k
// gathers d_w(k) * d_a(k) * (int dot of block k); summed across lanes once at the end.
template <int R, int T, bool TAIL>
LE_TARGET_AVX512 inline void step(__m256 (&acc)[R][T], const uint8_t* LE_RESTRICT w, int64_t w_stride,
                                  const uint8_t* LE_RESTRICT a, int64_t act_stride, int tail) {
    for (int r = 0; r < R; ++r) {
        Step s;
        if (TAIL) {
            load_step_tail(w + r * w_stride, tail, s);
        } else {
            load_step(w + r * w_stride, s);
        }
        for (int t = 0; t < T; ++t) {
            const uint8_t* at = a + t * act_stride;
            __m512i p = _mm512_load_si512(at + 256);
            for (int j = 0; j < 4; ++j) p = _mm512_dpbusd_epi32(p, s.q[j], _mm512_load_si512(at + 64 * j));
            const __m256i p8 = _mm256_add_epi32(_mm512_castsi512_si256(p), _mm512_extracti64x4_epi64(p, 1));
            const __m256 sd = _mm256_mul_ps(s.d, _mm256_load_ps(reinterpret_cast<const float*>(at + 320)));
            acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p8), sd, acc[r][t]);
        }
    }
}

// R rows x T tokens over the whole of n_in.
template <int R, int T>
LE_TARGET_AVX512 void micro(const uint8_t* LE_RESTRICT w, int64_t w_stride, const uint8_t* LE_RESTRICT act,
                            int64_t act_stride, int64_t n_steps, int tail, float* LE_RESTRICT y, int64_t ldy) {
    __m256 acc[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    const uint8_t* pf = w + prefetch_ahead<T>(R * w_stride);
    for (int64_t i = 0; i < n_steps; ++i) {
        prefetch_step<R * kStepBytes>(pf, i);
        step<R, T, false>(acc, w + i * kStepBytes, w_stride, act + i * kActBytes, act_stride, 0);
    }
    if (tail > 0) step<R, T, true>(acc, w + n_steps * kStepBytes, w_stride, act + n_steps * kActBytes, act_stride, tail);
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum_256(acc[r][t]);
}

template <int T>
LE_TARGET_AVX512 void rows(const uint8_t* LE_RESTRICT w, int64_t w_stride, int64_t n_rows, const uint8_t* LE_RESTRICT act,
                           int64_t act_stride, int64_t n_steps, int tail, float* LE_RESTRICT y, int64_t ldy) {
    constexpr int R = 4;
    int64_t r = 0;
    for (; r + R <= n_rows; r += R) micro<R, T>(w + r * w_stride, w_stride, act, act_stride, n_steps, tail, y + r, ldy);
    switch (n_rows - r) {
        case 1: micro<1, T>(w + r * w_stride, w_stride, act, act_stride, n_steps, tail, y + r, ldy); break;
        case 2: micro<2, T>(w + r * w_stride, w_stride, act, act_stride, n_steps, tail, y + r, ldy); break;
        case 3: micro<3, T>(w + r * w_stride, w_stride, act, act_stride, n_steps, tail, y + r, ldy); break;
        default: break;
    }
}

// Token quads outermost, so a quad's activations stay in L1 while the block of rows streams past.
LE_TARGET_AVX512 void gemm_q4_0(const uint8_t* LE_RESTRICT w, int64_t w_stride, int64_t n_rows,
                                const uint8_t* LE_RESTRICT act, int64_t act_stride, int64_t n_tok, float* LE_RESTRICT y,
                                int64_t ldy, int64_t n_in) {
    check_blocks(n_in, QK8_0, "gemm_q4_0_avx512");
    const int64_t nb = n_in / QK8_0;
    const int64_t n_steps = nb / kStepBlocks;
    const int tail = int(nb % kStepBlocks);
    constexpr int T = 4;
    int64_t t = 0;
    for (; t + T <= n_tok; t += T) rows<T>(w, w_stride, n_rows, act + t * act_stride, act_stride, n_steps, tail, y + t * ldy, ldy);
    const uint8_t* a = act + t * act_stride;
    float* yt = y + t * ldy;
    switch (n_tok - t) {
        case 1: rows<1>(w, w_stride, n_rows, a, act_stride, n_steps, tail, yt, ldy); break;
        case 2: rows<2>(w, w_stride, n_rows, a, act_stride, n_steps, tail, yt, ldy); break;
        case 3: rows<3>(w, w_stride, n_rows, a, act_stride, n_steps, tail, yt, ldy); break;
        default: break;
    }
}

}  // namespace

void fill_gemm_avx512_q4_0(GemmKernels* table) {
    table[int(GGMLType::Q4_0)] = {"avx512", &act_bytes_q8x8, &pack_act_q8x8, &gemm_q4_0};
}

}  // namespace le

#else  // not x86

namespace le {
void fill_gemm_avx512_q4_0(GemmKernels*) {}
}  // namespace le

#endif
