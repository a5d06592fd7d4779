/* logger_csv.c: Lightning's CSVLogger - metrics.csv, one row per log_metrics call, sorted columns.
 *
 * Lightning: fabric/loggers/csv_logs.py (CSVLogger._get_next_version, _ExperimentWriter.save),
 *            pytorch/loggers/csv_logs.py. The logger connector (metrics.c) decides what and when.
 */
#define _POSIX_C_SOURCE 200809L /* mkdir, opendir */

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "logger_csv.h"

struct emi_csv_logger {
    char *path;          /* .../metrics.csv */
    emi_kvlist keys;     /* sorted column names (values unused) */
    emi_kvlist *rows;
    size_t n_rows, cap_rows;
};

static int mkdir_p(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n >= sizeof buf)
        return -1;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return -1;
            buf[i] = c;
        }
    }
    return 0;
}

/* Lightning: CSVLogger._get_next_version: one more than the largest version_N in root/lightning_logs. */
static long next_version(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    long next = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        if (strncmp(e->d_name, "version_", 8) != 0)
            continue;
        long v = strtol(e->d_name + 8, &end, 10);
        if (*end == '\0' && v + 1 > next)
            next = v + 1;
    }
    closedir(d);
    return next;
}

em_status emi_csv_logger_open(emi_csv_logger **out, const char *root_dir, const char *log_dir)
{
    *out = NULL;
    char dir[4096];
    int w;
    if (log_dir != NULL) {
        w = snprintf(dir, sizeof dir, "%s", log_dir);
    } else {
        snprintf(dir, sizeof dir, "%s/lightning_logs", root_dir);
        long v = next_version(dir);
        w = snprintf(dir, sizeof dir, "%s/lightning_logs/version_%ld", root_dir, v);
    }
    if (w < 0 || (size_t)w >= sizeof dir - 16 || mkdir_p(dir) != 0)
        return emi_fail(EM_EIO, "cannot create the log directory %s: %s", dir, strerror(errno));
    strcat(dir, "/metrics.csv");
    emi_csv_logger *l = calloc(1, sizeof *l);
    if (l == NULL || (l->path = emi_strdup(dir)) == NULL) {
        free(l);
        return emi_fail(EM_ENOMEM, "out of memory");
    }
    *out = l;
    return EM_OK;
}

/* Python's repr of a float: the shortest decimal that reads back to the same double. */
static void write_number(FILE *f, double v)
{
    if (isnan(v)) {
        fputs("nan", f);
        return;
    }
    if (isinf(v)) {
        fputs(v > 0 ? "inf" : "-inf", f);
        return;
    }
    if (v == floor(v) && fabs(v) < 1e16) {
        fprintf(f, "%.1f", v);
        return;
    }
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    fputs(buf, f);
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(((const emi_kv *)a)->name, ((const emi_kv *)b)->name);
}

static void write_row(FILE *f, const emi_csv_logger *l, const emi_kvlist *row)
{
    for (size_t k = 0; k < l->keys.n; k++) {
        double v;
        if (k)
            fputc(',', f);
        const char *key = l->keys.items[k].name;
        if (emi_kvlist_get(row, key, &v)) {
            if (strcmp(key, "epoch") == 0 || strcmp(key, "step") == 0)
                fprintf(f, "%lld", (long long)v);
            else
                write_number(f, v);
        }
    }
    fputc('\n', f);
}

/* Lightning: _ExperimentWriter.save: rows are appended; when a row brings a new column the file is
 * rewritten with the new (sorted) header, empty cells for absent keys. */
static void save(emi_csv_logger *l, bool rewrite)
{
    if (l->n_rows == 0)
        return;
    FILE *f = fopen(l->path, rewrite ? "w" : "a");
    if (f == NULL)
        return;
    if (rewrite) {
        for (size_t k = 0; k < l->keys.n; k++)
            fprintf(f, "%s%s", k ? "," : "", l->keys.items[k].name);
        fputc('\n', f);
        for (size_t r = 0; r < l->n_rows; r++)
            write_row(f, l, &l->rows[r]);
    } else {
        write_row(f, l, &l->rows[l->n_rows - 1]);
    }
    fclose(f);
}

void emi_csv_logger_log_metrics(emi_csv_logger *l, emi_kvlist *row, int64_t step)
{
    emi_kvlist_set(row, "step", (double)step);
    if (l->n_rows == l->cap_rows) {
        size_t cap = l->cap_rows ? 2 * l->cap_rows : 16;
        emi_kvlist *p = realloc(l->rows, cap * sizeof *p);
        if (p == NULL) {
            emi_kvlist_free(row);
            return;
        }
        l->rows = p;
        l->cap_rows = cap;
    }
    l->rows[l->n_rows++] = *row;
    size_t before = l->keys.n;
    for (size_t i = 0; i < row->n; i++)
        if (!emi_kvlist_get(&l->keys, row->items[i].name, NULL))
            emi_kvlist_set(&l->keys, row->items[i].name, 0);
    bool new_keys = l->keys.n != before;
    if (new_keys)
        qsort(l->keys.items, l->keys.n, sizeof *l->keys.items, key_cmp);
    save(l, new_keys || l->n_rows == 1);
}

void emi_csv_logger_close(emi_csv_logger *l)
{
    if (l == NULL)
        return;
    for (size_t r = 0; r < l->n_rows; r++)
        emi_kvlist_free(&l->rows[r]);
    free(l->rows);
    emi_kvlist_free(&l->keys);
    free(l->path);
    free(l);
}
