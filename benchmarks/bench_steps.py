"""Binarization overhead: train-step and test-pass time of the binarized nets over the full-precision vit, and
the activation memory a train step keeps for its backward pass.

Same sizes, data and optimizer (MetaplasticAdam, meta 50, implementation auto as in training) for every
net; a train step is forward + cross-entropy + backward + optimizer step, a test pass one forward without
autograd. Presets: the embedded default's tiny ViT (8 px, patch 2, embed 64, depth 2, batch 100), a small
ViT (32 px, patch 4, embed 192, depth 4, 3 heads, batch 64) and the seed's ViT (224 px, patch 16, embed 768,
depth 4, batch 8). Threads as a run picks them (one for models under 1 M parameters, else all cores).
With --baseline REV (default: the commit before this round's work) the tiny and small presets are also
timed with that revision's code, in a child process, for the ratio before and after. With --alternate REV
the tiny and small presets are timed in child processes alternating between REV's code and this tree's
(--times pairs), so that both see the same drift of the machine: the fair way to compare two revisions here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from common import PYTHON, ROOT, check, interleaved, report, run_child, table, worktree

PRESETS = {
    "tiny": (dict(img_size=8, in_chans=1, num_classes=10, patch_size=2, embed_dim=64, depth=2, num_heads=4), 100, 20),
    "small": (dict(img_size=32, in_chans=3, num_classes=10, patch_size=4, embed_dim=192, depth=4, num_heads=3), 64, 8),
    "seed": (dict(img_size=224, in_chans=3, num_classes=200, patch_size=16, embed_dim=768, depth=4, num_heads=12),
             8, 5),
}
NETS = ("vit", "bvit", "hybrid", "bvit_full")
BASELINE = "b3a5515"  # the last commit before this round's binarization and evaluation work


def optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """MetaplasticAdam with the trainer's param groups, in this revision's API or the baseline's."""
    from metaplastic_vit.optim import MetaplasticAdam

    try:
        from metaplastic_vit.optim import param_groups
    except ImportError:  # the baseline kept it in the trainer
        from metaplastic_vit.trainer import param_groups
    return MetaplasticAdam(param_groups(model, 50.0, "all"), lr=1e-3, weight_decay=1e-7)


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors one training forward pass keeps for its backward pass."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(seen.values())


def digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers: equal digests, bit-identical numbers."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim buffers too
    return h.hexdigest()


def measure(preset: str) -> dict[str, dict[str, float | str]]:
    """Per net: train step s, test pass s (medians of interleaved rounds), saved activation bytes, and the
    digest of the parameters after the timed steps (the same count of steps on the same batch every time)."""
    from metaplastic_vit.models import MODELS, create_model

    nets = [net for net in NETS if net in MODELS]  # the baseline's registry lacks bvit_full
    arch, batch, rounds = PRESETS[preset]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, arch["in_chans"], arch["img_size"], arch["img_size"], generator=g)
    y = torch.randint(0, arch["num_classes"], (batch,), generator=g)
    train, test, memory, models = {}, {}, {}, {}
    for net in nets:
        torch.manual_seed(0)
        model = create_model(net, **arch)
        small = sum(p.numel() for p in model.parameters()) < 1_000_000
        torch.set_num_threads(1 if small else len(os.sched_getaffinity(0)))  # as a run sets them
        opt = optimizer(model)
        memory[net] = saved_bytes(model, x)

        def train_step(model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        @torch.no_grad()
        def test_pass(model: torch.nn.Module = model) -> None:
            model.eval()
            model(x)

        train[net], test[net], models[net] = train_step, test_pass, model
    t = interleaved(train, rounds)  # the warm-up step compiles the optimizer where auto does
    i = interleaved(test, rounds)
    return {net: {"train": t[net], "test": i[net], "saved": memory[net], "digest": digest(models[net])}
            for net in nets}


def child(presets: list[str], tree: str | Path) -> dict[str, dict]:
    """The measurements of `presets` in a new process importing the package from `tree`."""
    code, _, _, out = run_child([PYTHON, __file__, "--child", *presets], env={"PYTHONPATH": str(tree)})
    check(code, out, f"measurement with the package of {tree}")
    return json.loads(out.strip().splitlines()[-1])


def described() -> str:
    """This tree's revision as `git describe` names it (-dirty with uncommitted changes)."""
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown revision"


def baseline(rev: str, presets: list[str]) -> dict[str, dict] | None:
    """The same measurements with revision `rev`'s package (a temporary git worktree), or None without git."""
    with worktree(rev) as tree:
        return None if tree is None else child(presets, tree)


def alternate(rev: str, times: int) -> None:
    """Train-step ratios over vit of revision `rev` and of this tree, in child processes taking turns."""
    presets = ["tiny", "small"]
    ratios: dict[tuple[str, str], dict[str, list[float]]] = {}
    digests: dict[tuple[str, str], dict[str, set[str]]] = {}
    with worktree(rev) as tree:
        if tree is None:
            sys.exit(f"error: cannot check out revision {rev!r} into a git worktree; name a commit of this repository")
        for _ in range(times):
            for label, path in ((rev, tree), ("this tree", ROOT)):
                for preset, nets in child(presets, path).items():
                    for net, m in nets.items():
                        ratios.setdefault((preset, net), {}).setdefault(label, []).append(
                            m["train"] / nets["vit"]["train"])
                        digests.setdefault((preset, net), {}).setdefault(label, set()).add(m["digest"])

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    def same(by: dict[str, set[str]]) -> str:
        if any(len(d) > 1 for d in by.values()):
            return "not reproducible: differs between processes of one revision"
        return "yes" if len(set.union(*by.values())) == 1 else "no"

    rows = [[preset, net, cell(by[rev]), cell(by["this tree"]), same(digests[preset, net])]
            for (preset, net), by in ratios.items() if rev in by]
    report(f"Binarization overhead, {rev} and this tree taking turns", [
        f"Train step over the full-precision vit's, median (range) of {times} child processes per revision, "
        f"the two revisions alternating. bit-identical: the parameters after the timed steps (same steps, same "
        f"batch) are the same in every process of both. Command: `python benchmarks/bench_steps.py --alternate "
        f"{rev} --times {times}`.",
        table(["preset", "net", f"x vit, {rev}", f"x vit, this tree ({described()})", "bit-identical"], rows)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--alternate", metavar="REV", help="compare REV and this tree in alternating processes")
    parser.add_argument("--times", type=int, default=3, help="process pairs for --alternate")
    parser.add_argument("--child", nargs="*")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps({p: measure(p) for p in args.child}))
        return
    if args.alternate:
        if args.times < 1:
            sys.exit(f"error: --times must be at least 1, got {args.times}")
        alternate(args.alternate, args.times)
        return
    now = {p: measure(p) for p in PRESETS}
    before = baseline(args.baseline, ["tiny", "small"])
    rows = []
    for preset, nets in now.items():
        for net, m in nets.items():
            vit = nets["vit"]
            old = (before or {}).get(preset, {})
            old_ratio = old[net]["train"] / old["vit"]["train"] if net in old else None
            rows.append([preset, net, 1e3 * m["train"], m["train"] / vit["train"],
                         "" if old_ratio is None else f"{old_ratio:.2f}", 1e3 * m["test"], m["test"] / vit["test"],
                         m["saved"] / 2**20, m["saved"] / vit["saved"]])
    where = (f"before = the same measurement with revision {args.baseline}'s code, timed in a child process"
             if before else "no baseline (git worktree unavailable)")
    report("Binarization overhead", [
        "Median of interleaved rounds per net; x vit = over the full-precision vit's (same preset, same run). "
        f"{where}. saved MiB: activations kept for the backward pass of one training forward. Goals: train step "
        "bvit <= 1.1x vit (tiny, small), <= 1.05x (seed); hybrid <= 1.05x (small).",
        table(["preset", "net", "train step ms", "x vit", "x vit before", "test pass ms", "x vit",
               "saved MiB", "x vit"], rows)])


if __name__ == "__main__":
    sys.exit(main())
