#!/usr/bin/env python3
"""Writes the DDP case skeletons (tests/conformance/cases/ddp_*.json except the public
ddp_cpu_accumulate2) that record.py then records with the real Lightning.

usage: ddp_cases.py OUTDIR            writes OUTDIR/<name>.json without `expected`
       record.py OUTDIR/<name>.json   fills `expected` (one case per process: Lightning's DDP launcher)

Everything a case needs is written explicitly: data and initial weights come from torch generators
seeded here and rounded as the public case's are (data to 4 decimals, stored as float32), so the
skeletons are the same on every machine. The layout of each file follows ddp_cpu_accumulate2.json.
"""
import json
import sys

import torch

COMMON_TRAINER = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                  "enable_model_summary": False, "deterministic": True, "num_sanity_val_steps": 0}


def f32list(t):
    return [float(v) for v in t.to(torch.float32).reshape(-1).tolist()]


def data(seed, n, batch_size, in_features=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.round(torch.randn(n, in_features, generator=g) * 10000) / 10000
    w = torch.tensor([[0.5], [-0.3], [0.2], [0.1]])
    y = torch.round((torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=g)) * 10000) / 10000
    return {"x": [f32list(r) for r in x], "y": [f32list(r) for r in y], "y_dtype": "float32", "num_samples": n,
            "batch_size": batch_size, "shuffle": False, "drop_last": False}


def weights(seed, hidden):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    return {f"net.{n}": {"shape": list(p.shape), "values": f32list(p.detach())} for n, p in net.named_parameters()}


def model(hidden):
    return {"net": [{"type": "Linear", "in_features": 4, "out_features": hidden, "bias": True}, {"type": "Tanh"},
                    {"type": "Linear", "in_features": hidden, "out_features": 1, "bias": True}]}


def sgd(lr, momentum=0.0, weight_decay=0.0):
    hp = {"lr": lr, "momentum": momentum, "dampening": 0, "weight_decay": weight_decay, "nesterov": False,
          "maximize": False, "foreach": None, "differentiable": False}
    return {"type": "SGD", "param_groups": [dict({"params": PARAMS}, **hp)], "defaults": hp}


def adam(lr):
    hp = {"lr": lr, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0, "amsgrad": False, "maximize": False,
          "foreach": None, "capturable": False, "differentiable": False, "fused": None}
    return {"type": "Adam", "param_groups": [dict({"params": PARAMS}, **hp)], "defaults": hp}


PARAMS = ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]


def trainer_line(tr):
    args = ", ".join(f"{k}={v!r}" for k, v in tr.items() if k != "callbacks")
    return f"L.Trainer({args})"


def early_stopping(**kw):
    args = {"monitor": "val_loss", "min_delta": 0.0, "patience": 3, "verbose": False, "mode": "min", "strict": True,
            "check_finite": True, "stopping_threshold": None, "divergence_threshold": None,
            "check_on_train_epoch_end": None, "log_rank_zero_only": False}
    args.update(kw)
    call = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    return dict({"type": "EarlyStopping"}, **args, python=f"EarlyStopping({call})")


def case(name, description, *, n, batch_size, trainer, seed, hidden=8, optimizer=None, schedulers=(),
         behaviour=None, val=None, automatic=True, callbacks=()):
    tr = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}
    tr.update(trainer)
    tr.update(COMMON_TRAINER)
    if behaviour is None or behaviour["kind"] == "ddp_indexed":
        tr["use_distributed_sampler"] = False
    tr["callbacks"] = list(callbacks)
    d = {"train": data(seed, n, batch_size)}
    if val is not None:
        d["val"] = data(seed + 1000, val[0], val[1])
    return {
        "name": name,
        "description": description,
        "reference": {"lightning": "2.2.5", "torch": "1.13.1", "device": "cpu", "dtype": "float32",
                      "precision": "32-true", "distributed": "gloo"},
        "automatic_optimization": automatic,
        "behaviour": behaviour or {"kind": "ddp_indexed", "sampler_shuffle": False, "sampler_drop_last": False},
        "model": model(hidden),
        "loss": "mse_loss",
        "trainer": tr,
        "optimizers": [optimizer or sgd(0.1, 0.9)],
        "lr_schedulers": list(schedulers),
        "data": d,
        "initial_weights": weights(seed, hidden),
        "tolerance": {"rtol": 1e-05, "atol": 1e-06, "reason": "float32; all-reduce of two float32 gradients"},
        "python_source": {"module": "", "trainer": trainer_line(tr), "fit": "trainer.fit(module)"},
    }


def indexed(shuffle=False, drop_last=False, val_metric=None, val_sync_dist=None):
    b = {"kind": "ddp_indexed", "sampler_shuffle": shuffle, "sampler_drop_last": drop_last}
    if val_metric is not None:
        b["val_metric"] = val_metric
        b["val_sync_dist"] = val_sync_dist
    return b


CASES = [
    case("ddp_drop_last_odd_accumulate3",
         "ddp_indexed, 21 rows, shuffle false, drop_last true: the list is truncated to 20 (row 20 is never "
         "seen), 10 rows per rank, batch_size 3 -> 3, 3, 3, 1. accumulate_grad_batches 3: all-reduce only on "
         "the stepping batches (batch_idx 2 and the last, single-batch window 3). Adam, 2 epochs; "
         "estimated_stepping_batches = ceil(4/3)*2 = 4.",
         n=21, batch_size=3, seed=12, trainer={"max_epochs": 2, "accumulate_grad_batches": 3},
         optimizer=adam(0.01), behaviour=indexed(drop_last=True)),
    case("ddp_shuffle_pad_3_epochs",
         "ddp_indexed, 23 rows, shuffle true, drop_last false: DistributedSampler permutes 0..22 with "
         "torch.randperm seeded by seed 0 + epoch (Lightning calls set_epoch every epoch, so each epoch has "
         "another order), pads to 24 from the start of the permutation, rank r takes positions r, r+2, ...; "
         "batch_size 5 -> 5, 5, 2. SGD with momentum, 3 epochs.",
         n=23, batch_size=5, seed=13, trainer={"max_epochs": 3}, optimizer=sgd(0.05, 0.9),
         behaviour=indexed(shuffle=True)),
    case("ddp_clip_norm_accumulate2",
         "ddp_indexed, 20 rows (no padding), batch_size 3 -> 3, 3, 3, 1 per rank; accumulate_grad_batches 2 "
         "and Trainer gradient_clip_val 0.3 (norm): Lightning clips the all-reduced (averaged) gradient, the "
         "same on both ranks, once per optimizer step. SGD momentum 0.9, 2 epochs.",
         n=20, batch_size=3, seed=15,
         trainer={"max_epochs": 2, "accumulate_grad_batches": 2, "gradient_clip_val": 0.3,
                  "gradient_clip_algorithm": "norm"}),
    case("ddp_clip_value_pad",
         "ddp_indexed, 19 rows padded to 20 (rank 1's last index is 0), batch_size 4 -> 4, 4, 2; Trainer "
         "gradient_clip_val 0.05, algorithm value: every element of the averaged gradient clamped to "
         "[-0.05, 0.05]. SGD lr 0.2, 2 epochs.",
         n=19, batch_size=4, seed=16,
         trainer={"max_epochs": 2, "gradient_clip_val": 0.05, "gradient_clip_algorithm": "value"},
         optimizer=sgd(0.2)),
    case("ddp_schedulers_step_and_epoch",
         "ddp_indexed, 21 rows padded, batch_size 3 -> 4 batches per rank; accumulate_grad_batches 2. "
         "Schedulers: StepLR(step_size 1, gamma 0.5) interval epoch, ExponentialLR(gamma 0.9) interval step "
         "frequency 1 (stepped after every optimizer step, not on accumulating batches). SGD lr 0.1, "
         "3 epochs; each rank steps its own schedulers identically.",
         n=21, batch_size=3, seed=17, trainer={"max_epochs": 3, "accumulate_grad_batches": 2},
         optimizer=sgd(0.1),
         schedulers=[{"type": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.5}, "interval": "epoch",
                      "frequency": 1, "optimizer": 0},
                     {"type": "ExponentialLR", "kwargs": {"gamma": 0.9}, "interval": "step", "frequency": 1,
                      "optimizer": 0}]),
    case("ddp_max_steps_mid_epoch",
         "ddp_indexed, 22 rows, batch_size 3 -> 3, 3, 3, 2 per rank; max_steps 6 with max_epochs 3 stops "
         "in the middle of epoch 1 (after its batch_idx 1) on both ranks; on_train_epoch_end still runs for "
         "the interrupted epoch, the epoch-interval StepLR(step_size 1, gamma 0.5) is stepped after epoch 0 "
         "only, and current_epoch ends at 2 (Lightning counts the interrupted epoch). SGD momentum.",
         n=22, batch_size=3, seed=18, trainer={"max_epochs": 3, "max_steps": 6},
         schedulers=[{"type": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.5}, "interval": "epoch",
                      "frequency": 1, "optimizer": 0}]),
    case("ddp_limit_batches_val_sync_plateau",
         "ddp_indexed with validation: train 21 rows padded (11 per rank, batch_size 3 -> 4 batches), "
         "limit_train_batches 3; val 13 rows padded to 14 (7 per rank: rank 1 sees row 0 twice in the epoch "
         "as its padding), batch_size 2 -> 4 val batches, limit_val_batches 0.5 -> 2. validation_step logs "
         "val_loss with sync_dist=True: callback_metrics[val_loss] is the batch-size-weighted mean over "
         "both ranks' validated batches, equal on both ranks, and ReduceLROnPlateau(patience 0, factor 0.5, "
         "threshold 0.3: an epoch must improve by 30% or the lr halves) monitors it. SGD, 4 epochs.",
         n=21, batch_size=3, seed=19, val=(13, 2),
         trainer={"max_epochs": 4, "limit_train_batches": 3, "limit_val_batches": 0.5},
         optimizer=sgd(0.1),
         schedulers=[{"type": "ReduceLROnPlateau",
                      "kwargs": {"mode": "min", "factor": 0.5, "patience": 0, "threshold": 0.3},
                      "interval": "epoch", "frequency": 1, "monitor": "val_loss", "optimizer": 0}],
         behaviour=indexed(val_metric="val_loss", val_sync_dist=True)),
    case("ddp_val_check_interval_local_metric",
         "ddp_indexed with validation: train 24 rows (12 per rank, batch_size 3 -> 4 batches), "
         "val_check_interval 2 (validation after every second training batch, then again at batch 4 = epoch "
         "end); val 9 rows padded to 10 (5 per rank, batch_size 2 -> 2, 2, 1). validation_step logs "
         "val_loss WITHOUT sync_dist: callback_metrics[val_loss] is each rank's own weighted mean, "
         "different on the two ranks (Lightning only warns). accumulate_grad_batches 2, SGD, 2 epochs.",
         n=24, batch_size=3, seed=20, val=(9, 2),
         trainer={"max_epochs": 2, "val_check_interval": 2, "accumulate_grad_batches": 2},
         optimizer=sgd(0.1), behaviour=indexed(val_metric="val_loss", val_sync_dist=False)),
    case("ddp_limit_train_float_accumulate2",
         "ddp_indexed, 25 rows padded to 26 (13 per rank), batch_size 2 -> 7 batches per rank; "
         "limit_train_batches 0.5 -> int(7 * 0.5) = 3 batches per epoch, accumulate_grad_batches 2: steps "
         "at batch_idx 1 and at 2 (the last, single-batch window); estimated_stepping_batches = "
         "ceil(3/2)*3 = 6. Adam, 3 epochs.",
         n=25, batch_size=2, seed=21, trainer={"max_epochs": 3, "limit_train_batches": 0.5,
                                                "accumulate_grad_batches": 2},
         optimizer=adam(0.02)),
    case("ddp_val_check_float_limit_val_int",
         "ddp_indexed with validation: train 23 rows, shuffle true and drop_last true (22 used, 11 per rank, "
         "batch_size 2 -> 6 batches: 5 full and one of 1 row), val_check_interval 0.5 -> validation after "
         "batch_idx 2 and 5 (int(6 * 0.5) = 3 batches apart); val 11 rows padded to 12, batch_size 2 -> 3 "
         "per rank, limit_val_batches 2. val_loss logged with sync_dist=True. Adam, 2 epochs.",
         n=23, batch_size=2, seed=23, val=(11, 2),
         trainer={"max_epochs": 2, "val_check_interval": 0.5, "limit_val_batches": 2}, optimizer=adam(0.01),
         behaviour=indexed(shuffle=True, drop_last=True, val_metric="val_loss", val_sync_dist=True)),
    case("ddp_early_stopping_local_metric_any_rank",
         "ddp_indexed with validation: train 24 rows (12 per rank, batch_size 4 -> 3 batches), val 10 rows "
         "(5 per rank, batch_size 5 -> 1 batch). val_loss is logged WITHOUT sync_dist, so each rank's "
         "EarlyStopping(monitor val_loss, patience 3, stopping_threshold 0.04) sees its own value: "
         "Lightning reduces the callback's decision across ranks with reduce_boolean_decision(all=False), "
         "so as soon as one rank's value passes the threshold, both ranks stop after that epoch (same "
         "global_step, same weights); wait_count and best_score stay per rank. SGD, up to 6 epochs.",
         n=24, batch_size=4, seed=25, val=(10, 5), trainer={"max_epochs": 6}, optimizer=sgd(0.1),
         callbacks=[early_stopping(stopping_threshold=0.04)],
         behaviour=indexed(val_metric="val_loss", val_sync_dist=False)),
    case("ddp_auto_basic_val_injected_accumulation_scheduler",
         "Behaviour auto_basic under DDP with Lightning's injected samplers (use_distributed_sampler true): "
         "training DistributedSampler(shuffle=True, seed 0) on 21 rows (11 per rank, batch_size 3 -> 4 "
         "batches), validation DistributedSampler(shuffle=False) on 9 rows padded to 10 (5 per rank, "
         "batch_size 2 -> 2, 2, 1). GradientAccumulationScheduler({0: 1, 1: 2}): accumulate 1 in epoch 0, "
         "2 from epoch 1 (no all-reduce on the accumulating batches). val_loss logged without sync_dist: "
         "each rank's callback_metrics holds its own mean. SGD momentum, 3 epochs.",
         n=21, batch_size=3, seed=26, val=(9, 2), trainer={"max_epochs": 3},
         callbacks=[{"type": "GradientAccumulationScheduler", "scheduling": {"0": 1, "1": 2},
                     "python": "GradientAccumulationScheduler({0: 1, 1: 2})"}],
         behaviour={"kind": "auto_basic", "val_metric": "val_loss"}),
    case("ddp_early_stopping_in_epoch_synced",
         "ddp_indexed with validation: train 24 rows, shuffle true (12 per rank, batch_size 2 -> 6 "
         "batches), val_check_interval 0.5 -> validation after batch_idx 2 and 5; val 12 rows (6 per rank, "
         "batch_size 3 -> 2 batches), val_loss logged with sync_dist=True (the same on both ranks). "
         "EarlyStopping(monitor val_loss, min_delta 0.01, patience 2): check_on_train_epoch_end resolves to "
         "false (val_check_interval != 1.0), so it checks in on_validation_end; both ranks stop together, "
         "(here the patience runs out at epoch 2's end-of-epoch validation, so both stop after 3 epochs). "
         "SGD lr 0.02, up to 5 epochs.",
         n=24, batch_size=2, seed=27, val=(12, 3),
         trainer={"max_epochs": 5, "val_check_interval": 0.5}, optimizer=sgd(0.02),
         callbacks=[early_stopping(min_delta=0.01, patience=2)],
         behaviour=indexed(shuffle=True, val_metric="val_loss", val_sync_dist=True)),
    case("ddp_manual_raw_optimizer_log",
         "Manual optimization under DDP (manual_accumulate, accumulate 3, raw_optimizer true: the torch "
         "optimizer steps directly, so global_step stays 0) with Lightning's injected training sampler "
         "(shuffle, seed 0) on 20 rows (10 per rank, batch_size 3 -> 3, 3, 3, 1); every manual_backward "
         "all-reduces. train_loss logged every batch without sync_dist: callback_metrics[train_loss] is "
         "each rank's own last loss. ExponentialLR(gamma 0.8) stepped on the last batch of every epoch. "
         "Adam, 2 epochs.",
         n=20, batch_size=3, seed=28, trainer={"max_epochs": 2}, automatic=False, optimizer=adam(0.01),
         schedulers=[{"type": "ExponentialLR", "kwargs": {"gamma": 0.8}, "optimizer": 0}],
         behaviour={"kind": "manual_accumulate", "accumulate": 3, "raw_optimizer": True,
                    "log_loss_as": "train_loss",
                    "scheduler_steps": [{"scheduler": 0, "when": "last_batch_every_n_epochs", "n": 1}]}),
    case("ddp_auto_skip_injected_sampler",
         "Behaviour auto_skip under DDP (training_step returns None when batch_idx % 3 == 1; "
         "optimizer_zero_grad overridden with set_to_none=True, so the step after a None batch skips "
         "every parameter): Trainer keeps use_distributed_sampler (default true), so Lightning replaces "
         "the unshuffled DataLoader's sampler with DistributedSampler(shuffle=True, seed 0, drop_last "
         "False) on the 21 rows (padded to 22, 11 per rank, batch_size 3 -> 3, 3, 3, 2), set_epoch every "
         "epoch. SGD momentum, 3 epochs.",
         n=21, batch_size=3, seed=24, trainer={"max_epochs": 3},
         behaviour={"kind": "auto_skip", "return_none_when": {"rule": "mod", "modulus": 3, "remainder": 1},
                    "zero_grad_set_to_none": True}),
    case("ddp_manual_accumulate2_auto_sampler",
         "Manual optimization under DDP (behaviour manual_accumulate, accumulate 2): Trainer keeps "
         "use_distributed_sampler (default true), so Lightning replaces the unshuffled DataLoader's sampler "
         "with DistributedSampler(shuffle=True, seed 0, drop_last False) on the 21 training rows (padded to "
         "22, 11 per rank, batch_size 4 -> 4, 4, 3), set_epoch every epoch. Every manual_backward "
         "all-reduces (manual optimization does not skip the sync on accumulating batches); step + "
         "zero_grad through the Lightning optimizer at batch_idx 1 and 2; StepLR(step_size 2, gamma 0.5) "
         "stepped by the user every 2 batches. SGD momentum, 2 epochs.",
         n=21, batch_size=4, seed=22, trainer={"max_epochs": 2}, automatic=False,
         schedulers=[{"type": "StepLR", "kwargs": {"step_size": 2, "gamma": 0.5}, "optimizer": 0}],
         behaviour={"kind": "manual_accumulate", "accumulate": 2, "raw_optimizer": False, "log_loss_as": None,
                    "scheduler_steps": [{"scheduler": 0, "when": "every_n_batches", "n": 2}]}),
]


def main():
    out = sys.argv[1]
    for c in CASES:
        with open(f"{out}/{c['name']}.json", "w") as f:
            f.write(json.dumps(c, indent=1) + "\n")
        print(c["name"])


if __name__ == "__main__":
    main()
