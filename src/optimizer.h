/* optimizer.h: LightningOptimizer - the wrappers em_optimizers() hands to the user. */
#ifndef EMBER_OPTIMIZER_H
#define EMBER_OPTIMIZER_H

#include "loop.h"

/** After configure_optimizers: one wrapper per optimizer (t->wrappers) and the scheduler list of
 *  em_lr_schedulers (t->sched_list). Errors: EM_ENOMEM (recorded). */
em_status emi_wrappers_create(em_trainer *t);
/** Free them (at fit end, also after a failure). */
void emi_wrappers_free(em_trainer *t);

#endif /* EMBER_OPTIMIZER_H */
