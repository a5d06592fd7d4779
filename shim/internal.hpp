// shim/internal.hpp: the C++ side of ember's handles, shared by shim/*.cpp. Never included by src/.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>
#include <vector>

#include "backend.h"
#include "compat.h"

// ---- handles --------------------------------------------------------------------------------------

// Who frees a tensor handle.
enum emi_owner : int {
    EMI_OWNER_CALLER = 0,   // the user frees it with em_tensor_free()
    EMI_OWNER_SCOPE = 1,    // the scope at `depth` frees it
    EMI_OWNER_BORROWED = 2, // a layer, a parameter list or an optimizer frees it
};

struct em_tensor {
    at::Tensor t;
    int owner = EMI_OWNER_CALLER;
    int depth = 0; // scope depth (1-based) when owner == EMI_OWNER_SCOPE
};

struct em_generator {
    at::Generator gen;
};

struct em_params {
    std::vector<em_tensor *> items; // EMI_OWNER_BORROWED handles, freed with the list
};

// ---- making handles (shim/core.cpp) ----------------------------------------------------------------

// A new handle for `t`, owned by the innermost scope or, with none open, by the caller.
em_tensor *emi_wrap(at::Tensor t);
// A new handle owned by a container (a layer, a list); freed with emi_borrowed_free().
em_tensor *emi_borrowed(at::Tensor t);
void emi_borrowed_free(em_tensor *h);

// em_params helpers used by nn/optim.
em_params *emi_params_from(const std::vector<at::Tensor> &ts);
std::vector<at::Tensor> emi_params_tensors(const em_params *p);

// ---- conversions ------------------------------------------------------------------------------------

at::ScalarType emi_scalar_type(em_dtype d);
em_dtype emi_dtype_of(at::ScalarType s, bool *ok);
at::Device emi_device(em_device d);
em_device emi_device_of(const at::Device &d);
at::TensorOptions emi_options(const em_tensor_opts *o);
std::string emi_shape_str(const at::Tensor &t);
bool emi_check_shape(const char *func, const int64_t *shape, int ndim);

// ---- the exception barrier ----------------------------------------------------------------------------
// tch-rs's PROTECT, extended: catches everything, keeps messages to one line, names the function.
// No C++ exception crosses extern "C".

// Record the exception being handled as `func`'s error: "func: <libtorch's one-line message>",
// "func: out of memory" (EM_ENOMEM) or "func: unknown C++ exception". Call only from a catch block.
void emi_fail_current_exception(const char *func) noexcept;

#define EM_TRY try {
#define EM_CATCH(on_error)                                              \
    }                                                                   \
    catch (...) {                                                       \
        emi_fail_current_exception(__func__);                           \
    }                                                                   \
    return on_error;

// The barrier as a function, for a helper that serves several extern "C" functions: `body()`, or
// `on_error` with what it threw recorded under `func` (the extern "C" function's __func__).
template <class R, class Body> R emi_guard(const char *func, R on_error, Body &&body) noexcept
{
    try {
        return body();
    } catch (...) {
        emi_fail_current_exception(func);
    }
    return on_error;
}

// ---- the shapes most extern "C" functions share ------------------------------------------------------
// A NULL handle returns at once with nothing recorded (the call that made it NULL recorded why); the
// work runs behind the barrier, its errors recorded under `func`.

// A new tensor computed from one: op(a->t) in a new handle (emi_wrap); NULL for a NULL `a`.
template <class Op> em_tensor *emi_tensor_op(const char *func, const em_tensor *a, Op &&op)
{
    if (a == nullptr)
        return nullptr;
    return emi_guard<em_tensor *>(func, nullptr, [&] { return emi_wrap(op(a->t)); });
}

// Work on one tensor in place (or on its autograd state): EM_OK; EM_EINVAL for a NULL `h` (not
// recorded); EM_ETORCH when torch refuses.
template <class Handle, class Op> em_status emi_tensor_do(const char *func, Handle *h, Op &&op)
{
    if (h == nullptr)
        return EM_EINVAL;
    return emi_guard(func, EM_ETORCH, [&] {
        op(h->t);
        return EM_OK;
    });
}

// torch 1.13's zero_grad for one parameter (nn.Module.zero_grad and Optimizer.zero_grad, foreach=False):
// drop the gradient, or detach it (requires_grad off when it has no graph) and zero it. No gradient: nothing.
void emi_zero_grad(at::Tensor &param, bool set_to_none);
