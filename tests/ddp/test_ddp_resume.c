/* test_ddp_resume.c: em_trainer_save_checkpoint / em_trainer_fit_from under DDP (2 processes, Gloo,
 * 127.0.0.1, torchrun's variables set here).
 *
 * Three 2-rank fits of the same program: "full" runs uninterrupted; "save" saves a checkpoint inside
 * an accumulation window of epoch 1 (the ranks' local gradients differ there: rank 0 gathers them) and
 * stops by failing; "resume" starts two new processes from that file. Each rank of "resume" ends with
 * the same weights, bit for bit, as the same rank of "full", and the same global_step. The model has
 * dropout (each rank's generator state is kept) and the DistributedSampler shuffles.
 */
#include "ddp_worker.h"
#include "helpers.h"

static const char *self_exe = "/proc/self/exe";


static char ckpt_path[400];

/* saves in epoch 1, batch 2 (accumulating: accumulate 2), then stops the fit */
static em_status save_batch_end(em_callback *cb, em_trainer *t, em_module *m, const em_tensor *loss,
                                const em_batch *b, int64_t batch_idx)
{
    (void)cb, (void)m, (void)loss, (void)b;
    if (em_trainer_current_epoch(t) != 1 || batch_idx != 2)
        return EM_OK;
    em_status s = em_trainer_save_checkpoint(t, ckpt_path);
    return s != EM_OK ? s : em_error_set(EM_EUSER, "saver: stopping here");
}

static const em_callback_ops saver_ops = {
    .version = EM_CALLBACK_OPS_VERSION, .name = "saver", .on_train_batch_end = save_batch_end};

/* One rank of `mode` ("full", "save", "resume"); the checkpoint is DIR/run.ckpt. */
static void run(const char *mode, const char *dir, rank_result *out)
{
    memset(out, 0, sizeof *out);
    snprintf(ckpt_path, sizeof ckpt_path, "%s/run.ckpt", dir);
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 3;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    cfg.accumulate_grad_batches = 2;
    cfg.strategy = EM_STRATEGY_DDP;
    cfg.accelerator = EM_ACCELERATOR_CPU;
    cfg.seed = 7;
    cfg.ddp_timeout = 60.0;
    em_trainer *t = em_trainer_new(&cfg);
    if (t == NULL) {
        out->status = -1;
        snprintf(out->error, sizeof out->error, "em_trainer_new: %s", em_last_error());
        return;
    }
    out->rank = em_trainer_global_rank(t);
    out->world = em_trainer_world_size(t);
    if (strcmp(mode, "save") == 0)
        em_trainer_add_callback(t, em_callback_new(&saver_ops, NULL));
    em_manual_seed(1234);
    mse_module m = {.base = {.ops = &mse_module_ops}, .lr = 0.05, .momentum = 0.9};
    m.net = EM_NN_SEQUENTIAL(em_nn_linear(4, 8, true), em_nn_tanh(), em_nn_dropout(0.25), em_nn_linear(8, 1, true));
    m.base.layers = m.net;
    em_manual_seed(99);
    em_tensor *x = em_randn(EM_SHAPE(48, 4), NULL);
    em_tensor *y = em_sum_dim(x, 1, true);
    em_loader *train = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 4});
    em_status s = em_trainer_fit_from(t, &m.base, train, NULL, strcmp(mode, "resume") == 0 ? ckpt_path : NULL);
    out->status = (int)s;
    snprintf(out->error, sizeof out->error, "%s", em_trainer_error(t));
    out->steps = em_trainer_global_step(t);
    result_take_weights(out, m.net, 64); /* every value: the net is small */
    em_loader_free(train);
    em_tensor_free(x);
    em_tensor_free(y);
    em_nn_free(m.net);
    em_trainer_free(t);
}

static int worker_main(const char *mode, const char *dir)
{
    rank_result r;
    run(mode, dir, &r);
    char path[512];
    snprintf(path, sizeof path, "%s/%s.%lld", dir, mode, r.rank);
    result_write(path, &r);
    return 0;
}

/* Two ranks of `mode` with torchrun's variables; their results. */
static void launch(const char *mode, const char *dir, rank_result res[2])
{
    char *argv[] = {(char *)self_exe, "worker", (char *)mode, (char *)dir, NULL};
    int st[2];
    if (!spawn_torchrun_pair(argv, 1, "OMP_NUM_THREADS=1", 150, st))
        fail_msg("%s: the ranks ended with wait statuses %#x and %#x (-1: killed at the deadline)", mode, st[0], st[1]);
    for (int r = 0; r < 2; r++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s.%d", dir, mode, r);
        if (!result_read(path, &res[r]))
            fail_msg("%s: rank %d wrote no result", mode, r);
        assert_int_equal(res[r].rank, r);
        assert_int_equal(res[r].world, 2);
    }
}

static void test_ddp_save_and_resume(void **state)
{
    (void)state;
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/ember-ddp-resume-XXXXXX");
    assert_non_null(mkdtemp(dir));
    rank_result full[2], saved[2], resumed[2];
    launch("full", dir, full);
    launch("save", dir, saved);
    launch("resume", dir, resumed);
    for (int r = 0; r < 2; r++) {
        if (full[r].status != EM_OK)
            fail_msg("full, rank %d: %s", r, full[r].error);
        if (saved[r].status != EM_EUSER)
            fail_msg("save, rank %d: %d %s", r, saved[r].status, saved[r].error);
        if (resumed[r].status != EM_OK)
            fail_msg("resume, rank %d: %s", r, resumed[r].error);
        assert_int_equal(resumed[r].steps, full[r].steps);
        assert_int_equal(resumed[r].n_w, full[r].n_w);
        assert_true(full[r].n_w > 0);
        assert_memory_equal(resumed[r].w, full[r].w, (size_t)full[r].n_w * sizeof(double));
        /* the interrupted fit had not got there */
        assert_true(saved[r].steps < full[r].steps);
    }
    /* the ranks agree with each other (DDP) */
    assert_memory_equal(resumed[0].w, resumed[1].w, (size_t)full[0].n_w * sizeof(double));
    rm_tree(dir);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "worker") == 0)
        return worker_main(argv[2], argv[3]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ddp_save_and_resume, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
