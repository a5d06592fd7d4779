/* precision.h: Lightning's precision plugin - which precision a fit runs in, autocast around the
 * step functions, the optimizer step with its closure wrapped (on_before_optimizer_step, clipping),
 * gradient clipping, and 16-mixed's grad scaler (scaling before backward, unscale/step/update). */
#ifndef EMBER_PRECISION_H
#define EMBER_PRECISION_H

#include "loop.h"

/** At fit start: the precision in force (Lightning's accelerator connector: 16-mixed without CUDA
 *  and without a scaler in the config runs as bf16-mixed, with a warning) and 16-mixed's scaler (the
 *  config's, or the trainer's own on CUDA, created here). Errors: EM_ENOMEM (recorded). */
em_status emi_precision_resolve(em_trainer *t);

/** After configure_optimizers: under 16-mixed, LBFGS or a C optimizer whose ops require a closure is
 *  refused (Lightning: "AMP and the LBFGS optimizer are not compatible."). Errors: EM_EINVAL (recorded). */
em_status emi_precision_check_optimizers(em_trainer *t);

/** Lightning: MixedPrecision.pre_backward: under 16-mixed the loss times the scale (a new tensor in
 *  the open scope), else `loss` itself. NULL on failure (recorded). */
em_tensor *emi_precision_pre_backward(em_trainer *t, em_tensor *loss);

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
