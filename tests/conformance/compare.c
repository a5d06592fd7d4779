/*
 * compare.c: the recording against the case's `expected`.
 *
 * Both trees have the same shape; every quantity of `expected` must be recorded and every recorded
 * quantity must be expected (a missing or extra entry or field is a failure). Counters and indices
 * (the keys in int_keys) must be equal; every other number passes when
 * |got - expected| <= atol + rtol * |expected| (the case's tolerance). Quantities are compared in
 * the order a run produces them (training_step_calls first, final last), entry by entry, so the
 * first mismatch reported is the earliest point where the run diverged.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "conformance.h"

typedef struct cmp {
    double rtol, atol;
    char *out;
    size_t out_len;
    bool found;
    bool verbose;
    int max_report, reported;
} cmp;

static const char *const int_keys[] = {"epoch", "batch_idx", "global_step", "global_step_before", "step_count",
                                       "optimizer", "params_with_grad", "accumulate_grad_batches", "current_epoch",
                                       "optimizer_step_counts", "estimated_stepping_batches", "shape",
                                       "sample_indices", "rank", "callback", "stopped_epoch",
                                       "wait_count", NULL};

static bool is_int_key(const char *key)
{
    for (const char *const *k = int_keys; key != NULL && *k != NULL; k++)
        if (strcmp(*k, key) == 0)
            return true;
    return false;
}

static bool done(const cmp *c)
{
    return c->found && (!c->verbose || c->reported >= c->max_report);
}

static void report(cmp *c, const char *fmt, ...) EM_PRINTF(2, 3);
static void report(cmp *c, const char *fmt, ...)
{
    char msg[CONF_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!c->found) {
        snprintf(c->out, c->out_len, "%s", msg);
        c->found = true;
    }
    if (c->verbose && c->reported < c->max_report)
        fprintf(stderr, "  mismatch %s\n", msg);
    c->reported++;
}

static void fmt_value(const cJSON *v, char *buf, size_t len)
{
    if (v == NULL) {
        snprintf(buf, len, "nothing");
    } else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (isfinite(d) && floor(d) == d && fabs(d) < 1e15)
            snprintf(buf, len, "%.0f", d);
        else
            snprintf(buf, len, "%.10g", d);
    } else {
        char *s = cJSON_PrintUnformatted(v);
        if (s == NULL) {
            snprintf(buf, len, "?");
            return;
        }
        if (strlen(s) > 160)
            snprintf(buf, len, "%.157s...", s);
        else
            snprintf(buf, len, "%s", s);
        cJSON_free(s);
    }
}

static void walk(cmp *c, const char *path, const char *key, const cJSON *e, const cJSON *a);

static void walk_number(cmp *c, const char *path, const char *key, const cJSON *e, const cJSON *a)
{
    char es[200], as[200];
    if (!cJSON_IsNumber(a)) {
        fmt_value(e, es, sizeof es);
        fmt_value(a, as, sizeof as);
        report(c, "%s: expected %s, got %s", path, es, as);
        return;
    }
    double ev = e->valuedouble, av = a->valuedouble;
    bool ok;
    if (is_int_key(key))
        ok = ev == av;
    else if (isnan(ev))
        ok = isnan(av);
    else
        ok = fabs(av - ev) <= c->atol + c->rtol * fabs(ev); /* false for a NaN got */
    if (!ok) {
        fmt_value(e, es, sizeof es);
        fmt_value(a, as, sizeof as);
        report(c, "%s: expected %s, got %s", path, es, as);
    }
}

static void walk_array(cmp *c, const char *path, const char *key, const cJSON *e, const cJSON *a)
{
    char es[200], as[200];
    if (!cJSON_IsArray(a)) {
        fmt_value(e, es, sizeof es);
        fmt_value(a, as, sizeof as);
        report(c, "%s: expected a list %s, got %s", path, es, as);
        return;
    }
    int ne = cJSON_GetArraySize(e), na = cJSON_GetArraySize(a);
    const cJSON *ei = e->child, *ai = a->child;
    char sub[512];
    for (int i = 0; ei != NULL && ai != NULL && !done(c); i++, ei = ei->next, ai = ai->next) {
        snprintf(sub, sizeof sub, "%s[%d]", path, i);
        walk(c, sub, key, ei, ai);
    }
    if (done(c) || ne == na)
        return;
    if (na < ne) {
        fmt_value(cJSON_GetArrayItem(e, na), es, sizeof es);
        report(c, "%s[%d]: missing entry (expected %d entries, got %d): expected %s", path, na, ne, na, es);
    } else {
        fmt_value(cJSON_GetArrayItem(a, ne), as, sizeof as);
        report(c, "%s[%d]: extra entry (expected %d entries, got %d): got %s", path, ne, ne, na, as);
    }
}

static void walk_object(cmp *c, const char *path, const cJSON *e, const cJSON *a)
{
    char es[200], as[200], sub[512];
    if (!cJSON_IsObject(a)) {
        fmt_value(e, es, sizeof es);
        fmt_value(a, as, sizeof as);
        report(c, "%s: expected %s, got %s", path, es, as);
        return;
    }
    for (const cJSON *ek = e->child; ek != NULL && !done(c); ek = ek->next) {
        snprintf(sub, sizeof sub, "%s%s%s", path, path[0] ? "." : "", ek->string);
        const cJSON *ak = cJSON_GetObjectItemCaseSensitive(a, ek->string);
        if (ak == NULL) {
            fmt_value(ek, es, sizeof es);
            report(c, "%s: expected %s, got nothing (not recorded)", sub, es);
            continue;
        }
        walk(c, sub, ek->string, ek, ak);
    }
    for (const cJSON *ak = a->child; ak != NULL && !done(c); ak = ak->next) {
        if (cJSON_GetObjectItemCaseSensitive(e, ak->string) != NULL)
            continue;
        snprintf(sub, sizeof sub, "%s%s%s", path, path[0] ? "." : "", ak->string);
        fmt_value(ak, as, sizeof as);
        report(c, "%s: expected nothing, got %s", sub, as);
    }
}

static void walk(cmp *c, const char *path, const char *key, const cJSON *e, const cJSON *a)
{
    char es[200], as[200];
    if (cJSON_IsNumber(e)) {
        walk_number(c, path, key, e, a);
    } else if (cJSON_IsArray(e)) {
        walk_array(c, path, key, e, a);
    } else if (cJSON_IsObject(e)) {
        walk_object(c, path, e, a);
    } else {
        bool same = (cJSON_IsNull(e) && cJSON_IsNull(a)) || (cJSON_IsTrue(e) && cJSON_IsTrue(a)) ||
                    (cJSON_IsFalse(e) && cJSON_IsFalse(a)) ||
                    (cJSON_IsString(e) && cJSON_IsString(a) && strcmp(e->valuestring, a->valuestring) == 0);
        if (!same) {
            fmt_value(e, es, sizeof es);
            fmt_value(a, as, sizeof as);
            report(c, "%s: expected %s, got %s", path, es, as);
        }
    }
}

bool conf_compare(const cJSON *expected, const cJSON *actual, double rtol, double atol, char *out,
                  size_t out_len, bool verbose, int max_report)
{
    cmp c = {.rtol = rtol, .atol = atol, .out = out, .out_len = out_len, .verbose = verbose,
             .max_report = max_report};
    out[0] = '\0';
    /* the order a run produces them in */
    static const char *const order[] = {"training_step_calls", "optimizer_steps", "validation_step_calls",
                                        "epochs", "epoch_ends", "early_stopping", "per_rank",
                                        "final", NULL};
    for (const char *const *k = order; *k != NULL && !done(&c); k++) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(expected, *k);
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(actual, *k);
        if (e == NULL && a == NULL)
            continue;
        char es[200], as[200];
        if (e == NULL) {
            fmt_value(a, as, sizeof as);
            report(&c, "%s: expected nothing, got %s", *k, as);
        } else if (a == NULL) {
            fmt_value(e, es, sizeof es);
            report(&c, "%s: expected %s, got nothing (not recorded)", *k, es);
        } else {
            walk(&c, *k, *k, e, a);
        }
    }
    /* anything else in expected is a quantity this runner does not know how to record */
    for (const cJSON *e = expected->child; e != NULL && !done(&c); e = e->next) {
        bool known = false;
        for (const char *const *k = order; *k != NULL && !known; k++)
            known = strcmp(*k, e->string) == 0;
        if (!known)
            report(&c, "%s: expected quantity is not recorded by this runner", e->string);
    }
    return !c.found;
}
