// Public quantization entry points (quants.h): one table of kernels per weight type, filled once from the
// active ISA, so the hot path is an indexed function-pointer call and never an ISA test.
#include "quants.h"

#include <array>
#include <string>

#include "quants_impl.h"

namespace le {

namespace {

// Adapters from the typed _ref signatures to the table's void* signatures.
template <typename Out, void (*F)(const float* LE_RESTRICT, Out* LE_RESTRICT, int64_t)>
void quantize_as(const float* LE_RESTRICT x, void* LE_RESTRICT y, int64_t n) {
    F(x, static_cast<Out*>(y), n);
}
template <typename In, void (*F)(const In* LE_RESTRICT, float* LE_RESTRICT, int64_t)>
void dequantize_as(const void* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    F(static_cast<const In*>(x), y, n);
}
template <typename W, typename A, float (*F)(const W* LE_RESTRICT, const A* LE_RESTRICT, int64_t)>
float vec_dot_as(const void* LE_RESTRICT w, const void* LE_RESTRICT a, int64_t n) {
    return F(static_cast<const W*>(w), static_cast<const A*>(a), n);
}

constexpr int kTypeSlots = 31;  // GGML type ids we run are all below this (BF16 = 30)

using KernelTable = std::array<TypeKernels, kTypeSlots>;

KernelTable ref_table() {
    KernelTable t{};
    const auto q8_0_act = &quantize_as<block_q8_0, quantize_row_q8_0_ref>;
    const auto q8_K_act = &quantize_as<block_q8_K, quantize_row_q8_K_ref>;
    const auto f32_act = &quantize_as<float, quantize_row_f32_ref>;

    t[int(GGMLType::F32)] = {f32_act, &dequantize_as<float, dequantize_row_f32_ref>, GGMLType::F32, f32_act,
                             &vec_dot_as<float, float, vec_dot_f32_f32_ref>};
    t[int(GGMLType::F16)] = {&quantize_as<fp16_t, quantize_row_f16_ref>,
                             &dequantize_as<fp16_t, dequantize_row_f16_ref>, GGMLType::F32, f32_act,
                             &vec_dot_as<fp16_t, float, vec_dot_f16_f32_ref>};
    t[int(GGMLType::BF16)] = {&quantize_as<bf16_t, quantize_row_bf16_ref>,
                              &dequantize_as<bf16_t, dequantize_row_bf16_ref>, GGMLType::F32, f32_act,
                              &vec_dot_as<bf16_t, float, vec_dot_bf16_f32_ref>};
    t[int(GGMLType::Q4_0)] = {&quantize_as<block_q4_0, quantize_row_q4_0_ref>,
                              &dequantize_as<block_q4_0, dequantize_row_q4_0_ref>, GGMLType::Q8_0, q8_0_act,
                              &vec_dot_as<block_q4_0, block_q8_0, vec_dot_q4_0_q8_0_ref>};
    t[int(GGMLType::Q8_0)] = {q8_0_act, &dequantize_as<block_q8_0, dequantize_row_q8_0_ref>, GGMLType::Q8_0,
                              q8_0_act, &vec_dot_as<block_q8_0, block_q8_0, vec_dot_q8_0_q8_0_ref>};
    t[int(GGMLType::Q4_K)] = {&quantize_as<block_q4_K, quantize_row_q4_K_ref>,
                              &dequantize_as<block_q4_K, dequantize_row_q4_K_ref>, GGMLType::Q8_K, q8_K_act,
                              &vec_dot_as<block_q4_K, block_q8_K, vec_dot_q4_K_q8_K_ref>};
    t[int(GGMLType::Q5_K)] = {&quantize_as<block_q5_K, quantize_row_q5_K_ref>,
                              &dequantize_as<block_q5_K, dequantize_row_q5_K_ref>, GGMLType::Q8_K, q8_K_act,
                              &vec_dot_as<block_q5_K, block_q8_K, vec_dot_q5_K_q8_K_ref>};
    t[int(GGMLType::Q6_K)] = {&quantize_as<block_q6_K, quantize_row_q6_K_ref>,
                              &dequantize_as<block_q6_K, dequantize_row_q6_K_ref>, GGMLType::Q8_K, q8_K_act,
                              &vec_dot_as<block_q6_K, block_q8_K, vec_dot_q6_K_q8_K_ref>};
    // Q8_K is an activation format only: quantize/dequantize for tests, no weight dot product.
    t[int(GGMLType::Q8_K)] = {q8_K_act, &dequantize_as<block_q8_K, dequantize_row_q8_K_ref>, GGMLType::Q8_K,
                              q8_K_act, nullptr};
    return t;
}

// SIMD variants replace single entries of the reference table; anything without one stays _ref.
KernelTable table_for(ISA isa) {
    KernelTable t = ref_table();
#if LE_X86_SIMD
    if (isa == ISA::AVX2 || isa == ISA::AVX512) {
        t[int(GGMLType::Q4_0)].vec_dot = &vec_dot_as<block_q4_0, block_q8_0, vec_dot_q4_0_q8_0_avx2>;
        t[int(GGMLType::Q8_0)].vec_dot = &vec_dot_as<block_q8_0, block_q8_0, vec_dot_q8_0_q8_0_avx2>;
    }
    if (isa == ISA::AVX512) {
        t[int(GGMLType::Q4_0)].vec_dot = &vec_dot_as<block_q4_0, block_q8_0, vec_dot_q4_0_q8_0_avx512>;
        t[int(GGMLType::Q8_0)].vec_dot = &vec_dot_as<block_q8_0, block_q8_0, vec_dot_q8_0_q8_0_avx512>;
    }
    if (isa == ISA::AVX2 || isa == ISA::AVX512) {
        const bool w512 = isa == ISA::AVX512;
        const QuantizeRowFn q8_0 = w512 ? &quantize_as<block_q8_0, quantize_row_q8_0_avx512>
                                        : &quantize_as<block_q8_0, quantize_row_q8_0_avx2>;
        const QuantizeRowFn q8_K = w512 ? &quantize_as<block_q8_K, quantize_row_q8_K_avx512>
                                        : &quantize_as<block_q8_K, quantize_row_q8_K_avx2>;
        t[int(GGMLType::Q4_0)].quantize_act_row = q8_0;
        t[int(GGMLType::Q8_0)].quantize_act_row = q8_0;
        t[int(GGMLType::Q8_0)].quantize_row = q8_0;  // Q8_0 weights quantize exactly as activations do
        for (GGMLType k : {GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K}) t[int(k)].quantize_act_row = q8_K;
        t[int(GGMLType::Q8_K)].quantize_row = q8_K;
        t[int(GGMLType::Q8_K)].quantize_act_row = q8_K;
    }
#endif
#if defined(__aarch64__)
    if (isa == ISA::NEON && cpu_has_neon_dotprod()) {
        const QuantizeRowFn q8_0 = &quantize_as<block_q8_0, quantize_row_q8_0_neon>;
        const QuantizeRowFn q8_K = &quantize_as<block_q8_K, quantize_row_q8_K_neon>;
        t[int(GGMLType::Q4_0)].quantize_act_row = q8_0;
        t[int(GGMLType::Q8_0)].quantize_act_row = q8_0;
        t[int(GGMLType::Q8_0)].quantize_row = q8_0;
        for (GGMLType k : {GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K}) t[int(k)].quantize_act_row = q8_K;
        t[int(GGMLType::Q8_K)].quantize_row = q8_K;
        t[int(GGMLType::Q8_K)].quantize_act_row = q8_K;
        t[int(GGMLType::Q4_0)].vec_dot = &vec_dot_as<block_q4_0, block_q8_0, vec_dot_q4_0_q8_0_neon>;
        t[int(GGMLType::Q8_0)].vec_dot = &vec_dot_as<block_q8_0, block_q8_0, vec_dot_q8_0_q8_0_neon>;
        t[int(GGMLType::Q4_K)].vec_dot = &vec_dot_as<block_q4_K, block_q8_K, vec_dot_q4_K_q8_K_neon>;
        t[int(GGMLType::Q5_K)].vec_dot = &vec_dot_as<block_q5_K, block_q8_K, vec_dot_q5_K_q8_K_neon>;
        t[int(GGMLType::Q6_K)].vec_dot = &vec_dot_as<block_q6_K, block_q8_K, vec_dot_q6_K_q8_K_neon>;
    }
#endif
    (void)isa;
    return t;
}

const KernelTable& active_table() {
    static const KernelTable table = table_for(active_isa());
    return table;
}

const TypeKernels& lookup(const KernelTable& table, GGMLType t) {
    const int id = int(t);
    if (id < 0 || id >= kTypeSlots || table[id].quantize_row == nullptr) {
        throw std::invalid_argument("GGML type id " + std::to_string(id) +
                                    " is not supported by llava-edge's kernels (supported: F32=0, F16=1, "
                                    "Q4_0=2, Q8_0=8, Q4_K=12, Q5_K=13, Q6_K=14, BF16=30; Q8_K=15 for activations)");
    }
    return table[id];
}

}  // namespace

const TypeKernels& kernels_for(GGMLType t) { return lookup(active_table(), t); }

TypeKernels kernels_for_isa(GGMLType t, ISA isa) {
    if (!isa_supported(isa)) {
        throw std::invalid_argument(std::string("ISA ") + isa_name(isa) + " is not supported on this CPU/build");
    }
    return lookup(table_for(isa), t);
}

void quantize_row(GGMLType t, const float* LE_RESTRICT x, void* LE_RESTRICT y, int64_t n) {
    const TypeKernels& k = kernels_for(t);
    check_blocks(n, block_size(t), "quantize_row");
    k.quantize_row(x, y, n);
}

void dequantize_row(GGMLType t, const void* LE_RESTRICT x, float* LE_RESTRICT y, int64_t n) {
    const TypeKernels& k = kernels_for(t);
    check_blocks(n, block_size(t), "dequantize_row");
    k.dequantize_row(x, y, n);
}

GGMLType act_type(GGMLType weight_type) { return kernels_for(weight_type).act_type; }

void quantize_act_row(GGMLType weight_type, const float* LE_RESTRICT x, void* LE_RESTRICT y, int64_t n) {
    const TypeKernels& k = kernels_for(weight_type);
    check_blocks(n, block_size(k.act_type), "quantize_act_row");
    k.quantize_act_row(x, y, n);
}

float vec_dot(GGMLType weight_type, const void* LE_RESTRICT w_row, const void* LE_RESTRICT act_row, int64_t n) {
    const TypeKernels& k = kernels_for(weight_type);
    if (k.vec_dot == nullptr) {
        throw std::invalid_argument(std::string("no dot product for weights of type ") + type_name(weight_type));
    }
    return k.vec_dot(w_row, act_row, n);  // the kernel checks n against its block size
}

VecDotFn vec_dot_fn(GGMLType weight_type) {
    const TypeKernels& k = kernels_for(weight_type);
    if (k.vec_dot == nullptr) {
        throw std::invalid_argument(std::string("no dot product for weights of type ") + type_name(weight_type));
    }
    return k.vec_dot;
}

}  // namespace le
