/* test_early_stopping.c: EarlyStopping (em_early_stopping) against the assertions of Lightning 2.2.5's
 * tests/tests_pytorch/callbacks/test_early_stopping.py that apply to one process:
 *   test_early_stopping_patience, test_early_stopping_patience_train (with and without validation_step),
 *   test_early_stopping_no_val_step, test_early_stopping_no_extraneous_invocations,
 *   test_early_stopping_thresholds, test_early_stopping_on_non_finite_monitor,
 *   test_min_epochs_min_steps_global_step, test_early_stopping_mode_options,
 *   test_multiple_early_stopping_callbacks (single device), test_check_on_train_epoch_end_smart_handling;
 * plus Lightning's messages (verbose reasons, the strict RuntimeError, the min_epochs notice) through the
 * log handler, and the monitoring order (the check sees what the module logs in its on_train_epoch_end).
 * Lightning's tests mock _evaluate_stopping_criteria in two places; here the same decisions come from
 * real arguments (a stopping_threshold every value passes, patience 1 on a constant value).
 */
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>

/* ---- a BoringModel: Linear(1, 1), loss mean(net(x)), SGD; logs per epoch from a list ----------------------- */

typedef enum log_where { LOG_VAL_EPOCH_END, LOG_TRAIN_EPOCH_END, LOG_TRAINING_STEP_BATCH_IDX, LOG_VAL_STEP_ONE } log_where;

typedef struct boring {
    em_module base;
    em_nn *net;
    log_where where;
    const char *name;    /* the metric logged */
    const double *values; /* values[current_epoch] */
    size_t n_values;
    const char *name2;   /* a second metric logged with value2 (NULL: none) */
    double value2;
} boring;

static em_tensor *boring_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    boring *m = (boring *)mb;
    if (m->where == LOG_TRAINING_STEP_BATCH_IDX && em_log(mb, m->name, (double)batch_idx, 0) != EM_OK)
        return NULL;
    return em_mean(em_nn_forward(m->net, b->t[0]));
}

static em_status boring_validation_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    boring *m = (boring *)mb;
    em_tensor *loss = em_mean(em_nn_forward(m->net, b->t[0]));
    if (loss == NULL)
        return em_last_status();
    if (m->where == LOG_VAL_STEP_ONE)
        return em_log(mb, m->name, 1.0, 0);
    return EM_OK;
}

static em_status log_epoch_value(boring *m)
{
    int64_t e = em_trainer_current_epoch(em_module_trainer(&m->base));
    assert_true(e >= 0 && (size_t)e < m->n_values);
    em_status s = em_log(&m->base, m->name, m->values[e], 0);
    if (s == EM_OK && m->name2 != NULL)
        s = em_log(&m->base, m->name2, m->value2, 0);
    return s;
}

static em_status boring_on_validation_epoch_end(em_module *mb)
{
    boring *m = (boring *)mb;
    return m->where == LOG_VAL_EPOCH_END ? log_epoch_value(m) : EM_OK;
}

static em_status boring_on_train_epoch_end(em_module *mb)
{
    boring *m = (boring *)mb;
    return m->where == LOG_TRAIN_EPOCH_END ? log_epoch_value(m) : EM_OK;
}

static em_status boring_configure_optimizers(em_module *mb, em_optim_setup *setup)
{
    boring *m = (boring *)mb;
    em_params *ps = em_nn_parameters(m->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static const em_module_ops boring_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = boring_training_step,
    .configure_optimizers = boring_configure_optimizers,
    .validation_step = boring_validation_step,
    .on_train_epoch_end = boring_on_train_epoch_end,
    .on_validation_epoch_end = boring_on_validation_epoch_end,
};

static const em_module_ops boring_no_val_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = boring_training_step,
    .configure_optimizers = boring_configure_optimizers,
    .on_train_epoch_end = boring_on_train_epoch_end,
};

static void boring_init(boring *m, const em_module_ops *ops, log_where where, const char *name, const double *values,
                        size_t n)
{
    memset(m, 0, sizeof *m);
    m->base.ops = ops;
    m->net = em_nn_linear(1, 1, true);
    assert_nonnull_em(m->net);
    m->base.layers = m->net;
    m->where = where;
    m->name = name;
    m->values = values;
    m->n_values = n;
}

/* `batches` batches of one row each */
static em_loader *loader(int64_t batches) { return helper_ones_loader(batches, 1); }

static em_trainer_config config(int64_t max_epochs)
{
    em_trainer_config cfg = helper_quiet_config(max_epochs);
    cfg.num_sanity_val_steps = 0;
    return cfg;
}

/* ---- checks counter (the on_check observer) ------------------------------------------------------------------ */

typedef struct checks {
    int n, stops;
    char hooks[32][24];
} checks;

static void count_check(void *user, const em_early_stopping_check *c)
{
    checks *k = user;
    if (k->n < 32)
        snprintf(k->hooks[k->n], sizeof k->hooks[0], "%s", c->hook);
    k->n++;
    k->stops += c->should_stop;
}

/* Fit a boring module with one EarlyStopping; returns the trainer (the caller frees it). */
static em_trainer *fit_one(boring *m, em_trainer_config cfg, em_early_stopping_opts o, int64_t train_batches,
                           int64_t val_batches, em_callback **es_out)
{
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    em_callback *es = em_early_stopping(&o);
    assert_nonnull_em(es);
    assert_ok(em_trainer_add_callback(t, es));
    em_loader *train = loader(train_batches), *val = val_batches > 0 ? loader(val_batches) : NULL;
    assert_ok(em_trainer_fit(t, &m->base, train, val));
    em_loader_free(train);
    em_loader_free(val);
    if (es_out != NULL)
        *es_out = es;
    return t;
}

/* ---- test_early_stopping_patience ----------------------------------------------------------------------------- */

static const struct {
    double losses[6];
    int64_t patience, expected_stop_epoch;
} patience_cases[] = {
    {{6, 5, 5, 5, 5, 5}, 3, 4},
    {{6, 5, 4, 4, 3, 3}, 1, 3},
    {{6, 5, 6, 5, 5, 5}, 3, 4},
};

static void test_patience(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof patience_cases / sizeof patience_cases[0]; c++) {
        boring m;
        boring_init(&m, &boring_ops, LOG_VAL_EPOCH_END, "test_val_loss", patience_cases[c].losses, 6);
        em_early_stopping_opts o = EM_EARLY_STOPPING_OPTS_INIT;
        o.monitor = "test_val_loss";
        o.patience = patience_cases[c].patience;
        helper_log log = {{0}};
        em_log_handler prev = em_set_log_handler(helper_log_capture, &log);
        o.verbose = true;
        em_callback *es = NULL;
        em_trainer *t = fit_one(&m, config(10), o, 2, 1, &es);
        em_set_log_handler(prev, NULL);
        assert_int_equal(em_trainer_current_epoch(t) - 1, patience_cases[c].expected_stop_epoch);
        assert_true(em_trainer_should_stop(t));
        assert_int_equal(em_early_stopping_stopped_epoch(es), patience_cases[c].expected_stop_epoch);
        assert_int_equal(em_early_stopping_wait_count(es), patience_cases[c].patience);
        /* Lightning's verbose messages, logged at EM_LEVEL_INFO */
        assert_non_null(strstr(log.text, "Metric test_val_loss improved. New best score: 6.000\n"));
        assert_non_null(strstr(log.text, "Metric test_val_loss improved by 1.000 >= min_delta = 0.0. New best score: 5.000\n"));
        char want[256];
        snprintf(want, sizeof want, "Monitored metric test_val_loss did not improve in the last %lld records. "
                                    "Best score: %.3f. Signaling Trainer to stop.\n",
                 (long long)patience_cases[c].patience, em_early_stopping_best_score(es));
        assert_non_null(strstr(log.text, want));
        em_trainer_free(t);
        em_nn_free(m.net);
    }
}

/* test_early_stopping_patience_train: logged in the module's on_train_epoch_end, checked in the callback's
 * (monitoring callbacks run after the module), with and without validation_step. */
static void test_patience_train(void **state)
{
    (void)state;
    for (int with_val = 0; with_val < 2; with_val++)
        for (size_t c = 0; c < sizeof patience_cases / sizeof patience_cases[0]; c++) {
            boring m;
            boring_init(&m, with_val ? &boring_ops : &boring_no_val_ops, LOG_TRAIN_EPOCH_END, "train_loss",
                        patience_cases[c].losses, 6);
            em_early_stopping_opts o = EM_EARLY_STOPPING_OPTS_INIT;
            o.monitor = "train_loss";
            o.patience = patience_cases[c].patience;
            o.check_on_train_epoch_end = 1;
            checks k = {0};
            o.on_check = count_check;
            o.on_check_user = &k;
            em_trainer *t = fit_one(&m, config(10), o, 2, with_val ? 1 : 0, NULL);
            assert_int_equal(em_trainer_current_epoch(t) - 1, patience_cases[c].expected_stop_epoch);
            assert_int_equal(k.n, patience_cases[c].expected_stop_epoch + 1); /* one check per epoch */
            assert_string_equal(k.hooks[0], "on_train_epoch_end");
            em_trainer_free(t);
            em_nn_free(m.net);
        }
}

/* ---- test_early_stopping_thresholds ---------------------------------------------------------------------------- */

static void test_thresholds(void **state)
{
    (void)state;
    static const struct {
        double stopping, divergence;
        double losses[10];
        size_t n;
        int64_t expected_epoch;
        const char *message;
    } cases[] = {
        {NAN, NAN, {8, 4, 2, 3, 4, 5, 8, 10}, 8, 5,
         "Monitored metric abc did not improve in the last 3 records. Best score: 2.000. Signaling Trainer to stop."},
        {2.9, NAN, {9, 8, 7, 6, 5, 6, 4, 3, 2, 1}, 10, 8,
         "Stopping threshold reached: abc = tensor(2.) < 2.9. Signaling Trainer to stop."},
        {NAN, 15.9, {9, 4, 2, 16, 32, 64}, 6, 3,
         "Divergence threshold reached: abc = tensor(16.) < 15.9. Signaling Trainer to stop."},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        boring m;
        boring_init(&m, &boring_ops, LOG_VAL_EPOCH_END, "abc", cases[c].losses, cases[c].n);
        em_early_stopping_opts o = EM_EARLY_STOPPING_OPTS_INIT;
        o.monitor = "abc";
        o.stopping_threshold = cases[c].stopping;
        o.divergence_threshold = cases[c].divergence;
        o.verbose = true;
        helper_log log = {{0}};
        em_log_handler prev = em_set_log_handler(helper_log_capture, &log);
        em_trainer *t = fit_one(&m, config(20), o, 2, 1, NULL);
        em_set_log_handler(prev, NULL);
        assert_int_equal(em_trainer_current_epoch(t) - 1, cases[c].expected_epoch);
        assert_non_null(strstr(log.text, cases[c].message));
        em_trainer_free(t);
        em_nn_free(m.net);
    }
}

/* ---- test_early_stopping_on_non_finite_monitor ------------------------------------------------------------------- */

static void test_non_finite(void **state)
{
    (void)state;
    const double stop_values[] = {INFINITY, NAN};
    const char *const printed[] = {"tensor(inf)", "tensor(nan)"};
    for (size_t c = 0; c < 2; c++) {
        const double losses[] = {4, 3, stop_values[c], 2, 1};
        boring m;
        boring_init(&m, &boring_ops, LOG_VAL_EPOCH_END, "val_loss", losses, 5);
        em_early_stopping_opts o = EM_EARLY_STOPPING_OPTS_INIT;
        o.monitor = "val_loss";
        o.verbose = true;
        helper_log log = {{0}};
        em_log_handler prev = em_set_log_handler(helper_log_capture, &log);
        em_callback *es = NULL;
        em_trainer *t = fit_one(&m, config(10), o, 2, 1, &es);
        em_set_log_handler(prev, NULL);
        assert_int_equal(em_trainer_current_epoch(t) - 1, 2);
        assert_int_equal(em_early_stopping_stopped_epoch(es), 2);
        char want[200];
        snprintf(want, sizeof want, "Monitored metric val_loss = %s is not finite. Previous best value was 3.000. "
                                    "Signaling Trainer to stop.", printed[c]);
        assert_non_null(strstr(log.text, want));
        em_trainer_free(t);
        em_nn_free(m.net);
    }
}

/* ---- test_min_epochs_min_steps_global_step --------------------------------------------------------------------------- */

static void test_min_epochs_min_steps(void **state)
{
    (void)state;
    static const int64_t cases[][4] = {
        /* limit_train_batches, min_epochs, min_steps, stop_step */
        {3, 0, 10, 10}, {5, 0, 10, 10}, {3, 2, 0, 6}, {5, 2, 0, 10},
        {3, 1, 10, 10}, {5, 1, 10, 10}, {3, 3, 10, 10}, {5, 3, 10, 15},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int64_t batches = cases[c][0], min_epochs = cases[c][1], min_steps = cases[c][2];
        boring m;
        boring_init(&m, &boring_ops, LOG_TRAINING_STEP_BATCH_IDX, "foo", NULL, 0);
        em_trainer_config cfg = config(EM_NONE);
        cfg.min_epochs = min_epochs;
        cfg.min_steps = min_steps;
        cfg.limit_val_batches = EM_BATCHES(0);
        em_early_stopping_opts o = EM_EARLY_STOPPING_OPTS_INIT;
        o.monitor = "foo";
        o.stopping_threshold = 1e30; /* every check signals stop, as Lightning's mocked criteria do */
        helper_log log = {{0}};
        em_log_handler prev = em_set_log_handler(helper_log_capture, &log);
        em_trainer *t = fit_one(&m, cfg, o, batches, 2, NULL);
        em_set_log_handler(prev, NULL);
        int64_t expected_epochs = (min_steps + batches - 1) / batches;
        if (min_epochs > expected_epochs)
            expected_epochs = min_epochs;
        assert_true(em_trainer_should_stop(t));
        assert_int_equal(em_trainer_current_epoch(t), expected_epochs);
        assert_int_equal(em_trainer_global_step(t), cases[c][3]);
        char want[256];
        snprintf(want, sizeof want, "Trainer was signaled to stop but the required `min_epochs=%lld` or "
                                    "`min_steps=%lld` has not been met. Training will continue...",
                 (long long)min_epochs, (long long)min_steps);
        assert_non_null(strstr(log.text, want));
        em_trainer_free(t);
        em_nn_free(m.net);
    }
}

/* ---- test_early_stopping_mode_options and the constructor's other checks --------------------------------------------- */

static void test_mode_options(void **state)
{
    (void)state;
    em_early_stopping_opts o = EM_EARLY_STOPPING_OPTS_INIT;
    o.monitor = "foo";
    o.mode = "unknown_option";
    assert_null(em_early_stopping(&o));
    assert_error_contains("`mode` can be min, max, got unknown_option");
    o.mode = "max";
    em_callback *cb = em_early_stopping(&o);
    assert_nonnull_em(cb);
    assert_true(isinf(em_early_stopping_best_score(cb)) && em_early_stopping_best_score(cb) < 0);
    assert_int_equal(em_early_stopping_wait_count(cb), 0);
    assert_int_equal(em_early_stopping_stopped_epoch(cb), 0);
    em_callback_free(cb);
    o.monitor = NULL;
    assert_null(em_early_stopping(&o));
    assert_null(em_early_stopping(NULL));
    /* not an EarlyStopping */
    int64_t sched[1][2] = {{0, 2}};
    em_callback *other = em_grad_accum_scheduler((const int64_t(*)[2])sched, 1);
    assert_nonnull_em(other);
    assert_int_equal(em_early_stopping_wait_count(other), -1);
    assert_true(isnan(em_early_stopping_best_score(other)));
    em_callback_free(other);
}

/* ---- strict: a missing monitor fails fit with Lightning's RuntimeError; not strict: no check ----------------------------- */

static void test_strict(void **state)
{
    (void)state;
    const double losses[] = {1, 1, 1};
    for (int strict = 0; strict < 2; strict++) {
        boring m;
        boring_init(&m, &boring_ops, LOG_VAL_EPOCH_END, "val_loss", losses, 3);
        em_trainer_config cfg = config(3);
        em_trainer *t = em_trainer_new(&cfg);
        em_early_stopping_opts o = EM_EARLY_STOPPING_OPTS_INIT;
        o.monitor = "missing";
        o.strict = strict;
        checks k = {0};
        o.on_check = count_check;
        o.on_check_user = &k;
        assert_ok(em_trainer_add_callback(t, em_early_stopping(&o)));
        em_loader *train = loader(2), *val = loader(1);
        em_status s = em_trainer_fit(t, &m.base, train, val);
        if (strict) {
            assert_int_not_equal(s, EM_OK);
            assert_non_null(strstr(em_trainer_error(t),
                                   "epoch 0, on_train_epoch_end: Early stopping conditioned on metric `missing` which "
                                   "is not available. Pass in or modify your `EarlyStopping` callback to use any of "
                                   "the following: `val_loss`"));
        } else {
            assert_ok(s);
            assert_int_equal(em_trainer_current_epoch(t), 3);
            assert_false(em_trainer_should_stop(t));
        }
        assert_int_equal(k.n, 0);
        em_loader_free(train);
        em_loader_free(val);
        em_trainer_free(t);
        em_nn_free(m.net);
    }
}

/* ---- test_multiple_early_stopping_callbacks (single device) -------------------------------------------------------------- */

static void test_multiple_callbacks(void **state)
{
    (void)state;
    const double losses[] = {8, 4, 2, 3, 4, 5, 8, 10};
    for (int on_train = 0; on_train < 2; on_train++)
        for (int order = 0; order < 2; order++) {
            boring m;
            boring_init(&m, &boring_ops, on_train ? LOG_TRAIN_EPOCH_END : LOG_VAL_EPOCH_END, "abc", losses, 8);
            m.name2 = "cba";
            m.value2 = 0;
            em_trainer_config cfg = config(20);
            em_trainer *t = em_trainer_new(&cfg);
            em_early_stopping_opts abc = EM_EARLY_STOPPING_OPTS_INIT, cba = EM_EARLY_STOPPING_OPTS_INIT;
            abc.monitor = "abc";
            cba.monitor = "cba";
            cba.patience = 3;
            if (on_train)
                abc.check_on_train_epoch_end = cba.check_on_train_epoch_end = 1;
            em_callback *first = em_early_stopping(order ? &cba : &abc), *second = em_early_stopping(order ? &abc : &cba);
            assert_ok(em_trainer_add_callback(t, first));
            assert_ok(em_trainer_add_callback(t, second));
            em_loader *train = loader(2), *val = loader(1);
            assert_ok(em_trainer_fit(t, &m.base, train, val));
            assert_int_equal(em_trainer_current_epoch(t) - 1, 3); /* Lightning asserts it in on_train_end */
            em_loader_free(train);
            em_loader_free(val);
            em_trainer_free(t);
            em_nn_free(m.net);
        }
}

/* ---- test_check_on_train_epoch_end_smart_handling --------------------------------------------------------------------------- */

static void test_smart_handling(void **state)
{
    (void)state;
    for (int c = 0; c < 2; c++) {
        boring m;
        boring_init(&m, &boring_ops, LOG_VAL_STEP_ONE, "foo", NULL, 0);
        em_trainer_config cfg = config(c == 0 ? 10 : 5);
        cfg.limit_val_batches = EM_BATCHES(1);
        if (c == 0)
            cfg.val_check_interval = EM_FRACTION(0.3);
        else
            cfg.check_val_every_n_epoch = 2;
        em_early_stopping_opts o = EM_EARLY_STOPPING_OPTS_INIT;
        o.monitor = "foo";
        o.patience = 1; /* a constant value: the first check improves, the second signals stop (Lightning's mock:
                           [(False, "A"), (True, "B")]) */
        checks k = {0};
        o.on_check = count_check;
        o.on_check_user = &k;
        em_trainer *t = fit_one(&m, cfg, o, c == 0 ? 10 : 4, 2, NULL);
        assert_int_equal(k.n, 2);
        assert_string_equal(k.hooks[0], "on_validation_end"); /* resolved to False: after validation */
        if (c == 0)
            assert_int_equal(em_trainer_global_step(t), 2 * (int64_t)(10 * 0.3));
        else
            assert_int_equal(em_trainer_current_epoch(t), 2 * 2);
        em_trainer_free(t);
        em_nn_free(m.net);
    }
}

/* ---- test_early_stopping_no_val_step and test_early_stopping_no_extraneous_invocations -------------------- */

static void test_no_val_step(void **state)
{
    (void)state;
    /* train_loss falls by less than min_delta 0.1 from epoch 2 on: patience 0 stops at that check */
    const double losses[] = {1.0, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4};
    boring m;
    boring_init(&m, &boring_no_val_ops, LOG_TRAIN_EPOCH_END, "train_loss", losses, 10);
    em_early_stopping_opts o = EM_EARLY_STOPPING_OPTS_INIT;
    o.monitor = "train_loss";
    o.min_delta = 0.1;
    o.patience = 0;
    o.check_on_train_epoch_end = 1;
    em_trainer *t = fit_one(&m, config(10), o, 2, 0, NULL);
    assert_true(em_trainer_current_epoch(t) < 10 - 1);
    assert_int_equal(em_trainer_current_epoch(t) - 1, 2); /* 1.0 and 0.8 improve; 0.75 is not 0.1 better */
    em_trainer_free(t);
    em_nn_free(m.net);
}

static void test_no_extraneous_invocations(void **state)
{
    (void)state;
    const double losses[] = {4, 3, 2, 1};
    boring m;
    boring_init(&m, &boring_ops, LOG_TRAIN_EPOCH_END, "train_loss", losses, 4);
    em_early_stopping_opts o = EM_EARLY_STOPPING_OPTS_INIT;
    o.monitor = "train_loss";
    checks k = {0};
    o.on_check = count_check;
    o.on_check_user = &k;
    em_trainer_config cfg = config(4);
    cfg.limit_val_batches = EM_BATCHES(4);
    em_trainer *t = fit_one(&m, cfg, o, 4, 4, NULL);
    assert_int_equal(k.n, 4); /* one check per epoch, in on_train_epoch_end, none in on_validation_end */
    for (int i = 0; i < 4; i++)
        assert_string_equal(k.hooks[i], "on_train_epoch_end");
    em_trainer_free(t);
    em_nn_free(m.net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_patience, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_patience_train, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_thresholds, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_non_finite, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_min_epochs_min_steps, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_mode_options, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_strict, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_multiple_callbacks, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_smart_handling, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_no_val_step, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_no_extraneous_invocations, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
