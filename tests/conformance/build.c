/* build.c: everything a case builds from its file alone: the nets and their initial weights, the
 * data loaders, the trainer (config and callbacks) and, in configure_optimizers, the optimizers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conformance.h"

/* ---- model and initial weights ----------------------------------------------------------------------- */

static em_nn *build_layer(conf_run *r, const cJSON *layer, const char *where)
{
    const char *type = NULL;
    if (!cj_req_string(r, layer, "type", where, &type))
        return NULL;
    em_nn *m = NULL;
    if (strcmp(type, "Linear") == 0) {
        static const char *const keys[] = {"type", "in_features", "out_features", "bias", NULL};
        int64_t in = 0, out = 0;
        bool bias = true;
        if (!cj_keys(r, layer, where, keys) || !cj_req_int(r, layer, "in_features", where, &in) ||
            !cj_req_int(r, layer, "out_features", where, &out) || !cj_opt_bool(r, layer, "bias", where, &bias))
            return NULL;
        m = em_nn_linear(in, out, bias);
    } else if (strcmp(type, "LeakyReLU") == 0) {
        static const char *const keys[] = {"type", "negative_slope", NULL};
        double slope = 0.01;
        if (!cj_keys(r, layer, where, keys) || !cj_opt_number(r, layer, "negative_slope", where, &slope))
            return NULL;
        m = em_nn_leaky_relu(slope);
    } else {
        static const char *const keys[] = {"type", NULL};
        if (strcmp(type, "Tanh") == 0)
            m = em_nn_tanh();
        else if (strcmp(type, "ReLU") == 0)
            m = em_nn_relu();
        else if (strcmp(type, "Sigmoid") == 0)
            m = em_nn_sigmoid();
        else {
            conf_fail(r, "%s.type \"%s\" is not a supported layer (Linear, Tanh, ReLU, Sigmoid, LeakyReLU)",
                      where, type);
            return NULL;
        }
        if (!cj_keys(r, layer, where, keys)) {
            em_nn_free(m);
            return NULL;
        }
    }
    if (m == NULL)
        conf_fail(r, "%s: cannot build the %s layer: %s", where, type, em_last_error());
    return m;
}

static bool load_weights(conf_run *r)
{
    const cJSON *iw = NULL;
    if (!cj_req_object(r, r->doc, "initial_weights", "case", &iw))
        return false;
    for (const cJSON *w = iw->child; w != NULL; w = w->next) {
        char where[300];
        snprintf(where, sizeof where, "initial_weights.%s", w->string);
        static const char *const keys[] = {"shape", "values", NULL};
        const cJSON *shape = NULL, *values = NULL;
        if (!cj_keys(r, w, where, keys) || !cj_req_array(r, w, "shape", where, &shape) ||
            !cj_req_array(r, w, "values", where, &values))
            return false;
        em_tensor *p = em_nn_get(r->root, w->string);
        if (p == NULL)
            return conf_fail(r, "%s: the model has no parameter of that name", where);
        int64_t have[EM_MAX_DIMS];
        int nd = em_tensor_shape(p, have, EM_MAX_DIMS);
        if (nd != cJSON_GetArraySize(shape))
            return conf_fail(r, "%s: shape has %d dimensions, the parameter %d", where,
                             cJSON_GetArraySize(shape), nd);
        for (int d = 0; d < nd; d++) {
            const cJSON *s = cJSON_GetArrayItem(shape, d);
            if (!cj_is_integral(s) || (int64_t)s->valuedouble != have[d])
                return conf_fail(r, "%s: shape[%d] differs from the parameter's size %lld", where, d,
                                 (long long)have[d]);
        }
        size_t n = (size_t)cJSON_GetArraySize(values);
        if ((int64_t)n != em_tensor_numel(p))
            return conf_fail(r, "%s: %zu values for %lld elements", where, n, (long long)em_tensor_numel(p));
        float *buf = malloc((n + 1) * sizeof *buf);
        if (buf == NULL)
            return conf_fail(r, "out of memory");
        size_t i = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, values)
        {
            if (!cJSON_IsNumber(v)) {
                free(buf);
                return conf_fail(r, "%s.values[%zu] is not a number", where, i);
            }
            buf[i++] = (float)v->valuedouble; /* the exact float32 the case wrote */
        }
        em_status s = em_nn_set(r->root, w->string, buf, EM_F32, n);
        free(buf);
        if (s != EM_OK)
            return conf_fail(r, "%s: em_nn_set failed: %s", where, em_last_error());
    }
    /* every parameter must be given: the runner never relies on RNG initialisation */
    for (size_t i = 0; i < em_nn_num_parameters(r->root); i++) {
        const char *pname = em_nn_parameter_name(r->root, i);
        if (cj_get(iw, pname) == NULL)
            return conf_fail(r, "initial_weights has no values for the parameter %s", pname);
    }
    return true;
}

bool build_model(conf_run *r)
{
    const cJSON *model = NULL;
    if (!cj_req_object(r, r->doc, "model", "case", &model))
        return false;
    r->root = em_nn_container();
    if (r->root == NULL)
        return conf_fail(r, "em_nn_container failed: %s", em_last_error());
    for (const cJSON *net = model->child; net != NULL; net = net->next) {
        char where[300];
        snprintf(where, sizeof where, "model.%s", net->string);
        if (r->n_nets == CONF_MAX_NETS)
            return conf_fail(r, "model: more than %d nets", CONF_MAX_NETS);
        if (!cJSON_IsArray(net) || cJSON_GetArraySize(net) == 0)
            return conf_fail(r, "%s must be a non-empty list of layers", where);
        size_t n = (size_t)cJSON_GetArraySize(net);
        em_nn **layers = calloc(n, sizeof *layers);
        if (layers == NULL)
            return conf_fail(r, "out of memory");
        size_t i = 0;
        const cJSON *layer;
        cJSON_ArrayForEach(layer, net)
        {
            char lw[340];
            snprintf(lw, sizeof lw, "%s[%zu]", where, i);
            layers[i] = build_layer(r, layer, lw);
            if (layers[i] == NULL) {
                for (size_t j = 0; j < i; j++)
                    em_nn_free(layers[j]);
                free(layers);
                return false;
            }
            i++;
        }
        em_nn *seq = em_nn_sequential(layers, n); /* takes ownership of the layers */
        free(layers);
        if (seq == NULL || em_nn_add(r->root, net->string, seq) != EM_OK)
            return conf_fail(r, "%s: cannot build the Sequential: %s", where, em_last_error());
        r->nets[r->n_nets] = em_nn_child(r->root, net->string);
        r->net_names[r->n_nets] = net->string;
        r->n_nets++;
    }
    if (r->n_nets == 0)
        return conf_fail(r, "model has no nets");
    return load_weights(r);
}

em_nn *conf_net(conf_run *r, const char *name)
{
    for (size_t i = 0; i < r->n_nets; i++)
        if (strcmp(r->net_names[i], name) == 0)
            return r->nets[i];
    conf_fail(r, "behaviour %s needs a net named \"%s\" in model", r->kind != NULL ? r->kind->name : "?", name);
    return NULL;
}

em_tensor *conf_loss_fn(conf_run *r, const em_tensor *out, const em_tensor *y)
{
    switch (r->loss) {
    case LOSS_MSE:
        return em_mse_loss(out, y, EM_REDUCTION_MEAN);
    case LOSS_BCE_LOGITS:
        return em_bce_with_logits(out, y, NULL, NULL, EM_REDUCTION_MEAN);
    case LOSS_CROSS_ENTROPY:
        return em_cross_entropy(out, y, EM_REDUCTION_MEAN);
    }
    return NULL;
}

/* ---- data ------------------------------------------------------------------------------------------------ */

/* A [rows, cols] float32 tensor (cols 0: a 1-D [rows] tensor) or int64 [rows] from a JSON list. */
static em_tensor *matrix(conf_run *r, const cJSON *list, const char *where, em_dtype dtype)
{
    size_t rows = (size_t)cJSON_GetArraySize(list);
    if (rows == 0) {
        conf_fail(r, "%s is empty", where);
        return NULL;
    }
    const cJSON *first = cJSON_GetArrayItem(list, 0);
    size_t cols = cJSON_IsArray(first) ? (size_t)cJSON_GetArraySize(first) : 0;
    if (dtype == EM_I64 && cols != 0) {
        conf_fail(r, "%s: int64 targets must be a flat list of class indices", where);
        return NULL;
    }
    size_t n = rows * (cols ? cols : 1);
    void *buf = malloc(n * (dtype == EM_I64 ? sizeof(int64_t) : sizeof(float)));
    if (buf == NULL) {
        conf_fail(r, "out of memory");
        return NULL;
    }
    size_t k = 0, i = 0;
    const cJSON *row;
    cJSON_ArrayForEach(row, list)
    {
        if ((cols != 0) != cJSON_IsArray(row) || (cols != 0 && (size_t)cJSON_GetArraySize(row) != cols)) {
            free(buf);
            conf_fail(r, "%s[%zu] does not have the shape of %s[0]", where, i, where);
            return NULL;
        }
        const cJSON *v = row, *end = NULL;
        if (cols != 0)
            v = row->child;
        else
            end = row->next;
        for (; v != end; v = v->next) {
            if (dtype == EM_I64) {
                if (!cj_is_integral(v)) {
                    free(buf);
                    conf_fail(r, "%s[%zu] is not an integer class index", where, i);
                    return NULL;
                }
                ((int64_t *)buf)[k++] = (int64_t)v->valuedouble;
            } else {
                if (!cJSON_IsNumber(v)) {
                    free(buf);
                    conf_fail(r, "%s[%zu] holds a value that is not a number", where, i);
                    return NULL;
                }
                ((float *)buf)[k++] = (float)v->valuedouble;
            }
            if (cols == 0)
                break;
        }
        i++;
    }
    int64_t shape[2] = {(int64_t)rows, (int64_t)cols};
    em_tensor *t = em_tensor_from(buf, dtype, shape, cols ? 2 : 1, NULL);
    free(buf);
    if (t == NULL)
        conf_fail(r, "%s: em_tensor_from failed: %s", where, em_last_error());
    return t;
}

static em_loader *build_loader(conf_run *r, const cJSON *d, const char *where)
{
    static const char *const keys[] = {"x", "y", "y_dtype", "num_samples", "batch_size", "shuffle",
                                       "drop_last", NULL};
    const cJSON *x = NULL, *y = NULL;
    const char *y_dtype = NULL;
    int64_t num = 0, bs = 0;
    bool shuffle = false, drop_last = false;
    if (!cj_keys(r, d, where, keys) || !cj_req_array(r, d, "x", where, &x) || !cj_req_array(r, d, "y", where, &y) ||
        !cj_req_string(r, d, "y_dtype", where, &y_dtype) || !cj_req_int(r, d, "num_samples", where, &num) ||
        !cj_req_int(r, d, "batch_size", where, &bs) || !cj_opt_bool(r, d, "shuffle", where, &shuffle) ||
        !cj_opt_bool(r, d, "drop_last", where, &drop_last))
        return NULL;
    if (shuffle) {
        conf_fail(r, "%s.shuffle true cannot be reproduced (torch's permutation generator)", where);
        return NULL;
    }
    em_dtype ydt;
    if (strcmp(y_dtype, "float32") == 0)
        ydt = EM_F32;
    else if (strcmp(y_dtype, "int64") == 0)
        ydt = EM_I64;
    else {
        conf_fail(r, "%s.y_dtype \"%s\" is not supported (float32, int64)", where, y_dtype);
        return NULL;
    }
    if (cJSON_GetArraySize(x) != num || cJSON_GetArraySize(y) != num) {
        conf_fail(r, "%s: num_samples is %lld but x has %d rows and y %d", where, (long long)num,
                  cJSON_GetArraySize(x), cJSON_GetArraySize(y));
        return NULL;
    }
    char wx[300], wy[300];
    snprintf(wx, sizeof wx, "%s.x", where);
    snprintf(wy, sizeof wy, "%s.y", where);
    em_loader *l = NULL;
    em_scope_begin();
    em_tensor *tx = matrix(r, x, wx, EM_F32);
    em_tensor *ty = tx != NULL ? matrix(r, y, wy, ydt) : NULL;
    if (ty != NULL) {
        l = em_tensor_loader((em_tensor *[]){tx, ty}, 2,
                             &(em_loader_opts){.batch_size = bs, .shuffle = false, .drop_last = drop_last});
        if (l == NULL)
            conf_fail(r, "%s: em_tensor_loader failed: %s", where, em_last_error());
    }
    em_scope_end();
    return l;
}

/* ---- ddp_indexed: the module's own loader, (x, y, row index) sampled by DistributedSampler ---------------- */

typedef struct ddp_loader {
    em_tensor *x, *y;  /* caller-owned */
    int64_t n, batch_size, rank, world, epoch, have_epoch;
    bool shuffle, drop_last;
    int64_t *idx;      /* this rank's sample indices for `have_epoch` */
    int64_t n_idx;
} ddp_loader;

static em_status ddp_indices(ddp_loader *d)
{
    if (d->idx != NULL && d->have_epoch == d->epoch)
        return EM_OK;
    int64_t n = em_distributed_sampler_indices(d->n, d->world, d->rank, d->shuffle, 0, d->epoch, d->drop_last, NULL, 0);
    if (n < 0)
        return em_last_status();
    free(d->idx);
    d->idx = malloc((size_t)(n > 0 ? n : 1) * sizeof *d->idx);
    if (d->idx == NULL)
        return em_error_set(EM_ENOMEM, "ddp loader: out of memory");
    d->n_idx = em_distributed_sampler_indices(d->n, d->world, d->rank, d->shuffle, 0, d->epoch, d->drop_last, d->idx, n);
    d->have_epoch = d->epoch;
    return EM_OK;
}

static int64_t ddp_num_batches(void *state)
{
    ddp_loader *d = state;
    if (ddp_indices(d) != EM_OK)
        return 0;
    return d->n_idx / d->batch_size + (d->n_idx % d->batch_size != 0);
}

static em_status ddp_get_batch(void *state, int64_t index, em_batch *out)
{
    ddp_loader *d = state;
    em_status s = ddp_indices(d);
    if (s != EM_OK)
        return s;
    int64_t start = index * d->batch_size;
    int64_t len = d->n_idx - start < d->batch_size ? d->n_idx - start : d->batch_size;
    em_tensor *ix = em_tensor_from(d->idx + start, EM_I64, &len, 1, NULL);
    out->n = 3;
    out->t[0] = em_index_select(d->x, 0, ix);
    out->t[1] = em_index_select(d->y, 0, ix);
    out->t[2] = ix;
    return out->t[0] != NULL && out->t[1] != NULL ? EM_OK : em_last_status();
}

static void ddp_set_epoch(void *state, int64_t epoch)
{
    ((ddp_loader *)state)->epoch = epoch;
}

static void ddp_set_distributed(void *state, int64_t rank, int64_t world)
{
    ddp_loader *d = state;
    d->rank = rank;
    d->world = world;
    d->have_epoch = -1;
}

static void ddp_destroy(void *state)
{
    ddp_loader *d = state;
    em_tensor_free(d->x);
    em_tensor_free(d->y);
    free(d->idx);
    free(d);
}

static const em_loader_ops ddp_loader_ops = {
    .version = EM_LOADER_OPS_VERSION,
    .num_batches = ddp_num_batches,
    .get_batch = ddp_get_batch,
    .set_epoch = ddp_set_epoch,
    .destroy = ddp_destroy,
    .set_distributed = ddp_set_distributed,
};

static em_loader *build_ddp_loader(conf_run *r, const cJSON *d, const char *where, bool sampler_shuffle,
                                   bool sampler_drop_last)
{
    const cJSON *x = NULL, *y = NULL;
    int64_t num = 0, bs = 0;
    bool shuffle = false, drop_last = false;
    if (!cj_req_array(r, d, "x", where, &x) || !cj_req_array(r, d, "y", where, &y) ||
        !cj_req_int(r, d, "num_samples", where, &num) || !cj_req_int(r, d, "batch_size", where, &bs) ||
        !cj_opt_bool(r, d, "shuffle", where, &shuffle) || !cj_opt_bool(r, d, "drop_last", where, &drop_last))
        return NULL;
    if (shuffle || drop_last) {
        conf_fail(r, "%s: ddp_indexed samples with its DistributedSampler; the loader's shuffle and drop_last must "
                     "be false", where);
        return NULL;
    }
    ddp_loader *dl = calloc(1, sizeof *dl);
    if (dl == NULL) {
        conf_fail(r, "out of memory");
        return NULL;
    }
    char wx[300], wy[300];
    snprintf(wx, sizeof wx, "%s.x", where);
    snprintf(wy, sizeof wy, "%s.y", where);
    dl->x = matrix(r, x, wx, EM_F32); /* no scope open: caller-owned */
    dl->y = dl->x != NULL ? matrix(r, y, wy, EM_F32) : NULL;
    dl->n = num;
    dl->batch_size = bs;
    dl->world = 1;
    dl->have_epoch = -1;
    dl->shuffle = sampler_shuffle;
    dl->drop_last = sampler_drop_last;
    if (dl->y == NULL) {
        ddp_destroy(dl);
        return NULL;
    }
    em_loader *l = em_loader_new(&ddp_loader_ops, dl);
    if (l == NULL)
        conf_fail(r, "%s: em_loader_new failed: %s", where, em_last_error());
    return l;
}

bool build_data(conf_run *r)
{
    const cJSON *data = NULL, *train = NULL;
    static const char *const keys[] = {"train", "val", NULL};
    if (!cj_req_object(r, r->doc, "data", "case", &data) || !cj_keys(r, data, "data", keys) ||
        !cj_req_object(r, data, "train", "data", &train))
        return false;
    bool indexed = strcmp(r->kind->name, "ddp_indexed") == 0;
    r->train = indexed ? build_ddp_loader(r, train, "data.train", r->p.sampler_shuffle, r->p.sampler_drop_last)
                       : build_loader(r, train, "data.train");
    if (r->train == NULL)
        return false;
    if (!cj_is_null_or_absent(data, "val")) {
        const cJSON *val = NULL;
        if (!cj_req_object(r, data, "val", "data", &val))
            return false;
        /* ddp_indexed's val loader: DistributedSampler(shuffle=False, drop_last=False) */
        r->val = indexed ? build_ddp_loader(r, val, "data.val", false, false) : build_loader(r, val, "data.val");
        if (r->val == NULL)
            return false;
    }
    return true;
}

/* ---- trainer --------------------------------------------------------------------------------------------- */

/* limit_*_batches / val_check_interval: an int is a count of batches, a float a fraction. */
static bool amount(conf_run *r, const cJSON *tr, const char *key, em_amount *out)
{
    if (cj_is_null_or_absent(tr, key))
        return true;
    double v = 0;
    if (!cj_req_number(r, tr, key, "trainer", &v))
        return false;
    *out = cj_written_as_float(r, key) ? EM_FRACTION(v) : EM_BATCHES(v);
    return true;
}

/* A JSON integer or null (EM_NONE). */
static bool int_or_none(conf_run *r, const cJSON *tr, const char *key, int64_t *out)
{
    const cJSON *v = cj_get(tr, key);
    if (v == NULL)
        return true;
    if (cJSON_IsNull(v)) {
        *out = EM_NONE;
        return true;
    }
    return cj_req_int(r, tr, key, "trainer", out);
}

static bool must_be(conf_run *r, const cJSON *tr, const char *key, bool want)
{
    const cJSON *v = cj_get(tr, key);
    if (v == NULL)
        return true;
    if (!cJSON_IsBool(v) || cJSON_IsTrue(v) != want)
        return conf_fail(r, "trainer.%s must be %s for this runner", key, want ? "true" : "false");
    return true;
}

/* A number or null (= None, NAN). */
static bool number_or_null(conf_run *r, const cJSON *obj, const char *key, const char *where, double *out)
{
    *out = NAN;
    return cj_is_null_or_absent(obj, key) || cj_req_number(r, obj, key, where, out);
}

/* {"type": "EarlyStopping", every argument of lightning.pytorch.callbacks.EarlyStopping} */
static bool add_early_stopping(conf_run *r, const cJSON *cb, const char *where, int index)
{
    static const char *const keys[] = {"type", "monitor", "min_delta", "patience", "verbose", "mode", "strict",
                                       "check_finite", "stopping_threshold", "divergence_threshold",
                                       "check_on_train_epoch_end", "log_rank_zero_only", "python", NULL};
    if (!cj_keys(r, cb, where, keys))
        return false;
    if (r->n_es == CONF_MAX_ES)
        return conf_fail(r, "%s: more than %d EarlyStopping callbacks", where, CONF_MAX_ES);
    em_early_stopping_opts o = EM_EARLY_STOPPING_OPTS_INIT;
    bool cote = false;
    if (!cj_req_string(r, cb, "monitor", where, &o.monitor) || !cj_opt_number(r, cb, "min_delta", where, &o.min_delta) ||
        !cj_opt_int(r, cb, "patience", where, &o.patience) || !cj_opt_bool(r, cb, "verbose", where, &o.verbose) ||
        !cj_opt_bool(r, cb, "strict", where, &o.strict) || !cj_opt_bool(r, cb, "check_finite", where, &o.check_finite) ||
        !number_or_null(r, cb, "stopping_threshold", where, &o.stopping_threshold) ||
        !number_or_null(r, cb, "divergence_threshold", where, &o.divergence_threshold) ||
        !cj_opt_bool(r, cb, "log_rank_zero_only", where, &o.log_rank_zero_only))
        return false;
    if (!cj_is_null_or_absent(cb, "mode") && !cj_req_string(r, cb, "mode", where, &o.mode))
        return false;
    if (!cj_is_null_or_absent(cb, "check_on_train_epoch_end")) {
        if (!cj_req_bool(r, cb, "check_on_train_epoch_end", where, &cote))
            return false;
        o.check_on_train_epoch_end = cote ? 1 : 0;
    }
    struct conf_es *es = &r->es[r->n_es];
    *es = (struct conf_es){.run = r, .index = r->n_es, .callback = index};
    o.on_check = rec_early_stopping_check;
    o.on_check_user = es;
    em_clear_error();
    es->cb = em_early_stopping(&o);
    if (es->cb == NULL || em_trainer_add_callback(r->trainer, es->cb) != EM_OK)
        return conf_fail(r, "%s: %s", where, em_last_error());
    r->n_es++;
    return true;
}

static bool add_callbacks(conf_run *r, const cJSON *tr)
{
    const cJSON *cbs = cj_get(tr, "callbacks");
    if (cbs == NULL || cJSON_IsNull(cbs))
        return true;
    if (!cJSON_IsArray(cbs))
        return conf_fail(r, "trainer.callbacks must be a list");
    int i = 0;
    const cJSON *cb;
    cJSON_ArrayForEach(cb, cbs)
    {
        char where[64];
        snprintf(where, sizeof where, "trainer.callbacks[%d]", i++);
        const char *type = NULL;
        if (!cj_req_string(r, cb, "type", where, &type))
            return false;
        if (strcmp(type, "EarlyStopping") == 0) {
            if (!add_early_stopping(r, cb, where, i - 1))
                return false;
            continue;
        }
        if (strcmp(type, "GradientAccumulationScheduler") != 0)
            return conf_fail(r, "%s.type \"%s\" is not a supported callback (GradientAccumulationScheduler, "
                                "EarlyStopping)", where, type);
        static const char *const keys[] = {"type", "scheduling", "python", NULL};
        const cJSON *sch = NULL;
        if (!cj_keys(r, cb, where, keys) || !cj_req_object(r, cb, "scheduling", where, &sch))
            return false;
        int64_t pairs[64][2];
        size_t n = 0;
        for (const cJSON *e = sch->child; e != NULL; e = e->next) {
            char *end = NULL;
            long long epoch = strtoll(e->string, &end, 10);
            if (end == e->string || *end != '\0' || !cj_is_integral(e))
                return conf_fail(r, "%s.scheduling: \"%s\" must map an integer epoch to an integer factor", where,
                                 e->string);
            if (n == 64)
                return conf_fail(r, "%s.scheduling: too many entries", where);
            pairs[n][0] = epoch;
            pairs[n][1] = (int64_t)e->valuedouble;
            n++;
        }
        em_callback *c = em_grad_accum_scheduler((const int64_t(*)[2])pairs, n);
        if (c == NULL || em_trainer_add_callback(r->trainer, c) != EM_OK)
            return conf_fail(r, "%s: %s", where, em_last_error());
    }
    return true;
}

bool build_trainer(conf_run *r)
{
    const cJSON *tr = NULL;
    if (!cj_req_object(r, r->doc, "trainer", "case", &tr))
        return false;

    /* the strategy first: a case this build cannot run at all is a SKIP, not a FAIL */
    const char *strategy = NULL;
    int64_t devices = 1;
    if (!cj_is_null_or_absent(tr, "strategy") && !cj_req_string(r, tr, "strategy", "trainer", &strategy))
        return false;
    const cJSON *dv = cj_get(tr, "devices");
    if (dv != NULL && !cJSON_IsNull(dv)) {
        if (cJSON_IsString(dv) && strcmp(dv->valuestring, "auto") == 0)
            devices = 1;
        else if (!cj_req_int(r, tr, "devices", "trainer", &devices))
            return false;
    }
    r->ddp = (strategy != NULL && strcmp(strategy, "ddp") == 0) || devices > 1;
    r->devices = devices;
    if (strategy != NULL && strncmp(strategy, "ddp", 3) == 0 && strcmp(strategy, "ddp") != 0)
        return conf_fail(r, "trainer.strategy \"%s\" is not supported (ddp)", strategy);
    if (!r->ddp && strategy != NULL && strcmp(strategy, "auto") != 0 && strcmp(strategy, "single_device") != 0)
        return conf_fail(r, "trainer.strategy \"%s\" is not supported", strategy);

    static const char *const keys[] = {
        "accelerator", "devices", "strategy", "logger", "enable_checkpointing", "enable_progress_bar",
        "enable_model_summary", "deterministic", "num_sanity_val_steps", "max_epochs", "min_epochs",
        "max_steps", "min_steps", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
        "limit_train_batches", "limit_val_batches", "val_check_interval", "check_val_every_n_epoch",
        "log_every_n_steps", "precision", "callbacks", "use_distributed_sampler", NULL};
    if (!cj_keys(r, tr, "trainer", keys))
        return false;

    const char *accel = NULL;
    if (!cj_is_null_or_absent(tr, "accelerator")) {
        if (!cj_req_string(r, tr, "accelerator", "trainer", &accel))
            return false;
        if (strcmp(accel, "cpu") != 0 && strcmp(accel, "auto") != 0)
            return conf_fail(r, "trainer.accelerator \"%s\" is not supported (cpu)", accel);
    }
    /* no logger, no checkpoints: the runner stays hermetic; a model summary only prints */
    if (!must_be(r, tr, "logger", false) || !must_be(r, tr, "enable_checkpointing", false))
        return false;
    const cJSON *det = cj_get(tr, "deterministic");
    if (det != NULL && !cJSON_IsBool(det))
        return conf_fail(r, "trainer.deterministic must be true or false");
    const cJSON *ems = cj_get(tr, "enable_model_summary");
    if (ems != NULL && !cJSON_IsBool(ems))
        return conf_fail(r, "trainer.enable_model_summary must be true or false");
    bool uds = true;
    if (!cj_opt_bool(r, tr, "use_distributed_sampler", "trainer", &uds))
        return false;

    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.enable_csv_logger = false;
    cfg.enable_progress_bar = false;
    if (!cj_opt_bool(r, tr, "enable_progress_bar", "trainer", &cfg.enable_progress_bar) ||
        !cj_opt_int(r, tr, "num_sanity_val_steps", "trainer", &cfg.num_sanity_val_steps) ||
        !int_or_none(r, tr, "max_epochs", &cfg.max_epochs) || !int_or_none(r, tr, "min_epochs", &cfg.min_epochs) ||
        !cj_opt_int(r, tr, "max_steps", "trainer", &cfg.max_steps) ||
        !int_or_none(r, tr, "min_steps", &cfg.min_steps) ||
        !cj_opt_int(r, tr, "accumulate_grad_batches", "trainer", &cfg.accumulate_grad_batches) ||
        !cj_opt_number(r, tr, "gradient_clip_val", "trainer", &cfg.gradient_clip_val) ||
        !amount(r, tr, "limit_train_batches", &cfg.limit_train_batches) ||
        !amount(r, tr, "limit_val_batches", &cfg.limit_val_batches) ||
        !amount(r, tr, "val_check_interval", &cfg.val_check_interval) ||
        !int_or_none(r, tr, "check_val_every_n_epoch", &cfg.check_val_every_n_epoch) ||
        !cj_opt_int(r, tr, "log_every_n_steps", "trainer", &cfg.log_every_n_steps))
        return false;

    const cJSON *algo = cj_get(tr, "gradient_clip_algorithm");
    if (algo != NULL && !cJSON_IsNull(algo)) {
        if (cJSON_IsString(algo) && strcmp(algo->valuestring, "norm") == 0)
            cfg.gradient_clip_algorithm = EM_CLIP_NORM;
        else if (cJSON_IsString(algo) && strcmp(algo->valuestring, "value") == 0)
            cfg.gradient_clip_algorithm = EM_CLIP_VALUE;
        else
            return conf_fail(r, "trainer.gradient_clip_algorithm must be \"norm\", \"value\" or null");
    }

    const cJSON *prec = cj_get(tr, "precision");
    if (prec != NULL && !cJSON_IsNull(prec)) {
        const char *p = cJSON_IsString(prec) ? prec->valuestring : NULL;
        if ((p != NULL && (strcmp(p, "32-true") == 0 || strcmp(p, "32") == 0)) ||
            (cJSON_IsNumber(prec) && prec->valuedouble == 32))
            cfg.precision = EM_PRECISION_32_TRUE;
        else if (p != NULL && (strcmp(p, "bf16-mixed") == 0 || strcmp(p, "bf16") == 0))
            cfg.precision = EM_PRECISION_BF16_MIXED;
        else if ((p != NULL && (strcmp(p, "16-mixed") == 0 || strcmp(p, "16") == 0)) ||
                 (cJSON_IsNumber(prec) && prec->valuedouble == 16))
            cfg.precision = EM_PRECISION_16_MIXED;
        else
            return conf_fail(r, "trainer.precision is not supported (32-true, bf16-mixed, 16-mixed)");
    }

    if (r->ddp) { /* ember's launcher starts ranks 1..devices-1: this program again, from the top */
        cfg.strategy = EM_STRATEGY_DDP;
        cfg.devices = devices;
        cfg.use_distributed_sampler = uds;
    }
    em_clear_error();
    r->trainer = em_trainer_new(&cfg);
    if (r->trainer == NULL)
        return conf_fail(r, "em_trainer_new rejected the trainer config: %s", em_last_error());
    if (!add_callbacks(r, tr))
        return false;
    /* last, so that the case's callbacks keep their indices: records the pre-clip gradients */
    em_callback *c = rec_callback(r);
    if (c == NULL || em_trainer_add_callback(r->trainer, c) != EM_OK)
        return conf_fail(r, "the recording callback: %s", em_last_error());
    return true;
}

/* ---- optimizers ------------------------------------------------------------------------------------------- */

typedef enum hp_kind {
    HP_NUM,       /* a number, set by name */
    HP_BOOL,      /* true/false, set by name as 0/1 */
    HP_BETAS,     /* [beta1, beta2] */
    HP_FALSE,     /* must be false (a torch feature ember does not have) */
    HP_NULL_FALSE,/* must be null or false */
    HP_LINE_SEARCH
} hp_kind;

typedef struct hp_def {
    const char *key;
    hp_kind kind;
} hp_def;

static const hp_def sgd_hp[] = {{"lr", HP_NUM}, {"momentum", HP_NUM}, {"dampening", HP_NUM},
                                {"weight_decay", HP_NUM}, {"nesterov", HP_BOOL}, {"maximize", HP_BOOL},
                                {"foreach", HP_NULL_FALSE}, {"differentiable", HP_FALSE}, {NULL, HP_NUM}};
static const hp_def adam_hp[] = {{"lr", HP_NUM}, {"betas", HP_BETAS}, {"eps", HP_NUM},
                                 {"weight_decay", HP_NUM}, {"amsgrad", HP_BOOL}, {"maximize", HP_BOOL},
                                 {"foreach", HP_NULL_FALSE}, {"capturable", HP_FALSE},
                                 {"differentiable", HP_FALSE}, {"fused", HP_NULL_FALSE}, {NULL, HP_NUM}};
static const hp_def rmsprop_hp[] = {{"lr", HP_NUM}, {"alpha", HP_NUM}, {"eps", HP_NUM},
                                    {"weight_decay", HP_NUM}, {"momentum", HP_NUM}, {"centered", HP_BOOL},
                                    {"maximize", HP_BOOL}, {"foreach", HP_NULL_FALSE},
                                    {"differentiable", HP_FALSE}, {NULL, HP_NUM}};
static const hp_def adagrad_hp[] = {{"lr", HP_NUM}, {"lr_decay", HP_NUM}, {"weight_decay", HP_NUM},
                                    {"initial_accumulator_value", HP_NUM}, {"eps", HP_NUM},
                                    {"maximize", HP_BOOL}, {"foreach", HP_NULL_FALSE},
                                    {"differentiable", HP_FALSE}, {NULL, HP_NUM}};
static const hp_def lbfgs_hp[] = {{"lr", HP_NUM}, {"max_iter", HP_NUM}, {"max_eval", HP_NUM},
                                  {"tolerance_grad", HP_NUM}, {"tolerance_change", HP_NUM},
                                  {"history_size", HP_NUM}, {"line_search_fn", HP_LINE_SEARCH}, {NULL, HP_NUM}};

static const hp_def *hp_table(const char *type)
{
    if (strcmp(type, "SGD") == 0)
        return sgd_hp;
    if (strcmp(type, "Adam") == 0 || strcmp(type, "AdamW") == 0)
        return adam_hp;
    if (strcmp(type, "RMSprop") == 0)
        return rmsprop_hp;
    if (strcmp(type, "Adagrad") == 0)
        return adagrad_hp;
    if (strcmp(type, "LBFGS") == 0)
        return lbfgs_hp;
    return NULL;
}

/* Look up a number-like hyper-parameter in a group dict (booleans read as 0/1); NAN when absent. */
static double hp_value(const cJSON *group, const char *key)
{
    const cJSON *v = cj_get(group, key);
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v) ? 1.0 : 0.0;
    if (cJSON_IsNumber(v))
        return v->valuedouble;
    return NAN;
}

/* Check one group dict against the optimizer's table (unknown keys, unsupported values). */
static bool check_group(conf_run *r, const cJSON *g, const hp_def *tab, const char *where, bool is_defaults)
{
    for (const cJSON *it = g->child; it != NULL; it = it->next) {
        if (!is_defaults && strcmp(it->string, "params") == 0)
            continue;
        const hp_def *d = tab;
        while (d->key != NULL && strcmp(d->key, it->string) != 0)
            d++;
        if (d->key == NULL)
            return conf_fail(r, "%s.%s is not a hyper-parameter this runner knows for this optimizer", where,
                             it->string);
        switch (d->kind) {
        case HP_NUM:
            if (!cJSON_IsNumber(it) && !(cJSON_IsNull(it) && strcmp(it->string, "max_eval") == 0))
                return conf_fail(r, "%s.%s must be a number", where, it->string);
            break;
        case HP_BOOL:
            if (!cJSON_IsBool(it))
                return conf_fail(r, "%s.%s must be true or false", where, it->string);
            break;
        case HP_BETAS:
            if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(it, 0)) ||
                !cJSON_IsNumber(cJSON_GetArrayItem(it, 1)))
                return conf_fail(r, "%s.betas must be [beta1, beta2]", where);
            break;
        case HP_FALSE:
            if (!cJSON_IsFalse(it))
                return conf_fail(r, "%s.%s = true is not supported by ember's optimizers", where, it->string);
            break;
        case HP_NULL_FALSE:
            if (!cJSON_IsFalse(it) && !cJSON_IsNull(it))
                return conf_fail(r, "%s.%s must be null or false (not supported by ember's optimizers)", where,
                                 it->string);
            break;
        case HP_LINE_SEARCH:
            if (!cJSON_IsNull(it) && !(cJSON_IsString(it) && strcmp(it->valuestring, "strong_wolfe") == 0))
                return conf_fail(r, "%s.line_search_fn must be null or \"strong_wolfe\"", where);
            break;
        }
    }
    return true;
}

static em_optimizer *construct(conf_run *r, const char *type, const em_params *ps, const cJSON *d,
                               const char *where)
{
    double lr = hp_value(d, "lr");
    em_optimizer *opt = NULL;
#define OR_DEFAULT(key, field)                                                                          \
    do {                                                                                                \
        double v_ = hp_value(d, key);                                                                   \
        if (!isnan(v_))                                                                                 \
            field = v_;                                                                                 \
    } while (0)
    if (strcmp(type, "SGD") == 0) {
        if (isnan(lr)) {
            conf_fail(r, "%s.lr is required for SGD", where);
            return NULL;
        }
        em_sgd_opts o = {.lr = lr};
        double nesterov = 0;
        OR_DEFAULT("momentum", o.momentum);
        OR_DEFAULT("dampening", o.dampening);
        OR_DEFAULT("weight_decay", o.weight_decay);
        OR_DEFAULT("nesterov", nesterov);
        o.nesterov = nesterov != 0;
        opt = em_sgd(ps, &o);
    } else if (strcmp(type, "Adam") == 0 || strcmp(type, "AdamW") == 0) {
        bool w = type[4] == 'W';
        em_adam_opts o = EM_ADAM_OPTS_INIT;
        if (w)
            o.weight_decay = 1e-2;
        double amsgrad = 0;
        OR_DEFAULT("lr", o.lr);
        OR_DEFAULT("eps", o.eps);
        OR_DEFAULT("weight_decay", o.weight_decay);
        OR_DEFAULT("amsgrad", amsgrad);
        o.amsgrad = amsgrad != 0;
        const cJSON *betas = cj_get(d, "betas");
        if (cJSON_IsArray(betas)) {
            o.beta1 = cJSON_GetArrayItem(betas, 0)->valuedouble;
            o.beta2 = cJSON_GetArrayItem(betas, 1)->valuedouble;
        }
        opt = w ? em_adamw(ps, &o) : em_adam(ps, &o);
    } else if (strcmp(type, "RMSprop") == 0) {
        em_rmsprop_opts o = EM_RMSPROP_OPTS_INIT;
        double centered = 0;
        OR_DEFAULT("lr", o.lr);
        OR_DEFAULT("alpha", o.alpha);
        OR_DEFAULT("eps", o.eps);
        OR_DEFAULT("weight_decay", o.weight_decay);
        OR_DEFAULT("momentum", o.momentum);
        OR_DEFAULT("centered", centered);
        o.centered = centered != 0;
        opt = em_rmsprop(ps, &o);
    } else if (strcmp(type, "Adagrad") == 0) {
        em_adagrad_opts o = EM_ADAGRAD_OPTS_INIT;
        OR_DEFAULT("lr", o.lr);
        OR_DEFAULT("lr_decay", o.lr_decay);
        OR_DEFAULT("weight_decay", o.weight_decay);
        OR_DEFAULT("initial_accumulator_value", o.initial_accumulator_value);
        OR_DEFAULT("eps", o.eps);
        opt = em_adagrad(ps, &o);
    } else if (strcmp(type, "LBFGS") == 0) {
        em_lbfgs_opts o = EM_LBFGS_OPTS_INIT;
        double max_iter = (double)o.max_iter, max_eval = NAN, hist = (double)o.history_size;
        OR_DEFAULT("lr", o.lr);
        OR_DEFAULT("max_iter", max_iter);
        OR_DEFAULT("max_eval", max_eval);
        OR_DEFAULT("tolerance_grad", o.tolerance_grad);
        OR_DEFAULT("tolerance_change", o.tolerance_change);
        OR_DEFAULT("history_size", hist);
        o.max_iter = (int64_t)max_iter;
        o.max_eval = isnan(max_eval) ? 0 : (int64_t)max_eval; /* null = torch's max_iter * 5 // 4 */
        o.history_size = (int64_t)hist;
        const cJSON *ls = cj_get(d, "line_search_fn");
        o.strong_wolfe = cJSON_IsString(ls);
        opt = em_lbfgs(ps, &o);
    }
#undef OR_DEFAULT
    if (opt == NULL)
        conf_fail(r, "%s: the %s constructor failed: %s", where, type, em_last_error());
    return opt;
}

static em_params *group_params(conf_run *r, const cJSON *g, const char *where)
{
    const cJSON *names = NULL;
    if (!cj_req_array(r, g, "params", where, &names))
        return NULL;
    em_params *ps = em_params_new();
    const cJSON *n;
    cJSON_ArrayForEach(n, names)
    {
        em_tensor *p = cJSON_IsString(n) ? em_nn_get(r->root, n->valuestring) : NULL;
        if (p == NULL || em_params_add(ps, p) != EM_OK) {
            em_params_free(ps);
            conf_fail(r, "%s.params: \"%s\" is not a parameter of the model", where,
                      cJSON_IsString(n) ? n->valuestring : "?");
            return NULL;
        }
    }
    if (em_params_size(ps) == 0) {
        em_params_free(ps);
        conf_fail(r, "%s.params is empty", where);
        return NULL;
    }
    return ps;
}

/* Set the hyper-parameters of group `gi` that differ from what the constructor gave it. */
static bool set_group(conf_run *r, em_optimizer *opt, size_t gi, const cJSON *g, const hp_def *tab,
                      const char *where)
{
    for (const hp_def *d = tab; d->key != NULL; d++) {
        const cJSON *v = cj_get(g, d->key);
        if (v == NULL || cJSON_IsNull(v))
            continue;
        const char *names[2] = {d->key, NULL};
        double vals[2] = {hp_value(g, d->key), NAN};
        if (d->kind == HP_BETAS) {
            names[0] = "beta1";
            names[1] = "beta2";
            vals[0] = cJSON_GetArrayItem(v, 0)->valuedouble;
            vals[1] = cJSON_GetArrayItem(v, 1)->valuedouble;
        } else if (d->kind != HP_NUM && d->kind != HP_BOOL) {
            continue;
        }
        for (int k = 0; k < 2 && names[k] != NULL; k++) {
            double have = NAN;
            if (em_optimizer_get(opt, gi, names[k], &have) != EM_OK) {
                return conf_fail(r, "%s.%s: em_optimizer_get(\"%s\") failed: %s", where, d->key, names[k],
                                 em_last_error());
            }
            if (have == vals[k])
                continue;
            if (em_optimizer_set(opt, gi, names[k], vals[k]) != EM_OK)
                return conf_fail(r, "%s.%s: em_optimizer_set(\"%s\", %.17g) failed: %s", where, d->key, names[k],
                                 vals[k], em_last_error());
        }
    }
    return true;
}

static em_optimizer *build_optimizer(conf_run *r, const cJSON *o, int index)
{
    char where[64];
    snprintf(where, sizeof where, "optimizers[%d]", index);
    static const char *const keys[] = {"type", "param_groups", "defaults", NULL};
    const char *type = NULL;
    const cJSON *groups = NULL;
    if (!cj_keys(r, o, where, keys) || !cj_req_string(r, o, "type", where, &type) ||
        !cj_req_array(r, o, "param_groups", where, &groups))
        return NULL;
    const hp_def *tab = hp_table(type);
    if (tab == NULL) {
        conf_fail(r, "%s.type \"%s\" is not supported (SGD, Adam, AdamW, RMSprop, Adagrad, LBFGS)", where, type);
        return NULL;
    }
    int ng = cJSON_GetArraySize(groups);
    if (ng == 0) {
        conf_fail(r, "%s.param_groups is empty", where);
        return NULL;
    }
    if (strcmp(type, "LBFGS") == 0 && ng != 1) {
        conf_fail(r, "%s: LBFGS takes one parameter group (torch), got %d", where, ng);
        return NULL;
    }
    const cJSON *defaults = cj_get(o, "defaults");
    char gw[96];
    if (defaults != NULL) {
        snprintf(gw, sizeof gw, "%s.defaults", where);
        if (!cJSON_IsObject(defaults)) {
            conf_fail(r, "%s must be an object", gw);
            return NULL;
        }
        if (!check_group(r, defaults, tab, gw, true))
            return NULL;
    }
    for (int gi = 0; gi < ng; gi++) {
        snprintf(gw, sizeof gw, "%s.param_groups[%d]", where, gi);
        const cJSON *g = cJSON_GetArrayItem(groups, gi);
        if (!cJSON_IsObject(g)) {
            conf_fail(r, "%s must be an object", gw);
            return NULL;
        }
        if (!check_group(r, g, tab, gw, false))
            return NULL;
    }

    /* the constructor gets `defaults` (torch: the constructor's arguments), every group then gets its
     * own values; LBFGS (one group) is built from its group directly */
    const cJSON *g0 = cJSON_GetArrayItem(groups, 0);
    snprintf(gw, sizeof gw, "%s.param_groups[0]", where);
    em_params *ps = group_params(r, g0, gw);
    if (ps == NULL)
        return NULL;
    em_optimizer *opt = construct(r, type, ps, strcmp(type, "LBFGS") == 0 || defaults == NULL ? g0 : defaults, where);
    em_params_free(ps);
    if (opt == NULL)
        return NULL;
    for (int gi = 0; gi < ng; gi++) {
        snprintf(gw, sizeof gw, "%s.param_groups[%d]", where, gi);
        const cJSON *g = cJSON_GetArrayItem(groups, gi);
        if (gi > 0) {
            em_params *gp = group_params(r, g, gw);
            em_status s = gp != NULL ? em_optimizer_add_param_group(opt, gp) : EM_EINVAL;
            em_params_free(gp);
            if (s != EM_OK) {
                if (gp != NULL)
                    conf_fail(r, "%s: em_optimizer_add_param_group failed: %s", gw, em_last_error());
                em_optimizer_free(opt);
                return NULL;
            }
        }
        if (strcmp(type, "LBFGS") != 0 && !set_group(r, opt, (size_t)gi, g, tab, gw)) {
            em_optimizer_free(opt);
            return NULL;
        }
    }
    return opt;
}

em_status build_configure_optimizers(em_module *m, em_optim_setup *setup)
{
    conf_run *r = (conf_run *)m;
    const cJSON *list = NULL;
    if (!cj_req_array(r, r->doc, "optimizers", "case", &list))
        return conf_fail_cb(r, "%s", r->why);
    int n = cJSON_GetArraySize(list);
    if (n == 0 || n > CONF_MAX_OPTS)
        return conf_fail_cb(r, "optimizers must hold 1 to %d optimizers (got %d)", CONF_MAX_OPTS, n);
    em_optimizer *opts[CONF_MAX_OPTS];
    for (int i = 0; i < n; i++) {
        em_optimizer *opt = build_optimizer(r, cJSON_GetArrayItem(list, i), i);
        if (opt != NULL && r->automatic) /* records its steps (record.c) */
            opt = rec_wrap_optimizer(r, opt, i);
        if (opt == NULL)
            return conf_fail_cb(r, "%s", r->why);
        if (em_optim_setup_add(setup, opt) != EM_OK) /* the trainer owns it from here */
            return conf_fail_cb(r, "em_optim_setup_add(optimizers[%d]) failed: %s", i, em_last_error());
        opts[i] = opt;
    }
    if (!build_schedulers(r, setup, opts, (size_t)n))
        return conf_fail_cb(r, "%s", r->why);
    return EM_OK;
}
