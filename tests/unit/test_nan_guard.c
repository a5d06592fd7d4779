/* test_nan_guard.c: the opt-in NaN/Inf guard (em_nan_guard): off by default (a NaN loss trains on, as in
 * Lightning), and when added it stops fit at the first non-finite loss before its backward (parameters
 * untouched), naming the epoch, the batch and the value; with check_grads / check_params it names the
 * parameter. Both optimization modes.
 */
#include "helpers.h"

#include <stdio.h>

typedef struct model {
    em_module base;
    em_nn *net;          /* Linear(1, 1) */
    int64_t bad_batch;   /* training_step returns a NaN (or inf) loss on this batch of epoch 1 */
    double bad_value;
} model;

static em_tensor *loss_of(model *m, const em_batch *b, int64_t batch_idx)
{
    em_tensor *loss = em_mean(em_nn_forward(m->net, b->t[0]));
    int64_t epoch = em_trainer_current_epoch(em_module_trainer(&m->base));
    if (epoch == 1 && batch_idx == m->bad_batch)
        loss = isnan(m->bad_value) ? em_mul(loss, em_scalar_tensor(m->bad_value, NULL)) /* NaN gradients too */
                                   : em_add(loss, em_scalar_tensor(m->bad_value, NULL));
    return loss;
}

static em_tensor *auto_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    return loss_of((model *)mb, b, batch_idx);
}

static em_tensor *manual_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    em_optimizer *opt = em_optimizers(mb, NULL)[0];
    em_tensor *loss = loss_of((model *)mb, b, batch_idx);
    if (loss == NULL || em_optimizer_zero_grad(opt) != EM_OK || em_manual_backward(mb, loss) != EM_OK ||
        em_optimizer_step(opt, NULL) != EM_OK)
        return NULL;
    return loss;
}

static em_status configure(em_module *mb, em_optim_setup *setup)
{
    model *m = (model *)mb;
    em_params *ps = em_nn_parameters(m->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static const em_module_ops auto_ops = {
    .version = EM_MODULE_OPS_VERSION, .training_step = auto_step, .configure_optimizers = configure};
static const em_module_ops manual_ops = {
    .version = EM_MODULE_OPS_VERSION, .training_step = manual_step, .configure_optimizers = configure};

static void model_init(model *m, bool manual, int64_t bad_batch, double bad_value)
{
    memset(m, 0, sizeof *m);
    m->base.ops = manual ? &manual_ops : &auto_ops;
    m->base.manual_optimization = manual;
    m->net = em_nn_sequential((em_nn *[]){em_nn_linear(1, 1, true)}, 1);
    assert_nonnull_em(m->net);
    m->base.layers = m->net;
    m->bad_batch = bad_batch;
    m->bad_value = bad_value;
}

static em_status fit(model *m, em_callback *guard, em_trainer **out)
{
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 3;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    if (guard != NULL)
        assert_ok(em_trainer_add_callback(t, guard));
    em_scope_begin();
    em_tensor *x = em_ones(EM_SHAPE(4, 1), EM_F32);
    em_loader *l = em_tensor_loader(&x, 1, &(em_loader_opts){.batch_size = 1});
    assert_ok(em_scope_end());
    em_status s = em_trainer_fit(t, &m->base, l, NULL);
    em_loader_free(l);
    *out = t;
    return s;
}

static void weights(const model *m, float w[2])
{
    em_scope_begin();
    assert_ok(em_tensor_copy_to(em_nn_parameter(m->net, 0), &w[0], sizeof(float), EM_F32));
    assert_ok(em_tensor_copy_to(em_nn_parameter(m->net, 1), &w[1], sizeof(float), EM_F32));
    em_scope_end();
}

/* Off by default: a NaN loss trains on and the weights become NaN (Lightning's default too). */
static void test_off_by_default(void **state)
{
    (void)state;
    model m;
    model_init(&m, false, 2, NAN);
    em_trainer *t = NULL;
    assert_ok(fit(&m, NULL, &t));
    assert_int_equal(em_trainer_current_epoch(t), 3);
    float w[2];
    weights(&m, w);
    assert_true(isnan(w[0]));
    em_trainer_free(t);
    em_nn_free(m.net);
}

/* The loss: stops before backward, in both modes, naming epoch, batch and value. */
static void test_loss(void **state)
{
    (void)state;
    const double bad[] = {NAN, INFINITY};
    const char *const printed[] = {"nan", "inf"};
    for (int manual = 0; manual < 2; manual++)
        for (int v = 0; v < 2; v++) {
            model m;
            model_init(&m, manual, 2, bad[v]);
            em_trainer *t = NULL;
            em_status s = fit(&m, em_nan_guard(NULL), &t);
            assert_int_equal(s, EM_ERROR);
            char want[200];
            snprintf(want, sizeof want, "epoch 1, batch 2, on_before_backward: NaN guard: The loss returned in "
                                        "`training_step` is %s.", printed[v]);
            assert_string_equal(em_trainer_error(t), want);
            assert_int_equal(em_trainer_global_step(t), 4 + 2); /* epoch 0 and two batches of epoch 1 */
            float w[2];
            weights(&m, w);
            assert_true(isfinite(w[0]) && isfinite(w[1])); /* stopped before the backward */
            em_trainer_free(t);
            em_nn_free(m.net);
        }
}

/* A finite run passes the guard with every check on and ends as without it. */
static void test_finite_run_unchanged(void **state)
{
    (void)state;
    float with[2], without[2];
    for (int g = 0; g < 2; g++) {
        model m;
        model_init(&m, false, -1, 1.0);
        em_manual_seed(7);
        em_nn_free(m.net);
        m.net = em_nn_sequential((em_nn *[]){em_nn_linear(1, 1, true)}, 1);
        m.base.layers = m.net;
        em_trainer *t = NULL;
        assert_ok(fit(&m, g ? em_nan_guard(&(em_nan_guard_opts){.check_grads = true, .check_params = true}) : NULL,
                      &t));
        weights(&m, g ? with : without);
        em_trainer_free(t);
        em_nn_free(m.net);
    }
    assert_memory_equal(with, without, sizeof with);
}

/* check_params: a parameter made infinite by the user after batch 1's step is named (by an optimizer_step
 * override, so before the guard's on_train_batch_end); check_grads: a gradient made
 * infinite in on_after_backward of batch 1 is named before the step, with a finite loss. */
static em_status poison_param(em_module *mb, int64_t epoch, int64_t batch_idx, em_optimizer *opt,
                              const em_closure *closure)
{
    (void)epoch;
    model *m = (model *)mb;
    em_status s = em_optimizer_step(opt, closure);
    if (s != EM_OK || batch_idx != 1)
        return s;
    float inf = INFINITY;
    return em_nn_set(em_nn_child(m->net, "0"), "bias", &inf, EM_F32, 1);
}

static em_status poison_grad(em_module *mb)
{
    model *m = (model *)mb;
    if (em_trainer_batch_idx(em_module_trainer(mb)) != 1)
        return EM_OK;
    return em_fill_(em_tensor_grad(em_nn_parameter(m->net, 0)), INFINITY);
}

static void test_params_and_grads(void **state)
{
    (void)state;
    static const em_module_ops param_ops = {.version = EM_MODULE_OPS_VERSION,
                                            .training_step = auto_step,
                                            .configure_optimizers = configure,
                                            .optimizer_step = poison_param};
    static const em_module_ops grad_ops = {.version = EM_MODULE_OPS_VERSION,
                                           .training_step = auto_step,
                                           .configure_optimizers = configure,
                                           .on_after_backward = poison_grad};
    for (int grads = 0; grads < 2; grads++) {
        model m;
        model_init(&m, false, -1, 1.0);
        m.base.ops = grads ? &grad_ops : &param_ops;
        em_trainer *t = NULL;
        em_nan_guard_opts o = {.check_grads = grads, .check_params = !grads};
        em_status s = fit(&m, em_nan_guard(&o), &t);
        assert_int_equal(s, EM_ERROR);
        if (grads)
            assert_string_equal(em_trainer_error(t),
                                "epoch 0, batch 1, on_before_optimizer_step: NaN guard: Detected nan and/or inf values "
                                "in the gradient of `0.weight`. Check your forward pass for numerically unstable "
                                "operations.");
        else
            assert_string_equal(em_trainer_error(t),
                                "epoch 0, batch 1, on_train_batch_end: NaN guard: Detected nan and/or inf values in "
                                "`0.bias`. Check your forward pass for numerically unstable operations.");
        em_trainer_free(t);
        em_nn_free(m.net);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_off_by_default, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_loss, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_finite_run_unchanged, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_params_and_grads, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
