/* trainer.c: the fit loop - epochs, batches, stop conditions, validation, hook dispatch.
 *
 * Lightning: trainer/trainer.py (Trainer.__init__ checks, _run, _run_stage, _run_sanity_check)
 *            loops/fit_loop.py (_FitLoop: setup_data, done, on_advance_start/end, on_run_start/end)
 *            loops/training_epoch_loop.py (_TrainingEpochLoop: done, advance, on_advance_end,
 *                                          _should_check_val_fx, _num_ready_batches_reached)
 *            loops/evaluation_loop.py (the validation loop), loops/utilities.py (_parse_loop_limits)
 * Order of operations: LIGHTNING_SEMANTICS.md §1.1, §2, §9.5-9.6.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "loop.h" /* em_trainer internals, emi_fail, CALL_CB_HOOKS */

void loader_set_epoch(em_loader *l, int64_t epoch);
em_status loader_fetch(em_loader *l, int64_t index, em_batch *out);

/* ---- small helpers ------------------------------------------------------------------------------------- */

static char *dup_str(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

/* Lightning's rank_zero_warn: once per message per trainer would need a set; warnings are rare. */
static void warn(const char *fmt, ...) EM_PRINTF(1, 2);
static void warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ember: warning: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- failures: where and what ---------------------------------------------------------------------------- */

em_status trainer_fail(em_trainer *t, const char *what, em_status s)
{
    if (s == EM_OK)
        s = EM_ERROR;
    if (t->fail_status != EM_OK)
        return t->fail_status; /* the first failure wins, as everywhere in ember */
    t->fail_status = s;
    const char *msg = em_last_error();
    if (msg[0] == '\0')
        msg = em_status_name(s);
    if (t->stage == EMI_STAGE_TRAIN && t->batch != NULL)
        snprintf(t->error, sizeof t->error, "epoch %lld, batch %lld, %s: %s", (long long)t->current_epoch,
                 (long long)t->batch_idx, what, msg);
    else if ((t->stage == EMI_STAGE_VAL || t->stage == EMI_STAGE_SANITY) && t->batch != NULL)
        snprintf(t->error, sizeof t->error, "epoch %lld, %s batch %lld, %s: %s", (long long)t->current_epoch,
                 t->stage == EMI_STAGE_SANITY ? "sanity check" : "validation", (long long)t->val_batch_idx,
                 what, msg);
    else if (t->stage != EMI_STAGE_NONE)
        snprintf(t->error, sizeof t->error, "epoch %lld, %s: %s", (long long)t->current_epoch, what, msg);
    else
        snprintf(t->error, sizeof t->error, "%s: %s", what, msg);
    return s;
}

em_status trainer_check(em_trainer *t, const char *hook, em_status s)
{
    if (t->fail_status != EM_OK)
        return t->fail_status;
    if (s == EM_OK && !emi_has_error())
        return EM_OK;
    if (s == EM_OK)
        s = em_last_status();
    return trainer_fail(t, hook, s);
}

/* Call a module hook `field` with the usual discipline: clear the slot, call, check. */
#define CALL_MODULE_HOOK(t, field, ...)                                                            \
    do {                                                                                          \
        const em_module_ops *mops_ = (t)->module->ops;                                            \
        if (mops_->field != NULL) {                                                               \
            const char *prev_ = (t)->hook;                                                        \
            (t)->hook = #field;                                                                   \
            em_clear_error();                                                                     \
            em_status s_ = mops_->field((t)->module, ##__VA_ARGS__);                              \
            (t)->hook = prev_;                                                                    \
            if (trainer_check((t), #field, s_) != EM_OK)                                          \
                return (t)->fail_status;                                                          \
        }                                                                                         \
    } while (0)

/* on_<name> for the callbacks then the module, in Lightning's order. */
#define CALL_HOOKS(t, field) \
    do {                      \
        CALL_CB_HOOKS(t, field); \
        CALL_MODULE_HOOK(t, field); \
    } while (0)

/* ---- construction: Trainer.__init__'s checks -------------------------------------------------------------- */

static em_status check_amount(const char *name, em_amount a)
{
    if (a.is_fraction) {
        if (!(a.value >= 0.0 && a.value <= 1.0))
            return emi_fail(EM_EINVAL, "em_trainer_new: `%s` must be a fraction in [0.0, 1.0] (EM_FRACTION) or a "
                                       "number of batches (EM_BATCHES), got EM_FRACTION(%g)", name, a.value);
    } else if (!(a.value >= 0) || a.value != floor(a.value)) {
        return emi_fail(EM_EINVAL, "em_trainer_new: `%s` must be a fraction in [0.0, 1.0] (EM_FRACTION) or a "
                                   "non-negative number of batches (EM_BATCHES), got EM_BATCHES(%g)", name, a.value);
    }
    return EM_OK;
}

static em_status check_config(const em_trainer_config *c)
{
    if (c->version == 0)
        return emi_fail(EM_EINVAL, "em_trainer_new: cfg->version is 0: start from EM_TRAINER_CONFIG_INIT");
    if (c->version > EM_TRAINER_CONFIG_VERSION)
        return emi_fail(EM_EINVAL, "em_trainer_new: cfg->version %d is newer than this library (%d)", c->version,
                        EM_TRAINER_CONFIG_VERSION);
    if (c->max_epochs != EM_NONE && c->max_epochs < -1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `max_epochs` must be a non-negative integer or -1, got %lld",
                        (long long)c->max_epochs);
    if (c->max_steps < -1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `max_steps` must be a non-negative integer or -1, got %lld",
                        (long long)c->max_steps);
    if (c->min_epochs != EM_NONE && c->min_epochs < 0)
        return emi_fail(EM_EINVAL, "em_trainer_new: `min_epochs` must be >= 0 or EM_NONE, got %lld",
                        (long long)c->min_epochs);
    if (c->min_steps != EM_NONE && c->min_steps < 0)
        return emi_fail(EM_EINVAL, "em_trainer_new: `min_steps` must be >= 0 or EM_NONE, got %lld",
                        (long long)c->min_steps);
    em_status s;
    if ((s = check_amount("limit_train_batches", c->limit_train_batches)) != EM_OK ||
        (s = check_amount("limit_val_batches", c->limit_val_batches)) != EM_OK ||
        (s = check_amount("val_check_interval", c->val_check_interval)) != EM_OK)
        return s;
    if (c->check_val_every_n_epoch != EM_NONE && c->check_val_every_n_epoch < 1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `check_val_every_n_epoch` should be an integer >= 1 or EM_NONE, "
                                   "got %lld", (long long)c->check_val_every_n_epoch);
    if (c->check_val_every_n_epoch == EM_NONE && c->val_check_interval.is_fraction)
        return emi_fail(EM_EINVAL, "em_trainer_new: `val_check_interval` should be a number of batches "
                                   "(EM_BATCHES) when `check_val_every_n_epoch` is EM_NONE, got EM_FRACTION(%g)",
                        c->val_check_interval.value);
    if (c->num_sanity_val_steps < -1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `num_sanity_val_steps` must be >= -1, got %lld",
                        (long long)c->num_sanity_val_steps);
    if (c->accumulate_grad_batches < 1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `accumulate_grad_batches` must be an integer >= 1, got %lld "
                                   "(Lightning would divide by zero later)", (long long)c->accumulate_grad_batches);
    if (c->gradient_clip_algorithm != EM_CLIP_DEFAULT && c->gradient_clip_algorithm != EM_CLIP_NORM &&
        c->gradient_clip_algorithm != EM_CLIP_VALUE)
        return emi_fail(EM_EINVAL, "em_trainer_new: `gradient_clip_algorithm` %d is invalid. Allowed algorithms: "
                                   "EM_CLIP_VALUE, EM_CLIP_NORM", (int)c->gradient_clip_algorithm);
    if (c->precision != EM_PRECISION_32_TRUE && c->precision != EM_PRECISION_16_MIXED &&
        c->precision != EM_PRECISION_BF16_MIXED)
        return emi_fail(EM_EINVAL, "em_trainer_new: precision %d is not supported; use EM_PRECISION_32_TRUE, "
                                   "EM_PRECISION_16_MIXED or EM_PRECISION_BF16_MIXED", (int)c->precision);
    if (c->log_every_n_steps < 1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `log_every_n_steps` must be >= 1, got %lld",
                        (long long)c->log_every_n_steps);
    return EM_OK;
}

em_trainer *em_trainer_new(const em_trainer_config *cfg)
{
    if (cfg == NULL) {
        emi_fail(EM_EINVAL, "em_trainer_new: cfg is NULL: start from EM_TRAINER_CONFIG_INIT");
        return NULL;
    }
    if (check_config(cfg) != EM_OK)
        return NULL;
    em_trainer *t = calloc(1, sizeof *t);
    if (t == NULL) {
        emi_fail(EM_ENOMEM, "em_trainer_new: out of memory");
        return NULL;
    }
    t->cfg = *cfg;
    t->root_dir = dup_str(cfg->default_root_dir != NULL ? cfg->default_root_dir : ".");
    t->trace_path = dup_str(cfg->trace_path);
    t->log_dir = dup_str(cfg->log_dir);
    if (t->root_dir == NULL || (cfg->trace_path != NULL && t->trace_path == NULL) ||
        (cfg->log_dir != NULL && t->log_dir == NULL)) {
        em_trainer_free(t);
        emi_fail(EM_ENOMEM, "em_trainer_new: out of memory");
        return NULL;
    }
    t->cfg.default_root_dir = t->root_dir;
    t->cfg.trace_path = t->trace_path;
    t->cfg.log_dir = t->log_dir;
    t->accumulate = cfg->accumulate_grad_batches;
    return t;
}

em_status em_trainer_add_callback(em_trainer *t, em_callback *cb)
{
    if (t == NULL || cb == NULL) {
        callback_destroy(cb);
        return emi_fail(EM_EINVAL, "em_trainer_add_callback: NULL argument");
    }
    if (t->fitting) {
        callback_destroy(cb);
        return emi_fail(EM_ESTATE, "em_trainer_add_callback: cannot add a callback during fit");
    }
    if (t->n_callbacks == t->cap_callbacks) {
        size_t cap = t->cap_callbacks ? 2 * t->cap_callbacks : 4;
        em_callback **p = realloc(t->callbacks, cap * sizeof *p);
        if (p == NULL) {
            callback_destroy(cb);
            return emi_fail(EM_ENOMEM, "em_trainer_add_callback: out of memory");
        }
        t->callbacks = p;
        t->cap_callbacks = cap;
    }
    t->callbacks[t->n_callbacks++] = cb;
    return EM_OK;
}

void em_trainer_free(em_trainer *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->n_callbacks; i++)
        callback_destroy(t->callbacks[i]);
    free(t->callbacks);
    free(t->root_dir);
    free(t->trace_path);
    free(t->log_dir);
    kvlist_free(&t->metrics.callback);
    kvlist_free(&t->metrics.progbar);
    free(t);
}

const char *em_trainer_error(const em_trainer *t)
{
    return t == NULL ? "" : t->error;
}

/* ---- limits: _parse_loop_limits, _parse_num_batches ------------------------------------------------------ */

/* Lightning's accelerator connector: "16-mixed" on the CPU runs as "bf16-mixed" (with a warning). */
static em_status resolve_precision(em_trainer *t)
{
    t->precision = t->cfg.precision;
    if (t->precision != EM_PRECISION_16_MIXED)
        return EM_OK;
    if (!em_cuda_is_available()) {
        warn("You passed `precision=EM_PRECISION_16_MIXED` but AMP with fp16 is not supported on CPU. Using "
             "`precision=EM_PRECISION_BF16_MIXED` instead.");
        t->precision = EM_PRECISION_BF16_MIXED;
        return EM_OK;
    }
    return emi_fail(EM_EUNSUPPORTED, "em_trainer_fit: 16-mixed precision on CUDA needs the gradient scaler, which "
                                     "this version of ember does not implement yet; use EM_PRECISION_BF16_MIXED");
}

static void resolve_limits(em_trainer *t)
{
    const em_trainer_config *c = &t->cfg;
    t->max_steps = c->max_steps;
    t->min_steps = c->min_steps;
    if (c->max_epochs == EM_NONE) {
        if (c->max_steps == -1) {
            warn("`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, set "
                 "`max_epochs=-1`.");
            t->max_epochs = 1000;
        } else {
            t->max_epochs = -1;
        }
    } else {
        t->max_epochs = c->max_epochs;
    }
    if (c->min_epochs == EM_NONE)
        t->min_epochs = c->min_steps != EM_NONE ? 1 : 0;
    else
        t->min_epochs = c->min_epochs;
}

/* Lightning: _parse_num_batches: the number of batches an epoch runs under a limit. */
static em_status parse_num_batches(const char *stage, int64_t length, em_amount limit, int64_t *out)
{
    if (!limit.is_fraction) {
        *out = length < (int64_t)limit.value ? length : (int64_t)limit.value;
        return EM_OK;
    }
    if (limit.value == 1.0) {
        *out = length;
        return EM_OK;
    }
    int64_t n = (int64_t)((double)length * limit.value);
    if (limit.value > 0.0 && n == 0 && length > 0) {
        double min_pct = 1.0 / (double)length;
        return emi_fail(EM_EINVAL, "You requested to check %g of the %s dataloader but %g * %lld < 1. Please "
                                   "increase the `limit_%s_batches` argument. Try at least EM_FRACTION(%g)",
                        limit.value, stage, limit.value, (long long)length, stage, min_pct);
    }
    *out = n;
    return EM_OK;
}

static bool limit_reached(int64_t current, int64_t max)
{
    return max != -1 && current >= max;
}

/* Lightning: _FitLoop._can_stop_early */
static bool can_stop_early(const em_trainer *t)
{
    bool met_epochs = t->min_epochs > 0 ? t->current_epoch >= t->min_epochs : true;
    bool met_steps = t->min_steps != EM_NONE && t->min_steps > 0 ? t->global_step >= t->min_steps : true;
    return met_epochs && met_steps;
}

/* Lightning: Trainer.estimated_stepping_batches (§2.3) */
static double estimate_stepping_batches(const em_trainer *t)
{
    if (t->max_epochs == -1)
        return t->max_steps == -1 ? INFINITY : (double)t->max_steps;
    int64_t a = t->accumulate;
    int64_t per_epoch = (t->num_training_batches + a - 1) / a;
    int64_t epochs = t->max_epochs > 1 ? t->max_epochs : 1;
    double est = (double)(per_epoch * epochs);
    if (t->max_steps != -1 && (double)t->max_steps < est)
        est = (double)t->max_steps;
    return est;
}

/* ---- the validation loop --------------------------------------------------------------------------------- */

static bool validation_enabled(const em_trainer *t)
{
    return t->val != NULL && t->module->ops->validation_step != NULL && t->num_val_batches > 0;
}

static em_status hooks_validation_start(em_trainer *t)
{
    CALL_HOOKS(t, on_validation_start);
    return EM_OK;
}
static em_status hooks_validation_epoch_start(em_trainer *t)
{
    CALL_HOOKS(t, on_validation_epoch_start);
    return EM_OK;
}
static em_status hooks_validation_epoch_end(em_trainer *t)
{
    CALL_HOOKS(t, on_validation_epoch_end);
    return EM_OK;
}
static em_status hooks_validation_end(em_trainer *t)
{
    CALL_HOOKS(t, on_validation_end);
    return EM_OK;
}

/* Lightning: _EvaluationLoop.run for one val dataloader: eval mode, no grad, hooks around the batches. */
static em_status run_validation(em_trainer *t, int64_t max_batches, emi_stage stage)
{
    const char *prev_hook = t->hook;
    emi_stage prev_stage = t->stage;
    em_batch *prev_batch = t->batch;
    t->stage = stage;
    metrics_reset_stage(t, EMI_STAGE_VAL);
    bool was_training = t->module->layers != NULL && em_nn_is_training(t->module->layers);
    if (t->module->layers != NULL)
        em_nn_train(t->module->layers, false);
    em_no_grad_begin();
    em_status rc = EM_OK;

#define VAL_CHECK(expr)                     \
    do {                                    \
        if ((rc = (expr)) != EM_OK)         \
            goto done;                      \
    } while (0)

    VAL_CHECK(hooks_validation_start(t));
    VAL_CHECK(hooks_validation_epoch_start(t));
    for (int64_t i = 0; i < max_batches; i++) {
        em_scope_begin();
        em_batch batch;
        em_clear_error();
        t->val_batch_idx = i;
        em_status s = loader_fetch(t->val, i, &batch);
        if (s != EM_OK) {
            t->batch = &batch;
            rc = trainer_fail(t, "val_dataloader", s);
            em_scope_end();
            goto done;
        }
        t->batch = &batch;
        metrics_batch_start(t);
        if (t->precision != EM_PRECISION_32_TRUE)
            emi_autocast_begin(t->precision == EM_PRECISION_16_MIXED ? EM_F16 : EM_BF16, em_tensor_device(batch.t[0]));
        t->hook = "validation_step";
        em_clear_error();
        s = t->module->ops->validation_step(t->module, &batch, i);
        t->hook = prev_hook;
        if (t->precision != EM_PRECISION_32_TRUE)
            emi_autocast_end();
        rc = trainer_check(t, "validation_step", s);
        em_scope_end();
        t->batch = NULL;
        if (rc != EM_OK)
            goto done;
        metrics_update_step(t);
    }
    t->val_epoch_end = true;
    VAL_CHECK(hooks_validation_epoch_end(t));
    metrics_epoch_end(t, EMI_STAGE_VAL);
    VAL_CHECK(hooks_validation_end(t));
#undef VAL_CHECK
done:
    em_no_grad_end();
    if (t->module->layers != NULL && was_training)
        em_nn_train(t->module->layers, true);
    t->stage = prev_stage;
    t->batch = prev_batch;
    return rc;
}

/* ---- one training batch: _TrainingEpochLoop.advance + on_advance_end -------------------------------------- */

/* Lightning: _TrainingEpochLoop._num_ready_batches_reached (batch_idx + 1 batches are "ready") */
static bool num_ready_batches_reached(const em_trainer *t)
{
    return t->batch_idx + 1 == t->num_training_batches || t->is_last_batch;
}

/* Lightning: _TrainingEpochLoop._should_check_val_fx */
static bool should_check_val_fx(const em_trainer *t)
{
    if (!validation_enabled(t))
        return false;
    if (t->cfg.check_val_every_n_epoch != EM_NONE && (t->current_epoch + 1) % t->cfg.check_val_every_n_epoch != 0)
        return false;
    if (t->should_stop && can_stop_early(t))
        return true;
    int64_t it = t->cfg.check_val_every_n_epoch == EM_NONE ? t->total_batch_idx : t->batch_idx;
    return (it + 1) % t->val_check_batch == 0;
}

static em_status hooks_train_batch_start(em_trainer *t, em_batch *b, int *response)
{
    const char *prev_hook = t->hook;
    CALL_CB_HOOKS(t, on_train_batch_start, b, t->batch_idx);
    *response = 0;
    if (t->module->ops->on_train_batch_start != NULL) {
        t->hook = "on_train_batch_start";
        em_clear_error();
        *response = t->module->ops->on_train_batch_start(t->module, b, t->batch_idx);
        t->hook = prev_hook;
        if (trainer_check(t, "on_train_batch_start", EM_OK) != EM_OK)
            return t->fail_status;
    }
    return EM_OK;
}

static em_status hooks_train_batch_end(em_trainer *t, const em_tensor *loss, em_batch *b)
{
    CALL_CB_HOOKS(t, on_train_batch_end, loss, b, t->batch_idx);
    CALL_MODULE_HOOK(t, on_train_batch_end, loss, b, t->batch_idx);
    return EM_OK;
}

/* Lightning: LightningModule.on_validation_model_zero_grad (default: zero_grad(set_to_none=True)) */
static em_status validation_model_zero_grad(em_trainer *t)
{
    if (t->module->ops->on_validation_model_zero_grad != NULL) {
        CALL_MODULE_HOOK(t, on_validation_model_zero_grad);
        return EM_OK;
    }
    if (t->module->layers != NULL)
        return em_nn_zero_grad(t->module->layers, true);
    for (size_t i = 0; i < t->setup.n_opts; i++) {
        em_status s = em_optimizer_zero_grad_ex(t->setup.opts[i], true);
        if (s != EM_OK)
            return trainer_fail(t, "on_validation_model_zero_grad", s);
    }
    return EM_OK;
}

/* Runs batch t->batch_idx. *stop_epoch is set when on_train_batch_start returned -1. */
static em_status train_batch(em_trainer *t, bool *stop_epoch)
{
    em_batch batch;
    em_clear_error();
    em_status s = loader_fetch(t->train, t->batch_idx, &batch);
    t->batch = &batch;
    if (s != EM_OK)
        return trainer_fail(t, "train_dataloader", s);
    metrics_batch_start(t);

    int response = 0;
    if ((s = hooks_train_batch_start(t, &batch, &response)) != EM_OK)
        return s;
    if (response == EM_SKIP_REST_OF_EPOCH) {
        *stop_epoch = true;
        return EM_OK;
    }

    em_tensor *out = NULL;
    if (t->module->automatic_optimization)
        s = automatic_run(t, &batch, t->batch_idx, &out);
    else
        s = manual_run(t, &batch, t->batch_idx, &out);
    if (s != EM_OK)
        return s;

    /* non-plateau schedulers; epoch-interval ones only on the epoch's last batch */
    if ((s = update_learning_rates(t, EM_INTERVAL_STEP, false)) != EM_OK)
        return s;
    if (num_ready_batches_reached(t) && (s = update_learning_rates(t, EM_INTERVAL_EPOCH, false)) != EM_OK)
        return s;

    if ((s = hooks_train_batch_end(t, out, &batch)) != EM_OK)
        return s;
    metrics_update_step(t);
    bool stepping = !should_accumulate(t);
    if (stepping && ((t->batches_that_stepped + 1) % t->cfg.log_every_n_steps == 0 || t->should_stop))
        metrics_log_step(t);

    /* on_advance_end: validation if due, plateau step schedulers, the logger's step counter */
    if (should_check_val_fx(t)) {
        if (stepping && (s = validation_model_zero_grad(t)) != EM_OK)
            return s;
        if ((s = run_validation(t, t->num_val_batches, EMI_STAGE_VAL)) != EM_OK)
            return s;
    }
    if ((s = update_learning_rates(t, EM_INTERVAL_STEP, true)) != EM_OK)
        return s;
    if (stepping)
        t->batches_that_stepped++;
    progress_update(t);
    return EM_OK;
}

/* ---- one epoch: _FitLoop.on_advance_start / advance / on_advance_end ------------------------------------- */

static em_status hooks_train_epoch_start(em_trainer *t)
{
    CALL_HOOKS(t, on_train_epoch_start);
    return EM_OK;
}

static em_status hooks_train_epoch_end(em_trainer *t)
{
    CALL_HOOKS(t, on_train_epoch_end);
    return EM_OK;
}

/* Lightning: _TrainingEpochLoop.done, checked before every batch. */
static bool epoch_done(em_trainer *t)
{
    if (limit_reached(t->global_step, t->max_steps))
        return true;
    if (t->batch_idx + 1 >= t->num_training_batches)
        return true;
    if (t->should_stop) {
        if (!can_stop_early(t)) {
            if (!t->min_info_printed) {
                fprintf(stderr, "ember: Trainer was signaled to stop but the required `min_epochs=%lld` or "
                                "`min_steps=%lld` has not been met. Training will continue...\n",
                        (long long)t->min_epochs, (long long)(t->min_steps == EM_NONE ? -1 : t->min_steps));
                t->min_info_printed = true;
            }
            return false;
        }
        return true;
    }
    return false;
}

static em_status train_epoch(em_trainer *t)
{
    em_status s;
    loader_set_epoch(t->train, t->current_epoch);
    metrics_reset_stage(t, EMI_STAGE_TRAIN);
    progress_epoch_start(t);
    if ((s = hooks_train_epoch_start(t)) != EM_OK)
        return s;

    bool reached_end = false;
    t->batch_idx = -1; /* no batch is "ready" yet */
    t->is_last_batch = false;
    while (!epoch_done(t)) {
        t->batch_idx++;
        t->is_last_batch = t->batch_idx + 1 == t->num_training_batches;
        bool stop_epoch = false;
        em_scope_begin();
        s = train_batch(t, &stop_epoch);
        em_scope_end();
        t->batch = NULL;
        if (s != EM_OK)
            return s;
        t->total_batch_idx++;
        if (stop_epoch)
            break;
        reached_end = num_ready_batches_reached(t);
    }

    /* _FitLoop.on_advance_end: epoch-end hooks, epoch metrics, plateau epoch schedulers, epoch log */
    metrics_train_epoch_end_reached(t);
    if ((s = hooks_train_epoch_end(t)) != EM_OK)
        return s;
    metrics_epoch_end(t, EMI_STAGE_TRAIN);
    if (reached_end && (s = update_learning_rates(t, EM_INTERVAL_EPOCH, true)) != EM_OK)
        return s;
    metrics_train_epoch_log(t);
    progress_epoch_end(t);
    t->current_epoch++;
    return EM_OK;
}

/* Lightning: _FitLoop.done, checked before every epoch. */
static bool fit_done(const em_trainer *t)
{
    if (t->num_training_batches == 0)
        return true;
    if (limit_reached(t->global_step, t->max_steps))
        return true;
    if (limit_reached(t->current_epoch, t->max_epochs))
        return true;
    return t->should_stop && can_stop_early(t);
}

/* ---- fit ------------------------------------------------------------------------------------------------- */

static em_status hooks_fit_start(em_trainer *t)
{
    CALL_HOOKS(t, on_fit_start);
    return EM_OK;
}
static em_status hooks_fit_end(em_trainer *t)
{
    CALL_HOOKS(t, on_fit_end);
    return EM_OK;
}
static em_status hooks_train_start(em_trainer *t)
{
    CALL_HOOKS(t, on_train_start);
    return EM_OK;
}
static em_status hooks_train_end(em_trainer *t)
{
    CALL_HOOKS(t, on_train_end);
    return EM_OK;
}

/* Checks made before anything runs (configuration_validator.py, §4.6, §10 #11-#13). */
static em_status verify_module(em_trainer *t, em_module *m, em_loader *train)
{
    if (m == NULL || m->ops == NULL)
        return emi_fail(EM_EINVAL, "em_trainer_fit: the module or its ops table is NULL");
    if (m->ops->version < 1 || m->ops->version > EM_MODULE_OPS_VERSION)
        return emi_fail(EM_EINVAL, "em_trainer_fit: module ops version is %d; set it to EM_MODULE_OPS_VERSION (%d)",
                        m->ops->version, EM_MODULE_OPS_VERSION);
    if (m->ops->training_step == NULL)
        return emi_fail(EM_EINVAL, "em_trainer_fit: No `training_step()` method defined. Lightning `Trainer` "
                                   "expects as minimum a `training_step()`, `train_dataloader()` and "
                                   "`configure_optimizers()` to be defined.");
    if (m->ops->configure_optimizers == NULL)
        return emi_fail(EM_EINVAL, "em_trainer_fit: No `configure_optimizers()` method defined. Lightning "
                                   "`Trainer` expects as minimum a `training_step()`, `train_dataloader()` and "
                                   "`configure_optimizers()` to be defined.");
    if (train == NULL)
        return emi_fail(EM_EINVAL, "em_trainer_fit: a train loader is required");
    if (!m->automatic_optimization) {
        if (!isnan(t->cfg.gradient_clip_val) && t->cfg.gradient_clip_val > 0)
            return emi_fail(EM_EINVAL, "em_trainer_fit: Automatic gradient clipping is not supported for manual "
                                       "optimization. Remove `gradient_clip_val=%g` from the trainer config or switch "
                                       "to automatic optimization.", t->cfg.gradient_clip_val);
        if (t->cfg.accumulate_grad_batches != 1)
            return emi_fail(EM_EINVAL, "em_trainer_fit: Automatic gradient accumulation is not supported for manual "
                                       "optimization. Remove `accumulate_grad_batches=%lld` from the trainer config or "
                                       "switch to automatic optimization.", (long long)t->cfg.accumulate_grad_batches);
    }
    return EM_OK;
}

/* _FitLoop.setup_data: batch counts and the validation interval. */
static em_status setup_data(em_trainer *t)
{
    em_status s;
    int64_t len = em_loader_num_batches(t->train);
    if ((s = parse_num_batches("train", len, t->cfg.limit_train_batches, &t->num_training_batches)) != EM_OK)
        return s;
    t->num_val_batches = 0;
    if (t->val != NULL && t->module->ops->validation_step != NULL) {
        int64_t vlen = em_loader_num_batches(t->val);
        if ((s = parse_num_batches("val", vlen, t->cfg.limit_val_batches, &t->num_val_batches)) != EM_OK)
            return s;
    }
    const em_amount vci = t->cfg.val_check_interval;
    if (!vci.is_fraction) {
        t->val_check_batch = (int64_t)vci.value;
        if (t->val_check_batch > t->num_training_batches && t->cfg.check_val_every_n_epoch != EM_NONE &&
            validation_enabled(t))
            return emi_fail(EM_EINVAL, "`val_check_interval` (%lld) must be less than or equal to the number of the "
                                       "training batches (%lld). If you want to disable validation set "
                                       "`limit_val_batches` to 0.0 instead. If you want to validate based on the "
                                       "total training batches, set `check_val_every_n_epoch=EM_NONE`.",
                            (long long)t->val_check_batch, (long long)t->num_training_batches);
        if (t->val_check_batch < 1)
            t->val_check_batch = 1;
    } else {
        t->val_check_batch = (int64_t)((double)t->num_training_batches * vci.value);
        if (t->val_check_batch < 1)
            t->val_check_batch = 1;
    }
    return EM_OK;
}

static void reset_fit_state(em_trainer *t, em_module *m, em_loader *train, em_loader *val)
{
    const char *prev_hook = t->hook;
    t->error[0] = '\0';
    t->fail_status = EM_OK;
    t->module = m;
    t->train = train;
    t->val = val;
    t->current_epoch = 0;
    t->global_step = 0;
    t->batch_idx = 0;
    t->val_batch_idx = 0;
    t->total_batch_idx = 0;
    t->batches_that_stepped = 0;
    t->is_last_batch = false;
    t->should_stop = false;
    t->sanity_checking = false;
    t->min_info_printed = false;
    t->accumulate = t->cfg.accumulate_grad_batches;
    t->stage = EMI_STAGE_NONE;
    t->hook = prev_hook;
    t->batch = NULL;
    t->in_training_step = false;
}

/* Everything between configure_optimizers and teardown; the caller cleans up. */
static em_status fit_body(em_trainer *t)
{
    const char *prev_hook = t->hook;
    em_module *m = t->module;
    em_status s;

    /* configure_optimizers (strategy.setup), then its validation */
    setup_init(&t->setup, t);
    t->hook = "configure_optimizers";
    em_clear_error();
    s = m->ops->configure_optimizers(m, &t->setup);
    t->hook = prev_hook;
    if (trainer_check(t, "configure_optimizers", s) != EM_OK)
        return t->fail_status;
    em_clear_error();
    if ((s = setup_validate(&t->setup)) != EM_OK)
        return trainer_fail(t, "configure_optimizers", s);
    if ((s = wrappers_create(t)) != EM_OK)
        return trainer_fail(t, "configure_optimizers", s);
    t->wants_batch_output = m->ops->on_train_batch_end != NULL;
    for (size_t i = 0; i < t->n_callbacks; i++)
        t->wants_batch_output |= callback_ops(t->callbacks[i])->on_train_batch_end != NULL;
    if ((s = metrics_open(t)) != EM_OK)
        return trainer_fail(t, "logger", s);
    if ((s = trace_open(t)) != EM_OK)
        return trainer_fail(t, "trace", s);

    if ((s = hooks_fit_start(t)) != EM_OK)
        return s;

    /* _run_stage: module-wide zero_grad (set_to_none=True on torch < 2.0, the 2.x default otherwise) */
    for (size_t i = 0; i < t->setup.n_opts; i++)
        em_optimizer_zero_grad_ex(t->setup.opts[i], true);

    /* _run_sanity_check: numerically inert (the RNG state is restored, metrics are reset) */
    if (validation_enabled(t) && t->cfg.num_sanity_val_steps != 0) {
        int64_t steps = t->cfg.num_sanity_val_steps == -1 ? t->num_val_batches : t->cfg.num_sanity_val_steps;
        if (steps > t->num_val_batches)
            steps = t->num_val_batches;
        emi_rng_state *rng = emi_rng_save();
        t->sanity_checking = true;
        s = run_validation(t, steps, EMI_STAGE_SANITY);
        t->sanity_checking = false;
        emi_rng_restore(rng);
        metrics_reset_all(t);
        if (s != EM_OK)
            return s;
    }

    /* _FitLoop.run: skipped when there is nothing to train; on_fit_end runs all the same (Trainer._run) */
    if (fit_done(t) || (t->num_training_batches == 0))
        return hooks_fit_end(t);
    t->stage = EMI_STAGE_TRAIN;
    if ((s = hooks_train_start(t)) != EM_OK)
        return s;
    progress_start(t);
    while (!fit_done(t)) {
        if ((s = train_epoch(t)) != EM_OK)
            return s;
    }
    progress_stop(t);
    t->stage = EMI_STAGE_NONE;
    if ((s = hooks_train_end(t)) != EM_OK)
        return s;
    return hooks_fit_end(t);
}

em_status em_trainer_fit(em_trainer *t, em_module *m, em_loader *train, em_loader *val)
{
    if (t == NULL)
        return emi_fail(EM_EINVAL, "em_trainer_fit: the trainer is NULL");
    if (t->fitting)
        return emi_fail(EM_ESTATE, "em_trainer_fit: this trainer is already fitting");
    em_clear_error();
    reset_fit_state(t, m, train, val);
    em_status s = verify_module(t, m, train);
    if (s != EM_OK) {
        t->module = NULL;
        return trainer_fail(t, "em_trainer_fit", s);
    }
    resolve_limits(t);
    if ((s = resolve_precision(t)) != EM_OK) {
        t->module = NULL;
        return trainer_fail(t, "em_trainer_fit", s);
    }
    t->fitting = true;
    m->trainer_ = t;
    int depth = em_scope_depth();

    if ((s = setup_data(t)) != EM_OK) {
        s = trainer_fail(t, "em_trainer_fit", s);
    } else {
        if (t->cfg.seed >= 0)
            em_manual_seed((uint64_t)t->cfg.seed);
        t->estimated = estimate_stepping_batches(t);
        s = fit_body(t);
    }

    /* teardown, also after a failure: nothing leaks, the host program goes on */
    while (em_scope_depth() > depth)
        em_scope_end();
    while (em_is_grad_enabled() == false && em_no_grad_end() == EM_OK)
        ;
    progress_stop(t);
    toggle_free(t);
    trace_close(t);
    metrics_close(t);
    wrappers_free(t);
    setup_free(&t->setup);
    m->trainer_ = NULL;
    t->fitting = false;
    t->module = NULL;
    t->train = t->val = NULL;
    t->stage = EMI_STAGE_NONE;
    if (s != EM_OK) {
        /* leave the message in the error slot too, for callers that check em_last_error() */
        em_clear_error();
        emi_fail(s, "%s", t->error);
    }
    return s;
}

/* ---- state ------------------------------------------------------------------------------------------------ */

em_trainer *em_module_trainer(const em_module *m)
{
    return m == NULL ? NULL : m->trainer_;
}

int64_t em_trainer_current_epoch(const em_trainer *t) { return t == NULL ? -1 : t->current_epoch; }
int64_t em_trainer_global_step(const em_trainer *t) { return t == NULL ? -1 : t->global_step; }
int64_t em_trainer_batch_idx(const em_trainer *t) { return t == NULL ? -1 : t->batch_idx; }
bool em_trainer_is_last_batch(const em_trainer *t) { return t != NULL && t->is_last_batch; }
int64_t em_trainer_num_training_batches(const em_trainer *t) { return t == NULL ? -1 : t->num_training_batches; }
int64_t em_trainer_accumulate_grad_batches(const em_trainer *t) { return t == NULL ? -1 : t->accumulate; }
double em_trainer_estimated_stepping_batches(const em_trainer *t) { return t == NULL ? NAN : t->estimated; }
bool em_trainer_should_stop(const em_trainer *t) { return t != NULL && t->should_stop; }
bool em_trainer_sanity_checking(const em_trainer *t) { return t != NULL && t->sanity_checking; }

em_status em_trainer_set_accumulate_grad_batches(em_trainer *t, int64_t k)
{
    if (t == NULL)
        return EM_EINVAL;
    if (k < 1)
        return emi_fail(EM_EINVAL, "em_trainer_set_accumulate_grad_batches: must be >= 1, got %lld", (long long)k);
    t->accumulate = k;
    return EM_OK;
}

void em_trainer_set_should_stop(em_trainer *t, bool stop)
{
    if (t != NULL)
        t->should_stop = stop;
}

bool em_trainer_callback_metric(const em_trainer *t, const char *name, double *value)
{
    if (t == NULL || name == NULL)
        return false;
    metrics_refresh((em_trainer *)t); /* Lightning's callback_metrics property reads the live results */
    double v;
    if (!kvlist_get(&t->metrics.callback, name, &v))
        return false;
    if (value != NULL)
        *value = v;
    return true;
}

size_t em_trainer_num_callback_metrics(const em_trainer *t)
{
    if (t != NULL)
        metrics_refresh((em_trainer *)t);
    return t == NULL ? 0 : t->metrics.callback.n;
}

const char *em_trainer_callback_metric_at(const em_trainer *t, size_t i, double *value)
{
    if (t == NULL || i >= t->metrics.callback.n)
        return NULL;
    if (value != NULL)
        *value = t->metrics.callback.items[i].value;
    return t->metrics.callback.items[i].name;
}

/* ---- the trace: one JSON line per training_step call and optimizer step ---------------------------------- */

em_status trace_open(em_trainer *t)
{
    if (t->trace_path == NULL)
        return EM_OK;
    t->trace = fopen(t->trace_path, "w");
    if (t->trace == NULL)
        return emi_fail(EM_EIO, "cannot open trace_path \"%s\" for writing", t->trace_path);
    return EM_OK;
}

void trace_close(em_trainer *t)
{
    if (t->trace != NULL)
        fclose(t->trace);
    t->trace = NULL;
}

static void trace_lrs(em_trainer *t)
{
    fputs(",\"lr\":[", t->trace);
    for (size_t i = 0; i < t->setup.n_opts; i++) {
        fputs(i ? ",[" : "[", t->trace);
        size_t g = em_optimizer_num_groups(t->setup.opts[i]);
        for (size_t j = 0; j < g; j++)
            fprintf(t->trace, "%s%.17g", j ? "," : "", em_optimizer_lr(t->setup.opts[i], j));
        fputc(']', t->trace);
    }
    fputc(']', t->trace);
}

static void trace_number(FILE *f, const char *key, double v)
{
    if (isfinite(v))
        fprintf(f, ",\"%s\":%.9g", key, v);
    else
        fprintf(f, ",\"%s\":null", key);
}

void trace_training_step(em_trainer *t, double loss)
{
    if (t->trace == NULL)
        return;
    fprintf(t->trace, "{\"event\":\"training_step\",\"epoch\":%lld,\"batch_idx\":%lld,\"global_step\":%lld",
            (long long)t->current_epoch, (long long)t->batch_idx, (long long)t->global_step);
    trace_number(t->trace, "loss", loss);
    trace_lrs(t);
    fputs("}\n", t->trace);
}

void trace_optimizer_step(em_trainer *t, int opt_index, double norm_before, double norm_after)
{
    if (t->trace == NULL)
        return;
    fprintf(t->trace, "{\"event\":\"optimizer_step\",\"optimizer\":%d,\"epoch\":%lld,\"batch_idx\":%lld,"
                      "\"global_step_before\":%lld,\"step_count\":%lld",
            opt_index, (long long)t->current_epoch, (long long)t->batch_idx, (long long)t->global_step,
            (long long)em_optimizer_step_count(t->setup.opts[opt_index]));
    trace_number(t->trace, "grad_norm_before_clip", norm_before);
    trace_number(t->trace, "grad_norm", norm_after);
    trace_lrs(t);
    fputs("}\n", t->trace);
}
