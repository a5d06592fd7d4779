/* test_ddp_model_checkpoint.c: ModelCheckpoint under DDP (2 processes, Gloo, 127.0.0.1, torchrun's
 * variables set here).
 *
 * Lightning 2.2.5's ModelCheckpoint.check_monitor_top_k makes the top-k decision unanimous:
 * `trainer.strategy.reduce_boolean_decision(bool(should_update_best_and_save))` (all=True), each rank
 * judging its own monitored value. Here the monitored metric is logged without sync_dist, so the ranks
 * see different values:
 *
 *   epoch        0  1  2
 *   rank 0       3  1  2
 *   rank 1       3  4  2
 *
 * with save_top_k=1, mode "min": epoch 0 is saved (fewer than k models: no collective); at epoch 1 rank
 * 0 improves (1 < 3) but rank 1 does not (4 > 3): no save; at epoch 2 both improve on their epoch-0
 * value 3: saved, and epoch 0's file removed. Left: only epoch=2-step=6.ckpt. (Rank 0 deciding alone
 * would have kept epoch=1-step=4.ckpt: 2 is not below its 1.)
 */
#include "ddp_worker.h"
#include "helpers.h"

#include <dirent.h>

static const char *self_exe = "/proc/self/exe";

static const double scores[2][3] = {{3, 1, 2}, {3, 4, 2}};

/* this rank's score of this epoch, not synced across ranks */
static em_status on_train_epoch_end(em_module *m)
{
    em_trainer *t = em_module_trainer(m);
    int64_t r = em_trainer_global_rank(t), e = em_trainer_current_epoch(t);
    if (r < 0 || r > 1 || e < 0 || e > 2)
        return em_error_set(EM_EUSER, "unexpected rank %lld or epoch %lld", (long long)r, (long long)e);
    return em_log(m, "score", scores[r][e], 0);
}


/* One rank: 3 epochs of 2 batches, ModelCheckpoint(DIR/ckpt, monitor "score", save_top_k 1, min). */
static int worker_main(const char *dir)
{
    rank_result out;
    memset(&out, 0, sizeof out);
    char ckpt_dir[400];
    snprintf(ckpt_dir, sizeof ckpt_dir, "%s/ckpt", dir);
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 3;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    cfg.strategy = EM_STRATEGY_DDP;
    cfg.accelerator = EM_ACCELERATOR_CPU;
    cfg.ddp_timeout = 60.0;
    em_trainer *t = em_trainer_new(&cfg);
    if (t == NULL) {
        out.status = -1;
        snprintf(out.error, sizeof out.error, "em_trainer_new: %s", em_last_error());
    } else {
        out.rank = em_trainer_global_rank(t);
        out.world = em_trainer_world_size(t);
        em_model_checkpoint_opts o = EM_MODEL_CHECKPOINT_OPTS_INIT;
        o.dirpath = ckpt_dir;
        o.monitor = "score";
        o.save_top_k = 1;
        em_trainer_add_callback(t, em_model_checkpoint(&o));
        em_manual_seed(5);
        em_module_ops ops = mse_module_ops;
        ops.on_train_epoch_end = on_train_epoch_end;
        mse_module m = {.base = {.ops = &ops}, .lr = 0.05};
        m.net = em_nn_linear(2, 1, true);
        m.base.layers = m.net;
        em_tensor *x = em_randn(EM_SHAPE(8, 2), NULL);
        em_tensor *y = em_sum_dim(x, 1, true);
        em_loader *train = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 2});
        out.status = (int)em_trainer_fit(t, &m.base, train, NULL);
        snprintf(out.error, sizeof out.error, "%s", em_trainer_error(t));
        out.steps = em_trainer_global_step(t);
        em_loader_free(train);
        em_tensor_free(x);
        em_tensor_free(y);
        em_nn_free(m.net);
        em_trainer_free(t);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/out", dir);
    result_write_rank(path, &out);
    return 0;
}

static void test_ddp_top_k_decision_is_unanimous(void **state)
{
    (void)state;
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/ember-ddp-mckpt-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char *argv[] = {(char *)self_exe, "worker", dir, NULL};
    int st[2];
    if (!spawn_torchrun_pair(argv, 1, "OMP_NUM_THREADS=1", 150, st))
        fail_msg("the ranks ended with wait statuses %#x and %#x (-1: killed at the deadline)", st[0], st[1]);
    for (int r = 0; r < 2; r++) {
        char path[512];
        snprintf(path, sizeof path, "%s/out.%d", dir, r);
        rank_result res;
        if (!result_read(path, &res))
            fail_msg("rank %d wrote no result", r);
        if (res.status != EM_OK)
            fail_msg("rank %d: %s", r, res.error);
        assert_int_equal(res.rank, r);
        assert_int_equal(res.world, 2);
        assert_int_equal(res.steps, 6); /* 3 epochs x 2 batches of 2 rows per rank */
    }
    char ckpt_dir[128];
    snprintf(ckpt_dir, sizeof ckpt_dir, "%s/ckpt", dir);
    DIR *d = opendir(ckpt_dir);
    assert_non_null(d);
    int n = 0;
    char seen[512] = "";
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        n++;
        strncat(seen, e->d_name, sizeof seen - strlen(seen) - 2);
        strcat(seen, " ");
    }
    closedir(d);
    print_message("checkpoints left: %s\n", seen);
    assert_int_equal(n, 1);
    assert_string_equal(seen, "epoch=2-step=6.ckpt ");
    rm_tree(dir);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "worker") == 0)
        return worker_main(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ddp_top_k_decision_is_unanimous, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
