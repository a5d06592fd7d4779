/*
 * ember-conformance CASE.json [CASE.json ...]
 *
 * Runs each conformance case (tests/conformance/cases/README.md) through ember's trainer and
 * compares what the run records with what Lightning recorded. Prints exactly one line per case:
 *   PASS <name>
 *   FAIL <name>: first mismatch <quantity>[<index>]: expected <e>, got <g>     (or another reason)
 *   SKIP <name>: <reason>                          (a case this build cannot run, e.g. DDP, or one
 *                                                   whose depends_on default differs in the linked torch)
 * and, given several case files, a summary line at the end:
 *   N run, P passed, S skipped                     (the N - P - S others failed)
 * Exit status: 0 when every case passes, 1 when any fails, 77 when none fails but some were skipped
 * (CTest's skip code), 2 for a usage error.
 *
 * BLAS: without OPENBLAS_CORETYPE in the environment, on a CPU with AVX2 and FMA, the runner runs
 * itself again with OPENBLAS_CORETYPE=Haswell, the OpenBLAS kernels the cases were recorded with
 * (pin_blas_kernels below says why).
 *
 * Options (before the case files):
 *   -v, --verbose     also list up to 20 mismatches per case on stderr
 *   --dump DIR        write what each run recorded to DIR/<name>.json (same shape as `expected`)
 */
#define _POSIX_C_SOURCE 200809L /* setenv, execv */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conformance.h"

typedef enum outcome { OUT_PASS, OUT_FAIL, OUT_SKIP } outcome;

bool conf_fail(conf_run *r, const char *fmt, ...)
{
    if (!r->failed && !r->skipped) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->why, sizeof r->why, fmt, ap);
        va_end(ap);
        r->failed = true;
    }
    return false;
}

bool conf_skip(conf_run *r, const char *fmt, ...)
{
    if (!r->failed && !r->skipped) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->why, sizeof r->why, fmt, ap);
        va_end(ap);
        r->skipped = true;
    }
    return false;
}

em_status conf_fail_cb(conf_run *r, const char *fmt, ...)
{
    char msg[CONF_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    conf_fail(r, "%s", msg);
    return em_error_set(EM_EUSER, "%s", msg);
}

static void free_rule(conf_rule *rule)
{
    free(rule->indices);
    rule->indices = NULL;
}

static void run_free(conf_run *r)
{
    em_trainer_free(r->trainer);
    em_loader_free(r->train);
    em_loader_free(r->val);
    em_nn_free(r->root);
    rec_free(r);
    free_rule(&r->p.return_none_when);
    free_rule(&r->p.step_when);
    free_rule(&r->p.zero_grad_when);
    free(r->p.sched_rules);
    cJSON_Delete(r->doc);
    free(r->text);
    free(r);
}

static bool setup(conf_run *r)
{
    /* the trainer first: a strategy this build cannot run makes the case a SKIP */
    if (!build_trainer(r))
        return false;
    const cJSON *b = NULL;
    const char *kind = NULL;
    if (!cj_req_object(r, r->doc, "behaviour", "case", &b) || !cj_req_string(r, b, "kind", "behaviour", &kind))
        return false;
    r->kind = conf_find_kind(kind);
    if (r->kind == NULL)
        return conf_fail(r, "unknown behaviour.kind \"%s\"", kind);
    if (r->kind->automatic != r->automatic)
        return conf_fail(r, "behaviour %s is %s optimization, the case says automatic_optimization=%s", kind,
                         r->kind->automatic ? "automatic" : "manual", r->automatic ? "true" : "false");
    if (!build_model(r) || !r->kind->parse(r, b) || !build_data(r))
        return false;
    conf_install(r, &r->ops);
    r->base.ops = &r->ops;
    r->base.manual_optimization = !r->automatic;
    rec_init(r);
    return true;
}

/* OneCycleLR total_steps = estimated_stepping_batches: what the trainer gave vs what Lightning computed */
static bool check_resolved(conf_run *r, char *msg, size_t len)
{
    const cJSON *list = cj_get(r->doc, "lr_schedulers");
    for (size_t i = 0; i < r->n_scheds; i++) {
        if (isnan(r->resolved_total_steps[i]))
            continue;
        const cJSON *want = cj_get(cj_get(cJSON_GetArrayItem(list, (int)i), "resolved"), "total_steps");
        if (cJSON_IsNumber(want) && want->valuedouble != r->resolved_total_steps[i]) {
            snprintf(msg, len, "lr_schedulers[%zu].resolved.total_steps (estimated_stepping_batches in "
                               "configure_optimizers): expected %.0f, got %.0f",
                     i, want->valuedouble, r->resolved_total_steps[i]);
            return false;
        }
    }
    return true;
}

static void dump(conf_run *r, const char *dir)
{
    if (dir == NULL || r->rec.root == NULL)
        return;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.json", dir, r->name);
    char *s = cJSON_Print(r->rec.root);
    FILE *f = fopen(path, "w");
    if (f != NULL && s != NULL) {
        fputs(s, f);
        fputc('\n', f);
    }
    if (f != NULL)
        fclose(f);
    cJSON_free(s);
}

static outcome run_case(const char *path, bool verbose, const char *dump_dir)
{
    conf_run *r = calloc(1, sizeof *r);
    if (r == NULL) {
        printf("FAIL %s: out of memory\n", path);
        return OUT_FAIL;
    }
    for (size_t i = 0; i < CONF_MAX_SCHEDS; i++)
        r->resolved_total_steps[i] = NAN;
    em_clear_error();
    outcome out = OUT_FAIL;
    if (!conf_load(r, path) || !setup(r)) {
        out = r->skipped ? OUT_SKIP : OUT_FAIL;
        printf("%s %s: %s\n", r->skipped ? "SKIP" : "FAIL", r->name, r->why);
        run_free(r);
        return out;
    }

    em_clear_error();
    em_status s = em_trainer_fit(r->trainer, &r->base, r->train, r->val);
    rec_after_fit(r);
    dump(r, dump_dir);

    char msg[CONF_MSG];
    bool same = conf_compare(r->expected, r->rec.root, r->rtol, r->atol, msg, sizeof msg, verbose, 20);
    char resolved[CONF_MSG];
    bool resolved_ok = check_resolved(r, resolved, sizeof resolved);
    if (s != EM_OK) {
        const char *where = em_trainer_error(r->trainer); /* "epoch 0, batch 3, <hook>: <message>" */
        if (r->failed && strstr(where, r->why) != NULL)
            printf("FAIL %s: %s\n", r->name, where);
        else if (r->failed)
            printf("FAIL %s: %s (em_trainer_fit: %s)\n", r->name, r->why, where);
        else {
            /* a value that diverged before the failure is worth knowing; entries the aborted run never
             * reached are not */
            bool earlier = !same && strstr(msg, ": missing entry") == NULL && strstr(msg, "got nothing") == NULL;
            printf("FAIL %s: em_trainer_fit failed with %s: %s%s%s\n", r->name, em_status_name(s), where,
                   earlier ? "; before that, first mismatch " : "", earlier ? msg : "");
        }
    } else if (r->failed) {
        printf("FAIL %s: %s\n", r->name, r->why);
    } else if (!resolved_ok) {
        printf("FAIL %s: first mismatch %s\n", r->name, resolved);
    } else if (!same) {
        printf("FAIL %s: first mismatch %s\n", r->name, msg);
    } else {
        printf("PASS %s\n", r->name);
        out = OUT_PASS;
    }
    fflush(stdout);
    run_free(r);
    return out;
}

/* The BLAS kernels. OpenBLAS picks its kernels (and with them the rounding of every matrix product)
 * from the CPU when the library loads, unless OPENBLAS_CORETYPE names a family. The cases were
 * recorded with OpenBLAS's Haswell kernels (AVX2 + FMA): on this project's CI CPU, OpenBLAS 0.3.21
 * (Debian 12) with Haswell (and with SkylakeX) reproduces the recorded files byte for byte, and
 * 0.3.29 (trixie) with Haswell too, while 0.3.29's own choice there (Cooperlake; SkylakeX alike)
 * rounds differently enough to put rec_auto_lbfgs_clip_value_trainer at 1.05x its tolerance
 * (docs/LIBTORCH_NOTES.md §3.1). So, when OPENBLAS_CORETYPE is not set and the CPU has AVX2 and FMA,
 * the runner runs itself again with OPENBLAS_CORETYPE=Haswell: the kernels the numbers came from,
 * not a looser tolerance. A value the environment already sets is left alone (a machine may need
 * it). On a CPU without AVX2 or FMA nothing is set: OpenBLAS does not check a forced family against
 * the CPU (its force_coretype() only matches the name), so Haswell there would be an illegal
 * instruction; the cases then run on the CPU's own kernels and compare within their tolerance, as
 * cases/README.md says. The thread counts are set the same way (the cases were recorded with one
 * thread; OpenBLAS reads them when it loads too). Returns only when nothing was pinned or the exec
 * failed. */
static void pin_blas_kernels(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE") != NULL)
        return;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return;
    setenv("OPENBLAS_CORETYPE", "Haswell", 1);
    setenv("OMP_NUM_THREADS", "1", 0);
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    execv("/proc/self/exe", argv);
    fprintf(stderr, "ember-conformance: could not run again with OPENBLAS_CORETYPE=Haswell (%s); "
                    "using the kernels OpenBLAS picked\n", strerror(errno));
    unsetenv("OPENBLAS_CORETYPE");
#else
    (void)argv;
#endif
}

int main(int argc, char **argv)
{
    pin_blas_kernels(argv);
    /* the cases were recorded with one thread */
    setenv("OMP_NUM_THREADS", "1", 0);
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    bool verbose = false;
    const char *dump_dir = NULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--verbose") == 0)
            verbose = true;
        else if (strcmp(argv[i], "--dump") == 0 && i + 1 < argc)
            dump_dir = argv[++i];
        else {
            fprintf(stderr, "ember-conformance: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (i == argc) {
        fprintf(stderr, "usage: ember-conformance [-v] [--dump DIR] CASE.json [CASE.json ...]\n");
        return 2;
    }
    int failed = 0, skipped = 0, passed = 0, run = argc - i;
    for (; i < argc; i++) {
        outcome o = run_case(argv[i], verbose, dump_dir);
        failed += o == OUT_FAIL;
        skipped += o == OUT_SKIP;
        passed += o == OUT_PASS;
    }
    if (run > 1)
        printf("%d run, %d passed, %d skipped\n", run, passed, skipped);
    return failed > 0 ? 1 : skipped > 0 ? 77 : 0;
}
