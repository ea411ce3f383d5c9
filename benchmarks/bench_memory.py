"""Memory: peak RSS of what every run imports and of bvit training steps; glibc's allocator.

Each case runs in a fresh process and reports its high-water mark (the embedded run's own peak RSS is in
bench_runs.py's table). The training step is forward + backward + MetaplasticAdam step, at 224 px with the
optimizer compiled (what "auto" picks at this size) and eager (foreach), and at the embedded default's tiny
size (bench_steps.py's preset), each with glibc malloc's defaults and with
`mallopt(M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=1 GiB)`: by default glibc hands freed memory at the top
of its heap (and every block above its mmap threshold) back to the OS, so the next step's tensors
page-fault on first touch again.
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
TINY_STEPS, TINY_REPEATS = 40, 4
IMPORTS = "import metaplastic_vit.experiment, timm.models.vision_transformer"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def child(size: str, implementation: str, allocator: str) -> None:
    """Print the median train-step seconds (after the first few) and the minor page faults per step."""
    if allocator == "mallopt":
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 2**30)
    import torch
    import torch.nn.functional as F
    from bench_steps import PRESETS

    from metaplastic_vit.models import create_model
    from metaplastic_vit.optim import MetaplasticAdam, param_groups

    arch, batch, steps, warm = ((PRESETS["tiny"][0], PRESETS["tiny"][1], TINY_STEPS, 10) if size == "tiny" else
                                (dict(img_size=224, in_chans=3, num_classes=200), BATCH, STEPS, 1))
    model = create_model("bvit", **arch)
    training_threads(model)
    opt = MetaplasticAdam(param_groups(model, 1.35, "all"), lr=1e-3, implementation=implementation)
    side = arch["img_size"]
    x, y = torch.randn(batch, arch["in_chans"], side, side), torch.randint(0, arch["num_classes"], (batch,))
    seconds = []
    for i in range(steps):
        if i == warm:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"step_s": statistics.median(seconds[warm:]), "faults_per_step": faults / (steps - warm)}))


def train_step(size: str, implementation: str, allocator: str) -> tuple[float, float, float]:
    """One child process: (peak RSS MiB, median step seconds, minor page faults per step)."""
    code, _, rss, out = run_child([PYTHON, __file__, size, implementation, allocator])
    check(code, out, f"{size} train step, optimizer {implementation}, malloc {allocator}")
    result = json.loads(out.strip().splitlines()[-1])
    return rss, result["step_s"], result["faults_per_step"]


def alternating(size: str, implementation: str, repeats: int) -> dict[str, list[tuple[float, float, float]]]:
    """Both allocators, in processes taking turns (A B B A ...): load drifts between processes."""
    runs: dict[str, list[tuple[float, float, float]]] = {"default": [], "mallopt": []}
    for rep in range(repeats):
        for allocator in ("default", "mallopt") if rep % 2 == 0 else ("mallopt", "default"):
            runs[allocator].append(train_step(size, implementation, allocator))
    return runs


def main() -> None:
    rows = []
    for name, cmd in (("python -c 'import torch'", [PYTHON, "-c", "import torch"]),
                      ("imports of a run (torch, hydra, timm; matplotlib and W&B only when used)",
                       [PYTHON, "-c", IMPORTS])):
        code, _, rss, out = run_child(cmd)
        check(code, out, name)
        rows.append([name, "", "", rss, "", ""])
    from bench_steps import PRESETS

    cases = [(f"tiny bvit train step, batch {PRESETS['tiny'][1]}", "foreach", allocator, results)
             for allocator, results in alternating("tiny", "foreach", TINY_REPEATS).items()]
    cases += [(f"seed bvit train step, batch {BATCH}", "compiled", allocator, results)
              for allocator, results in alternating("seed", "compiled", REPEATS).items()]
    cases.append((f"seed bvit train step, batch {BATCH}", "foreach", "default",
                  [train_step("seed", "foreach", "default")]))
    for case, implementation, allocator, results in cases:
        rss, step, faults = (statistics.median(values) for values in zip(*results, strict=True))
        rows.append([case, implementation, allocator, rss, f"{step:.4g}", f"{faults:.0f}"])
    report("Memory (peak RSS) and allocator", [
        "Fresh process per run; the seed-size bvit has 29.2 M parameters (117 MB per copy in float32: weights, "
        f"gradients and the two Adam moments make 470 MB). step s: median of train steps 2-{STEPS} (seed) or "
        f"11-{TINY_STEPS} (tiny, the embedded default's size, one thread); page faults: minor faults per step "
        f"over those steps. Rows with both allocators are medians over {TINY_REPEATS} (tiny) or {REPEATS} "
        "(seed) processes each, the two allocators taking turns.",
        table(["case", "optimizer", "malloc", "peak RSS MiB", "step s", "page faults per step"], rows)])


if __name__ == "__main__":
    if len(sys.argv) == 4:
        child(*sys.argv[1:])
    else:
        main()
