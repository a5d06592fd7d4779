/* ddp_loop.c: ember-bench --ddp N - the per-rank step time of DDP (N processes, Gloo on the CPU)
 * against one process, on the same per-rank batch (tiny_mlp and mid_mlp).
 *
 * One repetition is one em_trainer_fit of `steps` batches of the workload's batch size per process
 * (automatic optimization, max_epochs 1). Every process runs on one thread (bench.c sets
 * OMP/OPENBLAS/MKL_NUM_THREADS=1 and at::set_num_threads(1): torchrun's default per rank), so the
 * comparison is per rank at the same thread count. Three runs per workload:
 *   one    one process alone;
 *   solo   N independent processes at once, each the one-process run (no communication): what
 *          N compute-bound processes cost each other on this machine (cores, caches, memory);
 *   ddp    N DDP processes (strategy ddp, devices N: ember's launcher starts this program N-1 more
 *          times, which run the same sequence of DDP fits as ranks 1..N-1 and print nothing),
 *          training N x steps batches of which each process takes `steps` (DistributedSampler).
 * Timed on rank 0 (for solo: the first process) with the wall clock (waiting for the other ranks is
 * part of a DDP step) and with the CPU time of its whole process (every thread: Gloo's too), the
 * median per step over the repetitions. ratio = ddp / one (the figure); ddp/solo is what DDP
 * adds over N processes that merely share the machine.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, fdopen */
#include <ember.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

typedef struct ddp_module {
    em_module base;
    em_nn *net;
    const bench_workload *w;
} ddp_module;

static em_tensor *ddp_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    ddp_module *dm = (ddp_module *)m;
    em_tensor *out = em_nn_forward(dm->net, b->t[0]);
    return dm->w->loss == LOSS_MSE ? em_mse_loss(out, b->t[1], EM_REDUCTION_MEAN)
                                   : em_cross_entropy(out, b->t[1], EM_REDUCTION_MEAN);
}

static em_status ddp_configure(em_module *m, em_optim_setup *setup)
{
    ddp_module *dm = (ddp_module *)m;
    em_params *ps = em_nn_parameters(dm->net);
    em_optimizer *o;
    if (dm->w->optim == OPT_SGD) {
        o = em_sgd(ps, &(em_sgd_opts){.lr = dm->w->lr, .momentum = dm->w->momentum});
    } else {
        em_adam_opts ao = EM_ADAM_OPTS_INIT;
        ao.lr = dm->w->lr;
        o = em_adam(ps, &ao);
    }
    em_params_free(ps);
    return em_optim_setup_add(setup, o);
}

static const em_module_ops ddp_ops = {.version = EM_MODULE_OPS_VERSION, .training_step = ddp_training_step,
                                      .configure_optimizers = ddp_configure};

static double clock_s(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static em_nn *ddp_net(const bench_workload *w)
{
    if (w->id == WL_TINY_MLP)
        return EM_NN_SEQUENTIAL(em_nn_linear(16, 32, true), em_nn_tanh(), em_nn_linear(32, 1, true));
    return EM_NN_SEQUENTIAL(em_nn_linear(256, 512, true), em_nn_relu(), em_nn_linear(512, 512, true), em_nn_relu(),
                            em_nn_linear(512, 10, true));
}

/* The start line of the solo processes: each writes a byte to `ready` after its warm-up and waits for
 * a byte on `go`; the first process collects N-1 ready bytes and writes N-1 go bytes. */
typedef struct solo_sync {
    int ready[2], go[2];
    long others; /* > 0 in the first process: how many to wait for; 0 in the others */
} solo_sync;

static bool solo_start(const solo_sync *sy)
{
    char c = 'r';
    if (sy->others == 0)
        return write(sy->ready[1], &c, 1) == 1 && read(sy->go[0], &c, 1) == 1;
    for (long i = 0; i < sy->others; i++)
        if (read(sy->ready[0], &c, 1) != 1)
            return false;
    for (long i = 0; i < sy->others; i++)
        if (write(sy->go[1], "g", 1) != 1)
            return false;
    return true;
}

typedef struct step_time {
    double wall_us, cpu_us; /* medians per step: wall clock, CPU time of the whole process */
} step_time;

/* The medians per step on `world` processes (1: no DDP); false on failure (a message on stderr). */
static bool time_world(const bench_workload *w, long world, long steps, long reps, long warmup, const solo_sync *sy,
                       step_time *out)
{
    em_manual_seed(7);
    int64_t rows = (int64_t)world * steps * w->batch;
    em_tensor *x = em_randn((int64_t[]){rows, w->x_row_shape[0]}, 2, NULL);
    em_tensor *y = w->loss == LOSS_MSE ? em_randn((int64_t[]){rows, w->classes}, 2, NULL)
                                       : em_randint(0, w->classes, (int64_t[]){rows}, 1, NULL);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = w->batch});
    ddp_module m = {.base = {.ops = &ddp_ops}, .net = ddp_net(w), .w = w};
    m.base.layers = m.net;
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 1;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    if (world > 1) {
        cfg.strategy = EM_STRATEGY_DDP;
        cfg.devices = world;
        cfg.ddp_timeout = 600; /* rank 0 may be slow to come back on a loaded machine */
    }
    em_trainer *t = em_trainer_new(&cfg);
    double *wall = calloc((size_t)reps, sizeof *wall), *cpu = calloc((size_t)reps, sizeof *cpu);
    bool ok = false;
    if (t != NULL && l != NULL && m.net != NULL && wall != NULL && cpu != NULL) {
        long r = 0;
        for (; r < warmup + reps; r++) {
            if (r == warmup && sy != NULL && !solo_start(sy)) {
                fprintf(stderr, "ember-bench: --ddp: the solo processes' start line failed: %s\n", strerror(errno));
                break;
            }
            double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            if (em_trainer_fit(t, &m.base, l, NULL) != EM_OK) {
                fprintf(stderr, "ember-bench: --ddp: %s\n", em_trainer_error(t));
                break;
            }
            if (r >= warmup) {
                wall[r - warmup] = 1e6 * (clock_s(CLOCK_MONOTONIC) - w0) / (double)steps;
                cpu[r - warmup] = 1e6 * (clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0) / (double)steps;
            }
        }
        if (r == warmup + reps) {
            qsort(wall, (size_t)reps, sizeof *wall, cmp_double);
            qsort(cpu, (size_t)reps, sizeof *cpu, cmp_double);
            out->wall_us = wall[reps / 2];
            out->cpu_us = cpu[reps / 2];
            ok = true;
        }
    } else {
        fprintf(stderr, "ember-bench: --ddp: setup failed: %s\n", em_last_error());
    }
    free(wall);
    free(cpu);
    em_trainer_free(t);
    em_loader_free(l);
    em_nn_free(m.net);
    em_tensor_free(x);
    em_tensor_free(y);
    return ok;
}

#define SOLO_ENV "EMBER_BENCH_SOLO"

static long default_ddp_steps(bench_workload_id id, long steps)
{
    return steps > 0 ? steps : (id == WL_TINY_MLP ? 200 : 40);
}

/* N one-process runs at once: this process and n-1 copies of this program (SOLO_ENV names the
 * workload and the start line's pipes), all started before the first one's timed repetitions. */
static bool time_solo(const bench_workload *w, long n, long steps, long reps, long warmup, char **argv,
                      step_time *out)
{
    solo_sync sy = {.ready = {-1, -1}, .go = {-1, -1}, .others = n - 1};
    pid_t *pids = calloc((size_t)n, sizeof *pids);
    bool ok = pids != NULL && pipe(sy.ready) == 0 && pipe(sy.go) == 0;
    char env[96];
    snprintf(env, sizeof env, "%d:%d:%d", (int)w->id, sy.ready[1], sy.go[0]);
    long started = 0;
    fflush(NULL);
    for (long i = 0; ok && i < n - 1; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            ok = false;
        } else if (pid == 0) {
            setenv(SOLO_ENV, env, 1);
            execv("/proc/self/exe", argv);
            _exit(127);
        } else {
            pids[started++] = pid;
        }
    }
    if (!ok)
        fprintf(stderr, "ember-bench: --ddp: cannot start the solo processes: %s\n", strerror(errno));
    else
        ok = time_world(w, 1, steps, reps, warmup, &sy, out);
    for (int i = 0; i < 2; i++) { /* a child stuck at the start line sees EOF */
        if (sy.ready[i] >= 0)
            close(sy.ready[i]);
        if (sy.go[i] >= 0)
            close(sy.go[i]);
    }
    for (long i = 0; i < started; i++) {
        int st = 0;
        if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "ember-bench: --ddp: a solo process failed\n");
            ok = false;
        }
    }
    free(pids);
    return ok;
}

/* A solo process (SOLO_ENV set): the one-process run of its workload, silently; the exit status. */
static int solo_child(const char *spec, long steps, long reps, long warmup)
{
    int id = -1, ready = -1, go = -1;
    if (sscanf(spec, "%d:%d:%d", &id, &ready, &go) != 3 || id < 0 || id >= WL_COUNT)
        return 2;
    solo_sync sy = {.ready = {-1, ready}, .go = {go, -1}, .others = 0};
    step_time st;
    return time_world(&bench_workloads[id], 1, default_ddp_steps((bench_workload_id)id, steps), reps, warmup, &sy,
                      &st)
               ? 0
               : 1;
}

int bench_ddp(long n, long reps, long warmup, long steps, int workload, bool csv, char **argv)
{
    const char *solo = getenv(SOLO_ENV);
    if (solo != NULL)
        return solo_child(solo, steps, reps, warmup);
    /* a rank the launcher started: the same DDP fits, silently; rank 0 times and prints */
    bool rank0 = getenv("LOCAL_RANK") == NULL || strcmp(getenv("LOCAL_RANK"), "0") == 0;
    const bench_workload_id ids[] = {WL_TINY_MLP, WL_MID_MLP};
    step_time one[2] = {{0}}, alone[2] = {{0}}, many[2] = {{0}};
    /* the runs without DDP first: the other ranks, started by the first DDP fit, then wait for
     * nothing but rank 0's DDP fits */
    for (size_t i = 0; rank0 && i < 2; i++) {
        if (workload >= 0 && workload != (int)ids[i])
            continue;
        const bench_workload *w = &bench_workloads[ids[i]];
        long s = default_ddp_steps(ids[i], steps);
        if (!time_world(w, 1, s, reps, warmup, NULL, &one[i]) || !time_solo(w, n, s, reps, warmup, argv, &alone[i]))
            return 1;
    }
    for (size_t i = 0; i < 2; i++) {
        if (workload >= 0 && workload != (int)ids[i])
            continue;
        if (!time_world(&bench_workloads[ids[i]], n, default_ddp_steps(ids[i], steps), reps, warmup, NULL, &many[i]))
            return 1;
    }
    if (!rank0)
        return 0;
    if (csv)
        printf("workload,ddp,N,0,one_rank_us,n_rank_us,ratio\n");
    else
        printf("ember-bench --ddp %ld: per-rank step in microseconds (medians; wall time, and CPU time of the whole "
               "process), one thread per process:\n"
               "one process alone (one), %ld independent processes at once (solo), %ld DDP ranks (Gloo, CPU; "
               "ddp), the same batch per process\n"
               "%-10s %5s %9s %9s %9s %7s %10s %8s %8s %8s\n",
               n, n, n, "workload", "ranks", "one_us", "solo_us", "ddp_us", "ratio", "ddp/solo", "one_cpu", "solo_cpu",
               "ddp_cpu");
    for (size_t i = 0; i < 2; i++) {
        if (workload >= 0 && workload != (int)ids[i])
            continue;
        const char *name = bench_workloads[ids[i]].name;
        double ratio = many[i].wall_us / one[i].wall_us;
        if (csv)
            printf("%s,ddp,%ld,0,%.1f,%.1f,%.3f\n", name, n, one[i].wall_us, many[i].wall_us, ratio);
        else
            printf("%-10s %5ld %9.1f %9.1f %9.1f %7.3f %10.3f %8.1f %8.1f %8.1f\n", name, n, one[i].wall_us,
                   alone[i].wall_us, many[i].wall_us, ratio, many[i].wall_us / alone[i].wall_us, one[i].cpu_us,
                   alone[i].cpu_us, many[i].cpu_us);
    }
    fflush(stdout);
    return 0;
}
