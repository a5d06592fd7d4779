/* helpers.c: assertion helpers shared by the tests. */
#include "helpers.h"

#include <stdio.h>

void helper_assert_close(double got, double want, double rtol, double atol, const char *expr,
                         const char *file, int line)
{
    double diff = fabs(got - want);
    if (!(diff <= atol + rtol * fabs(want))) {
        print_error("%s = %.9g, expected %.9g (diff %.3g, rtol %.3g, atol %.3g)\n", expr, got, want,
                       diff, rtol, atol);
        _fail(file, line);
    }
}

void helper_assert_ok(em_status s, const char *expr, const char *file, int line)
{
    if (s != EM_OK) {
        print_error("%s returned %s: %s\n", expr, em_status_name(s), em_last_error());
        _fail(file, line);
    }
}

void helper_assert_nonnull(int ok, const char *expr, const char *file, int line)
{
    if (!ok) {
        print_error("%s is NULL: %s\n", expr, em_last_error());
        _fail(file, line);
    }
}

void helper_assert_error_contains(const char *needle, const char *file, int line)
{
    if (strstr(em_last_error(), needle) == NULL) {
        print_error("error message \"%s\" does not contain \"%s\"\n", em_last_error(), needle);
        _fail(file, line);
    }
}

void helper_values(const em_tensor *t, float *out, size_t n)
{
    assert_non_null(t);
    assert_int_equal(em_tensor_numel(t), (int64_t)n);
    assert_int_equal(em_tensor_copy_to(t, out, n * sizeof(float), EM_F32), EM_OK);
}

int helper_setup(void **state)
{
    (void)state;
    em_clear_error();
    return 0;
}

int helper_teardown(void **state)
{
    (void)state;
    if (em_scope_depth() != 0) {
        fprintf(stderr, "test left %d scope(s) open\n", em_scope_depth());
        while (em_scope_depth() > 0)
            em_scope_end();
        return -1;
    }
    return 0;
}
