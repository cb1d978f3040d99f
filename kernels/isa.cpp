// Instruction-set detection and the LLAVA_EDGE_ISA override (see isa.h).
#include "isa.h"

#include <cctype>
#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LE_X86_CPUID 1
#endif

namespace le {

namespace {

constexpr ISA kAllIsas[] = {ISA::REF, ISA::AVX2, ISA::AVX512, ISA::NEON};

#if LE_X86_CPUID
// __builtin_cpu_supports also checks that the OS saves the AVX / AVX-512 register state (XCR0).
bool x86_has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool x86_has_avx512() {
    __builtin_cpu_init();
    return x86_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
}
#endif

std::string supported_list() {
    std::string s;
    for (ISA isa : kAllIsas) {
        if (!isa_supported(isa)) continue;
        if (!s.empty()) s += ", ";
        s += isa_name(isa);
    }
    return s;
}

struct Choice {
    ISA isa = ISA::REF;
    std::string error;  // non-empty when LLAVA_EDGE_ISA cannot be honoured
};

Choice choose() {
    Choice c;
    const char* env = std::getenv("LLAVA_EDGE_ISA");
    if (env != nullptr && *env != '\0') {
        std::string want(env);
        for (char& ch : want) ch = char(std::tolower(static_cast<unsigned char>(ch)));
        for (ISA isa : kAllIsas) {
            if (want != isa_name(isa)) continue;
            if (isa_supported(isa)) {
                c.isa = isa;
            } else {
                c.error = std::string("LLAVA_EDGE_ISA=") + env + " forces the " + isa_name(isa) +
                          " kernels, but this CPU or build cannot run them; supported here: " + supported_list();
            }
            return c;
        }
        c.error = std::string("LLAVA_EDGE_ISA=") + env +
                  " is not an instruction set llava-edge knows; expected one of ref, avx2, avx512, neon "
                  "(supported here: " + supported_list() + ")";
        return c;
    }
    for (ISA isa : {ISA::AVX512, ISA::AVX2, ISA::NEON}) {
        if (isa_supported(isa)) {
            c.isa = isa;
            return c;
        }
    }
    return c;
}

}  // namespace

const char* isa_name(ISA isa) {
    switch (isa) {
        case ISA::REF: return "ref";
        case ISA::AVX2: return "avx2";
        case ISA::AVX512: return "avx512";
        case ISA::NEON: return "neon";
    }
    return "unknown";
}

bool isa_supported(ISA isa) {
    switch (isa) {
        case ISA::REF: return true;
#if LE_X86_CPUID
        case ISA::AVX2: return x86_has_avx2();
        case ISA::AVX512: return x86_has_avx512();
#else
        case ISA::AVX2: return false;
        case ISA::AVX512: return false;
#endif
#if defined(__aarch64__)
        case ISA::NEON: return true;  // Advanced SIMD is part of the AArch64 base architecture
#else
        case ISA::NEON: return false;
#endif
    }
    return false;
}

std::vector<ISA> supported_isas() {
    std::vector<ISA> out;
    for (ISA isa : kAllIsas) {
        if (isa_supported(isa)) out.push_back(isa);
    }
    return out;
}

bool cpu_has_neon_dotprod() {
#if defined(__aarch64__) && defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
    return true;
#else
    return false;
#endif
}

ISA active_isa() {
    // A function-local static is initialised once, thread-safely; a bad override fails every call alike.
    static const Choice choice = choose();
    if (!choice.error.empty()) throw std::runtime_error(choice.error);
    return choice.isa;
}

}  // namespace le
