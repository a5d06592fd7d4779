/* test_checkpoint_sched.c: schedulers in checkpoints. For StepLR, MultiStepLR,
 * CosineAnnealingWarmRestarts, OneCycleLR (it also drives Adam's beta1), ReduceLROnPlateau (stepped
 * with the loss), SequentialLR (LinearLR warm-up, then ExponentialLR) and ChainedScheduler: train 5
 * steps stepping the scheduler after each, checkpoint, train 5 more; a second run built with the
 * same arguments (other weights), which has stepped once on its own, restores the checkpoint and
 * trains the same 5 steps: every step's learning rate and the final weights equal the first run's
 * bit for bit. Then a scheduler of another kind is refused by name. */
#define _POSIX_C_SOURCE 200809L
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char dir[64];
static char ckpt[128];

enum { STEP, MULTISTEP, RESTARTS, ONECYCLE, PLATEAU, SEQUENTIAL, CHAINED, N_KINDS };
static const char *const kind_name[N_KINDS] = {"StepLR",  "MultiStepLR", "CosineAnnealingWarmRestarts", "OneCycleLR",
                                               "ReduceLROnPlateau", "SequentialLR", "ChainedScheduler"};

typedef struct run {
    em_nn *net;
    em_optimizer *opt;
    em_scheduler *sched;
} run;

static run make_run(int kind, uint64_t seed)
{
    run r;
    em_manual_seed(seed);
    r.net = EM_NN_SEQUENTIAL(em_nn_linear(4, 8, true), em_nn_tanh(), em_nn_linear(8, 2, true));
    em_params *ps = em_nn_parameters(r.net);
    if (kind == ONECYCLE) {
        em_adam_opts a = EM_ADAM_OPTS_INIT;
        r.opt = em_adam(ps, &a);
    } else {
        r.opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1, .momentum = 0.9});
    }
    em_params_free(ps);
    switch (kind) {
    case STEP: r.sched = em_step_lr(r.opt, 2, 0.5); break;
    case MULTISTEP: r.sched = em_multistep_lr(r.opt, (const int64_t[]){3, 6, 8}, 3, 0.3); break;
    case RESTARTS: r.sched = em_cosine_annealing_warm_restarts(r.opt, 3, 2, 0.001); break;
    case ONECYCLE: {
        em_onecycle_opts o = EM_ONECYCLE_OPTS_INIT;
        o.max_lr = 0.05, o.total_steps = 12;
        r.sched = em_onecycle_lr(r.opt, &o);
        break;
    }
    case PLATEAU: {
        em_plateau_opts o = EM_PLATEAU_OPTS_INIT;
        o.patience = 0, o.factor = 0.5, o.threshold = 0.05;
        r.sched = em_reduce_lr_on_plateau(r.opt, &o);
        break;
    }
    case SEQUENTIAL: {
        em_scheduler *kids[2] = {em_linear_lr(r.opt, 0.1, 1.0, 3), em_exponential_lr(r.opt, 0.8)};
        r.sched = em_sequential_lr(r.opt, kids, 2, (const int64_t[]){3});
        break;
    }
    case CHAINED: {
        em_scheduler *kids[2] = {em_constant_lr(r.opt, 0.5, 4), em_exponential_lr(r.opt, 0.9)};
        r.sched = em_chained_scheduler(kids, 2);
        break;
    }
    }
    assert_nonnull_em(r.sched);
    return r;
}

static void free_run(run *r)
{
    em_scheduler_free(r->sched);
    em_optimizer_free(r->opt);
    em_nn_free(r->net);
}

/* Steps first..last-1, each followed by a scheduler step; lrs[s] receives the lr the step used. */
static void train(run *r, int first, int last, double *lrs)
{
    for (int s = first; s < last; s++) {
        em_scope_begin();
        em_generator *g = em_generator_new(2000 + (uint64_t)s);
        em_tensor_opts o = {.generator = g};
        em_tensor *x = em_randn(EM_SHAPE(16, 4), &o);
        em_tensor *y = em_randn(EM_SHAPE(16, 2), &o);
        assert_ok(em_optimizer_zero_grad(r->opt));
        em_tensor *loss = em_mse_loss(em_nn_forward(r->net, x), y, EM_REDUCTION_MEAN);
        assert_ok(em_backward(loss));
        lrs[s] = em_optimizer_lr(r->opt, 0);
        assert_ok(em_optimizer_step(r->opt, NULL));
        if (em_scheduler_is_plateau(r->sched))
            assert_ok(em_scheduler_step_metric(r->sched, s % 3 == 0 ? 1.0 : em_tensor_item(loss)));
        else
            assert_ok(em_scheduler_step(r->sched));
        em_generator_free(g);
        em_scope_end();
    }
}

static void weights(const em_nn *net, float *out)
{
    size_t at = 0;
    for (size_t i = 0; i < em_nn_num_parameters(net); i++) {
        const em_tensor *p = em_nn_parameter(net, i);
        size_t n = (size_t)em_tensor_numel(p);
        assert_ok(em_tensor_copy_to(p, out + at, n * sizeof(float), EM_F32));
        at += n;
    }
}

static void test_sched__resume_is_bit_exact_for_each_scheduler(void **state)
{
    (void)state;
    for (int kind = 0; kind < N_KINDS; kind++) {
        double la[10], lb[10];
        float wa[64] = {0}, wb[64] = {0};
        run a = make_run(kind, 0);
        assert_string_equal(em_scheduler_name(a.sched), kind_name[kind]);
        train(&a, 0, 5, la);
        assert_ok(em_checkpoint_save(ckpt, a.net, &a.opt, 1, &a.sched, 1, NULL, 0));
        train(&a, 5, 10, la);
        weights(a.net, wa);

        run b = make_run(kind, 1);
        train(&b, 0, 1, lb); /* a state of its own, overwritten by the checkpoint */
        assert_ok(em_checkpoint_load(ckpt, b.net, &b.opt, 1, &b.sched, 1));
        assert_int_equal(em_scheduler_last_epoch(b.sched), em_scheduler_last_epoch(a.sched) - 5);
        train(&b, 5, 10, lb);
        weights(b.net, wb);
        for (int s = 5; s < 10; s++)
            if (la[s] != lb[s])
                fail_msg("%s: step %d ran with lr %.17g after the resume, %.17g without it", kind_name[kind], s, lb[s],
                         la[s]);
        if (memcmp(wa, wb, sizeof wa) != 0)
            fail_msg("%s: the resumed run's weights differ from the uninterrupted run's", kind_name[kind]);
        assert_int_equal(em_scheduler_last_epoch(b.sched), em_scheduler_last_epoch(a.sched));
        free_run(&a);
        free_run(&b);
    }
}

static void test_sched__other_kind_or_count_refused(void **state)
{
    (void)state;
    run a = make_run(STEP, 0);
    double l[3];
    train(&a, 0, 3, l);
    assert_ok(em_checkpoint_save(ckpt, a.net, &a.opt, 1, &a.sched, 1, NULL, 0));
    run b = make_run(MULTISTEP, 1);
    double lr = em_optimizer_lr(b.opt, 0);
    assert_int_equal(em_checkpoint_load(ckpt, b.net, &b.opt, 1, &b.sched, 1), EM_EINVAL);
    assert_error_contains("scheduler 0 is StepLR in the checkpoint but MultiStepLR here");
    em_clear_error();
    assert_int_equal(em_checkpoint_load(ckpt, b.net, &b.opt, 1, NULL, 0), EM_EINVAL);
    assert_error_contains("the checkpoint has 1 schedulers, 0 given");
    em_clear_error();
    assert_true(em_optimizer_lr(b.opt, 0) == lr); /* nothing changed */
    free_run(&a);
    free_run(&b);
}

static int setup_all(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/ember_cks_XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(ckpt, sizeof ckpt, "%s/c.safetensors", dir);
    return 0;
}

static int teardown_all(void **state)
{
    (void)state;
    remove(ckpt);
    return rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sched__resume_is_bit_exact_for_each_scheduler, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_sched__other_kind_or_count_refused, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
