/* test_loader_trace.c: the in-memory loader (TensorDataset + DataLoader) and the trainer's JSON-lines trace. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "helpers.h"

/* ---- the loader ----------------------------------------------------------------------------------- */

/* DataLoader(TensorDataset(arange(10), 2*arange(10)), batch_size=4): [0..3], [4..7], [8, 9] */
static void test_loader__batches_are_consecutive_rows_and_the_last_is_short(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = em_arange(0, 10, 1, NULL);
    em_tensor *y = em_mul_scalar(x, 2.0);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 4});
    assert_nonnull_em(l);
    assert_int_equal(em_loader_num_batches(l), 3);
    em_batch b;
    assert_ok(em_loader_get(l, 0, 2, &b));
    assert_int_equal(b.n, 2);
    assert_int_equal(b.size, 2);
    float v[2];
    helper_values(b.t[0], v, 2);
    assert_close_rel(v[0], 8, 0);
    assert_close_rel(v[1], 9, 0);
    helper_values(b.t[1], v, 2);
    assert_close_rel(v[1], 18, 0);
    assert_int_equal(em_loader_get(l, 0, 3, &b), EM_EINVAL); /* out of range */
    em_clear_error();
    em_loader_free(l);

    /* drop_last: 10 rows, batch 4 -> 2 batches */
    l = em_tensor_loader((em_tensor *[]){x}, 1, &(em_loader_opts){.batch_size = 4, .drop_last = true});
    assert_int_equal(em_loader_num_batches(l), 2);
    em_loader_free(l);
    assert_ok(em_scope_end());
}

/* shuffle: every epoch a permutation of all rows, reproducible from (seed, epoch), different across epochs */
static void test_loader__shuffle_is_a_permutation_per_epoch(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = em_arange(0, 12, 1, &(em_tensor_opts){.dtype = EM_I64});
    em_loader *l = em_tensor_loader((em_tensor *[]){x}, 1, &(em_loader_opts){.batch_size = 5, .shuffle = true, .seed = 7});
    em_loader *l2 = em_tensor_loader((em_tensor *[]){x}, 1, &(em_loader_opts){.batch_size = 5, .shuffle = true, .seed = 7});
    int64_t epoch_rows[2][12];
    for (int e = 0; e < 2; e++) {
        int seen[12] = {0};
        int k = 0;
        for (int64_t i = 0; i < em_loader_num_batches(l); i++) {
            em_batch b, b2;
            assert_ok(em_loader_get(l, e, i, &b));
            assert_ok(em_loader_get(l2, e, i, &b2));
            int64_t rows[5], rows2[5];
            int64_t n = em_tensor_numel(b.t[0]);
            assert_ok(em_tensor_copy_to(b.t[0], rows, sizeof rows, EM_I64));
            assert_ok(em_tensor_copy_to(b2.t[0], rows2, sizeof rows2, EM_I64));
            for (int64_t j = 0; j < n; j++) {
                assert_int_equal(rows[j], rows2[j]); /* same seed, same epoch: same order */
                seen[rows[j]]++;
                epoch_rows[e][k++] = rows[j];
            }
        }
        assert_int_equal(k, 12);
        for (int r = 0; r < 12; r++)
            assert_int_equal(seen[r], 1);
    }
    assert_memory_not_equal(epoch_rows[0], epoch_rows[1], sizeof epoch_rows[0]);
    em_loader_free(l);
    em_loader_free(l2);
    assert_ok(em_scope_end());
}

static void test_loader__rejects_mismatched_rows_and_keeps_no_reference(void **state)
{
    (void)state;
    em_tensor *a = em_zeros(EM_SHAPE(4, 2), NULL);
    em_tensor *b = em_zeros(EM_SHAPE(5), NULL);
    assert_null(em_tensor_loader((em_tensor *[]){a, b}, 2, NULL));
    assert_error_contains("size mismatch");
    em_clear_error();
    assert_null(em_tensor_loader((em_tensor *[]){a}, 0, NULL));
    em_clear_error();
    /* the loader holds its own references: the caller's tensors can go first */
    em_loader *l = em_tensor_loader((em_tensor *[]){a}, 1, &(em_loader_opts){.batch_size = 3});
    em_tensor_free(a);
    em_tensor_free(b);
    em_scope_begin();
    em_batch batch;
    assert_ok(em_loader_get(l, 0, 1, &batch));
    assert_int_equal(batch.size, 1);
    assert_ok(em_scope_end());
    em_loader_free(l);
}

/* ---- the trace ------------------------------------------------------------------------------------ */

struct reg {
    em_module base;
    em_nn *net;
};

static em_tensor *reg_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    return em_mse_loss(em_nn_forward(((struct reg *)m)->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
}

static em_status reg_optimizers(em_module *m, em_optim_setup *setup)
{
    em_params *ps = em_nn_parameters(((struct reg *)m)->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.05});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static const em_module_ops reg_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = reg_step,
    .configure_optimizers = reg_optimizers,
};

static int count_lines_with(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f) != NULL)
        if (strstr(line, needle) != NULL)
            n++;
    fclose(f);
    return n;
}

/* 6 batches, A = 2, clipping at 1e-3: 6 training_step lines, 3 optimizer_step lines whose gradient
 * norm after clipping is ~1e-3 and below the norm before. */
static void test_trace__one_line_per_training_step_and_optimizer_step(void **state)
{
    (void)state;
    char dir[] = "/tmp/ember-trace-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/trace.jsonl", dir);

    em_manual_seed(0);
    em_tensor *x = em_randn(EM_SHAPE(12, 3), NULL);
    em_tensor *y = em_randn(EM_SHAPE(12, 1), NULL);
    struct reg m = {.base = {.ops = &reg_ops, .manual_optimization = false}, .net = em_nn_linear(3, 1, true)};
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 1;
    cfg.accumulate_grad_batches = 2;
    cfg.gradient_clip_val = 1e-3;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    cfg.trace_path = path;
    em_trainer *t = em_trainer_new(&cfg);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 2});
    assert_ok(em_trainer_fit(t, &m.base, l, NULL));

    assert_int_equal(count_lines_with(path, "\"event\":\"training_step\""), 6);
    assert_int_equal(count_lines_with(path, "\"event\":\"optimizer_step\""), 3);
    assert_int_equal(count_lines_with(path, "\"batch_idx\":5,\"global_step_before\":2,\"step_count\":3"), 1);
    FILE *f = fopen(path, "r");
    char line[4096];
    int checked = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        const char *p = strstr(line, "\"grad_norm\":");
        const char *q = strstr(line, "\"grad_norm_before_clip\":");
        if (p == NULL || q == NULL)
            continue;
        double after = strtod(p + strlen("\"grad_norm\":"), NULL);
        double before = strtod(q + strlen("\"grad_norm_before_clip\":"), NULL);
        assert_true(before > 1e-3);
        assert_close_rel(after, 1e-3, 1e-3); /* clip_grad_norm_: max_norm / (total + 1e-6) */
        checked++;
    }
    fclose(f);
    assert_int_equal(checked, 3);

    /* an unwritable trace path fails the fit before training, with the path in the message */
    em_trainer_config bad = cfg;
    bad.trace_path = "/nonexistent-dir/trace.jsonl";
    em_trainer *t2 = em_trainer_new(&bad);
    assert_int_equal(em_trainer_fit(t2, &m.base, l, NULL), EM_EIO);
    assert_non_null(strstr(em_trainer_error(t2), "/nonexistent-dir/trace.jsonl"));
    em_clear_error();

    em_trainer_free(t2);
    em_trainer_free(t);
    em_loader_free(l);
    em_nn_free(m.net);
    em_tensor_free(x);
    em_tensor_free(y);
    unlink(path);
    rmdir(dir);
}

/* ---- ownership: what the trainer owns cannot be freed by the user ------------------------------------ */

static int free_checks;

static em_tensor *owning_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    size_t n = 0, ns = 0;
    em_optimizer **opts = em_optimizers(m, &n);
    em_scheduler **scheds = em_lr_schedulers(m, &ns);
    if (n != 1 || ns != 1)
        return NULL;
    /* freeing the wrapper, the raw optimizer or the scheduler is refused, with a message */
    em_optimizer_free(opts[0]);
    if (em_last_status() == EM_EINVAL && strstr(em_last_error(), "belongs to a trainer") != NULL)
        free_checks++;
    em_clear_error();
    em_optimizer_free(em_optimizer_inner(opts[0]));
    if (em_last_status() == EM_EINVAL)
        free_checks++;
    em_clear_error();
    em_scheduler_free(scheds[0]);
    if (em_last_status() == EM_EINVAL && strstr(em_last_error(), "belongs to a trainer") != NULL)
        free_checks++;
    em_clear_error();
    return reg_step(m, b, 0);
}

static em_status owning_optimizers(em_module *m, em_optim_setup *setup)
{
    em_params *ps = em_nn_parameters(((struct reg *)m)->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.05});
    em_params_free(ps);
    em_status s = em_optim_setup_add(setup, opt);
    if (s != EM_OK)
        return s;
    return em_optim_setup_add_scheduler(setup, em_step_lr(opt, 1, 0.5), NULL);
}

static const em_module_ops owning_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = owning_step,
    .configure_optimizers = owning_optimizers,
};

static void test_ownership__the_trainers_optimizers_and_schedulers_refuse_free(void **state)
{
    (void)state;
    em_tensor *x = em_ones(EM_SHAPE(4, 3), NULL);
    em_tensor *y = em_zeros(EM_SHAPE(4, 1), NULL);
    struct reg m = {.base = {.ops = &owning_ops, .manual_optimization = false}, .net = em_nn_linear(3, 1, true)};
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 1;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    em_trainer *t = em_trainer_new(&cfg);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 2});
    free_checks = 0;
    assert_ok(em_trainer_fit(t, &m.base, l, NULL)); /* and no double free at teardown (ASan) */
    assert_int_equal(free_checks, 2 * 3);
    em_trainer_free(t);
    em_loader_free(l);
    em_nn_free(m.net);
    em_tensor_free(x);
    em_tensor_free(y);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define TEST(fn) cmocka_unit_test_setup_teardown(fn, helper_setup, helper_teardown)
        TEST(test_loader__batches_are_consecutive_rows_and_the_last_is_short),
        TEST(test_loader__shuffle_is_a_permutation_per_epoch),
        TEST(test_loader__rejects_mismatched_rows_and_keeps_no_reference),
        TEST(test_trace__one_line_per_training_step_and_optimizer_step),
        TEST(test_ownership__the_trainers_optimizers_and_schedulers_refuse_free),
#undef TEST
    };
    return cmocka_run_group_tests_name("loader_trace", tests, NULL, NULL);
}
