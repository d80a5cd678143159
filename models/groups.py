"""Token groups for dual-timestep scheduling (DTS) and Attention Separation (AS), paper Eq. 5-9.

A sample's T tokens are split into groups of the same sizes in every sample (the loss draws exact counts);
group s is noised at its own timestep t[:, s] (DTS) and, under AS, attends only to tokens of its own group
(A_ij = 1[g_i = g_j], Eq. 8-9). `SegmentLayout` tells the model: each sample's tokens are permuted once into
group-contiguous order right after the patch embedding (positional embeddings travel with the tokens). In that
order group s is a contiguous segment of sizes[s] tokens: conditioning is broadcast per segment (adaLN runs on
(N, S) vectors, never per token) and attention is plain fused SDPA on each segment, with no mask. The first
`num_full` rows are full-image samples (Fig. 5): one timestep for all their tokens, attention across all of
them. The output is un-permuted once at the end.

When the segment sizes are multiples of one unit (64 + 192 = 1 + 3 units of 64 at alpha 0.25), the tokens are
also `units` equal slices and the conditioning is given per unit: modulation is then a broadcast over a view
(N, units, T / units, D), the same kernels as a plain SiT block, no split and no cat. Sizes without a small
common unit (alpha 0.35: 89 + 167) fall back to a loop over the segments.

`SegmentLayout.from_perm` is the loss's constructor (no host sync). `SegmentLayout.from_ids` reads the model's
public (N, T) group-id call (one host sync); group sizes that differ between samples are the business of
models/reference.py (dense masked attention), not of the model.
"""
import math
from dataclasses import dataclass

import torch
from torch import Tensor


# the most equal slices the conditioning is given per (adaLN rows per sample: cheap next to T tokens)
MAX_UNITS = 8


def _gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x (N, T, D), index (N, T') -> (N, T', D)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@dataclass
class SegmentLayout:
    # (N, T) token order: perm[n, j] = the raster index of the j-th token in group order
    perm: Tensor
    # (N, T) the inverse of perm
    inv_perm: Tensor
    # the segment lengths (python ints), the same for every row
    sizes: tuple[int, ...]
    # AS: rows [num_full, N) attend within their segments only
    separate: bool
    # rows [0, num_full) attend across all their tokens (full-image samples)
    num_full: int = 0
    # the segment of each of `units` equal slices of the tokens, in segment order (None: no common unit of at
    # most MAX_UNITS)
    unit_segment: tuple[int, ...] | None = None

    @staticmethod
    def from_perm(perm: Tensor, sizes, separate: bool, num_full: int = 0) -> "SegmentLayout":
        """The loss's layout: tokens perm[:, :sizes[0]] form group 0, the next sizes[1] group 1, ...; rows
        [0, num_full) use full attention (full-image mixing; the loss gives them one timestep)."""
        sizes = tuple(int(s) for s in sizes)
        if sum(sizes) != perm.shape[1]:
            raise ValueError(f"group sizes {sizes} do not add up to the {perm.shape[1]} tokens")
        if not 0 <= num_full <= perm.shape[0]:
            raise ValueError(f"num_full {num_full} is outside 0..{perm.shape[0]} rows")
        # every row full: nothing is separated
        separate = separate and num_full < perm.shape[0]
        unit = math.gcd(*sizes)
        units = None
        if sum(sizes) // unit <= MAX_UNITS:
            units = tuple(s for s, n in enumerate(sizes) for _ in range(n // unit))
        # the inverse permutation: x.gather(perm).gather(inv) == x
        inv_perm = perm.argsort(dim=1)
        return SegmentLayout(perm, inv_perm, sizes, separate, int(num_full), units)

    def per_unit(self, t: Tensor) -> Tensor:
        """t (N, S), one column per segment -> (N, units), one per equal slice (the units run in segment
        order: one cat of expanded columns, no index tensor to copy to the device)."""
        runs = [self.unit_segment.count(s) for s in range(t.shape[1])]
        return torch.cat([t[:, s:s + 1].expand(-1, n) for s, n in enumerate(runs)], dim=1)

    @staticmethod
    def from_ids(ids: Tensor, t: Tensor, separate: bool) -> tuple[Tensor, Tensor, "SegmentLayout"]:
        """The (N, T) group-id call: ids[n, i] is the column of t (N, K) that token i uses; with `separate`,
        tokens attend within their group. -> (row order, t per segment (N, S) in that order, the layout of
        the reordered rows). Rows with one group are full rows and come first; the other rows must share their
        group sizes. One host sync."""
        if ids.ndim != 2 or ids.dtype != torch.long:
            raise ValueError(f"groups must be an int64 tensor of shape (N, T), got {tuple(ids.shape)} "
                             f"{ids.dtype}")
        K = 1 if t.ndim == 1 else t.shape[1]
        t = t.reshape(-1, K)
        N, T = ids.shape
        counts = torch.zeros(N, K, dtype=torch.long, device=ids.device)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= K):
            raise ValueError(f"group ids must lie in [0, {K}) (t has {K} columns), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        counts.scatter_add_(1, ids, torch.ones_like(ids))
        # the one host sync
        rows = counts.tolist()
        single = [sum(c > 0 for c in row) == 1 for row in rows]
        patterns = {tuple(row) for row, one in zip(rows, single) if not one}
        if len(patterns) > 1:
            raise ValueError(f"group sizes differ between samples ({sorted(patterns)}): the model's layout "
                             f"needs one split for every sample; models.reference.ReferenceSiT (dense masked "
                             f"attention) takes any split")
        pattern = patterns.pop() if patterns else (T,) + (0,) * (K - 1)
        present = [k for k, n in enumerate(pattern) if n > 0]
        # rows of one group first (stable), then the others
        order = torch.tensor(sorted(range(N), key=lambda n: not single[n]), device=ids.device)
        ids = ids[order]
        t = t[order]
        num_full = sum(single)
        perm = torch.argsort(ids, dim=1, stable=True)
        # a full row keeps raster order; its segments all take its one timestep
        perm[:num_full] = torch.arange(T, device=ids.device)
        columns = torch.tensor(present, device=ids.device).expand(N, -1).clone()
        columns[:num_full] = ids[:num_full, :1]
        layout = SegmentLayout.from_perm(perm, [pattern[k] for k in present], separate, num_full)
        return order, t.gather(1, columns), layout

    def to_groups(self, x: Tensor) -> Tensor:
        """(N, T, D) raster order -> group order."""
        return _gather_tokens(x, self.perm)

    def to_raster(self, x: Tensor) -> Tensor:
        """(N, T, D) group order -> raster order."""
        return _gather_tokens(x, self.inv_perm)
