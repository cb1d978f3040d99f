// Quantization formats: quantize / dequantize rows, and the dot products the matmul uses.
//
// Contract with ops (matmul): for a weight row of type W, activations are first converted once per token
// with quantize_act_row(W, ...) into act_type(W) (Q8_0 for Q4_0/Q8_0, Q8_K for K-quants, F32 for
// F32/F16/BF16), then vec_dot(W, w_row, act_row, n) gives sum_i w[i] * x[i]. Every function has a _ref
// twin in portable C++; dispatch picks the variant chosen once at load (see isa.h).
#pragma once

#include "common.h"

namespace le {

// n must be a multiple of block_size(t) for all functions below (callers check at the boundary; the kernels
// check again on entry and throw std::invalid_argument). Unsupported types throw std::invalid_argument.
// Activation rows must come from quantize_act_row: SIMD dot products rely on its code range.
void quantize_row(GGMLType t, const float* LE_RESTRICT x, void* LE_RESTRICT y, int64_t n);
void dequantize_row(GGMLType t, const void* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n);

GGMLType act_type(GGMLType weight_type);
void quantize_act_row(GGMLType weight_type, const float* LE_RESTRICT x, void* LE_RESTRICT y, int64_t n);
float vec_dot(GGMLType weight_type, const void* LE_RESTRICT w_row, const void* LE_RESTRICT act_row, int64_t n);

// The kernel vec_dot(weight_type, ...) runs, for callers that hoist the lookup out of their row loop. Same
// contract as vec_dot; n must be a multiple of block_size(weight_type) (the kernel checks and throws).
using VecDotFn = float (*)(const void* LE_RESTRICT w_row, const void* LE_RESTRICT act_row, int64_t n);
VecDotFn vec_dot_fn(GGMLType weight_type);

}  // namespace le
