#!/usr/bin/env bash
USAGE="The SiT-XL/2 system runs of Tables 4-5: train each method, then FID-50K of the final checkpoint (SDE 250
steps, CFG 1.8 applied for t <= 0.7, ADM evaluator).

usage: scripts/train_system.sh [--dry-run] [--tiny] [METHOD ...]

Methods (presets.py; run name = preset name, e.g. ours-xl2, sra-xl2-512):
  ours       SRA + DTS + AS (the paper's scheme)        sit        vanilla SiT
  sra        SRA (EMA-teacher alignment)                self-flow  DTS, teacher on the whole image at t_lo
  repa       alignment to DINOv2-B (precomputed targets) sra2      alignment to the VAE latent (our reading)
  ours-mix   ours at mask ratio 0.5 with 25% full-image samples
Default: all six of Table 4 at RES=256; ours at RES=512 (Table 5); ours with --tiny.

Environment (defaults in brackets):
  RES          256 [4M steps] | 512 [1M steps]  (the presets *-xl2 and *-xl2-512)
  DATA_DIR     preprocessed ImageNet latents at RES [/data/imagenet\$RES; digits with --tiny]
  OUTPUT_DIR   run folders [runs]
  REF_BATCH    ADM reference batch [\$REF_DIR/VIRTUAL_imagenet256_labeled.npz or VIRTUAL_imagenet512.npz]
  ENC_WEIGHTS  DINOv2-B weights file (local; never downloaded), for REPA with --tiny only (DINOv2 on the digit
               images). On ImageNet, REPA reads the targets that ENC_WEIGHTS=... scripts/preprocess_imagenet.sh
               precomputed from the real images into DATA_DIR/repa-dinov2_vitb14-p2 (the preset's --repa-features auto)
  EVAL_STEPS   checkpoints to evaluate [the last: 4000000 or 1000000; \$TINY_STEPS with --tiny]
  TRAIN_ARGS   extra train.py flags for every run, e.g. '--compile --keep-last 2'
  TRAIN=0      only evaluate;  EVAL=0 only train
  plus scripts/sample_eval.sh's variables (NUM_SAMPLES, METRICS, ...) and scripts/common.sh's launcher variables
  (LAUNCHER, NNODES, NODE_RANK, GPUS_PER_NODE, MASTER_ADDR, MASTER_PORT)."
source "$(dirname "$0")/common.sh" "$@"
set -- "${ARGS[@]}"

RES=${RES:-256}
case $RES in
  256) suffix=xl2; last=4000000; ref=VIRTUAL_imagenet256_labeled.npz ;;
  512) suffix=xl2-512; last=1000000; ref=VIRTUAL_imagenet512.npz ;;
  *) die "RES must be 256 or 512, got '$RES'" ;;
esac
export DATA_DIR=${DATA_DIR:-$(tiny_or "/data/imagenet$RES" digits)}
export OUTPUT_DIR=${OUTPUT_DIR:-$(tiny_or runs "$TINY_ROOT/runs")}
export REF_BATCH=${REF_BATCH:-$(tiny_or "${REF_DIR:-/data/adm}/$ref" "$TINY_ROOT/fixtures/digits_ref.npz")}
ENC_WEIGHTS=${ENC_WEIGHTS:-}
EVAL_STEPS=${EVAL_STEPS:-$(tiny_or $last "$TINY_STEPS")}

METHODS=("$@")
if [ ${#METHODS[@]} -eq 0 ]; then
  if [ "$TINY" = 1 ] || [ "$RES" = 512 ]; then METHODS=(ours); else METHODS=(ours sit sra self-flow repa sra2); fi
fi

for method in "${METHODS[@]}"; do
  case $method in
    ours|sit|sra|self-flow|sra2|ours-mix) flags=() ;;
    repa)
      if [ "$TINY" = 1 ]; then               # the digits are pixels: DINOv2 runs on the images themselves
        [ -n "$ENC_WEIGHTS" ] || [ "$DRY_RUN" = 1 ] ||
          die "REPA on the digits runs DINOv2 on the images: set ENC_WEIGHTS=/path/to/dinov2_vitb14.pth"
        flags=(--enc-weights "${ENC_WEIGHTS:-/path/to/dinov2_vitb14.pth}")
      else                                   # targets precomputed from the real images (never reconstructions)
        feats="$DATA_DIR/repa-dinov2_vitb14-p2/features.json"
        [ -f "$feats" ] || [ "$DRY_RUN" = 1 ] ||
          die "REPA reads DINOv2 targets precomputed from the images: $feats is missing; write it with" \
              "ENC_WEIGHTS=/path/to/dinov2_vitb14.pth scripts/preprocess_imagenet.sh"
        flags=()
      fi ;;
    *) die "unknown method '$method' (see --help)" ;;
  esac
  note "method $method at $RES"
  train_and_eval "$method-$suffix" system "$EVAL_STEPS" --preset "$method-$suffix" "${flags[@]}"
done
