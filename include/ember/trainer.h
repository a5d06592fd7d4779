/*
 * ember/trainer.h: the training loop - PyTorch Lightning's Trainer and LightningModule, in C.
 *
 * How to use this header
 * ----------------------
 * 1. Embed an em_module first in a struct of your own and give it an ops table (the
 *    LightningModule's methods). training_step and configure_optimizers are required; every other
 *    entry may be NULL, which means Lightning's default.
 *
 *        struct regressor { em_module base; em_nn *net; };
 *
 *        static em_tensor *training_step(em_module *m, const em_batch *b, int64_t batch_idx) {
 *            struct regressor *r = (struct regressor *)m;
 *            em_tensor *loss = em_mse_loss(em_nn_forward(r->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
 *            em_log(m, "train_loss", em_tensor_item(loss), EM_LOG_PROG_BAR);
 *            return loss;                      // owned by the batch's scope: do not free
 *        }
 *        static em_status configure_optimizers(em_module *m, em_optim_setup *setup) {
 *            struct regressor *r = (struct regressor *)m;
 *            em_params *ps = em_nn_parameters(r->net);
 *            em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
 *            em_params_free(ps);
 *            return em_optim_setup_add(setup, opt);  // the trainer owns it from here
 *        }
 *        static const em_module_ops regressor_ops = {
 *            .version = EM_MODULE_OPS_VERSION,
 *            .training_step = training_step,
 *            .configure_optimizers = configure_optimizers,
 *        };
 *        struct regressor model = {.base = {.ops = &regressor_ops}}; // automatic optimization
 *
 * 2. Configure a trainer from EM_TRAINER_CONFIG_INIT (Lightning's defaults) and fit:
 *
 *        em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
 *        cfg.max_epochs = 10;
 *        cfg.accumulate_grad_batches = 4;
 *        cfg.gradient_clip_val = 0.5;
 *        em_trainer *t = em_trainer_new(&cfg);            // NULL + em_last_error() on bad config
 *        em_loader *train = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 32, .shuffle = true});
 *        if (em_trainer_fit(t, &model.base, train, NULL) != EM_OK)
 *            fprintf(stderr, "%s\n", em_trainer_error(t));   // "epoch 0, batch 3, training_step: ..."
 *        em_loader_free(train);
 *        em_trainer_free(t);
 *
 * Inside any callback, tensors are owned by a scope the trainer opened, so user code never frees them:
 *  - training_step, validation_step, the loader's get_batch and every hook called during a batch
 *    (on_train_batch_start/end, on_before/after_backward, on_before_optimizer_step,
 *    on_before_zero_grad, optimizer_step, optimizer_zero_grad, backward, configure_gradient_clipping,
 *    lr_scheduler_step, the closure) share the batch's scope, released when the batch ends;
 *  - configure_optimizers and each hook that runs outside a batch (on_fit_start/end,
 *    on_train_start/end, on_train_epoch_start/end, on_validation_*) run in a scope of their own,
 *    released when the hook returns.
 * A tensor that must outlive its scope (state kept in your module) is moved out of it with
 * em_keep() (to the enclosing scope) or taken over by you. Scopes your code opens and leaves open are
 * closed with the trainer's. A callback fails by returning a non-OK status, by returning NULL from
 * training_step with an error recorded (em_error_set, or an ember call that failed), or by recording
 * an error at all: the trainer clears the error slot before each callback and checks it after. A
 * failure stops em_trainer_fit, which returns the status and keeps the message with the place it
 * happened (em_trainer_error). A training_step that returns NULL with no error recorded means
 * Lightning's `return None`: no backward for that batch.
 *
 * The exact order of operations (closure, accumulation, clipping, schedulers, validation, step
 * counting) is Lightning 2.2.5's; docs/LIGHTNING_RULES.md in the repository is the
 * reference, and the conformance cases check it against runs recorded from Lightning itself.
 */
#ifndef EMBER_TRAINER_H
#define EMBER_TRAINER_H

#include <math.h>

#include "amp.h"
#include "optim.h"
#include "scheduler.h"

EM_BEGIN_DECLS

typedef struct em_trainer em_trainer;
typedef struct em_module em_module;
typedef struct em_loader em_loader;
typedef struct em_callback em_callback;
typedef struct em_optim_setup em_optim_setup;

/** "Not set" for the integer options Lightning lets be None (max_epochs, check_val_every_n_epoch, ...). */
#define EM_NONE INT64_MIN

/* ---- batches and loaders ----------------------------------------------------------------------- */

/** The most tensors one batch may hold. */
#define EM_BATCH_MAX_TENSORS 8

/**
 * One batch: `n` tensors (inputs, targets, ...), in the order the loader produced them.
 * Borrowed: the tensors belong to the batch's scope; they stay valid during the batch's callbacks.
 */
typedef struct em_batch {
    size_t n;
    em_tensor *t[EM_BATCH_MAX_TENSORS];
    int64_t size; /* rows in the batch (dim 0 of the first tensor): the default log batch_size */
} em_batch;

/** The operations of a data loader written in C (torch's DataLoader protocol, map-style). */
typedef struct em_loader_ops {
    int version; /* EM_LOADER_OPS_VERSION */
    /** Required. Number of batches one epoch yields (len(dataloader)). */
    int64_t (*num_batches)(void *state);
    /**
     * Required. Fill `out` with batch `index` (0-based, < num_batches) of the current epoch: set
     * out->n and out->t[0..n-1] (new tensors, owned by the scope the trainer opened; out->size is
     * filled in by the trainer when left 0). Return EM_OK or a failure (with em_error_set).
     */
    em_status (*get_batch)(void *state, int64_t index, em_batch *out);
    /** Optional: called at the start of every training epoch (a sampler's set_epoch). */
    void (*set_epoch)(void *state, int64_t epoch);
    /** Optional: releases `state` when the loader is freed. */
    void (*destroy)(void *state);
    /* ---- version 1 ends here ---- */
    /**
     * Optional (version 2): under DDP, called at fit start with this process's global rank and the
     * world size (and with 0, 1 when the fit ends), so that a loader written in C can take its shard
     * (torch's DistributedSampler: em_distributed_sampler_indices). Not called without DDP.
     */
    void (*set_distributed)(void *state, int64_t rank, int64_t world_size);
    /* ---- version 2 ends here ---- */
} em_loader_ops;
#define EM_LOADER_OPS_VERSION 2

/**
 * A loader driven by `ops`; `state` is yours. Takes ownership of `state` (ops->destroy frees it),
 * also when it fails. The caller frees the loader with em_loader_free().
 * Errors: NULL for NULL ops or a missing required entry, or a bad version.
 */
EM_API em_loader *em_loader_new(const em_loader_ops *ops, void *state);

/** Options of the built-in in-memory loader. All-zero = batch size 1, in order, keep the last batch. */
typedef struct em_loader_opts {
    int64_t batch_size; /* 0 = 1 */
    bool shuffle;       /* false; true = a new permutation every epoch from `seed` and the epoch */
    uint64_t seed;      /* 0 */
    bool drop_last;     /* false */
} em_loader_opts;

/**
 * torch's DataLoader(TensorDataset(tensors...)): batches are consecutive rows (dim 0) of every
 * tensor, as zero-copy views when not shuffled. The loader keeps its own references to the tensors.
 * The caller frees it with em_loader_free().
 * Errors: NULL when n is 0 or above EM_BATCH_MAX_TENSORS, a tensor is NULL or 0-dim, or the tensors
 * differ in their first dimension.
 */
EM_API em_loader *em_tensor_loader(em_tensor *const *tensors, size_t n, const em_loader_opts *opts);

/**
 * torch's DistributedSampler(dataset of n samples, num_replicas=world_size, rank, shuffle, seed,
 * drop_last) at `epoch` (set_epoch): writes the sample indices of `rank`, in order, into `out`
 * (capacity `cap`) and returns how many there are (len(sampler)), also when `cap` is smaller (call
 * with cap 0 to size the buffer). Shuffled: torch.randperm(n) from a generator seeded with
 * seed + epoch, the same indices as torch. Not drop_last: padded to a multiple of world_size by
 * repeating indices from the start; drop_last: the tail is dropped instead.
 * Errors: -1 (recorded, EM_EINVAL) for n < 0, world_size < 1 or a rank outside [0, world_size).
 */
EM_API int64_t em_distributed_sampler_indices(int64_t n, int64_t world_size, int64_t rank, bool shuffle,
                                              uint64_t seed, int64_t epoch, bool drop_last, int64_t *out,
                                              int64_t cap);

/** Number of batches per epoch; -1 for NULL. */
EM_API int64_t em_loader_num_batches(const em_loader *l);
/**
 * Batch `index` of epoch `epoch` (the epoch matters to a shuffling loader), outside a trainer.
 * The tensors are owned by the open scope (by the caller when none is open).
 */
EM_API em_status em_loader_get(em_loader *l, int64_t epoch, int64_t index, em_batch *out);
/**
 * Free a loader. NULL is ignored.
 * Misuse (best effort, common.h): freeing it twice, or passing it anywhere after, records EM_EMISUSE
 * and does nothing.
 */
EM_API void em_loader_free(em_loader *l);

/* ---- configure_optimizers ---------------------------------------------------------------------- */

/** When a scheduler steps (Lightning: LRSchedulerConfig.interval). */
typedef enum em_interval { EM_INTERVAL_EPOCH = 0, EM_INTERVAL_STEP = 1 } em_interval;

/**
 * How the trainer steps a scheduler (Lightning's LRSchedulerConfig). All-zero (or NULL) = Lightning's
 * defaults: every epoch, frequency 1, no monitor, strict.
 */
typedef struct em_scheduler_config {
    em_interval interval; /* EM_INTERVAL_EPOCH */
    int64_t frequency;    /* 0 = 1; negative is rejected */
    const char *monitor;  /* metric in callback_metrics fed to a plateau scheduler (copied); NULL */
    bool not_strict;      /* false = Lightning's strict=True: a missing monitor stops fit with an
                             error; true = warn and skip that step */
    const char *name;     /* for the LR monitor (copied); NULL */
} em_scheduler_config;

/**
 * Add an optimizer (in configure_optimizers). Takes ownership of `opt`, also when it fails: the
 * trainer keeps it (a pointer you kept stays valid after fit returns) and frees it when it fits again
 * or is freed (em_trainer_free); em_optimizer_free refuses it meanwhile.
 * Errors: EM_EINVAL for NULL (a failed constructor: its message is kept).
 */
EM_API em_status em_optim_setup_add(em_optim_setup *setup, em_optimizer *opt);

/**
 * Add a scheduler of an optimizer added before, with its config (NULL = defaults). Takes
 * ownership of `sched`, also when it fails; the trainer keeps it as it keeps the optimizers
 * (em_optim_setup_add). In manual optimization the config's interval,
 * frequency and monitor are ignored (the user steps schedulers), as Lightning does.
 * Errors: EM_EINVAL for NULL, a scheduler whose optimizer was not added ("attached to an optimizer
 * that wasn't returned"), frequency < 0, or a plateau scheduler without a monitor (automatic mode).
 */
EM_API em_status em_optim_setup_add_scheduler(em_optim_setup *setup, em_scheduler *sched,
                                              const em_scheduler_config *config);

/* ---- the module (LightningModule) ----------------------------------------------------------------- */

/** Clipping algorithms (Lightning's gradient_clip_algorithm). EM_CLIP_DEFAULT is None ("norm"). */
typedef enum em_clip_algorithm { EM_CLIP_DEFAULT = 0, EM_CLIP_NORM, EM_CLIP_VALUE } em_clip_algorithm;

/** Return value of on_train_batch_start that skips the rest of the epoch (Lightning's -1). */
#define EM_SKIP_REST_OF_EPOCH (-1)

/**
 * The LightningModule's methods. Every entry but training_step and configure_optimizers may be
 * NULL (= Lightning's default). Entries that return em_status fail with a non-EM_OK value.
 */
typedef struct em_module_ops {
    int version; /* EM_MODULE_OPS_VERSION of the header you compiled with */
    /* required */
    /** The loss of one batch (automatic), or anything (manual: its value only reaches
     *  on_train_batch_end). NULL without an error recorded = Lightning's `return None`. */
    em_tensor *(*training_step)(em_module *m, const em_batch *b, int64_t batch_idx);
    /** Add the optimizers and schedulers (em_optim_setup_add*). Adding none = Lightning's `None`. */
    em_status (*configure_optimizers)(em_module *m, em_optim_setup *setup);
    /* optional: the validation loop runs only when this is set and a val loader is given */
    em_status (*validation_step)(em_module *m, const em_batch *b, int64_t batch_idx);
    /* optional overrides of Lightning's hooks (default behaviour in the comment) */
    /** Default: em_optimizer_step(opt, closure). Must run the closure (directly or through step). */
    em_status (*optimizer_step)(em_module *m, int64_t epoch, int64_t batch_idx, em_optimizer *opt,
                                const em_closure *closure);
    /** Default: em_optimizer_zero_grad(opt). `opt` is the raw optimizer. */
    em_status (*optimizer_zero_grad)(em_module *m, int64_t epoch, int64_t batch_idx, em_optimizer *opt);
    /** Default: em_scheduler_step(s), or em_scheduler_step_metric(s, metric) for a plateau one. */
    em_status (*lr_scheduler_step)(em_module *m, em_scheduler *s, bool has_metric, double metric);
    /** Default: em_clip_gradients(m, opt, clip_val, algo). clip_val is NAN when the Trainer has none. */
    em_status (*configure_gradient_clipping)(em_module *m, em_optimizer *opt, double clip_val,
                                             em_clip_algorithm algo);
    /** Default: em_backward_ex(loss, NULL, retain_graph); retain_graph is true only for
     *  em_manual_backward_retain (Lightning forwards manual_backward's arguments to backward). */
    em_status (*backward)(em_module *m, em_tensor *loss, bool retain_graph);
    /* hooks: default no-op */
    em_status (*on_fit_start)(em_module *m);
    em_status (*on_fit_end)(em_module *m);
    em_status (*on_train_start)(em_module *m);
    em_status (*on_train_end)(em_module *m);
    em_status (*on_train_epoch_start)(em_module *m);
    em_status (*on_train_epoch_end)(em_module *m);
    /** Return 0, or EM_SKIP_REST_OF_EPOCH to end the epoch before this batch. Fail by recording an error. */
    int (*on_train_batch_start)(em_module *m, const em_batch *b, int64_t batch_idx);
    /** `loss`: the detached (normalised) loss, NULL when training_step returned none. */
    em_status (*on_train_batch_end)(em_module *m, const em_tensor *loss, const em_batch *b, int64_t batch_idx);
    em_status (*on_before_backward)(em_module *m, em_tensor *loss);
    em_status (*on_after_backward)(em_module *m);
    em_status (*on_before_optimizer_step)(em_module *m, em_optimizer *opt);
    em_status (*on_before_zero_grad)(em_module *m, em_optimizer *opt);
    em_status (*on_validation_start)(em_module *m);
    em_status (*on_validation_end)(em_module *m);
    em_status (*on_validation_epoch_start)(em_module *m);
    em_status (*on_validation_epoch_end)(em_module *m);
    /** Default: zero every parameter's gradient (set to None) of every optimizer. */
    em_status (*on_validation_model_zero_grad)(em_module *m);
    /* ---- version 1 ends here; new entries are appended below, never inserted ---- */
} em_module_ops;
#define EM_MODULE_OPS_VERSION 1

/**
 * The LightningModule. Embed it FIRST in your own struct and set `ops`; set `manual_optimization` for
 * manual optimization. A zero-initialised em_module is Lightning's default, automatic optimization.
 * The remaining fields belong to ember.
 */
struct em_module {
    const em_module_ops *ops;
    bool manual_optimization;    /* false: automatic optimization (Lightning's default,
                                    automatic_optimization = True); true: automatic_optimization = False,
                                    training_step drives the optimizers (em_manual_backward, ...) */
    em_nn *layers;               /* optional: the module's layers (a container for several nets); the
                                    trainer switches them to eval() during validation and back */
    /* ---- private: set by em_trainer_fit ---- */
    em_trainer *trainer_;
};

/** The trainer fitting this module, or NULL outside em_trainer_fit(). Borrowed. */
EM_API em_trainer *em_module_trainer(const em_module *m);

/**
 * The optimizers from configure_optimizers, wrapped for precision and strategy (LightningOptimizer).
 * Lightning: LightningModule.optimizers()
 * Borrowed: the array and the wrappers belong to the trainer; do not free them. The array is valid
 * until em_trainer_fit() returns, the wrappers until the trainer fits again or is freed (stepping one
 * after fit returned fails with EM_ESTATE). `*n` (may be NULL) receives the count.
 * Stepping a wrapper counts in global_step; stepping em_optimizer_inner(wrapper) does not.
 * Errors: NULL when called outside em_trainer_fit().
 */
EM_API em_optimizer **em_optimizers(em_module *m, size_t *n);

/**
 * The schedulers from configure_optimizers, in the order they were added. Lightning: lr_schedulers()
 * Borrowed, as em_optimizers. NULL with *n = 0 when there are none (not an error).
 */
EM_API em_scheduler **em_lr_schedulers(em_module *m, size_t *n);

/**
 * Back-propagate in manual optimization. Lightning: manual_backward(loss)
 * Runs on_before_backward, the backward hook (default em_backward), on_after_backward. No
 * normalisation. Under 16-mixed the loss is multiplied by the grad scaler's scale first, and the
 * hooks receive the scaled loss (as Lightning's). Under DDP the gradients are averaged across the
 * ranks during the backward (every call syncs, as Lightning's), except inside
 * em_no_backward_sync_begin/end.
 * Errors: EM_ESTATE in automatic optimization ("to use manual_backward, disable automatic
 * optimization") or outside fit; the backward's own failure.
 */
EM_API em_status em_manual_backward(em_module *m, em_tensor *loss);
/** As em_manual_backward, keeping the graph (torch: retain_graph=True). */
EM_API em_status em_manual_backward_retain(em_module *m, em_tensor *loss);

/**
 * Skip the gradient all-reduce of the backwards that follow, until the matching
 * em_no_backward_sync_end. Lightning: `with trainer.strategy.block_backward_sync()`
 * (em_toggle_model_begin with sync_grad false = em_toggle_optimizer + this). Gradients then accumulate
 * locally; the next backward that syncs averages the accumulated gradients. Nests. Without DDP it
 * does nothing. Errors: EM_ESTATE outside fit.
 */
EM_API em_status em_no_backward_sync_begin(em_module *m);
/** End the innermost em_no_backward_sync_begin. Errors: EM_ESTATE without one open. */
EM_API em_status em_no_backward_sync_end(em_module *m);

/**
 * Make only `opt`'s parameters require grad. Lightning: toggle_optimizer(opt)
 * Every parameter of every other optimizer gets requires_grad = false; `opt`'s keep their original
 * flag. Undone by em_untoggle_optimizer. Errors: EM_EINVAL for an optimizer not from em_optimizers.
 */
EM_API em_status em_toggle_optimizer(em_module *m, em_optimizer *opt);
/** Restore the flags changed by em_toggle_optimizer. Lightning: untoggle_optimizer(opt) */
EM_API em_status em_untoggle_optimizer(em_module *m, em_optimizer *opt);

/**
 * Open a toggle_model region for `opt`. Lightning: `with opt.toggle_model(sync_grad=...):`
 * (LightningOptimizer.toggle_model): em_toggle_optimizer(m, opt), and with `sync_grad` false also
 * em_no_backward_sync_begin(m), so the backwards inside accumulate gradients locally without an
 * all-reduce (under DDP; without DDP sync_grad changes nothing); the next backward that syncs
 * averages what accumulated. Close it with em_toggle_model_end(m, opt). Typical use, accumulating
 * in manual optimization (Lightning's docs):
 *
 *     bool last = (batch_idx + 1) % 2 == 0;
 *     em_toggle_model_begin(m, opt, last);   // sync only on the batch that steps
 *     em_manual_backward(m, loss);
 *     if (last) { em_optimizer_step(opt, NULL); em_optimizer_zero_grad(opt); }
 *     em_toggle_model_end(m, opt);
 *
 * Regions do not nest. A region left open when fit ends is closed with a warning; the flags it
 * froze stay frozen (as Lightning's, whose untoggle does not run when the body raises).
 * Errors: EM_EINVAL for a NULL argument or an optimizer not from em_optimizers; EM_ESTATE outside
 * fit or while a region is open (nothing changed then).
 */
EM_API em_status em_toggle_model_begin(em_module *m, em_optimizer *opt, bool sync_grad);
/**
 * Close the region em_toggle_model_begin(m, opt, ...) opened: em_untoggle_optimizer(m, opt), then
 * the end of its no-sync block (when sync_grad was false). Errors: EM_ESTATE outside fit, without an
 * open region, or when its no-sync block was already ended by an unmatched em_no_backward_sync_end
 * (the region is closed all the same, the flags restored); EM_EINVAL for a NULL argument or another
 * optimizer than the region's (the region stays open).
 */
EM_API em_status em_toggle_model_end(em_module *m, em_optimizer *opt);

/**
 * Clip the gradients of `opt`'s parameters. Lightning: clip_gradients(opt, val, algo)
 * `clip_val` NAN = the Trainer's value (or 0: no clipping); `algo` EM_CLIP_DEFAULT = the Trainer's
 * (or norm). clip_val <= 0 does nothing.
 * Under 16-mixed in manual optimization it first unscales `opt`'s gradients when they were not
 * unscaled since its last step (a deliberate difference from Lightning, which clips the scaled
 * gradients there: issue #18089), so the value means what it means in 32-true; in automatic
 * optimization the gradients are already unscaled when configure_gradient_clipping runs.
 * Errors: EM_EINVAL when a value differs from one set in the Trainer config ("set it in the Trainer
 * or pass it here, not both"); under 16-mixed or bf16-mixed, EM_EINVAL for clip_val > 0 with an
 * optimizer whose step unscales itself (ops step_supports_amp_scaling: "does not allow for gradient
 * clipping because it performs unscaling of gradients internally"); the unscaling's errors (amp.h).
 */
EM_API em_status em_clip_gradients(em_module *m, em_optimizer *opt, double clip_val, em_clip_algorithm algo);

/* ---- logging (self.log) ------------------------------------------------------------------------------ */

/** Flags of em_log(). on_step / on_epoch unset = the hook's default (Lightning's None). */
enum {
    EM_LOG_PROG_BAR = 1 << 0,    /* show on the progress bar */
    EM_LOG_ON_STEP = 1 << 1,     /* on_step=True */
    EM_LOG_NOT_ON_STEP = 1 << 2, /* on_step=False */
    EM_LOG_ON_EPOCH = 1 << 3,    /* on_epoch=True */
    EM_LOG_NOT_ON_EPOCH = 1 << 4,/* on_epoch=False */
    EM_LOG_NO_LOGGER = 1 << 5,   /* logger=False */
    EM_LOG_SYNC_DIST = 1 << 6,   /* sync_dist=True: under DDP the value is reduced across ranks with the
                                    metric's reduce_fx (mean: the mean of the ranks' values) when logged,
                                    and epoch values when computed; every rank must log it alike */
    EM_LOG_RANK_ZERO_ONLY = 1 << 7 /* rank_zero_only=True: never synced (Lightning's) */
};

/** Epoch reductions (Lightning's reduce_fx). */
typedef enum em_reduce_fx { EM_REDUCE_MEAN = 0, EM_REDUCE_SUM, EM_REDUCE_MAX, EM_REDUCE_MIN } em_reduce_fx;

/** Every option of self.log. All-zero = Lightning's defaults. */
typedef struct em_log_opts {
    unsigned flags;         /* EM_LOG_* */
    em_reduce_fx reduce_fx; /* mean */
    int64_t batch_size;     /* 0 = the batch's size (dim 0 of its first tensor) */
} em_log_opts;

/**
 * Log a scalar. Lightning: self.log(name, value, ...)
 * Errors: EM_ESTATE outside fit or in a hook where Lightning forbids logging; EM_EINVAL for both
 * on_step and on_epoch false, an empty name, or the same name logged twice in one hook with other
 * options. A NaN value is logged as NaN.
 */
EM_API em_status em_log(em_module *m, const char *name, double value, unsigned flags);
/** em_log with every option. */
EM_API em_status em_log_ex(em_module *m, const char *name, double value, const em_log_opts *opts);
/** Log a one-element tensor's value (detached). Errors as em_log, and for a NULL/non-scalar tensor. */
EM_API em_status em_log_tensor(em_module *m, const char *name, const em_tensor *value, unsigned flags);
/** Lightning: log_dict. Logs names[i] = values[i] for i < n with the same flags. */
EM_API em_status em_log_dict(em_module *m, const char *const *names, const double *values, size_t n,
                             unsigned flags);

/* ---- callbacks ----------------------------------------------------------------------------------------- */

/** The operations of a callback (Lightning's Callback). Every entry may be NULL. */
typedef struct em_callback_ops {
    int version; /* EM_CALLBACK_OPS_VERSION */
    const char *name;
    em_status (*on_fit_start)(em_callback *cb, em_trainer *t, em_module *m);
    em_status (*on_fit_end)(em_callback *cb, em_trainer *t, em_module *m);
    em_status (*on_train_start)(em_callback *cb, em_trainer *t, em_module *m);
    em_status (*on_train_end)(em_callback *cb, em_trainer *t, em_module *m);
    em_status (*on_train_epoch_start)(em_callback *cb, em_trainer *t, em_module *m);
    em_status (*on_train_epoch_end)(em_callback *cb, em_trainer *t, em_module *m);
    /** The return value is ignored, as Lightning ignores a callback's. */
    em_status (*on_train_batch_start)(em_callback *cb, em_trainer *t, em_module *m, const em_batch *b,
                                      int64_t batch_idx);
    em_status (*on_train_batch_end)(em_callback *cb, em_trainer *t, em_module *m, const em_tensor *loss,
                                    const em_batch *b, int64_t batch_idx);
    em_status (*on_before_backward)(em_callback *cb, em_trainer *t, em_module *m, em_tensor *loss);
    em_status (*on_after_backward)(em_callback *cb, em_trainer *t, em_module *m);
    em_status (*on_before_optimizer_step)(em_callback *cb, em_trainer *t, em_module *m, em_optimizer *opt);
    em_status (*on_before_zero_grad)(em_callback *cb, em_trainer *t, em_module *m, em_optimizer *opt);
    em_status (*on_validation_start)(em_callback *cb, em_trainer *t, em_module *m);
    em_status (*on_validation_end)(em_callback *cb, em_trainer *t, em_module *m);
    em_status (*on_validation_epoch_start)(em_callback *cb, em_trainer *t, em_module *m);
    em_status (*on_validation_epoch_end)(em_callback *cb, em_trainer *t, em_module *m);
    /** Optional: releases the state when the callback is freed. */
    void (*destroy)(void *state);
    /* ---- version 1 ends here ---- */
    /** Lightning's "monitoring callbacks" (EarlyStopping, ModelCheckpoint): true = this callback's
     *  on_train_epoch_end runs after the module's (so that it sees what the module logged there), the
     *  other callbacks' before it. Every other hook keeps the usual order. */
    bool monitoring;
    /* ---- version 2 ends here ---- */
    /**
     * Optional (version 3): this callback's state for a checkpoint (em_trainer_save_checkpoint; Lightning:
     * Callback.state_dict). Set *bytes to a buffer of *n bytes from malloc() (the trainer owns it from the
     * return on and frees it with free(), also when the call fails) or leave *bytes NULL for "no state".
     * The bytes are stored under the callback's name (ops->name), so two callbacks that keep state must
     * have different names. Return non-OK (with em_error_set) to make the save fail.
     */
    em_status (*state_save)(em_callback *cb, em_trainer *t, void **bytes, size_t *n);
    /**
     * Optional (version 3): restore what state_save wrote (Lightning: Callback.load_state_dict).
     * em_trainer_fit_from calls it after configure_optimizers and before on_fit_start, when the
     * checkpoint holds state under this callback's name. `bytes` is borrowed for the call. Check what
     * you read (the file may come from elsewhere); a non-OK return stops the fit before training.
     */
    em_status (*state_load)(em_callback *cb, em_trainer *t, const void *bytes, size_t n);
    /* ---- version 3 ends here ---- */
} em_callback_ops;
#define EM_CALLBACK_OPS_VERSION 3

/**
 * A callback driven by `ops`; `state` is yours (em_callback_state). Takes ownership of `state`,
 * also when it fails. Hand it to em_trainer_add_callback (which takes ownership of the callback).
 * Errors: NULL for NULL ops or a bad version.
 */
EM_API em_callback *em_callback_new(const em_callback_ops *ops, void *state);
/** The state pointer given to em_callback_new(). */
EM_API void *em_callback_state(const em_callback *cb);
/**
 * Free a callback that was not handed to a trainer. NULL is ignored. One handed to a trainer is not
 * freed: that records EM_EMISUSE (em_trainer_free frees it).
 * Misuse (best effort, common.h): freeing it twice, or passing it anywhere after, records EM_EMISUSE
 * and does nothing.
 */
EM_API void em_callback_free(em_callback *cb);

/**
 * Lightning's GradientAccumulationScheduler({epoch: factor, ...}): `schedule[i][0]` is a zero-indexed
 * epoch, `schedule[i][1]` the accumulation factor from that epoch on. {0: 1} is added when the
 * smallest epoch is not 0. The caller frees it with em_callback_free() unless it is handed to a trainer.
 * Errors: NULL for n == 0 ("empty dict cannot be interpreted correctly"), an epoch < 0
 * ("Epoch should be an int greater than or equal to 0") or a factor < 1 ("Accumulation factor should be
 * an int greater than 0"). At fit start it rejects manual optimization and a Trainer
 * accumulate_grad_batches != 1.
 */
EM_API em_callback *em_grad_accum_scheduler(const int64_t (*schedule)[2], size_t n);

/** The ops table `cb` was created with (to tell a built-in callback's kind); NULL for NULL. Borrowed. */
EM_API const em_callback_ops *em_callback_get_ops(const em_callback *cb);

/* ---- EarlyStopping ------------------------------------------------------------------------------------- */

/** One check of an EarlyStopping callback (what em_early_stopping_opts.on_check receives). */
typedef struct em_early_stopping_check {
    int64_t epoch;        /* trainer.current_epoch at the check */
    int64_t global_step;
    const char *hook;     /* "on_train_epoch_end" or "on_validation_end": where it ran */
    float value;          /* callback_metrics[monitor], as the float32 Lightning compares */
    bool should_stop;     /* this check signalled stop (under DDP: after reducing it over the ranks) */
    int64_t wait_count;   /* right after the check */
    float best_score;     /* right after the check; +inf (min) / -inf (max) before any improvement */
    const char *reason;   /* Lightning's message (also logged when verbose), or NULL when it has none */
} em_early_stopping_check;

/** EarlyStopping's arguments. Start from EM_EARLY_STOPPING_OPTS_INIT (Lightning's defaults). */
typedef struct em_early_stopping_opts {
    int version;                 /* EM_EARLY_STOPPING_OPTS_VERSION, set by the INIT */
    const char *monitor;         /* required: a callback_metrics key (copied) */
    double min_delta;            /* 0.0: an improvement must beat the best by more than this (sign by mode) */
    int64_t patience;            /* 3: checks (not epochs) without improvement before stopping */
    bool verbose;                /* false: true logs each reason through the log handler (EM_LEVEL_INFO) */
    const char *mode;            /* "min" (NULL = "min") or "max" */
    bool strict;                 /* true: a missing monitor fails fit; false: no check (warned when verbose) */
    bool check_finite;           /* true: stop when the monitor is NaN or infinite */
    double stopping_threshold;   /* NAN = None: stop once the monitor is past it */
    double divergence_threshold; /* NAN = None: stop once the monitor is worse than it */
    int check_on_train_epoch_end;/* -1 = None: decided at fit start as Lightning does (true when
                                    val_check_interval is 1.0 and check_val_every_n_epoch is 1); 0 = check
                                    in on_validation_end; 1 = in on_train_epoch_end */
    bool log_rank_zero_only;     /* false: only affects messages under several processes */
    /** Optional (an ember addition): called after every check that found the monitor. */
    void (*on_check)(void *user, const em_early_stopping_check *check);
    void *on_check_user;
} em_early_stopping_opts;
#define EM_EARLY_STOPPING_OPTS_VERSION 1
#define EM_EARLY_STOPPING_OPTS_INIT                                                                         \
    {.version = EM_EARLY_STOPPING_OPTS_VERSION, .monitor = NULL, .min_delta = 0.0, .patience = 3,        \
     .verbose = false, .mode = "min", .strict = true, .check_finite = true, .stopping_threshold = NAN,    \
     .divergence_threshold = NAN, .check_on_train_epoch_end = -1, .log_rank_zero_only = false,            \
     .on_check = NULL, .on_check_user = NULL}

/**
 * Lightning's EarlyStopping(monitor, min_delta, patience, ...): stop training when the monitored metric
 * stops improving. Each check reads callback_metrics[monitor] and takes the first branch that applies,
 * comparing in float32: not finite (check_finite) -> stop; past stopping_threshold -> stop; past
 * divergence_threshold -> stop; better than best_score by more than min_delta -> new best, wait_count 0;
 * otherwise wait_count + 1, stop once it reaches patience. Stopping sets the trainer's should_stop
 * (honoured once min_epochs / min_steps are met) and stopped_epoch. A monitoring callback: its
 * on_train_epoch_end runs after the module's. No check during the sanity check. Under DDP every rank
 * checks its own callback_metrics (equal across ranks only for EM_LOG_SYNC_DIST metrics) and the
 * decision is reduced with em_trainer_reduce_boolean_decision(all = false), as Lightning's: one rank
 * that wants to stop stops every rank; wait_count and best_score stay per rank; a failed reduction
 * fails fit. The caller frees it with em_callback_free() unless it is handed to a trainer (which frees it).
 * Errors: NULL for NULL opts, a bad version, no monitor, or an unknown mode ("`mode` can be min, max,
 * got X"). During fit: a missing monitor with strict fails fit with Lightning's RuntimeError message
 * ("Early stopping conditioned on metric `X` which is not available. ...").
 */
EM_API em_callback *em_early_stopping(const em_early_stopping_opts *opts);
/** Checks in a row without improvement. -1 when `cb` is not an EarlyStopping callback. */
EM_API int64_t em_early_stopping_wait_count(const em_callback *cb);
/** current_epoch of the last check that signalled stop; 0 if none. -1 when not an EarlyStopping. */
EM_API int64_t em_early_stopping_stopped_epoch(const em_callback *cb);
/** The best value so far (float32 values); +inf (min) / -inf (max) before the first; NAN when `cb` is
 *  not an EarlyStopping callback. */
EM_API double em_early_stopping_best_score(const em_callback *cb);

/* ---- LearningRateMonitor ----------------------------------------------------------------------------------- */

/** When LearningRateMonitor logs (Lightning's logging_interval). */
typedef enum em_lr_logging_interval {
    EM_LR_LOG_PER_SCHEDULER = 0, /* None: each scheduler at its own interval (step schedulers at the batches
                                    the logger writes, epoch ones at each epoch start); optimizers without a
                                    scheduler at both */
    EM_LR_LOG_STEP,              /* "step": everything at the batches the logger writes (log_every_n_steps) */
    EM_LR_LOG_EPOCH              /* "epoch": everything at each epoch start */
} em_lr_logging_interval;

/** LearningRateMonitor's arguments. All-zero (or NULL) = Lightning's defaults. */
typedef struct em_lr_monitor_opts {
    em_lr_logging_interval logging_interval; /* per scheduler */
    bool log_momentum;     /* false; true: "<name>-momentum" = beta1 (Adam, AdamW) or momentum (SGD,
                              RMSprop), 0 for an optimizer with neither (warned at train start) */
    bool log_weight_decay; /* false; true: "<name>-weight_decay" */
} em_lr_monitor_opts;

/**
 * Lightning's LearningRateMonitor: logs each optimizer's learning rate (and momentum / weight decay when
 * asked) to metrics.csv (at the logger's step, in rows of their own) and to callback_metrics. Names as
 * Lightning's: "lr-SGD", "lr-Adam-1" for the second Adam, "lr-Adam/pg1", "lr-Adam/pg2" for an optimizer
 * with several parameter groups, a scheduler config's name (em_scheduler_config.name) instead of
 * "lr-<class>". ember's parameter groups have no name of their own. The caller frees it with
 * em_callback_free() unless it is handed to a trainer.
 * Errors: NULL for an unknown logging_interval. At train start, fit fails without a logger
 * ("Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger.").
 */
EM_API em_callback *em_lr_monitor(const em_lr_monitor_opts *opts);
/** Lightning: len(lr_monitor.lrs): the names found at train start (and any that appeared later). 0 when
 *  `cb` is not a LearningRateMonitor. */
EM_API size_t em_lr_monitor_num_keys(const em_callback *cb);
/** Lightning: lr_monitor.lrs: the i-th name (borrowed) and, when not NULL, its logged learning rates in
 *  order (*lrs borrowed, *n of them; valid until the callback logs again or is freed). NULL out of range. */
EM_API const char *em_lr_monitor_key(const em_callback *cb, size_t i, const double **lrs, size_t *n);
/** Lightning: lr_monitor.last_momentum_values[name + "-momentum"] for the i-th name: false while None. */
EM_API bool em_lr_monitor_last_momentum(const em_callback *cb, size_t i, double *value);
/** Lightning: lr_monitor.last_weight_decay_values[name + "-weight_decay"]: false while None. */
EM_API bool em_lr_monitor_last_weight_decay(const em_callback *cb, size_t i, double *value);

/* ---- the NaN/Inf guard ------------------------------------------------------------------------------------- */

/** What the NaN guard checks besides the loss. All-zero (or NULL) = the loss only. */
typedef struct em_nan_guard_opts {
    bool check_grads;  /* every parameter's gradient before each optimizer step */
    bool check_params; /* every parameter after each training batch (Lightning 1.x's terminate_on_nan) */
} em_nan_guard_opts;

/**
 * An opt-in NaN/Inf guard (off unless added, as in Lightning): fit stops with EM_ERROR at the first loss
 * that is NaN or infinite, before its backward (the parameters stay the last finite ones), and, when
 * asked, at the first non-finite gradient (before the optimizer step) or parameter (after the batch).
 * em_trainer_error names the place and the value: "epoch 2, batch 17, on_before_backward: NaN guard: The
 * loss returned in `training_step` is nan." Parameters are named by the module's layers
 * (em_module.layers: "net.0.weight"), else by their position in the optimizers. Lightning 2.2.5 has
 * Trainer(detect_anomaly=True) (torch's anomaly mode) instead; this is the check of its former
 * Trainer(terminate_on_nan=True), with its messages. Checking costs one reduction per tensor.
 * The caller frees it with em_callback_free() unless it is handed to a trainer.
 * Errors: NULL when out of memory.
 */
EM_API em_callback *em_nan_guard(const em_nan_guard_opts *opts);

/* ---- ModelCheckpoint ------------------------------------------------------------------------------------- */

/** ModelCheckpoint's arguments. Start from EM_MODEL_CHECKPOINT_OPTS_INIT (Lightning 2.2.5's defaults). */
typedef struct em_model_checkpoint_opts {
    int version;                  /* EM_MODEL_CHECKPOINT_OPTS_VERSION, set by the INIT (1 is still read:
                                     the fields after version 1's end take their defaults) */
    const char *dirpath;          /* NULL: the logger's log_dir + "/checkpoints" (em_trainer_log_dir), or
                                     default_root_dir + "/checkpoints" without a logger, resolved at fit
                                     start. Given: made absolute and normalised ("~" expanded), as
                                     Lightning's os.path.realpath but without resolving symbolic links */
    const char *filename;         /* NULL = "{epoch}-{step}": a template of {name} or {name:spec} fields,
                                     spec as Python's format spec ("{epoch:02d}-{val_loss:.2f}"); "epoch"
                                     and "step" are integers, every other name a callback_metrics value;
                                     a missing name reads 0. '/' in the result makes subdirectories */
    const char *monitor;          /* NULL = None: save by schedule only (save_top_k -1, 0 or 1) */
    bool verbose;                 /* false: true logs each decision (EM_LEVEL_INFO) with Lightning's text */
    bool save_last;               /* false: true also writes "last.ckpt" (last_name) at every save */
    int64_t save_top_k;           /* 1; -1 = keep all, 0 = none */
    const char *mode;             /* "min" (NULL = "min") or "max" */
    bool auto_insert_metric_name; /* true: "{epoch}" -> "epoch=3"; false: "{epoch}" -> "3" */
    int64_t every_n_train_steps;  /* EM_NONE = None (0 when another trigger is set); 0 = never */
    int64_t every_n_epochs;       /* EM_NONE = None: 1 when no trigger is set, else 0 */
    double train_time_interval;   /* NAN = None; seconds between saves, checked after each training batch */
    int save_on_train_epoch_end;  /* -1 = None: decided at every check as Lightning (true without validation,
                                     or with validation once per epoch); 0 = in on_validation_end;
                                     1 = in on_train_epoch_end */
    bool enable_version_counter;  /* true: a name taken by a file gets "-v1", "-v2", ... */
    const char *last_name;        /* "last" (NULL = "last"): Lightning's CHECKPOINT_NAME_LAST, a template too */
    const char *file_extension;   /* ".ckpt" (NULL = ".ckpt"): Lightning's FILE_EXTENSION. The files are
                                     safetensors (em_trainer_save_checkpoint); the extension is Lightning's
                                     so that paths and globs carry over */
    /* ---- version 1 ends here ---- */
    bool save_weights_only;       /* false: Lightning's save_weights_only; true: every file it writes (last
                                     too) is em_trainer_save_checkpoint_ex(..., true)'s, the weights and
                                     the counters only, which em_trainer_fit_from refuses */
    bool save_last_link;          /* false: with save_last, Lightning's save_last="link": "last.ckpt" is a
                                     relative symbolic link to the newest checkpoint saved (a copy of it
                                     where links cannot be made) instead of a checkpoint of its own, once
                                     one was saved and save_top_k != 0. A directory in its place is an
                                     error (Lightning deletes it) */
} em_model_checkpoint_opts;
#define EM_MODEL_CHECKPOINT_OPTS_VERSION 2
#define EM_MODEL_CHECKPOINT_OPTS_INIT                                                                        \
    {.version = EM_MODEL_CHECKPOINT_OPTS_VERSION, .dirpath = NULL, .filename = NULL, .monitor = NULL,        \
     .verbose = false, .save_last = false, .save_top_k = 1, .mode = "min", .auto_insert_metric_name = true,   \
     .every_n_train_steps = EM_NONE, .every_n_epochs = EM_NONE, .train_time_interval = NAN,                  \
     .save_on_train_epoch_end = -1, .enable_version_counter = true, .last_name = "last",                      \
     .file_extension = ".ckpt", .save_weights_only = false, .save_last_link = false}

/**
 * Lightning's ModelCheckpoint: saves checkpoints (em_trainer_save_checkpoint: everything a resume needs)
 * during fit, by schedule and by a monitored metric. Lightning 2.2.5's semantics:
 *  - when: after a training batch whose global_step is a multiple of every_n_train_steps (or after
 *    train_time_interval seconds); at the end of every every_n_epochs-th epoch, in on_train_epoch_end
 *    (a monitoring callback: after the module's) or on_validation_end (save_on_train_epoch_end). Never
 *    during the sanity check, never twice at the same global_step, never before the first step.
 *  - what: with a monitor, the file joins the best save_top_k by the metric (mode min/max; compared in
 *    float32, strictly; a NaN is kept as +inf (min) / -inf (max)); the file that drops out of the top k
 *    is deleted. Without a monitor, each save replaces the previous (save_top_k 1) or all are kept (-1).
 *    With save_last, "last.ckpt" is written at every save (its previous name deleted when it changed).
 *  - names: filename formatted with epoch, step and callback_metrics, then "-v1", "-v2", ... while a
 *    file of that name exists (enable_version_counter), then file_extension.
 *  - files are deleted only inside dirpath, and never the one this fit resumed from.
 *  - under DDP every rank keeps the same file bookkeeping (the existence checks are rank 0's,
 *    broadcast); the top-k decision is unanimous, as Lightning's (each rank judges its own monitored
 *    value, which differ when it was logged without EM_LOG_SYNC_DIST; a file is saved only when every
 *    rank says so); only rank 0 writes and deletes files (em_trainer_is_global_zero).
 *  - a save killed midway leaves a temporary file (".NAME.tmp.PID.N.HOST"); the next save into that
 *    directory, or the next fit start, removes those made on this machine by processes that are gone
 *    (nothing else: another machine's, on a shared file system, are left to that machine).
 * Not there: to_yaml.
 * The caller frees it with em_callback_free() unless it is handed to a trainer (which frees it).
 * Errors: NULL with Lightning's message for save_top_k < -1 ("Invalid value for save_top_k=-3. Must be
 * >= -1"), every_n_train_steps or every_n_epochs < 0 ("Must be >= 0"), more than one trigger ("...
 * should be mutually exclusive."), save_top_k other than -1, 0, 1 without a monitor ("...is not a valid
 * configuration. No quantity for top_k to track."), an unknown mode ("`mode` can be min, max but got X"),
 * a bad version, a filename with an empty field. During fit: a monitor missing from callback_metrics once
 * validation has run fails fit (before that: warned once and skipped, as Lightning); a format spec that
 * does not fit the value fails fit; a save or a directory that cannot be written fails fit with the path
 * and errno's text.
 */
EM_API em_callback *em_model_checkpoint(const em_model_checkpoint_opts *opts);
/** Lightning: best_model_path ("" before any). Borrowed: valid until the callback saves again or is freed.
 *  NULL when `cb` is not a ModelCheckpoint. */
EM_API const char *em_model_checkpoint_best_model_path(const em_callback *cb);
/** Lightning: best_model_score: false while None (no monitor, or nothing saved yet). */
EM_API bool em_model_checkpoint_best_model_score(const em_callback *cb, double *score);
/** Lightning: current_score: the monitored value at the last top-k save; false while None. */
EM_API bool em_model_checkpoint_current_score(const em_callback *cb, double *score);
/** Lightning: last_model_path ("" before any), borrowed as best_model_path. */
EM_API const char *em_model_checkpoint_last_model_path(const em_callback *cb);
/** Lightning: kth_best_model_path ("" until save_top_k files are kept), borrowed as best_model_path. */
EM_API const char *em_model_checkpoint_kth_best_model_path(const em_callback *cb);
/** Lightning: kth_value (+inf (min) / -inf (max) until save_top_k files are kept); NAN when not a ModelCheckpoint. */
EM_API double em_model_checkpoint_kth_value(const em_callback *cb);
/** Lightning: len(best_k_models). 0 when `cb` is not a ModelCheckpoint. */
EM_API size_t em_model_checkpoint_num_best_k(const em_callback *cb);
/** Lightning: best_k_models, in insertion order: the i-th path (borrowed as best_model_path) and its score
 *  (when `score` is not NULL). NULL out of range. */
EM_API const char *em_model_checkpoint_best_k(const em_callback *cb, size_t i, double *score);
/** The directory in use (resolved at fit start; before, the given one or NULL). Borrowed as best_model_path. */
EM_API const char *em_model_checkpoint_dirpath(const em_callback *cb);
/**
 * Lightning: format_checkpoint_name(metrics, filename, ver): the path a save with these values would get
 * (dirpath joined when known, file_extension added). `names[i]` = `values[i]`; "epoch" and "step" are
 * integers (their values truncated), the rest floats; a missing field reads 0. `filename` NULL = the
 * callback's; `ver` 0 = no version suffix, else "-v<ver>". Writes at most `cap` bytes with the '\0' and
 * returns the full length (as snprintf), or -1 with an error recorded (EM_EINVAL: not a ModelCheckpoint,
 * a spec that does not fit the value, a field with no name).
 */
EM_API int64_t em_model_checkpoint_format_name(const em_callback *cb, const char *const *names,
                                               const double *values, size_t n, const char *filename,
                                               int64_t ver, char *buf, size_t cap);

/* ---- the trainer ---------------------------------------------------------------------------------------- */

/** Precision (Lightning's `precision=`). */
typedef enum em_precision {
    EM_PRECISION_32_TRUE = 0, /* "32-true" */
    EM_PRECISION_16_MIXED,    /* "16-mixed": autocast float16 and a grad scaler (amp.h). Without CUDA and
                                 without a grad_scaler in the config it runs as bf16-mixed, with Lightning's
                                 warning; see "16-mixed" below em_trainer_config */
    EM_PRECISION_BF16_MIXED   /* "bf16-mixed": autocast bfloat16 */
} em_precision;

/** Where training runs (Lightning's `accelerator=`). */
typedef enum em_accelerator {
    EM_ACCELERATOR_AUTO = 0, /* "auto": cuda where a GPU is visible to the linked libtorch and the module
                                has `layers` (which the trainer moves); else the CPU (a notice says so
                                when a GPU is there) */
    EM_ACCELERATOR_CPU,      /* "cpu" */
    EM_ACCELERATOR_CUDA      /* "cuda": cuda:LOCAL_RANK (cuda:0 in one process); fit stops with
                                EM_EUNSUPPORTED where no GPU is visible. Before configure_optimizers the
                                module's `layers` move there (required), and every batch before its step
                                function; tensors training_step makes itself go on em_trainer_device(t).
                                When fit returns the layers are back on the CPU (Lightning's teardown).
                                Under DDP the process group is NCCL's where libtorch has it (see
                                em_process_group_backend). */
} em_accelerator;

/** How training is spread over processes (Lightning's `strategy=`). */
typedef enum em_strategy {
    EM_STRATEGY_AUTO = 0, /* "auto": ddp when there is more than one process (devices x num_nodes, or the
                             WORLD_SIZE a launcher set), else single */
    EM_STRATEGY_SINGLE,   /* "single_device": one process */
    EM_STRATEGY_DDP       /* "ddp": distributed data parallel over c10d (Gloo or NCCL), also with one process */
} em_strategy;

/**
 * The c10d backend of the DDP process group (Lightning: DDPStrategy(process_group_backend=...)).
 * Resolved when a DDP fit starts; rank 0 logs it (Lightning's "distributed_backend=nccl" banner) and
 * em_trainer_process_group_backend returns it. Ignored by a fit that runs one process without DDP.
 */
typedef enum em_process_group_backend {
    EM_PG_BACKEND_AUTO = 0, /* Lightning's default: NCCL when the fit runs on CUDA, Gloo on the CPU. On CUDA
                               with a libtorch built without NCCL it takes Gloo, and logs why */
    EM_PG_BACKEND_GLOO,     /* "gloo": CPU and (where libtorch's Gloo has CUDA) GPU tensors */
    EM_PG_BACKEND_NCCL      /* "nccl": GPU tensors, one GPU per rank (cuda:LOCAL_RANK). The fit fails
                               before any process group exists with EM_EUNSUPPORTED when the linked
                               libtorch was built without NCCL, and EM_EINVAL when the fit does not run on
                               CUDA (accelerator cpu, or auto without a GPU) */
} em_process_group_backend;

/** A batch limit or an interval: a count of batches or a fraction of the epoch (Lightning's int vs float). */
typedef struct em_amount {
    bool is_fraction;
    double value;
} em_amount;
#define EM_BATCHES(k) ((em_amount){.is_fraction = false, .value = (double)(k)})
#define EM_FRACTION(f) ((em_amount){.is_fraction = true, .value = (f)})

/** Trainer arguments. Start from EM_TRAINER_CONFIG_INIT (Lightning 2.2.5's defaults). */
typedef struct em_trainer_config {
    int version;                    /* EM_TRAINER_CONFIG_VERSION, set by the INIT */
    int64_t max_epochs;             /* EM_NONE: 1000 when max_steps is -1 (with a warning), else -1 */
    int64_t min_epochs;             /* EM_NONE */
    int64_t max_steps;              /* -1 = no limit */
    int64_t min_steps;              /* EM_NONE */
    em_amount limit_train_batches;  /* EM_FRACTION(1.0) */
    em_amount limit_val_batches;    /* EM_FRACTION(1.0) */
    em_amount val_check_interval;   /* EM_FRACTION(1.0) */
    int64_t check_val_every_n_epoch;/* 1; EM_NONE = count batches across epochs */
    int64_t num_sanity_val_steps;   /* 2; -1 = all */
    int64_t accumulate_grad_batches;/* 1 */
    double gradient_clip_val;       /* NAN = None; <= 0 = no clipping */
    em_clip_algorithm gradient_clip_algorithm; /* EM_CLIP_DEFAULT = None (norm) */
    em_precision precision;         /* 32-true */
    bool enable_progress_bar;       /* true (stderr; in place on a TTY, periodic lines otherwise) */
    bool enable_csv_logger;         /* true: default_root_dir/lightning_logs/version_N/metrics.csv */
    int64_t log_every_n_steps;      /* 50 */
    const char *default_root_dir;   /* NULL = the current directory */
    const char *log_dir;            /* NULL = default_root_dir/lightning_logs/version_N (the next free N):
                                       the directory of metrics.csv (Lightning: CSVLogger's log_dir) */
    int64_t seed;                   /* -1 = do not seed; else em_manual_seed(seed) at fit start */
    const char *trace_path;         /* NULL; a file: one JSON line per training_step call / optimizer step */
    /* ---- version 1 ends here; version 2 adds the fields below (a version-1 caller's struct is read
     * only up to here, the rest taken as zero) ---- */
    /* 16-mixed grad scaler */
    em_grad_scaler *grad_scaler;    /* NULL: 16-mixed on CUDA uses a scaler of the trainer's own with torch's
                                       defaults (em_trainer_grad_scaler); set: 16-mixed uses this one, on the
                                       CPU too (Lightning: plugins=[MixedPrecision("16-mixed", device,
                                       scaler)]). Borrowed: it must outlive the trainer's fits. Rejected with
                                       any other precision. */
    /* devices and strategy */
    em_accelerator accelerator;     /* auto */
    int64_t devices;                /* 0 = auto: 1, or the processes per node torchrun started; N > 1 without a
                                       launcher: fit starts N-1 more processes running this program (DDP) */
    int64_t num_nodes;              /* 1 */
    em_strategy strategy;           /* auto */
    bool use_distributed_sampler;   /* true: under DDP the built-in loader samples as the DistributedSampler
                                       Lightning injects (training: shuffled, seed cfg.seed or 0) */
    double ddp_timeout;             /* 60: seconds a rank waits for the others (rendezvous, each collective)
                                       before fit fails naming the rank that is gone */
    /* ---- version 3 adds the field below (a version-2 caller's struct ends above it; it is taken as
     * EM_PG_BACKEND_AUTO) ---- */
    em_process_group_backend process_group_backend; /* auto: NCCL on CUDA, Gloo on the CPU */
} em_trainer_config;
#define EM_TRAINER_CONFIG_VERSION 3
#define EM_TRAINER_CONFIG_INIT                                                                          \
    {.version = EM_TRAINER_CONFIG_VERSION, .max_epochs = EM_NONE, .min_epochs = EM_NONE, .max_steps = -1,  \
     .min_steps = EM_NONE, .limit_train_batches = {true, 1.0}, .limit_val_batches = {true, 1.0},          \
     .val_check_interval = {true, 1.0}, .check_val_every_n_epoch = 1, .num_sanity_val_steps = 2,          \
     .accumulate_grad_batches = 1, .gradient_clip_val = NAN, .gradient_clip_algorithm = EM_CLIP_DEFAULT,   \
     .precision = EM_PRECISION_32_TRUE, .enable_progress_bar = true, .enable_csv_logger = true,           \
     .log_every_n_steps = 50, .default_root_dir = NULL, .log_dir = NULL, .seed = -1,               \
     .trace_path = NULL, .accelerator = EM_ACCELERATOR_AUTO, .devices = 0, .num_nodes = 1,                 \
     .strategy = EM_STRATEGY_AUTO, .use_distributed_sampler = true, .ddp_timeout = 60.0,                 \
     .process_group_backend = EM_PG_BACKEND_AUTO}

/*
 * 16-mixed (Lightning 2.2.5's MixedPrecision("16-mixed") with torch's GradScaler):
 *  - training_step and validation_step run under autocast float16 on the batch's device. On the CPU
 *    libtorch autocasts to float16 from torch 2.5; with an older libtorch (Debian's 1.13) ember does
 *    what Python's torch.autocast("cpu", dtype=torch.half) does there: it warns once per fit ("In CPU
 *    autocast, but the target dtype is not supported. Disabling autocast.") and runs them in float32,
 *    while the scaler still works.
 *  - backward (automatic, and em_manual_backward) gets the loss multiplied by the scale: on_before_backward
 *    and the backward hook receive the scaled loss (a float32 tensor of shape (1,), as torch's).
 *  - at each optimizer step: the closure runs once, outside the optimizer; the gradients are unscaled
 *    (once) before on_before_optimizer_step and clipping, so both see true gradients; then the scaler
 *    steps the optimizer unless a gradient is inf/NaN and updates the scale. global_step, schedulers
 *    and callbacks count a skipped update as a step, as Lightning does. A training_step that returns
 *    none (automatic) skips unscale, step and update; the hooks and clipping still run.
 *  - LBFGS, or an optimizer written in C whose ops set requires_closure, stops fit before training
 *    ("AMP and the LBFGS optimizer are not compatible."; Lightning finds it at the first step).
 *  - clipping with an optimizer whose ops set step_supports_amp_scaling (torch's fused optimizers) and a
 *    clip value > 0 fails, as Lightning's ("does not allow for gradient clipping ...").
 *  - one deliberate difference: em_clip_gradients in manual optimization unscales the optimizer's
 *    gradients first (once per step; the step then does not unscale again), so a clip value means what
 *    it means in 32-true. Lightning clips the still-scaled gradients there (its issue #18089).
 * Which scaler: the config's grad_scaler, or without one (on CUDA) a default scaler the trainer creates
 * at the first such fit and keeps until em_trainer_free; em_trainer_grad_scaler returns it. Without
 * CUDA and without a grad_scaler, 16-mixed runs as bf16-mixed with Lightning's warning ("You passed
 * `Trainer(accelerator='cpu', precision='16-mixed')` but AMP with fp16 is not supported on CPU. Using
 * `precision='bf16-mixed'` instead.").
 */

/**
 * A trainer with configuration `cfg` (copied, strings included). Lightning: Trainer(...)
 * The caller frees it with em_trainer_free().
 * Errors: NULL with a message that says what to change for every invalid value Lightning rejects at
 * construction (max_epochs < -1, a limit outside [0, 1] that is not a count, an unknown clip
 * algorithm, ...) and for those it lets through and crashes on later (accumulate_grad_batches < 1,
 * negative min_epochs or min_steps), for a version of 0 (the INIT was forgotten), and for a
 * grad_scaler with a precision other than 16-mixed ("`precision='bf16-mixed'` does not use a scaler").
 */
EM_API em_trainer *em_trainer_new(const em_trainer_config *cfg);

/**
 * Add a callback. Takes ownership of `cb`, also when it fails, unless it already belongs to a trainer.
 * Callbacks run in the order added, before the module's hook of the same name (as Lightning's).
 * Errors: EM_EINVAL for NULL; EM_ESTATE during fit; EM_EMISUSE for a callback added before, to this
 * trainer or another (it stays with that trainer): create one callback per trainer.
 */
EM_API em_status em_trainer_add_callback(em_trainer *t, em_callback *cb);

/**
 * Train `m` on `train` (required) and validate on `val` (may be NULL). Lightning: trainer.fit(...)
 * The loaders stay the caller's. A trainer can fit more than once; counters restart each time.
 * Returns EM_OK, or the failure: EM_EINVAL for a configuration rejected before training (message
 * says what to change), a callback's status (EM_EUSER, ...) or EM_ETORCH. em_trainer_error(t)
 * says what and where ("epoch 0, batch 3, training_step: em_mse_loss: ...").
 */
EM_API em_status em_trainer_fit(em_trainer *t, em_module *m, em_loader *train, em_loader *val);

/* ---- checkpoints and resume ------------------------------------------------------------------------------
 *
 * em_trainer_save_checkpoint writes everything needed to continue a fit exactly where it was, and
 * em_trainer_fit_from continues from such a file (Lightning: trainer.save_checkpoint / trainer.fit(model,
 * ckpt_path=...)). The trajectory after the save point (every loss, learning rate and logged value) and
 * the final weights of a fit interrupted and resumed equal those of the uninterrupted fit bit for bit, also
 * mid-epoch and mid-accumulation-window (Lightning restarts mid-epoch runs only approximately; ember is
 * exact). The file is one safetensors file (em_checkpoint_save's format, version "2", plus the trainer's
 * state); see README "Checkpoints and resume" for what it holds.
 */

/**
 * Save the fit's state to `path` (written atomically, as em_safetensors_write: a crash leaves any previous
 * file at `path` intact). Call it from a callback's or the module's hook during fit, in
 * on_train_batch_end (after the batch's optimizer step, or mid-accumulation-window: the accumulated
 * gradients are saved), on_train_epoch_end or on_validation_end (not during the sanity check), or after
 * a fit that succeeded (before the next fit; the module must still be alive). The state is the one when
 * it is called: hooks of the same event that run after the caller in that batch (later callbacks, the
 * module's hook) are not run again on resume, so save from the last callback (as Lightning runs
 * ModelCheckpoint last) or at the end of the module's hook.
 * It holds: the module's `layers` (parameters and buffers; without layers, the optimizers' parameters),
 * every optimizer's state and hyper-parameters, every scheduler's state, the grad scaler, the loop's
 * counters and the logged values the loop still reduces, the accumulated gradients mid-window, the
 * global CPU (and CUDA) generators' states, and each callback's state_save bytes.
 * Under DDP every rank must call it at the same point (it is collective: rank 0 gathers each rank's RNG
 * state and, mid-window, each rank's local gradients); only global rank 0 writes, the others return EM_OK
 * once rank 0 has written.
 * Errors: EM_EINVAL for NULL; EM_ESTATE from another hook, during the sanity check, after a failed fit or
 * before any fit; EM_EUNSUPPORTED for an optimizer or scheduler whose state cannot be saved (an optimizer
 * written in C without state ops: the message names it); EM_EINVAL for two stateful callbacks with one
 * name; as em_safetensors_write (EM_EIO with the path and errno text).
 */
EM_API em_status em_trainer_save_checkpoint(em_trainer *t, const char *path);

/**
 * em_trainer_save_checkpoint, or with `weights_only` (Lightning: trainer.save_checkpoint(filepath,
 * weights_only=True)) a file that holds only the module's weights ("model.<name>"; without layers, the
 * optimizers' parameters as "trainer.params.<k>.<i>") and the loop's counters: no optimizer, scheduler,
 * scaler, generator or callback state, no gradients. em_checkpoint_load(path, net, NULL, 0, NULL, 0)
 * loads its weights into a layer built as the module's; em_trainer_fit_from refuses it, with Lightning's
 * message ("Trying to restore optimizer state but checkpoint contains only the model. This is probably
 * due to `ModelCheckpoint.save_weights_only` being set to `True`."). When and where it may be called,
 * DDP and errors: as em_trainer_save_checkpoint (a weights-only save needs no optimizer state ops).
 */
EM_API em_status em_trainer_save_checkpoint_ex(em_trainer *t, const char *path, bool weights_only);

/**
 * em_trainer_fit, continuing from the checkpoint at `ckpt_path` (Lightning: trainer.fit(model, train, val,
 * ckpt_path=...)). NULL = em_trainer_fit. "last" = Lightning's: the newest (by modification time) of the
 * ModelCheckpoint callbacks' last_model_path and the last*.ckpt files in their dirpath
 * (em_trainer_ckpt_path says which); when there is none yet, Lightning's warning (".fit(ckpt_path="last")
 * is set, but there is no last checkpoint available. No checkpoint will be loaded. ...") and a fresh fit;
 * without a ModelCheckpoint callback, EM_EINVAL. Build the trainer, module,
 * loaders and callbacks as for the interrupted fit (the same config, seed and data); the checkpoint then
 * replaces the weights, optimizer and scheduler state, counters, RNG states and callback state, and the
 * loop continues at the save point: the epoch and batch it was in (the skipped batches are not run
 * through the model: the loader is asked for batch B of epoch E directly), without the sanity check
 * (Lightning skips it on restart). max_epochs / max_steps may be raised to train further.
 * Errors: as em_trainer_fit; EM_EINVAL (before anything is changed, with the path and what differs) for a
 * file that is not an ember trainer checkpoint or is corrupted or truncated (the reader's message), and
 * for a checkpoint of another setup: other parameter names or shapes, another number or type of
 * optimizers or schedulers, manual vs automatic optimization, another precision's grad scaler, another
 * number of training batches per epoch; EM_EIO when it cannot be read.
 */
EM_API em_status em_trainer_fit_from(em_trainer *t, em_module *m, em_loader *train, em_loader *val,
                                     const char *ckpt_path);

/**
 * Lightning: trainer.ckpt_path: the checkpoint the current (or last) fit resumed from, with "last"
 * resolved to the file; NULL for a fit that did not resume (em_trainer_fit, or "last" with no last
 * checkpoint yet). Set before configure_optimizers, so a hook can print it. Borrowed: valid until the next
 * fit or em_trainer_free. NULL for NULL.
 */
EM_API const char *em_trainer_ckpt_path(const em_trainer *t);

/** The message of the last failed em_trainer_fit (or ""). Borrowed: valid until the next fit or free. */
EM_API const char *em_trainer_error(const em_trainer *t);

/**
 * Free a trainer (and the callbacks, optimizers and schedulers it owns). NULL is ignored.
 * Misuse (best effort, common.h): freeing it twice, or passing it anywhere after, records EM_EMISUSE
 * and does nothing; so does freeing it from one of its own hooks while it fits.
 */
EM_API void em_trainer_free(em_trainer *t);

/* ---- distributed data parallel ---------------------------------------------------------------------------
 *
 * With strategy DDP (EM_STRATEGY_DDP, or AUTO with more than one process), every process runs the
 * whole program and trains one replica; gradients are averaged across them (a c10d all-reduce, Gloo
 * on the CPU and NCCL on CUDA (em_process_group_backend), in buckets, 1 MiB first and 25 MiB after as torch's, started from autograd hooks as buckets fill,
 * none on accumulating batches) and rank 0's parameters and buffers (those of the module's
 * `layers`, and every optimizer's parameters) are broadcast when fit starts. Ranks come from torchrun (`torchrun --no-python --nproc_per_node=N
 * ./app`; --nnodes for several machines), from SLURM (`srun ./app`), or from ember itself: with
 * devices = N > 1 and no launcher's variables, em_trainer_fit re-executes this program
 * (/proc/self/exe, same arguments) N-1 times with LOCAL_RANK, NODE_RANK, WORLD_SIZE, MASTER_ADDR and
 * MASTER_PORT set, as Lightning's subprocess launcher. THE PROGRAM RUNS FROM THE TOP IN EVERY RANK:
 * everything before fit (data, model, config) must come out the same in each (seed it), and output
 * meant once should be guarded by em_trainer_is_global_zero(). The launched ranks die with the thread
 * that launched them (PR_SET_PDEATHSIG) and are collected when rank 0 exits (killed if they outlive
 * it by ddp_timeout) or at once when rank 0's fit fails. A rank that fails or is killed makes the
 * others' fit return an error naming it within ddp_timeout. Only rank 0 shows the progress bar and
 * writes metrics.csv. The built-in loader samples as the DistributedSampler Lightning injects
 * (use_distributed_sampler): the training loader shuffled (also when its own shuffle is off, as
 * Lightning's), the validation loader as its own option, seeded with cfg.seed (0 when unset); its
 * batch_size and drop_last apply to each rank's share. Loaders written in C get the rank through
 * ops->set_distributed.
 */

/** This process's rank among all (Lightning: trainer.global_rank): 0 without DDP; known from
 *  em_trainer_new on (the launcher's variables). -1 for NULL. */
EM_API int64_t em_trainer_global_rank(const em_trainer *t);
/** The rank within this node (trainer.local_rank). -1 for NULL. */
EM_API int64_t em_trainer_local_rank(const em_trainer *t);
/** The node's rank (trainer.node_rank). -1 for NULL. */
EM_API int64_t em_trainer_node_rank(const em_trainer *t);
/** The number of processes (trainer.world_size): devices x num_nodes, or the launcher's WORLD_SIZE. */
EM_API int64_t em_trainer_world_size(const em_trainer *t);
/** The device training runs on (Lightning: LightningModule.device, as of the last fit start; the CPU
 *  before the first fit and for NULL). */
EM_API em_device em_trainer_device(const em_trainer *t);
/** The rendezvous host (the cluster environment's main_address), as read by em_trainer_new: MASTER_ADDR;
 *  under SLURM without it, the first host of SLURM_NODELIST as Lightning's SLURMEnvironment picks it
 *  ("node[1-3,5],other" -> "node1", "host0 host1" -> "host0"); else "127.0.0.1". Owned by the trainer,
 *  valid until em_trainer_free. NULL for NULL. */
EM_API const char *em_trainer_main_address(const em_trainer *t);
/** The rendezvous port (main_port), as read by em_trainer_new: MASTER_PORT; under SLURM without it,
 *  15000 + the last 4 digits of SLURM_JOB_ID (12910 without a job id), as Lightning 2.2.5; -1 when
 *  unset (ember's launcher then binds a free port); -2 for NULL. */
EM_API int64_t em_trainer_main_port(const em_trainer *t);
/** The backend of the process group the last DDP fit of this trainer used (Lightning:
 *  trainer.strategy.process_group_backend): EM_PG_BACKEND_GLOO or EM_PG_BACKEND_NCCL, never AUTO once
 *  a DDP fit got past its setup; EM_PG_BACKEND_AUTO before that, after a fit without DDP, and for NULL. */
EM_API em_process_group_backend em_trainer_process_group_backend(const em_trainer *t);
/** Whether the linked libtorch has this c10d backend (torch.distributed.is_gloo_available /
 *  is_nccl_available); EM_PG_BACKEND_AUTO: true. Says nothing about GPUs being visible
 *  (em_cuda_is_available). */
EM_API bool em_process_group_backend_available(em_process_group_backend b);
/** "auto", "gloo" or "nccl" (Lightning's strings); "?" for a value outside the enum. Static storage. */
EM_API const char *em_process_group_backend_name(em_process_group_backend b);
/** Whether this is rank 0 (trainer.is_global_zero): the one that prints. */
EM_API bool em_trainer_is_global_zero(const em_trainer *t);
/** Gradient all-reduces (one per bucket) this trainer's last or current fit ran: with one bucket,
 *  the optimizer steps (accumulating batches and no-sync regions run none). -1 for NULL. */
EM_API int64_t em_trainer_grad_allreduces(const em_trainer *t);
/**
 * Wait until every rank calls it (trainer.strategy.barrier()). A no-op without DDP.
 * Errors: EM_ESTATE under a DDP config before the first fit made the process group; EM_ETORCH when
 * a rank is gone or the timeout passed (the message names the rank where it can).
 */
EM_API em_status em_trainer_barrier(em_trainer *t);
/**
 * Copy `size` bytes of rank `root`'s `buf` into every rank's `buf` (trainer.strategy.broadcast). Every
 * rank must call it with the same size and root. A no-op without DDP. Errors: as em_trainer_barrier;
 * EM_EINVAL for a NULL buf or a root outside the world.
 */
EM_API em_status em_trainer_broadcast(em_trainer *t, void *buf, size_t size, int64_t root);
/**
 * Combine every rank's `decision` (trainer.strategy.reduce_boolean_decision): with `all`, true only
 * when every rank's is true; without, true when any rank's is (EarlyStopping uses that, so one rank
 * that wants to stop stops them all). Every rank must call it. Writes the result to `*out`; without
 * DDP it is `decision`. Errors: as em_trainer_barrier (then `*out` is the rank's own decision);
 * EM_EINVAL for a NULL out.
 */
EM_API em_status em_trainer_reduce_boolean_decision(em_trainer *t, bool decision, bool all, bool *out);

/* ---- trainer state (Lightning's trainer properties) ------------------------------------------------------ */

/** Completed epochs; inside epoch e it reads e. Lightning: trainer.current_epoch */
EM_API int64_t em_trainer_current_epoch(const em_trainer *t);
/** Lightning: trainer.global_step (optimizer steps; manual: wrapped step() calls of all optimizers). */
EM_API int64_t em_trainer_global_step(const em_trainer *t);
/** Index of the current batch within the epoch. */
EM_API int64_t em_trainer_batch_idx(const em_trainer *t);
/** Lightning: trainer.is_last_batch */
EM_API bool em_trainer_is_last_batch(const em_trainer *t);
/** Lightning: trainer.num_training_batches for the current fit (after limit_train_batches). */
EM_API int64_t em_trainer_num_training_batches(const em_trainer *t);
/** The accumulation factor in force (the GradientAccumulationScheduler changes it per epoch). */
EM_API int64_t em_trainer_accumulate_grad_batches(const em_trainer *t);
/** Set it (for callbacks written in C; Lightning: trainer.accumulate_grad_batches = k). Errors: EM_EINVAL for k < 1. */
EM_API em_status em_trainer_set_accumulate_grad_batches(em_trainer *t, int64_t k);
/**
 * Lightning: trainer.estimated_stepping_batches (ceil(N / A) * max_epochs, capped by max_steps; INFINITY
 * when unbounded). Available from configure_optimizers on.
 */
EM_API double em_trainer_estimated_stepping_batches(const em_trainer *t);
/**
 * The grad scaler 16-mixed uses (Lightning: trainer.precision_plugin.scaler): the config's, or the
 * trainer's own once a fit ran 16-mixed on CUDA without one; NULL otherwise (32-true, bf16-mixed,
 * 16-mixed run as bf16-mixed). Borrowed: the trainer's own lives until em_trainer_free. Read or set
 * its state with em_grad_scaler_get_state / em_grad_scaler_set_state (what a checkpoint saves).
 */
EM_API em_grad_scaler *em_trainer_grad_scaler(const em_trainer *t);
/** Lightning: trainer.val_check_interval (the Trainer argument as given). EM_FRACTION(NAN) for NULL. */
EM_API em_amount em_trainer_val_check_interval(const em_trainer *t);
/** Lightning: trainer.check_val_every_n_epoch (the Trainer argument; EM_NONE for None). */
EM_API int64_t em_trainer_check_val_every_n_epoch(const em_trainer *t);
/** Lightning: trainer.min_epochs as the fit loop resolved it at fit start (the argument, or 1 when only
 *  min_steps is set, else 0). -1 for NULL. */
EM_API int64_t em_trainer_min_epochs(const em_trainer *t);
/** Lightning: trainer.min_steps (EM_NONE for None), as of the last fit start. -1 for NULL. */
EM_API int64_t em_trainer_min_steps(const em_trainer *t);
/** Lightning: trainer.should_stop */
EM_API bool em_trainer_should_stop(const em_trainer *t);
/** Ask the loop to stop (honoured once min_epochs / min_steps are met). */
EM_API void em_trainer_set_should_stop(em_trainer *t, bool stop);
/** Lightning: len(trainer.optimizers): those of configure_optimizers, from then until the next fit or
 *  em_trainer_free (0 before). */
EM_API size_t em_trainer_num_optimizers(const em_trainer *t);
/** Lightning: trainer.optimizers[i]: the raw optimizer (not the LightningOptimizer wrapper em_optimizers
 *  returns). Borrowed, owned by the trainer. NULL when out of range. */
EM_API em_optimizer *em_trainer_optimizer(const em_trainer *t, size_t i);
/** Lightning: len(trainer.lr_scheduler_configs), kept as the optimizers are (0 before configure_optimizers). */
EM_API size_t em_trainer_num_lr_schedulers(const em_trainer *t);
/**
 * Lightning: trainer.lr_scheduler_configs[i]: the scheduler (borrowed, owned by the trainer) and, when
 * `config` is not NULL, its config as the trainer resolved it (frequency >= 1; monitor and name borrowed,
 * valid until the trainer fits again or is freed). NULL when out of range.
 */
EM_API em_scheduler *em_trainer_lr_scheduler(const em_trainer *t, size_t i, em_scheduler_config *config);
/** Lightning: bool(trainer.loggers): whether this fit writes metrics.csv (cfg.enable_csv_logger). */
EM_API bool em_trainer_has_logger(const em_trainer *t);
/** Lightning: trainer.log_dir as the CSV logger resolved it (default_root_dir/lightning_logs/version_N, or
 *  cfg.log_dir) during a fit that writes metrics.csv, on rank 0; NULL otherwise (no logger, another rank,
 *  outside fit). Borrowed: valid until the fit returns. */
EM_API const char *em_trainer_log_dir(const em_trainer *t);
/** Lightning: trainer.default_root_dir (the config's, "." when unset). Borrowed: valid until em_trainer_free. */
EM_API const char *em_trainer_default_root_dir(const em_trainer *t);
/** Lightning: sum(trainer.num_val_batches) for the current fit (after limit_val_batches): 0 without a
 *  validation loader or validation_step. -1 for NULL. */
EM_API int64_t em_trainer_num_val_batches(const em_trainer *t);
/** Lightning: trainer._logger_connector.should_update_logs: (batches that stepped + 1) is a multiple of
 *  log_every_n_steps, or should_stop is set. */
EM_API bool em_trainer_should_update_logs(const em_trainer *t);
/**
 * Lightning: `for logger in trainer.loggers: logger.log_metrics(metrics, step=batches_that_stepped)`:
 * one metrics.csv row with these n values at the logger's current step (no "epoch" column is added:
 * the loggers are called directly). Nothing is written when the trainer has no logger.
 * Errors: EM_EINVAL for NULL arguments, EM_ESTATE outside fit, the logger's EM_EIO (recorded as the
 * fit's failure).
 */
EM_API em_status em_trainer_log_metrics(em_trainer *t, const char *const *names, const double *values, size_t n);
/** Lightning: trainer.callback_metrics[name] = value (a callback's own entry; self.log's results overwrite
 *  an entry of the same name when they are refreshed). Errors: EM_EINVAL for NULL, EM_ESTATE outside fit. */
EM_API em_status em_trainer_set_callback_metric(em_trainer *t, const char *name, double value);
/** Lightning: trainer.sanity_checking */
EM_API bool em_trainer_sanity_checking(const em_trainer *t);
/**
 * Look up trainer.callback_metrics[name]. Returns true and sets *value when present.
 */
EM_API bool em_trainer_callback_metric(const em_trainer *t, const char *name, double *value);
/** Number of callback metrics; with em_trainer_callback_metric_at to list them. */
EM_API size_t em_trainer_num_callback_metrics(const em_trainer *t);
/** The i-th callback metric's name (borrowed, valid until the metrics change) and value. NULL when out of range. */
EM_API const char *em_trainer_callback_metric_at(const em_trainer *t, size_t i, double *value);
/** Number of progress bar metrics (Lightning: trainer.progress_bar_metrics: what was logged with
 *  EM_LOG_PROG_BAR, under its logged or forked name). List them with em_trainer_progress_bar_metric_at. */
EM_API size_t em_trainer_num_progress_bar_metrics(const em_trainer *t);
/** The i-th progress bar metric's name (borrowed, valid until the metrics change) and value; NULL when
 *  out of range. */
EM_API const char *em_trainer_progress_bar_metric_at(const em_trainer *t, size_t i, double *value);

EM_END_DECLS

#endif /* EMBER_TRAINER_H */
