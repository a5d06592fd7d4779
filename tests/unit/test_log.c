/* test_log.c: the log handler (em_set_log_handler): every warning and notice of the library reaches
 * it, NULL restores stderr; and the one-time warning about OpenBLAS's generic kernels. */
#define _GNU_SOURCE /* RTLD_DEFAULT */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include "helpers.h"

/* ---- a handler that keeps what it receives --------------------------------------------------------- */

#define MAX_SEEN 32
static struct {
    int n;
    em_log_level level[MAX_SEEN];
    char msg[MAX_SEEN][512];
    void *user;
} seen;

static void keep(void *user, em_log_level level, const char *message)
{
    if (seen.n < MAX_SEEN) {
        seen.level[seen.n] = level;
        snprintf(seen.msg[seen.n], sizeof seen.msg[0], "%s", message);
        seen.n++;
    }
    seen.user = user;
}

/* The index of the first message containing `needle`, or -1. */
static int find(const char *needle)
{
    for (int i = 0; i < seen.n; i++)
        if (strstr(seen.msg[i], needle) != NULL)
            return i;
    return -1;
}

/* ---- a tiny module: y = w x + b on 8 rows ------------------------------------------------------------ */

struct tiny {
    em_module base;
    em_nn *net;
    bool stop;
};

static em_tensor *tiny_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    struct tiny *s = (struct tiny *)m;
    if (s->stop)
        em_trainer_set_should_stop(em_module_trainer(m), true);
    return em_mse_loss(em_nn_forward(s->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
}

static em_status tiny_optimizers(em_module *m, em_optim_setup *setup)
{
    em_params *ps = em_nn_parameters(((struct tiny *)m)->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static const em_module_ops tiny_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = tiny_step,
    .configure_optimizers = tiny_optimizers,
};

static em_status fit_tiny(em_trainer_config cfg, bool stop)
{
    em_manual_seed(0);
    struct tiny m = {.base = {.ops = &tiny_ops, .manual_optimization = false},
                     .net = em_nn_linear(1, 1, true), .stop = stop};
    em_scope_begin();
    em_tensor *x = em_randn(EM_SHAPE(8, 1), NULL);
    em_tensor *y = em_mul_scalar(x, 2.0);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 4});
    em_scope_end();
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    em_trainer *t = em_trainer_new(&cfg);
    em_status s = em_trainer_fit(t, &m.base, l, NULL);
    em_trainer_free(t);
    em_loader_free(l);
    em_nn_free(m.net);
    return s;
}

/* ---- tests ------------------------------------------------------------------------------------------------ */

/* Lightning's "max_epochs was not set" warning reaches the handler with its level and the user pointer;
 * em_set_log_handler returns the handler it replaces, and NULL restores the default. */
static void test_log__warnings_reach_the_handler(void **state)
{
    (void)state;
    int token = 0;
    seen.n = 0;
    assert_null(em_set_log_handler(keep, &token));
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT; /* max_epochs unset, max_steps -1: 1000 epochs, warned */
    cfg.limit_train_batches = EM_BATCHES(0);         /* ... but nothing to train */
    assert_ok(fit_tiny(cfg, false));
    int i = find("`max_epochs` was not set. Setting it to 1000 epochs.");
    assert_true(i >= 0);
    assert_int_equal(seen.level[i], EM_LEVEL_WARNING);
    assert_ptr_equal(seen.user, &token);
    assert_null(strchr(seen.msg[i], '\n')); /* one line, no newline: the handler decides */
    assert_ptr_equal(em_set_log_handler(NULL, NULL), keep);
    assert_null(em_set_log_handler(NULL, NULL));
}

/* A notice (Lightning's info message: should_stop before min_epochs) comes with EM_LEVEL_INFO, once per fit. */
static void test_log__notices_have_the_info_level(void **state)
{
    (void)state;
    seen.n = 0;
    em_set_log_handler(keep, NULL);
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 3;
    cfg.min_epochs = 2;
    assert_ok(fit_tiny(cfg, true));
    int i = find("Trainer was signaled to stop but the required `min_epochs=2`");
    assert_true(i >= 0);
    assert_int_equal(seen.level[i], EM_LEVEL_INFO);
    int again = 0;
    for (int k = 0; k < seen.n; k++)
        again += strstr(seen.msg[k], "Trainer was signaled to stop") != NULL;
    assert_int_equal(again, 1);
    em_set_log_handler(NULL, NULL);
}

/* Manual optimization where training_step never steps an optimizer: fit warns that nothing changed (a
 * zero-initialised module is automatic; setting manual_optimization and forgetting the step is the slip). */
static void test_log__a_manual_fit_without_a_step_is_warned(void **state)
{
    (void)state;
    seen.n = 0;
    em_set_log_handler(keep, NULL);
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 1;
    em_manual_seed(0);
    struct tiny m = {.base = {.ops = &tiny_ops, .manual_optimization = true}, .net = em_nn_linear(1, 1, true)};
    em_scope_begin();
    em_tensor *x = em_randn(EM_SHAPE(8, 1), NULL);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, x}, 2, &(em_loader_opts){.batch_size = 4});
    em_scope_end();
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    em_trainer *t = em_trainer_new(&cfg);
    assert_ok(em_trainer_fit(t, &m.base, l, NULL));
    int i = find("ran 2 training batches and no optimizer stepped");
    assert_true(i >= 0);
    assert_int_equal(seen.level[i], EM_LEVEL_WARNING);
    /* the same module in automatic optimization steps, and nothing is said */
    seen.n = 0;
    m.base.manual_optimization = false;
    assert_ok(em_trainer_fit(t, &m.base, l, NULL));
    assert_true(find("no optimizer stepped") < 0);
    em_set_log_handler(NULL, NULL);
    em_trainer_free(t);
    em_loader_free(l);
    em_nn_free(m.net);
}

/* OPENBLAS_CORETYPE is read when the process starts: CTest runs this binary again with
 * OPENBLAS_CORETYPE=Prescott (EMBER_TEST_BLAS_WARNING=1) and =Core2 (=0). */
static void test_log__openblas_generic_kernels_are_warned_once(void **state)
{
    (void)state;
    const char *expect = getenv("EMBER_TEST_BLAS_WARNING");
    if (expect == NULL) {
        printf("  (skipped: run by CTest as test_log_blas_* with OPENBLAS_CORETYPE set)\n");
        skip();
    }
    if (dlsym(RTLD_DEFAULT, "openblas_get_corename") == NULL) {
        printf("  (skipped: libtorch does not run on OpenBLAS here)\n");
        skip();
    }
    seen.n = 0;
    em_set_log_handler(keep, NULL);
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    em_trainer_free(em_trainer_new(&cfg));
    em_trainer_free(em_trainer_new(&cfg));
    em_set_log_handler(NULL, NULL);
    int count = 0;
    for (int k = 0; k < seen.n; k++)
        count += strstr(seen.msg[k], "OPENBLAS_CORETYPE") != NULL;
    if (strcmp(expect, "1") == 0) {
        assert_int_equal(count, 1);
        int i = find("OpenBLAS runs its generic Prescott kernels");
        assert_true(i >= 0);
        assert_int_equal(seen.level[i], EM_LEVEL_WARNING);
    } else {
        assert_int_equal(count, 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_log__openblas_generic_kernels_are_warned_once, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_log__warnings_reach_the_handler, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_log__notices_have_the_info_level, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_log__a_manual_fit_without_a_step_is_warned, helper_setup,
                                        helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
