/* test_grad_scaler.c: the grad scaler (ember/amp.h) on the CPU, against torch's GradScaler.
 *
 * Ported from torch 1.13's test/test_cuda.py (run here on the CPU, where ember's scaler works as
 * torch.amp.GradScaler("cpu") does from 2.3): test_grad_scaling_scale, test_grad_scaling_unscale,
 * test_grad_scaling_update_scale, test_grad_scaling_state_dict, and the _run_scaling_case family
 * (a scaled model trained beside a control model that skips the iteration where an inf gradient is
 * injected: same weights at the end, and a scale of 128 * growth^unskipped * backoff^skipped):
 * test_grad_scaling_clipping, test_grad_scaling_clipping_separate_unscale,
 * test_grad_scaling_accumulation, test_grad_scaling_multiple. Plus the order checks of
 * GradScaler's methods, with torch's messages, and the fused-optimizer protocol.
 */
#include "helpers.h"

#include <stdlib.h>

#define TEST(t) cmocka_unit_test_setup_teardown(t, helper_setup, helper_teardown)

/* A parameter of `n` elements (requires grad) in an SGD(lr=1) optimizer. */
typedef struct one_param {
    em_tensor *w;
    em_optimizer *opt;
} one_param;

static one_param one_param_new(int64_t n)
{
    one_param p;
    p.w = em_zeros(EM_SHAPE(n), &(em_tensor_opts){.requires_grad = true});
    assert_nonnull_em(p.w);
    em_params *ps = em_params_new();
    assert_ok(em_params_add(ps, p.w));
    p.opt = em_sgd(ps, &(em_sgd_opts){.lr = 1.0});
    assert_nonnull_em(p.opt);
    em_params_free(ps);
    return p;
}

static void one_param_free(one_param *p)
{
    em_optimizer_free(p->opt);
}

static void set_grad(em_tensor *w, const float *v, int64_t n)
{
    em_tensor *g = em_tensor_from(v, EM_F32, EM_SHAPE(n), NULL);
    assert_ok(em_tensor_set_grad(w, g));
}

/* Initialise the scale lazily (torch: the first scaler.scale call). */
static void first_scale(em_grad_scaler *s)
{
    em_tensor *l = em_scalar_tensor(1.0, NULL);
    assert_nonnull_em(em_grad_scaler_scale(s, l));
}

/* ---- construction ------------------------------------------------------------------------------------ */

static void test_defaults(void **state)
{
    (void)state;
    em_grad_scaler *s = em_grad_scaler_new(NULL);
    assert_nonnull_em(s);
    assert_true(em_grad_scaler_is_enabled(s));
    assert_true(em_grad_scaler_get_scale(s) == 65536.0);
    assert_int_equal(em_grad_scaler_growth_tracker(s), 0);
    em_grad_scaler_opts o;
    assert_ok(em_grad_scaler_get_opts(s, &o));
    assert_true(o.growth_factor == 2.0 && o.backoff_factor == 0.5 && o.growth_interval == 2000 && o.enabled);
    em_grad_scaler_free(s);
    em_grad_scaler_free(NULL);
}

static void test_constructor_checks(void **state)
{
    (void)state;
    em_grad_scaler_opts o = EM_GRAD_SCALER_OPTS_INIT;
    o.growth_factor = 1.0;
    assert_null(em_grad_scaler_new(&o));
    assert_error_contains("The growth factor must be > 1.0.");
    em_clear_error();
    o = (em_grad_scaler_opts)EM_GRAD_SCALER_OPTS_INIT;
    o.backoff_factor = 1.0;
    assert_null(em_grad_scaler_new(&o));
    assert_error_contains("The backoff factor must be < 1.0.");
    em_clear_error();
    o = (em_grad_scaler_opts)EM_GRAD_SCALER_OPTS_INIT;
    o.growth_interval = 0;
    assert_null(em_grad_scaler_new(&o));
    assert_error_contains("growth_interval");
    em_clear_error();
    o = (em_grad_scaler_opts)EM_GRAD_SCALER_OPTS_INIT;
    o.init_scale = INFINITY;
    assert_null(em_grad_scaler_new(&o));
    assert_error_contains("init_scale");
    em_clear_error();
    assert_null(em_grad_scaler_new(&(em_grad_scaler_opts){.init_scale = 2.0}));
    assert_error_contains("EM_GRAD_SCALER_OPTS_INIT");
    /* torch checks the factors only when enabled */
    em_clear_error();
    o = (em_grad_scaler_opts)EM_GRAD_SCALER_OPTS_INIT;
    o.growth_factor = 0.5;
    o.enabled = false;
    em_grad_scaler *s = em_grad_scaler_new(&o);
    assert_nonnull_em(s);
    assert_false(em_grad_scaler_is_enabled(s));
    assert_true(em_grad_scaler_get_scale(s) == 1.0);
    em_grad_scaler_free(s);
}

/* ---- scale: test_grad_scaling_scale ------------------------------------------------------------------- */

static void test_scale(void **state)
{
    (void)state;
    em_scope_begin();
    em_grad_scaler_opts o = EM_GRAD_SCALER_OPTS_INIT;
    o.init_scale = 2.0;
    em_grad_scaler *s = em_grad_scaler_new(&o);
    em_tensor *t0 = em_full(EM_SHAPE(1), 4.0, NULL);
    em_tensor *out = em_grad_scaler_scale(s, t0);
    assert_nonnull_em(out);
    assert_true(em_tensor_item(out) == 8.0);
    /* a 0-dim loss times the scale, a float32 tensor of shape (1,): shape (1,), as torch's */
    em_tensor *scaled = em_grad_scaler_scale(s, em_scalar_tensor(0.75, NULL));
    assert_int_equal(em_tensor_dim(scaled), 1);
    assert_int_equal(em_tensor_dtype(scaled), EM_F32);
    assert_true(em_tensor_item(scaled) == 1.5);
    /* the product is differentiable: backward through it gives d(2x)/dx = 2 */
    em_tensor *x = em_scalar_tensor(3.0, &(em_tensor_opts){.requires_grad = true});
    assert_ok(em_backward(em_sum(em_grad_scaler_scale(s, x))));
    assert_true(em_tensor_item(em_tensor_grad(x)) == 2.0);
    em_grad_scaler_free(s);
    /* disabled: the outputs unchanged */
    o.enabled = false;
    s = em_grad_scaler_new(&o);
    assert_true(em_tensor_item(em_grad_scaler_scale(s, t0)) == 4.0);
    assert_null(em_grad_scaler_scale(s, NULL));
    em_grad_scaler_free(s);
    assert_ok(em_scope_end());
}

/* ---- unscale: test_grad_scaling_unscale ---------------------------------------------------------------- */

static void test_unscale_finite_inf_nan(void **state)
{
    (void)state;
    em_scope_begin();
    em_grad_scaler_opts o = EM_GRAD_SCALER_OPTS_INIT;
    o.init_scale = 0.25; /* inv_scale 4, as the torch test */
    em_grad_scaler *s = em_grad_scaler_new(&o);
    first_scale(s);
    one_param p = one_param_new(4);
    float ones[4];

    /* finite: every gradient * 4, no inf found, the step happens */
    set_grad(p.w, (const float[]){0.25f, 0.25f, 0.25f, 0.25f}, 4);
    assert_ok(em_grad_scaler_unscale(s, p.opt));
    helper_values(em_tensor_grad(p.w), ones, 4);
    for (int i = 0; i < 4; i++)
        assert_true(ones[i] == 1.0f);
    bool stepped = false;
    assert_ok(em_grad_scaler_step(s, p.opt, NULL, &stepped));
    assert_true(stepped);
    assert_int_equal(em_optimizer_step_count(p.opt), 1);
    assert_ok(em_grad_scaler_update(s));

    /* inf, then NaN: found, the step is skipped (the weights stay), the finite ones are still unscaled */
    const float bad[2] = {INFINITY, NAN};
    for (int k = 0; k < 2; k++) {
        float before[4], after[4], g[4];
        helper_values(p.w, before, 4);
        first_scale(s);
        set_grad(p.w, (const float[]){0.5f, bad[k], 0.5f, 0.5f}, 4);
        stepped = true;
        assert_ok(em_grad_scaler_step(s, p.opt, NULL, &stepped)); /* unscales first */
        assert_false(stepped);
        helper_values(p.w, after, 4);
        assert_memory_equal(before, after, sizeof before);
        helper_values(em_tensor_grad(p.w), g, 4);
        assert_true(g[0] == 0.5f / (float)em_grad_scaler_get_scale(s));
        assert_ok(em_grad_scaler_update(s));
    }
    assert_int_equal(em_optimizer_step_count(p.opt), 1);
    /* two skipped iterations: 0.25 * 0.5 * 0.5 */
    assert_true(em_grad_scaler_get_scale(s) == 0.0625);
    one_param_free(&p);
    em_grad_scaler_free(s);
    assert_ok(em_scope_end());
}

/* ---- update: test_grad_scaling_update_scale ------------------------------------------------------------ */

/* One iteration on `p` with gradient `g` in every element; returns whether the optimizer stepped. */
static bool iteration(em_grad_scaler *s, one_param *p, float g)
{
    first_scale(s);
    set_grad(p->w, (const float[]){g, g}, 2);
    bool stepped = false;
    assert_ok(em_grad_scaler_step(s, p->opt, NULL, &stepped));
    assert_ok(em_grad_scaler_update(s));
    return stepped;
}

static void test_update_scale(void **state)
{
    (void)state;
    em_scope_begin();
    em_grad_scaler_opts o = {.version = EM_GRAD_SCALER_OPTS_VERSION, .init_scale = 4.0, .growth_factor = 2.0,
                             .backoff_factor = 0.25, .growth_interval = 2, .enabled = true};
    em_grad_scaler *s = em_grad_scaler_new(&o);
    one_param p = one_param_new(2);
    /* two consecutive unskipped iterations */
    assert_true(iteration(s, &p, 1.0f));
    assert_int_equal(em_grad_scaler_growth_tracker(s), 1);
    assert_true(em_grad_scaler_get_scale(s) == 4.0);
    assert_true(iteration(s, &p, 1.0f));
    assert_int_equal(em_grad_scaler_growth_tracker(s), 0);
    assert_true(em_grad_scaler_get_scale(s) == 8.0);
    /* a skipped iteration */
    assert_false(iteration(s, &p, INFINITY));
    assert_int_equal(em_grad_scaler_growth_tracker(s), 0);
    assert_true(em_grad_scaler_get_scale(s) == 2.0);
    /* growth restarts counting after a backoff */
    assert_true(iteration(s, &p, 1.0f));
    assert_int_equal(em_grad_scaler_growth_tracker(s), 1);
    one_param_free(&p);
    em_grad_scaler_free(s);

    /* the scale is a float32: products are rounded to it, and growth never reaches inf */
    o = (em_grad_scaler_opts){.version = EM_GRAD_SCALER_OPTS_VERSION, .init_scale = 3.0, .growth_factor = 2.0,
                              .backoff_factor = 0.3, .growth_interval = 1, .enabled = true};
    s = em_grad_scaler_new(&o);
    p = one_param_new(2);
    assert_false(iteration(s, &p, NAN));
    assert_true(em_grad_scaler_get_scale(s) == (double)(float)(3.0 * 0.3));
    assert_true(em_grad_scaler_get_scale(s) != 3.0 * 0.3);
    em_grad_scaler_free(s);
    o.init_scale = 0x1p127;
    s = em_grad_scaler_new(&o);
    assert_true(iteration(s, &p, 0.0f));
    assert_true(em_grad_scaler_get_scale(s) == 0x1p127);
    assert_int_equal(em_grad_scaler_growth_tracker(s), 0);
    /* update(new_scale) */
    first_scale(s);
    assert_ok(em_grad_scaler_update_to(s, 5.0));
    assert_true(em_grad_scaler_get_scale(s) == 5.0);
    one_param_free(&p);
    em_grad_scaler_free(s);
    assert_ok(em_scope_end());
}

/* ---- the order of calls, with torch's messages -------------------------------------------------------- */

static void test_call_order(void **state)
{
    (void)state;
    em_scope_begin();
    em_grad_scaler *s = em_grad_scaler_new(NULL);
    one_param p = one_param_new(2);
    set_grad(p.w, (const float[]){1, 1}, 2);

    assert_int_equal(em_grad_scaler_unscale(s, p.opt), EM_ESTATE);
    assert_error_contains("Attempted unscale_ but _scale is None.");
    em_clear_error();
    assert_int_equal(em_grad_scaler_step(s, p.opt, NULL, NULL), EM_ESTATE);
    assert_error_contains("Attempted step but _scale is None.");
    em_clear_error();
    assert_int_equal(em_grad_scaler_update(s), EM_ESTATE);
    assert_error_contains("Attempted update but _scale is None.");

    first_scale(s);
    em_clear_error();
    assert_int_equal(em_grad_scaler_update(s), EM_ESTATE);
    assert_error_contains("No inf checks were recorded prior to update.");
    em_clear_error();
    assert_ok(em_grad_scaler_unscale(s, p.opt));
    assert_int_equal(em_grad_scaler_unscale(s, p.opt), EM_ESTATE);
    assert_error_contains("unscale_() has already been called on this optimizer since the last update().");
    em_clear_error();
    em_closure c = {0};
    assert_int_equal(em_grad_scaler_step(s, p.opt, &c, NULL), EM_EINVAL);
    assert_error_contains("Closure use is not currently supported if GradScaler is enabled.");
    em_clear_error();
    assert_ok(em_grad_scaler_step(s, p.opt, NULL, NULL));
    assert_int_equal(em_grad_scaler_step(s, p.opt, NULL, NULL), EM_ESTATE);
    assert_error_contains("step() has already been called since the last update().");
    em_clear_error();
    assert_int_equal(em_grad_scaler_unscale(s, p.opt), EM_ESTATE);
    assert_error_contains("unscale_() is being called after step().");
    em_clear_error();
    assert_ok(em_grad_scaler_update(s));
    /* update forgot the stage: the next iteration may unscale and step again */
    assert_ok(em_grad_scaler_unscale(s, p.opt));
    assert_ok(em_grad_scaler_step(s, p.opt, NULL, NULL));
    assert_ok(em_grad_scaler_update(s));

    /* an optimizer without any gradient */
    assert_ok(em_tensor_set_grad(p.w, NULL));
    assert_int_equal(em_grad_scaler_step(s, p.opt, NULL, NULL), EM_ESTATE);
    assert_error_contains("No inf checks were recorded for this optimizer.");
    em_clear_error();
    one_param_free(&p);

    /* float16 gradients are refused before anything is unscaled */
    em_tensor *h = em_zeros(EM_SHAPE(2), &(em_tensor_opts){.dtype = EM_F16, .requires_grad = true});
    em_params *ps = em_params_new();
    assert_ok(em_params_add(ps, h));
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 1.0});
    em_params_free(ps);
    assert_ok(em_tensor_set_grad(h, em_full(EM_SHAPE(2), 2.0, &(em_tensor_opts){.dtype = EM_F16})));
    assert_int_equal(em_grad_scaler_unscale(s, opt), EM_EINVAL);
    assert_error_contains("Attempting to unscale FP16 gradients.");
    assert_true(em_tensor_item(em_sum(em_tensor_grad(h))) == 4.0);
    em_clear_error();
    em_optimizer_free(opt);

    /* disabled: everything passes through, the step happens whatever the gradients */
    em_grad_scaler_free(s);
    s = em_grad_scaler_new(&(em_grad_scaler_opts){.version = EM_GRAD_SCALER_OPTS_VERSION, .enabled = false});
    assert_nonnull_em(s);
    p = one_param_new(2);
    set_grad(p.w, (const float[]){INFINITY, 1}, 2);
    bool stepped = false;
    assert_ok(em_grad_scaler_unscale(s, p.opt));
    assert_ok(em_grad_scaler_unscale(s, p.opt));
    assert_ok(em_grad_scaler_step(s, p.opt, NULL, &stepped));
    assert_true(stepped);
    assert_ok(em_grad_scaler_update(s));
    assert_true(em_grad_scaler_get_scale(s) == 1.0);
    one_param_free(&p);
    em_grad_scaler_free(s);
    assert_ok(em_scope_end());
}

/* ---- state: test_grad_scaling_state_dict --------------------------------------------------------------- */

static void test_state(void **state)
{
    (void)state;
    em_scope_begin();
    for (int lazy = 0; lazy < 2; lazy++) {
        em_grad_scaler *s0 = em_grad_scaler_new(&(em_grad_scaler_opts){
            .version = 1, .init_scale = 3.0, .growth_factor = 4.0, .backoff_factor = 0.5, .growth_interval = 2,
            .enabled = true});
        em_grad_scaler *s1 = em_grad_scaler_new(&(em_grad_scaler_opts){
            .version = 1, .init_scale = 6.0, .growth_factor = 7.0, .backoff_factor = 0.8, .growth_interval = 1,
            .enabled = true});
        if (lazy)
            first_scale(s1);
        em_grad_scaler_state st;
        assert_ok(em_grad_scaler_get_state(s0, &st));
        assert_ok(em_grad_scaler_set_state(s1, &st));
        assert_true(em_grad_scaler_get_scale(s1) == 3.0);
        em_grad_scaler_opts o;
        assert_ok(em_grad_scaler_get_opts(s1, &o));
        assert_true(o.growth_factor == 4.0 && o.backoff_factor == 0.5 && o.growth_interval == 2);
        assert_int_equal(em_grad_scaler_growth_tracker(s1), 0);
        /* the loaded scaler behaves as s0: one good iteration, then growth by 4 at the second */
        one_param p = one_param_new(2);
        assert_true(iteration(s1, &p, 1.0f));
        assert_ok(em_grad_scaler_get_state(s1, &st));
        assert_true(st.scale == 3.0 && st.growth_tracker == 1);
        /* a checkpoint taken here and restored elsewhere continues the count */
        assert_ok(em_grad_scaler_set_state(s0, &st));
        assert_true(iteration(s0, &p, 1.0f));
        assert_true(em_grad_scaler_get_scale(s0) == 12.0);
        assert_int_equal(em_grad_scaler_growth_tracker(s0), 0);
        one_param_free(&p);
        em_grad_scaler_free(s0);
        em_grad_scaler_free(s1);
    }
    /* bad values change nothing */
    em_grad_scaler *s = em_grad_scaler_new(NULL);
    em_grad_scaler_state st = {.scale = -1, .growth_factor = 2, .backoff_factor = 0.5, .growth_interval = 10};
    assert_int_equal(em_grad_scaler_set_state(s, &st), EM_EINVAL);
    st.scale = 8;
    st.growth_factor = 0.5;
    assert_int_equal(em_grad_scaler_set_state(s, &st), EM_EINVAL);
    assert_true(em_grad_scaler_get_scale(s) == 65536.0);
    em_grad_scaler_free(s);
    /* a disabled scaler has no state, and loading one into it does nothing */
    s = em_grad_scaler_new(&(em_grad_scaler_opts){.version = 1, .enabled = false});
    assert_int_equal(em_grad_scaler_get_state(s, &st), EM_ESTATE);
    em_clear_error();
    st = (em_grad_scaler_state){.scale = 8, .growth_factor = 2, .backoff_factor = 0.5, .growth_interval = 10};
    assert_ok(em_grad_scaler_set_state(s, &st));
    assert_true(em_grad_scaler_get_scale(s) == 1.0);
    em_grad_scaler_free(s);
    assert_ok(em_scope_end());
}

/* ---- _run_scaling_case: a scaled model against a control model --------------------------------------------- */

enum scaling_case { CASE_CLIPPING, CASE_CLIPPING_SEPARATE_UNSCALE, CASE_ACCUMULATION, CASE_MULTIPLE };

typedef struct model {
    em_nn *net;       /* Sequential(Linear(8, 8), Linear(8, 8)) */
    em_nn *net2;      /* CASE_MULTIPLE: a second model with an optimizer of its own */
    em_optimizer *opt, *opt2;
} model;

static em_optimizer *sgd_of(em_nn *net)
{
    em_params *ps = em_nn_parameters(net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 1.0});
    em_params_free(ps);
    return opt;
}

static model model_new(bool two)
{
    model m = {0};
    em_manual_seed(7);
    m.net = EM_NN_SEQUENTIAL(em_nn_linear(8, 8, true), em_nn_linear(8, 8, true));
    m.opt = sgd_of(m.net);
    if (two) {
        m.net2 = EM_NN_SEQUENTIAL(em_nn_linear(8, 8, true), em_nn_linear(8, 8, true));
        m.opt2 = sgd_of(m.net2);
    }
    return m;
}

static void model_free(model *m)
{
    em_optimizer_free(m->opt);
    em_optimizer_free(m->opt2);
    em_nn_free(m->net);
    em_nn_free(m->net2);
}

/* model[1].weight.grad.data.fill_(inf) */
static void inject_inf(em_nn *net)
{
    em_tensor *w = em_nn_get(net, "1.weight");
    assert_nonnull_em(w);
    assert_ok(em_fill_(em_tensor_grad(w), INFINITY));
}

static em_params *params_of(const model *m)
{
    em_params *ps = em_nn_parameters(m->net);
    if (m->net2 != NULL)
        assert_ok(em_params_add_nn(ps, m->net2));
    return ps;
}

/* One run of the case's loop; `scaling` uses the scaler API (torch's try_scaling_api). */
static void run_case(enum scaling_case c, model *m, em_grad_scaler *s, em_tensor *const *data, bool scaling)
{
    const int skip_iter = 2;
    const double max_norm = 0.2;
    for (int i = 0; i < 4; i++) {
        em_scope_begin();
        em_tensor *input = data[2 * i], *target = data[2 * i + 1];
        if (c != CASE_ACCUMULATION) {
            assert_ok(em_optimizer_zero_grad(m->opt));
            if (m->opt2 != NULL)
                assert_ok(em_optimizer_zero_grad(m->opt2));
        }
        em_tensor *loss = em_mse_loss(em_nn_forward(m->net, input), target, EM_REDUCTION_MEAN);
        if (c == CASE_MULTIPLE)
            loss = em_add(loss, em_mse_loss(em_nn_forward(m->net2, input), target, EM_REDUCTION_MEAN));
        if (c == CASE_ACCUMULATION)
            loss = em_div_scalar(loss, 2.0);
        em_params *ps = params_of(m);
        bool enabled = em_grad_scaler_is_enabled(s);
        if (scaling) {
            assert_ok(em_backward(em_grad_scaler_scale(s, loss)));
            switch (c) {
            case CASE_CLIPPING:
                assert_ok(em_clip_grad_norm(ps, max_norm * em_grad_scaler_get_scale(s), 2.0, NULL));
                if (i == skip_iter && enabled)
                    inject_inf(m->net);
                break;
            case CASE_CLIPPING_SEPARATE_UNSCALE:
                if (i == skip_iter && enabled)
                    inject_inf(m->net);
                assert_ok(em_grad_scaler_unscale(s, m->opt));
                assert_ok(em_clip_grad_norm(ps, max_norm, 2.0, NULL));
                break;
            case CASE_MULTIPLE: /* inf in the second model only; the first optimizer unscaled separately */
                if (i == skip_iter && enabled)
                    inject_inf(m->net2);
                assert_ok(em_grad_scaler_unscale(s, m->opt));
                break;
            case CASE_ACCUMULATION:
                break;
            }
            if (c != CASE_ACCUMULATION || (i + 1) % 2 == 0) {
                assert_ok(em_grad_scaler_step(s, m->opt, NULL, NULL));
                if (m->opt2 != NULL)
                    assert_ok(em_grad_scaler_step(s, m->opt2, NULL, NULL));
                assert_ok(em_grad_scaler_update(s));
                if (c == CASE_ACCUMULATION)
                    assert_ok(em_optimizer_zero_grad(m->opt));
            }
        } else {
            assert_ok(em_backward(loss));
            if (c == CASE_CLIPPING || c == CASE_CLIPPING_SEPARATE_UNSCALE)
                assert_ok(em_clip_grad_norm(ps, max_norm, 2.0, NULL));
            if (c == CASE_ACCUMULATION) {
                if ((i + 1) % 2 == 0) {
                    assert_ok(em_optimizer_step(m->opt, NULL));
                    assert_ok(em_optimizer_zero_grad(m->opt));
                }
            } else if (c == CASE_MULTIPLE) { /* only the optimizer that saw the inf skips */
                assert_ok(em_optimizer_step(m->opt, NULL));
                if (!enabled || i != skip_iter)
                    assert_ok(em_optimizer_step(m->opt2, NULL));
            } else if (!enabled || i != skip_iter) {
                assert_ok(em_optimizer_step(m->opt, NULL));
            }
        }
        em_params_free(ps);
        assert_ok(em_scope_end());
    }
}

static void run_scaling_case(enum scaling_case c, int unskipped, int skipped, double atol)
{
    em_scope_begin();
    em_manual_seed(3);
    em_tensor *data[8];
    for (int i = 0; i < 8; i++)
        data[i] = em_randn(EM_SHAPE(8, 8), NULL);
    for (int enabled = 1; enabled >= 0; enabled--) {
        model control = model_new(c == CASE_MULTIPLE), scaled = model_new(c == CASE_MULTIPLE);
        /* a modest initial scale and an unrealistically large growth: errors in growth handling show */
        em_grad_scaler *s = em_grad_scaler_new(&(em_grad_scaler_opts){
            .version = 1, .init_scale = 128.0, .growth_factor = 2.0, .backoff_factor = 0.5, .growth_interval = 1,
            .enabled = enabled});
        run_case(c, &control, s, data, false);
        run_case(c, &scaled, s, data, true);
        if (enabled)
            assert_true(em_grad_scaler_get_scale(s) == 128.0 * pow(2.0, unskipped) * pow(0.5, skipped));
        else
            assert_true(em_grad_scaler_get_scale(s) == 1.0);
        em_params *pc = params_of(&control), *psc = params_of(&scaled);
        for (size_t k = 0; k < em_params_size(pc); k++) {
            em_tensor *a = em_params_get(pc, k), *b = em_params_get(psc, k);
            int64_t n = em_tensor_numel(a);
            float va[64], vb[64];
            assert_true(n <= 64);
            helper_values(a, va, (size_t)n);
            helper_values(b, vb, (size_t)n);
            for (int64_t j = 0; j < n; j++)
                assert_close(vb[j], va[j], 1e-5, atol);
            /* and the gradients of the last iteration (unscaled on the scaled side) */
            em_tensor *ga = em_tensor_grad(a), *gb = em_tensor_grad(b);
            assert_true((ga == NULL) == (gb == NULL));
            if (ga != NULL) {
                helper_values(ga, va, (size_t)n);
                helper_values(gb, vb, (size_t)n);
                for (int64_t j = 0; j < n; j++)
                    assert_close(vb[j], va[j], 1e-5, atol);
            }
        }
        em_params_free(pc);
        em_params_free(psc);
        em_grad_scaler_free(s);
        model_free(&control);
        model_free(&scaled);
    }
    assert_ok(em_scope_end());
}

static void test_scaling_clipping(void **state)
{
    (void)state;
    run_scaling_case(CASE_CLIPPING, 3, 1, 1e-5);
}

static void test_scaling_clipping_separate_unscale(void **state)
{
    (void)state;
    run_scaling_case(CASE_CLIPPING_SEPARATE_UNSCALE, 3, 1, 1e-5);
}

static void test_scaling_accumulation(void **state)
{
    (void)state;
    run_scaling_case(CASE_ACCUMULATION, 2, 0, 1e-7);
}

static void test_scaling_multiple(void **state)
{
    (void)state;
    run_scaling_case(CASE_MULTIPLE, 3, 1, 1e-7);
}

/* ---- an optimizer that unscales itself (torch's _step_supports_amp_scaling) ------------------------------ */

typedef struct fused_seen {
    int calls;
    double grad_scale[4];
    bool found_inf[4];
} fused_seen;

static em_status fused_step(em_optimizer *self, const em_closure *closure)
{
    (void)closure;
    fused_seen *f = em_optimizer_state(self);
    double gs = -1;
    bool inf = false;
    em_status s = em_grad_scaler_step_info(self, &gs, &inf);
    if (s != EM_OK)
        return s;
    f->grad_scale[f->calls] = gs;
    f->found_inf[f->calls] = inf;
    f->calls++;
    return EM_OK;
}

static const em_optimizer_ops fused_ops = {
    .version = EM_OPTIMIZER_OPS_VERSION,
    .name = "FusedTest",
    .step = fused_step,
    .destroy = free,
    .step_supports_amp_scaling = true,
};

static void test_fused_optimizer(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *w = em_zeros(EM_SHAPE(2), &(em_tensor_opts){.requires_grad = true});
    em_params *ps = em_params_new();
    assert_ok(em_params_add(ps, w));
    fused_seen *seen = calloc(1, sizeof *seen);
    em_optimizer *opt = em_optimizer_new(&fused_ops, ps, 0.1, seen);
    assert_nonnull_em(opt);
    em_params_free(ps);
    em_grad_scaler *s = em_grad_scaler_new(&(em_grad_scaler_opts){
        .version = 1, .init_scale = 8.0, .growth_factor = 2.0, .backoff_factor = 0.5, .growth_interval = 100,
        .enabled = true});
    first_scale(s);
    /* not unscaled: the optimizer gets the scale; the gradients are left as they are */
    set_grad(w, (const float[]){8, 8}, 2);
    bool stepped = false;
    assert_ok(em_grad_scaler_step(s, opt, NULL, &stepped));
    assert_true(stepped);
    float g[2];
    helper_values(em_tensor_grad(w), g, 2);
    assert_true(g[0] == 8.0f);
    assert_ok(em_grad_scaler_update(s));
    /* an inf gradient: the step still runs, told found_inf; update backs off */
    set_grad(w, (const float[]){INFINITY, 8}, 2);
    assert_ok(em_grad_scaler_step(s, opt, NULL, &stepped));
    assert_ok(em_grad_scaler_update(s));
    assert_true(em_grad_scaler_get_scale(s) == 4.0);
    /* unscaled before: grad_scale is None (0) */
    set_grad(w, (const float[]){4, 4}, 2);
    assert_ok(em_grad_scaler_unscale(s, opt));
    assert_ok(em_grad_scaler_step(s, opt, NULL, &stepped));
    assert_ok(em_grad_scaler_update(s));
    assert_int_equal(seen->calls, 3);
    assert_true(seen->grad_scale[0] == 8.0 && !seen->found_inf[0]);
    assert_true(seen->grad_scale[1] == 8.0 && seen->found_inf[1]);
    assert_true(seen->grad_scale[2] == 0.0 && !seen->found_inf[2]);
    /* outside such a step there is nothing to read */
    assert_int_equal(em_grad_scaler_step_info(opt, NULL, NULL), EM_ESTATE);
    em_clear_error();
    em_grad_scaler_free(s);
    em_optimizer_free(opt);
    assert_ok(em_scope_end());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(test_defaults),
        TEST(test_constructor_checks),
        TEST(test_scale),
        TEST(test_unscale_finite_inf_nan),
        TEST(test_update_scale),
        TEST(test_call_order),
        TEST(test_state),
        TEST(test_scaling_clipping),
        TEST(test_scaling_clipping_separate_unscale),
        TEST(test_scaling_accumulation),
        TEST(test_scaling_multiple),
        TEST(test_fused_optimizer),
    };
    return cmocka_run_group_tests_name("grad_scaler", tests, NULL, NULL);
}
