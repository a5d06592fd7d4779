#!/usr/bin/env python3
"""Re-record a conformance case with the real PyTorch Lightning 2.2.5 on the torch installed here.

usage: record.py CASE.json [--out OUT.json] [--name NAME] [--description TEXT] [--twin-of NAME]
       record.py --check CASE.json ...

The case file is the whole input: model, data, initial weights, optimizers, trainer arguments and
behaviour are read from it (never from RNG), Lightning runs them, and the file is written again
with `expected` recomputed and `reference.torch` set to the torch that ran. `--check` records each
case and compares the new `expected` with the file's, value for value (exit 1 on any difference):
on the torch a case was recorded with, this recorder must reproduce it exactly before it is trusted
to record anything on another torch (tests/conformance/record/README.md).

Needs Lightning 2.2.5 on PYTHONPATH (../shared/tools/lightning-env.sh prints it) and torch's CPU
build; runs with one thread. It implements only the behaviour kinds listed in KINDS (a case of any
other kind is refused with a message, not approximated): what the cases/README.md "Behaviours"
section says of each, and the recording rules of its "expected" section.

A DDP case (trainer strategy "ddp" / devices > 1) runs under Lightning's own DDP (Gloo, CPU): its
launcher starts this script again for the other rank, every rank records, rank 0 gathers the records
into expected.per_rank and writes; so one DDP case per process (--check runs one process per file).
"""
import argparse
import copy
import json
import math
import subprocess
import sys
import types

import torch
import torch.distributed
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, GradientAccumulationScheduler


def die(msg):
    print(f"record.py: {msg}", file=sys.stderr)
    sys.exit(2)


def torch_version():
    """The upstream version of the torch that runs: Debian's python3-torch reports e.g. 1.13.0a0 as
    torch.__version__ for 1.13.1, so the package's version is preferred where dpkg knows it."""
    try:
        v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-torch"],
                           capture_output=True, text=True, check=True).stdout
        v = v.split(":")[-1].split("+")[0].split("-")[0]
        if v.split(".")[0] == torch.__version__.split(".")[0]:
            return v
    except (OSError, subprocess.CalledProcessError):
        pass
    return torch.__version__.split("+")[0]


# ---------------------------------------------------------------- building from the case file

def build_net(layers):
    mods = []
    for l in layers:
        t = l["type"]
        if t == "Linear":
            mods.append(torch.nn.Linear(l["in_features"], l["out_features"], bias=l["bias"]))
        elif t == "Tanh":
            mods.append(torch.nn.Tanh())
        elif t == "ReLU":
            mods.append(torch.nn.ReLU())
        elif t == "Sigmoid":
            mods.append(torch.nn.Sigmoid())
        elif t == "LeakyReLU":
            mods.append(torch.nn.LeakyReLU(l["negative_slope"]))
        else:
            die(f"layer type {t} is not supported by this recorder")
    return torch.nn.Sequential(*mods)


LOSSES = {
    "mse_loss": torch.nn.functional.mse_loss,
    "binary_cross_entropy_with_logits": torch.nn.functional.binary_cross_entropy_with_logits,
    "cross_entropy": torch.nn.functional.cross_entropy,
}

OPTIMIZERS = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW,
              "RMSprop": torch.optim.RMSprop, "Adagrad": torch.optim.Adagrad}


# torch schedulers whose kwargs are plain values (the README's special kwargs are not implemented here)
PLAIN_SCHEDULERS = ("StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR", "ConstantLR",
                    "PolynomialLR", "CosineAnnealingWarmRestarts", "ReduceLROnPlateau")


def build_scheduler(spec, optimizers):
    t = spec["type"]
    if t not in PLAIN_SCHEDULERS or not hasattr(torch.optim.lr_scheduler, t):
        die(f"scheduler {t} is not supported by this recorder (supported: {', '.join(PLAIN_SCHEDULERS)})")
    return getattr(torch.optim.lr_scheduler, t)(optimizers[spec["optimizer"]], **spec["kwargs"])


def is_ddp(case):
    tr = case["trainer"]
    return tr.get("strategy") == "ddp" or (isinstance(tr.get("devices"), int) and tr["devices"] > 1)


def batch_rule(rule):
    """return_none_when / step_when: {"rule": "mod", "modulus", "remainder"} or {"rule": "indices"}"""
    if rule["rule"] == "mod":
        return lambda i: i % rule["modulus"] == rule["remainder"]
    if rule["rule"] == "indices":
        s = set(rule["batch_idx"])
        return lambda i: i in s
    die(f"batch rule {rule['rule']} is not supported by this recorder")


def f32(t):
    """a float32 scalar tensor as the Python float of its exact value"""
    return float(t.detach().to(torch.float32).item())


def grad_stats(params):
    """clip_grad_norm_'s total norm (2-norm of the per-parameter 2-norms), max |g|, and how many of
    the parameters have a gradient; the statistics are None when none has."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return None, None, 0
    norm = torch.norm(torch.stack([torch.norm(g, 2.0) for g in grads]), 2.0)
    mx = torch.stack([g.abs().max() for g in grads]).max()
    return f32(norm), f32(mx), len(grads)


# ---------------------------------------------------------------- the module and the recording

class Recording:
    def __init__(self):
        self.calls, self.steps, self.epochs, self.ends, self.val_calls = [], [], [], [], []
        self.estimated = None


class CaseModule(L.LightningModule):
    """RecModule of cases/README.md: the nets of `model` as attributes, `loss`, configure_optimizers
    from `optimizers`, and the behaviour kind's training_step and hooks."""

    def __init__(self, case, rec):
        super().__init__()
        self.case, self.rec_ = case, rec
        for net, layers in case["model"].items():
            setattr(self, net, build_net(layers))
        with torch.no_grad():
            params = dict(self.named_parameters())
            if set(params) != set(case["initial_weights"]):
                die("initial_weights do not name exactly the model's parameters")
            for n, w in case["initial_weights"].items():
                params[n].copy_(torch.tensor(w["values"], dtype=torch.float32).reshape(w["shape"]))
        self.loss_fn = LOSSES[case["loss"]]
        b = case["behaviour"]
        self.kind = b["kind"]
        if self.kind not in KINDS:
            die(f"behaviour kind {self.kind} is not supported by this recorder (supported: {sorted(KINDS)})")
        KINDS[self.kind](self, b)
        self.batch_idx_now = None
        self.step_counts = []
        self.pre_clip = {}

    def loss(self, out, y):
        return self.loss_fn(out, y)

    def lrs(self):
        return [[g["lr"] for g in o.param_groups] for o in self.torch_optimizers]

    def rec(self, batch_idx, loss):
        self.rec_.calls.append({"epoch": self.current_epoch, "batch_idx": batch_idx,
                                "global_step": self.trainer.global_step, "loss": f32(loss),
                                "lr": self.lrs()})

    # optimizers: every real torch step is recorded through an instance-level step wrapper
    def configure_optimizers(self):
        params = dict(self.named_parameters())
        self.torch_optimizers = []
        for i, spec in enumerate(self.case["optimizers"]):
            cls = OPTIMIZERS.get(spec["type"]) or die(f"optimizer {spec['type']} is not supported")
            groups = []
            for g in spec["param_groups"]:
                g = dict(g)
                g["params"] = [params[n] for n in g["params"]]
                groups.append(g)
            opt = cls(groups, **spec["defaults"])
            self.wrap_step(i, opt)
            self.torch_optimizers.append(opt)
            self.step_counts.append(0)
        self.torch_schedulers = [build_scheduler(spec, self.torch_optimizers) for spec in self.case["lr_schedulers"]]
        if not self.torch_schedulers:
            return self.torch_optimizers
        configs = []
        for spec, sched in zip(self.case["lr_schedulers"], self.torch_schedulers):
            c = {"scheduler": sched}
            if self.case["automatic_optimization"]:
                c["interval"] = spec.get("interval", "epoch")
                c["frequency"] = spec.get("frequency", 1)
                if spec.get("monitor") is not None:
                    c["monitor"] = spec["monitor"]
            configs.append(c)
        return self.torch_optimizers, configs

    def wrap_step(self, i, opt):
        inner = opt.step
        module = self

        def step(_self, closure=None, **kwargs):
            entry = {"optimizer": i, "epoch": module.current_epoch, "batch_idx": module.batch_idx_now,
                     "global_step_before": module.trainer.global_step}
            first = [True]

            def measured():
                r = closure() if closure is not None else None
                if first[0]:
                    first[0] = False
                    params = [p for g in opt.param_groups for p in g["params"]]
                    entry["step_count"] = module.step_counts[i] + 1
                    entry["lr"] = [g["lr"] for g in opt.param_groups]
                    pre = module.pre_clip.pop(i, None)
                    norm, mx, n = grad_stats(params)
                    if pre is not None:
                        entry["grad_norm_before_clip"], entry["grad_max_abs_before_clip"] = pre
                    entry["grad_norm"], entry["grad_max_abs"], entry["params_with_grad"] = norm, mx, n
                return r

            if closure is None:
                measured()
                out = inner(**kwargs)
            else:
                out = inner(closure=measured, **kwargs)
            module.step_counts[i] += 1
            module.rec_.steps.append(entry)
            return out

        # a bound method: torch's LR schedulers wrap optimizer.step through its __self__ / __func__
        opt.step = types.MethodType(step, opt)

    def on_before_optimizer_step(self, optimizer):
        i = self.torch_optimizers.index(getattr(optimizer, "_optimizer", optimizer))
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm, mx, _ = grad_stats(params)
        self.pre_clip[i] = (norm, mx)

    def on_train_start(self):
        if self.case["automatic_optimization"]:
            self.rec_.estimated = self.trainer.estimated_stepping_batches

    def on_train_batch_start(self, batch, batch_idx):
        self.batch_idx_now = batch_idx

    def on_train_epoch_start(self):
        # module hooks run after the callbacks' (GradientAccumulationScheduler sets the epoch's value)
        self.rec_.epochs.append({"epoch": self.current_epoch, "global_step": self.trainer.global_step,
                                 "accumulate_grad_batches": self.trainer.accumulate_grad_batches,
                                 "lr": self.lrs()})


class EpochEndRecorder(Callback):
    """on_train_epoch_end as a (non-monitoring) callback: before the module's own hook"""

    def __init__(self, rec):
        self.rec_ = rec

    def on_train_epoch_end(self, trainer, module):
        self.rec_.ends.append({"epoch": trainer.current_epoch, "global_step": trainer.global_step,
                               "lr": module.lrs(),
                               "callback_metrics": {k: f32(v) for k, v in trainer.callback_metrics.items()}})


# ---------------------------------------------------------------- behaviour kinds

def kind_auto_skip(module, b):
    """auto_skip: return None when return_none_when(batch_idx); optimizer_zero_grad either the
    default optimizer.zero_grad() (zero_grad_set_to_none false: torch's own default, which changed in
    torch 2.0) or optimizer.zero_grad(set_to_none=True)."""
    none_when = batch_rule(b["return_none_when"])

    def training_step(batch, batch_idx):
        x, y = batch
        loss = module.loss(module.net(x), y)
        module.rec(batch_idx, loss)
        return None if none_when(batch_idx) else loss

    module.training_step = training_step
    if b["zero_grad_set_to_none"]:
        module.optimizer_zero_grad = lambda epoch, batch_idx, optimizer: optimizer.zero_grad(set_to_none=True)


def indexed_loader(module, d, shuffle, drop_last):
    """ddp_indexed's loaders: (x, y, row index) sampled by DistributedSampler(num_replicas=world size,
    rank=global rank, shuffle, drop_last, seed 0), batch_size of the data set"""
    x = torch.tensor(d["x"], dtype=torch.float32)
    y = torch.tensor(d["y"], dtype=getattr(torch, d["y_dtype"]))
    ds = TensorDataset(x, y, torch.arange(len(x)))
    sampler = DistributedSampler(ds, num_replicas=module.trainer.world_size, rank=module.trainer.global_rank,
                                 shuffle=shuffle, drop_last=drop_last)
    return DataLoader(ds, batch_size=d["batch_size"], sampler=sampler)


def kind_ddp_indexed(module, b):
    """ddp_indexed: the module's own train loader (row indices, DistributedSampler with the behaviour's
    shuffle and drop_last); with `val_metric` a val loader (DistributedSampler, shuffle and drop_last
    false) and a validation_step that records and logs the loss, with sync_dist = `val_sync_dist`."""
    for k in b:
        if k not in ("kind", "sampler_shuffle", "sampler_drop_last", "val_metric", "val_sync_dist"):
            die(f"behaviour ddp_indexed: unknown parameter {k}")
    val_metric = b.get("val_metric")
    sync = bool(b.get("val_sync_dist", False))
    data = module.case["data"]
    if (val_metric is None) != ("val" not in data):
        die("behaviour ddp_indexed: data.val and val_metric go together")

    def training_step(batch, batch_idx):
        x, y, idx = batch
        loss = module.loss(module.net(x), y)
        module.rec(batch_idx, loss)
        module.rec_.calls[-1]["sample_indices"] = idx.tolist()
        return loss

    module.training_step = training_step
    module.train_dataloader = lambda: indexed_loader(module, data["train"], b["sampler_shuffle"],
                                                     b["sampler_drop_last"])
    if val_metric is None:
        return

    def validation_step(batch, batch_idx):
        x, y, idx = batch
        loss = module.loss(module.net(x), y)
        module.rec_.val_calls.append({"epoch": module.current_epoch, "batch_idx": batch_idx,
                                      "global_step": module.trainer.global_step, "loss": f32(loss),
                                      "sample_indices": idx.tolist()})
        module.log(val_metric, loss, sync_dist=sync)

    module.validation_step = validation_step
    module.val_dataloader = lambda: indexed_loader(module, data["val"], False, False)


def kind_manual_accumulate(module, b):
    """manual_accumulate: manual_backward(loss / N), step + zero_grad through the Lightning optimizer (or
    the raw one) at the end of each window and on the last batch, then the scheduler step rules"""
    n = b["accumulate"]
    rules = b["scheduler_steps"]
    module.automatic_optimization = False
    for r in rules:
        if r["when"] not in ("every_n_batches", "last_batch_every_n_epochs"):
            die(f"scheduler step rule {r['when']} is not supported by this recorder")

    def training_step(batch, batch_idx):
        x, y = batch
        loss = module.loss(module.net(x), y)
        module.rec(batch_idx, loss)
        module.manual_backward(loss / n)
        last = module.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if (batch_idx + 1) % n == 0 or last:
            opt = module.optimizers()
            if b["raw_optimizer"]:
                opt = opt.optimizer
            opt.step()
            opt.zero_grad()
        scheds = module.lr_schedulers()
        scheds = scheds if isinstance(scheds, list) else [scheds]
        for r in rules:
            if r["when"] == "every_n_batches" and (batch_idx + 1) % r["n"] == 0:
                scheds[r["scheduler"]].step()
            if r["when"] == "last_batch_every_n_epochs" and last and (module.current_epoch + 1) % r["n"] == 0:
                scheds[r["scheduler"]].step()
        if b["log_loss_as"] is not None:
            module.log(b["log_loss_as"], loss)

    module.training_step = training_step


def kind_auto_basic(module, b):
    """auto_basic: the common training_step; with val_metric a validation_step that records and logs
    the loss with validation defaults"""
    val_metric = b["val_metric"]

    def training_step(batch, batch_idx):
        x, y = batch
        loss = module.loss(module.net(x), y)
        module.rec(batch_idx, loss)
        return loss

    module.training_step = training_step
    if val_metric is None:
        return

    def validation_step(batch, batch_idx):
        x, y = batch
        loss = module.loss(module.net(x), y)
        module.rec_.val_calls.append({"epoch": module.current_epoch, "batch_idx": batch_idx,
                                      "global_step": module.trainer.global_step, "loss": f32(loss)})
        module.log(val_metric, loss)

    module.validation_step = validation_step


KINDS = {"auto_basic": kind_auto_basic, "auto_skip": kind_auto_skip, "ddp_indexed": kind_ddp_indexed, "manual_accumulate": kind_manual_accumulate}


# ---------------------------------------------------------------- the run

def trainer_args(case, rec):
    args = dict(case["trainer"])
    callbacks = []
    for c in args.pop("callbacks", []):
        if c["type"] == "GradientAccumulationScheduler":
            callbacks.append(GradientAccumulationScheduler({int(k): v for k, v in c["scheduling"].items()}))
        elif c["type"] == "EarlyStopping":
            callbacks.append(EarlyStopping(**{k: v for k, v in c.items() if k not in ("type", "python")}))
        else:
            die(f"callback {c['type']} is not supported by this recorder")
    callbacks.append(EpochEndRecorder(rec))
    args["callbacks"] = callbacks
    return args


def record(case):
    """Runs the case; returns its `expected`, or None in a rank other than 0 of a DDP case (Lightning's
    launcher runs this script again for every other rank: those ranks hand their records to rank 0)."""
    torch.set_num_threads(1)
    kind = case["behaviour"]["kind"]
    ddp = is_ddp(case)
    if case["automatic_optimization"] != (kind != "manual_accumulate"):
        die(f"behaviour {kind} does not match automatic_optimization {case['automatic_optimization']}")
    if (kind == "ddp_indexed") != (ddp and case["trainer"].get("use_distributed_sampler") is False):
        die("ddp_indexed goes with strategy ddp and use_distributed_sampler false (and the other kinds without)")
    t = case["data"]["train"]
    if t["shuffle"] or t["drop_last"]:
        die("only unshuffled training data without drop_last is supported by this recorder")
    if "val" in case["data"] and kind not in ("ddp_indexed", "auto_basic"):
        die("validation data is supported by this recorder for ddp_indexed and auto_basic only")
    rec = Recording()
    module = CaseModule(case, rec)
    trainer = L.Trainer(**trainer_args(case, rec))
    if kind == "ddp_indexed":
        trainer.fit(module)  # the module's own loaders
    else:
        def loader(d):
            x = torch.tensor(d["x"], dtype=torch.float32)
            y = torch.tensor(d["y"], dtype=getattr(torch, d["y_dtype"]))
            return DataLoader(TensorDataset(x, y), batch_size=d["batch_size"], shuffle=False)

        val = case["data"].get("val")
        trainer.fit(module, train_dataloaders=loader(t), val_dataloaders=loader(val) if val is not None else None)
    final = {"global_step": trainer.global_step, "current_epoch": trainer.current_epoch,
             "optimizer_step_counts": list(module.step_counts), "lr": module.lrs()}
    if any(c["type"] == "EarlyStopping" for c in case["trainer"].get("callbacks", [])):
        final["should_stop"] = trainer.should_stop
    weights = {n: {"shape": list(p.shape), "values": [float(v) for v in p.detach().reshape(-1).tolist()]}
               for n, p in module.named_parameters()}
    old = case.get("expected", {})
    # the key order of `final` follows the file being re-recorded (the shipped and the rec_ files differ)
    order = list(old.get("final", {}).keys()) or \
        ["global_step", "current_epoch", "should_stop", "optimizer_step_counts", "lr", "estimated_stepping_batches",
         "weights"]
    final.update(weights=weights, estimated_stepping_batches=rec.estimated)
    if not case["automatic_optimization"]:
        order = [k for k in order if k != "estimated_stepping_batches"]
    final = {k: final[k] for k in order if k in final}
    mine = {"training_step_calls": rec.calls, "optimizer_steps": rec.steps, "epochs": rec.epochs,
            "epoch_ends": rec.ends}
    if rec.val_calls:
        mine["validation_step_calls"] = rec.val_calls
    if not ddp:
        return dict(mine, final=final)
    # DDP: rank r's records as expected.per_rank[r] (the keys the re-recorded file has, else all of them);
    # final from rank 0 (every rank ends with the same weights: checked here)
    keys = list(old["per_rank"][0].keys()) if old.get("per_rank") else ["rank"] + list(mine)
    mine["rank"] = trainer.global_rank
    mine = {k: mine[k] for k in keys if k in mine}
    gathered = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, (mine, final))
    if trainer.global_rank != 0:
        return None
    for r, (_, f) in enumerate(gathered):
        if differences(gathered[0][1], f, f"final of rank {r}"):
            die(f"rank {r} ends with another final state than rank 0: " + "; ".join(differences(gathered[0][1], f)))
    return {"per_rank": [m for m, _ in gathered], "final": final}


def differences(a, b, path="expected"):
    """where two JSON values differ (floats compared exactly; NaN equals NaN)"""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in the file" for k in a if k not in b]
        out += [f"{path}.{k}: only in the new recording" for k in b if k not in a]
        for k in a:
            if k in b:
                out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} entries in the file, {len(b)} recorded"]
        return [d for i, (u, v) in enumerate(zip(a, b)) for d in differences(u, v, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    if type(a) != type(b) or a != b:
        return [f"{path}: file {a!r}, recorded {b!r}"]
    return []


def dump(doc, like):
    """serialise as the file being re-recorded is: one line (the rec_ files) or indent=1 with
    depends_on on one line (the shipped files)"""
    if "\n" not in like.strip():
        return json.dumps(doc)
    text = json.dumps(doc, indent=1)
    if "depends_on" in doc:
        block = json.dumps({"depends_on": doc["depends_on"]}, indent=1)[2:-2]
        text = text.replace(block, ' "depends_on": ' + json.dumps(doc["depends_on"]), 1)
    return text + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--check", action="store_true", help="compare with the files' expected, write nothing")
    ap.add_argument("--any-torch", action="store_true",
                    help="with --check: compare even when the case was recorded on another torch major")
    ap.add_argument("--out")
    ap.add_argument("--name")
    ap.add_argument("--description")
    ap.add_argument("--twin-of", help="the case this one is the twin of (top-level `twin`)")
    a = ap.parse_args()
    if not a.check and len(a.cases) != 1:
        die("record one case at a time (or use --check)")
    version = torch_version()
    if a.check and len(a.cases) > 1:
        # one case per process: Lightning's DDP launcher runs the whole script again for the other ranks
        bad = 0
        for path in a.cases:
            bad |= subprocess.run([sys.executable, __file__, "--check"] + (["--any-torch"] if a.any_torch else [])
                                  + [path]).returncode != 0
        return 1 if bad else 0
    bad = 0
    for path in a.cases:
        text = open(path).read()
        case = json.loads(text)
        expected = record(copy.deepcopy(case))
        if expected is None:  # another rank of a DDP case: rank 0 reports
            continue
        if a.check:
            if case["reference"]["torch"].split(".")[0] != version.split(".")[0] and not a.any_torch:
                die(f"{path} was recorded on torch {case['reference']['torch']}, this is {version}")
            diff = differences(case["expected"], expected)
            same_text = dump(dict(case, expected=expected), text) == text
            print(f"{case['name']}: {'identical' if not diff else f'{len(diff)} differences'}"
                  f"{' (file byte for byte)' if same_text else ''}")
            for d in diff[:20]:
                print("   ", d)
            bad += bool(diff)
            continue
        out = dict(case)
        if a.name:
            out["name"] = a.name
        if a.description:
            out["description"] = a.description
        out["reference"] = dict(case["reference"], torch=version)
        if a.twin_of:
            out["twin"] = a.twin_of
        if "python_source" in out and case["behaviour"]["kind"] in KINDS:
            out["python_source"] = dict(out["python_source"], module=(
                f"Generic implementation of behaviour kind '{case['behaviour']['kind']}' "
                "(tests/conformance/record/record.py, class CaseModule), driven only by `behaviour`."))
        out["expected"] = expected
        dest = a.out or path
        with open(dest, "w") as f:
            f.write(dump(out, text))
        print(f"{out['name']}: recorded on torch {version} -> {dest}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
