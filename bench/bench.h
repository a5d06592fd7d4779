/* bench.h: what the three loops of ember-bench share - workloads, generated data and weights, and the
 * interface of each loop (raw libtorch in raw_loop.cpp, ember's automatic and manual optimization in
 * ember_loop.c). C, so that both the C and the C++ side include it.
 */
#ifndef EMBER_BENCH_H
#define EMBER_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- workloads ---------------------------------------------------------------------------------- */

typedef enum bench_workload_id { WL_TINY_MLP = 0, WL_MID_MLP, WL_SMALL_CNN, WL_COUNT } bench_workload_id;
typedef enum bench_loss { LOSS_MSE = 0, LOSS_CROSS_ENTROPY } bench_loss;
typedef enum bench_optim { OPT_SGD = 0, OPT_ADAM } bench_optim;

#define BENCH_MAX_PARAMS 8

/* One parameter of a model: its shape, in torch's named_parameters() order of the Sequential. */
typedef struct bench_param {
    const char *name; /* "0.weight", ... (the ember Sequential's names) */
    int ndim;
    int64_t shape[4];
    int64_t fan_in; /* for the initial values: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torch's default */
} bench_param;

typedef struct bench_workload {
    bench_workload_id id;
    const char *name;        /* tiny_mlp, mid_mlp, small_cnn */
    const char *description; /* one line for --help */
    int64_t batch;
    int x_ndim;
    int64_t x_row_shape[3];  /* shape of one input row (without the batch dimension) */
    int64_t classes;         /* cross-entropy: number of classes; MSE: outputs */
    bench_loss loss;
    bench_optim optim;
    double lr, momentum;     /* SGD momentum (0 = none); Adam uses torch's defaults but lr */
    size_t n_params;
    bench_param params[BENCH_MAX_PARAMS];
} bench_workload;

extern const bench_workload bench_workloads[WL_COUNT];

/* ---- one run: data and initial weights, generated once, the same for every loop ------------------- */

typedef struct bench_data {
    const bench_workload *w;
    int64_t rows;      /* steps * batch */
    int64_t x_numel;   /* rows * prod(x_row_shape) */
    float *x;          /* inputs, row-major */
    float *y_f32;      /* MSE targets [rows, classes] (NULL for cross-entropy) */
    int64_t *y_i64;    /* class indices [rows] (NULL for MSE) */
    size_t n_weights;  /* total parameter elements */
    float *weights;    /* every parameter, concatenated in bench_param order */
} bench_data;

/* The case being timed. */
typedef struct bench_case {
    const bench_workload *w;
    int64_t steps;      /* batches per repetition (one epoch) */
    int64_t accumulate; /* 1 or 4 */
    bool clip;          /* clip the gradient norm to 1.0 before every step */
} bench_case;

#define BENCH_CLIP_NORM 1.0

/* ---- the loops -----------------------------------------------------------------------------------
 * Each runner owns a model set from bench_data's weights and the data as tensors. One repetition
 * trains `steps` batches from a fresh optimizer (gradients reset to None first, as em_trainer_fit
 * does at fit start) and returns its wall time in seconds, or a negative value on failure (with a
 * message on stderr). The weights carry over from one repetition to the next. */

/* raw_loop.cpp: a hand-written libtorch C++ loop. */
typedef struct raw_runner raw_runner;
void raw_set_threads(int n);                      /* at::set_num_threads */
int raw_num_threads(void);                        /* at::get_num_threads */
raw_runner *raw_new(const bench_case *c, const bench_data *d);
double raw_run(raw_runner *r);
/* Copy the current weights (bench_param order) into out[0..n-1]; false when n differs. */
bool raw_weights(const raw_runner *r, float *out, size_t n);
void raw_free(raw_runner *r);

/* ember_loop.c: em_trainer_fit with automatic (manual = false) or manual optimization. */
typedef struct ember_runner ember_runner;
ember_runner *ember_new(const bench_case *c, const bench_data *d, bool manual);
double ember_run(ember_runner *r);
bool ember_weights(const ember_runner *r, float *out, size_t n);
void ember_free(ember_runner *r);

/* ddp_loop.c: --ddp N. Returns the exit status. argv: this program's, to start the solo processes. */
int bench_ddp(long n, long reps, long warmup, long steps, int workload, bool csv, char **argv);

/* Monotonic clock in seconds (bench.c). */
double bench_now(void);

#ifdef __cplusplus
}
#endif

#endif /* EMBER_BENCH_H */
