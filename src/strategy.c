/* strategy.c: the strategy - single device. It runs the step functions under the precision plugin's
 * context, the backward with its hooks, and hands optimizer steps to the precision plugin.
 *
 * Lightning: strategies/strategy.py (Strategy.training_step, validation_step, backward,
 *            optimizer_step), strategies/single_device.py, plugins/precision/precision.py
 *            (pre_backward / backward / post_backward call the on_before_backward, backward and
 *            on_after_backward hooks). Rules: docs/LIGHTNING_RULES.md §1.2 (backward), §4.4.
 * Distributed data parallel (strategies/ddp.py) will add its reducer here: sync after backward,
 * none on accumulating batches.
 */
#include "hooks.h"
#include "strategy.h"

/* The step function `hook` of the module under the precision context; the device of the batch's first
 * tensor says where autocast applies. */
static em_status step_function(em_trainer *t, const char *hook, em_batch *b, int64_t batch_idx, em_tensor **loss)
{
    if (emi_precision_forward_begin(t, em_tensor_device(b->t[0])) != EM_OK)
        return emi_trainer_fail(t, hook, em_last_status());
    const em_module_ops *ops = t->module->ops;
    const char *prev = emi_hook_enter(t, hook);
    em_status s = EM_OK;
    if (loss != NULL)
        *loss = ops->training_step(t->module, b, batch_idx);
    else
        s = ops->validation_step(t->module, b, batch_idx);
    s = emi_hook_leave(t, prev, hook, s);
    emi_precision_forward_end(t);
    return s;
}

em_status emi_strategy_training_step(em_trainer *t, em_batch *b, int64_t batch_idx, em_tensor **loss)
{
    *loss = NULL;
    return step_function(t, "training_step", b, batch_idx, loss);
}

em_status emi_strategy_validation_step(em_trainer *t, em_batch *b, int64_t batch_idx)
{
    return step_function(t, "validation_step", b, batch_idx, NULL);
}

em_status emi_strategy_backward(em_trainer *t, em_tensor *loss, bool retain_graph)
{
    /* Precision.pre_backward: 16-mixed scales the loss; on_before_backward and backward see the result */
    if ((loss = emi_precision_pre_backward(t, loss)) == NULL)
        return emi_trainer_fail(t, "backward", em_last_status());
    em_status s = emi_hooks_call(t, EMI_ON_BEFORE_BACKWARD, &(emi_hook_args){.loss = loss});
    if (s != EM_OK)
        return s;
    const em_module_ops *ops = t->module->ops;
    const char *prev = emi_hook_enter(t, "backward");
    if (ops->backward != NULL)
        s = ops->backward(t->module, loss, retain_graph);
    else
        s = retain_graph ? em_backward_ex(loss, NULL, true) : em_backward(loss);
    if ((s = emi_hook_leave(t, prev, "backward", s)) != EM_OK)
        return s;
    return emi_hooks_call(t, EMI_ON_AFTER_BACKWARD, NULL);
}

em_status emi_strategy_optimizer_step(em_trainer *t, size_t index, const em_closure *closure, emi_grad_probe *probe)
{
    return emi_precision_optimizer_step(t, index, closure, probe);
}
