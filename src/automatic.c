/* automatic.c: automatic optimization, one batch at a time, and the LR scheduler updates.
 *
 * Lightning: loops/optimization/automatic.py (Closure, ClosureResult, _AutomaticOptimization.run,
 *            _make_zero_grad_fn, _make_backward_fn, _optimizer_step, _training_step)
 *            loops/training_epoch_loop.py (_should_accumulate, _update_learning_rates)
 *            strategies/strategy.py (Strategy.backward)
 * Order of operations: LIGHTNING_SEMANTICS.md §1.1-1.3, §3.4-3.6.
 */
#include <math.h>
#include <string.h>

#include "loop.h" /* em_trainer internals, emi_fail, CALL_CB_HOOKS */

/* ---- the accumulation window ----------------------------------------------------------------------- */

/* Lightning: _TrainingEpochLoop._accumulated_batches_reached */
static bool accumulated_batches_reached(const em_trainer *t)
{
    return (t->batch_idx + 1) % t->accumulate == 0;
}

/* Lightning: _TrainingEpochLoop._num_ready_batches_reached */
static bool is_final_batch(const em_trainer *t)
{
    return t->batch_idx + 1 == t->num_training_batches || t->is_last_batch;
}

/* Lightning: _TrainingEpochLoop._should_accumulate (single device and DDP step on the final batch) */
bool should_accumulate(const em_trainer *t)
{
    return !accumulated_batches_reached(t) && !is_final_batch(t);
}

/* ---- training_step, backward ------------------------------------------------------------------------ */

/* Calls training_step under the precision plugin's autocast. NULL with no failure = Lightning's None. */
static em_status training_step(em_trainer *t, em_batch *b, int64_t batch_idx, em_tensor **loss)
{
    bool autocast = t->precision != EM_PRECISION_32_TRUE;
    if (autocast && emi_autocast_begin(t->precision == EM_PRECISION_16_MIXED ? EM_F16 : EM_BF16, em_tensor_device(b->t[0])) != EM_OK)
        return trainer_fail(t, "training_step", em_last_status());
    const char *prev = t->hook;
    t->hook = "training_step";
    em_clear_error();
    *loss = t->module->ops->training_step(t->module, b, batch_idx);
    t->hook = prev;
    if (autocast)
        emi_autocast_end();
    return trainer_check(t, "training_step", EM_OK);
}

static em_status before_backward_hooks(em_trainer *t, em_tensor *loss)
{
    const char *prev_hook = t->hook;
    CALL_CB_HOOKS(t, on_before_backward, loss);
    const em_module_ops *ops = t->module->ops;
    if (ops->on_before_backward != NULL) {
        t->hook = "on_before_backward";
        em_clear_error();
        em_status s = ops->on_before_backward(t->module, loss);
        t->hook = prev_hook;
        return trainer_check(t, "on_before_backward", s);
    }
    return EM_OK;
}

static em_status after_backward_hooks(em_trainer *t)
{
    const char *prev_hook = t->hook;
    CALL_CB_HOOKS(t, on_after_backward);
    const em_module_ops *ops = t->module->ops;
    if (ops->on_after_backward != NULL) {
        t->hook = "on_after_backward";
        em_clear_error();
        em_status s = ops->on_after_backward(t->module);
        t->hook = prev_hook;
        return trainer_check(t, "on_after_backward", s);
    }
    return EM_OK;
}

/* Lightning: Strategy.backward: pre_backward, on_before_backward, LightningModule.backward, on_after_backward */
em_status run_backward(em_trainer *t, em_tensor *loss, bool retain_graph)
{
    em_status s;
    if ((s = before_backward_hooks(t, loss)) != EM_OK)
        return s;
    const em_module_ops *ops = t->module->ops;
    const char *prev = t->hook;
    t->hook = "backward";
    em_clear_error();
    if (ops->backward != NULL)
        s = ops->backward(t->module, loss, retain_graph);
    else
        s = retain_graph ? em_backward_ex(loss, NULL, true) : em_backward(loss);
    t->hook = prev;
    if ((s = trainer_check(t, "backward", s)) != EM_OK)
        return s;
    return after_backward_hooks(t);
}

/* ---- the closure: training_step, then zero_grad, then backward ---------------------------------------- */

typedef struct closure_state {
    em_trainer *t;
    em_batch *batch;
    int64_t batch_idx;
    em_optimizer *raw;   /* the optimizer (NULL when configure_optimizers added none) */
    em_tensor *result;   /* detached normalised loss of the last evaluation (caller-owned) */
    bool executed;
} closure_state;

static em_status zero_grad_hooks(em_trainer *t, em_optimizer *raw, int64_t batch_idx)
{
    const char *prev_hook = t->hook;
    CALL_CB_HOOKS(t, on_before_zero_grad, raw);
    const em_module_ops *ops = t->module->ops;
    em_status s;
    if (ops->on_before_zero_grad != NULL) {
        t->hook = "on_before_zero_grad";
        em_clear_error();
        s = ops->on_before_zero_grad(t->module, raw);
        t->hook = prev_hook;
        if ((s = trainer_check(t, "on_before_zero_grad", s)) != EM_OK)
            return s;
    }
    t->hook = "optimizer_zero_grad";
    em_clear_error();
    if (ops->optimizer_zero_grad != NULL)
        s = ops->optimizer_zero_grad(t->module, t->current_epoch, batch_idx, raw);
    else
        s = raw != NULL ? em_optimizer_zero_grad(raw) : EM_OK;
    t->hook = prev_hook;
    return trainer_check(t, "optimizer_zero_grad", s);
}

/* Lightning: Closure.closure. Returns the detached loss / A (NULL: none, or a failure when recorded). */
static em_tensor *closure_call(void *ctx)
{
    closure_state *c = ctx;
    em_trainer *t = c->t;
    c->executed = true;
    em_tensor_free(c->result);
    c->result = NULL;

    em_tensor *loss = NULL;
    if (training_step(t, c->batch, c->batch_idx, &loss) != EM_OK)
        return NULL;
    em_tensor *closure_loss = NULL;
    if (loss != NULL) {
        if (t->trace != NULL)
            trace_training_step(t, em_tensor_item(loss));
        /* ClosureResult.from_training_step_output: loss / accumulate_grad_batches, out of place.
         * Dividing by 1 changes no bit of the loss or of the gradients (backward multiplies by 1.0),
         * so with A == 1 the op and its backward node are skipped: they were the largest part of the
         * loop's overhead on small models (bench/). Lightning keeps loss.detach().clone() for
         * on_train_batch_end; nothing writes to the loss in place, so a detached view taken when
         * the batch ends (and only if a hook wants it) is the same value without the copies. */
        closure_loss = t->accumulate == 1 ? loss : em_div_scalar(loss, (double)t->accumulate);
        c->result = emi_own(em_tensor_ref(closure_loss));
        if (c->result == NULL) {
            trainer_fail(t, "training_step", em_last_status());
            return NULL;
        }
    } else if (t->trace != NULL) {
        trace_training_step(t, NAN);
    }
    /* zero_grad on the first batch of an accumulation window, even when training_step returned none */
    if (c->batch_idx % t->accumulate == 0 && zero_grad_hooks(t, c->raw, c->batch_idx) != EM_OK)
        return NULL;
    if (closure_loss != NULL && run_backward(t, closure_loss, false) != EM_OK)
        return NULL;
    em_clear_error();
    return c->result != NULL ? em_tensor_ref(c->result) : NULL;
}

/* ---- one batch ------------------------------------------------------------------------------------------ */

/* Lightning: LightningModule.optimizer_step, called on stepping batches only */
static em_status optimizer_step_hook(em_trainer *t, em_optimizer *wrapper, const em_closure *closure)
{
    const char *prev_hook = t->hook;
    const em_module_ops *ops = t->module->ops;
    em_status s;
    t->hook = "optimizer_step";
    em_clear_error();
    if (ops->optimizer_step != NULL)
        s = ops->optimizer_step(t->module, t->current_epoch, t->batch_idx, wrapper, closure);
    else if (wrapper != NULL)
        s = em_optimizer_step(wrapper, closure);
    else
        s = closure->fn(closure->ctx) != NULL || !emi_has_error() ? EM_OK : em_last_status(); /* _MockOptimizer */
    t->hook = prev_hook;
    return trainer_check(t, "optimizer_step", s);
}

em_status automatic_run(em_trainer *t, em_batch *batch, int64_t batch_idx, em_tensor **loss_out)
{
    closure_state c = {
        .t = t,
        .batch = batch,
        .batch_idx = batch_idx,
        .raw = t->setup.n_opts > 0 ? t->setup.opts[0] : NULL,
    };
    em_closure closure = {.fn = closure_call, .ctx = &c};
    em_status s;
    *loss_out = NULL;
    if (should_accumulate(t)) {
        /* accumulating batch: the closure alone (under DDP: without gradient sync) */
        em_clear_error();
        if (closure_call(&c) == NULL && (t->fail_status != EM_OK || emi_has_error())) {
            s = trainer_check(t, "training_step", em_last_status());
            goto done;
        }
    } else {
        s = optimizer_step_hook(t, t->setup.n_opts > 0 ? t->wrappers[0] : NULL, &closure);
        if (s != EM_OK)
            goto done;
        if (!c.executed) {
            s = emi_fail(EM_EINVAL, "The closure hasn't been executed. HINT: did you call `closure->fn(closure->ctx)` "
                                    "in your `optimizer_step` hook? It could also happen because the "
                                    "`em_optimizer_step(opt, closure)` call did not execute it internally.");
            s = trainer_fail(t, "optimizer_step", s);
            goto done;
        }
        t->global_step++; /* _OptimizationProgress.optimizer_steps: counts even a skipped update */
    }
    s = EM_OK;
done:
    if (s == EM_OK && c.result != NULL && t->wants_batch_output)
        *loss_out = em_detach(c.result); /* owned by the batch scope; for on_train_batch_end */
    em_tensor_free(c.result);
    return s;
}

/* ---- LR schedulers: _TrainingEpochLoop._update_learning_rates --------------------------------------------- */

static em_status lr_scheduler_step(em_trainer *t, em_scheduler *s, bool has_metric, double metric)
{
    const char *prev_hook = t->hook;
    const em_module_ops *ops = t->module->ops;
    t->hook = "lr_scheduler_step";
    em_clear_error();
    em_status rc;
    if (ops->lr_scheduler_step != NULL)
        rc = ops->lr_scheduler_step(t->module, s, has_metric, metric);
    else
        rc = has_metric ? em_scheduler_step_metric(s, metric) : em_scheduler_step(s);
    t->hook = prev_hook;
    return trainer_check(t, "lr_scheduler_step", rc);
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

em_status update_learning_rates(em_trainer *t, em_interval interval, bool update_plateau_schedulers)
{
    if (interval == EM_INTERVAL_STEP && should_accumulate(t))
        return EM_OK;
    if (t->setup.n_scheds == 0 || !t->module->automatic_optimization)
        return EM_OK;
    for (size_t i = 0; i < t->setup.n_scheds; i++) {
        emi_sched_entry *e = &t->setup.scheds[i];
        if (update_plateau_schedulers != e->plateau)
            continue;
        int64_t current = (interval == EM_INTERVAL_STEP ? t->batch_idx : t->current_epoch) + 1;
        if (e->cfg.interval != interval || current % e->cfg.frequency != 0)
            continue;
        bool has_metric = false;
        double metric = NAN;
        if (e->plateau) {
            has_metric = kvlist_get(&t->metrics.callback, e->cfg.monitor, &metric);
            if (!has_metric) {
                char avail[512];
                available_metrics(t, avail, sizeof avail);
                if (!e->cfg.not_strict) {
                    em_clear_error();
                    emi_fail(EM_EINVAL, "ReduceLROnPlateau conditioned on metric %s which is not available. Available "
                                        "metrics are: [%s]. Condition can be set using `monitor` in the scheduler "
                                        "config", e->cfg.monitor, avail);
                    return trainer_fail(t, "lr_scheduler_step", EM_EINVAL);
                }
                fprintf(stderr, "ember: warning: ReduceLROnPlateau conditioned on metric %s which is not available "
                                "but strict is set to `False`. Skipping learning rate update.\n", e->cfg.monitor);
                continue;
            }
        }
        em_status s = lr_scheduler_step(t, e->sched, has_metric, metric);
        if (s != EM_OK)
            return s;
    }
    return EM_OK;
}
