/* epoch_loop.c: one training epoch, batch by batch, and when schedulers step and validation runs.
 *
 * Lightning: loops/training_epoch_loop.py (_TrainingEpochLoop: done, advance, on_advance_end,
 *            _accumulated_batches_reached, _num_ready_batches_reached, _should_accumulate,
 *            _should_check_val_fx, update_lr_schedulers, _update_learning_rates),
 *            loops/fit_loop.py (_FitLoop._can_stop_early), core/module.py (lr_scheduler_step and
 *            on_validation_model_zero_grad defaults).
 * Order of operations for one batch: docs/LIGHTNING_RULES.md §1.1, §1.3, §1.7, §2.2, §3.4-3.6, §9.4-9.5.
 */
#include <math.h>
#include <stdio.h>

#include "hooks.h"
#include "loader.h"
#include "loops.h"
#include "metrics.h"
#include "optimization.h"
#include "strategy.h"

/* ---- limits ------------------------------------------------------------------------------------------- */

bool emi_limit_reached(int64_t current, int64_t max)
{
    return max != -1 && current >= max;
}

bool emi_can_stop_early(const em_trainer *t)
{
    bool met_epochs = t->fit.min_epochs > 0 ? t->current_epoch >= t->fit.min_epochs : true;
    bool met_steps = t->fit.min_steps != EM_NONE && t->fit.min_steps > 0 ? t->global_step >= t->fit.min_steps : true;
    return met_epochs && met_steps;
}

/* ---- the accumulation window: is this a stepping batch? --------------------------------------------------- */

/* Lightning: _num_ready_batches_reached (batch_idx + 1 batches are "ready") */
static bool num_ready_batches_reached(const em_trainer *t)
{
    return t->batch_idx + 1 == t->fit.num_training_batches || t->is_last_batch;
}

/* Lightning: _should_accumulate: not the end of a window, not the epoch's final batch (single device and
 * DDP step on the final batch). Decided once per batch, before training_step. */
static bool should_accumulate(const em_trainer *t)
{
    bool accumulated_batches_reached = (t->batch_idx + 1) % t->accumulate == 0;
    return !accumulated_batches_reached && !num_ready_batches_reached(t);
}

/* ---- LR schedulers: _update_learning_rates ----------------------------------------------------------------- */

/* Lightning: LightningModule.lr_scheduler_step (default: step(), or step(metric) for plateau) */
static em_status lr_scheduler_step(em_trainer *t, em_scheduler *s, bool has_metric, double metric)
{
    const em_module_ops *ops = t->module->ops;
    const char *prev = emi_hook_enter(t, "lr_scheduler_step");
    em_status rc;
    if (ops->lr_scheduler_step != NULL)
        rc = ops->lr_scheduler_step(t->module, s, has_metric, metric);
    else
        rc = has_metric ? em_scheduler_step_metric(s, metric) : em_scheduler_step(s);
    return emi_hook_leave(t, prev, "lr_scheduler_step", rc);
}

static void available_metrics(const em_trainer *t, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < t->metrics.callback.n && off + 4 < len; i++) {
        int w = snprintf(buf + off, len - off, "%s'%s'", i ? ", " : "", t->metrics.callback.items[i].name);
        if (w < 0)
            break;
        off += (size_t)w;
    }
}

/* A plateau scheduler's monitored value. *skip when it is missing and the config is not strict (warned). */
static em_status plateau_metric(em_trainer *t, const emi_sched_entry *e, double *metric, bool *skip)
{
    *skip = false;
    if (emi_kvlist_get(&t->metrics.callback, e->cfg.monitor, metric))
        return EM_OK;
    char avail[512];
    available_metrics(t, avail, sizeof avail);
    if (e->cfg.not_strict) {
        emi_warn("ReduceLROnPlateau conditioned on metric %s which is not available but strict is set to `False`. "
                 "Skipping learning rate update.", e->cfg.monitor);
        *skip = true;
        return EM_OK;
    }
    em_clear_error();
    emi_fail(EM_EINVAL, "ReduceLROnPlateau conditioned on metric %s which is not available. Available metrics are: "
                        "[%s]. Condition can be set using `monitor` in the scheduler config", e->cfg.monitor, avail);
    return emi_trainer_fail(t, "lr_scheduler_step", EM_EINVAL);
}

em_status emi_update_learning_rates(em_trainer *t, em_interval interval, bool plateau, bool stepping)
{
    if (interval == EM_INTERVAL_STEP && !stepping)
        return EM_OK;
    if (t->setup.n_scheds == 0 || t->module->manual_optimization)
        return EM_OK;
    for (size_t i = 0; i < t->setup.n_scheds; i++) {
        emi_sched_entry *e = &t->setup.scheds[i];
        if (plateau != e->plateau)
            continue;
        int64_t current = (interval == EM_INTERVAL_STEP ? t->batch_idx : t->current_epoch) + 1;
        if (e->cfg.interval != interval || current % e->cfg.frequency != 0)
            continue;
        double metric = NAN;
        bool skip = false;
        em_status s;
        if (e->plateau && (s = plateau_metric(t, e, &metric, &skip)) != EM_OK)
            return s;
        if (skip)
            continue;
        if ((s = lr_scheduler_step(t, e->sched, e->plateau, metric)) != EM_OK)
            return s;
    }
    return EM_OK;
}

/* ---- validation during the epoch ------------------------------------------------------------------------------ */

/* Lightning: _should_check_val_fx */
static bool should_check_val_fx(const em_trainer *t)
{
    if (!emi_validation_enabled(t))
        return false;
    int64_t every = t->fit.check_val_every_n_epoch;
    if (every != EM_NONE && (t->current_epoch + 1) % every != 0)
        return false;
    if (t->should_stop && emi_can_stop_early(t))
        return true;
    int64_t it = every == EM_NONE ? t->total_batch_idx : t->batch_idx;
    return (it + 1) % t->fit.val_check_batch == 0;
}

/* Lightning: LightningModule.on_validation_model_zero_grad (default: zero_grad(set_to_none=True)) */
static em_status validation_model_zero_grad(em_trainer *t)
{
    const em_module_ops *ops = t->module->ops;
    const char *prev = emi_hook_enter(t, "on_validation_model_zero_grad");
    em_status s = EM_OK;
    if (ops->on_validation_model_zero_grad != NULL)
        s = ops->on_validation_model_zero_grad(t->module);
    else if (t->module->layers != NULL)
        s = em_nn_zero_grad(t->module->layers, true);
    else
        for (size_t i = 0; i < t->setup.n_opts && s == EM_OK; i++)
            s = em_optimizer_zero_grad_ex(t->setup.opts[i], true);
    return emi_hook_leave(t, prev, "on_validation_model_zero_grad", s);
}

/* ---- one batch: advance + on_advance_end --------------------------------------------------------------------- */

/* Lightning: _TrainingEpochLoop.on_advance_end: validation if due, plateau step schedulers, the logger's
 * step counter. */
static em_status on_advance_end(em_trainer *t, bool stepping, bool after_validation)
{
    em_status s;
    if (!after_validation && should_check_val_fx(t)) {
        if (stepping && (s = validation_model_zero_grad(t)) != EM_OK)
            return s;
        if ((s = emi_validation_run(t, t->fit.num_val_batches, EMI_STAGE_VAL)) != EM_OK)
            return s;
    }
    if ((s = emi_update_learning_rates(t, EM_INTERVAL_STEP, true, stepping)) != EM_OK)
        return s;
    if (stepping)
        t->batches_that_stepped++;
    return EM_OK;
}

/* What follows a batch's on_train_batch_end hooks (Lightning: logger_connector.on_batch_end, then
 * on_advance_end); `after_validation`: from after that batch's validation (a fit resumed from a
 * checkpoint saved in on_validation_end). */
static em_status batch_tail(em_trainer *t, bool stepping, bool after_validation)
{
    em_status s;
    if (!after_validation) {
        emi_metrics_refresh(t);
        if (stepping && ((t->batches_that_stepped + 1) % t->fit.log_every_n_steps == 0 || t->should_stop) &&
            (s = emi_metrics_log_step(t)) != EM_OK)
            return s;
    }
    return on_advance_end(t, stepping, after_validation);
}

/* Lightning: _TrainingEpochLoop.advance for batch t->batch_idx. *stop_epoch is set when on_train_batch_start
 * returned -1. */
static em_status train_batch(em_trainer *t, bool *stop_epoch)
{
    em_batch batch;
    em_clear_error();
    em_status s = emi_loader_fetch(t->train, t->batch_idx, &batch);
    if (s == EM_OK)
        s = emi_strategy_batch_to_device(t, &batch);
    t->batch = &batch;
    if (s != EM_OK)
        return emi_trainer_fail(t, "train_dataloader", s);

    int response = 0;
    s = emi_hooks_call(t, EMI_ON_TRAIN_BATCH_START,
                       &(emi_hook_args){.batch = &batch, .batch_idx = t->batch_idx, .response = &response});
    if (s != EM_OK)
        return s;
    if (response == EM_SKIP_REST_OF_EPOCH) {
        *stop_epoch = true;
        return EM_OK;
    }

    bool stepping = !should_accumulate(t);
    em_tensor *out = NULL;
    /* automatic optimization: DDP syncs only when the optimizer steps (_block_parallel_sync_behavior) */
    emi_strategy_block_sync(t, !t->module->manual_optimization && !stepping);
    s = !t->module->manual_optimization ? emi_automatic_run(t, &batch, stepping, &out)
                                          : emi_manual_run(t, &batch, &out);
    emi_strategy_block_sync(t, false);
    if (s != EM_OK)
        return s;

    /* non-plateau schedulers; epoch-interval ones only on the epoch's last batch */
    if ((s = emi_update_learning_rates(t, EM_INTERVAL_STEP, false, stepping)) != EM_OK)
        return s;
    if (num_ready_batches_reached(t) && (s = emi_update_learning_rates(t, EM_INTERVAL_EPOCH, false, stepping)) != EM_OK)
        return s;

    s = emi_hooks_call(t, EMI_ON_TRAIN_BATCH_END, &(emi_hook_args){.loss = out, .batch = &batch, .batch_idx = t->batch_idx});
    if (s != EM_OK)
        return s;
    return batch_tail(t, stepping, false);
}

/* Lightning: _TrainingEpochLoop.done, checked before every batch. */
static bool epoch_done(em_trainer *t)
{
    if (emi_limit_reached(t->global_step, t->fit.max_steps))
        return true;
    if (t->batch_idx + 1 >= t->fit.num_training_batches)
        return true;
    if (!t->should_stop)
        return false;
    if (emi_can_stop_early(t))
        return true;
    if (!t->min_info_printed) {
        char min_steps[32] = "None"; /* Python's repr of None */
        if (t->fit.min_steps != EM_NONE)
            snprintf(min_steps, sizeof min_steps, "%lld", (long long)t->fit.min_steps);
        emi_info("Trainer was signaled to stop but the required `min_epochs=%lld` or `min_steps=%s` has not been "
                 "met. Training will continue...", (long long)t->fit.min_epochs, min_steps);
        t->min_info_printed = true;
    }
    return false;
}

em_status emi_epoch_loop_run(em_trainer *t, bool *reached_end)
{
    *reached_end = false;
    emi_phase phase = t->resume_phase;
    if (phase == EMI_PHASE_BATCH_END || phase == EMI_PHASE_VAL_END) {
        /* resumed (em_trainer_fit_from) inside batch t->batch_idx: its remaining steps, then the next batches */
        t->resume_phase = EMI_PHASE_NONE;
        emi_user_scope scope = emi_user_scope_begin();
        em_status s = batch_tail(t, !should_accumulate(t), phase == EMI_PHASE_VAL_END);
        emi_user_scope_end(scope);
        if (s != EM_OK)
            return s;
        t->total_batch_idx++;
        *reached_end = num_ready_batches_reached(t);
    } else {
        t->batch_idx = -1; /* no batch is "ready" yet */
        t->is_last_batch = false;
    }
    while (!epoch_done(t)) {
        t->batch_idx++;
        t->is_last_batch = t->batch_idx + 1 == t->fit.num_training_batches;
        bool stop_epoch = false;
        emi_user_scope scope = emi_user_scope_begin();
        em_status s = train_batch(t, &stop_epoch);
        emi_user_scope_end(scope);
        t->batch = NULL;
        if (s != EM_OK)
            return s;
        t->total_batch_idx++;
        if (stop_epoch)
            break;
        *reached_end = num_ready_batches_reached(t);
    }
    return EM_OK;
}
