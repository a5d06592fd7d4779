/* test_model_checkpoint.c: ModelCheckpoint (em_model_checkpoint) against the assertions of Lightning 2.2.5's
 * tests/tests_pytorch/checkpointing/test_model_checkpoint.py that apply to ember:
 *   test_model_checkpoint_format_checkpoint_name (and the doctest of format_checkpoint_name),
 *   test_invalid_top_k, test_none_monitor_top_k, test_invalid_every_n_epochs,
 *   test_invalid_every_n_train_steps, test_invalid_trigger_combination, test_model_checkpoint_mode_options,
 *   test_expand_home, test_model_checkpoint_every_n_epochs, test_ckpt_every_n_train_steps,
 *   test_model_checkpoint_save_last_none_monitor, test_model_checkpoint_topk_zero,
 *   test_model_checkpoint_topk_all, test_save_last_versioning, test_ckpt_version_after_rerun_new_trainer,
 *   test_ckpt_version_after_rerun_same_trainer, test_ckpt_version_counter_disabled_after_rerun_new_trainer,
 *   test_none_monitor_not_alternating, test_checkpointing_with_nan_as_first, test_current_score,
 *   test_current_score_when_nan, test_check_val_every_n_epochs_top_k_integration,
 *   test_val_check_interval_checkpoint_files, test_model_checkpoint_with_non_string_input (dirpath None),
 *   test_model_checkpoint_file_extension, test_model_checkpoint_save_last (CHECKPOINT_NAME_LAST
 *   "last-{epoch}"), test_model_checkpoint_train_time_interval (a real clock: an interval every batch
 *   passes);
 * test_model_checkpoint_save_last's "link" case and test_model_checkpoint_link_checkpoint's (relative links,
 * replaced; a directory is refused here), save_weights_only (dump_checkpoint(weights_only=True) and restore_optimizers_and_schedulers' refusal);
 * plus top-k removal over a sequence of scores, the missing-monitor warning and failure, and the sweep of
 * stale temporary files a killed save leaves.
 */
#define _GNU_SOURCE /* realpath, syscall */

#include "helpers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- symbolic links that fail, on demand --------------------------------------------------------------------
 * This program's own symlink() takes the place of libc's for libember too (an executable's definition comes
 * first in ELF symbol lookup): with symlink_fails set it fails as on a file system without links (EPERM),
 * else it makes the link through the system call. */
static bool symlink_fails;

int symlink(const char *target, const char *linkpath)
{
    if (symlink_fails) {
        errno = EPERM;
        return -1;
    }
    return (int)syscall(SYS_symlinkat, target, AT_FDCWD, linkpath);
}

/* ---- a BoringModel: Linear(1, 1), loss mean(net(x)), SGD; logs a value per epoch -------------------------- */

typedef enum log_where { LOG_NONE, LOG_VAL_EPOCH_END, LOG_TRAINING_STEP } log_where;

typedef struct boring {
    em_module base;
    em_nn *net;
    log_where where;
    const char *name;     /* the metric logged */
    const double *values; /* values[current_epoch] (NULL: (epoch + 1) / 10) */
    size_t n_values;
    const char *check_dir; /* on_train_epoch_start after the first: the directory holds only check_file */
    const char *check_file;
} boring;

static double value_now(boring *m)
{
    int64_t e = em_trainer_current_epoch(em_module_trainer(&m->base));
    if (m->values == NULL)
        return (double)(e + 1) / 10.0;
    assert_true(e >= 0 && (size_t)e < m->n_values);
    return m->values[e];
}

static em_tensor *boring_training_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    boring *m = (boring *)mb;
    if (m->where == LOG_TRAINING_STEP && em_log(mb, m->name, value_now(m), 0) != EM_OK)
        return NULL;
    return em_mean(em_nn_forward(m->net, b->t[0]));
}

static em_status boring_validation_step(em_module *mb, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    boring *m = (boring *)mb;
    em_tensor *loss = em_mean(em_nn_forward(m->net, b->t[0]));
    return loss == NULL ? em_last_status() : EM_OK;
}

static em_status boring_on_validation_epoch_end(em_module *mb)
{
    boring *m = (boring *)mb;
    if (m->where != LOG_VAL_EPOCH_END || em_trainer_sanity_checking(em_module_trainer(mb)))
        return EM_OK;
    return em_log(mb, m->name, value_now(m), 0);
}

static int count_entries(const char *dir, char names[][256], int max);

static em_status boring_on_train_epoch_start(em_module *mb)
{
    boring *m = (boring *)mb;
    if (m->check_dir != NULL && em_trainer_current_epoch(em_module_trainer(mb)) > 0) {
        char names[8][256];
        int n = count_entries(m->check_dir, names, 8);
        assert_int_equal(n, 1);
        assert_string_equal(names[0], m->check_file);
    }
    return EM_OK;
}

static em_status boring_configure_optimizers(em_module *mb, em_optim_setup *setup)
{
    boring *m = (boring *)mb;
    em_params *ps = em_nn_parameters(m->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static const em_module_ops boring_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = boring_training_step,
    .configure_optimizers = boring_configure_optimizers,
    .validation_step = boring_validation_step,
    .on_validation_epoch_end = boring_on_validation_epoch_end,
    .on_train_epoch_start = boring_on_train_epoch_start,
};

static void boring_init(boring *m, log_where where, const char *name, const double *values, size_t n)
{
    memset(m, 0, sizeof *m);
    m->base.ops = &boring_ops;
    m->net = em_nn_linear(1, 1, true);
    assert_nonnull_em(m->net);
    m->base.layers = m->net;
    m->where = where;
    m->name = name;
    m->values = values;
    m->n_values = n;
}

static void boring_free(boring *m)
{
    em_nn_free(m->net);
}

/* `batches` batches of one row each */
static em_loader *loader(int64_t batches) { return helper_ones_loader(batches, 1); }

static em_trainer_config config(int64_t max_epochs) { return helper_quiet_config(max_epochs); }

/* Fit m with the callback; returns the status (the trainer is freed, the callback stays valid while
 * *t_out is not freed: pass t_out to keep it). */
static em_status fit(boring *m, em_trainer_config cfg, em_callback *cb, int64_t train_batches, int64_t val_batches,
                     em_trainer **t_out)
{
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    assert_ok(em_trainer_add_callback(t, cb));
    em_loader *train = loader(train_batches), *val = val_batches > 0 ? loader(val_batches) : NULL;
    em_status s = em_trainer_fit(t, &m->base, train, val);
    if (s != EM_OK)
        fprintf(stderr, "fit: %s\n", em_trainer_error(t));
    em_loader_free(train);
    em_loader_free(val);
    if (t_out != NULL)
        *t_out = t;
    else
        em_trainer_free(t);
    return s;
}

/* ---- directories ------------------------------------------------------------------------------------------- */

static char *make_tmpdir(void)
{
    char tmpl[] = "/tmp/ember-mckpt-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    char *copy = malloc(strlen(d) + 1);
    assert_non_null(copy);
    strcpy(copy, d);
    return copy;
}

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            struct stat st;
            if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
                remove_tree(p);
            else
                unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

/* The names in `dir`, sorted. */
static int count_entries(const char *dir, char names[][256], int max)
{
    int n = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (n < max)
            snprintf(names[n], 256, "%s", e->d_name);
        n++;
    }
    closedir(d);
    qsort(names, (size_t)(n < max ? n : max), 256, cmp_names);
    return n;
}

/* The directory holds exactly the `n` names given (any order). */
static void assert_dir(const char *dir, const char *const *expected, int n)
{
    char names[64][256];
    int got = count_entries(dir, names, 64);
    char want[64][256];
    for (int i = 0; i < n; i++)
        snprintf(want[i], 256, "%s", expected[i]);
    qsort(want, (size_t)n, 256, cmp_names);
    if (got != n) {
        for (int i = 0; i < got && i < 64; i++)
            fprintf(stderr, "  found %s\n", names[i]);
    }
    assert_int_equal(got, n);
    for (int i = 0; i < n; i++)
        assert_string_equal(names[i], want[i]);
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s != NULL ? s + 1 : path;
}

static em_model_checkpoint_opts opts_in(const char *dir)
{
    em_model_checkpoint_opts o = EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.dirpath = dir;
    return o;
}

/* ---- names ----------------------------------------------------------------------------------------------- */

static void assert_name(em_callback *cb, const char *filename, const char *const *names, const double *values,
                        size_t n, int64_t ver, const char *want)
{
    char buf[512];
    int64_t len = em_model_checkpoint_format_name(cb, names, values, n, filename, ver, buf, sizeof buf);
    if (len < 0)
        fprintf(stderr, "%s\n", em_last_error());
    assert_true(len >= 0);
    assert_string_equal(buf, want);
    assert_int_equal(len, (int64_t)strlen(want));
}

static void test_format_checkpoint_name(void **state)
{
    (void)state;
    em_model_checkpoint_opts o = EM_MODEL_CHECKPOINT_OPTS_INIT; /* no dirpath: bare names */
    em_callback *cb = em_model_checkpoint(&o);
    assert_nonnull_em(cb);
    /* empty filename */
    assert_name(cb, NULL, (const char *[]){"epoch", "step"}, (double[]){3, 2}, 2, 0, "epoch=3-step=2.ckpt");
    /* no groups */
    assert_name(cb, "ckpt", NULL, NULL, 0, 0, "ckpt.ckpt");
    assert_name(cb, "{epoch:03d}-{acc}", (const char *[]){"epoch", "acc"}, (double[]){3, 0.03}, 2, 0,
                "epoch=003-acc=0.03.ckpt");
    /* one metric name is a substring of another */
    assert_name(cb, "{epoch:03d}-{epoch_test:03d}", (const char *[]){"epoch", "epoch_test"}, (double[]){3, 3}, 2, 0,
                "epoch=003-epoch_test=003.ckpt");
    assert_name(cb, "{epoch},{acc:.5f}", (const char *[]){"epoch", "acc"}, (double[]){3, 0.03}, 2, 0,
                "epoch=3,acc=0.03000.ckpt");
    /* the doctest */
    assert_name(cb, "{epoch}", (const char *[]){"epoch"}, (double[]){0}, 1, 0, "epoch=0.ckpt");
    assert_name(cb, "{epoch:03d}", (const char *[]){"epoch"}, (double[]){5}, 1, 0, "epoch=005.ckpt");
    assert_name(cb, "{epoch}-{val_loss:.2f}", (const char *[]){"epoch", "val_loss"}, (double[]){2, 0.123456}, 2, 0,
                "epoch=2-val_loss=0.12.ckpt");
    assert_name(cb, "{epoch:d}", (const char *[]){"epoch", "val_loss"}, (double[]){2, 0.12}, 2, 0, "epoch=2.ckpt");
    assert_name(cb, "{missing:d}", NULL, NULL, 0, 0, "missing=0.ckpt");
    assert_name(cb, "{step}", (const char *[]){"step"}, (double[]){0}, 1, 0, "step=0.ckpt");
    /* using slashes */
    assert_name(cb, "{epoch}_{val/loss:.5f}", (const char *[]){"epoch", "val/loss"}, (double[]){4, 0.03}, 2, 0,
                "epoch=4_val/loss=0.03000.ckpt");
    /* with a version */
    assert_name(cb, "name", NULL, NULL, 0, 3, "name-v3.ckpt");
    /* Python's format specs */
    assert_name(cb, "{a:+.1e}|{b:>8.3f}|{c:<6d}|{d:^7.1%}|{e:g}|{f}", (const char *[]){"a", "b", "c", "d", "e", "f"},
                (double[]){12345.678, -1.5, 7, 0.25, 1e-7, 1e16}, 6, 0,
                "a=+1.2e+04|b=  -1.500|c=7     |d= 25.0% |e=1e-07|f=1e+16.ckpt");
    /* a float cannot take 'd' */
    char buf[64];
    assert_int_equal(em_model_checkpoint_format_name(cb, (const char *[]){"x"}, (double[]){0.5}, 1, "{x:d}", 0, buf,
                                                     sizeof buf), -1);
    assert_error_contains("Unknown format code 'd'");
    em_clear_error();
    em_callback_free(cb);

    /* auto_insert_metric_name = False */
    o.auto_insert_metric_name = false;
    cb = em_model_checkpoint(&o);
    assert_nonnull_em(cb);
    assert_name(cb, "epoch={epoch:03d}-val_acc={val/acc}", (const char *[]){"epoch", "val/acc"}, (double[]){3, 0.03},
                2, 0, "epoch=003-val_acc=0.03.ckpt");
    assert_name(cb, "mAP@0.50={val/mAP@0.50:.4f}", (const char *[]){"val/mAP@0.50"}, (double[]){0.2}, 1, 0,
                "mAP@0.50=0.2000.ckpt");
    em_callback_free(cb);

    /* a dirpath is joined, made absolute; "~" expanded; "./~" is a folder named ~ */
    char cwd[4096], want[4200];
    assert_non_null(getcwd(cwd, sizeof cwd));
    o = (em_model_checkpoint_opts)EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.dirpath = ".";
    cb = em_model_checkpoint(&o);
    assert_nonnull_em(cb);
    snprintf(want, sizeof want, "%s/epoch=3-step=4.ckpt", cwd);
    assert_name(cb, NULL, (const char *[]){"epoch", "step"}, (double[]){3, 4}, 2, 0, want);
    em_callback_free(cb);
    o.dirpath = "./~/checkpoints";
    cb = em_model_checkpoint(&o);
    snprintf(want, sizeof want, "%s/~/checkpoints", cwd);
    assert_string_equal(em_model_checkpoint_dirpath(cb), want);
    em_callback_free(cb);
    const char *home = getenv("HOME");
    if (home != NULL && home[0] == '/' && strcmp(home, "/") != 0) {
        o.dirpath = "~/checkpoints";
        cb = em_model_checkpoint(&o);
        snprintf(want, sizeof want, "%s/checkpoints", home);
        assert_string_equal(em_model_checkpoint_dirpath(cb), want);
        em_callback_free(cb);
    }
    o.dirpath = "/a/b/../c/./d/";
    cb = em_model_checkpoint(&o);
    assert_string_equal(em_model_checkpoint_dirpath(cb), "/a/c/d");
    em_callback_free(cb);

    /* a file extension of one's own (test_model_checkpoint_file_extension's .tpkc) */
    o = (em_model_checkpoint_opts)EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.file_extension = ".tpkc";
    cb = em_model_checkpoint(&o);
    assert_name(cb, NULL, (const char *[]){"epoch", "step"}, (double[]){0, 1}, 2, 0, "epoch=0-step=1.tpkc");
    em_callback_free(cb);
}

/* ---- the arguments ------------------------------------------------------------------------------------------- */

static void expect_refused(em_model_checkpoint_opts o, const char *needle)
{
    em_clear_error();
    em_callback *cb = em_model_checkpoint(&o);
    assert_null(cb);
    assert_error_contains(needle);
    em_clear_error();
}

static void expect_accepted(em_model_checkpoint_opts o)
{
    em_callback *cb = em_model_checkpoint(&o);
    assert_nonnull_em(cb);
    em_callback_free(cb);
}

static void test_invalid_arguments(void **state)
{
    (void)state;
    em_model_checkpoint_opts o = EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.save_top_k = -3;
    expect_refused(o, "Invalid value for save_top_k=-3. Must be >= -1");

    o = (em_model_checkpoint_opts)EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.save_top_k = 3;
    expect_refused(o, "ModelCheckpoint(save_top_k=3, monitor=None) is not a valid configuration. No quantity for "
                      "top_k to track.");
    for (int64_t k = -1; k <= 1; k++) {
        o.save_top_k = k;
        expect_accepted(o);
    }

    o = (em_model_checkpoint_opts)EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.every_n_epochs = -3;
    expect_refused(o, "Invalid value for every_n_epochs=-3. Must be >= 0");
    for (int64_t n = 0; n <= 2; n++) {
        o.every_n_epochs = n;
        expect_accepted(o);
    }
    o = (em_model_checkpoint_opts)EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.every_n_train_steps = -3;
    expect_refused(o, "Invalid value for every_n_train_steps=-3. Must be >= 0");
    o.every_n_train_steps = 0;
    expect_accepted(o);
    o.every_n_train_steps = 1;
    expect_accepted(o);

    o = (em_model_checkpoint_opts)EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.every_n_train_steps = 1;
    o.every_n_epochs = 2;
    expect_refused(o, "Combination of parameters every_n_train_steps=1, every_n_epochs=2 and train_time_interval=None "
                      "should be mutually exclusive.");
    o = (em_model_checkpoint_opts)EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.train_time_interval = 60;
    o.every_n_epochs = 2;
    expect_refused(o, "Combination of parameters every_n_train_steps");
    o = (em_model_checkpoint_opts)EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.train_time_interval = 60;
    o.every_n_train_steps = 2;
    expect_refused(o, "Combination of parameters every_n_train_steps");
    o = (em_model_checkpoint_opts)EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.every_n_train_steps = 0;
    o.every_n_epochs = 3;
    expect_accepted(o);
    o.every_n_train_steps = 4;
    o.every_n_epochs = 0;
    expect_accepted(o);
    o.every_n_train_steps = 0;
    o.every_n_epochs = 0;
    o.train_time_interval = 60;
    expect_accepted(o);

    o = (em_model_checkpoint_opts)EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.mode = "unknown_option";
    expect_refused(o, "`mode` can be min, max but got unknown_option");
    o = (em_model_checkpoint_opts)EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.version = 0;
    expect_refused(o, "EM_MODEL_CHECKPOINT_OPTS_INIT");
    o = (em_model_checkpoint_opts)EM_MODEL_CHECKPOINT_OPTS_INIT;
    o.filename = "a-{}";
    expect_refused(o, "a field with no name");
    expect_refused((em_model_checkpoint_opts){0}, "EM_MODEL_CHECKPOINT_OPTS_INIT");
    assert_null(em_model_checkpoint(NULL));
    em_clear_error();
    /* getters on something else */
    assert_null(em_model_checkpoint_best_model_path(NULL));
    assert_int_equal(em_model_checkpoint_num_best_k(NULL), 0);
    assert_true(isnan(em_model_checkpoint_kth_value(NULL)));
}

/* ---- when it saves ----------------------------------------------------------------------------------------- */

static void test_every_n_epochs(void **state)
{
    (void)state;
    for (int64_t every = 0; every < 4; every++) {
        char *dir = make_tmpdir();
        boring m;
        boring_init(&m, LOG_NONE, NULL, NULL, 0);
        em_model_checkpoint_opts o = opts_in(dir);
        o.filename = "{epoch}";
        o.save_top_k = -1;
        o.every_n_epochs = every;
        em_callback *cb = em_model_checkpoint(&o);
        assert_nonnull_em(cb);
        assert_ok(fit(&m, config(5), cb, 1, 1, NULL));
        const char *want[5];
        char names[5][32];
        int n = 0;
        for (int e = 0; every > 0 && e < 5; e++)
            if ((e + 1) % every == 0) {
                snprintf(names[n], sizeof names[n], "epoch=%d.ckpt", e);
                want[n] = names[n];
                n++;
            }
        assert_dir(dir, want, n);
        boring_free(&m);
        remove_tree(dir);
        free(dir);
    }
}

static void test_every_n_train_steps(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts o = opts_in(dir);
    o.filename = "{step}";
    o.every_n_epochs = 0;
    o.every_n_train_steps = 16;
    o.save_top_k = -1;
    em_callback *cb = em_model_checkpoint(&o);
    assert_nonnull_em(cb);
    assert_ok(fit(&m, config(2), cb, 64, 0, NULL));
    const char *want[] = {"step=16.ckpt", "step=32.ckpt", "step=48.ckpt", "step=64.ckpt",
                          "step=80.ckpt", "step=96.ckpt", "step=112.ckpt", "step=128.ckpt"};
    assert_dir(dir, want, 8);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

/* test_model_checkpoint_train_time_interval with a real clock: an interval every batch outlasts */
static void test_train_time_interval(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts o = opts_in(dir);
    o.filename = "{epoch}-{step}";
    o.train_time_interval = 1e-9;
    o.save_top_k = -1;
    em_callback *cb = em_model_checkpoint(&o);
    assert_nonnull_em(cb);
    assert_ok(fit(&m, config(2), cb, 3, 0, NULL));
    const char *want[] = {"epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt",
                          "epoch=1-step=4.ckpt", "epoch=1-step=5.ckpt", "epoch=1-step=6.ckpt"};
    assert_dir(dir, want, 6);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

static void test_save_last_none_monitor(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts o = opts_in(dir);
    o.save_top_k = -1;
    o.save_last = true;
    em_callback *cb = em_model_checkpoint(&o);
    em_trainer *t = NULL;
    assert_ok(fit(&m, config(2), cb, 10, 10, &t));
    assert_string_equal(base_name(em_model_checkpoint_best_model_path(cb)), "epoch=1-step=20.ckpt");
    char want_last[4200];
    snprintf(want_last, sizeof want_last, "%s/last.ckpt", dir);
    assert_string_equal(em_model_checkpoint_last_model_path(cb), want_last);
    assert_false(em_model_checkpoint_best_model_score(cb, NULL));
    assert_int_equal(em_model_checkpoint_num_best_k(cb), 0);
    assert_string_equal(em_model_checkpoint_kth_best_model_path(cb), "");
    const char *want[] = {"epoch=0-step=10.ckpt", "epoch=1-step=20.ckpt", "last.ckpt"};
    assert_dir(dir, want, 3);
    em_trainer_free(t);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

/* test_model_checkpoint_save_last (save_last True and "link") with CHECKPOINT_NAME_LAST = "last-{epoch}": one
 * last file at a time; with "link" it is a relative symbolic link to the newest checkpoint saved. */
static void test_save_last_template(void **state)
{
    (void)state;
    for (int link = 0; link < 2; link++) {
        char *dir = make_tmpdir();
        boring m;
        boring_init(&m, LOG_TRAINING_STEP, "early_stop_on", NULL, 0);
        em_model_checkpoint_opts o = opts_in(dir);
        o.monitor = "early_stop_on";
        o.save_top_k = -1;
        o.save_last = true;
        o.save_last_link = link;
        o.last_name = "last-{epoch}";
        em_callback *cb = em_model_checkpoint(&o);
        em_trainer *t = NULL;
        assert_ok(fit(&m, config(3), cb, 10, 10, &t));
        char want_last[4200], newest[4200];
        snprintf(want_last, sizeof want_last, "%s/last-epoch=2.ckpt", dir);
        snprintf(newest, sizeof newest, "%s/epoch=2-step=30.ckpt", dir);
        assert_string_equal(em_model_checkpoint_last_model_path(cb), want_last);
        const char *want[] = {"epoch=0-step=10.ckpt", "epoch=1-step=20.ckpt", "epoch=2-step=30.ckpt",
                              "last-epoch=2.ckpt"};
        assert_dir(dir, want, 4);
        struct stat st;
        assert_int_equal(lstat(want_last, &st), 0);
        if (link) {
            assert_true(S_ISLNK(st.st_mode));
            char target[4200];
            ssize_t n = readlink(want_last, target, sizeof target - 1);
            assert_true(n > 0);
            target[n] = '\0';
            assert_string_equal(target, "epoch=2-step=30.ckpt"); /* relative: not os.path.isabs */
            char *real = realpath(want_last, NULL), *real_newest = realpath(newest, NULL);
            assert_non_null(real);
            assert_string_equal(real, real_newest);
            free(real);
            free(real_newest);
        } else {
            assert_true(S_ISREG(st.st_mode));
        }
        em_trainer_free(t);
        boring_free(&m);
        remove_tree(dir);
        free(dir);
    }
}

/* save_last="link": a link made before any checkpoint is a checkpoint of its own (save_top_k 0: always); a
 * link in a subdirectory points back up ("../"); "last.ckpt" that is a directory fails the fit, naming it,
 * and is left alone (Lightning deletes it). */
static void test_save_last_link(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    char last[4300];
    snprintf(last, sizeof last, "%s/last.ckpt", dir);
    struct stat st;

    /* save_top_k 0: nothing to link to, last.ckpt is a file */
    em_model_checkpoint_opts o = opts_in(dir);
    o.save_top_k = 0;
    o.save_last = true;
    o.save_last_link = true;
    assert_ok(fit(&m, config(1), em_model_checkpoint(&o), 4, 0, NULL));
    assert_int_equal(lstat(last, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    remove_tree(dir);
    free(dir);

    /* the last name in a subdirectory: "sub/last.ckpt" -> "../epoch=1-step=8.ckpt"; a second fit into the same
     * directory replaces the link (no version counter: the same name) */
    dir = make_tmpdir();
    snprintf(last, sizeof last, "%s/sub/last.ckpt", dir);
    o = opts_in(dir);
    o.save_last = true;
    o.save_last_link = true;
    o.last_name = "sub/last";
    o.enable_version_counter = false;
    assert_ok(fit(&m, config(2), em_model_checkpoint(&o), 4, 0, NULL));
    char target[4300];
    ssize_t n = readlink(last, target, sizeof target - 1);
    assert_true(n > 0);
    target[n] = '\0';
    assert_string_equal(target, "../epoch=1-step=8.ckpt");
    em_safetensors *f = em_safetensors_open(last); /* through the link: a whole checkpoint */
    assert_nonnull_em(f);
    em_safetensors_free(f);
    assert_ok(fit(&m, config(1), em_model_checkpoint(&o), 4, 0, NULL));
    n = readlink(last, target, sizeof target - 1);
    assert_true(n > 0);
    target[n] = '\0';
    assert_string_equal(target, "../epoch=0-step=4.ckpt");
    remove_tree(dir);
    free(dir);

    /* a directory where the link goes */
    dir = make_tmpdir();
    snprintf(last, sizeof last, "%s/last.ckpt", dir);
    assert_int_equal(mkdir(last, 0755), 0);
    o = opts_in(dir);
    o.save_last = true;
    o.save_last_link = true;
    o.enable_version_counter = false;
    em_trainer *t = NULL;
    assert_int_equal(fit(&m, config(1), em_model_checkpoint(&o), 4, 0, &t), EM_EIO);
    assert_non_null(strstr(em_trainer_error(t), "last.ckpt is a directory"));
    em_trainer_free(t);
    em_clear_error();
    assert_int_equal(lstat(last, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

static void test_topk_zero(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts o = opts_in(dir);
    o.save_top_k = 0;
    o.save_last = true;
    em_callback *cb = em_model_checkpoint(&o);
    em_trainer *t = NULL;
    assert_ok(fit(&m, config(2), cb, 4, 2, &t));
    assert_string_equal(em_model_checkpoint_best_model_path(cb), "");
    assert_false(em_model_checkpoint_best_model_score(cb, NULL));
    assert_int_equal(em_model_checkpoint_num_best_k(cb), 0);
    assert_string_equal(em_model_checkpoint_kth_best_model_path(cb), "");
    const char *want[] = {"last.ckpt"};
    assert_dir(dir, want, 1);
    em_trainer_free(t);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

static void test_topk_all(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts o = opts_in(dir);
    o.filename = "{epoch}";
    o.monitor = "epoch";
    o.mode = "max";
    o.save_top_k = -1;
    em_callback *cb = em_model_checkpoint(&o);
    em_trainer *t = NULL;
    assert_ok(fit(&m, config(3), cb, 4, 2, &t));
    assert_string_equal(base_name(em_model_checkpoint_best_model_path(cb)), "epoch=2.ckpt");
    double score = 0;
    assert_true(em_model_checkpoint_best_model_score(cb, &score));
    assert_true(score == 2.0);
    assert_int_equal(em_model_checkpoint_num_best_k(cb), 3);
    for (size_t i = 0; i < 3; i++) {
        char want[32];
        snprintf(want, sizeof want, "epoch=%zu.ckpt", i);
        assert_string_equal(base_name(em_model_checkpoint_best_k(cb, i, NULL)), want);
    }
    assert_string_equal(base_name(em_model_checkpoint_kth_best_model_path(cb)), "epoch=0.ckpt");
    const char *want[] = {"epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt"};
    assert_dir(dir, want, 3);
    em_trainer_free(t);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

/* the file that drops out of the top k is deleted; kth and best follow */
static void test_topk_removal(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    static const double scores[] = {5, 3, 4, 1, 2};
    boring m;
    boring_init(&m, LOG_VAL_EPOCH_END, "val_loss", scores, 5);
    em_model_checkpoint_opts o = opts_in(dir);
    o.filename = "{epoch}";
    o.monitor = "val_loss";
    o.save_top_k = 2;
    em_callback *cb = em_model_checkpoint(&o);
    em_trainer *t = NULL;
    assert_ok(fit(&m, config(5), cb, 2, 1, &t));
    const char *want[] = {"epoch=3.ckpt", "epoch=4.ckpt"};
    assert_dir(dir, want, 2);
    assert_string_equal(base_name(em_model_checkpoint_best_model_path(cb)), "epoch=3.ckpt");
    assert_string_equal(base_name(em_model_checkpoint_kth_best_model_path(cb)), "epoch=4.ckpt");
    assert_true(em_model_checkpoint_kth_value(cb) == 2.0);
    double score = 0;
    assert_true(em_model_checkpoint_best_model_score(cb, &score));
    assert_true(score == 1.0);
    assert_true(em_model_checkpoint_current_score(cb, &score));
    assert_true(score == 2.0);
    em_trainer_free(t);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

static void test_save_last_versioning(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    for (int round = 0; round < 2; round++) {
        boring m;
        boring_init(&m, LOG_NONE, NULL, NULL, 0);
        em_model_checkpoint_opts o = opts_in(dir);
        o.save_top_k = 0;
        o.save_last = true;
        assert_ok(fit(&m, config(2), em_model_checkpoint(&o), 1, 0, NULL));
        boring_free(&m);
    }
    const char *want[] = {"last.ckpt", "last-v1.ckpt"};
    assert_dir(dir, want, 2);
    remove_tree(dir);
    free(dir);
}

static void test_version_after_rerun_new_trainer(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    for (int round = 0; round < 2; round++) {
        boring m;
        boring_init(&m, LOG_NONE, NULL, NULL, 0);
        em_model_checkpoint_opts o = opts_in(dir);
        o.save_top_k = -1;
        o.monitor = "epoch";
        o.filename = "{epoch}";
        em_callback *cb = em_model_checkpoint(&o);
        em_trainer *t = NULL;
        assert_ok(fit(&m, config(2), cb, 1, 1, &t));
        assert_int_equal(em_model_checkpoint_num_best_k(cb), 2);
        assert_string_equal(base_name(em_model_checkpoint_best_k(cb, 0, NULL)), round ? "epoch=0-v1.ckpt" : "epoch=0.ckpt");
        assert_string_equal(base_name(em_model_checkpoint_best_k(cb, 1, NULL)), round ? "epoch=1-v1.ckpt" : "epoch=1.ckpt");
        em_trainer_free(t);
        boring_free(&m);
    }
    const char *want[] = {"epoch=0.ckpt", "epoch=1.ckpt", "epoch=0-v1.ckpt", "epoch=1-v1.ckpt"};
    assert_dir(dir, want, 4);
    remove_tree(dir);
    free(dir);
}

/* test_ckpt_version_after_rerun_same_trainer (STARTING_VERSION 1 here): the same callback fits twice */
static void test_version_after_rerun_same_trainer(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts o = opts_in(dir);
    o.save_top_k = -1;
    o.monitor = "epoch";
    o.filename = "test";
    em_callback *cb = em_model_checkpoint(&o);
    em_trainer_config cfg = config(2);
    em_trainer *t = em_trainer_new(&cfg);
    assert_ok(em_trainer_add_callback(t, cb));
    em_loader *train = loader(1), *val = loader(1);
    assert_ok(em_trainer_fit(t, &m.base, train, val));
    em_trainer_free(t);
    /* a new trainer cannot take the same callback; Lightning refits the same trainer with max_epochs 4,
     * which here is a second fit of 4 epochs with its counters from 0: 4 more files */
    cfg = config(4);
    t = em_trainer_new(&cfg);
    em_callback *cb2 = em_model_checkpoint(&o);
    assert_ok(em_trainer_add_callback(t, cb2));
    assert_ok(em_trainer_fit(t, &m.base, train, val));
    const char *want[] = {"test.ckpt", "test-v1.ckpt", "test-v2.ckpt", "test-v3.ckpt", "test-v4.ckpt", "test-v5.ckpt"};
    assert_dir(dir, want, 6);
    em_trainer_free(t);
    em_loader_free(train);
    em_loader_free(val);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

static void test_version_counter_disabled(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    for (int round = 0; round < 2; round++) {
        boring m;
        boring_init(&m, LOG_NONE, NULL, NULL, 0);
        em_model_checkpoint_opts o = opts_in(dir);
        o.save_top_k = -1;
        o.save_last = true;
        o.monitor = "epoch";
        o.filename = "{epoch}";
        o.enable_version_counter = false;
        em_callback *cb = em_model_checkpoint(&o);
        em_trainer *t = NULL;
        assert_ok(fit(&m, config(2), cb, 1, 1, &t));
        assert_string_equal(base_name(em_model_checkpoint_best_k(cb, 0, NULL)), "epoch=0.ckpt");
        assert_string_equal(base_name(em_model_checkpoint_best_k(cb, 1, NULL)), "epoch=1.ckpt");
        assert_string_equal(base_name(em_model_checkpoint_last_model_path(cb)), "last.ckpt");
        em_trainer_free(t);
        boring_free(&m);
    }
    const char *want[] = {"epoch=0.ckpt", "epoch=1.ckpt", "last.ckpt"};
    assert_dir(dir, want, 3);
    remove_tree(dir);
    free(dir);
}

static void test_none_monitor_not_alternating(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    m.check_dir = dir;
    m.check_file = "model.ckpt";
    em_model_checkpoint_opts o = opts_in(dir);
    o.save_top_k = 1;
    o.filename = "model";
    assert_ok(fit(&m, config(3), em_model_checkpoint(&o), 1, 0, NULL));
    const char *want[] = {"model.ckpt"};
    assert_dir(dir, want, 1);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

static void test_nan_as_first(void **state)
{
    (void)state;
    for (int max = 0; max < 2; max++) {
        char *dir = make_tmpdir();
        double values[4] = {NAN, 8, 7, 5};
        if (max) {
            values[1] = 5;
            values[3] = 8;
        }
        boring m;
        boring_init(&m, LOG_VAL_EPOCH_END, "abc", values, 4);
        em_model_checkpoint_opts o = opts_in(dir);
        o.monitor = "abc";
        o.mode = max ? "max" : "min";
        o.filename = "{epoch}";
        em_callback *cb = em_model_checkpoint(&o);
        em_trainer *t = NULL;
        assert_ok(fit(&m, config(4), cb, 1, 1, &t));
        double score = 0;
        assert_true(em_model_checkpoint_best_model_score(cb, &score));
        assert_true(score == (max ? 8.0 : 5.0));
        const char *want[] = {"epoch=3.ckpt"}; /* every epoch saved, each replacing the one before */
        assert_dir(dir, want, 1);
        em_trainer_free(t);
        boring_free(&m);
        remove_tree(dir);
        free(dir);
    }
}

static void test_current_score(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    boring m;
    boring_init(&m, LOG_TRAINING_STEP, "foo", NULL, 0);
    em_model_checkpoint_opts o = opts_in(dir);
    o.monitor = "foo";
    o.save_top_k = 3;
    em_callback *cb = em_model_checkpoint(&o);
    em_trainer *t = NULL;
    assert_ok(fit(&m, config(3), cb, 1, 1, &t));
    double score = 0;
    assert_true(em_model_checkpoint_current_score(cb, &score));
    assert_true(score == (double)0.3f);
    assert_int_equal(em_model_checkpoint_num_best_k(cb), 3);
    for (size_t i = 0; i < 3; i++) {
        em_model_checkpoint_best_k(cb, i, &score);
        assert_true(score == (double)(float)((double)(i + 1) / 10.0));
    }
    em_trainer_free(t);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

static void test_current_score_when_nan(void **state)
{
    (void)state;
    for (int max = 0; max < 2; max++) {
        char *dir = make_tmpdir();
        static const double nan1[] = {NAN};
        boring m;
        boring_init(&m, LOG_TRAINING_STEP, "foo", nan1, 1);
        em_model_checkpoint_opts o = opts_in(dir);
        o.monitor = "foo";
        o.mode = max ? "max" : "min";
        em_callback *cb = em_model_checkpoint(&o);
        em_trainer *t = NULL;
        assert_ok(fit(&m, config(1), cb, 1, 1, &t));
        double best = 0, current = 0;
        assert_true(em_model_checkpoint_best_model_score(cb, &best));
        assert_true(em_model_checkpoint_current_score(cb, &current));
        assert_true(best == (max ? -INFINITY : INFINITY));
        assert_true(current == best);
        em_trainer_free(t);
        boring_free(&m);
        remove_tree(dir);
        free(dir);
    }
}

static void test_check_val_every_n_epochs_top_k(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts o = opts_in(dir);
    o.monitor = "epoch";
    o.save_top_k = -1;
    o.filename = "{epoch}";
    em_trainer_config cfg = config(5);
    cfg.num_sanity_val_steps = 0;
    cfg.check_val_every_n_epoch = 2;
    assert_ok(fit(&m, cfg, em_model_checkpoint(&o), 1, 1, NULL));
    const char *want[] = {"epoch=1.ckpt", "epoch=3.ckpt"};
    assert_dir(dir, want, 2);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

static void test_val_check_interval_files(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    static const double acc[] = {1.23};
    boring m;
    boring_init(&m, LOG_VAL_EPOCH_END, "val_acc", acc, 1);
    em_model_checkpoint_opts o = opts_in(dir);
    o.monitor = "val_acc";
    o.mode = "max";
    o.save_top_k = -1;
    em_trainer_config cfg = config(1);
    cfg.val_check_interval = EM_FRACTION(0.2);
    assert_ok(fit(&m, cfg, em_model_checkpoint(&o), 10, 2, NULL));
    const char *want[] = {"epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt", "epoch=0-step=8.ckpt",
                          "epoch=0-step=10.ckpt"};
    assert_dir(dir, want, 5);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

/* dirpath None: default_root_dir/checkpoints without a logger, the logger's log_dir/checkpoints with one */
static void test_default_dirpath(void **state)
{
    (void)state;
    for (int with_logger = 0; with_logger < 2; with_logger++) {
        char *root = make_tmpdir();
        boring m;
        boring_init(&m, LOG_NONE, NULL, NULL, 0);
        em_model_checkpoint_opts o = EM_MODEL_CHECKPOINT_OPTS_INIT;
        o.filename = "{epoch}";
        o.save_top_k = -1;
        em_callback *cb = em_model_checkpoint(&o);
        assert_null(em_model_checkpoint_dirpath(cb));
        em_trainer_config cfg = config(2);
        cfg.default_root_dir = root;
        cfg.enable_csv_logger = with_logger;
        em_trainer *t = NULL;
        assert_ok(fit(&m, cfg, cb, 2, 1, &t));
        char want[4300];
        snprintf(want, sizeof want, "%s%s/checkpoints", root, with_logger ? "/lightning_logs/version_0" : "");
        assert_string_equal(em_model_checkpoint_dirpath(cb), want);
        const char *files[] = {"epoch=0.ckpt", "epoch=1.ckpt"};
        assert_dir(want, files, 2);
        em_trainer_free(t);
        boring_free(&m);
        remove_tree(root);
        free(root);
    }
}

/* ---- the monitor is missing ------------------------------------------------------------------------------- */

static void test_missing_monitor(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    helper_log cap = {{0}};
    em_set_log_handler(helper_log_capture, &cap);
    /* no validation: warned (once), nothing saved */
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts o = opts_in(dir);
    o.monitor = "val_loss";
    assert_ok(fit(&m, config(2), em_model_checkpoint(&o), 2, 0, NULL));
    assert_non_null(strstr(cap.text, "`ModelCheckpoint(monitor='val_loss')` could not find the monitored key in the "
                                     "returned metrics: ['epoch', 'step']. HINT: Did you call `log('val_loss', "
                                     "value)` in the `LightningModule`?"));
    assert_null(strstr(strstr(cap.text, "could not find") + 1, "could not find"));
    assert_dir(dir, NULL, 0);
    /* after a validation run: fit fails with the message */
    em_trainer *t = NULL;
    assert_int_not_equal(fit(&m, config(2), em_model_checkpoint(&o), 2, 1, &t), EM_OK);
    assert_non_null(strstr(em_trainer_error(t), "could not find the monitored key"));
    em_trainer_free(t);
    em_set_log_handler(NULL, NULL);
    em_clear_error();
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

static void test_verbose_messages(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    helper_log cap = {{0}};
    em_set_log_handler(helper_log_capture, &cap);
    static const double scores[] = {2, 3};
    boring m;
    boring_init(&m, LOG_VAL_EPOCH_END, "val_loss", scores, 2);
    em_model_checkpoint_opts o = opts_in(dir);
    o.monitor = "val_loss";
    o.filename = "{epoch}";
    o.verbose = true;
    assert_ok(fit(&m, config(2), em_model_checkpoint(&o), 1, 1, NULL));
    char want[4400];
    snprintf(want, sizeof want, "Epoch 0, global step 1: 'val_loss' reached 2.00000 (best 2.00000), saving model to "
                                "'%s/epoch=0.ckpt' as top 1", dir);
    assert_non_null(strstr(cap.text, want));
    assert_non_null(strstr(cap.text, "Epoch 1, global step 2: 'val_loss' was not in top 1"));
    em_set_log_handler(NULL, NULL);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

/* ---- temporary files a killed save left ------------------------------------------------------------------- */

static void touch(const char *dir, const char *name)
{
    char p[4300];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("partial", f);
    fclose(f);
}

static void test_stale_temporaries_removed(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    /* a process that is gone */
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(0);
    int status = 0;
    assert_int_equal(waitpid(child, &status, 0), child);
    char host[256] = {0};
    assert_int_equal(gethostname(host, sizeof host - 1), 0);
    for (char *c = host; *c != '\0'; c++) /* as ember writes it */
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '.' ||
              *c == '-' || *c == '_'))
            *c = '_';
    host[64] = '\0';
    char dead[400], live[400], other[400], elsewhere[400], old_form[400];
    snprintf(dead, sizeof dead, ".last.ckpt.tmp.%ld.3.%s", (long)child, host);
    snprintf(live, sizeof live, ".epoch=0.ckpt.tmp.%ld.1.%s", (long)getppid(), host); /* a running process */
    snprintf(other, sizeof other, ".notes.tmp.%ld", (long)child);                     /* not ember's pattern */
    /* another machine's (a shared file system): its PID means nothing here */
    snprintf(elsewhere, sizeof elsewhere, ".last.ckpt.tmp.%ld.4.%s-not", (long)child, host);
    snprintf(old_form, sizeof old_form, ".last.ckpt.tmp.%ld.5", (long)child); /* no machine named */
    touch(dir, dead);
    touch(dir, live);
    touch(dir, other);
    touch(dir, elsewhere);
    touch(dir, old_form);
    touch(dir, "keep.txt");
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts o = opts_in(dir);
    o.save_top_k = 0;
    o.save_last = true;
    assert_ok(fit(&m, config(1), em_model_checkpoint(&o), 2, 0, NULL));
    const char *want[] = {live, other, elsewhere, old_form, "keep.txt", "last.ckpt"};
    assert_dir(dir, want, 6);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}


/* Whether `dir` holds a temporary file of `pid` (".NAME.tmp.PID.N.HOST"). */
static bool temp_of(const char *dir, pid_t pid)
{
    char needle[48];
    snprintf(needle, sizeof needle, ".tmp.%ld.", (long)pid);
    char names[64][256];
    int n = count_entries(dir, names, 64);
    for (int i = 0; i < n && i < 64; i++)
        if (names[i][0] == '.' && strstr(names[i], needle) != NULL)
            return true;
    return false;
}

/* Atomicity: a child fits with save_last at every step, a layer big enough that a save takes a while;
 * it is killed while a save is under way (its temporary file is there). last.ckpt is then the previous
 * checkpoint, whole; no partial file is under a final name; the next fit into the directory removes the
 * temporary file. */
/* The process test_kill_during_save kills: a model big enough that a save takes a while, a checkpoint after
 * every step into dir, far more steps than the test waits for. Run as `test_model_checkpoint --save-loop DIR`;
 * it never ends by itself (status 3 if fit returns, with fit's error on stderr). */
#define SAVE_LOOP_ARG "--save-loop"

static int save_loop_child(const char *dir)
{
    boring m;
    memset(&m, 0, sizeof m);
    m.base.ops = &boring_ops;
    m.net = EM_NN_SEQUENTIAL(em_nn_linear(1, 512, true), em_nn_linear(512, 512, true), em_nn_linear(512, 1, true));
    m.base.layers = m.net;
    em_model_checkpoint_opts o = opts_in(dir);
    o.save_top_k = 0;
    o.save_last = true;
    o.every_n_train_steps = 1;
    em_trainer_config cfg = config(1000);
    em_trainer *t = em_trainer_new(&cfg);
    em_trainer_add_callback(t, em_model_checkpoint(&o));
    em_loader *train = loader(50);
    em_status st = em_trainer_fit(t, &m.base, train, NULL);
    fprintf(stderr, "save loop: fit returned %s: %s\n", em_status_name(st), em_trainer_error(t));
    return 3;
}

static void test_kill_during_save(void **state)
{
    (void)state;
    int caught = 0;
    for (int round = 0; round < 8 && caught < 2; round++) {
        char *dir = make_tmpdir();
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            /* A fresh process image, not the forked copy of this one: libtorch 2.x's autograd refuses to run
             * in a child forked after the parent used it ("Unable to handle autograd's threading in
             * combination with fork-based multiprocessing"), and the tests before this one trained here. */
            execl("/proc/self/exe", "test_model_checkpoint", SAVE_LOOP_ARG, dir, (char *)NULL);
            _exit(127);
        }
        /* wait for a save under way after the first one completed */
        char last[4300];
        snprintf(last, sizeof last, "%s/last.ckpt", dir);
        bool saving = false;
        for (int i = 0; i < 200000 && !saving; i++) {
            saving = access(last, F_OK) == 0 && temp_of(dir, pid);
            if (!saving) {
                int status;
                assert_int_equal(waitpid(pid, &status, WNOHANG), 0); /* still running */
                struct timespec ts = {0, 50000};
                nanosleep(&ts, NULL);
            }
        }
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status));
        char names[64][256];
        int n = count_entries(dir, names, 64);
        bool left = temp_of(dir, pid);
        for (int i = 0; i < n && i < 64; i++)
            if (names[i][0] != '.')
                assert_string_equal(names[i], "last.ckpt"); /* nothing else under a final name */
        if (access(last, F_OK) == 0) {
            em_safetensors *f = em_safetensors_open(last); /* whole */
            assert_nonnull_em(f);
            assert_true(em_safetensors_count(f) > 0);
            em_safetensors_free(f);
        }
        if (left) {
            caught++;
            /* the next fit into the directory sweeps it */
            boring m;
            boring_init(&m, LOG_NONE, NULL, NULL, 0);
            em_model_checkpoint_opts o = opts_in(dir);
            o.save_top_k = 0;
            o.save_last = true;
            assert_ok(fit(&m, config(1), em_model_checkpoint(&o), 1, 0, NULL));
            assert_false(temp_of(dir, pid));
            boring_free(&m);
        }
        remove_tree(dir);
        free(dir);
    }
    printf("kill during save: %d kills left a temporary file beside a whole last.ckpt\n", caught);
    assert_true(caught >= 1);
}

/* ---- resuming: ckpt_path "last", the state kept in the checkpoint, the file resumed from -------------------- */

static em_status fit_from(boring *m, em_trainer_config cfg, em_callback *cb, int64_t train_batches, const char *ckpt,
                          em_trainer **t_out)
{
    em_trainer *t = em_trainer_new(&cfg);
    assert_nonnull_em(t);
    if (cb != NULL)
        assert_ok(em_trainer_add_callback(t, cb));
    em_loader *train = loader(train_batches);
    em_status s = em_trainer_fit_from(t, &m->base, train, NULL, ckpt);
    em_loader_free(train);
    if (t_out != NULL)
        *t_out = t;
    else
        em_trainer_free(t);
    return s;
}

static em_model_checkpoint_opts last_every(const char *dir, int64_t n)
{
    em_model_checkpoint_opts o = opts_in(dir);
    o.save_top_k = 0;
    o.save_last = true;
    o.every_n_train_steps = n;
    return o;
}

static void copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    assert_non_null(a);
    assert_non_null(b);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0)
        assert_int_equal(fwrite(buf, 1, n, b), n);
    fclose(a);
    fclose(b);
}

static void test_resume_last(void **state)
{
    (void)state;
    char *dir = make_tmpdir(), *empty = make_tmpdir();
    char last[4300], last_v1[4300];
    snprintf(last, sizeof last, "%s/last.ckpt", dir);
    snprintf(last_v1, sizeof last_v1, "%s/last-v1.ckpt", dir);
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts in_dir = last_every(dir, 2), in_empty = last_every(empty, 2);
    assert_ok(fit(&m, config(2), em_model_checkpoint(&in_dir), 4, 0, NULL));
    const char *one[] = {"last.ckpt"};
    assert_dir(dir, one, 1);

    /* no ModelCheckpoint callback: "last" cannot be resolved */
    em_trainer *t = NULL;
    assert_int_equal(fit_from(&m, config(3), NULL, 4, "last", &t), EM_EINVAL);
    assert_non_null(strstr(em_trainer_error(t), "needs a ModelCheckpoint callback"));
    em_trainer_free(t);
    em_clear_error();

    /* a ModelCheckpoint with no last file yet: Lightning's warning, a fresh fit */
    helper_log cap = {{0}};
    em_set_log_handler(helper_log_capture, &cap);
    assert_ok(fit_from(&m, config(1), em_model_checkpoint(&in_empty), 4, "last",
                       &t));
    assert_null(em_trainer_ckpt_path(t));
    assert_int_equal(em_trainer_global_step(t), 4); /* one epoch of 4 from the start */
    em_trainer_free(t);
    em_set_log_handler(NULL, NULL);
    assert_non_null(strstr(cap.text, ".fit(ckpt_path=\"last\") is set, but there is no last checkpoint available. No "
                                     "checkpoint will be loaded. HINT: Set `ModelCheckpoint(..., save_last=True)`."));

    /* resumed from last.ckpt: the state came back, so last.ckpt is overwritten (no last-v1.ckpt) */
    em_callback *cb = em_model_checkpoint(&in_dir);
    assert_ok(fit_from(&m, config(3), cb, 4, "last", &t));
    assert_string_equal(em_trainer_ckpt_path(t), last);
    assert_int_equal(em_trainer_global_step(t), 12);
    assert_string_equal(em_model_checkpoint_last_model_path(cb), last);
    assert_dir(dir, one, 1);
    em_trainer_free(t);

    /* the newest last*.ckpt wins: a copy made later; it is the resume path, so it is never deleted */
    copy_file(last, last_v1);
    struct timespec times[2] = {{.tv_sec = 0, .tv_nsec = UTIME_NOW}, {.tv_sec = 0, .tv_nsec = 0}};
    clock_gettime(CLOCK_REALTIME, &times[1]);
    times[1].tv_sec += 10;
    assert_int_equal(utimensat(AT_FDCWD, last_v1, times, 0), 0);
    cb = em_model_checkpoint(&in_dir);
    assert_ok(fit_from(&m, config(4), cb, 4, "last", &t));
    assert_string_equal(em_trainer_ckpt_path(t), last_v1);
    assert_int_equal(em_trainer_global_step(t), 16);
    const char *two[] = {"last.ckpt", "last-v1.ckpt"};
    assert_dir(dir, two, 2);
    em_trainer_free(t);

    /* a plain em_trainer_fit resumes from nothing */
    assert_ok(fit(&m, config(1), em_model_checkpoint(&in_empty), 4, 0, &t));
    assert_null(em_trainer_ckpt_path(t));
    em_trainer_free(t);
    boring_free(&m);
    remove_tree(dir);
    remove_tree(empty);
    free(dir);
    free(empty);
}

/* save_last="link" where links cannot be made (Lightning: the OSError fallback, shutil.copy): last.ckpt is a copy
 * of the newest checkpoint, byte for byte. */
static void test_save_last_link_copy_fallback(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts o = opts_in(dir);
    o.save_last = true;
    o.save_last_link = true;
    symlink_fails = true;
    em_status s = fit(&m, config(2), em_model_checkpoint(&o), 4, 0, NULL);
    symlink_fails = false;
    assert_ok(s);
    const char *want[] = {"epoch=1-step=8.ckpt", "last.ckpt"};
    assert_dir(dir, want, 2);
    char last[4300], newest[4300];
    snprintf(last, sizeof last, "%s/last.ckpt", dir);
    snprintf(newest, sizeof newest, "%s/epoch=1-step=8.ckpt", dir);
    struct stat st;
    assert_int_equal(lstat(last, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    FILE *a = fopen(last, "rb"), *b = fopen(newest, "rb");
    assert_non_null(a);
    assert_non_null(b);
    long n = 0;
    for (;;) {
        int ca = fgetc(a), cb = fgetc(b);
        assert_int_equal(ca, cb);
        if (ca == EOF)
            break;
        n++;
    }
    fclose(a);
    fclose(b);
    assert_true(n > 0);
    boring_free(&m);
    remove_tree(dir);
    free(dir);
}

/* Lightning's save_weights_only (checkpoint_connector.dump_checkpoint(weights_only=True)): the files hold the
 * weights and the counters, nothing of the optimizers, generators or callbacks; they load into a layer with
 * em_checkpoint_load and no optimizer; a resume from one is refused with Lightning's KeyError text. A version-1
 * opts struct (before the field) still works and writes full checkpoints. */
static void test_save_weights_only(void **state)
{
    (void)state;
    char *dir = make_tmpdir(), *full_dir = make_tmpdir();
    char last[4300], full_last[4300];
    snprintf(last, sizeof last, "%s/last.ckpt", dir);
    snprintf(full_last, sizeof full_last, "%s/last.ckpt", full_dir);
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts o = last_every(dir, 2);
    o.save_weights_only = true;
    em_trainer *t = NULL;
    assert_ok(fit(&m, config(2), em_model_checkpoint(&o), 4, 0, &t));
    assert_ok(em_trainer_save_checkpoint_ex(t, full_last, false)); /* beside it, a full one of the same state */
    em_trainer_free(t);
    const char *one[] = {"last.ckpt"};
    assert_dir(dir, one, 1);

    em_safetensors *w = em_safetensors_open(last), *f = em_safetensors_open(full_last);
    assert_nonnull_em(w);
    assert_nonnull_em(f);
    assert_true(em_safetensors_find(w, "model.weight") >= 0);
    assert_true(em_safetensors_find(w, "model.bias") >= 0);
    assert_int_equal(em_safetensors_count(w), 2); /* nothing else */
    assert_true(em_safetensors_find(f, "trainer.rng.cpu.0") >= 0);
    assert_true(em_safetensors_count(f) > 2);
    const char *rec = em_safetensors_meta_find(w, "ember.trainer");
    assert_non_null(rec);
    assert_non_null(strstr(rec, "\"weights_only\":true"));
    assert_non_null(strstr(rec, "\"global_step\":8"));
    assert_null(strstr(em_safetensors_meta_find(f, "ember.trainer"), "weights_only"));
    em_safetensors_free(w);
    em_safetensors_free(f);

    /* its weights load into the same layer, without optimizers, and are the fit's last */
    em_nn *copy = em_nn_linear(1, 1, true);
    assert_nonnull_em(copy);
    assert_ok(em_checkpoint_load(last, copy, NULL, 0, NULL, 0));
    for (size_t i = 0; i < 2; i++) {
        float a = 0, b = 0;
        assert_ok(em_tensor_copy_to(em_nn_parameter(copy, i), &a, sizeof a, EM_F32));
        assert_ok(em_tensor_copy_to(em_nn_parameter(m.net, i), &b, sizeof b, EM_F32));
        assert_memory_equal(&a, &b, sizeof a);
    }
    em_nn_free(copy);

    /* a resume from it is refused before training, with Lightning's message */
    assert_int_equal(fit_from(&m, config(3), NULL, 4, last, &t), EM_EINVAL);
    assert_non_null(strstr(em_trainer_error(t), "Trying to restore optimizer state but checkpoint contains only the "
                                                "model. This is probably due to `ModelCheckpoint.save_weights_only` "
                                                "being set to `True`."));
    assert_int_equal(em_trainer_global_step(t), 0);
    em_trainer_free(t);
    em_clear_error();
    /* the full one resumes */
    assert_ok(fit_from(&m, config(3), NULL, 4, full_last, &t));
    assert_int_equal(em_trainer_global_step(t), 12);
    em_trainer_free(t);

    /* a version-1 struct: no save_weights_only field read, full checkpoints */
    remove_tree(dir);
    free(dir);
    dir = make_tmpdir();
    snprintf(last, sizeof last, "%s/last.ckpt", dir);
    em_model_checkpoint_opts v1 = last_every(dir, 2);
    v1.version = 1;
    v1.save_weights_only = true; /* beyond version 1: ignored */
    assert_ok(fit(&m, config(1), em_model_checkpoint(&v1), 4, 0, NULL));
    w = em_safetensors_open(last);
    assert_nonnull_em(w);
    assert_true(em_safetensors_find(w, "trainer.rng.cpu.0") >= 0);
    em_safetensors_free(w);
    v1.version = 3;
    assert_null(em_model_checkpoint(&v1));
    assert_int_equal(em_last_status(), EM_EINVAL);
    em_clear_error();

    boring_free(&m);
    remove_tree(dir);
    remove_tree(full_dir);
    free(dir);
    free(full_dir);
}

/* Lightning's test_resume_and_old_checkpoint_files_remain: the file resumed from is never deleted by top-k,
 * in the same folder; in another folder nothing of the first is touched. */
static void test_resume_old_files_remain(void **state)
{
    (void)state;
    for (int same = 0; same < 2; same++) {
        char *first = make_tmpdir(), *second = make_tmpdir();
        boring m;
        boring_init(&m, LOG_NONE, NULL, NULL, 0);
        em_model_checkpoint_opts o = opts_in(first);
        o.monitor = "step";
        o.mode = "max";
        o.save_top_k = 2;
        o.every_n_train_steps = 2;
        em_trainer_config cfg = config(-1);
        cfg.max_steps = 5;
        assert_ok(fit(&m, cfg, em_model_checkpoint(&o), 10, 0, NULL));
        const char *first_files[] = {"epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"};
        assert_dir(first, first_files, 2);
        char from[4300];
        snprintf(from, sizeof from, "%s/epoch=0-step=4.ckpt", first);
        o.dirpath = same ? first : second;
        cfg.max_steps = 8;
        em_trainer *t = NULL;
        assert_ok(fit_from(&m, cfg, em_model_checkpoint(&o), 10, from, &t));
        em_trainer_free(t);
        if (same) {
            const char *want[] = {"epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt", "epoch=0-step=8.ckpt"};
            assert_dir(first, want, 3);
        } else {
            assert_dir(first, first_files, 2);
            const char *want[] = {"epoch=0-step=6.ckpt", "epoch=0-step=8.ckpt"};
            assert_dir(second, want, 2);
        }
        boring_free(&m);
        remove_tree(first);
        remove_tree(second);
        free(first);
        free(second);
    }
}

/* Two ModelCheckpoints in one trainer keep their states apart (Lightning's state_key); resumed with "last",
 * the top-k one goes on from its restored best-k list: the file that drops out is deleted although this
 * callback object never saved it. */
static void test_two_checkpoints_resume(void **state)
{
    (void)state;
    char *a = make_tmpdir(), *b = make_tmpdir();
    boring m;
    boring_init(&m, LOG_NONE, NULL, NULL, 0);
    em_model_checkpoint_opts topk = opts_in(a);
    topk.monitor = "epoch";
    topk.mode = "max";
    topk.save_top_k = 2;
    topk.filename = "{epoch}";
    em_model_checkpoint_opts last = opts_in(b);
    last.save_top_k = 0;
    last.save_last = true;
    em_trainer_config cfg = config(2);
    em_trainer *t = em_trainer_new(&cfg);
    assert_ok(em_trainer_add_callback(t, em_model_checkpoint(&topk)));
    assert_ok(em_trainer_add_callback(t, em_model_checkpoint(&last)));
    em_loader *train = loader(2);
    assert_ok(em_trainer_fit(t, &m.base, train, NULL));
    em_trainer_free(t);
    const char *a2[] = {"epoch=0.ckpt", "epoch=1.ckpt"}, *b1[] = {"last.ckpt"};
    assert_dir(a, a2, 2);
    assert_dir(b, b1, 1);

    cfg = config(3);
    t = em_trainer_new(&cfg);
    em_callback *cb = em_model_checkpoint(&topk);
    assert_ok(em_trainer_add_callback(t, cb));
    assert_ok(em_trainer_add_callback(t, em_model_checkpoint(&last)));
    assert_ok(em_trainer_fit_from(t, &m.base, train, NULL, "last"));
    const char *a3[] = {"epoch=1.ckpt", "epoch=2.ckpt"};
    assert_dir(a, a3, 2);
    assert_dir(b, b1, 1);
    assert_int_equal(em_model_checkpoint_num_best_k(cb), 2);
    assert_string_equal(base_name(em_model_checkpoint_best_k(cb, 0, NULL)), "epoch=1.ckpt");
    assert_string_equal(base_name(em_model_checkpoint_best_k(cb, 1, NULL)), "epoch=2.ckpt");
    assert_string_equal(base_name(em_model_checkpoint_best_model_path(cb)), "epoch=2.ckpt");
    em_trainer_free(t);
    em_loader_free(train);
    boring_free(&m);
    remove_tree(a);
    remove_tree(b);
    free(a);
    free(b);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], SAVE_LOOP_ARG) == 0)
        return save_loop_child(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_format_checkpoint_name, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_invalid_arguments, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_every_n_epochs, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_every_n_train_steps, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_train_time_interval, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_save_last_none_monitor, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_save_last_template, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_topk_zero, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_topk_all, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_topk_removal, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_save_last_versioning, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_version_after_rerun_new_trainer, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_version_after_rerun_same_trainer, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_version_counter_disabled, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_none_monitor_not_alternating, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nan_as_first, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_current_score, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_current_score_when_nan, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_check_val_every_n_epochs_top_k, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_val_check_interval_files, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_default_dirpath, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_missing_monitor, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_verbose_messages, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_stale_temporaries_removed, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_kill_during_save, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_resume_last, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_save_weights_only, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_save_last_link, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_save_last_link_copy_fallback, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_resume_old_files_remain, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_two_checkpoints_resume, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
