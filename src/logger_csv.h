/* logger_csv.h: Lightning's CSVLogger - metrics.csv under default_root_dir/lightning_logs/version_N. */
#ifndef EMBER_LOGGER_CSV_H
#define EMBER_LOGGER_CSV_H

#include "loop.h"

/** Create the log directory and a logger writing metrics.csv there: `log_dir` when given (created
 *  with its parents), else root_dir/lightning_logs/version_N with the next free N, claimed atomically
 *  (mkdir; trainers started at the same moment get different versions). Errors: EM_EIO naming the
 *  directory and errno's text (a path that is a file, no permission, ...), EM_ENOMEM. */
em_status emi_csv_logger_open(emi_csv_logger **out, const char *root_dir, const char *log_dir);
/** Lightning: CSVLogger.log_metrics(metrics, step) then save(): the row is written to the file at
 *  once (no rows are kept in memory); a row with a new column rewrites the file under the new sorted
 *  header. Frees `row`, also when it fails. Errors: EM_EIO naming metrics.csv and errno's text. */
em_status emi_csv_logger_log_metrics(emi_csv_logger *l, emi_kvlist *row, int64_t step);
/** The directory metrics.csv is in (borrowed, valid until the logger is closed). */
const char *emi_csv_logger_dir(const emi_csv_logger *l);
/** Free the logger (NULL is ignored). */
void emi_csv_logger_close(emi_csv_logger *l);

#endif /* EMBER_LOGGER_CSV_H */
