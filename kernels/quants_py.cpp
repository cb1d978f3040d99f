// Python bindings of the quantization kernels: quantize / dequantize whole tensors, one dot product (for
// tests), the active ISA, and the type ids. Every argument is checked here, so a bad call raises TypeError or
// ValueError instead of reaching a kernel; the GIL is released while kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "isa.h"
#include "quants_impl.h"

namespace py = pybind11;

namespace {

using le::GGMLType;

// Kernels read every format through structs of at most 4-byte alignment (float, fp16): a misaligned Python
// buffer (e.g. a memoryview sliced at an odd offset) is copied once rather than read through a bad pointer.
constexpr uintptr_t kAlign = 4;

bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kAlign == 0; }

std::string py_type_name(py::handle obj) { return py::str(py::type::handle_of(obj).attr("__name__")); }

GGMLType checked_type(int type_id) {
    const GGMLType t = static_cast<GGMLType>(type_id);
    le::kernels_for(t);  // throws std::invalid_argument (ValueError) for ids we do not run
    return t;
}

// A contiguous byte view of any object with the buffer protocol (bytes, numpy arrays, memmaps, memoryviews),
// read-only unless writable is asked for. Holds the export (and so the memory) until destroyed.
class ByteBuffer {
  public:
    ByteBuffer(py::handle obj, bool writable, const char* name) {
        if (!PyObject_CheckBuffer(obj.ptr())) {
            throw py::type_error(std::string(name) + " must support the buffer protocol (bytes, numpy array, "
                                 "memoryview), got " + py_type_name(obj));
        }
        const int flags = PyBUF_STRIDES | (writable ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(obj.ptr(), &view_, flags) != 0) {
            PyErr_Clear();
            throw py::value_error(std::string(name) + (writable ? " must be a writable buffer" : " cannot be read") +
                                  " (got " + py_type_name(obj) + ")");
        }
        held_ = true;
        if (!PyBuffer_IsContiguous(&view_, 'C')) {
            throw py::value_error(std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
        }
    }
    ~ByteBuffer() {
        if (held_) PyBuffer_Release(&view_);
    }
    ByteBuffer(const ByteBuffer&) = delete;
    ByteBuffer& operator=(const ByteBuffer&) = delete;

    uint8_t* data() const { return static_cast<uint8_t*>(view_.buf); }
    int64_t nbytes() const { return int64_t(view_.len); }

  private:
    Py_buffer view_{};
    bool held_ = false;
};

// A float32 C-contiguous numpy array of 1 or 2 dimensions, seen as rows x n.
struct FloatRows {
    const float* data = nullptr;
    int64_t rows = 0;
    int64_t n = 0;
    int ndim = 0;
    std::vector<float> copy;  // only for a misaligned array
};

FloatRows float_rows(py::handle obj, const char* name) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error(std::string(name) + " must be a numpy float32 array, got " + py_type_name(obj));
    }
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (!arr.dtype().is(py::dtype::of<float>())) {
        throw py::type_error(std::string(name) + " must have dtype float32 (native byte order), got " +
                             std::string(py::str(arr.dtype())));
    }
    if (!(arr.flags() & py::array::c_style)) {
        throw py::value_error(std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
    }
    FloatRows r;
    r.ndim = int(arr.ndim());
    if (r.ndim == 1) {
        r.rows = 1;
        r.n = int64_t(arr.shape(0));
    } else if (r.ndim == 2) {
        r.rows = int64_t(arr.shape(0));
        r.n = int64_t(arr.shape(1));
    } else {
        throw py::value_error(std::string(name) + " must have 1 or 2 dimensions [rows, n], got " +
                              std::to_string(arr.ndim()));
    }
    r.data = static_cast<const float*>(arr.data());
    if (!aligned(r.data) && r.rows * r.n > 0) {
        r.copy.assign(r.data, r.data + r.rows * r.n);
        r.data = r.copy.data();
    }
    return r;
}

void check_row_length(GGMLType t, int64_t n, const char* what) {
    const int64_t bs = le::block_size(t);
    if (n % bs != 0) {
        throw py::value_error(std::string(what) + " has " + std::to_string(n) + " values per row, not a multiple of " +
                              le::type_name(t) + "'s block size " + std::to_string(bs));
    }
}

// Bytes of one row of n values of type t, with n a positive block multiple.
int64_t checked_row_bytes(GGMLType t, int64_t n) {
    if (n <= 0) throw py::value_error("n must be positive, got " + std::to_string(n));
    if (n > INT64_MAX / le::type_size(t)) throw py::value_error("n = " + std::to_string(n) + " is too large");
    check_row_length(t, n, "the tensor");
    return le::row_size(t, n);
}

// The same bytes, aligned: the caller's pointer if it is, else a copy.
const uint8_t* aligned_bytes(const ByteBuffer& buf, std::vector<uint8_t>& scratch) {
    if (aligned(buf.data()) || buf.nbytes() == 0) return buf.data();
    scratch.assign(buf.data(), buf.data() + buf.nbytes());
    return scratch.data();
}

// x [rows, n] f32 -> y [rows, row_bytes] of type t, with the GIL released.
void quantize_rows(le::QuantizeRowFn fn, const FloatRows& x, uint8_t* y, int64_t row_bytes) {
    py::gil_scoped_release release;
    for (int64_t r = 0; r < x.rows; ++r) fn(x.data + r * x.n, y + r * row_bytes, x.n);
}

py::array quantize_impl(int type_id, py::handle x_obj, bool activations) {
    const GGMLType wt = checked_type(type_id);
    const le::TypeKernels& k = le::kernels_for(wt);
    const GGMLType t = activations ? k.act_type : wt;
    const le::QuantizeRowFn fn = activations ? k.quantize_act_row : k.quantize_row;
    const FloatRows x = float_rows(x_obj, "x");
    check_row_length(t, x.n, "x");
    const int64_t row_bytes = le::row_size(t, x.n);
    py::array_t<uint8_t> out = x.ndim == 1 ? py::array_t<uint8_t>(row_bytes)
                                           : py::array_t<uint8_t>({x.rows, row_bytes});
    quantize_rows(fn, x, out.mutable_data(), row_bytes);
    return out;
}

py::array dequantize(int type_id, py::handle data_obj, int64_t n) {
    const GGMLType t = checked_type(type_id);
    const le::TypeKernels& k = le::kernels_for(t);
    const int64_t row_bytes = checked_row_bytes(t, n);
    ByteBuffer buf(data_obj, false, "data");
    if (buf.nbytes() % row_bytes != 0) {
        throw py::value_error("data has " + std::to_string(buf.nbytes()) + " bytes, not a whole number of " +
                              le::type_name(t) + " rows of " + std::to_string(n) + " values (" +
                              std::to_string(row_bytes) + " bytes each)");
    }
    const int64_t rows = buf.nbytes() / row_bytes;
    std::vector<uint8_t> scratch;
    const uint8_t* src = aligned_bytes(buf, scratch);
    py::array_t<float> out({rows, n});
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        for (int64_t r = 0; r < rows; ++r) k.dequantize_row(src + r * row_bytes, dst + r * n, n);
    }
    return out;
}

float vec_dot_with(const le::TypeKernels& k, GGMLType t, py::handle w_obj, py::handle x_obj) {
    if (k.vec_dot == nullptr) {
        throw py::value_error(std::string("no dot product for weights of type ") + le::type_name(t));
    }
    const FloatRows x = float_rows(x_obj, "x");
    if (x.ndim != 1) throw py::value_error("x must be one row (1-D)");
    const int64_t row_bytes = checked_row_bytes(t, x.n);
    ByteBuffer w(w_obj, false, "w_row");
    if (w.nbytes() != row_bytes) {
        throw py::value_error("w_row has " + std::to_string(w.nbytes()) + " bytes; a " + le::type_name(t) +
                              " row of " + std::to_string(x.n) + " values has " + std::to_string(row_bytes));
    }
    std::vector<uint8_t> scratch;
    const uint8_t* wp = aligned_bytes(w, scratch);
    std::vector<uint8_t> act(size_t(le::row_size(k.act_type, x.n)));
    py::gil_scoped_release release;
    k.quantize_act_row(x.data, act.data(), x.n);
    return k.vec_dot(wp, act.data(), x.n);
}

float vec_dot(int type_id, py::handle w_obj, py::handle x_obj) {
    const GGMLType t = checked_type(type_id);
    return vec_dot_with(le::kernels_for(t), t, w_obj, x_obj);
}

// Test hook: the same dot product through an explicit ISA's kernels (e.g. "ref"), whatever is active.
float vec_dot_isa(const std::string& isa_name, int type_id, py::handle w_obj, py::handle x_obj) {
    const GGMLType t = checked_type(type_id);
    for (le::ISA isa : {le::ISA::REF, le::ISA::AVX2, le::ISA::AVX512, le::ISA::NEON}) {
        if (isa_name != le::isa_name(isa)) continue;
        if (!le::isa_supported(isa)) throw py::value_error("ISA " + isa_name + " is not supported here");
        return vec_dot_with(le::kernels_for_isa(t, isa), t, w_obj, x_obj);
    }
    throw py::value_error("unknown ISA " + isa_name + "; expected ref, avx2, avx512 or neon");
}

// Test hook: quantize x into out[offset : offset + rows*row_bytes] in place, so tests can put guard bytes
// around the destination. Returns the number of bytes written.
int64_t quantize_into(int type_id, py::handle x_obj, py::handle out_obj, int64_t offset) {
    const GGMLType t = checked_type(type_id);
    const le::TypeKernels& k = le::kernels_for(t);
    const FloatRows x = float_rows(x_obj, "x");
    check_row_length(t, x.n, "x");
    const int64_t row_bytes = le::row_size(t, x.n);
    ByteBuffer out(out_obj, true, "out");
    const int64_t total = x.rows * row_bytes;
    if (offset < 0 || offset > out.nbytes() || total > out.nbytes() - offset) {
        throw py::value_error("out has " + std::to_string(out.nbytes()) + " bytes; writing " +
                              std::to_string(total) + " at offset " + std::to_string(offset) + " does not fit");
    }
    if (!aligned(out.data() + offset)) throw py::value_error("out + offset must be 4-byte aligned");
    quantize_rows(k.quantize_row, x, out.data() + offset, row_bytes);
    return total;
}

// Test hook: dequantize data (rows of n values) into out[offset : offset + rows*n] of a float32 array.
int64_t dequantize_into(int type_id, py::handle data_obj, int64_t n, py::handle out_obj, int64_t offset) {
    const GGMLType t = checked_type(type_id);
    const le::TypeKernels& k = le::kernels_for(t);
    const int64_t row_bytes = checked_row_bytes(t, n);
    ByteBuffer buf(data_obj, false, "data");
    if (buf.nbytes() % row_bytes != 0) throw py::value_error("data is not a whole number of rows");
    const int64_t rows = buf.nbytes() / row_bytes;
    if (!py::isinstance<py::array_t<float>>(out_obj)) throw py::type_error("out must be a float32 array");
    ByteBuffer out(out_obj, true, "out");
    const int64_t n_out = out.nbytes() / int64_t(sizeof(float));
    if (offset < 0 || offset > n_out || rows * n > n_out - offset) {
        throw py::value_error("out has " + std::to_string(n_out) + " floats; writing " + std::to_string(rows * n) +
                              " at offset " + std::to_string(offset) + " does not fit");
    }
    std::vector<uint8_t> scratch;
    const uint8_t* src = aligned_bytes(buf, scratch);
    float* dst = reinterpret_cast<float*>(out.data()) + offset;
    if (!aligned(dst)) throw py::value_error("out must be 4-byte aligned");
    py::gil_scoped_release release;
    for (int64_t r = 0; r < rows; ++r) k.dequantize_row(src + r * row_bytes, dst + r * n, n);
    return rows * n;
}

}  // namespace

void register_quants(py::module_& m) {
    // Fails the import, with the message, when LLAVA_EDGE_ISA asks for something this machine cannot run.
    const le::ISA isa = le::active_isa();
    (void)isa;

    m.attr("TYPE_F32") = int(GGMLType::F32);
    m.attr("TYPE_F16") = int(GGMLType::F16);
    m.attr("TYPE_Q4_0") = int(GGMLType::Q4_0);
    m.attr("TYPE_Q8_0") = int(GGMLType::Q8_0);
    m.attr("TYPE_Q4_K") = int(GGMLType::Q4_K);
    m.attr("TYPE_Q5_K") = int(GGMLType::Q5_K);
    m.attr("TYPE_Q6_K") = int(GGMLType::Q6_K);
    m.attr("TYPE_Q8_K") = int(GGMLType::Q8_K);
    m.attr("TYPE_BF16") = int(GGMLType::BF16);

    m.def(
        "quantize", [](int type, py::handle x) { return quantize_impl(type, x, false); }, py::arg("type"),
        py::arg("x"),
        "Quantize float32 rows x [rows, n] (or [n]) to type; returns uint8 [rows, row_bytes] (or [row_bytes]).");
    m.def("dequantize", &dequantize, py::arg("type"), py::arg("data"), py::arg("n"),
          "Dequantize the raw bytes of any C-contiguous buffer holding whole rows of n values of type "
          "(read-only buffers and memmaps are read in place); returns float32 [rows, n].");
    m.def("vec_dot", &vec_dot, py::arg("type"), py::arg("w_row"), py::arg("x"),
          "Dot product of one weight row (bytes of type) with float32 activations x [n], through the same "
          "activation quantization (act_type) and kernel the matmul uses.");
    m.def(
        "quantize_act", [](int type, py::handle x) { return quantize_impl(type, x, true); }, py::arg("type"),
        py::arg("x"), "Quantize activations x [rows, n] the way the matmul does for weights of type.");
    m.def(
        "act_type", [](int type) { return int(le::kernels_for(checked_type(type)).act_type); }, py::arg("type"),
        "Type id of the activations the dot product for weights of type consumes.");
    m.def(
        "block_size", [](int type) { return le::block_size(checked_type(type)); }, py::arg("type"));
    m.def(
        "type_size", [](int type) { return le::type_size(checked_type(type)); }, py::arg("type"));
    m.def(
        "row_size", [](int type, int64_t n) { return checked_row_bytes(checked_type(type), n); }, py::arg("type"),
        py::arg("n"));
    m.def(
        "type_name", [](int type) { return std::string(le::type_name(checked_type(type))); }, py::arg("type"));
    m.def(
        "isa", [] { return std::string(le::isa_name(le::active_isa())); },
        "Instruction set the kernels use (LLAVA_EDGE_ISA overrides the CPU's best).");
    m.def(
        "supported_isas",
        [] {
            std::vector<std::string> names;
            for (le::ISA i : le::supported_isas()) names.emplace_back(le::isa_name(i));
            return names;
        },
        "Instruction sets this CPU and build can run (each can be forced with LLAVA_EDGE_ISA).");
    m.def("_vec_dot_isa", &vec_dot_isa, py::arg("isa"), py::arg("type"), py::arg("w_row"), py::arg("x"),
          "Test hook: vec_dot through the kernels of the named ISA instead of the active one.");
    m.def("_quantize_into", &quantize_into, py::arg("type"), py::arg("x"), py::arg("out"), py::arg("offset"),
          "Test hook: quantize x into out at a byte offset; returns bytes written.");
    m.def("_dequantize_into", &dequantize_into, py::arg("type"), py::arg("data"), py::arg("n"), py::arg("out"),
          py::arg("offset"), "Test hook: dequantize into a float32 array at an element offset.");
}
