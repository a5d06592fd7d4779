// raw_loop.cpp: the floor - the same training written by hand against libtorch's C++ API.
//
// zero_grad, forward, loss, backward, (clip_grad_norm_), step: what any loop built on libtorch has to
// do per batch, with nothing else around it. Batches are views (narrow) of one tensor, as ember's
// in-memory loader makes them. With accumulate_grad_batches A, the loss is divided by A, gradients
// are zeroed at the start of each window and the optimizer steps at the end of each window and on
// the last batch, which is what ember's automatic optimization does (Lightning's order).
//
// This file is not part of the library: it may include <torch/torch.h> because it measures libtorch.
#include "bench.h"

#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

struct raw_runner {
    bench_case c;
    const bench_workload *w = nullptr;
    // the layers, in bench_param order; which ones exist depends on the workload
    torch::nn::Linear l1{nullptr}, l2{nullptr}, l3{nullptr};
    torch::nn::Conv2d c1{nullptr}, c2{nullptr};
    std::vector<torch::Tensor> params; // bench_param order
    torch::Tensor x, y;                // the whole data set; batches are narrow() views
};

namespace {

torch::Tensor forward(raw_runner *r, const torch::Tensor &x)
{
    switch (r->w->id) {
    case WL_TINY_MLP:
        return r->l2->forward(torch::tanh(r->l1->forward(x)));
    case WL_MID_MLP:
        return r->l3->forward(torch::relu(r->l2->forward(torch::relu(r->l1->forward(x)))));
    case WL_SMALL_CNN: {
        torch::Tensor h = torch::relu(r->c2->forward(torch::relu(r->c1->forward(x))));
        return r->l3->forward(h.flatten(1));
    }
    case WL_COUNT:
        break;
    }
    throw std::runtime_error("unknown workload");
}

torch::Tensor loss_of(const raw_runner *r, const torch::Tensor &out, const torch::Tensor &y)
{
    if (r->w->loss == LOSS_MSE)
        return torch::nn::functional::mse_loss(out, y);
    return torch::nn::functional::cross_entropy(out, y);
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const raw_runner *r)
{
    if (r->w->optim == OPT_ADAM)
        return std::make_unique<torch::optim::Adam>(r->params, torch::optim::AdamOptions(r->w->lr));
    return std::make_unique<torch::optim::SGD>(r->params,
                                               torch::optim::SGDOptions(r->w->lr).momentum(r->w->momentum));
}

void build(raw_runner *r)
{
    const bench_workload *w = r->w;
    switch (w->id) {
    case WL_TINY_MLP:
        r->l1 = torch::nn::Linear(16, 32);
        r->l2 = torch::nn::Linear(32, 1);
        r->params = {r->l1->weight, r->l1->bias, r->l2->weight, r->l2->bias};
        break;
    case WL_MID_MLP:
        r->l1 = torch::nn::Linear(256, 512);
        r->l2 = torch::nn::Linear(512, 512);
        r->l3 = torch::nn::Linear(512, 10);
        r->params = {r->l1->weight, r->l1->bias, r->l2->weight, r->l2->bias, r->l3->weight, r->l3->bias};
        break;
    case WL_SMALL_CNN:
        r->c1 = torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 8, 3));
        r->c2 = torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 16, 3).stride(2));
        r->l3 = torch::nn::Linear(16 * 12 * 12, 10);
        r->params = {r->c1->weight, r->c1->bias, r->c2->weight, r->c2->bias, r->l3->weight, r->l3->bias};
        break;
    case WL_COUNT:
        throw std::runtime_error("unknown workload");
    }
    if (r->params.size() != w->n_params)
        throw std::runtime_error("parameter count differs from the workload table");
}

// Copy the generated weights into the parameters (bench_param order), checking every shape.
void set_weights(raw_runner *r, const bench_data *d)
{
    torch::NoGradGuard no_grad;
    size_t off = 0;
    for (size_t i = 0; i < r->params.size(); i++) {
        const bench_param &bp = r->w->params[i];
        std::vector<int64_t> shape(bp.shape, bp.shape + bp.ndim);
        if (r->params[i].sizes() != torch::IntArrayRef(shape))
            throw std::runtime_error(std::string("shape of ") + bp.name + " differs from the workload table");
        int64_t n = r->params[i].numel();
        r->params[i].copy_(torch::from_blob(d->weights + off, shape, torch::kFloat));
        off += static_cast<size_t>(n);
    }
    if (off != d->n_weights)
        throw std::runtime_error("weight buffer size differs from the parameters");
}

} // namespace

extern "C" void raw_set_threads(int n)
{
    at::set_num_threads(n);
}

extern "C" int raw_num_threads(void)
{
    return at::get_num_threads();
}

extern "C" raw_runner *raw_new(const bench_case *c, const bench_data *d)
{
    auto r = std::make_unique<raw_runner>();
    try {
        r->c = *c;
        r->w = c->w;
        build(r.get());
        set_weights(r.get(), d);
        std::vector<int64_t> xs{d->rows};
        xs.insert(xs.end(), r->w->x_row_shape, r->w->x_row_shape + r->w->x_ndim);
        r->x = torch::from_blob(d->x, xs, torch::kFloat).clone();
        if (r->w->loss == LOSS_MSE)
            r->y = torch::from_blob(d->y_f32, {d->rows, r->w->classes}, torch::kFloat).clone();
        else
            r->y = torch::from_blob(d->y_i64, {d->rows}, torch::kLong).clone();
    } catch (const std::exception &e) {
        std::fprintf(stderr, "ember-bench: raw loop setup failed: %s\n", e.what());
        return nullptr;
    }
    return r.release();
}

extern "C" double raw_run(raw_runner *r)
{
    try {
        const int64_t steps = r->c.steps, acc = r->c.accumulate, batch = r->w->batch;
        const double t0 = bench_now();
        for (torch::Tensor &p : r->params) // em_trainer_fit starts with zero_grad(set_to_none=True)
            p.mutable_grad().reset();
        std::unique_ptr<torch::optim::Optimizer> opt = make_optimizer(r);
        for (int64_t i = 0; i < steps; i++) {
            if (i % acc == 0)
                opt->zero_grad();
            torch::Tensor x = r->x.narrow(0, i * batch, batch);
            torch::Tensor y = r->y.narrow(0, i * batch, batch);
            torch::Tensor loss = loss_of(r, forward(r, x), y);
            if (acc > 1)
                loss = loss / static_cast<double>(acc);
            loss.backward();
            if ((i + 1) % acc == 0 || i + 1 == steps) {
                if (r->c.clip)
                    torch::nn::utils::clip_grad_norm_(r->params, BENCH_CLIP_NORM);
                opt->step();
            }
        }
        return bench_now() - t0;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "ember-bench: raw loop failed: %s\n", e.what());
        return -1.0;
    }
}

extern "C" bool raw_weights(const raw_runner *r, float *out, size_t n)
{
    size_t off = 0;
    for (const torch::Tensor &p : r->params) {
        torch::Tensor c = p.detach().contiguous();
        size_t k = static_cast<size_t>(c.numel());
        if (off + k > n)
            return false;
        std::memcpy(out + off, c.data_ptr<float>(), k * sizeof(float));
        off += k;
    }
    return off == n;
}

extern "C" void raw_free(raw_runner *r)
{
    delete r;
}
