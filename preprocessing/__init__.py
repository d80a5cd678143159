"""Preprocessing: image folder -> ADM centre crop -> SD-VAE posterior moments -> latent shards + labels.

Commands (see encode.py and import_repa.py for every flag):
    python -m preprocessing SRC_DIR OUT_DIR --resolution 256 [--vae PATH] [--batch-size 64]
        [--precision bf16]
    torchrun --nproc_per_node 8 -m preprocessing SRC_DIR OUT_DIR --resolution 256 ...
    # keep existing REPA/SRA vae-sd latents
    python -m preprocessing import-repa DATA_DIR OUT_DIR
    # REPA targets (also under torchrun)
    python -m preprocessing repa-features DATA_DIR [--enc-type dinov2_vitb14] [--enc-weights PATH]
        [--patch-size 2] [--batch-size 64] [--precision fp32|bf16] [--workers N] [--images-root DIR]

SRC_DIR has one sub-folder per class (ImageNet train/ layout); the label of an image is the index of its
class folder in sorted order; images are found recursively inside each class folder and ordered by (label,
relative path).

Storage format ("sit-latent-shards", version 1), everything under OUT_DIR:
    dataset.json            written last: its presence means the dataset is complete. Keys:
                              format, version, resolution, latent_size, latent_channels (4), moments_shape [8,
                              h, w], dtype ("float32" or "float16"), scale_factor (0.18215, applied at
                              training time), vae, precision, crop ("adm-center-crop"), min_size, flip (bool),
                              num_files (image files found), num_images (encoded), num_skipped, num_samples (=
                              num_images, x2 with flip), num_classes, class_names, shards [{"file", "count"}],
                              labels, sources, skipped, reference_batch ({"file", "count", "seed"} or null),
                              latent_stats (per-channel mean/std of the posterior means, 1/std, posterior std
                              range), float16_rounding.
    shards/moments-KKKKK.npy  plain .npy, shape (count_K, 8, h, w), h = w = resolution / 8, dtype as above;
                              channels 0-3 posterior mean, 4-7 posterior std, unscaled VAE space.
                              Open with np.load(path, mmap_mode="r"). Samples follow the image order; with
                              --flip they are interleaved: sample 2i is image i, sample 2i+1 its horizontal
                              mirror (the mirrored *image* encoded, not a mirrored latent).
    shards/meta-KKKKK.json    per-shard bookkeeping for resume (fingerprint, settings, labels, sources,
                              skipped files, "files": a hash of the images' sizes and modification times);
                              a rerun with other settings is refused naming those that differ, a shard whose
                              images changed under the same names is encoded again.
    labels.npy              int64 (num_samples,): class index of every sample, all shards concatenated in
                            order.
    sources.txt             num_samples lines "relative/path.JPEG<TAB>0|1" (1 = mirrored copy).
    skipped.txt             one line per skipped file: "relative/path<TAB>reason" (empty file if none).
    reference_batch.npz     optional (--reference-batch N): arr_0 uint8 (N, res, res, 3), the ADM-cropped
                            images of the first N readable files of a permutation seeded with
                            --reference-seed (kept in file order), for evaluations/make_reference.py.
                            (Candidates are N + max(16, N/100) files; if more of them are unreadable, the
                            batch is shorter and dataset.json says so.)

Optional precomputed REPA targets (`repa-features`, repa_features.py), under
OUT_DIR/repa-<enc_type>-p<patch>/ (the name train.py's --repa-features takes, e.g. repa-dinov2_vitb14-p2):
    features-KKKKK.npy        float16 (count_K, T, D): DINOv2's x_norm_patchtokens for row i of
                              moments-KKKKK.npy (same counts and order), T = (resolution / 8 / patch)^2
                              tokens in raster order, D the encoder width (768 for ViT-B). Computed on the
                              *source image* (re-read through sources.txt, the same ADM crop, mirrored when
                              flagged), fed as loss.REPATarget does: preprocess_for_dinov2 at 14 * sqrt(T) px
                              (224 at 256 px, 448 at 512 px).
    features-KKKKK.json       per-shard resume bookkeeping (settings fingerprint, count).
    features.json             written last. Keys: format ("sit-repa-features"), version, encoder, patch,
                              resolution, precision, tokens, tokens_side, dim, dtype ("float16"),
                              input_resolution, weights, num_samples, counts, files.
Size: N * T * D * 2 bytes, about 0.4 MB per sample at 256 px with ViT-B (500 GB for ImageNet, twice that
with --flip, x4 at 512 px), so this trades disk and read bandwidth for the per-step encoder forward. The
on-the-fly target instead runs DINOv2 on the VAE *reconstruction* of the latent; the precomputed one, like
REPA's release, sees the original crop (the two differ by the VAE's reconstruction error).

Samples are numbered globally by concatenating the shards in order; dataset.LatentShardDataset reads this
layout. float32 is the default (identical to the REPA/SRA files). float16 halves the size (41 -> 21 GB at
256x256) but is not free: the SD-VAE posterior std is very small (the encoder is nearly deterministic), while
float16 rounds the mean by up to 2^-11 of its value (about 1e-3 to 1e-2 for typical |mean| of 2 to 20), which
can be comparable to or larger than that std; it stays ~1e-3 of the latent's own scale, and stds below 6e-5
become float16 subnormals. The error is measured on the real data while encoding and recorded in dataset.json
under float16_rounding (largest and mean |fp16 - fp32| of the mean channels in units of the posterior std):
check it before training on float16 shards.
The same reasoning makes --precision fp32 the default for the encoder (bf16 arithmetic errs by ~4e-3
relative).
"""
