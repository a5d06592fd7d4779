/* metrics.h: self.log's results, callback_metrics, the progress bar's metrics and the logger
 * connector (what reaches metrics.csv, and when). */
#ifndef EMBER_METRICS_H
#define EMBER_METRICS_H

#include "loop.h"

/** At fit start: open the CSV logger when cfg.enable_csv_logger. Errors: the logger's. */
em_status emi_metrics_open(em_trainer *t);
/** At fit end (also after a failure): close the logger, forget the results. */
void emi_metrics_close(em_trainer *t);
/** Forget what a stage logged (at the start of a train epoch or a validation run). */
void emi_metrics_reset_stage(em_trainer *t, emi_stage stage);
/** Refresh callback_metrics and the progress bar from the live results (Lightning's
 *  callback_metrics property; also Lightning's on_batch_end update). */
void emi_metrics_refresh(em_trainer *t);
/** Write the step values to the logger (Lightning: log_metrics on a stepping batch). Errors: the
 *  logger's (recorded as the fit's failure, "logger: cannot write .../metrics.csv: ..."). */
em_status emi_metrics_log_step(em_trainer *t);
/** The train loop reached its epoch end: hooks now see epoch values (sync_dist ones reduced across
 *  ranks). Errors: a failed all-reduce (recorded). */
em_status emi_metrics_train_epoch_end_reached(em_trainer *t);
/** A stage's sync_dist epoch values reduced across ranks (the val loop at its epoch end). Errors:
 *  recorded. */
em_status emi_metrics_sync_epoch(em_trainer *t, emi_stage stage);
/** Reduce a stage's epoch values into callback_metrics (and, for validation, the logger). Errors: the
 *  logger's (recorded). */
em_status emi_metrics_epoch_end(em_trainer *t, emi_stage stage);
/** After the sanity check: its metrics never count. */
void emi_metrics_reset_all(em_trainer *t);
/** Log the train epoch values (step = batches_that_stepped - 1) and reset the train results. Errors:
 *  the logger's (recorded). */
em_status emi_metrics_train_epoch_log(em_trainer *t);

/** The static name of a hook that may log (what emi_metric.fx holds) equal to `fx`; NULL for another
 *  name. For results restored from a checkpoint. */
const char *emi_metrics_fx_intern(const char *fx);

#endif /* EMBER_METRICS_H */
