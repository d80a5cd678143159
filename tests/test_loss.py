"""loss.py: group sizes, timesteps, teacher inputs (METHOD.md section 5), full-image mixing, distances,
flags."""
import copy

import pytest
import torch

from infra.flags import check_teacher_mask
from loss import LossConfig, TrainingLoss, alignment_distance, group_ratios, group_sizes, patch_tokens
from models import SiT_models


class Recorder(torch.nn.Module):
    """Wraps a model; records the inputs of __call__ and forward_features."""

    def __init__(self, model):
        super().__init__()
        self.m = model
        self.calls = []
        self.feature_calls = []
        self.hidden_size, self.depth = model.hidden_size, model.depth

    def forward(self, x, t, y, **kw):
        groups = kw.get("groups")
        self.calls.append(dict(x=x.clone(), t=t.clone(), y=y.clone(),
                               separate=groups is not None and groups.separate, **kw))
        return self.m(x, t, y, **kw)

    def forward_features(self, x, t, y, layer, groups=None):
        self.feature_calls.append(dict(x=x.clone(), t=t.clone(), y=y.clone(), layer=layer, groups=groups,
                                       separate=groups is not None and groups.separate))
        return self.m.forward_features(x, t, y, layer=layer, groups=groups)


def tiny_pair(seed=0):
    torch.manual_seed(seed)
    m = SiT_models["SiT-T/2"](input_size=8, in_channels=1, num_classes=10, align_head="ap_head")
    return Recorder(m), Recorder(copy.deepcopy(m).requires_grad_(False))


def make_loss(ema=None, use_alignment_loss=True, teacher_mask=None, **kw):
    """The loss on 4 x 4 tokens, aligned to the EMA teacher's block 4 from block 2 (or no alignment).
    ema: the teacher's model (a placeholder for losses that are only built); teacher_mask: the release's
    flag, checked against the value the loss derives."""
    settings = dict(align_target="ema" if use_alignment_loss else "none", block_out_s=2, block_out_t=4)
    cfg = LossConfig(**{**settings, **kw})
    if teacher_mask is not None:
        check_teacher_mask(teacher_mask, cfg.align_target, cfg.teacher_t, cfg.mask_ratio)
    return TrainingLoss(cfg, num_tokens=16, grid=4, patch=2, num_classes=10,
                        ema=torch.nn.Module() if ema is None else ema)


def per_token(img, patch=2):
    """(N, 1, 8, 8) -> (N, 16): the value of each patch (constant per patch)."""
    return patch_tokens(img, patch).mean(-1)


def test_group_sizes_and_ratios():
    assert (group_ratios([0.25]) == [0.25, 0.75] and group_ratios([0.0]) == [1.0]
            and group_ratios([1.0]) == [1.0])
    assert group_sizes(group_ratios([0.25]), 256) == (64, 192)
    assert group_sizes(group_ratios([0.3]), 256) == (77, 179)
    assert group_sizes(group_ratios([0.5, 0.3, 0.2]), 256) == (128, 77, 51)
    assert group_sizes(group_ratios([0.35]), 1024) == (358, 666)


def test_groups_exact_random_subsets_and_timesteps():
    student, ema = tiny_pair()
    fn = make_loss(ema=ema, mask_ratio=[0.25], dual_time_scheduling=True, attention_separation=True,
                   teacher_mask=True)
    torch.manual_seed(1)
    counts = torch.zeros(16)
    for _ in range(50):
        fn(student, torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
        call = student.calls[-1]
        layout, t = call["groups"], call["t"]
        rank_group = torch.tensor([0] * 4 + [1] * 12).expand(8, -1)
        ids = torch.empty_like(layout.perm).scatter_(1, layout.perm, rank_group)
        # exact sizes for every sample
        assert (ids == 0).sum(1).tolist() == [4] * 8
        counts += (ids == 0).float().sum(0)
        assert t.shape == (8, 2) and call["separate"]
        # every token of group k carries t_k: x_t = (1 - t) x0 + t eps is checked in the teacher test
    freq = counts / (50 * 8)
    # membership is uniform over positions
    assert (freq - 0.25).abs().max() < 0.12
    ts = torch.cat([c["t"] for c in student.calls])
    # DTS: independent timesteps per group
    assert (ts[:, 0] != ts[:, 1]).all()
    # unsorted (the release)
    assert 0.35 < (ts[:, 0] > ts[:, 1]).float().mean() < 0.65


def test_single_timestep_sorted_and_full_rows():
    student, ema = tiny_pair()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    make_loss(ema=ema, mask_ratio=[0.25], attention_separation=True, teacher_mask=True)(student, x, y)
    t = student.calls[-1]["t"]
    # AS as augmentation: one timestep (Table 2)
    assert torch.equal(t[:, 0], t[:, 1])
    make_loss(ema=ema, mask_ratio=[0.25], dual_time_scheduling=True, sorted_timesteps=True,
              attention_separation=True, teacher_mask=True)(student, x, y)
    t = student.calls[-1]["t"]
    # Eq. 5: t_hi on the masked group
    assert (t[:, 0] >= t[:, 1]).all()
    make_loss(ema=ema, mask_ratio=[0.5], dual_time_scheduling=True, attention_separation=True,
              teacher_mask=True, full_sample_prob=0.25)(student, x, y)
    call = student.calls[-1]
    t, layout = call["t"], call["groups"]
    # exactly round(0.25 * 8) plain rows
    assert layout.num_full == 2
    assert torch.equal(t[:2, 0], t[:2, 1]) and (t[2:, 0] != t[2:, 1]).all()
    s = ema.feature_calls[-1]["t"]
    # ... and their teacher keeps one timestep
    assert torch.equal(s[:2, 0], s[:2, 1])


def test_sorted_timesteps_leave_full_rows_unbiased():
    """--sorted-timesteps with --full-sample-prob: a full row is a plain sample, its t ~ U(0, 1) (mean 1/2),
    not the smaller of the two sorted draws (mean 1/3). 100K full rows: the mean's standard error is
    0.29 / sqrt(1e5)."""
    fn = make_loss(mask_ratio=[0.5], dual_time_scheduling=True, sorted_timesteps=True,
                   attention_separation=True, teacher_mask=True, full_sample_prob=0.25)
    torch.manual_seed(0)
    t, num_full = fn.draw_timesteps(400_000, torch.device("cpu"))
    assert num_full == 100_000 and torch.equal(t[:num_full, 0], t[:num_full, 1])
    full, rest = t[:num_full, 0], t[num_full:]
    assert abs(full.mean().item() - 0.5) < 0.005, full.mean()
    # uniform, not a min of two
    assert abs(full.var().item() - 1 / 12) < 0.002
    # the DTS rows stay sorted (Eq. 5)
    assert (rest[:, 0] >= rest[:, 1]).all()
    assert abs(rest[:, 0].mean().item() - 2 / 3) < 0.005 and abs(rest[:, 1].mean().item() - 1 / 3) < 0.005


@pytest.mark.parametrize("strategy", ["sra", "self_flow", "same"])
def test_teacher_inputs_follow_the_table(strategy):
    student, ema = tiny_pair()
    torch.manual_seed(3)
    x0, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    mask = strategy != "self_flow"
    fn = make_loss(ema=ema, mask_ratio=[0.25], dual_time_scheduling=True, attention_separation=True,
                   teacher_t=strategy, teacher_mask=mask, class_dropout_prob=0.5)
    fn(student, x0, y)
    sc, tc = student.calls[-1], ema.feature_calls[-1]
    layout, t = sc["groups"], sc["t"]
    rank_group = torch.tensor([0] * 4 + [1] * 12).expand(6, -1)
    ids = torch.empty_like(layout.perm).scatter_(1, layout.perm, rank_group)
    tau = t.gather(1, ids)                                              # (N, T) student time per token
    eps_tok = (per_token(sc["x"] - (1 - torch.repeat_interleave(torch.repeat_interleave(
        # recover eps per token (patch means)
        tau.view(6, 1, 4, 4), 2, 2), 2, 3)) * x0)) / tau
    # clean labels (release default)
    assert tc["layer"] == 4 and torch.equal(tc["y"], y)
    if strategy == "same":
        assert torch.equal(tc["x"], sc["x"]) and torch.equal(tc["t"], t) and tc["separate"]
        return
    if strategy == "self_flow":
        # whole image at t_lo, full attention
        s_tok = t.min(1).values[:, None].expand(-1, 16)
        assert tc["groups"] is None and tc["t"].shape == (6,)
        torch.testing.assert_close(tc["t"], t.min(1).values)
    else:
        # sra: s_g = clamp(t_g - 0.2 U_g, 0, 1)
        s = tc["t"]
        assert s.shape == (6, 2) and (s <= t + 1e-7).all() and (s >= (t - 0.2).clamp(min=0) - 1e-7).all()
        assert tc["groups"] is layout and tc["separate"]
        s_tok = s.gather(1, ids)
    s_img = torch.repeat_interleave(torch.repeat_interleave(s_tok.reshape(6, 1, 4, 4), 2, 2), 2, 3)
    want = per_token((1 - s_img) * x0) + s_tok * eps_tok
    torch.testing.assert_close(per_token(tc["x"]), want, atol=1e-4, rtol=1e-4)


def test_teacher_sees_dropped_labels_when_asked():
    student, ema = tiny_pair()
    fn = make_loss(ema=ema, mask_ratio=[0.0], class_dropout_prob=1.0, teacher_labels="dropped")
    fn(student, torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4]))
    assert (student.calls[-1]["y"] == 10).all() and (ema.feature_calls[-1]["y"] == 10).all()
    s, t = ema.feature_calls[-1]["t"], student.calls[-1]["t"]
    # plain SRA: one less-noisy timestep
    assert s.shape == (4,) and (s <= t).all()


def test_denoising_loss_is_the_flow_matching_mse():
    """Eq. 2 with a zero-velocity model: L_gen = mean (eps - x0)^2 per sample."""
    class Zero(torch.nn.Module):
        def forward(self, x, t, y, **kw):
            self.x, self.t = x, t
            return torch.zeros_like(x)

    m, fn = Zero(), make_loss(use_alignment_loss=False)
    x0 = torch.randn(3, 1, 8, 8)
    loss, logs = fn(m, x0, torch.tensor([0, 1, 2]))
    t = m.t[:, None, None, None]
    eps = (m.x - (1 - t) * x0) / t
    torch.testing.assert_close(loss, (eps - x0).pow(2).mean((1, 2, 3)))
    assert set(logs) == {"loss_gen"}


def test_alignment_distances_by_hand():
    torch.manual_seed(0)
    a, b = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    tok = torch.stack([torch.stack([1 - a[n, i] @ b[n, i] / (a[n, i].norm() * b[n, i].norm())
                                    for i in range(5)]).mean() for n in range(2)])
    ch = torch.stack([torch.stack([1 - a[n, :, d] @ b[n, :, d] / (a[n, :, d].norm() * b[n, :, d].norm())
                                   for d in range(3)]).mean() for n in range(2)])
    torch.testing.assert_close(alignment_distance(a, b, "cos-token"), tok)
    torch.testing.assert_close(alignment_distance(a, b, "cos-channel"), ch)
    diff = (a - b).abs()
    sml1 = torch.where(diff < 0.05, 0.5 * diff ** 2 / 0.05, diff - 0.025).mean((1, 2))
    torch.testing.assert_close(alignment_distance(a, b, "sml1"), sml1)
    torch.testing.assert_close(alignment_distance(a, b, "l1"), diff.mean((1, 2)))
    torch.testing.assert_close(alignment_distance(a, b, "l2"), diff.pow(2).mean((1, 2)))
    assert alignment_distance(a.bfloat16(), b.bfloat16(), "cos-token").dtype == torch.float32


def test_total_loss_and_gradients_reach_only_the_student():
    student, ema = tiny_pair()
    for p in ema.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        for p in student.m.blocks.parameters():
            p.normal_(0, 0.05)
    fn = make_loss(ema=ema, mask_ratio=[0.25], dual_time_scheduling=True, attention_separation=True,
                   teacher_mask=True, align_weight=0.5)
    loss, logs = fn(student, torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    torch.testing.assert_close(loss.mean(), logs["loss_gen"] + 0.5 * logs["loss_align"])
    loss.mean().backward()
    assert student.m.ap_head.linear1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kw,flag", [
    (dict(mask_ratio=[0.0], teacher_mask=True), "--teacher-mask"),
    (dict(mask_ratio=[0.0], attention_separation=True), "--attention-separation"),
    (dict(mask_ratio=[0.25], teacher_t="self_flow", teacher_mask=True), "--teacher-mask does not apply"),
    (dict(mask_ratio=[0.25], teacher_t="sra", teacher_mask=False), "add --teacher-mask"),
    (dict(mask_ratio=[0.5, 0.3, 0.2], full_sample_prob=0.2, attention_separation=True, teacher_mask=True),
     "exactly two groups"),
    (dict(loss_type="cos"), "--loss-type"),
    (dict(full_sample_prob=1.5, mask_ratio=[0.25]), "--full-sample-prob must lie in"),
])
def test_invalid_combinations_name_the_flags(kw, flag):
    with pytest.raises(ValueError, match=flag):
        make_loss(**kw)


@pytest.mark.parametrize("kw", [
    dict(mask_ratio=[0.25], dual_time_scheduling=True, attention_separation=True, teacher_mask=True),
    dict(mask_ratio=[0.5], dual_time_scheduling=True, attention_separation=True, teacher_mask=True,
         full_sample_prob=0.25),
    dict(mask_ratio=[0.25], dual_time_scheduling=True, teacher_t="self_flow"),
])
def test_training_step_reads_nothing_back_to_the_host(kw, monkeypatch):
    """No .item() / .tolist() / bool(tensor) / .cpu() / torch.tensor(host data) in the loss, backward,
    clipping and EMA update: on a GPU each of these would stall the launch queue once per step."""
    student, ema = tiny_pair()
    fn = make_loss(ema=ema, **kw)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    # warm caches (the group table moves once)
    fn(student, x, y)

    def forbidden(name):
        def f(self, *a, **k):
            raise AssertionError(f"host sync: Tensor.{name} called in the training step")
        return f
    for name in ("item", "tolist", "__bool__", "cpu", "numpy", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden(name))
    # a tensor made from host data is a synchronous copy to the GPU
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: forbidden("torch.tensor")(None))
    loss, logs = fn(student, x, y)
    loss.mean().backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    torch._foreach_lerp_(list(ema.parameters()), list(student.parameters()), 1e-4)
    monkeypatch.undo()
    assert set(logs) == {"loss_gen", "loss_align"}


def test_align_weight_schedule_closed_form():
    """The original SRA's lambda: 0.2 up to epoch 149, then 2 * 0.1 ** ((e - 149) / 1000 + 1) (99 / 800 at
    512)."""
    from loss import align_weight_at
    for e in (0, 1, 100, 149, 150, 151, 400, 800, 1149):
        want_256 = 0.2 if e <= 149 else 2 * 0.1 ** ((e - 149) / 1000 + 1)
        want_512 = 0.2 if e <= 99 else 2 * 0.1 ** ((e - 99) / 800 + 1)
        assert align_weight_at("sra-256", 0.2, e) == pytest.approx(want_256, rel=1e-12)
        assert align_weight_at("sra-512", 0.2, e) == pytest.approx(want_512, rel=1e-12)
        assert align_weight_at("constant", 0.5, e) == 0.5
    # where SRA's 800 epochs end
    assert align_weight_at("sra-256", 0.2, 800) == pytest.approx(0.04467, abs=1e-5)
    assert align_weight_at("sra-256", 0.2, 1149) == pytest.approx(0.02, rel=1e-12)
    with pytest.raises(ValueError, match="--align-weight-schedule must be one of"):
        align_weight_at("exponential", 0.2, 0)


def test_schedule_weights_the_alignment_term_and_t_max():
    student, ema = tiny_pair()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    out = {}
    for name, kw, epoch in (("sched", dict(align_weight=0.2, align_weight_schedule="sra-256"), 400),
                            ("const", dict(align_weight=0.2 * 0.1 ** (251 / 1000)), 0),
                            ("zero", dict(align_weight=0.0), 0)):
        torch.manual_seed(7)
        out[name] = make_loss(ema=ema, loss_type="sml1", **kw)(student, x, y, epoch=epoch)[0]
    torch.testing.assert_close(out["sched"], out["const"])
    # the alignment term is really there
    assert (out["sched"] - out["zero"]).abs().min() > 0
    torch.manual_seed(8)
    # the teacher's offset: s = t - t_max U
    make_loss(ema=ema, t_max=0.0)(student, x, y)
    assert torch.equal(ema.feature_calls[-1]["t"], student.calls[-1]["t"])
    torch.manual_seed(8)
    make_loss(ema=ema, t_max=0.5)(student, x, y)
    s, t = ema.feature_calls[-1]["t"], student.calls[-1]["t"]
    assert ((t - s) >= 0).all() and ((t - s) <= 0.5 + 1e-7).all() and (t - s).max() > 0.2
    with pytest.raises(ValueError, match="--t-max"):
        make_loss(ema=ema, t_max=1.5)
