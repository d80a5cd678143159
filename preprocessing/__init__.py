"""Preprocessing: image folder -> ADM centre crop -> SD-VAE posterior moments -> latent shards + labels.

Commands (see encode.py and import_repa.py for every flag):
    python -m preprocessing SRC_DIR OUT_DIR --resolution 256 [--vae PATH] [--batch-size 64] [--precision bf16]
    torchrun --nproc_per_node 8 -m preprocessing SRC_DIR OUT_DIR --resolution 256 ...
    python -m preprocessing import-repa DATA_DIR OUT_DIR        # keep existing REPA/SRA vae-sd latents

SRC_DIR has one sub-folder per class (ImageNet train/ layout); the label of an image is the index of its class
folder in sorted order; images are found recursively inside each class folder and ordered by (label, relative path).

Storage format ("sit-latent-shards", version 1), everything under OUT_DIR:
    dataset.json            written last: its presence means the dataset is complete. Keys:
                              format, version, resolution, latent_size, latent_channels (4), moments_shape [8, h, w],
                              dtype ("float32" or "float16"), scale_factor (0.18215, applied at training time),
                              vae, precision, crop ("adm-center-crop"), min_size, flip (bool), num_files (image
                              files found), num_images (encoded), num_skipped, num_samples (= num_images, x2 with
                              flip), num_classes, class_names, shards [{"file", "count"}], labels, sources, skipped,
                              reference_batch ({"file", "count", "seed"} or null), latent_stats (per-channel
                              mean/std of the posterior means, 1/std, posterior std range), float16_rounding.
    shards/moments-KKKKK.npy  plain .npy, shape (count_K, 8, h, w), h = w = resolution / 8, dtype as above;
                              channels 0-3 posterior mean, 4-7 posterior std, unscaled VAE space.
                              Open with np.load(path, mmap_mode="r"). Samples follow the image order; with --flip
                              they are interleaved: sample 2i is image i, sample 2i+1 its horizontal mirror
                              (the mirrored *image* encoded, not a mirrored latent).
    shards/meta-KKKKK.json    per-shard bookkeeping for resume (fingerprint, labels, sources, skipped files).
    labels.npy              int64 (num_samples,): class index of every sample, all shards concatenated in order.
    sources.txt             num_samples lines "relative/path.JPEG<TAB>0|1" (1 = mirrored copy).
    skipped.txt             one line per skipped file: "relative/path<TAB>reason" (empty file if none).
    reference_batch.npz     optional (--reference-batch N): arr_0 uint8 (N, res, res, 3), the ADM-cropped images of
                            the first N readable files of a permutation seeded with --reference-seed (kept in file
                            order), for evaluations/make_reference.py. (Candidates are N + max(16, N/100) files;
                            if more of them are unreadable, the batch is shorter and dataset.json says so.)

Samples are numbered globally by concatenating the shards in order; dataset.LatentShardDataset reads this layout.
float32 is the default (identical to the REPA/SRA files). float16 halves the size (41 -> 21 GB at 256x256) but is
not free: the SD-VAE posterior std is very small (the encoder is nearly deterministic), while float16 rounds the
mean by up to 2^-11 of its value (about 1e-3 to 1e-2 for typical |mean| of 2 to 20), which can be comparable to or
larger than that std; it stays ~1e-3 of the latent's own scale, and stds below 6e-5 become float16 subnormals. The
error is measured on the real data while encoding and recorded in dataset.json under float16_rounding (largest and
mean |fp16 - fp32| of the mean channels in units of the posterior std): check it before training on float16 shards.
The same reasoning makes --precision fp32 the default for the encoder (bf16 arithmetic errs by ~4e-3 relative).
"""
