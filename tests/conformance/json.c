/* json.c: reading a case file and checked accessors. Every accessor names the JSON path in its
 * failure message, so a malformed or unsupported case says exactly what the runner could not use. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conformance.h"

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf != NULL) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        cap *= 2;
        char *nb = realloc(buf, cap + 1);
        if (nb == NULL)
            free(buf);
        buf = nb;
    }
    fclose(f);
    if (buf != NULL) {
        buf[n] = '\0';
        *len = n;
    }
    return buf;
}

/* The torch version a case file names in reference.torch, read from DIR/NAME.json (DIR: the directory
 * of `path`); false when the file cannot be read or has none. */
static bool twin_torch(const char *path, const char *name, char *torch, size_t torch_size)
{
    const char *slash = strrchr(path, '/');
    int dir_len = slash != NULL ? (int)(slash - path) + 1 : 0;
    char twin_path[4096];
    if (snprintf(twin_path, sizeof twin_path, "%.*s%s.json", dir_len, path, name) >= (int)sizeof twin_path)
        return false;
    size_t len = 0;
    char *text = read_file(twin_path, &len);
    if (text == NULL)
        return false;
    cJSON *doc = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *ref = doc != NULL ? cJSON_GetObjectItemCaseSensitive(doc, "reference") : NULL;
    const cJSON *t = ref != NULL ? cJSON_GetObjectItemCaseSensitive(ref, "torch") : NULL;
    const cJSON *n = doc != NULL ? cJSON_GetObjectItemCaseSensitive(doc, "name") : NULL;
    bool ok = cJSON_IsString(t) && cJSON_IsString(n) && strcmp(n->valuestring, name) == 0;
    if (ok)
        snprintf(torch, torch_size, "%s", t->valuestring);
    cJSON_Delete(doc);
    return ok;
}

/* depends_on: torch defaults the recorded outcome depends on which changed between torch majors
 * (cases/README.md). When the linked libtorch's major version differs from reference.torch's, a case
 * that depends on such a default is a SKIP: its numbers are right for the torch that recorded it. Its
 * `twin` names the case recorded on the other major (same directory), which covers the linked
 * libtorch: the skip says so, and a twin that is named but missing, or recorded on a major other than
 * the linked one, is a FAIL (coverage would be lost silently otherwise). */
static bool check_depends_on(conf_run *r, const cJSON *ref)
{
    const cJSON *deps = cj_get(r->doc, "depends_on");
    const cJSON *twin = cj_get(r->doc, "twin");
    if (twin != NULL && !cJSON_IsString(twin))
        return conf_fail(r, "twin is not a string (the name of the case recorded on the other torch)");
    if (deps == NULL)
        return twin == NULL ? true : conf_fail(r, "twin without depends_on: nothing says why a twin is needed");
    if (!cJSON_IsArray(deps))
        return conf_fail(r, "depends_on is not a list of strings");
    const char *recorded = NULL;
    if (!cj_req_string(r, ref, "torch", "reference", &recorded))
        return false;
    const char *linked = em_torch_version();
    bool other_major = atoi(recorded) != atoi(linked);
    for (const cJSON *d = deps->child; d != NULL; d = d->next) {
        if (!cJSON_IsString(d))
            return conf_fail(r, "depends_on is not a list of strings");
        if (strcmp(d->valuestring, "zero_grad_set_to_none_default") != 0)
            return conf_fail(r, "depends_on has \"%s\", which this runner does not know "
                                "(known: zero_grad_set_to_none_default)", d->valuestring);
    }
    /* the one known default, optimizer.zero_grad(): set_to_none=False on torch 1.x, True from 2.0 */
    if (!other_major)
        return true;
    if (twin == NULL)
        return conf_skip(r, "recorded on torch %s, whose zero_grad default differs from the linked "
                            "libtorch %s; no twin recorded on torch %d.x",
                         recorded, linked, atoi(linked));
    char twin_version[64];
    if (!twin_torch(r->path, twin->valuestring, twin_version, sizeof twin_version))
        return conf_fail(r, "recorded on torch %s, whose zero_grad default differs from the linked libtorch "
                            "%s; its twin %s.json (next to it) is missing or unreadable",
                         recorded, linked, twin->valuestring);
    if (atoi(twin_version) != atoi(linked))
        return conf_fail(r, "recorded on torch %s, and its twin %s on torch %s: neither matches the linked "
                            "libtorch %s", recorded, twin->valuestring, twin_version, linked);
    return conf_skip(r, "recorded on torch %s, whose zero_grad default differs from the linked libtorch %s; "
                        "its twin %s (recorded on torch %s) runs instead",
                     recorded, linked, twin->valuestring, twin_version);
}

bool conf_load(conf_run *r, const char *path)
{
    r->path = path;
    /* the case name defaults to the file name without .json, until `name` is read */
    const char *base = strrchr(path, '/');
    base = base != NULL ? base + 1 : path;
    snprintf(r->name, sizeof r->name, "%s", base);
    char *dot = strstr(r->name, ".json");
    if (dot != NULL)
        *dot = '\0';

    size_t len = 0;
    r->text = read_file(path, &len);
    if (r->text == NULL)
        return conf_fail(r, "cannot read %s: %s", path, strerror(errno));
    r->doc = cJSON_ParseWithLength(r->text, len);
    if (r->doc == NULL || !cJSON_IsObject(r->doc))
        return conf_fail(r, "%s is not a JSON object (parse error near \"%.40s\")", path,
                         cJSON_GetErrorPtr() != NULL ? cJSON_GetErrorPtr() : "?");

    static const char *const top[] = {"name", "description", "reference", "automatic_optimization",
                                      "behaviour", "model", "loss", "trainer", "optimizers",
                                      "lr_schedulers", "data", "initial_weights", "expected",
                                      "tolerance", "python_source", "notes", "depends_on", "twin", NULL};
    if (!cj_keys(r, r->doc, "case", top))
        return false;
    const char *name = NULL;
    if (!cj_req_string(r, r->doc, "name", "case", &name))
        return false;
    snprintf(r->name, sizeof r->name, "%s", name);

    /* reference: only CPU float32 runs are meaningful for the numbers */
    const cJSON *ref = NULL;
    if (!cj_req_object(r, r->doc, "reference", "case", &ref))
        return false;
    static const char *const ref_keys[] = {"lightning", "torch", "device", "dtype", "precision", "distributed",
                                          NULL};
    if (!cj_keys(r, ref, "reference", ref_keys))
        return false;
    const char *device = NULL;
    if (cj_get(ref, "device") != NULL) {
        if (!cj_req_string(r, ref, "device", "reference", &device))
            return false;
        if (strcmp(device, "cpu") != 0)
            return conf_fail(r, "reference.device \"%s\" is not supported (cpu only)", device);
    }

    if (!check_depends_on(r, ref))
        return false;

    if (!cj_req_bool(r, r->doc, "automatic_optimization", "case", &r->automatic))
        return false;
    if (!cj_req_object(r, r->doc, "expected", "case", &r->expected))
        return false;

    const cJSON *tol = NULL;
    r->rtol = 1e-5;
    r->atol = 1e-6;
    if (cj_get(r->doc, "tolerance") != NULL) {
        if (!cj_req_object(r, r->doc, "tolerance", "case", &tol))
            return false;
        static const char *const tol_keys[] = {"rtol", "atol", "reason", NULL};
        if (!cj_keys(r, tol, "tolerance", tol_keys) || !cj_opt_number(r, tol, "rtol", "tolerance", &r->rtol) ||
            !cj_opt_number(r, tol, "atol", "tolerance", &r->atol))
            return false;
    }

    const char *loss = NULL;
    if (!cj_req_string(r, r->doc, "loss", "case", &loss))
        return false;
    if (strcmp(loss, "mse_loss") == 0)
        r->loss = LOSS_MSE;
    else if (strcmp(loss, "binary_cross_entropy_with_logits") == 0)
        r->loss = LOSS_BCE_LOGITS;
    else if (strcmp(loss, "cross_entropy") == 0)
        r->loss = LOSS_CROSS_ENTROPY;
    else
        return conf_fail(r, "loss \"%s\" is not supported (mse_loss, binary_cross_entropy_with_logits, "
                            "cross_entropy)", loss);
    return true;
}

/* ---- accessors ------------------------------------------------------------------------------------ */

const cJSON *cj_get(const cJSON *obj, const char *key)
{
    return obj != NULL ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

bool cj_is_null_or_absent(const cJSON *obj, const char *key)
{
    const cJSON *v = cj_get(obj, key);
    return v == NULL || cJSON_IsNull(v);
}

bool cj_keys(conf_run *r, const cJSON *obj, const char *where, const char *const *allowed)
{
    if (!cJSON_IsObject(obj))
        return conf_fail(r, "%s is not an object", where);
    for (const cJSON *it = obj->child; it != NULL; it = it->next) {
        bool ok = false;
        for (const char *const *a = allowed; *a != NULL && !ok; a++)
            ok = strcmp(*a, it->string) == 0;
        if (!ok)
            return conf_fail(r, "%s has the key \"%s\", which this runner does not support", where,
                             it->string);
    }
    return true;
}

static const cJSON *req(conf_run *r, const cJSON *obj, const char *key, const char *where)
{
    const cJSON *v = cj_get(obj, key);
    if (v == NULL)
        conf_fail(r, "%s.%s is missing", where, key);
    return v;
}

bool cj_req_object(conf_run *r, const cJSON *obj, const char *key, const char *where, const cJSON **out)
{
    const cJSON *v = req(r, obj, key, where);
    if (v == NULL)
        return false;
    if (!cJSON_IsObject(v))
        return conf_fail(r, "%s.%s must be an object", where, key);
    *out = v;
    return true;
}

bool cj_req_array(conf_run *r, const cJSON *obj, const char *key, const char *where, const cJSON **out)
{
    const cJSON *v = req(r, obj, key, where);
    if (v == NULL)
        return false;
    if (!cJSON_IsArray(v))
        return conf_fail(r, "%s.%s must be a list", where, key);
    *out = v;
    return true;
}

bool cj_req_number(conf_run *r, const cJSON *obj, const char *key, const char *where, double *out)
{
    const cJSON *v = req(r, obj, key, where);
    if (v == NULL)
        return false;
    if (!cJSON_IsNumber(v))
        return conf_fail(r, "%s.%s must be a number", where, key);
    *out = v->valuedouble;
    return true;
}

bool cj_is_integral(const cJSON *v)
{
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && floor(v->valuedouble) == v->valuedouble &&
           fabs(v->valuedouble) < 9007199254740992.0;
}

bool cj_req_int(conf_run *r, const cJSON *obj, const char *key, const char *where, int64_t *out)
{
    const cJSON *v = req(r, obj, key, where);
    if (v == NULL)
        return false;
    if (!cj_is_integral(v))
        return conf_fail(r, "%s.%s must be an integer", where, key);
    *out = (int64_t)v->valuedouble;
    return true;
}

bool cj_req_bool(conf_run *r, const cJSON *obj, const char *key, const char *where, bool *out)
{
    const cJSON *v = req(r, obj, key, where);
    if (v == NULL)
        return false;
    if (!cJSON_IsBool(v))
        return conf_fail(r, "%s.%s must be true or false", where, key);
    *out = cJSON_IsTrue(v);
    return true;
}

bool cj_req_string(conf_run *r, const cJSON *obj, const char *key, const char *where, const char **out)
{
    const cJSON *v = req(r, obj, key, where);
    if (v == NULL)
        return false;
    if (!cJSON_IsString(v))
        return conf_fail(r, "%s.%s must be a string", where, key);
    *out = v->valuestring;
    return true;
}

bool cj_req_string_or_null(conf_run *r, const cJSON *obj, const char *key, const char *where,
                           const char **out)
{
    const cJSON *v = req(r, obj, key, where);
    if (v == NULL)
        return false;
    if (cJSON_IsNull(v)) {
        *out = NULL;
        return true;
    }
    if (!cJSON_IsString(v))
        return conf_fail(r, "%s.%s must be a string or null", where, key);
    *out = v->valuestring;
    return true;
}

bool cj_opt_number(conf_run *r, const cJSON *obj, const char *key, const char *where, double *out)
{
    return cj_is_null_or_absent(obj, key) || cj_req_number(r, obj, key, where, out);
}

bool cj_opt_int(conf_run *r, const cJSON *obj, const char *key, const char *where, int64_t *out)
{
    return cj_is_null_or_absent(obj, key) || cj_req_int(r, obj, key, where, out);
}

bool cj_opt_bool(conf_run *r, const cJSON *obj, const char *key, const char *where, bool *out)
{
    return cj_is_null_or_absent(obj, key) || cj_req_bool(r, obj, key, where, out);
}

bool cj_written_as_float(const conf_run *r, const char *key)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    /* search inside the trainer object (python_source has a "trainer" string too) */
    const char *tr = r->text;
    for (const char *q = strstr(r->text, "\"trainer\":"); q != NULL; q = strstr(q + 1, "\"trainer\":")) {
        const char *v = q + strlen("\"trainer\":");
        while (isspace((unsigned char)*v))
            v++;
        if (*v == '{') {
            tr = v;
            break;
        }
    }
    const char *p = strstr(tr, pat);
    if (p == NULL)
        return false;
    p += strlen(pat);
    while (isspace((unsigned char)*p))
        p++;
    for (; *p != '\0' && *p != ',' && *p != '}' && *p != ']' && !isspace((unsigned char)*p); p++)
        if (*p == '.' || *p == 'e' || *p == 'E')
            return true;
    return false;
}

/* ---- batch rules ------------------------------------------------------------------------------------- */

bool cj_rule(conf_run *r, const cJSON *obj, const char *where, conf_rule *out)
{
    memset(out, 0, sizeof *out);
    if (!cJSON_IsObject(obj))
        return conf_fail(r, "%s must be a batch rule object", where);
    const char *rule = NULL;
    if (!cj_req_string(r, obj, "rule", where, &rule))
        return false;
    if (strcmp(rule, "always") == 0 || strcmp(rule, "never") == 0) {
        static const char *const keys[] = {"rule", NULL};
        out->type = rule[0] == 'a' ? RULE_ALWAYS : RULE_NEVER;
        return cj_keys(r, obj, where, keys);
    }
    if (strcmp(rule, "mod") == 0) {
        static const char *const keys[] = {"rule", "modulus", "remainder", NULL};
        out->type = RULE_MOD;
        if (!cj_keys(r, obj, where, keys) || !cj_req_int(r, obj, "modulus", where, &out->modulus) ||
            !cj_req_int(r, obj, "remainder", where, &out->remainder))
            return false;
        if (out->modulus < 1)
            return conf_fail(r, "%s.modulus must be >= 1 (got %lld)", where, (long long)out->modulus);
        return true;
    }
    if (strcmp(rule, "indices") == 0) {
        static const char *const keys[] = {"rule", "batch_idx", NULL};
        const cJSON *list = NULL;
        out->type = RULE_INDICES;
        if (!cj_keys(r, obj, where, keys) || !cj_req_array(r, obj, "batch_idx", where, &list))
            return false;
        size_t n = (size_t)cJSON_GetArraySize(list);
        out->indices = calloc(n + 1, sizeof *out->indices);
        if (out->indices == NULL)
            return conf_fail(r, "out of memory");
        const cJSON *it;
        cJSON_ArrayForEach(it, list)
        {
            if (!cj_is_integral(it))
                return conf_fail(r, "%s.batch_idx must hold integers", where);
            out->indices[out->n_indices++] = (int64_t)it->valuedouble;
        }
        return true;
    }
    return conf_fail(r, "%s.rule \"%s\" is unknown (always, never, mod, indices)", where, rule);
}

bool conf_rule_match(const conf_rule *rule, int64_t batch_idx)
{
    switch (rule->type) {
    case RULE_ALWAYS:
        return true;
    case RULE_NEVER:
        return false;
    case RULE_MOD: {
        /* Python's % (the result has the divisor's sign) */
        int64_t m = batch_idx % rule->modulus;
        if (m < 0)
            m += rule->modulus;
        return m == rule->remainder;
    }
    case RULE_INDICES:
        for (size_t i = 0; i < rule->n_indices; i++)
            if (rule->indices[i] == batch_idx)
                return true;
        return false;
    }
    return false;
}
