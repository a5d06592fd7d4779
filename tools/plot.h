/* plot.h: small PNG charts for the examples, drawn with cairo.
 *
 * One chart per file: a title, a framed plot area with a light grid, "nice" ticks (1, 2, 5 x 10^k)
 * with their labels, axis labels and a legend. A chart holds any number of series, each drawn as a
 * polyline, as dots (a scatter plot) or as circles of a radius given in data units:
 *
 *     plot_series s[] = {
 *         {.label = "real", .x = xs, .y = ys, .n = n, .style = PLOT_DOTS, .rgb = {0.3, 0.3, 0.3}, .size = 1.5},
 *     };
 *     plot_chart c = {.title = "samples", .xlabel = "x", .ylabel = "y", .xmin = -3, .xmax = 3,
 *                     .ymin = -3, .ymax = 3, .equal_aspect = true};
 *     if (plot_png("out.png", &c, s, 1) != 0) fprintf(stderr, "%s\n", plot_error());
 *
 * Several charts in one picture, row by row: plot_png_grid().
 *
 * Shared by the examples (gan) and ember-plot (tools/); not part of the ember library: it has no ember
 * dependency. Values should stay within about +-1e300 (a range wider than the doubles cannot be drawn).
 */
#ifndef EMBER_TOOLS_PLOT_H
#define EMBER_TOOLS_PLOT_H

#include <stdbool.h>
#include <stddef.h>

/** How a series is drawn. */
typedef enum plot_style {
    PLOT_LINE = 0, /* a polyline through the points in order; a NaN y breaks the line */
    PLOT_DOTS,     /* filled dots of radius `size` pixels */
    PLOT_CIRCLES   /* hollow circles of radius `size` in x data units (round with equal_aspect) */
} plot_style;

/** One data series. The arrays are borrowed for the duration of plot_png(). */
typedef struct plot_series {
    const char *label;    /* legend text (UTF-8); NULL = not in the legend */
    const double *x, *y;  /* n points */
    size_t n;
    plot_style style;
    double rgb[3];        /* colour, each in [0, 1] */
    double alpha;         /* opacity; 0 means 1 */
    double size;          /* line width or dot radius in pixels (0 = 1.5); circle radius in data units */
    bool dashed;          /* lines and circles only */
} plot_series;

/** A short text centred on a data point (a note beside a marker). */
typedef struct plot_text {
    double x, y;
    const char *text; /* UTF-8, borrowed for the duration of plot_png() */
} plot_text;

/** Where the legend goes. */
typedef enum plot_corner {
    PLOT_TOP_RIGHT = 0,
    PLOT_TOP_LEFT,
    PLOT_BOTTOM_RIGHT,
    PLOT_BOTTOM_LEFT
} plot_corner;

/** The chart. Leave a limit equal to its partner (e.g. xmin == xmax == 0) to fit it to the data. */
typedef struct plot_chart {
    const char *title;    /* UTF-8; NULL = none */
    const char *subtitle; /* a smaller second line under the title; NULL = none */
    const char *xlabel, *ylabel;
    int width, height;    /* pixels; 0 = 800 x 600 */
    double xmin, xmax, ymin, ymax;
    bool equal_aspect;    /* one x unit as long as one y unit (the plot area is shrunk to fit) */
    plot_corner legend;   /* the corner of the plot area that holds the legend */
    const plot_text *texts; /* n_texts notes drawn over the data; NULL = none */
    size_t n_texts;
} plot_chart;

/**
 * Draw the chart into a PNG file at `path` (overwritten).
 * Returns 0, or -1 with a one-line reason in plot_error() (a cairo failure, a file that cannot be
 * written, no finite data to fit a range to).
 */
int plot_png(const char *path, const plot_chart *chart, const plot_series *series, size_t n_series);

/** One chart of a grid: the chart (its width and height are ignored) and its series. */
typedef struct plot_cell {
    plot_chart chart;
    const plot_series *series;
    size_t n_series;
} plot_cell;

/** Charts laid out row by row, `columns` per row, each cell_width x cell_height pixels. */
typedef struct plot_grid {
    const char *title;        /* over the whole picture; NULL = none */
    int columns;              /* 0 = 1 */
    int cell_width, cell_height; /* 0 = 560 x 380 */
    const plot_cell *cells;
    size_t n_cells;
} plot_grid;

/**
 * Draw the grid into a PNG file at `path` (overwritten). Returns 0, or -1 with a reason in plot_error()
 * (as plot_png; also a picture over 32000 pixels on a side).
 */
int plot_png_grid(const char *path, const plot_grid *grid);

/** The reason of the last failed plot_png() / plot_png_grid() ("" if none). Borrowed: a static buffer. */
const char *plot_error(void);

#endif /* EMBER_TOOLS_PLOT_H */
