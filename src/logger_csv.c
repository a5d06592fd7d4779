/* logger_csv.c: Lightning's CSVLogger - metrics.csv, one row per log_metrics call, sorted columns.
 *
 * Lightning: fabric/loggers/csv_logs.py (CSVLogger._get_next_version, _ExperimentWriter.save,
 *            _record_new_keys, _rewrite_with_new_header), pytorch/loggers/csv_logs.py. The logger
 * connector (metrics.c) decides what and when. Rows go to the file as they come (Python's csv module
 * quoting, RFC 4180, with \n line ends); only the column names stay in memory, so a long run's memory stays flat. A row
 * that brings a new column rewrites the file under the new header, as Lightning's writer does: the
 * old rows are read back, and the new file replaces the old one by rename.
 */
#define _POSIX_C_SOURCE 200809L /* mkdir, opendir */

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "logger_csv.h"

struct emi_csv_logger {
    char *path;          /* .../metrics.csv */
    char *dir;           /* its directory */
    char *tmp_path;      /* .../metrics.csv.tmp, for a rewrite under a new header */
    emi_kvlist keys;     /* the header: sorted column names (values unused) */
    bool started;        /* the file was created by this logger */
};

/* ---- the directory --------------------------------------------------------------------------------- */

/* mkdir -p; errno tells why it failed. */
static int mkdir_p(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        struct stat st;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return -1;
        if (stat(buf, &st) != 0)
            return -1;
        if (!S_ISDIR(st.st_mode)) {
            errno = ENOTDIR;
            return -1;
        }
        buf[i] = c;
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
        if (*end == '\0' && v >= 0 && v < 1000000000L && v + 1 > next)
            next = v + 1;
    }
    closedir(d);
    return next;
}

/* root/lightning_logs/version_N for the next free N, created by this call: mkdir fails with EEXIST when
 * another trainer claimed N first, and then the next number is tried. */
static em_status claim_version_dir(const char *root_dir, char *dir, size_t size)
{
    char parent[4096];
    int w = snprintf(parent, sizeof parent, "%s/lightning_logs", root_dir);
    if (w < 0 || (size_t)w >= sizeof parent)
        return emi_fail(EM_EIO, "cannot create the log directory %s/lightning_logs: path too long", root_dir);
    if (mkdir_p(parent) != 0)
        return emi_fail(EM_EIO, "cannot create the log directory %s: %s", parent, strerror(errno));
    long v = next_version(parent);
    for (int attempt = 0; attempt < 10000; attempt++, v++) {
        w = snprintf(dir, size, "%s/version_%ld", parent, v);
        if (w < 0 || (size_t)w >= size - 16)
            return emi_fail(EM_EIO, "cannot create the log directory %s/version_%ld: path too long", parent, v);
        if (mkdir(dir, 0777) == 0)
            return EM_OK;
        if (errno != EEXIST)
            return emi_fail(EM_EIO, "cannot create the log directory %s: %s", dir, strerror(errno));
    }
    return emi_fail(EM_EIO, "cannot create a log directory under %s: 10000 versions taken", parent);
}

em_status emi_csv_logger_open(emi_csv_logger **out, const char *root_dir, const char *log_dir)
{
    *out = NULL;
    char dir[4096];
    if (log_dir != NULL) {
        int w = snprintf(dir, sizeof dir, "%s", log_dir);
        if (w < 0 || (size_t)w >= sizeof dir - 16)
            return emi_fail(EM_EIO, "cannot create the log directory %s: path too long", log_dir);
        if (mkdir_p(dir) != 0)
            return emi_fail(EM_EIO, "cannot create the log directory %s: %s", dir, strerror(errno));
    } else {
        em_status s = claim_version_dir(root_dir, dir, sizeof dir);
        if (s != EM_OK)
            return s;
    }
    size_t n = strlen(dir);
    emi_csv_logger *l = calloc(1, sizeof *l);
    if (l != NULL) {
        l->path = malloc(n + sizeof "/metrics.csv");
        l->tmp_path = malloc(n + sizeof "/metrics.csv.tmp");
    }
    if (l == NULL || l->path == NULL || l->tmp_path == NULL) {
        emi_csv_logger_close(l);
        return emi_fail(EM_ENOMEM, "out of memory");
    }
    l->dir = malloc(n + 1);
    if (l->dir == NULL) {
        emi_csv_logger_close(l);
        return emi_fail(EM_ENOMEM, "out of memory");
    }
    memcpy(l->dir, dir, n + 1);
    snprintf(l->path, n + sizeof "/metrics.csv", "%s/metrics.csv", dir);
    snprintf(l->tmp_path, n + sizeof "/metrics.csv.tmp", "%s/metrics.csv.tmp", dir);
    *out = l;
    return EM_OK;
}

/* ---- writing: Python's csv.DictWriter ------------------------------------------------------------------- */

/* A field as Python's csv module writes it (QUOTE_MINIMAL, RFC 4180): quoted when it holds a comma,
 * a quote or a line break, with quotes doubled. */
static void write_field(FILE *f, const char *s)
{
    if (strpbrk(s, ",\"\r\n") == NULL) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s != '\0'; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
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

static void write_header(FILE *f, const emi_kvlist *keys)
{
    for (size_t k = 0; k < keys->n; k++) {
        if (k)
            fputc(',', f);
        write_field(f, keys->items[k].name);
    }
    fputc('\n', f);
}

static void write_row(FILE *f, const emi_kvlist *keys, const emi_kvlist *row)
{
    for (size_t k = 0; k < keys->n; k++) {
        double v;
        if (k)
            fputc(',', f);
        const char *key = keys->items[k].name;
        if (!emi_kvlist_get(row, key, &v))
            continue;
        if (strcmp(key, "epoch") == 0 || strcmp(key, "step") == 0)
            fprintf(f, "%lld", (long long)v);
        else
            write_number(f, v);
    }
    fputc('\n', f);
}

/* ---- reading back our own file (for a rewrite under a new header) ---------------------------------------- */

/* One CSV field into buf (quotes undone). Returns the character that ended it: ',' '\n' or EOF. */
static int read_field(FILE *f, char *buf, size_t size)
{
    size_t n = 0;
    int c = fgetc(f);
    bool quoted = c == '"';
    if (quoted)
        c = fgetc(f);
    for (;; c = fgetc(f)) {
        if (c == EOF)
            break;
        if (quoted && c == '"') {
            c = fgetc(f);
            if (c != '"') {
                quoted = false;
                if (c == EOF || c == ',' || c == '\n')
                    break;
                if (c == '\r')
                    continue;
            }
        } else if (!quoted && (c == ',' || c == '\n')) {
            break;
        } else if (!quoted && c == '\r') {
            continue;
        }
        if (n + 1 < size)
            buf[n++] = (char)c;
    }
    buf[n] = '\0';
    return c;
}

/* Copy `in`'s rows (under its header `old`) to `out` under the header `keys`: cells move to their
 * column's new place; the values are copied as text, unchanged. */
static void copy_rows(FILE *in, FILE *out, const emi_kvlist *old, const emi_kvlist *keys)
{
    char cell[512];
    size_t *where = calloc(old->n > 0 ? old->n : 1, sizeof *where);
    char **cells = calloc(keys->n > 0 ? keys->n : 1, sizeof *cells);
    if (where == NULL || cells == NULL)
        goto done;
    for (size_t i = 0; i < old->n; i++)
        for (size_t k = 0; k < keys->n; k++)
            if (strcmp(old->items[i].name, keys->items[k].name) == 0)
                where[i] = k;
    for (;;) {
        size_t i = 0;
        int end = 0;
        do {
            end = read_field(in, cell, sizeof cell);
            if (i < old->n && cell[0] != '\0') {
                free(cells[where[i]]);
                cells[where[i]] = emi_strdup(cell);
            }
            i++;
        } while (end == ',');
        if (end == EOF && i == 1 && cell[0] == '\0')
            break;
        for (size_t k = 0; k < keys->n; k++) {
            if (k)
                fputc(',', out);
            if (cells[k] != NULL)
                write_field(out, cells[k]);
            free(cells[k]);
            cells[k] = NULL;
        }
        fputc('\n', out);
        if (end == EOF)
            break;
    }
done:
    free(where);
    free(cells);
}

/* Lightning: _ExperimentWriter._rewrite_with_new_header: the file again, under the new header, then
 * renamed over the old one. */
static em_status rewrite_with_new_header(emi_csv_logger *l, const emi_kvlist *old)
{
    FILE *in = fopen(l->path, "r");
    if (in == NULL)
        return emi_fail(EM_EIO, "cannot read %s: %s", l->path, strerror(errno));
    FILE *out = fopen(l->tmp_path, "w");
    if (out == NULL) {
        int e = errno;
        fclose(in);
        return emi_fail(EM_EIO, "cannot write %s: %s", l->tmp_path, strerror(e));
    }
    char cell[512];
    while (read_field(in, cell, sizeof cell) == ',')
        ; /* skip the old header */
    write_header(out, &l->keys);
    copy_rows(in, out, old, &l->keys);
    fclose(in);
    bool failed = ferror(out) != 0;
    int e = errno;
    if (fclose(out) != 0 && !failed) {
        failed = true;
        e = errno;
    }
    if (failed || rename(l->tmp_path, l->path) != 0) {
        if (!failed)
            e = errno;
        remove(l->tmp_path);
        return emi_fail(EM_EIO, "cannot write %s: %s", l->path, strerror(e));
    }
    return EM_OK;
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(((const emi_kv *)a)->name, ((const emi_kv *)b)->name);
}

/* Lightning: _record_new_keys: the union of the keys, sorted. *old receives the header before. */
static bool record_new_keys(emi_csv_logger *l, const emi_kvlist *row, emi_kvlist *old)
{
    for (size_t i = 0; i < l->keys.n; i++)
        emi_kvlist_set(old, l->keys.items[i].name, 0);
    size_t before = l->keys.n;
    for (size_t i = 0; i < row->n; i++)
        if (!emi_kvlist_get(&l->keys, row->items[i].name, NULL))
            emi_kvlist_set(&l->keys, row->items[i].name, 0);
    if (l->keys.n == before)
        return false;
    qsort(l->keys.items, l->keys.n, sizeof *l->keys.items, key_cmp);
    return true;
}

em_status emi_csv_logger_log_metrics(emi_csv_logger *l, emi_kvlist *row, int64_t step)
{
    emi_kvlist_set(row, "step", (double)step);
    emi_kvlist old = {0};
    bool new_keys = record_new_keys(l, row, &old);
    em_status s = EM_OK;
    if (new_keys && l->started)
        s = rewrite_with_new_header(l, &old);
    emi_kvlist_free(&old);
    FILE *f = s == EM_OK ? fopen(l->path, l->started ? "a" : "w") : NULL;
    if (s == EM_OK && f == NULL)
        s = emi_fail(EM_EIO, "cannot write %s: %s", l->path, strerror(errno));
    if (f != NULL) {
        if (!l->started)
            write_header(f, &l->keys);
        write_row(f, &l->keys, row);
        bool failed = ferror(f) != 0;
        int e = errno;
        if (fclose(f) != 0 && !failed) {
            failed = true;
            e = errno;
        }
        if (failed)
            s = emi_fail(EM_EIO, "cannot write %s: %s", l->path, strerror(e));
        l->started = true;
    }
    emi_kvlist_free(row);
    return s;
}

void emi_csv_logger_close(emi_csv_logger *l)
{
    if (l == NULL)
        return;
    emi_kvlist_free(&l->keys);
    free(l->path);
    free(l->tmp_path);
    free(l->dir);
    free(l);
}

const char *emi_csv_logger_dir(const emi_csv_logger *l)
{
    return l->dir;
}
