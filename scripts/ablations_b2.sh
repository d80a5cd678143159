#!/usr/bin/env bash
USAGE="The SiT-B/2 ablations of Tables 1-3 and Figures 4-5: one training run per setting, 800K steps, then FID-10K
(SDE 250 steps, no CFG) at 100K, 400K and 800K steps.

usage: scripts/ablations_b2.sh [--dry-run] [--tiny] [SETTING ...]

Settings (default: all). Every run is the preset ours-b2 (SRA + DTS + AS, student block 3, teacher block 8,
lambda 0.5, teacher-t sra with the teacher on the student's groups) with one factor changed; its run name is
b2-SETTING (scripts/collect_results.py reads the setting from the run's args.json):
  dual-full-r0.25  dual-as-r0.25          Table 1: dual timesteps, full attention vs AS, mask ratio 0.25
  single-full-r0.25  single-as-r0.25      Table 2: one timestep for all tokens (AS as augmentation)
  dual-full-r0.35  dual-as-r0.35          Table 3: mask ratio 0.35
  dual-full-r0.5  dual-as-r0.5            Table 3: mask ratio 0.5
  dual-as-r0.5-rho0.25                    Table 3 / Figure 5: AS at 0.5 with 25% full-image samples
Any name of the form {dual|single}-{full|as}-r<ratio>[-rho<p>] works.

Environment (defaults in brackets):
  DATA_DIR     preprocessed ImageNet 256 latents [/data/imagenet256; digits with --tiny]
  OUTPUT_DIR   run folders [runs]
  EVAL_STEPS   checkpoints to evaluate ['100000 400000 800000'; '2 4' with --tiny]
  TRAIN_ARGS   extra train.py flags for every run, e.g. '--compile'
  TRAIN=0      only evaluate;  EVAL=0 only train
  plus scripts/sample_eval.sh's variables (NUM_SAMPLES, METRICS, REF_BATCH, ...) and scripts/common.sh's launcher
  variables (LAUNCHER, NNODES, NODE_RANK, GPUS_PER_NODE, MASTER_ADDR, MASTER_PORT)."
source "$(dirname "$0")/common.sh" "$@"
set -- "${ARGS[@]}"

export DATA_DIR=${DATA_DIR:-$(tiny_or /data/imagenet256 digits)}
export OUTPUT_DIR=${OUTPUT_DIR:-$(tiny_or runs "$TINY_ROOT/runs")}
EVAL_STEPS=${EVAL_STEPS:-$(tiny_or "100000 400000 800000" "$((TINY_STEPS / 2)) $TINY_STEPS")}

SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(dual-full-r0.25 dual-as-r0.25 single-full-r0.25 single-as-r0.25
  dual-full-r0.35 dual-as-r0.35 dual-full-r0.5 dual-as-r0.5 dual-as-r0.5-rho0.25)

for setting in "${SETTINGS[@]}"; do
  [[ $setting =~ ^(dual|single)-(full|as)-r([0-9.]+)(-rho([0-9.]+))?$ ]] ||
    die "setting '$setting' is not {dual|single}-{full|as}-r<ratio>[-rho<p>] (see --help)"
  timesteps=${BASH_REMATCH[1]} attention=${BASH_REMATCH[2]} ratio=${BASH_REMATCH[3]} rho=${BASH_REMATCH[5]:-0}
  flags=(--preset ours-b2 --mask-ratio "$ratio" --full-sample-prob "$rho")
  if [ "$timesteps" = dual ]; then flags+=(--dual-time-scheduling); else flags+=(--no-dual-time-scheduling); fi
  if [ "$attention" = as ]; then flags+=(--attention-separation); else flags+=(--no-attention-separation); fi
  note "setting $setting"
  train_and_eval "b2-$setting" ablation "$EVAL_STEPS" "${flags[@]}"
done
