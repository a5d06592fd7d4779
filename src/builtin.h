/* builtin.h: the callbacks ember installs itself (Lightning adds its progress bar the same way).
 * They are written against the public API only, like a user's callback. */
#ifndef EMBER_BUILTIN_H
#define EMBER_BUILTIN_H

#include "ember/trainer.h"

/** Lightning's TQDMProgressBar on stderr (progress.c). NULL when out of memory (recorded). */
em_callback *emi_progress_bar_new(void);

/** Warn once per process, through the log handler, when OpenBLAS runs its generic kernels
 *  (platform.c). */
void emi_check_blas(void);

#endif /* EMBER_BUILTIN_H */
