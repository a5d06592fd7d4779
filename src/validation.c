/* validation.c: the validation loop (and the sanity check, which runs it before training).
 *
 * Lightning: loops/evaluation_loop.py (_EvaluationLoop.run, _evaluation_step: eval mode, no grad,
 *            on_validation_start / epoch_start / epoch_end / end around the batches).
 * Rules: docs/LIGHTNING_RULES.md §9.5-9.6.
 */
#include "hooks.h"
#include "loader.h"
#include "loops.h"
#include "metrics.h"
#include "strategy.h"

bool emi_validation_enabled(const em_trainer *t)
{
    return t->val != NULL && t->module->ops->validation_step != NULL && t->fit.num_val_batches > 0;
}

/* One validation batch, in a scope of its own. */
static em_status validation_batch(em_trainer *t, int64_t i)
{
    emi_user_scope scope = emi_user_scope_begin();
    em_batch batch;
    em_clear_error();
    t->val_batch_idx = i;
    em_status s = emi_loader_fetch(t->val, i, &batch);
    if (s == EM_OK)
        s = emi_strategy_batch_to_device(t, &batch);
    t->batch = &batch;
    if (s != EM_OK)
        s = emi_trainer_fail(t, "val_dataloader", s);
    else
        s = emi_strategy_validation_step(t, &batch, i);
    emi_user_scope_end(scope);
    t->batch = NULL;
    if (s == EM_OK)
        emi_metrics_refresh(t);
    return s;
}

/* The hooks and batches of one run; the caller sets and restores the mode. */
static em_status validation_body(em_trainer *t, int64_t max_batches)
{
    em_status s;
    if ((s = emi_hooks_call(t, EMI_ON_VALIDATION_START, NULL)) != EM_OK ||
        (s = emi_hooks_call(t, EMI_ON_VALIDATION_EPOCH_START, NULL)) != EM_OK)
        return s;
    for (int64_t i = 0; i < max_batches; i++)
        if ((s = validation_batch(t, i)) != EM_OK)
            return s;
    t->val_epoch_end = true;
    if ((s = emi_metrics_sync_epoch(t, EMI_STAGE_VAL)) != EM_OK ||
        (s = emi_hooks_call(t, EMI_ON_VALIDATION_EPOCH_END, NULL)) != EM_OK)
        return s;
    if ((s = emi_metrics_epoch_end(t, EMI_STAGE_VAL)) != EM_OK)
        return s;
    return emi_hooks_call(t, EMI_ON_VALIDATION_END, NULL);
}

em_status emi_validation_run(em_trainer *t, int64_t max_batches, emi_stage stage)
{
    emi_stage prev_stage = t->stage;
    em_batch *prev_batch = t->batch;
    t->stage = stage;
    emi_metrics_reset_stage(t, EMI_STAGE_VAL);
    em_nn *layers = t->module->layers;
    bool was_training = layers != NULL && em_nn_is_training(layers);
    if (layers != NULL)
        em_nn_train(layers, false);
    em_no_grad_begin();
    em_status s = validation_body(t, max_batches);
    em_no_grad_end();
    if (layers != NULL && was_training)
        em_nn_train(layers, true);
    t->stage = prev_stage;
    t->batch = prev_batch;
    return s;
}
