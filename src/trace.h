/* trace.h: the trace file (cfg.trace_path): one JSON line per training_step call and per optimizer
 * step, the quantities the conformance cases record. */
#ifndef EMBER_TRACE_H
#define EMBER_TRACE_H

#include "loop.h"

/** Open cfg.trace_path when set. Errors: EM_EIO naming the path. */
em_status emi_trace_open(em_trainer *t);
/** Close the trace. Errors: EM_EIO naming the path and errno's text when a write or the close failed
 *  (a full disk: the data is flushed only here). */
em_status emi_trace_close(em_trainer *t);
/** A training_step call and its loss (NAN: none). No-op without a trace. */
void emi_trace_training_step(em_trainer *t, double loss);
/** An optimizer step of optimizer `opt_index`, with the gradient norms before and after clipping. */
void emi_trace_optimizer_step(em_trainer *t, int opt_index, double norm_before, double norm_after);

#endif /* EMBER_TRACE_H */
