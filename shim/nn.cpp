// shim/nn.cpp: layers (torch::nn modules) behind the em_nn handle.
//
// The only shim TU that includes the libtorch C++ frontend (torch/nn.h): built-in layers are
// libtorch's own modules, which initialise their parameters op for op as torch.nn does in Python,
// so a seed gives PyTorch's weights. Sequential, the container and C layers are plain
// torch::nn::Module objects whose sub-modules are the children's modules, so parameter names and
// order are torch's named_parameters() ("0.weight", "G.1.bias").
//
// Every extern "C" function catches everything (EM_TRY / EM_CATCH, or emi_guard in the helpers they
// call): no C++ exception crosses into C.
// libtorch's C++ frontend headers are not -Wextra clean (unused parameters) and reach us through
// -I, not -isystem: silence that one warning for them only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <torch/nn.h>
#pragma GCC diagnostic pop

#include "internal.hpp"

#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <unordered_map>
#include <utility>

// ---- the handle ---------------------------------------------------------------------------------------

namespace {

enum class nn_tag { builtin, sequential, container, custom };

// A custom layer's module: only a name for printing; ops and state live in the em_nn.
struct custom_module : torch::nn::Module {
    custom_module() : torch::nn::Module("Custom") {}
};

// Borrowed handles with their dotted names, in torch's named_parameters()/named_buffers() order.
struct named_handles {
    std::vector<std::string> names;
    std::vector<em_tensor *> handles;
};

} // namespace

struct em_nn {
    static constexpr uint32_t kMagic = EMI_MAGIC_NN;
    static constexpr const char *kNoun = "layer";
    uint32_t magic = kMagic; // first: the handle armor (internal.hpp)
    std::shared_ptr<torch::nn::Module> mod;
    std::string kind;                                    // "Linear", "Sequential", ...
    nn_tag tag = nn_tag::builtin;
    std::function<at::Tensor(const at::Tensor &)> fwd;   // built-in layers only
    const em_nn_ops *ops = nullptr;                      // custom layers only
    void *state = nullptr;                               // custom layers only
    em_nn *parent = nullptr;                             // set while registered in a container
    std::vector<std::pair<std::string, em_nn *>> children; // owned, in registration order

    // Caches of borrowed handles, rebuilt lazily after the structure changed (here or below).
    // A handle, once given out, stays valid until the layer is freed: a rebuild reuses the handle
    // of a tensor it already had, and parks the ones it no longer lists in `retired`.
    bool dirty = true;
    named_handles params, buffers;
    std::vector<em_tensor *> retired;
};

namespace {

void mark_dirty(em_nn *m)
{
    for (; m != nullptr; m = m->parent)
        m->dirty = true;
}

// Rebuild one cache from `items` (name, tensor), reusing the handles of tensors already listed.
template <typename Items> void rebuild_one(named_handles &cache, std::vector<em_tensor *> &retired, const Items &items)
{
    std::unordered_map<std::string, em_tensor *> old;
    for (size_t i = 0; i < cache.names.size(); i++)
        old.emplace(cache.names[i], cache.handles[i]);
    named_handles fresh;
    fresh.names.reserve(items.size());
    fresh.handles.reserve(items.size());
    for (const auto &item : items) {
        const at::Tensor &t = item.value();
        if (!t.defined())
            continue;
        em_tensor *h = nullptr;
        auto it = old.find(item.key());
        if (it != old.end() && it->second->t.unsafeGetTensorImpl() == t.unsafeGetTensorImpl()) {
            h = it->second;
            old.erase(it);
        } else {
            h = emi_borrowed(t);
        }
        fresh.names.push_back(item.key());
        fresh.handles.push_back(h);
    }
    for (auto &kv : old)
        retired.push_back(kv.second);
    cache = std::move(fresh);
}

// May throw (out of memory): callers are behind the barrier (EM_TRY or emi_guard).
void refresh(em_nn *m)
{
    if (!m->dirty)
        return;
    rebuild_one(m->params, m->retired, m->mod->named_parameters(true));
    rebuild_one(m->buffers, m->retired, m->mod->named_buffers(true));
    m->dirty = false;
}

// The accessors take a const em_nn * (the C API's view): the caches are an implementation detail.
em_nn *mut(const em_nn *m)
{
    return const_cast<em_nn *>(m);
}

// Free `m` and everything below it. The caller has checked that `m` may be freed.
void destroy_tree(em_nn *m)
{
    for (auto &c : m->children)
        destroy_tree(c.second);
    for (em_tensor *h : m->params.handles)
        emi_borrowed_free(h);
    for (em_tensor *h : m->buffers.handles)
        emi_borrowed_free(h);
    for (em_tensor *h : m->retired)
        emi_borrowed_free(h);
    if (m->tag == nn_tag::custom && m->ops != nullptr && m->ops->destroy != nullptr)
        m->ops->destroy(m->state);
    emi_retire(m); // poisoned and quarantined: a later use or free of this handle is reported
}

// Free a parentless layer handed to a function that takes ownership; may not throw.
void free_orphan(em_nn *m)
{
    if (emi_live(m) && m->parent == nullptr)
        destroy_tree(m);
}

em_nn *make_nn(std::shared_ptr<torch::nn::Module> mod, const char *kind, nn_tag tag,
               std::function<at::Tensor(const at::Tensor &)> fwd = nullptr)
{
    auto *m = new em_nn;
    m->mod = std::move(mod);
    m->kind = kind;
    m->tag = tag;
    m->fwd = std::move(fwd);
    return m;
}

// A built-in layer around a libtorch module holder: forward calls the module's own forward.
template <typename Holder> em_nn *make_builtin(Holder holder, const char *kind)
{
    auto *impl = holder.get(); // kept alive by m->mod
    return make_nn(holder.ptr(), kind, nn_tag::builtin, [impl](const at::Tensor &x) { return impl->forward(x); });
}

// A built-in layer made behind the barrier: make() returns the libtorch module holder.
template <typename Make> em_nn *new_builtin(const char *func, const char *kind, Make &&make)
{
    return emi_guard<em_nn *>(func, nullptr, [&] { return make_builtin(make(), kind); });
}

// Work on a layer: EM_OK; EM_EINVAL for a NULL `m` (not recorded); EM_ETORCH when torch refuses.
template <typename Op> em_status layer_do(const char *func, em_nn *m, Op &&op)
{
    if (em_status st = emi_check(func, 1, m); st != EM_OK)
        return st;
    return emi_guard(func, EM_ETORCH, [&] {
        op(m);
        return EM_OK;
    });
}

bool check_positive(const char *func, const char *what, int64_t v)
{
    if (v > 0)
        return true;
    emi_fail(EM_EINVAL, "%s: %s must be > 0 (got %lld)", func, what, static_cast<long long>(v));
    return false;
}

// A name for em_nn_add / register_parameter / register_buffer: non-empty, no '.', not used yet
// among the module's own parameters, buffers and children.
bool check_new_name(const char *func, const em_nn *m, const char *name)
{
    if (name == nullptr || name[0] == '\0') {
        emi_fail(EM_EINVAL, "%s: the name is empty", func);
        return false;
    }
    if (std::strchr(name, '.') != nullptr) {
        emi_fail(EM_EINVAL, "%s: the name \"%s\" contains '.'", func, name);
        return false;
    }
    const std::string n(name);
    bool used = m->mod->named_parameters(false).contains(n) || m->mod->named_buffers(false).contains(n);
    for (const auto &c : m->children)
        used = used || c.first == n;
    if (used) {
        emi_fail(EM_EINVAL, "%s: the %s already has a parameter, buffer or sub-layer named \"%s\"", func,
                 m->kind.c_str(), name);
        return false;
    }
    return true;
}

// ---- forward --------------------------------------------------------------------------------------------

// Run `m` on `x`. `xh` is the caller's handle for `x` when there is one (handed to a C layer as is).
// `where` names the layer inside the one em_nn_forward was called on (NULL at the top): a chain of
// child names, turned into a dotted path only when a message needs it (building strings on every
// forward cost more than the rest of ember's per-step work).
// Records the error and returns false on failure.
struct forward_path {
    const forward_path *parent;
    const std::string *name;
};

std::string path_suffix(const forward_path *where)
{
    if (where == nullptr)
        return std::string();
    std::vector<const std::string *> names;
    for (const forward_path *p = where; p != nullptr; p = p->parent)
        names.push_back(p->name);
    std::string dotted;
    for (size_t i = names.size(); i-- > 0;)
        dotted += *names[i] + (i > 0 ? "." : "");
    return " (layer \"" + dotted + "\")";
}

// A C layer's forward. It gets a handle for x; an intermediate inside a Sequential gets a temporary one.
bool forward_custom(em_nn *m, const at::Tensor &x, const em_tensor *xh, const forward_path *where, at::Tensor *out)
{
    std::unique_ptr<em_tensor, void (*)(em_tensor *)> tmp(nullptr, emi_borrowed_free);
    if (xh == nullptr) {
        tmp.reset(emi_borrowed(x));
        xh = tmp.get();
    }
    // Its temporaries (and the result handle) live in a scope of their own: only the tensor
    // is kept, so nothing leaks when no scope is open.
    em_scope_begin();
    int depth = em_scope_depth();
    em_tensor *r = m->ops->forward(m, xh);
    if (r != nullptr && !emi_live(r)) {
        // e.g. a result made inside a scope the forward had already closed
        emi_fail(EM_EMISUSE, "em_nn_forward: %s: forward returned a freed tensor handle%s", m->kind.c_str(),
                 path_suffix(where).c_str());
        r = nullptr;
    }
    if (r != nullptr)
        *out = r->t;
    // a forward that left scopes open: close them (stopping should one refuse, under a scope floor)
    while (em_scope_depth() > depth && em_scope_end() == EM_OK) {
    }
    if (em_scope_depth() == depth)
        em_scope_end();
    if (r == nullptr && !emi_has_error())
        emi_fail(EM_EUSER, "em_nn_forward: %s: forward returned NULL without recording an error%s",
                 m->kind.c_str(), path_suffix(where).c_str());
    return r != nullptr;
}

bool forward_impl(em_nn *m, const at::Tensor &x, const em_tensor *xh, const forward_path *where, at::Tensor *out)
{
    switch (m->tag) {
    case nn_tag::builtin:
        try {
            *out = m->fwd(x);
            return true;
        } catch (const c10::Error &e) {
            emi_fail(EM_ETORCH, "em_nn_forward: %s: %s%s", m->kind.c_str(), e.what_without_backtrace(),
                     path_suffix(where).c_str());
        } catch (const std::bad_alloc &) {
            emi_fail(EM_ENOMEM, "em_nn_forward: %s: out of memory%s", m->kind.c_str(), path_suffix(where).c_str());
        } catch (const std::exception &e) {
            emi_fail(EM_ETORCH, "em_nn_forward: %s: %s%s", m->kind.c_str(), e.what(), path_suffix(where).c_str());
        }
        return false;
    case nn_tag::sequential: {
        at::Tensor cur = x;
        for (size_t i = 0; i < m->children.size(); i++) {
            const auto &c = m->children[i];
            forward_path w{where, &c.first};
            at::Tensor next;
            if (!forward_impl(c.second, cur, i == 0 ? xh : nullptr, &w, &next))
                return false;
            cur = std::move(next);
        }
        *out = std::move(cur); // an empty Sequential is the identity, as in torch
        return true;
    }
    case nn_tag::container:
        emi_fail(EM_EINVAL, "em_nn_forward: a container has no forward; call its children%s",
                 path_suffix(where).c_str());
        return false;
    case nn_tag::custom:
        return forward_custom(m, x, xh, where, out);
    }
    return false;
}

// The tensor named `name` among m's parameters and buffers, or nullptr.
em_tensor *find_named(em_nn *m, const char *name)
{
    refresh(m);
    for (size_t i = 0; i < m->params.names.size(); i++)
        if (m->params.names[i] == name)
            return m->params.handles[i];
    for (size_t i = 0; i < m->buffers.names.size(); i++)
        if (m->buffers.names[i] == name)
            return m->buffers.handles[i];
    return nullptr;
}

// "weight, bias" (at most a few names) for error messages.
std::string some_names(em_nn *m)
{
    refresh(m);
    std::string s;
    size_t n = 0;
    for (const named_handles *c : {&m->params, &m->buffers}) {
        for (const auto &name : c->names) {
            if (n == 8)
                return s + ", ...";
            s += (n++ == 0 ? "" : ", ") + name;
        }
    }
    return n == 0 ? std::string("none") : s;
}

// Apply `fn` to every parameter and buffer (and existing gradient) of m, keeping each tensor's
// identity: torch.nn.Module._apply's `param.data = fn(param)`, so borrowed handles stay valid.
template <typename Fn> void apply_in_place(em_nn *m, Fn fn)
{
    at::NoGradGuard no_grad;
    for (auto &p : m->mod->parameters(true)) {
        if (!p.defined())
            continue;
        p.set_data(fn(p));
        if (p.grad().defined())
            p.grad().set_data(fn(p.grad()));
    }
    for (auto &b : m->mod->buffers(true))
        if (b.defined())
            b.set_data(fn(b));
}

// Register a copy of `init` as a parameter or a buffer of `m`, once the layer and the name are checked.
// May throw.
em_tensor *register_checked(const char *func, em_nn *m, const char *name, const em_tensor *init, bool parameter)
{
    if (m->tag != nn_tag::custom && m->tag != nn_tag::container) {
        emi_fail(EM_EINVAL, "%s: only a custom layer or a container takes new tensors (got a %s)", func,
                 m->kind.c_str());
        return nullptr;
    }
    if (!check_new_name(func, m, name))
        return nullptr;
    at::Tensor t = init->t.detach().clone();
    if (parameter) {
        if (!t.is_floating_point() && !t.is_complex()) {
            emi_fail(EM_EINVAL, "%s: a parameter must be floating point (got %s for \"%s\")", func,
                     c10::toString(t.scalar_type()), name);
            return nullptr;
        }
        m->mod->register_parameter(name, t, /*requires_grad=*/true);
    } else {
        m->mod->register_buffer(name, t);
    }
    mark_dirty(m);
    return find_named(m, name);
}

// em_nn_register_parameter / em_nn_register_buffer: NULL for a NULL handle (not recorded).
em_tensor *register_tensor(const char *func, em_nn *m, const char *name, const em_tensor *init, bool parameter)
{
    if (emi_check(func, 1, m) != EM_OK || emi_check(func, 3, init, emi_ops_record_null) != EM_OK)
        return nullptr;
    return emi_guard<em_tensor *>(func, nullptr, [&] { return register_checked(func, m, name, init, parameter); });
}

} // namespace

// ---- built-in layers ----------------------------------------------------------------------------------

extern "C" em_nn *em_nn_linear(int64_t in_features, int64_t out_features, bool bias)
{
    if (!check_positive(__func__, "in_features", in_features) ||
        !check_positive(__func__, "out_features", out_features))
        return nullptr;
    return new_builtin(__func__, "Linear", [&] {
        return torch::nn::Linear(torch::nn::LinearOptions(in_features, out_features).bias(bias));
    });
}

namespace {

struct conv_args {
    int64_t stride, padding, output_padding, dilation, groups;
    bool bias;
};

bool conv_check(const char *func, int64_t in, int64_t out, int64_t k, const em_conv_opts *o, conv_args *a)
{
    if (!check_positive(func, "in_channels", in) || !check_positive(func, "out_channels", out) ||
        !check_positive(func, "kernel_size", k))
        return false;
    em_conv_opts def{};
    if (o == nullptr)
        o = &def;
    if (o->stride < 0 || o->padding < 0 || o->output_padding < 0 || o->dilation < 0 || o->groups < 0) {
        emi_fail(EM_EINVAL, "%s: stride, padding, output_padding, dilation and groups must be >= 0 (got %lld, %lld, "
                            "%lld, %lld, %lld)",
                 func, static_cast<long long>(o->stride), static_cast<long long>(o->padding),
                 static_cast<long long>(o->output_padding), static_cast<long long>(o->dilation),
                 static_cast<long long>(o->groups));
        return false;
    }
    a->stride = o->stride == 0 ? 1 : o->stride;
    a->padding = o->padding;
    a->output_padding = o->output_padding;
    a->dilation = o->dilation == 0 ? 1 : o->dilation;
    a->groups = o->groups == 0 ? 1 : o->groups;
    a->bias = !o->no_bias;
    if (in % a->groups != 0 || out % a->groups != 0) {
        emi_fail(EM_EINVAL, "%s: in_channels (%lld) and out_channels (%lld) must be divisible by groups (%lld)", func,
                 static_cast<long long>(in), static_cast<long long>(out), static_cast<long long>(a->groups));
        return false;
    }
    return true;
}

// The options Conv2d and ConvTranspose2d share, from checked arguments.
template <typename Options> Options conv_options(Options o, const conv_args &a)
{
    return o.stride(a.stride).padding(a.padding).dilation(a.dilation).groups(a.groups).bias(a.bias);
}

} // namespace

extern "C" em_nn *em_nn_conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size,
                               const em_conv_opts *opts)
{
    conv_args a{};
    if (!conv_check(__func__, in_channels, out_channels, kernel_size, opts, &a))
        return nullptr;
    if (a.output_padding != 0) {
        emi_fail(EM_EINVAL, "em_nn_conv2d: output_padding is for transposed convolutions only (got %lld)",
                 static_cast<long long>(a.output_padding));
        return nullptr;
    }
    return new_builtin(__func__, "Conv2d", [&] {
        return torch::nn::Conv2d(conv_options(torch::nn::Conv2dOptions(in_channels, out_channels, kernel_size), a));
    });
}

extern "C" em_nn *em_nn_conv_transpose2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size,
                                         const em_conv_opts *opts)
{
    conv_args a{};
    if (!conv_check(__func__, in_channels, out_channels, kernel_size, opts, &a))
        return nullptr;
    if (a.output_padding >= a.stride && a.output_padding >= a.dilation) {
        // torch checks this at the first forward; we say it at construction.
        emi_fail(EM_EINVAL, "em_nn_conv_transpose2d: output_padding (%lld) must be smaller than stride (%lld) or "
                            "dilation (%lld)",
                 static_cast<long long>(a.output_padding), static_cast<long long>(a.stride),
                 static_cast<long long>(a.dilation));
        return nullptr;
    }
    return new_builtin(__func__, "ConvTranspose2d", [&] {
        auto o = torch::nn::ConvTranspose2dOptions(in_channels, out_channels, kernel_size);
        return torch::nn::ConvTranspose2d(conv_options(o, a).output_padding(a.output_padding));
    });
}

namespace {

// opts NULL = defaults; otherwise a known version and in-range values. Records and returns false.
bool norm_check(const char *func, const em_norm_opts *o, em_norm_opts *out)
{
    em_norm_opts def = EM_NORM_OPTS_INIT;
    if (o == nullptr) {
        *out = def;
        return true;
    }
    if (o->version <= 0 || o->version > EM_NORM_OPTS_VERSION) {
        emi_fail(EM_EINVAL, "%s: em_norm_opts.version is %d; start from EM_NORM_OPTS_INIT (version %d)", func,
                 o->version, EM_NORM_OPTS_VERSION);
        return false;
    }
    if (!(o->eps >= 0)) {
        emi_fail(EM_EINVAL, "%s: eps must be >= 0 (got %g)", func, o->eps);
        return false;
    }
    if (!(o->momentum >= 0 && o->momentum <= 1)) {
        emi_fail(EM_EINVAL, "%s: momentum must be in [0, 1] (got %g)", func, o->momentum);
        return false;
    }
    *out = *o;
    return true;
}

// BatchNorm1d / BatchNorm2d (Holder), whose options (Options) take the same fields.
template <typename Holder, typename Options>
em_nn *batchnorm(const char *func, const char *kind, int64_t num_features, const em_norm_opts *opts)
{
    em_norm_opts o;
    if (!check_positive(func, "num_features", num_features) || !norm_check(func, opts, &o))
        return nullptr;
    return new_builtin(func, kind, [&] {
        return Holder(Options(num_features).eps(o.eps).momentum(o.momentum).affine(o.affine).track_running_stats(
            o.track_running_stats));
    });
}

} // namespace

extern "C" em_nn *em_nn_batchnorm1d(int64_t num_features, const em_norm_opts *opts)
{
    return batchnorm<torch::nn::BatchNorm1d, torch::nn::BatchNorm1dOptions>(__func__, "BatchNorm1d", num_features,
                                                                            opts);
}

extern "C" em_nn *em_nn_batchnorm2d(int64_t num_features, const em_norm_opts *opts)
{
    return batchnorm<torch::nn::BatchNorm2d, torch::nn::BatchNorm2dOptions>(__func__, "BatchNorm2d", num_features,
                                                                            opts);
}

extern "C" em_nn *em_nn_layernorm(const int64_t *normalized_shape, int ndim, const em_norm_opts *opts)
{
    if (ndim < 1 || ndim > EM_MAX_DIMS) {
        emi_fail(EM_EINVAL, "em_nn_layernorm: ndim must be in 1..%d (got %d)", EM_MAX_DIMS, ndim);
        return nullptr;
    }
    if (normalized_shape == nullptr) {
        emi_fail(EM_EINVAL, "em_nn_layernorm: normalized_shape is NULL with ndim %d", ndim);
        return nullptr;
    }
    for (int i = 0; i < ndim; i++)
        if (!check_positive(__func__, "every normalized_shape dimension", normalized_shape[i]))
            return nullptr;
    em_norm_opts o;
    if (!norm_check(__func__, opts, &o))
        return nullptr;
    return new_builtin(__func__, "LayerNorm", [&] {
        std::vector<int64_t> shape(normalized_shape, normalized_shape + ndim);
        return torch::nn::LayerNorm(torch::nn::LayerNormOptions(shape).eps(o.eps).elementwise_affine(o.affine));
    });
}

extern "C" em_nn *em_nn_dropout(double p)
{
    if (!(p >= 0 && p <= 1)) {
        emi_fail(EM_EINVAL, "em_nn_dropout: dropout probability has to be between 0 and 1, but got %g", p);
        return nullptr;
    }
    return new_builtin(__func__, "Dropout", [&] { return torch::nn::Dropout(torch::nn::DropoutOptions(p)); });
}

extern "C" em_nn *em_nn_embedding(int64_t num_embeddings, int64_t embedding_dim)
{
    if (!check_positive(__func__, "num_embeddings", num_embeddings) ||
        !check_positive(__func__, "embedding_dim", embedding_dim))
        return nullptr;
    return new_builtin(__func__, "Embedding", [&] {
        return torch::nn::Embedding(torch::nn::EmbeddingOptions(num_embeddings, embedding_dim));
    });
}

// Activations: libtorch's modules, whose forward calls the same ATen op as Python's
// (relu, leaky_relu, tanh, sigmoid, gelu, softmax, flatten).

extern "C" em_nn *em_nn_relu(void)
{
    return new_builtin(__func__, "ReLU", [] { return torch::nn::ReLU(); });
}

extern "C" em_nn *em_nn_leaky_relu(double negative_slope)
{
    return new_builtin(__func__, "LeakyReLU", [&] {
        return torch::nn::LeakyReLU(torch::nn::LeakyReLUOptions().negative_slope(negative_slope));
    });
}

extern "C" em_nn *em_nn_tanh(void)
{
    return new_builtin(__func__, "Tanh", [] { return torch::nn::Tanh(); });
}

extern "C" em_nn *em_nn_sigmoid(void)
{
    return new_builtin(__func__, "Sigmoid", [] { return torch::nn::Sigmoid(); });
}

extern "C" em_nn *em_nn_gelu(void)
{
    return new_builtin(__func__, "GELU", [] { return torch::nn::GELU(); });
}

extern "C" em_nn *em_nn_softmax(int dim)
{
    return new_builtin(__func__, "Softmax", [&] { return torch::nn::Softmax(torch::nn::SoftmaxOptions(dim)); });
}

extern "C" em_nn *em_nn_flatten(int start_dim, int end_dim)
{
    return new_builtin(__func__, "Flatten", [&] {
        return torch::nn::Flatten(torch::nn::FlattenOptions().start_dim(start_dim).end_dim(end_dim));
    });
}

// ---- containers -----------------------------------------------------------------------------------------

namespace {

// Free every distinct parentless child of children[0..n-1] (ownership taken by a failing constructor).
void free_children(em_nn *const *children, size_t n)
{
    if (children == nullptr)
        return;
    for (size_t i = 0; i < n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = children[j] == children[i];
        if (!seen)
            free_orphan(children[i]);
    }
}

// Attach `child` under `name`: no checks (the callers made them), only the bookkeeping.
void attach(em_nn *parent, const std::string &name, em_nn *child)
{
    parent->children.emplace_back(name, child); // first: a throw below leaves the child owned here
    child->parent = parent;
    parent->mod->register_module(name, child->mod);
    mark_dirty(parent);
}

} // namespace

extern "C" em_nn *em_nn_sequential(em_nn *const *children, size_t n)
{
    if (children == nullptr && n > 0) {
        emi_fail(EM_EINVAL, "em_nn_sequential: children is NULL with n = %zu", n);
        return nullptr;
    }
    for (size_t i = 0; i < n; i++) {
        if (children[i] == nullptr) { // an earlier constructor failed: its message stays first
            if (emi_ops_record_null)
                emi_fail(EM_EINVAL, "em_nn_sequential: child %zu is NULL", i);
            free_children(children, n);
            return nullptr;
        }
        if (!emi_live(children[i])) {
            emi_fail(EM_EMISUSE, "em_nn_sequential: child %zu is not a live layer (already freed, or not a layer "
                                 "handle)", i);
            free_children(children, n); // the live ones only
            return nullptr;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const char *why = nullptr;
        if (children[i]->parent != nullptr)
            why = "already belongs to a container";
        for (size_t j = 0; j < i && why == nullptr; j++)
            if (children[j] == children[i])
                why = "appears twice";
        if (why != nullptr) {
            emi_fail(EM_EINVAL, "em_nn_sequential: child %zu (%s) %s", i, children[i]->kind.c_str(), why);
            free_children(children, n);
            return nullptr;
        }
    }
    em_nn *seq = nullptr;
    try {
        seq = make_nn(std::make_shared<torch::nn::Module>("Sequential"), "Sequential", nn_tag::sequential);
        for (size_t i = 0; i < n; i++)
            attach(seq, std::to_string(i), children[i]);
    } catch (...) {
        // Out of memory half-way: the children not attached yet are freed here, the rest with seq.
        emi_fail(EM_ENOMEM, "em_nn_sequential: out of memory");
        free_children(children, n);
        if (seq != nullptr)
            destroy_tree(seq);
        return nullptr;
    }
    return seq;
}

extern "C" em_nn *em_nn_container(void)
{
    EM_TRY
        return make_nn(std::make_shared<torch::nn::Module>("Container"), "Container", nn_tag::container);
    EM_CATCH(nullptr)
}

extern "C" em_status em_nn_add(em_nn *parent, const char *name, em_nn *child)
{
    if (em_status st = emi_check(__func__, 3, child); st != EM_OK)
        return st; // NULL: an earlier constructor failed, its message stays first
    if (em_status st = emi_check(__func__, 1, parent); st != EM_OK) {
        free_orphan(child);
        return st;
    }
    if (child->parent != nullptr)
        return emi_fail(EM_EINVAL, "em_nn_add: the %s layer already belongs to a container", child->kind.c_str());
    for (em_nn *a = parent; a != nullptr; a = a->parent)
        if (a == child)
            return emi_fail(EM_EINVAL, "em_nn_add: a layer cannot be added to itself or to one of its sub-layers");
    em_status st = EM_OK;
    if (parent->tag == nn_tag::builtin) {
        st = emi_fail(EM_EINVAL, "em_nn_add: a %s layer cannot hold sub-layers (use a container, a Sequential or a "
                                 "custom layer)",
                      parent->kind.c_str());
    } else if (!check_new_name(__func__, parent, name)) {
        st = EM_EINVAL;
    } else if (parent->tag == nn_tag::sequential && std::to_string(parent->children.size()) != name) {
        st = emi_fail(EM_EINVAL, "em_nn_add: a Sequential names its layers by position: the next one is \"%zu\" "
                                 "(got \"%s\")",
                      parent->children.size(), name);
    }
    if (st != EM_OK) {
        free_orphan(child);
        return st;
    }
    try {
        attach(parent, name, child);
    } catch (...) {
        free_orphan(child); // not attached: still ours to free
        return emi_fail(EM_ENOMEM, "em_nn_add: out of memory");
    }
    return EM_OK;
}

extern "C" em_nn *em_nn_child(const em_nn *m, const char *name)
{
    if (emi_check(__func__, 1, m) != EM_OK || name == nullptr)
        return nullptr;
    EM_TRY
        const em_nn *cur = m;
        const char *p = name;
        while (cur != nullptr) {
            const char *dot = std::strchr(p, '.');
            std::string part = dot == nullptr ? std::string(p) : std::string(p, static_cast<size_t>(dot - p));
            const em_nn *next = nullptr;
            for (const auto &c : cur->children)
                if (c.first == part)
                    next = c.second;
            if (dot == nullptr)
                return mut(next);
            cur = next;
            p = dot + 1;
        }
        return nullptr;
    EM_CATCH(nullptr)
}

// ---- layers written in C --------------------------------------------------------------------------------

extern "C" em_nn *em_nn_custom(const em_nn_ops *ops, void *state)
{
    const char *why = nullptr;
    if (ops == nullptr)
        why = "ops is NULL";
    else if (ops->version <= 0 || ops->version > EM_NN_OPS_VERSION)
        why = "ops->version is not a version this library knows (set it to EM_NN_OPS_VERSION)";
    else if (ops->forward == nullptr)
        why = "ops->forward is NULL";
    if (why != nullptr) {
        // destroy sits where version 1 put it in every version (entries are only appended).
        if (ops != nullptr && ops->destroy != nullptr)
            ops->destroy(state);
        emi_fail(EM_EINVAL, "em_nn_custom: %s (version %d, this library knows up to %d)", why,
                 ops == nullptr ? 0 : ops->version, EM_NN_OPS_VERSION);
        return nullptr;
    }
    try {
        em_nn *m = make_nn(std::make_shared<custom_module>(), "Custom", nn_tag::custom);
        m->ops = ops;
        m->state = state;
        return m;
    } catch (...) {
        if (ops->destroy != nullptr)
            ops->destroy(state);
        emi_fail(EM_ENOMEM, "em_nn_custom: out of memory");
        return nullptr;
    }
}

extern "C" void *em_nn_state(const em_nn *m)
{
    return emi_check(__func__, 1, m) == EM_OK && m->tag == nn_tag::custom ? m->state : nullptr;
}

extern "C" em_tensor *em_nn_register_parameter(em_nn *m, const char *name, const em_tensor *init)
{
    return register_tensor(__func__, m, name, init, true);
}

extern "C" em_tensor *em_nn_register_buffer(em_nn *m, const char *name, const em_tensor *init)
{
    return register_tensor(__func__, m, name, init, false);
}

// ---- using layers ---------------------------------------------------------------------------------------

extern "C" em_tensor *em_nn_forward(em_nn *m, const em_tensor *x)
{
    if (emi_check(__func__, 1, m, emi_ops_record_null) != EM_OK ||
        emi_check(__func__, 2, x, emi_ops_record_null) != EM_OK)
        return nullptr;
    EM_TRY
        at::Tensor y;
        if (!forward_impl(m, x->t, x, nullptr, &y))
            return nullptr;
        return emi_wrap(std::move(y));
    EM_CATCH(nullptr)
}

extern "C" em_status em_nn_train(em_nn *m, bool mode)
{
    return layer_do(__func__, m, [&](em_nn *l) { l->mod->train(mode); });
}

extern "C" bool em_nn_is_training(const em_nn *m)
{
    if (emi_check(__func__, 1, m) != EM_OK)
        return false;
    EM_TRY
        return m->mod->is_training();
    EM_CATCH(false)
}

extern "C" const char *em_nn_kind(const em_nn *m)
{
    if (m == nullptr)
        return "NULL";
    return emi_check(__func__, 1, m) == EM_OK ? m->kind.c_str() : "(freed)";
}

namespace {

// The parameters' or the buffers' cache, refreshed.
const named_handles &cache_of(const em_nn *m, bool buffers)
{
    refresh(mut(m));
    return buffers ? m->buffers : m->params;
}

size_t cache_size(const char *func, const em_nn *m, bool buffers)
{
    if (emi_check(func, 1, m) != EM_OK)
        return 0;
    return emi_guard<size_t>(func, 0, [&] { return cache_of(m, buffers).handles.size(); });
}

// The i-th entry of a cache (its name or its handle); NULL for a NULL `m` (not recorded) or an
// index out of range (recorded).
template <bool Name>
auto cache_at(const char *func, const em_nn *m, bool buffers, size_t i)
    -> std::conditional_t<Name, const char *, em_tensor *>
{
    using result = std::conditional_t<Name, const char *, em_tensor *>;
    if (emi_check(func, 1, m) != EM_OK)
        return nullptr;
    return emi_guard<result>(func, nullptr, [&]() -> result {
        const named_handles &c = cache_of(m, buffers);
        if (i >= c.handles.size()) {
            emi_fail(EM_EINVAL, "%s: index %zu out of range (the %s has %zu %s)", func, i, m->kind.c_str(),
                     c.handles.size(), buffers ? "buffers" : "parameters");
            return nullptr;
        }
        if constexpr (Name)
            return c.names[i].c_str();
        else
            return c.handles[i];
    });
}

} // namespace

extern "C" size_t em_nn_num_parameters(const em_nn *m)
{
    return cache_size(__func__, m, false);
}

extern "C" size_t em_nn_num_buffers(const em_nn *m)
{
    return cache_size(__func__, m, true);
}

extern "C" em_tensor *em_nn_parameter(const em_nn *m, size_t i)
{
    return cache_at<false>(__func__, m, false, i);
}

extern "C" const char *em_nn_parameter_name(const em_nn *m, size_t i)
{
    return cache_at<true>(__func__, m, false, i);
}

extern "C" em_tensor *em_nn_buffer(const em_nn *m, size_t i)
{
    return cache_at<false>(__func__, m, true, i);
}

extern "C" const char *em_nn_buffer_name(const em_nn *m, size_t i)
{
    return cache_at<true>(__func__, m, true, i);
}

extern "C" em_tensor *em_nn_get(const em_nn *m, const char *name)
{
    if (emi_check(__func__, 1, m) != EM_OK)
        return nullptr;
    if (name == nullptr) {
        emi_fail(EM_EINVAL, "em_nn_get: name is NULL");
        return nullptr;
    }
    EM_TRY
        em_tensor *h = find_named(mut(m), name);
        if (h == nullptr)
            emi_fail(EM_EINVAL, "em_nn_get: the %s has no parameter or buffer named \"%s\" (it has: %s)",
                     m->kind.c_str(), name, some_names(mut(m)).c_str());
        return h;
    EM_CATCH(nullptr)
}

extern "C" em_status em_nn_set(em_nn *m, const char *name, const void *data, em_dtype dtype, size_t count)
{
    if (em_status st = emi_check(__func__, 1, m); st != EM_OK)
        return st;
    if (name == nullptr)
        return emi_fail(EM_EINVAL, "em_nn_set: name is NULL");
    EM_TRY
        em_tensor *h = find_named(m, name);
        if (h == nullptr)
            return emi_fail(EM_EINVAL, "em_nn_set: the %s has no parameter or buffer named \"%s\" (it has: %s)",
                            m->kind.c_str(), name, some_names(m).c_str());
        at::Tensor &t = h->t;
        if (static_cast<int64_t>(count) != t.numel())
            return emi_fail(EM_EINVAL, "em_nn_set: \"%s\" %s holds %lld values, got %zu", name,
                            emi_shape_str(t).c_str(), static_cast<long long>(t.numel()), count);
        if (count > 0 && data == nullptr)
            return emi_fail(EM_EINVAL, "em_nn_set: data is NULL for %zu values of \"%s\"", count, name);
        at::ScalarType st = emi_scalar_type(dtype);
        if (count == 0)
            return EM_OK;
        // from_blob does not copy and does not write: copy_ reads it once, converting dtype and device.
        at::Tensor src = at::from_blob(const_cast<void *>(data), t.sizes(), at::TensorOptions().dtype(st));
        at::NoGradGuard no_grad;
        t.copy_(src);
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" em_params *em_nn_parameters(const em_nn *m)
{
    if (emi_check(__func__, 1, m) != EM_OK)
        return nullptr;
    EM_TRY
        refresh(mut(m));
        std::vector<at::Tensor> ts;
        for (em_tensor *h : m->params.handles)
            ts.push_back(h->t);
        return emi_params_from(ts);
    EM_CATCH(nullptr)
}

extern "C" em_status em_params_add_nn(em_params *p, const em_nn *m)
{
    if (em_status st = emi_check(__func__, 1, p); st != EM_OK)
        return st;
    if (em_status st = emi_check(__func__, 2, m); st != EM_OK)
        return st;
    EM_TRY
        refresh(mut(m));
        p->items.reserve(p->items.size() + m->params.handles.size());
        for (em_tensor *h : m->params.handles)
            p->items.push_back(emi_borrowed(h->t));
        return EM_OK;
    EM_CATCH(EM_ENOMEM)
}

extern "C" em_status em_nn_to_device(em_nn *m, em_device device)
{
    return layer_do(__func__, m, [&](em_nn *l) {
        at::Device d = emi_device(device);
        apply_in_place(l, [&](const at::Tensor &t) { return t.to(d); });
    });
}

extern "C" em_status em_nn_to_dtype(em_nn *m, em_dtype dtype)
{
    if (em_status st = emi_check(__func__, 1, m); st != EM_OK)
        return st;
    if (dtype != EM_F32 && dtype != EM_F64 && dtype != EM_F16 && dtype != EM_BF16)
        return emi_fail(EM_EINVAL, "em_nn_to_dtype: nn.Module.to only accepts floating point dtypes, but got %s",
                        em_dtype_name(dtype));
    return layer_do(__func__, m, [&](em_nn *l) {
        at::ScalarType st = emi_scalar_type(dtype);
        // Only floating point tensors change (torch: Module.to(dtype)); num_batches_tracked stays int64.
        apply_in_place(l, [&](const at::Tensor &t) { return t.is_floating_point() ? t.to(st) : t; });
    });
}

extern "C" em_status em_nn_zero_grad(em_nn *m, bool set_to_none)
{
    return layer_do(__func__, m, [&](em_nn *l) {
        // torch 1.13 nn.Module.zero_grad, line for line.
        for (auto &p : l->mod->parameters(true))
            if (p.defined())
                emi_zero_grad(p, set_to_none);
    });
}

extern "C" void em_nn_free(em_nn *m)
{
    if (m == nullptr)
        return;
    if (!emi_live(m)) {
        emi_fail(EM_EMISUSE, emi_tag_of(m) == EMI_MAGIC_FREED
                                 ? "em_nn_free: this layer was already freed (a double free, or it was freed with "
                                   "the container that held it)"
                                 : "em_nn_free: this pointer is not a live layer handle (freed long ago, or of "
                                   "another kind)");
        return;
    }
    if (m->parent != nullptr) {
        emi_fail(EM_EINVAL, "em_nn_free: this %s layer belongs to a container (a %s); it is freed with it",
                 m->kind.c_str(), m->parent->kind.c_str());
        return;
    }
    destroy_tree(m);
}
