/* strategy.c: the strategy - single device or distributed data parallel. It runs the step functions
 * under the precision plugin's context, the backward with its hooks (under DDP with the gradient
 * reducer armed around it), and hands optimizer steps to the precision plugin.
 *
 * Lightning: strategies/strategy.py (Strategy.training_step, validation_step, backward,
 *            optimizer_step), strategies/single_device.py, plugins/precision/precision.py
 *            (pre_backward / backward / post_backward call the on_before_backward, backward and
 *            on_after_backward hooks), strategies/ddp.py (configure_ddp, pre_backward: prepare the
 *            reducer; block_backward_sync), overrides/distributed.py (prepare_for_backward).
 *            torch: nn/parallel/distributed.py (_sync_module_states, no_sync, the Reducer: the
 *            gradients are averaged before backward returns, so on_after_backward sees them).
 * Rules: docs/LIGHTNING_RULES.md §1.2 (backward), §4.4, §8.1.
 */
#include <stdlib.h>

#include "distributed.h"
#include "hooks.h"
#include "strategy.h"

/* torch DDP's bucket_cap_mb default, and its smaller first bucket (_DEFAULT_FIRST_BUCKET_BYTES) */
#define EMI_BUCKET_BYTES ((size_t)25 * 1024 * 1024)
#define EMI_FIRST_BUCKET_BYTES ((size_t)1024 * 1024)

/* ---- DDP: the replicas' parameters -------------------------------------------------------------------- */

/* Append `p` unless a handle of the same tensor is there already. */
static em_status push_unique(em_tensor ***list, size_t *n, size_t *cap, em_tensor *p)
{
    for (size_t i = 0; i < *n; i++)
        if (emi_tensor_id((*list)[i]) == emi_tensor_id(p))
            return EM_OK;
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 16;
        em_tensor **nl = realloc(*list, c * sizeof *nl);
        if (nl == NULL)
            return emi_fail(EM_ENOMEM, "DDP setup: out of memory");
        *list = nl;
        *cap = c;
    }
    (*list)[(*n)++] = p;
    return EM_OK;
}

em_status emi_strategy_model_to_device(em_trainer *t)
{
    if (t->fit.device.type == EM_CPU)
        return EM_OK;
    if (t->module->layers == NULL)
        return emi_fail(EM_EINVAL, "accelerator cuda: the module has no `layers` (em_module.layers), so the trainer "
                                   "cannot move its parameters to cuda:%d; set `layers` to the module's nets",
                        t->fit.device.index);
    return em_nn_to_device(t->module->layers, t->fit.device);
}

em_status emi_strategy_batch_to_device(em_trainer *t, em_batch *b)
{
    if (t->fit.device.type == EM_CPU)
        return EM_OK;
    for (size_t i = 0; i < b->n; i++) {
        em_device d = em_tensor_device(b->t[i]);
        if (d.type == t->fit.device.type && d.index == t->fit.device.index)
            continue;
        em_tensor *moved = em_to_device(b->t[i], t->fit.device);
        if (moved == NULL)
            return em_last_status() != EM_OK ? em_last_status() : EM_ETORCH;
        b->t[i] = moved;
    }
    return EM_OK;
}

em_status emi_strategy_setup(em_trainer *t)
{
    t->grad_allreduces = 0;
    t->grad_allreduces_base = emi_dist_grad_collectives();
    if (!t->env.distributed)
        return EM_OK;
    /* the module's parameters (its layers', then any other an optimizer holds), then its buffers */
    em_tensor **ps = NULL;
    size_t n = 0, cap = 0, n_params;
    em_status s = EM_OK;
    em_nn *layers = t->module->layers;
    for (size_t i = 0; s == EM_OK && layers != NULL && i < em_nn_num_parameters(layers); i++)
        s = push_unique(&ps, &n, &cap, em_nn_parameter(layers, i));
    for (size_t o = 0; s == EM_OK && o < t->setup.n_opts; o++)
        for (size_t i = 0; s == EM_OK && i < em_params_size(t->setup.params[o]); i++)
            s = push_unique(&ps, &n, &cap, em_params_get(t->setup.params[o], i));
    n_params = n;
    for (size_t i = 0; s == EM_OK && layers != NULL && i < em_nn_num_buffers(layers); i++)
        s = push_unique(&ps, &n, &cap, em_nn_buffer(layers, i));
    if (s == EM_OK && n > 0 && (s = emi_dist_broadcast_tensors(ps, n, 0)) != EM_OK)
        s = emi_dist_explain(t, s, "the broadcast of rank 0's parameters");
    if (s == EM_OK && n_params > 0 &&
        (t->reducer = emi_dist_reducer_new(ps, n_params, EMI_FIRST_BUCKET_BYTES, EMI_BUCKET_BYTES)) == NULL)
        s = em_last_status();
    free(ps);
    if (s != EM_OK)
        return emi_trainer_fail(t, "DDP setup", s);
    return EM_OK;
}

void emi_strategy_teardown(em_trainer *t)
{
    emi_dist_reducer_free(t->reducer);
    t->reducer = NULL;
    t->block_sync = false;
    t->no_sync_depth = 0;
    /* Lightning's Strategy.teardown: the module back to the CPU (lightning_module.cpu()) */
    if (t->fit.device.type == EM_CUDA && t->module != NULL && t->module->layers != NULL &&
        em_nn_to_device(t->module->layers, EM_DEVICE_CPU) != EM_OK)
        emi_warn("teardown: the module's layers could not be moved back to the CPU: %s", em_last_error());
}

em_status em_no_backward_sync_begin(em_module *m)
{
    em_trainer *t = m != NULL ? m->trainer_ : NULL;
    if (t == NULL || !t->fitting)
        return emi_fail(EM_ESTATE, "em_no_backward_sync_begin: only during fit");
    t->no_sync_depth++;
    return EM_OK;
}

em_status em_no_backward_sync_end(em_module *m)
{
    em_trainer *t = m != NULL ? m->trainer_ : NULL;
    if (t == NULL || !t->fitting)
        return emi_fail(EM_ESTATE, "em_no_backward_sync_end: only during fit");
    if (t->no_sync_depth == 0)
        return emi_fail(EM_ESTATE, "em_no_backward_sync_end: no em_no_backward_sync_begin is open");
    t->no_sync_depth--;
    return EM_OK;
}

void emi_strategy_block_sync(em_trainer *t, bool block)
{
    t->block_sync = block;
}

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
    /* DDP: the reducer is armed (prepare_for_backward) unless the batch accumulates or a no-sync
     * region is open; its buckets' all-reduces start during the backward */
    bool sync = t->reducer != NULL && !t->block_sync && t->no_sync_depth == 0;
    if (sync && (s = emi_dist_reducer_prepare(t->reducer)) != EM_OK)
        return emi_trainer_fail(t, "backward", s);
    const char *prev = emi_hook_enter(t, "backward");
    if (ops->backward != NULL)
        s = ops->backward(t->module, loss, retain_graph);
    else
        s = retain_graph ? em_backward_ex(loss, NULL, true) : em_backward(loss);
    if (sync) {
        /* waits for every bucket, also after a failed backward (no all-reduce left running) */
        bool failed = s != EM_OK || emi_has_error();
        em_status r = failed ? EM_OK : emi_dist_reducer_finish(t->reducer);
        if (failed) {
            em_status keep = s != EM_OK ? s : em_last_status();
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", em_last_error());
            emi_dist_reducer_finish(t->reducer);
            em_clear_error();
            emi_fail(keep, "%s", msg);
            s = emi_dist_explain(t, keep, "backward");
        } else if (r != EM_OK) {
            s = emi_dist_explain(t, r, "the gradient all-reduce");
        }
        t->grad_allreduces = emi_dist_grad_collectives() - t->grad_allreduces_base;
    }
    if ((s = emi_hook_leave(t, prev, "backward", s)) != EM_OK)
        return s;
    return emi_hooks_call(t, EMI_ON_AFTER_BACKWARD, NULL);
}

em_status emi_strategy_optimizer_step(em_trainer *t, size_t index, const em_closure *closure, emi_grad_probe *probe)
{
    return emi_precision_optimizer_step(t, index, closure, probe);
}
