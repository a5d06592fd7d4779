/* grad_scaler.c: the grad scaler (public API, include/ember/amp.h) - no loop.
 *
 * torch: torch/cuda/amp/grad_scaler.py (1.13) / torch/amp/grad_scaler.py (2.3+), GradScaler: the
 * per-optimizer stages READY -> UNSCALED -> STEPPED reset by update(), the lazily created float32
 * scale and int32 growth tracker, and the update kernel (aten/src/ATen/native/cuda/AmpKernels.cu,
 * amp_update_scale_cuda_kernel; the CPU one of 2.3 is the same arithmetic), written here in C. The
 * gradients' check-and-unscale is tensor work: shim/runtime.cpp (emi_amp_unscale).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "grad_scaler.h" /* emi_fail, emi_amp_unscale, the public em_* API */

/* torch's OptState */
typedef enum emi_opt_stage { EMI_STAGE_READY = 0, EMI_STAGE_UNSCALED, EMI_STAGE_STEPPED } emi_opt_stage;

/* torch's _per_optimizer_states[id(optimizer)] */
typedef struct emi_scaler_opt {
    const em_optimizer *opt; /* the raw optimizer (em_optimizer_inner) */
    emi_opt_stage stage;
    int found_inf;           /* -1: no inf check recorded (found_inf_per_device is empty), else 0 / 1 */
} emi_scaler_opt;

struct em_grad_scaler {
    uint32_t magic;              /* EMI_HANDLE_SCALER while it lives (backend.h: the API armor) */
    bool enabled;
    double init_scale;           /* torch: _init_scale (the scale before the first scale() call) */
    double growth_factor, backoff_factor;
    int32_t growth_interval;
    int32_t init_growth_tracker; /* torch: _init_growth_tracker */
    bool initialised;            /* torch: _scale is not None */
    float scale;                 /* torch: _scale, a float32 tensor of one element */
    int32_t growth_tracker;      /* torch: _growth_tracker, an int32 tensor of one element */
    emi_scaler_opt *opts;
    size_t n_opts, cap_opts;
};

/* The optimizer a fused step is running for (em_grad_scaler_step_info). */
static _Thread_local struct {
    const em_optimizer *opt;
    double grad_scale;
    bool found_inf;
} fused_step;

static const char *const lazy_hint = "This may indicate your script did not use scaler.scale(loss or outputs) "
                                     "earlier in the iteration.";

/* ---- construction and options ------------------------------------------------------------------------- */

static bool positive_f32(double v)
{
    return v > 0 && v <= FLT_MAX;
}

/* The checks of em_grad_scaler_new and em_grad_scaler_set_state, named `fn` in messages. */
static em_status check_factors(const char *fn, double growth, double backoff, int64_t interval)
{
    if (!(growth > 1.0))
        return emi_fail(EM_EINVAL, "%s: The growth factor must be > 1.0. (got %g)", fn, growth);
    if (!(backoff < 1.0))
        return emi_fail(EM_EINVAL, "%s: The backoff factor must be < 1.0. (got %g)", fn, backoff);
    if (!(backoff > 0.0))
        return emi_fail(EM_EINVAL, "%s: backoff_factor must be > 0 (got %g): the scale would become 0 or "
                                   "negative (torch accepts it)", fn, backoff);
    if (interval < 1 || interval > INT32_MAX)
        return emi_fail(EM_EINVAL, "%s: growth_interval must be in 1..%d (got %lld; torch accepts it and then never "
                                   "grows the scale)", fn, INT32_MAX, (long long)interval);
    return EM_OK;
}

em_grad_scaler *em_grad_scaler_new(const em_grad_scaler_opts *opts)
{
    em_grad_scaler_opts o = EM_GRAD_SCALER_OPTS_INIT;
    if (opts != NULL) {
        if (opts->version == 0) {
            emi_fail(EM_EINVAL, "em_grad_scaler_new: opts->version is 0: start from EM_GRAD_SCALER_OPTS_INIT");
            return NULL;
        }
        if (opts->version < 0 || opts->version > EM_GRAD_SCALER_OPTS_VERSION) {
            emi_fail(EM_EINVAL, "em_grad_scaler_new: opts->version is %d, this library knows versions 1..%d (start "
                                "from EM_GRAD_SCALER_OPTS_INIT)", opts->version, EM_GRAD_SCALER_OPTS_VERSION);
            return NULL;
        }
        o = *opts;
    }
    if (o.enabled) {
        if (check_factors("em_grad_scaler_new", o.growth_factor, o.backoff_factor, o.growth_interval) != EM_OK)
            return NULL;
        if (!positive_f32(o.init_scale)) {
            emi_fail(EM_EINVAL, "em_grad_scaler_new: init_scale must be a positive finite float32 (got %g)",
                     o.init_scale);
            return NULL;
        }
    }
    em_grad_scaler *s = calloc(1, sizeof *s);
    if (s == NULL) {
        emi_fail(EM_ENOMEM, "em_grad_scaler_new: out of memory");
        return NULL;
    }
    s->magic = EMI_HANDLE_SCALER;
    s->enabled = o.enabled;
    s->init_scale = o.init_scale;
    s->growth_factor = o.growth_factor;
    s->backoff_factor = o.backoff_factor;
    s->growth_interval = o.enabled ? (int32_t)o.growth_interval : 0;
    return s;
}

void em_grad_scaler_free(em_grad_scaler *s)
{
    if (!emi_handle_free_ok(__func__, s, EMI_HANDLE_SCALER, "grad scaler"))
        return;
    free(s->opts);
    emi_handle_retire(s);
}

/* The entry check of the public functions: false for a freed or foreign pointer (EM_EMISUSE recorded
 * under `func`); NULL passes, for each function's own NULL answer. */
static bool scaler_usable(const em_grad_scaler *s, const char *func)
{
    return s == NULL || emi_handle_ok(s, EMI_HANDLE_SCALER, func, "grad scaler");
}

double em_grad_scaler_get_scale(const em_grad_scaler *s)
{
    if (!scaler_usable(s, __func__))
        return NAN;
    if (s == NULL)
        return NAN;
    if (!s->enabled)
        return 1.0;
    return s->initialised ? (double)s->scale : s->init_scale;
}

int64_t em_grad_scaler_growth_tracker(const em_grad_scaler *s)
{
    if (!scaler_usable(s, __func__))
        return 0;
    if (s == NULL || !s->enabled)
        return 0;
    return s->initialised ? s->growth_tracker : s->init_growth_tracker;
}

bool em_grad_scaler_is_enabled(const em_grad_scaler *s)
{
    if (!scaler_usable(s, __func__))
        return false;
    return s != NULL && s->enabled;
}

em_status em_grad_scaler_get_opts(const em_grad_scaler *s, em_grad_scaler_opts *out)
{
    if (!scaler_usable(s, __func__))
        return EM_EMISUSE;
    if (s == NULL || out == NULL)
        return emi_fail(EM_EINVAL, "em_grad_scaler_get_opts: NULL argument");
    *out = (em_grad_scaler_opts){.version = EM_GRAD_SCALER_OPTS_VERSION, .init_scale = s->init_scale,
                                 .growth_factor = s->growth_factor, .backoff_factor = s->backoff_factor,
                                 .growth_interval = s->growth_interval, .enabled = s->enabled};
    return EM_OK;
}

em_status em_grad_scaler_get_state(const em_grad_scaler *s, em_grad_scaler_state *out)
{
    if (!scaler_usable(s, __func__))
        return EM_EMISUSE;
    if (s == NULL || out == NULL)
        return emi_fail(EM_EINVAL, "em_grad_scaler_get_state: NULL argument");
    if (!s->enabled)
        return emi_fail(EM_ESTATE, "em_grad_scaler_get_state: a disabled scaler has no state (torch's "
                                   "state_dict() is empty)");
    *out = (em_grad_scaler_state){.scale = em_grad_scaler_get_scale(s), .growth_factor = s->growth_factor,
                                  .backoff_factor = s->backoff_factor, .growth_interval = s->growth_interval,
                                  .growth_tracker = em_grad_scaler_growth_tracker(s)};
    return EM_OK;
}

em_status em_grad_scaler_set_state(em_grad_scaler *s, const em_grad_scaler_state *st)
{
    if (!scaler_usable(s, __func__))
        return EM_EMISUSE;
    if (s == NULL || st == NULL)
        return emi_fail(EM_EINVAL, "em_grad_scaler_set_state: NULL argument");
    if (!s->enabled)
        return EM_OK;
    em_status r = check_factors("em_grad_scaler_set_state", st->growth_factor, st->backoff_factor,
                                st->growth_interval);
    if (r != EM_OK)
        return r;
    if (!positive_f32(st->scale))
        return emi_fail(EM_EINVAL, "em_grad_scaler_set_state: scale must be a positive finite float32 (got %g)",
                        st->scale);
    if (st->growth_tracker < 0 || st->growth_tracker > INT32_MAX)
        return emi_fail(EM_EINVAL, "em_grad_scaler_set_state: growth_tracker must be in 0..%d (got %lld)", INT32_MAX,
                        (long long)st->growth_tracker);
    /* GradScaler.load_state_dict */
    s->init_scale = st->scale;
    s->scale = (float)st->scale;
    s->growth_factor = st->growth_factor;
    s->backoff_factor = st->backoff_factor;
    s->growth_interval = (int32_t)st->growth_interval;
    s->init_growth_tracker = (int32_t)st->growth_tracker;
    s->growth_tracker = (int32_t)st->growth_tracker;
    return EM_OK;
}

/* ---- per optimizer ------------------------------------------------------------------------------------- */

static emi_scaler_opt *opt_state(em_grad_scaler *s, const em_optimizer *raw)
{
    for (size_t i = 0; i < s->n_opts; i++)
        if (s->opts[i].opt == raw)
            return &s->opts[i];
    if (s->n_opts == s->cap_opts) {
        size_t cap = s->cap_opts ? 2 * s->cap_opts : 4;
        emi_scaler_opt *p = realloc(s->opts, cap * sizeof *p);
        if (p == NULL) {
            emi_fail(EM_ENOMEM, "em_grad_scaler: out of memory");
            return NULL;
        }
        s->opts = p;
        s->cap_opts = cap;
    }
    s->opts[s->n_opts] = (emi_scaler_opt){.opt = raw, .stage = EMI_STAGE_READY, .found_inf = -1};
    return &s->opts[s->n_opts++];
}

/* torch: _check_scale_growth_tracker(funcname) */
static em_status check_initialised(const em_grad_scaler *s, const char *fn, const char *torch_name)
{
    if (!s->initialised)
        return emi_fail(EM_ESTATE, "%s: Attempted %s but _scale is None.  %s", fn, torch_name, lazy_hint);
    return EM_OK;
}

/* ---- scale, unscale, step, update ------------------------------------------------------------------------ */

em_tensor *em_grad_scaler_scale(em_grad_scaler *s, const em_tensor *loss)
{
    if (!scaler_usable(s, __func__))
        return NULL;
    if (s == NULL || loss == NULL) {
        if (!emi_has_error() || s == NULL)
            emi_fail(EM_EINVAL, "em_grad_scaler_scale: NULL argument");
        return NULL;
    }
    if (!s->enabled)
        return em_tensor_ref(loss);
    if (!s->initialised) { /* _lazy_init_scale_growth_tracker */
        s->scale = (float)s->init_scale;
        s->growth_tracker = s->init_growth_tracker;
        s->initialised = true;
    }
    /* outputs * self._scale.to(device=outputs.device): the scale is a float32 tensor of shape (1,) */
    em_scope_begin();
    em_device dev = em_tensor_device(loss);
    em_tensor *f = em_tensor_from_f32(&s->scale, (const int64_t[]){1}, 1);
    if (f != NULL && dev.type != EM_CPU)
        f = em_to_device(f, dev);
    em_tensor *out = f != NULL ? em_mul(loss, f) : NULL;
    em_keep(out);
    em_scope_end();
    return out;
}

/* torch: unscale_ after its checks; `st` is READY. */
static em_status unscale(em_grad_scaler *s, em_optimizer *raw, emi_scaler_opt *st)
{
    /* inv_scale = self._scale.double().reciprocal().float() */
    float inv = (float)(1.0 / (double)s->scale);
    int found = -1;
    em_status r = emi_amp_unscale(raw, inv, false, &found);
    if (r != EM_OK)
        return r;
    st->found_inf = found;
    st->stage = EMI_STAGE_UNSCALED;
    return EM_OK;
}

em_status em_grad_scaler_unscale(em_grad_scaler *s, em_optimizer *opt)
{
    if (!scaler_usable(s, __func__))
        return EM_EMISUSE;
    if (s == NULL || opt == NULL)
        return emi_fail(EM_EINVAL, "em_grad_scaler_unscale: NULL argument");
    if (!s->enabled)
        return EM_OK;
    em_status r = check_initialised(s, "em_grad_scaler_unscale", "unscale_");
    if (r != EM_OK)
        return r;
    em_optimizer *raw = em_optimizer_inner(opt);
    emi_scaler_opt *st = opt_state(s, raw);
    if (st == NULL)
        return EM_ENOMEM;
    if (st->stage == EMI_STAGE_UNSCALED)
        return emi_fail(EM_ESTATE, "em_grad_scaler_unscale: unscale_() has already been called on this optimizer "
                                   "since the last update().");
    if (st->stage == EMI_STAGE_STEPPED)
        return emi_fail(EM_ESTATE, "em_grad_scaler_unscale: unscale_() is being called after step().");
    return unscale(s, raw, st);
}

/* torch's step for an optimizer with _step_supports_amp_scaling: no unscaling, no skipping; the
 * optimizer reads grad_scale (None once unscaled) and found_inf. */
static em_status fused_step_call(em_grad_scaler *s, em_optimizer *raw, emi_scaler_opt *st, bool *stepped)
{
    if (st->stage == EMI_STAGE_READY) { /* _check_inf_per_device: a dummy inv_scale of 1, fp16 allowed */
        int found = -1;
        em_status r = emi_amp_unscale(raw, 1.0f, true, &found);
        if (r != EM_OK)
            return r;
        st->found_inf = found;
    }
    fused_step.opt = raw;
    fused_step.grad_scale = st->stage == EMI_STAGE_UNSCALED ? 0.0 : (double)s->scale;
    fused_step.found_inf = st->found_inf > 0;
    em_status r = em_optimizer_step(raw, NULL);
    fused_step.opt = NULL;
    if (r != EM_OK)
        return r;
    st->stage = EMI_STAGE_STEPPED;
    if (stepped != NULL)
        *stepped = true;
    return EM_OK;
}

em_status em_grad_scaler_step(em_grad_scaler *s, em_optimizer *opt, const em_closure *closure, bool *stepped)
{
    if (!scaler_usable(s, __func__))
        return EM_EMISUSE;
    if (stepped != NULL)
        *stepped = false;
    if (s == NULL || opt == NULL)
        return emi_fail(EM_EINVAL, "em_grad_scaler_step: NULL argument");
    em_optimizer *raw = em_optimizer_inner(opt);
    if (!s->enabled) {
        em_status r = em_optimizer_step(raw, closure);
        if (r == EM_OK && stepped != NULL)
            *stepped = true;
        return r;
    }
    if (closure != NULL)
        return emi_fail(EM_EINVAL, "em_grad_scaler_step: Closure use is not currently supported if GradScaler is "
                                   "enabled.");
    em_status r = check_initialised(s, "em_grad_scaler_step", "step");
    if (r != EM_OK)
        return r;
    emi_scaler_opt *st = opt_state(s, raw);
    if (st == NULL)
        return EM_ENOMEM;
    if (st->stage == EMI_STAGE_STEPPED)
        return emi_fail(EM_ESTATE, "em_grad_scaler_step: step() has already been called since the last update().");
    bool fused = false, needs_closure = false;
    emi_optimizer_amp_traits(raw, &fused, &needs_closure);
    if (fused)
        return fused_step_call(s, raw, st, stepped);
    if (st->stage == EMI_STAGE_READY && (r = unscale(s, raw, st)) != EM_OK)
        return r;
    if (st->found_inf < 0)
        return emi_fail(EM_ESTATE, "em_grad_scaler_step: No inf checks were recorded for this optimizer.");
    if (st->found_inf == 0) { /* _maybe_opt_step */
        if ((r = em_optimizer_step(raw, NULL)) != EM_OK)
            return r;
        if (stepped != NULL)
            *stepped = true;
    }
    st->stage = EMI_STAGE_STEPPED;
    return EM_OK;
}

bool emi_grad_scaler_unscaled(const em_grad_scaler *s, em_optimizer *opt)
{
    if (s == NULL || !s->enabled || opt == NULL)
        return false;
    const em_optimizer *raw = em_optimizer_inner(opt);
    for (size_t i = 0; i < s->n_opts; i++)
        if (s->opts[i].opt == raw)
            return s->opts[i].stage == EMI_STAGE_UNSCALED;
    return false;
}

em_status em_grad_scaler_step_info(const em_optimizer *self, double *grad_scale, bool *found_inf)
{
    if (self == NULL || fused_step.opt == NULL || fused_step.opt != self)
        return emi_fail(EM_ESTATE, "em_grad_scaler_step_info: not inside a step that em_grad_scaler_step called on "
                                   "this optimizer");
    if (grad_scale != NULL)
        *grad_scale = fused_step.grad_scale;
    if (found_inf != NULL)
        *found_inf = fused_step.found_inf;
    return EM_OK;
}

/* torch's _amp_update_scale_ kernel: products in double, stored as float32; growth never to inf. */
static void update_scale(em_grad_scaler *s, bool found_inf)
{
    if (found_inf) {
        s->scale = (float)((double)s->scale * s->backoff_factor);
        s->growth_tracker = 0;
        return;
    }
    int32_t successful = s->growth_tracker + 1;
    if (successful == s->growth_interval) {
        float grown = (float)((double)s->scale * s->growth_factor);
        if (isfinite(grown))
            s->scale = grown;
        s->growth_tracker = 0;
    } else {
        s->growth_tracker = successful;
    }
}

em_status em_grad_scaler_update(em_grad_scaler *s)
{
    if (!scaler_usable(s, __func__))
        return EM_EMISUSE;
    if (s == NULL)
        return emi_fail(EM_EINVAL, "em_grad_scaler_update: NULL argument");
    if (!s->enabled)
        return EM_OK;
    em_status r = check_initialised(s, "em_grad_scaler_update", "update");
    if (r != EM_OK)
        return r;
    bool recorded = false, found = false;
    for (size_t i = 0; i < s->n_opts; i++)
        if (s->opts[i].found_inf >= 0) {
            recorded = true;
            found |= s->opts[i].found_inf > 0;
        }
    if (!recorded)
        return emi_fail(EM_ESTATE, "em_grad_scaler_update: No inf checks were recorded prior to update.");
    update_scale(s, found);
    s->n_opts = 0; /* _per_optimizer_states = defaultdict(_refresh_per_optimizer_state) */
    return EM_OK;
}

em_status em_grad_scaler_update_to(em_grad_scaler *s, double new_scale)
{
    if (!scaler_usable(s, __func__))
        return EM_EMISUSE;
    if (s == NULL)
        return emi_fail(EM_EINVAL, "em_grad_scaler_update_to: NULL argument");
    if (!s->enabled)
        return EM_OK;
    em_status r = check_initialised(s, "em_grad_scaler_update_to", "update");
    if (r != EM_OK)
        return r;
    if (!positive_f32(new_scale))
        return emi_fail(EM_EINVAL, "em_grad_scaler_update_to: the new scale must be a positive finite float32 (got %g)",
                        new_scale);
    s->scale = (float)new_scale;
    s->n_opts = 0;
    return EM_OK;
}
