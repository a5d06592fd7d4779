/* metrics_plot.c: metrics.csv -> one PNG of curves (see metrics_plot.h). */
#include "metrics_plot.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plot.h"

#define MAX_FILE_BYTES (64u << 20)
#define MAX_CELLS ((size_t)1 << 23) /* rows x columns kept as doubles: 64 MiB */
#define MAX_COLUMNS 4096
#define MAX_PANELS 60
#define MAX_ABS 1e300 /* values beyond are not drawn: a range wider than the doubles has no scale */

static char mp_err[512];

const char *metrics_plot_error(void)
{
    return mp_err;
}

static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(mp_err, sizeof mp_err, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- reading the file ----------------------------------------------------------------------------------- */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fail("cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        if (n == cap) {
            if (cap >= MAX_FILE_BYTES) {
                fail("%s is larger than %u MiB: not a metrics.csv this tool reads", path, MAX_FILE_BYTES >> 20);
                free(buf);
                buf = NULL;
                break;
            }
            char *p = realloc(buf, cap * 2);
            if (p == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = p;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                fail("cannot read %s: %s", path, strerror(errno));
                free(buf);
                buf = NULL;
            }
            break;
        }
    }
    if (buf == NULL && mp_err[0] == '\0')
        fail("%s: out of memory", path);
    fclose(f);
    *len = n;
    return buf;
}

/* ---- the CSV: a header of names, then rows of numbers -------------------------------------------------- */

typedef struct column {
    char *name;
    double *v; /* one per data row; NAN for an empty, missing or non-numeric cell */
} column;

typedef struct table {
    column *cols;
    size_t n_cols, n_rows, cap_rows;
    size_t ragged; /* rows with another number of cells than the header */
} table;

static void table_free(table *t)
{
    for (size_t i = 0; i < t->n_cols; i++) {
        free(t->cols[i].name);
        free(t->cols[i].v);
    }
    free(t->cols);
    memset(t, 0, sizeof *t);
}

/* A growable cell buffer. */
typedef struct cellbuf {
    char *s;
    size_t n, cap;
} cellbuf;

static bool cell_put(cellbuf *c, char ch)
{
    if (c->n + 1 >= c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        char *p = realloc(c->s, cap);
        if (p == NULL)
            return false;
        c->s = p;
        c->cap = cap;
    }
    c->s[c->n++] = ch;
    c->s[c->n] = '\0';
    return true;
}

/* The next field from buf[*pos] on: into `c`, unquoted. *end_of_row is set when the field ends its row
 * (or the file). Returns false when out of memory. */
static bool next_field(const char *buf, size_t len, size_t *pos, cellbuf *c, bool *end_of_row)
{
    size_t i = *pos;
    c->n = 0;
    if (c->s != NULL)
        c->s[0] = '\0';
    bool quoted = i < len && buf[i] == '"';
    if (quoted)
        i++;
    *end_of_row = false;
    while (i < len) {
        char ch = buf[i];
        if (quoted) {
            if (ch == '"') {
                if (i + 1 < len && buf[i + 1] == '"') { /* "" inside quotes */
                    if (!cell_put(c, '"'))
                        return false;
                    i += 2;
                    continue;
                }
                quoted = false; /* closing quote; anything up to the separator is kept as text */
                i++;
                continue;
            }
            if (!cell_put(c, ch))
                return false;
            i++;
            continue;
        }
        if (ch == ',') {
            i++;
            *pos = i;
            return true;
        }
        if (ch == '\n' || ch == '\r') {
            i++;
            if (ch == '\r' && i < len && buf[i] == '\n')
                i++;
            *end_of_row = true;
            *pos = i;
            return true;
        }
        if (!cell_put(c, ch))
            return false;
        i++;
    }
    *end_of_row = true; /* end of file (also inside an unterminated quote) */
    *pos = i;
    return true;
}

static double parse_number(const char *s)
{
    if (s == NULL)
        return NAN;
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s == '\0')
        return NAN;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    while (end != NULL && (*end == ' ' || *end == '\t'))
        end++;
    if (end == s || end == NULL || *end != '\0')
        return NAN;
    return v; /* +-HUGE_VAL on overflow: not finite, not drawn */
}

static bool add_row(table *t)
{
    if ((t->n_rows + 1) * t->n_cols > MAX_CELLS)
        return false;
    if (t->n_rows == t->cap_rows) {
        size_t cap = t->cap_rows ? 2 * t->cap_rows : 256;
        for (size_t c = 0; c < t->n_cols; c++) {
            double *p = realloc(t->cols[c].v, cap * sizeof *p);
            if (p == NULL)
                return false;
            t->cols[c].v = p;
        }
        t->cap_rows = cap;
    }
    for (size_t c = 0; c < t->n_cols; c++)
        t->cols[c].v[t->n_rows] = NAN;
    t->n_rows++;
    return true;
}

static int parse_csv(const char *path, const char *buf, size_t len, table *t)
{
    memset(t, 0, sizeof *t);
    size_t pos = 0;
    cellbuf c = {0};
    bool eor = false;
    /* the header */
    while (!eor && pos < len) {
        if (!next_field(buf, len, &pos, &c, &eor))
            goto oom;
        if (t->n_cols == MAX_COLUMNS) {
            free(c.s);
            table_free(t);
            return fail("%s: more than %d columns", path, MAX_COLUMNS);
        }
        column *p = realloc(t->cols, (t->n_cols + 1) * sizeof *p);
        if (p == NULL)
            goto oom;
        t->cols = p;
        char name[48];
        snprintf(name, sizeof name, "column %zu", t->n_cols + 1);
        const char *src = c.n > 0 && c.s[0] != '\0' ? c.s : name;
        t->cols[t->n_cols] = (column){.name = malloc(strlen(src) + 1)};
        if (t->cols[t->n_cols].name == NULL)
            goto oom;
        strcpy(t->cols[t->n_cols].name, src);
        t->n_cols++;
    }
    if (t->n_cols == 0 || (t->n_cols == 1 && strcmp(t->cols[0].name, "column 1") == 0)) {
        free(c.s);
        table_free(t);
        return fail("%s: no header line (an empty file?)", path);
    }
    /* the rows */
    while (pos < len) {
        size_t cells = 0;
        eor = false;
        bool blank = buf[pos] == '\n' || buf[pos] == '\r';
        if (blank) { /* an empty line */
            next_field(buf, len, &pos, &c, &eor);
            continue;
        }
        if (!add_row(t)) {
            free(c.s);
            size_t cols = t->n_cols;
            table_free(t);
            return fail("%s: more than %zu cells (%zu columns), or out of memory", path, MAX_CELLS, cols);
        }
        while (!eor) {
            if (!next_field(buf, len, &pos, &c, &eor))
                goto oom;
            if (cells < t->n_cols)
                t->cols[cells].v[t->n_rows - 1] = parse_number(c.s);
            cells++;
        }
        if (cells != t->n_cols)
            t->ragged++;
    }
    free(c.s);
    return 0;
oom:
    free(c.s);
    table_free(t);
    return fail("%s: out of memory", path);
}

/* ---- drawing ------------------------------------------------------------------------------------------------ */

static const double palette[][3] = {{0.12, 0.47, 0.71}, {0.84, 0.15, 0.16}, {0.17, 0.63, 0.17},
                                    {0.58, 0.40, 0.74}, {1.00, 0.50, 0.05}, {0.55, 0.34, 0.29},
                                    {0.89, 0.47, 0.76}, {0.50, 0.50, 0.50}};

static const column *find(const table *t, const char *name)
{
    for (size_t i = 0; i < t->n_cols; i++)
        if (strcmp(t->cols[i].name, name) == 0)
            return &t->cols[i];
    return NULL;
}

/* A compact number for a subtitle. */
static void short_number(char *buf, size_t n, double v)
{
    snprintf(buf, n, fabs(v) >= 1e5 || (fabs(v) < 1e-3 && v != 0) ? "%.3e" : "%.4g", v);
}

typedef struct panel {
    double *x, *y;
    size_t n;
    plot_series series[2];
    plot_text note;
    char subtitle[160];
} panel;

int metrics_plot(const char *csv_path, const char *png_path, const metrics_plot_opts *opts)
{
    mp_err[0] = '\0';
    if (csv_path == NULL || png_path == NULL)
        return fail("metrics_plot: NULL path");
    metrics_plot_opts o = opts != NULL ? *opts : (metrics_plot_opts){0};
    size_t len = 0;
    char *buf = read_file(csv_path, &len);
    if (buf == NULL)
        return -1;
    table t;
    int rc = parse_csv(csv_path, buf, len, &t);
    free(buf);
    if (rc != 0)
        return -1;

    const char *xname = o.x == METRICS_X_EPOCH ? "epoch" : "step";
    const column *xc = find(&t, xname);
    size_t metric_idx[MAX_PANELS], n_metrics = 0, skipped_panels = 0;
    for (size_t i = 0; i < t.n_cols; i++) {
        if (strcmp(t.cols[i].name, "step") == 0 || strcmp(t.cols[i].name, "epoch") == 0)
            continue;
        if (n_metrics == MAX_PANELS) {
            skipped_panels++;
            continue;
        }
        metric_idx[n_metrics++] = i;
    }
    if (n_metrics == 0) {
        table_free(&t);
        return fail("%s: no metric column (only step / epoch)", csv_path);
    }

    panel *panels = calloc(n_metrics, sizeof *panels);
    plot_cell *cells = calloc(n_metrics, sizeof *cells);
    if (panels == NULL || cells == NULL) {
        free(panels);
        free(cells);
        table_free(&t);
        return fail("out of memory");
    }
    rc = 0;
    for (size_t m = 0; m < n_metrics && rc == 0; m++) {
        const column *yc = &t.cols[metric_idx[m]];
        panel *p = &panels[m];
        size_t count = 1;
        for (size_t r = 0; r < t.n_rows; r++)
            count += !isnan(yc->v[r]);
        p->x = malloc(count * sizeof *p->x);
        p->y = malloc(count * sizeof *p->y);
        if (p->x == NULL || p->y == NULL) {
            rc = fail("out of memory");
            break;
        }
        size_t beyond = 0, no_x = 0;
        double last = NAN, mn = INFINITY, mx = -INFINITY;
        for (size_t r = 0; r < t.n_rows; r++) {
            double x = xc != NULL ? xc->v[r] : (double)r, y = yc->v[r];
            if (isnan(y))
                continue; /* an empty cell: this row logged something else */
            if (isnan(x)) {
                no_x++; /* e.g. LearningRateMonitor's rows have a step but no epoch, as in Lightning */
                continue;
            }
            if (!isfinite(x) || !isfinite(y) || fabs(x) > MAX_ABS || fabs(y) > MAX_ABS) {
                beyond++;
                continue;
            }
            p->x[p->n] = x;
            p->y[p->n] = y;
            p->n++;
            last = y;
            mn = y < mn ? y : mn;
            mx = y > mx ? y : mx;
        }
        const double *rgb = palette[m % (sizeof palette / sizeof palette[0])];
        p->series[0] = (plot_series){.x = p->x, .y = p->y, .n = p->n, .style = PLOT_LINE, .size = 2.0,
                                     .rgb = {rgb[0], rgb[1], rgb[2]}};
        p->series[1] = p->series[0];
        p->series[1].style = PLOT_DOTS; /* sparse series (epoch values) stay visible */
        p->series[1].size = 3.0;
        size_t ns = p->n <= 60 ? 2 : 1;
        plot_chart *c = &cells[m].chart;
        *c = (plot_chart){.title = yc->name, .xlabel = xc != NULL ? xname : "row"};
        if (p->n > 0) {
            char a[32], b[32], d[32];
            short_number(a, sizeof a, last);
            short_number(b, sizeof b, mn);
            short_number(d, sizeof d, mx);
            int w = snprintf(p->subtitle, sizeof p->subtitle, "%zu point%s   last %s   min %s   max %s", p->n,
                             p->n == 1 ? "" : "s", a, b, d);
            if (beyond > 0 && w > 0 && (size_t)w < sizeof p->subtitle)
                w += snprintf(p->subtitle + w, sizeof p->subtitle - (size_t)w, "   (%zu not finite, not drawn)",
                              beyond);
            if (no_x > 0 && w > 0 && (size_t)w < sizeof p->subtitle)
                snprintf(p->subtitle + w, sizeof p->subtitle - (size_t)w, "   (%zu without %s)", no_x, xname);
        } else {
            if (no_x > 0)
                snprintf(p->subtitle, sizeof p->subtitle, "%zu values logged without %s: draw them with --x %s",
                         no_x, xname, o.x == METRICS_X_EPOCH ? "step" : "epoch");
            else
                snprintf(p->subtitle, sizeof p->subtitle, "no value to draw%s", beyond > 0 ? " (none finite)" : "");
            c->xmin = 0, c->xmax = 1, c->ymin = 0, c->ymax = 1;
            p->note = (plot_text){.x = 0.5, .y = 0.5, .text = "no values"};
            c->texts = &p->note;
            c->n_texts = 1;
            ns = 0;
        }
        c->subtitle = p->subtitle;
        cells[m].series = p->series;
        cells[m].n_series = ns;
    }
    /* one x range for every panel, so that the curves line up */
    double gmin = INFINITY, gmax = -INFINITY;
    for (size_t m = 0; m < n_metrics && rc == 0; m++)
        for (size_t k = 0; k < panels[m].n; k++) {
            gmin = panels[m].x[k] < gmin ? panels[m].x[k] : gmin;
            gmax = panels[m].x[k] > gmax ? panels[m].x[k] : gmax;
        }
    if (rc == 0 && gmin < gmax && isfinite(gmax - gmin))
        for (size_t m = 0; m < n_metrics; m++)
            if (panels[m].n > 0) {
                cells[m].chart.xmin = gmin - 0.03 * (gmax - gmin);
                cells[m].chart.xmax = gmax + 0.03 * (gmax - gmin);
            }
    if (rc == 0) {
        char title[600];
        const char *base = strrchr(csv_path, '/');
        snprintf(title, sizeof title, "%s%s", o.title != NULL ? o.title : (base != NULL ? base + 1 : csv_path),
                 skipped_panels > 0 ? "  (first 60 metrics)" : "");
        int cols = o.columns > 0 ? o.columns : n_metrics == 1 ? 1 : n_metrics <= 4 ? 2 : 3;
        plot_grid g = {.title = title, .columns = cols, .cells = cells, .n_cells = n_metrics};
        if (plot_png_grid(png_path, &g) != 0)
            rc = fail("%s", plot_error());
    }
    for (size_t m = 0; m < n_metrics; m++) {
        free(panels[m].x);
        free(panels[m].y);
    }
    free(panels);
    free(cells);
    table_free(&t);
    return rc == 0 ? (int)n_metrics : -1;
}
