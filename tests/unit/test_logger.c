/* test_logger.c: the CSV logger and the trace as files - version directories claimed atomically,
 * names quoted as Python's csv module quotes them, a new column rewriting the file, and every
 * failure to write (a log_dir that is a file, a full disk) stopping fit with the path and errno's text. */
#define _XOPEN_SOURCE 700 /* mkdtemp, symlink, nftw */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

/* ---- a tiny module that logs what it is told ------------------------------------------------------- */

struct tiny {
    em_module base;
    em_nn *net;
    const char *names[3];  /* logged every batch with value batch_idx (NULL: none) */
    int64_t late_from;     /* names[2] is logged only from this batch on */
};

static em_tensor *tiny_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    struct tiny *s = (struct tiny *)m;
    for (int i = 0; i < 3; i++)
        if (s->names[i] != NULL && (i < 2 || batch_idx >= s->late_from))
            em_log(m, s->names[i], (double)batch_idx, 0);
    return em_mse_loss(em_nn_forward(s->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
}

static em_status tiny_optimizers(em_module *m, em_optim_setup *setup)
{
    em_params *ps = em_nn_parameters(((struct tiny *)m)->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.01});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static const em_module_ops tiny_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = tiny_step,
    .configure_optimizers = tiny_optimizers,
};

/* Fit `batches` batches of 2 rows, one epoch, logging every step. Returns fit's status; *t_out (when
 * not NULL) receives the trainer, which the caller frees. */
static em_status fit_tiny_gated(struct tiny *m, em_trainer_config cfg, int64_t batches, em_trainer **t_out,
                                int gate)
{
    em_manual_seed(0);
    m->base.ops = &tiny_ops;
    m->base.manual_optimization = false;
    m->net = em_nn_linear(1, 1, true);
    em_scope_begin();
    em_tensor *x = em_randn(EM_SHAPE(2 * batches, 1), NULL);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, x}, 2, &(em_loader_opts){.batch_size = 2});
    em_scope_end();
    cfg.max_epochs = 1;
    cfg.enable_progress_bar = false;
    cfg.log_every_n_steps = 1;
    em_trainer *t = em_trainer_new(&cfg);
    char c;
    if (gate >= 0 && read(gate, &c, 1) != 0) /* wait until the gate opens (closes) */
        return EM_ERROR;
    em_status s = em_trainer_fit(t, &m->base, l, NULL);
    if (t_out != NULL)
        *t_out = t;
    else
        em_trainer_free(t);
    em_loader_free(l);
    em_nn_free(m->net);
    return s;
}

static em_status fit_tiny(struct tiny *m, em_trainer_config cfg, int64_t batches, em_trainer **t_out)
{
    return fit_tiny_gated(m, cfg, batches, t_out, -1);
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* ---- tests -------------------------------------------------------------------------------------------------- */

/* 24 processes start a fit at the same moment under one default_root_dir: each claims its own
 * version_N (mkdir, retried on EEXIST), and each metrics.csv is whole. */
static void test_logger__concurrent_fits_claim_distinct_versions(void **state)
{
    (void)state;
    char dir[] = "/tmp/ember_logger_XXXXXX";
    assert_non_null(mkdtemp(dir));
    enum { N = 24 };
    pid_t pids[N];
    int gate[2];
    assert_int_equal(pipe(gate), 0); /* the children start together when the parent closes it */
    for (int i = 0; i < N; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) { /* everything is built before the gate: the fits start together */
            close(gate[1]);
            struct tiny m = {.names = {"loss_a"}};
            em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
            cfg.default_root_dir = dir;
            _exit(fit_tiny_gated(&m, cfg, 5, NULL, gate[0]) == EM_OK ? 0 : 1);
        }
    }
    close(gate[0]);
    close(gate[1]);
    for (int i = 0; i < N; i++) {
        int st = 0;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    for (int v = 0; v < N; v++) {
        char path[512];
        snprintf(path, sizeof path, "%s/lightning_logs/version_%d/metrics.csv", dir, v);
        const char *text = read_file(path);
        if (text == NULL)
            fail_msg("no %s", path);
        int lines = 0;
        for (const char *p = text; *p != '\0'; p++)
            lines += *p == '\n';
        assert_int_equal(lines, 1 + 5); /* the header, 5 step rows (no epoch-level metric) */
    }
    char extra[512];
    snprintf(extra, sizeof extra, "%s/lightning_logs/version_%d", dir, N);
    assert_int_not_equal(access(extra, F_OK), 0);
    assert_int_equal(nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS), 0);
}

/* Names with a comma, a quote and a line break are quoted as Python's csv.DictWriter quotes them. */
static void test_logger__names_are_quoted_as_rfc_4180(void **state)
{
    (void)state;
    char dir[] = "/tmp/ember_logger_XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct tiny m = {.names = {"a,b", "say \"hi\"", "two\nlines"}, .late_from = 0};
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.log_dir = dir;
    assert_ok(fit_tiny(&m, cfg, 2, NULL));
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.csv", dir);
    const char *text = read_file(path);
    assert_non_null(text);
    assert_string_equal(text, "\"a,b\",epoch,\"say \"\"hi\"\"\",step,\"two\nlines\"\n"
                              "0.0,0,0.0,0,0.0\n"
                              "1.0,0,1.0,1,1.0\n");
    assert_int_equal(nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS), 0);
}

/* A column that first appears at step 30 of 40: the file is rewritten under the new sorted header,
 * the earlier rows with an empty cell there, and nothing is lost (Lightning's _rewrite_with_new_header). */
static void test_logger__a_new_column_rewrites_the_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/ember_logger_XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct tiny m = {.names = {"b", NULL, "a,late"}, .late_from = 30};
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.log_dir = dir;
    assert_ok(fit_tiny(&m, cfg, 40, NULL));
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.csv", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[256];
    assert_non_null(fgets(line, sizeof line, f));
    assert_string_equal(line, "\"a,late\",b,epoch,step\n");
    for (int i = 0; i < 40; i++) {
        assert_non_null(fgets(line, sizeof line, f));
        char want[128];
        if (i < 30)
            snprintf(want, sizeof want, ",%d.0,0,%d\n", i, i);
        else
            snprintf(want, sizeof want, "%d.0,%d.0,0,%d\n", i, i, i);
        assert_string_equal(line, want);
    }
    assert_null(fgets(line, sizeof line, f));
    fclose(f);
    snprintf(path, sizeof path, "%s/metrics.csv.tmp", dir);
    assert_int_not_equal(access(path, F_OK), 0); /* the rewrite left no temporary file */
    assert_int_equal(nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS), 0);
}

/* log_dir is a file: fit fails before training, naming the path and errno's text. */
static void test_logger__log_dir_that_is_a_file_fails_fit(void **state)
{
    (void)state;
    char dir[] = "/tmp/ember_logger_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char file[512];
    snprintf(file, sizeof file, "%s/plain", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    struct tiny m = {.names = {"x"}};
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.log_dir = file;
    em_trainer *t = NULL;
    assert_int_equal(fit_tiny(&m, cfg, 2, &t), EM_EIO);
    assert_non_null(strstr(em_trainer_error(t), file));
    assert_non_null(strstr(em_trainer_error(t), "Not a directory"));
    em_trainer_free(t);
    em_clear_error();
    assert_int_equal(nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS), 0);
}

/* A full disk (metrics.csv is /dev/full; the trace is /dev/full): fit fails with ENOSPC's text. */
static void test_logger__a_full_disk_fails_fit(void **state)
{
    (void)state;
    if (access("/dev/full", W_OK) != 0) {
        printf("  (skipped: no writable /dev/full here)\n");
        skip();
    }
    char dir[] = "/tmp/ember_logger_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char link[512];
    snprintf(link, sizeof link, "%s/metrics.csv", dir);
    assert_int_equal(symlink("/dev/full", link), 0);
    struct tiny m = {.names = {"x"}};
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.log_dir = dir;
    em_trainer *t = NULL;
    assert_int_equal(fit_tiny(&m, cfg, 3, &t), EM_EIO);
    assert_non_null(strstr(em_trainer_error(t), "metrics.csv"));
    assert_non_null(strstr(em_trainer_error(t), "No space left on device"));
    assert_non_null(strstr(em_trainer_error(t), "batch 0"));
    em_trainer_free(t);
    em_clear_error();

    cfg = (em_trainer_config)EM_TRAINER_CONFIG_INIT;
    cfg.enable_csv_logger = false;
    cfg.trace_path = "/dev/full";
    assert_int_equal(fit_tiny(&m, cfg, 3, &t), EM_EIO);
    assert_non_null(strstr(em_trainer_error(t), "trace_path \"/dev/full\""));
    assert_non_null(strstr(em_trainer_error(t), "No space left on device"));
    em_trainer_free(t);
    em_clear_error();
    assert_int_equal(nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* first: the children fork before this process has started any libtorch thread pool */
        cmocka_unit_test_setup_teardown(test_logger__concurrent_fits_claim_distinct_versions, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_logger__names_are_quoted_as_rfc_4180, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_logger__a_new_column_rewrites_the_file, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_logger__log_dir_that_is_a_file_fails_fit, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_logger__a_full_disk_fails_fit, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
