// shim/lbfgs.hpp: ember's LBFGS, a port of torch/optim/lbfgs.py (torch 1.13) operation for operation,
// with the line-search scalars kept as float32 0-dim tensors as Python does (libtorch's C++ LBFGS
// computes them in double and drifts from Python's runs: docs/LIBTORCH_NOTES.md).
// Used by shim/optim.cpp, which wraps it into an em_optimizer.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

struct emi_lbfgs_options {
    double lr = 1.0;
    int64_t max_iter = 20;
    int64_t max_eval = 0; // 0 = max_iter * 5 / 4 (Python's None), resolved by the constructor
    double tolerance_grad = 1e-7;
    double tolerance_change = 1e-9;
    int64_t history_size = 100;
    bool strong_wolfe = false;
};

// The closure: runs forward and backward with grad enabled and returns the loss (a one-element
// tensor). It may throw; the exception propagates out of step().
using emi_lbfgs_closure = std::function<at::Tensor()>;

// A scalar of lbfgs.py: depending on where it came from it is a Python number (a double here) or a
// 0-dim tensor (float32 for float32 parameters), and the arithmetic differs between the two (a
// tensor op casts the Python number to the tensor's dtype first). Python's int values (0, 1, 10)
// are exact in a double and behave the same in every op lbfgs.py applies to them.
struct emi_lbfgs_scalar {
    at::Tensor tensor; // defined: a 0-dim tensor
    double number = 0; // otherwise: the Python number
    emi_lbfgs_scalar() = default;
    emi_lbfgs_scalar(double v) : number(v) {}            // NOLINT: implicit on purpose
    emi_lbfgs_scalar(at::Tensor t) : tensor(std::move(t)) {} // NOLINT: implicit on purpose
    bool is_tensor() const { return tensor.defined(); }
};

// What lbfgs.py keeps in self.state[params[0]] between steps; names follow lbfgs.py.
struct emi_lbfgs_state {
    at::Tensor d, prev_flat_grad;
    emi_lbfgs_scalar t, H_diag;
    double prev_loss = 0;
    std::vector<at::Tensor> old_dirs, old_stps, ro; // the curvature pairs and their 1 / (y.s)
};

class emi_lbfgs {
public:
    emi_lbfgs(std::vector<at::Tensor> params, emi_lbfgs_options options);

    // One call of torch's LBFGS.step(closure): returns the loss of the FIRST closure evaluation
    // (orig_loss), as Python does. Updates the parameters in place (under no_grad).
    at::Tensor step(const emi_lbfgs_closure &closure);

    emi_lbfgs_options &options() { return options_; }
    const std::vector<at::Tensor> &params() const { return params_; }
    // state['func_evals'] and state['n_iter'] after the last step (for tests and traces)
    int64_t func_evals() const { return func_evals_; }
    int64_t n_iter() const { return n_iter_; }
    // For checkpoints: the state between steps (torch's LBFGS state_dict, without `al`, which every
    // step writes before it reads it), and its restoration.
    const emi_lbfgs_state &state() const { return state_; }
    void restore(emi_lbfgs_state st, int64_t func_evals, int64_t n_iter)
    {
        state_ = std::move(st);
        func_evals_ = func_evals;
        n_iter_ = n_iter;
        al_.clear();
    }

private:
    at::Tensor gather_flat_grad() const;
    void add_grad(const emi_lbfgs_scalar &step_size, const at::Tensor &update);
    std::vector<at::Tensor> clone_param() const;
    void set_param(const std::vector<at::Tensor> &data);
    double directional_evaluate(const emi_lbfgs_closure &closure, const std::vector<at::Tensor> &x,
                                const emi_lbfgs_scalar &t, const at::Tensor &d, at::Tensor *flat_grad);
    static void restart(emi_lbfgs_state &st, const at::Tensor &flat_grad);
    at::Tensor direction(emi_lbfgs_state &st, const at::Tensor &flat_grad);
    bool stalled(const emi_lbfgs_state &st, double loss) const;
    int64_t line_search(const emi_lbfgs_closure &closure, emi_lbfgs_state &st, const at::Tensor &gtd, bool last_iter,
                        double *loss, at::Tensor *flat_grad, bool *opt_cond);

    std::vector<at::Tensor> params_;
    emi_lbfgs_options options_;
    // Written at the end of a step only (as Python does), so a closure that throws leaves the
    // previous step's state.
    emi_lbfgs_state state_;
    std::vector<at::Tensor> al_; // state['al'], created on the first L-BFGS update
    int64_t func_evals_ = 0;
    int64_t n_iter_ = 0;
};
