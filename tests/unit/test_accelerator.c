/* test_accelerator.c: Lightning's accelerator connector, the device part (accelerator auto / cpu / cuda)
 * and em_trainer_device. On a libtorch without CUDA (Debian's) "cuda" must stop fit before anything runs,
 * with Lightning's message; "auto" trains on the CPU. Where a GPU is visible the same cases check that
 * auto picks cuda:0 (tests/cuda/ covers the training itself). */
#include "helpers.h"

#include <string.h>

struct tiny {
    em_module base;
    em_nn *net;
    int steps;
};

static em_tensor *tiny_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    struct tiny *t = (struct tiny *)m;
    t->steps++;
    return em_mse_loss(em_nn_forward(t->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
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

/* Fit a Linear(1, 1) on 4 rows (2 batches) with `accelerator`; fit's status, the trainer's device and
 * the number of training_step calls come back. */
static em_status fit_with(em_accelerator accelerator, em_device *device, int *steps, char *msg, size_t cap)
{
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 1;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    cfg.accelerator = accelerator;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    struct tiny m = {.base = {.ops = &tiny_ops}, .net = em_nn_linear(1, 1, true)};
    m.base.layers = m.net;
    em_tensor *x = em_randn(EM_SHAPE(4, 1), NULL);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, x}, 2, &(em_loader_opts){.batch_size = 2});
    em_status s = em_trainer_fit(t, &m.base, l, NULL);
    *device = em_trainer_device(t);
    *steps = m.steps;
    snprintf(msg, cap, "%s", em_trainer_error(t));
    em_loader_free(l);
    em_tensor_free(x);
    em_trainer_free(t);
    em_nn_free(m.net);
    return s;
}

static void cpu_trains_on_the_cpu(void **state)
{
    (void)state;
    em_device d;
    int steps;
    char msg[1024];
    assert_ok(fit_with(EM_ACCELERATOR_CPU, &d, &steps, msg, sizeof msg));
    assert_int_equal(d.type, EM_CPU);
    assert_int_equal(steps, 2);
}

static void auto_picks_cuda_only_where_a_gpu_is_visible(void **state)
{
    (void)state;
    em_device d;
    int steps;
    char msg[1024];
    assert_ok(fit_with(EM_ACCELERATOR_AUTO, &d, &steps, msg, sizeof msg));
    assert_int_equal(steps, 2);
    if (em_cuda_is_available()) {
        assert_int_equal(d.type, EM_CUDA);
        assert_int_equal(d.index, 0);
    } else {
        assert_int_equal(d.type, EM_CPU);
    }
}

static void cuda_without_a_gpu_stops_before_training(void **state)
{
    (void)state;
    if (em_cuda_is_available()) {
        skip(); /* the GPU case is tests/cuda/'s */
        return;
    }
    em_device d;
    int steps;
    char msg[1024];
    assert_int_equal(fit_with(EM_ACCELERATOR_CUDA, &d, &steps, msg, sizeof msg), EM_EUNSUPPORTED);
    assert_non_null(strstr(msg, "`CUDAAccelerator` can not run on your system since the accelerator is not "
                                "available"));
    assert_int_equal(steps, 0);
    assert_int_equal(d.type, EM_CPU);
}

static void device_of_null_and_of_a_new_trainer(void **state)
{
    (void)state;
    assert_int_equal(em_trainer_device(NULL).type, EM_CPU);
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    em_trainer *t = em_trainer_new(&cfg);
    assert_int_equal(em_trainer_device(t).type, EM_CPU);
    em_trainer_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(cpu_trains_on_the_cpu, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(auto_picks_cuda_only_where_a_gpu_is_visible, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(cuda_without_a_gpu_stops_before_training, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(device_of_null_and_of_a_new_trainer, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests_name("accelerator", tests, NULL, NULL);
}
