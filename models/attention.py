"""Multi-head self-attention with Attention Separation (paper Eq. 8-9); models/reference.py has the dense
masked attention it is tested against.

Key names (`qkv`, `proj`, `q_norm`, `k_norm`) match timm's Attention, so public SiT / REPA / SRA checkpoints
load.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .groups import Layout, MaskLayout, SegmentLayout


def separated_attention(q: Tensor, k: Tensor, v: Tensor, layout: Layout | None) -> Tensor:
    """q, k, v (N, H, T, hd) -> (N, H, T, hd), attending as `layout` says (None = full attention)."""
    if layout is None or not layout.separate:
        return F.scaled_dot_product_attention(q, k, v)
    if isinstance(layout, MaskLayout):
        # unequal group sizes: the boolean-mask fallback
        return F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask)
    assert isinstance(layout, SegmentLayout)
    rows = layout.sep_rows
    # the separated rows: all of them, or those that are not full-image rows
    qkv = (q, k, v) if rows is None else (q[rows], k[rows], v[rows])
    out = []
    start = 0
    for n in layout.sizes:
        # one fused, unmasked SDPA per contiguous group [start, start + n)
        out.append(F.scaled_dot_product_attention(*(u[:, :, start:start + n] for u in qkv)))
        start += n
    sep = torch.cat(out, dim=2)                                          # (N_sep, H, T, hd)
    if rows is None:
        return sep
    # full-image rows: plain full attention
    full_rows = layout.full_rows
    full = F.scaled_dot_product_attention(q[full_rows], k[full_rows], v[full_rows])
    return torch.empty_like(q).index_copy(0, full_rows, full).index_copy(0, rows, sep)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        assert dim % num_heads == 0, f"width {dim} is not divisible by {num_heads} heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, layout: Layout | None = None) -> Tensor:
        """x (N, T, D) in layout order -> (N, T, D)."""
        N, T, D = x.shape
        qkv = self.qkv(x).view(N, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                            # (N, H, T, hd) each
        o = separated_attention(self.q_norm(q), self.k_norm(k), v, layout)  # (N, H, T, hd)
        return self.proj(o.transpose(1, 2).reshape(N, T, D))
