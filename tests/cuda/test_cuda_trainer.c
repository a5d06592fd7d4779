/* test_cuda_trainer.c: accelerator=cuda in the trainer (Lightning's CUDAAccelerator + SingleDeviceStrategy):
 * the module's layers move to cuda:0 before configure_optimizers, every batch before its step function,
 * training converges in both optimization modes, and a module without `layers` is refused with a
 * message. Skipped (exit 77) where the linked libtorch has no CUDA, e.g. Debian's: written for the GPU
 * issue to run. */
#include "helpers.h"

#include <stdio.h>
#include <string.h>

struct reg {
    em_module base;
    em_nn *net;
    int on_cuda_batches; /* training_step calls whose batch was on cuda:0 */
    double first_loss, last_loss;
};

static void note(struct reg *r, const em_batch *b, const em_tensor *loss)
{
    if (em_tensor_device(b->t[0]).type == EM_CUDA && em_tensor_device(b->t[1]).type == EM_CUDA)
        r->on_cuda_batches++;
    double v = em_tensor_item(loss);
    if (r->first_loss < 0)
        r->first_loss = v;
    r->last_loss = v;
}

static em_tensor *auto_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    struct reg *r = (struct reg *)m;
    em_tensor *loss = em_mse_loss(em_nn_forward(r->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
    if (loss != NULL)
        note(r, b, loss);
    return loss;
}

static em_tensor *manual_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    struct reg *r = (struct reg *)m;
    em_optimizer *opt = em_optimizers(m, NULL)[0];
    em_tensor *loss = em_mse_loss(em_nn_forward(r->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
    if (loss == NULL || em_optimizer_zero_grad(opt) != EM_OK || em_manual_backward(m, loss) != EM_OK ||
        em_optimizer_step(opt, NULL) != EM_OK)
        return NULL;
    note(r, b, loss);
    return loss;
}

static em_status optimizers(em_module *m, em_optim_setup *setup)
{
    struct reg *r = (struct reg *)m;
    em_params *ps = em_nn_parameters(r->net);
    /* configure_optimizers runs after the move: the parameters are already on the GPU */
    if (em_tensor_device(em_params_get(ps, 0)).type != EM_CUDA) {
        em_params_free(ps);
        return em_error_set(EM_EUSER, "configure_optimizers saw parameters on the CPU");
    }
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static const em_module_ops auto_ops = {
    .version = EM_MODULE_OPS_VERSION, .training_step = auto_step, .configure_optimizers = optimizers};
static const em_module_ops manual_ops = {
    .version = EM_MODULE_OPS_VERSION, .training_step = manual_step, .configure_optimizers = optimizers};

/* y = 2x + 1 on 64 CPU rows, batch 16, 20 epochs on cuda:0. */
static void fit_on_cuda(const em_module_ops *ops, bool manual)
{
    em_manual_seed(0);
    em_tensor *x = em_randn(EM_SHAPE(64, 1), NULL);
    em_tensor *y = em_add_scalar(em_mul_scalar(x, 2.0), 1.0);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 16});
    struct reg r = {.base = {.ops = ops, .manual_optimization = manual}, .net = em_nn_linear(1, 1, true),
                    .first_loss = -1};
    r.base.layers = r.net;
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 20;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    cfg.accelerator = EM_ACCELERATOR_CUDA;
    em_trainer *t = em_trainer_new(&cfg);
    assert_ok(em_trainer_fit(t, &r.base, l, NULL));
    assert_int_equal(em_trainer_device(t).type, EM_CUDA);
    assert_int_equal(em_trainer_device(t).index, 0);
    assert_int_equal(r.on_cuda_batches, 80);
    assert_int_equal(em_tensor_device(em_nn_parameter(r.net, 0)).type, EM_CUDA);
    assert_true(r.last_loss < 0.01 * r.first_loss);
    em_trainer_free(t);
    em_loader_free(l);
    em_nn_free(r.net);
    em_tensor_free(x);
    em_tensor_free(y);
}

static void test_automatic_on_cuda(void **state)
{
    (void)state;
    fit_on_cuda(&auto_ops, false);
}

static void test_manual_on_cuda(void **state)
{
    (void)state;
    fit_on_cuda(&manual_ops, true);
}

static void test_layers_required_on_cuda(void **state)
{
    (void)state;
    em_tensor *x = em_randn(EM_SHAPE(4, 1), NULL);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, x}, 2, &(em_loader_opts){.batch_size = 2});
    struct reg r = {.base = {.ops = &auto_ops}, .net = em_nn_linear(1, 1, true), .first_loss = -1};
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 1;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    cfg.accelerator = EM_ACCELERATOR_CUDA;
    em_trainer *t = em_trainer_new(&cfg);
    assert_int_equal(em_trainer_fit(t, &r.base, l, NULL), EM_EINVAL);
    assert_non_null(strstr(em_trainer_error(t), "the module has no `layers`"));
    em_trainer_free(t);
    em_loader_free(l);
    em_nn_free(r.net);
    em_tensor_free(x);
}

int main(void)
{
    if (!em_cuda_is_available()) {
        printf("skipped: the linked libtorch %s has no CUDA (or no GPU is visible); these tests need one\n",
               em_torch_version());
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_automatic_on_cuda, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_manual_on_cuda, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_layers_required_on_cuda, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests_name("cuda_trainer", tests, NULL, NULL);
}
