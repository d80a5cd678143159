#!/usr/bin/env bash
USAGE="Sample and evaluate every saved checkpoint of a training run (or the steps in STEPS).

usage: scripts/eval_run.sh [--dry-run] [--tiny] RUN_DIR

Environment:
  STEPS   training steps to evaluate, e.g. '100000 400000 800000' (the paper's B/2 ablations);
          default: every checkpoint in RUN_DIR/checkpoints/
Each checkpoint RUN_DIR/checkpoints/NNNNNNN.pt goes through scripts/sample_eval.sh with the same environment
(PROTOCOL=ablation|system, NUM_SAMPLES, METRICS, ...: see scripts/sample_eval.sh --help). A listed step whose
checkpoint is missing is an error (the run has not reached it yet)."
source "$(dirname "$0")/common.sh" "$@"
set -- "${ARGS[@]}"

[ $# -eq 1 ] || die "give one run folder (see --help)"
RUN_DIR=${1%/}
STEPS=${STEPS:-}

ckpts=()
if [ -n "$STEPS" ]; then
  for step in $STEPS; do
    [[ $step =~ ^[0-9]+$ ]] || die "STEPS must be whole numbers, got '$step'"
    ckpts+=("$RUN_DIR/checkpoints/$(printf '%07d' "$step").pt")
  done
else
  mapfile -t ckpts < <(compgen -G "$RUN_DIR/checkpoints/[0-9][0-9][0-9][0-9][0-9][0-9][0-9]*.pt" | sort || true)
  [ ${#ckpts[@]} -gt 0 ] || die "no checkpoints in $RUN_DIR/checkpoints (set STEPS to name them)"
fi

for ckpt in "${ckpts[@]}"; do
  [ "$DRY_RUN" = 1 ] || [ -f "$ckpt" ] || die "$ckpt not found: has the run reached that step?"
  "$SCRIPTS/sample_eval.sh" "$ckpt"
done
