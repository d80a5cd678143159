"""The public release's costs with the same math, for tests and bench.py only (never for training).

`ReferenceSiT(model)` wraps a SiT and shares its weights. It computes what SiT computes, the naive way:
    - conditioning and adaLN modulation per token, (N, T, 6D), instead of once per (sample, group) (Eq. 5-6);
    - attention as a materialised (N, H, T, T) score matrix with -inf across groups, A_ij = 1[g_i = g_j]
      (Eq. 8-9), instead of one fused SDPA per contiguous group (models/attention.py);
    - forward_features runs every block and the final layer and returns block `layer`'s output, as the
      release's EMA teacher does (it runs the whole network and keeps block n by a hook).
It takes the calls the loss makes (`model(x, t, y, groups=layout, align_layer=)` and
`model.forward_features(...)`), so `TrainingLoss` can be handed a wrapped student and a wrapped EMA teacher
unchanged, and (N, T) group ids with `separate=` whose group sizes may differ between samples.
tests/test_models.py checks the fast path against it; bench.py --reference-impl and --compare count its FLOPs
and time it.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .groups import SegmentLayout
from .sit import FinalLayer, SiT, SiTBlock


def dense_masked_attention(q: Tensor, k: Tensor, v: Tensor, ids: Tensor | None = None) -> Tensor:
    """q, k, v (N, H, T, hd) -> (N, H, T, hd): materialise q k^T, fill -inf across groups (ids (N, T), raster
    order; None = full attention), softmax, times v."""
    # (N, H, T, T)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if ids is not None:
        # (N, 1, T, T): A_ij = 1[g_i = g_j]
        same = ids[:, None, :, None] == ids[:, None, None, :]
        scores = scores.masked_fill(~same, float("-inf"))
    return scores.softmax(dim=-1) @ v


def reference_ids(groups: Tensor | SegmentLayout, separate: bool) -> tuple[Tensor, Tensor | None]:
    """Raster-order (N, T) timestep column and attention group of every token (None: full attention), from
    (N, T) group ids (any sizes, per sample) or a SegmentLayout."""
    if torch.is_tensor(groups):
        return groups, (groups if separate else None)
    # (T,) -> (N, T): the segment of each slot in group order
    seg = torch.tensor([k for k, n in enumerate(groups.sizes) for _ in range(n)], device=groups.perm.device)
    seg = seg.expand_as(groups.perm)
    attn = None
    if groups.separate:
        attn = seg.clone()
        # full rows: one attention group
        attn[:groups.num_full] = 0
    # group order -> raster order
    cond = seg.gather(1, groups.inv_perm)
    return cond, (None if attn is None else attn.gather(1, groups.inv_perm))


def _block(block: SiTBlock, x: Tensor, c: Tensor, ids: Tensor | None) -> Tensor:
    """SiTBlock's math with per-token modulation c (N, T, D) and dense masked attention."""
    N, T, D = x.shape
    attn = block.attn
    shift1, scale1, gate1, shift2, scale2, gate2 = block.adaLN_modulation(c).chunk(6, dim=-1)
    h = block.norm1(x) * (1 + scale1) + shift1
    qkv = attn.qkv(h).view(N, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    o = dense_masked_attention(attn.q_norm(q), attn.k_norm(k), v, ids)
    x = x + gate1 * attn.proj(o.transpose(1, 2).reshape(N, T, D))
    h = block.norm2(x) * (1 + scale2) + shift2
    return x + gate2 * block.mlp(h)


def _final(layer: FinalLayer, x: Tensor, c: Tensor) -> Tensor:
    shift, scale = layer.adaLN_modulation(c).chunk(2, dim=-1)
    return layer.linear(layer.norm_final(x) * (1 + scale) + shift)


class ReferenceSiT(nn.Module):
    """A SiT at the release's costs (module docstring); its parameters are the wrapped model's."""

    def __init__(self, model: SiT):
        super().__init__()
        self.model = model
        self.in_channels = model.in_channels
        self.num_classes = model.num_classes
        self.depth = model.depth
        self.hidden_size = model.hidden_size

    def _run(self, x: Tensor, t: Tensor, y: Tensor, groups, separate: bool, keep: int | None):
        """-> (velocity, hidden state after block `keep` or None, per-token conditioning (N, T, D)), every
        block run."""
        m = self.model
        m.check_inputs(x, t, y)
        h = m.x_embedder(x) + m.pos_embed
        t = t[:, None] if t.ndim == 1 else t
        N, K = t.shape
        if groups is None and K != 1:
            raise ValueError(f"t has {K} columns (one per group) but no groups were given")
        if separate and not torch.is_tensor(groups):
            raise ValueError("separate=True goes with an (N, T) group-id tensor (a SegmentLayout says "
                             "layout.separate)")
        # (N, K, D): one conditioning per (sample, timestep column)
        c = m.t_embedder(t.reshape(-1)).view(N, K, -1) + m.y_embedder(y)[:, None]
        if groups is None:
            attn_ids = None
            c = c.expand(-1, h.shape[1], -1)
        else:
            cond_ids, attn_ids = reference_ids(groups, separate)
            # one timestep column: every token takes it
            cond_ids = cond_ids if K > 1 else torch.zeros_like(cond_ids)
            c = c.gather(1, cond_ids[..., None].expand(-1, -1, c.shape[-1]))
        kept = None
        for i, block in enumerate(m.blocks, start=1):
            h = _block(block, h, c, attn_ids)
            if i == keep:
                kept = h
        v = m.unpatchify(_final(m.final_layer, h, c))[:, : m.in_channels]
        return v, kept, c

    def forward(self, x: Tensor, t: Tensor, y: Tensor, groups=None, separate: bool = False,
                align_layer: int | None = None):
        """As SiT.forward: the velocity, or (velocity, head(h_m)) with align_layer=m."""
        v, h, c = self._run(x, t, y, groups, separate, align_layer)
        if align_layer is None:
            return v
        if h is None:
            raise ValueError(f"align_layer={align_layer} is outside the model's blocks 1..{self.depth}")
        # the head reads the blocks' conditioning after adaLN's SiLU, as SiT.head
        return v, self.model.head(h, F.silu(c))

    def forward_features(self, x: Tensor, t: Tensor, y: Tensor, layer: int, groups=None,
                         separate: bool = False) -> Tensor:
        """As SiT.forward_features (N, T, D), raster order, but every block and the final layer are run."""
        if not 1 <= layer <= self.depth:
            raise ValueError(f"layer must be in 1..{self.depth}, got {layer}")
        return self._run(x, t, y, groups, separate, layer)[1]
