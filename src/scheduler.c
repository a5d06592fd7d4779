/* scheduler.c: the learning-rate schedulers of include/ember/scheduler.h.
 *
 * torch: torch/optim/lr_scheduler.py (torch 1.13): _LRScheduler.__init__/_initial_step/step,
 *        and each class's get_lr (recursive) and _get_closed_form_lr (only for SequentialLR's
 *        step(0)), OneCycleLR and CyclicLR with their _format_param lists, ReduceLROnPlateau,
 *        SequentialLR, ChainedScheduler.
 * Pure arithmetic on doubles: learning rates are read and written through the public
 * em_optimizer_get / em_optimizer_set_lr / em_optimizer_set. Every formula keeps Python's operation
 * order (left to right, ints converted to double where Python mixes int and float), so results
 * are bit-identical to torch's. Where Python raises ZeroDivisionError, the step fails instead of
 * producing inf or NaN.
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* a*b+c must not become an FMA: Python rounds twice */
#endif

#include <math.h>      /* cos, pow, INFINITY, NAN (M_PI is not C11: see PY_PI) */
#include <stdatomic.h> /* atomic_flag: the lock of the initial_lr records */
#include <stdlib.h>
#include <string.h>

#include "backend.h" /* emi_fail, emi_has_error, the public em_* API */

#define PY_PI 3.141592653589793 /* math.pi, the double nearest to pi */

/* Record that memory ran out; returns EM_ENOMEM. */
static em_status out_of_memory(void)
{
    return emi_fail(EM_ENOMEM, "em_scheduler: out of memory");
}

/* ---- initial_lr beside the optimizer ----------------------------------------------------------
 * torch keeps group['initial_lr'] in the optimizer's param_groups: the first scheduler sets it
 * (setdefault), later ones on the same optimizer read it, OneCycleLR overwrites it, SequentialLR
 * resets the lrs to it. ember's optimizer has no slot for it, so one record per optimizer lives
 * here, shared by the schedulers of that optimizer and freed with the last of them. */

typedef struct lr_record {
    em_optimizer *opt;  /* the key: em_optimizer_inner() of the scheduler's optimizer */
    size_t refs;        /* schedulers holding it */
    size_t n;           /* groups known */
    double *initial_lr; /* [n] */
    bool *has;          /* [n]: whether group i has an initial_lr */
    struct lr_record *next;
} lr_record;

static lr_record *records;
static atomic_flag records_lock = ATOMIC_FLAG_INIT;

static void records_enter(void)
{
    while (atomic_flag_test_and_set_explicit(&records_lock, memory_order_acquire))
        ; /* held only for a few loads and stores */
}

static void records_leave(void)
{
    atomic_flag_clear_explicit(&records_lock, memory_order_release);
}

/* The record of `opt`, created on first use; one more reference. NULL when out of memory. */
static lr_record *record_acquire(em_optimizer *opt)
{
    em_optimizer *key = em_optimizer_inner(opt);
    records_enter();
    lr_record *r = records;
    while (r != NULL && r->opt != key)
        r = r->next;
    if (r == NULL && (r = calloc(1, sizeof *r)) != NULL) {
        r->opt = key;
        r->next = records;
        records = r;
    }
    if (r != NULL)
        r->refs++;
    records_leave();
    if (r == NULL)
        out_of_memory();
    return r;
}

static void record_release(lr_record *r)
{
    if (r == NULL)
        return;
    records_enter();
    bool last = --r->refs == 0;
    if (last) {
        lr_record **p = &records;
        while (*p != r)
            p = &(*p)->next;
        *p = r->next;
    }
    records_leave();
    if (last) {
        free(r->initial_lr);
        free(r->has);
        free(r);
    }
}

/* Make room for group `group` (caller holds the lock). */
static bool record_reserve(lr_record *r, size_t group)
{
    if (group < r->n)
        return true;
    size_t n = group + 1;
    double *v = realloc(r->initial_lr, n * sizeof *v);
    if (v == NULL)
        return false;
    r->initial_lr = v;
    bool *h = realloc(r->has, n * sizeof *h);
    if (h == NULL)
        return false;
    r->has = h;
    for (size_t i = r->n; i < n; i++)
        r->has[i] = false;
    r->n = n;
    return true;
}

/* torch: group.setdefault('initial_lr', lr) (overwrite = false) or group['initial_lr'] = lr. */
static em_status record_put(lr_record *r, size_t group, double lr, bool overwrite)
{
    records_enter();
    bool ok = record_reserve(r, group);
    if (ok && (overwrite || !r->has[group])) {
        r->initial_lr[group] = lr;
        r->has[group] = true;
    }
    records_leave();
    return ok ? EM_OK : out_of_memory();
}

/* torch: group['initial_lr']; false when the group has none (torch: KeyError). */
static bool record_get(lr_record *r, size_t group, double *out)
{
    records_enter();
    bool ok = group < r->n && r->has[group];
    if (ok)
        *out = r->initial_lr[group];
    records_leave();
    return ok;
}

/* ---- the scheduler -------------------------------------------------------------------------------- */

typedef enum sched_kind {
    K_STEP,
    K_MULTISTEP,
    K_EXPONENTIAL,
    K_COSINE,
    K_WARM_RESTARTS,
    K_ONECYCLE,
    K_CYCLIC,
    K_LINEAR,
    K_CONSTANT,
    K_POLYNOMIAL,
    K_LAMBDA,
    K_MULTIPLICATIVE,
    K_SEQUENTIAL,
    K_CHAINED,
    K_PLATEAU,
    K_USER
} sched_kind;

static const char *const kind_names[] = {
    [K_STEP] = "StepLR",
    [K_MULTISTEP] = "MultiStepLR",
    [K_EXPONENTIAL] = "ExponentialLR",
    [K_COSINE] = "CosineAnnealingLR",
    [K_WARM_RESTARTS] = "CosineAnnealingWarmRestarts",
    [K_ONECYCLE] = "OneCycleLR",
    [K_CYCLIC] = "CyclicLR",
    [K_LINEAR] = "LinearLR",
    [K_CONSTANT] = "ConstantLR",
    [K_POLYNOMIAL] = "PolynomialLR",
    [K_LAMBDA] = "LambdaLR",
    [K_MULTIPLICATIVE] = "MultiplicativeLR",
    [K_SEQUENTIAL] = "SequentialLR",
    [K_CHAINED] = "ChainedScheduler",
    [K_PLATEAU] = "ReduceLROnPlateau",
    [K_USER] = "Scheduler",
};

/* OneCycleLR's _schedule_phases: where each phase ends and what it anneals between. */
typedef enum onecycle_value { OC_INITIAL_LR, OC_MAX_LR, OC_MIN_LR, OC_MAX_MOM, OC_BASE_MOM } onecycle_value;
typedef struct onecycle_phase {
    double end_step;
    onecycle_value start_lr, end_lr, start_momentum, end_momentum;
} onecycle_phase;

/* What each kind keeps beside the fields all schedulers share. */
typedef union sched_params {
    struct { int64_t step_size; double gamma; } step;
    struct { int64_t *milestones; size_t n; double gamma; } multistep;
    struct { double gamma; } exponential;
    struct { int64_t T_max; double eta_min; } cosine;
    struct { int64_t T_0, T_i, T_mult, T_cur; double eta_min; } restarts;
    struct {
        int64_t total_steps;
        onecycle_phase phases[3];
        int n_phases;
        bool linear;
        bool cycle_momentum;
        const char *momentum_key; /* "beta1" (torch: use_beta1) or "momentum" */
        size_t n_groups;          /* groups that got max_lr, min_lr, momenta (torch: KeyError after) */
        double *v;                /* [4 * n_groups]: group['max_lr'], ['min_lr'], ['max_momentum'],
                                     ['base_momentum'] of group g at v[g], v[n + g], v[2n + g], v[3n + g] */
    } onecycle;
    struct {
        double total_size, step_ratio; /* torch: self.total_size, self.step_ratio */
        em_cyclic_mode mode;           /* unused when scale_fn is set */
        double gamma;
        em_cyclic_scale_fn scale_fn;   /* NULL: mode's policy */
        void *scale_ctx;
        bool scale_iterations;         /* torch: self.scale_mode == 'iterations' */
        bool cycle_momentum;
        size_t n_groups;               /* the length of torch's lists */
        double *v;                     /* [4 * n_groups]: base_lrs, max_lrs, base_momentums,
                                          max_momentums, one list after the other */
    } cyclic;
    struct { double start_factor, end_factor; int64_t total_iters; } linear;
    struct { double factor; int64_t total_iters; } constant;
    struct { int64_t total_iters; double power; } polynomial;
    struct { em_lr_lambda fn; void *ctx; } lambda;
    struct { em_scheduler **children; size_t n; int64_t *milestones; } composite;
    struct {
        em_plateau_opts o;
        double best;
        int64_t num_bad_epochs, cooldown_counter;
    } plateau;
    struct { const em_scheduler_ops *ops; void *state; } user;
} sched_params;

struct em_scheduler {
    uint32_t magic;        /* EMI_HANDLE_SCHEDULER while it lives (backend.h: the API armor) */
    sched_kind kind;
    em_optimizer *opt;     /* borrowed */
    lr_record *record;     /* initial_lr of opt's groups (one reference); NULL for plateau */
    em_scheduler *owner;   /* the composite that owns it, or NULL */
    bool trainer_owned;    /* handed to a trainer: em_scheduler_free refuses it */
    int64_t last_epoch;    /* torch: last_epoch */
    int64_t step_count;    /* torch: _step_count */
    double *base_lrs;      /* torch: base_lrs [n_base] */
    size_t n_base;
    double *last_lr;       /* torch: _last_lr [n_last], valid when has_last_lr */
    size_t n_last, cap_last;
    bool has_last_lr;
    double *values;        /* scratch: what get_lr returns [cap_values] */
    size_t cap_values;
    const char *api;       /* the public function now stepping it (messages), NULL: em_scheduler_step */

    sched_params u;
};

static const char *sched_name(const em_scheduler *s)
{
    if (s->kind == K_USER && s->u.user.ops->name != NULL)
        return s->u.user.ops->name;
    return kind_names[s->kind];
}

static bool is_plateau(const em_scheduler *s)
{
    return s->kind == K_PLATEAU || (s->kind == K_USER && s->u.user.ops->reduce_on_plateau);
}

static bool same_optimizer(em_optimizer *a, em_optimizer *b)
{
    return em_optimizer_inner(a) == em_optimizer_inner(b);
}

/* A constructor gives up after `emi_fail` recorded why: returns NULL, so that each argument check
 * reads as one statement, `return no_scheduler(emi_fail(...));`. */
static em_scheduler *no_scheduler(em_status recorded)
{
    (void)recorded;
    return NULL;
}

/* torch's "Expected positive integer <name>, but got <value>" check of function `f`: whether
 * value >= 1, recording the message when not. */
static bool positive_int(const char *f, const char *name, int64_t value)
{
    if (value >= 1)
        return true;
    emi_fail(EM_EINVAL, "%s: Expected positive integer %s, but got %lld", f, name, (long long)value);
    return false;
}

/* LinearLR's and ConstantLR's total_iters check of function `f`: whether total_iters >= 0,
 * recording the message when not. */
static bool total_iters_ok(const char *f, int64_t total_iters)
{
    if (total_iters >= 0)
        return true;
    emi_fail(EM_EINVAL, "%s: total_iters must be >= 0 (got %lld)", f, (long long)total_iters);
    return false;
}

/* LinearLR's start_factor and ConstantLR's factor, later divisors: whether 0 < factor <= 1,
 * recording the message of function `f` when not (`which` factor; a 0 would divide by zero at
 * `where`). */
static bool divisor_factor_ok(const char *f, const char *which, double factor, const char *where)
{
    if (factor > 0 && factor <= 1.0)
        return true;
    emi_fail(EM_EINVAL, "%s: %s multiplicative factor expected to be between 0 and 1. (got %g; 0 "
                        "divides by zero at %s)", f, which, factor, where);
    return false;
}

/* Grow `*arr` to hold n doubles. */
static em_status reserve(double **arr, size_t *cap, size_t n)
{
    if (n <= *cap)
        return EM_OK;
    double *v = realloc(*arr, n * sizeof *v);
    if (v == NULL)
        return out_of_memory();
    *arr = v;
    *cap = n;
    return EM_OK;
}

/* Python's a / b for floats: ZeroDivisionError when b is 0. */
static em_status py_div(const em_scheduler *s, double a, double b, double *out)
{
    if (b == 0.0)
        return emi_fail(EM_EINVAL,
                        "em_scheduler_step: %s: float division by zero at epoch %lld "
                        "(torch raises ZeroDivisionError)",
                        sched_name(s), (long long)s->last_epoch);
    *out = a / b;
    return EM_OK;
}

/* Python's a // b for ints (floor division). */
static int64_t py_floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

/* Python's bisect.bisect_right(a, x), also on an unsorted list. */
static size_t bisect_right(const int64_t *a, size_t n, int64_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (x < a[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* group['lr'] */
static em_status group_lr(const em_scheduler *s, size_t group, double *out)
{
    return em_optimizer_get(s->opt, group, "lr", out);
}

/* torch: self._last_lr = [group['lr'] for group in self.optimizer.param_groups] */
static em_status record_last_lr(em_scheduler *s)
{
    size_t n = em_optimizer_num_groups(s->opt);
    em_status st = reserve(&s->last_lr, &s->cap_last, n);
    for (size_t g = 0; st == EM_OK && g < n; g++)
        st = group_lr(s, g, &s->last_lr[g]);
    if (st == EM_OK) {
        s->n_last = n;
        s->has_last_lr = true;
    }
    return st;
}

/* torch: for param_group, lr in zip(self.optimizer.param_groups, values): param_group['lr'] = lr,
 * then _last_lr. */
static em_status apply_values(em_scheduler *s, size_t n_values)
{
    size_t n = em_optimizer_num_groups(s->opt);
    for (size_t g = 0; g < n && g < n_values; g++) {
        em_status st = em_optimizer_set_lr(s->opt, g, s->values[g]);
        if (st != EM_OK)
            return st;
    }
    return record_last_lr(s);
}

/* Call a user's lr_lambda; a message it records (with none recorded before) fails the step. */
static em_status call_lambda(const em_scheduler *s, size_t group, double *out)
{
    bool had_error = emi_has_error();
    *out = s->u.lambda.fn(s->last_epoch, group, s->u.lambda.ctx);
    if (!had_error && emi_has_error())
        return em_last_status();
    return EM_OK;
}

/* ---- get_lr: the recursive (chainable) form, one function per class -------------------------------
 * Each fills s->values and sets *n to the number of values torch's list would hold. */

/* [group['lr'] for group in self.optimizer.param_groups], times `mult` when apply_mult */
static em_status lrs_times(em_scheduler *s, size_t *n, bool apply_mult, double mult)
{
    for (size_t g = 0; g < *n; g++) {
        em_status st = group_lr(s, g, &s->values[g]);
        if (st != EM_OK)
            return st;
        if (apply_mult)
            s->values[g] = s->values[g] * mult;
    }
    return EM_OK;
}

/* torch: StepLR.get_lr */
static em_status step_get_lr(em_scheduler *s, size_t *n)
{
    bool decay = !(s->last_epoch == 0 || s->last_epoch % s->u.step.step_size != 0);
    return lrs_times(s, n, decay, s->u.step.gamma);
}

/* torch: MultiStepLR.get_lr (milestones[last_epoch] is the Counter's count) */
static em_status multistep_get_lr(em_scheduler *s, size_t *n)
{
    int64_t count = 0;
    for (size_t i = 0; i < s->u.multistep.n; i++)
        count += s->u.multistep.milestones[i] == s->last_epoch;
    return lrs_times(s, n, count > 0, pow(s->u.multistep.gamma, (double)count));
}

/* torch: ExponentialLR.get_lr */
static em_status exponential_get_lr(em_scheduler *s, size_t *n)
{
    return lrs_times(s, n, s->last_epoch != 0, s->u.exponential.gamma);
}

/* torch: CosineAnnealingLR.get_lr */
static em_status cosine_get_lr(em_scheduler *s, size_t *n)
{
    const int64_t e = s->last_epoch, T_max = s->u.cosine.T_max;
    const double eta_min = s->u.cosine.eta_min;
    if (e == 0)
        return lrs_times(s, n, false, 1.0);
    if (s->step_count == 1 && e > 0) {
        *n = s->n_base;
        for (size_t g = 0; g < *n; g++)
            s->values[g] = eta_min + (s->base_lrs[g] - eta_min) *
                                         (1 + cos((double)e * PY_PI / (double)T_max)) / 2;
        return EM_OK;
    }
    if ((e - 1 - T_max) % (2 * T_max) == 0) {
        *n = s->n_base;
        for (size_t g = 0; g < *n; g++) {
            double lr = 0;
            em_status st = group_lr(s, g, &lr);
            if (st != EM_OK)
                return st;
            s->values[g] = lr + (s->base_lrs[g] - eta_min) * (1 - cos(PY_PI / (double)T_max)) / 2;
        }
        return EM_OK;
    }
    double ratio = 0;
    em_status st = py_div(s, 1 + cos(PY_PI * (double)e / (double)T_max),
                          1 + cos(PY_PI * (double)(e - 1) / (double)T_max), &ratio);
    for (size_t g = 0; st == EM_OK && g < *n; g++) {
        double lr = 0;
        st = group_lr(s, g, &lr);
        s->values[g] = ratio * (lr - eta_min) + eta_min;
    }
    return st;
}

/* torch: LinearLR.get_lr */
static em_status linear_get_lr(em_scheduler *s, size_t *n)
{
    const double start = s->u.linear.start_factor, end = s->u.linear.end_factor;
    const int64_t total = s->u.linear.total_iters, e = s->last_epoch;
    if (e == 0)
        return lrs_times(s, n, true, start);
    if (e > total)
        return lrs_times(s, n, false, 1.0);
    double q = 0;
    em_status st = py_div(s, end - start, (double)total * start + (double)(e - 1) * (end - start), &q);
    return st != EM_OK ? st : lrs_times(s, n, true, 1. + q);
}

/* torch: ConstantLR.get_lr */
static em_status constant_get_lr(em_scheduler *s, size_t *n)
{
    const double factor = s->u.constant.factor;
    if (s->last_epoch == 0)
        return lrs_times(s, n, true, factor);
    if (s->last_epoch != s->u.constant.total_iters)
        return lrs_times(s, n, false, 1.0);
    double inv = 0;
    em_status st = py_div(s, 1.0, factor, &inv);
    return st != EM_OK ? st : lrs_times(s, n, true, inv);
}

/* Python's x ** y for floats: 0.0 to a negative power raises ZeroDivisionError. */
static em_status py_pow(const em_scheduler *s, double x, double y, double *out)
{
    if (x == 0.0 && y < 0)
        return emi_fail(EM_EINVAL,
                        "em_scheduler_step: %s: 0.0 cannot be raised to a negative power at epoch "
                        "%lld (torch raises ZeroDivisionError)",
                        sched_name(s), (long long)s->last_epoch);
    *out = pow(x, y);
    return EM_OK;
}

/* torch: PolynomialLR.get_lr */
static em_status polynomial_get_lr(em_scheduler *s, size_t *n)
{
    const int64_t e = s->last_epoch, T = s->u.polynomial.total_iters;
    if (e == 0 || e > T)
        return lrs_times(s, n, false, 1.0);
    double ratio = 0, decay_factor = 0;
    em_status st = py_div(s, 1.0 - (double)e / (double)T, 1.0 - (double)(e - 1) / (double)T, &ratio);
    if (st == EM_OK)
        st = py_pow(s, ratio, s->u.polynomial.power, &decay_factor);
    return st != EM_OK ? st : lrs_times(s, n, true, decay_factor);
}

/* torch: LambdaLR.get_lr: [base_lr * lmbda(self.last_epoch) for lmbda, base_lr in ...] */
static em_status lambda_get_lr(em_scheduler *s, size_t *n)
{
    *n = s->n_base;
    for (size_t g = 0; g < *n; g++) {
        double f = 0;
        em_status st = call_lambda(s, g, &f);
        if (st != EM_OK)
            return st;
        s->values[g] = s->base_lrs[g] * f;
    }
    return EM_OK;
}

/* torch: MultiplicativeLR.get_lr */
static em_status multiplicative_get_lr(em_scheduler *s, size_t *n)
{
    if (s->last_epoch <= 0)
        return lrs_times(s, n, false, 1.0);
    if (*n > s->n_base)
        *n = s->n_base; /* zip(self.lr_lambdas, self.optimizer.param_groups) */
    for (size_t g = 0; g < *n; g++) {
        double lr = 0, f = 0;
        em_status st = group_lr(s, g, &lr);
        if (st == EM_OK)
            st = call_lambda(s, g, &f);
        if (st != EM_OK)
            return st;
        s->values[g] = lr * f;
    }
    return EM_OK;
}

/* torch: CosineAnnealingWarmRestarts.get_lr */
static em_status restarts_get_lr(em_scheduler *s, size_t *n)
{
    const double eta_min = s->u.restarts.eta_min;
    *n = s->n_base;
    for (size_t g = 0; g < *n; g++)
        s->values[g] = eta_min + (s->base_lrs[g] - eta_min) *
                                     (1 + cos(PY_PI * (double)s->u.restarts.T_cur /
                                              (double)s->u.restarts.T_i)) / 2;
    return EM_OK;
}

/* torch: OneCycleLR._annealing_cos / _annealing_linear */
static double onecycle_anneal(const em_scheduler *s, double start, double end, double pct)
{
    if (s->u.onecycle.linear)
        return (end - start) * pct + start;
    double cos_out = cos(PY_PI * pct) + 1;
    return end + (start - end) / 2.0 * cos_out;
}

/* group[name] for the names OneCycleLR stores in its groups */
static em_status onecycle_value_of(const em_scheduler *s, size_t group, onecycle_value v, double *out)
{
    switch (v) {
    case OC_INITIAL_LR:
        if (!record_get(s->record, group, out))
            return emi_fail(EM_EINVAL, "em_scheduler_step: OneCycleLR: param group %zu has no "
                                       "'initial_lr' (torch raises KeyError)", group);
        return EM_OK;
    case OC_MAX_LR: *out = s->u.onecycle.v[group]; return EM_OK;
    case OC_MIN_LR: *out = s->u.onecycle.v[s->u.onecycle.n_groups + group]; return EM_OK;
    case OC_MAX_MOM: *out = s->u.onecycle.v[2 * s->u.onecycle.n_groups + group]; return EM_OK;
    case OC_BASE_MOM: *out = s->u.onecycle.v[3 * s->u.onecycle.n_groups + group]; return EM_OK;
    }
    return EM_EINVAL;
}

/* torch: OneCycleLR.get_lr, which also writes each group's momentum (or beta1). */
static em_status onecycle_get_lr(em_scheduler *s, size_t *n)
{
    const int64_t step_num = s->last_epoch, total = s->u.onecycle.total_steps;
    if (step_num > total)
        return emi_fail(EM_EINVAL,
                        "em_scheduler_step: OneCycleLR: Tried to step %lld times. The specified "
                        "number of total steps is %lld",
                        (long long)(step_num + 1), (long long)total);
    for (size_t g = 0; g < *n; g++) {
        if (g >= s->u.onecycle.n_groups)
            return emi_fail(EM_EINVAL, "em_scheduler_step: OneCycleLR: param group %zu was added "
                                       "after the scheduler was created (torch raises KeyError: "
                                       "'max_lr')", g);
        double start_step = 0;
        for (int i = 0; i < s->u.onecycle.n_phases; i++) {
            const onecycle_phase *ph = &s->u.onecycle.phases[i];
            if ((double)step_num <= ph->end_step || i == s->u.onecycle.n_phases - 1) {
                double pct = 0, a = 0, b = 0;
                em_status st = py_div(s, (double)step_num - start_step, ph->end_step - start_step, &pct);
                if (st == EM_OK)
                    st = onecycle_value_of(s, g, ph->start_lr, &a);
                if (st == EM_OK)
                    st = onecycle_value_of(s, g, ph->end_lr, &b);
                if (st != EM_OK)
                    return st;
                s->values[g] = onecycle_anneal(s, a, b, pct);
                if (s->u.onecycle.cycle_momentum) {
                    onecycle_value_of(s, g, ph->start_momentum, &a);
                    onecycle_value_of(s, g, ph->end_momentum, &b);
                    st = em_optimizer_set(s->opt, g, s->u.onecycle.momentum_key,
                                          onecycle_anneal(s, a, b, pct));
                    if (st != EM_OK)
                        return st;
                }
                break;
            }
            start_step = ph->end_step;
        }
    }
    return EM_OK;
}

/* torch: CyclicLR.scale_fn(x): the user's scale_fn (a message it records, with none recorded
 * before, fails the step) or the mode's _triangular / _triangular2 / _exp_range_scale_fn. */
static em_status cyclic_scale(const em_scheduler *s, int64_t x, double *out)
{
    if (s->u.cyclic.scale_fn != NULL) {
        bool had_error = emi_has_error();
        *out = s->u.cyclic.scale_fn(x, s->u.cyclic.scale_ctx);
        return !had_error && emi_has_error() ? em_last_status() : EM_OK;
    }
    double p = 0;
    em_status st = EM_OK;
    switch (s->u.cyclic.mode) {
    case EM_CYCLIC_TRIANGULAR: /* return 1. */
        *out = 1.;
        break;
    case EM_CYCLIC_TRIANGULAR2: /* return 1 / (2. ** (x - 1)) */
        st = py_pow(s, 2., (double)(x - 1), &p);
        if (st == EM_OK)
            st = py_div(s, 1.0, p, out);
        break;
    case EM_CYCLIC_EXP_RANGE: /* return self.gamma**(x) */
        st = py_pow(s, s->u.cyclic.gamma, (double)x, out);
        break;
    }
    return st;
}

/* torch: CyclicLR.get_lr, which also writes each group's momentum. */
static em_status cyclic_get_lr(em_scheduler *s, size_t *n)
{
    const int64_t e = s->last_epoch;
    const size_t m = s->u.cyclic.n_groups;
    const double *base_lrs = s->base_lrs, *max_lrs = s->u.cyclic.v + m;
    const double *base_moms = s->u.cyclic.v + 2 * m, *max_moms = s->u.cyclic.v + 3 * m;
    const double total = s->u.cyclic.total_size, ratio = s->u.cyclic.step_ratio;
    /* cycle = math.floor(1 + self.last_epoch / self.total_size) */
    const int64_t cycle = (int64_t)floor(1 + (double)e / total);
    /* x = 1. + self.last_epoch / self.total_size - cycle */
    const double x = 1. + (double)e / total - (double)cycle;
    double scale_factor = 0;
    em_status st = x <= ratio ? py_div(s, x, ratio, &scale_factor)
                              : py_div(s, x - 1, ratio - 1, &scale_factor);
    const int64_t arg = s->u.cyclic.scale_iterations ? e : cycle;
    /* zip(self.base_lrs, self.max_lrs): n_base == n_groups, the groups at construction */
    *n = s->n_base < m ? s->n_base : m;
    for (size_t g = 0; st == EM_OK && g < *n; g++) {
        double base_height = (max_lrs[g] - base_lrs[g]) * scale_factor, f = 0;
        st = cyclic_scale(s, arg, &f);
        s->values[g] = base_lrs[g] + base_height * f;
    }
    if (st != EM_OK || !s->u.cyclic.cycle_momentum)
        return st;
    /* the momenta are all computed, then written (zip with the optimizer's groups) */
    double *moms = malloc((m ? m : 1) * sizeof *moms);
    if (moms == NULL)
        return out_of_memory();
    for (size_t g = 0; st == EM_OK && g < m; g++) {
        double base_height = (max_moms[g] - base_moms[g]) * scale_factor, f = 0;
        st = cyclic_scale(s, arg, &f);
        moms[g] = max_moms[g] - base_height * f;
    }
    size_t groups = em_optimizer_num_groups(s->opt);
    for (size_t g = 0; st == EM_OK && g < m && g < groups; g++)
        st = em_optimizer_set(s->opt, g, "momentum", moms[g]);
    free(moms);
    return st;
}

static em_status get_lr(em_scheduler *s, size_t *n)
{
    switch (s->kind) {
    case K_STEP: return step_get_lr(s, n);
    case K_MULTISTEP: return multistep_get_lr(s, n);
    case K_EXPONENTIAL: return exponential_get_lr(s, n);
    case K_COSINE: return cosine_get_lr(s, n);
    case K_WARM_RESTARTS: return restarts_get_lr(s, n);
    case K_ONECYCLE: return onecycle_get_lr(s, n);
    case K_CYCLIC: return cyclic_get_lr(s, n);
    case K_LINEAR: return linear_get_lr(s, n);
    case K_CONSTANT: return constant_get_lr(s, n);
    case K_POLYNOMIAL: return polynomial_get_lr(s, n);
    case K_LAMBDA: return lambda_get_lr(s, n);
    case K_MULTIPLICATIVE: return multiplicative_get_lr(s, n);
    default: return emi_fail(EM_ERROR, "em_scheduler: %s has no get_lr", sched_name(s));
    }
}

/* ---- _get_closed_form_lr: only SequentialLR's step(0) reaches these ------------------------------- */

static bool has_closed_form(const em_scheduler *s)
{
    switch (s->kind) {
    case K_STEP: case K_MULTISTEP: case K_EXPONENTIAL: case K_COSINE:
    case K_LINEAR: case K_CONSTANT: case K_POLYNOMIAL:
        return true;
    default:
        return false;
    }
}

static int cmp_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* torch: <class>._get_closed_form_lr; values for base_lrs, so *n = n_base. */
static em_status closed_form_lr(em_scheduler *s, size_t *n)
{
    const int64_t e = s->last_epoch;
    *n = s->n_base;
    for (size_t g = 0; g < *n; g++) {
        const double base = s->base_lrs[g];
        double v = 0, q = 0;
        em_status st = EM_OK;
        switch (s->kind) {
        case K_STEP:
            v = base * pow(s->u.step.gamma, (double)py_floordiv(e, s->u.step.step_size));
            break;
        case K_MULTISTEP: { /* sorted(milestones.elements()) then bisect_right */
            size_t m = s->u.multistep.n;
            int64_t *sorted = malloc((m ? m : 1) * sizeof *sorted);
            if (sorted == NULL)
                return out_of_memory();
            memcpy(sorted, s->u.multistep.milestones, m * sizeof *sorted);
            qsort(sorted, m, sizeof *sorted, cmp_int64);
            v = base * pow(s->u.multistep.gamma, (double)bisect_right(sorted, m, e));
            free(sorted);
            break;
        }
        case K_EXPONENTIAL:
            v = base * pow(s->u.exponential.gamma, (double)e);
            break;
        case K_COSINE: {
            double eta_min = s->u.cosine.eta_min;
            v = eta_min + (base - eta_min) * (1 + cos(PY_PI * (double)e / (double)s->u.cosine.T_max)) / 2;
            break;
        }
        case K_LINEAR: {
            double start = s->u.linear.start_factor, end = s->u.linear.end_factor;
            int64_t total = s->u.linear.total_iters;
            st = py_div(s, (end - start) * (double)(total < e ? total : e), (double)total, &q);
            v = base * (start + q);
            break;
        }
        case K_CONSTANT: {
            double factor = s->u.constant.factor;
            v = base * (factor + (e >= s->u.constant.total_iters ? 1.0 : 0.0) * (1 - factor));
            break;
        }
        case K_POLYNOMIAL: {
            int64_t T = s->u.polynomial.total_iters;
            st = py_div(s, (double)(T < e ? T : e), (double)T, &q);
            if (st == EM_OK)
                st = py_pow(s, 1.0 - q, s->u.polynomial.power, &q);
            v = base * q;
            break;
        }
        default:
            return emi_fail(EM_ERROR, "em_scheduler: %s has no closed form", sched_name(s));
        }
        if (st != EM_OK)
            return st;
        s->values[g] = v;
    }
    return EM_OK;
}

/* ---- step(), step(0), _initial_step() for every kind --------------------------------------------- */

static em_status sched_step(em_scheduler *s);

/* A C scheduler's ops->step, then _last_lr. A failure it did not explain gets a message naming
 * the scheduler and `api`, the public function that stepped it. */
static em_status user_step(em_scheduler *s, const char *api, bool has_metric, double metric)
{
    em_status st = s->u.user.ops->step(s, has_metric, metric);
    if (st != EM_OK && !emi_has_error())
        return emi_fail(st, "%s: %s's step failed without a message (it returned %s)", api,
                        sched_name(s), em_status_name(st));
    return st != EM_OK ? st : record_last_lr(s);
}

/* torch: _LRScheduler.step(epoch): epoch None = `at_zero` false, 0 = true. */
static em_status lr_step(em_scheduler *s, bool at_zero)
{
    s->step_count++;
    s->last_epoch = at_zero ? 0 : s->last_epoch + 1;
    if (s->kind == K_USER)
        return user_step(s, s->api != NULL ? s->api : "em_scheduler_step", false, 0.0);
    size_t n = em_optimizer_num_groups(s->opt);
    em_status st = reserve(&s->values, &s->cap_values, n > s->n_base ? n : s->n_base);
    if (st == EM_OK)
        st = at_zero && has_closed_form(s) ? closed_form_lr(s, &n) : get_lr(s, &n);
    return st != EM_OK ? st : apply_values(s, n);
}

/* torch: CosineAnnealingWarmRestarts.step(epoch), for epoch None or 0 (its _step_count is never
 * read). */
static em_status restarts_step(em_scheduler *s, bool at_zero)
{
    int64_t epoch;
    if (at_zero || s->last_epoch < 0) {
        epoch = 0; /* epoch < T_0 since T_0 >= 1 */
        s->u.restarts.T_i = s->u.restarts.T_0;
        s->u.restarts.T_cur = 0;
    } else {
        epoch = s->last_epoch + 1;
        s->u.restarts.T_cur = s->u.restarts.T_cur + 1;
        if (s->u.restarts.T_cur >= s->u.restarts.T_i) {
            s->u.restarts.T_cur = s->u.restarts.T_cur - s->u.restarts.T_i;
            s->u.restarts.T_i = s->u.restarts.T_i * s->u.restarts.T_mult;
        }
    }
    s->last_epoch = epoch;
    size_t n = 0;
    em_status st = reserve(&s->values, &s->cap_values, s->n_base);
    if (st == EM_OK)
        st = restarts_get_lr(s, &n);
    return st != EM_OK ? st : apply_values(s, n);
}

/* torch: self._last_lr = child._last_lr (SequentialLR, after its child stepped) */
static em_status copy_last_lr(em_scheduler *s, const em_scheduler *child)
{
    em_status st = reserve(&s->last_lr, &s->cap_last, child->n_last);
    if (st == EM_OK) {
        memcpy(s->last_lr, child->last_lr, child->n_last * sizeof *s->last_lr);
        s->n_last = child->n_last;
        s->has_last_lr = true;
    }
    return st;
}

/* torch: SequentialLR.step */
static em_status sequential_step(em_scheduler *s)
{
    s->last_epoch += 1;
    size_t n_ms = s->u.composite.n - 1;
    size_t idx = bisect_right(s->u.composite.milestones, n_ms, s->last_epoch);
    em_scheduler *child = s->u.composite.children[idx];
    em_status st;
    if (idx > 0 && s->u.composite.milestones[idx - 1] == s->last_epoch)
        st = child->kind == K_WARM_RESTARTS ? restarts_step(child, true) : lr_step(child, true);
    else
        st = sched_step(child);
    return st != EM_OK ? st : copy_last_lr(s, child);
}

/* torch: ChainedScheduler.step */
static em_status chained_step(em_scheduler *s)
{
    for (size_t i = 0; i < s->u.composite.n; i++) {
        em_status st = sched_step(s->u.composite.children[i]);
        if (st != EM_OK)
            return st;
    }
    s->last_epoch += 1;
    return record_last_lr(s);
}

/* torch: scheduler.step() (never called on a plateau scheduler) */
static em_status sched_step(em_scheduler *s)
{
    switch (s->kind) {
    case K_WARM_RESTARTS: return restarts_step(s, false);
    case K_SEQUENTIAL: return sequential_step(s);
    case K_CHAINED: return chained_step(s);
    default: return lr_step(s, false);
    }
}

/* torch: _LRScheduler._initial_step: self._step_count = 0; self.step() */
static em_status sched_initial_step(em_scheduler *s)
{
    s->step_count = 0;
    return sched_step(s);
}

/* torch: ReduceLROnPlateau.is_better */
static bool plateau_is_better(const em_scheduler *s, double a, double best)
{
    const em_plateau_opts *o = &s->u.plateau.o;
    if (o->mode == EM_PLATEAU_MIN && o->threshold_mode == EM_THRESHOLD_REL) {
        double rel_epsilon = 1. - o->threshold;
        return a < best * rel_epsilon;
    }
    if (o->mode == EM_PLATEAU_MIN)
        return a < best - o->threshold;
    if (o->threshold_mode == EM_THRESHOLD_REL) {
        double rel_epsilon = o->threshold + 1.;
        return a > best * rel_epsilon;
    }
    return a > best + o->threshold;
}

/* torch: ReduceLROnPlateau._reduce_lr */
static em_status plateau_reduce_lr(em_scheduler *s)
{
    size_t n = em_optimizer_num_groups(s->opt);
    for (size_t g = 0; g < n; g++) {
        double old_lr, new_lr;
        em_status st = group_lr(s, g, &old_lr);
        if (st != EM_OK)
            return st;
        new_lr = old_lr * s->u.plateau.o.factor;
        double min_lr = s->u.plateau.o.min_lrs != NULL ? s->u.plateau.o.min_lrs[g] : s->u.plateau.o.min_lr;
        if (min_lr > new_lr) /* Python's max(new, min_lr) keeps the first on ties */
            new_lr = min_lr;
        if (old_lr - new_lr > s->u.plateau.o.eps && (st = em_optimizer_set_lr(s->opt, g, new_lr)) != EM_OK)
            return st;
    }
    return EM_OK;
}

/* torch: ReduceLROnPlateau.step(metrics) */
static em_status plateau_step(em_scheduler *s, double current)
{
    s->last_epoch = s->last_epoch + 1;
    if (plateau_is_better(s, current, s->u.plateau.best)) {
        s->u.plateau.best = current;
        s->u.plateau.num_bad_epochs = 0;
    } else {
        s->u.plateau.num_bad_epochs += 1;
    }
    if (s->u.plateau.cooldown_counter > 0) { /* in_cooldown */
        s->u.plateau.cooldown_counter -= 1;
        s->u.plateau.num_bad_epochs = 0;
    }
    if (s->u.plateau.num_bad_epochs > s->u.plateau.o.patience) {
        em_status st = plateau_reduce_lr(s);
        if (st != EM_OK)
            return st;
        s->u.plateau.cooldown_counter = s->u.plateau.o.cooldown;
        s->u.plateau.num_bad_epochs = 0;
    }
    return record_last_lr(s);
}

/* ---- construction and destruction ----------------------------------------------------------------- */

static void sched_destroy(em_scheduler *s)
{
    if (s == NULL)
        return;
    switch (s->kind) {
    case K_MULTISTEP:
        free(s->u.multistep.milestones);
        break;
    case K_SEQUENTIAL:
    case K_CHAINED:
        for (size_t i = 0; i < s->u.composite.n; i++)
            sched_destroy(s->u.composite.children[i]);
        free(s->u.composite.children);
        free(s->u.composite.milestones);
        break;
    case K_USER:
        if (s->u.user.ops->destroy != NULL)
            s->u.user.ops->destroy(s->u.user.state);
        break;
    case K_PLATEAU:
        free((double *)s->u.plateau.o.min_lrs); /* our copy */
        break;
    case K_ONECYCLE:
        free(s->u.onecycle.v);
        break;
    case K_CYCLIC:
        free(s->u.cyclic.v);
        break;
    default:
        break;
    }
    record_release(s->record);
    free(s->base_lrs);
    free(s->last_lr);
    free(s->values);
    emi_handle_retire(s);
}

static em_scheduler *sched_alloc(sched_kind kind, em_optimizer *opt)
{
    em_scheduler *s = calloc(1, sizeof *s);
    if (s == NULL)
        return no_scheduler(out_of_memory());
    s->magic = EMI_HANDLE_SCHEDULER;
    s->kind = kind;
    s->opt = opt;
    s->last_epoch = -1;
    return s;
}

/* The end of every constructor: `s` when st is EM_OK, else frees `s` and returns NULL. */
static em_scheduler *sched_finish(em_scheduler *s, em_status st)
{
    if (st == EM_OK)
        return s;
    sched_destroy(s);
    return NULL;
}

/* torch: _LRScheduler.__init__(optimizer, last_epoch=-1): setdefault initial_lr, base_lrs, the
 * initial step. Frees `s` and returns NULL when it fails. */
static em_scheduler *lr_init(em_scheduler *s)
{
    size_t n = em_optimizer_num_groups(s->opt);
    em_status st = EM_OK;
    if (s->record == NULL && (s->record = record_acquire(s->opt)) == NULL)
        st = EM_ENOMEM;
    if (st == EM_OK && (s->base_lrs = malloc((n ? n : 1) * sizeof *s->base_lrs)) == NULL)
        st = out_of_memory();
    for (size_t g = 0; st == EM_OK && g < n; g++) {
        double lr = 0;
        st = group_lr(s, g, &lr);
        if (st == EM_OK)
            st = record_put(s->record, g, lr, false);
        if (st == EM_OK)
            record_get(s->record, g, &s->base_lrs[g]);
    }
    s->n_base = n;
    s->last_epoch = -1;
    if (st == EM_OK)
        st = sched_initial_step(s);
    return sched_finish(s, st);
}

/* A scheduler of `kind` with `params`, through _LRScheduler.__init__. */
static em_scheduler *lr_new(sched_kind kind, em_optimizer *opt, sched_params params)
{
    em_scheduler *s = sched_alloc(kind, opt);
    if (s == NULL)
        return NULL;
    s->u = params;
    return lr_init(s);
}

/* ReduceLROnPlateau.__init__ (also a user scheduler's with reduce_on_plateau): no initial step,
 * last_epoch 0, and base_lrs for em_scheduler_base_lr: the lrs now (ReduceLROnPlateau has none).
 * Frees `s` and returns NULL when it fails. */
static em_scheduler *plateau_init(em_scheduler *s)
{
    s->last_epoch = 0;
    size_t n = em_optimizer_num_groups(s->opt);
    em_status st = reserve(&s->base_lrs, &s->n_base, n);
    for (size_t g = 0; st == EM_OK && g < n; g++)
        st = group_lr(s, g, &s->base_lrs[g]);
    return sched_finish(s, st);
}

em_scheduler *em_step_lr(em_optimizer *opt, int64_t step_size, double gamma)
{
    if (opt == NULL || !positive_int("em_step_lr", "step_size", step_size))
        return NULL;
    return lr_new(K_STEP, opt, (sched_params){.step = {.step_size = step_size, .gamma = gamma}});
}

em_scheduler *em_multistep_lr(em_optimizer *opt, const int64_t *milestones, size_t n, double gamma)
{
    if (opt == NULL)
        return NULL;
    if (milestones == NULL && n > 0)
        return no_scheduler(emi_fail(EM_EINVAL, "em_multistep_lr: milestones is NULL but n is %zu", n));
    em_scheduler *s = sched_alloc(K_MULTISTEP, opt);
    if (s == NULL)
        return NULL;
    s->u.multistep.gamma = gamma;
    s->u.multistep.n = n;
    s->u.multistep.milestones = malloc((n ? n : 1) * sizeof *milestones);
    if (s->u.multistep.milestones == NULL)
        return sched_finish(s, emi_fail(EM_ENOMEM, "em_multistep_lr: out of memory"));
    if (n > 0)
        memcpy(s->u.multistep.milestones, milestones, n * sizeof *milestones);
    return lr_init(s);
}

em_scheduler *em_exponential_lr(em_optimizer *opt, double gamma)
{
    if (opt == NULL)
        return NULL;
    return lr_new(K_EXPONENTIAL, opt, (sched_params){.exponential = {.gamma = gamma}});
}

em_scheduler *em_cosine_annealing_lr(em_optimizer *opt, int64_t T_max, double eta_min)
{
    if (opt == NULL || !positive_int("em_cosine_annealing_lr", "T_max", T_max))
        return NULL;
    return lr_new(K_COSINE, opt, (sched_params){.cosine = {.T_max = T_max, .eta_min = eta_min}});
}

em_scheduler *em_cosine_annealing_warm_restarts(em_optimizer *opt, int64_t T_0, int64_t T_mult,
                                                double eta_min)
{
    if (opt == NULL || !positive_int("em_cosine_annealing_warm_restarts", "T_0", T_0))
        return NULL;
    if (T_mult < 1)
        return no_scheduler(emi_fail(EM_EINVAL, "em_cosine_annealing_warm_restarts: Expected integer "
                                                "T_mult >= 1, but got %lld", (long long)T_mult));
    return lr_new(K_WARM_RESTARTS, opt,
                  (sched_params){.restarts = {.T_0 = T_0, .T_i = T_0, .T_mult = T_mult,
                                              .T_cur = -1, /* torch: self.T_cur = last_epoch */
                                              .eta_min = eta_min}});
}

/* Whether group 0 of `opt` has hyper-parameter `name`, leaving the error slot as it was. */
static bool optimizer_has(em_optimizer *opt, const char *name)
{
    bool had_error = emi_has_error();
    double v = 0;
    bool has = em_optimizer_num_groups(opt) > 0 && em_optimizer_get(opt, 0, name, &v) == EM_OK;
    if (!has && !had_error)
        em_clear_error(); /* the probe's own message */
    return has;
}

/* torch: OneCycleLR's and CyclicLR's _format_param(name, optimizer, param): `list` (n_list long)
 * when given, else `scalar` for each of the n groups, into out[n]. false (recorded) for a list
 * whose length is not n. */
static bool format_param(const char *f, const char *name, double scalar, const double *list,
                         size_t n_list, size_t n, double *out)
{
    if (list == NULL && n_list != 0) {
        emi_fail(EM_EINVAL, "%s: %ss is NULL but n_%ss is %zu", f, name, name, n_list);
        return false;
    }
    if (list != NULL && n_list != n) {
        emi_fail(EM_EINVAL, "%s: expected %zu values for %s, got %zu", f, n, name, n_list);
        return false;
    }
    for (size_t g = 0; g < n; g++)
        out[g] = list != NULL ? list[g] : scalar;
    return true;
}

/* OneCycleLR's argument checks, in torch's order: EM_OK, or the failure recorded. max_lr is
 * checked by the caller, after anneal_strategy. */
static em_status onecycle_check(const em_onecycle_opts *o, int64_t *total_steps)
{
    const char *f = "em_onecycle_lr";
    if (o->version < 1 || o->version > EM_ONECYCLE_OPTS_VERSION)
        return emi_fail(EM_EINVAL, "%s: options version %d is not supported (start from "
                                   "EM_ONECYCLE_OPTS_INIT)", f, o->version);
    if (o->total_steps == 0 && o->epochs == 0 && o->steps_per_epoch == 0)
        return emi_fail(EM_EINVAL, "%s: You must define either total_steps OR (epochs AND "
                                   "steps_per_epoch)", f);
    if (o->total_steps != 0) {
        if (!positive_int(f, "total_steps", o->total_steps))
            return EM_EINVAL;
        *total_steps = o->total_steps;
    } else {
        if (!positive_int(f, "epochs", o->epochs) || !positive_int(f, "steps_per_epoch", o->steps_per_epoch))
            return EM_EINVAL;
        if (__builtin_mul_overflow(o->epochs, o->steps_per_epoch, total_steps))
            return emi_fail(EM_EINVAL, "%s: epochs * steps_per_epoch (%lld * %lld) does not fit in 64 bits", f,
                            (long long)o->epochs, (long long)o->steps_per_epoch);
    }
    if (!(o->pct_start >= 0 && o->pct_start <= 1))
        return emi_fail(EM_EINVAL, "%s: Expected float between 0 and 1 pct_start, but got %g", f,
                        o->pct_start);
    if (o->anneal_strategy != EM_ANNEAL_COS && o->anneal_strategy != EM_ANNEAL_LINEAR)
        return emi_fail(EM_EINVAL, "%s: anneal_strategy must by one of 'cos' or 'linear', instead got "
                                   "%d", f, (int)o->anneal_strategy);
    if (o->div_factor == 0 || o->final_div_factor == 0)
        return emi_fail(EM_EINVAL, "%s: div_factor and final_div_factor must not be 0 (got %g, %g; "
                                   "torch raises ZeroDivisionError)", f, o->div_factor, o->final_div_factor);
    return EM_OK;
}

/* OneCycleLR's per-group values: max_lrs, then max_momentums and base_momentums (torch's order),
 * into v[0..n), v[2n..3n), v[3n..4n). Version 1 options have no lists. false (recorded) when a
 * list's length is wrong or a max_lr is not > 0. */
static bool onecycle_values(const em_onecycle_opts *o, bool momentum, size_t n, double *v)
{
    const char *f = "em_onecycle_lr";
    bool v2 = o->version >= 2; /* a version-1 struct ends at three_phase */
    if (!format_param(f, "max_lr", o->max_lr, v2 ? o->max_lrs : NULL, v2 ? o->n_max_lrs : 0, n, v))
        return false;
    for (size_t g = 0; g < n; g++) {
        if (!(v[g] > 0)) {
            emi_fail(EM_EINVAL, "%s: max_lr is required (got %g for group %zu; it must be > 0)", f,
                     v[g], g);
            return false;
        }
    }
    if (!momentum)
        return true;
    return format_param(f, "max_momentum", o->max_momentum, v2 ? o->max_momentums : NULL,
                        v2 ? o->n_max_momentums : 0, n, v + 2 * n) &&
           format_param(f, "base_momentum", o->base_momentum, v2 ? o->base_momentums : NULL,
                        v2 ? o->n_base_momentums : 0, n, v + 3 * n);
}

em_scheduler *em_onecycle_lr(em_optimizer *opt, const em_onecycle_opts *opts)
{
    if (opt == NULL)
        return NULL;
    if (opts == NULL)
        return no_scheduler(emi_fail(EM_EINVAL, "em_onecycle_lr: max_lr is required (opts is NULL)"));
    int64_t total = 0;
    if (onecycle_check(opts, &total) != EM_OK)
        return NULL;
    size_t n = em_optimizer_num_groups(opt);
    double *v = malloc(4 * (n ? n : 1) * sizeof *v);
    if (v == NULL)
        return no_scheduler(out_of_memory());
    /* torch: max_lrs = self._format_param('max_lr', ...), then the momentum checks */
    if (!onecycle_values(opts, false, n, v)) {
        free(v);
        return NULL;
    }
    const char *momentum_key = NULL;
    if (opts->cycle_momentum) {
        if (optimizer_has(opt, "beta1"))
            momentum_key = "beta1"; /* torch: 'betas' in optimizer.defaults */
        else if (optimizer_has(opt, "momentum"))
            momentum_key = "momentum";
        else {
            free(v);
            return no_scheduler(emi_fail(EM_EINVAL, "em_onecycle_lr: optimizer must support momentum "
                                                    "with `cycle_momentum` option enabled (%s has "
                                                    "neither momentum nor beta1)",
                                         em_optimizer_name(opt)));
        }
        if (!onecycle_values(opts, true, n, v)) {
            free(v);
            return NULL;
        }
    }
    em_scheduler *s = sched_alloc(K_ONECYCLE, opt);
    if (s == NULL) {
        free(v);
        return NULL;
    }
    s->u.onecycle.v = v;
    s->u.onecycle.total_steps = total;
    s->u.onecycle.linear = opts->anneal_strategy == EM_ANNEAL_LINEAR;
    s->u.onecycle.cycle_momentum = opts->cycle_momentum;
    s->u.onecycle.momentum_key = momentum_key;
    /* torch: _schedule_phases */
    const double pct = opts->pct_start;
    onecycle_phase *ph = s->u.onecycle.phases;
    ph[0] = (onecycle_phase){pct * (double)total - 1, OC_INITIAL_LR, OC_MAX_LR, OC_MAX_MOM, OC_BASE_MOM};
    if (opts->three_phase) {
        ph[1] = (onecycle_phase){2 * pct * (double)total - 2, OC_MAX_LR, OC_INITIAL_LR, OC_BASE_MOM,
                                 OC_MAX_MOM};
        ph[2] = (onecycle_phase){(double)(total - 1), OC_INITIAL_LR, OC_MIN_LR, OC_MAX_MOM, OC_MAX_MOM};
        s->u.onecycle.n_phases = 3;
    } else {
        ph[1] = (onecycle_phase){(double)(total - 1), OC_MAX_LR, OC_MIN_LR, OC_BASE_MOM, OC_MAX_MOM};
        s->u.onecycle.n_phases = 2;
    }
    /* torch: group['initial_lr'] = max_lrs[idx] / div_factor; group['max_lr'] = max_lrs[idx];
     * group['min_lr'] = group['initial_lr'] / final_div_factor */
    s->u.onecycle.n_groups = n;
    em_status st = (s->record = record_acquire(opt)) != NULL ? EM_OK : EM_ENOMEM;
    for (size_t g = 0; st == EM_OK && g < n; g++) {
        const double initial_lr = v[g] / opts->div_factor;
        v[n + g] = initial_lr / opts->final_div_factor;
        st = record_put(s->record, g, initial_lr, true);
    }
    /* torch: group['momentum'] (or betas[0]) = m_momentum */
    for (size_t g = 0; st == EM_OK && momentum_key != NULL && g < n; g++)
        st = em_optimizer_set(opt, g, momentum_key, v[2 * n + g]);
    return st != EM_OK ? sched_finish(s, st) : lr_init(s);
}

/* CyclicLR's checks and lists, in torch's order, into v (see sched_params.cyclic): false
 * (recorded) when an argument is wrong. */
static bool cyclic_values(em_optimizer *opt, const em_cyclic_opts *o, size_t n, double *v)
{
    const char *f = "em_cyclic_lr";
    if (!format_param(f, "base_lr", o->base_lr, o->base_lrs, o->n_base_lrs, n, v))
        return false;
    if (o->max_lrs == NULL && o->n_max_lrs == 0 && o->max_lr == 0) {
        emi_fail(EM_EINVAL, "%s: max_lr is required (got 0: set max_lr or max_lrs)", f);
        return false;
    }
    if (!format_param(f, "max_lr", o->max_lr, o->max_lrs, o->n_max_lrs, n, v + n))
        return false;
    for (size_t i = 0; i < 2 * n; i++) {
        if (!(v[i] >= 0)) { /* what em_optimizer_set_lr would refuse half-way */
            emi_fail(EM_EINVAL, "%s: Invalid learning rate: %g (%s of group %zu)", f, v[i],
                     i < n ? "base_lr" : "max_lr", i % (n ? n : 1));
            return false;
        }
    }
    if (!positive_int(f, "step_size_up", o->step_size_up))
        return false;
    if (o->step_size_down < 0) {
        emi_fail(EM_EINVAL, "%s: step_size_down must be >= 0 (0 = step_size_up, torch's None), got "
                            "%lld", f, (long long)o->step_size_down);
        return false;
    }
    if (o->scale_fn == NULL && o->mode != EM_CYCLIC_TRIANGULAR && o->mode != EM_CYCLIC_TRIANGULAR2 &&
        o->mode != EM_CYCLIC_EXP_RANGE) {
        emi_fail(EM_EINVAL, "%s: mode is invalid and scale_fn is None (mode %d)", f, (int)o->mode);
        return false;
    }
    if (o->scale_fn != NULL && o->scale_mode != EM_CYCLIC_SCALE_CYCLE &&
        o->scale_mode != EM_CYCLIC_SCALE_ITERATIONS) {
        emi_fail(EM_EINVAL, "%s: scale_mode %d is unknown (EM_CYCLIC_SCALE_CYCLE or "
                            "EM_CYCLIC_SCALE_ITERATIONS)", f, (int)o->scale_mode);
        return false;
    }
    if (!o->cycle_momentum)
        return true;
    if (!optimizer_has(opt, "momentum")) { /* torch 1.13: 'momentum' not in optimizer.defaults */
        emi_fail(EM_EINVAL, "%s: optimizer must support momentum with `cycle_momentum` option "
                            "enabled (%s has no momentum; torch 1.13's CyclicLR does not cycle "
                            "betas: set cycle_momentum = false)", f, em_optimizer_name(opt));
        return false;
    }
    if (!format_param(f, "base_momentum", o->base_momentum, o->base_momentums, o->n_base_momentums,
                      n, v + 2 * n) ||
        !format_param(f, "max_momentum", o->max_momentum, o->max_momentums, o->n_max_momentums, n,
                      v + 3 * n))
        return false;
    for (size_t i = 2 * n; i < 4 * n; i++) {
        if (!(v[i] >= 0)) {
            emi_fail(EM_EINVAL, "%s: Invalid momentum value: %g (%s of group %zu)", f, v[i],
                     i < 3 * n ? "base_momentum" : "max_momentum", i % n);
            return false;
        }
    }
    return true;
}

em_scheduler *em_cyclic_lr(em_optimizer *opt, const em_cyclic_opts *opts)
{
    const char *f = "em_cyclic_lr";
    if (opt == NULL)
        return NULL;
    if (opts == NULL)
        return no_scheduler(emi_fail(EM_EINVAL, "%s: max_lr is required (opts is NULL)", f));
    if (opts->version < 1 || opts->version > EM_CYCLIC_OPTS_VERSION)
        return no_scheduler(emi_fail(EM_EINVAL, "%s: options version %d is not supported (start from "
                                                "EM_CYCLIC_OPTS_INIT)", f, opts->version));
    size_t n = em_optimizer_num_groups(opt);
    double *v = malloc(4 * (n ? n : 1) * sizeof *v);
    if (v == NULL)
        return no_scheduler(out_of_memory());
    if (!cyclic_values(opt, opts, n, v)) {
        free(v);
        return NULL;
    }
    em_scheduler *s = sched_alloc(K_CYCLIC, opt);
    if (s == NULL) {
        free(v);
        return NULL;
    }
    s->u.cyclic.v = v;
    s->u.cyclic.n_groups = n;
    /* step_size_up = float(step_size_up); step_size_down = float(...) if not None else step_size_up */
    const double up = (double)opts->step_size_up;
    const double down = opts->step_size_down != 0 ? (double)opts->step_size_down : up;
    s->u.cyclic.total_size = up + down;
    s->u.cyclic.step_ratio = up / s->u.cyclic.total_size;
    s->u.cyclic.mode = opts->mode;
    s->u.cyclic.gamma = opts->gamma;
    s->u.cyclic.scale_fn = opts->scale_fn;
    s->u.cyclic.scale_ctx = opts->scale_ctx;
    /* triangular and triangular2 scale by cycle, exp_range by iterations */
    s->u.cyclic.scale_iterations = opts->scale_fn != NULL ? opts->scale_mode == EM_CYCLIC_SCALE_ITERATIONS
                                                          : opts->mode == EM_CYCLIC_EXP_RANGE;
    s->u.cyclic.cycle_momentum = opts->cycle_momentum;
    /* torch: group['lr'] = base_lr; with cycle_momentum group['momentum'] = base_momentum, and
     * self.base_momentums = [group['momentum'] ...] (the same values) */
    em_status st = EM_OK;
    for (size_t g = 0; st == EM_OK && g < n; g++)
        st = em_optimizer_set_lr(opt, g, v[g]);
    for (size_t g = 0; st == EM_OK && opts->cycle_momentum && g < n; g++)
        st = em_optimizer_set(opt, g, "momentum", v[2 * n + g]);
    if (st != EM_OK)
        return sched_finish(s, st);
    /* super().__init__: initial_lr (setdefault), base_lrs = the initial_lrs, the initial step;
     * then self.base_lrs = base_lrs */
    s = lr_init(s);
    if (s != NULL)
        memcpy(s->base_lrs, v, n * sizeof *v);
    return s;
}

em_scheduler *em_linear_lr(em_optimizer *opt, double start_factor, double end_factor,
                           int64_t total_iters)
{
    if (opt == NULL || !divisor_factor_ok("em_linear_lr", "Starting", start_factor, "the first step"))
        return NULL;
    if (!(end_factor >= 0 && end_factor <= 1.0))
        return no_scheduler(emi_fail(EM_EINVAL, "em_linear_lr: Ending multiplicative factor expected "
                                                "to be between 0 and 1. (got %g)", end_factor));
    if (!total_iters_ok("em_linear_lr", total_iters))
        return NULL;
    return lr_new(K_LINEAR, opt,
                  (sched_params){.linear = {.start_factor = start_factor, .end_factor = end_factor,
                                            .total_iters = total_iters}});
}

em_scheduler *em_constant_lr(em_optimizer *opt, double factor, int64_t total_iters)
{
    if (opt == NULL || !divisor_factor_ok("em_constant_lr", "Constant", factor, "total_iters") ||
        !total_iters_ok("em_constant_lr", total_iters))
        return NULL;
    return lr_new(K_CONSTANT, opt,
                  (sched_params){.constant = {.factor = factor, .total_iters = total_iters}});
}

em_scheduler *em_polynomial_lr(em_optimizer *opt, int64_t total_iters, double power)
{
    if (opt == NULL || !positive_int("em_polynomial_lr", "total_iters", total_iters))
        return NULL;
    return lr_new(K_POLYNOMIAL, opt,
                  (sched_params){.polynomial = {.total_iters = total_iters, .power = power}});
}

static em_scheduler *lambda_new(sched_kind kind, const char *func, em_optimizer *opt,
                                em_lr_lambda fn, void *ctx)
{
    if (opt == NULL)
        return NULL;
    if (fn == NULL)
        return no_scheduler(emi_fail(EM_EINVAL, "%s: lr_lambda is NULL", func));
    return lr_new(kind, opt, (sched_params){.lambda = {.fn = fn, .ctx = ctx}});
}

em_scheduler *em_lambda_lr(em_optimizer *opt, em_lr_lambda lr_lambda, void *ctx)
{
    return lambda_new(K_LAMBDA, "em_lambda_lr", opt, lr_lambda, ctx);
}

em_scheduler *em_multiplicative_lr(em_optimizer *opt, em_lr_lambda lr_lambda, void *ctx)
{
    return lambda_new(K_MULTIPLICATIVE, "em_multiplicative_lr", opt, lr_lambda, ctx);
}

em_scheduler *em_reduce_lr_on_plateau(em_optimizer *opt, const em_plateau_opts *opts)
{
    static const em_plateau_opts defaults = EM_PLATEAU_OPTS_INIT;
    const char *f = "em_reduce_lr_on_plateau";
    if (opt == NULL)
        return NULL;
    if (opts == NULL)
        opts = &defaults;
    if (opts->version < 1 || opts->version > EM_PLATEAU_OPTS_VERSION)
        return no_scheduler(emi_fail(EM_EINVAL, "%s: options version %d is not supported (start from "
                                                "EM_PLATEAU_OPTS_INIT)", f, opts->version));
    if (!(opts->factor < 1.0))
        return no_scheduler(emi_fail(EM_EINVAL, "%s: Factor should be < 1.0. (got %g)", f, opts->factor));
    if (opts->mode != EM_PLATEAU_MIN && opts->mode != EM_PLATEAU_MAX)
        return no_scheduler(emi_fail(EM_EINVAL, "%s: mode %d is unknown! (EM_PLATEAU_MIN or "
                                                "EM_PLATEAU_MAX)", f, (int)opts->mode));
    if (opts->threshold_mode != EM_THRESHOLD_REL && opts->threshold_mode != EM_THRESHOLD_ABS)
        return no_scheduler(emi_fail(EM_EINVAL, "%s: threshold mode %d is unknown! (EM_THRESHOLD_REL "
                                                "or EM_THRESHOLD_ABS)", f, (int)opts->threshold_mode));
    size_t ngroups = em_optimizer_num_groups(opt);
    if (opts->min_lrs != NULL && opts->n_min_lrs != ngroups)
        return no_scheduler(emi_fail(EM_EINVAL, "%s: expected %zu min_lrs, got %zu", f, ngroups,
                                     opts->n_min_lrs));
    double *min_lrs = NULL;
    if (opts->min_lrs != NULL) {
        min_lrs = malloc(ngroups * sizeof *min_lrs);
        if (min_lrs == NULL)
            return no_scheduler(emi_fail(EM_ENOMEM, "%s: out of memory", f));
        memcpy(min_lrs, opts->min_lrs, ngroups * sizeof *min_lrs);
    }
    em_scheduler *s = sched_alloc(K_PLATEAU, opt);
    if (s == NULL) {
        free(min_lrs);
        return NULL;
    }
    s->u.plateau.o = *opts;
    s->u.plateau.o.min_lrs = min_lrs;
    s->u.plateau.best = opts->mode == EM_PLATEAU_MIN ? INFINITY : -INFINITY; /* mode_worse */
    return plateau_init(s);
}

/* ---- composites ------------------------------------------------------------------------------------- */

/* Whether children[i] appears earlier in the array. */
static bool seen_before(em_scheduler *const *children, size_t i)
{
    for (size_t j = 0; j < i; j++)
        if (children[j] == children[i])
            return true;
    return false;
}

/* A composite's constructor failed: free each child it was given, once, unless another composite
 * owns it. Returns NULL. */
static em_scheduler *drop_children(em_scheduler *const *children, size_t n)
{
    for (size_t i = 0; children != NULL && i < n; i++)
        if (emi_handle_live(children[i], EMI_HANDLE_SCHEDULER) && !seen_before(children, i) &&
            children[i]->owner == NULL)
            sched_destroy(children[i]);
    return NULL;
}

/* The checks SequentialLR and ChainedScheduler share; false (recorded, or not for a NULL child). */
static bool composite_check(const char *f, em_scheduler *const *children, size_t n, bool sequential)
{
    if (children == NULL || n == 0) {
        emi_fail(EM_EINVAL, "%s: expects at least one scheduler (got %zu)", f, children == NULL ? 0 : n);
        return false;
    }
    for (size_t i = 0; i < n; i++)
        if (children[i] == NULL)
            return false; /* a failed constructor: its message stays */
    for (size_t i = 0; i < n; i++)
        if (!emi_handle_live(children[i], EMI_HANDLE_SCHEDULER)) {
            emi_handle_bad(f, sequential ? 2 : 1, children[i], "scheduler");
            return false;
        }
    for (size_t i = 0; i < n; i++) {
        const em_scheduler *c = children[i];
        const char *why = NULL;
        if (seen_before(children, i))
            why = "is given twice";
        else if (c->owner != NULL)
            why = "already belongs to another SequentialLR or ChainedScheduler";
        else if (is_plateau(c))
            why = "is a ReduceLROnPlateau, which cannot be stepped without a metric";
        else if (sequential && c->kind == K_CHAINED)
            why = "is a ChainedScheduler, which has no last_epoch (torch raises AttributeError)";
        else if (sequential && c->kind == K_SEQUENTIAL && i > 0)
            why = "is a SequentialLR after the first, which cannot be stepped at epoch 0 (torch "
                  "raises TypeError at its milestone)";
        if (why != NULL) {
            emi_fail(EM_EINVAL, "%s: scheduler %zu (%s) %s", f, i, sched_name(c), why);
            return false;
        }
    }
    return true;
}

static em_scheduler *composite_alloc(sched_kind kind, em_optimizer *opt, em_scheduler *const *children,
                                     size_t n)
{
    em_scheduler *s = sched_alloc(kind, opt);
    if (s == NULL)
        return NULL;
    s->u.composite.children = malloc(n * sizeof *children);
    s->u.composite.milestones = malloc(n * sizeof *s->u.composite.milestones);
    if (s->u.composite.children == NULL || s->u.composite.milestones == NULL)
        return sched_finish(s, out_of_memory());
    memcpy(s->u.composite.children, children, n * sizeof *children);
    s->u.composite.n = n;
    for (size_t i = 0; i < n; i++)
        children[i]->owner = s;
    return s;
}

em_scheduler *em_sequential_lr(em_optimizer *opt, em_scheduler *const *schedulers, size_t n,
                               const int64_t *milestones)
{
    const char *f = "em_sequential_lr";
    if (opt == NULL || !composite_check(f, schedulers, n, true))
        return drop_children(schedulers, n);
    for (size_t i = 0; i < n; i++) {
        if (!same_optimizer(schedulers[i]->opt, opt)) {
            emi_fail(EM_EINVAL, "%s: Sequential Schedulers expects all schedulers to belong to the "
                                "same optimizer, but got schedulers at index %zu to be different "
                                "than the optimizer passed in.", f, i);
            return drop_children(schedulers, n);
        }
    }
    if (milestones == NULL && n > 1) {
        emi_fail(EM_EINVAL, "%s: milestones is NULL but %zu schedulers need %zu milestones", f, n, n - 1);
        return drop_children(schedulers, n);
    }
    /* every group must have an initial_lr before anything changes (torch: KeyError midway) */
    lr_record *record = record_acquire(opt);
    if (record == NULL)
        return drop_children(schedulers, n);
    size_t groups = em_optimizer_num_groups(opt);
    for (size_t g = 0; g < groups; g++) {
        double v = 0;
        if (!record_get(record, g, &v)) {
            emi_fail(EM_EINVAL, "%s: param 'initial_lr' is not specified in param_groups[%zu] (the "
                                "group was added after the schedulers were created)", f, g);
            record_release(record);
            return drop_children(schedulers, n);
        }
    }
    em_scheduler *s = composite_alloc(K_SEQUENTIAL, opt, schedulers, n);
    if (s == NULL) {
        record_release(record);
        return drop_children(schedulers, n);
    }
    s->record = record;
    if (n > 1)
        memcpy(s->u.composite.milestones, milestones, (n - 1) * sizeof *milestones);
    s->last_epoch = 0; /* torch: last_epoch + 1 */

    /* Reset learning rates back to initial values */
    em_status st = EM_OK;
    for (size_t g = 0; st == EM_OK && g < groups; g++) {
        double v = 0;
        record_get(record, g, &v);
        st = em_optimizer_set_lr(opt, g, v);
    }
    /* "Undo" the step performed by other schedulers */
    for (size_t i = 0; i < n; i++)
        schedulers[i]->last_epoch -= 1;
    /* Perform the initial step for only the first scheduler */
    em_scheduler *first = schedulers[0];
    first->api = f;
    if (st == EM_OK)
        st = sched_initial_step(first);
    first->api = NULL;
    if (st == EM_OK)
        st = copy_last_lr(s, first);
    return sched_finish(s, st);
}

em_scheduler *em_chained_scheduler(em_scheduler *const *schedulers, size_t n)
{
    const char *f = "em_chained_scheduler";
    if (!composite_check(f, schedulers, n, false))
        return drop_children(schedulers, n);
    for (size_t i = 1; i < n; i++) {
        if (!same_optimizer(schedulers[i]->opt, schedulers[0]->opt)) {
            emi_fail(EM_EINVAL, "%s: ChainedScheduler expects all schedulers to belong to the same "
                                "optimizer, but got schedulers at index 0 and %zu to be different", f, i);
            return drop_children(schedulers, n);
        }
    }
    em_scheduler *s = composite_alloc(K_CHAINED, schedulers[0]->opt, schedulers, n);
    if (s == NULL)
        return drop_children(schedulers, n);
    s->last_epoch = 0;
    return sched_finish(s, record_last_lr(s));
}

/* ---- schedulers written in C ------------------------------------------------------------------------ */

em_scheduler *em_scheduler_new(const em_scheduler_ops *ops, em_optimizer *opt, void *state)
{
    bool bad = true;
    if (opt == NULL)
        ; /* a failed optimizer constructor: its message stays */
    else if (ops == NULL)
        emi_fail(EM_EINVAL, "em_scheduler_new: ops is NULL");
    else if (ops->version < 1 || ops->version > EM_SCHEDULER_OPS_VERSION)
        emi_fail(EM_EINVAL, "em_scheduler_new: ops->version %d is not supported (set it to "
                            "EM_SCHEDULER_OPS_VERSION, %d)", ops->version, EM_SCHEDULER_OPS_VERSION);
    else if (ops->step == NULL)
        emi_fail(EM_EINVAL, "em_scheduler_new: ops->step is NULL");
    else
        bad = false;
    em_scheduler *s = bad ? NULL : sched_alloc(K_USER, opt);
    if (s == NULL) { /* the scheduler owns `state` from the call on, also when it fails */
        if (ops != NULL && ops->destroy != NULL)
            ops->destroy(state);
        return NULL;
    }
    s->u.user.ops = ops;
    s->u.user.state = state;
    if (ops->reduce_on_plateau)
        return plateau_init(s);
    s->api = "em_scheduler_new"; /* the initial step's messages */
    s = lr_init(s);
    if (s != NULL)
        s->api = NULL;
    return s;
}

/* The entry check of a public function taking a scheduler: true for a live one; false for NULL
 * (nothing recorded) and for a freed or foreign pointer (EM_EMISUSE recorded under `func`). */
static bool sched_ok(const em_scheduler *s, const char *func)
{
    return emi_handle_ok(s, EMI_HANDLE_SCHEDULER, func, "scheduler");
}

void *em_scheduler_state(const em_scheduler *s)
{
    return sched_ok(s, __func__) && s->kind == K_USER ? s->u.user.state : NULL;
}

/* ---- using schedulers ----------------------------------------------------------------------------- */

/* A scheduler's optimizer must still be alive to be stepped: a freed one has no groups and its handle
 * check recorded why (EM_EMISUSE, "a freed optimizer"). */
static em_status optimizer_alive(const em_scheduler *s, const char *func)
{
    if (em_optimizer_num_groups(s->opt) > 0)
        return EM_OK;
    if (emi_has_error())
        return em_last_status();
    return emi_fail(EM_EMISUSE, "%s: the %s's optimizer has no parameter groups (was it freed?)", func, sched_name(s));
}

em_status em_scheduler_step(em_scheduler *s)
{
    if (!sched_ok(s, __func__))
        return s == NULL ? EM_EINVAL : EM_EMISUSE;
    em_status alive = optimizer_alive(s, "em_scheduler_step");
    if (alive != EM_OK)
        return alive;
    if (is_plateau(s))
        return emi_fail(EM_EINVAL, "em_scheduler_step: %s needs a metric: use "
                                   "em_scheduler_step_metric() (torch: step() missing 1 required "
                                   "positional argument: 'metrics')", sched_name(s));
    return sched_step(s);
}

em_status em_scheduler_step_metric(em_scheduler *s, double metric)
{
    if (!sched_ok(s, __func__))
        return s == NULL ? EM_EINVAL : EM_EMISUSE;
    em_status alive = optimizer_alive(s, "em_scheduler_step_metric");
    if (alive != EM_OK)
        return alive;
    if (!is_plateau(s))
        return emi_fail(EM_EINVAL, "em_scheduler_step_metric: %s is not a ReduceLROnPlateau and "
                                   "takes no metric: use em_scheduler_step()", sched_name(s));
    if (s->kind == K_PLATEAU)
        return plateau_step(s, metric);
    s->last_epoch += 1;
    return user_step(s, "em_scheduler_step_metric", true, metric);
}

double em_scheduler_last_lr(const em_scheduler *s, size_t group)
{
    if (!sched_ok(s, __func__))
        return NAN;
    if (!s->has_last_lr) {
        emi_fail(EM_ESTATE, "em_scheduler_last_lr: %s has no last lr before its first step (torch "
                            "raises AttributeError)", sched_name(s));
        return NAN;
    }
    if (group >= s->n_last) {
        emi_fail(EM_EINVAL, "em_scheduler_last_lr: group %zu out of range (%s has %zu)", group,
                 sched_name(s), s->n_last);
        return NAN;
    }
    return s->last_lr[group];
}

double em_scheduler_base_lr(const em_scheduler *s, size_t group)
{
    if (!sched_ok(s, __func__))
        return NAN;
    if (s->kind == K_SEQUENTIAL || s->kind == K_CHAINED)
        return em_scheduler_base_lr(s->u.composite.children[0], group);
    if (group >= s->n_base) {
        emi_fail(EM_EINVAL, "em_scheduler_base_lr: group %zu out of range (%s has %zu)", group,
                 sched_name(s), s->n_base);
        return NAN;
    }
    return s->base_lrs[group];
}

int64_t em_scheduler_last_epoch(const em_scheduler *s)
{
    return sched_ok(s, __func__) ? s->last_epoch : -1;
}

em_optimizer *em_scheduler_optimizer(const em_scheduler *s)
{
    return sched_ok(s, __func__) ? s->opt : NULL;
}

bool em_scheduler_is_plateau(const em_scheduler *s)
{
    return sched_ok(s, __func__) && is_plateau(s);
}

const char *em_scheduler_name(const em_scheduler *s)
{
    return sched_ok(s, __func__) ? sched_name(s) : "";
}

void em_scheduler_free(em_scheduler *s)
{
    if (!emi_handle_free_ok(__func__, s, EMI_HANDLE_SCHEDULER, "scheduler"))
        return;
    if (s->owner != NULL) {
        emi_fail(EM_EMISUSE, "em_scheduler_free: this scheduler belongs to the %s it was given to, which frees it",
                 sched_name(s->owner));
        return;
    }
    if (s->trainer_owned) {
        emi_fail(EM_EINVAL, "em_scheduler_free: this scheduler belongs to a trainer (em_optim_setup_add_scheduler "
                            "or em_lr_schedulers); the trainer frees it when it fits again or is freed (em_trainer_free)");
        return;
    }
    sched_destroy(s);
}

void emi_scheduler_set_owned(em_scheduler *s, bool owned)
{
    if (s != NULL)
        s->trainer_owned = owned;
}

/* ---- state, for checkpoints (backend.h) ------------------------------------------------------------
 * torch's state_dict of a scheduler (everything but the optimizer and the callables), flattened into
 * doubles: kind, last_epoch, _step_count, whether _last_lr is set, base_lrs, _last_lr, the
 * optimizer's initial_lr record, then what the kind changes as it steps (CosineAnnealingWarmRestarts:
 * T_i, T_cur; ReduceLROnPlateau: best, num_bad_epochs, cooldown_counter) and a composite's children,
 * each as its own length and vector. The configuration (milestones, phases, ...) is not in it: the
 * scheduler it is restored into was built with the same arguments. */

typedef struct state_out {
    double *v;
    size_t cap, n;
} state_out;

static void put_d(state_out *o, double d)
{
    if (o->n < o->cap)
        o->v[o->n] = d;
    o->n++;
}

/* A scheduler written in C keeps its state through its ops (version 2). */
static bool user_savable(const em_scheduler *s)
{
    const em_scheduler_ops *ops = s->u.user.ops;
    return ops->version >= 2 && ops->state_save != NULL && ops->state_load != NULL;
}

/* Its state_save bytes as doubles: the count, then one value per byte. false on failure (recorded). */
static bool user_state_write(const em_scheduler *s, state_out *o)
{
    void *bytes = NULL;
    size_t n = 0;
    em_clear_error();
    em_status st = s->u.user.ops->state_save((em_scheduler *)s, &bytes, &n);
    if (st == EM_OK && emi_has_error())
        st = em_last_status();
    if (st != EM_OK || (bytes == NULL && n > 0)) {
        free(bytes);
        if (!emi_has_error())
            emi_fail(st != EM_OK ? st : EM_EINVAL, "em_checkpoint_save: the state_save of scheduler %s failed",
                     sched_name(s));
        return false;
    }
    if (bytes == NULL)
        n = 0;
    put_d(o, (double)n);
    for (size_t i = 0; i < n; i++)
        put_d(o, (double)((const unsigned char *)bytes)[i]);
    free(bytes);
    return true;
}

static bool state_write(const em_scheduler *s, state_out *o)
{
    if (s->kind == K_USER && !user_savable(s))
        return false;
    put_d(o, (double)s->kind);
    put_d(o, (double)s->last_epoch);
    put_d(o, (double)s->step_count);
    put_d(o, s->has_last_lr ? 1 : 0);
    put_d(o, (double)s->n_base);
    for (size_t i = 0; i < s->n_base; i++)
        put_d(o, s->base_lrs[i]);
    put_d(o, (double)s->n_last);
    for (size_t i = 0; i < s->n_last; i++)
        put_d(o, s->last_lr[i]);
    size_t nr = 0;
    if (s->record != NULL) {
        records_enter();
        nr = s->record->n;
        put_d(o, (double)nr);
        for (size_t i = 0; i < nr; i++) {
            put_d(o, s->record->has[i] ? 1 : 0);
            put_d(o, s->record->has[i] ? s->record->initial_lr[i] : 0);
        }
        records_leave();
    } else {
        put_d(o, 0);
    }
    switch (s->kind) {
    case K_WARM_RESTARTS:
        put_d(o, (double)s->u.restarts.T_i);
        put_d(o, (double)s->u.restarts.T_cur);
        break;
    case K_PLATEAU:
        put_d(o, s->u.plateau.best);
        put_d(o, (double)s->u.plateau.num_bad_epochs);
        put_d(o, (double)s->u.plateau.cooldown_counter);
        break;
    case K_USER:
        if (!user_state_write(s, o))
            return false;
        break;
    case K_SEQUENTIAL:
    case K_CHAINED:
        put_d(o, (double)s->u.composite.n);
        for (size_t c = 0; c < s->u.composite.n; c++) {
            size_t at = o->n;
            put_d(o, 0); /* the child's length, filled below */
            if (!state_write(s->u.composite.children[c], o))
                return false;
            if (at < o->cap)
                o->v[at] = (double)(o->n - at - 1);
        }
        break;
    default: break;
    }
    return true;
}

size_t emi_scheduler_state_get(const em_scheduler *s, double *out, size_t cap)
{
    state_out o = {out, out != NULL ? cap : 0, 0};
    if (s == NULL) {
        emi_fail(EM_EINVAL, "em_checkpoint_save: a scheduler is NULL");
        return 0;
    }
    if (!state_write(s, &o)) {
        if (!emi_has_error())
            emi_fail(EM_EUNSUPPORTED, "em_checkpoint_save: scheduler %s is written in C and its em_scheduler_ops have no "
                     "state_save and state_load (ops version 2): its state cannot be saved", sched_name(s));
        return 0;
    }
    return o.n;
}

typedef struct state_in {
    const double *v;
    size_t n, at;
    bool ok;
} state_in;

/* The next value, which must be an integer in [lo, hi]; sets ok = false otherwise. */
static int64_t get_i(state_in *in, double lo, double hi)
{
    if (!in->ok || in->at >= in->n) {
        in->ok = false;
        return 0;
    }
    double d = in->v[in->at++];
    if (!(d >= lo && d <= hi) || floor(d) != d) {
        in->ok = false;
        return 0;
    }
    return (int64_t)d;
}

static double get_d(state_in *in)
{
    if (!in->ok || in->at >= in->n) {
        in->ok = false;
        return 0;
    }
    return in->v[in->at++];
}

/* Check (apply false) or restore (apply true) s from in; false when it does not fit. */
static bool state_read(em_scheduler *s, state_in *in, bool apply)
{
    const double big = 9007199254740992.0;
    if (get_i(in, 0, K_USER) != (int64_t)s->kind || (s->kind == K_USER && !user_savable(s)))
        return false;
    int64_t last_epoch = get_i(in, -big, big), step_count = get_i(in, -big, big), has_last = get_i(in, 0, 1);
    if ((size_t)get_i(in, 0, 1 << 20) != s->n_base || !in->ok)
        return false;
    size_t base_at = in->at;
    if (in->at + s->n_base > in->n)
        return false;
    in->at += s->n_base;
    size_t n_last = (size_t)get_i(in, 0, 1 << 20);
    if (!in->ok || in->at + n_last > in->n || (apply && reserve(&s->last_lr, &s->cap_last, n_last) != EM_OK))
        return false;
    size_t last_at = in->at;
    in->at += n_last;
    size_t nr = (size_t)get_i(in, 0, 1 << 20);
    if (!in->ok || in->at + 2 * nr > in->n)
        return false;
    size_t rec_at = in->at;
    in->at += 2 * nr;
    if (nr > 0 && s->record == NULL)
        return false;
    int64_t T_i = 0, T_cur = 0, bad = 0, cool = 0;
    double best = 0;
    size_t user_at = 0, user_n = 0;
    if (s->kind == K_WARM_RESTARTS) {
        T_i = get_i(in, 1, big);
        T_cur = get_i(in, -big, big);
    } else if (s->kind == K_PLATEAU) {
        best = get_d(in);
        bad = get_i(in, 0, big);
        cool = get_i(in, 0, big);
    } else if (s->kind == K_USER) {
        size_t nb = (size_t)get_i(in, 0, (double)in->n);
        if (!in->ok || in->at + nb > in->n)
            return false;
        for (size_t i = 0; i < nb; i++)
            if (!(in->v[in->at + i] >= 0 && in->v[in->at + i] <= 255) || floor(in->v[in->at + i]) != in->v[in->at + i])
                return false;
        user_at = in->at;
        user_n = nb;
        in->at += nb;
    } else if (s->kind == K_SEQUENTIAL || s->kind == K_CHAINED) {
        if ((size_t)get_i(in, 0, 1 << 20) != s->u.composite.n || !in->ok)
            return false;
        for (size_t c = 0; c < s->u.composite.n; c++) {
            size_t len = (size_t)get_i(in, 0, (double)in->n);
            if (!in->ok || in->at + len > in->n)
                return false;
            state_in child = {in->v + in->at, len, 0, true};
            if (!state_read(s->u.composite.children[c], &child, apply) || child.at != len)
                return false;
            in->at += len;
        }
    }
    if (!in->ok)
        return false;
    if (!apply)
        return true;
    s->last_epoch = last_epoch;
    s->step_count = step_count;
    s->has_last_lr = has_last != 0;
    if (s->n_base > 0) /* a plateau or chained scheduler has none (and no array) */
        memcpy(s->base_lrs, in->v + base_at, s->n_base * sizeof *s->base_lrs);
    if (n_last > 0)
        memcpy(s->last_lr, in->v + last_at, n_last * sizeof *s->last_lr);
    s->n_last = n_last;
    for (size_t i = 0; i < nr; i++)
        if (in->v[rec_at + 2 * i] != 0 && record_put(s->record, i, in->v[rec_at + 2 * i + 1], true) != EM_OK)
            return false;
    if (s->kind == K_WARM_RESTARTS) {
        s->u.restarts.T_i = T_i;
        s->u.restarts.T_cur = T_cur;
    } else if (s->kind == K_PLATEAU) {
        s->u.plateau.best = best;
        s->u.plateau.num_bad_epochs = bad;
        s->u.plateau.cooldown_counter = cool;
    } else if (s->kind == K_USER) {
        unsigned char *bytes = malloc(user_n + 1);
        if (bytes == NULL) {
            emi_fail(EM_ENOMEM, "em_checkpoint_load: out of memory");
            return false;
        }
        for (size_t i = 0; i < user_n; i++)
            bytes[i] = (unsigned char)in->v[user_at + i];
        em_clear_error();
        em_status st = s->u.user.ops->state_load(s, user_n > 0 ? bytes : NULL, user_n);
        free(bytes);
        if (st == EM_OK && emi_has_error())
            st = em_last_status();
        if (st != EM_OK) {
            if (!emi_has_error())
                emi_fail(st, "em_checkpoint_load: the state_load of scheduler %s failed", sched_name(s));
            return false;
        }
    }
    return true;
}

em_status emi_scheduler_state_set(em_scheduler *s, const double *v, size_t n, bool apply, const char *who)
{
    if (s == NULL)
        return emi_fail(EM_EINVAL, "%s: a scheduler is NULL", who);
    state_in in = {v, n, 0, true};
    if (!state_read(s, &in, apply) || in.at != n)
        return emi_fail(apply && emi_has_error() ? em_last_status() : EM_EINVAL,
                        "%s: the saved state does not fit the scheduler %s (another kind, another number of "
                        "parameter groups or children, or a malformed state)", who, sched_name(s));
    return EM_OK;
}
