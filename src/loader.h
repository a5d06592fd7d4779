/* loader.h: what the loop needs from a loader besides the public em_loader_* functions. */
#ifndef EMBER_LOADER_H
#define EMBER_LOADER_H

#include "ember/trainer.h"

/** Under DDP (world > 1) at fit start, and (0, 1, false, ...) when it ends: the built-in loader samples
 *  as the DistributedSampler Lightning injects when `use_sampler` (shuffled for the training loader,
 *  `train`; as the loader's own option otherwise; seeded with `seed`); a loader written in C gets
 *  ops->set_distributed. */
void emi_loader_set_distributed(em_loader *l, int64_t rank, int64_t world, bool use_sampler, bool train,
                                uint64_t seed);
/** The loader's set_epoch (a sampler's), at the start of every training epoch. */
void emi_loader_set_epoch(em_loader *l, int64_t epoch);
/** Batch `index` of the current epoch into `out` (tensors owned by the open scope); a loader that
 *  fails without a message, or gives a batch without tensors, gets one. */
em_status emi_loader_fetch(em_loader *l, int64_t index, em_batch *out);

#endif /* EMBER_LOADER_H */
