/* checkpoint.h: the checkpoint file's layer, optimizer and scheduler parts (checkpoint.c), for
 * em_checkpoint_save/load and the trainer's checkpoints (resume.c), which add their own tensors
 * ("trainer.*", "callbacks.*") and metadata ("ember.trainer", ...) to the same file. */
#ifndef EMBER_CHECKPOINT_H
#define EMBER_CHECKPOINT_H

#include "ember/io.h"

/**
 * Write a checkpoint: `m`'s parameters and buffers (none when `m` is NULL), the optimizers' state and
 * description, the schedulers' state, meta[0..n_meta-1] (not checked: ember's own keys allowed), and
 * xtensors[0..n_x-1] under xnames (as they are). `who` starts every error message. Atomic, as
 * em_safetensors_write. Errors: as em_checkpoint_save.
 */
em_status emi_checkpoint_write(const char *path, const char *who, const em_nn *m, em_optimizer *const *opts,
                               size_t n_opts, em_scheduler *const *scheds, size_t n_scheds,
                               const em_safetensors_meta *meta, size_t n_meta, const char *const *xnames,
                               em_tensor *const *xtensors, size_t n_x);

/**
 * Restore the layer (skipped when `m` is NULL), optimizers and schedulers of the checkpoint `f`, as
 * em_checkpoint_load: every check first, then the copies. Tensors named "trainer.*" and "callbacks.*"
 * are left to the caller. `who` starts every error message. Errors: as em_checkpoint_load.
 */
em_status emi_checkpoint_restore(const em_safetensors *f, const char *who, em_nn *m, em_optimizer *const *opts,
                                 size_t n_opts, em_scheduler *const *scheds, size_t n_scheds);

#endif /* EMBER_CHECKPOINT_H */
