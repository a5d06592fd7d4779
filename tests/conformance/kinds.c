/*
 * kinds.c: the behaviour kinds of README "Behaviours", each implemented once and parameterised by
 * the case's `behaviour` object: training_step, validation_step and the hooks the kind overrides.
 *
 * Every kind also gets the recording hooks (record.c explains why they leave the run unchanged):
 * on_train_start / on_train_epoch_start / on_train_epoch_end / on_train_end / on_fit_end (all no-ops
 * by default). Every other hook keeps ember's default unless the kind overrides it: the gradients are
 * measured by a callback (before clipping) and by the recording optimizers (after), not by hooks.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conformance.h"

static conf_run *run_of(em_module *m)
{
    return (conf_run *)m;
}

static em_optimizer *wrapper(conf_run *r, size_t k)
{
    size_t n = 0;
    em_optimizer **w = em_optimizers(&r->base, &n);
    if (w == NULL || k >= n) {
        conf_fail_cb(r, "behaviour %s needs optimizer %zu, configure_optimizers made %zu", r->kind->name, k, n);
        return NULL;
    }
    return w[k];
}

static em_scheduler *scheduler(conf_run *r, size_t i)
{
    size_t n = 0;
    em_scheduler **s = em_lr_schedulers(&r->base, &n);
    if (s == NULL || i >= n) {
        conf_fail_cb(r, "scheduler step rule names lr_schedulers[%zu], the trainer has %zu", i, n);
        return NULL;
    }
    return s[i];
}

/* loss(net(x), y) of the net named "net"; owned by the batch's scope */
static em_tensor *net_loss(conf_run *r, const em_batch *b)
{
    em_nn *net = conf_net(r, "net");
    if (net == NULL) {
        conf_fail_cb(r, "%s", r->why);
        return NULL;
    }
    if (b->n < 2) {
        conf_fail_cb(r, "a batch holds %zu tensors, (x, y) expected", b->n);
        return NULL;
    }
    return conf_loss_fn(r, em_nn_forward(net, b->t[0]), b->t[1]);
}

/* ---- hooks shared by every kind (recording only) --------------------------------------------------- */

static em_status on_train_start(em_module *m)
{
    rec_train_start(run_of(m));
    return EM_OK;
}

static em_status on_train_epoch_start(em_module *m)
{
    rec_epoch_start(run_of(m));
    return EM_OK;
}

static em_status on_train_end(em_module *m)
{
    rec_flush_steps(run_of(m));
    rec_train_or_fit_end(run_of(m));
    return EM_OK;
}

/* the manual kinds' epoch_end_metric rules (README: in on_train_epoch_end, after the epoch_ends entry) */
static em_status epoch_end_rules(conf_run *r)
{
    em_trainer *t = em_module_trainer(&r->base);
    for (size_t i = 0; i < r->p.n_sched_rules; i++) {
        const conf_sched_rule *rule = &r->p.sched_rules[i];
        if (rule->when != WHEN_EPOCH_END_METRIC)
            continue;
        double v = NAN;
        if (!em_trainer_callback_metric(t, rule->metric, &v))
            return conf_fail_cb(r, "epoch_end_metric: callback_metrics has no \"%s\"", rule->metric);
        em_scheduler *s = scheduler(r, rule->scheduler);
        if (s == NULL)
            return EM_EUSER;
        em_status rc = em_scheduler_step_metric(s, v);
        if (rc != EM_OK)
            return rc;
    }
    return EM_OK;
}

static em_status on_train_epoch_end(em_module *m)
{
    conf_run *r = run_of(m);
    rec_flush_steps(r);
    rec_epoch_end(r);
    return r->automatic ? EM_OK : epoch_end_rules(r);
}

static void install_common(em_module_ops *ops)
{
    ops->on_train_start = on_train_start;
    ops->on_train_epoch_start = on_train_epoch_start;
    ops->on_train_epoch_end = on_train_epoch_end;
    ops->on_train_end = on_train_end;
    ops->on_fit_end = on_train_end;
}

/* ---- parameter parsing helpers ----------------------------------------------------------------------- */

static bool parse_clip_algorithm(conf_run *r, const cJSON *obj, const char *where, em_clip_algorithm *out)
{
    const char *a = NULL;
    if (!cj_req_string(r, obj, "algorithm", where, &a))
        return false;
    if (strcmp(a, "norm") == 0)
        *out = EM_CLIP_NORM;
    else if (strcmp(a, "value") == 0)
        *out = EM_CLIP_VALUE;
    else
        return conf_fail(r, "%s.algorithm must be \"norm\" or \"value\" (got \"%s\")", where, a);
    return true;
}

static bool parse_sched_rules(conf_run *r, const cJSON *b, bool allow_epoch_end)
{
    const cJSON *list = NULL;
    if (!cj_req_array(r, b, "scheduler_steps", "behaviour", &list))
        return false;
    size_t n = (size_t)cJSON_GetArraySize(list);
    r->p.sched_rules = calloc(n + 1, sizeof *r->p.sched_rules);
    if (r->p.sched_rules == NULL)
        return conf_fail(r, "out of memory");
    const cJSON *lrs = cj_get(r->doc, "lr_schedulers");
    size_t n_scheds = cJSON_IsArray(lrs) ? (size_t)cJSON_GetArraySize(lrs) : 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, list)
    {
        char where[64];
        snprintf(where, sizeof where, "behaviour.scheduler_steps[%zu]", r->p.n_sched_rules);
        conf_sched_rule *rule = &r->p.sched_rules[r->p.n_sched_rules];
        const char *when = NULL;
        int64_t si = 0;
        if (!cj_req_int(r, e, "scheduler", where, &si) || !cj_req_string(r, e, "when", where, &when))
            return false;
        if (si < 0 || (size_t)si >= n_scheds)
            return conf_fail(r, "%s.scheduler %lld is not an index of lr_schedulers (%zu)", where, (long long)si,
                             n_scheds);
        rule->scheduler = (size_t)si;
        if (strcmp(when, "every_n_batches") == 0 || strcmp(when, "last_batch_every_n_epochs") == 0) {
            static const char *const keys[] = {"scheduler", "when", "n", NULL};
            rule->when = when[0] == 'e' ? WHEN_EVERY_N_BATCHES : WHEN_LAST_BATCH_EVERY_N_EPOCHS;
            if (!cj_keys(r, e, where, keys) || !cj_req_int(r, e, "n", where, &rule->n))
                return false;
            if (rule->n < 1)
                return conf_fail(r, "%s.n must be >= 1", where);
        } else if (strcmp(when, "epoch_end_metric") == 0 && allow_epoch_end) {
            static const char *const keys[] = {"scheduler", "when", "metric", NULL};
            rule->when = WHEN_EPOCH_END_METRIC;
            if (!cj_keys(r, e, where, keys) || !cj_req_string(r, e, "metric", where, &rule->metric))
                return false;
        } else {
            return conf_fail(r, "%s.when \"%s\" is not supported by behaviour %s", where, when, r->kind->name);
        }
        r->p.n_sched_rules++;
    }
    return true;
}

/* the kinds' scheduler point: every_n_batches and last_batch_every_n_epochs rules, in list order */
static em_status scheduler_point(conf_run *r, int64_t batch_idx)
{
    em_trainer *t = em_module_trainer(&r->base);
    for (size_t i = 0; i < r->p.n_sched_rules; i++) {
        const conf_sched_rule *rule = &r->p.sched_rules[i];
        bool fire = false;
        if (rule->when == WHEN_EVERY_N_BATCHES)
            fire = (batch_idx + 1) % rule->n == 0;
        else if (rule->when == WHEN_LAST_BATCH_EVERY_N_EPOCHS)
            fire = em_trainer_is_last_batch(t) && (em_trainer_current_epoch(t) + 1) % rule->n == 0;
        if (!fire)
            continue;
        em_scheduler *s = scheduler(r, rule->scheduler);
        if (s == NULL)
            return EM_EUSER;
        em_status rc = em_scheduler_step(s);
        if (rc != EM_OK)
            return rc;
    }
    return EM_OK;
}

/* a step() call of a manual kind: through the Lightning optimizer, or on the raw torch optimizer */
static em_status manual_step(conf_run *r, size_t k, bool raw, const em_closure *closure)
{
    em_optimizer *w = wrapper(r, k);
    if (w == NULL)
        return EM_EUSER;
    rec_step_begin(r, (int)k);
    if (closure == NULL)
        rec_post_clip(r, (int)k); /* nothing changes the gradients between here and the update */
    em_status s = em_optimizer_step(raw ? em_optimizer_inner(w) : w, closure);
    rec_step_end(r, (int)k);
    return s;
}

static bool need_net(conf_run *r, const char *name)
{
    return conf_net(r, name) != NULL;
}

/* ---- auto_basic ----------------------------------------------------------------------------------------- */

/* the common automatic training_step: loss = loss(net(x), y); record(loss); return loss */
static em_tensor *auto_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    conf_run *r = run_of(m);
    em_tensor *loss = net_loss(r, b);
    if (loss == NULL)
        return NULL;
    rec_training_step(r, batch_idx, em_tensor_item(loss), NULL, NULL, 0);
    return loss;
}

static em_status auto_validation_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    conf_run *r = run_of(m);
    em_tensor *loss = net_loss(r, b);
    if (loss == NULL)
        return em_last_status() != EM_OK ? em_last_status() : EM_EUSER;
    rec_validation_step(r, batch_idx, em_tensor_item(loss));
    return em_log_tensor(m, r->p.val_metric, loss, 0); /* validation defaults: epoch mean by batch size */
}

static bool auto_basic_parse(conf_run *r, const cJSON *b)
{
    static const char *const keys[] = {"kind", "val_metric", NULL};
    if (!cj_keys(r, b, "behaviour", keys) ||
        !cj_req_string_or_null(r, b, "val_metric", "behaviour", &r->p.val_metric) || !need_net(r, "net"))
        return false;
    const cJSON *data = cj_get(r->doc, "data");
    if (r->p.val_metric != NULL && cj_is_null_or_absent(data, "val"))
        return conf_fail(r, "behaviour auto_basic with val_metric \"%s\" needs data.val", r->p.val_metric);
    if (r->p.val_metric == NULL && !cj_is_null_or_absent(data, "val"))
        return conf_fail(r, "data.val is given but behaviour auto_basic has no val_metric (no validation_step)");
    return true;
}

static void auto_basic_install(conf_run *r, em_module_ops *ops)
{
    ops->training_step = auto_training_step;
    if (r->p.val_metric != NULL)
        ops->validation_step = auto_validation_step;
}

/* ---- auto_skip ---------------------------------------------------------------------------------------------- */

static em_tensor *auto_skip_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    conf_run *r = run_of(m);
    em_tensor *loss = auto_training_step(m, b, batch_idx);
    if (loss == NULL)
        return NULL;
    return conf_rule_match(&r->p.return_none_when, batch_idx) ? NULL : loss; /* NULL, no error: None */
}

static em_status zero_grad_set_to_none(em_module *m, int64_t epoch, int64_t batch_idx, em_optimizer *opt)
{
    (void)m;
    (void)epoch;
    (void)batch_idx;
    return em_optimizer_zero_grad_ex(opt, true);
}

static bool auto_skip_parse(conf_run *r, const cJSON *b)
{
    static const char *const keys[] = {"kind", "return_none_when", "zero_grad_set_to_none", NULL};
    return cj_keys(r, b, "behaviour", keys) &&
           cj_rule(r, cj_get(b, "return_none_when"), "behaviour.return_none_when", &r->p.return_none_when) &&
           cj_req_bool(r, b, "zero_grad_set_to_none", "behaviour", &r->p.skip_zero_grad_set_to_none) &&
           need_net(r, "net");
}

static void auto_skip_install(conf_run *r, em_module_ops *ops)
{
    ops->training_step = auto_skip_training_step;
    if (r->p.skip_zero_grad_set_to_none)
        ops->optimizer_zero_grad = zero_grad_set_to_none;
}

/* ---- auto_clip_by_epoch ------------------------------------------------------------------------------------ */

static em_status clip_by_epoch(em_module *m, em_optimizer *opt, double clip_val, em_clip_algorithm algo)
{
    (void)clip_val; /* Lightning passes None: the Trainer has no gradient_clip_val */
    (void)algo;
    conf_run *r = run_of(m);
    double e1 = (double)(em_trainer_current_epoch(em_module_trainer(m)) + 1);
    double v = r->p.clip_times ? r->p.clip_coefficient * e1 : r->p.clip_coefficient / e1;
    return em_clip_gradients(m, opt, v, r->p.clip_algorithm);
}

static bool auto_clip_by_epoch_parse(conf_run *r, const cJSON *b)
{
    static const char *const keys[] = {"kind", "algorithm", "formula", "coefficient", NULL};
    const char *formula = NULL;
    if (!cj_keys(r, b, "behaviour", keys) || !parse_clip_algorithm(r, b, "behaviour", &r->p.clip_algorithm) ||
        !cj_req_string(r, b, "formula", "behaviour", &formula) ||
        !cj_req_number(r, b, "coefficient", "behaviour", &r->p.clip_coefficient) || !need_net(r, "net"))
        return false;
    if (strcmp(formula, "times_epoch_plus_1") == 0)
        r->p.clip_times = true;
    else if (strcmp(formula, "over_epoch_plus_1") == 0)
        r->p.clip_times = false;
    else
        return conf_fail(r, "behaviour.formula \"%s\" is unknown (times_epoch_plus_1, over_epoch_plus_1)", formula);
    return true;
}

static void auto_clip_by_epoch_install(conf_run *r, em_module_ops *ops)
{
    (void)r;
    ops->training_step = auto_training_step;
    ops->configure_gradient_clipping = clip_by_epoch;
}

/* ---- auto_optimizer_step_hook ------------------------------------------------------------------------------- */

static em_status hook_optimizer_step(em_module *m, int64_t epoch, int64_t batch_idx, em_optimizer *opt,
                                     const em_closure *closure)
{
    (void)epoch;
    conf_run *r = run_of(m);
    /* a real step, or the closure alone (training_step, zero_grad hook, backward; no update) */
    em_status s = conf_rule_match(&r->p.step_when, batch_idx) ? em_optimizer_step(opt, closure)
                                                              : em_closure_call(closure, NULL);
    if (s != EM_OK)
        return s;
    if (r->p.has_warmup) {
        int64_t gs = em_trainer_global_step(em_module_trainer(m)); /* not yet incremented for this batch */
        if (gs < r->p.warmup_steps) {
            double scale = fmin(1.0, (double)(gs + 1) / (double)r->p.warmup_steps);
            for (size_t g = 0; g < em_optimizer_num_groups(opt); g++)
                if ((s = em_optimizer_set_lr(opt, g, scale * r->p.warmup_base_lr)) != EM_OK)
                    return s;
        }
    }
    return EM_OK;
}

static em_status hook_zero_grad(em_module *m, int64_t epoch, int64_t batch_idx, em_optimizer *opt)
{
    (void)epoch;
    conf_run *r = run_of(m);
    if (!conf_rule_match(&r->p.zero_grad_when, batch_idx))
        return EM_OK; /* the gradients of this batch add to the previous ones */
    return em_optimizer_zero_grad_ex(opt, r->p.zero_grad_set_to_none);
}

static bool auto_optimizer_step_hook_parse(conf_run *r, const cJSON *b)
{
    static const char *const keys[] = {"kind", "step_when", "warmup", "zero_grad", NULL};
    if (!cj_keys(r, b, "behaviour", keys) ||
        !cj_rule(r, cj_get(b, "step_when"), "behaviour.step_when", &r->p.step_when) || !need_net(r, "net"))
        return false;
    if (cj_get(b, "warmup") == NULL || cj_get(b, "zero_grad") == NULL)
        return conf_fail(r, "behaviour auto_optimizer_step_hook needs warmup and zero_grad (null or an object)");
    if (!cj_is_null_or_absent(b, "warmup")) {
        const cJSON *w = cj_get(b, "warmup");
        static const char *const wkeys[] = {"steps", "base_lr", NULL};
        r->p.has_warmup = true;
        if (!cj_keys(r, w, "behaviour.warmup", wkeys) ||
            !cj_req_int(r, w, "steps", "behaviour.warmup", &r->p.warmup_steps) ||
            !cj_req_number(r, w, "base_lr", "behaviour.warmup", &r->p.warmup_base_lr))
            return false;
        if (r->p.warmup_steps < 1)
            return conf_fail(r, "behaviour.warmup.steps must be >= 1");
    }
    if (!cj_is_null_or_absent(b, "zero_grad")) {
        const cJSON *z = cj_get(b, "zero_grad");
        static const char *const zkeys[] = {"when", "set_to_none", NULL};
        r->p.has_zero_grad = true;
        if (!cj_keys(r, z, "behaviour.zero_grad", zkeys) ||
            !cj_rule(r, cj_get(z, "when"), "behaviour.zero_grad.when", &r->p.zero_grad_when) ||
            !cj_req_bool(r, z, "set_to_none", "behaviour.zero_grad", &r->p.zero_grad_set_to_none))
            return false;
    }
    return true;
}

static void auto_optimizer_step_hook_install(conf_run *r, em_module_ops *ops)
{
    ops->training_step = auto_training_step;
    ops->optimizer_step = hook_optimizer_step;
    if (r->p.has_zero_grad)
        ops->optimizer_zero_grad = hook_zero_grad;
}

/* ---- auto_custom_scheduler_step ------------------------------------------------------------------------------ */

static em_status custom_lr_scheduler_step(em_module *m, em_scheduler *s, bool has_metric, double metric)
{
    conf_run *r = run_of(m);
    if (conf_is_epoch_step_scheduler(s))
        return conf_epoch_step_scheduler_step(s, em_trainer_current_epoch(em_module_trainer(m)) +
                                                     r->p.custom_epoch_offset);
    return has_metric ? em_scheduler_step_metric(s, metric) : em_scheduler_step(s);
}

static bool auto_custom_scheduler_step_parse(conf_run *r, const cJSON *b)
{
    static const char *const keys[] = {"kind", "custom_epoch_offset", NULL};
    return cj_keys(r, b, "behaviour", keys) &&
           cj_req_int(r, b, "custom_epoch_offset", "behaviour", &r->p.custom_epoch_offset) && need_net(r, "net");
}

static void auto_custom_scheduler_step_install(conf_run *r, em_module_ops *ops)
{
    (void)r;
    ops->training_step = auto_training_step;
    ops->lr_scheduler_step = custom_lr_scheduler_step;
}

/* ---- manual_accumulate ---------------------------------------------------------------------------------------- */

static em_tensor *manual_accumulate_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    conf_run *r = run_of(m);
    em_trainer *t = em_module_trainer(m);
    em_tensor *loss = net_loss(r, b);
    if (loss == NULL)
        return NULL;
    rec_training_step(r, batch_idx, em_tensor_item(loss), NULL, NULL, 0);
    int64_t n = r->p.accumulate;
    if (em_manual_backward(m, em_div_scalar(loss, (double)n)) != EM_OK)
        return NULL;
    if ((batch_idx + 1) % n == 0 || em_trainer_is_last_batch(t)) {
        if (manual_step(r, 0, r->p.raw_optimizer, NULL) != EM_OK)
            return NULL;
        em_optimizer *w = wrapper(r, 0);
        if (w == NULL || em_optimizer_zero_grad(r->p.raw_optimizer ? em_optimizer_inner(w) : w) != EM_OK)
            return NULL;
    }
    if (scheduler_point(r, batch_idx) != EM_OK)
        return NULL;
    if (r->p.log_loss_as != NULL && em_log_tensor(m, r->p.log_loss_as, loss, 0) != EM_OK)
        return NULL; /* training defaults: on_step only */
    return NULL;     /* the value only reaches on_train_batch_end: return None */
}

static bool manual_accumulate_parse(conf_run *r, const cJSON *b)
{
    static const char *const keys[] = {"kind", "accumulate", "raw_optimizer", "log_loss_as", "scheduler_steps", NULL};
    if (!cj_keys(r, b, "behaviour", keys) || !cj_req_int(r, b, "accumulate", "behaviour", &r->p.accumulate) ||
        !cj_req_bool(r, b, "raw_optimizer", "behaviour", &r->p.raw_optimizer) ||
        !cj_req_string_or_null(r, b, "log_loss_as", "behaviour", &r->p.log_loss_as) ||
        !parse_sched_rules(r, b, true) || !need_net(r, "net"))
        return false;
    if (r->p.accumulate < 1)
        return conf_fail(r, "behaviour.accumulate must be >= 1 (got %lld)", (long long)r->p.accumulate);
    for (size_t i = 0; i < r->p.n_sched_rules; i++) {
        const char *metric = r->p.sched_rules[i].metric;
        if (r->p.sched_rules[i].when == WHEN_EPOCH_END_METRIC &&
            (r->p.log_loss_as == NULL || strcmp(metric, r->p.log_loss_as) != 0))
            return conf_fail(r, "behaviour.scheduler_steps[%zu]: metric \"%s\" is not logged (log_loss_as)", i, metric);
    }
    return true;
}

static void manual_accumulate_install(conf_run *r, em_module_ops *ops)
{
    (void)r;
    ops->training_step = manual_accumulate_training_step;
}

/* ---- manual_clip ------------------------------------------------------------------------------------------------ */

static em_tensor *manual_clip_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    conf_run *r = run_of(m);
    em_optimizer *opt = wrapper(r, 0);
    em_tensor *loss = opt != NULL ? net_loss(r, b) : NULL;
    if (loss == NULL)
        return NULL;
    rec_training_step(r, batch_idx, em_tensor_item(loss), NULL, NULL, 0);
    if (em_optimizer_zero_grad(opt) != EM_OK || em_manual_backward(m, loss) != EM_OK)
        return NULL;
    rec_pre_clip(r, 0, true);
    if (em_clip_gradients(m, opt, r->p.clip_val, r->p.manual_clip_algorithm) != EM_OK)
        return NULL;
    manual_step(r, 0, false, NULL);
    return NULL;
}

static bool manual_clip_parse(conf_run *r, const cJSON *b)
{
    static const char *const keys[] = {"kind", "clip_val", "algorithm", NULL};
    return cj_keys(r, b, "behaviour", keys) && cj_req_number(r, b, "clip_val", "behaviour", &r->p.clip_val) &&
           parse_clip_algorithm(r, b, "behaviour", &r->p.manual_clip_algorithm) && need_net(r, "net");
}

static void manual_clip_install(conf_run *r, em_module_ops *ops)
{
    (void)r;
    ops->training_step = manual_clip_training_step;
}

/* ---- manual_gan -------------------------------------------------------------------------------------------------- */

static em_tensor *manual_gan_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    conf_run *r = run_of(m);
    em_nn *G = conf_net(r, "G"), *D = conf_net(r, "D");
    em_optimizer *opt_g = wrapper(r, 0), *opt_d = opt_g != NULL ? wrapper(r, 1) : NULL;
    if (G == NULL || D == NULL || opt_d == NULL) {
        if (G == NULL || D == NULL)
            conf_fail_cb(r, "%s", r->why);
        return NULL;
    }
    const em_tensor *x = b->t[0];
    int64_t bs = em_tensor_size(x, 0);
    em_tensor *real = em_slice(x, 1, r->p.real_cols[0], r->p.real_cols[1], 1);
    em_tensor *z = em_slice(x, 1, r->p.noise_cols[0], r->p.noise_cols[1], 1);
    em_tensor *ones = em_ones(EM_SHAPE(bs, 1), NULL);
    em_tensor *zeros = em_zeros(EM_SHAPE(bs, 1), NULL);
    if (real == NULL || z == NULL || ones == NULL || zeros == NULL)
        return NULL;

    /* generator, every batch */
    if (em_toggle_optimizer(m, opt_g) != EM_OK)
        return NULL;
    em_tensor *g_loss = conf_loss_fn(r, em_nn_forward(D, em_nn_forward(G, z)), ones);
    if (g_loss == NULL || em_manual_backward(m, g_loss) != EM_OK || manual_step(r, 0, false, NULL) != EM_OK ||
        em_optimizer_zero_grad(opt_g) != EM_OK || em_untoggle_optimizer(m, opt_g) != EM_OK)
        return NULL;

    /* discriminator, every d_every batches */
    double d_loss_v = NAN;
    bool d_ran = (batch_idx + 1) % r->p.d_every == 0;
    if (d_ran) {
        if (em_toggle_optimizer(m, opt_d) != EM_OK)
            return NULL;
        em_tensor *fake = em_nn_forward(G, z);
        em_tensor *d_loss = em_mul_scalar(em_add(conf_loss_fn(r, em_nn_forward(D, real), ones),
                                                 conf_loss_fn(r, em_nn_forward(D, fake), zeros)),
                                          0.5);
        if (d_loss == NULL || em_manual_backward(m, d_loss) != EM_OK)
            return NULL;
        if (r->p.has_d_clip) {
            rec_pre_clip(r, 1, true);
            if (em_clip_gradients(m, opt_d, r->p.d_clip_val, r->p.d_clip_algorithm) != EM_OK)
                return NULL;
        }
        if (manual_step(r, 1, false, NULL) != EM_OK || em_optimizer_zero_grad(opt_d) != EM_OK ||
            em_untoggle_optimizer(m, opt_d) != EM_OK)
            return NULL;
        d_loss_v = em_tensor_item(d_loss);
    }

    if (scheduler_point(r, batch_idx) != EM_OK)
        return NULL;
    static const char *const names[2] = {"g_loss", "d_loss"};
    double vals[2] = {em_tensor_item(g_loss), d_loss_v};
    rec_training_step(r, batch_idx, vals[0], names, vals, d_ran ? 2 : 1);
    return NULL;
}

static bool column_range(conf_run *r, const cJSON *b, const char *key, int64_t out[2])
{
    const cJSON *a = cj_get(b, key);
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != 2 || !cj_is_integral(cJSON_GetArrayItem(a, 0)) ||
        !cj_is_integral(cJSON_GetArrayItem(a, 1)))
        return conf_fail(r, "behaviour.%s must be [start, end] (a half-open column range)", key);
    out[0] = (int64_t)cJSON_GetArrayItem(a, 0)->valuedouble;
    out[1] = (int64_t)cJSON_GetArrayItem(a, 1)->valuedouble;
    if (out[0] < 0 || out[1] <= out[0])
        return conf_fail(r, "behaviour.%s [%lld, %lld] is empty or negative", key, (long long)out[0],
                         (long long)out[1]);
    return true;
}

static bool manual_gan_parse(conf_run *r, const cJSON *b)
{
    static const char *const keys[] = {"kind", "real_columns", "noise_columns", "d_every", "d_clip",
                                       "scheduler_steps", NULL};
    if (!cj_keys(r, b, "behaviour", keys) || !column_range(r, b, "real_columns", r->p.real_cols) ||
        !column_range(r, b, "noise_columns", r->p.noise_cols) ||
        !cj_req_int(r, b, "d_every", "behaviour", &r->p.d_every) || !parse_sched_rules(r, b, false) ||
        !need_net(r, "G") || !need_net(r, "D"))
        return false;
    if (r->p.d_every < 1)
        return conf_fail(r, "behaviour.d_every must be >= 1");
    if (cj_get(b, "d_clip") == NULL)
        return conf_fail(r, "behaviour.d_clip is missing (null or {clip_val, algorithm})");
    if (!cj_is_null_or_absent(b, "d_clip")) {
        const cJSON *c = cj_get(b, "d_clip");
        static const char *const ckeys[] = {"clip_val", "algorithm", NULL};
        r->p.has_d_clip = true;
        if (!cj_keys(r, c, "behaviour.d_clip", ckeys) ||
            !cj_req_number(r, c, "clip_val", "behaviour.d_clip", &r->p.d_clip_val) ||
            !parse_clip_algorithm(r, c, "behaviour.d_clip", &r->p.d_clip_algorithm))
            return false;
    }
    if (r->loss != LOSS_BCE_LOGITS)
        return conf_fail(r, "behaviour manual_gan needs loss binary_cross_entropy_with_logits");
    const cJSON *opts = cj_get(r->doc, "optimizers");
    if (!cJSON_IsArray(opts) || cJSON_GetArraySize(opts) != 2)
        return conf_fail(r, "behaviour manual_gan needs two optimizers (G's, then D's)");
    return true;
}

static void manual_gan_install(conf_run *r, em_module_ops *ops)
{
    (void)r;
    ops->training_step = manual_gan_training_step;
}

/* ---- manual_lbfgs ------------------------------------------------------------------------------------------------ */

typedef struct lbfgs_ctx {
    conf_run *r;
    const em_batch *b;
    int64_t batch_idx;
    em_optimizer *opt;
} lbfgs_ctx;

/* closure(): loss = loss(net(x), y); record(loss); zero_grad(); manual_backward(loss); return loss */
static em_tensor *lbfgs_closure(void *ctx)
{
    lbfgs_ctx *c = ctx;
    em_tensor *loss = net_loss(c->r, c->b);
    if (loss == NULL)
        return NULL;
    rec_training_step(c->r, c->batch_idx, em_tensor_item(loss), NULL, NULL, 0);
    if (em_optimizer_zero_grad(c->opt) != EM_OK || em_manual_backward(&c->r->base, loss) != EM_OK)
        return NULL;
    rec_post_clip(c->r, 0); /* kept for the first evaluation of this step only */
    return loss;
}

static em_tensor *manual_lbfgs_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    conf_run *r = run_of(m);
    em_optimizer *opt = wrapper(r, 0);
    if (opt == NULL)
        return NULL;
    lbfgs_ctx ctx = {.r = r, .b = b, .batch_idx = batch_idx, .opt = opt};
    em_closure closure = {.fn = lbfgs_closure, .ctx = &ctx};
    manual_step(r, 0, false, &closure);
    return NULL;
}

static bool manual_lbfgs_parse(conf_run *r, const cJSON *b)
{
    static const char *const keys[] = {"kind", NULL};
    return cj_keys(r, b, "behaviour", keys) && need_net(r, "net");
}

static void manual_lbfgs_install(conf_run *r, em_module_ops *ops)
{
    (void)r;
    ops->training_step = manual_lbfgs_training_step;
}

/* ---- ddp_indexed ---------------------------------------------------------------------------------------------- */

/* The batch's row indices (its third tensor) as "sample_indices" of the last entry of `list`. */
static bool add_sample_indices(conf_run *r, const em_batch *b, cJSON *list)
{
    if (b->n < 3)
        return true;
    int64_t n = em_tensor_numel(b->t[2]);
    int64_t idx[4096];
    if (n > 4096 || em_tensor_copy_to(b->t[2], idx, sizeof idx, EM_I64) != EM_OK) {
        conf_fail_cb(r, "cannot read the batch's sample indices");
        return false;
    }
    cJSON *out = cJSON_CreateArray();
    for (int64_t i = 0; i < n; i++)
        cJSON_AddItemToArray(out, cJSON_CreateNumber((double)idx[i]));
    cJSON_AddItemToObject(cJSON_GetArrayItem(list, cJSON_GetArraySize(list) - 1), "sample_indices", out);
    return true;
}

/* the common training_step on (x, y, row indices); the record also keeps the batch's row indices */
static em_tensor *ddp_indexed_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    conf_run *r = run_of(m);
    em_tensor *loss = auto_training_step(m, b, batch_idx);
    if (loss == NULL || !add_sample_indices(r, b, r->rec.calls))
        return NULL;
    return loss;
}

/* val_metric: loss on (x, y, row indices), recorded with the row indices, logged with validation
 * defaults and sync_dist = val_sync_dist */
static em_status ddp_indexed_validation_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    conf_run *r = run_of(m);
    em_tensor *loss = net_loss(r, b);
    if (loss == NULL)
        return em_last_status() != EM_OK ? em_last_status() : EM_EUSER;
    rec_validation_step(r, batch_idx, em_tensor_item(loss));
    if (!add_sample_indices(r, b, r->rec.val_calls))
        return EM_EUSER;
    return em_log_tensor(m, r->p.val_metric, loss, r->p.val_sync_dist ? EM_LOG_SYNC_DIST : 0);
}

static bool ddp_indexed_parse(conf_run *r, const cJSON *b)
{
    static const char *const keys[] = {"kind", "sampler_shuffle", "sampler_drop_last", "val_metric",
                                       "val_sync_dist", NULL};
    if (!cj_keys(r, b, "behaviour", keys) ||
        !cj_req_bool(r, b, "sampler_shuffle", "behaviour", &r->p.sampler_shuffle) ||
        !cj_req_bool(r, b, "sampler_drop_last", "behaviour", &r->p.sampler_drop_last) || !need_net(r, "net"))
        return false;
    r->p.val_metric = NULL;
    r->p.val_sync_dist = false;
    if (!cj_is_null_or_absent(b, "val_metric") &&
        !cj_req_string_or_null(r, b, "val_metric", "behaviour", &r->p.val_metric))
        return false;
    if (!cj_opt_bool(r, b, "val_sync_dist", "behaviour", &r->p.val_sync_dist))
        return false;
    const cJSON *data = cj_get(r->doc, "data");
    if ((r->p.val_metric != NULL) != !cj_is_null_or_absent(data, "val"))
        return conf_fail(r, "behaviour ddp_indexed: data.val and val_metric go together");
    if (!r->ddp)
        return conf_fail(r, "behaviour ddp_indexed needs trainer.strategy \"ddp\"");
    return true;
}

static void ddp_indexed_install(conf_run *r, em_module_ops *ops)
{
    ops->training_step = ddp_indexed_training_step;
    if (r->p.val_metric != NULL)
        ops->validation_step = ddp_indexed_validation_step;
}

/* ---- the table --------------------------------------------------------------------------------------------------- */

static const conf_kind kinds[] = {
    {"auto_basic", true, auto_basic_parse, auto_basic_install},
    {"auto_skip", true, auto_skip_parse, auto_skip_install},
    {"auto_clip_by_epoch", true, auto_clip_by_epoch_parse, auto_clip_by_epoch_install},
    {"auto_optimizer_step_hook", true, auto_optimizer_step_hook_parse, auto_optimizer_step_hook_install},
    {"auto_custom_scheduler_step", true, auto_custom_scheduler_step_parse, auto_custom_scheduler_step_install},
    {"manual_accumulate", false, manual_accumulate_parse, manual_accumulate_install},
    {"manual_clip", false, manual_clip_parse, manual_clip_install},
    {"manual_gan", false, manual_gan_parse, manual_gan_install},
    {"manual_lbfgs", false, manual_lbfgs_parse, manual_lbfgs_install},
    {"ddp_indexed", true, ddp_indexed_parse, ddp_indexed_install},
};

const conf_kind *conf_find_kind(const char *name)
{
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kinds[i].name, name) == 0)
            return &kinds[i];
    return NULL;
}

void conf_install(conf_run *r, em_module_ops *ops)
{
    memset(ops, 0, sizeof *ops);
    ops->version = EM_MODULE_OPS_VERSION;
    ops->configure_optimizers = build_configure_optimizers;
    install_common(ops);
    r->kind->install(r, ops);
}
