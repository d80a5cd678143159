"""models/diffusers_io.py: SiT <-> diffusers' DiTTransformer2DModel tensor by tensor (both ways bitwise, the
same velocity), what diffusers cannot express (its time frequencies, qk-norm), and SiTFlowPipeline's images
equal to sample_ddp.py's for the same seeds (SDE and Heun, CFG with an interval and channels, the SD-VAE)."""
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install diffusers): the converter "
                    "and the pipeline need it")

import samplers  # noqa: E402
import sample_ddp  # noqa: E402
from fixtures import tiny as fixtures_tiny  # noqa: E402
from models import load_checkpoint  # noqa: E402
from models.checkpoint import CheckpointError  # noqa: E402
from models.diffusers_io import (from_diffusers, main as diffusers_main, pipeline_class,  # noqa: E402
                                 to_diffusers)
from tests.test_checkpoint import tiny  # noqa: E402

X = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
T = torch.tensor([0.0, 0.37, 1.0])
Y = torch.tensor([1, 10, 3])


@pytest.mark.parametrize("kw", [dict(), dict(learn_sigma=True), dict(align_head="sra2", z_dim=16)])
def test_sit_to_dit_and_back(kw):
    m = tiny(0, **kw)
    dit, left_out = to_diffusers(m)
    assert left_out == ["pos_embed"] + [k for k in m.state_dict() if k.startswith("ap_head.")]
    with torch.no_grad():
        v = m(X, T, Y)
        out = dit(X, timestep=T, class_labels=Y).sample
    assert out.shape[1] == m.out_channels
    # fp32 rounding at most (measured: 1.9e-6 on the CPU)
    assert (out[:, :4] - v).abs().max() <= 1e-5
    back = from_diffusers(dit)
    for k, value in m.state_dict().items():
        if not k.startswith("ap_head."):
            assert torch.equal(back.state_dict()[k], value), k
    # diffusers' own time frequencies (downscale_freq_shift 1) are another network
    for block in dit.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 1
    with torch.no_grad():
        assert (dit(X, timestep=T, class_labels=Y).sample[:, :4] - v).abs().max() > 1e-3


def test_what_diffusers_cannot_express():
    with pytest.raises(CheckpointError, match="qk-norm, which diffusers' DiTTransformer2DModel cannot"):
        to_diffusers(tiny(0, qk_norm=True))
    dit, _ = to_diffusers(tiny(0))
    with torch.no_grad():
        dit.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias.add_(1)
    with pytest.raises(CheckpointError, match="block 1's differs from block 0's"):
        from_diffusers(dit)


@pytest.mark.parametrize("sampler", [dict(mode="sde"), dict(mode="ode", heun=True)])
def test_pipeline_images_are_sample_ddps(tmp_path, sampler):
    ckpt = str(tmp_path / "0000005.pt")
    ema = tiny(2)
    torch.save({"ema": ema.state_dict(), "steps": 5, "time_convention": "ours"}, ckpt)
    vae = str(tmp_path / "vae")
    fixtures_tiny.tiny_vae(vae)
    guide = dict(cfg_scale=2.0, guidance_low=0.1, guidance_high=0.7, cfg_channels=3)
    flags = ["--cfg-scale", "2", "--guidance-low", "0.1", "--guidance-high", "0.7", "--cfg-channels", "3",
             "--num-steps", "3", "--mode", sampler["mode"]] + (["--heun"] if sampler.get("heun") else [])
    npz = sample_ddp.main(["--ckpt", ckpt, "--vae", vae, "--num-fid-samples", "3", "--sample-dir",
                           str(tmp_path / "s"), "--no-progress", *flags])
    want = np.load(npz)
    out = str(tmp_path / "pipe")
    diffusers_main([ckpt, out, "--vae", vae])
    assert json.load(open(os.path.join(out, "model_index.json")))["path_type"] == "linear"
    pipe = pipeline_class().from_pretrained(out)
    kw = dict(class_labels=want["labels"].tolist(), seeds=[0, 1, 2], num_inference_steps=3,
              guidance_scale=2.0, guidance_low=0.1, guidance_high=0.7, cfg_channels=3, **sampler)
    images = pipe(output_type="np", **kw).images
    # the same images up to fp32 rounding (the SiT fuses multiply-adds without gradients, diffusers' DiT does
    # not): a uint8 level at most, on a few pixels
    diff = np.abs(images.astype(np.int16) - want["arr_0"].astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    # before the VAE: the latents of samplers.sample with the SiT itself
    model, _ = load_checkpoint(ckpt)
    gens = samplers.per_image_generators([0, 1, 2], "cpu")
    z = samplers.per_image_randn(gens, (4, 8, 8), "cpu")
    x = samplers.sample(model, z, torch.tensor(kw["class_labels"]), num_steps=3, generators=gens, **guide,
                        **sampler)
    latents = pipe(output_type="latent", **kw).images
    assert (latents - x).abs().max() <= 1e-5
    assert len(pipe(output_type="pil", **kw).images) == 3
    # and back to a SiT file
    diffusers_main(["--to-sit", out, str(tmp_path / "back.safetensors")])
    back, info = load_checkpoint(str(tmp_path / "back.safetensors"))
    assert info["time_convention"] == "ours" and info["path_type"] == "linear"
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ema.state_dict().items())
