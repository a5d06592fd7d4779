/* optimizer.c: LightningOptimizer - the optimizers handed to the user, and self.optimizers() /
 * self.lr_schedulers().
 *
 * Lightning: core/optimizer.py (LightningOptimizer.step: the strategy's optimizer_step, then - in
 *            manual optimization, inside training_step - global_step += 1), core/module.py
 *            (LightningModule.optimizers, lr_schedulers). Rules: docs/LIGHTNING_RULES.md §4.3.
 */
#include <math.h>
#include <stdlib.h>

#include "optimizer.h"
#include "strategy.h"
#include "trace.h"

typedef struct lightning_optimizer {
    em_trainer *t;
    size_t index;
} lightning_optimizer;

/* Lightning: LightningOptimizer.step */
static em_status lightning_step(em_optimizer *self, const em_closure *closure)
{
    lightning_optimizer *lo = emi_optimizer_wrapper_state(self);
    em_trainer *t = lo->t;
    if (!t->fitting)
        return emi_fail(EM_ESTATE, "em_optimizer_step: this optimizer belongs to a fit that has ended");
    /* manual optimization counts wrapped steps made during training_step (_ManualOptimization._on_after_step) */
    bool counting = t->module->manual_optimization && t->in_training_step;
    emi_grad_probe probe = {.norm_before = NAN, .norm_after = NAN};
    em_status s = emi_strategy_optimizer_step(t, lo->index, closure, t->trace != NULL ? &probe : NULL);
    if (s != EM_OK)
        return s;
    if (t->trace != NULL)
        emi_trace_optimizer_step(t, (int)lo->index, probe.norm_before, probe.norm_after);
    if (counting)
        t->global_step++;
    return EM_OK;
}

static void lightning_destroy(void *state)
{
    free(state);
}

static const em_optimizer_ops lightning_optimizer_ops = {
    .version = EM_OPTIMIZER_OPS_VERSION,
    .name = "LightningOptimizer",
    .step = lightning_step,
    .destroy = lightning_destroy,
};

em_status emi_wrappers_create(em_trainer *t)
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
        t->wrappers[i] = emi_optimizer_wrap(t->setup.opts[i], &lightning_optimizer_ops, lo);
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

void emi_wrappers_free(em_trainer *t)
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
