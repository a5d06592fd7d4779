/* model_checkpoint.c: Lightning's ModelCheckpoint, a built-in callback written as any user's callback is:
 * on the public API (the trainer's properties, em_trainer_save_checkpoint_ex, em_trainer_broadcast,
 * em_trainer_reduce_boolean_decision), plus the log handler for its messages, atomic_file.c's sweep of stale
 * temporary files and its links, and distributed.c's sharing of rank 0's outcome.
 *
 * Lightning: callbacks/model_checkpoint.py (2.2.5). The monitored value is a float32 tensor there
 * (callback_metrics holds tensors), so the top-k comparisons are made in float32, strictly (torch.lt /
 * torch.gt). The file names are formatted as Python's str.format formats a 0-dim tensor's item().
 */
#define _POSIX_C_SOURCE 200809L

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "atomic_file.h" /* emi_atomic_remove_stale, emi_atomic_link */
#include "model_checkpoint.h"
#include "distributed.h" /* emi_dist_share_rank0_status */
#include "backend.h"     /* emi_fail, emi_info, emi_warn */
#include "ember/io.h"
#include "ember/trainer.h"

enum { PATH_CAP = 4096 };

typedef struct topk_entry {
    char *path;
    float score;
} topk_entry;

typedef struct model_checkpoint {
    em_callback_ops ops; /* this callback's own table: its name is Lightning's state_key, which keeps two
                            ModelCheckpoints' states apart in a checkpoint */
    char *state_key;
    /* arguments */
    char *dirpath; /* NULL until resolved (when not given) */
    bool dirpath_given;
    char *filename; /* NULL = "{epoch}-{step}" */
    char *monitor;  /* NULL = None */
    char *last_name, *ext;
    bool verbose, save_last, auto_insert, version_counter, max_mode;
    int64_t save_top_k, every_n_train_steps, every_n_epochs;
    double train_time_interval; /* NAN = None */
    int save_on_train_epoch_end; /* -1 = None */
    /* state (Lightning's attributes) */
    int64_t last_global_step_saved;
    double last_time_checked; /* NAN = None */
    bool has_current_score, has_best_score, val_has_run, missing_warned;
    bool saving; /* inside its own em_trainer_save_checkpoint call */
    bool save_weights_only, save_last_link;
    float current_score, best_model_score, kth_value;
    topk_entry *best_k;
    size_t n_best_k, cap_best_k;
    char *kth_best_model_path, *best_model_path, *last_model_path, *last_checkpoint_saved;
} model_checkpoint;

static char *dup_str(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

/* Replace *slot with a copy of s ("" for NULL). */
static em_status set_str(char **slot, const char *s)
{
    char *d = dup_str(s != NULL ? s : "");
    if (d == NULL)
        return emi_fail(EM_ENOMEM, "ModelCheckpoint: out of memory");
    free(*slot);
    *slot = d;
    return EM_OK;
}

/* ---- Python's format(value, spec) ------------------------------------------------------------------- */

/* repr() of a Python float: the shortest digits that read back, fixed notation for exponents in [-4, 16). */
static void py_repr(char *out, size_t cap, double v)
{
    if (isnan(v)) {
        snprintf(out, cap, "nan");
        return;
    }
    if (isinf(v)) {
        snprintf(out, cap, "%sinf", v < 0 ? "-" : "");
        return;
    }
    char e[40];
    int digits = 17;
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, v);
        if (strtod(e, NULL) == v) {
            digits = p;
            break;
        }
    }
    snprintf(e, sizeof e, "%.*e", digits - 1, v);
    int exp10 = atoi(strchr(e, 'e') + 1);
    if (exp10 >= -4 && exp10 < 16) {
        int decimals = digits - 1 - exp10;
        snprintf(out, cap, "%.*f", decimals < 1 ? 1 : decimals, v);
    } else {
        snprintf(out, cap, "%s", e);
    }
}

/* format(value, spec), Python's format-spec mini-language for int and float: [[fill]align][sign][#][0]
 * [width][.precision][type], type one of d e E f F g G % or none. An integral float takes 'd' too (Python
 * would refuse a float there; the value is printed as the integer it is). */
static em_status py_format(char *out, size_t cap, const char *spec, double v, bool is_int, const char *field)
{
    char fill = ' ', align = 0, sign = '-', type = 0;
    bool alt = false, zero = false;
    int width = 0, precision = -1;
    const char *s = spec;
    if (s[0] != '\0' && (s[1] == '<' || s[1] == '>' || s[1] == '^' || s[1] == '=')) {
        fill = s[0];
        align = s[1];
        s += 2;
    } else if (s[0] == '<' || s[0] == '>' || s[0] == '^' || s[0] == '=') {
        align = s[0];
        s++;
    }
    if (*s == '+' || *s == '-' || *s == ' ')
        sign = *s++;
    if (*s == '#') {
        alt = true;
        s++;
    }
    if (*s == '0') {
        zero = true;
        s++;
    }
    while (*s >= '0' && *s <= '9' && width < 1000)
        width = width * 10 + (*s++ - '0');
    if (*s == '.') {
        s++;
        if (*s < '0' || *s > '9')
            return emi_fail(EM_EINVAL, "ModelCheckpoint: {%s:%s}: Format specifier missing precision", field, spec);
        precision = 0;
        while (*s >= '0' && *s <= '9' && precision < 100)
            precision = precision * 10 + (*s++ - '0');
    }
    if (*s != '\0')
        type = *s++;
    if (*s != '\0' || (type != 0 && strchr("deEfFgG%", type) == NULL))
        return emi_fail(EM_EINVAL, "ModelCheckpoint: {%s:%s}: Invalid format specifier (ember formats d, e, E, "
                                   "f, F, g, G, %% and none)", field, spec);
    if (type == 'd' && !is_int && v != floor(v))
        return emi_fail(EM_EINVAL, "ModelCheckpoint: {%s:%s}: Unknown format code 'd' for object of type "
                                   "'float' (the value is %g)", field, spec, v);
    if (zero && align == 0) {
        fill = '0';
        align = '=';
    }
    if (align == 0)
        align = '>';
    /* the body without sign */
    char body[512], flags[8] = "%";
    double a = fabs(v);
    bool negative = signbit(v) && !(is_int && v == 0);
    if (alt)
        strcat(flags, "#");
    if ((type == 0 || type == 'd') && (is_int || type == 'd')) {
        snprintf(body, sizeof body, "%.0f", a);
    } else if (type == 0 && precision < 0) {
        py_repr(body, sizeof body, a);
    } else if (type == 0) { /* like 'g', with at least one digit after the point in fixed notation */
        char f[16];
        snprintf(f, sizeof f, "%s.*g", flags);
        snprintf(body, sizeof body, f, precision == 0 ? 1 : precision, a);
        if (isfinite(a) && strpbrk(body, ".e") == NULL && strlen(body) + 2 < sizeof body)
            strcat(body, ".0");
    } else if (type == '%') {
        char f[16];
        snprintf(f, sizeof f, "%s.*f%%%%", flags);
        snprintf(body, sizeof body, f, precision < 0 ? 6 : precision, a * 100.0);
    } else {
        char f[16];
        snprintf(f, sizeof f, "%s.*%c", flags, type);
        snprintf(body, sizeof body, f, precision < 0 ? 6 : precision, a);
    }
    char sgn[2] = {0, 0};
    if (negative)
        sgn[0] = '-';
    else if (sign == '+')
        sgn[0] = '+';
    else if (sign == ' ')
        sgn[0] = ' ';
    size_t len = strlen(sgn) + strlen(body);
    size_t pad = (size_t)width > len ? (size_t)width - len : 0;
    size_t left = align == '<' ? 0 : align == '^' ? pad / 2 : pad, right = pad - left;
    size_t o = 0;
#define PUT(c)                                                                                                 \
    do {                                                                                                       \
        if (o + 1 < cap)                                                                                       \
            out[o] = (c);                                                                                      \
        o++;                                                                                                   \
    } while (0)
    if (align == '=') {
        if (sgn[0])
            PUT(sgn[0]);
        for (size_t i = 0; i < left; i++)
            PUT(fill);
    } else {
        for (size_t i = 0; i < left; i++)
            PUT(fill);
        if (sgn[0])
            PUT(sgn[0]);
    }
    for (const char *c = body; *c != '\0'; c++)
        PUT(*c);
    for (size_t i = 0; i < right; i++)
        PUT(fill);
#undef PUT
    if (cap > 0)
        out[o < cap ? o : cap - 1] = '\0';
    return EM_OK;
}

/* ---- names: _format_checkpoint_name, format_checkpoint_name ------------------------------------------- */

typedef struct candidates {
    const char *const *names;
    const double *values;
    size_t n;
    int64_t epoch, step; /* the integers "epoch" and "step" */
    bool has_epoch, has_step;
} candidates;

static bool candidate(const candidates *c, const char *name, size_t len, double *v, bool *is_int)
{
    if (len == 5 && strncmp(name, "epoch", 5) == 0 && c->has_epoch) {
        *v = (double)c->epoch;
        *is_int = true;
        return true;
    }
    if (len == 4 && strncmp(name, "step", 4) == 0 && c->has_step) {
        *v = (double)c->step;
        *is_int = true;
        return true;
    }
    for (size_t i = 0; i < c->n; i++)
        if (strlen(c->names[i]) == len && strncmp(c->names[i], name, len) == 0) {
            *v = c->values[i];
            *is_int = false;
            return true;
        }
    return false;
}

/* A growing string. */
typedef struct sbuf {
    char *s;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t len)
{
    if (b->oom)
        return;
    if (b->n + len + 1 > b->cap) {
        size_t cap = (b->n + len + 1) * 2;
        char *p = realloc(b->s, cap);
        if (p == NULL) {
            b->oom = true;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, len);
    b->n += len;
    b->s[b->n] = '\0';
}

/* Lightning's _format_checkpoint_name: each "{name" up to ':' or '}' is a field; with auto_insert it
 * becomes "name=" and the value; a missing name reads the integer 0. */
static em_status format_template(sbuf *out, const char *tmpl, const candidates *c, bool auto_insert)
{
    const char *p = tmpl;
    while (*p != '\0') {
        if (*p != '{') {
            const char *q = strchr(p, '{');
            size_t len = q != NULL ? (size_t)(q - p) : strlen(p);
            sb_add(out, p, len);
            p += len;
            continue;
        }
        const char *name = p + 1;
        size_t len = strcspn(name, ":}");
        if (name[len] == '\0') { /* no field: Python's format would refuse it; keep it as it is */
            sb_add(out, p, strlen(p));
            break;
        }
        if (len == 0)
            return emi_fail(EM_EINVAL, "ModelCheckpoint: the file name template \"%s\" has a field with no name",
                            tmpl);
        char spec[64] = "";
        const char *end = name + len;
        if (*end == ':') {
            const char *close = strchr(end, '}');
            if (close == NULL)
                return emi_fail(EM_EINVAL, "ModelCheckpoint: the file name template \"%s\": expected '}' before "
                                           "the end of the string", tmpl);
            size_t sl = (size_t)(close - end - 1);
            if (sl >= sizeof spec)
                return emi_fail(EM_EINVAL, "ModelCheckpoint: the file name template \"%s\": format spec too long",
                                tmpl);
            memcpy(spec, end + 1, sl);
            spec[sl] = '\0';
            end = close;
        }
        char field[256];
        snprintf(field, sizeof field, "%.*s", (int)(len < 200 ? len : 200), name);
        double v = 0;
        bool is_int = true;
        if (!candidate(c, name, len, &v, &is_int)) {
            v = 0;
            is_int = true; /* torch.tensor(0) */
        }
        if (auto_insert) {
            sb_add(out, name, len);
            sb_add(out, "=", 1);
        }
        char val[600];
        em_status s = py_format(val, sizeof val, spec, v, is_int, field);
        if (s != EM_OK)
            return s;
        sb_add(out, val, strlen(val));
        p = end + 1;
    }
    return out->oom ? emi_fail(EM_ENOMEM, "ModelCheckpoint: out of memory") : EM_OK;
}

/* Lightning: format_checkpoint_name(metrics, filename, ver). A new string in *out. */
static em_status format_name(const model_checkpoint *mc, const candidates *c, const char *filename, int64_t ver,
                             char **out)
{
    *out = NULL;
    sbuf b = {0};
    if (mc->dirpath != NULL && mc->dirpath[0] != '\0') {
        sb_add(&b, mc->dirpath, strlen(mc->dirpath));
        if (mc->dirpath[strlen(mc->dirpath) - 1] != '/')
            sb_add(&b, "/", 1);
    }
    const char *tmpl = filename != NULL ? filename : mc->filename;
    if (tmpl == NULL || tmpl[0] == '\0')
        tmpl = "{epoch}-{step}";
    em_status s = format_template(&b, tmpl, c, mc->auto_insert);
    if (s == EM_OK && ver != 0) {
        char v[32];
        snprintf(v, sizeof v, "-v%lld", (long long)ver);
        sb_add(&b, v, strlen(v));
    }
    if (s == EM_OK)
        sb_add(&b, mc->ext, strlen(mc->ext));
    if (s == EM_OK && b.oom)
        s = emi_fail(EM_ENOMEM, "ModelCheckpoint: out of memory");
    if (s != EM_OK) {
        free(b.s);
        return s;
    }
    *out = b.s != NULL ? b.s : dup_str("");
    return *out != NULL ? EM_OK : emi_fail(EM_ENOMEM, "ModelCheckpoint: out of memory");
}

/* ---- paths ---------------------------------------------------------------------------------------------- */

/* An absolute, lexically normalised copy of `path` ("~" expanded): Lightning's
 * os.path.realpath(os.path.expanduser(dirpath)) without resolving symbolic links. */
static char *absolute_path(const char *path)
{
    char buf[2 * PATH_CAP + 2];
    const char *home = getenv("HOME");
    int w;
    if ((path[0] == '~' && (path[1] == '/' || path[1] == '\0')) && home != NULL)
        w = snprintf(buf, sizeof buf, "%s%s", home, path + 1);
    else if (path[0] == '/')
        w = snprintf(buf, sizeof buf, "%s", path);
    else {
        char cwd[PATH_CAP];
        if (getcwd(cwd, sizeof cwd) == NULL)
            return NULL;
        w = snprintf(buf, sizeof buf, "%s/%s", cwd, path);
    }
    if (w < 0 || (size_t)w >= sizeof buf)
        return NULL;
    /* normalise: drop "", ".", and ".." with its parent */
    char *out = malloc(strlen(buf) + 2);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    const char *p = buf;
    while (*p != '\0') {
        while (*p == '/')
            p++;
        if (*p == '\0')
            break;
        size_t len = strcspn(p, "/");
        if (len == 1 && p[0] == '.') {
            /* skip */
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--; /* the '/' */
        } else {
            out[o++] = '/';
            memcpy(out + o, p, len);
            o += len;
        }
        p += len;
    }
    if (o == 0)
        out[o++] = '/';
    out[o] = '\0';
    return out;
}

/* mkdir -p of the directory part of `file`. */
static em_status make_parent_dirs(const char *file)
{
    char buf[PATH_CAP];
    int w = snprintf(buf, sizeof buf, "%s", file);
    if (w < 0 || (size_t)w >= sizeof buf)
        return emi_fail(EM_EIO, "ModelCheckpoint: the path %s is too long", file);
    char *slash = strrchr(buf, '/');
    if (slash == NULL || slash == buf)
        return EM_OK;
    *slash = '\0';
    for (char *p = buf + 1; *p != '\0'; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return emi_fail(EM_EIO, "ModelCheckpoint: cannot create the directory %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return emi_fail(EM_EIO, "ModelCheckpoint: cannot create the directory %s: %s", buf, strerror(errno));
    return EM_OK;
}

static void parent_dir(const char *file, char *out, size_t cap)
{
    const char *slash = strrchr(file, '/');
    if (slash == NULL)
        snprintf(out, cap, ".");
    else if (slash == file)
        snprintf(out, cap, "/");
    else
        snprintf(out, cap, "%.*s", (int)(slash - file), file);
}

/* ---- the trainer's side: existence (broadcast), saving and removing (rank 0) ---------------------------- */

/* Lightning: file_exists: rank 0 looks, every rank gets its answer. */
static em_status file_exists(em_trainer *t, const char *path, bool *exists)
{
    struct stat st;
    unsigned char e = em_trainer_is_global_zero(t) ? (stat(path, &st) == 0) : 0;
    em_status s = em_trainer_broadcast(t, &e, sizeof e, 0);
    *exists = e != 0;
    return s;
}

/* Lightning: _save_checkpoint: trainer.save_checkpoint (collective; written by rank 0), then the bookkeeping. */
static em_status save_checkpoint(model_checkpoint *mc, em_trainer *t, em_module *m, const char *path)
{
    (void)m;
    em_status s = EM_OK;
    if (em_trainer_is_global_zero(t)) {
        s = make_parent_dirs(path);
        if (s == EM_OK) {
            char dir[PATH_CAP];
            parent_dir(path, dir, sizeof dir);
            emi_atomic_remove_stale(dir);
        }
    }
    /* every rank calls it (it gathers the ranks' RNG states); a rank-0 failure is every rank's */
    mc->saving = true;
    em_status saved = em_trainer_save_checkpoint_ex(t, path, mc->save_weights_only);
    mc->saving = false;
    if (s != EM_OK)
        return s;
    if (saved != EM_OK)
        return saved;
    mc->last_global_step_saved = em_trainer_global_step(t);
    return set_str(&mc->last_checkpoint_saved, path);
}

/* `target` as a path from directory `dir` (both absolute and normalised, as absolute_path makes them):
 * os.path.relpath(target, dir). NULL when out of memory. */
static char *relative_path(const char *target, const char *dir)
{
    /* skip the common leading components (whole names between slashes) */
    const char *t = target, *d = dir;
    for (;;) {
        while (*t == '/')
            t++;
        while (*d == '/')
            d++;
        size_t tl = strcspn(t, "/"), dl = strcspn(d, "/");
        if (tl == 0 || tl != dl || strncmp(t, d, tl) != 0)
            break;
        t += tl;
        d += dl;
    }
    size_t ups = 0; /* the components of dir left: one "../" each */
    while (*d != '\0') {
        while (*d == '/')
            d++;
        size_t dl = strcspn(d, "/");
        ups += dl > 0;
        d += dl;
    }
    char *out = malloc(ups * 3 + strlen(t) + 1);
    if (out == NULL)
        return NULL;
    out[0] = '\0';
    for (size_t k = 0; k < ups; k++)
        strcat(out, "../");
    strcat(out, t);
    return out;
}

/* Lightning: _link_checkpoint: rank 0 makes `link` a relative symbolic link to `target` (a copy where links
 * cannot be made), then every rank waits for it and returns its outcome. */
static em_status link_checkpoint(em_trainer *t, const char *target, const char *link)
{
    em_status s = EM_OK;
    if (em_trainer_is_global_zero(t)) {
        char dir[PATH_CAP];
        parent_dir(link, dir, sizeof dir);
        char *rel = NULL;
        s = make_parent_dirs(link);
        if (s == EM_OK && (rel = relative_path(target, dir)) == NULL)
            s = emi_fail(EM_ENOMEM, "ModelCheckpoint: out of memory");
        if (s == EM_OK)
            s = emi_atomic_link("ModelCheckpoint", rel, target, link);
        free(rel);
    }
    return emi_dist_share_rank0_status(t, s, "ModelCheckpoint");
}

/* Lightning: _should_remove_checkpoint: not the file just written, not the one this fit resumed from, and
 * only inside dirpath. */
static bool should_remove(const model_checkpoint *mc, const em_trainer *t, const char *previous, const char *current)
{
    if (strcmp(previous, current) == 0)
        return false;
    char *abs_prev = absolute_path(previous);
    if (abs_prev == NULL)
        return false;
    const char *resumed = em_trainer_ckpt_path(t);
    char *abs_resumed = resumed != NULL ? absolute_path(resumed) : NULL;
    bool is_resume = abs_resumed != NULL && strcmp(abs_resumed, abs_prev) == 0;
    free(abs_resumed);
    if (is_resume) {
        free(abs_prev);
        return false;
    }
    size_t dl = strlen(mc->dirpath);
    bool inside = strncmp(abs_prev, mc->dirpath, dl) == 0 && (abs_prev[dl] == '/' || mc->dirpath[dl - 1] == '/') &&
                  strlen(abs_prev) > dl + 1;
    free(abs_prev);
    return inside;
}

/* Lightning: strategy.remove_checkpoint (rank 0; a file already gone is no error). */
static em_status remove_checkpoint(em_trainer *t, const char *path)
{
    if (!em_trainer_is_global_zero(t))
        return EM_OK;
    if (unlink(path) != 0 && errno != ENOENT)
        return emi_fail(EM_EIO, "ModelCheckpoint: cannot remove %s: %s", path, strerror(errno));
    return EM_OK;
}

/* ---- the saving logic -------------------------------------------------------------------------------------- */

/* Lightning: _monitor_candidates: callback_metrics with the integers epoch and step. */
typedef struct cand_store {
    candidates c;
    const char **names;
    double *values;
} cand_store;

static em_status monitor_candidates(em_trainer *t, cand_store *cs)
{
    size_t n = em_trainer_num_callback_metrics(t);
    cs->names = calloc(n + 1, sizeof *cs->names);
    cs->values = calloc(n + 1, sizeof *cs->values);
    if (cs->names == NULL || cs->values == NULL) {
        free(cs->names);
        free(cs->values);
        return emi_fail(EM_ENOMEM, "ModelCheckpoint: out of memory");
    }
    cs->c = (candidates){.names = cs->names, .values = cs->values, .n = 0, .has_epoch = true, .has_step = true,
                         .epoch = em_trainer_current_epoch(t), .step = em_trainer_global_step(t)};
    for (size_t i = 0; i < n; i++) {
        double v = 0;
        const char *name = em_trainer_callback_metric_at(t, i, &v);
        if (name == NULL)
            continue;
        if (strcmp(name, "epoch") == 0 && isfinite(v)) /* self.log("epoch", ...) wins, as an int */
            cs->c.epoch = (int64_t)v;
        else if (strcmp(name, "step") == 0 && isfinite(v))
            cs->c.step = (int64_t)v;
        cs->names[cs->c.n] = name;
        cs->values[cs->c.n] = v;
        cs->c.n++;
    }
    return EM_OK;
}

static void cand_free(cand_store *cs)
{
    free(cs->names);
    free(cs->values);
}

static bool monitor_value(const model_checkpoint *mc, const candidates *c, float *out)
{
    double v;
    bool is_int;
    if (!candidate(c, mc->monitor, strlen(mc->monitor), &v, &is_int))
        return false;
    *out = (float)v;
    return true;
}

/* Lightning: _get_metric_interpolated_filepath_name */
static em_status interpolated_path(model_checkpoint *mc, em_trainer *t, const candidates *c, const char *del,
                                   char **out)
{
    em_status s = format_name(mc, c, NULL, 0, out);
    if (s != EM_OK || !mc->version_counter)
        return s;
    for (int64_t ver = 1;; ver++) {
        bool exists = false;
        if ((s = file_exists(t, *out, &exists)) != EM_OK || !exists || (del != NULL && strcmp(*out, del) == 0))
            return s;
        free(*out);
        if ((s = format_name(mc, c, NULL, ver, out)) != EM_OK)
            return s;
    }
}

static bool lt_or_gt(const model_checkpoint *mc, float a, float b)
{
    return mc->max_mode ? a > b : a < b;
}

/* Lightning: check_monitor_top_k. Under DDP the decision is unanimous, as Lightning's
 * reduce_boolean_decision(all=True): each rank judges its own monitored value (which differ when the
 * metric was logged without sync_dist) and a checkpoint is saved only when every rank says so. */
static em_status check_monitor_top_k(model_checkpoint *mc, em_trainer *t, bool has, float current, bool *out)
{
    *out = false;
    if (!has)
        return EM_OK;
    if (mc->save_top_k == -1 || (int64_t)mc->n_best_k < mc->save_top_k) {
        *out = true;
        return EM_OK;
    }
    float kth = 0;
    for (size_t i = 0; i < mc->n_best_k; i++)
        if (strcmp(mc->best_k[i].path, mc->kth_best_model_path) == 0)
            kth = mc->best_k[i].score;
    return em_trainer_reduce_boolean_decision(t, lt_or_gt(mc, current, kth), true, out);
}

static void topk_remove(model_checkpoint *mc, const char *path)
{
    for (size_t i = 0; i < mc->n_best_k; i++)
        if (strcmp(mc->best_k[i].path, path) == 0) {
            free(mc->best_k[i].path);
            memmove(mc->best_k + i, mc->best_k + i + 1, (mc->n_best_k - i - 1) * sizeof *mc->best_k);
            mc->n_best_k--;
            return;
        }
}

/* best_k_models[path] = score: a new key goes last, an existing one keeps its place (a dict). */
static em_status topk_set(model_checkpoint *mc, const char *path, float score)
{
    for (size_t i = 0; i < mc->n_best_k; i++)
        if (strcmp(mc->best_k[i].path, path) == 0) {
            mc->best_k[i].score = score;
            return EM_OK;
        }
    if (mc->n_best_k == mc->cap_best_k) {
        size_t cap = mc->cap_best_k ? mc->cap_best_k * 2 : 8;
        topk_entry *p = realloc(mc->best_k, cap * sizeof *p);
        if (p == NULL)
            return emi_fail(EM_ENOMEM, "ModelCheckpoint: out of memory");
        mc->best_k = p;
        mc->cap_best_k = cap;
    }
    char *d = dup_str(path);
    if (d == NULL)
        return emi_fail(EM_ENOMEM, "ModelCheckpoint: out of memory");
    mc->best_k[mc->n_best_k++] = (topk_entry){.path = d, .score = score};
    return EM_OK;
}

/* Python's max(d, key=d.get) / min(...): the first key with the largest / smallest value. */
static size_t topk_extreme(const model_checkpoint *mc, bool largest)
{
    size_t best = 0;
    for (size_t i = 1; i < mc->n_best_k; i++)
        if (largest ? mc->best_k[i].score > mc->best_k[best].score : mc->best_k[i].score < mc->best_k[best].score)
            best = i;
    return best;
}

/* Lightning: _update_best_and_save */
static em_status update_best_and_save(model_checkpoint *mc, em_trainer *t, em_module *m, float current,
                                      const candidates *c)
{
    int64_t k = mc->save_top_k == -1 ? (int64_t)mc->n_best_k + 1 : mc->save_top_k;
    char *del = NULL;
    em_status s = EM_OK;
    if ((int64_t)mc->n_best_k == k && k > 0) {
        del = dup_str(mc->kth_best_model_path);
        if (del == NULL)
            return emi_fail(EM_ENOMEM, "ModelCheckpoint: out of memory");
        topk_remove(mc, del);
    }
    if (isnan(current)) /* do not save nan, replace with +/- inf */
        current = mc->max_mode ? -INFINITY : INFINITY;
    char *path = NULL;
    if ((s = interpolated_path(mc, t, c, del, &path)) != EM_OK)
        goto out;
    mc->current_score = current;
    mc->has_current_score = true;
    if ((s = topk_set(mc, path, current)) != EM_OK)
        goto out;
    if ((int64_t)mc->n_best_k == k) {
        size_t i = topk_extreme(mc, !mc->max_mode);
        if ((s = set_str(&mc->kth_best_model_path, mc->best_k[i].path)) != EM_OK)
            goto out;
        mc->kth_value = mc->best_k[i].score;
    }
    size_t b = topk_extreme(mc, mc->max_mode);
    if ((s = set_str(&mc->best_model_path, mc->best_k[b].path)) != EM_OK)
        goto out;
    mc->best_model_score = mc->best_k[b].score;
    mc->has_best_score = true;
    if (mc->verbose && em_trainer_is_global_zero(t))
        emi_info("Epoch %lld, global step %lld: '%s' reached %0.5f (best %0.5f), saving model to '%s' as top %lld",
                 (long long)c->epoch, (long long)c->step, mc->monitor, (double)current, (double)mc->best_model_score,
                 path, (long long)k);
    if ((s = save_checkpoint(mc, t, m, path)) != EM_OK)
        goto out;
    if (del != NULL && should_remove(mc, t, del, path))
        s = remove_checkpoint(t, del);
out:
    free(del);
    free(path);
    return s;
}

/* Lightning: _save_none_monitor_checkpoint */
static em_status save_none_monitor(model_checkpoint *mc, em_trainer *t, em_module *m, const candidates *c)
{
    char *path = NULL, *previous = NULL;
    em_status s = interpolated_path(mc, t, c, mc->best_model_path, &path);
    if (s != EM_OK)
        return s;
    previous = mc->best_model_path;
    mc->best_model_path = path; /* set before saving: it is part of the state */
    path = NULL;
    s = save_checkpoint(mc, t, m, mc->best_model_path);
    if (s == EM_OK && mc->save_top_k == 1 && previous != NULL && previous[0] != '\0' &&
        should_remove(mc, t, previous, mc->best_model_path))
        s = remove_checkpoint(t, previous);
    free(previous);
    return s;
}

/* Lightning: _save_topk_checkpoint */
static em_status save_topk(model_checkpoint *mc, em_trainer *t, em_module *m, const candidates *c)
{
    if (mc->save_top_k == 0)
        return EM_OK;
    if (mc->monitor == NULL)
        return save_none_monitor(mc, t, m, c);
    float current = 0;
    bool has = monitor_value(mc, c, &current);
    if (!has) {
        char names[1024] = ""; /* list(monitor_candidates): callback_metrics, then epoch and step when not logged */
        size_t off = 0;
        for (size_t i = 0; i < c->n + 2 && off + 8 < sizeof names; i++) {
            const char *nm = i < c->n ? c->names[i] : i == c->n ? "epoch" : "step";
            bool logged = false;
            for (size_t j = 0; i >= c->n && j < c->n; j++)
                logged |= strcmp(c->names[j], nm) == 0;
            if (logged)
                continue;
            int w = snprintf(names + off, sizeof names - off, "%s'%s'", off ? ", " : "", nm);
            if (w < 0)
                break;
            off += (size_t)w;
        }
        char msg[1600];
        snprintf(msg, sizeof msg, "`ModelCheckpoint(monitor='%s')` could not find the monitored key in the returned "
                                  "metrics: [%s]. HINT: Did you call `log('%s', value)` in the `LightningModule`?",
                 mc->monitor, names, mc->monitor);
        if (mc->val_has_run)
            return emi_fail(EM_EINVAL, "%s", msg);
        if (!mc->missing_warned && em_trainer_is_global_zero(t))
            emi_warn("%s", msg);
        mc->missing_warned = true;
    }
    bool save = false;
    em_status s = check_monitor_top_k(mc, t, has, current, &save);
    if (s != EM_OK)
        return s;
    if (save)
        return update_best_and_save(mc, t, m, current, c);
    if (mc->verbose && em_trainer_is_global_zero(t))
        emi_info("Epoch %lld, global step %lld: '%s' was not in top %lld", (long long)c->epoch, (long long)c->step,
                 mc->monitor, (long long)mc->save_top_k);
    return EM_OK;
}

/* Lightning: _save_last_checkpoint */
static em_status save_last(model_checkpoint *mc, em_trainer *t, em_module *m, const candidates *c)
{
    if (!mc->save_last)
        return EM_OK;
    char *path = NULL;
    em_status s = format_name(mc, c, mc->last_name, 0, &path);
    for (int64_t ver = 1; s == EM_OK && mc->version_counter; ver++) {
        bool exists = false;
        if ((s = file_exists(t, path, &exists)) != EM_OK || !exists || strcmp(path, mc->last_model_path) == 0)
            break;
        free(path);
        path = NULL;
        s = format_name(mc, c, mc->last_name, ver, &path);
    }
    if (s != EM_OK) {
        free(path);
        return s;
    }
    char *previous = mc->last_model_path;
    mc->last_model_path = path; /* set before saving: it is part of the state */
    if (mc->save_last_link && mc->last_checkpoint_saved[0] != '\0' && mc->save_top_k != 0)
        s = link_checkpoint(t, mc->last_checkpoint_saved, path);
    else
        s = save_checkpoint(mc, t, m, path);
    if (s == EM_OK && previous[0] != '\0' && should_remove(mc, t, previous, path))
        s = remove_checkpoint(t, previous);
    free(previous);
    return s;
}

/* Lightning: _should_skip_saving_checkpoint */
static bool should_skip(const model_checkpoint *mc, const em_trainer *t)
{
    return em_trainer_sanity_checking(t) || mc->last_global_step_saved == em_trainer_global_step(t);
}

/* Lightning: _should_save_on_train_epoch_end */
static bool save_on_train_epoch_end(const model_checkpoint *mc, const em_trainer *t)
{
    if (mc->save_on_train_epoch_end != -1)
        return mc->save_on_train_epoch_end == 1;
    if (em_trainer_check_val_every_n_epoch(t) != 1)
        return false;
    if (em_trainer_num_val_batches(t) == 0)
        return true;
    return em_trainer_val_check_interval(t).value == 1.0;
}

static double monotonic_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- the hooks ------------------------------------------------------------------------------------------------ */

/* Lightning: __resolve_ckpt_dir, broadcast from rank 0 (setup). */
static em_status resolve_dirpath(model_checkpoint *mc, em_trainer *t)
{
    if (mc->dirpath_given)
        return EM_OK;
    char buf[PATH_CAP] = "";
    if (em_trainer_is_global_zero(t)) {
        const char *log_dir = em_trainer_log_dir(t);
        const char *base = log_dir != NULL ? log_dir : em_trainer_default_root_dir(t);
        char *abs = absolute_path(base != NULL ? base : ".");
        if (abs == NULL)
            return emi_fail(EM_ENOMEM, "ModelCheckpoint: cannot resolve the directory %s", base);
        snprintf(buf, sizeof buf, "%s%scheckpoints", abs, abs[strlen(abs) - 1] == '/' ? "" : "/");
        free(abs);
    }
    em_status s = em_trainer_broadcast(t, buf, sizeof buf, 0);
    if (s != EM_OK)
        return s;
    buf[sizeof buf - 1] = '\0';
    return set_str(&mc->dirpath, buf);
}

/* Lightning: setup (the directory, broadcast from rank 0; the warning about a directory in use) and the
 * sweep of temporary files a killed save left. */
static em_status mc_on_fit_start(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)m;
    model_checkpoint *mc = em_callback_state(cb);
    mc->val_has_run = false;
    mc->missing_warned = false;
    if (em_trainer_ckpt_path(t) == NULL)
        mc->last_global_step_saved = 0; /* a fresh fit counts its steps from 0 (a resumed one: state_load) */
    em_status s = resolve_dirpath(mc, t);
    if (s != EM_OK)
        return s;
    if (em_trainer_is_global_zero(t)) {
        emi_atomic_remove_stale(mc->dirpath);
        struct stat st;
        if (mc->save_top_k != 0 && stat(mc->dirpath, &st) == 0 && S_ISDIR(st.st_mode)) {
            char probe[PATH_CAP];
            snprintf(probe, sizeof probe, "%s", mc->dirpath);
            bool empty = true;
            DIR *d = opendir(probe);
            if (d != NULL) {
                struct dirent *e;
                while ((e = readdir(d)) != NULL)
                    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
                        empty = false;
                        break;
                    }
                closedir(d);
            }
            if (!empty)
                emi_warn("Checkpoint directory %s exists and is not empty.", mc->dirpath);
        }
    }
    return EM_OK;
}

static em_status mc_on_train_start(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)t;
    (void)m;
    model_checkpoint *mc = em_callback_state(cb);
    mc->last_time_checked = monotonic_seconds();
    return EM_OK;
}

static em_status save_both(model_checkpoint *mc, em_trainer *t, em_module *m, bool topk)
{
    cand_store cs;
    em_status s = monitor_candidates(t, &cs);
    if (s != EM_OK)
        return s;
    if (topk)
        s = save_topk(mc, t, m, &cs.c);
    if (s == EM_OK)
        s = save_last(mc, t, m, &cs.c);
    cand_free(&cs);
    return s;
}

/* Lightning: on_train_batch_end */
static em_status mc_on_train_batch_end(em_callback *cb, em_trainer *t, em_module *m, const em_tensor *loss,
                                       const em_batch *b, int64_t batch_idx)
{
    (void)loss;
    (void)b;
    (void)batch_idx;
    model_checkpoint *mc = em_callback_state(cb);
    if (should_skip(mc, t))
        return EM_OK;
    int64_t step = em_trainer_global_step(t);
    bool skip_batch = mc->every_n_train_steps < 1 || step % mc->every_n_train_steps != 0;
    bool skip_time = true;
    double now = monotonic_seconds();
    if (!isnan(mc->train_time_interval)) {
        unsigned char st = isnan(mc->last_time_checked) || now - mc->last_time_checked < mc->train_time_interval;
        em_status s = em_trainer_broadcast(t, &st, sizeof st, 0); /* rank 0's clock decides */
        if (s != EM_OK)
            return s;
        skip_time = st != 0;
    }
    if (skip_batch && skip_time)
        return EM_OK;
    if (!skip_time)
        mc->last_time_checked = now;
    return save_both(mc, t, m, true);
}

static bool epoch_due(const model_checkpoint *mc, const em_trainer *t)
{
    return mc->every_n_epochs >= 1 && (em_trainer_current_epoch(t) + 1) % mc->every_n_epochs == 0;
}

/* Lightning: on_train_epoch_end */
static em_status mc_on_train_epoch_end(em_callback *cb, em_trainer *t, em_module *m)
{
    model_checkpoint *mc = em_callback_state(cb);
    if (should_skip(mc, t) || !save_on_train_epoch_end(mc, t))
        return EM_OK;
    return save_both(mc, t, m, epoch_due(mc, t));
}

/* Lightning: on_validation_end */
static em_status mc_on_validation_end(em_callback *cb, em_trainer *t, em_module *m)
{
    model_checkpoint *mc = em_callback_state(cb);
    if (!em_trainer_sanity_checking(t) && em_trainer_num_val_batches(t) > 0)
        mc->val_has_run = true; /* Lightning: val_loop._has_run */
    if (should_skip(mc, t) || save_on_train_epoch_end(mc, t))
        return EM_OK;
    return save_both(mc, t, m, epoch_due(mc, t));
}

static void mc_destroy(void *state)
{
    model_checkpoint *mc = state;
    free(mc->dirpath);
    free(mc->filename);
    free(mc->monitor);
    free(mc->last_name);
    free(mc->ext);
    for (size_t i = 0; i < mc->n_best_k; i++)
        free(mc->best_k[i].path);
    free(mc->best_k);
    free(mc->kth_best_model_path);
    free(mc->best_model_path);
    free(mc->last_model_path);
    free(mc->last_checkpoint_saved);
    free(mc->state_key);
    free(mc);
}

/* ---- state (Lightning's state_dict / load_state_dict), kept in checkpoints ------------------------------ */

static cJSON *score_json(float v)
{
    if (isnan(v))
        return cJSON_CreateString("nan");
    if (isinf(v))
        return cJSON_CreateString(v > 0 ? "inf" : "-inf");
    return cJSON_CreateNumber((double)v);
}

/* A score from score_json's form; false for anything else. */
static bool score_from(const cJSON *j, float *out)
{
    if (cJSON_IsNumber(j)) {
        *out = (float)j->valuedouble;
        return true;
    }
    if (!cJSON_IsString(j))
        return false;
    if (strcmp(j->valuestring, "nan") == 0)
        *out = NAN;
    else if (strcmp(j->valuestring, "inf") == 0)
        *out = INFINITY;
    else if (strcmp(j->valuestring, "-inf") == 0)
        *out = -INFINITY;
    else
        return false;
    return true;
}

static em_status mc_state_save(em_callback *cb, em_trainer *t, void **bytes, size_t *n)
{
    model_checkpoint *mc = em_callback_state(cb);
    cJSON *o = cJSON_CreateObject();
    cJSON *k = cJSON_CreateObject();
    bool ok = o != NULL && k != NULL;
    ok = ok && cJSON_AddItemToObject(o, "monitor", mc->monitor != NULL ? cJSON_CreateString(mc->monitor) : cJSON_CreateNull());
    ok = ok && cJSON_AddItemToObject(o, "best_model_score", mc->has_best_score ? score_json(mc->best_model_score) : cJSON_CreateNull());
    ok = ok && cJSON_AddStringToObject(o, "best_model_path", mc->best_model_path) != NULL;
    ok = ok && cJSON_AddItemToObject(o, "current_score", mc->has_current_score ? score_json(mc->current_score) : cJSON_CreateNull());
    ok = ok && cJSON_AddItemToObject(o, "dirpath", mc->dirpath != NULL ? cJSON_CreateString(mc->dirpath) : cJSON_CreateNull());
    for (size_t i = 0; ok && i < mc->n_best_k; i++)
        ok = cJSON_AddItemToObject(k, mc->best_k[i].path, score_json(mc->best_k[i].score));
    ok = ok && cJSON_AddItemToObject(o, "best_k_models", k);
    if (ok)
        k = NULL; /* owned by o */
    ok = ok && cJSON_AddStringToObject(o, "kth_best_model_path", mc->kth_best_model_path) != NULL;
    ok = ok && cJSON_AddItemToObject(o, "kth_value", score_json(mc->kth_value));
    ok = ok && cJSON_AddStringToObject(o, "last_model_path", mc->last_model_path) != NULL;
    /* an ember addition: a fit resumed right after a save does not save the same step again, as the
     * uninterrupted one does not (Lightning starts it from 0) */
    ok = ok && cJSON_AddNumberToObject(o, "_last_global_step_saved",
                                         (double)(mc->saving ? em_trainer_global_step(t) : mc->last_global_step_saved)) != NULL;
    char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    cJSON_Delete(k);
    if (text == NULL)
        return em_error_set(EM_ENOMEM, "ModelCheckpoint: out of memory");
    *n = strlen(text);
    *bytes = text; /* cJSON allocates with malloc (the default hooks) */
    return EM_OK;
}

static const char *json_str(const cJSON *o, const char *key, bool *ok)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsString(j))
        return j->valuestring;
    *ok = false;
    return NULL;
}

static em_status mc_state_load(em_callback *cb, em_trainer *t, const void *bytes, size_t n)
{
    model_checkpoint *mc = em_callback_state(cb);
    cJSON *o = cJSON_ParseWithLength(bytes, n);
    bool ok = cJSON_IsObject(o);
    if (o == NULL)
        em_clear_error();
    const char *best_path = ok ? json_str(o, "best_model_path", &ok) : NULL;
    const char *kth_path = ok ? json_str(o, "kth_best_model_path", &ok) : NULL;
    const char *last_path = ok ? json_str(o, "last_model_path", &ok) : NULL;
    const cJSON *dir = ok ? cJSON_GetObjectItemCaseSensitive(o, "dirpath") : NULL;
    const cJSON *best_k = ok ? cJSON_GetObjectItemCaseSensitive(o, "best_k_models") : NULL;
    const cJSON *best_score = ok ? cJSON_GetObjectItemCaseSensitive(o, "best_model_score") : NULL;
    const cJSON *kth = ok ? cJSON_GetObjectItemCaseSensitive(o, "kth_value") : NULL;
    float best_v = 0, kth_v = 0;
    ok = ok && (cJSON_IsString(dir) || cJSON_IsNull(dir)) && cJSON_IsObject(best_k) &&
         (cJSON_IsNull(best_score) || score_from(best_score, &best_v)) && score_from(kth, &kth_v);
    for (const cJSON *e = ok ? best_k->child : NULL; ok && e != NULL; e = e->next) {
        float v;
        ok = e->string != NULL && score_from(e, &v);
    }
    if (!ok) {
        cJSON_Delete(o);
        return em_error_set(EM_EINVAL, "ModelCheckpoint: the checkpoint's state of this callback is not what "
                                       "ModelCheckpoint writes");
    }
    em_status s = resolve_dirpath(mc, t); /* state_load runs before on_fit_start */
    const char *from = cJSON_IsString(dir) ? dir->valuestring : NULL;
    bool same_dir = (from == NULL && mc->dirpath == NULL) ||
                    (from != NULL && mc->dirpath != NULL && strcmp(from, mc->dirpath) == 0);
    if (same_dir) {
        for (size_t i = 0; i < mc->n_best_k; i++)
            free(mc->best_k[i].path);
        mc->n_best_k = 0;
        for (const cJSON *e = best_k->child; s == EM_OK && e != NULL; e = e->next) {
            float v = 0;
            score_from(e, &v);
            s = topk_set(mc, e->string, v);
        }
        mc->has_best_score = !cJSON_IsNull(best_score);
        mc->best_model_score = best_v;
        mc->kth_value = kth_v;
        if (s == EM_OK)
            s = set_str(&mc->kth_best_model_path, kth_path);
        if (s == EM_OK)
            s = set_str(&mc->last_model_path, last_path);
        const cJSON *saved = cJSON_GetObjectItemCaseSensitive(o, "_last_global_step_saved");
        if (cJSON_IsNumber(saved) && saved->valuedouble >= 0 && saved->valuedouble < 9e15)
            mc->last_global_step_saved = (int64_t)saved->valuedouble;
    } else if (em_trainer_is_global_zero(t)) {
        emi_warn("The dirpath has changed from '%s' to '%s', therefore `best_model_score`, `kth_best_model_path`, "
                 "`kth_value`, `last_model_path` and `best_k_models` won't be reloaded. Only `best_model_path` will "
                 "be reloaded.", from != NULL ? from : "None", mc->dirpath != NULL ? mc->dirpath : "None");
    }
    if (s == EM_OK)
        s = set_str(&mc->best_model_path, best_path);
    cJSON_Delete(o);
    return s;
}

static const em_callback_ops mc_ops_template = {
    .version = EM_CALLBACK_OPS_VERSION,
    .name = "ModelCheckpoint",
    .on_fit_start = mc_on_fit_start,
    .on_train_start = mc_on_train_start,
    .on_train_batch_end = mc_on_train_batch_end,
    .on_train_epoch_end = mc_on_train_epoch_end,
    .on_validation_end = mc_on_validation_end,
    .destroy = mc_destroy,
    .monitoring = true,
    .state_save = mc_state_save,
    .state_load = mc_state_load,
};

/* ---- construction: __init__ and its checks ----------------------------------------------------------------- */

static em_callback *mc_fail(model_checkpoint *mc, em_status code, const char *msg)
{
    if (mc != NULL)
        mc_destroy(mc);
    emi_fail(code, "em_model_checkpoint: %s", msg);
    return NULL;
}

em_callback *em_model_checkpoint(const em_model_checkpoint_opts *opts)
{
    char msg[512];
    if (opts == NULL || opts->version < 1 || opts->version > EM_MODEL_CHECKPOINT_OPTS_VERSION)
        return mc_fail(NULL, EM_EINVAL, "opts is NULL or its version is not EM_MODEL_CHECKPOINT_OPTS_VERSION: start "
                                        "from EM_MODEL_CHECKPOINT_OPTS_INIT");
    const char *mode = opts->mode != NULL ? opts->mode : "min";
    if (strcmp(mode, "min") != 0 && strcmp(mode, "max") != 0) {
        snprintf(msg, sizeof msg, "`mode` can be min, max but got %s", mode);
        return mc_fail(NULL, EM_EINVAL, msg);
    }
    /* __init_triggers */
    int64_t every_n_epochs = opts->every_n_epochs, every_n_train_steps = opts->every_n_train_steps;
    bool time_set = !isnan(opts->train_time_interval);
    if (every_n_train_steps == EM_NONE && every_n_epochs == EM_NONE && !time_set) {
        every_n_epochs = 1;
        every_n_train_steps = 0;
    } else {
        every_n_epochs = every_n_epochs == EM_NONE ? 0 : every_n_epochs;
        every_n_train_steps = every_n_train_steps == EM_NONE ? 0 : every_n_train_steps;
    }
    /* __validate_init_configuration */
    if (opts->save_top_k < -1) {
        snprintf(msg, sizeof msg, "Invalid value for save_top_k=%lld. Must be >= -1", (long long)opts->save_top_k);
        return mc_fail(NULL, EM_EINVAL, msg);
    }
    if (every_n_train_steps < 0) {
        snprintf(msg, sizeof msg, "Invalid value for every_n_train_steps=%lld. Must be >= 0",
                 (long long)every_n_train_steps);
        return mc_fail(NULL, EM_EINVAL, msg);
    }
    if (every_n_epochs < 0) {
        snprintf(msg, sizeof msg, "Invalid value for every_n_epochs=%lld. Must be >= 0", (long long)every_n_epochs);
        return mc_fail(NULL, EM_EINVAL, msg);
    }
    if (time_set && !(opts->train_time_interval > 0))
        return mc_fail(NULL, EM_EINVAL, "train_time_interval must be a number of seconds > 0 (NAN = None)");
    if ((every_n_train_steps >= 1) + (every_n_epochs >= 1) + time_set > 1) {
        char ti[64];
        if (time_set)
            snprintf(ti, sizeof ti, "%g s", opts->train_time_interval);
        else
            snprintf(ti, sizeof ti, "None");
        snprintf(msg, sizeof msg, "Combination of parameters every_n_train_steps=%lld, every_n_epochs=%lld and "
                                  "train_time_interval=%s should be mutually exclusive.",
                 (long long)every_n_train_steps, (long long)every_n_epochs, ti);
        return mc_fail(NULL, EM_EINVAL, msg);
    }
    if (opts->monitor == NULL && opts->save_top_k != -1 && opts->save_top_k != 0 && opts->save_top_k != 1) {
        snprintf(msg, sizeof msg, "ModelCheckpoint(save_top_k=%lld, monitor=None) is not a valid configuration. No "
                                  "quantity for top_k to track.", (long long)opts->save_top_k);
        return mc_fail(NULL, EM_EINVAL, msg);
    }
    if (opts->save_on_train_epoch_end < -1 || opts->save_on_train_epoch_end > 1) {
        snprintf(msg, sizeof msg, "`save_on_train_epoch_end` is -1 (None), 0 or 1, got %d",
                 opts->save_on_train_epoch_end);
        return mc_fail(NULL, EM_EINVAL, msg);
    }
    if (opts->monitor != NULL && opts->monitor[0] == '\0')
        return mc_fail(NULL, EM_EINVAL, "`monitor` is empty: give a callback_metrics key or NULL (None)");
    model_checkpoint *mc = calloc(1, sizeof *mc);
    if (mc == NULL)
        return mc_fail(NULL, EM_ENOMEM, "out of memory");
    mc->max_mode = strcmp(mode, "max") == 0;
    mc->kth_value = mc->max_mode ? -INFINITY : INFINITY;
    mc->verbose = opts->verbose;
    mc->save_last = opts->save_last;
    mc->save_top_k = opts->save_top_k;
    mc->auto_insert = opts->auto_insert_metric_name;
    mc->version_counter = opts->enable_version_counter;
    mc->every_n_epochs = every_n_epochs;
    mc->every_n_train_steps = every_n_train_steps;
    mc->train_time_interval = opts->train_time_interval;
    mc->save_on_train_epoch_end = opts->save_on_train_epoch_end;
    mc->save_weights_only = opts->version >= 2 && opts->save_weights_only;
    mc->save_last_link = opts->version >= 2 && opts->save_last_link;
    mc->last_time_checked = NAN;
    bool oom = false;
    if (opts->dirpath != NULL && opts->dirpath[0] != '\0') {
        mc->dirpath = absolute_path(opts->dirpath);
        mc->dirpath_given = true;
        oom |= mc->dirpath == NULL;
    }
    if (opts->filename != NULL && opts->filename[0] != '\0')
        oom |= (mc->filename = dup_str(opts->filename)) == NULL;
    if (opts->monitor != NULL)
        oom |= (mc->monitor = dup_str(opts->monitor)) == NULL;
    oom |= (mc->last_name = dup_str(opts->last_name != NULL ? opts->last_name : "last")) == NULL;
    oom |= (mc->ext = dup_str(opts->file_extension != NULL ? opts->file_extension : ".ckpt")) == NULL;
    oom |= set_str(&mc->kth_best_model_path, "") != EM_OK || set_str(&mc->best_model_path, "") != EM_OK ||
           set_str(&mc->last_model_path, "") != EM_OK || set_str(&mc->last_checkpoint_saved, "") != EM_OK;
    if (oom)
        return mc_fail(mc, EM_ENOMEM, "out of memory (or the current directory cannot be read)");
    /* a template with an empty field is refused now rather than at the first save */
    candidates none = {0};
    for (int i = 0; i < 2; i++) {
        char *probe = NULL;
        if (format_name(mc, &none, i == 0 ? NULL : mc->last_name, 0, &probe) != EM_OK) {
            char why[512];
            snprintf(why, sizeof why, "%s", em_last_error());
            em_clear_error();
            return mc_fail(mc, EM_EINVAL, why);
        }
        free(probe);
    }
    /* Lightning's state_key: ModelCheckpoint{'monitor': ..., 'mode': ..., 'every_n_train_steps': ...,
     * 'every_n_epochs': ..., 'train_time_interval': ...} (the interval in seconds here) */
    char key[1024], mon[600], ti[64];
    if (mc->monitor != NULL)
        snprintf(mon, sizeof mon, "'%.100s'", mc->monitor); /* the key stays < 250 bytes (a tensor name) */
    else
        snprintf(mon, sizeof mon, "None");
    if (isnan(mc->train_time_interval))
        snprintf(ti, sizeof ti, "None");
    else
        snprintf(ti, sizeof ti, "%g", mc->train_time_interval);
    snprintf(key, sizeof key, "ModelCheckpoint{'monitor': %s, 'mode': '%s', 'every_n_train_steps': %lld, "
                              "'every_n_epochs': %lld, 'train_time_interval': %s}", mon, mc->max_mode ? "max" : "min",
             (long long)mc->every_n_train_steps, (long long)mc->every_n_epochs, ti);
    if ((mc->state_key = dup_str(key)) == NULL)
        return mc_fail(mc, EM_ENOMEM, "out of memory");
    mc->ops = mc_ops_template;
    mc->ops.name = mc->state_key;
    return em_callback_new(&mc->ops, mc);
}

/* ---- getters -------------------------------------------------------------------------------------------------- */

static const model_checkpoint *mc_of(const em_callback *cb)
{
    const em_callback_ops *ops = em_callback_get_ops(cb);
    return ops != NULL && ops->on_fit_start == mc_on_fit_start ? em_callback_state(cb) : NULL;
}

const char *em_model_checkpoint_best_model_path(const em_callback *cb)
{
    const model_checkpoint *mc = mc_of(cb);
    return mc != NULL ? mc->best_model_path : NULL;
}

bool em_model_checkpoint_best_model_score(const em_callback *cb, double *score)
{
    const model_checkpoint *mc = mc_of(cb);
    if (mc == NULL || !mc->has_best_score)
        return false;
    if (score != NULL)
        *score = (double)mc->best_model_score;
    return true;
}

bool em_model_checkpoint_current_score(const em_callback *cb, double *score)
{
    const model_checkpoint *mc = mc_of(cb);
    if (mc == NULL || !mc->has_current_score)
        return false;
    if (score != NULL)
        *score = (double)mc->current_score;
    return true;
}

const char *em_model_checkpoint_last_model_path(const em_callback *cb)
{
    const model_checkpoint *mc = mc_of(cb);
    return mc != NULL ? mc->last_model_path : NULL;
}

const char *em_model_checkpoint_kth_best_model_path(const em_callback *cb)
{
    const model_checkpoint *mc = mc_of(cb);
    return mc != NULL ? mc->kth_best_model_path : NULL;
}

double em_model_checkpoint_kth_value(const em_callback *cb)
{
    const model_checkpoint *mc = mc_of(cb);
    return mc != NULL ? (double)mc->kth_value : NAN;
}

size_t em_model_checkpoint_num_best_k(const em_callback *cb)
{
    const model_checkpoint *mc = mc_of(cb);
    return mc != NULL ? mc->n_best_k : 0;
}

const char *em_model_checkpoint_best_k(const em_callback *cb, size_t i, double *score)
{
    const model_checkpoint *mc = mc_of(cb);
    if (mc == NULL || i >= mc->n_best_k)
        return NULL;
    if (score != NULL)
        *score = (double)mc->best_k[i].score;
    return mc->best_k[i].path;
}

const char *em_model_checkpoint_dirpath(const em_callback *cb)
{
    const model_checkpoint *mc = mc_of(cb);
    return mc != NULL ? mc->dirpath : NULL;
}

int64_t em_model_checkpoint_format_name(const em_callback *cb, const char *const *names, const double *values,
                                        size_t n, const char *filename, int64_t ver, char *buf, size_t cap)
{
    const model_checkpoint *mc = mc_of(cb);
    if (mc == NULL) {
        emi_fail(EM_EINVAL, "em_model_checkpoint_format_name: not a ModelCheckpoint callback");
        return -1;
    }
    if (n > 0 && (names == NULL || values == NULL)) {
        emi_fail(EM_EINVAL, "em_model_checkpoint_format_name: names or values is NULL");
        return -1;
    }
    candidates c = {.names = names, .values = values, .n = n};
    for (size_t i = 0; i < n; i++) {
        if (names[i] == NULL) {
            emi_fail(EM_EINVAL, "em_model_checkpoint_format_name: names[%zu] is NULL", i);
            return -1;
        }
        if (strcmp(names[i], "epoch") == 0) {
            c.epoch = (int64_t)values[i];
            c.has_epoch = true;
        } else if (strcmp(names[i], "step") == 0) {
            c.step = (int64_t)values[i];
            c.has_step = true;
        }
    }
    char *out = NULL;
    if (format_name(mc, &c, filename, ver, &out) != EM_OK)
        return -1;
    size_t len = strlen(out);
    if (buf != NULL && cap > 0)
        snprintf(buf, cap, "%s", out);
    free(out);
    return (int64_t)len;
}

/* ---- Lightning's ckpt_path="last" ------------------------------------------------------------------------- */

typedef struct newest {
    char path[PATH_CAP];
    struct timespec mtime;
    bool found;
} newest;

static void consider(newest *best, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || strlen(path) >= sizeof best->path)
        return;
    if (best->found && (st.st_mtim.tv_sec < best->mtime.tv_sec ||
                        (st.st_mtim.tv_sec == best->mtime.tv_sec && st.st_mtim.tv_nsec <= best->mtime.tv_nsec)))
        return;
    snprintf(best->path, sizeof best->path, "%s", path);
    best->mtime = st.st_mtim;
    best->found = true;
}

/* Lightning: _find_last_checkpoints: names matching ^last... with the extension as their suffix. */
static void find_last_in_dir(newest *best, const model_checkpoint *mc, const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    size_t ln = strlen(mc->last_name), el = strlen(mc->ext);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len <= el || len < ln + el || strncmp(e->d_name, mc->last_name, ln) != 0 || strcmp(e->d_name + len - el, mc->ext) != 0)
            continue;
        char p[2 * PATH_CAP];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        consider(best, p);
    }
    closedir(d);
}

int emi_model_checkpoint_find_last(const em_trainer *t, em_callback *const *cbs, size_t n, char *out, size_t cap)
{
    newest best = {.found = false};
    bool any = false;
    if (cap > 0)
        out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const model_checkpoint *mc = mc_of(cbs[i]);
        if (mc == NULL)
            continue;
        any = true;
        if (mc->last_model_path != NULL && mc->last_model_path[0] != '\0')
            consider(&best, mc->last_model_path);
        if (mc->dirpath != NULL) {
            find_last_in_dir(&best, mc, mc->dirpath);
            continue;
        }
        const char *log_dir = em_trainer_log_dir(t);
        const char *base = log_dir != NULL ? log_dir : em_trainer_default_root_dir(t);
        char *abs = absolute_path(base != NULL ? base : ".");
        if (abs == NULL)
            continue;
        char dir[2 * PATH_CAP];
        snprintf(dir, sizeof dir, "%s%scheckpoints", abs, abs[strlen(abs) - 1] == '/' ? "" : "/");
        free(abs);
        find_last_in_dir(&best, mc, dir);
    }
    if (!any) {
        emi_fail(EM_EINVAL, "ckpt_path=\"last\" needs a ModelCheckpoint callback (em_model_checkpoint, added with "
                            "em_trainer_add_callback): it says where the last checkpoint is");
        return -1;
    }
    if (!best.found)
        return 0;
    if (strlen(best.path) >= cap) {
        emi_fail(EM_EINVAL, "ckpt_path=\"last\": the path %s is too long", best.path);
        return -1;
    }
    snprintf(out, cap, "%s", best.path);
    return 1;
}
