"""The training objective: flow matching + alignment, with DTS, AS and every teacher strategy of the paper
and of its release.

Equations are numbered as in "From SRA to Self-Flow: Data Augmentation or Self-Supervision?"
(arXiv 2607.02508); METHOD.md is the one-page version, with each place where the paper and the public release
disagree.

    x_t = (1 - t) x0 + t eps,  target v = eps - x0                     (Eq. 1-2; t = 1 noise, t = 0 data)
    L = L_gen + lambda * L_align                                        (Eq. 3-4)
    L_align = d(g(h_m(student)), sg[h_n(teacher)])                      (SRA: EMA teacher, block n, head g)
    tokens split into groups with their own timesteps t_g              (DTS, Eq. 5-6)
    attention only within a group: A_ij = 1[g_i = g_j]                  (AS, Eq. 8-9)

One call draws everything (t per group, token groups, eps, label dropout), runs the student once and the
alignment target (EMA teacher up to block n, or an external target), and returns per-sample losses plus the
scalars to log. Nothing here reads a value back to the host: the step stays asynchronous on the GPU.

The loss owns the process (--process): flow matching above, or DiT's DDPM (ddpm.py: integer steps
t ~ U{0, .., 999} per group, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, L_gen = L_simple + L_vlb on the
learned-sigma output). The model is the same network either way (it sees the integer step through the same
sinusoidal embedding), so DTS, AS and every teacher work under both; the DiT-SRA teacher (the release's
DiT-SRA/train.py) sees s = clamp(t - U{0, .., t_max * 1000 - 1}, 1, 999).
"""
import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ddpm import NUM_TIMESTEPS, GaussianDiffusion, pixel_timesteps
from models import SegmentLayout

LOSS_TYPES = ("cos-token", "cos-channel", "sml1", "l1", "l2")
TEACHER_T = ("sra", "self_flow", "same")
# --align-weight-schedule: lambda at the 0-based epoch e and step s (align_weight_at).
# sra-256 / sra-512: lambda(e) = align_weight * 0.1 ** (max(0, e - start) / period), the original SiT-SRA
# recipe (smooth-L1, align_weight 0.2): at 256 px 0.2 up to epoch 149, then 2 * 0.1 ** ((e - 149) / 1000 + 1);
# at 512 px the same with 99 and 800 (METHOD.md section 2).
# linear / cosine: from align_weight at step 0 to 0 at step U = --align-until (train.py: the run's last step
# when not given): lambda(s) = align_weight (1 - s / U), or align_weight (1 + cos(pi s / U)) / 2.
# --align-until U with any schedule: lambda = 0 from step U on (REPA's "alignment works until it doesn't").
ALIGN_WEIGHT_SCHEDULES = {"constant": None, "sra-256": (149, 1000), "sra-512": (99, 800), "linear": None,
                          "cosine": None}
# the schedules that decay to 0 at --align-until
STEP_SCHEDULES = ("linear", "cosine")


def align_weight_at(schedule: str, align_weight: float, epoch: int, step: int = 0,
                    until: int | None = None) -> float:
    """The alignment weight lambda at 0-based `epoch` and `step` (a python number: no device work, no host
    sync). until: --align-until, the first step with lambda = 0 (None: never)."""
    if schedule not in ALIGN_WEIGHT_SCHEDULES:
        raise ValueError(f"--align-weight-schedule must be one of {sorted(ALIGN_WEIGHT_SCHEDULES)}, "
                         f"got {schedule!r}")
    if until is not None and until < 1:
        raise ValueError(f"--align-until must be >= 1 (the first step without alignment), got {until}")
    if schedule in STEP_SCHEDULES and until is None:
        raise ValueError(f"--align-weight-schedule {schedule} decays to 0 at --align-until STEP: give it "
                         "(train.py sets the run's last step when it is not given)")
    if until is not None and step >= until:
        return 0.0
    if schedule == "linear":
        return float(align_weight) * (1 - step / until)
    if schedule == "cosine":
        return float(align_weight) * 0.5 * (1 + math.cos(math.pi * step / until))
    if ALIGN_WEIGHT_SCHEDULES[schedule] is None:
        return float(align_weight)
    start, period = ALIGN_WEIGHT_SCHEDULES[schedule]
    return float(align_weight) * 0.1 ** (max(0, epoch - start) / period)


# ------------------------------------------------------------------------------------------------------------
# The loss settings: one field per setting, the only list of them. train.py builds its --flag-name flags from
# these fields (help, choices and nargs from the metadata); its defaults and the presets are the recipes
# (presets.py). The defaults here are plain SiT: no alignment, one token group.
# ------------------------------------------------------------------------------------------------------------

ALIGN_TARGETS = ("none", "ema", "repa", "sra2")
# flow matching (SiT, Eq. 1-2) or DiT's DDPM (ddpm.py)
PROCESSES = ("flow", "ddpm")


def _setting(default, help: str, **argparse_kw):
    return field(default=default, metadata=dict(help=help, **argparse_kw))


@dataclass(frozen=True)
class LossConfig:
    # the generative process: flow matching, or DDPM as DiT (eps + learned sigma, L_simple + L_vlb)
    process: str = _setting("flow", "flow (flow matching, SiT) or ddpm (DiT's Gaussian diffusion: 1000 "
                            "steps, eps and learned sigma, L_simple + L_vlb; ddpm.py)", choices=PROCESSES)
    # the interpolant x_t = alpha_t x0 + sigma_t eps (Eq. 1): linear (1 - t, t) or cosine
    path_type: str = _setting("linear", "x_t = (1 - t) x0 + t eps, or the cosine path",
                              choices=("linear", "cosine"))
    # p(t): U(0, 1), or SD3's logit-normal
    weighting: str = _setting("uniform", "timestep density p(t)", choices=("uniform", "lognormal"))
    # label dropout for classifier-free guidance (the null class is num_classes)
    class_dropout_prob: float = _setting(0.1, "label dropout probability (CFG)")
    # where the alignment target comes from (Eq. 3-4): none, the EMA teacher, DINOv2 or the clean latent
    align_target: str = _setting("none", "alignment target: none, ema (EMA teacher: SRA, Self-Flow, ours), "
                                 "repa (DINOv2 patch tokens), sra2 (the clean VAE latent)",
                                 choices=ALIGN_TARGETS)
    # lambda: L = L_gen + lambda L_align (Eq. 4)
    align_weight: float = _setting(0.5, "lambda, the alignment weight (Eq. 4)")
    # lambda per epoch or step: constant, the original SRA's decay, linear / cosine to 0 (align_weight_at)
    align_weight_schedule: str = _setting("constant", "lambda per epoch: constant, the original SRA decay "
                                          "after epoch 149 (sra-256) / 99 (sra-512); per step: linear or "
                                          "cosine from lambda to 0 at --align-until (default: the last step)",
                                          choices=tuple(sorted(ALIGN_WEIGHT_SCHEDULES)))
    # the first step without alignment (lambda = 0 from there on); None: never
    align_until: int | None = _setting(None, "lambda = 0 from this step on (REPA's 'works until it "
                                       "doesn't'); linear / cosine reach 0 there", type=int, metavar="STEP")
    # d in L_align = d(g(h_m), sg[h_n]) (alignment_distance)
    loss_type: str = _setting("cos-channel", "alignment distance d", choices=LOSS_TYPES)
    # m: the student block whose output the head g reads (1-based)
    block_out_s: int = _setting(3, "m, the student block (1-based) the alignment head reads")
    # n: the teacher block that gives the target (1-based)
    block_out_t: int = _setting(8, "n, the teacher (EMA) block (1-based) that gives the target")
    # alpha: the share of tokens in the masked group (DTS / AS); 0 = one group
    mask_ratio: tuple = _setting((0.0,), "alpha, the masked group's share of tokens (0: one group); "
                                 "several values: several groups", nargs="+", type=float)
    # DTS (Eq. 5-6): one timestep per token group
    dual_time_scheduling: bool = _setting(False, "DTS: one timestep per token group (Eq. 5-6)")
    # AS (Eq. 8-9): attention only within a group, A_ij = 1[g_i = g_j]
    attention_separation: bool = _setting(False, "AS: attention only within a token group (Eq. 8-9)")
    # rho: the share of full-image samples (one group, full attention) in a DTS / AS batch (Fig. 5)
    full_sample_prob: float = _setting(0.0, "rho, the share of full-image samples in a DTS / AS batch")
    # the teacher's timestep: sra s = clamp(t - t_max U), self_flow t_lo = min_g t_g (Eq. 7), same = t
    teacher_t: str = _setting("sra", "teacher timestep: sra (t - t_max U), self_flow (min_g t_g on the "
                              "whole image, Eq. 7), same (the student's)", choices=TEACHER_T)
    # the labels the teacher sees: the clean ones (the release) or the student's dropped ones (SiT-SRA)
    teacher_labels: str = _setting("clean", "labels the EMA teacher sees", choices=("clean", "dropped"))
    # Eq. 5 as written: the groups' draws sorted so that t_hi is on the masked group
    sorted_timesteps: bool = _setting(False, "Eq. 5 as written: t_hi on the masked group")
    # t_max: the SRA teacher's offset, s = clamp(t - t_max U, 0, 1)
    t_max: float = _setting(0.2, "t_max, the teacher offset s = clamp(t - t_max U, 0, 1) (--teacher-t sra)")


# ------------------------------------------------------------------------------------------------------------
# Paths, timesteps and groups
# ------------------------------------------------------------------------------------------------------------

def interpolant(path_type: str, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(alpha, sigma, d alpha/dt, d sigma/dt) at t: x_t = alpha x0 + sigma eps, v = alpha' x0 + sigma' eps."""
    if path_type == "linear":
        return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)
    if path_type == "cosine":
        a = torch.cos(t * math.pi / 2)
        s = torch.sin(t * math.pi / 2)
        return a, s, -math.pi / 2 * s, math.pi / 2 * a
    raise ValueError(f"--path-type must be linear or cosine, got {path_type!r}")


def sample_t(shape: tuple[int, ...], weighting: str, path_type: str, device: torch.device) -> Tensor:
    """t ~ U(0, 1), or logit-normal: s = exp(0.847 + 0.8 n), t = s / (1 + s) (linear) or 2/pi atan(s)
    (cosine)."""
    if weighting == "uniform":
        return torch.rand(shape, device=device)
    if weighting == "lognormal":
        s = torch.exp(0.847 + 0.8 * torch.randn(shape, device=device))
        return s / (1 + s) if path_type == "linear" else 2 / math.pi * torch.atan(s)
    raise ValueError(f"--weighting must be uniform or lognormal, got {weighting!r}")


def group_ratios(mask_ratio: float | tuple[float, ...] | list[float]) -> list[float]:
    """--mask-ratio: one value r -> [r, 1 - r] (r <= 0 or >= 1 -> one group); several -> renormalised
    groups."""
    vals = [float(r) for r in ([mask_ratio] if isinstance(mask_ratio, (int, float)) else mask_ratio)]
    if len(vals) == 1:
        r = vals[0]
        return [1.0] if r <= 0 or r >= 1 else [r, 1 - r]
    if any(v <= 0 for v in vals):
        raise ValueError(f"--mask-ratio with several values needs them all > 0, got {vals}")
    return [v / sum(vals) for v in vals]


def group_sizes(ratios: list[float], T: int) -> tuple[int, ...]:
    """Exact token counts: floor(r T), the remainder one each to the largest fractional parts
    (0.25 -> 64, 192)."""
    raw = [r * T for r in ratios]
    sizes = [int(math.floor(x)) for x in raw]
    for k in sorted(range(len(raw)), key=lambda k: raw[k] - sizes[k], reverse=True)[: T - sum(sizes)]:
        sizes[k] += 1
    if min(sizes) == 0:
        raise ValueError(f"--mask-ratio {ratios} leaves an empty group at {T} tokens")
    return tuple(sizes)


def noised(path_type: str, x0: Tensor, eps: Tensor, tau: Tensor) -> Tensor:
    """x_tau = alpha_tau x0 + sigma_tau eps (Eq. 1): one lerp on the linear path."""
    if path_type == "linear":
        return torch.lerp(x0, eps, tau)
    alpha, sigma, _, _ = interpolant(path_type, tau)
    return alpha * x0 + sigma * eps


def velocity_target(path_type: str, x0: Tensor, eps: Tensor, tau: Tensor) -> Tensor:
    """d alpha/dt x0 + d sigma/dt eps (Eq. 2's target): eps - x0 on the linear path, whatever tau."""
    if path_type == "linear":
        return eps - x0
    _, _, d_alpha, d_sigma = interpolant(path_type, tau)
    return d_alpha * x0 + d_sigma * eps


def mixed(path_type: str, x0: Tensor, eps: Tensor, tau: Tensor, grid: int, patch: int) -> Tensor:
    """x_tau (N, C, H, W) for tau (N, T) per token (raster order) or (N, 1): each token's timestep over its
    patch, through views (token_map), nothing painted."""
    x0_patches = patch_view(x0, grid, patch)
    eps_patches = patch_view(eps, grid, patch)
    return noised(path_type, x0_patches, eps_patches, token_map(tau, grid)).view_as(x0)


def patch_view(x: Tensor, grid: int, patch: int) -> Tensor:
    """(N, C, H, W) -> (N, C, grid, patch, grid, patch): the model's patches, a view (x contiguous)."""
    return x.view(x.shape[0], x.shape[1], grid, patch, grid, patch)


def token_map(tau: Tensor, grid: int) -> Tensor:
    """(N, T) raster-order per-token values (or (N, 1): one per sample) -> a view that broadcasts over
    patch_view: each token's value over its patch, without painting an image of it."""
    side = grid if tau.shape[1] > 1 else 1
    return tau.view(tau.shape[0], 1, side, 1, side, 1)


def patch_tokens(x: Tensor, patch: int) -> Tensor:
    """(N, C, H, W) -> (N, T, p*p*C) raster-order patches, in the model's (p, q, c) order."""
    N, C, H, W = x.shape
    g = H // patch
    x = x.reshape(N, C, g, patch, g, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(N, g * g, patch * patch * C)


# ------------------------------------------------------------------------------------------------------------
# Alignment distances (METHOD.md section 6), per sample, always in fp32
# ------------------------------------------------------------------------------------------------------------

def _cosine(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """F.cosine_similarity's value, a.b / (max(|a|, eps) max(|b|, eps)), in fewer kernels."""
    return (a * b).sum(dim) / (a.norm(dim=dim).clamp_min(eps) * b.norm(dim=dim).clamp_min(eps))


def alignment_distance(a: Tensor, b: Tensor, loss_type: str) -> Tensor:
    """a, b (N, T, D) -> (N,). cos-token: 1 - cos over features per token, mean over tokens (the paper's
    Eq. 3/7); cos-channel: 1 - cos over tokens per channel, mean over channels (the release's
    F.cosine_similarity dim=1)."""
    a, b = a.float(), b.float()
    if loss_type == "cos-token":
        return (1 - _cosine(a, b, dim=-1)).mean(dim=1)
    if loss_type == "cos-channel":
        return (1 - _cosine(a, b, dim=1)).mean(dim=1)
    if loss_type == "sml1":
        return F.smooth_l1_loss(a, b, beta=0.05, reduction="none").mean(dim=(1, 2))
    if loss_type == "l1":
        return (a - b).abs().mean(dim=(1, 2))
    if loss_type == "l2":
        return (a - b).pow(2).mean(dim=(1, 2))
    raise ValueError(f"--loss-type must be one of {LOSS_TYPES}, got {loss_type!r}")


# ------------------------------------------------------------------------------------------------------------
# Where the alignment target comes from. A target reads the batch's draw (`Draw`) and returns
# (N, T, D_target). A new target is one class with `head` (the student's head: ap_head or projector),
# `z_dim(patch, channels)` (the head's output width; None = the model's own width) and `__call__(draw)`.
# ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Draw:
    """What one loss call drew, as far as the alignment targets read it."""
    # the clean batch x0 (N, C, H, W) and its noise eps (N, C, H, W)
    x0: Tensor
    eps: Tensor | None = None
    # the interpolant's path (linear / cosine), for noising x0 at the teacher's time (mix)
    path_type: str = "linear"
    # t (N, G): one timestep per token group (DTS, Eq. 5); the first num_full rows are full-image samples
    t: Tensor | None = None
    num_full: int = 0
    # the clean labels (N,) and those the student saw after label dropout
    y: Tensor | None = None
    y_dropped: Tensor | None = None
    # the student's input x_t (N, C, H, W), its token layout and the (N, T) raster-order group of each token
    # (layout and ids are None with one group)
    x_t: Tensor | None = None
    layout: SegmentLayout | None = None
    ids: Tensor | None = None
    # the model's tokens: grid x grid patches of patch x patch pixels
    grid: int | None = None
    patch: int | None = None
    # the batch's precomputed alignment target (N, T, D) (REPA with --repa-features), else None
    features: Tensor | None = None
    # --process ddpm: DiT's process, and t holds integer steps (int64); None: flow matching
    diffusion: GaussianDiffusion | None = None

    def mix(self, tau: Tensor) -> Tensor:
        """x_tau = alpha_tau x0 + sigma_tau eps (Eq. 1) for tau (N, T) per token (raster order) or (N, 1);
        under DDPM x_tau = sqrt(abar_tau) x0 + sqrt(1 - abar_tau) eps at integer steps tau."""
        if self.diffusion is not None:
            return self.diffusion.q_sample(self.x0, pixel_timesteps(tau, self.grid, self.patch), self.eps)
        return mixed(self.path_type, self.x0, self.eps, tau, self.grid, self.patch)

    def velocity(self, tau: Tensor) -> Tensor:
        """The flow-matching target at tau (Eq. 2): eps - x0 on the linear path, whatever tau."""
        if self.path_type == "linear":
            return velocity_target(self.path_type, self.x0, self.eps, tau)
        x0 = patch_view(self.x0, self.grid, self.patch)
        eps = patch_view(self.eps, self.grid, self.patch)
        return velocity_target(self.path_type, x0, eps, token_map(tau, self.grid)).view_as(self.x0)


def student_head(target, patch: int, channels: int) -> tuple[str, int | None]:
    """(align_head, z_dim) the SiT student needs for `target` (None = the EMA teacher: ap_head at the model
    width)."""
    return ("ap_head", None) if target is None else (target.head, target.z_dim(patch, channels))


class EMATeacher:
    """SRA / Self-Flow / ours: the EMA model's block-n hidden state on a less noisy input (Sec. 5 table).

    The EMA model is bound here, once: the training loop updates its weights in place."""
    head = "ap_head"

    def __init__(self, ema: nn.Module, cfg: LossConfig, teacher_mask: bool):
        self.ema = ema
        self.block_out_t = cfg.block_out_t
        self.teacher_t = cfg.teacher_t
        self.teacher_labels = cfg.teacher_labels
        # sra: s = clamp(t - t_max U, 0, 1)
        self.t_max = cfg.t_max
        # sra: the teacher runs on the student's token groups (TrainingLoss.teacher_mask)
        self.teacher_mask = teacher_mask

    def z_dim(self, patch: int, channels: int) -> None:
        # the teacher's width is the student's
        return None

    @torch.no_grad()
    def __call__(self, d: Draw) -> Tensor:
        y = d.y if self.teacher_labels == "clean" else d.y_dropped
        layout = None
        if self.teacher_t == "same":
            # the student's own input and layout
            s = d.t
            x_in = d.x_t
            layout = d.layout
        elif self.teacher_t == "self_flow":
            # Eq. 7: the whole image at t_lo = min_g t_g
            s = d.t.min(dim=1, keepdim=True).values
            x_in = d.mix(s)
        else:
            if d.diffusion is None:
                # sra: s_g = clamp(t_g - t_max U_g, 0, 1)
                u = torch.rand(d.t.shape, device=d.t.device)
            else:
                # DiT-SRA: an integer offset U{0, .., t_max * 1000 - 1}
                top = int(round(self.t_max * NUM_TIMESTEPS))
                u = torch.randint(0, max(top, 1), d.t.shape, device=d.t.device)
            if d.num_full:
                # a full-image row keeps one timestep
                u[: d.num_full] = u[: d.num_full, :1]
            if d.diffusion is None:
                s = (d.t - self.t_max * u).clamp(0, 1)
            else:
                # s_g = clamp(t_g - U_g, 1, 999), as the release's DiT-SRA/train.py
                s = (d.t - u).clamp(1, NUM_TIMESTEPS - 1)
            if self.teacher_mask:
                # the student's groups, each at its own s_g
                layout = d.layout
                x_in = d.mix(s.gather(1, d.ids))
            else:
                # one group: the plain SRA teacher
                s = s[:, :1]
                x_in = d.mix(s)
        # integer DDPM steps go to the time embedding as floats
        t_in = (s[:, 0] if layout is None else s).float()
        return self.ema.forward_features(x_in, t_in, y, layer=self.block_out_t, groups=layout)


class REPATarget:
    """REPA (arXiv 2410.06940): a frozen external encoder's patch tokens on the real image (never a VAE
    reconstruction), DINOv2's x_norm_patchtokens at 14 * grid pixels (224 for 16 x 16 SiT tokens, 448 for
    32 x 32), so tokens line up.

    Latent datasets: the targets are precomputed from the dataset's images (`python -m preprocessing
    repa-features`, train.py --repa-features, the presets' default): the batch's features arrive on the draw
    (d.features, (N, T, D_enc)) and are the target as they are; no encoder is needed (pass encoder=None and
    dim=D_enc). Pixel datasets (the digits): the encoder runs on the fly on to_images(x0), the batch's images
    themselves."""
    head = "projector"

    def __init__(self, encoder: nn.Module | None = None, to_images=None, dim: int | None = None):
        if encoder is None and dim is None:
            raise ValueError("REPATarget needs an encoder, or dim (the encoder width) for precomputed "
                             "features")
        # a frozen models.dinov2 encoder, eval mode (None: precomputed features only)
        self.encoder = encoder
        # x0 (pixel data, N, C, H, W) -> images (N, 3 or 1, H, W) in [-1, 1]
        self.to_images = to_images
        self.dim = encoder.embed_dim if encoder is not None else int(dim)

    def z_dim(self, patch: int, channels: int) -> int:
        return self.dim

    @torch.no_grad()
    def __call__(self, d: Draw) -> Tensor:
        if d.features is not None:
            # precomputed: (N, grid^2, D_enc)
            want = (d.x0.shape[0], d.grid ** 2, self.dim)
            if tuple(d.features.shape) != want:
                raise ValueError(f"precomputed REPA features have shape {tuple(d.features.shape)}, expected "
                                 f"{want} (batch, the model's {d.grid}x{d.grid} tokens, encoder width "
                                 f"{self.dim}): were they written for another --enc-type or --patch-size?")
            return d.features.float()
        if self.encoder is None:
            raise ValueError("REPATarget has no encoder: pass the batch's precomputed features to the loss "
                             "(loss(model, x0, y, features=...))")
        from models.dinov2 import dinov2_patch_tokens, dinov2_resolution, preprocess_for_dinov2
        images = self.to_images(d.x0).float()
        if images.shape[1] == 1:
            # grey (the embedded digits)
            images = images.expand(-1, 3, -1, -1)
        x = preprocess_for_dinov2(images, resolution=dinov2_resolution(d.grid))
        # (N, grid^2, D_enc)
        return dinov2_patch_tokens(self.encoder, x)


class VAELatentTarget:
    """SRA 2 (arXiv 2601.17830; no official code, so each choice here is our reading of its description):
    the target is the clean latent x0 itself, exactly as the student denoises it this step (posterior sample,
    scaled by 0.18215), cut into the model's tokens: (N, T, p*p*C), in the model's (p, q, c) patch order, so
    token i of the target is the patch token i of the student embeds. 16-d per token for p = 2, C = 4. The
    student's head is models.sit.SRA2Head (--sra2-head-depth)."""
    head = "sra2"

    def z_dim(self, patch: int, channels: int) -> int:
        return patch ** 2 * channels

    def __call__(self, d: Draw) -> Tensor:
        return patch_tokens(d.x0, d.patch)


# ------------------------------------------------------------------------------------------------------------
# The loss
# ------------------------------------------------------------------------------------------------------------

def _check_config(cfg: LossConfig, sizes: tuple[int, ...]) -> None:
    """Refuse settings that cannot be trained, in one line naming the flags."""
    interpolant(cfg.path_type, torch.zeros(1))
    if cfg.process not in PROCESSES:
        raise ValueError(f"--process must be one of {PROCESSES}, got {cfg.process!r}")
    if cfg.process == "ddpm" and (cfg.path_type, cfg.weighting) != ("linear", "uniform"):
        raise ValueError(f"--path-type {cfg.path_type} / --weighting {cfg.weighting} are flow-matching "
                         "settings: --process ddpm draws t ~ U{0, .., 999} on DiT's linear beta schedule")
    align_weight_at(cfg.align_weight_schedule, cfg.align_weight, 0, 0, cfg.align_until)
    if not 0 <= cfg.t_max <= 1:
        raise ValueError(f"--t-max must lie in [0, 1], got {cfg.t_max}")
    if cfg.weighting not in ("uniform", "lognormal"):
        raise ValueError(f"--weighting must be uniform or lognormal, got {cfg.weighting!r}")
    if cfg.loss_type not in LOSS_TYPES:
        raise ValueError(f"--loss-type must be one of {LOSS_TYPES}, got {cfg.loss_type!r}")
    if cfg.teacher_t not in TEACHER_T:
        raise ValueError(f"--teacher-t must be one of {TEACHER_T}, got {cfg.teacher_t!r}")
    if cfg.teacher_labels not in ("clean", "dropped"):
        raise ValueError(f"--teacher-labels must be clean or dropped, got {cfg.teacher_labels!r}")
    if cfg.align_target not in ALIGN_TARGETS:
        raise ValueError(f"--align-target must be one of {ALIGN_TARGETS}, got {cfg.align_target!r}")
    if len(sizes) == 1:
        grouped = (("--dual-time-scheduling", cfg.dual_time_scheduling),
                   ("--attention-separation", cfg.attention_separation),
                   ("--full-sample-prob", cfg.full_sample_prob > 0),
                   ("--sorted-timesteps", cfg.sorted_timesteps))
        bad = [flag for flag, on in grouped if on]
        if bad:
            raise ValueError(f"{', '.join(bad)} need(s) token groups: {ask_for_groups(cfg.mask_ratio)}")
    if not 0 <= cfg.full_sample_prob <= 1:
        raise ValueError(f"--full-sample-prob must lie in [0, 1], got {cfg.full_sample_prob}")
    if cfg.full_sample_prob > 0 and len(sizes) != 2:
        raise ValueError("--full-sample-prob needs exactly two groups (one --mask-ratio value)")
    if cfg.full_sample_prob > 0 and not (cfg.attention_separation or cfg.dual_time_scheduling):
        raise ValueError("--full-sample-prob mixes plain samples into DTS/AS batches: it needs "
                         "--dual-time-scheduling or --attention-separation")
    if cfg.align_target != "none" and not 1 <= cfg.block_out_s:
        raise ValueError(f"--block-out-s must be >= 1, got {cfg.block_out_s}")


def ask_for_groups(mask_ratio) -> str:
    """The advice when a flag needs token groups and --mask-ratio makes one."""
    got = list(mask_ratio) if not isinstance(mask_ratio, (int, float)) else mask_ratio
    return (f"--mask-ratio {got} is one group (plain SRA: drop the flag, or --no-dual-time-scheduling "
            f"--no-attention-separation); for token groups set --mask-ratio to a value in (0, 1)")


def teacher_on_groups(align_target: str, teacher_t: str, mask_ratio) -> bool:
    """Whether the EMA teacher runs on the student's token groups: derived, never a setting. Only the EMA
    target has a teacher; the sra and same teachers run on the groups whenever --mask-ratio makes them (s_g
    per group, Sec. 5 table); self_flow sees the whole image at t_lo (Eq. 7). The release's
    --[no-]teacher-mask is checked against it (infra/flags.py)."""
    groups = len(group_ratios(mask_ratio))
    return align_target == "ema" and groups > 1 and teacher_t in ("sra", "same")


class TrainingLoss:
    """Flow matching + optional alignment (module docstring), configured by one LossConfig.

    target: the alignment target object of --align-target repa / sra2 (REPATarget, VAELatentTarget);
    ema: the EMA model, for --align-target ema (the teacher is built here and bound to it).
    Call: loss(model, x0, y, features=None, epoch=0, step=0) -> (per-sample loss (N,), logs): terms() (the
    draws, the student, the target, the distances: what --compile-scope step compiles) combined with lambda
    at (epoch, step).

    Logged: loss_gen, the flow-matching MSE (Eq. 2); loss_align, the distance d before lambda (1 - cos for
    the cosines, as the release logs it; REPA logs -cos, so its proj_loss curve is ours minus 1)."""

    def __init__(self, cfg: LossConfig, *, num_tokens: int, grid: int, patch: int, num_classes: int,
                 target=None, ema: nn.Module | None = None):
        self.sizes = group_sizes(group_ratios(cfg.mask_ratio), num_tokens)
        _check_config(cfg, self.sizes)
        self.cfg = cfg
        self.num_tokens = num_tokens
        self.grid = grid
        self.patch = patch
        self.num_classes = num_classes
        self.teacher_mask = teacher_on_groups(cfg.align_target, cfg.teacher_t, cfg.mask_ratio)
        if cfg.align_target in ("none", "ema") and target is not None:
            raise ValueError(f"--align-target {cfg.align_target} takes no target object (that is for repa "
                             "/ sra2)")
        if cfg.align_target == "ema":
            if ema is None:
                raise ValueError("--align-target ema needs the EMA model: TrainingLoss(..., ema=...)")
            target = EMATeacher(ema, cfg, self.teacher_mask)
        elif cfg.align_target != "none" and target is None:
            raise ValueError(f"--align-target {cfg.align_target} needs its target object "
                             f"(REPATarget / VAELatentTarget): TrainingLoss(..., target=...)")
        self.target = target
        self._groups_cache = {}
        # DiT's 1000-step process under --process ddpm
        self.diffusion = GaussianDiffusion.dit() if cfg.process == "ddpm" else None

    def _rank_group(self, dev: torch.device) -> Tensor:
        """(T,) group of each rank in the random order: [0] * sizes[0] + [1] * sizes[1] + ... (cached per
        device)."""
        if dev not in self._groups_cache:
            ranks = [k for k, n in enumerate(self.sizes) for _ in range(n)]
            self._groups_cache[dev] = torch.tensor(ranks, device=dev)
        return self._groups_cache[dev]

    def draw_timesteps(self, N: int, dev: torch.device) -> tuple[Tensor, int]:
        """-> (t (N, G), num_full): one timestep per group (DTS, Eq. 5) and the number of full-image rows
        (the first num_full rows, one timestep for all their tokens). With --sorted-timesteps the groups'
        draws are sorted so that t_hi is on the masked group; a full row is a plain sample, so it keeps one
        unsorted draw (group 1's, as the release) and its t stays U(0, 1) (the smaller of two sorted draws
        would have mean 1/3)."""
        cfg = self.cfg
        G = len(self.sizes)
        columns = G if cfg.dual_time_scheduling else 1
        if self.diffusion is None:
            drawn = sample_t((N, columns), cfg.weighting, cfg.path_type, dev).expand(N, G)
        else:
            # DDPM: integer steps t ~ U{0, .., 999} (int64)
            drawn = torch.randint(0, NUM_TIMESTEPS, (N, columns), device=dev).expand(N, G)
        t = drawn.sort(dim=1, descending=True).values if cfg.sorted_timesteps else drawn
        # full-image mixing: an exact count, no sync
        num_full = int(round(cfg.full_sample_prob * N)) if G > 1 else 0
        if num_full:
            # full rows: one timestep
            t = torch.cat([drawn[:num_full, 1:2].expand(-1, G), t[num_full:]])
        return t.contiguous(), num_full

    def __call__(self, model: nn.Module, x0: Tensor, y: Tensor, features: Tensor | None = None,
                 epoch: int = 0, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """features: the batch's precomputed alignment target (N, T, D) when the target reads it (REPA), else
        None. epoch, step: the 0-based epoch and step of this step (python ints), read by
        --align-weight-schedule and --align-until, outside the compiled terms (no recompile per step)."""
        # the group table (and DDPM's tables) on the device, made before the terms run (a compiled terms()
        # reads, never adds)
        self._rank_group(x0.device)
        if self.diffusion is not None:
            self.diffusion.tables_on(x0.device)
        loss_gen, loss_align, logs = self.terms(model, x0, y, features)
        if loss_align is None:
            return loss_gen, logs
        cfg = self.cfg
        weight = align_weight_at(cfg.align_weight_schedule, cfg.align_weight, epoch, step, cfg.align_until)
        return loss_gen + weight * loss_align, logs

    def terms(self, model: nn.Module, x0: Tensor, y: Tensor,
              features: Tensor | None = None) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """-> (loss_gen (N,), loss_align (N,) or None, logs): one draw, the student, the alignment target."""
        cfg = self.cfg
        N = x0.shape[0]
        dev = x0.device
        eps = torch.randn_like(x0)
        # label dropout for CFG (null class = num_classes)
        drop = torch.rand(N, device=dev) < cfg.class_dropout_prob
        y_dropped = y.masked_fill(drop, self.num_classes)

        # ---- timesteps per group (DTS, Eq. 5) and exact-size token groups ----------------------------------
        t, num_full = self.draw_timesteps(N, dev)
        layout = ids = None
        if len(self.sizes) == 1:
            tau = t[:, :1]                                                     # (N, 1)
        else:
            # one uniform noise value per token
            noise = torch.rand(N, self.num_tokens, device=dev)                 # (N, T)
            # ascending noise: perm[n, j] = the token of rank j, a uniform random order per sample
            perm = noise.argsort(dim=1)                                        # (N, T)
            # the student's layout: tokens in perm order, the first num_full rows attend fully
            layout = SegmentLayout.from_perm(perm, self.sizes, cfg.attention_separation, num_full)
            # ranks [0, sizes[0]) form group 0, the next sizes[1] group 1, ...: each token takes its rank's
            # group, ids[n, i] = rank_group[inv_perm[n, i]]
            ids = self._rank_group(dev)[layout.inv_perm]                       # (N, T)
            # each token's timestep t[n, ids[n, i]]
            tau = t.gather(1, ids)                                             # (N, T)
        draw = Draw(x0=x0, eps=eps, path_type=cfg.path_type, t=t, num_full=num_full, y=y, y_dropped=y_dropped,
                    layout=layout, ids=ids, grid=self.grid, patch=self.patch, features=features,
                    diffusion=self.diffusion)
        # Eq. 1 per token (Eq. 6 under DTS); DDPM's q_sample at each token's step
        x_t = draw.mix(tau)
        draw = dataclasses.replace(draw, x_t=x_t)

        # ---- student ---------------------------------------------------------------------------------------
        align_layer = cfg.block_out_s if self.target is not None else None
        # DDPM: the integer steps as floats, and both halves of the learned-sigma output (eps, variance)
        kw = {} if self.diffusion is None else dict(sigma=True)
        t_in = t.float()
        if layout is None:
            out = model(x_t, t_in[:, 0], y_dropped, align_layer=align_layer, **kw)
        else:
            out = model(x_t, t_in, y_dropped, groups=layout, align_layer=align_layer, **kw)
        v, feats = out if align_layer is not None else (out, None)
        if self.diffusion is None:
            # (N,), Eq. 2: the target eps - x0 on the linear path
            loss_gen = F.mse_loss(v.float(), draw.velocity(tau).float(), reduction="none").mean(dim=(1, 2, 3))
            logs = {"loss_gen": loss_gen.detach().mean()}
        else:
            # (N,) each: DiT's L_simple + L_vlb, every pixel scored at its token's step
            steps = pixel_timesteps(tau, self.grid, self.patch)                # (N, 1, 1 or H, 1 or W)
            mse, vb = self.diffusion.training_terms(v, x0, x_t, eps, steps)
            loss_gen = mse if vb is None else mse + vb
            logs = {"loss_gen": loss_gen.detach().mean(), "loss_mse": mse.detach().mean()}
            if vb is not None:
                logs["loss_vb"] = vb.detach().mean()
        if self.target is None:
            return loss_gen, None, logs

        # ---- alignment target and distance (Eq. 3-4, 7), fp32 ----------------------------------------------
        z = self.target(draw)
        with torch.autocast(device_type="cuda" if dev.type == "cuda" else "cpu", enabled=False):
            loss_align = alignment_distance(feats, z, cfg.loss_type)           # (N,)
        logs["loss_align"] = loss_align.detach().mean()
        return loss_gen, loss_align, logs
