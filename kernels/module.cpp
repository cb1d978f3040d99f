// The Python extension llava_edge._kernels: each part of the kernels registers its own functions.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_quants(py::module_& m);
void register_ops(py::module_& m);

PYBIND11_MODULE(_kernels, m) {
    m.doc() = "llava-edge compute kernels (C++17; portable reference + SIMD variants)";
    register_quants(m);
    register_ops(m);
}
