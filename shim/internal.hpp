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

#define EM_TRY try {
#define EM_CATCH(on_error)                                              \
    }                                                                   \
    catch (const c10::Error &e) {                                       \
        emi_fail_torch(__func__, e.what_without_backtrace());           \
    }                                                                   \
    catch (const std::bad_alloc &) {                                    \
        emi_fail(EM_ENOMEM, "%s: out of memory", __func__);             \
    }                                                                   \
    catch (const std::exception &e) {                                   \
        emi_fail_torch(__func__, e.what());                             \
    }                                                                   \
    catch (...) {                                                       \
        emi_fail_torch(__func__, "unknown C++ exception");              \
    }                                                                   \
    return on_error;
