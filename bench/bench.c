/* bench.c: ember-bench - what ember's loop costs over a hand-written libtorch loop.
 *
 * For each workload, accumulate_grad_batches in {1, 4} and clipping off / on, three loops train the
 * same model from the same initial weights on the same data, one thread:
 *   raw     a hand-written libtorch C++ loop (raw_loop.cpp): zero_grad, forward, loss, backward,
 *           (clip_grad_norm_), step - the floor for any loop on libtorch;
 *   auto    em_trainer_fit with automatic optimization: training_step returns the loss, the Trainer
 *           accumulates (accumulate_grad_batches) and clips (gradient_clip_val);
 *   manual  em_trainer_fit with manual optimization: training_step calls zero_grad,
 *           em_manual_backward, em_clip_gradients and step on the em_optimizers() wrapper itself,
 *           accumulating by hand (loss / 4, a step every 4th batch).
 * A repetition is one epoch of --steps batches from a fresh optimizer (for ember: one em_trainer_fit
 * with max_epochs = 1). Repetitions run interleaved (raw, auto, manual, raw, auto, manual, ...) so
 * that a change in machine load hits the three alike; the table reports the median time per step.
 *
 *     ./build/bin/ember-bench [--reps N] [--steps N] [--warmup N] [--workload NAME] [--mode auto|manual]
 *                             [--accumulate N] [--clip 0|1] [--quick] [--csv] [--wall] [--system-malloc] [--aa]
 *
 * On a shared machine, --aa (the raw loop in all three slots) shows how far from 1.0 the ratios go
 * by noise alone; callgrind on a short run (--steps 200 --reps 1, with --mode) counts instructions.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, setenv, execv */
#include <ember.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h> /* mallopt */
#endif

#include "bench.h"

/* ---- the workloads -------------------------------------------------------------------------------- */

const bench_workload bench_workloads[WL_COUNT] = {
    [WL_TINY_MLP] = {
        .id = WL_TINY_MLP, .name = "tiny_mlp",
        .description = "16->32->1, tanh, batch 32, MSE, SGD momentum 0.9 (loop overhead dominates)",
        .batch = 32, .x_ndim = 1, .x_row_shape = {16}, .classes = 1,
        .loss = LOSS_MSE, .optim = OPT_SGD, .lr = 0.01, .momentum = 0.9,
        .n_params = 4,
        .params = {
            {"0.weight", 2, {32, 16}, 16}, {"0.bias", 1, {32}, 16},
            {"2.weight", 2, {1, 32}, 32},  {"2.bias", 1, {1}, 32},
        },
    },
    [WL_MID_MLP] = {
        .id = WL_MID_MLP, .name = "mid_mlp",
        .description = "256->512->512->10, relu, batch 64, cross-entropy, Adam",
        .batch = 64, .x_ndim = 1, .x_row_shape = {256}, .classes = 10,
        .loss = LOSS_CROSS_ENTROPY, .optim = OPT_ADAM, .lr = 1e-3,
        .n_params = 6,
        .params = {
            {"0.weight", 2, {512, 256}, 256}, {"0.bias", 1, {512}, 256},
            {"2.weight", 2, {512, 512}, 512}, {"2.bias", 1, {512}, 512},
            {"4.weight", 2, {10, 512}, 512},  {"4.bias", 1, {10}, 512},
        },
    },
    [WL_SMALL_CNN] = {
        .id = WL_SMALL_CNN, .name = "small_cnn",
        .description = "1x28x28, conv 8 k3, conv 16 k3 stride 2, linear 10, relu, batch 32, cross-entropy, SGD",
        .batch = 32, .x_ndim = 3, .x_row_shape = {1, 28, 28}, .classes = 10,
        .loss = LOSS_CROSS_ENTROPY, .optim = OPT_SGD, .lr = 0.01,
        .n_params = 6,
        .params = {
            {"0.weight", 4, {8, 1, 3, 3}, 9},    {"0.bias", 1, {8}, 9},
            {"2.weight", 4, {16, 8, 3, 3}, 72},  {"2.bias", 1, {16}, 72},
            {"5.weight", 2, {10, 2304}, 2304},   {"5.bias", 1, {10}, 2304},
        },
    },
};

/* The targets for ember / raw. */
static double target_ratio(const bench_workload *w)
{
    return w->id == WL_TINY_MLP ? 1.03 : 1.01;
}

/* Wall time, or (default) the CPU time of this thread: on a loaded machine the time the thread spends
 * descheduled is noise, and one thread does all the work (OpenBLAS and OpenMP are held to one). */
static clockid_t bench_clock = CLOCK_THREAD_CPUTIME_ID;

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(bench_clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- generated data and weights --------------------------------------------------------------------- */

/* splitmix64: a small, fixed generator, so that every loop and every run sees the same numbers. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform on [-1, 1). */
static float rng_sym(uint64_t *s)
{
    return (float)((double)(rng_next(s) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

static void data_free(bench_data *d)
{
    free(d->x);
    free(d->y_f32);
    free(d->y_i64);
    free(d->weights);
    memset(d, 0, sizeof *d);
}

static bool data_make(bench_data *d, const bench_workload *w, int64_t steps)
{
    memset(d, 0, sizeof *d);
    d->w = w;
    d->rows = steps * w->batch;
    int64_t row = 1;
    for (int i = 0; i < w->x_ndim; i++)
        row *= w->x_row_shape[i];
    d->x_numel = d->rows * row;
    for (size_t i = 0; i < w->n_params; i++) {
        int64_t n = 1;
        for (int k = 0; k < w->params[i].ndim; k++)
            n *= w->params[i].shape[k];
        d->n_weights += (size_t)n;
    }
    d->x = malloc((size_t)d->x_numel * sizeof *d->x);
    d->weights = malloc(d->n_weights * sizeof *d->weights);
    if (w->loss == LOSS_MSE)
        d->y_f32 = malloc((size_t)(d->rows * w->classes) * sizeof *d->y_f32);
    else
        d->y_i64 = malloc((size_t)d->rows * sizeof *d->y_i64);
    if (d->x == NULL || d->weights == NULL || (d->y_f32 == NULL && d->y_i64 == NULL)) {
        data_free(d);
        return false;
    }
    uint64_t s = 0x656d626572ull + (uint64_t)w->id; /* "ember" */
    /* torch's default initialisation of Linear and Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
    size_t off = 0;
    for (size_t i = 0; i < w->n_params; i++) {
        const bench_param *p = &w->params[i];
        int64_t n = 1;
        for (int k = 0; k < p->ndim; k++)
            n *= p->shape[k];
        float bound = (float)(1.0 / sqrt((double)p->fan_in));
        for (int64_t k = 0; k < n; k++)
            d->weights[off++] = bound * rng_sym(&s);
    }
    for (int64_t i = 0; i < d->x_numel; i++)
        d->x[i] = rng_sym(&s);
    for (int64_t r = 0; r < d->rows; r++) {
        if (w->loss == LOSS_MSE) {
            /* a smooth target the MLP can learn: sin of a fixed mix of the first inputs */
            const float *x = d->x + r * row;
            d->y_f32[r] = (float)sin(1.5 * x[0] - 0.7 * x[1] + 0.3 * x[2]);
        } else {
            d->y_i64[r] = (int64_t)(rng_next(&s) % (uint64_t)w->classes);
        }
    }
    return true;
}

/* ---- options ----------------------------------------------------------------------------------------- */

typedef struct options {
    long reps;     /* timed repetitions per loop and case */
    long warmup;   /* untimed repetitions before them */
    long steps;    /* batches per repetition; 0 = the workload's default */
    int workload;  /* -1 = all */
    bool csv;
    bool quick;
    bool wall;     /* time with CLOCK_MONOTONIC instead of the thread's CPU time */
    bool system_malloc; /* keep glibc's default mmap / trim thresholds */
    bool aa;       /* A/A run: the raw loop also in the auto and manual slots (the noise floor) */
    int mode;      /* 0 = both ember modes, 1 = auto only, 2 = manual only */
    long accumulate; /* 0 = 1 and 4 */
    long clip;     /* -1 = off and on */
    long ddp;      /* > 0: --ddp N instead of the loop comparison */
} options;

/* Batches per repetition when --steps is not given: ~10-50 ms of work per repetition. */
static long default_steps(const bench_workload *w)
{
    switch (w->id) {
    case WL_TINY_MLP: return 400;
    case WL_MID_MLP: return 40;
    default: return 40;
    }
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ember-bench [--reps N] [--steps N] [--warmup N] [--workload NAME] [--mode auto|manual]\n"
            "                   [--accumulate N] [--clip 0|1] [--quick] [--csv] [--wall] [--system-malloc]\n"
            "Times the same training, interleaved and on one thread, as a hand-written libtorch loop (raw)\n"
            "and through em_trainer_fit with automatic and with manual optimization, for\n"
            "accumulate_grad_batches 1 and 4 and gradient clipping (norm 1.0) off and on, and prints the\n"
            "median time per step in microseconds and ratio = ember / raw.\n"
            "  --reps N        timed repetitions of each loop per case (default 15)\n"
            "  --steps N       batches per repetition, one epoch (default: tiny_mlp 400, mid_mlp 40,\n"
            "                  small_cnn 40)\n"
            "  --warmup N      untimed repetitions first (default 3)\n"
            "  --workload NAME tiny_mlp, mid_mlp, small_cnn or all (default all)\n"
"  --mode M        run only ember's auto or manual loop (with raw), e.g. to profile one\n"
            "  --accumulate N  only this accumulate_grad_batches (default: 1 and 4)\n"
            "  --clip 0|1      only without / with clipping (default: both)\n"
"  --aa            an A/A run: the raw loop also takes the auto and manual slots, so the\n"
            "                  ratios show the noise floor of this machine (1.0 +- noise)\n"
            "  --ddp N         instead: the per-rank step of DDP on N processes (ember's launcher, Gloo)\n"
            "                  against one process alone and against N independent processes at once\n"
            "                  (no communication), same batch per process, tiny_mlp and mid_mlp, wall\n"
            "                  and process CPU time; --csv rows workload,ddp,N,0,one_rank_us,n_rank_us,ratio\n"
            "  --quick         a smoke run: 2 repetitions of 8 steps, 1 warm-up (for CI)\n"
            "  --csv           print workload,mode,accumulate,clip,raw_us,ember_us,ratio rows\n"
            "  --wall          time with the wall clock (CLOCK_MONOTONIC); the default is the CPU time\n"
            "                  of the (single) thread, which ignores time spent descheduled\n"
            "  --system-malloc keep glibc's malloc thresholds; by default the benchmark raises them\n"
            "                  (M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 256 MiB) so that tensors of\n"
            "                  a few MiB are not mmap'ed and page-faulted in again at every step, a cost\n"
            "                  (up to 30%% of a mid_mlp step) that is the same for every loop and only\n"
            "                  adds noise and shrinks the ratio\n"
            "  -h, --help      this text\n"
            "Workloads:\n");
    for (int i = 0; i < WL_COUNT; i++)
        fprintf(f, "  %-10s %s\n", bench_workloads[i].name, bench_workloads[i].description);
    fprintf(f, "Targets: ratio <= 1.03 on tiny_mlp, <= 1.01 on the others.\n"
               "The program runs itself again with OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1 and\n"
               "MKL_NUM_THREADS=1 when they are not set so (OpenBLAS reads its setting when it loads).\n");
}

static bool parse_long(const char *opt, const char *s, long lo, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = s != NULL ? strtol(s, &end, 10) : 0;
    if (s == NULL || errno != 0 || end == s || *end != '\0' || v < lo) {
        fprintf(stderr, "ember-bench: %s needs an integer >= %ld (got '%s')\n", opt, lo, s != NULL ? s : "");
        return false;
    }
    *out = v;
    return true;
}

/* 0: parsed; 1: --help printed; 2: a usage error printed. */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.reps = 15, .warmup = 3, .steps = 0, .workload = -1, .clip = -1};
    bool reps_set = false, warmup_set = false, steps_set = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 1;
        } else if (strcmp(a, "--reps") == 0) {
            if (!parse_long(a, v, 1, &o->reps))
                return 2;
            reps_set = true;
            i++;
        } else if (strcmp(a, "--warmup") == 0) {
            if (!parse_long(a, v, 0, &o->warmup))
                return 2;
            warmup_set = true;
            i++;
        } else if (strcmp(a, "--steps") == 0) {
            if (!parse_long(a, v, 1, &o->steps))
                return 2;
            steps_set = true;
            i++;
        } else if (strcmp(a, "--workload") == 0) {
            if (v == NULL) {
                fprintf(stderr, "ember-bench: --workload needs a name\n");
                return 2;
            }
            o->workload = -2;
            if (strcmp(v, "all") == 0)
                o->workload = -1;
            for (int k = 0; k < WL_COUNT; k++)
                if (strcmp(v, bench_workloads[k].name) == 0)
                    o->workload = k;
            if (o->workload == -2) {
                fprintf(stderr, "ember-bench: unknown workload '%s' (tiny_mlp, mid_mlp, small_cnn or all)\n", v);
                return 2;
            }
            i++;
        } else if (strcmp(a, "--mode") == 0) {
            o->mode = v == NULL ? -1 : strcmp(v, "auto") == 0 ? 1 : strcmp(v, "manual") == 0 ? 2 : -1;
            if (o->mode < 0) {
                fprintf(stderr, "ember-bench: --mode needs auto or manual (got '%s')\n", v != NULL ? v : "");
                return 2;
            }
            i++;
        } else if (strcmp(a, "--accumulate") == 0) {
            if (!parse_long(a, v, 1, &o->accumulate))
                return 2;
            i++;
        } else if (strcmp(a, "--clip") == 0) {
            if (!parse_long(a, v, 0, &o->clip) || o->clip > 1) {
                fprintf(stderr, "ember-bench: --clip needs 0 or 1\n");
                return 2;
            }
            i++;
        } else if (strcmp(a, "--ddp") == 0) {
            if (!parse_long(a, v, 2, &o->ddp))
                return 2;
            i++;
        } else if (strcmp(a, "--quick") == 0) {
            o->quick = true;
        } else if (strcmp(a, "--csv") == 0) {
            o->csv = true;
        } else if (strcmp(a, "--wall") == 0) {
            o->wall = true;
        } else if (strcmp(a, "--aa") == 0) {
            o->aa = true;
        } else if (strcmp(a, "--system-malloc") == 0) {
            o->system_malloc = true;
        } else {
            fprintf(stderr, "ember-bench: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (o->quick) { /* explicit values still win */
        if (!reps_set)
            o->reps = 2;
        if (!warmup_set)
            o->warmup = 1;
        if (!steps_set)
            o->steps = 8;
    }
    return 0;
}

/* ---- one thread ---------------------------------------------------------------------------------------- */

/* OpenBLAS (Debian's libtorch uses it for matrix products) reads OPENBLAS_NUM_THREADS when the library
 * loads, before main: when the variables are not "1", set them and run this program again. */
static void single_thread_env(char **argv)
{
    static const char *const vars[] = {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"};
    bool ok = true;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v == NULL || strcmp(v, "1") != 0) {
            setenv(vars[i], "1", 1);
            ok = false;
        }
    }
    if (ok || getenv("EMBER_BENCH_REEXEC") != NULL)
        return;
    setenv("EMBER_BENCH_REEXEC", "1", 1);
    fflush(NULL);
    execv("/proc/self/exe", argv);
    fprintf(stderr, "ember-bench: warning: could not re-run itself with OPENBLAS_NUM_THREADS=1 (%s); set it in the "
                    "environment for single-threaded BLAS\n", strerror(errno));
}

/* ---- statistics ------------------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, size_t n)
{
    double *c = malloc(n * sizeof *c);
    if (c == NULL || n == 0) {
        free(c);
        return NAN;
    }
    memcpy(c, v, n * sizeof *c);
    qsort(c, n, sizeof *c, cmp_double);
    double m = n % 2 ? c[n / 2] : 0.5 * (c[n / 2 - 1] + c[n / 2]);
    free(c);
    return m;
}

/* ---- one case: raw, auto, manual, interleaved ------------------------------------------------------------ */

typedef struct case_result {
    double raw_us, auto_us, manual_us;          /* medians per step */
    double auto_paired, manual_paired;          /* medians of the per-repetition ratios */
    double auto_diff, manual_diff;              /* max |w_ember - w_raw| after the runs */
} case_result;

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d))
            m = d;
    }
    return m;
}

static bool run_case(const bench_case *c, const bench_data *d, const options *o, case_result *res)
{
    bool ok = false, do_auto = o->mode != 2, do_man = o->mode != 1;
    size_t n = (size_t)o->reps;
    double *t_raw = calloc(n, sizeof *t_raw), *t_auto = calloc(n, sizeof *t_auto);
    double *t_man = calloc(n, sizeof *t_man), *r_auto = calloc(n, sizeof *r_auto), *r_man = calloc(n, sizeof *r_man);
    float *w_raw = malloc(d->n_weights * sizeof *w_raw), *w_em = malloc(d->n_weights * sizeof *w_em);
    raw_runner *raw = raw_new(c, d);
    ember_runner *au = do_auto && !o->aa ? ember_new(c, d, false) : NULL;
    ember_runner *ma = do_man && !o->aa ? ember_new(c, d, true) : NULL;
    raw_runner *raw_au = do_auto && o->aa ? raw_new(c, d) : NULL; /* --aa: raw in the ember slots */
    raw_runner *raw_ma = do_man && o->aa ? raw_new(c, d) : NULL;
    if (!t_raw || !t_auto || !t_man || !r_auto || !r_man || !w_raw || !w_em || !raw ||
        (do_auto && !au && !raw_au) || (do_man && !ma && !raw_ma))
        goto done;
    /* interleaved: raw, auto, manual, raw, auto, manual, ... */
    for (long i = 0; i < o->warmup + o->reps; i++) {
        double a = raw_run(raw);
        double b = raw_au != NULL ? raw_run(raw_au) : au != NULL ? ember_run(au) : 1.0;
        double m = raw_ma != NULL ? raw_run(raw_ma) : ma != NULL ? ember_run(ma) : 1.0;
        if (a < 0 || b < 0 || m < 0)
            goto done;
        if (i >= o->warmup) {
            size_t k = (size_t)(i - o->warmup);
            t_raw[k] = a;
            t_auto[k] = b;
            t_man[k] = m;
            r_auto[k] = b / a;
            r_man[k] = m / a;
        }
    }
    double per_step = 1e6 / (double)c->steps;
    res->raw_us = median(t_raw, n) * per_step;
    res->auto_us = median(t_auto, n) * per_step;
    res->manual_us = median(t_man, n) * per_step;
    res->auto_paired = median(r_auto, n);
    res->manual_paired = median(r_man, n);
    /* the same training: the final weights should agree with raw's */
    if (!raw_weights(raw, w_raw, d->n_weights))
        goto done;
    if (do_auto) {
        if (!(au != NULL ? ember_weights(au, w_em, d->n_weights) : raw_weights(raw_au, w_em, d->n_weights)))
            goto done;
        res->auto_diff = max_abs_diff(w_raw, w_em, d->n_weights);
    }
    if (do_man) {
        if (!(ma != NULL ? ember_weights(ma, w_em, d->n_weights) : raw_weights(raw_ma, w_em, d->n_weights)))
            goto done;
        res->manual_diff = max_abs_diff(w_raw, w_em, d->n_weights);
    }
    ok = true;
done:
    raw_free(raw);
    raw_free(raw_au);
    raw_free(raw_ma);
    ember_free(au);
    ember_free(ma);
    free(t_raw);
    free(t_auto);
    free(t_man);
    free(r_auto);
    free(r_man);
    free(w_raw);
    free(w_em);
    return ok;
}

/* ---- main ---------------------------------------------------------------------------------------------------- */

static void print_row(const options *o, const bench_case *c, const char *mode, double raw_us, double em_us,
                      double paired, double diff)
{
    double ratio = em_us / raw_us;
    if (o->csv) {
        printf("%s,%s,%lld,%d,%.3f,%.3f,%.4f\n", c->w->name, mode, (long long)c->accumulate, c->clip ? 1 : 0, raw_us,
               em_us, ratio);
    } else {
        double target = target_ratio(c->w);
        printf("%-10s %-7s %10lld %5d %10.2f %10.2f %7.4f %8.4f %7.2f  %-4s %9.2g\n", c->w->name, mode,
               (long long)c->accumulate, c->clip ? 1 : 0, raw_us, em_us, ratio, paired, target,
               ratio <= target ? "yes" : "NO", diff);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    options o;
    int rc = parse_args(argc, argv, &o);
    if (rc != 0)
        return rc == 1 ? 0 : 2;
    single_thread_env(argv);
    raw_set_threads(1);
    bool malloc_tuned = false;
#if defined(__GLIBC__)
    if (!o.system_malloc)
        malloc_tuned = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1;
#endif
    if (o.ddp > 0)
        return bench_ddp(o.ddp, o.reps, o.warmup, o.steps, o.workload, o.csv, argv);
    if (o.wall)
        bench_clock = CLOCK_MONOTONIC;

    if (o.csv) {
        printf("workload,mode,accumulate,clip,raw_us,ember_us,ratio\n");
    } else {
        printf("ember-bench: ember %s on libtorch %s, %d thread%s, %ld timed + %ld warm-up repetitions, "
               "medians per step in microseconds of %s, %s\n",
               em_version(), em_torch_version(), raw_num_threads(), raw_num_threads() == 1 ? "" : "s", o.reps,
               o.warmup, o.wall ? "wall time" : "thread CPU time",
               malloc_tuned ? "malloc thresholds raised" : "default malloc");
        if (o.aa)
            printf("A/A RUN: the auto and manual columns time the raw loop too; the ratios are the noise floor\n");
        printf("(paired: median over repetitions of ember/raw, each pair run back to back; max|dw|: largest "
               "difference of the final weights from raw's)\n");
        printf("%-10s %-7s %10s %5s %10s %10s %7s %8s %7s  %-4s %9s\n", "workload", "mode", "accumulate", "clip",
               "raw_us", "ember_us", "ratio", "paired", "target", "met", "max|dw|");
    }
    fflush(stdout);

    for (int wi = 0; wi < WL_COUNT; wi++) {
        if (o.workload >= 0 && o.workload != wi)
            continue;
        const bench_workload *w = &bench_workloads[wi];
        long steps = o.steps > 0 ? o.steps : default_steps(w);
        bench_data d;
        if (!data_make(&d, w, steps)) {
            fprintf(stderr, "ember-bench: out of memory for %s's data\n", w->name);
            return 1;
        }
        long accs[2] = {1, 4};
        size_t n_acc = 2;
        if (o.accumulate > 0) {
            accs[0] = o.accumulate;
            n_acc = 1;
        }
        for (size_t ai = 0; ai < n_acc; ai++) {
            long acc = accs[ai];
            for (int clip = 0; clip <= 1; clip++) {
                if (o.clip >= 0 && clip != o.clip)
                    continue;
                bench_case c = {.w = w, .steps = steps, .accumulate = acc, .clip = clip != 0};
                case_result r;
                if (!run_case(&c, &d, &o, &r)) {
                    fprintf(stderr, "ember-bench: %s, accumulate %ld, clip %d failed\n", w->name, acc, clip);
                    data_free(&d);
                    return 1;
                }
                if (o.mode != 2)
                    print_row(&o, &c, "auto", r.raw_us, r.auto_us, r.auto_paired, r.auto_diff);
                if (o.mode != 1)
                    print_row(&o, &c, "manual", r.raw_us, r.manual_us, r.manual_paired, r.manual_diff);
            }
        }
        data_free(&d);
    }
    return 0;
}
