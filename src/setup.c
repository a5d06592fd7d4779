/* setup.c: configure_optimizers' builder and the checks Lightning makes on what it returns.
 *
 * Lightning: core/optimizer.py (_init_optimizers_and_lr_schedulers, _configure_schedulers_automatic_opt,
 *            _configure_schedulers_manual_opt, _validate_optimizers_attached, _validate_scheduler_api,
 *            _validate_multiple_optimizers_support). Every return form of configure_optimizers maps onto
 * em_optim_setup_add / em_optim_setup_add_scheduler calls (LIGHTNING_SEMANTICS.md §3.1-3.2).
 */
#include <stdlib.h>
#include <string.h>

#include "loop.h" /* em_optim_setup, emi_sched_entry, emi_fail */

void setup_init(em_optim_setup *s, em_trainer *t)
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

void setup_free(em_optim_setup *s)
{
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

static char *dup_or_null(const char *str, bool *oom)
{
    if (str == NULL)
        return NULL;
    size_t n = strlen(str) + 1;
    char *d = malloc(n);
    if (d == NULL)
        *oom = true;
    else
        memcpy(d, str, n);
    return d;
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

em_status em_optim_setup_add_scheduler(em_optim_setup *setup, em_scheduler *sched, const em_scheduler_config *config)
{
    if (setup == NULL || sched == NULL) {
        em_scheduler_free(sched);
        if (emi_has_error())
            return em_last_status();
        return emi_fail(EM_EINVAL, "em_optim_setup_add_scheduler: NULL argument");
    }
    em_scheduler_config c = config != NULL ? *config : (em_scheduler_config){0};
    em_trainer *t = setup->t;
    bool automatic = t->module->automatic_optimization;
    em_status rc = EM_OK;

    /* _validate_optimizers_attached */
    em_optimizer *target = em_scheduler_optimizer(sched);
    size_t idx = setup->n_opts;
    for (size_t i = 0; i < setup->n_opts; i++)
        if (setup->opts[i] == target)
            idx = i;
    if (idx == setup->n_opts) {
        rc = emi_fail(EM_EINVAL, "em_optim_setup_add_scheduler: Some schedulers are attached with an optimizer that "
                                 "wasn't returned from `configure_optimizers`: add the optimizer first "
                                 "(em_optim_setup_add)");
        goto fail;
    }
    if (c.interval != EM_INTERVAL_EPOCH && c.interval != EM_INTERVAL_STEP) {
        rc = emi_fail(EM_EINVAL, "em_optim_setup_add_scheduler: The \"interval\" key in lr scheduler dict must be "
                                 "\"step\" or \"epoch\" (EM_INTERVAL_STEP or EM_INTERVAL_EPOCH), got %d", (int)c.interval);
        goto fail;
    }
    if (c.frequency < 0) {
        rc = emi_fail(EM_EINVAL, "em_optim_setup_add_scheduler: frequency must be >= 1 (0 = the default 1), got %lld",
                      (long long)c.frequency);
        goto fail;
    }
    if (c.frequency == 0)
        c.frequency = 1;
    bool plateau = em_scheduler_is_plateau(sched);
    if (automatic) {
        if (plateau && (c.monitor == NULL || c.monitor[0] == '\0')) {
            rc = emi_fail(EM_EINVAL, "em_optim_setup_add_scheduler: The lr scheduler dict must include a monitor when "
                                     "a `ReduceLROnPlateau` scheduler is used. For example: "
                                     "&(em_scheduler_config){.monitor = \"val_loss\"}");
            goto fail;
        }
        if (!plateau && c.monitor != NULL)
            fprintf(stderr, "ember: warning: `monitor` \"%s\" is only used by ReduceLROnPlateau schedulers; "
                            "it is ignored for %s\n", c.monitor, em_scheduler_name(sched));
        if (strcmp(em_scheduler_name(sched), "OneCycleLR") == 0 && c.interval == EM_INTERVAL_EPOCH)
            fprintf(stderr, "ember: warning: A `OneCycleLR` scheduler is using 'interval': 'epoch'. Are you sure you "
                            "didn't mean 'interval': 'step'?\n");
    }
    if (setup->n_scheds == setup->cap_scheds) {
        size_t cap = setup->cap_scheds ? 2 * setup->cap_scheds : 4;
        emi_sched_entry *p = realloc(setup->scheds, cap * sizeof *p);
        if (p == NULL) {
            rc = emi_fail(EM_ENOMEM, "em_optim_setup_add_scheduler: out of memory");
            goto fail;
        }
        setup->scheds = p;
        setup->cap_scheds = cap;
    }
    bool oom = false;
    emi_sched_entry e = {.sched = sched, .cfg = c, .opt_index = idx, .plateau = plateau};
    e.cfg.monitor = dup_or_null(c.monitor, &oom);
    e.cfg.name = dup_or_null(c.name, &oom);
    if (oom) {
        free((char *)e.cfg.monitor);
        free((char *)e.cfg.name);
        rc = emi_fail(EM_ENOMEM, "em_optim_setup_add_scheduler: out of memory");
        goto fail;
    }
    setup->scheds[setup->n_scheds++] = e;
    emi_scheduler_set_owned(sched, true);
    return EM_OK;
fail:
    em_scheduler_free(sched);
    return rc;
}

/* Lightning's _validate_scheduler_api: a torch LRScheduler / ReduceLROnPlateau, by class name. */
static bool scheduler_is_builtin(const em_scheduler *s)
{
    static const char *const names[] = {"StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
                                        "CosineAnnealingWarmRestarts", "OneCycleLR", "LinearLR", "ConstantLR",
                                        "PolynomialLR", "LambdaLR", "MultiplicativeLR", "SequentialLR",
                                        "ChainedScheduler", "ReduceLROnPlateau"};
    const char *n = em_scheduler_name(s);
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strcmp(n, names[i]) == 0)
            return true;
    return false;
}

em_status setup_validate(em_optim_setup *s)
{
    em_trainer *t = s->t;
    em_module *m = t->module;
    if (m->automatic_optimization && s->n_opts > 1)
        return emi_fail(EM_EINVAL, "Training with multiple optimizers is only supported with manual optimization. "
                                   "Set `automatic_optimization = false` in the module, then use em_optimizers(m, &n) "
                                   "and step them yourself in training_step.");
    if (s->n_opts == 0)
        fprintf(stderr, "ember: warning: `configure_optimizers` added no optimizer: this fit will run without an "
                        "optimizer.\n");
    if (m->automatic_optimization && m->ops->lr_scheduler_step == NULL) {
        for (size_t i = 0; i < s->n_scheds; i++)
            if (em_scheduler_state(s->scheds[i].sched) != NULL || !scheduler_is_builtin(s->scheds[i].sched))
                return emi_fail(EM_EINVAL, "The provided lr scheduler `%s` is not a built-in scheduler. To use a "
                                           "scheduler written in C, override the module's `lr_scheduler_step` hook.",
                                em_scheduler_name(s->scheds[i].sched));
    }
    return EM_OK;
}
