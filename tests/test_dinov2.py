"""DINOv2 encoder for REPA: official key set, strict local loading, preprocessing, token counts.

Everything runs on CPU with random weights built locally; nothing is downloaded.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from models.dinov2 import (
    DINOV2_ARCHS,
    DINOV2_DIMS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    WEIGHTS_ENV,
    DinoV2,
    build_dinov2,
    dinov2_resolution,
    load_dinov2,
    preprocess_for_dinov2,
    sit_tokens_side,
)


def official_shapes(dim, depth, ffn_hidden=None, swiglu=False):
    """Key -> shape of an official dinov2_vit*14_pretrain.pth, written out from the published facts."""
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + 37 * 37, dim),     # 518 px / 14 = 37
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
            b + "ls1.gamma": (dim,),
            b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
            b + "ls2.gamma": (dim,),
        })
        if swiglu:
            shapes.update({
                b + "mlp.w12.weight": (2 * ffn_hidden, dim), b + "mlp.w12.bias": (2 * ffn_hidden,),
                b + "mlp.w3.weight": (dim, ffn_hidden), b + "mlp.w3.bias": (dim,),
            })
        else:
            shapes.update({
                b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
                b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,),
            })
    return shapes


def shapes_of(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def vitb():
    torch.manual_seed(0)
    return build_dinov2("dinov2_vitb14").eval()


@pytest.fixture(scope="module")
def vits():
    torch.manual_seed(1)
    return build_dinov2("dinov2_vits14").eval()


# ---- architecture / key set -----------------------------------------------------------------------

def test_vitb14_state_dict_is_the_official_key_set(vitb):
    expected = official_shapes(768, 12)
    assert len(expected) == 5 + 12 * 14 + 2 == 175
    assert shapes_of(vitb) == expected
    assert sum(p.numel() for p in vitb.parameters()) == 86_580_480      # "86M" in the DINOv2 model card


@pytest.mark.parametrize("name,dim,depth,params_m", [
    ("dinov2_vits14", 384, 12, 22.06),
    ("dinov2_vitl14", 1024, 24, 304.37),
    ("dinov2_vitg14", 1536, 40, 1136.48),
])
def test_other_sizes_key_sets_on_meta(name, dim, depth, params_m):
    with torch.device("meta"):                    # shapes only, no memory
        model = build_dinov2(name)
    swiglu = name == "dinov2_vitg14"
    assert shapes_of(model) == official_shapes(dim, depth, ffn_hidden=4096, swiglu=swiglu)
    assert DINOV2_DIMS[name] == dim
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)


def test_no_buffers_or_cache_in_state_dict(vits):
    with torch.no_grad():
        vits.forward_features(torch.randn(1, 3, 28, 28))       # fills the pos-embed cache
    assert set(vits.state_dict()) == {k for k, _ in vits.named_parameters()}


# ---- loading from a local file ----------------------------------------------------------------------

def test_save_and_strict_load_roundtrip(vitb, tmp_path):
    f = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save(vitb.state_dict(), f)
    loaded = load_dinov2("dinov2_vitb14", path=f)
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    ref = vitb.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a = vitb.forward_features(x)["x_norm_patchtokens"]
        b = loaded.forward_features(x)["x_norm_patchtokens"]
    assert torch.equal(a, b)


def test_wrong_keys_give_a_message_listing_them(vits, tmp_path):
    state = dict(vits.state_dict())
    state["blocks.3.mlp.fc9.weight"] = state.pop("blocks.3.mlp.fc1.weight")   # renamed key
    state["register_tokens"] = torch.zeros(1, 4, 384)                        # a *_reg4 checkpoint key
    f = tmp_path / "bad.pth"
    torch.save(state, f)
    with pytest.raises(RuntimeError) as err:
        load_dinov2("dinov2_vits14", path=f)
    msg = str(err.value)
    assert "bad.pth" in msg and "dinov2_vits14" in msg
    assert "missing keys (1): blocks.3.mlp.fc1.weight" in msg
    assert "unexpected keys (2): blocks.3.mlp.fc9.weight, register_tokens" in msg


def test_wrong_size_gives_shape_mismatches(vits, tmp_path):
    f = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(vits.state_dict(), f)
    with pytest.raises(RuntimeError) as err:
        load_dinov2("dinov2_vitb14", path=f)                  # ViT-S file for a ViT-B model
    msg = str(err.value)
    assert "shape mismatches" in msg
    assert "pos_embed: file (1, 1370, 384) vs model (1, 1370, 768)" in msg


def test_missing_file_message(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))     # empty hub cache
    with pytest.raises(FileNotFoundError) as err:
        load_dinov2("dinov2_vitb14")
    msg = str(err.value)
    assert "dinov2_vitb14_pretrain.pth" in msg
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "dinov2_vitb14_pretrain.pth") in msg
    assert WEIGHTS_ENV in msg and "nothing is downloaded" in msg

    with pytest.raises(FileNotFoundError) as err:
        load_dinov2("dinov2_vitb14", path=tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in str(err.value)


def test_env_var_and_hub_cache_are_found(vits, tmp_path, monkeypatch):
    fname = "dinov2_vits14_pretrain.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    hub_file = tmp_path / "torch_home" / "hub" / "checkpoints" / fname
    hub_file.parent.mkdir(parents=True)
    torch.save(vits.state_dict(), hub_file)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert torch.equal(load_dinov2("dinov2_vits14").cls_token, vits.cls_token)

    env_dir = tmp_path / "weights"
    env_dir.mkdir()
    torch.save(vits.state_dict(), env_dir / fname)
    monkeypatch.setenv(WEIGHTS_ENV, str(env_dir))                       # a directory holding the file
    assert torch.equal(load_dinov2("dinov2_vits14").pos_embed, vits.pos_embed)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "missing.pth"))      # given but wrong: no fallback
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_dinov2("dinov2_vits14")


# ---- preprocessing, target shapes and token counts ---------------------------------------------------

def test_resolution_follows_sit_token_grid():
    assert sit_tokens_side(256) == 16 and dinov2_resolution(16) == 224
    assert sit_tokens_side(512) == 32 and dinov2_resolution(32) == 448
    for size in (256, 512):
        assert dinov2_resolution(sit_tokens_side(size)) == 224 * (size // 256)   # REPA's rule


def test_targets_at_256px(vitb):
    images = torch.rand(2, 3, 256, 256) * 2 - 1             # decoded from latents, [-1, 1]
    x = preprocess_for_dinov2(images, dinov2_resolution(sit_tokens_side(256)))
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    with torch.no_grad():
        out = vitb.forward_features(x)
    assert out["x_norm_patchtokens"].shape == (2, 256, 768)  # = SiT-B/2's 256 tokens at 256 px
    assert out["x_norm_clstoken"].shape == (2, 768)
    assert out["x_prenorm"].shape == (2, 257, 768)
    assert torch.isfinite(out["x_norm_patchtokens"]).all()


def test_targets_at_512px(vits):
    images = torch.randint(0, 256, (1, 3, 512, 512), dtype=torch.uint8)
    x = preprocess_for_dinov2(images, dinov2_resolution(sit_tokens_side(512)))
    assert x.shape == (1, 3, 448, 448)
    with torch.no_grad():
        out = vits.forward_features(x)
    assert out["x_norm_patchtokens"].shape == (1, 1024, 384)  # 32 x 32 = SiT's 1024 tokens at 512 px


def test_preprocess_values():
    u8 = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    signed = u8.float() / 127.5 - 1
    a = preprocess_for_dinov2(u8, 224)
    b = preprocess_for_dinov2(signed, 224)
    assert torch.allclose(a, b, atol=1e-5)
    # hand computation of one pixel (no resize at 224)
    for c in range(3):
        v = u8[1, c, 10, 20].item() / 255.0
        assert a[1, c, 10, 20].item() == pytest.approx((v - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-5)
    # out-of-range decoded values are clamped to [-1, 1]
    assert torch.equal(preprocess_for_dinov2(torch.full((1, 3, 14, 14), 3.0), 14),
                       preprocess_for_dinov2(torch.full((1, 3, 14, 14), 1.0), 14))
    # the resize is bicubic without antialias, after the normalisation (REPA's order)
    img = torch.rand(1, 3, 256, 256) * 2 - 1
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    want = F.interpolate(((img + 1) / 2 - mean) / std, size=224, mode="bicubic", align_corners=False)
    assert torch.allclose(preprocess_for_dinov2(img, 224), want, atol=1e-5)


# ---- positional embedding resampling --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["repa", "dinov2"])
def test_pos_embed_identity_at_training_grid(vits, mode):
    vits.pos_interp = mode
    try:
        assert vits.interpolated_pos_embed(37, 37) is vits.pos_embed
        x = torch.randn(1, 3, 518, 518)
        with torch.no_grad():
            tokens = vits.prepare_tokens(x)
            want = torch.cat([vits.cls_token, vits.patch_embed(x)], 1) + vits.pos_embed
        assert torch.equal(tokens, want)
    finally:
        vits.pos_interp = "repa"


def test_repa_resampler_is_numerically_identity_at_37(vits):
    # (the "dinov2" rule's +0.1 offset makes its resampler a slight blur at 37 -> 37, which is why
    #  DINOv2 and this module short-cut the training grid to pos_embed itself)
    with torch.no_grad():
        same = vits._resample_pos_embed(37, 37)
    assert torch.allclose(same, vits.pos_embed, atol=1e-6)


def test_pos_embed_grid_sizes_cache_and_values():
    torch.manual_seed(2)
    model = DinoV2(embed_dim=32, depth=1, num_heads=4).eval().requires_grad_(False)
    for mode in ("repa", "dinov2"):
        model.pos_interp = mode
        model._pos_cache.clear()
        for side in (16, 32):
            pos = model.interpolated_pos_embed(side, side)
            assert pos.shape == (1, 1 + side * side, 32)
            assert torch.equal(pos[:, 0], model.pos_embed[:, 0])                  # cls entry untouched
            assert model.interpolated_pos_embed(side, side) is pos                 # cached: computed once
    # a constant grid stays constant; a new pos_embed invalidates the cache
    model.pos_interp = "repa"
    before = model.interpolated_pos_embed(16, 16)
    with torch.no_grad():
        model.pos_embed[:, 1:] = 0.5
    after = model.interpolated_pos_embed(16, 16)
    assert after is not before
    assert torch.allclose(after[:, 1:], torch.full_like(after[:, 1:], 0.5), atol=1e-6)
    # the REPA rule equals a direct antialiased bicubic resize of the 37 x 37 grid
    with torch.no_grad():
        model.pos_embed.normal_()
    grid = model.pos_embed[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    got = model.interpolated_pos_embed(16, 16)[:, 1:].reshape(1, 16, 16, 32).permute(0, 3, 1, 2)
    assert torch.allclose(got, want, atol=1e-6)


# ---- the forward pass against a hand-written reference ----------------------------------------------

def reference_forward(sd, images, num_heads, swiglu=False):
    """DINOv2 forward written with functional ops from the state dict, input on the pos_embed grid."""
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    n, d = x.shape[0], x.shape[1]
    x = x.reshape(n, d, -1).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(n, 1, d), x], 1) + sd["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = lambda name: sd[f"blocks.{i}.{name}"]
        h = F.layer_norm(x, (d,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = h @ p("attn.qkv.weight").T + p("attn.qkv.bias")
        q, k, v = qkv.split(d, dim=-1)
        heads = lambda t: t.reshape(n, -1, num_heads, d // num_heads).transpose(1, 2)
        q, k, v = heads(q), heads(k), heads(v)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // num_heads), dim=-1)
        h = (att @ v).transpose(1, 2).reshape(n, -1, d)
        x = x + p("ls1.gamma") * (h @ p("attn.proj.weight").T + p("attn.proj.bias"))
        h = F.layer_norm(x, (d,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        if swiglu:
            a, b = (h @ p("mlp.w12.weight").T + p("mlp.w12.bias")).chunk(2, dim=-1)
            h = (F.silu(a) * b) @ p("mlp.w3.weight").T + p("mlp.w3.bias")
        else:
            h = F.gelu(h @ p("mlp.fc1.weight").T + p("mlp.fc1.bias"))
            h = h @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
        x = x + p("ls2.gamma") * h
    x = F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return x[:, 0], x[:, 1:]


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_forward_matches_reference(ffn):
    torch.manual_seed(3)
    model = DinoV2(embed_dim=48, depth=2, num_heads=4, ffn=ffn, img_size=112).eval()   # 8 x 8 grid
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.endswith("bias"):
                p.normal_(std=0.3)                                # make every parameter matter
        images = torch.randn(2, 3, 112, 112)
        out = model.forward_features(images)
        cls, patches = reference_forward(model.state_dict(), images, num_heads=4, swiglu=ffn == "swiglu")
    assert out["x_norm_patchtokens"].shape == (2, 8 * 8, 48)
    assert torch.allclose(out["x_norm_patchtokens"], patches, atol=1e-4)
    assert torch.allclose(out["x_norm_clstoken"], cls, atol=1e-4)
    assert torch.allclose(model(images), cls, atol=1e-4)


def test_mask_token_replaces_masked_patches():
    torch.manual_seed(4)
    model = DinoV2(embed_dim=32, depth=1, num_heads=4, img_size=56).eval()
    images = torch.randn(1, 3, 56, 56)
    masks = torch.zeros(1, 16, dtype=torch.bool)
    masks[0, 5] = True
    with torch.no_grad():
        model.mask_token.normal_()
        tokens = model.prepare_tokens(images, masks)              # (1, 1 + 16, 32)
    assert torch.allclose(tokens[0, 1 + 5], model.mask_token[0] + model.pos_embed[0, 1 + 5])


def test_archs_table():
    assert set(DINOV2_ARCHS) == {"dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14"}
    assert DINOV2_DIMS == {"dinov2_vits14": 384, "dinov2_vitb14": 768,
                           "dinov2_vitl14": 1024, "dinov2_vitg14": 1536}
