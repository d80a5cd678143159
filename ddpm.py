"""DDPM as DiT trains and samples it: the second process beside flow matching (loss.py, --process ddpm).

DiT (Peebles & Xie, arXiv 2212.09748) uses the Gaussian diffusion of improved DDPM (Nichol & Dhariwal, arXiv
2102.09672), written here from the equations, not from their code:

    T = 1000 steps, linear betas 1e-4 .. 2e-2 (Ho et al.), alpha_t = 1 - beta_t, abar_t = prod_s<=t alpha_s
    q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I)                      (t = 0 is one step of noise)
    q(x_{t-1} | x_t, x0) = N(c1_t x0 + c2_t x_t, beta~_t I), beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t),
        c1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t),  c2_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)
    the network (learn_sigma, 2C channels): eps_hat (first C) and v in [-1, 1] (last C), the log-variance
        log Sigma = (v + 1) / 2 log beta_t + (1 - v) / 2 log beta~_t   (beta~_0 replaced by beta~_1, as iDDPM)
    x0_hat = sqrt(1 / abar_t) x_t - sqrt(1 / abar_t - 1) eps_hat
    p(x_{t-1} | x_t) = N(mu~(x0_hat, x_t), Sigma): the posterior mean at x0_hat, the learned variance
    loss = L_simple + L_vlb: L_simple = mean (eps - eps_hat)^2; L_vlb = KL(q(x_{t-1}|x_t,x0) || p) in bits per
        dim with eps_hat stopped (the VLB trains the variance only), the discretised decoder NLL at t = 0.
        DiT's create_diffusion uses loss_type MSE: the VLB term enters unscaled (its RESCALED_MSE, which
        scales it by T / 1000, is not DiT's; with T = 1000 the two agree anyway). t ~ U{0, ..., 999}.

Time input: the network sees the integer step of the 1000-step process (DiT's timestep_embedding of t as it
is), through the same sinusoidal embedding as flow matching's t in [0, 1] (models/sit.py). Respaced samplers
(DiT's --num-sampling-steps 250) keep a subset of steps; the network still sees their original index.

Per-token timesteps (DTS under DDPM): every function below takes t as (N,) or as a per-pixel map (N, 1, H, W)
(`pixel_timesteps`), so each patch is noised, denoised and scored at its own step.

Samplers (`sample`): ancestral (mode 'ddpm', DiT's p_sample_loop with clip_denoised=False) and DDIM (mode
'ddim', eta = 0: deterministic), with classifier-free guidance as DiT's forward_with_cfg: eps_u + w (eps_c -
eps_u) on the first `cfg_channels` channels (3 by default), the conditional eps on the others and the
conditional variance; guidance only where guidance_low <= t / 1000 <= guidance_high (t the original step).
"""
import contextlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

NUM_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 2e-2
SAMPLE_MODES = ("ddpm", "ddim")
# DiT's forward_with_cfg guides the first 3 channels of eps
DIT_CFG_CHANNELS = 3


def linear_betas(num_timesteps: int = NUM_TIMESTEPS) -> np.ndarray:
    """(T,) float64: Ho et al.'s linear schedule, 1e-4 .. 2e-2 at T = 1000, scaled by 1000 / T otherwise
    (iDDPM's extension to other T)."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * BETA_START, scale * BETA_END, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, spec: int | str) -> list[int]:
    """The steps a respaced process keeps (iDDPM's section rule, as DiT's respace): spec "250" (or 250) keeps
    250 steps evenly strided over [0, T); "10,15,20" splits [0, T) into three equal sections with 10, 15 and
    20 steps; "ddimN" the integer stride that gives exactly N steps (DDIM's). -> sorted original indices."""
    text = str(spec).strip()
    if text.startswith("ddim"):
        want = int(text[4:])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == want:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"no integer stride gives exactly {want} of {num_timesteps} steps")
    try:
        counts = [int(c) for c in text.split(",")]
    except ValueError:
        raise ValueError(f"timestep respacing must be N, 'N1,N2,...' or 'ddimN', got {spec!r}") from None
    base, extra = divmod(num_timesteps, len(counts))
    kept, start = [], 0
    for k, count in enumerate(counts):
        size = base + (1 if k < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"cannot take {count} steps from a section of {size} (of {num_timesteps})")
        # count points from start to start + size - 1, rounded to integers
        stride = (size - 1) / (count - 1) if count > 1 else 1
        kept += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(kept))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_normal_cdf(x: Tensor) -> Tensor:
    """The standard normal CDF by the tanh approximation Ho et al.'s decoder uses (as DiT)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_nll(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """-log P(bin of x) per element, in nats, for data on 256 levels in [-1, 1] (bins of width 2/255, the two
    outer bins open-ended): Ho et al.'s decoder, which DiT applies to latents as well."""
    inv_std = torch.exp(-log_scale)
    upper = _approx_normal_cdf(inv_std * (x - mean + 1 / 255))
    lower = _approx_normal_cdf(inv_std * (x - mean - 1 / 255))
    log_p = torch.where(x < -0.999, torch.log(upper.clamp(min=1e-12)),
                        torch.where(x > 0.999, torch.log((1 - lower).clamp(min=1e-12)),
                                    torch.log((upper - lower).clamp(min=1e-12))))
    return -log_p


def pixel_timesteps(tau: Tensor, grid: int, patch: int) -> Tensor:
    """Integer steps (N, 1) per sample or (N, T) per token (raster order) -> (N, 1, 1, 1) or (N, 1, H, W):
    each token's step over its patch, a shape that broadcasts with (N, C, H, W)."""
    N = tau.shape[0]
    if tau.shape[1] == 1:
        return tau.view(N, 1, 1, 1)
    per_token = tau.view(N, 1, grid, 1, grid, 1).expand(N, 1, grid, patch, grid, patch)
    return per_token.reshape(N, 1, grid * patch, grid * patch)


class GaussianDiffusion:
    """One (possibly respaced) Gaussian diffusion: its tables in float64 and the operations on them.

    betas (S,): the process's own steps; timestep_map (S,): the original step each one is (what the network
    sees), range(S) when not respaced."""

    def __init__(self, betas: np.ndarray, timestep_map: Sequence[int] | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-d array of values in (0, 1]")
        self.num_timesteps = len(betas)
        kept = range(len(betas)) if timestep_map is None else timestep_map
        self.timestep_map = [int(i) for i in kept]
        self.betas = betas
        acp = np.cumprod(1.0 - betas)
        acp_prev = np.append(1.0, acp[:-1])
        self.alphas_cumprod = acp
        self.alphas_cumprod_prev = acp_prev
        self.alphas_cumprod_next = np.append(acp[1:], 0.0)
        post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
        self.posterior_variance = post_var
        # beta~_0 = 0: its log is taken at beta~_1 (iDDPM's clipping; also the learned range's lower end)
        self.posterior_log_variance_clipped = np.log(np.append(post_var[1], post_var[1:])) \
            if len(betas) > 1 else np.log(np.maximum(post_var, 1e-20))
        tables = dict(
            sqrt_acp=np.sqrt(acp), sqrt_1m_acp=np.sqrt(1.0 - acp), acp=acp, acp_prev=acp_prev,
            acp_next=self.alphas_cumprod_next, log_1m_acp=np.log(1.0 - acp),
            sqrt_recip_acp=np.sqrt(1.0 / acp), sqrt_recipm1_acp=np.sqrt(1.0 / acp - 1.0),
            post_var=post_var, post_logvar=self.posterior_log_variance_clipped, log_beta=np.log(betas),
            # DiT's fixed-large variance without learned sigma: beta_t, with beta~_1 at t = 0
            fixed_logvar=np.log(np.append(post_var[1], betas[1:])) if len(betas) > 1 else np.log(betas),
            coef1=betas * np.sqrt(acp_prev) / (1.0 - acp),
            coef2=(1.0 - acp_prev) * np.sqrt(1.0 - betas) / (1.0 - acp))
        self._cpu = {k: torch.from_numpy(v.copy()) for k, v in tables.items()}
        self._on = {}

    @classmethod
    def dit(cls, respacing: int | str | None = None) -> "GaussianDiffusion":
        """DiT's process (create_diffusion): 1000 linear-beta steps, respaced to `respacing` steps if given
        (the kept steps' abar are the original ones: beta'_k = 1 - abar_{i_k} / abar_{i_{k-1}})."""
        base = cls(linear_betas(NUM_TIMESTEPS))
        if respacing is None or str(respacing) == str(NUM_TIMESTEPS):
            return base
        return base.respaced(space_timesteps(NUM_TIMESTEPS, respacing))

    def respaced(self, kept: Sequence[int]) -> "GaussianDiffusion":
        """The process on the steps `kept` (indices into this one), with betas that reproduce abar there."""
        kept = sorted(int(i) for i in kept)
        new_betas, last = [], 1.0
        for i in kept:
            new_betas.append(1.0 - self.alphas_cumprod[i] / last)
            last = self.alphas_cumprod[i]
        return GaussianDiffusion(np.array(new_betas), [self.timestep_map[i] for i in kept])

    # ---- table lookups -------------------------------------------------------------------------------------
    def tables_on(self, device: torch.device) -> None:
        """Copy every table to `device` now (before a compiled step, which should only read them)."""
        for name in self._cpu:
            self._table(name, device)

    def _table(self, name: str, device: torch.device) -> Tensor:
        key = (name, str(device))
        if key not in self._on:
            self._on[key] = self._cpu[name].to(device)
        return self._on[key]

    def at(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """table[t] in like's dtype, shaped to broadcast with like (N, C, H, W): t (N,) -> (N, 1, 1, 1); a
        per-pixel map (N, 1, H, W) stays as it is."""
        values = self._table(name, t.device)[t.long()].to(like.dtype)
        return values.view(-1, *([1] * (like.ndim - 1))) if t.ndim == 1 else values

    def model_steps(self, t: Tensor) -> Tensor:
        """The original steps (float32, what the network's time embedding takes) of this process's steps t."""
        if self.timestep_map == list(range(self.num_timesteps)):
            return t.float()
        table = torch.tensor(self.timestep_map, device=t.device, dtype=torch.float32)
        return table[t.long()]

    # ---- the forward process and its posterior -------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        return self.at("sqrt_acp", t, x0) * x0 + self.at("sqrt_1m_acp", t, x0) * eps

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t-1} | x_t, x0) -> (mean, variance, clipped log-variance), each broadcasting with x_t."""
        mean = self.at("coef1", t, x_t) * x0 + self.at("coef2", t, x_t) * x_t
        return mean, self.at("post_var", t, x_t), self.at("post_logvar", t, x_t)

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return self.at("sqrt_recip_acp", t, x_t) * x_t - self.at("sqrt_recipm1_acp", t, x_t) * eps

    def eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        return (self.at("sqrt_recip_acp", t, x_t) * x_t - x0) / self.at("sqrt_recipm1_acp", t, x_t)

    def p_mean_variance(self, out: Tensor, x_t: Tensor, t: Tensor) -> dict[str, Tensor]:
        """The reverse step from the network's output out (N, 2C, H, W): eps_hat and the learned-range log
        variance; (N, C, H, W): eps_hat with DiT's fixed-large variance (beta_t, beta~_1 at t = 0).
        -> mean, log_variance, pred_x0, eps (no clipping of x0_hat, as DiT samples)."""
        C = x_t.shape[1]
        if out.shape[1] == 2 * C:
            eps, v = out[:, :C], out[:, C:]
            frac = (v + 1) / 2
            log_var = frac * self.at("log_beta", t, x_t) + (1 - frac) * self.at("post_logvar", t, x_t)
        elif out.shape[1] == C:
            eps = out
            log_var = self.at("fixed_logvar", t, x_t).expand_as(x_t)
        else:
            raise ValueError(f"the network returned {out.shape[1]} channels for a {C}-channel input "
                             f"(expected {C} or {2 * C} with learned sigma)")
        pred_x0 = self.predict_x0(x_t, t, eps)
        mean, _, _ = self.q_posterior(pred_x0, x_t, t)
        return dict(mean=mean, log_variance=log_var, pred_x0=pred_x0, eps=eps)

    # ---- the variational bound -----------------------------------------------------------------------------
    def vb_bits_per_dim(self, x0: Tensor, x_t: Tensor, t: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
        """L_{t-1} of the VLB per sample (N,), in bits per dimension: KL(q(x_{t-1}|x_t,x0) || N(mean,
        e^log_var)) where t > 0, the decoder's discretised NLL of x0 where t = 0 (per pixel under per-token
        steps)."""
        true_mean, _, true_logvar = self.q_posterior(x0, x_t, t)
        kl = normal_kl(true_mean, true_logvar, mean, log_var)
        nll = discretized_gaussian_nll(x0, mean, 0.5 * log_var)
        first = (t == 0).view(-1, *([1] * (x0.ndim - 1))) if t.ndim == 1 else t == 0
        per_elem = torch.where(first, nll, kl)
        return per_elem.mean(dim=tuple(range(1, x0.ndim))) / math.log(2.0)

    def prior_bits_per_dim(self, x0: Tensor) -> Tensor:
        """KL(q(x_T | x0) || N(0, I)) per sample (N,), bits per dimension: the VLB's L_T."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device, dtype=torch.long)
        mean = self.at("sqrt_acp", t, x0) * x0
        logvar = self.at("log_1m_acp", t, x0).expand_as(x0)
        kl = normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0))
        return kl.mean(dim=tuple(range(1, x0.ndim))) / math.log(2.0)

    def training_terms(self, out: Tensor, x0: Tensor, x_t: Tensor, eps: Tensor,
                       t: Tensor) -> tuple[Tensor, Tensor | None]:
        """DiT's hybrid loss from the network's output out (N, 2C or C, H, W) at x_t = q_sample(x0, t, eps).
        -> (mse (N,) = L_simple, vb (N,) = L_vlb with eps_hat stopped, or None without learned sigma)."""
        C = x0.shape[1]
        mse = (eps.float() - out[:, :C].float()).pow(2).mean(dim=(1, 2, 3))
        if out.shape[1] == C:
            return mse, None
        # the VLB sees eps_hat through a stop-gradient: it trains the variance only (iDDPM's L_hybrid)
        frozen = torch.cat([out[:, :C].detach(), out[:, C:]], dim=1).float()
        p = self.p_mean_variance(frozen, x_t.float(), t)
        vb = self.vb_bits_per_dim(x0.float(), x_t.float(), t, p["mean"], p["log_variance"])
        return mse, vb


# ------------------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------------------

def network_output(model, x: Tensor, t: Tensor, y: Tensor, bf16: bool = False) -> Tensor:
    """The network's full output at integer-valued steps t (N,) float: (N, 2C, H, W) for a learned-sigma SiT
    (models/sit.py's sigma=True), whatever the callable returns otherwise; fp32."""
    from models.sit import SiT

    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        if isinstance(model, SiT):
            out = model(x.float(), t, y, sigma=True)
        else:
            out = model(x.float(), t, y)
    return out.float()


def guided_output(model, x: Tensor, t: Tensor, y: Tensor, cfg_scale: float, use_cfg: bool,
                  cfg_channels: int | None, null_class: int, bf16: bool = False) -> Tensor:
    """CFG as DiT's forward_with_cfg: the batch doubled with the null label; eps_u + w (eps_c - eps_u) on the
    first cfg_channels channels of eps (None: all), the conditional eps elsewhere and the conditional
    variance half. -> (N, 2C or C, H, W) fp32."""
    if not use_cfg:
        return network_output(model, x, t, y, bf16)
    n, C = x.shape[:2]
    out = network_output(model, torch.cat([x, x]), torch.cat([t, t]),
                         torch.cat([y, torch.full_like(y, null_class)]), bf16)          # (2N, 2C, H, W)
    cond, uncond = out[:n], out[n:]
    k = C if cfg_channels is None else int(cfg_channels)
    guided = uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k])
    return torch.cat([guided, cond[:, k:]], dim=1)


@torch.no_grad()
def sample(model, z: Tensor, y: Tensor, mode: str = "ddpm", num_steps: int = 250, cfg_scale: float = 1.0,
           guidance_low: float = 0.0, guidance_high: float = 1.0, cfg_channels: int | None = DIT_CFG_CHANNELS,
           null_class: int | None = None, generators: Sequence[torch.Generator] | None = None,
           bf16: bool = False, state_dtype: torch.dtype = torch.float64,
           diffusion: GaussianDiffusion | None = None, stop: Callable[[], bool] | None = None) -> Tensor:
    """From z (N, C, H, W) ~ N(0, I) at the last step to x0 (N, C, H, W) fp32, DiT's process respaced to
    num_steps steps (or `diffusion`). mode 'ddpm': ancestral, x <- mean + exp(log_var / 2) noise (no noise at
    the last step); 'ddim': eta = 0, x <- sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat.
    generators: one per image for the ancestral noise (samplers.TrajectoryNoise), else the global RNG.
    stop: asked before every step (a stop signal's flag); True raises samplers.Stopped."""
    from samplers import Stopped, TrajectoryNoise, _null_class

    if mode not in SAMPLE_MODES:
        raise ValueError(f"mode must be one of {SAMPLE_MODES} for DDPM, got {mode!r}")
    if z.ndim != 4 or y.shape != (z.shape[0],):
        raise ValueError(f"z must be (N, C, H, W) and y (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    if not 0.0 <= guidance_low <= guidance_high <= 1.0:
        raise ValueError(f"need 0 <= guidance_low <= guidance_high <= 1, got [{guidance_low}, "
                         f"{guidance_high}]")
    if cfg_channels is not None and int(cfg_channels) < 1:
        raise ValueError(f"cfg_channels must be >= 1 (or None for all), got {cfg_channels}")
    # DiT's 3 on a model with fewer channels (the 1-channel digits) guides them all
    cfg_channels = None if cfg_channels is None or int(cfg_channels) >= z.shape[1] else int(cfg_channels)
    process = diffusion or GaussianDiffusion.dit(num_steps)
    null = _null_class(model, null_class) if cfg_scale > 1.0 else 0
    S = process.num_timesteps
    noise = TrajectoryNoise(z.shape, S - 1, z.device, generators) if mode == "ddpm" else None
    x = z.to(state_dtype)
    for i in reversed(range(S)):
        if stop is not None and stop():
            raise Stopped(f"stopped before step {S - i} of {S}")
        t = torch.full((z.shape[0],), i, device=z.device, dtype=torch.long)
        step = process.timestep_map[i]
        use_cfg = cfg_scale > 1.0 and guidance_low <= step / NUM_TIMESTEPS <= guidance_high
        out = guided_output(model, x, process.model_steps(t), y, cfg_scale, use_cfg, cfg_channels, null, bf16)
        p = process.p_mean_variance(out.to(state_dtype), x, t)
        if mode == "ddpm":
            x = p["mean"]
            if i > 0:
                x = x + torch.exp(0.5 * p["log_variance"]) * noise.next().to(state_dtype)
        else:
            eps = process.eps_from_x0(x, t, p["pred_x0"])
            prev = process.at("acp_prev", t, x)
            x = p["pred_x0"] * prev.sqrt() + (1 - prev).sqrt() * eps
    return x.float()


@torch.no_grad()
def ddim_invert(model, x0: Tensor, y: Tensor, num_steps: int = 250, fixed_point_iters: int = 0,
                bf16: bool = False, state_dtype: torch.dtype = torch.float64,
                diffusion: GaussianDiffusion | None = None) -> Tensor:
    """The inverse of sample(mode='ddim') (no guidance): clean x0 -> the state at the last kept step that
    DDIM maps back to x0. Step i of the sampler maps x_i (at abar_i) to x_prev = sqrt(abar_prev) x0_hat +
    sqrt(1 - abar_prev) eps_hat(x_i); its inverse is x_i = sqrt(abar_i) x0_hat + sqrt(1 - abar_i) eps with
    x0_hat = (x_prev - sqrt(1 - abar_prev) eps) / sqrt(abar_prev) and eps = eps_hat(x_i, i). DDIM inversion
    takes eps at x_prev (fixed_point_iters = 0); each fixed-point iteration re-evaluates it at the current
    estimate of x_i, which converges to the exact inverse for a smooth network and small steps."""
    process = diffusion or GaussianDiffusion.dit(num_steps)
    x = x0.to(state_dtype)
    for i in range(process.num_timesteps):
        t = torch.full((x0.shape[0],), i, device=x0.device, dtype=torch.long)
        steps = process.model_steps(t)
        prev, cur = process.at("acp_prev", t, x), process.at("acp", t, x)
        guess = x
        for _ in range(fixed_point_iters + 1):
            eps = network_output(model, guess, steps, y, bf16)[:, :x.shape[1]].to(state_dtype)
            x0_hat = (x - (1 - prev).sqrt() * eps) / prev.sqrt()
            guess = cur.sqrt() * x0_hat + (1 - cur).sqrt() * eps
        x = guess
    return x.float()
