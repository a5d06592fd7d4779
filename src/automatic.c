/* automatic.c: automatic optimization, one batch at a time.
 *
 * Lightning: loops/optimization/automatic.py (Closure, ClosureResult, _AutomaticOptimization.run,
 *            _make_zero_grad_fn, _make_backward_fn, _optimizer_step, _training_step),
 *            core/module.py (optimizer_step, optimizer_zero_grad defaults).
 * Order of operations: docs/LIGHTNING_RULES.md §1.1-1.3.
 */
#include <math.h>

#include "hooks.h"
#include "optimization.h"
#include "strategy.h"
#include "trace.h"

/* ---- the closure: training_step, then zero_grad, then backward ---------------------------------------- */

typedef struct closure_state {
    em_trainer *t;
    em_batch *batch;
    em_optimizer *raw;   /* the optimizer (NULL when configure_optimizers added none) */
    em_tensor *result;   /* detached normalised loss of the last evaluation (caller-owned) */
    bool executed;
} closure_state;

/* Lightning: _make_zero_grad_fn: on_before_zero_grad (callbacks, module), then the optimizer_zero_grad
 * hook (default: optimizer.zero_grad()). */
static em_status zero_grad(em_trainer *t, em_optimizer *raw)
{
    em_status s = emi_hooks_call(t, EMI_ON_BEFORE_ZERO_GRAD, &(emi_hook_args){.opt = raw});
    if (s != EM_OK)
        return s;
    const em_module_ops *ops = t->module->ops;
    const char *prev = emi_hook_enter(t, "optimizer_zero_grad");
    if (ops->optimizer_zero_grad != NULL)
        s = ops->optimizer_zero_grad(t->module, t->current_epoch, t->batch_idx, raw);
    else
        s = raw != NULL ? em_optimizer_zero_grad(raw) : EM_OK;
    return emi_hook_leave(t, prev, "optimizer_zero_grad", s);
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
    if (emi_strategy_training_step(t, c->batch, t->batch_idx, &loss) != EM_OK)
        return NULL;
    em_tensor *closure_loss = NULL;
    if (loss != NULL) {
        if (t->trace != NULL)
            emi_trace_training_step(t, em_tensor_item(loss));
        /* ClosureResult.from_training_step_output: loss / accumulate_grad_batches, out of place.
         * Dividing by 1 changes no bit of the loss or of the gradients (backward multiplies by 1.0),
         * so with A == 1 the op and its backward node are skipped: they were the largest part of the
         * loop's overhead on small models (bench/). Lightning keeps loss.detach().clone() for
         * on_train_batch_end; nothing writes to the loss in place, so a detached view taken when
         * the batch ends (and only if a hook wants it) is the same value without the copies. */
        closure_loss = t->accumulate == 1 ? loss : em_div_scalar(loss, (double)t->accumulate);
        c->result = emi_own(em_tensor_ref(closure_loss));
        if (c->result == NULL) {
            emi_trainer_fail(t, "training_step", em_last_status());
            return NULL;
        }
    } else if (t->trace != NULL) {
        emi_trace_training_step(t, NAN);
    }
    /* zero_grad on the first batch of an accumulation window, even when training_step returned none */
    if (t->batch_idx % t->accumulate == 0 && zero_grad(t, c->raw) != EM_OK)
        return NULL;
    if (closure_loss != NULL && emi_strategy_backward(t, closure_loss, false) != EM_OK)
        return NULL;
    em_clear_error();
    return c->result != NULL ? em_tensor_ref(c->result) : NULL;
}

/* ---- one batch ------------------------------------------------------------------------------------------ */

/* Lightning: LightningModule.optimizer_step, called on stepping batches only (default:
 * optimizer.step(closure); without an optimizer, Lightning's _MockOptimizer just runs the closure). */
static em_status optimizer_step(em_trainer *t, em_optimizer *wrapper, const em_closure *closure)
{
    const em_module_ops *ops = t->module->ops;
    const char *prev = emi_hook_enter(t, "optimizer_step");
    em_status s;
    if (ops->optimizer_step != NULL)
        s = ops->optimizer_step(t->module, t->current_epoch, t->batch_idx, wrapper, closure);
    else if (wrapper != NULL)
        s = em_optimizer_step(wrapper, closure);
    else
        s = closure->fn(closure->ctx) != NULL || !emi_has_error() ? EM_OK : em_last_status();
    return emi_hook_leave(t, prev, "optimizer_step", s);
}

/* A stepping batch: the optimizer_step hook, which must have run the closure; global_step counts
 * even a skipped update (_OptimizationProgress.optimizer_steps). */
static em_status step_batch(em_trainer *t, closure_state *c)
{
    em_closure closure = {.fn = closure_call, .ctx = c};
    em_status s = optimizer_step(t, t->setup.n_opts > 0 ? t->wrappers[0] : NULL, &closure);
    if (s != EM_OK)
        return s;
    if (!c->executed) {
        s = emi_fail(EM_EINVAL, "The closure hasn't been executed. HINT: did you call `closure->fn(closure->ctx)` "
                                "in your `optimizer_step` hook? It could also happen because the "
                                "`em_optimizer_step(opt, closure)` call did not execute it internally.");
        return emi_trainer_fail(t, "optimizer_step", s);
    }
    t->global_step++;
    return EM_OK;
}

/* An accumulating batch: the closure alone (under DDP: without gradient sync). */
static em_status accumulate_batch(em_trainer *t, closure_state *c)
{
    em_clear_error();
    if (closure_call(c) == NULL && (t->fail_status != EM_OK || emi_has_error()))
        return emi_trainer_check(t, "training_step", em_last_status());
    return EM_OK;
}

em_status emi_automatic_run(em_trainer *t, em_batch *batch, bool stepping, em_tensor **out)
{
    closure_state c = {.t = t, .batch = batch, .raw = t->setup.n_opts > 0 ? t->setup.opts[0] : NULL};
    *out = NULL;
    em_status s = stepping ? step_batch(t, &c) : accumulate_batch(t, &c);
    if (s == EM_OK && c.result != NULL && t->wants_batch_output)
        *out = em_detach(c.result); /* owned by the batch scope; for on_train_batch_end */
    em_tensor_free(c.result);
    return s;
}
