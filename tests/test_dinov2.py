"""DINOv2 encoder for REPA (timm's model, the official weight files): official key set, strict local loading,
preprocessing, token counts, and the forward pass against a plain-torch reference written here.

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
    build_dinov2,
    dinov2_patch_tokens,
    dinov2_resolution,
    load_dinov2,
    preprocess_for_dinov2,
    sit_tokens_side,
    timm_state_dict,
)


def official_shapes(dim, depth, ffn_hidden=None, swiglu=False, grid=37):
    """Key -> shape of an official dinov2_vit*14_pretrain.pth, written out from the published facts."""
    shapes = {
        "cls_token": (1, 1, dim),
        # 518 px / 14 = 37 for the official files
        "pos_embed": (1, 1 + grid * grid, dim),
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


def random_official(dim, depth, swiglu=False, ffn_hidden=None, grid=37, seed=0):
    """A state dict with the official key names and random values, every parameter far from its init."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(dim, depth, ffn_hidden, swiglu, grid).items():
        std = 0.3 if key.endswith(("gamma", "bias")) or "token" in key or "pos_embed" in key else 0.02
        state[key] = torch.randn(shape, generator=gen) * std
    return state


def with_mask_token(state, dim):
    """A state dict of build_dinov2's model as the official file holds it (plus iBOT's mask token)."""
    return dict(state, mask_token=torch.zeros(1, dim))


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
    # the official key set in timm's names (the file's mask_token, (1, 768), has no timm counterpart)
    assert shapes_of(vitb) == timm_state_dict(expected)
    # "86M" in the DINOv2 model card
    assert sum(p.numel() for p in vitb.parameters()) + 768 == 86_580_480


@pytest.mark.parametrize("name,dim,depth,params_m", [
    ("dinov2_vits14", 384, 12, 22.06),
    ("dinov2_vitl14", 1024, 24, 304.37),
    ("dinov2_vitg14", 1536, 40, 1136.48),
])
def test_other_sizes_key_sets_on_meta(name, dim, depth, params_m):
    # shapes only, no memory
    with torch.device("meta"):
        model = build_dinov2(name)
    swiglu = name == "dinov2_vitg14"
    assert shapes_of(model) == timm_state_dict(official_shapes(dim, depth, ffn_hidden=4096, swiglu=swiglu))
    assert DINOV2_DIMS[name] == dim
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)


def test_no_buffers_or_cache_in_state_dict(vits):
    with torch.no_grad():
        # a grid other than 37 x 37: pos_embed is resampled
        vits.forward_features(torch.randn(1, 3, 28, 28))
    assert set(vits.state_dict()) == {k for k, _ in vits.named_parameters()}


# ---- loading from a local file ----------------------------------------------------------------------

def test_save_and_strict_load_roundtrip(vitb, tmp_path):
    f = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save(with_mask_token(vitb.state_dict(), 768), f)
    loaded = load_dinov2("dinov2_vitb14", path=f)
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    ref = vitb.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a = dinov2_patch_tokens(vitb, x)
        b = dinov2_patch_tokens(loaded, x)
    assert torch.equal(a, b)


def test_wrong_keys_give_a_message_listing_them(vits, tmp_path):
    state = dict(vits.state_dict())
    # a renamed key, and a *_reg4 checkpoint key
    state["blocks.3.mlp.fc9.weight"] = state.pop("blocks.3.mlp.fc1.weight")
    state["register_tokens"] = torch.zeros(1, 4, 384)
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
        # a ViT-S file for a ViT-B model
        load_dinov2("dinov2_vitb14", path=f)
    msg = str(err.value)
    assert "shape mismatches" in msg
    assert "pos_embed: file (1, 1370, 384) vs model (1, 1370, 768)" in msg


def test_missing_file_message(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    # an empty hub cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
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
    # a directory holding the file
    monkeypatch.setenv(WEIGHTS_ENV, str(env_dir))
    assert torch.equal(load_dinov2("dinov2_vits14").pos_embed, vits.pos_embed)
    # given but wrong: no fallback
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_dinov2("dinov2_vits14")


# ---- preprocessing, target shapes and token counts ---------------------------------------------------

def test_resolution_follows_sit_token_grid():
    assert sit_tokens_side(256) == 16 and dinov2_resolution(16) == 224
    assert sit_tokens_side(512) == 32 and dinov2_resolution(32) == 448
    for size in (256, 512):
        # REPA's rule
        assert dinov2_resolution(sit_tokens_side(size)) == 224 * (size // 256)


def test_targets_at_256px(vitb):
    # decoded from latents, [-1, 1]
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    x = preprocess_for_dinov2(images, dinov2_resolution(sit_tokens_side(256)))
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    with torch.no_grad():
        patches = dinov2_patch_tokens(vitb, x)
        normed = vitb.forward_features(x)
        _, [(prenorm_patches, prenorm_cls)] = vitb.forward_intermediates(
            x, indices=1, output_fmt="NLC", return_prefix_tokens=True)
    prenorm = torch.cat([prenorm_cls, prenorm_patches], 1)
    # = SiT-B/2's 256 tokens at 256 px
    assert patches.shape == (2, 256, 768)
    assert normed[:, 0].shape == (2, 768)
    assert prenorm.shape == (2, 257, 768)
    assert torch.isfinite(patches).all()


def test_targets_at_512px(vits):
    images = torch.randint(0, 256, (1, 3, 512, 512), dtype=torch.uint8)
    x = preprocess_for_dinov2(images, dinov2_resolution(sit_tokens_side(512)))
    assert x.shape == (1, 3, 448, 448)
    with torch.no_grad():
        patches = dinov2_patch_tokens(vits, x)
    # 32 x 32 = SiT's 1024 tokens at 512 px
    assert patches.shape == (1, 1024, 384)


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

def pos_for(model, side):
    """The positional embeddings (1, 1 + side^2, D) the model adds for a side x side patch grid: its token
    preparation applied to zero patch tokens, less the class token."""
    dim = model.embed_dim
    with torch.no_grad():
        tokens = model._pos_embed(torch.zeros(1, side, side, dim))
    return tokens - torch.cat([model.cls_token, torch.zeros(1, side * side, dim)], 1)


def test_pos_embed_identity_at_training_grid(vits):
    x = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        tokens = vits._pos_embed(vits.patch_embed(x))
        patches = vits.patch_embed.proj(x).flatten(2).transpose(1, 2)
        want = torch.cat([vits.cls_token, patches], 1) + vits.pos_embed
    assert torch.equal(tokens, want)


def test_repa_resampler_is_numerically_identity_at_37(vits):
    # antialiased bicubic from 37 x 37 to 37 x 37, computed (not short-cut)
    grid = vits.pos_embed[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    with torch.no_grad():
        same = F.interpolate(grid, size=(37, 37), mode="bicubic", align_corners=False, antialias=True)
        got = pos_for(vits, 37)[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    assert torch.allclose(same, grid, atol=1e-6)
    assert torch.allclose(got, grid, atol=1e-6)


def test_pos_embed_grid_sizes_and_values():
    torch.manual_seed(2)
    model = build_dinov2("dinov2_vits14", embed_dim=32, depth=1, num_heads=4).eval().requires_grad_(False)
    for side in (16, 32):
        pos = pos_for(model, side)
        assert pos.shape == (1, 1 + side * side, 32)
        # the cls entry untouched
        assert torch.allclose(pos[:, 0], model.pos_embed[:, 0], atol=1e-6)
    # a constant grid stays constant
    with torch.no_grad():
        model.pos_embed[:, 1:] = 0.5
    after = pos_for(model, 16)
    assert torch.allclose(after[:, 1:], torch.full_like(after[:, 1:], 0.5), atol=1e-6)
    # the REPA rule equals a direct antialiased bicubic resize of the 37 x 37 grid
    with torch.no_grad():
        model.pos_embed.normal_()
    grid = model.pos_embed[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    got = pos_for(model, 16)[:, 1:].reshape(1, 16, 16, 32).permute(0, 3, 1, 2)
    assert torch.allclose(got, want, atol=1e-6)


# ---- the forward pass against a hand-written reference ----------------------------------------------

def reference_forward(sd, images, num_heads, swiglu=False):
    """DINOv2 forward written with functional ops from an official-format state dict; pos_embed is resampled
    (bicubic, antialias) when the input's patch grid is not the pos_embed grid."""
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    n, d = x.shape[0], x.shape[1]
    side = x.shape[-1]
    x = x.reshape(n, d, -1).transpose(1, 2)
    pos = sd["pos_embed"]
    grid = math.isqrt(pos.shape[1] - 1)
    if side != grid:
        pos_grid = pos[:, 1:].reshape(1, grid, grid, d).permute(0, 3, 1, 2)
        pos_grid = F.interpolate(pos_grid, size=(side, side), mode="bicubic", align_corners=False,
                                 antialias=True)
        pos = torch.cat([pos[:, :1], pos_grid.permute(0, 2, 3, 1).reshape(1, side * side, d)], 1)
    x = torch.cat([sd["cls_token"].expand(n, 1, d), x], 1) + pos
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        def p(name):
            return sd[f"blocks.{i}.{name}"]

        def heads(t):
            return t.reshape(n, -1, num_heads, d // num_heads).transpose(1, 2)

        h = F.layer_norm(x, (d,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = h @ p("attn.qkv.weight").T + p("attn.qkv.bias")
        q, k, v = qkv.split(d, dim=-1)
        q = heads(q)
        k = heads(k)
        v = heads(v)
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
    swiglu = ffn == "swiglu"
    # 112 px = an 8 x 8 pos_embed grid; SwiGLU hidden width 128 for D = 48 (timm: int(48 * 5.33334) / 2)
    official = random_official(48, 2, swiglu=swiglu, ffn_hidden=128, grid=8, seed=3)
    arch = "dinov2_vitg14" if swiglu else "dinov2_vits14"
    model = build_dinov2(arch, embed_dim=48, depth=2, num_heads=4, img_size=112).eval()
    model.load_state_dict(timm_state_dict(official), strict=True)
    # on the pos_embed grid, and on a 4 x 4 grid (pos_embed resampled)
    for side, grid in ((112, 8), (56, 4)):
        images = torch.randn(2, 3, side, side)
        with torch.no_grad():
            patches = dinov2_patch_tokens(model, images)
            cls, ref_patches = reference_forward(official, images, num_heads=4, swiglu=swiglu)
            assert patches.shape == (2, grid * grid, 48)
            assert torch.allclose(patches, ref_patches, atol=1e-4)
            assert torch.allclose(model.forward_features(images)[:, 0], cls, atol=1e-4)
            assert torch.allclose(model(images), cls, atol=1e-4)


def test_real_size_vits14_from_an_official_file_matches_reference(tmp_path):
    official = random_official(384, 12, seed=5)
    f = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(official, f)
    model = load_dinov2("dinov2_vits14", path=f)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        patches = dinov2_patch_tokens(model, images)
        _, ref_patches = reference_forward(official, images, num_heads=6)
    assert patches.shape == (1, 256, 384)
    assert torch.allclose(patches, ref_patches, atol=1e-4)


def test_mask_token_is_read_and_dropped(tmp_path):
    # iBOT's mask token is in the official file; REPA's targets never mask, and timm's model has no such key
    official = random_official(384, 12, seed=4)
    assert official["mask_token"].shape == (1, 384)
    converted = timm_state_dict(official)
    assert "mask_token" not in converted and len(converted) == len(official) - 1
    f = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(official, f)
    model = load_dinov2("dinov2_vits14", path=f)
    assert not any("mask" in k for k in model.state_dict())
    assert torch.equal(model.pos_embed, official["pos_embed"])


def test_swiglu_keys_are_renamed():
    official = {"blocks.0.mlp.w12.weight": 1, "blocks.0.mlp.w3.bias": 2, "blocks.0.mlp.fc1.weight": 3,
                "norm.weight": 4, "mask_token": 5}
    assert timm_state_dict(official) == {"blocks.0.mlp.fc1.weight": 3, "blocks.0.mlp.fc2.bias": 2,
                                         "norm.weight": 4}


def test_archs_table():
    import timm

    assert set(DINOV2_ARCHS) == {"dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14"}
    assert DINOV2_DIMS == {"dinov2_vits14": 384, "dinov2_vitb14": 768,
                           "dinov2_vitl14": 1024, "dinov2_vitg14": 1536}
    # timm's registry has each model (built with pretrained=False only)
    assert set(DINOV2_ARCHS.values()) <= set(timm.list_models("*dinov2*"))
