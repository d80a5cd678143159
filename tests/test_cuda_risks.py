"""What would fail or go wrong on a GPU, checked on the CPU: the dtypes CUDA autocast produces, resuming on a
machine with fewer GPUs, DDP's unused-parameter and gradient-bucket settings."""
from types import SimpleNamespace

import pytest
import torch

import train
from infra import runlog
from loss import REPATarget
from models.attention import separated_attention
from models.groups import SegmentLayout
from models.reference import dense_masked_attention
from presets import PRESETS


def test_qk_norm_with_full_rows_under_autocast_mixes_dtypes_without_error():
    """Under CUDA autocast the q / k LayerNorm output stays fp32 while v is bf16; full-image rows and
    separated rows then come out of SDPA in one dtype and are joined by a cat (no index_copy into an fp32
    buffer, which refused the bf16 rows)."""
    torch.manual_seed(0)
    N, T, H, hd = 4, 16, 2, 8
    qkv = torch.randn(N, T, 3, H, hd)
    layout = SegmentLayout.from_perm(torch.rand(N, T).argsort(1), (4, 12), True, num_full=2)

    # the q / k norm output of CUDA autocast: fp32 whatever came in
    def fp32(u):
        return u.float()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = separated_attention(qkv.bfloat16(), layout, fp32, fp32)
    exact = separated_attention(qkv, layout)
    assert mixed.dtype == torch.bfloat16 and mixed.shape == exact.shape
    torch.testing.assert_close(mixed.float(), exact, atol=3e-2, rtol=3e-2)
    # the dense masked reference agrees in fp32 (raster order, full rows one group)
    ids = torch.zeros(N, T, dtype=torch.long)
    ids[2:] = (layout.perm[2:].argsort(1) >= 4).long()
    q, k, v = (layout.to_raster(qkv[:, :, i].reshape(N, T, H * hd)).view(N, T, H, hd).transpose(1, 2)
               for i in range(3))
    want = dense_masked_attention(q, k, v, ids).transpose(1, 2)
    torch.testing.assert_close(layout.to_raster(exact.reshape(N, T, H * hd)).view(N, T, H, hd), want,
                               atol=1e-5, rtol=1e-5)


def test_resume_on_a_machine_with_fewer_gpus_drops_the_missing_states(monkeypatch):
    state = runlog.rng_state()
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.__setitem__(device, s))
    note = runlog.set_rng_state(state)
    assert sorted(restored) == [0, 1] and torch.equal(restored[1], state["cuda"][1])
    assert "8 devices, this machine has 2" in note and "devices 2..7 are dropped" in note
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert runlog.set_rng_state(state) == "" and sorted(restored) == list(range(8))


@pytest.mark.parametrize("preset", sorted(p for p in PRESETS if p.endswith("-b2")))
def test_no_parameter_is_unused_in_any_preset(preset):
    """DDP (find_unused_parameters=False) needs every trainable tensor in the graph of every step: the heads
    of SRA, REPA and SRA 2 included."""
    args = train.parse_args(["--preset", preset, "--model", "SiT-T/2", "--block-out-s", "2", "--block-out-t",
                             "4", "--data-dir", "/latents"])
    data = SimpleNamespace(latent_size=8, latent_channels=4, num_classes=10, is_latent=True)
    features = None
    target = None
    if args.align_target == "repa":
        target = REPATarget(dim=32)
        features = torch.randn(4, 16, 32)
    elif args.align_target == "sra2":
        target = train.build_target(args, data, torch.device("cpu"))
    torch.manual_seed(0)
    model = train.build_model(args, data, target)
    ema = train.build_ema(model)
    loss_fn = train.build_loss(args, model, data, target, ema)
    loss, _ = loss_fn(model, torch.randn(4, 4, 8, 8), torch.randint(0, 10, (4,)), features=features)
    loss.mean().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"{preset}: {unused}"


def test_the_accelerator_keeps_gradients_in_ddp_buckets_and_waits_as_long_as_asked(tmp_path):
    args = train.parse_args(["--preset", "digits", "--output-dir", str(tmp_path), "--exp-name", "acc",
                             "--dist-timeout-minutes", "7"])
    accelerator, _, _ = train.start_run(args)
    assert accelerator.ddp_handler.gradient_as_bucket_view
    assert accelerator.init_handler.timeout.total_seconds() == 7 * 60
