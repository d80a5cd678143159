#!/usr/bin/env bash
USAGE="Preprocess ImageNet for training: ADM centre crop -> SD-VAE posterior moments -> latent shards, at 256 and 512.

usage: scripts/preprocess_imagenet.sh [--dry-run] [--tiny]

Runs 'torchrun -m preprocessing' on every GPU (shard k is done by rank k % world size; rerun to resume), once per
resolution, into DATA_ROOT/imagenet<RES> (the DATA_DIR of the training scripts). Each output folder also gets
reference_batch.npz (REFERENCE_BATCH ADM-cropped training images). With MAKE_REFERENCE=1 it then builds an ADM
reference batch with statistics over the whole training set (evaluations/make_reference.py) at
REF_DIR/imagenet<RES>_reference.npz, for when ADM's VIRTUAL_imagenet*.npz files are not at hand.

Environment (defaults in brackets):
  IMAGENET_TRAIN   ImageNet train/ folder, one sub-folder per class [/data/imagenet/train]
  DATA_ROOT        output root [/data]                RESOLUTIONS  ['256 512']
  VAE              local SD-VAE folder [the Hugging Face cache, stabilityai/sd-vae-ft-mse]
  PRECISION        encoder arithmetic fp32 | tf32 | bf16 [fp32]    DTYPE  stored moments float32 | float16 [float32]
  BATCH_SIZE [64]  REFERENCE_BATCH [10000]   PREPROCESS_ARGS  extra flags, e.g. '--flip'
  MAKE_REFERENCE [0]   REF_DIR [/data/adm]   INCEPTION  Inception graph for MAKE_REFERENCE [evaluator's default]
  ENC_WEIGHTS      DINOv2-B weights file: when set, also precompute REPA's targets into
                   DATA_ROOT/imagenet<RES>/repa-dinov2_vitb14-p2 ('python -m preprocessing repa-features'), so that
                   REPA trains on targets from the real images (what train_system.sh's repa run reads)
With --tiny: a few generated images, a narrow random-weight VAE and the stand-in Inception graph, at 32 and 64
pixels, under \$TINY_ROOT; MAKE_REFERENCE=1.
Launcher variables: see scripts/common.sh (LAUNCHER, NNODES, NODE_RANK, GPUS_PER_NODE, MASTER_ADDR, MASTER_PORT)."
source "$(dirname "$0")/common.sh" "$@"
set -- "${ARGS[@]}"
[ $# -eq 0 ] || die "no positional arguments (see --help)"

fixtures="$TINY_ROOT/fixtures"
IMAGENET_TRAIN=${IMAGENET_TRAIN:-$(tiny_or /data/imagenet/train "$fixtures/imagenet/train")}
DATA_ROOT=${DATA_ROOT:-$(tiny_or /data "$TINY_ROOT/data")}
RESOLUTIONS=${RESOLUTIONS:-$(tiny_or "256 512" "32 64")}
VAE=${VAE:-$(tiny_or "" "$fixtures/tiny_vae")}
PRECISION=${PRECISION:-fp32}
DTYPE=${DTYPE:-float32}
BATCH_SIZE=${BATCH_SIZE:-$(tiny_or 64 4)}
REFERENCE_BATCH=${REFERENCE_BATCH:-$(tiny_or 10000 4)}
MAKE_REFERENCE=${MAKE_REFERENCE:-$(tiny_or 0 1)}
REF_DIR=${REF_DIR:-$(tiny_or /data/adm "$TINY_ROOT/data")}
INCEPTION=${INCEPTION:-$(tiny_or "" "$fixtures/standin_inception.pb")}
ENC_WEIGHTS=${ENC_WEIGHTS:-}

if [ "$TINY" = 1 ]; then                            # stand-ins: an image folder, a VAE, an Inception graph
  [ -d "$IMAGENET_TRAIN" ] || run "$PYTHON" -m fixtures.tiny image-folder "$IMAGENET_TRAIN"
  [ -f "$VAE/config.json" ] || run "$PYTHON" -m fixtures.tiny vae "$VAE"
  [ -f "$INCEPTION" ] || run "$PYTHON" -m fixtures.standin_graph "$INCEPTION"
fi

for res in $RESOLUTIONS; do
  flags=(--resolution "$res" --precision "$PRECISION" --dtype "$DTYPE" --batch-size "$BATCH_SIZE"
    --reference-batch "$REFERENCE_BATCH")
  [ -n "$VAE" ] && flags+=(--vae "$VAE")
  [ "$TINY" = 1 ] && flags+=(--shard-size 4 --workers 0 --no-progress)
  words "${PREPROCESS_ARGS:-}"
  launch torchrun -m preprocessing "$IMAGENET_TRAIN" "$DATA_ROOT/imagenet$res" "${flags[@]}" "${WORDS[@]}"
  if [ -n "$ENC_WEIGHTS" ]; then
    launch torchrun -m preprocessing repa-features "$DATA_ROOT/imagenet$res" --enc-type dinov2_vitb14 \
      --enc-weights "$ENC_WEIGHTS" --patch-size 2
  fi

  if [ "$MAKE_REFERENCE" = 1 ] && [ "$NODE_RANK" = 0 ]; then
    ref=(--images "$IMAGENET_TRAIN" --resolution "$res" --num-ref "$(tiny_or 10000 4)")
    [ -n "$INCEPTION" ] && ref+=(--inception "$INCEPTION")
    run "$PYTHON" -m evaluations.make_reference "$REF_DIR/imagenet${res}_reference.npz" "${ref[@]}"
  fi
done
