/* manual.c: manual optimization - the user drives zero_grad / backward / step.
 *
 * Lightning: loops/optimization/manual.py (_ManualOptimization, ManualResult),
 *            core/module.py (manual_backward, toggle_optimizer, untoggle_optimizer).
 * Rules: docs/LIGHTNING_RULES.md §4.
 */
#include <stdlib.h>

#include "optimization.h"
#include "setup.h"
#include "strategy.h"
#include "trace.h"

/* ---- one batch ------------------------------------------------------------------------------------------ */

/* Lightning: _ManualOptimization.run: training_step with wrapped steps counted; its output is only
 * handed to on_train_batch_end (ManualResult: the detached tensor). */
em_status emi_manual_run(em_trainer *t, em_batch *batch, em_tensor **out)
{
    *out = NULL;
    em_tensor *r = NULL;
    t->in_training_step = true;
    em_status s = emi_strategy_training_step(t, batch, t->batch_idx, &r);
    t->in_training_step = false;
    if (s != EM_OK)
        return s;
    if (r != NULL) {
        if (t->trace != NULL && em_tensor_numel(r) == 1)
            emi_trace_training_step(t, em_tensor_item(r));
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
    if (!m->manual_optimization)
        return emi_fail(EM_ESTATE, "em_manual_backward: to use manual_backward, disable automatic optimization: set "
                                   "`manual_optimization = true` in your module (Lightning: automatic_optimization = False)");
    /* hooks inside run the clear-call-check discipline; keep the caller's hook name for messages */
    const char *prev = t->hook;
    em_status s = emi_strategy_backward(t, loss, retain);
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

void emi_toggle_free(em_trainer *t)
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

/* Give optimizer i's parameters their saved flags back (those that were saved). */
static void toggle_restore(em_trainer *t, size_t i)
{
    const em_params *ps = t->setup.params[i];
    for (size_t k = 0; k < em_params_size(ps); k++) {
        em_tensor *p = em_params_get(ps, k);
        emi_toggle *e = toggle_find(t, emi_tensor_id(p));
        if (e != NULL)
            em_tensor_set_requires_grad(p, e->requires_grad);
    }
}

/* Lightning: LightningModule.toggle_optimizer for optimizer `idx` */
static em_status toggle(em_trainer *t, size_t idx)
{
    size_t total = 0;
    for (size_t i = 0; i < t->setup.n_opts; i++)
        total += em_params_size(t->setup.params[i]);
    emi_toggle_free(t);
    t->toggle = calloc(total > 0 ? total : 1, sizeof *t->toggle);
    if (t->toggle == NULL)
        return emi_fail(EM_ENOMEM, "em_toggle_optimizer: out of memory");
    /* 1. remember every optimizer's parameters' flags (first occurrence wins) and freeze them all */
    for (size_t i = 0; i < t->setup.n_opts; i++) {
        const em_params *ps = t->setup.params[i];
        for (size_t k = 0; k < em_params_size(ps); k++) {
            em_tensor *p = em_params_get(ps, k);
            const void *id = emi_tensor_id(p);
            if (toggle_find(t, id) == NULL)
                t->toggle[t->n_toggle++] = (emi_toggle){id, p, em_tensor_requires_grad(p)};
            em_tensor_set_requires_grad(p, false);
        }
    }
    /* 2. give this optimizer's parameters their original flag back */
    toggle_restore(t, idx);
    return EM_OK;
}

/* Lightning: LightningModule.untoggle_optimizer: every other optimizer's parameters get their flags back */
static em_status untoggle(em_trainer *t, size_t idx)
{
    for (size_t i = 0; i < t->setup.n_opts; i++)
        if (i != idx)
            toggle_restore(t, i);
    emi_toggle_free(t);
    return EM_OK;
}

/* em_toggle_optimizer (on) and em_untoggle_optimizer (off), named `fn` in messages. */
static em_status toggle_api(em_module *m, const em_optimizer *opt, bool on, const char *fn)
{
    if (m == NULL || opt == NULL)
        return emi_fail(EM_EINVAL, "%s: NULL argument", fn);
    em_trainer *t = m->trainer_;
    if (t == NULL)
        return emi_fail(EM_ESTATE, "%s: called outside em_trainer_fit", fn);
    int idx = emi_optimizer_index(t, opt);
    if (idx < 0)
        return emi_fail(EM_EINVAL, "%s: this optimizer is not one of em_optimizers()", fn);
    return on ? toggle(t, (size_t)idx) : untoggle(t, (size_t)idx);
}

em_status em_toggle_optimizer(em_module *m, em_optimizer *opt)
{
    return toggle_api(m, opt, true, "em_toggle_optimizer");
}

em_status em_untoggle_optimizer(em_module *m, em_optimizer *opt)
{
    return toggle_api(m, opt, false, "em_untoggle_optimizer");
}

/* ---- toggle_model ---------------------------------------------------------------------------------------- */

/* Lightning: LightningOptimizer.toggle_model(sync_grad): `with _block_parallel_sync_behavior(strategy,
 * block=not sync_grad)` around toggle_optimizer(opt) ... untoggle_optimizer(opt). */
em_status em_toggle_model_begin(em_module *m, em_optimizer *opt, bool sync_grad)
{
    static const char fn[] = "em_toggle_model_begin";
    if (m == NULL || opt == NULL)
        return emi_fail(EM_EINVAL, "%s: NULL argument", fn);
    em_trainer *t = m->trainer_;
    if (t == NULL || !t->fitting)
        return emi_fail(EM_ESTATE, "%s: only during fit", fn);
    int idx = emi_optimizer_index(t, opt);
    if (idx < 0)
        return emi_fail(EM_EINVAL, "%s: this optimizer is not one of em_optimizers()", fn);
    if (t->toggle_model_open)
        return emi_fail(EM_ESTATE,
                        "%s: a toggle_model region (optimizer %zu) is already open: end it with "
                        "em_toggle_model_end first (the regions do not nest: the inner toggle would save the "
                        "outer one's frozen flags as the originals)",
                        fn, t->toggle_model_opt);
    em_status s;
    if (!sync_grad && (s = em_no_backward_sync_begin(m)) != EM_OK)
        return s;
    if ((s = toggle(t, (size_t)idx)) != EM_OK) {
        if (!sync_grad)
            em_no_backward_sync_end(m);
        return s;
    }
    t->toggle_model_open = true;
    t->toggle_model_blocked = !sync_grad;
    t->toggle_model_opt = (size_t)idx;
    return EM_OK;
}

em_status em_toggle_model_end(em_module *m, em_optimizer *opt)
{
    static const char fn[] = "em_toggle_model_end";
    if (m == NULL || opt == NULL)
        return emi_fail(EM_EINVAL, "%s: NULL argument", fn);
    em_trainer *t = m->trainer_;
    if (t == NULL || !t->fitting)
        return emi_fail(EM_ESTATE, "%s: only during fit", fn);
    if (!t->toggle_model_open)
        return emi_fail(EM_ESTATE, "%s: no em_toggle_model_begin is open", fn);
    int idx = emi_optimizer_index(t, opt);
    if (idx < 0 || (size_t)idx != t->toggle_model_opt)
        return emi_fail(EM_EINVAL, "%s: not the optimizer the open region toggled (optimizer %zu)", fn,
                        t->toggle_model_opt);
    em_status s = untoggle(t, (size_t)idx);
    bool blocked = t->toggle_model_blocked;
    t->toggle_model_open = false;
    t->toggle_model_blocked = false;
    if (s != EM_OK || !blocked)
        return s;
    if (t->no_sync_depth == 0) /* closed all the same: the flags are back */
        return emi_fail(EM_ESTATE,
                        "%s: the region's no-sync block was already ended (an em_no_backward_sync_end too many "
                        "inside it)",
                        fn);
    return em_no_backward_sync_end(m);
}

void emi_toggle_model_teardown(em_trainer *t)
{
    if (t->toggle_model_open)
        emi_warn("fit ended inside em_toggle_model_begin (optimizer %zu) without its em_toggle_model_end: the "
                 "parameters it froze keep requires_grad = false",
                 t->toggle_model_opt);
    t->toggle_model_open = false;
    t->toggle_model_blocked = false;
}

