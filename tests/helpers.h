/* helpers.h: what every ember test needs beside CMocka. Tests use the public header only. */
#ifndef EMBER_TEST_HELPERS_H
#define EMBER_TEST_HELPERS_H

#include <setjmp.h> /* cmocka needs these four before its header */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <string.h>

#include <ember.h>

/* |got - want| <= rtol * |want| (+ a tiny absolute floor for want == 0), with a readable failure. */
#define assert_close_rel(got, want, rtol) \
    helper_assert_close((double)(got), (double)(want), (rtol), 1e-12, #got, __FILE__, __LINE__)
/* |got - want| <= atol + rtol * |want|: the conformance cases' rule. */
#define assert_close(got, want, rtol, atol) \
    helper_assert_close((double)(got), (double)(want), (rtol), (atol), #got, __FILE__, __LINE__)

void helper_assert_close(double got, double want, double rtol, double atol, const char *expr,
                         const char *file, int line);

/* Assert an em_status is EM_OK, printing em_last_error() when it is not. */
#define assert_ok(expr) helper_assert_ok((expr), #expr, __FILE__, __LINE__)
void helper_assert_ok(em_status s, const char *expr, const char *file, int line);

/* Assert a pointer is non-NULL, printing em_last_error() when it is NULL. */
#define assert_nonnull_em(ptr) helper_assert_nonnull((ptr) != NULL, #ptr, __FILE__, __LINE__)
void helper_assert_nonnull(int ok, const char *expr, const char *file, int line);

/* Assert the recorded error message contains `needle`. */
#define assert_error_contains(needle) helper_assert_error_contains((needle), __FILE__, __LINE__)
void helper_assert_error_contains(const char *needle, const char *file, int line);

/* Copy a float tensor out into `out` (n floats); fails the test when the size differs. */
void helper_values(const em_tensor *t, float *out, size_t n);

/* A float32 tensor from a literal list: T(EM_SHAPE(2, 2), 1, 2, 3, 4). Owned by the open scope. */
#define T(shape_and_ndim, ...) \
    em_tensor_from((const float[]){__VA_ARGS__}, EM_F32, shape_and_ndim, NULL)

/* The trainer fixtures many tests share. A config of EM_TRAINER_CONFIG_INIT with max_epochs and nothing
 * printed or written (no progress bar, no CSV logger). */
em_trainer_config helper_quiet_config(int64_t max_epochs);

/* A loader of `batches` rows of ones, [batches, cols], one row per batch (Lightning's BoringModel data,
 * made constant). The caller frees it with em_loader_free. */
em_loader *helper_ones_loader(int64_t batches, int64_t cols);

/* Every message ember logs, one per line, for em_set_log_handler(helper_log_capture, &log) with
 * `helper_log log = {{0}};` (the text is cut at its size). */
typedef struct helper_log {
    char text[16384];
} helper_log;
void helper_log_capture(void *user, em_log_level level, const char *message);

/* CMocka setup/teardown that clear the error slot and check scopes are balanced afterwards. */
int helper_setup(void **state);
int helper_teardown(void **state);

#endif
