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

from common import PYTHON, check, report, run_child, table

BATCH, STEPS = 8, 4
IMPORTS = "import torch, timm, hydra, sklearn, matplotlib, metaplastic_vit.experiment"
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
    from metaplastic_vit.optim import MetaplasticAdam
    from metaplastic_vit.trainer import param_groups

    model = create_model("bvit", img_size=224, in_chans=3, num_classes=200)
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


def main() -> None:
    rows = []
    for name, cmd in (("python -c 'import torch'", [PYTHON, "-c", "import torch"]),
                      ("imports of a run (torch, timm, hydra, sklearn, matplotlib)", [PYTHON, "-c", IMPORTS])):
        code, wall, rss, out = run_child(cmd)
        check(code, out, name)
        rows.append([name, "", "", rss, "", ""])
    for implementation in ("compiled", "foreach"):
        for allocator in ("default", "mallopt"):
            code, wall, rss, out = run_child([PYTHON, __file__, implementation, allocator])
            check(code, out, f"{implementation} {allocator}")
            result = json.loads(out.strip().splitlines()[-1])
            rows.append([f"seed bvit train step, batch {BATCH}", implementation, allocator, rss, result["step_s"],
                         f"{result['minor_faults'] / 1e3:.0f}k"])
    report("Memory (peak RSS) and allocator", [
        "Fresh process per row; the seed-size bvit has 29.2 M parameters (117 MB per copy in float32: weights, "
        f"gradients and the two Adam moments make 470 MB). step s: median of train steps 2-{STEPS}.",
        table(["case", "optimizer", "malloc", "peak RSS MiB", "step s", "minor page faults"], rows)])


if __name__ == "__main__":
    if len(sys.argv) == 3:
        child(*sys.argv[1:])
    else:
        main()
