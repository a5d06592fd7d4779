/* ember_loop.c: the same training through em_trainer_fit, as a C user writes it with <ember.h>.
 *
 * automatic: training_step returns the loss; the Trainer does zero_grad, backward, accumulation
 *            (accumulate_grad_batches) and clipping (gradient_clip_val, norm) - Lightning's
 *            automatic optimization.
 * manual:    training_step does it all on the em_optimizers() wrapper - Lightning's manual
 *            optimization, with the user's own accumulation (loss / A, a step every A-th batch and on
 *            the last one) and em_clip_gradients.
 * One repetition is one em_trainer_fit of one epoch (max_epochs = 1, no progress bar, no CSV logger,
 * no sanity check), so it includes what fit costs once: configure_optimizers builds a fresh optimizer.
 */
#include <ember.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

/* ---- the module --------------------------------------------------------------------------------------- */

typedef struct bench_module {
    em_module base; /* first: a bench_module * is an em_module * */
    em_nn *net;
    bench_case c;
} bench_module;

static em_tensor *loss_of(const bench_module *bm, em_tensor *out, em_tensor *y)
{
    if (bm->c.w->loss == LOSS_MSE)
        return em_mse_loss(out, y, EM_REDUCTION_MEAN);
    return em_cross_entropy(out, y, EM_REDUCTION_MEAN);
}

/* automatic optimization: return the loss, the Trainer does the rest */
static em_tensor *auto_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    bench_module *bm = (bench_module *)m;
    return loss_of(bm, em_nn_forward(bm->net, b->t[0]), b->t[1]);
}

/* manual optimization: zero_grad, manual_backward, (clip), step on the LightningOptimizer wrapper.
 * Returns NULL without an error (Lightning's `return None`): nothing for on_train_batch_end. */
static em_tensor *manual_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    bench_module *bm = (bench_module *)m;
    em_optimizer **opts = em_optimizers(m, NULL);
    if (opts == NULL)
        return NULL;
    em_optimizer *opt = opts[0];
    int64_t acc = bm->c.accumulate;
    if (acc == 1) { /* Lightning's manual-optimization example, in its order */
        if (em_optimizer_zero_grad(opt) != EM_OK)
            return NULL;
        em_tensor *loss = loss_of(bm, em_nn_forward(bm->net, b->t[0]), b->t[1]);
        if (em_manual_backward(m, loss) != EM_OK)
            return NULL;
        if (bm->c.clip && em_clip_gradients(m, opt, BENCH_CLIP_NORM, EM_CLIP_NORM) != EM_OK)
            return NULL;
        em_optimizer_step(opt, NULL); /* a failure is recorded: the trainer sees it */
        return NULL;
    }
    /* Lightning's manual accumulation recipe: scale by 1/A, step and zero every A-th batch */
    em_tensor *loss = loss_of(bm, em_nn_forward(bm->net, b->t[0]), b->t[1]);
    if (em_manual_backward(m, em_div_scalar(loss, (double)acc)) != EM_OK)
        return NULL;
    if ((batch_idx + 1) % acc == 0 || em_trainer_is_last_batch(em_module_trainer(m))) {
        if (bm->c.clip && em_clip_gradients(m, opt, BENCH_CLIP_NORM, EM_CLIP_NORM) != EM_OK)
            return NULL;
        if (em_optimizer_step(opt, NULL) != EM_OK)
            return NULL;
        em_optimizer_zero_grad(opt);
    }
    return NULL;
}

static em_status configure_optimizers(em_module *m, em_optim_setup *setup)
{
    bench_module *bm = (bench_module *)m;
    const bench_workload *w = bm->c.w;
    em_params *ps = em_nn_parameters(bm->net);
    em_optimizer *opt;
    if (w->optim == OPT_ADAM) {
        em_adam_opts ao = EM_ADAM_OPTS_INIT;
        ao.lr = w->lr;
        opt = em_adam(ps, &ao);
    } else {
        opt = em_sgd(ps, &(em_sgd_opts){.lr = w->lr, .momentum = w->momentum});
    }
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static const em_module_ops auto_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = auto_training_step,
    .configure_optimizers = configure_optimizers,
};

static const em_module_ops manual_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = manual_training_step,
    .configure_optimizers = configure_optimizers,
};

/* ---- the model: a Sequential with the bench_param names ------------------------------------------------- */

static em_nn *build_net(const bench_workload *w)
{
    switch (w->id) {
    case WL_TINY_MLP:
        return EM_NN_SEQUENTIAL(em_nn_linear(16, 32, true), em_nn_tanh(), em_nn_linear(32, 1, true));
    case WL_MID_MLP:
        return EM_NN_SEQUENTIAL(em_nn_linear(256, 512, true), em_nn_relu(), em_nn_linear(512, 512, true),
                                em_nn_relu(), em_nn_linear(512, 10, true));
    case WL_SMALL_CNN:
        return EM_NN_SEQUENTIAL(em_nn_conv2d(1, 8, 3, NULL), em_nn_relu(),
                                em_nn_conv2d(8, 16, 3, &(em_conv_opts){.stride = 2}), em_nn_relu(),
                                em_nn_flatten(1, -1), em_nn_linear(16 * 12 * 12, 10, true));
    case WL_COUNT:
        break;
    }
    return NULL;
}

/* ---- the runner ------------------------------------------------------------------------------------------- */

struct ember_runner {
    bench_module module;
    em_trainer *trainer;
    em_loader *loader;
};

void ember_free(ember_runner *r)
{
    if (r == NULL)
        return;
    em_trainer_free(r->trainer);
    em_loader_free(r->loader);
    em_nn_free(r->module.net);
    free(r);
}

ember_runner *ember_new(const bench_case *c, const bench_data *d, bool manual)
{
    const bench_workload *w = c->w;
    ember_runner *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->module = (bench_module){
        .base = {.ops = manual ? &manual_ops : &auto_ops, .manual_optimization = manual},
        .c = *c,
    };
    em_clear_error();
    r->module.net = build_net(w);
    r->module.base.layers = r->module.net;
    if (r->module.net == NULL)
        goto fail;
    /* the same initial weights as the raw loop, by name, with their shapes checked */
    if (em_nn_num_parameters(r->module.net) != w->n_params) {
        em_error_set(EM_EINVAL, "%s has %zu parameters, the workload table %zu", w->name,
                     em_nn_num_parameters(r->module.net), w->n_params);
        goto fail;
    }
    size_t off = 0;
    for (size_t i = 0; i < w->n_params; i++) {
        const bench_param *p = &w->params[i];
        int64_t shape[EM_MAX_DIMS];
        em_tensor *t = em_nn_get(r->module.net, p->name);
        int nd = em_tensor_shape(t, shape, EM_MAX_DIMS);
        size_t n = 1;
        for (int k = 0; k < p->ndim; k++)
            n *= (size_t)p->shape[k];
        bool same = nd == p->ndim;
        for (int k = 0; same && k < nd; k++)
            same = shape[k] == p->shape[k];
        if (!same) {
            if (!em_last_status())
                em_error_set(EM_EINVAL, "%s: parameter %s has another shape than the workload table", w->name,
                             p->name);
            goto fail;
        }
        if (em_nn_set(r->module.net, p->name, d->weights + off, EM_F32, n) != EM_OK)
            goto fail;
        off += n;
    }

    /* the data: caller-owned tensors (no scope is open), handed to the in-memory loader */
    int64_t xs[4] = {d->rows};
    for (int i = 0; i < w->x_ndim; i++)
        xs[i + 1] = w->x_row_shape[i];
    em_tensor *x = em_tensor_from(d->x, EM_F32, xs, w->x_ndim + 1, NULL);
    em_tensor *y = w->loss == LOSS_MSE ? em_tensor_from(d->y_f32, EM_F32, EM_SHAPE(d->rows, w->classes), NULL)
                                       : em_tensor_from(d->y_i64, EM_I64, EM_SHAPE(d->rows), NULL);
    if (x != NULL && y != NULL)
        r->loader = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = w->batch});
    em_tensor_free(x);
    em_tensor_free(y);
    if (r->loader == NULL)
        goto fail;

    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 1;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    cfg.num_sanity_val_steps = 0;
    if (!manual) {
        cfg.accumulate_grad_batches = c->accumulate;
        if (c->clip) {
            cfg.gradient_clip_val = BENCH_CLIP_NORM;
            cfg.gradient_clip_algorithm = EM_CLIP_NORM;
        }
    }
    r->trainer = em_trainer_new(&cfg);
    if (r->trainer == NULL)
        goto fail;
    return r;
fail:
    fprintf(stderr, "ember-bench: ember %s setup failed: %s\n", manual ? "manual" : "auto", em_last_error());
    ember_free(r);
    return NULL;
}

double ember_run(ember_runner *r)
{
    double t0 = bench_now();
    em_status s = em_trainer_fit(r->trainer, &r->module.base, r->loader, NULL);
    double dt = bench_now() - t0;
    if (s != EM_OK) {
        fprintf(stderr, "ember-bench: em_trainer_fit failed: %s\n", em_trainer_error(r->trainer));
        return -1.0;
    }
    /* every window stepped once: ceil(steps / A) optimizer steps */
    int64_t acc = r->module.c.accumulate;
    int64_t expected = (r->module.c.steps + acc - 1) / acc;
    if (em_trainer_global_step(r->trainer) != expected) {
        fprintf(stderr, "ember-bench: em_trainer_fit made %lld optimizer steps, expected %lld\n",
                (long long)em_trainer_global_step(r->trainer), (long long)expected);
        return -1.0;
    }
    return dt;
}

bool ember_weights(const ember_runner *r, float *out, size_t n)
{
    size_t off = 0;
    for (size_t i = 0; i < em_nn_num_parameters(r->module.net); i++) {
        em_tensor *p = em_nn_parameter(r->module.net, i);
        size_t k = (size_t)em_tensor_numel(p);
        if (off + k > n || em_tensor_copy_to(p, out + off, k * sizeof *out, EM_F32) != EM_OK)
            return false;
        off += k;
    }
    return off == n;
}
