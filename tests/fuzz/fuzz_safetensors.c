/* fuzz_safetensors.c: the libFuzzer target of the safetensors reader (src/safetensors.c).
 *
 * Built by tests/fuzz/CMakeLists.txt with clang -fsanitize=fuzzer,address,undefined from
 * safetensors.c, error.c and log.c alone (no libtorch): the part of ember that reads untrusted bytes.
 * For every input: parse it; when it is accepted, read every tensor's bytes, write the header again
 * with the writer and parse the result: it must be accepted and describe the same tensors (a
 * difference traps, as a crash would). Run by hand:
 *
 *     build/bin/fuzz_safetensors -max_total_time=60 /tmp/corpus tests/fuzz/corpus
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h" /* emi_fail, the handle tags */
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The reader's handle checks (emi_handle_ok and friends, shim/backend.h) are implemented in
 * shim/core.cpp, which needs libtorch. The fuzz target links the reader alone, so it brings these three
 * with the same messages; a freed reader goes straight back to free() (no quarantine: the target never
 * uses a reader after freeing it, so the difference is never reached). */
em_status emi_handle_bad(const char *func, int arg, const void *h, const char *noun)
{
    if (h == NULL)
        return emi_fail(EM_EINVAL, "%s: argument %d is NULL", func, arg);
    return emi_fail(EM_EMISUSE, "%s: argument %d is not a live %s", func, arg, noun);
}
bool emi_handle_free_ok(const char *func, const void *h, uint32_t magic, const char *noun)
{
    if (h == NULL)
        return false;
    if (emi_handle_live(h, magic))
        return true;
    emi_fail(EM_EMISUSE, "%s: this pointer is not a live %s handle", func, noun);
    return false;
}
void emi_handle_retire(void *h)
{
    if (h == NULL)
        return;
    const uint32_t dead = EMI_HANDLE_FREED;
    memcpy(h, &dead, sizeof dead);
    free(h);
}

static void check(bool ok)
{
    if (!ok)
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    em_clear_error();
    em_safetensors *f = em_safetensors_parse(data, size);
    if (f == NULL) {
        check(em_last_error()[0] != '\0'); /* refused with a message */
        return 0;
    }
    size_t n = em_safetensors_count(f);
    emi_st_out *out = calloc(n + 1, sizeof *out);
    check(out != NULL);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const emi_st_entry *e = &f->entries[i];
        out[i].name = e->name;
        out[i].dtype = e->dtype;
        out[i].ndim = e->ndim;
        memcpy(out[i].shape, e->shape, sizeof e->shape);
        out[i].nbytes = e->end - e->begin;
        out[i].index = i;
        total += out[i].nbytes;
        check(em_safetensors_find(f, e->name) == (int64_t)i);
        check(em_safetensors_dtype(f, i) != NULL);
    }
    check(total == f->data_size);
    size_t hlen = 0;
    char *header = emi_st_header("fuzz", out, n, f->meta, f->n_meta, &hlen);
    check(header != NULL); /* what the reader accepts, the writer writes */
    unsigned char *again = malloc(8 + hlen + total + 1);
    check(again != NULL);
    for (int k = 0; k < 8; k++)
        again[k] = (unsigned char)((uint64_t)hlen >> (8 * k));
    memcpy(again + 8, header, hlen);
    size_t at = 8 + hlen;
    for (size_t i = 0; i < n; i++) { /* the writer's order */
        check(emi_st_read(f, out[i].index, again + at, "fuzz") == EM_OK);
        at += (size_t)out[i].nbytes;
    }
    em_safetensors *g = em_safetensors_parse(again, at);
    check(g != NULL);
    check(em_safetensors_count(g) == n && em_safetensors_meta_count(g) == f->n_meta);
    for (size_t i = 0; i < n; i++) {
        const emi_st_entry *a = &f->entries[i], *b = &g->entries[i];
        check(strcmp(a->name, b->name) == 0 && a->dtype == b->dtype && a->ndim == b->ndim);
        check(memcmp(a->shape, b->shape, sizeof a->shape) == 0);
        check(memcmp(data + f->data_start + a->begin, again + g->data_start + b->begin, a->end - a->begin) == 0);
    }
    for (size_t i = 0; i < f->n_meta; i++)
        check(strcmp(em_safetensors_meta_find(g, f->meta[i].key), f->meta[i].value) == 0);
    em_safetensors_free(g);
    free(again);
    free(header);
    free(out);
    em_safetensors_free(f);
    return 0;
}
