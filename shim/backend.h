/*
 * shim/backend.h: what src/ needs from the shim and the shim needs from src/, but users should not
 * call. C header: included by the C sources in src/ and the C++ ones in shim/. Symbols use the emi_ prefix and hidden
 * visibility.
 */
#ifndef EMBER_BACKEND_H
#define EMBER_BACKEND_H

#include "ember.h"

EM_BEGIN_DECLS

/* ---- errors (src/error.c) ------------------------------------------------------------------------ */

/**
 * Record an error (kept only if none is recorded yet) and return `code`. Every failure in ember goes
 * through here: break on emi_fail to see each error where it starts. Allocates nothing: the message
 * is formatted into a fixed thread-local buffer (truncated if longer).
 */
em_status emi_fail(em_status code, const char *fmt, ...) EM_PRINTF(2, 3);

/** Record a libtorch error caught in `func`: "func: <libtorch's one-line message>". */
void emi_fail_torch(const char *func, const char *what);

/** Whether an error is recorded on this thread (cheap). */
bool emi_has_error(void);

EM_END_DECLS

#endif /* EMBER_BACKEND_H */
