/* distributed.c: which rank this process is, the launcher of the other local ranks, and the process
 * group's life (one per process, kept until exit, as torch.distributed's default group).
 *
 * Lightning: plugins/environments/torchelastic.py, slurm.py, lightning.py (which variables say the
 *            ranks), strategies/launchers/subprocess_script.py (_SubprocessScriptLauncher: rank 0
 *            re-runs the program for local ranks 1..N-1 with MASTER_ADDR, MASTER_PORT, NODE_RANK,
 *            LOCAL_RANK, WORLD_SIZE set; kill() on failure), strategies/ddp.py (setup_environment,
 *            setup_distributed, _get_process_group_backend), trainer/connectors/accelerator_connector.py
 *            (strategy "auto"), fabric/utilities/distributed.py (_init_dist_connection's banner,
 *            _get_default_process_group_backend_for_device: "nccl" for a CUDA device, else "gloo").
 * POSIX: fork + execve of /proc/self/exe, prctl(PR_SET_PDEATHSIG), waitpid.
 */
#define _GNU_SOURCE /* prctl, environ, gethostname */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "distributed.h"

extern char **environ;

/* ---- the process's distributed state (one process group per process) ---------------------------------- */

enum { MAX_CHILDREN = 256 };

static struct {
    bool joined;          /* the process group exists */
    bool broken;          /* a collective failed: the group cannot be trusted again */
    int64_t rank, world;  /* what it was joined as */
    em_process_group_backend backend; /* and with which backend */
    double *pids, *hosts; /* per rank: pid and host hash, exchanged after joining */
    pid_t children[MAX_CHILDREN];
    int64_t child_rank[MAX_CHILDREN];
    int child_status[MAX_CHILDREN]; /* wait status once reaped */
    bool child_reaped[MAX_CHILDREN];
    size_t n_children;
    double timeout;
    bool atexit_set;
} g_dist;

/* ---- the environment --------------------------------------------------------------------------------- */

/* An integer variable: false when set but not an integer >= 0 (t->env.bad says which). */
static bool env_int(emi_dist_env *e, const char *name, int64_t *out, bool *present)
{
    const char *v = getenv(name);
    *present = v != NULL && *v != '\0';
    if (!*present)
        return true;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno != 0 || *end != '\0' || x < 0) {
        if (e->bad[0] == '\0')
            snprintf(e->bad, sizeof e->bad, "the environment variable %s=\"%s\" is not a non-negative integer", name,
                     v);
        return false;
    }
    *out = x;
    return true;
}

static int64_t env_int_or(emi_dist_env *e, const char *name, int64_t dflt)
{
    bool present;
    int64_t v = dflt;
    if (!env_int(e, name, &v, &present) || !present)
        return dflt;
    return v;
}

/* Lightning's SLURMEnvironment.resolve_root_node_address, its three steps on the same text:
 *   re.sub(r"\[(.*?)[,-].*\]", r"\1", nodes)  the first node of a range: "node[1-3,5]" -> "node1"
 *   re.sub(r"\[(.*?)\]", r"\1", nodes)        a one-number range: "node[7]" -> "node7"
 *   nodes.split(" ")[0].split(",")[0]         the first of a space or comma separated list
 * So "node[1-3,5],other[2]" -> "node1", "host0 host1" -> "host0", "127.0.0.[1-2]" -> "127.0.0.1". The
 * regular expressions are followed literally (a match runs from a '[' to the first ',' or '-' after
 * it and on to the LAST ']' after that, as `.*` is greedy), quirks included. */
static void slurm_first_host(const char *list, char *out, size_t cap)
{
    size_t n = strlen(list);
    char *a = malloc(n + 1), *b = malloc(n + 1);
    if (a == NULL || b == NULL || cap == 0) {
        free(a);
        free(b);
        if (cap > 0)
            snprintf(out, cap, "%s", list);
        return;
    }
    /* step 1: [ (group) [,-] anything ] with the group lazy and "anything" greedy */
    size_t o = 0, i = 0;
    while (i < n) {
        if (list[i] == '[') { /* `.` stops at a newline */
            size_t sep = i + 1, close = n;
            while (sep < n && list[sep] != ',' && list[sep] != '-' && list[sep] != '\n')
                sep++;
            if (sep < n && list[sep] != '\n')
                for (size_t k = sep + 1; k < n && list[k] != '\n'; k++)
                    if (list[k] == ']')
                        close = k;
            if (close < n) {
                memcpy(a + o, list + i + 1, sep - i - 1);
                o += sep - i - 1;
                i = close + 1;
                continue;
            }
        }
        a[o++] = list[i++];
    }
    a[o] = '\0';
    /* step 2: [ (group) ] with the group lazy */
    size_t m = o;
    o = 0;
    i = 0;
    while (i < m) {
        if (a[i] == '[') {
            size_t close = i + 1;
            while (close < m && a[close] != ']' && a[close] != '\n')
                close++;
            if (close < m && a[close] == ']') {
                memcpy(b + o, a + i + 1, close - i - 1);
                o += close - i - 1;
                i = close + 1;
                continue;
            }
        }
        b[o++] = a[i++];
    }
    b[o] = '\0';
    /* step 3: up to the first space, then up to the first comma */
    b[strcspn(b, " ")] = '\0';
    b[strcspn(b, ",")] = '\0';
    snprintf(out, cap, "%s", b);
    free(a);
    free(b);
}

void emi_dist_env_read(em_trainer *t)
{
    emi_dist_env *e = &t->env;
    const em_trainer_config *c = &t->cfg;
    memset(e, 0, sizeof *e);
    e->port = -1;
    int64_t devices = c->devices > 0 ? c->devices : 1, nodes = c->num_nodes > 0 ? c->num_nodes : 1;
    const char *addr = getenv("MASTER_ADDR");
    snprintf(e->addr, sizeof e->addr, "%s", addr != NULL && *addr != '\0' ? addr : "127.0.0.1");
    e->port = env_int_or(e, "MASTER_PORT", -1);
    bool p_rank, p_group, p_local, p_lws, p_world;
    int64_t rank = 0, group = 0, local = 0, lws = 1, world = 1;
    env_int(e, "RANK", &rank, &p_rank);
    env_int(e, "GROUP_RANK", &group, &p_group);
    env_int(e, "LOCAL_RANK", &local, &p_local);
    env_int(e, "LOCAL_WORLD_SIZE", &lws, &p_lws);
    env_int(e, "WORLD_SIZE", &world, &p_world);
    const char *slurm_ntasks = getenv("SLURM_NTASKS");
    const char *job_name = getenv("SLURM_JOB_NAME");
    bool slurm = slurm_ntasks != NULL && *slurm_ntasks != '\0' &&
                 !(job_name != NULL && (strcmp(job_name, "bash") == 0 || strcmp(job_name, "interactive") == 0));
    if (slurm) { /* SLURMEnvironment.detected (checked first by Lightning) */
        e->kind = EMI_ENV_SLURM;
        e->world = env_int_or(e, "SLURM_NTASKS", 1);
        e->rank = env_int_or(e, "SLURM_PROCID", 0);
        e->local_rank = env_int_or(e, "SLURM_LOCALID", 0);
        e->node_rank = env_int_or(e, "SLURM_NODEID", 0);
        /* SLURMEnvironment.validate_settings: --ntasks-per-node must be `devices`, --nodes `num_nodes`;
         * ember's devices 0 (auto) takes the tasks per node instead (Lightning's "auto" is 1 on the CPU) */
        bool p_tpn, p_nn;
        int64_t tpn = 0, nn = 0;
        env_int(e, "SLURM_NTASKS_PER_NODE", &tpn, &p_tpn);
        env_int(e, "SLURM_NNODES", &nn, &p_nn);
        e->local_world = c->devices <= 0 && p_tpn && tpn > 0 ? tpn : devices;
        if (p_tpn && c->devices > 0 && tpn != c->devices && e->bad[0] == '\0')
            snprintf(e->bad, sizeof e->bad,
                     "you set `devices=%lld`, but the number of tasks per node configured in SLURM "
                     "`--ntasks-per-node=%lld` does not match. HINT: Set `devices=%lld`.",
                     (long long)c->devices, (long long)tpn, (long long)tpn);
        if (p_nn && nn != nodes && e->bad[0] == '\0')
            snprintf(e->bad, sizeof e->bad,
                     "you set `num_nodes=%lld`, but the number of nodes configured in SLURM `--nodes=%lld` does "
                     "not match. HINT: Set `num_nodes=%lld`.",
                     (long long)nodes, (long long)nn, (long long)nn);
        /* main_address: MASTER_ADDR, else the first host of SLURM_NODELIST (default "127.0.0.1") */
        const char *nodes_list = getenv("SLURM_NODELIST");
        if (addr == NULL || *addr == '\0')
            slurm_first_host(nodes_list != NULL ? nodes_list : "127.0.0.1", e->addr, sizeof e->addr);
        if (e->port < 0) { /* main_port: MASTER_PORT, else 15000 + the job id's last 4 digits, else 12910 */
            const char *job = getenv("SLURM_JOB_ID");
            size_t n = job != NULL ? strlen(job) : 0;
            char *end = NULL;
            long tail = n > 0 ? strtol(job + (n > 4 ? n - 4 : 0), &end, 10) : -1;
            if (n > 0 && (end == NULL || *end != '\0' || tail < 0) && e->bad[0] == '\0')
                snprintf(e->bad, sizeof e->bad,
                         "SLURM_JOB_ID=\"%s\" does not end in digits: set MASTER_PORT", job);
            e->port = n > 0 && tail >= 0 ? 15000 + tail : 12910;
        }
    } else if (p_rank && p_group && p_local && p_lws) { /* TorchElasticEnvironment.detected */
        e->kind = EMI_ENV_TORCHELASTIC;
        e->world = p_world ? world : 1;
        e->rank = rank;
        e->local_rank = local;
        e->node_rank = group;
        e->local_world = lws;
        const char *agent = getenv("TORCHELASTIC_USE_AGENT_STORE");
        e->agent_store = agent != NULL && strcmp(agent, "True") == 0;
    } else if (p_local) { /* LightningEnvironment: a rank started by a launcher (ember's own) */
        e->kind = EMI_ENV_LAUNCHED;
        e->node_rank = env_int_or(e, "NODE_RANK", env_int_or(e, "GROUP_RANK", 0));
        e->local_rank = local;
        e->local_world = devices;
        e->world = p_world ? world : devices * nodes;
        e->rank = e->node_rank * devices + local;
    } else {
        e->kind = EMI_ENV_NONE;
        e->node_rank = env_int_or(e, "NODE_RANK", env_int_or(e, "GROUP_RANK", 0));
        e->local_world = devices;
        e->world = devices * nodes;
        e->rank = e->node_rank * devices;
    }
}

/* ---- the launcher ------------------------------------------------------------------------------------ */

/* Reap the launched ranks that ended; `block_s` > 0 waits that long for all, then kills the rest. */
static void reap_children(double block_s)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        bool left = false;
        for (size_t i = 0; i < g_dist.n_children; i++) {
            if (g_dist.child_reaped[i])
                continue;
            int st;
            pid_t p = waitpid(g_dist.children[i], &st, WNOHANG);
            if (p == g_dist.children[i] || (p < 0 && errno == ECHILD)) {
                g_dist.child_reaped[i] = true;
                g_dist.child_status[i] = p > 0 ? st : 0;
            } else {
                left = true;
            }
        }
        if (!left || block_s <= 0)
            return;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((double)(now.tv_sec - start.tv_sec) + 1e-9 * (double)(now.tv_nsec - start.tv_nsec) > block_s) {
            for (size_t i = 0; i < g_dist.n_children; i++)
                if (!g_dist.child_reaped[i])
                    kill(g_dist.children[i], SIGKILL);
            block_s = 0.001; /* one more pass collects them */
            start = now;
        }
        nanosleep(&(struct timespec){.tv_nsec = 20 * 1000 * 1000}, NULL);
    }
}

/* At exit of the launching rank: the others run the same program and end with it; collect them
 * (no zombie, no orphan), killing those still running after the timeout. */
static void reap_at_exit(void)
{
    reap_children(g_dist.timeout > 0 ? g_dist.timeout : 60.0);
}

/* This program's arguments, as the kernel keeps them (/proc/self/cmdline); NULL on failure (recorded). */
static char **read_argv(char **buf_out)
{
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        emi_fail(EM_ERROR, "the DDP launcher cannot read /proc/self/cmdline: %s", strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (buf == NULL)
            break;
        ssize_t r = read(fd, buf + len, cap - len);
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    close(fd);
    if (buf == NULL) {
        emi_fail(EM_ENOMEM, "the DDP launcher: out of memory");
        return NULL;
    }
    buf[len] = '\0';
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += buf[i] == '\0';
    char **argv = calloc(n + 1, sizeof *argv);
    if (argv == NULL) {
        free(buf);
        emi_fail(EM_ENOMEM, "the DDP launcher: out of memory");
        return NULL;
    }
    for (size_t i = 0, k = 0; i < len && k < n; k++) {
        argv[k] = buf + i;
        i += strlen(buf + i) + 1;
    }
    *buf_out = buf;
    return argv;
}

static bool is_rank_variable(const char *kv)
{
    static const char *const names[] = {"MASTER_ADDR=", "MASTER_PORT=", "NODE_RANK=", "LOCAL_RANK=", "WORLD_SIZE="};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strncmp(kv, names[i], strlen(names[i])) == 0)
            return true;
    return false;
}

/* Lightning's _SubprocessScriptLauncher._call_children_scripts: local ranks 1..N-1 run this program
 * again from the top, with the rank variables set. Everything is built before fork: the child only
 * calls prctl, getppid, execve and _exit. */
static em_status launch_children(const emi_dist_env *e, int port, double timeout)
{
    if (e->local_world - 1 > MAX_CHILDREN)
        return emi_fail(EM_EINVAL, "devices=%lld: ember's launcher starts at most %d ranks per node",
                        (long long)e->local_world, MAX_CHILDREN + 1);
    char *argbuf = NULL;
    char **argv = read_argv(&argbuf);
    if (argv == NULL)
        return em_last_status();
    size_t n_env = 0;
    while (environ[n_env] != NULL)
        n_env++;
    enum { N_OURS = 5, VAR_LEN = 320 };
    char **envp = calloc(n_env + N_OURS + 1, sizeof *envp);
    char(*ours)[VAR_LEN] = calloc(N_OURS, VAR_LEN);
    em_status s = EM_OK;
    if (envp == NULL || ours == NULL) {
        s = emi_fail(EM_ENOMEM, "the DDP launcher: out of memory");
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; i < n_env; i++)
        if (!is_rank_variable(environ[i]))
            envp[k++] = environ[i];
    snprintf(ours[0], VAR_LEN, "MASTER_ADDR=%s", e->addr);
    snprintf(ours[1], VAR_LEN, "MASTER_PORT=%d", port);
    snprintf(ours[2], VAR_LEN, "NODE_RANK=%lld", (long long)e->node_rank);
    snprintf(ours[3], VAR_LEN, "WORLD_SIZE=%lld", (long long)e->world);
    for (int i = 0; i < 4; i++)
        envp[k++] = ours[i];
    size_t local_slot = k++;
    envp[k] = NULL;
    envp[local_slot] = ours[4];
    pid_t parent = getpid();
    for (int64_t lr = 1; lr < e->local_world; lr++) {
        snprintf(ours[4], VAR_LEN, "LOCAL_RANK=%lld", (long long)lr);
        fflush(NULL); /* buffered output is not written twice */
        pid_t pid = fork();
        if (pid < 0) {
            s = emi_fail(EM_ERROR, "the DDP launcher cannot start local rank %lld: fork: %s", (long long)lr,
                         strerror(errno));
            break;
        }
        if (pid == 0) {
            /* the child dies with the launching thread: no orphan survives a crashed rank 0 */
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(1);
            execve("/proc/self/exe", argv, envp);
            _exit(127);
        }
        size_t c = g_dist.n_children++;
        g_dist.children[c] = pid;
        g_dist.child_rank[c] = e->node_rank * e->local_world + lr;
        g_dist.child_reaped[c] = false;
    }
    g_dist.timeout = timeout;
    if (!g_dist.atexit_set && g_dist.n_children > 0)
        g_dist.atexit_set = atexit(reap_at_exit) == 0;
out:
    free(ours);
    free(envp);
    free(argv);
    free(argbuf);
    return s;
}

void emi_dist_fit_failed(em_trainer *t)
{
    (void)t;
    if (g_dist.joined)
        g_dist.broken = true; /* the other ranks may be anywhere in their collectives */
    if (g_dist.n_children == 0)
        return;
    for (size_t i = 0; i < g_dist.n_children; i++)
        if (!g_dist.child_reaped[i])
            kill(g_dist.children[i], SIGKILL);
    reap_children(5.0);
    g_dist.broken = true;
}

/* ---- joining ------------------------------------------------------------------------------------------- */

static double host_hash(void)
{
    char name[256] = "";
    gethostname(name, sizeof name - 1);
    uint32_t h = 2166136261u; /* FNV-1a: exact in a double */
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return (double)h;
}

/* Every rank's pid and host, so that a failure can name the rank that is gone. */
static em_status exchange_pids(int64_t rank, int64_t world)
{
    double *v = calloc((size_t)(2 * world), sizeof *v);
    if (v == NULL)
        return emi_fail(EM_ENOMEM, "out of memory");
    v[rank] = (double)getpid();
    v[world + rank] = host_hash();
    em_status s = emi_dist_allreduce_f64(v, (size_t)(2 * world), EMI_DIST_SUM);
    if (s != EM_OK) {
        free(v);
        return s;
    }
    free(g_dist.pids);
    g_dist.pids = v;
    g_dist.hosts = v + world;
    return EM_OK;
}

static const char *env_name(emi_env_kind k)
{
    switch (k) {
    case EMI_ENV_SLURM:
        return "SLURM";
    case EMI_ENV_TORCHELASTIC:
        return "torchrun";
    case EMI_ENV_LAUNCHED:
        return "ember's launcher";
    default:
        return "the trainer config";
    }
}

/* Lightning's accelerator connector: strategy "auto" is ddp with more than one process. */
static em_status resolve_strategy(em_trainer *t)
{
    emi_dist_env *e = &t->env;
    const em_trainer_config *c = &t->cfg;
    if (e->bad[0] != '\0')
        return emi_fail(EM_EINVAL, "em_trainer_fit: %s", e->bad);
    if (e->kind == EMI_ENV_TORCHELASTIC && c->devices > 0 && c->devices != e->local_world)
        return emi_fail(EM_EINVAL, "em_trainer_fit: devices=%lld but torchrun started %lld processes on this node "
                                   "(LOCAL_WORLD_SIZE): set devices to %lld or leave it 0 (auto)",
                        (long long)c->devices, (long long)e->local_world, (long long)e->local_world);
    if (e->kind != EMI_ENV_NONE && c->num_nodes > 1 && e->world != c->num_nodes * e->local_world)
        return emi_fail(EM_EINVAL, "em_trainer_fit: num_nodes=%lld with %lld processes per node makes %lld ranks, "
                                   "but %s says the world size is %lld",
                        (long long)c->num_nodes, (long long)e->local_world,
                        (long long)(c->num_nodes * e->local_world), env_name(e->kind), (long long)e->world);
    if (e->rank >= e->world)
        return emi_fail(EM_EINVAL, "em_trainer_fit: rank %lld is not below the world size %lld (%s)",
                        (long long)e->rank, (long long)e->world, env_name(e->kind));
    switch (c->strategy) {
    case EM_STRATEGY_SINGLE:
        if (e->world > 1)
            return emi_fail(EM_EINVAL, "em_trainer_fit: strategy \"single\" runs one process, but %s asks for %lld "
                                       "(devices x num_nodes or the launcher's WORLD_SIZE): use EM_STRATEGY_DDP or "
                                       "AUTO", env_name(e->kind), (long long)e->world);
        e->distributed = false;
        break;
    case EM_STRATEGY_DDP:
        e->distributed = true;
        break;
    default:
        e->distributed = e->world > 1;
    }
    return EM_OK;
}

const char *em_process_group_backend_name(em_process_group_backend b)
{
    switch (b) {
    case EM_PG_BACKEND_AUTO:
        return "auto";
    case EM_PG_BACKEND_GLOO:
        return "gloo";
    case EM_PG_BACKEND_NCCL:
        return "nccl";
    }
    return "?";
}

bool em_process_group_backend_available(em_process_group_backend b)
{
    switch (b) {
    case EM_PG_BACKEND_AUTO:
        return true;
    case EM_PG_BACKEND_GLOO:
        return emi_dist_backend_available(EMI_DIST_GLOO);
    case EM_PG_BACKEND_NCCL:
        return emi_dist_backend_available(EMI_DIST_NCCL);
    }
    return false;
}

/* Lightning's DDPStrategy._get_process_group_backend: the configured one, else NCCL for a CUDA root
 * device and Gloo otherwise. NCCL is refused here, before any process group exists, where it cannot
 * work: a libtorch without it, or a fit on the CPU (torch would fail only at the first collective). */
static em_status resolve_backend(em_trainer *t)
{
    em_process_group_backend want = t->cfg.process_group_backend;
    bool cuda = t->fit.device.type == EM_CUDA;
    bool nccl = em_process_group_backend_available(EM_PG_BACKEND_NCCL);
    if (want == EM_PG_BACKEND_NCCL) {
        if (!nccl)
            return emi_fail(EM_EUNSUPPORTED, "em_trainer_fit: process_group_backend \"nccl\": the linked libtorch %s "
                                             "was built without NCCL (torch.distributed.is_nccl_available() is "
                                             "False): use EM_PG_BACKEND_GLOO or AUTO, or link a libtorch built with "
                                             "CUDA and NCCL", em_torch_version());
        if (!cuda)
            return emi_fail(EM_EINVAL, "em_trainer_fit: process_group_backend \"nccl\" all-reduces GPU tensors, but "
                                       "this fit runs on the CPU (accelerator %s): use EM_PG_BACKEND_GLOO or AUTO "
                                       "(Gloo), or accelerator=EM_ACCELERATOR_CUDA",
                            t->cfg.accelerator == EM_ACCELERATOR_CPU ? "cpu" : "auto, and no GPU is visible");
        t->env.backend = EM_PG_BACKEND_NCCL;
    } else if (want == EM_PG_BACKEND_GLOO || !cuda) {
        t->env.backend = EM_PG_BACKEND_GLOO;
    } else if (nccl) {
        t->env.backend = EM_PG_BACKEND_NCCL;
    } else {
        t->env.backend = EM_PG_BACKEND_GLOO;
        if (t->env.rank == 0)
            emi_info("DDP on CUDA with Gloo: the linked libtorch %s was built without NCCL", em_torch_version());
    }
    return EM_OK;
}

em_status emi_dist_setup(em_trainer *t)
{
    em_status s = resolve_strategy(t);
    emi_dist_env *e = &t->env;
    e->backend = EM_PG_BACKEND_AUTO;
    if (s != EM_OK || !e->distributed)
        return s;
    if ((s = resolve_backend(t)) != EM_OK) {
        e->backend = EM_PG_BACKEND_AUTO;
        return s;
    }
    double timeout = t->cfg.ddp_timeout;
    if (g_dist.joined) {
        if (!g_dist.broken && g_dist.backend != e->backend)
            return emi_fail(EM_EINVAL, "em_trainer_fit: this process joined its process group with %s; a DDP fit "
                                       "with %s needs a new process", em_process_group_backend_name(g_dist.backend),
                            em_process_group_backend_name(e->backend));
        if (g_dist.broken)
            return emi_fail(EM_ESTATE, "em_trainer_fit: the process group of an earlier fit failed; a new DDP fit "
                                       "needs a new process (run the program again)");
        if (g_dist.rank != e->rank || g_dist.world != e->world)
            return emi_fail(EM_EINVAL, "em_trainer_fit: this process joined its process group as rank %lld of %lld; "
                                       "a fit as rank %lld of %lld needs a new process",
                            (long long)g_dist.rank, (long long)g_dist.world, (long long)e->rank,
                            (long long)e->world);
        return EM_OK;
    }
    bool launch = e->kind == EMI_ENV_NONE && e->local_world > 1;
    bool server = e->rank == 0 && !e->agent_store;
    int port = (int)e->port;
    if (port < 0) {
        if (e->kind == EMI_ENV_NONE && e->world == e->local_world)
            port = 0; /* one node, ember launches: the store binds a free port and tells the others */
        else
            return emi_fail(EM_EINVAL, "em_trainer_fit: DDP over %lld nodes needs MASTER_PORT (and MASTER_ADDR) "
                                       "set to the rendezvous address of node 0", (long long)(e->world / e->local_world));
    }
    int bound = port;
    if ((s = emi_dist_store_open(e->addr, port, server, (int)e->world, timeout, &bound)) != EM_OK)
        return s;
    if (launch && (s = launch_children(e, bound, timeout)) != EM_OK) {
        emi_dist_fit_failed(t);
        return s;
    }
    bool nccl = e->backend == EM_PG_BACKEND_NCCL;
    int cuda_device = t->fit.device.type == EM_CUDA ? t->fit.device.index : -1;
    if ((s = emi_dist_group_open(e->addr, (int)e->rank, (int)e->world, timeout, nccl ? EMI_DIST_NCCL : EMI_DIST_GLOO,
                                 cuda_device)) != EM_OK) {
        char msg[768];
        snprintf(msg, sizeof msg, "%s", em_last_error());
        em_clear_error();
        emi_fail(s, "rank %lld of %lld could not join the process group at %s:%d within %g s (are all %lld ranks "
                    "running?): %s", (long long)e->rank, (long long)e->world, e->addr, bound, timeout,
                 (long long)e->world, msg);
        if (launch)
            emi_dist_fit_failed(t);
        return s;
    }
    g_dist.joined = true;
    g_dist.rank = e->rank;
    g_dist.world = e->world;
    g_dist.backend = e->backend;
    if ((s = exchange_pids(e->rank, e->world)) != EM_OK) {
        g_dist.broken = true;
        return emi_dist_explain(t, s, "the first collective");
    }
    if (e->rank == 0) /* Lightning's _init_dist_connection banner, once per process as there */
        emi_info("distributed_backend=%s: All distributed processes registered. Starting with %lld processes",
                 em_process_group_backend_name(e->backend), (long long)e->world);
    return EM_OK;
}

/* ---- naming the rank that is gone ------------------------------------------------------------------------- */

/* Why rank r (pid p on this host) is gone, or "" while it runs. */
static void rank_gone(int64_t r, pid_t pid, char *out, size_t cap)
{
    out[0] = '\0';
    for (size_t i = 0; i < g_dist.n_children; i++) {
        if (g_dist.children[i] != pid)
            continue;
        reap_children(0);
        if (!g_dist.child_reaped[i])
            return;
        int st = g_dist.child_status[i];
        if (WIFSIGNALED(st))
            snprintf(out, cap, "rank %lld (pid %d) was killed by signal %d (%s)", (long long)r, (int)pid,
                     WTERMSIG(st), strsignal(WTERMSIG(st)));
        else
            snprintf(out, cap, "rank %lld (pid %d) exited with status %d", (long long)r, (int)pid,
                     WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        return;
    }
    char path[64], stat[512] = "";
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        size_t n = fread(stat, 1, sizeof stat - 1, f);
        stat[n] = '\0';
        fclose(f);
    }
    const char *paren = strrchr(stat, ')');
    char state = paren != NULL && paren[1] == ' ' ? paren[2] : '?';
    if (f == NULL || state == 'Z' || state == 'X')
        snprintf(out, cap, "rank %lld (pid %d) has exited", (long long)r, (int)pid);
}

em_status emi_dist_explain(em_trainer *t, em_status s, const char *what)
{
    char orig[700];
    snprintf(orig, sizeof orig, "%s", emi_has_error() ? em_last_error() : "");
    g_dist.broken = true;
    char gone[512] = "";
    if (g_dist.pids != NULL) {
        double me = host_hash();
        /* the kernel may close a killed rank's sockets a moment before it shows the process as gone */
        for (int tries = 0; tries < 25 && gone[0] == '\0'; tries++) {
            for (int64_t r = 0; r < g_dist.world; r++) {
                if (r == g_dist.rank || g_dist.hosts[r] != me)
                    continue;
                char one[160];
                rank_gone(r, (pid_t)g_dist.pids[r], one, sizeof one);
                if (one[0] != '\0' && strlen(gone) + strlen(one) + 3 < sizeof gone) {
                    if (gone[0] != '\0')
                        strcat(gone, "; ");
                    strcat(gone, one);
                }
            }
            if (gone[0] == '\0')
                nanosleep(&(struct timespec){.tv_nsec = 40 * 1000 * 1000}, NULL);
        }
    }
    em_clear_error();
    if (gone[0] != '\0')
        emi_fail(s, "%s failed on rank %lld: %s (%s)", what, (long long)t->env.rank, gone, orig);
    else
        emi_fail(s, "%s failed on rank %lld (a peer rank failed, was killed, or did not answer within the %g s "
                    "ddp_timeout): %s", what, (long long)t->env.rank, t->cfg.ddp_timeout, orig);
    return s;
}

/* ---- the public getters and collectives -------------------------------------------------------------------- */

int64_t em_trainer_global_rank(const em_trainer *t) { return !emi_trainer_ok(t, __func__) ? -1 : t->env.rank; }
int64_t em_trainer_local_rank(const em_trainer *t) { return !emi_trainer_ok(t, __func__) ? -1 : t->env.local_rank; }
int64_t em_trainer_node_rank(const em_trainer *t) { return !emi_trainer_ok(t, __func__) ? -1 : t->env.node_rank; }
int64_t em_trainer_world_size(const em_trainer *t) { return !emi_trainer_ok(t, __func__) ? -1 : t->env.world; }
bool em_trainer_is_global_zero(const em_trainer *t) { return emi_trainer_ok(t, __func__) && t->env.rank == 0; }

const char *em_trainer_main_address(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? NULL : t->env.addr;
}

int64_t em_trainer_main_port(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? -2 : t->env.port;
}

em_process_group_backend em_trainer_process_group_backend(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? EM_PG_BACKEND_AUTO : t->env.backend;
}

int64_t em_trainer_grad_allreduces(const em_trainer *t)
{
    return !emi_trainer_ok(t, __func__) ? -1 : t->grad_allreduces;
}

/* A collective for user code: a no-op in one process; EM_ESTATE before the group exists. */
static em_status user_collective_ready(const em_trainer *t, const char *fn)
{
    if (t == NULL)
        return emi_fail(EM_EINVAL, "%s: the trainer is NULL", fn);
    if (!emi_trainer_ok(t, fn))
        return EM_EMISUSE;
    if (t->env.world <= 1 && !emi_dist_active())
        return EM_OK;
    if (!emi_dist_active())
        return emi_fail(EM_ESTATE, "%s: the process group is made when the first DDP fit starts; call this from "
                                   "a hook or after em_trainer_fit", fn);
    return EM_OK;
}

em_status em_trainer_barrier(em_trainer *t)
{
    em_status s = user_collective_ready(t, "em_trainer_barrier");
    if (s != EM_OK || !emi_dist_active())
        return s;
    if ((s = emi_dist_barrier()) != EM_OK)
        return emi_dist_explain(t, s, "em_trainer_barrier");
    return EM_OK;
}

em_status em_trainer_broadcast(em_trainer *t, void *buf, size_t size, int64_t root)
{
    em_status s = user_collective_ready(t, "em_trainer_broadcast");
    if (s != EM_OK || !emi_dist_active())
        return s;
    if (buf == NULL && size > 0)
        return emi_fail(EM_EINVAL, "em_trainer_broadcast: buf is NULL");
    if (root < 0 || root >= g_dist.world)
        return emi_fail(EM_EINVAL, "em_trainer_broadcast: root %lld is not a rank (world size %lld)",
                        (long long)root, (long long)g_dist.world);
    if ((s = emi_dist_broadcast_bytes(buf, size, (int)root)) != EM_OK)
        return emi_dist_explain(t, s, "em_trainer_broadcast");
    return EM_OK;
}

em_status emi_dist_share_rank0_status(em_trainer *t, em_status s, const char *who)
{
    if (!t->env.distributed || t->env.world <= 1 || !emi_dist_active())
        return s;
    int32_t outcome = (int32_t)s;
    char msg[512] = "";
    if (t->env.rank == 0 && s != EM_OK)
        snprintf(msg, sizeof msg, "%s", em_last_error());
    em_status b = emi_dist_broadcast_bytes(&outcome, sizeof outcome, 0);
    if (b == EM_OK)
        b = emi_dist_broadcast_bytes(msg, sizeof msg, 0);
    if (b != EM_OK)
        return emi_dist_explain(t, b, who);
    if (t->env.rank != 0 && outcome != EM_OK) {
        em_clear_error();
        return emi_fail((em_status)outcome, "%s: rank 0 failed: %s", who, msg);
    }
    return s;
}

/* Lightning: ParallelStrategy.reduce_boolean_decision: the decisions summed over the ranks (an
 * all-reduce), then == world size (all) or > 0 (any) */
em_status em_trainer_reduce_boolean_decision(em_trainer *t, bool decision, bool all, bool *out)
{
    if (out == NULL)
        return emi_fail(EM_EINVAL, "em_trainer_reduce_boolean_decision: out is NULL");
    *out = decision;
    em_status s = user_collective_ready(t, "em_trainer_reduce_boolean_decision");
    if (s != EM_OK || !emi_dist_active())
        return s;
    double sum = decision ? 1.0 : 0.0;
    if ((s = emi_dist_allreduce_f64(&sum, 1, EMI_DIST_SUM)) != EM_OK)
        return emi_dist_explain(t, s, "em_trainer_reduce_boolean_decision");
    *out = all ? sum == (double)g_dist.world : sum > 0.0;
    return EM_OK;
}
