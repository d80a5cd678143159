"""SiT (Scalable Interpolant Transformers) with per-group timesteps and Attention Separation.

Time convention (METHOD.md section 1): t = 1 is pure noise, t = 0 is data; the network predicts v = eps - x0.
State-dict keys and shapes match the public SiT / REPA / SRA checkpoints (tests/test_models.py checks the key
tables).

Calls:
    model(x, t, y)                                t (N,): the plain SiT call -> velocity shaped like x
    model(x, t, y, groups=layout)                 t (N, S), layout a SegmentLayout (models/groups.py, built by
                                                  the loss): segment s is conditioned on t[:, s] (DTS,
                                                  Eq. 5-6) and, if layout.separate, attends within itself only
                                                  (AS, Eq. 8-9)
    model(x, t, y, groups=g, separate=True)       the same said with g (N, T) int64 group ids into t's
                                                  columns (SegmentLayout.from_ids; one host sync)
    model(..., align_layer=m)                     -> (velocity, head(h_m)): the student's alignment features
    model.forward_features(x, t, y, layer=k, ...) -> (N, T, D) hidden state after block k (1-based), raster
                                                  order
Label dropout is not done here: the loss drops labels (so the teacher can see either version) and passes the
null class index `num_classes` explicitly. models/reference.py runs the same math at the public release's
costs, for tests and bench.py.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor

from .attention import Attention
from .groups import SegmentLayout

# separate= belongs to the (N, T) group-id call; a SegmentLayout carries its own
SEPARATE_WITH_IDS = "separate=True goes with an (N, T) group-id tensor (a SegmentLayout says layout.separate)"


# ------------------------------------------------------------------------------------------------------------
# Embeddings
# ------------------------------------------------------------------------------------------------------------

def sincos_pos_embed_2d(dim: int, grid: int) -> np.ndarray:
    """Fixed 2-D sin-cos table (grid*grid, dim), raster order (token = row * grid + col).

    Channels [0, dim/2) encode the column, [dim/2, dim) the row; each half is [sin(p w_k), cos(p w_k)] with
    w_k = 10000^(-k / (dim/4)) (the MAE table SiT uses)."""
    assert dim % 4 == 0, f"pos-embed width {dim} must be divisible by 4"
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))      # (dim/4,)
    axis = np.arange(grid, dtype=np.float64)
    rows, cols = np.meshgrid(axis, axis, indexing="ij")

    def half(pos):                                                                   # (grid*grid, dim/2)
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([half(cols), half(rows)], axis=1).astype(np.float32)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:                 # (N, C, H, W) -> (N, T, D), raster order
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] (no x1000) -> 256-d [cos, sin] sinusoid (max period 10000) -> MLP(256 -> D -> D).

    The sinusoid is computed in fp32 and cast to the MLP's dtype, so a model run in fp64 or fp16 without
    autocast gets its own dtype back (under autocast the MLP casts as usual)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        # the sinusoid's frequencies exp(-ln(10000) k / (freq_dim / 2)), a constant (not saved)
        self.register_buffer("freqs", sinusoid_freqs(freq_dim), persistent=False)

    def forward(self, t: Tensor) -> Tensor:                 # (M,) -> (M, D)
        args = t.float()[:, None] * self.freqs[None]
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def sinusoid_freqs(freq_dim: int, device: torch.device | str | None = None) -> Tensor:
    """(freq_dim / 2,) fp32: exp(-ln(10000) k / (freq_dim / 2)), k = 0, 1, ..."""
    half = freq_dim // 2
    return torch.exp(-math.log(10000) * torch.arange(half, device=device, dtype=torch.float32) / half)


class LabelEmbedder(nn.Module):
    """Class table with one extra row (index num_classes) for the null class of classifier-free guidance.

    The row exists whatever the label-dropout rate (the loss drops labels): a model trained with
    --class-dropout-prob 0 still takes the null label at sampling time, and its file still says its class
    count (rows - 1, as the public SiT / REPA / SRA files with their 1001 rows)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor) -> Tensor:
        return self.embedding_table(y)


# ------------------------------------------------------------------------------------------------------------
# Blocks. Conditioning rows are (N, R, D): R = 1 (one per sample), R = the layout's units (equal slices of
# the tokens, models/groups.py) or R = its segments when their sizes share no small unit. Each row modulates
# its own tokens; models/reference.py runs the same blocks with per-token (N, T, D) modulation.
# ------------------------------------------------------------------------------------------------------------

def _slices(u: Tensor, rows: int) -> Tensor:
    """(N, T, D) -> (N, rows, T / rows, D): equal slices of the tokens, a view."""
    return u.view(u.shape[0], rows, -1, u.shape[-1])


def _multiply_add(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """a + b c: one fused kernel without gradients (the EMA teacher, sampling); with them two, whose backward
    is cheaper than the fused kernel's."""
    return a + b * c if torch.is_grad_enabled() else torch.addcmul(a, b, c)


def _modulate(x: Tensor, shift: Tensor, scale1p: Tensor, layout: SegmentLayout | None) -> Tensor:
    """x (1 + scale) + shift, scale1p = 1 + scale: a broadcast over the view of equal slices when there are
    units (the kernels of a plain block), a loop over the segments otherwise."""
    rows = shift.shape[1]
    # one row per sample, or per token (models/reference.py): a broadcast
    if rows == 1 or layout is None:
        return _multiply_add(shift, x, scale1p)
    if layout.unit_segment is not None:
        return _multiply_add(shift[:, :, None], _slices(x, rows), scale1p[:, :, None]).view_as(x)
    parts = x.split(layout.sizes, dim=1)
    return torch.cat([_multiply_add(shift[:, s:s + 1], p, scale1p[:, s:s + 1]) for s, p in enumerate(parts)],
                     dim=1)


def _gated_add(x: Tensor, y: Tensor, gate: Tensor, layout: SegmentLayout | None) -> Tensor:
    """x + gate y (the residual of adaLN-Zero), per conditioning row as _modulate."""
    rows = gate.shape[1]
    if rows == 1 or layout is None:
        return _multiply_add(x, y, gate)
    if layout.unit_segment is not None:
        return _multiply_add(_slices(x, rows), _slices(y, rows), gate[:, :, None]).view_as(x)
    parts = zip(x.split(layout.sizes, dim=1), y.split(layout.sizes, dim=1))
    return torch.cat([_multiply_add(xs, ys, gate[:, s:s + 1]) for s, (xs, ys) in enumerate(parts)], dim=1)


def scale_ones(dim: int, device: torch.device | str | None = None) -> Tensor:
    """(6D,) zeros with ones on the two scale chunks of a block's modulation (shift, scale, gate) x 2."""
    ones = torch.zeros(6 * dim, device=device)
    ones[dim:2 * dim] = 1
    ones[4 * dim:5 * dim] = 1
    return ones


class SiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        # keys mlp.fc1 / mlp.fc2, as timm's Mlp
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, hidden))
        self.mlp.add_module("act", nn.GELU(approximate="tanh"))
        self.mlp.add_module("fc2", nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        # the 1 of (1 + scale) in both scale chunks, added to the modulation in one kernel (not saved)
        self.register_buffer("scale_one", scale_ones(dim), persistent=False)

    def forward(self, x: Tensor, c: Tensor, layout: SegmentLayout | None = None) -> Tensor:
        """x (N, T, D) in layout order; c (N, R, D): one conditioning row per sample, unit or segment, after
        the SiLU of adaLN (SiT.forward applies it once for all blocks)."""
        # (N, R, 6D): once per row, the scales as 1 + scale
        mod = self.adaLN_modulation[1](c) + self.scale_one
        sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, dim=-1)                   # 6 x (N, R, D)
        h = _modulate(self.norm1(x), sh1, sc1, layout)                      # (N, T, D)
        x = _gated_add(x, self.attn(h, layout), g1, layout)                 # (N, T, D)
        h = _modulate(self.norm2(x), sh2, sc2, layout)                      # (N, T, D)
        return _gated_add(x, self.mlp(h), g2, layout)                       # (N, T, D)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor, layout: SegmentLayout | None = None) -> Tensor:
        """x (N, T, D), c (N, R, D) after adaLN's SiLU (as SiTBlock) -> (N, T, p*p*C_out), in layout order."""
        shift, scale = self.adaLN_modulation[1](c).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, 1 + scale, layout))


class SimpleHead(nn.Module):
    """SRA projector g (keys ap_head.linear1 / linear2): Linear(D, 2D) -> SiLU -> Linear(2D, out)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, 2 * dim)
        self.act = nn.SiLU()
        self.linear2 = nn.Linear(2 * dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.act(self.linear1(x)))


class SRA2Head(nn.Module):
    """SRA 2's projector (keys ap_head.mlp.{0,2,...}, ap_head.final_layer.*), our reading of the description
    its author gave (SRA issue #6; no official code): `depth` Linear(D, D) + SiLU layers, then a SiT-style
    final layer: LayerNorm, shift / scale from the block's conditioning c (adaLN), Linear(D, out).

    forward(h (N, T, D) in layout order, c (N, R, D), layout) -> (N, T, out) in layout order; c is the blocks'
    conditioning after adaLN's SiLU: one row per sample, unit or segment of the layout, or per token
    (models/reference.py, layout None)."""

    def __init__(self, dim: int, out_dim: int, depth: int):
        super().__init__()
        self.mlp = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(dim, dim), nn.SiLU())])
        self.final_layer = FinalLayer(dim, 1, out_dim)

    def forward(self, h: Tensor, c: Tensor, layout: SegmentLayout | None = None) -> Tensor:
        return self.final_layer(self.mlp(h), c, layout)


# SRA2Head's MLP layers by default: "about 5 MLP layers" (presets.py)
SRA2_HEAD_DEPTH = 5


def repa_projector(dim: int, z_dim: int, hidden: int = 2048) -> nn.Sequential:
    """REPA projector (keys projectors.0.{0,2,4}): D -> 2048 -> 2048 -> z_dim with SiLU."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, z_dim))


# ------------------------------------------------------------------------------------------------------------
# SiT
# ------------------------------------------------------------------------------------------------------------

# the Hub tags of a PyTorchModelHubMixin save
HUB_TAGS = ["sit", "flow-matching", "class-conditional-image-generation"]


class SiT(nn.Module, PyTorchModelHubMixin, tags=HUB_TAGS):
    """SiT.from_pretrained(DIR) reads a model folder (models/hf.py: python -m models.export CKPT DIR --format
    hf): config.json holds the constructor's arguments, model.safetensors the weights, loaded strictly."""

    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4,
                 hidden_size: int = 1152, depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0,
                 num_classes: int = 1000,
                 learn_sigma: bool = False, qk_norm: bool = False, align_head: str | None = None,
                 z_dim: int | None = None, head_depth: int | None = None):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch size {patch_size}")
        if align_head not in (None, "ap_head", "projector", "sra2"):
            raise ValueError(f"align_head must be None, 'ap_head' (SRA), 'projector' (REPA) or 'sra2' "
                             f"(SRA 2), got {align_head!r}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.depth = depth
        # recompute each block in backward (train.py flag)
        self.grad_checkpointing = False
        self.grid = input_size // patch_size
        self.num_tokens = self.grid ** 2

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([SiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm)
                                     for _ in range(depth)])
        self.align_head = align_head
        if align_head == "ap_head":
            self.ap_head = SimpleHead(hidden_size, z_dim or hidden_size)
        elif align_head == "projector":
            self.projectors = nn.ModuleList([repa_projector(hidden_size, z_dim or 768)])
        elif align_head == "sra2":
            depth_of_head = SRA2_HEAD_DEPTH if head_depth is None else head_depth
            self.ap_head = SRA2Head(hidden_size, z_dim or hidden_size, depth_of_head)
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """SiT's initialisation: xavier-uniform linears with zero bias, frozen sin-cos pos_embed, xavier patch
        embedding on its flattened (D, C*p*p) view, N(0, 0.02) label table and t-MLP, adaLN-Zero blocks and a
        zero final layer (the initial output is exactly 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.pos_embed.data.copy_(torch.from_numpy(sincos_pos_embed_2d(self.hidden_size, self.grid))[None])
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.align_head == "sra2":
            # adaLN-Zero: the SRA 2 head's final layer starts as LayerNorm + Linear
            nn.init.zeros_(self.ap_head.final_layer.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.ap_head.final_layer.adaLN_modulation[-1].bias)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         config: dict | None = None, map_location: str = "cpu", **model_kwargs) -> "SiT":
        from .hf import load_pretrained
        hub = dict(revision=revision, cache_dir=cache_dir, force_download=force_download,
                   local_files_only=local_files_only, token=token)
        return load_pretrained(cls, model_id, model_kwargs, config, map_location, hub)

    def materialize_constants(self) -> None:
        """Rebuild the non-saved constant buffers next to the weights (after a load into a model built on the
        meta device, where they stayed without storage)."""
        device = self.t_embedder.mlp[0].weight.device
        self.t_embedder.freqs = sinusoid_freqs(self.t_embedder.freq_dim, device=device)
        for block in self.blocks:
            block.scale_one = scale_ones(self.hidden_size, device=device)

    # ---- input checks and embedding ------------------------------------------------------------------------
    def check_inputs(self, x: Tensor, t: Tensor, y: Tensor) -> None:
        """Refuse inputs of the wrong shape with a message that says the expected one."""
        C = self.in_channels
        S = self.input_size
        if x.ndim != 4 or x.shape[1:] != (C, S, S):
            raise ValueError(f"x must be (N, {C}, {S}, {S}) for this model, got {tuple(x.shape)}")
        N = x.shape[0]
        if t.shape[:1] != (N,) or t.ndim not in (1, 2):
            raise ValueError(f"t must be (N,) or (N, K) with N = {N}, got {tuple(t.shape)}")
        if y.shape != (N,):
            raise ValueError(f"y must be (N,) = ({N},) class indices, got {tuple(y.shape)}")

    def _embed(self, x: Tensor, t: Tensor, y: Tensor, layout: SegmentLayout | None):
        """-> tokens (N, T, D) in layout order, SiLU(conditioning) (N, R, D): R = 1 without a layout or with
        one timestep per sample, else one row per unit or segment of the layout."""
        self.check_inputs(x, t, y)
        h = self.x_embedder(x) + self.pos_embed                              # (N, T, D), raster order
        t = t[:, None] if t.ndim == 1 else t
        N, S = t.shape
        if layout is None and S != 1:
            raise ValueError(f"t has {S} columns (one per group) but no groups were given")
        if layout is not None and S not in (1, len(layout.sizes)):
            raise ValueError(f"t has {S} columns but the layout has {len(layout.sizes)} groups")
        if layout is not None and S > 1 and layout.unit_segment not in (None, tuple(range(S))):
            # (N, R): the timestep of each equal slice of the tokens
            t = layout.per_unit(t)
        R = t.shape[1]
        # (N, R, D): once per (sample, row), never per token; the SiLU that opens every adaLN, once
        c = F.silu(self.t_embedder(t.reshape(-1)).view(N, R, -1) + self.y_embedder(y)[:, None])
        return (h, c) if layout is None else (layout.to_groups(h), c)

    def _grouped_by_ids(self, call, x: Tensor, t: Tensor, y: Tensor, ids: Tensor, separate: bool, **kw):
        """The (N, T) group-id call: rows reordered so that one-group rows come first
        (SegmentLayout.from_ids), `call` run on them, the outputs put back in the caller's row order."""
        order, t, layout = SegmentLayout.from_ids(ids, t, separate)
        out = call(x[order], t, y[order], groups=layout, **kw)
        undo = order.argsort()
        return tuple(o[undo] for o in out) if isinstance(out, tuple) else out[undo]

    # ---- forward -------------------------------------------------------------------------------------------
    def unpatchify(self, tokens: Tensor) -> Tensor:
        """(N, T, p*p*C) raster-order tokens -> (N, C, H, W)."""
        N = tokens.shape[0]
        p = self.patch_size
        g = self.grid
        C = self.out_channels
        x = tokens.reshape(N, g, g, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(N, C, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, groups: SegmentLayout | Tensor | None = None,
                separate: bool = False, align_layer: int | None = None,
                sigma: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (N, C, H, W), t (N,) or (N, S), y (N,) -> velocity (N, C, H, W), or (velocity, head(h_m)) with
        align_layer = m: the one call that runs the student, so DDP sees the head's parameters used.
        sigma=True: all out_channels (2C with learn_sigma: DDPM's eps and variance, ddpm.py), not only the
        first C."""
        if torch.is_tensor(groups):
            return self._grouped_by_ids(self.forward, x, t, y, groups, separate, align_layer=align_layer,
                                        sigma=sigma)
        if separate:
            raise ValueError(SEPARATE_WITH_IDS)
        layout = groups
        h, c = self._embed(x, t, y, layout)                                  # (N, T, D), (N, S, D)
        feats = None                                                         # (N, T, D_head) once block m ran
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks, start=1):
            if recompute:
                # keeps only the block's inputs for backward
                h = torch.utils.checkpoint.checkpoint(block, h, c, layout, use_reentrant=False)  # (N, T, D)
            else:
                h = block(h, c, layout)                                      # (N, T, D)
            if i == align_layer:
                feats = self.head(h, c, layout)                              # (N, T, D_head), raster
        out = self.final_layer(h, c, layout)                                 # (N, T, p*p*C_out), layout order
        if layout is not None:
            out = layout.to_raster(out)                                      # (N, T, p*p*C_out), raster
        # learn_sigma: keep the velocity part (all 2C channels with sigma=True)
        v = self.unpatchify(out)                                             # (N, C_out, H, W)
        v = v if sigma else v[:, : self.in_channels]                         # (N, C or C_out, H, W)
        if align_layer is None:
            return v
        if feats is None:
            raise ValueError(f"align_layer={align_layer} is outside the model's blocks 1..{self.depth}")
        return v, feats

    def head(self, h: Tensor, c: Tensor | None = None, layout: SegmentLayout | None = None) -> Tensor:
        """The student's alignment head applied to (N, T, D) hidden states in layout order -> raster order.
        c: the blocks' conditioning after adaLN's SiLU (N, R, D), read by the SRA 2 head only."""
        if self.align_head == "sra2":
            out = self.ap_head(h, c, layout)
        elif self.align_head == "ap_head":
            out = self.ap_head(h)
        elif self.align_head == "projector":
            out = self.projectors[0](h)
        else:
            out = h
        return out if layout is None else layout.to_raster(out)

    def forward_features(self, x: Tensor, t: Tensor, y: Tensor, layer: int,
                         groups: SegmentLayout | Tensor | None = None, separate: bool = False) -> Tensor:
        """(N, T, D) hidden state after block `layer` (1-based), raster order; later blocks are not run."""
        if not 1 <= layer <= self.depth:
            raise ValueError(f"layer must be in 1..{self.depth}, got {layer}")
        if torch.is_tensor(groups):
            return self._grouped_by_ids(self.forward_features, x, t, y, groups, separate, layer=layer)
        if separate:
            raise ValueError(SEPARATE_WITH_IDS)
        layout = groups
        h, c = self._embed(x, t, y, layout)
        for block in self.blocks[:layer]:
            h = block(h, c, layout)
        return h if layout is None else layout.to_raster(h)


# ------------------------------------------------------------------------------------------------------------
# Registry: SiT-{S,B,L,XL}/{2,4,8} as in SiT (depth, width, heads), plus a tiny T for CPU runs and tests and a
# narrower N (width 64) for the CPU ablation study (studies/cpu-ablations/run.sh)
# ------------------------------------------------------------------------------------------------------------

SIZES = {"N": (6, 64, 4), "T": (6, 128, 4), "S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
         "XL": (28, 1152, 16)}


def _make(size: str, patch: int):
    depth, width, heads = SIZES[size]

    def build(**kwargs) -> SiT:
        return SiT(depth=depth, hidden_size=width, num_heads=heads, patch_size=patch, **kwargs)

    build.__name__ = f"SiT_{size}_{patch}"
    return build


SiT_models = {f"SiT-{s}/{p}": _make(s, p) for s in SIZES for p in (2, 4, 8)}
# DiT's names (Peebles & Xie): DiT-{S,B,L,XL}/{2,4,8} is the same network as SiT's of that name (keys,
# adaLN-Zero, learned sigma), trained and sampled with DDPM (ddpm.py) instead of flow matching; DiT-T and
# DiT-N are this codebase's CPU sizes under that name
DIT_NAMES = {f"DiT-{s}/{p}": f"SiT-{s}/{p}" for s in SIZES for p in (2, 4, 8)}


def patch_size_of(name: str) -> int:
    """The patch size a registry name says: 'SiT-XL/2' -> 2."""
    return int(name.rsplit("/", 1)[1])


def model_name_for(depth: int, width: int, patch: int) -> str:
    """The registry name of a (depth, width, patch) triple, e.g. (28, 1152, 2) -> 'SiT-XL/2'."""
    for size, (d, w, _) in SIZES.items():
        if (d, w) == (depth, width):
            return f"SiT-{size}/{patch}"
    raise ValueError(f"no SiT size has depth {depth} and width {width} (known: {SIZES})")
