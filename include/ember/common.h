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
    EM_EIO = -8,         /* a file could not be read or written */
    EM_EMISUSE = -9      /* the API was used in a way that is never valid: a freed or foreign handle, a
                            double free, freeing what ember owns, closing a scope ember opened (SQLite's
                            SQLITE_MISUSE); detected on a best-effort basis, see "Misuse" below */
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
 *  - an op or constructor given a NULL tensor, layer or optimizer handle returns NULL / EM_EINVAL.
 *    If an error is already recorded (the call that made the NULL failed), that first message stays,
 *    so a chain of calls can be checked once at the end:
 *
 *        em_tensor *loss = em_mse_loss(em_nn_forward(net, x), y, EM_REDUCTION_MEAN);
 *        if (loss == NULL) fprintf(stderr, "%s\n", em_last_error());
 *
 *    If nothing is recorded (a NULL that came from elsewhere, e.g. a batch without a second tensor),
 *    the NULL itself is recorded: "em_mse_loss: argument 2 is NULL". Accessors (em_tensor_numel,
 *    em_optimizer_num_groups, ...), methods given a NULL object (em_optimizer_step(NULL, ...)) and
 *    the free functions record nothing for NULL; em_tensor_grad returns NULL for a None gradient.
 *  - a freed handle, wherever it is passed, is EM_EMISUSE, always recorded (see "Misuse" below);
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

/* ---- misuse ---------------------------------------------------------------------------------------
 *
 * Some mistakes are never valid: using or freeing a handle twice, freeing what a trainer owns,
 * ending a scope ember opened. ember reports those it can see with EM_EMISUSE and a message that
 * names the call, instead of crashing (SQLite's SQLITE_MISUSE is the model). The detection is best
 * effort, as SQLite's "API armor" is: a handle's memory may have been reused by the time it is
 * passed again, and then the mistake is undefined behaviour like any use-after-free in C. The
 * README's "Errors and misuse" section lists what is caught.
 *
 * How every handle - tensor, layer, parameter list, optimizer, scheduler, generator, loader, callback,
 * trainer - is armored: each carries a tag that
 * every public function checks (one compare); freeing a handle - with its free function, with the
 * layer, list or optimizer that lent it, or at the end of the scope that owned it - poisons the tag,
 * and the freed memory is kept from reuse for the next 4096 frees on that thread. So a double free,
 * or a use of a freed handle, within that window is reported reliably ("em_tensor_free: this tensor
 * was already freed ...", "em_add: argument 1 is a freed tensor ..."); a pointer of another kind
 * ("argument 1 is not a valid tensor handle") too. Out of memory is EM_ENOMEM, never an abort.
 */

/* ---- diagnostics: warnings and notices ----------------------------------------------------------
 *
 * Besides errors, ember reports things that do not stop it - Lightning's warnings ("`max_epochs` was
 * not set. Setting it to 1000 epochs ...") and notices ("Trainer was signaled to stop but ...").
 * Every one goes through one handler, so an application can route them into its own log (the model
 * is SQLite's sqlite3_config(SQLITE_CONFIG_LOG) and libcurl's debug callback). The default handler
 * writes "ember: warning: <message>" (or "ember: <message>" for a notice) and a newline to stderr.
 */

/** How much a diagnostic matters. */
typedef enum em_log_level {
    EM_LEVEL_INFO = 0,   /* a notice: the run goes on as asked */
    EM_LEVEL_WARNING = 1 /* something is probably not what you meant (Lightning's warnings) */
} em_log_level;

/**
 * A diagnostics handler: `message` is one line without a trailing newline, borrowed for the call.
 * It may be called from any thread that runs ember code; it must not call back into ember.
 */
typedef void (*em_log_handler)(void *user, em_log_level level, const char *message);

/**
 * Send every warning and notice of the library to `fn` (with `user` as its first argument) instead
 * of stderr; NULL restores the default handler (stderr). Process-wide: set it once, before other
 * threads use ember (as sqlite3_config). Returns the handler in force before the call (NULL for the
 * default). Never fails. To silence ember, install a handler that does nothing.
 */
EM_API em_log_handler em_set_log_handler(em_log_handler fn, void *user);

EM_END_DECLS

#endif /* EMBER_COMMON_H */
