/* kvlist.h: the loop's small containers - a string copy and an insertion-ordered name -> double list.
 * The bottom of src/: uses nothing of the loop. */
#ifndef EMBER_KVLIST_H
#define EMBER_KVLIST_H

#include <stdbool.h>
#include <stddef.h>

/** A malloc'ed copy of `s` (NULL for NULL or when out of memory). */
char *emi_strdup(const char *s);

typedef struct emi_kv {
    char *name;
    double value;
} emi_kv;

/** Names in insertion order, each once. Zero-initialised = empty. */
typedef struct emi_kvlist {
    emi_kv *items;
    size_t n, cap;
} emi_kvlist;

/** Set `name` to `v` (adding it at the end when new). Out of memory drops the entry. */
void emi_kvlist_set(emi_kvlist *l, const char *name, double v);
/** Whether `name` is present; *v (may be NULL) receives its value. */
bool emi_kvlist_get(const emi_kvlist *l, const char *name, double *v);
/** Forget every entry, keep the storage. */
void emi_kvlist_clear(emi_kvlist *l);
/** Forget every entry and free the storage. */
void emi_kvlist_free(emi_kvlist *l);

#endif /* EMBER_KVLIST_H */
