/* test_trainer_rules.c: second, independent checks of loop rules that mutation testing found resting on
 * one assertion (or none), each written so that breaking the rule in src/ makes it fail:
 *   - a metrics row on a stepping batch when should_stop is set, whatever log_every_n_steps (§9.4);
 *   - autocast around training_step and validation_step only (§7.2), in both optimization modes;
 *   - bf16-mixed runs are deterministic and really under autocast (closer to float32 than the 2e-2
 *     tolerance of the bf16 conformance cases, but not equal to it);
 *   - step counting in manual mode: steps outside training_step and raw steps never count (§4.3);
 *   - epoch-interval ReduceLROnPlateau does not step after an incomplete epoch (§3.5, §3.6);
 *   - on_validation_model_zero_grad's default: None on a stepping batch, untouched inside a window (§9.5);
 *   - the sanity check leaves the global generator as it found it (§9.6).
 * The rule numbers are those of docs/LIGHTNING_RULES.md.
 */
#define _XOPEN_SOURCE 700 /* mkdtemp, nftw */

#include "helpers.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- shared helpers ---------------------------------------------------------------------------------------- */

static em_trainer_config config(int64_t max_epochs) { return helper_quiet_config(max_epochs); }

/* rows x[i] = (i + 1) / 4 (one column), or `cols` columns of a fixed pseudo-random pattern with a target y. */
static em_loader *rows_loader(int64_t rows, int64_t cols, int64_t batch_size, bool with_y)
{
    em_scope_begin();
    float *x = calloc((size_t)(rows * cols), sizeof *x);
    float *y = calloc((size_t)rows, sizeof *y);
    assert_non_null(x);
    assert_non_null(y);
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < cols; j++)
            x[i * cols + j] = cols == 1 ? (float)(i + 1) / 4.0f : (float)sin(0.7 * (double)(i * cols + j) + 0.3);
        y[i] = (float)cos(1.3 * (double)i);
    }
    em_tensor *t[2] = {em_tensor_from(x, EM_F32, EM_SHAPE(rows, cols), NULL),
                       em_tensor_from(y, EM_F32, EM_SHAPE(rows, 1), NULL)};
    free(x);
    free(y);
    em_loader *l = em_tensor_loader(t, with_y ? 2 : 1, &(em_loader_opts){.batch_size = batch_size});
    assert_nonnull_em(l);
    assert_ok(em_scope_end());
    return l;
}

static double item_of(const em_tensor *t)
{
    em_scope_begin();
    double v = em_tensor_item(t);
    em_scope_end();
    return v;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* A module on one Linear(1, 1, bias=False) weight w = 1 whose loss is mean(w * x), SGD(lr = 0.1). */
typedef struct simple {
    em_module base;
    em_nn *net;
} simple;

static em_status simple_configure_optimizers(em_module *mb, em_optim_setup *setup)
{
    simple *m = (simple *)mb;
    em_params *ps = em_nn_parameters(m->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static void simple_init(simple *m, const em_module_ops *ops, bool automatic)
{
    memset(m, 0, sizeof *m);
    m->base.ops = ops;
    m->base.manual_optimization = !automatic;
    m->net = em_nn_linear(1, 1, false);
    assert_nonnull_em(m->net);
    m->base.layers = m->net;
    float w = 1.0f;
    assert_ok(em_nn_set(m->net, "weight", &w, EM_F32, 1));
}

static em_tensor *simple_loss(simple *m, const em_batch *b)
{
    return em_mean(em_nn_forward(m->net, b->t[0]));
}

/* ---- §9.4: should_stop logs the step row --------------------------------------------------------------------- */

typedef struct csv_module {
    simple s;
    int64_t stop_at; /* a callback sets should_stop in on_train_batch_end of this batch (-1: never) */
} csv_module;

static em_tensor *csv_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    if (em_log(mb, "loss", 10.0 + (double)batch_idx, 0) != EM_OK) /* training defaults: on_step only */
        return NULL;
    return simple_loss((simple *)mb, b);
}

static em_status stop_cb_batch_end(em_callback *cb, em_trainer *t, em_module *m, const em_tensor *loss,
                                   const em_batch *b, int64_t batch_idx)
{
    (void)cb, (void)loss, (void)b;
    if (batch_idx == ((csv_module *)m)->stop_at)
        em_trainer_set_should_stop(t, true);
    return EM_OK;
}

static const em_callback_ops stop_cb_ops = {
    .version = EM_CALLBACK_OPS_VERSION, .name = "StopAt", .on_train_batch_end = stop_cb_batch_end};

static const em_module_ops csv_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = csv_training_step,
    .configure_optimizers = simple_configure_optimizers,
};

/* One epoch of 8 batches with log_every_n_steps = 50 and the CSV logger in a fresh directory; returns the
 * number of rows with a "loss" value and their (step, loss) pairs. */
static int csv_step_rows(int64_t stop_at, double (*out)[2], int max)
{
    char dir[] = "/tmp/ember_trainer_rules_XXXXXX";
    assert_non_null(mkdtemp(dir));
    csv_module m;
    simple_init(&m.s, &csv_ops, true);
    m.stop_at = stop_at;
    em_trainer_config cfg = config(1);
    cfg.enable_csv_logger = true;
    cfg.log_dir = dir;
    cfg.log_every_n_steps = 50;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    assert_ok(em_trainer_add_callback(t, em_callback_new(&stop_cb_ops, NULL)));
    em_loader *train = rows_loader(8, 1, 1, false);
    em_status s = em_trainer_fit(t, &m.s.base, train, NULL);
    if (s != EM_OK)
        fail_msg("fit: %s", em_trainer_error(t));
    assert_int_equal(em_trainer_global_step(t), stop_at >= 0 ? stop_at + 1 : 8);
    em_trainer_free(t);
    em_loader_free(train);
    em_nn_free(m.s.net);

    char path[512];
    snprintf(path, sizeof path, "%s/metrics.csv", dir);
    int n = 0;
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        char line[512];
        int loss_col = -1, step_col = -1;
        if (fgets(line, sizeof line, f) != NULL) {
            int c = 0;
            for (char *p = line;; c++) {
                size_t len = strcspn(p, ",\n");
                if (len == 4 && strncmp(p, "loss", 4) == 0)
                    loss_col = c;
                if (len == 4 && strncmp(p, "step", 4) == 0)
                    step_col = c;
                if (p[len] != ',')
                    break;
                p += len + 1;
            }
        }
        assert_true(step_col >= 0);
        while (loss_col >= 0 && fgets(line, sizeof line, f) != NULL) {
            double loss = NAN, step = NAN;
            int c = 0;
            for (char *p = line;; c++) {
                size_t len = strcspn(p, ",\n");
                if (len > 0 && c == loss_col)
                    loss = strtod(p, NULL);
                if (len > 0 && c == step_col)
                    step = strtod(p, NULL);
                if (p[len] != ',')
                    break;
                p += len + 1;
            }
            if (isnan(loss))
                continue; /* an epoch row */
            assert_true(n < max);
            out[n][0] = step;
            out[n][1] = loss;
            n++;
        }
        fclose(f);
    }
    assert_int_equal(nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS), 0);
    return n;
}

/* §9.4 (logger_connector.py L49-L64, should_update_logs): step metrics reach the logger when
 * (batches_that_stepped + 1) % log_every_n_steps == 0 OR should_stop is set. With 50 and 8 batches no step row
 * is written; when a callback sets should_stop in on_train_batch_end of batch 2 (a stepping batch: A = 1),
 * that batch's row is written at step 2 (batches_that_stepped before its increment), loss = 10 + 2. */
static void test_rules__should_stop_writes_the_step_row(void **state)
{
    (void)state;
    double rows[16][2];
    assert_int_equal(csv_step_rows(-1, rows, 16), 0);
    int n = csv_step_rows(2, rows, 16);
    assert_int_equal(n, 1);
    assert_close_rel(rows[0][0], 2.0, 0);
    assert_close_rel(rows[0][1], 12.0, 1e-9);
}

/* ---- §7.2: autocast around the step functions only ------------------------------------------------------------- */

enum { DT_BF16, DT_F32, DT_OTHER };
enum {
    H_TRAINING_STEP, H_VALIDATION_STEP, H_CONFIGURE_OPTIMIZERS, H_OPTIMIZER_STEP, H_OPTIMIZER_ZERO_GRAD,
    H_LR_SCHEDULER_STEP, H_CONFIGURE_GRADIENT_CLIPPING, H_BACKWARD, H_ON_FIT_START, H_ON_FIT_END,
    H_ON_TRAIN_START, H_ON_TRAIN_END, H_ON_TRAIN_EPOCH_START, H_ON_TRAIN_EPOCH_END, H_ON_TRAIN_BATCH_START,
    H_ON_TRAIN_BATCH_END, H_ON_BEFORE_BACKWARD, H_ON_AFTER_BACKWARD, H_ON_BEFORE_OPTIMIZER_STEP,
    H_ON_BEFORE_ZERO_GRAD, H_ON_VALIDATION_START, H_ON_VALIDATION_END, H_ON_VALIDATION_EPOCH_START,
    H_ON_VALIDATION_EPOCH_END, H_COUNT
};
static const char *const hook_names[H_COUNT] = {
    "training_step", "validation_step", "configure_optimizers", "optimizer_step", "optimizer_zero_grad",
    "lr_scheduler_step", "configure_gradient_clipping", "backward", "on_fit_start", "on_fit_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start",
    "on_train_batch_end", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_before_zero_grad", "on_validation_start", "on_validation_end", "on_validation_epoch_start",
    "on_validation_epoch_end"};

typedef struct dt_module {
    em_module base;
    em_nn *net; /* Linear(2, 1) */
    int seen[H_COUNT][3];
} dt_module;

static dt_module *DT(em_module *m) { return (dt_module *)m; }

/* The dtype of a Linear's output computed here (autocast casts it to bfloat16 when active). */
static void probe(em_module *mb, int hook)
{
    dt_module *m = DT(mb);
    em_scope_begin();
    em_tensor *out = em_nn_forward(m->net, em_ones(EM_SHAPE(1, 2), NULL));
    em_dtype d = out != NULL ? em_tensor_dtype(out) : (em_dtype)-1;
    em_scope_end();
    m->seen[hook][d == EM_BF16 ? DT_BF16 : d == EM_F32 ? DT_F32 : DT_OTHER]++;
}

static em_tensor *dt_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    dt_module *m = DT(mb);
    probe(mb, H_TRAINING_STEP);
    em_tensor *loss = em_mean(em_nn_forward(m->net, b->t[0]));
    if (!mb->manual_optimization || loss == NULL)
        return loss;
    /* manual: zero_grad, backward and step from inside training_step (under its autocast) */
    em_optimizer *opt = em_optimizers(mb, NULL)[0];
    if (em_optimizer_zero_grad(opt) != EM_OK || em_manual_backward(mb, loss) != EM_OK ||
        em_optimizer_step(opt, NULL) != EM_OK)
        return NULL;
    size_t n = 0;
    em_scheduler **s = em_lr_schedulers(mb, &n);
    if (n > 0 && em_scheduler_step(s[0]) != EM_OK)
        return NULL;
    return loss;
}

static em_status dt_validation_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)b, (void)batch_idx;
    probe(mb, H_VALIDATION_STEP);
    return EM_OK;
}

static em_status dt_configure_optimizers(em_module *mb, em_optim_setup *setup)
{
    dt_module *m = DT(mb);
    probe(mb, H_CONFIGURE_OPTIMIZERS);
    em_params *ps = em_nn_parameters(m->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.01});
    em_params_free(ps);
    em_status s = em_optim_setup_add(setup, opt);
    if (s != EM_OK)
        return s;
    return em_optim_setup_add_scheduler(setup, em_step_lr(opt, 1, 0.9),
                                        &(em_scheduler_config){.interval = EM_INTERVAL_STEP});
}

static em_status dt_optimizer_step(em_module *mb, int64_t epoch, int64_t batch_idx, em_optimizer *opt,
                                   const em_closure *closure)
{
    (void)epoch, (void)batch_idx;
    probe(mb, H_OPTIMIZER_STEP);
    return em_optimizer_step(opt, closure);
}

static em_status dt_optimizer_zero_grad(em_module *mb, int64_t epoch, int64_t batch_idx, em_optimizer *opt)
{
    (void)epoch, (void)batch_idx;
    probe(mb, H_OPTIMIZER_ZERO_GRAD);
    return em_optimizer_zero_grad(opt);
}

static em_status dt_lr_scheduler_step(em_module *mb, em_scheduler *s, bool has_metric, double metric)
{
    probe(mb, H_LR_SCHEDULER_STEP);
    return has_metric ? em_scheduler_step_metric(s, metric) : em_scheduler_step(s);
}

static em_status dt_configure_gradient_clipping(em_module *mb, em_optimizer *opt, double v, em_clip_algorithm a)
{
    probe(mb, H_CONFIGURE_GRADIENT_CLIPPING);
    return em_clip_gradients(mb, opt, v, a);
}

static em_status dt_backward(em_module *mb, em_tensor *loss, bool retain_graph)
{
    probe(mb, H_BACKWARD);
    return em_backward_ex(loss, NULL, retain_graph);
}

#define DT_HOOK(fn, id)                                                                                        \
    static em_status fn(em_module *mb)                                                                         \
    {                                                                                                          \
        probe(mb, id);                                                                                         \
        return EM_OK;                                                                                          \
    }
DT_HOOK(dt_on_fit_start, H_ON_FIT_START)
DT_HOOK(dt_on_fit_end, H_ON_FIT_END)
DT_HOOK(dt_on_train_start, H_ON_TRAIN_START)
DT_HOOK(dt_on_train_end, H_ON_TRAIN_END)
DT_HOOK(dt_on_train_epoch_start, H_ON_TRAIN_EPOCH_START)
DT_HOOK(dt_on_train_epoch_end, H_ON_TRAIN_EPOCH_END)
DT_HOOK(dt_on_after_backward, H_ON_AFTER_BACKWARD)
DT_HOOK(dt_on_validation_start, H_ON_VALIDATION_START)
DT_HOOK(dt_on_validation_end, H_ON_VALIDATION_END)
DT_HOOK(dt_on_validation_epoch_start, H_ON_VALIDATION_EPOCH_START)
DT_HOOK(dt_on_validation_epoch_end, H_ON_VALIDATION_EPOCH_END)

static int dt_on_train_batch_start(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)b, (void)batch_idx;
    probe(mb, H_ON_TRAIN_BATCH_START);
    return 0;
}

static em_status dt_on_train_batch_end(em_module *mb, const em_tensor *loss, const em_batch *b, int64_t batch_idx)
{
    (void)loss, (void)b, (void)batch_idx;
    probe(mb, H_ON_TRAIN_BATCH_END);
    return EM_OK;
}

static em_status dt_on_before_backward(em_module *mb, em_tensor *loss)
{
    (void)loss;
    probe(mb, H_ON_BEFORE_BACKWARD);
    return EM_OK;
}

static em_status dt_on_before_optimizer_step(em_module *mb, em_optimizer *opt)
{
    (void)opt;
    probe(mb, H_ON_BEFORE_OPTIMIZER_STEP);
    return EM_OK;
}

static em_status dt_on_before_zero_grad(em_module *mb, em_optimizer *opt)
{
    (void)opt;
    probe(mb, H_ON_BEFORE_ZERO_GRAD);
    return EM_OK;
}

static const em_module_ops dt_ops_auto = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = dt_training_step,
    .configure_optimizers = dt_configure_optimizers,
    .validation_step = dt_validation_step,
    .optimizer_step = dt_optimizer_step,
    .optimizer_zero_grad = dt_optimizer_zero_grad,
    .lr_scheduler_step = dt_lr_scheduler_step,
    .configure_gradient_clipping = dt_configure_gradient_clipping,
    .backward = dt_backward,
    .on_fit_start = dt_on_fit_start,
    .on_fit_end = dt_on_fit_end,
    .on_train_start = dt_on_train_start,
    .on_train_end = dt_on_train_end,
    .on_train_epoch_start = dt_on_train_epoch_start,
    .on_train_epoch_end = dt_on_train_epoch_end,
    .on_train_batch_start = dt_on_train_batch_start,
    .on_train_batch_end = dt_on_train_batch_end,
    .on_before_backward = dt_on_before_backward,
    .on_after_backward = dt_on_after_backward,
    .on_before_optimizer_step = dt_on_before_optimizer_step,
    .on_before_zero_grad = dt_on_before_zero_grad,
    .on_validation_start = dt_on_validation_start,
    .on_validation_end = dt_on_validation_end,
    .on_validation_epoch_start = dt_on_validation_epoch_start,
    .on_validation_epoch_end = dt_on_validation_epoch_end,
};

/* 2 epochs of 3 batches (2 rows each) with validation (2 batches) and the sanity check. */
static void dt_fit(dt_module *m, const em_module_ops *ops, bool automatic, em_precision precision)
{
    memset(m, 0, sizeof *m);
    m->base.ops = ops;
    m->base.manual_optimization = !automatic;
    m->net = em_nn_linear(2, 1, true);
    assert_nonnull_em(m->net);
    m->base.layers = m->net;
    em_trainer_config cfg = config(2);
    cfg.precision = precision;
    if (automatic)
        cfg.gradient_clip_val = 1.0;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    em_loader *train = rows_loader(6, 2, 2, false);
    em_loader *val = rows_loader(4, 2, 2, false);
    em_status s = em_trainer_fit(t, &m->base, train, val);
    if (s != EM_OK)
        fail_msg("fit: %s", em_trainer_error(t));
    em_trainer_free(t);
    em_loader_free(train);
    em_loader_free(val);
    em_nn_free(m->net);
}

/* Every hook in `bf16` ran only under autocast (bfloat16 output), every other hook that ran at all only
 * without it (float32); `must_run` hooks ran. */
static void dt_check(const dt_module *m, const int *bf16, size_t n_bf16, const int *must_run, size_t n_must)
{
    for (int h = 0; h < H_COUNT; h++) {
        bool want_bf16 = false;
        for (size_t i = 0; i < n_bf16; i++)
            want_bf16 |= bf16[i] == h;
        const int *c = m->seen[h];
        if (c[DT_OTHER] != 0 || c[want_bf16 ? DT_F32 : DT_BF16] != 0)
            fail_msg("%s: %d bfloat16, %d float32, %d other outputs; expected only %s", hook_names[h], c[DT_BF16],
                     c[DT_F32], c[DT_OTHER], want_bf16 ? "bfloat16" : "float32");
    }
    for (size_t i = 0; i < n_must; i++)
        if (m->seen[must_run[i]][DT_BF16] + m->seen[must_run[i]][DT_F32] == 0)
            fail_msg("%s never ran", hook_names[must_run[i]]);
}

/* §7.2 (precision.py train_step_context / val_step_context; amp.py MixedPrecision.forward_context): under
 * bf16-mixed only training_step and validation_step run under autocast; backward, the hooks around it, the
 * optimizer step, clipping, the schedulers and every epoch / fit hook run outside it. Under 32-true nothing
 * does. */
static void test_rules__autocast_only_in_step_functions_automatic(void **state)
{
    (void)state;
    static const int all_auto[] = {
        H_TRAINING_STEP, H_VALIDATION_STEP, H_CONFIGURE_OPTIMIZERS, H_OPTIMIZER_STEP, H_OPTIMIZER_ZERO_GRAD,
        H_LR_SCHEDULER_STEP, H_CONFIGURE_GRADIENT_CLIPPING, H_BACKWARD, H_ON_FIT_START, H_ON_FIT_END,
        H_ON_TRAIN_START, H_ON_TRAIN_END, H_ON_TRAIN_EPOCH_START, H_ON_TRAIN_EPOCH_END, H_ON_TRAIN_BATCH_START,
        H_ON_TRAIN_BATCH_END, H_ON_BEFORE_BACKWARD, H_ON_AFTER_BACKWARD, H_ON_BEFORE_OPTIMIZER_STEP,
        H_ON_BEFORE_ZERO_GRAD, H_ON_VALIDATION_START, H_ON_VALIDATION_END, H_ON_VALIDATION_EPOCH_START,
        H_ON_VALIDATION_EPOCH_END};
    static const int steps[] = {H_TRAINING_STEP, H_VALIDATION_STEP};
    dt_module m;
    dt_fit(&m, &dt_ops_auto, true, EM_PRECISION_BF16_MIXED);
    dt_check(&m, steps, 2, all_auto, sizeof all_auto / sizeof *all_auto);
    dt_fit(&m, &dt_ops_auto, true, EM_PRECISION_32_TRUE);
    dt_check(&m, NULL, 0, all_auto, sizeof all_auto / sizeof *all_auto);
}

/* The same in manual optimization: manual_backward and the optimizer step are called from inside
 * training_step, so their hooks run under its autocast as in Lightning (the strategy's training_step holds
 * the autocast context while the user's code runs); everything outside training_step runs without it. */
static void test_rules__autocast_only_in_step_functions_manual(void **state)
{
    (void)state;
    static const int ran[] = {H_TRAINING_STEP, H_VALIDATION_STEP, H_BACKWARD, H_ON_TRAIN_BATCH_START,
                              H_ON_TRAIN_BATCH_END, H_ON_BEFORE_BACKWARD, H_ON_AFTER_BACKWARD,
                              H_ON_BEFORE_OPTIMIZER_STEP, H_ON_TRAIN_EPOCH_END, H_ON_VALIDATION_EPOCH_END,
                              H_ON_TRAIN_START, H_ON_FIT_END};
    static const int in_step[] = {H_TRAINING_STEP, H_VALIDATION_STEP, H_BACKWARD, H_ON_BEFORE_BACKWARD,
                                  H_ON_AFTER_BACKWARD, H_ON_BEFORE_OPTIMIZER_STEP, H_ON_BEFORE_ZERO_GRAD,
                                  H_OPTIMIZER_ZERO_GRAD};
    em_module_ops ops = dt_ops_auto;
    ops.optimizer_step = NULL; /* automatic-only hooks: Lightning refuses them in manual mode */
    ops.optimizer_zero_grad = NULL;
    ops.configure_gradient_clipping = NULL;
    ops.lr_scheduler_step = NULL;
    dt_module m;
    dt_fit(&m, &ops, false, EM_PRECISION_BF16_MIXED);
    dt_check(&m, in_step, sizeof in_step / sizeof *in_step, ran, sizeof ran / sizeof *ran);
    dt_fit(&m, &ops, false, EM_PRECISION_32_TRUE);
    dt_check(&m, NULL, 0, ran, sizeof ran / sizeof *ran);
}

/* ---- bf16-mixed: deterministic, and really under autocast ------------------------------------------------------- */

#define BF_MAX 64

typedef struct bf_module {
    em_module base;
    em_nn *net; /* Linear(4, 1) */
    double loss[BF_MAX];
    int n;
} bf_module;

static em_tensor *bf_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    bf_module *m = (bf_module *)mb;
    em_tensor *loss = em_mse_loss(em_nn_forward(m->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
    if (loss != NULL && m->n < BF_MAX)
        m->loss[m->n++] = em_tensor_item(loss);
    return loss;
}

static em_status bf_configure_optimizers(em_module *mb, em_optim_setup *setup)
{
    bf_module *m = (bf_module *)mb;
    em_params *ps = em_nn_parameters(m->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1, .momentum = 0.9});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static const em_module_ops bf_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = bf_training_step,
    .configure_optimizers = bf_configure_optimizers,
};

static const float bf_w0[4] = {0.31f, -0.47f, 0.22f, 0.05f};
static const float bf_b0 = -0.13f;

static em_nn *bf_net(void)
{
    em_nn *net = em_nn_linear(4, 1, true);
    assert_nonnull_em(net);
    assert_ok(em_nn_set(net, "weight", bf_w0, EM_F32, 4));
    assert_ok(em_nn_set(net, "bias", &bf_b0, EM_F32, 1));
    return net;
}

/* 3 epochs of 4 batches (16 rows, batch 4); the losses and the final weights (5 floats). */
static void bf_fit(bf_module *m, em_precision precision, float final_w[5])
{
    memset(m, 0, sizeof *m);
    m->base.ops = &bf_ops;
    m->base.manual_optimization = false;
    m->net = bf_net();
    m->base.layers = m->net;
    em_trainer_config cfg = config(3);
    cfg.precision = precision;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    em_loader *train = rows_loader(16, 4, 4, true);
    em_status s = em_trainer_fit(t, &m->base, train, NULL);
    if (s != EM_OK)
        fail_msg("fit: %s", em_trainer_error(t));
    assert_int_equal(m->n, 12);
    helper_values(em_nn_get(m->net, "weight"), final_w, 4);
    helper_values(em_nn_get(m->net, "bias"), final_w + 4, 1);
    em_trainer_free(t);
    em_loader_free(train);
    em_nn_free(m->net);
}

/* The same bf16-mixed fit twice in one process gives bit-identical losses and weights: nothing in the
 * autocast path carries state from one fit to the next or depends on timing. (The bf16 conformance cases
 * allow 2e-2, about 1e5 times the error ember actually makes; this pins the exactness they cannot.) */
static void test_rules__bf16_mixed_fit_is_deterministic(void **state)
{
    (void)state;
    bf_module a, b;
    float wa[5], wb[5];
    bf_fit(&a, EM_PRECISION_BF16_MIXED, wa);
    bf_fit(&b, EM_PRECISION_BF16_MIXED, wb);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.loss, b.loss, sizeof a.loss[0] * (size_t)a.n);
    assert_memory_equal(wa, wb, sizeof wa);
}

/* bf16-mixed against 32-true on the same data and weights: every loss within 1e-2 (relative, bfloat16 has
 * an 8-bit mantissa) but not all within 1e-7 (so autocast was on), and the first loss is exactly the one
 * a hand-made bfloat16 forward gives: Linear on bfloat16 copies of x, W and b (autocast's lower-precision
 * list), mse_loss in float32 (its float32 list). */
static void test_rules__bf16_mixed_is_close_to_float32_but_not_equal(void **state)
{
    (void)state;
    bf_module h, f;
    float wh[5], wf[5];
    bf_fit(&h, EM_PRECISION_BF16_MIXED, wh);
    bf_fit(&f, EM_PRECISION_32_TRUE, wf);
    double max_diff = 0;
    for (int i = 0; i < h.n; i++) {
        assert_close(h.loss[i], f.loss[i], 1e-2, 1e-4);
        max_diff = fmax(max_diff, fabs(h.loss[i] - f.loss[i]));
    }
    if (!(max_diff > 1e-7))
        fail_msg("bf16-mixed losses equal the float32 ones within %g: autocast was not on", max_diff);
    for (int i = 0; i < 5; i++)
        assert_close(wh[i], wf[i], 1e-2, 1e-3);

    em_scope_begin();
    em_loader *train = rows_loader(16, 4, 4, true);
    em_batch b = {0};
    assert_ok(em_loader_get(train, 0, 0, &b));
    em_nn *net = bf_net();
    em_tensor *out = em_linear(em_to_dtype(b.t[0], EM_BF16), em_to_dtype(em_nn_get(net, "weight"), EM_BF16),
                               em_to_dtype(em_nn_get(net, "bias"), EM_BF16));
    em_tensor *loss = em_mse_loss(em_to_dtype(out, EM_F32), b.t[1], EM_REDUCTION_MEAN);
    assert_nonnull_em(loss);
    assert_close(h.loss[0], em_tensor_item(loss), 1e-6, 0);
    em_nn_free(net);
    em_loader_free(train);
    em_scope_end();
}

/* ---- §4.3: which manual steps count in global_step ----------------------------------------------------------------- */

typedef struct raw_module {
    simple s;
    bool raw_in_step;         /* training_step also steps the raw optimizer */
    int64_t step_at_batch_end[16]; /* global_step seen in on_train_batch_end after its extra steps */
    int n_end;
} raw_module;

static em_tensor *raw_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    raw_module *m = (raw_module *)mb;
    em_optimizer *opt = em_optimizers(mb, NULL)[0];
    em_tensor *loss = simple_loss(&m->s, b);
    if (em_optimizer_zero_grad(opt) != EM_OK || em_manual_backward(mb, loss) != EM_OK ||
        em_optimizer_step(opt, NULL) != EM_OK)
        return NULL;
    if (m->raw_in_step && em_optimizer_step(em_optimizer_inner(opt), NULL) != EM_OK)
        return NULL;
    return NULL;
}

/* After training_step returned: a step of the LightningOptimizer and one of the raw optimizer. */
static em_status raw_on_train_batch_end(em_module *mb, const em_tensor *loss, const em_batch *b, int64_t batch_idx)
{
    (void)loss, (void)b, (void)batch_idx;
    raw_module *m = (raw_module *)mb;
    em_optimizer *opt = em_optimizers(mb, NULL)[0];
    em_status s = em_optimizer_step(opt, NULL);
    if (s == EM_OK)
        s = em_optimizer_step(em_optimizer_inner(opt), NULL);
    if (m->n_end < 16)
        m->step_at_batch_end[m->n_end++] = em_trainer_global_step(em_module_trainer(mb));
    return s;
}

static em_status raw_on_train_end(em_module *mb)
{
    raw_module *m = (raw_module *)mb;
    /* every step above was real: 1 (+1 raw) in training_step and 2 in on_train_batch_end per batch */
    int64_t per_batch = m->raw_in_step ? 4 : 3;
    if (em_optimizer_step_count(em_optimizer_inner(em_optimizers(mb, NULL)[0])) != 4 * per_batch)
        return em_error_set(EM_EUSER, "the optimizer made %lld steps, expected %lld",
                            (long long)em_optimizer_step_count(em_optimizer_inner(em_optimizers(mb, NULL)[0])),
                            (long long)(4 * per_batch));
    return EM_OK;
}

static const em_module_ops raw_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = raw_training_step,
    .configure_optimizers = simple_configure_optimizers,
    .on_train_batch_end = raw_on_train_batch_end,
    .on_train_end = raw_on_train_end,
};

/* §4.3 (manual.py on_run_start / on_run_end install and remove the LightningOptimizer step counters;
 * optimizer.py LightningOptimizer.step): global_step counts the LightningOptimizer steps made while
 * training_step runs; a LightningOptimizer step from on_train_batch_end and every raw optimizer step (in
 * either place) are real updates that do not count. 4 batches, one counted step each. */
static void test_rules__manual_steps_outside_training_step_do_not_count(void **state)
{
    (void)state;
    for (int raw_in_step = 0; raw_in_step < 2; raw_in_step++) {
        raw_module m;
        memset(&m, 0, sizeof m);
        simple_init(&m.s, &raw_ops, false);
        m.raw_in_step = raw_in_step;
        em_trainer_config cfg = config(1);
        em_trainer *t = em_trainer_new(&cfg);
        assert_nonnull_em(t);
        em_loader *train = rows_loader(4, 1, 1, false);
        em_status s = em_trainer_fit(t, &m.s.base, train, NULL);
        if (s != EM_OK)
            fail_msg("fit: %s", em_trainer_error(t));
        assert_int_equal(em_trainer_global_step(t), 4);
        assert_int_equal(m.n_end, 4);
        for (int i = 0; i < 4; i++)
            assert_int_equal(m.step_at_batch_end[i], i + 1);
        em_trainer_free(t);
        em_loader_free(train);
        em_nn_free(m.s.net);
    }
}

/* ---- §3.5 / §3.6: ReduceLROnPlateau after an incomplete epoch --------------------------------------------------- */

typedef struct plateau_module {
    simple s;
    int64_t skip_epoch, skip_batch; /* on_train_batch_start returns EM_SKIP_REST_OF_EPOCH there */
    int64_t plateau_epochs[16];     /* current_epoch at each plateau step */
    int n_plateau;
} plateau_module;

static em_tensor *plateau_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    if (em_log(mb, "m", 1.0, EM_LOG_ON_EPOCH | EM_LOG_NOT_ON_STEP) != EM_OK)
        return NULL;
    return simple_loss((simple *)mb, b);
}

static em_status plateau_configure_optimizers(em_module *mb, em_optim_setup *setup)
{
    simple *m = (simple *)mb;
    em_params *ps = em_nn_parameters(m->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    em_status s = em_optim_setup_add(setup, opt);
    if (s != EM_OK)
        return s;
    return em_optim_setup_add_scheduler(setup, em_reduce_lr_on_plateau(opt, NULL),
                                        &(em_scheduler_config){.interval = EM_INTERVAL_EPOCH, .monitor = "m"});
}

static em_status plateau_lr_scheduler_step(em_module *mb, em_scheduler *s, bool has_metric, double metric)
{
    plateau_module *m = (plateau_module *)mb;
    if (!has_metric)
        return em_error_set(EM_EUSER, "a plateau step without its metric");
    if (m->n_plateau < 16)
        m->plateau_epochs[m->n_plateau++] = em_trainer_current_epoch(em_module_trainer(mb));
    return em_scheduler_step_metric(s, metric);
}

static int plateau_on_train_batch_start(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)b;
    plateau_module *m = (plateau_module *)mb;
    return em_trainer_current_epoch(em_module_trainer(mb)) == m->skip_epoch && batch_idx == m->skip_batch
               ? EM_SKIP_REST_OF_EPOCH
               : 0;
}

static const em_module_ops plateau_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = plateau_training_step,
    .configure_optimizers = plateau_configure_optimizers,
    .lr_scheduler_step = plateau_lr_scheduler_step,
    .on_train_batch_start = plateau_on_train_batch_start,
};

static void plateau_fit(plateau_module *m, int64_t skip_epoch, int64_t skip_batch, int64_t max_steps)
{
    memset(m, 0, sizeof *m);
    simple_init(&m->s, &plateau_ops, true);
    m->skip_epoch = skip_epoch;
    m->skip_batch = skip_batch;
    em_trainer_config cfg = config(3);
    cfg.max_steps = max_steps;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    em_loader *train = rows_loader(4, 1, 1, false);
    em_status s = em_trainer_fit(t, &m->s.base, train, NULL);
    if (s != EM_OK)
        fail_msg("fit: %s", em_trainer_error(t));
    em_trainer_free(t);
    em_loader_free(train);
    em_nn_free(m->s.net);
}

/* §3.6 (fit_loop.py on_advance_end: the epoch-level update with plateau schedulers runs only when
 * epoch_loop._num_ready_batches_reached()): 3 epochs of 4 batches, an epoch-interval ReduceLROnPlateau.
 * Every complete epoch steps it; an epoch that on_train_batch_start ends early (epoch 1 at batch 2) does
 * not. */
static void test_rules__plateau_skips_epoch_ended_by_batch_start(void **state)
{
    (void)state;
    plateau_module m;
    plateau_fit(&m, -1, -1, -1);
    assert_int_equal(m.n_plateau, 3); /* the control */
    plateau_fit(&m, 1, 2, -1);
    assert_int_equal(m.n_plateau, 2);
    assert_int_equal(m.plateau_epochs[0], 0);
    assert_int_equal(m.plateau_epochs[1], 2);
}

/* The same rule when max_steps cuts the epoch: max_steps 6 ends fit after batch 1 of epoch 1, whose
 * epoch end runs (current_epoch becomes 2) without a plateau step. */
static void test_rules__plateau_skips_epoch_cut_by_max_steps(void **state)
{
    (void)state;
    plateau_module m;
    plateau_fit(&m, -1, -1, 6);
    assert_int_equal(m.n_plateau, 1);
    assert_int_equal(m.plateau_epochs[0], 0);
}

/* ---- §9.5: on_validation_model_zero_grad's default ------------------------------------------------------------------ */

typedef struct vz_module {
    simple s;
    double grad_in_val[16]; /* the weight's gradient in validation_step (NAN = None) */
    int64_t val_batch[16];  /* the training batch_idx validation ran after */
    int n_val;
    double grad_at_step[16]; /* on_before_optimizer_step */
    int n_step;
} vz_module;

static double weight_grad(simple *s)
{
    em_tensor *g = em_tensor_grad(em_nn_get(s->net, "weight"));
    return g != NULL ? item_of(g) : NAN;
}

static em_tensor *vz_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    return simple_loss((simple *)mb, b);
}

static em_status vz_validation_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)b, (void)batch_idx;
    vz_module *m = (vz_module *)mb;
    em_trainer *t = em_module_trainer(mb);
    if (em_trainer_sanity_checking(t) || m->n_val >= 16)
        return EM_OK;
    m->grad_in_val[m->n_val] = weight_grad(&m->s);
    m->val_batch[m->n_val] = em_trainer_batch_idx(t);
    m->n_val++;
    return EM_OK;
}

static em_status vz_on_before_optimizer_step(em_module *mb, em_optimizer *opt)
{
    (void)opt;
    vz_module *m = (vz_module *)mb;
    if (m->n_step < 16)
        m->grad_at_step[m->n_step++] = weight_grad(&m->s);
    return EM_OK;
}

static const em_module_ops vz_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = vz_training_step,
    .configure_optimizers = simple_configure_optimizers,
    .validation_step = vz_validation_step,
    .on_before_optimizer_step = vz_on_before_optimizer_step,
};

/* §9.5 and §1.1 step 9 (training_epoch_loop.py on_advance_end: `if not self._should_accumulate():
 * call._call_lightning_module_hook(trainer, "on_validation_model_zero_grad")`, whose default is
 * zero_grad(set_to_none=True)): A = 2, validation after every batch (val_check_interval 1 batch), 4 batches
 * x = 0.25, 0.5, 0.75, 1 (dloss/dw = x). After the accumulating batches 0 and 2 validation sees the window's
 * gradient so far (x / 2) and the step uses the whole window's; after the stepping batches 1 and 3 the
 * gradient is None (not zeros) in validation_step. Both with the module's layers given (the default zeroes
 * the module's parameters) and without (then those of the optimizers). */
static void test_rules__validation_zero_grad_default(void **state)
{
    (void)state;
    for (int with_layers = 0; with_layers < 2; with_layers++) {
        vz_module m;
        memset(&m, 0, sizeof m);
        simple_init(&m.s, &vz_ops, true);
        if (!with_layers)
            m.s.base.layers = NULL;
        em_trainer_config cfg = config(1);
        cfg.accumulate_grad_batches = 2;
        cfg.val_check_interval = EM_BATCHES(1);
        em_trainer *t = em_trainer_new(&cfg);
        assert_nonnull_em(t);
        em_loader *train = rows_loader(4, 1, 1, false);
        em_loader *val = rows_loader(1, 1, 1, false);
        em_status s = em_trainer_fit(t, &m.s.base, train, val);
        if (s != EM_OK)
            fail_msg("fit: %s", em_trainer_error(t));
        assert_int_equal(m.n_val, 4);
        for (int i = 0; i < 4; i++)
            assert_int_equal(m.val_batch[i], i);
        assert_close_rel(m.grad_in_val[0], 0.25 / 2, 1e-6);
        if (!isnan(m.grad_in_val[1]))
            fail_msg("layers %d: the gradient after stepping batch 1 is %g, not None", with_layers, m.grad_in_val[1]);
        assert_close_rel(m.grad_in_val[2], 0.75 / 2, 1e-6);
        if (!isnan(m.grad_in_val[3]))
            fail_msg("layers %d: the gradient after stepping batch 3 is %g, not None", with_layers, m.grad_in_val[3]);
        assert_int_equal(m.n_step, 2);
        assert_close_rel(m.grad_at_step[0], (0.25 + 0.5) / 2, 1e-6);
        assert_close_rel(m.grad_at_step[1], (0.75 + 1.0) / 2, 1e-6);
        em_trainer_free(t);
        em_loader_free(train);
        em_loader_free(val);
        em_nn_free(m.s.net);
    }
}

/* ---- §9.6: the sanity check restores the generator ---------------------------------------------------------------------- */

typedef struct rng_module {
    simple s;
    double draws[32];
    int n;
} rng_module;

static em_tensor *rng_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    rng_module *m = (rng_module *)mb;
    if (m->n < 32)
        m->draws[m->n++] = em_tensor_item(em_randn(EM_SHAPE(1), NULL));
    return simple_loss(&m->s, b);
}

static em_status rng_validation_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)mb, (void)b, (void)batch_idx;
    return em_randn(EM_SHAPE(5), NULL) != NULL ? EM_OK : em_last_status();
}

static const em_module_ops rng_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = rng_training_step,
    .configure_optimizers = simple_configure_optimizers,
    .validation_step = rng_validation_step,
};

static void rng_fit(rng_module *m, int64_t sanity_steps)
{
    memset(m, 0, sizeof *m);
    simple_init(&m->s, &rng_ops, true);
    em_trainer_config cfg = config(2);
    cfg.seed = 7;
    cfg.num_sanity_val_steps = sanity_steps;
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    em_loader *train = rows_loader(3, 1, 1, false);
    em_loader *val = rows_loader(3, 1, 1, false);
    em_status s = em_trainer_fit(t, &m->s.base, train, val);
    if (s != EM_OK)
        fail_msg("fit: %s", em_trainer_error(t));
    em_trainer_free(t);
    em_loader_free(train);
    em_loader_free(val);
    em_nn_free(m->s.net);
}

/* §9.6 (trainer.py _run_sanity_check: the RNG states are saved before and restored after it): the draws
 * training_step makes from the global generator are the same with no sanity check and with a 2-batch one
 * whose validation_step draws too (both runs validate after epoch 0 the same way, so only the sanity
 * check's draws differ between them). */
static void test_rules__sanity_check_restores_the_generator(void **state)
{
    (void)state;
    rng_module a, b;
    rng_fit(&a, 0);
    rng_fit(&b, 2);
    assert_int_equal(a.n, 6);
    assert_int_equal(b.n, 6);
    assert_memory_equal(a.draws, b.draws, sizeof a.draws[0] * 6);
    assert_true(a.draws[0] != a.draws[1]);
}

#define TEST(f) cmocka_unit_test_setup_teardown(f, helper_setup, helper_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(test_rules__should_stop_writes_the_step_row),
        TEST(test_rules__autocast_only_in_step_functions_automatic),
        TEST(test_rules__autocast_only_in_step_functions_manual),
        TEST(test_rules__bf16_mixed_fit_is_deterministic),
        TEST(test_rules__bf16_mixed_is_close_to_float32_but_not_equal),
        TEST(test_rules__manual_steps_outside_training_step_do_not_count),
        TEST(test_rules__plateau_skips_epoch_ended_by_batch_start),
        TEST(test_rules__plateau_skips_epoch_cut_by_max_steps),
        TEST(test_rules__validation_zero_grad_default),
        TEST(test_rules__sanity_check_restores_the_generator),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
