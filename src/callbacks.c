/* callbacks.c: the built-in callbacks Lightning users reach for, written as any user's callback is:
 * on the public API (and the log handler for warnings).
 *
 * GradientAccumulationScheduler - Lightning: callbacks/gradient_accumulation_scheduler.py.
 * Rules: docs/LIGHTNING_RULES.md §5.
 */
#include <stdlib.h>
#include <string.h>

#include "backend.h" /* emi_fail, emi_warn */
#include "ember/trainer.h"

/* ---- GradientAccumulationScheduler ------------------------------------------------------------------- */

typedef struct grad_accum_scheduler {
    int64_t (*schedule)[2]; /* sorted by epoch */
    size_t n;
} grad_accum_scheduler;

/* Lightning: GradientAccumulationScheduler.get_accumulate_grad_batches */
static int64_t gas_factor(const grad_accum_scheduler *g, int64_t epoch)
{
    int64_t factor = 1;
    for (size_t i = 0; i < g->n; i++)
        if (epoch >= g->schedule[i][0])
            factor = g->schedule[i][1];
    return factor;
}

/* Lightning: GradientAccumulationScheduler.on_train_start */
static em_status gas_on_train_start(em_callback *cb, em_trainer *t, em_module *m)
{
    grad_accum_scheduler *g = em_callback_state(cb);
    if (m->manual_optimization)
        return em_error_set(EM_EINVAL, "Automatic gradient accumulation and the `GradientAccumulationScheduler` is "
                                       "not supported for manual optimization. Please remove the callback or switch "
                                       "to automatic optimization.");
    if (em_trainer_accumulate_grad_batches(t) != 1)
        return em_error_set(EM_EINVAL, "You have set `accumulate_grad_batches` and are using the "
                                       "`GradientAccumulationScheduler` callback. Either remove `accumulate_grad_batches` "
                                       "from the trainer config or remove the callback.");
    bool overridden = m->ops->optimizer_step != NULL || m->ops->optimizer_zero_grad != NULL;
    bool accumulates = false;
    for (size_t i = 0; i < g->n; i++)
        accumulates |= g->schedule[i][1] > 1;
    if (overridden && accumulates)
        emi_warn("When using `GradientAccumulationScheduler` with optimizer_step or optimizer_zero_grad "
                 "overridden, these hooks are called once per optimization step, not per batch.");
    return EM_OK;
}

/* Lightning: GradientAccumulationScheduler.on_train_epoch_start */
static em_status gas_on_train_epoch_start(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)m;
    grad_accum_scheduler *g = em_callback_state(cb);
    return em_trainer_set_accumulate_grad_batches(t, gas_factor(g, em_trainer_current_epoch(t)));
}

static void gas_destroy(void *state)
{
    grad_accum_scheduler *g = state;
    free(g->schedule);
    free(g);
}

static const em_callback_ops gas_ops = {
    .version = EM_CALLBACK_OPS_VERSION,
    .name = "GradientAccumulationScheduler",
    .on_train_start = gas_on_train_start,
    .on_train_epoch_start = gas_on_train_epoch_start,
    .destroy = gas_destroy,
};

/* GradientAccumulationScheduler.__init__'s checks; *min_epoch receives the smallest epoch. */
static em_status gas_check(const int64_t (*schedule)[2], size_t n, int64_t *min_epoch)
{
    if (schedule == NULL || n == 0)
        return emi_fail(EM_EINVAL, "em_grad_accum_scheduler: Empty dict cannot be interpreted correct");
    *min_epoch = INT64_MAX;
    for (size_t i = 0; i < n; i++) {
        if (schedule[i][0] < 0)
            return emi_fail(EM_EINVAL, "em_grad_accum_scheduler: Epoch should be an int greater than or equal to 0. "
                                       "Got %lld.", (long long)schedule[i][0]);
        if (schedule[i][1] < 1)
            return emi_fail(EM_EINVAL, "em_grad_accum_scheduler: Accumulation factor should be an int greater than 0. "
                                       "Got %lld.", (long long)schedule[i][1]);
        for (size_t j = 0; j < i; j++)
            if (schedule[j][0] == schedule[i][0])
                return emi_fail(EM_EINVAL, "em_grad_accum_scheduler: epoch %lld appears twice",
                                (long long)schedule[i][0]);
        if (schedule[i][0] < *min_epoch)
            *min_epoch = schedule[i][0];
    }
    return EM_OK;
}

em_callback *em_grad_accum_scheduler(const int64_t (*schedule)[2], size_t n)
{
    int64_t min_epoch = 0;
    if (gas_check(schedule, n, &min_epoch) != EM_OK)
        return NULL;
    grad_accum_scheduler *g = calloc(1, sizeof *g);
    size_t total = n + (min_epoch != 0);
    int64_t(*copy)[2] = calloc(total, sizeof *copy);
    if (g == NULL || copy == NULL) {
        free(g);
        free(copy);
        emi_fail(EM_ENOMEM, "em_grad_accum_scheduler: out of memory");
        return NULL;
    }
    size_t k = 0;
    if (min_epoch != 0) { /* {0: 1} is added when the smallest epoch is not 0 */
        copy[0][0] = 0;
        copy[0][1] = 1;
        k = 1;
    }
    memcpy(copy + k, schedule, n * sizeof *copy);
    /* insertion sort by epoch: the schedule is tiny */
    for (size_t i = 1; i < total; i++)
        for (size_t j = i; j > 0 && copy[j - 1][0] > copy[j][0]; j--) {
            int64_t e = copy[j][0], f = copy[j][1];
            copy[j][0] = copy[j - 1][0];
            copy[j][1] = copy[j - 1][1];
            copy[j - 1][0] = e;
            copy[j - 1][1] = f;
        }
    g->schedule = copy;
    g->n = total;
    return em_callback_new(&gas_ops, g);
}
