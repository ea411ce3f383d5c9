"""Optimizer step time: MetaplasticAdam against torch.optim.Adam on the seed-size bvit (29 M parameters).

Every parameter gets a random gradient; param groups are the trainer's (>= 2-D weights with meta=1.35,
the rest with meta 0); weight decay 1e-7 as in the default config. Goal: MetaplasticAdam compiled <= 0.6x
the fused torch Adam step (it was measured at 0.50-0.53x before this round). Also: the compile time of the first
compiled step (cold and warm inductor cache, each in a fresh process), the recompiles during the timed
steps, and per model size what compiling saves per step against what it costs once (the "auto" rule).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile

# A fresh inductor cache for this script (set before torch is imported): the first compile is a cold one.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bench-inductor-"))

import torch  # noqa: E402
from common import PYTHON, check, interleaved, report, run_child, table, timed, training_threads  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from metaplastic_vit.models import create_model  # noqa: E402
from metaplastic_vit.optim import AUTO_COMPILE_MIN_PARAMS_CPU, MetaplasticAdam, param_groups  # noqa: E402

META, LR, DECAY = 1.35, 1e-3, 1e-7
SEED = ("bvit", dict(img_size=224, in_chans=3, num_classes=200))
SIZES = {  # model layouts for the auto rule: name -> (net, arch)
    "tiny bvit (embedded default)": ("bvit", dict(img_size=8, in_chans=1, num_classes=10, patch_size=2, embed_dim=64,
                                                  depth=2, num_heads=4)),
    "paper bnn 784-1024-1024-10": ("bnn", dict(img_size=28, in_chans=1, num_classes=10)),
    "small vit, 32 px": ("vit", dict(img_size=32, in_chans=3, num_classes=10, patch_size=4, embed_dim=192, depth=4,
                                     num_heads=3)),
}
ROUNDS = 7


def model_with_grads(net: str, arch: dict) -> torch.nn.Module:
    """The model with random gradients, and the CPU threads a run of it would use set."""
    torch.manual_seed(0)
    model = create_model(net, **arch)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    training_threads(model)
    return model


class PaperAdamMeta:
    """The paper's Adam_meta as published: a Python loop over parameters with eager per-tensor ops
    (for comparison only; weight decay without mutating the gradient)."""

    def __init__(self, groups: list[dict], lr: float, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) -> None:
        self.groups = [{**g, "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay} for g in groups]
        self.state: dict[torch.Tensor, dict] = {}

    @torch.no_grad()
    def step(self) -> None:
        for group in self.groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                state = self.state.setdefault(p, {"step": 0, "exp_avg": torch.zeros_like(p),
                                                  "exp_avg_sq": torch.zeros_like(p)})
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                step_size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
                if p.dim() == 1:
                    p.addcdiv_(exp_avg, denom, value=-step_size)
                    continue
                consolidating = torch.sign(p) * exp_avg > 0
                decayed = (torch.ones_like(p) - torch.tanh(group["meta"] * torch.abs(p)).pow(2)) * exp_avg
                p.addcdiv_(torch.where(consolidating, decayed, exp_avg), denom, value=-step_size)


def metaplastic(model: torch.nn.Module, implementation: str) -> MetaplasticAdam:
    return MetaplasticAdam(param_groups(model, META, "all"), lr=LR, weight_decay=DECAY, implementation=implementation)


def first_compiled_step() -> None:
    """Child process: print the seconds of the first compiled step on the seed-size model."""
    opt = metaplastic(model_with_grads(*SEED), "compiled")
    print(json.dumps({"first_step_s": timed(opt.step)}))


def compile_seconds() -> tuple[float, float]:
    """First compiled step in a fresh process: with an empty inductor cache, then with that cache filled."""
    seconds = []
    for _ in range(2):
        code, _, _, out = run_child([PYTHON, __file__, "--first-step"])
        check(code, out, "first compiled step")
        seconds.append(json.loads(out.strip().splitlines()[-1])["first_step_s"])
    return seconds[0], seconds[1]


def seed_table() -> str:
    model = model_with_grads(*SEED)
    params = [p for p in model.parameters()]
    n = sum(p.numel() for p in params)
    opts = {
        "torch.optim.Adam(fused=True)": torch.optim.Adam(params, lr=LR, weight_decay=DECAY, fused=True),
        "torch.optim.Adam(foreach=True)": torch.optim.Adam(params, lr=LR, weight_decay=DECAY, foreach=True),
        "MetaplasticAdam compiled": metaplastic(model, "compiled"),
        "MetaplasticAdam foreach": metaplastic(model, "foreach"),
        "paper Adam_meta (per-parameter eager loop)": PaperAdamMeta(param_groups(model, META, "all"), LR,
                                                                    weight_decay=DECAY),
    }
    compiled = opts["MetaplasticAdam compiled"]
    auto = metaplastic(model, "auto")
    first = timed(compiled.step)  # warm: the children below filled this script's inductor cache
    graphs = counters["stats"]["unique_graphs"]
    steps = interleaved({name: opt.step for name, opt in opts.items()}, ROUNDS)
    recompiles = counters["stats"]["unique_graphs"] - graphs
    fused = steps["torch.optim.Adam(fused=True)"]
    rows = [[name, 1e3 * s, s / fused] for name, s in steps.items()]
    notes = (f"seed-size bvit, {n / 1e6:.1f} M parameters, {torch.get_num_threads()} threads, meta={META}, "
             f"weight decay {DECAY}; median of {ROUNDS} "
             f"interleaved steps. Compiled: first step in this process {first:.1f} s (after the cold compile "
             f"below), graphs compiled during the timed steps: {recompiles}; auto picks "
             f"{'compiled' if auto.compiles(params) else 'foreach'} here. Goal: <= 2x fused Adam.")
    return notes + "\n\n" + table(["optimizer", "step ms", "x fused Adam"], rows)


def size_table(cold: float, warm: float) -> str:
    rows = []
    for name, (net, arch) in SIZES.items():
        model = model_with_grads(net, arch)
        params = list(model.parameters())
        opts = {impl: metaplastic(model, impl) for impl in ("foreach", "compiled")}
        first = timed(opts["compiled"].step)
        steps = interleaved({impl: opt.step for impl, opt in opts.items()}, 5 * ROUNDS)
        saved = steps["foreach"] - steps["compiled"]
        rows.append([name, sum(p.numel() for p in params) / 1e6, torch.get_num_threads(), 1e3 * steps["foreach"],
                     1e3 * steps["compiled"], first, f"{first / saved:.0f}" if saved > 0 else "never",
                     "compiled" if metaplastic(model, "auto").compiles(params) else "foreach"])
    return (f"The auto rule: compiling costs once and saves per step, by model size (\"compile s\": first "
            f"compiled step of each layout in this process). Seed size: first compiled step {cold:.1f} s "
            f"with an empty inductor cache, {warm:.1f} s in a new process with the cache filled. auto "
            f"compiles on CPU from {AUTO_COMPILE_MIN_PARAMS_CPU / 1e6:g} M parameters.\n\n"
            + table(["model", "M params", "threads", "foreach ms", "compiled ms", "compile s", "break-even steps",
                     "auto"], rows))


def main() -> None:
    cold, warm = compile_seconds()
    report("Optimizer step", [seed_table(), size_table(cold, warm)])


if __name__ == "__main__":
    if sys.argv[1:] == ["--first-step"]:
        first_compiled_step()
    else:
        main()
