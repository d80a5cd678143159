"""Samplers for the flows x_t = alpha_t x0 + sigma_t eps (t = 1 noise, t = 0 data; loss.py's `interpolant`):
the linear path (alpha = 1 - t, sigma = t, the recipe) and the cosine path (alpha = cos(pi t / 2),
sigma = sin(pi t / 2), `--path-type cosine`).

The network predicts the velocity v(x_t, t, y) ~= E[alpha' x0 + sigma' eps | x_t] (eps - x0 on the linear
path). Three integrators from t = 1 to t = 0:

- Euler ODE    grid linspace(1, 0, S + 1); x <- x + (t_next - t_cur) v.                           NFE = S
- Heun ODE     same grid; second evaluation at t_next, x <- x + dt (v + v') / 2, skipped on the last
               step (t_next = 0).                                                                NFE = 2S - 1
- Euler-Maruyama SDE (the REPA / SRA release sampler)
               grid [linspace(1, 0.04, S), 0]; diffusion g^2 = 2t on both paths (as the releases); the
               path's score s from the velocity (below); drift d = v - g^2 s / 2;
               x <- x + d dt + sqrt(g^2) sqrt(|dt|) eps for the first S - 1 intervals, then one
               deterministic (mean) step 0.04 -> 0 with the same drift.                          NFE = S

The score. E[x0 | x] = (x - sigma E[eps | x]) / alpha, so
v = (alpha' / alpha) x + (sigma' - alpha' sigma / alpha) E[eps | x]; solving for E[eps | x] and using
s = grad log p_t(x) = -E[eps | x] / sigma gives
    s = -(alpha v - alpha' x) / (sigma (alpha sigma' - alpha' sigma)).
Linear path: alpha sigma' - alpha' sigma = 1, so s = -((1 - t) v + x) / t. Cosine path: the bracket is pi / 2,
so s = -(cos(pi t / 2) v + (pi / 2) sin(pi t / 2) x) / ((pi / 2) sin(pi t / 2)). The reverse SDE
dx = (v - g^2 s / 2) dt + g dW keeps the marginals of the ODE dx = v dt for any g, so each path lands on the
data with g^2 = 2t; a cosine model sampled with the linear path's score does not (tests/test_samplers.py).

Classifier-free guidance: when cfg_scale > 1 and guidance_low <= t_cur <= guidance_high, the batch is doubled
with the null label (model.num_classes) and v = v_u + w (v_c - v_u). Guiding v is the same as guiding the SDE
drift d (the releases' choice) because d is affine in v with the same x in both halves.
cfg_channels=None guides all channels (REPA / SRA); cfg_channels=3 guides only the first three and keeps the
conditional value elsewhere (DiT / SiT's forward_with_cfg, needed to reproduce SiT's released FID 2.06).
For Heun the second evaluation uses the guidance decision taken at t_cur (as the releases).

State precision: the state x and the time grid are float64 by default, as the releases do. The elementwise
update costs nothing next to a network call, and float64 keeps 250 small increments from accumulating fp32
rounding (|dt| ~ 4e-3 times O(1) velocities). The network is called in fp32 (optionally under bf16 autocast);
the result is returned in fp32. Pass state_dtype=torch.float32 on devices without float64 (e.g. MPS).

Noise: by default torch's global RNG (as the releases; fine for previews). For reproducible sets pass one
torch.Generator per image (see `per_image_generators`): image i's SDE noise then depends only on its own
generator, never on the batch it shares or on the number of processes. Each generator draws its image's noise
in blocks of NOISE_BLOCK steps, shape (NOISE_BLOCK, C, H, W), so a batch of N images costs N small draws per
block instead of N per step (kernel launches on GPU) while the buffer stays small (N x 16 x C x H x W floats:
64 MB for 256 latents of 4 x 32 x 32, instead of 1 GB for a whole 250-step trajectory). The block size is part
of the definition of the noise stream: changing it changes the samples.
"""
import contextlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from models.vae import decode_latents

# Last grid point of the stochastic part (SiT's last_step_size, REPA/SRA's 0.04).
SDE_T_END = 0.04
# SDE steps drawn at once per image generator (part of the noise-stream definition).
NOISE_BLOCK = 16
PATH_TYPES = ("linear", "cosine")
# What the samplers call: model(x (N, C, H, W), t (N,), y (N,)) -> v (N, C, H, W) or (N, 2C, H, W); an
# nn.Module or any callable (a `num_classes` attribute names the null label for CFG).
VelocityModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def path_coefficients(path_type: str, t: float) -> tuple[float, float, float, float]:
    """(alpha, sigma, d alpha / dt, d sigma / dt) of the path at a python float t (loss.py's interpolant)."""
    if path_type == "linear":
        return 1.0 - t, t, -1.0, 1.0
    if path_type == "cosine":
        a, s = math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)
        return a, s, -math.pi / 2 * s, math.pi / 2 * a
    raise ValueError(f"path_type must be one of {PATH_TYPES}, got {path_type!r}")


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: float,
                        path_type: str = "linear") -> torch.Tensor:
    """grad log p_t(x) at a float t > 0 from the velocity v (see the module docstring)."""
    alpha, sigma, d_alpha, d_sigma = path_coefficients(path_type, t)
    return -(alpha * v - d_alpha * x) / (sigma * (alpha * d_sigma - d_alpha * sigma))


def ode_time_grid(num_steps: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """linspace(1, 0, num_steps + 1): (num_steps + 1,)."""
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=dtype)


def sde_time_grid(num_steps: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[linspace(1, 0.04, num_steps), 0]: (num_steps + 1,). The last interval is the deterministic one."""
    return torch.cat([torch.linspace(1.0, SDE_T_END, num_steps, dtype=dtype), torch.zeros(1, dtype=dtype)])


def num_function_evals(mode: str, num_steps: int, heun: bool = False) -> int:
    """Network evaluations per sample, not counting the CFG doubling."""
    if mode == "ode" and heun:
        return 2 * num_steps - 1
    return num_steps


def per_image_generators(seeds: Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    """One torch.Generator per image, seeded with its own seed (e.g. global_seed + index)."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def per_image_randn(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Stack one draw of `shape` from each generator: (N, *shape). Used for the initial noise z."""
    return torch.stack([torch.randn(shape, generator=g, device=device, dtype=dtype) for g in generators])


class TrajectoryNoise:
    """The SDE's per-step Gaussian noise, (N, C, H, W) per step, for a trajectory of `num_draws` steps.

    With generators, image i's noise is read from generators[i] in blocks of NOISE_BLOCK steps (the last
    block is shorter); without, each step draws from the global RNG (torch.randn, as the releases).
    """

    def __init__(self, shape: Sequence[int], num_draws: int, device: torch.device | str,
                 generators: Sequence[torch.Generator] | None = None):
        self.shape = tuple(shape)                                                   # (N, C, H, W)
        self.device = device
        self.generators = generators
        self.remaining = num_draws
        self.buffer, self.pos = None, 0                                             # (N, B, C, H, W)
        if generators is not None and len(generators) != shape[0]:
            raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]} images")

    def next(self) -> torch.Tensor:
        if self.remaining <= 0:
            raise RuntimeError("TrajectoryNoise: more draws requested than the trajectory has steps")
        if self.generators is None:
            self.remaining -= 1
            return torch.randn(self.shape, device=self.device)
        if self.buffer is None or self.pos == self.buffer.shape[1]:
            block = min(NOISE_BLOCK, self.remaining)
            self.buffer = per_image_randn(self.generators, (block,) + self.shape[1:], self.device)
            self.pos = 0
        eps = self.buffer[:, self.pos]                                              # (N, C, H, W)
        self.pos += 1
        self.remaining -= 1
        return eps


def _null_class(model, null_class):
    if null_class is not None:
        return int(null_class)
    if not hasattr(model, "num_classes"):
        raise ValueError("CFG needs the null label: pass null_class= or use a model with a num_classes "
                         "attribute")
    return int(model.num_classes)


def model_velocity(model: VelocityModel, x: torch.Tensor, t: float, y: torch.Tensor,
                   bf16: bool = False) -> torch.Tensor:
    """Call the network once. x (N, C, H, W) any float dtype, t python float, y (N,) -> v (N, C, H, W) fp32.

    A learn_sigma network returns 2C channels; the velocity is the first C (as SiT's forward does).
    """
    n, c = x.shape[:2]
    t_vec = torch.full((n,), float(t), device=x.device, dtype=torch.float32)
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        out = model(x.to(torch.float32), t_vec, y)
    if out.shape[1] == 2 * c and out.shape[2:] == x.shape[2:]:
        out = out[:, :c]
    if out.shape != x.shape:
        raise ValueError(f"model returned {tuple(out.shape)} for an input of {tuple(x.shape)}")
    return out.float()


def guided_velocity(model: VelocityModel, x: torch.Tensor, t: float, y: torch.Tensor, cfg_scale: float = 1.0,
                    use_cfg: bool = False, cfg_channels: int | None = None, null_class: int | None = None,
                    bf16: bool = False) -> torch.Tensor:
    """v with classifier-free guidance when use_cfg: v_u + w (v_c - v_u) on channels [:cfg_channels] (all
    channels when None); other channels keep the conditional value. Returns (N, C, H, W) fp32."""
    if not use_cfg:
        return model_velocity(model, x, t, y, bf16)
    n = x.shape[0]
    y_null = torch.full_like(y, _null_class(model, null_class))
    v = model_velocity(model, torch.cat([x, x]), t, torch.cat([y, y_null]), bf16)   # (2N, C, H, W)
    v_c, v_u = v[:n], v[n:]
    k = v.shape[1] if cfg_channels is None else int(cfg_channels)
    guided = v_u[:, :k] + cfg_scale * (v_c[:, :k] - v_u[:, :k])
    return torch.cat([guided, v_c[:, k:]], dim=1)


def _check(z, y, num_steps, cfg_scale, guidance_low, guidance_high, cfg_channels, generators):
    if z.ndim != 4:
        raise ValueError(f"z must be (N, C, H, W), got shape {tuple(z.shape)}")
    if y.shape != (z.shape[0],):
        raise ValueError(f"y must be (N,) = ({z.shape[0]},), got shape {tuple(y.shape)}")
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    if not 0.0 <= guidance_low <= guidance_high <= 1.0:
        raise ValueError(f"need 0 <= guidance_low <= guidance_high <= 1, "
                         f"got [{guidance_low}, {guidance_high}]")
    if cfg_channels is not None and not 1 <= int(cfg_channels) <= z.shape[1]:
        raise ValueError(f"cfg_channels must be in 1..{z.shape[1]} (or None for all), got {cfg_channels}")
    if generators is not None and len(generators) != z.shape[0]:
        raise ValueError(f"got {len(generators)} generators for {z.shape[0]} images")


class Stopped(Exception):
    """sample()'s `stop()` said yes between two steps: the images are abandoned."""


@torch.no_grad()
def sample(model: VelocityModel, z: torch.Tensor, y: torch.Tensor, mode: str = "sde", num_steps: int = 50,
           heun: bool = False, cfg_scale: float = 1.0, guidance_low: float = 0.0, guidance_high: float = 1.0,
           cfg_channels: int | None = None, null_class: int | None = None,
           generators: Sequence[torch.Generator] | None = None, bf16: bool = False,
           state_dtype: torch.dtype = torch.float64, path_type: str = "linear",
           stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Integrate from t = 1 (z, pure noise) to t = 0. z (N, C, H, W), y (N,) int64 -> x0 (N, C, H, W) fp32.

    mode 'ode' (Euler, or Heun with heun=True) or 'sde' (Euler-Maruyama, the release sampler).
    path_type: the path the model was trained on (linear | cosine): the SDE's score depends on it.
    generators: None (global RNG) or one torch.Generator per image for the SDE noise (the ODE draws none).
    stop: asked before every step (a host flag, e.g. a stop signal's); True raises Stopped.
    """
    _check(z, y, num_steps, cfg_scale, guidance_low, guidance_high, cfg_channels, generators)
    # Validates the name.
    path_coefficients(path_type, 0.5)
    if mode not in ("ode", "sde"):
        raise ValueError(f"mode must be 'ode' or 'sde', got {mode!r}")
    if heun and mode != "ode":
        raise ValueError("heun=True is an ODE option; the SDE sampler is Euler-Maruyama only")
    null_class = _null_class(model, null_class) if cfg_scale > 1.0 else null_class

    def velocity(x: torch.Tensor, t_cur: float, t_eval: float) -> torch.Tensor:
        use_cfg = cfg_scale > 1.0 and guidance_low <= t_cur <= guidance_high
        return guided_velocity(model, x, t_eval, y, cfg_scale, use_cfg, cfg_channels, null_class, bf16)

    x = z.to(state_dtype)
    if mode == "ode":
        t_steps = ode_time_grid(num_steps).tolist()
        for i in range(num_steps):
            if stop is not None and stop():
                raise Stopped(f"stopped before step {i + 1} of {num_steps}")
            t_cur, t_next = t_steps[i], t_steps[i + 1]
            dt = t_next - t_cur
            v = velocity(x, t_cur, t_cur).to(state_dtype)
            x_next = x + dt * v
            if heun and i < num_steps - 1:
                v_next = velocity(x_next, t_cur, t_next).to(state_dtype)
                x_next = x + dt * 0.5 * (v + v_next)
            x = x_next
        return x.float()

    t_steps = sde_time_grid(num_steps).tolist()
    noise = TrajectoryNoise(z.shape, num_steps - 1, z.device, generators)
    for i in range(num_steps):
        if stop is not None and stop():
            raise Stopped(f"stopped before step {i + 1} of {num_steps}")
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        # dt < 0.
        dt = t_next - t_cur
        v = velocity(x, t_cur, t_cur).to(state_dtype)
        # diffusion^2, REPA/SRA compute_diffusion
        g2 = 2.0 * t_cur
        score = score_from_velocity(v, x, t_cur, path_type)
        drift = v - 0.5 * g2 * score
        x = x + drift * dt
        # The last interval is the mean step.
        if i < num_steps - 1:
            x = x + (g2 ** 0.5) * (abs(dt) ** 0.5) * noise.next().to(state_dtype)
    return x.float()

# ------------------------------------------------------------------------------------------------------------
# Images from a model: per-image seeds and labels -> uint8 images (sample_ddp.py, train.py's previews and the
# digits metric, evaluations/fid_proxy.py). Image k of a call is made from its own torch.Generator seeded with
# seeds[k]: its initial noise and all its SDE noise, so an image does not depend on the batch it shares.
# The uint8 rule (`quantize`): `release` (default) = floor(clamp(127.5 x + 127.5, 0, 255)), as the SRA
# release's and REPA's generate.py, so FIDs compare with the paper's; `dit` = floor(clamp(127.5 x + 128, 0,
# 255)), as DiT / SiT's sample_ddp (half a grey level brighter). Grey images are repeated to 3 channels.
# ------------------------------------------------------------------------------------------------------------

# uint8 = floor(clamp(127.5 x + offset, 0, 255))
QUANTIZE_OFFSET = {"release": 127.5, "dit": 128.0}


def to_uint8(x: torch.Tensor, quantize: str = "release") -> np.ndarray:
    """(N, C, H, W) float in [-1, 1], C in {1, 3} -> (N, H, W, 3) uint8 numpy, floor(clamp(127.5 x + offset)):
    offset 127.5 for quantize='release' (SRA / REPA generate.py), 128 for 'dit' (DiT / SiT sample_ddp)."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(x.shape)}")
    if quantize not in QUANTIZE_OFFSET:
        raise ValueError(f"quantize must be one of {sorted(QUANTIZE_OFFSET)}, got {quantize!r}")
    # the cast truncates, which is floor on the clamped (non-negative) values
    u8 = (127.5 * x.float() + QUANTIZE_OFFSET[quantize]).clamp(0, 255).to(torch.uint8)
    if u8.shape[1] == 1:
        u8 = u8.expand(-1, 3, -1, -1)
    return u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()



def sample_images(model: torch.nn.Module, seeds, labels, device: torch.device | str, vae=None,
                  quantize: str = "release", process: str = "flow", **sampler_kwargs) -> np.ndarray:
    """Images from per-image seeds (one generator each) and labels -> (N, H, W, 3) uint8 numpy (to_uint8).
    vae: the SD-VAE that decodes latents (None: the model makes pixels). sampler_kwargs go to samplers.sample
    (mode, num_steps, heun, cfg_scale, guidance_low, path_type, ...), or with process='ddpm' to ddpm.sample
    (mode ddpm | ddim, num_steps, cfg_scale, cfg_channels, ...)."""
    gens = per_image_generators(seeds, device)
    z = per_image_randn(gens, (model.in_channels, model.input_size, model.input_size), device)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=device)
    if process == "ddpm":
        import ddpm

        x = ddpm.sample(model, z, y, generators=gens, **sampler_kwargs)
    elif process == "flow":
        x = sample(model, z, y, generators=gens, **sampler_kwargs)
    else:
        raise ValueError(f"process must be flow or ddpm, got {process!r}")
    return to_uint8(decode_latents(vae, x), quantize)


def run_sampler(process: str, num_steps: int, path_type: str = "linear", cfg_scale: float = 1.0,
                bf16: bool = False) -> dict:
    """sample_images' settings for a run's previews, embedded metric and fid_proxy: the Euler-Maruyama SDE on
    the run's path for flow matching, DiT's ancestral sampler respaced to num_steps for --process ddpm."""
    if process == "ddpm":
        return dict(process="ddpm", mode="ddpm", num_steps=num_steps, cfg_scale=cfg_scale, bf16=bf16)
    return dict(mode="sde", num_steps=num_steps, cfg_scale=cfg_scale, path_type=path_type, bf16=bf16)


def sampler_name(kw: dict) -> str:
    """'sde', 'ode', 'ode-heun', 'ddpm' or 'ddim' for sample_images' settings."""
    return kw.get("mode", "sde") + ("-heun" if kw.get("heun") else "")
