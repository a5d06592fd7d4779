// shim/internal.hpp: the C++ side of ember's handles, shared by shim/*.cpp. Never included by src/.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "backend.h"
#include "compat.h"

// ---- handles --------------------------------------------------------------------------------------
//
// API armor (SQLite's): every handle type starts with a 32-bit tag, its type's magic while it lives
// and EMI_MAGIC_FREED once freed. Every public function checks the tag of each handle it takes (one
// load and one compare on the fast path: emi_live); the free functions poison it and keep the freed
// shell on a bounded per-thread quarantine (emi_retire) instead of returning it to malloc at once, so
// that a double free or a use after free finds the poisoned tag rather than reused memory. Best
// effort: a handle used again after 4096 later frees may have been reused.
enum : uint32_t {
    EMI_MAGIC_TENSOR = 0x454d5431u,    // "EMT1"
    EMI_MAGIC_NN = 0x454d4e31u,        // "EMN1"
    EMI_MAGIC_PARAMS = 0x454d5031u,    // "EMP1"
    EMI_MAGIC_OPTIMIZER = 0x454d4f31u, // "EMO1"
    EMI_MAGIC_GENERATOR = 0x454d4731u, // "EMG1"
    EMI_MAGIC_FREED = EMI_HANDLE_FREED, // shim/backend.h: src/'s handles (trainer, loader, ...) share it

};
enum { EMI_QUARANTINE = 4096 };

// Who frees a tensor handle.
enum emi_owner : int {
    EMI_OWNER_CALLER = 0,   // the user frees it with em_tensor_free()
    EMI_OWNER_SCOPE = 1,    // the scope at `depth` frees it
    EMI_OWNER_BORROWED = 2, // a layer, a parameter list or an optimizer frees it
};

struct em_tensor {
    static constexpr uint32_t kMagic = EMI_MAGIC_TENSOR;
    static constexpr const char *kNoun = "tensor";
    uint32_t magic = kMagic; // first: see "API armor" above
    at::Tensor t;
    int owner = EMI_OWNER_CALLER;
    int depth = 0; // scope depth (1-based) when owner == EMI_OWNER_SCOPE
};

struct em_generator {
    static constexpr uint32_t kMagic = EMI_MAGIC_GENERATOR;
    static constexpr const char *kNoun = "generator";
    uint32_t magic = kMagic; // first: see "API armor" above
    at::Generator gen;
    explicit em_generator(at::Generator g) : gen(std::move(g)) {}
};

struct em_params {
    static constexpr uint32_t kMagic = EMI_MAGIC_PARAMS;
    static constexpr const char *kNoun = "parameter list";
    uint32_t magic = kMagic; // first: see "API armor" above
    std::vector<em_tensor *> items; // EMI_OWNER_BORROWED handles, freed with the list
};

// ---- checking and retiring handles (shim/core.cpp) ------------------------------------------------------

// The tag of a handle's memory (live or retired). Never called with NULL.
inline uint32_t emi_tag_of(const void *h)
{
    uint32_t m;
    std::memcpy(&m, h, sizeof m);
    return m;
}

// Whether `h` is a live handle of its type: the fast path of every entry check.
template <class H> inline bool emi_live(const H *h)
{
    return __builtin_expect(h != nullptr && emi_tag_of(h) == H::kMagic, 1);
}

// The slow path of a check that failed: NULL: EM_EINVAL, recorded as "func: argument N is NULL" when
// `record_null` (kept only if no error is recorded yet, so a chain of ops reports its first failure);
// a freed handle or a pointer that is no `noun` handle: EM_EMISUSE, always recorded.
em_status emi_bad_handle(const char *func, int arg, const void *h, uint32_t magic, const char *noun,
                         bool record_null) noexcept;

// The entry check: EM_OK for a live handle, else emi_bad_handle's status (`arg` is 1-based).
template <class H> inline em_status emi_check(const char *func, int arg, const H *h, bool record_null = false)
{
    if (emi_live(h))
        return EM_OK;
    return emi_bad_handle(func, arg, h, H::kMagic, H::kNoun, record_null);
}

// Keep `shell` (already destroyed, its tag poisoned) out of malloc for the next EMI_QUARANTINE frees
// of this thread; then ::operator delete.
void emi_quarantine(void *shell) noexcept;

// Destroy a handle, poison its tag, quarantine its memory. For handles made with `new`.
template <class H> void emi_retire(H *h) noexcept
{
    h->~H();
    const uint32_t dead = EMI_MAGIC_FREED;
    std::memcpy(static_cast<void *>(h), &dead, sizeof dead);
    emi_quarantine(h);
}

// Thrown (inside a barrier) where a bad handle is found deep in a helper: the barrier records
// EM_EMISUSE with what() rather than a libtorch error.
struct emi_misuse : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The generator behind `g` (NULL: the default one); a freed or foreign handle throws emi_misuse.
inline c10::optional<at::Generator> emi_generator_of(const char *func, em_generator *g)
{
    if (g == nullptr)
        return c10::nullopt;
    if (!emi_live(g))
        throw emi_misuse(std::string(func) + ": the generator is " +
                         (emi_tag_of(g) == EMI_MAGIC_FREED ? "freed (em_generator_free was called on it)"
                                                           : "not a valid generator handle (freed long ago, or "
                                                             "a pointer of another kind)"));
    return g->gen;
}

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
    } catch (const emi_misuse &e) { // a bad handle found inside: EM_EMISUSE, also as the status returned
        emi_fail(EM_EMISUSE, "%s", e.what());
        if constexpr (std::is_same_v<R, em_status>)
            return EM_EMISUSE;
    } catch (...) {
        emi_fail_current_exception(func);
    }
    return on_error;
}

// ---- the shapes most extern "C" functions share ------------------------------------------------------
// Each handle is checked first (emi_check): a freed handle is EM_EMISUSE, recorded; a NULL one returns at
// once, recorded as "func: argument N is NULL" for the ops when emi_ops_record_null (a NULL with an error
// already recorded keeps that first message: a chain of ops is checked once at its end). The work runs
// behind the barrier, its errors recorded under `func`.

// Whether an op given a NULL tensor records "func: argument N is NULL" (include/ember/common.h, "Errors").
constexpr bool emi_ops_record_null = true;

// A new tensor computed from one: op(a->t) in a new handle (emi_wrap); NULL for a NULL or freed `a`
// (argument `arg`).
template <class Op> em_tensor *emi_tensor_op(const char *func, const em_tensor *a, Op &&op, int arg = 1)
{
    if (emi_check(func, arg, a, emi_ops_record_null) != EM_OK)
        return nullptr;
    return emi_guard<em_tensor *>(func, nullptr, [&] { return emi_wrap(op(a->t)); });
}

// Work on one tensor in place (or on its autograd state): EM_OK; EM_EINVAL for a NULL `h`, EM_EMISUSE for
// a freed one; EM_ETORCH when torch refuses.
template <class Handle, class Op> em_status emi_tensor_do(const char *func, Handle *h, Op &&op)
{
    if (em_status st = emi_check(func, 1, h, emi_ops_record_null); st != EM_OK)
        return st;
    return emi_guard(func, EM_ETORCH, [&] {
        op(h->t);
        return EM_OK;
    });
}

// torch 1.13's zero_grad for one parameter (nn.Module.zero_grad and Optimizer.zero_grad, foreach=False):
// drop the gradient, or detach it (requires_grad off when it has no graph) and zero it. No gradient: nothing.
void emi_zero_grad(at::Tensor &param, bool set_to_none);
