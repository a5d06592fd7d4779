/* setup.h: configure_optimizers' result - the optimizers and schedulers the trainer owns for a fit. */
#ifndef EMBER_SETUP_H
#define EMBER_SETUP_H

#include "loop.h"

/** An empty setup for `t` (before configure_optimizers). */
void emi_setup_init(em_optim_setup *s, em_trainer *t);
/** Free the optimizers, schedulers and parameter lists; leaves an empty setup. */
void emi_setup_free(em_optim_setup *s);
/** After configure_optimizers: Lightning's checks on what it returned (docs/LIGHTNING_RULES.md §10
 *  #15, #19, #20, #22), then each optimizer's parameter list (s->params). */
em_status emi_setup_finish(em_optim_setup *s);
/** Every parameter of every group of `opt` (for clipping and gradient norms). The caller frees it
 *  with em_params_free(). NULL when out of memory (recorded). */
em_params *emi_optimizer_params(const em_optimizer *opt);
/** The index of `opt` (a raw optimizer of this fit or its LightningOptimizer wrapper) or -1. */
int emi_optimizer_index(const em_trainer *t, const em_optimizer *opt);

#endif /* EMBER_SETUP_H */
