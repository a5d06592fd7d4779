/*
 * ember/amp.h: the gradient scaler of mixed-precision training (torch.amp.GradScaler /
 * torch.cuda.amp.GradScaler).
 *
 * How to use this header
 * ----------------------
 * float16 gradients underflow to zero where float32 ones do not. A grad scaler multiplies the loss
 * by a large factor before backward, divides the gradients by it before the optimizer uses them,
 * skips the optimizer step when a gradient came out inf or NaN (the factor was too large) and then
 * halves the factor; after `growth_interval` steps in a row without inf/NaN it doubles it again.
 *
 *     em_grad_scaler *scaler = em_grad_scaler_new(NULL);          // torch's defaults
 *     for (...) {
 *         em_optimizer_zero_grad(opt);
 *         em_tensor *loss = ...;                                  // forward (under autocast)
 *         em_backward(em_grad_scaler_scale(scaler, loss));        // scaler.scale(loss).backward()
 *         em_grad_scaler_unscale(scaler, opt);                    // optional: before clipping
 *         em_clip_grad_norm(params, 1.0, 2.0, NULL);
 *         em_grad_scaler_step(scaler, opt, NULL);                 // skipped on inf/NaN gradients
 *         em_grad_scaler_update(scaler);                          // backoff or growth
 *     }
 *     em_grad_scaler_free(scaler);
 *
 * The trainer does all this itself under EM_PRECISION_16_MIXED (trainer.h): give it a scaler in
 * em_trainer_config.grad_scaler to choose the options or to read the state afterwards.
 *
 * ember's scaler follows torch's GradScaler call for call (the order checks and their messages, the
 * float32 scale, the int32 growth tracker, lazy initialisation at the first scale) and works on the
 * device the gradients are on, as torch.amp.GradScaler(device) from torch 2.3 does (torch 1.13's
 * torch.cuda.amp.GradScaler disables itself without CUDA). The gradients are checked and unscaled
 * by torch's fused kernel (_amp_foreach_non_finite_check_and_unscale_) where the linked libtorch has
 * it (CUDA; the CPU from 2.3) and otherwise by plain tensor ops that give the same results:
 * found_inf = any gradient not finite, grad *= float32(1 / scale).
 *
 * Optimizers are told apart by the optimizer they wrap (em_optimizer_inner): a LightningOptimizer
 * from em_optimizers and its raw optimizer are the same optimizer here, and the scaler always steps
 * the raw one.
 */
#ifndef EMBER_AMP_H
#define EMBER_AMP_H

#include "optim.h"

EM_BEGIN_DECLS

/** An opaque grad scaler. */
typedef struct em_grad_scaler em_grad_scaler;

/** GradScaler's constructor arguments: start from EM_GRAD_SCALER_OPTS_INIT (torch's defaults). */
typedef struct em_grad_scaler_opts {
    int version;             /* EM_GRAD_SCALER_OPTS_VERSION, set by the INIT */
    double init_scale;       /* 65536 (2^16); > 0 and finite as a float32 */
    double growth_factor;    /* 2; > 1 */
    double backoff_factor;   /* 0.5; < 1 (ember also wants > 0) */
    int64_t growth_interval; /* 2000; 1 .. INT32_MAX (torch accepts < 1 and then never grows) */
    bool enabled;            /* true; false: every call passes through (scale 1, step = optimizer step) */
} em_grad_scaler_opts;
#define EM_GRAD_SCALER_OPTS_VERSION 1
#define EM_GRAD_SCALER_OPTS_INIT                                                                     \
    {.version = EM_GRAD_SCALER_OPTS_VERSION, .init_scale = 65536.0, .growth_factor = 2.0,              \
     .backoff_factor = 0.5, .growth_interval = 2000, .enabled = true}

/**
 * A grad scaler. torch: GradScaler(init_scale, growth_factor, backoff_factor, growth_interval, enabled)
 * NULL opts = EM_GRAD_SCALER_OPTS_INIT. The caller frees it with em_grad_scaler_free().
 * Errors: NULL with EM_EINVAL for an options version of 0 (the INIT was forgotten), growth_factor
 * <= 1 ("The growth factor must be > 1.0."), backoff_factor >= 1 ("The backoff factor must be
 * < 1.0.") or <= 0, an init_scale that is not a positive finite float32, a growth_interval outside
 * 1 .. INT32_MAX (the factors are checked only when enabled, as torch does).
 */
EM_API em_grad_scaler *em_grad_scaler_new(const em_grad_scaler_opts *opts);
/**
 * Free a scaler. NULL is ignored. A trainer that was given it (em_trainer_config) must not fit again.
 * Misuse (best effort, common.h): freeing it twice, or passing it anywhere after (also as
 * cfg->grad_scaler), records EM_EMISUSE and does nothing.
 */
EM_API void em_grad_scaler_free(em_grad_scaler *s);

/**
 * `loss` multiplied by the current scale. torch: scaler.scale(outputs)
 * The product is a new tensor owned by the open scope (by the caller when none is open), computed
 * as loss * a float32 0-dim tensor holding the scale, on the loss's device; disabled, a new handle
 * to `loss` itself (torch returns outputs unchanged). The first call initialises the scale to
 * init_scale (torch's lazy initialisation).
 * Errors: NULL for NULL arguments or a libtorch error (recorded).
 */
EM_API em_tensor *em_grad_scaler_scale(em_grad_scaler *s, const em_tensor *loss);

/**
 * Divide `opt`'s gradients by the scale and record whether any is inf/NaN. torch: scaler.unscale_(opt)
 * At most once per optimizer between two updates; em_grad_scaler_step calls it when you did not.
 * Disabled: does nothing. Gradients that are float16 are refused, as torch refuses them.
 * Errors (EM_ESTATE, nothing changed): called before the first em_grad_scaler_scale ("Attempted
 * unscale_ but _scale is None. ..."), a second time since the last update ("unscale_() has already
 * been called on this optimizer since the last update()."), after step ("unscale_() is being called
 * after step()."); EM_EINVAL for NULL or float16 gradients ("Attempting to unscale FP16 gradients.").
 */
EM_API em_status em_grad_scaler_unscale(em_grad_scaler *s, em_optimizer *opt);

/**
 * Step `opt` unless one of its gradients is inf/NaN. torch: scaler.step(opt)
 * Unscales first when em_grad_scaler_unscale was not called since the last update. Steps the raw
 * optimizer (em_optimizer_inner(opt)), so stepping a trainer's wrapper here does not count in
 * global_step. `*stepped` (may be NULL) says whether the optimizer stepped. Disabled: the
 * optimizer steps (with `closure`). An optimizer whose ops set step_supports_amp_scaling (optim.h,
 * torch's fused optimizers) always steps and reads the scale and the inf flag with
 * em_grad_scaler_step_info.
 * Errors: EM_EINVAL for a closure when enabled ("Closure use is not currently supported if
 * GradScaler is enabled."); EM_ESTATE for a second step since the last update ("step() has already
 * been called since the last update()."), for an optimizer without any gradient ("No inf checks
 * were recorded for this optimizer.") and as em_grad_scaler_unscale; the optimizer's own failure.
 */
EM_API em_status em_grad_scaler_step(em_grad_scaler *s, em_optimizer *opt, const em_closure *closure,
                                     bool *stepped);

/**
 * Update the scale once per iteration, after every optimizer stepped. torch: scaler.update()
 * Any inf/NaN found since the last update: scale *= backoff_factor and the growth tracker restarts;
 * otherwise the tracker counts one more good iteration and at growth_interval the scale is
 * multiplied by growth_factor (not past the largest float32) and the tracker restarts. The scale is
 * a float32 (each product is computed in double and rounded, as torch's kernel). Forgets every
 * optimizer's unscale/step state. Disabled: does nothing.
 * Errors: EM_ESTATE before the first scale, or when no optimizer was unscaled or stepped since the
 * last update ("No inf checks were recorded prior to update.").
 */
EM_API em_status em_grad_scaler_update(em_grad_scaler *s);
/**
 * Set the scale directly instead of the rule above. torch: scaler.update(new_scale)
 * Forgets every optimizer's state as update does; the growth tracker is left as it is.
 * Errors: EM_EINVAL for a scale that is not a positive finite float32; EM_ESTATE as update.
 */
EM_API em_status em_grad_scaler_update_to(em_grad_scaler *s, double new_scale);

/**
 * Inside the step of an optimizer whose ops set step_supports_amp_scaling, called by
 * em_grad_scaler_step: the scale its gradients still carry (*grad_scale; 0 when they were unscaled
 * already: torch's optimizer.grad_scale = None) and whether one of them is inf/NaN (*found_inf;
 * the optimizer then skips its update). Either pointer may be NULL.
 * Errors: EM_ESTATE outside such a step of `self`.
 */
EM_API em_status em_grad_scaler_step_info(const em_optimizer *self, double *grad_scale, bool *found_inf);

/** The current scale. torch: get_scale() (init_scale before the first scale; 1.0 disabled; NAN for NULL). */
EM_API double em_grad_scaler_get_scale(const em_grad_scaler *s);
/** Good iterations counted towards the next growth (torch: _growth_tracker; 0 disabled). */
EM_API int64_t em_grad_scaler_growth_tracker(const em_grad_scaler *s);
/** torch: is_enabled(). false for NULL. */
EM_API bool em_grad_scaler_is_enabled(const em_grad_scaler *s);
/** The options in force (growth/backoff factors and interval as set; init_scale as given or loaded).
 *  Errors: EM_EINVAL for NULL. */
EM_API em_status em_grad_scaler_get_opts(const em_grad_scaler *s, em_grad_scaler_opts *out);

/** A scaler's state, as torch's GradScaler.state_dict() holds it (what a checkpoint saves). */
typedef struct em_grad_scaler_state {
    double scale;            /* "scale" */
    double growth_factor;    /* "growth_factor" */
    double backoff_factor;   /* "backoff_factor" */
    int64_t growth_interval; /* "growth_interval" */
    int64_t growth_tracker;  /* "_growth_tracker" */
} em_grad_scaler_state;

/**
 * Read the state. torch: scaler.state_dict()
 * Errors: EM_ESTATE for a disabled scaler (torch's state_dict is then empty); EM_EINVAL for NULL.
 */
EM_API em_status em_grad_scaler_get_state(const em_grad_scaler *s, em_grad_scaler_state *out);
/**
 * Replace the state. torch: scaler.load_state_dict(state)
 * The scale becomes the state's scale (also before the first em_grad_scaler_scale), the factors,
 * the interval and the growth tracker the state's. Disabled: does nothing (as torch).
 * Errors: EM_EINVAL for NULL, or values em_grad_scaler_new would reject (or a negative tracker);
 * nothing changes then.
 */
EM_API em_status em_grad_scaler_set_state(em_grad_scaler *s, const em_grad_scaler_state *state);

EM_END_DECLS

#endif /* EMBER_AMP_H */
