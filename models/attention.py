"""Multi-head self-attention with Attention Separation (paper Eq. 8-9); models/reference.py has the dense
masked attention it is tested against.

Key names (`qkv`, `proj`, `q_norm`, `k_norm`) match timm's Attention, so public SiT / REPA / SRA checkpoints
load.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .groups import SegmentLayout


def separated_attention(q: Tensor, k: Tensor, v: Tensor, layout: SegmentLayout | None) -> Tensor:
    """q, k, v (N, H, T, hd) in layout order -> (N, H, T, hd), attending as `layout` says (None: full
    attention). Separated rows: one fused, unmasked SDPA per contiguous group; the first num_full rows
    (full-image samples) attend across all their tokens. Slices and cat only, no gathers."""
    if layout is None or not layout.separate:
        return F.scaled_dot_product_attention(q, k, v)
    full = layout.num_full
    out = []
    if full:
        # full-image rows: plain full attention
        out.append(F.scaled_dot_product_attention(q[:full], k[:full], v[:full]))
    segments = []
    start = 0
    for n in layout.sizes:
        # group [start, start + n) of the separated rows
        segments.append(F.scaled_dot_product_attention(*(u[full:, :, start:start + n] for u in (q, k, v))))
        start += n
    out.append(torch.cat(segments, dim=2))
    return out[0] if len(out) == 1 else torch.cat(out, dim=0)


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

    def forward(self, x: Tensor, layout: SegmentLayout | None = None) -> Tensor:
        """x (N, T, D) in layout order -> (N, T, D)."""
        N, T, D = x.shape
        qkv = self.qkv(x).view(N, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                            # (N, H, T, hd) each
        o = separated_attention(self.q_norm(q), self.k_norm(k), v, layout)  # (N, H, T, hd)
        return self.proj(o.transpose(1, 2).reshape(N, T, D))
