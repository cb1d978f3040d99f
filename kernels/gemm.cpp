// Matmul kernel tables (gemm.h): the reference entries, and the per-ISA tables picked once at load.
#include "gemm.h"

#include <array>
#include <cstring>
#include <string>

#include "quants_impl.h"

namespace le {

namespace {

using GemmTableArray = std::array<GemmKernels, kGemmTypeSlots>;

// Reference: activations in act_type(wt)'s on-disk format, one _ref dot product per output.
template <GGMLType WT>
int64_t ref_act_bytes(int64_t n_in) {
    const TypeKernels k = kernels_for_isa(WT, ISA::REF);
    return row_size(k.act_type, n_in);
}

template <GGMLType WT>
void ref_pack_act(const float* LE_RESTRICT x, uint8_t* LE_RESTRICT act, int64_t n_in) {
    static const TypeKernels k = kernels_for_isa(WT, ISA::REF);
    k.quantize_act_row(x, act, n_in);
}

// W rows x act rows -> Y: one weight row against every token of the block, so the row is reused from L1.
template <GGMLType WT>
void ref_gemm(const uint8_t* LE_RESTRICT w, int64_t w_stride, int64_t n_rows, const uint8_t* LE_RESTRICT act,
              int64_t act_stride, int64_t n_tok, float* LE_RESTRICT y, int64_t ldy, int64_t n_in) {
    static const VecDotFn dot = kernels_for_isa(WT, ISA::REF).vec_dot;
    for (int64_t r = 0; r < n_rows; ++r) {
        const uint8_t* w_row = w + r * w_stride;
        for (int64_t t = 0; t < n_tok; ++t) y[t * ldy + r] = dot(w_row, act + t * act_stride, n_in);
    }
}

template <GGMLType WT>
GemmKernels ref_entry(bool f32_in_place) {
    GemmKernels k;
    k.name = "ref";
    k.act_bytes = &ref_act_bytes<WT>;
    k.pack_act = f32_in_place ? nullptr : &ref_pack_act<WT>;
    k.gemm = &ref_gemm<WT>;
    return k;
}

GemmTableArray ref_table() {
    GemmTableArray t{};
    t[int(GGMLType::F32)] = ref_entry<GGMLType::F32>(true);
    t[int(GGMLType::F16)] = ref_entry<GGMLType::F16>(true);
    t[int(GGMLType::BF16)] = ref_entry<GGMLType::BF16>(true);
    t[int(GGMLType::Q4_0)] = ref_entry<GGMLType::Q4_0>(false);
    t[int(GGMLType::Q8_0)] = ref_entry<GGMLType::Q8_0>(false);
    t[int(GGMLType::Q4_K)] = ref_entry<GGMLType::Q4_K>(false);
    t[int(GGMLType::Q5_K)] = ref_entry<GGMLType::Q5_K>(false);
    t[int(GGMLType::Q6_K)] = ref_entry<GGMLType::Q6_K>(false);
    return t;
}

GemmTableArray table_for(ISA isa) {
    GemmTableArray t = ref_table();
    switch (isa) {
        case ISA::REF: break;
        case ISA::AVX2: fill_gemm_avx2(t.data()); break;
        case ISA::AVX512: fill_gemm_avx512(t.data()); break;
        case ISA::NEON: fill_gemm_neon(t.data()); break;
    }
    return t;
}

const GemmKernels& lookup(const GemmTableArray& t, GGMLType wt) {
    const int id = int(wt);
    if (id < 0 || id >= kGemmTypeSlots || t[size_t(id)].gemm == nullptr)
        throw std::invalid_argument("no matmul kernels for GGML type " + std::to_string(id));
    return t[size_t(id)];
}

}  // namespace

const GemmKernels& gemm_kernels(GGMLType wt) {
    static const GemmTableArray table = table_for(active_isa());
    return lookup(table, wt);
}

GemmKernels gemm_kernels_for_isa(GGMLType wt, ISA isa) {
    if (!isa_supported(isa))
        throw std::invalid_argument(std::string("ISA ") + isa_name(isa) + " is not supported on this CPU/build");
    return lookup(table_for(isa), wt);
}

}  // namespace le
