/* test_misuse_loop.c: a newcomer's mistakes with the trainer, the loaders and the callbacks - each case
 * runs in a child process, so a crash is reported as a failure of that case (with the signal) instead
 * of ending the suite. Every case expects a clear error, never a crash and never a silent EM_OK. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

/* ---- the child-process runner -------------------------------------------------------------------------- */

/* Run `body` in a child: the test passes when the child exits 0 (cmocka's own run there reports the
 * assertion that failed). A signal is a failure naming it. */
static void in_child(void (*body)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        body();
        em_clear_error();
        fflush(NULL);
        _exit(0);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (WIFSIGNALED(st))
        fail_msg("the case crashed: signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("the case failed (exit status %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/* In the child an assertion must end the child with a non-zero status: cmocka's fail inside a body
 * called outside its runner would longjmp nowhere, so the bodies check with this instead. */
#define expect(cond)                                                                                   \
    do {                                                                                               \
        if (!(cond)) {                                                                                 \
            fprintf(stderr, "%s:%d: expected %s (last error: %s)\n", __FILE__, __LINE__, #cond,          \
                    em_last_error());                                                                  \
            fflush(NULL);                                                                              \
            _exit(1);                                                                                  \
        }                                                                                              \
    } while (0)
#define expect_error(status, needle) expect(em_last_status() == (status) && strstr(em_last_error(), (needle)) != NULL)

/* ---- a tiny automatic module -------------------------------------------------------------------------------- */

struct tiny {
    em_module base;
    em_nn *net;
};

static em_tensor *tiny_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    return em_mse_loss(em_nn_forward(((struct tiny *)m)->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
}

static em_status tiny_optimizers(em_module *m, em_optim_setup *setup)
{
    em_params *ps = em_nn_parameters(((struct tiny *)m)->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static const em_module_ops tiny_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = tiny_step,
    .configure_optimizers = tiny_optimizers,
};

static em_trainer_config quiet_config(void)
{
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = 1;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    return cfg;
}

/* Fit the tiny module on `l` with `cfg`; returns fit's status, the message in *msg (static). */
static em_status fit_on(em_loader *l, em_trainer_config cfg, const char **msg)
{
    static char text[1024];
    struct tiny m = {.base = {.ops = &tiny_ops}, .net = em_nn_linear(1, 1, true)};
    em_trainer *t = em_trainer_new(&cfg);
    expect(t != NULL);
    em_status s = em_trainer_fit(t, &m.base, l, NULL);
    snprintf(text, sizeof text, "%s", em_trainer_error(t));
    *msg = text;
    em_trainer_free(t);
    em_nn_free(m.net);
    return s;
}

static em_loader *rows_loader(int64_t rows, int64_t batch_size)
{
    em_tensor *x = em_randn(EM_SHAPE(rows, 1), NULL);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, x}, 2, &(em_loader_opts){.batch_size = batch_size});
    em_tensor_free(x);
    return l;
}

/* ---- a loader written in C that lies ---------------------------------------------------------------------------- */

typedef struct liar {
    int64_t num_batches;
    size_t n_tensors;   /* what get_batch claims in out->n */
} liar;

static int64_t liar_num_batches(void *state) { return ((liar *)state)->num_batches; }

static em_status liar_get_batch(void *state, int64_t index, em_batch *out)
{
    (void)index;
    liar *l = state;
    em_tensor *x = em_ones(EM_SHAPE(2, 1), NULL);
    out->t[0] = x;
    out->t[1] = x;
    out->n = l->n_tensors; /* more than it filled in: the trainer must not read past t[1] blindly */
    return EM_OK;
}

static const em_loader_ops liar_ops = {
    .version = EM_LOADER_OPS_VERSION,
    .num_batches = liar_num_batches,
    .get_batch = liar_get_batch,
};

/* ---- the cases ----------------------------------------------------------------------------------------------- */

/* limit_train_batches beyond int64: infinity and 2^63 are refused at construction, not turned into a
 * negative batch count and a silent fit of 0 steps. */
static void case_limits_beyond_int64(void)
{
    em_trainer_config cfg = quiet_config();
    cfg.limit_train_batches = EM_BATCHES(INFINITY);
    expect(em_trainer_new(&cfg) == NULL);
    expect_error(EM_EINVAL, "limit_train_batches");
    em_clear_error();
    cfg.limit_train_batches = EM_BATCHES(9.3e18);
    expect(em_trainer_new(&cfg) == NULL);
    expect_error(EM_EINVAL, "below 2^62");
    em_clear_error();
    cfg = quiet_config();
    cfg.version = -1; /* a struct never initialised from EM_TRAINER_CONFIG_INIT */
    expect(em_trainer_new(&cfg) == NULL);
    expect_error(EM_EINVAL, "EM_TRAINER_CONFIG_INIT");
}
static void test_misuse__limits_beyond_int64(void **state) { (void)state; in_child(case_limits_beyond_int64); }

/* A C loader whose num_batches() is negative: fit fails and says which loader. */
static void case_negative_num_batches(void)
{
    em_loader *l = em_loader_new(&liar_ops, &(liar){.num_batches = -5, .n_tensors = 2});
    const char *msg;
    expect(fit_on(l, quiet_config(), &msg) == EM_EINVAL);
    expect(strstr(msg, "train loader's num_batches() returned -5") != NULL);
    em_loader_free(l);
}
static void test_misuse__negative_num_batches(void **state) { (void)state; in_child(case_negative_num_batches); }

/* A batch that claims more tensors than a batch holds (or NULL ones): fit fails naming the batch. */
static void case_too_many_tensors(void)
{
    em_loader *l = em_loader_new(&liar_ops, &(liar){.num_batches = 3, .n_tensors = EM_BATCH_MAX_TENSORS + 1});
    const char *msg;
    expect(fit_on(l, quiet_config(), &msg) == EM_EINVAL);
    expect(strstr(msg, "EM_BATCH_MAX_TENSORS") != NULL);
    em_loader_free(l);
    l = em_loader_new(&liar_ops, &(liar){.num_batches = 3, .n_tensors = 3}); /* t[2] was never set */
    expect(fit_on(l, quiet_config(), &msg) == EM_EINVAL);
    expect(strstr(msg, "tensor 2 is NULL") != NULL);
    em_loader_free(l);
}
static void test_misuse__too_many_tensors_in_a_batch(void **state) { (void)state; in_child(case_too_many_tensors); }

/* batch_size near INT64_MAX on 40 rows: one batch of 40 (rows + batch_size does not overflow to 0 batches). */
static void case_huge_batch_size(void)
{
    em_loader *l = rows_loader(40, INT64_MAX - 1);
    expect(l != NULL);
    expect(em_loader_num_batches(l) == 1);
    const char *msg;
    expect(fit_on(l, quiet_config(), &msg) == EM_OK);
    em_loader_free(l);
}
static void test_misuse__huge_batch_size(void **state) { (void)state; in_child(case_huge_batch_size); }

/* OneCycleLR with epochs * steps_per_epoch beyond int64; estimated_stepping_batches with a huge
 * max_epochs stays positive. */
static void case_huge_schedules(void)
{
    em_params *ps = em_params_new();
    em_tensor *w = em_zeros(EM_SHAPE(1), &(em_tensor_opts){.requires_grad = true});
    em_params_add(ps, w);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_onecycle_opts o = EM_ONECYCLE_OPTS_INIT;
    o.max_lr = 1.0;
    o.epochs = INT64_MAX / 2;
    o.steps_per_epoch = 4;
    expect(em_onecycle_lr(opt, &o) == NULL);
    expect_error(EM_EINVAL, "does not fit in 64 bits");
    em_clear_error();
    em_optimizer_free(opt);
    em_params_free(ps);
    em_tensor_free(w);
}
static void test_misuse__huge_schedules(void **state) { (void)state; in_child(case_huge_schedules); }

/* One callback added twice, or to two trainers: EM_EMISUSE, and it stays with its trainer (no double
 * free when both trainers are freed); freeing a callback a trainer owns is refused. */
static void case_callback_shared(void)
{
    em_trainer_config cfg = quiet_config();
    em_trainer *a = em_trainer_new(&cfg), *b = em_trainer_new(&cfg);
    em_callback *cb = em_grad_accum_scheduler((const int64_t[][2]){{0, 1}}, 1);
    expect(em_trainer_add_callback(a, cb) == EM_OK);
    expect(em_trainer_add_callback(a, cb) == EM_EMISUSE);
    expect_error(EM_EMISUSE, "already added to this trainer");
    em_clear_error();
    expect(em_trainer_add_callback(b, cb) == EM_EMISUSE);
    expect_error(EM_EMISUSE, "belongs to another trainer");
    em_clear_error();
    em_callback_free(cb);
    expect_error(EM_EMISUSE, "handed to a trainer");
    em_clear_error();
    em_trainer_free(b);
    em_trainer_free(a);
}
static void test_misuse__callback_added_twice(void **state) { (void)state; in_child(case_callback_shared); }

/* A scheduler given to a SequentialLR is the composite's: freeing it is refused (no double free when the
 * composite is freed). A scheduler whose optimizer was freed reports the freed optimizer when stepped. */
static void case_scheduler_ownership(void)
{
    em_params *ps = em_params_new();
    em_tensor *w = em_zeros(EM_SHAPE(1), &(em_tensor_opts){.requires_grad = true});
    em_params_add(ps, w);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_scheduler *a = em_step_lr(opt, 1, 0.5), *b = em_step_lr(opt, 1, 0.9);
    em_scheduler *seq = em_sequential_lr(opt, (em_scheduler *[]){a, b}, 2, (const int64_t[]){2});
    expect(seq != NULL);
    em_scheduler_free(a);
    expect_error(EM_EMISUSE, "belongs to the SequentialLR");
    em_clear_error();
    expect(em_scheduler_step(seq) == EM_OK);
    em_scheduler_free(seq); /* frees a and b once */
    expect(em_last_status() == EM_OK);

    em_scheduler *s = em_step_lr(opt, 1, 0.5);
    em_optimizer_free(opt);
    expect(em_scheduler_step(s) != EM_OK);
    expect(em_last_status() == EM_EMISUSE && strstr(em_last_error(), "freed optimizer") != NULL);
    em_clear_error();
    em_scheduler_free(s);
    em_params_free(ps);
    em_tensor_free(w);
}
static void test_misuse__scheduler_ownership(void **state) { (void)state; in_child(case_scheduler_ownership); }

/* ---- freed handles of the loop's kinds: trainer, loader, scheduler, callback, generator ---------------------- */

/* A double free or a use after free of a trainer is EM_EMISUSE with a message, never a crash. */
static void case_freed_trainer(void)
{
    em_trainer_config cfg = quiet_config();
    em_trainer *t = em_trainer_new(&cfg);
    expect(t != NULL);
    em_trainer_free(t);
    expect(em_last_status() == EM_OK);
    em_trainer_free(t);
    expect_error(EM_EMISUSE, "em_trainer_free: this trainer was already freed");
    em_clear_error();
    expect(em_trainer_global_step(t) == -1);
    expect_error(EM_EMISUSE, "em_trainer_global_step: argument 1 is a freed trainer");
    em_clear_error();
    expect(!em_trainer_should_stop(t));
    expect_error(EM_EMISUSE, "em_trainer_should_stop");
    em_clear_error();
    em_trainer_set_should_stop(t, true);
    expect_error(EM_EMISUSE, "em_trainer_set_should_stop");
    em_clear_error();
    expect(em_trainer_num_callback_metrics(t) == 0);
    expect_error(EM_EMISUSE, "em_trainer_num_callback_metrics");
    em_clear_error();
    expect(strcmp(em_trainer_error(t), "") == 0);
    expect_error(EM_EMISUSE, "em_trainer_error");
    em_clear_error();
    struct tiny m = {.base = {.ops = &tiny_ops}, .net = em_nn_linear(1, 1, true)};
    em_loader *l = rows_loader(4, 2);
    expect(em_trainer_fit(t, &m.base, l, NULL) == EM_EMISUSE);
    expect_error(EM_EMISUSE, "em_trainer_fit: argument 1 is a freed trainer");
    em_clear_error();
    em_callback *cb = em_grad_accum_scheduler((const int64_t[][2]){{0, 1}}, 1);
    expect(em_trainer_add_callback(t, cb) == EM_EMISUSE); /* cb stays ours */
    em_clear_error();
    em_callback_free(cb);
    expect(em_last_status() == EM_OK);
    em_loader_free(l);
    em_nn_free(m.net);
}
static void test_misuse__freed_trainer(void **state) { (void)state; in_child(case_freed_trainer); }

/* Freeing the trainer from inside its own fit is refused, not a use after free of the loop's state. */
static em_status free_my_trainer(em_callback *cb, em_trainer *t, em_module *m)
{
    (void)cb;
    (void)m;
    em_trainer_free(t);
    expect_error(EM_EMISUSE, "em_trainer_free: the trainer is fitting");
    em_clear_error();
    return EM_OK;
}
static void case_trainer_freed_during_fit(void)
{
    static const em_callback_ops ops = {.version = EM_CALLBACK_OPS_VERSION, .on_train_epoch_end = free_my_trainer};
    em_trainer_config cfg = quiet_config();
    em_trainer *t = em_trainer_new(&cfg);
    expect(em_trainer_add_callback(t, em_callback_new(&ops, NULL)) == EM_OK);
    struct tiny m = {.base = {.ops = &tiny_ops}, .net = em_nn_linear(1, 1, true)};
    em_loader *l = rows_loader(4, 2);
    expect(em_trainer_fit(t, &m.base, l, NULL) == EM_OK);
    expect(em_trainer_global_step(t) == 2);
    em_trainer_free(t);
    em_loader_free(l);
    em_nn_free(m.net);
}
static void test_misuse__trainer_freed_during_fit(void **state) { (void)state; in_child(case_trainer_freed_during_fit); }

static void case_freed_loader(void)
{
    em_loader *l = rows_loader(4, 2);
    expect(em_loader_num_batches(l) == 2);
    em_loader_free(l);
    expect(em_last_status() == EM_OK);
    em_loader_free(l);
    expect_error(EM_EMISUSE, "em_loader_free: this loader was already freed");
    em_clear_error();
    expect(em_loader_num_batches(l) == -1);
    expect_error(EM_EMISUSE, "em_loader_num_batches: argument 1 is a freed loader");
    em_clear_error();
    em_batch b;
    expect(em_loader_get(l, 0, 0, &b) == EM_EMISUSE);
    expect_error(EM_EMISUSE, "em_loader_get: argument 1 is a freed loader");
    em_clear_error();
    /* handed to fit, as the training and as the validation loader */
    em_loader *good = rows_loader(4, 2);
    em_trainer_config cfg = quiet_config();
    em_trainer *t = em_trainer_new(&cfg);
    struct tiny m = {.base = {.ops = &tiny_ops}, .net = em_nn_linear(1, 1, true)};
    expect(em_trainer_fit(t, &m.base, l, NULL) == EM_EMISUSE);
    expect_error(EM_EMISUSE, "em_trainer_fit: argument 3 is a freed loader");
    em_clear_error();
    expect(em_trainer_fit(t, &m.base, good, l) == EM_EMISUSE);
    expect_error(EM_EMISUSE, "em_trainer_fit: argument 4 is a freed loader");
    em_clear_error();
    expect(em_trainer_global_step(t) == 0);
    em_trainer_free(t);
    em_loader_free(good);
    em_nn_free(m.net);
}
static void test_misuse__freed_loader(void **state) { (void)state; in_child(case_freed_loader); }

static void case_freed_scheduler(void)
{
    em_params *ps = em_params_new();
    em_tensor *w = em_zeros(EM_SHAPE(1), &(em_tensor_opts){.requires_grad = true});
    em_params_add(ps, w);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_scheduler *s = em_step_lr(opt, 1, 0.5);
    expect(s != NULL);
    em_scheduler_free(s);
    expect(em_last_status() == EM_OK);
    em_scheduler_free(s);
    expect_error(EM_EMISUSE, "em_scheduler_free: this scheduler was already freed");
    em_clear_error();
    expect(em_scheduler_step(s) == EM_EMISUSE);
    expect_error(EM_EMISUSE, "em_scheduler_step: argument 1 is a freed scheduler");
    em_clear_error();
    expect(isnan(em_scheduler_last_lr(s, 0)));
    expect_error(EM_EMISUSE, "em_scheduler_last_lr");
    em_clear_error();
    expect(em_scheduler_last_epoch(s) == -1);
    expect_error(EM_EMISUSE, "em_scheduler_last_epoch");
    em_clear_error();
    expect(strcmp(em_scheduler_name(s), "") == 0);
    expect_error(EM_EMISUSE, "em_scheduler_name");
    em_clear_error();
    /* a freed child handed to a composite: refused, and the live child is freed by the failed call
     * (the composite takes ownership of its children also when it fails) */
    em_scheduler *live = em_step_lr(opt, 1, 0.9);
    expect(em_chained_scheduler((em_scheduler *[]){live, s}, 2) == NULL);
    expect_error(EM_EMISUSE, "em_chained_scheduler: argument 1 is a freed scheduler");
    em_clear_error();
    em_optimizer_free(opt);
    em_params_free(ps);
    em_tensor_free(w);
    expect(em_last_status() == EM_OK);
}
static void test_misuse__freed_scheduler(void **state) { (void)state; in_child(case_freed_scheduler); }

static void case_freed_callback_and_generator(void)
{
    int64_t schedule[][2] = {{0, 1}};
    em_callback *cb = em_grad_accum_scheduler((const int64_t(*)[2])schedule, 1);
    em_callback_free(cb);
    expect(em_last_status() == EM_OK);
    em_callback_free(cb);
    expect_error(EM_EMISUSE, "em_callback_free: this callback was already freed");
    em_clear_error();
    expect(em_callback_state(cb) == NULL);
    expect_error(EM_EMISUSE, "em_callback_state: argument 1 is a freed callback");
    em_clear_error();
    em_trainer_config cfg = quiet_config();
    em_trainer *t = em_trainer_new(&cfg);
    expect(em_trainer_add_callback(t, cb) == EM_EMISUSE);
    expect_error(EM_EMISUSE, "em_trainer_add_callback: argument 2 is a freed callback");
    em_clear_error();
    em_trainer_free(t);

    em_generator *g = em_generator_new(7);
    em_tensor *x = em_randn(EM_SHAPE(2), &(em_tensor_opts){.generator = g});
    expect(x != NULL);
    em_generator_free(g);
    expect(em_last_status() == EM_OK);
    em_generator_free(g);
    expect_error(EM_EMISUSE, "em_generator_free: this generator was already freed");
    em_clear_error();
    expect(em_randn(EM_SHAPE(2), &(em_tensor_opts){.generator = g}) == NULL);
    expect_error(EM_EMISUSE, "em_randn: the generator is freed");
    em_clear_error();
    expect(em_randperm(3, &(em_tensor_opts){.generator = g}) == NULL);
    expect_error(EM_EMISUSE, "em_randperm: the generator is freed");
    em_clear_error();
    expect(em_uniform_(x, 0, 1, g) == EM_EMISUSE);
    expect_error(EM_EMISUSE, "em_uniform_: the generator is freed");
    em_clear_error();
    em_tensor_free(x);
}
static void case_freed_grad_scaler(void)
{
    em_grad_scaler_opts o = EM_GRAD_SCALER_OPTS_INIT;
    em_grad_scaler *gs = em_grad_scaler_new(&o);
    expect(gs != NULL);
    em_grad_scaler_free(gs);
    expect(em_last_status() == EM_OK);
    em_grad_scaler_free(gs);
    expect_error(EM_EMISUSE, "em_grad_scaler_free: this grad scaler was already freed");
    em_clear_error();
    expect(isnan(em_grad_scaler_get_scale(gs)));
    expect_error(EM_EMISUSE, "em_grad_scaler_get_scale: argument 1 is a freed grad scaler");
    em_clear_error();
    expect(em_grad_scaler_update(gs) == EM_EMISUSE);
    expect_error(EM_EMISUSE, "em_grad_scaler_update");
    em_clear_error();
    em_trainer_config cfg = quiet_config();
    cfg.precision = EM_PRECISION_16_MIXED;
    cfg.grad_scaler = gs;
    expect(em_trainer_new(&cfg) == NULL);
    expect_error(EM_EMISUSE, "cfg->grad_scaler is not a live grad scaler");
    em_clear_error();
}
static void test_misuse__freed_grad_scaler(void **state) { (void)state; in_child(case_freed_grad_scaler); }

static void case_freed_safetensors_reader(void)
{
    /* a whole file: 8-byte header length, the header {"x":...} padded to 8, 4 bytes of float32 data */
    static const char hdr[] = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    size_t hn = (sizeof hdr - 1 + 7) / 8 * 8;
    unsigned char buf[8 + 64 + 4] = {0};
    expect(hn <= 64);
    buf[0] = (unsigned char)hn;
    memset(buf + 8, ' ', hn);
    memcpy(buf + 8, hdr, sizeof hdr - 1);
    em_safetensors *f = em_safetensors_parse(buf, 8 + hn + 4);
    expect(f != NULL);
    expect(em_safetensors_count(f) == 1);
    em_safetensors_free(f);
    expect(em_last_status() == EM_OK);
    em_safetensors_free(f);
    expect_error(EM_EMISUSE, "em_safetensors_free: this safetensors reader was already freed");
    em_clear_error();
    expect(em_safetensors_count(f) == 0);
    expect_error(EM_EMISUSE, "em_safetensors_count: argument 1 is a freed safetensors reader");
    em_clear_error();
    expect(em_safetensors_find(f, "x") == -1);
    expect_error(EM_EMISUSE, "em_safetensors_find");
    em_clear_error();
    expect(em_safetensors_meta_find(f, "k") == NULL);
    expect_error(EM_EMISUSE, "em_safetensors_meta_find");
    em_clear_error();
    expect(em_safetensors_tensor(f, 0) == NULL);
    expect_error(EM_EMISUSE, "em_safetensors_tensor");
    em_clear_error();
    em_nn *lin = em_nn_linear(1, 1, true);
    expect(lin != NULL);
    expect(em_nn_load_safetensors_from(lin, f, false) == EM_EMISUSE);
    expect_error(EM_EMISUSE, "em_nn_load_safetensors_from");
    em_clear_error();
    em_nn_free(lin);
}
static void test_misuse__freed_safetensors_reader(void **state) { (void)state; in_child(case_freed_safetensors_reader); }

static void test_misuse__freed_callback_and_generator(void **state)
{
    (void)state;
    in_child(case_freed_callback_and_generator);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_misuse__limits_beyond_int64),
        cmocka_unit_test(test_misuse__negative_num_batches),
        cmocka_unit_test(test_misuse__too_many_tensors_in_a_batch),
        cmocka_unit_test(test_misuse__huge_batch_size),
        cmocka_unit_test(test_misuse__huge_schedules),
        cmocka_unit_test(test_misuse__callback_added_twice),
        cmocka_unit_test(test_misuse__scheduler_ownership),
        cmocka_unit_test(test_misuse__freed_trainer),
        cmocka_unit_test(test_misuse__trainer_freed_during_fit),
        cmocka_unit_test(test_misuse__freed_loader),
        cmocka_unit_test(test_misuse__freed_scheduler),
        cmocka_unit_test(test_misuse__freed_callback_and_generator),
        cmocka_unit_test(test_misuse__freed_grad_scaler),
        cmocka_unit_test(test_misuse__freed_safetensors_reader),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
