/* safetensors.h: the safetensors format without tensors - dtypes, the validated header, the
 * header writer (safetensors.c). Nothing here calls libtorch, so the fuzz target builds it alone. */
#ifndef EMBER_SAFETENSORS_H
#define EMBER_SAFETENSORS_H

#include <stdint.h>

#include "ember/io.h"

/** The format's dtypes, in the reference implementation's order (its "alignment" order). */
typedef enum emi_st_dtype {
    EMI_ST_BOOL,
    EMI_ST_U8,
    EMI_ST_I8,
    EMI_ST_F8_E5M2,
    EMI_ST_F8_E4M3,
    EMI_ST_I16,
    EMI_ST_U16,
    EMI_ST_F16,
    EMI_ST_BF16,
    EMI_ST_I32,
    EMI_ST_U32,
    EMI_ST_F32,
    EMI_ST_F64,
    EMI_ST_I64,
    EMI_ST_U64,
    EMI_ST_NDTYPES
} emi_st_dtype;

/** "F32", ... */
const char *emi_st_dtype_name(emi_st_dtype d);
/** Bytes per element. */
size_t emi_st_dtype_size(emi_st_dtype d);
/** The ember dtype of a file dtype; false when ember has none (I8, U16, ...). */
bool emi_st_dtype_to_em(emi_st_dtype d, em_dtype *out);
/** The file dtype of an ember dtype. */
emi_st_dtype emi_st_dtype_from_em(em_dtype d);

/** One tensor of a file: validated (offsets inside the data section, size = shape x dtype). */
typedef struct emi_st_entry {
    char *name;
    emi_st_dtype dtype;
    int ndim;
    int64_t shape[EM_MAX_DIMS];
    uint64_t numel;
    uint64_t begin, end; /* within the data section */
} emi_st_entry;

struct em_safetensors {
    uint32_t tag;          /* EMI_HANDLE_SAFETENSORS while open (shim/backend.h) */
    char *label;           /* the path, or "buffer" */
    emi_st_entry *entries; /* sorted by offset */
    size_t n;
    size_t *by_name; /* indices into entries, sorted by name */
    em_safetensors_meta *meta;
    size_t n_meta;
    int fd;                   /* the open file, or -1 */
    const unsigned char *mem; /* or the borrowed buffer (the whole file) */
    uint64_t data_start;      /* 8 + header length */
    uint64_t data_size;
};

/**
 * Read the i-th tensor's bytes (entries[i].end - begin of them) into `out`. `who` prefixes errors.
 * Errors: EM_EIO when the file cannot be read or is shorter than when it was opened.
 */
/**
 * The entry check of a public function reading `f`: true when it is an open reader; false for NULL
 * (nothing recorded) and for a freed or foreign pointer (EM_EMISUSE recorded under `func`).
 */
bool emi_st_live(const em_safetensors *f, const char *func);

em_status emi_st_read(const em_safetensors *f, size_t i, void *out, const char *who);

/** What the writer needs to know of one tensor. */
typedef struct emi_st_out {
    const char *name;
    emi_st_dtype dtype;
    int ndim;
    int64_t shape[EM_MAX_DIMS];
    uint64_t nbytes;
    size_t index; /* the caller's own index, carried through the sort */
} emi_st_out;

/**
 * Sort `t` into the reference writer's order (dtype, widest first; then name) and build the
 * header: the JSON, padded with spaces to a multiple of 8. Returns it (malloc'd; *len its length)
 * or NULL with the error recorded (EM_EINVAL for a bad, duplicate or reserved name or metadata
 * string, EM_ENOMEM). `who` prefixes errors.
 */
char *emi_st_header(const char *who, emi_st_out *t, size_t n, const em_safetensors_meta *meta, size_t n_meta,
                    size_t *len);

/** Whether `s` (n bytes) is valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF). */
bool emi_utf8_valid(const unsigned char *s, size_t n);

#endif
