/* log.c: warnings and notices, through one replaceable handler (em_set_log_handler).
 *
 * The model is SQLite's SQLITE_CONFIG_LOG: one process-wide function pointer, set once before the
 * library is used from several threads; the default writes one line to stderr.
 */
#include <stdarg.h>
#include <stdio.h>

#include "backend.h" /* emi_warn, emi_info */

static em_log_handler handler;   /* NULL: the default (stderr) */
static void *handler_user;

em_log_handler em_set_log_handler(em_log_handler fn, void *user)
{
    em_log_handler prev = handler;
    handler = fn;
    handler_user = fn != NULL ? user : NULL;
    return prev;
}

static void emit(em_log_level level, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (handler != NULL) {
        handler(handler_user, level, msg);
        return;
    }
    fprintf(stderr, level == EM_LEVEL_WARNING ? "ember: warning: %s\n" : "ember: %s\n", msg);
}

void emi_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(EM_LEVEL_WARNING, fmt, ap);
    va_end(ap);
}

void emi_info(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(EM_LEVEL_INFO, fmt, ap);
    va_end(ap);
}
