/* test_ddp_backend.c: which c10d backend a DDP fit's process group gets (Lightning's
 * DDPStrategy(process_group_backend=...) and _get_default_process_group_backend_for_device: "nccl" for
 * a CUDA device, else "gloo"), and NCCL refused with a message where it cannot work: a libtorch built
 * without it, or a fit on the CPU. Each fit runs in a child process (a process joins one process group
 * for good), with one process (strategy ddp, devices 1: a real Gloo group on 127.0.0.1).
 *
 * EMBER_EXPECT_NCCL=1 or 0 (scripts/cuda-build-check.sh sets 1 against the CUDA libtorch) makes
 * em_process_group_backend_available(NCCL) checked against what the build is known to have.
 */
#include "ddp_worker.h"
#include "helpers.h"

/* ---- a fit in a child, its message and log lines back through a pipe -------------------------------- */

struct tiny {
    em_module base;
    em_nn *net;
};

static em_tensor *tiny_step(em_module *m, const em_batch *b, int64_t i)
{
    (void)i;
    return em_mse_loss(em_nn_forward(((struct tiny *)m)->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
}

static em_status tiny_configure(em_module *m, em_optim_setup *setup)
{
    em_params *ps = em_nn_parameters(((struct tiny *)m)->net);
    em_optimizer *o = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    em_params_free(ps);
    return em_optim_setup_add(setup, o);
}

static char g_log[4096];

static void capture(void *user, em_log_level level, const char *message)
{
    (void)user, (void)level;
    size_t n = strlen(g_log);
    snprintf(g_log + n, sizeof g_log - n, "%s\n", message);
}

/* What one child reports: fit's status per fit, the backend after each, the last error, the log. */
typedef struct fit_report {
    int status[2];
    int backend[2];
    char error[1024];
    char log[2048];
} fit_report;

/* Fit a Linear(2,1) under strategy ddp with one process, once per backend in `want` (n of them), on
 * accelerator `acc`; everything in this process. */
static void fits(em_accelerator acc, const em_process_group_backend *want, int n, fit_report *r)
{
    memset(r, 0, sizeof *r);
    g_log[0] = '\0';
    em_set_log_handler(capture, NULL);
    static const em_module_ops ops = {.version = EM_MODULE_OPS_VERSION, .training_step = tiny_step,
                                      .configure_optimizers = tiny_configure};
    struct tiny m = {.base = {.ops = &ops}, .net = em_nn_linear(2, 1, true)};
    m.base.layers = m.net;
    em_tensor *x = em_ones((int64_t[]){4, 2}, 2, NULL), *y = em_zeros((int64_t[]){4, 1}, 2, NULL);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = 2});
    for (int i = 0; i < n; i++) {
        em_trainer_config c = EM_TRAINER_CONFIG_INIT;
        c.max_epochs = 1;
        c.enable_progress_bar = false;
        c.enable_csv_logger = false;
        c.strategy = EM_STRATEGY_DDP;
        c.devices = 1;
        c.accelerator = acc;
        c.ddp_timeout = 20.0;
        c.process_group_backend = want[i];
        em_trainer *t = em_trainer_new(&c);
        r->status[i] = em_trainer_fit(t, &m.base, l, NULL);
        r->backend[i] = (int)em_trainer_process_group_backend(t);
        if (r->status[i] != EM_OK)
            snprintf(r->error, sizeof r->error, "%s", em_trainer_error(t));
        em_trainer_free(t);
    }
    snprintf(r->log, sizeof r->log, "%s", g_log);
    em_set_log_handler(NULL, NULL);
    em_loader_free(l);
    em_tensor_free(x);
    em_tensor_free(y);
    em_nn_free(m.net);
}

/* fits() in a child process with a deadline; the report comes back through a pipe. */
static void fits_in_child(em_accelerator acc, const em_process_group_backend *want, int n, fit_report *r)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        fit_report mine;
        fits(acc, want, n, &mine);
        ssize_t w = write(fds[1], &mine, sizeof mine);
        close(fds[1]);
        _exit(w == (ssize_t)sizeof mine ? 0 : 1);
    }
    close(fds[1]);
    int st = wait_deadline(pid, now_s() + 120);
    memset(r, 0, sizeof *r);
    ssize_t got = 0;
    while (got < (ssize_t)sizeof *r) {
        ssize_t k = read(fds[0], (char *)r + got, sizeof *r - (size_t)got);
        if (k <= 0)
            break;
        got += k;
    }
    close(fds[0]);
    assert_int_not_equal(st, -1); /* not killed by the deadline */
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0) || got != (ssize_t)sizeof *r)
        fail_msg("the child ended with wait status %#x after %zd bytes", st, got);
    print_message("status %d/%d backend %d/%d error \"%s\"\nlog:\n%s", r->status[0], r->status[1], r->backend[0],
                  r->backend[1], r->error, r->log);
}

/* ---- the cases ---------------------------------------------------------------------------------------- */

static void test_names_and_availability(void **state)
{
    (void)state;
    assert_string_equal(em_process_group_backend_name(EM_PG_BACKEND_AUTO), "auto");
    assert_string_equal(em_process_group_backend_name(EM_PG_BACKEND_GLOO), "gloo");
    assert_string_equal(em_process_group_backend_name(EM_PG_BACKEND_NCCL), "nccl");
    assert_string_equal(em_process_group_backend_name((em_process_group_backend)7), "?");
    assert_true(em_process_group_backend_available(EM_PG_BACKEND_AUTO));
    assert_true(em_process_group_backend_available(EM_PG_BACKEND_GLOO));
    assert_false(em_process_group_backend_available((em_process_group_backend)7));
    bool nccl = em_process_group_backend_available(EM_PG_BACKEND_NCCL);
    print_message("libtorch %s: NCCL %s, CUDA device(s) visible: %lld\n", em_torch_version(),
                  nccl ? "built in" : "not built in", (long long)em_cuda_device_count());
    const char *expect = getenv("EMBER_EXPECT_NCCL");
    if (expect != NULL && *expect != '\0')
        assert_int_equal(nccl, strcmp(expect, "1") == 0);
}

static void test_config_checks(void **state)
{
    (void)state;
    em_trainer_config c = EM_TRAINER_CONFIG_INIT;
    assert_int_equal(c.process_group_backend, EM_PG_BACKEND_AUTO);
    c.process_group_backend = (em_process_group_backend)7;
    assert_null(em_trainer_new(&c));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("`process_group_backend` 7 is not one of EM_PG_BACKEND_AUTO, GLOO, NCCL");
    /* a version-2 caller's struct ends before the field: whatever lies there is not read */
    c.version = 2;
    em_trainer *t = em_trainer_new(&c);
    assert_non_null(t);
    assert_int_equal(em_trainer_process_group_backend(t), EM_PG_BACKEND_AUTO); /* no DDP fit yet */
    em_trainer_free(t);
    assert_int_equal(em_trainer_process_group_backend(NULL), EM_PG_BACKEND_AUTO);
}

/* auto on the CPU is Gloo (Lightning's default for a CPU device), said once by rank 0's log line; an
 * explicit gloo in the same process reuses the group. */
static void test_auto_on_cpu_is_gloo(void **state)
{
    (void)state;
    fit_report r;
    fits_in_child(EM_ACCELERATOR_CPU, (em_process_group_backend[]){EM_PG_BACKEND_AUTO, EM_PG_BACKEND_GLOO}, 2, &r);
    assert_int_equal(r.status[0], EM_OK);
    assert_int_equal(r.backend[0], EM_PG_BACKEND_GLOO);
    assert_int_equal(r.status[1], EM_OK);
    assert_int_equal(r.backend[1], EM_PG_BACKEND_GLOO);
    const char *line = strstr(r.log, "distributed_backend=gloo");
    assert_non_null(line);
    assert_non_null(strstr(line, "Starting with 1 processes"));
    assert_null(strstr(line + 1, "distributed_backend=")); /* once per process, as Lightning's */
}

/* nccl asked for on the CPU: refused before any group is made, saying why and what to change. Where
 * libtorch has no NCCL (Debian's CPU builds) that comes first; with NCCL built in (the CUDA build
 * check) the CPU device is the reason. Either way no process group exists afterwards: a Gloo fit in
 * the same process still works. */
static void test_nccl_refused_on_cpu(void **state)
{
    (void)state;
    fit_report r;
    fits_in_child(EM_ACCELERATOR_CPU, (em_process_group_backend[]){EM_PG_BACKEND_NCCL, EM_PG_BACKEND_AUTO}, 2, &r);
    assert_int_equal(r.backend[0], EM_PG_BACKEND_AUTO);
    if (!em_process_group_backend_available(EM_PG_BACKEND_NCCL)) {
        assert_int_equal(r.status[0], EM_EUNSUPPORTED);
        assert_non_null(strstr(r.error, "process_group_backend \"nccl\": the linked libtorch"));
        assert_non_null(strstr(r.error, "was built without NCCL"));
        assert_non_null(strstr(r.error, em_torch_version()));
    } else {
        assert_int_equal(r.status[0], EM_EINVAL);
        assert_non_null(strstr(r.error, "process_group_backend \"nccl\" all-reduces GPU tensors, but this fit runs "
                                        "on the CPU (accelerator cpu)"));
        assert_non_null(strstr(r.error, "use EM_PG_BACKEND_GLOO or AUTO"));
    }
    assert_int_equal(r.status[1], EM_OK);
    assert_int_equal(r.backend[1], EM_PG_BACKEND_GLOO);
}

/* accelerator auto without a GPU runs on the CPU, so nccl is refused the same way (the message says
 * that no GPU was found). Skipped where a GPU is visible (auto would take it). */
static void test_nccl_refused_with_auto_and_no_gpu(void **state)
{
    (void)state;
    if (em_cuda_is_available())
        skip();
    fit_report r;
    fits_in_child(EM_ACCELERATOR_AUTO, (em_process_group_backend[]){EM_PG_BACKEND_NCCL}, 1, &r);
    assert_int_not_equal(r.status[0], EM_OK);
    if (em_process_group_backend_available(EM_PG_BACKEND_NCCL))
        assert_non_null(strstr(r.error, "(accelerator auto, and no GPU is visible)"));
    else
        assert_non_null(strstr(r.error, "was built without NCCL"));
}

/* A process's group is made once: a later DDP fit asking for another backend is refused by name. Only
 * where NCCL is built in and a GPU is visible can a second backend get that far; elsewhere the NCCL
 * fit is refused earlier (the cases above), which is checked here too. */
static void test_second_backend_in_one_process(void **state)
{
    (void)state;
    if (!em_cuda_is_available() || !em_process_group_backend_available(EM_PG_BACKEND_NCCL))
        skip();
    fit_report r;
    fits_in_child(EM_ACCELERATOR_CUDA, (em_process_group_backend[]){EM_PG_BACKEND_GLOO, EM_PG_BACKEND_NCCL}, 2, &r);
    assert_int_equal(r.status[0], EM_OK);
    assert_int_equal(r.backend[0], EM_PG_BACKEND_GLOO);
    assert_int_equal(r.status[1], EM_EINVAL);
    assert_non_null(strstr(r.error, "joined its process group with gloo; a DDP fit with nccl needs a new process"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_names_and_availability, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_config_checks, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_auto_on_cpu_is_gloo, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nccl_refused_on_cpu, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nccl_refused_with_auto_and_no_gpu, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_second_backend_in_one_process, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
