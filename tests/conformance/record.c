/*
 * record.c: what a run records, in the JSON shape of the case's `expected`.
 *
 * How real optimizer steps are observed without distorting the run
 * -----------------------------------------------------------------
 * The module overrides only the hooks the case's LightningModule overrides (kinds.c), plus hooks
 * whose default is a no-op (epoch and train start / end). It leaves on_train_batch_end and
 * configure_gradient_clipping alone unless the behaviour overrides them, so that ember's own
 * defaults run: the default configure_gradient_clipping (em_clip_gradients with the Trainer's
 * values) and a fit without any on_train_batch_end (the trainer then keeps no batch output).
 * Not overriding optimizer_step matters too: Lightning (and ember) warn when
 * GradientAccumulationScheduler meets an overridden optimizer_step.
 *
 * A step is bracketed by rec_step_begin / rec_step_end:
 *   - automatic mode: each built-in optimizer of the case is wrapped in a recording optimizer, a C
 *     optimizer (em_optimizer_new) that the trainer drives in its place (rec_wrap_optimizer). Its
 *     step copies the hyper-parameters the schedulers and hooks set on it to the built-in one, begins
 *     the record, calls the built-in step with a closure that runs the trainer's closure (training
 *     step, backward, on_before_optimizer_step, clipping) and then measures, and ends the record.
 *     It has the built-in optimizer's name, parameter groups and hyper-parameters, so schedulers and
 *     the trainer see what they would see without it.
 *   - manual mode: the kinds bracket each step() / raw step() call they make themselves.
 * A step is "real" when the built-in optimizer's step counter moved (em_optimizer_step_count), which
 * also catches raw steps that Lightning does not count in global_step.
 * Gradients are measured where Lightning exposes them:
 *   - before clipping: in a callback's on_before_optimizer_step (callbacks run before the module's
 *     hook; its first call within a step, for LBFGS that is after the first closure evaluation), or
 *     explicitly by a manual kind right before its own clip_gradients call (that record wins);
 *   - what the update used: automatic mode measures when the trainer's closure returns, after
 *     clipping (first evaluation within a step: LBFGS after the first closure evaluation); manual
 *     mode measures right before a closure-less step() (nothing touches the gradients in between) or
 *     after the first evaluation of its own closure (LBFGS).
 * A statistic over no gradient at all (params_with_grad 0) is written as null, as Lightning's
 * recorder writes it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conformance.h"

static em_trainer *trainer_of(conf_run *r)
{
    em_trainer *t = em_module_trainer(&r->base);
    return t != NULL ? t : r->trainer;
}

void rec_init(conf_run *r)
{
    conf_recorder *rec = &r->rec;
    memset(rec, 0, sizeof *rec);
    rec->root = cJSON_CreateObject();
    rec->calls = cJSON_AddArrayToObject(rec->root, "training_step_calls");
    rec->steps = cJSON_AddArrayToObject(rec->root, "optimizer_steps");
    rec->epochs = cJSON_AddArrayToObject(rec->root, "epochs");
    rec->epoch_ends = cJSON_AddArrayToObject(rec->root, "epoch_ends");
    if (r->p.val_metric != NULL)
        rec->val_calls = cJSON_AddArrayToObject(rec->root, "validation_step_calls");
    if (r->n_es > 0) {
        rec->early_stopping = cJSON_AddArrayToObject(rec->root, "early_stopping");
        for (size_t i = 0; i < r->n_es; i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "callback", r->es[i].callback);
            rec->es_checks[i] = cJSON_AddArrayToObject(e, "checks");
            cJSON_AddItemToArray(rec->early_stopping, e);
        }
    }
    rec->final = cJSON_AddObjectToObject(rec->root, "final");
    /* momentum is recorded when the case has it (OneCycleLR cases) */
    const cJSON *calls = cj_get(r->expected, "training_step_calls");
    const cJSON *c;
    cJSON_ArrayForEach(c, calls)
    {
        if (cj_get(c, "momentum") != NULL)
            rec->want_momentum = true;
    }
}

void rec_free(conf_run *r)
{
    for (int k = 0; k < CONF_MAX_OPTS; k++)
        cJSON_Delete(r->rec.st[k].lr);
    cJSON_Delete(r->rec.root);
    memset(&r->rec, 0, sizeof r->rec);
}

static em_optimizer **wrappers(conf_run *r, size_t *n)
{
    *n = 0;
    em_optimizer **w = em_optimizers(&r->base, n);
    if (w == NULL)
        *n = 0;
    if (*n > CONF_MAX_OPTS)
        *n = CONF_MAX_OPTS;
    return w;
}

int rec_opt_index(conf_run *r, em_optimizer *opt)
{
    size_t n = 0;
    em_optimizer **w = wrappers(r, &n);
    for (size_t i = 0; i < n; i++)
        if (opt == w[i] || opt == em_optimizer_inner(w[i]))
            return (int)i;
    return -1;
}

static em_optimizer *inner(conf_run *r, int k)
{
    size_t n = 0;
    em_optimizer **w = wrappers(r, &n);
    return k >= 0 && (size_t)k < n ? em_optimizer_inner(w[k]) : NULL;
}

/* The optimizer whose step counter tells real steps: the built-in one inside a recording optimizer. */
static em_optimizer *counted(conf_run *r, int k)
{
    if (k >= 0 && k < CONF_MAX_OPTS && r->real_opts[k] != NULL)
        return r->real_opts[k];
    return inner(r, k);
}

static cJSON *lr_groups(em_optimizer *opt)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t g = 0; g < em_optimizer_num_groups(opt); g++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(em_optimizer_lr(opt, g)));
    return a;
}

cJSON *rec_lr_all(conf_run *r)
{
    cJSON *all = cJSON_CreateArray();
    size_t n = 0;
    em_optimizer **w = wrappers(r, &n);
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(all, lr_groups(em_optimizer_inner(w[i])));
    return all;
}

/* SGD / RMSprop: "momentum"; Adam / AdamW: [beta1, beta2] (what OneCycleLR cycles). */
static cJSON *momentum_all(conf_run *r)
{
    cJSON *all = cJSON_CreateArray();
    size_t n = 0;
    em_optimizer **w = wrappers(r, &n);
    for (size_t i = 0; i < n; i++) {
        em_optimizer *o = em_optimizer_inner(w[i]);
        cJSON *groups = cJSON_CreateArray();
        bool betas = strncmp(em_optimizer_name(o), "Adam", 4) == 0;
        for (size_t g = 0; g < em_optimizer_num_groups(o); g++) {
            double b1 = NAN, b2 = NAN;
            if (betas) {
                em_optimizer_get(o, g, "beta1", &b1);
                em_optimizer_get(o, g, "beta2", &b2);
                cJSON *pair = cJSON_CreateArray();
                cJSON_AddItemToArray(pair, cJSON_CreateNumber(b1));
                cJSON_AddItemToArray(pair, cJSON_CreateNumber(b2));
                cJSON_AddItemToArray(groups, pair);
            } else {
                em_optimizer_get(o, g, "momentum", &b1);
                cJSON_AddItemToArray(groups, cJSON_CreateNumber(b1));
            }
        }
        cJSON_AddItemToArray(all, groups);
    }
    em_clear_error(); /* an optimizer without momentum just records NaN */
    return all;
}

static cJSON *callback_metrics(conf_run *r)
{
    em_trainer *t = trainer_of(r);
    cJSON *o = cJSON_CreateObject();
    size_t n = em_trainer_num_callback_metrics(t);
    for (size_t i = 0; i < n; i++) {
        double v = NAN;
        const char *name = em_trainer_callback_metric_at(t, i, &v);
        if (name != NULL)
            cJSON_AddNumberToObject(o, name, v);
    }
    return o;
}

void rec_training_step(conf_run *r, int64_t batch_idx, double loss, const char *const *loss_names,
                       const double *losses, size_t n_losses)
{
    em_trainer *t = trainer_of(r);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "epoch", (double)em_trainer_current_epoch(t));
    cJSON_AddNumberToObject(e, "batch_idx", (double)batch_idx);
    cJSON_AddNumberToObject(e, "global_step", (double)em_trainer_global_step(t));
    cJSON_AddNumberToObject(e, "loss", loss);
    if (n_losses > 0) {
        cJSON *l = cJSON_AddObjectToObject(e, "losses");
        for (size_t i = 0; i < n_losses; i++)
            cJSON_AddNumberToObject(l, loss_names[i], losses[i]);
    }
    cJSON_AddItemToObject(e, "lr", rec_lr_all(r));
    if (r->rec.want_momentum)
        cJSON_AddItemToObject(e, "momentum", momentum_all(r));
    cJSON_AddItemToArray(r->rec.calls, e);
}

void rec_validation_step(conf_run *r, int64_t batch_idx, double loss)
{
    em_trainer *t = trainer_of(r);
    if (r->rec.val_calls == NULL)
        r->rec.val_calls = cJSON_AddArrayToObject(r->rec.root, "validation_step_calls");
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "epoch", (double)em_trainer_current_epoch(t));
    cJSON_AddNumberToObject(e, "batch_idx", (double)batch_idx);
    cJSON_AddNumberToObject(e, "global_step", (double)em_trainer_global_step(t));
    cJSON_AddNumberToObject(e, "loss", loss);
    cJSON_AddItemToArray(r->rec.val_calls, e);
}

void rec_epoch_start(conf_run *r)
{
    em_trainer *t = trainer_of(r);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "epoch", (double)em_trainer_current_epoch(t));
    cJSON_AddNumberToObject(e, "global_step", (double)em_trainer_global_step(t));
    cJSON_AddNumberToObject(e, "accumulate_grad_batches", (double)em_trainer_accumulate_grad_batches(t));
    cJSON_AddItemToObject(e, "lr", rec_lr_all(r));
    cJSON_AddItemToArray(r->rec.epochs, e);
}

void rec_epoch_end(conf_run *r)
{
    em_trainer *t = trainer_of(r);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "epoch", (double)em_trainer_current_epoch(t));
    cJSON_AddNumberToObject(e, "global_step", (double)em_trainer_global_step(t));
    cJSON_AddItemToObject(e, "lr", rec_lr_all(r));
    cJSON_AddItemToObject(e, "callback_metrics", callback_metrics(r));
    cJSON_AddItemToArray(r->rec.epoch_ends, e);
}

static void set_final(conf_run *r, const char *key, cJSON *v)
{
    if (cj_get(r->rec.final, key) != NULL)
        cJSON_ReplaceItemInObjectCaseSensitive(r->rec.final, key, v);
    else
        cJSON_AddItemToObject(r->rec.final, key, v);
}

void rec_train_start(conf_run *r)
{
    if (r->automatic) /* Lightning: trainer.estimated_stepping_batches read at on_train_start */
        set_final(r, "estimated_stepping_batches",
                  cJSON_CreateNumber(em_trainer_estimated_stepping_batches(trainer_of(r))));
}

void rec_train_or_fit_end(conf_run *r)
{
    size_t n = 0;
    em_optimizer **w = wrappers(r, &n);
    if (w == NULL || n == 0)
        return; /* the optimizers are gone: keep what on_train_end recorded */
    cJSON *counts = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(counts, cJSON_CreateNumber((double)em_optimizer_step_count(counted(r, (int)i))));
    set_final(r, "optimizer_step_counts", counts);
    set_final(r, "lr", rec_lr_all(r));
}

/* best_score: a float32 value, null while it is the initial +inf / -inf */
static cJSON *score_json(double v)
{
    return isinf(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v);
}

void rec_early_stopping_check(void *user, const em_early_stopping_check *check)
{
    struct conf_es *es = user;
    cJSON *list = es->run->rec.es_checks[es->index];
    if (list == NULL)
        return;
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "epoch", (double)check->epoch);
    cJSON_AddNumberToObject(c, "global_step", (double)check->global_step);
    cJSON_AddStringToObject(c, "hook", check->hook);
    cJSON_AddNumberToObject(c, "value", (double)check->value);
    cJSON_AddBoolToObject(c, "should_stop", check->should_stop);
    cJSON_AddNumberToObject(c, "wait_count", (double)check->wait_count);
    cJSON_AddItemToObject(c, "best_score", score_json((double)check->best_score));
    cJSON_AddItemToArray(list, c);
}

/* The EarlyStopping callbacks' attributes after fit, before their checks (the case's key order). */
static void rec_early_stopping_final(conf_run *r)
{
    if (r->rec.early_stopping == NULL)
        return;
    size_t i = 0;
    cJSON *e;
    cJSON_ArrayForEach(e, r->rec.early_stopping)
    {
        const em_callback *cb = r->es[i++].cb;
        cJSON *checks = cJSON_DetachItemFromObjectCaseSensitive(e, "checks");
        cJSON_AddNumberToObject(e, "stopped_epoch", (double)em_early_stopping_stopped_epoch(cb));
        cJSON_AddNumberToObject(e, "wait_count", (double)em_early_stopping_wait_count(cb));
        cJSON_AddItemToObject(e, "best_score", score_json(em_early_stopping_best_score(cb)));
        cJSON_AddItemToObject(e, "checks", checks);
    }
}

void rec_after_fit(conf_run *r)
{
    em_trainer *t = r->trainer;
    set_final(r, "global_step", cJSON_CreateNumber((double)em_trainer_global_step(t)));
    set_final(r, "current_epoch", cJSON_CreateNumber((double)em_trainer_current_epoch(t)));
    if (r->n_es > 0) /* only the cases with an EarlyStopping callback record it */
        set_final(r, "should_stop", cJSON_CreateBool(em_trainer_should_stop(t)));
    rec_early_stopping_final(r);
    cJSON *weights = cJSON_CreateObject();
    for (size_t i = 0; i < em_nn_num_parameters(r->root); i++) {
        em_tensor *p = em_nn_parameter(r->root, i);
        int64_t shape[EM_MAX_DIMS];
        int nd = em_tensor_shape(p, shape, EM_MAX_DIMS);
        int64_t numel = em_tensor_numel(p);
        cJSON *w = cJSON_CreateObject();
        cJSON *s = cJSON_AddArrayToObject(w, "shape");
        for (int d = 0; d < nd; d++)
            cJSON_AddItemToArray(s, cJSON_CreateNumber((double)shape[d]));
        cJSON *vals = cJSON_AddArrayToObject(w, "values");
        float *buf = numel > 0 ? malloc((size_t)numel * sizeof *buf) : NULL;
        if (buf != NULL && em_tensor_copy_to(p, buf, (size_t)numel * sizeof *buf, EM_F32) == EM_OK)
            for (int64_t k = 0; k < numel; k++)
                cJSON_AddItemToArray(vals, cJSON_CreateNumber((double)buf[k]));
        free(buf);
        cJSON_AddItemToObject(weights, em_nn_parameter_name(r->root, i), w);
    }
    set_final(r, "weights", weights);
    cJSON *cm = callback_metrics(r);
    if (cm->child != NULL)
        set_final(r, "callback_metrics", cm);
    else
        cJSON_Delete(cm);
}

/* ---- gradients and steps --------------------------------------------------------------------------------- */

/* 2-norm of the per-parameter 2-norms (torch.nn.utils.clip_grad_norm_'s total norm), max |g|, and how
 * many parameters have a gradient, over optimizer k's parameters. */
static conf_grads grad_stats(conf_run *r, int k)
{
    conf_grads g = {.have = true, .norm = 0, .max_abs = 0, .with_grad = 0};
    em_optimizer *o = inner(r, k);
    if (o == NULL)
        return (conf_grads){0};
    size_t total = 0;
    for (size_t gi = 0; gi < em_optimizer_num_groups(o); gi++)
        total += em_params_size(em_optimizer_group_params(o, gi));
    em_tensor **norms = calloc(total + 1, sizeof *norms);
    if (norms == NULL)
        return (conf_grads){0};
    em_scope_begin();
    em_no_grad_begin();
    size_t n = 0;
    for (size_t gi = 0; gi < em_optimizer_num_groups(o); gi++) {
        const em_params *ps = em_optimizer_group_params(o, gi);
        for (size_t i = 0; i < em_params_size(ps); i++) {
            em_tensor *grad = em_tensor_grad(em_params_get(ps, i));
            if (grad == NULL)
                continue;
            g.with_grad++;
            norms[n++] = em_norm(grad, 2.0);
            double m = em_tensor_item(em_norm(grad, INFINITY));
            if (m > g.max_abs || isnan(m))
                g.max_abs = m;
        }
    }
    if (n > 0)
        g.norm = em_tensor_item(em_norm(em_stack(norms, n, 0), 2.0));
    em_no_grad_end();
    em_scope_end();
    free(norms);
    return g;
}

void rec_pre_clip(conf_run *r, int k, bool explicit_record)
{
    if (k < 0 || k >= CONF_MAX_OPTS)
        return;
    conf_step_state *st = &r->rec.st[k];
    if (explicit_record) {
        r->rec.pending_pre[k] = grad_stats(r, k);
        return;
    }
    if (st->active) {
        if (!st->pre.have)
            st->pre = grad_stats(r, k);
    } else if (r->automatic) {
        /* the closure alone (an optimizer_step override that does not step): no step to record */
    } else if (!r->rec.pending_pre[k].have) {
        r->rec.pending_pre[k] = grad_stats(r, k);
    }
}

void rec_post_clip(conf_run *r, int k)
{
    if (k < 0 || k >= CONF_MAX_OPTS)
        return;
    conf_step_state *st = &r->rec.st[k];
    if (st->active && !st->post.have)
        st->post = grad_stats(r, k);
}

void rec_step_begin(conf_run *r, int k)
{
    if (k < 0 || k >= CONF_MAX_OPTS)
        return;
    em_trainer *t = trainer_of(r);
    conf_step_state *st = &r->rec.st[k];
    cJSON_Delete(st->lr);
    em_optimizer *o = inner(r, k);
    *st = (conf_step_state){
        .active = true,
        .count_before = em_optimizer_step_count(counted(r, k)),
        .global_step_before = em_trainer_global_step(t),
        .epoch = em_trainer_current_epoch(t),
        .batch_idx = em_trainer_batch_idx(t),
        .lr = lr_groups(o),
    };
    /* a pre-clip record made before the step call (manual clipping) belongs to this step */
    if (r->rec.pending_pre[k].have) {
        st->pre = r->rec.pending_pre[k];
        st->pre_explicit = true;
        r->rec.pending_pre[k] = (conf_grads){0};
    }
}

/* A norm or max over no gradient at all is undefined: null, as Lightning's recorder writes it (not 0,
 * which would equal a step whose gradients are all zero tensors). */
static void add_grad_stat(cJSON *e, const char *key, const conf_grads *g, double v)
{
    if (g->with_grad == 0)
        cJSON_AddNullToObject(e, key);
    else
        cJSON_AddNumberToObject(e, key, v);
}

void rec_step_end(conf_run *r, int k)
{
    if (k < 0 || k >= CONF_MAX_OPTS)
        return;
    conf_step_state *st = &r->rec.st[k];
    if (!st->active)
        return;
    int64_t count = em_optimizer_step_count(counted(r, k));
    if (count > st->count_before) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "optimizer", k);
        cJSON_AddNumberToObject(e, "epoch", (double)st->epoch);
        cJSON_AddNumberToObject(e, "batch_idx", (double)st->batch_idx);
        cJSON_AddNumberToObject(e, "global_step_before", (double)st->global_step_before);
        cJSON_AddNumberToObject(e, "step_count", (double)count);
        cJSON_AddItemToObject(e, "lr", st->lr);
        st->lr = NULL;
        if (st->pre.have) {
            add_grad_stat(e, "grad_norm_before_clip", &st->pre, st->pre.norm);
            add_grad_stat(e, "grad_max_abs_before_clip", &st->pre, st->pre.max_abs);
        }
        if (st->post.have) {
            add_grad_stat(e, "grad_norm", &st->post, st->post.norm);
            add_grad_stat(e, "grad_max_abs", &st->post, st->post.max_abs);
            cJSON_AddNumberToObject(e, "params_with_grad", (double)st->post.with_grad);
        }
        cJSON_AddItemToArray(r->rec.steps, e);
    }
    cJSON_Delete(st->lr);
    *st = (conf_step_state){0};
}

void rec_flush_steps(conf_run *r)
{
    for (int k = 0; k < CONF_MAX_OPTS; k++)
        rec_step_end(r, k);
}

/* ---- the recording optimizer (automatic mode) ------------------------------------------------------- */

/* every hyper-parameter name em_optimizer_get knows (include/ember/optim.h) */
static const char *const hp_names[] = {"lr", "momentum", "dampening", "weight_decay", "nesterov", "beta1",
                                       "beta2", "eps", "amsgrad", "alpha", "centered", "lr_decay",
                                       "initial_accumulator_value", "maximize", "max_iter", "max_eval",
                                       "tolerance_grad", "tolerance_change", "history_size"};
#define N_HP (sizeof hp_names / sizeof hp_names[0])

typedef struct rec_opt {
    conf_run *r;
    int k;
    em_optimizer *inner;     /* owned: the built-in optimizer that makes the update */
    bool has[N_HP];          /* which hyper-parameters the built-in optimizer has */
    const em_closure *given; /* the trainer's closure, during a step */
} rec_opt;

static void rec_opt_destroy(void *state)
{
    rec_opt *o = state;
    if (o == NULL)
        return;
    if (o->r->real_opts[o->k] == o->inner)
        o->r->real_opts[o->k] = NULL;
    em_optimizer_free(o->inner);
    free(o);
}

/* Copy the hyper-parameters `from` has (per group) to `to` where they differ. */
static em_status copy_hparams(const rec_opt *o, em_optimizer *from, em_optimizer *to)
{
    for (size_t g = 0; g < em_optimizer_num_groups(from); g++) {
        for (size_t i = 0; i < N_HP; i++) {
            double want = NAN, have = NAN;
            if (!o->has[i])
                continue;
            em_status s = em_optimizer_get(from, g, hp_names[i], &want);
            if (s != EM_OK)
                return s;
            if (em_optimizer_get(to, g, hp_names[i], &have) == EM_OK && have == want)
                continue;
            em_clear_error(); /* `to` is the new C optimizer that does not have it yet */
            if ((s = em_optimizer_set(to, g, hp_names[i], want)) != EM_OK)
                return s;
        }
    }
    return EM_OK;
}

/* The built-in step's closure: the trainer's closure (which ends with clipping), then a measurement. */
static em_tensor *measuring_closure(void *ctx)
{
    rec_opt *o = ctx;
    em_tensor *loss = o->given->fn(o->given->ctx);
    if (loss != NULL || em_last_status() == EM_OK) /* a loss, or None: the gradients are final */
        rec_post_clip(o->r, o->k);
    return loss;
}

static em_status rec_opt_step(em_optimizer *self, const em_closure *closure)
{
    rec_opt *o = em_optimizer_state(self);
    em_status s = copy_hparams(o, self, o->inner); /* what schedulers and hooks set on the wrapper */
    if (s != EM_OK)
        return s;
    rec_step_begin(o->r, o->k);
    if (closure == NULL) {
        rec_post_clip(o->r, o->k);
        s = em_optimizer_step(o->inner, NULL);
    } else {
        const em_closure *outer = o->given;
        o->given = closure;
        em_closure c = {.fn = measuring_closure, .ctx = o};
        s = em_optimizer_step(o->inner, &c);
        o->given = outer;
    }
    rec_step_end(o->r, o->k);
    return s;
}

#define REC_OPS(n) {.version = EM_OPTIMIZER_OPS_VERSION, .name = n, .step = rec_opt_step, .destroy = rec_opt_destroy}
static const em_optimizer_ops rec_ops[] = {REC_OPS("SGD"),     REC_OPS("Adam"),    REC_OPS("AdamW"),
                                           REC_OPS("RMSprop"), REC_OPS("Adagrad"), REC_OPS("LBFGS")};
static const em_optimizer_ops rec_ops_other = REC_OPS("Optimizer");

em_optimizer *rec_wrap_optimizer(conf_run *r, em_optimizer *inner, int k)
{
    rec_opt *o = calloc(1, sizeof *o);
    if (o == NULL || k < 0 || k >= CONF_MAX_OPTS) {
        free(o);
        em_optimizer_free(inner);
        conf_fail(r, "rec_wrap_optimizer: out of memory or optimizer index %d out of range", k);
        return NULL;
    }
    *o = (rec_opt){.r = r, .k = k, .inner = inner};
    const em_optimizer_ops *ops = &rec_ops_other;
    for (size_t i = 0; i < sizeof rec_ops / sizeof rec_ops[0]; i++)
        if (strcmp(rec_ops[i].name, em_optimizer_name(inner)) == 0)
            ops = &rec_ops[i];
    for (size_t i = 0; i < N_HP; i++) {
        double v = NAN;
        o->has[i] = em_optimizer_get(inner, 0, hp_names[i], &v) == EM_OK;
    }
    em_clear_error(); /* the names the optimizer does not have */
    em_optimizer *w = em_optimizer_new(ops, em_optimizer_group_params(inner, 0), em_optimizer_lr(inner, 0), o);
    if (w == NULL) { /* the destroy freed o and inner */
        conf_fail(r, "em_optimizer_new (recording optimizer %d) failed: %s", k, em_last_error());
        return NULL;
    }
    em_status s = EM_OK;
    for (size_t g = 1; g < em_optimizer_num_groups(inner) && s == EM_OK; g++)
        s = em_optimizer_add_param_group(w, em_optimizer_group_params(inner, g));
    if (s == EM_OK)
        s = copy_hparams(o, inner, w);
    if (s != EM_OK) {
        conf_fail(r, "recording optimizer %d: %s", k, em_last_error());
        em_optimizer_free(w);
        return NULL;
    }
    r->real_opts[k] = inner;
    return w;
}

static em_status cb_before_optimizer_step(em_callback *cb, em_trainer *t, em_module *m, em_optimizer *opt)
{
    (void)cb;
    (void)t;
    conf_run *r = (conf_run *)m;
    rec_pre_clip(r, rec_opt_index(r, opt), false);
    return EM_OK;
}

static const em_callback_ops rec_callback_ops = {
    .version = EM_CALLBACK_OPS_VERSION,
    .on_before_optimizer_step = cb_before_optimizer_step,
};

em_callback *rec_callback(conf_run *r)
{
    (void)r;
    return em_callback_new(&rec_callback_ops, NULL);
}
