/* nan_guard.c: an opt-in NaN/Inf guard - a built-in callback on the public API that stops fit at the first
 * non-finite loss (before its backward, so the parameters are still the last finite ones), and optionally
 * at the first non-finite gradient (before the optimizer step) or parameter (after the batch). The
 * trainer's failure message names the place: "epoch 2, batch 17, on_before_backward: ...".
 *
 * Lightning 2.2.5 has no such check by default: its Trainer(detect_anomaly=True) turns on torch's
 * anomaly mode (every backward function checks its outputs; slow) and the former
 * Trainer(terminate_on_nan=True) (removed in 1.7) checked the loss and the parameters after each batch
 * with the messages kept here ("The loss returned in `training_step` is nan.", "Detected nan and/or inf
 * values in `net.0.weight`. ..."). ember's guard is that check, run earlier, as a callback: off unless
 * added, as in Lightning.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h" /* emi_fail */
#include "ember/trainer.h"

typedef struct nan_guard {
    bool check_grads, check_params;
} nan_guard;

/* Whether every element of `t` is finite: sum(t - t) is 0 for finite elements and NaN as soon as one is
 * NaN or infinite (no overflow, whatever the magnitudes). *ok is set; the return is the op's status. */
static em_status all_finite(const em_tensor *t, bool *ok)
{
    em_scope_begin();
    em_tensor *d = em_sum(em_sub(t, t));
    em_status s = d == NULL ? em_last_status() : EM_OK;
    if (s == EM_OK)
        *ok = isfinite(em_tensor_item(d)) != 0;
    em_scope_end();
    return s;
}

static const char *py_float(char *buf, size_t n, double v)
{
    if (isnan(v))
        snprintf(buf, n, "nan");
    else if (isinf(v))
        snprintf(buf, n, "%sinf", v < 0 ? "-" : "");
    else
        snprintf(buf, n, "%.17g", v);
    return buf;
}

static em_status ng_on_before_backward(em_callback *cb, em_trainer *t, em_module *m, em_tensor *loss)
{
    (void)cb, (void)t, (void)m;
    if (loss == NULL)
        return EM_OK;
    bool ok = true;
    em_status s = all_finite(loss, &ok);
    if (s != EM_OK || ok)
        return s;
    char v[48] = "nan or inf";
    if (em_tensor_numel(loss) == 1) {
        em_scope_begin();
        py_float(v, sizeof v, em_tensor_item(loss));
        em_scope_end();
    }
    return emi_fail(EM_ERROR, "NaN guard: The loss returned in `training_step` is %s.", v);
}

/* The parameters of `m` by name (its layers), or those of the trainer's optimizers by position. `grads`:
 * check their gradients instead. */
static em_status check_tensors(em_trainer *t, em_module *m, bool grads)
{
    const char *what = grads ? "the gradient of " : "";
    bool ok = true;
    em_status s = EM_OK;
    if (m->layers != NULL) {
        size_t n = em_nn_num_parameters(m->layers);
        for (size_t i = 0; i < n && s == EM_OK; i++) {
            em_tensor *p = em_nn_parameter(m->layers, i);
            em_tensor *x = grads ? em_tensor_grad(p) : p;
            if (x == NULL || (s = all_finite(x, &ok)) != EM_OK || ok)
                continue;
            return emi_fail(EM_ERROR, "NaN guard: Detected nan and/or inf values in %s`%s`. Check your forward pass "
                                      "for numerically unstable operations.", what,
                            em_nn_parameter_name(m->layers, i));
        }
        return s;
    }
    for (size_t k = 0; k < em_trainer_num_optimizers(t) && s == EM_OK; k++) {
        const em_optimizer *o = em_trainer_optimizer(t, k);
        for (size_t g = 0; g < em_optimizer_num_groups(o) && s == EM_OK; g++) {
            const em_params *ps = em_optimizer_group_params(o, g);
            for (size_t i = 0; i < em_params_size(ps) && s == EM_OK; i++) {
                em_tensor *p = em_params_get(ps, i);
                em_tensor *x = grads ? em_tensor_grad(p) : p;
                if (x == NULL || (s = all_finite(x, &ok)) != EM_OK || ok)
                    continue;
                return emi_fail(EM_ERROR, "NaN guard: Detected nan and/or inf values in %sparameter %zu of group %zu "
                                          "of optimizer %zu (%s). Check your forward pass for numerically unstable "
                                          "operations.", what, i, g, k, em_optimizer_name(o));
            }
        }
    }
    return s;
}

static em_status ng_on_before_optimizer_step(em_callback *cb, em_trainer *t, em_module *m, em_optimizer *opt)
{
    (void)opt;
    const nan_guard *g = em_callback_state(cb);
    return g->check_grads ? check_tensors(t, m, true) : EM_OK;
}

static em_status ng_on_train_batch_end(em_callback *cb, em_trainer *t, em_module *m, const em_tensor *loss,
                                       const em_batch *b, int64_t batch_idx)
{
    (void)loss, (void)b, (void)batch_idx;
    const nan_guard *g = em_callback_state(cb);
    return g->check_params ? check_tensors(t, m, false) : EM_OK;
}

static const em_callback_ops ng_ops = {
    .version = EM_CALLBACK_OPS_VERSION,
    .name = "NaNGuard",
    .on_before_backward = ng_on_before_backward,
    .on_before_optimizer_step = ng_on_before_optimizer_step,
    .on_train_batch_end = ng_on_train_batch_end,
    .destroy = free,
};

/* on_train_batch_end is set only when parameters are checked: the trainer keeps each batch's output
 * for callbacks that have it. */
static const em_callback_ops ng_ops_no_params = {
    .version = EM_CALLBACK_OPS_VERSION,
    .name = "NaNGuard",
    .on_before_backward = ng_on_before_backward,
    .on_before_optimizer_step = ng_on_before_optimizer_step,
    .destroy = free,
};

em_callback *em_nan_guard(const em_nan_guard_opts *opts)
{
    nan_guard *g = calloc(1, sizeof *g);
    if (g == NULL) {
        emi_fail(EM_ENOMEM, "em_nan_guard: out of memory");
        return NULL;
    }
    if (opts != NULL) {
        g->check_grads = opts->check_grads;
        g->check_params = opts->check_params;
    }
    return em_callback_new(g->check_params ? &ng_ops : &ng_ops_no_params, g);
}
