/* setup.c: configure_optimizers' builder and the checks Lightning makes on what it returns.
 *
 * Lightning: core/optimizer.py (_init_optimizers_and_lr_schedulers, _configure_schedulers_automatic_opt,
 *            _configure_schedulers_manual_opt, _validate_optimizers_attached, _validate_scheduler_api,
 *            _validate_multiple_optimizers_support). Every return form of configure_optimizers maps onto
 * em_optim_setup_add / em_optim_setup_add_scheduler calls (docs/LIGHTNING_RULES.md §3.1-3.2).
 */
#include <stdlib.h>
#include <string.h>

#include "setup.h"

void emi_setup_init(em_optim_setup *s, em_trainer *t)
{
    memset(s, 0, sizeof *s);
    s->t = t;
}

static void sched_entry_free(emi_sched_entry *e)
{
    emi_scheduler_set_owned(e->sched, false);
    em_scheduler_free(e->sched);
    free((char *)e->cfg.monitor);
    free((char *)e->cfg.name);
}

void emi_setup_free(em_optim_setup *s)
{
    if (s->params != NULL)
        for (size_t i = 0; i < s->n_opts; i++)
            em_params_free(s->params[i]);
    free(s->params);
    for (size_t i = 0; i < s->n_scheds; i++)
        sched_entry_free(&s->scheds[i]);
    free(s->scheds);
    for (size_t i = 0; i < s->n_opts; i++) {
        emi_optimizer_set_owned(s->opts[i], false);
        em_optimizer_free(s->opts[i]);
    }
    free(s->opts);
    em_trainer *t = s->t;
    memset(s, 0, sizeof *s);
    s->t = t;
}

em_status em_optim_setup_add(em_optim_setup *setup, em_optimizer *opt)
{
    if (setup == NULL || opt == NULL) {
        em_optimizer_free(opt);
        if (emi_has_error())
            return em_last_status(); /* a failed constructor: keep its message */
        return emi_fail(EM_EINVAL, "em_optim_setup_add: NULL argument");
    }
    for (size_t i = 0; i < setup->n_opts; i++)
        if (setup->opts[i] == opt)
            return emi_fail(EM_EINVAL, "em_optim_setup_add: this optimizer was already added");
    if (setup->n_opts == setup->cap_opts) {
        size_t cap = setup->cap_opts ? 2 * setup->cap_opts : 4;
        em_optimizer **p = realloc(setup->opts, cap * sizeof *p);
        if (p == NULL) {
            em_optimizer_free(opt);
            return emi_fail(EM_ENOMEM, "em_optim_setup_add: out of memory");
        }
        setup->opts = p;
        setup->cap_opts = cap;
    }
    setup->opts[setup->n_opts++] = opt;
    emi_optimizer_set_owned(opt, true);
    return EM_OK;
}

/* Lightning's _configure_schedulers_automatic_opt / _manual_opt on one config: the checks, the warnings,
 * and the defaults resolved (frequency 0 = 1). */
static em_status scheduler_config_check(const em_trainer *t, const em_scheduler *sched, em_scheduler_config *c)
{
    if (c->interval != EM_INTERVAL_EPOCH && c->interval != EM_INTERVAL_STEP)
        return emi_fail(EM_EINVAL, "em_optim_setup_add_scheduler: The \"interval\" key in lr scheduler dict must be "
                                   "\"step\" or \"epoch\" (EM_INTERVAL_STEP or EM_INTERVAL_EPOCH), got %d",
                        (int)c->interval);
    if (c->frequency < 0)
        return emi_fail(EM_EINVAL, "em_optim_setup_add_scheduler: frequency must be >= 1 (0 = the default 1), got %lld",
                        (long long)c->frequency);
    if (c->frequency == 0)
        c->frequency = 1;
    if (t->module->manual_optimization)
        return EM_OK;
    bool plateau = em_scheduler_is_plateau(sched);
    if (plateau && (c->monitor == NULL || c->monitor[0] == '\0'))
        return emi_fail(EM_EINVAL, "em_optim_setup_add_scheduler: The lr scheduler dict must include a monitor when "
                                   "a `ReduceLROnPlateau` scheduler is used. For example: "
                                   "&(em_scheduler_config){.monitor = \"val_loss\"}");
    if (!plateau && c->monitor != NULL)
        emi_warn("`monitor` \"%s\" is only used by ReduceLROnPlateau schedulers; it is ignored for %s", c->monitor,
                 em_scheduler_name(sched));
    if (strcmp(em_scheduler_name(sched), "OneCycleLR") == 0 && c->interval == EM_INTERVAL_EPOCH)
        emi_warn("A `OneCycleLR` scheduler is using 'interval': 'epoch'. Are you sure you didn't mean 'interval': "
                 "'step'?");
    return EM_OK;
}

/* Append an entry (the config's strings copied). */
static em_status scheduler_push(em_optim_setup *setup, em_scheduler *sched, const em_scheduler_config *c, size_t idx)
{
    if (setup->n_scheds == setup->cap_scheds) {
        size_t cap = setup->cap_scheds ? 2 * setup->cap_scheds : 4;
        emi_sched_entry *p = realloc(setup->scheds, cap * sizeof *p);
        if (p == NULL)
            return emi_fail(EM_ENOMEM, "em_optim_setup_add_scheduler: out of memory");
        setup->scheds = p;
        setup->cap_scheds = cap;
    }
    emi_sched_entry e = {.sched = sched, .cfg = *c, .opt_index = idx, .plateau = em_scheduler_is_plateau(sched)};
    e.cfg.monitor = emi_strdup(c->monitor);
    e.cfg.name = emi_strdup(c->name);
    if ((c->monitor != NULL && e.cfg.monitor == NULL) || (c->name != NULL && e.cfg.name == NULL)) {
        free((char *)e.cfg.monitor);
        free((char *)e.cfg.name);
        return emi_fail(EM_ENOMEM, "em_optim_setup_add_scheduler: out of memory");
    }
    setup->scheds[setup->n_scheds++] = e;
    return EM_OK;
}

em_status em_optim_setup_add_scheduler(em_optim_setup *setup, em_scheduler *sched, const em_scheduler_config *config)
{
    if (setup == NULL || sched == NULL) {
        em_scheduler_free(sched);
        if (emi_has_error())
            return em_last_status();
        return emi_fail(EM_EINVAL, "em_optim_setup_add_scheduler: NULL argument");
    }
    if (!emi_handle_live(sched, EMI_HANDLE_SCHEDULER)) /* freed: nothing to take over or free */
        return emi_handle_bad("em_optim_setup_add_scheduler", 2, sched, "scheduler");
    em_scheduler_config c = config != NULL ? *config : (em_scheduler_config){0};
    /* _validate_optimizers_attached */
    em_optimizer *target = em_scheduler_optimizer(sched);
    size_t idx = setup->n_opts;
    for (size_t i = 0; i < setup->n_opts; i++)
        if (setup->opts[i] == target)
            idx = i;
    em_status rc;
    if (idx == setup->n_opts)
        rc = emi_fail(EM_EINVAL, "em_optim_setup_add_scheduler: Some schedulers are attached with an optimizer that "
                                 "wasn't returned from `configure_optimizers`: add the optimizer first "
                                 "(em_optim_setup_add)");
    else if ((rc = scheduler_config_check(setup->t, sched, &c)) == EM_OK)
        rc = scheduler_push(setup, sched, &c, idx);
    if (rc != EM_OK) {
        em_scheduler_free(sched);
        return rc;
    }
    emi_scheduler_set_owned(sched, true);
    return EM_OK;
}

/* Lightning's _validate_scheduler_api: a torch LRScheduler / ReduceLROnPlateau, by class name. */
static bool scheduler_is_builtin(const em_scheduler *s)
{
    static const char *const names[] = {"StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
                                        "CosineAnnealingWarmRestarts", "OneCycleLR", "CyclicLR", "LinearLR",
                                        "ConstantLR", "PolynomialLR", "LambdaLR", "MultiplicativeLR",
                                        "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau"};
    const char *n = em_scheduler_name(s);
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strcmp(n, names[i]) == 0)
            return true;
    return false;
}

em_params *emi_optimizer_params(const em_optimizer *opt)
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

static em_status setup_validate(em_optim_setup *s)
{
    em_trainer *t = s->t;
    em_module *m = t->module;
    if (!m->manual_optimization && s->n_opts > 1)
        return emi_fail(EM_EINVAL, "Training with multiple optimizers is only supported with manual optimization. "
                                   "Set `manual_optimization = true` in the module, then use em_optimizers(m, &n) "
                                   "and step them yourself in training_step.");
    if (s->n_opts == 0)
        emi_warn("`configure_optimizers` added no optimizer: this fit will run without an optimizer.");
    if (!m->manual_optimization && m->ops->lr_scheduler_step == NULL) {
        for (size_t i = 0; i < s->n_scheds; i++)
            if (em_scheduler_state(s->scheds[i].sched) != NULL || !scheduler_is_builtin(s->scheds[i].sched))
                return emi_fail(EM_EINVAL, "The provided lr scheduler `%s` is not a built-in scheduler. To use a "
                                           "scheduler written in C, override the module's `lr_scheduler_step` hook.",
                                em_scheduler_name(s->scheds[i].sched));
    }
    return EM_OK;
}

em_status emi_setup_finish(em_optim_setup *s)
{
    em_status rc = setup_validate(s);
    if (rc != EM_OK)
        return rc;
    s->params = calloc(s->n_opts > 0 ? s->n_opts : 1, sizeof *s->params);
    if (s->params == NULL)
        return emi_fail(EM_ENOMEM, "out of memory");
    for (size_t i = 0; i < s->n_opts; i++)
        if ((s->params[i] = emi_optimizer_params(s->opts[i])) == NULL)
            return em_last_status() != EM_OK ? em_last_status() : EM_ENOMEM;
    return EM_OK;
}

int emi_optimizer_index(const em_trainer *t, const em_optimizer *opt)
{
    if (opt == NULL)
        return -1;
    for (size_t i = 0; i < t->setup.n_opts; i++)
        if (t->setup.opts[i] == opt || (t->wrappers != NULL && t->wrappers[i] == opt))
            return (int)i;
    return -1;
}
