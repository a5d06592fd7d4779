/*
 * shim/backend.h: what src/ needs from the shim and the shim needs from src/, but users should not
 * call. C header: included by the C sources in src/ and the C++ ones in shim/. Symbols use the emi_ prefix and hidden
 * visibility.
 */
#ifndef EMBER_BACKEND_H
#define EMBER_BACKEND_H

#include "ember/common.h"    /* em_status, EM_BEGIN_DECLS, EM_PRINTF */
#include "ember/tensor.h"    /* em_tensor, em_dtype, em_device */
#include "ember/optim.h"     /* em_optimizer, em_optimizer_ops */
#include "ember/scheduler.h" /* em_scheduler */

EM_BEGIN_DECLS

/* ---- errors (src/error.c) ------------------------------------------------------------------------ */

/**
 * Record an error (kept only if none is recorded yet) and return `code`. Every failure in ember goes
 * through here: break on emi_fail to see each error where it starts. Allocates nothing: the message
 * is formatted into a fixed thread-local buffer (truncated if longer).
 */
em_status emi_fail(em_status code, const char *fmt, ...) EM_PRINTF(2, 3);

/** Record a libtorch error caught in `func`: "func: <libtorch's one-line message>". */
void emi_fail_torch(const char *func, const char *what);

/** Whether an error is recorded on this thread (cheap). */
bool emi_has_error(void);

/** How many em_no_grad_begin() regions are open on this thread (shim/core.cpp). */
int emi_no_grad_depth(void);

/* ---- diagnostics (src/log.c) ---------------------------------------------------------------------- */

/** A warning through the log handler (em_set_log_handler); the default writes it to stderr. */
void emi_warn(const char *fmt, ...) EM_PRINTF(1, 2);
/** A notice (EM_LEVEL_INFO) through the log handler. */
void emi_info(const char *fmt, ...) EM_PRINTF(1, 2);


/* ---- handles (shim/core.cpp) --------------------------------------------------------------------- */

/** Take `t` out of whatever scope owns it: the caller owns it from now on. Returns t. */
em_tensor *emi_own(em_tensor *t);
/** The identity of the tensor behind a handle (its TensorImpl): equal for two handles of one tensor. */
const void *emi_tensor_id(const em_tensor *t);
/**
 * Set the scope floor to the current scope depth and return the previous floor. While it is set,
 * em_scope_end refuses (EM_EMISUSE, recorded) to close a scope at or below the floor: the trainer
 * calls it just after opening its scope around a batch, so a user's unbalanced em_scope_end is
 * reported instead of releasing the trainer's tensors. Never fails.
 */
int emi_scope_floor_push(void);
/** Restore the floor emi_scope_floor_push() returned, before closing the scope it protected. */
void emi_scope_floor_pop(int previous);

/* ---- runtime (shim/runtime.cpp): autocast and RNG state --------------------------------------------- */

/**
 * Enter autocast to `dtype` (EM_BF16 or EM_F16; the loop maps bf16-mixed and 16-mixed to them) on
 * `device`. Nests. Errors: EM_EINVAL for another dtype (recorded; nothing to end).
 */
em_status emi_autocast_begin(em_dtype dtype, em_device device);
/** Leave the innermost emi_autocast_begin(). */
void emi_autocast_end(void);

/** An opaque copy of the global generator's state (CPU, and CUDA when present). */
typedef struct emi_rng_state emi_rng_state;
/** Save the global RNG state. NULL on failure (recorded). */
emi_rng_state *emi_rng_save(void);
/** Restore a saved state and free it. NULL is ignored. */
void emi_rng_restore(emi_rng_state *s);

/* ---- optimizer wrappers (shim/optim.cpp) ------------------------------------------------------------ */

/**
 * An optimizer that wraps `inner` (Lightning: LightningOptimizer). em_optimizer_step(wrapper, c)
 * calls ops->step(wrapper, c); every other em_optimizer_* call (groups, get/set, lr, zero_grad, name,
 * step_count, state) forwards to `inner`, and em_optimizer_inner(wrapper) returns `inner`.
 * `state` is the wrapper's own (emi_optimizer_wrapper_state); ops->destroy frees it with the wrapper.
 * em_optimizer_free(wrapper) does not free `inner`, which must outlive the wrapper; `ops` too.
 * Takes ownership of `state`, also when it fails. Errors: NULL for NULL inner (not recorded), NULL
 * ops or ops->step (recorded).
 */
em_optimizer *emi_optimizer_wrap(em_optimizer *inner, const em_optimizer_ops *ops, void *state);
/**
 * Mark an optimizer as owned by a trainer: while marked, em_optimizer_free records EM_EINVAL and
 * frees nothing (a user freeing what em_optimizers returned would otherwise free it twice).
 */
void emi_optimizer_set_owned(em_optimizer *opt, bool owned);
/** The same for schedulers (em_scheduler_free; src/scheduler.c). */
void emi_scheduler_set_owned(em_scheduler *s, bool owned);
/** The `state` given to emi_optimizer_wrap(); NULL for an optimizer that is not a wrapper. */
void *emi_optimizer_wrapper_state(const em_optimizer *wrapper);

/* ---- optimizer state, for checkpoints (shim/optim.cpp) ------------------------------------------------
 * The state torch.optim keeps per parameter, under torch's state_dict keys: "momentum_buffer" (SGD,
 * RMSprop), "step" (a 0-dim int64 tensor here; Python keeps a float one), "exp_avg", "exp_avg_sq",
 * "max_exp_avg_sq" (Adam, AdamW), "square_avg", "grad_avg" (RMSprop), "sum" (Adagrad). Parameters are
 * numbered over all groups in group order (torch's state_dict numbering). Built-in libtorch optimizers
 * only: LBFGS and optimizers written in C are EM_EUNSUPPORTED. A wrapper stands for its inner one. */

/** Called once per state tensor; `value` is a new handle owned by the open scope. Non-OK stops. */
typedef em_status (*emi_opt_state_fn)(void *ctx, size_t param, const char *key, em_tensor *value);

/** Report every state tensor of `opt` (parameters without state are skipped). Errors: EM_EUNSUPPORTED. */
em_status emi_optimizer_state_export(const em_optimizer *opt, emi_opt_state_fn fn, void *ctx);

/**
 * Check that keys[0..n-1] / values are a complete state for parameter `param` (every key the
 * optimizer and the parameter's group need, no other; tensors of the parameter's shape, "step" a
 * non-negative one-element value). With `apply`, also replace that parameter's state with copies
 * converted to the parameter's dtype and device. `who` prefixes errors (EM_EINVAL, EM_EUNSUPPORTED).
 */
em_status emi_optimizer_state_import(em_optimizer *opt, size_t param, const char *const *keys,
                                     em_tensor *const *values, size_t n, bool apply, const char *who);

/** Forget every parameter's state, as a new optimizer has it (Adagrad: its initial accumulator). */
em_status emi_optimizer_state_clear(em_optimizer *opt);

/** Set the count em_optimizer_step_count reports (restored from a checkpoint). */
void emi_optimizer_set_step_count(em_optimizer *opt, int64_t n);

/* ---- scheduler state, for checkpoints (src/scheduler.c) ---------------------------------------------- */

/**
 * Write the state of `s` (torch's state_dict without the optimizer and callables, flattened into
 * doubles: counters, base_lrs, _last_lr, the initial_lr record, the kind's own counters, composites'
 * children) into out[0..cap-1] and return how many values it has (call with cap 0 to size it).
 * Errors: 0, recorded (EM_EUNSUPPORTED), for a scheduler written in C.
 */
size_t emi_scheduler_state_get(const em_scheduler *s, double *out, size_t cap);
/**
 * Check (`apply` false) or restore a state emi_scheduler_state_get wrote into `s`, built with the
 * same arguments. Errors: EM_EINVAL (recorded, `who` first) when it does not fit.
 */
em_status emi_scheduler_state_set(em_scheduler *s, const double *v, size_t n, bool apply, const char *who);

EM_END_DECLS

#endif /* EMBER_BACKEND_H */
