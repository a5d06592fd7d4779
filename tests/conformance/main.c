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
    r->base.layers = r->root; /* Lightning's module: eval() in validation, moved to the accelerator */
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

/* ---- DDP cases: every rank's records, compared on rank 0 ------------------------------------------------------ */

/* The keys of `want` taken from `have` (a rank records more than a DDP case keeps, e.g. epochs). */
static cJSON *only_keys(const cJSON *have, const cJSON *want)
{
    cJSON *o = cJSON_CreateObject();
    const cJSON *w;
    cJSON_ArrayForEach(w, want)
    {
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(have, w->string);
        if (h != NULL)
            cJSON_AddItemToObject(o, w->string, cJSON_Duplicate(h, true));
    }
    return o;
}

/* Rank `root`'s text on every rank (length first, then the bytes). NULL on failure. */
static char *from_rank(em_trainer *t, const char *mine, int64_t root)
{
    int64_t len = (int64_t)strlen(mine);
    if (em_trainer_broadcast(t, &len, sizeof len, root) != EM_OK)
        return NULL;
    char *buf = malloc((size_t)len + 1);
    if (buf == NULL)
        return NULL;
    if (em_trainer_global_rank(t) == root)
        memcpy(buf, mine, (size_t)len);
    if (em_trainer_broadcast(t, buf, (size_t)len, root) != EM_OK) {
        free(buf);
        return NULL;
    }
    buf[len] = '\0';
    return buf;
}

/* expected.per_rank[r] against rank r's records, expected.final against every rank's final (the
 * replicas end equal). Every rank takes part in the exchange; rank 0's verdict is the case's. */
static bool ddp_compare(conf_run *r, bool verbose, char *msg, size_t len)
{
    em_trainer *t = r->trainer;
    int64_t world = em_trainer_world_size(t);
    const cJSON *per_rank = cj_get(r->expected, "per_rank"), *final = cj_get(r->expected, "final");
    if (!cJSON_IsArray(per_rank) || cJSON_GetArraySize(per_rank) != world) {
        snprintf(msg, len, "expected.per_rank must list the %lld ranks", (long long)world);
        return false;
    }
    /* everything this rank recorded (training and validation calls, steps, epochs, epoch ends, final):
     * the case's per_rank entries say which of them it compares */
    cJSON *mine = cJSON_Duplicate(r->rec.root, true);
    cJSON_DeleteItemFromObjectCaseSensitive(mine, "rank");
    cJSON_AddNumberToObject(mine, "rank", (double)em_trainer_global_rank(t));
    char *text = cJSON_PrintUnformatted(mine);
    cJSON_Delete(mine);
    bool ok = text != NULL;
    for (int64_t k = 0; ok && k < world; k++) {
        char *other = from_rank(t, text, k);
        cJSON *o = other != NULL ? cJSON_Parse(other) : NULL;
        free(other);
        if (o == NULL) {
            snprintf(msg, len, "the records of rank %lld did not arrive: %s", (long long)k, em_last_error());
            ok = false;
            break;
        }
        cJSON *got = cJSON_CreateObject(), *want = cJSON_CreateObject();
        cJSON_AddItemToObject(got, "per_rank", only_keys(o, cJSON_GetArrayItem(per_rank, (int)k)));
        cJSON_AddItemToObject(want, "per_rank", cJSON_Duplicate(cJSON_GetArrayItem(per_rank, (int)k), true));
        cJSON_AddItemToObject(got, "final", only_keys(cj_get(o, "final"), final));
        cJSON_AddItemToObject(want, "final", cJSON_Duplicate(final, true));
        char m[CONF_MSG];
        if (!conf_compare(want, got, r->rtol, r->atol, m, sizeof m, verbose, 20)) {
            snprintf(msg, len, "rank %lld: %.900s", (long long)k, m);
            ok = false;
        }
        cJSON_Delete(got);
        cJSON_Delete(want);
        cJSON_Delete(o);
    }
    cJSON_free(text);
    return ok;
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
    /* a rank ember's launcher started runs this program again: only the DDP cases, silently */
    bool launched = getenv("LOCAL_RANK") != NULL;
    if (!conf_load(r, path) || !setup(r) || (launched && !r->ddp)) {
        if (launched) {
            run_free(r);
            return OUT_SKIP;
        }
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
    bool same = s == EM_OK && r->ddp ? ddp_compare(r, verbose, msg, sizeof msg)
                                     : conf_compare(r->expected, r->rec.root, r->rtol, r->atol, msg, sizeof msg,
                                                    verbose, 20);
    if (launched || (r->ddp && em_trainer_global_rank(r->trainer) != 0)) { /* rank 0 reports */
        run_free(r);
        return same ? OUT_PASS : OUT_FAIL;
    }
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
