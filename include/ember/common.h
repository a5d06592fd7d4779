/*
 * ember/common.h: version, export macros, status codes and the sticky error slot.
 *
 * Every other ember header includes this one. Read the "Errors" block below
 * once: every function in ember reports failure the same way.
 */
#ifndef EMBER_COMMON_H
#define EMBER_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define EM_BEGIN_DECLS extern "C" {
#define EM_END_DECLS }
#else
#define EM_BEGIN_DECLS
#define EM_END_DECLS
#endif

#if defined(_WIN32)
#if defined(EMBER_BUILDING)
#define EM_API __declspec(dllexport)
#else
#define EM_API
#endif
#elif defined(__GNUC__)
#define EM_API __attribute__((visibility("default")))
#else
#define EM_API
#endif

#if defined(__GNUC__)
#define EM_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define EM_PRINTF(fmt_idx, arg_idx)
#endif

#define EM_VERSION_MAJOR 0
#define EM_VERSION_MINOR 1
#define EM_VERSION_PATCH 0

EM_BEGIN_DECLS

/**
 * The version of the ember library the program runs against, as "MAJOR.MINOR.PATCH".
 * Compare with EM_VERSION_* (the version of the headers the program was compiled with).
 * Borrowed: a static string.
 */
EM_API const char *em_version(void);

/**
 * The libtorch version ember was built against, e.g. "1.13.1".
 * Borrowed: a static string.
 */
EM_API const char *em_torch_version(void);

/* ---- status codes --------------------------------------------------------------------------- */

/** What a function that can fail returns. EM_OK is 0; every failure is negative. */
typedef enum em_status {
    EM_OK = 0,
    EM_ERROR = -1,       /* generic failure (see em_last_error()) */
    EM_EINVAL = -2,      /* an argument or a configuration is invalid */
    EM_ENOMEM = -3,      /* out of memory */
    EM_ETORCH = -4,      /* libtorch raised an error (shape mismatch, dtype, device, ...) */
    EM_ESTATE = -5,      /* called at the wrong time (e.g. outside em_trainer_fit) */
    EM_EUSER = -6,       /* stopped by a user callback (it called em_error_set or returned non-OK) */
    EM_EUNSUPPORTED = -7,/* not available in this build (no CUDA, no distributed, ...) */
    EM_EIO = -8          /* a file could not be read or written */
} em_status;

/**
 * A short constant name for a status, e.g. "EM_EINVAL".
 * Borrowed: a static string; "EM_?" for a value that is not an em_status.
 */
EM_API const char *em_status_name(em_status s);

/* ---- errors ----------------------------------------------------------------------------------
 *
 * Errors are sticky and per thread, never thrown, never fatal (cairo's discipline):
 *  - a failing function returns NULL (or a non-zero em_status) and records a one-line message,
 *    prefixed with the name of the ember function that failed;
 *  - the FIRST message since the last em_clear_error() is kept; later failures do not overwrite it;
 *  - a function given a NULL tensor (or other handle) returns NULL / EM_EINVAL without recording
 *    anything, so a chain of calls can be checked once at the end:
 *
 *        em_tensor *loss = em_mse_loss(em_nn_forward(net, x), y, EM_REDUCTION_MEAN);
 *        if (loss == NULL) fprintf(stderr, "%s\n", em_last_error());
 *
 * Every failure goes through one internal function, emi_fail(): put a breakpoint there to see
 * each error where it starts.
 */

/**
 * The first error message recorded on this thread since em_clear_error(), or "" if none.
 * Borrowed: valid until the next em_clear_error() on this thread.
 */
EM_API const char *em_last_error(void);

/** The status that goes with em_last_error(); EM_OK when no error is recorded. */
EM_API em_status em_last_status(void);

/** Forget the recorded error on this thread. Never fails. */
EM_API void em_clear_error(void);

/**
 * Record an error from user code (a callback, a custom layer or optimizer), printf-style.
 * Like every ember error it is kept only if no error is recorded yet.
 * Returns `code` (EM_EUSER is the usual choice), so a callback can `return em_error_set(...)`.
 */
EM_API em_status em_error_set(em_status code, const char *fmt, ...) EM_PRINTF(2, 3);

EM_END_DECLS

#endif /* EMBER_COMMON_H */
