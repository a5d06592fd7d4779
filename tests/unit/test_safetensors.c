/* test_safetensors.c: weights in safetensors files (ember/io.h): the bytes the reference writer
 * writes (its own test vectors, safetensors/src/tensor.rs), layers saved and loaded back bit for bit
 * under torch's names, strict and non-strict loading, dtype conversion, the reader's accessors and
 * the atomic writer (unwritable directory, previous file kept, no temporary file left). */
#define _POSIX_C_SOURCE 200809L
#include "helpers.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ember_st_XXXXXX");
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int remove_tmpdir(void **state)
{
    (void)state;
    DIR *d = opendir(tmpdir);
    if (d != NULL) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.' && (e->d_name[1] == '\0' || (e->d_name[1] == '.' && e->d_name[2] == '\0')))
                continue;
            snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
            chmod(p, 0700);
            remove(p);
        }
        closedir(d);
    }
    return rmdir(tmpdir);
}

/* Each test runs inside a scope of its own, so the tensors it makes are freed at its end. */
static int setup(void **state)
{
    em_scope_begin();
    return helper_setup(state);
}

static int teardown(void **state)
{
    em_scope_end();
    return helper_teardown(state);
}

static const char *tmp(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    return p;
}

/* The whole file in a malloc'd buffer; *n its size. */
static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

static size_t count_files(void)
{
    DIR *d = opendir(tmpdir);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

/* ---- the reference writer's bytes ---------------------------------------------------------------- */

static void assert_file_bytes(const char *path, const unsigned char *want, size_t n)
{
    size_t got_n;
    unsigned char *got = slurp(path, &got_n);
    assert_int_equal(got_n, n);
    assert_memory_equal(got, want, n);
    free(got);
}

static void test_safetensors__reference_writer_bytes(void **state)
{
    (void)state;
    /* safetensors/src/tensor.rs, test_serialization: {"attn.0": F32 [1, 2, 3] = 0..5} */
    static const unsigned char want[] = {
        64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34,
        58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97,
        116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0,
        128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
    /* test_serialization_forced_alignement: "attn0", [1, 1, 2, 3]: 7 spaces of padding */
    static const unsigned char want_aligned[] = {
        72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58,
        34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100,
        97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32,
        32, 32, 32, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
    /* test_empty: no tensor; then with {"framework": "pt"} as metadata */
    static const unsigned char want_empty[] = {8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32};
    static const unsigned char want_meta[] = {40,  0,   0,  0,   0,   0,   0,   0,   123, 34,  95,  95,  109, 101,
                                              116, 97,  100, 97, 116, 97,  95,  95,  34,  58,  123, 34,  102, 114,
                                              97,  109, 101, 119, 111, 114, 107, 34,  58,  34,  112, 116, 34,  125,
                                              125, 32,  32,  32,  32,  32};
    em_tensor *t = em_arange(0, 6, 1, NULL);
    em_tensor *t3 = em_reshape(t, EM_SHAPE(1, 2, 3));
    em_tensor *t4 = em_reshape(t, EM_SHAPE(1, 1, 2, 3));
    assert_ok(em_safetensors_write(tmp("a.safetensors"), (const char *[]){"attn.0"}, &t3, 1, NULL, 0));
    assert_file_bytes(tmp("a.safetensors"), want, sizeof want);
    assert_ok(em_safetensors_write(tmp("b.safetensors"), (const char *[]){"attn0"}, &t4, 1, NULL, 0));
    assert_file_bytes(tmp("b.safetensors"), want_aligned, sizeof want_aligned);
    assert_ok(em_safetensors_write(tmp("c.safetensors"), NULL, NULL, 0, NULL, 0));
    assert_file_bytes(tmp("c.safetensors"), want_empty, sizeof want_empty);
    em_safetensors_meta meta = {"framework", "pt"};
    assert_ok(em_safetensors_write(tmp("d.safetensors"), NULL, NULL, 0, &meta, 1));
    assert_file_bytes(tmp("d.safetensors"), want_meta, sizeof want_meta);

    /* and the reader takes the reference's bytes */
    em_safetensors *f = em_safetensors_parse(want_aligned, sizeof want_aligned);
    assert_nonnull_em(f);
    assert_int_equal(em_safetensors_count(f), 1);
    assert_string_equal(em_safetensors_name(f, 0), "attn0");
    assert_string_equal(em_safetensors_dtype(f, 0), "F32");
    int64_t shape[EM_MAX_DIMS];
    assert_int_equal(em_safetensors_shape(f, 0, shape, EM_MAX_DIMS), 4);
    assert_int_equal(shape[3], 3);
    float v[6];
    helper_values(em_safetensors_tensor(f, 0), v, 6);
    for (int i = 0; i < 6; i++)
        assert_true(v[i] == (float)i);
    em_safetensors_free(f);
    f = em_safetensors_parse(want_meta, sizeof want_meta);
    assert_nonnull_em(f);
    assert_int_equal(em_safetensors_count(f), 0);
    assert_int_equal(em_safetensors_meta_count(f), 1);
    assert_string_equal(em_safetensors_meta_find(f, "framework"), "pt");
    assert_string_equal(em_safetensors_meta_get(f, 0).key, "framework");
    assert_null(em_safetensors_meta_find(f, "other"));
    em_safetensors_free(f);
}

/* The data order: widest dtype first (the reference's order), then by name; names are escaped. */
static void test_safetensors__order_dtypes_and_escapes(void **state)
{
    (void)state;
    em_tensor *ts[5] = {
        em_tensor_from((const uint8_t[]){1, 0, 1}, EM_BOOL, EM_SHAPE(3), NULL),
        em_tensor_from((const int64_t[]){-5, 1LL << 40}, EM_I64, EM_SHAPE(2), NULL),
        em_to_dtype(T(EM_SHAPE(2), 1.5f, -2.25f), EM_BF16),
        T(EM_SHAPE(1), 3.0f),
        em_to_dtype(T(EM_SHAPE(2, 1), 0.5f, 7.0f), EM_F16),
    };
    const char *names[5] = {"flags", "b.count", "z\"quote\\", "a\nline", "h"};
    em_safetensors_meta meta[2] = {{"format", "pt"}, {"note", "tab\there \xc3\xa9"}};
    assert_ok(em_safetensors_write(tmp("o.safetensors"), names, ts, 5, meta, 2));
    size_t n;
    unsigned char *b = slurp(tmp("o.safetensors"), &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | b[i];
    assert_int_equal(hl % 8, 0);
    char *h = calloc(hl + 1, 1);
    memcpy(h, b + 8, hl);
    const char *want =
        "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"tab\\there \xc3\xa9\"},"
        "\"b.count\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]},"
        "\"a\\nline\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[16,20]},"
        "\"z\\\"quote\\\\\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[20,24]},"
        "\"h\":{\"dtype\":\"F16\",\"shape\":[2,1],\"data_offsets\":[24,28]},"
        "\"flags\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[28,31]}}";
    assert_int_equal(strncmp(h, want, strlen(want)), 0);
    for (size_t i = strlen(want); i < hl; i++)
        assert_int_equal(h[i], ' ');
    free(h);
    free(b);

    /* read back: every dtype, bit for bit */
    em_safetensors *f = em_safetensors_open(tmp("o.safetensors"));
    assert_nonnull_em(f);
    assert_int_equal(em_safetensors_count(f), 5);
    assert_string_equal(em_safetensors_name(f, 0), "a\nline"); /* by name */
    assert_string_equal(em_safetensors_meta_find(f, "note"), "tab\there \xc3\xa9");
    for (int i = 0; i < 5; i++) {
        int64_t k = em_safetensors_find(f, names[i]);
        assert_true(k >= 0);
        em_tensor *back = em_safetensors_tensor(f, (size_t)k);
        assert_nonnull_em(back);
        assert_int_equal(em_tensor_dtype(back), em_tensor_dtype(ts[i]));
        assert_int_equal(em_tensor_numel(back), em_tensor_numel(ts[i]));
        unsigned char x[64], y[64];
        size_t nb = (size_t)em_tensor_numel(back) * em_dtype_size(em_tensor_dtype(back));
        assert_ok(em_tensor_copy_to(back, x, sizeof x, em_tensor_dtype(back)));
        assert_ok(em_tensor_copy_to(ts[i], y, sizeof y, em_tensor_dtype(back)));
        assert_memory_equal(x, y, nb);
    }
    assert_int_equal(em_safetensors_find(f, "nope"), -1);
    em_safetensors_free(f);

    /* writer refusals */
    em_tensor *one = ts[3];
    assert_int_equal(em_safetensors_write(tmp("x.safetensors"), (const char *[]){"a", "a"},
                                          (em_tensor *[]){one, one}, 2, NULL, 0), EM_EINVAL);
    assert_error_contains("two tensors are named \"a\"");
    em_clear_error();
    assert_int_equal(em_safetensors_write(tmp("x.safetensors"), (const char *[]){""}, &one, 1, NULL, 0), EM_EINVAL);
    assert_error_contains("empty name");
    em_clear_error();
    assert_int_equal(em_safetensors_write(tmp("x.safetensors"), (const char *[]){"__metadata__"}, &one, 1, NULL, 0),
                     EM_EINVAL);
    em_clear_error();
    assert_int_equal(em_safetensors_write(tmp("x.safetensors"), (const char *[]){"bad\xff"}, &one, 1, NULL, 0),
                     EM_EINVAL);
    em_clear_error();
    em_safetensors_meta dup[2] = {{"k", "1"}, {"k", "2"}};
    assert_int_equal(em_safetensors_write(tmp("x.safetensors"), NULL, NULL, 0, dup, 2), EM_EINVAL);
    assert_error_contains("metadata key \"k\" appears twice");
    em_clear_error();
    assert_int_equal(access(tmp("x.safetensors"), F_OK), -1); /* nothing written */
}

/* ---- layers ------------------------------------------------------------------------------------------ */

/* G = Sequential(Linear(4, 8), BatchNorm1d(8), Tanh, Linear(8, 3)), D = Sequential(Linear(3, 1)). */
static em_nn *gan_like(void)
{
    em_nn *c = em_nn_container();
    assert_ok(em_nn_add(c, "G", EM_NN_SEQUENTIAL(em_nn_linear(4, 8, true), em_nn_batchnorm1d(8, NULL), em_nn_tanh(),
                                                 em_nn_linear(8, 3, true))));
    assert_ok(em_nn_add(c, "D", EM_NN_SEQUENTIAL(em_nn_linear(3, 1, true))));
    return c;
}

/* Every parameter and buffer of a and b holds the same bytes. */
static void assert_same_state(const em_nn *a, const em_nn *b)
{
    assert_int_equal(em_nn_num_parameters(a), em_nn_num_parameters(b));
    assert_int_equal(em_nn_num_buffers(a), em_nn_num_buffers(b));
    size_t np = em_nn_num_parameters(a), nb = em_nn_num_buffers(a);
    for (size_t i = 0; i < np + nb; i++) {
        const em_tensor *x = i < np ? em_nn_parameter(a, i) : em_nn_buffer(a, i - np);
        const char *name = i < np ? em_nn_parameter_name(a, i) : em_nn_buffer_name(a, i - np);
        const em_tensor *y = em_nn_get(b, name);
        assert_nonnull_em(y);
        size_t bytes = (size_t)em_tensor_numel(x) * em_dtype_size(em_tensor_dtype(x));
        unsigned char *p = malloc(bytes + 1), *q = malloc(bytes + 1);
        assert_ok(em_tensor_copy_to(x, p, bytes, em_tensor_dtype(x)));
        assert_ok(em_tensor_copy_to(y, q, bytes, em_tensor_dtype(x)));
        assert_int_equal(em_tensor_dtype(x), em_tensor_dtype(y));
        assert_memory_equal(p, q, bytes);
        free(p);
        free(q);
    }
}

static void test_safetensors__layer_round_trip(void **state)
{
    (void)state;
    em_manual_seed(1);
    em_nn *a = gan_like();
    /* running statistics that are not the initial ones */
    assert_ok(em_nn_train(a, true));
    em_nn *g = em_nn_child(a, "G");
    for (int i = 0; i < 3; i++)
        assert_nonnull_em(em_nn_forward(g, em_randn(EM_SHAPE(5, 4), NULL)));
    em_safetensors_meta meta = {"format", "pt"};
    assert_ok(em_nn_save_safetensors(a, tmp("net.safetensors"), &meta, 1));

    em_safetensors *f = em_safetensors_open(tmp("net.safetensors"));
    assert_nonnull_em(f);
    /* torch's state_dict names: parameters and buffers, num_batches_tracked (int64) included */
    const char *want[] = {"D.0.bias",   "D.0.weight",         "G.0.bias",          "G.0.weight",
                          "G.1.bias",   "G.1.num_batches_tracked", "G.1.running_mean", "G.1.running_var",
                          "G.1.weight", "G.3.bias",           "G.3.weight"};
    assert_int_equal(em_safetensors_count(f), 11);
    for (size_t i = 0; i < 11; i++)
        assert_string_equal(em_safetensors_name(f, i), want[i]);
    assert_string_equal(em_safetensors_dtype(f, (size_t)em_safetensors_find(f, "G.1.num_batches_tracked")), "I64");
    em_safetensors_free(f);

    em_manual_seed(2); /* other weights */
    em_nn *b = gan_like();
    assert_ok(em_nn_load_safetensors(b, tmp("net.safetensors"), true));
    assert_same_state(a, b);
    /* the same outputs in eval mode */
    assert_ok(em_nn_train(a, false));
    assert_ok(em_nn_train(b, false));
    em_tensor *x = em_randn(EM_SHAPE(6, 4), NULL);
    em_tensor *ya = em_nn_forward(em_nn_child(a, "D"), em_nn_forward(em_nn_child(a, "G"), x));
    em_tensor *yb = em_nn_forward(em_nn_child(b, "D"), em_nn_forward(em_nn_child(b, "G"), x));
    float va[6], vb[6];
    helper_values(ya, va, 6);
    helper_values(yb, vb, 6);
    assert_memory_equal(va, vb, sizeof va);
    /* loaded parameters are still parameters: trainable leaves */
    assert_true(em_tensor_requires_grad(em_nn_get(b, "G.0.weight")));
    em_nn_free(a);
    em_nn_free(b);
}

static void test_safetensors__strict_and_non_strict(void **state)
{
    (void)state;
    em_nn *a = EM_NN_SEQUENTIAL(em_nn_linear(4, 8, true), em_nn_tanh(), em_nn_linear(8, 2, true));
    assert_ok(em_nn_save_safetensors(a, tmp("a.safetensors"), NULL, 0));

    /* a layer with one more parameter set, one missing, one of another shape */
    em_nn *b = EM_NN_SEQUENTIAL(em_nn_linear(4, 8, false), em_nn_tanh(), em_nn_linear(8, 3, true),
                                em_nn_linear(3, 1, true));
    em_tensor *before = em_tensor_ref(em_nn_get(b, "0.weight"));
    float w0[32];
    helper_values(before, w0, 32);
    assert_int_equal(em_nn_load_safetensors(b, tmp("a.safetensors"), true), EM_EINVAL);
    assert_error_contains("Missing key(s): \"3.weight\", \"3.bias\".");
    assert_error_contains("Unexpected key(s): \"0.bias\".");
    assert_error_contains("Size mismatch for \"2.weight\": the file has [2, 8], the layer [3, 8]; \"2.bias\": the "
                          "file has [2], the layer [3].");
    assert_error_contains(tmp("a.safetensors"));
    em_clear_error();
    /* nothing changed */
    float w1[32];
    helper_values(em_nn_get(b, "0.weight"), w1, 32);
    assert_memory_equal(w0, w1, sizeof w0);

    /* not strict: missing and unexpected names are fine, a size mismatch is not (as torch) */
    assert_int_equal(em_nn_load_safetensors(b, tmp("a.safetensors"), false), EM_EINVAL);
    assert_error_contains("Size mismatch");
    assert_null(strstr(em_last_error(), "Missing"));
    em_clear_error();
    em_nn *c = EM_NN_SEQUENTIAL(em_nn_linear(4, 8, false), em_nn_tanh(), em_nn_linear(8, 2, true),
                                em_nn_linear(2, 1, true));
    assert_ok(em_nn_load_safetensors(c, tmp("a.safetensors"), false));
    float x[32], y[32];
    helper_values(em_nn_get(a, "0.weight"), x, 32);
    helper_values(em_nn_get(c, "0.weight"), y, 32);
    assert_memory_equal(x, y, sizeof x);
    helper_values(em_nn_get(a, "2.bias"), x, 2);
    helper_values(em_nn_get(c, "2.bias"), y, 2);
    assert_memory_equal(x, y, 2 * sizeof(float));
    /* strict fails on the same file */
    assert_int_equal(em_nn_load_safetensors(c, tmp("a.safetensors"), true), EM_EINVAL);
    em_clear_error();

    /* a missing file: EM_EIO with the path and errno text */
    assert_int_equal(em_nn_load_safetensors(c, tmp("none.safetensors"), true), EM_EIO);
    assert_error_contains("none.safetensors: No such file or directory");
    em_clear_error();
    em_nn_free(a);
    em_nn_free(b);
    em_nn_free(c);
}

/* Values are converted to the layer's dtype, as torch's load_state_dict (copy_) does. */
static void test_safetensors__dtype_conversion(void **state)
{
    (void)state;
    em_nn *a = em_nn_linear(3, 2, true);
    assert_ok(em_nn_to_dtype(a, EM_F64));
    double w[6] = {0.1, -0.2, 1.0 / 3.0, 4.5, 1e-3, -7.25}, bias[2] = {1e10, -0.5};
    assert_ok(em_nn_set(a, "weight", w, EM_F64, 6));
    assert_ok(em_nn_set(a, "bias", bias, EM_F64, 2));
    assert_ok(em_nn_save_safetensors(a, tmp("f64.safetensors"), NULL, 0));
    em_safetensors *f = em_safetensors_open(tmp("f64.safetensors"));
    assert_string_equal(em_safetensors_dtype(f, 0), "F64");
    em_safetensors_free(f);

    em_nn *b = em_nn_linear(3, 2, true); /* float32 */
    assert_ok(em_nn_load_safetensors(b, tmp("f64.safetensors"), true));
    assert_int_equal(em_tensor_dtype(em_nn_get(b, "weight")), EM_F32);
    float got[6];
    helper_values(em_nn_get(b, "weight"), got, 6);
    for (int i = 0; i < 6; i++)
        assert_true(got[i] == (float)w[i]);
    em_nn *c = em_nn_linear(3, 2, true);
    assert_ok(em_nn_to_dtype(c, EM_BF16));
    assert_ok(em_nn_load_safetensors(c, tmp("f64.safetensors"), true));
    assert_int_equal(em_tensor_dtype(em_nn_get(c, "bias")), EM_BF16);
    double back[2];
    assert_ok(em_tensor_copy_to(em_nn_get(c, "bias"), back, sizeof back, EM_F64));
    assert_true(back[1] == -0.5);
    em_nn_free(a);
    em_nn_free(b);
    em_nn_free(c);
}

/* ---- the atomic writer -------------------------------------------------------------------------------- */

static void test_safetensors__atomic_writer(void **state)
{
    (void)state;
    em_nn *a = em_nn_linear(2, 2, true);
    size_t before = count_files();
    assert_ok(em_nn_save_safetensors(a, tmp("w.safetensors"), NULL, 0));
    assert_int_equal(count_files(), before + 1); /* no temporary file left beside it */
    size_t n1;
    unsigned char *first = slurp(tmp("w.safetensors"), &n1);

    /* a missing directory: EM_EIO naming the path and errno's text */
    assert_int_equal(em_nn_save_safetensors(a, tmp("no/such/dir.safetensors"), NULL, 0), EM_EIO);
    assert_error_contains("no/such/dir.safetensors");
    assert_error_contains("No such file or directory");
    em_clear_error();
    assert_int_equal(em_nn_save_safetensors(a, tmpdir, NULL, 0), EM_EIO); /* a directory: rename fails */
    em_clear_error();

    if (geteuid() != 0) { /* root writes anywhere: the permission case needs another user */
        assert_int_equal(chmod(tmpdir, 0500), 0);
        em_nn *b = em_nn_linear(2, 2, true);
        assert_int_equal(em_nn_save_safetensors(b, tmp("w.safetensors"), NULL, 0), EM_EIO);
        assert_error_contains("Permission denied");
        em_clear_error();
        assert_int_equal(chmod(tmpdir, 0700), 0);
        em_nn_free(b);
    }
    /* the previous file is intact and nothing else appeared */
    size_t n2;
    unsigned char *second = slurp(tmp("w.safetensors"), &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(first, second, n1);
    assert_int_equal(count_files(), before + 1);
    free(first);
    free(second);
    em_nn_free(a);
}

/* An error recorded earlier by something else does not stop a save or a load (first error wins:
 * it stays recorded, untouched). */
static void test_safetensors__earlier_error_does_not_block(void **state)
{
    (void)state;
    em_nn *a = em_nn_linear(2, 3, true);
    em_error_set(EM_EUSER, "an earlier failure");
    assert_int_equal(em_nn_save_safetensors(a, tmp("e.safetensors"), NULL, 0), EM_OK);
    assert_int_equal(em_nn_load_safetensors(a, tmp("e.safetensors"), true), EM_OK);
    assert_string_equal(em_last_error(), "an earlier failure");
    em_clear_error();
    em_nn_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_safetensors__reference_writer_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_safetensors__order_dtypes_and_escapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_safetensors__layer_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_safetensors__strict_and_non_strict, setup, teardown),
        cmocka_unit_test_setup_teardown(test_safetensors__dtype_conversion, setup, teardown),
        cmocka_unit_test_setup_teardown(test_safetensors__atomic_writer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_safetensors__earlier_error_does_not_block, setup, teardown),
    };
    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
