/* opts.c: strict number parsing and getopt_long's error messages for the examples (see opts.h). */
#include "opts.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* strtol and friends skip leading blanks and accept an empty string as 0: both are refused here. */
static bool starts_like_a_number(const char *s)
{
    return s[0] != '\0' && !isspace((unsigned char)s[0]);
}

bool opts_long(const char *prog, const char *opt, const char *s, long lo, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = starts_like_a_number(s) ? strtol(s, &end, 10) : 0;
    if (end == NULL || *end != '\0' || errno != 0 || v < lo) {
        fprintf(stderr, "%s: %s needs an integer >= %ld (got '%s')\n", prog, opt, lo, s);
        return false;
    }
    *out = v;
    return true;
}

bool opts_seed(const char *prog, const char *opt, const char *s, unsigned long long *out)
{
    char *end = NULL;
    errno = 0;
    /* strtoull would take "-1" as ULLONG_MAX: a sign is refused before it gets the chance */
    unsigned long long v = starts_like_a_number(s) && s[0] != '-' ? strtoull(s, &end, 10) : 0;
    if (end == NULL || *end != '\0' || errno != 0) {
        fprintf(stderr, "%s: %s needs an integer >= 0 (got '%s')\n", prog, opt, s);
        return false;
    }
    *out = v;
    return true;
}

bool opts_number(const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = starts_like_a_number(s) ? strtod(s, &end) : 0;
    if (end == NULL || *end != '\0' || errno != 0 || !isfinite(v))
        return false;
    *out = v;
    return true;
}

bool opts_positive(const char *prog, const char *opt, const char *s, double *out)
{
    double v = 0;
    if (!opts_number(s, &v) || !(v > 0)) {
        fprintf(stderr, "%s: %s needs a number > 0 (got '%s')\n", prog, opt, s);
        return false;
    }
    *out = v;
    return true;
}

/* The long option whose getopt_long value is val, or NULL. */
static const struct option *by_value(const struct option *longopts, int val)
{
    for (const struct option *o = longopts; o->name != NULL; o++)
        if (o->flag == NULL && o->val == val)
            return o;
    return NULL;
}

void opts_rejected(const char *prog, const struct option *longopts, char *const argv[], int c)
{
    /* getopt_long has moved optind past the argument it rejected (except inside a cluster of short
     * options like -qx, where optopt names the bad letter) */
    const char *arg = argv[optind - 1];
    const struct option *o = by_value(longopts, optopt);
    if (c == ':') { /* a value is missing */
        if (o != NULL)
            fprintf(stderr, "%s: --%s needs a value\n", prog, o->name);
        else
            fprintf(stderr, "%s: -%c needs a value\n", prog, optopt);
        return;
    }
    if (strncmp(arg, "--", 2) == 0 && optopt != 0 && o != NULL) { /* "--flag=value" */
        fprintf(stderr, "%s: --%s takes no value (got '%s')\n", prog, o->name, arg);
        return;
    }
    if (strncmp(arg, "--", 2) == 0 && optopt == 0) {
        /* unknown, or a prefix of several options (getopt_long accepts an unambiguous prefix) */
        size_t len = strcspn(arg + 2, "=");
        int matches = 0;
        for (const struct option *p = longopts; p->name != NULL; p++)
            matches += strncmp(p->name, arg + 2, len) == 0;
        if (matches > 1) {
            fprintf(stderr, "%s: option '%.*s' is ambiguous; could be", prog, (int)(len + 2), arg);
            for (const struct option *p = longopts; p->name != NULL; p++)
                if (strncmp(p->name, arg + 2, len) == 0)
                    fprintf(stderr, " --%s", p->name);
            fprintf(stderr, " (see %s --help)\n", prog);
            return;
        }
        fprintf(stderr, "%s: unknown option '%.*s' (see %s --help)\n", prog, (int)(len + 2), arg, prog);
        return;
    }
    fprintf(stderr, "%s: unknown option '-%c' (see %s --help)\n", prog, optopt, prog);
}

bool opts_no_operands(const char *prog, int argc, char *const argv[])
{
    if (optind >= argc)
        return true;
    fprintf(stderr, "%s: unexpected argument '%s': only options are taken (see %s --help)\n", prog,
            argv[optind], prog);
    return false;
}
