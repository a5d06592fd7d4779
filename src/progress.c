/* progress.c: the progress bar on stderr, like Lightning's TQDMProgressBar.
 *
 *   Epoch 3:  40%|████████            | 4/10 [00:01<00:01,  3.21it/s, g_loss=0.693, d_loss=0.512]
 *
 * On a terminal the line is redrawn in place (at most 10 times a second); otherwise a plain line is
 * printed at each tenth of an epoch and at its end, so logs stay readable. Metrics are the ones
 * logged with EM_LOG_PROG_BAR. Rank 0 only under DDP (there is one rank for now).
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, isatty, mkdir, opendir */

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loop.h" /* em_trainer internals */

struct emi_progress {
    bool tty;
    double epoch_start;   /* seconds */
    double last_draw;
    int64_t last_decile;
    bool line_open;       /* a TTY line is being redrawn */
};

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

static void draw(em_trainer *t, bool final)
{
    struct emi_progress *p = t->progress;
    int64_t done = t->batch_idx + 1, total = t->num_training_batches;
    if (done < 0)
        done = 0;
    double elapsed = now_seconds() - p->epoch_start;
    double rate = elapsed > 0 ? (double)done / elapsed : 0;
    double eta = rate > 0 ? (double)(total - done) / rate : 0;
    int pct = total > 0 ? (int)(100 * done / total) : 100;
    char bar[64] = {0};
    const int width = 20;
    int filled = total > 0 ? (int)(width * done / total) : width;
    size_t off = 0;
    for (int i = 0; i < width; i++) {
        const char *c = i < filled ? "\xe2\x96\x88" : " "; /* U+2588 FULL BLOCK */
        size_t len = strlen(c);
        if (off + len < sizeof bar) {
            memcpy(bar + off, c, len);
            off += len;
        }
    }
    bar[off] = '\0';
    char el[48], et[48];
    format_time(el, sizeof el, elapsed);
    format_time(et, sizeof et, eta);
    char line[1024];
    int n = snprintf(line, sizeof line, "Epoch %lld: %3d%%|%s| %lld/%lld [%s<%s, %5.2fit/s", (long long)t->current_epoch,
                     pct, bar, (long long)done, (long long)total, el, et, rate);
    metrics_refresh(t);
    for (size_t i = 0; i < t->metrics.progbar.n && n > 0 && (size_t)n < sizeof line - 40; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, ", %s=%.3g", t->metrics.progbar.items[i].name,
                      t->metrics.progbar.items[i].value);
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

void progress_start(em_trainer *t)
{
    if (!t->cfg.enable_progress_bar || t->progress != NULL)
        return;
    t->progress = calloc(1, sizeof *t->progress);
    if (t->progress == NULL)
        return;
    t->progress->tty = isatty(STDERR_FILENO) != 0;
    t->progress->epoch_start = now_seconds();
    t->progress->last_decile = -1;
}

void progress_update(em_trainer *t)
{
    struct emi_progress *p = t->progress;
    if (p == NULL)
        return;
    if (p->tty) {
        double now = now_seconds();
        if (now - p->last_draw >= 0.1) {
            p->last_draw = now;
            draw(t, false);
        }
        return;
    }
    int64_t total = t->num_training_batches;
    int64_t decile = total > 0 ? 10 * (t->batch_idx + 1) / total : 10;
    if (decile != p->last_decile && decile < 10 && decile > 0) {
        p->last_decile = decile;
        draw(t, false);
    }
}

void progress_epoch_start(em_trainer *t)
{
    if (t->progress == NULL)
        return;
    t->progress->epoch_start = now_seconds();
    t->progress->last_decile = -1;
    t->progress->last_draw = 0;
}

void progress_epoch_end(em_trainer *t)
{
    if (t->progress != NULL)
        draw(t, true);
}

void progress_stop(em_trainer *t)
{
    if (t->progress == NULL)
        return;
    if (t->progress->line_open)
        fputc('\n', stderr);
    free(t->progress);
    t->progress = NULL;
}
