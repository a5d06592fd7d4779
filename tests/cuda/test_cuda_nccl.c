/* test_cuda_nccl.c: DDP on CUDA with NCCL (Lightning: DDPStrategy on a CUDA accelerator, whose
 * process group backend is "nccl"). Skipped (exit 77) where the linked libtorch has no CUDA or no
 * NCCL or no GPU is visible, saying which: written for the GPU proof (scripts/gpu-check.sh runs it).
 *
 * The same binary is the test and the ranks: `test_cuda_nccl worker MODE OUT` trains as one rank
 * on cuda:LOCAL_RANK and writes OUT.<rank> (tests/ddp/ddp_worker.h's format; its metric_local holds
 * em_trainer_process_group_backend). Cases:
 *  - one rank, backend auto: NCCL is chosen, training equals a single-process fit on cuda:0 over the
 *    same batches (|dw| <= 1e-5 + 1e-5 |w|), one all-reduce per step, barrier and broadcast work;
 *  - one rank, gloo asked for on CUDA: the override is honoured (Gloo with CUDA tensors);
 *  - two ranks through ember's launcher on cuda:0 and cuda:1 (skipped with fewer than 2 GPUs: NCCL
 *    does not run two ranks on one GPU): equal to the single process over the global batches.
 */
#include "../ddp/ddp_worker.h"
#include "helpers.h"

#include <math.h>

#define ROWS 32
#define EPOCHS 3

static const char *self_exe = "/proc/self/exe";


/* One run on CUDA: DDP with `devices` ranks per node and `backend`, or (reference) one process
 * without DDP whose loader shuffles as the DistributedSampler with seed 0 does over the global batch. */
static void run(bool reference, int64_t devices, em_process_group_backend backend, rank_result *out)
{
    memset(out, 0, sizeof *out);
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = EPOCHS;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    cfg.accelerator = EM_ACCELERATOR_CUDA;
    cfg.ddp_timeout = 60.0;
    if (!reference) {
        cfg.strategy = EM_STRATEGY_DDP;
        cfg.devices = devices;
        cfg.process_group_backend = backend;
    }
    em_trainer *t = em_trainer_new(&cfg);
    if (t == NULL) {
        out->status = -1;
        snprintf(out->error, sizeof out->error, "em_trainer_new: %s", em_last_error());
        return;
    }
    out->rank = em_trainer_global_rank(t);
    out->world = em_trainer_world_size(t);
    em_manual_seed(1234 + (uint64_t)out->rank); /* different per rank: rank 0's broadcast makes them equal */
    mse_module m = {.base = {.ops = &mse_module_ops}, .lr = 0.1, .momentum = 0.9};
    m.net = em_nn_sequential((em_nn *[]){em_nn_linear(4, 8, true), em_nn_tanh(), em_nn_linear(8, 1, true)}, 3);
    m.base.layers = m.net;
    float xs[ROWS * 4], ys[ROWS];
    for (int i = 0; i < ROWS; i++) {
        for (int j = 0; j < 4; j++)
            xs[i * 4 + j] = (float)sin(0.37 * i + 1.3 * j);
        ys[i] = (float)cos(0.21 * i);
    }
    em_tensor *x = em_tensor_from(xs, EM_F32, (int64_t[]){ROWS, 4}, 2, NULL);
    em_tensor *y = em_tensor_from(ys, EM_F32, (int64_t[]){ROWS, 1}, 2, NULL);
    int64_t per_rank = 8 / (reference ? 1 : out->world);
    em_loader *train = em_tensor_loader((em_tensor *[]){x, y}, 2,
                                        &(em_loader_opts){.batch_size = per_rank, .shuffle = reference});
    out->status = em_trainer_fit(t, &m.base, train, NULL);
    snprintf(out->error, sizeof out->error, "%s", em_trainer_error(t));
    out->steps = em_trainer_global_step(t);
    out->allreduces = em_trainer_grad_allreduces(t);
    out->metric_local = (double)em_trainer_process_group_backend(t);
    out->from_rank1 = -1;
    if (!reference && out->status == EM_OK) { /* the user collectives after fit, from the last rank */
        int64_t last = out->world - 1, v = out->rank == last ? 4242 : 7;
        if (em_trainer_barrier(t) == EM_OK && em_trainer_broadcast(t, &v, sizeof v, last) == EM_OK &&
            em_trainer_barrier(t) == EM_OK)
            out->from_rank1 = v;
        else
            snprintf(out->error, sizeof out->error, "after fit: %s", em_last_error());
    }
    result_take_weights(out, m.net, 64); /* every value: the net is small */
    em_loader_free(train);
    em_tensor_free(x);
    em_tensor_free(y);
    em_nn_free(m.net);
    em_trainer_free(t);
}

/* `test_cuda_nccl worker MODE OUT`: MODE is "nccl1", "gloo1" or "nccl2". */
static int worker_main(const char *mode, const char *out)
{
    rank_result r;
    em_process_group_backend b = strncmp(mode, "gloo", 4) == 0 ? EM_PG_BACKEND_GLOO : EM_PG_BACKEND_AUTO;
    run(false, mode[4] - '0', b, &r);
    result_write_rank(out, &r);
    return r.status == 0 ? 0 : 1;
}

/* Start `test_cuda_nccl worker MODE` (ember's launcher starts the other ranks) and compare every rank
 * with the single-process reference. */
static void check_mode(const char *mode, int world, em_process_group_backend expect)
{
    char dir[] = "/tmp/ember-nccl-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char out[64];
    snprintf(out, sizeof out, "%s/out", dir);
    char *argv[] = {(char *)self_exe, "worker", (char *)mode, out, NULL};
    double t0 = now_s();
    pid_t p = spawn(self_exe, argv, NULL);
    int st = wait_deadline(p, t0 + 240);
    print_message("%s: %d rank(s) in %.1f s\n", mode, world, now_s() - t0);
    assert_int_not_equal(st, -1);
    rank_result ref;
    run(true, 1, EM_PG_BACKEND_AUTO, &ref);
    assert_int_equal(ref.status, 0);
    assert_int_equal(ref.allreduces, 0);
    for (int r = 0; r < world; r++) {
        char path[128];
        snprintf(path, sizeof path, "%s.%d", out, r);
        rank_result rr;
        if (!result_read(path, &rr))
            fail_msg("rank %d wrote no result (wait status %#x)", r, st);
        if (rr.status != 0)
            fail_msg("rank %d: %s", r, rr.error);
        assert_int_equal(rr.rank, r);
        assert_int_equal(rr.world, world);
        assert_int_equal((int)rr.metric_local, (int)expect);
        assert_int_equal(rr.from_rank1, 4242);
        assert_int_equal(rr.steps, ref.steps);
        assert_int_equal(rr.allreduces, rr.steps); /* one bucket: one all-reduce per step */
        assert_int_equal(rr.n_w, ref.n_w);
        for (int i = 0; i < ref.n_w; i++)
            assert_close(rr.w[i], ref.w[i], 1e-5, 1e-5);
    }
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    rm_tree(dir);
}

static void test_nccl_one_rank(void **state)
{
    (void)state;
    check_mode("nccl1", 1, EM_PG_BACKEND_NCCL);
}

static void test_gloo_override_on_cuda(void **state)
{
    (void)state;
    check_mode("gloo1", 1, EM_PG_BACKEND_GLOO);
}

static void test_nccl_two_ranks(void **state)
{
    (void)state;
    if (em_cuda_device_count() < 2) {
        print_message("skipped: %lld GPU visible; NCCL runs one rank per GPU, two ranks need two\n",
                      (long long)em_cuda_device_count());
        skip();
    }
    check_mode("nccl2", 2, EM_PG_BACKEND_NCCL);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "worker") == 0)
        return worker_main(argv[2], argv[3]);
    if (!em_cuda_is_available()) {
        printf("skipped: the linked libtorch %s has no CUDA (or no GPU is visible); NCCL needs one\n",
               em_torch_version());
        return 77;
    }
    if (!em_process_group_backend_available(EM_PG_BACKEND_NCCL)) {
        printf("skipped: the linked libtorch %s was built without NCCL\n", em_torch_version());
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_nccl_one_rank, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_gloo_override_on_cuda, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nccl_two_ranks, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests_name("cuda_nccl", tests, NULL, NULL);
}
