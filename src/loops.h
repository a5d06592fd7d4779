/* loops.h: the epoch loop (one training epoch, batch by batch) and the validation loop. */
#ifndef EMBER_LOOPS_H
#define EMBER_LOOPS_H

#include "loop.h"

/* ---- validation.c: Lightning's _EvaluationLoop ------------------------------------------------------ */

/** Validation runs in this fit: a val loader, a validation_step and at least one val batch. */
bool emi_validation_enabled(const em_trainer *t);
/** Run `max_batches` validation batches as `stage` (EMI_STAGE_VAL or EMI_STAGE_SANITY): eval mode,
 *  no grad, the validation hooks. Errors: recorded. */
em_status emi_validation_run(em_trainer *t, int64_t max_batches, emi_stage stage);

/* ---- epoch_loop.c: Lightning's _TrainingEpochLoop -------------------------------------------------------- */

/** Run the batches of epoch t->current_epoch until the epoch loop is done. *reached_end tells whether
 *  the epoch's final batch ran (epoch-interval schedulers step only then). Errors: recorded. */
em_status emi_epoch_loop_run(em_trainer *t, bool *reached_end);
/** Lightning: _TrainingEpochLoop._update_learning_rates: step the schedulers of `interval` (plateau ones
 *  or the others) whose frequency is due. Step-interval ones only on a `stepping` batch. */
em_status emi_update_learning_rates(em_trainer *t, em_interval interval, bool plateau, bool stepping);
/** Whether a limit `max` (-1 = none) is reached by `current`. */
bool emi_limit_reached(int64_t current, int64_t max);
/** Lightning: _FitLoop._can_stop_early: min_epochs and min_steps are met. */
bool emi_can_stop_early(const em_trainer *t);

#endif /* EMBER_LOOPS_H */
