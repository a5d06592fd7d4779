/* test_lbfgs.c: torch.optim.LBFGS through em_lbfgs: known minima, and a strong-Wolfe run recorded from
 * Python torch 1.13.1 (ember's LBFGS follows torch/optim/lbfgs.py op for op in float32). */
#include "helpers.h"

/* ---- a problem: one parameter vector, a loss of it, a closure that records every evaluation ---- */

#define MAX_CALLS 128

typedef struct problem {
    em_tensor *(*f)(const em_tensor *x);
    em_tensor *x;
    em_optimizer *opt;
    int calls;
    double losses[MAX_CALLS];
    int fail_at; /* evaluation (1-based) at which the closure fails; 0 = never */
} problem;

/* Python: loss = f(x); record; opt.zero_grad(); loss.backward(); return loss */
static em_tensor *closure_fn(void *ctx)
{
    problem *p = ctx;
    if (p->fail_at != 0 && p->calls + 1 == p->fail_at) {
        em_error_set(EM_EUSER, "closure: failing on purpose at evaluation %d", p->fail_at);
        return NULL;
    }
    em_tensor *loss = p->f(p->x);
    if (loss == NULL)
        return NULL;
    if (p->calls < MAX_CALLS)
        p->losses[p->calls] = em_tensor_item(loss);
    p->calls++;
    if (em_optimizer_zero_grad(p->opt) != EM_OK || em_backward(loss) != EM_OK)
        return NULL;
    return loss;
}

static void problem_init(problem *p, em_tensor *(*f)(const em_tensor *), const float *x0, int64_t n,
                         const em_lbfgs_opts *o)
{
    memset(p, 0, sizeof *p);
    p->f = f;
    p->x = em_tensor_from(x0, EM_F32, EM_SHAPE(n), NULL);
    assert_nonnull_em(p->x);
    assert_ok(em_tensor_set_requires_grad(p->x, true));
    em_params *ps = em_params_new();
    assert_ok(em_params_add(ps, p->x));
    p->opt = em_lbfgs(ps, o);
    em_params_free(ps);
    assert_nonnull_em(p->opt);
}

static void problem_free(problem *p)
{
    em_optimizer_free(p->opt);
    em_tensor_free(p->x);
}

static em_status problem_step(problem *p)
{
    em_closure c = {closure_fn, p};
    return em_optimizer_step(p->opt, &c);
}

/* sum(w * (x - c)^2), c = [0, 1, 2, 3, 4], w = [1, 2, 3, 4, 5]: minimum 0 at x = c. */
static em_tensor *quadratic(const em_tensor *x)
{
    em_tensor *c = T(EM_SHAPE(5), 0, 1, 2, 3, 4);
    em_tensor *w = T(EM_SHAPE(5), 1, 2, 3, 4, 5);
    return em_sum(em_mul(em_pow_scalar(em_sub(x, c), 2.0), w));
}

/* Rosenbrock: 100 (x1 - x0^2)^2 + (1 - x0)^2, minimum 0 at (1, 1). The same ops as the Python
 * reference: torch.add(torch.mul(torch.pow(x1 - torch.pow(x0, 2.), 2.), 100.), torch.pow(torch.rsub(x0, 1.), 2.)) */
static em_tensor *rosenbrock(const em_tensor *x)
{
    em_tensor *x0 = em_select(x, 0, 0), *x1 = em_select(x, 0, 1);
    em_tensor *a = em_mul_scalar(em_pow_scalar(em_sub(x1, em_pow_scalar(x0, 2.0)), 2.0), 100.0);
    return em_add(a, em_pow_scalar(em_rsub_scalar(x0, 1.0), 2.0));
}

/* ---- known minima ------------------------------------------------------------------------------- */

static void check_quadratic_minimum(bool strong_wolfe)
{
    static const float x0[5] = {3.0f, -1.0f, 0.5f, 2.0f, 7.0f};
    em_lbfgs_opts o = EM_LBFGS_OPTS_INIT;
    o.max_iter = 100;
    o.strong_wolfe = strong_wolfe;
    problem p;
    problem_init(&p, quadratic, x0, 5, &o);
    assert_ok(problem_step(&p));
    /* Python (torch 1.13.1) needs 11 evaluations either way and ends within 2e-6 of the minimum */
    assert_int_equal(p.calls, 11);
    float x[5];
    helper_values(p.x, x, 5);
    for (int i = 0; i < 5; ++i)
        assert_close(x[i], (double)i, 0, 1e-5);
    assert_true(p.losses[p.calls - 1] < 1e-9);
    assert_true(p.losses[p.calls - 1] < p.losses[0] * 1e-10);
    assert_int_equal(em_optimizer_step_count(p.opt), 1);
    problem_free(&p);
}

static void test_lbfgs__no_line_search_reaches_quadratic_minimum(void **state)
{
    (void)state;
    check_quadratic_minimum(false);
}

static void test_lbfgs__strong_wolfe_reaches_quadratic_minimum(void **state)
{
    (void)state;
    check_quadratic_minimum(true);
}

/* ---- against Python -------------------------------------------------------------------------------- */

/*
 * Recorded with Python torch 1.13.1 (Debian python3-torch, torch.set_num_threads(1)):
 *   x = torch.tensor([-1.2, 1.0], requires_grad=True)
 *   opt = torch.optim.LBFGS([x], line_search_fn="strong_wolfe")   # lr 1, max_iter 20, max_eval 25
 *   two calls of opt.step(closure), closure as closure_fn, loss as rosenbrock()
 * The first step stops at max_eval (25 evaluations, 19 iterations), the second after 19 more.
 * Every float32 value below is printed with 9 significant digits (round-trips exactly). ember
 * reproduced all of them bit for bit; libtorch's C++ LBFGS (double line search) does not.
 */
static const double rosen_losses[44] = {
    24.2000046,   112.448051,   4.14692688,   4.12558699,   4.12112713,   4.11181736,    4.08495712,
    4.02228165,   3.90914321,   3.7589128,    3.42315197,   2.85975766,   2.4562583,     1.82046521,
    18.3433571,   1.71818793,   1.65796578,   1.49686539,   1.13509321,   0.920308769,   0.652897,
    130.842651,   1.61011004,   0.46411851,   0.423461109,  0.423461109,  0.242989287,   0.210180014,
    0.101769507,  0.122901648,  0.077934891,  0.0540484227, 0.027803991,  0.0674142987,  0.0150831258,
    0.00950766634, 0.00324360654, 0.00457828632, 0.000890154275, 0.000330519688, 2.90143835e-05,
    7.97810571e-06, 3.62389443e-08, 3.37664119e-10};

static void test_lbfgs__strong_wolfe_matches_python_rosenbrock(void **state)
{
    (void)state;
    static const float x0[2] = {-1.2f, 1.0f};
    em_lbfgs_opts o = EM_LBFGS_OPTS_INIT;
    o.strong_wolfe = true;
    problem p;
    problem_init(&p, rosenbrock, x0, 2, &o);

    assert_ok(problem_step(&p));
    assert_int_equal(p.calls, 25);
    float x[2];
    helper_values(p.x, x, 2);
    assert_close_rel(x[0], 0.380645096, 1e-5);
    assert_close_rel(x[1], 0.124925576, 1e-5);

    assert_ok(problem_step(&p));
    assert_int_equal(p.calls, 44);
    for (int i = 0; i < 44; ++i)
        assert_close_rel(p.losses[i], rosen_losses[i], 1e-5);
    helper_values(p.x, x, 2);
    assert_close_rel(x[0], 0.999982834, 1e-5);
    assert_close_rel(x[1], 0.999965012, 1e-5);
    problem_free(&p);
}

/* ---- errors ------------------------------------------------------------------------------------------- */

static void test_lbfgs__closure_failure_in_line_search_fails_the_step(void **state)
{
    (void)state;
    static const float x0[2] = {-1.2f, 1.0f};
    em_lbfgs_opts o = EM_LBFGS_OPTS_INIT;
    o.strong_wolfe = true;
    problem p;
    problem_init(&p, rosenbrock, x0, 2, &o);
    p.fail_at = 3; /* inside the first line search */
    assert_int_not_equal(problem_step(&p), EM_OK);
    assert_error_contains("failing on purpose at evaluation 3");
    assert_int_equal(p.calls, 2);
    assert_int_equal(em_optimizer_step_count(p.opt), 0);
    em_clear_error();
    problem_free(&p);
}

static void test_lbfgs__step_without_closure_is_rejected(void **state)
{
    (void)state;
    static const float x0[2] = {-1.2f, 1.0f};
    em_lbfgs_opts o = EM_LBFGS_OPTS_INIT;
    problem p;
    problem_init(&p, rosenbrock, x0, 2, &o);
    assert_int_equal(em_optimizer_step(p.opt, NULL), EM_EINVAL);
    assert_error_contains("closure");
    em_clear_error();
    problem_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lbfgs__no_line_search_reaches_quadratic_minimum, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_lbfgs__strong_wolfe_reaches_quadratic_minimum, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_lbfgs__strong_wolfe_matches_python_rosenbrock, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_lbfgs__closure_failure_in_line_search_fails_the_step, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_lbfgs__step_without_closure_is_rejected, helper_setup,
                                        helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
