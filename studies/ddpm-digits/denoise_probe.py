"""Where DDPM loses to flow matching on the digits: the x0 error of two EMA models at matched noise levels.

    python studies/ddpm-digits/denoise_probe.py FLOW_CKPT DDPM_CKPT

For DDPM steps k, x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps and x0_hat = (x_k - sqrt(1 - abar_k) eps_hat) /
sqrt(abar_k); the flow model sees the same signal-to-noise ratio at t = s / (a + s), x_t = (1 - t) x0 + t eps
(the same eps), and x0_hat = x_t - t v_hat. Prints the mean squared x0 error of each on 512 digits."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import ddpm  # noqa: E402
from dataset import digits_images  # noqa: E402
from models import load_checkpoint  # noqa: E402


def main(flow_ckpt: str, ddpm_ckpt: str) -> None:
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    x0, y = digits_images(16)
    x0, y = x0[:512], y[:512]
    flow, _ = load_checkpoint(flow_ckpt)
    eps_model, _ = load_checkpoint(ddpm_ckpt)
    abar = torch.tensor(ddpm.GaussianDiffusion.dit().alphas_cumprod)
    eps = torch.randn_like(x0)
    c = x0.shape[1]
    print("step   SNR      x0 MSE flow   x0 MSE ddpm")
    for step in (50, 150, 300, 500, 700, 850, 950):
        a = abar[step].sqrt().item()
        s = (1 - abar[step]).sqrt().item()
        x_k = a * x0 + s * eps
        eps_hat = eps_model(x_k, torch.full((len(x0),), float(step)), y)[:, :c]
        t = s / (a + s)
        x_t = (1 - t) * x0 + t * eps
        v_hat = flow(x_t, torch.full((len(x0),), t), y)[:, :c]
        mse_flow = ((x_t - t * v_hat - x0) ** 2).mean().item()
        mse_ddpm = (((x_k - s * eps_hat) / a - x0) ** 2).mean().item()
        print(f"{step:4d}  {a * a / (s * s):7.3f}  {mse_flow:11.4f}  {mse_ddpm:12.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
