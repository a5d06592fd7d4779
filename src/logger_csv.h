/* logger_csv.h: Lightning's CSVLogger - metrics.csv under default_root_dir/lightning_logs/version_N. */
#ifndef EMBER_LOGGER_CSV_H
#define EMBER_LOGGER_CSV_H

#include "loop.h"

/** Create the log directory (log_dir, or root_dir/lightning_logs/version_N with the next free N) and
 *  a logger writing metrics.csv there. Errors: EM_EIO naming the directory, EM_ENOMEM. */
em_status emi_csv_logger_open(emi_csv_logger **out, const char *root_dir, const char *log_dir);
/** Lightning: CSVLogger.log_metrics(metrics, step). Takes ownership of `row` (freed here). */
void emi_csv_logger_log_metrics(emi_csv_logger *l, emi_kvlist *row, int64_t step);
/** Free the logger (NULL is ignored). */
void emi_csv_logger_close(emi_csv_logger *l);

#endif /* EMBER_LOGGER_CSV_H */
