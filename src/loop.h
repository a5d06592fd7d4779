/* loop.h: the trainer's internals, shared by the src/ files that make up the loop.
 *
 * Lightning maps onto these files (one responsibility each):
 *   trainer.c    Trainer / _FitLoop / _TrainingEpochLoop: epochs, batches, stop conditions, validation
 *   automatic.c  _AutomaticOptimization, Closure, _should_accumulate, _update_learning_rates
 *   manual.c     _ManualOptimization, manual_backward, toggle_optimizer
 *   optimizer.c  LightningOptimizer and the precision plugin's optimizer_step, clip_gradients
 *   setup.c      configure_optimizers' builder and its validation
 *   metrics.c    self.log, callback_metrics, epoch reduction, the CSV logger
 *   progress.c   the progress bar
 *   loader.c     loaders
 *   callbacks.c  callbacks, GradientAccumulationScheduler
 */
#ifndef EMBER_LOOP_H
#define EMBER_LOOP_H

#include <stdio.h>

#include "backend.h"          /* emi_fail, emi_optimizer_wrap, autocast */
#include "ember/trainer.h"

#define EMI_MAX_OPTIMIZERS 64

/* ---- configure_optimizers ---------------------------------------------------------------------- */

typedef struct emi_sched_entry {
    em_scheduler *sched;        /* owned */
    em_scheduler_config cfg;    /* frequency resolved (>= 1); strings owned */
    size_t opt_index;           /* which optimizer it drives */
    bool plateau;
} emi_sched_entry;

struct em_optim_setup {
    em_trainer *t;
    em_optimizer **opts;   /* owned raw optimizers */
    size_t n_opts, cap_opts;
    emi_sched_entry *scheds;
    size_t n_scheds, cap_scheds;
};

void setup_init(em_optim_setup *s, em_trainer *t);
void setup_free(em_optim_setup *s); /* frees optimizers and schedulers */
/* Checks after configure_optimizers (§10 #15, #19, #20, #22). */
em_status setup_validate(em_optim_setup *s);

/* ---- metrics ---------------------------------------------------------------------------------------- */

typedef struct emi_metric {
    char *name;          /* the logged name */
    const char *fx;      /* the hook it was logged from (a static string) */
    bool on_step, on_epoch, prog_bar, logger;
    em_reduce_fx reduce;
    double last;         /* step value: the last one logged */
    double acc;          /* epoch accumulator: Σ value * batch_size (mean), Σ value (sum), max or min */
    double weight;       /* Σ batch_size (mean) */
    bool has_value;
} emi_metric;

/* Lightning's _ResultCollection: what one stage (train or val) logged since its last reset. */
typedef struct emi_results {
    emi_metric *items;
    size_t n, cap;
} emi_results;

typedef struct emi_kv {
    char *name;
    double value;
} emi_kv;

typedef struct emi_kvlist {
    emi_kv *items;
    size_t n, cap;
} emi_kvlist;

typedef struct emi_metrics {
    emi_results train, val;
    bool train_epoch_end;  /* Lightning's _first_loop_iter is None: train results read as epoch values */
    emi_kvlist callback;   /* callback_metrics */
    emi_kvlist progbar;    /* progress bar metrics */
    /* the CSV logger (Lightning's CSVLogger: default_root_dir/lightning_logs/version_N/metrics.csv) */
    char *csv_path;
    emi_kvlist csv_keys;   /* sorted column names (values unused) */
    emi_kvlist *csv_rows;
    size_t n_rows, cap_rows;
} emi_metrics;

void kvlist_set(emi_kvlist *l, const char *name, double v);
bool kvlist_get(const emi_kvlist *l, const char *name, double *v);
void kvlist_free(emi_kvlist *l);

/* ---- the trainer ------------------------------------------------------------------------------------ */

typedef enum emi_stage { EMI_STAGE_NONE = 0, EMI_STAGE_TRAIN, EMI_STAGE_VAL, EMI_STAGE_SANITY } emi_stage;

struct em_trainer {
    em_trainer_config cfg;
    char *root_dir, *trace_path, *log_dir; /* owned copies of the config strings */
    em_callback **callbacks;
    size_t n_callbacks, cap_callbacks;
    char error[1024];
    em_status fail_status;        /* the first failure of this fit (EM_OK while none) */
    bool fitting;

    em_precision precision;       /* in force for this fit (16-mixed becomes bf16-mixed on the CPU) */

    /* resolved limits (Lightning: _parse_loop_limits) */
    int64_t max_epochs, min_epochs, max_steps, min_steps;

    /* what is being fitted */
    em_module *module;
    em_loader *train, *val;
    em_optim_setup setup;
    em_optimizer **wrappers;     /* LightningOptimizer per optimizer (owned) */
    em_scheduler **sched_list;   /* for em_lr_schedulers */
    struct emi_toggle *toggle;   /* saved requires_grad flags (toggle_optimizer) */
    size_t n_toggle;

    /* progress (Lightning's loop counters) */
    int64_t current_epoch;        /* completed epochs */
    int64_t global_step;
    int64_t batch_idx;
    int64_t val_batch_idx;
    int64_t total_batch_idx;
    int64_t batches_that_stepped; /* logger step */
    bool is_last_batch;
    int64_t num_training_batches;
    int64_t num_val_batches;
    int64_t val_check_batch;
    int64_t accumulate;           /* accumulate_grad_batches in force */
    bool should_stop;
    bool sanity_checking;
    bool val_epoch_end;           /* the val loop reached its epoch end (hooks see epoch values) */
    bool min_info_printed;
    double estimated;

    /* where we are, for messages and logging permissions */
    const char *hook;             /* the hook running now (Lightning's _current_fx_name) */
    emi_stage stage;
    bool in_training_step;        /* manual: wrapped steps count in global_step */
    bool wants_batch_output;      /* some on_train_batch_end (module or callback) reads the loss */
    em_batch *batch;              /* the current batch (for the logging batch size) */

    emi_metrics metrics;
    FILE *trace;
    struct emi_progress *progress;
    int64_t *sampler_epoch_warned; /* unused placeholder for DDP */
};

/* ---- calling user code: clear the slot, call, check (trainer.c) --------------------------------- */

/* Record a failure of `what` (a hook name) at the current position into t->error and return the status. */
em_status trainer_fail(em_trainer *t, const char *what, em_status s);
/* Check after a user callback named `hook`: a non-OK status or a recorded error is a failure. */
em_status trainer_check(em_trainer *t, const char *hook, em_status s);

/* Call every callback's `fn` then the module's hook; NULL entries are skipped. */
#define CALL_CB_HOOKS(t, field, ...)                                                                \
    do {                                                                                           \
        for (size_t cb_i_ = 0; cb_i_ < (t)->n_callbacks; cb_i_++) {                                 \
            em_callback *cb_ = (t)->callbacks[cb_i_];                                               \
            const em_callback_ops *cops_ = callback_ops(cb_);                                       \
            if (cops_->field != NULL) {                                                             \
                const char *prev_ = (t)->hook;                                                      \
                (t)->hook = #field;                                                                 \
                em_clear_error();                                                                   \
                em_status s_ = cops_->field(cb_, (t), (t)->module, ##__VA_ARGS__);                  \
                (t)->hook = prev_;                                                                  \
                if (trainer_check((t), #field, s_) != EM_OK)                                        \
                    return (t)->fail_status;                                                        \
            }                                                                                      \
        }                                                                                          \
    } while (0)

const em_callback_ops *callback_ops(const em_callback *cb);
void callback_destroy(em_callback *cb);

/* ---- optimizer.c ------------------------------------------------------------------------------------ */

em_status wrappers_create(em_trainer *t);
void wrappers_free(em_trainer *t);
/* The index of `opt` (a wrapper or a raw optimizer of this fit) or -1. */
int optimizer_index(const em_trainer *t, const em_optimizer *opt);
em_status clip_gradients(em_trainer *t, em_optimizer *opt, double clip_val, em_clip_algorithm algo);

/* ---- automatic.c / manual.c ---------------------------------------------------------------------------- */

em_status automatic_run(em_trainer *t, em_batch *batch, int64_t batch_idx, em_tensor **loss_out);
em_status manual_run(em_trainer *t, em_batch *batch, int64_t batch_idx, em_tensor **out);
em_status update_learning_rates(em_trainer *t, em_interval interval, bool update_plateau_schedulers);
bool should_accumulate(const em_trainer *t);
em_status run_backward(em_trainer *t, em_tensor *loss, bool retain_graph);
void toggle_free(em_trainer *t);

/* ---- metrics.c ------------------------------------------------------------------------------------------ */

em_status metrics_open(em_trainer *t);
void metrics_close(em_trainer *t);
void metrics_reset_stage(em_trainer *t, emi_stage stage); /* forget a stage's accumulated results */
void metrics_batch_start(em_trainer *t);                   /* forget step values */
/* Lightning's on_batch_end: refresh callback_metrics / progress bar from the current step values. */
void metrics_update_step(em_trainer *t);
/* Refresh callback_metrics from the live results (Lightning's callback_metrics property). */
void metrics_refresh(em_trainer *t);
/* Write the step values to the logger (Lightning: log_metrics on a stepping batch). */
void metrics_log_step(em_trainer *t);
/* The train loop reached its epoch end (hooks now see epoch values). */
void metrics_train_epoch_end_reached(em_trainer *t);
/* Reduce epoch values into callback_metrics and the logger (Lightning: epoch end of a stage). */
void metrics_epoch_end(em_trainer *t, emi_stage stage);
void metrics_reset_all(em_trainer *t); /* after the sanity check */
/* Log the train epoch values (step = batches_that_stepped - 1) and reset the train results. */
void metrics_train_epoch_log(em_trainer *t);

/* ---- progress.c ------------------------------------------------------------------------------------------ */

void progress_start(em_trainer *t);
void progress_epoch_start(em_trainer *t);
void progress_update(em_trainer *t);
void progress_epoch_end(em_trainer *t);
void progress_stop(em_trainer *t);

/* ---- trace (trainer.c) ----------------------------------------------------------------------------------- */

em_status trace_open(em_trainer *t);
void trace_close(em_trainer *t);
void trace_training_step(em_trainer *t, double loss);
void trace_optimizer_step(em_trainer *t, int opt_index, double norm_before, double norm_after);

#endif /* EMBER_LOOP_H */
