"""Memory: peak RSS of what every run imports and of a seed-size bvit training step; glibc's allocator.

Each case runs in a fresh process and reports its high-water mark (the embedded run's own peak RSS is in
bench_runs.py's table). The training step is forward + backward + MetaplasticAdam step at 224 px, with the
optimizer compiled (what "auto" picks at this size) and eager (foreach), each with glibc malloc's defaults
and with `mallopt(M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=1 GiB)`: by default glibc hands every freed
block of more than a few MiB back to the OS, so each large tensor (activations, optimizer temporaries) is
a fresh mapping that page-faults on first touch.
"""

from __future__ import annotations

import ctypes
import json
import resource
import statistics
import sys
import time

from common import PYTHON, check, report, run_child, table, training_threads

BATCH, STEPS, REPEATS = 8, 5, 2
IMPORTS = "import metaplastic_vit.experiment, timm.models.vision_transformer"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def child(implementation: str, allocator: str) -> None:
    """Print the median train-step seconds (after the first) and the minor page faults of the process."""
    if allocator == "mallopt":
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 2**30)
    import torch
    import torch.nn.functional as F

    from metaplastic_vit.models import create_model
    from metaplastic_vit.optim import MetaplasticAdam, param_groups

    model = create_model("bvit", img_size=224, in_chans=3, num_classes=200)
    training_threads(model)
    opt = MetaplasticAdam(param_groups(model, 1.35, "all"), lr=1e-3, implementation=implementation)
    x, y = torch.randn(BATCH, 3, 224, 224), torch.randint(0, 200, (BATCH,))
    seconds = []
    for _ in range(STEPS):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"step_s": statistics.median(seconds[1:]),
                      "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}))


def train_step(implementation: str, allocator: str) -> tuple[float, float, float]:
    """One child process: (peak RSS MiB, median step seconds, minor page faults)."""
    code, _, rss, out = run_child([PYTHON, __file__, implementation, allocator])
    check(code, out, f"train step, optimizer {implementation}, malloc {allocator}")
    result = json.loads(out.strip().splitlines()[-1])
    return rss, result["step_s"], result["minor_faults"]


def main() -> None:
    rows = []
    for name, cmd in (("python -c 'import torch'", [PYTHON, "-c", "import torch"]),
                      ("imports of a run (torch, hydra, timm; matplotlib and W&B only when used)",
                       [PYTHON, "-c", IMPORTS])):
        code, _, rss, out = run_child(cmd)
        check(code, out, name)
        rows.append([name, "", "", rss, "", ""])
    # the allocator comparison alternates processes (A B B A ...) and takes medians: load drifts between them
    runs: dict[str, list[tuple[float, float, float]]] = {"default": [], "mallopt": []}
    for rep in range(REPEATS):
        for allocator in ("default", "mallopt") if rep % 2 == 0 else ("mallopt", "default"):
            runs[allocator].append(train_step("compiled", allocator))
    cases = [("compiled", allocator, results) for allocator, results in runs.items()]
    cases.append(("foreach", "default", [train_step("foreach", "default")]))
    for implementation, allocator, results in cases:
        rss, step, faults = (statistics.median(values) for values in zip(*results, strict=True))
        rows.append([f"seed bvit train step, batch {BATCH}", implementation, allocator, rss, step,
                     f"{faults / 1e3:.0f}k"])
    report("Memory (peak RSS) and allocator", [
        "Fresh process per run; the seed-size bvit has 29.2 M parameters (117 MB per copy in float32: weights, "
        f"gradients and the two Adam moments make 470 MB). step s: median of train steps 2-{STEPS}; the "
        f"compiled rows are medians over {REPEATS} alternating processes each.",
        table(["case", "optimizer", "malloc", "peak RSS MiB", "step s", "minor page faults"], rows)])


if __name__ == "__main__":
    if len(sys.argv) == 3:
        child(*sys.argv[1:])
    else:
        main()
