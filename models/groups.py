"""Token groups for dual-timestep scheduling (DTS) and Attention Separation (AS), paper Eq. 5-9.

A sample's T tokens are split into groups; group k is noised at its own timestep t[:, k] (DTS) and, under
AS, attends only to tokens of its own group (A_ij = 1[g_i = g_j], Eq. 8-9). Two layouts describe this to the
model:

SegmentLayout (the fast path). Every separated sample has the same group sizes (the loss draws exact counts),
so each sample's tokens are permuted once into group-contiguous order right after the patch embedding
(positional embeddings travel with the tokens). Inside that order a group is a contiguous segment [a, b):
conditioning is broadcast per segment (adaLN runs on (N, S) vectors, never per token) and attention is plain
fused SDPA on each segment, with no mask. "Full" rows (full-image mixing, or samples whose tokens are all in
one group) attend across all T tokens. The output is un-permuted once at the end.

MaskLayout (the fallback). Group sizes differ between samples: tokens stay in raster order, the (N, K)
modulation is gathered per token, and attention is SDPA with a boolean (N, 1, T, T) mask.

`plan_groups(ids, K, separate)` turns an (N, T) int64 group-id tensor into one of these; it reads the group
sizes back to the host (one sync). The training loss builds a SegmentLayout directly with
`SegmentLayout.from_perm` and never syncs.
"""
from dataclasses import dataclass

import torch
from torch import Tensor


def _inverse_perm(perm: Tensor) -> Tensor:
    """(N, T) permutation -> its inverse, so that x.gather(perm).gather(inv) == x."""
    ar = torch.arange(perm.shape[1], device=perm.device).expand_as(perm)
    return torch.empty_like(perm).scatter_(1, perm, ar)


def _gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x (N, T, D), index (N, T') -> (N, T', D)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@dataclass
class SegmentLayout:
    # (N, T) token order: perm[n, j] = the raster index of the j-th token in group order
    perm: Tensor
    # (N, T) the inverse of perm
    inv_perm: Tensor
    # (S,) python ints: the segment lengths, the same for every row
    sizes: tuple
    # (N, S) which of the K timesteps each segment uses; None: segment s uses t[:, s]
    seg_cond: Tensor | None
    # AS on: separated rows attend within their segments only
    separate: bool
    # (F,) rows attending across all tokens although separate=True (None: no such row)
    full_rows: Tensor | None
    # (N - F,) the other rows (None when F == 0)
    sep_rows: Tensor | None

    @staticmethod
    def from_perm(perm: Tensor, sizes, separate: bool, num_full: int = 0) -> "SegmentLayout":
        """The loss's layout: tokens perm[:, :sizes[0]] form group 0, the next sizes[1] group 1, ...; rows
        [0, num_full) use full attention (full-image mixing; the loss gives them one timestep)."""
        sizes = tuple(int(s) for s in sizes)
        if sum(sizes) != perm.shape[1]:
            raise ValueError(f"group sizes {sizes} do not add up to the {perm.shape[1]} tokens")
        N, dev = perm.shape[0], perm.device
        full = sep = None
        if separate and 0 < num_full < N:
            full, sep = torch.arange(num_full, device=dev), torch.arange(num_full, N, device=dev)
        separate = separate and num_full < N
        return SegmentLayout(perm, _inverse_perm(perm), sizes, None, separate, full, sep)

    def to_groups(self, x: Tensor) -> Tensor:          # (N, T, D) raster -> group order
        return _gather_tokens(x, self.perm)

    def to_raster(self, x: Tensor) -> Tensor:          # (N, T, D) group order -> raster
        return _gather_tokens(x, self.inv_perm)

    def arrange_cond(self, c: Tensor) -> Tensor:       # (N, K, D) per-timestep -> (N, S, D) per segment
        return c if self.seg_cond is None else _gather_tokens(c, self.seg_cond)

    def expand_mod(self, mod: Tensor) -> Tensor:
        # segment mode: modulation stays per segment
        return mod


@dataclass
class MaskLayout:
    ids: Tensor                  # (N, T) group of each token, raster order
    mask: Tensor | None          # (N, 1, T, T) bool, True = may attend; None when not separated
    separate: bool
    sizes = None

    def to_groups(self, x: Tensor) -> Tensor:
        return x

    def to_raster(self, x: Tensor) -> Tensor:
        return x

    def arrange_cond(self, c: Tensor) -> Tensor:
        return c

    def expand_mod(self, mod: Tensor) -> Tensor:       # (N, K, M) -> (N, T, M): gathered per token
        return mod if mod.shape[1] == 1 else _gather_tokens(mod, self.ids)


# what the model takes as `groups` once planned
Layout = SegmentLayout | MaskLayout


def plan_groups(ids: Tensor, num_groups: int, separate: bool) -> Layout:
    """Choose the layout for an (N, T) int64 group-id tensor (values in [0, num_groups)). One host sync."""
    if ids.ndim != 2 or ids.dtype != torch.long:
        raise ValueError(f"groups must be an int64 tensor of shape (N, T), "
                         f"got {tuple(ids.shape)} {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_groups):
        raise ValueError(f"group ids must lie in [0, {num_groups}) (t has {num_groups} columns), "
                         f"got [{int(ids.min())}, {int(ids.max())}]")
    N, T = ids.shape
    counts = torch.zeros(N, num_groups, dtype=torch.long, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids))
    # the one host sync
    counts_h = counts.tolist()
    single = [sum(c > 0 for c in row) == 1 for row in counts_h]
    patterns = {tuple(row) for row, s in zip(counts_h, single) if not s}
    if len(patterns) > 1:
        # sizes differ between samples
        mask = (ids[:, None, :, None] == ids[:, None, None, :]) if separate else None
        return MaskLayout(ids, mask, separate)
    if patterns:
        # one common split: segment per group
        pattern = patterns.pop()
        present = [k for k, n in enumerate(pattern) if n > 0]
        sizes = tuple(pattern[k] for k in present)
    else:
        # every row is a single group
        present, sizes = [0], (T,)
    # group-contiguous order
    perm = torch.argsort(ids, dim=1, stable=True)
    seg_cond = torch.tensor(present, device=ids.device).expand(N, -1).clone()
    single_t = torch.tensor(single, device=ids.device)
    if single_t.any():
        # full rows: one group everywhere
        perm[single_t] = torch.arange(T, device=ids.device)
        seg_cond[single_t] = ids[single_t, :1]
    full = sep = None
    if separate and single_t.any() and not single_t.all():
        full, sep = single_t.nonzero().squeeze(1), (~single_t).nonzero().squeeze(1)
    separate = separate and not single_t.all()
    return SegmentLayout(perm, _inverse_perm(perm), sizes, seg_cond, separate, full, sep)
