// shim/core.cpp: tensor handles, scopes, generators, factories, inspection, autograd, parameter lists.
//
// One C function wraps one libtorch concept. Every extern "C" function catches everything (EM_TRY /
// EM_CATCH, or emi_guard in the helpers of internal.hpp): no C++ exception crosses into C.
#include "internal.hpp"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <cstdarg>
#include <cstring>
#include <sstream>

// ---- the exception barrier ----------------------------------------------------------------------------

void emi_fail_current_exception(const char *func) noexcept
{
    try {
        throw;
    } catch (const c10::Error &e) {
        emi_fail_torch(func, e.what_without_backtrace());
    } catch (const std::bad_alloc &) {
        emi_fail(EM_ENOMEM, "%s: out of memory", func);
    } catch (const emi_misuse &e) {
        emi_fail(EM_EMISUSE, "%s", e.what());
    } catch (const std::exception &e) {
        emi_fail_torch(func, e.what());
    } catch (...) {
        emi_fail_torch(func, "unknown C++ exception");
    }
}

// ---- the handle armor (internal.hpp) -----------------------------------------------------------------

em_status emi_bad_handle(const char *func, int arg, const void *h, uint32_t magic, const char *noun,
                         bool record_null) noexcept
{
    (void)magic;
    if (h == nullptr)
        return record_null ? emi_fail(EM_EINVAL, "%s: argument %d is NULL", func, arg) : EM_EINVAL;
    if (emi_tag_of(h) == EMI_MAGIC_FREED)
        return emi_fail(EM_EMISUSE,
                        "%s: argument %d is a freed %s (freed by its free function, with its owner, or at the end "
                        "of the scope that owned it)",
                        func, arg, noun);
    return emi_fail(EM_EMISUSE,
                    "%s: argument %d is not a valid %s handle (a handle freed long ago, or a pointer of "
                    "another kind)",
                    func, arg, noun);
}

namespace {

// Freed handle shells, kept from malloc for the next EMI_QUARANTINE frees of the thread (a ring
// allocated on first use). Per thread: no lock on the path of every scope's end. An entry with its
// low bit set came from malloc (src/'s handles, emi_handle_retire) and goes back with free(); the
// others with ::operator delete. Every handle is at least 8-byte aligned, so the bit is free.
struct quarantine_ring {
    void **ring = nullptr;
    size_t next = 0;
    ~quarantine_ring();
};
thread_local quarantine_ring quarantine;
thread_local bool quarantine_gone = false; // trivially destructible: readable after the ring is gone

const uintptr_t FROM_MALLOC = 1;

void release(void *entry) noexcept
{
    uintptr_t u = reinterpret_cast<uintptr_t>(entry);
    if (u & FROM_MALLOC)
        std::free(reinterpret_cast<void *>(u & ~FROM_MALLOC));
    else
        ::operator delete(entry); // nullptr: nothing
}

quarantine_ring::~quarantine_ring()
{
    quarantine_gone = true;
    if (ring == nullptr)
        return;
    for (size_t i = 0; i < EMI_QUARANTINE; i++)
        release(ring[i]);
    delete[] ring;
    ring = nullptr;
}

void quarantine_entry(void *entry) noexcept
{
    if (quarantine_gone) { // the thread is exiting
        release(entry);
        return;
    }
    quarantine_ring &q = quarantine;
    if (q.ring == nullptr) {
        q.ring = new (std::nothrow) void *[EMI_QUARANTINE]();
        if (q.ring == nullptr) {
            release(entry);
            return;
        }
    }
    void *old = q.ring[q.next];
    q.ring[q.next] = entry;
    q.next = (q.next + 1) % EMI_QUARANTINE;
    release(old);
}

} // namespace

void emi_quarantine(void *shell) noexcept
{
    quarantine_entry(shell);
}

extern "C" void emi_handle_retire(void *h)
{
    if (h == nullptr)
        return;
    const uint32_t dead = EMI_MAGIC_FREED;
    std::memcpy(h, &dead, sizeof dead);
    quarantine_entry(reinterpret_cast<void *>(reinterpret_cast<uintptr_t>(h) | FROM_MALLOC));
}

extern "C" em_status emi_handle_bad(const char *func, int arg, const void *h, const char *noun)
{
    return emi_bad_handle(func, arg, h, 0, noun, true);
}

extern "C" bool emi_handle_free_ok(const char *func, const void *h, uint32_t magic, const char *noun)
{
    if (h == nullptr)
        return false;
    const uint32_t tag = emi_tag_of(h);
    if (tag == magic)
        return true;
    if (tag == EMI_MAGIC_FREED)
        emi_fail(EM_EMISUSE, "%s: this %s was already freed (a double free, or its owner already released it)",
                 func, noun);
    else
        emi_fail(EM_EMISUSE, "%s: this pointer is not a live %s handle (freed long ago, or of another kind)", func,
                 noun);
    return false;
}

// The check at the top of each free function: true to go on freeing `h`; false for a freed handle or
// a pointer of another kind (recorded as EM_EMISUSE under `func`).
template <class H> static bool free_check(const char *func, const H *h)
{
    if (emi_live(h))
        return true;
    if (emi_tag_of(h) == EMI_MAGIC_FREED)
        emi_fail(EM_EMISUSE, "%s: this %s was already freed (a double free, or its owner already released it)",
                 func, H::kNoun);
    else
        emi_fail(EM_EMISUSE, "%s: this pointer is not a live %s handle (freed long ago, or of another kind)", func,
                 H::kNoun);
    return false;
}

// ---- scopes -------------------------------------------------------------------------------------------
// A thread-local stack of frames; each frame lists the handles it owns. Handles are usually kept or
// freed in LIFO order, so removals search from the end.

namespace {

enum { MAX_LOST = 64 };

struct scope_stack {
    std::vector<std::vector<em_tensor *>> frames;
    std::vector<std::vector<em_tensor *>> spare; // closed frames, kept with their capacity for reuse
    // em_scope_begin calls that failed for lack of memory, each at the number of frames open then:
    // the matching em_scope_end closes nothing, so the user's begin/end pairs stay matched. A fixed
    // array: recording one cannot fail (past MAX_LOST nested failures, the count is off).
    int lost[MAX_LOST];
    int nlost = 0;
    // The depth at or below which em_scope_end refuses to close (emi_scope_floor_push): the scopes
    // the trainer opened around the user's code.
    int floor = 0;
    int depth() const { return static_cast<int>(frames.size()) + nlost; }
    ~scope_stack()
    {
        // A thread that exits with scopes open: release what they hold.
        for (auto &f : frames)
            for (em_tensor *h : f)
                delete h;
    }
};

thread_local scope_stack scopes;

// em_no_grad_begin's saved modes; `lost` as in scope_stack.
struct no_grad_stack_t {
    std::vector<bool> saved;
    size_t lost[MAX_LOST];
    int nlost = 0;
};
thread_local no_grad_stack_t no_grad_stack;

void frame_remove(std::vector<em_tensor *> &frame, em_tensor *h)
{
    for (size_t i = frame.size(); i-- > 0;) {
        if (frame[i] == h) {
            frame.erase(frame.begin() + static_cast<std::ptrdiff_t>(i));
            return;
        }
    }
}

// Take a scope-owned handle out of its frame: the caller owns it afterwards.
void detach_from_scope(em_tensor *t)
{
    if (t->owner != EMI_OWNER_SCOPE)
        return;
    if (t->depth >= 1 && static_cast<size_t>(t->depth) <= scopes.frames.size())
        frame_remove(scopes.frames[static_cast<size_t>(t->depth - 1)], t);
    t->owner = EMI_OWNER_CALLER;
    t->depth = 0;
}

} // namespace

em_tensor *emi_wrap(at::Tensor t)
{
    auto *h = new em_tensor;
    h->t = std::move(t);
    if (!scopes.frames.empty()) {
        try {
            scopes.frames.back().push_back(h);
        } catch (...) {
            delete h; // not listed anywhere yet
            throw;
        }
        h->owner = EMI_OWNER_SCOPE;
        h->depth = static_cast<int>(scopes.frames.size());
    }
    return h;
}

em_tensor *emi_borrowed(at::Tensor t)
{
    auto *h = new em_tensor;
    h->t = std::move(t);
    h->owner = EMI_OWNER_BORROWED;
    return h;
}

void emi_borrowed_free(em_tensor *h)
{
    if (h != nullptr)
        emi_retire(h);
}

extern "C" void em_scope_begin(void)
{
    // a training loop opens and closes a scope per batch (and per closure call): reuse closed frames
    // so that a steady state allocates nothing here
    try {
        if (!scopes.spare.empty()) {
            scopes.frames.push_back(std::move(scopes.spare.back())); // strong guarantee: spare intact on a throw
            scopes.spare.pop_back();
        } else {
            scopes.frames.emplace_back();
        }
    } catch (...) {
        emi_fail_current_exception(__func__);
        if (scopes.nlost < MAX_LOST)
            scopes.lost[scopes.nlost++] = static_cast<int>(scopes.frames.size());
    }
}

extern "C" em_status em_scope_end(void)
{
    scope_stack &s = scopes;
    if (s.depth() == 0)
        return emi_fail(EM_ESTATE, "em_scope_end: no scope is open (unbalanced em_scope_begin/em_scope_end)");
    if (s.depth() <= s.floor)
        return emi_fail(EM_EMISUSE,
                        "em_scope_end: the innermost open scope is one ember opened (the trainer's scope around "
                        "each batch), not one of yours: unbalanced em_scope_begin/em_scope_end");
    if (s.nlost > 0 && s.lost[s.nlost - 1] == static_cast<int>(s.frames.size())) {
        s.nlost--; // its em_scope_begin failed: nothing to close
        return EM_OK;
    }
    std::vector<em_tensor *> frame = std::move(s.frames.back());
    s.frames.pop_back();
    for (em_tensor *h : frame)
        emi_retire(h);
    frame.clear();
    if (s.spare.size() < 16) {
        try {
            s.spare.push_back(std::move(frame));
        } catch (...) {
            // out of memory: the frame is simply not kept for reuse
        }
    }
    return EM_OK;
}

extern "C" int em_scope_depth(void)
{
    return scopes.depth();
}

extern "C" int emi_scope_floor_push(void)
{
    int prev = scopes.floor;
    scopes.floor = scopes.depth();
    return prev;
}

extern "C" void emi_scope_floor_pop(int prev)
{
    scopes.floor = prev;
}

extern "C" em_tensor *em_keep(em_tensor *t)
{
    if (emi_check(__func__, 1, t) != EM_OK)
        return nullptr;
    size_t depth = scopes.frames.size();
    if (t->owner != EMI_OWNER_SCOPE || static_cast<size_t>(t->depth) != depth)
        return t;
    if (depth >= 2) {
        try {
            scopes.frames[depth - 2].push_back(t); // first: on a throw t stays where it was
        } catch (...) {
            emi_fail_current_exception(__func__);
            return nullptr;
        }
        frame_remove(scopes.frames.back(), t);
        t->depth = static_cast<int>(depth - 1);
    } else {
        frame_remove(scopes.frames.back(), t);
        t->owner = EMI_OWNER_CALLER;
        t->depth = 0;
    }
    return t;
}

extern "C" em_tensor *emi_own(em_tensor *t)
{
    if (emi_check(__func__, 1, t) != EM_OK)
        return nullptr;
    detach_from_scope(t);
    return t;
}

extern "C" em_tensor *em_tensor_persist(em_tensor *t)
{
    if (emi_check(__func__, 1, t, emi_ops_record_null) != EM_OK)
        return nullptr;
    if (t->owner == EMI_OWNER_BORROWED) {
        emi_fail(EM_EINVAL, "em_tensor_persist: this handle is borrowed from a layer, a parameter list or an "
                            "optimizer, which frees it; em_tensor_persist(em_tensor_ref(t)) gives one of your own");
        return nullptr;
    }
    detach_from_scope(t);
    return t;
}

extern "C" const void *emi_tensor_id(const em_tensor *t)
{
    return emi_live(t) ? static_cast<const void *>(t->t.unsafeGetTensorImpl()) : nullptr;
}

extern "C" void em_tensor_free(em_tensor *t)
{
    if (t == nullptr || !free_check(__func__, t))
        return;
    if (t->owner == EMI_OWNER_BORROWED) {
        emi_fail(EM_EINVAL, "em_tensor_free: this handle is borrowed from a layer, a parameter list or "
                            "an optimizer; it is freed with its owner");
        return;
    }
    detach_from_scope(t); // a scope-owned tensor: taken out of its scope, then freed
    emi_retire(t);
}

extern "C" em_tensor *em_tensor_ref(const em_tensor *t)
{
    return emi_tensor_op(__func__, t, [](const at::Tensor &x) { return x; });
}

// ---- conversions --------------------------------------------------------------------------------------

at::ScalarType emi_scalar_type(em_dtype d)
{
    switch (d) {
    case EM_F32: return at::kFloat;
    case EM_F64: return at::kDouble;
    case EM_F16: return at::kHalf;
    case EM_BF16: return at::kBFloat16;
    case EM_I64: return at::kLong;
    case EM_I32: return at::kInt;
    case EM_U8: return at::kByte;
    case EM_BOOL: return at::kBool;
    }
    throw std::invalid_argument("unknown em_dtype " + std::to_string(static_cast<int>(d)));
}

em_dtype emi_dtype_of(at::ScalarType s, bool *ok)
{
    if (ok != nullptr)
        *ok = true;
    switch (s) {
    case at::kFloat: return EM_F32;
    case at::kDouble: return EM_F64;
    case at::kHalf: return EM_F16;
    case at::kBFloat16: return EM_BF16;
    case at::kLong: return EM_I64;
    case at::kInt: return EM_I32;
    case at::kByte: return EM_U8;
    case at::kBool: return EM_BOOL;
    default: break;
    }
    if (ok != nullptr)
        *ok = false;
    return EM_F32;
}

at::Device emi_device(em_device d)
{
    switch (d.type) {
    case EM_CPU: return at::Device(at::kCPU);
    case EM_CUDA: return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(d.index));
    }
    throw std::invalid_argument("unknown em_device_type " + std::to_string(static_cast<int>(d.type)));
}

em_device emi_device_of(const at::Device &d)
{
    if (d.is_cuda())
        return em_device{EM_CUDA, d.has_index() ? d.index() : 0};
    return em_device{EM_CPU, 0};
}

at::TensorOptions emi_options(const em_tensor_opts *o)
{
    em_tensor_opts def{};
    if (o == nullptr)
        o = &def;
    return at::TensorOptions().dtype(emi_scalar_type(o->dtype)).device(emi_device(o->device));
}

std::string emi_shape_str(const at::Tensor &t)
{
    std::ostringstream s;
    s << t.sizes();
    return s.str();
}

bool emi_check_shape(const char *func, const int64_t *shape, int ndim)
{
    if (ndim < 0 || ndim > EM_MAX_DIMS) {
        emi_fail(EM_EINVAL, "%s: ndim must be in 0..%d (got %d)", func, EM_MAX_DIMS, ndim);
        return false;
    }
    if (ndim > 0 && shape == nullptr) {
        emi_fail(EM_EINVAL, "%s: shape is NULL with ndim %d", func, ndim);
        return false;
    }
    bool empty = false;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            emi_fail(EM_EINVAL, "%s: dimension %d is negative (%lld)", func, i, static_cast<long long>(shape[i]));
            return false;
        }
        empty = empty || shape[i] == 0;
    }
    // a hostile shape whose product overflows int64 (signed overflow: undefined behaviour in torch's own
    // size arithmetic); a shape with a 0 holds no element whatever the other sizes
    int64_t numel = 1;
    for (int i = 0; i < ndim && !empty; i++) {
        if (__builtin_mul_overflow(numel, shape[i], &numel)) {
            emi_fail(EM_EINVAL, "%s: the shape's number of elements overflows int64 (at dimension %d, size %lld)",
                     func, i, static_cast<long long>(shape[i]));
            return false;
        }
    }
    return true;
}

static at::IntArrayRef shape_ref(const int64_t *shape, int ndim)
{
    return at::IntArrayRef(shape, static_cast<size_t>(ndim));
}

static at::Tensor finish(at::Tensor t, const em_tensor_opts *o)
{
    if (o != nullptr && o->requires_grad)
        t.requires_grad_(true);
    return t;
}

// opts->generator (checked: a freed one throws emi_misuse, recorded by the barrier as EM_EMISUSE under
// `emi_fn`, the extern "C" function's name: __func__ would name a lambda inside it).
#define generator_of(o) emi_generator_of(emi_fn, (o) == nullptr ? nullptr : (o)->generator)

// A factory's result, made behind the barrier: make() in a new handle, requires_grad as `opts` asks.
template <class Make> static em_tensor *made(const char *func, const em_tensor_opts *opts, Make &&make)
{
    return emi_guard<em_tensor *>(func, nullptr, [&] { return emi_wrap(finish(make(), opts)); });
}

// A factory that takes a shape: the shape checked (recorded), then make(sizes).
template <class Make>
static em_tensor *made_of_shape(const char *func, const int64_t *shape, int ndim, const em_tensor_opts *opts,
                                Make &&make)
{
    if (!emi_check_shape(func, shape, ndim))
        return nullptr;
    return made(func, opts, [&] { return make(shape_ref(shape, ndim)); });
}

// ---- version --------------------------------------------------------------------------------------------

extern "C" const char *em_torch_version(void)
{
    return TORCH_VERSION;
}

// ---- random numbers -------------------------------------------------------------------------------------

extern "C" void em_manual_seed(uint64_t seed)
{
    try {
        at::manual_seed(seed);
    } catch (...) {
        // manual_seed only fails when CUDA generators cannot be reached: the CPU one is seeded.
    }
}

extern "C" em_generator *em_generator_new(uint64_t seed)
{
    EM_TRY
        auto gen = at::detail::createCPUGenerator(seed);
        return new em_generator(gen);
    EM_CATCH(nullptr)
}

extern "C" void em_generator_free(em_generator *g)
{
    if (g == nullptr || !free_check(__func__, g))
        return;
    emi_retire(g);
}

// ---- factories ------------------------------------------------------------------------------------------

extern "C" size_t em_dtype_size(em_dtype dtype)
{
    switch (dtype) {
    case EM_F32: return 4;
    case EM_F64: return 8;
    case EM_F16: return 2;
    case EM_BF16: return 2;
    case EM_I64: return 8;
    case EM_I32: return 4;
    case EM_U8: return 1;
    case EM_BOOL: return 1;
    }
    return 0;
}

extern "C" const char *em_dtype_name(em_dtype dtype)
{
    switch (dtype) {
    case EM_F32: return "float32";
    case EM_F64: return "float64";
    case EM_F16: return "float16";
    case EM_BF16: return "bfloat16";
    case EM_I64: return "int64";
    case EM_I32: return "int32";
    case EM_U8: return "uint8";
    case EM_BOOL: return "bool";
    }
    return "unknown";
}

extern "C" em_tensor *em_tensor_from(const void *data, em_dtype dtype, const int64_t *shape, int ndim,
                                     const em_tensor_opts *opts)
{
    if (!emi_check_shape(__func__, shape, ndim))
        return nullptr;
    EM_TRY
        auto st = emi_scalar_type(dtype);
        int64_t numel = 1; // cannot overflow: emi_check_shape checked the product
        for (int i = 0; i < ndim && numel > 0; i++)
            numel *= shape[i];
        size_t bytes = 0;
        if (__builtin_mul_overflow(static_cast<size_t>(numel), em_dtype_size(dtype), &bytes)) {
            emi_fail(EM_EINVAL, "em_tensor_from: %lld elements of %s overflow size_t", static_cast<long long>(numel),
                     em_dtype_name(dtype));
            return nullptr;
        }
        if (numel > 0 && data == nullptr) {
            emi_fail(EM_EINVAL, "em_tensor_from: data is NULL for %lld elements", static_cast<long long>(numel));
            return nullptr;
        }
        at::Tensor t = at::empty(shape_ref(shape, ndim), at::TensorOptions().dtype(st));
        if (numel > 0)
            std::memcpy(t.data_ptr(), data, bytes);
        if (opts != nullptr && opts->device.type != EM_CPU)
            t = t.to(emi_device(opts->device));
        return emi_wrap(finish(std::move(t), opts));
    EM_CATCH(nullptr)
}

extern "C" em_tensor *em_tensor_from_f32(const float *data, const int64_t *shape, int ndim)
{
    return em_tensor_from(data, EM_F32, shape, ndim, nullptr);
}

extern "C" em_tensor *em_scalar_tensor(double value, const em_tensor_opts *opts)
{
    return made(__func__, opts, [&] { return at::scalar_tensor(value, emi_options(opts)); });
}

#define EMI_FACTORY(fname, expr)                                                               \
    extern "C" em_tensor *fname(const int64_t *shape, int ndim, const em_tensor_opts *opts)    \
    {                                                                                          \
        const char *emi_fn = __func__; /* generator_of() reports under it */                   \
        (void)emi_fn;                                                                          \
        return made_of_shape(__func__, shape, ndim, opts, [&](at::IntArrayRef sz) { return expr; }); \
    }

EMI_FACTORY(em_zeros, at::zeros(sz, emi_options(opts)))
EMI_FACTORY(em_ones, at::ones(sz, emi_options(opts)))
EMI_FACTORY(em_randn, at::randn(sz, generator_of(opts), emi_options(opts)))
EMI_FACTORY(em_rand, at::rand(sz, generator_of(opts), emi_options(opts)))

extern "C" em_tensor *em_full(const int64_t *shape, int ndim, double value, const em_tensor_opts *opts)
{
    return made_of_shape(__func__, shape, ndim, opts,
                         [&](at::IntArrayRef sz) { return at::full(sz, value, emi_options(opts)); });
}

extern "C" em_tensor *em_zeros_like(const em_tensor *t)
{
    return emi_tensor_op(__func__, t, [](const at::Tensor &x) { return at::zeros_like(x); });
}

extern "C" em_tensor *em_ones_like(const em_tensor *t)
{
    return emi_tensor_op(__func__, t, [](const at::Tensor &x) { return at::ones_like(x); });
}

extern "C" em_tensor *em_arange(double start, double end, double step, const em_tensor_opts *opts)
{
    if (step == 0 || (end - start) * step < 0) {
        emi_fail(EM_EINVAL, "em_arange: step %g cannot go from %g to %g", step, start, end);
        return nullptr;
    }
    return made(__func__, opts, [&] { return at::arange(start, end, step, emi_options(opts)); });
}

extern "C" em_tensor *em_linspace(double start, double end, int64_t steps, const em_tensor_opts *opts)
{
    if (steps < 0) {
        emi_fail(EM_EINVAL, "em_linspace: steps must be >= 0 (got %lld)", static_cast<long long>(steps));
        return nullptr;
    }
    return made(__func__, opts, [&] { return at::linspace(start, end, steps, emi_options(opts)); });
}

extern "C" em_tensor *em_randint(int64_t low, int64_t high, const int64_t *shape, int ndim,
                                 const em_tensor_opts *opts)
{
    if (high <= low) {
        emi_fail(EM_EINVAL, "em_randint: high (%lld) must be greater than low (%lld)",
                 static_cast<long long>(high), static_cast<long long>(low));
        return nullptr;
    }
    if (!emi_check_shape(__func__, shape, ndim))
        return nullptr;
    EM_TRY
        const char *emi_fn = __func__;
        auto o = emi_options(opts).dtype(at::kLong);
        return emi_wrap(at::randint(low, high, shape_ref(shape, ndim), generator_of(opts), o));
    EM_CATCH(nullptr)
}

extern "C" em_tensor *em_randperm(int64_t n, const em_tensor_opts *opts)
{
    if (n < 0) {
        emi_fail(EM_EINVAL, "em_randperm: n must be >= 0 (got %lld)", static_cast<long long>(n));
        return nullptr;
    }
    EM_TRY
        const char *emi_fn = __func__;
        auto o = emi_options(opts).dtype(at::kLong);
        return emi_wrap(at::randperm(n, generator_of(opts), o));
    EM_CATCH(nullptr)
}

// ---- inspection ----------------------------------------------------------------------------------------

extern "C" int em_tensor_dim(const em_tensor *t)
{
    if (emi_check(__func__, 1, t) != EM_OK)
        return -1;
    EM_TRY
        return static_cast<int>(t->t.dim());
    EM_CATCH(-1)
}

extern "C" int64_t em_tensor_size(const em_tensor *t, int dim)
{
    if (emi_check(__func__, 1, t) != EM_OK)
        return -1;
    EM_TRY
        int64_t nd = t->t.dim();
        int64_t d = dim < 0 ? dim + nd : dim;
        if (d < 0 || d >= nd) {
            emi_fail(EM_EINVAL, "em_tensor_size: dimension %d out of range for a %lld-dim tensor", dim,
                     static_cast<long long>(nd));
            return -1;
        }
        return t->t.size(d);
    EM_CATCH(-1)
}

extern "C" int em_tensor_shape(const em_tensor *t, int64_t *shape, int max)
{
    if (emi_check(__func__, 1, t) != EM_OK)
        return -1;
    EM_TRY
        int nd = static_cast<int>(t->t.dim());
        for (int i = 0; i < nd && i < max && shape != nullptr; i++)
            shape[i] = t->t.size(i);
        return nd;
    EM_CATCH(-1)
}

extern "C" int64_t em_tensor_numel(const em_tensor *t)
{
    if (emi_check(__func__, 1, t) != EM_OK)
        return -1;
    EM_TRY
        return t->t.numel();
    EM_CATCH(-1)
}

extern "C" em_dtype em_tensor_dtype(const em_tensor *t)
{
    if (emi_check(__func__, 1, t) != EM_OK)
        return EM_F32;
    EM_TRY
        return emi_dtype_of(t->t.scalar_type(), nullptr);
    EM_CATCH(EM_F32)
}

extern "C" em_device em_tensor_device(const em_tensor *t)
{
    if (emi_check(__func__, 1, t) != EM_OK)
        return em_device{EM_CPU, 0};
    EM_TRY
        return emi_device_of(t->t.device());
    EM_CATCH((em_device{EM_CPU, 0}))
}

extern "C" double em_tensor_item(const em_tensor *t)
{
    if (emi_check(__func__, 1, t) != EM_OK)
        return NAN;
    if (t->t.numel() != 1) {
        emi_fail(EM_EINVAL, "em_tensor_item: the tensor has %lld elements %s, item() needs exactly one",
                 static_cast<long long>(t->t.numel()), emi_shape_str(t->t).c_str());
        return NAN;
    }
    EM_TRY
        return t->t.item<double>();
    EM_CATCH(NAN)
}

extern "C" em_status em_tensor_copy_to(const em_tensor *t, void *out, size_t capacity, em_dtype dtype)
{
    if (em_status st = emi_check(__func__, 1, t); st != EM_OK)
        return st;
    EM_TRY
        size_t need = static_cast<size_t>(t->t.numel()) * em_dtype_size(dtype);
        if (capacity < need)
            return emi_fail(EM_EINVAL, "em_tensor_copy_to: the buffer holds %zu bytes, %s of %s needs %zu",
                            capacity, emi_shape_str(t->t).c_str(), em_dtype_name(dtype), need);
        if (need > 0 && out == nullptr)
            return emi_fail(EM_EINVAL, "em_tensor_copy_to: out is NULL");
        at::Tensor c = t->t.detach().to(at::kCPU, emi_scalar_type(dtype)).contiguous();
        if (need > 0)
            std::memcpy(out, c.data_ptr(), need);
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" size_t em_tensor_describe(const em_tensor *t, char *buf, size_t len)
{
    std::string s;
    try {
        if (t == nullptr) {
            s = "tensor(NULL)";
        } else if (!emi_live(t)) {
            s = emi_tag_of(t) == EMI_MAGIC_FREED ? "tensor(freed)" : "tensor(not a tensor handle)";
        } else {
            bool ok = false;
            em_dtype d = emi_dtype_of(t->t.scalar_type(), &ok);
            std::ostringstream o;
            o << "tensor(" << (ok ? em_dtype_name(d) : c10::toString(t->t.scalar_type())) << emi_shape_str(t->t)
              << ", " << t->t.device();
            if (t->t.requires_grad())
                o << ", requires_grad";
            o << ")";
            s = o.str();
        }
    } catch (...) {
        s = "tensor(?)";
    }
    if (buf != nullptr && len > 0) {
        size_t n = s.size() < len - 1 ? s.size() : len - 1;
        std::memcpy(buf, s.data(), n);
        buf[n] = '\0';
    }
    return s.size();
}

extern "C" em_status em_tensor_print(const em_tensor *t, FILE *f)
{
    if (em_status st = emi_check(__func__, 1, t, true); st != EM_OK)
        return st;
    if (f == nullptr)
        return emi_fail(EM_EINVAL, "em_tensor_print: argument 2 (the FILE) is NULL");
    EM_TRY
        std::ostringstream o;
        o << t->t << "\n";
        std::string s = o.str();
        fwrite(s.data(), 1, s.size(), f);
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

// ---- conversion -----------------------------------------------------------------------------------------

extern "C" em_tensor *em_to_device(const em_tensor *t, em_device device)
{
    return emi_tensor_op(__func__, t, [&](const at::Tensor &x) { return x.to(emi_device(device)); });
}

extern "C" em_tensor *em_to_dtype(const em_tensor *t, em_dtype dtype)
{
    return emi_tensor_op(__func__, t, [&](const at::Tensor &x) { return x.to(emi_scalar_type(dtype)); });
}

extern "C" em_tensor *em_clone(const em_tensor *t)
{
    return emi_tensor_op(__func__, t, [](const at::Tensor &x) { return x.clone(); });
}

extern "C" em_tensor *em_contiguous(const em_tensor *t)
{
    return emi_tensor_op(__func__, t, [](const at::Tensor &x) { return x.contiguous(); });
}

extern "C" em_status em_set_num_threads(int n)
{
    if (n < 1)
        return emi_fail(EM_EINVAL, "em_set_num_threads: n must be >= 1 (got %d)", n);
    EM_TRY
        at::set_num_threads(n);
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" int em_get_num_threads(void)
{
    try {
        return at::get_num_threads();
    } catch (...) {
        return 1;
    }
}

extern "C" bool em_cuda_is_available(void)
{
    try {
        return at::hasCUDA() && em_cuda_device_count() > 0;
    } catch (...) {
        return false;
    }
}

extern "C" int64_t em_cuda_device_count(void)
{
    try {
        if (!at::hasCUDA())
            return 0;
        return emi::compat::device_count_as_int(at::detail::getCUDAHooks().getNumGPUs());
    } catch (...) {
        return 0;
    }
}

// ---- autograd -------------------------------------------------------------------------------------------

extern "C" em_status em_tensor_set_requires_grad(em_tensor *t, bool flag)
{
    return emi_tensor_do(__func__, t, [&](at::Tensor &x) { x.requires_grad_(flag); });
}

extern "C" bool em_tensor_requires_grad(const em_tensor *t)
{
    if (emi_check(__func__, 1, t) != EM_OK)
        return false;
    EM_TRY
        return t->t.requires_grad();
    EM_CATCH(false)
}

extern "C" em_tensor *em_tensor_grad(const em_tensor *t)
{
    if (emi_check(__func__, 1, t, emi_ops_record_null) != EM_OK)
        return nullptr;
    EM_TRY
        const at::Tensor &g = t->t.grad();
        if (!g.defined())
            return nullptr;
        return emi_wrap(g);
    EM_CATCH(nullptr)
}

// Tensor.grad = g. torch 1.13's setter (THPVariable_set_grad) refuses a gradient of another type
// (dtype or device type), on another CUDA device, or of another size; and the tensor itself.
extern "C" em_status em_tensor_set_grad(em_tensor *t, const em_tensor *grad)
{
    if (em_status st = emi_check(__func__, 1, t, emi_ops_record_null); st != EM_OK)
        return st;
    if (grad != nullptr) {
        if (em_status st = emi_check(__func__, 2, grad); st != EM_OK)
            return st;
        const at::Tensor &x = t->t, &g = grad->t;
        if (x.is_same(g))
            return emi_fail(EM_EINVAL, "em_tensor_set_grad: can't assign Variable as its own grad");
        if (g.scalar_type() != x.scalar_type() || g.device().type() != x.device().type() ||
            g.layout() != x.layout())
            return emi_fail(EM_EINVAL,
                            "em_tensor_set_grad: assigned grad has data of a different type (a %s gradient on %s "
                            "for a %s tensor on %s)",
                            c10::toString(g.scalar_type()), g.device().str().c_str(), c10::toString(x.scalar_type()),
                            x.device().str().c_str());
        if (x.is_cuda() && g.get_device() != x.get_device())
            return emi_fail(EM_EINVAL, "em_tensor_set_grad: assigned grad has data located on a different device");
        if (!g.sizes().equals(x.sizes()))
            return emi_fail(EM_EINVAL,
                            "em_tensor_set_grad: assigned grad has data of a different size (a %s gradient for a %s "
                            "tensor)",
                            emi_shape_str(g).c_str(), emi_shape_str(x).c_str());
    }
    return emi_tensor_do(__func__, t,
                         [&](at::Tensor &x) { x.mutable_grad() = grad != nullptr ? grad->t : at::Tensor(); });
}

extern "C" em_tensor *em_detach(const em_tensor *t)
{
    return emi_tensor_op(__func__, t, [](const at::Tensor &x) { return x.detach(); });
}

extern "C" em_status em_backward(const em_tensor *t)
{
    return emi_tensor_do(__func__, t, [](const at::Tensor &x) { x.backward(); });
}

extern "C" em_status em_backward_ex(const em_tensor *t, const em_tensor *grad, bool retain_graph)
{
    if (grad != nullptr)
        if (em_status st = emi_check(__func__, 2, grad); st != EM_OK)
            return st;
    return emi_tensor_do(__func__, t, [&](const at::Tensor &x) {
        x.backward(grad != nullptr ? grad->t : at::Tensor(), retain_graph);
    });
}

extern "C" void em_no_grad_begin(void)
{
    no_grad_stack_t &s = no_grad_stack;
    try {
        s.saved.push_back(c10::GradMode::is_enabled());
    } catch (...) {
        // out of memory: recorded; grad mode stays as it is and the matching end restores nothing
        emi_fail_current_exception(__func__);
        if (s.nlost < MAX_LOST)
            s.lost[s.nlost++] = s.saved.size();
        return;
    }
    c10::GradMode::set_enabled(false);
}

extern "C" em_status em_no_grad_end(void)
{
    no_grad_stack_t &s = no_grad_stack;
    if (s.nlost > 0 && s.lost[s.nlost - 1] == s.saved.size()) {
        s.nlost--;
        return EM_OK;
    }
    if (s.saved.empty())
        return emi_fail(EM_ESTATE, "em_no_grad_end: no em_no_grad_begin() is open");
    c10::GradMode::set_enabled(s.saved.back());
    s.saved.pop_back();
    return EM_OK;
}

extern "C" bool em_is_grad_enabled(void)
{
    return c10::GradMode::is_enabled();
}

extern "C" int emi_no_grad_depth(void)
{
    return static_cast<int>(no_grad_stack.saved.size()) + no_grad_stack.nlost; // lost begins end too
}

void emi_zero_grad(at::Tensor &param, bool set_to_none)
{
    if (!param.grad().defined())
        return;
    at::Tensor &grad = param.mutable_grad();
    if (set_to_none) {
        grad.reset();
    } else {
        if (grad.grad_fn() != nullptr)
            grad.detach_();
        else
            grad.requires_grad_(false);
        grad.zero_();
    }
}

// ---- parameter lists ----------------------------------------------------------------------------------

em_params *emi_params_from(const std::vector<at::Tensor> &ts)
{
    auto *p = new em_params;
    p->items.reserve(ts.size());
    for (const auto &t : ts)
        p->items.push_back(emi_borrowed(t));
    return p;
}

std::vector<at::Tensor> emi_params_tensors(const em_params *p)
{
    std::vector<at::Tensor> out;
    if (!emi_live(p))
        return out;
    out.reserve(p->items.size());
    for (em_tensor *h : p->items)
        out.push_back(h->t);
    return out;
}

extern "C" em_params *em_params_new(void)
{
    EM_TRY
        return new em_params;
    EM_CATCH(nullptr)
}

extern "C" em_status em_params_add(em_params *p, const em_tensor *t)
{
    if (em_status st = emi_check(__func__, 1, p, true); st != EM_OK)
        return st;
    if (em_status st = emi_check(__func__, 2, t, true); st != EM_OK)
        return st;
    EM_TRY
        p->items.push_back(emi_borrowed(t->t));
        return EM_OK;
    EM_CATCH(EM_ENOMEM)
}

extern "C" size_t em_params_size(const em_params *p)
{
    return emi_check(__func__, 1, p) != EM_OK ? 0 : p->items.size();
}

extern "C" em_tensor *em_params_get(const em_params *p, size_t i)
{
    if (emi_check(__func__, 1, p) != EM_OK)
        return nullptr;
    if (i >= p->items.size()) {
        emi_fail(EM_EINVAL, "em_params_get: index %zu out of range (the list holds %zu)", i, p->items.size());
        return nullptr;
    }
    return p->items[i];
}

extern "C" void em_params_free(em_params *p)
{
    if (p == nullptr || !free_check(__func__, p))
        return;
    for (em_tensor *h : p->items)
        emi_borrowed_free(h);
    emi_retire(p);
}
