/* progress.c: the progress bar on stderr, like Lightning's TQDMProgressBar - a callback like any other.
 *
 *   Epoch 3:  40%|████████            | 4/10 [00:01<00:01,  3.21it/s, g_loss=0.693, d_loss=0.512]
 *
 * On a terminal the line is redrawn in place (at most 10 times a second); otherwise a plain line is
 * printed at each tenth of an epoch and at its end, so logs stay readable. Metrics are the ones
 * logged with EM_LOG_PROG_BAR (trainer.progress_bar_metrics). Lightning: callbacks/progress/tqdm_progress.py.
 * Written on the public API only.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, isatty */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "builtin.h"

typedef struct progress_bar {
    bool tty;
    double epoch_start;   /* seconds */
    double last_draw;
    int64_t last_decile;
    bool line_open;       /* a TTY line is being redrawn */
} progress_bar;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void format_time(char *buf, size_t n, double s)
{
    if (!(s >= 0) || s > 359999)
        s = 0;
    long v = (long)(s + 0.5);
    if (v >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", v / 3600, (v / 60) % 60, v % 60);
    else
        snprintf(buf, n, "%02ld:%02ld", v / 60, v % 60);
}

/* "████      " for done of total, `width` cells. */
static void format_bar(char *bar, size_t size, int64_t done, int64_t total)
{
    const int width = 20;
    int filled = total > 0 ? (int)(width * done / total) : width;
    size_t off = 0;
    for (int i = 0; i < width; i++) {
        const char *c = i < filled ? "\xe2\x96\x88" : " "; /* U+2588 FULL BLOCK */
        size_t len = strlen(c);
        if (off + len < size) {
            memcpy(bar + off, c, len);
            off += len;
        }
    }
    bar[off] = '\0';
}

static void draw(progress_bar *p, const em_trainer *t, bool final)
{
    int64_t done = em_trainer_batch_idx(t) + 1, total = em_trainer_num_training_batches(t);
    if (done < 0)
        done = 0;
    double elapsed = now_seconds() - p->epoch_start;
    double rate = elapsed > 0 ? (double)done / elapsed : 0;
    double eta = rate > 0 ? (double)(total - done) / rate : 0;
    int pct = total > 0 ? (int)(100 * done / total) : 100;
    char bar[64], el[48], et[48], line[1024];
    format_bar(bar, sizeof bar, done, total);
    format_time(el, sizeof el, elapsed);
    format_time(et, sizeof et, eta);
    int n = snprintf(line, sizeof line, "Epoch %lld: %3d%%|%s| %lld/%lld [%s<%s, %5.2fit/s",
                     (long long)em_trainer_current_epoch(t), pct, bar, (long long)done, (long long)total, el, et, rate);
    size_t nm = em_trainer_num_progress_bar_metrics(t);
    for (size_t i = 0; i < nm && n > 0 && (size_t)n < sizeof line - 40; i++) {
        double v;
        const char *name = em_trainer_progress_bar_metric_at(t, i, &v);
        n += snprintf(line + n, sizeof line - (size_t)n, ", %s=%.3g", name, v);
    }
    if (n > 0 && (size_t)n < sizeof line - 2)
        snprintf(line + n, sizeof line - (size_t)n, "]");
    if (p->tty) {
        fprintf(stderr, "\r%s\033[K", line);
        p->line_open = true;
        if (final) {
            fputc('\n', stderr);
            p->line_open = false;
        }
    } else {
        fprintf(stderr, "%s\n", line);
    }
    fflush(stderr);
}

static em_status on_train_start(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)t, (void)m;
    progress_bar *p = em_callback_state(cb);
    p->tty = isatty(STDERR_FILENO) != 0;
    return EM_OK;
}

static em_status on_train_epoch_start(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)t, (void)m;
    progress_bar *p = em_callback_state(cb);
    p->epoch_start = now_seconds();
    p->last_decile = -1;
    p->last_draw = 0;
    return EM_OK;
}

static em_status on_train_batch_end(em_callback *cb, em_trainer *t, em_module *m, const em_tensor *loss,
                                    const em_batch *b, int64_t batch_idx)
{
    (void)m, (void)loss, (void)b;
    progress_bar *p = em_callback_state(cb);
    if (p->tty) {
        double now = now_seconds();
        if (now - p->last_draw >= 0.1) {
            p->last_draw = now;
            draw(p, t, false);
        }
        return EM_OK;
    }
    int64_t total = em_trainer_num_training_batches(t);
    int64_t decile = total > 0 ? 10 * (batch_idx + 1) / total : 10;
    if (decile != p->last_decile && decile < 10 && decile > 0) {
        p->last_decile = decile;
        draw(p, t, false);
    }
    return EM_OK;
}

static em_status on_train_epoch_end(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)m;
    draw(em_callback_state(cb), t, true);
    return EM_OK;
}

/* Close a line left open by an interrupted epoch (on_train_end, or the trainer freeing the bar after a
 * failure). */
static void close_line(progress_bar *p)
{
    if (p->line_open)
        fputc('\n', stderr);
    p->line_open = false;
}

static em_status on_train_end(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)t, (void)m;
    close_line(em_callback_state(cb));
    return EM_OK;
}

static void destroy(void *state)
{
    close_line(state);
    free(state);
}

static const em_callback_ops progress_bar_ops = {
    .version = EM_CALLBACK_OPS_VERSION,
    .name = "TQDMProgressBar",
    .on_train_start = on_train_start,
    .on_train_end = on_train_end,
    .on_train_epoch_start = on_train_epoch_start,
    .on_train_epoch_end = on_train_epoch_end,
    .on_train_batch_end = on_train_batch_end,
    .destroy = destroy,
};

em_callback *emi_progress_bar_new(void)
{
    progress_bar *p = calloc(1, sizeof *p);
    if (p == NULL) {
        em_error_set(EM_ENOMEM, "progress bar: out of memory");
        return NULL;
    }
    p->last_decile = -1;
    return em_callback_new(&progress_bar_ops, p);
}
