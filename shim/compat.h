// shim/compat.h: every libtorch 1.13 vs 2.x difference ember depends on, in one place.
// (LIBTORCH_NOTES.md, "1.13 -> 2.x differences".) Included by shim/*.cpp only.
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

#define EMI_TORCH_AT_LEAST(major, minor) \
    (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace emi::compat {

// optimizer.zero_grad()'s default: set_to_none=False until torch 2.0, True from 2.0.
constexpr bool zero_grad_sets_to_none = EMI_TORCH_AT_LEAST(2, 0);

// at::cuda::device_count() / c10::cuda::device_count(): size_t in 1.13, DeviceIndex (int8) later.
template <typename T> inline int64_t device_count_as_int(T n) { return static_cast<int64_t>(n); }

} // namespace emi::compat
