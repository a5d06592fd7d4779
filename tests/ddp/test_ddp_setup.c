/* test_ddp_setup.c: torch's DistributedSampler indices, the DDP config checks, the rank getters from
 * the launchers' variables, and the rendezvous failures (a port in use, a rank that never comes).
 *
 * The sampler's expected indices were recorded from torch 1.13.1 (python3-torch):
 *   DistributedSampler(range(n), num_replicas=W, rank=r, shuffle=s, seed=seed, drop_last=d);
 *   sampler.set_epoch(epoch); list(sampler)
 */
#include "ddp_worker.h"
#include "helpers.h"

typedef struct sampler_case {
    int64_t n, world, rank;
    bool shuffle;
    uint64_t seed;
    int64_t epoch;
    bool drop_last;
    int64_t len;
    int64_t idx[16];
} sampler_case;

static const sampler_case sampler_cases[] = {
    {10, 3, 0, false, 0, 0, false, 4, {0, 3, 6, 9}},
    {10, 3, 1, false, 0, 0, false, 4, {1, 4, 7, 0}},
    {10, 3, 2, false, 0, 0, false, 4, {2, 5, 8, 1}},
    {10, 3, 0, false, 0, 0, true, 3, {0, 3, 6}},
    {10, 3, 1, false, 0, 0, true, 3, {1, 4, 7}},
    {10, 3, 2, false, 0, 0, true, 3, {2, 5, 8}},
    {10, 3, 0, true, 0, 0, false, 4, {4, 5, 0, 2}},
    {10, 3, 1, true, 0, 0, false, 4, {1, 3, 8, 4}},
    {10, 3, 2, true, 0, 0, false, 4, {7, 9, 6, 1}},
    {10, 3, 0, true, 7, 2, false, 4, {0, 7, 9, 3}},
    {10, 3, 1, true, 7, 2, false, 4, {5, 6, 1, 0}},
    {10, 3, 2, true, 7, 2, false, 4, {8, 2, 4, 5}},
    {10, 4, 0, true, 42, 1, true, 2, {8, 5}},
    {10, 4, 1, true, 42, 1, true, 2, {4, 1}},
    {10, 4, 2, true, 42, 1, true, 2, {9, 6}},
    {10, 4, 3, true, 42, 1, true, 2, {0, 7}},
    {2, 3, 0, false, 0, 0, false, 1, {0}},
    {2, 3, 1, false, 0, 0, false, 1, {1}},
    {2, 3, 2, false, 0, 0, false, 1, {0}},
    {23, 2, 0, true, 0, 5, false, 12, {3, 18, 22, 6, 1, 7, 15, 14, 20, 10, 19, 5}},
    {23, 2, 1, true, 0, 5, false, 12, {11, 8, 21, 16, 13, 17, 12, 9, 0, 2, 4, 3}},
    {5, 8, 0, true, 3, 0, false, 1, {1}},
    {5, 8, 1, true, 3, 0, false, 1, {0}},
    {5, 8, 2, true, 3, 0, false, 1, {3}},
    {5, 8, 3, true, 3, 0, false, 1, {4}},
    {5, 8, 4, true, 3, 0, false, 1, {2}},
    {5, 8, 5, true, 3, 0, false, 1, {1}},
    {5, 8, 6, true, 3, 0, false, 1, {0}},
    {5, 8, 7, true, 3, 0, false, 1, {3}},
};

static void test_sampler_matches_torch(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof sampler_cases / sizeof *sampler_cases; c++) {
        const sampler_case *k = &sampler_cases[c];
        int64_t got[16] = {0};
        int64_t n = em_distributed_sampler_indices(k->n, k->world, k->rank, k->shuffle, k->seed, k->epoch,
                                                   k->drop_last, got, 16);
        if (n != k->len)
            fail_msg("case %zu: %lld indices, torch has %lld", c, (long long)n, (long long)k->len);
        for (int64_t i = 0; i < n; i++)
            if (got[i] != k->idx[i])
                fail_msg("case %zu (n %lld, W %lld, rank %lld): index %lld is %lld, torch's is %lld", c,
                         (long long)k->n, (long long)k->world, (long long)k->rank, (long long)i, (long long)got[i],
                         (long long)k->idx[i]);
        /* sizing call */
        assert_int_equal(em_distributed_sampler_indices(k->n, k->world, k->rank, k->shuffle, k->seed, k->epoch,
                                                        k->drop_last, NULL, 0),
                         k->len);
    }
}

static void test_sampler_rejects_bad_arguments(void **state)
{
    (void)state;
    assert_int_equal(em_distributed_sampler_indices(10, 0, 0, false, 0, 0, false, NULL, 0), -1);
    assert_error_contains("world_size");
    em_clear_error();
    assert_int_equal(em_distributed_sampler_indices(10, 2, 2, false, 0, 0, false, NULL, 0), -1);
    em_clear_error();
    assert_int_equal(em_distributed_sampler_indices(-1, 2, 0, false, 0, 0, false, NULL, 0), -1);
    em_clear_error();
}

static void test_config_checks(void **state)
{
    (void)state;
    em_trainer_config c = EM_TRAINER_CONFIG_INIT;
    assert_int_equal(c.devices, 0);
    assert_int_equal(c.num_nodes, 1);
    assert_int_equal(c.strategy, EM_STRATEGY_AUTO);
    assert_int_equal(c.accelerator, EM_ACCELERATOR_AUTO);
    assert_true(c.use_distributed_sampler);
    assert_close(c.ddp_timeout, 60.0, 0, 0);
    c.devices = -1;
    assert_null(em_trainer_new(&c));
    assert_error_contains("devices");
    em_clear_error();
    c = (em_trainer_config)EM_TRAINER_CONFIG_INIT;
    c.num_nodes = 0;
    assert_null(em_trainer_new(&c));
    assert_error_contains("num_nodes");
    em_clear_error();
    c = (em_trainer_config)EM_TRAINER_CONFIG_INIT;
    c.ddp_timeout = 0;
    assert_null(em_trainer_new(&c));
    assert_error_contains("ddp_timeout");
    em_clear_error();
    c = (em_trainer_config)EM_TRAINER_CONFIG_INIT;
    c.strategy = EM_STRATEGY_SINGLE;
    c.devices = 2;
    assert_null(em_trainer_new(&c));
    assert_error_contains("single");
    em_clear_error();
}

/* the getters read the launchers' variables at em_trainer_new (Lightning's cluster environments) */
static void test_rank_getters_from_variables(void **state)
{
    (void)state;
    em_trainer_config c = EM_TRAINER_CONFIG_INIT;
    em_trainer *t = em_trainer_new(&c);
    assert_nonnull_em(t);
    assert_int_equal(em_trainer_global_rank(t), 0);
    assert_int_equal(em_trainer_world_size(t), 1);
    assert_true(em_trainer_is_global_zero(t));
    assert_ok(em_trainer_barrier(t)); /* one process: nothing to wait for */
    char buf[4] = "abc";
    assert_ok(em_trainer_broadcast(t, buf, sizeof buf, 0));
    bool d = false;
    assert_ok(em_trainer_reduce_boolean_decision(t, true, false, &d)); /* one process: its own decision */
    assert_true(d);
    assert_ok(em_trainer_reduce_boolean_decision(t, false, true, &d));
    assert_false(d);
    assert_int_equal(em_trainer_reduce_boolean_decision(t, true, true, NULL), EM_EINVAL);
    em_clear_error();
    em_trainer_free(t);

    /* torchrun: 2 nodes x 2 */
    setenv("RANK", "3", 1);
    setenv("GROUP_RANK", "1", 1);
    setenv("LOCAL_RANK", "1", 1);
    setenv("LOCAL_WORLD_SIZE", "2", 1);
    setenv("WORLD_SIZE", "4", 1);
    t = em_trainer_new(&c);
    assert_int_equal(em_trainer_global_rank(t), 3);
    assert_int_equal(em_trainer_local_rank(t), 1);
    assert_int_equal(em_trainer_node_rank(t), 1);
    assert_int_equal(em_trainer_world_size(t), 4);
    assert_false(em_trainer_is_global_zero(t));
    em_trainer_free(t);
    unsetenv("RANK");
    unsetenv("GROUP_RANK");
    unsetenv("LOCAL_WORLD_SIZE");
    unsetenv("WORLD_SIZE");
    unsetenv("LOCAL_RANK");

    /* SLURM: 2 tasks on 2 nodes */
    setenv("SLURM_NTASKS", "2", 1);
    setenv("SLURM_PROCID", "1", 1);
    setenv("SLURM_LOCALID", "0", 1);
    setenv("SLURM_NODEID", "1", 1);
    setenv("SLURM_JOB_NAME", "train", 1);
    t = em_trainer_new(&c);
    assert_int_equal(em_trainer_global_rank(t), 1);
    assert_int_equal(em_trainer_node_rank(t), 1);
    assert_int_equal(em_trainer_world_size(t), 2);
    assert_string_equal(em_trainer_main_address(t), "127.0.0.1"); /* no SLURM_NODELIST */
    assert_int_equal(em_trainer_main_port(t), 12910);                /* no SLURM_JOB_ID */
    em_trainer_free(t);
    /* SLURMEnvironment.resolve_root_node_address (expected values: what its re.sub steps give in Python)
     * and main_port (Lightning 2.2.5: 15000 + the last 4
     * digits of the job id) */
    static const char *const hosts[][2] = {
        {"node[1-3,5],other", "node1"}, {"host0 host1 host3", "host0"}, {"host0,host1", "host0"},
        {"host[5-9]", "host5"},          {"node[7]", "node7"},            {"a[09-11],b[2]", "a09"},
        {"127.0.0.[1-2]", "127.0.0.1"},  {"gpu[1,4]-ib", "gpu1-ib"},         {"x[1]y[2-3]", "x1]y[2"},
    };
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
        setenv("SLURM_NODELIST", hosts[i][0], 1);
        t = em_trainer_new(&c);
        assert_non_null(t);
        assert_string_equal(em_trainer_main_address(t), hosts[i][1]);
        em_trainer_free(t);
    }
    setenv("SLURM_JOB_ID", "1234567", 1);
    t = em_trainer_new(&c);
    assert_int_equal(em_trainer_main_port(t), 15000 + 4567);
    em_trainer_free(t);
    setenv("SLURM_JOB_ID", "42", 1);
    setenv("MASTER_ADDR", "10.1.2.3", 1);
    t = em_trainer_new(&c);
    assert_int_equal(em_trainer_main_port(t), 15042);
    assert_string_equal(em_trainer_main_address(t), "10.1.2.3"); /* MASTER_ADDR first */
    em_trainer_free(t);
    setenv("MASTER_PORT", "23456", 1);
    t = em_trainer_new(&c);
    assert_int_equal(em_trainer_main_port(t), 23456); /* MASTER_PORT first */
    em_trainer_free(t);
    unsetenv("MASTER_PORT");
    unsetenv("MASTER_ADDR");
    unsetenv("SLURM_JOB_ID");
    unsetenv("SLURM_NODELIST");
    /* devices 0 (auto) takes --ntasks-per-node */
    setenv("SLURM_NTASKS_PER_NODE", "2", 1);
    setenv("SLURM_NTASKS", "4", 1);
    setenv("SLURM_NNODES", "2", 1);
    c.num_nodes = 2;
    t = em_trainer_new(&c);
    assert_int_equal(em_trainer_world_size(t), 4);
    em_trainer_free(t);
    c.num_nodes = 1;
    unsetenv("SLURM_NTASKS_PER_NODE");
    unsetenv("SLURM_NNODES");
    assert_null(em_trainer_main_address(NULL));
    em_clear_error();
    unsetenv("SLURM_NTASKS");
    unsetenv("SLURM_PROCID");
    unsetenv("SLURM_LOCALID");
    unsetenv("SLURM_NODEID");
    unsetenv("SLURM_JOB_NAME");

    /* ember's own launcher with devices = 2: the world before any process is started */
    c.devices = 2;
    t = em_trainer_new(&c);
    assert_int_equal(em_trainer_world_size(t), 2);
    assert_int_equal(em_trainer_global_rank(t), 0);
    assert_int_equal(em_trainer_barrier(t), EM_ESTATE); /* the group is made by fit */
    em_clear_error();
    em_trainer_free(t);
}

/* ---- rendezvous failures, each in a child process (the store it opens lives until exit) ---------- */

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

/* rank 0 of 2 (torchrun's variables) fits with `timeout`; the message goes to `msg`. Returns fit's status. */
static em_status fit_as_rank0_of_2(int port, double timeout, char *msg, size_t cap)
{
    char p[32];
    snprintf(p, sizeof p, "%d", port);
    setenv("RANK", "0", 1);
    setenv("GROUP_RANK", "0", 1);
    setenv("LOCAL_RANK", "0", 1);
    setenv("LOCAL_WORLD_SIZE", "2", 1);
    setenv("WORLD_SIZE", "2", 1);
    setenv("MASTER_ADDR", "127.0.0.1", 1);
    setenv("MASTER_PORT", p, 1);
    static const em_module_ops ops = {.version = EM_MODULE_OPS_VERSION, .training_step = tiny_step,
                                      .configure_optimizers = tiny_configure};
    struct tiny m = {.base = {.ops = &ops}, .net = em_nn_linear(2, 1, true)};
    em_tensor *x = em_zeros((int64_t[]){4, 2}, 2, NULL), *y = em_zeros((int64_t[]){4, 1}, 2, NULL);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, y}, 2, NULL);
    em_trainer_config c = EM_TRAINER_CONFIG_INIT;
    c.max_epochs = 1;
    c.enable_progress_bar = false;
    c.enable_csv_logger = false;
    c.ddp_timeout = timeout;
    em_trainer *t = em_trainer_new(&c);
    em_status s = em_trainer_fit(t, &m.base, l, NULL);
    snprintf(msg, cap, "%s", em_trainer_error(t));
    em_trainer_free(t);
    em_loader_free(l);
    em_tensor_free(x);
    em_tensor_free(y);
    em_nn_free(m.net);
    return s;
}

/* One fit of the tiny module with `c`; fit's message goes to `msg`. */
static em_status fit_tiny(const em_trainer_config *c, char *msg, size_t cap)
{
    static const em_module_ops ops = {.version = EM_MODULE_OPS_VERSION, .training_step = tiny_step,
                                      .configure_optimizers = tiny_configure};
    struct tiny m = {.base = {.ops = &ops}, .net = em_nn_linear(2, 1, true)};
    em_tensor *x = em_zeros((int64_t[]){4, 2}, 2, NULL), *y = em_zeros((int64_t[]){4, 1}, 2, NULL);
    em_loader *l = em_tensor_loader((em_tensor *[]){x, y}, 2, NULL);
    em_trainer *t = em_trainer_new(c);
    em_status s = em_trainer_fit(t, &m.base, l, NULL);
    snprintf(msg, cap, "%s", em_trainer_error(t));
    em_trainer_free(t);
    em_loader_free(l);
    em_tensor_free(x);
    em_tensor_free(y);
    em_nn_free(m.net);
    return s;
}

/* SLURMEnvironment.validate_settings: srun's tasks per node and nodes against devices and num_nodes,
 * checked before any rendezvous */
static void test_slurm_settings_mismatch(void **state)
{
    (void)state;
    setenv("SLURM_NTASKS", "2", 1);
    setenv("SLURM_PROCID", "0", 1);
    setenv("SLURM_LOCALID", "0", 1);
    setenv("SLURM_NODEID", "0", 1);
    setenv("SLURM_NTASKS_PER_NODE", "2", 1);
    em_trainer_config c = EM_TRAINER_CONFIG_INIT;
    c.max_epochs = 1;
    c.enable_progress_bar = false;
    c.enable_csv_logger = false;
    c.devices = 1;
    char msg[1024];
    assert_int_equal(fit_tiny(&c, msg, sizeof msg), EM_EINVAL);
    assert_non_null(strstr(msg, "`--ntasks-per-node=2` does not match. HINT: Set `devices=2`."));
    em_clear_error();
    c.devices = 2;
    setenv("SLURM_NNODES", "2", 1);
    assert_int_equal(fit_tiny(&c, msg, sizeof msg), EM_EINVAL);
    assert_non_null(strstr(msg, "`--nodes=2` does not match. HINT: Set `num_nodes=2`."));
    em_clear_error();
    unsetenv("SLURM_NNODES");
    unsetenv("SLURM_NTASKS_PER_NODE");
    unsetenv("SLURM_NODEID");
    unsetenv("SLURM_LOCALID");
    unsetenv("SLURM_PROCID");
    unsetenv("SLURM_NTASKS");
}

/* Run `body` in a child; its message comes back through a pipe. Returns the child's exit code. */
static int in_child(int (*body)(char *, size_t, int), int arg, char *msg, size_t cap, double limit_s)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        char m[1024] = "";
        int rc = body(m, sizeof m, arg);
        if (write(fds[1], m, strlen(m)) < 0)
            rc = 99;
        close(fds[1]);
        _exit(rc);
    }
    close(fds[1]);
    int st = wait_deadline(pid, now_s() + limit_s);
    ssize_t n = read(fds[0], msg, cap - 1);
    msg[n > 0 ? n : 0] = '\0';
    close(fds[0]);
    assert_int_not_equal(st, -1);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 100;
}

static int port_in_use_body(char *msg, size_t cap, int port)
{
    return fit_as_rank0_of_2(port, 5.0, msg, cap) == EM_OK ? 0 : 1;
}

static void test_port_in_use(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY), .sin_port = 0};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 1), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    char msg[1024];
    int rc = in_child(port_in_use_body, ntohs(a.sin_port), msg, sizeof msg, 60);
    close(fd);
    print_message("%s\n", msg);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(msg, "already in use"));
    assert_non_null(strstr(msg, "MASTER_PORT"));
}

static int lonely_body(char *msg, size_t cap, int port)
{
    return fit_as_rank0_of_2(port, 2.0, msg, cap) == EM_OK ? 0 : 1;
}

static void test_rank_that_never_comes(void **state)
{
    (void)state;
    char msg[1024];
    double t0 = now_s();
    int rc = in_child(lonely_body, free_port(), msg, sizeof msg, 60);
    print_message("after %.1f s: %s\n", now_s() - t0, msg);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(msg, "could not join the process group"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sampler_matches_torch, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_sampler_rejects_bad_arguments, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_config_checks, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_rank_getters_from_variables, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_slurm_settings_mismatch, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_port_in_use, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_rank_that_never_comes, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
