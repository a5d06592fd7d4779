// shim/runtime.cpp: autocast (mixed precision) and the global RNG state, for the loop in src/.
#include "internal.hpp"

#include <ATen/autocast_mode.h>
#include <ATen/core/Generator.h>
#include <ATen/CPUGeneratorImpl.h>

namespace {

struct autocast_frame {
    bool cpu_enabled;
    at::ScalarType cpu_dtype;
    bool cuda_enabled;
    at::ScalarType cuda_dtype;
};

thread_local std::vector<autocast_frame> autocast_stack;

// libtorch 2.4 replaced set_cpu_enabled / set_enabled / set_autocast_cpu_dtype by device-generic calls.
#if EMI_TORCH_AT_LEAST(2, 4)
void set_autocast(bool cuda, bool on, at::ScalarType dt)
{
    auto dev = cuda ? at::kCUDA : at::kCPU;
    at::autocast::set_autocast_enabled(dev, on);
    at::autocast::set_autocast_dtype(dev, dt);
}
autocast_frame current()
{
    return {at::autocast::is_autocast_enabled(at::kCPU), at::autocast::get_autocast_dtype(at::kCPU),
            at::autocast::is_autocast_enabled(at::kCUDA), at::autocast::get_autocast_dtype(at::kCUDA)};
}
#else
void set_autocast(bool cuda, bool on, at::ScalarType dt)
{
    if (cuda) {
        at::autocast::set_enabled(on);
        at::autocast::set_autocast_gpu_dtype(dt);
    } else {
        at::autocast::set_cpu_enabled(on);
        at::autocast::set_autocast_cpu_dtype(dt);
    }
}
autocast_frame current()
{
    return {at::autocast::is_cpu_enabled(), at::autocast::get_autocast_cpu_dtype(), at::autocast::is_enabled(),
            at::autocast::get_autocast_gpu_dtype()};
}
#endif

} // namespace

extern "C" em_status emi_autocast_begin(em_precision precision, em_device device)
{
    EM_TRY
        autocast_stack.push_back(current());
        at::ScalarType dt = precision == EM_PRECISION_16_MIXED ? at::kHalf : at::kBFloat16;
        bool cuda = device.type == EM_CUDA;
        if (precision != EM_PRECISION_32_TRUE) {
            set_autocast(cuda, true, dt);
            at::autocast::increment_nesting();
        }
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" void emi_autocast_end(void)
{
    try {
        if (autocast_stack.empty())
            return;
        autocast_frame f = autocast_stack.back();
        autocast_stack.pop_back();
        if (at::autocast::decrement_nesting() == 0)
            at::autocast::clear_cache();
        set_autocast(false, f.cpu_enabled, f.cpu_dtype);
        set_autocast(true, f.cuda_enabled, f.cuda_dtype);
    } catch (...) {
    }
}

struct emi_rng_state {
    at::Tensor cpu;
};

extern "C" emi_rng_state *emi_rng_save(void)
{
    EM_TRY
        auto gen = at::detail::getDefaultCPUGenerator();
        std::lock_guard<std::mutex> lock(gen.mutex());
        return new emi_rng_state{gen.get_state()};
    EM_CATCH(nullptr)
}

extern "C" void emi_rng_restore(emi_rng_state *s)
{
    if (s == nullptr)
        return;
    try {
        auto gen = at::detail::getDefaultCPUGenerator();
        std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_state(s->cpu);
    } catch (const c10::Error &e) {
        emi_fail_torch("emi_rng_restore", e.what_without_backtrace());
    } catch (...) {
        emi_fail_torch("emi_rng_restore", "unknown C++ exception");
    }
    delete s;
}
