// shim/runtime.cpp: autocast (mixed precision), the grad scaler's unscaling and the global RNG state,
// for src/.
#include "optim_internal.hpp"

#include <algorithm>
#include <cstring>

#include <ATen/core/Generator.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>

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

// The generators' states as bytes, for checkpoints (src/resume.c): torch.get_rng_state() /
// torch.cuda.get_rng_state(i) and their setters.
namespace {

at::Generator rng_generator(int device)
{
    if (device < 0)
        return at::detail::getDefaultCPUGenerator();
    // The context's lookup: the CUDA hooks' getter is getDefaultCUDAGenerator in libtorch 1.13 and
    // getDefaultGenerator (AcceleratorHooksInterface) in 2.x; this one call exists in both.
    return at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device)));
}

} // namespace

extern "C" em_tensor *emi_rng_get_state(int device)
{
    EM_TRY
        at::Generator gen = rng_generator(device);
        std::lock_guard<std::mutex> lock(gen.mutex());
        return emi_wrap(gen.get_state().clone());
    EM_CATCH(nullptr)
}

extern "C" em_status emi_rng_set_state(int device, const em_tensor *state)
{
    if (state == nullptr || !emi_live(state))
        return emi_fail(EM_EINVAL, "emi_rng_set_state: the state is not a tensor");
    EM_TRY
        at::Tensor t = state->t;
        if (t.scalar_type() != at::kByte || t.dim() != 1)
            return emi_fail(EM_EINVAL, "the generator state must be a uint8 vector");
        at::Generator gen = rng_generator(device);
        // torch checks the state's size before it changes anything (no probe on a clone: 1.13's
        // Generator::clone leaks its copy)
        std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_state(t.contiguous());
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" em_status em_generator_get_state(em_generator *g, uint8_t *out, size_t cap, size_t *size)
{
    if (g == nullptr || size == nullptr || (cap > 0 && out == nullptr))
        return emi_fail(EM_EINVAL, "em_generator_get_state: NULL argument");
    EM_TRY
        at::Generator gen = *emi_generator_of("em_generator_get_state", g);
        at::Tensor st;
        {
            std::lock_guard<std::mutex> lock(gen.mutex());
            st = gen.get_state().contiguous();
        }
        size_t n = static_cast<size_t>(st.numel());
        *size = n;
        if (cap > 0)
            std::memcpy(out, st.data_ptr<uint8_t>(), std::min(cap, n));
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" em_status em_generator_set_state(em_generator *g, const uint8_t *state, size_t size)
{
    if (g == nullptr || state == nullptr)
        return emi_fail(EM_EINVAL, "em_generator_set_state: NULL argument");
    EM_TRY
        at::Generator gen = *emi_generator_of("em_generator_set_state", g);
        at::Tensor t = at::empty({static_cast<int64_t>(size)}, at::kByte);
        std::memcpy(t.data_ptr<uint8_t>(), state, size);
        std::lock_guard<std::mutex> lock(gen.mutex()); // torch checks the size before changing anything
        gen.set_state(t);
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

// ---- AMP: what the grad scaler (src/grad_scaler.c) and the precision plugin need -------------------------

extern "C" bool emi_autocast_supported(em_dtype dtype, em_device device)
{
    if (dtype == EM_BF16)
        return true;
    return dtype == EM_F16 && (device.type == EM_CUDA || emi::compat::cpu_autocast_f16);
}

extern "C" void emi_optimizer_amp_traits(em_optimizer *opt, bool *handles_unscaling, bool *requires_closure)
{
    *handles_unscaling = *requires_closure = false;
    try {
        const em_optimizer *base = emi_optimizer_base(opt);
        if (base->kind == EMI_OPT_LBFGS)
            *requires_closure = true;
        if (base->kind == EMI_OPT_C && base->ops != nullptr && base->ops->version >= 2) {
            *handles_unscaling = base->ops->step_supports_amp_scaling;
            *requires_closure = base->ops->requires_closure;
        }
    } catch (...) {
    }
}

extern "C" em_status emi_amp_unscale(em_optimizer *opt, float inv_scale, bool allow_fp16, int *found_inf)
{
    *found_inf = -1;
    EM_TRY
        // torch's GradScaler._unscale_grads_: the gradients by device and dtype, one fused call each
        struct device_group {
            at::Device device;
            at::Tensor found, inv;
            std::vector<std::pair<at::ScalarType, std::vector<at::Tensor>>> by_dtype;
        };
        std::vector<device_group> groups;
        for (const at::Tensor &p : emi_optimizer_params(emi_optimizer_base(opt))) {
            const at::Tensor &g = p.grad();
            if (!g.defined())
                continue;
            if (!allow_fp16 && g.scalar_type() == at::kHalf)
                return emi_fail(EM_EINVAL, "em_grad_scaler_unscale: Attempting to unscale FP16 gradients.");
            auto dev = std::find_if(groups.begin(), groups.end(), [&](const device_group &d) { return d.device == g.device(); });
            if (dev == groups.end()) {
                auto fo = at::TensorOptions().dtype(at::kFloat).device(g.device());
                groups.push_back({g.device(), at::zeros({1}, fo), at::full({1}, inv_scale, fo), {}});
                dev = groups.end() - 1;
            }
            auto dt = std::find_if(dev->by_dtype.begin(), dev->by_dtype.end(),
                                   [&](const auto &e) { return e.first == g.scalar_type(); });
            if (dt == dev->by_dtype.end()) {
                dev->by_dtype.push_back({g.scalar_type(), {}});
                dt = dev->by_dtype.end() - 1;
            }
            dt->second.push_back(g);
        }
        at::NoGradGuard no_grad;
        double total = 0;
        for (device_group &d : groups) {
            for (auto &e : d.by_dtype) {
                if (emi::compat::amp_unscale_native(d.device)) {
                    at::_amp_foreach_non_finite_check_and_unscale_(e.second, d.found, d.inv);
                } else {
                    // the fallback (docs/LIBTORCH_NOTES.md): found_inf = max(found_inf, !isfinite(g).all()),
                    // then g *= inv_scale, also when inf was found (the native kernel multiplies too)
                    at::Tensor inv = d.inv.squeeze(0); // 0-dim: a float16 gradient stays float16
                    for (at::Tensor &g : e.second) {
                        if (!at::isfinite(g).all().item<bool>())
                            d.found.fill_(1.0);
                        g.mul_(inv);
                    }
                }
            }
            total += d.found.item<double>();
        }
        if (!groups.empty())
            *found_inf = total != 0 ? 1 : 0;
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}
