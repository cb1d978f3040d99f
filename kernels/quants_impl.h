// Internal to the quants kernels: every variant of every kernel, and the table the dispatch fills once.
//
// The _ref kernels are the portable definition of each format (bit-exact with gguf-py / llama.cpp's
// reference quantizers, see quants_ref.cpp); SIMD variants (quants_<isa>.cpp) must agree with them and fall
// back to them for anything they do not cover.
#pragma once

#include "common.h"
#include "isa.h"
#include "quants.h"

namespace le {

using QuantizeRowFn = void (*)(const float* LE_RESTRICT x, void* LE_RESTRICT y, int64_t n);
using DequantizeRowFn = void (*)(const void* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);

// What a weight type needs: its (de)quantizer, its activation format and the dot product against it.
struct TypeKernels {
    QuantizeRowFn quantize_row = nullptr;
    DequantizeRowFn dequantize_row = nullptr;
    GGMLType act_type = GGMLType::F32;
    QuantizeRowFn quantize_act_row = nullptr;
    VecDotFn vec_dot = nullptr;
};

// Kernels for weight type t under the active ISA; throws std::invalid_argument for types we do not run.
const TypeKernels& kernels_for(GGMLType t);
// The same for an explicit ISA (tests and benchmarks; the ISA must be supported).
TypeKernels kernels_for_isa(GGMLType t, ISA isa);

// x [n] -> y [n / QK blocks]; n must be a multiple of the block size (checked, std::invalid_argument).
void quantize_row_f32_ref(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
void quantize_row_f16_ref(const float* LE_RESTRICT x, fp16_t* LE_RESTRICT y, int64_t n);
void quantize_row_bf16_ref(const float* LE_RESTRICT x, bf16_t* LE_RESTRICT y, int64_t n);
void quantize_row_q4_0_ref(const float* LE_RESTRICT x, block_q4_0* LE_RESTRICT y, int64_t n);
void quantize_row_q8_0_ref(const float* LE_RESTRICT x, block_q8_0* LE_RESTRICT y, int64_t n);
void quantize_row_q4_K_ref(const float* LE_RESTRICT x, block_q4_K* LE_RESTRICT y, int64_t n);
void quantize_row_q5_K_ref(const float* LE_RESTRICT x, block_q5_K* LE_RESTRICT y, int64_t n);
void quantize_row_q6_K_ref(const float* LE_RESTRICT x, block_q6_K* LE_RESTRICT y, int64_t n);
void quantize_row_q8_K_ref(const float* LE_RESTRICT x, block_q8_K* LE_RESTRICT y, int64_t n);

// x [n / QK blocks] -> y [n]
void dequantize_row_f32_ref(const float* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
void dequantize_row_f16_ref(const fp16_t* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
void dequantize_row_bf16_ref(const bf16_t* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
void dequantize_row_q4_0_ref(const block_q4_0* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
void dequantize_row_q8_0_ref(const block_q8_0* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
void dequantize_row_q4_K_ref(const block_q4_K* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
void dequantize_row_q5_K_ref(const block_q5_K* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
void dequantize_row_q6_K_ref(const block_q6_K* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);
void dequantize_row_q8_K_ref(const block_q8_K* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);

// w [n] . a [n] -> scalar (weights in the first format, activations in the second)
float vec_dot_f32_f32_ref(const float* LE_RESTRICT w, const float* LE_RESTRICT a, int64_t n);
float vec_dot_f16_f32_ref(const fp16_t* LE_RESTRICT w, const float* LE_RESTRICT a, int64_t n);
float vec_dot_bf16_f32_ref(const bf16_t* LE_RESTRICT w, const float* LE_RESTRICT a, int64_t n);
float vec_dot_q4_0_q8_0_ref(const block_q4_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a, int64_t n);
float vec_dot_q8_0_q8_0_ref(const block_q8_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a, int64_t n);
float vec_dot_q4_K_q8_K_ref(const block_q4_K* LE_RESTRICT w, const block_q8_K* LE_RESTRICT a, int64_t n);
float vec_dot_q5_K_q8_K_ref(const block_q5_K* LE_RESTRICT w, const block_q8_K* LE_RESTRICT a, int64_t n);
float vec_dot_q6_K_q8_K_ref(const block_q6_K* LE_RESTRICT w, const block_q8_K* LE_RESTRICT a, int64_t n);

// x86 SIMD variants: built on any x86 GCC/Clang (per-function target attributes, no global -m flags) and
// only put in the kernel table when the CPU supports them.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LE_X86_SIMD 1
float vec_dot_q4_0_q8_0_avx2(const block_q4_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a, int64_t n);
float vec_dot_q8_0_q8_0_avx2(const block_q8_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a, int64_t n);
float vec_dot_q4_0_q8_0_avx512(const block_q4_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a, int64_t n);
float vec_dot_q8_0_q8_0_avx512(const block_q8_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a, int64_t n);
void quantize_row_q8_0_avx2(const float* LE_RESTRICT x, block_q8_0* LE_RESTRICT y, int64_t n);
void quantize_row_q8_K_avx2(const float* LE_RESTRICT x, block_q8_K* LE_RESTRICT y, int64_t n);
void quantize_row_q8_0_avx512(const float* LE_RESTRICT x, block_q8_0* LE_RESTRICT y, int64_t n);
void quantize_row_q8_K_avx512(const float* LE_RESTRICT x, block_q8_K* LE_RESTRICT y, int64_t n);
#else
#define LE_X86_SIMD 0
#endif

// AArch64 NEON variants (gemm_neon.cpp): armv8.2-a dot-product kernels, per-function target attributes, put
// in the table only when the CPU has the extension.
#if defined(__aarch64__)
void quantize_row_q8_0_neon(const float* LE_RESTRICT x, block_q8_0* LE_RESTRICT y, int64_t n);
void quantize_row_q8_K_neon(const float* LE_RESTRICT x, block_q8_K* LE_RESTRICT y, int64_t n);
float vec_dot_q4_0_q8_0_neon(const block_q4_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a, int64_t n);
float vec_dot_q8_0_q8_0_neon(const block_q8_0* LE_RESTRICT w, const block_q8_0* LE_RESTRICT a, int64_t n);
float vec_dot_q4_K_q8_K_neon(const block_q4_K* LE_RESTRICT w, const block_q8_K* LE_RESTRICT a, int64_t n);
float vec_dot_q5_K_q8_K_neon(const block_q5_K* LE_RESTRICT w, const block_q8_K* LE_RESTRICT a, int64_t n);
float vec_dot_q6_K_q8_K_neon(const block_q6_K* LE_RESTRICT w, const block_q8_K* LE_RESTRICT a, int64_t n);
#endif

// Throws std::invalid_argument unless n is a non-negative multiple of block (every kernel checks on entry).
inline void check_blocks(int64_t n, int64_t block, const char* kernel) {
    if (n < 0 || n % block != 0) {
        throw std::invalid_argument(std::string(kernel) + ": n = " + std::to_string(n) +
                                    " is not a non-negative multiple of the block size " + std::to_string(block));
    }
}

}  // namespace le
