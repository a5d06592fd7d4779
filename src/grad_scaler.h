/* grad_scaler.h: what the precision plugin needs of the grad scaler (src/grad_scaler.c) beyond its
 * public API (include/ember/amp.h). */
#ifndef EMBER_GRAD_SCALER_H
#define EMBER_GRAD_SCALER_H

#include "backend.h"
#include "ember/amp.h"

/** Whether em_grad_scaler_unscale already ran for `opt` (through wrappers) since the last update:
 *  torch's OptState.UNSCALED. false for a disabled scaler. Never fails. */
bool emi_grad_scaler_unscaled(const em_grad_scaler *s, em_optimizer *opt);

#endif /* EMBER_GRAD_SCALER_H */
