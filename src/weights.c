/* weights.c: tensors and layers in safetensors files (ember/io.h): writing them (atomically), turning
 * a validated entry (safetensors.c) into a tensor, and torch's load_state_dict onto an em_nn.
 * Written on the public tensor and layer API only.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "backend.h" /* emi_fail */
#include "safetensors.h"
#include "weights.h"

/* The format is little-endian; ember's tensors hold the host's order. */
static void to_little_endian(void *data, size_t nbytes, size_t elem)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    unsigned char *p = data;
    for (size_t i = 0; elem > 1 && i + elem <= nbytes; i += elem)
        for (size_t a = i, b = i + elem - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
#else
    (void)data, (void)nbytes, (void)elem;
#endif
}

/* ---- writing -------------------------------------------------------------------------------------- */

static em_status write_tensors(const char *who, const char *path, const char *const *names,
                               em_tensor *const *tensors, size_t n, const em_safetensors_meta *meta, size_t n_meta)
{
    if (path == NULL || (n > 0 && (names == NULL || tensors == NULL)) || (n_meta > 0 && meta == NULL))
        return emi_fail(EM_EINVAL, "%s: %s is NULL", who,
                        path == NULL ? "path" : n_meta > 0 && meta == NULL ? "meta" : names == NULL ? "names" : "tensors");
    emi_st_out *t = calloc(n + 1, sizeof *t);
    if (t == NULL)
        return emi_fail(EM_ENOMEM, "%s: out of memory", who);
    em_status st = EM_OK;
    for (size_t i = 0; i < n && st == EM_OK; i++) {
        if (tensors[i] == NULL) {
            st = emi_fail(EM_EINVAL, "%s: tensor %zu (\"%s\") is NULL", who, i, names[i] ? names[i] : "?");
            break;
        }
        t[i].name = names[i];
        t[i].index = i;
        em_dtype d = em_tensor_dtype(tensors[i]);
        t[i].dtype = emi_st_dtype_from_em(d);
        t[i].ndim = em_tensor_shape(tensors[i], t[i].shape, EM_MAX_DIMS);
        int64_t numel = em_tensor_numel(tensors[i]);
        if (t[i].ndim < 0 || t[i].ndim > EM_MAX_DIMS || numel < 0)
            st = emi_fail(EM_EINVAL, "%s: tensor %zu is not a valid tensor", who, i);
        else
            t[i].nbytes = (uint64_t)numel * em_dtype_size(d);
    }
    size_t hlen = 0;
    char *header = st == EM_OK ? emi_st_header(who, t, n, meta, n_meta, &hlen) : NULL;
    if (header == NULL) {
        free(t);
        return st != EM_OK ? st : em_last_status();
    }
    emi_atomic_file *a = emi_atomic_open(who, path);
    if (a == NULL) {
        free(header);
        free(t);
        return em_last_status();
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    st = emi_atomic_write(a, len8, 8);
    if (st == EM_OK)
        st = emi_atomic_write(a, header, hlen);
    free(header);
    for (size_t i = 0; i < n && st == EM_OK; i++) {
        size_t nb = (size_t)t[i].nbytes;
        if (nb == 0)
            continue;
        void *buf = malloc(nb);
        if (buf == NULL) {
            st = emi_fail(EM_ENOMEM, "%s: out of memory for tensor \"%s\" (%zu bytes)", who, t[i].name, nb);
            break;
        }
        em_dtype d = em_tensor_dtype(tensors[t[i].index]);
        st = em_tensor_copy_to(tensors[t[i].index], buf, nb, d);
        if (st == EM_OK) {
            to_little_endian(buf, nb, em_dtype_size(d));
            st = emi_atomic_write(a, buf, nb);
        }
        free(buf);
    }
    free(t);
    if (st != EM_OK) {
        emi_atomic_abort(a);
        return st;
    }
    return emi_atomic_commit(a);
}

em_status em_safetensors_write(const char *path, const char *const *names, em_tensor *const *tensors, size_t n,
                               const em_safetensors_meta *meta, size_t n_meta)
{
    return write_tensors("em_safetensors_write", path, names, tensors, n, meta, n_meta);
}

em_status em_nn_save_safetensors(const em_nn *m, const char *path, const em_safetensors_meta *meta, size_t n_meta)
{
    if (m == NULL)
        return emi_fail(EM_EINVAL, "em_nn_save_safetensors: the layer is NULL");
    size_t np = em_nn_num_parameters(m), nb = em_nn_num_buffers(m);
    const char **names = malloc((np + nb + 1) * sizeof *names);
    em_tensor **ts = malloc((np + nb + 1) * sizeof *ts);
    if (names == NULL || ts == NULL) {
        free(names);
        free(ts);
        return emi_fail(EM_ENOMEM, "em_nn_save_safetensors: out of memory");
    }
    for (size_t i = 0; i < np; i++) {
        names[i] = em_nn_parameter_name(m, i);
        ts[i] = em_nn_parameter(m, i);
    }
    for (size_t i = 0; i < nb; i++) {
        names[np + i] = em_nn_buffer_name(m, i);
        ts[np + i] = em_nn_buffer(m, i);
    }
    em_status st = EM_OK;
    for (size_t i = 0; i < np + nb && st == EM_OK; i++)
        if (names[i] == NULL || ts[i] == NULL)
            st = emi_fail(EM_EINVAL, "em_nn_save_safetensors: the layer's tensor %zu cannot be read", i);
    if (st == EM_OK)
        st = write_tensors("em_nn_save_safetensors", path, names, ts, np + nb, meta, n_meta);
    free(names);
    free(ts);
    return st;
}

/* ---- reading -------------------------------------------------------------------------------------- */

/* The i-th entry's bytes in a new buffer (at least 1 byte), checked for the dtype ember reads it as. */
static void *entry_bytes(const em_safetensors *f, size_t i, em_dtype *dt, const char *who)
{
    const emi_st_entry *e = &f->entries[i];
    if (!emi_st_dtype_to_em(e->dtype, dt)) {
        emi_fail(EM_EINVAL, "%s: %s: tensor \"%s\" has dtype %s, which ember has no tensor type for", who, f->label,
                 e->name, emi_st_dtype_name(e->dtype));
        return NULL;
    }
    size_t nb = (size_t)(e->end - e->begin);
    unsigned char *buf = malloc(nb > 0 ? nb : 1);
    if (buf == NULL) {
        emi_fail(EM_ENOMEM, "%s: %s: out of memory for tensor \"%s\" (%zu bytes)", who, f->label, e->name, nb);
        return NULL;
    }
    if (emi_st_read(f, i, buf, who) != EM_OK) {
        free(buf);
        return NULL;
    }
    if (*dt == EM_BOOL)
        for (size_t k = 0; k < nb; k++)
            if (buf[k] > 1) {
                emi_fail(EM_EINVAL, "%s: %s: tensor \"%s\" (BOOL) holds the byte %u at element %zu: only 0 and 1 are "
                         "booleans", who, f->label, e->name, buf[k], k);
                free(buf);
                return NULL;
            }
    to_little_endian(buf, nb, em_dtype_size(*dt)); /* the same swap reads it back on a big-endian host */
    return buf;
}

em_tensor *em_safetensors_tensor(const em_safetensors *f, size_t i)
{
    if (f != NULL && !emi_st_live(f, __func__))
        return NULL;
    if (f == NULL || i >= f->n) {
        emi_fail(EM_EINVAL, "em_safetensors_tensor: %s", f == NULL ? "the reader is NULL" : "index out of range");
        return NULL;
    }
    em_dtype dt;
    void *buf = entry_bytes(f, i, &dt, "em_safetensors_tensor");
    if (buf == NULL)
        return NULL;
    const emi_st_entry *e = &f->entries[i];
    em_tensor *t = em_tensor_from(buf, dt, e->shape, e->ndim, NULL);
    free(buf);
    return t;
}

/* A one-line list of names for the load error, cut to fit. */
typedef struct msg {
    char text[900];
    size_t len;
    size_t dropped;
} msg;

static void msg_add(msg *m, const char *fmt, ...) EM_PRINTF(2, 3);
static void msg_add(msg *m, const char *fmt, ...)
{
    char piece[400];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(piece, sizeof piece, fmt, ap);
    va_end(ap);
    if (k < 0)
        return;
    size_t n = strlen(piece);
    if (m->len + n + 40 >= sizeof m->text) {
        m->dropped++;
        return;
    }
    memcpy(m->text + m->len, piece, n + 1);
    m->len += n;
}

static const char *shape_text(const int64_t *s, int nd, char *buf, size_t len)
{
    size_t k = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < nd && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, i ? ", %lld" : "%lld", (long long)s[i]);
    if (k < len)
        snprintf(buf + k, len - k, "]");
    return buf;
}

em_status em_nn_load_safetensors_from(em_nn *m, const em_safetensors *f, bool strict)
{
    if (f != NULL && !emi_st_live(f, __func__))
        return em_last_status();
    return emi_nn_load(m, f, strict, "", "em_nn_load_safetensors");
}

em_status emi_nn_load(em_nn *m, const em_safetensors *f, bool strict, const char *prefix, const char *who)
{
    size_t plen = strlen(prefix);
    if (m == NULL || f == NULL)
        return emi_fail(EM_EINVAL, "%s: the %s is NULL", who, m == NULL ? "layer" : "reader");
    size_t np = em_nn_num_parameters(m), nb = em_nn_num_buffers(m), nt = np + nb;
    const char **names = malloc((nt + 1) * sizeof *names);
    int64_t *match = malloc((nt + 1) * sizeof *match);
    bool *used = calloc(f->n + 1, sizeof *used);
    if (names == NULL || match == NULL || used == NULL) {
        free(names), free(match), free(used);
        return emi_fail(EM_ENOMEM, "%s: out of memory", who);
    }
    msg missing = {0}, unexpected = {0}, mismatch = {0}, unreadable = {0};
    size_t n_missing = 0, n_unexpected = 0, n_mismatch = 0, n_unreadable = 0;
    char *key = malloc(plen + 1);
    size_t key_cap = plen + 1;
    for (size_t i = 0; i < nt && key != NULL; i++) {
        names[i] = i < np ? em_nn_parameter_name(m, i) : em_nn_buffer_name(m, i - np);
        em_tensor *t = i < np ? em_nn_parameter(m, i) : em_nn_buffer(m, i - np);
        size_t need = plen + strlen(names[i]) + 1;
        if (need > key_cap) {
            char *k = realloc(key, need);
            if (k == NULL) {
                free(key);
                key = NULL;
                break;
            }
            key = k, key_cap = need;
        }
        memcpy(key, prefix, plen);
        memcpy(key + plen, names[i], need - plen);
        match[i] = em_safetensors_find(f, key);
        if (match[i] < 0) {
            msg_add(&missing, "%s\"%s\"", n_missing++ ? ", " : "", names[i]);
            continue;
        }
        const emi_st_entry *e = &f->entries[match[i]];
        used[match[i]] = true;
        int64_t shape[EM_MAX_DIMS];
        int nd = em_tensor_shape(t, shape, EM_MAX_DIMS);
        bool same = nd == e->ndim;
        for (int k = 0; same && k < nd; k++)
            same = shape[k] == e->shape[k];
        em_dtype dt;
        if (!same) {
            char a[200], b[200];
            msg_add(&mismatch, "%s\"%s\": the file has %s, the layer %s", n_mismatch++ ? "; " : "", names[i],
                    shape_text(e->shape, e->ndim, a, sizeof a), shape_text(shape, nd < 0 ? 0 : nd, b, sizeof b));
        } else if (!emi_st_dtype_to_em(e->dtype, &dt)) {
            msg_add(&unreadable, "%s\"%s\" (%s)", n_unreadable++ ? ", " : "", names[i], emi_st_dtype_name(e->dtype));
        }
    }
    if (key == NULL) {
        free(names), free(match), free(used);
        return emi_fail(EM_ENOMEM, "%s: out of memory", who);
    }
    free(key);
    for (size_t j = 0; j < f->n; j++)
        if (!used[j] && strncmp(f->entries[j].name, prefix, plen) == 0)
            msg_add(&unexpected, "%s\"%s\"", n_unexpected++ ? ", " : "", f->entries[j].name + plen);
    em_status st = EM_OK;
    if ((strict && (n_missing || n_unexpected)) || n_mismatch || n_unreadable) {
        char more[4][48] = {"", "", "", ""};
        msg *ms[4] = {&missing, &unexpected, &mismatch, &unreadable};
        for (int k = 0; k < 4; k++)
            if (ms[k]->dropped)
                snprintf(more[k], sizeof more[k], " and %zu more", ms[k]->dropped);
        st = emi_fail(EM_EINVAL, "%s: %s: the file does not fit the %s:%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s", who,
                      f->label, em_nn_kind(m),
                      strict && n_missing ? " Missing key(s): " : "", strict && n_missing ? missing.text : "",
                      strict && n_missing ? more[0] : "", strict && n_missing ? "." : "",
                      strict && n_unexpected ? " Unexpected key(s): " : "", strict && n_unexpected ? unexpected.text : "",
                      strict && n_unexpected ? more[1] : "", strict && n_unexpected ? "." : "",
                      n_mismatch ? " Size mismatch for " : "", n_mismatch ? mismatch.text : "", n_mismatch ? more[2] : "",
                      n_mismatch ? "." : "", n_unreadable ? " Dtype ember cannot read for " : "",
                      n_unreadable ? unreadable.text : "", n_unreadable ? more[3] : "", n_unreadable ? "." : "");
    }
    /* every tensor's bytes are read and checked (BOOL bytes) before the first one is copied */
    void **bufs = st == EM_OK ? calloc(nt + 1, sizeof *bufs) : NULL;
    em_dtype *dts = st == EM_OK ? calloc(nt + 1, sizeof *dts) : NULL;
    if (st == EM_OK && (bufs == NULL || dts == NULL))
        st = emi_fail(EM_ENOMEM, "%s: out of memory", who);
    for (size_t i = 0; i < nt && st == EM_OK; i++)
        if (match[i] >= 0 && (bufs[i] = entry_bytes(f, (size_t)match[i], &dts[i], who)) == NULL)
            st = em_last_status();
    for (size_t i = 0; i < nt && st == EM_OK; i++)
        if (match[i] >= 0)
            st = em_nn_set(m, names[i], bufs[i], dts[i], (size_t)f->entries[match[i]].numel);
    for (size_t i = 0; bufs != NULL && i < nt; i++)
        free(bufs[i]);
    free(bufs), free(dts);
    free(names), free(match), free(used);
    return st;
}

em_status em_nn_load_safetensors(em_nn *m, const char *path, bool strict)
{
    if (m == NULL)
        return emi_fail(EM_EINVAL, "em_nn_load_safetensors: the layer is NULL");
    em_safetensors *f = em_safetensors_open(path);
    if (f == NULL)
        return em_last_status();
    em_status st = em_nn_load_safetensors_from(m, f, strict);
    em_safetensors_free(f);
    return st;
}
