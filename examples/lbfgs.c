/* lbfgs.c: LBFGS under the trainer, with a closure, in manual and in automatic optimization.
 *
 * Problem: L2-regularised logistic regression on generated data (em_manual_seed):
 *
 *     x_j ~ N(0, s_j^2), s = (1, 3, 0.3, 10, 1),  p = sigmoid(x . w_true + b_true),  y ~ Bernoulli(p)
 *     L(w, b) = mean_i [ log(1 + exp(z_i)) - y_i z_i ] + lambda/2 |w|^2,   z_i = x_i . w + b
 *
 * over 400 points. The features have different spreads, as raw data often do, which makes the
 * problem ill-conditioned: LBFGS without a line search needs more evaluations than with
 * --strong-wolfe (and with spreads a little wider it diverges, where strong Wolfe still converges).
 * L is strictly convex, so it has one minimiser. The program finds it twice: once independently, by
 * Newton's method in double precision written in plain C below (no ember), and once with ember's
 * torch.optim.LBFGS port under em_trainer_fit, one full-batch LBFGS step (up to max_iter closure
 * evaluations) per epoch. It then prints, for each mode, the final loss, the gradient norm and the
 * distance to Newton's optimum (all three evaluated in double from the trained weights).
 *
 * Manual optimization is the pattern of Lightning's docs (LightningModule.optimizers, "Use closure
 * for LBFGS-like optimizers"):
 *
 *     def training_step(self, batch, batch_idx):
 *         opt = self.optimizers()
 *         def closure():
 *             loss = self.compute_loss(batch)
 *             opt.zero_grad()
 *             self.manual_backward(loss)
 *             return loss
 *         opt.step(closure=closure)
 *
 * Automatic optimization needs none of that: training_step returns the loss, and the loop's own
 * closure (training_step, zero_grad, backward) is what LBFGS re-evaluates, so training_step runs
 * once per evaluation while global_step counts one step.
 *
 *     ./build/bin/lbfgs [--mode manual|automatic|both] [--strong-wolfe] [--steps N] [--check TOL]
 *                       [--seed N]
 */
#include <ember.h>

#include <getopt.h> /* getopt_long */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "opts.h" /* strict numbers, getopt_long's messages */

enum { N_SAMPLES = 400, N_FEATURES = 5, N_THETA = N_FEATURES + 1 };
static const double LAMBDA = 0.01; /* the L2 weight on w (the bias is not regularised) */
static const float true_w[N_FEATURES] = {1.5f, -2.0f, 0.5f, 0.0f, 1.0f};   /* per unit of N(0, 1) */
static const float scale[N_FEATURES] = {1.0f, 3.0f, 0.3f, 10.0f, 1.0f}; /* the features' spreads */
static const float true_b = -0.3f;

/* ---- options ------------------------------------------------------------------------------------ */

typedef struct options {
    bool manual, automatic;
    bool strong_wolfe;
    long steps;   /* LBFGS steps = epochs (one full batch per epoch) */
    double check; /* > 0: exit 1 when a distance to the optimum is above it */
    unsigned long long seed;
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: lbfgs [--mode manual|automatic|both] [--strong-wolfe] [--steps N] [--check TOL]\n"
            "             [--seed N]\n"
            "Fits an L2-regularised logistic regression with LBFGS under the trainer, with a closure,\n"
            "and compares the result with the optimum found by Newton's method in double precision.\n"
            "  --mode M        manual: training_step builds the closure and calls step on\n"
            "                  em_optimizers(); automatic: the loop's closure; both (default)\n"
            "  --strong-wolfe  LBFGS with line_search_fn=\"strong_wolfe\" (default: none, lr 1)\n"
            "  --steps N       LBFGS steps, one per epoch (default 10; max_iter 20 each)\n"
            "  --check TOL     exit 1 when a mode ends farther than TOL from the optimum\n"
            "                  (default: no check)\n"
            "  --seed N        seed of em_manual_seed (default 0)\n"
            "  -h, --help      this text\n");
}

/* Long-only options get values above any character. */
enum { OPT_MODE = 256, OPT_STRONG_WOLFE, OPT_STEPS, OPT_CHECK, OPT_SEED };

static const struct option long_options[] = {
    {"mode", required_argument, NULL, OPT_MODE},
    {"strong-wolfe", no_argument, NULL, OPT_STRONG_WOLFE},
    {"steps", required_argument, NULL, OPT_STEPS},
    {"check", required_argument, NULL, OPT_CHECK},
    {"seed", required_argument, NULL, OPT_SEED},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* 0: parsed; 1: --help was printed; 2: a usage error was printed. "--opt value" or "--opt=value". */
static int parse_args(int argc, char **argv, options *o)
{
    opterr = 0; /* opts_rejected() says what was wrong */
    int c;
    while ((c = getopt_long(argc, argv, ":h", long_options, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'h':
            usage(stdout);
            return 1;
        case OPT_MODE:
            o->manual = strcmp(optarg, "manual") == 0 || strcmp(optarg, "both") == 0;
            o->automatic = strcmp(optarg, "automatic") == 0 || strcmp(optarg, "both") == 0;
            ok = o->manual || o->automatic;
            if (!ok)
                fprintf(stderr, "lbfgs: --mode must be manual, automatic or both (got '%s')\n", optarg);
            break;
        case OPT_STRONG_WOLFE:
            o->strong_wolfe = true;
            break;
        case OPT_STEPS:
            ok = opts_long("lbfgs", "--steps", optarg, 1, &o->steps);
            break;
        case OPT_CHECK:
            ok = opts_positive("lbfgs", "--check", optarg, &o->check);
            break;
        case OPT_SEED:
            ok = opts_seed("lbfgs", "--seed", optarg, &o->seed);
            break;
        default: /* '?' or ':' */
            opts_rejected("lbfgs", long_options, argv, c);
            return 2;
        }
        if (!ok)
            return 2;
    }
    return opts_no_operands("lbfgs", argc, argv) ? 0 : 2;
}

/* ---- the objective in double precision, without ember ----------------------------------------------- */

/* The data as plain arrays, for the independent computations. */
typedef struct dataset {
    double x[N_SAMPLES][N_FEATURES];
    double y[N_SAMPLES];
} dataset;

/* log(1 + exp(z)) without overflow */
static double softplus(double z)
{
    return z > 0 ? z + log1p(exp(-z)) : log1p(exp(z));
}

/* L(theta) with theta = (w, b); the gradient into g and the Hessian into h when they are not NULL. */
static double objective(const dataset *d, const double theta[N_THETA], double g[N_THETA],
                        double h[N_THETA][N_THETA])
{
    double loss = 0;
    if (g != NULL)
        memset(g, 0, sizeof(double) * N_THETA);
    if (h != NULL)
        memset(h, 0, sizeof(double) * N_THETA * N_THETA);
    for (int i = 0; i < N_SAMPLES; i++) {
        double xi[N_THETA];
        memcpy(xi, d->x[i], sizeof d->x[i]);
        xi[N_FEATURES] = 1.0; /* the bias input */
        double z = 0;
        for (int j = 0; j < N_THETA; j++)
            z += xi[j] * theta[j];
        loss += softplus(z) - d->y[i] * z;
        double p = 1.0 / (1.0 + exp(-z));
        for (int j = 0; g != NULL && j < N_THETA; j++)
            g[j] += (p - d->y[i]) * xi[j] / N_SAMPLES;
        for (int j = 0; h != NULL && j < N_THETA; j++)
            for (int k = 0; k < N_THETA; k++)
                h[j][k] += p * (1 - p) * xi[j] * xi[k] / N_SAMPLES;
    }
    loss /= N_SAMPLES;
    for (int j = 0; j < N_FEATURES; j++) {
        loss += 0.5 * LAMBDA * theta[j] * theta[j];
        if (g != NULL)
            g[j] += LAMBDA * theta[j];
        if (h != NULL)
            h[j][j] += LAMBDA;
    }
    return loss;
}

static double norm2(const double *v, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += v[i] * v[i];
    return sqrt(s);
}

/* Solve H s = g for s by Cholesky (H symmetric positive definite); false if it is not. */
static bool cholesky_solve(double h[N_THETA][N_THETA], const double g[N_THETA], double s[N_THETA])
{
    double l[N_THETA][N_THETA] = {{0}};
    for (int j = 0; j < N_THETA; j++) {
        double dsum = h[j][j];
        for (int k = 0; k < j; k++)
            dsum -= l[j][k] * l[j][k];
        if (!(dsum > 0))
            return false;
        l[j][j] = sqrt(dsum);
        for (int i = j + 1; i < N_THETA; i++) {
            double v = h[i][j];
            for (int k = 0; k < j; k++)
                v -= l[i][k] * l[j][k];
            l[i][j] = v / l[j][j];
        }
    }
    double t[N_THETA];
    for (int i = 0; i < N_THETA; i++) { /* L t = g */
        double v = g[i];
        for (int k = 0; k < i; k++)
            v -= l[i][k] * t[k];
        t[i] = v / l[i][i];
    }
    for (int i = N_THETA - 1; i >= 0; i--) { /* L^T s = t */
        double v = t[i];
        for (int k = i + 1; k < N_THETA; k++)
            v -= l[k][i] * s[k];
        s[i] = v / l[i][i];
    }
    return true;
}

/* Newton's method with backtracking from 0, to |grad| < 1e-13. Returns the iterations, -1 on failure. */
static int newton(const dataset *d, double theta[N_THETA])
{
    memset(theta, 0, sizeof(double) * N_THETA);
    for (int it = 0; it < 100; it++) {
        double g[N_THETA], h[N_THETA][N_THETA], s[N_THETA];
        double f = objective(d, theta, g, h);
        if (norm2(g, N_THETA) < 1e-13)
            return it;
        if (!cholesky_solve(h, g, s))
            return -1;
        double slope = 0; /* g . s > 0: -s is a descent direction */
        for (int j = 0; j < N_THETA; j++)
            slope += g[j] * s[j];
        double step = 1.0, next[N_THETA], gn[N_THETA];
        for (;;) {
            /* Armijo backtracking far away; near the optimum, where the loss no longer resolves the
             * decrease in double, the full step is accepted because it shrinks the gradient */
            for (int j = 0; j < N_THETA; j++)
                next[j] = theta[j] - step * s[j];
            double fn = objective(d, next, gn, NULL);
            if (fn <= f - 1e-4 * step * slope || norm2(gn, N_THETA) < 0.5 * norm2(g, N_THETA))
                break;
            if (step < 1e-10)
                return -1;
            step *= 0.5;
        }
        memcpy(theta, next, sizeof next);
    }
    return -1;
}

/* ---- data ---------------------------------------------------------------------------------------- */

/* x [n, 5] and y [n, 1] (float 0/1), owned by the open scope; copied into *d as doubles. */
static em_status make_data(dataset *d, em_tensor **x_out, em_tensor **y_out)
{
    float w_scaled[N_FEATURES];
    for (int j = 0; j < N_FEATURES; j++)
        w_scaled[j] = true_w[j] / scale[j];
    em_tensor *x = em_mul(em_randn(EM_SHAPE(N_SAMPLES, N_FEATURES), NULL), em_tensor_from_f32(scale, EM_SHAPE(N_FEATURES)));
    em_tensor *w = em_tensor_from_f32(w_scaled, EM_SHAPE(N_FEATURES, 1));
    em_tensor *p = em_sigmoid(em_add_scalar(em_matmul(x, w), true_b));
    em_tensor *y = em_to_dtype(em_lt(em_rand(EM_SHAPE(N_SAMPLES, 1), NULL), p), EM_F32);
    if (y == NULL)
        return em_last_status();
    float xf[N_SAMPLES * N_FEATURES], yf[N_SAMPLES];
    if (em_tensor_copy_to(x, xf, sizeof xf, EM_F32) != EM_OK ||
        em_tensor_copy_to(y, yf, sizeof yf, EM_F32) != EM_OK)
        return em_last_status();
    for (int i = 0; i < N_SAMPLES; i++) {
        for (int j = 0; j < N_FEATURES; j++)
            d->x[i][j] = xf[i * N_FEATURES + j];
        d->y[i] = yf[i];
    }
    *x_out = x;
    *y_out = y;
    return EM_OK;
}

/* ---- the module -------------------------------------------------------------------------------------- */

typedef struct logreg {
    em_module base;
    em_nn *linear; /* Linear(5, 1): weight [1, 5], bias [1] */
    bool strong_wolfe;
    long evaluations; /* closure evaluations (forward passes) */
} logreg;

/* The loss of the batch in float32 through ember (the same L as objective()); owned by the open scope. */
static em_tensor *compute_loss(logreg *r, const em_batch *b)
{
    r->evaluations++;
    em_tensor *logits = em_nn_forward(r->linear, b->t[0]);
    em_tensor *bce = em_bce_with_logits(logits, b->t[1], NULL, NULL, EM_REDUCTION_MEAN);
    em_tensor *l2 = em_mul_scalar(em_sum(em_square(em_nn_get(r->linear, "weight"))), 0.5 * LAMBDA);
    return em_add(bce, l2);
}

/* automatic: the loop wraps this in its closure, which LBFGS calls once per evaluation */
static em_tensor *automatic_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    return compute_loss((logreg *)m, b);
}

/* manual: the closure of Lightning's docs - loss, zero_grad, manual_backward, return the loss */
typedef struct closure_ctx {
    logreg *r;
    const em_batch *b;
    em_optimizer *opt;
} closure_ctx;

static em_tensor *closure(void *p)
{
    closure_ctx *c = p;
    em_tensor *loss = compute_loss(c->r, c->b);
    if (loss == NULL || em_optimizer_zero_grad(c->opt) != EM_OK ||
        em_manual_backward(&c->r->base, loss) != EM_OK)
        return NULL; /* the error is recorded: step fails with it */
    return loss;     /* owned by the scope the optimizer opened around this call */
}

static em_tensor *manual_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    em_optimizer **opts = em_optimizers(m, NULL); /* self.optimizers(): the wrapper */
    if (opts == NULL)
        return NULL;
    closure_ctx ctx = {.r = (logreg *)m, .b = b, .opt = opts[0]};
    em_optimizer_step(opts[0], &(em_closure){.fn = closure, .ctx = &ctx});
    return NULL; /* Lightning's `return None` (a failed step left its error recorded) */
}

static em_status configure_optimizers(em_module *m, em_optim_setup *setup)
{
    logreg *r = (logreg *)m;
    em_lbfgs_opts o = EM_LBFGS_OPTS_INIT; /* lr 1, max_iter 20, history 100 */
    o.strong_wolfe = r->strong_wolfe;
    em_params *ps = em_nn_parameters(r->linear);
    em_optimizer *opt = em_lbfgs(ps, &o);
    em_params_free(ps);
    return em_optim_setup_add(setup, opt); /* NULL opt: fails with the constructor's message */
}

static const em_module_ops manual_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = manual_training_step,
    .configure_optimizers = configure_optimizers,
};

static const em_module_ops automatic_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = automatic_training_step,
    .configure_optimizers = configure_optimizers,
};

/* ---- one run --------------------------------------------------------------------------------------- */

/* Fit in one mode; print loss, gradient norm and distance. Returns the distance (NaN on failure). */
static double fit(const options *o, bool manual, const dataset *d, em_tensor *x, em_tensor *y,
                  const double optimum[N_THETA])
{
    const char *name = manual ? "manual" : "automatic";
    em_manual_seed(o->seed + 1); /* the same initial weights in both modes */
    logreg r = {.base = {.ops = manual ? &manual_ops : &automatic_ops, .manual_optimization = manual},
                .linear = em_nn_linear(N_FEATURES, 1, true),
                .strong_wolfe = o->strong_wolfe};
    r.base.layers = r.linear;

    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = o->steps;
    cfg.enable_progress_bar = false;
    cfg.enable_csv_logger = false;
    em_trainer *t = em_trainer_new(&cfg);
    em_loader *train = em_tensor_loader((em_tensor *[]){x, y}, 2, &(em_loader_opts){.batch_size = N_SAMPLES});

    double distance = NAN;
    if (r.linear == NULL || t == NULL || train == NULL) {
        fprintf(stderr, "lbfgs: setup failed: %s\n", em_last_error());
    } else if (em_trainer_fit(t, &r.base, train, NULL) != EM_OK) {
        fprintf(stderr, "lbfgs: %s fit failed: %s\n", name, em_trainer_error(t));
    } else {
        float w[N_FEATURES], b[1];
        if (em_tensor_copy_to(em_nn_get(r.linear, "weight"), w, sizeof w, EM_F32) != EM_OK ||
            em_tensor_copy_to(em_nn_get(r.linear, "bias"), b, sizeof b, EM_F32) != EM_OK) {
            fprintf(stderr, "lbfgs: reading the weights failed: %s\n", em_last_error());
        } else {
            double theta[N_THETA], g[N_THETA], diff[N_THETA];
            for (int j = 0; j < N_FEATURES; j++)
                theta[j] = w[j];
            theta[N_FEATURES] = b[0];
            for (int j = 0; j < N_THETA; j++)
                diff[j] = theta[j] - optimum[j];
            double loss = objective(d, theta, g, NULL);
            distance = norm2(diff, N_THETA);
            printf("%-9s  loss %.10f  grad_norm %.3e  distance %.3e  (global_step %lld, %ld closure "
                   "evaluations)\n",
                   name, loss, norm2(g, N_THETA), distance, (long long)em_trainer_global_step(t),
                   r.evaluations);
        }
    }
    em_loader_free(train);
    em_trainer_free(t);
    em_nn_free(r.linear);
    return distance;
}

static int run(const options *o)
{
    static dataset d; /* 19 KiB: not on the stack */
    em_manual_seed(o->seed);
    em_scope_begin(); /* owns the data for the whole run */
    em_tensor *x = NULL, *y = NULL;
    if (make_data(&d, &x, &y) != EM_OK) {
        fprintf(stderr, "lbfgs: making the data failed: %s\n", em_last_error());
        em_scope_end();
        return 1;
    }

    double optimum[N_THETA], g[N_THETA];
    int iters = newton(&d, optimum);
    if (iters < 0) {
        fprintf(stderr, "lbfgs: Newton's method did not converge\n");
        em_scope_end();
        return 1;
    }
    double fopt = objective(&d, optimum, g, NULL);
    printf("lbfgs: L2-regularised logistic regression (lambda %g), %d points, %d features; "
           "LBFGS %s, %ld steps of max_iter 20\n",
           LAMBDA, N_SAMPLES, N_FEATURES, o->strong_wolfe ? "strong_wolfe" : "without line search",
           o->steps);
    printf("optimum (Newton, double, %d iterations): loss %.10f  grad_norm %.3e  |theta*| %.4f\n", iters,
           fopt, norm2(g, N_THETA), norm2(optimum, N_THETA));
    printf("theta* = [");
    for (int j = 0; j < N_THETA; j++)
        printf("%s%.6f", j ? ", " : "", optimum[j]);
    printf("]  (w1..w5, b)\n");

    int status = 0;
    for (int k = 0; k < 2; k++) {
        bool manual = k == 0;
        if (manual ? !o->manual : !o->automatic)
            continue;
        double dist = fit(o, manual, &d, x, y, optimum);
        if (isnan(dist)) {
            status = 1;
        } else if (o->check > 0 && !(dist <= o->check)) {
            printf("FAIL: %s ended %.3e from the optimum (--check %g)\n", manual ? "manual" : "automatic",
                   dist, o->check);
            status = 1;
        }
    }
    em_scope_end(); /* x, y and the temporaries of make_data */
    return status;
}

int main(int argc, char **argv)
{
    options o = {.manual = true, .automatic = true, .steps = 10, .check = 0, .seed = 0};
    switch (parse_args(argc, argv, &o)) {
    case 1:
        return 0;
    case 2:
        return 2;
    default:
        return run(&o);
    }
}
