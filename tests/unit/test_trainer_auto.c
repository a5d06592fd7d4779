/* test_trainer_auto.c: automatic optimization (Lightning 2.2.5's _AutomaticOptimization), ported
 * from Lightning's own tests (tests/tests_pytorch/...; docs/LIGHTNING_RULES.md §1, §6, §11.1, §11.6).
 *
 * The model is one Linear(1, 1, bias=False) weight w, and the loss of a batch is mean(w * x), so
 * dloss/dw = mean(x) whatever w is: the gradient the optimizer sees is known exactly. Batches are
 * single rows x = 1, 2, 3, ... unless a test says otherwise. Every hook records what it saw
 * (name, epoch, batch_idx, a value) in the model's event list.
 */
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>

/* ---- the recording module ---------------------------------------------------------------------------- */

#define MAX_EV 1024

typedef struct ev {
    char name[40];
    int64_t epoch, batch;
    double v; /* what the hook saw: weight, gradient, loss, clip value */
} ev;

typedef struct am {
    em_module base;
    em_nn *net;
    /* knobs */
    em_sgd_opts sgd;
    int n_opts;                 /* optimizers configure_optimizers adds (0 = Lightning's `None`) */
    bool schedulers;            /* add a step-interval and an epoch-interval StepLR */
    bool lbfgs;                 /* LBFGS(max_iter = 3) instead of SGD */
    const em_optimizer_ops *c_opt; /* an optimizer written in C instead of SGD */
    uint64_t none_mask;         /* training_step returns NULL (Lightning's None) on these batch indices */
    double const_loss;          /* NAN, or the value of every loss (0 * w * x + c) */
    bool zero_grad_even_only;   /* optimizer_zero_grad override: zero only on even batch_idx */
    int step_mode;              /* optimizer_step override: 0 default, 1 closure only, 2 closure + step on
                                   even batch_idx, 3 never runs the closure */
    int clip_mode;              /* configure_gradient_clipping override: 0 default, 1 clamp to [0, 1e-2],
                                   2 em_clip_gradients(clip_arg_val, clip_arg_algo) */
    double clip_arg_val;
    em_clip_algorithm clip_arg_algo;
    /* records */
    ev ev[MAX_EV];
    int nev;
    em_scheduler *sched_step, *sched_epoch;
    double est;                 /* estimated_stepping_batches read in configure_optimizers */
    em_status clip_status;      /* what em_clip_gradients returned in the override */
    double clip_max_abs, clip_norm; /* gradients right after clipping */
    int64_t raw_steps;          /* em_optimizer_step_count of the raw optimizer, read in on_train_end */
    bool grad_enabled_in_step;
} am;

static am *AM(em_module *m) { return (am *)m; }

static void rec(am *m, const char *name, double v)
{
    assert_true(m->nev < MAX_EV);
    ev *e = &m->ev[m->nev++];
    snprintf(e->name, sizeof e->name, "%s", name);
    em_trainer *t = em_module_trainer(&m->base);
    e->epoch = t != NULL ? em_trainer_current_epoch(t) : -1;
    e->batch = t != NULL ? em_trainer_batch_idx(t) : -1;
    e->v = v;
}

static int count(const am *m, const char *name)
{
    int n = 0;
    for (int i = 0; i < m->nev; i++)
        n += strcmp(m->ev[i].name, name) == 0;
    return n;
}

/* The batch indices of the events called `name`, "1,3,4". */
static const char *batches_of(const am *m, const char *name)
{
    static char buf[2048];
    size_t off = 0;
    buf[0] = '\0';
    for (int i = 0; i < m->nev; i++)
        if (strcmp(m->ev[i].name, name) == 0)
            off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%lld", off ? "," : "", (long long)m->ev[i].batch);
    return buf;
}

/* The values the events called `name` saw, in order. */
static int values_of(const am *m, const char *name, double *out, int max)
{
    int n = 0;
    for (int i = 0; i < m->nev && n < max; i++)
        if (strcmp(m->ev[i].name, name) == 0)
            out[n++] = m->ev[i].v;
    return n;
}

/* Every event name from index `from` on, space-separated. */
static const char *names_from(const am *m, int from)
{
    static char buf[16384];
    size_t off = 0;
    buf[0] = '\0';
    for (int i = from; i < m->nev; i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", off ? " " : "", m->ev[i].name);
    return buf;
}

static em_tensor *weight(am *m) { return em_nn_get(m->net, "weight"); }

static double item_of(const em_tensor *t)
{
    em_scope_begin();
    double v = em_tensor_item(t);
    em_scope_end();
    return v;
}

/* The weight of the 1x1 model (NAN for the wider clipping model). */
static double w_value(am *m)
{
    em_tensor *w = weight(m);
    return em_tensor_numel(w) == 1 ? item_of(w) : NAN;
}

static double grad_item(const em_tensor *p)
{
    em_scope_begin();
    em_tensor *g = em_tensor_grad(p);
    double v = g != NULL ? em_tensor_item(g) : NAN;
    em_scope_end();
    return v;
}

/* The total 2-norm of every parameter's gradient, and the largest |g| (torch.norm(stack(norms)) and
 * max(stack(max(|g|))) in Lightning's clipping tests). */
static void grad_stats(em_nn *net, double *norm, double *max_abs)
{
    double sq = 0, mx = 0;
    em_scope_begin();
    for (size_t i = 0; i < em_nn_num_parameters(net); i++) {
        em_tensor *g = em_tensor_grad(em_nn_parameter(net, i));
        if (g == NULL)
            continue;
        sq += em_tensor_item(em_sum(em_square(g)));
        double a = em_tensor_item(em_max(em_abs(g)));
        if (a > mx)
            mx = a;
    }
    em_scope_end();
    *norm = sqrt(sq);
    *max_abs = mx;
}

/* training_step: mean(net(x)), times (1, -2, 3, -4, ...) per output column when the net has several */
static em_tensor *am_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    am *m = AM(mb);
    m->grad_enabled_in_step = em_is_grad_enabled();
    em_tensor *out = em_nn_forward(m->net, b->t[0]);
    int64_t cols = em_tensor_size(out, 1);
    if (cols > 1) {
        float s[8];
        for (int64_t j = 0; j < cols && j < 8; j++)
            s[j] = (float)((j % 2 ? -1 : 1) * (j + 1));
        out = em_mul(out, em_tensor_from(s, EM_F32, EM_SHAPE(1, cols), NULL));
    }
    em_tensor *loss = em_mean(out);
    if (!isnan(m->const_loss))
        loss = em_add_scalar(em_mul_scalar(loss, 0.0), m->const_loss);
    rec(m, "training_step", loss != NULL ? item_of(loss) : NAN);
    if (batch_idx < 64 && (m->none_mask >> batch_idx) & 1)
        return NULL;
    return loss;
}

static em_status am_validation_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)b;
    (void)batch_idx;
    rec(AM(mb), "validation_step", 0);
    return EM_OK;
}

static em_status am_configure_optimizers(em_module *mb, em_optim_setup *setup)
{
    am *m = AM(mb);
    rec(m, "configure_optimizers", 0);
    m->est = em_trainer_estimated_stepping_batches(em_module_trainer(mb));
    em_params *ps = em_nn_parameters(m->net);
    em_status s = EM_OK;
    for (int i = 0; i < m->n_opts && s == EM_OK; i++) {
        em_optimizer *opt;
        if (m->lbfgs) {
            em_lbfgs_opts o = EM_LBFGS_OPTS_INIT;
            o.max_iter = 3;
            opt = em_lbfgs(ps, &o);
        } else if (m->c_opt != NULL) {
            opt = em_optimizer_new(m->c_opt, ps, 0.1, NULL);
        } else {
            opt = em_sgd(ps, &m->sgd);
        }
        s = em_optim_setup_add(setup, opt);
        if (s == EM_OK && i == 0 && m->schedulers) {
            m->sched_step = em_step_lr(opt, 1000, 0.5);
            s = em_optim_setup_add_scheduler(setup, m->sched_step, &(em_scheduler_config){.interval = EM_INTERVAL_STEP});
            if (s == EM_OK) {
                m->sched_epoch = em_step_lr(opt, 1000, 0.5);
                s = em_optim_setup_add_scheduler(setup, m->sched_epoch, NULL);
            }
        }
    }
    em_params_free(ps);
    return s;
}

static em_status am_optimizer_step(em_module *mb, int64_t epoch, int64_t batch_idx, em_optimizer *opt,
                                   const em_closure *closure)
{
    am *m = AM(mb);
    (void)epoch;
    rec(m, "optimizer_step", w_value(m));
    em_status s = EM_OK;
    switch (m->step_mode) {
    case 0:
        s = em_optimizer_step(opt, closure);
        break;
    case 4: /* step, then log (self.log is allowed in optimizer_step) */
        s = em_optimizer_step(opt, closure);
        if (s == EM_OK)
            s = em_log(mb, "after_step", (double)batch_idx, 0);
        break;
    case 1:
        closure->fn(closure->ctx); /* Lightning: optimizer_closure() without optimizer.step() */
        break;
    case 2:
        closure->fn(closure->ctx);
        if (batch_idx % 2 == 0)
            s = em_optimizer_step(opt, NULL);
        break;
    default:
        break; /* never runs the closure */
    }
    rec(m, "optimizer_step_done", w_value(m));
    return s;
}

static em_status am_optimizer_zero_grad(em_module *mb, int64_t epoch, int64_t batch_idx, em_optimizer *opt)
{
    am *m = AM(mb);
    (void)epoch;
    rec(m, "optimizer_zero_grad", 0);
    if (m->zero_grad_even_only && batch_idx % 2 != 0)
        return EM_OK;
    rec(m, "zero_grad_call", 0);
    return em_optimizer_zero_grad(opt);
}

static em_status am_lr_scheduler_step(em_module *mb, em_scheduler *s, bool has_metric, double metric)
{
    am *m = AM(mb);
    rec(m, s == m->sched_step ? "lr_scheduler_step(step)" : s == m->sched_epoch ? "lr_scheduler_step(epoch)"
                                                                                 : "lr_scheduler_step(?)", 0);
    return has_metric ? em_scheduler_step_metric(s, metric) : em_scheduler_step(s);
}

static em_status am_configure_gradient_clipping(em_module *mb, em_optimizer *opt, double clip_val,
                                                em_clip_algorithm algo)
{
    am *m = AM(mb);
    rec(m, "configure_gradient_clipping", clip_val);
    rec(m, "clip_algo", (double)algo);
    em_status s = EM_OK;
    if (m->clip_mode == 0) {
        s = em_clip_gradients(mb, opt, clip_val, algo); /* the default body */
    } else if (m->clip_mode == 1) {
        /* test_lightning_module_configure_gradient_clipping: p.grad.clamp_(min=0, max=1e-2) */
        em_scope_begin();
        for (size_t i = 0; i < em_nn_num_parameters(m->net); i++) {
            em_tensor *p = em_nn_parameter(m->net, i);
            em_tensor *g = em_tensor_grad(p);
            if (g != NULL)
                em_copy_(g, em_clamp(g, 0.0, 1e-2));
        }
        em_scope_end();
    } else {
        s = em_clip_gradients(mb, opt, m->clip_arg_val, m->clip_arg_algo);
        m->clip_status = s;
    }
    grad_stats(m->net, &m->clip_norm, &m->clip_max_abs);
    return s;
}

static em_status am_backward(em_module *mb, em_tensor *loss, bool retain_graph)
{
    rec(AM(mb), "backward", item_of(loss));
    return em_backward_ex(loss, NULL, retain_graph);
}

#define HOOK0(fn, label)                               \
    static em_status fn(em_module *mb)                  \
    {                                                   \
        rec(AM(mb), label, 0);                          \
        return EM_OK;                                   \
    }
HOOK0(am_on_fit_start, "on_fit_start")
HOOK0(am_on_fit_end, "on_fit_end")
HOOK0(am_on_train_start, "on_train_start")
HOOK0(am_on_train_epoch_start, "on_train_epoch_start")
HOOK0(am_on_train_epoch_end, "on_train_epoch_end")
HOOK0(am_on_after_backward, "on_after_backward")
HOOK0(am_on_validation_start, "on_validation_start")
HOOK0(am_on_validation_end, "on_validation_end")
HOOK0(am_on_validation_epoch_start, "on_validation_epoch_start")
HOOK0(am_on_validation_epoch_end, "on_validation_epoch_end")

static em_status am_on_train_end(em_module *mb)
{
    am *m = AM(mb);
    rec(m, "on_train_end", 0);
    size_t n = 0;
    em_optimizer **opts = em_optimizers(mb, &n);
    m->raw_steps = n > 0 ? em_optimizer_step_count(em_optimizer_inner(opts[0])) : -1;
    return EM_OK;
}

static int am_on_train_batch_start(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)b;
    (void)batch_idx;
    am *m = AM(mb);
    rec(m, "on_train_batch_start", w_value(m));
    return 0;
}

static em_status am_on_train_batch_end(em_module *mb, const em_tensor *loss, const em_batch *b, int64_t batch_idx)
{
    (void)b;
    (void)batch_idx;
    am *m = AM(mb);
    rec(m, "on_train_batch_end", w_value(m));
    rec(m, "batch_end_loss", loss != NULL ? item_of(loss) : NAN);
    return EM_OK;
}

static em_status am_on_before_backward(em_module *mb, em_tensor *loss)
{
    rec(AM(mb), "on_before_backward", item_of(loss));
    return EM_OK;
}

static em_status am_on_before_optimizer_step(em_module *mb, em_optimizer *opt)
{
    (void)opt;
    am *m = AM(mb);
    rec(m, "on_before_optimizer_step", em_tensor_numel(weight(m)) == 1 ? grad_item(weight(m)) : NAN);
    return EM_OK;
}

static em_status am_on_before_zero_grad(em_module *mb, em_optimizer *opt)
{
    (void)opt;
    rec(AM(mb), "on_before_zero_grad", 0);
    return EM_OK;
}

static em_status am_on_validation_model_zero_grad(em_module *mb)
{
    am *m = AM(mb);
    rec(m, "on_validation_model_zero_grad", 0);
    return em_nn_zero_grad(m->net, true); /* Lightning's default: zero_grad(set_to_none=True) */
}

static const em_module_ops am_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = am_training_step,
    .configure_optimizers = am_configure_optimizers,
    .validation_step = am_validation_step,
    .optimizer_step = am_optimizer_step,
    .optimizer_zero_grad = am_optimizer_zero_grad,
    .lr_scheduler_step = am_lr_scheduler_step,
    .configure_gradient_clipping = am_configure_gradient_clipping,
    .backward = am_backward,
    .on_fit_start = am_on_fit_start,
    .on_fit_end = am_on_fit_end,
    .on_train_start = am_on_train_start,
    .on_train_end = am_on_train_end,
    .on_train_epoch_start = am_on_train_epoch_start,
    .on_train_epoch_end = am_on_train_epoch_end,
    .on_train_batch_start = am_on_train_batch_start,
    .on_train_batch_end = am_on_train_batch_end,
    .on_before_backward = am_on_before_backward,
    .on_after_backward = am_on_after_backward,
    .on_before_optimizer_step = am_on_before_optimizer_step,
    .on_before_zero_grad = am_on_before_zero_grad,
    .on_validation_start = am_on_validation_start,
    .on_validation_end = am_on_validation_end,
    .on_validation_epoch_start = am_on_validation_epoch_start,
    .on_validation_epoch_end = am_on_validation_epoch_end,
    .on_validation_model_zero_grad = am_on_validation_model_zero_grad,
};

/* A model with a Linear(1, 1, bias=False) weight of w0 and SGD(lr). Free with am_free. */
static am *am_new(double w0, double lr)
{
    am *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->base.ops = &am_ops;
    m->base.manual_optimization = false;
    m->net = em_nn_linear(1, 1, false);
    assert_nonnull_em(m->net);
    m->base.layers = m->net;
    float w = (float)w0;
    assert_ok(em_nn_set(m->net, "weight", &w, EM_F32, 1));
    m->sgd = (em_sgd_opts){.lr = lr};
    m->n_opts = 1;
    m->const_loss = NAN;
    return m;
}

static void am_free(am *m)
{
    em_nn_free(m->net);
    free(m);
}

/* A loader over rows x = 1, 2, ..., rows (shape [rows, cols]: row i holds i + 1 in every column). */
static em_loader *rows_loader(int64_t rows, int64_t cols, int64_t batch_size)
{
    em_scope_begin();
    float *x = calloc((size_t)(rows * cols), sizeof *x);
    assert_non_null(x);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            x[i * cols + j] = (float)(i + 1);
    em_tensor *t = em_tensor_from(x, EM_F32, EM_SHAPE(rows, cols), NULL);
    free(x);
    em_loader *l = em_tensor_loader(&t, 1, &(em_loader_opts){.batch_size = batch_size});
    assert_nonnull_em(l);
    assert_ok(em_scope_end());
    return l;
}

static em_trainer *trainer_with(em_trainer_config cfg)
{
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    return t;
}

static em_trainer_config quiet_config(int64_t max_epochs)
{
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = max_epochs;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    return cfg;
}

/* ---- a recording callback (Lightning's HookedCallback) ---------------------------------------------------- */

#define CBHOOK(fn, label)                                                  \
    static em_status fn(em_callback *cb, em_trainer *t, em_module *m)       \
    {                                                                       \
        (void)t;                                                            \
        (void)m;                                                            \
        rec(em_callback_state(cb), label, 0);                               \
        return EM_OK;                                                       \
    }
CBHOOK(cb_on_fit_start, "cb.on_fit_start")
CBHOOK(cb_on_fit_end, "cb.on_fit_end")
CBHOOK(cb_on_train_start, "cb.on_train_start")
CBHOOK(cb_on_train_end, "cb.on_train_end")
CBHOOK(cb_on_train_epoch_start, "cb.on_train_epoch_start")
CBHOOK(cb_on_train_epoch_end, "cb.on_train_epoch_end")
CBHOOK(cb_on_after_backward, "cb.on_after_backward")
CBHOOK(cb_on_validation_start, "cb.on_validation_start")
CBHOOK(cb_on_validation_end, "cb.on_validation_end")
CBHOOK(cb_on_validation_epoch_start, "cb.on_validation_epoch_start")
CBHOOK(cb_on_validation_epoch_end, "cb.on_validation_epoch_end")

static em_status cb_on_train_batch_start(em_callback *cb, em_trainer *t, em_module *m, const em_batch *b, int64_t i)
{
    (void)t, (void)m, (void)b, (void)i;
    rec(em_callback_state(cb), "cb.on_train_batch_start", 0);
    return EM_OK;
}
static em_status cb_on_train_batch_end(em_callback *cb, em_trainer *t, em_module *m, const em_tensor *loss,
                                       const em_batch *b, int64_t i)
{
    (void)t, (void)m, (void)b, (void)i, (void)loss;
    rec(em_callback_state(cb), "cb.on_train_batch_end", 0);
    return EM_OK;
}
static em_status cb_on_before_backward(em_callback *cb, em_trainer *t, em_module *m, em_tensor *loss)
{
    (void)t, (void)m, (void)loss;
    rec(em_callback_state(cb), "cb.on_before_backward", 0);
    return EM_OK;
}
static em_status cb_on_before_optimizer_step(em_callback *cb, em_trainer *t, em_module *m, em_optimizer *opt)
{
    (void)t, (void)m, (void)opt;
    rec(em_callback_state(cb), "cb.on_before_optimizer_step", 0);
    return EM_OK;
}
static em_status cb_on_before_zero_grad(em_callback *cb, em_trainer *t, em_module *m, em_optimizer *opt)
{
    (void)t, (void)m, (void)opt;
    rec(em_callback_state(cb), "cb.on_before_zero_grad", 0);
    return EM_OK;
}

static const em_callback_ops recording_callback_ops = {
    .version = EM_CALLBACK_OPS_VERSION,
    .name = "HookedCallback",
    .on_fit_start = cb_on_fit_start,
    .on_fit_end = cb_on_fit_end,
    .on_train_start = cb_on_train_start,
    .on_train_end = cb_on_train_end,
    .on_train_epoch_start = cb_on_train_epoch_start,
    .on_train_epoch_end = cb_on_train_epoch_end,
    .on_train_batch_start = cb_on_train_batch_start,
    .on_train_batch_end = cb_on_train_batch_end,
    .on_before_backward = cb_on_before_backward,
    .on_after_backward = cb_on_after_backward,
    .on_before_optimizer_step = cb_on_before_optimizer_step,
    .on_before_zero_grad = cb_on_before_zero_grad,
    .on_validation_start = cb_on_validation_start,
    .on_validation_end = cb_on_validation_end,
    .on_validation_epoch_start = cb_on_validation_epoch_start,
    .on_validation_epoch_end = cb_on_validation_epoch_end,
};

/* ---- hook order -------------------------------------------------------------------------------------------- */

#define VAL_BLOCK                                                                                          \
    "cb.on_validation_start on_validation_start cb.on_validation_epoch_start on_validation_epoch_start "  \
    "validation_step validation_step cb.on_validation_epoch_end on_validation_epoch_end "                 \
    "cb.on_validation_end on_validation_end"
#define BATCH_HEAD                                                                                         \
    "cb.on_train_batch_start on_train_batch_start optimizer_step training_step cb.on_before_zero_grad "   \
    "on_before_zero_grad optimizer_zero_grad zero_grad_call cb.on_before_backward on_before_backward "    \
    "backward cb.on_after_backward on_after_backward cb.on_before_optimizer_step on_before_optimizer_step " \
    "configure_gradient_clipping clip_algo optimizer_step_done lr_scheduler_step(step)"
#define BATCH_TAIL "cb.on_train_batch_end on_train_batch_end batch_end_loss"

/* models/test_hooks.py::test_trainer_model_hook_system_fit (automatic, with a HookedCallback):
 * 2 train batches, 2 val batches, 2 sanity steps, a step-interval and an epoch-interval scheduler.
 * zero_grad comes after training_step; on_before_optimizer_step, then configure_gradient_clipping (with
 * the Trainer's None values), then the update; the step scheduler, then (last batch) the epoch scheduler,
 * before on_train_batch_end; on_validation_model_zero_grad right before the end-of-epoch validation. */
static void test_trainer_auto__hook_order_of_fit(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    m->schedulers = true;
    em_loader *train = rows_loader(2, 1, 1);
    em_loader *val = rows_loader(2, 1, 1);
    em_trainer *t = trainer_with(quiet_config(1));
    assert_ok(em_trainer_add_callback(t, em_callback_new(&recording_callback_ops, m)));
    assert_ok(em_trainer_fit(t, &m->base, train, val));

    const char *want =
        "configure_optimizers cb.on_fit_start on_fit_start " VAL_BLOCK " "
        "cb.on_train_start on_train_start cb.on_train_epoch_start on_train_epoch_start "
        BATCH_HEAD " " BATCH_TAIL " "
        BATCH_HEAD " lr_scheduler_step(epoch) " BATCH_TAIL " "
        "on_validation_model_zero_grad " VAL_BLOCK " "
        "cb.on_train_epoch_end on_train_epoch_end cb.on_train_end on_train_end cb.on_fit_end on_fit_end";
    assert_string_equal(names_from(m, 0), want);

    /* the update happens after clipping: the weight is unchanged in configure_gradient_clipping and
     * changed when the optimizer_step hook returns (w = 1 - 0.1 * x0 = 0.9, then 0.9 - 0.1 * 2 = 0.7) */
    double before[2], after[2], clip[2], algo[2];
    assert_int_equal(values_of(m, "optimizer_step", before, 2), 2);
    assert_int_equal(values_of(m, "optimizer_step_done", after, 2), 2);
    assert_close_rel(before[0], 1.0, 1e-6);
    assert_close_rel(after[0], 0.9, 1e-6);
    assert_close_rel(before[1], 0.9, 1e-6);
    assert_close_rel(after[1], 0.7, 1e-6);
    /* the Trainer has no clipping: configure_gradient_clipping gets None (NAN) and None (EM_CLIP_DEFAULT) */
    assert_int_equal(values_of(m, "configure_gradient_clipping", clip, 2), 2);
    assert_true(isnan(clip[0]) && isnan(clip[1]));
    assert_int_equal(values_of(m, "clip_algo", algo, 2), 2);
    assert_int_equal((int)algo[0], EM_CLIP_DEFAULT);
    assert_int_equal(em_trainer_global_step(t), 2);
    assert_int_equal(em_trainer_current_epoch(t), 1);

    em_trainer_free(t);
    em_loader_free(train);
    em_loader_free(val);
    am_free(m);
}

/* ---- accumulation -------------------------------------------------------------------------------------------- */

/* docs/LIGHTNING_RULES.md §1.3 [observed]: N=5, A=2 -> optimizer steps at batch_idx 1, 3, 4 (the last batch
 * of the epoch steps with a short window; windows never span epochs), zero_grad on each window's first batch
 * 0, 2, 4. The loss is divided by A even in the short window: grad = (1 + 2) / 2, (3 + 4) / 2, 5 / 2 (not 5).
 * Two epochs: the same again, global_step 6. (trainer/test_trainer.py::test_gradient_accumulation_scheduling_last_batch,
 * loops/test_training_epoch_loop.py::test_no_batch_idx_gradient_accumulation) */
static void test_trainer_auto__accumulation_n5_a2_steps_at_1_3_4(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    em_loader *train = rows_loader(5, 1, 1);
    em_trainer_config cfg = quiet_config(2);
    cfg.accumulate_grad_batches = 2;
    em_trainer *t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));

    assert_string_equal(batches_of(m, "on_before_optimizer_step"), "1,3,4,1,3,4");
    assert_string_equal(batches_of(m, "optimizer_step"), "1,3,4,1,3,4");
    assert_string_equal(batches_of(m, "optimizer_zero_grad"), "0,2,4,0,2,4");
    assert_int_equal(count(m, "training_step"), 10);
    assert_int_equal(count(m, "backward"), 10);
    double g[6] = {0};
    assert_int_equal(values_of(m, "on_before_optimizer_step", g, 6), 6);
    const double want[3] = {1.5, 3.5, 2.5};
    for (int i = 0; i < 6; i++)
        assert_close_rel(g[i], want[i % 3], 1e-6);
    assert_int_equal(em_trainer_global_step(t), 6);
    assert_int_equal(em_trainer_current_epoch(t), 2);

    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* §1.3 [observed]: N=7, A=2 -> steps at 1, 3, 5, 6; grads (1+2)/2, (3+4)/2, (5+6)/2, 7/2. */
static void test_trainer_auto__accumulation_n7_a2_steps_at_1_3_5_6(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    em_loader *train = rows_loader(7, 1, 1);
    em_trainer_config cfg = quiet_config(1);
    cfg.accumulate_grad_batches = 2;
    em_trainer *t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));

    assert_string_equal(batches_of(m, "on_before_optimizer_step"), "1,3,5,6");
    assert_string_equal(batches_of(m, "optimizer_zero_grad"), "0,2,4,6");
    double g[4] = {0};
    assert_int_equal(values_of(m, "on_before_optimizer_step", g, 4), 4);
    assert_close_rel(g[0], 1.5, 1e-6);
    assert_close_rel(g[1], 3.5, 1e-6);
    assert_close_rel(g[2], 5.5, 1e-6);
    assert_close_rel(g[3], 3.5, 1e-6);
    assert_int_equal(em_trainer_global_step(t), 4);

    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* trainer/test_trainer.py::test_gradient_accumulation_scheduling_last_batch, (A=3, limit 0.8) and
 * (A=4, limit 0.7) of 10 batches, 2 epochs: the weights change only on a window's last batch and on the
 * last *limited* batch (N = 8: steps at 2, 5, 7; N = 7: steps at 3, 6). */
static void run_last_batch_case(int64_t a, double limit, const char *want_steps, int64_t want_n)
{
    am *m = am_new(1.0, 0.01);
    em_loader *train = rows_loader(10, 1, 1);
    em_trainer_config cfg = quiet_config(2);
    cfg.accumulate_grad_batches = a;
    cfg.limit_train_batches = EM_FRACTION(limit);
    em_trainer *t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_int_equal(em_trainer_num_training_batches(t), want_n);
    assert_string_equal(batches_of(m, "optimizer_step"), want_steps);

    /* on_train_batch_start sees the weight before the batch, on_train_batch_end after it */
    double w0[32] = {0}, w1[32] = {0};
    int n0 = values_of(m, "on_train_batch_start", w0, 32);
    int n1 = values_of(m, "on_train_batch_end", w1, 32);
    assert_int_equal(n0, 2 * want_n);
    assert_int_equal(n1, 2 * want_n);
    int k = 0;
    for (int i = 0; i < m->nev; i++) {
        if (strcmp(m->ev[i].name, "on_train_batch_start") != 0)
            continue;
        int64_t b = m->ev[i].batch;
        bool stepping = (b + 1) % a == 0 || b + 1 == want_n;
        if (stepping)
            assert_true(w0[k] != w1[k]);
        else
            assert_true(w0[k] == w1[k]);
        k++;
    }
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

static void test_trainer_auto__weights_change_only_at_window_ends_and_last_limited_batch(void **state)
{
    (void)state;
    run_last_batch_case(3, 0.8, "2,5,7,2,5,7", 8);
    run_last_batch_case(4, 0.7, "3,6,3,6", 7);
}

/* loops/optimization/test_optimizer_loop.py::test_closure_result_apply_accumulation: a loss of 25 with A=5
 * becomes 5: backward, on_before_backward and on_train_batch_end all see loss / A (§1.2, §1.9). */
static void test_trainer_auto__closure_loss_is_divided_by_accumulation(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    m->const_loss = 25.0;
    em_loader *train = rows_loader(5, 1, 1);
    em_trainer_config cfg = quiet_config(1);
    cfg.accumulate_grad_batches = 5;
    em_trainer *t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    double v[5] = {0};
    assert_int_equal(values_of(m, "training_step", v, 5), 5);
    assert_close_rel(v[0], 25.0, 1e-6);
    assert_int_equal(values_of(m, "on_before_backward", v, 5), 5);
    for (int i = 0; i < 5; i++)
        assert_close_rel(v[i], 5.0, 1e-6);
    assert_int_equal(values_of(m, "backward", v, 5), 5);
    assert_close_rel(v[4], 5.0, 1e-6);
    assert_int_equal(values_of(m, "batch_end_loss", v, 5), 5);
    for (int i = 0; i < 5; i++)
        assert_close_rel(v[i], 5.0, 1e-6);
    assert_int_equal(em_trainer_global_step(t), 1);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* callbacks/test_gradient_accumulation_scheduler.py::test_trainer_accumulate_grad_batches_zero_grad:
 * 20 batches, SGD.zero_grad called ceil(20 / A) times: 20, 10, 7 for A = 1, 2, 3. */
static void test_trainer_auto__zero_grad_count_is_ceil_n_over_a(void **state)
{
    (void)state;
    const int64_t as[3] = {1, 2, 3}, want[3] = {20, 10, 7};
    for (int i = 0; i < 3; i++) {
        am *m = am_new(1.0, 0.001);
        em_loader *train = rows_loader(20, 1, 1);
        em_loader *val = rows_loader(1, 1, 1);
        em_trainer_config cfg = quiet_config(1);
        cfg.accumulate_grad_batches = as[i];
        em_trainer *t = trainer_with(cfg);
        assert_int_equal(em_trainer_accumulate_grad_batches(t), as[i]);
        assert_ok(em_trainer_fit(t, &m->base, train, val));
        assert_int_equal(count(m, "zero_grad_call"), want[i]);
        assert_int_equal(count(m, "on_before_zero_grad"), want[i]);
        em_trainer_free(t);
        em_loader_free(train);
        em_loader_free(val);
        am_free(m);
    }
}

/* core/test_lightning_optimizer.py::test_lightning_optimizer_automatic_optimization_optimizer_zero_grad:
 * an optimizer_zero_grad override that zeroes only on even batches is honoured (10 zero_grads for 20
 * batches), and nothing else zeroes: on odd batches the gradient is the sum of two batches. */
static void test_trainer_auto__optimizer_zero_grad_override_is_honoured(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.001);
    m->zero_grad_even_only = true;
    m->schedulers = true;
    em_loader *train = rows_loader(20, 1, 1);
    em_trainer *t = trainer_with(quiet_config(1));
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_int_equal(count(m, "optimizer_zero_grad"), 20);
    assert_int_equal(count(m, "zero_grad_call"), 10);
    double g[20] = {0};
    assert_int_equal(values_of(m, "on_before_optimizer_step", g, 20), 20);
    assert_close_rel(g[0], 1.0, 1e-6);
    assert_close_rel(g[1], 1.0 + 2.0, 1e-6);
    assert_close_rel(g[2], 3.0, 1e-6);
    assert_close_rel(g[3], 3.0 + 4.0, 1e-6);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* models/test_hooks.py::test_on_before_zero_grad_called: A=1, max_steps=3 -> on_before_zero_grad 3 times. */
static void test_trainer_auto__on_before_zero_grad_count_equals_max_steps(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    em_loader *train = rows_loader(10, 1, 1);
    em_trainer_config cfg = quiet_config(EM_NONE);
    cfg.max_steps = 3;
    em_trainer *t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_int_equal(count(m, "on_before_zero_grad"), 3);
    assert_int_equal(em_trainer_global_step(t), 3);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* trainer/optimization/test_backward_calls.py::test_backward_count_simple and
 * ::test_backward_count_with_grad_accumulation: one backward per batch; 6 batches with A=2 -> 6 backward
 * calls (3 steps); max_steps=6 with A=2 -> 12 backward calls and the epoch cut mid-way still counts. */
static void test_trainer_auto__backward_counts(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.001);
    em_loader *train = rows_loader(6, 1, 1);
    em_trainer_config cfg = quiet_config(1);
    cfg.accumulate_grad_batches = 2;
    em_trainer *t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_int_equal(count(m, "backward"), 6);
    assert_int_equal(em_trainer_global_step(t), 3);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);

    m = am_new(1.0, 0.001);
    train = rows_loader(20, 1, 1);
    cfg = quiet_config(EM_NONE);
    cfg.max_steps = 6;
    cfg.accumulate_grad_batches = 2;
    t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_int_equal(count(m, "backward"), 12);
    assert_int_equal(em_trainer_global_step(t), 6);
    assert_int_equal(em_trainer_current_epoch(t), 1);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* ---- training_step returning None (§1.6 [observed]) -------------------------------------------------------- */

/* Batches 1 and 2 return NULL: no backward, but zero_grad, on_before_optimizer_step, clipping and the
 * optimizer step still run and global_step counts them. On torch 1.13 zero_grad zero-fills the gradient,
 * so SGD still applies weight decay and momentum. SGD(lr=0.1, momentum=0.9, weight_decay=0.5), w0 = 1,
 * x = 1, 2, 3 (grad = x on batch 0 only):
 *   batch 0: d = 1 + 0.5*1 = 1.5, buf = 1.5, w = 1 - 0.15 = 0.85
 *   batch 1: d = 0 + 0.5*0.85 = 0.425, buf = 0.9*1.5 + 0.425 = 1.775, w = 0.85 - 0.1775 = 0.6725
 *   batch 2: d = 0.5*0.6725 = 0.33625, buf = 0.9*1.775 + 0.33625 = 1.93375, w = 0.6725 - 0.193375 = 0.479125
 * (torch >= 2.0 sets the gradient to None and SGD then skips the weight: it stays 0.85.) */
static void test_trainer_auto__training_step_none_still_steps(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    m->sgd = (em_sgd_opts){.lr = 0.1, .momentum = 0.9, .weight_decay = 0.5};
    m->none_mask = (1u << 1) | (1u << 2);
    em_loader *train = rows_loader(3, 1, 1);
    em_trainer *t = trainer_with(quiet_config(1));
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_int_equal(em_trainer_global_step(t), 3);
    assert_int_equal(count(m, "backward"), 1);
    assert_string_equal(batches_of(m, "optimizer_zero_grad"), "0,1,2");
    assert_string_equal(batches_of(m, "on_before_optimizer_step"), "0,1,2");
    assert_string_equal(batches_of(m, "configure_gradient_clipping"), "0,1,2");
    double loss[3] = {0}, w[3] = {0};
    assert_int_equal(values_of(m, "batch_end_loss", loss, 3), 3);
    assert_close_rel(loss[0], 1.0, 1e-6);
    assert_true(isnan(loss[1]) && isnan(loss[2])); /* on_train_batch_end gets no loss */
    assert_int_equal(values_of(m, "on_train_batch_end", w, 3), 3);
    assert_close_rel(w[0], 0.85, 1e-6);
    if (em_zero_grad_sets_to_none()) {
        assert_close_rel(w[1], 0.85, 1e-6);
        assert_close_rel(w[2], 0.85, 1e-6);
    } else {
        assert_close_rel(w[1], 0.6725, 1e-6);
        assert_close_rel(w[2], 0.479125, 1e-6);
    }
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* §1.6: a NULL on the very first batch: the gradients are None (fit starts with zero_grad(set_to_none)), so
 * the step changes nothing, but it runs and counts. */
static void test_trainer_auto__training_step_none_on_first_batch_counts_a_step(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    m->none_mask = 1u;
    em_loader *train = rows_loader(2, 1, 1);
    em_trainer *t = trainer_with(quiet_config(1));
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_int_equal(em_trainer_global_step(t), 2);
    double w[2] = {0}, g[2] = {0};
    assert_int_equal(values_of(m, "on_before_optimizer_step", g, 2), 2);
    assert_true(isnan(g[0])); /* no gradient at all */
    assert_int_equal(values_of(m, "on_train_batch_end", w, 2), 2);
    assert_close_rel(w[0], 1.0, 0);
    assert_close_rel(w[1], 1.0 - 0.1 * 2.0, 1e-6);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* ---- optimizer_step overrides and the closure (§1.2, §1.4) --------------------------------------------------- */

/* core/test_lightning_optimizer.py::test_lightning_optimizer_automatic_optimization_optimizer_step: an
 * override that always runs the closure but steps only on even batch_idx: 8 batches -> 8 zero_grads, 4
 * optimizer steps; global_step counts every optimizer_step call (8). */
static void test_trainer_auto__optimizer_step_override_steps_on_even_batches(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.001);
    m->step_mode = 2;
    m->schedulers = true;
    em_loader *train = rows_loader(8, 1, 1);
    em_loader *val = rows_loader(1, 1, 1);
    em_trainer *t = trainer_with(quiet_config(1));
    assert_ok(em_trainer_fit(t, &m->base, train, val));
    assert_int_equal(count(m, "zero_grad_call"), 8);
    assert_int_equal(m->raw_steps, 4);
    assert_string_equal(batches_of(m, "on_before_optimizer_step"), "0,2,4,6");
    assert_int_equal(em_trainer_global_step(t), 8);
    em_trainer_free(t);
    em_loader_free(train);
    em_loader_free(val);
    am_free(m);
}

/* An override that runs the closure and never steps: training_step, zero_grad and backward run on every
 * batch, the weights never change, no on_before_optimizer_step / clipping (they belong to the optimizer's
 * step), and global_step still counts each optimizer_step call. */
static void test_trainer_auto__optimizer_step_override_running_only_the_closure(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    m->step_mode = 1;
    em_loader *train = rows_loader(4, 1, 1);
    em_trainer *t = trainer_with(quiet_config(1));
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_int_equal(count(m, "training_step"), 4);
    assert_int_equal(count(m, "backward"), 4);
    assert_int_equal(count(m, "zero_grad_call"), 4);
    assert_int_equal(count(m, "on_before_optimizer_step"), 0);
    assert_int_equal(count(m, "configure_gradient_clipping"), 0);
    assert_int_equal(m->raw_steps, 0);
    assert_close_rel(item_of(weight(m)), 1.0, 0);
    assert_int_equal(em_trainer_global_step(t), 4);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* loops/optimization/test_closure.py::test_optimizer_step_no_closure_raises (§10 #29): an optimizer_step
 * override that never runs the closure fails the fit with "The closure hasn't been executed". */
static void test_trainer_auto__optimizer_step_override_not_running_closure_fails(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    m->step_mode = 3;
    em_loader *train = rows_loader(4, 1, 1);
    em_trainer *t = trainer_with(quiet_config(1));
    em_status s = em_trainer_fit(t, &m->base, train, NULL);
    assert_int_not_equal(s, EM_OK);
    assert_non_null(strstr(em_trainer_error(t), "The closure hasn't been executed"));
    assert_int_equal(strncmp(em_trainer_error(t), "epoch 0, batch 0, ", 18), 0);
    assert_int_equal(count(m, "training_step"), 0);
    assert_int_equal(em_trainer_global_step(t), 0);
    em_clear_error();
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* A C optimizer whose step ignores the closure: the same error (test_optimizer_step_no_closure_raises,
 * second half: "an optimizer that drops the closure"). */
static em_status ignoring_step(em_optimizer *self, const em_closure *closure)
{
    (void)self;
    (void)closure;
    return EM_OK;
}
static const em_optimizer_ops ignoring_ops = {.version = EM_OPTIMIZER_OPS_VERSION, .name = "Ignoring",
                                              .step = ignoring_step};

static void test_trainer_auto__optimizer_ignoring_the_closure_fails(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    m->c_opt = &ignoring_ops;
    em_loader *train = rows_loader(2, 1, 1);
    em_trainer *t = trainer_with(quiet_config(1));
    assert_int_not_equal(em_trainer_fit(t, &m->base, train, NULL), EM_OK);
    assert_non_null(strstr(em_trainer_error(t), "The closure hasn't been executed"));
    em_clear_error();
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* loops/optimization/test_closure.py::test_closure_with_no_grad_optimizer: an optimizer whose step runs
 * under no_grad still gets a closure that runs training_step with grad enabled (backward works). */
static em_status no_grad_step(em_optimizer *self, const em_closure *closure)
{
    (void)self;
    em_no_grad_begin();
    em_status s = em_closure_call(closure, NULL);
    em_no_grad_end();
    return s;
}
static const em_optimizer_ops no_grad_ops = {.version = EM_OPTIMIZER_OPS_VERSION, .name = "NoGrad",
                                             .step = no_grad_step};

static void test_trainer_auto__closure_runs_with_grad_enabled_in_a_no_grad_step(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    m->c_opt = &no_grad_ops;
    em_loader *train = rows_loader(2, 1, 1);
    em_trainer *t = trainer_with(quiet_config(1));
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_true(m->grad_enabled_in_step);
    assert_int_equal(count(m, "backward"), 2);
    assert_int_equal(em_trainer_global_step(t), 2);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* §9.1: self.log is allowed in optimizer_step (on_step by default), also after the optimizer's step has run
 * the closure and on_before_optimizer_step: "after_step" = batch_idx of the last batch. */
static void test_trainer_auto__log_in_optimizer_step_after_the_step(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    m->step_mode = 4;
    em_loader *train = rows_loader(3, 1, 1);
    em_trainer *t = trainer_with(quiet_config(1));
    em_status s = em_trainer_fit(t, &m->base, train, NULL);
    if (s != EM_OK)
        print_error("em_trainer_fit: %s\n", em_trainer_error(t));
    assert_ok(s);
    double v = NAN;
    assert_true(em_trainer_callback_metric(t, "after_step", &v));
    assert_close_rel(v, 2.0, 0);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* trainer/optimization/test_optimizers.py::test_none_optimizer: configure_optimizers adding nothing still
 * trains (Lightning's _MockOptimizer runs the closure): every training_step runs, nothing is updated. */
static void test_trainer_auto__no_optimizer_runs_the_closure(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    m->n_opts = 0;
    m->base.ops = &(em_module_ops){.version = EM_MODULE_OPS_VERSION,
                                   .training_step = am_training_step,
                                   .configure_optimizers = am_configure_optimizers,
                                   .backward = am_backward};
    em_loader *train = rows_loader(3, 1, 1);
    em_trainer *t = trainer_with(quiet_config(1));
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_int_equal(count(m, "training_step"), 3);
    assert_int_equal(count(m, "backward"), 3);
    assert_close_rel(item_of(weight(m)), 1.0, 0);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* trainer/optimization/test_multiple_optimizers.py::test_multiple_optimizers_automatic_optimization_raises
 * (§1.8, §10 #15): two optimizers in automatic mode stop the fit before any training_step. */
static void test_trainer_auto__multiple_optimizers_rejected(void **state)
{
    (void)state;
    am *m = am_new(1.0, 0.1);
    m->n_opts = 2;
    em_loader *train = rows_loader(2, 1, 1);
    em_trainer *t = trainer_with(quiet_config(1));
    assert_int_not_equal(em_trainer_fit(t, &m->base, train, NULL), EM_OK);
    assert_non_null(strstr(em_trainer_error(t), "only supported with manual optimization"));
    assert_int_equal(count(m, "training_step"), 0);
    assert_int_equal(count(m, "on_fit_start"), 0);
    em_clear_error();
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* ---- LBFGS (§1.1 note) ----------------------------------------------------------------------------------------- */

/* core/test_lightning_optimizer.py::test_lightning_optimizer_automatic_optimization_lbfgs_zero_grad and §1.1
 * [observed]: LBFGS(max_iter=3) evaluates the closure 3 times per step (the loss mean(w*x) is linear, so
 * nothing stops it early): training_step, zero_grad, backward, on_before_optimizer_step and clipping (0.5)
 * run 3 times per batch, while global_step grows by 1 per batch. 2 batches -> 6 and 2. */
static void test_trainer_auto__lbfgs_reruns_the_closure(void **state)
{
    (void)state;
    am *m = am_new(1.0, 1.0);
    m->lbfgs = true;
    em_loader *train = rows_loader(2, 1, 1);
    em_trainer_config cfg = quiet_config(1);
    cfg.gradient_clip_val = 0.5;
    em_trainer *t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_int_equal(count(m, "training_step"), 6);
    assert_int_equal(count(m, "zero_grad_call"), 6);
    assert_int_equal(count(m, "backward"), 6);
    assert_int_equal(count(m, "on_before_optimizer_step"), 6);
    assert_int_equal(count(m, "configure_gradient_clipping"), 6);
    assert_int_equal(count(m, "optimizer_step"), 2);
    assert_int_equal(em_trainer_global_step(t), 2);
    /* clipping really ran: |grad| = x = 1 then 2, clipped to 0.5 */
    assert_close_rel(m->clip_norm, 0.5, 1e-5);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* ---- clipping (§6) -------------------------------------------------------------------------------------------------- */

/* A Linear(1, 4) with bias, the loss mean(out * s), s = (1, -2, 3, -4), one batch x = (1, 2, 3):
 * grad W_j = s_j * mean(x) / 4 = s_j / 2, grad b_j = s_j / 4: total norm sqrt(30 * 5 / 16) = 3.06 and
 * max |g| = 2, both far above the clip values. */
static am *clip_model(void)
{
    am *m = am_new(1.0, 1.0);
    em_nn_free(m->net);
    em_manual_seed(0);
    m->net = em_nn_linear(1, 4, true);
    m->base.layers = m->net;
    return m;
}

/* trainer/test_trainer.py::test_gradient_clipping_by_norm (32-true): gradient_clip_val=0.05,
 * algorithm "norm", max_steps=1: after the default configure_gradient_clipping the total norm is 0.05. */
static void test_trainer_auto__clip_by_norm_from_trainer_config(void **state)
{
    (void)state;
    am *m = clip_model();
    em_loader *train = rows_loader(3, 1, 3);
    em_trainer_config cfg = quiet_config(1);
    cfg.max_steps = 1;
    cfg.gradient_clip_val = 0.05;
    cfg.gradient_clip_algorithm = EM_CLIP_NORM;
    em_trainer *t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_int_equal(count(m, "configure_gradient_clipping"), 1);
    assert_close_rel(m->clip_norm, 0.05, 1e-5);
    em_trainer_free(t);
    em_loader_free(train);

    /* the same without the override (the trainer's own default): SGD(lr=1) moves the parameters by exactly
     * the clipped gradient, whose norm is 0.05 */
    em_manual_seed(0);
    em_nn *fresh = em_nn_linear(1, 4, true);
    em_nn_free(m->net);
    m->net = fresh;
    m->base.layers = fresh;
    float before[8], after[8];
    helper_values(em_nn_get(fresh, "weight"), before, 4);
    helper_values(em_nn_get(fresh, "bias"), before + 4, 4);
    em_module_ops ops = am_ops;
    ops.configure_gradient_clipping = NULL;
    m->base.ops = &ops;
    train = rows_loader(3, 1, 3);
    t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    helper_values(em_nn_get(fresh, "weight"), after, 4);
    helper_values(em_nn_get(fresh, "bias"), after + 4, 4);
    double sq = 0;
    for (int i = 0; i < 8; i++)
        sq += (double)(before[i] - after[i]) * (before[i] - after[i]);
    assert_close_rel(sqrt(sq), 0.05, 1e-4);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* trainer/test_trainer.py::test_gradient_clipping_by_value (32-true): gradient_clip_val=1e-10, "value":
 * the largest |g| after clipping is exactly 1e-10 (every gradient is clamped). */
static void test_trainer_auto__clip_by_value_from_trainer_config(void **state)
{
    (void)state;
    am *m = clip_model();
    em_loader *train = rows_loader(3, 1, 3);
    em_trainer_config cfg = quiet_config(1);
    cfg.max_steps = 1;
    cfg.gradient_clip_val = 1e-10;
    cfg.gradient_clip_algorithm = EM_CLIP_VALUE;
    em_trainer *t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_int_equal(count(m, "configure_gradient_clipping"), 1);
    assert_close_rel(m->clip_max_abs, 1e-10, 1e-6);
    double algo[1] = {-1};
    values_of(m, "clip_algo", algo, 1);
    assert_int_equal((int)algo[0], EM_CLIP_VALUE);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* core/test_lightning_module.py::test_lightning_module_configure_gradient_clipping: the hook receives the
 * Trainer's values (1e-4, None) and its own clipping (clamp to [0, 1e-2]) is what the update uses: after fit
 * every gradient is in [0, 1e-2] although the raw ones span -2 .. 1.5. */
static void test_trainer_auto__configure_gradient_clipping_override(void **state)
{
    (void)state;
    am *m = clip_model();
    m->clip_mode = 1;
    em_loader *train = rows_loader(3, 1, 3);
    em_trainer_config cfg = quiet_config(1);
    cfg.limit_train_batches = EM_BATCHES(1);
    cfg.gradient_clip_val = 1e-4;
    em_trainer *t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    double v[1] = {0}, algo[1] = {-1};
    assert_int_equal(values_of(m, "configure_gradient_clipping", v, 1), 1);
    assert_close_rel(v[0], 1e-4, 0);
    values_of(m, "clip_algo", algo, 1);
    assert_int_equal((int)algo[0], EM_CLIP_DEFAULT);
    em_scope_begin();
    for (size_t i = 0; i < em_nn_num_parameters(m->net); i++) {
        em_tensor *g = em_tensor_grad(em_nn_parameter(m->net, i));
        assert_non_null(g);
        assert_true(em_tensor_item(em_min(g)) >= 0.0);
        assert_true(em_tensor_item(em_max(g)) <= 1e-2 + 1e-9);
    }
    assert_ok(em_scope_end());
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

/* core/test_lightning_module.py::test_lightning_module_configure_gradient_clipping_different_argument_values
 * (§6.2, §10 #32): clip_gradients with a value or an algorithm other than the Trainer's fails the fit;
 * passing the Trainer's own value is fine. */
static void test_trainer_auto__clip_gradients_conflicting_arguments_fail(void **state)
{
    (void)state;
    struct {
        double trainer_val;
        em_clip_algorithm trainer_algo;
        double arg_val;
        em_clip_algorithm arg_algo;
        bool ok;
    } cases[] = {
        {1e-4, EM_CLIP_DEFAULT, 1e-5, EM_CLIP_DEFAULT, false},
        {1e-4, EM_CLIP_VALUE, NAN, EM_CLIP_NORM, false},
        {1e-4, EM_CLIP_DEFAULT, 1e-4, EM_CLIP_DEFAULT, true},
        {NAN, EM_CLIP_DEFAULT, 1e-5, EM_CLIP_VALUE, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        am *m = clip_model();
        m->clip_mode = 2;
        m->clip_arg_val = cases[i].arg_val;
        m->clip_arg_algo = cases[i].arg_algo;
        em_loader *train = rows_loader(3, 1, 3);
        em_trainer_config cfg = quiet_config(1);
        cfg.gradient_clip_val = cases[i].trainer_val;
        cfg.gradient_clip_algorithm = cases[i].trainer_algo;
        em_trainer *t = trainer_with(cfg);
        em_status s = em_trainer_fit(t, &m->base, train, NULL);
        if (cases[i].ok) {
            assert_ok(s);
            if (cases[i].arg_algo == EM_CLIP_VALUE)
                assert_close_rel(m->clip_max_abs, cases[i].arg_val, 1e-6);
        } else {
            assert_int_not_equal(s, EM_OK);
            assert_int_equal(m->clip_status, EM_EINVAL);
            assert_non_null(strstr(em_trainer_error(t), "configure_gradient_clipping"));
            assert_non_null(strstr(em_trainer_error(t), "only one of them"));
        }
        em_clear_error();
        em_trainer_free(t);
        em_loader_free(train);
        am_free(m);
    }
}

/* §6.1: a negative gradient_clip_val is accepted and means no clipping (the plugin does nothing for
 * clip_val <= 0): the update is the full gradient, lr * mean(1, 2, 3) = 2. */
static void test_trainer_auto__negative_clip_val_means_no_clipping(void **state)
{
    (void)state;
    am *m = am_new(1.0, 1.0);
    em_loader *train = rows_loader(3, 1, 3); /* one batch of x = 1, 2, 3: grad = mean = 2 */
    em_trainer_config cfg = quiet_config(1);
    cfg.gradient_clip_val = -1.0;
    em_trainer *t = trainer_with(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_close_rel(item_of(weight(m)), 1.0 - 2.0, 1e-6);
    em_trainer_free(t);
    em_loader_free(train);
    am_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define TEST(fn) cmocka_unit_test_setup_teardown(fn, helper_setup, helper_teardown)
        TEST(test_trainer_auto__hook_order_of_fit),
        TEST(test_trainer_auto__accumulation_n5_a2_steps_at_1_3_4),
        TEST(test_trainer_auto__accumulation_n7_a2_steps_at_1_3_5_6),
        TEST(test_trainer_auto__weights_change_only_at_window_ends_and_last_limited_batch),
        TEST(test_trainer_auto__closure_loss_is_divided_by_accumulation),
        TEST(test_trainer_auto__zero_grad_count_is_ceil_n_over_a),
        TEST(test_trainer_auto__optimizer_zero_grad_override_is_honoured),
        TEST(test_trainer_auto__on_before_zero_grad_count_equals_max_steps),
        TEST(test_trainer_auto__backward_counts),
        TEST(test_trainer_auto__training_step_none_still_steps),
        TEST(test_trainer_auto__training_step_none_on_first_batch_counts_a_step),
        TEST(test_trainer_auto__optimizer_step_override_steps_on_even_batches),
        TEST(test_trainer_auto__optimizer_step_override_running_only_the_closure),
        TEST(test_trainer_auto__optimizer_step_override_not_running_closure_fails),
        TEST(test_trainer_auto__optimizer_ignoring_the_closure_fails),
        TEST(test_trainer_auto__log_in_optimizer_step_after_the_step),
        TEST(test_trainer_auto__closure_runs_with_grad_enabled_in_a_no_grad_step),
        TEST(test_trainer_auto__no_optimizer_runs_the_closure),
        TEST(test_trainer_auto__multiple_optimizers_rejected),
        TEST(test_trainer_auto__lbfgs_reruns_the_closure),
        TEST(test_trainer_auto__clip_by_norm_from_trainer_config),
        TEST(test_trainer_auto__clip_by_value_from_trainer_config),
        TEST(test_trainer_auto__configure_gradient_clipping_override),
        TEST(test_trainer_auto__clip_gradients_conflicting_arguments_fail),
        TEST(test_trainer_auto__negative_clip_val_means_no_clipping),
#undef TEST
    };
    return cmocka_run_group_tests_name("trainer_auto", tests, NULL, NULL);
}
