/* metrics_plot.h: every metric of a metrics.csv (Lightning's CSVLogger layout, which ember writes) drawn
 * as curves in one PNG, one panel per metric, against the step or epoch column. ember-plot is its command
 * line; the examples call it directly (classifier --curves).
 *
 * The CSV is read as untrusted input: quoted fields ("a,b", "say ""hi"""), CRLF or LF line ends, rows
 * with fewer or more cells than the header, empty cells, text where a number is expected, NaN/inf and
 * numbers beyond +-1e300 (not drawn, counted in the panel's subtitle), embedded NUL bytes; a file over
 * 64 MiB, over 8M cells or without a header is refused with a message. No ember dependency (cairo via plot.c).
 */
#ifndef EMBER_TOOLS_METRICS_PLOT_H
#define EMBER_TOOLS_METRICS_PLOT_H

#include <stdbool.h>
#include <stddef.h>

/** The x axis of every panel. */
typedef enum metrics_x { METRICS_X_STEP = 0, METRICS_X_EPOCH } metrics_x;

/** Options; all-zero = against "step", automatic columns, the file name as title. */
typedef struct metrics_plot_opts {
    metrics_x x;
    const char *title; /* NULL: the CSV's path */
    int columns;       /* panels per row; 0 = 1 for one metric, 2 up to four, else 3 */
} metrics_plot_opts;

/**
 * Read `csv_path` and write the panels to `png_path`. Returns the number of panels drawn (>= 1), or -1 with
 * a one-line reason in metrics_plot_error() (unreadable or oversized file, no header, no metric column,
 * a PNG that cannot be written).
 */
int metrics_plot(const char *csv_path, const char *png_path, const metrics_plot_opts *opts);

/** The reason of the last failure ("" if none). Borrowed: a static buffer. */
const char *metrics_plot_error(void);

#endif /* EMBER_TOOLS_METRICS_PLOT_H */
