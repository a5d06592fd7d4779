/*
 * conformance.h: the conformance runner's shared types (tests/conformance/README.md describes the
 * case files; ember-conformance CASE.json ... runs them).
 *
 * One case = one conf_run: the case file (cJSON tree), what was built from it (nets, loaders,
 * trainer), the module the trainer drives (its em_module is the first member), the behaviour
 * kind's parameters and the recording, which has the same JSON shape as the case's `expected`
 * so that compare.c can walk both side by side.
 *
 * Files:
 *   main.c      command line, one line per case (PASS / FAIL / SKIP), exit status
 *   json.c      reading the case file and checked accessors (every unknown key is an error)
 *   build.c     nets + initial weights, data loaders, trainer config and callbacks, optimizers
 *   sched.c     schedulers (torch classes, the custom EpochStepScheduler, LambdaLR expressions)
 *   kinds.c     the behaviour kinds: training_step and the overridden hooks, once per kind
 *   record.c    what the run records (training_step calls, real optimizer steps, epochs, final)
 *   compare.c   expected vs recorded, with the case's tolerance
 */
#ifndef EMBER_CONFORMANCE_H
#define EMBER_CONFORMANCE_H

#include <stdbool.h>
#include <stdint.h>

#include <cJSON.h>
#include <ember/trainer.h>

#define CONF_MAX_NETS 8
#define CONF_MAX_OPTS 8
#define CONF_MAX_SCHEDS 16
#define CONF_MSG 1024
#define CONF_MAX_ES 8

/* ---- behaviour parameters ------------------------------------------------------------------------ */

/** A batch rule: always, never, batch_idx % modulus == remainder, batch_idx in a list. */
typedef enum conf_rule_type { RULE_ALWAYS, RULE_NEVER, RULE_MOD, RULE_INDICES } conf_rule_type;
typedef struct conf_rule {
    conf_rule_type type;
    int64_t modulus, remainder;
    int64_t *indices; /* owned */
    size_t n_indices;
} conf_rule;

/** A scheduler step rule of the manual kinds. */
typedef enum conf_when { WHEN_EVERY_N_BATCHES, WHEN_LAST_BATCH_EVERY_N_EPOCHS, WHEN_EPOCH_END_METRIC } conf_when;
typedef struct conf_sched_rule {
    size_t scheduler; /* index into lr_schedulers */
    conf_when when;
    int64_t n;
    const char *metric; /* borrowed from the case tree */
} conf_sched_rule;

/** Every kind's parameters (only the current kind's fields are meaningful). */
typedef struct conf_params {
    /* auto_basic */
    const char *val_metric; /* NULL = no validation_step */
    /* auto_skip */
    conf_rule return_none_when;
    bool skip_zero_grad_set_to_none;
    /* ddp_indexed (and val_metric above: optional there, NULL when absent) */
    bool sampler_shuffle, sampler_drop_last;
    bool val_sync_dist; /* the val_metric's self.log(..., sync_dist=) */
    /* auto_clip_by_epoch */
    em_clip_algorithm clip_algorithm;
    bool clip_times; /* true: coefficient * (epoch + 1); false: coefficient / (epoch + 1) */
    double clip_coefficient;
    /* auto_optimizer_step_hook */
    conf_rule step_when;
    bool has_warmup;
    int64_t warmup_steps;
    double warmup_base_lr;
    bool has_zero_grad;
    conf_rule zero_grad_when;
    bool zero_grad_set_to_none;
    /* auto_custom_scheduler_step */
    int64_t custom_epoch_offset;
    /* manual_accumulate */
    int64_t accumulate;
    bool raw_optimizer;
    const char *log_loss_as;
    conf_sched_rule *sched_rules; /* owned; also manual_gan */
    size_t n_sched_rules;
    /* manual_clip */
    double clip_val;
    em_clip_algorithm manual_clip_algorithm;
    /* manual_gan */
    int64_t real_cols[2], noise_cols[2];
    int64_t d_every;
    bool has_d_clip;
    double d_clip_val;
    em_clip_algorithm d_clip_algorithm;
} conf_params;

typedef struct conf_run conf_run;

/** A behaviour kind: parses its parameters and installs its training_step and hooks. */
typedef struct conf_kind {
    const char *name;
    bool automatic; /* the kind's automatic_optimization (must equal the case's) */
    bool (*parse)(conf_run *r, const cJSON *behaviour);
    void (*install)(conf_run *r, em_module_ops *ops);
} conf_kind;

/* ---- recording ---------------------------------------------------------------------------------------- */

/** Gradient statistics over one optimizer's parameters. */
typedef struct conf_grads {
    bool have;
    double norm, max_abs;
    int64_t with_grad;
} conf_grads;

/** Bookkeeping of one optimizer's step in progress (between step_begin and step_end). */
typedef struct conf_step_state {
    bool active;
    int64_t count_before, global_step_before, epoch, batch_idx;
    cJSON *lr;                 /* owned until step_end */
    conf_grads pre, post;      /* pre: before clipping; post: what the update used */
    bool pre_explicit;         /* pre recorded by the kind (manual clipping) */
} conf_step_state;

typedef struct conf_recorder {
    cJSON *root; /* {"training_step_calls": [...], "optimizer_steps": [...], ...} */
    cJSON *early_stopping;           /* [{callback, stopped_epoch, wait_count, best_score, checks}] or NULL */
    cJSON *es_checks[CONF_MAX_ES];   /* each EarlyStopping's "checks" list (inside early_stopping) */
    cJSON *calls, *steps, *epochs, *epoch_ends, *val_calls, *final;
    bool want_momentum; /* the case records momentum in training_step_calls */
    conf_step_state st[CONF_MAX_OPTS];
    conf_grads pending_pre[CONF_MAX_OPTS]; /* explicit pre-clip records waiting for their step */
} conf_recorder;

/* ---- one run ------------------------------------------------------------------------------------------- */

typedef enum conf_loss { LOSS_MSE, LOSS_BCE_LOGITS, LOSS_CROSS_ENTROPY } conf_loss;

struct conf_run {
    em_module base; /* first: the trainer sees a conf_run as an em_module */
    em_module_ops ops;

    /* the case */
    const char *path;
    char name[256];
    char *text; /* the file's bytes (owned) */
    cJSON *doc; /* owned */
    const cJSON *expected;
    double rtol, atol;
    bool automatic;
    bool ddp;          /* strategy ddp / devices > 1: the runner is rank 0 of `devices` (ember's launcher) */
    int64_t devices;
    conf_loss loss;

    /* the outcome: the first failure (or skip) reason */
    bool failed, skipped;
    char why[CONF_MSG];

    /* built */
    em_nn *root; /* container of the nets, parameter names "<net>.<i>.weight" */
    size_t n_nets;
    em_nn *nets[CONF_MAX_NETS]; /* borrowed from root */
    const char *net_names[CONF_MAX_NETS];
    em_loader *train, *val;
    em_trainer *trainer;

    /* the case's EarlyStopping callbacks (borrowed: the trainer owns them), their index in
     * trainer.callbacks, and what their on_check observer needs */
    size_t n_es;
    struct conf_es {
        conf_run *run;
        size_t index; /* 0-based position in the case's EarlyStopping list */
        int callback; /* index in trainer.callbacks */
        em_callback *cb;
    } es[CONF_MAX_ES];

    /* automatic mode: the built-in optimizer inside each recording optimizer (record.c), borrowed
     * (the recording optimizer owns it); NULL in manual mode and once fit freed them */
    em_optimizer *real_opts[CONF_MAX_OPTS];

    /* schedulers built by configure_optimizers, in lr_schedulers order (borrowed: the trainer owns them) */
    size_t n_scheds;
    em_scheduler *scheds[CONF_MAX_SCHEDS];
    double resolved_total_steps[CONF_MAX_SCHEDS]; /* OneCycleLR "estimated_stepping_batches": what was used */

    /* the behaviour */
    const conf_kind *kind;
    conf_params p;

    conf_recorder rec;
};

/* ---- failure reporting (main.c) -------------------------------------------------------------------- */

/** Record the first failure reason of the run (later ones are dropped). Returns false. */
bool conf_fail(conf_run *r, const char *fmt, ...) EM_PRINTF(2, 3);
/** Record that the case cannot run here (SKIP) with a reason. Returns false. */
bool conf_skip(conf_run *r, const char *fmt, ...) EM_PRINTF(2, 3);
/**
 * Inside a trainer callback: record the failure in the run and in ember's error slot (so the
 * trainer stops fit). Returns EM_EUSER.
 */
em_status conf_fail_cb(conf_run *r, const char *fmt, ...) EM_PRINTF(2, 3);

/* ---- json.c ----------------------------------------------------------------------------------------------- */

bool conf_load(conf_run *r, const char *path);
/** Fail unless every key of `obj` is in the NULL-terminated `allowed` list. `where` names obj. */
bool cj_keys(conf_run *r, const cJSON *obj, const char *where, const char *const *allowed);
/** Member `key` of `obj` or NULL (a JSON null counts as absent when `null_is_absent`). */
const cJSON *cj_get(const cJSON *obj, const char *key);
bool cj_is_null_or_absent(const cJSON *obj, const char *key);
bool cj_req_object(conf_run *r, const cJSON *obj, const char *key, const char *where, const cJSON **out);
bool cj_req_array(conf_run *r, const cJSON *obj, const char *key, const char *where, const cJSON **out);
bool cj_req_number(conf_run *r, const cJSON *obj, const char *key, const char *where, double *out);
bool cj_req_int(conf_run *r, const cJSON *obj, const char *key, const char *where, int64_t *out);
bool cj_req_bool(conf_run *r, const cJSON *obj, const char *key, const char *where, bool *out);
bool cj_req_string(conf_run *r, const cJSON *obj, const char *key, const char *where, const char **out);
/** Optional variants: leave *out unchanged when the key is absent or null. */
bool cj_opt_number(conf_run *r, const cJSON *obj, const char *key, const char *where, double *out);
bool cj_opt_int(conf_run *r, const cJSON *obj, const char *key, const char *where, int64_t *out);
bool cj_opt_bool(conf_run *r, const cJSON *obj, const char *key, const char *where, bool *out);
/** A string or null: *out = NULL for null. */
bool cj_req_string_or_null(conf_run *r, const cJSON *obj, const char *key, const char *where,
                           const char **out);
/** Whether a JSON number is an integer (no fraction). */
bool cj_is_integral(const cJSON *v);
/**
 * Whether the number written for `"key":` in the file's text has a '.' or an exponent (Python
 * wrote a float). Lightning treats limit_train_batches=1 and 1.0 differently; cJSON forgets it.
 */
bool cj_written_as_float(const conf_run *r, const char *key);
/** Parse a batch rule object. */
bool cj_rule(conf_run *r, const cJSON *obj, const char *where, conf_rule *out);
bool conf_rule_match(const conf_rule *rule, int64_t batch_idx);

/* ---- build.c ------------------------------------------------------------------------------------------------ */

bool build_model(conf_run *r);
bool build_data(conf_run *r);
/** The trainer from `trainer` (SKIP for a strategy this build cannot run). */
bool build_trainer(conf_run *r);
/** configure_optimizers: the optimizers of `optimizers`, then the schedulers (sched.c). */
em_status build_configure_optimizers(em_module *m, em_optim_setup *setup);
/** The loss of the case: loss(out, y). Owned by the open scope. */
em_tensor *conf_loss_fn(conf_run *r, const em_tensor *out, const em_tensor *y);
/** The net named `name`, or NULL (recorded with conf_fail). */
em_nn *conf_net(conf_run *r, const char *name);

/* ---- sched.c ------------------------------------------------------------------------------------------------- */

/** Build lr_schedulers[*] and add them to `setup` (called from configure_optimizers). */
bool build_schedulers(conf_run *r, em_optim_setup *setup, em_optimizer **opts, size_t n_opts);
/** Whether `s` is the custom EpochStepScheduler. */
bool conf_is_epoch_step_scheduler(const em_scheduler *s);
/** EpochStepScheduler.step(epoch): lr = base_lr * gamma ** (epoch // step_size) for every group. */
em_status conf_epoch_step_scheduler_step(em_scheduler *s, int64_t epoch);
/** Evaluate a LambdaLR expression of `epoch` (Python syntax subset). NAN + message on error. */
double conf_lambda_eval(const char *expr, int64_t epoch, char *err, size_t err_len);

/* ---- kinds.c --------------------------------------------------------------------------------------------------- */

const conf_kind *conf_find_kind(const char *name);
/** The module's ops: configure_optimizers, the recording hooks, then the kind's entries. */
void conf_install(conf_run *r, em_module_ops *ops);

/* ---- record.c -------------------------------------------------------------------------------------------------- */

void rec_init(conf_run *r);
void rec_free(conf_run *r);
/** Index of `opt` (a wrapper from em_optimizers or its inner optimizer) or -1. */
int rec_opt_index(conf_run *r, em_optimizer *opt);
/** training_step_calls entry: loss, and the named losses when n_losses > 0. */
void rec_training_step(conf_run *r, int64_t batch_idx, double loss, const char *const *loss_names,
                       const double *losses, size_t n_losses);
void rec_validation_step(conf_run *r, int64_t batch_idx, double loss);
void rec_epoch_start(conf_run *r);
void rec_epoch_end(conf_run *r);
void rec_train_start(conf_run *r);
void rec_train_or_fit_end(conf_run *r);
/** After fit: global_step, current_epoch, weights, callback_metrics. */
void rec_after_fit(conf_run *r);
/** Gradients of optimizer k before clipping; explicit = recorded by the kind (manual clipping). */
void rec_pre_clip(conf_run *r, int k, bool explicit_record);
/** Gradients of optimizer k as the update will use them (first call per step only). */
void rec_post_clip(conf_run *r, int k);
/** Around a step call of optimizer k: remember the state before, emit an entry if it really stepped. */
void rec_step_begin(conf_run *r, int k);
void rec_step_end(conf_run *r, int k);
/** End every step in progress (manual mode: at epoch and train end; a kind ends its own steps). */
void rec_flush_steps(conf_run *r);
/**
 * Automatic mode: a C optimizer that owns `inner` (built-in, optimizer index k) and records each of
 * its steps (record.c). Hand it to the trainer instead of `inner`. NULL (recorded) on failure, with
 * `inner` freed.
 */
em_optimizer *rec_wrap_optimizer(conf_run *r, em_optimizer *inner, int k);
/** The callback that records the pre-clip gradients (on_before_optimizer_step). */
em_callback *rec_callback(conf_run *r);
/** EarlyStopping's on_check observer: appends the check to that callback's "checks" (user: a struct conf_es). */
void rec_early_stopping_check(void *user, const em_early_stopping_check *check);
/** The recorded lr of every group of every optimizer: [[...], ...]. New cJSON. */
cJSON *rec_lr_all(conf_run *r);

/* ---- compare.c ------------------------------------------------------------------------------------------------- */

/**
 * Compare the recording with `expected`. Returns true when everything matches; otherwise writes
 * "first mismatch <quantity>: expected <e>, got <g>" (or a missing / extra entry message) to `out`.
 * With `verbose`, up to `max_report` further mismatches are printed to stderr.
 */
bool conf_compare(const cJSON *expected, const cJSON *actual, double rtol, double atol, char *out,
                  size_t out_len, bool verbose, int max_report);

#endif /* EMBER_CONFORMANCE_H */
