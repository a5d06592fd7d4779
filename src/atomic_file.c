/* atomic_file.c: write a file so that a crash at any moment leaves either the previous file or the
 * new one under the final name, never a partial one (the checkpoint issue's rule; the classic
 * temp-file + fsync + rename + fsync-the-directory sequence, as SQLite's and git's lock files do).
 *
 * POSIX only (open/fsync/rename); nothing here knows about tensors.
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "atomic_file.h"
#include "backend.h" /* emi_fail */

struct emi_atomic_file {
    int fd;
    char *path; /* the final name */
    char *tmp;  /* the temporary file beside it */
    char *dir;  /* the directory of both ("." for a bare name) */
    const char *who;
};

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

/* This machine's name as it goes into a temporary file's name: gethostname's, every character outside
 * [A-Za-z0-9._-] replaced by '_', at most 64 characters; "localhost" when it has none. Two processes
 * share a PID space only on one machine, so a temporary file is judged stale only by the machine that
 * made it (a directory on a shared file system sees other machines' files too). */
enum { HOST_TAG_CAP = 65 };

static void host_tag(char out[HOST_TAG_CAP])
{
    char name[256] = {0};
    if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0')
        strcpy(name, "localhost");
    size_t i = 0;
    for (; name[i] != '\0' && i < HOST_TAG_CAP - 1; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                  c == '-' || c == '_';
        out[i] = ok ? c : '_';
    }
    out[i] = '\0';
}

static void atomic_free(emi_atomic_file *a)
{
    free(a->path);
    free(a->tmp);
    free(a->dir);
    free(a);
}

/* Sync a directory so that a rename in it is durable. */
static em_status sync_dir(const char *who, const char *path, const char *dir)
{
    em_status st = EM_OK;
    int dfd = open(dir, O_RDONLY | O_CLOEXEC);
    if (dfd < 0 || (fsync(dfd) != 0 && errno != EINVAL)) /* EINVAL: a file system without directory sync */
        st = emi_fail(EM_EIO, "%s: %s was written, but syncing its directory %s failed: %s", who, path, dir,
                      strerror(errno));
    if (dfd >= 0)
        close(dfd);
    return st;
}

emi_atomic_file *emi_atomic_open(const char *who, const char *path)
{
    static unsigned long counter; /* distinct names for files made by one process; races are
                                     harmless (O_EXCL retries) */
    if (path == NULL || path[0] == '\0') {
        emi_fail(EM_EINVAL, "%s: the path is %s", who, path == NULL ? "NULL" : "empty");
        return NULL;
    }
    size_t len = strlen(path);
    if (path[len - 1] == '/') {
        emi_fail(EM_EINVAL, "%s: %s names a directory, not a file", who, path);
        return NULL;
    }
    emi_atomic_file *a = calloc(1, sizeof *a);
    if (a == NULL) {
        emi_fail(EM_ENOMEM, "%s: out of memory", who);
        return NULL;
    }
    a->fd = -1;
    a->who = who;
    a->path = dup_str(path);
    const char *slash = strrchr(path, '/');
    const char *base = slash != NULL ? slash + 1 : path;
    size_t dirlen = slash != NULL ? (size_t)(slash - path) : 0;
    a->dir = malloc(dirlen + 2);
    char host[HOST_TAG_CAP];
    host_tag(host);
    size_t tmp_cap = len + strlen(host) + 64;
    a->tmp = malloc(tmp_cap);
    if (a->path == NULL || a->dir == NULL || a->tmp == NULL) {
        atomic_free(a);
        emi_fail(EM_ENOMEM, "%s: out of memory", who);
        return NULL;
    }
    if (slash == NULL)
        strcpy(a->dir, ".");
    else if (dirlen == 0)
        strcpy(a->dir, "/");
    else {
        memcpy(a->dir, path, dirlen);
        a->dir[dirlen] = '\0';
    }
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned long n = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
        snprintf(a->tmp, tmp_cap, "%.*s.%s.tmp.%ld.%lu.%s", (int)(base - path), path, base, (long)getpid(), n,
                 host);
        a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (a->fd >= 0 || errno != EEXIST)
            break;
    }
    if (a->fd < 0) {
        emi_fail(EM_EIO, "%s: cannot create %s (to write %s): %s", who, a->tmp, path, strerror(errno));
        atomic_free(a);
        return NULL;
    }
    return a;
}

em_status emi_atomic_write(emi_atomic_file *a, const void *bytes, size_t n)
{
    const unsigned char *p = bytes;
    while (n > 0) {
        ssize_t w = write(a->fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return emi_fail(EM_EIO, "%s: cannot write %s (temporary file %s): %s", a->who, a->path, a->tmp,
                            strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
    return EM_OK;
}

void emi_atomic_abort(emi_atomic_file *a)
{
    if (a == NULL)
        return;
    if (a->fd >= 0)
        close(a->fd);
    unlink(a->tmp);
    atomic_free(a);
}

em_status emi_atomic_commit(emi_atomic_file *a)
{
    if (fsync(a->fd) != 0) {
        em_status st = emi_fail(EM_EIO, "%s: cannot flush %s (temporary file %s) to disk: %s", a->who, a->path,
                                a->tmp, strerror(errno));
        emi_atomic_abort(a);
        return st;
    }
    int fd = a->fd;
    a->fd = -1;
    if (close(fd) != 0) {
        em_status st = emi_fail(EM_EIO, "%s: cannot close %s (temporary file %s): %s", a->who, a->path, a->tmp,
                                strerror(errno));
        emi_atomic_abort(a);
        return st;
    }
    if (rename(a->tmp, a->path) != 0) {
        em_status st = emi_fail(EM_EIO, "%s: cannot rename %s to %s: %s", a->who, a->tmp, a->path, strerror(errno));
        emi_atomic_abort(a);
        return st;
    }
    /* The rename is durable once the directory entry is: sync the directory. */
    em_status st = sync_dir(a->who, a->path, a->dir);
    atomic_free(a);
    return st;
}

em_status emi_atomic_link(const char *who, const char *target, const char *from, const char *link)
{
    struct stat st;
    if (lstat(link, &st) == 0 && S_ISDIR(st.st_mode))
        return emi_fail(EM_EIO, "%s: cannot link %s to %s: %s is a directory", who, link, target, link);
    emi_atomic_file *a = emi_atomic_open(who, link); /* a free temporary name, made as an empty file */
    if (a == NULL)
        return em_last_status();
    close(a->fd);
    a->fd = -1;
    unlink(a->tmp);
    if (symlink(target, a->tmp) == 0) {
        if (rename(a->tmp, link) != 0) {
            em_status e = emi_fail(EM_EIO, "%s: cannot rename %s to %s: %s", who, a->tmp, link, strerror(errno));
            emi_atomic_abort(a);
            return e;
        }
        em_status e = sync_dir(who, link, a->dir);
        atomic_free(a);
        return e;
    }
    /* no symbolic links here (a file system without them, or no permission): a copy, written atomically */
    a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    int in = a->fd >= 0 ? open(from, O_RDONLY | O_CLOEXEC) : -1;
    if (a->fd < 0 || in < 0) {
        em_status e = emi_fail(EM_EIO, "%s: cannot copy %s to %s: %s", who, from, link, strerror(errno));
        if (in >= 0)
            close(in);
        emi_atomic_abort(a);
        return e;
    }
    char buf[65536];
    em_status e = EM_OK;
    for (;;) {
        ssize_t r = read(in, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            e = emi_fail(EM_EIO, "%s: cannot read %s (to copy it to %s): %s", who, from, link, strerror(errno));
        if (r <= 0 || (e = emi_atomic_write(a, buf, (size_t)r)) != EM_OK)
            break;
    }
    close(in);
    if (e != EM_OK) {
        emi_atomic_abort(a);
        return e;
    }
    return emi_atomic_commit(a);
}

/* Whether `full` is ".NAME.tmp.PID.N.HOST" as emi_atomic_open names its files on this machine (`host`,
 * host_tag's); *pid receives PID. */
static bool stale_name(const char *full, const char *host, long *pid)
{
    size_t flen = strlen(full), hlen = strlen(host);
    if (full[0] != '.' || flen <= hlen + 1 || full[flen - hlen - 1] != '.' ||
        strcmp(full + flen - hlen, host) != 0)
        return false; /* not ember's, or another machine's */
    char s[512];
    if (flen - hlen - 1 >= sizeof s)
        return false;
    memcpy(s, full, flen - hlen - 1);
    s[flen - hlen - 1] = '\0'; /* ".NAME.tmp.PID.N" */
    /* the last three dot-separated parts: "tmp", PID, N (NAME may hold dots and even ".tmp.") */
    const char *n = strrchr(s, '.');
    if (n == NULL || n == s || n[1] == '\0')
        return false;
    for (const char *c = n + 1; *c != '\0'; c++)
        if (*c < '0' || *c > '9')
            return false;
    const char *p = n - 1;
    while (p > s && *p >= '0' && *p <= '9')
        p--;
    if (p == n - 1 || *p != '.')
        return false; /* no PID digits */
    const char *pid_start = p + 1;
    if (p - s < 6 || strncmp(p - 4, ".tmp", 4) != 0)
        return false; /* no ".tmp" before PID, or NAME (between the leading '.' and ".tmp") empty */
    char *end = NULL;
    errno = 0;
    long v = strtol(pid_start, &end, 10);
    if (errno != 0 || end != n || v <= 0)
        return false;
    *pid = v;
    return true;
}

long emi_atomic_remove_stale(const char *dir)
{
    DIR *d = opendir(dir != NULL && dir[0] != '\0' ? dir : ".");
    if (d == NULL)
        return -1;
    long removed = 0;
    size_t dlen = dir != NULL ? strlen(dir) : 0;
    char host[HOST_TAG_CAP];
    host_tag(host);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        long pid = 0;
        if (!stale_name(e->d_name, host, &pid))
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue; /* running (or not ours to signal: EPERM means it runs) */
        size_t n = dlen + strlen(e->d_name) + 2;
        char *path = malloc(n);
        if (path == NULL)
            break;
        if (dlen > 0)
            snprintf(path, n, "%s/%s", dir, e->d_name);
        else
            snprintf(path, n, "%s", e->d_name);
        if (unlink(path) == 0)
            removed++;
        free(path);
    }
    closedir(d);
    return removed;
}
