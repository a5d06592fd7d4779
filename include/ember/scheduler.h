/*
 * ember/scheduler.h: learning-rate schedulers (torch.optim.lr_scheduler, torch 1.13).
 *
 * How to use this header
 * ----------------------
 *     em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){ .lr = 0.1, .momentum = 0.9 });
 *     em_scheduler *sched = em_step_lr(opt, 30, 0.1);     // lr is now the epoch-0 value
 *     for (int epoch = 0; epoch < 100; epoch++) {
 *         train_one_epoch(opt);                           // em_optimizer_step() inside
 *         em_scheduler_step(sched);                       // torch: scheduler.step()
 *     }
 *     em_scheduler_free(sched);                           // before the optimizer
 *     em_optimizer_free(opt);
 *
 * Under em_trainer_fit() hand the scheduler to em_optim_setup_add_scheduler() (trainer.h) instead,
 * and the trainer steps it where Lightning does.
 *
 * Each built-in scheduler is a port of its class in torch 1.13's torch/optim/lr_scheduler.py,
 * operation for operation in double: the recursive get_lr() on every step, the closed form only
 * where torch uses it (SequentialLR's step(0) at a milestone), so the learning rates equal
 * Python's bit for bit. Learning rates (and OneCycleLR's and CyclicLR's momentum) are read and
 * written through em_optimizer_lr / em_optimizer_set_lr / em_optimizer_set, so a scheduler works
 * on every optimizer, built-in or written in C. ember does not expose torch's deprecated step(epoch) nor
 * a constructor's last_epoch (resuming).
 *
 * Like torch's constructors, the non-plateau ones record each group's "initial_lr" (only if it is
 * not recorded yet, torch's setdefault; OneCycleLR overwrites it) and then take the first step, so
 * the optimizer holds the epoch-0 learning rate when the constructor returns and
 * em_scheduler_last_epoch() is 0. torch keeps initial_lr in the optimizer's param_groups; ember
 * keeps it beside the optimizer for as long as a scheduler on that optimizer is alive (a second
 * scheduler on the same optimizer, as SequentialLR and ChainedScheduler children are, starts from
 * it as in torch). Once the last scheduler of an optimizer is freed it is forgotten, and a
 * scheduler created after that starts from the optimizer's current lr.
 *
 * Ownership: a scheduler borrows its optimizer, which must outlive it. The caller frees a
 * scheduler with em_scheduler_free(), except one handed to em_sequential_lr(),
 * em_chained_scheduler() or the trainer, which then own it.
 *
 * Errors: a constructor returns NULL with a message close to torch's ("Expected positive integer
 * T_0, but got -1"); given a NULL optimizer (a failed em_sgd() in a chain) it returns NULL and
 * leaves the first message in place. A step that torch would raise on (OneCycleLR stepped past
 * total_steps, a division by zero torch reports as ZeroDivisionError) returns EM_EINVAL; as in
 * torch, last_epoch has then already advanced.
 */
#ifndef EMBER_SCHEDULER_H
#define EMBER_SCHEDULER_H

#include "optim.h"

EM_BEGIN_DECLS

/** An opaque learning-rate scheduler handle. */
typedef struct em_scheduler em_scheduler;

/* ---- built-in schedulers ---------------------------------------------------------------------------
 * Each takes the optimizer whose groups it schedules (borrowed: it must outlive the scheduler) and
 * returns a new scheduler the caller frees with em_scheduler_free(), after the initial step torch's
 * constructor takes. Errors: NULL, as described at the top of this header. */

/**
 * Multiply each group's lr by `gamma` every `step_size` epochs.
 * torch: StepLR(optimizer, step_size, gamma)   (torch's default gamma is 0.1)
 * Errors: step_size < 1 (torch accepts it and fails at the first step with ZeroDivisionError or
 * silently misbehaves; ember rejects it up front).
 */
EM_API em_scheduler *em_step_lr(em_optimizer *opt, int64_t step_size, double gamma);

/**
 * Multiply each group's lr by `gamma` once the epoch reaches each of the `n` milestones (a
 * milestone listed twice multiplies by gamma**2 there, as torch's Counter does). The milestones are
 * copied; they need not be sorted. `milestones` may be NULL when n is 0.
 * torch: MultiStepLR(optimizer, milestones, gamma)
 */
EM_API em_scheduler *em_multistep_lr(em_optimizer *opt, const int64_t *milestones, size_t n,
                                     double gamma);

/** Multiply each group's lr by `gamma` every epoch. torch: ExponentialLR(optimizer, gamma) */
EM_API em_scheduler *em_exponential_lr(em_optimizer *opt, double gamma);

/**
 * Cosine annealing from the initial lr down to `eta_min` over `T_max` epochs, then back up
 * (torch's recursive form, not restarted).
 * torch: CosineAnnealingLR(optimizer, T_max, eta_min)   (torch's default eta_min is 0)
 * Errors: T_max < 1 ("Expected positive integer T_max, but got 0": torch divides by zero at the
 * first step).
 */
EM_API em_scheduler *em_cosine_annealing_lr(em_optimizer *opt, int64_t T_max, double eta_min);

/**
 * Cosine annealing with warm restarts: the first period is T_0 epochs, each next one T_mult times
 * longer. torch: CosineAnnealingWarmRestarts(optimizer, T_0, T_mult, eta_min)   (defaults 1, 0)
 * Errors: "Expected positive integer T_0, but got -1", "Expected integer T_mult >= 1, but got 0".
 */
EM_API em_scheduler *em_cosine_annealing_warm_restarts(em_optimizer *opt, int64_t T_0,
                                                       int64_t T_mult, double eta_min);

/** OneCycleLR's annealing strategy (torch: anneal_strategy='cos' / 'linear'). */
typedef enum em_anneal_strategy {
    EM_ANNEAL_COS = 0,
    EM_ANNEAL_LINEAR = 1
} em_anneal_strategy;

/** torch.optim.lr_scheduler.OneCycleLR options: start from EM_ONECYCLE_OPTS_INIT. */
typedef struct em_onecycle_opts {
    int version;                        /* EM_ONECYCLE_OPTS_VERSION, set by the INIT */
    double max_lr;                      /* required, > 0; one value for every group */
    int64_t total_steps;                /* 0 = epochs * steps_per_epoch (torch's None) */
    int64_t epochs;                     /* 0 (torch's None) */
    int64_t steps_per_epoch;            /* 0 (torch's None) */
    double pct_start;                   /* 0.3 */
    em_anneal_strategy anneal_strategy; /* EM_ANNEAL_COS */
    bool cycle_momentum;                /* true */
    double base_momentum;               /* 0.85; one value for every group */
    double max_momentum;                /* 0.95; one value for every group */
    double div_factor;                  /* 25: initial_lr = max_lr / div_factor */
    double final_div_factor;            /* 1e4: min_lr = initial_lr / final_div_factor */
    bool three_phase;                   /* false */
    /* ---- version 1 ends here; version 2 appends (read only when version >= 2) ---- */
    /* torch's lists: NULL, or one value per parameter group (copied; the length must equal the
     * number of groups: "expected 2 values for max_lr, got 3"); when set, the scalar is ignored */
    const double *max_lrs;              /* NULL = max_lr for every group */
    size_t n_max_lrs;                   /* 0; the length of max_lrs */
    const double *base_momentums;       /* NULL = base_momentum for every group */
    size_t n_base_momentums;            /* 0 */
    const double *max_momentums;        /* NULL = max_momentum for every group */
    size_t n_max_momentums;             /* 0 */
} em_onecycle_opts;
#define EM_ONECYCLE_OPTS_VERSION 2 /* 1: up to three_phase; 2: the per-group lists */
#define EM_ONECYCLE_OPTS_INIT                                                                       \
    {.version = EM_ONECYCLE_OPTS_VERSION, .max_lr = 0.0, .total_steps = 0, .epochs = 0,             \
     .steps_per_epoch = 0, .pct_start = 0.3, .anneal_strategy = EM_ANNEAL_COS,                      \
     .cycle_momentum = true, .base_momentum = 0.85, .max_momentum = 0.95, .div_factor = 25.0,       \
     .final_div_factor = 1e4, .three_phase = false, .max_lrs = NULL, .n_max_lrs = 0,                \
     .base_momentums = NULL, .n_base_momentums = 0, .max_momentums = NULL, .n_max_momentums = 0}

/**
 * The 1cycle policy: lr from max_lr/div_factor up to max_lr, then down to
 * initial_lr/final_div_factor, over total_steps steps (step it once per batch).
 * With cycle_momentum the momentum is cycled inversely between max_momentum and base_momentum:
 * the optimizer's "beta1" when it has one (Adam, AdamW: torch checks 'betas' in defaults),
 * otherwise its "momentum" (SGD, RMSprop, a C optimizer that set "momentum").
 * torch: OneCycleLR(optimizer, max_lr, total_steps, epochs, steps_per_epoch, ...); max_lrs,
 * base_momentums, max_momentums (version 2) are torch's lists, one value per group.
 * Errors: "max_lr is required" (also for a group's max_lrs value <= 0), "expected 2 values for
 * max_lr, got 3" (likewise base_momentum, max_momentum), "You must define either total_steps OR
 * (epochs AND steps_per_epoch)", "Expected positive integer total_steps, but got -1", "Expected
 * float between 0 and 1 pct_start, but got 1.5", "optimizer must support momentum with
 * `cycle_momentum` option enabled", div_factor or final_div_factor of 0, an options version of 0
 * (the INIT was forgotten).
 * Stepping more than total_steps times fails with EM_EINVAL ("Tried to step 102 times. The
 * specified number of total steps is 100").
 */
EM_API em_scheduler *em_onecycle_lr(em_optimizer *opt, const em_onecycle_opts *opts);

/** CyclicLR's built-in policies (torch: mode='triangular' / 'triangular2' / 'exp_range'). */
typedef enum em_cyclic_mode {
    EM_CYCLIC_TRIANGULAR = 0,  /* scale 1 */
    EM_CYCLIC_TRIANGULAR2 = 1, /* scale 1 / 2**(cycle - 1): the amplitude halves every cycle */
    EM_CYCLIC_EXP_RANGE = 2    /* scale gamma**iterations */
} em_cyclic_mode;

/** What CyclicLR's scale_fn is given (torch: scale_mode='cycle' / 'iterations'). */
typedef enum em_cyclic_scale_mode {
    EM_CYCLIC_SCALE_CYCLE = 0,     /* the cycle number, 1 for the first cycle */
    EM_CYCLIC_SCALE_ITERATIONS = 1 /* the scheduler's last_epoch (steps since construction) */
} em_cyclic_scale_mode;

/**
 * CyclicLR's custom scaling policy (torch: scale_fn, a one-argument function): `x` is the cycle
 * number or the iteration, as scale_mode says (torch passes Python ints), `ctx` the pointer given
 * in the options. Return a factor, 0 <= factor <= 1 in torch's words. To fail, record an error
 * with em_error_set() and return anything: the step then fails with that status.
 */
typedef double (*em_cyclic_scale_fn)(int64_t x, void *ctx);

/** torch.optim.lr_scheduler.CyclicLR options: start from EM_CYCLIC_OPTS_INIT. */
typedef struct em_cyclic_opts {
    int version;                     /* EM_CYCLIC_OPTS_VERSION, set by the INIT */
    double base_lr;                  /* required (0 is allowed): the lower lr of every group */
    double max_lr;                   /* required, != 0 (0 reads as unset): the upper lr */
    int64_t step_size_up;            /* 2000: steps of the increasing half of a cycle */
    int64_t step_size_down;          /* 0 = step_size_up (torch's None) */
    em_cyclic_mode mode;             /* EM_CYCLIC_TRIANGULAR; ignored when scale_fn is set */
    double gamma;                    /* 1.0: EM_CYCLIC_EXP_RANGE's base */
    em_cyclic_scale_fn scale_fn;     /* NULL (torch's None): mode's policy */
    void *scale_ctx;                 /* NULL; given to scale_fn (borrowed: must outlive the scheduler) */
    em_cyclic_scale_mode scale_mode; /* EM_CYCLIC_SCALE_CYCLE; only read when scale_fn is set */
    bool cycle_momentum;             /* true: cycle the optimizer's "momentum" inversely to the lr */
    double base_momentum;            /* 0.8: the lower momentum of every group */
    double max_momentum;             /* 0.9: the upper momentum */
    /* torch's lists: NULL, or one value per parameter group (copied; the length must equal the
     * number of groups: "expected 2 values for max_lr, got 3"); when set, the scalar is ignored */
    const double *base_lrs;          /* NULL = base_lr for every group */
    size_t n_base_lrs;               /* 0; the length of base_lrs */
    const double *max_lrs;           /* NULL = max_lr for every group */
    size_t n_max_lrs;                /* 0 */
    const double *base_momentums;    /* NULL = base_momentum for every group */
    size_t n_base_momentums;         /* 0 */
    const double *max_momentums;     /* NULL = max_momentum for every group */
    size_t n_max_momentums;          /* 0 */
} em_cyclic_opts;
#define EM_CYCLIC_OPTS_VERSION 1
#define EM_CYCLIC_OPTS_INIT                                                                         \
    {.version = EM_CYCLIC_OPTS_VERSION, .base_lr = 0.0, .max_lr = 0.0, .step_size_up = 2000,        \
     .step_size_down = 0, .mode = EM_CYCLIC_TRIANGULAR, .gamma = 1.0, .scale_fn = NULL,             \
     .scale_ctx = NULL, .scale_mode = EM_CYCLIC_SCALE_CYCLE, .cycle_momentum = true,                \
     .base_momentum = 0.8, .max_momentum = 0.9, .base_lrs = NULL, .n_base_lrs = 0,                 \
     .max_lrs = NULL, .n_max_lrs = 0, .base_momentums = NULL, .n_base_momentums = 0,               \
     .max_momentums = NULL, .n_max_momentums = 0}

/**
 * The cyclical learning-rate policy (CLR): each group's lr goes from base_lr up to max_lr over
 * step_size_up steps and back down over step_size_down, the amplitude scaled by the mode's policy
 * (or scale_fn); step it once per batch. The constructor sets every group's lr to its base_lr
 * (and, with cycle_momentum, its "momentum" to base_momentum) before torch's initial step, which
 * then sets the epoch-0 values: lr base_lr, momentum max_momentum (torch's quirk, kept: when a
 * scheduler alive on the optimizer already recorded initial_lr, the initial step sets that lr
 * instead, and base_lr takes over at the next step). With cycle_momentum the
 * optimizer's "momentum" is cycled inversely between max_momentum and base_momentum: SGD and
 * RMSprop have one; torch 1.13's CyclicLR (unlike OneCycleLR) does not use Adam's betas, so Adam
 * and AdamW need cycle_momentum = false.
 * torch: CyclicLR(optimizer, base_lr, max_lr, step_size_up, step_size_down, mode, gamma, scale_fn,
 * scale_mode, cycle_momentum, base_momentum, max_momentum)
 * Ownership: borrows the optimizer (it must outlive the scheduler) and opts->scale_ctx; copies the
 * lists. The caller frees the scheduler with em_scheduler_free().
 * Errors: "max_lr is required" (NULL opts, or max_lr 0 without max_lrs), "expected 2 values for
 * max_lr, got 3" (likewise base_lr, base_momentum, max_momentum), "mode is invalid and scale_fn is
 * None", an unknown scale_mode, step_size_up < 1 or step_size_down < 0 (torch divides by zero or
 * cycles backwards), a negative lr or momentum ("Invalid learning rate", "Invalid momentum value"),
 * "optimizer must support momentum with `cycle_momentum` option enabled" (Adam, AdamW, Adagrad, a
 * C optimizer without "momentum"), an options version of 0 (the INIT was forgotten), and at a
 * step (the constructor's too), the scale_fn's. A rejected argument leaves the optimizer as it
 * was; a failing initial step has already set the base lrs and momenta, as in torch.
 */
EM_API em_scheduler *em_cyclic_lr(em_optimizer *opt, const em_cyclic_opts *opts);

/**
 * Multiply each group's lr by a factor that goes linearly from start_factor to end_factor over
 * total_iters epochs. torch: LinearLR(optimizer, start_factor, end_factor, total_iters)
 * (torch's defaults: 1/3, 1.0, 5)
 * Errors: "Starting multiplicative factor expected to be between 0 and 1." (also for 0, where
 * torch divides by zero at the first step), "Ending multiplicative factor expected to be between 0
 * and 1.", total_iters < 0.
 */
EM_API em_scheduler *em_linear_lr(em_optimizer *opt, double start_factor, double end_factor,
                                  int64_t total_iters);

/**
 * Multiply each group's lr by `factor` until epoch total_iters. torch: ConstantLR(optimizer,
 * factor, total_iters)   (torch's defaults: 1/3, 5)
 * Errors: "Constant multiplicative factor expected to be between 0 and 1." (also for 0, where
 * torch divides by zero at total_iters), total_iters < 0.
 */
EM_API em_scheduler *em_constant_lr(em_optimizer *opt, double factor, int64_t total_iters);

/**
 * Polynomial decay of each group's lr to 0 over total_iters epochs.
 * torch: PolynomialLR(optimizer, total_iters, power)   (torch's defaults: 5, 1.0)
 * Errors: total_iters < 1.
 */
EM_API em_scheduler *em_polynomial_lr(em_optimizer *opt, int64_t total_iters, double power);

/**
 * The factor function of LambdaLR and MultiplicativeLR: `epoch` is the scheduler's last_epoch,
 * `group` the parameter group (one function serves torch's single lambda and its list of
 * lambdas), `ctx` the pointer given to the constructor. To fail, record an error with
 * em_error_set() and return anything: the step then fails with that status.
 */
typedef double (*em_lr_lambda)(int64_t epoch, size_t group, void *ctx);

/**
 * Set each group's lr to its initial lr times lr_lambda(epoch, group, ctx).
 * torch: LambdaLR(optimizer, lr_lambda)
 * `ctx` is borrowed and must outlive the scheduler. Errors: NULL lr_lambda, or the callback's.
 */
EM_API em_scheduler *em_lambda_lr(em_optimizer *opt, em_lr_lambda lr_lambda, void *ctx);

/**
 * Multiply each group's lr by lr_lambda(epoch, group, ctx) at every epoch after the first.
 * torch: MultiplicativeLR(optimizer, lr_lambda)
 * `ctx` is borrowed and must outlive the scheduler. Errors: NULL lr_lambda.
 */
EM_API em_scheduler *em_multiplicative_lr(em_optimizer *opt, em_lr_lambda lr_lambda, void *ctx);

/**
 * Run schedulers one after the other: schedulers[i] from epoch milestones[i-1] on. At a milestone
 * the next scheduler is stepped as torch's step(0) (its closed form at epoch 0, where it has one).
 * torch: SequentialLR(optimizer, schedulers, milestones), with its constructor's quirks: it sets
 * every group's lr back to its initial_lr, moves every child's last_epoch back by one, and takes
 * the first child's initial step again.
 * `milestones` holds n - 1 values (copied; NULL when n is 1). Takes ownership of the n children,
 * also when it fails (a child already owned by another composite is left to it).
 * Create the children in separate statements, in torch's order: the first one records initial_lr
 * and may change the lr before the next is created, and the initializers of an array literal
 * `(em_scheduler *[]){em_linear_lr(...), em_exponential_lr(...)}` run in an unspecified order.
 * Errors: a NULL child (returns NULL and keeps the first message), n == 0, a child of another
 * optimizer ("Sequential Schedulers expects all schedulers to belong to the same optimizer, ..."),
 * a ReduceLROnPlateau child, a ChainedScheduler child, a SequentialLR child after the first (torch
 * raises TypeError at its milestone), the same child twice.
 */
EM_API em_scheduler *em_sequential_lr(em_optimizer *opt, em_scheduler *const *schedulers, size_t n,
                                      const int64_t *milestones);

/**
 * Step every child, in order, on each step. torch: ChainedScheduler(schedulers)
 * Unlike the others it takes no initial step. Takes ownership of the n children, also when it
 * fails (a child already owned by another composite is left to it); create them in separate
 * statements, as for em_sequential_lr(). em_scheduler_last_epoch()
 * counts its steps (torch's ChainedScheduler has no last_epoch).
 * Errors: a NULL child (returns NULL and keeps the first message), n == 0, children of different
 * optimizers ("ChainedScheduler expects all schedulers to belong to the same optimizer, ..."), a
 * ReduceLROnPlateau child, the same child twice.
 */
EM_API em_scheduler *em_chained_scheduler(em_scheduler *const *schedulers, size_t n);

/** ReduceLROnPlateau's mode (torch: mode='min' / 'max'). */
typedef enum em_plateau_mode {
    EM_PLATEAU_MIN = 0, /* the metric should go down (a loss) */
    EM_PLATEAU_MAX = 1  /* the metric should go up (an accuracy) */
} em_plateau_mode;

/** ReduceLROnPlateau's threshold_mode (torch: 'rel' / 'abs'). */
typedef enum em_threshold_mode {
    EM_THRESHOLD_REL = 0, /* better than best * (1 -/+ threshold) */
    EM_THRESHOLD_ABS = 1  /* better than best -/+ threshold */
} em_threshold_mode;

/** torch.optim.lr_scheduler.ReduceLROnPlateau options: start from EM_PLATEAU_OPTS_INIT. */
typedef struct em_plateau_opts {
    int version;                      /* EM_PLATEAU_OPTS_VERSION, set by the INIT */
    em_plateau_mode mode;             /* EM_PLATEAU_MIN */
    double factor;                    /* 0.1; must be < 1 */
    int64_t patience;                 /* 10 */
    double threshold;                 /* 1e-4 */
    em_threshold_mode threshold_mode; /* EM_THRESHOLD_REL */
    int64_t cooldown;                 /* 0 */
    double min_lr;                    /* 0; the floor of every group's lr (unless min_lrs is set) */
    double eps;                       /* 1e-8 */
    const double *min_lrs;            /* NULL; or one floor per group (torch: min_lr=[...]), copied */
    size_t n_min_lrs;                 /* 0; the length of min_lrs: must equal the number of groups */
} em_plateau_opts;
#define EM_PLATEAU_OPTS_VERSION 1
#define EM_PLATEAU_OPTS_INIT                                                                        \
    {.version = EM_PLATEAU_OPTS_VERSION, .mode = EM_PLATEAU_MIN, .factor = 0.1, .patience = 10,     \
     .threshold = 1e-4, .threshold_mode = EM_THRESHOLD_REL, .cooldown = 0, .min_lr = 0.0,           \
     .eps = 1e-8}

/**
 * Reduce each group's lr by `factor` when the metric has not improved for `patience` steps.
 * Step it with em_scheduler_step_metric(). It takes no initial step and leaves the lr alone at
 * construction; em_scheduler_last_epoch() is 0 until the first step.
 * torch: ReduceLROnPlateau(optimizer, mode, factor, patience, threshold, threshold_mode, cooldown,
 * min_lr, eps)
 * NULL opts = EM_PLATEAU_OPTS_INIT. Errors: "Factor should be < 1.0.", an unknown mode or
 * threshold_mode, min_lrs whose length is not the number of groups ("expected 2 min_lrs, got 3"),
 * an options version of 0 (the INIT was forgotten).
 */
EM_API em_scheduler *em_reduce_lr_on_plateau(em_optimizer *opt, const em_plateau_opts *opts);

/* ---- schedulers written in C -------------------------------------------------------------------- */

/** The operations of a scheduler written in C. */
typedef struct em_scheduler_ops {
    int version;      /* EM_SCHEDULER_OPS_VERSION of the header you compiled with */
    const char *name; /* em_scheduler_name() and messages, e.g. "WarmupCosine"; NULL = "Scheduler" */
    /**
     * Required: torch's get_lr() plus the writes of step(). Compute the learning rates for epoch
     * em_scheduler_last_epoch(self) (already advanced by ember) and write them with
     * em_optimizer_set_lr(em_scheduler_optimizer(self), group, lr); em_scheduler_base_lr() gives
     * each group's initial_lr. `has_metric`/`metric` carry the value given to
     * em_scheduler_step_metric() (only for a scheduler marked reduce_on_plateau). Return EM_OK,
     * or an error status (record a message with em_error_set()).
     */
    em_status (*step)(em_scheduler *self, bool has_metric, double metric);
    /** Optional: releases the state when the scheduler is freed. */
    void (*destroy)(void *state);
    /**
     * false: an epoch/step scheduler like torch's _LRScheduler subclasses: em_scheduler_new() records
     * initial_lr and calls step once (last_epoch 0), and em_scheduler_step() drives it.
     * true: it counts as a ReduceLROnPlateau (Lightning: LRSchedulerConfig.reduce_on_plateau): no
     * initial step, last_epoch starts at 0, and it is stepped with em_scheduler_step_metric() only.
     */
    bool reduce_on_plateau;
    /* ---- version 1 ends here; new entries are appended below, never inserted ---- */
    /**
     * Version 2, optional: the state of your own (what `state` holds that step() reads) for a checkpoint
     * (em_checkpoint_save, em_trainer_save_checkpoint). ember saves last_epoch, the step count, base_lrs,
     * the last learning rates and initial_lr itself; this adds your bytes. Set *bytes to a buffer of *n
     * bytes from malloc() (the caller frees it with free(), also when the call fails), or leave it NULL
     * for "nothing more". Without state_save a checkpoint of this scheduler is refused (EM_EUNSUPPORTED).
     * It may be called more than once per save; give the same bytes each time.
     */
    em_status (*state_save)(em_scheduler *self, void **bytes, size_t *n);
    /** Version 2, optional: restore what state_save wrote; `bytes` is borrowed for the call (NULL with
     *  n 0 when state_save gave none). Required when state_save is set. */
    em_status (*state_load)(em_scheduler *self, const void *bytes, size_t n);
} em_scheduler_ops;
#define EM_SCHEDULER_OPS_VERSION 2

/**
 * A scheduler whose step is `ops->step`, on optimizer `opt` (borrowed: it must outlive the
 * scheduler). `state` is yours (em_scheduler_state() returns it); `ops` must outlive the scheduler.
 * Unless ops->reduce_on_plateau, it does what torch's _LRScheduler constructor does: records
 * initial_lr and calls ops->step once with last_epoch 0.
 * torch: subclassing torch.optim.lr_scheduler._LRScheduler (or ReduceLROnPlateau).
 * Returns a new scheduler; the caller frees it with em_scheduler_free().
 * Takes ownership of `state` (ops->destroy frees it), also when it fails.
 * Errors: NULL for a NULL opt (no new message), NULL ops or step, an ops version of 0 or newer than
 * this library's, or a failing initial step (its message is kept; a step that fails without
 * recording one leaves "em_scheduler_new: <name>'s step failed without a message", and likewise
 * "em_scheduler_step: ..." or "em_scheduler_step_metric: ..." at a later step).
 */
EM_API em_scheduler *em_scheduler_new(const em_scheduler_ops *ops, em_optimizer *opt, void *state);
/** The state pointer given to em_scheduler_new(); NULL for built-in schedulers and NULL. */
EM_API void *em_scheduler_state(const em_scheduler *s);

/* ---- using schedulers ----------------------------------------------------------------------------- */

/**
 * One scheduler step. torch: scheduler.step()
 * Errors: EM_EINVAL for a plateau scheduler (it needs em_scheduler_step_metric(); torch raises
 * TypeError), the errors of the step itself (see the top of this header), the optimizer's when an
 * lr cannot be set. NULL returns EM_EINVAL without recording.
 */
EM_API em_status em_scheduler_step(em_scheduler *s);

/**
 * One step of a plateau scheduler with the monitored metric. torch: ReduceLROnPlateau.step(metrics)
 * Errors: EM_EINVAL for a scheduler that is not a plateau one (torch would take the metric for
 * the deprecated epoch argument), the optimizer's when an lr cannot be set.
 */
EM_API em_status em_scheduler_step_metric(em_scheduler *s, double metric);

/**
 * The learning rate of group `group` after the last step. torch: scheduler.get_last_lr()[group]
 * (torch 1.13's ReduceLROnPlateau has no get_last_lr(); ember returns its _last_lr).
 * Errors: NaN (recorded) for a group out of range, or a plateau scheduler that has not stepped
 * yet (torch: AttributeError); NaN without recording for NULL.
 */
EM_API double em_scheduler_last_lr(const em_scheduler *s, size_t group);

/**
 * The initial_lr of group `group` as this scheduler recorded it. torch: scheduler.base_lrs[group]
 * For a composite, its first child's; for ReduceLROnPlateau (which has none) the group's lr when
 * it was created. Errors: NaN (recorded) for a group out of range; NaN without recording for NULL.
 */
EM_API double em_scheduler_base_lr(const em_scheduler *s, size_t group);

/** torch: scheduler.last_epoch (0 after the constructor; counts steps for ChainedScheduler). -1 for NULL. */
EM_API int64_t em_scheduler_last_epoch(const em_scheduler *s);

/** The optimizer it schedules (ChainedScheduler: its first child's). Borrowed. NULL for NULL. */
EM_API em_optimizer *em_scheduler_optimizer(const em_scheduler *s);

/** Whether it is stepped with a metric (ReduceLROnPlateau, or a C one marked reduce_on_plateau). */
EM_API bool em_scheduler_is_plateau(const em_scheduler *s);

/**
 * torch's class name: "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
 * "CosineAnnealingWarmRestarts", "OneCycleLR", "CyclicLR", "LinearLR", "ConstantLR",
 * "PolynomialLR", "LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler",
 * "ReduceLROnPlateau", or a C scheduler's ops->name. Borrowed: a static string or ops->name; "" for NULL.
 */
EM_API const char *em_scheduler_name(const em_scheduler *s);

/**
 * Free a scheduler you own (and, for a composite, its children). Leaves the optimizer and its
 * learning rates as they are. One that belongs to a trainer (em_optim_setup_add_scheduler) is not
 * freed, also after fit returned: that records EM_EINVAL, and the trainer frees it when it fits
 * again or is freed (em_trainer_free). NULL is ignored.
 * Misuse (best effort, common.h): freeing it twice, or passing it anywhere after, records EM_EMISUSE
 * and does nothing.
 */
EM_API void em_scheduler_free(em_scheduler *s);

EM_END_DECLS

#endif /* EMBER_SCHEDULER_H */
