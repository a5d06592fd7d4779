/* test_lr_monitor.c: LearningRateMonitor (em_lr_monitor) against the assertions of Lightning 2.2.5's
 * tests/tests_pytorch/callbacks/test_lr_monitor.py that apply to ember:
 *   test_lr_monitor_single_lr, test_lr_monitor_single_lr_with_momentum (SGD, Adam),
 *   test_log_momentum_no_momentum_optimizer (Adagrad stands for ASGD, which ember does not have),
 *   test_lr_monitor_no_lr_scheduler_single_lr, test_lr_monitor_no_logger,
 *   test_lr_monitor_multi_lrs and test_lr_monitor_no_lr_scheduler_multi_lrs (step, epoch),
 *   test_lr_monitor_no_lr_scheduler_single_lr_with_momentum, test_lr_monitor_param_groups,
 *   test_lr_monitor_multiple_param_groups_no_lr_scheduler, test_lr_monitor_custom_name,
 *   test_lr_monitor_update_callback_metrics (with EarlyStopping);
 * and what reaches metrics.csv (the columns, the step of each row).
 * Not ported: param group names (ember's groups have none) and BaseFinetuning (not in ember).
 */
#define _XOPEN_SOURCE 700 /* mkdtemp, nftw */

#include "helpers.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

typedef enum opt_kind { OPT_SGD, OPT_SGD_MOMENTUM, OPT_ADAM, OPT_ADAGRAD, OPT_TWO_ADAM, OPT_ADAM_TWO_GROUPS } opt_kind;
typedef enum sched_kind { SCHED_NONE, SCHED_STEP, SCHED_ONECYCLE, SCHED_STEP_NAMED, SCHED_STEP_HALF } sched_kind;

typedef struct model {
    em_module base;
    em_nn *a, *b; /* a: Linear(2, 2), b: Linear(2, 1) */
    em_nn *layers;
    opt_kind opt;
    sched_kind sched;
} model;

static em_tensor *forward_loss(model *m, const em_batch *batch)
{
    return em_mean(em_nn_forward(m->b, em_nn_forward(m->a, batch->t[0])));
}

static em_tensor *auto_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    return forward_loss((model *)mb, b);
}

/* Lightning's manual CustomBoringModel: each optimizer steps once per batch */
static em_tensor *manual_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    size_t n = 0;
    em_optimizer **opts = em_optimizers(mb, &n);
    for (size_t i = 0; i < n; i++) {
        em_tensor *loss = forward_loss((model *)mb, b);
        if (loss == NULL || em_optimizer_zero_grad(opts[i]) != EM_OK || em_manual_backward(mb, loss) != EM_OK ||
            em_optimizer_step(opts[i], NULL) != EM_OK)
            return NULL;
    }
    return NULL;
}

static em_status manual_epoch_end(em_module *mb)
{
    size_t n = 0;
    em_scheduler **s = em_lr_schedulers(mb, &n);
    for (size_t i = 0; i < n; i++)
        if (em_scheduler_step(s[i]) != EM_OK)
            return em_last_status();
    return EM_OK;
}

static em_status configure(em_module *mb, em_optim_setup *setup)
{
    model *m = (model *)mb;
    em_params *ps = em_nn_parameters(m->layers);
    em_optimizer *o1 = NULL, *o2 = NULL;
    em_adam_opts ao = EM_ADAM_OPTS_INIT;
    ao.lr = 1e-2;
    switch (m->opt) {
    case OPT_SGD: o1 = em_sgd(ps, &(em_sgd_opts){.lr = 0.1}); break;
    case OPT_SGD_MOMENTUM: o1 = em_sgd(ps, &(em_sgd_opts){.lr = 1e-2, .momentum = 0.9}); break;
    case OPT_ADAM: o1 = em_adam(ps, &ao); break;
    case OPT_ADAGRAD: o1 = em_adagrad(ps, NULL); break;
    case OPT_TWO_ADAM:
        o1 = em_adam(ps, &ao);
        o2 = em_adam(ps, &ao);
        break;
    case OPT_ADAM_TWO_GROUPS: {
        em_params *pa = em_nn_parameters(m->a), *pb = em_nn_parameters(m->b);
        ao.beta1 = 0.7;
        ao.weight_decay = 0.1;
        o1 = em_adam(pa, &ao);
        if (o1 != NULL && em_optimizer_add_param_group(o1, pb) != EM_OK) {
            em_optimizer_free(o1);
            o1 = NULL;
        }
        em_params_free(pa);
        em_params_free(pb);
        break;
    }
    }
    em_params_free(ps);
    em_status s = em_optim_setup_add(setup, o1);
    if (s == EM_OK && o2 != NULL)
        s = em_optim_setup_add(setup, o2);
    em_optimizer *opts[2] = {o1, o2};
    for (int i = 0; i < 2 && s == EM_OK && opts[i] != NULL; i++) {
        em_scheduler *sch = NULL;
        em_scheduler_config cfg = {0};
        if (m->sched == SCHED_NONE)
            break;
        if (m->sched == SCHED_STEP || m->sched == SCHED_STEP_NAMED) {
            sch = em_step_lr(opts[i], 1, 0.1);
            if (m->sched == SCHED_STEP_NAMED)
                cfg.name = "my_logging_name";
        } else if (m->sched == SCHED_STEP_HALF) {
            sch = em_step_lr(opts[i], 1, 0.5);
        } else {
            em_onecycle_opts oc = EM_ONECYCLE_OPTS_INIT;
            oc.max_lr = 1e-2;
            oc.total_steps = 10000;
            sch = em_onecycle_lr(opts[i], &oc);
            cfg.interval = EM_INTERVAL_STEP;
        }
        s = em_optim_setup_add_scheduler(setup, sch, &cfg);
    }
    return s;
}

static const em_module_ops auto_ops = {
    .version = EM_MODULE_OPS_VERSION, .training_step = auto_step, .configure_optimizers = configure};
static const em_module_ops manual_ops = {.version = EM_MODULE_OPS_VERSION,
                                         .training_step = manual_step,
                                         .configure_optimizers = configure,
                                         .on_train_epoch_end = manual_epoch_end};

static void model_init(model *m, bool manual, opt_kind opt, sched_kind sched)
{
    memset(m, 0, sizeof *m);
    m->base.ops = manual ? &manual_ops : &auto_ops;
    m->base.manual_optimization = manual;
    m->a = em_nn_linear(2, 2, true);
    m->b = em_nn_linear(2, 1, true);
    m->layers = em_nn_sequential((em_nn *[]){m->a, m->b}, 2);
    assert_nonnull_em(m->layers);
    m->base.layers = m->layers;
    m->opt = opt;
    m->sched = sched;
}

static em_loader *loader(int64_t batches) { return helper_ones_loader(batches, 2); }

typedef struct run {
    char dir[64];
    em_trainer *t;
    em_callback *lm;
    char csv[8192];
} run;

/* Fit `m` with a LearningRateMonitor (and `extra`, may be NULL) writing metrics.csv to a fresh directory. */
static em_status fit(run *r, model *m, em_lr_monitor_opts o, int64_t max_epochs, int64_t batches, int64_t every,
                     bool logger, em_callback *extra)
{
    snprintf(r->dir, sizeof r->dir, "/tmp/ember_lrm_XXXXXX");
    assert_non_null(mkdtemp(r->dir));
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = max_epochs;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = logger;
    cfg.log_dir = r->dir;
    cfg.log_every_n_steps = every;
    r->t = em_trainer_new(&cfg);
    assert_nonnull_em(r->t);
    r->lm = em_lr_monitor(&o);
    assert_nonnull_em(r->lm);
    assert_ok(em_trainer_add_callback(r->t, r->lm));
    if (extra != NULL)
        assert_ok(em_trainer_add_callback(r->t, extra));
    em_loader *train = loader(batches);
    em_status s = em_trainer_fit(r->t, &m->base, train, NULL);
    em_loader_free(train);
    char path[128];
    snprintf(path, sizeof path, "%s/metrics.csv", r->dir);
    r->csv[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        size_t n = fread(r->csv, 1, sizeof r->csv - 1, f);
        r->csv[n] = '\0';
        fclose(f);
    }
    return s;
}

static void run_free(run *r, model *m)
{
    em_trainer_free(r->t);
    em_nn_free(m->layers);
    nftw(r->dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

static void assert_keys(const em_callback *lm, const char *const *want, size_t n)
{
    assert_int_equal(em_lr_monitor_num_keys(lm), n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(em_lr_monitor_key(lm, i, NULL, NULL), want[i]);
}

static void test_single_lr(void **state)
{
    (void)state;
    model m;
    model_init(&m, false, OPT_SGD, SCHED_STEP);
    run r;
    assert_ok(fit(&r, &m, (em_lr_monitor_opts){0}, 2, 5, 50, true, NULL));
    assert_keys(r.lm, (const char *[]){"lr-SGD"}, 1);
    assert_false(em_lr_monitor_last_momentum(r.lm, 0, NULL)); /* momentum is not logged by default */
    const double *lrs = NULL;
    size_t n = 0;
    em_lr_monitor_key(r.lm, 0, &lrs, &n);
    assert_int_equal(n, 2); /* an epoch scheduler: once per epoch start */
    assert_close_rel(lrs[0], 0.1, 1e-12);
    assert_close_rel(lrs[1], 0.01, 1e-12);
    /* metrics.csv: its own rows, at the logger's step (batches that stepped: 0, then 5) */
    assert_non_null(strstr(r.csv, "lr-SGD"));
    assert_string_equal(r.csv, "lr-SGD,step\n0.1,0\n0.010000000000000002,5\n"); /* StepLR: 0.1 * 0.1 */
    double cm = 0;
    assert_true(em_trainer_callback_metric(r.t, "lr-SGD", &cm));
    assert_true(cm == (double)(float)0.01);
    run_free(&r, &m);
}

static void test_single_lr_with_momentum(void **state)
{
    (void)state;
    const opt_kind kinds[] = {OPT_SGD_MOMENTUM, OPT_ADAM};
    const char *const names[] = {"lr-SGD", "lr-Adam"};
    for (int k = 0; k < 2; k++) {
        model m;
        model_init(&m, false, kinds[k], SCHED_ONECYCLE);
        /* test_lr_monitor_no_lr_scheduler_single_lr_with_momentum: without a scheduler, the same names and
         * the constructor's momentum / beta1 */
        {
            model plain;
            model_init(&plain, false, kinds[k], SCHED_NONE);
            run r;
            assert_ok(fit(&r, &plain, (em_lr_monitor_opts){.log_momentum = true}, 2, 5, 1, true, NULL));
            assert_keys(r.lm, &names[k], 1);
            double mom = -1;
            assert_true(em_lr_monitor_last_momentum(r.lm, 0, &mom));
            assert_true(mom == 0.9);
            char col[64];
            snprintf(col, sizeof col, "%s-momentum", names[k]);
            assert_non_null(strstr(r.csv, col));
            run_free(&r, &plain);
        }
        run r;
        assert_ok(fit(&r, &m, (em_lr_monitor_opts){.log_momentum = true, .log_weight_decay = true}, 2, 5, 1, true,
                      NULL));
        assert_keys(r.lm, &names[k], 1);
        double mom = -1, wd = -1;
        assert_true(em_lr_monitor_last_momentum(r.lm, 0, &mom));
        assert_true(em_lr_monitor_last_weight_decay(r.lm, 0, &wd));
        assert_true(mom > 0.8 && mom <= 0.95); /* OneCycleLR cycles momentum / beta1 in [0.85, 0.95] */
        assert_true(wd == 0);
        char col[64];
        snprintf(col, sizeof col, "%s-momentum", names[k]);
        assert_non_null(strstr(r.csv, col));
        snprintf(col, sizeof col, "%s-weight_decay", names[k]);
        assert_non_null(strstr(r.csv, col));
        const double *lrs = NULL;
        size_t n = 0;
        em_lr_monitor_key(r.lm, 0, &lrs, &n);
        assert_int_equal(n, 10); /* a step scheduler, log_every_n_steps 1: every batch */
        run_free(&r, &m);
    }
}

static void test_no_momentum_optimizer(void **state)
{
    (void)state;
    for (int sched = 0; sched < 2; sched++) {
        model m;
        model_init(&m, false, OPT_ADAGRAD, sched ? SCHED_STEP : SCHED_NONE);
        run r;
        helper_log log = {{0}};
        em_log_handler prev = em_set_log_handler(helper_log_capture, &log);
        em_status s = fit(&r, &m, (em_lr_monitor_opts){.log_momentum = true}, 1, 5, 1, true, NULL);
        em_set_log_handler(prev, NULL);
        assert_ok(s);
        assert_non_null(strstr(log.text, "You have set log_momentum=True, but some optimizers do not have momentum. "
                                         "This will log a value 0 for the momentum."));
        assert_keys(r.lm, (const char *[]){"lr-Adagrad"}, 1);
        double mom = -1;
        assert_true(em_lr_monitor_last_momentum(r.lm, 0, &mom));
        assert_true(mom == 0);
        run_free(&r, &m);
    }
}

static void test_no_lr_scheduler_single_lr(void **state)
{
    (void)state;
    model m;
    model_init(&m, false, OPT_SGD, SCHED_NONE);
    run r;
    assert_ok(fit(&r, &m, (em_lr_monitor_opts){0}, 2, 5, 50, true, NULL));
    assert_keys(r.lm, (const char *[]){"lr-SGD"}, 1);
    run_free(&r, &m);
}

static void test_no_logger(void **state)
{
    (void)state;
    /* the properties a callback reads are defined before any fit too */
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.log_every_n_steps = 3;
    em_trainer *fresh = em_trainer_new(&cfg);
    assert_nonnull_em(fresh);
    assert_false(em_trainer_should_update_logs(fresh));
    assert_int_equal(em_trainer_num_optimizers(fresh), 0);
    assert_null(em_trainer_lr_scheduler(fresh, 0, NULL));
    assert_int_equal(em_trainer_log_metrics(fresh, NULL, NULL, 0), EM_ESTATE);
    em_trainer_free(fresh);
    em_clear_error();
    model m;
    model_init(&m, false, OPT_SGD, SCHED_NONE);
    run r;
    assert_int_not_equal(fit(&r, &m, (em_lr_monitor_opts){0}, 1, 2, 50, false, NULL), EM_OK);
    assert_non_null(strstr(em_trainer_error(r.t), "Cannot use `LearningRateMonitor` callback with `Trainer` that has "
                                                  "no logger."));
    run_free(&r, &m);
    em_clear_error();
    assert_null(em_lr_monitor(&(em_lr_monitor_opts){.logging_interval = (em_lr_logging_interval)7}));
    assert_error_contains("logging_interval should be `step` or `epoch` or `None`.");
}

/* test_lr_monitor_multi_lrs and test_lr_monitor_no_lr_scheduler_multi_lrs: manual optimization, two Adam */
static void test_multi_lrs(void **state)
{
    (void)state;
    for (int with_sched = 0; with_sched < 2; with_sched++)
        for (int step = 0; step < 2; step++) {
            model m;
            model_init(&m, true, OPT_TWO_ADAM, with_sched ? SCHED_STEP : SCHED_NONE);
            run r;
            em_lr_monitor_opts o = {.logging_interval = step ? EM_LR_LOG_STEP : EM_LR_LOG_EPOCH};
            const int64_t every = 2, max_epochs = 2;
            assert_ok(fit(&r, &m, o, max_epochs, 7, every, true, NULL));
            assert_keys(r.lm, (const char *[]){"lr-Adam", "lr-Adam-1"}, 2);
            size_t expected = step ? (size_t)(em_trainer_global_step(r.t) / 2 / every) : (size_t)max_epochs;
            for (size_t i = 0; i < 2; i++) {
                size_t n = 0;
                const double *lrs = NULL;
                em_lr_monitor_key(r.lm, i, &lrs, &n);
                assert_int_equal(n, expected);
                if (with_sched && !step)
                    assert_close_rel(lrs[1], 1e-3, 1e-12); /* stepped by the module at epoch 0's end */
            }
            run_free(&r, &m);
        }
}

static void test_param_groups_no_lr_scheduler(void **state)
{
    (void)state;
    model m;
    model_init(&m, false, OPT_ADAM_TWO_GROUPS, SCHED_NONE);
    run r;
    assert_ok(fit(&r, &m, (em_lr_monitor_opts){.log_momentum = true, .log_weight_decay = true}, 2, 2, 50, true,
                  NULL));
    assert_keys(r.lm, (const char *[]){"lr-Adam/pg1", "lr-Adam/pg2"}, 2);
    for (size_t i = 0; i < 2; i++) {
        double mom = 0, wd = 0;
        assert_true(em_lr_monitor_last_momentum(r.lm, i, &mom));
        assert_true(em_lr_monitor_last_weight_decay(r.lm, i, &wd));
        assert_true(mom == 0.7);
        assert_true(wd == 0.1);
        const double *lrs = NULL;
        size_t n = 0;
        em_lr_monitor_key(r.lm, i, &lrs, &n);
        assert_true(n > 0);
        for (size_t k = 0; k < n; k++)
            assert_true(lrs[k] == 1e-2);
    }
    assert_non_null(strstr(r.csv, "lr-Adam/pg2-momentum"));
    assert_non_null(strstr(r.csv, "lr-Adam/pg1-weight_decay"));
    run_free(&r, &m);
}

/* test_lr_monitor_param_groups: a scheduler on an optimizer with two groups */
static void test_param_groups(void **state)
{
    (void)state;
    model m;
    model_init(&m, false, OPT_ADAM_TWO_GROUPS, SCHED_STEP);
    run r;
    assert_ok(fit(&r, &m, (em_lr_monitor_opts){0}, 2, 2, 50, true, NULL));
    assert_int_equal(em_lr_monitor_num_keys(r.lm), 2 * em_trainer_num_lr_schedulers(r.t));
    assert_keys(r.lm, (const char *[]){"lr-Adam/pg1", "lr-Adam/pg2"}, 2);
    run_free(&r, &m);
}

static void test_custom_name(void **state)
{
    (void)state;
    model m;
    model_init(&m, false, OPT_SGD, SCHED_STEP_NAMED);
    run r;
    assert_ok(fit(&r, &m, (em_lr_monitor_opts){0}, 1, 2, 50, true, NULL));
    assert_keys(r.lm, (const char *[]){"my_logging_name"}, 1);
    run_free(&r, &m);
}

/* test_lr_monitor_update_callback_metrics: EarlyStopping on the lr LearningRateMonitor puts in callback_metrics */
static void test_update_callback_metrics(void **state)
{
    (void)state;
    model m;
    model_init(&m, false, OPT_SGD, SCHED_STEP_HALF);
    em_early_stopping_opts eo = EM_EARLY_STOPPING_OPTS_INIT;
    eo.monitor = "lr-SGD";
    eo.stopping_threshold = 0.02;
    eo.check_on_train_epoch_end = 1;
    em_callback *es = em_early_stopping(&eo);
    assert_nonnull_em(es);
    run r;
    assert_ok(fit(&r, &m, (em_lr_monitor_opts){0}, 5, 2, 50, true, es));
    assert_true(em_trainer_callback_metric(r.t, "lr-SGD", NULL));
    const double *lrs = NULL;
    size_t n = 0;
    em_lr_monitor_key(r.lm, 0, &lrs, &n);
    assert_int_equal(n, 4);
    const double want[] = {0.1, 0.05, 0.025, 0.0125};
    for (size_t i = 0; i < 4; i++)
        assert_close_rel(lrs[i], want[i], 1e-12);
    assert_int_equal(em_trainer_current_epoch(r.t) - 1, 3);
    assert_int_equal(em_early_stopping_stopped_epoch(es), 3);
    run_free(&r, &m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_single_lr, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_single_lr_with_momentum, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_no_momentum_optimizer, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_no_lr_scheduler_single_lr, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_no_logger, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_multi_lrs, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_param_groups_no_lr_scheduler, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_param_groups, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_custom_name, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_update_callback_metrics, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
