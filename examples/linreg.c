/* linreg.c: the smallest complete ember program - linear regression with SGD, written by hand.
 *
 * Data:  y = 3 x1 - 2 x2 + 0.5 + noise, x ~ N(0, 1), noise ~ N(0, 0.1^2), from em_manual_seed.
 * Model: torch.nn.Linear(2, 1), trained on the whole data set every step with torch.optim.SGD and
 *        the mean squared error. In PyTorch the loop reads:
 *
 *            for step in range(steps):
 *                opt.zero_grad(); loss = F.mse_loss(net(x), y); loss.backward(); opt.step()
 *
 * It prints the loss as it trains, then the fitted weights beside the true ones. The fit should land
 * within about 0.01 of the true values and the final loss near the noise variance, 0.01.
 *
 *     ./build/bin/linreg [--steps N] [--lr X] [--samples N] [--seed N]
 */
#include <ember.h>

#include <getopt.h> /* getopt_long */
#include <math.h>
#include <stdio.h>

#include "opts.h" /* strict numbers, getopt_long's messages */

/* ---- options ------------------------------------------------------------------------------------ */

typedef struct options {
    long steps;
    double lr;
    long samples;
    unsigned long long seed;
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: linreg [--steps N] [--lr X] [--samples N] [--seed N]\n"
            "Fits y = 3 x1 - 2 x2 + 0.5 + noise with a Linear(2, 1) layer and SGD, and prints\n"
            "the fitted weights beside the true ones.\n"
            "  --steps N     optimizer steps (default 300)\n"
            "  --lr X        SGD learning rate (default 0.1)\n"
            "  --samples N   data points (default 256)\n"
            "  --seed N      seed of em_manual_seed (default 0)\n"
            "  -h, --help    this text\n");
}

/* Long-only options get values above any character. */
enum { OPT_STEPS = 256, OPT_LR, OPT_SAMPLES, OPT_SEED };

static const struct option long_options[] = {
    {"steps", required_argument, NULL, OPT_STEPS},
    {"lr", required_argument, NULL, OPT_LR},
    {"samples", required_argument, NULL, OPT_SAMPLES},
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
        case OPT_STEPS:
            ok = opts_long("linreg", "--steps", optarg, 0, &o->steps);
            break;
        case OPT_LR:
            ok = opts_positive("linreg", "--lr", optarg, &o->lr);
            break;
        case OPT_SAMPLES:
            ok = opts_long("linreg", "--samples", optarg, 1, &o->samples);
            break;
        case OPT_SEED:
            ok = opts_seed("linreg", "--seed", optarg, &o->seed);
            break;
        default: /* '?' or ':' */
            opts_rejected("linreg", long_options, argv, c);
            return 2;
        }
        if (!ok)
            return 2;
    }
    return opts_no_operands("linreg", argc, argv) ? 0 : 2;
}

/* ---- data --------------------------------------------------------------------------------------- */

static const float true_w[2] = {3.0f, -2.0f};
static const float true_b = 0.5f;

/* x [n, 2] and y = x w^T + b + 0.1 * noise [n, 1], owned by the open scope. */
static em_tensor *make_data(int64_t n, em_tensor **x_out)
{
    em_tensor *x = em_randn(EM_SHAPE(n, 2), NULL);
    em_tensor *noise = em_mul_scalar(em_randn(EM_SHAPE(n, 1), NULL), 0.1);
    em_tensor *w = em_tensor_from_f32(true_w, EM_SHAPE(2, 1));
    em_tensor *y = em_add(em_add_scalar(em_matmul(x, w), true_b), noise);
    *x_out = x;
    return y; /* NULL if any step failed: the first message is in em_last_error() */
}

/* ---- training ----------------------------------------------------------------------------------- */

/* One SGD step on the whole data set; returns the loss before the step, NaN on failure. */
static double train_step(em_nn *net, em_optimizer *opt, const em_tensor *x, const em_tensor *y)
{
    em_scope_begin(); /* every tensor of this step is released at em_scope_end() */
    double value = NAN;
    em_tensor *loss = em_mse_loss(em_nn_forward(net, x), y, EM_REDUCTION_MEAN);
    if (loss != NULL && em_optimizer_zero_grad(opt) == EM_OK && em_backward(loss) == EM_OK &&
        em_optimizer_step(opt, NULL) == EM_OK)
        value = em_tensor_item(loss);
    em_scope_end();
    return value;
}

static int run(const options *o)
{
    em_manual_seed(o->seed);
    em_scope_begin(); /* owns the data for the whole run */
    em_tensor *x = NULL;
    em_tensor *y = make_data(o->samples, &x);

    em_nn *net = em_nn_linear(2, 1, true);        /* torch's init, from the same seed */
    em_params *params = em_nn_parameters(net);
    em_optimizer *opt = em_sgd(params, &(em_sgd_opts){.lr = o->lr});
    em_params_free(params);                        /* the optimizer keeps its own references */
    if (y == NULL || opt == NULL) {
        fprintf(stderr, "linreg: setup failed: %s\n", em_last_error());
        em_optimizer_free(opt);
        em_nn_free(net);
        em_scope_end();
        return 1;
    }

    printf("linreg: y = 3 x1 - 2 x2 + 0.5 + noise (sd 0.1), %ld samples, SGD lr=%g, %ld steps\n",
           o->samples, o->lr, o->steps);
    double loss = NAN;
    int status = 0;
    for (long step = 0; step < o->steps; step++) {
        loss = train_step(net, opt, x, y);
        if (isnan(loss)) {
            fprintf(stderr, "linreg: step %ld failed: %s\n", step, em_last_error());
            status = 1;
            break;
        }
        if (step % 50 == 0)
            printf("step %4ld  loss %.6f\n", step, loss);
    }

    if (status == 0) {
        float w[2], b[1];
        if (em_tensor_copy_to(em_nn_get(net, "weight"), w, sizeof w, EM_F32) != EM_OK ||
            em_tensor_copy_to(em_nn_get(net, "bias"), b, sizeof b, EM_F32) != EM_OK) {
            fprintf(stderr, "linreg: reading the weights failed: %s\n", em_last_error());
            status = 1;
        } else {
            printf("\n%-4s %8s %8s\n", "", "true", "fitted");
            printf("%-4s %8.4f %8.4f\n", "w1", (double)true_w[0], (double)w[0]);
            printf("%-4s %8.4f %8.4f\n", "w2", (double)true_w[1], (double)w[1]);
            printf("%-4s %8.4f %8.4f\n", "b", (double)true_b, (double)b[0]);
            printf("final loss %.6f after %ld steps (noise variance 0.01)\n", loss, o->steps);
        }
    }

    em_optimizer_free(opt);
    em_nn_free(net);
    em_scope_end(); /* x, y and the temporaries of make_data */
    return status;
}

int main(int argc, char **argv)
{
    options o = {.steps = 300, .lr = 0.1, .samples = 256, .seed = 0};
    switch (parse_args(argc, argv, &o)) {
    case 1:
        return 0;
    case 2:
        return 2;
    default:
        return run(&o);
    }
}
