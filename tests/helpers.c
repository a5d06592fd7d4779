/* helpers.c: assertion helpers and trainer fixtures shared by the tests. */
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

em_trainer_config helper_quiet_config(int64_t max_epochs)
{
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = max_epochs;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    return cfg;
}

em_loader *helper_ones_loader(int64_t batches, int64_t cols)
{
    em_scope_begin();
    em_tensor *x = em_ones(EM_SHAPE(batches, cols), EM_F32);
    em_loader *l = em_tensor_loader(&x, 1, &(em_loader_opts){.batch_size = 1});
    assert_nonnull_em(l);
    assert_ok(em_scope_end());
    return l;
}

void helper_log_capture(void *user, em_log_level level, const char *message)
{
    (void)level;
    helper_log *c = user;
    size_t len = strlen(c->text);
    snprintf(c->text + len, sizeof c->text - len, "%s\n", message);
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
