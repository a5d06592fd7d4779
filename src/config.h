/* config.h: the Trainer arguments - checked at construction, resolved at fit start. */
#ifndef EMBER_CONFIG_H
#define EMBER_CONFIG_H

#include "loop.h"

/** Lightning: Trainer.__init__'s checks (and those it lets through and crashes on later). Errors:
 *  EM_EINVAL with a message saying what to change. */
/** Copy the caller's config into *out as far as its version has fields (a version-1 struct ends
 *  before grad_scaler: the rest is zero). Errors: EM_EINVAL for a version of 0 or newer than this
 *  library's (recorded). */
em_status emi_config_read(const em_trainer_config *in, em_trainer_config *out);
em_status emi_config_check(const em_trainer_config *c);
/** At fit start, before the data: the limits (_parse_loop_limits) and the settings the loop reads
 *  (t->fit), precision aside (precision.c). */
void emi_config_resolve(em_trainer *t);
/**
 * Lightning's accelerator connector, the device part: auto is cuda where a GPU is visible and the module
 * has `layers` to move (else the CPU, with a notice when a GPU is there);
 * cuda without one fails (EM_EUNSUPPORTED, recorded, with Lightning's message). The device is
 * cuda:LOCAL_RANK (cuda:0 in one process), in t->fit.device.
 */
em_status emi_accelerator_resolve(em_trainer *t);
/** Lightning: _FitLoop.setup_data: batch counts under the limits, the validation interval, then
 *  estimated_stepping_batches. Errors: EM_EINVAL (a fraction that gives no batch, an interval longer
 *  than the epoch). */
em_status emi_config_setup_data(em_trainer *t);

#endif /* EMBER_CONFIG_H */
