/* metrics.c: self.log, callback_metrics, epoch reduction, and the CSV logger.
 *
 * Lightning: core/module.py (LightningModule.log), trainer/connectors/logger_connector/fx_validator.py
 *            (_FxValidator: which hook may log, with which defaults), .../result.py (_ResultCollection,
 *            _ResultMetric: step values, batch-size weighted epoch means, forked names),
 *            .../logger_connector.py (when values reach callback_metrics and loggers),
 *            fabric/loggers/csv_logs.py (metrics.csv: sorted columns, one row per log_metrics call).
 * Rules: LIGHTNING_SEMANTICS.md §9.1-9.4.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, isatty, mkdir, opendir */

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loop.h" /* em_trainer internals, emi_fail */

/* ---- small key/value lists ------------------------------------------------------------------------------ */

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

void kvlist_set(emi_kvlist *l, const char *name, double v)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i].name, name) == 0) {
            l->items[i].value = v;
            return;
        }
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 8;
        emi_kv *p = realloc(l->items, cap * sizeof *p);
        if (p == NULL)
            return; /* out of memory: the metric is dropped (nothing else breaks) */
        l->items = p;
        l->cap = cap;
    }
    char *copy = dup_str(name);
    if (copy == NULL)
        return;
    l->items[l->n++] = (emi_kv){copy, v};
}

bool kvlist_get(const emi_kvlist *l, const char *name, double *v)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i].name, name) == 0) {
            if (v != NULL)
                *v = l->items[i].value;
            return true;
        }
    return false;
}

static void kvlist_clear(emi_kvlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i].name);
    l->n = 0;
}

void kvlist_free(emi_kvlist *l)
{
    kvlist_clear(l);
    free(l->items);
    l->items = NULL;
    l->cap = 0;
}

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

static emi_results *stage_results(em_trainer *t)
{
    switch (t->stage) {
    case EMI_STAGE_TRAIN: return &t->metrics.train;
    case EMI_STAGE_VAL:
    case EMI_STAGE_SANITY: return &t->metrics.val;
    case EMI_STAGE_NONE: break;
    }
    return NULL;
}

/* ---- self.log ------------------------------------------------------------------------------------------- */

static double metric_compute(const emi_metric *m)
{
    if (m->reduce == EM_REDUCE_MEAN)
        return m->weight > 0 ? (double)((float)m->acc / (float)m->weight) : NAN;
    return m->acc;
}

em_status em_log_ex(em_module *m, const char *name, double value, const em_log_opts *opts)
{
    em_log_opts o = opts != NULL ? *opts : (em_log_opts){0};
    if (m == NULL || name == NULL || name[0] == '\0')
        return emi_fail(EM_EINVAL, "em_log: the module and a non-empty name are required");
    em_trainer *t = m->trainer_;
    if (t == NULL)
        return emi_fail(EM_ESTATE, "em_log(\"%s\"): called outside em_trainer_fit", name);
    fx_kind kind = fx_kind_of(t->hook);
    emi_results *res = stage_results(t);
    if (kind == FX_FORBIDDEN || res == NULL)
        return emi_fail(EM_ESTATE, "em_log(\"%s\"): You can't `self.log()` inside `%s`.", name,
                        t->hook != NULL ? t->hook : "this context");
    if (strstr(name, "/dataloader_idx_") != NULL)
        return emi_fail(EM_EINVAL, "em_log(\"%s\"): the name must not contain \"/dataloader_idx_\"", name);
    if (o.reduce_fx < EM_REDUCE_MEAN || o.reduce_fx > EM_REDUCE_MIN)
        return emi_fail(EM_EINVAL, "em_log(\"%s\"): reduce_fx %d is not one of mean, sum, max, min", name,
                        (int)o.reduce_fx);
    unsigned f = o.flags;
    bool on_step = kind == FX_STEP, on_epoch = kind != FX_STEP;
    if (f & EM_LOG_ON_STEP)
        on_step = true;
    if (f & EM_LOG_NOT_ON_STEP)
        on_step = false;
    if (f & EM_LOG_ON_EPOCH)
        on_epoch = true;
    if (f & EM_LOG_NOT_ON_EPOCH)
        on_epoch = false;
    if (kind == FX_EPOCH_ONLY && (on_step || !on_epoch))
        return emi_fail(EM_EINVAL, "em_log(\"%s\"): You can't `self.log(on_step=%s, on_epoch=%s)` in `%s`. Possible "
                                   "values: on_step=False, on_epoch=True", name, on_step ? "True" : "False",
                        on_epoch ? "True" : "False", t->hook);
    if (!on_step && !on_epoch)
        return emi_fail(EM_EINVAL, "em_log(\"%s\"): on_step=False, on_epoch=False is not valid: the value would go "
                                   "nowhere", name);
    bool prog_bar = (f & EM_LOG_PROG_BAR) != 0, logger = (f & EM_LOG_NO_LOGGER) == 0;

    emi_metric *mt = NULL;
    for (size_t i = 0; i < res->n; i++)
        if (res->items[i].fx == t->hook && strcmp(res->items[i].name, name) == 0)
            mt = &res->items[i];
    if (mt != NULL) {
        if (mt->on_step != on_step || mt->on_epoch != on_epoch || mt->prog_bar != prog_bar || mt->logger != logger ||
            mt->reduce != o.reduce_fx)
            return emi_fail(EM_EINVAL, "em_log(\"%s\"): You called `self.log(%s, ...)` twice in `%s` with different "
                                       "arguments. This is not allowed", name, name, t->hook);
    } else {
        if (res->n == res->cap) {
            size_t cap = res->cap ? 2 * res->cap : 8;
            emi_metric *p = realloc(res->items, cap * sizeof *p);
            if (p == NULL)
                return emi_fail(EM_ENOMEM, "em_log: out of memory");
            res->items = p;
            res->cap = cap;
        }
        char *copy = dup_str(name);
        if (copy == NULL)
            return emi_fail(EM_ENOMEM, "em_log: out of memory");
        mt = &res->items[res->n++];
        *mt = (emi_metric){.name = copy, .fx = t->hook, .on_step = on_step, .on_epoch = on_epoch,
                           .prog_bar = prog_bar, .logger = logger, .reduce = o.reduce_fx};
        if (o.reduce_fx == EM_REDUCE_MAX)
            mt->acc = -INFINITY;
        else if (o.reduce_fx == EM_REDUCE_MIN)
            mt->acc = INFINITY;
    }
    double bs = o.batch_size > 0 ? (double)o.batch_size : (t->batch != NULL && t->batch->size > 0 ? (double)t->batch->size : 1.0);
    /* Lightning turns a logged number into a float32 tensor and reduces in float32
     * (_ResultMetric.update: value += value.mean() * batch_size; compute: value / cumulated_batch_size) */
    float v32 = (float)value;
    mt->last = (double)v32;
    mt->has_value = true;
    switch (mt->reduce) {
    case EM_REDUCE_MEAN:
        mt->acc = (double)((float)mt->acc + v32 * (float)bs);
        mt->weight += bs;
        break;
    case EM_REDUCE_SUM: mt->acc = (double)((float)mt->acc + v32); break;
    case EM_REDUCE_MAX: mt->acc = (double)v32 > mt->acc ? (double)v32 : mt->acc; break;
    case EM_REDUCE_MIN: mt->acc = (double)v32 < mt->acc ? (double)v32 : mt->acc; break;
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
            kvlist_set(row, fname, v);
        if (training || (m->on_epoch && !on_step)) {
            kvlist_set(callback, m->name, v);
            kvlist_set(callback, fname, v);
        }
        if (m->prog_bar && progbar != NULL)
            kvlist_set(progbar, fname, v);
    }
}

void metrics_refresh(em_trainer *t)
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

void metrics_reset_stage(em_trainer *t, emi_stage stage)
{
    if (stage == EMI_STAGE_TRAIN) {
        results_reset(&t->metrics.train);
        t->metrics.train_epoch_end = false;
    } else {
        results_reset(&t->metrics.val);
        t->val_epoch_end = false;
    }
}

void metrics_batch_start(em_trainer *t)
{
    (void)t; /* step values persist until overwritten, as Lightning's forward cache does */
}

void metrics_update_step(em_trainer *t)
{
    metrics_refresh(t);
}

void metrics_reset_all(em_trainer *t)
{
    results_reset(&t->metrics.val);
    kvlist_clear(&t->metrics.callback);
    kvlist_clear(&t->metrics.progbar);
}

void metrics_train_epoch_end_reached(em_trainer *t)
{
    t->metrics.train_epoch_end = true;
}

/* ---- the CSV logger -------------------------------------------------------------------------------------- */

static int mkdir_p(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n >= sizeof buf)
        return -1;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return -1;
            buf[i] = c;
        }
    }
    return 0;
}

/* Lightning: CSVLogger._get_next_version: one more than the largest version_N in root/lightning_logs. */
static long next_version(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    long next = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        if (strncmp(e->d_name, "version_", 8) != 0)
            continue;
        long v = strtol(e->d_name + 8, &end, 10);
        if (*end == '\0' && v + 1 > next)
            next = v + 1;
    }
    closedir(d);
    return next;
}

em_status metrics_open(em_trainer *t)
{
    emi_metrics *mx = &t->metrics;
    mx->train_epoch_end = false;
    if (!t->cfg.enable_csv_logger)
        return EM_OK;
    char dir[4096];
    int w;
    if (t->log_dir != NULL) {
        w = snprintf(dir, sizeof dir, "%s", t->log_dir);
    } else {
        snprintf(dir, sizeof dir, "%s/lightning_logs", t->root_dir);
        long v = next_version(dir);
        w = snprintf(dir, sizeof dir, "%s/lightning_logs/version_%ld", t->root_dir, v);
    }
    if (w < 0 || (size_t)w >= sizeof dir - 16 || mkdir_p(dir) != 0)
        return emi_fail(EM_EIO, "cannot create the log directory %s: %s", dir, strerror(errno));
    strcat(dir, "/metrics.csv");
    mx->csv_path = dup_str(dir);
    if (mx->csv_path == NULL)
        return emi_fail(EM_ENOMEM, "out of memory");
    return EM_OK;
}

/* Python's repr of a float: the shortest decimal that reads back to the same double. */
static void write_number(FILE *f, double v)
{
    if (isnan(v)) {
        fputs("nan", f);
        return;
    }
    if (isinf(v)) {
        fputs(v > 0 ? "inf" : "-inf", f);
        return;
    }
    if (v == floor(v) && fabs(v) < 1e16) {
        fprintf(f, "%.1f", v);
        return;
    }
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    fputs(buf, f);
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(((const emi_kv *)a)->name, ((const emi_kv *)b)->name);
}

static void csv_write_row(FILE *f, const emi_metrics *mx, const emi_kvlist *row)
{
    for (size_t k = 0; k < mx->csv_keys.n; k++) {
        double v;
        if (k)
            fputc(',', f);
        const char *key = mx->csv_keys.items[k].name;
        if (kvlist_get(row, key, &v)) {
            if (strcmp(key, "epoch") == 0 || strcmp(key, "step") == 0)
                fprintf(f, "%lld", (long long)v);
            else
                write_number(f, v);
        }
    }
    fputc('\n', f);
}

/* Lightning: _ExperimentWriter.save: rows are appended; when a row brings a new column the file is
 * rewritten with the new (sorted) header, empty cells for absent keys. */
static void csv_save(emi_metrics *mx, bool rewrite)
{
    if (mx->csv_path == NULL || mx->n_rows == 0)
        return;
    FILE *f = fopen(mx->csv_path, rewrite ? "w" : "a");
    if (f == NULL)
        return;
    if (rewrite) {
        for (size_t k = 0; k < mx->csv_keys.n; k++)
            fprintf(f, "%s%s", k ? "," : "", mx->csv_keys.items[k].name);
        fputc('\n', f);
        for (size_t r = 0; r < mx->n_rows; r++)
            csv_write_row(f, mx, &mx->csv_rows[r]);
    } else {
        csv_write_row(f, mx, &mx->csv_rows[mx->n_rows - 1]);
    }
    fclose(f);
}

/* Lightning: LoggerConnector.log_metrics: adds "epoch", uses the given step, then saves. */
static void log_row(em_trainer *t, emi_kvlist *row, int64_t step)
{
    emi_metrics *mx = &t->metrics;
    if (row->n == 0 || mx->csv_path == NULL) {
        kvlist_free(row);
        return;
    }
    if (!kvlist_get(row, "epoch", NULL))
        kvlist_set(row, "epoch", (double)t->current_epoch);
    kvlist_set(row, "step", (double)step);
    if (mx->n_rows == mx->cap_rows) {
        size_t cap = mx->cap_rows ? 2 * mx->cap_rows : 16;
        emi_kvlist *p = realloc(mx->csv_rows, cap * sizeof *p);
        if (p == NULL) {
            kvlist_free(row);
            return;
        }
        mx->csv_rows = p;
        mx->cap_rows = cap;
    }
    mx->csv_rows[mx->n_rows++] = *row;
    size_t before = mx->csv_keys.n;
    for (size_t i = 0; i < row->n; i++)
        if (!kvlist_get(&mx->csv_keys, row->items[i].name, NULL))
            kvlist_set(&mx->csv_keys, row->items[i].name, 0);
    bool new_keys = mx->csv_keys.n != before;
    if (new_keys)
        qsort(mx->csv_keys.items, mx->csv_keys.n, sizeof *mx->csv_keys.items, key_cmp);
    csv_save(mx, new_keys || mx->n_rows == 1);
}

void metrics_log_step(em_trainer *t)
{
    emi_kvlist row = {0};
    apply(&t->metrics.train, true, true, &t->metrics.callback, NULL, &row);
    log_row(t, &row, t->batches_that_stepped);
}

void metrics_epoch_end(em_trainer *t, emi_stage stage)
{
    emi_metrics *mx = &t->metrics;
    if (stage == EMI_STAGE_TRAIN) {
        /* on_epoch_end: epoch values into callback_metrics and the progress bar */
        apply(&mx->train, false, true, &mx->callback, &mx->progbar, NULL);
        return;
    }
    if (t->stage == EMI_STAGE_SANITY)
        return; /* sanity-check metrics never reach callback_metrics or loggers */
    emi_kvlist row = {0};
    apply(&mx->val, false, false, &mx->callback, &mx->progbar, &row);
    log_row(t, &row, t->batches_that_stepped);
}

void metrics_train_epoch_log(em_trainer *t)
{
    emi_kvlist row = {0};
    apply(&t->metrics.train, false, true, &t->metrics.callback, NULL, &row);
    log_row(t, &row, t->batches_that_stepped - 1);
    metrics_reset_stage(t, EMI_STAGE_TRAIN);
}

void metrics_close(em_trainer *t)
{
    emi_metrics *mx = &t->metrics;
    for (size_t r = 0; r < mx->n_rows; r++)
        kvlist_free(&mx->csv_rows[r]);
    free(mx->csv_rows);
    mx->csv_rows = NULL;
    mx->n_rows = mx->cap_rows = 0;
    kvlist_free(&mx->csv_keys);
    free(mx->csv_path);
    mx->csv_path = NULL;
    results_reset(&mx->train);
    results_reset(&mx->val);
    free(mx->train.items);
    free(mx->val.items);
    mx->train = (emi_results){0};
    mx->val = (emi_results){0};
}
