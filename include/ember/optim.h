/*
 * ember/optim.h: optimizers (torch.optim) and gradient clipping.
 *
 * How to use this header
 * ----------------------
 *     em_params *ps = em_nn_parameters(net);
 *     em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){ .lr = 0.1, .momentum = 0.9 });
 *     em_params_free(ps);                       // the optimizer keeps its own references
 *     ...
 *     em_optimizer_zero_grad(opt);
 *     em_backward(loss);
 *     em_optimizer_step(opt, NULL);
 *     ...
 *     em_optimizer_free(opt);
 *
 * SGD, Adam, AdamW, RMSprop and Adagrad are libtorch's C++ optimizers, which reproduce Python's
 * torch.optim bit for bit. LBFGS is ember's own port of torch/optim/lbfgs.py, operation for
 * operation in float32 (libtorch's C++ LBFGS computes its line search in double and drifts from
 * Python's). Options structs whose defaults are all zero take designated initializers; the others
 * ship an EM_*_OPTS_INIT holding torch's defaults: start from it and assign what you change.
 *
 * Hyper-parameters are read and written by name per parameter group (em_optimizer_get/set):
 * "lr", "momentum", "dampening", "weight_decay", "nesterov", "beta1", "beta2", "eps", "amsgrad",
 * "alpha", "centered", "lr_decay", "initial_accumulator_value", "maximize", "max_iter", "max_eval",
 * "tolerance_grad", "tolerance_change", "history_size" - each where the optimizer has it
 * (booleans read as 0 or 1).
 */
#ifndef EMBER_OPTIM_H
#define EMBER_OPTIM_H

#include "nn.h"

EM_BEGIN_DECLS

/** An opaque optimizer handle. */
typedef struct em_optimizer em_optimizer;

/**
 * A closure that re-evaluates the model and returns the loss (torch: the `closure` of
 * optimizer.step). The returned tensor is owned by the scope the optimizer opens around the call,
 * so `fn` neither frees nor keeps it. Returning NULL with an error recorded makes step fail;
 * returning NULL with no error recorded means "no loss" (Python's None), which every optimizer but
 * LBFGS accepts.
 */
typedef struct em_closure {
    em_tensor *(*fn)(void *ctx);
    void *ctx;
} em_closure;

/* ---- built-in optimizers ------------------------------------------------------------------------
 * Each takes its first parameter group from `params` (the optimizer keeps its own references: the
 * caller keeps and frees `params`) and returns a new optimizer the caller frees with
 * em_optimizer_free(). Errors: NULL with a message for NULL/empty params, a value torch rejects
 * ("Invalid learning rate: -1"), or an options version of 0 (the INIT was forgotten). */

/** torch.optim.SGD options. All-zero defaults except lr, which is required. */
typedef struct em_sgd_opts {
    double lr;           /* required, > 0 (torch has no default) */
    double momentum;     /* 0 */
    double dampening;    /* 0 */
    double weight_decay; /* 0 */
    bool nesterov;       /* false; needs momentum > 0 and dampening == 0 */
    bool maximize;       /* false; true = ascend (torch: maximize=True) */
} em_sgd_opts;
/** torch.optim.SGD(params, ...). */
EM_API em_optimizer *em_sgd(const em_params *params, const em_sgd_opts *opts);

/** torch.optim.Adam / AdamW options: start from EM_ADAM_OPTS_INIT or EM_ADAMW_OPTS_INIT. */
typedef struct em_adam_opts {
    int version;         /* EM_ADAM_OPTS_VERSION, set by the INIT */
    double lr;           /* 1e-3 */
    double beta1;        /* 0.9 (GANs often use 0.5) */
    double beta2;        /* 0.999 */
    double eps;          /* 1e-8 */
    double weight_decay; /* Adam 0, AdamW 1e-2 */
    bool amsgrad;        /* false */
    bool maximize;       /* false; true = ascend (torch: maximize=True) */
} em_adam_opts;
#define EM_ADAM_OPTS_VERSION 1
#define EM_ADAM_OPTS_INIT                                                                          \
    {.version = EM_ADAM_OPTS_VERSION, .lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,         \
     .weight_decay = 0.0, .amsgrad = false, .maximize = false}
#define EM_ADAMW_OPTS_INIT                                                                         \
    {.version = EM_ADAM_OPTS_VERSION, .lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,         \
     .weight_decay = 1e-2, .amsgrad = false, .maximize = false}
/** torch.optim.Adam(params, ...). NULL opts = EM_ADAM_OPTS_INIT. */
EM_API em_optimizer *em_adam(const em_params *params, const em_adam_opts *opts);
/** torch.optim.AdamW(params, ...). NULL opts = EM_ADAMW_OPTS_INIT. */
EM_API em_optimizer *em_adamw(const em_params *params, const em_adam_opts *opts);

/** torch.optim.RMSprop options: start from EM_RMSPROP_OPTS_INIT. */
typedef struct em_rmsprop_opts {
    int version;         /* EM_RMSPROP_OPTS_VERSION */
    double lr;           /* 1e-2 */
    double alpha;        /* 0.99 */
    double eps;          /* 1e-8 */
    double weight_decay; /* 0 */
    double momentum;     /* 0 */
    bool centered;       /* false */
    bool maximize;       /* false; true = ascend (torch: maximize=True) */
} em_rmsprop_opts;
#define EM_RMSPROP_OPTS_VERSION 1
#define EM_RMSPROP_OPTS_INIT                                                                       \
    {.version = EM_RMSPROP_OPTS_VERSION, .lr = 1e-2, .alpha = 0.99, .eps = 1e-8, .weight_decay = 0.0,  \
     .momentum = 0.0, .centered = false, .maximize = false}
/** torch.optim.RMSprop(params, ...). NULL opts = EM_RMSPROP_OPTS_INIT. */
EM_API em_optimizer *em_rmsprop(const em_params *params, const em_rmsprop_opts *opts);

/** torch.optim.Adagrad options: start from EM_ADAGRAD_OPTS_INIT. */
typedef struct em_adagrad_opts {
    int version;                      /* EM_ADAGRAD_OPTS_VERSION */
    double lr;                        /* 1e-2 */
    double lr_decay;                  /* 0 */
    double weight_decay;              /* 0 */
    double initial_accumulator_value; /* 0 */
    double eps;                       /* 1e-10 */
    bool maximize;                    /* false; true = ascend (torch: maximize=True) */
} em_adagrad_opts;
#define EM_ADAGRAD_OPTS_VERSION 1
#define EM_ADAGRAD_OPTS_INIT                                                                       \
    {.version = EM_ADAGRAD_OPTS_VERSION, .lr = 1e-2, .lr_decay = 0.0, .weight_decay = 0.0,            \
     .initial_accumulator_value = 0.0, .eps = 1e-10, .maximize = false}
/** torch.optim.Adagrad(params, ...). NULL opts = EM_ADAGRAD_OPTS_INIT. */
EM_API em_optimizer *em_adagrad(const em_params *params, const em_adagrad_opts *opts);

/** torch.optim.LBFGS options: start from EM_LBFGS_OPTS_INIT. */
typedef struct em_lbfgs_opts {
    int version;             /* EM_LBFGS_OPTS_VERSION */
    double lr;               /* 1 */
    int64_t max_iter;        /* 20 */
    int64_t max_eval;        /* 0 = max_iter * 5 / 4 (torch's None) */
    double tolerance_grad;   /* 1e-7; 0 means "never stop on the gradient" */
    double tolerance_change; /* 1e-9 */
    int64_t history_size;    /* 100 */
    bool strong_wolfe;       /* false (torch: line_search_fn=None); true = "strong_wolfe" */
} em_lbfgs_opts;
#define EM_LBFGS_OPTS_VERSION 1
#define EM_LBFGS_OPTS_INIT                                                                        \
    {.version = EM_LBFGS_OPTS_VERSION, .lr = 1.0, .max_iter = 20, .max_eval = 0,                  \
     .tolerance_grad = 1e-7, .tolerance_change = 1e-9, .history_size = 100, .strong_wolfe = false}
/**
 * torch.optim.LBFGS(params, ...), float32 op for op as torch/optim/lbfgs.py. One parameter group
 * only (as torch). em_optimizer_step() needs a closure.
 */
EM_API em_optimizer *em_lbfgs(const em_params *params, const em_lbfgs_opts *opts);

/* ---- optimizers written in C --------------------------------------------------------------------- */

/** The operations of an optimizer written in C. */
typedef struct em_optimizer_ops {
    int version;      /* EM_OPTIMIZER_OPS_VERSION of the header you compiled with */
    const char *name; /* shown in messages, e.g. "MySGD" */
    /**
     * Required. Update the parameters (em_optimizer_group_params, em_tensor_grad, em_add_ under
     * em_no_grad_begin). `closure` may be NULL; when it is not, call it through em_closure_call().
     */
    em_status (*step)(em_optimizer *self, const em_closure *closure);
    /** Optional: releases the state when the optimizer is freed. */
    void (*destroy)(void *state);
    /* ---- version 1 ends here; new entries are appended below, never inserted ---- */
    /**
     * Version 2. The step unscales the gradients itself (torch: _step_supports_amp_scaling, the
     * fused optimizers): em_grad_scaler_step (amp.h) does not unscale or skip it but calls it with
     * the scale and the inf flag readable through em_grad_scaler_step_info, and the trainer's
     * clipping refuses it under 16-mixed as Lightning does.
     */
    bool step_supports_amp_scaling;
    /** Version 2. The step needs a closure it re-evaluates (as LBFGS): 16-mixed refuses it. */
    bool requires_closure;
    /* ---- version 2 ends here ---- */
    /**
     * Version 3, optional: the optimizer's state for a checkpoint (em_checkpoint_save,
     * em_trainer_save_checkpoint; torch: optimizer.state_dict()["state"]). Set *bytes to a buffer of *n
     * bytes from malloc() (the caller owns it from the return on and frees it with free(), also when the
     * call fails), or leave *bytes NULL for "no state". Without state_save, a checkpoint of this
     * optimizer is refused (EM_EUNSUPPORTED naming it): a stateless optimizer says so by setting one
     * that leaves *bytes NULL. The group hyper-parameters (em_optimizer_set) and the step count are
     * saved by ember. Encode the bytes as you like, with a version of your own in them.
     */
    em_status (*state_save)(em_optimizer *self, void **bytes, size_t *n);
    /**
     * Version 3, optional: restore what state_save wrote (torch: load_state_dict). `bytes` is borrowed
     * for the call; check it (the file may come from elsewhere). Not called when state_save left
     * *bytes NULL. A checkpoint holding bytes for an optimizer without state_load is refused.
     */
    em_status (*state_load)(em_optimizer *self, const void *bytes, size_t n);
} em_optimizer_ops;
#define EM_OPTIMIZER_OPS_VERSION 3

/**
 * An optimizer whose step is `ops->step`, with one parameter group from `params` holding the
 * hyper-parameter "lr" = `lr` (more can be added with em_optimizer_set). `state` is yours
 * (em_optimizer_state() returns it); `ops` must outlive the optimizer.
 * Takes ownership of `state` (ops->destroy frees it), also when it fails.
 * Errors: NULL for NULL params/ops/step, or an ops version of 0 or newer than this library's.
 */
EM_API em_optimizer *em_optimizer_new(const em_optimizer_ops *ops, const em_params *params,
                                      double lr, void *state);
/** The state pointer given to em_optimizer_new(); NULL for built-in optimizers. */
EM_API void *em_optimizer_state(const em_optimizer *opt);

/* ---- using optimizers ------------------------------------------------------------------------------ */

/**
 * One optimization step. torch: optimizer.step(closure)
 * `closure` may be NULL except for LBFGS. The step counter (em_optimizer_step_count) increases by 1.
 * Errors: the closure's failure (its message is kept), EM_EINVAL for LBFGS without a closure,
 * EM_ETORCH for libtorch's errors.
 */
EM_API em_status em_optimizer_step(em_optimizer *opt, const em_closure *closure);

/**
 * Run a closure inside its own scope and return the loss as a double. For optimizers written in C.
 * `*loss_out` may be NULL. A closure that returns NULL without recording an error returned no loss
 * (Python's `return None`, what Lightning's closure does when training_step returns None): EM_OK
 * with *loss_out = NAN, as em_optimizer_step treats it; NAN too for a loss that is not a single
 * element.
 * Errors: EM_EINVAL for a NULL closure or closure->fn; the closure's own error when it returned NULL
 * having recorded one (its message is kept), or EM_EUSER "the closure returned NULL" when an error
 * was already recorded before the call.
 */
EM_API em_status em_closure_call(const em_closure *closure, double *loss_out);

/**
 * Reset the gradients of every parameter of every group. torch: optimizer.zero_grad()
 * Uses the default of the libtorch found: set_to_none = false on 1.13, true on 2.x
 * (em_zero_grad_sets_to_none() tells which).
 */
EM_API em_status em_optimizer_zero_grad(em_optimizer *opt);
/**
 * torch: optimizer.zero_grad(set_to_none). false: existing gradients are detached and zero-filled,
 * None stays None; true: every gradient becomes None.
 */
EM_API em_status em_optimizer_zero_grad_ex(em_optimizer *opt, bool set_to_none);
/** The default set_to_none of optimizer.zero_grad() in the libtorch found (false on 1.13). */
EM_API bool em_zero_grad_sets_to_none(void);

/**
 * Add a parameter group with the optimizer's constructor defaults. torch: add_param_group()
 * Change its hyper-parameters with em_optimizer_set(opt, new_index, ...).
 * Errors: EM_EINVAL for an empty list or a parameter already in another group; LBFGS takes one group only.
 */
EM_API em_status em_optimizer_add_param_group(em_optimizer *opt, const em_params *params);
/** Number of parameter groups; 0 for NULL. */
EM_API size_t em_optimizer_num_groups(const em_optimizer *opt);
/** The parameters of group `group`. Borrowed: valid until the optimizer is freed. */
EM_API const em_params *em_optimizer_group_params(const em_optimizer *opt, size_t group);

/**
 * Read hyper-parameter `name` of group `group` (names: see the top of this header).
 * Errors: EM_EINVAL for a group out of range or a name this optimizer does not have.
 */
EM_API em_status em_optimizer_get(const em_optimizer *opt, size_t group, const char *name, double *out);
/**
 * Write hyper-parameter `name` of group `group`; it takes effect at the next step.
 * For optimizers written in C any name may be set (and is then created).
 * "lr" takes any value, as an assignment to torch's param_group['lr'] does (schedulers may produce
 * a slightly negative one); other names are checked as the constructor checks them.
 * Errors: as em_optimizer_get, and EM_EINVAL for a value the constructor would reject.
 */
EM_API em_status em_optimizer_set(em_optimizer *opt, size_t group, const char *name, double value);
/** The learning rate of group `group`; NaN (recorded) on error. */
EM_API double em_optimizer_lr(const em_optimizer *opt, size_t group);
/** Set the learning rate of group `group`. */
EM_API em_status em_optimizer_set_lr(em_optimizer *opt, size_t group, double lr);

/** How many times em_optimizer_step() succeeded on this optimizer. */
EM_API int64_t em_optimizer_step_count(const em_optimizer *opt);
/** "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "LBFGS", or a C optimizer's ops->name. */
EM_API const char *em_optimizer_name(const em_optimizer *opt);
/**
 * The optimizer a wrapper forwards to (Lightning: LightningOptimizer.optimizer); for an optimizer
 * that wraps nothing, the optimizer itself. Borrowed.
 */
EM_API em_optimizer *em_optimizer_inner(em_optimizer *opt);
/**
 * Free an optimizer you created. One that belongs to a trainer (handed to em_optim_setup_add, or a
 * wrapper from em_optimizers) is not freed, also after fit returned: that records EM_EINVAL, and
 * the trainer frees it when it fits again or is freed (em_trainer_free). NULL is ignored.
 * Misuse (best effort, common.h): freeing it twice, or passing it anywhere after, records EM_EMISUSE
 * ("em_optimizer_free: this optimizer was already freed ...") and does nothing; the freed memory is
 * kept from reuse for the next 4096 frees on the thread. (A wrapper's inner optimizer belongs to the
 * trainer, so user code cannot free it under the wrapper.)
 */
EM_API void em_optimizer_free(em_optimizer *opt);

/* ---- gradient clipping ------------------------------------------------------------------------------- */

/**
 * Scale the gradients of `params` so that their total `norm_type`-norm is at most `max_norm`.
 * torch: torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type), op for op (2-norm: the norm of
 * each gradient, stacked, normed; coef = max_norm / (total + 1e-6) clamped to 1; grad *= coef).
 * `norm_type` may be INFINITY. Parameters without a gradient are skipped.
 * `*total_norm` (may be NULL) receives the total norm before clipping (0 when no gradient exists).
 * Errors: EM_EINVAL for NULL params or norm_type <= 0.
 */
EM_API em_status em_clip_grad_norm(const em_params *params, double max_norm, double norm_type,
                                   double *total_norm);
/**
 * Clamp every gradient element to [-clip_value, clip_value]. torch: clip_grad_value_(params, v).
 * Errors: EM_EINVAL for NULL params.
 */
EM_API em_status em_clip_grad_value(const em_params *params, double clip_value);

EM_END_DECLS

#endif /* EMBER_OPTIM_H */
