/* strategy.h: Lightning's Strategy - where the model's step functions, backward and optimizer steps
 * run: a single device, or distributed data parallel (the gradient reducer armed around backward,
 * no_sync on accumulating batches). */
#ifndef EMBER_STRATEGY_H
#define EMBER_STRATEGY_H

#include "loop.h"
#include "precision.h"

/** Lightning: Strategy.training_step: training_step under the precision context. *loss receives
 *  its return value; NULL with EM_OK is Lightning's `return None`. Errors: recorded. */
em_status emi_strategy_training_step(em_trainer *t, em_batch *b, int64_t batch_idx, em_tensor **loss);
/** Lightning: Strategy.validation_step, the same for validation_step. */
em_status emi_strategy_validation_step(em_trainer *t, em_batch *b, int64_t batch_idx);
/** Lightning: Strategy.backward: on_before_backward, the module's backward (default
 *  em_backward_ex), on_after_backward. Errors: recorded. */
em_status emi_strategy_backward(em_trainer *t, em_tensor *loss, bool retain_graph);
/** Lightning: DDPStrategy.configure_ddp, after configure_optimizers: rank 0's parameters and buffers
 *  broadcast, the gradient reducer made. Nothing without DDP. Errors: recorded. */
em_status emi_strategy_setup(em_trainer *t);
/* Lightning: strategy.model_to_device, before configure_optimizers: the module's layers to t->fit.device
 * (nothing on the CPU). Under cuda a module without `layers` is an error: the trainer cannot see its
 * parameters. */
em_status emi_strategy_model_to_device(em_trainer *t);
/* Lightning: strategy.batch_to_device: every tensor of `b` to t->fit.device (copies owned by the open
 * scope; nothing on the CPU). */
em_status emi_strategy_batch_to_device(em_trainer *t, em_batch *b);
/** Free what emi_strategy_setup made. */
void emi_strategy_teardown(em_trainer *t);
/** Lightning: _block_parallel_sync_behavior: `block` for an accumulating batch (no all-reduce). */
void emi_strategy_block_sync(em_trainer *t, bool block);
/** Lightning: Strategy.optimizer_step -> Precision.optimizer_step (precision.h). */
em_status emi_strategy_optimizer_step(em_trainer *t, size_t index, const em_closure *closure, emi_grad_probe *probe);

#endif /* EMBER_STRATEGY_H */
