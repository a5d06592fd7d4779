// shim/runtime.cpp: autocast (mixed precision) and the global RNG state, for the loop in src/.
#include "internal.hpp"

#include <ATen/core/Generator.h>
#include <ATen/CPUGeneratorImpl.h>

namespace {

thread_local std::vector<emi::compat::autocast_frame> autocast_stack;

} // namespace

extern "C" em_status emi_autocast_begin(em_dtype dtype, em_device device)
{
    if (dtype != EM_BF16 && dtype != EM_F16)
        return emi_fail(EM_EINVAL, "emi_autocast_begin: autocast runs in bfloat16 or float16 (got %s)",
                        em_dtype_name(dtype));
    EM_TRY
        autocast_stack.push_back(emi::compat::autocast_state());
        bool cuda = device.type == EM_CUDA;
        emi::compat::set_autocast(cuda, true, emi_scalar_type(dtype));
        at::autocast::increment_nesting();
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" void emi_autocast_end(void)
{
    try {
        if (autocast_stack.empty())
            return;
        emi::compat::autocast_frame f = autocast_stack.back();
        autocast_stack.pop_back();
        if (at::autocast::decrement_nesting() == 0)
            at::autocast::clear_cache();
        emi::compat::set_autocast(false, f.cpu_enabled, f.cpu_dtype);
        emi::compat::set_autocast(true, f.cuda_enabled, f.cuda_dtype);
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
