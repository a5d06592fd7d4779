/*
 * shim/backend.h: what src/ needs from the shim and the shim needs from src/, but users should not
 * call. C header: included by the C sources in src/ and the C++ ones in shim/. Symbols use the emi_ prefix and hidden
 * visibility.
 */
#ifndef EMBER_BACKEND_H
#define EMBER_BACKEND_H

#include <string.h> /* memcpy */

#include "ember/common.h"    /* em_status, EM_BEGIN_DECLS, EM_PRINTF */
#include "ember/tensor.h"    /* em_tensor, em_dtype, em_device */
#include "ember/optim.h"     /* em_optimizer, em_optimizer_ops */
#include "ember/scheduler.h" /* em_scheduler */

EM_BEGIN_DECLS

/* ---- errors (src/error.c) ------------------------------------------------------------------------ */

/**
 * Record an error (kept only if none is recorded yet) and return `code`. Every failure in ember goes
 * through here: break on emi_fail to see each error where it starts. Allocates nothing: the message
 * is formatted into a fixed thread-local buffer (truncated if longer).
 */
em_status emi_fail(em_status code, const char *fmt, ...) EM_PRINTF(2, 3);

/** Record a libtorch error caught in `func`: "func: <libtorch's one-line message>". */
void emi_fail_torch(const char *func, const char *what);

/** Whether an error is recorded on this thread (cheap). */
bool emi_has_error(void);

/** How many em_no_grad_begin() regions are open on this thread (shim/core.cpp). */
int emi_no_grad_depth(void);

/* ---- diagnostics (src/log.c) ---------------------------------------------------------------------- */

/** A warning through the log handler (em_set_log_handler); the default writes it to stderr. */
void emi_warn(const char *fmt, ...) EM_PRINTF(1, 2);
/** A notice (EM_LEVEL_INFO) through the log handler. */
void emi_info(const char *fmt, ...) EM_PRINTF(1, 2);


/* ---- handles (shim/core.cpp) --------------------------------------------------------------------- */

/*
 * The API armor of src/'s handles (trainer, loader, scheduler, callback, grad scaler, safetensors
 * reader), the same as the shim's
 * (shim/internal.hpp): a handle's struct starts with a uint32_t tag, its type's EMI_HANDLE_* magic while
 * it lives, EMI_HANDLE_FREED once freed; its memory comes from malloc/calloc.
 */
enum {
    EMI_HANDLE_TRAINER = 0x454d5231u,   /* "EMR1" */
    EMI_HANDLE_LOADER = 0x454d4c31u,    /* "EML1" */
    EMI_HANDLE_SCHEDULER = 0x454d5331u, /* "EMS1" */
    EMI_HANDLE_CALLBACK = 0x454d4331u,  /* "EMC1" */
    EMI_HANDLE_SCALER = 0x454d4131u,    /* "EMA1" */
    EMI_HANDLE_SAFETENSORS = 0x454d4631u, /* "EMF1" */
    EMI_HANDLE_FREED = 0xdeadf7eeu
};
/** Whether `h` is a live handle with tag `magic` (NULL: false). One load and one compare. */
static inline bool emi_handle_live(const void *h, uint32_t magic)
{
    uint32_t tag;
    if (h == NULL)
        return false;
    memcpy(&tag, h, sizeof tag);
    return tag == magic;
}
/**
 * The entry check of a public function taking handle `h` (argument 1 of `func`): true when live; false
 * for NULL (nothing recorded: the function's documented NULL answer) and for a freed or foreign pointer
 * (EM_EMISUSE recorded by emi_handle_bad).
 */
static inline bool emi_handle_ok(const void *h, uint32_t magic, const char *func, const char *noun);
/**
 * The failed entry check of `h` (argument `arg` of `func`, a `noun`): NULL records "func: argument N is
 * NULL" (EM_EINVAL); a freed handle or a pointer of another kind EM_EMISUSE with a message.
 */
em_status emi_handle_bad(const char *func, int arg, const void *h, const char *noun);
/**
 * The check at the top of a free function: true to go on freeing `h` (live, tag `magic`); false for
 * NULL (nothing recorded) and for a freed or foreign handle (EM_EMISUSE recorded under `func`).
 */
bool emi_handle_free_ok(const char *func, const void *h, uint32_t magic, const char *noun);
/**
 * Free a malloc'd handle whose contents are already released: its tag is poisoned and its memory kept
 * from malloc for this thread's next 4096 handle frees, so a second free or a use finds the poison.
 */
void emi_handle_retire(void *h);

static inline bool emi_handle_ok(const void *h, uint32_t magic, const char *func, const char *noun)
{
    if (emi_handle_live(h, magic))
        return true;
    if (h != NULL)
        emi_handle_bad(func, 1, h, noun);
    return false;
}

/** Take `t` out of whatever scope owns it: the caller owns it from now on. Returns t. */
em_tensor *emi_own(em_tensor *t);
/** The identity of the tensor behind a handle (its TensorImpl): equal for two handles of one tensor. */
const void *emi_tensor_id(const em_tensor *t);
/**
 * Set the scope floor to the current scope depth and return the previous floor. While it is set,
 * em_scope_end refuses (EM_EMISUSE, recorded) to close a scope at or below the floor: the trainer
 * calls it just after opening its scope around a batch, so a user's unbalanced em_scope_end is
 * reported instead of releasing the trainer's tensors. Never fails.
 */
int emi_scope_floor_push(void);
/** Restore the floor emi_scope_floor_push() returned, before closing the scope it protected. */
void emi_scope_floor_pop(int previous);

/* ---- runtime (shim/runtime.cpp): autocast and RNG state --------------------------------------------- */

/**
 * Enter autocast to `dtype` (EM_BF16 or EM_F16; the loop maps bf16-mixed and 16-mixed to them) on
 * `device`. Nests. Errors: EM_EINVAL for another dtype (recorded; nothing to end).
 */
em_status emi_autocast_begin(em_dtype dtype, em_device device);
/** Leave the innermost emi_autocast_begin(). */
void emi_autocast_end(void);
/** Whether the linked libtorch autocasts to `dtype` on `device` (float16 on the CPU: torch 2.5+). */
bool emi_autocast_supported(em_dtype dtype, em_device device);

/* ---- AMP (shim/runtime.cpp): the grad scaler's tensor work ---------------------------------------------- */

/**
 * torch's GradScaler._unscale_grads_ on every gradient of `opt` (through wrappers): per device, a
 * float32 found_inf and inv_scale, the fused _amp_foreach_non_finite_check_and_unscale_ where the
 * libtorch has it (compat.h), plain ops otherwise. *found_inf: -1 when no parameter has a gradient
 * (torch records no inf check), else 0 or 1. Errors: EM_EINVAL for a float16 gradient when
 * !allow_fp16 (nothing unscaled); EM_ETORCH.
 */
em_status emi_amp_unscale(em_optimizer *opt, float inv_scale, bool allow_fp16, int *found_inf);
/** What the scaler needs to know of an optimizer (through wrappers): whether its step unscales
 *  itself (ops v2 step_supports_amp_scaling) and whether it needs a closure (LBFGS, ops v2
 *  requires_closure). Never fails. */
void emi_optimizer_amp_traits(em_optimizer *opt, bool *handles_unscaling, bool *requires_closure);

/** An opaque copy of the global generator's state (CPU, and CUDA when present). */
typedef struct emi_rng_state emi_rng_state;
/** Save the global RNG state. NULL on failure (recorded). */
emi_rng_state *emi_rng_save(void);
/** Restore a saved state and free it. NULL is ignored. */
void emi_rng_restore(emi_rng_state *s);

/**
 * The state of the global CPU generator (`device` -1; torch.get_rng_state()) or of CUDA device
 * `device`'s default generator (torch.cuda.get_rng_state(device)) as a new uint8 vector, owned by the
 * open scope. Errors: NULL, recorded (EM_ETORCH).
 */
em_tensor *emi_rng_get_state(int device);
/** Set that generator's state from such a vector. A state torch refuses changes nothing. Errors:
 *  EM_EINVAL for a tensor that is not a uint8 vector; EM_ETORCH with torch's message. */
em_status emi_rng_set_state(int device, const em_tensor *state);

/* ---- optimizer wrappers (shim/optim.cpp) ------------------------------------------------------------ */

/**
 * An optimizer that wraps `inner` (Lightning: LightningOptimizer). em_optimizer_step(wrapper, c)
 * calls ops->step(wrapper, c); every other em_optimizer_* call (groups, get/set, lr, zero_grad, name,
 * step_count, state) forwards to `inner`, and em_optimizer_inner(wrapper) returns `inner`.
 * `state` is the wrapper's own (emi_optimizer_wrapper_state); ops->destroy frees it with the wrapper.
 * em_optimizer_free(wrapper) does not free `inner`, which must outlive the wrapper; `ops` too.
 * Takes ownership of `state`, also when it fails. Errors: NULL for NULL inner (not recorded), NULL
 * ops or ops->step (recorded).
 */
em_optimizer *emi_optimizer_wrap(em_optimizer *inner, const em_optimizer_ops *ops, void *state);
/**
 * Mark an optimizer as owned by a trainer: while marked, em_optimizer_free records EM_EINVAL and
 * frees nothing (a user freeing what em_optimizers returned would otherwise free it twice).
 */
void emi_optimizer_set_owned(em_optimizer *opt, bool owned);
/** The same for schedulers (em_scheduler_free; src/scheduler.c). */
void emi_scheduler_set_owned(em_scheduler *s, bool owned);
/** The `state` given to emi_optimizer_wrap(); NULL for an optimizer that is not a wrapper. */
void *emi_optimizer_wrapper_state(const em_optimizer *wrapper);

/* ---- the process group (shim/dist.cpp): c10d TCPStore + ProcessGroupGloo or ProcessGroupNCCL, one
 * per process ---------------------------------------------------------------------------------------- */

/** The c10d backends ember can make a process group with (em_process_group_backend less "auto"). */
typedef enum emi_dist_backend { EMI_DIST_GLOO = 1, EMI_DIST_NCCL = 2 } emi_dist_backend;
/** Whether the linked libtorch was built with this backend (USE_C10D_GLOO / USE_C10D_NCCL). */
bool emi_dist_backend_available(emi_dist_backend b);

/** Reductions of emi_dist_allreduce_f64. */
typedef enum emi_dist_op { EMI_DIST_SUM = 0, EMI_DIST_MAX, EMI_DIST_MIN } emi_dist_op;

/**
 * Open the rendezvous store (c10d TCPStore) at host:port, as its server (rank 0, unless torchrun's
 * agent hosts it) or a client; `port` 0 with `server` binds a free port, returned in *bound_port
 * (may be NULL). Errors: EM_ETORCH, "the rendezvous port P on H is already in use: ..." for a port
 * in use, else c10d's message; EM_ESTATE when a store is open already.
 */
em_status emi_dist_store_open(const char *host, int port, bool server, int world, double timeout_s, int *bound_port);
/**
 * Join the process group as `rank` of `world` through the store: ProcessGroupGloo, or ProcessGroupNCCL
 * for EMI_DIST_NCCL. `cuda_device` >= 0 (the fit runs on cuda:cuda_device) makes that the current
 * CUDA device first (Lightning's accelerator.setup_device before init_process_group); NCCL needs it.
 * Gloo waits for every rank up to timeout_s; NCCL connects at its first collective. timeout_s also
 * bounds every later collective (NCCL: through blocking wait, compat.h). With NCCL the collectives on
 * C data below stage through cuda_device. Errors: EM_EUNSUPPORTED for a backend libtorch lacks or NCCL
 * without a device; EM_ETORCH (recorded).
 */
em_status emi_dist_group_open(const char *host, int rank, int world, double timeout_s, emi_dist_backend backend,
                              int cuda_device);
/** Whether this process has joined a process group. */
bool emi_dist_active(void);
/** Gradient all-reduces (buckets) this process launched so far. */
int64_t emi_dist_grad_collectives(void);
/** All-reduce n doubles in place. Errors: EM_ESTATE without a group; EM_ETORCH (a rank gone, timeout). */
em_status emi_dist_allreduce_f64(double *values, size_t n, emi_dist_op op);
/** Broadcast n bytes from `root` in place. Errors as emi_dist_allreduce_f64. */
em_status emi_dist_broadcast_bytes(void *buf, size_t n, int root);
/** Wait until every rank gets here. Errors as emi_dist_allreduce_f64. */
em_status emi_dist_barrier(void);
/** Rank `root`'s values of the tensors, copied into them in place on every rank (under no_grad). */
em_status emi_dist_broadcast_tensors(em_tensor *const *ts, size_t n, int root);

/**
 * The gradient reducer of `n` parameters (torch's Reducer): buckets in reverse order, each closed
 * once it holds `first_bucket_bytes` (the first) or `bucket_bytes` (the rest) or more. emi_dist_reducer_prepare arms it before a backward that syncs: each bucket's
 * all-reduce (mean) starts from autograd hooks as its gradients become ready; emi_dist_reducer_finish
 * after the backward launches the rest, waits and writes the averaged gradients back. A backward
 * without prepare syncs nothing (no_sync). Keeps its own references to the parameters.
 * Free with emi_dist_reducer_free. Errors: NULL (recorded) without a group.
 */
typedef struct emi_dist_reducer emi_dist_reducer;
emi_dist_reducer *emi_dist_reducer_new(em_tensor *const *params, size_t n, size_t first_bucket_bytes,
                                       size_t bucket_bytes);
size_t emi_dist_reducer_num_buckets(const emi_dist_reducer *r);
em_status emi_dist_reducer_prepare(emi_dist_reducer *r);
em_status emi_dist_reducer_finish(emi_dist_reducer *r);
void emi_dist_reducer_free(emi_dist_reducer *r);

/* ---- optimizer state, for checkpoints (shim/optim.cpp) ------------------------------------------------
 * The state torch.optim keeps per parameter, under torch's state_dict keys: "momentum_buffer" (SGD,
 * RMSprop), "step" (a 0-dim int64 tensor here; Python keeps a float one), "exp_avg", "exp_avg_sq",
 * "max_exp_avg_sq" (Adam, AdamW), "square_avg", "grad_avg" (RMSprop), "sum" (Adagrad). Parameters are
 * numbered over all groups in group order (torch's state_dict numbering). LBFGS keeps its state under
 * parameter 0, as torch's: "func_evals", "n_iter" (int64), "d", "prev_flat_grad", "prev_loss" (float64),
 * "t" / "H_diag" (a 0-dim tensor, or "t.number" / "H_diag.number" a float64 one when lbfgs.py holds a
 * Python number), "old_dirs.<j>", "old_stps.<j>", "ro.<j>". An optimizer written in C: its ops'
 * state_save bytes as "c_state" (uint8) of parameter 0; without state_save, EM_EUNSUPPORTED.
 * A wrapper stands for its inner one. */

/** Called once per state tensor; `value` is a new handle owned by the open scope. Non-OK stops. */
typedef em_status (*emi_opt_state_fn)(void *ctx, size_t param, const char *key, em_tensor *value);

/** Whether the state of `opt` can be saved: EM_OK, or EM_EUNSUPPORTED recorded (`who` first) for an
 *  optimizer written in C without state_save. */
em_status emi_optimizer_state_savable(const em_optimizer *opt, const char *who);

/** Report every state tensor of `opt` (parameters without state are skipped). Errors: EM_EUNSUPPORTED. */
em_status emi_optimizer_state_export(const em_optimizer *opt, emi_opt_state_fn fn, void *ctx);

/**
 * Check that keys[0..n-1] / values are a complete state for parameter `param` (every key the
 * optimizer and the parameter's group need, no other; tensors of the parameter's shape, "step" a
 * non-negative one-element value). With `apply`, also replace that parameter's state with copies
 * converted to the parameter's dtype and device. `who` prefixes errors (EM_EINVAL, EM_EUNSUPPORTED).
 */
em_status emi_optimizer_state_import(em_optimizer *opt, size_t param, const char *const *keys,
                                     em_tensor *const *values, size_t n, bool apply, const char *who);

/** What kind of optimizer `opt` is (through wrappers): 0 a built-in libtorch one (SGD, Adam, AdamW,
 *  RMSprop, Adagrad), 1 LBFGS, 2 one written in C (em_optimizer_new); -1 for a bad handle. */
int emi_optimizer_kind_id(const em_optimizer *opt);
/** The names of group `group`'s hyper-parameters of an optimizer written in C, into out[0..cap-1]
 *  (borrowed until em_optimizer_set adds one); returns how many there are (0 for other kinds). */
size_t emi_optimizer_c_hparams(const em_optimizer *opt, size_t group, const char **out, size_t cap);

/** Forget every parameter's state, as a new optimizer has it (Adagrad: its initial accumulator). */
em_status emi_optimizer_state_clear(em_optimizer *opt);

/** Set the count em_optimizer_step_count reports (restored from a checkpoint). */
void emi_optimizer_set_step_count(em_optimizer *opt, int64_t n);

/* ---- scheduler state, for checkpoints (src/scheduler.c) ---------------------------------------------- */

/**
 * Write the state of `s` (torch's state_dict without the optimizer and callables, flattened into
 * doubles: counters, base_lrs, _last_lr, the initial_lr record, the kind's own counters, composites'
 * children) into out[0..cap-1] and return how many values it has (call with cap 0 to size it).
 * Errors: 0, recorded (EM_EUNSUPPORTED), for a scheduler written in C.
 */
size_t emi_scheduler_state_get(const em_scheduler *s, double *out, size_t cap);
/**
 * Check (`apply` false) or restore a state emi_scheduler_state_get wrote into `s`, built with the
 * same arguments. Errors: EM_EINVAL (recorded, `who` first) when it does not fit.
 */
em_status emi_scheduler_state_set(em_scheduler *s, const double *v, size_t n, bool apply, const char *who);

EM_END_DECLS

#endif /* EMBER_BACKEND_H */
