"""Alignment targets beyond the EMA teacher: REPA (DINOv2 patch tokens) and SRA 2 (the clean VAE latent)."""
import pytest
import torch

from loss import Draw, LossConfig, REPATarget, TrainingLoss, VAELatentTarget, patch_tokens
from models import SiT_models
from models.dinov2 import build_dinov2


def spy_forward(model) -> dict:
    """Keep the student's last output (velocity, head features) in the returned dict."""
    seen, orig = {}, model.forward

    def spy(*a, **kw):
        seen["out"] = orig(*a, **kw)
        return seen["out"]
    model.forward = spy
    return seen


def loss_for(model, target, **kw):
    align_target = "repa" if isinstance(target, REPATarget) else "sra2"
    cfg = LossConfig(align_target=align_target, block_out_s=2, **kw)
    return TrainingLoss(cfg, num_tokens=model.num_tokens, grid=model.grid, patch=model.patch_size,
                        num_classes=10, target=target)


@pytest.mark.parametrize("name,res,tokens", [("dinov2_vitb14", 256, 256), ("dinov2_vits14", 512, 1024)])
def test_repa_target_shapes_and_token_counts(name, res, tokens):
    torch.manual_seed(0)
    enc = build_dinov2(name).eval().requires_grad_(False)
    # SiT/2 tokens per side on res/8 latents
    grid = res // 8 // 2
    images = torch.rand(1, 3, res, res) * 2 - 1
    target = REPATarget(enc, to_images=lambda x0: images)
    with torch.no_grad():
        z = target(Draw(x0=torch.zeros(1, 4, res // 8, res // 8), grid=grid))
    assert z.shape == (1, tokens, enc.embed_dim) and tokens == grid ** 2


def test_repa_loss_by_hand_and_gradients_reach_only_student_and_projector():
    torch.manual_seed(0)
    enc = build_dinov2("dinov2_vits14").eval().requires_grad_(False)
    model = SiT_models["SiT-T/2"](input_size=8, in_channels=1, num_classes=10, align_head="projector",
                                  z_dim=enc.embed_dim)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    fn = loss_for(model, REPATarget(enc, to_images=lambda x0: x0), loss_type="cos-token", align_weight=0.5)
    x0, y = torch.rand(2, 1, 8, 8) * 2 - 1, torch.tensor([1, 2])
    seen = spy_forward(model)
    loss, logs = fn(model, x0, y)
    # projector(h_2), (N, 16, 384)
    feats = seen["out"][1]
    from models.dinov2 import dinov2_patch_tokens, preprocess_for_dinov2
    with torch.no_grad():
        ref = dinov2_patch_tokens(enc, preprocess_for_dinov2(x0.expand(-1, 3, -1, -1), 56))
    cos = (feats * ref).sum(-1) / (feats.norm(dim=-1) * ref.norm(dim=-1))
    torch.testing.assert_close(logs["loss_align"], (1 - cos).mean(), rtol=1e-5, atol=1e-6)
    loss.mean().backward()
    assert all(p.grad is None for p in enc.parameters())
    assert (model.projectors[0][0].weight.grad.abs().sum() > 0
            and model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0)
    # the flow-matching loss reaches every block
    assert model.blocks[-1].attn.qkv.weight.grad.abs().sum() > 0


def test_sra2_target_patches_line_up_with_the_model_tokens():
    model = SiT_models["SiT-T/2"](input_size=8, in_channels=4, num_classes=10)
    x0 = torch.zeros(1, 4, 8, 8)
    # one bright patch: row 1, column 3
    x0[0, :, 2:4, 6:8] = 1.0
    z = VAELatentTarget()(Draw(x0=x0, patch=2))
    assert z.shape == (1, 16, 16) and VAELatentTarget().z_dim(2, 4) == 16
    bright = (z.abs().sum(-1) > 0).nonzero()[:, 1].tolist()
    # raster token index row * grid + col
    assert bright == [1 * 4 + 3]
    # the model's own token order
    torch.testing.assert_close(model.unpatchify(patch_tokens(x0, 2)), x0)
    with torch.no_grad():
        # and the patch embedding sees it there too
        emb = model.x_embedder(x0) - model.x_embedder(torch.zeros_like(x0))
    assert (emb.abs().sum(-1) > 0).nonzero()[:, 1].tolist() == bright


def test_sra2_head_is_the_authors_description_and_its_depth_a_setting():
    """5 Linear + SiLU layers, then a SiT-style final layer (adaLN-Zero modulation from the conditioning):
    the file says its depth back (models/checkpoint.py)."""
    from models import infer_config
    from models.sit import SRA2_HEAD_DEPTH
    import train

    model = SiT_models["SiT-T/2"](input_size=8, in_channels=4, num_classes=10, align_head="sra2", z_dim=16)
    head = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("ap_head.")}
    assert SRA2_HEAD_DEPTH == 5 and head == {
        **{f"ap_head.mlp.{2 * i}.{w}": (128, 128)[: 2 if w == "weight" else 1] for i in range(5)
           for w in ("weight", "bias")},
        "ap_head.final_layer.linear.weight": (16, 128), "ap_head.final_layer.linear.bias": (16,),
        "ap_head.final_layer.adaLN_modulation.1.weight": (256, 128),
        "ap_head.final_layer.adaLN_modulation.1.bias": (256,)}
    assert model.ap_head.final_layer.adaLN_modulation[1].weight.abs().max() == 0
    cfg = infer_config(model.state_dict())
    assert (cfg["align_head"], cfg["z_dim"], cfg["head_depth"]) == ("sra2", 16, 5)
    args = train.parse_args(["--preset", "sra2-b2", "--model", "SiT-T/2", "--sra2-head-depth", "2"])
    data = type("Data", (), dict(latent_size=8, latent_channels=4, num_classes=10))
    shallow = train.build_model(args, data, VAELatentTarget())
    assert infer_config(shallow.state_dict())["head_depth"] == 2 and len(shallow.ap_head.mlp) == 4
    assert train.parse_args(["--preset", "sra2-b2"]).sra2_head_depth == 5


def test_sra2_loss_is_smooth_l1_to_the_clean_patches():
    torch.manual_seed(0)
    model = SiT_models["SiT-T/2"](input_size=8, in_channels=4, num_classes=10, align_head="sra2", z_dim=16)
    fn = loss_for(model, VAELatentTarget(), loss_type="sml1", align_weight=1.0)
    x0 = torch.randn(2, 4, 8, 8)
    seen = spy_forward(model)
    loss, logs = fn(model, x0, torch.tensor([1, 2]))
    # head(h_2) vs the clean patches
    diff = (seen["out"][1] - patch_tokens(x0, 2)).abs()
    by_hand = torch.where(diff < 0.05, 0.5 * diff ** 2 / 0.05, diff - 0.025).mean()
    torch.testing.assert_close(logs["loss_align"], by_hand)
    torch.testing.assert_close(loss.mean(), logs["loss_gen"] + logs["loss_align"])
