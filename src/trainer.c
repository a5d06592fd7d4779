/* trainer.c: the Trainer - construction, fit, and the fit loop (epochs), top to bottom.
 *
 * Lightning: trainer/trainer.py (Trainer.__init__, fit, _run, _run_stage, _run_sanity_check, _teardown)
 *            loops/fit_loop.py (_FitLoop: done, run, on_advance_start, advance, on_advance_end)
 *            trainer/configuration_validator.py (what fit verifies before anything runs).
 * One fit: verify the module -> resolve the arguments (config.c, precision.c) -> configure_optimizers
 * (setup.c) -> on_fit_start -> the sanity check (validation.c) -> on_train_start -> epochs (each: the
 * epoch loop, epoch_loop.c) -> on_train_end -> on_fit_end -> teardown. docs/ARCHITECTURE.md draws it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "builtin.h"
#include "config.h"
#include "distributed.h"
#include "hooks.h"
#include "loader.h"
#include "loops.h"
#include "metrics.h"
#include "model_checkpoint.h" /* the "last" seam */
#include "optimization.h"
#include "optimizer.h"
#include "precision.h"
#include "resume.h"
#include "setup.h"
#include "strategy.h"
#include "trace.h"

/* ---- construction ------------------------------------------------------------------------------------- */

em_trainer *em_trainer_new(const em_trainer_config *cfg)
{
    if (cfg == NULL) {
        emi_fail(EM_EINVAL, "em_trainer_new: cfg is NULL: start from EM_TRAINER_CONFIG_INIT");
        return NULL;
    }
    em_trainer_config c;
    if (emi_config_read(cfg, &c) != EM_OK || emi_config_check(&c) != EM_OK)
        return NULL;
    cfg = &c;
    emi_check_blas();
    em_trainer *t = calloc(1, sizeof *t);
    if (t == NULL) {
        emi_fail(EM_ENOMEM, "em_trainer_new: out of memory");
        return NULL;
    }
    t->magic = EMI_HANDLE_TRAINER;
    t->cfg = c;
    t->root_dir = emi_strdup(cfg->default_root_dir != NULL ? cfg->default_root_dir : ".");
    t->trace_path = emi_strdup(cfg->trace_path);
    t->log_dir = emi_strdup(cfg->log_dir);
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
    emi_dist_env_read(t);
    return t;
}

/* Append to the callback list (the user's, or during fit a built-in one after them). */
static em_status callbacks_push(em_trainer *t, em_callback *cb)
{
    if (t->n_callbacks == t->cap_callbacks) {
        size_t cap = t->cap_callbacks ? 2 * t->cap_callbacks : 4;
        em_callback **p = realloc(t->callbacks, cap * sizeof *p);
        if (p == NULL)
            return emi_fail(EM_ENOMEM, "em_trainer_add_callback: out of memory");
        t->callbacks = p;
        t->cap_callbacks = cap;
    }
    t->callbacks[t->n_callbacks++] = cb;
    return EM_OK;
}

em_status em_trainer_add_callback(em_trainer *t, em_callback *cb)
{
    em_status s;
    if (t == NULL || cb == NULL)
        s = emi_fail(EM_EINVAL, "em_trainer_add_callback: NULL argument");
    else if (!emi_trainer_ok(t, "em_trainer_add_callback"))
        return EM_EMISUSE; /* `cb` stays the caller's: nothing is known of this pointer */
    else if (!emi_handle_live(cb, EMI_HANDLE_CALLBACK))
        return emi_handle_bad("em_trainer_add_callback", 2, cb, "callback");
    else if ((s = emi_callback_adopt(cb, t)) != EM_OK)
        return s; /* it belongs to a trainer already: left to it */
    else if (t->fitting)
        s = emi_fail(EM_ESTATE, "em_trainer_add_callback: cannot add a callback during fit");
    else if ((s = callbacks_push(t, cb)) == EM_OK)
        t->n_user_callbacks = t->n_callbacks;
    if (s != EM_OK)
        emi_callback_destroy(cb);
    return s;
}

/* Free the built-in callbacks of a fit (after the user's in the list). */
static void builtin_callbacks_remove(em_trainer *t)
{
    while (t->n_callbacks > t->n_user_callbacks)
        emi_callback_destroy(t->callbacks[--t->n_callbacks]);
}

/* The optimizers, schedulers and LightningOptimizers of the last fit: kept until the next fit or
 * em_trainer_free, so a pointer the user kept from configure_optimizers stays valid (and refuses
 * em_optimizer_free / em_scheduler_free) after fit returns. */
static void release_fit_objects(em_trainer *t)
{
    emi_wrappers_free(t);
    emi_setup_free(&t->setup);
}

void em_trainer_free(em_trainer *t)
{
    if (!emi_handle_free_ok("em_trainer_free", t, EMI_HANDLE_TRAINER, "trainer"))
        return;
    if (t->fitting) { /* from inside a hook of its own fit */
        emi_fail(EM_EMISUSE, "em_trainer_free: the trainer is fitting (called from one of its hooks); free it "
                             "after em_trainer_fit returns");
        return;
    }
    release_fit_objects(t);
    em_grad_scaler_free(t->own_scaler);
    for (size_t i = 0; i < t->n_callbacks; i++)
        emi_callback_destroy(t->callbacks[i]);
    free(t->callbacks);
    free(t->root_dir);
    free(t->trace_path);
    free(t->log_dir);
    free(t->ckpt_path);
    emi_kvlist_free(&t->metrics.callback);
    emi_kvlist_free(&t->metrics.progbar);
    emi_handle_retire(t);
}

const char *em_trainer_error(const em_trainer *t)
{
    return !emi_trainer_ok(t, "em_trainer_error") ? "" : t->error;
}

/* ---- one epoch: _FitLoop.on_advance_start / advance / on_advance_end ------------------------------------- */

/* A resumed fit (em_trainer_fit_from) enters it where the checkpoint was saved (t->resume_phase): inside
 * the epoch's batches (the epoch loop continues that batch), or after on_train_epoch_end. */
static em_status fit_loop_advance(em_trainer *t)
{
    em_status s;
    emi_phase phase = t->resume_phase;
    emi_loader_set_epoch(t->train, t->current_epoch);
    if (phase == EMI_PHASE_NONE || phase == EMI_PHASE_EPOCH_START) {
        t->resume_phase = EMI_PHASE_NONE;
        emi_metrics_reset_stage(t, EMI_STAGE_TRAIN);
        if ((s = emi_hooks_call(t, EMI_ON_TRAIN_EPOCH_START, NULL)) != EM_OK)
            return s;
    }
    if (phase != EMI_PHASE_EPOCH_END) {
        bool reached_end = false;
        if ((s = emi_epoch_loop_run(t, &reached_end)) != EM_OK)
            return s;
        t->epoch_reached_end = reached_end;
        /* on_advance_end: epoch-end hooks, epoch metrics, plateau epoch schedulers, epoch log */
        if ((s = emi_metrics_train_epoch_end_reached(t)) != EM_OK)
            return s;
        if ((s = emi_hooks_call(t, EMI_ON_TRAIN_EPOCH_END, NULL)) != EM_OK)
            return s;
    }
    t->resume_phase = EMI_PHASE_NONE;
    emi_metrics_epoch_end(t, EMI_STAGE_TRAIN);
    if (t->epoch_reached_end && (s = emi_update_learning_rates(t, EM_INTERVAL_EPOCH, true, true)) != EM_OK)
        return s;
    if ((s = emi_metrics_train_epoch_log(t)) != EM_OK)
        return s;
    t->current_epoch++;
    return EM_OK;
}

/* Lightning: _FitLoop.done, checked before every epoch. A fit resumed inside an epoch finishes it first. */
static bool fit_done(const em_trainer *t)
{
    if (t->resume_phase > EMI_PHASE_EPOCH_START)
        return false;
    if (t->fit.num_training_batches == 0)
        return true;
    if (emi_limit_reached(t->global_step, t->fit.max_steps))
        return true;
    if (emi_limit_reached(t->current_epoch, t->fit.max_epochs))
        return true;
    return t->should_stop && emi_can_stop_early(t);
}

/* ---- fit --------------------------------------------------------------------------------------------------- */

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
    if (!m->manual_optimization)
        return EM_OK;
    if (!isnan(t->cfg.gradient_clip_val) && t->cfg.gradient_clip_val > 0)
        return emi_fail(EM_EINVAL, "em_trainer_fit: Automatic gradient clipping is not supported for manual "
                                   "optimization. Remove `gradient_clip_val=%g` from the trainer config or switch "
                                   "to automatic optimization.", t->cfg.gradient_clip_val);
    if (t->cfg.accumulate_grad_batches != 1)
        return emi_fail(EM_EINVAL, "em_trainer_fit: Automatic gradient accumulation is not supported for manual "
                                   "optimization. Remove `accumulate_grad_batches=%lld` from the trainer config or "
                                   "switch to automatic optimization.", (long long)t->cfg.accumulate_grad_batches);
    return EM_OK;
}

static void reset_fit_state(em_trainer *t, em_module *m, em_loader *train, em_loader *val)
{
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
    t->batch = NULL;
    t->in_training_step = false;
    t->env.distributed = false; /* resolved again by fit_prepare */
    t->epoch_reached_end = false;
    t->resume_phase = EMI_PHASE_NONE;
    t->last_module = NULL;
}

/* configure_optimizers (Lightning: strategy.setup -> _init_optimizers_and_lr_schedulers), its checks,
 * the LightningOptimizers; then the loggers, the trace and the built-in callbacks. */
static em_status setup_fit(em_trainer *t)
{
    em_module *m = t->module;
    em_status s;
    emi_setup_init(&t->setup, t);
    if ((s = emi_strategy_model_to_device(t)) != EM_OK)
        return emi_trainer_fail(t, "model_to_device", s);
    emi_user_scope scope = emi_user_scope_begin();
    const char *prev = emi_hook_enter(t, "configure_optimizers");
    s = m->ops->configure_optimizers(m, &t->setup);
    s = emi_hook_leave(t, prev, "configure_optimizers", s);
    emi_user_scope_end(scope);
    if (s != EM_OK)
        return t->fail_status;
    em_clear_error();
    if ((s = emi_setup_finish(&t->setup)) != EM_OK || (s = emi_wrappers_create(t)) != EM_OK ||
        (s = emi_precision_check_optimizers(t)) != EM_OK)
        return emi_trainer_fail(t, "configure_optimizers", s);
    t->wants_batch_output = m->ops->on_train_batch_end != NULL;
    for (size_t i = 0; i < t->n_callbacks; i++)
        t->wants_batch_output |= emi_callback_reads_batch_output(t->callbacks[i]);
    if ((s = emi_metrics_open(t)) != EM_OK)
        return emi_trainer_fail(t, "logger", s);
    if ((s = emi_trace_open(t)) != EM_OK)
        return emi_trainer_fail(t, "trace", s);
    if (t->cfg.enable_progress_bar && t->env.rank == 0) { /* rank 0 only, as Lightning's */
        em_callback *bar = emi_progress_bar_new();
        if (bar == NULL || (s = callbacks_push(t, bar)) != EM_OK) {
            emi_callback_destroy(bar);
            return emi_trainer_fail(t, "progress bar", em_last_status());
        }
    }
    return EM_OK;
}

/* Lightning: _run_sanity_check: numerically inert (the RNG state is restored, metrics are reset). */
static em_status sanity_check(em_trainer *t)
{
    if (!emi_validation_enabled(t) || t->fit.num_sanity_val_steps == 0)
        return EM_OK;
    int64_t steps = t->fit.num_sanity_val_steps == -1 ? t->fit.num_val_batches : t->fit.num_sanity_val_steps;
    if (steps > t->fit.num_val_batches)
        steps = t->fit.num_val_batches;
    emi_rng_state *rng = emi_rng_save();
    t->sanity_checking = true;
    em_status s = emi_validation_run(t, steps, EMI_STAGE_SANITY);
    t->sanity_checking = false;
    emi_rng_restore(rng);
    emi_metrics_reset_all(t);
    return s;
}

/* Lightning: _FitLoop.run between on_train_start and on_train_end. */
static em_status fit_loop_run(em_trainer *t)
{
    em_status s;
    t->stage = EMI_STAGE_TRAIN;
    if ((s = emi_hooks_call(t, EMI_ON_TRAIN_START, NULL)) != EM_OK || (s = emi_resume_enter_loop(t)) != EM_OK)
        return s;
    while (!fit_done(t))
        if ((s = fit_loop_advance(t)) != EM_OK)
            return s;
    t->stage = EMI_STAGE_NONE;
    return emi_hooks_call(t, EMI_ON_TRAIN_END, NULL);
}

/* Manual optimization where no optimizer ever stepped: a module left zero-initialised by mistake is
 * automatic, so this is the opposite slip, or a training_step that forgets its step; say so. */
static void warn_if_nothing_stepped(const em_trainer *t)
{
    if (!t->module->manual_optimization || t->total_batch_idx == 0 || t->setup.n_opts == 0)
        return;
    for (size_t i = 0; i < t->setup.n_opts; i++)
        if (em_optimizer_step_count(t->setup.opts[i]) > 0)
            return;
    emi_warn("manual optimization (manual_optimization = true) ran %lld training batches and no optimizer stepped: "
             "the parameters did not change. Step the optimizers of em_optimizers() in training_step, or leave "
             "manual_optimization false for automatic optimization.", (long long)t->total_batch_idx);
}

/* Everything between configure_optimizers and teardown; the caller cleans up. */
static em_status fit_body(em_trainer *t)
{
    em_status s;
    if ((s = setup_fit(t)) != EM_OK || (s = emi_resume_apply(t)) != EM_OK || (s = emi_strategy_setup(t)) != EM_OK ||
        (s = emi_hooks_call(t, EMI_ON_FIT_START, NULL)) != EM_OK)
        return s;
    /* _run_stage: module-wide zero_grad (set_to_none=True on torch < 2.0, the 2.x default otherwise) */
    for (size_t i = 0; i < t->setup.n_opts; i++)
        em_optimizer_zero_grad_ex(t->setup.opts[i], true);
    /* a resumed fit skips it, as Lightning's (_run_sanity_check: not while the val loop is restarting) */
    if (t->resume == NULL && (s = sanity_check(t)) != EM_OK)
        return s;
    /* skipped when there is nothing to train; on_fit_end runs all the same (Trainer._run) */
    if (!fit_done(t) && (s = fit_loop_run(t)) != EM_OK)
        return s;
    warn_if_nothing_stepped(t);
    return emi_hooks_call(t, EMI_ON_FIT_END, NULL);
}

/* Lightning: Trainer._teardown, also after a failure: nothing leaks, the host program goes on. Returns
 * the failure to close what the fit wrote (the trace), which counts when the fit itself succeeded. */
static em_status teardown(em_trainer *t, int scope_depth, int no_grad_depth)
{
    while (em_scope_depth() > scope_depth && em_scope_end() == EM_OK)
        ;
    while (emi_no_grad_depth() > no_grad_depth && em_no_grad_end() == EM_OK)
        ; /* regions a hook left open; the caller's own stay as they were */
    builtin_callbacks_remove(t);
    emi_toggle_model_teardown(t);
    emi_toggle_free(t);
    emi_strategy_teardown(t);
    if (t->env.distributed) {
        emi_loader_set_distributed(t->train, 0, 1, false, false, 0);
        if (t->val != NULL)
            emi_loader_set_distributed(t->val, 0, 1, false, false, 0);
    }
    em_status s = emi_trace_close(t);
    emi_metrics_close(t);
    t->module->trainer_ = NULL;
    t->fitting = false;
    t->module = NULL;
    t->train = t->val = NULL;
    t->stage = EMI_STAGE_NONE;
    return s;
}

/* Before anything runs: the module, the arguments (limits, precision), the data. */
static em_status fit_prepare(em_trainer *t, em_module *m, em_loader *train)
{
    em_status s = verify_module(t, m, train);
    if (s != EM_OK)
        return s;
    emi_config_resolve(t);
    if ((s = emi_accelerator_resolve(t)) != EM_OK || (s = emi_precision_resolve(t)) != EM_OK ||
        (s = emi_dist_setup(t)) != EM_OK)
        return s;
    if (t->env.distributed) { /* Lightning's _requires_distributed_sampler / the loaders' rank and world size */
        /* the seed: seed_everything's (PL_GLOBAL_SEED), else 0 */
        uint64_t seed = t->cfg.seed >= 0 ? (uint64_t)t->cfg.seed : 0;
        emi_loader_set_distributed(train, t->env.rank, t->env.world, t->cfg.use_distributed_sampler, true, seed);
        if (t->val != NULL)
            emi_loader_set_distributed(t->val, t->env.rank, t->env.world, t->cfg.use_distributed_sampler, false, seed);
    }
    return EM_OK;
}

/* The entry checks of em_trainer_fit and em_trainer_fit_from (`fn`). */
static em_status fit_entry_check(em_trainer *t, em_loader *train, em_loader *val, const char *fn)
{
    if (t == NULL)
        return emi_fail(EM_EINVAL, "%s: the trainer is NULL", fn);
    if (!emi_trainer_ok(t, fn))
        return EM_EMISUSE;
    if (t->fitting)
        return emi_fail(EM_ESTATE, "%s: this trainer is already fitting", fn);
    em_clear_error();
    if (train != NULL && !emi_handle_live(train, EMI_HANDLE_LOADER))
        return emi_handle_bad(fn, 3, train, "loader");
    if (val != NULL && !emi_handle_live(val, EMI_HANDLE_LOADER))
        return emi_handle_bad(fn, 4, val, "loader");
    return EM_OK;
}

static em_status fit(em_trainer *t, em_module *m, em_loader *train, em_loader *val);

em_status em_trainer_fit(em_trainer *t, em_module *m, em_loader *train, em_loader *val)
{
    em_status s = fit_entry_check(t, train, val, "em_trainer_fit");
    if (s == EM_OK) {
        free(t->ckpt_path); /* a fresh fit resumes from nothing */
        t->ckpt_path = NULL;
    }
    return s != EM_OK ? s : fit(t, m, train, val);
}

/* The seam for em_trainer_fit_from(t, ..., "last"): Lightning's _parse_ckpt_path("last"), the newest last
 * checkpoint of the ModelCheckpoint callbacks (model_checkpoint.c), copied into out[0..cap-1]; out = ""
 * when they have none yet (Lightning then warns and fits from the start). */
static em_status resolve_last_checkpoint(em_trainer *t, char *out, size_t cap)
{
    int found = emi_model_checkpoint_find_last(t, t->callbacks, t->n_user_callbacks, out, cap);
    if (found < 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", em_last_error());
        em_clear_error();
        return emi_fail(EM_EINVAL, "em_trainer_fit_from: %s", msg);
    }
    if (found == 0)
        emi_warn(".fit(ckpt_path=\"last\") is set, but there is no last checkpoint available. No checkpoint will "
                 "be loaded. HINT: Set `ModelCheckpoint(..., save_last=True)`.");
    return EM_OK;
}

em_status em_trainer_fit_from(em_trainer *t, em_module *m, em_loader *train, em_loader *val, const char *ckpt_path)
{
    if (ckpt_path == NULL)
        return em_trainer_fit(t, m, train, val);
    em_status s = fit_entry_check(t, train, val, "em_trainer_fit_from");
    if (s != EM_OK)
        return s;
    free(t->ckpt_path);
    t->ckpt_path = NULL;
    char last[4096];
    if (strcmp(ckpt_path, "last") == 0 && (s = resolve_last_checkpoint(t, last, sizeof last)) == EM_OK) {
        if (last[0] == '\0') /* no last checkpoint yet: a fresh fit, as Lightning's */
            return fit(t, m, train, val);
        ckpt_path = last;
    }
    if (s == EM_OK && (m == NULL || m->ops == NULL))
        s = emi_fail(EM_EINVAL, "em_trainer_fit_from: the module or its ops table is NULL");
    if (s == EM_OK)
        s = emi_resume_open(t, m, ckpt_path);
    if (s == EM_OK && (t->ckpt_path = emi_strdup(ckpt_path)) == NULL)
        s = emi_fail(EM_ENOMEM, "em_trainer_fit_from: out of memory");
    if (s != EM_OK) { /* before the fit: the message is the fit's too */
        snprintf(t->error, sizeof t->error, "%s", em_last_error());
        return s;
    }
    s = fit(t, m, train, val);
    emi_resume_close(t);
    return s;
}

static em_status fit(em_trainer *t, em_module *m, em_loader *train, em_loader *val)
{
    reset_fit_state(t, m, train, val);
    em_status s = fit_prepare(t, m, train);
    if (s != EM_OK) {
        if (t->env.distributed) {
            emi_dist_fit_failed(t);
            emi_loader_set_distributed(train, 0, 1, false, false, 0);
            if (val != NULL)
                emi_loader_set_distributed(val, 0, 1, false, false, 0);
        }
        t->module = NULL;
        return emi_trainer_fail(t, "em_trainer_fit", s);
    }
    release_fit_objects(t); /* the previous fit's */
    t->fitting = true;
    m->trainer_ = t;
    int depth = em_scope_depth(), no_grad_depth = emi_no_grad_depth();
    if ((s = emi_config_setup_data(t)) != EM_OK) {
        s = emi_trainer_fail(t, "em_trainer_fit", s);
    } else {
        if (t->cfg.seed >= 0)
            em_manual_seed((uint64_t)t->cfg.seed);
        s = fit_body(t);
    }
    em_clear_error();
    if (s != EM_OK && t->env.distributed)
        emi_dist_fit_failed(t); /* the ranks this one launched: Lightning's launcher.kill */
    em_status closed = teardown(t, depth, no_grad_depth);
    if (s == EM_OK && closed != EM_OK)
        s = emi_trainer_fail(t, "trace", closed);
    emi_resume_close(t);
    t->last_module = s == EM_OK ? m : NULL; /* what em_trainer_save_checkpoint saves after the fit */
    if (s != EM_OK) {
        /* leave the message in the error slot too, for callers that check em_last_error() */
        em_clear_error();
        emi_fail(s, "%s", t->error);
    }
    return s;
}
