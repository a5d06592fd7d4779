/* hooks.h: calling user code. The one place that runs a module hook or the callbacks with
 * Lightning's discipline (trainer/call.py: _call_lightning_module_hook, _call_callback_hooks): name
 * the hook, clear the error slot, call, restore the enclosing hook's name, check - and the place
 * where a failure is recorded with its position ("epoch 0, batch 3, training_step: ..."). */
#ifndef EMBER_HOOKS_H
#define EMBER_HOOKS_H

#include "loop.h"

/* ---- failures ------------------------------------------------------------------------------------ */

/** Record a failure of `what` (a hook or a stage) at the current position into t->error and return
 *  its status (the first failure of a fit wins; EM_OK becomes EM_ERROR). */
em_status emi_trainer_fail(em_trainer *t, const char *what, em_status s);
/** After user code named `what`: a non-OK status or a recorded error is a failure (recorded). */
em_status emi_trainer_check(em_trainer *t, const char *what, em_status s);

/* ---- one hook ------------------------------------------------------------------------------------ */

/** Before calling the user's `hook`: makes it the current hook, clears the error slot. Returns the
 *  enclosing hook's name, for emi_hook_leave. */
const char *emi_hook_enter(em_trainer *t, const char *hook);
/** After it: restores `prev` and checks the call (emi_trainer_check). */
em_status emi_hook_leave(em_trainer *t, const char *prev, const char *hook, em_status s);

/** A scope the trainer opened for user code: where to come back to. */
typedef struct emi_user_scope {
    int depth;      /* the depth before it */
    int prev_floor; /* the scope floor before it (emi_scope_floor_push) */
} emi_user_scope;

/** A scope for user code: a batch, or a hook that runs outside a batch (configure_optimizers,
 *  on_fit_start, epoch hooks). Opens one and makes it the floor: a user em_scope_end that would close
 *  it is refused (EM_EMISUSE). */
emi_user_scope emi_user_scope_begin(void);
/** Lift the floor and close every scope down to where `s` began: the trainer's, and any the user's
 *  code left open in it. */
void emi_user_scope_end(emi_user_scope s);

/* ---- hooks that run every callback, then the module ---------------------------------------------- */

typedef enum emi_hook {
    EMI_ON_FIT_START,
    EMI_ON_FIT_END,
    EMI_ON_TRAIN_START,
    EMI_ON_TRAIN_END,
    EMI_ON_TRAIN_EPOCH_START,
    EMI_ON_TRAIN_EPOCH_END,
    EMI_ON_VALIDATION_START,
    EMI_ON_VALIDATION_END,
    EMI_ON_VALIDATION_EPOCH_START,
    EMI_ON_VALIDATION_EPOCH_END,
    EMI_ON_TRAIN_BATCH_START, /* the module's return value goes to *args.response */
    EMI_ON_TRAIN_BATCH_END,
    EMI_ON_BEFORE_BACKWARD,
    EMI_ON_AFTER_BACKWARD,
    EMI_ON_BEFORE_OPTIMIZER_STEP,
    EMI_ON_BEFORE_ZERO_GRAD
} emi_hook;

/** What a hook receives besides the trainer and the module; unused fields stay zero. */
typedef struct emi_hook_args {
    const em_batch *batch;
    int64_t batch_idx;
    em_tensor *loss;    /* on_before_backward; on_train_batch_end's outputs (may be NULL) */
    em_optimizer *opt;  /* on_before_optimizer_step, on_before_zero_grad: the raw optimizer */
    int *response;      /* on_train_batch_start: the module's return value (0 when it has none) */
} emi_hook_args;

/** Lightning's order: each callback's `hook` in the order they were added, then the module's.
 *  `args` may be NULL for hooks without arguments. Stops at the first failure (recorded). Hooks that
 *  run outside a batch (fit, train and epoch starts and ends, validation's) run in a scope of their
 *  own, closed when they return; the per-batch ones in the batch's scope. */
em_status emi_hooks_call(em_trainer *t, emi_hook hook, const emi_hook_args *args);

/* ---- the callback protocol (struct em_callback) ----------------------------------------------------- */

/** Free a callback and its state (em_callback_free without the public name's checks). */
void emi_callback_destroy(em_callback *cb);
/** Mark `cb` as `t`'s. Errors: EM_EMISUSE when it already belongs to a trainer (this one or another). */
em_status emi_callback_adopt(em_callback *cb, const em_trainer *t);
/** Whether `cb` implements on_train_batch_end (the trainer then keeps the batch's loss for it). */
bool emi_callback_reads_batch_output(const em_callback *cb);

#endif /* EMBER_HOOKS_H */
