/* test_ddp_train.c: DDP on c10d Gloo, 2 processes on 127.0.0.1.
 *
 * The same binary is the test (CMocka, in the parent) and the ranks: `test_ddp_train worker MODE OUT`
 * trains as one rank and writes OUT.<rank> (ddp_worker.h). The ranks come from ember's own launcher
 * (devices = 2, no variables: rank 0 re-executes this program), from torchrun's variables set here,
 * as 2 nodes x 1 process, from srun's (SLURM's) variables set here, or from the real torchrun when
 * python3-torch installed it.
 *
 * What is compared: every rank's final weights against ONE process trained on the same global
 * batches: the training loader's DistributedSampler shuffles (Lightning's, seed 0 + epoch), so rank r
 * takes perm[r], perm[r + 2], ... of 32 rows; its batch k of 4 rows together with the other rank's is
 * perm[8k..8k+7], the single process's batch k of 8 when its loader shuffles with the same seed.
 * |diff| <= 1e-5 + 1e-5 |w| (float32 sums in another order). The ranks start from different random weights (seeded with their rank): equal
 * results also prove rank 0's broadcast. Gradient all-reduces are counted per rank.
 */
#include "ddp_worker.h"
#include "helpers.h"

#define ROWS 32
#define EPOCHS 3

static const char *self_exe = "/proc/self/exe";

/* ---- the model and the run ----------------------------------------------------------------------- */

struct net_module {
    em_module base;
    em_nn *net;
    const char *mode;
    int64_t rank;
};

static em_tensor *loss_of(struct net_module *n, const em_batch *b)
{
    return em_mse_loss(em_nn_forward(n->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
}

static em_tensor *auto_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    struct net_module *n = (struct net_module *)m;
    (void)batch_idx;
    if (strcmp(n->mode, "kill") == 0 && n->rank == 1 && em_trainer_current_epoch(em_module_trainer(m)) == 1 &&
        batch_idx == 2)
        raise(SIGKILL); /* mid-epoch: the other rank must end with a message naming this one */
    double r = (double)em_trainer_global_rank(em_module_trainer(m));
    em_log_ex(m, "rank_mean", r, &(em_log_opts){.flags = EM_LOG_SYNC_DIST | EM_LOG_ON_EPOCH | EM_LOG_NOT_ON_STEP});
    em_log_ex(m, "rank_max", r,
              &(em_log_opts){.flags = EM_LOG_SYNC_DIST | EM_LOG_ON_EPOCH | EM_LOG_NOT_ON_STEP,
                             .reduce_fx = EM_REDUCE_MAX});
    em_log_ex(m, "rank_local", r, &(em_log_opts){.flags = EM_LOG_ON_EPOCH | EM_LOG_NOT_ON_STEP});
    return loss_of(n, b);
}

/* "manual_toggle": backwards seen with an all-reduce count other than the one expected (none inside a
 * toggle_model(sync_grad=false) region, one per bucket in a syncing one); any makes the run fail. */
static int toggle_violations;

/* manual: every manual_backward syncs; "manual_nosync" accumulates two batches, the first inside a
 * no-sync region (Lightning's block_backward_sync), so one all-reduce per step; "manual_toggle" the
 * same through toggle_model (Lightning's docs: `with opt.toggle_model(sync_grad=is_last_batch)`),
 * checking the all-reduce count around each backward. */
static em_tensor *manual_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    struct net_module *n = (struct net_module *)m;
    em_optimizer *opt = em_optimizers(m, NULL)[0];
    em_tensor *loss = loss_of(n, b);
    if (strcmp(n->mode, "manual") == 0 || strcmp(n->mode, "manual_setnone") == 0) {
        /* manual_setnone: every backward makes its gradients anew (the reducer copies them into its
         * buckets); manual, on libtorch 1.13, zero-fills them in place (they stay the bucket views) */
        if (strcmp(n->mode, "manual") == 0)
            em_optimizer_zero_grad(opt);
        else
            em_optimizer_zero_grad_ex(opt, true);
        em_manual_backward(m, loss);
        em_optimizer_step(opt, NULL);
        return loss;
    }
    em_tensor *half = em_div(loss, em_scalar_tensor(2.0, NULL));
    if (strcmp(n->mode, "manual_toggle") == 0) {
        em_trainer *t = em_module_trainer(m);
        bool last = batch_idx % 2 == 1;
        if (em_toggle_model_begin(m, opt, last) != EM_OK)
            return NULL;
        int64_t before = em_trainer_grad_allreduces(t);
        em_manual_backward(m, half);
        if (em_trainer_grad_allreduces(t) - before != (last && em_trainer_world_size(t) > 1 ? 1 : 0))
            toggle_violations++;
        if (last) {
            em_optimizer_step(opt, NULL);
            em_optimizer_zero_grad(opt);
        }
        em_toggle_model_end(m, opt);
        return loss;
    }
    if (batch_idx % 2 == 0) {
        em_no_backward_sync_begin(m);
        em_manual_backward(m, half);
        em_no_backward_sync_end(m);
    } else {
        em_manual_backward(m, half);
        em_optimizer_step(opt, NULL);
        em_optimizer_zero_grad(opt);
    }
    return loss;
}

static em_status configure(em_module *m, em_optim_setup *setup)
{
    struct net_module *n = (struct net_module *)m;
    em_params *ps = em_nn_parameters(n->net);
    bool wide = strcmp(n->mode, "buckets") == 0; /* a 512-wide net diverges at lr 0.1 */
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = wide ? 0.01 : 0.1, .momentum = 0.9});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static const em_module_ops auto_ops = {.version = EM_MODULE_OPS_VERSION, .training_step = auto_step,
                                       .configure_optimizers = configure};
static const em_module_ops manual_ops = {.version = EM_MODULE_OPS_VERSION, .training_step = manual_step,
                                         .configure_optimizers = configure};

/* One run: distributed (ranks from the environment / launcher) or the single-process reference. */
static void run(const char *mode, bool reference, const char *root, rank_result *out)
{
    memset(out, 0, sizeof *out);
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = EPOCHS;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = root != NULL;
    cfg.default_root_dir = root;
    cfg.log_every_n_steps = 1;
    cfg.accumulate_grad_batches = strcmp(mode, "accum") == 0 ? 2 : 1;
    cfg.ddp_timeout = strcmp(mode, "kill") == 0 ? 15.0 : 60.0;
    if (!reference) {
        const char *d = getenv("EMBER_TEST_DEVICES"), *nn = getenv("EMBER_TEST_NODES");
        cfg.devices = d != NULL ? atoll(d) : 0;
        cfg.num_nodes = nn != NULL ? atoll(nn) : 1;
        cfg.strategy = EM_STRATEGY_DDP;
    }
    em_trainer *t = em_trainer_new(&cfg);
    if (t == NULL) {
        out->status = -1;
        snprintf(out->error, sizeof out->error, "em_trainer_new: %s", em_last_error());
        return;
    }
    out->rank = em_trainer_global_rank(t);
    out->world = em_trainer_world_size(t);
    em_manual_seed(1234 + (uint64_t)out->rank); /* different per rank: the broadcast makes them equal */
    bool manual = strncmp(mode, "manual", 6) == 0;
    struct net_module m = {.base = {.ops = manual ? &manual_ops : &auto_ops, .manual_optimization = manual},
                           .mode = mode, .rank = out->rank};
    if (strcmp(mode, "buckets") == 0) /* 1.0 MiB in the middle weight: two buckets, 1 MiB then the rest */
        m.net = em_nn_sequential((em_nn *[]){em_nn_linear(4, 512, true), em_nn_tanh(), em_nn_linear(512, 512, true),
                                             em_nn_tanh(), em_nn_linear(512, 1, true)},
                                 5);
    else
        m.net = em_nn_sequential((em_nn *[]){em_nn_linear(4, 8, true), em_nn_tanh(), em_nn_linear(8, 1, true)}, 3);
    m.base.layers = m.net;
    float xs[ROWS * 4], ys[ROWS];
    for (int i = 0; i < ROWS; i++) {
        for (int j = 0; j < 4; j++)
            xs[i * 4 + j] = (float)sin(0.37 * i + 1.3 * j);
        ys[i] = (float)cos(0.21 * i);
    }
    em_tensor *x = em_tensor_from(xs, EM_F32, (int64_t[]){ROWS, 4}, 2, NULL);
    em_tensor *y = em_tensor_from(ys, EM_F32, (int64_t[]){ROWS, 1}, 2, NULL);
    em_loader *train = em_tensor_loader((em_tensor *[]){x, y}, 2,
                                        &(em_loader_opts){.batch_size = reference ? 8 : 4, .shuffle = reference});
    toggle_violations = 0;
    out->status = em_trainer_fit(t, &m.base, train, NULL);
    snprintf(out->error, sizeof out->error, "%s", em_trainer_error(t));
    if (out->status == EM_OK && toggle_violations > 0) {
        out->status = -2;
        snprintf(out->error, sizeof out->error,
                 "%d backward(s) with an unexpected all-reduce count around em_toggle_model_begin/end",
                 toggle_violations);
    }
    out->steps = em_trainer_global_step(t);
    out->allreduces = em_trainer_grad_allreduces(t);
    out->from_rank1 = -1;
    out->decisions = -1;
    if (!reference && out->status == EM_OK) { /* the user collectives, after fit */
        int64_t v = out->rank == 1 ? 4242 : 7;
        if (em_trainer_barrier(t) == EM_OK && em_trainer_broadcast(t, &v, sizeof v, 1) == EM_OK &&
            em_trainer_barrier(t) == EM_OK)
            out->from_rank1 = v;
        bool any = false, all = true; /* rank 1 says yes, rank 0 no */
        if (em_trainer_reduce_boolean_decision(t, out->rank == 1, false, &any) == EM_OK &&
            em_trainer_reduce_boolean_decision(t, out->rank == 1, true, &all) == EM_OK)
            out->decisions = any * 2 + all;
    }
    em_trainer_callback_metric(t, "rank_mean", &out->metric_mean);
    em_trainer_callback_metric(t, "rank_max", &out->metric_max);
    em_trainer_callback_metric(t, "rank_local", &out->metric_local);
    result_take_weights(out, m.net, 32);
    em_loader_free(train);
    em_tensor_free(x);
    em_tensor_free(y);
    em_nn_free(m.net);
    em_trainer_free(t);
}

/* `test_ddp_train worker MODE OUT`: one rank. */
static int worker_main(const char *mode, const char *out)
{
    rank_result r;
    run(mode, false, out, &r);
    result_write_rank(out, &r);
    return r.status == 0 ? 0 : 1;
}

/* ---- the parent's side ------------------------------------------------------------------------------- */

typedef struct launch {
    const char *mode;
    char dir[256];
    char out[300];
    rank_result ranks[2];
    double seconds;
} launch;

static void launch_init(launch *l, const char *mode)
{
    memset(l, 0, sizeof *l);
    l->mode = mode;
    snprintf(l->dir, sizeof l->dir, "/tmp/ember-ddp-XXXXXX");
    assert_non_null(mkdtemp(l->dir));
    snprintf(l->out, sizeof l->out, "%s/out", l->dir);
}

static void launch_collect(launch *l)
{
    for (int r = 0; r < 2; r++) {
        char path[400];
        snprintf(path, sizeof path, "%s.%d", l->out, r);
        result_read(path, &l->ranks[r]);
    }
}

/* ember's launcher: one process with devices = 2; it starts rank 1 itself. */
static void launch_ember(launch *l)
{
    launch_init(l, l->mode);
    char *argv[] = {(char *)self_exe, "worker", (char *)l->mode, l->out, NULL};
    char *env[] = {"EMBER_TEST_DEVICES=2", NULL};
    double t0 = now_s();
    pid_t p = spawn(self_exe, argv, env);
    int st = wait_deadline(p, t0 + 150);
    l->seconds = now_s() - t0;
    assert_int_not_equal(st, -1); /* not killed by the deadline */
    /* rank 0 exits cleanly (under EMBER_SANITIZE a leak or an error report would make it fail) */
    if (strcmp(l->mode, "kill") != 0 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        fail_msg("rank 0 ended with wait status %#x", st);
    launch_collect(l);
}

/* torchrun's variables, set here: `nodes` x (2 / nodes) processes. */
static void launch_env(launch *l, int nodes)
{
    char nodes_var[64];
    snprintf(nodes_var, sizeof nodes_var, "EMBER_TEST_NODES=%d", nodes);
    char *argv[] = {(char *)self_exe, "worker", (char *)l->mode, l->out, NULL};
    double t0 = now_s();
    int st[2];
    if (!spawn_torchrun_pair(argv, nodes, nodes_var, 150, st))
        fail_msg("the ranks ended with wait statuses %#x and %#x (-1: killed at the deadline)", st[0], st[1]);
    l->seconds = now_s() - t0;
    launch_collect(l);
}

/* A port in [15000, 25000) that binds now: SLURM's ranks derive theirs from the job id. */
static int free_slurm_port(void)
{
    for (int k = 0; k < 200; k++) {
        int port = 15000 + (int)(((unsigned)getpid() * 7919u + (unsigned)k * 131u) % 10000u);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                .sin_port = htons((uint16_t)port)};
        bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        if (fd >= 0)
            close(fd);
        if (ok)
            return port;
    }
    return -1;
}

/* srun's variables, set here: `nodes` x (2 / nodes) tasks, every one on this host. No MASTER_ADDR or
 * MASTER_PORT: the ranks find the store as Lightning's SLURMEnvironment does, at the first host of
 * SLURM_NODELIST (`nodelist`, e.g. "127.0.0.[1-2]" -> 127.0.0.1) and port 15000 + the last 4 digits of
 * SLURM_JOB_ID (a job id made for a port that is free now). */
static void launch_slurm(launch *l, int nodes, const char *nodelist)
{
    int port = free_slurm_port();
    assert_true(port > 0);
    pid_t pids[2];
    double t0 = now_s();
    static char vars[2][12][64];
    for (int r = 0; r < 2; r++) {
        int per_node = 2 / nodes;
        snprintf(vars[r][0], 64, "SLURM_PROCID=%d", r);
        snprintf(vars[r][1], 64, "SLURM_LOCALID=%d", r % per_node);
        snprintf(vars[r][2], 64, "SLURM_NODEID=%d", r / per_node);
        snprintf(vars[r][3], 64, "SLURM_NTASKS=2");
        snprintf(vars[r][4], 64, "SLURM_NTASKS_PER_NODE=%d", per_node);
        snprintf(vars[r][5], 64, "SLURM_NNODES=%d", nodes);
        snprintf(vars[r][6], 64, "SLURM_NODELIST=%s", nodelist);
        snprintf(vars[r][7], 64, "SLURM_JOB_ID=77%04d", port - 15000);
        snprintf(vars[r][8], 64, "SLURM_JOB_NAME=train");
        snprintf(vars[r][9], 64, "EMBER_TEST_NODES=%d", nodes);
        snprintf(vars[r][10], 64, "EMBER_TEST_DEVICES=%d", per_node);
        char *env[] = {vars[r][0], vars[r][1], vars[r][2], vars[r][3], vars[r][4], vars[r][5],
                       vars[r][6], vars[r][7], vars[r][8], vars[r][9], vars[r][10], NULL};
        char *argv[] = {(char *)self_exe, "worker", (char *)l->mode, l->out, NULL};
        pids[r] = spawn(self_exe, argv, env);
    }
    for (int r = 0; r < 2; r++) {
        int st = wait_deadline(pids[r], t0 + 150);
        if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
            fail_msg("rank %d ended with wait status %#x", r, st);
    }
    l->seconds = now_s() - t0;
    launch_collect(l);
}

static void expect_equal_to_reference(launch *l)
{
    rank_result ref;
    run(l->mode, true, NULL, &ref);
    assert_int_equal(ref.status, 0);
    for (int r = 0; r < 2; r++) {
        rank_result *rr = &l->ranks[r];
        if (!rr->present)
            fail_msg("rank %d wrote no result (%s)", r, l->out);
        if (rr->status != 0)
            fail_msg("rank %d: fit failed: %s", r, rr->error);
        assert_int_equal(rr->rank, r);
        assert_int_equal(rr->world, 2);
        assert_int_equal(rr->from_rank1, 4242); /* em_trainer_broadcast from rank 1, between barriers */
        assert_int_equal(rr->decisions, 2);     /* one rank's yes: any true, all false, on both ranks */
        assert_int_equal(rr->steps, ref.steps);
        assert_int_equal(rr->n_w, ref.n_w);
        for (int i = 0; i < ref.n_w; i++)
            assert_close(rr->w[i], ref.w[i], 1e-5, 1e-5);
        /* two buckets for "buckets" (1 MiB, then the rest), else one: all-reduces per synced backward */
        if (strcmp(l->mode, "buckets") == 0)
            assert_int_equal(rr->allreduces, 2 * rr->steps);
        else if (strcmp(l->mode, "manual") == 0 || strcmp(l->mode, "auto") == 0 || strcmp(l->mode, "accum") == 0 ||
                 strcmp(l->mode, "manual_nosync") == 0 || strcmp(l->mode, "manual_toggle") == 0 ||
                 strcmp(l->mode, "manual_setnone") == 0)
            assert_int_equal(rr->allreduces, rr->steps);
    }
    assert_int_equal(ref.allreduces, 0);
}

static void test_ember_launcher_auto(void **state)
{
    (void)state;
    launch l = {.mode = "auto"};
    launch_ember(&l);
    expect_equal_to_reference(&l);
    /* sync_dist: mean and max over ranks 0 and 1; without it, each rank its own */
    for (int r = 0; r < 2; r++) {
        assert_close(l.ranks[r].metric_mean, 0.5, 0, 1e-7);
        assert_close(l.ranks[r].metric_max, 1.0, 0, 1e-7);
        assert_close(l.ranks[r].metric_local, (double)r, 0, 1e-7);
    }
    /* metrics.csv from rank 0 only: both ranks share the root directory */
    char path[512];
    struct stat sb;
    snprintf(path, sizeof path, "%s/lightning_logs/version_0/metrics.csv", l.out);
    assert_int_equal(stat(path, &sb), 0);
    snprintf(path, sizeof path, "%s/lightning_logs/version_1", l.out);
    assert_int_not_equal(stat(path, &sb), 0);
    rm_tree(l.dir);
}

static void test_ember_launcher_accumulate(void **state)
{
    (void)state;
    launch l = {.mode = "accum"};
    launch_ember(&l);
    expect_equal_to_reference(&l);
    rm_tree(l.dir);
}

static void test_ember_launcher_manual(void **state)
{
    (void)state;
    launch l = {.mode = "manual"};
    launch_ember(&l);
    expect_equal_to_reference(&l);
    rm_tree(l.dir);
}

static void test_ember_launcher_manual_set_to_none(void **state)
{
    (void)state;
    launch l = {.mode = "manual_setnone"};
    launch_ember(&l);
    expect_equal_to_reference(&l);
    rm_tree(l.dir);
}

static void test_ember_launcher_manual_no_sync(void **state)
{
    (void)state;
    launch l = {.mode = "manual_nosync"};
    launch_ember(&l);
    expect_equal_to_reference(&l);
    rm_tree(l.dir);
}

/* em_toggle_model_begin(sync_grad = is the stepping batch) / end: no all-reduce inside the regions
 * that do not sync, one in those that do; the weights equal one process's over the same batches. */
static void test_ember_launcher_manual_toggle_model(void **state)
{
    (void)state;
    launch l = {.mode = "manual_toggle"};
    launch_ember(&l);
    expect_equal_to_reference(&l);
    rm_tree(l.dir);
}

static void test_ember_launcher_two_buckets(void **state)
{
    (void)state;
    launch l = {.mode = "buckets"};
    launch_ember(&l);
    expect_equal_to_reference(&l);
    rm_tree(l.dir);
}

static void test_torchrun_variables(void **state)
{
    (void)state;
    launch l = {.mode = "accum"};
    launch_init(&l, "accum");
    launch_env(&l, 1);
    expect_equal_to_reference(&l);
    rm_tree(l.dir);
}

static void test_two_nodes_one_process_each(void **state)
{
    (void)state;
    launch l = {.mode = "auto"};
    launch_init(&l, "auto");
    launch_env(&l, 2);
    expect_equal_to_reference(&l);
    rm_tree(l.dir);
}

/* srun's variables: 1 node x 2 tasks, then 2 nodes x 1 task with a bracketed node list */
static void test_slurm_one_node(void **state)
{
    (void)state;
    launch l = {.mode = "accum"};
    launch_init(&l, "accum");
    launch_slurm(&l, 1, "127.0.0.1");
    expect_equal_to_reference(&l);
    rm_tree(l.dir);
}

static void test_slurm_two_nodes(void **state)
{
    (void)state;
    launch l = {.mode = "auto"};
    launch_init(&l, "auto");
    launch_slurm(&l, 2, "127.0.0.[1-2]");
    expect_equal_to_reference(&l);
    rm_tree(l.dir);
}

/* Whether the real torchrun can run here; says why not. It must be installed (Debian's python3-torch
 * ships /usr/bin/torchrun), and its Python torch must be able to open a TCPStore with its defaults:
 * Debian trixie's python3-torch 2.6 is built without libuv but its TCPStore asks for libuv by default
 * (USE_LIBUV=0 does not reach the one torchrun's rendezvous makes), so its torchrun fails before it
 * starts a rank ("use_libuv was requested but PyTorch was build without libuv support"). */
static bool torchrun_usable(void)
{
    if (access("/usr/bin/torchrun", X_OK) != 0) {
        print_message("skipped: /usr/bin/torchrun is not installed (Debian's python3-torch ships it)\n");
        return false;
    }
    int rc = system("/usr/bin/python3 -c 'from torch.distributed import TCPStore; "
                    "TCPStore(\"127.0.0.1\", 0, 1, True)' >/dev/null 2>&1");
    if (rc != 0) {
        print_message("skipped: this torchrun's torch cannot open a TCPStore with its defaults (Debian trixie's "
                      "python3-torch 2.6 is built without libuv and asks for it), so torchrun cannot start ranks "
                      "here\n");
        return false;
    }
    return true;
}

/* the real torchrun (Debian's python3-torch), static rendezvous: its agent hosts the store */
static void test_real_torchrun(void **state)
{
    (void)state;
    if (!torchrun_usable())
        skip();
    launch l;
    launch_init(&l, "manual");
    int port = free_port();
    char port_arg[64], exe[512];
    snprintf(port_arg, sizeof port_arg, "--master_port=%d", port);
    ssize_t n = readlink(self_exe, exe, sizeof exe - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    /* Debian's torchrun 1.13 on Python 3.11 fails on its default --redirects/--tee of 0 (IntFlag no longer
     * iterates NONE): give both as per-rank maps of stderr (2), which it does parse */
    char log_arg[400];
    snprintf(log_arg, sizeof log_arg, "--log_dir=%s/torchrun", l.dir);
    char *argv[] = {"/usr/bin/torchrun", "--no_python", /* 1.13 knows only this spelling */
                    "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1", port_arg,
                    "--redirects=0:2,1:2", "--tee=0:2,1:2", log_arg, exe, "worker", "manual", l.out, NULL};
    double t0 = now_s();
    pid_t p = spawn("/usr/bin/torchrun", argv, (char *[]){"OMP_NUM_THREADS=1", NULL});
    assert_int_not_equal(wait_deadline(p, t0 + 200), -1);
    launch_collect(&l);
    expect_equal_to_reference(&l);
    rm_tree(l.dir);
}

/* the real torchrun as 2 nodes x 1 process on 127.0.0.1: two agents, --node_rank 0 and 1 */
static void test_real_torchrun_two_nodes(void **state)
{
    (void)state;
    if (!torchrun_usable())
        skip();
    launch l;
    launch_init(&l, "auto");
    int port = free_port();
    char port_arg[64], exe[512], log_arg[2][400];
    snprintf(port_arg, sizeof port_arg, "--master_port=%d", port);
    ssize_t n = readlink(self_exe, exe, sizeof exe - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    pid_t p[2];
    double t0 = now_s();
    for (int node = 0; node < 2; node++) {
        snprintf(log_arg[node], sizeof log_arg[node], "--log_dir=%s/torchrun%d", l.dir, node);
        char *argv[] = {"/usr/bin/torchrun", "--no_python", "--nnodes=2", node == 0 ? "--node_rank=0" : "--node_rank=1",
                        "--nproc_per_node=1", "--master_addr=127.0.0.1", port_arg, "--redirects=0:2", "--tee=0:2",
                        log_arg[node], exe, "worker", "auto", l.out, NULL};
        p[node] = spawn("/usr/bin/torchrun", argv, (char *[]){"OMP_NUM_THREADS=1", "EMBER_TEST_NODES=2", NULL});
    }
    for (int node = 0; node < 2; node++)
        assert_int_not_equal(wait_deadline(p[node], t0 + 200), -1);
    launch_collect(&l);
    expect_equal_to_reference(&l);
    rm_tree(l.dir);
}

/* rank 1 is SIGKILLed mid-epoch: rank 0's fit returns within the timeout, naming rank 1 */
static void test_rank_killed(void **state)
{
    (void)state;
    launch l = {.mode = "kill"};
    launch_ember(&l);
    rank_result *r0 = &l.ranks[0];
    assert_true(r0->present);
    assert_int_not_equal(r0->status, 0);
    print_message("rank 0 after %.1f s: %s\n", l.seconds, r0->error);
    assert_non_null(strstr(r0->error, "rank 1"));
    assert_false(l.ranks[1].present); /* killed before writing */
    assert_true(l.seconds < 15.0 + 60.0);
    rm_tree(l.dir);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "worker") == 0)
        return worker_main(argv[2], argv[3]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ember_launcher_auto, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_ember_launcher_accumulate, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_ember_launcher_manual, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_ember_launcher_manual_set_to_none, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_ember_launcher_manual_no_sync, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_ember_launcher_manual_toggle_model, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_ember_launcher_two_buckets, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_torchrun_variables, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_two_nodes_one_process_each, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_slurm_one_node, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_slurm_two_nodes, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_real_torchrun, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_real_torchrun_two_nodes, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_rank_killed, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
