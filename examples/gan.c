/* gan.c: a GAN learns a ring of 8 Gaussians, trained by ember's Trainer in MANUAL optimization.
 *
 * Data:  2-D points from a mixture of 8 Gaussians whose centres lie on a circle of radius 2 at angles
 *        k * 45 degrees, each with standard deviation --sigma (0.02). Generated from --seed with
 *        ember's RNG (em_randint picks the mode, em_randn the offset): nothing is downloaded.
 * Model: the generator G and the discriminator D are MLPs with two hidden layers of 64 units and
 *        LeakyReLU(0.2); z has 2 dimensions. Both are trained with Adam, lr 2e-4, betas (0.5, 0.999).
 *
 * The module is written as Lightning's GAN tutorial (and SimpleGAN) write one with
 * automatic_optimization = False; in Python it would read:
 *
 *     def training_step(self, batch, batch_idx):
 *         opt_g, opt_d = self.optimizers()
 *         z = torch.randn(batch.shape[0], 2)
 *         self.toggle_optimizer(opt_g)
 *         g_loss = F.binary_cross_entropy_with_logits(self.D(self.G(z)), ones)
 *         self.manual_backward(g_loss); opt_g.step(); opt_g.zero_grad()
 *         self.untoggle_optimizer(opt_g)
 *         if batch_idx % d_every == 0:
 *             self.toggle_optimizer(opt_d)
 *             d_loss = 0.5 * (bce(self.D(batch), ones) + bce(self.D(self.G(z).detach()), zeros))
 *             self.manual_backward(d_loss); opt_d.step(); opt_d.zero_grad()
 *             self.untoggle_optimizer(opt_d)
 *         self.log_dict({"g_loss": g_loss, "d_loss": d_loss}, prog_bar=True)  # d_loss when computed
 *
 * The module's layers are one container holding "G" and "D" (em_module.layers), and the
 * pictures come from on_train_epoch_end. Their noise z is drawn once before training, so
 * --plot-every does not change what is learnt.
 *
 * Output, under --out (default gan-out/):
 *   metrics.csv               g_loss, d_loss every 20 batches (the trainer's CSV logger, log_every_n_steps)
 *   samples.csv               2,500 samples of the final generator, header "x,y"
 *   samples_epoch_NNN.png     real vs generated after NNN epochs, every --plot-every epochs
 *   final.png                 the same picture after training
 *   losses.png                both loss curves, every batch and a running mean
 * (pictures drawn with cairo by tools/plot.c, shared with ember-plot),
 * and, as the last line on stdout:
 *   modes covered: K/8, high-quality: Q%
 *
 * How a mode counts. A sample is a hit for mode k when it lies within 3 sigma of centre k (centres are
 * 1.53 apart, so at most one centre is that close). A mode is covered when at least 2.5% of the
 * 2,500 samples hit it: one fifth of the fair share of 12.5%, so a mode the generator merely grazes
 * does not count. High-quality is the share of all samples that hit some mode.
 *
 * Threads. The matrices are tiny (a batch of 128 through layers of 64), so a second thread costs more
 * than it gives: libtorch's OpenMP pool and OpenBLAS's own pool both wake for every small product and
 * their idle threads spin (sched_yield). Measured on a 2-core machine with the defaults (10,000
 * batches): 6.5 s with one thread, 10.7 s with the libraries' own 2 + 2 threads (5 s of it in the
 * kernel). So unless OMP_NUM_THREADS or OPENBLAS_NUM_THREADS is set, main() asks for one thread
 * (use_one_thread); set either variable to choose yourself.
 *
 * DDP. `--devices N` trains on N processes (Gloo on the CPU; em_trainer_fit starts this program
 * N-1 more times, or torchrun starts them all: `torchrun --no-python --nproc_per_node=N ./gan`).
 * Every process runs main from the top with the same seed; each takes its DistributedSampler share
 * of the data, every manual_backward averages the gradients across processes, and only rank 0
 * prints, draws and writes files (metrics.csv too).
 *
 *     ./build/bin/gan [--epochs N] [--steps-per-epoch N] [--batch-size N] [--lr X] [--d-every K]
 *                     [--sigma X] [--seed N] [--out DIR] [--plot-every N] [--quiet] [--no-progress]
 *                     [--devices N]
 */
#define _POSIX_C_SOURCE 200809L /* mkdir, clock_gettime, setenv, dlopen */

#include <ember.h>

#include <dlfcn.h> /* dlopen, dlsym: OpenBLAS's thread count, when libtorch loaded OpenBLAS */
#include <errno.h>
#include <getopt.h> /* getopt_long */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "checkpointing.h" /* --checkpoint-dir, --checkpoint-every, --resume, --save-weights */
#include "opts.h" /* strict numbers, getopt_long's messages */
#include "plot.h" /* plot_png: the PNG charts */

#define N_MODES 8
#define RING_RADIUS 2.0
#define Z_DIM 2
#define HIDDEN 64
#define N_SAMPLES 2500          /* samples.csv and the pictures */
#define COVER_SHARE_PERMILLE 25 /* a covered mode holds >= 2.5% of the samples */
#define LOG_EVERY_N_STEPS 20    /* metrics.csv: one row every 20 batches (500 rows by default) */

static const double pi = 3.14159265358979323846;

/* ---- options ------------------------------------------------------------------------------------- */

typedef struct options {
    long epochs;
    long steps_per_epoch;
    long batch_size;
    double lr;
    long d_every;
    double sigma;
    unsigned long long seed;
    const char *out;
    long plot_every;
    bool quiet;
    long devices; /* 0: auto (1, or what torchrun started) */
    bool zero;    /* rank 0: the one that prints and writes */
    bool progress;
    ckpt_opts ckpt;             /* --checkpoint-dir, --checkpoint-every, --resume, --save-weights */
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gan [options]\n"
            "Trains a GAN on a ring of 8 Gaussians (radius 2) with ember's Trainer in manual\n"
            "optimization, writes pictures and metrics under --out, and ends with the line\n"
            "  modes covered: K/8, high-quality: Q%%\n"
            "(a mode is covered when >= 2.5%% of 2,500 samples lie within 3 sigma of its centre;\n"
            "high-quality = the share of samples within 3 sigma of any centre).\n"
            "\n"
            "  --epochs N           epochs (default 20)\n"
            "  --steps-per-epoch N  batches per epoch; the data set holds N * batch-size points\n"
            "                       (default 500: 10,000 batches in all)\n"
            "  --batch-size N       points per batch (default 128)\n"
            "  --lr X               Adam learning rate of G and D, betas (0.5, 0.999) (default 2e-4)\n"
            "  --d-every K          step the discriminator every K-th batch (default 1: every batch)\n"
            "  --sigma X            standard deviation of each Gaussian (default 0.02)\n"
            "  --seed N             seed of em_manual_seed: data, weights, noise (default 0)\n"
            "  --out DIR            output directory, created if needed (default gan-out)\n"
            "  --plot-every N       write samples_epoch_NNN.png every N epochs; 0 = never (default 5)\n"
            "  --no-progress        no progress bar (default: a progress bar on stderr)\n"
            "  -q, --quiet          no progress bar and only the last line on stdout (and a resumed\n"
            "                       run's first line) (default: off)\n"
            "  --devices N          DDP on N processes (this program started N-1 more times; default 1)\n"
            "  --checkpoint-dir DIR ModelCheckpoint: DIR/last.ckpt (every state a resume needs, as\n"
            "                       safetensors) every --checkpoint-every optimizer steps and at every\n"
            "                       epoch end (default: no checkpoints)\n"
            "  --checkpoint-every N optimizer steps between two saves; G's and D's steps both count, as\n"
            "                       in global_step (default 50)\n"
            "  --resume last|PATH   continue from a checkpoint: `last` = the newest last*.ckpt in\n"
            "                       --checkpoint-dir (from the start when there is none yet), or a file;\n"
            "                       prints \"resumed from PATH at epoch E, batch B, global_step S\" first\n"
            "  --save-weights FILE  write the final parameters and buffers of G and D (\"G.0.weight\", ...)\n"
            "                       to FILE (safetensors)\n"
            "  -h, --help           this text\n"
            "\n"
            "Threads: unless OMP_NUM_THREADS or OPENBLAS_NUM_THREADS is set, libtorch and OpenBLAS\n"
            "run on one thread: these matrices are so small that more threads only wait for each\n"
            "other (on 2 cores the default run took 6.5 s on one thread, 10.7 s on the libraries'\n"
            "own two each). Set either variable to choose the thread count yourself.\n");
}

/* Long-only options get values above any character. */
enum {
    OPT_EPOCHS = 256,
    OPT_STEPS_PER_EPOCH,
    OPT_BATCH_SIZE,
    OPT_LR,
    OPT_D_EVERY,
    OPT_SIGMA,
    OPT_SEED,
    OPT_OUT,
    OPT_PLOT_EVERY,
    OPT_NO_PROGRESS,
    OPT_DEVICES,
};

static const struct option long_options[] = {
    {"epochs", required_argument, NULL, OPT_EPOCHS},
    {"steps-per-epoch", required_argument, NULL, OPT_STEPS_PER_EPOCH},
    {"batch-size", required_argument, NULL, OPT_BATCH_SIZE},
    {"lr", required_argument, NULL, OPT_LR},
    {"d-every", required_argument, NULL, OPT_D_EVERY},
    {"sigma", required_argument, NULL, OPT_SIGMA},
    {"seed", required_argument, NULL, OPT_SEED},
    {"out", required_argument, NULL, OPT_OUT},
    {"plot-every", required_argument, NULL, OPT_PLOT_EVERY},
    {"no-progress", no_argument, NULL, OPT_NO_PROGRESS},
    {"devices", required_argument, NULL, OPT_DEVICES},
    CKPT_LONG_OPTIONS,
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* 0: parsed; 1: --help was printed; 2: a usage error was printed. "--opt value" or "--opt=value". */
static int parse_args(int argc, char **argv, options *o)
{
    opterr = 0; /* opts_rejected() says what was wrong */
    int c;
    while ((c = getopt_long(argc, argv, ":hq", long_options, NULL)) != -1) {
        bool ok = true;
        if (ckpt_parse("gan", c, optarg, &o->ckpt, &ok)) {
            if (!ok)
                return 2;
            continue;
        }
        switch (c) {
        case 'h':
            usage(stdout);
            return 1;
        case OPT_EPOCHS:
            ok = opts_long("gan", "--epochs", optarg, 1, &o->epochs);
            break;
        case OPT_STEPS_PER_EPOCH:
            ok = opts_long("gan", "--steps-per-epoch", optarg, 1, &o->steps_per_epoch);
            break;
        case OPT_BATCH_SIZE:
            ok = opts_long("gan", "--batch-size", optarg, 1, &o->batch_size);
            break;
        case OPT_LR:
            ok = opts_positive("gan", "--lr", optarg, &o->lr);
            break;
        case OPT_D_EVERY:
            ok = opts_long("gan", "--d-every", optarg, 1, &o->d_every);
            break;
        case OPT_SIGMA:
            ok = opts_positive("gan", "--sigma", optarg, &o->sigma);
            break;
        case OPT_SEED:
            ok = opts_seed("gan", "--seed", optarg, &o->seed);
            break;
        case OPT_OUT:
            ok = optarg[0] != '\0';
            if (!ok)
                fprintf(stderr, "gan: --out needs a directory name\n");
            o->out = optarg;
            break;
        case OPT_PLOT_EVERY:
            ok = opts_long("gan", "--plot-every", optarg, 0, &o->plot_every);
            break;
        case OPT_NO_PROGRESS:
            o->progress = false;
            break;
        case OPT_DEVICES:
            ok = opts_long("gan", "--devices", optarg, 1, &o->devices);
            break;
        case 'q':
            o->quiet = true;
            o->progress = false;
            break;
        default: /* '?' or ':' */
            opts_rejected("gan", long_options, argv, c);
            return 2;
        }
        if (!ok)
            return 2;
    }
    if (!ckpt_check("gan", &o->ckpt))
        return 2;
    return opts_no_operands("gan", argc, argv) ? 0 : 2;
}

/* ---- small utilities ----------------------------------------------------------------------------------- */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* mkdir -p. 0 or -1 (errno set). */
static int make_dirs(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return -1;
        buf[i] = c;
    }
    return 0;
}

/* A growable list of (batch, value) points: one loss curve. */
typedef struct curve {
    double *x, *y;
    size_t n, cap;
} curve;

static bool curve_add(curve *c, double x, double y)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 1024;
        double *nx = realloc(c->x, cap * sizeof *nx);
        if (nx == NULL)
            return false;
        c->x = nx;
        double *ny = realloc(c->y, cap * sizeof *ny);
        if (ny == NULL)
            return false;
        c->y = ny;
        c->cap = cap;
    }
    c->x[c->n] = x;
    c->y[c->n] = y;
    c->n++;
    return true;
}

static void curve_free(curve *c)
{
    free(c->x);
    free(c->y);
    *c = (curve){0};
}

/* ---- data ---------------------------------------------------------------------------------------------- */

static void mode_centre(int k, double *x, double *y)
{
    *x = RING_RADIUS * cos(k * pi / 4);
    *y = RING_RADIUS * sin(k * pi / 4);
}

/* n points of the ring mixture, [n, 2] float32, from the global generator. Owned by the open scope. */
static em_tensor *ring_data(int64_t n, double sigma)
{
    float c[N_MODES * 2];
    for (int k = 0; k < N_MODES; k++) {
        double x, y;
        mode_centre(k, &x, &y);
        c[2 * k] = (float)x;
        c[2 * k + 1] = (float)y;
    }
    em_tensor *centres = em_tensor_from_f32(c, EM_SHAPE(N_MODES, 2));
    em_tensor *mode = em_randint(0, N_MODES, EM_SHAPE(n), NULL); /* which Gaussian, uniformly */
    em_tensor *offset = em_mul_scalar(em_randn(EM_SHAPE(n, 2), NULL), sigma);
    return em_add(em_index_select(centres, 0, mode), offset);
}

/* ---- measuring the generator ------------------------------------------------------------------------------- */

typedef struct coverage {
    int modes;                /* modes with >= 2.5% of the samples */
    double high_quality;      /* percent of samples within 3 sigma of a centre */
    long hits[N_MODES];
} coverage;

static coverage measure(const float *xy, size_t n, double sigma)
{
    coverage cv = {0};
    long good = 0;
    double r2 = 9.0 * sigma * sigma;
    for (size_t i = 0; i < n; i++) {
        for (int k = 0; k < N_MODES; k++) {
            double cx, cy;
            mode_centre(k, &cx, &cy);
            double dx = xy[2 * i] - cx, dy = xy[2 * i + 1] - cy;
            if (dx * dx + dy * dy <= r2) {
                cv.hits[k]++;
                good++;
                break; /* centres are 1.53 apart: no sample is within 3 sigma of two */
            }
        }
    }
    for (int k = 0; k < N_MODES; k++)
        if (cv.hits[k] * 1000 >= (long)n * COVER_SHARE_PERMILLE)
            cv.modes++;
    cv.high_quality = n > 0 ? 100.0 * (double)good / (double)n : 0.0;
    return cv;
}

/* ---- the module -------------------------------------------------------------------------------------------- */

struct gan {
    em_module base;        /* first: a struct gan * is an em_module * */
    em_nn *G, *D;          /* borrowed from base.layers, the container that owns them */
    const options *o;
    em_tensor *fixed_z;    /* [N_SAMPLES, Z_DIM]: the same noise for every picture */
    float *real;           /* N_SAMPLES real points, for the pictures */
    float *fake;           /* N_SAMPLES generated points, refreshed by generate() */
    curve g_curve, d_curve;/* every logged loss, x = batch number (1-based, over all epochs) */
    int64_t batches;       /* batches trained so far */
    double g_sum, d_sum;   /* this epoch's sums, for the epoch line */
    long g_n, d_n;
};

/* G(fixed_z) into g->fake, without recording gradients. */
static em_status generate(struct gan *g)
{
    em_scope_begin(); /* hooks outside a batch have no trainer scope of their own */
    em_no_grad_begin();
    /* G is on the GPU during a fit with accelerator cuda (or auto on a GPU machine), on the CPU after */
    em_tensor *y = em_nn_forward(g->G, em_to_device(g->fixed_z, em_tensor_device(em_nn_parameter(g->G, 0))));
    em_status s = y != NULL ? em_tensor_copy_to(y, g->fake, 2 * N_SAMPLES * sizeof(float), EM_F32) : em_last_status();
    em_no_grad_end();
    em_scope_end();
    return s;
}

/* Lightning: training_step with self.automatic_optimization = False (see the top of the file). */
static em_tensor *gan_training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    struct gan *g = (struct gan *)m;
    size_t n_opt = 0;
    em_optimizer **opts = em_optimizers(m, &n_opt); /* opt_g, opt_d = self.optimizers() */
    if (opts == NULL || n_opt != 2) {
        em_error_set(EM_EUSER, "gan: expected the optimizers of G and D, got %zu", n_opt);
        return NULL;
    }
    em_optimizer *opt_g = opts[0], *opt_d = opts[1];
    em_tensor *real = b->t[0];
    int64_t n = b->size;
    const em_tensor_opts on = {.device = em_trainer_device(em_module_trainer(m))}; /* self.device */
    em_tensor *ones = em_ones(EM_SHAPE(n, 1), &on);   /* "real" labels */
    em_tensor *zeros = em_zeros(EM_SHAPE(n, 1), &on); /* "fake" labels */
    em_tensor *z = em_randn(EM_SHAPE(n, Z_DIM), &on);

    /* generator: make D call G(z) real; only G's parameters require grad while opt_g is toggled */
    if (em_toggle_optimizer(m, opt_g) != EM_OK)
        return NULL;
    em_tensor *g_loss = em_bce_with_logits(em_nn_forward(g->D, em_nn_forward(g->G, z)), ones, NULL, NULL,
                                           EM_REDUCTION_MEAN);
    if (g_loss == NULL || em_manual_backward(m, g_loss) != EM_OK || em_optimizer_step(opt_g, NULL) != EM_OK ||
        em_optimizer_zero_grad(opt_g) != EM_OK || em_untoggle_optimizer(m, opt_g) != EM_OK)
        return NULL;
    double values[2] = {em_tensor_item(g_loss), NAN};
    size_t n_values = 1;

    /* discriminator, every d_every-th batch: real -> 1, G(z) (detached: no gradient into G) -> 0 */
    if (batch_idx % g->o->d_every == 0) {
        if (em_toggle_optimizer(m, opt_d) != EM_OK)
            return NULL;
        em_tensor *fake = em_detach(em_nn_forward(g->G, z));
        em_tensor *real_loss = em_bce_with_logits(em_nn_forward(g->D, real), ones, NULL, NULL, EM_REDUCTION_MEAN);
        em_tensor *fake_loss = em_bce_with_logits(em_nn_forward(g->D, fake), zeros, NULL, NULL, EM_REDUCTION_MEAN);
        em_tensor *d_loss = em_mul_scalar(em_add(real_loss, fake_loss), 0.5);
        if (d_loss == NULL || em_manual_backward(m, d_loss) != EM_OK || em_optimizer_step(opt_d, NULL) != EM_OK ||
            em_optimizer_zero_grad(opt_d) != EM_OK || em_untoggle_optimizer(m, opt_d) != EM_OK)
            return NULL;
        values[1] = em_tensor_item(d_loss);
        n_values = 2;
    }

    /* self.log_dict({"g_loss": ..., "d_loss": ...}, prog_bar=True) */
    static const char *const names[] = {"g_loss", "d_loss"};
    if (em_log_dict(m, names, values, n_values, EM_LOG_PROG_BAR) != EM_OK)
        return NULL;

    g->batches++;
    g->g_sum += values[0];
    g->g_n++;
    if (!curve_add(&g->g_curve, (double)g->batches, values[0])) {
        em_error_set(EM_ENOMEM, "gan: out of memory for the loss curve");
        return NULL;
    }
    if (n_values == 2) {
        g->d_sum += values[1];
        g->d_n++;
        if (!curve_add(&g->d_curve, (double)g->batches, values[1])) {
            em_error_set(EM_ENOMEM, "gan: out of memory for the loss curve");
            return NULL;
        }
    }
    return NULL; /* Lightning's example returns nothing: the losses were stepped above */
}

/* Lightning: configure_optimizers returning [opt_g, opt_d]. */
static em_status gan_configure_optimizers(em_module *m, em_optim_setup *setup)
{
    struct gan *g = (struct gan *)m;
    em_adam_opts adam = EM_ADAM_OPTS_INIT;
    adam.lr = g->o->lr;
    adam.beta1 = 0.5; /* the usual GAN setting (DCGAN) */
    em_params *pg = em_nn_parameters(g->G);
    em_params *pd = em_nn_parameters(g->D);
    em_optimizer *opt_g = em_adam(pg, &adam);
    em_optimizer *opt_d = em_adam(pd, &adam);
    em_params_free(pg);
    em_params_free(pd);
    em_status s = em_optim_setup_add(setup, opt_g); /* the trainer owns them from here, also on failure */
    em_status s2 = em_optim_setup_add(setup, opt_d);
    return s != EM_OK ? s : s2;
}

/* ---- pictures ------------------------------------------------------------------------------------------------ */

/* Real vs generated samples with the 3-sigma circle of every mode, on a fixed [-3, 3] square. */
static int plot_samples(const char *path, const char *title, const struct gan *g, const coverage *cv)
{
    static double rx[N_SAMPLES], ry[N_SAMPLES], fx[N_SAMPLES], fy[N_SAMPLES];
    double cx[N_MODES], cy[N_MODES];
    for (size_t i = 0; i < N_SAMPLES; i++) {
        rx[i] = g->real[2 * i];
        ry[i] = g->real[2 * i + 1];
        fx[i] = g->fake[2 * i];
        fy[i] = g->fake[2 * i + 1];
    }
    for (int k = 0; k < N_MODES; k++)
        mode_centre(k, &cx[k], &cy[k]);
    plot_series s[] = { /* drawn in this order: the real points and the circles stay visible */
        {.label = "generated G(z)", .x = fx, .y = fy, .n = N_SAMPLES, .style = PLOT_DOTS,
         .rgb = {0.90, 0.40, 0.05}, .alpha = 0.45, .size = 1.8},
        {.label = "real data", .x = rx, .y = ry, .n = N_SAMPLES, .style = PLOT_DOTS,
         .rgb = {0.15, 0.35, 0.75}, .alpha = 0.6, .size = 1.5},
        {.label = "3\xcf\x83 circle \xc2\xb7 hits beside it", .x = cx, .y = cy, .n = N_MODES,
         .style = PLOT_CIRCLES, .rgb = {0.1, 0.1, 0.1}, .alpha = 0.8, .size = 3.0 * g->o->sigma},
    };
    char hits[N_MODES][16];
    plot_text notes[N_MODES];
    for (int k = 0; k < N_MODES; k++) { /* the count of hits, just outside the ring */
        snprintf(hits[k], sizeof hits[k], "%ld", cv->hits[k]);
        notes[k] = (plot_text){.x = cx[k] * 1.17, .y = cy[k] * 1.17, .text = hits[k]};
    }
    char subtitle[160];
    snprintf(subtitle, sizeof subtitle, "%d samples each \xc2\xb7 modes covered %d/8 \xc2\xb7 high-quality %.1f%% \xc2\xb7 "
             "\xcf\x83 = %g", N_SAMPLES, cv->modes, cv->high_quality, g->o->sigma);
    plot_chart c = {.title = title, .subtitle = subtitle, .xlabel = "x", .ylabel = "y", .width = 720, .height = 760,
                    .xmin = -3, .xmax = 3, .ymin = -3, .ymax = 3, .equal_aspect = true, .texts = notes,
                    .n_texts = N_MODES};
    return plot_png(path, &c, s, sizeof s / sizeof *s);
}

/* Running mean of the last `w` values (fewer at the start). */
static void running_mean(const double *y, size_t n, size_t w, double *out)
{
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += y[i];
        if (i >= w)
            sum -= y[i - w];
        out[i] = sum / (double)(i + 1 < w ? i + 1 : w);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The value below which `q` of the values lie (q in [0, 1]). */
static double quantile(const double *y, size_t n, double q)
{
    double *s = malloc(n * sizeof *s);
    if (s == NULL || n == 0) {
        free(s);
        return NAN;
    }
    memcpy(s, y, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_double);
    double v = s[(size_t)(q * (double)(n - 1))];
    free(s);
    return v;
}

/* losses.png: both curves per batch (faint) and as running means (bold), with ln 2 for reference. */
static int plot_losses(const char *path, const struct gan *g)
{
    const curve *gc = &g->g_curve, *dc = &g->d_curve;
    size_t w = gc->n / 50 > 1 ? gc->n / 50 : 1;
    if (w > 200)
        w = 200;
    double *gm = malloc((gc->n + 1) * sizeof *gm), *dm = malloc((dc->n + 1) * sizeof *dm);
    if (gm == NULL || dm == NULL) {
        free(gm);
        free(dm);
        fprintf(stderr, "gan: out of memory for %s\n", path);
        return -1;
    }
    running_mean(gc->y, gc->n, w, gm);
    running_mean(dc->y, dc->n, w, dm);
    /* y range: 0 to the 99.5th percentile of every value (rare spikes are cut, not the curves) */
    double top = fmax(quantile(gc->y, gc->n, 0.995), quantile(dc->y, dc->n, 0.995));
    for (size_t i = 0; i < gc->n; i++)
        top = fmax(top, gm[i]);
    top = isfinite(top) && top > 0.8 ? top * 1.08 : 1.0;
    double lx[2] = {0, (double)g->batches}, ly[2] = {log(2.0), log(2.0)};
    char g_label[64], d_label[64], subtitle[128];
    snprintf(g_label, sizeof g_label, "generator g_loss");
    snprintf(d_label, sizeof d_label, "discriminator d_loss");
    snprintf(subtitle, sizeof subtitle, "faint: every batch \xc2\xb7 bold: running mean of %zu batches", w);
    plot_series s[] = {
        {.x = gc->x, .y = gc->y, .n = gc->n, .rgb = {0.85, 0.35, 0.05}, .alpha = 0.15, .size = 1.0},
        {.x = dc->x, .y = dc->y, .n = dc->n, .rgb = {0.10, 0.35, 0.75}, .alpha = 0.15, .size = 1.0},
        {.label = g_label, .x = gc->x, .y = gm, .n = gc->n, .rgb = {0.85, 0.35, 0.05}, .size = 2.2},
        {.label = d_label, .x = dc->x, .y = dm, .n = dc->n, .rgb = {0.10, 0.35, 0.75}, .size = 2.2},
        {.label = "ln 2 = 0.693 (D cannot tell: both at equilibrium)", .x = lx, .y = ly, .n = 2,
         .rgb = {0.3, 0.3, 0.3}, .size = 1.2, .dashed = true},
    };
    plot_chart c = {.title = "GAN losses (binary cross-entropy)", .subtitle = subtitle, .xlabel = "batch",
                    .ylabel = "loss", .width = 900, .height = 560, .xmin = 0, .xmax = (double)g->batches,
                    .ymin = 0, .ymax = top, .legend = PLOT_BOTTOM_RIGHT};
    int r = plot_png(path, &c, s, sizeof s / sizeof *s);
    free(gm);
    free(dm);
    return r;
}

/* ---- hooks ------------------------------------------------------------------------------------------------- */

/* Lightning: on_train_epoch_end: a line per epoch, and the picture every --plot-every epochs. */
static em_status gan_on_train_epoch_end(em_module *m)
{
    struct gan *g = (struct gan *)m;
    int64_t epoch = em_trainer_current_epoch(em_module_trainer(m)) + 1; /* epochs completed */
    bool picture = g->o->zero && g->o->plot_every > 0 && epoch % g->o->plot_every == 0;
    char path[4200] = "";
    coverage cv = {0};
    if (picture) {
        em_status s = generate(g);
        if (s != EM_OK)
            return s;
        cv = measure(g->fake, N_SAMPLES, g->o->sigma);
        char title[64];
        snprintf(path, sizeof path, "%s/samples_epoch_%03lld.png", g->o->out, (long long)epoch);
        snprintf(title, sizeof title, "Ring of 8 Gaussians: after epoch %lld of %ld", (long long)epoch, g->o->epochs);
        if (plot_samples(path, title, g, &cv) != 0)
            return em_error_set(EM_EIO, "gan: %s", plot_error());
    }
    if (!g->o->quiet && g->o->zero) {
        printf("epoch %3lld/%ld  g_loss %.3f  d_loss %.3f", (long long)epoch, g->o->epochs,
               g->g_n ? g->g_sum / (double)g->g_n : NAN, g->d_n ? g->d_sum / (double)g->d_n : NAN);
        if (picture)
            printf("  modes %d/8  high-quality %5.1f%%  -> %s", cv.modes, cv.high_quality, path);
        printf("\n");
        fflush(stdout);
    }
    g->g_sum = g->d_sum = 0;
    g->g_n = g->d_n = 0;
    return EM_OK;
}

/* The first lines: where a resumed run continues (a resumed fit has restored its position by
 * on_fit_start; printed with --quiet too), then what is trained. Rank 0 prints. */
static em_status gan_on_fit_start(em_module *m)
{
    struct gan *g = (struct gan *)m;
    const options *o = g->o;
    em_trainer *t = em_module_trainer(m);
    if (!o->zero)
        return EM_OK;
    ckpt_print_resume(t, &o->ckpt);
    if (!o->quiet)
        printf("gan: ring of 8 Gaussians (radius 2, sigma %g); %ld epochs x %ld batches of %ld; Adam lr %g "
               "betas (0.5, 0.999); D every %ld batch%s; seed %llu; output in %s/\n",
               o->sigma, o->epochs, o->steps_per_epoch, o->batch_size, o->lr, o->d_every,
               o->d_every == 1 ? "" : "es", o->seed, o->out);
    fflush(stdout);
    return EM_OK;
}

static const em_module_ops gan_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = gan_training_step,
    .configure_optimizers = gan_configure_optimizers,
    .on_train_epoch_end = gan_on_train_epoch_end,
    .on_fit_start = gan_on_fit_start,
};

/* ---- the run ----------------------------------------------------------------------------------------------- */

/* Two hidden layers of 64 with LeakyReLU(0.2). */
static em_nn *mlp(int64_t in, int64_t out)
{
    return EM_NN_SEQUENTIAL(em_nn_linear(in, HIDDEN, true), em_nn_leaky_relu(0.2), em_nn_linear(HIDDEN, HIDDEN, true),
                            em_nn_leaky_relu(0.2), em_nn_linear(HIDDEN, out, true));
}

static int write_samples_csv(const char *path, const float *xy, size_t n)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "x,y\n");
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%.6f,%.6f\n", (double)xy[2 * i], (double)xy[2 * i + 1]);
    return fclose(f) == 0 ? 0 : -1;
}

/* After fit: samples.csv, final.png, losses.png and the summary. 0 or 1. */
static int finish(struct gan *g, double seconds, int64_t global_step)
{
    const options *o = g->o;
    char path[4200];
    if (generate(g) != EM_OK) {
        fprintf(stderr, "gan: sampling the generator failed: %s\n", em_last_error());
        return 1;
    }
    coverage cv = measure(g->fake, N_SAMPLES, o->sigma);
    snprintf(path, sizeof path, "%s/samples.csv", o->out);
    if (write_samples_csv(path, g->fake, N_SAMPLES) != 0) {
        fprintf(stderr, "gan: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    char title[96];
    snprintf(title, sizeof title, "Ring of 8 Gaussians: after %ld epochs (%lld batches)", o->epochs,
             (long long)g->batches);
    snprintf(path, sizeof path, "%s/final.png", o->out);
    if (plot_samples(path, title, g, &cv) != 0) {
        fprintf(stderr, "gan: %s\n", plot_error());
        return 1;
    }
    snprintf(path, sizeof path, "%s/losses.png", o->out);
    if (plot_losses(path, g) != 0) {
        fprintf(stderr, "gan: %s\n", plot_error());
        return 1;
    }
    if (!o->quiet) {
        printf("trained %lld batches in %.1f s (%.2f ms per batch), global_step %lld (G and D steps)\n",
               (long long)g->batches, seconds, g->batches > 0 ? 1000.0 * seconds / (double)g->batches : 0.0,
               (long long)global_step);
        printf("samples per mode (of %d, 3 sigma):", N_SAMPLES);
        for (int k = 0; k < N_MODES; k++)
            printf(" %ld", cv.hits[k]);
        printf("\nwrote %s/{metrics.csv, samples.csv, final.png, losses.png}\n", o->out);
    }
    printf("modes covered: %d/8, high-quality: %.1f%%\n", cv.modes, cv.high_quality);
    return 0;
}

static int run(options *o)
{
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = o->epochs;
    cfg.enable_progress_bar = o->progress;
    cfg.log_dir = o->out; /* metrics.csv lands in --out */
    cfg.log_every_n_steps = LOG_EVERY_N_STEPS;
    cfg.devices = o->devices;
    em_trainer *t = em_trainer_new(&cfg);
    o->zero = em_trainer_is_global_zero(t);
    if (make_dirs(o->out) != 0) {
        fprintf(stderr, "gan: cannot create %s: %s\n", o->out, strerror(errno));
        em_trainer_free(t);
        return 1;
    }
    /* the header is printed by gan_on_fit_start, after the resume line */

    em_manual_seed(o->seed);
    em_scope_begin(); /* owns the data and the fixed noise for the whole run */
    static float real[2 * N_SAMPLES], fake[2 * N_SAMPLES];
    struct gan g = {.base = {.ops = &gan_ops, .manual_optimization = true}, .o = o, .real = real, .fake = fake};
    em_tensor *data = ring_data((int64_t)o->steps_per_epoch * o->batch_size, o->sigma);
    em_tensor *shown = ring_data(N_SAMPLES, o->sigma); /* the real points of the pictures */
    g.fixed_z = em_randn(EM_SHAPE(N_SAMPLES, Z_DIM), NULL);
    em_nn *layers = em_nn_container(); /* self.G, self.D */
    em_nn_add(layers, "G", mlp(Z_DIM, 2));
    em_nn_add(layers, "D", mlp(2, 1));
    g.base.layers = layers;
    g.G = em_nn_child(layers, "G");
    g.D = em_nn_child(layers, "D");

    /* Lightning's ModelCheckpoint for --checkpoint-dir */
    if (t != NULL && ckpt_add_callback(t, &o->ckpt) != EM_OK) {
        fprintf(stderr, "gan: --checkpoint-dir: %s\n", em_last_error());
        em_trainer_free(t);
        t = NULL;
    }
    em_loader *train = data != NULL ? em_tensor_loader((em_tensor *[]){data}, 1,
                                                       &(em_loader_opts){.batch_size = o->batch_size, .shuffle = true,
                                                                         .seed = o->seed, .drop_last = true})
                                    : NULL;
    int status = 0;
    if (t == NULL || train == NULL || g.G == NULL || g.D == NULL || g.fixed_z == NULL ||
        em_tensor_copy_to(shown, real, sizeof real, EM_F32) != EM_OK) {
        fprintf(stderr, "gan: setup failed: %s\n", em_last_error());
        status = 1;
    }

    if (status == 0) {
        double t0 = now_seconds();
        if (em_trainer_fit_from(t, &g.base, train, NULL, o->ckpt.resume) != EM_OK) {
            fprintf(stderr, "gan: training failed: %s\n", em_trainer_error(t));
            status = 1;
        } else if (o->zero) {
            status = finish(&g, now_seconds() - t0, em_trainer_global_step(t));
            if (status == 0 && ckpt_save_weights("gan", layers, &o->ckpt) != EM_OK)
                status = 1;
        }
    }

    em_loader_free(train);
    em_trainer_free(t);
    em_nn_free(layers);
    curve_free(&g.g_curve);
    curve_free(&g.d_curve);
    em_scope_end();
    return status;
}

/* One thread for libtorch's and OpenBLAS's math unless the user chose (see "Threads" at the top).
 * Both pools are sized from the environment: OpenBLAS's when it loads (before main), so it is asked
 * directly, and libtorch's at its first parallel operation, so setting OMP_NUM_THREADS still works. */
static void use_one_thread(void)
{
    if (getenv("OMP_NUM_THREADS") != NULL || getenv("OPENBLAS_NUM_THREADS") != NULL)
        return;
    setenv("OMP_NUM_THREADS", "1", 0);
    void *self = dlopen(NULL, RTLD_NOW); /* the program and the libraries it loaded */
    if (self == NULL)
        return;
    void *sym = dlsym(self, "openblas_set_num_threads");
    if (sym != NULL) {
        void (*set_threads)(int);
        memcpy(&set_threads, &sym, sizeof set_threads); /* ISO C has no object-to-function pointer cast */
        set_threads(1);
    }
    dlclose(self);
}

int main(int argc, char **argv)
{
    options o = {.epochs = 20, .steps_per_epoch = 500, .batch_size = 128, .lr = 2e-4, .d_every = 1,
                 .sigma = 0.02, .seed = 0, .out = "gan-out", .plot_every = 5, .quiet = false, .progress = true,
                 .ckpt = CKPT_OPTS_DEFAULT};
    switch (parse_args(argc, argv, &o)) {
    case 1:
        return 0;
    case 2:
        return 2;
    default:
        use_one_thread();
        return run(&o);
    }
}
