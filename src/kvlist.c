/* kvlist.c: a string copy and the name -> double lists of callback_metrics, the progress bar and
 * the logger's rows. */
#include <stdlib.h>
#include <string.h>

#include "kvlist.h"

char *emi_strdup(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

void emi_kvlist_set(emi_kvlist *l, const char *name, double v)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i].name, name) == 0) {
            l->items[i].value = v;
            return;
        }
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 8;
        emi_kv *p = realloc(l->items, cap * sizeof *p);
        if (p == NULL)
            return; /* out of memory: the metric is dropped (nothing else breaks) */
        l->items = p;
        l->cap = cap;
    }
    char *copy = emi_strdup(name);
    if (copy == NULL)
        return;
    l->items[l->n++] = (emi_kv){copy, v};
}

bool emi_kvlist_get(const emi_kvlist *l, const char *name, double *v)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i].name, name) == 0) {
            if (v != NULL)
                *v = l->items[i].value;
            return true;
        }
    return false;
}

void emi_kvlist_clear(emi_kvlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i].name);
    l->n = 0;
}

void emi_kvlist_free(emi_kvlist *l)
{
    emi_kvlist_clear(l);
    free(l->items);
    l->items = NULL;
    l->cap = 0;
}
