/* error.c: the sticky, thread-local error slot (docs/DESIGN.md §2, cairo's discipline).
 *
 * The first failure since em_clear_error() wins; later ones are dropped so that a chain of calls can
 * be checked once. Nothing here allocates, so running out of memory can still be reported.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "backend.h" /* emi_fail, the public em_* error API */

#define ERROR_CAPACITY 1024

static _Thread_local char error_message[ERROR_CAPACITY];
static _Thread_local em_status error_status = EM_OK;

/* ---- recording ----------------------------------------------------------------------------------- */

static void record(em_status code, const char *fmt, va_list ap)
{
    if (error_status != EM_OK)
        return; /* first error wins */
    error_status = code == EM_OK ? EM_ERROR : code;
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    /* keep messages on one line: torch's texts sometimes carry newlines */
    for (char *p = error_message; *p != '\0'; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
}

em_status emi_fail(em_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(code, fmt, ap);
    va_end(ap);
    return code == EM_OK ? EM_ERROR : code;
}

void emi_fail_torch(const char *func, const char *what)
{
    /* libtorch messages may end in a newline or repeat whitespace; trim the tail */
    size_t n = what != NULL ? strlen(what) : 0;
    while (n > 0 && (what[n - 1] == '\n' || what[n - 1] == ' '))
        n--;
    emi_fail(EM_ETORCH, "%s: %.*s", func, (int)n, what != NULL ? what : "");
}

bool emi_has_error(void)
{
    return error_status != EM_OK;
}

/* ---- public API ----------------------------------------------------------------------------------- */

const char *em_last_error(void)
{
    return error_status == EM_OK ? "" : error_message;
}

em_status em_last_status(void)
{
    return error_status;
}

void em_clear_error(void)
{
    error_status = EM_OK;
    error_message[0] = '\0';
}

em_status em_error_set(em_status code, const char *fmt, ...)
{
    if (code == EM_OK)
        code = EM_EUSER;
    va_list ap;
    va_start(ap, fmt);
    record(code, fmt, ap);
    va_end(ap);
    return code;
}

const char *em_status_name(em_status s)
{
    switch (s) {
    case EM_OK: return "EM_OK";
    case EM_ERROR: return "EM_ERROR";
    case EM_EINVAL: return "EM_EINVAL";
    case EM_ENOMEM: return "EM_ENOMEM";
    case EM_ETORCH: return "EM_ETORCH";
    case EM_ESTATE: return "EM_ESTATE";
    case EM_EUSER: return "EM_EUSER";
    case EM_EUNSUPPORTED: return "EM_EUNSUPPORTED";
    case EM_EIO: return "EM_EIO";
    case EM_EMISUSE: return "EM_EMISUSE";
    }
    return "EM_?";
}

#define STR2(x) #x
#define STR(x) STR2(x)

const char *em_version(void)
{
    return STR(EM_VERSION_MAJOR) "." STR(EM_VERSION_MINOR) "." STR(EM_VERSION_PATCH);
}
