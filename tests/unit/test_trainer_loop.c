/* test_trainer_loop.c: the fit loop around the optimization - limits and stopping, validation scheduling,
 * the sanity check, callback_metrics, the GradientAccumulationScheduler, LR scheduler intervals, the
 * misconfiguration errors and failures. Ported from Lightning 2.2.5's own tests (tests/tests_pytorch/...;
 * docs/LIGHTNING_RULES.md §2, §3, §5, §9, §10, §11).
 *
 * The model is one Linear(1, 1, bias=False) weight w (w0 = 1), the loss of a batch is mean(w * x) (so
 * dloss/dw = mean(x)), SGD(lr = 0.01). Train batches are single rows x = 1, 2, 3, ... unless a test
 * says otherwise. Hooks record (name, epoch, batch_idx, global_step, value) in an event list.
 */
#define _XOPEN_SOURCE 700 /* mkdtemp, nftw */

#include "helpers.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- the recording module ---------------------------------------------------------------------------- */

#define MAX_EV 8192

typedef struct ev {
    char name[32];
    int64_t epoch, batch, step;
    bool sanity;
    double v;
} ev;

enum fail_kind { FAIL_NONE = 0, FAIL_USER, FAIL_SHAPE };
enum sched_kind { SCHED_NONE = 0, SCHED_STEP_LR, SCHED_PLATEAU, SCHED_CUSTOM };
enum log_mode { LOG_NONE = 0, LOG_NAMING, LOG_CSV };

typedef struct lm {
    em_module base;
    em_nn *net;
    /* knobs */
    int64_t minus_one_at;   /* on_train_batch_start returns -1 at this batch_idx (-1: never) */
    int64_t stop_at;        /* training_step sets should_stop at this batch_idx (-1 never, -2 every batch) */
    enum fail_kind fail;    /* training_step fails at (fail_epoch, fail_batch) */
    int64_t fail_epoch, fail_batch;
    int64_t fail_batch_end_at; /* on_train_batch_end fails at this batch_idx (-1: never) */
    bool fail_validation;
    enum log_mode log_mode;
    bool val_logs_loss;     /* validation_step logs val_loss = 1.0 */
    bool noise;             /* training_step and validation_step draw from the global generator */
    bool has_validation_step;
    enum sched_kind sched;
    double gamma;
    em_scheduler_config sched_cfg;
    bool sched_foreign;     /* the scheduler's optimizer is not added */
    /* records */
    ev ev[MAX_EV];
    int nev;
    double est;
    em_status sched_add_status;
    em_optimizer *foreign;
    double mid_a, mid_a_step, mid_b;
    bool mid_has_a_epoch, mid_seen, sanity_v_present;
    bool val_saw_training_mode, val_saw_grad, train_saw_eval_mode;
    bool try_add_callback;
    em_status add_callback_status;
} lm;

static lm *LM(em_module *m) { return (lm *)m; }

static void rec(lm *m, const char *name, double v)
{
    assert_true(m->nev < MAX_EV);
    ev *e = &m->ev[m->nev++];
    snprintf(e->name, sizeof e->name, "%s", name);
    em_trainer *t = em_module_trainer(&m->base);
    e->epoch = t != NULL ? em_trainer_current_epoch(t) : -1;
    e->batch = t != NULL ? em_trainer_batch_idx(t) : -1;
    e->step = t != NULL ? em_trainer_global_step(t) : -1;
    e->sanity = t != NULL && em_trainer_sanity_checking(t);
    e->v = v;
}

static int count(const lm *m, const char *name)
{
    int n = 0;
    for (int i = 0; i < m->nev; i++)
        n += strcmp(m->ev[i].name, name) == 0;
    return n;
}

/* Events `name` outside the sanity check. */
static int count_real(const lm *m, const char *name)
{
    int n = 0;
    for (int i = 0; i < m->nev; i++)
        n += strcmp(m->ev[i].name, name) == 0 && !m->ev[i].sanity;
    return n;
}

static int count_sanity(const lm *m, const char *name)
{
    int n = 0;
    for (int i = 0; i < m->nev; i++)
        n += strcmp(m->ev[i].name, name) == 0 && m->ev[i].sanity;
    return n;
}

/* "e:b" pairs (epoch:batch_idx) of the events `name` outside the sanity check, e.g. "0:2,0:5". */
static const char *where(const lm *m, const char *name)
{
    static char buf[4096];
    size_t off = 0;
    buf[0] = '\0';
    for (int i = 0; i < m->nev; i++)
        if (strcmp(m->ev[i].name, name) == 0 && !m->ev[i].sanity)
            off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%lld:%lld", off ? "," : "",
                                    (long long)m->ev[i].epoch, (long long)m->ev[i].batch);
    return buf;
}

static int values_of(const lm *m, const char *name, double *out, int max)
{
    int n = 0;
    for (int i = 0; i < m->nev && n < max; i++)
        if (strcmp(m->ev[i].name, name) == 0 && !m->ev[i].sanity)
            out[n++] = m->ev[i].v;
    return n;
}

static double item_of(const em_tensor *t)
{
    em_scope_begin();
    double v = em_tensor_item(t);
    em_scope_end();
    return v;
}

static double grad_item(const em_tensor *p)
{
    em_scope_begin();
    em_tensor *g = em_tensor_grad(p);
    double v = g != NULL ? em_tensor_item(g) : NAN;
    em_scope_end();
    return v;
}

static em_tensor *weight(lm *m) { return em_nn_get(m->net, "weight"); }

static double lr_now(em_module *mb)
{
    size_t n = 0;
    em_optimizer **opts = em_optimizers(mb, &n);
    return n > 0 ? em_optimizer_lr(opts[0], 0) : NAN;
}

/* ---- hooks ------------------------------------------------------------------------------------------------- */

static em_tensor *lm_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    lm *m = LM(mb);
    em_trainer *t = em_module_trainer(mb);
    rec(m, "training_step", 0);
    m->train_saw_eval_mode |= !em_nn_is_training(m->net);
    if (m->fail != FAIL_NONE && em_trainer_current_epoch(t) == m->fail_epoch && batch_idx == m->fail_batch) {
        if (m->fail == FAIL_USER) {
            em_error_set(EM_EUSER, "boom at batch %lld", (long long)batch_idx);
            return NULL;
        }
        /* a shape error inside an ember call: sizes 2 and 3 do not broadcast */
        (void)b;
        return em_mse_loss(em_zeros(EM_SHAPE(2), NULL), em_zeros(EM_SHAPE(3), NULL), EM_REDUCTION_MEAN);
    }
    if (m->stop_at == -2 || m->stop_at == batch_idx)
        em_trainer_set_should_stop(t, true);
    em_tensor *x = b->t[0];
    if (m->noise)
        x = em_add(x, em_randn(EM_SHAPE(em_tensor_size(x, 0), 1), NULL));
    em_tensor *loss = em_mean(em_nn_forward(m->net, x));
    if (m->log_mode == LOG_NAMING) {
        if (em_log(mb, "a", (double)batch_idx, EM_LOG_ON_STEP | EM_LOG_ON_EPOCH) != EM_OK ||
            em_log(mb, "b", 10.0 + (double)batch_idx, 0) != EM_OK ||
            em_log_ex(mb, "m", 2.0 * (double)batch_idx,
                      &(em_log_opts){.flags = EM_LOG_ON_EPOCH | EM_LOG_NOT_ON_STEP, .reduce_fx = EM_REDUCE_MAX}) != EM_OK)
            return NULL;
    } else if (m->log_mode == LOG_CSV) {
        if (em_log(mb, "loss", (double)batch_idx, 0) != EM_OK ||
            em_log(mb, "acc", 1.0 + (double)batch_idx, EM_LOG_ON_EPOCH | EM_LOG_NOT_ON_STEP) != EM_OK)
            return NULL;
    }
    return loss;
}

static em_status lm_validation_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    lm *m = LM(mb);
    rec(m, "validation_step", 0);
    m->val_saw_training_mode |= em_nn_is_training(m->net);
    m->val_saw_grad |= em_is_grad_enabled();
    if (m->fail_validation)
        return em_error_set(EM_EUSER, "validation boom");
    if (m->noise)
        em_randn(EM_SHAPE(3), NULL);
    if (m->val_logs_loss && em_log(mb, "val_loss", 1.0, 0) != EM_OK)
        return em_last_status();
    if (m->log_mode == LOG_NAMING) {
        (void)b;
        if (em_log(mb, "v", 1.0 + (double)batch_idx, 0) != EM_OK ||
            em_log(mb, "vf", (double)batch_idx, EM_LOG_ON_STEP | EM_LOG_ON_EPOCH) != EM_OK)
            return em_last_status();
    }
    return EM_OK;
}

/* A scheduler written in C: halves the lr on every step (needs the lr_scheduler_step override in
 * automatic mode, §3.2). */
static em_status halving_step(em_scheduler *self, bool has_metric, double metric)
{
    (void)has_metric, (void)metric;
    em_optimizer *opt = em_scheduler_optimizer(self);
    double base = em_scheduler_base_lr(self, 0);
    return em_optimizer_set_lr(opt, 0, base * pow(0.5, (double)em_scheduler_last_epoch(self)));
}
static const em_scheduler_ops halving_ops = {.version = EM_SCHEDULER_OPS_VERSION, .name = "Halving",
                                             .step = halving_step};

static em_status lm_configure_optimizers(em_module *mb, em_optim_setup *setup)
{
    lm *m = LM(mb);
    rec(m, "configure_optimizers", 0);
    m->est = em_trainer_estimated_stepping_batches(em_module_trainer(mb));
    em_params *ps = em_nn_parameters(m->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    if (m->sched_foreign)
        m->foreign = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    em_status s = em_optim_setup_add(setup, opt);
    if (s != EM_OK)
        return s;
    em_optimizer *target = m->sched_foreign ? m->foreign : opt;
    em_scheduler *sched = NULL;
    switch (m->sched) {
    case SCHED_NONE:
        return EM_OK;
    case SCHED_STEP_LR:
        sched = em_step_lr(target, 1, m->gamma);
        break;
    case SCHED_PLATEAU: {
        em_plateau_opts o = EM_PLATEAU_OPTS_INIT;
        o.patience = 0;
        sched = em_reduce_lr_on_plateau(target, &o);
        break;
    }
    case SCHED_CUSTOM:
        sched = em_scheduler_new(&halving_ops, target, NULL);
        break;
    }
    m->sched_add_status = em_optim_setup_add_scheduler(setup, sched, &m->sched_cfg);
    return m->sched_add_status;
}

static em_status lm_lr_scheduler_step(em_module *mb, em_scheduler *s, bool has_metric, double metric)
{
    lm *m = LM(mb);
    rec(m, has_metric ? "lr_scheduler_step(metric)" : "lr_scheduler_step", metric);
    return has_metric ? em_scheduler_step_metric(s, metric) : em_scheduler_step(s);
}

static em_status lm_optimizer_zero_grad(em_module *mb, int64_t epoch, int64_t batch_idx, em_optimizer *opt)
{
    (void)epoch, (void)batch_idx;
    rec(LM(mb), "zero_grad", 0);
    return em_optimizer_zero_grad(opt);
}

static int lm_on_train_batch_start(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)b;
    lm *m = LM(mb);
    rec(m, "on_train_batch_start", em_trainer_is_last_batch(em_module_trainer(mb)) ? 1.0 : 0.0);
    return batch_idx == m->minus_one_at ? EM_SKIP_REST_OF_EPOCH : 0;
}

static em_status lm_on_train_batch_end(em_module *mb, const em_tensor *loss, const em_batch *b, int64_t batch_idx)
{
    (void)loss, (void)b;
    lm *m = LM(mb);
    em_trainer *t = em_module_trainer(mb);
    rec(m, "lr", lr_now(mb));
    if (batch_idx == m->fail_batch_end_at)
        return em_error_set(EM_EUSER, "batch end boom");
    if (m->log_mode == LOG_NAMING && em_trainer_current_epoch(t) == 0 && batch_idx == 1) {
        /* during the epoch: the step value under the plain and the _step name, no _epoch value yet */
        m->mid_seen = em_trainer_callback_metric(t, "a", &m->mid_a) &&
                      em_trainer_callback_metric(t, "a_step", &m->mid_a_step) &&
                      em_trainer_callback_metric(t, "b", &m->mid_b);
        m->mid_has_a_epoch = em_trainer_callback_metric(t, "a_epoch", NULL);
    }
    return EM_OK;
}

static em_status lm_on_before_optimizer_step(em_module *mb, em_optimizer *opt)
{
    (void)opt;
    lm *m = LM(mb);
    rec(m, "on_before_optimizer_step", grad_item(weight(m)));
    return EM_OK;
}

static em_status lm_on_train_start(em_module *mb)
{
    lm *m = LM(mb);
    rec(m, "on_train_start", 0);
    if (m->try_add_callback) {
        static const em_callback_ops empty_ops = {.version = EM_CALLBACK_OPS_VERSION, .name = "Empty"};
        m->add_callback_status = em_trainer_add_callback(em_module_trainer(mb), em_callback_new(&empty_ops, NULL));
        em_clear_error();
    }
    m->sanity_v_present = em_trainer_callback_metric(em_module_trainer(mb), "v", NULL);
    return EM_OK;
}

static em_status lm_on_train_epoch_start(em_module *mb)
{
    lm *m = LM(mb);
    rec(m, "on_train_epoch_start", (double)em_trainer_accumulate_grad_batches(em_module_trainer(mb)));
    return EM_OK;
}

static em_status lm_on_train_epoch_end(em_module *mb)
{
    rec(LM(mb), "epoch_lr", lr_now(mb));
    return EM_OK;
}

static em_status lm_on_train_end(em_module *mb)
{
    rec(LM(mb), "on_train_end", lr_now(mb));
    return EM_OK;
}

static em_status lm_on_fit_start(em_module *mb)
{
    rec(LM(mb), "on_fit_start", 0);
    return EM_OK;
}

static em_status lm_on_fit_end(em_module *mb)
{
    rec(LM(mb), "on_fit_end", 0);
    return EM_OK;
}

static em_status lm_on_validation_start(em_module *mb)
{
    lm *m = LM(mb);
    rec(m, "on_validation_start", grad_item(weight(m)));
    return EM_OK;
}

static em_status lm_on_validation_epoch_start(em_module *mb)
{
    rec(LM(mb), "on_validation_epoch_start", 0);
    return EM_OK;
}

static const em_module_ops lm_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = lm_training_step,
    .configure_optimizers = lm_configure_optimizers,
    .validation_step = lm_validation_step,
    .optimizer_zero_grad = lm_optimizer_zero_grad,
    .on_fit_start = lm_on_fit_start,
    .on_fit_end = lm_on_fit_end,
    .on_train_start = lm_on_train_start,
    .on_train_end = lm_on_train_end,
    .on_train_epoch_start = lm_on_train_epoch_start,
    .on_train_epoch_end = lm_on_train_epoch_end,
    .on_train_batch_start = lm_on_train_batch_start,
    .on_train_batch_end = lm_on_train_batch_end,
    .on_before_optimizer_step = lm_on_before_optimizer_step,
    .on_validation_start = lm_on_validation_start,
    .on_validation_epoch_start = lm_on_validation_epoch_start,
};

/* The same with the lr_scheduler_step override that records its calls. */
static em_module_ops lm_ops_sched;

static lm *lm_new(void)
{
    lm *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->base.ops = &lm_ops;
    m->base.manual_optimization = false;
    m->net = em_nn_linear(1, 1, false);
    assert_nonnull_em(m->net);
    m->base.layers = m->net;
    float w = 1.0f;
    assert_ok(em_nn_set(m->net, "weight", &w, EM_F32, 1));
    m->minus_one_at = -1;
    m->stop_at = -1;
    m->fail_batch_end_at = -1;
    m->gamma = 0.5;
    lm_ops_sched = lm_ops;
    lm_ops_sched.lr_scheduler_step = lm_lr_scheduler_step;
    return m;
}

static void lm_free(lm *m)
{
    em_optimizer_free(m->foreign);
    em_nn_free(m->net);
    free(m);
}

/* rows x = 1, 2, ..., rows in batches of batch_size (shuffled from `seed` when shuffle). */
static em_loader *loader_ex(int64_t rows, int64_t batch_size, bool shuffle, uint64_t seed)
{
    em_scope_begin();
    float *x = calloc((size_t)rows, sizeof *x);
    assert_non_null(x);
    for (int64_t i = 0; i < rows; i++)
        x[i] = (float)(i + 1);
    em_tensor *t = em_tensor_from(x, EM_F32, EM_SHAPE(rows, 1), NULL);
    free(x);
    em_loader *l = em_tensor_loader(&t, 1, &(em_loader_opts){.batch_size = batch_size, .shuffle = shuffle, .seed = seed});
    assert_nonnull_em(l);
    assert_ok(em_scope_end());
    return l;
}

static em_loader *loader(int64_t rows) { return loader_ex(rows, 1, false, 0); }

static em_trainer_config config(int64_t max_epochs) { return helper_quiet_config(max_epochs); }

static em_trainer *trainer(em_trainer_config cfg)
{
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    return t;
}

/* One fit of `m` on a fresh train loader of `rows` rows (and a val loader of `val_rows`, 0 = none). The
 * trainer is returned for inspection (free it with em_trainer_free). */
static em_trainer *fit_rows(lm *m, em_trainer_config cfg, int64_t rows, int64_t val_rows, em_status *status)
{
    em_loader *train = loader(rows);
    em_loader *val = val_rows > 0 ? loader(val_rows) : NULL;
    em_trainer *t = trainer(cfg);
    em_status s = em_trainer_fit(t, &m->base, train, val);
    if (status != NULL)
        *status = s;
    else if (s != EM_OK)
        print_error("em_trainer_fit: %s\n", em_trainer_error(t));
    if (status == NULL)
        assert_ok(s);
    em_loader_free(train);
    em_loader_free(val);
    return t;
}

/* ---- limits and stopping (§2) ----------------------------------------------------------------------------- */

/* §2.1 [observed]: max_steps=7 with N=10: training stops mid-epoch after 7 steps and the cut epoch still
 * counts: current_epoch == 1. */
static void test_trainer_loop__max_steps_mid_epoch(void **state)
{
    (void)state;
    lm *m = lm_new();
    em_trainer_config cfg = config(EM_NONE);
    cfg.max_steps = 7;
    em_trainer *t = fit_rows(m, cfg, 10, 0, NULL);
    assert_int_equal(em_trainer_global_step(t), 7);
    assert_int_equal(em_trainer_current_epoch(t), 1);
    assert_int_equal(count(m, "training_step"), 7);
    assert_int_equal(count(m, "epoch_lr"), 1); /* on_train_epoch_end still ran */
    em_trainer_free(t);
    lm_free(m);
}

/* trainer/test_trainer.py::test_trainer_max_steps_and_epochs: whichever limit comes first wins. 8 batches,
 * limit_train_batches=0.5 -> N = 4:
 *   max_epochs=3, max_steps=4+2  -> global_step 6
 *   max_epochs=2, max_steps=3*2*4 -> global_step 8, current_epoch 2
 *   max_epochs=-1, max_steps=3   -> global_step 3 */
static void test_trainer_loop__max_steps_and_max_epochs(void **state)
{
    (void)state;
    const int64_t cases[3][4] = {{3, 6, 6, 2}, {2, 24, 8, 2}, {-1, 3, 3, 1}}; /* max_epochs, max_steps, steps, epoch */
    for (int i = 0; i < 3; i++) {
        lm *m = lm_new();
        em_trainer_config cfg = config(cases[i][0]);
        cfg.max_steps = cases[i][1];
        cfg.limit_train_batches = EM_FRACTION(0.5);
        em_trainer *t = fit_rows(m, cfg, 8, 0, NULL);
        assert_int_equal(em_trainer_num_training_batches(t), 4);
        assert_int_equal(em_trainer_global_step(t), cases[i][2]);
        assert_int_equal(em_trainer_current_epoch(t), cases[i][3]);
        em_trainer_free(t);
        lm_free(m);
    }
}

/* ...::test_trainer_max_steps_accumulate_batches: global_step stops exactly at max_steps with
 * accumulation. 20 batches, limit 0.5 -> N = 10, A = 4: steps at 3, 7, 9 per epoch; max_steps = 13 ->
 * 4 full epochs (12) and one step into the fifth (current_epoch 5). */
static void test_trainer_loop__max_steps_with_accumulation(void **state)
{
    (void)state;
    lm *m = lm_new();
    em_trainer_config cfg = config(EM_NONE);
    cfg.max_steps = 13;
    cfg.accumulate_grad_batches = 4;
    cfg.limit_train_batches = EM_FRACTION(0.5);
    em_trainer *t = fit_rows(m, cfg, 20, 0, NULL);
    assert_int_equal(em_trainer_global_step(t), 13);
    assert_int_equal(em_trainer_current_epoch(t), 5);
    assert_int_equal(count(m, "training_step"), 4 * 10 + 4);
    em_trainer_free(t);
    lm_free(m);
}

/* The four ways to train nothing (§2.2 rule 6): max_steps=0 (max_epochs unset), max_epochs=0,
 * max_epochs=-1 with max_steps=0, limit_train_batches=0. */
static em_trainer_config zero_limit_config(int i)
{
    em_trainer_config cfg = config(i == 0 ? EM_NONE : i == 1 ? 0 : i == 2 ? -1 : 3);
    if (i == 0 || i == 2)
        cfg.max_steps = 0;
    if (i == 3)
        cfg.limit_train_batches = EM_BATCHES(0);
    return cfg;
}

/* trainer/test_trainer.py::test_trainer_max_steps_and_epochs_fit_loop_done and §2.2 rule 6: max_steps=0,
 * max_epochs=0 or limit_train_batches=0 -> no training at all (no on_train_start, no training_step), while
 * configure_optimizers and on_fit_start still run. */
static void test_trainer_loop__zero_limits_train_nothing(void **state)
{
    (void)state;
    for (int i = 0; i < 4; i++) {
        lm *m = lm_new();
        em_trainer *t = fit_rows(m, zero_limit_config(i), 4, 0, NULL);
        assert_int_equal(count(m, "training_step"), 0);
        assert_int_equal(count(m, "on_train_start"), 0);
        assert_int_equal(count(m, "on_train_end"), 0);
        assert_int_equal(count(m, "configure_optimizers"), 1);
        assert_int_equal(count(m, "on_fit_start"), 1);
        assert_int_equal(em_trainer_global_step(t), 0);
        assert_int_equal(em_trainer_current_epoch(t), 0);
        em_trainer_free(t);
        lm_free(m);
    }
}

/* Trainer._run (trainer/trainer.py:996-997 in 2.2.5) calls on_fit_end after _run_stage returns, whatever
 * the fit loop did: also when it skipped training because of a zero limit. */
static void test_trainer_loop__on_fit_end_runs_without_training(void **state)
{
    (void)state;
    for (int i = 0; i < 4; i++) {
        lm *m = lm_new();
        em_trainer *t = fit_rows(m, zero_limit_config(i), 4, 0, NULL);
        assert_int_equal(count(m, "on_fit_end"), 1);
        em_trainer_free(t);
        lm_free(m);
    }
}

/* §2.2 rule 1, trainer/flags/test_min_max_epochs.py::test_max_epochs_not_set_warning: max_epochs unset
 * and max_steps -1 -> 1000 epochs; max_epochs unset with max_steps 5 -> no epoch limit (5 steps, N = 2:
 * the third epoch is cut after one batch and counts). */
static void test_trainer_loop__max_epochs_defaults(void **state)
{
    (void)state;
    lm *m = lm_new();
    em_trainer *t = fit_rows(m, config(EM_NONE), 1, 0, NULL);
    assert_int_equal(em_trainer_current_epoch(t), 1000);
    assert_int_equal(em_trainer_global_step(t), 1000);
    assert_int_equal(count(m, "on_train_epoch_start"), 1000);
    em_trainer_free(t);
    lm_free(m);

    m = lm_new();
    em_trainer_config cfg = config(EM_NONE);
    cfg.max_steps = 5;
    t = fit_rows(m, cfg, 2, 0, NULL);
    assert_int_equal(em_trainer_global_step(t), 5);
    assert_int_equal(em_trainer_current_epoch(t), 3);
    em_trainer_free(t);
    lm_free(m);
}

/* trainer/test_trainer.py::test_trainer_min_steps_and_min_epochs_not_reached: should_stop is set on every
 * batch but min_epochs=5 holds it off: 5 epochs of 2 batches -> 10 training_steps. */
static void test_trainer_loop__min_epochs_override_should_stop(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->stop_at = -2;
    em_trainer_config cfg = config(EM_NONE);
    cfg.min_epochs = 5;
    em_trainer *t = fit_rows(m, cfg, 2, 0, NULL);
    assert_int_equal(count(m, "training_step"), 10);
    assert_int_equal(em_trainer_current_epoch(t), 5);
    assert_true(em_trainer_should_stop(t));
    em_trainer_free(t);
    lm_free(m);
}

/* §2.2 rules 1, 4, 5: min_steps=5 (min_epochs then defaults to 1), should_stop set on every batch, N = 4:
 * epoch 0 runs whole (0 completed epochs < 1), epoch 1 stops after its first batch (global_step 5):
 * 5 training_steps, current_epoch 2. */
static void test_trainer_loop__min_steps_override_should_stop(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->stop_at = -2;
    em_trainer_config cfg = config(10);
    cfg.min_steps = 5;
    em_trainer *t = fit_rows(m, cfg, 4, 0, NULL);
    assert_int_equal(count(m, "training_step"), 5);
    assert_int_equal(em_trainer_global_step(t), 5);
    assert_int_equal(em_trainer_current_epoch(t), 2);
    em_trainer_free(t);
    lm_free(m);
}

/* loops/test_training_loop.py::test_on_train_batch_start_return_minus_one, (max_epochs, k) in (2, 5),
 * (3, 8), (4, 12) with N = 10: global_step = k * epochs when k < N, else N * epochs; batch_idx after fit
 * is k (or N - 1). */
static void test_trainer_loop__on_train_batch_start_minus_one(void **state)
{
    (void)state;
    const int64_t cases[3][2] = {{2, 5}, {3, 8}, {4, 12}};
    for (int i = 0; i < 3; i++) {
        lm *m = lm_new();
        m->minus_one_at = cases[i][1];
        em_trainer *t = fit_rows(m, config(cases[i][0]), 10, 0, NULL);
        int64_t k = cases[i][1] < 10 ? cases[i][1] : 10;
        assert_int_equal(em_trainer_global_step(t), k * cases[i][0]);
        assert_int_equal(em_trainer_batch_idx(t), cases[i][1] < 10 ? cases[i][1] : 9);
        assert_int_equal(em_trainer_current_epoch(t), cases[i][0]);
        assert_int_equal(count(m, "training_step"), k * cases[i][0]);
        em_trainer_free(t);
        lm_free(m);
    }
}

/* §1.7 [observed]: an epoch ended by -1 counts as completed and its end hooks run, but there is no
 * validation in it (it never reaches on_advance_end of a due batch) and epoch-interval schedulers do not
 * step (the epoch did not reach its last batch). N = 4, -1 at batch 2, 2 epochs, StepLR(1, 0.5). */
static void test_trainer_loop__minus_one_skips_validation_and_epoch_schedulers(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->minus_one_at = 2;
    m->sched = SCHED_STEP_LR;
    em_trainer *t = fit_rows(m, config(2), 4, 2, NULL);
    assert_int_equal(count_sanity(m, "validation_step"), 2);
    assert_int_equal(count_real(m, "validation_step"), 0);
    assert_int_equal(count(m, "epoch_lr"), 2);
    double lr[1] = {0};
    assert_int_equal(values_of(m, "on_train_end", lr, 1), 1);
    assert_close_rel(lr[0], 0.1, 1e-12);
    assert_int_equal(em_trainer_current_epoch(t), 2);
    em_trainer_free(t);
    lm_free(m);
}

/* loops/test_training_loop.py::test_should_stop_mid_epoch: should_stop set at batch 4 of 10
 * (limit_val_batches=1): validation still runs at that batch, once, at (current_epoch 0, global_step 5);
 * then the fit ends with global_step 5 and current_epoch 1. */
static void test_trainer_loop__should_stop_mid_epoch_validates_then_stops(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->stop_at = 4;
    em_trainer_config cfg = config(1);
    cfg.limit_val_batches = EM_BATCHES(1);
    em_trainer *t = fit_rows(m, cfg, 10, 3, NULL);
    assert_int_equal(em_trainer_current_epoch(t), 1);
    assert_int_equal(em_trainer_global_step(t), 5);
    assert_int_equal(count_real(m, "validation_step"), 1);
    for (int i = 0; i < m->nev; i++)
        if (strcmp(m->ev[i].name, "validation_step") == 0 && !m->ev[i].sanity) {
            assert_int_equal(m->ev[i].epoch, 0);
            assert_int_equal(m->ev[i].step, 5);
        }
    em_trainer_free(t);
    lm_free(m);
}

/* §1.3, §1.7: -1 from on_train_batch_start in the middle of a window drops that window: N = 4, A = 2, -1 at
 * batch 3 every epoch -> one step per epoch (batch 1), and the next epoch's first batch zeroes the leftover
 * gradient of batch 2: both steps see (1 + 2) / 2 = 1.5. */
static void test_trainer_loop__minus_one_mid_window_drops_the_window(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->minus_one_at = 3;
    em_trainer_config cfg = config(2);
    cfg.accumulate_grad_batches = 2;
    em_trainer *t = fit_rows(m, cfg, 4, 0, NULL);
    assert_int_equal(em_trainer_global_step(t), 2);
    double g[2] = {0};
    assert_int_equal(values_of(m, "on_before_optimizer_step", g, 2), 2);
    assert_close_rel(g[0], 1.5, 1e-6);
    assert_close_rel(g[1], 1.5, 1e-6);
    assert_string_equal(where(m, "zero_grad"), "0:0,0:2,1:0,1:2");
    em_trainer_free(t);
    lm_free(m);
}

/* §2.1: is_last_batch is known from on_train_batch_start on, for the last batch after limit_train_batches:
 * 5 batches limited to 3, 2 epochs. */
static void test_trainer_loop__is_last_batch(void **state)
{
    (void)state;
    lm *m = lm_new();
    em_trainer_config cfg = config(2);
    cfg.limit_train_batches = EM_BATCHES(3);
    em_trainer *t = fit_rows(m, cfg, 5, 0, NULL);
    double last[6] = {0};
    assert_int_equal(values_of(m, "on_train_batch_start", last, 6), 6);
    const double want[6] = {0, 0, 1, 0, 0, 1};
    for (int i = 0; i < 6; i++)
        assert_close_rel(last[i], want[i], 0);
    assert_int_equal(em_trainer_num_training_batches(t), 3);
    em_trainer_free(t);
    lm_free(m);
}

/* §9.5 (last bullet), trainer/test_trainer.py::test_model_in_correct_mode_during_stages: validation (and the
 * sanity check) runs with the layers in eval mode and without grad; training_step sees train mode again. */
static void test_trainer_loop__validation_runs_in_eval_mode_without_grad(void **state)
{
    (void)state;
    lm *m = lm_new();
    em_trainer_config cfg = config(2);
    cfg.val_check_interval = EM_FRACTION(0.5);
    em_trainer *t = fit_rows(m, cfg, 4, 2, NULL);
    assert_int_equal(count_real(m, "validation_step"), 2 * 2 * 2);
    assert_int_equal(count_sanity(m, "validation_step"), 2);
    assert_false(m->val_saw_training_mode);
    assert_false(m->val_saw_grad);
    assert_false(m->train_saw_eval_mode);
    assert_true(em_nn_is_training(m->net));
    assert_true(em_is_grad_enabled());
    em_trainer_free(t);
    lm_free(m);
}

/* trainer.h: callbacks cannot be added while fitting (EM_ESTATE; the callback is freed). */
static void test_trainer_loop__add_callback_during_fit_is_refused(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->try_add_callback = true;
    em_trainer *t = fit_rows(m, config(1), 2, 0, NULL);
    assert_int_equal(m->add_callback_status, EM_ESTATE);
    em_trainer_free(t);
    lm_free(m);
}

/* §3.6 [observed]: a step-interval plateau scheduler monitoring a training metric logged on_step sees the
 * current batch's value (b = 10 + batch_idx: 10, 11, 12, 13); monitoring "a_epoch" fails under strict at the
 * first batch, since an _epoch value does not exist during the epoch. */
static void test_trainer_loop__step_plateau_sees_current_step_metric(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->base.ops = &lm_ops_sched;
    m->log_mode = LOG_NAMING;
    m->sched = SCHED_PLATEAU;
    m->sched_cfg = (em_scheduler_config){.interval = EM_INTERVAL_STEP, .monitor = "b"};
    em_trainer *t = fit_rows(m, config(1), 4, 0, NULL);
    double v[4] = {0};
    assert_int_equal(values_of(m, "lr_scheduler_step(metric)", v, 4), 4);
    for (int i = 0; i < 4; i++)
        assert_close_rel(v[i], 10.0 + i, 0);
    em_trainer_free(t);
    lm_free(m);

    m = lm_new();
    m->log_mode = LOG_NAMING;
    m->sched = SCHED_PLATEAU;
    m->sched_cfg = (em_scheduler_config){.interval = EM_INTERVAL_STEP, .monitor = "a_epoch"};
    em_status s;
    t = fit_rows(m, config(1), 4, 0, &s);
    assert_int_not_equal(s, EM_OK);
    const char *want = "epoch 0, batch 0, ";
    if (strncmp(em_trainer_error(t), want, strlen(want)) != 0)
        fail_msg("\"%s\" does not start with \"%s\"", em_trainer_error(t), want);
    assert_non_null(strstr(em_trainer_error(t), "a_epoch"));
    em_clear_error();
    em_trainer_free(t);
    lm_free(m);
}

/* ---- estimated_stepping_batches (§2.3, trainer/properties/test_estimated_stepping_batches.py) ----------- */

static double estimate(int64_t rows, int64_t max_epochs, int64_t max_steps, int64_t a, em_amount limit)
{
    lm *m = lm_new();
    m->stop_at = -2; /* the value is read in configure_optimizers: no need to train long */
    em_trainer_config cfg = config(max_epochs);
    cfg.max_steps = max_steps;
    cfg.accumulate_grad_batches = a;
    cfg.limit_train_batches = limit;
    em_trainer *t = fit_rows(m, cfg, rows, 0, NULL);
    double est = m->est;
    assert_int_equal(count(m, "configure_optimizers"), 1);
    em_trainer_free(t);
    lm_free(m);
    return est;
}

static void test_trainer_loop__estimated_stepping_batches(void **state)
{
    (void)state;
    /* test_num_stepping_batches_basic: N x max_epochs */
    assert_close_rel(estimate(8, 2, -1, 1, EM_FRACTION(1.0)), 16, 0);
    /* test_num_stepping_batches_infinite_training: max_epochs=-1, max_steps=-1 -> inf */
    assert_true(isinf(estimate(8, -1, -1, 1, EM_FRACTION(1.0))));
    /* test_num_stepping_batches_with_max_steps: Trainer(max_steps=2 / 100) -> max_steps */
    assert_close_rel(estimate(8, EM_NONE, 2, 1, EM_FRACTION(1.0)), 2, 0);
    assert_close_rel(estimate(8, EM_NONE, 100, 1, EM_FRACTION(1.0)), 100, 0);
    /* a max_steps below the epochs' count caps it */
    assert_close_rel(estimate(8, 2, 5, 1, EM_FRACTION(1.0)), 5, 0);
    /* test_num_stepping_batches_accumulate_gradients: ceil(N / A): 10 / 2 -> 5, 10 / 3 -> 4 */
    assert_close_rel(estimate(10, 1, -1, 2, EM_FRACTION(1.0)), 5, 0);
    assert_close_rel(estimate(10, 1, -1, 3, EM_FRACTION(1.0)), 4, 0);
    /* §2.3 [observed]: limit 0.55 of 10 -> N = 5, A = 2 -> 3; an int limit 4 of 10 -> 4 x 2 epochs */
    assert_close_rel(estimate(10, 1, -1, 2, EM_FRACTION(0.55)), 3, 0);
    assert_close_rel(estimate(10, 2, -1, 1, EM_BATCHES(4)), 8, 0);
    /* §2.3 [observed]: max_epochs=0 still gives ceil(N / A) */
    assert_close_rel(estimate(10, 0, -1, 2, EM_FRACTION(1.0)), 5, 0);
}

/* §2.3 [observed]: the GradientAccumulationScheduler is ignored by the estimate: {1: 2, 2: 3}, N = 10,
 * 3 epochs reads 30 in configure_optimizers while 10 + 5 + 4 = 19 steps happen. */
static void test_trainer_loop__estimate_ignores_grad_accum_scheduler(void **state)
{
    (void)state;
    lm *m = lm_new();
    em_loader *train = loader(10);
    em_trainer *t = trainer(config(3));
    const int64_t sched[2][2] = {{1, 2}, {2, 3}};
    assert_ok(em_trainer_add_callback(t, em_grad_accum_scheduler(sched, 2)));
    assert_ok(em_trainer_fit(t, &m->base, train, NULL));
    assert_close_rel(m->est, 30, 0);
    assert_int_equal(em_trainer_global_step(t), 19);
    em_trainer_free(t);
    em_loader_free(train);
    lm_free(m);
}

/* ---- validation scheduling (§9.5) ------------------------------------------------------------------------- */

/* §9.5 [observed]: val_check_interval=0.3 with N = 10 -> validation after batches 2, 5, 8 and not at the
 * epoch end (int(10 * 0.3) = 3 does not divide 10). An int interval 3 gives the same. */
static void test_trainer_loop__val_check_interval_float_and_int(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++) {
        lm *m = lm_new();
        em_trainer_config cfg = config(1);
        cfg.val_check_interval = i == 0 ? EM_FRACTION(0.3) : EM_BATCHES(3);
        cfg.num_sanity_val_steps = 0;
        em_trainer *t = fit_rows(m, cfg, 10, 1, NULL);
        assert_string_equal(where(m, "on_validation_start"), "0:2,0:5,0:8");
        em_trainer_free(t);
        lm_free(m);
    }
}

/* trainer/flags/test_val_check_interval.py::test_val_check_interval: val_check_interval = 1/d runs
 * validation d times per epoch (N = 12: d = 1 -> after 11; d = 3 -> after 3, 7, 11; d = 4 -> after 2, 5,
 * 8, 11), over 2 epochs; on_train_epoch_start runs once per epoch. */
static void test_trainer_loop__val_check_interval_fractions(void **state)
{
    (void)state;
    const int ds[3] = {1, 3, 4};
    for (int i = 0; i < 3; i++) {
        lm *m = lm_new();
        em_trainer_config cfg = config(2);
        cfg.val_check_interval = EM_FRACTION(1.0 / ds[i]);
        em_trainer *t = fit_rows(m, cfg, 12, 1, NULL);
        assert_int_equal(count(m, "on_train_epoch_start"), 2);
        assert_int_equal(count_real(m, "on_validation_epoch_start"), 2 * ds[i]);
        em_trainer_free(t);
        lm_free(m);
    }
}

/* ...::test_validation_check_interval_exceed_data_length_correct (finite data set, A = 1 and 2):
 * check_val_every_n_epoch=None with val_check_interval=3 counts batches across epochs: N = 4,
 * max_steps = 12 / A -> validation at total batches 3, 6, 9, 12; current_epoch 3. */
static void test_trainer_loop__val_check_interval_across_epochs(void **state)
{
    (void)state;
    for (int64_t a = 1; a <= 2; a++) {
        lm *m = lm_new();
        em_trainer_config cfg = config(EM_NONE);
        cfg.max_steps = 12 / a;
        cfg.accumulate_grad_batches = a;
        cfg.val_check_interval = EM_BATCHES(3);
        cfg.check_val_every_n_epoch = EM_NONE;
        cfg.num_sanity_val_steps = 0;
        cfg.limit_val_batches = EM_BATCHES(1);
        em_trainer *t = fit_rows(m, cfg, 4, 2, NULL);
        char got[128] = "";
        size_t off = 0;
        for (int i = 0; i < m->nev; i++)
            if (strcmp(m->ev[i].name, "validation_step") == 0)
                off += (size_t)snprintf(got + off, sizeof got - off, "%s%lld", off ? "," : "",
                                        (long long)(m->ev[i].epoch * 4 + m->ev[i].batch + 1));
        assert_string_equal(got, "3,6,9,12");
        assert_int_equal(em_trainer_current_epoch(t), 3);
        assert_int_equal(em_trainer_global_step(t), 12 / a);
        em_trainer_free(t);
        lm_free(m);
    }
}

/* trainer/flags/test_check_val_every_n_epoch.py::test_check_val_every_n_epoch: every 2nd epoch, with
 * max_epochs 1, 4, 5 -> 0, 2, 2 validation runs. */
static void test_trainer_loop__check_val_every_n_epoch(void **state)
{
    (void)state;
    const int64_t cases[3][2] = {{1, 0}, {4, 2}, {5, 2}};
    for (int i = 0; i < 3; i++) {
        lm *m = lm_new();
        em_trainer_config cfg = config(cases[i][0]);
        cfg.num_sanity_val_steps = 0;
        cfg.limit_val_batches = EM_BATCHES(2);
        cfg.check_val_every_n_epoch = 2;
        em_trainer *t = fit_rows(m, cfg, 3, 4, NULL);
        assert_int_equal(count(m, "on_validation_epoch_start"), cases[i][1]);
        assert_int_equal(count(m, "validation_step"), 2 * cases[i][1]);
        em_trainer_free(t);
        lm_free(m);
    }
}

/* ...::test_check_val_every_n_epoch_with_max_steps: N = 2, every 3rd epoch, max_steps = 8 -> one
 * validation, at global_step 6; current_epoch 4. */
static void test_trainer_loop__check_val_every_n_epoch_with_max_steps(void **state)
{
    (void)state;
    lm *m = lm_new();
    em_trainer_config cfg = config(EM_NONE);
    cfg.max_steps = 8;
    cfg.check_val_every_n_epoch = 3;
    cfg.num_sanity_val_steps = 0;
    em_trainer *t = fit_rows(m, cfg, 2, 1, NULL);
    assert_int_equal(count(m, "validation_step"), 1);
    for (int i = 0; i < m->nev; i++)
        if (strcmp(m->ev[i].name, "validation_step") == 0)
            assert_int_equal(m->ev[i].step, 6);
    assert_int_equal(em_trainer_current_epoch(t), 4);
    assert_int_equal(em_trainer_global_step(t), 8);
    em_trainer_free(t);
    lm_free(m);
}

/* §9.5 [observed] and §1.1 step 9: N = 10, A = 3, val_check_interval 0.5 -> validation after batch 4 (inside
 * the window [3, 4, 5], global_step 1) and after batch 9. On the accumulating batch 4 the gradients are not
 * zeroed: validation sees (4 + 5) / 3 = 3 and the step at batch 5 uses (4 + 5 + 6) / 3 = 5. Before the
 * validation after the stepping batch 9 on_validation_model_zero_grad sets them to None. */
static void test_trainer_loop__validation_inside_accumulation_window_keeps_gradients(void **state)
{
    (void)state;
    lm *m = lm_new();
    em_trainer_config cfg = config(1);
    cfg.accumulate_grad_batches = 3;
    cfg.val_check_interval = EM_FRACTION(0.5);
    cfg.num_sanity_val_steps = 0;
    em_trainer *t = fit_rows(m, cfg, 10, 1, NULL);
    assert_string_equal(where(m, "on_validation_start"), "0:4,0:9");
    double g[2] = {0};
    assert_int_equal(values_of(m, "on_validation_start", g, 2), 2);
    assert_close_rel(g[0], 3.0, 1e-6);
    assert_true(isnan(g[1]));
    for (int i = 0; i < m->nev; i++)
        if (strcmp(m->ev[i].name, "on_validation_start") == 0 && m->ev[i].batch == 4)
            assert_int_equal(m->ev[i].step, 1);
    double s[4] = {0};
    assert_int_equal(values_of(m, "on_before_optimizer_step", s, 4), 4); /* steps at 2, 5, 8, 9 */
    assert_close_rel(s[0], (1 + 2 + 3) / 3.0, 1e-6);
    assert_close_rel(s[1], (4 + 5 + 6) / 3.0, 1e-6);
    assert_close_rel(s[2], (7 + 8 + 9) / 3.0, 1e-6);
    assert_close_rel(s[3], 10 / 3.0, 1e-6);
    assert_true(isnan(grad_item(weight(m)))); /* set to None by the last on_validation_model_zero_grad */
    em_trainer_free(t);
    lm_free(m);
}

/* ---- the sanity check (§9.6) ------------------------------------------------------------------------------- */

/* trainer/test_trainer.py::test_num_sanity_val_steps and ::test_num_sanity_val_steps_neg_one: the sanity
 * check runs min(num_sanity_val_steps, val batches after limit_val_batches) batches; 6 val batches:
 *   steps 4: limit 0.0 -> 0, 1 -> 1, 1.0 -> 4, 0.5 -> 3, 5 -> 4
 *   steps -1: limit 0.0 -> 0, 1 -> 1, 1.0 -> 6, 0.3 -> 1 */
static void test_trainer_loop__num_sanity_val_steps(void **state)
{
    (void)state;
    struct {
        int64_t steps;
        em_amount limit;
        int want;
    } cases[] = {
        {4, EM_FRACTION(0.0), 0}, {4, EM_BATCHES(1), 1}, {4, EM_FRACTION(1.0), 4}, {4, EM_FRACTION(0.5), 3},
        {4, EM_BATCHES(5), 4},    {-1, EM_FRACTION(0.0), 0}, {-1, EM_BATCHES(1), 1}, {-1, EM_FRACTION(1.0), 6},
        {-1, EM_FRACTION(0.3), 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        lm *m = lm_new();
        em_trainer_config cfg = config(EM_NONE);
        cfg.max_steps = 1;
        cfg.num_sanity_val_steps = cases[i].steps;
        cfg.limit_val_batches = cases[i].limit;
        em_trainer *t = fit_rows(m, cfg, 2, 6, NULL);
        assert_int_equal(count_sanity(m, "validation_step"), cases[i].want);
        em_trainer_free(t);
        lm_free(m);
    }
}

/* loops/test_training_loop.py::test_training_starts_with_seed and §9.6 [observed]: the sanity check is
 * numerically inert. With a seed, a shuffled train loader, random noise in training_step and random draws
 * in validation_step, the weights after 2 epochs are the same with 0 and with 2 sanity steps. */
static double train_with_sanity(int64_t sanity_steps)
{
    lm *m = lm_new();
    m->noise = true;
    em_loader *train = loader_ex(6, 2, true, 3);
    em_loader *val = loader(3);
    em_trainer_config cfg = config(2);
    cfg.seed = 42;
    cfg.num_sanity_val_steps = sanity_steps;
    em_trainer *t = trainer(cfg);
    assert_ok(em_trainer_fit(t, &m->base, train, val));
    assert_int_equal(count_sanity(m, "validation_step"), (int)sanity_steps);
    double w = item_of(weight(m));
    em_trainer_free(t);
    em_loader_free(train);
    em_loader_free(val);
    lm_free(m);
    return w;
}

static void test_trainer_loop__sanity_check_does_not_change_training(void **state)
{
    (void)state;
    double w0 = train_with_sanity(0);
    double w2 = train_with_sanity(2);
    assert_true(w0 != 1.0);
    assert_true(w0 == w2);
}

/* ---- callback_metrics (§9.2, §9.3) ------------------------------------------------------------------------- */

/* trainer/logging_/test_train_loop_logging.py (test__training_step__epoch_end__log,
 * test__training_step__log_max_reduce_fx, test_sanity_metrics_are_reset, test_metric_are_properly_reduced):
 * train and val batches of 2, 2, 1 rows, one epoch.
 *   training_step: a = batch_idx (on_step + on_epoch), b = 10 + batch_idx (on_step), m = 2 batch_idx
 *                  (on_epoch only, max)
 *   validation_step: v = 1 + batch_idx (default: on_epoch), vf = batch_idx (on_step + on_epoch)
 * During the epoch (batch 1): a = a_step = 1, b = 11, no a_epoch yet. After fit:
 *   a = a_epoch = (0*2 + 1*2 + 2*1) / 5 = 0.8 (batch-size weighted), a_step = 2, b = 12, m = 4,
 *   v = (1*2 + 2*2 + 3*1) / 5 = 1.8, vf = vf_epoch = 0.8; no vf_step, b_step, b_epoch, m_epoch.
 * The sanity check's v is discarded before on_train_start. */
static void test_trainer_loop__callback_metrics_names_and_values(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->log_mode = LOG_NAMING;
    em_loader *train = loader_ex(5, 2, false, 0);
    em_loader *val = loader_ex(5, 2, false, 0);
    em_trainer *t = trainer(config(1));
    em_status s = em_trainer_fit(t, &m->base, train, val);
    if (s != EM_OK)
        print_error("em_trainer_fit: %s\n", em_trainer_error(t));
    assert_ok(s);

    assert_false(m->sanity_v_present);
    assert_true(m->mid_seen);
    assert_close_rel(m->mid_a, 1.0, 0);
    assert_close_rel(m->mid_a_step, 1.0, 0);
    assert_close_rel(m->mid_b, 11.0, 0);
    assert_false(m->mid_has_a_epoch);

    const struct {
        const char *name;
        double value;
    } want[] = {{"a", 0.8}, {"a_step", 2.0}, {"a_epoch", 0.8}, {"b", 12.0},
                {"m", 4.0}, {"v", 1.8},      {"vf", 0.8},      {"vf_epoch", 0.8}};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        double v = NAN;
        if (!em_trainer_callback_metric(t, want[i].name, &v))
            fail_msg("callback_metrics has no \"%s\"", want[i].name);
        assert_close_rel(v, want[i].value, 1e-6);
    }
    const char *absent[] = {"vf_step", "b_step", "b_epoch", "m_epoch", "m_step", "v_epoch"};
    for (size_t i = 0; i < sizeof absent / sizeof *absent; i++)
        if (em_trainer_callback_metric(t, absent[i], NULL))
            fail_msg("callback_metrics has \"%s\"", absent[i]);
    assert_int_equal(em_trainer_num_callback_metrics(t), sizeof want / sizeof *want);
    for (size_t i = 0; i < em_trainer_num_callback_metrics(t); i++)
        assert_non_null(em_trainer_callback_metric_at(t, i, NULL));
    assert_null(em_trainer_callback_metric_at(t, 99, NULL));

    em_trainer_free(t);
    em_loader_free(train);
    em_loader_free(val);
    lm_free(m);
}

/* ---- the CSV logger ------------------------------------------------------------------------------------------ */

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* One epoch of N = 4 with the CSV logger under a fresh temporary directory; checks metrics.csv against
 * `want` (columns acc, epoch, loss, step; NAN = an empty cell). */
static void check_csv(int64_t accumulate, int64_t every, const double (*want)[4], int want_rows)
{
    char dir[] = "/tmp/ember_trainer_loop_XXXXXX";
    assert_non_null(mkdtemp(dir));
    lm *m = lm_new();
    m->log_mode = LOG_CSV;
    em_trainer_config cfg = config(1);
    cfg.enable_csv_logger = true;
    cfg.default_root_dir = dir;
    cfg.log_every_n_steps = every;
    cfg.accumulate_grad_batches = accumulate;
    em_trainer *t = fit_rows(m, cfg, 4, 0, NULL);
    em_trainer_free(t);
    lm_free(m);

    char path[512];
    snprintf(path, sizeof path, "%s/lightning_logs/version_0/metrics.csv", dir);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        fail_msg("no %s", path);
    char line[256];
    assert_non_null(fgets(line, sizeof line, f));
    assert_string_equal(line, "acc,epoch,loss,step\n");
    int rows = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (rows >= want_rows)
            fail_msg("an extra row: %s", line);
        char *p = line;
        for (int c = 0; c < 4; c++) {
            char *end = p + strcspn(p, ",\n");
            if (isnan(want[rows][c])) {
                if (end != p)
                    fail_msg("row %d column %d should be empty: %s", rows, c, line);
            } else {
                char *num_end;
                double v = strtod(p, &num_end);
                if (num_end != end)
                    fail_msg("row %d column %d is not a number: %s", rows, c, line);
                assert_close_rel(v, want[rows][c], 1e-6);
            }
            p = *end != '\0' ? end + 1 : end;
        }
        rows++;
    }
    fclose(f);
    assert_int_equal(rows, want_rows);
    assert_int_equal(nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS), 0);
}

/* Lightning's CSVLogger (fabric/loggers/csv_logs.py): metrics.csv has the sorted union of the keys as its
 * header, "acc,epoch,loss,step", one row per log_metrics call, empty cells for the keys a row lacks.
 * training_step logs loss = batch_idx (on_step) and acc = 1 + batch_idx (on_epoch), N = 4, one epoch.
 *   log_every_n_steps=2: step rows when (batches_that_stepped + 1) % 2 == 0: batches 1 and 3 (step 1, 3),
 *     then the epoch row: acc = mean(1..4) = 2.5 at step = batches_that_stepped - 1 = 3.
 *   A = 2, log_every_n_steps=1 (§9.4): only stepping batches log, with the logger step counting optimizer
 *     steps: batch 1 at step 0, batch 3 at step 1, the epoch row at step 1. */
static void test_trainer_loop__csv_logger_writes_metrics_csv(void **state)
{
    (void)state;
    const double every2[3][4] = {{NAN, 0, 1, 1}, {NAN, 0, 3, 3}, {2.5, 0, NAN, 3}};
    check_csv(1, 2, every2, 3);
    const double accumulating[3][4] = {{NAN, 0, 1, 0}, {NAN, 0, 3, 1}, {2.5, 0, NAN, 1}};
    check_csv(2, 1, accumulating, 3);
}

/* ---- GradientAccumulationScheduler (§5) ------------------------------------------------------------------------ */

/* callbacks/test_gradient_accumulation_scheduler.py::test_trainer_accumulate_grad_batches_with_callback:
 * N = 10, 4 epochs, SGD.zero_grad calls {1: 2, 3: 4} -> 10 + 5 + 5 + 3, {0: 2, 2: 1} -> 5 + 5 + 10 + 10;
 * the factor in force per epoch is set before the module's on_train_epoch_start; the Trainer's own value
 * stays 1. */
static void test_trainer_loop__grad_accum_scheduler_zero_grad_counts(void **state)
{
    (void)state;
    const int64_t s1[2][2] = {{1, 2}, {3, 4}}, s2[2][2] = {{0, 2}, {2, 1}};
    const int64_t (*scheds[2])[2] = {s1, s2};
    const int want_count[2] = {10 + 5 + 5 + 3, 5 + 5 + 10 + 10};
    const double want_acc[2][4] = {{1, 2, 2, 4}, {2, 2, 1, 1}};
    for (int i = 0; i < 2; i++) {
        lm *m = lm_new();
        em_loader *train = loader(10);
        em_loader *val = loader(1);
        em_trainer *t = trainer(config(4));
        assert_ok(em_trainer_add_callback(t, em_grad_accum_scheduler(scheds[i], 2)));
        assert_int_equal(em_trainer_accumulate_grad_batches(t), 1);
        assert_ok(em_trainer_fit(t, &m->base, train, val));
        assert_int_equal(count(m, "zero_grad"), want_count[i]);
        double acc[4] = {0};
        assert_int_equal(values_of(m, "on_train_epoch_start", acc, 4), 4);
        for (int e = 0; e < 4; e++)
            assert_close_rel(acc[e], want_acc[i][e], 0);
        em_trainer_free(t);
        em_loader_free(train);
        em_loader_free(val);
        lm_free(m);
    }
}

/* ...::test_invalid_keys_for_grad_accum_scheduler, ::test_invalid_values_for_grad_accum_scheduler and the
 * empty dict (§5, §10 #23). */
static void test_trainer_loop__grad_accum_scheduler_rejects_bad_schedules(void **state)
{
    (void)state;
    assert_null(em_grad_accum_scheduler(NULL, 0));
    assert_error_contains("dict cannot be interpreted");
    em_clear_error();
    const int64_t bad_epoch[2][2] = {{1, 2}, {-3, 4}};
    assert_null(em_grad_accum_scheduler(bad_epoch, 2));
    assert_error_contains("Epoch should be an int greater than or equal to 0");
    em_clear_error();
    const int64_t bad_factor[2][2] = {{1, 0}, {3, 4}};
    assert_null(em_grad_accum_scheduler(bad_factor, 2));
    assert_error_contains("Accumulation factor should be an int greater than 0");
    em_clear_error();
}

/* ...::test_unsupported_manual_optimization and ::test_raises_when_accumulate_grad_batches_with_callback
 * (§5, §10 #24): the callback fails the fit (at on_train_start) in manual optimization, and together with a
 * Trainer accumulate_grad_batches != 1. */
static em_tensor *manual_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    return em_mean(em_nn_forward(LM(mb)->net, b->t[0]));
}

static void test_trainer_loop__grad_accum_scheduler_rejected_configurations(void **state)
{
    (void)state;
    const int64_t sched[1][2] = {{1, 2}};
    for (int i = 0; i < 2; i++) {
        lm *m = lm_new();
        em_module_ops ops = lm_ops;
        em_trainer_config cfg = config(1);
        if (i == 0) {
            ops.training_step = manual_step;
            m->base.manual_optimization = true;
        } else {
            cfg.accumulate_grad_batches = 2;
        }
        m->base.ops = &ops;
        em_loader *train = loader(4);
        em_trainer *t = trainer(cfg);
        assert_ok(em_trainer_add_callback(t, em_grad_accum_scheduler(sched, 1)));
        assert_int_not_equal(em_trainer_fit(t, &m->base, train, NULL), EM_OK);
        if (i == 0)
            assert_non_null(strstr(em_trainer_error(t), "not supported for manual optimization"));
        else
            assert_non_null(strstr(em_trainer_error(t), "GradientAccumulationScheduler"));
        assert_non_null(strstr(em_trainer_error(t), "on_train_start"));
        assert_int_equal(count(m, "training_step"), 0);
        em_clear_error();
        em_trainer_free(t);
        em_loader_free(train);
        lm_free(m);
    }
}

/* ---- LR schedulers (§3) ------------------------------------------------------------------------------------------ */

/* The lr seen in on_train_batch_end (after that batch's scheduler steps), formatted "0.1,0.05,...". */
static const char *lrs(const lm *m, const char *name)
{
    static char buf[1024];
    size_t off = 0;
    buf[0] = '\0';
    for (int i = 0; i < m->nev; i++)
        if (strcmp(m->ev[i].name, name) == 0)
            off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%g", off ? "," : "", m->ev[i].v);
    return buf;
}

/* §3.4 [observed]: a step-interval scheduler fires on stepping batches when (batch_idx + 1) % frequency
 * == 0. StepLR(1, 0.5), frequency 2:
 *   N = 12, A = 3 (steps at 2, 5, 8, 11): fires at 5 and 11 only;
 *   N = 7,  A = 2 (steps at 1, 3, 5, 6):  fires at 1, 3, 5, not at the final short-window step 6. */
static void test_trainer_loop__step_scheduler_frequency_counts_batches(void **state)
{
    (void)state;
    const struct {
        int64_t n, a;
        const char *want;
    } cases[] = {
        {12, 3, "0.1,0.1,0.1,0.1,0.1,0.05,0.05,0.05,0.05,0.05,0.05,0.025"},
        {7, 2, "0.1,0.05,0.05,0.025,0.025,0.0125,0.0125"},
    };
    for (int i = 0; i < 2; i++) {
        lm *m = lm_new();
        m->sched = SCHED_STEP_LR;
        m->sched_cfg = (em_scheduler_config){.interval = EM_INTERVAL_STEP, .frequency = 2};
        em_trainer_config cfg = config(1);
        cfg.accumulate_grad_batches = cases[i].a;
        em_trainer *t = fit_rows(m, cfg, cases[i].n, 0, NULL);
        assert_string_equal(lrs(m, "lr"), cases[i].want);
        em_trainer_free(t);
        lm_free(m);
    }
}

/* §3.5 [observed]: an epoch-interval scheduler with frequency 2 fires after epochs 1 and 3, inside the last
 * batch, i.e. before on_train_epoch_end. 4 epochs of 2 batches, StepLR(1, 0.5). */
static void test_trainer_loop__epoch_scheduler_frequency(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->sched = SCHED_STEP_LR;
    m->sched_cfg = (em_scheduler_config){.interval = EM_INTERVAL_EPOCH, .frequency = 2};
    em_trainer *t = fit_rows(m, config(4), 2, 0, NULL);
    assert_string_equal(lrs(m, "epoch_lr"), "0.1,0.05,0.05,0.025");
    assert_string_equal(lrs(m, "lr"), "0.1,0.1,0.1,0.05,0.05,0.05,0.05,0.025");
    em_trainer_free(t);
    lm_free(m);
}

/* trainer/optimization/test_optimizers.py::test_optimizer_with_scheduling: StepLR(1, gamma 0.1) per epoch
 * with val_check_interval=0.5 steps once in one epoch: lr 0.1 -> 0.01 (still 0.1 at the mid-epoch
 * validation). */
static void test_trainer_loop__epoch_scheduler_once_with_mid_epoch_validation(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->sched = SCHED_STEP_LR;
    m->gamma = 0.1;
    em_trainer_config cfg = config(1);
    cfg.val_check_interval = EM_FRACTION(0.5);
    em_trainer *t = fit_rows(m, cfg, 4, 1, NULL);
    assert_int_equal(count_real(m, "on_validation_start"), 2);
    double lr[1] = {0};
    assert_int_equal(values_of(m, "on_train_end", lr, 1), 1);
    assert_close_rel(lr[0], 0.01, 1e-12);
    assert_string_equal(lrs(m, "lr"), "0.1,0.1,0.1,0.01");
    em_trainer_free(t);
    lm_free(m);
}

/* ...::test_lr_scheduler_epoch_step_frequency: 4 epochs -> 4 scheduler steps whatever
 * check_val_every_n_epoch is (1, 2, 3). */
static void test_trainer_loop__epoch_scheduler_ignores_check_val_every_n_epoch(void **state)
{
    (void)state;
    for (int64_t every = 1; every <= 3; every++) {
        lm *m = lm_new();
        m->base.ops = &lm_ops_sched;
        m->sched = SCHED_STEP_LR;
        em_trainer_config cfg = config(4);
        cfg.check_val_every_n_epoch = every;
        cfg.limit_val_batches = EM_BATCHES(2);
        em_trainer *t = fit_rows(m, cfg, 2, 2, NULL);
        assert_int_equal(count(m, "lr_scheduler_step"), 4);
        em_trainer_free(t);
        lm_free(m);
    }
}

/* ...::test_lr_scheduler_strict (§3.6, §10 #25): a plateau scheduler monitoring a metric nobody logs:
 * strict -> the fit fails at the end of the complete epoch ("ReduceLROnPlateau conditioned on metric giraffe
 * which is not available. Available metrics are: ..."); an incomplete epoch (max_steps=1) never gets there;
 * not strict -> a warning, no step. The scheduler is never stepped. */
static void test_trainer_loop__plateau_monitor_missing_strict_and_not_strict(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        lm *m = lm_new();
        m->base.ops = &lm_ops_sched;
        m->sched = SCHED_PLATEAU;
        m->sched_cfg = (em_scheduler_config){.monitor = "giraffe", .not_strict = i == 2};
        em_trainer_config cfg = config(i == 1 ? EM_NONE : 1);
        if (i == 1)
            cfg.max_steps = 1;
        em_status s;
        em_trainer *t = fit_rows(m, cfg, 4, 0, &s);
        if (i == 0) {
            assert_int_not_equal(s, EM_OK);
            assert_non_null(strstr(em_trainer_error(t), "ReduceLROnPlateau conditioned on metric giraffe which is not "
                                                        "available. Available metrics are:"));
        } else {
            assert_ok(s);
        }
        assert_int_equal(count(m, "lr_scheduler_step(metric)"), 0);
        assert_int_equal(count(m, "lr_scheduler_step"), 0);
        em_clear_error();
        em_trainer_free(t);
        lm_free(m);
    }
}

/* §3.5, §3.6 (test_reducelronplateau_scheduling): a plateau scheduler on val_loss is stepped after each
 * epoch's validation with that value (1.0); patience 0, factor 0.1: the second epoch does not improve ->
 * lr 0.01. With check_val_every_n_epoch=2 the metric is missing after epoch 0 and strict fails [observed]. */
static void test_trainer_loop__plateau_scheduler_gets_the_val_metric(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->base.ops = &lm_ops_sched;
    m->sched = SCHED_PLATEAU;
    m->val_logs_loss = true;
    m->sched_cfg = (em_scheduler_config){.monitor = "val_loss"};
    em_trainer *t = fit_rows(m, config(2), 2, 1, NULL);
    double v[2] = {0};
    assert_int_equal(values_of(m, "lr_scheduler_step(metric)", v, 2), 2);
    assert_close_rel(v[0], 1.0, 0);
    assert_close_rel(v[1], 1.0, 0);
    double lr[1] = {0};
    assert_int_equal(values_of(m, "on_train_end", lr, 1), 1);
    assert_close_rel(lr[0], 0.01, 1e-9);
    em_trainer_free(t);
    lm_free(m);

    m = lm_new();
    m->sched = SCHED_PLATEAU;
    m->val_logs_loss = true;
    m->sched_cfg = (em_scheduler_config){.monitor = "val_loss"};
    em_trainer_config cfg = config(2);
    cfg.check_val_every_n_epoch = 2;
    cfg.num_sanity_val_steps = 0;
    em_status s;
    t = fit_rows(m, cfg, 2, 1, &s);
    assert_int_not_equal(s, EM_OK);
    assert_non_null(strstr(em_trainer_error(t), "val_loss"));
    assert_int_equal(em_trainer_current_epoch(t), 0);
    em_clear_error();
    em_trainer_free(t);
    lm_free(m);
}

/* §3.2, §10 #19, #20, #22: em_optim_setup_add_scheduler rejects a plateau scheduler without a monitor
 * (automatic), a negative frequency and a scheduler whose optimizer was not added; a scheduler written in C
 * needs the lr_scheduler_step override in automatic mode, and with it is stepped once per epoch
 * (test_lr_scheduler_step_hook). Every rejection fails the fit before training. */
static void test_trainer_loop__scheduler_configuration_errors(void **state)
{
    (void)state;
    struct {
        enum sched_kind kind;
        em_scheduler_config cfg;
        bool foreign, with_override;
        const char *error; /* NULL: the fit succeeds */
    } cases[] = {
        {SCHED_PLATEAU, {0}, false, false, "must include a monitor"},
        {SCHED_STEP_LR, {.frequency = -1}, false, false, "frequency"},
        {SCHED_STEP_LR, {0}, true, false, "attached with an optimizer that wasn't returned"},
        {SCHED_CUSTOM, {0}, false, false, "lr_scheduler_step"},
        {SCHED_CUSTOM, {0}, false, true, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        lm *m = lm_new();
        if (cases[i].with_override)
            m->base.ops = &lm_ops_sched;
        m->sched = cases[i].kind;
        m->sched_cfg = cases[i].cfg;
        m->sched_foreign = cases[i].foreign;
        em_status s;
        em_trainer *t = fit_rows(m, config(2), 2, 0, &s);
        if (cases[i].error == NULL) {
            assert_ok(s);
            assert_int_equal(count(m, "lr_scheduler_step"), 2);
            double lr[1] = {0};
            assert_int_equal(values_of(m, "on_train_end", lr, 1), 1);
            assert_close_rel(lr[0], 0.1 * 0.25, 1e-12);
        } else {
            assert_int_not_equal(s, EM_OK);
            if (strstr(em_trainer_error(t), cases[i].error) == NULL)
                fail_msg("case %zu: \"%s\" does not contain \"%s\"", i, em_trainer_error(t), cases[i].error);
            assert_int_equal(count(m, "training_step"), 0);
        }
        if (i < 3)
            assert_int_equal(m->sched_add_status, EM_EINVAL);
        em_clear_error();
        em_trainer_free(t);
        lm_free(m);
    }
}

/* ---- misconfiguration (§10) ------------------------------------------------------------------------------------- */

/* §10 #1-#3, #5, #6, #9, #10 and the values Lightning lets through and crashes on (accumulate_grad_batches
 * < 1, negative min_epochs / min_steps): em_trainer_new returns NULL with a message naming the option
 * (trainer/test_trainer.py::test_trainer_max_steps_and_epochs_validation, ::test_invalid_gradient_clip_algo,
 * trainer/flags/test_val_check_interval.py::test_val_check_interval_float_with_none_check_val_every_n_epoch). */
static void test_trainer_loop__invalid_trainer_config(void **state)
{
    (void)state;
    struct {
        const char *what;
        em_trainer_config cfg;
    } cases[16];
    size_t n = 0;
#define BAD(field_assign, msg)                                 \
    do {                                                       \
        cases[n].cfg = config(1);                              \
        cases[n].cfg.field_assign;                             \
        cases[n].what = msg;                                   \
        n++;                                                   \
    } while (0)
    BAD(version = 0, "EM_TRAINER_CONFIG_INIT");
    BAD(max_epochs = -100, "`max_epochs` must be a non-negative integer or -1");
    BAD(max_steps = -2, "`max_steps` must be a non-negative integer or -1");
    BAD(limit_train_batches = EM_FRACTION(1.5), "limit_train_batches");
    BAD(limit_train_batches = EM_BATCHES(2.5), "limit_train_batches");
    BAD(limit_val_batches = EM_FRACTION(-0.1), "limit_val_batches");
    BAD(val_check_interval = EM_FRACTION(1.1), "val_check_interval");
    BAD(check_val_every_n_epoch = 0, "check_val_every_n_epoch");
    BAD(gradient_clip_algorithm = (em_clip_algorithm)7, "gradient_clip_algorithm");
    BAD(precision = (em_precision)9, "precision");
    BAD(accumulate_grad_batches = 0, "accumulate_grad_batches");
    BAD(min_epochs = -1, "min_epochs");
    BAD(min_steps = -1, "min_steps");
#undef BAD
    cases[n].cfg = config(1);
    cases[n].cfg.check_val_every_n_epoch = EM_NONE;
    cases[n].cfg.val_check_interval = EM_FRACTION(0.5);
    cases[n].what = "val_check_interval";
    n++;
    for (size_t i = 0; i < n; i++) {
        em_clear_error();
        assert_null(em_trainer_new(&cases[i].cfg));
        assert_int_equal(em_last_status(), EM_EINVAL);
        if (strstr(em_last_error(), cases[i].what) == NULL)
            fail_msg("case %zu: \"%s\" does not contain \"%s\"", i, em_last_error(), cases[i].what);
    }
    em_clear_error();
    assert_null(em_trainer_new(NULL));
    em_clear_error();

    /* accepted: a negative gradient_clip_val (no clipping, §6.1), 0 limits, max_epochs -1, min_steps 0 */
    em_trainer_config ok = config(-1);
    ok.gradient_clip_val = -1.0;
    ok.max_steps = 0;
    ok.limit_train_batches = EM_BATCHES(0);
    ok.limit_val_batches = EM_FRACTION(0.0);
    ok.min_steps = 0;
    em_trainer *t = em_trainer_new(&ok);
    assert_nonnull_em(t);
    em_trainer_free(t);
}

/* §10 #4, #7, #11 (configuration_validator, _parse_num_batches, _FitLoop.setup_data): errors found at fit
 * start, before any training_step: no training_step / configure_optimizers / train loader; a fraction of the
 * train loader below one batch (trainer/connectors/test_data_connector.py::
 * test_error_raised_with_insufficient_float_limit_train_dataloader); an int val_check_interval above N
 * (test_validation_check_interval_exceed_data_length_wrong). */
static void test_trainer_loop__invalid_fit_configuration(void **state)
{
    (void)state;
    lm *m = lm_new();
    em_loader *train = loader(10);
    em_loader *val = loader(2);

    em_module_ops ops = lm_ops;
    ops.training_step = NULL;
    m->base.ops = &ops;
    em_trainer *t = trainer(config(1));
    assert_int_equal(em_trainer_fit(t, &m->base, train, NULL), EM_EINVAL);
    assert_non_null(strstr(em_trainer_error(t), "training_step"));
    /* the call is named once: "em_trainer_fit: No `training_step()` ...", also in the trainer's copy */
    assert_string_equal(em_trainer_error(t), em_last_error());
    assert_true(strncmp(em_trainer_error(t), "em_trainer_fit: No `training_step()`", 36) == 0);
    ops = lm_ops;
    ops.configure_optimizers = NULL;
    assert_int_equal(em_trainer_fit(t, &m->base, train, NULL), EM_EINVAL);
    assert_non_null(strstr(em_trainer_error(t), "configure_optimizers"));
    m->base.ops = &lm_ops;
    assert_int_not_equal(em_trainer_fit(t, &m->base, NULL, NULL), EM_OK);
    em_trainer_free(t);

    em_trainer_config cfg = config(1);
    cfg.limit_train_batches = EM_FRACTION(0.05); /* int(10 * 0.05) = 0 */
    t = trainer(cfg);
    assert_int_not_equal(em_trainer_fit(t, &m->base, train, NULL), EM_OK);
    assert_non_null(strstr(em_trainer_error(t), "limit_train_batches"));
    em_trainer_free(t);

    cfg = config(1);
    cfg.val_check_interval = EM_BATCHES(100);
    t = trainer(cfg);
    assert_int_not_equal(em_trainer_fit(t, &m->base, train, val), EM_OK);
    assert_non_null(strstr(em_trainer_error(t), "must be less than or equal to the number of the training batches"));
    em_trainer_free(t);

    assert_int_equal(count(m, "training_step"), 0);
    em_clear_error();
    em_loader_free(train);
    em_loader_free(val);
    lm_free(m);
}

/* ---- failures -------------------------------------------------------------------------------------------------------- */

/* A training_step that fails at batch 3 (em_error_set + NULL) stops the fit: em_trainer_fit returns its
 * status, em_trainer_error says where ("epoch 0, batch 3, training_step: boom at batch 3") and the error
 * slot holds it too; nothing after it runs (no on_train_end, no on_fit_end), scopes and grad mode are back
 * to normal, nothing leaks (ASan), and the trainer fits again from zero afterwards. */
static void test_trainer_loop__failing_training_step_stops_fit_with_position(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->fail = FAIL_USER;
    m->fail_epoch = 0;
    m->fail_batch = 3;
    em_loader *train = loader(5);
    em_loader *val = loader(2);
    em_trainer *t = trainer(config(2));
    assert_int_equal(em_trainer_fit(t, &m->base, train, val), EM_EUSER);
    const char *want = "epoch 0, batch 3, training_step: ";
    if (strncmp(em_trainer_error(t), want, strlen(want)) != 0)
        fail_msg("\"%s\" does not start with \"%s\"", em_trainer_error(t), want);
    assert_non_null(strstr(em_trainer_error(t), "boom at batch 3"));
    assert_error_contains("boom at batch 3");
    assert_int_equal(em_trainer_global_step(t), 3);
    assert_int_equal(count(m, "training_step"), 4);
    assert_int_equal(count(m, "on_train_end"), 0);
    assert_int_equal(count(m, "on_fit_end"), 0);
    assert_int_equal(em_scope_depth(), 0);
    assert_true(em_is_grad_enabled());
    assert_null(em_module_trainer(&m->base));

    /* the same trainer and module fit again, counters from zero */
    em_clear_error();
    m->fail = FAIL_NONE;
    m->nev = 0;
    assert_ok(em_trainer_fit(t, &m->base, train, val));
    assert_int_equal(em_trainer_global_step(t), 10);
    assert_string_equal(em_trainer_error(t), "");
    em_trainer_free(t);
    em_loader_free(train);
    em_loader_free(val);
    lm_free(m);
}

/* A failing ember call inside training_step (a shape mismatch in em_mse_loss at epoch 1, batch 0) gives
 * EM_ETORCH and "epoch 1, batch 0, training_step: ..." with libtorch's message. */
static void test_trainer_loop__failing_op_in_training_step(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->fail = FAIL_SHAPE;
    m->fail_epoch = 1;
    m->fail_batch = 0;
    em_loader *train = loader(3);
    em_trainer *t = trainer(config(3));
    assert_int_equal(em_trainer_fit(t, &m->base, train, NULL), EM_ETORCH);
    const char *want = "epoch 1, batch 0, training_step: ";
    if (strncmp(em_trainer_error(t), want, strlen(want)) != 0)
        fail_msg("\"%s\" does not start with \"%s\"", em_trainer_error(t), want);
    assert_non_null(strstr(em_trainer_error(t), "em_mse_loss"));
    assert_int_equal(em_trainer_global_step(t), 3);
    em_clear_error();
    em_trainer_free(t);
    em_loader_free(train);
    lm_free(m);
}

/* A hook returning a failure stops the fit the same way: on_train_batch_end at batch 1 ->
 * "epoch 0, batch 1, on_train_batch_end: batch end boom"; a failing validation_step names validation_step. */
static void test_trainer_loop__failing_hooks_stop_fit(void **state)
{
    (void)state;
    lm *m = lm_new();
    m->fail_batch_end_at = 1;
    em_loader *train = loader(3);
    em_loader *val = loader(2);
    em_trainer *t = trainer(config(1));
    assert_int_equal(em_trainer_fit(t, &m->base, train, NULL), EM_EUSER);
    const char *want = "epoch 0, batch 1, on_train_batch_end: ";
    if (strncmp(em_trainer_error(t), want, strlen(want)) != 0)
        fail_msg("\"%s\" does not start with \"%s\"", em_trainer_error(t), want);
    assert_non_null(strstr(em_trainer_error(t), "batch end boom"));
    assert_int_equal(count(m, "training_step"), 2);

    em_clear_error();
    m->fail_batch_end_at = -1;
    m->fail_validation = true;
    assert_int_equal(em_trainer_fit(t, &m->base, train, val), EM_EUSER);
    assert_non_null(strstr(em_trainer_error(t), "validation_step"));
    assert_non_null(strstr(em_trainer_error(t), "validation boom"));
    assert_int_equal(em_scope_depth(), 0);
    assert_true(em_is_grad_enabled());
    em_clear_error();
    em_trainer_free(t);
    em_loader_free(train);
    em_loader_free(val);
    lm_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define TEST(fn) cmocka_unit_test_setup_teardown(fn, helper_setup, helper_teardown)
        TEST(test_trainer_loop__max_steps_mid_epoch),
        TEST(test_trainer_loop__max_steps_and_max_epochs),
        TEST(test_trainer_loop__max_steps_with_accumulation),
        TEST(test_trainer_loop__zero_limits_train_nothing),
        TEST(test_trainer_loop__on_fit_end_runs_without_training),
        TEST(test_trainer_loop__max_epochs_defaults),
        TEST(test_trainer_loop__min_epochs_override_should_stop),
        TEST(test_trainer_loop__min_steps_override_should_stop),
        TEST(test_trainer_loop__on_train_batch_start_minus_one),
        TEST(test_trainer_loop__minus_one_skips_validation_and_epoch_schedulers),
        TEST(test_trainer_loop__should_stop_mid_epoch_validates_then_stops),
        TEST(test_trainer_loop__minus_one_mid_window_drops_the_window),
        TEST(test_trainer_loop__is_last_batch),
        TEST(test_trainer_loop__validation_runs_in_eval_mode_without_grad),
        TEST(test_trainer_loop__add_callback_during_fit_is_refused),
        TEST(test_trainer_loop__step_plateau_sees_current_step_metric),
        TEST(test_trainer_loop__estimated_stepping_batches),
        TEST(test_trainer_loop__estimate_ignores_grad_accum_scheduler),
        TEST(test_trainer_loop__val_check_interval_float_and_int),
        TEST(test_trainer_loop__val_check_interval_fractions),
        TEST(test_trainer_loop__val_check_interval_across_epochs),
        TEST(test_trainer_loop__check_val_every_n_epoch),
        TEST(test_trainer_loop__check_val_every_n_epoch_with_max_steps),
        TEST(test_trainer_loop__validation_inside_accumulation_window_keeps_gradients),
        TEST(test_trainer_loop__num_sanity_val_steps),
        TEST(test_trainer_loop__sanity_check_does_not_change_training),
        TEST(test_trainer_loop__callback_metrics_names_and_values),
        TEST(test_trainer_loop__csv_logger_writes_metrics_csv),
        TEST(test_trainer_loop__grad_accum_scheduler_zero_grad_counts),
        TEST(test_trainer_loop__grad_accum_scheduler_rejects_bad_schedules),
        TEST(test_trainer_loop__grad_accum_scheduler_rejected_configurations),
        TEST(test_trainer_loop__step_scheduler_frequency_counts_batches),
        TEST(test_trainer_loop__epoch_scheduler_frequency),
        TEST(test_trainer_loop__epoch_scheduler_once_with_mid_epoch_validation),
        TEST(test_trainer_loop__epoch_scheduler_ignores_check_val_every_n_epoch),
        TEST(test_trainer_loop__plateau_monitor_missing_strict_and_not_strict),
        TEST(test_trainer_loop__plateau_scheduler_gets_the_val_metric),
        TEST(test_trainer_loop__scheduler_configuration_errors),
        TEST(test_trainer_loop__invalid_trainer_config),
        TEST(test_trainer_loop__invalid_fit_configuration),
        TEST(test_trainer_loop__failing_training_step_stops_fit_with_position),
        TEST(test_trainer_loop__failing_op_in_training_step),
        TEST(test_trainer_loop__failing_hooks_stop_fit),
#undef TEST
    };
    return cmocka_run_group_tests_name("trainer_loop", tests, NULL, NULL);
}
