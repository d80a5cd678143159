# Shared by the launch scripts in scripts/ and studies/cpu-ablations/run.sh (sourced, never run on its own):
# the common flags, the environment defaults, the launcher and the dry-run `run`. Each calling script defines
# USAGE before sourcing this file with its arguments (`source common.sh "$@"`) and continues with
# `set -- "${ARGS[@]}"`.
#
# Flags understood by every script:
#   -h, --help     print the script's USAGE and exit
#   --dry-run      = DRY_RUN=1: print every command, one per line, instead of running it
#   --tiny         = TINY=1: run the whole chain on the CPU in minutes (SiT-T/2 on the embedded 16x16 digits,
#                  a few training steps, ~20 samples, the embedded digits metric and the ADM evaluator with a
#                  stand-in Inception graph); everything goes under $TINY_ROOT
#
# Environment (all optional):
#   LAUNCHER       accelerate | torchrun. Default: accelerate for train.py, torchrun for sampling/preprocessing
#   NNODES         machines taking part (default: $SLURM_NNODES, else 1); start the same script on every machine
#   NODE_RANK      this machine's index, 0 .. NNODES-1 (default: $SLURM_NODEID, else 0)
#   GPUS_PER_NODE  processes per machine (default 8)
#   MASTER_ADDR    address of machine 0 (default 127.0.0.1);  MASTER_PORT (default 29500)
#   PYTHON         the interpreter (default python)
#   TINY_ROOT      where --tiny writes (default runs/tiny-chain)
# Relative paths are relative to the repository root: the scripts run from there.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPTS="$REPO/scripts"
cd "$REPO"

die() { echo "error: $*" >&2; exit 2; }

COMMON_HELP="
Every script:
  --dry-run   (DRY_RUN=1) print the commands, one per line, instead of running them
  --tiny      (TINY=1) the whole chain on the CPU in minutes: SiT-T/2 on the embedded digits, a few steps, ~20
              samples, the digits metric and the ADM evaluator with a stand-in Inception graph, under \$TINY_ROOT
              (default runs/tiny-chain)
  Launcher: LAUNCHER (accelerate|torchrun), NNODES, NODE_RANK (default from SLURM), GPUS_PER_NODE (8),
  MASTER_ADDR, MASTER_PORT; see scripts/common.sh. Paths are relative to the repository root."

ARGS=()
for arg in "$@"; do
  case $arg in
    -h|--help) printf '%s\n%s\n' "$USAGE" "$COMMON_HELP"; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --tiny) TINY=1 ;;
    *) ARGS+=("$arg") ;;
  esac
done

export DRY_RUN=${DRY_RUN:-0}
export TINY=${TINY:-0}
export NNODES=${NNODES:-${SLURM_NNODES:-1}}
export NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
export GPUS_PER_NODE=${GPUS_PER_NODE:-8}
export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
export MASTER_PORT=${MASTER_PORT:-29500}
export PYTHON=${PYTHON:-python}
export TINY_ROOT=${TINY_ROOT:-runs/tiny-chain}

for var in NNODES NODE_RANK GPUS_PER_NODE; do
  [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a whole number, got '${!var}'"
done
[ "$NODE_RANK" -lt "$NNODES" ] || die "NODE_RANK $NODE_RANK must be below NNODES $NNODES"

if [ "$TINY" = 1 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}     # tiny tensors: one thread is fastest on a shared CPU
  export CUDA_VISIBLE_DEVICES=""                     # the tiny chain is a CPU check, also on a GPU machine
  export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
fi

# tiny_or REAL TINY: the value for this mode (for defaults: VAR=${VAR:-$(tiny_or a b)}).
tiny_or() { if [ "$TINY" = 1 ]; then echo "$2"; else echo "$1"; fi; }

# run CMD...: print the command (shell-quoted, one line) and, unless DRY_RUN=1, run it.
run() {
  local line
  line=$(printf '%q ' "$@")
  line=${line% }
  if [ "$DRY_RUN" = 1 ]; then
    echo "$line"
  else
    echo "+ $line" >&2
    "$@"
  fi
}

# note TEXT: a comment for the reader; in a dry run it is printed as a '#' line between the commands.
note() { echo "# $*" >&2; }

# launch DEFAULT_LAUNCHER PROGRAM ARGS...: run a Python program on every GPU of every machine.
# PROGRAM is a file (train.py) or '-m MODULE'. TINY=1: plain python, one process, CPU.
launch() {
  local launcher=${LAUNCHER:-$1}; shift
  if [ "$TINY" = 1 ]; then
    run "$PYTHON" "$@"
    return
  fi
  local nproc=$((NNODES * GPUS_PER_NODE)) multi=()
  case $launcher in
    torchrun)
      run torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$@" ;;
    accelerate)
      [ "$nproc" -gt 1 ] && multi=(--multi_gpu)
      run accelerate launch "${multi[@]}" --num_machines "$NNODES" --machine_rank "$NODE_RANK" \
        --num_processes "$nproc" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" "$@" ;;
    *) die "LAUNCHER must be accelerate or torchrun, got '$launcher'" ;;
  esac
}

# words VAR_VALUE: split an environment string of extra flags (TRAIN_ARGS, SAMPLE_ARGS) into the array WORDS.
words() { read -r -a WORDS <<< "${1:-}"; }

# The training flags --tiny adds after a preset: the preset's method (alignment, DTS, AS, teacher) stays, its scale
# becomes SiT-T/2 on the 16x16 digits for TINY_STEPS steps, with a checkpoint every TINY_STEPS / 2 steps. EMA decay
# 0.5: after a few steps the EMA weights (which are sampled) then reflect the training, so settings differ.
export TINY_STEPS=${TINY_STEPS:-4}
TINY_TRAIN_FLAGS=(--model SiT-T/2 --block-out-s 2 --block-out-t 4 --batch-size 16 --learning-rate 1e-3
  --ema-decay 0.5 --mixed-precision no --max-train-steps "$TINY_STEPS" --checkpoint-steps $((TINY_STEPS / 2))
  --sample-steps 0 --log-every 1 --num-workers 0 --eval-samples 0)

# train_and_eval EXP PROTOCOL "STEPS" TRAIN_FLAGS...: train run EXP (resumes when it exists), then sample and
# evaluate its checkpoints at STEPS with PROTOCOL (scripts/eval_run.sh). TRAIN=0 / EVAL=0 skip either half.
train_and_eval() {
  local exp=$1 protocol=$2 steps=$3
  shift 3
  if [ "${TRAIN:-1}" = 1 ]; then
    local flags=("$@")
    [ "$TINY" = 1 ] && flags+=("${TINY_TRAIN_FLAGS[@]}")
    words "${TRAIN_ARGS:-}"
    launch accelerate train.py "${flags[@]}" "${WORDS[@]}" --data-dir "$DATA_DIR" --output-dir "$OUTPUT_DIR" \
      --exp-name "$exp" --resume auto
  fi
  if [ "${EVAL:-1}" = 1 ]; then
    PROTOCOL=$protocol STEPS=$steps "$SCRIPTS/eval_run.sh" "$OUTPUT_DIR/$exp"
  fi
}
