/* plot.c: small PNG charts with cairo (see plot.h).
 *
 * Layout, outside in: a white page; the title (and subtitle) on top; the plot area framed in black,
 * with a light grid at the ticks; tick labels and axis labels around it; the legend in a corner of the
 * plot area on a translucent white box. Text uses cairo's toy font API ("sans-serif": DejaVu Sans
 * on Debian), which is enough for labels and knows UTF-8 (σ, ·, -).
 */
#include "plot.h"

#include <cairo.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define PLOT_PI 3.14159265358979323846 /* M_PI is not in strict C11 */

/* ---- errors ----------------------------------------------------------------------------------------- */

static char plot_err[256];

const char *plot_error(void)
{
    return plot_err;
}

static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(plot_err, sizeof plot_err, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- ranges and ticks --------------------------------------------------------------------------------- */

/* Fit [*lo, *hi] to the finite values of one coordinate of every series (x when `want_x`), with 4%
 * padding on each side. Returns false when there is no finite value. */
static bool fit_range(const plot_series *s, size_t ns, bool want_x, double *lo, double *hi)
{
    double mn = INFINITY, mx = -INFINITY;
    for (size_t i = 0; i < ns; i++)
        for (size_t k = 0; k < s[i].n; k++) {
            double v = want_x ? s[i].x[k] : s[i].y[k];
            if (isfinite(v)) {
                mn = v < mn ? v : mn;
                mx = v > mx ? v : mx;
            }
        }
    if (!(mn <= mx))
        return false;
    double mag = fabs(mn) > fabs(mx) ? fabs(mn) : fabs(mx);
    if (!isfinite(mx - mn)) /* beyond the double range: callers keep |v| below ~1e300 */
        return false;
    if (mx - mn <= 1e-9 * mag || mx - mn < 1e-12) { /* one value: a band around it */
        double half = mag > 0 ? 0.01 * mag : 1.0;
        mn -= half;
        mx += half;
    }
    double pad = 0.04 * (mx - mn);
    *lo = mn - pad;
    *hi = mx + pad;
    return true;
}

/* The "nice" step (1, 2 or 5 times a power of ten) that puts about `target` ticks on [lo, hi]. */
static double tick_step(double lo, double hi, int target)
{
    double raw = (hi - lo) / target;
    double p = pow(10.0, floor(log10(raw)));
    double f = raw / p;
    double nice = f < 1.5 ? 1.0 : f < 3.5 ? 2.0 : f < 7.5 ? 5.0 : 10.0;
    return nice * p;
}

/* A tick value as text, with as many decimals as the step needs and no "-0". */
static void tick_label(char *buf, size_t n, double v, double step)
{
    if (fabs(v) < step * 1e-6)
        v = 0.0;
    if (fabs(v) >= 1e6 || (step < 1e-4 && v != 0.0)) { /* big or tiny: 1.5e+07, 2.5e-05 */
        snprintf(buf, n, "%.4g", v);
        return;
    }
    int decimals = step >= 1.0 ? 0 : (int)ceil(-log10(step) - 1e-9);
    snprintf(buf, n, "%.*f", decimals > 10 ? 10 : decimals, v);
}

/* ---- text ---------------------------------------------------------------------------------------------- */

typedef enum { ALIGN_LEFT, ALIGN_CENTER, ALIGN_RIGHT } align;

/* Draw `s` with its baseline at y, aligned on x; vertically centred on y when `vcenter`. */
static void text_at(cairo_t *cr, double x, double y, const char *s, align a, bool vcenter)
{
    cairo_text_extents_t e;
    cairo_text_extents(cr, s, &e);
    double dx = a == ALIGN_LEFT ? -e.x_bearing : a == ALIGN_CENTER ? -(e.x_bearing + e.width / 2) : -(e.x_bearing + e.width);
    double dy = vcenter ? -(e.y_bearing + e.height / 2) : 0.0;
    cairo_move_to(cr, x + dx, y + dy);
    cairo_show_text(cr, s);
}

static void set_font(cairo_t *cr, double size, bool bold)
{
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL,
                           bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, size);
}

/* ---- the plot area's coordinate mapping --------------------------------------------------------------- */

typedef struct frame {
    double x0, y0, x1, y1;         /* plot area in pixels (y0 at the top) */
    double xmin, xmax, ymin, ymax; /* data range */
} frame;

static double px(const frame *f, double x) { return f->x0 + (x - f->xmin) / (f->xmax - f->xmin) * (f->x1 - f->x0); }
static double py(const frame *f, double y) { return f->y1 - (y - f->ymin) / (f->ymax - f->ymin) * (f->y1 - f->y0); }

/* ---- pieces of the chart --------------------------------------------------------------------------------- */

static void set_colour(cairo_t *cr, const plot_series *s)
{
    cairo_set_source_rgba(cr, s->rgb[0], s->rgb[1], s->rgb[2], s->alpha > 0 ? s->alpha : 1.0);
}

static void set_dash(cairo_t *cr, bool dashed)
{
    static const double pattern[] = {6.0, 4.0};
    cairo_set_dash(cr, pattern, dashed ? 2 : 0, 0.0);
}

static void draw_series(cairo_t *cr, const frame *f, const plot_series *s)
{
    double size = s->size > 0 ? s->size : 1.5;
    set_colour(cr, s);
    switch (s->style) {
    case PLOT_LINE: {
        cairo_set_line_width(cr, size);
        cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
        set_dash(cr, s->dashed);
        bool open = false;
        for (size_t k = 0; k < s->n; k++) {
            if (!isfinite(s->x[k]) || !isfinite(s->y[k])) {
                open = false;
                continue;
            }
            if (open)
                cairo_line_to(cr, px(f, s->x[k]), py(f, s->y[k]));
            else
                cairo_move_to(cr, px(f, s->x[k]), py(f, s->y[k]));
            open = true;
        }
        cairo_stroke(cr);
        set_dash(cr, false);
        break;
    }
    case PLOT_DOTS:
        for (size_t k = 0; k < s->n; k++) {
            if (!isfinite(s->x[k]) || !isfinite(s->y[k]))
                continue;
            cairo_new_sub_path(cr);
            cairo_arc(cr, px(f, s->x[k]), py(f, s->y[k]), size, 0, 2 * PLOT_PI);
        }
        cairo_fill(cr);
        break;
    case PLOT_CIRCLES: {
        double r = size / (f->xmax - f->xmin) * (f->x1 - f->x0);
        cairo_set_line_width(cr, 1.5);
        set_dash(cr, s->dashed);
        for (size_t k = 0; k < s->n; k++) {
            if (!isfinite(s->x[k]) || !isfinite(s->y[k]))
                continue;
            cairo_new_sub_path(cr);
            cairo_arc(cr, px(f, s->x[k]), py(f, s->y[k]), r, 0, 2 * PLOT_PI);
        }
        cairo_stroke(cr);
        set_dash(cr, false);
        break;
    }
    }
}

/* Grid, frame, ticks and tick labels. */
/* An x tick step whose labels do not overlap: fewer ticks while the widest label needs more room. */
static double x_tick_step(cairo_t *cr, const frame *f)
{
    char buf[64];
    double step = tick_step(f->xmin, f->xmax, 7);
    for (int target = 7; target >= 1; target--) {
        step = tick_step(f->xmin, f->xmax, target);
        double k0 = ceil(f->xmin / step - 1e-9), k1 = floor(f->xmax / step + 1e-9);
        if (!(step > 0) || !isfinite(k0) || !isfinite(k1) || k1 - k0 > 100)
            return step;
        double widest = 0;
        for (double k = k0; k <= k1; k += 1.0) {
            cairo_text_extents_t e;
            tick_label(buf, sizeof buf, k * step, step);
            cairo_text_extents(cr, buf, &e);
            widest = e.x_advance > widest ? e.x_advance : widest;
        }
        double room = step / (f->xmax - f->xmin) * (f->x1 - f->x0);
        if (widest + 12 <= room)
            return step;
    }
    return step;
}

static void draw_axes(cairo_t *cr, const frame *f)
{
    char buf[64];
    set_font(cr, 13, false);
    double xs = x_tick_step(cr, f), ys = tick_step(f->ymin, f->ymax, 6);
    cairo_set_line_width(cr, 1.0);
    for (int axis = 0; axis < 2; axis++) {
        double lo = axis == 0 ? f->xmin : f->ymin, hi = axis == 0 ? f->xmax : f->ymax, step = axis == 0 ? xs : ys;
        double k0 = ceil(lo / step - 1e-9), k1 = floor(hi / step + 1e-9);
        if (!(step > 0) || !isfinite(k0) || !isfinite(k1) || k1 - k0 > 100)
            continue; /* no sensible ticks (a range at the edge of the double range) */
        for (double k = k0; k <= k1; k += 1.0) {
            double t = k * step; /* no accumulated rounding in the label */
            tick_label(buf, sizeof buf, t, step);
            if (axis == 0) {
                double x = floor(px(f, t)) + 0.5;
                cairo_set_source_rgb(cr, 0.88, 0.88, 0.88);
                cairo_move_to(cr, x, f->y0);
                cairo_line_to(cr, x, f->y1);
                cairo_stroke(cr);
                cairo_set_source_rgb(cr, 0, 0, 0);
                cairo_move_to(cr, x, f->y1);
                cairo_line_to(cr, x, f->y1 + 5);
                cairo_stroke(cr);
                text_at(cr, x, f->y1 + 20, buf, ALIGN_CENTER, false);
            } else {
                double y = floor(py(f, t)) + 0.5;
                cairo_set_source_rgb(cr, 0.88, 0.88, 0.88);
                cairo_move_to(cr, f->x0, y);
                cairo_line_to(cr, f->x1, y);
                cairo_stroke(cr);
                cairo_set_source_rgb(cr, 0, 0, 0);
                cairo_move_to(cr, f->x0 - 5, y);
                cairo_line_to(cr, f->x0, y);
                cairo_stroke(cr);
                text_at(cr, f->x0 - 8, y, buf, ALIGN_RIGHT, true);
            }
        }
    }
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_rectangle(cr, floor(f->x0) + 0.5, floor(f->y0) + 0.5, floor(f->x1) - floor(f->x0), floor(f->y1) - floor(f->y0));
    cairo_stroke(cr);
}

static void draw_legend(cairo_t *cr, const frame *f, const plot_series *s, size_t ns, plot_corner corner)
{
    const double pad = 10, swatch = 28, row = 20;
    size_t rows = 0;
    double wmax = 0;
    set_font(cr, 13, false);
    for (size_t i = 0; i < ns; i++) {
        if (s[i].label == NULL)
            continue;
        cairo_text_extents_t e;
        cairo_text_extents(cr, s[i].label, &e);
        wmax = e.x_advance > wmax ? e.x_advance : wmax;
        rows++;
    }
    if (rows == 0)
        return;
    double w = pad + swatch + 8 + wmax + pad, h = pad + row * (double)rows + pad - 4;
    bool left = corner == PLOT_TOP_LEFT || corner == PLOT_BOTTOM_LEFT;
    bool bottom = corner == PLOT_BOTTOM_RIGHT || corner == PLOT_BOTTOM_LEFT;
    double bx = left ? f->x0 + 10 : f->x1 - 10 - w, by = bottom ? f->y1 - 10 - h : f->y0 + 10;
    cairo_rectangle(cr, floor(bx) + 0.5, floor(by) + 0.5, floor(w), floor(h));
    cairo_set_source_rgba(cr, 1, 1, 1, 0.9);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.6, 0.6, 0.6);
    cairo_set_line_width(cr, 1.0);
    cairo_stroke(cr);
    double y = by + pad + row / 2 - 2;
    for (size_t i = 0; i < ns; i++) {
        if (s[i].label == NULL)
            continue;
        double sx = bx + pad, cx = sx + swatch / 2;
        plot_series one = s[i];
        one.alpha = s[i].alpha > 0 && s[i].alpha < 0.6 ? 0.6 : s[i].alpha; /* faint series stay visible */
        set_colour(cr, &one);
        cairo_new_path(cr); /* no line from the end of the previous label */
        switch (s[i].style) {
        case PLOT_LINE:
            cairo_set_line_width(cr, s[i].size > 0 ? (s[i].size < 3 ? s[i].size : 3) : 1.5);
            set_dash(cr, s[i].dashed);
            cairo_move_to(cr, sx, y);
            cairo_line_to(cr, sx + swatch, y);
            cairo_stroke(cr);
            set_dash(cr, false);
            break;
        case PLOT_DOTS:
            cairo_arc(cr, cx, y, 4, 0, 2 * PLOT_PI);
            cairo_fill(cr);
            break;
        case PLOT_CIRCLES:
            cairo_set_line_width(cr, 1.5);
            set_dash(cr, s[i].dashed);
            cairo_arc(cr, cx, y, 6, 0, 2 * PLOT_PI);
            cairo_stroke(cr);
            set_dash(cr, false);
            break;
        }
        cairo_set_source_rgb(cr, 0, 0, 0);
        text_at(cr, sx + swatch + 8, y, s[i].label, ALIGN_LEFT, true);
        y += row;
    }
}

/* Title, subtitle and the two axis labels. */
static void draw_labels(cairo_t *cr, const plot_chart *c, const frame *f, int width)
{
    cairo_set_source_rgb(cr, 0, 0, 0);
    if (c->title != NULL) {
        set_font(cr, 18, true);
        text_at(cr, width / 2.0, 30, c->title, ALIGN_CENTER, false);
    }
    if (c->subtitle != NULL) {
        set_font(cr, 13, false);
        cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
        text_at(cr, width / 2.0, c->title != NULL ? 52 : 30, c->subtitle, ALIGN_CENTER, false);
        cairo_set_source_rgb(cr, 0, 0, 0);
    }
    set_font(cr, 14, false);
    if (c->xlabel != NULL)
        text_at(cr, (f->x0 + f->x1) / 2, f->y1 + 46, c->xlabel, ALIGN_CENTER, false);
    if (c->ylabel != NULL) {
        cairo_save(cr);
        cairo_translate(cr, f->x0 - 58, (f->y0 + f->y1) / 2);
        cairo_rotate(cr, -PLOT_PI / 2);
        text_at(cr, 0, 0, c->ylabel, ALIGN_CENTER, false);
        cairo_restore(cr);
    }
}

/* ---- one chart, drawn at the origin of `cr` in a width x height box ------------------------------------ */

static int draw_chart(cairo_t *cr, int width, int height, const plot_chart *c, const plot_series *s, size_t ns,
                      const char *path)
{
    frame f = {.xmin = c->xmin, .xmax = c->xmax, .ymin = c->ymin, .ymax = c->ymax};
    if (!(f.xmin < f.xmax) && !fit_range(s, ns, true, &f.xmin, &f.xmax))
        return fail("plot_png(%s): no finite x value to fit the range to", path);
    if (!(f.ymin < f.ymax) && !fit_range(s, ns, false, &f.ymin, &f.ymax))
        return fail("plot_png(%s): no finite y value to fit the range to", path);

    double top = c->title != NULL ? (c->subtitle != NULL ? 70 : 48) : (c->subtitle != NULL ? 44 : 20);
    f.x0 = 84;
    f.x1 = width - 24;
    f.y0 = top;
    f.y1 = height - 64;
    if (f.x1 - f.x0 < 50 || f.y1 - f.y0 < 50)
        return fail("plot_png(%s): %d x %d pixels leave no room for the plot area", path, width, height);
    if (c->equal_aspect) {
        double sx = (f.x1 - f.x0) / (f.xmax - f.xmin), sy = (f.y1 - f.y0) / (f.ymax - f.ymin);
        if (sx > sy) { /* too wide: narrow the area around its centre */
            double w = sy * (f.xmax - f.xmin), mid = (f.x0 + f.x1) / 2;
            f.x0 = mid - w / 2;
            f.x1 = mid + w / 2;
        } else {
            double h = sx * (f.ymax - f.ymin), mid = (f.y0 + f.y1) / 2;
            f.y0 = mid - h / 2;
            f.y1 = mid + h / 2;
        }
    }

    draw_axes(cr, &f);
    cairo_save(cr);
    cairo_rectangle(cr, f.x0, f.y0, f.x1 - f.x0, f.y1 - f.y0);
    cairo_clip(cr);
    for (size_t i = 0; i < ns; i++)
        draw_series(cr, &f, &s[i]);
    cairo_restore(cr);
    /* the frame again, over the data that touches it */
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_set_line_width(cr, 1.0);
    cairo_rectangle(cr, floor(f.x0) + 0.5, floor(f.y0) + 0.5, floor(f.x1) - floor(f.x0), floor(f.y1) - floor(f.y0));
    cairo_stroke(cr);
    set_font(cr, 12, false);
    cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
    for (size_t i = 0; i < c->n_texts && c->texts != NULL; i++)
        if (c->texts[i].text != NULL && isfinite(c->texts[i].x) && isfinite(c->texts[i].y))
            text_at(cr, px(&f, c->texts[i].x), py(&f, c->texts[i].y), c->texts[i].text, ALIGN_CENTER, true);
    draw_legend(cr, &f, s, ns, c->legend);
    draw_labels(cr, c, &f, width);
    return 0;
}

/* ---- the entry points ------------------------------------------------------------------------------------- */

static int finish(cairo_t *cr, cairo_surface_t *surface, const char *path, int rc)
{
    cairo_status_t st = cairo_status(cr);
    if (rc == 0 && st == CAIRO_STATUS_SUCCESS)
        st = cairo_surface_write_to_png(surface, path);
    cairo_destroy(cr);
    cairo_surface_destroy(surface);
    if (rc == 0 && st != CAIRO_STATUS_SUCCESS)
        return fail("plot_png(%s): %s", path, cairo_status_to_string(st));
    return rc;
}

int plot_png(const char *path, const plot_chart *c, const plot_series *s, size_t ns)
{
    plot_err[0] = '\0';
    if (path == NULL || c == NULL || (ns > 0 && s == NULL))
        return fail("plot_png: NULL argument");
    int width = c->width > 0 ? c->width : 800, height = c->height > 0 ? c->height : 600;
    cairo_surface_t *surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height);
    cairo_t *cr = cairo_create(surface);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    return finish(cr, surface, path, draw_chart(cr, width, height, c, s, ns, path));
}

int plot_png_grid(const char *path, const plot_grid *g)
{
    plot_err[0] = '\0';
    if (path == NULL || g == NULL || g->n_cells == 0 || g->cells == NULL)
        return fail("plot_png_grid: NULL argument or no cell");
    int cols = g->columns > 0 ? g->columns : 1;
    int cw = g->cell_width > 0 ? g->cell_width : 560, ch = g->cell_height > 0 ? g->cell_height : 380;
    size_t rows = (g->n_cells + (size_t)cols - 1) / (size_t)cols;
    int head = g->title != NULL ? 44 : 0;
    if (rows > 4096 || (double)ch * (double)rows + head > 32000.0 || (double)cw * cols > 32000.0)
        return fail("plot_png_grid(%s): %zu charts in %d columns make a picture too large", path, g->n_cells, cols);
    int width = cw * cols, height = ch * (int)rows + head;
    cairo_surface_t *surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height);
    cairo_t *cr = cairo_create(surface);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    if (g->title != NULL) {
        cairo_set_source_rgb(cr, 0, 0, 0);
        set_font(cr, 20, true);
        text_at(cr, width / 2.0, 32, g->title, ALIGN_CENTER, false);
    }
    int rc = 0;
    for (size_t i = 0; i < g->n_cells && rc == 0; i++) {
        const plot_cell *cell = &g->cells[i];
        cairo_save(cr);
        cairo_translate(cr, (double)cw * (double)(i % (size_t)cols), head + (double)ch * (double)(i / (size_t)cols));
        rc = draw_chart(cr, cw, ch, &cell->chart, cell->series, cell->n_series, path);
        cairo_restore(cr);
    }
    return finish(cr, surface, path, rc);
}
