/* ddp_loop.c: ember-bench --ddp N - the per-rank step time of DDP (N processes, Gloo on the CPU)
 * against one process, on the same per-rank batch (tiny_mlp and mid_mlp).
 *
 * One repetition is one em_trainer_fit of `steps` batches of the workload's batch size per process
 * (automatic optimization, max_epochs 1). The one-process run trains `steps` batches; the N-process
 * run (strategy ddp, devices N: ember's launcher starts this program N-1 more times, which run the
 * same sequence of fits as ranks 1..N-1 and print nothing) trains N x steps batches, of which each
 * process takes `steps` (the DistributedSampler). Timed on rank 0 with the wall clock (waiting for
 * the other ranks is part of a DDP step); the median per step over the repetitions.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <ember.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
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

/* The median microseconds per step on `world` processes (1: no DDP); -1 on failure. */
static double time_world(const bench_workload *w, long world, long steps, long reps, long warmup)
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
    }
    em_trainer *t = em_trainer_new(&cfg);
    double *us = calloc((size_t)reps, sizeof *us);
    double result = -1;
    if (t != NULL && l != NULL && m.net != NULL && us != NULL) {
        long r = 0;
        for (; r < warmup + reps; r++) {
            double t0 = wall_now();
            if (em_trainer_fit(t, &m.base, l, NULL) != EM_OK) {
                fprintf(stderr, "ember-bench: --ddp: %s\n", em_trainer_error(t));
                break;
            }
            if (r >= warmup)
                us[r - warmup] = 1e6 * (wall_now() - t0) / (double)steps;
        }
        if (r == warmup + reps) {
            qsort(us, (size_t)reps, sizeof *us, cmp_double);
            result = us[reps / 2];
        }
    } else {
        fprintf(stderr, "ember-bench: --ddp: setup failed: %s\n", em_last_error());
    }
    free(us);
    em_trainer_free(t);
    em_loader_free(l);
    em_nn_free(m.net);
    em_tensor_free(x);
    em_tensor_free(y);
    return result;
}

int bench_ddp(long n, long reps, long warmup, long steps, int workload, bool csv)
{
    /* a rank the launcher started: the same fits, silently; rank 0 times and prints */
    bool rank0 = getenv("LOCAL_RANK") == NULL || strcmp(getenv("LOCAL_RANK"), "0") == 0;
    if (rank0) {
        if (csv)
            printf("workload,ddp,N,0,one_rank_us,n_rank_us,ratio\n");
        else
            printf("ember-bench --ddp %ld: per-rank step (median wall time, microseconds) of one process and of %ld "
                   "DDP processes (Gloo, CPU), the same batch per process\n%-10s %6s %12s %12s %7s\n",
                   n, n, "workload", "ranks", "one_rank_us", "n_rank_us", "ratio");
        fflush(stdout);
    }
    const bench_workload_id ids[] = {WL_TINY_MLP, WL_MID_MLP};
    for (size_t i = 0; i < 2; i++) {
        if (workload >= 0 && workload != (int)ids[i])
            continue;
        const bench_workload *w = &bench_workloads[ids[i]];
        long s = steps > 0 ? steps : (ids[i] == WL_TINY_MLP ? 200 : 40);
        double one = rank0 ? time_world(w, 1, s, reps, warmup) : 0;
        double many = time_world(w, n, s, reps, warmup);
        if (one < 0 || many < 0)
            return 1;
        if (!rank0)
            continue;
        if (csv)
            printf("%s,ddp,%ld,0,%.1f,%.1f,%.3f\n", w->name, n, one, many, many / one);
        else
            printf("%-10s %6ld %12.1f %12.1f %7.3f\n", w->name, n, one, many, many / one);
        fflush(stdout);
    }
    return 0;
}
