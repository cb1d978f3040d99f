// neon row kernels (ops.h): the reference table with this ISA's variants in place.
#include "ops.h"

namespace le {

OpsKernels make_ops_kernels_neon() {
    OpsKernels k = ops_kernels_ref;
    k.name = "neon";
    return k;
}

}  // namespace le
