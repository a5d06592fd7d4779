/* test_ops.c: arithmetic, in-place updates, reductions, shapes, comparisons, activations, losses,
 * linear and dropout, with numbers worked out by hand (and, where marked, recorded from torch 1.13.1). */
#include "helpers.h"

/* Copy `n` floats out of `t` and compare each with want[i] within rtol (absolute floor 1e-7). */
static void expect_values(const em_tensor *t, const float *want, size_t n, double rtol)
{
    float got[64];
    assert_true(n <= 64);
    helper_values(t, got, n);
    for (size_t i = 0; i < n; i++)
        assert_close(got[i], want[i], rtol, 1e-7);
}

/* Distance in units in the last place between two finite floats: how many float32 values lie between
 * them (+1), across zero too. */
static int64_t ulps_between(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    /* map the sign-magnitude bit patterns onto a monotonic integer line */
    int64_t la = ia < 0 ? (int64_t)INT32_MIN - ia : ia;
    int64_t lb = ib < 0 ? (int64_t)INT32_MIN - ib : ib;
    return la > lb ? la - lb : lb - la;
}

/* Copy `n` floats out of `t` and assert each is within max_ulps float32 steps of want[i]. */
static void expect_ulps(const em_tensor *t, const float *want, size_t n, int64_t max_ulps)
{
    float got[64];
    assert_true(n <= 64);
    helper_values(t, got, n);
    for (size_t i = 0; i < n; i++) {
        int64_t d = ulps_between(got[i], want[i]);
        if (d > max_ulps)
            fail_msg("element %zu: got %.10g, want %.10g: %lld ulps apart, more than %lld", i, (double)got[i],
                     (double)want[i], (long long)d, (long long)max_ulps);
    }
}

/* Assert the shape of `t` equals shape[0..ndim-1]. */
static void expect_shape(const em_tensor *t, const int64_t *shape, int ndim)
{
    int64_t got[EM_MAX_DIMS];
    assert_non_null(t);
    assert_int_equal(em_tensor_shape(t, got, EM_MAX_DIMS), ndim);
    for (int i = 0; i < ndim; i++)
        assert_int_equal(got[i], shape[i]);
}

#define EXPECT(t, rtol, ...)                                                               \
    expect_values((t), (const float[]){__VA_ARGS__},                                     \
                  sizeof((const float[]){__VA_ARGS__}) / sizeof(float), (rtol))

/* ---- elementwise arithmetic ------------------------------------------------------------------------ */

static void test_arith__broadcasting_add_sub_mul_div(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *a = T(EM_SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    em_tensor *b = T(EM_SHAPE(3), 10, 20, 30);
    /* [2,3] + [3]: b is added to each row */
    em_tensor *s = em_add(a, b);
    expect_shape(s, EM_SHAPE(2, 3));
    EXPECT(s, 0, 11, 22, 33, 14, 25, 36);
    /* [2,1] + [3] -> [2,3]: outer sum */
    em_tensor *c = em_add(T(EM_SHAPE(2, 1), 1, 2), b);
    expect_shape(c, EM_SHAPE(2, 3));
    EXPECT(c, 0, 11, 21, 31, 12, 22, 32);
    EXPECT(em_sub(b, a), 0, 9, 18, 27, 6, 15, 24);
    EXPECT(em_mul(a, b), 0, 10, 40, 90, 40, 100, 180);
    EXPECT(em_div(b, a), 1e-7, 10, 10, 10, 2.5, 4, 5);
    EXPECT(em_pow(a, T(EM_SHAPE(1), 2)), 0, 1, 4, 9, 16, 25, 36);
    EXPECT(em_maximum(T(EM_SHAPE(3), 1, 5, -2), T(EM_SHAPE(3), 3, 4, -1)), 0, 3, 5, -1);
    EXPECT(em_minimum(T(EM_SHAPE(3), 1, 5, -2), T(EM_SHAPE(3), 3, 4, -1)), 0, 1, 4, -2);
    assert_ok(em_scope_end());
}

static void test_arith__scalars_unary_and_clamp(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(3), 1, 4, 9);
    EXPECT(em_add_scalar(x, 1), 0, 2, 5, 10);
    EXPECT(em_sub_scalar(x, 1), 0, 0, 3, 8);
    EXPECT(em_rsub_scalar(x, 10), 0, 9, 6, 1); /* 10 - x */
    EXPECT(em_mul_scalar(x, -2), 0, -2, -8, -18);
    EXPECT(em_div_scalar(x, 4), 0, 0.25, 1, 2.25);
    EXPECT(em_pow_scalar(x, 0.5), 0, 1, 2, 3);
    EXPECT(em_sqrt(x), 0, 1, 2, 3);
    EXPECT(em_neg(x), 0, -1, -4, -9);
    EXPECT(em_square(T(EM_SHAPE(2), -3, 2)), 0, 9, 4);
    EXPECT(em_abs(T(EM_SHAPE(2), -3, 2)), 0, 3, 2);
    /* exp(ln 2) = 2; sin(0) = 0, cos(0) = 1 */
    EXPECT(em_exp(em_ln(T(EM_SHAPE(1), 2))), 1e-6, 2);
    EXPECT(em_sin(T(EM_SHAPE(1), 0)), 0, 0);
    EXPECT(em_cos(T(EM_SHAPE(1), 0)), 0, 1);
    /* clamp: an infinite bound is a missing bound */
    em_tensor *v = T(EM_SHAPE(4), -2, 0.5, 3, 7);
    EXPECT(em_clamp(v, 0, 5), 0, 0, 0.5, 3, 5);
    EXPECT(em_clamp(v, -INFINITY, 1), 0, -2, 0.5, 1, 1);
    EXPECT(em_clamp(v, 1, INFINITY), 0, 1, 1, 3, 7);
    EXPECT(em_clamp(v, -INFINITY, INFINITY), 0, -2, 0.5, 3, 7);
    /* an int64 tensor clamped on one side stays int64 (torch.clamp(a, max=2)) */
    em_tensor *iv = em_arange(0, 5, 1, &(em_tensor_opts){.dtype = EM_I64});
    em_tensor *ic = em_clamp(iv, -INFINITY, 2);
    assert_int_equal(em_tensor_dtype(ic), EM_I64);
    int64_t got[5];
    assert_ok(em_tensor_copy_to(ic, got, sizeof got, EM_I64));
    assert_int_equal(got[4], 2);
    assert_int_equal(got[1], 1);
    /* integral scalars on an int64 tensor act as Python ints: arange(5) * 3 + 1 stays int64 ... */
    em_tensor *ia = em_add_scalar(em_mul_scalar(iv, 3), 1);
    assert_int_equal(em_tensor_dtype(ia), EM_I64);
    assert_ok(em_tensor_copy_to(ia, got, sizeof got, EM_I64));
    assert_int_equal(got[4], 13);
    /* ... and a fractional one as a Python float: arange(5) * 0.5 is float32 */
    em_tensor *fa = em_mul_scalar(iv, 0.5);
    assert_int_equal(em_tensor_dtype(fa), EM_F32);
    EXPECT(fa, 0, 0, 0.5, 1, 1.5, 2);
    assert_ok(em_scope_end());
}

/* ---- in-place updates ------------------------------------------------------------------------------ */

static void test_inplace__updates_under_no_grad(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *w = T(EM_SHAPE(3), 1, 2, 3);
    assert_ok(em_tensor_set_requires_grad(w, true));
    em_tensor *g = T(EM_SHAPE(3), 10, 20, 30);
    em_no_grad_begin();
    /* an SGD step: w += -0.1 * g -> [0, 0, 0] */
    assert_ok(em_add_(w, g, -0.1));
    EXPECT(w, 0, 0, 0, 0);
    assert_ok(em_fill_(w, 2.5));
    EXPECT(w, 0, 2.5, 2.5, 2.5);
    assert_ok(em_mul_scalar_(w, 2));
    EXPECT(w, 0, 5, 5, 5);
    assert_ok(em_copy_(w, T(EM_SHAPE(1), 7))); /* copy_ broadcasts */
    EXPECT(w, 0, 7, 7, 7);
    assert_ok(em_zero_(w));
    EXPECT(w, 0, 0, 0, 0);
    assert_ok(em_no_grad_end());
    /* still a leaf that requires grad, and nothing was recorded */
    assert_true(em_tensor_requires_grad(w));
    assert_int_equal(em_last_status(), EM_OK);
    assert_ok(em_scope_end());
}

/* Recorded from torch 1.13.1:
 *   g = torch.Generator().manual_seed(0); torch.empty(3).uniform_(-1, 1, generator=g)
 *     -> [-0.007486820, 0.536443591, -0.823045135]
 *   g = torch.Generator().manual_seed(0); torch.empty(3).normal_(1, 2, generator=g)
 *     -> [4.081992149, 0.413142174, -3.357578754] */
static void test_inplace__uniform_and_normal_follow_the_generator(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *t = em_zeros(EM_SHAPE(3), NULL);
    em_generator *g = em_generator_new(0);
    assert_ok(em_uniform_(t, -1, 1, g));
    EXPECT(t, 1e-6, -0.007486820f, 0.536443591f, -0.823045135f);
    em_generator_free(g);
    g = em_generator_new(0);
    assert_ok(em_normal_(t, 1, 2, g));
    EXPECT(t, 1e-6, 4.081992149f, 0.413142174f, -3.357578754f);
    em_generator_free(g);
    /* the global generator: same seed, same numbers */
    float first[3], second[3];
    em_manual_seed(5);
    assert_ok(em_normal_(t, 0, 1, NULL));
    helper_values(t, first, 3);
    em_manual_seed(5);
    assert_ok(em_normal_(t, 0, 1, NULL));
    helper_values(t, second, 3);
    assert_memory_equal(first, second, sizeof first);
    assert_ok(em_scope_end());
}

static void test_inplace__on_a_leaf_requiring_grad_fails(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *w = T(EM_SHAPE(2), 1, 2);
    assert_ok(em_tensor_set_requires_grad(w, true));
    assert_int_equal(em_add_(w, T(EM_SHAPE(2), 1, 1), 1.0), EM_ETORCH);
    assert_int_equal(em_last_status(), EM_ETORCH);
    /* torch: "a leaf Variable that requires grad is being used in an in-place operation." */
    assert_error_contains("em_add_: ");
    assert_error_contains("leaf Variable that requires grad");
    EXPECT(w, 0, 1, 2); /* unchanged */
    em_clear_error();
    assert_int_equal(em_zero_(w), EM_ETORCH);
    assert_error_contains("em_zero_");
    em_clear_error();
    /* NULL handles: EM_EINVAL, the argument named */
    assert_int_equal(em_fill_(NULL, 1), EM_EINVAL);
    assert_error_contains("em_fill_: argument 1 is NULL");
    em_clear_error();
    assert_int_equal(em_copy_(w, NULL), EM_EINVAL);
    assert_error_contains("em_copy_: argument 2 is NULL");
    em_clear_error();
    assert_ok(em_scope_end());
}

/* ---- linear algebra and reductions ----------------------------------------------------------------- */

static void test_linalg__matmul_2x3_by_3x2(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *a = T(EM_SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    em_tensor *b = T(EM_SHAPE(3, 2), 7, 8, 9, 10, 11, 12);
    /* [1 2 3]·[7 9 11] = 58, ·[8 10 12] = 64; [4 5 6]·[7 9 11] = 139, ·[8 10 12] = 154 */
    em_tensor *c = em_matmul(a, b);
    expect_shape(c, EM_SHAPE(2, 2));
    EXPECT(c, 0, 58, 64, 139, 154);
    /* matrix @ vector: [1 2 3]·[1 1 1] = 6, [4 5 6]·[1 1 1] = 15 */
    em_tensor *mv = em_matmul(a, T(EM_SHAPE(3), 1, 1, 1));
    expect_shape(mv, EM_SHAPE(2));
    EXPECT(mv, 0, 6, 15);
    assert_ok(em_scope_end());
}

static void test_reduce__sum_mean_and_dims(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    assert_close_rel(em_tensor_item(em_sum(x)), 21, 0);
    assert_close_rel(em_tensor_item(em_mean(x)), 3.5, 0);
    /* column means (1+4)/2, (2+5)/2, (3+6)/2 */
    em_tensor *m0 = em_mean_dim(x, 0, false);
    expect_shape(m0, EM_SHAPE(3));
    EXPECT(m0, 0, 2.5, 3.5, 4.5);
    /* row means, dim -1, kept: [[2], [5]] */
    em_tensor *m1 = em_mean_dim(x, -1, true);
    expect_shape(m1, EM_SHAPE(2, 1));
    EXPECT(m1, 0, 2, 5);
    em_tensor *s1 = em_sum_dim(x, 1, false);
    expect_shape(s1, EM_SHAPE(2));
    EXPECT(s1, 0, 6, 15);
    expect_shape(em_sum_dim(x, -2, true), EM_SHAPE(1, 3));
    /* a dimension out of range: torch's message */
    assert_null(em_sum_dim(x, 2, false));
    assert_int_equal(em_last_status(), EM_ETORCH);
    assert_error_contains("em_sum_dim: Dimension out of range");
    em_clear_error();
    assert_ok(em_scope_end());
}

static void test_reduce__max_min_dim_with_indices_argmax_norm(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(2, 3), 1, 5, 3, 7, 2, 9);
    em_tensor *idx = NULL;
    /* row maxima 5 (at 1) and 9 (at 2) */
    em_tensor *v = em_max_dim(x, 1, false, &idx);
    EXPECT(v, 0, 5, 9);
    assert_non_null(idx);
    assert_int_equal(em_tensor_dtype(idx), EM_I64);
    int64_t iv[3];
    assert_ok(em_tensor_copy_to(idx, iv, 2 * sizeof(int64_t), EM_I64));
    assert_int_equal(iv[0], 1);
    assert_int_equal(iv[1], 2);
    /* column minima min(1,7)=1 (row 0), min(5,2)=2 (row 1), min(3,9)=3 (row 0), kept: [1, 3] */
    em_tensor *mn = em_min_dim(x, -2, true, &idx);
    expect_shape(mn, EM_SHAPE(1, 3));
    EXPECT(mn, 0, 1, 2, 3);
    assert_ok(em_tensor_copy_to(idx, iv, sizeof iv, EM_I64));
    assert_int_equal(iv[0], 0);
    assert_int_equal(iv[1], 1);
    assert_int_equal(iv[2], 0);
    /* without the out-parameter */
    EXPECT(em_max_dim(x, 0, false, NULL), 0, 7, 5, 9);
    /* a failure sets *indices to NULL */
    idx = x;
    assert_null(em_max_dim(NULL, 0, false, &idx));
    assert_null(idx);
    em_tensor *am = em_argmax(x, -1, false);
    assert_ok(em_tensor_copy_to(am, iv, 2 * sizeof(int64_t), EM_I64));
    assert_int_equal(iv[0], 1);
    assert_int_equal(iv[1], 2);
    assert_close_rel(em_tensor_item(em_max(x)), 9, 0);
    assert_close_rel(em_tensor_item(em_min(x)), 1, 0);
    /* ||[3, -4]||_2 = 5, ||.||_inf = 4, ||.||_1 = 7 */
    em_tensor *n = T(EM_SHAPE(2), 3, -4);
    assert_close_rel(em_tensor_item(em_norm(n, 2.0)), 5, 1e-7);
    assert_close_rel(em_tensor_item(em_norm(n, INFINITY)), 4, 0);
    assert_close_rel(em_tensor_item(em_norm(n, 1.0)), 7, 0);
    assert_ok(em_scope_end());
}

/* ---- shape ---------------------------------------------------------------------------------------- */

static void test_shape__slice_with_negative_indices(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = em_arange(0, 10, 1, NULL); /* 0..9 */
    EXPECT(em_slice(x, 0, -3, INT64_MAX, 1), 0, 7, 8, 9);    /* x[-3:] */
    EXPECT(em_slice(x, 0, 1, -1, 3), 0, 1, 4, 7);            /* x[1:-1:3] */
    EXPECT(em_slice(x, 0, -100, 2, 1), 0, 0, 1);             /* x[-100:2]: start clamps to 0 */
    EXPECT(em_slice(x, -1, 2, -5, 1), 0, 2, 3, 4);           /* x[2:-5] */
    assert_int_equal(em_tensor_numel(em_slice(x, 0, 8, 3, 1)), 0); /* x[8:3] is empty */
    /* rows 1: of a [3, 2] matrix */
    em_tensor *m = T(EM_SHAPE(3, 2), 1, 2, 3, 4, 5, 6);
    em_tensor *rows = em_slice(m, 0, -2, INT64_MAX, 1);
    expect_shape(rows, EM_SHAPE(2, 2));
    EXPECT(rows, 0, 3, 4, 5, 6);
    /* a view: writing through it changes m */
    em_no_grad_begin();
    assert_ok(em_fill_(rows, 0));
    assert_ok(em_no_grad_end());
    EXPECT(m, 0, 1, 2, 0, 0, 0, 0);
    assert_null(em_slice(x, 0, 0, 5, 0));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("em_slice: slice step must be positive");
    em_clear_error();
    assert_ok(em_scope_end());
}

static void test_shape__narrow_select_index_select(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *m = T(EM_SHAPE(3, 2), 1, 2, 3, 4, 5, 6);
    em_tensor *n = em_narrow(m, 0, 1, 2);
    expect_shape(n, EM_SHAPE(2, 2));
    EXPECT(n, 0, 3, 4, 5, 6);
    em_tensor *s = em_select(m, -1, 1); /* second column */
    expect_shape(s, EM_SHAPE(3));
    EXPECT(s, 0, 2, 4, 6);
    EXPECT(em_select(m, 0, -1), 0, 5, 6); /* last row */
    em_tensor *idx = em_tensor_from((const int64_t[]){2, 0, 2}, EM_I64, EM_SHAPE(3), NULL);
    em_tensor *sel = em_index_select(m, 0, idx);
    expect_shape(sel, EM_SHAPE(3, 2));
    EXPECT(sel, 0, 5, 6, 1, 2, 5, 6);
    assert_ok(em_scope_end());
}

static void test_shape__reshape_view_transpose_permute(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = em_arange(0, 6, 1, NULL);
    em_tensor *r = em_reshape(x, EM_SHAPE(-1, 3));
    expect_shape(r, EM_SHAPE(2, 3));
    em_tensor *t = em_transpose(r, 0, -1);
    expect_shape(t, EM_SHAPE(3, 2));
    EXPECT(t, 0, 0, 3, 1, 4, 2, 5);
    /* view of a transposed tensor: torch refuses (not contiguous); reshape copies */
    assert_null(em_view(t, EM_SHAPE(6)));
    assert_int_equal(em_last_status(), EM_ETORCH);
    assert_error_contains("em_view: ");
    em_clear_error();
    EXPECT(em_reshape(t, EM_SHAPE(6)), 0, 0, 3, 1, 4, 2, 5);
    expect_shape(em_view(r, EM_SHAPE(3, 2)), EM_SHAPE(3, 2));
    em_tensor *c = em_reshape(x, EM_SHAPE(1, 2, 3));
    expect_shape(em_permute(c, EM_SHAPE(2, 0, 1)), EM_SHAPE(3, 1, 2));
    expect_shape(em_flatten(c, 1, -1), EM_SHAPE(1, 6));
    expect_shape(em_flatten(c, 0, -1), EM_SHAPE(6));
    expect_shape(em_unsqueeze(r, -1), EM_SHAPE(2, 3, 1));
    expect_shape(em_squeeze(c, 0), EM_SHAPE(2, 3));
    expect_shape(em_squeeze(c, 1), EM_SHAPE(1, 2, 3)); /* size 2: unchanged, as torch */
    assert_null(em_reshape(x, EM_SHAPE(4, -1)));        /* 6 is not a multiple of 4 */
    assert_error_contains("em_reshape: shape '[4, -1]' is invalid for input of size 6");
    em_clear_error();
    assert_null(em_permute(c, NULL, 3));
    assert_int_equal(em_last_status(), EM_EINVAL);
    em_clear_error();
    assert_ok(em_scope_end());
}

static void test_shape__cat_and_stack(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *a = T(EM_SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    em_tensor *b = T(EM_SHAPE(2, 3), 7, 8, 9, 10, 11, 12);
    em_tensor *ts[2] = {a, b};
    em_tensor *c0 = em_cat(ts, 2, 0);
    expect_shape(c0, EM_SHAPE(4, 3));
    EXPECT(c0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);
    em_tensor *c1 = em_cat(ts, 2, -1);
    expect_shape(c1, EM_SHAPE(2, 6));
    EXPECT(c1, 0, 1, 2, 3, 7, 8, 9, 4, 5, 6, 10, 11, 12);
    expect_shape(em_stack(ts, 2, 0), EM_SHAPE(2, 2, 3));
    em_tensor *s2 = em_stack(ts, 2, -1);
    expect_shape(s2, EM_SHAPE(2, 3, 2));
    EXPECT(s2, 0, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11, 6, 12);
    /* a NULL array or n == 0: EM_EINVAL */
    assert_null(em_cat(NULL, 2, 0));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("em_cat");
    em_clear_error();
    assert_null(em_stack(ts, 0, 0));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("em_stack");
    em_clear_error();
    /* a NULL element: NULL, the element named */
    em_tensor *with_null[2] = {a, NULL};
    assert_null(em_cat(with_null, 2, 0));
    assert_error_contains("em_cat: element 1 of argument 1 is NULL");
    em_clear_error();
    assert_null(em_stack(with_null, 2, 0));
    assert_error_contains("em_stack: element 1 of argument 1 is NULL");
    em_clear_error();
    /* mismatched sizes: torch's message */
    em_tensor *bad[2] = {a, T(EM_SHAPE(2), 1, 2)};
    assert_null(em_stack(bad, 2, 0));
    assert_int_equal(em_last_status(), EM_ETORCH);
    assert_error_contains("em_stack: stack expects each tensor to be equal size");
    em_clear_error();
    assert_ok(em_scope_end());
}

/* ---- comparisons and where -------------------------------------------------------------------------- */

static void test_compare__results_are_bool_and_where_selects(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(4), -1, 2, -3, 4);
    em_tensor *y = T(EM_SHAPE(4), -1, 1, 0, 5);
    em_tensor *pos = em_gt_scalar(x, 0);
    assert_int_equal(em_tensor_dtype(pos), EM_BOOL);
    uint8_t bv[4];
    assert_ok(em_tensor_copy_to(pos, bv, sizeof bv, EM_BOOL));
    assert_int_equal(bv[0], 0);
    assert_int_equal(bv[1], 1);
    assert_int_equal(bv[2], 0);
    assert_int_equal(bv[3], 1);
    /* where(x > 0, x, 0) is relu */
    EXPECT(em_where(pos, x, em_zeros(EM_SHAPE(1), NULL)), 0, 0, 2, 0, 4);
    EXPECT(em_where(em_lt(x, y), x, y), 0, -1, 1, -3, 4); /* elementwise min */
    /* comparisons as 0/1 floats */
    EXPECT(em_eq(x, y), 0, 1, 0, 0, 0);
    EXPECT(em_ne(x, y), 0, 0, 1, 1, 1);
    EXPECT(em_le(x, y), 0, 1, 0, 1, 1);
    EXPECT(em_ge(x, y), 0, 1, 1, 0, 0);
    EXPECT(em_gt(x, y), 0, 0, 1, 0, 0);
    EXPECT(em_eq_scalar(x, 2), 0, 0, 1, 0, 0);
    EXPECT(em_lt_scalar(x, 0), 0, 1, 0, 1, 0);
    /* a float condition: torch refuses */
    assert_null(em_where(x, x, y));
    assert_int_equal(em_last_status(), EM_ETORCH);
    assert_error_contains("em_where: ");
    em_clear_error();
    assert_ok(em_scope_end());
}

/* ---- activations ------------------------------------------------------------------------------------- */

static void test_activation__softmax_rows_sum_to_one(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(2, 3), 1, 2, 3, 1, 1, 1);
    em_tensor *p = em_softmax(x, 1);
    /* rows sum to 1 */
    EXPECT(em_sum_dim(p, -1, false), 1e-6, 1, 1);
    /* e^k / (e + e^2 + e^3) for k = 1, 2, 3 = 0.0900306, 0.2447285, 0.6652410; equal logits: 1/3 */
    EXPECT(p, 1e-6, 0.09003057f, 0.24472847f, 0.66524096f, 1 / 3.f, 1 / 3.f, 1 / 3.f);
    /* log_softmax = x - logsumexp(x): row 0 lse = 3.4076059, row 1 lse = log 3 = 1.0986123 */
    EXPECT(em_log_softmax(x, -1), 1e-6, -2.4076059f, -1.4076059f, -0.4076059f, -1.0986123f, -1.0986123f,
           -1.0986123f);
    /* softmax over dim 0 sums columns to 1 */
    EXPECT(em_sum_dim(em_softmax(x, 0), 0, false), 1e-6, 1, 1, 1);
    assert_ok(em_scope_end());
}

static void test_activation__relu_leaky_sigmoid_tanh_gelu(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(3), -2, 0, 1);
    EXPECT(em_relu(x), 0, 0, 0, 1);
    EXPECT(em_leaky_relu(x, 0.1), 1e-7, -0.2f, 0, 1);
    /* sigmoid(0) = 0.5, sigmoid(1) = 1/(1+e^-1) = 0.7310586; sigmoid(-2) = 0.1192029 */
    EXPECT(em_sigmoid(x), 1e-6, 0.11920292f, 0.5f, 0.73105858f);
    /* tanh(1) = 0.7615942, tanh(-2) = -0.9640276 */
    EXPECT(em_tanh(x), 1e-6, -0.96402758f, 0, 0.76159416f);
    /* exact gelu: x * Phi(x) = x/2 * erfc(-x/sqrt 2). In exact arithmetic gelu(-2) = -0.0455002639 and
     * gelu(1) = 0.8413447461, whose nearest float32 values are the ones below. What libtorch computes
     * depends on its version (measured, F.gelu(torch.tensor([-2., 0, 1])) / em_gelu):
     *   libtorch 1.13.1 (Debian 12):  gelu(-2) = -0.0455000997, 44 ulps from the nearest float;
     *                                  gelu(1) = 0.8413447142, 1 ulp
     *   libtorch 2.6.0 (Debian trixie): gelu(-2) = -0.0455002785, 4 ulps; gelu(1) = 0.8413447142, 1 ulp
     * (an ulp of gelu(-2) is 2^-28 = 3.7e-9). So the comparison is in ulps: 64, the power of two above
     * 1.13's 44, admits both and still catches a wrong formula (the tanh approximation gives
     * gelu(-2) = -0.0454023, about 26000 ulps away). */
    float gelu_want[3] = {-0.04550026357f, 0, 0.8413447738f};
    expect_ulps(em_gelu(x), gelu_want, 3, 64);
    assert_ok(em_scope_end());
}

/* ---- losses ----------------------------------------------------------------------------------------- */
/* input [1, 2, 3, 4], target [2, 2, 5, 0]: d = input - target = [-1, 0, -2, 4] */

static void test_loss__mse_l1_smooth_l1_all_reductions(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(4), 1, 2, 3, 4);
    em_tensor *y = T(EM_SHAPE(4), 2, 2, 5, 0);
    /* mse: d^2 = [1, 0, 4, 16], sum 21, mean 5.25 */
    EXPECT(em_mse_loss(x, y, EM_REDUCTION_NONE), 0, 1, 0, 4, 16);
    assert_close_rel(em_tensor_item(em_mse_loss(x, y, EM_REDUCTION_SUM)), 21, 0);
    assert_close_rel(em_tensor_item(em_mse_loss(x, y, EM_REDUCTION_MEAN)), 5.25, 0);
    /* l1: |d| = [1, 0, 2, 4], sum 7, mean 1.75 */
    EXPECT(em_l1_loss(x, y, EM_REDUCTION_NONE), 0, 1, 0, 2, 4);
    assert_close_rel(em_tensor_item(em_l1_loss(x, y, EM_REDUCTION_SUM)), 7, 0);
    assert_close_rel(em_tensor_item(em_l1_loss(x, y, EM_REDUCTION_MEAN)), 1.75, 0);
    /* smooth l1, beta 1: |d| < 1 ? 0.5 d^2 / beta : |d| - 0.5 beta -> [0.5, 0, 1.5, 3.5], sum 5.5 */
    EXPECT(em_smooth_l1_loss(x, y, EM_REDUCTION_NONE, 1.0), 0, 0.5, 0, 1.5, 3.5);
    assert_close_rel(em_tensor_item(em_smooth_l1_loss(x, y, EM_REDUCTION_SUM, 1.0)), 5.5, 0);
    assert_close_rel(em_tensor_item(em_smooth_l1_loss(x, y, EM_REDUCTION_MEAN, 1.0)), 1.375, 0);
    /* beta 2: [0.5*1/2, 0, 2-1, 4-1] = [0.25, 0, 1, 3], sum 4.25, mean 1.0625 */
    EXPECT(em_smooth_l1_loss(x, y, EM_REDUCTION_NONE, 2.0), 0, 0.25, 0, 1, 3);
    assert_close_rel(em_tensor_item(em_smooth_l1_loss(x, y, EM_REDUCTION_SUM, 2.0)), 4.25, 0);
    assert_close_rel(em_tensor_item(em_smooth_l1_loss(x, y, EM_REDUCTION_MEAN, 2.0)), 1.0625, 0);
    /* beta 0 is l1 */
    assert_close_rel(em_tensor_item(em_smooth_l1_loss(x, y, EM_REDUCTION_SUM, 0.0)), 7, 0);
    assert_null(em_smooth_l1_loss(x, y, EM_REDUCTION_MEAN, -1.0));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("beta");
    em_clear_error();
    /* broadcasting as F.mse_loss does: [4, 1] against [4] -> [4, 4] */
    expect_shape(em_mse_loss(em_reshape(x, EM_SHAPE(4, 1)), y, EM_REDUCTION_NONE), EM_SHAPE(4, 4));
    /* shapes that cannot broadcast: both shapes named, torch's text kept */
    assert_null(em_mse_loss(x, T(EM_SHAPE(3), 1, 2, 3), EM_REDUCTION_MEAN));
    assert_error_contains("em_mse_loss: shapes [4] and [3]: The size of tensor a (4) must match");
    em_clear_error();
    assert_null(em_l1_loss(x, y, (em_reduction)7));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("em_l1_loss: unknown em_reduction 7");
    em_clear_error();
    assert_ok(em_scope_end());
}

/* logits [[1, 2, 3], [1, 1, 1]], targets [2, 0]:
 *   row 0: logsumexp = 3 + log(1 + e^-1 + e^-2) = 3 + log(1.5032147) = 3.4076059; loss = lse - 3 = 0.4076059
 *   row 1: logsumexp = 1 + log 3; loss = log 3 = 1.0986123
 *   sum 1.5062182, mean 0.7531091 (torch 1.13.1: 0.753109097) */
static void test_loss__cross_entropy_and_nll_by_hand(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(2, 3), 1, 2, 3, 1, 1, 1);
    em_tensor *t = em_tensor_from((const int64_t[]){2, 0}, EM_I64, EM_SHAPE(2), NULL);
    EXPECT(em_cross_entropy(x, t, EM_REDUCTION_NONE), 1e-6, 0.4076059f, 1.0986123f);
    assert_close_rel(em_tensor_item(em_cross_entropy(x, t, EM_REDUCTION_SUM)), 1.5062182, 1e-6);
    assert_close_rel(em_tensor_item(em_cross_entropy(x, t, EM_REDUCTION_MEAN)), 0.7531091, 1e-6);
    /* nll on log_softmax is the same */
    em_tensor *lp = em_log_softmax(x, 1);
    EXPECT(em_nll_loss(lp, t, EM_REDUCTION_NONE), 1e-6, 0.4076059f, 1.0986123f);
    assert_close_rel(em_tensor_item(em_nll_loss(lp, t, EM_REDUCTION_SUM)), 1.5062182, 1e-6);
    assert_close_rel(em_tensor_item(em_nll_loss(lp, t, EM_REDUCTION_MEAN)), 0.7531091, 1e-6);
    /* a target class out of range: torch's message, prefixed */
    em_tensor *bad = em_tensor_from((const int64_t[]){3, 0}, EM_I64, EM_SHAPE(2), NULL);
    assert_null(em_cross_entropy(x, bad, EM_REDUCTION_MEAN));
    assert_int_equal(em_last_status(), EM_ETORCH);
    assert_error_contains("em_cross_entropy: ");
    em_clear_error();
    assert_ok(em_scope_end());
}

/* bce on p = [0.8, 0.3], y = [1, 0]: [-log 0.8, -log 0.7] = [0.2231436, 0.3566749], sum 0.5798185;
 * with weight [2, 1]: [0.4462871, 0.3566749], sum 0.8029621, mean 0.4014810.
 * bce_with_logits on x = [0, 1], y = [1, 0], pos_weight [3]:
 *   -(pw*y*log s(x) + (1-y)*log(1 - s(x))) = [3 log 2, log(1 + e)] = [2.0794415, 1.3132617],
 *   sum 3.3927032, mean 1.6963516 */
static void test_loss__bce_and_bce_with_logits_pos_weight(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *p = T(EM_SHAPE(2), 0.8f, 0.3f);
    em_tensor *y = T(EM_SHAPE(2), 1, 0);
    EXPECT(em_bce_loss(p, y, NULL, EM_REDUCTION_NONE), 1e-6, 0.22314355f, 0.35667494f);
    assert_close_rel(em_tensor_item(em_bce_loss(p, y, NULL, EM_REDUCTION_SUM)), 0.5798185, 1e-6);
    assert_close_rel(em_tensor_item(em_bce_loss(p, y, NULL, EM_REDUCTION_MEAN)), 0.28990925, 1e-6);
    em_tensor *w = T(EM_SHAPE(2), 2, 1);
    EXPECT(em_bce_loss(p, y, w, EM_REDUCTION_NONE), 1e-6, 0.4462871f, 0.35667494f);
    assert_close_rel(em_tensor_item(em_bce_loss(p, y, w, EM_REDUCTION_SUM)), 0.8029621, 1e-6);
    assert_close_rel(em_tensor_item(em_bce_loss(p, y, w, EM_REDUCTION_MEAN)), 0.4014810, 1e-6);

    em_tensor *x = T(EM_SHAPE(2), 0, 1);
    em_tensor *pw = T(EM_SHAPE(1), 3);
    EXPECT(em_bce_with_logits(x, y, NULL, pw, EM_REDUCTION_NONE), 1e-6, 2.0794415f, 1.3132617f);
    assert_close_rel(em_tensor_item(em_bce_with_logits(x, y, NULL, pw, EM_REDUCTION_SUM)), 3.3927032, 1e-6);
    assert_close_rel(em_tensor_item(em_bce_with_logits(x, y, NULL, pw, EM_REDUCTION_MEAN)), 1.6963516, 1e-6);
    /* without pos_weight: [log 2, log(1 + e)], with weight [2, 1]: [2 log 2, log(1 + e)] */
    EXPECT(em_bce_with_logits(x, y, w, NULL, EM_REDUCTION_NONE), 1e-6, 1.3862944f, 1.3132617f);

    /* different sizes: Python's messages */
    assert_null(em_bce_with_logits(x, T(EM_SHAPE(2, 1), 1, 0), NULL, NULL, EM_REDUCTION_MEAN));
    assert_error_contains(
        "em_bce_with_logits: Target size (torch.Size([2, 1])) must be the same as input size (torch.Size([2]))");
    em_clear_error();
    assert_null(em_bce_loss(p, T(EM_SHAPE(1), 1), NULL, EM_REDUCTION_MEAN));
    assert_error_contains("em_bce_loss: Using a target size (torch.Size([1]))");
    em_clear_error();
    assert_ok(em_scope_end());
}

/* d/dx mean((x - y)^2) = 2 (x - y) / n = 2 [-1, 0, -2, 4] / 4 = [-0.5, 0, -1, 2] */
static void test_loss__mse_gradient_through_backward(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(4), 1, 2, 3, 4);
    assert_ok(em_tensor_set_requires_grad(x, true));
    em_tensor *loss = em_mse_loss(x, T(EM_SHAPE(4), 2, 2, 5, 0), EM_REDUCTION_MEAN);
    assert_true(em_tensor_requires_grad(loss));
    assert_ok(em_backward(loss));
    EXPECT(em_tensor_grad(x), 0, -0.5, 0, -1, 2);
    assert_ok(em_scope_end());
}

/* ---- linear and dropout ---------------------------------------------------------------------------- */

/* x = [[1, 2, 3], [4, 5, 6]], W = [[1, 0, -1], [2, 1, 0]], b = [0.5, -1]; y = x W^T + b:
 *   row 0: [1 - 3 + 0.5, 2 + 2 - 1] = [-1.5, 3]; row 1: [4 - 6 + 0.5, 8 + 5 - 1] = [-1.5, 12]
 * L = sum(y): dL/dW[j] = sum of the rows of x = [5, 7, 9] for each j; dL/db = [2, 2] (batch of 2);
 * dL/dx[i] = sum of the rows of W = [3, 1, -1] for each i. */
static void test_linear__forward_and_backward_by_hand(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    em_tensor *w = T(EM_SHAPE(2, 3), 1, 0, -1, 2, 1, 0);
    em_tensor *b = T(EM_SHAPE(2), 0.5, -1);
    assert_ok(em_tensor_set_requires_grad(x, true));
    assert_ok(em_tensor_set_requires_grad(w, true));
    assert_ok(em_tensor_set_requires_grad(b, true));
    em_tensor *y = em_linear(x, w, b);
    expect_shape(y, EM_SHAPE(2, 2));
    EXPECT(y, 0, -1.5, 3, -1.5, 12);
    assert_ok(em_backward(em_sum(y)));
    EXPECT(em_tensor_grad(w), 0, 5, 7, 9, 5, 7, 9);
    EXPECT(em_tensor_grad(b), 0, 2, 2);
    EXPECT(em_tensor_grad(x), 0, 3, 1, -1, 3, 1, -1);
    /* without a bias */
    em_no_grad_begin();
    EXPECT(em_linear(x, w, NULL), 0, -2, 4, -2, 13);
    assert_ok(em_no_grad_end());
    /* a weight with the wrong in_features: both shapes named */
    assert_null(em_linear(x, T(EM_SHAPE(1, 2), 1, 1), NULL));
    assert_int_equal(em_last_status(), EM_ETORCH);
    assert_error_contains("em_linear: shapes [2, 3] and [1, 2]: ");
    em_clear_error();
    assert_ok(em_scope_end());
}

/* Recorded from torch 1.13.1: torch.manual_seed(0); F.dropout(torch.ones(8), 0.5, True)
 *   -> [0, 0, 2, 0, 0, 0, 2, 2] (kept elements scaled by 1/(1-p) = 2) */
static void test_dropout__matches_torch_and_checks_p(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = em_ones(EM_SHAPE(8), NULL);
    em_manual_seed(0);
    EXPECT(em_dropout(x, 0.5, true), 0, 0, 0, 2, 0, 0, 0, 2, 2);
    EXPECT(em_dropout(x, 0.5, false), 0, 1, 1, 1, 1, 1, 1, 1, 1); /* eval: identity */
    EXPECT(em_dropout(x, 1.0, true), 0, 0, 0, 0, 0, 0, 0, 0, 0);
    assert_null(em_dropout(x, 1.5, true));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("em_dropout: dropout probability has to be between 0 and 1, but got 1.5");
    em_clear_error();
    assert_null(em_dropout(x, NAN, true));
    assert_int_equal(em_last_status(), EM_EINVAL);
    em_clear_error();
    assert_ok(em_scope_end());
}

/* ---- errors ----------------------------------------------------------------------------------------- */

static void test_errors__shape_mismatch_names_both_shapes(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *a = em_zeros(EM_SHAPE(2, 3), NULL);
    em_tensor *b = em_zeros(EM_SHAPE(4), NULL);
    assert_null(em_add(a, b));
    assert_int_equal(em_last_status(), EM_ETORCH);
    assert_string_equal(em_last_error(), "em_add: shapes [2, 3] and [4]: The size of tensor a (3) must match "
                                         "the size of tensor b (4) at non-singleton dimension 1");
    em_clear_error();
    assert_null(em_matmul(em_zeros(EM_SHAPE(8, 1), NULL), em_zeros(EM_SHAPE(3, 2), NULL)));
    assert_string_equal(em_last_error(),
                        "em_matmul: shapes [8, 1] and [3, 2]: mat1 and mat2 shapes cannot be multiplied (8x1 and 3x2)");
    em_clear_error();
    assert_null(em_where(em_gt_scalar(a, 0), a, b));
    assert_error_contains("em_where: shapes [2, 3], [2, 3] and [4]: ");
    em_clear_error();
    assert_ok(em_scope_end());
}

static void test_errors__chain_after_an_error_keeps_the_first_message(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = em_zeros(EM_SHAPE(8, 1), NULL);
    em_tensor *w = em_zeros(EM_SHAPE(3, 2), NULL);
    /* the first failure: matmul; everything after it gets NULL and returns NULL */
    em_tensor *loss = em_mse_loss(em_relu(em_add_scalar(em_matmul(x, w), 1)), x, EM_REDUCTION_MEAN);
    assert_null(loss);
    assert_int_equal(em_last_status(), EM_ETORCH);
    char first[512];
    snprintf(first, sizeof first, "%s", em_last_error());
    assert_non_null(strstr(first, "em_matmul: shapes [8, 1] and [3, 2]"));
    /* a later, different failure does not overwrite it */
    assert_null(em_sum_dim(x, 7, false));
    assert_null(em_softmax(em_cat(NULL, 0, 0), 0));
    assert_string_equal(em_last_error(), first);
    assert_null(strchr(em_last_error(), '\n'));
    em_clear_error();
    /* NULL in, NULL out; with nothing recorded yet, the NULL is reported naming the function and the
     * argument (a batch without its second tensor): every family */
#define NULL_ARG(call, msg)                              \
    do {                                                 \
        em_clear_error();                                \
        assert_null(call);                               \
        assert_int_equal(em_last_status(), EM_EINVAL);   \
        assert_error_contains(msg);                      \
    } while (0)
    em_tensor *idx = NULL;
    NULL_ARG(em_add(NULL, x), "em_add: argument 1 is NULL");
    NULL_ARG(em_exp(NULL), "em_exp: argument 1 is NULL");
    NULL_ARG(em_mul_scalar(NULL, 2), "em_mul_scalar: argument 1 is NULL");
    NULL_ARG(em_max_dim(NULL, 0, false, &idx), "em_max_dim: argument 1 is NULL");
    NULL_ARG(em_reshape(NULL, EM_SHAPE(8)), "em_reshape: argument 1 is NULL");
    NULL_ARG(em_where(NULL, x, x), "em_where: argument 1 is NULL");
    NULL_ARG(em_cross_entropy(x, NULL, EM_REDUCTION_MEAN), "em_cross_entropy: argument 2 is NULL");
    NULL_ARG(em_bce_with_logits(NULL, x, NULL, NULL, EM_REDUCTION_MEAN), "em_bce_with_logits: argument 1 is NULL");
    NULL_ARG(em_linear(x, NULL, NULL), "em_linear: argument 2 is NULL");
    NULL_ARG(em_dropout(NULL, 0.5, true), "em_dropout: argument 1 is NULL");
    NULL_ARG(em_index_select(x, 0, NULL), "em_index_select: argument 3 is NULL");
#undef NULL_ARG
    /* with an error already recorded, a NULL keeps the first message: the chain is checked once */
    em_clear_error();
    assert_null(em_exp(em_matmul(x, x)));
    snprintf(first, sizeof first, "%s", em_last_error());
    assert_null(em_cross_entropy(x, NULL, EM_REDUCTION_MEAN));
    assert_string_equal(em_last_error(), first);
    em_clear_error();
    assert_ok(em_scope_end());
}

static void test_errors__no_scope_means_caller_owns_results(void **state)
{
    (void)state;
    em_tensor *a = em_ones(EM_SHAPE(2), NULL);
    em_tensor *idx = NULL;
    em_tensor *m = em_max_dim(a, 0, false, &idx);
    em_tensor *s = em_add(a, a);
    em_tensor *ts[2] = {a, s};
    em_tensor *c = em_cat(ts, 2, 0);
    assert_close_rel(em_tensor_item(m), 1, 0);
    assert_close_rel(em_tensor_item(idx), 0, 0);
    assert_int_equal(em_tensor_numel(c), 4);
    /* each handle is the caller's: freeing all five leaves nothing behind (ASan / valgrind check it) */
    em_tensor_free(m);
    em_tensor_free(idx);
    em_tensor_free(c);
    em_tensor_free(s);
    em_tensor_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define TEST(fn) cmocka_unit_test_setup_teardown(fn, helper_setup, helper_teardown)
        TEST(test_arith__broadcasting_add_sub_mul_div),
        TEST(test_arith__scalars_unary_and_clamp),
        TEST(test_inplace__updates_under_no_grad),
        TEST(test_inplace__uniform_and_normal_follow_the_generator),
        TEST(test_inplace__on_a_leaf_requiring_grad_fails),
        TEST(test_linalg__matmul_2x3_by_3x2),
        TEST(test_reduce__sum_mean_and_dims),
        TEST(test_reduce__max_min_dim_with_indices_argmax_norm),
        TEST(test_shape__slice_with_negative_indices),
        TEST(test_shape__narrow_select_index_select),
        TEST(test_shape__reshape_view_transpose_permute),
        TEST(test_shape__cat_and_stack),
        TEST(test_compare__results_are_bool_and_where_selects),
        TEST(test_activation__softmax_rows_sum_to_one),
        TEST(test_activation__relu_leaky_sigmoid_tanh_gelu),
        TEST(test_loss__mse_l1_smooth_l1_all_reductions),
        TEST(test_loss__cross_entropy_and_nll_by_hand),
        TEST(test_loss__bce_and_bce_with_logits_pos_weight),
        TEST(test_loss__mse_gradient_through_backward),
        TEST(test_linear__forward_and_backward_by_hand),
        TEST(test_dropout__matches_torch_and_checks_p),
        TEST(test_errors__shape_mismatch_names_both_shapes),
        TEST(test_errors__chain_after_an_error_keeps_the_first_message),
        TEST(test_errors__no_scope_means_caller_owns_results),
#undef TEST
    };
    return cmocka_run_group_tests_name("ops", tests, NULL, NULL);
}
