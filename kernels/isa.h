// Instruction-set dispatch: which SIMD variant of each kernel runs. Chosen once, at first use, from the CPU's
// features; the environment variable LLAVA_EDGE_ISA=ref|avx2|avx512|neon forces one (tests use it to run every
// compiled path). Hot loops never test the ISA: kernel tables are filled once from active_isa().
#pragma once

#include <string>
#include <vector>

namespace le {

// AVX2 means AVX2 + FMA + F16C; AVX512 means AVX-512 F/BW/DQ/VL/VNNI (and AVX2); NEON means AArch64 Advanced SIMD.
enum class ISA { REF, AVX2, AVX512, NEON };

// The ISA in use; throws std::runtime_error (once per call, same message) when LLAVA_EDGE_ISA names an
// unknown ISA or one this CPU or build cannot run.
ISA active_isa();
const char* isa_name(ISA isa);
// Whether this build and this CPU can run the ISA's kernels (REF always can).
bool isa_supported(ISA isa);
// Every supported ISA, REF first.
std::vector<ISA> supported_isas();
// NEON dot-product extension (sdot/udot), for NEON kernels that want it; false off AArch64.
bool cpu_has_neon_dotprod();

}  // namespace le
