"""Multi-head self-attention with Attention Separation (paper Eq. 8-9), and the dense reference it is tested against.

Key names (`qkv`, `proj`, `q_norm`, `k_norm`) match timm's Attention, so public SiT / REPA / SRA checkpoints load.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .groups import MaskLayout, SegmentLayout


def separated_attention(q: Tensor, k: Tensor, v: Tensor, layout) -> Tensor:
    """q, k, v (N, H, T, hd) -> (N, H, T, hd), attending as `layout` says (None = full attention)."""
    if layout is None or not layout.separate:
        return F.scaled_dot_product_attention(q, k, v)
    if isinstance(layout, MaskLayout):                       # unequal group sizes: boolean-mask fallback
        return F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask)
    assert isinstance(layout, SegmentLayout)
    rows = layout.sep_rows
    qs, ks, vs = (q, k, v) if rows is None else (q[rows], k[rows], v[rows])
    out, a = [], 0
    for n in layout.sizes:                                   # one fused, unmasked SDPA per contiguous group
        out.append(F.scaled_dot_product_attention(qs[:, :, a:a + n], ks[:, :, a:a + n], vs[:, :, a:a + n]))
        a += n
    sep = torch.cat(out, dim=2)                              # (N_sep, H, T, hd)
    if rows is None:
        return sep
    full_rows = layout.full_rows                             # full-image rows: plain full attention
    full = F.scaled_dot_product_attention(q[full_rows], k[full_rows], v[full_rows])
    return torch.empty_like(q).index_copy(0, full_rows, full).index_copy(0, rows, sep)


def dense_masked_attention(q: Tensor, k: Tensor, v: Tensor, ids: Tensor | None = None) -> Tensor:
    """The reference: materialise q k^T, fill -inf across groups (ids (N, T), raster order), softmax, times v."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5             # (N, H, T, T)
    if ids is not None:
        same = ids[:, None, :, None] == ids[:, None, None, :]             # (N, 1, T, T): A_ij = 1[g_i = g_j]
        scores = scores.masked_fill(~same, float("-inf"))
    return scores.softmax(dim=-1) @ v


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        assert dim % num_heads == 0, f"width {dim} is not divisible by {num_heads} heads"
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, layout=None, ref=None) -> Tensor:
        """ref: None (fast path) or (ids or None,) for the dense reference with ids (N, T) raster-order groups."""
        N, T, D = x.shape
        q, k, v = self.qkv(x).view(N, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)                              # (N, H, T, hd) each
        if ref is not None:                                                # tests and --reference-impl only
            o = dense_masked_attention(q, k, v, ref[0])
        else:
            o = separated_attention(q, k, v, layout)
        return self.proj(o.transpose(1, 2).reshape(N, T, D))
