/* early_stopping.c: Lightning's EarlyStopping, a built-in callback written as any user's callback is: on
 * the public API (and the log handler for its messages).
 *
 * Lightning: callbacks/early_stopping.py (2.2.5). The monitored value is a float32 tensor there
 * (callback_metrics holds tensors), so every comparison is made in float32: the thresholds and
 * min_delta are Python floats that torch casts to the tensor's dtype. Messages are Lightning's,
 * tensors printed as torch prints a 0-dim float tensor ("tensor(0.4943)").
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h" /* emi_fail, emi_info, emi_warn */
#include "ember/trainer.h"

typedef struct early_stopping {
    char *monitor;
    double min_delta; /* signed as Lightning: negative in mode min */
    int64_t patience;
    bool verbose, max_mode, strict, check_finite, log_rank_zero_only;
    double stopping_threshold, divergence_threshold; /* NAN = None */
    int check_on_train_epoch_end;                    /* -1 until resolved at the first fit */
    void (*on_check)(void *user, const em_early_stopping_check *check);
    void *on_check_user;
    /* state (Lightning's state_dict) */
    int64_t wait_count, stopped_epoch;
    float best_score;
} early_stopping;

/* ---- torch's and Python's number formatting ------------------------------------------------------------ */

/* str() of a 0-dim float tensor (torch/_tensor_str.py's _Formatter for one value, precision 4). */
static void format_tensor(char *buf, size_t n, float v)
{
    double d = (double)v;
    if (isnan(d)) {
        snprintf(buf, n, "tensor(nan)");
    } else if (isinf(d)) {
        snprintf(buf, n, "tensor(%sinf)", d < 0 ? "-" : "");
    } else if (d == ceil(d)) { /* int mode */
        if (fabs(d) > 1e8)
            snprintf(buf, n, "tensor(%.4e)", d);
        else
            snprintf(buf, n, "tensor(%.0f.)", d);
    } else if (fabs(d) > 1e8 || fabs(d) < 1e-4) {
        snprintf(buf, n, "tensor(%.4e)", d);
    } else {
        snprintf(buf, n, "tensor(%.4f)", d);
    }
}

/* repr() of a Python float: the shortest digits that read back to the same double. */
static void format_pyfloat(char *buf, size_t n, double v)
{
    if (isnan(v)) {
        snprintf(buf, n, "nan");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, n, "%sinf", v < 0 ? "-" : "");
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    if (strpbrk(buf, ".en") == NULL && strlen(buf) + 2 < n)
        strcat(buf, ".0");
}

/* ---- the check: _run_early_stopping_check and _evaluate_stopping_criteria -------------------------------- */

static bool better(const early_stopping *es, float a, float b)
{
    return es->max_mode ? a > b : a < b; /* torch.gt / torch.lt */
}

/* Lightning: _evaluate_stopping_criteria. Writes the reason (or "") into `reason`. */
static bool evaluate(early_stopping *es, float current, char *reason, size_t n)
{
    char cur[64], a[64];
    const char *order = es->max_mode ? ">" : "<";
    reason[0] = '\0';
    format_tensor(cur, sizeof cur, current);
    if (es->check_finite && !isfinite(current)) {
        snprintf(reason, n, "Monitored metric %s = %s is not finite. Previous best value was %.3f. Signaling "
                            "Trainer to stop.", es->monitor, cur, (double)es->best_score);
        return true;
    }
    if (!isnan(es->stopping_threshold) && better(es, current, (float)es->stopping_threshold)) {
        format_pyfloat(a, sizeof a, es->stopping_threshold);
        snprintf(reason, n, "Stopping threshold reached: %s = %s %s %s. Signaling Trainer to stop.", es->monitor, cur,
                 order, a);
        return true;
    }
    if (!isnan(es->divergence_threshold) && better(es, -current, -(float)es->divergence_threshold)) {
        format_pyfloat(a, sizeof a, es->divergence_threshold);
        snprintf(reason, n, "Divergence threshold reached: %s = %s %s %s. Signaling Trainer to stop.", es->monitor,
                 cur, order, a);
        return true;
    }
    /* current - min_delta, in float32 (torch casts the Python scalar to the tensor's dtype) */
    float shifted = current - (float)es->min_delta;
    if (better(es, shifted, es->best_score)) {
        if (isfinite(es->best_score)) {
            format_pyfloat(a, sizeof a, fabs(es->min_delta));
            snprintf(reason, n, "Metric %s improved by %.3f >= min_delta = %s. New best score: %.3f", es->monitor,
                     (double)fabsf(es->best_score - current), a, (double)current);
        } else {
            snprintf(reason, n, "Metric %s improved. New best score: %.3f", es->monitor, (double)current);
        }
        es->best_score = current;
        es->wait_count = 0;
        return false;
    }
    es->wait_count++;
    if (es->wait_count >= es->patience) {
        snprintf(reason, n, "Monitored metric %s did not improve in the last %lld records. Best score: %.3f. "
                            "Signaling Trainer to stop.", es->monitor, (long long)es->wait_count,
                 (double)es->best_score);
        return true;
    }
    return false;
}

/* The names of callback_metrics, as Lightning lists them: `a`, `b` */
static void metric_names(const em_trainer *t, char *buf, size_t n)
{
    size_t off = 0, count = em_trainer_num_callback_metrics(t);
    buf[0] = '\0';
    for (size_t i = 0; i < count && off + 8 < n; i++) {
        const char *name = em_trainer_callback_metric_at(t, i, NULL);
        int w = snprintf(buf + off, n - off, "%s%s", i ? "`, `" : "", name != NULL ? name : "");
        if (w < 0)
            break;
        off += (size_t)w;
    }
}

/* Lightning: EarlyStopping._log_info: "[rank: r] " before the message when world_size > 1, and only
 * rank 0 logs under log_rank_zero_only */
static void log_info(const early_stopping *es, const em_trainer *t, const char *message)
{
    if (em_trainer_world_size(t) <= 1) {
        emi_info("%s", message);
        return;
    }
    int64_t rank = em_trainer_global_rank(t);
    if (!es->log_rank_zero_only || rank == 0)
        emi_info("[rank: %lld] %s", (long long)rank, message);
}

/* Lightning: _run_early_stopping_check */
static em_status run_check(early_stopping *es, em_trainer *t, const char *hook)
{
    double value;
    if (!em_trainer_callback_metric(t, es->monitor, &value)) {
        char names[768], msg[1024];
        metric_names(t, names, sizeof names);
        snprintf(msg, sizeof msg, "Early stopping conditioned on metric `%s` which is not available. Pass in or "
                                  "modify your `EarlyStopping` callback to use any of the following: `%s`",
                 es->monitor, names);
        if (es->strict)
            return emi_fail(EM_EINVAL, "%s", msg);
        if (es->verbose)
            emi_warn("%s", msg);
        return EM_OK;
    }
    float current = (float)value;
    char reason[512];
    bool stop = evaluate(es, current, reason, sizeof reason);
    /* Lightning: reduce_boolean_decision(should_stop, all=False): under DDP one rank that wants to stop
     * stops every rank (each rank checks its own callback_metrics, synced or not); the identity
     * with one process */
    em_status rs = em_trainer_reduce_boolean_decision(t, stop, false, &stop);
    if (rs != EM_OK)
        return rs;
    if (stop) {
        em_trainer_set_should_stop(t, true); /* trainer.should_stop or should_stop: nothing resets it */
        es->stopped_epoch = em_trainer_current_epoch(t);
    }
    if (reason[0] != '\0' && es->verbose)
        log_info(es, t, reason);
    if (es->on_check != NULL) {
        em_early_stopping_check c = {.epoch = em_trainer_current_epoch(t), .global_step = em_trainer_global_step(t),
                                     .hook = hook, .value = current, .should_stop = stop,
                                     .wait_count = es->wait_count, .best_score = es->best_score,
                                     .reason = reason[0] != '\0' ? reason : NULL};
        es->on_check(es->on_check_user, &c);
    }
    return EM_OK;
}

/* ---- the hooks ------------------------------------------------------------------------------------------------ */

/* Lightning: setup: check_on_train_epoch_end None becomes val_check_interval == 1.0 and
 * check_val_every_n_epoch == 1 (an int 1 equals 1.0 in Python too), once. */
static em_status es_on_fit_start(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)m;
    early_stopping *es = em_callback_state(cb);
    if (es->check_on_train_epoch_end == -1) {
        em_amount vci = em_trainer_val_check_interval(t);
        es->check_on_train_epoch_end = vci.value == 1.0 && em_trainer_check_val_every_n_epoch(t) == 1;
    }
    return EM_OK;
}

static em_status es_on_train_epoch_end(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)m;
    early_stopping *es = em_callback_state(cb);
    if (es->check_on_train_epoch_end != 1 || em_trainer_sanity_checking(t))
        return EM_OK;
    return run_check(es, t, "on_train_epoch_end");
}

static em_status es_on_validation_end(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)m;
    early_stopping *es = em_callback_state(cb);
    if (es->check_on_train_epoch_end == 1 || em_trainer_sanity_checking(t))
        return EM_OK;
    return run_check(es, t, "on_validation_end");
}

static void es_destroy(void *state)
{
    early_stopping *es = state;
    free(es->monitor);
    free(es);
}

/* Lightning: EarlyStopping.state_dict / load_state_dict: wait_count, stopped_epoch, best_score (and
 * patience, which ember keeps as configured). Bytes: "ES1", then int64 wait_count, int64 stopped_epoch,
 * float best_score, little-endian as the host writes them (checkpoints are read where they are written). */
#define ES_STATE_SIZE (4 + 8 + 8 + 4)

static em_status es_state_save(em_callback *cb, em_trainer *t, void **bytes, size_t *n)
{
    (void)t;
    const early_stopping *es = em_callback_state(cb);
    unsigned char *b = malloc(ES_STATE_SIZE);
    if (b == NULL)
        return em_error_set(EM_ENOMEM, "EarlyStopping: out of memory");
    memcpy(b, "ES1", 4);
    memcpy(b + 4, &es->wait_count, 8);
    memcpy(b + 12, &es->stopped_epoch, 8);
    memcpy(b + 20, &es->best_score, 4);
    *bytes = b;
    *n = ES_STATE_SIZE;
    return EM_OK;
}

static em_status es_state_load(em_callback *cb, em_trainer *t, const void *bytes, size_t n)
{
    (void)t;
    early_stopping *es = em_callback_state(cb);
    int64_t wait, stopped;
    float best;
    if (n != ES_STATE_SIZE || memcmp(bytes, "ES1", 4) != 0)
        return em_error_set(EM_EINVAL, "EarlyStopping: the checkpoint's state is not an EarlyStopping state of this "
                                       "ember (%zu bytes)", n);
    memcpy(&wait, (const unsigned char *)bytes + 4, 8);
    memcpy(&stopped, (const unsigned char *)bytes + 12, 8);
    memcpy(&best, (const unsigned char *)bytes + 20, 4);
    if (wait < 0 || stopped < 0)
        return em_error_set(EM_EINVAL, "EarlyStopping: the checkpoint's state has a negative count");
    es->wait_count = wait;
    es->stopped_epoch = stopped;
    es->best_score = best;
    return EM_OK;
}

static const em_callback_ops es_ops = {
    .version = EM_CALLBACK_OPS_VERSION,
    .name = "EarlyStopping",
    .on_fit_start = es_on_fit_start,
    .on_train_epoch_end = es_on_train_epoch_end,
    .on_validation_end = es_on_validation_end,
    .destroy = es_destroy,
    .monitoring = true,
    .state_save = es_state_save,
    .state_load = es_state_load,
};

em_callback *em_early_stopping(const em_early_stopping_opts *opts)
{
    if (opts == NULL || opts->version != EM_EARLY_STOPPING_OPTS_VERSION) {
        emi_fail(EM_EINVAL, "em_early_stopping: opts is NULL or its version is not EM_EARLY_STOPPING_OPTS_VERSION: "
                            "start from EM_EARLY_STOPPING_OPTS_INIT");
        return NULL;
    }
    if (opts->monitor == NULL || opts->monitor[0] == '\0') {
        emi_fail(EM_EINVAL, "em_early_stopping: `monitor` is required (a callback_metrics key)");
        return NULL;
    }
    const char *mode = opts->mode != NULL ? opts->mode : "min";
    if (strcmp(mode, "min") != 0 && strcmp(mode, "max") != 0) {
        emi_fail(EM_EINVAL, "em_early_stopping: `mode` can be min, max, got %s", mode);
        return NULL;
    }
    if (opts->check_on_train_epoch_end < -1 || opts->check_on_train_epoch_end > 1) {
        emi_fail(EM_EINVAL, "em_early_stopping: `check_on_train_epoch_end` is -1 (None), 0 or 1, got %d",
                 opts->check_on_train_epoch_end);
        return NULL;
    }
    early_stopping *es = calloc(1, sizeof *es);
    char *monitor = es != NULL ? malloc(strlen(opts->monitor) + 1) : NULL;
    if (monitor == NULL) {
        free(es);
        emi_fail(EM_ENOMEM, "em_early_stopping: out of memory");
        return NULL;
    }
    strcpy(monitor, opts->monitor);
    es->monitor = monitor;
    es->max_mode = strcmp(mode, "max") == 0;
    es->min_delta = es->max_mode ? opts->min_delta : -opts->min_delta; /* min_delta *= 1 if gt else -1 */
    es->patience = opts->patience;
    es->verbose = opts->verbose;
    es->strict = opts->strict;
    es->check_finite = opts->check_finite;
    es->stopping_threshold = opts->stopping_threshold;
    es->divergence_threshold = opts->divergence_threshold;
    es->check_on_train_epoch_end = opts->check_on_train_epoch_end;
    es->log_rank_zero_only = opts->log_rank_zero_only;
    es->on_check = opts->on_check;
    es->on_check_user = opts->on_check_user;
    es->best_score = es->max_mode ? -INFINITY : INFINITY;
    return em_callback_new(&es_ops, es);
}

static const early_stopping *es_of(const em_callback *cb)
{
    return em_callback_get_ops(cb) == &es_ops ? em_callback_state(cb) : NULL;
}

int64_t em_early_stopping_wait_count(const em_callback *cb)
{
    const early_stopping *es = es_of(cb);
    return es != NULL ? es->wait_count : -1;
}

int64_t em_early_stopping_stopped_epoch(const em_callback *cb)
{
    const early_stopping *es = es_of(cb);
    return es != NULL ? es->stopped_epoch : -1;
}

double em_early_stopping_best_score(const em_callback *cb)
{
    const early_stopping *es = es_of(cb);
    return es != NULL ? (double)es->best_score : NAN;
}
