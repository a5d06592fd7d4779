/* classifier.c: automatic optimization end to end - two interleaved spirals and an MLP.
 *
 * Data:  3000 points on two interleaved spirals (2 turns each, class 1 is class 0 turned by 180
 *        degrees, Gaussian noise sd 0.04), from em_manual_seed; 2400 train, 600 validation.
 * Model: Linear(2, 64) - ReLU - Linear(64, 64) - ReLU - Linear(64, 2), cross-entropy, AdamW.
 * Loop:  em_trainer_fit with batch size 32, accumulate_grad_batches = 2 (one optimizer step per two
 *        batches, 38 per epoch), gradient_clip_val = 1 (norm), a validation loop whose
 *        validation_step logs val_loss and val_acc, and one of two learning-rate schedules:
 *
 *   default     OneCycleLR(max_lr 1e-2) stepped every optimizer step (interval "step"), with
 *               total_steps = trainer.estimated_stepping_batches read in configure_optimizers, as
 *               Lightning's docs do. It also cycles Adam's beta1 (0.95 -> 0.85 -> 0.95).
 *   --plateau   ReduceLROnPlateau(factor 0.5, patience 1) on val_loss, stepped every epoch after
 *               validation (interval "epoch", monitor "val_loss"), from a constant lr of 5e-3.
 *
 * Why not both at once: Lightning allows one optimizer in automatic optimization but several
 * schedulers on it, and both would be stepped. OneCycleLR recomputes the lr from its own step
 * counter at every step, so a plateau reduction would be overwritten by the next OneCycleLR step
 * (and OneCycleLR's annealing already does what the plateau scheduler is for). So the schedules are
 * alternatives: one fixed budget that anneals to ~0 (the default), or an open-ended one that reacts
 * to the validation loss.
 *
 * `--bf16` trains under bf16-mixed precision (autocast bfloat16 around training_step and
 * validation_step; the optimizer and the clipping stay float32).
 *
 * `--devices N` trains with DDP on N processes (Gloo on the CPU): em_trainer_fit runs this program
 * again N-1 times (ember's launcher); it also runs unchanged under `torchrun --no-python
 * --nproc_per_node=N ./classifier`. Every process runs main from the top, so the data and the
 * weights come from the same seed in each; each trains on its DistributedSampler share (a batch of
 * 32 per process: N x 32 per optimizer step), val_loss and val_acc are logged with EM_LOG_SYNC_DIST
 * (means over all validation points), and only rank 0 prints.
 *
 * Each epoch prints the training loss, val_loss and val_acc (the values validation_step logged, read
 * back from trainer.callback_metrics in on_train_epoch_end, which Lightning runs after the epoch's
 * validation) and the learning rate at that point (before the plateau scheduler's epoch step, after
 * the epoch's last OneCycleLR step). Training takes about a second for the default 30 epochs.
 *
 * With --log-dir, a LearningRateMonitor logs the learning rate (and Adam's beta1 as "-momentum") to
 * metrics.csv beside the losses; --curves FILE then draws every logged metric as curves into a PNG with
 * the code of ember-plot (tools/metrics_plot.c; built where cairo is found).
 *
 *     ./build/bin/classifier [--epochs N] [--plateau] [--bf16] [--min-accuracy X] [--seed N]
 *                            [--progress-bar] [--log-dir DIR [--curves FILE]] [--devices N]
 */
#include <ember.h>

#include <getopt.h> /* getopt_long */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "checkpointing.h" /* --checkpoint-dir, --checkpoint-every, --resume, --save-weights */
#include "opts.h" /* strict numbers, getopt_long's messages */
#ifdef EMBER_EXAMPLES_HAVE_CAIRO
#include "metrics_plot.h" /* ember-plot's drawing: metrics.csv -> PNG curves */
#endif

static const double PI = 3.14159265358979323846;
enum { N_POINTS = 3000, N_VAL = 600, BATCH = 32, VAL_BATCH = 200, HIDDEN = 64 };

/* ---- options ------------------------------------------------------------------------------------ */

typedef struct options {
    long epochs;
    bool plateau;
    bool bf16;
    double min_accuracy; /* > 0: exit 1 when the final val_acc is below it */
    unsigned long long seed;
    bool progress_bar;
    const char *log_dir; /* NULL: no metrics.csv */
    long devices;        /* 0: auto (1, or what torchrun started) */
    const char *curves;  /* NULL: no picture of the curves */
    ckpt_opts ckpt;             /* --checkpoint-dir, --checkpoint-every, --resume, --save-weights */
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: classifier [--epochs N] [--plateau] [--bf16] [--min-accuracy X] [--seed N]\n"
            "                  [--progress-bar] [--log-dir DIR [--curves FILE]] [--devices N]\n"
            "                  [--checkpoint-dir DIR [--checkpoint-every N]] [--resume last|PATH]\n"
            "                  [--save-weights FILE]\n"
            "Trains an MLP on two interleaved spirals with em_trainer_fit (automatic optimization,\n"
            "accumulate_grad_batches 2, gradient clipping, validation) and prints the validation\n"
            "accuracy of every epoch.\n"
            "  --epochs N        epochs (default 30)\n"
            "  --plateau         ReduceLROnPlateau on val_loss every epoch, from lr 5e-3, instead of\n"
            "                    OneCycleLR (max_lr 1e-2) every optimizer step (default: OneCycleLR)\n"
            "  --bf16            bf16-mixed precision (default: 32-true)\n"
            "  --min-accuracy X  exit 1 when the final val_acc is below X, in [0, 1] (default 0: no check)\n"
            "  --seed N          seed of the data, the weights and the shuffling (default 0)\n"
            "  --progress-bar    show the trainer's progress bar on stderr (default: off)\n"
            "  --log-dir DIR     write the logged metrics and the learning rate to DIR/metrics.csv\n"
            "                    (default: no metrics.csv)\n"
            "  --curves FILE     draw DIR/metrics.csv as curves into the PNG FILE after training, as\n"
            "                    ember-plot does (needs --log-dir; only where built with cairo)\n"
            "  --devices N       DDP on N processes (this program started N-1 more times; default: 1, or\n"
            "                    the processes torchrun started)\n"
            "  --checkpoint-dir DIR  ModelCheckpoint: DIR/last.ckpt (every state a resume needs, as\n"
            "                    safetensors) every --checkpoint-every optimizer steps and at every epoch\n"
            "                    end (default: no checkpoints)\n"
            "  --checkpoint-every N  optimizer steps between two saves (default 50)\n"
            "  --resume last|PATH  continue from a checkpoint: `last` = the newest last*.ckpt in\n"
            "                    --checkpoint-dir (from the start when there is none yet), or a file;\n"
            "                    prints \"resumed from PATH at epoch E, batch B, global_step S\" first\n"
            "  --save-weights FILE  write the final parameters and buffers to FILE (safetensors)\n"
            "  -h, --help        this text\n");
}

/* Long-only options get values above any character. */
enum { OPT_EPOCHS = 256, OPT_PLATEAU, OPT_BF16, OPT_MIN_ACCURACY, OPT_SEED, OPT_PROGRESS_BAR, OPT_LOG_DIR,
       OPT_DEVICES, OPT_CURVES };

static const struct option long_options[] = {
    {"epochs", required_argument, NULL, OPT_EPOCHS},
    {"plateau", no_argument, NULL, OPT_PLATEAU},
    {"bf16", no_argument, NULL, OPT_BF16},
    {"min-accuracy", required_argument, NULL, OPT_MIN_ACCURACY},
    {"seed", required_argument, NULL, OPT_SEED},
    {"progress-bar", no_argument, NULL, OPT_PROGRESS_BAR},
    {"log-dir", required_argument, NULL, OPT_LOG_DIR},
    {"devices", required_argument, NULL, OPT_DEVICES},
    {"curves", required_argument, NULL, OPT_CURVES},
    CKPT_LONG_OPTIONS,
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
        if (ckpt_parse("classifier", c, optarg, &o->ckpt, &ok)) {
            if (!ok)
                return 2;
            continue;
        }
        switch (c) {
        case 'h':
            usage(stdout);
            return 1;
        case OPT_EPOCHS:
            ok = opts_long("classifier", "--epochs", optarg, 1, &o->epochs);
            break;
        case OPT_PLATEAU:
            o->plateau = true;
            break;
        case OPT_BF16:
            o->bf16 = true;
            break;
        case OPT_MIN_ACCURACY:
            ok = opts_number(optarg, &o->min_accuracy) && o->min_accuracy >= 0 && o->min_accuracy <= 1;
            if (!ok)
                fprintf(stderr, "classifier: --min-accuracy needs a number in [0, 1] (got '%s')\n", optarg);
            break;
        case OPT_SEED:
            ok = opts_seed("classifier", "--seed", optarg, &o->seed);
            break;
        case OPT_PROGRESS_BAR:
            o->progress_bar = true;
            break;
        case OPT_LOG_DIR:
            ok = optarg[0] != '\0';
            if (!ok)
                fprintf(stderr, "classifier: --log-dir needs a directory name\n");
            o->log_dir = optarg;
            break;
        case OPT_DEVICES:
            ok = opts_long("classifier", "--devices", optarg, 1, &o->devices);
            break;
        case OPT_CURVES:
#ifdef EMBER_EXAMPLES_HAVE_CAIRO
            ok = optarg[0] != '\0';
            if (!ok)
                fprintf(stderr, "classifier: --curves needs a file name\n");
            o->curves = optarg;
#else
            ok = false;
            fprintf(stderr, "classifier: --curves is not available: built without cairo\n");
#endif
            break;
        default: /* '?' or ':' */
            opts_rejected("classifier", long_options, argv, c);
            return 2;
        }
        if (!ok)
            return 2;
    }
    if (!ckpt_check("classifier", &o->ckpt))
        return 2;
    if (o->curves != NULL && o->log_dir == NULL) {
        fprintf(stderr, "classifier: --curves needs --log-dir (the curves are drawn from DIR/metrics.csv)\n");
        return 2;
    }
    return opts_no_operands("classifier", argc, argv) ? 0 : 2;
}

/* ---- data --------------------------------------------------------------------------------------- */

/* One spiral arm of n points, [n, 2], turned by `turn` radians: radius s, angle pi/4 + 4 pi s + turn
 * for s = sqrt(u), u ~ U(0, 1) (uniform density along the area), plus N(0, 0.04^2) noise. */
static em_tensor *spiral_arm(int64_t n, double turn)
{
    em_tensor *s = em_sqrt(em_rand(EM_SHAPE(n, 1), NULL));
    em_tensor *angle = em_add_scalar(em_mul_scalar(s, 4.0 * PI), PI / 4 + turn);
    em_tensor *xy = em_cat((em_tensor *[]){em_mul(s, em_cos(angle)), em_mul(s, em_sin(angle))}, 2, 1);
    return em_add(xy, em_mul_scalar(em_randn(EM_SHAPE(n, 2), NULL), 0.04));
}

/* Inputs [3000, 2] (scaled to about [-2, 2]) and int64 labels [3000], shuffled, owned by the open
 * scope; split into the first 2400 rows (train) and the last 600 (validation). */
static em_status make_data(em_tensor *out[4])
{
    const int64_t half = N_POINTS / 2;
    em_tensor *x = em_mul_scalar(em_cat((em_tensor *[]){spiral_arm(half, 0.0), spiral_arm(half, PI)}, 2, 0), 2.0);
    em_tensor *y = em_cat((em_tensor *[]){em_zeros(EM_SHAPE(half), &(em_tensor_opts){.dtype = EM_I64}),
                                          em_ones(EM_SHAPE(half), &(em_tensor_opts){.dtype = EM_I64})},
                          2, 0);
    em_tensor *perm = em_randperm(N_POINTS, NULL);
    x = em_index_select(x, 0, perm);
    y = em_index_select(y, 0, perm);
    out[0] = em_narrow(x, 0, 0, N_POINTS - N_VAL);
    out[1] = em_narrow(y, 0, 0, N_POINTS - N_VAL);
    out[2] = em_narrow(x, 0, N_POINTS - N_VAL, N_VAL);
    out[3] = em_narrow(y, 0, N_POINTS - N_VAL, N_VAL);
    return out[3] == NULL ? em_last_status() : EM_OK;
}

/* ---- the module -------------------------------------------------------------------------------------- */

typedef struct classifier {
    em_module base;
    const options *o;
    em_nn *net;
    bool plateau;
    /* the epoch's training loss, summed in training_step */
    double train_loss_sum;
    int64_t train_batches;
    /* the validation epoch's correct predictions, counted here to cross-check the logged val_acc */
    int64_t val_correct, val_seen;
    /* what each epoch ended with */
    double last_val_acc, best_val_acc;
    int64_t epochs_done;
} classifier;

static em_tensor *training_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    classifier *c = (classifier *)m;
    em_tensor *loss = em_cross_entropy(em_nn_forward(c->net, b->t[0]), b->t[1], EM_REDUCTION_MEAN);
    if (loss == NULL)
        return NULL; /* the error is recorded: fit stops with it */
    double value = em_tensor_item(loss);
    c->train_loss_sum += value;
    c->train_batches++;
    em_log(m, "train_loss", value, EM_LOG_PROG_BAR); /* on_step by default in training_step */
    return loss;                                      /* owned by the batch's scope */
}

static em_status validation_step(em_module *m, const em_batch *b, int64_t batch_idx)
{
    (void)batch_idx;
    classifier *c = (classifier *)m;
    em_tensor *logits = em_nn_forward(c->net, b->t[0]);
    em_tensor *loss = em_cross_entropy(logits, b->t[1], EM_REDUCTION_MEAN);
    em_tensor *correct = em_sum(em_eq(em_argmax(logits, 1, false), b->t[1]));
    if (loss == NULL || correct == NULL)
        return em_last_status();
    double n_correct = em_tensor_item(correct);
    c->val_correct += (int64_t)n_correct;
    c->val_seen += b->size;
    /* on_epoch by default in validation_step: the epoch value is the mean weighted by batch size */
    /* sync_dist: under DDP the epoch values are means over every process's validation share */
    em_status s = em_log(m, "val_loss", em_tensor_item(loss), EM_LOG_PROG_BAR | EM_LOG_SYNC_DIST);
    if (s == EM_OK)
        s = em_log(m, "val_acc", n_correct / (double)b->size, EM_LOG_PROG_BAR | EM_LOG_SYNC_DIST);
    return s;
}

static em_status on_validation_epoch_start(em_module *m)
{
    classifier *c = (classifier *)m;
    c->val_correct = c->val_seen = 0;
    return EM_OK;
}

static em_status on_train_epoch_start(em_module *m)
{
    classifier *c = (classifier *)m;
    c->train_loss_sum = 0;
    c->train_batches = 0;
    return EM_OK;
}

/* Runs after the epoch's validation (Lightning's order), so callback_metrics hold this epoch's
 * val_loss and val_acc; the plateau scheduler steps right after this hook. */
static em_status on_train_epoch_end(em_module *m)
{
    classifier *c = (classifier *)m;
    em_trainer *t = em_module_trainer(m);
    double val_loss = NAN, val_acc = NAN;
    if (!em_trainer_callback_metric(t, "val_loss", &val_loss) || !em_trainer_callback_metric(t, "val_acc", &val_acc))
        return em_error_set(EM_EUSER, "val_loss / val_acc were not logged");
    double counted = c->val_seen > 0 ? (double)c->val_correct / (double)c->val_seen : NAN;
    bool zero = em_trainer_is_global_zero(t);
    /* (under DDP this process counted only its share; the logged value covers all) */
    if (zero && em_trainer_world_size(t) == 1 && !(fabs(counted - val_acc) < 1e-5))
        printf("warning: logged val_acc %.6f differs from the counted accuracy %.6f\n", val_acc, counted);
    em_optimizer **opts = em_optimizers(m, NULL);
    double lr = opts != NULL ? em_optimizer_lr(opts[0], 0) : NAN;
    if (zero)
        printf("epoch %3lld  train_loss %.4f  val_loss %.4f  val_acc %.4f  lr %.2e\n",
               (long long)em_trainer_current_epoch(t), c->train_loss_sum / (double)c->train_batches, val_loss,
               val_acc, lr);
    fflush(stdout);
    c->last_val_acc = val_acc;
    if (!(val_acc <= c->best_val_acc))
        c->best_val_acc = val_acc;
    c->epochs_done++;
    return EM_OK;
}

/* The first lines: where a resumed run continues (a resumed fit has restored its position by
 * on_fit_start), then what is trained. Rank 0 prints. */
static em_status on_fit_start(em_module *m)
{
    classifier *c = (classifier *)m;
    const options *o = c->o;
    em_trainer *t = em_module_trainer(m);
    if (!em_trainer_is_global_zero(t))
        return EM_OK;
    ckpt_print_resume(t, &o->ckpt);
    printf("classifier: two spirals, %d train / %d validation points; MLP 2-%d-%d-2, AdamW, batch %d, "
           "accumulate_grad_batches 2, gradient_clip_val 1, %s, %s, %ld epochs\n",
           N_POINTS - N_VAL, N_VAL, HIDDEN, HIDDEN, BATCH,
           o->plateau ? "ReduceLROnPlateau(val_loss) per epoch" : "OneCycleLR per step",
           o->bf16 ? "bf16-mixed" : "32-true", o->epochs);
    if (em_trainer_world_size(t) > 1)
        printf("DDP: %lld processes (Gloo), batch %d per process\n", (long long)em_trainer_world_size(t), BATCH);
    fflush(stdout);
    return EM_OK;
}

static em_status configure_optimizers(em_module *m, em_optim_setup *setup)
{
    classifier *c = (classifier *)m;
    em_adam_opts ao = EM_ADAMW_OPTS_INIT;
    ao.lr = c->plateau ? 5e-3 : 1e-2; /* OneCycleLR overwrites it with max_lr / 25 at once */
    ao.weight_decay = 1e-4;
    em_params *ps = em_nn_parameters(c->net);
    em_optimizer *opt = em_adamw(ps, &ao);
    em_params_free(ps);
    em_status s = em_optim_setup_add(setup, opt); /* the trainer owns opt from here */
    if (s != EM_OK)
        return s;

    if (c->plateau) {
        em_plateau_opts po = EM_PLATEAU_OPTS_INIT;
        po.factor = 0.5;
        po.patience = 1;
        return em_optim_setup_add_scheduler(setup, em_reduce_lr_on_plateau(opt, &po),
                                            &(em_scheduler_config){.interval = EM_INTERVAL_EPOCH,
                                                                   .monitor = "val_loss"});
    }
    /* Lightning: total_steps=self.trainer.estimated_stepping_batches */
    double total = em_trainer_estimated_stepping_batches(em_module_trainer(m));
    if (!isfinite(total) || total < 1)
        return em_error_set(EM_EINVAL, "OneCycleLR needs a bounded run (estimated_stepping_batches %g)", total);
    em_onecycle_opts oo = EM_ONECYCLE_OPTS_INIT;
    oo.max_lr = 1e-2;
    oo.total_steps = (int64_t)total;
    return em_optim_setup_add_scheduler(setup, em_onecycle_lr(opt, &oo),
                                        &(em_scheduler_config){.interval = EM_INTERVAL_STEP});
}

static const em_module_ops classifier_ops = {
    .version = EM_MODULE_OPS_VERSION,
    .training_step = training_step,
    .configure_optimizers = configure_optimizers,
    .validation_step = validation_step,
    .on_train_epoch_start = on_train_epoch_start,
    .on_train_epoch_end = on_train_epoch_end,
    .on_validation_epoch_start = on_validation_epoch_start,
    .on_fit_start = on_fit_start,
};

/* ---- main ------------------------------------------------------------------------------------------ */

static double now_seconds(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int run(const options *o)
{
    double start = now_seconds();
    em_manual_seed(o->seed);
    em_scope_begin(); /* owns the data for the whole run */
    em_tensor *data[4];
    em_status s = make_data(data);
    classifier c = {.base = {.ops = &classifier_ops}, .o = o,
                    .net = EM_NN_SEQUENTIAL(em_nn_linear(2, HIDDEN, true), em_nn_relu(),
                                            em_nn_linear(HIDDEN, HIDDEN, true), em_nn_relu(),
                                            em_nn_linear(HIDDEN, 2, true)),
                    .plateau = o->plateau};
    c.base.layers = c.net;

    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    cfg.max_epochs = o->epochs;
    cfg.accumulate_grad_batches = 2;
    cfg.gradient_clip_val = 1.0;
    cfg.precision = o->bf16 ? EM_PRECISION_BF16_MIXED : EM_PRECISION_32_TRUE;
    cfg.enable_progress_bar = o->progress_bar;
    cfg.enable_csv_logger = o->log_dir != NULL;
    cfg.log_dir = o->log_dir;
    cfg.devices = o->devices;
    em_trainer *t = em_trainer_new(&cfg);
    bool zero = em_trainer_is_global_zero(t); /* prints once: rank 0 */
    /* Lightning's LearningRateMonitor: lr-AdamW (and lr-AdamW-momentum, beta1) in metrics.csv */
    if (t != NULL && o->log_dir != NULL && em_trainer_add_callback(t, em_lr_monitor(&(em_lr_monitor_opts){
                                                                      .log_momentum = true})) != EM_OK)
        s = em_last_status();
    /* Lightning's ModelCheckpoint for --checkpoint-dir */
    if (t != NULL && s == EM_OK)
        s = ckpt_add_callback(t, &o->ckpt);
    em_loader *train = NULL, *val = NULL;
    if (s == EM_OK) {
        train = em_tensor_loader(data, 2, &(em_loader_opts){.batch_size = BATCH, .shuffle = true, .seed = o->seed});
        val = em_tensor_loader(data + 2, 2, &(em_loader_opts){.batch_size = VAL_BATCH});
    }

    int status = 0;
    if (c.net == NULL || t == NULL || train == NULL || val == NULL) {
        fprintf(stderr, "classifier: setup failed: %s\n", em_last_error());
        status = 1;
    } else {
        /* the header is printed by on_fit_start, after the resume line */
        if (em_trainer_fit_from(t, &c.base, train, val, o->ckpt.resume) != EM_OK) {
            fprintf(stderr, "classifier: fit failed: %s\n", em_trainer_error(t));
            status = 1;
        } else if (zero) {
            if (ckpt_save_weights("classifier", c.net, &o->ckpt) != EM_OK)
                status = 1;
            /* a run resumed from its very end trains no epoch here: the last val_acc is the checkpoint's
             * (its callback_metrics); epochs: those of the whole run, also when it resumed */
            double restored = NAN;
            if (c.epochs_done == 0 && em_trainer_callback_metric(t, "val_acc", &restored))
                c.last_val_acc = c.best_val_acc = restored;
            printf("final val_acc %.4f (best %.4f) after %lld epochs, %lld optimizer steps, %.2f s\n",
                   c.last_val_acc, c.best_val_acc, (long long)em_trainer_current_epoch(t),
                   (long long)em_trainer_global_step(t), now_seconds() - start);
#ifdef EMBER_EXAMPLES_HAVE_CAIRO
            if (o->curves != NULL) {
                char csv[4096];
                snprintf(csv, sizeof csv, "%s/metrics.csv", o->log_dir);
                int n = metrics_plot(csv, o->curves, &(metrics_plot_opts){.title = "classifier: metrics.csv"});
                if (n < 0) {
                    fprintf(stderr, "classifier: --curves: %s\n", metrics_plot_error());
                    status = 1;
                } else {
                    printf("curves of %d metrics written to %s\n", n, o->curves);
                }
            }
#endif
            if (o->min_accuracy > 0 && !(c.last_val_acc >= o->min_accuracy)) {
                printf("FAIL: final val_acc %.4f is below --min-accuracy %g\n", c.last_val_acc, o->min_accuracy);
                status = 1;
            }
        }
    }
    em_loader_free(train);
    em_loader_free(val);
    em_trainer_free(t);
    em_nn_free(c.net);
    em_scope_end(); /* the data */
    return status;
}

int main(int argc, char **argv)
{
    options o = {.epochs = 30, .seed = 0, .ckpt = CKPT_OPTS_DEFAULT};
    switch (parse_args(argc, argv, &o)) {
    case 1:
        return 0;
    case 2:
        return 2;
    default:
        return run(&o);
    }
}
