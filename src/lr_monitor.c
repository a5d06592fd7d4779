/* lr_monitor.c: Lightning's LearningRateMonitor, a built-in callback written on the public API (and the
 * log handler for its warning).
 *
 * Lightning: callbacks/lr_monitor.py (2.2.5). Names: "lr-" + the optimizer's class name ("lr-Adam"), or
 * the scheduler config's name; "-1", "-2", ... for the second, third optimizer of a class; "/pg1",
 * "/pg2", ... for the groups of an optimizer with several; "-momentum" / "-weight_decay" after the name.
 * Schedulers' optimizers first (in lr_scheduler_configs order), then the optimizers without one. The
 * values go to the loggers at the logger's step (metrics.csv) and into callback_metrics (as float32
 * tensors there: rounded to float here too). ember's parameter groups have no "name" key: the /pgN
 * suffixes are always the numbered ones.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h" /* emi_fail, emi_warn */
#include "ember/trainer.h"

/* buffer sizes: a base name, with its "-N", with its "/pgN", with "-weight_decay" */
#define BASE_LEN 200
#define NAME_LEN (BASE_LEN + 24)
#define ENTRY_LEN (NAME_LEN + 24)
#define STAT_LEN (ENTRY_LEN + 16)

/* One name of lr_monitor.lrs: its history of learning rates and its last momentum / weight decay. */
typedef struct lr_key {
    char *name;
    double *lrs;
    size_t n, cap;
    bool has_momentum, has_weight_decay; /* Lightning: None until logged */
    double momentum, weight_decay;
} lr_key;

typedef struct lr_monitor {
    em_lr_logging_interval interval;
    bool log_momentum, log_weight_decay;
    lr_key *keys;
    size_t n_keys, cap_keys;
} lr_monitor;

/* One (optimizer, parameter group) and its name, as _find_names_from_schedulers / _from_optimizers give. */
typedef struct named {
    em_optimizer *opt;
    size_t group;
    bool from_scheduler;
    em_interval interval; /* the scheduler's (from_scheduler only) */
    char name[ENTRY_LEN];
} named;

typedef struct namer {
    named *items;
    size_t n, cap;
    em_optimizer **seen; /* seen_optimizers */
    size_t n_seen, cap_seen;
    struct type_count {
        const char *cls;
        int64_t count;
    } types[64]; /* seen_optimizer_types */
    size_t n_types;
} namer;

static void namer_free(namer *nm)
{
    free(nm->items);
    free(nm->seen);
}

static struct type_count *type_slot(namer *nm, const char *cls, bool create)
{
    for (size_t i = 0; i < nm->n_types; i++)
        if (strcmp(nm->types[i].cls, cls) == 0)
            return &nm->types[i];
    if (!create || nm->n_types == sizeof nm->types / sizeof nm->types[0])
        return NULL;
    nm->types[nm->n_types] = (struct type_count){.cls = cls, .count = 0};
    return &nm->types[nm->n_types++];
}

static bool seen(const namer *nm, const em_optimizer *opt)
{
    for (size_t i = 0; i < nm->n_seen; i++)
        if (nm->seen[i] == opt)
            return true;
    return false;
}

/* Lightning: _check_duplicates_and_update_name (+ _add_prefix, _add_suffix). */
static em_status add_names(namer *nm, em_optimizer *opt, const char *base, bool counted, bool from_scheduler,
                           em_interval interval)
{
    if (nm->n_seen == nm->cap_seen) {
        size_t cap = nm->cap_seen ? 2 * nm->cap_seen : 8;
        em_optimizer **p = realloc(nm->seen, cap * sizeof *p);
        if (p == NULL)
            return emi_fail(EM_ENOMEM, "LearningRateMonitor: out of memory");
        nm->seen = p;
        nm->cap_seen = cap;
    }
    nm->seen[nm->n_seen++] = opt;
    const char *cls = em_optimizer_name(opt);
    if (cls == NULL)
        cls = "Optimizer";
    if (counted) {
        struct type_count *tc = type_slot(nm, cls, true);
        if (tc == NULL)
            return emi_fail(EM_ENOMEM, "LearningRateMonitor: too many optimizer classes");
        tc->count++;
    }
    char name[NAME_LEN];
    snprintf(name, sizeof name, "%s", base);
    const struct type_count *tc = type_slot(nm, cls, false);
    if (tc != NULL && tc->count > 1) /* _add_prefix: only for a class seen (counted) before */
        snprintf(name, sizeof name, "%s-%lld", base, (long long)(tc->count - 1));
    size_t groups = em_optimizer_num_groups(opt);
    for (size_t g = 0; g < groups; g++) {
        if (nm->n == nm->cap) {
            size_t cap = nm->cap ? 2 * nm->cap : 8;
            named *p = realloc(nm->items, cap * sizeof *p);
            if (p == NULL)
                return emi_fail(EM_ENOMEM, "LearningRateMonitor: out of memory");
            nm->items = p;
            nm->cap = cap;
        }
        named *e = &nm->items[nm->n++];
        *e = (named){.opt = opt, .group = g, .from_scheduler = from_scheduler, .interval = interval};
        if (groups > 1)
            snprintf(e->name, sizeof e->name, "%s/pg%zu", name, g + 1);
        else
            snprintf(e->name, sizeof e->name, "%s", name);
    }
    return EM_OK;
}

/* Every name: the schedulers' optimizers, then the optimizers without a scheduler. */
static em_status find_names(em_trainer *t, namer *nm)
{
    memset(nm, 0, sizeof *nm);
    char base[BASE_LEN];
    em_status s = EM_OK;
    size_t n_sched = em_trainer_num_lr_schedulers(t);
    for (size_t i = 0; i < n_sched && s == EM_OK; i++) {
        em_scheduler_config cfg;
        em_scheduler *sch = em_trainer_lr_scheduler(t, i, &cfg);
        em_optimizer *opt = em_scheduler_optimizer(sch);
        if (cfg.name != NULL)
            snprintf(base, sizeof base, "%s", cfg.name);
        else
            snprintf(base, sizeof base, "lr-%s", em_optimizer_name(opt));
        s = add_names(nm, opt, base, cfg.name == NULL, true, cfg.interval);
    }
    size_t n_opt = em_trainer_num_optimizers(t);
    for (size_t i = 0; i < n_opt && s == EM_OK; i++) {
        em_optimizer *opt = em_trainer_optimizer(t, i);
        if (seen(nm, opt))
            continue;
        snprintf(base, sizeof base, "lr-%s", em_optimizer_name(opt));
        s = add_names(nm, opt, base, true, false, EM_INTERVAL_EPOCH);
    }
    if (s != EM_OK)
        namer_free(nm);
    return s;
}

/* ---- lrs: the history per name ----------------------------------------------------------------------------- */

static lr_key *key_of(lr_monitor *lm, const char *name, bool create)
{
    for (size_t i = 0; i < lm->n_keys; i++)
        if (strcmp(lm->keys[i].name, name) == 0)
            return &lm->keys[i];
    if (!create)
        return NULL;
    if (lm->n_keys == lm->cap_keys) {
        size_t cap = lm->cap_keys ? 2 * lm->cap_keys : 8;
        lr_key *p = realloc(lm->keys, cap * sizeof *p);
        if (p == NULL)
            return NULL;
        lm->keys = p;
        lm->cap_keys = cap;
    }
    char *copy = malloc(strlen(name) + 1);
    if (copy == NULL)
        return NULL;
    strcpy(copy, name);
    lm->keys[lm->n_keys] = (lr_key){.name = copy};
    return &lm->keys[lm->n_keys++];
}

static void keys_clear(lr_monitor *lm)
{
    for (size_t i = 0; i < lm->n_keys; i++) {
        free(lm->keys[i].name);
        free(lm->keys[i].lrs);
    }
    lm->n_keys = 0;
}

static bool append_lr(lr_key *k, double lr)
{
    if (k->n == k->cap) {
        size_t cap = k->cap ? 2 * k->cap : 16;
        double *p = realloc(k->lrs, cap * sizeof *p);
        if (p == NULL)
            return false;
        k->lrs = p;
        k->cap = cap;
    }
    k->lrs[k->n++] = lr;
    return true;
}

/* Whether group 0 of `opt` has hyper-parameter `hp` (torch: `hp in optimizer.defaults`). */
static bool has_hparam(const em_optimizer *opt, const char *hp)
{
    double v;
    bool has = em_optimizer_get(opt, 0, hp, &v) == EM_OK;
    em_clear_error();
    return has;
}

/* ---- collecting and logging (_extract_stats) ------------------------------------------------------------------ */

typedef struct stats {
    const char **names;
    double *values;
    char (*storage)[STAT_LEN];
    size_t n, cap;
} stats;

static bool stats_add(stats *st, const char *name, const char *suffix, double v)
{
    if (st->n == st->cap) {
        size_t cap = st->cap ? 2 * st->cap : 16;
        const char **nn = realloc(st->names, cap * sizeof *nn);
        if (nn != NULL)
            st->names = nn;
        double *vv = realloc(st->values, cap * sizeof *vv);
        if (vv != NULL)
            st->values = vv;
        char(*ss)[STAT_LEN] = realloc(st->storage, cap * sizeof *ss);
        if (ss != NULL)
            st->storage = ss;
        if (nn == NULL || vv == NULL || ss == NULL)
            return false;
        st->cap = cap;
    }
    snprintf(st->storage[st->n], sizeof st->storage[0], "%s%s", name, suffix);
    st->values[st->n] = v;
    st->n++;
    return true;
}

static void stats_free(stats *st)
{
    free(st->names);
    free(st->values);
    free(st->storage);
}

/* Lightning: _get_optimizer_stats for one group. */
static em_status group_stats(lr_monitor *lm, const named *e, stats *st)
{
    lr_key *k = key_of(lm, e->name, true); /* _remap_keys: a name that appeared since on_train_start */
    if (k == NULL)
        return emi_fail(EM_ENOMEM, "LearningRateMonitor: out of memory");
    double lr = em_optimizer_lr(e->opt, e->group);
    if (!append_lr(k, lr) || !stats_add(st, e->name, "", lr))
        return emi_fail(EM_ENOMEM, "LearningRateMonitor: out of memory");
    if (lm->log_momentum) {
        /* param_group["betas"][0] if "betas" in optimizer.defaults else param_group.get("momentum", 0) */
        double m = 0;
        if (has_hparam(e->opt, "beta1"))
            em_optimizer_get(e->opt, e->group, "beta1", &m);
        else if (has_hparam(e->opt, "momentum"))
            em_optimizer_get(e->opt, e->group, "momentum", &m);
        k->has_momentum = true;
        k->momentum = m;
        if (!stats_add(st, e->name, "-momentum", m))
            return emi_fail(EM_ENOMEM, "LearningRateMonitor: out of memory");
    }
    if (lm->log_weight_decay) {
        double wd = 0;
        if (em_optimizer_get(e->opt, e->group, "weight_decay", &wd) != EM_OK)
            return emi_fail(EM_EINVAL, "LearningRateMonitor(log_weight_decay=True): %s has no weight_decay in its "
                                       "parameter groups (Lightning: KeyError: 'weight_decay')",
                            em_optimizer_name(e->opt));
        k->has_weight_decay = true;
        k->weight_decay = wd;
        if (!stats_add(st, e->name, "-weight_decay", wd))
            return emi_fail(EM_ENOMEM, "LearningRateMonitor: out of memory");
    }
    return EM_OK;
}

/* Lightning: _extract_stats(trainer, interval) then log_metrics: interval EM_LR_LOG_STEP / _EPOCH selects
 * the schedulers of that interval, `any` every scheduler; optimizers without one are always logged. */
static em_status extract_and_log(lr_monitor *lm, em_trainer *t, bool any, em_interval interval)
{
    namer nm;
    em_status s = find_names(t, &nm);
    if (s != EM_OK)
        return s;
    stats st = {0};
    for (size_t i = 0; i < nm.n && s == EM_OK; i++) {
        const named *e = &nm.items[i];
        if (e->from_scheduler && !any && e->interval != interval)
            continue;
        s = group_stats(lm, e, &st);
    }
    for (size_t i = 0; i < st.n && s == EM_OK; i++) {
        st.names[i] = st.storage[i];
        /* trainer.callback_metrics.update({name: torch.tensor(value)}): float32 tensors */
        s = em_trainer_set_callback_metric(t, st.names[i], (double)(float)st.values[i]);
    }
    if (s == EM_OK && st.n > 0)
        s = em_trainer_log_metrics(t, st.names, st.values, st.n);
    stats_free(&st);
    namer_free(&nm);
    return s;
}

/* ---- the hooks ------------------------------------------------------------------------------------------------ */

/* Lightning: on_train_start: a logger is required; the momentum warning; the names (lrs, all empty). */
static em_status lm_on_train_start(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)m;
    lr_monitor *lm = em_callback_state(cb);
    if (!em_trainer_has_logger(t))
        return emi_fail(EM_EINVAL, "Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger.");
    if (lm->log_momentum) {
        /* _check_no_key: any optimizer (of the schedulers if there are any) without the key */
        bool no_momentum = false, no_betas = false;
        size_t n = em_trainer_num_lr_schedulers(t);
        if (n > 0) {
            for (size_t i = 0; i < n; i++) {
                em_optimizer *o = em_scheduler_optimizer(em_trainer_lr_scheduler(t, i, NULL));
                no_momentum |= !has_hparam(o, "momentum");
                no_betas |= !has_hparam(o, "beta1");
            }
        } else {
            for (size_t i = 0; i < em_trainer_num_optimizers(t); i++) {
                em_optimizer *o = em_trainer_optimizer(t, i);
                no_momentum |= !has_hparam(o, "momentum");
                no_betas |= !has_hparam(o, "beta1");
            }
        }
        if (no_momentum && no_betas)
            emi_warn("You have set log_momentum=True, but some optimizers do not have momentum. This will log a "
                     "value 0 for the momentum.");
    }
    namer nm;
    em_status s = find_names(t, &nm);
    if (s != EM_OK)
        return s;
    keys_clear(lm);
    for (size_t i = 0; i < nm.n; i++)
        if (key_of(lm, nm.items[i].name, true) == NULL) {
            namer_free(&nm);
            return emi_fail(EM_ENOMEM, "LearningRateMonitor: out of memory");
        }
    namer_free(&nm);
    return EM_OK;
}

static em_status lm_on_train_batch_start(em_callback *cb, em_trainer *t, em_module *m, const em_batch *b,
                                         int64_t batch_idx)
{
    (void)m, (void)b, (void)batch_idx;
    lr_monitor *lm = em_callback_state(cb);
    if (!em_trainer_should_update_logs(t) || lm->interval == EM_LR_LOG_EPOCH)
        return EM_OK;
    return extract_and_log(lm, t, lm->interval == EM_LR_LOG_STEP, EM_INTERVAL_STEP);
}

static em_status lm_on_train_epoch_start(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)m;
    lr_monitor *lm = em_callback_state(cb);
    if (lm->interval == EM_LR_LOG_STEP)
        return EM_OK;
    return extract_and_log(lm, t, lm->interval == EM_LR_LOG_EPOCH, EM_INTERVAL_EPOCH);
}

static void lm_destroy(void *state)
{
    lr_monitor *lm = state;
    keys_clear(lm);
    free(lm->keys);
    free(lm);
}

static const em_callback_ops lm_ops = {
    .version = EM_CALLBACK_OPS_VERSION,
    .name = "LearningRateMonitor",
    .on_train_start = lm_on_train_start,
    .on_train_batch_start = lm_on_train_batch_start,
    .on_train_epoch_start = lm_on_train_epoch_start,
    .destroy = lm_destroy,
};

em_callback *em_lr_monitor(const em_lr_monitor_opts *opts)
{
    em_lr_monitor_opts o = opts != NULL ? *opts : (em_lr_monitor_opts){0};
    if (o.logging_interval != EM_LR_LOG_PER_SCHEDULER && o.logging_interval != EM_LR_LOG_STEP &&
        o.logging_interval != EM_LR_LOG_EPOCH) {
        emi_fail(EM_EINVAL, "em_lr_monitor: logging_interval should be `step` or `epoch` or `None`.");
        return NULL;
    }
    lr_monitor *lm = calloc(1, sizeof *lm);
    if (lm == NULL) {
        emi_fail(EM_ENOMEM, "em_lr_monitor: out of memory");
        return NULL;
    }
    lm->interval = o.logging_interval;
    lm->log_momentum = o.log_momentum;
    lm->log_weight_decay = o.log_weight_decay;
    return em_callback_new(&lm_ops, lm);
}

static lr_monitor *lm_of(const em_callback *cb)
{
    return em_callback_get_ops(cb) == &lm_ops ? em_callback_state(cb) : NULL;
}

size_t em_lr_monitor_num_keys(const em_callback *cb)
{
    const lr_monitor *lm = lm_of(cb);
    return lm != NULL ? lm->n_keys : 0;
}

const char *em_lr_monitor_key(const em_callback *cb, size_t i, const double **lrs, size_t *n)
{
    const lr_monitor *lm = lm_of(cb);
    if (lm == NULL || i >= lm->n_keys)
        return NULL;
    if (lrs != NULL)
        *lrs = lm->keys[i].lrs;
    if (n != NULL)
        *n = lm->keys[i].n;
    return lm->keys[i].name;
}

bool em_lr_monitor_last_momentum(const em_callback *cb, size_t i, double *value)
{
    const lr_monitor *lm = lm_of(cb);
    if (lm == NULL || i >= lm->n_keys || !lm->keys[i].has_momentum)
        return false;
    if (value != NULL)
        *value = lm->keys[i].momentum;
    return true;
}

bool em_lr_monitor_last_weight_decay(const em_callback *cb, size_t i, double *value)
{
    const lr_monitor *lm = lm_of(cb);
    if (lm == NULL || i >= lm->n_keys || !lm->keys[i].has_weight_decay)
        return false;
    if (value != NULL)
        *value = lm->keys[i].weight_decay;
    return true;
}
