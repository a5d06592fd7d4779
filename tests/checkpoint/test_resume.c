/* test_resume.c: em_trainer_save_checkpoint / em_trainer_fit_from (issue #10, "Checkpoints and resume").
 *
 * Each equality case runs three fits of the same program (same data, seed, config):
 *   A  uninterrupted;
 *   B  the same, with a "saver" callback that saves a checkpoint at one point (a hook of one batch or
 *      epoch) and then stops the fit by failing (EM_EUSER), or lets max_steps end it;
 *   C  a NEW trainer, module and loaders, em_trainer_fit_from(B's checkpoint).
 * Everything the fits compute is recorded as events (every training_step loss, every learning rate,
 * global_step, logged values from callback_metrics, a draw from a callback's own generator, validation
 * losses); B's events up to the save equal A's first P events, and C's events equal A's events after
 * those P, compared with memcmp; so do the final parameters, and EarlyStopping's state. The module
 * has dropout (the global generator), the loader shuffles, a step-interval StepLR runs, gradients are
 * accumulated over 2 batches, EarlyStopping and a stateful user callback keep state.
 * Then the refusals (another optimizer, layer, optimization mode, scheduler count; files that are not
 * trainer checkpoints, corrupted or truncated), and the save's own errors.
 */
#define _POSIX_C_SOURCE 200809L
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];
static char ckpt[160];

/* ---- events ------------------------------------------------------------------------------------------ */

#define MAX_EV 4096

typedef struct ev {
    char tag[24];
    double v;
} ev;

typedef struct evlog {
    ev e[MAX_EV];
    int n;
} evlog;

static evlog *cur; /* the log of the fit running now */

static void rec(const char *tag, double v)
{
    if (cur == NULL)
        return;
    assert_true(cur->n < MAX_EV);
    ev *e = &cur->e[cur->n++];
    memset(e, 0, sizeof *e);
    snprintf(e->tag, sizeof e->tag, "%s", tag);
    e->v = v;
}

/* a[from..] == b[0..] exactly (tags and the bits of the values) */
static void assert_same_events(const evlog *a, int from, const evlog *b, int count)
{
    assert_true(from + count <= a->n);
    for (int i = 0; i < count; i++) {
        const ev *x = &a->e[from + i], *y = &b->e[i];
        if (strcmp(x->tag, y->tag) != 0 || memcmp(&x->v, &y->v, sizeof x->v) != 0) {
            fprintf(stderr, "event %d differs: %s %.17g vs %s %.17g\n", from + i, x->tag, x->v, y->tag, y->v);
            fail();
        }
    }
}

/* ---- the module ------------------------------------------------------------------------------------------ */

typedef struct setup_opts {
    bool manual;          /* the GAN shape: two optimizers, two schedulers, stepped by training_step */
    int opt_kind;         /* 0: SGD with momentum (auto) / Adam + SGD (manual); 1: Adam (auto) */
    int hidden;           /* 16 */
    int n_scheds;         /* 1 (auto) */
    bool no_layers;       /* the module does not set em_module.layers */
    bool c_sched;         /* a scheduler written in C (with state ops) instead of StepLR */
} setup_opts;

typedef struct model {
    em_module base;
    em_nn *net; /* auto */
    em_nn *g, *d;
    setup_opts o;
} model;

static em_nn *mlp(int in, int hidden, int out, double p)
{
    return EM_NN_SEQUENTIAL(em_nn_linear(in, hidden, true), em_nn_tanh(), em_nn_dropout(p),
                            em_nn_linear(hidden, out, true));
}

static em_tensor *auto_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    model *md = (model *)m;
    em_tensor *loss = em_mse_loss(em_nn_forward(md->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
    if (loss == NULL)
        return NULL;
    rec("loss", em_tensor_item(loss));
    em_log(m, "train_loss", em_tensor_item(loss), EM_LOG_ON_STEP | EM_LOG_ON_EPOCH | EM_LOG_PROG_BAR);
    return loss;
}

/* The GAN shape: D learns to predict y from x, G learns to move x so that D predicts y. */
static em_tensor *manual_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    model *md = (model *)m;
    size_t n = 0, ns = 0;
    em_optimizer **opts = em_optimizers(m, &n);
    em_scheduler **scheds = em_lr_schedulers(m, &ns);
    em_tensor *x = b->t[0], *y = b->t[1];
    /* D */
    em_tensor *d_loss = em_mse_loss(em_nn_forward(md->d, x), y, EM_REDUCTION_MEAN);
    if (d_loss == NULL || em_optimizer_zero_grad(opts[1]) != EM_OK || em_manual_backward(m, d_loss) != EM_OK ||
        em_optimizer_step(opts[1], NULL) != EM_OK)
        return NULL;
    /* G, with D frozen */
    if (em_toggle_optimizer(m, opts[0]) != EM_OK)
        return NULL;
    em_tensor *moved = em_add(x, em_nn_forward(md->g, x));
    em_tensor *g_loss = em_mse_loss(em_nn_forward(md->d, moved), y, EM_REDUCTION_MEAN);
    if (g_loss == NULL || em_optimizer_zero_grad(opts[0]) != EM_OK || em_manual_backward(m, g_loss) != EM_OK ||
        em_optimizer_step(opts[0], NULL) != EM_OK || em_untoggle_optimizer(m, opts[0]) != EM_OK)
        return NULL;
    rec("d_loss", em_tensor_item(d_loss));
    rec("g_loss", em_tensor_item(g_loss));
    em_log(m, "d_loss", em_tensor_item(d_loss), EM_LOG_ON_STEP | EM_LOG_ON_EPOCH);
    em_log(m, "g_loss", em_tensor_item(g_loss), EM_LOG_ON_EPOCH);
    /* the user steps the schedulers: G's every batch, D's at each epoch's last batch */
    em_trainer *t = em_module_trainer(m);
    if (em_scheduler_step(scheds[0]) != EM_OK)
        return NULL;
    if (batch_idx + 1 == em_trainer_num_training_batches(t) && em_scheduler_step(scheds[1]) != EM_OK)
        return NULL;
    return em_detach(g_loss);
}

static em_status validation_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    model *md = (model *)m;
    em_nn *net = md->o.manual ? md->d : md->net;
    em_tensor *loss = em_mse_loss(em_nn_forward(net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
    if (loss == NULL)
        return em_last_status();
    rec("val_step", em_tensor_item(loss));
    return em_log(m, "val_loss", em_tensor_item(loss), 0);
}

/* An optimizer written in C: SGD with momentum 0.9 over float32 parameters, its momentum buffers in C
 * arrays, saved and restored through its ops' state_save / state_load (version 3). */
typedef struct csgd {
    size_t n;     /* floats over all parameters */
    float *buf;   /* momentum buffers, NULL before the first step */
} csgd;

static em_status csgd_step(em_optimizer *self, const em_closure *closure)
{
    csgd *c = em_optimizer_state(self);
    if (closure != NULL && em_closure_call(closure, NULL) != EM_OK)
        return em_last_status();
    const em_params *ps = em_optimizer_group_params(self, 0);
    double lr = em_optimizer_lr(self, 0);
    size_t total = 0;
    for (size_t i = 0; i < em_params_size(ps); i++)
        total += (size_t)em_tensor_numel(em_params_get(ps, i));
    if (c->buf == NULL) {
        c->buf = calloc(total, sizeof(float));
        c->n = total;
    }
    size_t off = 0;
    em_scope_begin();
    em_no_grad_begin();
    em_status s = EM_OK;
    for (size_t i = 0; i < em_params_size(ps) && s == EM_OK; i++) {
        em_tensor *p = em_params_get(ps, i), *g = em_tensor_grad(p);
        size_t n = (size_t)em_tensor_numel(p);
        if (g == NULL) {
            off += n;
            continue;
        }
        float *pv = malloc(n * sizeof *pv), *gv = malloc(n * sizeof *gv);
        s = em_tensor_copy_to(p, pv, n * sizeof *pv, EM_F32);
        if (s == EM_OK)
            s = em_tensor_copy_to(g, gv, n * sizeof *gv, EM_F32);
        for (size_t j = 0; j < n && s == EM_OK; j++) {
            c->buf[off + j] = 0.9f * c->buf[off + j] + gv[j];
            pv[j] -= (float)lr * c->buf[off + j];
        }
        int64_t shape[EM_MAX_DIMS];
        int nd = em_tensor_shape(p, shape, EM_MAX_DIMS);
        if (s == EM_OK)
            s = em_copy_(p, em_tensor_from(pv, EM_F32, shape, nd, NULL));
        free(pv), free(gv);
        off += n;
    }
    em_no_grad_end();
    em_scope_end();
    return s;
}

static em_status csgd_save(em_optimizer *self, void **bytes, size_t *n)
{
    csgd *c = em_optimizer_state(self);
    if (c->buf == NULL)
        return EM_OK; /* no state yet */
    uint8_t *b = malloc(4 + c->n * sizeof(float));
    memcpy(b, "CSG1", 4);
    memcpy(b + 4, c->buf, c->n * sizeof(float));
    *bytes = b;
    *n = 4 + c->n * sizeof(float);
    return EM_OK;
}

static em_status csgd_load(em_optimizer *self, const void *bytes, size_t n)
{
    csgd *c = em_optimizer_state(self);
    if (n < 4 || memcmp(bytes, "CSG1", 4) != 0 || (n - 4) % sizeof(float) != 0)
        return em_error_set(EM_EINVAL, "CSGD: not a state of mine");
    free(c->buf);
    c->n = (n - 4) / sizeof(float);
    c->buf = malloc(n - 4);
    memcpy(c->buf, (const uint8_t *)bytes + 4, n - 4);
    return EM_OK;
}

static void csgd_destroy(void *state)
{
    csgd *c = state;
    free(c->buf);
    free(c);
}

static const em_optimizer_ops csgd_ops = {.version = EM_OPTIMIZER_OPS_VERSION, .name = "CSGD", .step = csgd_step,
                                          .destroy = csgd_destroy, .state_save = csgd_save, .state_load = csgd_load};

/* A scheduler written in C whose own state (a counter it keeps apart from last_epoch) goes through its
 * ops' state_save / state_load (version 2): lr = base * (1 + calls % 3) / 3. */
static em_status cw_step(em_scheduler *self, bool has_metric, double metric)
{
    (void)has_metric, (void)metric;
    int64_t *calls = em_scheduler_state(self);
    double lr = em_scheduler_base_lr(self, 0) * (double)(1 + (*calls)++ % 3) / 3.0;
    return em_optimizer_set_lr(em_scheduler_optimizer(self), 0, lr);
}

static em_status cw_save(em_scheduler *self, void **bytes, size_t *n)
{
    int64_t *b = malloc(sizeof *b);
    *b = *(int64_t *)em_scheduler_state(self);
    *bytes = b;
    *n = sizeof *b;
    return EM_OK;
}

static em_status cw_load(em_scheduler *self, const void *bytes, size_t n)
{
    if (n != sizeof(int64_t))
        return em_error_set(EM_EINVAL, "cw: %zu bytes", n);
    memcpy(em_scheduler_state(self), bytes, n);
    return EM_OK;
}

static const em_scheduler_ops cw_ops = {.version = EM_SCHEDULER_OPS_VERSION, .name = "CycleThirds", .step = cw_step,
                                        .destroy = free, .state_save = cw_save, .state_load = cw_load};

static em_status configure_optimizers(em_module *m, em_optim_setup *setup)
{
    model *md = (model *)m;
    if (!md->o.manual) {
        em_params *ps = em_nn_parameters(md->net);
        em_optimizer *opt;
        if (md->o.opt_kind == 0) {
            opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.05, .momentum = 0.9});
        } else if (md->o.opt_kind == 2) {
            em_lbfgs_opts lo = EM_LBFGS_OPTS_INIT;
            lo.lr = 0.5, lo.max_iter = 4, lo.history_size = 3, lo.strong_wolfe = md->o.hidden == 16;
            opt = em_lbfgs(ps, &lo);
        } else if (md->o.opt_kind == 3) {
            opt = em_optimizer_new(&csgd_ops, ps, 0.05, calloc(1, sizeof(csgd)));
            if (opt != NULL)
                em_optimizer_set(opt, 0, "momentum", 0.9);
        } else {
            em_adam_opts a = EM_ADAM_OPTS_INIT;
            a.lr = 0.01;
            opt = em_adam(ps, &a);
        }
        em_params_free(ps);
        em_status s = em_optim_setup_add(setup, opt);
        for (int i = 0; i < md->o.n_scheds && s == EM_OK; i++)
            s = em_optim_setup_add_scheduler(setup,
                                             md->o.c_sched ? em_scheduler_new(&cw_ops, opt, calloc(1, sizeof(int64_t)))
                                                           : em_step_lr(opt, 3, 0.7),
                                             &(em_scheduler_config){.interval = EM_INTERVAL_STEP});
        return s;
    }
    em_params *pg = em_nn_parameters(md->g), *pd = em_nn_parameters(md->d);
    em_adam_opts a = EM_ADAM_OPTS_INIT;
    a.lr = 0.01, a.beta1 = 0.5;
    em_optimizer *og = em_adam(pg, &a);
    em_optimizer *od = em_sgd(pd, &(em_sgd_opts){.lr = 0.05, .momentum = 0.5});
    em_params_free(pg), em_params_free(pd);
    em_status s = em_optim_setup_add(setup, og);
    if (s == EM_OK)
        s = em_optim_setup_add(setup, od);
    if (s == EM_OK)
        s = em_optim_setup_add_scheduler(setup, em_exponential_lr(og, 0.95), NULL);
    if (s == EM_OK)
        s = em_optim_setup_add_scheduler(setup, em_step_lr(od, 1, 0.5), NULL);
    return s;
}

/* Lightning's default body, written out: a scheduler written in C needs the hook overridden */
static em_status lr_scheduler_step(em_module *m, em_scheduler *s, bool has_metric, double metric)
{
    (void)m;
    return has_metric ? em_scheduler_step_metric(s, metric) : em_scheduler_step(s);
}

static const em_module_ops auto_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = auto_step,
    .configure_optimizers = configure_optimizers,
    .validation_step = validation_step,
    .lr_scheduler_step = lr_scheduler_step,
};
static const em_module_ops manual_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = manual_step,
    .configure_optimizers = configure_optimizers,
    .validation_step = validation_step,
};

static void model_init(model *md, const setup_opts *o, uint64_t seed)
{
    memset(md, 0, sizeof *md);
    md->o = *o;
    em_manual_seed(seed);
    md->base.ops = o->manual ? &manual_ops : &auto_ops;
    md->base.manual_optimization = o->manual;
    if (!o->manual) {
        md->net = mlp(4, o->hidden, 1, 0.25);
        md->base.layers = o->no_layers ? NULL : md->net;
        return;
    }
    md->g = mlp(4, o->hidden, 4, 0.1);
    md->d = mlp(4, o->hidden, 1, 0.25);
    em_nn *c = em_nn_container();
    assert_ok(em_nn_add(c, "G", md->g));
    assert_ok(em_nn_add(c, "D", md->d));
    md->base.layers = c;
}

static void model_free(model *md)
{
    if (md->base.layers != NULL)
        em_nn_free(md->base.layers);
    else
        em_nn_free(md->net);
}

/* Every parameter of the module's nets, as float32 values, concatenated. */
static size_t model_weights(const model *md, float *out, size_t cap)
{
    em_nn *nets[2] = {md->o.manual ? md->g : md->net, md->o.manual ? md->d : NULL};
    size_t off = 0;
    for (int k = 0; k < 2 && nets[k] != NULL; k++)
        for (size_t i = 0; i < em_nn_num_parameters(nets[k]); i++) {
            em_tensor *p = em_nn_parameter(nets[k], i);
            size_t n = (size_t)em_tensor_numel(p);
            assert_true(off + n <= cap);
            assert_ok(em_tensor_copy_to(p, out + off, n * sizeof(float), EM_F32));
            off += n;
        }
    return off;
}

/* ---- callbacks ------------------------------------------------------------------------------------------- */

/* The recorder: what the loop shows its callbacks, and draws from a generator of its own (its state goes
 * into the checkpoint through state_save). */
typedef struct recorder {
    em_generator *gen;
    int64_t batches;
} recorder;

static void record_metric(em_trainer *t, const char *name)
{
    double v;
    if (em_trainer_callback_metric(t, name, &v))
        rec(name, v);
}

static em_status rec_batch_end(em_callback *cb, em_trainer *t, em_module *m, const em_tensor *loss,
                               const em_batch *b, int64_t batch_idx)
{
    (void)m, (void)b;
    recorder *r = em_callback_state(cb);
    r->batches++;
    rec("batch_idx", (double)batch_idx);
    rec("global_step", (double)em_trainer_global_step(t));
    if (loss != NULL)
        rec("out", em_tensor_item(loss));
    for (size_t i = 0; i < em_trainer_num_optimizers(t); i++)
        rec("lr", em_optimizer_lr(em_trainer_optimizer(t, i), 0));
    record_metric(t, "train_loss_step");
    record_metric(t, "d_loss_step");
    em_tensor *u = em_zeros(EM_SHAPE(1), NULL);
    if (u == NULL || em_uniform_(u, 0, 1, r->gen) != EM_OK)
        return em_last_status();
    rec("user_rng", em_tensor_item(u));
    return EM_OK;
}

static em_status rec_epoch_end(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)cb, (void)m;
    rec("epoch_end", (double)em_trainer_current_epoch(t));
    record_metric(t, "train_loss_epoch");
    record_metric(t, "g_loss");
    record_metric(t, "d_loss_epoch");
    return EM_OK;
}

static em_status rec_val_end(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)cb, (void)m;
    if (!em_trainer_sanity_checking(t))
        record_metric(t, "val_loss");
    return EM_OK;
}

static em_status rec_state_save(em_callback *cb, em_trainer *t, void **bytes, size_t *n)
{
    (void)t;
    recorder *r = em_callback_state(cb);
    size_t size = 0;
    if (em_generator_get_state(r->gen, NULL, 0, &size) != EM_OK)
        return em_last_status();
    uint8_t *buf = malloc(size + 8);
    if (buf == NULL)
        return em_error_set(EM_ENOMEM, "recorder: out of memory");
    memcpy(buf, &r->batches, 8);
    if (em_generator_get_state(r->gen, buf + 8, size, &size) != EM_OK) {
        free(buf);
        return em_last_status();
    }
    *bytes = buf;
    *n = size + 8;
    return EM_OK;
}

static em_status rec_state_load(em_callback *cb, em_trainer *t, const void *bytes, size_t n)
{
    (void)t;
    recorder *r = em_callback_state(cb);
    if (n < 8)
        return em_error_set(EM_EINVAL, "recorder: %zu bytes", n);
    memcpy(&r->batches, bytes, 8);
    return em_generator_set_state(r->gen, (const uint8_t *)bytes + 8, n - 8);
}

static void rec_destroy(void *state)
{
    recorder *r = state;
    em_generator_free(r->gen);
    free(r);
}

static const em_callback_ops recorder_ops = {
    .version = EM_CALLBACK_OPS_VERSION,
    .name = "recorder",
    .on_train_batch_end = rec_batch_end,
    .on_train_epoch_end = rec_epoch_end,
    .on_validation_end = rec_val_end,
    .destroy = rec_destroy,
    .state_save = rec_state_save,
    .state_load = rec_state_load,
};

static em_callback *recorder_new(void)
{
    recorder *r = calloc(1, sizeof *r);
    r->gen = em_generator_new(99);
    return em_callback_new(&recorder_ops, r);
}

/* The saver: saves once, at a hook of (epoch, batch), then fails the fit (or not). */
typedef enum where { AT_BATCH_END, AT_VAL_END, AT_EPOCH_END } where;

typedef struct saver {
    where at;
    int64_t epoch, batch; /* batch: -1 = any (AT_VAL_END, AT_EPOCH_END) */
    bool stop;            /* fail the fit after saving */
    bool saved;
    int events;           /* the recorder's events when it saved */
} saver;

static em_status maybe_save(em_callback *cb, em_trainer *t, where at)
{
    saver *s = em_callback_state(cb);
    if (s->saved || s->at != at || em_trainer_current_epoch(t) != s->epoch ||
        (s->batch >= 0 && em_trainer_batch_idx(t) != s->batch) || em_trainer_sanity_checking(t))
        return EM_OK;
    em_status st = em_trainer_save_checkpoint(t, ckpt);
    if (st != EM_OK)
        return st;
    s->saved = true;
    s->events = cur->n;
    return s->stop ? em_error_set(EM_EUSER, "saver: stopping here") : EM_OK;
}

static em_status sv_batch_end(em_callback *cb, em_trainer *t, em_module *m, const em_tensor *loss,
                              const em_batch *b, int64_t batch_idx)
{
    (void)m, (void)loss, (void)b, (void)batch_idx;
    return maybe_save(cb, t, AT_BATCH_END);
}
static em_status sv_val_end(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)m;
    return maybe_save(cb, t, AT_VAL_END);
}
static em_status sv_epoch_end(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)m;
    return maybe_save(cb, t, AT_EPOCH_END);
}

static const em_callback_ops saver_ops = {
    .version = EM_CALLBACK_OPS_VERSION,
    .name = "saver",
    .on_train_batch_end = sv_batch_end,
    .on_validation_end = sv_val_end,
    .on_train_epoch_end = sv_epoch_end,
    .destroy = free,
    .monitoring = true, /* its on_train_epoch_end after EarlyStopping's: saved after the epoch's checks */
};

/* ---- one fit ------------------------------------------------------------------------------------------ */

typedef struct run_opts {
    setup_opts s;
    em_precision precision;
    bool scaler;                /* 16-mixed with a config grad scaler (on the CPU) */
    int64_t max_epochs, max_steps;
    int64_t accumulate;
    em_amount val_check_interval;
    const saver *save;          /* NULL: no saver */
    const char *resume_from;    /* em_trainer_fit_from */
} run_opts;

typedef struct run_result {
    em_status status;
    int saved_events;
    int64_t global_step, epoch;
    float w[4096];
    size_t nw;
    int64_t es_wait;
    double es_best, scale;
    char error[600];
} run_result;

static void run(const run_opts *o, evlog *log, run_result *out)
{
    memset(out, 0, sizeof *out);
    log->n = 0;
    cur = log;
    em_scope_begin();
    em_grad_scaler *scaler = NULL;
    if (o->scaler) {
        em_grad_scaler_opts so = EM_GRAD_SCALER_OPTS_INIT;
        so.init_scale = 1024.0, so.growth_interval = 3;
        scaler = em_grad_scaler_new(&so);
        assert_nonnull_em(scaler);
    }
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = o->max_epochs;
    cfg.max_steps = o->max_steps;
    cfg.accumulate_grad_batches = o->accumulate;
    cfg.val_check_interval = o->val_check_interval;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    cfg.log_every_n_steps = 1;
    cfg.seed = 7;
    cfg.accelerator = EM_ACCELERATOR_CPU;
    cfg.precision = o->precision;
    cfg.grad_scaler = scaler;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    em_early_stopping_opts eo = EM_EARLY_STOPPING_OPTS_INIT;
    eo.monitor = "val_loss";
    eo.patience = 1000;
    em_callback *es = em_early_stopping(&eo);
    assert_ok(em_trainer_add_callback(t, recorder_new()));
    assert_ok(em_trainer_add_callback(t, es));
    saver *sv = NULL;
    if (o->save != NULL) {
        sv = malloc(sizeof *sv);
        *sv = *o->save;
        assert_ok(em_trainer_add_callback(t, em_callback_new(&saver_ops, sv)));
    }
    /* data: the same in every run */
    em_manual_seed(123);
    em_tensor *x = em_randn(EM_SHAPE(24, 4), NULL);
    em_tensor *y = em_sum_dim(em_mul_scalar(x, 0.5), 1, true);
    em_tensor *vx = em_randn(EM_SHAPE(8, 4), NULL);
    em_tensor *vy = em_sum_dim(vx, 1, true);
    em_loader *train = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 4, .shuffle = true, .seed = 5});
    em_loader *val = em_tensor_loader((em_tensor *[]){vx, vy}, 2, &(em_loader_opts){.batch_size = 4});
    model md;
    model_init(&md, &o->s, 1);
    out->status = em_trainer_fit_from(t, &md.base, train, val, o->resume_from);
    snprintf(out->error, sizeof out->error, "%s", em_trainer_error(t));
    out->saved_events = sv != NULL && sv->saved ? sv->events : -1;
    out->global_step = em_trainer_global_step(t);
    out->epoch = em_trainer_current_epoch(t);
    out->nw = model_weights(&md, out->w, sizeof out->w / sizeof *out->w);
    out->es_wait = em_early_stopping_wait_count(es);
    out->es_best = em_early_stopping_best_score(es);
    out->scale = scaler != NULL ? em_grad_scaler_get_scale(scaler) : 0;
    em_trainer_free(t);
    em_grad_scaler_free(scaler);
    em_loader_free(train);
    em_loader_free(val);
    model_free(&md);
    em_scope_end();
    cur = NULL;
}

/* ---- equality: interrupted + resumed == uninterrupted ---------------------------------------------------- */

static evlog log_a, log_b, log_c;
static run_result res_a, res_b, res_c;

static run_opts base_opts(void)
{
    run_opts o = {.s = {.hidden = 16, .n_scheds = 1}, .max_epochs = 3, .max_steps = -1, .accumulate = 2,
                  .val_check_interval = EM_FRACTION(1.0)};
    return o;
}

/* A, B (saving at `sv`, stopping unless max_steps ends it), C (resumed); C continues A exactly. */
static void check_resume(run_opts o, saver sv, int64_t b_max_steps)
{
    run(&o, &log_a, &res_a);
    if (res_a.status != EM_OK)
        fprintf(stderr, "uninterrupted fit: %s\n", res_a.error);
    assert_int_equal(res_a.status, EM_OK);
    run_opts ob = o;
    ob.save = &sv;
    ob.max_steps = b_max_steps;
    run(&ob, &log_b, &res_b);
    assert_true(res_b.saved_events > 0);
    if (b_max_steps < 0)
        assert_int_equal(res_b.status, EM_EUSER);
    int p = res_b.saved_events;
    assert_same_events(&log_a, 0, &log_b, p); /* the prefix: B ran as A did */
    run_opts oc = o;
    oc.resume_from = ckpt;
    run(&oc, &log_c, &res_c);
    if (res_c.status != EM_OK)
        fprintf(stderr, "resumed fit: %s\n", res_c.error);
    assert_int_equal(res_c.status, EM_OK);
    assert_int_equal(log_c.n, log_a.n - p);
    assert_true(log_c.n > 0);
    assert_same_events(&log_a, p, &log_c, log_c.n);
    assert_int_equal(res_c.global_step, res_a.global_step);
    assert_int_equal(res_c.epoch, res_a.epoch);
    assert_int_equal(res_c.nw, res_a.nw);
    assert_memory_equal(res_c.w, res_a.w, res_a.nw * sizeof(float));
    assert_int_equal(res_c.es_wait, res_a.es_wait);
    assert_memory_equal(&res_c.es_best, &res_a.es_best, sizeof(double));
    assert_memory_equal(&res_c.scale, &res_a.scale, sizeof(double));
}

/* automatic: inside an accumulation window (batch 2 of epoch 1 does not step: accumulate 2) */
static void test_auto_mid_window(void **state)
{
    (void)state;
    check_resume(base_opts(), (saver){.at = AT_BATCH_END, .epoch = 1, .batch = 2, .stop = true}, -1);
}

/* automatic: right after an optimizer step (batch 3 of epoch 1) */
static void test_auto_after_step(void **state)
{
    (void)state;
    check_resume(base_opts(), (saver){.at = AT_BATCH_END, .epoch = 1, .batch = 3, .stop = true}, -1);
}

/* automatic: after a validation in the middle of the epoch (val_check_interval 0.5) */
static void test_auto_after_validation(void **state)
{
    (void)state;
    run_opts o = base_opts();
    o.val_check_interval = EM_FRACTION(0.5);
    check_resume(o, (saver){.at = AT_VAL_END, .epoch = 1, .batch = 2, .stop = true}, -1);
}

/* automatic: at the end of an epoch (after EarlyStopping's check), Adam */
static void test_auto_epoch_end(void **state)
{
    (void)state;
    run_opts o = base_opts();
    o.s.opt_kind = 1;
    check_resume(o, (saver){.at = AT_EPOCH_END, .epoch = 0, .batch = -1, .stop = true}, -1);
}

/* automatic: max_steps ends fit B (mid-epoch) after the save at that step; C goes on to the end */
static void test_auto_max_steps(void **state)
{
    (void)state;
    check_resume(base_opts(), (saver){.at = AT_BATCH_END, .epoch = 1, .batch = 1, .stop = false}, 4);
}

/* a module without layers: the optimizers' parameters are saved instead */
static void test_auto_no_layers(void **state)
{
    (void)state;
    run_opts o = base_opts();
    o.s.no_layers = true;
    check_resume(o, (saver){.at = AT_BATCH_END, .epoch = 0, .batch = 4, .stop = true}, -1);
}

/* after a fit that ended (max_epochs 1): resume with max_epochs 3 continues as one fit of 3 epochs */
static void test_after_fit(void **state)
{
    (void)state;
    run_opts o = base_opts();
    run(&o, &log_a, &res_a);
    assert_int_equal(res_a.status, EM_OK);
    /* B: one epoch, then save after the fit */
    em_scope_begin();
    evlog *lb = &log_b;
    lb->n = 0;
    cur = lb;
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 1, cfg.accumulate_grad_batches = 2, cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false, cfg.log_every_n_steps = 1, cfg.seed = 7, cfg.accelerator = EM_ACCELERATOR_CPU;
    em_trainer *t = em_trainer_new(&cfg);
    em_early_stopping_opts eo = EM_EARLY_STOPPING_OPTS_INIT;
    eo.monitor = "val_loss", eo.patience = 1000;
    assert_ok(em_trainer_add_callback(t, recorder_new()));
    assert_ok(em_trainer_add_callback(t, em_early_stopping(&eo)));
    em_manual_seed(123);
    em_tensor *x = em_randn(EM_SHAPE(24, 4), NULL);
    em_tensor *y = em_sum_dim(em_mul_scalar(x, 0.5), 1, true);
    em_tensor *vx = em_randn(EM_SHAPE(8, 4), NULL);
    em_tensor *vy = em_sum_dim(vx, 1, true);
    em_loader *train = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 4, .shuffle = true, .seed = 5});
    em_loader *val = em_tensor_loader((em_tensor *[]){vx, vy}, 2, &(em_loader_opts){.batch_size = 4});
    model md;
    model_init(&md, &o.s, 1);
    assert_int_equal(em_trainer_save_checkpoint(t, ckpt), EM_ESTATE); /* no fit yet */
    assert_ok(em_trainer_fit(t, &md.base, train, val));
    int p = lb->n;
    assert_ok(em_trainer_save_checkpoint(t, ckpt));
    em_trainer_free(t);
    em_loader_free(train);
    em_loader_free(val);
    model_free(&md);
    em_scope_end();
    cur = NULL;
    assert_same_events(&log_a, 0, lb, p);
    run_opts oc = o;
    oc.resume_from = ckpt;
    run(&oc, &log_c, &res_c);
    if (res_c.status != EM_OK)
        fprintf(stderr, "resumed fit: %s\n", res_c.error);
    assert_int_equal(res_c.status, EM_OK);
    assert_int_equal(log_c.n, log_a.n - p);
    assert_same_events(&log_a, p, &log_c, log_c.n);
    assert_memory_equal(res_c.w, res_a.w, res_a.nw * sizeof(float));
}

/* manual optimization, the GAN shape: two optimizers, two schedulers the user steps */
static void test_manual_gan(void **state)
{
    (void)state;
    run_opts o = base_opts();
    o.s.manual = true;
    o.accumulate = 1;
    check_resume(o, (saver){.at = AT_BATCH_END, .epoch = 1, .batch = 3, .stop = true}, -1);
}

static void test_manual_gan_epoch_end(void **state)
{
    (void)state;
    run_opts o = base_opts();
    o.s.manual = true;
    o.accumulate = 1;
    check_resume(o, (saver){.at = AT_EPOCH_END, .epoch = 1, .batch = -1, .stop = true}, -1);
}

/* LBFGS (strong Wolfe line search, a history shorter than the run: curvature pairs roll over) */
static void test_lbfgs(void **state)
{
    (void)state;
    run_opts o = base_opts();
    o.s.opt_kind = 2;
    o.accumulate = 1;
    check_resume(o, (saver){.at = AT_BATCH_END, .epoch = 1, .batch = 2, .stop = true}, -1);
    o.s.hidden = 12; /* without the line search */
    check_resume(o, (saver){.at = AT_EPOCH_END, .epoch = 0, .batch = -1, .stop = true}, -1);
}

/* an optimizer written in C whose ops save and load its momentum buffers (ops version 3) */
static void test_c_optimizer(void **state)
{
    (void)state;
    run_opts o = base_opts();
    o.s.opt_kind = 3;
    check_resume(o, (saver){.at = AT_BATCH_END, .epoch = 1, .batch = 2, .stop = true}, -1);
}

/* a scheduler written in C whose ops save and load its own counter (ops version 2) */
static void test_c_scheduler(void **state)
{
    (void)state;
    run_opts o = base_opts();
    o.s.c_sched = true;
    check_resume(o, (saver){.at = AT_BATCH_END, .epoch = 1, .batch = 3, .stop = true}, -1);
}

/* bf16-mixed (autocast on the CPU), mid-window */
static void test_bf16_mixed(void **state)
{
    (void)state;
    run_opts o = base_opts();
    o.precision = EM_PRECISION_BF16_MIXED;
    check_resume(o, (saver){.at = AT_BATCH_END, .epoch = 1, .batch = 0, .stop = true}, -1);
}

/* 16-mixed with the config's grad scaler on the CPU: the scale grows every 3 steps; its state resumes */
static void test_16_mixed_scaler(void **state)
{
    (void)state;
    run_opts o = base_opts();
    o.precision = EM_PRECISION_16_MIXED;
    o.scaler = true;
    check_resume(o, (saver){.at = AT_BATCH_END, .epoch = 1, .batch = 2, .stop = true}, -1);
    assert_true(res_a.scale != 1024.0);
}

/* ---- refusals ---------------------------------------------------------------------------------------------- */

/* Save a checkpoint of the base setup in epoch 0, batch 1. */
static void save_base(void)
{
    run_opts o = base_opts();
    saver sv = {.at = AT_BATCH_END, .epoch = 0, .batch = 1, .stop = true};
    o.save = &sv;
    run(&o, &log_b, &res_b);
    assert_true(res_b.saved_events > 0);
}

static void expect_refusal(run_opts o, const char *path, const char *needle)
{
    o.resume_from = path;
    run(&o, &log_c, &res_c);
    if (res_c.status == EM_OK || strstr(res_c.error, needle) == NULL)
        fprintf(stderr, "wanted a refusal with \"%s\", got %d: %s\n", needle, res_c.status, res_c.error);
    assert_int_not_equal(res_c.status, EM_OK);
    assert_non_null(strstr(res_c.error, needle));
    assert_int_equal(log_c.n, 0); /* nothing trained */
}

static void test_refuse_other_setup(void **state)
{
    (void)state;
    save_base();
    run_opts o = base_opts();
    o.s.opt_kind = 1;
    expect_refusal(o, ckpt, "optimizer 0 is SGD in the checkpoint but Adam here");
    o = base_opts();
    o.s.hidden = 8;
    expect_refusal(o, ckpt, "size mismatch");
    o = base_opts();
    o.s.manual = true;
    o.accumulate = 1;
    expect_refusal(o, ckpt, "the checkpoint is of automatic optimization, this module uses manual optimization");
    o = base_opts();
    o.s.n_scheds = 2;
    expect_refusal(o, ckpt, "the checkpoint has 1 schedulers, 2 given");
    o = base_opts();
    o.s.no_layers = true;
    expect_refusal(o, ckpt, "this module has none");
    o = base_opts();
    o.precision = EM_PRECISION_16_MIXED;
    o.scaler = true;
    expect_refusal(o, ckpt, "another precision");
}

static void test_refuse_bad_files(void **state)
{
    (void)state;
    save_base();
    run_opts o = base_opts();
    /* a missing file */
    char missing[200];
    snprintf(missing, sizeof missing, "%s/nope.ckpt", dir);
    expect_refusal(o, missing, "nope.ckpt");
    /* a weights file */
    char weights[200];
    snprintf(weights, sizeof weights, "%s/w.safetensors", dir);
    em_nn *net = mlp(4, 16, 1, 0.25);
    assert_ok(em_nn_save_safetensors(net, weights, NULL, 0));
    em_nn_free(net);
    expect_refusal(o, weights, "not an ember trainer checkpoint");
    /* truncated, and one byte flipped in the header: the reader refuses, nothing trains */
    FILE *f = fopen(ckpt, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *bytes = malloc((size_t)size);
    assert_int_equal(fread(bytes, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    char cut[200];
    snprintf(cut, sizeof cut, "%s/cut.ckpt", dir);
    f = fopen(cut, "wb");
    fwrite(bytes, 1, (size_t)size / 2, f);
    fclose(f);
    expect_refusal(o, cut, "cut.ckpt");
    bytes[12] = '\x01';
    f = fopen(cut, "wb");
    fwrite(bytes, 1, (size_t)size, f);
    fclose(f);
    expect_refusal(o, cut, "cut.ckpt");
    free(bytes);
    /* "last" without a ModelCheckpoint */
    expect_refusal(o, "last", "ModelCheckpoint");
}

/* The save's own errors: from a hook that is not a save point; two stateful callbacks of one name. */
static em_status save_in_train_start(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)cb, (void)m;
    em_status s = em_trainer_save_checkpoint(t, ckpt);
    assert_int_equal(s, EM_ESTATE);
    assert_error_contains("cannot save from on_train_start");
    em_clear_error();
    return EM_OK;
}

static const em_callback_ops wrong_hook_ops = {
    .version = EM_CALLBACK_OPS_VERSION, .name = "wrong", .on_train_start = save_in_train_start};

static void test_save_errors(void **state)
{
    (void)state;
    em_scope_begin();
    cur = NULL;
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 1, cfg.enable_progress_bar = false, cfg.enable_csv_logger = false;
    cfg.accelerator = EM_ACCELERATOR_CPU;
    em_trainer *t = em_trainer_new(&cfg);
    assert_ok(em_trainer_add_callback(t, em_callback_new(&wrong_hook_ops, NULL)));
    assert_ok(em_trainer_add_callback(t, recorder_new()));
    assert_ok(em_trainer_add_callback(t, recorder_new())); /* two stateful callbacks named "recorder" */
    saver *sv = calloc(1, sizeof *sv);
    *sv = (saver){.at = AT_BATCH_END, .epoch = 0, .batch = 0, .stop = false};
    assert_ok(em_trainer_add_callback(t, em_callback_new(&saver_ops, sv)));
    em_manual_seed(123);
    em_tensor *x = em_randn(EM_SHAPE(8, 4), NULL);
    em_tensor *y = em_sum_dim(x, 1, true);
    em_loader *train = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 4});
    model md;
    setup_opts so = {.hidden = 4, .n_scheds = 0};
    model_init(&md, &so, 1);
    evlog *lg = &log_b;
    lg->n = 0;
    cur = lg;
    assert_int_equal(em_trainer_fit(t, &md.base, train, NULL), EM_EINVAL);
    assert_non_null(strstr(em_trainer_error(t), "two callbacks named \"recorder\" keep state"));
    assert_int_equal(em_trainer_save_checkpoint(t, ckpt), EM_ESTATE); /* after a failed fit */
    assert_int_equal(em_trainer_save_checkpoint(NULL, ckpt), EM_EINVAL);
    assert_int_equal(em_trainer_save_checkpoint(t, NULL), EM_EINVAL);
    em_clear_error();
    cur = NULL;
    em_trainer_free(t);
    em_loader_free(train);
    model_free(&md);
    em_scope_end();
}

/* A scheduler written in C without state ops (version 1) cannot be saved: refused by name, nothing
 * written. */
static const em_scheduler_ops cw_v1_ops = {.version = 1, .name = "NoState", .step = cw_step, .destroy = free};

static void test_refuse_stateless_c_scheduler(void **state)
{
    (void)state;
    em_nn *net = mlp(4, 4, 1, 0.0);
    em_params *ps = em_nn_parameters(net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    em_scheduler *sc = em_scheduler_new(&cw_v1_ops, opt, calloc(1, sizeof(int64_t)));
    assert_nonnull_em(sc);
    char path[200];
    snprintf(path, sizeof path, "%s/c.ckpt", dir);
    assert_int_equal(em_checkpoint_save(path, net, &opt, 1, &sc, 1, NULL, 0), EM_EUNSUPPORTED);
    assert_error_contains("scheduler NoState is written in C and its em_scheduler_ops have no state_save");
    em_clear_error();
    assert_int_equal(access(path, F_OK), -1);
    em_scheduler_free(sc);
    em_optimizer_free(opt);
    em_nn_free(net);
}

static int setup_dir(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/ember_resume_XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(ckpt, sizeof ckpt, "%s/run.ckpt", dir);
    return 0;
}

static int teardown_dir(void **state)
{
    (void)state;
    char p[200];
    const char *files[] = {"run.ckpt", "w.safetensors", "cut.ckpt"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_auto_mid_window, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_auto_after_step, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_auto_after_validation, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_auto_epoch_end, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_auto_max_steps, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_auto_no_layers, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_after_fit, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_manual_gan, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_manual_gan_epoch_end, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_lbfgs, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_c_optimizer, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_c_scheduler, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_bf16_mixed, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_16_mixed_scaler, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_refuse_other_setup, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_refuse_bad_files, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_save_errors, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_refuse_stateless_c_scheduler, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
