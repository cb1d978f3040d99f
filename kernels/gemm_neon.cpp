// AArch64 NEON kernels with the dot-product extension (sdot): activation quantizers bit-exact with
// quantize_row_q8_0_ref / quantize_row_q8_K_ref, and matmul micro-kernels for Q4_0, Q8_0, Q4_K, Q5_K,
// Q6_K and float weights. Activations stay in the on-disk Q8_0 / Q8_K layouts (NEON's signed x signed sdot
// needs no rearranging), so a 1 x 1 micro-tile is also the vec_dot of quants.h.
//
// Compiled per function for armv8.2-a+dotprod (no global -march); the table is filled only when the CPU
// reports the extension (isa.h cpu_has_neon_dotprod), else the reference stays in place.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")  // the quantizers promise the reference's bits (see simd_avx512.h)
#endif

#include "gemm.h"
#include "quants_impl.h"

#if defined(__aarch64__)

#include <arm_neon.h>

#include <cmath>

#define LE_TARGET_NEON __attribute__((target("arch=armv8.2-a+dotprod")))

namespace le {

namespace {

// ---- activation quantizers -------------------------------------------------------------------------------

// quantize_row_q8_0_ref's rounding: half away from zero (fcvtas), but NaN and |v| >= 2^31 give INT32_MIN
// (cvttss2si's answer, which the reference reproduces) where fcvtas would saturate.
LE_TARGET_NEON inline int32x4_t round_half_away(float32x4_t v) {
    const int32x4_t r = vcvtaq_s32_f32(v);
    const uint32x4_t bad = vorrq_u32(vcageq_f32(v, vdupq_n_f32(2147483648.0f)), vmvnq_u32(vceqq_f32(v, v)));
    return vbslq_s32(bad, vdupq_n_s32(INT32_MIN), r);
}

// Low bytes of 4 x 4 int32, in order.
LE_TARGET_NEON inline int8x16_t narrow_bytes(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    const int16x8_t ab = vcombine_s16(vmovn_s32(a), vmovn_s32(b));
    const int16x8_t cd = vcombine_s16(vmovn_s32(c), vmovn_s32(d));
    return vcombine_s8(vmovn_s16(ab), vmovn_s16(cd));
}

LE_TARGET_NEON void quantize_q8_0(const float* LE_RESTRICT x, block_q8_0* LE_RESTRICT y, int64_t n) {
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; ++i, x += QK8_0) {
        float32x4_t v[8];
        float32x4_t amax = vdupq_n_f32(0.0f);
        for (int j = 0; j < 8; ++j) {
            v[j] = vld1q_f32(x + 4 * j);
            amax = vmaxnmq_f32(amax, vabsq_f32(v[j]));  // maxnm ignores a NaN |x|, as std::max(amax, |x|)
        }
        const float d = vmaxnmvq_f32(amax) / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        for (int h = 0; h < 2; ++h) {
            const int8x16_t q = narrow_bytes(round_half_away(vmulq_n_f32(v[4 * h], id)), round_half_away(vmulq_n_f32(v[4 * h + 1], id)),
                                             round_half_away(vmulq_n_f32(v[4 * h + 2], id)), round_half_away(vmulq_n_f32(v[4 * h + 3], id)));
            vst1q_s8(y[i].qs + 16 * h, q);
        }
    }
}

// llama.cpp's nearest_int through the float adder (the same bits as the reference for every input).
LE_TARGET_NEON inline int32x4_t nearest_int(float32x4_t v) {
    const uint32x4_t bits = vreinterpretq_u32_f32(vaddq_f32(v, vdupq_n_f32(12582912.0f)));
    return vsubq_s32(vreinterpretq_s32_u32(vandq_u32(bits, vdupq_n_u32(0x007fffff))), vdupq_n_s32(0x00400000));
}

LE_TARGET_NEON void quantize_q8_K(const float* LE_RESTRICT x, block_q8_K* LE_RESTRICT y, int64_t n) {
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; ++i, x += QK_K) {
        float32x4_t amax_v = vdupq_n_f32(0.0f);
        for (int j = 0; j < QK_K / 4; ++j) amax_v = vmaxnmq_f32(amax_v, vabsq_f32(vld1q_f32(x + 4 * j)));
        const float amax = vmaxnmvq_f32(amax_v);
        if (amax == 0.0f) {
            std::memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        float max = 0.0f;  // the first value of largest magnitude, as the reference
        for (int j = 0; j < QK_K; ++j) {
            if (std::fabs(x[j]) == amax) {
                max = x[j];
                break;
            }
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K / 16; ++j) {
            int32x4_t c[4];
            for (int k = 0; k < 4; ++k)
                c[k] = vminq_s32(nearest_int(vmulq_n_f32(vld1q_f32(x + 16 * j + 4 * k), iscale)), vdupq_n_s32(127));
            const int8x16_t q = narrow_bytes(c[0], c[1], c[2], c[3]);
            vst1q_s8(y[i].qs + 16 * j, q);
            y[i].bsums[j] = int16_t(vaddlvq_s8(q));
        }
        y[i].d = 1 / iscale;
    }
}

// ---- Q4_0 / Q8_0 x Q8_0 ---------------------------------------------------------------------------------

struct Q4_0Weights {
    static constexpr int64_t kBlockBytes = 18;
    LE_TARGET_NEON static void load(const uint8_t* LE_RESTRICT b, int8x16_t& lo, int8x16_t& hi) {
        const uint8x16_t x = vld1q_u8(b + 2);
        const int8x16_t eight = vdupq_n_s8(8);
        lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(x, vdupq_n_u8(0x0F))), eight);
        hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(x, 4)), eight);
    }
};

struct Q8_0Weights {
    static constexpr int64_t kBlockBytes = 34;
    LE_TARGET_NEON static void load(const uint8_t* LE_RESTRICT b, int8x16_t& lo, int8x16_t& hi) {
        lo = vld1q_s8(reinterpret_cast<const int8_t*>(b + 2));
        hi = vld1q_s8(reinterpret_cast<const int8_t*>(b + 18));
    }
};

LE_TARGET_NEON inline float f16(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return fp16_to_fp32(h);
}

template <class W, int R, int T>
LE_TARGET_NEON void micro_q8_0(const uint8_t* LE_RESTRICT w, int64_t w_stride, const uint8_t* LE_RESTRICT act,
                               int64_t act_stride, int64_t nb, float* LE_RESTRICT y, int64_t ldy) {
    float32x4_t acc[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) acc[r][t] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
        int8x16_t a_lo[T], a_hi[T];
        float da[T];
        for (int t = 0; t < T; ++t) {
            const uint8_t* ab = act + t * act_stride + b * int64_t(sizeof(block_q8_0));
            da[t] = f16(ab);
            a_lo[t] = vld1q_s8(reinterpret_cast<const int8_t*>(ab + 2));
            a_hi[t] = vld1q_s8(reinterpret_cast<const int8_t*>(ab + 18));
        }
        for (int r = 0; r < R; ++r) {
            const uint8_t* blk = w + r * w_stride + b * W::kBlockBytes;
            int8x16_t lo, hi;
            W::load(blk, lo, hi);
            const float dw = f16(blk);
            for (int t = 0; t < T; ++t) {
                const int32x4_t p = vdotq_s32(vdotq_s32(vdupq_n_s32(0), lo, a_lo[t]), hi, a_hi[t]);
                acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(p), dw * da[t]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) y[t * ldy + r] = vaddvq_f32(acc[r][t]);
}

// ---- K-quants x Q8_K -----------------------------------------------------------------------------------

// Q4_K / Q5_K 6-bit scales and mins -> sc[8], m[8] (get_scale_min_k4 for all sub-blocks).
inline void unpack_scales_k4(const uint8_t* LE_RESTRICT s12, uint8_t* LE_RESTRICT sc, uint8_t* LE_RESTRICT m) {
    uint32_t u[4];
    std::memcpy(u, s12, 12);
    constexpr uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    u[3] = ((u[2] >> 4) & kmask2) | (((u[1] >> 6) & kmask3) << 4);
    const uint32_t mins_lo = u[1] & kmask1;
    u[1] = (u[2] & kmask2) | (((u[0] >> 6) & kmask3) << 4);
    u[2] = mins_lo;
    u[0] &= kmask1;
    std::memcpy(sc, u, 8);
    std::memcpy(m, u + 2, 8);
}

// Signed codes of one super-block, 16 per register (natural order), and its integer scales.
struct KBlock {
    int8x16_t q[16];
    int32_t sc[16];  // Q4_K/Q5_K: one per 32 values (sc[j] for registers 2j, 2j+1); Q6_K: one per 16
    int16_t m[8];
    float d, dmin;
};

struct Q4_KWeights {
    static constexpr int64_t kBlockBytes = 144;
    static constexpr bool kHasMin = true;
    static constexpr int kGroup = 32;  // values per scale
    LE_TARGET_NEON static void load(const uint8_t* LE_RESTRICT b, KBlock& B) {
        B.d = f16(b);
        B.dmin = f16(b + 2);
        uint8_t sc[8], m[8];
        unpack_scales_k4(b + 4, sc, m);
        for (int j = 0; j < 8; ++j) {
            B.sc[j] = sc[j];
            B.m[j] = m[j];
        }
        for (int c = 0; c < 4; ++c) {
            for (int h = 0; h < 2; ++h) {
                const uint8x16_t x = vld1q_u8(b + 16 + 32 * c + 16 * h);
                B.q[4 * c + h] = vreinterpretq_s8_u8(vandq_u8(x, vdupq_n_u8(0x0F)));  // value 64c + 16h + l
                B.q[4 * c + 2 + h] = vreinterpretq_s8_u8(vshrq_n_u8(x, 4));           // value 64c + 32 + 16h + l
            }
        }
    }
};

struct Q5_KWeights {
    static constexpr int64_t kBlockBytes = 176;
    static constexpr bool kHasMin = true;
    static constexpr int kGroup = 32;
    LE_TARGET_NEON static void load(const uint8_t* LE_RESTRICT b, KBlock& B) {
        B.d = f16(b);
        B.dmin = f16(b + 2);
        uint8_t sc[8], m[8];
        unpack_scales_k4(b + 4, sc, m);
        for (int j = 0; j < 8; ++j) {
            B.sc[j] = sc[j];
            B.m[j] = m[j];
        }
        const uint8x16_t h[2] = {vld1q_u8(b + 16), vld1q_u8(b + 32)};
        const uint8x16_t sixteen = vdupq_n_u8(16);
        for (int c = 0; c < 4; ++c) {
            for (int hh = 0; hh < 2; ++hh) {
                const uint8x16_t x = vld1q_u8(b + 48 + 32 * c + 16 * hh);
                // bit 2c (2c+1) of qh[l] is the 5th bit of value 64c + l (64c + 32 + l)
                const uint8x16_t b_lo = vandq_u8(vtstq_u8(h[hh], vdupq_n_u8(uint8_t(1u << (2 * c)))), sixteen);
                const uint8x16_t b_hi = vandq_u8(vtstq_u8(h[hh], vdupq_n_u8(uint8_t(2u << (2 * c)))), sixteen);
                B.q[4 * c + hh] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(x, vdupq_n_u8(0x0F)), b_lo));
                B.q[4 * c + 2 + hh] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(x, 4), b_hi));
            }
        }
    }
};

struct Q6_KWeights {
    // low 4 bits | the 2 high bits already at bits 4-5 of hb, minus the +32 offset
    LE_TARGET_NEON static int8x16_t code(uint8x16_t lo, uint8x16_t hb, uint8x16_t m2, int8x16_t off) {
        return vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, vandq_u8(hb, m2))), off);
    }
    static constexpr int64_t kBlockBytes = 210;
    static constexpr bool kHasMin = false;
    static constexpr int kGroup = 16;
    LE_TARGET_NEON static void load(const uint8_t* LE_RESTRICT b, KBlock& B) {
        B.d = f16(b + 208);
        B.dmin = 0.0f;
        for (int j = 0; j < 16; ++j) B.sc[j] = reinterpret_cast<const int8_t*>(b + 192)[j];
        const uint8x16_t m4 = vdupq_n_u8(0x0F), m2 = vdupq_n_u8(0x30);
        const int8x16_t off = vdupq_n_s8(32);
        for (int half = 0; half < 2; ++half) {
            for (int hh = 0; hh < 2; ++hh) {
                const uint8x16_t q0 = vld1q_u8(b + 64 * half + 16 * hh);
                const uint8x16_t q1 = vld1q_u8(b + 64 * half + 32 + 16 * hh);
                const uint8x16_t h = vld1q_u8(b + 128 + 32 * half + 16 * hh);
                const int base = 8 * half + hh;  // register of value 128 half + 16 hh + l
                B.q[base + 0] = code(vandq_u8(q0, m4), vshlq_n_u8(h, 4), m2, off);
                B.q[base + 2] = code(vandq_u8(q1, m4), vshlq_n_u8(h, 2), m2, off);
                B.q[base + 4] = code(vshrq_n_u8(q0, 4), h, m2, off);
                B.q[base + 6] = code(vshrq_n_u8(q1, 4), vshrq_n_u8(h, 2), m2, off);
            }
        }
    }
};

template <class W, int R, int T>
LE_TARGET_NEON void micro_k(const uint8_t* LE_RESTRICT w, int64_t w_stride, const uint8_t* LE_RESTRICT act,
                            int64_t act_stride, int64_t nsb, float* LE_RESTRICT y, int64_t ldy) {
    float32x4_t acc[R][T];
    float accm[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) {
            acc[r][t] = vdupq_n_f32(0.0f);
            accm[r][t] = 0.0f;
        }
    for (int64_t i = 0; i < nsb; ++i) {
        for (int r = 0; r < R; ++r) {
            KBlock B;
            W::load(w + r * w_stride + i * W::kBlockBytes, B);
            for (int t = 0; t < T; ++t) {
                const block_q8_K* a = reinterpret_cast<const block_q8_K*>(act + t * act_stride) + i;
                int32x4_t isum = vdupq_n_s32(0);
                constexpr int kRegsPerScale = W::kGroup / 16;
                for (int j = 0; j < 16 / kRegsPerScale; ++j) {
                    int32x4_t p = vdupq_n_s32(0);
                    for (int u = 0; u < kRegsPerScale; ++u) {
                        const int reg = j * kRegsPerScale + u;
                        p = vdotq_s32(p, B.q[reg], vld1q_s8(a->qs + 16 * reg));
                    }
                    isum = vmlaq_n_s32(isum, p, B.sc[j]);
                }
                acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(isum), B.d * a->d);
                if (W::kHasMin) {
                    int32_t summ = 0;
                    for (int j = 0; j < 8; ++j) summ += int32_t(B.m[j]) * (int32_t(a->bsums[2 * j]) + a->bsums[2 * j + 1]);
                    accm[r][t] -= (B.dmin * a->d) * float(summ);
                }
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) y[t * ldy + r] = vaddvq_f32(acc[r][t]) + accm[r][t];
}

// ---- float weights ------------------------------------------------------------------------------------

struct F32Weights {
    using T = float;
    LE_TARGET_NEON static float32x4_t load(const float* p) { return vld1q_f32(p); }
    static float one(const float* p) { return *p; }
};
struct F16Weights {
    using T = fp16_t;
    LE_TARGET_NEON static float32x4_t load(const fp16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
    static float one(const fp16_t* p) { return fp16_to_fp32(*p); }
};
struct BF16Weights {
    using T = bf16_t;
    LE_TARGET_NEON static float32x4_t load(const bf16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
    static float one(const bf16_t* p) { return bf16_to_fp32(*p); }
};

template <class W, int R, int T>
LE_TARGET_NEON void micro_f(const uint8_t* LE_RESTRICT w, int64_t w_stride, const uint8_t* LE_RESTRICT act,
                            int64_t act_stride, int64_t n, float* LE_RESTRICT y, int64_t ldy) {
    using WT = typename W::T;
    const float* x = reinterpret_cast<const float*>(act);
    const int64_t xs = act_stride / int64_t(sizeof(float));
    float32x4_t acc[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) acc[r][t] = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        for (int r = 0; r < R; ++r) {
            const float32x4_t wv = W::load(reinterpret_cast<const WT*>(w + r * w_stride) + i);
            for (int t = 0; t < T; ++t) acc[r][t] = vfmaq_f32(acc[r][t], wv, vld1q_f32(x + t * xs + i));
        }
    }
    for (int r = 0; r < R; ++r) {
        for (int t = 0; t < T; ++t) {
            float s = vaddvq_f32(acc[r][t]);
            for (int64_t j = i; j < n; ++j) s += W::one(reinterpret_cast<const WT*>(w + r * w_stride) + j) * x[t * xs + j];
            y[t * ldy + r] = s;
        }
    }
}

// ---- tiling ---------------------------------------------------------------------------------------------

template <class W, int R, int T>
struct MicroQ8 {
    static void run(const uint8_t* w, int64_t ws, const uint8_t* a, int64_t as, int64_t len, float* y, int64_t ldy) {
        micro_q8_0<W, R, T>(w, ws, a, as, len, y, ldy);
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

template <template <class, int, int> class M, class W>
void gemm_tiles(const uint8_t* w, int64_t ws, int64_t n_rows, const uint8_t* a, int64_t as, int64_t n_tok, float* y,
                int64_t ldy, int64_t len) {
    int64_t t = 0;
    for (; t + 2 <= n_tok; t += 2) rows<M, W, 4, 2>(w, ws, n_rows, a + t * as, as, len, y + t * ldy, ldy);
    if (t < n_tok) rows<M, W, 4, 1>(w, ws, n_rows, a + t * as, as, len, y + t * ldy, ldy);
}

template <class W>
void gemm_q8_0(const uint8_t* LE_RESTRICT w, int64_t ws, int64_t n_rows, const uint8_t* LE_RESTRICT act, int64_t as,
               int64_t n_tok, float* LE_RESTRICT y, int64_t ldy, int64_t n_in) {
    check_blocks(n_in, QK8_0, "gemm_q8_0_neon");
    gemm_tiles<MicroQ8, W>(w, ws, n_rows, act, as, n_tok, y, ldy, n_in / QK8_0);
}

template <class W>
void gemm_k(const uint8_t* LE_RESTRICT w, int64_t ws, int64_t n_rows, const uint8_t* LE_RESTRICT act, int64_t as,
            int64_t n_tok, float* LE_RESTRICT y, int64_t ldy, int64_t n_in) {
    check_blocks(n_in, QK_K, "gemm_k_neon");
    gemm_tiles<MicroK, W>(w, ws, n_rows, act, as, n_tok, y, ldy, n_in / QK_K);
}

template <class W>
void gemm_f(const uint8_t* LE_RESTRICT w, int64_t ws, int64_t n_rows, const uint8_t* LE_RESTRICT act, int64_t as,
            int64_t n_tok, float* LE_RESTRICT y, int64_t ldy, int64_t n_in) {
    gemm_tiles<MicroF, W>(w, ws, n_rows, act, as, n_tok, y, ldy, n_in);
}

int64_t act_bytes_q8_0(int64_t n_in) { return row_size(GGMLType::Q8_0, n_in); }
int64_t act_bytes_q8_K(int64_t n_in) { return row_size(GGMLType::Q8_K, n_in); }
int64_t act_bytes_f32(int64_t n_in) { return n_in * int64_t(sizeof(float)); }
void pack_q8_0(const float* LE_RESTRICT x, uint8_t* LE_RESTRICT act, int64_t n) {
    quantize_q8_0(x, reinterpret_cast<block_q8_0*>(act), n);
}
void pack_q8_K(const float* LE_RESTRICT x, uint8_t* LE_RESTRICT act, int64_t n) {
    quantize_q8_K(x, reinterpret_cast<block_q8_K*>(act), n);
}

}  // namespace

// quants.h's entry points (quants_impl.h): a one-row, one-token tile of the kernels above.
void quantize_row_q8_0_neon(const float* LE_RESTRICT x, block_q8_0* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK8_0, "quantize_row_q8_0_neon");
    quantize_q8_0(x, y, n);
}
void quantize_row_q8_K_neon(const float* LE_RESTRICT x, block_q8_K* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK_K, "quantize_row_q8_K_neon");
    quantize_q8_K(x, y, n);
}

#define LE_NEON_VEC_DOT(name, WT, AT, micro, W, block)                                                   \
    float name(const WT* LE_RESTRICT w, const AT* LE_RESTRICT a, int64_t n) {                            \
        check_blocks(n, block, #name);                                                                   \
        float y;                                                                                         \
        micro<W, 1, 1>(reinterpret_cast<const uint8_t*>(w), 0, reinterpret_cast<const uint8_t*>(a), 0, \
                       n / (block), &y, 0);                                                              \
        return y;                                                                                        \
    }
LE_NEON_VEC_DOT(vec_dot_q4_0_q8_0_neon, block_q4_0, block_q8_0, micro_q8_0, Q4_0Weights, QK8_0)
LE_NEON_VEC_DOT(vec_dot_q8_0_q8_0_neon, block_q8_0, block_q8_0, micro_q8_0, Q8_0Weights, QK8_0)
LE_NEON_VEC_DOT(vec_dot_q4_K_q8_K_neon, block_q4_K, block_q8_K, micro_k, Q4_KWeights, QK_K)
LE_NEON_VEC_DOT(vec_dot_q5_K_q8_K_neon, block_q5_K, block_q8_K, micro_k, Q5_KWeights, QK_K)
LE_NEON_VEC_DOT(vec_dot_q6_K_q8_K_neon, block_q6_K, block_q8_K, micro_k, Q6_KWeights, QK_K)
#undef LE_NEON_VEC_DOT

void fill_gemm_neon(GemmKernels* table) {
    if (!cpu_has_neon_dotprod()) return;
    table[int(GGMLType::Q4_0)] = {"neon", &act_bytes_q8_0, &pack_q8_0, &gemm_q8_0<Q4_0Weights>};
    table[int(GGMLType::Q8_0)] = {"neon", &act_bytes_q8_0, &pack_q8_0, &gemm_q8_0<Q8_0Weights>};
    table[int(GGMLType::Q4_K)] = {"neon", &act_bytes_q8_K, &pack_q8_K, &gemm_k<Q4_KWeights>};
    table[int(GGMLType::Q5_K)] = {"neon", &act_bytes_q8_K, &pack_q8_K, &gemm_k<Q5_KWeights>};
    table[int(GGMLType::Q6_K)] = {"neon", &act_bytes_q8_K, &pack_q8_K, &gemm_k<Q6_KWeights>};
    table[int(GGMLType::F32)] = {"neon", &act_bytes_f32, nullptr, &gemm_f<F32Weights>};
    table[int(GGMLType::F16)] = {"neon", &act_bytes_f32, nullptr, &gemm_f<F16Weights>};
    table[int(GGMLType::BF16)] = {"neon", &act_bytes_f32, nullptr, &gemm_f<BF16Weights>};
}

}  // namespace le

#else  // not AArch64

namespace le {
void fill_gemm_neon(GemmKernels*) {}
}  // namespace le

#endif
