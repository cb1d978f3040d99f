// Matmul kernels: how matmul (ops.h) turns f32 activations into what a weight type's products consume, and
// the register-blocked product of a block of weight rows with a block of activation rows.
//
// One GemmKernels per (weight type, ISA). The _ref entry packs activations with quantize_act_row's _ref
// format (Q8_0 / Q8_K / F32) and loops over the _ref dot product; SIMD entries use their own packed
// activation layout (private to the matmul: never stored, never seen by Python) and micro-kernels that
// decode each weight block once per group of tokens.
//
// Contract every variant keeps: Y[t, r] depends only on W row r and X row t, through the same sequence of
// float operations whatever n_rows, n_tok, the tile a row or token falls in, or the thread that runs it;
// so matmul's answer is bit-identical for any thread count and any batch of tokens (decode == prefill).
#pragma once

#include "common.h"
#include "isa.h"

namespace le {

struct GemmKernels {
    const char* name = nullptr;
    // Bytes of one packed activation row of n_in values (n_in a positive multiple of the weight's block size).
    int64_t (*act_bytes)(int64_t n_in) = nullptr;
    // x [n_in] f32 -> act [act_bytes(n_in)]. nullptr: the kernel reads the f32 rows in place.
    void (*pack_act)(const float* LE_RESTRICT x, uint8_t* LE_RESTRICT act, int64_t n_in) = nullptr;
    // W [n_rows] rows of w_stride bytes x act [n_tok] rows of act_stride bytes -> y[t * ldy + r].
    // act rows start 64-byte aligned (SIMD variants rely on it when act_stride is a multiple of 64).
    void (*gemm)(const uint8_t* LE_RESTRICT w, int64_t w_stride, int64_t n_rows, const uint8_t* LE_RESTRICT act,
                 int64_t act_stride, int64_t n_tok, float* LE_RESTRICT y, int64_t ldy, int64_t n_in) = nullptr;
};

// Kernels for weight type wt under the active ISA; throws std::invalid_argument for non-weight types.
const GemmKernels& gemm_kernels(GGMLType wt);
// The same for an explicit ISA (tests and benchmarks; throws std::invalid_argument if the ISA is unsupported).
GemmKernels gemm_kernels_for_isa(GGMLType wt, ISA isa);

// Per-ISA fillers: replace the entries they have SIMD kernels for; defined in gemm_<isa>.cpp.
void fill_gemm_avx2(GemmKernels* table);    // indexed by GGML type id
void fill_gemm_avx512(GemmKernels* table);
void fill_gemm_avx512_k(GemmKernels* table);      // K-quants, gemm_avx512_k.cpp
void fill_gemm_avx512_q4_0(GemmKernels* table);   // Q4_0, gemm_avx512_q4_0.cpp
void fill_gemm_avx512_float(GemmKernels* table);  // F32/F16/BF16, gemm_avx512_float.cpp
void fill_gemm_neon(GemmKernels* table);

constexpr int kGemmTypeSlots = 31;  // GGML type ids of weight types are all below this (BF16 = 30)

// Streams weights ahead of a micro-kernel: the STEP bytes at base + step * STEP into L2 (not L1, which holds
// the current tile), a fixed number of prefetches per step so the hot loop has no bookkeeping branches. A
// micro-kernel passes the start of a later tile's rows (they follow in memory, prefetch_ahead bytes on), so
// the tiles start on cached data: their rows are only a few KB each, too short for the hardware prefetcher
// to lock on.
template <int64_t STEP>
inline void prefetch_step(const void* base, int64_t step) {
    const char* p = static_cast<const char*>(base) + step * STEP;
    constexpr int kLines = int((STEP + 126) / 64);  // lines [p, p + STEP) can touch, whatever p's alignment
    for (int i = 0; i < kLines; ++i) __builtin_prefetch(p + 64 * i, 0, 2);
}

// How far ahead of a tile of tile_bytes its prefetches run. Decode (T = 1 token) streams every weight once:
// whole tiles, at least one, about 16 KB ahead. One Zen 4 core streaming a 4096-wide Q4_0 or Q4_K matrix
// (9 KB tiles of 4 rows) reads 10-15% faster from 18 KB ahead than from the next tile; 37 KB is no better,
// and 32 KB tiles (14336 wide) gain nothing from two. Prefill (T > 1) re-reads an L2-sized block of rows
// for every group of tokens (ops.cpp); there a longer reach only fetches rows past the block, so it keeps
// the next tile (7B Q4_K_M prefill: no difference within this machine's noise either way).
template <int T>
inline int64_t prefetch_ahead(int64_t tile_bytes) {
    constexpr int64_t kAheadBytes = 16384;
    const int64_t tiles = T == 1 ? (kAheadBytes + tile_bytes - 1) / tile_bytes : 1;
    return tile_bytes * (tiles > 1 ? tiles : 1);
}

}  // namespace le
