/* test_optim.c: optimizers (torch.optim), optimizers written in C, closures, zero_grad, clipping.
 *
 * Expected numbers are worked out by hand in the comments, computed from the update rule in double
 * (adam_ref), or recorded from Python's torch 1.13.1 (the snippet is beside each table).
 */
#include "helpers.h"

#include <stdlib.h>

/* ---- fixtures --------------------------------------------------------------------------------------- */

/* A leaf parameter with requires_grad, owned by the test (created outside any scope). */
static em_tensor *param(const float *v, int64_t n)
{
    em_tensor *p = em_tensor_from(v, EM_F32, (const int64_t[]){n}, 1, &(em_tensor_opts){.requires_grad = true});
    assert_nonnull_em(p);
    return p;
}

static em_params *params_of(em_tensor *const *ps, size_t n)
{
    em_params *l = em_params_new();
    for (size_t i = 0; i < n; i++)
        assert_ok(em_params_add(l, ps[i]));
    return l;
}

/* loss = sum(p * c): the gradient is exactly c, whatever p is. */
static void backward_linear(em_tensor *p, const float *c, int64_t n)
{
    em_scope_begin();
    em_tensor *ct = em_tensor_from(c, EM_F32, (const int64_t[]){n}, 1, NULL);
    assert_ok(em_backward(em_sum(em_mul(p, ct))));
    assert_ok(em_scope_end());
}

/* loss = sum(p * p * [1, 2, 3]) (torch: torch.sum(torch.mul(torch.mul(p, p), w))), grad = 2 p w. */
static void backward_weighted_square(em_tensor *p)
{
    em_scope_begin();
    em_tensor *w = T(EM_SHAPE(3), 1, 2, 3);
    assert_ok(em_backward(em_sum(em_mul(em_mul(p, p), w))));
    assert_ok(em_scope_end());
}

static void values(const em_tensor *t, float *out, size_t n)
{
    helper_values(t, out, n);
}

static double item(const em_tensor *t)
{
    float v;
    helper_values(t, &v, 1);
    return v;
}

/* The gradient of p (NULL for None) copied out; returns false for None. */
static bool grad_values(const em_tensor *p, float *out, size_t n)
{
    em_scope_begin();
    em_tensor *g = em_tensor_grad(p);
    if (g != NULL)
        helper_values(g, out, n);
    assert_ok(em_scope_end());
    return g != NULL;
}

/* torch.optim.Adam / AdamW on one scalar, in double, from the update rule of torch 1.13:
 *   AdamW: p *= 1 - lr*wd;  Adam: g += wd*p
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  vmax = max(vmax, v) (amsgrad)
 *   p -= lr/(1-b1^t) * m / (sqrt(v or vmax)/sqrt(1-b2^t) + eps) */
static double adam_ref(double p, const double *g, int steps, double lr, double b1, double b2, double eps, double wd,
                       bool amsgrad, bool decoupled)
{
    double m = 0, v = 0, vmax = 0;
    for (int t = 1; t <= steps; t++) {
        double grad = g[t - 1];
        if (decoupled)
            p *= 1 - lr * wd;
        else
            grad += wd * p;
        m = b1 * m + (1 - b1) * grad;
        v = b2 * v + (1 - b2) * grad * grad;
        vmax = v > vmax ? v : vmax;
        double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
        double denom = sqrt(amsgrad ? vmax : v) / sqrt(bc2) + eps;
        p -= lr / bc1 * m / denom;
    }
    return p;
}

/* ---- SGD ------------------------------------------------------------------------------------------------ */

static void test_optim__sgd_momentum_matches_torch_update_rule(void **state)
{
    (void)state;
    em_tensor *p = param((const float[]){1.0f}, 1);
    em_params *ps = params_of(&p, 1);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1, .momentum = 0.9});
    assert_nonnull_em(opt);
    em_params_free(ps); /* the optimizer keeps its own references */
    assert_string_equal(em_optimizer_name(opt), "SGD");
    assert_ptr_equal(em_optimizer_inner(opt), opt);

    for (int step = 0; step < 2; step++) { /* loss = 2p, so grad = 2 every step */
        em_scope_begin();
        assert_ok(em_optimizer_zero_grad(opt));
        assert_ok(em_backward(em_mul_scalar(p, 2.0)));
        assert_ok(em_optimizer_step(opt, NULL));
        assert_ok(em_scope_end());
    }
    /* buf1 = 2, p1 = 1 - 0.1*2 = 0.8; buf2 = 0.9*2 + 2 = 3.8, p2 = 0.8 - 0.38 = 0.42 */
    assert_close_rel(item(p), 0.42, 1e-6);
    assert_int_equal(em_optimizer_step_count(opt), 2);
    em_optimizer_free(opt);
    em_tensor_free(p);
}

static void sgd_two_steps(const em_sgd_opts *o, double want1, double want2)
{
    em_tensor *p = param((const float[]){1.0f}, 1);
    em_params *ps = params_of(&p, 1);
    em_optimizer *opt = em_sgd(ps, o);
    assert_nonnull_em(opt);
    em_params_free(ps);
    backward_linear(p, (const float[]){2.0f}, 1);
    assert_ok(em_optimizer_step(opt, NULL));
    assert_close_rel(item(p), want1, 1e-6);
    assert_ok(em_optimizer_zero_grad(opt));
    backward_linear(p, (const float[]){2.0f}, 1);
    assert_ok(em_optimizer_step(opt, NULL));
    assert_close_rel(item(p), want2, 1e-6);
    em_optimizer_free(opt);
    em_tensor_free(p);
}

static void test_optim__sgd_nesterov_weight_decay_dampening(void **state)
{
    (void)state;
    /* nesterov, grad 2: buf1 = 2, d = 2 + 0.9*2 = 3.8, p1 = 1 - 0.38 = 0.62;
     * buf2 = 0.9*2 + 2 = 3.8, d = 2 + 0.9*3.8 = 5.42, p2 = 0.62 - 0.542 = 0.078 */
    sgd_two_steps(&(em_sgd_opts){.lr = 0.1, .momentum = 0.9, .nesterov = true}, 0.62, 0.078);
    /* weight_decay 0.1: d1 = 2 + 0.1*1 = 2.1, p1 = 0.79; d2 = 2 + 0.079 = 2.079, p2 = 0.79 - 0.2079 = 0.5821 */
    sgd_two_steps(&(em_sgd_opts){.lr = 0.1, .weight_decay = 0.1}, 0.79, 0.5821);
    /* dampening 0.5 (not applied to the first buffer, as torch): buf1 = 2, p1 = 0.8;
     * buf2 = 0.9*2 + 0.5*2 = 2.8, p2 = 0.8 - 0.28 = 0.52 */
    sgd_two_steps(&(em_sgd_opts){.lr = 0.1, .momentum = 0.9, .dampening = 0.5}, 0.8, 0.52);
}

/* ---- Adam, AdamW ---------------------------------------------------------------------------------------- */

static double adam_run(em_optimizer *(*ctor)(const em_params *, const em_adam_opts *), const em_adam_opts *o,
                       const double *g, int steps)
{
    em_tensor *p = param((const float[]){1.0f}, 1);
    em_params *ps = params_of(&p, 1);
    em_optimizer *opt = ctor(ps, o);
    assert_nonnull_em(opt);
    em_params_free(ps);
    for (int t = 0; t < steps; t++) {
        assert_ok(em_optimizer_zero_grad(opt));
        backward_linear(p, (const float[]){(float)g[t]}, 1);
        assert_ok(em_optimizer_step(opt, NULL));
    }
    double v = item(p);
    em_optimizer_free(opt);
    em_tensor_free(p);
    return v;
}

static void test_optim__adam_and_adamw_match_the_formulas(void **state)
{
    (void)state;
    const double g[3] = {0.5, 2.0, 0.1};
    em_adam_opts o = EM_ADAM_OPTS_INIT;
    o.lr = 0.1;
    /* one Adam step, grad 0.5: m = 0.05, v = 0.00025, m^ = 0.5, v^ = 0.25 (bias correction),
     * p = 1 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.9 */
    assert_close_rel(adam_run(em_adam, &o, g, 1), 0.9, 1e-6);
    /* second step, grad 2: m = 0.245, v = 0.00424975, m^ = 0.245/0.19, v^ = 0.00424975/0.001999,
     * p = 0.9 - 0.1 * 1.2894737 / 1.4580609 = 0.8115625 */
    assert_close_rel(adam_run(em_adam, &o, g, 2), 0.8115625, 1e-6);
    assert_close_rel(adam_run(em_adam, &o, g, 3), adam_ref(1, g, 3, 0.1, 0.9, 0.999, 1e-8, 0, false, false), 1e-6);

    /* AdamW decays the weight itself: p = 1*(1 - 0.1*0.1) - 0.1*0.5/(0.5+1e-8) = 0.89;
     * Adam's weight_decay adds to the gradient instead: g = 0.5 + 0.1 = 0.6, p = 1 - 0.1 = 0.9 */
    em_adam_opts w = EM_ADAMW_OPTS_INIT;
    w.lr = 0.1;
    w.weight_decay = 0.1;
    assert_close_rel(adam_run(em_adamw, &w, g, 1), 0.89, 1e-6);
    assert_close_rel(adam_run(em_adamw, &w, g, 3), adam_ref(1, g, 3, 0.1, 0.9, 0.999, 1e-8, 0.1, false, true), 1e-6);
    em_adam_opts l2 = o;
    l2.weight_decay = 0.1;
    assert_close_rel(adam_run(em_adam, &l2, g, 1), 0.9, 1e-6);
    assert_close_rel(adam_run(em_adam, &l2, g, 3), adam_ref(1, g, 3, 0.1, 0.9, 0.999, 1e-8, 0.1, false, false), 1e-6);

    /* amsgrad, beta2 0.9: grads 2 then 0.1 make v shrink (0.4, then 0.9*0.4 + 0.1*0.01 = 0.361),
     * max_exp_avg_sq keeps 0.4: step 2 divides by sqrt(0.4/0.19) instead of sqrt(0.361/0.19) */
    const double ga[3] = {2.0, 0.1, 0.1};
    em_adam_opts a = o, plain = o;
    a.amsgrad = true;
    a.beta2 = plain.beta2 = 0.9;
    double with = adam_run(em_adam, &a, ga, 3), without = adam_run(em_adam, &plain, ga, 3);
    assert_close_rel(with, adam_ref(1, ga, 3, 0.1, 0.9, 0.9, 1e-8, 0, true, false), 1e-6);
    assert_close_rel(without, adam_ref(1, ga, 3, 0.1, 0.9, 0.9, 1e-8, 0, false, false), 1e-6);
    assert_true(fabs(with - without) > 1e-3);
    /* the defaults: NULL opts = EM_ADAM_OPTS_INIT (lr 1e-3) */
    assert_close_rel(adam_run(em_adam, NULL, g, 1), 0.999, 1e-6);
    assert_close_rel(adam_run(em_adamw, NULL, g, 1), 1 * (1 - 1e-3 * 1e-2) - 1e-3, 1e-6);
}

/* ---- recorded from torch 1.13.1 --------------------------------------------------------------------------
 * p = torch.tensor([1.0, -2.0, 0.5], requires_grad=True); w = torch.tensor([1.0, 2.0, 3.0])
 * 3 x { opt.zero_grad(); torch.sum(torch.mul(torch.mul(p, p), w)).backward(); opt.step() } */

static void run_recorded(em_optimizer *opt, em_tensor *p, const float want[3][3])
{
    for (int step = 0; step < 3; step++) {
        assert_ok(em_optimizer_zero_grad(opt));
        backward_weighted_square(p);
        assert_ok(em_optimizer_step(opt, NULL));
        float got[3];
        values(p, got, 3);
        for (int i = 0; i < 3; i++)
            assert_close(got[i], want[step][i], 0, 0); /* bit for bit */
    }
}

static void recorded_case(em_optimizer *(*make)(const em_params *), const float want[3][3])
{
    em_tensor *p = param((const float[]){1.0f, -2.0f, 0.5f}, 3);
    em_params *ps = params_of(&p, 1);
    em_optimizer *opt = make(ps);
    assert_nonnull_em(opt);
    em_params_free(ps);
    run_recorded(opt, p, want);
    em_optimizer_free(opt);
    em_tensor_free(p);
}

/* torch.optim.RMSprop([p], lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.1, momentum=0.5, centered=True) */
static em_optimizer *make_rmsprop(const em_params *ps)
{
    em_rmsprop_opts o = EM_RMSPROP_OPTS_INIT;
    o.lr = 0.01;
    o.alpha = 0.9;
    o.weight_decay = 0.1;
    o.momentum = 0.5;
    o.centered = true;
    return em_rmsprop(ps, &o);
}

/* torch.optim.Adagrad([p], lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1) */
static em_optimizer *make_adagrad(const em_params *ps)
{
    em_adagrad_opts o = EM_ADAGRAD_OPTS_INIT;
    o.lr = 0.1;
    o.lr_decay = 0.01;
    o.weight_decay = 0.1;
    o.initial_accumulator_value = 0.1;
    return em_adagrad(ps, &o);
}

/* torch.optim.Adam([p], lr=0.1, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.1, amsgrad=True) */
static em_optimizer *make_adam_amsgrad(const em_params *ps)
{
    em_adam_opts o = EM_ADAM_OPTS_INIT;
    o.lr = 0.1;
    o.beta1 = 0.8;
    o.beta2 = 0.9;
    o.weight_decay = 0.1;
    o.amsgrad = true;
    return em_adam(ps, &o);
}

/* torch.optim.AdamW([p], lr=0.1, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.1) */
static em_optimizer *make_adamw(const em_params *ps)
{
    em_adam_opts o = EM_ADAMW_OPTS_INIT;
    o.lr = 0.1;
    o.beta1 = 0.8;
    o.beta2 = 0.9;
    o.weight_decay = 0.1;
    return em_adamw(ps, &o);
}

static void test_optim__rmsprop_centered_matches_torch(void **state)
{
    (void)state;
    static const float want[3][3] = {{0.966666639f, -1.9666667f, 0.466666669f},
                                     {0.92492342f, -1.92471349f, 0.425361693f},
                                     {0.882418334f, -1.88166022f, 0.384029657f}};
    recorded_case(make_rmsprop, want);
}

static void test_optim__adagrad_matches_torch(void **state)
{
    (void)state;
    static const float want[3][3] = {{0.901114881f, -1.90007424f, 0.400533199f},
                                     {0.835246325f, -1.83190644f, 0.33883363f},
                                     {0.783788085f, -1.7776866f, 0.293114156f}};
    recorded_case(make_adagrad, want);
}

static void test_optim__adam_amsgrad_and_adamw_match_torch(void **state)
{
    (void)state;
    static const float adam[3][3] = {{0.899999976f, -1.89999998f, 0.400000006f},
                                     {0.800446808f, -1.80018294f, 0.30126664f},
                                     {0.701719224f, -1.70068336f, 0.205230027f}};
    static const float adamw[3][3] = {{0.889999986f, -1.88f, 0.395000011f},
                                      {0.78161031f, -1.76142883f, 0.292423248f},
                                      {0.675249696f, -1.64444137f, 0.19380188f}};
    recorded_case(make_adam_amsgrad, adam);
    recorded_case(make_adamw, adamw);
}

/* ---- parameter groups and hyper-parameters --------------------------------------------------------------- */

static void test_optim__param_groups_with_different_lr(void **state)
{
    (void)state;
    em_tensor *p1 = param((const float[]){1.0f}, 1);
    em_tensor *p2 = param((const float[]){1.0f}, 1);
    em_params *g1 = params_of(&p1, 1), *g2 = params_of(&p2, 1);
    em_optimizer *opt = em_sgd(g1, &(em_sgd_opts){.lr = 0.1, .momentum = 0.9});
    assert_nonnull_em(opt);
    assert_ok(em_optimizer_set_lr(opt, 0, 0.5));
    assert_ok(em_optimizer_add_param_group(opt, g2));
    assert_int_equal(em_optimizer_num_groups(opt), 2);
    /* the new group starts from the constructor's defaults, not from group 0's current values */
    assert_close_rel(em_optimizer_lr(opt, 0), 0.5, 0);
    assert_close_rel(em_optimizer_lr(opt, 1), 0.1, 0);
    double m = 0;
    assert_ok(em_optimizer_get(opt, 1, "momentum", &m));
    assert_close_rel(m, 0.9, 0);
    assert_ok(em_optimizer_set(opt, 1, "lr", 0.01));
    assert_close_rel(em_optimizer_lr(opt, 1), 0.01, 0);
    assert_close_rel(em_optimizer_lr(opt, 0), 0.5, 0);
    /* the group's parameters are the ones given */
    const em_params *gp = em_optimizer_group_params(opt, 1);
    assert_int_equal(em_params_size(gp), 1);
    em_scope_begin();
    assert_int_equal(em_tensor_numel(em_params_get(gp, 0)), 1);
    assert_ok(em_scope_end());
    assert_null(em_optimizer_group_params(opt, 2));
    assert_error_contains("group 2 out of range");
    em_clear_error();

    /* a parameter already in a group */
    assert_int_equal(em_optimizer_add_param_group(opt, g1), EM_EINVAL);
    assert_error_contains("some parameters appear in more than one parameter group");
    em_clear_error();
    assert_int_equal(em_optimizer_num_groups(opt), 2);

    /* grad 2 for both: p1 = 1 - 0.5*2 = 0, p2 = 1 - 0.01*2 = 0.98 */
    backward_linear(p1, (const float[]){2.0f}, 1);
    backward_linear(p2, (const float[]){2.0f}, 1);
    assert_ok(em_optimizer_step(opt, NULL));
    assert_close(item(p1), 0.0, 0, 1e-7);
    assert_close_rel(item(p2), 0.98, 1e-6);

    em_optimizer_free(opt);
    em_params_free(g1);
    em_params_free(g2);
    em_tensor_free(p1);
    em_tensor_free(p2);
}

static void test_optim__get_set_momentum_and_beta1(void **state)
{
    (void)state;
    em_tensor *p = param((const float[]){1.0f}, 1);
    em_params *ps = params_of(&p, 1);
    em_optimizer *sgd = em_sgd(ps, &(em_sgd_opts){.lr = 0.1, .momentum = 0.9});
    double v = -1;
    assert_ok(em_optimizer_get(sgd, 0, "nesterov", &v));
    assert_close_rel(v, 0, 0);
    assert_ok(em_optimizer_get(sgd, 0, "dampening", &v));
    assert_close_rel(v, 0, 0);
    /* step 1 with momentum 0.9: buf = 2, p = 0.8; then momentum 0.5: buf = 0.5*2 + 2 = 3, p = 0.5 */
    backward_linear(p, (const float[]){2.0f}, 1);
    assert_ok(em_optimizer_step(sgd, NULL));
    assert_ok(em_optimizer_set(sgd, 0, "momentum", 0.5));
    assert_ok(em_optimizer_get(sgd, 0, "momentum", &v));
    assert_close_rel(v, 0.5, 0);
    assert_ok(em_optimizer_zero_grad(sgd));
    backward_linear(p, (const float[]){2.0f}, 1);
    assert_ok(em_optimizer_step(sgd, NULL));
    assert_close_rel(item(p), 0.5, 1e-6);
    /* nesterov on: needs momentum > 0 and dampening 0 (it has them); off again */
    assert_ok(em_optimizer_set(sgd, 0, "nesterov", 1));
    assert_ok(em_optimizer_get(sgd, 0, "nesterov", &v));
    assert_close_rel(v, 1, 0);
    assert_int_equal(em_optimizer_set(sgd, 0, "dampening", 0.1), EM_EINVAL);
    assert_error_contains("Nesterov momentum requires a momentum and zero dampening");
    em_clear_error();
    assert_ok(em_optimizer_get(sgd, 0, "dampening", &v));
    assert_close_rel(v, 0, 0); /* the rejected value was not kept */
    em_optimizer_free(sgd);

    em_optimizer *adam = em_adam(ps, NULL);
    assert_ok(em_optimizer_get(adam, 0, "beta1", &v));
    assert_close_rel(v, 0.9, 0);
    assert_ok(em_optimizer_set(adam, 0, "beta1", 0.85));
    assert_ok(em_optimizer_get(adam, 0, "beta1", &v));
    assert_close_rel(v, 0.85, 0);
    assert_ok(em_optimizer_get(adam, 0, "beta2", &v));
    assert_close_rel(v, 0.999, 0);
    assert_ok(em_optimizer_get(adam, 0, "amsgrad", &v));
    assert_close_rel(v, 0, 0);
    assert_ok(em_optimizer_get(adam, 0, "eps", &v));
    assert_close_rel(v, 1e-8, 0);
    assert_int_equal(em_optimizer_set(adam, 0, "beta1", 1.5), EM_EINVAL);
    assert_string_equal(em_last_error(), "em_optimizer_set: Invalid beta parameter at index 0: 1.5");
    em_clear_error();
    /* lr assignments are not checked, as torch's param_group['lr'] = -1 is not */
    assert_ok(em_optimizer_set(adam, 0, "lr", -1));
    assert_ok(em_optimizer_set(adam, 0, "lr", 1e-3));
    assert_close_rel(em_optimizer_lr(adam, 0), 1e-3, 0);
    assert_int_equal(em_optimizer_get(adam, 0, "momentum", &v), EM_EINVAL);
    assert_string_equal(em_last_error(), "em_optimizer_get: Adam has no hyper-parameter \"momentum\"");
    em_clear_error();
    em_optimizer_free(adam);

    /* every name of RMSprop and Adagrad reads back what the options gave */
    em_optimizer *rms = make_rmsprop(ps);
    const char *rn[] = {"lr", "alpha", "eps", "weight_decay", "momentum", "centered"};
    const double rv[] = {0.01, 0.9, 1e-8, 0.1, 0.5, 1};
    for (size_t i = 0; i < 6; i++) {
        assert_ok(em_optimizer_get(rms, 0, rn[i], &v));
        assert_close_rel(v, rv[i], 0);
    }
    em_optimizer_free(rms);
    em_optimizer *ada = make_adagrad(ps);
    const char *an[] = {"lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"};
    const double av[] = {0.1, 0.01, 0.1, 0.1, 1e-10};
    for (size_t i = 0; i < 5; i++) {
        assert_ok(em_optimizer_get(ada, 0, an[i], &v));
        assert_close_rel(v, av[i], 0);
    }
    em_optimizer_free(ada);
    em_params_free(ps);
    em_tensor_free(p);
}

static void test_optim__adagrad_added_group_steps(void **state)
{
    (void)state;
    /* libtorch's Adagrad fills its state in the constructor only; a group added later still steps:
     * sum = 0 + 2^2, p = 1 - 0.01 * 2 / (sqrt(4) + 1e-10) = 0.99 */
    em_tensor *p1 = param((const float[]){1.0f}, 1), *p2 = param((const float[]){1.0f}, 1);
    em_params *g1 = params_of(&p1, 1), *g2 = params_of(&p2, 1);
    em_optimizer *opt = em_adagrad(g1, NULL);
    assert_ok(em_optimizer_add_param_group(opt, g2));
    backward_linear(p1, (const float[]){2.0f}, 1);
    backward_linear(p2, (const float[]){2.0f}, 1);
    assert_ok(em_optimizer_step(opt, NULL));
    assert_close_rel(item(p1), 0.99, 1e-6);
    assert_close_rel(item(p2), 0.99, 1e-6);
    em_optimizer_free(opt);
    em_params_free(g1);
    em_params_free(g2);
    em_tensor_free(p1);
    em_tensor_free(p2);
}

/* ---- zero_grad ---------------------------------------------------------------------------------------------- */

static void test_optim__zero_grad_fills_zeros_or_sets_none(void **state)
{
    (void)state;
    em_tensor *p = param((const float[]){1.0f, 2.0f}, 2);
    em_tensor *q = param((const float[]){3.0f}, 1); /* never gets a gradient */
    em_tensor *both[2] = {p, q};
    em_params *ps = params_of(both, 2);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    float g[2];

    /* The default of zero_grad() follows the libtorch linked: torch 1.13's optimizer.zero_grad() has
     * set_to_none=False, 2.x's set_to_none=True. Each behaviour is asserted where it is the default. */
    assert_int_equal(em_zero_grad_sets_to_none(), atoi(em_torch_version()) >= 2);
    backward_linear(p, (const float[]){2.0f, 3.0f}, 2);
    assert_true(grad_values(p, g, 2));
    assert_close_rel(g[1], 3, 0);
    assert_ok(em_optimizer_zero_grad(opt));
    if (!em_zero_grad_sets_to_none()) { /* 1.13's default: zero-filled */
        assert_true(grad_values(p, g, 2));
        assert_close_rel(g[0], 0, 0);
        assert_close_rel(g[1], 0, 0);
    } else { /* 2.x's default: em_tensor_grad returns NULL */
        assert_false(grad_values(p, g, 2));
        assert_int_equal(em_last_status(), EM_OK);
    }
    assert_false(grad_values(q, g, 1)); /* None stays None */

    backward_linear(p, (const float[]){2.0f, 3.0f}, 2);
    assert_ok(em_optimizer_zero_grad_ex(opt, false));
    assert_true(grad_values(p, g, 2));
    assert_close_rel(g[0], 0, 0);
    assert_ok(em_optimizer_zero_grad_ex(opt, true)); /* set_to_none: em_tensor_grad returns NULL */
    assert_false(grad_values(p, g, 2));
    assert_int_equal(em_last_status(), EM_OK);
    /* a step with no gradients changes nothing */
    assert_ok(em_optimizer_step(opt, NULL));
    float pv[2];
    values(p, pv, 2);
    assert_close_rel(pv[0], 1, 0);

    em_optimizer_free(opt);
    em_tensor_free(p);
    em_tensor_free(q);
}

/* ---- an optimizer written in C ---------------------------------------------------------------------------- */

struct c_sgd_state {
    int *destroyed;
};

static void c_sgd_destroy(void *state)
{
    struct c_sgd_state *s = state;
    (*s->destroyed)++;
    free(s);
}

/* plain SGD: p -= lr * grad, for every group */
static em_status c_sgd_step(em_optimizer *self, const em_closure *closure)
{
    if (closure != NULL) {
        em_status s = em_closure_call(closure, NULL);
        if (s != EM_OK)
            return s;
    }
    em_status status = EM_OK;
    em_scope_begin();
    em_no_grad_begin();
    for (size_t g = 0; g < em_optimizer_num_groups(self) && status == EM_OK; g++) {
        double lr = em_optimizer_lr(self, g);
        const em_params *ps = em_optimizer_group_params(self, g);
        for (size_t i = 0; i < em_params_size(ps) && status == EM_OK; i++) {
            em_tensor *p = em_params_get(ps, i);
            em_tensor *grad = em_tensor_grad(p);
            if (grad != NULL)
                status = em_add_(p, grad, -lr);
        }
    }
    em_no_grad_end();
    em_scope_end();
    return status;
}

static const em_optimizer_ops c_sgd_ops = {
    .version = EM_OPTIMIZER_OPS_VERSION, .name = "MySGD", .step = c_sgd_step, .destroy = c_sgd_destroy};

static void test_optim__c_optimizer_matches_em_sgd(void **state)
{
    (void)state;
    int destroyed = 0;
    em_tensor *a = param((const float[]){1.0f, -2.0f, 0.5f}, 3);
    em_tensor *b = param((const float[]){1.0f, -2.0f, 0.5f}, 3);
    em_params *pa = params_of(&a, 1), *pb = params_of(&b, 1);
    struct c_sgd_state *st = malloc(sizeof *st);
    st->destroyed = &destroyed;
    em_optimizer *mine = em_optimizer_new(&c_sgd_ops, pa, 0.05, st);
    assert_nonnull_em(mine);
    em_optimizer *ref = em_sgd(pb, &(em_sgd_opts){.lr = 0.05});
    assert_string_equal(em_optimizer_name(mine), "MySGD");
    assert_ptr_equal(em_optimizer_state(mine), st);
    assert_null(em_optimizer_state(ref));

    for (int step = 0; step < 3; step++) {
        assert_ok(em_optimizer_zero_grad(mine));
        assert_ok(em_optimizer_zero_grad(ref));
        backward_weighted_square(a);
        backward_weighted_square(b);
        assert_ok(em_optimizer_step(mine, NULL));
        assert_ok(em_optimizer_step(ref, NULL));
        float va[3], vb[3];
        values(a, va, 3);
        values(b, vb, 3);
        for (int i = 0; i < 3; i++)
            assert_true(va[i] == vb[i]); /* the same ops in the same order: bit for bit */
    }
    /* grad = 2 p w, so p *= 1 - 0.05*2*w each step: [1*0.9^3, -2*0.8^3, 0.5*0.7^3] */
    float va[3];
    values(a, va, 3);
    assert_close_rel(va[0], 0.729, 1e-6);
    assert_close_rel(va[1], -1.024, 1e-6);
    assert_close_rel(va[2], 0.1715, 1e-6);
    assert_int_equal(em_optimizer_step_count(mine), 3);

    /* any hyper-parameter can be created and read; a later group starts from the defaults */
    double v = 0;
    assert_int_equal(em_optimizer_get(mine, 0, "momentum", &v), EM_EINVAL);
    assert_string_equal(em_last_error(), "em_optimizer_get: MySGD has no hyper-parameter \"momentum\"");
    em_clear_error();
    assert_ok(em_optimizer_set(mine, 0, "momentum", 0.9));
    assert_ok(em_optimizer_get(mine, 0, "momentum", &v));
    assert_close_rel(v, 0.9, 0);
    assert_ok(em_optimizer_set_lr(mine, 0, 0.2));
    em_tensor *c = param((const float[]){1.0f}, 1);
    em_params *pc = params_of(&c, 1);
    assert_ok(em_optimizer_add_param_group(mine, pc));
    assert_close_rel(em_optimizer_lr(mine, 1), 0.05, 0);
    assert_ok(em_optimizer_get(mine, 1, "momentum", &v));
    assert_close_rel(v, 0.9, 0);
    /* as torch's param_group['lr'] = -1: assignments are not checked (schedulers may go below 0) */
    assert_ok(em_optimizer_set_lr(mine, 1, -1));
    assert_close_rel(em_optimizer_lr(mine, 1), -1, 0);
    assert_int_equal(em_optimizer_set(mine, 1, "momentum", -1), EM_OK); /* C optimizers: any value */
    em_clear_error();

    em_optimizer_free(mine);
    assert_int_equal(destroyed, 1);
    em_optimizer_free(ref);
    em_params_free(pa);
    em_params_free(pb);
    em_params_free(pc);
    em_tensor_free(a);
    em_tensor_free(b);
    em_tensor_free(c);
}

static void test_optim__c_optimizer_bad_ops_free_state(void **state)
{
    (void)state;
    int destroyed = 0;
    em_tensor *a = param((const float[]){1.0f}, 1);
    em_params *pa = params_of(&a, 1);
    em_optimizer_ops v0 = c_sgd_ops;
    v0.version = 0;
    struct c_sgd_state *st = malloc(sizeof *st);
    st->destroyed = &destroyed;
    assert_null(em_optimizer_new(&v0, pa, 0.1, st));
    assert_error_contains("ops->version is 0");
    assert_int_equal(destroyed, 1); /* ownership of the state was taken, also on failure */
    em_clear_error();
    em_params *empty = em_params_new();
    st = malloc(sizeof *st);
    st->destroyed = &destroyed;
    assert_null(em_optimizer_new(&c_sgd_ops, empty, 0.1, st));
    assert_error_contains("empty parameter list");
    assert_int_equal(destroyed, 2);
    em_clear_error();
    em_params_free(empty);
    em_params_free(pa);
    em_tensor_free(a);
}

/* ---- closures ---------------------------------------------------------------------------------------------- */

enum closure_mode { CLOSURE_OK, CLOSURE_NULL, CLOSURE_ERROR };

struct closure_ctx {
    em_optimizer *opt;
    em_tensor *p;
    enum closure_mode mode;
    int calls;
    bool grad_enabled;
    int depth;
};

/* loss = sum(p * [1, 2]): zero_grad, backward, return the loss (owned by the optimizer's scope) */
static em_tensor *closure_fn(void *ctx)
{
    struct closure_ctx *c = ctx;
    c->calls++;
    c->grad_enabled = em_is_grad_enabled();
    c->depth = em_scope_depth();
    if (c->mode == CLOSURE_NULL)
        return NULL;
    if (c->mode == CLOSURE_ERROR) {
        em_error_set(EM_EUSER, "training_step: boom");
        return NULL;
    }
    em_optimizer_zero_grad(c->opt);
    em_tensor *loss = em_sum(em_mul(c->p, T(EM_SHAPE(2), 1, 2)));
    if (em_backward(loss) != EM_OK)
        return NULL;
    return loss;
}

static void test_optim__closure_runs_with_grad_inside_no_grad(void **state)
{
    (void)state;
    em_tensor *p = param((const float[]){1.0f, 1.0f}, 2);
    em_params *ps = params_of(&p, 1);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    struct closure_ctx c = {.opt = opt, .p = p};
    em_closure closure = {closure_fn, &c};

    /* Lightning's test_closure_with_no_grad_optimizer: step called under no_grad */
    em_no_grad_begin();
    assert_ok(em_optimizer_step(opt, &closure));
    assert_false(em_is_grad_enabled());
    assert_ok(em_no_grad_end());
    assert_int_equal(c.calls, 1);
    assert_true(c.grad_enabled);
    assert_int_equal(c.depth, 1); /* its own scope */
    assert_int_equal(em_scope_depth(), 0);
    float v[2];
    values(p, v, 2); /* grad [1, 2]: p = [1 - 0.1, 1 - 0.2] */
    assert_close_rel(v[0], 0.9, 1e-6);
    assert_close_rel(v[1], 0.8, 1e-6);
    assert_int_equal(em_optimizer_step_count(opt), 1);

    /* em_closure_call returns the loss: 0.9 + 2*0.8 = 2.5 */
    double loss = 0;
    em_no_grad_begin();
    assert_ok(em_closure_call(&closure, &loss));
    assert_ok(em_no_grad_end());
    assert_close_rel(loss, 2.5, 1e-6);
    assert_true(c.grad_enabled);

    /* a closure returning NULL without an error is Python's `return None`: the step still runs on
     * the gradients that exist (the closure's backward did not happen, grad is still [1, 2]) */
    c.mode = CLOSURE_NULL;
    assert_ok(em_optimizer_step(opt, &closure));
    assert_int_equal(em_last_status(), EM_OK);
    values(p, v, 2);
    assert_close_rel(v[0], 0.8, 1e-6);
    assert_close_rel(v[1], 0.6, 1e-6);
    assert_int_equal(em_optimizer_step_count(opt), 2);
    assert_int_equal(em_scope_depth(), 0);
    /* ... with its own error recorded: that message is kept */
    c.mode = CLOSURE_ERROR;
    assert_int_equal(em_optimizer_step(opt, &closure), EM_EUSER);
    assert_string_equal(em_last_error(), "training_step: boom");
    em_clear_error();
    assert_int_equal(em_closure_call(&closure, NULL), EM_EUSER);
    assert_string_equal(em_last_error(), "training_step: boom");
    em_clear_error();
    c.mode = CLOSURE_NULL;
    double none_loss = 0;
    assert_ok(em_closure_call(&closure, &none_loss)); /* no loss: NaN */
    assert_true(isnan(none_loss));

    /* a C optimizer's step gets the closure and runs it through em_closure_call */
    int destroyed = 0;
    struct c_sgd_state *st = malloc(sizeof *st);
    st->destroyed = &destroyed;
    em_params *pl = params_of(&p, 1);
    em_optimizer *mine = em_optimizer_new(&c_sgd_ops, pl, 0.1, st);
    em_params_free(pl);
    c.opt = mine;
    c.mode = CLOSURE_OK;
    c.calls = 0;
    em_no_grad_begin();
    assert_ok(em_optimizer_step(mine, &closure));
    assert_ok(em_no_grad_end());
    assert_int_equal(c.calls, 1);
    assert_true(c.grad_enabled);
    values(p, v, 2); /* [0.8 - 0.1, 0.6 - 0.2] */
    assert_close_rel(v[0], 0.7, 1e-6);
    assert_close_rel(v[1], 0.4, 1e-6);
    c.mode = CLOSURE_ERROR;
    assert_int_equal(em_optimizer_step(mine, &closure), EM_EUSER);
    assert_string_equal(em_last_error(), "training_step: boom");
    em_clear_error();
    em_optimizer_free(mine);

    em_optimizer_free(opt);
    em_tensor_free(p);
}

/* ---- LBFGS ------------------------------------------------------------------------------------------------- */

struct quad_ctx {
    em_optimizer *opt;
    em_tensor *p;
};

/* loss = sum((p - 3)^2) */
static em_tensor *quad_closure(void *ctx)
{
    struct quad_ctx *c = ctx;
    em_optimizer_zero_grad(c->opt);
    em_tensor *loss = em_sum(em_square(em_sub_scalar(c->p, 3.0)));
    if (em_backward(loss) != EM_OK)
        return NULL;
    return loss;
}

static void test_optim__lbfgs_needs_a_closure_and_one_group(void **state)
{
    (void)state;
    em_tensor *p = param((const float[]){0.0f, 1.0f}, 2);
    em_params *ps = params_of(&p, 1);
    em_optimizer *opt = em_lbfgs(ps, NULL);
    assert_nonnull_em(opt);
    assert_string_equal(em_optimizer_name(opt), "LBFGS");
    double v = 0;
    assert_ok(em_optimizer_get(opt, 0, "max_eval", &v));
    assert_close_rel(v, 25, 0); /* torch: max_iter * 5 // 4 */
    assert_ok(em_optimizer_get(opt, 0, "history_size", &v));
    assert_close_rel(v, 100, 0);
    assert_ok(em_optimizer_get(opt, 0, "tolerance_grad", &v));
    assert_close_rel(v, 1e-7, 0);
    assert_int_equal(em_optimizer_set(opt, 0, "max_iter", 2.5), EM_EINVAL);
    em_clear_error();

    assert_int_equal(em_optimizer_step(opt, NULL), EM_EINVAL);
    assert_error_contains("LBFGS requires a closure");
    em_clear_error();
    em_tensor *q = param((const float[]){0.0f}, 1);
    em_params *qs = params_of(&q, 1);
    assert_int_equal(em_optimizer_add_param_group(opt, qs), EM_EINVAL);
    assert_error_contains("LBFGS doesn't support per-parameter options (parameter groups)");
    em_clear_error();

    struct quad_ctx c = {opt, p};
    em_closure closure = {quad_closure, &c};
    assert_ok(em_optimizer_step(opt, &closure));
    float pv[2];
    values(p, pv, 2); /* a quadratic: LBFGS reaches the minimum within one step's 20 iterations */
    assert_close_rel(pv[0], 3.0, 1e-4);
    assert_close_rel(pv[1], 3.0, 1e-4);
    assert_int_equal(em_optimizer_step_count(opt), 1);

    em_optimizer_free(opt);
    em_params_free(ps);
    em_params_free(qs);
    em_tensor_free(p);
    em_tensor_free(q);
}

/* ---- clipping ---------------------------------------------------------------------------------------------- */

struct two_grads {
    em_tensor *a, *b;
    em_params *ps;
};

/* a.grad = [0.3, -1.7, 2.2], b.grad = [[0.5, 0.25], [-3, 1]] */
static void two_grads_init(struct two_grads *f)
{
    f->a = em_zeros(EM_SHAPE(3), &(em_tensor_opts){.requires_grad = true});
    f->b = em_zeros(EM_SHAPE(2, 2), &(em_tensor_opts){.requires_grad = true});
    em_tensor *both[2] = {f->a, f->b};
    f->ps = params_of(both, 2);
    em_scope_begin();
    assert_ok(em_tensor_set_grad(f->a, T(EM_SHAPE(3), 0.3f, -1.7f, 2.2f)));
    assert_ok(em_tensor_set_grad(f->b, T(EM_SHAPE(2, 2), 0.5f, 0.25f, -3.0f, 1.0f)));
    assert_ok(em_scope_end());
}

static void two_grads_check(struct two_grads *f, const float want_a[3], const float want_b[4])
{
    float ga[3], gb[4];
    assert_true(grad_values(f->a, ga, 3));
    assert_true(grad_values(f->b, gb, 4));
    for (int i = 0; i < 3; i++)
        assert_close(ga[i], want_a[i], 0, 0); /* bit for bit */
    for (int i = 0; i < 4; i++)
        assert_close(gb[i], want_b[i], 0, 0);
}

static void two_grads_free(struct two_grads *f)
{
    em_params_free(f->ps);
    em_tensor_free(f->a);
    em_tensor_free(f->b);
}

/* Recorded from torch 1.13.1: torch.nn.utils.clip_grad_norm_([a, b], 1.0, norm_type) with the grads
 * of two_grads_init. 2-norm: sqrt(0.09 + 2.89 + 4.84 + 0.25 + 0.0625 + 9 + 1) = sqrt(18.1325) = 4.2582274;
 * coef = 1 / (4.2582274 + 1e-6). inf-norm: 3; coef = 1 / (3 + 1e-6). */
static void test_optim__clip_grad_norm_matches_torch(void **state)
{
    (void)state;
    struct two_grads f;
    double total = 0;

    two_grads_init(&f);
    assert_ok(em_clip_grad_norm(f.ps, 1.0, 2.0, &total));
    assert_close((float)total, 4.25822735f, 0, 0);
    two_grads_check(&f, (const float[]){0.0704518408f, -0.399227083f, 0.516646802f},
                    (const float[]){0.117419727f, 0.0587098636f, -0.704518378f, 0.234839454f});
    two_grads_free(&f);

    two_grads_init(&f);
    assert_ok(em_clip_grad_norm(f.ps, 1.0, INFINITY, &total));
    assert_close_rel(total, 3.0, 0);
    two_grads_check(&f, (const float[]){0.0999999717f, -0.566666484f, 0.733333111f},
                    (const float[]){0.166666612f, 0.083333306f, -0.999999642f, 0.333333224f});
    two_grads_free(&f);

    two_grads_init(&f);
    assert_ok(em_clip_grad_norm(f.ps, 1.0, 3.0, &total));
    assert_close((float)total, 3.52307558f, 0, 0);
    two_grads_check(&f, (const float[]){0.0851528496f, -0.482532829f, 0.62445426f},
                    (const float[]){0.141921416f, 0.070960708f, -0.851528525f, 0.283842832f});
    two_grads_free(&f);

    /* below max_norm: coef clamps to 1, grads unchanged */
    two_grads_init(&f);
    assert_ok(em_clip_grad_norm(f.ps, 100.0, 2.0, NULL));
    two_grads_check(&f, (const float[]){0.3f, -1.7f, 2.2f}, (const float[]){0.5f, 0.25f, -3.0f, 1.0f});
    /* errors */
    assert_int_equal(em_clip_grad_norm(f.ps, 1.0, 0.0, NULL), EM_EINVAL);
    assert_error_contains("norm_type must be > 0");
    em_clear_error();
    assert_int_equal(em_clip_grad_norm(NULL, 1.0, 2.0, NULL), EM_EINVAL);
    assert_int_equal(em_clip_grad_value(NULL, 1.0), EM_EINVAL);
    two_grads_free(&f);

    /* no gradient at all: total 0, nothing to do */
    em_tensor *p = param((const float[]){1.0f}, 1);
    em_params *ps = params_of(&p, 1);
    total = -1;
    assert_ok(em_clip_grad_norm(ps, 1.0, 2.0, &total));
    assert_close_rel(total, 0, 0);
    em_params_free(ps);
    em_tensor_free(p);
}

/* Lightning's test_gradient_clipping_by_norm / _by_value, on random gradients */
static void test_optim__clip_to_norm_and_value_like_lightning(void **state)
{
    (void)state;
    em_manual_seed(0);
    em_tensor *w1 = em_zeros(EM_SHAPE(8, 4), &(em_tensor_opts){.requires_grad = true});
    em_tensor *w2 = em_zeros(EM_SHAPE(8), &(em_tensor_opts){.requires_grad = true});
    em_tensor *both[2] = {w1, w2};
    em_params *ps = params_of(both, 2);
    em_scope_begin();
    assert_ok(em_tensor_set_grad(w1, em_randn(EM_SHAPE(8, 4), NULL)));
    assert_ok(em_tensor_set_grad(w2, em_randn(EM_SHAPE(8), NULL)));
    assert_ok(em_scope_end());

    double before = 0, after = 0;
    assert_ok(em_clip_grad_norm(ps, 0.05, 2.0, &before));
    assert_true(before > 1.0);
    assert_ok(em_clip_grad_norm(ps, 1e9, 2.0, &after)); /* measures without clipping */
    assert_close_rel(after, 0.05, 1e-5);

    assert_ok(em_clip_grad_value(ps, 1e-10));
    float g1[32], g2[8];
    assert_true(grad_values(w1, g1, 32));
    assert_true(grad_values(w2, g2, 8));
    float max = 0;
    for (int i = 0; i < 32; i++)
        max = fabsf(g1[i]) > max ? fabsf(g1[i]) : max;
    for (int i = 0; i < 8; i++)
        max = fabsf(g2[i]) > max ? fabsf(g2[i]) : max;
    assert_true(max == (float)1e-10);

    em_params_free(ps);
    em_tensor_free(w1);
    em_tensor_free(w2);
}

/* ---- errors ------------------------------------------------------------------------------------------------- */

/* torch's maximize=True: the update ascends (Python steps on -grad) and p.grad is left as it was.
 * loss = 2p -> grad 2. SGD lr 0.1: p = 1 + 0.2 = 1.2. Adam lr 0.1: the first step moves by lr: 1.1. */
static void test_optim__maximize_ascends_and_keeps_the_gradient(void **state)
{
    (void)state;
    for (int which = 0; which < 2; which++) {
        em_tensor *p = param((const float[]){1.0f}, 1);
        em_params *ps = params_of(&p, 1);
        em_optimizer *opt;
        if (which == 0) {
            opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1, .maximize = true});
        } else {
            em_adam_opts o = EM_ADAM_OPTS_INIT;
            o.lr = 0.1;
            o.maximize = true;
            opt = em_adam(ps, &o);
        }
        em_params_free(ps);
        assert_nonnull_em(opt);
        double v;
        assert_ok(em_optimizer_get(opt, 0, "maximize", &v));
        assert_close_rel(v, 1, 0);
        em_scope_begin();
        assert_ok(em_backward(em_mul_scalar(p, 2.0)));
        assert_ok(em_optimizer_step(opt, NULL));
        float got[1];
        values(p, got, 1);
        assert_close_rel(got[0], which == 0 ? 1.2 : 1.1, 1e-6);
        assert_close_rel(em_tensor_item(em_tensor_grad(p)), 2.0, 0); /* untouched */
        /* and off again: a descent step */
        assert_ok(em_optimizer_set(opt, 0, "maximize", 0));
        assert_ok(em_optimizer_step(opt, NULL));
        values(p, got, 1);
        assert_true(got[0] < (which == 0 ? 1.2f : 1.1f));
        assert_ok(em_scope_end());
        em_optimizer_free(opt);
        em_tensor_free(p);
    }
}

static void test_optim__constructor_errors(void **state)
{
    (void)state;
    em_tensor *p = param((const float[]){1.0f}, 1);
    em_params *ps = params_of(&p, 1);

    assert_null(em_sgd(ps, &(em_sgd_opts){.lr = -1.0}));
    assert_string_equal(em_last_error(), "em_sgd: Invalid learning rate: -1");
    assert_int_equal(em_last_status(), EM_EINVAL);
    em_clear_error();
    assert_null(em_sgd(ps, &(em_sgd_opts){.momentum = 0.9})); /* lr forgotten */
    assert_error_contains("lr is required");
    em_clear_error();
    assert_null(em_sgd(ps, NULL));
    assert_error_contains("em_sgd");
    em_clear_error();
    assert_null(em_sgd(ps, &(em_sgd_opts){.lr = 0.1, .momentum = -0.5}));
    assert_error_contains("Invalid momentum value: -0.5");
    em_clear_error();
    assert_null(em_sgd(ps, &(em_sgd_opts){.lr = 0.1, .nesterov = true}));
    assert_string_equal(em_last_error(), "em_sgd: Nesterov momentum requires a momentum and zero dampening");
    em_clear_error();

    assert_null(em_adam(ps, &(em_adam_opts){.lr = 0.1})); /* version 0: the INIT was forgotten */
    assert_string_equal(em_last_error(), "em_adam: opts->version is 0: start from EM_ADAM_OPTS_INIT");
    em_clear_error();
    assert_null(em_adamw(ps, &(em_adam_opts){.lr = 0.1}));
    assert_error_contains("EM_ADAMW_OPTS_INIT");
    em_clear_error();
    assert_null(em_rmsprop(ps, &(em_rmsprop_opts){.lr = 0.1}));
    assert_error_contains("EM_RMSPROP_OPTS_INIT");
    em_clear_error();
    assert_null(em_adagrad(ps, &(em_adagrad_opts){.lr = 0.1}));
    assert_error_contains("EM_ADAGRAD_OPTS_INIT");
    em_clear_error();
    assert_null(em_lbfgs(ps, &(em_lbfgs_opts){.lr = 0.1}));
    assert_error_contains("EM_LBFGS_OPTS_INIT");
    em_clear_error();

    em_adam_opts a = EM_ADAM_OPTS_INIT;
    a.beta1 = 1.5;
    assert_null(em_adam(ps, &a));
    assert_string_equal(em_last_error(), "em_adam: Invalid beta parameter at index 0: 1.5");
    em_clear_error();
    a = (em_adam_opts)EM_ADAM_OPTS_INIT;
    a.eps = -1;
    assert_null(em_adam(ps, &a));
    assert_error_contains("Invalid epsilon value: -1");
    em_clear_error();
    em_rmsprop_opts r = EM_RMSPROP_OPTS_INIT;
    r.alpha = -0.1;
    assert_null(em_rmsprop(ps, &r));
    assert_error_contains("Invalid alpha value: -0.1");
    em_clear_error();
    em_adagrad_opts g = EM_ADAGRAD_OPTS_INIT;
    g.lr_decay = -1;
    assert_null(em_adagrad(ps, &g));
    assert_error_contains("Invalid lr_decay value: -1");
    em_clear_error();

    /* NULL, empty, non-leaf parameters */
    assert_null(em_adam(NULL, NULL));
    assert_error_contains("params is NULL");
    em_clear_error();
    em_params *empty = em_params_new();
    assert_null(em_adam(empty, NULL));
    assert_string_equal(em_last_error(), "em_adam: optimizer got an empty parameter list");
    em_clear_error();
    em_scope_begin();
    em_tensor *nonleaf = em_mul_scalar(p, 2.0);
    em_params *nl = params_of(&nonleaf, 1);
    assert_null(em_sgd(nl, &(em_sgd_opts){.lr = 0.1}));
    assert_error_contains("can't optimize a non-leaf Tensor");
    em_clear_error();
    em_params_free(nl);
    assert_ok(em_scope_end());
    em_params_free(empty);

    /* unknown hyper-parameter, group out of range, NULL handles */
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    double v;
    assert_int_equal(em_optimizer_get(opt, 0, "beta1", &v), EM_EINVAL);
    assert_string_equal(em_last_error(), "em_optimizer_get: SGD has no hyper-parameter \"beta1\"");
    em_clear_error();
    assert_int_equal(em_optimizer_set(opt, 0, "betas", 0.5), EM_EINVAL);
    assert_error_contains("SGD has no hyper-parameter \"betas\"");
    em_clear_error();
    assert_int_equal(em_optimizer_get(opt, 1, "lr", &v), EM_EINVAL);
    assert_error_contains("group 1 out of range");
    em_clear_error();
    assert_true(isnan(em_optimizer_lr(opt, 3)));
    em_clear_error();
    assert_int_equal(em_optimizer_step(NULL, NULL), EM_EINVAL);
    assert_int_equal(em_optimizer_zero_grad(NULL), EM_EINVAL);
    assert_int_equal(em_optimizer_num_groups(NULL), 0);
    assert_int_equal(em_last_status(), EM_OK); /* NULL handles record nothing */
    em_optimizer_free(NULL);
    em_optimizer_free(opt);

    em_params_free(ps);
    em_tensor_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define TEST(t) cmocka_unit_test_setup_teardown(t, helper_setup, helper_teardown)
        TEST(test_optim__sgd_momentum_matches_torch_update_rule),
        TEST(test_optim__sgd_nesterov_weight_decay_dampening),
        TEST(test_optim__adam_and_adamw_match_the_formulas),
        TEST(test_optim__rmsprop_centered_matches_torch),
        TEST(test_optim__adagrad_matches_torch),
        TEST(test_optim__adam_amsgrad_and_adamw_match_torch),
        TEST(test_optim__param_groups_with_different_lr),
        TEST(test_optim__get_set_momentum_and_beta1),
        TEST(test_optim__adagrad_added_group_steps),
        TEST(test_optim__zero_grad_fills_zeros_or_sets_none),
        TEST(test_optim__c_optimizer_matches_em_sgd),
        TEST(test_optim__c_optimizer_bad_ops_free_state),
        TEST(test_optim__closure_runs_with_grad_inside_no_grad),
        TEST(test_optim__lbfgs_needs_a_closure_and_one_group),
        TEST(test_optim__clip_grad_norm_matches_torch),
        TEST(test_optim__clip_to_norm_and_value_like_lightning),
        TEST(test_optim__maximize_ascends_and_keeps_the_gradient),
        TEST(test_optim__constructor_errors),
#undef TEST
    };
    return cmocka_run_group_tests_name("optim", tests, NULL, NULL);
}
