/* resume.c: the trainer's checkpoints - em_trainer_save_checkpoint, and the restoring half of
 * em_trainer_fit_from (trainer.c calls emi_resume_open before the fit, emi_resume_apply after
 * configure_optimizers, emi_resume_enter_loop after on_train_start, emi_resume_close at the end).
 *
 * The file is em_checkpoint_save's (checkpoint.c: "model.*" or, for a module without layers,
 * "trainer.params.<k>.<i>", the optimizers' state, the schedulers' state) plus:
 *   tensors  "trainer.rng.cpu.<r>"      rank r's global CPU generator state (uint8; torch.get_rng_state())
 *            "trainer.rng.cuda.<d>"     rank 0's CUDA generator state of device d, where CUDA is present
 *            "trainer.grads.<k>.<i>"    .grad of parameter i of optimizer k (rank 0), when not None
 *            "trainer.grads.<k>.<i>.r<r>"  the same on rank r > 0 (DDP: local gradients mid-window)
 *            "callbacks.<name>"         a callback's state_save bytes (uint8)
 *   metadata "ember.trainer"            JSON: where the loop was (the phase: after on_train_batch_end, after
 *                                       validation, after on_train_epoch_end, or before an epoch), its
 *                                       counters, the logged values it still reduces (the train results,
 *                                       callback_metrics, the progress bar's), the grad scaler, the world
 *                                       size, the callbacks that saved state
 * A weights-only file (em_trainer_save_checkpoint_ex(..., true)) holds the weights and "ember.trainer" with
 * "weights_only": true, nothing else; em_trainer_fit_from refuses it.
 * Numbers that are doubles are written with 17 significant digits (exact), non-finite ones as strings.
 * Lightning: trainer/connectors/checkpoint_connector.py (what a checkpoint holds and when it is
 * restored), loops/fit_loop.py and training_epoch_loop.py (their state_dicts); ember restores the exact
 * place in the batch loop instead of Lightning's approximate mid-epoch restart.
 */
#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "distributed.h"
#include "hooks.h"
#include "metrics.h"
#include "resume.h"
#include "safetensors.h"

#define TRAINER_FORMAT 1
#define WHO_SAVE "em_trainer_save_checkpoint"
#define WHO_LOAD "em_trainer_fit_from"
#define MAX_EXACT_INT 9007199254740992.0 /* 2^53: integers JSON keeps exactly */

struct emi_resume {
    em_safetensors *file;
    cJSON *rec;          /* "ember.trainer" */
    emi_phase phase;
    int64_t accumulate;
    int64_t saved_world; /* ranks whose RNG states the file holds */
};

static const char *const phase_names[] = {"none", "epoch_start", "batch_end", "validation_end", "epoch_end"};

/* ---- JSON helpers ------------------------------------------------------------------------------------- */

static cJSON *num_item(double v)
{
    char b[40];
    if (isnan(v))
        return cJSON_CreateString("nan");
    if (isinf(v))
        return cJSON_CreateString(v < 0 ? "-inf" : "inf");
    snprintf(b, sizeof b, "%.17g", v);
    return cJSON_CreateRaw(b);
}

static void put_int(cJSON *o, const char *k, int64_t v)
{
    char b[32];
    snprintf(b, sizeof b, "%lld", (long long)v);
    cJSON_AddRawToObject(o, k, b);
}

static void put_num(cJSON *o, const char *k, double v)
{
    cJSON_AddItemToObject(o, k, num_item(v));
}

/* A reader of the record that remembers the first thing wrong with it. */
typedef struct rd {
    bool bad;
    char what[200];
} rd;

static void rd_bad(rd *r, const char *what, const char *key)
{
    if (!r->bad) {
        r->bad = true;
        snprintf(r->what, sizeof r->what, "\"%.60s\" %s", key, what);
    }
}

static int64_t get_int(rd *r, const cJSON *o, const char *k, int64_t lo, int64_t hi)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (double)lo ||
        v->valuedouble > (double)hi || fabs(v->valuedouble) > MAX_EXACT_INT) {
        rd_bad(r, "is missing or not an integer in range", k);
        return lo;
    }
    return (int64_t)v->valuedouble;
}

static bool get_bool(rd *r, const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsBool(v)) {
        rd_bad(r, "is missing or not a boolean", k);
        return false;
    }
    return cJSON_IsTrue(v);
}

static double num_of(rd *r, const cJSON *v, const char *k)
{
    if (cJSON_IsNumber(v))
        return v->valuedouble;
    if (cJSON_IsString(v)) {
        if (strcmp(v->valuestring, "nan") == 0)
            return NAN;
        if (strcmp(v->valuestring, "inf") == 0)
            return INFINITY;
        if (strcmp(v->valuestring, "-inf") == 0)
            return -INFINITY;
    }
    rd_bad(r, "is missing or not a number", k);
    return NAN;
}

static double get_num(rd *r, const cJSON *o, const char *k)
{
    return num_of(r, cJSON_GetObjectItemCaseSensitive(o, k), k);
}

/* ---- what is saved: names and tensors ------------------------------------------------------------------ */

typedef struct xlist {
    char **names;
    em_tensor **ts;
    size_t n, cap;
} xlist;

static em_status x_add(xlist *x, const char *name, em_tensor *t)
{
    if (t == NULL)
        return em_last_status() != EM_OK ? em_last_status() : emi_fail(EM_ENOMEM, WHO_SAVE ": out of memory");
    if (x->n == x->cap) {
        size_t cap = x->cap ? 2 * x->cap : 32;
        char **nn = realloc(x->names, cap * sizeof *nn);
        if (nn != NULL)
            x->names = nn;
        em_tensor **nt = realloc(x->ts, cap * sizeof *nt);
        if (nt != NULL)
            x->ts = nt;
        if (nn == NULL || nt == NULL)
            return emi_fail(EM_ENOMEM, WHO_SAVE ": out of memory");
        x->cap = cap;
    }
    if ((x->names[x->n] = emi_strdup(name)) == NULL)
        return emi_fail(EM_ENOMEM, WHO_SAVE ": out of memory");
    x->ts[x->n++] = t;
    return EM_OK;
}

static void x_free(xlist *x)
{
    for (size_t i = 0; i < x->n; i++)
        free(x->names[i]);
    free(x->names);
    free(x->ts);
}

static bool distributed(const em_trainer *t)
{
    return t->env.distributed && t->env.world > 1 && emi_dist_active();
}

static int64_t world_of(const em_trainer *t)
{
    return distributed(t) ? t->env.world : 1;
}

/* ---- saving ---------------------------------------------------------------------------------------------- */

/* Where the loop is, from the hook that calls the save. */
static em_status save_phase(const em_trainer *t, emi_phase *phase)
{
    if (!t->fitting) {
        if (t->last_module == NULL)
            return emi_fail(EM_ESTATE, WHO_SAVE ": there is no fit to save: call it from a hook during "
                                       "em_trainer_fit (on_train_batch_end, on_train_epoch_end, "
                                       "on_validation_end) or after a fit that succeeded");
        *phase = EMI_PHASE_EPOCH_START;
        return EM_OK;
    }
    const char *h = t->hook != NULL ? t->hook : "";
    if (t->stage == EMI_STAGE_SANITY)
        return emi_fail(EM_ESTATE, WHO_SAVE ": not during the sanity check (%s)", h);
    if (t->stage == EMI_STAGE_TRAIN && strcmp(h, "on_train_batch_end") == 0)
        *phase = EMI_PHASE_BATCH_END;
    else if (t->stage == EMI_STAGE_TRAIN && strcmp(h, "on_train_epoch_end") == 0)
        *phase = EMI_PHASE_EPOCH_END;
    else if (t->stage == EMI_STAGE_VAL && strcmp(h, "on_validation_end") == 0)
        *phase = EMI_PHASE_VAL_END;
    else
        return emi_fail(EM_ESTATE, WHO_SAVE ": cannot save from %s: call it in on_train_batch_end, "
                                   "on_train_epoch_end or on_validation_end, or after the fit",
                        h[0] != '\0' ? h : "outside a hook");
    return EM_OK;
}

static cJSON *metric_json(const emi_metric *m)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", m->name);
    cJSON_AddStringToObject(o, "fx", m->fx != NULL ? m->fx : "");
    cJSON_AddBoolToObject(o, "on_step", m->on_step);
    cJSON_AddBoolToObject(o, "on_epoch", m->on_epoch);
    cJSON_AddBoolToObject(o, "prog_bar", m->prog_bar);
    cJSON_AddBoolToObject(o, "logger", m->logger);
    put_int(o, "reduce", (int64_t)m->reduce);
    put_num(o, "last", m->last);
    put_num(o, "acc", m->acc);
    put_num(o, "weight", m->weight);
    cJSON_AddBoolToObject(o, "has_value", m->has_value);
    cJSON_AddBoolToObject(o, "sync", m->sync);
    cJSON_AddBoolToObject(o, "synced", m->synced);
    put_num(o, "s_acc", m->s_acc);
    put_num(o, "s_weight", m->s_weight);
    return o;
}

static cJSON *kv_json(const emi_kvlist *l)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < l->n; i++) {
        cJSON *p = cJSON_CreateArray();
        cJSON_AddItemToArray(p, cJSON_CreateString(l->items[i].name));
        cJSON_AddItemToArray(p, num_item(l->items[i].value));
        cJSON_AddItemToArray(a, p);
    }
    return a;
}

/* The loop's record ("ember.trainer"). */
static cJSON *loop_record(em_trainer *t, emi_phase phase, const em_module *m)
{
    cJSON *o = cJSON_CreateObject();
    put_int(o, "format", TRAINER_FORMAT);
    cJSON_AddStringToObject(o, "phase", phase_names[phase]);
    put_int(o, "epoch", t->current_epoch);
    put_int(o, "batch_idx", t->batch_idx);
    put_int(o, "global_step", t->global_step);
    put_int(o, "total_batch_idx", t->total_batch_idx);
    put_int(o, "batches_that_stepped", t->batches_that_stepped);
    put_int(o, "val_batch_idx", t->val_batch_idx);
    put_int(o, "accumulate", t->accumulate);
    put_int(o, "num_training_batches", t->fit.num_training_batches);
    put_int(o, "world_size", world_of(t));
    cJSON_AddBoolToObject(o, "is_last_batch", t->is_last_batch);
    cJSON_AddBoolToObject(o, "should_stop", t->should_stop);
    cJSON_AddBoolToObject(o, "min_info_printed", t->min_info_printed);
    cJSON_AddBoolToObject(o, "epoch_reached_end", t->epoch_reached_end);
    cJSON_AddBoolToObject(o, "train_epoch_end", t->metrics.train_epoch_end);
    cJSON_AddBoolToObject(o, "manual_optimization", m->manual_optimization);
    cJSON_AddBoolToObject(o, "layers", m->layers != NULL);
    cJSON *train = cJSON_AddArrayToObject(o, "train_results");
    for (size_t i = 0; phase != EMI_PHASE_EPOCH_START && i < t->metrics.train.n; i++)
        cJSON_AddItemToArray(train, metric_json(&t->metrics.train.items[i]));
    cJSON_AddItemToObject(o, "callback_metrics", kv_json(&t->metrics.callback));
    cJSON_AddItemToObject(o, "progress_bar_metrics", kv_json(&t->metrics.progbar));
    em_grad_scaler_state ss;
    if (t->fit.scaler != NULL && em_grad_scaler_get_state(t->fit.scaler, &ss) == EM_OK) {
        cJSON *s = cJSON_AddObjectToObject(o, "grad_scaler");
        put_num(s, "scale", ss.scale);
        put_num(s, "growth_factor", ss.growth_factor);
        put_num(s, "backoff_factor", ss.backoff_factor);
        put_int(s, "growth_interval", ss.growth_interval);
        put_int(s, "growth_tracker", ss.growth_tracker);
    } else {
        em_clear_error();
    }
    cJSON_AddArrayToObject(o, "callbacks");
    return o;
}

/* Each callback's state_save bytes as "callbacks.<name>", listed in the record. */
static em_status save_callbacks(em_trainer *t, cJSON *rec, xlist *x)
{
    cJSON *list = cJSON_GetObjectItemCaseSensitive(rec, "callbacks");
    for (size_t i = 0; i < t->n_callbacks; i++) {
        em_callback *cb = t->callbacks[i];
        const em_callback_ops *ops = em_callback_get_ops(cb);
        if (ops == NULL || ops->version < 3 || ops->state_save == NULL)
            continue;
        if (ops->name == NULL || ops->name[0] == '\0')
            return emi_fail(EM_EINVAL, WHO_SAVE ": callback %zu keeps state (state_save) but has no name: a checkpoint "
                                       "stores a callback's state under its ops->name", i);
        for (const cJSON *c = list->child; c != NULL; c = c->next)
            if (strcmp(cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring, ops->name) == 0)
                return emi_fail(EM_EINVAL, WHO_SAVE ": two callbacks named \"%s\" keep state: a checkpoint stores a "
                                           "callback's state under its name; give them different names",
                                ops->name);
        void *bytes = NULL;
        size_t n = 0;
        em_clear_error();
        em_status s = ops->state_save(cb, t, &bytes, &n);
        if (s == EM_OK && emi_has_error())
            s = em_last_status();
        if (s == EM_OK && bytes == NULL && n > 0)
            s = emi_fail(EM_EINVAL, WHO_SAVE ": the state_save of callback \"%s\" gave %zu bytes at NULL", ops->name, n);
        if (s != EM_OK) {
            free(bytes);
            return emi_has_error() ? s : emi_fail(s, WHO_SAVE ": the state_save of callback \"%s\" failed", ops->name);
        }
        if (bytes == NULL)
            n = 0;
        cJSON *c = cJSON_CreateObject();
        cJSON_AddStringToObject(c, "name", ops->name);
        put_int(c, "bytes", (int64_t)n);
        cJSON_AddItemToArray(list, c);
        if (n > 0) {
            char name[300];
            snprintf(name, sizeof name, "callbacks.%s", ops->name);
            s = x_add(x, name, em_tensor_from(bytes, EM_U8, (int64_t[]){(int64_t)n}, 1, NULL));
        }
        free(bytes);
        if (s != EM_OK)
            return s;
    }
    return EM_OK;
}

/* The generators' states: every rank's CPU one (gathered on rank 0 under DDP), rank 0's CUDA ones. */
static em_status save_rng(em_trainer *t, xlist *x)
{
    em_tensor *cpu = emi_rng_get_state(-1);
    if (cpu == NULL)
        return em_last_status();
    char name[64];
    em_status s = EM_OK;
    if (!distributed(t)) {
        s = x_add(x, "trainer.rng.cpu.0", cpu);
    } else {
        size_t n = (size_t)em_tensor_numel(cpu);
        uint8_t *buf = malloc(n + 1);
        if (buf == NULL)
            return emi_fail(EM_ENOMEM, WHO_SAVE ": out of memory");
        for (int64_t r = 0; r < t->env.world && s == EM_OK; r++) {
            if (r == t->env.rank)
                s = em_tensor_copy_to(cpu, buf, n, EM_U8);
            else
                memset(buf, 0, n);
            if (s == EM_OK)
                s = emi_dist_broadcast_bytes(buf, n, (int)r);
            snprintf(name, sizeof name, "trainer.rng.cpu.%lld", (long long)r);
            if (s == EM_OK && t->env.rank == 0)
                s = x_add(x, name, em_tensor_from(buf, EM_U8, (int64_t[]){(int64_t)n}, 1, NULL));
        }
        free(buf);
    }
    for (int64_t d = 0; s == EM_OK && em_cuda_is_available() && d < em_cuda_device_count(); d++) {
        snprintf(name, sizeof name, "trainer.rng.cuda.%lld", (long long)d);
        s = x_add(x, name, emi_rng_get_state((int)d));
    }
    return s;
}

/* Every optimizer's parameters' gradients (None ones skipped; none with weights_only); under DDP each
 * rank's, on rank 0. For a module without layers, the parameters too. */
static em_status save_params(em_trainer *t, const em_module *m, xlist *x, bool weights_only)
{
    char name[96];
    em_status s = EM_OK;
    for (size_t k = 0; k < t->setup.n_opts && s == EM_OK; k++) {
        const em_params *ps = t->setup.params[k];
        for (size_t i = 0; i < em_params_size(ps) && s == EM_OK; i++) {
            em_tensor *p = em_params_get(ps, i);
            if (m->layers == NULL) {
                snprintf(name, sizeof name, "trainer.params.%zu.%zu", k, i);
                s = x_add(x, name, em_detach(p));
            }
            em_tensor *g = s == EM_OK && !weights_only ? em_tensor_grad(p) : NULL;
            if (g == NULL)
                continue;
            snprintf(name, sizeof name, "trainer.grads.%zu.%zu", k, i);
            if (t->env.rank == 0)
                s = x_add(x, name, g);
            for (int64_t r = 1; distributed(t) && r < t->env.world && s == EM_OK; r++) {
                em_tensor *buf = r == t->env.rank ? em_clone(g) : em_zeros_like(g);
                if (buf == NULL)
                    return em_last_status();
                em_tensor *one[1] = {buf};
                if ((s = emi_dist_broadcast_tensors(one, 1, (int)r)) != EM_OK)
                    break;
                snprintf(name, sizeof name, "trainer.grads.%zu.%zu.r%lld", k, i, (long long)r);
                if (t->env.rank == 0)
                    s = x_add(x, name, buf);
            }
        }
    }
    return s;
}

static em_status save_body(em_trainer *t, const char *path, emi_phase phase, bool weights_only)
{
    const em_module *m = t->fitting ? t->module : t->last_module;
    xlist x = {0};
    cJSON *rec = loop_record(t, phase, m);
    em_status s = rec == NULL ? emi_fail(EM_ENOMEM, WHO_SAVE ": out of memory") : EM_OK;
    if (s == EM_OK && weights_only)
        cJSON_AddBoolToObject(rec, "weights_only", true);
    if (s == EM_OK && !weights_only)
        s = save_callbacks(t, rec, &x);
    if (s == EM_OK && !weights_only)
        s = save_rng(t, &x);
    if (s == EM_OK)
        s = save_params(t, m, &x, weights_only);
    char *json = s == EM_OK ? cJSON_PrintUnformatted(rec) : NULL;
    if (s == EM_OK && json == NULL)
        s = emi_fail(EM_ENOMEM, WHO_SAVE ": out of memory");
    em_scheduler **scheds = s == EM_OK ? calloc(t->setup.n_scheds + 1, sizeof *scheds) : NULL;
    if (s == EM_OK && scheds == NULL)
        s = emi_fail(EM_ENOMEM, WHO_SAVE ": out of memory");
    for (size_t i = 0; s == EM_OK && i < t->setup.n_scheds; i++)
        scheds[i] = t->setup.scheds[i].sched;
    if (s == EM_OK && t->env.rank == 0) {
        em_safetensors_meta meta[1] = {{"ember.trainer", json}};
        s = emi_checkpoint_write(path, WHO_SAVE, m->layers, weights_only ? NULL : t->setup.opts,
                                 weights_only ? 0 : t->setup.n_opts, weights_only ? NULL : scheds,
                                 weights_only ? 0 : t->setup.n_scheds, meta, 1, (const char *const *)x.names, x.ts,
                                 x.n);
    }
    free(scheds);
    cJSON_free(json);
    cJSON_Delete(rec);
    x_free(&x);
    return s;
}

em_status em_trainer_save_checkpoint(em_trainer *t, const char *path)
{
    return em_trainer_save_checkpoint_ex(t, path, false);
}

em_status em_trainer_save_checkpoint_ex(em_trainer *t, const char *path, bool weights_only)
{
    if (t == NULL || path == NULL)
        return emi_fail(EM_EINVAL, WHO_SAVE ": the %s is NULL", t == NULL ? "trainer" : "path");
    if (!emi_trainer_ok(t, WHO_SAVE))
        return EM_EMISUSE;
    emi_phase phase = EMI_PHASE_NONE;
    em_status s = save_phase(t, &phase);
    if (s != EM_OK)
        return s;
    em_scope_begin();
    s = save_body(t, path, phase, weights_only);
    em_scope_end();
    return emi_dist_share_rank0_status(t, s, WHO_SAVE); /* every rank returns rank 0's outcome */
}

/* ---- restoring --------------------------------------------------------------------------------------------- */

/* Fail with "em_trainer_fit_from: PATH: what". */
static em_status refuse(const em_trainer *t, const char *fmt, ...) EM_PRINTF(2, 3);
static em_status refuse(const em_trainer *t, const char *fmt, ...)
{
    char what[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return emi_fail(EM_EINVAL, WHO_LOAD ": %s: %s", t->resume != NULL ? t->resume->file->label : "?", what);
}

void emi_resume_close(em_trainer *t)
{
    if (t->resume == NULL)
        return;
    em_safetensors_free(t->resume->file);
    cJSON_Delete(t->resume->rec);
    free(t->resume);
    t->resume = NULL;
}

em_status emi_resume_open(em_trainer *t, const em_module *m, const char *path)
{
    emi_resume_close(t);
    em_safetensors *f = em_safetensors_open(path);
    if (f == NULL) {
        char msg[900];
        em_status code = em_last_status();
        snprintf(msg, sizeof msg, "%s", em_last_error());
        em_clear_error();
        return emi_fail(code, WHO_LOAD ": %s", msg);
    }
    emi_resume *r = calloc(1, sizeof *r);
    if (r == NULL) {
        em_safetensors_free(f);
        return emi_fail(EM_ENOMEM, WHO_LOAD ": out of memory");
    }
    r->file = f;
    t->resume = r;
    const char *json = em_safetensors_meta_find(f, "ember.trainer");
    if (json == NULL) {
        em_status s = em_safetensors_meta_find(f, "ember.checkpoint") != NULL
                          ? refuse(t, "a checkpoint of a layer and its optimizers (em_checkpoint_save), not of a "
                                      "trainer: em_checkpoint_load reads it")
                          : refuse(t, "not an ember trainer checkpoint (no \"ember.trainer\" metadata)");
        emi_resume_close(t);
        return s;
    }
    rd rr = {0};
    r->rec = cJSON_Parse(json);
    if (r->rec == NULL || !cJSON_IsObject(r->rec)) {
        emi_resume_close(t);
        return emi_fail(EM_EINVAL, WHO_LOAD ": %s: the \"ember.trainer\" metadata is not a JSON object", path);
    }
    int64_t format = get_int(&rr, r->rec, "format", 0, 1000000);
    bool manual = get_bool(&rr, r->rec, "manual_optimization");
    em_status s = EM_OK;
    if (rr.bad)
        s = refuse(t, "the \"ember.trainer\" record is malformed: %s", rr.what);
    else if (format != TRAINER_FORMAT)
        s = refuse(t, "trainer checkpoint format %lld, this ember reads %d", (long long)format, TRAINER_FORMAT);
    else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r->rec, "weights_only")))
        s = refuse(t, "Trying to restore optimizer state but checkpoint contains only the model. This is "
                      "probably due to `ModelCheckpoint.save_weights_only` being set to `True`.");
    else if (manual != m->manual_optimization)
        s = refuse(t, "the checkpoint is of %s optimization, this module uses %s optimization",
                   manual ? "manual" : "automatic", m->manual_optimization ? "manual" : "automatic");
    if (s != EM_OK)
        emi_resume_close(t);
    return s;
}

/* A tensor of the file by name: its index, or -1 (nothing recorded). */
static int64_t find(const emi_resume *r, const char *name)
{
    return em_safetensors_find(r->file, name);
}

/* Whether tensor `at` of the file has `p`'s shape. */
static bool same_shape(const emi_resume *r, int64_t at, const em_tensor *p)
{
    int64_t a[EM_MAX_DIMS], b[EM_MAX_DIMS];
    int na = em_safetensors_shape(r->file, (size_t)at, a, EM_MAX_DIMS);
    int nb = em_tensor_shape(p, b, EM_MAX_DIMS);
    if (na != nb || na < 0)
        return false;
    for (int d = 0; d < na; d++)
        if (a[d] != b[d])
            return false;
    return true;
}

/* Parse the record's train results into `out` (names owned); false with rr set when malformed. */
static bool parse_results(rd *rr, const cJSON *arr, emi_results *out)
{
    if (!cJSON_IsArray(arr)) {
        rd_bad(rr, "is not a list", "train_results");
        return false;
    }
    int n = cJSON_GetArraySize(arr);
    out->items = calloc((size_t)n + 1, sizeof *out->items);
    if (out->items == NULL) {
        rd_bad(rr, "does not fit in memory", "train_results");
        return false;
    }
    out->cap = (size_t)n + 1;
    for (const cJSON *o = arr->child; o != NULL; o = o->next) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
        const cJSON *fx = cJSON_GetObjectItemCaseSensitive(o, "fx");
        emi_metric mt = {0};
        if (!cJSON_IsString(name) || name->valuestring[0] == '\0' || !cJSON_IsString(fx) ||
            (mt.fx = emi_metrics_fx_intern(fx->valuestring)) == NULL) {
            rd_bad(rr, "holds an entry without a name or a hook that may log", "train_results");
            return false;
        }
        mt.on_step = get_bool(rr, o, "on_step");
        mt.on_epoch = get_bool(rr, o, "on_epoch");
        mt.prog_bar = get_bool(rr, o, "prog_bar");
        mt.logger = get_bool(rr, o, "logger");
        mt.reduce = (em_reduce_fx)get_int(rr, o, "reduce", EM_REDUCE_MEAN, EM_REDUCE_MIN);
        mt.last = get_num(rr, o, "last");
        mt.acc = get_num(rr, o, "acc");
        mt.weight = get_num(rr, o, "weight");
        mt.has_value = get_bool(rr, o, "has_value");
        mt.sync = get_bool(rr, o, "sync");
        mt.synced = get_bool(rr, o, "synced");
        mt.s_acc = get_num(rr, o, "s_acc");
        mt.s_weight = get_num(rr, o, "s_weight");
        if (rr->bad || (mt.name = emi_strdup(name->valuestring)) == NULL) {
            rd_bad(rr, "holds a malformed entry", "train_results");
            return false;
        }
        out->items[out->n++] = mt;
    }
    return true;
}

static void results_free(emi_results *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->items[i].name);
    free(r->items);
    *r = (emi_results){0};
}

static bool parse_kv(rd *rr, const cJSON *arr, const char *key, emi_kvlist *out)
{
    if (!cJSON_IsArray(arr)) {
        rd_bad(rr, "is not a list", key);
        return false;
    }
    for (const cJSON *p = arr->child; p != NULL; p = p->next) {
        if (!cJSON_IsArray(p) || cJSON_GetArraySize(p) != 2 || !cJSON_IsString(p->child)) {
            rd_bad(rr, "holds an entry that is not [name, value]", key);
            return false;
        }
        double v = num_of(rr, p->child->next, key);
        if (rr->bad)
            return false;
        emi_kvlist_set(out, p->child->valuestring, v);
    }
    return true;
}

/* The callbacks' saved bytes, read before anything changes. */
typedef struct cb_state {
    const char *name;
    uint8_t *bytes;
    size_t n;
    bool used;
} cb_state;

static em_status read_callbacks(em_trainer *t, const cJSON *list, cb_state **out, size_t *n_out)
{
    emi_resume *r = t->resume;
    *out = NULL;
    *n_out = 0;
    if (!cJSON_IsArray(list))
        return refuse(t, "the \"ember.trainer\" record is malformed: \"callbacks\" is not a list");
    size_t n = (size_t)cJSON_GetArraySize(list);
    cb_state *cs = calloc(n + 1, sizeof *cs);
    if (cs == NULL)
        return emi_fail(EM_ENOMEM, WHO_LOAD ": out of memory");
    *out = cs;
    em_status s = EM_OK;
    for (const cJSON *c = list->child; c != NULL && s == EM_OK; c = c->next) {
        rd rr = {0};
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(c, "name");
        int64_t bytes = get_int(&rr, c, "bytes", 0, (int64_t)MAX_EXACT_INT);
        if (!cJSON_IsString(name) || rr.bad)
            return refuse(t, "the \"ember.trainer\" record is malformed: a callback entry without a name or size");
        for (size_t j = 0; j < *n_out; j++)
            if (strcmp(cs[j].name, name->valuestring) == 0)
                return refuse(t, "two callbacks named \"%.100s\" in the checkpoint", name->valuestring);
        cb_state *e = &cs[(*n_out)++];
        e->name = name->valuestring;
        e->n = (size_t)bytes;
        if (bytes == 0)
            continue;
        char tname[300];
        snprintf(tname, sizeof tname, "callbacks.%s", name->valuestring);
        int64_t at = find(r, tname);
        int64_t shape[1];
        if (at < 0 || strcmp(em_safetensors_dtype(r->file, (size_t)at), "U8") != 0 ||
            em_safetensors_shape(r->file, (size_t)at, shape, 1) != 1 || shape[0] != bytes)
            return refuse(t, "the state of callback \"%.100s\" is missing or not %lld bytes", name->valuestring,
                          (long long)bytes);
        em_tensor *v = em_safetensors_tensor(r->file, (size_t)at);
        if (v == NULL)
            return em_last_status();
        if ((e->bytes = malloc((size_t)bytes)) == NULL)
            return emi_fail(EM_ENOMEM, WHO_LOAD ": out of memory");
        s = em_tensor_copy_to(v, e->bytes, (size_t)bytes, EM_U8);
    }
    return s;
}

static void callbacks_free(cb_state *cs, size_t n)
{
    for (size_t i = 0; cs != NULL && i < n; i++)
        free(cs[i].bytes);
    free(cs);
}

/* The module's layers against the checkpoint's "model.*" tensors: the same names and shapes. */
static em_status check_layers(em_trainer *t)
{
    const em_nn *m = t->module->layers;
    emi_resume *r = t->resume;
    size_t np = em_nn_num_parameters(m), nb = em_nn_num_buffers(m), in_file = 0;
    char name[512];
    for (size_t i = 0; i < em_safetensors_count(r->file); i++)
        in_file += strncmp(em_safetensors_name(r->file, i), "model.", 6) == 0;
    for (size_t i = 0; i < np + nb; i++) {
        const char *n = i < np ? em_nn_parameter_name(m, i) : em_nn_buffer_name(m, i - np);
        em_tensor *p = i < np ? em_nn_parameter(m, i) : em_nn_buffer(m, i - np);
        snprintf(name, sizeof name, "model.%s", n);
        int64_t at = find(r, name);
        if (at < 0)
            return refuse(t, "the module's layers differ: \"%.200s\" is not in the checkpoint", n);
        if (!same_shape(r, at, p)) {
            int64_t a[EM_MAX_DIMS], b[EM_MAX_DIMS];
            int na = em_safetensors_shape(r->file, (size_t)at, a, EM_MAX_DIMS), nbd = em_tensor_shape(p, b, EM_MAX_DIMS);
            char sa[160] = "", sb[160] = "";
            for (int d = 0; d < na && d < EM_MAX_DIMS; d++)
                snprintf(sa + strlen(sa), sizeof sa - strlen(sa), "%s%lld", d ? ", " : "", (long long)a[d]);
            for (int d = 0; d < nbd && d < EM_MAX_DIMS; d++)
                snprintf(sb + strlen(sb), sizeof sb - strlen(sb), "%s%lld", d ? ", " : "", (long long)b[d]);
            return refuse(t, "the module's layers differ: size mismatch for \"%.200s\": [%s] in the checkpoint, [%s] "
                             "here", n, sa, sb);
        }
    }
    if (in_file != np + nb)
        return refuse(t, "the module's layers differ: the checkpoint holds %zu parameters and buffers, the layers "
                         "have %zu", in_file, np + nb);
    return EM_OK;
}

/* The checks of emi_resume_apply that need the setup; nothing changes. */
static em_status check_setup(em_trainer *t, emi_phase phase, const cJSON *rec)
{
    emi_resume *r = t->resume;
    rd rr = {0};
    bool mid_epoch = phase != EMI_PHASE_EPOCH_START;
    int64_t nb = get_int(&rr, rec, "num_training_batches", 0, (int64_t)MAX_EXACT_INT);
    int64_t world = get_int(&rr, rec, "world_size", 1, 1000000);
    bool layers = get_bool(&rr, rec, "layers");
    if (rr.bad)
        return refuse(t, "the \"ember.trainer\" record is malformed: %s", rr.what);
    if (mid_epoch && nb != t->fit.num_training_batches)
        return refuse(t, "it was saved inside an epoch of %lld training batches; this fit's epochs have %lld (another "
                         "loader, batch size or limit_train_batches)", (long long)nb,
                      (long long)t->fit.num_training_batches);
    if (mid_epoch && world != world_of(t))
        return refuse(t, "it was saved inside an epoch by %lld processes; this fit runs %lld (each rank's share of "
                         "the data differs)", (long long)world, (long long)world_of(t));
    r->saved_world = world;
    if (layers != (t->module->layers != NULL))
        return refuse(t, layers ? "it holds the module's layers (em_module.layers), this module has none"
                                : "it holds no layers (the module had none), this module has em_module.layers");
    em_status s = layers ? check_layers(t) : EM_OK;
    if (s != EM_OK)
        return s;
    bool has_scaler = cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(rec, "grad_scaler"));
    if (has_scaler != (t->fit.scaler != NULL))
        return refuse(t, has_scaler ? "it holds a grad scaler (16-mixed), this fit has none (another precision)"
                                    : "it holds no grad scaler, this fit runs 16-mixed with one (another precision)");
    /* the generators' states this rank will take */
    char name[96];
    int64_t rank = world == world_of(t) ? t->env.rank : 0;
    snprintf(name, sizeof name, "trainer.rng.cpu.%lld", (long long)rank);
    int64_t at = find(r, name);
    if (at < 0 || strcmp(em_safetensors_dtype(r->file, (size_t)at), "U8") != 0 ||
        em_safetensors_shape(r->file, (size_t)at, NULL, 0) != 1)
        return refuse(t, "the generator state \"%s\" is missing or not a uint8 vector", name);
    /* gradients and, without layers, the parameters: every one fits its parameter */
    for (size_t k = 0; k < t->setup.n_opts; k++) {
        const em_params *ps = t->setup.params[k];
        for (size_t i = 0; i < em_params_size(ps); i++) {
            em_tensor *p = em_params_get(ps, i);
            if (!layers) {
                snprintf(name, sizeof name, "trainer.params.%zu.%zu", k, i);
                if ((at = find(r, name)) < 0 || !same_shape(r, at, p))
                    return refuse(t, "parameter %zu of optimizer %zu is missing or has another shape here", i, k);
            }
            if (world_of(t) > 1 && t->env.rank > 0 && world == world_of(t))
                snprintf(name, sizeof name, "trainer.grads.%zu.%zu.r%lld", k, i, (long long)t->env.rank);
            else
                snprintf(name, sizeof name, "trainer.grads.%zu.%zu", k, i);
            if ((at = find(r, name)) >= 0 && !same_shape(r, at, p))
                return refuse(t, "the gradient of parameter %zu of optimizer %zu has another shape here", i, k);
        }
    }
    return EM_OK;
}

/* Copy the saved parameters of a module without layers (after the checks). */
static em_status restore_params(em_trainer *t)
{
    char name[96];
    em_status s = EM_OK;
    em_no_grad_begin();
    for (size_t k = 0; k < t->setup.n_opts && s == EM_OK; k++) {
        const em_params *ps = t->setup.params[k];
        for (size_t i = 0; i < em_params_size(ps) && s == EM_OK; i++) {
            snprintf(name, sizeof name, "trainer.params.%zu.%zu", k, i);
            em_tensor *v = em_safetensors_tensor(t->resume->file, (size_t)find(t->resume, name));
            s = v == NULL ? em_last_status() : em_copy_(em_params_get(ps, i), v);
        }
    }
    em_no_grad_end();
    return s;
}

static em_status apply_body(em_trainer *t)
{
    emi_resume *r = t->resume;
    const cJSON *rec = r->rec;
    rd rr = {0};
    const cJSON *ph = cJSON_GetObjectItemCaseSensitive(rec, "phase");
    emi_phase phase = EMI_PHASE_NONE;
    for (int i = EMI_PHASE_EPOCH_START; cJSON_IsString(ph) && i <= EMI_PHASE_EPOCH_END; i++)
        if (strcmp(ph->valuestring, phase_names[i]) == 0)
            phase = (emi_phase)i;
    if (phase == EMI_PHASE_NONE)
        return refuse(t, "the \"ember.trainer\" record is malformed: \"phase\" is not one ember writes");
    int64_t nb = t->fit.num_training_batches;
    int64_t epoch = get_int(&rr, rec, "epoch", 0, (int64_t)MAX_EXACT_INT);
    int64_t batch_idx = get_int(&rr, rec, "batch_idx", -1, (int64_t)MAX_EXACT_INT);
    int64_t global_step = get_int(&rr, rec, "global_step", 0, (int64_t)MAX_EXACT_INT);
    int64_t total = get_int(&rr, rec, "total_batch_idx", 0, (int64_t)MAX_EXACT_INT);
    int64_t stepped = get_int(&rr, rec, "batches_that_stepped", 0, (int64_t)MAX_EXACT_INT);
    int64_t val_batch_idx = get_int(&rr, rec, "val_batch_idx", -1, (int64_t)MAX_EXACT_INT);
    int64_t accumulate = get_int(&rr, rec, "accumulate", 1, (int64_t)MAX_EXACT_INT);
    bool is_last = get_bool(&rr, rec, "is_last_batch");
    bool should_stop = get_bool(&rr, rec, "should_stop");
    bool min_info = get_bool(&rr, rec, "min_info_printed");
    bool reached_end = get_bool(&rr, rec, "epoch_reached_end");
    bool train_epoch_end = get_bool(&rr, rec, "train_epoch_end");
    em_grad_scaler_state ss = {0};
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(rec, "grad_scaler");
    if (cJSON_IsObject(sc)) {
        ss.scale = get_num(&rr, sc, "scale");
        ss.growth_factor = get_num(&rr, sc, "growth_factor");
        ss.backoff_factor = get_num(&rr, sc, "backoff_factor");
        ss.growth_interval = get_int(&rr, sc, "growth_interval", 1, (int64_t)MAX_EXACT_INT);
        ss.growth_tracker = get_int(&rr, sc, "growth_tracker", 0, (int64_t)MAX_EXACT_INT);
    }
    if (rr.bad)
        return refuse(t, "the \"ember.trainer\" record is malformed: %s", rr.what);
    if (phase != EMI_PHASE_EPOCH_START && phase != EMI_PHASE_EPOCH_END && (batch_idx < 0 || batch_idx >= nb))
        return refuse(t, "the \"ember.trainer\" record is malformed: batch %lld of an epoch of %lld",
                      (long long)batch_idx, (long long)nb);
    em_status s = check_setup(t, phase, rec);
    if (s != EM_OK)
        return s;
    emi_results train = {0};
    emi_kvlist cbm = {0}, pbm = {0};
    cb_state *cs = NULL;
    size_t n_cs = 0;
    if (!parse_results(&rr, cJSON_GetObjectItemCaseSensitive(rec, "train_results"), &train) ||
        !parse_kv(&rr, cJSON_GetObjectItemCaseSensitive(rec, "callback_metrics"), "callback_metrics", &cbm) ||
        !parse_kv(&rr, cJSON_GetObjectItemCaseSensitive(rec, "progress_bar_metrics"), "progress_bar_metrics", &pbm))
        s = refuse(t, "the \"ember.trainer\" record is malformed: %s", rr.what);
    if (s == EM_OK)
        s = read_callbacks(t, cJSON_GetObjectItemCaseSensitive(rec, "callbacks"), &cs, &n_cs);
    if (s == EM_OK && cJSON_IsObject(sc) && t->fit.scaler != NULL) {
        /* checked on a copy of the scaler's state: set_state refuses what em_grad_scaler_new would */
        em_grad_scaler *probe = em_grad_scaler_new(NULL);
        s = probe == NULL ? em_last_status() : em_grad_scaler_set_state(probe, &ss);
        em_grad_scaler_free(probe);
        if (s != EM_OK) {
            em_clear_error();
            s = refuse(t, "the grad scaler's state is invalid");
        }
    }
    /* everything checked; now the changes: weights, optimizers, schedulers first (they check themselves
     * whole before changing anything) */
    em_scheduler **scheds = s == EM_OK ? calloc(t->setup.n_scheds + 1, sizeof *scheds) : NULL;
    if (s == EM_OK && scheds == NULL)
        s = emi_fail(EM_ENOMEM, WHO_LOAD ": out of memory");
    for (size_t i = 0; s == EM_OK && i < t->setup.n_scheds; i++)
        scheds[i] = t->setup.scheds[i].sched;
    if (s == EM_OK)
        s = emi_checkpoint_restore(r->file, WHO_LOAD, t->module->layers, t->setup.opts, t->setup.n_opts, scheds,
                                   t->setup.n_scheds);
    free(scheds);
    if (s == EM_OK && t->module->layers == NULL)
        s = restore_params(t);
    if (s == EM_OK && t->fit.scaler != NULL)
        s = em_grad_scaler_set_state(t->fit.scaler, &ss);
    if (s == EM_OK) {
        t->current_epoch = epoch;
        t->batch_idx = batch_idx;
        t->global_step = global_step;
        t->total_batch_idx = total;
        t->batches_that_stepped = stepped;
        t->val_batch_idx = val_batch_idx;
        t->is_last_batch = is_last;
        t->should_stop = should_stop;
        t->min_info_printed = min_info;
        t->epoch_reached_end = reached_end;
        t->metrics.train_epoch_end = train_epoch_end;
        results_free(&t->metrics.train);
        t->metrics.train = train;
        train = (emi_results){0};
        emi_kvlist_free(&t->metrics.callback);
        emi_kvlist_free(&t->metrics.progbar);
        t->metrics.callback = cbm;
        t->metrics.progbar = pbm;
        cbm = pbm = (emi_kvlist){0};
        r->phase = phase;
        r->accumulate = accumulate;
        t->resume_phase = phase;
    }
    /* the callbacks' state (Lightning: _restore_modules_and_callbacks; a missing one is warned about) */
    for (size_t i = 0; s == EM_OK && i < t->n_callbacks; i++) {
        em_callback *cb = t->callbacks[i];
        const em_callback_ops *ops = em_callback_get_ops(cb);
        if (ops == NULL || ops->version < 3 || ops->name == NULL)
            continue;
        for (size_t j = 0; j < n_cs; j++) {
            if (cs[j].used || strcmp(cs[j].name, ops->name) != 0)
                continue;
            cs[j].used = true;
            if (ops->state_load == NULL)
                break;
            em_clear_error();
            const char *prev = emi_hook_enter(t, "load_state_dict");
            s = ops->state_load(cb, t, cs[j].bytes, cs[j].n);
            s = emi_hook_leave(t, prev, "load_state_dict", s);
            break;
        }
    }
    if (s == EM_OK) {
        char missing[600] = "";
        size_t off = 0;
        for (size_t j = 0; j < n_cs; j++)
            if (!cs[j].used && off + 4 < sizeof missing) {
                int w = snprintf(missing + off, sizeof missing - off, "%s'%s'", off ? ", " : "", cs[j].name);
                off += w > 0 ? (size_t)w : 0;
            }
        if (off > 0)
            emi_warn("Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be "
                     "provided during `Trainer` instantiation. Please add the following callbacks: [%s].", missing);
    }
    results_free(&train);
    emi_kvlist_free(&cbm);
    emi_kvlist_free(&pbm);
    callbacks_free(cs, n_cs);
    return s;
}

/* The fit's failure with the message as it stands ("em_trainer_fit_from: PATH: ..."). */
static em_status resume_failed(em_trainer *t, em_status s)
{
    if (t->fail_status != EM_OK)
        return t->fail_status;
    t->fail_status = s;
    snprintf(t->error, sizeof t->error, "%s", em_last_error()[0] != '\0' ? em_last_error() : em_status_name(s));
    return s;
}

em_status emi_resume_apply(em_trainer *t)
{
    if (t->resume == NULL)
        return EM_OK;
    em_scope_begin();
    em_clear_error();
    em_status s = apply_body(t);
    em_scope_end();
    return s == EM_OK ? EM_OK : resume_failed(t, s);
}

static em_status enter_body(em_trainer *t)
{
    emi_resume *r = t->resume;
    char name[96];
    em_status s = EM_OK;
    t->accumulate = r->accumulate;
    /* the gradients as they were (fit start set every one to None) */
    bool own_rank = world_of(t) > 1 && t->env.rank > 0 && r->saved_world == world_of(t);
    for (size_t k = 0; k < t->setup.n_opts && s == EM_OK; k++) {
        const em_params *ps = t->setup.params[k];
        for (size_t i = 0; i < em_params_size(ps) && s == EM_OK; i++) {
            if (own_rank)
                snprintf(name, sizeof name, "trainer.grads.%zu.%zu.r%lld", k, i, (long long)t->env.rank);
            else
                snprintf(name, sizeof name, "trainer.grads.%zu.%zu", k, i);
            int64_t at = find(r, name);
            if (at < 0)
                continue;
            em_tensor *p = em_params_get(ps, i);
            em_tensor *g = em_safetensors_tensor(r->file, (size_t)at);
            if (g != NULL)
                g = em_to_dtype(g, em_tensor_dtype(p));
            if (g != NULL)
                g = em_to_device(g, em_tensor_device(p));
            s = g == NULL ? em_last_status() : em_tensor_set_grad(p, g);
        }
    }
    /* the generators, last: nothing draws from them between here and the save point's continuation */
    int64_t rank = r->saved_world == world_of(t) ? t->env.rank : 0;
    snprintf(name, sizeof name, "trainer.rng.cpu.%lld", (long long)rank);
    em_tensor *cpu = s == EM_OK ? em_safetensors_tensor(r->file, (size_t)find(r, name)) : NULL;
    if (s == EM_OK)
        s = cpu == NULL ? em_last_status() : emi_rng_set_state(-1, cpu);
    for (int64_t d = 0; s == EM_OK && em_cuda_is_available() && d < em_cuda_device_count(); d++) {
        snprintf(name, sizeof name, "trainer.rng.cuda.%lld", (long long)d);
        int64_t at = find(r, name);
        if (at < 0)
            break; /* saved where CUDA was absent */
        em_tensor *st = em_safetensors_tensor(r->file, (size_t)at);
        s = st == NULL ? em_last_status() : emi_rng_set_state((int)d, st);
    }
    return s;
}

em_status emi_resume_enter_loop(em_trainer *t)
{
    if (t->resume == NULL)
        return EM_OK;
    em_scope_begin();
    em_clear_error();
    em_status s = enter_body(t);
    em_scope_end();
    emi_resume_close(t);
    return s == EM_OK ? EM_OK : resume_failed(t, s);
}
