/* checkpointing.h: the checkpoint flags classifier and gan share (--checkpoint-dir, --checkpoint-every,
 * --resume, --save-weights), what they do with them, and the line a resumed run prints first.
 *
 * Each example keeps its own getopt_long loop and --help text; it lists CKPT_LONG_OPTIONS in its
 * long options, hands every getopt_long value to ckpt_parse first, calls ckpt_check after the loop,
 * ckpt_add_callback on its trainer, ckpt_print_resume from on_fit_start (rank 0) and ckpt_save_weights
 * after fit. Messages go to stderr as "<prog>: ...".
 */
#ifndef EMBER_EXAMPLES_CHECKPOINTING_H
#define EMBER_EXAMPLES_CHECKPOINTING_H

#include <ember.h>
#include <getopt.h>
#include <stdbool.h>

typedef struct ckpt_opts {
    const char *dir;          /* --checkpoint-dir; NULL: no checkpoints */
    long every;               /* --checkpoint-every: optimizer steps between two last.ckpt saves (default 50) */
    const char *resume;       /* --resume: NULL, "last" or a checkpoint's path */
    const char *save_weights; /* --save-weights: NULL, or where the final weights go */
} ckpt_opts;

#define CKPT_OPTS_DEFAULT ((ckpt_opts){.every = 50})

/* getopt_long values of the four options: above any an example uses for its own */
enum { CKPT_OPT_DIR = 1024, CKPT_OPT_EVERY, CKPT_OPT_RESUME, CKPT_OPT_SAVE_WEIGHTS };

#define CKPT_LONG_OPTIONS                                                                                            \
    {"checkpoint-dir", required_argument, NULL, CKPT_OPT_DIR},                                                       \
        {"checkpoint-every", required_argument, NULL, CKPT_OPT_EVERY},                                               \
        {"resume", required_argument, NULL, CKPT_OPT_RESUME},                                                        \
        {"save-weights", required_argument, NULL, CKPT_OPT_SAVE_WEIGHTS}

/* When c (a getopt_long value) is one of the four options: stores arg in o, sets *ok (false after
 * printing why when arg is empty or --checkpoint-every is not an integer >= 1) and returns true.
 * Otherwise returns false and touches nothing. */
bool ckpt_parse(const char *prog, int c, const char *arg, ckpt_opts *o, bool *ok);

/* After the getopt_long loop: false, with a message, for --resume last without --checkpoint-dir. */
bool ckpt_check(const char *prog, const ckpt_opts *o);

/* With --checkpoint-dir, adds Lightning's ModelCheckpoint(dirpath, every_n_train_steps=every,
 * save_top_k=0, save_last=True) to t: last.ckpt every `every` optimizer steps and at every epoch end
 * (save_last ignores every_n_epochs). EM_OK without it; else em_model_checkpoint's or
 * em_trainer_add_callback's status (em_last_error() says why). */
em_status ckpt_add_callback(em_trainer *t, const ckpt_opts *o);

/* From on_fit_start (a resumed fit has restored its position by then): "resumed from PATH at epoch E,
 * batch B, global_step S", or, for --resume last before any checkpoint exists, that training starts
 * from the beginning. Prints nothing otherwise. */
void ckpt_print_resume(em_trainer *t, const ckpt_opts *o);

/* With --save-weights, writes net's parameters and buffers there (safetensors); EM_OK without it.
 * On failure prints "<prog>: --save-weights: <why>" and returns the status. */
em_status ckpt_save_weights(const char *prog, const em_nn *net, const ckpt_opts *o);

#endif /* EMBER_EXAMPLES_CHECKPOINTING_H */
