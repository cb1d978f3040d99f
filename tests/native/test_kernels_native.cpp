// Native test of every compiled kernel variant against its reference, without Python: built with
// AddressSanitizer + UBSan on x86 (AVX2 / AVX-512) and cross-built for AArch64 and run under qemu-user (NEON
// with dotprod). See tests/native/run.sh. Exits non-zero on the first class of mismatch, after printing all.
//
// What is checked, for each ISA this CPU runs (REF is the yardstick):
//   quantizers bit-exact, dequantizers bit-exact, vec_dot within float-summation error;
//   matmul kernels (activation packing + micro-kernels) on odd sizes: error within the float summation bound,
//   decode == prefill bit for bit, all-zero rows give zeros, guard cells around the output untouched; and
//   the largest codes and scales, where narrow integer lanes would saturate;
//   row kernels (RMSNorm, RoPE, SiLU*mul, GELUs, softmax, add, dot, axpy) on odd lengths with guards;
//   attention over F32 / F16 / Q8_0 caches for several group sizes, head sizes, windows and empty slots;
//   the thread pool: every item run exactly once and no chunk empty or out of range, also while one slow
//   chunk holds its thread up, and a chunk's exception rethrown after the others ran (not per ISA).
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gemm.h"
#include "isa.h"
#include "ops.h"
#include "quants_impl.h"
#include "threadpool.h"

using namespace le;

namespace {

int g_failures = 0;
int g_checks = 0;

void check(bool ok, const std::string& what) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        if (g_failures <= 50) std::printf("FAIL %s\n", what.c_str());
    }
}

std::mt19937 g_rng(12345);

std::vector<float> randn(int64_t n, float scale = 1.0f) {
    std::normal_distribution<float> nd(0.0f, scale);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = nd(g_rng);
    return v;
}

bool same_bits(const void* a, const void* b, size_t n) { return std::memcmp(a, b, n) == 0; }

const GGMLType kWeightTypes[] = {GGMLType::F32,  GGMLType::F16,  GGMLType::BF16, GGMLType::Q4_0,
                                 GGMLType::Q8_0, GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K};

std::vector<int64_t> row_lengths(GGMLType t) {
    const int64_t b = block_size(t);
    if (b == 1) return {1, 3, 15, 16, 17, 33, 127, 129, 1023};
    if (b == 32) return {32, 64, 96, 128, 160, 224, 256, 288, 544};
    return {256, 512, 768};
}

// ---- quantization formats -----------------------------------------------------------------------------

void test_quants(ISA isa) {
    const char* in = isa_name(isa);
    for (GGMLType t : kWeightTypes) {
        const TypeKernels R = kernels_for_isa(t, ISA::REF), S = kernels_for_isa(t, isa);
        for (int64_t n : row_lengths(t)) {
            std::vector<float> x = randn(n, 2.0f);
            if (n >= 64) std::fill(x.begin() + 32, x.begin() + 64, 0.0f);  // a zero block
            x[size_t(n) / 2] = 50.0f;                                         // an outlier
            const int64_t rb = row_size(t, n);
            std::vector<uint8_t> qr(static_cast<size_t>(rb)), qs(static_cast<size_t>(rb));
            R.quantize_row(x.data(), qr.data(), n);
            S.quantize_row(x.data(), qs.data(), n);
            check(same_bits(qr.data(), qs.data(), qr.size()), std::string(in) + " quantize " + type_name(t) + " n=" + std::to_string(n));
            std::vector<float> dr(static_cast<size_t>(n)), ds(static_cast<size_t>(n));
            R.dequantize_row(qr.data(), dr.data(), n);
            S.dequantize_row(qr.data(), ds.data(), n);
            check(same_bits(dr.data(), ds.data(), dr.size() * 4), std::string(in) + " dequantize " + type_name(t));
            const int64_t ab = row_size(R.act_type, n);
            std::vector<uint8_t> ar(static_cast<size_t>(ab)), as(static_cast<size_t>(ab));
            std::vector<float> xa = randn(n);
            R.quantize_act_row(xa.data(), ar.data(), n);
            S.quantize_act_row(xa.data(), as.data(), n);
            check(same_bits(ar.data(), as.data(), ar.size()), std::string(in) + " quantize_act " + type_name(t) + " n=" + std::to_string(n));
            double mag = 0.0;
            for (int64_t i = 0; i < n; ++i) mag += std::fabs(double(dr[size_t(i)]) * xa[size_t(i)]);
            const float vr = R.vec_dot(qr.data(), ar.data(), n), vs = S.vec_dot(qr.data(), ar.data(), n);
            check(std::fabs(double(vr) - vs) <= 1e-5 * mag + 1e-30, std::string(in) + " vec_dot " + type_name(t) + " n=" + std::to_string(n));
        }
    }
}

// ---- matmul kernels -----------------------------------------------------------------------------------

struct Packed {
    std::vector<uint8_t> buf;
    uint8_t* data = nullptr;
    int64_t stride = 0;
    int64_t bytes = 0;
};

// Rows of x packed as matmul does (64-byte aligned rows), with 64 guard bytes after the last.
Packed pack(const GemmKernels& k, const std::vector<float>& x, int64_t n_tok, int64_t n_in) {
    Packed p;
    if (k.pack_act == nullptr) {
        p.data = reinterpret_cast<uint8_t*>(const_cast<float*>(x.data()));
        p.stride = n_in * 4;
        return p;
    }
    p.bytes = k.act_bytes(n_in);
    p.stride = (p.bytes + 63) / 64 * 64;
    p.buf.assign(size_t(n_tok * p.stride + 64 + 64), 0xA5);
    p.data = p.buf.data() + (64 - reinterpret_cast<uintptr_t>(p.buf.data()) % 64) % 64;
    for (int64_t t = 0; t < n_tok; ++t) k.pack_act(x.data() + t * n_in, p.data + t * p.stride, n_in);
    return p;
}

// One matmul of n_rows quantized rows wq (dequantized: wd) by n_tok rows of x through R (the yardstick) and
// S: S within the float summation bound of R, guard cells untouched, all-zero rows/tokens (zero_rows, and
// token 1 when zero_token) giving exact zeros, and decode == prefill bit for bit.
void compare_gemm(const GemmKernels& R, const GemmKernels& S, const std::vector<uint8_t>& wq, const std::vector<float>& wd,
                  int64_t n_rows, const std::vector<float>& x, int64_t n_tok, int64_t n_in, int64_t zero_rows,
                  bool zero_token, const std::string& what) {
    const float kGuard = -12345.5f;
    const int64_t rb = int64_t(wq.size() - 64) / n_rows;
    const int64_t ldy = n_rows + 3;
    std::vector<float> yr(static_cast<size_t>(n_tok * ldy), kGuard), ys(static_cast<size_t>(n_tok * ldy), kGuard);
    Packed pr = pack(R, x, n_tok, n_in), ps = pack(S, x, n_tok, n_in);
    R.gemm(wq.data(), rb, n_rows, pr.data, pr.stride, n_tok, yr.data(), ldy, n_in);
    S.gemm(wq.data(), rb, n_rows, ps.data, ps.stride, n_tok, ys.data(), ldy, n_in);
    bool ok = true, guards = true, zeros = true;
    for (int64_t tk = 0; tk < n_tok; ++tk) {
        for (int64_t r = 0; r < ldy; ++r) {
            const float got = ys[size_t(tk * ldy + r)];
            if (r >= n_rows) {
                guards &= got == kGuard;
                continue;
            }
            double mag = 0.0;
            for (int64_t i = 0; i < n_in; ++i) mag += std::fabs(double(wd[size_t(r * n_in + i)]) * x[size_t(tk * n_in + i)]);
            ok &= std::fabs(double(got) - yr[size_t(tk * ldy + r)]) <= 1e-4 * mag + 1e-30;
            if (r < zero_rows || (zero_token && tk == 1)) zeros &= got == 0.0f;
        }
    }
    if (S.pack_act != nullptr) {  // past the last packed row: untouched
        for (int64_t i = (n_tok - 1) * ps.stride + ps.bytes; i < n_tok * ps.stride + 64; ++i) guards &= ps.data[i] == 0xA5;
    }
    check(ok, what + ": result");
    check(guards, what + ": guard cells");
    check(zeros, what + ": zero row / zero token");
    // decode == prefill: each token alone gives the same bits
    bool same = true;
    for (int64_t tk = 0; tk < n_tok; ++tk) {
        float y1[16];
        S.gemm(wq.data(), rb, n_rows, ps.data + tk * ps.stride, ps.stride, 1, y1, 16, n_in);
        same &= same_bits(y1, ys.data() + tk * ldy, size_t(n_rows) * 4);
    }
    check(same, what + ": decode == prefill bits");
}

void test_gemm(ISA isa) {
    const char* in = isa_name(isa);
    for (GGMLType t : kWeightTypes) {
        const GemmKernels R = gemm_kernels_for_isa(t, ISA::REF), S = gemm_kernels_for_isa(t, isa);
        const TypeKernels Q = kernels_for_isa(t, ISA::REF);
        for (int64_t n_in : row_lengths(t)) {
            for (auto [n_rows, n_tok] : {std::pair<int64_t, int64_t>{1, 1}, {3, 2}, {5, 5}, {13, 7}, {4, 4}, {9, 9}}) {
                const std::string what = std::string(in) + " gemm " + type_name(t) + " " + std::to_string(n_rows) + "x" +
                                         std::to_string(n_in) + " x " + std::to_string(n_tok) + " tok";
                std::vector<float> w = randn(n_rows * n_in);
                std::fill(w.begin(), w.begin() + n_in, 0.0f);  // row 0: all zero
                std::vector<float> x = randn(n_tok * n_in);
                if (n_tok > 2) std::fill(x.begin() + n_in, x.begin() + 2 * n_in, 0.0f);  // token 1: all zero
                const int64_t rb = row_size(t, n_in);
                std::vector<uint8_t> wq(static_cast<size_t>(n_rows * rb) + 64);
                for (int64_t r = 0; r < n_rows; ++r) Q.quantize_row(w.data() + r * n_in, wq.data() + r * rb, n_in);
                std::vector<float> wd(static_cast<size_t>(n_rows * n_in));
                for (int64_t r = 0; r < n_rows; ++r) Q.dequantize_row(wq.data() + r * rb, wd.data() + r * n_in, n_in);
                compare_gemm(R, S, wq, wd, n_rows, x, n_tok, n_in, 1, n_tok > 2, what);
            }
        }
    }
}

// Largest codes and scales against the largest activation codes: every weight byte set to one pattern (all
// bits, or 0x80 for Q8_0's -128), the fp16 scales to 1. The integer sums the SIMD kernels form in narrow
// lanes (int16 pairs, or int32 dwords folded to int16 for the K-quants) must not saturate. x = +-1
// quantizes to codes of magnitude 127 (Q8_0) or -128 (Q8_K).
void test_gemm_extremes(ISA isa) {
    const char* in = isa_name(isa);
    struct Case { GGMLType t; uint8_t fill; std::vector<int> fp16_at; };  // fp16 scale offsets in a block
    const Case cases[] = {{GGMLType::Q4_0, 0xFF, {0}}, {GGMLType::Q8_0, 0x80, {0}}, {GGMLType::Q8_0, 0x7F, {0}},
                          {GGMLType::Q4_K, 0xFF, {0, 2}}, {GGMLType::Q5_K, 0xFF, {0, 2}}, {GGMLType::Q6_K, 0xFF, {208}},
                          {GGMLType::Q6_K, 0x7F, {208}}};
    const uint16_t kOne = 0x3C00;
    for (const Case& c : cases) {
        const GemmKernels R = gemm_kernels_for_isa(c.t, ISA::REF), S = gemm_kernels_for_isa(c.t, isa);
        const TypeKernels Q = kernels_for_isa(c.t, ISA::REF);
        const int64_t n_in = 1024, n_rows = 5, n_tok = 2, rb = row_size(c.t, n_in), bb = type_size(c.t);
        std::vector<uint8_t> wq(static_cast<size_t>(n_rows * rb) + 64, c.fill);
        for (int64_t b = 0; b < n_rows * rb / bb; ++b)
            for (int off : c.fp16_at) std::memcpy(wq.data() + b * bb + off, &kOne, 2);
        std::vector<float> wd(static_cast<size_t>(n_rows * n_in));
        for (int64_t r = 0; r < n_rows; ++r) Q.dequantize_row(wq.data() + r * rb, wd.data() + r * n_in, n_in);
        std::vector<float> x(static_cast<size_t>(n_tok * n_in), -1.0f);
        std::fill(x.begin() + n_in, x.end(), 1.0f);
        char fill[8];
        std::snprintf(fill, sizeof(fill), "0x%02X", c.fill);
        compare_gemm(R, S, wq, wd, n_rows, x, n_tok, n_in, 0, false,
                     std::string(in) + " gemm extremes " + type_name(c.t) + " bytes " + fill);
    }
}

// ---- row kernels ----------------------------------------------------------------------------------------

bool close(const std::vector<float>& a, const std::vector<float>& b, double rtol, double atol) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::isnan(a[i]) != std::isnan(b[i])) return false;
        if (!std::isnan(a[i]) && std::fabs(double(a[i]) - b[i]) > atol + rtol * std::fabs(double(b[i]))) return false;
    }
    return true;
}

void test_ops(ISA isa) {
    const OpsKernels& R = ops_kernels_ref;
    const OpsKernels& S = ops_kernels_for_isa(isa);
    const std::string in = isa_name(isa);
    const float kGuard = 777.25f;
    for (int64_t n : {1, 3, 17, 33, 127, 129, 1023}) {
        const std::string sz = " n=" + std::to_string(n);
        std::vector<float> x = randn(n, 4.0f), u = randn(n), w = randn(n);
        if (n > 2) {
            x[0] = -100.0f;
            x[1] = 95.0f;
        }
        // outputs in buffers with a guard cell on each side
        auto run = [&](auto fn) {
            std::vector<float> y(static_cast<size_t>(n + 2), kGuard);
            fn(y.data() + 1);
            const bool g = y[0] == kGuard && y[size_t(n + 1)] == kGuard;
            return std::make_pair(std::vector<float>(y.begin() + 1, y.end() - 1), g);
        };
        auto cmp = [&](const char* name, auto fr, auto fs, double rtol, double atol) {
            auto [yr, gr] = run(fr);
            auto [ys, gs] = run(fs);
            check(gs, in + " " + name + sz + ": guards");
            check(close(ys, yr, rtol, atol), in + " " + name + sz);
        };
        cmp("rms_norm", [&](float* y) { R.rms_norm_row(x.data(), w.data(), y, n, 1e-5f); },
            [&](float* y) { S.rms_norm_row(x.data(), w.data(), y, n, 1e-5f); }, 1e-5, 1e-30);
        cmp("silu_mul", [&](float* y) { R.silu_mul(x.data(), u.data(), y, n); }, [&](float* y) { S.silu_mul(x.data(), u.data(), y, n); }, 1e-5, 1e-37);
        cmp("gelu", [&](float* y) { R.gelu(x.data(), y, n); }, [&](float* y) { S.gelu(x.data(), y, n); }, 1e-5, 1e-37);
        cmp("gelu_quick", [&](float* y) { R.gelu_quick(x.data(), y, n); }, [&](float* y) { S.gelu_quick(x.data(), y, n); }, 1e-5, 1e-37);
        cmp("softmax", [&](float* y) { R.softmax_row(x.data(), y, n); }, [&](float* y) { S.softmax_row(x.data(), y, n); }, 1e-5, 1e-37);
        cmp("add", [&](float* y) { std::copy(x.begin(), x.end(), y); R.add(y, u.data(), n); },
            [&](float* y) { std::copy(x.begin(), x.end(), y); S.add(y, u.data(), n); }, 0.0, 0.0);
        cmp("axpy", [&](float* y) { std::copy(u.begin(), u.end(), y); R.axpy_f32(0.75f, x.data(), y, n); },
            [&](float* y) { std::copy(u.begin(), u.end(), y); S.axpy_f32(0.75f, x.data(), y, n); }, 1e-6, 1e-6);
        double mag = 0.0;
        for (int64_t i = 0; i < n; ++i) mag += std::fabs(double(x[size_t(i)]) * u[size_t(i)]);
        check(std::fabs(double(R.dot_f32(x.data(), u.data(), n)) - S.dot_f32(x.data(), u.data(), n)) <= 1e-5 * mag, in + " dot" + sz);
        if (n % 2 == 1 && n > 1) {  // RoPE on n - 1 values (pairs): the same float operations, the same bits
            const int64_t n_rot = n - 1;
            std::vector<float> c(static_cast<size_t>(n_rot / 2)), s(static_cast<size_t>(n_rot / 2));
            for (int64_t i = 0; i < n_rot / 2; ++i) {
                c[size_t(i)] = std::cos(0.37f * float(i + 1));
                s[size_t(i)] = std::sin(0.37f * float(i + 1));
            }
            auto [yr, gr] = run([&](float* y) { std::copy(x.begin(), x.end(), y); R.rope_pairs(y, c.data(), s.data(), n_rot); });
            auto [ys, gs] = run([&](float* y) { std::copy(x.begin(), x.end(), y); S.rope_pairs(y, c.data(), s.data(), n_rot); });
            check(gs && same_bits(yr.data(), ys.data(), yr.size() * 4), in + " rope" + sz);
        }
    }
}

// ---- attention -----------------------------------------------------------------------------------------

void test_attention(ISA isa) {
    const OpsKernels& R = ops_kernels_ref;
    const OpsKernels& S = ops_kernels_for_isa(isa);
    const std::string in = isa_name(isa);
    for (GGMLType kv : {GGMLType::F32, GGMLType::F16, GGMLType::Q8_0}) {
        struct Case {
            int64_t group, hd, window;
        };
        for (const Case& cs : {Case{1, 32, 0}, Case{2, 64, 0}, Case{4, 128, 0}, Case{4, 32, 7}, Case{3, 96, 0},
                               Case{8, 64, 5}, Case{4, 17, 0}, Case{1, 1, 0}}) {
            const int64_t group = cs.group, hd = cs.hd, window = cs.window;
            if (kv == GGMLType::Q8_0 && hd % 32) continue;
            const int64_t n_kv = 2, n_k = 45;
            const int64_t kv_row = row_size(kv, hd), kv_tok = n_kv * kv_row;
            std::vector<uint8_t> kc(static_cast<size_t>(n_k * kv_tok)), vc(static_cast<size_t>(n_k * kv_tok));
            const TypeKernels Q = kernels_for_isa(kv, ISA::REF);
            for (int64_t j = 0; j < n_k * n_kv; ++j) {
                std::vector<float> a = randn(hd), b = randn(hd);
                Q.quantize_row(a.data(), kc.data() + j * kv_row, hd);
                Q.quantize_row(b.data(), vc.data() + j * kv_row, hd);
            }
            std::vector<int32_t> kp(static_cast<size_t>(n_k));
            for (int64_t j = 0; j < n_k; ++j) kp[size_t(j)] = int32_t((j * 7) % (n_k - 3));  // shuffled positions
            kp[3] = kp[20] = kp[44] = -1;                                                    // empty slots
            const AttnArgs a{hd, group, kv, kv_row, kv_tok, kp.data(), n_k, window, float(1.0 / std::sqrt(double(hd)))};
            for (int64_t p : {0, 1, 9, 30, 41}) {
                for (int64_t kvh = 0; kvh < n_kv; ++kvh) {
                    std::vector<float> q = randn(group * hd);
                    std::vector<float> orf(static_cast<size_t>(group * hd + 2), 5.5f), osm(static_cast<size_t>(group * hd + 2), 5.5f);
                    std::vector<int32_t> idx(static_cast<size_t>(n_k));
                    std::vector<float> sc(static_cast<size_t>(n_k * group));
                    R.attend_group(a, q.data(), p, kc.data() + kvh * kv_row, vc.data() + kvh * kv_row, orf.data() + 1, idx.data(), sc.data());
                    S.attend_group(a, q.data(), p, kc.data() + kvh * kv_row, vc.data() + kvh * kv_row, osm.data() + 1, idx.data(), sc.data());
                    bool ok = osm[0] == 5.5f && osm.back() == 5.5f;
                    for (size_t i = 1; i + 1 < osm.size(); ++i) ok &= std::fabs(double(osm[i]) - orf[i]) <= 1e-5;
                    check(ok, in + " attention " + type_name(kv) + " group=" + std::to_string(group) + " hd=" + std::to_string(hd) +
                                  " window=" + std::to_string(window) + " p=" + std::to_string(p));
                }
            }
        }
    }
}

// ---- thread pool ----------------------------------------------------------------------------------------

void test_parallel_for() {
    for (int threads : {1, 2, 3, 5}) {
        set_num_threads(threads);
        for (int64_t n : {1, 2, 7, 100, 5000}) {
            for (int64_t min_chunk : {1, 3, 64}) {
                const std::string at = "parallel_for threads " + std::to_string(threads) + " n " + std::to_string(n) +
                                       " min_chunk " + std::to_string(min_chunk);
                std::vector<std::atomic<int>> runs(static_cast<size_t>(n));
                std::atomic<bool> bad_chunk{false};
                const auto started = std::chrono::steady_clock::now();
                parallel_for(
                    n,
                    [&](int64_t b, int64_t e) {
                        if (b < 0 || e > n || b >= e) bad_chunk = true;
                        // The first chunk is slow: the others finish their runs and steal from its owner's.
                        if (b == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
                        for (int64_t i = b; i < e; ++i) runs[size_t(i)].fetch_add(1);
                    },
                    min_chunk);
                check(!bad_chunk, at + ": an empty chunk or one outside [0, n)");
                bool once = true;
                for (auto& r : runs) once = once && r.load() == 1;
                check(once, at + ": every item exactly once");
                check(std::chrono::steady_clock::now() - started < std::chrono::seconds(5), at + ": finished");
            }
        }
        // A chunk's exception reaches the caller, after every other chunk has run (64 items make at least 32
        // chunks on 2+ threads, so at most 2 items are skipped).
        std::atomic<int> finished{0};
        bool caught = false;
        try {
            parallel_for(64, [&](int64_t b, int64_t e) {
                if (b <= 17 && 17 < e) throw std::runtime_error("chunk failed");
                finished.fetch_add(int(e - b));
            });
        } catch (const std::runtime_error&) {
            caught = true;
        }
        check(caught, "parallel_for threads " + std::to_string(threads) + ": exception rethrown");
        check(threads == 1 || finished.load() >= 62, "parallel_for threads " + std::to_string(threads) +
                                                         ": the other chunks ran");
    }
    set_num_threads(2);
}

}  // namespace

int main() {
    const std::vector<ISA> isas = supported_isas();
    std::printf("ISAs on this CPU/build:");
    for (ISA i : isas) std::printf(" %s", isa_name(i));
    std::printf("\n");
    for (ISA isa : isas) {
        if (isa == ISA::REF) continue;
        const int before = g_failures;
        std::printf("%s: matmul kernels", isa_name(isa));
        for (GGMLType t : kWeightTypes) std::printf(" %s=%s", type_name(t), gemm_kernels_for_isa(t, isa).name);
        std::printf("; row kernels %s\n", ops_kernels_for_isa(isa).name);
        test_quants(isa);
        test_gemm(isa);
        test_gemm_extremes(isa);
        test_ops(isa);
        test_attention(isa);
        std::printf("%s: %s\n", isa_name(isa), g_failures == before ? "ok" : "MISMATCH");
    }
    test_parallel_for();
    if (isas.size() == 1) std::printf("only the reference is compiled for this CPU: nothing to compare\n");
    std::printf("%d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
