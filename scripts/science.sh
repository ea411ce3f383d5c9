#!/usr/bin/env bash
# Every experiment of docs/science.md, in dependency order, on the local launcher (2 jobs at a time). Each part
# first searches on validation data (seeds 100-102: never the evaluation seeds), writes each search's report
# into docs/science/search/ and exports its best values, at full precision, into sweeps/candidates/
# (python -m metaplastic_vit.candidates export); then it runs its seeded sweeps (seeds 0-2) and their reports.
#   [SEARCH_TRIALS=8] [CAPACITY_SIZES='bnn_ln_h64 ...'] scripts/science.sh [main|baselines|statistics|walk|capacity|attention|probes|tasks|boundaries|mesu|stream|reports|all]
# Runs go under $METAPLASTIC_OUTPUT (default outputs/); reports into docs/science/. Every command resumes:
# running the script again finishes what an interrupted run left (a search continues its study).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${METAPLASTIC_OUTPUT:-outputs}
export METAPLASTIC_OUTPUT=$OUT
QUIET=(hydra/launcher=local logger.files.plots=false logger.console.progress=none)
DOCS=docs/science
TRIALS=${SEARCH_TRIALS:-8}  # trials of each meta, meta_lr and MESU search
# the sizes of the capacity part (default: every +candidate of sweeps/grid/science_capacity.yaml)
GRID_SIZES=$(sed -n 's/^ *+candidate: *//p' sweeps/grid/science_capacity.yaml)
SIZES=${CAPACITY_SIZES:-${GRID_SIZES//,/ }}
what=${1:-all}

# search <search> <candidate> <label> [overrides...]: run a named search for a candidate, report it into
# docs/science/search/<search>/<label>, and export its best values into the candidate
search() {
  local name=$1 candidate=$2 label=$3
  shift 3
  local dir=$OUT/search/$name/$label
  "$PY" run.py -m "+search=$name" "+candidate=$candidate" "$@" hydra.sweep.dir="$dir" hydra.sweeper.n_jobs=2 \
    "${QUIET[@]}"
  "$PY" -m metaplastic_vit.report "$dir" --out "$DOCS/search/$name/$label" > /dev/null
  "$PY" -m metaplastic_vit.candidates export "$DOCS/search/$name/$label/searches/$label" "$candidate"
}

# sweep <name> [overrides...]: a seeded sweep of sweeps/<name>.yaml under $OUT/science/<name>
sweep() {
  local name=$1
  shift
  "$PY" run.py -m "+sweep=$name" "$@" hydra.sweep.dir="$OUT/science/$name" "${QUIET[@]}"
}

report() {  # report <out> <dir> [<dir> ...]
  local out=$1
  shift
  "$PY" -m metaplastic_vit.report "$@" --out "$DOCS/$out" > /dev/null
}

main() {
  for c in bnn_ln bvit_full bnn vit bvit; do
    search meta "$c" "$c" hydra.sweeper.n_trials="$TRIALS"
  done
  sweep science
}

baselines() {
  for c in bnn_ln bvit_full; do
    for s in ewc si lwf; do
      search strength "$c" "$c-$s" strategy=$s
    done
  done
  sweep baselines
}

statistics() {
  sweep science_statistics
}

walk() {
  for c in walk_vitwidth walk_gelu walk_resid walk_prenorm; do
    search meta "$c" "$c" hydra.sweeper.n_trials="$TRIALS"
  done
  sweep science_walk
}

capacity() {  # one search seed per trial (seed 100): the larger ViTs take minutes per run
  local c
  for c in $SIZES; do
    search meta_lr "$c" "$c" hydra.sweeper.n_trials="$TRIALS" "hydra.sweeper.seeds=[100]"
  done
  sweep science_capacity "+candidate=${SIZES// /,}"
}

probes() {
  sweep science_probes
}

tasks() {  # five permuted tasks, and split digits in the class scenario, at the metas validated on three tasks
  sweep science_5tasks
  sweep science_split
}

boundaries() {  # without task boundaries (none, gradual): each setting's own meta, then hard vs none vs gradual
  for c in bnn_ln_none bnn_ln_gradual bvit_full_none bvit_full_gradual; do
    search meta "$c" "$c" hydra.sweeper.n_trials="$TRIALS"
  done
  sweep science_boundaries
}

mesu() {  # MESU's settings on validation (permuted digits), then MESU and the metaplastic Adam in every setting
  search mesu bnn_ln_mesu bnn_ln_mesu hydra.sweeper.n_trials="$TRIALS"
  # the ViT's gradients are far smaller than the MLP's: in the MLP's range (lr 0.1-10) no trial of 5 learned at
  # all (validation 9-11%), so its means' rate is searched higher
  search mesu bvit_full_mesu bvit_full_mesu hydra.sweeper.n_trials="$TRIALS" "lr=tag(log,interval(10.0,100000.0))" \
    "optimizer.sigma_prior=tag(log,interval(0.001,0.05))"
  sweep science_mesu
  sweep science_mesu_adam
}

attention() {  # a fix tried where the walk loses task 1: attention and the maps in and out each with its own meta
  search meta_layers bvit_full_layerwise bvit_full_layerwise hydra.sweeper.n_trials="$TRIALS"
  sweep science_attention
}

stream() {  # the paper's stream learning on the embedded digits, beside whole-dataset training
  sweep stream_digits
}

reports() {
  report science "$OUT/science/science"
  report baselines "$OUT/science/baselines" "$OUT"/science/science/*+candidate=bvit_full,* \
    "$OUT"/science/science/*+candidate=bnn_ln,*
  report statistics "$OUT/science/science_statistics" "$OUT"/science/science/*+candidate=bnn,*
  report walk "$OUT/science/science_walk" "$OUT"/science/science/*+candidate=bnn_ln,* \
    "$OUT"/science/science/*+candidate=bvit_full,*
  report capacity "$OUT/science/science_capacity"
  # bvit_full with one meta (and without): the hard-boundary rows of +sweep=science_boundaries, which repeat
  # +sweep=science's bit for bit
  report attention "$OUT/science/science_attention" "$OUT"/science/science_boundaries/*+candidate=bvit_full,*
  report probes "$OUT/science/science_probes" "$OUT"/science/science/*+candidate=bvit_full,* \
    "$OUT"/science/science/*+candidate=bnn_ln,*
  report tasks "$OUT/science/science_5tasks" "$OUT/science/science_split"
  report boundaries "$OUT/science/science_boundaries"
  report mesu "$OUT/science/science_mesu" "$OUT/science/science_mesu_adam"
  report stream "$OUT/science/stream_digits"
}

part() {  # part <name>: run a part, saying when it started and ended (the study's time)
  echo "science: $1 started $(date -u +%FT%TZ)" >&2
  "$1"
  echo "science: $1 ended $(date -u +%FT%TZ)" >&2
}

case $what in
  main|baselines|statistics|walk|capacity|attention|probes|tasks|boundaries|mesu|stream|reports) part "$what" ;;
  all) for p in main baselines statistics walk boundaries mesu stream probes tasks capacity attention reports; do part $p; done ;;
  *) echo "error: unknown part '$what'; use main, baselines, statistics, walk, capacity, attention, probes, tasks, boundaries, mesu," \
       "stream, reports or all" >&2
     exit 2 ;;
esac
