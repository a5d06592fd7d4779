// shim/compat.h: every libtorch 1.13 vs 2.x difference ember depends on, in one place.
// (docs/LIBTORCH_NOTES.md, "1.13 -> 2.x differences".) Included by shim/*.cpp only.
#pragma once

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#define EMI_TORCH_AT_LEAST(major, minor) \
    (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace emi::compat {

// optimizer.zero_grad()'s default: set_to_none=False until torch 2.0, True from 2.0.
constexpr bool zero_grad_sets_to_none = EMI_TORCH_AT_LEAST(2, 0);

// at::cuda::device_count() / c10::cuda::device_count(): size_t in 1.13, DeviceIndex (int8) later.
template <typename T> inline int64_t device_count_as_int(T n) { return static_cast<int64_t>(n); }

// ---- AMP: the fused grad-scaler kernels _amp_foreach_non_finite_check_and_unscale_ and
// _amp_update_scale_ have CUDA kernels in every version and CPU ones from torch 2.3; before that
// ember unscales CPU gradients with plain ops (docs/LIBTORCH_NOTES.md, "What libtorch does not provide").
constexpr bool amp_unscale_cpu_kernel = EMI_TORCH_AT_LEAST(2, 3);
inline bool amp_unscale_native(const at::Device &d) { return d.is_cuda() || amp_unscale_cpu_kernel; }

// CPU autocast to float16: torch 1.13 accepts only bfloat16 (torch.autocast("cpu", dtype=torch.half)
// warns and runs without autocast; the C++ setter throws). float16 came to CPU autocast late in 2.x
// (pytorch#112484) and is documented from 2.5 (pytorch#136082): ember uses it from 2.5 and below
// does what Python's 1.13 does.
constexpr bool cpu_autocast_f16 = EMI_TORCH_AT_LEAST(2, 5);

// ---- autocast: 2.4 replaced set_cpu_enabled / set_enabled / set_autocast_cpu_dtype (whose old
// names warn) by device-generic set_autocast_enabled(device, on) / set_autocast_dtype(device, dt).

struct autocast_frame {
    bool cpu_enabled;
    at::ScalarType cpu_dtype;
    bool cuda_enabled;
    at::ScalarType cuda_dtype;
};

#if EMI_TORCH_AT_LEAST(2, 4)
inline void set_autocast(bool cuda, bool on, at::ScalarType dt)
{
    auto dev = cuda ? at::kCUDA : at::kCPU;
    at::autocast::set_autocast_enabled(dev, on);
    at::autocast::set_autocast_dtype(dev, dt);
}
inline autocast_frame autocast_state()
{
    return {at::autocast::is_autocast_enabled(at::kCPU), at::autocast::get_autocast_dtype(at::kCPU),
            at::autocast::is_autocast_enabled(at::kCUDA), at::autocast::get_autocast_dtype(at::kCUDA)};
}
#else
inline void set_autocast(bool cuda, bool on, at::ScalarType dt)
{
    if (cuda) {
        at::autocast::set_enabled(on);
        at::autocast::set_autocast_gpu_dtype(dt);
    } else {
        at::autocast::set_cpu_enabled(on);
        at::autocast::set_autocast_cpu_dtype(dt);
    }
}
inline autocast_frame autocast_state()
{
    return {at::autocast::is_cpu_enabled(), at::autocast::get_autocast_cpu_dtype(), at::autocast::is_enabled(),
            at::autocast::get_autocast_gpu_dtype()};
}
#endif

// ---- optimizer state keys: the printed TensorImpl* (std::string) in 1.13, the pointer itself
// (void*) from 2.2. Detected from the map's key type rather than the version number.
template <typename Map> typename Map::key_type optimizer_state_key(const Map &, const at::Tensor &p)
{
    using key = typename Map::key_type;
    if constexpr (std::is_same_v<key, std::string>) {
        std::ostringstream s;
        s << static_cast<const void *>(p.unsafeGetTensorImpl());
        return s.str();
    } else {
        return static_cast<key>(p.unsafeGetTensorImpl());
    }
}

// ---- c10d (shim/dist.cpp; these templates keep c10d's headers out of every other shim file) ----------
// TCPStoreOptions gained useLibUV in 2.2 (the libuv server, default from 2.4): ember keeps the
// socket server 1.13 has, so both behave alike (port 0, a port in use).
template <class Opts, class = void> struct has_use_libuv : std::false_type {};
template <class Opts>
struct has_use_libuv<Opts, std::void_t<decltype(std::declval<Opts &>().useLibUV)>> : std::true_type {};
template <class Opts> Opts tcp_store_options()
{
    Opts o;
    if constexpr (has_use_libuv<Opts>::value)
        o.useLibUV = false;
    return o;
}
// ProcessGroupGloo and ProcessGroupNCCL derive from c10d::ProcessGroup in 1.13 and from c10d::Backend
// in 2.x (where c10d::ProcessGroup became the dispatching front). dist.cpp holds either through
// pg_base<ProcessGroupGloo>, the base the linked version has, detected from the class itself, and
// calls only what both bases declare (allreduce, broadcast, barrier with Work::wait).
} // namespace emi::compat
namespace c10d {
class Backend;      // complete in dist.cpp; only named here (1.13's Gloo does not derive from it)
class ProcessGroup;
} // namespace c10d
namespace emi::compat {
template <class Gloo>
using pg_base = std::conditional_t<std::is_base_of_v<c10d::Backend, Gloo>, c10d::Backend, c10d::ProcessGroup>;

// NCCL's blocking wait: with it a collective that fails or passes the group's timeout throws from
// Work::wait() (ember turns that into an error naming the rank); without it wait() only orders the
// CUDA streams, and a dead peer means a hang until torch's watchdog ends the whole process. The
// variable is read when a ProcessGroupNCCL is made: NCCL_BLOCKING_WAIT in 1.13, TORCH_NCCL_BLOCKING_WAIT
// from 2.2 (the old name is still read there, with a deprecation warning). Blocking wait also turns
// off the watchdog's async error handling (both versions log that only blocking wait is used).
constexpr const char *nccl_blocking_wait_env = EMI_TORCH_AT_LEAST(2, 2) ? "TORCH_NCCL_BLOCKING_WAIT" : "NCCL_BLOCKING_WAIT";

} // namespace emi::compat
