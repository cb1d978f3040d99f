// IEEE half <-> float conversion in portable C++, and the per-type block sizes declared in common.h.
#include "common.h"

namespace le {

float fp16_to_fp32(fp16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return fp32_from_bits(sign | 0x7f800000u | (mant << 13));  // inf, NaN keeps its payload
    if (exp != 0) return fp32_from_bits(sign | ((exp + (127 - 15)) << 23) | (mant << 13));
    // Zero or subnormal: mant * 2^-24 is exact in float (mant < 2^10).
    const float mag = float(mant) * fp32_from_bits(0x33800000u);  // 0x33800000 = 2^-24
    return fp32_from_bits(sign | fp32_to_bits(mag));
}

fp16_t fp32_to_fp16(float f) {
    const uint32_t bits = fp32_to_bits(f);
    const uint32_t sign = (bits >> 16) & 0x8000u;
    const uint32_t x = bits & 0x7fffffffu;
    // NaN stays NaN with the quiet bit set and the top payload bits kept, as vcvtps2ph does.
    if (x > 0x7f800000u) return fp16_t(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
    // 65520 = 65504 + half an ulp: the tie rounds to even, i.e. to infinity.
    if (x >= 0x477ff000u) return fp16_t(sign | 0x7c00u);
    if (x >= 0x38800000u) {  // >= 2^-14: a normal half; the rounding carry may bump the exponent, correctly
        const uint32_t rounded = (x + 0x0fffu + ((x >> 13) & 1u)) >> 13;
        return fp16_t(sign | (rounded - ((127u - 15u) << 10)));
    }
    if (x <= 0x33000000u) return fp16_t(sign);  // <= 2^-25: rounds to (signed) zero, the tie to even 0
    // Subnormal half: value / 2^-24 = m * 2^(e - 126) with the implicit bit restored; round half to even.
    const uint32_t e = x >> 23;
    const uint32_t m = (x & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) ++q;  // q == 0x400 encodes the smallest normal: still right
    return fp16_t(sign | q);
}

int64_t block_size(GGMLType t) {
    switch (t) {
        case GGMLType::F32:
        case GGMLType::F16:
        case GGMLType::BF16: return 1;
        case GGMLType::Q4_0: return QK4_0;
        case GGMLType::Q8_0: return QK8_0;
        case GGMLType::Q4_K:
        case GGMLType::Q5_K:
        case GGMLType::Q6_K:
        case GGMLType::Q8_K: return QK_K;
    }
    throw std::invalid_argument("unsupported GGML type id " + std::to_string(int(t)));
}

int64_t type_size(GGMLType t) {
    switch (t) {
        case GGMLType::F32: return 4;
        case GGMLType::F16: return 2;
        case GGMLType::BF16: return 2;
        case GGMLType::Q4_0: return sizeof(block_q4_0);
        case GGMLType::Q8_0: return sizeof(block_q8_0);
        case GGMLType::Q4_K: return sizeof(block_q4_K);
        case GGMLType::Q5_K: return sizeof(block_q5_K);
        case GGMLType::Q6_K: return sizeof(block_q6_K);
        case GGMLType::Q8_K: return sizeof(block_q8_K);
    }
    throw std::invalid_argument("unsupported GGML type id " + std::to_string(int(t)));
}

const char* type_name(GGMLType t) {
    switch (t) {
        case GGMLType::F32: return "F32";
        case GGMLType::F16: return "F16";
        case GGMLType::BF16: return "BF16";
        case GGMLType::Q4_0: return "Q4_0";
        case GGMLType::Q8_0: return "Q8_0";
        case GGMLType::Q4_K: return "Q4_K";
        case GGMLType::Q5_K: return "Q5_K";
        case GGMLType::Q6_K: return "Q6_K";
        case GGMLType::Q8_K: return "Q8_K";
    }
    throw std::invalid_argument("unsupported GGML type id " + std::to_string(int(t)));
}

}  // namespace le
