/* layout.c: the ABI of ember's versioned structs, pinned at compile time (C11, -Wpedantic -Werror).
 *
 * A struct that carries a `version` may only grow at its end (docs/DESIGN.md §2): `version` stays at
 * offset 0 and every field of an earlier version keeps its offset. Moving or inserting a field
 * breaks programs compiled against an older header; SQLite's sqlite3_vfs once changed without its
 * version changing. If an assertion here fails, append the new field instead, or bump the version
 * and say so in the header. When a version grows, add its new fields below; never edit a line.
 *
 * The file also expands the convenience macros (EM_*_INIT, EM_SHAPE, EM_NN_SEQUENTIAL, EM_DEVICE_*)
 * once, so a macro that -Wextra or -Wpedantic rejects in user code fails here first.
 */
#include <ember.h>

#include <stddef.h>

#define PTR sizeof(void *)   /* on LP64 and ILP32 alike, an int followed by a pointer pads to PTR */

/* ---- ops tables: version 1 --------------------------------------------------------------------- */

_Static_assert(offsetof(em_nn_ops, version) == 0, "em_nn_ops.version must stay first");
_Static_assert(offsetof(em_nn_ops, forward) == 1 * PTR, "em_nn_ops v1 layout: forward moved");
_Static_assert(offsetof(em_nn_ops, destroy) == 2 * PTR, "em_nn_ops v1 layout: destroy moved");
_Static_assert(EM_NN_OPS_VERSION >= 1, "em_nn_ops: version numbers only grow");

_Static_assert(offsetof(em_optimizer_ops, version) == 0, "em_optimizer_ops.version must stay first");
_Static_assert(offsetof(em_optimizer_ops, name) == 1 * PTR, "em_optimizer_ops v1 layout: name moved");
_Static_assert(offsetof(em_optimizer_ops, step) == 2 * PTR, "em_optimizer_ops v1 layout: step moved");
_Static_assert(offsetof(em_optimizer_ops, destroy) == 3 * PTR, "em_optimizer_ops v1 layout: destroy moved");
_Static_assert(EM_OPTIMIZER_OPS_VERSION >= 2, "em_optimizer_ops: version numbers only grow");
_Static_assert(offsetof(em_optimizer_ops, step_supports_amp_scaling) == 4 * PTR,
               "em_optimizer_ops v2 layout: step_supports_amp_scaling moved");
_Static_assert(offsetof(em_optimizer_ops, requires_closure) == 4 * PTR + 1,
               "em_optimizer_ops v2 layout: requires_closure moved");

/* ---- options structs with an EM_*_INIT: version first -------------------------------------------- */

_Static_assert(offsetof(em_norm_opts, version) == 0, "em_norm_opts.version must stay first");
_Static_assert(offsetof(em_adam_opts, version) == 0, "em_adam_opts.version must stay first");
_Static_assert(offsetof(em_rmsprop_opts, version) == 0, "em_rmsprop_opts.version must stay first");
_Static_assert(offsetof(em_adagrad_opts, version) == 0, "em_adagrad_opts.version must stay first");
_Static_assert(offsetof(em_lbfgs_opts, version) == 0, "em_lbfgs_opts.version must stay first");
_Static_assert(offsetof(em_onecycle_opts, version) == 0, "em_onecycle_opts.version must stay first");
_Static_assert(offsetof(em_plateau_opts, version) == 0, "em_plateau_opts.version must stay first");
_Static_assert(offsetof(em_trainer_config, version) == 0, "em_trainer_config.version must stay first");
_Static_assert(offsetof(em_cyclic_opts, version) == 0, "em_cyclic_opts.version must stay first");
_Static_assert(offsetof(em_grad_scaler_opts, version) == 0, "em_grad_scaler_opts.version must stay first");
_Static_assert(EM_TRAINER_CONFIG_VERSION >= 2, "em_trainer_config: version numbers only grow");
_Static_assert(offsetof(em_trainer_config, grad_scaler) > offsetof(em_trainer_config, trace_path),
               "em_trainer_config v2: grad_scaler comes after every version-1 field");
_Static_assert(EM_TRAINER_CONFIG_VERSION >= 3, "em_trainer_config: version numbers only grow");
_Static_assert(offsetof(em_trainer_config, process_group_backend) > offsetof(em_trainer_config, ddp_timeout),
               "em_trainer_config v3: process_group_backend comes after every version-2 field");

_Static_assert(offsetof(em_scheduler_ops, version) == 0, "em_scheduler_ops.version must stay first");
_Static_assert(offsetof(em_scheduler_ops, name) == 1 * PTR, "em_scheduler_ops v1 layout: name moved");
_Static_assert(offsetof(em_scheduler_ops, step) == 2 * PTR, "em_scheduler_ops v1 layout: step moved");
_Static_assert(offsetof(em_scheduler_ops, destroy) == 3 * PTR, "em_scheduler_ops v1 layout: destroy moved");
_Static_assert(offsetof(em_scheduler_ops, reduce_on_plateau) == 4 * PTR, "em_scheduler_ops v1 layout: reduce_on_plateau moved");
_Static_assert(offsetof(em_module_ops, version) == 0, "em_module_ops.version must stay first");
_Static_assert(offsetof(em_callback_ops, version) == 0, "em_callback_ops.version must stay first");
_Static_assert(offsetof(em_loader_ops, version) == 0, "em_loader_ops.version must stay first");
_Static_assert(EM_MODULE_OPS_VERSION >= 1 && EM_CALLBACK_OPS_VERSION >= 1 && EM_LOADER_OPS_VERSION >= 1 &&
                   EM_SCHEDULER_OPS_VERSION >= 1, "ops tables: version numbers only grow");

/* ---- the trainer's ops tables: version 1 (every entry after `version`, or `version` and `name`,
 * is a pointer) ---------------------------------------------------------------------------------- */

_Static_assert(offsetof(em_module_ops, training_step) == 1 * PTR, "em_module_ops v1 layout: training_step moved");
_Static_assert(offsetof(em_module_ops, configure_optimizers) == 2 * PTR, "em_module_ops v1 layout: configure_optimizers moved");
_Static_assert(offsetof(em_module_ops, validation_step) == 3 * PTR, "em_module_ops v1 layout: validation_step moved");
_Static_assert(offsetof(em_module_ops, optimizer_step) == 4 * PTR, "em_module_ops v1 layout: optimizer_step moved");
_Static_assert(offsetof(em_module_ops, optimizer_zero_grad) == 5 * PTR, "em_module_ops v1 layout: optimizer_zero_grad moved");
_Static_assert(offsetof(em_module_ops, lr_scheduler_step) == 6 * PTR, "em_module_ops v1 layout: lr_scheduler_step moved");
_Static_assert(offsetof(em_module_ops, configure_gradient_clipping) == 7 * PTR, "em_module_ops v1 layout: configure_gradient_clipping moved");
_Static_assert(offsetof(em_module_ops, backward) == 8 * PTR, "em_module_ops v1 layout: backward moved");
_Static_assert(offsetof(em_module_ops, on_fit_start) == 9 * PTR, "em_module_ops v1 layout: on_fit_start moved");
_Static_assert(offsetof(em_module_ops, on_fit_end) == 10 * PTR, "em_module_ops v1 layout: on_fit_end moved");
_Static_assert(offsetof(em_module_ops, on_train_start) == 11 * PTR, "em_module_ops v1 layout: on_train_start moved");
_Static_assert(offsetof(em_module_ops, on_train_end) == 12 * PTR, "em_module_ops v1 layout: on_train_end moved");
_Static_assert(offsetof(em_module_ops, on_train_epoch_start) == 13 * PTR, "em_module_ops v1 layout: on_train_epoch_start moved");
_Static_assert(offsetof(em_module_ops, on_train_epoch_end) == 14 * PTR, "em_module_ops v1 layout: on_train_epoch_end moved");
_Static_assert(offsetof(em_module_ops, on_train_batch_start) == 15 * PTR, "em_module_ops v1 layout: on_train_batch_start moved");
_Static_assert(offsetof(em_module_ops, on_train_batch_end) == 16 * PTR, "em_module_ops v1 layout: on_train_batch_end moved");
_Static_assert(offsetof(em_module_ops, on_before_backward) == 17 * PTR, "em_module_ops v1 layout: on_before_backward moved");
_Static_assert(offsetof(em_module_ops, on_after_backward) == 18 * PTR, "em_module_ops v1 layout: on_after_backward moved");
_Static_assert(offsetof(em_module_ops, on_before_optimizer_step) == 19 * PTR, "em_module_ops v1 layout: on_before_optimizer_step moved");
_Static_assert(offsetof(em_module_ops, on_before_zero_grad) == 20 * PTR, "em_module_ops v1 layout: on_before_zero_grad moved");
_Static_assert(offsetof(em_module_ops, on_validation_start) == 21 * PTR, "em_module_ops v1 layout: on_validation_start moved");
_Static_assert(offsetof(em_module_ops, on_validation_end) == 22 * PTR, "em_module_ops v1 layout: on_validation_end moved");
_Static_assert(offsetof(em_module_ops, on_validation_epoch_start) == 23 * PTR, "em_module_ops v1 layout: on_validation_epoch_start moved");
_Static_assert(offsetof(em_module_ops, on_validation_epoch_end) == 24 * PTR, "em_module_ops v1 layout: on_validation_epoch_end moved");
_Static_assert(offsetof(em_module_ops, on_validation_model_zero_grad) == 25 * PTR, "em_module_ops v1 layout: on_validation_model_zero_grad moved");

_Static_assert(offsetof(em_callback_ops, name) == 1 * PTR, "em_callback_ops v1 layout: name moved");
_Static_assert(offsetof(em_callback_ops, on_fit_start) == 2 * PTR, "em_callback_ops v1 layout: on_fit_start moved");
_Static_assert(offsetof(em_callback_ops, on_fit_end) == 3 * PTR, "em_callback_ops v1 layout: on_fit_end moved");
_Static_assert(offsetof(em_callback_ops, on_train_start) == 4 * PTR, "em_callback_ops v1 layout: on_train_start moved");
_Static_assert(offsetof(em_callback_ops, on_train_end) == 5 * PTR, "em_callback_ops v1 layout: on_train_end moved");
_Static_assert(offsetof(em_callback_ops, on_train_epoch_start) == 6 * PTR, "em_callback_ops v1 layout: on_train_epoch_start moved");
_Static_assert(offsetof(em_callback_ops, on_train_epoch_end) == 7 * PTR, "em_callback_ops v1 layout: on_train_epoch_end moved");
_Static_assert(offsetof(em_callback_ops, on_train_batch_start) == 8 * PTR, "em_callback_ops v1 layout: on_train_batch_start moved");
_Static_assert(offsetof(em_callback_ops, on_train_batch_end) == 9 * PTR, "em_callback_ops v1 layout: on_train_batch_end moved");
_Static_assert(offsetof(em_callback_ops, on_before_backward) == 10 * PTR, "em_callback_ops v1 layout: on_before_backward moved");
_Static_assert(offsetof(em_callback_ops, on_after_backward) == 11 * PTR, "em_callback_ops v1 layout: on_after_backward moved");
_Static_assert(offsetof(em_callback_ops, on_before_optimizer_step) == 12 * PTR, "em_callback_ops v1 layout: on_before_optimizer_step moved");
_Static_assert(offsetof(em_callback_ops, on_before_zero_grad) == 13 * PTR, "em_callback_ops v1 layout: on_before_zero_grad moved");
_Static_assert(offsetof(em_callback_ops, on_validation_start) == 14 * PTR, "em_callback_ops v1 layout: on_validation_start moved");
_Static_assert(offsetof(em_callback_ops, on_validation_end) == 15 * PTR, "em_callback_ops v1 layout: on_validation_end moved");
_Static_assert(offsetof(em_callback_ops, on_validation_epoch_start) == 16 * PTR, "em_callback_ops v1 layout: on_validation_epoch_start moved");
_Static_assert(offsetof(em_callback_ops, on_validation_epoch_end) == 17 * PTR, "em_callback_ops v1 layout: on_validation_epoch_end moved");
_Static_assert(offsetof(em_callback_ops, destroy) == 18 * PTR, "em_callback_ops v1 layout: destroy moved");
_Static_assert(offsetof(em_callback_ops, monitoring) == 19 * PTR, "em_callback_ops v2 layout: monitoring moved");
_Static_assert(EM_CALLBACK_OPS_VERSION >= 2, "em_callback_ops: version 2 added `monitoring`");
_Static_assert(offsetof(em_early_stopping_opts, version) == 0, "em_early_stopping_opts.version must stay first");
_Static_assert(offsetof(em_model_checkpoint_opts, version) == 0, "em_model_checkpoint_opts.version must stay first");
_Static_assert(offsetof(em_model_checkpoint_opts, dirpath) < offsetof(em_model_checkpoint_opts, filename) &&
                   offsetof(em_model_checkpoint_opts, filename) < offsetof(em_model_checkpoint_opts, monitor) &&
                   offsetof(em_model_checkpoint_opts, monitor) < offsetof(em_model_checkpoint_opts, save_top_k) &&
                   offsetof(em_model_checkpoint_opts, save_top_k) < offsetof(em_model_checkpoint_opts, every_n_train_steps) &&
                   offsetof(em_model_checkpoint_opts, every_n_train_steps) < offsetof(em_model_checkpoint_opts, train_time_interval) &&
                   offsetof(em_model_checkpoint_opts, train_time_interval) < offsetof(em_model_checkpoint_opts, last_name) &&
                   offsetof(em_model_checkpoint_opts, last_name) < offsetof(em_model_checkpoint_opts, file_extension),
               "em_model_checkpoint_opts v1 layout: fields are only appended");

_Static_assert(offsetof(em_loader_ops, num_batches) == 1 * PTR, "em_loader_ops v1 layout: num_batches moved");
_Static_assert(offsetof(em_loader_ops, get_batch) == 2 * PTR, "em_loader_ops v1 layout: get_batch moved");
_Static_assert(offsetof(em_loader_ops, set_epoch) == 3 * PTR, "em_loader_ops v1 layout: set_epoch moved");
_Static_assert(offsetof(em_loader_ops, destroy) == 4 * PTR, "em_loader_ops v1 layout: destroy moved");
_Static_assert(offsetof(em_loader_ops, set_distributed) == 5 * PTR, "em_loader_ops v2 layout: set_distributed moved");

/* ---- em_onecycle_opts: version 1 ends at three_phase, version 2 appends the per-group lists ---- */

_Static_assert(EM_ONECYCLE_OPTS_VERSION >= 2, "em_onecycle_opts: version numbers only grow");
_Static_assert(offsetof(em_onecycle_opts, max_lr) < offsetof(em_onecycle_opts, total_steps) &&
                   offsetof(em_onecycle_opts, total_steps) < offsetof(em_onecycle_opts, epochs) &&
                   offsetof(em_onecycle_opts, epochs) < offsetof(em_onecycle_opts, steps_per_epoch) &&
                   offsetof(em_onecycle_opts, steps_per_epoch) < offsetof(em_onecycle_opts, pct_start) &&
                   offsetof(em_onecycle_opts, pct_start) < offsetof(em_onecycle_opts, anneal_strategy) &&
                   offsetof(em_onecycle_opts, anneal_strategy) < offsetof(em_onecycle_opts, cycle_momentum) &&
                   offsetof(em_onecycle_opts, cycle_momentum) < offsetof(em_onecycle_opts, base_momentum) &&
                   offsetof(em_onecycle_opts, base_momentum) < offsetof(em_onecycle_opts, max_momentum) &&
                   offsetof(em_onecycle_opts, max_momentum) < offsetof(em_onecycle_opts, div_factor) &&
                   offsetof(em_onecycle_opts, div_factor) < offsetof(em_onecycle_opts, final_div_factor) &&
                   offsetof(em_onecycle_opts, final_div_factor) < offsetof(em_onecycle_opts, three_phase),
               "em_onecycle_opts v1 layout: a field moved");
_Static_assert(offsetof(em_onecycle_opts, max_lrs) > offsetof(em_onecycle_opts, three_phase) &&
                   offsetof(em_onecycle_opts, n_max_lrs) > offsetof(em_onecycle_opts, max_lrs) &&
                   offsetof(em_onecycle_opts, base_momentums) > offsetof(em_onecycle_opts, n_max_lrs) &&
                   offsetof(em_onecycle_opts, n_base_momentums) > offsetof(em_onecycle_opts, base_momentums) &&
                   offsetof(em_onecycle_opts, max_momentums) > offsetof(em_onecycle_opts, n_base_momentums) &&
                   offsetof(em_onecycle_opts, n_max_momentums) > offsetof(em_onecycle_opts, max_momentums),
               "em_onecycle_opts v2: the lists are appended after three_phase, in this order");

/* ---- em_cyclic_opts: version 1 ------------------------------------------------------------------- */

_Static_assert(EM_CYCLIC_OPTS_VERSION >= 1, "em_cyclic_opts: version numbers only grow");
_Static_assert(offsetof(em_cyclic_opts, base_lr) < offsetof(em_cyclic_opts, max_lr) &&
                   offsetof(em_cyclic_opts, max_lr) < offsetof(em_cyclic_opts, step_size_up) &&
                   offsetof(em_cyclic_opts, step_size_up) < offsetof(em_cyclic_opts, step_size_down) &&
                   offsetof(em_cyclic_opts, step_size_down) < offsetof(em_cyclic_opts, mode) &&
                   offsetof(em_cyclic_opts, mode) < offsetof(em_cyclic_opts, gamma) &&
                   offsetof(em_cyclic_opts, gamma) < offsetof(em_cyclic_opts, scale_fn) &&
                   offsetof(em_cyclic_opts, scale_fn) < offsetof(em_cyclic_opts, scale_ctx) &&
                   offsetof(em_cyclic_opts, scale_ctx) < offsetof(em_cyclic_opts, scale_mode) &&
                   offsetof(em_cyclic_opts, scale_mode) < offsetof(em_cyclic_opts, cycle_momentum) &&
                   offsetof(em_cyclic_opts, cycle_momentum) < offsetof(em_cyclic_opts, base_momentum) &&
                   offsetof(em_cyclic_opts, base_momentum) < offsetof(em_cyclic_opts, max_momentum) &&
                   offsetof(em_cyclic_opts, max_momentum) < offsetof(em_cyclic_opts, base_lrs) &&
                   offsetof(em_cyclic_opts, base_lrs) < offsetof(em_cyclic_opts, n_base_lrs) &&
                   offsetof(em_cyclic_opts, n_base_lrs) < offsetof(em_cyclic_opts, max_lrs) &&
                   offsetof(em_cyclic_opts, max_lrs) < offsetof(em_cyclic_opts, n_max_lrs) &&
                   offsetof(em_cyclic_opts, n_max_lrs) < offsetof(em_cyclic_opts, base_momentums) &&
                   offsetof(em_cyclic_opts, base_momentums) < offsetof(em_cyclic_opts, n_base_momentums) &&
                   offsetof(em_cyclic_opts, n_base_momentums) < offsetof(em_cyclic_opts, max_momentums) &&
                   offsetof(em_cyclic_opts, max_momentums) < offsetof(em_cyclic_opts, n_max_momentums),
               "em_cyclic_opts v1 layout: a field moved");

/* ---- the macros, expanded as a user writes them ------------------------------------------------- */

void header_test_macros(void);
void header_test_macros(void)
{
    em_norm_opts norm = EM_NORM_OPTS_INIT;
    em_adam_opts adam = EM_ADAM_OPTS_INIT;
    em_adam_opts adamw = EM_ADAMW_OPTS_INIT;
    em_rmsprop_opts rms = EM_RMSPROP_OPTS_INIT;
    em_adagrad_opts ada = EM_ADAGRAD_OPTS_INIT;
    em_lbfgs_opts lbfgs = EM_LBFGS_OPTS_INIT;
    em_onecycle_opts onecycle = EM_ONECYCLE_OPTS_INIT;
    em_plateau_opts plateau = EM_PLATEAU_OPTS_INIT;
    em_cyclic_opts cyclic = EM_CYCLIC_OPTS_INIT;
    em_grad_scaler_opts scaler = EM_GRAD_SCALER_OPTS_INIT;
    em_trainer_config cfg = EM_TRAINER_CONFIG_INIT;
    em_device cpu = EM_DEVICE_CPU, gpu = EM_DEVICE_CUDA(0);
    (void)norm, (void)adam, (void)adamw, (void)rms, (void)ada, (void)lbfgs, (void)cpu, (void)gpu;
    (void)onecycle, (void)plateau, (void)cfg, (void)cyclic, (void)scaler;

    /* Never called: only compiled (the library is not linked into this object). */
    em_tensor *t = em_zeros(EM_SHAPE(2, 3), &(em_tensor_opts){.dtype = EM_F64});
    em_nn *net = EM_NN_SEQUENTIAL(em_nn_linear(2, 4, true), em_nn_relu());
    em_optimizer *opt = em_sgd(NULL, &(em_sgd_opts){.lr = 0.1, .momentum = 0.9});
    (void)t, (void)net, (void)opt;
}
