"""Run every benchmark script in turn (`make bench`); each prints its table and appends it to RESULTS.md."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# OpenMP waits passively, as in run.py (active spinning is many times slower on a shared machine)
ENV = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
SCRIPTS = ("bench_steps.py", "bench_runs.py", "bench_optimizer.py", "bench_data.py", "bench_memory.py",
           "bench_search.py", "bench_mesu.py", "bench_gpu.py")


def main() -> int:
    start = time.perf_counter()
    failed = []
    for script in SCRIPTS:
        began = time.perf_counter()
        print(f"==> {script}", flush=True)
        code = subprocess.run([sys.executable, str(HERE / script)], cwd=HERE.parent, env=ENV).returncode
        print(f"<== {script}: {'ok' if code == 0 else f'exit code {code}'} in {time.perf_counter() - began:.0f} s\n",
              flush=True)
        if code != 0:
            failed.append(script)
    print(f"all benchmarks: {time.perf_counter() - start:.0f} s; results appended to {HERE / 'RESULTS.md'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
