/* crash_resume.c: the crash test of issue 10 (label checkpoint): kill an example program with SIGKILL at
 * random moments, resume it with --resume last until it finishes, and compare its final --save-weights
 * file byte for byte with an uninterrupted run of the same arguments.
 *
 *   crash_resume WORKDIR KILLS PROGRAM [ARGS...]
 *
 * 1. PROGRAM ARGS --checkpoint-dir WORKDIR/ref-ckpt --save-weights WORKDIR/ref.safetensors (uninterrupted;
 *    its wall time T sizes the kill delays).
 * 2. PROGRAM ARGS --checkpoint-dir WORKDIR/run-ckpt --save-weights WORKDIR/run.safetensors, then with
 *    --resume last, KILLS times killed: even attempts at a random delay in [0, T/2) from the start of
 *    training (the first line the program prints), odd ones while a save is under way (as soon as a temporary file of the child's appears in the checkpoint directory; at a
 *    random delay when none shows within T). After every kill: every *.ckpt in the directory is a whole
 *    safetensors file (a killed save never leaves a partial file under a final name). Then one last
 *    attempt runs to its end.
 * 3. run.safetensors must equal ref.safetensors byte for byte; each resumed attempt that found a checkpoint
 *    must print "resumed from PATH at epoch E, batch B, global_step S" first.
 * The random choices come from a seed printed first (EMBER_CRASH_SEED=N reproduces them). Every child has
 * a hard timeout (300 s); a child that outlives it is killed and the test fails. Exit 0 = passed, 1 = failed.
 */
#define _POSIX_C_SOURCE 200809L

#include <ember.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { CHILD_TIMEOUT_S = 300, MAX_ARGS = 64 };

static uint64_t rng_state;

static uint64_t next_random(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static pid_t spawn(char *const argv[], const char *log_path)
{
    unlink(log_path); /* an earlier run's log must not read as this child's output */
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    char err_path[4200];
    snprintf(err_path, sizeof err_path, "%s.err", log_path);
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fe = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        close(fd);
    }
    if (fe >= 0) {
        dup2(fe, 2);
        close(fe);
    }
    execv(argv[0], argv);
    _exit(127);
}

/* Wait for pid until `deadline` (monotonic seconds); -1 when it is still running then. */
static int wait_until(pid_t pid, double deadline, int *status)
{
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid)
            return 0;
        if (r < 0 && errno != EINTR)
            return -2;
        if (now_s() >= deadline)
            return -1;
        sleep_s(0.0005);
    }
}

/* Wait until the child's stdout log holds a line (the examples print their header from on_fit_start:
 * training is about to start) or the child ends; false when it ended or `deadline` passed. */
static bool wait_for_output(const char *log_path, pid_t pid, double deadline, int *status, bool *ended)
{
    *ended = false;
    while (now_s() < deadline) {
        struct stat st;
        if (stat(log_path, &st) == 0 && st.st_size > 0) {
            FILE *f = fopen(log_path, "r");
            bool line = false;
            int c;
            while (f != NULL && !line && (c = fgetc(f)) != EOF)
                line = c == '\n';
            if (f != NULL)
                fclose(f);
            if (line)
                return true;
        }
        if (waitpid(pid, status, WNOHANG) == pid) {
            *ended = true;
            return false;
        }
        sleep_s(0.001);
    }
    return false;
}

/* Whether `dir` holds a temporary file of process `pid` (".NAME.tmp.PID.N.HOST"). */
static bool has_temp_of(const char *dir, pid_t pid)
{
    char needle[64];
    snprintf(needle, sizeof needle, ".tmp.%ld.", (long)pid);
    DIR *d = opendir(dir);
    if (d == NULL)
        return false;
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(d)) != NULL)
        found = e->d_name[0] == '.' && strstr(e->d_name, needle) != NULL;
    closedir(d);
    return found;
}

/* Every file ending in .ckpt in `dir` opens as a whole safetensors file; counts the temporaries. */
static bool checkpoints_whole(const char *dir, int *n_ckpt, int *n_tmp)
{
    *n_ckpt = *n_tmp = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return true;
    bool ok = true;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' && strstr(e->d_name, ".tmp.") != NULL)
            (*n_tmp)++;
        if (len < 5 || strcmp(e->d_name + len - 5, ".ckpt") != 0 || e->d_name[0] == '.')
            continue;
        (*n_ckpt)++;
        char p[4096 + 300];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        em_safetensors *f = em_safetensors_open(p);
        if (f == NULL) {
            fprintf(stderr, "crash_resume: FAIL: %s is not a whole safetensors file: %s\n", p, em_last_error());
            em_clear_error();
            ok = false;
        }
        em_safetensors_free(f);
    }
    closedir(d);
    return ok;
}

static bool same_bytes(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    bool same = fa != NULL && fb != NULL;
    long offset = 0;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb) {
            fprintf(stderr, "crash_resume: %s and %s differ at byte %ld\n", a, b, offset);
            same = false;
        }
        if (ca == EOF || cb == EOF)
            break;
        offset++;
    }
    if (fa == NULL || fb == NULL)
        fprintf(stderr, "crash_resume: cannot open %s or %s\n", a, b);
    if (fa != NULL)
        fclose(fa);
    if (fb != NULL)
        fclose(fb);
    return same;
}

static void dump_one(const char *path);

/* stdout's log and stderr's (".err") */
static void dump(const char *path)
{
    char err_path[4200];
    snprintf(err_path, sizeof err_path, "%s.err", path);
    dump_one(path);
    dump_one(err_path);
}

static void dump_one(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    fprintf(stderr, "---- %s ----\n", path);
    char line[1024];
    while (fgets(line, sizeof line, f) != NULL)
        fputs(line, stderr);
    fclose(f);
}

static bool first_line_is_resume(const char *log_path, char *line, size_t cap)
{
    FILE *f = fopen(log_path, "r");
    line[0] = '\0';
    if (f == NULL)
        return false;
    if (fgets(line, (int)cap, f) == NULL)
        line[0] = '\0';
    fclose(f);
    return strncmp(line, "resumed from /", 14) == 0 && strstr(line, " at epoch ") != NULL &&
           strstr(line, ", batch ") != NULL && strstr(line, ", global_step ") != NULL;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: crash_resume WORKDIR KILLS PROGRAM [ARGS...]\n");
        return 2;
    }
    const char *work = argv[1];
    int kills = atoi(argv[2]);
    int n_user = argc - 3;
    if (n_user + 8 > MAX_ARGS)
        return 2;
    const char *seed_env = getenv("EMBER_CRASH_SEED");
    uint64_t seed = seed_env != NULL ? strtoull(seed_env, NULL, 10) : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
    rng_state = seed;
    printf("crash_resume: seed %llu (rerun with EMBER_CRASH_SEED=%llu), %d kills of %s\n", (unsigned long long)seed,
           (unsigned long long)seed, kills, argv[3]);
    fflush(stdout);
    mkdir(work, 0777);

    char ref_dir[4096], run_dir[4096], ref_w[4096], run_w[4096], log[4096];
    snprintf(ref_dir, sizeof ref_dir, "%s/ref-ckpt", work);
    snprintf(run_dir, sizeof run_dir, "%s/run-ckpt", work);
    snprintf(ref_w, sizeof ref_w, "%s/ref.safetensors", work);
    snprintf(run_w, sizeof run_w, "%s/run.safetensors", work);
    /* a fresh start: remove what an earlier run of the test left */
    const char *old_dirs[] = {ref_dir, run_dir};
    for (int i = 0; i < 2; i++) {
        DIR *d = opendir(old_dirs[i]);
        if (d != NULL) {
            struct dirent *e;
            while ((e = readdir(d)) != NULL) {
                char p[8300];
                snprintf(p, sizeof p, "%s/%s", old_dirs[i], e->d_name);
                unlink(p);
            }
            closedir(d);
        }
    }
    unlink(ref_w);
    unlink(run_w);

    char *args[MAX_ARGS];
    int n = 0;
    for (int i = 3; i < argc; i++)
        args[n++] = argv[i];
    int base = n;

    /* 1. the uninterrupted run */
    args[n++] = "--checkpoint-dir";
    args[n++] = ref_dir;
    args[n++] = "--save-weights";
    args[n++] = ref_w;
    args[n] = NULL;
    snprintf(log, sizeof log, "%s/ref.log", work);
    double t0 = now_s();
    pid_t pid = spawn(args, log);
    int status = 0;
    bool ended = false;
    double t_started = now_s();
    if (pid > 0 && wait_for_output(log, pid, t0 + CHILD_TIMEOUT_S, &status, &ended))
        t_started = now_s();
    if (pid < 0 || (!ended && wait_until(pid, t0 + CHILD_TIMEOUT_S, &status) != 0) || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        if (pid > 0)
            kill(pid, SIGKILL), waitpid(pid, &status, 0);
        dump(log);
        fprintf(stderr, "crash_resume: FAIL: the uninterrupted run failed (status %d)\n", status);
        return 1;
    }
    double T = now_s() - t_started; /* the training, after the program's start-up */
    printf("crash_resume: uninterrupted run: %.2f s, of which training %.2f s\n", now_s() - t0, T);

    /* 2. killed and resumed */
    bool ok = true;
    int killed = 0, during_save = 0, resumed = 0, restarts = 0;
    double delay_scale = 1.0; /* halved when a run ends before its first kill (a machine less loaded than
                                 during the uninterrupted run) */
    for (int attempt = 0;; attempt++) {
        n = base;
        args[n++] = "--checkpoint-dir";
        args[n++] = run_dir;
        args[n++] = "--save-weights";
        args[n++] = run_w;
        if (attempt > 0) {
            args[n++] = "--resume";
            args[n++] = "last";
        }
        args[n] = NULL;
        snprintf(log, sizeof log, "%s/attempt-%d.log", work, attempt);
        double start = now_s();
        pid = spawn(args, log);
        if (pid < 0) {
            fprintf(stderr, "crash_resume: FAIL: fork: %s\n", strerror(errno));
            return 1;
        }
        bool kill_it = killed < kills;
        bool at_save = kill_it && killed % 2 == 1;
        /* within the first half of a whole run's training: a resumed run has less left to do */
        double delay = (double)(next_random() % 1000000) / 1e6 * 0.5 * T * delay_scale;
        int w = -1;
        if (kill_it) { /* the delays count from the start of training */
            bool done = false;
            if (!wait_for_output(log, pid, start + CHILD_TIMEOUT_S, &status, &done) && done)
                w = 0;
            start = now_s();
        }
        if (w == 0) {
            /* it ended before training started: below */
        } else if (kill_it && at_save) {
            while ((w = wait_until(pid, now_s() + 0.0002, &status)) == -1 && now_s() - start < T &&
                   !has_temp_of(run_dir, pid))
                ;
        } else if (kill_it) {
            w = wait_until(pid, start + delay, &status);
        }
        bool was_killed = false;
        if (kill_it && w == -1) {
            bool saving = has_temp_of(run_dir, pid);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            was_killed = true;
            killed++;
            /* the temporary file seen before the kill may have been renamed just before it: look again */
            bool left = has_temp_of(run_dir, pid);
            during_save += left;
            printf("crash_resume: attempt %d killed after %.3f s%s%s\n", attempt, now_s() - start,
                   at_save ? (saving ? " (a save was under way)" : " (no save seen: at a random moment)") : "",
                   left ? "; its temporary file is left" : "");
        } else if (w != 0 && wait_until(pid, start + CHILD_TIMEOUT_S, &status) != 0) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            dump(log);
            fprintf(stderr, "crash_resume: FAIL: attempt %d ran past %d s\n", attempt, CHILD_TIMEOUT_S);
            return 1;
        }
        char line[1024];
        if (attempt > 0) {
            if (first_line_is_resume(log, line, sizeof line)) {
                resumed++;
                printf("crash_resume: attempt %d: %s", attempt, line);
            } else if (!was_killed && strstr(line, "no last checkpoint") == NULL) {
                dump(log);
                fprintf(stderr, "crash_resume: FAIL: attempt %d did not print \"resumed from ...\" first\n", attempt);
                ok = false;
            }
        }
        int n_ckpt = 0, n_tmp = 0;
        if (!checkpoints_whole(run_dir, &n_ckpt, &n_tmp))
            ok = false;
        if (!was_killed) {
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                dump(log);
                fprintf(stderr, "crash_resume: FAIL: attempt %d ended with status %d\n", attempt, status);
                return 1;
            }
            if (killed == 0 && restarts < 4) { /* it outran its kill: start over with shorter delays */
                restarts++;
                delay_scale *= 0.5;
                printf("crash_resume: attempt %d ended before its kill: starting over with delays x %.3f\n", attempt,
                       delay_scale);
                DIR *d = opendir(run_dir);
                struct dirent *e;
                while (d != NULL && (e = readdir(d)) != NULL) {
                    char p[8300];
                    snprintf(p, sizeof p, "%s/%s", run_dir, e->d_name);
                    unlink(p);
                }
                if (d != NULL)
                    closedir(d);
                unlink(run_w);
                attempt = -1; /* the next attempt is a fresh start again */
                continue;
            }
            if (n_tmp != 0) {
                fprintf(stderr, "crash_resume: FAIL: %d temporary files are left in %s after the last run\n", n_tmp,
                        run_dir);
                ok = false;
            }
            printf("crash_resume: attempt %d finished (%d kills, %d during a save, %d resumes)\n", attempt, killed,
                   during_save, resumed);
            break;
        }
        if (attempt > 4 * kills + 8) {
            fprintf(stderr, "crash_resume: FAIL: no end after %d attempts\n", attempt);
            return 1;
        }
    }

    if (killed == 0) {
        fprintf(stderr, "crash_resume: FAIL: every run ended before its kill (seed %llu)\n", (unsigned long long)seed);
        ok = false;
    }

    /* 3. the same weights */
    if (!same_bytes(ref_w, run_w)) {
        fprintf(stderr, "crash_resume: FAIL: the final weights differ from the uninterrupted run's (seed %llu)\n",
                (unsigned long long)seed);
        ok = false;
    } else {
        printf("crash_resume: %s equals %s byte for byte\n", run_w, ref_w);
    }
    printf("crash_resume: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
