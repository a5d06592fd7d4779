/* manual.c: manual optimization - the user drives zero_grad / backward / step.
 *
 * Lightning: loops/optimization/manual.py (_ManualOptimization, ManualResult),
 *            core/module.py (manual_backward, toggle_optimizer, untoggle_optimizer).
 * Rules: LIGHTNING_SEMANTICS.md §4.
 */
#include <stdlib.h>

#include "loop.h" /* em_trainer internals, emi_fail, run_backward */

/* ---- one batch ------------------------------------------------------------------------------------------ */

/* Lightning: _ManualOptimization.run: training_step with wrapped steps counted; its output is only
 * handed to on_train_batch_end (ManualResult: the detached tensor). */
em_status manual_run(em_trainer *t, em_batch *batch, int64_t batch_idx, em_tensor **out)
{
    const char *prev_hook = t->hook;
    *out = NULL;
    bool autocast = t->precision != EM_PRECISION_32_TRUE;
    if (autocast && emi_autocast_begin(t->precision == EM_PRECISION_16_MIXED ? EM_F16 : EM_BF16, em_tensor_device(batch->t[0])) != EM_OK)
        return trainer_fail(t, "training_step", em_last_status());
    t->in_training_step = true;
    t->hook = "training_step";
    em_clear_error();
    em_tensor *r = t->module->ops->training_step(t->module, batch, batch_idx);
    t->hook = prev_hook;
    t->in_training_step = false;
    if (autocast)
        emi_autocast_end();
    em_status s = trainer_check(t, "training_step", EM_OK);
    if (s != EM_OK)
        return s;
    if (r != NULL) {
        if (t->trace != NULL && em_tensor_numel(r) == 1)
            trace_training_step(t, em_tensor_item(r));
        *out = em_detach(r);
    }
    return EM_OK;
}

/* ---- manual_backward ------------------------------------------------------------------------------------- */

static em_status manual_backward(em_module *m, em_tensor *loss, bool retain)
{
    if (m == NULL || loss == NULL)
        return emi_has_error() ? em_last_status() : emi_fail(EM_EINVAL, "em_manual_backward: NULL argument");
    em_trainer *t = m->trainer_;
    if (t == NULL)
        return emi_fail(EM_ESTATE, "em_manual_backward: called outside em_trainer_fit");
    if (m->automatic_optimization)
        return emi_fail(EM_ESTATE, "em_manual_backward: to use manual_backward, disable automatic optimization: set "
                                   "`automatic_optimization = false` in your module");
    /* hooks inside run the clear-call-check discipline; keep the caller's hook name for messages */
    const char *prev = t->hook;
    em_status s = run_backward(t, loss, retain);
    t->hook = prev;
    if (s != EM_OK) {
        /* leave a message in the slot for the caller's training_step, which will return failure */
        if (!emi_has_error())
            emi_fail(s, "%s", t->error);
    }
    return s;
}

em_status em_manual_backward(em_module *m, em_tensor *loss)
{
    return manual_backward(m, loss, false);
}

em_status em_manual_backward_retain(em_module *m, em_tensor *loss)
{
    return manual_backward(m, loss, true);
}

/* ---- toggle_optimizer / untoggle_optimizer ------------------------------------------------------------------ */

typedef struct emi_toggle {
    const void *id;      /* the parameter's identity */
    em_tensor *param;    /* borrowed from the optimizer's group lists */
    bool requires_grad;  /* its flag before toggling */
} emi_toggle;

void toggle_free(em_trainer *t)
{
    free(t->toggle);
    t->toggle = NULL;
    t->n_toggle = 0;
}

static emi_toggle *toggle_find(em_trainer *t, const void *id)
{
    for (size_t i = 0; i < t->n_toggle; i++)
        if (t->toggle[i].id == id)
            return &t->toggle[i];
    return NULL;
}

static size_t count_params(const em_optimizer *opt)
{
    size_t n = 0;
    for (size_t g = 0; g < em_optimizer_num_groups(opt); g++)
        n += em_params_size(em_optimizer_group_params(opt, g));
    return n;
}

/* Lightning: LightningModule.toggle_optimizer */
em_status em_toggle_optimizer(em_module *m, em_optimizer *opt)
{
    if (m == NULL || opt == NULL)
        return emi_fail(EM_EINVAL, "em_toggle_optimizer: NULL argument");
    em_trainer *t = m->trainer_;
    if (t == NULL)
        return emi_fail(EM_ESTATE, "em_toggle_optimizer: called outside em_trainer_fit");
    int idx = optimizer_index(t, opt);
    if (idx < 0)
        return emi_fail(EM_EINVAL, "em_toggle_optimizer: this optimizer is not one of em_optimizers()");
    size_t total = 0;
    for (size_t i = 0; i < t->setup.n_opts; i++)
        total += count_params(t->setup.opts[i]);
    toggle_free(t);
    t->toggle = calloc(total > 0 ? total : 1, sizeof *t->toggle);
    if (t->toggle == NULL)
        return emi_fail(EM_ENOMEM, "em_toggle_optimizer: out of memory");
    /* 1. remember every optimizer's parameters' flags (first occurrence wins) and freeze them all */
    for (size_t i = 0; i < t->setup.n_opts; i++) {
        const em_optimizer *o = t->setup.opts[i];
        for (size_t g = 0; g < em_optimizer_num_groups(o); g++) {
            const em_params *ps = em_optimizer_group_params(o, g);
            for (size_t k = 0; k < em_params_size(ps); k++) {
                em_tensor *p = em_params_get(ps, k);
                const void *id = emi_tensor_id(p);
                if (toggle_find(t, id) == NULL)
                    t->toggle[t->n_toggle++] = (emi_toggle){id, p, em_tensor_requires_grad(p)};
                em_tensor_set_requires_grad(p, false);
            }
        }
    }
    /* 2. give this optimizer's parameters their original flag back */
    const em_optimizer *o = t->setup.opts[idx];
    for (size_t g = 0; g < em_optimizer_num_groups(o); g++) {
        const em_params *ps = em_optimizer_group_params(o, g);
        for (size_t k = 0; k < em_params_size(ps); k++) {
            em_tensor *p = em_params_get(ps, k);
            emi_toggle *e = toggle_find(t, emi_tensor_id(p));
            em_tensor_set_requires_grad(p, e->requires_grad);
        }
    }
    return EM_OK;
}

/* Lightning: LightningModule.untoggle_optimizer */
em_status em_untoggle_optimizer(em_module *m, em_optimizer *opt)
{
    if (m == NULL || opt == NULL)
        return emi_fail(EM_EINVAL, "em_untoggle_optimizer: NULL argument");
    em_trainer *t = m->trainer_;
    if (t == NULL)
        return emi_fail(EM_ESTATE, "em_untoggle_optimizer: called outside em_trainer_fit");
    int idx = optimizer_index(t, opt);
    if (idx < 0)
        return emi_fail(EM_EINVAL, "em_untoggle_optimizer: this optimizer is not one of em_optimizers()");
    for (size_t i = 0; i < t->setup.n_opts; i++) {
        if ((int)i == idx)
            continue;
        const em_optimizer *o = t->setup.opts[i];
        for (size_t g = 0; g < em_optimizer_num_groups(o); g++) {
            const em_params *ps = em_optimizer_group_params(o, g);
            for (size_t k = 0; k < em_params_size(ps); k++) {
                em_tensor *p = em_params_get(ps, k);
                emi_toggle *e = toggle_find(t, emi_tensor_id(p));
                if (e != NULL)
                    em_tensor_set_requires_grad(p, e->requires_grad);
            }
        }
    }
    toggle_free(t);
    return EM_OK;
}
