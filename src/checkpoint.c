/* checkpoint.c: a checkpoint of a layer and its optimizers in one safetensors file (ember/io.h):
 * the parameters and buffers under "model.<name>", every optimizer's per-parameter state under
 * "optimizers.<k>.state.<i>.<key>" (torch's state_dict numbering and keys), and in the metadata
 * "ember.checkpoint" = "1" and "ember.optimizers" = a JSON list of each optimizer's name, step count
 * and parameter groups (the shapes of their parameters and every hyper-parameter).
 *
 * Schedulers: their state (scheduler.c flattens torch's state_dict) as "schedulers.<k>.state", a
 * float64 vector, their kinds in "ember.schedulers".
 * Not here yet (issue 10): the trainer's loop progress, RNG and loader state, callbacks' state,
 * resume inside em_trainer_fit. This file stands on the public API and the shim's optimizer
 * state functions (backend.h); weights.c writes and reads the tensors.
 */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "checkpoint.h"
#include "kvlist.h" /* emi_strdup */
#include "safetensors.h"
#include "weights.h"

#define CKPT_VERSION "1"

/* The public name that errors of a save start with (em_checkpoint_save, em_trainer_save_checkpoint). */
static _Thread_local const char *save_who = "em_checkpoint_save";
/* ... and those of a restore (em_checkpoint_load, em_trainer_fit_from). */
static _Thread_local const char *load_who = "em_checkpoint_load";

/* The hyper-parameters each built-in optimizer has (em_optimizer_get names). */
static const char *const *hparam_names(const char *opt)
{
    static const char *const sgd[] = {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", NULL};
    static const char *const adam[] = {"lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize", NULL};
    static const char *const rms[] = {"lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize", NULL};
    static const char *const ada[] = {"lr",  "lr_decay", "weight_decay", "initial_accumulator_value",
                                      "eps", "maximize", NULL};
    if (strcmp(opt, "SGD") == 0)
        return sgd;
    if (strcmp(opt, "Adam") == 0 || strcmp(opt, "AdamW") == 0)
        return adam;
    if (strcmp(opt, "RMSprop") == 0)
        return rms;
    if (strcmp(opt, "Adagrad") == 0)
        return ada;
    return NULL;
}

static const char *const lbfgs_hparams[] = {"lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change",
                                            "history_size", NULL};

/* The hyper-parameter names of group g of `opt` into out (NULL-terminated, at most cap - 1 names): the
 * built-in lists by kind, an optimizer written in C's own names. false for an unknown optimizer. */
static bool hparams_of(const em_optimizer *opt, size_t g, const char **out, size_t cap)
{
    int kind = emi_optimizer_kind_id(opt);
    const char *const *list = kind == 0 ? hparam_names(em_optimizer_name(opt)) : kind == 1 ? lbfgs_hparams : NULL;
    size_t n = 0;
    if (kind == 2) {
        n = emi_optimizer_c_hparams(opt, g, out, cap - 1);
        if (n > cap - 1)
            n = cap - 1;
    } else if (list != NULL) {
        for (; list[n] != NULL && n < cap - 1; n++)
            out[n] = list[n];
    } else {
        return false;
    }
    out[n] = NULL;
    return true;
}

#define MAX_HPARAMS 64

/* A growing list of (name, tensor) to write. */
typedef struct out_list {
    char **names;
    em_tensor **tensors;
    size_t n, cap;
    size_t opt; /* the optimizer being exported */
} out_list;

static em_status out_add(out_list *o, char *name, em_tensor *t)
{
    if (name == NULL)
        return emi_fail(EM_ENOMEM, "%s: out of memory", save_who);
    if (o->n == o->cap) {
        size_t cap = o->cap ? 2 * o->cap : 64;
        char **nn = realloc(o->names, cap * sizeof *nn);
        if (nn != NULL)
            o->names = nn;
        em_tensor **nt = realloc(o->tensors, cap * sizeof *nt);
        if (nt != NULL)
            o->tensors = nt;
        if (nn == NULL || nt == NULL) {
            free(name);
            return emi_fail(EM_ENOMEM, "%s: out of memory", save_who);
        }
        o->cap = cap;
    }
    o->names[o->n] = name;
    o->tensors[o->n++] = t;
    return EM_OK;
}

static char *fmt_name(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 1;
    char *s = malloc(n);
    if (s != NULL)
        snprintf(s, n, "%s%s", a, b);
    return s;
}

static em_status export_one(void *ctx, size_t param, const char *key, em_tensor *value)
{
    out_list *o = ctx;
    char buf[96];
    snprintf(buf, sizeof buf, "optimizers.%zu.state.%zu.", o->opt, param);
    return out_add(o, fmt_name(buf, key), value);
}

/* A number in the JSON exactly: cJSON prints 15 significant digits whenever they read back within
 * a relative DBL_EPSILON, which loses the last bit of a learning rate; 17 always read back exact. */
static bool add_exact(cJSON *obj, const char *name, double v)
{
    char buf[40];
    if (!isfinite(v)) {
        emi_fail(EM_EINVAL, "%s: the hyper-parameter \"%s\" is %g: JSON holds finite numbers only", save_who,
                 name, v);
        return false;
    }
    snprintf(buf, sizeof buf, "%.17g", v);
    return cJSON_AddRawToObject(obj, name, buf) != NULL;
}

/* The JSON description of opts[k]: name, step count, groups (shapes, hyper-parameters). */
static cJSON *describe(em_optimizer *opt)
{
    const char *name = em_optimizer_name(opt);
    const char *hp[MAX_HPARAMS];
    if (!hparams_of(opt, 0, hp, MAX_HPARAMS)) {
        emi_fail(EM_EUNSUPPORTED, "%s: the state of %s is not saved in checkpoints", save_who, name);
        return NULL;
    }
    /* an optimizer whose state cannot be saved is refused before anything is written */
    if (emi_optimizer_state_savable(opt, save_who) != EM_OK)
        return NULL;
    cJSON *o = cJSON_CreateObject();
    cJSON *groups = cJSON_AddArrayToObject(o, "param_groups");
    cJSON_AddStringToObject(o, "name", name);
    char count[32];
    snprintf(count, sizeof count, "%lld", (long long)em_optimizer_step_count(opt));
    cJSON_AddRawToObject(o, "step_count", count);
    for (size_t g = 0; g < em_optimizer_num_groups(opt); g++) {
        cJSON *grp = cJSON_CreateObject();
        cJSON_AddItemToArray(groups, grp);
        cJSON *shapes = cJSON_AddArrayToObject(grp, "shapes");
        const em_params *ps = em_optimizer_group_params(opt, g);
        for (size_t i = 0; i < em_params_size(ps); i++) {
            int64_t s[EM_MAX_DIMS];
            int nd = em_tensor_shape(em_params_get(ps, i), s, EM_MAX_DIMS);
            cJSON *shape = cJSON_CreateArray();
            for (int d = 0; d < nd; d++)
                cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)s[d]));
            cJSON_AddItemToArray(shapes, shape);
        }
        cJSON *h = cJSON_AddObjectToObject(grp, "hparams");
        hparams_of(opt, g, hp, MAX_HPARAMS);
        for (const char *const *n = hp; *n != NULL; n++) {
            double v;
            if (em_optimizer_get(opt, g, *n, &v) != EM_OK || !add_exact(h, *n, v)) {
                cJSON_Delete(o);
                return NULL;
            }
        }
    }
    return o;
}

em_status em_checkpoint_save(const char *path, const em_nn *m, em_optimizer *const *opts, size_t n_opts,
                             em_scheduler *const *scheds, size_t n_scheds, const em_safetensors_meta *meta,
                             size_t n_meta)
{
    if (m == NULL || (n_opts > 0 && opts == NULL) || (n_meta > 0 && meta == NULL) ||
        (n_scheds > 0 && scheds == NULL))
        return emi_fail(EM_EINVAL, "em_checkpoint_save: %s is NULL",
                        m == NULL ? "the layer" : n_meta > 0 && meta == NULL ? "meta"
                                                : n_opts > 0 && opts == NULL ? "opts" : "scheds");
    for (size_t i = 0; i < n_meta; i++)
        if (meta[i].key != NULL && strncmp(meta[i].key, "ember.", 6) == 0)
            return emi_fail(EM_EINVAL, "em_checkpoint_save: metadata keys starting with \"ember.\" are ember's own "
                            "(\"%s\")", meta[i].key);
    for (size_t k = 0; k < n_opts; k++)
        if (opts[k] == NULL)
            return emi_fail(EM_EINVAL, "em_checkpoint_save: optimizer %zu is NULL", k);
    return emi_checkpoint_write(path, "em_checkpoint_save", m, opts, n_opts, scheds, n_scheds, meta, n_meta, NULL,
                                NULL, 0);
}

em_status emi_checkpoint_write(const char *path, const char *who, const em_nn *m, em_optimizer *const *opts,
                               size_t n_opts, em_scheduler *const *scheds, size_t n_scheds,
                               const em_safetensors_meta *meta, size_t n_meta, const char *const *xnames,
                               em_tensor *const *xtensors, size_t n_x)
{
    em_status st = EM_OK;
    save_who = who;
    em_scope_begin();
    out_list o = {0};
    size_t np = m != NULL ? em_nn_num_parameters(m) : 0, nb = m != NULL ? em_nn_num_buffers(m) : 0;
    for (size_t i = 0; i < np + nb && st == EM_OK; i++)
        st = out_add(&o, fmt_name("model.", i < np ? em_nn_parameter_name(m, i) : em_nn_buffer_name(m, i - np)),
                     i < np ? em_nn_parameter(m, i) : em_nn_buffer(m, i - np));
    cJSON *list = cJSON_CreateArray();
    for (size_t k = 0; k < n_opts && st == EM_OK; k++) {
        cJSON *d = describe(opts[k]);
        if (d == NULL) {
            st = em_last_status();
            break;
        }
        cJSON_AddItemToArray(list, d);
        o.opt = k;
        st = emi_optimizer_state_export(opts[k], export_one, &o);
    }
    /* schedulers: their state as one float64 vector each, their kinds in the metadata */
    cJSON *slist = cJSON_CreateArray();
    for (size_t k = 0; k < n_scheds && st == EM_OK; k++) {
        size_t n = scheds[k] != NULL ? emi_scheduler_state_get(scheds[k], NULL, 0) : 0;
        if (scheds[k] == NULL)
            st = emi_fail(EM_EINVAL, "%s: scheduler %zu is NULL", save_who, k);
        else if (n == 0)
            st = em_last_status();
        double *v = st == EM_OK ? malloc(n * sizeof *v) : NULL;
        if (st == EM_OK && v == NULL)
            st = emi_fail(EM_ENOMEM, "%s: out of memory", save_who);
        if (st != EM_OK)
            break;
        emi_scheduler_state_get(scheds[k], v, n);
        em_tensor *t = em_tensor_from(v, EM_F64, (int64_t[]){(int64_t)n}, 1, NULL);
        free(v);
        char buf[64];
        snprintf(buf, sizeof buf, "schedulers.%zu.state", k);
        st = t == NULL ? em_last_status() : out_add(&o, fmt_name(buf, ""), t);
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "name", em_scheduler_name(scheds[k]));
        cJSON_AddItemToArray(slist, d);
    }
    for (size_t k = 0; k < n_x && st == EM_OK; k++)
        st = out_add(&o, emi_strdup(xnames[k]), xtensors[k]);
    char *json = st == EM_OK ? cJSON_PrintUnformatted(list) : NULL;
    char *sjson = st == EM_OK ? cJSON_PrintUnformatted(slist) : NULL;
    cJSON_Delete(list);
    cJSON_Delete(slist);
    if (st == EM_OK && (json == NULL || sjson == NULL))
        st = emi_fail(EM_ENOMEM, "%s: out of memory", save_who);
    em_safetensors_meta *all = st == EM_OK ? malloc((n_meta + 3) * sizeof *all) : NULL;
    if (st == EM_OK && all == NULL)
        st = emi_fail(EM_ENOMEM, "%s: out of memory", save_who);
    if (st == EM_OK) {
        all[0] = (em_safetensors_meta){"ember.checkpoint", CKPT_VERSION};
        all[1] = (em_safetensors_meta){"ember.optimizers", json};
        all[2] = (em_safetensors_meta){"ember.schedulers", sjson};
        if (n_meta > 0)
            memcpy(all + 3, meta, n_meta * sizeof *meta);
        st = em_safetensors_write(path, (const char *const *)o.names, o.tensors, o.n, all, n_meta + 3);
    }
    free(all);
    cJSON_free(json);
    cJSON_free(sjson);
    for (size_t i = 0; i < o.n; i++)
        free(o.names[i]);
    free(o.names);
    free(o.tensors);
    em_scope_end();
    return st;
}

/* ---- loading ---------------------------------------------------------------------------------------- */

/* One parameter's state read from the file. */
typedef struct param_state {
    const char **keys;  /* borrowed from the reader */
    em_tensor **values; /* owned by the open scope */
    size_t n, cap;
} param_state;

static bool param_state_push(param_state *ps, const char *key, em_tensor *v)
{
    if (ps->n == ps->cap) {
        size_t cap = ps->cap ? 2 * ps->cap : 8;
        const char **k = realloc(ps->keys, cap * sizeof *k);
        if (k != NULL)
            ps->keys = k;
        em_tensor **vv = realloc(ps->values, cap * sizeof *vv);
        if (vv != NULL)
            ps->values = vv;
        if (k == NULL || vv == NULL)
            return false;
        ps->cap = cap;
    }
    ps->keys[ps->n] = key;
    ps->values[ps->n++] = v;
    return true;
}

typedef struct opt_load {
    const cJSON *desc;
    size_t n_params;
    param_state *params; /* n_params of them */
} opt_load;

static em_status bad(const char *path, const char *fmt, const char *a, size_t x, size_t y)
{
    char msg[600];
    snprintf(msg, sizeof msg, fmt, a, x, y);
    return emi_fail(EM_EINVAL, "%s: %s: %s", load_who, path, msg);
}

/* Check opts[k] against its description: same optimizer, groups and parameter shapes. */
static em_status check_optimizer(const char *path, size_t k, em_optimizer *opt, const cJSON *d, size_t *n_params)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(d, "name");
    const cJSON *groups = cJSON_GetObjectItemCaseSensitive(d, "param_groups");
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(d, "step_count");
    if (!cJSON_IsString(name) || !cJSON_IsArray(groups) || !cJSON_IsNumber(steps) || steps->valuedouble < 0)
        return bad(path, "the description of optimizer %s%zu%.0zu is malformed", "", k, 0);
    if (strcmp(name->valuestring, em_optimizer_name(opt)) != 0) {
        char msg[300];
        snprintf(msg, sizeof msg, "optimizer %zu is %.40s in the checkpoint but %.40s here", k, name->valuestring,
                 em_optimizer_name(opt));
        return emi_fail(EM_EINVAL, "%s: %s: %s", load_who, path, msg);
    }
    size_t ng = (size_t)cJSON_GetArraySize(groups);
    if (ng != em_optimizer_num_groups(opt))
        return bad(path, "optimizer %s%zu has %zu parameter groups in the checkpoint, a different number here", "",
                   k, ng);
    const char *hp[MAX_HPARAMS];
    *n_params = 0;
    size_t g = 0;
    for (const cJSON *grp = groups->child; grp != NULL; grp = grp->next, g++) {
        const cJSON *shapes = cJSON_GetObjectItemCaseSensitive(grp, "shapes");
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(grp, "hparams");
        const em_params *ps = em_optimizer_group_params(opt, g);
        if (!cJSON_IsArray(shapes) || !cJSON_IsObject(h))
            return bad(path, "group %s%zu of optimizer %zu is malformed", "", g, k);
        if ((size_t)cJSON_GetArraySize(shapes) != em_params_size(ps))
            return bad(path, "group %s%zu of optimizer %zu has another number of parameters here", "", g, k);
        size_t i = 0;
        for (const cJSON *s = shapes->child; s != NULL; s = s->next, i++) {
            int64_t shape[EM_MAX_DIMS];
            int nd = em_tensor_shape(em_params_get(ps, i), shape, EM_MAX_DIMS);
            bool same = cJSON_IsArray(s) && cJSON_GetArraySize(s) == nd;
            int d = 0;
            for (const cJSON *x = same ? s->child : NULL; x != NULL && same; x = x->next, d++)
                same = cJSON_IsNumber(x) && x->valuedouble == (double)shape[d];
            if (!same)
                return bad(path, "parameter %s%zu of optimizer %zu has another shape here", "", *n_params + i, k);
        }
        if (!hparams_of(opt, g, hp, MAX_HPARAMS))
            return bad(path, "optimizer %s%zu (%zu) is of an unknown kind", "", k, g);
        for (const char *const *n = hp; *n != NULL; n++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(h, *n);
            if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
                return bad(path, "hyper-parameter \"%s\" of group %zu of optimizer %zu is missing or not a number", *n,
                           g, k);
        }
        *n_params += i;
    }
    return EM_OK;
}

/* "optimizers.<k>.state.<i>.<key>": k, i and key; false for another name. */
static bool parse_state_name(const char *name, size_t *k, size_t *i, const char **key)
{
    unsigned long long a, b;
    int used = 0;
    if (sscanf(name, "optimizers.%llu.state.%llu.%n", &a, &b, &used) != 2 || used == 0 || name[used] == '\0')
        return false;
    *k = (size_t)a, *i = (size_t)b, *key = name + used;
    return true;
}

em_status em_checkpoint_load(const char *path, em_nn *m, em_optimizer *const *opts, size_t n_opts,
                             em_scheduler *const *scheds, size_t n_scheds)
{
    if (m == NULL || (n_opts > 0 && opts == NULL) || (n_scheds > 0 && scheds == NULL))
        return emi_fail(EM_EINVAL, "em_checkpoint_load: %s is NULL",
                        m == NULL ? "the layer" : n_opts > 0 && opts == NULL ? "opts" : "scheds");
    em_safetensors *f = em_safetensors_open(path);
    if (f == NULL)
        return em_last_status();
    em_status st = emi_checkpoint_restore(f, "em_checkpoint_load", m, opts, n_opts, scheds, n_scheds);
    em_safetensors_free(f);
    return st;
}

em_status emi_checkpoint_restore(const em_safetensors *f, const char *who, em_nn *m, em_optimizer *const *opts,
                                 size_t n_opts, em_scheduler *const *scheds, size_t n_scheds)
{
    load_who = who;
    const char *label = f->label;
    em_status st = EM_OK;
    cJSON *list = NULL;
    opt_load *ol = calloc(n_opts + 1, sizeof *ol);
    em_scope_begin();
    const char *version = em_safetensors_meta_find(f, "ember.checkpoint");
    const char *json = em_safetensors_meta_find(f, "ember.optimizers");
    const char *sjson = em_safetensors_meta_find(f, "ember.schedulers");
    cJSON *slist = NULL;
    em_tensor **sstate = calloc(n_scheds + 1, sizeof *sstate);
    double **svals = calloc(n_scheds + 1, sizeof *svals);
    size_t *slen = calloc(n_scheds + 1, sizeof *slen);
    if (ol == NULL || sstate == NULL || svals == NULL || slen == NULL)
        st = emi_fail(EM_ENOMEM, "%s: out of memory", load_who);
    else if (version == NULL || json == NULL || sjson == NULL)
        st = emi_fail(EM_EINVAL, "%s: %s: not an ember checkpoint (no \"ember.checkpoint\" metadata; "
                      "em_nn_load_safetensors reads weights files)", load_who, label);
    else if (strcmp(version, CKPT_VERSION) != 0)
        st = emi_fail(EM_EINVAL, "%s: %s: checkpoint version \"%.20s\", this ember reads \"%s\"",
                      load_who, label, version, CKPT_VERSION);
    else if ((list = cJSON_Parse(json)) == NULL || !cJSON_IsArray(list))
        st = emi_fail(EM_EINVAL, "%s: %s: the \"ember.optimizers\" metadata is not a JSON list", load_who,
                      label);
    else if ((size_t)cJSON_GetArraySize(list) != n_opts)
        st = emi_fail(EM_EINVAL, "%s: %s: the checkpoint has %d optimizers, %zu given", load_who, label,
                      cJSON_GetArraySize(list), n_opts);
    else if ((slist = cJSON_Parse(sjson)) == NULL || !cJSON_IsArray(slist))
        st = emi_fail(EM_EINVAL, "%s: %s: the \"ember.schedulers\" metadata is not a JSON list", load_who,
                      label);
    else if ((size_t)cJSON_GetArraySize(slist) != n_scheds)
        st = emi_fail(EM_EINVAL, "%s: %s: the checkpoint has %d schedulers, %zu given", load_who, label,
                      cJSON_GetArraySize(slist), n_scheds);
    /* 0. each scheduler is of the kind saved, and its state fits it */
    size_t ks = 0;
    for (const cJSON *d = st == EM_OK ? slist->child : NULL; d != NULL && st == EM_OK; d = d->next, ks++) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(d, "name");
        char tname[64];
        snprintf(tname, sizeof tname, "schedulers.%zu.state", ks);
        int64_t at = em_safetensors_find(f, tname);
        if (scheds[ks] == NULL)
            st = emi_fail(EM_EINVAL, "%s: scheduler %zu is NULL", load_who, ks);
        else if (!cJSON_IsString(name) || strcmp(name->valuestring, em_scheduler_name(scheds[ks])) != 0)
            st = emi_fail(EM_EINVAL, "%s: %s: scheduler %zu is %.40s in the checkpoint but %s here", load_who,
                          label, ks, cJSON_IsString(name) ? name->valuestring : "?", em_scheduler_name(scheds[ks]));
        else if (at < 0 || strcmp(em_safetensors_dtype(f, (size_t)at), "F64") != 0 ||
                 em_safetensors_shape(f, (size_t)at, NULL, 0) != 1)
            st = emi_fail(EM_EINVAL, "%s: %s: the state of scheduler %zu is missing or not a "
                          "float64 vector", load_who, label, ks);
        else if ((sstate[ks] = em_safetensors_tensor(f, (size_t)at)) == NULL)
            st = em_last_status();
        else {
            slen[ks] = (size_t)em_tensor_numel(sstate[ks]);
            if ((svals[ks] = malloc((slen[ks] + 1) * sizeof(double))) == NULL)
                st = emi_fail(EM_ENOMEM, "%s: out of memory", load_who);
            else if ((st = em_tensor_copy_to(sstate[ks], svals[ks], slen[ks] * sizeof(double), EM_F64)) == EM_OK)
                st = emi_scheduler_state_set(scheds[ks], svals[ks], slen[ks], false, load_who);
        }
    }
    /* 1. each optimizer fits its description */
    size_t k = 0;
    for (const cJSON *d = st == EM_OK ? list->child : NULL; d != NULL && st == EM_OK; d = d->next, k++) {
        ol[k].desc = d;
        if (opts[k] == NULL)
            st = emi_fail(EM_EINVAL, "%s: optimizer %zu is NULL", load_who, k);
        else if ((st = check_optimizer(label, k, opts[k], d, &ol[k].n_params)) == EM_OK &&
                 (ol[k].params = calloc(ol[k].n_params + 1, sizeof *ol[k].params)) == NULL)
            st = emi_fail(EM_ENOMEM, "%s: out of memory", load_who);
    }
    /* 2. the state tensors, grouped by optimizer and parameter; no name the checkpoint cannot hold */
    for (size_t j = 0; j < f->n && st == EM_OK; j++) {
        const char *name = f->entries[j].name, *key;
        size_t ko, i;
        if (strncmp(name, "model.", 6) == 0 || strncmp(name, "trainer.", 8) == 0 || strncmp(name, "callbacks.", 10) == 0)
            continue; /* the layer's; a trainer checkpoint's own (em_trainer_save_checkpoint) */
        if (strncmp(name, "schedulers.", 11) == 0) {
            unsigned long long sk;
            int used = 0;
            if (sscanf(name, "schedulers.%llu.state%n", &sk, &used) == 1 && name[used] == '\0' && sk < n_scheds)
                continue;
        }
        if (!parse_state_name(name, &ko, &i, &key) || ko >= n_opts || i >= ol[ko].n_params ||
            ol[ko].params[i].n >= 100000) {
            st = emi_fail(EM_EINVAL, "%s: %s: unexpected tensor \"%s\" (not model.*, nor the state of "
                          "a parameter of one of the %zu optimizers)", load_who, label, name, n_opts);
            break;
        }
        em_tensor *v = em_safetensors_tensor(f, j);
        if (v == NULL)
            st = em_last_status();
        else if (!param_state_push(&ol[ko].params[i], key, v))
            st = emi_fail(EM_ENOMEM, "%s: out of memory", load_who);
    }
    /* 3. every state is complete for its optimizer (checked, not applied) */
    for (k = 0; k < n_opts && st == EM_OK; k++)
        for (size_t i = 0; i < ol[k].n_params && st == EM_OK; i++)
            if (ol[k].params[i].n > 0)
                st = emi_optimizer_state_import(opts[k], i, ol[k].params[i].keys, ol[k].params[i].values,
                                                ol[k].params[i].n, false, load_who);
    /* 4. the layer: checked whole, then copied */
    if (st == EM_OK && m != NULL)
        st = emi_nn_load(m, f, true, "model.", load_who);
    /* 5. the optimizers: hyper-parameters, state, step count */
    for (k = 0; k < n_opts && st == EM_OK; k++) {
        const cJSON *groups = cJSON_GetObjectItemCaseSensitive(ol[k].desc, "param_groups");
        size_t g = 0;
        for (const cJSON *grp = groups->child; grp != NULL && st == EM_OK; grp = grp->next, g++) {
            const cJSON *h = cJSON_GetObjectItemCaseSensitive(grp, "hparams");
            const char *hp[MAX_HPARAMS];
            hparams_of(opts[k], g, hp, MAX_HPARAMS);
            for (const char *const *n = hp; *n != NULL && st == EM_OK; n++)
                st = em_optimizer_set(opts[k], g, *n, cJSON_GetObjectItemCaseSensitive(h, *n)->valuedouble);
        }
        if (st == EM_OK)
            st = emi_optimizer_state_clear(opts[k]);
        for (size_t i = 0; i < ol[k].n_params && st == EM_OK; i++)
            if (ol[k].params[i].n > 0)
                st = emi_optimizer_state_import(opts[k], i, ol[k].params[i].keys, ol[k].params[i].values,
                                                ol[k].params[i].n, true, load_who);
        if (st == EM_OK)
            emi_optimizer_set_step_count(
                opts[k], (int64_t)cJSON_GetObjectItemCaseSensitive(ol[k].desc, "step_count")->valuedouble);
    }
    /* 6. the schedulers, after their optimizers */
    for (k = 0; k < n_scheds && st == EM_OK; k++)
        st = emi_scheduler_state_set(scheds[k], svals[k], slen[k], true, load_who);
    em_scope_end();
    for (k = 0; svals != NULL && k < n_scheds; k++)
        free(svals[k]);
    free(svals), free(sstate), free(slen);
    cJSON_Delete(slist);
    for (k = 0; ol != NULL && k < n_opts; k++) {
        for (size_t i = 0; ol[k].params != NULL && i < ol[k].n_params; i++) {
            free(ol[k].params[i].keys);
            free(ol[k].params[i].values);
        }
        free(ol[k].params);
    }
    free(ol);
    cJSON_Delete(list);
    return st;
}
