/* weights.h: what weights.c offers the files above it (checkpoint.c). */
#ifndef EMBER_WEIGHTS_H
#define EMBER_WEIGHTS_H

#include "ember/io.h"

/**
 * em_nn_load_safetensors_from for the tensors of `f` named `prefix` + the layer's names (the
 * others are not "unexpected"); `who` prefixes errors. Nothing changes when a check fails.
 */
em_status emi_nn_load(em_nn *m, const em_safetensors *f, bool strict, const char *prefix, const char *who);

#endif
