/* resume.h: the trainer's checkpoints (resume.c): em_trainer_save_checkpoint, and the restoring half of
 * em_trainer_fit_from, which trainer.c calls at three points of a fit. */
#ifndef EMBER_RESUME_H
#define EMBER_RESUME_H

#include "loop.h"

/** Before the fit: open and validate `path` as a trainer checkpoint for module `m` (the file, its
 *  "ember.trainer" record, manual vs automatic) and keep it in t->resume. Nothing of the trainer or the
 *  module changes. Errors: EM_EINVAL / EM_EIO, recorded with the path. */
em_status emi_resume_open(em_trainer *t, const em_module *m, const char *path);
/** After configure_optimizers: check that the checkpoint fits this setup (layers, optimizers, schedulers,
 *  precision, batches per epoch, world size), then restore weights, optimizer and scheduler state, the
 *  scaler, the loop's counters and logged values, the callbacks' state; sets t->resume_phase. Errors:
 *  recorded; nothing is changed when a check fails. */
em_status emi_resume_apply(em_trainer *t);
/** Right before the loop continues (after on_train_start): the accumulation factor, the gradients kept
 *  mid-window, the generators' states. Errors: recorded. */
em_status emi_resume_enter_loop(em_trainer *t);
/** Close the checkpoint of the fit (at its end, also after a failure). NULL-safe. */
void emi_resume_close(em_trainer *t);

#endif /* EMBER_RESUME_H */
