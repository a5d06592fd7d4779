/* test_trainer_manual.c: manual optimization (Lightning 2.2.5's _ManualOptimization, LightningOptimizer,
 * manual_backward, toggle_optimizer), ported from Lightning's own tests (tests/tests_pytorch/...;
 * docs/LIGHTNING_RULES.md §4, §11.4).
 *
 * The model's "layer" is a Linear(1, 1, bias=False) weight w and the loss of a batch is mean(w * x), so
 * dloss/dw = mean(x). Batches are single rows x = 1, 2, 3, ... Hooks record what they saw in an event list.
 */
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>

/* ---- the recording module ---------------------------------------------------------------------------- */

#define MAX_EV 1024

typedef struct ev {
    char name[40];
    int64_t batch;
    double v;
} ev;

enum mode {
    MODE_TWO_OPTIMIZERS = 0, /* ManualOptModel: step a, zero a, backward x2, step b, zero b */
    MODE_INNER_STEP,         /* step em_optimizer_inner(opt 0) and the wrapper of opt 1 */
    MODE_CLOSURE,            /* opt.step(closure) whose closure back-propagates twice and returns the loss */
    MODE_CLOSURE_NONE,       /* the same closure returning NULL (Lightning's closure returning None) */
    MODE_RETURN_LOSS,        /* return the loss, no backward, no step */
    MODE_HOOKED,             /* test_hooks' manual training_step: zero_grad, backward, step(closure) */
    MODE_TOGGLE2,            /* test_toggle_untoggle_2_optimizers_no_shared_parameters */
    MODE_TOGGLE3,            /* test_toggle_untoggle_3_optimizers_shared_parameters */
    MODE_SCHEDULERS,         /* one plain step; schedulers exist but only the user steps them */
    MODE_USER_CLIP,          /* backward, em_clip_gradients(0.5, value), step */
    MODE_TOGGLE_MODEL2,      /* MODE_TOGGLE2's rounds through em_toggle_model_begin/end */
    MODE_TOGGLE_MODEL_MISUSE, /* em_toggle_model_begin/end used wrongly, statuses recorded */
};

typedef struct mm {
    em_module base;
    em_nn *layer;        /* Linear(1, 1, no bias); in the toggle tests Linear(4, 2), owned by no optimizer */
    em_nn *l[3];         /* the toggle tests' layer_1, layer_2, layer_3 */
    enum mode mode;
    bool log_a;
    bool step_in_batch_end;
    int n_opts;
    /* records */
    ev ev[MAX_EV];
    int nev;
    em_optimizer *raw[3];
    em_scheduler *sched[3];
    char flags[12][16];  /* requires_grad flags seen in the toggle tests, per phase */
    int nflags;
    double clip_max_abs;
    bool inner_is_raw, sched_order_ok, no_sched_is_null, optimizers_count_ok;
} mm;

static mm *MM(em_module *m) { return (mm *)m; }

static void rec(mm *m, const char *name, double v)
{
    assert_true(m->nev < MAX_EV);
    ev *e = &m->ev[m->nev++];
    snprintf(e->name, sizeof e->name, "%s", name);
    em_trainer *t = em_module_trainer(&m->base);
    e->batch = t != NULL ? em_trainer_batch_idx(t) : -1;
    e->v = v;
}

static int count(const mm *m, const char *name)
{
    int n = 0;
    for (int i = 0; i < m->nev; i++)
        n += strcmp(m->ev[i].name, name) == 0;
    return n;
}

static int values_of(const mm *m, const char *name, double *out, int max)
{
    int n = 0;
    for (int i = 0; i < m->nev && n < max; i++)
        if (strcmp(m->ev[i].name, name) == 0)
            out[n++] = m->ev[i].v;
    return n;
}

static const char *names_from(const mm *m, int from)
{
    static char buf[16384];
    size_t off = 0;
    buf[0] = '\0';
    for (int i = from; i < m->nev; i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", off ? " " : "", m->ev[i].name);
    return buf;
}

static int first_index(const mm *m, const char *name)
{
    for (int i = 0; i < m->nev; i++)
        if (strcmp(m->ev[i].name, name) == 0)
            return i;
    return -1;
}

static double item_of(const em_tensor *t)
{
    em_scope_begin();
    double v = em_tensor_item(t);
    em_scope_end();
    return v;
}

static double w_value(mm *m) { return item_of(em_nn_get(m->layer, "weight")); }

static em_tensor *layer_loss(mm *m, const em_batch *b) { return em_mean(em_nn_forward(m->layer, b->t[0])); }

/* ---- training_step variants ---------------------------------------------------------------------------- */

static em_tensor *closure_fn(void *ctx)
{
    void **c = ctx;
    mm *m = c[0];
    const em_batch *b = c[1];
    rec(m, "closure", 0);
    if (m->mode == MODE_HOOKED)
        return layer_loss(m, b); /* test_hooks: the closure only records itself (the loss: see
                                    test_trainer_manual__step_with_closure_returning_none) */
    /* emulate bayesian optimization: two backward passes of one loss (test_step_with_optimizer_closure_2) */
    em_tensor *loss = layer_loss(m, b);
    if (em_manual_backward_retain(&m->base, loss) != EM_OK || em_manual_backward(&m->base, loss) != EM_OK)
        return NULL;
    return m->mode == MODE_CLOSURE ? loss : NULL;
}

/* The flags of the toggle tests' watched weights, "T"/"F" each (the last one is `layer`'s). */
static void record_flags(mm *m, const char *const *names, const int *which, int n)
{
    if (m->nflags >= 12)
        return; /* the first batches are enough */
    char *f = m->flags[m->nflags++];
    for (int i = 0; i < n; i++)
        f[i] = em_tensor_requires_grad(em_nn_get(m->l[which[i]], names[i])) ? 'T' : 'F';
    f[n] = em_tensor_requires_grad(em_nn_get(m->layer, "weight")) ? 'T' : 'F';
    f[n + 1] = '\0';
}

static const char *const toggle_names[] = {"0.weight", "2.weight", "4.weight", "1.weight", "3.weight",
                                           "5.weight", "1.weight", "3.weight", "5.weight"};
static const int toggle_which[] = {0, 0, 0, 1, 1, 1, 2, 2, 2};

static em_status toggle_round(mm *m, const em_batch *b, em_optimizer *opt, int n_watched)
{
    em_status s;
    if ((s = em_toggle_optimizer(&m->base, opt)) != EM_OK)
        return s;
    em_tensor *loss = layer_loss(m, b);
    if ((s = em_optimizer_zero_grad(opt)) != EM_OK || (s = em_manual_backward(&m->base, loss)) != EM_OK)
        return s;
    record_flags(m, toggle_names, toggle_which, n_watched);
    if ((s = em_optimizer_step(opt, NULL)) != EM_OK)
        return s;
    if ((s = em_untoggle_optimizer(&m->base, opt)) != EM_OK)
        return s;
    record_flags(m, toggle_names, toggle_which, n_watched);
    return EM_OK;
}

/* toggle_round through toggle_model: the region (sync_grad alternating; without DDP it changes
 * nothing) around zero_grad, backward and step, flags recorded inside and after. */
static em_status toggle_model_round(mm *m, const em_batch *b, em_optimizer *opt, bool sync_grad, int n_watched)
{
    em_status s;
    if ((s = em_toggle_model_begin(&m->base, opt, sync_grad)) != EM_OK)
        return s;
    em_tensor *loss = layer_loss(m, b);
    if ((s = em_optimizer_zero_grad(opt)) != EM_OK || (s = em_manual_backward(&m->base, loss)) != EM_OK)
        return s;
    record_flags(m, toggle_names, toggle_which, n_watched);
    if ((s = em_optimizer_step(opt, NULL)) != EM_OK)
        return s;
    if ((s = em_toggle_model_end(&m->base, opt)) != EM_OK)
        return s;
    record_flags(m, toggle_names, toggle_which, n_watched);
    return EM_OK;
}

/* Every wrong use of em_toggle_model_begin/end on the first batch, each status recorded (and the
 * error cleared); the region is left open at the end, for the warning at fit end. */
static void toggle_model_misuse(mm *m, em_optimizer **opts, em_optimizer *foreign)
{
    em_module *mb = &m->base;
    rec(m, "end_without_begin", em_toggle_model_end(mb, opts[0]));
    em_clear_error();
    rec(m, "begin_null_opt", em_toggle_model_begin(mb, NULL, true));
    em_clear_error();
    rec(m, "begin_foreign", em_toggle_model_begin(mb, foreign, true));
    em_clear_error();
    rec(m, "begin", em_toggle_model_begin(mb, opts[0], false));
    record_flags(m, toggle_names, toggle_which, 6);
    rec(m, "nested_begin", em_toggle_model_begin(mb, opts[1], true));
    em_clear_error();
    record_flags(m, toggle_names, toggle_which, 6); /* unchanged by the refused begin */
    rec(m, "end_other_opt", em_toggle_model_end(mb, opts[1]));
    em_clear_error();
    rec(m, "end", em_toggle_model_end(mb, opts[0]));
    record_flags(m, toggle_names, toggle_which, 6); /* as they started */
    rec(m, "end_again", em_toggle_model_end(mb, opts[0]));
    em_clear_error();
    /* the region's no-sync block ended from inside by an extra em_no_backward_sync_end */
    rec(m, "begin2", em_toggle_model_begin(mb, opts[1], false));
    rec(m, "extra_sync_end", em_no_backward_sync_end(mb));
    rec(m, "end_after_extra", em_toggle_model_end(mb, opts[1]));
    em_clear_error();
    rec(m, "sync_end_unbalanced", em_no_backward_sync_end(mb));
    em_clear_error();
    /* a region with sync_grad true opens no no-sync block: its end needs none */
    rec(m, "begin3_end", em_toggle_model_end(mb, opts[1]) == EM_ESTATE &&
                             em_toggle_model_begin(mb, opts[1], true) == EM_OK &&
                             em_toggle_model_end(mb, opts[1]) == EM_OK);
    em_clear_error();
    /* left open: fit ends with a warning */
    rec(m, "begin_left_open", em_toggle_model_begin(mb, opts[0], true));
}

static em_tensor *mm_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    mm *m = MM(mb);
    size_t n = 0;
    em_optimizer **opts = em_optimizers(mb, &n);
    if (opts == NULL)
        return NULL;
    m->optimizers_count_ok = (int)n == m->n_opts;
    m->inner_is_raw = true;
    for (size_t i = 0; i < n; i++)
        m->inner_is_raw &= em_optimizer_inner(opts[i]) == m->raw[i];
    em_tensor *loss = NULL;
    switch (m->mode) {
    case MODE_TWO_OPTIMIZERS: {
        loss = layer_loss(m, b);
        if (em_manual_backward(mb, loss) != EM_OK || em_optimizer_step(opts[0], NULL) != EM_OK ||
            em_optimizer_zero_grad(opts[0]) != EM_OK)
            return NULL;
        loss = layer_loss(m, b);
        /* without retain_graph two backward passes are impossible */
        if (em_manual_backward_retain(mb, loss) != EM_OK || em_manual_backward(mb, loss) != EM_OK ||
            em_optimizer_step(opts[1], NULL) != EM_OK || em_optimizer_zero_grad(opts[1]) != EM_OK)
            return NULL;
        if (m->log_a && em_log_tensor(mb, "a", loss, EM_LOG_ON_EPOCH) != EM_OK)
            return NULL;
        break;
    }
    case MODE_INNER_STEP:
        loss = layer_loss(m, b);
        if (em_manual_backward(mb, loss) != EM_OK ||
            em_optimizer_step(em_optimizer_inner(opts[0]), NULL) != EM_OK || /* not counted */
            em_optimizer_step(opts[1], NULL) != EM_OK)                       /* counted */
            return NULL;
        break;
    case MODE_CLOSURE:
    case MODE_CLOSURE_NONE: {
        void *ctx[2] = {m, (void *)b};
        em_closure c = {.fn = closure_fn, .ctx = ctx};
        rec(m, "weight_before_step", w_value(m));
        if (em_optimizer_step(opts[0], &c) != EM_OK || em_optimizer_zero_grad(opts[0]) != EM_OK)
            return NULL;
        rec(m, "weight_after_step", w_value(m));
        break;
    }
    case MODE_RETURN_LOSS:
        loss = layer_loss(m, b);
        rec(m, "returned_loss", item_of(loss));
        break;
    case MODE_HOOKED: {
        void *ctx[2] = {m, (void *)b};
        em_closure c = {.fn = closure_fn, .ctx = ctx};
        loss = layer_loss(m, b);
        if (em_optimizer_zero_grad(opts[0]) != EM_OK || em_manual_backward(mb, loss) != EM_OK ||
            em_optimizer_step(opts[0], &c) != EM_OK)
            return NULL;
        break;
    }
    case MODE_TOGGLE2:
        if (toggle_round(m, b, opts[0], 6) != EM_OK || toggle_round(m, b, opts[1], 6) != EM_OK)
            return NULL;
        break;
    case MODE_TOGGLE3:
        if (toggle_round(m, b, opts[0], 9) != EM_OK || toggle_round(m, b, opts[1], 9) != EM_OK ||
            toggle_round(m, b, opts[2], 9) != EM_OK)
            return NULL;
        break;
    case MODE_TOGGLE_MODEL2:
        if (toggle_model_round(m, b, opts[0], batch_idx % 2 == 0, 6) != EM_OK ||
            toggle_model_round(m, b, opts[1], batch_idx % 2 != 0, 6) != EM_OK)
            return NULL;
        break;
    case MODE_TOGGLE_MODEL_MISUSE:
        if (batch_idx == 0)
            toggle_model_misuse(m, opts, m->raw[2]);
        break;
    case MODE_SCHEDULERS: {
        size_t ns = 0;
        em_scheduler **s = em_lr_schedulers(mb, &ns);
        m->sched_order_ok = ns == 2 && s != NULL && s[0] == m->sched[0] && s[1] == m->sched[1];
        loss = layer_loss(m, b);
        if (em_manual_backward(mb, loss) != EM_OK || em_optimizer_step(opts[0], NULL) != EM_OK)
            return NULL;
        break;
    }
    case MODE_USER_CLIP: {
        loss = layer_loss(m, b);
        if (em_manual_backward(mb, loss) != EM_OK || em_clip_gradients(mb, opts[0], 0.5, EM_CLIP_VALUE) != EM_OK)
            return NULL;
        em_tensor *g = em_tensor_grad(em_nn_get(m->layer, "weight"));
        m->clip_max_abs = em_tensor_item(em_max(em_abs(g)));
        if (em_optimizer_step(opts[0], NULL) != EM_OK || em_optimizer_zero_grad(opts[0]) != EM_OK)
            return NULL;
        break;
    }
    }
    rec(m, "training_step", 0);
    return loss;
}

/* ---- configure_optimizers and the other hooks ------------------------------------------------------------ */

static em_optimizer *sgd_over(em_nn *a, em_nn *b, double lr)
{
    em_params *ps = em_params_new();
    em_params_add_nn(ps, a);
    if (b != NULL)
        em_params_add_nn(ps, b);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = lr});
    em_params_free(ps);
    return opt;
}

static em_optimizer *adam_over(em_nn *a, em_nn *b, double lr)
{
    em_params *ps = em_params_new();
    em_params_add_nn(ps, a);
    if (b != NULL)
        em_params_add_nn(ps, b);
    em_adam_opts o = EM_ADAM_OPTS_INIT;
    o.lr = lr;
    em_optimizer *opt = em_adam(ps, &o);
    em_params_free(ps);
    return opt;
}

static em_status mm_configure_optimizers(em_module *mb, em_optim_setup *setup)
{
    mm *m = MM(mb);
    rec(m, "configure_optimizers", 0);
    em_status s;
    if (m->mode == MODE_TOGGLE2 || m->mode == MODE_TOGGLE_MODEL2 || m->mode == MODE_TOGGLE_MODEL_MISUSE) {
        /* optimizer_1 = SGD(layer_1), optimizer_2 = Adam(layer_2) */
        m->raw[0] = sgd_over(m->l[0], NULL, 0.1);
        m->raw[1] = adam_over(m->l[1], NULL, 0.1);
    } else if (m->mode == MODE_TOGGLE3) {
        /* SGD(layer_1 + layer_2), Adam(layer_2 + layer_3), SGD(layer_3 + layer_1): shared parameters */
        m->raw[0] = sgd_over(m->l[0], m->l[1], 0.1);
        m->raw[1] = adam_over(m->l[1], m->l[2], 0.1);
        m->raw[2] = sgd_over(m->l[2], m->l[0], 0.1);
    } else {
        for (int i = 0; i < m->n_opts; i++)
            m->raw[i] = sgd_over(m->layer, NULL, 0.1);
    }
    for (int i = 0; i < m->n_opts; i++)
        if ((s = em_optim_setup_add(setup, m->raw[i])) != EM_OK)
            return s;
    if (m->mode == MODE_SCHEDULERS) {
        /* never stepped by the loop, whatever their config says (test_lr_scheduler_step_not_called) */
        m->sched[0] = em_step_lr(m->raw[0], 1, 0.1);
        if ((s = em_optim_setup_add_scheduler(setup, m->sched[0], &(em_scheduler_config){.interval = EM_INTERVAL_STEP})) != EM_OK)
            return s;
        /* a ReduceLROnPlateau needs no monitor in manual mode (test_lr_schedulers_reduce_lr_on_plateau) */
        m->sched[1] = em_reduce_lr_on_plateau(m->raw[0], NULL);
        if ((s = em_optim_setup_add_scheduler(setup, m->sched[1], NULL)) != EM_OK)
            return s;
    }
    return EM_OK;
}

static em_status mm_on_train_epoch_end(em_module *mb)
{
    mm *m = MM(mb);
    size_t n = 0;
    em_optimizer **opts = em_optimizers(mb, &n);
    rec(m, "epoch_end_lr", n > 0 ? em_optimizer_lr(opts[0], 0) : NAN);
    return EM_OK;
}

static em_status mm_on_train_end(em_module *mb)
{
    mm *m = MM(mb);
    size_t ns = 7;
    em_scheduler **s = em_lr_schedulers(mb, &ns);
    m->no_sched_is_null = m->mode != MODE_SCHEDULERS ? (s == NULL && ns == 0 && em_last_status() == EM_OK) : true;
    if (m->mode == MODE_SCHEDULERS) {
        /* the user may step them: the plateau one with a metric */
        double lr0 = em_optimizer_lr(m->raw[0], 0);
        em_status st = em_scheduler_step(s[0]);
        rec(m, "user_sched_step", st == EM_OK ? em_optimizer_lr(m->raw[0], 0) / lr0 : NAN);
    }
    return EM_OK;
}

static em_status mm_on_train_batch_end(em_module *mb, const em_tensor *loss, const em_batch *b, int64_t batch_idx)
{
    (void)b;
    (void)batch_idx;
    mm *m = MM(mb);
    rec(m, "on_train_batch_end", loss != NULL ? item_of(loss) : NAN);
    rec(m, "batch_end_weight", m->l[0] == NULL ? w_value(m) : NAN);
    if (m->step_in_batch_end) {
        size_t n = 0;
        em_optimizer **opts = em_optimizers(mb, &n);
        return em_optimizer_step(opts[0], NULL); /* outside training_step: not counted */
    }
    return EM_OK;
}

static int mm_on_train_batch_start(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)b;
    (void)batch_idx;
    rec(MM(mb), "on_train_batch_start", 0);
    return 0;
}

static em_status mm_on_before_backward(em_module *mb, em_tensor *loss)
{
    rec(MM(mb), "on_before_backward", item_of(loss));
    return EM_OK;
}

static em_status mm_backward(em_module *mb, em_tensor *loss, bool retain_graph)
{
    rec(MM(mb), "backward", item_of(loss));
    return em_backward_ex(loss, NULL, retain_graph);
}

static em_status mm_on_after_backward(em_module *mb)
{
    rec(MM(mb), "on_after_backward", 0);
    return EM_OK;
}

static em_status mm_on_before_optimizer_step(em_module *mb, em_optimizer *opt)
{
    (void)opt;
    rec(MM(mb), "on_before_optimizer_step", 0);
    return EM_OK;
}

/* overrides that manual optimization never calls */
static em_status mm_optimizer_step(em_module *mb, int64_t epoch, int64_t batch_idx, em_optimizer *opt,
                                   const em_closure *closure)
{
    (void)epoch, (void)batch_idx;
    rec(MM(mb), "optimizer_step_hook", 0);
    return em_optimizer_step(opt, closure);
}
static em_status mm_optimizer_zero_grad(em_module *mb, int64_t epoch, int64_t batch_idx, em_optimizer *opt)
{
    (void)epoch, (void)batch_idx;
    rec(MM(mb), "optimizer_zero_grad_hook", 0);
    return em_optimizer_zero_grad(opt);
}
static em_status mm_configure_gradient_clipping(em_module *mb, em_optimizer *opt, double v, em_clip_algorithm a)
{
    rec(MM(mb), "configure_gradient_clipping", 0);
    return em_clip_gradients(mb, opt, v, a);
}
static em_status mm_lr_scheduler_step(em_module *mb, em_scheduler *s, bool has_metric, double metric)
{
    rec(MM(mb), "lr_scheduler_step", 0);
    return has_metric ? em_scheduler_step_metric(s, metric) : em_scheduler_step(s);
}

static const em_module_ops mm_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = mm_training_step,
    .configure_optimizers = mm_configure_optimizers,
    .optimizer_step = mm_optimizer_step,
    .optimizer_zero_grad = mm_optimizer_zero_grad,
    .lr_scheduler_step = mm_lr_scheduler_step,
    .configure_gradient_clipping = mm_configure_gradient_clipping,
    .on_train_end = mm_on_train_end,
    .on_train_epoch_end = mm_on_train_epoch_end,
    .on_train_batch_start = mm_on_train_batch_start,
    .on_train_batch_end = mm_on_train_batch_end,
    .on_before_backward = mm_on_before_backward,
    .on_after_backward = mm_on_after_backward,
    .on_before_optimizer_step = mm_on_before_optimizer_step,
};

static mm *mm_new(enum mode mode, int n_opts)
{
    mm *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->base.ops = &mm_ops;
    m->base.manual_optimization = true;
    m->mode = mode;
    m->n_opts = n_opts;
    m->layer = em_nn_linear(1, 1, false);
    assert_nonnull_em(m->layer);
    float w = 1.0f;
    assert_ok(em_nn_set(m->layer, "weight", &w, EM_F32, 1));
    return m;
}

static void mm_free(mm *m)
{
    em_nn_free(m->layer);
    for (int i = 0; i < 3; i++)
        em_nn_free(m->l[i]);
    free(m);
}

static em_loader *rows_loader(int64_t rows, int64_t cols)
{
    em_scope_begin();
    float *x = calloc((size_t)(rows * cols), sizeof *x);
    assert_non_null(x);
    for (int64_t i = 0; i < rows * cols; i++)
        x[i] = (float)(i / cols + 1);
    em_tensor *t = em_tensor_from(x, EM_F32, EM_SHAPE(rows, cols), NULL);
    free(x);
    em_loader *l = em_tensor_loader(&t, 1, &(em_loader_opts){.batch_size = 1});
    assert_nonnull_em(l);
    assert_ok(em_scope_end());
    return l;
}

static em_trainer *quiet_trainer(int64_t max_epochs, double clip_val, int64_t accumulate)
{
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = max_epochs;
    cfg.gradient_clip_val = clip_val;
    cfg.accumulate_grad_batches = accumulate;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    return t;
}

/* Fit and free everything; returns the status and leaves the error in *err. */
static em_status fit(mm *m, int64_t batches, int64_t epochs, double clip_val, int64_t accumulate, int64_t *global_step,
                     char *err, size_t err_len)
{
    em_loader *train = rows_loader(batches, 1);
    em_trainer *t = quiet_trainer(epochs, clip_val, accumulate);
    em_status s = em_trainer_fit(t, &m->base, train, NULL);
    if (global_step != NULL)
        *global_step = em_trainer_global_step(t);
    if (err != NULL)
        snprintf(err, err_len, "%s", em_trainer_error(t));
    if (s != EM_OK)
        print_message("fit: %s\n", em_trainer_error(t));
    em_trainer_free(t);
    em_loader_free(train);
    em_clear_error();
    return s;
}

/* ---- step counting ---------------------------------------------------------------------------------------- */

/* trainer/optimization/test_manual_optimization.py::test_multiple_optimizers_manual_call_counts: 3 backward
 * calls and 2 wrapped steps per batch -> global_step = 2 x batches (§2.1 [observed]). Two SGD(lr=0.1) over
 * the same weight w0 = 1: batch x=1: step a with grad 1 -> 0.9, step b with grad 2 (two backward passes)
 * -> 0.7; batch x=2: grad 2 -> 0.5, grad 4 -> 0.1. */
static void test_trainer_manual__two_optimizers_count_two_steps_per_batch(void **state)
{
    (void)state;
    mm *m = mm_new(MODE_TWO_OPTIMIZERS, 2);
    int64_t gs = -1;
    assert_ok(fit(m, 2, 1, NAN, 1, &gs, NULL, 0));
    assert_int_equal(gs, 4);
    assert_int_equal(count(m, "on_before_backward"), 6);
    assert_int_equal(count(m, "on_after_backward"), 6);
    assert_int_equal(count(m, "on_before_optimizer_step"), 4);
    assert_true(m->optimizers_count_ok);
    assert_true(m->inner_is_raw);
    double w[2] = {0};
    assert_int_equal(values_of(m, "batch_end_weight", w, 2), 2);
    assert_close_rel(w[0], 0.7, 1e-6);
    assert_close_rel(w[1], 0.1, 1e-5);
    /* manual_backward does not normalise anything: the hooks see the plain loss mean(w x) */
    double l[6] = {0};
    assert_int_equal(values_of(m, "on_before_backward", l, 6), 6);
    assert_close_rel(l[0], 1.0, 1e-6);
    assert_close_rel(l[1], 0.9, 1e-6);
    /* none of the automatic-only hooks ran */
    assert_int_equal(count(m, "optimizer_step_hook"), 0);
    assert_int_equal(count(m, "optimizer_zero_grad_hook"), 0);
    assert_int_equal(count(m, "configure_gradient_clipping"), 0);
    assert_true(m->no_sched_is_null);
    mm_free(m);
}

/* ...::test_multiple_optimizers_manual_log: "a" logged with on_epoch=True from a manual training_step is
 * forked into a_step and a_epoch. */
static void test_trainer_manual__log_on_epoch_forks_step_and_epoch(void **state)
{
    (void)state;
    mm *m = mm_new(MODE_TWO_OPTIMIZERS, 2);
    m->log_a = true;
    em_loader *train = rows_loader(2, 1);
    em_trainer *t = quiet_trainer(1, NAN, 1);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    double a_step = NAN, a_epoch = NAN;
    assert_true(em_trainer_callback_metric(t, "a_step", &a_step));
    assert_true(em_trainer_callback_metric(t, "a_epoch", &a_epoch));
    /* loss_2 = mean(w x) after step a: 0.9 * 1 (batch 0), then 0.5 * 2 = 1.0 (batch 1); batch size 1 each */
    assert_close_rel(a_step, 1.0, 1e-6);
    assert_close_rel(a_epoch, (0.9 + 1.0) / 2, 1e-6);
    em_trainer_free(t);
    em_loader_free(train);
    mm_free(m);
}

/* §2.1, §4.3: stepping the raw optimizer (em_optimizer_inner, Lightning's opt.optimizer.step()) updates the
 * weights but neither counts in global_step nor runs on_before_optimizer_step; a wrapped step made outside
 * training_step (here in on_train_batch_end) does not count either. 3 batches -> global_step 3. */
static void test_trainer_manual__inner_steps_are_not_counted(void **state)
{
    (void)state;
    mm *m = mm_new(MODE_INNER_STEP, 2);
    m->step_in_batch_end = true;
    int64_t gs = -1;
    assert_ok(fit(m, 3, 1, NAN, 1, &gs, NULL, 0));
    assert_int_equal(gs, 3);
    assert_true(m->inner_is_raw);
    /* the wrapped steps: 3 in training_step + 3 in on_train_batch_end */
    assert_int_equal(count(m, "on_before_optimizer_step"), 6);
    /* batch 0 (x = 1, grad 1, two SGD(0.1) steps with the same grad): 1 - 0.1 - 0.1 = 0.8, then the
     * step in on_train_batch_end reuses the same gradient (no zero_grad): 0.7 */
    double w[1] = {0};
    assert_int_equal(values_of(m, "batch_end_weight", w, 1), 1);
    assert_close_rel(w[0], 0.8, 1e-6);
    mm_free(m);
}

/* ...::test_manual_optimization_and_return_tensor: a loss returned from a manual training_step is not
 * back-propagated (no backward, no gradient, no update); on_train_batch_end gets it detached. */
static void test_trainer_manual__returned_loss_is_not_backpropagated(void **state)
{
    (void)state;
    mm *m = mm_new(MODE_RETURN_LOSS, 1);
    int64_t gs = -1;
    assert_ok(fit(m, 3, 1, NAN, 1, &gs, NULL, 0));
    assert_int_equal(gs, 0);
    assert_int_equal(count(m, "on_before_backward"), 0);
    assert_close_rel(w_value(m), 1.0, 0);
    em_scope_begin();
    assert_null(em_tensor_grad(em_nn_get(m->layer, "weight")));
    assert_ok(em_scope_end());
    double got[3] = {0}, returned[3] = {0};
    assert_int_equal(values_of(m, "on_train_batch_end", got, 3), 3);
    assert_int_equal(values_of(m, "returned_loss", returned, 3), 3);
    for (int i = 0; i < 3; i++)
        assert_close_rel(got[i], returned[i], 0);
    assert_close_rel(got[2], 3.0, 1e-6);
    mm_free(m);
}

/* ---- closures ---------------------------------------------------------------------------------------------------- */

/* ...::test_step_with_optimizer_closure_2 and §4.3 [observed]: opt.step(closure) runs the closure (two
 * backward passes through manual_backward), then on_before_optimizer_step, then the update; one wrapped
 * step per batch: 4 batches -> 8 backward calls, global_step 4, the weight changes on every step. */
static void test_trainer_manual__step_with_closure(void **state)
{
    (void)state;
    mm *m = mm_new(MODE_CLOSURE, 1);
    int64_t gs = -1;
    assert_ok(fit(m, 4, 1, NAN, 1, &gs, NULL, 0));
    assert_int_equal(gs, 4);
    assert_int_equal(count(m, "closure"), 4);
    assert_int_equal(count(m, "on_before_backward"), 8);
    assert_int_equal(count(m, "on_after_backward"), 8);
    assert_int_equal(count(m, "on_before_optimizer_step"), 4);
    assert_true(first_index(m, "closure") < first_index(m, "on_before_optimizer_step"));
    double before[4] = {0}, after[4] = {0};
    assert_int_equal(values_of(m, "weight_before_step", before, 4), 4);
    assert_int_equal(values_of(m, "weight_after_step", after, 4), 4);
    /* grad = 2 x per step (two backward passes): 1 - 0.2 = 0.8 */
    assert_close_rel(after[0], 0.8, 1e-6);
    for (int i = 0; i < 4; i++)
        assert_true(before[i] != after[i]);
    mm_free(m);
}

/* The usual Lightning closure returns None (it only calls manual_backward): em_optimizer_step must accept
 * a closure that returns NULL without recording an error, and still update (§4.3: "closure None -> a
 * no-op closure"; a closure's return value is only handed back to the caller). */
static void test_trainer_manual__step_with_closure_returning_none(void **state)
{
    (void)state;
    mm *m = mm_new(MODE_CLOSURE_NONE, 1);
    int64_t gs = -1;
    assert_ok(fit(m, 2, 1, NAN, 1, &gs, NULL, 0));
    assert_int_equal(gs, 2);
    assert_int_equal(count(m, "closure"), 2);
    double after[2] = {0};
    assert_int_equal(values_of(m, "weight_after_step", after, 2), 2);
    assert_close_rel(after[0], 0.8, 1e-6);
    mm_free(m);
}

/* ---- hook order (models/test_hooks.py::test_trainer_model_hook_system_fit, manual) ---------------------------- */

static em_status cb_before_backward(em_callback *cb, em_trainer *t, em_module *m, em_tensor *loss)
{
    (void)t, (void)m, (void)loss;
    rec(em_callback_state(cb), "cb.on_before_backward", 0);
    return EM_OK;
}
static em_status cb_after_backward(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)t, (void)m;
    rec(em_callback_state(cb), "cb.on_after_backward", 0);
    return EM_OK;
}
static em_status cb_before_optimizer_step(em_callback *cb, em_trainer *t, em_module *m, em_optimizer *opt)
{
    (void)t, (void)m, (void)opt;
    rec(em_callback_state(cb), "cb.on_before_optimizer_step", 0);
    return EM_OK;
}
static em_status cb_train_batch_start(em_callback *cb, em_trainer *t, em_module *m, const em_batch *b, int64_t i)
{
    (void)t, (void)m, (void)b, (void)i;
    rec(em_callback_state(cb), "cb.on_train_batch_start", 0);
    return EM_OK;
}
static em_status cb_train_batch_end(em_callback *cb, em_trainer *t, em_module *m, const em_tensor *loss,
                                    const em_batch *b, int64_t i)
{
    (void)t, (void)m, (void)b, (void)i, (void)loss;
    rec(em_callback_state(cb), "cb.on_train_batch_end", 0);
    return EM_OK;
}
static em_status cb_before_zero_grad(em_callback *cb, em_trainer *t, em_module *m, em_optimizer *opt)
{
    (void)t, (void)m, (void)opt;
    rec(em_callback_state(cb), "cb.on_before_zero_grad", 0);
    return EM_OK;
}
static const em_callback_ops hooked_callback_ops = {
    .version = EM_CALLBACK_OPS_VERSION,
    .name = "HookedCallback",
    .on_train_batch_start = cb_train_batch_start,
    .on_train_batch_end = cb_train_batch_end,
    .on_before_backward = cb_before_backward,
    .on_after_backward = cb_after_backward,
    .on_before_optimizer_step = cb_before_optimizer_step,
    .on_before_zero_grad = cb_before_zero_grad,
};

/* Per batch: on_train_batch_start; inside training_step zero_grad (no hooks: it is the plain optimizer's),
 * manual_backward's on_before_backward, backward, on_after_backward; step(closure): the closure, then
 * on_before_optimizer_step; then on_train_batch_end. No zero_grad / optimizer_step / clipping hooks. */
static void test_trainer_manual__hook_order(void **state)
{
    (void)state;
    mm *m = mm_new(MODE_HOOKED, 1);
    em_module_ops ops = mm_ops;
    ops.backward = mm_backward;
    m->base.ops = &ops;
    em_loader *train = rows_loader(2, 1);
    em_trainer *t = quiet_trainer(1, NAN, 1);
    assert_ok(em_trainer_add_callback(t, em_callback_new(&hooked_callback_ops, m)));
    em_status s = em_trainer_fit(t, &m->base, train, NULL);
    if (s != EM_OK)
        print_message("fit: %s\n", em_trainer_error(t));
    assert_ok(s);
#define MANUAL_BATCH                                                                                        \
    "cb.on_train_batch_start on_train_batch_start cb.on_before_backward on_before_backward backward "     \
    "cb.on_after_backward on_after_backward closure cb.on_before_optimizer_step on_before_optimizer_step " \
    "training_step cb.on_train_batch_end on_train_batch_end batch_end_weight"
    assert_string_equal(names_from(m, 1), MANUAL_BATCH " " MANUAL_BATCH " epoch_end_lr");
#undef MANUAL_BATCH
    assert_int_equal(em_trainer_global_step(t), 2);
    em_trainer_free(t);
    em_loader_free(train);
    mm_free(m);
}

/* ---- toggle_optimizer (§4.5) -------------------------------------------------------------------------------------- */

static em_nn *seq_layer(bool leading_relu)
{
    if (leading_relu)
        return EM_NN_SEQUENTIAL(em_nn_relu(), em_nn_linear(4, 4, true), em_nn_relu(), em_nn_linear(4, 4, true),
                                em_nn_relu(), em_nn_linear(4, 2, true));
    return EM_NN_SEQUENTIAL(em_nn_linear(4, 4, true), em_nn_relu(), em_nn_linear(4, 4, true), em_nn_relu(),
                            em_nn_linear(4, 4, true));
}

static void freeze(em_nn *net, const char *name)
{
    assert_ok(em_tensor_set_requires_grad(em_nn_get(net, name), false));
}

static mm *toggle_model(enum mode mode, int n_layers)
{
    mm *m = mm_new(mode, n_layers);
    em_nn_free(m->layer);
    m->layer = em_nn_linear(4, 2, true); /* BoringModel.layer: the loss goes through it only */
    m->l[0] = seq_layer(false);
    m->l[1] = seq_layer(true);
    /* some weights start frozen, to check that toggle/untoggle restores them as they were */
    freeze(m->l[0], "2.weight");
    freeze(m->l[0], "4.weight");
    freeze(m->l[1], "1.weight");
    freeze(m->l[1], "3.weight");
    if (n_layers == 3) {
        m->l[2] = seq_layer(true);
        freeze(m->l[2], "1.weight");
        freeze(m->l[2], "5.weight");
    }
    return m;
}

/* core/test_lightning_module.py::test_toggle_untoggle_2_optimizers_no_shared_parameters. Flags of
 * layer_1[0,2,4].weight, layer_2[1,3,5].weight and (last) the loss layer's weight, owned by no optimizer:
 *   toggle opt1 (layer_1):   T F F  F F F  T
 *   untoggle:                T F F  F F T  T   (as they started)
 *   toggle opt2 (layer_2):   F F F  F F T  T
 *   untoggle:                T F F  F F T  T
 * over 8 batches. */
static void test_trainer_manual__toggle_untoggle_2_optimizers_no_shared_parameters(void **state)
{
    (void)state;
    mm *m = toggle_model(MODE_TOGGLE2, 2);
    em_loader *train = rows_loader(8, 4);
    em_trainer *t = quiet_trainer(1, NAN, 1);
    em_status s = em_trainer_fit(t, &m->base, train, NULL);
    if (s != EM_OK)
        print_message("fit: %s\n", em_trainer_error(t));
    assert_ok(s);
    assert_int_equal(em_trainer_global_step(t), 16);
    assert_true(m->nflags >= 4);
    assert_string_equal(m->flags[0], "TFFFFFT");
    assert_string_equal(m->flags[1], "TFFFFTT");
    assert_string_equal(m->flags[2], "FFFFFTT");
    assert_string_equal(m->flags[3], "TFFFFTT");
    em_trainer_free(t);
    em_loader_free(train);
    mm_free(m);
}

/* core/test_lightning_module.py::test_toggle_untoggle_3_optimizers_shared_parameters: opt1 = SGD(layer_1 +
 * layer_2), opt2 = Adam(layer_2 + layer_3), opt3 = SGD(layer_3 + layer_1). Flags of layer_1[0,2,4],
 * layer_2[1,3,5], layer_3[1,3,5] weights and the loss layer's:
 *   as they start:   T F F  F F T  F T F  T
 *   toggle opt1:     T F F  F F T  F F F  T
 *   toggle opt2:     F F F  F F T  F T F  T
 *   toggle opt3:     T F F  F F F  F T F  T
 * and every untoggle gives back the starting flags. */
static void test_trainer_manual__toggle_untoggle_3_optimizers_shared_parameters(void **state)
{
    (void)state;
    mm *m = toggle_model(MODE_TOGGLE3, 3);
    em_loader *train = rows_loader(8, 4);
    em_trainer *t = quiet_trainer(1, NAN, 1);
    em_status s = em_trainer_fit(t, &m->base, train, NULL);
    if (s != EM_OK)
        print_message("fit: %s\n", em_trainer_error(t));
    assert_ok(s);
    assert_int_equal(em_trainer_global_step(t), 24);
    assert_true(m->nflags >= 6);
    assert_string_equal(m->flags[0], "TFFFFTFFFT");
    assert_string_equal(m->flags[1], "TFFFFTFTFT");
    assert_string_equal(m->flags[2], "FFFFFTFTFT");
    assert_string_equal(m->flags[3], "TFFFFTFTFT");
    assert_string_equal(m->flags[4], "TFFFFFFTFT");
    assert_string_equal(m->flags[5], "TFFFFTFTFT");
    em_trainer_free(t);
    em_loader_free(train);
    mm_free(m);
}

/* LightningOptimizer.toggle_model(sync_grad): toggle_optimizer on entry, untoggle_optimizer on exit, so
 * the flags are those of test_toggle_untoggle_2_optimizers_no_shared_parameters, whatever sync_grad
 * (which only blocks DDP's all-reduce: tests/ddp covers it). */
static void test_trainer_manual__toggle_model_toggles_as_toggle_optimizer(void **state)
{
    (void)state;
    mm *m = toggle_model(MODE_TOGGLE_MODEL2, 2);
    em_loader *train = rows_loader(8, 4);
    em_trainer *t = quiet_trainer(1, NAN, 1);
    em_status s = em_trainer_fit(t, &m->base, train, NULL);
    if (s != EM_OK)
        print_message("fit: %s\n", em_trainer_error(t));
    assert_ok(s);
    assert_int_equal(em_trainer_global_step(t), 16);
    assert_true(m->nflags >= 8);
    for (int k = 0; k < 2; k++) { /* two batches: sync_grad true then false for opt1, the reverse for opt2 */
        assert_string_equal(m->flags[4 * k + 0], "TFFFFFT");
        assert_string_equal(m->flags[4 * k + 1], "TFFFFTT");
        assert_string_equal(m->flags[4 * k + 2], "FFFFFTT");
        assert_string_equal(m->flags[4 * k + 3], "TFFFFTT");
    }
    em_trainer_free(t);
    em_loader_free(train);
    mm_free(m);
}

typedef struct warn_log {
    int n;
    char last[512];
} warn_log;

static void capture_warnings(void *user, em_log_level level, const char *message)
{
    warn_log *w = user;
    if (level != EM_LEVEL_WARNING || strstr(message, "toggle_model") == NULL)
        return; /* (the loop also warns that no optimizer stepped) */
    w->n++;
    snprintf(w->last, sizeof w->last, "%s", message);
}

static double value_of(const mm *m, const char *name)
{
    double v = NAN;
    assert_int_equal(values_of(m, name, &v, 1), 1);
    return v;
}

/* em_toggle_model_begin/end used wrongly: each misuse is refused with its status and changes nothing;
 * a region left open is closed at fit end with a warning; outside fit both are refused. */
static void test_trainer_manual__toggle_model_misuse(void **state)
{
    (void)state;
    mm *m = toggle_model(MODE_TOGGLE_MODEL_MISUSE, 2);
    m->raw[2] = sgd_over(m->layer, NULL, 0.1); /* an optimizer fit does not know */
    em_loader *train = rows_loader(2, 4);
    em_trainer *t = quiet_trainer(1, NAN, 1);
    warn_log w = {0};
    em_log_handler prev = em_set_log_handler(capture_warnings, &w);
    em_status s = em_trainer_fit(t, &m->base, train, NULL);
    em_set_log_handler(prev, NULL);
    if (s != EM_OK)
        print_message("fit: %s\n", em_trainer_error(t));
    assert_ok(s);
    assert_int_equal((int)value_of(m, "end_without_begin"), EM_ESTATE);
    assert_int_equal((int)value_of(m, "begin_null_opt"), EM_EINVAL);
    assert_int_equal((int)value_of(m, "begin_foreign"), EM_EINVAL);
    assert_int_equal((int)value_of(m, "begin"), EM_OK);
    assert_int_equal((int)value_of(m, "nested_begin"), EM_ESTATE);
    assert_int_equal((int)value_of(m, "end_other_opt"), EM_EINVAL);
    assert_int_equal((int)value_of(m, "end"), EM_OK);
    assert_int_equal((int)value_of(m, "end_again"), EM_ESTATE);
    assert_int_equal((int)value_of(m, "begin2"), EM_OK);
    assert_int_equal((int)value_of(m, "extra_sync_end"), EM_OK);
    assert_int_equal((int)value_of(m, "end_after_extra"), EM_ESTATE);
    assert_int_equal((int)value_of(m, "sync_end_unbalanced"), EM_ESTATE);
    assert_true(value_of(m, "begin3_end") == 1.0);
    assert_int_equal((int)value_of(m, "begin_left_open"), EM_OK);
    /* flags: toggled opt1, unchanged by the refused nested begin, restored by the end */
    assert_true(m->nflags >= 3);
    assert_string_equal(m->flags[0], "TFFFFFT");
    assert_string_equal(m->flags[1], "TFFFFFT");
    assert_string_equal(m->flags[2], "TFFFFTT");
    assert_int_equal(w.n, 1);
    assert_non_null(strstr(w.last, "without its em_toggle_model_end"));
    /* after fit: no trainer */
    assert_int_equal(em_toggle_model_begin(&m->base, m->raw[0], true), EM_ESTATE);
    em_clear_error();
    assert_int_equal(em_toggle_model_end(&m->base, m->raw[0]), EM_ESTATE);
    em_clear_error();
    em_trainer_free(t);
    em_loader_free(train);
    em_optimizer_free(m->raw[2]);
    m->raw[2] = NULL;
    mm_free(m);
}

/* §4.5: toggling outside fit is an error (there is no trainer whose optimizers could be toggled). */
static void test_trainer_manual__toggle_outside_fit_is_an_error(void **state)
{
    (void)state;
    mm *m = mm_new(MODE_RETURN_LOSS, 1);
    em_optimizer *foreign = sgd_over(m->layer, NULL, 0.1);
    assert_int_equal(em_toggle_optimizer(&m->base, foreign), EM_ESTATE); /* outside fit */
    em_clear_error();
    em_optimizer_free(foreign);
    mm_free(m);
}

/* ---- schedulers and clipping in manual mode (§4.7, §4.8) --------------------------------------------------------- */

/* ...::test_lr_scheduler_step_not_called, ::test_lr_schedulers, ::test_lr_schedulers_reduce_lr_on_plateau:
 * the loop never steps schedulers in manual mode (a step-interval StepLR(1, 0.1) leaves lr at 0.1 over
 * 2 epochs, lr_scheduler_step is never called), em_lr_schedulers gives them in configure_optimizers order,
 * a ReduceLROnPlateau needs no monitor, and the user may step one (lr x 0.1). */
static void test_trainer_manual__schedulers_are_never_stepped_by_the_loop(void **state)
{
    (void)state;
    mm *m = mm_new(MODE_SCHEDULERS, 1);
    int64_t gs = -1;
    assert_ok(fit(m, 3, 2, NAN, 1, &gs, NULL, 0));
    assert_int_equal(gs, 6);
    assert_int_equal(count(m, "lr_scheduler_step"), 0);
    assert_true(m->sched_order_ok);
    double lr[2] = {0};
    assert_int_equal(values_of(m, "epoch_end_lr", lr, 2), 2);
    assert_close_rel(lr[0], 0.1, 1e-12);
    assert_close_rel(lr[1], 0.1, 1e-12);
    double ratio[1] = {0};
    assert_int_equal(values_of(m, "user_sched_step", ratio, 1), 1);
    assert_close_rel(ratio[0], 0.1, 1e-9);
    mm_free(m);
}

/* §4.8, §1.5: configure_gradient_clipping is never called in manual mode; the user clips with
 * em_clip_gradients (value 0.5: the gradients 1, 2, 3 become 0.5). */
static void test_trainer_manual__user_clipping_and_no_configure_gradient_clipping(void **state)
{
    (void)state;
    mm *m = mm_new(MODE_USER_CLIP, 1);
    int64_t gs = -1;
    assert_ok(fit(m, 3, 1, NAN, 1, &gs, NULL, 0));
    assert_int_equal(gs, 3);
    assert_int_equal(count(m, "configure_gradient_clipping"), 0);
    assert_close_rel(m->clip_max_abs, 0.5, 1e-6);
    assert_close_rel(w_value(m), 1.0 - 3 * 0.1 * 0.5, 1e-6);
    mm_free(m);
}

/* ---- rejected configurations (§4.6, §10 #12, #13, #31) ------------------------------------------------------------- */

/* test_manual_optimization.py / configuration_validator: manual + gradient_clip_val > 0 and manual +
 * accumulate_grad_batches != 1 are rejected at fit start, before configure_optimizers; gradient_clip_val 0
 * is fine [observed]. */
static void test_trainer_manual__rejects_trainer_clipping_and_accumulation(void **state)
{
    (void)state;
    char err[1024];
    mm *m = mm_new(MODE_RETURN_LOSS, 1);
    assert_int_not_equal(fit(m, 2, 1, 0.5, 1, NULL, err, sizeof err), EM_OK);
    assert_non_null(strstr(err, "gradient clipping is not supported for manual optimization"));
    assert_int_equal(count(m, "configure_optimizers"), 0);
    mm_free(m);

    m = mm_new(MODE_RETURN_LOSS, 1);
    assert_int_not_equal(fit(m, 2, 1, NAN, 2, NULL, err, sizeof err), EM_OK);
    assert_non_null(strstr(err, "accumulation is not supported for manual optimization"));
    assert_int_equal(count(m, "configure_optimizers"), 0);
    mm_free(m);

    m = mm_new(MODE_RETURN_LOSS, 1);
    assert_ok(fit(m, 2, 1, 0.0, 1, NULL, NULL, 0));
    assert_int_equal(count(m, "training_step"), 2);
    mm_free(m);
}

/* §4.4, §10 #31: manual_backward in automatic mode fails (gist: disable automatic optimization). */
static em_tensor *auto_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    mm *m = MM(mb);
    em_tensor *loss = layer_loss(m, b);
    em_status s = em_manual_backward(mb, loss);
    rec(m, "manual_backward_status", (double)s);
    return s == EM_OK ? loss : NULL;
}

static void test_trainer_manual__manual_backward_in_automatic_mode_fails(void **state)
{
    (void)state;
    mm *m = mm_new(MODE_RETURN_LOSS, 1);
    em_module_ops ops = {.version = EM_MODULE_OPS_VERSION, .training_step = auto_training_step,
                         .configure_optimizers = mm_configure_optimizers};
    m->base.ops = &ops;
    m->base.manual_optimization = false;
    char err[1024];
    assert_int_not_equal(fit(m, 2, 1, NAN, 1, NULL, err, sizeof err), EM_OK);
    double st[1] = {0};
    assert_int_equal(values_of(m, "manual_backward_status", st, 1), 1);
    assert_int_equal((int)st[0], EM_ESTATE);
    assert_non_null(strstr(err, "disable automatic optimization"));
    assert_int_equal(strncmp(err, "epoch 0, batch 0, training_step:", 32), 0);
    mm_free(m);
}

/* §4.3: em_optimizers / em_manual_backward outside fit are errors (EM_ESTATE). */
static void test_trainer_manual__optimizers_outside_fit(void **state)
{
    (void)state;
    mm *m = mm_new(MODE_RETURN_LOSS, 1);
    size_t n = 9;
    assert_null(em_optimizers(&m->base, &n));
    assert_int_equal(n, 0);
    assert_int_equal(em_last_status(), EM_ESTATE);
    em_clear_error();
    em_scope_begin();
    em_tensor *loss = em_mean(em_nn_forward(m->layer, T(EM_SHAPE(1, 1), 1)));
    assert_int_equal(em_manual_backward(&m->base, loss), EM_ESTATE);
    assert_ok(em_scope_end());
    em_clear_error();
    mm_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define TEST(fn) cmocka_unit_test_setup_teardown(fn, helper_setup, helper_teardown)
        TEST(test_trainer_manual__two_optimizers_count_two_steps_per_batch),
        TEST(test_trainer_manual__log_on_epoch_forks_step_and_epoch),
        TEST(test_trainer_manual__inner_steps_are_not_counted),
        TEST(test_trainer_manual__returned_loss_is_not_backpropagated),
        TEST(test_trainer_manual__step_with_closure),
        TEST(test_trainer_manual__step_with_closure_returning_none),
        TEST(test_trainer_manual__hook_order),
        TEST(test_trainer_manual__toggle_untoggle_2_optimizers_no_shared_parameters),
        TEST(test_trainer_manual__toggle_untoggle_3_optimizers_shared_parameters),
        TEST(test_trainer_manual__toggle_outside_fit_is_an_error),
        TEST(test_trainer_manual__toggle_model_toggles_as_toggle_optimizer),
        TEST(test_trainer_manual__toggle_model_misuse),
        TEST(test_trainer_manual__schedulers_are_never_stepped_by_the_loop),
        TEST(test_trainer_manual__user_clipping_and_no_configure_gradient_clipping),
        TEST(test_trainer_manual__rejects_trainer_clipping_and_accumulation),
        TEST(test_trainer_manual__manual_backward_in_automatic_mode_fails),
        TEST(test_trainer_manual__optimizers_outside_fit),
#undef TEST
    };
    return cmocka_run_group_tests_name("trainer_manual", tests, NULL, NULL);
}
