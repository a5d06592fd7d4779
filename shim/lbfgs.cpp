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

num py_add(const num &a, const num &b)
{
    if (!a.is_tensor() && !b.is_tensor())
        return a.number + b.number;
    if (a.is_tensor() && b.is_tensor())
        return at::add(a.tensor, b.tensor);
    if (a.is_tensor())
        return at::add(a.tensor, b.number);
    return at::add(b.tensor, a.number); // Tensor.__radd__
}

num py_sub(const num &a, const num &b)
{
    if (!a.is_tensor() && !b.is_tensor())
        return a.number - b.number;
    if (a.is_tensor() && b.is_tensor())
        return at::sub(a.tensor, b.tensor);
    if (a.is_tensor())
        return at::sub(a.tensor, b.number);
    return at::rsub(b.tensor, a.number); // Tensor.__rsub__
}

num py_mul(const num &a, const num &b)
{
    if (!a.is_tensor() && !b.is_tensor())
        return a.number * b.number;
    if (a.is_tensor() && b.is_tensor())
        return at::mul(a.tensor, b.tensor);
    if (a.is_tensor())
        return at::mul(a.tensor, b.number);
    return at::mul(b.tensor, a.number); // Tensor.__rmul__
}

num py_div(const num &a, const num &b)
{
    if (!a.is_tensor() && !b.is_tensor()) {
        if (b.number == 0)
            throw std::runtime_error("LBFGS: float division by zero"); // Python's ZeroDivisionError
        return a.number / b.number;
    }
    if (a.is_tensor() && b.is_tensor())
        return at::div(a.tensor, b.tensor);
    if (a.is_tensor())
        return at::div(a.tensor, b.number);
    return at::mul(at::reciprocal(b.tensor), a.number); // Tensor.__rdiv__
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
    if (!a.is_tensor() && !b.is_tensor())
        return a.number < b.number;
    if (a.is_tensor() && b.is_tensor())
        return truth(at::lt(a.tensor, b.tensor));
    if (a.is_tensor())
        return truth(at::lt(a.tensor, b.number));
    return truth(at::gt(b.tensor, a.number));
}

bool py_gt(const num &a, const num &b)
{
    if (!a.is_tensor() && !b.is_tensor())
        return a.number > b.number;
    if (a.is_tensor() && b.is_tensor())
        return truth(at::gt(a.tensor, b.tensor));
    if (a.is_tensor())
        return truth(at::gt(a.tensor, b.number));
    return truth(at::lt(b.tensor, a.number));
}

bool py_le(const num &a, const num &b)
{
    if (!a.is_tensor() && !b.is_tensor())
        return a.number <= b.number;
    if (a.is_tensor() && b.is_tensor())
        return truth(at::le(a.tensor, b.tensor));
    if (a.is_tensor())
        return truth(at::le(a.tensor, b.number));
    return truth(at::ge(b.tensor, a.number));
}

bool py_ge(const num &a, const num &b)
{
    if (!a.is_tensor() && !b.is_tensor())
        return a.number >= b.number;
    if (a.is_tensor() && b.is_tensor())
        return truth(at::ge(a.tensor, b.tensor));
    if (a.is_tensor())
        return truth(at::ge(a.tensor, b.number));
    return truth(at::le(b.tensor, a.number));
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
wolfe_result strong_wolfe(const obj_func_t &obj_func, num t, const at::Tensor &d, double f, at::Tensor g,
                          const at::Tensor &gtd)
{
    const double c1 = 1e-4, c2 = 0.9, tolerance_change = 1e-9;
    const int64_t max_ls = 25;

    at::Tensor d_norm = d.abs().max();
    g = g.clone(at::MemoryFormat::Contiguous);
    at::Tensor g_new;
    double f_new = obj_func(t, &g_new);
    int64_t ls_func_evals = 1;
    at::Tensor gtd_new = g_new.dot(d);

    // f + c1 * t * gtd, the Armijo threshold
    auto armijo = [&](const num &step) { return py_add(num(f), py_mul(py_mul(num(c1), step), gtd)); };
    // -c2 * gtd
    const num curvature = py_mul(num(-c2), gtd);

    num t_prev = 0.0;
    double f_prev = f;
    at::Tensor g_prev = g;
    num gtd_prev = gtd;
    bool done = false;
    int64_t ls_iter = 0;
    std::vector<num> bracket;
    std::vector<double> bracket_f;
    std::vector<at::Tensor> bracket_g;
    std::vector<num> bracket_gtd;
    while (ls_iter < max_ls) {
        if (py_gt(num(f_new), armijo(t)) || (ls_iter > 1 && f_new >= f_prev)) {
            bracket = {t_prev, t};
            bracket_f = {f_prev, f_new};
            bracket_g = {g_prev, g_new.clone(at::MemoryFormat::Contiguous)};
            bracket_gtd = {gtd_prev, gtd_new};
            break;
        }
        if (py_le(py_abs(gtd_new), curvature)) {
            bracket = {t};
            bracket_f = {f_new};
            bracket_g = {g_new};
            done = true;
            break;
        }
        if (py_ge(gtd_new, num(0.0))) {
            bracket = {t_prev, t};
            bracket_f = {f_prev, f_new};
            bracket_g = {g_prev, g_new.clone(at::MemoryFormat::Contiguous)};
            bracket_gtd = {gtd_prev, gtd_new};
            break;
        }
        // interpolate between the last two points, within [t + 0.01 (t - t_prev), 10 t]
        num min_step = py_add(t, py_mul(num(0.01), py_sub(t, t_prev)));
        num max_step = py_mul(t, num(10.0));
        num tmp = t;
        std::pair<num, num> bounds{min_step, max_step};
        t = cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, &bounds);

        t_prev = tmp;
        f_prev = f_new;
        g_prev = g_new.clone(at::MemoryFormat::Contiguous);
        gtd_prev = gtd_new;
        f_new = obj_func(t, &g_new);
        ls_func_evals += 1;
        gtd_new = g_new.dot(d);
        ls_iter += 1;
    }

    if (ls_iter == max_ls) {
        bracket = {num(0.0), t};
        bracket_f = {f, f_new};
        bracket_g = {g, g_new};
    }

    // zoom: shrink the bracket until a point satisfies the strong Wolfe conditions
    bool insuf_progress = false;
    size_t low_pos = 0, high_pos = 1;
    if (!(bracket_f.front() <= bracket_f.back())) {
        low_pos = 1;
        high_pos = 0;
    }
    while (!done && ls_iter < max_ls) {
        // the bracket is too small to go on
        if (py_lt(py_mul(py_abs(py_sub(bracket[1], bracket[0])), num(d_norm)), num(tolerance_change)))
            break;

        t = cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1],
                              bracket_gtd[1], nullptr);

        // keep away from the ends of the bracket when progress is slow
        num b_max = py_max(bracket[0], bracket[1]);
        num b_min = py_min(bracket[0], bracket[1]);
        num eps = py_mul(num(0.1), py_sub(b_max, b_min));
        if (py_lt(py_min(py_sub(b_max, t), py_sub(t, b_min)), eps)) {
            if (insuf_progress || py_ge(t, b_max) || py_le(t, b_min)) {
                if (py_lt(py_abs(py_sub(t, b_max)), py_abs(py_sub(t, b_min))))
                    t = py_sub(b_max, eps);
                else
                    t = py_add(b_min, eps);
                insuf_progress = false;
            } else {
                insuf_progress = true;
            }
        } else {
            insuf_progress = false;
        }

        f_new = obj_func(t, &g_new);
        ls_func_evals += 1;
        gtd_new = g_new.dot(d);
        ls_iter += 1;

        if (py_gt(num(f_new), armijo(t)) || f_new >= bracket_f[low_pos]) {
            // not low enough: the new point replaces the high end
            bracket[high_pos] = t;
            bracket_f[high_pos] = f_new;
            bracket_g[high_pos] = g_new.clone(at::MemoryFormat::Contiguous);
            bracket_gtd[high_pos] = gtd_new;
            if (bracket_f[0] <= bracket_f[1]) {
                low_pos = 0;
                high_pos = 1;
            } else {
                low_pos = 1;
                high_pos = 0;
            }
        } else {
            if (py_le(py_abs(gtd_new), curvature)) {
                done = true;
            } else if (py_ge(py_mul(gtd_new, py_sub(bracket[high_pos], bracket[low_pos])), num(0.0))) {
                bracket[high_pos] = bracket[low_pos];
                bracket_f[high_pos] = bracket_f[low_pos];
                bracket_g[high_pos] = bracket_g[low_pos];
                bracket_gtd[high_pos] = bracket_gtd[low_pos];
            }
            bracket[low_pos] = t;
            bracket_f[low_pos] = f_new;
            bracket_g[low_pos] = g_new.clone(at::MemoryFormat::Contiguous);
            bracket_gtd[low_pos] = gtd_new;
        }
    }

    return wolfe_result{bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals};
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

at::Tensor emi_lbfgs::step(const emi_lbfgs_closure &closure)
{
    at::NoGradGuard no_grad; // @torch.no_grad()

    const double lr = options_.lr;
    const int64_t max_iter = options_.max_iter;
    const int64_t max_eval = options_.max_eval;
    const double tolerance_grad = options_.tolerance_grad;
    const double tolerance_change = options_.tolerance_change;
    const int64_t history_size = options_.history_size;

    at::Tensor orig_loss;
    double loss = call_closure_float(closure, &orig_loss);
    int64_t current_evals = 1;
    func_evals_ += 1;

    at::Tensor flat_grad = gather_flat_grad();
    bool opt_cond = truth(at::le(flat_grad.abs().max(), tolerance_grad));
    if (opt_cond)
        return orig_loss;

    // the state of the previous step (Python: state.get(...))
    at::Tensor d = d_;
    num t = t_;
    std::vector<at::Tensor> old_dirs = old_dirs_, old_stps = old_stps_, ro = ro_;
    num H_diag = H_diag_;
    at::Tensor prev_flat_grad = prev_flat_grad_;
    double prev_loss = prev_loss_;

    int64_t n_iter = 0;
    while (n_iter < max_iter) {
        n_iter += 1;
        n_iter_ += 1;

        // ---- the descent direction
        if (n_iter_ == 1) {
            d = flat_grad.neg();
            old_dirs.clear();
            old_stps.clear();
            ro.clear();
            H_diag = 1.0;
        } else {
            at::Tensor y = flat_grad.sub(prev_flat_grad);
            at::Tensor s = t.is_tensor() ? d.mul(t.tensor) : d.mul(t.number);
            at::Tensor ys = y.dot(s);
            if (truth(at::gt(ys, 1e-10))) {
                if (static_cast<int64_t>(old_dirs.size()) == history_size) {
                    old_dirs.erase(old_dirs.begin());
                    old_stps.erase(old_stps.begin());
                    ro.erase(ro.begin());
                }
                old_dirs.push_back(y);
                old_stps.push_back(s);
                ro.push_back(at::mul(at::reciprocal(ys), 1.0)); // 1. / ys
                H_diag = at::div(ys, y.dot(y));
            }

            size_t num_old = old_dirs.size();
            if (al_.empty())
                al_.resize(static_cast<size_t>(history_size > 0 ? history_size : 0));
            if (al_.size() < num_old)
                al_.resize(num_old);

            // two-loop recursion on one buffer
            at::Tensor q = flat_grad.neg();
            for (size_t i = num_old; i-- > 0;) {
                al_[i] = at::mul(old_stps[i].dot(q), ro[i]);
                q.add_(old_dirs[i], al_[i].neg().item());
            }
            at::Tensor r = H_diag.is_tensor() ? at::mul(q, H_diag.tensor) : at::mul(q, H_diag.number);
            d = r;
            for (size_t i = 0; i < num_old; ++i) {
                at::Tensor be_i = at::mul(old_dirs[i].dot(r), ro[i]);
                r.add_(old_stps[i], at::sub(al_[i], be_i).item());
            }
        }

        if (!prev_flat_grad.defined())
            prev_flat_grad = flat_grad.clone(at::MemoryFormat::Contiguous);
        else
            prev_flat_grad.copy_(flat_grad);
        prev_loss = loss;

        // ---- the step length
        if (n_iter_ == 1) {
            // min(1., 1. / flat_grad.abs().sum()) * lr
            num inv = py_div(num(1.0), num(flat_grad.abs().sum()));
            t = py_mul(py_min(num(1.0), inv), num(lr));
        } else {
            t = lr;
        }

        at::Tensor gtd = flat_grad.dot(d);
        if (truth(at::gt(gtd, -tolerance_change)))
            break;

        int64_t ls_func_evals = 0;
        if (options_.strong_wolfe) {
            std::vector<at::Tensor> x_init = clone_param();
            obj_func_t obj_func = [&](const num &step, at::Tensor *g_out) {
                return directional_evaluate(closure, x_init, step, d, g_out);
            };
            wolfe_result ls = strong_wolfe(obj_func, t, d, loss, flat_grad, gtd);
            loss = ls.f_new;
            flat_grad = ls.g_new;
            t = ls.t;
            ls_func_evals = ls.ls_func_evals;
            add_grad(t, d);
            opt_cond = truth(at::le(flat_grad.abs().max(), tolerance_grad));
        } else {
            add_grad(t, d);
            if (n_iter != max_iter) {
                // evaluate again except on the last iteration
                loss = call_closure_float(closure);
                flat_grad = gather_flat_grad();
                opt_cond = truth(at::le(flat_grad.abs().max(), tolerance_grad));
                ls_func_evals = 1;
            }
        }

        current_evals += ls_func_evals;
        func_evals_ += ls_func_evals;

        // ---- stop?
        if (n_iter == max_iter)
            break;
        if (current_evals >= max_eval)
            break;
        if (opt_cond)
            break;
        at::Tensor moved = t.is_tensor() ? d.mul(t.tensor) : d.mul(t.number);
        if (truth(at::le(moved.abs().max(), tolerance_change)))
            break;
        if (std::fabs(loss - prev_loss) < tolerance_change)
            break;
    }

    d_ = d;
    t_ = t;
    old_dirs_ = std::move(old_dirs);
    old_stps_ = std::move(old_stps);
    ro_ = std::move(ro);
    H_diag_ = H_diag;
    prev_flat_grad_ = prev_flat_grad;
    prev_loss_ = prev_loss;
    return orig_loss;
}
