// Portable reference kernels: the definition of every format we read and write.
//
// Bit-exactness: quantize Q8_0/Q4_0 == gguf-py's gguf.quants.quantize; quantize Q4_K/Q5_K/Q6_K/Q8_K ==
// llama.cpp's quantize_row_*_ref (same algorithms, same float operation order); dequantize == gguf-py's
// gguf.quants.dequantize for every type; vec_dot == llama.cpp's *_generic dot products (same integer math,
// same float accumulation order). Float contraction into FMA is switched off below: it would change the
// rounding of a*b+c on targets that have FMA (AArch64, or x86 with -march flags) and break those guarantees.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cmath>
#include <cstring>

#include "quants_impl.h"

namespace le {

namespace {

// float -> int32 the way x86's cvttss2si converts (and so numpy's float->int casts on x86): truncate toward
// zero; NaN and out-of-range values give INT32_MIN. Defined for every input, unlike a C++ cast.
inline int32_t trunc_to_i32(float v) {
    if (!(v > -2147483904.0f && v < 2147483648.0f)) return INT32_MIN;
    return int32_t(v);
}

// roundf (half away from zero) followed by trunc_to_i32, without a libm call: v - trunc(v) is exact.
inline int32_t round_half_away_to_i32(float v) {
    const int32_t t = trunc_to_i32(v);
    if (t == INT32_MIN) return t;  // NaN, infinity or out of range: as trunc_to_i32(roundf(v))
    const float frac = v - float(t);
    return t + int32_t(frac >= 0.5f) - int32_t(frac <= -0.5f);
}

// Round to nearest, ties to even, through the float adder (llama.cpp's nearest_int): exact for |v| <= 2^22,
// which the callers guarantee for finite input; any other input gives a defined, meaningless value.
inline int nearest_int(float v) {
    const float shifted = v + 12582912.0f;  // 1.5 * 2^23: the integer part lands in the low mantissa bits
    return int(fp32_to_bits(shifted) & 0x007fffffu) - 0x00400000;
}

constexpr float kGroupMaxEps = 1e-15f;  // llama.cpp GROUP_MAX_EPS: groups below this are treated as all-zero

// Q4_0 code of v = x / d: trunc(v + 8.5) clipped to 15, through a uint8 as gguf-py does.
inline uint8_t q4_0_code(float v) {
    const uint8_t c = uint8_t(trunc_to_i32(v + 8.5f));
    return c < 15 ? c : 15;
}

// Unpack the 6-bit scale and min of sub-block j (0..7) from a K-quant's 12 scale bytes.
inline void get_scale_min_k4(int j, const uint8_t* LE_RESTRICT q, uint8_t& sc, uint8_t& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// Pack 8 scales and 8 mins (each 0..63) into 12 bytes: the inverse of get_scale_min_k4.
inline void pack_scale_min_k4(const uint8_t* LE_RESTRICT ls, const uint8_t* LE_RESTRICT lm,
                              uint8_t* LE_RESTRICT q) {
    for (int j = 0; j < 4; ++j) {
        q[j] = ls[j];
        q[j + 4] = lm[j];
    }
    for (int j = 4; j < 8; ++j) {
        q[j + 4] = uint8_t((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
        q[j - 4] |= uint8_t((ls[j] >> 4) << 6);
        q[j] |= uint8_t((lm[j] >> 4) << 6);
    }
}

// Unpack all 8 scales and mins at once (the dot products' form of get_scale_min_k4).
inline void unpack_scales_mins_k4(const uint8_t* LE_RESTRICT q, uint8_t* LE_RESTRICT sc, uint8_t* LE_RESTRICT m) {
    for (int j = 0; j < 8; ++j) get_scale_min_k4(j, q, sc[j], m[j]);
}

// llama.cpp make_qkx2_quants: fit x[i] ~= scale * L[i] - the_min with L in [0, nmax] and the_min >= 0,
// minimising sum w[i] * err^2 (or |err| with use_mad). Tries inverse scales (nmax + rmin + rdelta*k) / range
// for k = 0..nstep and solves the weighted least squares for scale and min at each; returns the scale.
float make_qkx2_quants(int n, int nmax, const float* LE_RESTRICT x, const float* LE_RESTRICT w,
                       uint8_t* LE_RESTRICT L, float* LE_RESTRICT the_min, uint8_t* LE_RESTRICT Laux,
                       float rmin, float rdelta, int nstep, bool use_mad) {
    float min = x[0];
    float max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.0f;
    }
    float iscale = float(nmax) / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = uint8_t(std::max(0, std::min(nmax, l)));
        float diff = scale * float(L[i]) + min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        best_error += w[i] * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * float(is) + float(nmax)) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * (x[i] - min));
            l = std::max(0, std::min(nmax, l));
            Laux[i] = uint8_t(l);
            const float fl = float(l);
            sum_l += w[i] * fl;
            sum_l2 += w[i] * fl * fl;
            sum_xl += w[i] * fl * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * float(Laux[i]) + this_min - x[i];
                diff = use_mad ? std::fabs(diff) : diff * diff;
                cur_error += w[i] * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

// llama.cpp make_qx_quants with rmse_type = 1 and no importance weights: symmetric codes L[i] - nmax in
// [-nmax, nmax - 1], weights x^2; tries 19 inverse scales around -nmax/max and keeps the best weighted fit.
float make_qx_quants_rmse1(int n, int nmax, const float* LE_RESTRICT x, int8_t* LE_RESTRICT L) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = std::fabs(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < kGroupMaxEps) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.0f;
    }
    float iscale = float(-nmax) / max;
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = std::max(-nmax, std::min(nmax - 1, l));
        L[i] = int8_t(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * float(l);
        suml2 += w * float(l) * float(l);
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(float(nmax) + 0.1f * float(is)) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = std::max(-nmax, std::min(nmax - 1, l));
            const float w = x[i] * x[i];
            sumlx += w * x[i] * float(l);
            suml2 += w * float(l) * float(l);
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                const int l = nearest_int(iscale * x[i]);
                L[i] = int8_t(nmax + std::max(-nmax, std::min(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

// Scales and mins of the 8 sub-blocks of a Q4_K / Q5_K super-block (llama.cpp quantize_row_q{4,5}_K_ref):
// fit each sub-block, quantize scales and mins to 6 bits against the largest, then re-derive every code from
// the rounded scales so the stored codes match what dequantization will see.
template <int NMAX>
void quantize_k_superblock(const float* LE_RESTRICT x, float rmin, float rdelta, int nstep, fp16_t& d_out,
                           fp16_t& dmin_out, uint8_t* LE_RESTRICT scales_out, uint8_t* LE_RESTRICT L) {
    uint8_t Laux[32];
    float weights[32];
    float mins[QK_K / 32];
    float scales[QK_K / 32];
    float max_scale = 0;  // scales and mins are >= 0 once the min is subtracted
    float max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
        const float* xs = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
        const float av_x = std::sqrt(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xs[l]);
        scales[j] = make_qkx2_quants(32, NMAX, xs, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep, false);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t ls[QK_K / 32];
    uint8_t lm[QK_K / 32];
    for (int j = 0; j < QK_K / 32; ++j) {
        // Through uint8 first, as llama.cpp does: a negative fit scale wraps and then clamps to 63.
        ls[j] = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[j])));
        lm[j] = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[j])));
    }
    pack_scale_min_k4(ls, lm, scales_out);
    d_out = fp32_to_fp16(max_scale / 63.f);
    dmin_out = fp32_to_fp16(max_min / 63.f);

    const float d_super = fp16_to_fp32(d_out);
    const float dmin_super = fp16_to_fp32(dmin_out);
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t sc, m;
        get_scale_min_k4(j, scales_out, sc, m);
        const float d = d_super * float(sc);
        if (d == 0.0f) continue;  // keep the fit's codes: the dequantized values are -dmin*m either way
        const float dm = dmin_super * float(m);
        for (int ii = 0; ii < 32; ++ii) {
            const int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = uint8_t(std::max(0, std::min(NMAX, l)));
        }
    }
}

}  // namespace

// ---- quantize -------------------------------------------------------------------------------------------

void quantize_row_f32_ref(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    check_blocks(n, 1, "quantize_row_f32_ref");
    if (n > 0) std::memcpy(y, x, size_t(n) * sizeof(float));
}

void quantize_row_f16_ref(const float* LE_RESTRICT x, fp16_t* LE_RESTRICT y, int64_t n) {
    check_blocks(n, 1, "quantize_row_f16_ref");
    for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

void quantize_row_bf16_ref(const float* LE_RESTRICT x, bf16_t* LE_RESTRICT y, int64_t n) {
    check_blocks(n, 1, "quantize_row_bf16_ref");
    for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_bf16(x[i]);
}

void quantize_row_q4_0_ref(const float* LE_RESTRICT x, block_q4_0* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK4_0, "quantize_row_q4_0_ref");
    const int64_t nb = n / QK4_0;
    for (int64_t i = 0; i < nb; ++i, x += QK4_0) {
        // max: the signed value of largest magnitude, the first on ties. Starting from x[0] (not 0) gives
        // gguf-py's sign of zero for an all-zero block (llama.cpp always stores -0 there).
        float amax = 0.0f;
        float max = x[0];
        for (int j = 0; j < QK4_0; ++j) {
            const float a = std::fabs(x[j]);
            if (amax < a) {
                amax = a;
                max = x[j];
            }
        }
        const float d = max / -8.0f;  // max maps to code 0 (= -8): the asymmetric range [-8, 7] is used fully
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            const uint8_t lo = q4_0_code(x[j] * id);
            const uint8_t hi = q4_0_code(x[j + QK4_0 / 2] * id);
            y[i].qs[j] = uint8_t(lo | (hi << 4));
        }
    }
}

void quantize_row_q8_0_ref(const float* LE_RESTRICT x, block_q8_0* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK8_0, "quantize_row_q8_0_ref");
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; ++i, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; ++j) {
            // roundf: half away from zero; the int8 comes from the low byte, as numpy's cast on x86 gives.
            y[i].qs[j] = int8_t(uint8_t(round_half_away_to_i32(x[j] * id)));
        }
    }
}

void quantize_row_q4_K_ref(const float* LE_RESTRICT x, block_q4_K* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK_K, "quantize_row_q4_K_ref");
    const int64_t nb = n / QK_K;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; ++i, x += QK_K) {
        quantize_k_superblock<15>(x, -1.0f, 0.1f, 20, y[i].d, y[i].dmin, y[i].scales, L);
        // qs[32*c + l]: low nibble = value 64*c + l, high nibble = value 64*c + 32 + l
        for (int c = 0; c < QK_K / 64; ++c) {
            for (int l = 0; l < 32; ++l) {
                y[i].qs[32 * c + l] = uint8_t(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
            }
        }
    }
}

void quantize_row_q5_K_ref(const float* LE_RESTRICT x, block_q5_K* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK_K, "quantize_row_q5_K_ref");
    const int64_t nb = n / QK_K;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; ++i, x += QK_K) {
        quantize_k_superblock<31>(x, -0.5f, 0.1f, 15, y[i].d, y[i].dmin, y[i].scales, L);
        // Low 4 bits as in Q4_K; bit 4 of value 32*k + l goes to bit k of qh[l].
        std::memset(y[i].qh, 0, sizeof(y[i].qh));
        for (int c = 0; c < QK_K / 64; ++c) {
            for (int l = 0; l < 32; ++l) {
                const int lo = L[64 * c + l];
                const int hi = L[64 * c + 32 + l];
                y[i].qs[32 * c + l] = uint8_t((lo & 0xF) | ((hi & 0xF) << 4));
                y[i].qh[l] |= uint8_t(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
            }
        }
    }
}

void quantize_row_q6_K_ref(const float* LE_RESTRICT x, block_q6_K* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK_K, "quantize_row_q6_K_ref");
    const int64_t nb = n / QK_K;
    int8_t L[QK_K];  // codes 0..63 (value + 32)
    float scales[QK_K / 16];
    for (int64_t i = 0; i < nb; ++i, x += QK_K) {
        float max_scale = 0;  // signed scale of largest magnitude
        float max_abs_scale = 0;
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            scales[ib] = make_qx_quants_rmse1(16, 32, x + 16 * ib, L + 16 * ib);
            const float abs_scale = std::fabs(scales[ib]);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < kGroupMaxEps) {
            std::memset(&y[i], 0, sizeof(block_q6_K));
            continue;
        }
        const float iscale = -128.f / max_scale;
        y[i].d = fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            y[i].scales[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));
        }
        const float d_super = fp16_to_fp32(y[i].d);
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = d_super * float(y[i].scales[j]);
            if (d == 0.0f) continue;
            for (int ii = 0; ii < 16; ++ii) {
                const int l = nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = int8_t(std::max(-32, std::min(31, l)) + 32);
            }
        }
        // Per 128 values: ql[l] = codes l | l+64 (low nibbles), ql[l+32] = codes l+32 | l+96; qh[l] holds
        // the high 2 bits of codes l, l+32, l+64, l+96.
        uint8_t* LE_RESTRICT ql = y[i].ql;
        uint8_t* LE_RESTRICT qh = y[i].qh;
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; ++l) {
                const int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
                ql[l] = uint8_t((q1 & 0xF) | ((q3 & 0xF) << 4));
                ql[l + 32] = uint8_t((q2 & 0xF) | ((q4 & 0xF) << 4));
                qh[l] = uint8_t((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
        }
    }
}

void quantize_row_q8_K_ref(const float* LE_RESTRICT x, block_q8_K* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK_K, "quantize_row_q8_K_ref");
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; ++i, x += QK_K) {
        float max = 0;
        float amax = 0;
        for (int j = 0; j < QK_K; ++j) {
            const float ax = std::fabs(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {  // llama.cpp leaves bsums unset here; zero them so the block is fully defined
            std::memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        // -127 (not -128) keeps every code in [-127, 127], as llama.cpp does for its AVX kernels' sake.
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; ++j) y[i].qs[j] = int8_t(std::min(127, nearest_int(iscale * x[j])));
        for (int j = 0; j < QK_K / 16; ++j) {
            int sum = 0;
            for (int ii = 0; ii < 16; ++ii) sum += y[i].qs[16 * j + ii];
            y[i].bsums[j] = int16_t(sum);
        }
        y[i].d = 1 / iscale;
    }
}

// ---- dequantize -----------------------------------------------------------------------------------------

void dequantize_row_f32_ref(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    check_blocks(n, 1, "dequantize_row_f32_ref");
    if (n > 0) std::memcpy(y, x, size_t(n) * sizeof(float));
}

void dequantize_row_f16_ref(const fp16_t* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    check_blocks(n, 1, "dequantize_row_f16_ref");
    for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

void dequantize_row_bf16_ref(const bf16_t* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    check_blocks(n, 1, "dequantize_row_bf16_ref");
    for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(x[i]);
}

void dequantize_row_q4_0_ref(const block_q4_0* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK4_0, "dequantize_row_q4_0_ref");
    const int64_t nb = n / QK4_0;
    for (int64_t i = 0; i < nb; ++i, y += QK4_0) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            y[j] = float((x[i].qs[j] & 0x0F) - 8) * d;
            y[j + QK4_0 / 2] = float((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void dequantize_row_q8_0_ref(const block_q8_0* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK8_0, "dequantize_row_q8_0_ref");
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; ++i, y += QK8_0) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK8_0; ++j) y[j] = float(x[i].qs[j]) * d;
    }
}

void dequantize_row_q4_K_ref(const block_q4_K* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK_K, "dequantize_row_q4_K_ref");
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        const float dmin = fp16_to_fp32(x[i].dmin);
        const uint8_t* LE_RESTRICT q = x[i].qs;
        for (int c = 0; c < QK_K / 64; ++c, q += 32) {  // 64 values: low nibbles then high nibbles
            uint8_t sc, m;
            get_scale_min_k4(2 * c, x[i].scales, sc, m);
            const float d1 = d * float(sc), m1 = dmin * float(m);
            get_scale_min_k4(2 * c + 1, x[i].scales, sc, m);
            const float d2 = d * float(sc), m2 = dmin * float(m);
            for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
        }
    }
}

void dequantize_row_q5_K_ref(const block_q5_K* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK_K, "dequantize_row_q5_K_ref");
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        const float dmin = fp16_to_fp32(x[i].dmin);
        const uint8_t* LE_RESTRICT ql = x[i].qs;
        const uint8_t* LE_RESTRICT qh = x[i].qh;
        for (int c = 0; c < QK_K / 64; ++c, ql += 32) {
            uint8_t sc, m;
            get_scale_min_k4(2 * c, x[i].scales, sc, m);
            const float d1 = d * float(sc), m1 = dmin * float(m);
            get_scale_min_k4(2 * c + 1, x[i].scales, sc, m);
            const float d2 = d * float(sc), m2 = dmin * float(m);
            const uint8_t u1 = uint8_t(1u << (2 * c)), u2 = uint8_t(2u << (2 * c));
            for (int l = 0; l < 32; ++l) *y++ = d1 * float((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * float((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
        }
    }
}

void dequantize_row_q6_K_ref(const block_q6_K* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK_K, "dequantize_row_q6_K_ref");
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        const uint8_t* LE_RESTRICT ql = x[i].ql;
        const uint8_t* LE_RESTRICT qh = x[i].qh;
        const int8_t* LE_RESTRICT sc = x[i].scales;
        for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * float(sc[is]) * float(q1);
                y[l + 32] = d * float(sc[is + 2]) * float(q2);
                y[l + 64] = d * float(sc[is + 4]) * float(q3);
                y[l + 96] = d * float(sc[is + 6]) * float(q4);
            }
        }
    }
}

void dequantize_row_q8_K_ref(const block_q8_K* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    check_blocks(n, QK_K, "dequantize_row_q8_K_ref");
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        for (int j = 0; j < QK_K; ++j) y[j] = x[i].d * float(x[i].qs[j]);
    }
}

// ---- dot products ---------------------------------------------------------------------------------------
// Float weights: products and sums in double, in index order (a product of two floats is exact in double).
// Quantized weights: exact integer sums per block, then float accumulation in llama.cpp's generic order.

float vec_dot_f32_f32_ref(const float* LE_RESTRICT w, const float* LE_RESTRICT a, int64_t n) {
    check_blocks(n, 1, "vec_dot_f32_f32_ref");
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += double(w[i]) * double(a[i]);
    return float(sum);
}

float vec_dot_f16_f32_ref(const fp16_t* LE_RESTRICT w, const float* LE_RESTRICT a, int64_t n) {
    check_blocks(n, 1, "vec_dot_f16_f32_ref");
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += double(fp16_to_fp32(w[i])) * double(a[i]);
    return float(sum);
}

float vec_dot_bf16_f32_ref(const bf16_t* LE_RESTRICT w, const float* LE_RESTRICT a, int64_t n) {
    check_blocks(n, 1, "vec_dot_bf16_f32_ref");
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += double(bf16_to_fp32(w[i])) * double(a[i]);
    return float(sum);
}

float vec_dot_q4_0_q8_0_ref(const block_q4_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a, int64_t n) {
    check_blocks(n, QK8_0, "vec_dot_q4_0_q8_0_ref");
    const int64_t nb = n / QK8_0;
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
        int sumi = 0;  // |sumi| <= 32 * 8 * 127
        for (int j = 0; j < QK4_0 / 2; ++j) {
            const int v0 = (w[ib].qs[j] & 0x0F) - 8;
            const int v1 = (w[ib].qs[j] >> 4) - 8;
            sumi += v0 * a[ib].qs[j] + v1 * a[ib].qs[j + QK4_0 / 2];
        }
        sumf += float(sumi) * fp16_to_fp32(w[ib].d) * fp16_to_fp32(a[ib].d);
    }
    return sumf;
}

float vec_dot_q8_0_q8_0_ref(const block_q8_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a, int64_t n) {
    check_blocks(n, QK8_0, "vec_dot_q8_0_q8_0_ref");
    const int64_t nb = n / QK8_0;
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
        int sumi = 0;  // |sumi| <= 32 * 127 * 127
        for (int j = 0; j < QK8_0; ++j) sumi += int(w[ib].qs[j]) * int(a[ib].qs[j]);
        sumf += float(sumi) * (fp16_to_fp32(w[ib].d) * fp16_to_fp32(a[ib].d));
    }
    return sumf;
}

namespace {

// Shared tail of the K-quant dot products, in llama.cpp's generic order: codes q[256] (already offset to
// their signed value), one integer scale per `group` values; lane l of 8 accumulates products at
// index = l (mod 8) in int32 (exact: at most 32 products of |scale*q*q8| <= 128*32*127 per lane), then each
// block adds d * lane into 8 float sums that are only combined at the end.
template <int GROUP, typename Scale>
inline void accumulate_k_lanes(const int8_t* LE_RESTRICT q, const Scale* LE_RESTRICT scales,
                               const int8_t* LE_RESTRICT q8, float d, float* LE_RESTRICT sums) {
    int32_t aux32[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < QK_K / GROUP; ++j) {
        const int32_t scale = scales[j];
        for (int g = 0; g < GROUP; g += 8) {
            for (int l = 0; l < 8; ++l) {
                aux32[l] += scale * (int32_t(q8[GROUP * j + g + l]) * int32_t(q[GROUP * j + g + l]));
            }
        }
    }
    for (int l = 0; l < 8; ++l) sums[l] += d * float(aux32[l]);
}

}  // namespace

float vec_dot_q4_K_q8_K_ref(const block_q4_K* LE_RESTRICT w, const block_q8_K* LE_RESTRICT a, int64_t n) {
    check_blocks(n, QK_K, "vec_dot_q4_K_q8_K_ref");
    const int64_t nb = n / QK_K;
    float sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float sumf = 0;
    int8_t q[QK_K];
    for (int64_t i = 0; i < nb; ++i) {
        for (int c = 0; c < QK_K / 64; ++c) {
            for (int l = 0; l < 32; ++l) {
                q[64 * c + l] = int8_t(w[i].qs[32 * c + l] & 0xF);
                q[64 * c + 32 + l] = int8_t(w[i].qs[32 * c + l] >> 4);
            }
        }
        uint8_t sc[8], m[8];
        unpack_scales_mins_k4(w[i].scales, sc, m);
        int summ = 0;  // sum over sub-blocks of min * (sum of activation codes); bsums cover 16 values each
        for (int j = 0; j < QK_K / 16; ++j) summ += int(a[i].bsums[j]) * int(m[j / 2]);
        accumulate_k_lanes<32>(q, sc, a[i].qs, fp16_to_fp32(w[i].d) * a[i].d, sums);
        const float dmin = fp16_to_fp32(w[i].dmin) * a[i].d;
        sumf -= dmin * float(summ);
    }
    for (int l = 0; l < 8; ++l) sumf += sums[l];
    return sumf;
}

float vec_dot_q5_K_q8_K_ref(const block_q5_K* LE_RESTRICT w, const block_q8_K* LE_RESTRICT a, int64_t n) {
    check_blocks(n, QK_K, "vec_dot_q5_K_q8_K_ref");
    const int64_t nb = n / QK_K;
    float sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float sumf = 0;
    int8_t q[QK_K];
    for (int64_t i = 0; i < nb; ++i) {
        for (int c = 0; c < QK_K / 64; ++c) {
            const uint8_t u1 = uint8_t(1u << (2 * c)), u2 = uint8_t(2u << (2 * c));
            for (int l = 0; l < 32; ++l) {
                const uint8_t ql = w[i].qs[32 * c + l], qh = w[i].qh[l];
                q[64 * c + l] = int8_t((ql & 0xF) + ((qh & u1) ? 16 : 0));
                q[64 * c + 32 + l] = int8_t((ql >> 4) + ((qh & u2) ? 16 : 0));
            }
        }
        uint8_t sc[8], m[8];
        unpack_scales_mins_k4(w[i].scales, sc, m);
        int summ = 0;
        for (int j = 0; j < QK_K / 16; ++j) summ += int(a[i].bsums[j]) * int(m[j / 2]);
        accumulate_k_lanes<32>(q, sc, a[i].qs, fp16_to_fp32(w[i].d) * a[i].d, sums);
        const float dmin = fp16_to_fp32(w[i].dmin) * a[i].d;
        sumf -= dmin * float(summ);
    }
    for (int l = 0; l < 8; ++l) sumf += sums[l];
    return sumf;
}

float vec_dot_q6_K_q8_K_ref(const block_q6_K* LE_RESTRICT w, const block_q8_K* LE_RESTRICT a, int64_t n) {
    check_blocks(n, QK_K, "vec_dot_q6_K_q8_K_ref");
    const int64_t nb = n / QK_K;
    float sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int8_t q[QK_K];
    for (int64_t i = 0; i < nb; ++i) {
        const uint8_t* LE_RESTRICT ql = w[i].ql;
        const uint8_t* LE_RESTRICT qh = w[i].qh;
        for (int half = 0; half < 2; ++half, ql += 64, qh += 32) {
            int8_t* LE_RESTRICT o = q + 128 * half;
            for (int l = 0; l < 32; ++l) {
                o[l] = int8_t(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                o[l + 32] = int8_t(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[l + 64] = int8_t(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[l + 96] = int8_t(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        accumulate_k_lanes<16>(q, w[i].scales, a[i].qs, fp16_to_fp32(w[i].d) * a[i].d, sums);
    }
    float sumf = 0;
    for (int l = 0; l < 8; ++l) sumf += sums[l];
    return sumf;
}

}  // namespace le
