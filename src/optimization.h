/* optimization.h: the two optimization loops - what one training batch does in automatic and in
 * manual optimization (Lightning's loops/optimization/). */
#ifndef EMBER_OPTIMIZATION_H
#define EMBER_OPTIMIZATION_H

#include "loop.h"

/** Lightning: _AutomaticOptimization.run for one batch. `stepping`: this batch ends an accumulation
 *  window (decided once per batch by the epoch loop): the optimizer_step hook runs the closure and
 *  global_step counts; otherwise the closure alone runs. *out receives the detached loss for
 *  on_train_batch_end (NULL when none or nobody reads it; owned by the batch's scope). */
em_status emi_automatic_run(em_trainer *t, em_batch *batch, bool stepping, em_tensor **out);

/** Lightning: _ManualOptimization.run: training_step with wrapped steps counted in global_step.
 *  *out receives its detached return value (for on_train_batch_end). */
em_status emi_manual_run(em_trainer *t, em_batch *batch, em_tensor **out);
/** Forget toggle_optimizer's saved flags (at fit end). */
void emi_toggle_free(em_trainer *t);
/** Close a toggle_model region left open at fit end (a warning; the frozen flags stay, as Lightning's
 *  toggle_model leaves them when its body raises). */
void emi_toggle_model_teardown(em_trainer *t);

#endif /* EMBER_OPTIMIZATION_H */
