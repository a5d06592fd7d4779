/* test_core.c: handles, scopes, sticky errors, factories, the seed oracle, autograd basics. */
#include "helpers.h"

/* ---- scopes ---------------------------------------------------------------------------------------- */

static void test_scope__end_without_begin_is_an_error(void **state)
{
    (void)state;
    assert_int_equal(em_scope_depth(), 0);
    assert_int_equal(em_scope_end(), EM_ESTATE);
    assert_error_contains("no scope is open");
}

static void test_scope__nesting_and_keep(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *outer = em_zeros(EM_SHAPE(2), NULL);
    em_scope_begin();
    assert_int_equal(em_scope_depth(), 2);
    em_tensor *tmp = em_ones(EM_SHAPE(3), NULL);
    em_tensor *kept = em_keep(tmp);
    assert_ptr_equal(kept, tmp);
    assert_ok(em_scope_end());
    /* kept now belongs to the outer scope and is still usable */
    assert_int_equal(em_tensor_numel(kept), 3);
    assert_int_equal(em_tensor_numel(outer), 2);
    assert_ok(em_scope_end());
    assert_int_equal(em_scope_depth(), 0);
}

static void test_scope__keep_without_enclosing_scope_gives_ownership(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *t = em_keep(em_full(EM_SHAPE(1), 7.0, NULL));
    assert_ok(em_scope_end());
    assert_close_rel(em_tensor_item(t), 7.0, 0);
    em_tensor_free(t); /* ASan reports a leak if this did not free it */
}

static void test_scope__free_early_removes_from_scope(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *t = em_zeros(EM_SHAPE(4), NULL);
    em_tensor_free(t);             /* freed now... */
    assert_ok(em_scope_end());     /* ...and not a second time here (ASan would report it) */
}

static void test_scope__no_scope_means_caller_owns(void **state)
{
    (void)state;
    em_tensor *t = em_zeros(EM_SHAPE(2, 2), NULL);
    assert_nonnull_em(t);
    em_tensor *r = em_tensor_ref(t);
    em_tensor_free(t);
    assert_int_equal(em_tensor_numel(r), 4); /* the second handle keeps the data alive */
    em_tensor_free(r);
}

/* ---- errors ---------------------------------------------------------------------------------------- */

static void test_errors__first_message_wins_and_null_propagates(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *a = em_zeros(EM_SHAPE(8, 1), NULL);
    em_tensor *b = em_zeros(EM_SHAPE(3, 2), NULL);
    em_tensor *bad = em_matmul(a, b); /* inner dims 1 vs 3 */
    assert_null(bad);
    assert_int_equal(em_last_status(), EM_ETORCH);
    assert_error_contains("em_matmul");
    char first[256];
    snprintf(first, sizeof first, "%s", em_last_error());
    /* a chain continuing from NULL returns NULL and keeps the first message */
    assert_null(em_tanh(em_add(bad, a)));
    assert_string_equal(em_last_error(), first);
    /* a second, different failure does not overwrite it */
    assert_null(em_tensor_from(NULL, EM_F32, EM_SHAPE(3), NULL));
    assert_string_equal(em_last_error(), first);
    /* the message is one line: no C++ backtrace */
    assert_null(strchr(em_last_error(), '\n'));
    em_clear_error();
    assert_string_equal(em_last_error(), "");
    assert_int_equal(em_last_status(), EM_OK);
    assert_ok(em_scope_end());
}

static void test_errors__user_errors_and_status_names(void **state)
{
    (void)state;
    assert_int_equal(em_error_set(EM_EUSER, "my callback failed at %d", 3), EM_EUSER);
    assert_string_equal(em_last_error(), "my callback failed at 3");
    assert_string_equal(em_status_name(EM_EUSER), "EM_EUSER");
    assert_string_equal(em_status_name((em_status)42), "EM_?");
    em_clear_error();
}

static void test_core__num_threads(void **state)
{
    (void)state;
    int before = em_get_num_threads();
    assert_ok(em_set_num_threads(1));
    assert_int_equal(em_get_num_threads(), 1);
    assert_int_equal(em_set_num_threads(0), EM_EINVAL);
    assert_error_contains("em_set_num_threads");
    em_clear_error();
    assert_ok(em_set_num_threads(before));
}

static void test_errors__version(void **state)
{
    (void)state;
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", EM_VERSION_MAJOR, EM_VERSION_MINOR, EM_VERSION_PATCH);
    assert_string_equal(em_version(), want);
    assert_true(strlen(em_torch_version()) >= 4);
}

/* ---- factories and inspection ---------------------------------------------------------------------- */

/* Recorded from torch 1.13.1: torch.manual_seed(0); torch.randn(5) */
static void test_factory__randn_matches_torch_seed_0(void **state)
{
    (void)state;
    static const float want[5] = {1.5409961f, -0.2934289f, -2.1787894f, 0.5684313f, -1.0845224f};
    em_scope_begin();
    em_manual_seed(0);
    float got[5];
    helper_values(em_randn(EM_SHAPE(5), NULL), got, 5);
    for (int i = 0; i < 5; i++)
        assert_close_rel(got[i], want[i], 1e-6);
    /* an explicit generator with the same seed gives the same numbers, independent of the global one */
    em_generator *g = em_generator_new(0);
    em_manual_seed(123);
    helper_values(em_randn(EM_SHAPE(5), &(em_tensor_opts){.generator = g}), got, 5);
    for (int i = 0; i < 5; i++)
        assert_close_rel(got[i], want[i], 1e-6);
    em_generator_free(g);
    assert_ok(em_scope_end());
}

static void test_factory__shapes_dtypes_values(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *t = em_full(EM_SHAPE(2, 3), 2.5, &(em_tensor_opts){.dtype = EM_F64});
    assert_int_equal(em_tensor_dim(t), 2);
    assert_int_equal(em_tensor_size(t, 0), 2);
    assert_int_equal(em_tensor_size(t, -1), 3);
    assert_int_equal(em_tensor_numel(t), 6);
    assert_int_equal(em_tensor_dtype(t), EM_F64);
    int64_t shape[EM_MAX_DIMS];
    assert_int_equal(em_tensor_shape(t, shape, EM_MAX_DIMS), 2);
    assert_int_equal(shape[1], 3);
    double d[6];
    assert_ok(em_tensor_copy_to(t, d, sizeof d, EM_F64));
    assert_close_rel(d[5], 2.5, 0);

    em_tensor *r = em_arange(0, 5, 1, &(em_tensor_opts){.dtype = EM_I64});
    int64_t iv[5];
    assert_ok(em_tensor_copy_to(r, iv, sizeof iv, EM_I64));
    assert_int_equal(iv[4], 4);
    assert_int_equal(em_tensor_dtype(r), EM_I64);

    float lv[5];
    helper_values(em_linspace(0, 1, 5, NULL), lv, 5);
    assert_close_rel(lv[1], 0.25, 1e-7);

    em_tensor *ri = em_randint(3, 7, EM_SHAPE(100), NULL);
    int64_t rv[100];
    assert_ok(em_tensor_copy_to(ri, rv, sizeof rv, EM_I64));
    for (int i = 0; i < 100; i++)
        assert_true(rv[i] >= 3 && rv[i] < 7);

    em_tensor *b = em_tensor_from((const uint8_t[]){1, 0, 1}, EM_BOOL, EM_SHAPE(3), NULL);
    assert_int_equal(em_tensor_dtype(b), EM_BOOL);
    em_tensor *h = em_to_dtype(em_ones(EM_SHAPE(2), NULL), EM_BF16);
    assert_int_equal(em_tensor_dtype(h), EM_BF16);
    assert_close_rel(em_tensor_item(em_sum(h)), 2.0, 0);

    char desc[96];
    em_tensor_describe(em_zeros(EM_SHAPE(8, 2), &(em_tensor_opts){.requires_grad = true}), desc, sizeof desc);
    assert_string_equal(desc, "tensor(float32[8, 2], cpu, requires_grad)");
    assert_ok(em_scope_end());
}

static void test_factory__rejects_bad_arguments(void **state)
{
    (void)state;
    assert_null(em_zeros(EM_SHAPE(2, -1), NULL));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("negative");
    em_clear_error();
    assert_null(em_arange(0, 5, 0, NULL));
    assert_error_contains("em_arange");
    em_clear_error();
    assert_null(em_randint(5, 5, EM_SHAPE(1), NULL));
    assert_error_contains("high");
    em_clear_error();
    em_tensor *t = em_zeros(EM_SHAPE(3), NULL);
    float small[2];
    assert_int_equal(em_tensor_copy_to(t, small, sizeof small, EM_F32), EM_EINVAL);
    assert_true(isnan(em_tensor_item(t)));
    em_tensor_free(t);
    em_clear_error();
}

/* ---- autograd ----------------------------------------------------------------------------------------- */

static void test_autograd__grad_and_no_grad(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(3), 1, 2, 3);
    assert_ok(em_tensor_set_requires_grad(x, true));
    assert_null(em_tensor_grad(x)); /* None before backward: NULL and no error */
    assert_int_equal(em_last_status(), EM_OK);
    /* y = sum(x^2) -> dy/dx = 2x */
    assert_ok(em_backward(em_sum(em_mul(x, x))));
    float g[3];
    helper_values(em_tensor_grad(x), g, 3);
    assert_close_rel(g[0], 2, 0);
    assert_close_rel(g[2], 6, 0);

    em_no_grad_begin();
    assert_false(em_is_grad_enabled());
    em_tensor *z = em_mul_scalar(x, 2.0);
    assert_false(em_tensor_requires_grad(z));
    assert_ok(em_no_grad_end());
    assert_true(em_is_grad_enabled());
    assert_int_equal(em_no_grad_end(), EM_ESTATE);
    em_clear_error();

    /* backward of a non-scalar without a gradient: torch's message, prefixed */
    assert_int_equal(em_backward(em_mul_scalar(x, 3.0)), EM_ETORCH);
    assert_error_contains("em_backward");
    em_clear_error();

    /* retain_graph lets the same graph be walked twice; grads accumulate */
    em_tensor *x2 = T(EM_SHAPE(1), 3);
    em_tensor_set_requires_grad(x2, true);
    em_tensor *y2 = em_mul(x2, x2);
    assert_ok(em_backward_ex(y2, NULL, true));
    assert_ok(em_backward_ex(y2, NULL, false));
    assert_close_rel(em_tensor_item(em_tensor_grad(x2)), 12.0, 0);
    assert_ok(em_tensor_set_grad(x2, NULL));
    assert_null(em_tensor_grad(x2));
    assert_ok(em_scope_end());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define TEST(fn) cmocka_unit_test_setup_teardown(fn, helper_setup, helper_teardown)
        TEST(test_scope__end_without_begin_is_an_error),
        TEST(test_scope__nesting_and_keep),
        TEST(test_scope__keep_without_enclosing_scope_gives_ownership),
        TEST(test_scope__free_early_removes_from_scope),
        TEST(test_scope__no_scope_means_caller_owns),
        TEST(test_errors__first_message_wins_and_null_propagates),
        TEST(test_errors__user_errors_and_status_names),
        TEST(test_errors__version),
        TEST(test_core__num_threads),
        TEST(test_factory__randn_matches_torch_seed_0),
        TEST(test_factory__shapes_dtypes_values),
        TEST(test_factory__rejects_bad_arguments),
        TEST(test_autograd__grad_and_no_grad),
#undef TEST
    };
    return cmocka_run_group_tests_name("core", tests, NULL, NULL);
}
