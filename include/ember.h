/*
 * ember.h: the umbrella header. Include this one.
 *
 *   ember/common.h   version, status codes, the sticky error slot
 *   ember/tensor.h   tensors, operations, autograd, scopes
 *   ember/nn.h       layers and parameter lists
 *   ember/optim.h    optimizers and gradient clipping
 *   ember/amp.h      the grad scaler of mixed precision (torch.amp.GradScaler)
 *   ember/scheduler.h learning-rate schedulers
 *   ember/trainer.h  the training loop: modules, loaders, callbacks, the trainer
 *   ember/io.h       weights in safetensors files, a reader safe against hostile files
 */
#ifndef EMBER_H
#define EMBER_H

#include "ember/common.h"
#include "ember/tensor.h"
#include "ember/nn.h"
#include "ember/optim.h"
#include "ember/amp.h"
#include "ember/scheduler.h"
#include "ember/trainer.h"
#include "ember/io.h"

#endif /* EMBER_H */
