/* test_cuda_amp.c: 16-mixed on CUDA (Lightning 2.2.5's MixedPrecision("16-mixed", "cuda") with the
 * default torch.cuda.amp.GradScaler), and the grad scaler on CUDA gradients, where torch's fused
 * kernels _amp_foreach_non_finite_check_and_unscale_ / _amp_update_scale_ exist in every version.
 *
 * Skipped (exit 77) where the linked libtorch has no CUDA, e.g. Debian's. Written to be run by the
 * GPU issue: the layers and batches are put on cuda:0 by the test itself (this version of ember has
 * no accelerator setting that moves them).
 */
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>

#define TEST(t) cmocka_unit_test_setup_teardown(t, helper_setup, helper_teardown)

static const em_device gpu = EM_DEVICE_CUDA(0);

/* ---- the scaler on CUDA gradients -------------------------------------------------------------------- */

/* test_cuda.py::test_grad_scaling_unscale through the public API: inv_scale 4 on finite, inf and NaN
 * gradients (the fused kernel), then backoff and growth. */
static void test_scaler_unscale_on_cuda(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *w = em_zeros(EM_SHAPE(4), &(em_tensor_opts){.device = gpu, .requires_grad = true});
    em_params *ps = em_params_new();
    assert_ok(em_params_add(ps, w));
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 1.0});
    em_params_free(ps);
    em_grad_scaler *s = em_grad_scaler_new(&(em_grad_scaler_opts){
        .version = 1, .init_scale = 0.25, .growth_factor = 2.0, .backoff_factor = 0.5, .growth_interval = 1,
        .enabled = true});
    em_tensor *scaled = em_grad_scaler_scale(s, em_full(EM_SHAPE(1), 4.0, &(em_tensor_opts){.device = gpu}));
    assert_true(em_tensor_device(scaled).type == EM_CUDA);
    assert_true(em_tensor_item(scaled) == 1.0);

    const float bad[3] = {0.25f, INFINITY, NAN};
    const double scale_after[3] = {0.5, 0.25, 0.125};
    for (int k = 0; k < 3; k++) {
        em_tensor *g = em_to_device(em_tensor_from((const float[]){0.25f, bad[k], 0.25f, 0.25f}, EM_F32,
                                                   EM_SHAPE(4), NULL), gpu);
        assert_ok(em_tensor_set_grad(w, g));
        float before[4], after[4], grad[4];
        helper_values(em_to_device(w, EM_DEVICE_CPU), before, 4);
        bool stepped = false;
        assert_ok(em_grad_scaler_step(s, opt, NULL, &stepped));
        assert_true(stepped == (k == 0));
        helper_values(em_to_device(em_tensor_grad(w), EM_DEVICE_CPU), grad, 4);
        assert_true(grad[0] == 0.25f / (float)em_grad_scaler_get_scale(s));
        helper_values(em_to_device(w, EM_DEVICE_CPU), after, 4);
        if (k > 0)
            assert_memory_equal(before, after, sizeof before);
        assert_ok(em_grad_scaler_update(s));
        assert_true(em_grad_scaler_get_scale(s) == scale_after[k]);
    }
    em_grad_scaler_free(s);
    em_optimizer_free(opt);
    assert_ok(em_scope_end());
}

/* ---- 16-mixed in the trainer ---------------------------------------------------------------------------- */

typedef struct cm {
    em_module base;
    em_nn *net;                 /* Linear(4, 1) on cuda:0 */
    int64_t inf_batch;
    int f16_outputs, steps;
    double first_scaled_loss, first_loss;
    double scale_end[8];
    int n_end;
} cm;

static cm *CM(em_module *m) { return (cm *)m; }

static em_tensor *training_step(em_module *m, const em_batch *b, int64_t i)
{
    cm *c = CM(m);
    em_tensor *out = em_nn_forward(c->net, b->t[0]);
    c->f16_outputs += out != NULL && em_tensor_dtype(out) == EM_F16; /* autocast float16 */
    em_tensor *loss = em_mse_loss(out, b->t[1], EM_REDUCTION_MEAN);
    if (i == 0 && loss != NULL)
        c->first_loss = em_tensor_item(loss);
    c->steps++;
    return loss;
}

static em_status configure(em_module *m, em_optim_setup *setup)
{
    em_params *ps = em_nn_parameters(CM(m)->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.01});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static em_status on_before_backward(em_module *m, em_tensor *loss)
{
    cm *c = CM(m);
    if (em_trainer_batch_idx(em_module_trainer(m)) == 0)
        c->first_scaled_loss = em_tensor_item(loss);
    return EM_OK;
}

static em_status on_after_backward(em_module *m)
{
    cm *c = CM(m);
    if (em_trainer_batch_idx(em_module_trainer(m)) != c->inf_batch)
        return EM_OK;
    return em_fill_(em_tensor_grad(em_nn_get(c->net, "weight")), INFINITY);
}

static em_status on_train_batch_end(em_module *m, const em_tensor *loss, const em_batch *b, int64_t i)
{
    (void)loss, (void)b, (void)i;
    cm *c = CM(m);
    if (c->n_end < 8)
        c->scale_end[c->n_end++] = em_grad_scaler_get_scale(em_trainer_grad_scaler(em_module_trainer(m)));
    return EM_OK;
}

static const em_module_ops cm_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = training_step,
    .configure_optimizers = configure,
    .on_before_backward = on_before_backward,
    .on_after_backward = on_after_backward,
    .on_train_batch_end = on_train_batch_end,
};

static void test_16_mixed_default_scaler(void **state)
{
    (void)state;
    em_scope_begin();
    em_manual_seed(0);
    cm c = {.base = {.ops = &cm_ops}, .inf_batch = 2};
    c.net = em_nn_linear(4, 1, true);
    assert_ok(em_nn_to_device(c.net, gpu));
    em_tensor *xy[2] = {em_to_device(em_randn(EM_SHAPE(8, 4), NULL), gpu),
                        em_to_device(em_randn(EM_SHAPE(8, 1), NULL), gpu)};
    em_loader *train = em_tensor_loader(xy, 2, &(em_loader_opts){.batch_size = 2});
    assert_nonnull_em(train);
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 1;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    cfg.precision = EM_PRECISION_16_MIXED;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    assert_ok(em_trainer_fit(t, &c.base, train, NULL));
    /* the step functions ran under autocast float16; the loss was scaled by torch's default 2^16 */
    assert_int_equal(c.steps, 4);
    assert_int_equal(c.f16_outputs, 4);
    assert_close_rel(c.first_scaled_loss, c.first_loss * 65536.0, 1e-6);
    /* the trainer's own scaler: default options, backed off once at the inf batch, counted in global_step */
    em_grad_scaler *s = em_trainer_grad_scaler(t);
    assert_nonnull_em(s);
    assert_true(c.scale_end[0] == 65536.0 && c.scale_end[1] == 65536.0);
    assert_true(c.scale_end[2] == 32768.0 && c.scale_end[3] == 32768.0);
    assert_int_equal(em_grad_scaler_growth_tracker(s), 1);
    assert_int_equal(em_trainer_global_step(t), 4);
    em_trainer_free(t);
    em_loader_free(train);
    em_nn_free(c.net);
    assert_ok(em_scope_end());
}

int main(void)
{
    if (!em_cuda_is_available()) {
        printf("skipped: the linked libtorch %s has no CUDA (or no GPU is visible); these tests need one\n",
               em_torch_version());
        return 77;
    }
    const struct CMUnitTest tests[] = {
        TEST(test_scaler_unscale_on_cuda),
        TEST(test_16_mixed_default_scaler),
    };
    return cmocka_run_group_tests_name("cuda_amp", tests, NULL, NULL);
}
