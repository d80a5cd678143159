"""The paper's recipes as named flag sets: `--preset METHOD-SCALE`, e.g. `ours-b2`, `self-flow-xl2`,
`sit-xl2-512`. Data only: this file imports nothing of the project.

train.py's defaults are the release's recipe (RELEASE below: SiT-B/2, SRA + DTS + AS as
SiT-SRA_DTS_AS/scripts/train.sh runs it); a preset is one row listing only what differs from them, and a flag
given on the command line always wins over the preset. Methods: sit (vanilla), sra, sra-orig (the original
SiT-SRA recipe), self-flow, ours (SRA + DTS + AS), ours-mix (rho = 0.25, Fig. 5), repa, sra2 (METHOD.md
sections 2-7). Scales: b2 (the SiT-B/2 ablations, 800K steps), xl2 (SiT-XL/2 at 256, 4M steps), xl2-512
(SiT-XL/2 at 512, 1M steps); `digits` is the embedded CPU quickstart. The method table (what each method is,
and the published number each preset stands for) is README.md's; each row below names its number too.
`python train.py --preset NAME --print-config` prints what a preset resolves to.
"""


# train.py's defaults: the release's recipe (SiT-SRA_DTS_AS/scripts/train.sh: SiT-B/2, global batch 256, lr
# 1e-4, SRA + DTS + AS at mask ratio 0.25, teacher at s = t - 0.2 U on the student's groups, blocks 3 / 8,
# lambda 0.5 on the release's cosine, 100K-step checkpoints, 50K-step previews, --max-train-steps 4100000).
# The release trains in fp16; bf16 here (METHOD.md section 10).
RELEASE = dict(
    model="SiT-B/2", batch_size=256, learning_rate=1e-4, adam_beta1=0.9, adam_beta2=0.999,
    adam_weight_decay=0.0, adam_epsilon=1e-8, max_grad_norm=1.0, ema_decay=0.9999, mixed_precision="bf16",
    max_train_steps=4_100_000, checkpoint_steps=100_000, sample_steps=50_000,
    path_type="linear", weighting="uniform", class_dropout_prob=0.1,
    align_target="ema", align_weight=0.5, align_weight_schedule="constant", loss_type="cos-channel",
    block_out_s=3, block_out_t=8, teacher_t="sra", teacher_labels="clean", t_max=0.2,
    mask_ratio=[0.25], dual_time_scheduling=True, attention_separation=True, full_sample_prob=0.0,
    sorted_timesteps=False)

# SiT-XL/2: student / teacher blocks 8 / 20 (B/2: the release's 3 / 8)
_XL2 = dict(model="SiT-XL/2", block_out_s=8, block_out_t=20)
# one token group: no DTS, no AS
_ONE = dict(mask_ratio=[0.0], dual_time_scheduling=False, attention_separation=False)
# the original SiT-SRA: smooth-L1, lambda 0.2 with its decay, teacher on the dropped labels
_SRA_ORIG = dict(loss_type="sml1", align_weight=0.2, teacher_labels="dropped", **_ONE)
# REPA: DINOv2 tokens precomputed from the real images, per-token cosine
_REPA = dict(align_target="repa", loss_type="cos-token", repa_features="auto", **_ONE)
# SRA 2: the clean VAE latent, smooth-L1, lambda 1. The head follows its author's description (SRA issue #6:
# "about 5 MLP layers, then a SiT-style final layer"), read as 5 Linear(D, D) + SiLU layers, then LayerNorm,
# adaLN shift / scale from the block's conditioning, Linear(D, p*p*C) (models/sit.py SRA2Head; the depth is
# --sra2-head-depth)
_SRA2 = dict(align_target="sra2", loss_type="sml1", align_weight=1.0, sra2_head_depth=5, **_ONE)
# Self-Flow as the release renders it: DTS with full attention, teacher on the whole image at t_lo (Eq. 7)
_SELF_FLOW = dict(teacher_t="self_flow", attention_separation=False)
# ours with full-image mixing rho = 0.25 (Fig. 5)
_MIX = dict(mask_ratio=[0.5], full_sample_prob=0.25)
# DiT (Peebles & Xie, arXiv 2212.09748): the same network trained with DDPM (--process ddpm: eps and learned
# sigma, L_simple + L_vlb, ddpm.py), no alignment, as DiT's train.py: fp32 (TF32 matmuls), no gradient
# clipping, AdamW lr 1e-4 without weight decay, global batch 256, EMA 0.9999
_DIT = dict(process="ddpm", align_target="none", mixed_precision="no", max_grad_norm=float("inf"), **_ONE)
# DiT + SRA as the release's DiT-SRA/train.py runs it: the teacher at clamp(t - U{0, .., t_max * 1000 - 1},
# 1, 999) on the student's noise and dropped labels, smooth-L1 (beta 0.05) with lambda 0.4 * 0.1 = 0.04 up to
# epoch 149 and 0.04 * 0.1 ** ((e - 149) / 1000) after (sra-256 with align_weight 0.04), gradients clipped
# at 1.0. Its train.py defaults are blocks 4 / 8 and t_max 0.1; blocks 8 / 16 and t_max 0.2 here (our reading
# of the SRA paper's DiT-XL/2 run, not checked against the paper). fp32 (its default precision is fp16)
_DIT_SRA = dict(_DIT, align_target="ema", loss_type="sml1", align_weight=0.04,
                align_weight_schedule="sra-256", teacher_labels="dropped", block_out_s=8, block_out_t=16,
                t_max=0.2, max_grad_norm=1.0)

# One row per preset: what differs from RELEASE. b2: 800K steps, xl2: 4M, xl2-512: 1M.
PRESETS = {
    # the paper's scheme as its release runs it: Tables 1-3 (B/2, FID-10K, no CFG), FID 1.44 (Table 4, XL/2),
    # 2.08 (Table 5, 512 px)
    "ours-b2": dict(max_train_steps=800_000),
    "ours-xl2": dict(_XL2, max_train_steps=4_000_000),
    "ours-xl2-512": dict(_XL2, max_train_steps=1_000_000),
    # Table 3's 24.15 (B/2, 800K steps, FID-10K)
    "ours-mix-b2": dict(_MIX, max_train_steps=800_000),
    "ours-mix-xl2": dict(_XL2, **_MIX, max_train_steps=4_000_000),
    "ours-mix-xl2-512": dict(_XL2, **_MIX, max_train_steps=1_000_000),
    # SiT reports FID 2.06 for XL/2 after 7M steps (CFG 1.5 on 3 channels); none at 4M
    "sit-b2": dict(_ONE, align_target="none", max_train_steps=800_000),
    "sit-xl2": dict(_XL2, **_ONE, align_target="none", max_train_steps=4_000_000),
    "sit-xl2-512": dict(_XL2, **_ONE, align_target="none", max_train_steps=1_000_000),
    # SRA as the DTS_AS release runs it: no published number is this recipe
    "sra-b2": dict(_ONE, max_train_steps=800_000),
    "sra-xl2": dict(_XL2, **_ONE, max_train_steps=4_000_000),
    "sra-xl2-512": dict(_XL2, **_ONE, max_train_steps=1_000_000),
    # SRA's own numbers: FID 1.58 (XL/2, 800 epochs; the SRA row of Table 4), 2.07 at 512 after 400 epochs
    "sra-orig-b2": dict(_SRA_ORIG, align_weight_schedule="sra-256", max_train_steps=800_000),
    "sra-orig-xl2": dict(_XL2, **_SRA_ORIG, align_weight_schedule="sra-256", max_train_steps=4_000_000),
    "sra-orig-xl2-512": dict(_XL2, **_SRA_ORIG, align_weight_schedule="sra-512", max_train_steps=1_000_000),
    # Self-Flow as the release renders it; the paper quotes Self-Flow's own 1.47
    "self-flow-b2": dict(_SELF_FLOW, max_train_steps=800_000),
    "self-flow-xl2": dict(_XL2, **_SELF_FLOW, max_train_steps=4_000_000),
    "self-flow-xl2-512": dict(_XL2, **_SELF_FLOW, max_train_steps=1_000_000),
    # REPA's FID 1.42 (XL/2, 4M steps, CFG 1.8 for t <= 0.7); it aligns block 4 at B/2, 8 at XL/2
    "repa-b2": dict(_REPA, block_out_s=4, max_train_steps=800_000),
    "repa-xl2": dict(_XL2, **_REPA, max_train_steps=4_000_000),
    "repa-xl2-512": dict(_XL2, **_REPA, max_train_steps=1_000_000),
    # our reading of SRA 2 (no official code): no published number reproduced; block 2 at B/2, 8 at XL/2
    "sra2-b2": dict(_SRA2, block_out_s=2, max_train_steps=800_000),
    "sra2-xl2": dict(_XL2, **_SRA2, max_train_steps=4_000_000),
    "sra2-xl2-512": dict(_XL2, **_SRA2, max_train_steps=1_000_000),
    # DiT reports FID-50K 43.47 for DiT-B/2 after 400K steps without CFG (DiT Table 4); none at 800K
    "dit-b2": dict(_DIT, max_train_steps=800_000),
    # the DiT-XL/2 row of the paper's Table 4: DiT's own FID 2.27 (256 px, 7M steps, CFG 1.5 on 3 channels);
    # Table 5's 3.04 at 512 px is DiT's XL/2 after 3M steps (this preset with --resolution 512 data and
    # --max-train-steps 3000000)
    "dit-xl2": dict(_DIT, model="SiT-XL/2", max_train_steps=7_000_000),
    # the release's DiT-SRA (DiT-XL/2 + SRA); no number of the paper's tables is this run, and the SRA
    # paper's DiT-XL/2 + SRA figure is not recorded here (not checked against the paper)
    "dit-sra-xl2": dict(_DIT_SRA, model="SiT-XL/2", max_train_steps=4_000_000),
    # the embedded default: the paper's full scheme (SRA + DTS + AS) on 16x16 digits, minutes on a laptop CPU
    "digits": dict(model="SiT-T/4", block_out_s=2, block_out_t=4, batch_size=64, learning_rate=1e-3,
                   ema_decay=0.995, mixed_precision="no", max_train_steps=2000, checkpoint_steps=1000,
                   sample_steps=500, log_every=50, eval_samples=1000),
}
# the methods, as bench.py --method names them
METHODS = ("ours", "ours-mix", "sit", "sra", "sra-orig", "self-flow", "repa", "sra2")


def resolve(name: str) -> dict:
    """Preset `name`'s recipe: RELEASE with its row applied (train.py's other flags keep their defaults)."""
    return {**RELEASE, **PRESETS[name]}
