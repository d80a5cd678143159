"""models/: separated attention, per-group conditioning, forward_features, public keys, FLOPs."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import (ReferenceSiT, SegmentLayout, SiT_models, dense_masked_attention, load_checkpoint,
                    load_state_dict_strict, separated_attention)


def tiny(seed=0, **kw):
    """SiT-T/2 on 8x8x4 inputs (16 tokens) with every weight random (the SiT init zeroes adaLN and the
    output)."""
    torch.manual_seed(seed)
    kw = {"input_size": 8, "in_channels": 4, "num_classes": 10, **kw}
    m = SiT_models["SiT-T/2"](**kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    return m


def loss_layout(N, sizes, separate=True, num_full=0, seed=0):
    """The layout the loss builds (argsort of uniform noise, exact group sizes, leading full rows) and the
    (N, T) group of each token it implies."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.rand(N, sum(sizes), generator=g).argsort(1)
    rank_group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).expand(N, -1)
    ids = torch.empty_like(perm).scatter_(1, perm, rank_group)
    return SegmentLayout.from_perm(perm, sizes, separate, num_full), ids


def random_groups(N, T, sizes, single_rows=(), seed=0):
    """(N, T) ids: each row a random subset of exactly sizes[k] tokens per group; rows in single_rows one
    group."""
    g = torch.Generator().manual_seed(seed)
    base = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    ids = torch.stack([base[torch.randperm(T, generator=g)] for _ in range(N)])
    for r in single_rows:
        ids[r] = r % len(sizes)
    return ids


def run_group_alone(m, x, t, y, ids, n, k):
    """Group k of sample n as its own sequence: its tokens (with their positional embeddings), its
    timestep."""
    h = (m.x_embedder(x[n:n + 1]) + m.pos_embed)[:, ids[n] == k]                     # (1, T_k, D)
    # (1, 1, D), after adaLN's SiLU
    c = torch.nn.functional.silu(m.t_embedder(t[n:n + 1, k]) + m.y_embedder(y[n:n + 1]))[:, None]
    for block in m.blocks:
        h = block(h, c)
    return m.final_layer(h, c)                                                      # (1, T_k, p*p*C)


def tokens(m, v):
    """(N, C, H, W) -> (N, T, p*p*C) in the model's patch order."""
    N = v.shape[0]
    C = v.shape[1]
    p = m.patch_size
    g = m.grid
    return v.reshape(N, C, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(N, g * g, p * p * C)


CASES = [((4, 12), ()), ((8, 8), (1,)), ((3, 5, 8), ()), ((2, 6, 8), (0, 3))]


@pytest.mark.parametrize("sizes,single", CASES)
def test_separated_equals_reference_and_groups_alone(sizes, single):
    m = tiny()
    N = 4
    T = 16
    K = len(sizes)
    x = torch.randn(N, 4, 8, 8)
    t = torch.rand(N, K)
    y = torch.randint(0, 11, (N,))
    ids = random_groups(N, T, sizes, single)
    with torch.no_grad():
        fast = m(x, t, y, groups=ids, separate=True)
        ref = ReferenceSiT(m)(x, t, y, groups=ids, separate=True)
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
        out = tokens(m, fast)
        for n in range(N):
            present = ids[n].unique().tolist()
            if len(present) == 1:
                # a single-group sample attends fully, at its own timestep
                alone = m(x[n:n + 1], t[n:n + 1, present[0]], y[n:n + 1])
                torch.testing.assert_close(fast[n:n + 1], alone, atol=1e-5, rtol=1e-5)
                continue
            for k in present:
                alone = run_group_alone(m, x, t, y, ids, n, k)[0]
                torch.testing.assert_close(out[n, ids[n] == k], alone, atol=1e-5, rtol=1e-5)


def test_unequal_sizes_between_samples_are_the_references_business():
    """The model takes one split for every sample and says where unequal splits go; ReferenceSiT (dense masked
    attention) takes them, each sample equal to the model on that sample alone."""
    m = tiny()
    ids = torch.cat([random_groups(2, 16, (4, 12)), random_groups(2, 16, (10, 6), seed=1)])
    x = torch.randn(4, 4, 8, 8)
    t = torch.rand(4, 2)
    y = torch.randint(0, 10, (4,))
    with torch.no_grad():
        with pytest.raises(ValueError, match="group sizes differ between samples.*ReferenceSiT"):
            m(x, t, y, groups=ids, separate=True)
        ref = ReferenceSiT(m)(x, t, y, groups=ids, separate=True)
        for n in range(4):
            alone = m(x[n:n + 1], t[n:n + 1], y[n:n + 1], groups=ids[n:n + 1], separate=True)
            torch.testing.assert_close(ref[n:n + 1], alone, atol=1e-5, rtol=1e-5)


def test_layout_from_perm_matches_ids_and_full_rows():
    """The loss's sync-free layout (perm + sizes + leading full rows) == the generic path on the same ids."""
    m = tiny()
    N = 5
    T = 16
    sizes = (4, 12)
    perm = torch.rand(N, T).argsort(1)
    rank_group = torch.repeat_interleave(torch.arange(2), torch.tensor(sizes)).expand(N, -1)
    ids = torch.empty(N, T, dtype=torch.long).scatter_(1, perm, rank_group)
    x, y = torch.randn(N, 4, 8, 8), torch.randint(0, 10, (N,))
    t = torch.rand(N, 2)
    # full rows carry one timestep
    t[:2, 1] = t[:2, 0]
    layout = SegmentLayout.from_perm(perm, sizes, separate=True, num_full=2)
    ref_ids = ids.clone()
    # the same thing said with ids: rows 0-1 one group
    ref_ids[:2] = 0
    with torch.no_grad():
        torch.testing.assert_close(m(x, t, y, groups=layout),
                                   ReferenceSiT(m)(x, t, y, groups=ref_ids, separate=True),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m(x, t, y, groups=layout), ReferenceSiT(m)(x, t, y, groups=layout),
                                   atol=1e-5, rtol=1e-5)
        # the id call: full rows anywhere in the batch, put back in place
        moved = [2, 0, 3, 1, 4]
        torch.testing.assert_close(m(x[moved], t[moved], y[moved], groups=ref_ids[moved], separate=True),
                                   m(x, t, y, groups=layout)[moved], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="separate=True goes with an .N, T. group-id tensor"):
        m(x, t, y, groups=layout, separate=True)


@pytest.mark.parametrize("num_full", [0, 1, 3])
def test_separated_attention_kernel_vs_dense(num_full):
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 16, 8) for _ in range(3))
    layout, ids = loss_layout(3, (5, 11), num_full=num_full)
    # full rows: one attention group
    ids[:num_full] = 0
    # (N, T, 3, H, hd) in group order
    qkv = torch.stack([layout.to_groups(a.transpose(1, 2).reshape(3, 16, 16)).view(3, 16, 2, 8)
                       for a in (q, k, v)], dim=2)
    out = separated_attention(qkv, layout).reshape(3, 16, 16)
    ref = dense_masked_attention(q, k, v, ids).transpose(1, 2).reshape(3, 16, 16)
    torch.testing.assert_close(layout.to_raster(out), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("separate", [True, False])
def test_gradient_across_groups(separate):
    m = tiny().float()
    ids = random_groups(1, 16, (4, 12))
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    out = tokens(m, m(x, torch.rand(1, 2), torch.tensor([3]), groups=ids, separate=separate))
    # outputs of group A ...
    out[0, ids[0] == 0].sum().backward()
    # ... w.r.t. the inputs of group B
    grad_tokens = tokens(m, x.grad)[0]
    cross = grad_tokens[ids[0] == 1].abs().max()
    assert (cross == 0) if separate else (cross > 0)
    assert grad_tokens[ids[0] == 0].abs().max() > 0


def test_per_group_conditioning_equals_per_token():
    m = tiny()
    ids = random_groups(3, 16, (4, 12))
    x = torch.randn(3, 4, 8, 8)
    t = torch.rand(3, 2)
    y = torch.randint(0, 10, (3,))
    with torch.no_grad():
        torch.testing.assert_close(m(x, t, y, groups=ids), ReferenceSiT(m)(x, t, y, groups=ids),
                                   atol=1e-5, rtol=1e-5)
        # one timestep everywhere == the plain SiT call
        t1 = t[:, :1].expand(-1, 2)
        torch.testing.assert_close(m(x, t1, y, groups=ids), m(x, t[:, 0], y), atol=1e-5, rtol=1e-5)


def test_forward_features_and_early_exit():
    m = tiny()
    ids = random_groups(2, 16, (4, 12))
    x = torch.randn(2, 4, 8, 8)
    t = torch.rand(2, 2)
    y = torch.randint(0, 10, (2,))
    seen, ran = {}, []
    hooks = [b.register_forward_hook(lambda mod, i, o, k=k: seen.__setitem__(k, o))
             for k, b in enumerate(m.blocks, 1)]
    with torch.no_grad():
        layout = SegmentLayout.from_ids(ids, t, separate=True)[2]
        m(x, t, y, groups=layout)
        full = {k: layout.to_raster(v) for k, v in seen.items()}
        hooks += [b.register_forward_pre_hook(lambda mod, i, k=k: ran.append(k))
                  for k, b in enumerate(m.blocks, 1)]
        h3 = m.forward_features(x, t, y, layer=3, groups=ids, separate=True)
    # blocks after 3 are not executed
    assert ran == [1, 2, 3]
    torch.testing.assert_close(h3, full[3])
    with torch.no_grad():
        v, z = m(x, t[:, 0], y, align_layer=2)
        # no head: raw features
        torch.testing.assert_close(z, m.forward_features(x, t[:, 0], y, layer=2))
    with pytest.raises(ValueError, match="layer must be in 1..6"):
        m.forward_features(x, t, y, layer=7)


@pytest.mark.parametrize("head", [dict(align_head="ap_head"), dict(align_head="sra2", z_dim=16)])
def test_reference_features_run_every_block_and_equal_the_fast_path(head):
    """ReferenceSiT (the release's costs): block k's output as SiT.forward_features gives it, with every block
    run (the release's EMA teacher), and the same (velocity, head(h_m)) pair as the student call (the SRA 2
    head reads the conditioning: per token there, per group here)."""
    m = tiny(**head)
    ids = random_groups(2, 16, (4, 12))
    x = torch.randn(2, 4, 8, 8)
    t = torch.rand(2, 2)
    y = torch.randint(0, 10, (2,))
    ran = []
    ref = ReferenceSiT(m)
    with torch.no_grad():
        fast = m.forward_features(x, t, y, layer=3, groups=ids, separate=True)
        hooks = [b.adaLN_modulation.register_forward_hook(lambda mod, i, o, k=k: ran.append(k))
                 for k, b in enumerate(m.blocks, 1)]
        slow = ref.forward_features(x, t, y, layer=3, groups=ids, separate=True)
        for h in hooks:
            h.remove()
        v, z = m(x, t, y, groups=ids, separate=True, align_layer=2)
        v_ref, z_ref = ref(x, t, y, groups=ids, separate=True, align_layer=2)
    assert ran == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_ref, v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z_ref, z, atol=1e-5, rtol=1e-5)


def test_initialisation_as_sit():
    torch.manual_seed(0)
    m = SiT_models["SiT-S/4"](input_size=16, num_classes=10)
    assert not m.pos_embed.requires_grad
    assert all(b.adaLN_modulation[-1].weight.abs().max() == 0 for b in m.blocks)
    assert m.final_layer.linear.weight.abs().max() == 0
    assert abs(m.y_embedder.embedding_table.weight.std().item() - 0.02) < 0.003
    assert m.blocks[0].attn.qkv.bias.abs().max() == 0
    out = m(torch.randn(2, 4, 16, 16), torch.rand(2), torch.tensor([1, 10]))
    # adaLN-Zero: the initial output is exactly 0
    assert out.abs().max() == 0
    # sin-cos: channel 0 = sin(col * 1) -> row-invariant
    pe = m.pos_embed[0]
    assert pe[1, 0] == pytest.approx(torch.sin(torch.tensor(1.0)).item(), abs=1e-6)
    assert pe[4, 0] == pytest.approx(0.0, abs=1e-6) and pe[4, 192] == pytest.approx(
        torch.sin(torch.tensor(1.0)).item(), abs=1e-6)


# ---- public checkpoint key tables (SiT and REPA train.py state dicts, the SRA release's ap_head) -----------

def public_keys(depth, D, out, head=None, z=768):
    keys = {"pos_embed": (1, 256, D), "x_embedder.proj.weight": (D, 4, 2, 2), "x_embedder.proj.bias": (D,),
            "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
            "t_embedder.mlp.2.weight": (D, D),
            "t_embedder.mlp.2.bias": (D,), "y_embedder.embedding_table.weight": (1001, D),
            "final_layer.linear.weight": (out, D), "final_layer.linear.bias": (out,),
            "final_layer.adaLN_modulation.1.weight": (2 * D, D),
            "final_layer.adaLN_modulation.1.bias": (2 * D,)}
    for i in range(depth):
        keys.update({f"blocks.{i}.attn.qkv.weight": (3 * D, D), f"blocks.{i}.attn.qkv.bias": (3 * D,),
                     f"blocks.{i}.attn.proj.weight": (D, D), f"blocks.{i}.attn.proj.bias": (D,),
                     f"blocks.{i}.mlp.fc1.weight": (4 * D, D), f"blocks.{i}.mlp.fc1.bias": (4 * D,),
                     f"blocks.{i}.mlp.fc2.weight": (D, 4 * D), f"blocks.{i}.mlp.fc2.bias": (D,),
                     f"blocks.{i}.adaLN_modulation.1.weight": (6 * D, D),
                     f"blocks.{i}.adaLN_modulation.1.bias": (6 * D,)})
    if head == "ap_head":
        keys.update({"ap_head.linear1.weight": (2 * D, D), "ap_head.linear1.bias": (2 * D,),
                     "ap_head.linear2.weight": (D, 2 * D), "ap_head.linear2.bias": (D,)})
    if head == "projector":
        keys.update({"projectors.0.0.weight": (2048, D), "projectors.0.0.bias": (2048,),
                     "projectors.0.2.weight": (2048, 2048), "projectors.0.2.bias": (2048,),
                     "projectors.0.4.weight": (z, 2048), "projectors.0.4.bias": (z,)})
    return keys


@pytest.mark.parametrize("name,kw,table,count", [
    # public SiT
    ("SiT-XL/2", dict(learn_sigma=True), public_keys(28, 1152, 32), 292),
    # REPA
    ("SiT-XL/2", dict(align_head="projector", z_dim=768), public_keys(28, 1152, 16, "projector"), 298),
    # SRA
    ("SiT-B/2", dict(align_head="ap_head"), public_keys(12, 768, 16, "ap_head"), 136),
])
def test_public_state_dicts_load_strict(name, kw, table, count):
    assert len(table) == count
    with torch.device("meta"):
        m = SiT_models[name](input_size=32, num_classes=1000, **kw)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == table
    sd = {k: torch.empty(s, device="meta") for k, s in table.items()}
    load_state_dict_strict(m, sd)
    bad = dict(sd)
    bad["blocks.0.attn.qkv.weightx"] = bad.pop("blocks.0.attn.qkv.weight")
    with pytest.raises(ValueError,
                       match=r"missing keys \(1\): blocks.0.attn.qkv.weight(.|\n)*unexpected keys \(1\)"):
        load_state_dict_strict(m, bad)


def test_load_checkpoint_files_and_time_convention(tmp_path):
    m = tiny(learn_sigma=True)
    raw = tmp_path / "sit_public.pt"
    torch.save(m.state_dict(), raw)
    with pytest.raises(ValueError, match="--time-convention sit"):
        load_checkpoint(str(raw))
    flipped, info = load_checkpoint(str(raw), time_convention="sit")
    assert info["model_name"] == "SiT-T/2" and info["learn_sigma"] and info["time_convention"] == "sit"
    x = torch.randn(2, 4, 8, 8)
    t = torch.rand(2)
    y = torch.tensor([1, 2])
    with torch.no_grad():
        # v_ours(x, t) = -v_sit(x, 1 - t)
        torch.testing.assert_close(flipped(x, t, y), -m(x, 1 - t, y))
    ours = tmp_path / "ours.pt"
    torch.save({"model": m.state_dict(), "ema": m.state_dict(), "steps": 7, "time_convention": "ours",
                "args": {"model": "SiT-T/2"}}, ours)
    model, info = load_checkpoint(str(ours))
    assert info["steps"] == 7 and info["time_convention"] == "ours"
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), m(x, t, y))
    with pytest.raises(ValueError, match="holds a SiT-T/2 but --model is SiT-B/2"):
        load_checkpoint(str(ours), model_name="SiT-B/2")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(str(tmp_path / "nope.pt"))


def test_null_class_row_without_label_dropout(tmp_path):
    """A model trained with --class-dropout-prob 0 still has the null row: CFG runs and the file reads 10
    classes."""
    import samplers
    from train import build_model, parse_args

    class Data:
        latent_size = 8
        latent_channels = 4
        num_classes = 10
    args = parse_args(["--model", "SiT-T/2", "--class-dropout-prob", "0", "--align-target", "none"])
    m = build_model(args, Data())
    assert m.y_embedder.embedding_table.weight.shape[0] == 11
    torch.save({"ema": m.state_dict(), "model": m.state_dict(), "steps": 1, "time_convention": "ours"},
               tmp_path / "p0.pt")
    loaded, info = load_checkpoint(str(tmp_path / "p0.pt"))
    assert info["num_classes"] == 10
    x = samplers.sample(loaded, torch.randn(2, 4, 8, 8), torch.tensor([3, 9]), mode="sde", num_steps=3,
                        cfg_scale=2.0)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_forward_in_the_model_dtype_without_autocast(dtype):
    m = tiny()
    x = torch.randn(2, 4, 8, 8)
    t = torch.rand(2)
    y = torch.tensor([1, 2])
    with torch.no_grad():
        ref = m(x, t, y).double()
        m = m.to(dtype)
        out = m(x.to(dtype), t.to(dtype), y)
        # fp32 t into a fp64/fp16 model
        feats = m.t_embedder(t)
    assert out.dtype == dtype and feats.dtype == dtype
    # ref is the fp32 forward
    tol = 1e-4 if dtype == torch.float64 else 0.1
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=10 * tol)


def test_bad_inputs_have_clear_messages():
    m = tiny()
    x, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"x must be \(N, 4, 8, 8\)"):
        m(torch.randn(2, 3, 8, 8), torch.rand(2), y)
    with pytest.raises(ValueError, match="no groups were given"):
        m(x, torch.rand(2, 2), y)
    with pytest.raises(ValueError, match=r"group ids must lie in \[0, 2\)"):
        m(x, torch.rand(2, 2), y, groups=torch.full((2, 16), 2))


# ---- FLOPs (FlopCounterMode on the meta device: no compute) ------------------------------------------------

def forward_gflops(fn):
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def test_flops_xl2_plain_vs_dual_timestep_separated():
    with torch.device("meta"):
        m = SiT_models["SiT-XL/2"](input_size=32, num_classes=1000, learn_sigma=True)
        x, y = torch.randn(1, 4, 32, 32), torch.zeros(1, dtype=torch.long)
        plain = forward_gflops(lambda: m(x, torch.rand(1), y))
        perm = torch.arange(256)[None]
        layout = SegmentLayout.from_perm(perm, (64, 192), separate=True)
        dual = forward_gflops(lambda: m(x, torch.rand(1, 2), y, groups=layout))
        release = forward_gflops(lambda: ReferenceSiT(m)(x, torch.rand(1), y))
    # 2 x 118.6 GMACs
    assert 230 < plain < 245, plain
    assert dual <= 1.02 * plain, (dual, plain)
    # per-token adaLN, as the public release
    assert 340 < release < 360, release
