#!/usr/bin/env bash
USAGE="The paper's ablations (Tables 1-3) and the method against its baselines, at small scale on the CPU:
SiT-N/2 (depth 6, width 64, 64 tokens of 2x2 pixels) trained on the train split of the embedded 16x16 digits
(digits:16:train, 1352 images), SEEDS seeds per setting, each checkpoint at 1/8, 1/2 and 1 of the run (the
paper's 100K / 400K / 800K of 800K) sampled and scored by the digits metric against the 445 held-out digits
(Frechet distance in the classifier's features, label accuracy, memorisation share;
evaluations/digits_metric.py --reference heldout). studies/cpu-ablations/collect.py then writes the table and
the figure. Run from the repository root.

usage: studies/cpu-ablations/run.sh [--dry-run] [--tiny] [SETTING ...]

Settings (default: all 12); run name cpu-SETTING-sSEED. Every run is a preset's method at the study's scale:
  dual-full-r0.25  dual-as-r0.25          Table 1: dual timesteps, full attention vs AS, mask ratio 0.25
  single-full-r0.25  single-as-r0.25      Table 2: one timestep for all tokens
  dual-full-r0.5  dual-as-r0.5            Table 3: mask ratio 0.5
  dual-as-r0.5-rho0.25                    Table 3: AS at 0.5 with 25% full-image samples
  dual-full-r0.35  dual-as-r0.35          Table 3: mask ratio 0.35
  sit  sra  self-flow                     baselines (presets sit-b2, sra-b2, self-flow-b2); 'ours' (SRA +
                                          DTS + AS at 0.25) is the run dual-as-r0.25
Extra settings (not in the default list; run them by name): DiT's process, sampled with DDPM's ancestral
sampler respaced to NUM_STEPS steps:
  dit  dit-sra                            presets dit-b2 (DiT) and dit-sra-xl2 (the release's DiT-SRA)
The {dual|single}-{full|as}-r<ratio>[-rho<p>] runs are the preset ours-b2 with one factor changed, as in
scripts/ablations_b2.sh (the teacher keeps --teacher-t sra, on the student's groups).

Sizing (2 idle CPU cores, JOBS=2, about 90 minutes for the default 12 settings x 3 seeds): see RESULTS.md.
Runs go seed by seed (all settings of seed 0 first), so a study cut short still pairs settings on whole seeds.
Resumable: a run whose records all exist is skipped; otherwise training continues with --resume auto from
its newest checkpoint, sampling continues from the chunks that exist, and only missing records are computed.
Rerun the same command after an interruption.

Environment (defaults in brackets; --tiny values after the semicolon):
  SEEDS        training seeds ['0 1 2'; '0 1']
  STEPS        training steps per run, a multiple of 8 [720; 8]; evaluated at STEPS/8, STEPS/2, STEPS
  BATCH        batch size [32; 16]          LR  learning rate [1e-3]
  EMA_DECAY    EMA (and SRA teacher) decay [1 - 80/STEPS: the paper's 0.9999 over 800K steps, a window of 1/80
               of the run]
  MODEL        [SiT-N/2]                     DATA_DIR  [digits:16:train]
  NUM_SAMPLES  samples per evaluation, balanced labels [500; 20]   NUM_STEPS  SDE sampler steps [25; 5]
  JOBS         runs at the same time, one CPU thread each [2]
  OUTPUT_DIR   run folders [runs/cpu-study]   SAMPLE_DIR [samples/cpu-study]   RESULTS_DIR [results/cpu-study]
               (under \$TINY_ROOT with --tiny); each run's console output goes to RESULTS_DIR/logs/RUN.log
  TRAIN_ARGS   extra train.py flags for every run
Writes RESULTS_DIR/RUN/STEP-TAG/{digits.json,sampling.json} per evaluation, a copy of the run's flags in
RESULTS_DIR/RUN/args.json (so the records tell the run's setting and seed without the run folder) and
RESULTS_DIR/study.json (the study's size, its wall time and the load average before and after)."
# the launch scripts' shared part (flags, run, tiny_or); it changes to the repository root
source "$(dirname "$0")/../../scripts/common.sh" "$@"
set -- "${ARGS[@]}"

SEEDS=${SEEDS:-$(tiny_or "0 1 2" "0 1")}
STEPS=${STEPS:-$(tiny_or 720 8)}
BATCH=${BATCH:-$(tiny_or 32 16)}
LR=${LR:-1e-3}
MODEL=${MODEL:-SiT-N/2}
DATA_DIR=${DATA_DIR:-digits:16:train}
NUM_SAMPLES=${NUM_SAMPLES:-$(tiny_or 500 20)}
NUM_STEPS=${NUM_STEPS:-$(tiny_or 25 5)}
JOBS=${JOBS:-2}
OUTPUT_DIR=${OUTPUT_DIR:-$(tiny_or runs/cpu-study "$TINY_ROOT/runs")}
SAMPLE_DIR=${SAMPLE_DIR:-$(tiny_or samples/cpu-study "$TINY_ROOT/samples")}
RESULTS_DIR=${RESULTS_DIR:-$(tiny_or results/cpu-study "$TINY_ROOT/results")}

for var in STEPS BATCH NUM_SAMPLES NUM_STEPS JOBS; do
  [[ ${!var} =~ ^[0-9]+$ ]] && [ "${!var}" -gt 0 ] ||
    die "$var must be a positive whole number, got '${!var}'"
done
[ $((STEPS % 8)) -eq 0 ] ||
  die "STEPS must be a multiple of 8 (evaluations at STEPS/8, STEPS/2, STEPS), got $STEPS"
for seed in $SEEDS; do [[ $seed =~ ^[0-9]+$ ]] || die "SEEDS must be whole numbers, got '$SEEDS'"; done
[ -n "$SEEDS" ] || die "SEEDS is empty"
# EMA window 1/80 of the run (the paper: 0.9999 over 800K steps), at least 0.5
EMA_DECAY=${EMA_DECAY:-$(awk -v s="$STEPS" 'BEGIN { d = 1 - 80 / s; printf "%.6g", (d < 0.5 ? 0.5 : d) }')}
EVAL_STEPS="$((STEPS / 8)) $((STEPS / 2)) $STEPS"
# sample_mode SETTING: the sampler of a setting's runs (DDPM's ancestral one for DiT's process)
sample_mode() { case $1 in dit|dit-sra) echo ddpm ;; *) echo sde ;; esac; }
tag() { echo "n${NUM_SAMPLES}-$(sample_mode "$1")${NUM_STEPS}-cfg1.0-gh1.0"; }

SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(dual-full-r0.25 dual-as-r0.25 single-full-r0.25 single-as-r0.25
  dual-full-r0.5 dual-as-r0.5 dual-as-r0.5-rho0.25 dual-full-r0.35 dual-as-r0.35 sit sra self-flow)

# setting_flags SETTING: the train.py flags of a setting, into the array FLAGS.
setting_flags() {
  case $1 in
    sit|sra|self-flow) FLAGS=(--preset "$1-b2"); return ;;
    dit) FLAGS=(--preset dit-b2); return ;;
    dit-sra) FLAGS=(--preset dit-sra-xl2); return ;;
  esac
  [[ $1 =~ ^(dual|single)-(full|as)-r([0-9.]+)(-rho([0-9.]+))?$ ]] ||
    die "setting '$1' is not {dual|single}-{full|as}-r<ratio>[-rho<p>], sit, sra, self-flow, dit or dit-sra" \
      "(see --help)"
  FLAGS=(--preset ours-b2 --mask-ratio "${BASH_REMATCH[3]}" --full-sample-prob "${BASH_REMATCH[5]:-0}")
  local timesteps=${BASH_REMATCH[1]} attention=${BASH_REMATCH[2]}
  if [ "$timesteps" = dual ]; then FLAGS+=(--dual-time-scheduling)
  else FLAGS+=(--no-dual-time-scheduling); fi
  if [ "$attention" = as ]; then FLAGS+=(--attention-separation); else FLAGS+=(--no-attention-separation); fi
}
for setting in "${SETTINGS[@]}"; do setting_flags "$setting"; done      # every name checked before any work

# The study's scale, after the preset (explicit flags win over it): the preset's method stays.
SCALE_FLAGS=(--model "$MODEL" --block-out-s 2 --block-out-t 4 --batch-size "$BATCH" --learning-rate "$LR"
  --ema-decay "$EMA_DECAY" --mixed-precision no --max-train-steps "$STEPS" --checkpoint-steps $((STEPS / 8))
  --sample-steps 0 --log-every $((STEPS / 8)) --num-workers 0 --eval-samples 0 --data-dir "$DATA_DIR")

# record SETTING SEED STEP: the digits record of one evaluation
record() { echo "$RESULTS_DIR/cpu-$1-s$2/$(printf '%07d' "$3")-$(tag "$1")/digits.json"; }

# one_run SETTING SEED: train (unless its last checkpoint exists), then each missing evaluation.
one_run() {
  local setting=$1 seed=$2 exp="cpu-$1-s$2" step ckpt samples records
  setting_flags "$setting"
  words "${TRAIN_ARGS:-}"
  if [ "$DRY_RUN" = 1 ] || [ ! -f "$OUTPUT_DIR/$exp/checkpoints/$(printf '%07d' "$STEPS").pt" ]; then
    run "$PYTHON" train.py "${FLAGS[@]}" "${SCALE_FLAGS[@]}" "${WORDS[@]}" --seed "$seed" \
      --output-dir "$OUTPUT_DIR" --exp-name "$exp" --resume auto
  fi
  for step in $EVAL_STEPS; do
    [ "$DRY_RUN" = 0 ] && [ -f "$(record "$setting" "$seed" "$step")" ] && continue
    ckpt="$OUTPUT_DIR/$exp/checkpoints/$(printf '%07d' "$step").pt"
    samples="$SAMPLE_DIR/$exp/$(printf '%07d' "$step")-$(tag "$setting")"
    records=$(dirname "$(record "$setting" "$seed" "$step")")
    run "$PYTHON" sample_ddp.py --ckpt "$ckpt" --mode "$(sample_mode "$setting")" --num-steps "$NUM_STEPS" \
      --cfg-scale 1.0 --num-fid-samples "$NUM_SAMPLES" --per-proc-batch-size 250 --global-seed 0 \
      --balanced-labels --vae none --npz-only --no-progress --sample-dir "$samples"
    local npz="$samples/*/samples_${NUM_SAMPLES}.npz"
    if [ "$DRY_RUN" = 0 ]; then
      mapfile -t found < <(compgen -G "$npz" || true)
      [ ${#found[@]} -eq 1 ] || die "expected one file $npz after sampling, found ${#found[@]}"
      npz=${found[0]}
    fi
    run mkdir -p "$records"
    run cp "$(dirname "$npz")/sampling.json" "$records/sampling.json"
    run "$PYTHON" -m evaluations.digits_metric "$npz" --reference heldout --out "$records/digits.json"
  done
  # the run's flags beside its records: collect.py reads the setting and the seed from them
  run cp "$OUTPUT_DIR/$exp/args.json" "$RESULTS_DIR/$exp/args.json"
}

# finished SETTING SEED: every evaluation of the run is recorded
finished() {
  local step
  for step in $EVAL_STEPS; do [ -f "$(record "$1" "$2" "$step")" ] || return 1; done
}

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1        # one thread per run; JOBS runs share the cores
export CUDA_VISIBLE_DEVICES=""                    # a CPU study, also on a GPU machine
start=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
[ "$DRY_RUN" = 1 ] || mkdir -p "$RESULTS_DIR/logs"
declare -A running=()                             # pid -> run name
failed=()

# reap: wait for one running job, note a failure.
reap() {
  local pid
  if ! wait -n -p pid "${!running[@]}"; then failed+=("${running[$pid]}"); fi
  unset "running[$pid]"
}

# Seed by seed: a study cut short holds whole seeds of every setting, so the paired differences exist.
for seed in $SEEDS; do
  for setting in "${SETTINGS[@]}"; do
    exp="cpu-$setting-s$seed"
    if [ "$DRY_RUN" = 1 ]; then
      note "run $exp"
      one_run "$setting" "$seed"
      continue
    fi
    if finished "$setting" "$seed"; then
      note "$exp: finished, skipped"
      continue
    fi
    while [ ${#running[@]} -ge "$JOBS" ]; do reap; done
    note "$exp: started (log: $RESULTS_DIR/logs/$exp.log)"
    one_run "$setting" "$seed" > "$RESULTS_DIR/logs/$exp.log" 2>&1 &
    running[$!]=$exp
  done
done
while [ ${#running[@]} -gt 0 ]; do reap; done
[ "$DRY_RUN" = 1 ] && exit 0

wall=$(($(date +%s) - start))
load_after=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
# the samplers of the settings run: sde-N, and ddpm-N for DiT's process
study_samplers=$(for s in "${SETTINGS[@]}"; do echo "$(sample_mode "$s")-$NUM_STEPS"; done | sort -u |
  paste -sd,)
STUDY_SETTINGS="${SETTINGS[*]}" STUDY_FAILED="${failed[*]}" STUDY_WALL=$wall STUDY_SAMPLER=$study_samplers \
  STUDY_LOAD="$load_before;$load_after" \
  SEEDS=$SEEDS STEPS=$STEPS BATCH=$BATCH LR=$LR EMA_DECAY=$EMA_DECAY MODEL=$MODEL DATA_DIR=$DATA_DIR \
  NUM_SAMPLES=$NUM_SAMPLES NUM_STEPS=$NUM_STEPS JOBS=$JOBS \
  "$PYTHON" -c '
import os, sys
from infra.fileio import atomic_write_json
e = os.environ
steps = int(e["STEPS"])
atomic_write_json(sys.argv[1], dict(
    settings=e["STUDY_SETTINGS"].split(), seeds=[int(s) for s in e["SEEDS"].split()], steps=steps,
    eval_steps=[steps // 8, steps // 2, steps], batch_size=int(e["BATCH"]), learning_rate=float(e["LR"]),
    ema_decay=float(e["EMA_DECAY"]), model=e["MODEL"], data_dir=e["DATA_DIR"],
    num_samples=int(e["NUM_SAMPLES"]), sampler=e["STUDY_SAMPLER"], jobs=int(e["JOBS"]),
    wall_seconds=int(e["STUDY_WALL"]), load_before=e["STUDY_LOAD"].split(";")[0],
    load_after=e["STUDY_LOAD"].split(";")[1], failed=e["STUDY_FAILED"].split()))' "$RESULTS_DIR/study.json"
echo "study: ${#SETTINGS[@]} settings x seeds '$SEEDS' in ${wall}s" \
  "(load average $load_before -> $load_after); records in $RESULTS_DIR"
[ ${#failed[@]} -eq 0 ] || die "${#failed[@]} run(s) failed: ${failed[*]} (logs in $RESULTS_DIR/logs)"
