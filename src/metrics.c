/* metrics.c: self.log, callback_metrics, epoch reduction, and the logger connector.
 *
 * Lightning: core/module.py (LightningModule.log), trainer/connectors/logger_connector/fx_validator.py
 *            (_FxValidator: which hook may log, with which defaults), .../result.py (_ResultCollection,
 *            _ResultMetric: step values, batch-size weighted epoch means, forked names),
 *            .../logger_connector.py (when values reach callback_metrics and loggers).
 * Rules: docs/LIGHTNING_RULES.md §9.1-9.4. The CSV file itself is logger_csv.c's.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "distributed.h"
#include "hooks.h"
#include "logger_csv.h"
#include "metrics.h"

/* ---- which hook may log (_FxValidator) ----------------------------------------------------------------- */

typedef enum fx_kind {
    FX_FORBIDDEN = 0,
    FX_STEP,       /* default on_step=True, on_epoch=False; anything allowed */
    FX_EVAL_STEP,  /* default on_step=False, on_epoch=True; anything allowed */
    FX_EPOCH_ONLY  /* only on_step=False, on_epoch=True */
} fx_kind;

static fx_kind fx_kind_of(const char *fx)
{
    static const char *const step_fx[] = {
        "training_step", "on_train_batch_start", "on_train_batch_end", "on_before_backward", "backward",
        "on_after_backward", "on_before_optimizer_step", "optimizer_step", "configure_gradient_clipping",
        "clip_gradients", "on_before_zero_grad", "optimizer_zero_grad",
    };
    static const char *const eval_step_fx[] = {"validation_step", "on_validation_batch_start",
                                               "on_validation_batch_end"};
    static const char *const epoch_fx[] = {"on_train_start", "on_train_epoch_start", "on_train_epoch_end",
                                           "on_validation_start", "on_validation_epoch_start",
                                           "on_validation_epoch_end"};
    if (fx == NULL)
        return FX_FORBIDDEN;
    for (size_t i = 0; i < sizeof step_fx / sizeof *step_fx; i++)
        if (strcmp(fx, step_fx[i]) == 0)
            return FX_STEP;
    for (size_t i = 0; i < sizeof eval_step_fx / sizeof *eval_step_fx; i++)
        if (strcmp(fx, eval_step_fx[i]) == 0)
            return FX_EVAL_STEP;
    for (size_t i = 0; i < sizeof epoch_fx / sizeof *epoch_fx; i++)
        if (strcmp(fx, epoch_fx[i]) == 0)
            return FX_EPOCH_ONLY;
    return FX_FORBIDDEN;
}

const char *emi_metrics_fx_intern(const char *fx)
{
    static const char *const all[] = {
        "training_step", "on_train_batch_start", "on_train_batch_end", "on_before_backward", "backward",
        "on_after_backward", "on_before_optimizer_step", "optimizer_step", "configure_gradient_clipping",
        "clip_gradients", "on_before_zero_grad", "optimizer_zero_grad", "validation_step",
        "on_validation_batch_start", "on_validation_batch_end", "on_train_start", "on_train_epoch_start",
        "on_train_epoch_end", "on_validation_start", "on_validation_epoch_start", "on_validation_epoch_end",
    };
    for (size_t i = 0; fx != NULL && i < sizeof all / sizeof *all; i++)
        if (strcmp(fx, all[i]) == 0)
            return all[i];
    return NULL;
}

/* ---- self.log ------------------------------------------------------------------------------------------- */

static double metric_compute(const emi_metric *m)
{
    double acc = m->synced ? m->s_acc : m->acc, weight = m->synced ? m->s_weight : m->weight;
    if (m->reduce == EM_REDUCE_MEAN)
        return weight > 0 ? (double)((float)acc / (float)weight) : NAN;
    return acc;
}

static emi_dist_op dist_op(em_reduce_fx r)
{
    return r == EM_REDUCE_MAX ? EMI_DIST_MAX : r == EM_REDUCE_MIN ? EMI_DIST_MIN : EMI_DIST_SUM;
}

/* Lightning: _ResultMetric.compute under sync_dist: the epoch accumulators reduced across ranks (a mean
 * is Σ value*batch_size over Σ batch_size of all ranks). One all-reduce per reduction kind, in the
 * order the metrics were logged, which every rank shares. */
static em_status sync_epoch(em_trainer *t, emi_results *res)
{
    for (int op = EMI_DIST_SUM; op <= EMI_DIST_MIN; op++) {
        size_t n = 0;
        for (size_t i = 0; i < res->n; i++) {
            const emi_metric *m = &res->items[i];
            n += (m->sync && !m->synced && m->has_value && m->on_epoch && (int)dist_op(m->reduce) == op) ? 2 : 0;
        }
        if (n == 0)
            continue;
        double *v = malloc(n * sizeof *v);
        if (v == NULL)
            return emi_trainer_fail(t, "sync_dist", emi_fail(EM_ENOMEM, "sync_dist: out of memory"));
        size_t k = 0;
        for (size_t i = 0; i < res->n; i++) {
            const emi_metric *m = &res->items[i];
            if (m->sync && !m->synced && m->has_value && m->on_epoch && (int)dist_op(m->reduce) == op) {
                v[k++] = m->acc;
                v[k++] = m->weight;
            }
        }
        em_clear_error();
        em_status s = emi_dist_allreduce_f64(v, n, (emi_dist_op)op);
        if (s != EM_OK) {
            free(v);
            return emi_trainer_fail(t, "sync_dist", emi_dist_explain(t, s, "the all-reduce of logged metrics"));
        }
        k = 0;
        for (size_t i = 0; i < res->n; i++) {
            emi_metric *m = &res->items[i];
            if (m->sync && !m->synced && m->has_value && m->on_epoch && (int)dist_op(m->reduce) == op) {
                m->s_acc = (double)(float)v[k++];
                m->s_weight = v[k++];
                m->synced = true;
            }
        }
        free(v);
    }
    return EM_OK;
}

em_status emi_metrics_sync_epoch(em_trainer *t, emi_stage stage)
{
    return sync_epoch(t, stage == EMI_STAGE_TRAIN ? &t->metrics.train : &t->metrics.val);
}

/* _FxValidator and _Metadata: where logging is allowed, on_step / on_epoch defaults and checks. */
static em_status log_resolve(const em_trainer *t, const char *name, const em_log_opts *o, bool *on_step,
                             bool *on_epoch)
{
    fx_kind kind = fx_kind_of(t->hook);
    if (kind == FX_FORBIDDEN || t->stage == EMI_STAGE_NONE)
        return emi_fail(EM_ESTATE, "em_log(\"%s\"): You can't `self.log()` inside `%s`.", name,
                        t->hook != NULL ? t->hook : "this context");
    if (strstr(name, "/dataloader_idx_") != NULL)
        return emi_fail(EM_EINVAL, "em_log(\"%s\"): the name must not contain \"/dataloader_idx_\"", name);
    if (o->reduce_fx < EM_REDUCE_MEAN || o->reduce_fx > EM_REDUCE_MIN)
        return emi_fail(EM_EINVAL, "em_log(\"%s\"): reduce_fx %d is not one of mean, sum, max, min", name,
                        (int)o->reduce_fx);
    unsigned f = o->flags;
    *on_step = (kind == FX_STEP || (f & EM_LOG_ON_STEP)) && !(f & EM_LOG_NOT_ON_STEP);
    *on_epoch = (kind != FX_STEP || (f & EM_LOG_ON_EPOCH)) && !(f & EM_LOG_NOT_ON_EPOCH);
    if (kind == FX_EPOCH_ONLY && (*on_step || !*on_epoch))
        return emi_fail(EM_EINVAL, "em_log(\"%s\"): You can't `self.log(on_step=%s, on_epoch=%s)` in `%s`. Possible "
                                   "values: on_step=False, on_epoch=True", name, *on_step ? "True" : "False",
                        *on_epoch ? "True" : "False", t->hook);
    if (!*on_step && !*on_epoch)
        return emi_fail(EM_EINVAL, "em_log(\"%s\"): on_step=False, on_epoch=False is not valid: the value would go "
                                   "nowhere", name);
    return EM_OK;
}

/* The result `name` logged from the current hook, added on first use; NULL on failure (recorded). */
static emi_metric *results_entry(emi_results *res, const em_trainer *t, const char *name, const emi_metric *want)
{
    for (size_t i = 0; i < res->n; i++) {
        emi_metric *mt = &res->items[i];
        /* the hook's name by contents: a result restored from a checkpoint (resume.c) holds
         * emi_metrics_fx_intern's copy of it */
        if ((mt->fx != t->hook && (mt->fx == NULL || t->hook == NULL || strcmp(mt->fx, t->hook) != 0)) ||
            strcmp(mt->name, name) != 0)
            continue;
        if (mt->on_step != want->on_step || mt->on_epoch != want->on_epoch || mt->prog_bar != want->prog_bar ||
            mt->logger != want->logger || mt->reduce != want->reduce) {
            emi_fail(EM_EINVAL, "em_log(\"%s\"): You called `self.log(%s, ...)` twice in `%s` with different "
                                "arguments. This is not allowed", name, name, t->hook);
            return NULL;
        }
        return mt;
    }
    if (res->n == res->cap) {
        size_t cap = res->cap ? 2 * res->cap : 8;
        emi_metric *p = realloc(res->items, cap * sizeof *p);
        if (p == NULL) {
            emi_fail(EM_ENOMEM, "em_log: out of memory");
            return NULL;
        }
        res->items = p;
        res->cap = cap;
    }
    char *copy = emi_strdup(name);
    if (copy == NULL) {
        emi_fail(EM_ENOMEM, "em_log: out of memory");
        return NULL;
    }
    emi_metric *mt = &res->items[res->n++];
    *mt = *want;
    mt->name = copy;
    mt->acc = want->reduce == EM_REDUCE_MAX ? -INFINITY : want->reduce == EM_REDUCE_MIN ? INFINITY : 0.0;
    return mt;
}

/* Lightning turns a logged number into a float32 tensor and reduces in float32
 * (_ResultMetric.update: value += value.mean() * batch_size; compute: value / cumulated_batch_size) */
static void metric_update(emi_metric *mt, double value, double batch_size)
{
    float v32 = (float)value;
    mt->last = (double)v32;
    mt->has_value = true;
    mt->synced = false;
    switch (mt->reduce) {
    case EM_REDUCE_MEAN:
        mt->acc = (double)((float)mt->acc + v32 * (float)batch_size);
        mt->weight += batch_size;
        break;
    case EM_REDUCE_SUM: mt->acc = (double)((float)mt->acc + v32); break;
    case EM_REDUCE_MAX: mt->acc = (double)v32 > mt->acc ? (double)v32 : mt->acc; break;
    case EM_REDUCE_MIN: mt->acc = (double)v32 < mt->acc ? (double)v32 : mt->acc; break;
    }
}

em_status em_log_ex(em_module *m, const char *name, double value, const em_log_opts *opts)
{
    em_log_opts o = opts != NULL ? *opts : (em_log_opts){0};
    if (m == NULL || name == NULL || name[0] == '\0')
        return emi_fail(EM_EINVAL, "em_log: the module and a non-empty name are required");
    em_trainer *t = m->trainer_;
    if (t == NULL)
        return emi_fail(EM_ESTATE, "em_log(\"%s\"): called outside em_trainer_fit", name);
    emi_metric want = {.fx = t->hook, .reduce = o.reduce_fx, .prog_bar = (o.flags & EM_LOG_PROG_BAR) != 0,
                       .logger = (o.flags & EM_LOG_NO_LOGGER) == 0,
                       .sync = (o.flags & EM_LOG_SYNC_DIST) && !(o.flags & EM_LOG_RANK_ZERO_ONLY) &&
                               t->env.distributed && emi_dist_active()};
    em_status s = log_resolve(t, name, &o, &want.on_step, &want.on_epoch);
    if (s != EM_OK)
        return s;
    emi_metric *mt = results_entry(t->stage == EMI_STAGE_TRAIN ? &t->metrics.train : &t->metrics.val, t, name, &want);
    if (mt == NULL)
        return em_last_status();
    double bs = o.batch_size > 0 ? (double)o.batch_size
                                 : (t->batch != NULL && t->batch->size > 0 ? (double)t->batch->size : 1.0);
    metric_update(mt, value, bs);
    if (mt->sync && mt->on_step) { /* the step value, reduced across ranks when logged */
        double v = mt->last;
        if ((s = emi_dist_allreduce_f64(&v, 1, dist_op(mt->reduce))) != EM_OK)
            return emi_dist_explain(t, s, "the all-reduce of a logged value");
        if (mt->reduce == EM_REDUCE_MEAN)
            v /= (double)t->env.world;
        mt->last = (double)(float)v;
    }
    return EM_OK;
}

em_status em_log(em_module *m, const char *name, double value, unsigned flags)
{
    return em_log_ex(m, name, value, &(em_log_opts){.flags = flags});
}

em_status em_log_tensor(em_module *m, const char *name, const em_tensor *value, unsigned flags)
{
    if (value == NULL)
        return emi_has_error() ? em_last_status() : emi_fail(EM_EINVAL, "em_log_tensor: the value is NULL");
    if (em_tensor_numel(value) != 1)
        return emi_fail(EM_EINVAL, "em_log_tensor(\"%s\"): the value must have one element, it has %lld",
                        name != NULL ? name : "", (long long)em_tensor_numel(value));
    double v = em_tensor_item(value);
    if (emi_has_error())
        return em_last_status();
    return em_log(m, name, v, flags);
}

em_status em_log_dict(em_module *m, const char *const *names, const double *values, size_t n, unsigned flags)
{
    if (n > 0 && (names == NULL || values == NULL))
        return emi_fail(EM_EINVAL, "em_log_dict: names and values are required");
    for (size_t i = 0; i < n; i++) {
        em_status s = em_log(m, names[i], values[i], flags);
        if (s != EM_OK)
            return s;
    }
    return EM_OK;
}

/* ---- from results to callback_metrics, progress bar and logger (_ResultCollection.metrics) ------------ */

static void apply(emi_results *res, bool on_step, bool training, emi_kvlist *callback, emi_kvlist *progbar,
                  emi_kvlist *row)
{
    char forked[512];
    for (size_t i = 0; i < res->n; i++) {
        const emi_metric *m = &res->items[i];
        if (!m->has_value)
            continue;
        double v;
        if (on_step) {
            if (!m->on_step)
                continue;
            v = m->last;
        } else {
            if (!m->on_epoch)
                continue;
            v = metric_compute(m);
        }
        const char *fname = m->name;
        if (m->on_step && m->on_epoch) {
            snprintf(forked, sizeof forked, "%s_%s", m->name, on_step ? "step" : "epoch");
            fname = forked;
        }
        if (m->logger && row != NULL)
            emi_kvlist_set(row, fname, v);
        if (training || (m->on_epoch && !on_step)) {
            emi_kvlist_set(callback, m->name, v);
            emi_kvlist_set(callback, fname, v);
        }
        if (m->prog_bar && progbar != NULL)
            emi_kvlist_set(progbar, fname, v);
    }
}

void emi_metrics_refresh(em_trainer *t)
{
    emi_metrics *mx = &t->metrics;
    if (t->stage == EMI_STAGE_TRAIN)
        apply(&mx->train, !mx->train_epoch_end, true, &mx->callback, &mx->progbar, NULL);
    else if (t->stage == EMI_STAGE_VAL)
        apply(&mx->val, !t->val_epoch_end, false, &mx->callback, &mx->progbar, NULL);
}

static void results_reset(emi_results *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->items[i].name);
    r->n = 0;
}

void emi_metrics_reset_stage(em_trainer *t, emi_stage stage)
{
    if (stage == EMI_STAGE_TRAIN) {
        results_reset(&t->metrics.train);
        t->metrics.train_epoch_end = false;
    } else {
        results_reset(&t->metrics.val);
        t->val_epoch_end = false;
    }
}

void emi_metrics_reset_all(em_trainer *t)
{
    results_reset(&t->metrics.val);
    emi_kvlist_clear(&t->metrics.callback);
    emi_kvlist_clear(&t->metrics.progbar);
}

em_status emi_metrics_train_epoch_end_reached(em_trainer *t)
{
    t->metrics.train_epoch_end = true;
    return sync_epoch(t, &t->metrics.train);
}

/* ---- the logger connector ---------------------------------------------------------------------------------- */

em_status emi_metrics_open(em_trainer *t)
{
    t->metrics.train_epoch_end = false;
    if (!t->cfg.enable_csv_logger || t->env.rank != 0) /* loggers write on rank 0 only (rank_zero_only) */
        return EM_OK;
    return emi_csv_logger_open(&t->metrics.logger, t->root_dir, t->log_dir);
}

/* Lightning: LoggerConnector.log_metrics: adds "epoch", hands the row and the step to the logger. */
static em_status log_row(em_trainer *t, emi_kvlist *row, int64_t step)
{
    if (row->n == 0 || t->metrics.logger == NULL) {
        emi_kvlist_free(row);
        return EM_OK;
    }
    if (!emi_kvlist_get(row, "epoch", NULL))
        emi_kvlist_set(row, "epoch", (double)t->current_epoch);
    em_clear_error();
    em_status s = emi_csv_logger_log_metrics(t->metrics.logger, row, step);
    return s == EM_OK ? EM_OK : emi_trainer_fail(t, "logger", s);
}

em_status emi_metrics_log_step(em_trainer *t)
{
    emi_kvlist row = {0};
    apply(&t->metrics.train, true, true, &t->metrics.callback, NULL, &row);
    return log_row(t, &row, t->batches_that_stepped);
}

em_status emi_metrics_epoch_end(em_trainer *t, emi_stage stage)
{
    emi_metrics *mx = &t->metrics;
    em_status s = sync_epoch(t, stage == EMI_STAGE_TRAIN ? &mx->train : &mx->val);
    if (s != EM_OK)
        return s;
    if (stage == EMI_STAGE_TRAIN) {
        /* on_epoch_end: epoch values into callback_metrics and the progress bar */
        apply(&mx->train, false, true, &mx->callback, &mx->progbar, NULL);
        return EM_OK;
    }
    if (t->stage == EMI_STAGE_SANITY)
        return EM_OK; /* sanity-check metrics never reach callback_metrics or loggers */
    emi_kvlist row = {0};
    apply(&mx->val, false, false, &mx->callback, &mx->progbar, &row);
    return log_row(t, &row, t->batches_that_stepped);
}

em_status emi_metrics_train_epoch_log(em_trainer *t)
{
    emi_kvlist row = {0};
    apply(&t->metrics.train, false, true, &t->metrics.callback, NULL, &row);
    em_status s = log_row(t, &row, t->batches_that_stepped - 1);
    emi_metrics_reset_stage(t, EMI_STAGE_TRAIN);
    return s;
}

em_status em_trainer_log_metrics(em_trainer *t, const char *const *names, const double *values, size_t n)
{
    if (t == NULL || (n > 0 && (names == NULL || values == NULL)))
        return emi_fail(EM_EINVAL, "em_trainer_log_metrics: NULL argument");
    if (!emi_trainer_ok(t, __func__))
        return EM_EMISUSE;
    if (!t->fitting)
        return emi_fail(EM_ESTATE, "em_trainer_log_metrics: the trainer is not fitting");
    if (t->metrics.logger == NULL || n == 0)
        return EM_OK;
    emi_kvlist row = {0};
    for (size_t i = 0; i < n; i++) {
        if (names[i] == NULL) {
            emi_kvlist_free(&row);
            return emi_fail(EM_EINVAL, "em_trainer_log_metrics: names[%zu] is NULL", i);
        }
        emi_kvlist_set(&row, names[i], values[i]);
    }
    em_clear_error();
    em_status s = emi_csv_logger_log_metrics(t->metrics.logger, &row, t->batches_that_stepped);
    return s == EM_OK ? EM_OK : emi_trainer_fail(t, "logger", s);
}

em_status em_trainer_set_callback_metric(em_trainer *t, const char *name, double value)
{
    if (t == NULL || name == NULL)
        return emi_fail(EM_EINVAL, "em_trainer_set_callback_metric: NULL argument");
    if (!emi_trainer_ok(t, __func__))
        return EM_EMISUSE;
    if (!t->fitting)
        return emi_fail(EM_ESTATE, "em_trainer_set_callback_metric: the trainer is not fitting");
    emi_kvlist_set(&t->metrics.callback, name, value);
    return EM_OK;
}

void emi_metrics_close(em_trainer *t)
{
    emi_metrics *mx = &t->metrics;
    emi_csv_logger_close(mx->logger);
    mx->logger = NULL;
    results_reset(&mx->train);
    results_reset(&mx->val);
    free(mx->train.items);
    free(mx->val.items);
    mx->train = (emi_results){0};
    mx->val = (emi_results){0};
}
