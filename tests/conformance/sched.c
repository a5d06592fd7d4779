/* sched.c: the case's lr_schedulers, built inside configure_optimizers in list order (= Lightning's
 * stepping order): torch classes through ember's schedulers, the custom EpochStepScheduler (README
 * "Behaviours") through em_scheduler_ops, and LambdaLR / MultiplicativeLR expressions of `epoch`. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conformance.h"

/* ---- EpochStepScheduler ---------------------------------------------------------------------------------- */

#define EPOCH_STEP_MAGIC 0x45505354u

typedef struct epoch_step_state {
    unsigned magic;
    int64_t step_size;
    double gamma;
    bool constructed;
    size_t n_groups;
    double base_lr[]; /* each group's lr when it was constructed */
} epoch_step_state;

/* em_scheduler_new() steps once at construction; the Python class does not touch the lr then. Any
 * later step() without an epoch is an error: it is only ever stepped with an explicit epoch. */
static em_status epoch_step_op(em_scheduler *self, bool has_metric, double metric)
{
    (void)has_metric;
    (void)metric;
    epoch_step_state *st = em_scheduler_state(self);
    if (!st->constructed) {
        st->constructed = true;
        return EM_OK;
    }
    return em_error_set(EM_EINVAL, "EpochStepScheduler.step() needs the epoch: only an overridden "
                                   "lr_scheduler_step (behaviour auto_custom_scheduler_step) can step it");
}

static const em_scheduler_ops epoch_step_ops = {
    .version = EM_SCHEDULER_OPS_VERSION,
    .name = "EpochStepScheduler",
    .step = epoch_step_op,
    .destroy = free,
    .reduce_on_plateau = false,
};

bool conf_is_epoch_step_scheduler(const em_scheduler *s)
{
    const epoch_step_state *st = em_scheduler_state(s);
    return st != NULL && strcmp(em_scheduler_name(s), "EpochStepScheduler") == 0 && st->magic == EPOCH_STEP_MAGIC;
}

em_status conf_epoch_step_scheduler_step(em_scheduler *s, int64_t epoch)
{
    epoch_step_state *st = em_scheduler_state(s);
    em_optimizer *opt = em_scheduler_optimizer(s);
    /* Python: base_lr * gamma ** (epoch // step_size), floor division */
    int64_t q = epoch / st->step_size;
    if ((epoch % st->step_size != 0) && ((epoch < 0) != (st->step_size < 0)))
        q--;
    for (size_t g = 0; g < st->n_groups; g++) {
        em_status rc = em_optimizer_set_lr(opt, g, st->base_lr[g] * pow(st->gamma, (double)q));
        if (rc != EM_OK)
            return rc;
    }
    return EM_OK;
}

/* ---- LambdaLR expressions ------------------------------------------------------------------------------- */

typedef struct lam {
    const char *p;
    double epoch;
    char *err;
    size_t err_len;
} lam;

static double lam_expr(lam *l);

static void lam_ws(lam *l)
{
    while (isspace((unsigned char)*l->p))
        l->p++;
}

static double lam_error(lam *l, const char *what)
{
    if (l->err[0] == '\0')
        snprintf(l->err, l->err_len, "%s at \"%.20s\"", what, l->p);
    return NAN;
}

static bool lam_eat(lam *l, const char *tok)
{
    lam_ws(l);
    size_t n = strlen(tok);
    if (strncmp(l->p, tok, n) != 0)
        return false;
    /* "*" must not eat the first half of "**", "/" not of "//" */
    if ((strcmp(tok, "*") == 0 && l->p[1] == '*') || (strcmp(tok, "/") == 0 && l->p[1] == '/'))
        return false;
    l->p += n;
    return true;
}

static double py_floordiv(double a, double b)
{
    return floor(a / b);
}

static double py_mod(double a, double b)
{
    double m = fmod(a, b);
    if (m != 0 && ((m < 0) != (b < 0)))
        m += b;
    return m;
}

static double lam_unary(lam *l);

static double lam_atom(lam *l)
{
    lam_ws(l);
    if (lam_eat(l, "(")) {
        double v = lam_expr(l);
        if (!lam_eat(l, ")"))
            return lam_error(l, "expected ')'");
        return v;
    }
    if (isdigit((unsigned char)*l->p) || *l->p == '.') {
        char *end = NULL;
        double v = strtod(l->p, &end);
        l->p = end;
        return v;
    }
    if (isalpha((unsigned char)*l->p) || *l->p == '_') {
        const char *s = l->p;
        while (isalnum((unsigned char)*l->p) || *l->p == '_')
            l->p++;
        size_t n = (size_t)(l->p - s);
        if (n == 5 && strncmp(s, "epoch", 5) == 0)
            return l->epoch;
        if ((n == 3 && strncmp(s, "min", 3) == 0) || (n == 3 && strncmp(s, "max", 3) == 0)) {
            bool is_min = s[1] == 'i';
            if (!lam_eat(l, "("))
                return lam_error(l, "expected '(' after min/max");
            double v = lam_expr(l);
            while (lam_eat(l, ",")) {
                double w = lam_expr(l);
                v = is_min ? (w < v ? w : v) : (w > v ? w : v);
            }
            if (!lam_eat(l, ")"))
                return lam_error(l, "expected ')'");
            return v;
        }
        l->p = s;
        return lam_error(l, "unknown name (only epoch, min, max)");
    }
    return lam_error(l, "unexpected character");
}

static double lam_power(lam *l)
{
    double base = lam_atom(l);
    if (lam_eat(l, "**"))
        return pow(base, lam_unary(l)); /* right-associative, binds tighter than a unary minus on its left */
    return base;
}

static double lam_unary(lam *l)
{
    if (lam_eat(l, "-"))
        return -lam_unary(l);
    if (lam_eat(l, "+"))
        return lam_unary(l);
    return lam_power(l);
}

static double lam_term(lam *l)
{
    double v = lam_unary(l);
    for (;;) {
        if (lam_eat(l, "*"))
            v *= lam_unary(l);
        else if (lam_eat(l, "//"))
            v = py_floordiv(v, lam_unary(l));
        else if (lam_eat(l, "/"))
            v /= lam_unary(l);
        else if (lam_eat(l, "%"))
            v = py_mod(v, lam_unary(l));
        else
            return v;
    }
}

static double lam_expr(lam *l)
{
    double v = lam_term(l);
    for (;;) {
        if (lam_eat(l, "+"))
            v += lam_term(l);
        else if (lam_eat(l, "-"))
            v -= lam_term(l);
        else
            return v;
    }
}

double conf_lambda_eval(const char *expr, int64_t epoch, char *err, size_t err_len)
{
    err[0] = '\0';
    lam l = {.p = expr, .epoch = (double)epoch, .err = err, .err_len = err_len};
    double v = lam_expr(&l);
    lam_ws(&l);
    if (err[0] == '\0' && *l.p != '\0')
        return lam_error(&l, "unexpected trailing text");
    return err[0] != '\0' ? NAN : v;
}

/* em_lr_lambda: ctx is the case's lr_lambda node (a string, or a list of strings: one per group) */
static double lambda_cb(int64_t epoch, size_t group, void *ctx)
{
    const cJSON *node = ctx;
    const cJSON *e = cJSON_IsArray(node) ? cJSON_GetArrayItem(node, (int)group) : node;
    if (!cJSON_IsString(e)) {
        em_error_set(EM_EINVAL, "lr_lambda has no expression for group %zu", group);
        return NAN;
    }
    char err[200];
    double v = conf_lambda_eval(e->valuestring, epoch, err, sizeof err);
    if (err[0] != '\0')
        em_error_set(EM_EINVAL, "lr_lambda \"%s\": %s", e->valuestring, err);
    return v;
}

/* ---- building --------------------------------------------------------------------------------------------- */

/* A number, or a list of equal numbers (torch accepts one per group; ember takes one for all). */
static bool one_value(conf_run *r, const cJSON *kw, const char *key, const char *where, double *out)
{
    const cJSON *v = cj_get(kw, key);
    if (v == NULL || cJSON_IsNull(v))
        return true;
    if (cJSON_IsNumber(v)) {
        *out = v->valuedouble;
        return true;
    }
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0) {
        const cJSON *it;
        double first = NAN;
        cJSON_ArrayForEach(it, v)
        {
            if (!cJSON_IsNumber(it) || (!isnan(first) && it->valuedouble != first))
                return conf_fail(r, "%s.%s: one value per group is not supported unless all are equal", where, key);
            first = it->valuedouble;
        }
        *out = first;
        return true;
    }
    return conf_fail(r, "%s.%s must be a number", where, key);
}

static bool int_list(conf_run *r, const cJSON *kw, const char *key, const char *where, int64_t *out, size_t cap,
                     size_t *n)
{
    const cJSON *list = NULL;
    if (!cj_req_array(r, kw, key, where, &list))
        return false;
    *n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, list)
    {
        if (!cj_is_integral(it) || *n == cap)
            return conf_fail(r, "%s.%s must be a list of at most %zu integers", where, key, cap);
        out[(*n)++] = (int64_t)it->valuedouble;
    }
    return true;
}

static em_scheduler *build_one(conf_run *r, em_optimizer *opt, const cJSON *spec, const char *where,
                               size_t top_index, bool top);

static em_scheduler *build_kw(conf_run *r, em_optimizer *opt, const char *type, const cJSON *kw,
                              const char *where, size_t top_index, bool top)
{
    char kwhere[160];
    snprintf(kwhere, sizeof kwhere, "%s.kwargs", where);
    if (kw != NULL && !cJSON_IsObject(kw)) {
        conf_fail(r, "%s must be an object", kwhere);
        return NULL;
    }
    /* torch arguments every class takes and this runner only accepts at their defaults */
    bool verbose = false;
    int64_t last_epoch = -1;
    if (!cj_opt_bool(r, kw, "verbose", kwhere, &verbose) || !cj_opt_int(r, kw, "last_epoch", kwhere, &last_epoch))
        return NULL;
    if (verbose || last_epoch != -1) {
        conf_fail(r, "%s: verbose / last_epoch (resuming) are not supported", kwhere);
        return NULL;
    }
#define KEYS(...)                                                                                       \
    do {                                                                                                \
        static const char *const keys_[] = {__VA_ARGS__, "verbose", "last_epoch", NULL};               \
        if (kw != NULL && !cj_keys(r, kw, kwhere, keys_))                                               \
            return NULL;                                                                                \
    } while (0)

    em_scheduler *s = NULL;
    if (strcmp(type, "StepLR") == 0) {
        KEYS("step_size", "gamma");
        int64_t step_size = 0;
        double gamma = 0.1;
        if (!cj_req_int(r, kw, "step_size", kwhere, &step_size) || !cj_opt_number(r, kw, "gamma", kwhere, &gamma))
            return NULL;
        s = em_step_lr(opt, step_size, gamma);
    } else if (strcmp(type, "MultiStepLR") == 0) {
        KEYS("milestones", "gamma");
        int64_t ms[256];
        size_t n = 0;
        double gamma = 0.1;
        if (!int_list(r, kw, "milestones", kwhere, ms, 256, &n) || !cj_opt_number(r, kw, "gamma", kwhere, &gamma))
            return NULL;
        s = em_multistep_lr(opt, ms, n, gamma);
    } else if (strcmp(type, "ExponentialLR") == 0) {
        KEYS("gamma");
        double gamma = 0;
        if (!cj_req_number(r, kw, "gamma", kwhere, &gamma))
            return NULL;
        s = em_exponential_lr(opt, gamma);
    } else if (strcmp(type, "CosineAnnealingLR") == 0) {
        KEYS("T_max", "eta_min");
        int64_t tmax = 0;
        double eta_min = 0;
        if (!cj_req_int(r, kw, "T_max", kwhere, &tmax) || !cj_opt_number(r, kw, "eta_min", kwhere, &eta_min))
            return NULL;
        s = em_cosine_annealing_lr(opt, tmax, eta_min);
    } else if (strcmp(type, "CosineAnnealingWarmRestarts") == 0) {
        KEYS("T_0", "T_mult", "eta_min");
        int64_t t0 = 0, tmult = 1;
        double eta_min = 0;
        if (!cj_req_int(r, kw, "T_0", kwhere, &t0) || !cj_opt_int(r, kw, "T_mult", kwhere, &tmult) ||
            !cj_opt_number(r, kw, "eta_min", kwhere, &eta_min))
            return NULL;
        s = em_cosine_annealing_warm_restarts(opt, t0, tmult, eta_min);
    } else if (strcmp(type, "OneCycleLR") == 0) {
        KEYS("max_lr", "total_steps", "epochs", "steps_per_epoch", "pct_start", "anneal_strategy",
             "cycle_momentum", "base_momentum", "max_momentum", "div_factor", "final_div_factor", "three_phase");
        em_onecycle_opts o = EM_ONECYCLE_OPTS_INIT;
        const cJSON *ts = cj_get(kw, "total_steps");
        if (cJSON_IsString(ts) && strcmp(ts->valuestring, "estimated_stepping_batches") == 0) {
            /* Lightning: total_steps=self.trainer.estimated_stepping_batches, read in configure_optimizers */
            double est = em_trainer_estimated_stepping_batches(em_module_trainer(&r->base));
            if (!isfinite(est) || est < 0) {
                conf_fail(r, "%s.total_steps: estimated_stepping_batches is %g", kwhere, est);
                return NULL;
            }
            o.total_steps = (int64_t)est;
            if (top)
                r->resolved_total_steps[top_index] = est;
        } else if (!cj_opt_int(r, kw, "total_steps", kwhere, &o.total_steps)) {
            return NULL;
        }
        const char *anneal = "cos";
        if (!cj_is_null_or_absent(kw, "anneal_strategy") &&
            !cj_req_string(r, kw, "anneal_strategy", kwhere, &anneal))
            return NULL;
        if (strcmp(anneal, "cos") == 0)
            o.anneal_strategy = EM_ANNEAL_COS;
        else if (strcmp(anneal, "linear") == 0)
            o.anneal_strategy = EM_ANNEAL_LINEAR;
        else {
            conf_fail(r, "%s.anneal_strategy must be \"cos\" or \"linear\"", kwhere);
            return NULL;
        }
        if (!one_value(r, kw, "max_lr", kwhere, &o.max_lr) || !cj_opt_int(r, kw, "epochs", kwhere, &o.epochs) ||
            !cj_opt_int(r, kw, "steps_per_epoch", kwhere, &o.steps_per_epoch) ||
            !cj_opt_number(r, kw, "pct_start", kwhere, &o.pct_start) ||
            !cj_opt_bool(r, kw, "cycle_momentum", kwhere, &o.cycle_momentum) ||
            !one_value(r, kw, "base_momentum", kwhere, &o.base_momentum) ||
            !one_value(r, kw, "max_momentum", kwhere, &o.max_momentum) ||
            !cj_opt_number(r, kw, "div_factor", kwhere, &o.div_factor) ||
            !cj_opt_number(r, kw, "final_div_factor", kwhere, &o.final_div_factor) ||
            !cj_opt_bool(r, kw, "three_phase", kwhere, &o.three_phase))
            return NULL;
        s = em_onecycle_lr(opt, &o);
    } else if (strcmp(type, "LinearLR") == 0) {
        KEYS("start_factor", "end_factor", "total_iters");
        double sf = 1.0 / 3, ef = 1.0;
        int64_t ti = 5;
        if (!cj_opt_number(r, kw, "start_factor", kwhere, &sf) || !cj_opt_number(r, kw, "end_factor", kwhere, &ef) ||
            !cj_opt_int(r, kw, "total_iters", kwhere, &ti))
            return NULL;
        s = em_linear_lr(opt, sf, ef, ti);
    } else if (strcmp(type, "ConstantLR") == 0) {
        KEYS("factor", "total_iters");
        double f = 1.0 / 3;
        int64_t ti = 5;
        if (!cj_opt_number(r, kw, "factor", kwhere, &f) || !cj_opt_int(r, kw, "total_iters", kwhere, &ti))
            return NULL;
        s = em_constant_lr(opt, f, ti);
    } else if (strcmp(type, "PolynomialLR") == 0) {
        KEYS("total_iters", "power");
        double power = 1.0;
        int64_t ti = 5;
        if (!cj_opt_int(r, kw, "total_iters", kwhere, &ti) || !cj_opt_number(r, kw, "power", kwhere, &power))
            return NULL;
        s = em_polynomial_lr(opt, ti, power);
    } else if (strcmp(type, "LambdaLR") == 0 || strcmp(type, "MultiplicativeLR") == 0) {
        KEYS("lr_lambda");
        const cJSON *f = cj_get(kw, "lr_lambda");
        bool ok = cJSON_IsString(f);
        if (cJSON_IsArray(f)) {
            ok = (size_t)cJSON_GetArraySize(f) == em_optimizer_num_groups(opt);
            const cJSON *it;
            cJSON_ArrayForEach(it, f) ok = ok && cJSON_IsString(it);
        }
        if (!ok) {
            conf_fail(r, "%s.lr_lambda must be an expression of epoch, or one per parameter group", kwhere);
            return NULL;
        }
        /* check the expressions once before handing them to the scheduler */
        const cJSON *e = cJSON_IsArray(f) ? f->child : f;
        for (; e != NULL; e = cJSON_IsArray(f) ? e->next : NULL) {
            char err[200];
            conf_lambda_eval(e->valuestring, 0, err, sizeof err);
            if (err[0] != '\0') {
                conf_fail(r, "%s.lr_lambda \"%s\": %s", kwhere, e->valuestring, err);
                return NULL;
            }
        }
        s = type[0] == 'L' ? em_lambda_lr(opt, lambda_cb, (void *)f) : em_multiplicative_lr(opt, lambda_cb, (void *)f);
    } else if (strcmp(type, "SequentialLR") == 0 || strcmp(type, "ChainedScheduler") == 0) {
        bool seq = type[0] == 'S';
        if (seq)
            KEYS("schedulers", "milestones");
        else
            KEYS("schedulers");
        const cJSON *children = NULL;
        if (!cj_req_array(r, kw, "schedulers", kwhere, &children))
            return NULL;
        size_t n = (size_t)cJSON_GetArraySize(children);
        if (n == 0 || n > 16) {
            conf_fail(r, "%s.schedulers must hold 1 to 16 schedulers", kwhere);
            return NULL;
        }
        int64_t ms[16];
        size_t nms = 0;
        if (seq && !int_list(r, kw, "milestones", kwhere, ms, 16, &nms))
            return NULL;
        if (seq && nms + 1 != n) {
            conf_fail(r, "%s: %zu schedulers need %zu milestones (got %zu)", kwhere, n, n - 1, nms);
            return NULL;
        }
        /* the children are constructed in order on the same optimizer, before the composite */
        em_scheduler *kids[16];
        for (size_t i = 0; i < n; i++) {
            char cw[200];
            snprintf(cw, sizeof cw, "%s.schedulers[%zu]", kwhere, i);
            kids[i] = build_one(r, opt, cJSON_GetArrayItem(children, (int)i), cw, top_index, false);
            if (kids[i] == NULL) {
                for (size_t j = 0; j < i; j++)
                    em_scheduler_free(kids[j]);
                return NULL;
            }
        }
        s = seq ? em_sequential_lr(opt, kids, n, ms) : em_chained_scheduler(kids, n); /* own the children */
    } else if (strcmp(type, "ReduceLROnPlateau") == 0) {
        KEYS("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps");
        em_plateau_opts o = EM_PLATEAU_OPTS_INIT;
        const char *mode = "min", *tmode = "rel";
        /* min_lr: a number, or one per group (torch's list form) */
        double min_lrs[64];
        const cJSON *ml = cj_get(kw, "min_lr");
        if (cJSON_IsArray(ml)) {
            size_t n = 0;
            const cJSON *it;
            cJSON_ArrayForEach(it, ml)
            {
                if (!cJSON_IsNumber(it) || n == sizeof min_lrs / sizeof *min_lrs) {
                    conf_fail(r, "%s.min_lr: a list of at most 64 numbers is supported", kwhere);
                    return NULL;
                }
                min_lrs[n++] = it->valuedouble;
            }
            o.min_lrs = min_lrs;
            o.n_min_lrs = n;
        } else if (!one_value(r, kw, "min_lr", kwhere, &o.min_lr)) {
            return NULL;
        }
        if ((!cj_is_null_or_absent(kw, "mode") && !cj_req_string(r, kw, "mode", kwhere, &mode)) ||
            (!cj_is_null_or_absent(kw, "threshold_mode") && !cj_req_string(r, kw, "threshold_mode", kwhere, &tmode)) ||
            !cj_opt_number(r, kw, "factor", kwhere, &o.factor) || !cj_opt_int(r, kw, "patience", kwhere, &o.patience) ||
            !cj_opt_number(r, kw, "threshold", kwhere, &o.threshold) ||
            !cj_opt_int(r, kw, "cooldown", kwhere, &o.cooldown) || !cj_opt_number(r, kw, "eps", kwhere, &o.eps))
            return NULL;
        if (strcmp(mode, "min") != 0 && strcmp(mode, "max") != 0) {
            conf_fail(r, "%s.mode must be \"min\" or \"max\"", kwhere);
            return NULL;
        }
        if (strcmp(tmode, "rel") != 0 && strcmp(tmode, "abs") != 0) {
            conf_fail(r, "%s.threshold_mode must be \"rel\" or \"abs\"", kwhere);
            return NULL;
        }
        o.mode = mode[1] == 'i' ? EM_PLATEAU_MIN : EM_PLATEAU_MAX;
        o.threshold_mode = tmode[0] == 'r' ? EM_THRESHOLD_REL : EM_THRESHOLD_ABS;
        s = em_reduce_lr_on_plateau(opt, &o);
    } else if (strcmp(type, "EpochStepScheduler") == 0) {
        KEYS("step_size", "gamma");
        int64_t step_size = 0;
        double gamma = 0;
        if (!cj_req_int(r, kw, "step_size", kwhere, &step_size) || !cj_req_number(r, kw, "gamma", kwhere, &gamma))
            return NULL;
        if (step_size < 1) {
            conf_fail(r, "%s.step_size must be >= 1 (got %lld)", kwhere, (long long)step_size);
            return NULL;
        }
        size_t ng = em_optimizer_num_groups(opt);
        epoch_step_state *st = calloc(1, sizeof *st + ng * sizeof(double));
        if (st == NULL) {
            conf_fail(r, "out of memory");
            return NULL;
        }
        *st = (epoch_step_state){.magic = EPOCH_STEP_MAGIC, .step_size = step_size, .gamma = gamma, .n_groups = ng};
        for (size_t g = 0; g < ng; g++)
            st->base_lr[g] = em_optimizer_lr(opt, g);
        s = em_scheduler_new(&epoch_step_ops, opt, st); /* owns st */
    } else {
        conf_fail(r, "%s.type \"%s\" is not a supported scheduler", where, type);
        return NULL;
    }
#undef KEYS
    if (s == NULL)
        conf_fail(r, "%s: the %s constructor failed: %s", where, type, em_last_error());
    return s;
}

/* A nested scheduler spec {type, kwargs} (SequentialLR / ChainedScheduler children). */
static em_scheduler *build_one(conf_run *r, em_optimizer *opt, const cJSON *spec, const char *where,
                               size_t top_index, bool top)
{
    static const char *const keys[] = {"type", "kwargs", NULL};
    const char *type = NULL;
    if (!cj_keys(r, spec, where, keys) || !cj_req_string(r, spec, "type", where, &type))
        return NULL;
    return build_kw(r, opt, type, cj_get(spec, "kwargs"), where, top_index, top);
}

bool build_schedulers(conf_run *r, em_optim_setup *setup, em_optimizer **opts, size_t n_opts)
{
    const cJSON *list = cj_get(r->doc, "lr_schedulers");
    if (list == NULL || cJSON_IsNull(list))
        return true;
    if (!cJSON_IsArray(list))
        return conf_fail(r, "lr_schedulers must be a list");
    if (cJSON_GetArraySize(list) > CONF_MAX_SCHEDS)
        return conf_fail(r, "lr_schedulers: more than %d schedulers", CONF_MAX_SCHEDS);
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, list)
    {
        char where[64];
        snprintf(where, sizeof where, "lr_schedulers[%zu]", i);
        static const char *const keys[] = {"type", "optimizer", "kwargs", "interval", "frequency", "monitor",
                                           "resolved", "name", "strict", NULL};
        const char *type = NULL;
        int64_t oi = 0;
        if (!cj_keys(r, e, where, keys) || !cj_req_string(r, e, "type", where, &type) ||
            !cj_req_int(r, e, "optimizer", where, &oi))
            return false;
        if (oi < 0 || (size_t)oi >= n_opts)
            return conf_fail(r, "%s.optimizer %lld is not an optimizer index", where, (long long)oi);
        r->resolved_total_steps[i] = NAN;

        em_scheduler_config cfg = {.interval = EM_INTERVAL_EPOCH, .frequency = 1};
        const char *interval = NULL, *monitor = NULL, *name = NULL;
        bool strict = true;
        if ((!cj_is_null_or_absent(e, "interval") && !cj_req_string(r, e, "interval", where, &interval)) ||
            !cj_opt_int(r, e, "frequency", where, &cfg.frequency) ||
            (!cj_is_null_or_absent(e, "monitor") && !cj_req_string(r, e, "monitor", where, &monitor)) ||
            (!cj_is_null_or_absent(e, "name") && !cj_req_string(r, e, "name", where, &name)) ||
            !cj_opt_bool(r, e, "strict", where, &strict))
            return false;
        if (interval != NULL) {
            if (strcmp(interval, "step") == 0)
                cfg.interval = EM_INTERVAL_STEP;
            else if (strcmp(interval, "epoch") != 0)
                return conf_fail(r, "%s.interval must be \"step\" or \"epoch\" (got \"%s\")", where, interval);
        }
        cfg.monitor = monitor;
        cfg.name = name;
        cfg.not_strict = !strict;

        em_scheduler *s = build_kw(r, opts[oi], type, cj_get(e, "kwargs"), where, i, true);
        if (s == NULL)
            return false;
        r->scheds[i] = s;
        r->n_scheds = i + 1;
        /* manual optimization: Lightning ignores interval / frequency / monitor (the user steps them) */
        if (em_optim_setup_add_scheduler(setup, s, r->automatic ? &cfg : NULL) != EM_OK)
            return conf_fail(r, "%s: em_optim_setup_add_scheduler failed: %s", where, em_last_error());
        i++;
    }
    return true;
}
