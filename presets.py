"""The paper's recipes as named flag sets: `--preset METHOD-SCALE`, e.g. `ours-b2`, `self-flow-xl2`, `sit-xl2-512`.

Methods (METHOD.md sections 2-7): sit (vanilla), sra, sra-orig, self-flow, ours (SRA + DTS + AS), ours-mix (ours
with full-image mixing rho = 0.25, Fig. 5), repa, sra2. Scales (METHOD.md section 8): b2 (the SiT-B/2 ablations,
800K steps), xl2 (SiT-XL/2 at 256, 4M steps), xl2-512 (SiT-XL/2 at 512, 1M steps). `digits` is the embedded CPU
quickstart. A flag given on the command line always wins over the preset.

Which recipe each preset is, and which published number it stands for (FID-50K, ImageNet, CFG; Tables 4-5 of the
paper unless said otherwise):
    ours-xl2 / ours-xl2-512   the paper's scheme as its release (SiT-SRA_DTS_AS) runs it: FID 1.44 (256, 4M
                              steps) and 2.08 (512, 1M steps). ours-b2: Tables 1-3 (FID-10K, no CFG).
    sra-*                     SRA as the DTS_AS release runs it: cos-channel distance, constant lambda 0.5, teacher
                              on the clean labels. No published number is this recipe.
    sra-orig-*                the original SiT-SRA recipe behind SRA's own numbers: smooth-L1 (beta 0.05), lambda
                              0.2 decaying after epoch 149 (256 px; 99 at 512) by --align-weight-schedule, teacher
                              on the dropped labels, --t-max 0.2. sra-orig-xl2: FID 1.58 (the number the paper
                              quotes for SRA; SRA's XL/2 at 800 epochs); sra-orig-xl2-512: SRA reports 2.07 at 512
                              after 400 epochs (the preset's 1M steps are about 200).
    self-flow-*               Self-Flow as the release renders it (DTS with full attention, teacher on the whole
                              image at t_lo, Eq. 7), not Self-Flow's own code: the paper quotes Self-Flow's 1.47.
    repa-*                    REPA: DINOv2-B patch tokens, per-token cosine, lambda 0.5, block 8 (4 for B/2),
                              targets precomputed from the real images: FID 1.42 (REPA's XL/2 at 4M steps, CFG 1.8
                              for t <= 0.7).
    sit-*                     vanilla SiT: SiT reports FID 2.06 for XL/2 after 7M steps (CFG 1.5 on 3 channels:
                              sample_ddp --cfg-channels 3); the 4M-step preset has no published counterpart.
    sra2-*                    SRA 2 as we read its paper (no official code): no published number reproduced here.
"""

COMMON = dict(learning_rate=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=0.0, adam_epsilon=1e-8,
              max_grad_norm=1.0, ema_decay=0.9999, batch_size=256, path_type="linear", weighting="uniform",
              align_weight=0.5, loss_type="cos-channel", teacher_labels="clean", mixed_precision="bf16",
              t_max=0.2, align_weight_schedule="constant")

_NO_GROUPS = dict(mask_ratio=[0.0], dual_time_scheduling=False, attention_separation=False, teacher_mask=False,
                  full_sample_prob=0.0)

METHODS = {
    "sit": dict(use_alignment_loss=False, align_target="ema", **_NO_GROUPS),
    "sra": dict(use_alignment_loss=True, align_target="ema", teacher_t="sra", **_NO_GROUPS),
    "sra-orig": dict(use_alignment_loss=True, align_target="ema", teacher_t="sra", loss_type="sml1",
                     align_weight=0.2, align_weight_schedule="sra-256", teacher_labels="dropped", t_max=0.2,
                     **_NO_GROUPS),
    "self-flow": dict(use_alignment_loss=True, align_target="ema", teacher_t="self_flow", mask_ratio=[0.25],
                      dual_time_scheduling=True, attention_separation=False, teacher_mask=False, full_sample_prob=0.0),
    "ours": dict(use_alignment_loss=True, align_target="ema", teacher_t="sra", mask_ratio=[0.25],
                 dual_time_scheduling=True, attention_separation=True, teacher_mask=True, full_sample_prob=0.0),
    "repa": dict(use_alignment_loss=True, align_target="repa", loss_type="cos-token", repa_features="auto",
                 **_NO_GROUPS),
    "sra2": dict(use_alignment_loss=True, align_target="sra2", loss_type="sml1", align_weight=1.0, **_NO_GROUPS),
}
METHODS["ours-mix"] = dict(METHODS["ours"], mask_ratio=[0.5], full_sample_prob=0.25)

# Student / teacher blocks: B/2 3 / 8 (release script), L and XL 8 / 20; REPA aligns block 4 (B) / 8 (XL);
# SRA 2 block 2 (B) / 8 (L, XL).
SCALES = {
    "b2": dict(model="SiT-B/2", block_out_s=3, block_out_t=8, max_train_steps=800_000, checkpoint_steps=100_000,
               sample_steps=50_000),
    "xl2": dict(model="SiT-XL/2", block_out_s=8, block_out_t=20, max_train_steps=4_000_000,
                checkpoint_steps=100_000, sample_steps=50_000),
    "xl2-512": dict(model="SiT-XL/2", block_out_s=8, block_out_t=20, max_train_steps=1_000_000,
                    checkpoint_steps=100_000, sample_steps=50_000),
}
STUDENT_BLOCK = {("repa", "b2"): 4, ("sra2", "b2"): 2}
# per (method, scale) overrides: the original SRA's lambda schedule at 512 px
OVERRIDES = {("sra-orig", "xl2-512"): dict(align_weight_schedule="sra-512")}

PRESETS = {}
for _m, _method in METHODS.items():
    for _s, _scale in SCALES.items():
        PRESETS[f"{_m}-{_s}"] = {**COMMON, **_scale, **_method, **OVERRIDES.get((_m, _s), {})}
        if (_m, _s.split("-")[0]) in STUDENT_BLOCK:
            PRESETS[f"{_m}-{_s}"]["block_out_s"] = STUDENT_BLOCK[(_m, _s.split("-")[0])]

# The embedded default: the paper's full scheme (SRA + DTS + AS) on 16x16 digits, in minutes on a laptop CPU.
PRESETS["digits"] = {**COMMON, **METHODS["ours"], **dict(
    model="SiT-T/4", data_dir="digits", block_out_s=2, block_out_t=4, batch_size=64, max_train_steps=2000,
    learning_rate=1e-3, ema_decay=0.995, checkpoint_steps=1000, sample_steps=500, log_every=50,
    mixed_precision="no", eval_samples=1000, preview_num_steps=50)}
