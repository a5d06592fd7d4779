/* precision.c: the precision plugin - 32-true, bf16-mixed and 16-mixed with its grad scaler.
 *
 * Lightning: plugins/precision/precision.py (Precision.optimizer_step, _wrap_closure, _after_closure,
 *            _clip_gradients, clip_gradients, clip_grad_by_norm / _by_value),
 *            plugins/precision/amp.py (MixedPrecision: autocast, pre_backward's scaling, optimizer_step
 *            with the scaler, clip_gradients' fused-optimizer check),
 *            trainer/connectors/accelerator_connector.py (16-mixed on the CPU becomes bf16-mixed),
 *            core/module.py (LightningModule.clip_gradients: the argument checks).
 * Order inside one step (docs/LIGHTNING_RULES.md §1.1 step 4, §1.5, §6, §7): the torch optimizer
 * calls the wrapped closure, which runs the closure, then on_before_optimizer_step (callbacks, module),
 * then - automatic only - configure_gradient_clipping; then the optimizer updates. Under 16-mixed
 * (§7.1) the closure runs outside the optimizer, the gradients are unscaled, the same hooks run, then
 * the scaler steps (or skips) and updates.
 */
#include <math.h>
#include <string.h>

#include "grad_scaler.h"
#include "hooks.h"
#include "precision.h"
#include "setup.h"

/* ---- which precision, and autocast ------------------------------------------------------------------- */

em_status emi_precision_resolve(em_trainer *t)
{
    t->fit.precision = t->cfg.precision;
    t->fit.scaler = NULL;
    t->fit.autocast_on = t->fit.autocast_warned = false;
    if (t->fit.precision != EM_PRECISION_16_MIXED)
        return EM_OK;
    /* a scaler given by the user is Lightning's precision plugin instance: used as it is, on any device */
    if (t->cfg.grad_scaler != NULL) {
        t->fit.scaler = t->cfg.grad_scaler;
        return EM_OK;
    }
    if (t->fit.device.type != EM_CUDA) {
        emi_warn("You passed `Trainer(accelerator='cpu', precision='16-mixed')` but AMP with fp16 is not supported on "
                 "CPU. Using `precision='bf16-mixed'` instead.");
        t->fit.precision = EM_PRECISION_BF16_MIXED;
        return EM_OK;
    }
    if (t->own_scaler == NULL && (t->own_scaler = em_grad_scaler_new(NULL)) == NULL)
        return em_last_status() != EM_OK ? em_last_status() : EM_ENOMEM;
    t->fit.scaler = t->own_scaler;
    return EM_OK;
}

em_grad_scaler *em_trainer_grad_scaler(const em_trainer *t)
{
    if (!emi_trainer_ok(t, __func__))
        return NULL;
    if (t->fitting)
        return t->fit.scaler;
    if (t->cfg.grad_scaler != NULL && t->cfg.precision == EM_PRECISION_16_MIXED)
        return t->cfg.grad_scaler;
    return t->cfg.precision == EM_PRECISION_16_MIXED ? t->own_scaler : NULL;
}

em_status emi_precision_forward_begin(em_trainer *t, em_device device)
{
    t->fit.autocast_on = false;
    if (t->fit.precision == EM_PRECISION_32_TRUE)
        return EM_OK;
    em_dtype dtype = t->fit.precision == EM_PRECISION_16_MIXED ? EM_F16 : EM_BF16;
    if (!emi_autocast_supported(dtype, device)) {
        /* torch.autocast("cpu", dtype=torch.half) before torch 2.5: a warning, and no autocast */
        if (!t->fit.autocast_warned)
            emi_warn("In CPU autocast, but the target dtype is not supported. Disabling autocast.\nCPU Autocast only "
                     "supports dtype of torch.bfloat16 currently.");
        t->fit.autocast_warned = true;
        return EM_OK;
    }
    em_status s = emi_autocast_begin(dtype, device);
    t->fit.autocast_on = s == EM_OK;
    return s;
}

void emi_precision_forward_end(em_trainer *t)
{
    if (t->fit.autocast_on)
        emi_autocast_end();
    t->fit.autocast_on = false;
}

/* ---- 16-mixed: the scaler's part ------------------------------------------------------------------------ */

em_tensor *emi_precision_pre_backward(em_trainer *t, em_tensor *loss)
{
    if (t->fit.scaler == NULL)
        return loss;
    return em_grad_scaler_scale(t->fit.scaler, loss);
}

/* Lightning's MixedPrecision.optimizer_step refuses LBFGS (an isinstance check at the first step); ember
 * also refuses a C optimizer that says it needs a closure, and does it before training. */
static em_status check_closure_optimizer(em_optimizer *opt)
{
    bool fused = false, needs_closure = false;
    emi_optimizer_amp_traits(opt, &fused, &needs_closure);
    if (!needs_closure)
        return EM_OK;
    if (strcmp(em_optimizer_name(opt), "LBFGS") == 0)
        return emi_fail(EM_EINVAL, "AMP and the LBFGS optimizer are not compatible.");
    return emi_fail(EM_EINVAL, "AMP and the %s optimizer are not compatible: its step needs a closure "
                               "(ops->requires_closure), which the grad scaler cannot pass.", em_optimizer_name(opt));
}

em_status emi_precision_check_optimizers(em_trainer *t)
{
    if (t->fit.scaler == NULL)
        return EM_OK;
    for (size_t i = 0; i < t->setup.n_opts; i++) {
        em_status s = check_closure_optimizer(t->setup.opts[i]);
        if (s != EM_OK)
            return s;
    }
    return EM_OK;
}

/* Unscale `opt`'s gradients unless they were since the last step (enabled scaler only). */
static em_status unscale_once(em_trainer *t, em_optimizer *opt)
{
    if (!em_grad_scaler_is_enabled(t->fit.scaler) || emi_grad_scaler_unscaled(t->fit.scaler, opt))
        return EM_OK;
    return em_grad_scaler_unscale(t->fit.scaler, opt);
}

/* ---- clipping: LightningModule.clip_gradients -> Precision.clip_gradients ----------------------------- */

/* Precision.clip_gradients on `params`: clip_val <= 0 does nothing. */
static em_status clip(const em_params *params, double clip_val, em_clip_algorithm algo)
{
    if (!(clip_val > 0))
        return EM_OK;
    return algo == EM_CLIP_VALUE ? em_clip_grad_value(params, clip_val) : em_clip_grad_norm(params, clip_val, 2.0, NULL);
}

static const char *algo_name(em_clip_algorithm a)
{
    return a == EM_CLIP_VALUE ? "EM_CLIP_VALUE" : a == EM_CLIP_NORM ? "EM_CLIP_NORM" : "EM_CLIP_DEFAULT";
}

/* LightningModule.clip_gradients: the value and algorithm given here against the Trainer's. */
static em_status clip_arguments(const em_trainer *t, double *clip_val, em_clip_algorithm *algo)
{
    double tval = t->fit.clip_val;
    if (isnan(*clip_val)) {
        *clip_val = isnan(tval) ? 0.0 : tval;
    } else if (!isnan(tval) && tval != *clip_val) {
        return emi_fail(EM_EINVAL, "em_clip_gradients: You have set `gradient_clip_val=%g` in the trainer config and "
                                   "have passed `clip_gradients(gradient_clip_val=%g)`. Please use only one of them.",
                        tval, *clip_val);
    }
    em_clip_algorithm talgo = t->fit.clip_algo;
    if (*algo == EM_CLIP_DEFAULT) {
        *algo = talgo != EM_CLIP_DEFAULT ? talgo : EM_CLIP_NORM;
    } else if (*algo != EM_CLIP_NORM && *algo != EM_CLIP_VALUE) {
        return emi_fail(EM_EINVAL, "em_clip_gradients: `gradient_clip_algorithm` %d is invalid. Allowed algorithms: "
                                   "EM_CLIP_VALUE, EM_CLIP_NORM", (int)*algo);
    } else if (talgo != EM_CLIP_DEFAULT && talgo != *algo) {
        return emi_fail(EM_EINVAL, "em_clip_gradients: You have set `gradient_clip_algorithm=%s` in the trainer "
                                   "config and have passed `clip_gradients(gradient_clip_algorithm=%s)`. Please use "
                                   "only one of them.", algo_name(talgo), algo_name(*algo));
    }
    return EM_OK;
}

em_status em_clip_gradients(em_module *m, em_optimizer *opt, double clip_val, em_clip_algorithm algo)
{
    if (m == NULL || opt == NULL)
        return emi_fail(EM_EINVAL, "em_clip_gradients: NULL argument");
    em_trainer *t = m->trainer_;
    if (t == NULL)
        return emi_fail(EM_ESTATE, "em_clip_gradients: called outside em_trainer_fit");
    em_status s = clip_arguments(t, &clip_val, &algo);
    if (s != EM_OK || !(clip_val > 0))
        return s;
    if (t->fit.precision != EM_PRECISION_32_TRUE) { /* MixedPrecision.clip_gradients */
        bool fused = false, needs_closure = false;
        emi_optimizer_amp_traits(opt, &fused, &needs_closure);
        if (fused)
            return emi_fail(EM_EINVAL, "em_clip_gradients: The current optimizer, %s, does not allow for gradient "
                                       "clipping because it performs unscaling of gradients internally. HINT: Are you "
                                       "using a 'fused' optimizer?", em_optimizer_name(opt));
    }
    /* the deliberate difference (Lightning #18089): manual optimization clips unscaled gradients */
    if (t->fit.scaler != NULL && t->module->manual_optimization && (s = unscale_once(t, opt)) != EM_OK)
        return s;
    int idx = emi_optimizer_index(t, opt);
    if (idx >= 0)
        return clip(t->setup.params[idx], clip_val, algo);
    /* an optimizer of the user's own, outside this fit: its parameters, gathered for this call */
    em_params *tmp = emi_optimizer_params(em_optimizer_inner(opt));
    s = tmp != NULL ? clip(tmp, clip_val, algo) : (em_last_status() != EM_OK ? em_last_status() : EM_ENOMEM);
    em_params_free(tmp);
    return s;
}

/* Lightning: Precision._clip_gradients -> LightningModule.configure_gradient_clipping (automatic only),
 * called with the Trainer's values (NAN / EM_CLIP_DEFAULT when unset). */
static em_status configure_gradient_clipping(em_trainer *t, em_optimizer *raw)
{
    if (t->module->manual_optimization)
        return EM_OK;
    const em_module_ops *ops = t->module->ops;
    const char *prev = emi_hook_enter(t, "configure_gradient_clipping");
    em_status s = ops->configure_gradient_clipping != NULL
                      ? ops->configure_gradient_clipping(t->module, raw, t->fit.clip_val, t->fit.clip_algo)
                      : em_clip_gradients(t->module, raw, t->fit.clip_val, t->fit.clip_algo);
    return emi_hook_leave(t, prev, "configure_gradient_clipping", s);
}

/* ---- the optimizer step: the wrapped closure ------------------------------------------------------------ */

typedef struct wrapped_closure {
    em_trainer *t;
    size_t index;
    const em_closure *user; /* NULL = Lightning's do_nothing_closure */
    emi_grad_probe *probe;
} wrapped_closure;

/* The total 2-norm of the gradients (clip_grad_norm_ with an infinite max_norm multiplies by 1.0). */
static double grad_norm(const em_params *all)
{
    double norm = NAN;
    if (em_clip_grad_norm(all, INFINITY, 2.0, &norm) != EM_OK)
        return NAN;
    return norm;
}

/* Lightning: Precision._after_closure: on_before_optimizer_step, then (automatic) clipping; the probe
 * measures the gradients around it. */
static em_status after_closure(em_trainer *t, size_t index, emi_grad_probe *probe)
{
    em_optimizer *raw = t->setup.opts[index];
    bool measure = probe != NULL && !probe->measured;
    if (measure)
        probe->norm_before = grad_norm(t->setup.params[index]);
    em_status s = emi_hooks_call(t, EMI_ON_BEFORE_OPTIMIZER_STEP, &(emi_hook_args){.opt = raw});
    if (s != EM_OK || (s = configure_gradient_clipping(t, raw)) != EM_OK)
        return s;
    if (measure) {
        probe->norm_after = grad_norm(t->setup.params[index]);
        probe->measured = true;
    }
    return EM_OK;
}

/* Lightning: Precision._wrap_closure: the closure, then _after_closure. */
static em_tensor *wrapped_closure_call(void *ctx)
{
    wrapped_closure *w = ctx;
    em_trainer *t = w->t;
    em_tensor *loss = NULL;
    if (w->user != NULL) {
        loss = w->user->fn(w->user->ctx);
        if (loss == NULL && emi_has_error())
            return NULL;
    }
    if (after_closure(t, w->index, w->probe) != EM_OK)
        return NULL;
    return loss;
}

/* Lightning: MixedPrecision.optimizer_step with a scaler (§7.1). */
static em_status scaler_optimizer_step(em_trainer *t, size_t index, const em_closure *closure, emi_grad_probe *probe)
{
    em_optimizer *raw = t->setup.opts[index];
    em_status s = check_closure_optimizer(raw);
    if (s != EM_OK)
        return s;
    /* the closure once, outside the optimizer (NULL: Lightning's do_nothing_closure returns None) */
    em_tensor *result = NULL;
    if (closure != NULL) {
        em_clear_error();
        result = closure->fn(closure->ctx);
        if (result == NULL && emi_has_error())
            return em_last_status();
    }
    /* backward was skipped in automatic optimization (training_step returned None): no unscaling */
    bool skip = result == NULL && !t->module->manual_optimization;
    bool fused = false, needs_closure = false;
    emi_optimizer_amp_traits(raw, &fused, &needs_closure);
    if (!fused && !skip && (s = unscale_once(t, raw)) != EM_OK)
        return s;
    if ((s = after_closure(t, index, probe)) != EM_OK)
        return s;
    if (skip)
        return EM_OK;
    /* the scaler skips the optimizer's update when a gradient is inf/NaN */
    if ((s = em_grad_scaler_step(t->fit.scaler, raw, NULL, NULL)) != EM_OK)
        return s;
    return em_grad_scaler_update(t->fit.scaler);
}

em_status emi_precision_optimizer_step(em_trainer *t, size_t index, const em_closure *closure, emi_grad_probe *probe)
{
    if (t->fit.scaler != NULL)
        return scaler_optimizer_step(t, index, closure, probe);
    wrapped_closure w = {.t = t, .index = index, .user = closure, .probe = probe};
    em_closure wc = {.fn = wrapped_closure_call, .ctx = &w};
    return em_optimizer_step(t->setup.opts[index], &wc);
}
