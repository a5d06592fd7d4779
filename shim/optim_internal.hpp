// shim/optim_internal.hpp: the C++ side of em_optimizer, shared by shim/*.cpp. Never included by src/
// (src/ reaches wrappers through emi_optimizer_wrap in backend.h).
//
// Only shim/optim.cpp includes libtorch's C++ optimizer headers (<torch/optim/*.h>, as costly as
// <torch/torch.h>): this header forward-declares torch::optim::Optimizer, so em_optimizer's
// constructor and destructor live in shim/optim.cpp.
#pragma once

#include "internal.hpp"
#include "lbfgs.hpp"

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace torch {
namespace optim {
class Optimizer;
} // namespace optim
} // namespace torch

// What an em_optimizer is.
enum emi_optimizer_kind : int {
    EMI_OPT_TORCH = 0,   // libtorch's C++ optimizer in torch_opt (SGD, Adam, AdamW, RMSprop, Adagrad)
    EMI_OPT_LBFGS = 1,   // ember's port of lbfgs.py in lbfgs
    EMI_OPT_C = 2,       // written in C: ops + state, hyper-parameters in hparams
    EMI_OPT_WRAPPER = 3, // step = ops->step(self, closure); everything else forwards to inner
};

// Which libtorch optimizer torch_opt holds (decides the concrete options type of its groups).
enum emi_torch_optim : int {
    EMI_TORCH_SGD = 0,
    EMI_TORCH_ADAM,
    EMI_TORCH_ADAMW,
    EMI_TORCH_RMSPROP,
    EMI_TORCH_ADAGRAD,
};

struct em_optimizer {
    static constexpr uint32_t kMagic = EMI_MAGIC_OPTIMIZER;
    static constexpr const char *kNoun = "optimizer";
    uint32_t magic = kMagic; // first: the handle armor (internal.hpp)
    emi_optimizer_kind kind = EMI_OPT_TORCH;
    emi_torch_optim builtin = EMI_TORCH_SGD; // kind == EMI_OPT_TORCH only
    std::string name;                        // "SGD", ..., or ops->name

    std::unique_ptr<torch::optim::Optimizer> torch_opt; // EMI_OPT_TORCH
    std::unique_ptr<emi_lbfgs> lbfgs;                   // EMI_OPT_LBFGS

    // EMI_OPT_C and EMI_OPT_WRAPPER
    const em_optimizer_ops *ops = nullptr;
    void *state = nullptr; // freed with ops->destroy
    // EMI_OPT_C: the hyper-parameters of each group, and the defaults a new group starts from
    // ("lr" from em_optimizer_new, plus each name the first time em_optimizer_set creates it).
    std::vector<std::map<std::string, double>> hparams;
    std::map<std::string, double> c_defaults;

    // The parameters of each group (borrowed handles, returned by em_optimizer_group_params); empty
    // for a wrapper. The tensors are the ones torch_opt / lbfgs update.
    std::vector<em_params *> groups;

    int64_t step_count = 0; // successful em_optimizer_step calls (a wrapper reports inner's)
    em_optimizer *inner = nullptr; // EMI_OPT_WRAPPER: the optimizer it forwards to (not owned)
    bool trainer_owned = false; // handed to a trainer: em_optimizer_free refuses it (emi_optimizer_set_owned)
    // torch's `maximize` per group (EMI_OPT_TORCH): 1.13's C++ optimizers lack it; the step negates
    // those groups' gradients around libtorch's update (Python uses -grad; negation is exact).
    std::vector<char> maximize;
    bool default_maximize = false; // what a new group's maximize starts from

    em_optimizer();
    ~em_optimizer(); // frees groups, calls ops->destroy(state); never frees inner
    em_optimizer(const em_optimizer &) = delete;
    em_optimizer &operator=(const em_optimizer &) = delete;
};

// The optimizer that holds the parameters: follows `inner` through wrappers. Never NULL for non-NULL.
em_optimizer *emi_optimizer_base(em_optimizer *opt);
const em_optimizer *emi_optimizer_base(const em_optimizer *opt);

// Every parameter of every group, in group order (for clipping, AMP unscaling, DDP all-reduce).
std::vector<at::Tensor> emi_optimizer_params(const em_optimizer *opt);
