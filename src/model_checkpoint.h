/* model_checkpoint.h: what the loop needs from ModelCheckpoint (model_checkpoint.c) besides the public API. */
#ifndef EMBER_MODEL_CHECKPOINT_H
#define EMBER_MODEL_CHECKPOINT_H

#include "ember/trainer.h"

/**
 * Lightning's _parse_ckpt_path("last"): among the ModelCheckpoint callbacks in cbs[0..n-1], the newest (by
 * modification time) of their last_model_path and of the files in their directory whose name starts with
 * their last_name ("last") and ends with their file_extension (".ckpt", "last-v1.ckpt" too). Writes its
 * path into out (cap bytes) and returns 1; returns 0 (out = "") when there is none yet; -1 with an error
 * recorded (EM_EINVAL) when no callback is a ModelCheckpoint, or when the path does not fit in cap.
 * A ModelCheckpoint without dirpath looks where its fit would put it: em_trainer_log_dir(t) (when the
 * logger is open) or default_root_dir, + "/checkpoints".
 */
int emi_model_checkpoint_find_last(const em_trainer *t, em_callback *const *cbs, size_t n, char *out, size_t cap);

#endif /* EMBER_MODEL_CHECKPOINT_H */
