/* test_trainer_lifetime.c: what the trainer owns and for how long; the scope each hook runs in; the
 * caller's grad mode across fit. */
#include <stdio.h>
#include <stdlib.h>

#include "helpers.h"

struct owner {
    em_module base;
    em_nn *net;
    em_optimizer *opt;       /* kept from configure_optimizers (the Python habit: self.opt = ...) */
    em_scheduler *sched;
    em_optimizer *wrapper;   /* kept from em_optimizers() */
    int depth_in[8];         /* em_scope_depth() seen inside hooks (see HOOK_* below) */
    bool leave_no_grad_open; /* on_train_epoch_start opens a no-grad region and leaves it */
};
enum { HOOK_CONFIGURE, HOOK_FIT_START, HOOK_TRAIN_START, HOOK_EPOCH_START, HOOK_EPOCH_END, HOOK_FIT_END, HOOK_STEP };

static em_tensor *owner_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    struct owner *o = (struct owner *)m;
    o->depth_in[HOOK_STEP] = em_scope_depth();
    o->wrapper = em_optimizers(m, NULL)[0];
    return em_mse_loss(em_nn_forward(o->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
}

static em_status owner_optimizers(em_module *m, em_optim_setup *setup)
{
    struct owner *o = (struct owner *)m;
    o->depth_in[HOOK_CONFIGURE] = em_scope_depth();
    em_tensor *scratch = em_ones(EM_SHAPE(3), NULL); /* a temporary: the hook's scope releases it */
    if (scratch == NULL)
        return em_last_status();
    em_params *ps = em_nn_parameters(o->net);
    o->opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1, .momentum = 0.9});
    em_params_free(ps);
    em_status s = em_optim_setup_add(setup, o->opt);
    if (s != EM_OK)
        return s;
    o->sched = em_step_lr(o->opt, 1, 0.5);
    return em_optim_setup_add_scheduler(setup, o->sched, NULL);
}

/* Logging a tensor computed in an epoch-level hook: the tensor is released with the hook's scope
 * (under LeakSanitizer a leak here fails the test). */
static em_status log_weight_norm(em_module *m, int slot)
{
    struct owner *o = (struct owner *)m;
    o->depth_in[slot] = em_scope_depth();
    em_tensor *w = em_nn_get(o->net, "weight");
    return em_log_tensor(m, "w_norm", em_norm(w, 2.0), 0);
}

static em_status on_fit_start(em_module *m)
{
    ((struct owner *)m)->depth_in[HOOK_FIT_START] = em_scope_depth();
    return em_ones(EM_SHAPE(2), NULL) != NULL ? EM_OK : em_last_status();
}
static em_status on_fit_end(em_module *m)
{
    ((struct owner *)m)->depth_in[HOOK_FIT_END] = em_scope_depth();
    return em_ones(EM_SHAPE(2), NULL) != NULL ? EM_OK : em_last_status();
}
static em_status on_train_start(em_module *m) { return log_weight_norm(m, HOOK_TRAIN_START); }
static em_status on_train_epoch_end(em_module *m) { return log_weight_norm(m, HOOK_EPOCH_END); }
static em_status on_train_epoch_start(em_module *m)
{
    struct owner *o = (struct owner *)m;
    o->depth_in[HOOK_EPOCH_START] = em_scope_depth();
    if (o->leave_no_grad_open)
        em_no_grad_begin(); /* a mistake the trainer cleans up at fit end */
    return EM_OK;
}

static const em_module_ops owner_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = owner_step,
    .configure_optimizers = owner_optimizers,
    .on_fit_start = on_fit_start,
    .on_fit_end = on_fit_end,
    .on_train_start = on_train_start,
    .on_train_epoch_start = on_train_epoch_start,
    .on_train_epoch_end = on_train_epoch_end,
};

static em_trainer *fit_owner(struct owner *o, em_status *status)
{
    em_manual_seed(0);
    o->base = (em_module){.ops = &owner_ops, .manual_optimization = false};
    o->net = em_nn_linear(2, 1, true);
    em_scope_begin();
    em_tensor *x = em_randn(EM_SHAPE(8, 2), NULL);
    em_tensor *y = em_sum_dim(x, 1, true);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 4});
    em_scope_end();
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 2;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    em_trainer *t = em_trainer_new(&cfg);
    *status = em_trainer_fit(t, &o->base, l, NULL);
    em_loader_free(l);
    return t;
}

/* Optimizers and schedulers added in configure_optimizers stay alive after fit returns (a kept pointer
 * is valid and refuses em_*_free), until em_trainer_free; a kept LightningOptimizer refuses to step. */
static void test_lifetime__trainer_owned_objects_live_until_the_trainer_is_freed(void **state)
{
    (void)state;
    struct owner o = {0};
    em_status s;
    em_trainer *t = fit_owner(&o, &s);
    assert_ok(s);
    /* after fit: still valid, and still the trainer's */
    assert_close_rel(em_optimizer_lr(o.opt, 0), 0.1 * 0.5 * 0.5, 1e-12); /* StepLR stepped after each epoch */
    assert_int_equal(em_optimizer_step_count(o.opt), 4);
    em_optimizer_free(o.opt);
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("belongs to a trainer");
    em_clear_error();
    em_scheduler_free(o.sched);
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("belongs to a trainer");
    em_clear_error();
    assert_close_rel(em_scheduler_last_lr(o.sched, 0), 0.025, 1e-12);
    /* the LightningOptimizer belongs to the fit that ended */
    assert_int_equal(em_optimizer_step(o.wrapper, NULL), EM_ESTATE);
    assert_error_contains("fit that has ended");
    em_clear_error();
    em_trainer_free(t); /* frees them: LeakSanitizer checks nothing is left */
    em_nn_free(o.net);
}

/* A second fit of the same trainer releases the first fit's objects (LeakSanitizer checks) and builds
 * new ones. */
static void test_lifetime__a_second_fit_replaces_the_first_fits_objects(void **state)
{
    (void)state;
    struct owner o = {0};
    em_status s;
    em_trainer *t = fit_owner(&o, &s);
    assert_ok(s);
    em_nn_free(o.net);
    assert_int_equal(em_optimizer_step_count(o.opt), 4);
    em_manual_seed(0);
    o.net = em_nn_linear(2, 1, true);
    em_scope_begin();
    em_tensor *x = em_randn(EM_SHAPE(8, 2), NULL);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, x}, 2, &(em_loader_opts){.batch_size = 4});
    em_scope_end();
    assert_ok(em_trainer_fit(t, &o.base, l, NULL));
    assert_int_equal(em_optimizer_step_count(o.opt), 4); /* a fresh optimizer (the first one made 4 steps too) */
    em_loader_free(l);
    em_trainer_free(t);
    em_nn_free(o.net);
}

/* Every hook runs inside a scope: the batch's for training_step, one of its own for configure_optimizers
 * and the hooks outside a batch; the caller's depth is back to 0 after fit. */
static void test_lifetime__every_hook_runs_in_a_scope(void **state)
{
    (void)state;
    struct owner o = {0};
    em_status s;
    assert_int_equal(em_scope_depth(), 0);
    em_trainer *t = fit_owner(&o, &s);
    assert_ok(s);
    for (int h = HOOK_CONFIGURE; h <= HOOK_STEP; h++)
        if (o.depth_in[h] < 1)
            fail_msg("hook %d ran with scope depth %d", h, o.depth_in[h]);
    assert_int_equal(em_scope_depth(), 0);
    double w;
    assert_true(em_trainer_callback_metric(t, "w_norm", &w));
    assert_true(w > 0);
    em_trainer_free(t);
    em_nn_free(o.net);
}

/* fit called inside the caller's em_no_grad_begin region: the region is still open after fit (only the
 * regions a hook left open are closed). */
static void test_lifetime__fit_restores_the_callers_grad_mode(void **state)
{
    (void)state;
    struct owner o = {.leave_no_grad_open = true};
    em_no_grad_begin();
    assert_false(em_is_grad_enabled());
    em_status s;
    em_trainer *t = fit_owner(&o, &s);
    assert_ok(s);
    assert_false(em_is_grad_enabled()); /* the caller's region */
    assert_ok(em_no_grad_end());
    assert_true(em_is_grad_enabled());
    assert_int_equal(em_no_grad_end(), EM_ESTATE); /* and nothing else was left open */
    em_clear_error();
    em_trainer_free(t);
    em_nn_free(o.net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lifetime__trainer_owned_objects_live_until_the_trainer_is_freed,
                                        helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_lifetime__a_second_fit_replaces_the_first_fits_objects, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_lifetime__every_hook_runs_in_a_scope, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_lifetime__fit_restores_the_callers_grad_mode, helper_setup,
                                        helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
