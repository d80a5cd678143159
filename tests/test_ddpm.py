"""ddpm.py against closed forms and against a naive implementation written here.

The naive side derives what ddpm.py tabulates: abar by a running product, the posterior q(x_{t-1} | x_t, x0)
by multiplying the two Gaussians it is made of (Bayes, precisions add), the VLB terms from math.erf. The
samplers run on analytic Gaussian data, x0 ~ N(mu_y, Sigma), where the exact noise prediction is known:
    x_t ~ N(sqrt(abar) mu, S_t),  S_t = abar Sigma + (1 - abar) I,
    E[eps | x_t] = sqrt(1 - abar) S_t^-1 (x - sqrt(abar) mu).
"""
import math

import numpy as np
import pytest
import torch

import ddpm
from models.sit import SiT


def naive_alphas_cumprod(betas):
    out, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        out.append(prod)
    return out


def test_linear_schedule_is_dits():
    betas = ddpm.linear_betas()
    assert betas.shape == (1000,) and betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999)
    d = ddpm.GaussianDiffusion.dit()
    assert np.allclose(d.alphas_cumprod, naive_alphas_cumprod(betas.tolist()), rtol=1e-12)
    # abar_999 of DiT's process: about 4e-5
    assert 3e-5 < d.alphas_cumprod[-1] < 5e-5


def test_q_sample_matches_the_closed_form_and_its_moments():
    d = ddpm.GaussianDiffusion.dit()
    acp = naive_alphas_cumprod(ddpm.linear_betas().tolist())
    torch.manual_seed(0)
    x0 = torch.randn(4, 2, 3, 3)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    got = d.q_sample(x0, t, eps)
    for n, tn in enumerate(t.tolist()):
        want = math.sqrt(acp[tn]) * x0[n] + math.sqrt(1 - acp[tn]) * eps[n]
        assert torch.allclose(got[n], want, atol=1e-6)
    # moments of x_t for one fixed x0 over many eps
    x0 = torch.full((200000, 1, 1, 1), 0.7)
    t = torch.full((200000,), 300)
    xt = d.q_sample(x0, t, torch.randn_like(x0))
    assert float(xt.mean()) == pytest.approx(math.sqrt(acp[300]) * 0.7, abs=5e-3)
    assert float(xt.var()) == pytest.approx(1 - acp[300], abs=5e-3)


def test_posterior_is_bayes_rule():
    """q(x_{t-1} | x_t, x0) ~ q(x_t | x_{t-1}) q(x_{t-1} | x0): precision 1 / (1 - abar_{t-1}) + alpha_t /
    beta_t, mean (sqrt(abar_{t-1}) x0 / (1 - abar_{t-1}) + sqrt(alpha_t) x_t / beta_t) / precision."""
    d = ddpm.GaussianDiffusion.dit()
    betas = ddpm.linear_betas().tolist()
    acp = naive_alphas_cumprod(betas)
    x0 = torch.tensor([0.3, -1.2], dtype=torch.float64).view(2, 1, 1, 1)
    xt = torch.tensor([1.1, 0.4], dtype=torch.float64).view(2, 1, 1, 1)
    for step in (1, 7, 250, 999):
        t = torch.full((2,), step)
        mean, var, logvar = d.q_posterior(x0, xt, t)
        a, b, prev = 1 - betas[step], betas[step], acp[step - 1]
        precision = 1 / (1 - prev) + a / b
        want = (math.sqrt(prev) * x0 / (1 - prev) + math.sqrt(a) * xt / b) / precision
        assert torch.allclose(mean, want, rtol=1e-9)
        assert float(var[0]) == pytest.approx(1 / precision, rel=1e-9)
        assert float(logvar[0]) == pytest.approx(math.log(1 / precision), rel=1e-9)
    # at t = 0 the posterior is a point (variance 0); its log is clipped to beta~_1's
    mean, var, logvar = d.q_posterior(x0, xt, torch.zeros(2, dtype=torch.long))
    assert float(var[0]) == 0.0 and float(logvar[0]) == pytest.approx(math.log(d.posterior_variance[1]))
    assert torch.allclose(mean, x0)


def test_space_timesteps():
    kept = ddpm.space_timesteps(1000, "250")
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    assert ddpm.space_timesteps(1000, 1000) == list(range(1000))
    # the documented example: 300 steps in sections of 10, 15, 20
    kept = ddpm.space_timesteps(300, "10,15,20")
    assert len(kept) == 45 and [k for k in kept if k < 100][-1] == 99 and kept[-1] == 299
    assert ddpm.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    with pytest.raises(ValueError, match="cannot take 400 steps"):
        ddpm.space_timesteps(300, "400")
    with pytest.raises(ValueError, match="ddimN"):
        ddpm.space_timesteps(1000, "fast")


@pytest.mark.parametrize("spec", ["250", "10,20,30", "ddim25", "7"])
def test_respacing_keeps_alphas_cumprod_at_the_kept_steps(spec):
    base = ddpm.GaussianDiffusion.dit()
    spaced = ddpm.GaussianDiffusion.dit(spec)
    kept = ddpm.space_timesteps(1000, spec)
    assert spaced.timestep_map == kept
    assert np.allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12)
    # the network sees the original steps
    t = torch.arange(len(kept))
    assert spaced.model_steps(t).tolist() == [float(k) for k in kept]


def test_vlb_terms_in_bits_per_dim():
    d = ddpm.GaussianDiffusion.dit()
    torch.manual_seed(1)
    x0 = torch.rand(3, 2, 4, 4, dtype=torch.float64) * 2 - 1
    xt = torch.randn_like(x0)
    t = torch.tensor([5, 400, 900])
    true_mean, _, true_logvar = d.q_posterior(x0, xt, t)
    # the exact posterior costs nothing
    zero = d.vb_bits_per_dim(x0, xt, t, true_mean, true_logvar.expand_as(x0))
    assert torch.allclose(zero, torch.zeros(3, dtype=torch.float64), atol=1e-12)
    # a mean off by delta with the posterior's variance v: KL = delta^2 / (2 v) nats per dim
    delta = 0.01
    kl = d.vb_bits_per_dim(x0, xt, t, true_mean + delta, true_logvar.expand_as(x0))
    want = torch.tensor([delta ** 2 / (2 * d.posterior_variance[s]) / math.log(2) for s in t.tolist()],
                        dtype=torch.float64)
    assert torch.allclose(kl, want, rtol=1e-9)
    # the right mean with twice the variance: KL(N(m, v) || N(m, 2v)) = (ln 2 - 1 / 2) / 2 nats per dim
    kl = d.vb_bits_per_dim(x0, xt, t, true_mean, true_logvar.expand_as(x0) + math.log(2))
    assert torch.allclose(kl, torch.full((3,), (math.log(2) - 0.5) / 2 / math.log(2), dtype=torch.float64))
    # t = 0: the discretised Gaussian NLL of x0's bin, with the exact normal CDF to the tanh approximation's
    # accuracy; the outer bins are open-ended
    x0 = torch.tensor([-1.0, -0.2, 0.5, 1.0], dtype=torch.float64).view(4, 1, 1, 1)
    mean = torch.tensor([-0.98, -0.21, 0.49, 0.97], dtype=torch.float64).view(4, 1, 1, 1)
    log_var = torch.full_like(x0, math.log(0.01 ** 2))
    got = d.vb_bits_per_dim(x0, torch.zeros_like(x0), torch.zeros(4, dtype=torch.long), mean, log_var)

    def cdf(v):
        return 0.5 * (1 + math.erf(v / math.sqrt(2)))
    want = []
    for x, m in zip(x0.flatten().tolist(), mean.flatten().tolist()):
        hi, lo = cdf((x - m + 1 / 255) / 0.01), cdf((x - m - 1 / 255) / 0.01)
        p = hi if x < -0.999 else (1 - lo if x > 0.999 else hi - lo)
        want.append(-math.log(p) / math.log(2))
    # (the approximation is off by up to ~1% in the tails: 7.84 bits against 7.78 here)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-2)
    # the prior term: KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)) per dim
    x0 = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    a = d.alphas_cumprod[-1]
    want = 0.5 * (-1 - math.log(1 - a) + (1 - a) + a * 0.25) / math.log(2)
    assert float(d.prior_bits_per_dim(x0)[0]) == pytest.approx(want, rel=1e-9)


def test_hybrid_loss_trains_the_variance_only_through_the_vlb():
    d = ddpm.GaussianDiffusion.dit()
    torch.manual_seed(2)
    x0 = torch.randn(3, 2, 4, 4)
    eps = torch.randn_like(x0)
    t = torch.tensor([3, 300, 999])
    xt = d.q_sample(x0, t, eps)
    # the exact eps and v = -1 (the posterior variance): zero loss
    exact = torch.cat([eps, -torch.ones_like(eps)], dim=1)
    mse, vb = d.training_terms(exact, x0, xt, eps, t)
    assert torch.allclose(mse, torch.zeros(3)) and vb.abs().max() < 1e-4
    # L_simple is the mean squared eps error; the VLB's gradient reaches the variance half only
    out = (exact + 0.1 * torch.randn_like(exact)).requires_grad_()
    mse, vb = d.training_terms(out, x0, xt, eps, t)
    assert torch.allclose(mse, (out[:, :2] - eps).pow(2).mean(dim=(1, 2, 3)))
    vb.sum().backward()
    assert out.grad[:, :2].abs().max() == 0 and out.grad[:, 2:].abs().max() > 0
    # without learned sigma: L_simple only
    mse, vb = d.training_terms(eps.clone(), x0, xt, eps, t)
    assert vb is None and float(mse.max()) == 0


def test_per_token_steps_noise_each_patch_at_its_own_step():
    d = ddpm.GaussianDiffusion.dit()
    torch.manual_seed(3)
    x0 = torch.randn(2, 3, 4, 4)
    eps = torch.randn_like(x0)
    # a 2 x 2 grid of 2 x 2 patches, one step per token (raster order)
    tau = torch.tensor([[0, 10, 500, 999], [7, 7, 7, 7]])
    pix = ddpm.pixel_timesteps(tau, grid=2, patch=2)
    assert pix.shape == (2, 1, 4, 4)
    got = d.q_sample(x0, pix, eps)
    for n in range(2):
        for k in range(4):
            r, c = divmod(k, 2)
            one = d.q_sample(x0[n:n + 1], tau[n, k:k + 1], eps[n:n + 1])
            assert torch.allclose(got[n, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2], one[0, :, 2 * r:2 * r + 2,
                                                                                    2 * c:2 * c + 2])
    # one step per sample: the same as the (N,) call
    same = d.q_sample(x0, ddpm.pixel_timesteps(tau[:, :1], 2, 2), eps)
    assert torch.allclose(same, d.q_sample(x0, tau[:, 0], eps))


# ------------------------------------------------------------------------------------------------------------
# Samplers on analytic Gaussian data
# ------------------------------------------------------------------------------------------------------------

class GaussianEps:
    """The exact E[eps | x_t] of x0 ~ N(mu[y], Sigma) under DiT's process, at the original step t; the
    variance channels say v (fixed)."""

    def __init__(self, mu, sigma, v=0.0):
        self.mu, self.sigma = mu.double(), sigma.double()
        self.num_classes = mu.shape[0] - 1
        self.acp = ddpm.GaussianDiffusion.dit().alphas_cumprod
        self.v = v
        self.steps = []

    def __call__(self, x, t, y):
        assert torch.all(t == t[0])
        step = int(round(float(t[0])))
        assert float(t[0]) == step
        self.steps.append(step)
        n, dim = x.shape[0], self.sigma.shape[0]
        a = float(self.acp[step])
        s_t = a * self.sigma + (1 - a) * torch.eye(dim, dtype=torch.float64)
        gain = math.sqrt(1 - a) * torch.linalg.inv(s_t)
        eps = (x.reshape(n, dim).double() - math.sqrt(a) * self.mu[y]) @ gain.T
        eps = eps.reshape(x.shape).float()
        return torch.cat([eps, torch.full_like(eps, self.v)], dim=1)


def make_gaussian(v=0.0):
    mu = torch.tensor([[1.0, -0.5], [-1.0, 2.0], [0.0, 0.0]])
    sigma = torch.tensor([[1.0, 0.6], [0.6, 0.8]])
    return GaussianEps(mu, sigma, v)


def spd_sqrt(a):
    w, q = torch.linalg.eigh(a)
    return q @ torch.diag(w.sqrt()) @ q.T


@pytest.mark.parametrize("mode,steps", [("ddpm", 250), ("ddim", 100)])
def test_samplers_reach_the_gaussian(mode, steps):
    torch.manual_seed(0)
    model, n = make_gaussian(), 20000
    y = torch.randint(0, 2, (n,))
    z = torch.randn(n, 2, 1, 1)
    x = ddpm.sample(model, z, y, mode=mode, num_steps=steps)
    # the respaced steps, last to first, in the network's original indices
    assert model.steps == ddpm.space_timesteps(1000, steps)[::-1]
    for k in (0, 1):
        xs = x[y == k].reshape(-1, 2).double()
        assert torch.allclose(xs.mean(0), model.mu[k], atol=0.04), (k, xs.mean(0))
        assert torch.allclose(torch.cov(xs.T), model.sigma, atol=0.06), (k, torch.cov(xs.T))
    if mode == "ddim":
        # the probability-flow endpoint of z is mu + Sigma^1/2 z (Sigma commutes with I), sample by sample
        exact = model.mu[y] + z.reshape(n, 2).double() @ spd_sqrt(model.sigma).T
        assert (x.reshape(n, 2).double() - exact).abs().mean() < 0.02


def test_ddpm_with_per_image_generators_is_batch_independent():
    from samplers import per_image_generators

    model = make_gaussian()
    z = torch.randn(4, 2, 1, 1)
    y = torch.tensor([0, 1, 0, 1])
    full = ddpm.sample(model, z, y, num_steps=20, generators=per_image_generators(range(4), "cpu"))
    part = ddpm.sample(model, z[2:], y[2:], num_steps=20, generators=per_image_generators(range(2, 4), "cpu"))
    assert torch.equal(full[2:], part)


def test_cfg_is_dits_on_three_channels():
    """forward_with_cfg: eps_u + w (eps_c - eps_u) on the first 3 channels, conditional eps on the 4th and the
    conditional variance."""
    def net(x, t, y):
        base = torch.where(y == 5, 1.0, 3.0).view(-1, 1, 1, 1)
        return base * torch.ones(x.shape[0], 8, 1, 1)

    net.num_classes = 5
    x = torch.zeros(2, 4, 1, 1)
    out = ddpm.guided_output(net, x, torch.zeros(2), torch.tensor([0, 1]), 1.5, True, 3, 5)
    # 1 + 1.5 (3 - 1) = 4 on the guided channels, 3 elsewhere
    assert out[0, :, 0, 0].tolist() == [4, 4, 4, 3, 3, 3, 3, 3]
    out = ddpm.guided_output(net, x, torch.zeros(2), torch.tensor([0, 1]), 1.5, True, None, 5)
    assert out[0, :4, 0, 0].tolist() == [4, 4, 4, 4]


def test_guidance_interval_counts_original_steps():
    calls = []

    def net(x, t, y):
        calls.append((float(t[0]), x.shape[0]))
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    net.num_classes = 3
    ddpm.sample(net, torch.zeros(2, 4, 1, 1), torch.tensor([0, 1]), num_steps=10, cfg_scale=2.0,
                guidance_low=0.0, guidance_high=0.5)
    doubled = {t for t, n in calls if n == 4}
    assert doubled and all(t / 1000 <= 0.5 for t in doubled)
    assert all(n == 2 for t, n in calls if t / 1000 > 0.5)


def tiny_sit(seed=0):
    torch.manual_seed(seed)
    model = SiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
                num_classes=3, learn_sigma=True).eval()
    # a non-zero head (SiT's init zeroes it), small, so that eps_hat varies smoothly
    for p in (model.final_layer.linear.weight, *(b.adaLN_modulation[-1].weight for b in model.blocks)):
        torch.nn.init.normal_(p, std=0.02)
    return model


def test_sit_returns_both_halves_with_sigma():
    model = tiny_sit()
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10.0, 900.0])
    y = torch.tensor([0, 2])
    full = model(x, t, y, sigma=True)
    assert full.shape == (2, 8, 8, 8) and torch.equal(full[:, :4], model(x, t, y))


def test_ddim_is_deterministic_and_invertible():
    model = tiny_sit()
    torch.manual_seed(4)
    z = torch.randn(2, 4, 8, 8)
    y = torch.tensor([0, 1])
    a = ddpm.sample(model, z, y, mode="ddim", num_steps=50)
    # other global RNG state, same result: DDIM with eta = 0 draws nothing
    torch.manual_seed(99)
    assert torch.equal(a, ddpm.sample(model, z, y, mode="ddim", num_steps=50))
    x0 = a
    # the exact inverse (fixed-point iterations on eps_hat) takes x0 back to z, and DDIM takes z to x0
    z_back = ddpm.ddim_invert(model, x0, y, num_steps=50, fixed_point_iters=6)
    assert (z_back - z).abs().max() < 1e-4, (z_back - z).abs().max()
    again = ddpm.sample(model, z_back, y, mode="ddim", num_steps=50)
    assert (again - x0).abs().max() < 1e-4, (again - x0).abs().max()
    # plain DDIM inversion (eps at the previous state) is close, not exact
    z0 = ddpm.ddim_invert(model, x0, y, num_steps=50)
    assert (z0 - z).abs().max() < 5e-2


# ------------------------------------------------------------------------------------------------------------
# The loss under --process ddpm
# ------------------------------------------------------------------------------------------------------------

def ddpm_pair(seed=0, align_head="ap_head"):
    import copy

    torch.manual_seed(seed)
    m = SiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=4, num_heads=2, num_classes=10,
            learn_sigma=True, align_head=align_head)
    for p in (m.final_layer.linear.weight, *(b.adaLN_modulation[-1].weight for b in m.blocks)):
        torch.nn.init.normal_(p, std=0.02)
    return m, copy.deepcopy(m).requires_grad_(False)


def ddpm_loss(ema=None, **kw):
    from loss import LossConfig, TrainingLoss

    settings = dict(process="ddpm", align_target="ema" if ema is not None else "none", block_out_s=2,
                    block_out_t=4, mask_ratio=(0.0,))
    return TrainingLoss(LossConfig(**{**settings, **kw}), num_tokens=16, grid=4, patch=2, num_classes=10,
                        ema=ema)


def test_ddpm_loss_is_dits_hybrid_loss():
    """One group, no alignment: the loss equals L_simple + L_vlb written out here from the same draws (eps,
    label dropout, t ~ U{0..999}), the posterior from Bayes' rule and the learned-range variance."""
    model, _ = ddpm_pair(align_head=None)
    loss = ddpm_loss()
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    y = torch.arange(6)
    torch.manual_seed(5)
    per_sample, logs = loss(model, x0, y)
    torch.manual_seed(5)
    eps = torch.randn_like(x0)
    drop = torch.rand(6) < 0.1
    t = torch.randint(0, 1000, (6, 1))[:, 0]
    y_in = y.masked_fill(drop, 10)
    betas = ddpm.linear_betas().tolist()
    acp = naive_alphas_cumprod(betas)
    want = []
    for n in range(6):
        s = int(t[n])
        a = acp[s]
        xt = math.sqrt(a) * x0[n:n + 1] + math.sqrt(1 - a) * eps[n:n + 1]
        out = model(xt, t[n:n + 1].float(), y_in[n:n + 1], sigma=True).detach().double()
        eps_hat, v = out[:, :1], out[:, 1:]
        mse = float((eps_hat - eps[n:n + 1].double()).pow(2).mean())
        prev = acp[s - 1] if s > 0 else 1.0
        post_var = betas[s] * (1 - prev) / (1 - a)
        post_var_1 = betas[1] * (1 - acp[0]) / (1 - acp[1])
        log_post = math.log(post_var if s > 0 else post_var_1)
        log_var = (v + 1) / 2 * math.log(betas[s]) + (1 - v) / 2 * log_post
        x0_hat = (xt.double() - math.sqrt(1 - a) * eps_hat) / math.sqrt(a)

        def posterior_mean(x_start):
            # Bayes: precisions add; at t = 0 the posterior is x0 itself
            if s == 0:
                return x_start
            precision = 1 / (1 - prev) + (1 - betas[s]) / betas[s]
            weighted = math.sqrt(prev) * x_start / (1 - prev) \
                + math.sqrt(1 - betas[s]) * xt.double() / betas[s]
            return weighted / precision
        mean = posterior_mean(x0_hat)
        if s > 0:
            true_mean = posterior_mean(x0[n:n + 1].double())
            kl = 0.5 * (-1 + log_var - log_post + math.exp(log_post) / log_var.exp()
                        + (true_mean - mean) ** 2 / log_var.exp())
            vb = float(kl.mean()) / math.log(2)
        else:
            nll = ddpm.discretized_gaussian_nll(x0[n:n + 1].double(), mean, 0.5 * log_var)
            vb = float(nll.mean()) / math.log(2)
        want.append(mse + vb)
    assert torch.allclose(per_sample.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert set(logs) == {"loss_gen", "loss_mse", "loss_vb"}


def test_ddpm_with_dts_as_and_the_sra_teacher():
    """DTS + AS + the EMA teacher under DDPM: integer steps per group, the teacher at clamp(t - U{0..199}, 1,
    999) on the student's groups, gradients everywhere the flow loss has them."""
    model, ema = ddpm_pair()
    calls = []
    real = ema.forward_features

    def spy(x, t, y, layer, groups=None):
        calls.append(t.clone())
        return real(x, t, y, layer=layer, groups=groups)

    ema.forward_features = spy
    loss = ddpm_loss(ema, mask_ratio=(0.25,), dual_time_scheduling=True, attention_separation=True)
    assert loss.teacher_mask
    torch.manual_seed(0)
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    t_drawn, _ = loss.draw_timesteps(8, torch.device("cpu"))
    assert t_drawn.dtype == torch.long and t_drawn.shape == (8, 2) and 0 <= int(t_drawn.min())
    assert int(t_drawn.max()) <= 999
    torch.manual_seed(1)
    per_sample, logs = loss(model, x0, torch.arange(8))
    assert per_sample.shape == (8,) and torch.isfinite(per_sample).all() and "loss_align" in logs
    per_sample.mean().backward()
    assert model.ap_head.linear1.weight.grad.abs().max() > 0
    assert model.final_layer.linear.weight.grad.abs().max() > 0
    # the teacher's steps: integers in [1, 999], one per group
    s = calls[0]
    assert s.shape == (8, 2) and torch.equal(s, s.round()) and 1 <= float(s.min()) and float(s.max()) <= 999


def test_ddpm_teacher_offsets():
    from loss import Draw, EMATeacher, LossConfig

    seen = {}

    class Ema:
        def forward_features(self, x, t, y, layer, groups=None):
            seen["t"] = t
            return torch.zeros(x.shape[0], 16, 4)

    cfg = LossConfig(process="ddpm", align_target="ema", t_max=0.2)
    teacher = EMATeacher(Ema(), cfg, teacher_mask=False)
    t = torch.tensor([[0], [1], [5], [500], [999]]).repeat(400, 1)
    d = Draw(x0=torch.zeros(2000, 1, 8, 8), eps=torch.zeros(2000, 1, 8, 8), t=t, y=torch.zeros(2000).long(),
             y_dropped=torch.zeros(2000).long(), grid=4, patch=2, diffusion=ddpm.GaussianDiffusion.dit())
    teacher(d)
    s = seen["t"].long()
    offset = t[:, 0] - s
    assert int(s.min()) >= 1 and int(s.max()) <= 999
    big = t[:, 0] == 500
    # U{0, .., 199}: every offset, none larger
    assert set(offset[big].tolist()) <= set(range(200)) and len(set(offset[big].tolist())) > 150
    assert torch.all(s[t[:, 0] == 0] == 1)


def test_ddpm_refuses_flow_settings():
    from loss import LossConfig, TrainingLoss

    for kw in (dict(path_type="cosine"), dict(weighting="lognormal")):
        with pytest.raises(ValueError, match="flow-matching settings"):
            TrainingLoss(LossConfig(process="ddpm", align_target="none", **kw), num_tokens=16, grid=4,
                         patch=2, num_classes=10)


# ------------------------------------------------------------------------------------------------------------
# train.py under --process ddpm
# ------------------------------------------------------------------------------------------------------------

TINY = ["--preset", "digits", "--data-dir", "digits:8", "--batch-size", "16", "--log-every", "2",
        "--sample-steps", "0", "--eval-samples", "0", "--num-workers", "0", "--mixed-precision", "no",
        "--block-out-s", "1", "--block-out-t", "2"]


def test_train_ddpm_digits_with_previews_and_metric(tmp_path, monkeypatch):
    """The digits preset (SRA + DTS + AS) under DDPM: a learned-sigma model, DiT's loss terms in the log, the
    process in the checkpoint, previews and the embedded metric drawn with DDPM's sampler."""
    import json
    import os

    import samplers
    import train

    seen, real = [], samplers.sample_images
    monkeypatch.setattr(samplers, "sample_images", lambda *a, **k: (seen.append(dict(k)), real(*a, **k))[1])
    train.main(TINY + ["--output-dir", str(tmp_path), "--exp-name", "d", "--process", "ddpm",
                       "--max-train-steps", "2", "--sample-steps", "2", "--eval-samples", "4",
                       "--preview-num-steps", "3"])
    run = os.path.join(tmp_path, "d")
    ckpt = torch.load(f"{run}/checkpoints/0000002.pt", map_location="cpu", weights_only=True)
    assert ckpt["args"]["process"] == "ddpm"
    # 2C output channels: eps and the variance
    assert ckpt["ema"]["final_layer.linear.weight"].shape[0] == 4 * 4 * 2
    row = json.loads(open(f"{run}/metrics.jsonl").read().splitlines()[-1])
    assert {"loss_gen", "loss_mse", "loss_vb", "loss_align"} <= set(row)
    assert [(k["process"], k["mode"], k["num_steps"]) for k in seen] == [("ddpm", "ddpm", 3)] * 2
    assert json.load(open(f"{run}/eval_digits.json"))["sampler"] == "ddpm-3"


@pytest.mark.parametrize("argv,message", [
    (["--model", "DiT-B/2", "--process", "flow"], "--model DiT-B/2 is DiT"),
    (["--process", "ddpm", "--path-type", "cosine"], "flow-matching settings"),
    (["--process", "ddpm", "--init-ckpt", "x.pt"], "--init-ckpt with --process ddpm"),
    (["--process", "ddpm", "--preview-num-steps", "2000"], "--preview-num-steps 2000"),
])
def test_train_refuses_what_ddpm_cannot_take(tmp_path, argv, message, capsys):
    import train

    with pytest.raises(SystemExit) as e:
        train.main(TINY + ["--output-dir", str(tmp_path), "--max-train-steps", "1", *argv])
    assert message in str(e.value) + capsys.readouterr().err


def test_dit_names_and_presets_resolve():
    import presets
    import train

    notes = []
    args = train.parse_args(["--model", "DiT-XL/2"], notes)
    assert (args.model, args.process, args.exp_name) == ("SiT-XL/2", "ddpm", "DiT-XL-2")
    assert any("DiT-XL/2 -> --model SiT-XL/2 --process ddpm" in n for n in notes)
    dit = train.parse_args(["--preset", "dit-xl2"])
    assert (dit.process, dit.align_target, dit.max_train_steps, dit.mixed_precision) == \
        ("ddpm", "none", 7_000_000, "no") and dit.max_grad_norm == float("inf")
    sra = train.parse_args(["--preset", "dit-sra-xl2"])
    assert (sra.process, sra.align_target, sra.block_out_s, sra.block_out_t, sra.t_max, sra.loss_type,
            sra.align_weight_schedule) == ("ddpm", "ema", 8, 16, 0.2, "sml1", "sra-256")
    assert {"dit-b2", "dit-xl2", "dit-sra-xl2"} <= set(presets.PRESETS)


# ------------------------------------------------------------------------------------------------------------
# sample_ddp.py: DiT's files and flags, on tiny stand-ins with DiT's key layout
# ------------------------------------------------------------------------------------------------------------

def dit_standin(seed=0):
    """A DiT-layout state dict at a tiny width: pos_embed included, learned sigma (2C outputs), the label
    table with its null row; random non-zero weights."""
    torch.manual_seed(seed)
    from models import SiT_models

    m = SiT_models["SiT-N/2"](input_size=8, in_channels=3, num_classes=10, learn_sigma=True)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = m.state_dict()
    assert "pos_embed" in sd and sd["final_layer.linear.weight"].shape[0] == 2 * 2 * 6
    assert sd["y_embedder.embedding_table.weight"].shape[0] == 11
    return sd


def sample_args(ckpt, out, *extra):
    return ["--ckpt", ckpt, "--num-fid-samples", "3", "--per-proc-batch-size", "2", "--sample-dir", str(out),
            "--global-seed", "5", "--no-progress", "--vae", "none", *extra]


def test_sample_ddp_bare_dit_state_dict(tmp_path):
    import os

    import sample_ddp
    import samplers
    from models import CheckpointError, load_checkpoint

    path = str(tmp_path / "DiT-N-2-8x8.pt")
    torch.save(dit_standin(), path)
    # a bare state dict says nothing: flow needs a time convention, DDPM is asked for
    with pytest.raises(CheckpointError, match="--time-convention"):
        sample_ddp.main(sample_args(path, tmp_path / "s"))
    npz = sample_ddp.main(sample_args(path, tmp_path / "s", "--process", "ddpm", "--num-sampling-steps", "3",
                                      "--cfg-scale", "1.5"))
    folder = os.path.basename(os.path.dirname(npz))
    assert "-ddpm3-" in folder and folder.endswith("-ddpm-qrelease") and "-chall-" in folder
    with np.load(npz) as z:
        arr, labels = z["arr_0"], z["labels"]
    # the images are ddpm.sample's with per-image generators, DiT's CFG on 3 channels (all of these 3)
    model, info = load_checkpoint(path, process="ddpm")
    assert info["process"] == "ddpm" and info["time_convention"] == "ddpm"
    want = samplers.sample_images(model, [5, 6, 7], labels, "cpu", process="ddpm", mode="ddpm", num_steps=3,
                                  cfg_scale=1.5, cfg_channels=3)
    assert np.array_equal(arr, want) and arr.std() > 5
    # DiT's name on the command line says DDPM too; flow samplers and paths are refused
    npz2 = sample_ddp.main(sample_args(path, tmp_path / "t", "--model", "DiT-N/2", "--num-sampling-steps",
                                       "3", "--cfg-scale", "1.5"))
    with np.load(npz2) as z:
        assert np.array_equal(z["arr_0"], arr)
    with pytest.raises(ValueError, match="--num-steps 1001: DiT's process has 1000 steps"):
        sample_ddp.main(sample_args(path, tmp_path / "u", "--process", "ddpm", "--num-steps", "1001"))
    for bad in (["--mode", "sde"], ["--path-type", "linear"]):
        with pytest.raises(SystemExit):
            sample_ddp.main(sample_args(path, tmp_path / "u", "--process", "ddpm", *bad))


def test_sample_ddp_ddim_is_deterministic(tmp_path):
    import sample_ddp

    path = str(tmp_path / "dit.pt")
    torch.save(dit_standin(1), path)
    a = sample_ddp.main(sample_args(path, tmp_path / "a", "--process", "ddpm", "--mode", "ddim",
                                    "--num-steps", "4"))
    b = sample_ddp.main(sample_args(path, tmp_path / "b", "--process", "ddpm", "--mode", "ddim",
                                    "--num-steps", "4", "--per-proc-batch-size", "3"))
    with np.load(a) as za, np.load(b) as zb:
        assert np.array_equal(za["arr_0"], zb["arr_0"])
    assert "-ddim4-" in a


def test_release_dit_sra_training_file_says_ddpm(tmp_path):
    """The release's DiT-SRA files: {model, ema, opt, args} with args.model = 'DiT-XL/2' (a Namespace); here
    at the stand-in width, DiT-N/2."""
    import argparse

    import sample_ddp
    from models import CheckpointError, load_checkpoint

    path = str(tmp_path / "0050000.pt")
    args = argparse.Namespace(model="DiT-N/2", block_out_s=8, block_out_t=16, t_max=0.2, image_size=64,
                              num_classes=10)
    sd = dit_standin(2)
    torch.save({"model": sd, "ema": sd, "opt": {}, "args": args}, path)
    model, info = load_checkpoint(path)
    assert (info["process"], info["model"], info["source"]) == ("ddpm", "SiT-N/2", "sra")
    with pytest.raises(CheckpointError, match="holds a ddpm model but --process is flow"):
        load_checkpoint(path, process="flow")
    npz = sample_ddp.main(sample_args(path, tmp_path / "s", "--num-steps", "2"))
    assert "-ddpm2-" in npz
    # the file says DDPM: a flow sampler or path is refused once it is read
    with pytest.raises(ValueError, match="--mode sde: .* holds a ddpm model"):
        sample_ddp.main(sample_args(path, tmp_path / "u", "--mode", "sde"))
    with pytest.raises(ValueError, match="--path-type"):
        sample_ddp.main(sample_args(path, tmp_path / "u", "--path-type", "linear"))
    # a DDPM file cannot warm-start a flow run
    from models import init_from_checkpoint
    with pytest.raises(CheckpointError, match="DDPM"):
        init_from_checkpoint(model, model, path)


def test_dits_sample_ddp_command_resolves(capsys):
    """DiT's sample_ddp.py command line, replayed through --print-config."""
    import json

    import sample_ddp

    argv = ["--model", "DiT-XL/2", "--vae", "mse", "--sample-dir", "samples", "--per-proc-batch-size", "32",
            "--num-fid-samples", "50000", "--image-size", "256", "--num-classes", "1000", "--cfg-scale",
            "1.5", "--num-sampling-steps", "250", "--global-seed", "0", "--tf32", "--ckpt",
            "DiT-XL-2-256x256.pt"]
    sample_ddp.main(argv + ["--print-config"])
    out = capsys.readouterr()
    cfg = json.loads(out.out)
    want = dict(model="SiT-XL/2", process="ddpm", vae="mse", num_steps=250, resolution=256, num_classes=1000,
                cfg_scale=1.5, per_proc_batch_size=32, tf32=True, num_fid_samples=50000)
    assert {k: cfg[k] for k in want} == want
    assert "--model DiT-XL/2: the SiT-XL/2 network with --process ddpm" in out.err
    assert "--num-sampling-steps 250 -> --num-steps 250" in out.err


def test_release_dit_sra_gen_sh_command_resolves(capsys):
    """The release's DiT-SRA/gen.sh (generate.py under torch.distributed.launch), replayed through
    --print-config: --num-steps 250 are DDPM steps for a DiT-XL/2 model, CFG 1.0 (its default line)."""
    import json

    import sample_ddp

    argv = ["--num-fid-samples", "50000", "--per-proc-batch-size", "64", "--num-steps", "250", "--cfg-scale",
            "1.0", "--sample-dir", "samples", "--model", "DiT-XL/2", "--ckpt", "step-4000000.pt", "--vae",
            "ema", "--resolution", "256", "--global-seed", "0", "--local-rank", "0"]
    sample_ddp.main(argv + ["--print-config"])
    out = capsys.readouterr()
    cfg = json.loads(out.out)
    want = dict(model="SiT-XL/2", process="ddpm", vae="ema", num_steps=250, resolution=256, cfg_scale=1.0,
                per_proc_batch_size=64, num_fid_samples=50000, global_seed=0)
    assert {k: cfg[k] for k in want} == want
    # the sampler comes from the file (DDPM: ancestral); its generate.py rounds as the release does
    assert cfg["mode"] is None and cfg["quantize"] == "release"


def test_dit_sra_preset_runs_on_digits(tmp_path):
    """The whole DiT-SRA path (DDPM, one token group, the teacher at clamp(t - U{0..199}, 1, 999), smooth-L1
    with the SRA lambda schedule) for two steps on the digits, at a CPU width."""
    import json
    import os

    import train

    train.main(["--preset", "dit-sra-xl2", "--model", "DiT-N/4", "--data-dir", "digits:8",
                "--batch-size", "16", "--max-train-steps", "2", "--checkpoint-steps", "2", "--log-every", "1",
                "--sample-steps", "0", "--num-workers", "0", "--block-out-s", "2", "--block-out-t", "4",
                "--output-dir", str(tmp_path), "--exp-name", "dit-sra"])
    run = os.path.join(tmp_path, "dit-sra")
    rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    assert len(rows) == 2 and all({"loss_mse", "loss_vb", "loss_align"} <= set(r) for r in rows)
    args = json.load(open(f"{run}/args.json"))
    assert (args["model"], args["process"], args["loss_type"], args["t_max"]) == \
        ("SiT-N/4", "ddpm", "sml1", 0.2)
    # sampled as the CPU study samples it: a 1-channel pixel model is guided on its one channel
    import sample_ddp
    npz = sample_ddp.main(sample_args(f"{run}/checkpoints/0000002.pt", tmp_path / "s", "--num-steps", "2"))
    assert "-ddpm2-" in npz and "-chall-" in npz


def test_the_ddpm_step_compiles_as_one_graph_and_equals_eager(monkeypatch):
    """--compile-scope step under DDPM (DTS + AS + full rows + the EMA teacher): one graph (fullgraph), no
    recompile over new draws, the eager losses and gradients (the eager RNG inside the graph)."""
    import train
    from loss import LossConfig, TrainingLoss
    from models import SiT_models

    torch.manual_seed(0)
    model = SiT_models["SiT-T/2"](input_size=8, in_channels=4, num_classes=10, align_head="ap_head",
                                  learn_sigma=True)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    ema = train.build_ema(model)
    cfg = LossConfig(process="ddpm", align_target="ema", block_out_s=2, block_out_t=4, mask_ratio=[0.5],
                     dual_time_scheduling=True, attention_separation=True, full_sample_prob=0.25)
    eager, compiled = (TrainingLoss(cfg, num_tokens=16, grid=4, patch=2, num_classes=10, ema=ema)
                       for _ in range(2))
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    torch._dynamo.reset()
    train.compile_step("step", model, ema, compiled, fullgraph=True)
    compiled(model, torch.randn(8, 4, 8, 8), torch.randint(0, 10, (8,)))
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    for seed in range(1, 4):
        got = []
        for fn in (eager, compiled):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(seed)
            loss, _ = fn(model, torch.randn(8, 4, 8, 8), torch.randint(0, 10, (8,)))
            loss.mean().backward()
            got.append((loss.detach(), model.final_layer.linear.weight.grad.clone()))
        assert (got[0][0] - got[1][0]).abs().max() < 1e-5 and (got[0][1] - got[1][1]).abs().max() < 1e-5
