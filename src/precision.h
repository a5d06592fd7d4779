/* precision.h: Lightning's precision plugin - which precision a fit runs in, autocast around the
 * step functions, the optimizer step with its closure wrapped (on_before_optimizer_step, clipping),
 * and gradient clipping. 16-mixed's grad scaler goes here. */
#ifndef EMBER_PRECISION_H
#define EMBER_PRECISION_H

#include "loop.h"

/** At fit start: the precision in force (Lightning's accelerator connector: 16-mixed without CUDA
 *  runs as bf16-mixed, with a warning). Errors: EM_EUNSUPPORTED for 16-mixed on CUDA (no scaler yet). */
em_status emi_precision_resolve(em_trainer *t);

/** Enter the step functions' context (autocast under the mixed precisions) for a batch on `device`.
 *  Errors: autocast's (recorded). */
em_status emi_precision_forward_begin(em_trainer *t, em_device device);
/** Leave it. */
void emi_precision_forward_end(em_trainer *t);

/** What the trace wants from a step: the gradient norm after the first closure evaluation, before
 *  and after clipping (NAN until measured). */
typedef struct emi_grad_probe {
    double norm_before, norm_after;
    bool measured;
} emi_grad_probe;

/** Lightning: Precision.optimizer_step: optimizer `index` steps with `closure` (NULL = none) wrapped
 *  so that each evaluation is followed by on_before_optimizer_step and, in automatic optimization,
 *  configure_gradient_clipping. `probe` may be NULL. Errors: the step's, the hooks' (recorded). */
em_status emi_precision_optimizer_step(em_trainer *t, size_t index, const em_closure *closure, emi_grad_probe *probe);

#endif /* EMBER_PRECISION_H */
