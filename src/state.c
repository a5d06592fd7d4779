/* state.c: the trainer's public properties (Lightning's trainer.current_epoch, global_step,
 * callback_metrics, progress_bar_metrics, ...). Read-only views of the loop's state, plus the two
 * setters Lightning's callbacks use (accumulate_grad_batches, should_stop). */
#include <math.h>

#include "logger_csv.h"
#include "metrics.h"

em_trainer *em_module_trainer(const em_module *m)
{
    return m == NULL ? NULL : m->trainer_;
}

int64_t em_trainer_current_epoch(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? -1 : t->current_epoch;
}
int64_t em_trainer_global_step(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? -1 : t->global_step;
}
int64_t em_trainer_batch_idx(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? -1 : t->batch_idx;
}
bool em_trainer_is_last_batch(const em_trainer *t)
{
    return emi_trainer_ok(t, __func__) && t->is_last_batch;
}
int64_t em_trainer_num_training_batches(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? -1 : t->fit.num_training_batches;
}
int64_t em_trainer_accumulate_grad_batches(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? -1 : t->accumulate;
}
double em_trainer_estimated_stepping_batches(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? NAN : t->fit.estimated;
}
bool em_trainer_should_stop(const em_trainer *t)
{
    return emi_trainer_ok(t, __func__) && t->should_stop;
}
bool em_trainer_sanity_checking(const em_trainer *t)
{
    return emi_trainer_ok(t, __func__) && t->sanity_checking;
}

em_amount em_trainer_val_check_interval(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? EM_FRACTION(NAN) : t->cfg.val_check_interval;
}

int64_t em_trainer_check_val_every_n_epoch(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? -1 : t->cfg.check_val_every_n_epoch;
}

int64_t em_trainer_min_epochs(const em_trainer *t) { return !emi_trainer_ok(t, __func__) ? -1 : t->fit.min_epochs; }
int64_t em_trainer_min_steps(const em_trainer *t) { return !emi_trainer_ok(t, __func__) ? -1 : t->fit.min_steps; }

em_status em_trainer_set_accumulate_grad_batches(em_trainer *t, int64_t k)
{
    if (!emi_trainer_ok(t, __func__))
        return !emi_trainer_ok(t, __func__) ? EM_EINVAL : EM_EMISUSE;
    if (k < 1)
        return emi_fail(EM_EINVAL, "em_trainer_set_accumulate_grad_batches: must be >= 1, got %lld", (long long)k);
    t->accumulate = k;
    return EM_OK;
}

void em_trainer_set_should_stop(em_trainer *t, bool stop)
{
    if (emi_trainer_ok(t, __func__))
        t->should_stop = stop;
}

/* ---- callback_metrics and progress_bar_metrics -------------------------------------------------------------- */

/* Lightning's callback_metrics / progress_bar_metrics properties read the live results. */
static const emi_kvlist *fresh(const em_trainer *t, bool progress_bar)
{
    emi_metrics_refresh((em_trainer *)t);
    return progress_bar ? &t->metrics.progbar : &t->metrics.callback;
}

bool em_trainer_callback_metric(const em_trainer *t, const char *name, double *value)
{
    if (!emi_trainer_ok(t, __func__) || name == NULL)
        return false;
    double v;
    if (!emi_kvlist_get(fresh(t, false), name, &v))
        return false;
    if (value != NULL)
        *value = v;
    return true;
}

static const char *kv_at(const emi_kvlist *l, size_t i, double *value)
{
    if (i >= l->n)
        return NULL;
    if (value != NULL)
        *value = l->items[i].value;
    return l->items[i].name;
}

size_t em_trainer_num_callback_metrics(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? 0 : fresh(t, false)->n;
}

const char *em_trainer_callback_metric_at(const em_trainer *t, size_t i, double *value)
{
    return !emi_trainer_ok(t, __func__) ? NULL : kv_at(&t->metrics.callback, i, value);
}

size_t em_trainer_num_progress_bar_metrics(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? 0 : fresh(t, true)->n;
}

const char *em_trainer_progress_bar_metric_at(const em_trainer *t, size_t i, double *value)
{
    return !emi_trainer_ok(t, __func__) ? NULL : kv_at(&t->metrics.progbar, i, value);
}

/* ---- optimizers, schedulers and the logger, as callbacks see them ---------------------------------------------- */

size_t em_trainer_num_optimizers(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? 0 : t->setup.n_opts;
}

em_optimizer *em_trainer_optimizer(const em_trainer *t, size_t i)
{
    return i < em_trainer_num_optimizers(t) ? t->setup.opts[i] : NULL;
}

size_t em_trainer_num_lr_schedulers(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? 0 : t->setup.n_scheds;
}

em_scheduler *em_trainer_lr_scheduler(const em_trainer *t, size_t i, em_scheduler_config *config)
{
    if (i >= em_trainer_num_lr_schedulers(t))
        return NULL;
    if (config != NULL)
        *config = t->setup.scheds[i].cfg;
    return t->setup.scheds[i].sched;
}

bool em_trainer_has_logger(const em_trainer *t)
{
    return emi_trainer_ok(t, __func__) && t->cfg.enable_csv_logger;
}

em_device em_trainer_device(const em_trainer *t)
{
    return emi_trainer_ok(t, __func__) && t->fit.device.type == EM_CUDA ? t->fit.device : EM_DEVICE_CPU;
}

bool em_trainer_should_update_logs(const em_trainer *t)
{
    if (!emi_trainer_ok(t, __func__))
        return false;
    int64_t every = t->fit.log_every_n_steps >= 1 ? t->fit.log_every_n_steps : t->cfg.log_every_n_steps;
    return (t->batches_that_stepped + 1) % every == 0 || t->should_stop; /* cfg's is >= 1 (em_trainer_new) */
}

const char *em_trainer_log_dir(const em_trainer *t)
{
    if (!emi_trainer_ok(t, __func__) || !t->fitting || t->metrics.logger == NULL)
        return NULL;
    return emi_csv_logger_dir(t->metrics.logger);
}

const char *em_trainer_default_root_dir(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? NULL : t->root_dir;
}

int64_t em_trainer_num_val_batches(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? -1 : t->fit.num_val_batches;
}

const char *em_trainer_ckpt_path(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? NULL : t->ckpt_path;
}
