/* test_safetensors_hostile.c: the safetensors reader on truncated, corrupted and malicious files.
 * One case per class of damage, each refused with a message that names it (ember/io.h lists them);
 * then every truncation and thousands of byte corruptions of a real file, none of which may crash
 * (run under ASan: none may over-read). Each case runs in a child process, so a crash fails only it.
 */
#define _POSIX_C_SOURCE 200809L
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[256];

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ember_sth_XXXXXX");
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int remove_tmpdir(void **state)
{
    (void)state;
    char p[512];
    snprintf(p, sizeof p, "%s/f.safetensors", tmpdir);
    remove(p);
    return rmdir(tmpdir);
}

/* A file: 8-byte length (header's own unless `len` is given), header, data. */
typedef struct blob {
    unsigned char *p;
    size_t n;
} blob;

static blob make(const char *header, const void *data, size_t data_n, const uint64_t *len)
{
    size_t h = strlen(header);
    blob b = {malloc(8 + h + data_n + 1), 8 + h + data_n};
    uint64_t l = len != NULL ? *len : h;
    for (int i = 0; i < 8; i++)
        b.p[i] = (unsigned char)(l >> (8 * i));
    memcpy(b.p + 8, header, h);
    if (data_n > 0)
        memcpy(b.p + 8 + h, data, data_n);
    return b;
}

static const char *write_tmp(const blob *b)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/f.safetensors", tmpdir);
    FILE *f = fopen(p, "wb");
    if (f == NULL || fwrite(b->p, 1, b->n, f) != b->n)
        return NULL;
    fclose(f);
    return p;
}

/* In the child: the buffer and the same bytes as a file are refused with `needle` in the message,
 * and loading it into a layer fails too. Returns the exit code (0 = as expected). */
static int check_refused(const blob *b, const char *needle)
{
    em_clear_error();
    em_safetensors *f = em_safetensors_parse(b->p, b->n);
    if (f != NULL || strstr(em_last_error(), needle) == NULL) {
        fprintf(stderr, "parse: wanted an error with \"%s\", got %s: \"%s\"\n", needle, f ? "a reader" : "NULL",
                em_last_error());
        return 1;
    }
    em_clear_error();
    const char *path = write_tmp(b);
    if (path == NULL)
        return 2;
    f = em_safetensors_open(path);
    if (f != NULL || strstr(em_last_error(), needle) == NULL || strstr(em_last_error(), path) == NULL) {
        fprintf(stderr, "open: wanted an error with \"%s\" and the path, got \"%s\"\n", needle, em_last_error());
        return 3;
    }
    em_clear_error();
    em_nn *lin = em_nn_linear(1, 1, true);
    em_status st = em_nn_load_safetensors(lin, path, false);
    em_nn_free(lin);
    if (st == EM_OK) {
        fprintf(stderr, "load accepted the file\n");
        return 4;
    }
    return 0;
}

/* Run check_refused in a child: a crash there is a failure here, not the end of the test. */
static void expect_refused(const char *what, const blob *b, const char *needle)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(check_refused(b, needle));
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("case \"%s\": %s %d", what, WIFEXITED(status) ? "exit code" : "killed by signal",
                 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    free(b->p);
}

#define ENTRY(name, dtype, shape, b, e) \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_hostile__each_class_refused_with_its_message(void **state)
{
    (void)state;
    const float four[4] = {1, 2, 3, 4};
    blob b;
    /* lengths */
    b.p = malloc(3), b.n = 3, memcpy(b.p, "\x10\0\0", 3);
    expect_refused("shorter than 8 bytes", &b, "too short for the 8-byte header length");
    uint64_t past = 1000;
    b = make("{}", NULL, 0, &past);
    expect_refused("header length beyond the file", &b, "the header length 1000 runs past the end of the file");
    uint64_t huge = UINT64_C(1) << 62;
    b = make("{}", NULL, 0, &huge);
    expect_refused("absurd header length", &b, "exceeds the limit of 100000000 bytes");
    /* the header's text */
    b = make("{\"a\xff\":{}}", NULL, 0, NULL);
    expect_refused("invalid UTF-8", &b, "not valid UTF-8");
    b = make("{\"\xed\xa0\x80\":{}}", NULL, 0, NULL); /* an encoded surrogate */
    expect_refused("UTF-8 surrogate", &b, "not valid UTF-8");
    b = make("{\"\xc0\xaf\":{}}", NULL, 0, NULL); /* overlong '/' */
    expect_refused("overlong UTF-8", &b, "not valid UTF-8");
    static const char with_nul[] = "{\"a\0\":{}}";
    b = make("", NULL, 0, NULL), free(b.p), b.n = 8 + sizeof with_nul - 1, b.p = malloc(b.n);
    memcpy(b.p, (unsigned char[8]){sizeof with_nul - 1}, 8), memcpy(b.p + 8, with_nul, sizeof with_nul - 1);
    expect_refused("NUL byte in the header", &b, "control character (byte 0x00) at offset 3");
    b = make("{\"a\":", NULL, 0, NULL);
    expect_refused("invalid JSON", &b, "not valid JSON");
    b = make("[1, 2]", NULL, 0, NULL);
    expect_refused("not an object", &b, "not a JSON object");
    b = make("{} {}", NULL, 0, NULL);
    expect_refused("bytes after the object", &b, "bytes after its JSON object");
    /* entries */
    b = make("{\"a\":3}", NULL, 0, NULL);
    expect_refused("entry not an object", &b, "the entry of tensor \"a\" is not a JSON object");
    b = make("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", four, 4, NULL);
    expect_refused("missing data_offsets", &b, "tensor \"a\" lacks \"data_offsets\"");
    b = make("{" ENTRY("a", "F128", "[1]", 0, 16) "}", four, 16, NULL);
    expect_refused("unknown dtype", &b, "tensor \"a\" has an unknown dtype \"F128\"");
    b = make("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", four, 4, NULL);
    expect_refused("dtype not a string", &b, "the dtype of tensor \"a\" is not a string");
    b = make("{" ENTRY("a", "F32", "[-1]", 0, 4) "}", four, 4, NULL);
    expect_refused("negative dimension", &b, "dimension 0 of tensor \"a\" is not a non-negative integer");
    b = make("{" ENTRY("a", "F32", "[1.5]", 0, 4) "}", four, 4, NULL);
    expect_refused("fractional dimension", &b, "dimension 0 of tensor \"a\" is not a non-negative integer");
    b = make("{" ENTRY("a", "F32", "[1e400]", 0, 4) "}", four, 4, NULL);
    expect_refused("infinite dimension", &b, "dimension 0 of tensor \"a\" is not a non-negative integer");
    b = make("{" ENTRY("a", "F32", "{}", 0, 4) "}", four, 4, NULL);
    expect_refused("shape not an array", &b, "the shape of tensor \"a\" is not an array");
    b = make("{" ENTRY("a", "F32", "[4294967296,4294967296,4294967296]", 0, 4) "}", four, 4, NULL);
    expect_refused("huge shape", &b, "is too large: its byte size overflows");
    b = make("{" ENTRY("a", "F32", "[0,9007199254740992,9007199254740992]", 0, 0) "}", NULL, 0, NULL);
    expect_refused("huge empty shape", &b, "is too large");
    b = make("{" ENTRY("a", "F32", "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]", 0, 4) "}", four, 4, NULL);
    expect_refused("too many dimensions", &b, "tensor \"a\" has 17 dimensions, more than ember's 16");
    /* offsets */
    b = make("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", four, 4, NULL);
    expect_refused("one offset", &b, "the data_offsets of tensor \"a\" are not two non-negative integers");
    b = make("{" ENTRY("a", "F32", "[1]", 4, 0) "}", four, 4, NULL);
    expect_refused("offsets reversed", &b, "the data_offsets [4, 0] of tensor \"a\" end before they begin");
    b = make("{" ENTRY("a", "F32", "[250]", 0, 1000) "}", four, 16, NULL);
    expect_refused("offsets out of range", &b, "data_offsets [0, 1000] of tensor \"a\" are out of range: the data "
                                               "section has 16 bytes");
    b = make("{" ENTRY("a", "F32", "[2]", 0, 4) "}", four, 4, NULL);
    expect_refused("shape/size mismatch", &b, "tensor \"a\" is F32 [2], 8 bytes, but its data_offsets [0, 4] hold 4 "
                                              "bytes");
    b = make("{" ENTRY("a", "F32", "[2]", 0, 8) "," ENTRY("b", "F32", "[2]", 4, 12) "}", four, 12, NULL);
    expect_refused("overlapping tensors", &b, "tensor \"b\" [4, 12] overlaps tensor \"a\", which ends at 8");
    b = make("{" ENTRY("a", "F32", "[1]", 0, 4) "," ENTRY("b", "F32", "[1]", 8, 12) "}", four, 12, NULL);
    expect_refused("a gap between tensors", &b, "bytes [4, 8) of the data section belong to no tensor (before \"b\")");
    b = make("{" ENTRY("a", "F32", "[1]", 4, 8) "}", four, 8, NULL);
    expect_refused("data before the first tensor", &b, "bytes [0, 4) of the data section belong to no tensor");
    b = make("{" ENTRY("a", "F32", "[1]", 0, 4) "}", four, 16, NULL);
    expect_refused("data not covered", &b, "the tensors cover 4 bytes of the 16-byte data section");
    /* names and metadata */
    b = make("{" ENTRY("a", "F32", "[1]", 0, 4) "," ENTRY("a", "F32", "[1]", 4, 8) "}", four, 8, NULL);
    expect_refused("duplicate names", &b, "tensor \"a\" appears twice");
    b = make("{" ENTRY("", "F32", "[1]", 0, 4) "}", four, 4, NULL);
    expect_refused("empty name", &b, "a tensor has an empty name");
    b = make("{\"__metadata__\":{\"k\":1}}", NULL, 0, NULL);
    expect_refused("metadata not strings", &b, "the __metadata__ value of \"k\" is not a string");
    b = make("{\"__metadata__\":[]}", NULL, 0, NULL);
    expect_refused("metadata not an object", &b, "\"__metadata__\" is not a JSON object");
    b = make("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", NULL, 0, NULL);
    expect_refused("duplicate metadata keys", &b, "the __metadata__ key \"k\" appears twice");
    b = make("{\"__metadata__\":{},\"__metadata__\":{}}", NULL, 0, NULL);
    expect_refused("metadata twice", &b, "\"__metadata__\" appears twice");
}

/* Valid layouts whose contents ember refuses only when a tensor is made of them. */
static void test_hostile__contents_refused_when_read(void **state)
{
    (void)state;
    const unsigned char bytes[4] = {0, 1, 2, 0};
    blob b = make("{" ENTRY("weight", "BOOL", "[4]", 0, 4) "}", bytes, 4, NULL);
    em_safetensors *f = em_safetensors_parse(b.p, b.n);
    assert_nonnull_em(f);
    em_scope_begin();
    assert_null(em_safetensors_tensor(f, 0));
    assert_error_contains("tensor \"weight\" (BOOL) holds the byte 2 at element 2: only 0 and 1 are booleans");
    em_clear_error();
    em_scope_end();
    em_safetensors_free(f);
    free(b.p);

    b = make("{" ENTRY("weight", "I16", "[2]", 0, 4) "," ENTRY("bias", "F32", "[1]", 4, 8) "}",
             (const unsigned char[8]){1, 0, 2, 0, 0, 0, 128, 63}, 8, NULL);
    f = em_safetensors_parse(b.p, b.n);
    assert_nonnull_em(f);
    assert_string_equal(em_safetensors_dtype(f, (size_t)em_safetensors_find(f, "weight")), "I16");
    em_scope_begin();
    assert_null(em_safetensors_tensor(f, (size_t)em_safetensors_find(f, "weight")));
    assert_error_contains("tensor \"weight\" has dtype I16, which ember has no tensor type for");
    em_clear_error();
    em_nn *lin = em_nn_linear(2, 1, true);
    assert_int_equal(em_nn_load_safetensors_from(lin, f, false), EM_EINVAL);
    assert_error_contains("Size mismatch for \"weight\": the file has [2], the layer [1, 2]");
    em_clear_error();
    em_nn_free(lin);
    em_scope_end();
    em_safetensors_free(f);
    free(b.p);
}

/* ---- a sweep over a real file ----------------------------------------------------------------------- */

/* Everything a program might do with a file it was given; any outcome but a crash is fine. */
static int use_file(const unsigned char *p, size_t n, size_t *accepted)
{
    em_clear_error();
    em_safetensors *f = em_safetensors_parse(p, n);
    if (f == NULL)
        return strlen(em_last_error()) > 0 ? 0 : 1; /* refused: with a message */
    (*accepted)++;
    em_scope_begin();
    for (size_t i = 0; i < em_safetensors_count(f); i++) {
        em_tensor *t = em_safetensors_tensor(f, i);
        int64_t shape[EM_MAX_DIMS];
        int nd = em_safetensors_shape(f, i, shape, EM_MAX_DIMS);
        if (t != NULL && em_tensor_dim(t) != nd)
            return 2;
        em_clear_error();
    }
    em_nn *net = EM_NN_SEQUENTIAL(em_nn_linear(3, 4, true), em_nn_batchnorm1d(4, NULL), em_nn_linear(4, 2, true));
    em_nn_load_safetensors_from(net, f, false);
    em_clear_error();
    em_nn_free(net);
    em_scope_end();
    em_safetensors_free(f);
    return 0;
}

static int sweep(const unsigned char *file, size_t n)
{
    size_t accepted = 0, tried = 0;
    unsigned char *copy = malloc(n);
    /* every truncation: each is refused (the data no longer reaches the end) */
    for (size_t len = 0; len < n; len++) {
        unsigned char *cut = malloc(len + 1); /* exactly len bytes readable under ASan */
        memcpy(cut, file, len);
        size_t before = accepted;
        if (use_file(cut, len, &accepted) != 0 || accepted != before) {
            fprintf(stderr, "truncation to %zu bytes was %s\n", len, accepted != before ? "accepted" : "mishandled");
            return 1;
        }
        free(cut);
        tried++;
    }
    /* every byte, three corruptions each */
    static const unsigned char flips[3] = {0x01, 0x80, 0xff};
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) {
            memcpy(copy, file, n);
            copy[i] ^= flips[k];
            if (use_file(copy, n, &accepted) != 0) {
                fprintf(stderr, "byte %zu ^ 0x%02x mishandled\n", i, flips[k]);
                return 1;
            }
            tried++;
        }
    free(copy);
    printf("sweep: %zu corrupted or truncated files, %zu accepted (data bytes changed), %zu refused\n", tried, accepted,
           tried - accepted);
    fflush(stdout);
    return 0;
}

static void test_hostile__truncations_and_corruptions_of_a_real_file(void **state)
{
    (void)state;
    em_manual_seed(3);
    em_nn *net = EM_NN_SEQUENTIAL(em_nn_linear(3, 4, true), em_nn_batchnorm1d(4, NULL), em_nn_linear(4, 2, true));
    char path[512];
    snprintf(path, sizeof path, "%s/f.safetensors", tmpdir);
    em_safetensors_meta meta = {"format", "pt"};
    assert_ok(em_nn_save_safetensors(net, path, &meta, 1));
    em_nn_free(net);
    FILE *f = fopen(path, "rb");
    unsigned char file[4096];
    size_t n = fread(file, 1, sizeof file, f);
    fclose(f);
    assert_true(n > 100 && n < sizeof file);
    /* the file itself is accepted whole */
    size_t accepted = 0;
    assert_int_equal(use_file(file, n, &accepted), 0);
    assert_int_equal(accepted, 1);

    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(sweep(file, n));
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the sweep %s %d", WIFEXITED(status) ? "failed with exit code" : "was killed by signal",
                 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hostile__each_class_refused_with_its_message, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_hostile__contents_refused_when_read, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_hostile__truncations_and_corruptions_of_a_real_file, helper_setup,
                                        helper_teardown),
    };
    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
