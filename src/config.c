/* config.c: the Trainer arguments - the checks Trainer.__init__ makes, and their resolution at fit
 * start into the settings the loop reads (t->fit).
 *
 * Lightning: trainer/trainer.py (Trainer.__init__, estimated_stepping_batches), loops/utilities.py
 *            (_parse_loop_limits), trainer/setup.py (_determine_batch_limits),
 *            trainer/connectors/data_connector.py (_parse_num_batches), loops/fit_loop.py (setup_data).
 * Rules: docs/LIGHTNING_RULES.md §2.2, §2.3, §9.5, §10.
 */
#include <math.h>

#include <stddef.h>
#include <string.h>

#include "config.h"
#include "loops.h"

/* ---- construction: Trainer.__init__'s checks ---------------------------------------------------------- */

static em_status check_amount(const char *name, em_amount a)
{
    if (a.is_fraction) {
        if (!(a.value >= 0.0 && a.value <= 1.0))
            return emi_fail(EM_EINVAL, "em_trainer_new: `%s` must be a fraction in [0.0, 1.0] (EM_FRACTION) or a "
                                       "number of batches (EM_BATCHES), got EM_FRACTION(%g)", name, a.value);
    } else if (!(a.value >= 0) || a.value != floor(a.value) || !(a.value < 0x1p62)) {
        /* beyond 2^62 (and infinity) no loader has that many batches; the count would not fit in int64 */
        return emi_fail(EM_EINVAL, "em_trainer_new: `%s` must be a fraction in [0.0, 1.0] (EM_FRACTION) or a "
                                   "non-negative number of batches below 2^62 (EM_BATCHES), got EM_BATCHES(%g)", name,
                        a.value);
    }
    return EM_OK;
}

/* max_epochs, max_steps, min_epochs, min_steps (§10 #1, #2; negative minimums, which Lightning lets by). */
static em_status check_limits(const em_trainer_config *c)
{
    if (c->max_epochs != EM_NONE && c->max_epochs < -1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `max_epochs` must be a non-negative integer or -1, got %lld",
                        (long long)c->max_epochs);
    if (c->max_steps < -1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `max_steps` must be a non-negative integer or -1, got %lld",
                        (long long)c->max_steps);
    if (c->min_epochs != EM_NONE && c->min_epochs < 0)
        return emi_fail(EM_EINVAL, "em_trainer_new: `min_epochs` must be >= 0 or EM_NONE, got %lld",
                        (long long)c->min_epochs);
    if (c->min_steps != EM_NONE && c->min_steps < 0)
        return emi_fail(EM_EINVAL, "em_trainer_new: `min_steps` must be >= 0 or EM_NONE, got %lld",
                        (long long)c->min_steps);
    return EM_OK;
}

/* limit_*_batches, val_check_interval, check_val_every_n_epoch, num_sanity_val_steps (§10 #3, #5, #6). */
static em_status check_validation(const em_trainer_config *c)
{
    em_status s;
    if ((s = check_amount("limit_train_batches", c->limit_train_batches)) != EM_OK ||
        (s = check_amount("limit_val_batches", c->limit_val_batches)) != EM_OK ||
        (s = check_amount("val_check_interval", c->val_check_interval)) != EM_OK)
        return s;
    if (c->check_val_every_n_epoch != EM_NONE && c->check_val_every_n_epoch < 1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `check_val_every_n_epoch` should be an integer >= 1 or EM_NONE, "
                                   "got %lld", (long long)c->check_val_every_n_epoch);
    if (c->check_val_every_n_epoch == EM_NONE && c->val_check_interval.is_fraction)
        return emi_fail(EM_EINVAL, "em_trainer_new: `val_check_interval` should be a number of batches "
                                   "(EM_BATCHES) when `check_val_every_n_epoch` is EM_NONE, got EM_FRACTION(%g)",
                        c->val_check_interval.value);
    if (c->num_sanity_val_steps < -1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `num_sanity_val_steps` must be >= -1, got %lld",
                        (long long)c->num_sanity_val_steps);
    return EM_OK;
}

/* accumulation, clipping, precision, logging (§10 #9, #10). */
static em_status check_optimization(const em_trainer_config *c)
{
    if (c->accumulate_grad_batches < 1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `accumulate_grad_batches` must be an integer >= 1, got %lld "
                                   "(Lightning would divide by zero later)", (long long)c->accumulate_grad_batches);
    if (c->gradient_clip_algorithm != EM_CLIP_DEFAULT && c->gradient_clip_algorithm != EM_CLIP_NORM &&
        c->gradient_clip_algorithm != EM_CLIP_VALUE)
        return emi_fail(EM_EINVAL, "em_trainer_new: `gradient_clip_algorithm` %d is invalid. Allowed algorithms: "
                                   "EM_CLIP_VALUE, EM_CLIP_NORM", (int)c->gradient_clip_algorithm);
    if (c->precision != EM_PRECISION_32_TRUE && c->precision != EM_PRECISION_16_MIXED &&
        c->precision != EM_PRECISION_BF16_MIXED)
        return emi_fail(EM_EINVAL, "em_trainer_new: precision %d is not supported; use EM_PRECISION_32_TRUE, "
                                   "EM_PRECISION_16_MIXED or EM_PRECISION_BF16_MIXED", (int)c->precision);
    /* 16-mixed grad scaler: Lightning's MixedPrecision.__init__ */
    if (c->grad_scaler != NULL && !emi_handle_live(c->grad_scaler, EMI_HANDLE_SCALER))
        return emi_fail(EM_EMISUSE, "em_trainer_new: cfg->grad_scaler is not a live grad scaler (freed with "
                                    "em_grad_scaler_free, or a pointer of another kind)");
    if (c->grad_scaler != NULL && c->precision == EM_PRECISION_BF16_MIXED)
        return emi_fail(EM_EINVAL, "em_trainer_new: `precision='bf16-mixed'` does not use a scaler, found a "
                                   "grad_scaler in the config.");
    if (c->grad_scaler != NULL && c->precision != EM_PRECISION_16_MIXED)
        return emi_fail(EM_EINVAL, "em_trainer_new: a grad_scaler is used only with EM_PRECISION_16_MIXED (Lightning's "
                                   "MixedPrecision('16-mixed', device, scaler)); the precision is EM_PRECISION_32_TRUE");
    if (c->log_every_n_steps < 1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `log_every_n_steps` must be >= 1, got %lld",
                        (long long)c->log_every_n_steps);
    return EM_OK;
}

/* accelerator, devices, num_nodes, strategy, ddp_timeout (the accelerator connector's checks). */
static em_status check_devices(const em_trainer_config *c)
{
    if (c->accelerator < EM_ACCELERATOR_AUTO || c->accelerator > EM_ACCELERATOR_CUDA)
        return emi_fail(EM_EINVAL, "em_trainer_new: `accelerator` %d is not one of EM_ACCELERATOR_AUTO, CPU, CUDA",
                        (int)c->accelerator);
    if (c->process_group_backend < EM_PG_BACKEND_AUTO || c->process_group_backend > EM_PG_BACKEND_NCCL)
        return emi_fail(EM_EINVAL, "em_trainer_new: `process_group_backend` %d is not one of EM_PG_BACKEND_AUTO, "
                                   "GLOO, NCCL", (int)c->process_group_backend);
    if (c->strategy < EM_STRATEGY_AUTO || c->strategy > EM_STRATEGY_DDP)
        return emi_fail(EM_EINVAL, "em_trainer_new: `strategy` %d is not one of EM_STRATEGY_AUTO, SINGLE, DDP",
                        (int)c->strategy);
    if (c->devices < 0)
        return emi_fail(EM_EINVAL, "em_trainer_new: `devices` must be a positive number of processes per node or 0 "
                                   "(auto), got %lld", (long long)c->devices);
    if (c->num_nodes < 1)
        return emi_fail(EM_EINVAL, "em_trainer_new: `num_nodes` must be a positive integer, got %lld",
                        (long long)c->num_nodes);
    if (!(c->ddp_timeout > 0) || isinf(c->ddp_timeout))
        return emi_fail(EM_EINVAL, "em_trainer_new: `ddp_timeout` must be a positive number of seconds, got %g",
                        c->ddp_timeout);
    if (c->strategy == EM_STRATEGY_SINGLE && (c->devices > 1 || c->num_nodes > 1))
        return emi_fail(EM_EINVAL, "em_trainer_new: strategy \"single\" runs one process, but devices=%lld and "
                                   "num_nodes=%lld ask for more: use EM_STRATEGY_DDP or AUTO",
                        (long long)c->devices, (long long)c->num_nodes);
    return EM_OK;
}

em_status emi_accelerator_resolve(em_trainer *t)
{
    t->fit.device = EM_DEVICE_CPU;
    em_accelerator a = t->cfg.accelerator;
    bool cuda = em_cuda_is_available();
    if (a == EM_ACCELERATOR_AUTO && cuda && (t->module == NULL || t->module->layers == NULL)) {
        /* Lightning's auto takes the GPU; ember can move only the layers it is shown, and a module written
         * without them makes its tensors on the CPU: it stays there, and says so */
        emi_info("GPU available: True (cuda), used: False (the module has no `layers`; set them, or "
                 "accelerator=EM_ACCELERATOR_CUDA, to train on the GPU)");
        return EM_OK;
    }
    if (a == EM_ACCELERATOR_CPU || (a == EM_ACCELERATOR_AUTO && !cuda))
        return EM_OK;
    if (!cuda)
        return emi_fail(EM_EUNSUPPORTED, "em_trainer_fit: `CUDAAccelerator` can not run on your system since the "
                                         "accelerator is not available (the linked libtorch has no CUDA, or no GPU is "
                                         "visible): use EM_ACCELERATOR_CPU or AUTO");
    int64_t index = t->env.local_rank > 0 ? t->env.local_rank : 0;
    int64_t count = em_cuda_device_count();
    if (index >= count)
        return emi_fail(EM_EINVAL, "em_trainer_fit: local rank %lld needs cuda:%lld, but %lld GPU(s) are visible: "
                                   "start at most %lld processes per node",
                        (long long)index, (long long)index, (long long)count, (long long)count);
    t->fit.device = EM_DEVICE_CUDA((int)index);
    return EM_OK;
}

em_status emi_config_read(const em_trainer_config *in, em_trainer_config *out)
{
    memset(out, 0, sizeof *out);
    if (in->version < 1 || in->version > EM_TRAINER_CONFIG_VERSION)
        return emi_config_check(in); /* reads `version` only, and says what is wrong */
    /* where the caller's struct ends: version 1 before grad_scaler, version 2 before process_group_backend */
    size_t n = in->version >= 3   ? sizeof *out
               : in->version == 2 ? offsetof(em_trainer_config, process_group_backend)
                                  : offsetof(em_trainer_config, grad_scaler);
    memcpy(out, in, n);
    if (n < sizeof *out) { /* an older caller: the later fields take their EM_TRAINER_CONFIG_INIT values */
        const em_trainer_config defaults = EM_TRAINER_CONFIG_INIT;
        memcpy((char *)out + n, (const char *)&defaults + n, sizeof *out - n);
        out->version = in->version;
    }
    return EM_OK;
}

em_status emi_config_check(const em_trainer_config *c)
{
    if (c->version < 1)
        return emi_fail(EM_EINVAL, "em_trainer_new: cfg->version is %d: start from EM_TRAINER_CONFIG_INIT",
                        c->version);
    if (c->version > EM_TRAINER_CONFIG_VERSION)
        return emi_fail(EM_EINVAL, "em_trainer_new: cfg->version %d is newer than this library (%d)", c->version,
                        EM_TRAINER_CONFIG_VERSION);
    em_status s;
    if ((s = check_limits(c)) != EM_OK || (s = check_validation(c)) != EM_OK || (s = check_optimization(c)) != EM_OK ||
        (s = check_devices(c)) != EM_OK)
        return s;
    return EM_OK;
}

/* ---- fit start: _parse_loop_limits and the loop's settings ---------------------------------------------- */

void emi_config_resolve(em_trainer *t)
{
    const em_trainer_config *c = &t->cfg;
    emi_fit_settings *f = &t->fit;
    f->max_steps = c->max_steps;
    f->min_steps = c->min_steps;
    if (c->max_epochs == EM_NONE) {
        if (c->max_steps == -1) {
            emi_warn("`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, set "
                     "`max_epochs=-1`.");
            f->max_epochs = 1000;
        } else {
            f->max_epochs = -1;
        }
    } else {
        f->max_epochs = c->max_epochs;
    }
    if (c->min_epochs == EM_NONE)
        f->min_epochs = c->min_steps != EM_NONE ? 1 : 0;
    else
        f->min_epochs = c->min_epochs;
    f->clip_val = c->gradient_clip_val;
    f->clip_algo = c->gradient_clip_algorithm;
    f->check_val_every_n_epoch = c->check_val_every_n_epoch;
    f->num_sanity_val_steps = c->num_sanity_val_steps;
    f->log_every_n_steps = c->log_every_n_steps;
}

/* A loader written in C may return anything from num_batches(). */
static em_status check_loader_length(const char *stage, int64_t length)
{
    if (length < 0)
        return emi_fail(EM_EINVAL, "the %s loader's num_batches() returned %lld; it must be >= 0", stage,
                        (long long)length);
    return EM_OK;
}

/* Lightning: _parse_num_batches: the number of batches an epoch runs under a limit. */
static em_status parse_num_batches(const char *stage, int64_t length, em_amount limit, int64_t *out)
{
    if (!limit.is_fraction) {
        *out = length < (int64_t)limit.value ? length : (int64_t)limit.value;
        return EM_OK;
    }
    if (limit.value == 1.0) {
        *out = length;
        return EM_OK;
    }
    int64_t n = (int64_t)((double)length * limit.value);
    if (limit.value > 0.0 && n == 0 && length > 0) {
        double min_pct = 1.0 / (double)length;
        return emi_fail(EM_EINVAL, "You requested to check %g of the %s dataloader but %g * %lld < 1. Please "
                                   "increase the `limit_%s_batches` argument. Try at least EM_FRACTION(%g)",
                        limit.value, stage, limit.value, (long long)length, stage, min_pct);
    }
    *out = n;
    return EM_OK;
}

/* Lightning: Trainer.estimated_stepping_batches (§2.3) */
static double estimate_stepping_batches(const em_trainer *t)
{
    const emi_fit_settings *f = &t->fit;
    if (f->max_epochs == -1)
        return f->max_steps == -1 ? INFINITY : (double)f->max_steps;
    int64_t a = t->accumulate, n = f->num_training_batches;
    int64_t per_epoch = n / a + (n % a != 0); /* ceil(N / A) without overflow */
    int64_t epochs = f->max_epochs > 1 ? f->max_epochs : 1;
    double est = (double)per_epoch * (double)epochs; /* Python's ints do not overflow; a double is exact to 2^53 */
    if (f->max_steps != -1 && (double)f->max_steps < est)
        est = (double)f->max_steps;
    return est;
}

/* val_check_interval: an int k validates every k batches, a float f every int(N * f) (at least 1). */
static em_status resolve_val_check_batch(em_trainer *t)
{
    emi_fit_settings *f = &t->fit;
    const em_amount vci = t->cfg.val_check_interval;
    if (vci.is_fraction) {
        f->val_check_batch = (int64_t)((double)f->num_training_batches * vci.value);
    } else {
        f->val_check_batch = (int64_t)vci.value;
        if (f->val_check_batch > f->num_training_batches && f->check_val_every_n_epoch != EM_NONE &&
            emi_validation_enabled(t))
            return emi_fail(EM_EINVAL, "`val_check_interval` (%lld) must be less than or equal to the number of the "
                                       "training batches (%lld). If you want to disable validation set "
                                       "`limit_val_batches` to 0.0 instead. If you want to validate based on the "
                                       "total training batches, set `check_val_every_n_epoch=EM_NONE`.",
                            (long long)f->val_check_batch, (long long)f->num_training_batches);
    }
    if (f->val_check_batch < 1)
        f->val_check_batch = 1;
    return EM_OK;
}

em_status emi_config_setup_data(em_trainer *t)
{
    emi_fit_settings *f = &t->fit;
    em_status s;
    int64_t len = em_loader_num_batches(t->train);
    if ((s = check_loader_length("train", len)) != EM_OK ||
        (s = parse_num_batches("train", len, t->cfg.limit_train_batches, &f->num_training_batches)) != EM_OK)
        return s;
    f->num_val_batches = 0;
    if (t->val != NULL && t->module->ops->validation_step != NULL) {
        int64_t vlen = em_loader_num_batches(t->val);
        if ((s = check_loader_length("val", vlen)) != EM_OK)
            return s;
        if ((s = parse_num_batches("val", vlen, t->cfg.limit_val_batches, &f->num_val_batches)) != EM_OK)
            return s;
    }
    if ((s = resolve_val_check_batch(t)) != EM_OK)
        return s;
    f->estimated = estimate_stepping_batches(t);
    return EM_OK;
}
