#!/usr/bin/env bash
# Every experiment of docs/science.md at its documented budget, on the local launcher (2 jobs at a time).
#   scripts/science.sh [searches|seeds|reports|all]   (default: all; runs under $METAPLASTIC_OUTPUT or outputs/,
#                                                      reports in docs/science/)
# Searches write their best values to <study>/search.json; the seeded sweeps read the values committed in
# sweeps/candidates/ (tags.validated), so after a new search copy its best value there first.
# Every command resumes: running the script again finishes what an interrupted run left.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${METAPLASTIC_OUTPUT:-outputs}
export METAPLASTIC_OUTPUT=$OUT
QUIET=(hydra/launcher=local logger.files.plots=false logger.console.progress=none)
what=${1:-all}

searches() {
  for c in vit bvit bvit_full bnn bnn_ln bvit_full_wide bvit_full_deep bvit_full_binmeta bvit_resid \
      bvit_full_noaffine bvit_full_frozen bvit_full_nocls bvit_full_nobias bvit_full_mlp16 bvit_full_long bvit_full_bn; do
    "$PY" run.py -m +search=meta +candidate=$c hydra.sweeper.n_trials=8 hydra.sweeper.n_jobs=2 "${QUIET[@]}"
  done
  "$PY" run.py -m +search=meta_rms +candidate=bvit_full_rms hydra.sweeper.n_trials=8 hydra.sweeper.n_jobs=2 \
    "${QUIET[@]}"
  "$PY" run.py -m +search=meta_layers +candidate=bvit_full_layerwise hydra.sweeper.n_trials=12 hydra.sweeper.n_jobs=2 \
    "${QUIET[@]}"
  for c in bvit_full bnn_ln bvit_full_nocls; do
    for s in ewc si lwf; do  # 4 trials of TPE's random start, then 3 quasi-random ones to cover the range
      "$PY" run.py -m +search=strength +candidate=$c strategy=$s hydra.sweeper.n_trials=4 hydra.sweeper.n_jobs=2 \
        "${QUIET[@]}"
      "$PY" run.py -m +search=strength +candidate=$c strategy=$s hydra.sweeper.n_trials=7 hydra.sweeper.sampler=qmc \
        hydra.sweeper.n_jobs=2 "${QUIET[@]}"
    done
  done
  for c in bvit_full bnn_ln; do
    "$PY" run.py -m +search=meta_front +candidate=$c hydra.sweeper.n_trials=6 hydra.sweeper.n_jobs=2 "${QUIET[@]}"
  done
}

seeds() {
  for sweep in science baselines science_split science_5tasks science_screen science_followup \
      science_screen_seeds science_norm science_layers; do
    "$PY" run.py -m +sweep=$sweep hydra.sweep.dir="$OUT/science/$sweep" "${QUIET[@]}"
  done
  # the default net before the study, for the comparison with the new default
  "$PY" run.py -m net=bvit_full_ln meta=50 seed=0,1,2 hydra.sweep.dir="$OUT/science/previous_default" "${QUIET[@]}"
}

reports() {
  "$PY" -m metaplastic_vit.report "$OUT/science/science" --out docs/science/science
  "$PY" -m metaplastic_vit.report "$OUT/science/baselines" "$OUT"/science/science/*+candidate=bvit_full,* \
    "$OUT"/science/science/*+candidate=bnn_ln,* "$OUT"/science/science_screen_seeds/*+candidate=bvit_full_nocls,* \
    --out docs/science/baselines
  "$PY" -m metaplastic_vit.report "$OUT/science/science_5tasks" --out docs/science/science_5tasks
  "$PY" -m metaplastic_vit.report "$OUT/science/science_split" --out docs/science/science_split
  "$PY" -m metaplastic_vit.report "$OUT/science/science_screen" --out docs/science/science_screen
  "$PY" -m metaplastic_vit.report "$OUT/science/science_followup" "$OUT"/science/science/*+candidate=bvit_full,* \
    --out docs/science/science_followup
  "$PY" -m metaplastic_vit.report "$OUT/science/science_screen_seeds" "$OUT"/science/science/*+candidate=bvit_full,* \
    --out docs/science/science_screen_seeds
  "$PY" -m metaplastic_vit.report "$OUT/science/science_norm" "$OUT/science/science_layers" \
    "$OUT"/science/science/*+candidate=bvit_full,* --out docs/science/science_norm_layers
  "$PY" -m metaplastic_vit.report "$OUT/science/previous_default" "$OUT"/science/science/+arm=validated,+candidate=bvit_full,* \
    --out docs/science/previous_default
  for dir in "$OUT"/search/search_*/*/; do  # every search: best trials or the Pareto front, test numbers apart
    name=$(basename "$(dirname "$dir")")/$(basename "$dir")
    "$PY" -m metaplastic_vit.report "$dir" --out "docs/science/$name"
  done
}

case $what in
  searches) searches ;;
  seeds) seeds; reports ;;
  reports) reports ;;
  all) searches; seeds; reports ;;
  *) echo "error: unknown part '$what'; use searches, seeds, reports or all" >&2; exit 2 ;;
esac
