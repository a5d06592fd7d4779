/* safetensors.c: the safetensors format (huggingface's; ember/io.h describes it) without tensors:
 * reading and validating a header that may be hostile, and writing one the way the reference writer
 * (safetensors/src/tensor.rs, `prepare`) does. weights.c turns entries into tensors and back.
 *
 * The reader's rule: every number in a file is checked before it is used as a size or an offset,
 * every allocation is bounded by the file's size, and the only bytes read are inside the file. The
 * fuzz target (tests/fuzz) builds this file, error.c and log.c alone, with libFuzzer and ASan.
 */
#define _POSIX_C_SOURCE 200809L

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h" /* emi_fail */
#include "safetensors.h"

/* ---- dtypes ------------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
} st_dtypes[EMI_ST_NDTYPES] = {
    [EMI_ST_BOOL] = {"BOOL", 1},       [EMI_ST_U8] = {"U8", 1},     [EMI_ST_I8] = {"I8", 1},
    [EMI_ST_F8_E5M2] = {"F8_E5M2", 1}, [EMI_ST_F8_E4M3] = {"F8_E4M3", 1},
    [EMI_ST_I16] = {"I16", 2},         [EMI_ST_U16] = {"U16", 2},   [EMI_ST_F16] = {"F16", 2},
    [EMI_ST_BF16] = {"BF16", 2},       [EMI_ST_I32] = {"I32", 4},   [EMI_ST_U32] = {"U32", 4},
    [EMI_ST_F32] = {"F32", 4},         [EMI_ST_F64] = {"F64", 8},   [EMI_ST_I64] = {"I64", 8},
    [EMI_ST_U64] = {"U64", 8},
};

const char *emi_st_dtype_name(emi_st_dtype d)
{
    return (unsigned)d < EMI_ST_NDTYPES ? st_dtypes[d].name : "?";
}

size_t emi_st_dtype_size(emi_st_dtype d)
{
    return (unsigned)d < EMI_ST_NDTYPES ? st_dtypes[d].size : 0;
}

bool emi_st_dtype_to_em(emi_st_dtype d, em_dtype *out)
{
    switch (d) {
    case EMI_ST_BOOL: *out = EM_BOOL; return true;
    case EMI_ST_U8: *out = EM_U8; return true;
    case EMI_ST_F16: *out = EM_F16; return true;
    case EMI_ST_BF16: *out = EM_BF16; return true;
    case EMI_ST_I32: *out = EM_I32; return true;
    case EMI_ST_F32: *out = EM_F32; return true;
    case EMI_ST_F64: *out = EM_F64; return true;
    case EMI_ST_I64: *out = EM_I64; return true;
    default: return false;
    }
}

emi_st_dtype emi_st_dtype_from_em(em_dtype d)
{
    switch (d) {
    case EM_F32: return EMI_ST_F32;
    case EM_F64: return EMI_ST_F64;
    case EM_F16: return EMI_ST_F16;
    case EM_BF16: return EMI_ST_BF16;
    case EM_I64: return EMI_ST_I64;
    case EM_I32: return EMI_ST_I32;
    case EM_U8: return EMI_ST_U8;
    case EM_BOOL: return EMI_ST_BOOL;
    }
    return EMI_ST_NDTYPES;
}

/* ---- UTF-8 ---------------------------------------------------------------------------------------- */

bool emi_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false; /* a continuation byte, C0/C1 (overlong) or F5..FF */
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

/* ---- reading -------------------------------------------------------------------------------------- */

/* The parse's context: who is reading what, for the messages. */
typedef struct parse_ctx {
    const char *who;
    const char *label;
} parse_ctx;

static em_status bad(const parse_ctx *c, em_status code, const char *fmt, ...) EM_PRINTF(3, 4);
static em_status bad(const parse_ctx *c, em_status code, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return emi_fail(code, "%s: %s: %s", c->who, c->label, msg);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

static bool is_json_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* A JSON number that is an exact non-negative integer a double holds exactly (<= 2^53). */
static bool json_uint(const cJSON *x, uint64_t *out)
{
    if (!cJSON_IsNumber(x))
        return false;
    double v = x->valuedouble;
    if (!isfinite(v) || v < 0 || v > 9007199254740992.0 || floor(v) != v)
        return false;
    *out = (uint64_t)v;
    return true;
}

static int cmp_entry_name(const void *a, const void *b)
{
    return strcmp(((const emi_st_entry *)a)->name, ((const emi_st_entry *)b)->name);
}

static int cmp_meta_key(const void *a, const void *b)
{
    return strcmp((*(const em_safetensors_meta *const *)a)->key, (*(const em_safetensors_meta *const *)b)->key);
}

typedef struct span {
    uint64_t begin, end;
    size_t idx;
} span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* Print a shape into buf: "[2, 3]". */
static const char *shape_str(const int64_t *shape, int ndim, char *buf, size_t len)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, len - k, "[");
    for (int i = 0; i < ndim && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < len)
        snprintf(buf + k, len - k, "]");
    return buf;
}

/* One tensor's entry: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}. */
static em_status parse_entry(const parse_ctx *c, const cJSON *item, emi_st_entry *e, uint64_t data_size)
{
    const char *name = item->string;
    if (name[0] == '\0')
        return bad(c, EM_EINVAL, "a tensor has an empty name");
    if (!cJSON_IsObject(item))
        return bad(c, EM_EINVAL, "the entry of tensor \"%.200s\" is not a JSON object", name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (dt == NULL || sh == NULL || of == NULL)
        return bad(c, EM_EINVAL, "tensor \"%.200s\" lacks \"%s\"", name,
                   dt == NULL ? "dtype" : sh == NULL ? "shape" : "data_offsets");
    if (!cJSON_IsString(dt))
        return bad(c, EM_EINVAL, "the dtype of tensor \"%.200s\" is not a string", name);
    e->dtype = EMI_ST_NDTYPES;
    for (int d = 0; d < EMI_ST_NDTYPES; d++)
        if (strcmp(dt->valuestring, st_dtypes[d].name) == 0)
            e->dtype = (emi_st_dtype)d;
    if (e->dtype == EMI_ST_NDTYPES)
        return bad(c, EM_EINVAL, "tensor \"%.200s\" has an unknown dtype \"%.40s\"", name, dt->valuestring);
    if (!cJSON_IsArray(sh))
        return bad(c, EM_EINVAL, "the shape of tensor \"%.200s\" is not an array", name);
    int ndim = cJSON_GetArraySize(sh);
    if (ndim > EM_MAX_DIMS)
        return bad(c, EM_EINVAL, "tensor \"%.200s\" has %d dimensions, more than ember's %d", name, ndim,
                   EM_MAX_DIMS);
    e->ndim = ndim;
    uint64_t numel = 1, nbytes = 0, span_all = 1;
    bool overflow = false;
    int k = 0;
    for (const cJSON *d = sh->child; d != NULL; d = d->next, k++) {
        uint64_t v;
        if (!json_uint(d, &v))
            return bad(c, EM_EINVAL, "dimension %d of tensor \"%.200s\" is not a non-negative integer below 2^53",
                       k, name);
        e->shape[k] = (int64_t)v;
        if (__builtin_mul_overflow(numel, v, &numel))
            overflow = true;
        /* the sizes other than 0 too: torch computes strides from them even when the tensor is empty */
        if (__builtin_mul_overflow(span_all, v > 0 ? v : 1, &span_all) || span_all > (uint64_t)INT64_MAX)
            overflow = true;
    }
    char sbuf[400];
    if (overflow || numel > (uint64_t)INT64_MAX ||
        __builtin_mul_overflow(numel, (uint64_t)st_dtypes[e->dtype].size, &nbytes))
        return bad(c, EM_EINVAL, "the shape %s of tensor \"%.200s\" is too large: its byte size overflows",
                   shape_str(e->shape, ndim, sbuf, sizeof sbuf), name);
    e->numel = numel;
    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 || !json_uint(of->child, &e->begin) ||
        !json_uint(of->child->next, &e->end))
        return bad(c, EM_EINVAL, "the data_offsets of tensor \"%.200s\" are not two non-negative integers", name);
    if (e->end < e->begin)
        return bad(c, EM_EINVAL, "the data_offsets [%llu, %llu] of tensor \"%.200s\" end before they begin",
                   (unsigned long long)e->begin, (unsigned long long)e->end, name);
    if (e->end > data_size)
        return bad(c, EM_EINVAL,
                   "the data_offsets [%llu, %llu] of tensor \"%.200s\" are out of range: the data section has %llu "
                   "bytes",
                   (unsigned long long)e->begin, (unsigned long long)e->end, name, (unsigned long long)data_size);
    if (e->end - e->begin != nbytes)
        return bad(c, EM_EINVAL,
                   "tensor \"%.200s\" is %s %s, %llu bytes, but its data_offsets [%llu, %llu] hold %llu bytes", name,
                   st_dtypes[e->dtype].name, shape_str(e->shape, ndim, sbuf, sizeof sbuf),
                   (unsigned long long)nbytes, (unsigned long long)e->begin, (unsigned long long)e->end,
                   (unsigned long long)(e->end - e->begin));
    e->name = dup_str(name);
    if (e->name == NULL)
        return bad(c, EM_ENOMEM, "out of memory");
    return EM_OK;
}

static em_status parse_metadata(const parse_ctx *c, const cJSON *item, em_safetensors *f)
{
    if (f->meta != NULL)
        return bad(c, EM_EINVAL, "\"__metadata__\" appears twice");
    if (!cJSON_IsObject(item))
        return bad(c, EM_EINVAL, "\"__metadata__\" is not a JSON object");
    size_t n = (size_t)cJSON_GetArraySize(item);
    f->meta = calloc(n + 1, sizeof *f->meta); /* + 1: non-NULL also when empty */
    if (f->meta == NULL)
        return bad(c, EM_ENOMEM, "out of memory");
    for (const cJSON *m = item->child; m != NULL; m = m->next) {
        if (!cJSON_IsString(m))
            return bad(c, EM_EINVAL, "the __metadata__ value of \"%.200s\" is not a string", m->string);
        em_safetensors_meta *e = &f->meta[f->n_meta++];
        e->key = dup_str(m->string);
        e->value = dup_str(m->valuestring);
        if (e->key == NULL || e->value == NULL)
            return bad(c, EM_ENOMEM, "out of memory");
    }
    if (f->n_meta > 1) {
        const em_safetensors_meta **sorted = malloc(f->n_meta * sizeof *sorted);
        if (sorted == NULL)
            return bad(c, EM_ENOMEM, "out of memory");
        for (size_t i = 0; i < f->n_meta; i++)
            sorted[i] = &f->meta[i];
        qsort(sorted, f->n_meta, sizeof *sorted, cmp_meta_key);
        for (size_t i = 1; i < f->n_meta; i++)
            if (strcmp(sorted[i - 1]->key, sorted[i]->key) == 0) {
                em_status st = bad(c, EM_EINVAL, "the __metadata__ key \"%.200s\" appears twice", sorted[i]->key);
                free(sorted);
                return st;
            }
        free(sorted);
    }
    return EM_OK;
}

/* Tensors tile the data section: sorted by offset, each begins where the previous ends, and the last
 * ends at the end of the file. */
static em_status check_layout(const parse_ctx *c, const em_safetensors *f)
{
    span *s = malloc((f->n + 1) * sizeof *s);
    if (s == NULL)
        return bad(c, EM_ENOMEM, "out of memory");
    for (size_t i = 0; i < f->n; i++)
        s[i] = (span){f->entries[i].begin, f->entries[i].end, i};
    qsort(s, f->n, sizeof *s, cmp_span);
    uint64_t at = 0;
    em_status st = EM_OK;
    for (size_t i = 0; i < f->n && st == EM_OK; i++) {
        const emi_st_entry *e = &f->entries[s[i].idx];
        if (e->begin < at)
            st = bad(c, EM_EINVAL, "tensor \"%.200s\" [%llu, %llu] overlaps tensor \"%.200s\", which ends at %llu",
                     e->name, (unsigned long long)e->begin, (unsigned long long)e->end,
                     f->entries[s[i - 1].idx].name, (unsigned long long)at);
        else if (e->begin > at)
            st = bad(c, EM_EINVAL, "bytes [%llu, %llu) of the data section belong to no tensor (before \"%.200s\")",
                     (unsigned long long)at, (unsigned long long)e->begin, e->name);
        at = e->end;
    }
    if (st == EM_OK && at != f->data_size)
        st = bad(c, EM_EINVAL,
                 "the tensors cover %llu bytes of the %llu-byte data section: the file has %llu bytes no tensor "
                 "describes",
                 (unsigned long long)at, (unsigned long long)f->data_size, (unsigned long long)(f->data_size - at));
    free(s);
    return st;
}

/* Validate `hdr` (n bytes + a NUL) and fill f's entries and metadata. */
static em_status parse_header(const parse_ctx *c, char *hdr, size_t n, em_safetensors *f)
{
    const unsigned char *u = (const unsigned char *)hdr;
    for (size_t i = 0; i < n; i++)
        if (u[i] < 0x20 && u[i] != '\t' && u[i] != '\n' && u[i] != '\r')
            return bad(c, EM_EINVAL, "the header has a control character (byte 0x%02x) at offset %zu", u[i], i);
    if (!emi_utf8_valid(u, n))
        return bad(c, EM_EINVAL, "the header is not valid UTF-8");
    size_t first = 0;
    while (first < n && is_json_space(u[first]))
        first++;
    if (first == n || u[first] != '{')
        return bad(c, EM_EINVAL, "the header is not a JSON object (it does not start with '{')");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, n, &end, false);
    if (root == NULL) {
        size_t at = end != NULL && end >= hdr && end <= hdr + n ? (size_t)(end - hdr) : 0;
        return bad(c, EM_EINVAL, "the header is not valid JSON (near offset %zu)", at);
    }
    em_status st = EM_OK;
    for (const char *p = end; p != NULL && p < hdr + n; p++)
        if (!is_json_space((unsigned char)*p)) {
            st = bad(c, EM_EINVAL, "the header has bytes after its JSON object (at offset %zu)", (size_t)(p - hdr));
            break;
        }
    if (st == EM_OK && !cJSON_IsObject(root))
        st = bad(c, EM_EINVAL, "the header is not a JSON object");
    size_t members = st == EM_OK ? (size_t)cJSON_GetArraySize(root) : 0;
    if (st == EM_OK) {
        f->entries = calloc(members + 1, sizeof *f->entries);
        if (f->entries == NULL)
            st = bad(c, EM_ENOMEM, "out of memory");
    }
    for (const cJSON *item = st == EM_OK ? root->child : NULL; item != NULL && st == EM_OK; item = item->next) {
        if (strcmp(item->string, "__metadata__") == 0)
            st = parse_metadata(c, item, f);
        else if ((st = parse_entry(c, item, &f->entries[f->n], f->data_size)) == EM_OK)
            f->n++;
    }
    cJSON_Delete(root);
    if (st != EM_OK)
        return st;
    /* entries by name: duplicates are adjacent */
    qsort(f->entries, f->n, sizeof *f->entries, cmp_entry_name);
    for (size_t i = 1; i < f->n; i++)
        if (strcmp(f->entries[i - 1].name, f->entries[i].name) == 0)
            return bad(c, EM_EINVAL, "tensor \"%.200s\" appears twice", f->entries[i].name);
    return check_layout(c, f);
}

static bool read_at(int fd, void *out, size_t n, uint64_t off)
{
    unsigned char *p = out;
    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = 0; /* end of file: the file shrank */
            return false;
        }
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return true;
}

/* The common part of open and parse: the length, the header, the layout. Takes the fd. */
static em_safetensors *load(const char *who, const char *label, int fd, const unsigned char *mem, uint64_t size)
{
    parse_ctx c = {who, label};
    em_safetensors *f = calloc(1, sizeof *f);
    char *hdr = NULL;
    if (f == NULL) {
        if (fd >= 0)
            close(fd);
        bad(&c, EM_ENOMEM, "out of memory");
        return NULL;
    }
    f->tag = EMI_HANDLE_SAFETENSORS;
    f->fd = fd;
    f->mem = mem;
    f->label = dup_str(label);
    em_status st = EM_OK;
    unsigned char len8[8];
    uint64_t n = 0;
    if (f->label == NULL)
        st = bad(&c, EM_ENOMEM, "out of memory");
    else if (size < 8)
        st = bad(&c, EM_EINVAL, "the file is %llu bytes, too short for the 8-byte header length",
                 (unsigned long long)size);
    else if (mem != NULL)
        memcpy(len8, mem, 8);
    else if (!read_at(fd, len8, 8, 0))
        st = bad(&c, EM_EIO, "cannot read: %s", errno ? strerror(errno) : "the file ended early");
    if (st == EM_OK) {
        for (int i = 7; i >= 0; i--)
            n = (n << 8) | len8[i];
        if (n > EM_SAFETENSORS_MAX_HEADER)
            st = bad(&c, EM_EINVAL, "the header length %llu exceeds the limit of %u bytes", (unsigned long long)n,
                     EM_SAFETENSORS_MAX_HEADER);
        else if (n > size - 8)
            st = bad(&c, EM_EINVAL, "the header length %llu runs past the end of the file (%llu bytes)",
                     (unsigned long long)n, (unsigned long long)size);
    }
    if (st == EM_OK) {
        f->data_start = 8 + n;
        f->data_size = size - 8 - n;
        hdr = malloc((size_t)n + 1);
        if (hdr == NULL)
            st = bad(&c, EM_ENOMEM, "out of memory for a %llu-byte header", (unsigned long long)n);
        else if (mem != NULL)
            memcpy(hdr, mem + 8, (size_t)n);
        else if (!read_at(fd, hdr, (size_t)n, 8))
            st = bad(&c, EM_EIO, "cannot read the header: %s", errno ? strerror(errno) : "the file ended early");
    }
    if (st == EM_OK) {
        hdr[n] = '\0';
        st = parse_header(&c, hdr, (size_t)n, f);
    }
    free(hdr);
    if (st != EM_OK) {
        em_safetensors_free(f);
        return NULL;
    }
    return f;
}

em_safetensors *em_safetensors_open(const char *path)
{
    if (path == NULL) {
        emi_fail(EM_EINVAL, "em_safetensors_open: path is NULL");
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        emi_fail(EM_EIO, "em_safetensors_open: %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        emi_fail(EM_EIO, "em_safetensors_open: %s: %s", path, strerror(err));
        return NULL;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        emi_fail(EM_EIO, "em_safetensors_open: %s: %s", path,
                 S_ISDIR(sb.st_mode) ? "is a directory" : "is not a regular file");
        return NULL;
    }
    return load("em_safetensors_open", path, fd, NULL, (uint64_t)sb.st_size);
}

em_safetensors *em_safetensors_parse(const void *bytes, size_t size)
{
    if (bytes == NULL && size > 0) {
        emi_fail(EM_EINVAL, "em_safetensors_parse: bytes is NULL");
        return NULL;
    }
    static const unsigned char empty[1] = {0};
    return load("em_safetensors_parse", "buffer", -1, bytes != NULL ? bytes : empty, size);
}

bool emi_st_live(const em_safetensors *f, const char *func)
{
    return emi_handle_ok(f, EMI_HANDLE_SAFETENSORS, func, "safetensors reader");
}

void em_safetensors_free(em_safetensors *f)
{
    if (!emi_handle_free_ok(__func__, f, EMI_HANDLE_SAFETENSORS, "safetensors reader"))
        return;
    for (size_t i = 0; i < f->n; i++)
        free(f->entries[i].name);
    free(f->entries);
    for (size_t i = 0; i < f->n_meta; i++) {
        free((char *)f->meta[i].key);
        free((char *)f->meta[i].value);
    }
    free(f->meta);
    if (f->fd >= 0)
        close(f->fd);
    free(f->label);
    emi_handle_retire(f);
}

size_t em_safetensors_count(const em_safetensors *f)
{
    return emi_st_live(f, __func__) ? f->n : 0;
}

const char *em_safetensors_name(const em_safetensors *f, size_t i)
{
    return emi_st_live(f, __func__) && i < f->n ? f->entries[i].name : NULL;
}

int64_t em_safetensors_find(const em_safetensors *f, const char *name)
{
    if (!emi_st_live(f, __func__) || name == NULL)
        return -1;
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->entries[mid].name, name);
        if (c == 0)
            return (int64_t)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

const char *em_safetensors_dtype(const em_safetensors *f, size_t i)
{
    return emi_st_live(f, __func__) && i < f->n ? emi_st_dtype_name(f->entries[i].dtype) : NULL;
}

int em_safetensors_shape(const em_safetensors *f, size_t i, int64_t *shape, int max)
{
    if (!emi_st_live(f, __func__) || i >= f->n)
        return -1;
    const emi_st_entry *e = &f->entries[i];
    for (int k = 0; k < e->ndim && k < max && shape != NULL; k++)
        shape[k] = e->shape[k];
    return e->ndim;
}

size_t em_safetensors_meta_count(const em_safetensors *f)
{
    return emi_st_live(f, __func__) ? f->n_meta : 0;
}

em_safetensors_meta em_safetensors_meta_get(const em_safetensors *f, size_t i)
{
    if (!emi_st_live(f, __func__) || i >= f->n_meta)
        return (em_safetensors_meta){NULL, NULL};
    return f->meta[i];
}

const char *em_safetensors_meta_find(const em_safetensors *f, const char *key)
{
    if (!emi_st_live(f, __func__) || key == NULL)
        return NULL;
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0)
            return f->meta[i].value;
    return NULL;
}

em_status emi_st_read(const em_safetensors *f, size_t i, void *out, const char *who)
{
    const emi_st_entry *e = &f->entries[i];
    size_t n = (size_t)(e->end - e->begin);
    if (n == 0)
        return EM_OK;
    if (f->mem != NULL) {
        memcpy(out, f->mem + f->data_start + e->begin, n);
        return EM_OK;
    }
    if (!read_at(f->fd, out, n, f->data_start + e->begin))
        return emi_fail(EM_EIO, "%s: %s: cannot read tensor \"%s\": %s", who, f->label, e->name,
                        errno ? strerror(errno) : "the file is shorter than when it was opened");
    return EM_OK;
}

/* ---- writing -------------------------------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(sbuf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* A JSON string, escaped as serde_json escapes it. */
static void put_json_string(sbuf *b, const char *s)
{
    put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        char esc[8];
        switch (*p) {
        case '"': puts_(b, "\\\""); break;
        case '\\': puts_(b, "\\\\"); break;
        case '\b': puts_(b, "\\b"); break;
        case '\f': puts_(b, "\\f"); break;
        case '\n': puts_(b, "\\n"); break;
        case '\r': puts_(b, "\\r"); break;
        case '\t': puts_(b, "\\t"); break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                puts_(b, esc);
            } else {
                put(b, (const char *)p, 1);
            }
        }
    }
    put(b, "\"", 1);
}

static int cmp_out(const void *a, const void *b)
{
    const emi_st_out *x = a, *y = b;
    if (x->dtype != y->dtype)
        return x->dtype > y->dtype ? -1 : 1; /* widest first, as the reference */
    return strcmp(x->name, y->name);
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Whether `strs` (n of them) has a duplicate; *dup receives it. */
static em_status find_duplicate(const char **strs, size_t n, const char **dup)
{
    *dup = NULL;
    if (n < 2)
        return EM_OK;
    const char **s = malloc(n * sizeof *s);
    if (s == NULL)
        return EM_ENOMEM;
    memcpy(s, strs, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_str_ptr);
    for (size_t i = 1; i < n && *dup == NULL; i++)
        if (strcmp(s[i - 1], s[i]) == 0)
            *dup = s[i];
    free(s);
    return EM_OK;
}

char *emi_st_header(const char *who, emi_st_out *t, size_t n, const em_safetensors_meta *meta, size_t n_meta,
                    size_t *len)
{
    for (size_t i = 0; i < n; i++) {
        const char *s = t[i].name;
        if (s == NULL || s[0] == '\0' || !emi_utf8_valid((const unsigned char *)s, strlen(s)) ||
            strcmp(s, "__metadata__") == 0) {
            emi_fail(EM_EINVAL, "%s: tensor %zu has %s name%s%s%s", who, t[i].index,
                     s == NULL ? "a NULL" : s[0] == '\0' ? "an empty" : "an invalid", s != NULL && s[0] ? " \"" : "",
                     s != NULL && s[0] ? s : "", s != NULL && s[0] ? "\" (not UTF-8, or reserved)" : "");
            return NULL;
        }
    }
    for (size_t i = 0; i < n_meta; i++) {
        const char *k = meta[i].key, *v = meta[i].value;
        if (k == NULL || v == NULL || !emi_utf8_valid((const unsigned char *)k, strlen(k)) ||
            !emi_utf8_valid((const unsigned char *)v, strlen(v))) {
            emi_fail(EM_EINVAL, "%s: metadata entry %zu has a NULL or non-UTF-8 key or value", who, i);
            return NULL;
        }
    }
    const char **names = malloc((n + n_meta + 1) * sizeof *names);
    if (names == NULL) {
        emi_fail(EM_ENOMEM, "%s: out of memory", who);
        return NULL;
    }
    const char *dup = NULL;
    for (size_t i = 0; i < n; i++)
        names[i] = t[i].name;
    em_status st = find_duplicate(names, n, &dup);
    if (st == EM_OK && dup != NULL) {
        emi_fail(EM_EINVAL, "%s: two tensors are named \"%s\"", who, dup);
        free(names);
        return NULL;
    }
    for (size_t i = 0; st == EM_OK && i < n_meta; i++)
        names[i] = meta[i].key;
    if (st == EM_OK)
        st = find_duplicate(names, n_meta, &dup);
    free(names);
    if (st != EM_OK) {
        emi_fail(EM_ENOMEM, "%s: out of memory", who);
        return NULL;
    }
    if (dup != NULL) {
        emi_fail(EM_EINVAL, "%s: the metadata key \"%s\" appears twice", who, dup);
        return NULL;
    }

    qsort(t, n, sizeof *t, cmp_out);
    sbuf b = {0};
    puts_(&b, "{");
    if (n_meta > 0) {
        puts_(&b, "\"__metadata__\":{");
        for (size_t i = 0; i < n_meta; i++) {
            if (i)
                puts_(&b, ",");
            put_json_string(&b, meta[i].key);
            puts_(&b, ":");
            put_json_string(&b, meta[i].value);
        }
        puts_(&b, "}");
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        char num[64];
        if (i || n_meta > 0)
            puts_(&b, ",");
        put_json_string(&b, t[i].name);
        puts_(&b, ":{\"dtype\":\"");
        puts_(&b, emi_st_dtype_name(t[i].dtype));
        puts_(&b, "\",\"shape\":[");
        for (int k = 0; k < t[i].ndim; k++) {
            snprintf(num, sizeof num, k ? ",%lld" : "%lld", (long long)t[i].shape[k]);
            puts_(&b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + t[i].nbytes));
        puts_(&b, num);
        off += t[i].nbytes;
    }
    puts_(&b, "}");
    while (!b.oom && b.len % 8 != 0)
        puts_(&b, " ");
    if (b.oom) {
        free(b.p);
        emi_fail(EM_ENOMEM, "%s: out of memory", who);
        return NULL;
    }
    if (b.len > EM_SAFETENSORS_MAX_HEADER) {
        free(b.p);
        emi_fail(EM_EINVAL, "%s: the header would be %zu bytes, more than readers accept (%u)", who, b.len,
                 EM_SAFETENSORS_MAX_HEADER);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
