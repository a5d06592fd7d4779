// shim/optim.cpp: optimizers (torch.optim), optimizers written in C, wrappers, gradient clipping.
//
// SGD, Adam, AdamW, RMSprop and Adagrad are libtorch's C++ optimizers, which reproduce Python's
// torch.optim 1.13 bit for bit (docs/LIBTORCH_NOTES.md); LBFGS is ember's port (shim/lbfgs.hpp). What
// libtorch 1.13 lacks is written here after Python's code: zero_grad(set_to_none)
// (torch/optim/optimizer.py), the duplicate-parameter check of add_param_group, clip_grad_norm_ and
// clip_grad_value_ (torch/nn/utils/clip_grad.py), op for op.
//
// The only TU that includes libtorch's C++ optimizer headers (torch/torch.h costs 15 s per TU).
#include "optim_internal.hpp"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter" // torch/nn/module.h under -Wextra
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <utility>
#include <sstream>
#include <type_traits>
#include <unordered_set>

// ---- the handle -----------------------------------------------------------------------------------

em_optimizer::em_optimizer() = default;

em_optimizer::~em_optimizer()
{
    for (em_params *p : groups)
        em_params_free(p);
    if (ops != nullptr && ops->destroy != nullptr)
        ops->destroy(state);
}

em_optimizer *emi_optimizer_base(em_optimizer *opt)
{
    while (opt != nullptr && opt->kind == EMI_OPT_WRAPPER && opt->inner != nullptr)
        opt = opt->inner;
    return opt;
}

const em_optimizer *emi_optimizer_base(const em_optimizer *opt)
{
    return emi_optimizer_base(const_cast<em_optimizer *>(opt));
}

std::vector<at::Tensor> emi_optimizer_params(const em_optimizer *opt)
{
    std::vector<at::Tensor> out;
    const em_optimizer *base = emi_optimizer_base(opt);
    if (base == nullptr)
        return out;
    for (const em_params *g : base->groups)
        for (const em_tensor *h : g->items)
            out.push_back(h->t);
    return out;
}

namespace {

// Thrown by run_closure when the user's closure returns NULL; em_optimizer_step and em_closure_call
// turn it into a status. Not a std::exception, so nothing on the way mistakes it for a torch error.
struct closure_failed {};

// ---- closures --------------------------------------------------------------------------------------

// torch: `with torch.enable_grad(): loss = closure()` (optimizer.step runs under no_grad, the
// closure always with grad, even from a no_grad step). The closure's temporaries live in a scope of
// their own; the loss survives as an at::Tensor.
at::Tensor run_closure(const em_closure *c)
{
    at::AutoGradMode enable_grad(true);
    struct scope_guard {
        int depth;
        ~scope_guard()
        {
            // also closes scopes the closure left open, so the caller's stay balanced
            while (em_scope_depth() > depth && em_scope_end() == EM_OK) {
            }
        }
    } guard{em_scope_depth()};
    bool had_error = emi_has_error();
    em_scope_begin();
    em_tensor *loss = c->fn(c->ctx);
    if (loss != nullptr && !emi_live(loss)) {
        // e.g. a loss made inside a scope the closure had already closed
        emi_fail(EM_EMISUSE, "em_optimizer_step: the closure returned a freed tensor handle");
        throw closure_failed{};
    }
    if (loss == nullptr) {
        // NULL with nothing recorded is a closure that returns no loss (Python's None): Lightning's
        // automatic closure does that when training_step returns None, and the step still runs.
        if (had_error || emi_has_error())
            throw closure_failed{};
        return at::Tensor();
    }
    return loss->t;
}

// The status of a closure that returned NULL: the error it recorded, or EM_EUSER with a message.
em_status closure_failure(const char *func, bool had_error)
{
    if (!had_error && emi_has_error())
        return em_last_status();
    return emi_fail(EM_EUSER, "%s: the closure returned NULL", func);
}

// Runs body() behind the barrier; a closure that returned NULL (closure_failed) becomes its status.
template <typename Body> em_status closure_guard(const char *func, Body &&body)
{
    bool had_error = emi_has_error();
    return emi_guard(func, EM_ETORCH, [&] {
        try {
            return body();
        } catch (const closure_failed &) {
            return closure_failure(func, had_error);
        }
    });
}

// ---- argument checks -----------------------------------------------------------------------------

// torch.optim.Optimizer.__init__ / add_param_group: a non-empty list of leaf tensors.
bool take_params(const char *func, const em_params *params, std::vector<at::Tensor> *out)
{
    if (params == nullptr) {
        emi_fail(EM_EINVAL, "%s: params is NULL", func);
        return false;
    }
    if (!emi_live(params)) {
        emi_fail(EM_EMISUSE, "%s: params is not a live parameter list (already freed with em_params_free, or "
                             "not a parameter list)", func);
        return false;
    }
    if (params->items.empty()) {
        emi_fail(EM_EINVAL, "%s: optimizer got an empty parameter list", func);
        return false;
    }
    for (size_t i = 0; i < params->items.size(); i++) {
        if (!params->items[i]->t.defined() || !params->items[i]->t.is_leaf()) {
            emi_fail(EM_EINVAL, "%s: can't optimize a non-leaf Tensor (parameter %zu)", func, i);
            return false;
        }
    }
    *out = emi_params_tensors(params);
    return true;
}

bool whole_at_least_1(double v)
{
    return v >= 1 && v == std::floor(v) && v < 9.2e18;
}

// The checks torch's constructors make (same texts), applied to em_optimizer_set too.
bool check_hparam(const char *func, const std::string &n, double v)
{
    const char *what = nullptr;
    if (n == "lr" && !(v >= 0))
        what = "Invalid learning rate";
    else if (n == "momentum" && !(v >= 0))
        what = "Invalid momentum value";
    else if (n == "weight_decay" && !(v >= 0))
        what = "Invalid weight_decay value";
    else if (n == "eps" && !(v >= 0))
        what = "Invalid epsilon value";
    else if (n == "beta1" && !(v >= 0 && v < 1))
        what = "Invalid beta parameter at index 0";
    else if (n == "beta2" && !(v >= 0 && v < 1))
        what = "Invalid beta parameter at index 1";
    else if (n == "alpha" && !(v >= 0))
        what = "Invalid alpha value";
    else if (n == "lr_decay" && !(v >= 0))
        what = "Invalid lr_decay value";
    else if (n == "initial_accumulator_value" && !(v >= 0))
        what = "Invalid initial_accumulator_value value";
    if (what != nullptr) {
        emi_fail(EM_EINVAL, "%s: %s: %g", func, what, v);
        return false;
    }
    if ((n == "max_iter" || n == "max_eval" || n == "history_size") && !whole_at_least_1(v)) {
        emi_fail(EM_EINVAL, "%s: %s must be a whole number >= 1 (got %g)", func, n.c_str(), v);
        return false;
    }
    return true;
}

// check_hparam on each (name, value) in turn; false at the first that fails.
bool check_hparams(const char *func, std::initializer_list<std::pair<const char *, double>> hps)
{
    for (const auto &hp : hps)
        if (!check_hparam(func, hp.first, hp.second))
            return false;
    return true;
}

bool check_nesterov(const char *func, double momentum, double dampening, bool nesterov)
{
    if (nesterov && !(momentum > 0 && dampening == 0)) {
        emi_fail(EM_EINVAL, "%s: Nesterov momentum requires a momentum and zero dampening", func);
        return false;
    }
    return true;
}

// An options struct's version: 0 means the INIT was forgotten (libgit2's git_error__check_version).
bool check_version(const char *func, int version, int current, const char *init)
{
    if (version == 0) {
        emi_fail(EM_EINVAL, "%s: opts->version is 0: start from %s", func, init);
        return false;
    }
    if (version < 0 || version > current) {
        emi_fail(EM_EINVAL, "%s: opts->version is %d, this library knows versions 1..%d (start from %s)", func,
                 version, current, init);
        return false;
    }
    return true;
}

em_optimizer *finish_torch(emi_torch_optim which, const char *name, std::unique_ptr<torch::optim::Optimizer> t,
                           const std::vector<at::Tensor> &ts, bool maximize)
{
    auto o = std::make_unique<em_optimizer>();
    o->kind = EMI_OPT_TORCH;
    o->default_maximize = maximize;
    o->maximize.push_back(maximize ? 1 : 0);
    o->builtin = which;
    o->name = name;
    o->torch_opt = std::move(t);
    o->groups.push_back(emi_params_from(ts));
    return o.release();
}

// The first checks of a built-in constructor: the parameters (into *ts), then the options' version;
// NULL opts stands for `def`, the header's INIT (named `init` in messages). NULL when a check failed.
template <typename Opts>
const Opts *builtin_args(const char *func, const em_params *params, std::vector<at::Tensor> *ts, const Opts *opts,
                         const Opts &def, int current_version, const char *init)
{
    if (!take_params(func, params, ts))
        return nullptr;
    if (opts == nullptr)
        opts = &def;
    return check_version(func, opts->version, current_version, init) ? opts : nullptr;
}

// ---- hyper-parameters by name ------------------------------------------------------------------------

// Where hyper-parameter `n` of a group lives in a built-in optimizer's options; all NULL if it has none.
struct hp_slot {
    double *d = nullptr;
    bool *b = nullptr;
    int64_t *i = nullptr;
    bool found() const { return d != nullptr || b != nullptr || i != nullptr; }
    double get() const { return d != nullptr ? *d : b != nullptr ? (*b ? 1.0 : 0.0) : static_cast<double>(*i); }
    void set(double v) const
    {
        if (d != nullptr)
            *d = v;
        else if (b != nullptr)
            *b = v != 0;
        else
            *i = static_cast<int64_t>(v);
    }
};

#define EMI_HP(field_name, kind, ref) \
    if (n == field_name) {            \
        s.kind = &(ref);              \
        return s;                     \
    }

// Adam's and AdamW's options, which have the same fields.
template <typename Options> hp_slot adam_slot(Options &x, const std::string &n)
{
    hp_slot s;
    EMI_HP("lr", d, x.lr())
    EMI_HP("beta1", d, std::get<0>(x.betas()))
    EMI_HP("beta2", d, std::get<1>(x.betas()))
    EMI_HP("eps", d, x.eps())
    EMI_HP("weight_decay", d, x.weight_decay())
    EMI_HP("amsgrad", b, x.amsgrad())
    return s;
}

hp_slot find_slot(em_optimizer *o, size_t group, const std::string &n)
{
    hp_slot s;
    if (o->kind == EMI_OPT_LBFGS) {
        emi_lbfgs_options &x = o->lbfgs->options();
        EMI_HP("lr", d, x.lr)
        EMI_HP("max_iter", i, x.max_iter)
        EMI_HP("max_eval", i, x.max_eval)
        EMI_HP("tolerance_grad", d, x.tolerance_grad)
        EMI_HP("tolerance_change", d, x.tolerance_change)
        EMI_HP("history_size", i, x.history_size)
        return s;
    }
    torch::optim::OptimizerOptions &opts = o->torch_opt->param_groups()[group].options();
    switch (o->builtin) {
    case EMI_TORCH_SGD: {
        auto &x = static_cast<torch::optim::SGDOptions &>(opts);
        EMI_HP("lr", d, x.lr())
        EMI_HP("momentum", d, x.momentum())
        EMI_HP("dampening", d, x.dampening())
        EMI_HP("weight_decay", d, x.weight_decay())
        EMI_HP("nesterov", b, x.nesterov())
        break;
    }
    case EMI_TORCH_ADAM: return adam_slot(static_cast<torch::optim::AdamOptions &>(opts), n);
    case EMI_TORCH_ADAMW: return adam_slot(static_cast<torch::optim::AdamWOptions &>(opts), n);
    case EMI_TORCH_RMSPROP: {
        auto &x = static_cast<torch::optim::RMSpropOptions &>(opts);
        EMI_HP("lr", d, x.lr())
        EMI_HP("alpha", d, x.alpha())
        EMI_HP("eps", d, x.eps())
        EMI_HP("weight_decay", d, x.weight_decay())
        EMI_HP("momentum", d, x.momentum())
        EMI_HP("centered", b, x.centered())
        break;
    }
    case EMI_TORCH_ADAGRAD: {
        auto &x = static_cast<torch::optim::AdagradOptions &>(opts);
        EMI_HP("lr", d, x.lr())
        EMI_HP("lr_decay", d, x.lr_decay())
        EMI_HP("weight_decay", d, x.weight_decay())
        EMI_HP("initial_accumulator_value", d, x.initial_accumulator_value())
        EMI_HP("eps", d, x.eps())
        break;
    }
    }
    return s;
}

#undef EMI_HP

// A group index of `base` (the optimizer holding the groups); false (recorded) when out of range.
bool check_group(const char *func, const em_optimizer *base, size_t group)
{
    if (group < base->groups.size())
        return true;
    emi_fail(EM_EINVAL, "%s: group %zu out of range (%s has %zu parameter group%s)", func, group, base->name.c_str(),
             base->groups.size(), base->groups.size() == 1 ? "" : "s");
    return false;
}

// Common checks of em_optimizer_get/set; returns the optimizer holding the groups, NULL on error.
em_optimizer *hp_target(const char *func, const em_optimizer *opt, size_t group, const char *name)
{
    em_optimizer *base = emi_optimizer_base(const_cast<em_optimizer *>(opt));
    if (name == nullptr) {
        emi_fail(EM_EINVAL, "%s: name is NULL", func);
        return nullptr;
    }
    return check_group(func, base, group) ? base : nullptr;
}

em_status no_such_hparam(const char *func, const em_optimizer *base, const char *name)
{
    return emi_fail(EM_EINVAL, "%s: %s has no hyper-parameter \"%s\"", func, base->name.c_str(), name);
}

// A C optimizer's or a wrapper's step: ops->step; a failure without a message gets one.
em_status step_ops(em_optimizer *opt, const em_closure *closure)
{
    em_status s = opt->ops->step(opt, closure);
    if (s != EM_OK) {
        if (!emi_has_error())
            emi_fail(s, "em_optimizer_step: the step of %s failed (%s) without recording an error",
                     emi_optimizer_base(opt)->name.c_str(), em_status_name(s));
        return s;
    }
    if (opt->kind == EMI_OPT_C)
        opt->step_count++;
    return EM_OK;
}

// Negate the gradients of the groups with maximize set (exact, so negating twice restores them).
void negate_maximized_grads(em_optimizer *opt)
{
    at::NoGradGuard no_grad;
    for (size_t g = 0; g < opt->groups.size(); g++)
        if (opt->maximize[g])
            for (em_tensor *h : opt->groups[g]->items)
                if (h->t.grad().defined())
                    h->t.mutable_grad().neg_();
}

// libtorch's step. maximize: Python steps on -grad; negate those groups' gradients around libtorch's
// update (after the closure computed them) and back. Negation is exact, so the update is Python's.
void step_torch(em_optimizer *opt, const em_closure *closure)
{
    bool any_max = false;
    for (char m : opt->maximize)
        any_max |= m != 0;
    if (closure != nullptr) {
        opt->torch_opt->step([opt, closure, any_max]() {
            at::Tensor loss = run_closure(closure);
            if (any_max)
                negate_maximized_grads(opt);
            return loss;
        });
    } else {
        if (any_max)
            negate_maximized_grads(opt);
        opt->torch_opt->step();
    }
    if (any_max)
        negate_maximized_grads(opt);
}

// ember's LBFGS step, which needs a closure that returns the loss.
em_status step_lbfgs(em_optimizer *opt, const em_closure *closure)
{
    if (closure == nullptr)
        return emi_fail(EM_EINVAL, "em_optimizer_step: LBFGS requires a closure (torch.optim.LBFGS.step(closure) "
                                   "re-evaluates the model)");
    at::NoGradGuard no_grad; // lbfgs.py's step is decorated with @torch.no_grad()
    opt->lbfgs->step([closure]() {
        at::Tensor loss = run_closure(closure);
        if (!loss.defined()) {
            emi_fail(EM_EINVAL, "em_optimizer_step: LBFGS needs the closure to return the loss; it returned "
                                "NULL without an error");
            throw closure_failed{};
        }
        return loss;
    });
    return EM_OK;
}

// torch.optim.Optimizer.step for each kind; throws closure_failed when the closure returns NULL.
em_status step_impl(em_optimizer *opt, const em_closure *closure)
{
    switch (opt->kind) {
    case EMI_OPT_C:
    case EMI_OPT_WRAPPER:
        return step_ops(opt, closure);
    case EMI_OPT_TORCH:
        step_torch(opt, closure);
        break;
    case EMI_OPT_LBFGS: {
        em_status s = step_lbfgs(opt, closure);
        if (s != EM_OK)
            return s;
        break;
    }
    }
    opt->step_count++;
    return EM_OK;
}

// ---- built-in optimizers -----------------------------------------------------------------------------

// A libtorch optimizer made behind the barrier, from the options make_options() returns.
template <typename Optim, typename MakeOptions>
em_optimizer *new_torch_optimizer(const char *func, emi_torch_optim which, const char *name,
                                  const std::vector<at::Tensor> &ts, bool maximize, MakeOptions &&make_options)
{
    return emi_guard<em_optimizer *>(func, nullptr, [&] {
        return finish_torch(which, name, std::make_unique<Optim>(ts, make_options()), ts, maximize);
    });
}

// em_adam and em_adamw: one em_adam_opts, libtorch's Adam or AdamW (Optim, Options). NULL opts = `def`
// (the header's INIT, named `init` in messages).
template <typename Optim, typename Options>
em_optimizer *adam_like(const char *func, emi_torch_optim which, const char *name, const em_params *params,
                        const em_adam_opts *opts, const em_adam_opts &def, const char *init)
{
    std::vector<at::Tensor> ts;
    opts = builtin_args(func, params, &ts, opts, def, EM_ADAM_OPTS_VERSION, init);
    if (opts == nullptr || !check_hparams(func, {{"lr", opts->lr},
                                                 {"eps", opts->eps},
                                                 {"beta1", opts->beta1},
                                                 {"beta2", opts->beta2},
                                                 {"weight_decay", opts->weight_decay}}))
        return nullptr;
    return new_torch_optimizer<Optim>(func, which, name, ts, opts->maximize, [&] {
        Options o(opts->lr);
        // weight_decay always explicit: AdamWOptions' own default (1e-2) must not stand in for ours
        o.betas(std::make_tuple(opts->beta1, opts->beta2)).eps(opts->eps).weight_decay(opts->weight_decay);
        o.amsgrad(opts->amsgrad);
        return o;
    });
}

} // namespace

extern "C" em_optimizer *em_sgd(const em_params *params, const em_sgd_opts *opts)
{
    std::vector<at::Tensor> ts;
    if (!take_params(__func__, params, &ts))
        return nullptr;
    if (opts == nullptr) {
        emi_fail(EM_EINVAL, "em_sgd: opts is NULL: torch.optim.SGD needs a learning rate (em_sgd_opts.lr > 0)");
        return nullptr;
    }
    if (!check_hparams(__func__,
                       {{"lr", opts->lr}, {"momentum", opts->momentum}, {"weight_decay", opts->weight_decay}}) ||
        !check_nesterov(__func__, opts->momentum, opts->dampening, opts->nesterov))
        return nullptr;
    if (opts->lr == 0) {
        emi_fail(EM_EINVAL, "em_sgd: opts->lr is required (torch.optim.SGD has no default learning rate); got 0");
        return nullptr;
    }
    return new_torch_optimizer<torch::optim::SGD>(__func__, EMI_TORCH_SGD, "SGD", ts, opts->maximize, [&] {
        torch::optim::SGDOptions o(opts->lr);
        o.momentum(opts->momentum).dampening(opts->dampening).weight_decay(opts->weight_decay).nesterov(opts->nesterov);
        return o;
    });
}

// NULL opts = the header's defaults (one source of truth: the INIT macro users start from)

extern "C" em_optimizer *em_adam(const em_params *params, const em_adam_opts *opts)
{
    static const em_adam_opts def = EM_ADAM_OPTS_INIT;
    return adam_like<torch::optim::Adam, torch::optim::AdamOptions>(__func__, EMI_TORCH_ADAM, "Adam", params, opts, def,
                                                                    "EM_ADAM_OPTS_INIT");
}

extern "C" em_optimizer *em_adamw(const em_params *params, const em_adam_opts *opts)
{
    static const em_adam_opts def = EM_ADAMW_OPTS_INIT;
    return adam_like<torch::optim::AdamW, torch::optim::AdamWOptions>(__func__, EMI_TORCH_ADAMW, "AdamW", params, opts,
                                                                      def, "EM_ADAMW_OPTS_INIT");
}

extern "C" em_optimizer *em_rmsprop(const em_params *params, const em_rmsprop_opts *opts)
{
    static const em_rmsprop_opts def = EM_RMSPROP_OPTS_INIT;
    std::vector<at::Tensor> ts;
    opts = builtin_args(__func__, params, &ts, opts, def, EM_RMSPROP_OPTS_VERSION, "EM_RMSPROP_OPTS_INIT");
    if (opts == nullptr || !check_hparams(__func__, {{"lr", opts->lr},
                                                     {"eps", opts->eps},
                                                     {"momentum", opts->momentum},
                                                     {"weight_decay", opts->weight_decay},
                                                     {"alpha", opts->alpha}}))
        return nullptr;
    return new_torch_optimizer<torch::optim::RMSprop>(__func__, EMI_TORCH_RMSPROP, "RMSprop", ts, opts->maximize, [&] {
        torch::optim::RMSpropOptions o(opts->lr);
        o.alpha(opts->alpha).eps(opts->eps).weight_decay(opts->weight_decay).momentum(opts->momentum);
        o.centered(opts->centered);
        return o;
    });
}

extern "C" em_optimizer *em_adagrad(const em_params *params, const em_adagrad_opts *opts)
{
    static const em_adagrad_opts def = EM_ADAGRAD_OPTS_INIT;
    std::vector<at::Tensor> ts;
    opts = builtin_args(__func__, params, &ts, opts, def, EM_ADAGRAD_OPTS_VERSION, "EM_ADAGRAD_OPTS_INIT");
    if (opts == nullptr || !check_hparams(__func__, {{"lr", opts->lr},
                                                     {"lr_decay", opts->lr_decay},
                                                     {"weight_decay", opts->weight_decay},
                                                     {"initial_accumulator_value", opts->initial_accumulator_value},
                                                     {"eps", opts->eps}}))
        return nullptr;
    return new_torch_optimizer<torch::optim::Adagrad>(__func__, EMI_TORCH_ADAGRAD, "Adagrad", ts, opts->maximize, [&] {
        torch::optim::AdagradOptions o(opts->lr);
        o.lr_decay(opts->lr_decay).weight_decay(opts->weight_decay);
        o.initial_accumulator_value(opts->initial_accumulator_value).eps(opts->eps);
        return o;
    });
}

extern "C" em_optimizer *em_lbfgs(const em_params *params, const em_lbfgs_opts *opts)
{
    std::vector<at::Tensor> ts;
    if (!take_params(__func__, params, &ts))
        return nullptr;
    emi_lbfgs_options o; // torch's defaults, as EM_LBFGS_OPTS_INIT
    if (opts != nullptr) {
        if (!check_version(__func__, opts->version, EM_LBFGS_OPTS_VERSION, "EM_LBFGS_OPTS_INIT") ||
            !check_hparams(__func__, {{"lr", opts->lr},
                                      {"max_iter", static_cast<double>(opts->max_iter)},
                                      {"history_size", static_cast<double>(opts->history_size)}}))
            return nullptr;
        if (opts->max_eval < 0) {
            emi_fail(EM_EINVAL, "em_lbfgs: max_eval must be >= 0, 0 meaning max_iter * 5 / 4 (got %lld)",
                     static_cast<long long>(opts->max_eval));
            return nullptr;
        }
        o.lr = opts->lr;
        o.max_iter = opts->max_iter;
        o.max_eval = opts->max_eval;
        o.tolerance_grad = opts->tolerance_grad;
        o.tolerance_change = opts->tolerance_change;
        o.history_size = opts->history_size;
        o.strong_wolfe = opts->strong_wolfe;
    }
    // lbfgs.py resolves max_eval=None in __init__, so param_groups[0]['max_eval'] reads the number
    if (o.max_eval == 0)
        o.max_eval = o.max_iter * 5 / 4;
    EM_TRY
        auto opt = std::make_unique<em_optimizer>();
        opt->kind = EMI_OPT_LBFGS;
        opt->name = "LBFGS";
        opt->lbfgs = std::make_unique<emi_lbfgs>(ts, o);
        opt->groups.push_back(emi_params_from(ts));
        return opt.release();
    EM_CATCH(nullptr)
}

// ---- optimizers written in C, and wrappers -----------------------------------------------------------------

extern "C" em_optimizer *em_optimizer_new(const em_optimizer_ops *ops, const em_params *params, double lr,
                                          void *state)
{
    if (ops == nullptr) {
        emi_fail(EM_EINVAL, "em_optimizer_new: ops is NULL");
        return nullptr;
    }
    // from here on `state` is ours: every failure releases it
    auto fail_free = [&]() -> em_optimizer * {
        if (ops->destroy != nullptr)
            ops->destroy(state);
        return nullptr;
    };
    if (ops->version == 0) {
        emi_fail(EM_EINVAL, "em_optimizer_new: ops->version is 0: set it to EM_OPTIMIZER_OPS_VERSION");
        return fail_free();
    }
    if (ops->version < 0 || ops->version > EM_OPTIMIZER_OPS_VERSION) {
        emi_fail(EM_EINVAL, "em_optimizer_new: ops->version is %d, this library knows versions 1..%d", ops->version,
                 EM_OPTIMIZER_OPS_VERSION);
        return fail_free();
    }
    if (ops->step == nullptr) {
        emi_fail(EM_EINVAL, "em_optimizer_new: ops->step is NULL");
        return fail_free();
    }
    std::vector<at::Tensor> ts;
    if (!take_params(__func__, params, &ts) || !check_hparam(__func__, "lr", lr))
        return fail_free();
    std::unique_ptr<em_optimizer> opt;
    try {
        opt = std::make_unique<em_optimizer>();
    } catch (...) {
        emi_fail(EM_ENOMEM, "em_optimizer_new: out of memory");
        return fail_free();
    }
    // the optimizer owns `state` now: its destructor releases it if anything below throws
    opt->kind = EMI_OPT_C;
    opt->ops = ops;
    opt->state = state;
    EM_TRY
        opt->name = ops->name != nullptr ? ops->name : "Optimizer";
        opt->c_defaults["lr"] = lr;
        opt->hparams.push_back(opt->c_defaults);
        opt->groups.push_back(emi_params_from(ts));
        return opt.release();
    EM_CATCH(nullptr)
}

extern "C" em_optimizer *emi_optimizer_wrap(em_optimizer *inner, const em_optimizer_ops *ops, void *state)
{
    auto fail_free = [&]() -> em_optimizer * {
        if (ops != nullptr && ops->destroy != nullptr)
            ops->destroy(state);
        return nullptr;
    };
    if (emi_check(__func__, 1, inner) != EM_OK)
        return fail_free();
    if (ops == nullptr || ops->step == nullptr) {
        emi_fail(EM_EINVAL, "emi_optimizer_wrap: ops or ops->step is NULL");
        return fail_free();
    }
    em_optimizer *w = nullptr;
    try {
        w = new em_optimizer;
    } catch (...) {
        emi_fail(EM_ENOMEM, "emi_optimizer_wrap: out of memory");
        return fail_free();
    }
    w->kind = EMI_OPT_WRAPPER;
    w->ops = ops;
    w->state = state;
    w->inner = inner;
    return w;
}

extern "C" void *emi_optimizer_wrapper_state(const em_optimizer *wrapper)
{
    return emi_check(__func__, 1, wrapper) == EM_OK && wrapper->kind == EMI_OPT_WRAPPER ? wrapper->state : nullptr;
}

extern "C" void *em_optimizer_state(const em_optimizer *opt)
{
    if (emi_check(__func__, 1, opt) != EM_OK)
        return nullptr;
    const em_optimizer *base = emi_optimizer_base(opt);
    return base != nullptr && base->kind == EMI_OPT_C ? base->state : nullptr;
}

// ---- using optimizers ----------------------------------------------------------------------------------

extern "C" em_status em_optimizer_step(em_optimizer *opt, const em_closure *closure)
{
    if (em_status st = emi_check(__func__, 1, opt); st != EM_OK)
        return st;
    if (closure != nullptr && closure->fn == nullptr)
        return emi_fail(EM_EINVAL, "em_optimizer_step: closure->fn is NULL");
    return closure_guard(__func__, [&] { return step_impl(opt, closure); });
}

extern "C" em_status em_closure_call(const em_closure *closure, double *loss_out)
{
    if (closure == nullptr)
        return EM_EINVAL;
    if (closure->fn == nullptr)
        return emi_fail(EM_EINVAL, "em_closure_call: closure->fn is NULL");
    return closure_guard(__func__, [&] {
        at::Tensor loss = run_closure(closure);
        if (loss_out != nullptr)
            *loss_out = loss.defined() && loss.numel() == 1 ? loss.item<double>() : NAN;
        return EM_OK;
    });
}

extern "C" em_status em_optimizer_zero_grad_ex(em_optimizer *opt, bool set_to_none)
{
    if (em_status st = emi_check(__func__, 1, opt); st != EM_OK)
        return st;
    EM_TRY
        // torch/optim/optimizer.py Optimizer.zero_grad (1.13), foreach=False
        for (const em_params *g : emi_optimizer_base(opt)->groups)
            for (em_tensor *h : g->items)
                emi_zero_grad(h->t, set_to_none);
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" em_status em_optimizer_zero_grad(em_optimizer *opt)
{
    if (em_status st = emi_check(__func__, 1, opt); st != EM_OK)
        return st;
    return em_optimizer_zero_grad_ex(opt, emi::compat::zero_grad_sets_to_none);
}

extern "C" bool em_zero_grad_sets_to_none(void)
{
    return emi::compat::zero_grad_sets_to_none;
}

extern "C" em_status em_optimizer_add_param_group(em_optimizer *opt, const em_params *params)
{
    if (em_status st = emi_check(__func__, 1, opt); st != EM_OK)
        return st;
    em_optimizer *base = emi_optimizer_base(opt);
    std::vector<at::Tensor> ts;
    if (!take_params(__func__, params, &ts))
        return EM_EINVAL;
    if (base->kind == EMI_OPT_LBFGS)
        return emi_fail(EM_EINVAL, "%s: LBFGS doesn't support per-parameter options (parameter groups)", __func__);
    EM_TRY
        std::unordered_set<const void *> seen;
        for (const em_params *g : base->groups)
            for (const em_tensor *h : g->items)
                seen.insert(h->t.unsafeGetTensorImpl());
        for (const at::Tensor &p : ts)
            if (seen.count(p.unsafeGetTensorImpl()) != 0)
                return emi_fail(EM_EINVAL, "%s: some parameters appear in more than one parameter group", __func__);
        if (base->kind == EMI_OPT_TORCH) {
            base->torch_opt->add_param_group(torch::optim::OptimizerParamGroup(ts)); // options: defaults().clone()
            base->maximize.push_back(base->default_maximize ? 1 : 0);
            if (base->builtin == EMI_TORCH_ADAGRAD) {
                // libtorch's Adagrad (as Python's) fills its state in the constructor only; its step
                // would dereference a missing entry for a later group. Fill it as the constructor does.
                auto &defaults = static_cast<torch::optim::AdagradOptions &>(base->torch_opt->defaults());
                auto &state = base->torch_opt->state();
                for (const at::Tensor &p : ts) {
                    auto st = std::make_unique<torch::optim::AdagradParamState>();
                    st->step(0);
                    st->sum(at::full_like(p.data(), defaults.initial_accumulator_value(), at::MemoryFormat::Preserve));
                    state[emi::compat::optimizer_state_key(state, p)] = std::move(st);
                }
            }
        } else {
            base->hparams.push_back(base->c_defaults);
        }
        base->groups.push_back(emi_params_from(ts));
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" size_t em_optimizer_num_groups(const em_optimizer *opt)
{
    if (emi_check(__func__, 1, opt) != EM_OK)
        return 0;
    const em_optimizer *base = emi_optimizer_base(opt);
    return base == nullptr ? 0 : base->groups.size();
}

extern "C" const em_params *em_optimizer_group_params(const em_optimizer *opt, size_t group)
{
    if (emi_check(__func__, 1, opt) != EM_OK)
        return nullptr;
    const em_optimizer *base = emi_optimizer_base(opt);
    return check_group(__func__, base, group) ? base->groups[group] : nullptr;
}

extern "C" em_status em_optimizer_get(const em_optimizer *opt, size_t group, const char *name, double *out)
{
    if (em_status st = emi_check(__func__, 1, opt); st != EM_OK)
        return st;
    if (out == nullptr)
        return emi_fail(EM_EINVAL, "%s: out is NULL", __func__);
    EM_TRY
        em_optimizer *base = hp_target(__func__, opt, group, name);
        if (base == nullptr)
            return EM_EINVAL;
        if (base->kind == EMI_OPT_C) {
            const auto &hp = base->hparams[group];
            auto it = hp.find(name);
            if (it == hp.end())
                return no_such_hparam(__func__, base, name);
            *out = it->second;
            return EM_OK;
        }
        if (base->kind == EMI_OPT_TORCH && std::string(name) == "maximize") {
            *out = base->maximize[group] ? 1.0 : 0.0;
            return EM_OK;
        }
        hp_slot s = find_slot(base, group, name);
        if (!s.found())
            return no_such_hparam(__func__, base, name);
        *out = s.get();
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" em_status em_optimizer_set(em_optimizer *opt, size_t group, const char *name, double value)
{
    if (em_status st = emi_check(__func__, 1, opt); st != EM_OK)
        return st;
    EM_TRY
        em_optimizer *base = hp_target(__func__, opt, group, name);
        if (base == nullptr)
            return EM_EINVAL;
        if (base->kind == EMI_OPT_C) {
            base->hparams[group][name] = value;
            base->c_defaults.emplace(name, value); // a new name joins the defaults of later groups
            return EM_OK;
        }
        if (base->kind == EMI_OPT_TORCH && std::string(name) == "maximize") {
            base->maximize[group] = value != 0 ? 1 : 0;
            return EM_OK;
        }
        hp_slot s = find_slot(base, group, name);
        if (!s.found())
            return no_such_hparam(__func__, base, name);
        // torch checks the constructor's arguments, not assignments to a param group: a scheduler may
        // set any lr (OneCycleLR's linear anneal ends slightly below zero), so lr is not checked here.
        if (std::string(name) != "lr" && !check_hparam(__func__, name, value))
            return EM_EINVAL;
        double old = s.get();
        s.set(value);
        if (base->kind == EMI_OPT_TORCH && base->builtin == EMI_TORCH_SGD) {
            auto &x = static_cast<torch::optim::SGDOptions &>(base->torch_opt->param_groups()[group].options());
            if (!check_nesterov(__func__, x.momentum(), x.dampening(), x.nesterov())) {
                s.set(old);
                return EM_EINVAL;
            }
        }
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" double em_optimizer_lr(const em_optimizer *opt, size_t group)
{
    double lr = NAN;
    if (em_optimizer_get(opt, group, "lr", &lr) != EM_OK)
        return NAN;
    return lr;
}

extern "C" em_status em_optimizer_set_lr(em_optimizer *opt, size_t group, double lr)
{
    return em_optimizer_set(opt, group, "lr", lr);
}

extern "C" int64_t em_optimizer_step_count(const em_optimizer *opt)
{
    if (emi_check(__func__, 1, opt) != EM_OK)
        return 0;
    const em_optimizer *base = emi_optimizer_base(opt);
    return base == nullptr ? 0 : base->step_count;
}

extern "C" const char *em_optimizer_name(const em_optimizer *opt)
{
    if (emi_check(__func__, 1, opt) != EM_OK)
        return nullptr;
    const em_optimizer *base = emi_optimizer_base(opt);
    return base == nullptr ? nullptr : base->name.c_str();
}

extern "C" em_optimizer *em_optimizer_inner(em_optimizer *opt)
{
    if (emi_check(__func__, 1, opt) != EM_OK)
        return nullptr;
    return opt->kind == EMI_OPT_WRAPPER && opt->inner != nullptr ? opt->inner : opt;
}

extern "C" void em_optimizer_free(em_optimizer *opt)
{
    if (opt == nullptr)
        return;
    if (!emi_live(opt)) {
        emi_fail(EM_EMISUSE, emi_tag_of(opt) == EMI_MAGIC_FREED
                                 ? "em_optimizer_free: this optimizer was already freed (a double free)"
                                 : "em_optimizer_free: this pointer is not a live optimizer handle (freed long ago, "
                                   "or of another kind)");
        return;
    }
    if (opt->trainer_owned) {
        emi_fail(EM_EINVAL, "em_optimizer_free: this optimizer belongs to a trainer (it was handed to one); "
                            "the trainer frees it when it fits again or is freed (em_trainer_free)");
        return;
    }
    emi_retire(opt); // a wrapper's destructor leaves `inner` alone; the handle is poisoned and quarantined
}

extern "C" void emi_optimizer_set_owned(em_optimizer *opt, bool owned)
{
    if (emi_live(opt))
        opt->trainer_owned = owned;
}

// ---- gradient clipping -------------------------------------------------------------------------------

namespace {

// torch.norm(t, p) for a number p in 1.13 (torch/functional.py): _VF.norm(t, p, dim=all dims).
at::Tensor py_norm(const at::Tensor &t, double p)
{
    std::vector<int64_t> dims(static_cast<size_t>(t.dim()));
    for (size_t i = 0; i < dims.size(); i++)
        dims[i] = static_cast<int64_t>(i);
    return at::norm(t, at::Scalar(p), dims, false);
}

} // namespace

extern "C" em_status em_clip_grad_norm(const em_params *params, double max_norm, double norm_type, double *total_norm)
{
    if (em_status st = emi_check(__func__, 1, params); st != EM_OK)
        return st;
    if (!(norm_type > 0))
        return emi_fail(EM_EINVAL, "em_clip_grad_norm: norm_type must be > 0 (got %g)", norm_type);
    EM_TRY
        // torch/nn/utils/clip_grad.py clip_grad_norm_ (1.13), op for op
        std::vector<at::Tensor> grads;
        for (const em_tensor *h : params->items) {
            const at::Tensor &g = h->t.grad();
            if (g.defined())
                grads.push_back(g);
        }
        if (grads.empty()) {
            if (total_norm != nullptr)
                *total_norm = 0.0;
            return EM_OK;
        }
        // torch's clip_grad_norm_ is decorated @torch.no_grad(); its detach() calls and .to(device)
        // are no-ops here (no graph is recorded, and one device is the usual case), so skip them.
        at::NoGradGuard no_grad;
        at::Device device = grads[0].device();
        auto on_device = [&](const at::Tensor &t) { return t.device() == device ? t : t.to(device); };
        std::vector<at::Tensor> norms;
        norms.reserve(grads.size());
        at::Tensor total;
        if (std::isinf(norm_type)) {
            for (const at::Tensor &g : grads)
                norms.push_back(on_device(g.abs().max()));
            total = norms.size() == 1 ? norms[0] : at::max(at::stack(norms));
        } else {
            for (const at::Tensor &g : grads)
                norms.push_back(on_device(py_norm(g, norm_type)));
            total = py_norm(at::stack(norms), norm_type);
        }
        // Python's `max_norm / (total_norm + 1e-6)` is Tensor.__rdiv__: reciprocal() * max_norm
        at::Tensor clip_coef = (total + 1e-6).reciprocal() * max_norm;
        at::Tensor clip_coef_clamped = at::clamp(clip_coef, c10::nullopt, at::Scalar(1.0));
        for (const at::Tensor &g : grads)
            g.mul_(g.device() == device ? clip_coef_clamped : clip_coef_clamped.to(g.device()));
        if (total_norm != nullptr)
            *total_norm = total.item<double>();
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" em_status em_clip_grad_value(const em_params *params, double clip_value)
{
    if (em_status st = emi_check(__func__, 1, params); st != EM_OK)
        return st;
    EM_TRY
        // torch/nn/utils/clip_grad.py clip_grad_value_ (1.13): p.grad.data.clamp_(min=-v, max=v)
        for (const em_tensor *h : params->items) {
            const at::Tensor &g = h->t.grad();
            if (g.defined())
                g.data().clamp_(at::Scalar(-clip_value), at::Scalar(clip_value));
        }
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

// ---- optimizer state for checkpoints (backend.h) -------------------------------------------------------

namespace {

// The keys each built-in optimizer's per-parameter state has, as torch.optim's state_dict names them.
struct state_item {
    const char *key;
    at::Tensor value;
};

// The state tensors of one parameter's ParamState (only those that are defined).
std::vector<state_item> state_items(emi_torch_optim kind, torch::optim::OptimizerParamState &st)
{
    std::vector<state_item> out;
    auto add = [&](const char *key, const at::Tensor &t) {
        if (t.defined())
            out.push_back({key, t});
    };
    auto step = [&](int64_t s) { out.push_back({"step", at::scalar_tensor(s, at::kLong)}); };
    auto adam_like = [&](auto &s) {
        step(s.step());
        add("exp_avg", s.exp_avg());
        add("exp_avg_sq", s.exp_avg_sq());
        add("max_exp_avg_sq", s.max_exp_avg_sq());
    };
    switch (kind) {
    case EMI_TORCH_SGD: add("momentum_buffer", static_cast<torch::optim::SGDParamState &>(st).momentum_buffer()); break;
    case EMI_TORCH_ADAM:
        adam_like(static_cast<torch::optim::AdamParamState &>(st));
        break;
    case EMI_TORCH_ADAMW: /* the same keys as Adam's, in a state type of its own */
        adam_like(static_cast<torch::optim::AdamWParamState &>(st));
        break;
    case EMI_TORCH_RMSPROP: {
        auto &s = static_cast<torch::optim::RMSpropParamState &>(st);
        step(s.step());
        add("square_avg", s.square_avg());
        add("momentum_buffer", s.momentum_buffer());
        add("grad_avg", s.grad_avg());
        break;
    }
    case EMI_TORCH_ADAGRAD: {
        auto &s = static_cast<torch::optim::AdagradParamState &>(st);
        step(s.step());
        add("sum", s.sum());
        break;
    }
    }
    return out;
}

em_optimizer *state_base(const char *func, const em_optimizer *opt)
{
    em_optimizer *b = emi_optimizer_base(const_cast<em_optimizer *>(opt));
    if (b->kind == EMI_OPT_C && (b->ops->version < 3 || b->ops->state_save == nullptr)) {
        emi_fail(EM_EUNSUPPORTED, "%s: optimizer \"%s\" is written in C and its em_optimizer_ops have no state_save "
                 "(ops version 3): its state cannot be saved in a checkpoint", func, b->name.c_str());
        return nullptr;
    }
    return b;
}

// ---- LBFGS (lbfgs.py's state under parameter 0) and optimizers written in C ("c_state") ----

struct named_state {
    std::string key;
    at::Tensor value;
};

at::Tensor f64_scalar(double v)
{
    return at::scalar_tensor(v, at::TensorOptions().dtype(at::kDouble));
}

std::vector<named_state> lbfgs_items(const emi_lbfgs &lb)
{
    std::vector<named_state> out;
    const emi_lbfgs_state &st = lb.state();
    if (lb.func_evals() == 0)
        return out; // never stepped: no state, as torch's
    out.push_back({"func_evals", at::scalar_tensor(lb.func_evals(), at::TensorOptions().dtype(at::kLong))});
    out.push_back({"n_iter", at::scalar_tensor(lb.n_iter(), at::TensorOptions().dtype(at::kLong))});
    if (!st.d.defined())
        return out;
    out.push_back({"d", st.d});
    if (st.prev_flat_grad.defined())
        out.push_back({"prev_flat_grad", st.prev_flat_grad});
    out.push_back({"prev_loss", f64_scalar(st.prev_loss)});
    auto scalar = [&](const char *key, const emi_lbfgs_scalar &v) {
        if (v.is_tensor())
            out.push_back({key, v.tensor});
        else
            out.push_back({std::string(key) + ".number", f64_scalar(v.number)});
    };
    scalar("t", st.t);
    scalar("H_diag", st.H_diag);
    for (size_t j = 0; j < st.old_dirs.size(); j++) {
        out.push_back({"old_dirs." + std::to_string(j), st.old_dirs[j]});
        out.push_back({"old_stps." + std::to_string(j), st.old_stps[j]});
        out.push_back({"ro." + std::to_string(j), st.ro[j]});
    }
    return out;
}

// "old_dirs.3" -> ("old_dirs", 3); false for another form.
bool indexed_key(const std::string &k, std::string *base, size_t *j)
{
    size_t dot = k.rfind('.');
    if (dot == std::string::npos || dot + 1 >= k.size() || k.size() - dot > 8)
        return false;
    for (size_t i = dot + 1; i < k.size(); i++)
        if (k[i] < '0' || k[i] > '9')
            return false;
    *base = k.substr(0, dot);
    *j = static_cast<size_t>(std::stoul(k.substr(dot + 1)));
    return *base == "old_dirs" || *base == "old_stps" || *base == "ro";
}

// Check (and with `apply`, restore) LBFGS's state from keys/values of parameter 0.
em_status lbfgs_import(em_optimizer *b, const char *const *keys, em_tensor *const *values, size_t n, bool apply,
                       const char *who)
{
    emi_lbfgs &lb = *b->lbfgs;
    int64_t numel = 0;
    at::TensorOptions popt;
    for (const at::Tensor &p : lb.params()) {
        numel += p.numel();
        popt = p.options();
    }
    std::map<std::string, at::Tensor> got;
    std::map<std::string, std::map<size_t, at::Tensor>> lists;
    static const char *const plain[] = {"func_evals", "n_iter", "d", "prev_flat_grad", "prev_loss",
                                        "t", "t.number", "H_diag", "H_diag.number"};
    for (size_t i = 0; i < n; i++) {
        if (keys[i] == nullptr || values[i] == nullptr || !emi_live(values[i]))
            return emi_fail(EM_EINVAL, "%s: LBFGS state %zu is NULL", who, i);
        std::string k = keys[i], base;
        size_t j = 0;
        const at::Tensor &t = values[i]->t;
        bool known = std::find_if(std::begin(plain), std::end(plain), [&](const char *x) { return k == x; }) !=
                     std::end(plain);
        if (known) {
            if (!got.emplace(k, t).second)
                return emi_fail(EM_EINVAL, "%s: LBFGS state \"%s\" appears twice", who, k.c_str());
        } else if (indexed_key(k, &base, &j)) {
            if (j >= static_cast<size_t>(std::max<int64_t>(lb.options().history_size, 0)) ||
                !lists[base].emplace(j, t).second)
                return emi_fail(EM_EINVAL, "%s: LBFGS state \"%s\" is beyond history_size %lld or appears twice", who,
                                k.c_str(), static_cast<long long>(lb.options().history_size));
        } else {
            return emi_fail(EM_EINVAL, "%s: LBFGS has no state \"%s\"", who, k.c_str());
        }
        bool vec = k == "d" || k == "prev_flat_grad" || base == "old_dirs" || base == "old_stps";
        if (vec && (t.dim() != 1 || t.numel() != numel || !at::isFloatingType(t.scalar_type())))
            return emi_fail(EM_EINVAL, "%s: LBFGS state \"%s\" is %s, not a vector of the %lld parameter values", who,
                            k.c_str(), emi_shape_str(t).c_str(), static_cast<long long>(numel));
        if (!vec && (t.numel() != 1 || !at::isFloatingType(t.scalar_type())) && k != "func_evals" && k != "n_iter")
            return emi_fail(EM_EINVAL, "%s: LBFGS state \"%s\" is not one floating-point number", who, k.c_str());
        if ((k == "func_evals" || k == "n_iter") &&
            (t.numel() != 1 || at::isFloatingType(t.scalar_type()) || t.item<int64_t>() < 0))
            return emi_fail(EM_EINVAL, "%s: LBFGS state \"%s\" is not one non-negative integer", who, k.c_str());
    }
    size_t pairs = lists["old_dirs"].size();
    for (const char *l : {"old_dirs", "old_stps", "ro"}) {
        auto &m = lists[l];
        if (m.size() != pairs || (!m.empty() && m.rbegin()->first + 1 != m.size()))
            return emi_fail(EM_EINVAL, "%s: LBFGS's curvature pairs are incomplete (%zu old_dirs, %zu %s)", who, pairs,
                            m.size(), l);
    }
    bool any = n > 0, stepped = got.count("d") > 0;
    if (any && (got.count("func_evals") == 0 || got.count("n_iter") == 0))
        return emi_fail(EM_EINVAL, "%s: LBFGS's state lacks func_evals or n_iter", who);
    if (stepped && (got.count("prev_loss") == 0 || (got.count("t") + got.count("t.number")) != 1 ||
                    (got.count("H_diag") + got.count("H_diag.number")) != 1))
        return emi_fail(EM_EINVAL, "%s: LBFGS's state lacks prev_loss, t or H_diag (or has both forms)", who);
    if (!stepped && got.size() > 2)
        return emi_fail(EM_EINVAL, "%s: LBFGS's state has no direction \"d\" but other values", who);
    if (!apply)
        return EM_OK;
    emi_lbfgs_state st;
    auto vec = [&](const at::Tensor &t) { return t.detach().to(popt).clone(); };
    auto dev = [&](const at::Tensor &t) { return t.detach().to(popt.device()).clone(); };
    if (stepped) {
        st.d = vec(got["d"]);
        if (got.count("prev_flat_grad"))
            st.prev_flat_grad = vec(got["prev_flat_grad"]);
        st.prev_loss = got["prev_loss"].item<double>();
        st.t = got.count("t") ? emi_lbfgs_scalar(dev(got["t"]).reshape({})) : emi_lbfgs_scalar(got["t.number"].item<double>());
        st.H_diag = got.count("H_diag") ? emi_lbfgs_scalar(dev(got["H_diag"]).reshape({}))
                                        : emi_lbfgs_scalar(got["H_diag.number"].item<double>());
        for (size_t j = 0; j < pairs; j++) {
            st.old_dirs.push_back(vec(lists["old_dirs"][j]));
            st.old_stps.push_back(vec(lists["old_stps"][j]));
            st.ro.push_back(dev(lists["ro"][j]));
        }
    }
    lb.restore(std::move(st), any ? got["func_evals"].item<int64_t>() : 0, any ? got["n_iter"].item<int64_t>() : 0);
    return EM_OK;
}

em_status c_import(em_optimizer *b, const char *const *keys, em_tensor *const *values, size_t n, bool apply,
                   const char *who)
{
    if (n != 1 || keys[0] == nullptr || std::string(keys[0]) != "c_state" || values[0] == nullptr ||
        !emi_live(values[0]) || values[0]->t.scalar_type() != at::kByte || values[0]->t.dim() != 1)
        return emi_fail(EM_EINVAL, "%s: the state of optimizer \"%s\" (written in C) must be one uint8 vector "
                        "\"c_state\"", who, b->name.c_str());
    if (b->ops->state_load == nullptr)
        return emi_fail(EM_EUNSUPPORTED, "%s: optimizer \"%s\" has saved state but its ops have no state_load", who,
                        b->name.c_str());
    if (!apply)
        return EM_OK;
    at::Tensor t = values[0]->t.contiguous();
    em_clear_error();
    em_status st = b->ops->state_load(b, t.data_ptr<uint8_t>(), static_cast<size_t>(t.numel()));
    if (st == EM_OK && emi_has_error())
        st = em_last_status();
    if (st != EM_OK && !emi_has_error())
        emi_fail(st, "%s: the state_load of optimizer \"%s\" failed", who, b->name.c_str());
    return st;
}

// The group of the i-th parameter (over all groups), or -1.
int64_t group_of(const em_optimizer *b, size_t param, at::Tensor *p)
{
    size_t k = 0;
    for (size_t g = 0; g < b->groups.size(); g++)
        for (const em_tensor *h : b->groups[g]->items) {
            if (k++ == param) {
                *p = h->t;
                return static_cast<int64_t>(g);
            }
        }
    return -1;
}

} // namespace

extern "C" em_status emi_optimizer_state_export(const em_optimizer *opt, emi_opt_state_fn fn, void *ctx)
{
    if (em_status st = emi_check(__func__, 1, opt); st != EM_OK)
        return st;
    EM_TRY
        em_optimizer *b = state_base("em_checkpoint_save", opt);
        if (b == nullptr)
            return EM_EUNSUPPORTED;
        if (b->kind == EMI_OPT_LBFGS) {
            for (named_state &item : lbfgs_items(*b->lbfgs))
                if (em_status st = fn(ctx, 0, item.key.c_str(), emi_wrap(item.value.detach().clone())); st != EM_OK)
                    return st;
            return EM_OK;
        }
        if (b->kind == EMI_OPT_C) {
            void *bytes = nullptr;
            size_t n = 0;
            em_clear_error();
            em_status st = b->ops->state_save(b, &bytes, &n);
            if (st == EM_OK && emi_has_error())
                st = em_last_status();
            if (st == EM_OK && bytes == nullptr && n > 0)
                st = emi_fail(EM_EINVAL, "em_checkpoint_save: the state_save of optimizer \"%s\" gave %zu bytes at "
                              "NULL", b->name.c_str(), n);
            if (st != EM_OK) {
                std::free(bytes);
                return emi_has_error() ? st : emi_fail(st, "em_checkpoint_save: the state_save of optimizer \"%s\" "
                                                       "failed", b->name.c_str());
            }
            if (bytes == nullptr)
                return EM_OK;
            at::Tensor t = at::empty({static_cast<int64_t>(n)}, at::TensorOptions().dtype(at::kByte));
            std::memcpy(t.data_ptr<uint8_t>(), bytes, n);
            std::free(bytes);
            return fn(ctx, 0, "c_state", emi_wrap(t));
        }
        auto &state = b->torch_opt->state();
        std::vector<at::Tensor> params = emi_optimizer_params(b);
        for (size_t i = 0; i < params.size(); i++) {
            auto it = state.find(emi::compat::optimizer_state_key(state, params[i]));
            if (it == state.end())
                continue;
            for (state_item &item : state_items(b->builtin, *it->second)) {
                em_tensor *h = emi_wrap(item.value.detach());
                if (em_status st = fn(ctx, i, item.key, h); st != EM_OK)
                    return st;
            }
        }
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" em_status emi_optimizer_state_import(em_optimizer *opt, size_t param, const char *const *keys,
                                                em_tensor *const *values, size_t n, bool apply, const char *who)
{
    if (em_status st = emi_check(__func__, 1, opt); st != EM_OK)
        return st;
    EM_TRY
        em_optimizer *b = state_base(who, opt);
        if (b == nullptr)
            return EM_EUNSUPPORTED;
        if (b->kind != EMI_OPT_TORCH && param != 0)
            return emi_fail(EM_EINVAL, "%s: %s keeps its state under parameter 0 (got parameter %zu)", who,
                            b->name.c_str(), param);
        if (b->kind == EMI_OPT_LBFGS)
            return lbfgs_import(b, keys, values, n, apply, who);
        if (b->kind == EMI_OPT_C)
            return c_import(b, keys, values, n, apply, who);
        at::Tensor p;
        int64_t g = group_of(b, param, &p);
        if (g < 0)
            return emi_fail(EM_EINVAL, "%s: %s has no parameter %zu", who, b->name.c_str(), param);
        // what this optimizer and group need
        std::vector<std::string> need;
        torch::optim::OptimizerOptions &o = b->torch_opt->param_groups()[static_cast<size_t>(g)].options();
        switch (b->builtin) {
        case EMI_TORCH_SGD: need = {"momentum_buffer"}; break;
        case EMI_TORCH_ADAM:
        case EMI_TORCH_ADAMW: {
            bool ams = b->builtin == EMI_TORCH_ADAM ? static_cast<torch::optim::AdamOptions &>(o).amsgrad()
                                                    : static_cast<torch::optim::AdamWOptions &>(o).amsgrad();
            need = {"step", "exp_avg", "exp_avg_sq"};
            if (ams)
                need.push_back("max_exp_avg_sq");
            break;
        }
        case EMI_TORCH_RMSPROP: {
            auto &x = static_cast<torch::optim::RMSpropOptions &>(o);
            need = {"step", "square_avg"};
            if (x.momentum() > 0)
                need.push_back("momentum_buffer");
            if (x.centered())
                need.push_back("grad_avg");
            break;
        }
        case EMI_TORCH_ADAGRAD: need = {"step", "sum"}; break;
        }
        std::map<std::string, at::Tensor> got;
        for (size_t i = 0; i < n; i++) {
            if (keys[i] == nullptr || values[i] == nullptr || !emi_live(values[i]))
                return emi_fail(EM_EINVAL, "%s: state %zu of parameter %zu is NULL", who, i, param);
            std::string k = keys[i];
            if (std::find(need.begin(), need.end(), k) == need.end() ||
                !got.emplace(k, values[i]->t).second)
                return emi_fail(EM_EINVAL, "%s: %s (group %lld) has no state \"%s\" for parameter %zu, or has it twice",
                                who, b->name.c_str(), static_cast<long long>(g), k.c_str(), param);
            const at::Tensor &t = values[i]->t;
            if (k == "step") {
                if (t.numel() != 1 || t.item<double>() < 0)
                    return emi_fail(EM_EINVAL, "%s: the step of parameter %zu is not one non-negative number", who,
                                    param);
            } else if (t.sizes() != p.sizes()) {
                return emi_fail(EM_EINVAL, "%s: the \"%s\" state of parameter %zu is %s, the parameter %s", who,
                                k.c_str(), param, emi_shape_str(t).c_str(), emi_shape_str(p).c_str());
            } else if (!at::isFloatingType(t.scalar_type())) {
                return emi_fail(EM_EINVAL, "%s: the \"%s\" state of parameter %zu is not floating point", who,
                                k.c_str(), param);
            }
        }
        for (const std::string &k : need)
            if (got.count(k) == 0)
                return emi_fail(EM_EINVAL, "%s: the state of parameter %zu lacks \"%s\" (%s, group %lld)", who, param,
                                k.c_str(), b->name.c_str(), static_cast<long long>(g));
        if (!apply)
            return EM_OK;
        auto like = [&](const char *k) { return got[k].detach().to(p.options()).clone(); };
        int64_t step = got.count("step") ? got["step"].item<int64_t>() : 0;
        std::unique_ptr<torch::optim::OptimizerParamState> st;
        auto adam_like = [&](auto s) -> std::unique_ptr<torch::optim::OptimizerParamState> {
            s->step(step);
            s->exp_avg(like("exp_avg"));
            s->exp_avg_sq(like("exp_avg_sq"));
            if (got.count("max_exp_avg_sq"))
                s->max_exp_avg_sq(like("max_exp_avg_sq"));
            return s;
        };
        switch (b->builtin) {
        case EMI_TORCH_SGD: {
            auto s = std::make_unique<torch::optim::SGDParamState>();
            s->momentum_buffer(like("momentum_buffer"));
            st = std::move(s);
            break;
        }
        case EMI_TORCH_ADAM:
            st = adam_like(std::make_unique<torch::optim::AdamParamState>());
            break;
        case EMI_TORCH_ADAMW: /* Adam's keys, its own state type */
            st = adam_like(std::make_unique<torch::optim::AdamWParamState>());
            break;
        case EMI_TORCH_RMSPROP: {
            auto s = std::make_unique<torch::optim::RMSpropParamState>();
            s->step(step);
            s->square_avg(like("square_avg"));
            if (got.count("momentum_buffer"))
                s->momentum_buffer(like("momentum_buffer"));
            if (got.count("grad_avg"))
                s->grad_avg(like("grad_avg"));
            st = std::move(s);
            break;
        }
        case EMI_TORCH_ADAGRAD: {
            auto s = std::make_unique<torch::optim::AdagradParamState>();
            s->step(step);
            s->sum(like("sum"));
            st = std::move(s);
            break;
        }
        }
        auto &state = b->torch_opt->state();
        state[emi::compat::optimizer_state_key(state, p)] = std::move(st);
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" em_status emi_optimizer_state_clear(em_optimizer *opt)
{
    if (em_status st = emi_check(__func__, 1, opt); st != EM_OK)
        return st;
    EM_TRY
        em_optimizer *b = state_base("em_checkpoint_load", opt);
        if (b == nullptr)
            return EM_EUNSUPPORTED;
        if (b->kind == EMI_OPT_LBFGS) {
            b->lbfgs->restore(emi_lbfgs_state(), 0, 0);
            return EM_OK;
        }
        if (b->kind == EMI_OPT_C)
            return EM_OK; // its state_load replaces what it keeps
        auto &state = b->torch_opt->state();
        state.clear();
        if (b->builtin == EMI_TORCH_ADAGRAD) {
            // as the constructor (and em_optimizer_add_param_group) fill it
            for (auto &group : b->torch_opt->param_groups()) {
                auto &o = static_cast<torch::optim::AdagradOptions &>(group.options());
                for (const at::Tensor &p : group.params()) {
                    auto st = std::make_unique<torch::optim::AdagradParamState>();
                    st->step(0);
                    st->sum(at::full_like(p.data(), o.initial_accumulator_value(), at::MemoryFormat::Preserve));
                    state[emi::compat::optimizer_state_key(state, p)] = std::move(st);
                }
            }
        }
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" void emi_optimizer_set_step_count(em_optimizer *opt, int64_t n)
{
    em_optimizer *b = emi_optimizer_base(opt);
    if (b != nullptr)
        b->step_count = n;
}

extern "C" int emi_optimizer_kind_id(const em_optimizer *opt)
{
    if (opt == nullptr || !emi_live(opt))
        return -1;
    const em_optimizer *b = emi_optimizer_base(opt);
    if (b == nullptr)
        return -1;
    return b->kind == EMI_OPT_LBFGS ? 1 : b->kind == EMI_OPT_C ? 2 : 0;
}

extern "C" size_t emi_optimizer_c_hparams(const em_optimizer *opt, size_t group, const char **out, size_t cap)
{
    if (emi_optimizer_kind_id(opt) != 2)
        return 0;
    const em_optimizer *b = emi_optimizer_base(opt);
    if (group >= b->hparams.size())
        return 0;
    size_t k = 0;
    for (const auto &kv : b->hparams[group]) {
        if (k < cap)
            out[k] = kv.first.c_str();
        k++;
    }
    return k;
}

extern "C" em_status emi_optimizer_state_savable(const em_optimizer *opt, const char *who)
{
    if (em_status st = emi_check(__func__, 1, opt); st != EM_OK)
        return st;
    EM_TRY
        return state_base(who, opt) != nullptr ? EM_OK : EM_EUNSUPPORTED;
    EM_CATCH(EM_ETORCH)
}
