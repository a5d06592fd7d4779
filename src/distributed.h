/* distributed.h: the ranks of this process and the process group (distributed.c). */
#ifndef EMBER_DISTRIBUTED_H
#define EMBER_DISTRIBUTED_H

#include "loop.h"

/** Read the cluster environment (torchrun, SLURM, ember's own launcher) and the config into
 *  t->env. Never fails: a bad variable is reported by emi_dist_setup at fit. */
void emi_dist_env_read(em_trainer *t);
/**
 * Lightning: DDPStrategy.setup_environment: resolve the strategy; for DDP start the other local ranks
 * (ember's launcher, when no launcher did) and join the process group (once per process: a later
 * fit reuses it). Sets t->env.distributed. Errors: EM_EINVAL for a configuration that contradicts
 * the environment, EM_ETORCH for a failed rendezvous (recorded).
 */
em_status emi_dist_setup(em_trainer *t);
/** After a DDP fit failed: the process group is not used again; the ranks this process launched
 *  are killed and collected (Lightning's launcher.kill). */
void emi_dist_fit_failed(em_trainer *t);
/**
 * Turn a failed collective into a message that names the rank(s) gone, where this process can see
 * them: "rank 1 (pid 123) was killed by signal 9". Returns `s`, re-recording the error.
 */
em_status emi_dist_explain(em_trainer *t, em_status s, const char *what);
/**
 * Collective, for work only global rank 0 does (writing a file): every rank returns rank 0's status `s`.
 * Under DDP rank 0's status and message are broadcast; another rank records "who: rank 0 failed:
 * <rank 0's message>" when it failed. Without DDP it returns `s`. A failed broadcast is returned.
 */
em_status emi_dist_share_rank0_status(em_trainer *t, em_status s, const char *who);

#endif /* EMBER_DISTRIBUTED_H */
