/* test_amp_trainer.c: 16-mixed in the trainer (Lightning 2.2.5's MixedPrecision with a GradScaler;
 * docs/LIGHTNING_RULES.md §1.6, §4.8, §6.2, §7), run on the CPU with a scaler given in the config
 * (Lightning: plugins=[MixedPrecision("16-mixed", "cpu", scaler)]).
 *
 * The model is one weight w (a Linear(1, 1) without bias) and the loss of batch x is mean(w * x), so
 * the true gradient is x. Batches are single rows x = 1, 2, 3, ... and SGD(lr=0.1) steps
 * w -= 0.1 * x. An inf gradient is injected in on_after_backward to make the scaler skip a step.
 * Ported assertions: test_amp_integration.py::test_skip_training_step_with_grad_scaler (5 steps, the
 * odd ones return None: 3 scaler steps and updates), test_manual_optimization.py::
 * test_multiple_optimizers_manual_call_counts (one update per optimizer step), test_amp.py::
 * test_optimizer_amp_scaling_support_in_step_method (a fused optimizer and clipping).
 */
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>

#define TEST(t) cmocka_unit_test_setup_teardown(t, helper_setup, helper_teardown)
#define MAXB 16

/* ---- warnings --------------------------------------------------------------------------------------- */

static char warnings[8][512];
static int n_warnings;

static void capture(void *user, em_log_level level, const char *message)
{
    (void)user;
    if (level == EM_LEVEL_WARNING && n_warnings < 8)
        snprintf(warnings[n_warnings++], sizeof warnings[0], "%s", message);
}

static int count_warnings(const char *needle)
{
    int n = 0;
    for (int i = 0; i < n_warnings; i++)
        n += strstr(warnings[i], needle) != NULL;
    return n;
}

/* The linked libtorch autocasts to float16 on the CPU (torch >= 2.5, amp.h / trainer.h). */
static bool cpu_autocast_f16(void)
{
    int major = 0, minor = 0;
    return sscanf(em_torch_version(), "%d.%d", &major, &minor) == 2 && (major > 2 || (major == 2 && minor >= 5));
}

/* ---- the module --------------------------------------------------------------------------------------- */

enum opt_kind { OPT_SGD = 0, OPT_LBFGS, OPT_FUSED, OPT_NEEDS_CLOSURE };

typedef struct am {
    em_module base;
    em_nn *layer, *layer2;
    enum opt_kind kind;
    int n_opts;           /* manual: 1 or 2 */
    int64_t inf_batch;    /* on_after_backward fills w.grad with inf at this batch (-1: never) */
    bool none_odd;        /* training_step returns none on odd batches */
    double clip;          /* manual: em_clip_gradients(value) before the step when > 0 */
    /* records */
    int training_steps, before_opt_calls;
    double before_backward[MAXB];
    int n_bb;
    double grad_seen[MAXB];   /* w.grad in on_before_optimizer_step */
    int n_gs;
    double w_end[MAXB], scale_end[MAXB]; /* in on_train_batch_end */
    int n_end;
    int fused_calls;
} am;

static am *AM(em_module *m) { return (am *)m; }

static em_tensor *weight(em_nn *layer) { return em_nn_parameter(layer, 0); }

static em_tensor *loss_of(em_nn *layer, const em_batch *b)
{
    return em_mean(em_mul(weight(layer), b->t[0]));
}

static em_tensor *auto_step(em_module *m, const em_batch *b, int64_t i)
{
    am *a = AM(m);
    a->training_steps++;
    if (a->none_odd && i % 2 == 1)
        return NULL;
    return loss_of(a->layer, b);
}

static em_tensor *manual_step(em_module *m, const em_batch *b, int64_t i)
{
    am *a = AM(m);
    a->training_steps++;
    size_t n = 0;
    em_optimizer **opts = em_optimizers(m, &n);
    for (size_t k = 0; k < n; k++) {
        em_nn *layer = k == 0 ? a->layer : a->layer2;
        if (em_optimizer_zero_grad(opts[k]) != EM_OK || em_manual_backward(m, loss_of(layer, b)) != EM_OK)
            return NULL;
        if (a->clip > 0 && em_clip_gradients(m, opts[k], a->clip, EM_CLIP_VALUE) != EM_OK)
            return NULL;
        /* a second clip in the same step must not unscale again */
        if (a->clip > 0 && em_clip_gradients(m, opts[k], a->clip, EM_CLIP_VALUE) != EM_OK)
            return NULL;
        if (em_optimizer_step(opts[k], NULL) != EM_OK)
            return NULL;
    }
    (void)i;
    return NULL;
}

static em_status fused_step(em_optimizer *self, const em_closure *closure)
{
    (void)closure;
    int *calls = em_optimizer_state(self);
    (*calls)++;
    return em_grad_scaler_step_info(self, NULL, NULL);
}

static const em_optimizer_ops fused_ops = {
    .version = EM_OPTIMIZER_OPS_VERSION, .name = "FusedTest", .step = fused_step, .destroy = free,
    .step_supports_amp_scaling = true,
};

static em_status closure_step(em_optimizer *self, const em_closure *closure)
{
    (void)self;
    return em_closure_call(closure, NULL);
}

static const em_optimizer_ops closure_ops = {
    .version = EM_OPTIMIZER_OPS_VERSION, .name = "NeedsClosure", .step = closure_step, .requires_closure = true,
};

static em_status configure(em_module *m, em_optim_setup *setup)
{
    am *a = AM(m);
    int n = a->n_opts > 0 ? a->n_opts : 1;
    for (int k = 0; k < n; k++) {
        em_params *ps = em_nn_parameters(k == 0 ? a->layer : a->layer2);
        em_optimizer *opt = NULL;
        if (a->kind == OPT_LBFGS) {
            opt = em_lbfgs(ps, NULL);
        } else if (a->kind == OPT_NEEDS_CLOSURE) {
            opt = em_optimizer_new(&closure_ops, ps, 0.1, NULL);
        } else if (a->kind == OPT_FUSED) {
            int *calls = calloc(1, sizeof *calls);
            opt = em_optimizer_new(&fused_ops, ps, 0.1, calls);
        } else {
            opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
        }
        em_params_free(ps);
        em_status s = em_optim_setup_add(setup, opt);
        if (s != EM_OK)
            return s;
    }
    return EM_OK;
}

static em_status on_before_backward(em_module *m, em_tensor *loss)
{
    am *a = AM(m);
    if (a->n_bb < MAXB)
        a->before_backward[a->n_bb++] = em_tensor_item(loss);
    return EM_OK;
}

static em_status on_after_backward(em_module *m)
{
    am *a = AM(m);
    em_trainer *t = em_module_trainer(m);
    if (em_trainer_batch_idx(t) == a->inf_batch)
        return em_fill_(em_tensor_grad(weight(a->layer)), INFINITY);
    return EM_OK;
}

static em_status on_before_optimizer_step(em_module *m, em_optimizer *opt)
{
    am *a = AM(m);
    a->before_opt_calls++;
    em_tensor *g = em_tensor_grad(em_params_get(em_optimizer_group_params(opt, 0), 0));
    if (a->n_gs < MAXB)
        a->grad_seen[a->n_gs++] = g != NULL ? em_tensor_item(g) : NAN;
    return EM_OK;
}

static em_status on_train_batch_end(em_module *m, const em_tensor *loss, const em_batch *b, int64_t i)
{
    (void)loss, (void)b, (void)i;
    am *a = AM(m);
    if (a->n_end < MAXB) {
        a->w_end[a->n_end] = em_tensor_item(weight(a->layer));
        a->scale_end[a->n_end++] = em_grad_scaler_get_scale(em_trainer_grad_scaler(em_module_trainer(m)));
    }
    return EM_OK;
}

static const em_module_ops am_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = auto_step,
    .configure_optimizers = configure,
    .on_before_backward = on_before_backward,
    .on_after_backward = on_after_backward,
    .on_before_optimizer_step = on_before_optimizer_step,
    .on_train_batch_end = on_train_batch_end,
};

static const em_module_ops am_manual_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = manual_step,
    .configure_optimizers = configure,
    .on_before_backward = on_before_backward,
    .on_after_backward = on_after_backward,
    .on_before_optimizer_step = on_before_optimizer_step,
    .on_train_batch_end = on_train_batch_end,
};

static em_nn *unit_layer(void)
{
    em_nn *l = em_nn_linear(1, 1, false);
    assert_nonnull_em(l);
    assert_ok(em_nn_set(l, "weight", (const float[]){1.0f}, EM_F32, 1));
    return l;
}

static void am_init(am *a, bool manual)
{
    memset(a, 0, sizeof *a);
    a->base.ops = manual ? &am_manual_ops : &am_ops;
    a->base.manual_optimization = manual;
    a->layer = unit_layer();
    a->layer2 = unit_layer();
    a->inf_batch = -1;
}

static void am_free(am *a)
{
    em_nn_free(a->layer);
    em_nn_free(a->layer2);
}

static em_loader *rows(int64_t n)
{
    em_scope_begin();
    float x[MAXB];
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(i + 1);
    em_tensor *t = em_tensor_from(x, EM_F32, EM_SHAPE(n, 1), NULL);
    em_loader *l = em_tensor_loader(&t, 1, &(em_loader_opts){.batch_size = 1});
    assert_nonnull_em(l);
    assert_ok(em_scope_end());
    return l;
}

static em_grad_scaler *scaler_of(double init, int64_t interval)
{
    em_grad_scaler_opts o = EM_GRAD_SCALER_OPTS_INIT;
    o.init_scale = init;
    o.growth_interval = interval;
    em_grad_scaler *s = em_grad_scaler_new(&o);
    assert_nonnull_em(s);
    return s;
}

typedef struct fit_result {
    em_status status;
    int64_t global_step, raw_steps;
    char error[512];
} fit_result;

/* One epoch of `batches` batches under `precision` with `scaler` (may be NULL). */
static fit_result fit(am *a, int64_t batches, em_precision precision, em_grad_scaler *scaler, double clip_val)
{
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 1;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    cfg.num_sanity_val_steps = 0;
    cfg.precision = precision;
    cfg.grad_scaler = scaler;
    cfg.gradient_clip_val = clip_val;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    em_loader *l = rows(batches);
    n_warnings = 0;
    em_log_handler prev = em_set_log_handler(capture, NULL);
    fit_result r = {.status = em_trainer_fit(t, &a->base, l, NULL)};
    em_set_log_handler(prev, NULL);
    snprintf(r.error, sizeof r.error, "%s", em_trainer_error(t));
    r.global_step = em_trainer_global_step(t);
    assert_true(em_trainer_grad_scaler(t) == (precision == EM_PRECISION_16_MIXED ? scaler : NULL) ||
                scaler == NULL);
    em_loader_free(l);
    em_trainer_free(t);
    em_clear_error();
    return r;
}

/* ---- automatic optimization ------------------------------------------------------------------------------ */

/* scaled loss before backward, true gradients before the step, a skipped step on inf, backoff and growth */
static void test_automatic_inf_skip_backoff_growth(void **state)
{
    (void)state;
    am a;
    am_init(&a, false);
    a.inf_batch = 2;
    em_grad_scaler *s = scaler_of(1024.0, 2);
    fit_result r = fit(&a, 5, EM_PRECISION_16_MIXED, s, NAN);
    assert_int_equal(r.status, EM_OK);
    /* on_before_backward sees loss * scale: w * x * scale with w = 1, 0.9, 0.7, 0.7, 0.3 */
    const double w_before[5] = {1.0, 0.9, 0.7, 0.7, 0.3}, scale_before[5] = {1024, 1024, 2048, 1024, 1024};
    assert_int_equal(a.n_bb, 5);
    for (int i = 0; i < 5; i++)
        assert_close_rel(a.before_backward[i], w_before[i] * (i + 1) * scale_before[i], 1e-6);
    /* on_before_optimizer_step sees unscaled gradients (the inf one as inf) */
    assert_int_equal(a.n_gs, 5);
    for (int i = 0; i < 5; i++)
        if (i == 2)
            assert_true(isinf(a.grad_seen[i]));
        else
            assert_true(a.grad_seen[i] == (double)(i + 1));
    /* the skipped step leaves w; global_step counts it anyway (Lightning) */
    const double w_after[5] = {0.9, 0.7, 0.7, 0.3, -0.2}, scale_after[5] = {1024, 2048, 1024, 1024, 2048};
    for (int i = 0; i < 5; i++) {
        assert_close(a.w_end[i], w_after[i], 1e-6, 1e-6);
        assert_true(a.scale_end[i] == scale_after[i]);
    }
    assert_int_equal(r.global_step, 5);
    assert_int_equal(em_grad_scaler_growth_tracker(s), 0);
    /* the linked torch decides whether the step functions ran under float16 autocast on the CPU */
    assert_int_equal(count_warnings("In CPU autocast, but the target dtype is not supported"),
                     cpu_autocast_f16() ? 0 : 1);
    /* the state carries on into the next fit of another trainer (a checkpoint's use) */
    em_grad_scaler_state st;
    assert_ok(em_grad_scaler_get_state(s, &st));
    assert_true(st.scale == 2048.0 && st.growth_tracker == 0 && st.growth_interval == 2);
    em_grad_scaler_free(s);
    am_free(&a);
}

/* test_skip_training_step_with_grad_scaler: 5 batches, the odd ones return None -> 3 unscale/step/update;
 * on_before_optimizer_step still runs on every batch and global_step counts 5. */
static void test_automatic_none_skips_scaler(void **state)
{
    (void)state;
    am a;
    am_init(&a, false);
    a.none_odd = true;
    em_grad_scaler *s = scaler_of(1024.0, 1); /* every update that runs doubles the scale */
    fit_result r = fit(&a, 5, EM_PRECISION_16_MIXED, s, NAN);
    assert_int_equal(r.status, EM_OK);
    assert_int_equal(a.training_steps, 5);
    assert_int_equal(a.before_opt_calls, 5);
    assert_int_equal(r.global_step, 5);
    assert_true(em_grad_scaler_get_scale(s) == 1024.0 * 8);
    /* three parameter updates: w = 1 - 0.1 * (1 + 3 + 5) */
    assert_close(a.w_end[4], 1.0 - 0.1 * 9, 1e-6, 1e-6);
    assert_int_equal(a.n_bb, 3);
    em_grad_scaler_free(s);
    am_free(&a);
}

/* Trainer clipping under 16-mixed clips the unscaled gradients (they are unscaled before the hook). */
static void test_automatic_trainer_clipping_unscaled(void **state)
{
    (void)state;
    am a;
    am_init(&a, false);
    em_grad_scaler *s = scaler_of(1024.0, 2000);
    fit_result r = fit(&a, 3, EM_PRECISION_16_MIXED, s, 0.5); /* norm clipping to 0.5 */
    assert_int_equal(r.status, EM_OK);
    for (int i = 0; i < 3; i++)
        assert_close(a.w_end[i], 1.0 - 0.05 * (i + 1), 1e-5, 1e-6);
    em_grad_scaler_free(s);
    am_free(&a);
}

/* ---- manual optimization ------------------------------------------------------------------------------------ */

/* the deliberate difference (Lightning #18089): em_clip_gradients unscales first, so a clip value of 0.5
 * bounds the true gradient, and the step does not unscale again */
static void test_manual_clip_unscales_first(void **state)
{
    (void)state;
    am a;
    am_init(&a, true);
    a.clip = 0.5;
    em_grad_scaler *s = scaler_of(1024.0, 2000);
    fit_result r = fit(&a, 3, EM_PRECISION_16_MIXED, s, NAN);
    assert_int_equal(r.status, EM_OK);
    assert_int_equal(a.n_gs, 3);
    for (int i = 0; i < 3; i++) {
        assert_true(a.grad_seen[i] == 0.5);
        assert_close(a.w_end[i], 1.0 - 0.05 * (i + 1), 1e-6, 1e-6);
        assert_close_rel(a.before_backward[i], (1.0 - 0.05 * i) * (i + 1) * 1024.0, 1e-6);
    }
    assert_int_equal(r.global_step, 3);
    em_grad_scaler_free(s);
    am_free(&a);
}

/* test_multiple_optimizers_manual_call_counts: each optimizer step unscales, steps and updates */
static void test_manual_two_optimizers_update_each(void **state)
{
    (void)state;
    am a;
    am_init(&a, true);
    a.n_opts = 2;
    em_grad_scaler *s = scaler_of(1024.0, 1);
    fit_result r = fit(&a, 3, EM_PRECISION_16_MIXED, s, NAN);
    assert_int_equal(r.status, EM_OK);
    assert_int_equal(r.global_step, 6);
    assert_true(em_grad_scaler_get_scale(s) == 1024.0 * 64);
    /* manual steps unscale: the weights move by the true gradients 1, 2, 3 */
    assert_close(a.w_end[2], 1.0 - 0.1 * 6, 1e-6, 1e-6);
    assert_close(em_tensor_item(weight(a.layer2)), 1.0 - 0.1 * 6, 1e-6, 1e-6);
    em_grad_scaler_free(s);
    am_free(&a);
}

/* an inf in manual optimization: the step is skipped, global_step still counts it, the scale backs off */
static void test_manual_inf_skip(void **state)
{
    (void)state;
    am a;
    am_init(&a, true);
    a.inf_batch = 1;
    em_grad_scaler *s = scaler_of(1024.0, 2000);
    fit_result r = fit(&a, 3, EM_PRECISION_16_MIXED, s, NAN);
    assert_int_equal(r.status, EM_OK);
    assert_int_equal(r.global_step, 3);
    assert_close(a.w_end[0], 0.9, 1e-6, 1e-6);
    assert_close(a.w_end[1], 0.9, 1e-6, 1e-6);
    assert_close(a.w_end[2], 0.6, 1e-6, 1e-6);
    assert_true(a.scale_end[1] == 512.0 && a.scale_end[2] == 512.0);
    em_grad_scaler_free(s);
    am_free(&a);
}

/* ---- what 16-mixed refuses ---------------------------------------------------------------------------------- */

static void test_lbfgs_rejected_before_training(void **state)
{
    (void)state;
    am a;
    am_init(&a, false);
    a.kind = OPT_LBFGS;
    em_grad_scaler *s = scaler_of(1024.0, 2000);
    fit_result r = fit(&a, 3, EM_PRECISION_16_MIXED, s, NAN);
    assert_int_equal(r.status, EM_EINVAL);
    assert_non_null(strstr(r.error, "AMP and the LBFGS optimizer are not compatible."));
    assert_int_equal(a.training_steps, 0);
    /* the same for an optimizer written in C whose ops say its step needs a closure */
    am_free(&a);
    am_init(&a, false);
    a.kind = OPT_NEEDS_CLOSURE;
    r = fit(&a, 3, EM_PRECISION_16_MIXED, s, NAN);
    assert_int_equal(r.status, EM_EINVAL);
    assert_non_null(strstr(r.error, "AMP and the NeedsClosure optimizer are not compatible"));
    assert_int_equal(a.training_steps, 0);
    /* bf16-mixed (no scaler) takes LBFGS */
    am_free(&a);
    am_init(&a, false);
    a.kind = OPT_LBFGS;
    r = fit(&a, 2, EM_PRECISION_BF16_MIXED, NULL, NAN);
    assert_int_equal(r.status, EM_OK);
    em_grad_scaler_free(s);
    am_free(&a);
}

static void test_fused_optimizer_clipping(void **state)
{
    (void)state;
    am a;
    am_init(&a, false);
    a.kind = OPT_FUSED;
    em_grad_scaler *s = scaler_of(1024.0, 2000);
    fit_result r = fit(&a, 3, EM_PRECISION_16_MIXED, s, 1.0);
    assert_int_equal(r.status, EM_EINVAL);
    assert_non_null(strstr(r.error, "The current optimizer, FusedTest, does not allow for gradient clipping because it "
                                    "performs unscaling of gradients internally."));
    /* without clipping it trains, the optimizer stepping itself every batch */
    am_free(&a);
    am_init(&a, false);
    a.kind = OPT_FUSED;
    r = fit(&a, 3, EM_PRECISION_16_MIXED, s, NAN);
    assert_int_equal(r.status, EM_OK);
    assert_int_equal(r.global_step, 3);
    em_grad_scaler_free(s);
    am_free(&a);
}

static void test_config_checks(void **state)
{
    (void)state;
    em_grad_scaler *s = scaler_of(1024.0, 2000);
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.grad_scaler = s;
    cfg.precision = EM_PRECISION_BF16_MIXED;
    assert_null(em_trainer_new(&cfg));
    assert_error_contains("`precision='bf16-mixed'` does not use a scaler");
    em_clear_error();
    cfg.precision = EM_PRECISION_32_TRUE;
    assert_null(em_trainer_new(&cfg));
    assert_error_contains("a grad_scaler is used only with EM_PRECISION_16_MIXED");
    em_clear_error();
    /* a program compiled against the version-1 header has no grad_scaler field: it is not read */
    cfg.version = 1;
    cfg.precision = EM_PRECISION_BF16_MIXED;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    assert_null(em_trainer_grad_scaler(t));
    em_trainer_free(t);
    em_grad_scaler_free(s);
}

/* Without CUDA and without a scaler, 16-mixed is bf16-mixed with Lightning's warning, and no scaler. */
static void test_cpu_fallback_to_bf16(void **state)
{
    (void)state;
    if (em_cuda_is_available())
        skip(); /* the fallback is for machines without CUDA (tests/cuda covers the other case) */
    am a;
    am_init(&a, false);
    fit_result r = fit(&a, 2, EM_PRECISION_16_MIXED, NULL, NAN);
    assert_int_equal(r.status, EM_OK);
    assert_int_equal(count_warnings("You passed `Trainer(accelerator='cpu', precision='16-mixed')` but AMP with fp16 is "
                                    "not supported on CPU. Using `precision='bf16-mixed'` instead."), 1);
    assert_int_equal(count_warnings("In CPU autocast"), 0);
    /* no scaling: on_before_backward sees the plain loss */
    assert_true(a.before_backward[0] == 1.0);
    am_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(test_automatic_inf_skip_backoff_growth),
        TEST(test_automatic_none_skips_scaler),
        TEST(test_automatic_trainer_clipping_unscaled),
        TEST(test_manual_clip_unscales_first),
        TEST(test_manual_two_optimizers_update_each),
        TEST(test_manual_inf_skip),
        TEST(test_lbfgs_rejected_before_training),
        TEST(test_fused_optimizer_clipping),
        TEST(test_config_checks),
        TEST(test_cpu_fallback_to_bf16),
    };
    return cmocka_run_group_tests_name("amp_trainer", tests, NULL, NULL);
}
