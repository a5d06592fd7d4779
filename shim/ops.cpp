// shim/ops.cpp: tensor operations: arithmetic, in-place updates, reductions, shapes, comparisons,
// activations, losses and the functional layers (include/ember/tensor.h, from "elementwise
// arithmetic" on).
//
// One C function calls the one ATen op that torch's Python function calls, with the same arguments
// (F.mse_loss -> broadcast_tensors + at::mse_loss, F.cross_entropy -> at::cross_entropy_loss, ...),
// so results are bit-identical to PyTorch 1.13. Where Python does work before the ATen call (a size
// check, broadcast_tensors, an expand), it is done here too, in the same order.
// Every extern "C" function: handles first (emi_check: a freed one is EM_EMISUSE, a NULL one returns NULL /
// EM_EINVAL, recorded as "argument N is NULL" when emi_ops_record_null), then
// argument checks (emi_fail), then the work behind the exception barrier (emi_guard and the helpers
// built on it: emi_tensor_op, emi_tensor_do, binary_op, ...).
#include "internal.hpp"

#include <ATen/ExpandUtils.h>
#include <ATen/core/Reduction.h>

#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

// ---- helpers ----------------------------------------------------------------------------------------

namespace {

// "shapes [8, 1] and [3, 2]" (or "[a], [b] and [c]" for three).
std::string shapes_of(std::initializer_list<const at::Tensor *> ts)
{
    std::string s = "shapes ";
    size_t i = 0, n = ts.size();
    for (const at::Tensor *t : ts) {
        if (i > 0)
            s += i + 1 == n ? " and " : ", ";
        s += emi_shape_str(*t);
        i++;
    }
    return s;
}

// Runs `f`; a libtorch error comes back as "shapes [..] and [..]: <libtorch's one-line message>", so
// the barrier's message names the ember function, every operand's shape and what torch said.
template <class F>
auto with_shapes(std::initializer_list<const at::Tensor *> ts, F &&f) -> decltype(f())
{
    try {
        return f();
    } catch (const c10::Error &e) {
        throw std::runtime_error(shapes_of(ts) + ": " + e.what_without_backtrace());
    }
}

// `g` checked (a freed one throws emi_misuse); `emi_fn` names the extern "C" function.
#define generator_of(g) emi_generator_of(emi_fn, (g))

// The Python number a C double stands for. On an integer tensor an integral value acts as a Python
// int (a + 1, a.clamp(max=2): the result stays integer); any other value, and every value on a
// floating tensor, as a Python float (a + 1.0), so float results are those of Python's float scalar.
at::Scalar scalar_for(const at::Tensor &t, double s)
{
    if (at::isIntegralType(t.scalar_type(), /*includeBool=*/false) && std::isfinite(s) && s == std::trunc(s) &&
        std::fabs(s) < 9.2e18)
        return at::Scalar(static_cast<int64_t>(s));
    return at::Scalar(s);
}

// em_reduction -> at::Reduction; false (recorded) for a value outside the enum.
bool reduction_of(const char *func, em_reduction r, int64_t *out)
{
    switch (r) {
    case EM_REDUCTION_MEAN: *out = at::Reduction::Mean; return true;
    case EM_REDUCTION_SUM: *out = at::Reduction::Sum; return true;
    case EM_REDUCTION_NONE: *out = at::Reduction::None; return true;
    }
    emi_fail(EM_EINVAL, "%s: unknown em_reduction %d (expected EM_REDUCTION_MEAN, _SUM or _NONE)", func,
             static_cast<int>(r));
    return false;
}

// A shape argument that may hold -1 (reshape, view) or any dim index (permute).
bool check_dims_arg(const char *func, const char *what, const int64_t *dims, int ndim)
{
    if (ndim < 0 || ndim > EM_MAX_DIMS) {
        emi_fail(EM_EINVAL, "%s: %s must have 0..%d entries (got %d)", func, what, EM_MAX_DIMS, ndim);
        return false;
    }
    if (ndim > 0 && dims == nullptr) {
        emi_fail(EM_EINVAL, "%s: %s is NULL with ndim %d", func, what, ndim);
        return false;
    }
    if (std::string(what) == "shape") {
        // sizes (reshape, view; -1 infers one): a product that overflows int64 is refused here, before
        // torch's own size arithmetic overflows (undefined behaviour)
        int64_t numel = 1;
        bool empty = false;
        for (int i = 0; i < ndim; i++)
            empty = empty || dims[i] == 0;
        for (int i = 0; i < ndim && !empty; i++) {
            if (dims[i] > 0 && __builtin_mul_overflow(numel, dims[i], &numel)) {
                emi_fail(EM_EINVAL, "%s: the shape's number of elements overflows int64 (at dimension %d, size %lld)",
                         func, i, static_cast<long long>(dims[i]));
                return false;
            }
        }
    }
    return true;
}

at::IntArrayRef ref_of(const int64_t *dims, int ndim)
{
    return at::IntArrayRef(dims, static_cast<size_t>(ndim));
}

// The tensors of a cat/stack argument. 1: ok; 0: a NULL or freed element (see emi_check); -1: a NULL
// array or n == 0 (recorded).
int gather(const char *func, em_tensor *const *ts, size_t n, std::vector<at::Tensor> &out)
{
    if (ts == nullptr || n == 0) {
        emi_fail(EM_EINVAL, "%s: expected a non-empty list of tensors (got %s, n = %zu)", func,
                 ts == nullptr ? "NULL" : "an array", n);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!emi_live(ts[i])) {
            if (ts[i] != nullptr)
                emi_fail(EM_EMISUSE, "%s: element %zu of argument 1 is not a live tensor (freed, or not a tensor "
                         "handle)", func, i);
            else if (emi_ops_record_null)
                emi_fail(EM_EINVAL, "%s: element %zu of argument 1 is NULL", func, i);
            return 0;
        }
    }
    out.reserve(n);
    for (size_t i = 0; i < n; i++)
        out.push_back(ts[i]->t);
    return 1;
}

// Python's torch.Size repr, for the messages torch.nn.functional raises before calling ATen.
std::string torch_size(const at::Tensor &t)
{
    return "torch.Size(" + emi_shape_str(t) + ")";
}

// The handle checks of an op's tensor arguments, in order (argument 1, 2, ...): true when all are live;
// else the first bad one is reported (emi_check) and false.
bool args_ok(const char *func, std::initializer_list<const em_tensor *> ts)
{
    int arg = 1;
    for (const em_tensor *t : ts) {
        if (emi_check(func, arg, t, emi_ops_record_null) != EM_OK)
            return false;
        arg++;
    }
    return true;
}

// An optional tensor argument (a weight, a bias): NULL means none; a freed handle is reported.
bool optional_ok(const char *func, int arg, const em_tensor *t)
{
    return t == nullptr || emi_check(func, arg, t) == EM_OK;
}

// A new tensor from two: op(a->t, b->t) in a new handle, a libtorch error naming both shapes; NULL for
// a NULL or freed operand.
template <class Op> em_tensor *binary_op(const char *func, const em_tensor *a, const em_tensor *b, Op &&op)
{
    if (!args_ok(func, {a, b}))
        return nullptr;
    return emi_guard<em_tensor *>(
        func, nullptr, [&] { return emi_wrap(with_shapes({&a->t, &b->t}, [&] { return op(a->t, b->t); })); });
}

// A new tensor from one and a shape argument (reshape, view, permute): NULL for a NULL `a`, then the
// argument's check, then op(a->t, dims).
template <class Op>
em_tensor *dims_op(const char *func, const char *what, const em_tensor *a, const int64_t *dims, int ndim, Op &&op)
{
    if (!args_ok(func, {a}))
        return nullptr;
    if (!check_dims_arg(func, what, dims, ndim))
        return nullptr;
    return emi_tensor_op(func, a, [&](const at::Tensor &x) { return op(x, ref_of(dims, ndim)); });
}

// An in-place update of `dst` from `src`, a libtorch error naming both shapes: EM_OK; EM_EINVAL for a
// NULL handle (not recorded); EM_ETORCH when torch refuses.
template <class Op> em_status update_from(const char *func, em_tensor *dst, const em_tensor *src, Op &&op)
{
    if (em_status st = emi_check(func, 1, dst, emi_ops_record_null); st != EM_OK)
        return st;
    if (em_status st = emi_check(func, 2, src, emi_ops_record_null); st != EM_OK)
        return st;
    return emi_tensor_do(func, dst, [&](at::Tensor &d) { with_shapes({&d, &src->t}, [&] { return op(d, src->t); }); });
}

// The arguments every loss checks before its work: both operands (emi_check) and the reduction
// (recorded). False to return NULL.
bool loss_args(const char *func, const em_tensor *input, const em_tensor *target, em_reduction r, int64_t *red)
{
    return args_ok(func, {input, target}) && reduction_of(func, r, red);
}

// F.mse_loss, l1_loss, smooth_l1_loss (and huber_loss) in torch 1.13 warn before broadcasting when the
// sizes differ: a [16, 1] prediction against a [16] target gives a [16, 16] loss.
void warn_broadcast(const char *func, const at::Tensor &input, const at::Tensor &target)
{
    if (target.sizes().equals(input.sizes()))
        return;
    emi_warn("%s: Using a target size (%s) that is different to the input size (%s). This will likely lead to "
             "incorrect results due to broadcasting. Please ensure they have the same size.",
             func, torch_size(target).c_str(), torch_size(input).c_str());
}

// torch.broadcast_tensors(input, target), which F.mse_loss, l1_loss and smooth_l1_loss call first.
std::vector<at::Tensor> broadcast_pair(const at::Tensor &input, const at::Tensor &target)
{
    return at::broadcast_tensors({input, target});
}

// torch.max(a, dim, keepdim) / torch.min: (values, indices). Both handles are owned alike; *indices
// is NULL on any failure.
em_tensor *max_min_dim(const char *func, const em_tensor *a, int dim, bool keepdim, em_tensor **indices, bool is_max)
{
    if (indices != nullptr)
        *indices = nullptr;
    if (!args_ok(func, {a}))
        return nullptr;
    return emi_guard<em_tensor *>(func, nullptr, [&] {
        std::tuple<at::Tensor, at::Tensor> r = is_max ? at::max(a->t, dim, keepdim) : at::min(a->t, dim, keepdim);
        em_tensor *values = emi_wrap(std::get<0>(r));
        if (indices != nullptr)
            *indices = emi_wrap(std::get<1>(r));
        return values;
    });
}

// torch.cat / torch.stack: op(tensors) on the gathered list (see gather for NULL arguments).
template <class Op> em_tensor *join(const char *func, em_tensor *const *ts, size_t n, Op &&op)
{
    return emi_guard<em_tensor *>(func, nullptr, [&]() -> em_tensor * {
        std::vector<at::Tensor> v;
        if (gather(func, ts, n, v) <= 0)
            return nullptr;
        return emi_wrap(op(v));
    });
}

} // namespace

// ---- elementwise arithmetic ---------------------------------------------------------------------------
// The ops of one shape, named by a line each: `x` (and `y`, `s`) are the operands.

#define EMI_BINARY(fname, expr)                                                                      \
    extern "C" em_tensor *fname(const em_tensor *a, const em_tensor *b)                              \
    {                                                                                                \
        return binary_op(__func__, a, b, [](const at::Tensor &x, const at::Tensor &y) { return expr; }); \
    }

#define EMI_SCALAR(fname, expr)                                                                      \
    extern "C" em_tensor *fname(const em_tensor *a, double s)                                        \
    {                                                                                                \
        return emi_tensor_op(__func__, a, [s](const at::Tensor &x) { return expr; });                \
    }

#define EMI_UNARY(fname, expr)                                                                       \
    extern "C" em_tensor *fname(const em_tensor *a)                                                  \
    {                                                                                                \
        return emi_tensor_op(__func__, a, [](const at::Tensor &x) { return expr; });                 \
    }

// Python: a + b, a - b, a * b, a / b, a ** b, torch.maximum, torch.minimum
EMI_BINARY(em_add, at::add(x, y))
EMI_BINARY(em_sub, at::sub(x, y))
EMI_BINARY(em_mul, at::mul(x, y))
EMI_BINARY(em_div, at::div(x, y))
EMI_BINARY(em_pow, at::pow(x, y))
EMI_BINARY(em_maximum, at::maximum(x, y))
EMI_BINARY(em_minimum, at::minimum(x, y))

// Python: a + s, a - s, s - a (Tensor.__rsub__ -> torch.rsub), a * s, a / s, a ** s. Python's number
// becomes a wrapped 0-dim tensor, as at::add(Tensor, Scalar) makes one (see scalar_for).
EMI_SCALAR(em_add_scalar, at::add(x, scalar_for(x, s)))
EMI_SCALAR(em_sub_scalar, at::sub(x, scalar_for(x, s)))
EMI_SCALAR(em_rsub_scalar, at::rsub(x, scalar_for(x, s)))
EMI_SCALAR(em_mul_scalar, at::mul(x, scalar_for(x, s)))
EMI_SCALAR(em_div_scalar, at::div(x, scalar_for(x, s)))
EMI_SCALAR(em_pow_scalar, at::pow(x, scalar_for(x, s)))

EMI_UNARY(em_neg, at::neg(x))
EMI_UNARY(em_exp, at::exp(x))
EMI_UNARY(em_ln, at::log(x)) // torch.log (em_log is Lightning's self.log)
EMI_UNARY(em_sqrt, at::sqrt(x))
EMI_UNARY(em_abs, at::abs(x))
EMI_UNARY(em_square, at::square(x))
EMI_UNARY(em_sin, at::sin(x))
EMI_UNARY(em_cos, at::cos(x))

// torch.clamp(a, min=lo, max=hi). An infinite bound on its own side is a missing bound (None), so an
// integer tensor clamped by integral bounds keeps its dtype; with both missing torch refuses
// (torch.clamp(a)), and ember returns a copy, which is what torch.clamp(a, -inf, inf) gives.
extern "C" em_tensor *em_clamp(const em_tensor *a, double lo, double hi)
{
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) {
        c10::optional<at::Scalar> mn, mx;
        if (!(std::isinf(lo) && lo < 0))
            mn = scalar_for(x, lo);
        if (!(std::isinf(hi) && hi > 0))
            mx = scalar_for(x, hi);
        if (!mn.has_value() && !mx.has_value())
            return x.clone();
        return at::clamp(x, mn, mx);
    });
}

// ---- in-place updates -----------------------------------------------------------------------------------
// torch raises for a leaf that requires grad while grad mode is on: that comes back as EM_ETORCH.

extern "C" em_status em_copy_(em_tensor *dst, const em_tensor *src)
{
    return update_from(__func__, dst, src, [](at::Tensor &d, const at::Tensor &x) { return d.copy_(x); });
}

extern "C" em_status em_zero_(em_tensor *dst)
{
    return emi_tensor_do(__func__, dst, [](at::Tensor &d) { d.zero_(); });
}

extern "C" em_status em_fill_(em_tensor *dst, double value)
{
    return emi_tensor_do(__func__, dst, [&](at::Tensor &d) { d.fill_(scalar_for(d, value)); });
}

extern "C" em_status em_add_(em_tensor *dst, const em_tensor *src, double alpha)
{
    return update_from(__func__, dst, src, [&](at::Tensor &d, const at::Tensor &x) { return d.add_(x, alpha); });
}

extern "C" em_status em_mul_scalar_(em_tensor *dst, double s)
{
    return emi_tensor_do(__func__, dst, [&](at::Tensor &d) { d.mul_(scalar_for(d, s)); });
}

extern "C" em_status em_uniform_(em_tensor *dst, double lo, double hi, em_generator *g)
{
    const char *emi_fn = __func__;
    return emi_tensor_do(__func__, dst, [&](at::Tensor &d) { d.uniform_(lo, hi, generator_of(g)); });
}

extern "C" em_status em_normal_(em_tensor *dst, double mean, double std, em_generator *g)
{
    const char *emi_fn = __func__;
    return emi_tensor_do(__func__, dst, [&](at::Tensor &d) { d.normal_(mean, std, generator_of(g)); });
}

// ---- linear algebra and reductions ------------------------------------------------------------------

EMI_BINARY(em_matmul, at::matmul(x, y))

EMI_UNARY(em_sum, at::sum(x))
EMI_UNARY(em_mean, at::mean(x))
EMI_UNARY(em_max, at::max(x))
EMI_UNARY(em_min, at::min(x))

// torch.sum(a, dim, keepdim) is sum.dim_IntList with a one-element dim list; mean likewise.
extern "C" em_tensor *em_sum_dim(const em_tensor *a, int dim, bool keepdim)
{
    int64_t d = dim;
    return emi_tensor_op(__func__, a,
                         [&](const at::Tensor &x) { return at::sum(x, at::IntArrayRef(&d, 1), keepdim); });
}

extern "C" em_tensor *em_mean_dim(const em_tensor *a, int dim, bool keepdim)
{
    int64_t d = dim;
    return emi_tensor_op(__func__, a,
                         [&](const at::Tensor &x) { return at::mean(x, at::IntArrayRef(&d, 1), keepdim); });
}

extern "C" em_tensor *em_max_dim(const em_tensor *a, int dim, bool keepdim, em_tensor **indices)
{
    return max_min_dim(__func__, a, dim, keepdim, indices, true);
}

extern "C" em_tensor *em_min_dim(const em_tensor *a, int dim, bool keepdim, em_tensor **indices)
{
    return max_min_dim(__func__, a, dim, keepdim, indices, false);
}

extern "C" em_tensor *em_argmax(const em_tensor *a, int dim, bool keepdim)
{
    return emi_tensor_op(__func__, a,
                         [&](const at::Tensor &x) { return at::argmax(x, static_cast<int64_t>(dim), keepdim); });
}

// torch.linalg.vector_norm(a, ord): dim=None (all elements), keepdim=False, dtype=None.
extern "C" em_tensor *em_norm(const em_tensor *a, double ord)
{
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) { return at::linalg_vector_norm(x, at::Scalar(ord)); });
}

// ---- shape -------------------------------------------------------------------------------------------

extern "C" em_tensor *em_reshape(const em_tensor *a, const int64_t *shape, int ndim)
{
    return dims_op(__func__, "shape", a, shape, ndim,
                   [](const at::Tensor &x, at::IntArrayRef s) { return x.reshape(s); });
}

extern "C" em_tensor *em_view(const em_tensor *a, const int64_t *shape, int ndim)
{
    return dims_op(__func__, "shape", a, shape, ndim,
                   [](const at::Tensor &x, at::IntArrayRef s) { return x.view(s); });
}

extern "C" em_tensor *em_flatten(const em_tensor *a, int start_dim, int end_dim)
{
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) { return at::flatten(x, start_dim, end_dim); });
}

extern "C" em_tensor *em_transpose(const em_tensor *a, int d0, int d1)
{
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) { return at::transpose(x, d0, d1); });
}

extern "C" em_tensor *em_permute(const em_tensor *a, const int64_t *dims, int ndim)
{
    return dims_op(__func__, "dims", a, dims, ndim,
                   [](const at::Tensor &x, at::IntArrayRef d) { return x.permute(d); });
}

extern "C" em_tensor *em_unsqueeze(const em_tensor *a, int dim)
{
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) { return at::unsqueeze(x, dim); });
}

extern "C" em_tensor *em_squeeze(const em_tensor *a, int dim)
{
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) { return at::squeeze(x, static_cast<int64_t>(dim)); });
}

extern "C" em_tensor *em_cat(em_tensor *const *ts, size_t n, int dim)
{
    return join(__func__, ts, n, [&](const std::vector<at::Tensor> &v) { return at::cat(v, dim); });
}

extern "C" em_tensor *em_stack(em_tensor *const *ts, size_t n, int dim)
{
    return join(__func__, ts, n, [&](const std::vector<at::Tensor> &v) { return at::stack(v, dim); });
}

extern "C" em_tensor *em_narrow(const em_tensor *a, int dim, int64_t start, int64_t length)
{
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) { return at::narrow(x, dim, start, length); });
}

// a[..., start:end:step, ...]: Python indexing calls at::slice, which wraps a negative start/end by
// adding the size and clamps both into [0, size] (so INT64_MAX means "to the end").
extern "C" em_tensor *em_slice(const em_tensor *a, int dim, int64_t start, int64_t end, int64_t step)
{
    if (!args_ok(__func__, {a}))
        return nullptr;
    if (step <= 0) {
        emi_fail(EM_EINVAL, "em_slice: slice step must be positive (got %lld)", static_cast<long long>(step));
        return nullptr;
    }
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) { return at::slice(x, dim, start, end, step); });
}

extern "C" em_tensor *em_select(const em_tensor *a, int dim, int64_t index)
{
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) { return at::select(x, dim, index); });
}

extern "C" em_tensor *em_index_select(const em_tensor *a, int dim, const em_tensor *index)
{
    if (!args_ok(__func__, {a}) || emi_check(__func__, 3, index, emi_ops_record_null) != EM_OK)
        return nullptr;
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) { return at::index_select(x, dim, index->t); });
}

// ---- comparisons and selection ----------------------------------------------------------------------

EMI_BINARY(em_eq, at::eq(x, y))
EMI_BINARY(em_ne, at::ne(x, y))
EMI_BINARY(em_lt, at::lt(x, y))
EMI_BINARY(em_le, at::le(x, y))
EMI_BINARY(em_gt, at::gt(x, y))
EMI_BINARY(em_ge, at::ge(x, y))
EMI_SCALAR(em_eq_scalar, at::eq(x, scalar_for(x, s)))
EMI_SCALAR(em_lt_scalar, at::lt(x, scalar_for(x, s)))
EMI_SCALAR(em_gt_scalar, at::gt(x, scalar_for(x, s)))

extern "C" em_tensor *em_where(const em_tensor *cond, const em_tensor *a, const em_tensor *b)
{
    if (!args_ok(__func__, {cond, a, b}))
        return nullptr;
    return emi_guard<em_tensor *>(__func__, nullptr, [&] {
        return emi_wrap(with_shapes({&cond->t, &a->t, &b->t}, [&] { return at::where(cond->t, a->t, b->t); }));
    });
}

// ---- activations --------------------------------------------------------------------------------------

EMI_UNARY(em_relu, at::relu(x))
EMI_UNARY(em_tanh, at::tanh(x))
EMI_UNARY(em_sigmoid, at::sigmoid(x))
EMI_UNARY(em_gelu, at::gelu(x, "none")) // F.gelu(x), approximate="none"

extern "C" em_tensor *em_leaky_relu(const em_tensor *a, double negative_slope)
{
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) { return at::leaky_relu(x, negative_slope); });
}

// F.softmax(x, dim) with dtype=None is x.softmax(dim).
extern "C" em_tensor *em_softmax(const em_tensor *a, int dim)
{
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) { return at::softmax(x, dim); });
}

extern "C" em_tensor *em_log_softmax(const em_tensor *a, int dim)
{
    return emi_tensor_op(__func__, a, [&](const at::Tensor &x) { return at::log_softmax(x, dim); });
}

// ---- losses -----------------------------------------------------------------------------------------
// torch/nn/functional.py (1.13): mse_loss, l1_loss and smooth_l1_loss broadcast input and target
// with torch.broadcast_tensors before the ATen call; the bce losses refuse different sizes.

extern "C" em_tensor *em_mse_loss(const em_tensor *input, const em_tensor *target, em_reduction r)
{
    int64_t red;
    if (!loss_args(__func__, input, target, r, &red))
        return nullptr;
    warn_broadcast(__func__, input->t, target->t);
    return binary_op(__func__, input, target, [&](const at::Tensor &x, const at::Tensor &y) {
        std::vector<at::Tensor> e = broadcast_pair(x, y);
        return at::mse_loss(e[0], e[1], red);
    });
}

extern "C" em_tensor *em_l1_loss(const em_tensor *input, const em_tensor *target, em_reduction r)
{
    int64_t red;
    if (!loss_args(__func__, input, target, r, &red))
        return nullptr;
    warn_broadcast(__func__, input->t, target->t);
    return binary_op(__func__, input, target, [&](const at::Tensor &x, const at::Tensor &y) {
        std::vector<at::Tensor> e = broadcast_pair(x, y);
        return at::l1_loss(e[0], e[1], red);
    });
}

// F.smooth_l1_loss(input, target, beta=beta): broadcast, then one ATen call (beta == 0 included).
extern "C" em_tensor *em_smooth_l1_loss(const em_tensor *input, const em_tensor *target, em_reduction r,
                                        double beta)
{
    int64_t red;
    if (!loss_args(__func__, input, target, r, &red))
        return nullptr;
    if (beta < 0) {
        emi_fail(EM_EINVAL, "em_smooth_l1_loss: smooth_l1_loss does not support negative values for beta (got %g)",
                 beta);
        return nullptr;
    }
    warn_broadcast(__func__, input->t, target->t);
    return binary_op(__func__, input, target, [&](const at::Tensor &x, const at::Tensor &y) {
        std::vector<at::Tensor> e = broadcast_pair(x, y);
        return at::smooth_l1_loss(e[0], e[1], red, beta);
    });
}

// F.cross_entropy(input, target): weight=None, ignore_index=-100, label_smoothing=0.0.
extern "C" em_tensor *em_cross_entropy(const em_tensor *input, const em_tensor *target, em_reduction r)
{
    int64_t red;
    if (!loss_args(__func__, input, target, r, &red))
        return nullptr;
    return binary_op(__func__, input, target, [&](const at::Tensor &x, const at::Tensor &y) {
        return at::cross_entropy_loss(x, y, c10::nullopt, red, -100, 0.0);
    });
}

// F.nll_loss calls torch._C._nn.nll_loss_nd (weight=None, ignore_index=-100).
extern "C" em_tensor *em_nll_loss(const em_tensor *input, const em_tensor *target, em_reduction r)
{
    int64_t red;
    if (!loss_args(__func__, input, target, r, &red))
        return nullptr;
    return binary_op(__func__, input, target, [&](const at::Tensor &x, const at::Tensor &y) {
        return at::nll_loss_nd(x, y, c10::nullopt, red, -100);
    });
}

// F.binary_cross_entropy: target and input must have the same size; a weight is expanded to
// _infer_size(target.size(), weight.size()) first.
extern "C" em_tensor *em_bce_loss(const em_tensor *input, const em_tensor *target, const em_tensor *weight,
                                  em_reduction r)
{
    int64_t red;
    if (!loss_args(__func__, input, target, r, &red) || !optional_ok(__func__, 3, weight))
        return nullptr;
    return emi_guard<em_tensor *>(__func__, nullptr, [&]() -> em_tensor * {
        if (!target->t.sizes().equals(input->t.sizes())) {
            emi_fail(EM_ETORCH,
                     "em_bce_loss: Using a target size (%s) that is different to the input size (%s) is "
                     "deprecated. Please ensure they have the same size.",
                     torch_size(target->t).c_str(), torch_size(input->t).c_str());
            return nullptr;
        }
        c10::optional<at::Tensor> w;
        if (weight != nullptr)
            w = with_shapes({&target->t, &weight->t}, [&] {
                return weight->t.expand(at::infer_size(target->t.sizes(), weight->t.sizes()));
            });
        return emi_wrap(at::binary_cross_entropy(input->t, target->t, w, red));
    });
}

// F.binary_cross_entropy_with_logits: same sizes required, then one ATen call.
extern "C" em_tensor *em_bce_with_logits(const em_tensor *input, const em_tensor *target,
                                         const em_tensor *weight, const em_tensor *pos_weight, em_reduction r)
{
    int64_t red;
    if (!loss_args(__func__, input, target, r, &red) || !optional_ok(__func__, 3, weight) ||
        !optional_ok(__func__, 4, pos_weight))
        return nullptr;
    return emi_guard<em_tensor *>(__func__, nullptr, [&]() -> em_tensor * {
        if (!target->t.sizes().equals(input->t.sizes())) {
            emi_fail(EM_ETORCH, "em_bce_with_logits: Target size (%s) must be the same as input size (%s)",
                     torch_size(target->t).c_str(), torch_size(input->t).c_str());
            return nullptr;
        }
        c10::optional<at::Tensor> w, pw;
        if (weight != nullptr)
            w = weight->t;
        if (pos_weight != nullptr)
            pw = pos_weight->t;
        return emi_wrap(at::binary_cross_entropy_with_logits(input->t, target->t, w, pw, red));
    });
}

// ---- functional layers ------------------------------------------------------------------------------

// F.linear(x, weight, bias) -> torch._C._nn.linear.
extern "C" em_tensor *em_linear(const em_tensor *x, const em_tensor *weight, const em_tensor *bias)
{
    if (!args_ok(__func__, {x, weight}) || !optional_ok(__func__, 3, bias))
        return nullptr;
    c10::optional<at::Tensor> b;
    if (bias != nullptr)
        b = bias->t;
    return binary_op(__func__, x, weight,
                     [&](const at::Tensor &in, const at::Tensor &w) { return at::linear(in, w, b); });
}

// F.dropout(x, p, training) -> _VF.dropout, after Python's range check on p.
extern "C" em_tensor *em_dropout(const em_tensor *x, double p, bool training)
{
    if (!args_ok(__func__, {x}))
        return nullptr;
    if (!(p >= 0.0 && p <= 1.0)) {
        emi_fail(EM_EINVAL, "em_dropout: dropout probability has to be between 0 and 1, but got %g", p);
        return nullptr;
    }
    return emi_tensor_op(__func__, x, [&](const at::Tensor &in) { return at::dropout(in, p, training); });
}
