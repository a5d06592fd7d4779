/* atomic_file.h: a file that appears under its final name whole or not at all (atomic_file.c). */
#ifndef EMBER_ATOMIC_FILE_H
#define EMBER_ATOMIC_FILE_H

#include <stddef.h>

#include "ember/common.h"

/** A file being written: a temporary file in the directory of its final path. */
typedef struct emi_atomic_file emi_atomic_file;

/**
 * Create a temporary file (".NAME.tmp.PID.N.HOST" beside `path`: HOST is this machine's name, characters
 * outside [A-Za-z0-9._-] as '_'; mode 0666 less the umask) to be renamed
 * to `path` by emi_atomic_commit. `who` prefixes error messages. The caller ends it with
 * emi_atomic_commit or emi_atomic_abort.
 * Errors: NULL with EM_EIO ("who: cannot create DIR/.NAME.tmp...: <strerror>") or EM_ENOMEM recorded.
 */
emi_atomic_file *emi_atomic_open(const char *who, const char *path);

/** Append `n` bytes. Errors: EM_EIO with both paths and the errno text (ENOSPC: disk full). */
em_status emi_atomic_write(emi_atomic_file *a, const void *bytes, size_t n);

/**
 * Flush the file to disk (fsync), close it, rename it over the final path and fsync the directory,
 * then free `a`. On any failure the temporary file is removed, the final path keeps what it held,
 * and EM_EIO is recorded with the path and errno text. `a` is freed in every case.
 */
em_status emi_atomic_commit(emi_atomic_file *a);

/** Close and remove the temporary file and free `a` (after a failed write). NULL is ignored. */
void emi_atomic_abort(emi_atomic_file *a);

/**
 * Make `link` a symbolic link to `target` (stored as given: a path relative to link's directory, or
 * absolute), atomically: the link is made under a temporary name as emi_atomic_open's and renamed over
 * `link` (a file or link there is replaced), then the directory is synced. Where symbolic links cannot
 * be made (EPERM, a file system without them) `from` (target as a path from here) is copied to `link`
 * instead, as atomically as emi_atomic_commit writes. `who` prefixes error messages.
 * Errors: EM_EIO with the paths and errno text, also when `link` is a directory (it is not removed).
 */
em_status emi_atomic_link(const char *who, const char *target, const char *from, const char *link);

/**
 * Remove the temporary files emi_atomic_open left in `dir` when its process was killed: names of the
 * form ".NAME.tmp.PID.N.HOST" (NAME not empty, PID and N decimal) made on this machine (HOST) whose PID
 * is no running process here. Nothing else is touched (a live process's temporary file, another
 * machine's - on a shared file system its PID means nothing here -, any other name). Returns how many were removed, or
 * -1 when `dir` cannot be read (nothing recorded: a missing directory has nothing stale).
 */
long emi_atomic_remove_stale(const char *dir);

#endif
