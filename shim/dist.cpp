// shim/dist.cpp: c10d for the DDP strategy - the rendezvous store (TCPStore), the process group
// (ProcessGroupGloo, or ProcessGroupNCCL where libtorch has it: USE_C10D_NCCL), the collectives src/ needs, and the gradient reducer (torch's Reducer design:
// flattened buckets whose all-reduce starts from autograd hooks as the bucket fills). The only file
// that includes c10d headers; the 1.13 / 2.x differences are in compat.h.
//
// torch: torch/distributed/distributed_c10d.py (init_process_group, the default group: one per process;
// is_nccl_available), Lightning's strategies/ddp.py (setup_environment: the device first, then the group),
// torch/nn/parallel/distributed.py and csrc/distributed/c10d/reducer.cpp (buckets of 25 MiB in reverse
// parameter order, launched in bucket order, gradients divided by the world size).
#include "internal.hpp"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>

namespace {

// ProcessGroup (1.13) or Backend (2.x): what ProcessGroupGloo and ProcessGroupNCCL both derive from.
using pg_base = emi::compat::pg_base<c10d::ProcessGroupGloo>;

// The default process group of this process (torch.distributed's WORLD): made once, kept until exit.
struct dist_state {
    c10::intrusive_ptr<c10d::Store> store;        // the TCPStore (server on rank 0 unless an agent hosts it)
    c10::intrusive_ptr<c10d::Store> prefixed;     // "ember" prefix: torchrun's agent store has keys of its own
    c10::intrusive_ptr<pg_base> pg;
    emi_dist_backend backend = EMI_DIST_GLOO;
    at::Device device = at::kCPU;                 // where collectives on C data run: the CPU, or NCCL's GPU
    int rank = -1, world = 0;
    int64_t grad_collectives = 0;                 // gradient bucket all-reduces launched
    std::mutex mu;                                // grad_collectives, from autograd threads
};

dist_state *state()
{
    static dist_state *s = new dist_state(); // reachable until exit: no destructor ordering at exit
    return s;
}

std::chrono::milliseconds to_ms(double seconds)
{
    return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

c10d::ReduceOp reduce_op(emi_dist_op op)
{
    switch (op) {
    case EMI_DIST_MAX:
        return c10d::ReduceOp::MAX;
    case EMI_DIST_MIN:
        return c10d::ReduceOp::MIN;
    default:
        return c10d::ReduceOp::SUM;
    }
}

em_status no_group(const char *func)
{
    return emi_fail(EM_ESTATE, "%s: no process group (the trainer makes one when a DDP fit starts)", func);
}

} // namespace

// ---- the store and the group ------------------------------------------------------------------------------

extern "C" em_status emi_dist_store_open(const char *host, int port, bool server, int world, double timeout_s,
                                         int *bound_port)
{
    dist_state *d = state();
    if (d->store)
        return emi_fail(EM_ESTATE, "emi_dist_store_open: the rendezvous store is open already");
    try {
        c10d::TCPStoreOptions o = emi::compat::tcp_store_options<c10d::TCPStoreOptions>();
        o.port = static_cast<std::uint16_t>(port);
        o.isServer = server;
        o.numWorkers = static_cast<std::size_t>(world);
        o.waitWorkers = false; // rank 0 starts the other ranks after the store is up
        o.timeout = to_ms(timeout_s);
        auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
        if (bound_port != nullptr)
            *bound_port = store->getPort();
        d->store = store;
        d->prefixed = c10::make_intrusive<c10d::PrefixStore>("ember", d->store);
        return EM_OK;
    } catch (const std::bad_alloc &) {
        return emi_fail(EM_ENOMEM, "emi_dist_store_open: out of memory");
    } catch (const std::exception &e) {
        std::string what = e.what();
        if (auto *ce = dynamic_cast<const c10::Error *>(&e))
            what = ce->what_without_backtrace();
        if (what.find("Address already in use") != std::string::npos || what.find("errno: 98") != std::string::npos)
            return emi_fail(EM_ETORCH, "the rendezvous port %d on %s is already in use: set MASTER_PORT to a free "
                                       "port (or unset it with ember's own launcher, which then picks one)",
                            port, host);
        return emi_fail(EM_ETORCH, "cannot %s the rendezvous store at %s:%d: %s", server ? "open" : "reach", host, port,
                        what.c_str());
    } catch (...) {
        return emi_fail(EM_ETORCH, "emi_dist_store_open: unknown C++ exception");
    }
}

extern "C" bool emi_dist_backend_available(emi_dist_backend b)
{
    switch (b) {
    case EMI_DIST_GLOO:
        return true; // dist.cpp is built with ProcessGroupGloo: every libtorch ember builds against has it
    case EMI_DIST_NCCL:
#ifdef USE_C10D_NCCL
        return true;
#else
        return false;
#endif
    }
    return false;
}

#ifdef USE_C10D_NCCL
namespace {
// ProcessGroupNCCL on the current device. It connects lazily (at the first collective, which
// emi_dist_setup runs at once); its timeout bounds each collective once blocking wait is on.
c10::intrusive_ptr<pg_base> make_nccl(const c10::intrusive_ptr<c10d::Store> &store, int rank, int world,
                                      double timeout_s)
{
    // a user's own setting (0 included) is kept; README "DDP backends" says what it changes
    setenv(emi::compat::nccl_blocking_wait_env, "1", 0);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = to_ms(timeout_s);
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
}
} // namespace
#endif

extern "C" em_status emi_dist_group_open(const char *host, int rank, int world, double timeout_s,
                                         emi_dist_backend backend, int cuda_device)
{
    dist_state *d = state();
    if (!d->store)
        return emi_fail(EM_ESTATE, "emi_dist_group_open: no rendezvous store");
    if (!emi_dist_backend_available(backend))
        return emi_fail(EM_EUNSUPPORTED, "emi_dist_group_open: the linked libtorch %s was built without NCCL",
                        TORCH_VERSION);
    if (backend == EMI_DIST_NCCL && cuda_device < 0)
        return emi_fail(EM_EUNSUPPORTED, "emi_dist_group_open: NCCL needs a CUDA device");
    EM_TRY
        if (cuda_device >= 0) // torch.cuda.set_device(root_device): NCCL's communicator binds to it
            c10::impl::getDeviceGuardImpl(at::kCUDA)->setDevice(
                at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_device)));
#ifdef USE_C10D_NCCL
        if (backend == EMI_DIST_NCCL) {
            d->pg = make_nccl(d->prefixed, rank, world, timeout_s);
            d->backend = EMI_DIST_NCCL;
            d->device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_device));
            d->rank = rank;
            d->world = world;
            return EM_OK;
        }
#endif
        auto opts = c10d::ProcessGroupGloo::Options::create(to_ms(timeout_s));
        const char *ifname = std::getenv("GLOO_SOCKET_IFNAME");
        std::string h = host;
        if (ifname != nullptr && *ifname != '\0')
            opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
        else if (h == "127.0.0.1" || h == "localhost" || h == "::1")
            opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(h));
        else
            opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        opts->threads = 2;
        d->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(d->prefixed, rank, world, opts);
        d->backend = EMI_DIST_GLOO;
        d->device = at::kCPU;
        d->rank = rank;
        d->world = world;
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" bool emi_dist_active(void)
{
    return static_cast<bool>(state()->pg);
}

extern "C" int64_t emi_dist_grad_collectives(void)
{
    dist_state *d = state();
    std::lock_guard<std::mutex> lock(d->mu);
    return d->grad_collectives;
}

// ---- collectives on C data ---------------------------------------------------------------------------------

extern "C" em_status emi_dist_allreduce_f64(double *values, size_t n, emi_dist_op op)
{
    dist_state *d = state();
    if (!d->pg)
        return no_group(__func__);
    EM_TRY
        at::Tensor t = at::from_blob(values, {static_cast<int64_t>(n)}, at::kDouble).to(d->device, false, true);
        std::vector<at::Tensor> v{t};
        c10d::AllreduceOptions o;
        o.reduceOp = reduce_op(op);
        d->pg->allreduce(v, o)->wait();
        at::Tensor back = t.cpu(); // waits for NCCL's stream
        std::memcpy(values, back.data_ptr<double>(), n * sizeof(double));
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" em_status emi_dist_broadcast_bytes(void *buf, size_t n, int root)
{
    dist_state *d = state();
    if (!d->pg)
        return no_group(__func__);
    if (n == 0)
        return EM_OK;
    EM_TRY
        at::Tensor t = at::from_blob(buf, {static_cast<int64_t>(n)}, at::kByte).to(d->device, false, true);
        std::vector<at::Tensor> v{t};
        c10d::BroadcastOptions o;
        o.rootRank = root;
        d->pg->broadcast(v, o)->wait();
        at::Tensor back = t.cpu();
        std::memcpy(buf, back.data_ptr(), n);
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" em_status emi_dist_barrier(void)
{
    dist_state *d = state();
    if (!d->pg)
        return no_group(__func__);
    EM_TRY
        c10d::BarrierOptions o;
        if (d->device.is_cuda()) // NCCL's barrier all-reduces on a device: this rank's, not a guessed one
            o.device_ids = {d->device.index()};
        d->pg->barrier(o)->wait();
        if (d->device.is_cuda()) // wait() orders NCCL's stream only: the barrier holds the CPU too
            at::ones({1}, at::TensorOptions().device(d->device)).cpu();
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

// Rank `root`'s values of the tensors, in place on every rank (DDP's _sync_module_states): one
// broadcast per dtype of the tensors flattened together. Under no_grad: parameters are leaves.
extern "C" em_status emi_dist_broadcast_tensors(em_tensor *const *ts, size_t n, int root)
{
    dist_state *d = state();
    if (!d->pg)
        return no_group(__func__);
    for (size_t i = 0; i < n; i++)
        if (em_status s = emi_check(__func__, 1, ts[i], true); s != EM_OK)
            return s;
    EM_TRY
        at::NoGradGuard ng;
        std::vector<bool> done(n, false);
        for (size_t i = 0; i < n; i++) {
            if (done[i])
                continue;
            std::vector<at::Tensor> group;
            std::vector<size_t> which;
            for (size_t j = i; j < n; j++)
                if (!done[j] && ts[j]->t.scalar_type() == ts[i]->t.scalar_type() &&
                    ts[j]->t.device() == ts[i]->t.device()) {
                    group.push_back(ts[j]->t.reshape({-1}));
                    which.push_back(j);
                    done[j] = true;
                }
            std::vector<at::Tensor> flat{at::cat(group)};
            if (d->backend == EMI_DIST_NCCL && !flat[0].is_cuda()) // NCCL moves GPU tensors only
                flat[0] = flat[0].to(d->device);
            c10d::BroadcastOptions o;
            o.rootRank = root;
            d->pg->broadcast(flat, o)->wait();
            int64_t off = 0;
            for (size_t j : which) {
                at::Tensor &t = ts[j]->t;
                t.copy_(flat[0].narrow(0, off, t.numel()).view(t.sizes()));
                off += t.numel();
            }
        }
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

// ---- the gradient reducer ----------------------------------------------------------------------------------
//
// Buckets hold parameters in reverse order (the order backward produces their gradients), closed
// once they reach `first_bucket_bytes` (the first) or `bucket_bytes` (the others), one dtype and
// device each. Each bucket owns one flat tensor for its life: the parameters' gradients side by side,
// then one flag per parameter (1/world where the rank has a gradient: a parameter that no rank has a
// gradient for keeps none). As torch's gradient_as_bucket_view, a synced parameter's .grad IS its view
// into the flat tensor from then on: the backward accumulates into the bucket in place, the average
// lands there, and nothing is copied in or out (a gradient that is not the view - the first backward,
// or after zero_grad(set_to_none) - is copied in once and replaced by the view). While armed
// (emi_dist_reducer_prepare), a post-hook on each parameter's gradient accumulator marks it ready;
// when every parameter of the next bucket in order is ready, its gradients are divided by the world
// size and its all-reduce starts (asynchronously: the backward goes on). emi_dist_reducer_finish
// launches what did not fill (parameters without a gradient this backward) and waits.
//
// EMBER_DDP_PROFILE=1 in the environment: when the reducer is freed (the end of fit) it reports, as a
// notice, per synced backward: the CPU time of the launching thread in the hooks (preparing and
// launching buckets), the wall time spent waiting for the all-reduces and finishing, and the CPU time
// of the process's other threads (Gloo's) over the fit.

namespace {

struct bucket {
    std::vector<size_t> params;  // indices into reducer::params
    std::vector<at::Tensor> views; // per parameter: its gradient's place in flat (the parameter's shape)
    int64_t numel = 0;
    size_t pending = 0;          // parameters not ready yet (while armed)
    at::Tensor flat;             // numel gradients + params.size() flags
    std::vector<float> flags;    // staging for the flags (1/world: the rank has the gradient)
    c10::intrusive_ptr<c10d::Work> work;
};

struct hook_ref {
    std::shared_ptr<torch::autograd::Node> acc; // kept alive so that the hook stays on the live accumulator
    uintptr_t key = 0;
};

using profile_clock = std::chrono::steady_clock;

double cpu_seconds(clockid_t c)
{
    struct timespec ts {};
    clock_gettime(c, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

} // namespace

struct emi_dist_reducer {
    std::vector<at::Tensor> params;
    std::vector<size_t> bucket_of;
    std::vector<bucket> buckets;
    std::vector<hook_ref> hooks; // per parameter; acc null while not registered
    std::vector<bool> ready;
    std::mutex mu;
    bool armed = false;
    size_t next = 0; // the next bucket to launch (buckets launch in order on every rank)
    // shared with the hooks: a hook that fires after the reducer is freed sees null
    std::shared_ptr<emi_dist_reducer *> self;
    // EMBER_DDP_PROFILE: seconds summed over the synced backwards
    bool profile = false;
    int64_t n_synced = 0;
    double t_launch = 0, t_wait = 0, t_finish = 0;   // launch: thread CPU; wait, finish: wall
    double cpu_process0 = 0, cpu_thread0 = 0;         // at emi_dist_reducer_new
};

namespace {

double seconds_since(profile_clock::time_point t0)
{
    return std::chrono::duration<double>(profile_clock::now() - t0).count();
}

// True when g is exactly the bucket view v (same memory, same shape).
bool is_view(const at::Tensor &g, const at::Tensor &v)
{
    return g.defined() && g.is_alias_of(v) && g.data_ptr() == v.data_ptr() && g.sizes() == v.sizes() &&
           g.strides() == v.strides() && g.scalar_type() == v.scalar_type();
}

void launch(emi_dist_reducer *r, bucket &b)
{
    dist_state *d = state();
    double c0 = r->profile ? cpu_seconds(CLOCK_THREAD_CPUTIME_ID) : 0;
    at::NoGradGuard ng;
    double inv = 1.0 / d->world;
    for (size_t j = 0; j < b.params.size(); j++) {
        at::Tensor &p = r->params[b.params[j]];
        const at::Tensor &v = b.views[j];
        const at::Tensor &g = p.grad();
        if (!g.defined()) {
            v.zero_();
            b.flags[j] = 0.0f;
            continue;
        }
        if (!is_view(g, v)) { // the first sync, or a gradient made anew (set_to_none): into the bucket
            v.copy_(g);
            p.mutable_grad() = v;
        }
        b.flags[j] = static_cast<float>(inv);
    }
    at::Tensor grads = b.flat.narrow(0, 0, b.numel);
    grads.mul_(inv);
    b.flat.narrow(0, b.numel, static_cast<int64_t>(b.params.size()))
        .copy_(at::from_blob(b.flags.data(), {static_cast<int64_t>(b.flags.size())}, at::kFloat));
    std::vector<at::Tensor> v{b.flat};
    b.work = d->pg->allreduce(v);
    {
        std::lock_guard<std::mutex> lock(d->mu);
        d->grad_collectives++;
    }
    if (r->profile)
        r->t_launch += cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - c0;
}

// Launch every bucket from r->next on that is complete (or all of them when `all`). Caller holds r->mu.
void launch_ready(emi_dist_reducer *r, bool all)
{
    while (r->next < r->buckets.size() && (all || r->buckets[r->next].pending == 0))
        launch(r, r->buckets[r->next++]);
}

void on_grad_ready(emi_dist_reducer *r, size_t i)
{
    std::lock_guard<std::mutex> lock(r->mu);
    if (!r->armed || r->ready[i])
        return;
    r->ready[i] = true;
    bucket &b = r->buckets[r->bucket_of[i]];
    if (b.pending > 0)
        b.pending--;
    launch_ready(r, false);
}

// Put a hook on the accumulator of every parameter that requires grad now and has none yet (a
// parameter toggled off when the reducer was made gets its hook once it requires grad again).
void register_hooks(emi_dist_reducer *r)
{
    for (size_t i = 0; i < r->params.size(); i++) {
        const at::Tensor &p = r->params[i];
        if (r->hooks[i].acc || !p.requires_grad())
            continue;
        std::shared_ptr<torch::autograd::Node> acc = torch::autograd::impl::grad_accumulator(p);
        if (!acc)
            continue;
        std::weak_ptr<emi_dist_reducer *> self = r->self;
        uintptr_t key = acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
            [self, i](const torch::autograd::variable_list &outputs, const torch::autograd::variable_list &) {
                if (auto s = self.lock(); s && *s != nullptr)
                    on_grad_ready(*s, i);
                return outputs;
            }));
        r->hooks[i] = {acc, key};
    }
}

} // namespace

extern "C" emi_dist_reducer *emi_dist_reducer_new(em_tensor *const *params, size_t n, size_t first_bucket_bytes,
                                                   size_t bucket_bytes)
{
    for (size_t i = 0; i < n; i++)
        if (emi_check(__func__, 1, params[i], true) != EM_OK)
            return nullptr;
    if (!state()->pg) {
        no_group(__func__);
        return nullptr;
    }
    EM_TRY
        auto r = std::make_unique<emi_dist_reducer>();
        r->self = std::make_shared<emi_dist_reducer *>(r.get());
        const char *prof = std::getenv("EMBER_DDP_PROFILE");
        r->profile = prof != nullptr && *prof != '\0' && std::strcmp(prof, "0") != 0;
        if (r->profile) {
            r->cpu_process0 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID);
            r->cpu_thread0 = cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
        }
        for (size_t i = 0; i < n; i++)
            r->params.push_back(params[i]->t);
        r->bucket_of.assign(n, 0);
        r->hooks.resize(n);
        r->ready.assign(n, false);
        // torch's compute_bucket_assignment_by_size: a parameter joins the open bucket of its dtype and
        // device; the bucket closes once it holds at least the limit, which is first_bucket_bytes for
        // the first bucket (the last layers: its all-reduce starts early in the backward) and
        // bucket_bytes after it
        bucket cur;
        size_t bytes = 0;
        for (size_t j = n; j-- > 0;) {
            const at::Tensor &p = r->params[j];
            size_t pb = static_cast<size_t>(p.numel()) * p.element_size();
            if (!cur.params.empty() && (p.scalar_type() != r->params[cur.params[0]].scalar_type() ||
                                        p.device() != r->params[cur.params[0]].device())) {
                r->buckets.push_back(std::move(cur));
                cur = bucket();
                bytes = 0;
            }
            r->bucket_of[j] = r->buckets.size();
            cur.params.push_back(j);
            cur.numel += p.numel();
            bytes += pb;
            if (bytes >= (r->buckets.empty() ? first_bucket_bytes : bucket_bytes)) {
                r->buckets.push_back(std::move(cur));
                cur = bucket();
                bytes = 0;
            }
        }
        if (!cur.params.empty())
            r->buckets.push_back(std::move(cur));
        // each bucket's flat tensor and the views into it (torch's initialize_bucket_views)
        at::NoGradGuard ng;
        for (bucket &b : r->buckets) {
            const at::Tensor &p0 = r->params[b.params[0]];
            b.flat = at::zeros({b.numel + static_cast<int64_t>(b.params.size())}, p0.options().requires_grad(false));
            b.flags.assign(b.params.size(), 0.0f);
            int64_t off = 0;
            for (size_t i : b.params) {
                const at::Tensor &p = r->params[i];
                b.views.push_back(b.flat.narrow(0, off, p.numel()).view(p.sizes()));
                off += p.numel();
            }
        }
        return r.release();
    EM_CATCH(nullptr)
}

extern "C" size_t emi_dist_reducer_num_buckets(const emi_dist_reducer *r)
{
    return r == nullptr ? 0 : r->buckets.size();
}

extern "C" em_status emi_dist_reducer_prepare(emi_dist_reducer *r)
{
    EM_TRY
        register_hooks(r);
        std::lock_guard<std::mutex> lock(r->mu);
        r->armed = true;
        r->next = 0;
        for (bucket &b : r->buckets) {
            b.pending = b.params.size();
            b.work.reset();
        }
        std::fill(r->ready.begin(), r->ready.end(), false);
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" em_status emi_dist_reducer_finish(emi_dist_reducer *r)
{
    EM_TRY
        std::unique_lock<std::mutex> lock(r->mu);
        if (!r->armed)
            return EM_OK;
        r->armed = false;
        em_status st = EM_OK;
        std::string why;
        try {
            launch_ready(r, true);
        } catch (const c10::Error &e) {
            st = EM_ETORCH;
            why = e.what_without_backtrace();
        }
        lock.unlock();
        profile_clock::time_point t0;
        if (r->profile)
            t0 = profile_clock::now();
        // wait for every launched bucket, also after a failure (no work left running on the buckets)
        for (bucket &b : r->buckets) {
            if (!b.work)
                continue;
            try {
                b.work->wait();
            } catch (const c10::Error &e) {
                if (st == EM_OK) {
                    st = EM_ETORCH;
                    why = e.what_without_backtrace();
                }
            }
        }
        if (r->profile) {
            r->t_wait += seconds_since(t0);
            t0 = profile_clock::now();
        }
        if (st != EM_OK) {
            for (bucket &b : r->buckets)
                b.work.reset();
            return emi_fail(st, "gradient all-reduce: %s", why.c_str());
        }
        // the averages are in place (every gradient a rank had is its view); a parameter without a
        // gradient here that another rank had gets its view (the average), one that no rank had
        // keeps none
        at::NoGradGuard ng;
        for (bucket &b : r->buckets) {
            b.work.reset();
            at::Tensor flags = b.flat.narrow(0, b.numel, static_cast<int64_t>(b.params.size()))
                                   .to(at::kCPU, at::kFloat)
                                   .contiguous();
            const float *f = flags.data_ptr<float>();
            for (size_t j = 0; j < b.params.size(); j++) {
                at::Tensor &p = r->params[b.params[j]];
                if (f[j] > 0 && !is_view(p.grad(), b.views[j])) {
                    if (p.grad().defined())
                        p.mutable_grad().copy_(b.views[j]);
                    else
                        p.mutable_grad() = b.views[j];
                }
            }
        }
        if (r->profile) {
            r->t_finish += seconds_since(t0);
            r->n_synced++;
        }
        return EM_OK;
    EM_CATCH(EM_ETORCH)
}

extern "C" void emi_dist_reducer_free(emi_dist_reducer *r)
{
    if (r == nullptr)
        return;
    try {
        for (bucket &b : r->buckets)
            if (b.work)
                b.work->wait();
    } catch (...) {
    }
    try {
        *r->self = nullptr;
        for (hook_ref &h : r->hooks)
            if (h.acc)
                h.acc->del_post_hook(h.key);
    } catch (...) {
    }
    if (r->profile && r->n_synced > 0) {
        double k = 1e6 / static_cast<double>(r->n_synced);
        double others = (cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - r->cpu_process0) -
                        (cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - r->cpu_thread0);
        emi_info("EMBER_DDP_PROFILE rank %d: %lld synced backwards, %zu bucket(s); per backward: %.1f us CPU preparing "
                 "and launching buckets (hooks), %.1f us waiting for the all-reduces, %.1f us finishing; %.1f us CPU "
                 "of the other threads (Gloo)",
                 state()->rank, static_cast<long long>(r->n_synced), r->buckets.size(), r->t_launch * k,
                 r->t_wait * k, r->t_finish * k, others * k);
    }
    delete r;
}
