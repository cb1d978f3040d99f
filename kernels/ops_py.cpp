// Python bindings of the operators (ops.h) and the thread pool. Every argument is checked here, with the
// GIL held, so a wrong call raises TypeError / ValueError / IndexError naming the function and argument;
// compute runs with the GIL released. Arrays are never converted or copied: a wrong dtype or a
// non-contiguous view is an error, not a silent copy (that would lose the result of an in-place op).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // std::optional arguments

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ops.h"
#include "threadpool.h"

namespace py = pybind11;
using le::GGMLType;

namespace {

struct DType {
    const char* name;
    char kind;
    int itemsize;
};
constexpr DType kF32{"float32", 'f', 4};
constexpr DType kF16{"float16", 'f', 2};
constexpr DType kI32{"int32", 'i', 4};
constexpr DType kU8{"uint8", 'u', 1};

bool has_dtype(const py::array& a, const DType& want) {
    const py::dtype dt = a.dtype();
    if (dt.kind() != want.kind || dt.itemsize() != want.itemsize) return false;
    const char order = dt.byteorder();  // '=' native, '|' not applicable, '<' / '>' explicit
    const bool little = [] {
        const uint16_t one = 1;
        return *reinterpret_cast<const uint8_t*>(&one) == 1;
    }();
    return order == '=' || order == '|' || (order == '<') == little;
}

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string where(const char* fn, const char* name) { return std::string(fn) + ": " + name; }

// A checked numpy argument: dtype, rank, C-contiguity, alignment, and writability when asked.
py::array checked(const py::object& obj, const char* fn, const char* name, const DType& dt, int min_ndim, int max_ndim,
                  bool writable = false) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(where(fn, name) + " must be a numpy " + dt.name + " array, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!has_dtype(a, dt))
        throw py::type_error(where(fn, name) + " must have dtype " + dt.name + ", got " +
                             std::string(py::str(a.dtype())));
    if (a.ndim() < min_ndim || a.ndim() > max_ndim) {
        const std::string want = min_ndim == max_ndim ? std::to_string(min_ndim)
                                                      : std::to_string(min_ndim) + " to " + std::to_string(max_ndim);
        throw py::value_error(where(fn, name) + " must have " + want + " dimensions, got shape " + shape_str(a));
    }
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(where(fn, name) + " must be C-contiguous (np.ascontiguousarray), got strides " +
                              std::string(py::str(a.attr("strides"))));
    if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        throw py::value_error(where(fn, name) + " is not aligned to its dtype");
    if (writable && !a.writeable()) throw py::value_error(where(fn, name) + " is read-only; it is modified in place");
    return a;
}

bool overlap(const py::array& a, const py::array& b) {
    const auto* a0 = static_cast<const char*>(a.data());
    const auto* b0 = static_cast<const char*>(b.data());
    return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

int64_t dim(const py::array& a, int i) { return int64_t(a.shape(i < 0 ? a.ndim() + i : i)); }

int64_t leading_rows(const py::array& a) {  // product of every dim but the last
    int64_t n = 1;
    for (py::ssize_t i = 0; i + 1 < a.ndim(); ++i) n *= int64_t(a.shape(i));
    return n;
}

std::vector<py::ssize_t> shape_of(const py::array& a) {
    return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

float* f32(py::array& a) { return static_cast<float*>(a.mutable_data()); }
const float* cf32(const py::array& a) { return static_cast<const float*>(a.data()); }
const int32_t* ci32(const py::array& a) { return static_cast<const int32_t*>(a.data()); }

GGMLType weight_type(int t, const char* fn) {
    const auto type = GGMLType(t);
    if (!le::is_weight_type(type))
        throw py::value_error(
            std::string(fn) + ": unsupported weight type " + std::to_string(t) +
            " (supported GGML types: F32=0, F16=1, BF16=30, Q4_0=2, Q8_0=8, Q4_K=12, Q5_K=13, Q6_K=14)");
    return type;
}

void check_row_length(GGMLType t, int64_t n, const char* fn, const char* what) {
    const int64_t bs = le::block_size(t);
    if (n <= 0 || n % bs != 0)
        throw py::value_error(std::string(fn) + ": " + what + " = " + std::to_string(n) +
                              " must be a positive multiple of " + std::to_string(bs) + " for " + le::type_name(t));
}

// Read-only, C-contiguous bytes of any buffer (numpy array or memmap view, bytes, mmap), used in place.
class WeightBuffer {
public:
    WeightBuffer(const py::object& obj, const char* fn, const char* name) {
        if (!PyObject_CheckBuffer(obj.ptr()))
            throw py::type_error(where(fn, name) + " must be a buffer (numpy array / memmap view, bytes), got " +
                                 std::string(py::str(py::type::of(obj).attr("__name__"))));
        if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_C_CONTIGUOUS) != 0) {
            PyErr_Clear();
            throw py::value_error(where(fn, name) + " must be a C-contiguous buffer");
        }
        held_ = true;
    }
    ~WeightBuffer() {
        if (held_) PyBuffer_Release(&view_);
    }
    WeightBuffer(const WeightBuffer&) = delete;
    WeightBuffer& operator=(const WeightBuffer&) = delete;

    const void* data() const { return view_.buf; }
    int64_t nbytes() const { return int64_t(view_.len); }

    // Rows of n_in values of type t held by the buffer. A 2-D or higher view must have one row per
    // leading index (uint8 [rows, row_bytes] as gguf.GGUFReader gives, or float32 / float16 [rows, n_in]).
    int64_t rows(GGMLType t, int64_t n_in, const char* fn, const char* name) const {
        const int64_t row_bytes = le::row_size(t, n_in);
        const std::string what = where(fn, name) + " holds " + std::to_string(nbytes()) + " bytes";
        const std::string unit = std::string(le::type_name(t)) + " rows of " + std::to_string(n_in) + " values (" +
                                 std::to_string(row_bytes) + " bytes each)";
        int64_t n_rows;
        if (view_.ndim >= 2) {
            n_rows = int64_t(view_.shape[0]);
            if (n_rows * row_bytes != nbytes())
                throw py::value_error(what + " in " + std::to_string(n_rows) + " rows, but " + std::to_string(n_rows) +
                                      " " + unit + " take " + std::to_string(n_rows * row_bytes));
        } else {
            if (nbytes() % row_bytes != 0) throw py::value_error(what + ", not a whole number of " + unit);
            n_rows = nbytes() / row_bytes;
        }
        // On-disk blocks start with f16 scales (2-byte loads); F32 rows are read as floats.
        const uintptr_t align = t == GGMLType::F32 ? 4 : 2;
        if (reinterpret_cast<uintptr_t>(data()) % align != 0)
            throw py::value_error(where(fn, name) + " is not " + std::to_string(align) + "-byte aligned");
        return n_rows;
    }

private:
    Py_buffer view_{};
    bool held_ = false;
};

// Y_i = X W_i^T for weights that share x, as one job; names[i] names weight i in errors.
std::vector<py::array_t<float>> matmuls(const std::vector<py::object>& ws, const std::vector<int>& w_types,
                                        const std::vector<std::string>& names, const py::object& x_obj,
                                        const char* fn) {
    py::array x = checked(x_obj, fn, "x", kF32, 1, 2);
    const int64_t n_in = dim(x, -1), n_tok = x.ndim() == 2 ? dim(x, 0) : 1;
    std::vector<std::unique_ptr<WeightBuffer>> held;  // keeps each buffer exported while the kernels read it
    std::vector<le::MatmulOut> outs;
    std::vector<py::array_t<float>> ys;
    for (size_t i = 0; i < ws.size(); ++i) {
        const GGMLType wt = weight_type(w_types[i], fn);
        check_row_length(wt, n_in, fn, "x.shape[-1] (n_in)");
        held.push_back(std::make_unique<WeightBuffer>(ws[i], fn, names[i].c_str()));
        const int64_t n_out = held.back()->rows(wt, n_in, fn, names[i].c_str());
        ys.push_back(x.ndim() == 2 ? py::array_t<float>({py::ssize_t(n_tok), py::ssize_t(n_out)})
                                   : py::array_t<float>({py::ssize_t(n_out)}));
        outs.push_back({wt, held.back()->data(), ys.back().mutable_data(), n_out});
    }
    const float* xp = cf32(x);
    {
        py::gil_scoped_release nogil;
        le::matmul_many(outs.data(), int(outs.size()), xp, n_in, n_tok);
    }
    return ys;
}

py::array_t<float> py_matmul(const py::object& w_obj, int w_type, const py::object& x_obj) {
    return matmuls({w_obj}, {w_type}, {"w"}, x_obj, "matmul")[0];
}

py::tuple py_matmul_many(const std::vector<py::object>& ws, const std::vector<int>& w_types, const py::object& x_obj) {
    if (ws.size() != w_types.size())
        throw py::value_error("matmul_many: " + std::to_string(ws.size()) + " weights but " +
                              std::to_string(w_types.size()) + " types");
    std::vector<std::string> names;
    for (size_t i = 0; i < ws.size(); ++i) names.push_back("ws[" + std::to_string(i) + "]");
    return py::cast(matmuls(ws, w_types, names, x_obj, "matmul_many"));
}

py::array_t<float> py_get_rows(const py::object& w_obj, int w_type, int64_t n_in, const py::object& ids_obj) {
    const char* fn = "get_rows";
    const GGMLType wt = weight_type(w_type, fn);
    check_row_length(wt, n_in, fn, "n_in");
    py::array ids = checked(ids_obj, fn, "ids", kI32, 1, 1);
    WeightBuffer w(w_obj, fn, "w");
    const int64_t n_rows = w.rows(wt, n_in, fn, "w");
    const int64_t n = dim(ids, 0);
    const int32_t* ip = ci32(ids);
    for (int64_t i = 0; i < n; ++i) {
        if (ip[i] < 0 || ip[i] >= n_rows)
            throw py::index_error("get_rows: ids[" + std::to_string(i) + "] = " + std::to_string(ip[i]) +
                                  " is outside [0, " + std::to_string(n_rows) + ")");
    }
    py::array_t<float> y({py::ssize_t(n), py::ssize_t(n_in)});
    float* yp = y.mutable_data();
    {
        py::gil_scoped_release nogil;
        le::get_rows(wt, w.data(), n_rows, n_in, ip, n, yp);
    }
    return y;
}

py::array_t<float> py_rms_norm(const py::object& x_obj, const py::object& w_obj, double eps) {
    const char* fn = "rms_norm";
    py::array x = checked(x_obj, fn, "x", kF32, 1, 32);
    py::array w = checked(w_obj, fn, "w", kF32, 1, 1);
    const int64_t d = dim(x, -1);
    if (dim(w, 0) != d)
        throw py::value_error("rms_norm: w has shape " + shape_str(w) + ", expected (" + std::to_string(d) +
                              ",) to match x.shape[-1]");
    if (d == 0) throw py::value_error("rms_norm: x.shape[-1] must be > 0");
    if (!(eps >= 0.0) || !std::isfinite(eps)) throw py::value_error("rms_norm: eps must be finite and >= 0");
    py::array_t<float> y(shape_of(x));
    float* yp = y.mutable_data();
    const float *xp = cf32(x), *wp = cf32(w);
    const int64_t n = leading_rows(x);
    {
        py::gil_scoped_release nogil;
        le::rms_norm(xp, wp, yp, n, d, float(eps));
    }
    return y;
}

void py_rope(const py::object& x_obj, const py::object& pos_obj, double theta, std::optional<int64_t> n_rot_opt) {
    const char* fn = "rope";
    py::array x = checked(x_obj, fn, "x", kF32, 3, 3, /*writable=*/true);
    py::array pos = checked(pos_obj, fn, "pos", kI32, 1, 1);
    const int64_t n_tok = dim(x, 0), n_head = dim(x, 1), head_dim = dim(x, 2);
    if (dim(pos, 0) != n_tok)
        throw py::value_error("rope: pos has shape " + shape_str(pos) + ", expected (" + std::to_string(n_tok) +
                              ",) for x of shape " + shape_str(x));
    const int64_t n_rot = n_rot_opt.value_or(head_dim);
    if (n_rot <= 0 || n_rot % 2 != 0 || n_rot > head_dim)
        throw py::value_error("rope: n_rot = " + std::to_string(n_rot) +
                              " must be even and in [2, head_dim = " + std::to_string(head_dim) + "]");
    if (!(theta > 0.0) || !std::isfinite(float(theta)))
        throw py::value_error("rope: theta must be positive and finite");
    if (overlap(x, pos)) throw py::value_error("rope: x and pos share memory");
    float* xp = f32(x);
    const int32_t* pp = ci32(pos);
    {
        py::gil_scoped_release nogil;
        le::rope(xp, pp, n_tok, n_head, head_dim, n_rot, float(theta));
    }
}

GGMLType kv_dtype_type(const py::array& k, const char* fn) {
    if (has_dtype(k, kF32)) return GGMLType::F32;
    if (has_dtype(k, kF16)) return GGMLType::F16;
    if (has_dtype(k, kU8)) return GGMLType::Q8_0;
    throw py::type_error(std::string(fn) + ": k must have dtype float32, float16, or uint8 (Q8_0 rows), got " +
                         std::string(py::str(k.dtype())));
}

py::array_t<float> py_attention(const py::object& q_obj, const py::object& q_pos_obj, const py::object& k_obj,
                                const py::object& v_obj, const py::object& k_pos_obj, int64_t window,
                                std::optional<int> kv_type_opt) {
    const char* fn = "attention";
    py::array q = checked(q_obj, fn, "q", kF32, 3, 3);
    py::array q_pos = checked(q_pos_obj, fn, "q_pos", kI32, 1, 1);
    py::array k_pos = checked(k_pos_obj, fn, "k_pos", kI32, 1, 1);
    if (!py::isinstance<py::array>(k_obj)) throw py::type_error("attention: k must be a numpy array");
    const GGMLType kv_type = kv_dtype_type(py::reinterpret_borrow<py::array>(k_obj), fn);
    const DType& kv_dt = kv_type == GGMLType::F32 ? kF32 : kv_type == GGMLType::F16 ? kF16 : kU8;
    py::array k = checked(k_obj, fn, "k", kv_dt, 3, 3);
    py::array v = checked(v_obj, fn, "v", kv_dt, 3, 3);
    if (kv_type_opt && GGMLType(*kv_type_opt) != kv_type)
        throw py::value_error("attention: kv_type = " + std::to_string(*kv_type_opt) + " does not match k's dtype " +
                              std::string(py::str(k.dtype())) +
                              " (float32 = F32 = 0, float16 = F16 = 1, uint8 = Q8_0 = 8)");
    if (kv_type == GGMLType::Q8_0 && !kv_type_opt)
        throw py::value_error("attention: uint8 k/v need kv_type=8 (Q8_0) to say what the bytes are");

    const int64_t n_q = dim(q, 0), n_head = dim(q, 1), hd = dim(q, 2);
    const int64_t n_k = dim(k, 0), n_kv = dim(k, 1);
    if (hd <= 0 || hd % le::block_size(kv_type) != 0)
        throw py::value_error("attention: head_dim = " + std::to_string(hd) + " must be a positive multiple of " +
                              std::to_string(le::block_size(kv_type)) + " for a " + le::type_name(kv_type) + " cache");
    const int64_t kv_last = kv_type == GGMLType::Q8_0 ? le::row_size(kv_type, hd) : hd;
    const std::string want_kv =
        "(" + std::to_string(n_k) + ", " + std::to_string(n_kv) + ", " + std::to_string(kv_last) + ")";
    if (dim(k, 2) != kv_last)
        throw py::value_error("attention: k has shape " + shape_str(k) + ", its last dim must be " +
                              std::to_string(kv_last) +
                              (kv_type == GGMLType::Q8_0 ? " (Q8_0 bytes of one head)" : " (q's head_dim)"));
    if (shape_of(v) != shape_of(k))
        throw py::value_error("attention: v has shape " + shape_str(v) + ", expected k's shape " + want_kv);
    if (n_kv <= 0 || n_head % n_kv != 0)
        throw py::value_error("attention: q has " + std::to_string(n_head) + " heads, not a multiple of k's " +
                              std::to_string(n_kv) + " KV heads");
    if (dim(q_pos, 0) != n_q)
        throw py::value_error("attention: q_pos has shape " + shape_str(q_pos) + ", expected (" + std::to_string(n_q) +
                              ",)");
    if (dim(k_pos, 0) != n_k)
        throw py::value_error("attention: k_pos has shape " + shape_str(k_pos) + ", expected (" + std::to_string(n_k) +
                              ",)");
    if (window < 0) throw py::value_error("attention: window must be >= 0 (0 = no window)");
    const int32_t* qp = ci32(q_pos);
    for (int64_t i = 0; i < n_q; ++i) {
        if (qp[i] < 0)
            throw py::value_error("attention: q_pos[" + std::to_string(i) + "] = " + std::to_string(qp[i]) +
                                  " is negative");
    }

    py::array_t<float> out({py::ssize_t(n_q), py::ssize_t(n_head), py::ssize_t(hd)});
    float* op = out.mutable_data();
    const float* qd = cf32(q);
    const void *kd = k.data(), *vd = v.data();
    const int32_t* kp = ci32(k_pos);
    {
        py::gil_scoped_release nogil;
        le::attention(qd, qp, n_q, n_head, hd, kv_type, kd, vd, kp, n_k, n_kv, window, op);
    }
    return out;
}

template <void (*Op)(const float*, float*, int64_t)>
py::array_t<float> py_unary(const py::object& x_obj, const char* fn) {
    py::array x = checked(x_obj, fn, "x", kF32, 0, 32);
    py::array_t<float> y(shape_of(x));
    float* yp = y.mutable_data();
    const float* xp = cf32(x);
    const int64_t n = int64_t(x.size());
    {
        py::gil_scoped_release nogil;
        Op(xp, yp, n);
    }
    return y;
}

py::array_t<float> py_silu_mul(const py::object& g_obj, const py::object& u_obj) {
    const char* fn = "silu_mul";
    py::array g = checked(g_obj, fn, "gate", kF32, 0, 32);
    py::array u = checked(u_obj, fn, "up", kF32, 0, 32);
    if (shape_of(g) != shape_of(u))
        throw py::value_error("silu_mul: gate has shape " + shape_str(g) + " but up has shape " + shape_str(u));
    py::array_t<float> y(shape_of(g));
    float* yp = y.mutable_data();
    const float *gp = cf32(g), *up = cf32(u);
    const int64_t n = int64_t(g.size());
    {
        py::gil_scoped_release nogil;
        le::silu_mul(gp, up, yp, n);
    }
    return y;
}

py::array_t<float> py_softmax(const py::object& x_obj) {
    py::array x = checked(x_obj, "softmax", "x", kF32, 1, 32);
    const int64_t d = dim(x, -1);
    if (d == 0) throw py::value_error("softmax: x.shape[-1] must be > 0");
    py::array_t<float> y(shape_of(x));
    float* yp = y.mutable_data();
    const float* xp = cf32(x);
    const int64_t n = leading_rows(x);
    {
        py::gil_scoped_release nogil;
        le::softmax(xp, yp, n, d);
    }
    return y;
}

void py_add_inplace(const py::object& a_obj, const py::object& b_obj) {
    const char* fn = "add_inplace";
    py::array a = checked(a_obj, fn, "a", kF32, 1, 32, /*writable=*/true);
    py::array b = checked(b_obj, fn, "b", kF32, 1, 32);
    const int64_t d = dim(a, -1), n = leading_rows(a);
    int64_t b_rows;
    if (shape_of(b) == shape_of(a)) {
        b_rows = n;
    } else if (b.ndim() == 1 && dim(b, 0) == d) {
        b_rows = 1;
    } else {
        throw py::value_error("add_inplace: b has shape " + shape_str(b) + "; expected a's shape " + shape_str(a) +
                              " or (" + std::to_string(d) + ",)");
    }
    if (overlap(a, b)) throw py::value_error("add_inplace: a and b share memory");
    float* ap = f32(a);
    const float* bp = cf32(b);
    {
        py::gil_scoped_release nogil;
        le::add_inplace(ap, bp, n, d, b_rows);
    }
}

}  // namespace

void register_ops(py::module_& m) {
    m.def("matmul", &py_matmul, py::arg("w"), py::arg("w_type"), py::arg("x"),
          "Y = X W^T. w: GGML rows of w_type (uint8 [n_out, row_bytes] or f32/f16 [n_out, n_in], or any\n"
          "C-contiguous buffer of n_out whole rows; read-only memmap views are used in place).\n"
          "x: float32 [n_tok, n_in] or [n_in]. Returns float32 [n_tok, n_out] or [n_out].");
    m.def("matmul_many", &py_matmul_many, py::arg("ws"), py::arg("w_types"), py::arg("x"),
          "Y_i = X W_i^T for weights that share x (a layer's Q, K and V): a tuple of float32 outputs, each as\n"
          "matmul(ws[i], w_types[i], x) returns it, bit for bit. x is quantized once per activation layout\n"
          "and all the weights' rows are shared out over the threads as one job.");
    m.def("get_rows", &py_get_rows, py::arg("w"), py::arg("w_type"), py::arg("n_in"), py::arg("ids"),
          "Embedding lookup: dequantized rows ids (int32 [n]) of w -> float32 [n, n_in]. IndexError if an id\n"
          "is out of range.");
    m.def("rms_norm", &py_rms_norm, py::arg("x"), py::arg("w"), py::arg("eps"),
          "x * rsqrt(mean(x^2, -1) + eps) * w over the last axis. x float32 [..., d], w float32 [d].");
    m.def("rope", &py_rope, py::arg("x"), py::arg("pos"), py::arg("theta"), py::arg("n_rot") = py::none(),
          "In place: llama.cpp 'normal' RoPE on x float32 [n_tok, n_head, head_dim] at positions pos int32\n"
          "[n_tok]; pairs (2i, 2i+1), i < n_rot/2 (default head_dim), turn by pos * theta^(-2i/n_rot),\n"
          "with angles formed in f32 as transformers does.");
    m.def("attention", &py_attention, py::arg("q"), py::arg("q_pos"), py::arg("k"), py::arg("v"), py::arg("k_pos"),
          py::arg("window") = 0, py::arg("kv_type") = py::none(),
          "softmax(q k^T / sqrt(hd)) v with GQA. q float32 [n_q, n_head, hd], q_pos int32 [n_q] (>= 0);\n"
          "k, v [n_k, n_kv, hd] float32 or float16, or uint8 [n_k, n_kv, hd/32*34] with kv_type=8 (Q8_0);\n"
          "k_pos int32 [n_k], any order, < 0 = empty slot. Key j is visible to query i iff\n"
          "0 <= k_pos[j] <= q_pos[i] and (window == 0 or q_pos[i] - k_pos[j] < window). A query with no\n"
          "visible key gets zeros. Returns float32 [n_q, n_head, hd].");
    m.def("silu_mul", &py_silu_mul, py::arg("gate"), py::arg("up"), "silu(gate) * up, float32, same shapes.");
    m.def(
        "gelu", [](const py::object& x) { return py_unary<le::gelu>(x, "gelu"); }, py::arg("x"),
        "Exact (erf) GELU of float32 x.");
    m.def(
        "gelu_quick", [](const py::object& x) { return py_unary<le::gelu_quick>(x, "gelu_quick"); }, py::arg("x"),
        "x * sigmoid(1.702 x) of float32 x.");
    m.def("softmax", &py_softmax, py::arg("x"),
          "Softmax over the last axis of float32 x (max-subtracted). A row of only -inf gives zeros.");
    m.def("add_inplace", &py_add_inplace, py::arg("a"), py::arg("b"),
          "a += b in place; float32, b of a's shape or [a.shape[-1]] (broadcast over rows).");
    m.def(
        "set_num_threads",
        [](int n) {
            if (n < 1) throw py::value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
            py::gil_scoped_release nogil;  // may wait for a running kernel to finish
            le::set_num_threads(n);
        },
        py::arg("n"), "Threads used by every kernel (the calling thread included).");
    m.def("get_num_threads", &le::get_num_threads,
          "Threads used by every kernel; defaults to the physical cores this process may run on.");
}
