/* precision.c: the precision plugin - 32-true and bf16-mixed (16-mixed's grad scaler will live here).
 *
 * Lightning: plugins/precision/precision.py (Precision.optimizer_step, _wrap_closure, _after_closure,
 *            _clip_gradients, clip_gradients, clip_grad_by_norm / _by_value),
 *            plugins/precision/amp.py (MixedPrecision: autocast, the scaler),
 *            trainer/connectors/accelerator_connector.py (16-mixed on the CPU becomes bf16-mixed),
 *            core/module.py (LightningModule.clip_gradients: the argument checks).
 * Order inside one step (docs/LIGHTNING_RULES.md §1.1 step 4, §1.5, §6, §7): the torch optimizer
 * calls the wrapped closure, which runs the closure, then on_before_optimizer_step (callbacks, module),
 * then - automatic only - configure_gradient_clipping; then the optimizer updates.
 */
#include <math.h>

#include "hooks.h"
#include "precision.h"
#include "setup.h"

/* ---- which precision, and autocast ------------------------------------------------------------------- */

em_status emi_precision_resolve(em_trainer *t)
{
    t->fit.precision = t->cfg.precision;
    if (t->fit.precision != EM_PRECISION_16_MIXED)
        return EM_OK;
    if (!em_cuda_is_available()) {
        emi_warn("You passed `precision=EM_PRECISION_16_MIXED` but AMP with fp16 is not supported on CPU. Using "
                 "`precision=EM_PRECISION_BF16_MIXED` instead.");
        t->fit.precision = EM_PRECISION_BF16_MIXED;
        return EM_OK;
    }
    return emi_fail(EM_EUNSUPPORTED, "em_trainer_fit: 16-mixed precision on CUDA needs the gradient scaler, which "
                                     "this version of ember does not implement yet; use EM_PRECISION_BF16_MIXED");
}

em_status emi_precision_forward_begin(em_trainer *t, em_device device)
{
    if (t->fit.precision == EM_PRECISION_32_TRUE)
        return EM_OK;
    return emi_autocast_begin(t->fit.precision == EM_PRECISION_16_MIXED ? EM_F16 : EM_BF16, device);
}

void emi_precision_forward_end(em_trainer *t)
{
    if (t->fit.precision != EM_PRECISION_32_TRUE)
        emi_autocast_end();
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

/* Lightning: Precision._wrap_closure: the closure, then _after_closure. */
static em_tensor *wrapped_closure_call(void *ctx)
{
    wrapped_closure *w = ctx;
    em_trainer *t = w->t;
    em_optimizer *raw = t->setup.opts[w->index];
    em_tensor *loss = NULL;
    if (w->user != NULL) {
        loss = w->user->fn(w->user->ctx);
        if (loss == NULL && emi_has_error())
            return NULL;
    }
    bool measure = w->probe != NULL && !w->probe->measured;
    if (measure)
        w->probe->norm_before = grad_norm(t->setup.params[w->index]);
    if (emi_hooks_call(t, EMI_ON_BEFORE_OPTIMIZER_STEP, &(emi_hook_args){.opt = raw}) != EM_OK)
        return NULL;
    if (configure_gradient_clipping(t, raw) != EM_OK)
        return NULL;
    if (measure) {
        w->probe->norm_after = grad_norm(t->setup.params[w->index]);
        w->probe->measured = true;
    }
    return loss;
}

em_status emi_precision_optimizer_step(em_trainer *t, size_t index, const em_closure *closure, emi_grad_probe *probe)
{
    wrapped_closure w = {.t = t, .index = index, .user = closure, .probe = probe};
    em_closure wc = {.fn = wrapped_closure_call, .ctx = &w};
    return em_optimizer_step(t->setup.opts[index], &wc);
}
