/* optimizer.c: the optimizer handed to the user (LightningOptimizer) and the precision plugin's step.
 *
 * Lightning: core/optimizer.py (LightningOptimizer.step), plugins/precision/precision.py
 *            (Precision.optimizer_step, _wrap_closure, _after_closure, _clip_gradients, clip_gradients),
 *            core/module.py (LightningModule.clip_gradients, configure_gradient_clipping).
 * Order inside one step (32-true, bf16-mixed): the torch optimizer calls the wrapped closure, which runs
 * the closure, then on_before_optimizer_step (callbacks, module), then - automatic only -
 * configure_gradient_clipping; then the optimizer updates (LIGHTNING_SEMANTICS.md §1.1 step 4, §1.5).
 */
#include <math.h>
#include <stdlib.h>

#include "loop.h" /* em_trainer internals, emi_optimizer_wrap, CALL_CB_HOOKS */

typedef struct lightning_optimizer {
    em_trainer *t;
    size_t index;
    em_optimizer *raw;   /* borrowed from the setup */
    em_params *all;      /* every parameter of every group, for clipping */
} lightning_optimizer;

/* ---- the wrapped closure: closure, then on_before_optimizer_step, then clipping ------------------------ */

typedef struct wrapped_closure {
    em_trainer *t;
    lightning_optimizer *lo;
    const em_closure *user; /* NULL = Lightning's do_nothing_closure */
    /* for cfg.trace_path: gradient norms after the first closure evaluation, before and after clipping */
    bool measured;
    double norm_before, norm_after;
} wrapped_closure;

/* The total 2-norm of the gradients (clip_grad_norm_ with an infinite max_norm multiplies by 1.0). */
static double grad_norm(const em_params *all)
{
    double norm = NAN;
    if (em_clip_grad_norm(all, INFINITY, 2.0, &norm) != EM_OK)
        return NAN;
    return norm;
}

static em_status before_optimizer_step_hooks(em_trainer *t, em_optimizer *raw)
{
    const char *prev_hook = t->hook;
    CALL_CB_HOOKS(t, on_before_optimizer_step, raw);
    const em_module_ops *ops = t->module->ops;
    if (ops->on_before_optimizer_step != NULL) {
        t->hook = "on_before_optimizer_step";
        em_clear_error();
        em_status s = ops->on_before_optimizer_step(t->module, raw);
        t->hook = prev_hook;
        return trainer_check(t, "on_before_optimizer_step", s);
    }
    return EM_OK;
}

/* Lightning: Precision._clip_gradients -> LightningModule.configure_gradient_clipping (automatic only) */
static em_status configure_gradient_clipping(em_trainer *t, em_optimizer *raw)
{
    if (!t->module->automatic_optimization)
        return EM_OK;
    const em_module_ops *ops = t->module->ops;
    double val = t->cfg.gradient_clip_val;
    em_clip_algorithm algo = t->cfg.gradient_clip_algorithm;
    const char *prev = t->hook;
    t->hook = "configure_gradient_clipping";
    em_clear_error();
    em_status s = ops->configure_gradient_clipping != NULL ? ops->configure_gradient_clipping(t->module, raw, val, algo)
                                                           : em_clip_gradients(t->module, raw, val, algo);
    t->hook = prev;
    return trainer_check(t, "configure_gradient_clipping", s);
}

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
    bool measure = t->trace != NULL && !w->measured;
    if (measure)
        w->norm_before = grad_norm(w->lo->all);
    if (before_optimizer_step_hooks(t, w->lo->raw) != EM_OK)
        return NULL;
    if (configure_gradient_clipping(t, w->lo->raw) != EM_OK)
        return NULL;
    if (measure) {
        w->norm_after = grad_norm(w->lo->all);
        w->measured = true;
    }
    return loss;
}

/* ---- LightningOptimizer.step ------------------------------------------------------------------------------ */

static em_status lightning_step(em_optimizer *self, const em_closure *closure)
{
    lightning_optimizer *lo = emi_optimizer_wrapper_state(self);
    em_trainer *t = lo->t;
    if (!t->fitting)
        return emi_fail(EM_ESTATE, "em_optimizer_step: this optimizer belongs to a fit that has ended");
    /* manual optimization counts wrapped steps made during training_step (_ManualOptimization._on_after_step) */
    bool counting = !t->module->automatic_optimization && t->in_training_step;
    wrapped_closure w = {.t = t, .lo = lo, .user = closure, .norm_before = NAN, .norm_after = NAN};
    em_closure wc = {.fn = wrapped_closure_call, .ctx = &w};
    em_status s = em_optimizer_step(lo->raw, &wc);
    if (s != EM_OK)
        return s;
    if (t->trace != NULL)
        trace_optimizer_step(t, (int)lo->index, w.norm_before, w.norm_after);
    if (counting)
        t->global_step++;
    return EM_OK;
}

static void lightning_destroy(void *state)
{
    lightning_optimizer *lo = state;
    em_params_free(lo->all);
    free(lo);
}

static const em_optimizer_ops lightning_optimizer_ops = {
    .version = EM_OPTIMIZER_OPS_VERSION,
    .name = "LightningOptimizer",
    .step = lightning_step,
    .destroy = lightning_destroy,
};

static em_params *all_params(const em_optimizer *opt)
{
    em_params *all = em_params_new();
    if (all == NULL)
        return NULL;
    for (size_t g = 0; g < em_optimizer_num_groups(opt); g++) {
        const em_params *ps = em_optimizer_group_params(opt, g);
        for (size_t i = 0; i < em_params_size(ps); i++)
            if (em_params_add(all, em_params_get(ps, i)) != EM_OK) {
                em_params_free(all);
                return NULL;
            }
    }
    return all;
}

em_status wrappers_create(em_trainer *t)
{
    size_t n = t->setup.n_opts;
    t->wrappers = calloc(n > 0 ? n : 1, sizeof *t->wrappers);
    if (t->wrappers == NULL)
        return emi_fail(EM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        lightning_optimizer *lo = calloc(1, sizeof *lo);
        if (lo == NULL)
            return emi_fail(EM_ENOMEM, "out of memory");
        lo->t = t;
        lo->index = i;
        lo->raw = t->setup.opts[i];
        lo->all = all_params(lo->raw);
        if (lo->all == NULL) {
            free(lo);
            return em_last_status() != EM_OK ? em_last_status() : EM_ENOMEM;
        }
        t->wrappers[i] = emi_optimizer_wrap(lo->raw, &lightning_optimizer_ops, lo);
        if (t->wrappers[i] == NULL)
            return em_last_status() != EM_OK ? em_last_status() : EM_ENOMEM;
        emi_optimizer_set_owned(t->wrappers[i], true);
    }
    size_t ns = t->setup.n_scheds;
    t->sched_list = calloc(ns > 0 ? ns : 1, sizeof *t->sched_list);
    if (t->sched_list == NULL)
        return emi_fail(EM_ENOMEM, "out of memory");
    for (size_t i = 0; i < ns; i++)
        t->sched_list[i] = t->setup.scheds[i].sched;
    return EM_OK;
}

void wrappers_free(em_trainer *t)
{
    if (t->wrappers != NULL)
        for (size_t i = 0; i < t->setup.n_opts; i++) {
            emi_optimizer_set_owned(t->wrappers[i], false);
            em_optimizer_free(t->wrappers[i]);
        }
    free(t->wrappers);
    t->wrappers = NULL;
    free(t->sched_list);
    t->sched_list = NULL;
}

int optimizer_index(const em_trainer *t, const em_optimizer *opt)
{
    if (opt == NULL)
        return -1;
    for (size_t i = 0; i < t->setup.n_opts; i++)
        if (t->setup.opts[i] == opt || (t->wrappers != NULL && t->wrappers[i] == opt))
            return (int)i;
    return -1;
}

em_optimizer **em_optimizers(em_module *m, size_t *n)
{
    if (n != NULL)
        *n = 0;
    if (m == NULL || m->trainer_ == NULL || m->trainer_->wrappers == NULL) {
        emi_fail(EM_ESTATE, "em_optimizers: called outside em_trainer_fit (or before configure_optimizers returned)");
        return NULL;
    }
    if (n != NULL)
        *n = m->trainer_->setup.n_opts;
    return m->trainer_->wrappers;
}

em_scheduler **em_lr_schedulers(em_module *m, size_t *n)
{
    if (n != NULL)
        *n = 0;
    if (m == NULL || m->trainer_ == NULL || m->trainer_->sched_list == NULL) {
        if (m == NULL || m->trainer_ == NULL)
            emi_fail(EM_ESTATE, "em_lr_schedulers: called outside em_trainer_fit");
        return NULL;
    }
    if (m->trainer_->setup.n_scheds == 0)
        return NULL;
    if (n != NULL)
        *n = m->trainer_->setup.n_scheds;
    return m->trainer_->sched_list;
}

/* ---- clipping: LightningModule.clip_gradients -> Precision.clip_gradients --------------------------------- */

em_status clip_gradients(em_trainer *t, em_optimizer *opt, double clip_val, em_clip_algorithm algo)
{
    if (!(clip_val > 0))
        return EM_OK; /* Precision.clip_gradients: clip_val <= 0 does nothing */
    int idx = optimizer_index(t, opt);
    em_params *tmp = NULL;
    const em_params *params;
    if (idx >= 0) {
        params = ((lightning_optimizer *)emi_optimizer_wrapper_state(t->wrappers[idx]))->all;
    } else {
        tmp = all_params(em_optimizer_inner(opt));
        if (tmp == NULL)
            return em_last_status() != EM_OK ? em_last_status() : EM_ENOMEM;
        params = tmp;
    }
    em_status s = algo == EM_CLIP_VALUE ? em_clip_grad_value(params, clip_val)
                                        : em_clip_grad_norm(params, clip_val, 2.0, NULL);
    em_params_free(tmp);
    return s;
}

static const char *algo_name(em_clip_algorithm a)
{
    return a == EM_CLIP_VALUE ? "EM_CLIP_VALUE" : a == EM_CLIP_NORM ? "EM_CLIP_NORM" : "EM_CLIP_DEFAULT";
}

em_status em_clip_gradients(em_module *m, em_optimizer *opt, double clip_val, em_clip_algorithm algo)
{
    if (m == NULL || opt == NULL)
        return emi_fail(EM_EINVAL, "em_clip_gradients: NULL argument");
    em_trainer *t = m->trainer_;
    if (t == NULL)
        return emi_fail(EM_ESTATE, "em_clip_gradients: called outside em_trainer_fit");
    double tval = t->cfg.gradient_clip_val;
    if (isnan(clip_val)) {
        clip_val = isnan(tval) ? 0.0 : tval;
    } else if (!isnan(tval) && tval != clip_val) {
        return emi_fail(EM_EINVAL, "em_clip_gradients: You have set `gradient_clip_val=%g` in the trainer config and "
                                   "have passed `clip_gradients(gradient_clip_val=%g)`. Please use only one of them.",
                        tval, clip_val);
    }
    em_clip_algorithm talgo = t->cfg.gradient_clip_algorithm;
    if (algo == EM_CLIP_DEFAULT) {
        algo = talgo != EM_CLIP_DEFAULT ? talgo : EM_CLIP_NORM;
    } else if (algo != EM_CLIP_NORM && algo != EM_CLIP_VALUE) {
        return emi_fail(EM_EINVAL, "em_clip_gradients: `gradient_clip_algorithm` %d is invalid. Allowed algorithms: "
                                   "EM_CLIP_VALUE, EM_CLIP_NORM", (int)algo);
    } else if (talgo != EM_CLIP_DEFAULT && talgo != algo) {
        return emi_fail(EM_EINVAL, "em_clip_gradients: You have set `gradient_clip_algorithm=%s` in the trainer "
                                   "config and have passed `clip_gradients(gradient_clip_algorithm=%s)`. Please use "
                                   "only one of them.", algo_name(talgo), algo_name(algo));
    }
    return clip_gradients(t, opt, clip_val, algo);
}
