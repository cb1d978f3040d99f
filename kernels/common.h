// Shared definitions: GGML type ids, on-disk block layouts (pinned with static_assert), fp16/bf16 helpers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__GNUC__) || defined(__clang__)
#define LE_RESTRICT __restrict__
#else
#define LE_RESTRICT
#endif

namespace le {

// Values as stored in GGUF tensor infos (ggml.h `enum ggml_type`).
enum class GGMLType : int32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q8_0 = 8,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
};

constexpr int QK4_0 = 32;
constexpr int QK8_0 = 32;
constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

using fp16_t = uint16_t;
using bf16_t = uint16_t;

struct block_q4_0 {
    fp16_t d;                // scale
    uint8_t qs[QK4_0 / 2];   // nibbles: low = values 0..15, high = values 16..31
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 must match ggml's on-disk layout");

struct block_q8_0 {
    fp16_t d;
    int8_t qs[QK8_0];
};
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must match ggml's on-disk layout");

struct block_q4_K {
    fp16_t d;                      // super-block scale for the quantized scales
    fp16_t dmin;                   // super-block scale for the quantized mins
    uint8_t scales[K_SCALE_SIZE];  // 8 scales + 8 mins, 6 bits each
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q4_K) == 144, "block_q4_K must match ggml's on-disk layout");

struct block_q5_K {
    fp16_t d;
    fp16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];  // 5th bit of each value
    uint8_t qs[QK_K / 2];  // low 4 bits
};
static_assert(sizeof(block_q5_K) == 176, "block_q5_K must match ggml's on-disk layout");

struct block_q6_K {
    uint8_t ql[QK_K / 2];      // low 4 bits
    uint8_t qh[QK_K / 4];      // high 2 bits
    int8_t scales[QK_K / 16];  // 8-bit scales, one per 16 values
    fp16_t d;
};
static_assert(sizeof(block_q6_K) == 210, "block_q6_K must match ggml's on-disk layout");

// Activations for K-quant dot products (not an on-disk type, but ggml's layout for parity).
struct block_q8_K {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];  // sums of groups of 16 qs
};
static_assert(sizeof(block_q8_K) == 292, "block_q8_K must match ggml's layout");

inline float fp32_from_bits(uint32_t w) { float f; std::memcpy(&f, &w, 4); return f; }
inline uint32_t fp32_to_bits(float f) { uint32_t w; std::memcpy(&w, &f, 4); return w; }

// IEEE half <-> float, exact for every half value; float -> half rounds to nearest even (as F16C does).
float fp16_to_fp32(fp16_t h);
fp16_t fp32_to_fp16(float f);

inline float bf16_to_fp32(bf16_t h) { return fp32_from_bits(uint32_t(h) << 16); }
// Round to nearest even; NaN stays NaN (quiet), as ggml's GGML_FP32_TO_BF16.
inline bf16_t fp32_to_bf16(float f) {
    uint32_t u = fp32_to_bits(f);
    if ((u & 0x7fffffff) > 0x7f800000) return bf16_t((u >> 16) | 64);
    return bf16_t((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

// Values per block and bytes per block of a weight type; throws std::invalid_argument when unsupported.
int64_t block_size(GGMLType t);
int64_t type_size(GGMLType t);
inline int64_t row_size(GGMLType t, int64_t n) { return n / block_size(t) * type_size(t); }
const char* type_name(GGMLType t);

}  // namespace le
