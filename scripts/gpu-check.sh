#!/usr/bin/env bash
# The GPU path in one command, for a machine's first GPU (under ten minutes on one GPU): the gpu-marked tests,
# benchmarks/bench_gpu.py (seed-size vit / bvit / hybrid, fp32 / bf16, eager / compiled: images/s and peak
# memory), a seed-size smoke run of vit, bvit and hybrid on a fake Tiny-ImageNet in the official layout (two
# epochs per task of imgnet-5; each command run twice, the second must resume the finished run), and the local
# launcher packing four small jobs on one GPU. Writes one summary (markdown) with every step's outcome.
#
#   scripts/gpu-check.sh [--dry-run] [--out DIR]     (default DIR: gpu-check/; summary: DIR/summary.md)
#
# --dry-run, on any machine: resolves every step without running it (the interpreter and packages, pytest
# collecting the gpu tests, the benchmark compiling, the fake data written, every run's config composed) and
# lists the commands a real run would execute; a step that cannot be resolved fails it. Without --dry-run and
# without a CUDA GPU the script stops at once with one error line.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=gpu-check
DRY=0
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    *) echo "error: unknown argument '$1'; use --dry-run and --out DIR" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/summary.md
DATA=$OUT/data
export METAPLASTIC_OUTPUT=$OUT/runs
failed=0

if [ $DRY = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA GPU here; run scripts/gpu-check.sh --dry-run to check the steps without one" >&2
  exit 2
fi
{
  echo "# GPU check ($(date -u +%FT%TZ)$([ $DRY = 1 ] && echo ', dry run: nothing was run'))"
  echo
  echo "Machine: $("$PY" -c "import torch, platform; g = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'; print(f'{g}, torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}')")"
  echo
  echo "| step | outcome | seconds | what |"
  echo "|---|---|---|---|"
} > "$SUMMARY"

# step NAME WHAT DRY-COMMAND -- COMMAND...: run COMMAND (or, in a dry run, DRY-COMMAND, which resolves it), and
# add a row to the summary; a failed step is counted, the next one still runs
step() {
  local name=$1 what=$2 resolve=$3
  shift 4
  local start=$SECONDS outcome
  echo "== $name: $*" >&2
  if [ $DRY = 1 ]; then
    if bash -c "$resolve" > "$OUT/$name.log" 2>&1; then outcome="resolved (would run: \`$*\`)"; else outcome="NOT RESOLVED (see $name.log)"; failed=$((failed + 1)); fi
  elif "$@" > "$OUT/$name.log" 2>&1; then
    outcome=ok
  else
    outcome="FAILED (see $name.log)"
    failed=$((failed + 1))
  fi
  echo "| $name | $outcome | $((SECONDS - start)) | $what |" >> "$SUMMARY"
  echo "   $outcome" >&2
}

smoke() {  # smoke NET: a seed-size run on the fake data, then the same command again, which must resume it
  local args=("net=$1" "arch=seed_project" "task_sequence=[imgnet-5]" "epochs_per_task=2" "data.root=$DATA"
              "device=cuda" "data.eval_batch_size=256" "logger.files.plots=false" "hydra.run.dir=$OUT/smoke/$1")
  "$PY" run.py "${args[@]}" && "$PY" run.py "${args[@]}" && "$PY" - "$OUT/smoke/$1/results.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["status"] == "completed" and r["device"].startswith("cuda"), r["status"]
assert r["resumes"] == [{"task": 5, "epoch": 0}], r["resumes"]  # the second command resumed the finished run
print(f"{r['net']}: ACC {r['avg_acc']:.1f}, {len(r['epochs'])} epochs, train {r['train_time_s']:.0f} s")
EOF
}

pack() {  # four small jobs on one GPU through the local launcher
  "$PY" run.py -m hydra/launcher=local hydra.launcher.gpus=[0] hydra.launcher.jobs_per_gpu=4 meta=0,5,15,50 \
    +preset=debug device=cuda "hydra.sweep.dir=$OUT/pack" && "$PY" - "$OUT/pack" <<'EOF'
import json, pathlib, sys
runs = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).glob("*/results.json")]
assert len(runs) == 4 and all(r["status"] == "completed" and r["visible_devices"] == "0" for r in runs), runs
print("4 jobs, all on GPU 0")
EOF
}

"$PY" - "$DATA" <<'EOF'
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from fakes import write_fake_tinyimagenet  # the official layout: 200 classes, wnids.txt, train/, val/
if not (Path(sys.argv[1]) / "tiny-imagenet-200").exists():
    write_fake_tinyimagenet(Path(sys.argv[1]), n_classes=200, n_train_per_class=10, n_val_per_class=2)
EOF

step gpu-tests "the gpu-marked tests" "$PY -m pytest -m gpu tests/test_gpu.py --collect-only -q | grep -q '8 tests collected'" \
  -- "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider
step bench-gpu "benchmarks/bench_gpu.py (appends its table to benchmarks/RESULTS.md)" "$PY -m py_compile benchmarks/bench_gpu.py" \
  -- "$PY" benchmarks/bench_gpu.py
DECODES="$PY -c \"from metaplastic_vit.data import load_dataset; assert len(load_dataset('tinyimagenet', '$DATA').classes) == 200\""
for net in vit bvit hybrid; do
  step "smoke-$net" "run.py net=$net arch=seed_project task_sequence=[imgnet-5] epochs_per_task=2 device=cuda on the fake Tiny-ImageNet, then again (it must resume the finished run)" \
    "$DECODES && $PY run.py net=$net arch=seed_project task_sequence=[imgnet-5] epochs_per_task=2 data.root=$DATA device=cuda --cfg job" \
    -- smoke "$net"
done
step pack "run.py -m hydra/launcher=local hydra.launcher.jobs_per_gpu=4 meta=0,5,15,50 +preset=debug device=cuda: four jobs on GPU 0" \
  "$PY run.py hydra/launcher=local hydra.launcher.jobs_per_gpu=4 +preset=debug device=cuda --cfg hydra | grep -q jobs_per_gpu" \
  -- pack
echo >> "$SUMMARY"
if [ $failed = 0 ]; then
  echo "All steps $([ $DRY = 1 ] && echo resolved || echo passed)." >> "$SUMMARY"
else
  echo "$failed steps did not $([ $DRY = 1 ] && echo resolve || echo pass)." >> "$SUMMARY"
fi
cat "$SUMMARY"
[ $failed = 0 ] || { echo "error: $failed steps of the GPU check failed; their logs are in $OUT" >&2; exit 1; }
