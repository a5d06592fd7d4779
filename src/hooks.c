/* hooks.c: calling user code - module hooks and callbacks - and recording where a failure happened.
 *
 * Lightning: trainer/call.py (_call_lightning_module_hook, _call_callback_hooks: the hook name is
 * set for self.log's permissions while the hook runs), callbacks/callback.py (the Callback protocol).
 * Hooks with a default body (training_step, backward, optimizer_step, optimizer_zero_grad,
 * lr_scheduler_step, configure_gradient_clipping, on_validation_model_zero_grad) are called by the
 * file that owns the concept, through emi_hook_enter / emi_hook_leave; the others, which every
 * callback may implement too, through emi_hooks_call.
 */
#include <stdlib.h>
#include <string.h>

#include "hooks.h"

/* ---- failures: where and what ---------------------------------------------------------------------- */

em_status emi_trainer_fail(em_trainer *t, const char *what, em_status s)
{
    if (s == EM_OK)
        s = EM_ERROR;
    if (t->fail_status != EM_OK)
        return t->fail_status; /* the first failure wins, as everywhere in ember */
    t->fail_status = s;
    const char *msg = em_last_error();
    if (msg[0] == '\0')
        msg = em_status_name(s);
    /* a message that already names the call ("em_trainer_fit: ...", from fit's own checks) is not
     * prefixed with it twice */
    size_t wl = strlen(what);
    if (strncmp(msg, what, wl) == 0 && msg[wl] == ':' && msg[wl + 1] == ' ')
        msg += wl + 2;
    if (t->stage == EMI_STAGE_TRAIN && t->batch != NULL)
        snprintf(t->error, sizeof t->error, "epoch %lld, batch %lld, %s: %s", (long long)t->current_epoch,
                 (long long)t->batch_idx, what, msg);
    else if ((t->stage == EMI_STAGE_VAL || t->stage == EMI_STAGE_SANITY) && t->batch != NULL)
        snprintf(t->error, sizeof t->error, "epoch %lld, %s batch %lld, %s: %s", (long long)t->current_epoch,
                 t->stage == EMI_STAGE_SANITY ? "sanity check" : "validation", (long long)t->val_batch_idx,
                 what, msg);
    else if (t->stage != EMI_STAGE_NONE)
        snprintf(t->error, sizeof t->error, "epoch %lld, %s: %s", (long long)t->current_epoch, what, msg);
    else
        snprintf(t->error, sizeof t->error, "%s: %s", what, msg);
    return s;
}

em_status emi_trainer_check(em_trainer *t, const char *what, em_status s)
{
    if (t->fail_status != EM_OK)
        return t->fail_status;
    if (s == EM_OK && !emi_has_error())
        return EM_OK;
    if (s == EM_OK)
        s = em_last_status();
    return emi_trainer_fail(t, what, s);
}

/* ---- one hook ---------------------------------------------------------------------------------------- */

const char *emi_hook_enter(em_trainer *t, const char *hook)
{
    const char *prev = t->hook;
    t->hook = hook;
    em_clear_error();
    return prev;
}

em_status emi_hook_leave(em_trainer *t, const char *prev, const char *hook, em_status s)
{
    t->hook = prev;
    return emi_trainer_check(t, hook, s);
}

emi_user_scope emi_user_scope_begin(void)
{
    emi_user_scope s = {.depth = em_scope_depth()};
    em_scope_begin();
    s.prev_floor = emi_scope_floor_push();
    return s;
}

void emi_user_scope_end(emi_user_scope s)
{
    emi_scope_floor_pop(s.prev_floor);
    while (em_scope_depth() > s.depth && em_scope_end() == EM_OK)
        ;
}

/* ---- the callback protocol ------------------------------------------------------------------------------ */

struct em_callback {
    uint32_t magic; /* EMI_HANDLE_CALLBACK while it lives (backend.h: the API armor) */
    const em_callback_ops *ops;
    void *state;
    const em_trainer *owner; /* the trainer it was handed to (NULL: still the user's) */
};

em_callback *em_callback_new(const em_callback_ops *ops, void *state)
{
    if (ops == NULL || ops->version < 1 || ops->version > EM_CALLBACK_OPS_VERSION) {
        emi_fail(EM_EINVAL, "em_callback_new: ops is NULL or ops->version (%d) is not EM_CALLBACK_OPS_VERSION (%d)",
                 ops == NULL ? 0 : ops->version, EM_CALLBACK_OPS_VERSION);
        if (ops != NULL && ops->destroy != NULL && state != NULL)
            ops->destroy(state);
        return NULL;
    }
    em_callback *cb = calloc(1, sizeof *cb);
    if (cb == NULL) {
        emi_fail(EM_ENOMEM, "em_callback_new: out of memory");
        if (ops->destroy != NULL && state != NULL)
            ops->destroy(state);
        return NULL;
    }
    cb->magic = EMI_HANDLE_CALLBACK;
    cb->ops = ops;
    cb->state = state;
    return cb;
}

const em_callback_ops *em_callback_get_ops(const em_callback *cb)
{
    return cb == NULL ? NULL : cb->ops;
}

void *em_callback_state(const em_callback *cb)
{
    if (!emi_handle_ok(cb, EMI_HANDLE_CALLBACK, __func__, "callback"))
        return NULL;
    return cb->state;
}

void emi_callback_destroy(em_callback *cb)
{
    if (cb == NULL)
        return;
    if (cb->ops->destroy != NULL && cb->state != NULL)
        cb->ops->destroy(cb->state);
    emi_handle_retire(cb);
}

void em_callback_free(em_callback *cb)
{
    if (!emi_handle_free_ok(__func__, cb, EMI_HANDLE_CALLBACK, "callback"))
        return;
    if (cb->owner != NULL) {
        emi_fail(EM_EMISUSE, "em_callback_free: this callback was handed to a trainer (em_trainer_add_callback), "
                             "which frees it in em_trainer_free");
        return;
    }
    emi_callback_destroy(cb);
}

em_status emi_callback_adopt(em_callback *cb, const em_trainer *t)
{
    if (cb->owner == t)
        return emi_fail(EM_EMISUSE, "em_trainer_add_callback: this callback was already added to this trainer");
    if (cb->owner != NULL)
        return emi_fail(EM_EMISUSE, "em_trainer_add_callback: this callback belongs to another trainer; create one "
                                    "callback per trainer");
    cb->owner = t;
    return EM_OK;
}

bool emi_callback_reads_batch_output(const em_callback *cb)
{
    return cb->ops->on_train_batch_end != NULL;
}

/* ---- hooks that every callback and the module may implement ---------------------------------------------- */

/* Each such hook once: its id, its field in both ops tables, and the arguments after (cb, t, m) for a
 * callback or after (m) for the module. on_train_batch_start's module entry returns an int and is
 * called in module_hook itself. */
#define EMI_SHARED_HOOKS(X)                                                      \
    X(EMI_ON_FIT_START, on_fit_start)                                            \
    X(EMI_ON_FIT_END, on_fit_end)                                                \
    X(EMI_ON_TRAIN_START, on_train_start)                                        \
    X(EMI_ON_TRAIN_END, on_train_end)                                            \
    X(EMI_ON_TRAIN_EPOCH_START, on_train_epoch_start)                            \
    X(EMI_ON_TRAIN_EPOCH_END, on_train_epoch_end)                                \
    X(EMI_ON_VALIDATION_START, on_validation_start)                              \
    X(EMI_ON_VALIDATION_END, on_validation_end)                                  \
    X(EMI_ON_VALIDATION_EPOCH_START, on_validation_epoch_start)                  \
    X(EMI_ON_VALIDATION_EPOCH_END, on_validation_epoch_end)                      \
    X(EMI_ON_TRAIN_BATCH_END, on_train_batch_end, a->loss, a->batch, a->batch_idx) \
    X(EMI_ON_BEFORE_BACKWARD, on_before_backward, a->loss)                       \
    X(EMI_ON_AFTER_BACKWARD, on_after_backward)                                  \
    X(EMI_ON_BEFORE_OPTIMIZER_STEP, on_before_optimizer_step, a->opt)            \
    X(EMI_ON_BEFORE_ZERO_GRAD, on_before_zero_grad, a->opt)

static const char *hook_name(emi_hook hook)
{
#define NAME_CASE(id, field, ...) \
    case id: return #field;
    switch (hook) {
        EMI_SHARED_HOOKS(NAME_CASE)
    case EMI_ON_TRAIN_BATCH_START: return "on_train_batch_start";
    }
#undef NAME_CASE
    return "hook";
}

/* One case of the dispatch switches below: whether the ops table `o` has `field`, and when `call` is
 * set, the call into *s with RECEIVER (the arguments before the hook's own) and the hook's arguments. */
#define HOOK_CASE(id, field, ...)                                 \
    case id:                                                      \
        if (o->field == NULL)                                     \
            return false;                                         \
        if (call)                                                 \
            *s = o->field(RECEIVER, ##__VA_ARGS__);               \
        return true;

/* Whether the callback implements `hook`; when `call` is set, also calls it into *s. */
static bool callback_hook(em_callback *cb, em_trainer *t, emi_hook hook, const emi_hook_args *a, bool call,
                          em_status *s)
{
    const em_callback_ops *o = cb->ops;
    em_module *m = t->module;
#define RECEIVER cb, t, m
    switch (hook) {
        EMI_SHARED_HOOKS(HOOK_CASE)
        HOOK_CASE(EMI_ON_TRAIN_BATCH_START, on_train_batch_start, a->batch, a->batch_idx)
    }
#undef RECEIVER
    return false;
}

/* The same for the module's hook. */
static bool module_hook(em_trainer *t, emi_hook hook, const emi_hook_args *a, bool call, em_status *s)
{
    const em_module_ops *o = t->module->ops;
    em_module *m = t->module;
#define RECEIVER m
    switch (hook) {
        EMI_SHARED_HOOKS(HOOK_CASE)
    case EMI_ON_TRAIN_BATCH_START:
        if (o->on_train_batch_start == NULL)
            return false;
        /* the only hook whose value Lightning reads: -1 skips the rest of the epoch */
        if (call)
            *a->response = o->on_train_batch_start(m, a->batch, a->batch_idx);
        return true;
    }
#undef RECEIVER
    return false;
}
#undef HOOK_CASE

/* Hooks that run outside a training batch: they get a scope of their own (see hooks.h). */
static bool outside_batch(emi_hook hook)
{
    switch (hook) {
    case EMI_ON_TRAIN_BATCH_START:
    case EMI_ON_TRAIN_BATCH_END:
    case EMI_ON_BEFORE_BACKWARD:
    case EMI_ON_AFTER_BACKWARD:
    case EMI_ON_BEFORE_OPTIMIZER_STEP:
    case EMI_ON_BEFORE_ZERO_GRAD: return false;
    default: return true;
    }
}

static em_status hooks_call(em_trainer *t, emi_hook hook, const emi_hook_args *args);

em_status emi_hooks_call(em_trainer *t, emi_hook hook, const emi_hook_args *args)
{
    if (!outside_batch(hook))
        return hooks_call(t, hook, args);
    emi_user_scope scope = emi_user_scope_begin();
    em_status s = hooks_call(t, hook, args);
    emi_user_scope_end(scope);
    return s;
}

/* Lightning's "monitoring callbacks" (EarlyStopping, Checkpoint): their on_train_epoch_end runs after the
 * module's, so that they see what the module logged there (fit_loop.py on_advance_end). A callback of
 * a version-1 ops table has no such flag. */
static bool monitoring(const em_callback *cb)
{
    return cb->ops->version >= 2 && cb->ops->monitoring;
}

/* Each callback's `hook`, in order; `only` -1 = every callback, 0 = the non-monitoring ones, 1 = the
 * monitoring ones. */
static em_status callbacks_call(em_trainer *t, emi_hook hook, const emi_hook_args *a, const char *name, int only)
{
    em_status s = EM_OK;
    for (size_t i = 0; i < t->n_callbacks; i++) {
        if (only != -1 && monitoring(t->callbacks[i]) != (only == 1))
            continue;
        if (!callback_hook(t->callbacks[i], t, hook, a, false, &s))
            continue;
        const char *prev = emi_hook_enter(t, name);
        s = EM_OK;
        callback_hook(t->callbacks[i], t, hook, a, true, &s);
        if (emi_hook_leave(t, prev, name, s) != EM_OK)
            return t->fail_status;
    }
    return EM_OK;
}

static em_status hooks_call(em_trainer *t, emi_hook hook, const emi_hook_args *args)
{
    static const emi_hook_args none = {0};
    const emi_hook_args *a = args != NULL ? args : &none;
    const char *name = hook_name(hook);
    em_status s = EM_OK;
    if (a->response != NULL)
        *a->response = 0;
    bool split = hook == EMI_ON_TRAIN_EPOCH_END;
    if ((s = callbacks_call(t, hook, a, name, split ? 0 : -1)) != EM_OK)
        return s;
    if (module_hook(t, hook, a, false, &s)) {
        const char *prev = emi_hook_enter(t, name);
        s = EM_OK;
        module_hook(t, hook, a, true, &s);
        if ((s = emi_hook_leave(t, prev, name, s)) != EM_OK)
            return s;
    }
    return split ? callbacks_call(t, hook, a, name, 1) : EM_OK;
}
