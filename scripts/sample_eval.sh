#!/usr/bin/env bash
USAGE="Sample one checkpoint with the paper's sampler and evaluate the samples; writes JSON records.

usage: scripts/sample_eval.sh [--dry-run] [--tiny] CHECKPOINT

  1. torchrun sample_ddp.py: NUM_SAMPLES images, Euler-Maruyama SDE, NUM_STEPS steps (METHOD.md section 8),
     into SAMPLE_DIR/EXP/STEP-TAG/<folder named by sample_ddp.py>/samples_N.npz (resumable: rerun to finish);
  2. on machine 0: the ADM evaluator (FID, sFID, IS, precision, recall) against REF_BATCH and/or the embedded
     digits metric, records in RESULTS_DIR/EXP/STEP-TAG/{adm,digits}.json next to a copy of sampling.json.
EXP and STEP come from the path runs/EXP/checkpoints/NNNNNNN.pt (override with RUN_NAME=, RUN_STEP=).
TAG names the sampler settings, e.g. n10000-sde250-cfg1-gh1 (scripts/collect_results.py reads them back).

Environment (defaults in brackets):
  PROTOCOL       ablation [FID-10K, no CFG: the paper's B/2 tables] | system [FID-50K, CFG 1.8 for t <= 0.7]
  NUM_SAMPLES    [10000 ablation, 50000 system; 20 with --tiny]
  CFG_SCALE      [1.0 ablation, 1.8 system]      GUIDANCE_HIGH  [1.0 ablation, 0.7 system]
  MODE [sde]     NUM_STEPS [250; 10 with --tiny]  GLOBAL_SEED [0]  PER_PROC_BATCH [64]
  SAMPLE_VAE     [auto = sd-vae-ft-ema from the Hugging Face cache for latent models]; or a local folder
  NPZ_ONLY       [1]: no PNG files, only the .npz (50K PNGs are 50K files); 0 keeps the PNGs
  SAMPLE_ARGS    extra sample_ddp.py flags, e.g. '--time-convention sit' for a public SiT checkpoint
  METRICS        [adm; 'digits adm' with --tiny]: adm = evaluations/evaluator.py, digits = the embedded metric
  REF_BATCH      ADM reference batch [\$REF_DIR/VIRTUAL_imagenet256_labeled.npz, REF_DIR=/data/adm]
  INCEPTION      Inception graph (classify_image_graph_def.pb) [evaluator's default: \$ADM_INCEPTION_GRAPH or cache]
  EVAL_BACKEND   [torch]: the evaluator's --backend (tf needs TensorFlow: pip install -r requirements-eval.txt)
  SAMPLE_DIR [samples]   RESULTS_DIR [results]   (under \$TINY_ROOT with --tiny)
  plus the launcher variables of scripts/common.sh (NNODES, NODE_RANK, GPUS_PER_NODE, MASTER_ADDR, ...)."
source "$(dirname "$0")/common.sh" "$@"
set -- "${ARGS[@]}"

# ---- paths ---------------------------------------------------------------------------------------------------
SAMPLE_DIR=${SAMPLE_DIR:-$(tiny_or samples "$TINY_ROOT/samples")}      # sample_ddp.py output (large)
RESULTS_DIR=${RESULTS_DIR:-$(tiny_or results "$TINY_ROOT/results")}    # JSON records (small)
REF_DIR=${REF_DIR:-/data/adm}                                          # ADM reference batches
REF_BATCH=${REF_BATCH:-$(tiny_or "$REF_DIR/VIRTUAL_imagenet256_labeled.npz" "$TINY_ROOT/fixtures/digits_ref.npz")}
INCEPTION=${INCEPTION:-$(tiny_or "" "$TINY_ROOT/fixtures/standin_inception.pb")}

# ---- sampler and evaluation --------------------------------------------------------------------------------------
PROTOCOL=${PROTOCOL:-ablation}
case $PROTOCOL in
  ablation) n=10000; cfg=1.0; high=1.0 ;;
  system) n=50000; cfg=1.8; high=0.7 ;;
  *) die "PROTOCOL must be ablation or system, got '$PROTOCOL'" ;;
esac
NUM_SAMPLES=${NUM_SAMPLES:-$(tiny_or $n 20)}
CFG_SCALE=${CFG_SCALE:-$cfg}
GUIDANCE_HIGH=${GUIDANCE_HIGH:-$high}
MODE=${MODE:-sde}
NUM_STEPS=${NUM_STEPS:-$(tiny_or 250 10)}
GLOBAL_SEED=${GLOBAL_SEED:-0}
PER_PROC_BATCH=${PER_PROC_BATCH:-$(tiny_or 64 20)}
SAMPLE_VAE=${SAMPLE_VAE:-auto}
NPZ_ONLY=${NPZ_ONLY:-1}
METRICS=${METRICS:-$(tiny_or adm "digits adm")}

[ $# -eq 1 ] || die "give one checkpoint (see --help)"
CKPT=$1
[ "$DRY_RUN" = 1 ] || [ -f "$CKPT" ] || die "checkpoint not found: $CKPT"
for metric in $METRICS; do
  [[ $metric == adm || $metric == digits ]] || die "METRICS takes adm and/or digits, got '$metric'"
done

# runs/EXP/checkpoints/0400000.pt -> EXP, 0400000; any other file -> its name, 'final'
if [ "$(basename "$(dirname "$CKPT")")" = checkpoints ]; then
  EXP=${RUN_NAME:-$(basename "$(dirname "$(dirname "$CKPT")")")}
  STEP=${RUN_STEP:-$(basename "$CKPT" .pt)}
else
  EXP=${RUN_NAME:-$(basename "$CKPT" .pt)}
  STEP=${RUN_STEP:-final}
fi
TAG="n${NUM_SAMPLES}-${MODE}${NUM_STEPS}-cfg${CFG_SCALE}-gh${GUIDANCE_HIGH}"
samples="$SAMPLE_DIR/$EXP/$STEP-$TAG"
records="$RESULTS_DIR/$EXP/$STEP-$TAG"

# ---- 1. samples (every machine) ----------------------------------------------------------------------------------
flags=(--ckpt "$CKPT" --mode "$MODE" --num-steps "$NUM_STEPS" --cfg-scale "$CFG_SCALE" --guidance-high "$GUIDANCE_HIGH"
  --num-fid-samples "$NUM_SAMPLES" --per-proc-batch-size "$PER_PROC_BATCH" --global-seed "$GLOBAL_SEED"
  --vae "$SAMPLE_VAE" --sample-dir "$samples")
[ "$NPZ_ONLY" = 1 ] && flags+=(--npz-only)
[ "$TINY" = 1 ] && flags+=(--no-progress)
words "${SAMPLE_ARGS:-}"
launch torchrun sample_ddp.py "${flags[@]}" "${WORDS[@]}"

[ "$NODE_RANK" = 0 ] || exit 0                      # the evaluation runs once, on machine 0

# ---- 2. evaluation (machine 0) -----------------------------------------------------------------------------------
# sample_ddp.py names its folder after every sampler setting; it is the only folder under $samples.
pattern="$samples/*/samples_${NUM_SAMPLES}.npz"
if [ "$DRY_RUN" = 1 ]; then
  note "the sample folder's name is known once the checkpoint exists: shown as '*'"
  npz=$pattern
else
  mapfile -t found < <(compgen -G "$pattern" || true)
  [ ${#found[@]} -eq 1 ] || die "expected one file $pattern after sampling, found ${#found[@]}: ${found[*]:-none}"
  npz=${found[0]}
fi
run mkdir -p "$records"
run cp "$(dirname "$npz")/sampling.json" "$records/sampling.json"

if [ "$TINY" = 1 ]; then                            # stand-ins for the ImageNet reference and the Inception graph
  [ -f "$REF_BATCH" ] || run "$PYTHON" -m fixtures.tiny digits-reference "$REF_BATCH"
  [ -f "$INCEPTION" ] || run "$PYTHON" -m fixtures.standin_graph "$INCEPTION"
fi
for metric in $METRICS; do
  if [ "$metric" = adm ]; then
    adm=(--out "$records/adm.json" --backend "${EVAL_BACKEND:-torch}")
    [ -n "$INCEPTION" ] && adm+=(--inception "$INCEPTION")
    [ "$TINY" = 1 ] && adm+=(--no-progress)
    run "$PYTHON" -m evaluations.evaluator "$REF_BATCH" "$npz" "${adm[@]}"
  else
    run "$PYTHON" -m evaluations.digits_metric "$npz" --out "$records/digits.json"
  fi
done
note "records in $records"
