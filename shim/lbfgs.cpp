// shim/lbfgs.cpp: ember's LBFGS, torch/optim/lbfgs.py (torch 1.13) rewritten in C++ op for op.
//
// Why not libtorch's torch::optim::LBFGS: it keeps the line-search scalars (gtd, t, the cubic
// interpolation, the Armijo test) in double, where Python keeps 0-dim float32 tensors, and strong
// Wolfe runs drift apart (docs/LIBTORCH_NOTES.md). Here every scalar carries the type it has in Python
// (emi_lbfgs_scalar: a Python number or a 0-dim tensor) and each arithmetic or comparison calls the
// ATen op Python's operator dispatches to, so both run the same kernels on the same operands:
//   number op number    -> double arithmetic (Python float)
//   tensor op number    -> at::op(tensor, Scalar)   (the number is cast to the tensor's dtype)
//   number op tensor    -> the reflected method:    + and * commute, `n - t` is at::rsub(t, n),
//                          `n / t` is t.reciprocal() * n (Tensor.__rdiv__), `n < t` is at::gt(t, n)
//   tensor op tensor    -> at::op(a, b)
// Losses are Python floats (lbfgs.py does float(closure())): doubles holding a float32 value.
#include "lbfgs.hpp"

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <stdexcept>
#include <utility>

namespace {

using num = emi_lbfgs_scalar;

// ---- Python's operators on numbers and 0-dim tensors ------------------------------------------------

bool truth(const at::Tensor &t)
{
    return t.item<bool>(); // Tensor.__bool__
}

// Python's `a OP b` on two scalars: `numbers` (double arithmetic) for two numbers; otherwise `op`, on
// (tensor, tensor) or (tensor, number); a number on the left calls the tensor's reflected method,
// `reflected(tensor, number)`.
template <typename Numbers, typename Op, typename Reflected>
num py_binary(const num &a, const num &b, Numbers numbers, Op op, Reflected reflected)
{
    if (!a.is_tensor() && !b.is_tensor())
        return numbers(a.number, b.number);
    if (a.is_tensor() && b.is_tensor())
        return op(a.tensor, b.tensor);
    if (a.is_tensor())
        return op(a.tensor, b.number);
    return reflected(b.tensor, a.number);
}

// The truth of a comparison's result: a number (0 or 1) or a bool tensor.
bool truth(const num &r)
{
    return r.is_tensor() ? truth(r.tensor) : r.number != 0;
}

num py_add(const num &a, const num &b)
{
    return py_binary(
        a, b, [](double x, double y) { return x + y; }, [](const auto &x, const auto &y) { return at::add(x, y); },
        [](const at::Tensor &t, double n) { return at::add(t, n); }); // Tensor.__radd__
}

num py_sub(const num &a, const num &b)
{
    return py_binary(
        a, b, [](double x, double y) { return x - y; }, [](const auto &x, const auto &y) { return at::sub(x, y); },
        [](const at::Tensor &t, double n) { return at::rsub(t, n); }); // Tensor.__rsub__
}

num py_mul(const num &a, const num &b)
{
    return py_binary(
        a, b, [](double x, double y) { return x * y; }, [](const auto &x, const auto &y) { return at::mul(x, y); },
        [](const at::Tensor &t, double n) { return at::mul(t, n); }); // Tensor.__rmul__
}

num py_div(const num &a, const num &b)
{
    auto numbers = [](double x, double y) {
        if (y == 0)
            throw std::runtime_error("LBFGS: float division by zero"); // Python's ZeroDivisionError
        return x / y;
    };
    return py_binary(
        a, b, numbers, [](const auto &x, const auto &y) { return at::div(x, y); },
        [](const at::Tensor &t, double n) { return at::mul(at::reciprocal(t), n); }); // Tensor.__rdiv__
}

num py_abs(const num &a)
{
    if (a.is_tensor())
        return at::abs(a.tensor);
    return std::fabs(a.number);
}

// a < b and friends. A number on the left has no method for a tensor, so Python calls the
// reflected method of the tensor: n < t is t > n.
bool py_lt(const num &a, const num &b)
{
    return truth(py_binary(
        a, b, [](double x, double y) { return x < y ? 1.0 : 0.0; },
        [](const auto &x, const auto &y) { return at::lt(x, y); },
        [](const at::Tensor &t, double n) { return at::gt(t, n); }));
}

bool py_gt(const num &a, const num &b)
{
    return truth(py_binary(
        a, b, [](double x, double y) { return x > y ? 1.0 : 0.0; },
        [](const auto &x, const auto &y) { return at::gt(x, y); },
        [](const at::Tensor &t, double n) { return at::lt(t, n); }));
}

bool py_le(const num &a, const num &b)
{
    return truth(py_binary(
        a, b, [](double x, double y) { return x <= y ? 1.0 : 0.0; },
        [](const auto &x, const auto &y) { return at::le(x, y); },
        [](const at::Tensor &t, double n) { return at::ge(t, n); }));
}

bool py_ge(const num &a, const num &b)
{
    return truth(py_binary(
        a, b, [](double x, double y) { return x >= y ? 1.0 : 0.0; },
        [](const auto &x, const auto &y) { return at::ge(x, y); },
        [](const at::Tensor &t, double n) { return at::le(t, n); }));
}

// Python's builtins on two arguments: the second replaces the first only if strictly smaller
// (min) or larger (max).
num py_min(const num &a, const num &b)
{
    return py_lt(b, a) ? b : a;
}

num py_max(const num &a, const num &b)
{
    return py_gt(b, a) ? b : a;
}

// alpha= of add_: Python turns a 0-dim tensor into a Scalar with .item().
at::Scalar as_scalar(const num &a)
{
    if (a.is_tensor())
        return a.tensor.item();
    return a.number;
}

// ---- the line search (lbfgs.py: _cubic_interpolate, _strong_wolfe) ----------------------------------

// Minimiser of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped to the bounds (by default
// the interval between x1 and x2). f1 and f2 are Python floats, the others numbers or tensors.
num cubic_interpolate(const num &x1, double f1, const num &g1, const num &x2, double f2, const num &g2,
                      const std::pair<num, num> *bounds)
{
    num xmin_bound, xmax_bound;
    if (bounds != nullptr) {
        xmin_bound = bounds->first;
        xmax_bound = bounds->second;
    } else if (py_le(x1, x2)) {
        xmin_bound = x1;
        xmax_bound = x2;
    } else {
        xmin_bound = x2;
        xmax_bound = x1;
    }
    // d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    num d1 = py_sub(py_add(g1, g2), py_div(num(3.0 * (f1 - f2)), py_sub(x1, x2)));
    // d2_square = d1**2 - g1 * g2
    num d1_sq = d1.is_tensor() ? num(at::pow(d1.tensor, 2)) : num(d1.number * d1.number);
    num d2_square = py_sub(d1_sq, py_mul(g1, g2));
    if (py_ge(d2_square, num(0.0))) {
        // d2_square is a tensor whenever g1 or g2 is one, which they always are in lbfgs.py
        num d2 = d2_square.is_tensor() ? num(at::sqrt(d2_square.tensor)) : num(std::sqrt(d2_square.number));
        num min_pos;
        if (py_le(x1, x2)) {
            // x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
            num ratio = py_div(py_sub(py_add(g2, d2), d1), py_add(py_sub(g2, g1), py_mul(d2, num(2.0))));
            min_pos = py_sub(x2, py_mul(py_sub(x2, x1), ratio));
        } else {
            num ratio = py_div(py_sub(py_add(g1, d2), d1), py_add(py_sub(g1, g2), py_mul(d2, num(2.0))));
            min_pos = py_sub(x1, py_mul(py_sub(x1, x2), ratio));
        }
        return py_min(py_max(min_pos, xmin_bound), xmax_bound);
    }
    // (xmin_bound + xmax_bound) / 2.
    return py_div(py_add(xmin_bound, xmax_bound), num(2.0));
}

struct wolfe_result {
    double f_new;
    at::Tensor g_new;
    num t;
    int64_t ls_func_evals;
};

using obj_func_t = std::function<double(const num &t, at::Tensor *g_out)>;

// lbfgs.py's step calls _strong_wolfe with its defaults: c1, c2, max_ls and also tolerance_change
// (1e-9 whatever the optimizer's tolerance_change is).
constexpr double wolfe_c1 = 1e-4, wolfe_c2 = 0.9, wolfe_tolerance_change = 1e-9;
constexpr int64_t wolfe_max_ls = 25;

// _strong_wolfe's variables, shared by its two phases (bracketing, then zoom); names follow lbfgs.py.
struct wolfe_search {
    const obj_func_t &obj_func;
    const at::Tensor &d;
    double f;              // the loss at step 0
    at::Tensor g;          // its gradient (a contiguous copy)
    const at::Tensor &gtd; // its directional derivative
    num t;                 // the step being tried, and f_new, g_new, gtd_new at it
    double f_new = 0;
    at::Tensor g_new, gtd_new;
    int64_t ls_func_evals = 0;
    int64_t ls_iter = 0;
    bool done = false;
    std::vector<num> bracket;
    std::vector<double> bracket_f;
    std::vector<at::Tensor> bracket_g;
    std::vector<num> bracket_gtd;

    wolfe_search(const obj_func_t &obj_func_, const at::Tensor &d_, double f_, at::Tensor g_, const at::Tensor &gtd_,
                 num t_)
        : obj_func(obj_func_), d(d_), f(f_), g(std::move(g_)), gtd(gtd_), t(std::move(t_))
    {
    }

    // obj_func at t
    void evaluate()
    {
        f_new = obj_func(t, &g_new);
        ls_func_evals += 1;
        gtd_new = g_new.dot(d);
    }
    // f + c1 * t * gtd, the Armijo threshold
    num armijo(const num &step) const { return py_add(num(f), py_mul(py_mul(num(wolfe_c1), step), gtd)); }
    // |gtd_new| <= -c2 * gtd, the curvature condition
    bool curvature_ok() const { return py_le(py_abs(gtd_new), py_mul(num(-wolfe_c2), gtd)); }
    // The bracket [prev, t].
    void bracket_from(const num &t_prev, double f_prev, const at::Tensor &g_prev, const num &gtd_prev)
    {
        bracket = {t_prev, t};
        bracket_f = {f_prev, f_new};
        bracket_g = {g_prev, g_new.clone(at::MemoryFormat::Contiguous)};
        bracket_gtd = {gtd_prev, gtd_new};
    }
    // The point at t replaces one end of the bracket.
    void set_end(size_t pos)
    {
        bracket[pos] = t;
        bracket_f[pos] = f_new;
        bracket_g[pos] = g_new.clone(at::MemoryFormat::Contiguous);
        bracket_gtd[pos] = gtd_new;
    }
};

// Bracketing: step forward until an interval is known to hold a point satisfying the strong Wolfe
// conditions, or such a point is found (done).
void wolfe_bracket(wolfe_search &s)
{
    num t_prev = 0.0;
    double f_prev = s.f;
    at::Tensor g_prev = s.g;
    num gtd_prev = s.gtd;
    while (s.ls_iter < wolfe_max_ls) {
        if (py_gt(num(s.f_new), s.armijo(s.t)) || (s.ls_iter > 1 && s.f_new >= f_prev)) {
            s.bracket_from(t_prev, f_prev, g_prev, gtd_prev);
            break;
        }
        if (s.curvature_ok()) {
            s.bracket = {s.t};
            s.bracket_f = {s.f_new};
            s.bracket_g = {s.g_new};
            s.done = true;
            break;
        }
        if (py_ge(s.gtd_new, num(0.0))) {
            s.bracket_from(t_prev, f_prev, g_prev, gtd_prev);
            break;
        }
        // interpolate between the last two points, within [t + 0.01 (t - t_prev), 10 t]
        num min_step = py_add(s.t, py_mul(num(0.01), py_sub(s.t, t_prev)));
        num max_step = py_mul(s.t, num(10.0));
        num tmp = s.t;
        std::pair<num, num> bounds{min_step, max_step};
        s.t = cubic_interpolate(t_prev, f_prev, gtd_prev, s.t, s.f_new, s.gtd_new, &bounds);

        t_prev = tmp;
        f_prev = s.f_new;
        g_prev = s.g_new.clone(at::MemoryFormat::Contiguous);
        gtd_prev = s.gtd_new;
        s.evaluate();
        s.ls_iter += 1;
    }

    if (s.ls_iter == wolfe_max_ls) {
        s.bracket = {num(0.0), s.t};
        s.bracket_f = {s.f, s.f_new};
        s.bracket_g = {s.g, s.g_new};
    }
}

// The zoom's safeguard: a t too close to an end of the bracket moves 10% of the bracket inside it,
// on the second such step in a row or when it lies outside the bracket.
num away_from_ends(num t, const std::vector<num> &bracket, bool *insuf_progress)
{
    num b_max = py_max(bracket[0], bracket[1]);
    num b_min = py_min(bracket[0], bracket[1]);
    num eps = py_mul(num(0.1), py_sub(b_max, b_min));
    if (py_lt(py_min(py_sub(b_max, t), py_sub(t, b_min)), eps)) {
        if (*insuf_progress || py_ge(t, b_max) || py_le(t, b_min)) {
            if (py_lt(py_abs(py_sub(t, b_max)), py_abs(py_sub(t, b_min))))
                t = py_sub(b_max, eps);
            else
                t = py_add(b_min, eps);
            *insuf_progress = false;
        } else {
            *insuf_progress = true;
        }
    } else {
        *insuf_progress = false;
    }
    return t;
}

// Zoom: shrink the bracket until a point satisfies the strong Wolfe conditions. Returns the low end.
wolfe_result wolfe_zoom(wolfe_search &s)
{
    at::Tensor d_norm = s.d.abs().max();
    std::vector<num> &bracket = s.bracket;
    bool insuf_progress = false;
    size_t low_pos = 0, high_pos = 1;
    if (!(s.bracket_f.front() <= s.bracket_f.back())) {
        low_pos = 1;
        high_pos = 0;
    }
    while (!s.done && s.ls_iter < wolfe_max_ls) {
        // the bracket is too small to go on
        if (py_lt(py_mul(py_abs(py_sub(bracket[1], bracket[0])), num(d_norm)), num(wolfe_tolerance_change)))
            break;

        num t = cubic_interpolate(bracket[0], s.bracket_f[0], s.bracket_gtd[0], bracket[1], s.bracket_f[1],
                                  s.bracket_gtd[1], nullptr);
        // keep away from the ends of the bracket when progress is slow
        s.t = away_from_ends(t, bracket, &insuf_progress);
        s.evaluate();
        s.ls_iter += 1;

        if (py_gt(num(s.f_new), s.armijo(s.t)) || s.f_new >= s.bracket_f[low_pos]) {
            // not low enough: the new point replaces the high end
            s.set_end(high_pos);
            if (s.bracket_f[0] <= s.bracket_f[1]) {
                low_pos = 0;
                high_pos = 1;
            } else {
                low_pos = 1;
                high_pos = 0;
            }
        } else {
            if (s.curvature_ok()) {
                s.done = true;
            } else if (py_ge(py_mul(s.gtd_new, py_sub(bracket[high_pos], bracket[low_pos])), num(0.0))) {
                bracket[high_pos] = bracket[low_pos];
                s.bracket_f[high_pos] = s.bracket_f[low_pos];
                s.bracket_g[high_pos] = s.bracket_g[low_pos];
                s.bracket_gtd[high_pos] = s.bracket_gtd[low_pos];
            }
            s.set_end(low_pos);
        }
    }
    return wolfe_result{s.bracket_f[low_pos], s.bracket_g[low_pos], bracket[low_pos], s.ls_func_evals};
}

// lbfgs.py's _strong_wolfe, from step t along d, from the loss f, gradient g and derivative gtd at 0.
wolfe_result strong_wolfe(const obj_func_t &obj_func, num t, const at::Tensor &d, double f, const at::Tensor &g,
                          const at::Tensor &gtd)
{
    wolfe_search s(obj_func, d, f, g.clone(at::MemoryFormat::Contiguous), gtd, std::move(t));
    s.evaluate();
    wolfe_bracket(s);
    return wolfe_zoom(s);
}

// Python's step wraps the closure in torch.enable_grad().
double call_closure_float(const emi_lbfgs_closure &closure, at::Tensor *loss_out = nullptr)
{
    at::Tensor loss;
    {
        at::AutoGradMode enable(true);
        loss = closure();
    }
    if (!loss.defined())
        throw std::runtime_error("LBFGS: the closure returned no loss");
    double v = loss.item<double>(); // float(tensor)
    if (loss_out != nullptr)
        *loss_out = loss;
    return v;
}

} // namespace

// ---- the optimizer ------------------------------------------------------------------------------------

emi_lbfgs::emi_lbfgs(std::vector<at::Tensor> params, emi_lbfgs_options options)
    : params_(std::move(params)), options_(options)
{
    if (options_.max_eval == 0)
        options_.max_eval = options_.max_iter * 5 / 4; // Python: max_iter * 5 // 4 (max_iter >= 0)
}

at::Tensor emi_lbfgs::gather_flat_grad() const
{
    std::vector<at::Tensor> views;
    views.reserve(params_.size());
    for (const at::Tensor &p : params_) {
        const at::Tensor &g = p.grad();
        if (!g.defined())
            views.push_back(at::zeros({p.numel()}, p.options()));
        else if (g.is_sparse())
            views.push_back(g.to_dense().view(-1));
        else
            views.push_back(g.view(-1));
    }
    return at::cat(views, 0);
}

void emi_lbfgs::add_grad(const emi_lbfgs_scalar &step_size, const at::Tensor &update)
{
    at::Scalar alpha = as_scalar(step_size);
    int64_t offset = 0;
    for (at::Tensor &p : params_) {
        int64_t numel = p.numel();
        p.add_(update.slice(0, offset, offset + numel).view_as(p), alpha);
        offset += numel;
    }
}

std::vector<at::Tensor> emi_lbfgs::clone_param() const
{
    std::vector<at::Tensor> out;
    out.reserve(params_.size());
    for (const at::Tensor &p : params_)
        out.push_back(p.clone(at::MemoryFormat::Contiguous));
    return out;
}

void emi_lbfgs::set_param(const std::vector<at::Tensor> &data)
{
    for (size_t i = 0; i < params_.size(); ++i)
        params_[i].copy_(data[i]);
}

double emi_lbfgs::directional_evaluate(const emi_lbfgs_closure &closure, const std::vector<at::Tensor> &x,
                                       const emi_lbfgs_scalar &t, const at::Tensor &d, at::Tensor *flat_grad)
{
    add_grad(t, d);
    double loss = call_closure_float(closure);
    *flat_grad = gather_flat_grad();
    set_param(x);
    return loss;
}

// lbfgs.py's direction after the first iteration: a new curvature pair (y, s) when y.s > 1e-10
// (the oldest dropped beyond history_size), then the two-loop recursion on -flat_grad.
at::Tensor emi_lbfgs::direction(emi_lbfgs_state &st, const at::Tensor &flat_grad)
{
    const int64_t history_size = options_.history_size;
    at::Tensor y = flat_grad.sub(st.prev_flat_grad);
    at::Tensor s = st.t.is_tensor() ? st.d.mul(st.t.tensor) : st.d.mul(st.t.number);
    at::Tensor ys = y.dot(s);
    if (truth(at::gt(ys, 1e-10))) {
        if (static_cast<int64_t>(st.old_dirs.size()) == history_size) {
            st.old_dirs.erase(st.old_dirs.begin());
            st.old_stps.erase(st.old_stps.begin());
            st.ro.erase(st.ro.begin());
        }
        st.old_dirs.push_back(y);
        st.old_stps.push_back(s);
        st.ro.push_back(at::mul(at::reciprocal(ys), 1.0)); // 1. / ys
        st.H_diag = at::div(ys, y.dot(y));
    }

    size_t num_old = st.old_dirs.size();
    if (al_.empty())
        al_.resize(static_cast<size_t>(history_size > 0 ? history_size : 0));
    if (al_.size() < num_old)
        al_.resize(num_old);

    // two-loop recursion on one buffer
    at::Tensor q = flat_grad.neg();
    for (size_t i = num_old; i-- > 0;) {
        al_[i] = at::mul(st.old_stps[i].dot(q), st.ro[i]);
        q.add_(st.old_dirs[i], al_[i].neg().item());
    }
    at::Tensor r = st.H_diag.is_tensor() ? at::mul(q, st.H_diag.tensor) : at::mul(q, st.H_diag.number);
    at::Tensor d = r;
    for (size_t i = 0; i < num_old; ++i) {
        at::Tensor be_i = at::mul(st.old_dirs[i].dot(r), st.ro[i]);
        r.add_(st.old_stps[i], at::sub(al_[i], be_i).item());
    }
    return d;
}

// The move along st.d by st.t: the strong Wolfe line search, or the fixed step followed by one
// evaluation (none on the last iteration). Updates st.t, *loss, *flat_grad and *opt_cond; returns
// the closure calls it made.
int64_t emi_lbfgs::line_search(const emi_lbfgs_closure &closure, emi_lbfgs_state &st, const at::Tensor &gtd,
                               bool last_iter, double *loss, at::Tensor *flat_grad, bool *opt_cond)
{
    const double tolerance_grad = options_.tolerance_grad;
    if (options_.strong_wolfe) {
        std::vector<at::Tensor> x_init = clone_param();
        obj_func_t obj_func = [&](const num &step, at::Tensor *g_out) {
            return directional_evaluate(closure, x_init, step, st.d, g_out);
        };
        wolfe_result ls = strong_wolfe(obj_func, st.t, st.d, *loss, *flat_grad, gtd);
        *loss = ls.f_new;
        *flat_grad = ls.g_new;
        st.t = ls.t;
        add_grad(st.t, st.d);
        *opt_cond = truth(at::le(flat_grad->abs().max(), tolerance_grad));
        return ls.ls_func_evals;
    }
    add_grad(st.t, st.d);
    if (last_iter)
        return 0;
    // evaluate again except on the last iteration
    *loss = call_closure_float(closure);
    *flat_grad = gather_flat_grad();
    *opt_cond = truth(at::le(flat_grad->abs().max(), tolerance_grad));
    return 1;
}

// The first direction: steepest descent, with no curvature pairs yet.
void emi_lbfgs::restart(emi_lbfgs_state &st, const at::Tensor &flat_grad)
{
    st.d = flat_grad.neg();
    st.old_dirs.clear();
    st.old_stps.clear();
    st.ro.clear();
    st.H_diag = 1.0;
}

// lbfgs.py's last two stop tests: the step moved the parameters, or the loss, by less than
// tolerance_change.
bool emi_lbfgs::stalled(const emi_lbfgs_state &st, double loss) const
{
    const double tolerance_change = options_.tolerance_change;
    at::Tensor moved = st.t.is_tensor() ? st.d.mul(st.t.tensor) : st.d.mul(st.t.number);
    if (truth(at::le(moved.abs().max(), tolerance_change)))
        return true;
    return std::fabs(loss - st.prev_loss) < tolerance_change;
}

at::Tensor emi_lbfgs::step(const emi_lbfgs_closure &closure)
{
    at::NoGradGuard no_grad; // @torch.no_grad()

    const double lr = options_.lr;
    const int64_t max_iter = options_.max_iter;
    const int64_t max_eval = options_.max_eval;
    const double tolerance_grad = options_.tolerance_grad;
    const double tolerance_change = options_.tolerance_change;

    at::Tensor orig_loss;
    double loss = call_closure_float(closure, &orig_loss);
    int64_t current_evals = 1;
    func_evals_ += 1;

    at::Tensor flat_grad = gather_flat_grad();
    bool opt_cond = truth(at::le(flat_grad.abs().max(), tolerance_grad));
    if (opt_cond)
        return orig_loss;

    emi_lbfgs_state st = state_; // the state of the previous step (Python: state.get(...))

    int64_t n_iter = 0;
    while (n_iter < max_iter) {
        n_iter += 1;
        n_iter_ += 1;

        // ---- the descent direction: steepest descent on the first iteration ever, then L-BFGS's
        if (n_iter_ == 1)
            restart(st, flat_grad);
        else
            st.d = direction(st, flat_grad);

        if (!st.prev_flat_grad.defined())
            st.prev_flat_grad = flat_grad.clone(at::MemoryFormat::Contiguous);
        else
            st.prev_flat_grad.copy_(flat_grad);
        st.prev_loss = loss;

        // ---- the step length: min(1., 1. / flat_grad.abs().sum()) * lr on the first iteration ever
        if (n_iter_ == 1)
            st.t = py_mul(py_min(num(1.0), py_div(num(1.0), num(flat_grad.abs().sum()))), num(lr));
        else
            st.t = lr;

        at::Tensor gtd = flat_grad.dot(st.d);
        if (truth(at::gt(gtd, -tolerance_change)))
            break;

        int64_t ls_func_evals = line_search(closure, st, gtd, n_iter == max_iter, &loss, &flat_grad, &opt_cond);
        current_evals += ls_func_evals;
        func_evals_ += ls_func_evals;

        // ---- stop?
        if (n_iter == max_iter || current_evals >= max_eval || opt_cond || stalled(st, loss))
            break;
    }

    state_ = std::move(st);
    return orig_loss;
}
