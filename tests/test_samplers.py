"""samplers.py on analytic flows: Gaussian data, where the exact velocity is known in closed form.

Data x0 ~ N(mu_y, Sigma), eps ~ N(0, I), x_t = alpha_t x0 + sigma_t eps (t = 1 noise): the linear path
(alpha = 1 - t, sigma = t) or the cosine path (alpha = cos(pi t / 2), sigma = sin(pi t / 2)). Then
x_t ~ N(m_t, S_t) with m_t = alpha mu, S_t = alpha^2 Sigma + sigma^2 I, and the exact velocity is
    v(x, t) = E[alpha' x0 + sigma' eps | x_t = x]
            = alpha' mu + (alpha alpha' Sigma + sigma sigma' I) S_t^{-1} (x - m_t)
(linear: (t I - (1 - t) Sigma) S_t^{-1} (x - m_t) - mu), and the exact score is -S_t^{-1} (x - m_t).
Sigma commutes with I, so the ODE solution is x_t = m_t + S_t^{1/2} z: the exact endpoint of the probability
flow from z is mu + Sigma^{1/2} z, which the ODE tests compare against sample by sample.
"""
import math

import pytest
import torch

import samplers

# (C, H, W): a 2-d Gaussian seen as a 2-channel 1x1 image
D_SHAPE = (2, 1, 1)


def spd_sqrt(a):
    w, q = torch.linalg.eigh(a)
    return q @ torch.diag(w.sqrt()) @ q.T


def path(path_type, t):
    """(alpha, sigma, alpha', sigma') written out here, independently of samplers.py."""
    if path_type == "linear":
        return 1 - t, t, -1.0, 1.0
    return math.cos(math.pi * t / 2), math.sin(math.pi * t / 2), -math.pi / 2 * math.sin(math.pi * t / 2), \
        math.pi / 2 * math.cos(math.pi * t / 2)


class GaussianFlow:
    """Exact velocity of the path for x0 ~ N(mu[y], sigma); y == num_classes is the null label."""

    def __init__(self, mu, sigma, path_type="linear"):
        # (K + 1, D), (D, D)
        self.mu, self.sigma = mu.double(), sigma.double()
        self.num_classes = mu.shape[0] - 1
        self.path_type = path_type
        self.calls = []                                                     # (t, batch size, saw null label)

    def marginal(self, tt):
        """(alpha, S_t) of x_t."""
        a, s, _, _ = path(self.path_type, tt)
        return a, a ** 2 * self.sigma + s ** 2 * torch.eye(self.sigma.shape[0], dtype=torch.float64)

    def __call__(self, x, t, y):
        n, d = x.shape[0], self.sigma.shape[0]
        # samplers pass one t per call
        tt = float(t[0])
        assert torch.all(t == t[0])
        self.calls.append((tt, n, bool((y == self.num_classes).any())))
        eye = torch.eye(d, dtype=torch.float64)
        a, s, da, ds = path(self.path_type, tt)
        _, s_t = self.marginal(tt)                                          # (D, D)
        gain = (a * da * self.sigma + s * ds * eye) @ torch.linalg.inv(s_t)  # (D, D)
        mu = self.mu[y]                                                     # (N, D)
        v = (x.reshape(n, d).double() - a * mu) @ gain.T + da * mu
        return v.to(x.dtype).reshape(x.shape)

    def score(self, x, tt, y):
        n, d = x.shape[0], self.sigma.shape[0]
        a, s_t = self.marginal(tt)
        return (-(x.reshape(n, d).double() - a * self.mu[y]) @ torch.linalg.inv(s_t).T).reshape(x.shape)

    def exact_endpoint(self, z, y):
        n, d = z.shape[0], self.sigma.shape[0]
        return (self.mu[y] + z.reshape(n, d).double() @ spd_sqrt(self.sigma).T).reshape(z.shape)


def make_flow(path_type="linear"):
    # classes 0, 1 and the null label 2
    mu = torch.tensor([[1.0, -0.5], [-1.0, 2.0], [0.0, 0.0]])
    sigma = torch.tensor([[1.0, 0.6], [0.6, 0.8]])
    return GaussianFlow(mu, sigma, path_type)


def stats(x):
    x = x.reshape(x.shape[0], -1).double()
    return x.mean(0), torch.cov(x.T)


def test_time_grids_and_nfe():
    g = samplers.ode_time_grid(4)
    assert g.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    s = samplers.sde_time_grid(5)
    assert len(s) == 6 and s[0] == 1.0 and abs(float(s[-2]) - 0.04) < 1e-12 and s[-1] == 0.0
    flow = make_flow()
    z = torch.randn(3, *D_SHAPE)
    y = torch.tensor([0, 1, 0])
    for mode, heun, expected in [("ode", False, 7), ("ode", True, 13), ("sde", False, 7)]:
        flow.calls.clear()
        samplers.sample(flow, z, y, mode=mode, num_steps=7, heun=heun)
        assert len(flow.calls) == expected == samplers.num_function_evals(mode, 7, heun)
        # no CFG: never doubled
        assert all(n == 3 for _, n, _ in flow.calls)
        # t = 0 is never evaluated
        assert min(t for t, _, _ in flow.calls) > 0


@pytest.mark.parametrize("heun", [False, True])
def test_ode_lands_on_target(heun):
    torch.manual_seed(0)
    flow, n = make_flow(), 20000
    y = torch.randint(0, 2, (n,))
    z = torch.randn(n, *D_SHAPE)
    x = samplers.sample(flow, z, y, mode="ode", num_steps=100, heun=heun)
    err = (x.double() - flow.exact_endpoint(z, y)).abs()
    if heun:
        # second order: ~3e-4 at 100 steps
        assert err.max() < 1e-3, err.max()
    else:
        # first order: ~1e-2 at 100 steps
        assert err.mean() < 2e-2, err.mean()
    # per-class mean and covariance
    for k in (0, 1):
        m, c = stats(x[y == k])
        assert (m - flow.mu[k]).abs().max() < 0.04
        assert (c - flow.sigma).abs().max() < 0.06


def test_heun_converges_faster_than_euler():
    torch.manual_seed(1)
    flow, n = make_flow(), 512
    y, z = torch.randint(0, 2, (n,)), torch.randn(n, *D_SHAPE)
    ref = flow.exact_endpoint(z, y)
    err = {}
    for heun in (False, True):
        for steps in (8, 16, 32, 64):
            x = samplers.sample(flow, z, y, mode="ode", num_steps=steps, heun=heun)
            err[heun, steps] = float((x.double() - ref).abs().mean())
    for steps in (8, 16, 32):
        euler_rate = math.log2(err[False, steps] / err[False, 2 * steps])
        heun_rate = math.log2(err[True, steps] / err[True, 2 * steps])
        # first order
        assert 0.7 < euler_rate < 1.3, (steps, euler_rate, err)
        # second order
        assert heun_rate > 1.7, (steps, heun_rate, err)
        assert err[True, steps] < err[False, steps] / 4
    # fewer steps, smaller error
    assert err[True, 16] < err[False, 64]


def test_sde_matches_target_statistics():
    torch.manual_seed(2)
    flow, n = make_flow(), 20000
    y, z = torch.randint(0, 2, (n,)), torch.randn(n, *D_SHAPE)
    x = samplers.sample(flow, z, y, mode="sde", num_steps=100)
    for k in (0, 1):
        m, c = stats(x[y == k])
        assert (m - flow.mu[k]).abs().max() < 0.05, m
        assert (c - flow.sigma).abs().max() < 0.08, c
    # the SDE is stochastic: unlike the ODE it does not map z to the probability-flow endpoint
    assert (x.double() - flow.exact_endpoint(z, y)).abs().mean() > 0.1


@pytest.mark.parametrize("path_type", ["linear", "cosine"])
def test_score_from_velocity_is_the_gaussian_score(path_type):
    torch.manual_seed(3)
    flow = make_flow(path_type)
    x, y = torch.randn(64, *D_SHAPE, dtype=torch.float64) * 2, torch.randint(0, 2, (64,))
    for tt in (0.04, 0.3, 0.5, 0.9, 1.0):
        v = flow(x, torch.full((64,), tt, dtype=torch.float64), y)
        s = samplers.score_from_velocity(v, x, tt, path_type)
        assert torch.allclose(s, flow.score(x, tt, y), atol=1e-9, rtol=1e-9), (path_type, tt)
    # the two paths' scores differ
    if path_type == "cosine":
        v = flow(x, torch.full((64,), 0.5, dtype=torch.float64), y)
        wrong = samplers.score_from_velocity(v, x, 0.5, "linear")
        assert (wrong - flow.score(x, 0.5, y)).abs().max() > 0.1


@pytest.mark.parametrize("heun", [False, True])
def test_cosine_ode_lands_on_target(heun):
    torch.manual_seed(4)
    flow, n = make_flow("cosine"), 2000
    y, z = torch.randint(0, 2, (n,)), torch.randn(n, *D_SHAPE)
    x = samplers.sample(flow, z, y, mode="ode", num_steps=100, heun=heun, path_type="cosine")
    err = (x.double() - flow.exact_endpoint(z, y)).abs()
    assert (err.max() if heun else err.mean()) < (1e-3 if heun else 3e-2), err.max()


def test_cosine_sde_matches_target_statistics_and_needs_its_score():
    """The SDE on a cosine-path model lands on the data with the cosine score, not with the linear one."""
    flow, n = make_flow("cosine"), 20000
    y, z = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(5)), torch.randn(n, *D_SHAPE)
    out = {}
    for score_path in ("cosine", "linear"):
        torch.manual_seed(6)
        out[score_path] = samplers.sample(flow, z, y, mode="sde", num_steps=100, path_type=score_path)
    for k in (0, 1):
        m, c = stats(out["cosine"][y == k])
        assert (m - flow.mu[k]).abs().max() < 0.05, m
        assert (c - flow.sigma).abs().max() < 0.08, c
    errs = [float((stats(out["linear"][y == k])[1] - flow.sigma).abs().max()) for k in (0, 1)]
    # the bug this guards against
    assert max(errs) > 0.3, errs
    with pytest.raises(ValueError, match="path_type"):
        samplers.sample(flow, z[:2], y[:2], path_type="cos")


def test_sde_noise_is_per_image():
    flow = make_flow()
    n = 6
    y, seeds = torch.tensor([0, 1, 0, 1, 1, 0]), [100 + i for i in range(n)]
    gens = samplers.per_image_generators(seeds, "cpu")
    z = samplers.per_image_randn(gens, D_SHAPE, "cpu")
    # 39 draws: 3 blocks
    full = samplers.sample(flow, z, y, mode="sde", num_steps=40, generators=gens)
    # other batch splits and orders: each image uses only its own generator
    parts = []
    for idx in ([4, 1], [0], [5, 3, 2]):
        g = samplers.per_image_generators([seeds[i] for i in idx], "cpu")
        zi = samplers.per_image_randn(g, D_SHAPE, "cpu")
        assert torch.equal(zi, z[idx])
        parts.append((idx, samplers.sample(flow, zi, y[idx], mode="sde", num_steps=40, generators=g)))
    for idx, x in parts:
        assert torch.allclose(x, full[idx], atol=1e-6, rtol=0)
    again = samplers.sample(flow, z, y, mode="sde", num_steps=40,
                            generators=samplers.per_image_generators(seeds, "cpu"))
    assert torch.allclose(again, samplers.sample(flow, z, y, mode="sde", num_steps=40, generators=[
        torch.Generator().manual_seed(s) for s in seeds]))


def test_trajectory_noise_blocks():
    gens = samplers.per_image_generators([7, 8], "cpu")
    noise = samplers.TrajectoryNoise((2, 1, 2, 2), samplers.NOISE_BLOCK + 3, "cpu", gens)
    draws = [noise.next() for _ in range(samplers.NOISE_BLOCK + 3)]
    assert all(d.shape == (2, 1, 2, 2) for d in draws)
    first = torch.randn((samplers.NOISE_BLOCK, 1, 2, 2), generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.stack([d[1] for d in draws[: samplers.NOISE_BLOCK]]), first)
    with pytest.raises(RuntimeError):
        noise.next()


@pytest.mark.parametrize("mode,heun", [("sde", False), ("ode", False), ("ode", True)])
def test_cfg_only_inside_guidance_interval(mode, heun):
    flow = make_flow()
    low = 0.2
    high = 0.7
    z, y = torch.randn(4, *D_SHAPE), torch.tensor([0, 1, 1, 0])
    samplers.sample(flow, z, y, mode=mode, num_steps=20, heun=heun, cfg_scale=2.0, guidance_low=low,
                    guidance_high=high)
    grid = (samplers.sde_time_grid if mode == "sde" else samplers.ode_time_grid)(20).tolist()[:-1]
    inside = [t for t in grid if low <= t <= high]
    assert 0 < len(inside) < len(grid)
    for t, n, saw_null in flow.calls:
        assert saw_null == (n == 8)
    guided_t = {round(t, 6) for t, _, null in flow.calls if null}
    plain_t = {round(t, 6) for t, _, null in flow.calls if not null}
    # the Heun corrector at t_next follows the decision taken at t_cur
    if heun:
        assert {round(t, 6) for t in inside} <= guided_t
        assert all(low - 0.06 <= t <= high for t in guided_t)
    else:
        assert guided_t == {round(t, 6) for t in inside}
        assert plain_t == {round(t, 6) for t in grid if not low <= t <= high}
    # scale 1: guidance never runs
    flow.calls.clear()
    samplers.sample(flow, z, y, mode=mode, num_steps=5, heun=heun, cfg_scale=1.0)
    assert not any(null for _, _, null in flow.calls)


def test_cfg_combination_and_channels():
    class TwoValued:
        num_classes = 10

        # v = 1 conditional, 0 for null
        def __call__(self, x, t, y):
            return (y != 10).float()[:, None, None, None].expand_as(x).clone()

    x, y = torch.zeros(2, 4, 2, 2), torch.tensor([3, 4])
    v = samplers.guided_velocity(TwoValued(), x, 0.5, y, cfg_scale=1.8, use_cfg=True)
    assert torch.allclose(v, torch.full_like(v, 1.8))
    v3 = samplers.guided_velocity(TwoValued(), x, 0.5, y, cfg_scale=1.8, use_cfg=True, cfg_channels=3)
    assert torch.allclose(v3[:, :3], torch.full_like(v3[:, :3], 1.8))
    # channel 3 keeps the conditional value
    assert torch.allclose(v3[:, 3], torch.ones_like(v3[:, 3]))


def test_cfg_on_gaussians_equals_guided_field():
    """With scale w the Euler ODE integrates v_u + w (v_c - v_u); check one step against the formula."""
    flow = make_flow()
    z, y = torch.randn(5, *D_SHAPE), torch.tensor([0, 1, 0, 1, 1])
    x = samplers.sample(flow, z, y, mode="ode", num_steps=1, cfg_scale=3.0)
    t1 = torch.ones(5)
    v_c, v_u = flow(z, t1, y), flow(z, t1, torch.full_like(y, 2))
    assert torch.allclose(x, z - (v_u + 3.0 * (v_c - v_u)), atol=1e-6)


def test_learn_sigma_output_and_bf16():
    class Sigma:
        num_classes = 10

        # velocity 1, then a junk sigma half
        def __call__(self, x, t, y):
            return torch.cat([torch.ones_like(x), 100 + x], dim=1)

    z, y = torch.randn(2, 3, 4, 4), torch.tensor([1, 2])
    x = samplers.sample(Sigma(), z, y, mode="ode", num_steps=4)
    # x0 = x1 - integral of v dt
    assert torch.allclose(x, z - 1, atol=1e-6)
    xb = samplers.sample(Sigma(), z, y, mode="ode", num_steps=4, bf16=True)
    assert xb.dtype == torch.float32 and torch.allclose(xb, x, atol=0.1)
    x32 = samplers.sample(Sigma(), z, y, mode="ode", num_steps=4, state_dtype=torch.float32)
    assert torch.allclose(x32, x, atol=1e-5)


def test_bad_input_errors():
    flow = make_flow()
    z = torch.randn(2, *D_SHAPE)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="mode"):
        samplers.sample(flow, z, y, mode="dopri5")
    with pytest.raises(ValueError, match="heun"):
        samplers.sample(flow, z, y, mode="sde", heun=True)
    with pytest.raises(ValueError, match=r"y must be"):
        samplers.sample(flow, z, torch.tensor([0]))
    with pytest.raises(ValueError, match="guidance_low"):
        samplers.sample(flow, z, y, cfg_scale=2, guidance_low=0.8, guidance_high=0.2)
    with pytest.raises(ValueError, match="cfg_channels"):
        samplers.sample(flow, z, y, cfg_scale=2, cfg_channels=3)
    with pytest.raises(ValueError, match="generators"):
        samplers.sample(flow, z, y, generators=samplers.per_image_generators([1], "cpu"))
    with pytest.raises(ValueError, match="null"):
        samplers.sample(lambda x, t, y: x, z, y, cfg_scale=2.0)
