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


def separated_attention(qkv: Tensor, layout: SegmentLayout | None, q_norm: nn.Module = nn.Identity(),
                        k_norm: nn.Module = nn.Identity()) -> Tensor:
    """qkv (N, T, 3, H, hd) in layout order -> (N, T, H, hd), attending as `layout` says (None: full
    attention). Separated rows: one fused, unmasked SDPA per contiguous group; the first num_full rows
    (full-image samples) attend across all their tokens. One split of qkv (its backward is one cat) and one
    cat of the outputs: no gathers, no masks, no copies."""

    def attend(part: Tensor) -> Tensor:
        # (n, t, 3, H, hd) -> 3 x (n, H, t, hd) -> (n, t, H, hd)
        q, k, v = part.permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q_norm(q), k_norm(k), v).transpose(1, 2)

    if layout is None or not layout.separate:
        return attend(qkv)
    full = layout.num_full
    rows = qkv.split((full, qkv.shape[0] - full)) if full else (None, qkv)
    out = torch.cat([attend(group) for group in rows[1].split(layout.sizes, dim=1)], dim=1)
    return torch.cat([attend(rows[0]), out]) if full else out


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
        qkv = self.qkv(x).view(N, T, 3, self.num_heads, self.head_dim)     # (N, T, 3, H, hd)
        o = separated_attention(qkv, layout, self.q_norm, self.k_norm)       # (N, T, H, hd)
        return self.proj(o.reshape(N, T, D))
