/* loop.h: the trainer's state, shared by the files of the loop. Data only: every file of src/
 * declares its functions in a header of its own, and docs/ARCHITECTURE.md draws the layers (a file
 * calls only files below it). Lightning's names are kept so that a grep finds the rule in
 * docs/LIGHTNING_RULES.md and the code in one file. */
#ifndef EMBER_LOOP_H
#define EMBER_LOOP_H

#include <stdio.h>

#include "backend.h" /* emi_fail, emi_warn, emi_optimizer_wrap, autocast */
#include "ember/trainer.h"
#include "kvlist.h"

/* ---- configure_optimizers (setup.c) ------------------------------------------------------------ */

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
    em_params **params;    /* every parameter of every group, per optimizer (made by emi_setup_finish) */
};

/* ---- self.log's results (metrics.c) ------------------------------------------------------------ */

typedef struct emi_metric {
    char *name;          /* the logged name */
    const char *fx;      /* the hook it was logged from (a static string) */
    bool on_step, on_epoch, prog_bar, logger;
    em_reduce_fx reduce;
    double last;         /* step value: the last one logged */
    double acc;          /* epoch accumulator: Σ value * batch_size (mean), Σ value (sum), max or min */
    double weight;       /* Σ batch_size (mean) */
    bool has_value;
    bool sync;           /* sync_dist under DDP: step values reduced when logged, epoch values when computed */
    bool synced;         /* s_acc / s_weight hold the ranks' reduction of acc / weight */
    double s_acc, s_weight;
} emi_metric;

/* Lightning's _ResultCollection: what one stage (train or val) logged since its last reset. */
typedef struct emi_results {
    emi_metric *items;
    size_t n, cap;
} emi_results;

typedef struct emi_csv_logger emi_csv_logger;

typedef struct emi_metrics {
    emi_results train, val;
    bool train_epoch_end;   /* Lightning's _first_loop_iter is None: train results read as epoch values */
    emi_kvlist callback;    /* callback_metrics */
    emi_kvlist progbar;     /* progress bar metrics */
    emi_csv_logger *logger; /* NULL when enable_csv_logger is false */
} emi_metrics;

/* ---- ranks (distributed.c) ---------------------------------------------------------------------- */

/* Who said which rank this process is (Lightning's cluster environments). */
typedef enum emi_env_kind {
    EMI_ENV_NONE = 0,     /* nobody: the config (devices x num_nodes); ember's launcher starts the rest */
    EMI_ENV_TORCHELASTIC, /* torchrun: RANK, GROUP_RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, WORLD_SIZE */
    EMI_ENV_SLURM,        /* srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID, SLURM_NODELIST */
    EMI_ENV_LAUNCHED      /* a rank ember's launcher started: LOCAL_RANK, NODE_RANK, WORLD_SIZE */
} emi_env_kind;

typedef struct emi_dist_env {
    emi_env_kind kind;
    int64_t world, rank, local_rank, node_rank, local_world;
    char addr[256];       /* MASTER_ADDR (SLURM: the first host of SLURM_NODELIST); 127.0.0.1 */
    int64_t port;         /* MASTER_PORT; -1 when unset */
    bool agent_store;     /* torchrun's agent hosts the store (TORCHELASTIC_USE_AGENT_STORE) */
    bool distributed;     /* this fit runs the DDP strategy (resolved at fit start) */
    em_process_group_backend backend; /* the DDP fit's process group backend (resolved at fit start);
                                         EM_PG_BACKEND_AUTO without DDP */
    char bad[256];        /* a variable that could not be read ("" when none) */
} emi_dist_env;

/* ---- the trainer ------------------------------------------------------------------------------- */

typedef enum emi_stage { EMI_STAGE_NONE = 0, EMI_STAGE_TRAIN, EMI_STAGE_VAL, EMI_STAGE_SANITY } emi_stage;

/* Where a checkpoint was saved, so where a resumed fit continues (resume.c). */
typedef enum emi_phase {
    EMI_PHASE_NONE = 0,    /* not resuming */
    EMI_PHASE_EPOCH_START, /* before epoch current_epoch (saved after a fit) */
    EMI_PHASE_BATCH_END,   /* in epoch current_epoch, after the on_train_batch_end hooks of batch batch_idx */
    EMI_PHASE_VAL_END,     /* ... after the validation that batch's on_advance_end ran (on_validation_end) */
    EMI_PHASE_EPOCH_END    /* after the on_train_epoch_end hooks of epoch current_epoch */
} emi_phase;

typedef struct emi_resume emi_resume; /* a checkpoint being restored (resume.c) */

/* The Trainer arguments as the loop uses them, resolved once at fit start (config.c; Lightning's
 * _parse_loop_limits, _FitLoop.setup_data, the accelerator connector's precision). The loop reads
 * these, never t->cfg. */
typedef struct emi_fit_settings {
    em_precision precision;        /* in force: 16-mixed becomes bf16-mixed on the CPU */
    em_device device;              /* where training runs: the resolved accelerator (cuda:LOCAL_RANK, or the CPU) */
    int64_t max_epochs, min_epochs, max_steps, min_steps; /* -1 / 0 = no limit */
    double clip_val;               /* the Trainer's gradient_clip_val (NAN = None) */
    em_clip_algorithm clip_algo;   /* the Trainer's gradient_clip_algorithm (EM_CLIP_DEFAULT = None) */
    int64_t check_val_every_n_epoch; /* EM_NONE = validation counts batches across epochs */
    int64_t num_sanity_val_steps;  /* -1 = all */
    int64_t log_every_n_steps;
    int64_t num_training_batches;  /* per epoch, after limit_train_batches */
    int64_t num_val_batches;       /* after limit_val_batches; 0 without validation_step or val loader */
    int64_t val_check_batch;       /* validate after every val_check_batch batches */
    double estimated;              /* estimated_stepping_batches */
    /* 16-mixed grad scaler */
    em_grad_scaler *scaler;        /* the scaler in force (16-mixed); NULL under the other precisions */
    bool autocast_on;              /* the step function running now is under autocast */
    bool autocast_warned;          /* the "target dtype is not supported" warning was given this fit */
} emi_fit_settings;

struct em_trainer {
    uint32_t magic;                        /* EMI_HANDLE_TRAINER while it lives (backend.h: the API armor) */
    em_trainer_config cfg;                 /* as given to em_trainer_new (strings: the copies below) */
    char *root_dir, *trace_path, *log_dir; /* owned copies of the config strings */
    em_callback **callbacks;               /* user callbacks; during fit the built-in ones follow */
    size_t n_callbacks, cap_callbacks;
    size_t n_user_callbacks;               /* the user's: the first n_user_callbacks */
    char error[1024];
    em_status fail_status;        /* the first failure of this fit (EM_OK while none) */
    bool fitting;

    emi_fit_settings fit;

    /* what is being fitted */
    em_module *module;
    em_loader *train, *val;
    em_optim_setup setup;
    em_optimizer **wrappers;     /* LightningOptimizer per optimizer (owned) */
    em_scheduler **sched_list;   /* for em_lr_schedulers */
    struct emi_toggle *toggle;   /* saved requires_grad flags (toggle_optimizer) */
    size_t n_toggle;
    bool toggle_model_open;      /* em_toggle_model_begin without its end yet */
    bool toggle_model_blocked;   /* ... with sync_grad false: it opened a no-sync region */
    size_t toggle_model_opt;     /* ... the optimizer's index */

    /* progress (Lightning's loop counters) */
    int64_t current_epoch;        /* completed epochs */
    int64_t global_step;
    int64_t batch_idx;
    int64_t val_batch_idx;
    int64_t total_batch_idx;
    int64_t batches_that_stepped; /* logger step */
    bool is_last_batch;
    int64_t accumulate;           /* accumulate_grad_batches in force */
    bool should_stop;
    bool sanity_checking;
    bool val_epoch_end;           /* the val loop reached its epoch end (hooks see epoch values) */
    bool min_info_printed;

    /* where we are, for messages and logging permissions */
    const char *hook;             /* the hook running now (Lightning's _current_fx_name) */
    emi_stage stage;
    bool in_training_step;        /* manual: wrapped steps count in global_step */
    bool wants_batch_output;      /* some on_train_batch_end (module or callback) reads the loss */
    em_batch *batch;              /* the current batch (for the logging batch size) */

    /* DDP (distributed.c, strategy.c) */
    emi_dist_env env;             /* read at em_trainer_new, resolved at fit start */
    emi_dist_reducer *reducer;    /* the gradient reducer of this fit (NULL without DDP) */
    bool block_sync;              /* an accumulating batch: no all-reduce (Lightning's no_sync) */
    int no_sync_depth;            /* em_no_backward_sync_begin regions open */
    int64_t grad_allreduces;      /* gradient all-reduces (buckets) of this fit */
    int64_t grad_allreduces_base; /* the process's count when the fit started */

    emi_metrics metrics;
    FILE *trace;
    int trace_errno;              /* why the first failed trace write failed (0: none) */
    /* 16-mixed grad scaler */
    em_grad_scaler *own_scaler;   /* the default scaler of 16-mixed on CUDA (owned; kept across fits) */

    /* checkpoints and resume (resume.c) */
    bool epoch_reached_end;       /* the epoch loop ran the epoch's final batch (epoch schedulers step) */
    emi_resume *resume;           /* the checkpoint em_trainer_fit_from restores (NULL: a fresh fit) */
    char *ckpt_path;              /* the path the last fit resumed from, "last" resolved (NULL: none);
                                     Lightning's trainer.ckpt_path (em_trainer_ckpt_path) */
    emi_phase resume_phase;       /* the loop continues from here (EMI_PHASE_NONE: as usual) */
    em_module *last_module;       /* the module of the last fit that succeeded (borrowed; NULL after a failure) */
};

/* The entry check of a public function taking a trainer: true for a live trainer; false for NULL
 * (nothing recorded: the getters' documented NULL answers) and for a freed or foreign pointer
 * (EM_EMISUSE recorded under `func`). */
static inline bool emi_trainer_ok(const em_trainer *t, const char *func)
{
    return emi_handle_ok(t, EMI_HANDLE_TRAINER, func, "trainer");
}

#endif /* EMBER_LOOP_H */
