/* ddp_worker.h: what the DDP tests share - starting processes with a deadline, free ports, two ranks
 * started with torchrun's variables, and the result files the ranks write. Included by tests/ddp/test_*.c (one translation unit
 * each: everything here is static). */
#ifndef EMBER_DDP_WORKER_H
#define EMBER_DDP_WORKER_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ember.h>

extern char **environ;

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A port nobody listens on now (bound to port 0, then released): MASTER_PORT for the tests that
 * set torchrun's variables themselves, so that parallel ctest runs do not collide. */
static inline int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* Start `path argv...` with the environment minus every rank variable, plus `extra` (NULL-terminated
 * "NAME=value" strings). Returns the pid. */
static inline pid_t spawn(const char *path, char *const argv[], char *const extra[])
{
    static const char *const drop[] = {"RANK=", "LOCAL_RANK=", "GROUP_RANK=", "LOCAL_WORLD_SIZE=", "WORLD_SIZE=",
                                       "NODE_RANK=", "MASTER_ADDR=", "MASTER_PORT=", "SLURM_", "TORCHELASTIC_",
                                       "EMBER_TEST_"};
    size_t n = 0, m = 0;
    while (environ[n] != NULL)
        n++;
    while (extra != NULL && extra[m] != NULL)
        m++;
    char **envp = calloc(n + m + 1, sizeof *envp);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool keep = true;
        for (size_t d = 0; d < sizeof drop / sizeof *drop; d++)
            keep &= strncmp(environ[i], drop[d], strlen(drop[d])) != 0;
        if (keep)
            envp[k++] = environ[i];
    }
    for (size_t i = 0; i < m; i++)
        envp[k++] = extra[i];
    envp[k] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        execve(path, argv, envp);
        _exit(127);
    }
    free(envp);
    return pid;
}

/* Wait for `pid` until `deadline` (now_s() seconds); kill it past that. Returns the wait status, or
 * -1 when it had to be killed. */
static inline int wait_deadline(pid_t pid, double deadline)
{
    int st;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        if (r < 0)
            return -2;
        if (now_s() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        nanosleep(&(struct timespec){.tv_nsec = 20 * 1000 * 1000}, NULL);
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* Remove a test's temporary directory and everything in it. */
static inline void rm_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the result file one rank writes ------------------------------------------------------------ */

#define MAX_W 256

typedef struct rank_result {
    bool present;
    int status;
    long long rank, world, steps, allreduces;
    long long from_rank1; /* what em_trainer_broadcast brought from rank 1 after fit (-1: not run) */
    long long decisions;  /* em_trainer_reduce_boolean_decision of "rank == 1" after fit: any * 2 + all
                             (-1: not run) */
    double metric_mean, metric_max, metric_local;
    int n_w;
    double w[MAX_W];
    char error[1024];
} rank_result;

static inline void result_write(const char *path, const rank_result *r)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return;
    fprintf(f, "%d %lld %lld %lld %lld %lld %lld %.9g %.9g %.9g %d\n", r->status, r->rank, r->world, r->steps,
            r->allreduces, r->from_rank1, r->decisions, r->metric_mean, r->metric_max, r->metric_local, r->n_w);
    for (int i = 0; i < r->n_w; i++)
        fprintf(f, "%.9g\n", r->w[i]);
    fprintf(f, "%s\n", r->error);
    fclose(f);
}

static inline bool result_read(const char *path, rank_result *r)
{
    memset(r, 0, sizeof *r);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    bool ok = fscanf(f, "%d %lld %lld %lld %lld %lld %lld %lf %lf %lf %d\n", &r->status, &r->rank, &r->world,
                     &r->steps, &r->allreduces, &r->from_rank1, &r->decisions, &r->metric_mean, &r->metric_max,
                     &r->metric_local, &r->n_w) == 11 &&
              r->n_w >= 0 && r->n_w <= MAX_W;
    for (int i = 0; ok && i < r->n_w; i++)
        ok = fscanf(f, "%lf\n", &r->w[i]) == 1;
    if (ok && fgets(r->error, sizeof r->error, f) == NULL)
        r->error[0] = '\0';
    r->error[strcspn(r->error, "\n")] = '\0';
    fclose(f);
    r->present = ok;
    return ok;
}

/* OUT.<rank>: where a rank started with result prefix OUT writes its result. */
static inline void result_write_rank(const char *out, const rank_result *r)
{
    char path[1024];
    snprintf(path, sizeof path, "%s.%lld", out, r->rank);
    result_write(path, r);
}

/* Up to `per_param` evenly spaced values of each of net's parameters (all of a parameter with no more
 * than that), in order, into r->w, as long as MAX_W allows. */
static inline void result_take_weights(rank_result *r, em_nn *net, int64_t per_param)
{
    for (size_t i = 0; i < em_nn_num_parameters(net); i++) {
        em_tensor *p = em_nn_parameter(net, i);
        int64_t k = em_tensor_numel(p), stride = k > per_param ? k / per_param : 1;
        float *buf = malloc((size_t)k * sizeof *buf);
        if (buf == NULL || em_tensor_copy_to(p, buf, (size_t)k * sizeof *buf, EM_F32) != EM_OK) {
            free(buf);
            return;
        }
        for (int64_t j = 0; j < k && j / stride < per_param && r->n_w < MAX_W; j += stride)
            r->w[r->n_w++] = buf[j];
        free(buf);
    }
}

/* ---- a module: MSE of net(x) against y, SGD --------------------------------------------------------- */

/* The regression module the multi-rank tests train: batch (x, y), loss mse(net(x), y), one SGD optimizer
 * at lr with momentum. Set base.ops to &mse_module_ops (or a copy with more hooks) and base.layers = net. */
typedef struct mse_module {
    em_module base;
    em_nn *net;
    double lr, momentum;
} mse_module;

static inline em_tensor *mse_module_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    mse_module *mm = (mse_module *)m;
    return em_mse_loss(em_nn_forward(mm->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
}

static inline em_status mse_module_configure(em_module *m, em_optim_setup *setup)
{
    mse_module *mm = (mse_module *)m;
    em_params *ps = em_nn_parameters(mm->net);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = mm->lr, .momentum = mm->momentum});
    em_params_free(ps);
    return em_optim_setup_add(setup, opt);
}

static const em_module_ops mse_module_ops = {.version = EM_MODULE_OPS_VERSION,
                                             .training_step = mse_module_step,
                                             .configure_optimizers = mse_module_configure};

/* ---- two ranks started as torchrun starts them ------------------------------------------------------- */

/* Starts argv[0] twice as `nodes` (1 or 2) x (2 / nodes) processes with torchrun's variables (RANK,
 * LOCAL_RANK, GROUP_RANK, LOCAL_WORLD_SIZE, WORLD_SIZE=2, MASTER_ADDR=127.0.0.1, MASTER_PORT a port free
 * now) plus `extra` (one more NAME=VALUE, or NULL), and waits for both until `seconds` from now (a rank
 * still running then is killed). st[r]: rank r's wait status, -1 when killed by the deadline. Returns
 * true when both exited with status 0. */
static inline bool spawn_torchrun_pair(char *const argv[], int nodes, const char *extra, double seconds, int st[2])
{
    int port = free_port();
    st[0] = st[1] = -1;
    if (port <= 0 || (nodes != 1 && nodes != 2))
        return false;
    double t0 = now_s();
    pid_t pids[2];
    int per_node = 2 / nodes;
    char vars[2][8][64];
    for (int r = 0; r < 2; r++) {
        snprintf(vars[r][0], 64, "RANK=%d", r);
        snprintf(vars[r][1], 64, "LOCAL_RANK=%d", r % per_node);
        snprintf(vars[r][2], 64, "GROUP_RANK=%d", r / per_node);
        snprintf(vars[r][3], 64, "LOCAL_WORLD_SIZE=%d", per_node);
        snprintf(vars[r][4], 64, "WORLD_SIZE=2");
        snprintf(vars[r][5], 64, "MASTER_ADDR=127.0.0.1");
        snprintf(vars[r][6], 64, "MASTER_PORT=%d", port);
        snprintf(vars[r][7], 64, "%s", extra != NULL ? extra : "");
        char *env[] = {vars[r][0], vars[r][1], vars[r][2], vars[r][3], vars[r][4], vars[r][5], vars[r][6],
                       extra != NULL ? vars[r][7] : NULL, NULL};
        pids[r] = spawn(argv[0], argv, env);
    }
    for (int r = 0; r < 2; r++)
        st[r] = wait_deadline(pids[r], t0 + seconds);
    return st[0] != -1 && st[1] != -1 && WIFEXITED(st[0]) && WEXITSTATUS(st[0]) == 0 && WIFEXITED(st[1]) &&
           WEXITSTATUS(st[1]) == 0;
}

#endif /* EMBER_DDP_WORKER_H */
