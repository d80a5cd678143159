"""SiT <-> diffusers' DiTTransformer2DModel, and a class-conditional flow-matching pipeline around it.

    python -m models.diffusers_io CKPT_OR_MODEL_DIR OUT_DIR [--vae FOLDER] [--time-convention sit|repa]
    python -m models.diffusers_io --to-sit DIFFUSERS_DIR OUT.safetensors

    from models.diffusers_io import SiTFlowPipeline
    pipe = SiTFlowPipeline.from_pretrained(OUT_DIR)
    images = pipe(class_labels=[207, 360], seeds=[0, 1], mode="sde", num_inference_steps=250,
                  guidance_scale=1.8, guidance_high=0.7).images

The first command writes a diffusers pipeline folder (model_index.json, transformer/, and vae/ when --vae is
given) that SiTFlowPipeline.from_pretrained reads; the second reads one back into a single-file export.

DiTTransformer2DModel is SiT's network with other names (to_diffusers / from_diffusers, tensor by tensor:
the fused qkv split into to_q / to_k / to_v, the one time and label embedder copied into every block's
norm1.emb, the final layer into proj_out_1 / proj_out_2; the sin-cos pos_embed is not stored, both compute the
same table). What its classes cannot say (docs/checkpoints.md):
- the time embedding's frequencies: DiT's CombinedTimestepLabelEmbeddings hard-codes Timesteps(256,
  flip_sin_to_cos=True, downscale_freq_shift=1), i.e. frequencies 10000^(-k / 127), k = 0..127; SiT (and the
  original DiT) use 10000^(-k / 128). No weight change maps one onto the other. The converter sets
  downscale_freq_shift = 0 on every block of the model it returns, and SiTFlowPipeline on the model it
  loads (sit_time_embedding); a transformer/ folder loaded by plain diffusers runs with the other frequencies;
- the time input: SiT takes t in [0, 1] as it is (t = 1 noise); diffusers' DiT pipelines pass DDPM timesteps
  0..999 to an eps-predicting network. SiTFlowPipeline passes t itself; DiTPipeline cannot run these models;
- qk-norm (no DiT config field: refused), the alignment heads (not part of the network that samples: dropped
  and listed), SiT's time convention (converted first: checkpoint.sit_to_ours);
- training mode: diffusers' LabelEmbedding drops labels itself when training; sampling (eval) is unaffected.
The null class is expressed: its table has num_classes + 1 rows (class_dropout_prob 0.1 > 0), row num_classes.
"""
import argparse
import json
import os
import re
import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import EXPORT_KEY, CheckpointError, SiTTimeFlip, load_checkpoint, sit_to_ours
from .sit import SiT, SiT_models, model_name_for
from .vae import decode_latents

# DiTTransformer2DModel's settings that SiT fixes
DIT_FIXED = dict(activation_fn="gelu-approximate", norm_type="ada_norm_zero", norm_elementwise_affine=False,
                 norm_eps=1e-6, attention_bias=True, dropout=0.0)


# ------------------------------------------------------------------------------------------------------------
# Tensors: SiT's names -> DiT's
# ------------------------------------------------------------------------------------------------------------

def dit_config(model: SiT) -> dict:
    """The DiTTransformer2DModel arguments of a SiT."""
    return dict(num_attention_heads=model.num_heads, attention_head_dim=model.hidden_size // model.num_heads,
                in_channels=model.in_channels, out_channels=model.out_channels, num_layers=model.depth,
                sample_size=model.input_size, patch_size=model.patch_size,
                num_embeds_ada_norm=model.num_classes, **DIT_FIXED)


def sit_to_dit_state_dict(sd: dict, depth: int) -> tuple[dict, list[str]]:
    """A SiT state dict -> (DiT state dict, the SiT tensors left out: alignment heads, pos_embed)."""
    out = {"pos_embed.proj.weight": sd["x_embedder.proj.weight"],
           "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
           "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
           "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
           "proj_out_2.weight": sd["final_layer.linear.weight"],
           "proj_out_2.bias": sd["final_layer.linear.bias"]}
    for i in range(depth):
        b, d = f"blocks.{i}.", f"transformer_blocks.{i}."
        emb = d + "norm1.emb."
        for w in ("weight", "bias"):
            out[emb + f"timestep_embedder.linear_1.{w}"] = sd[f"t_embedder.mlp.0.{w}"]
            out[emb + f"timestep_embedder.linear_2.{w}"] = sd[f"t_embedder.mlp.2.{w}"]
            out[d + f"norm1.linear.{w}"] = sd[b + f"adaLN_modulation.1.{w}"]
            for name, part in zip(("to_q", "to_k", "to_v"), sd[b + f"attn.qkv.{w}"].chunk(3, dim=0)):
                out[d + f"attn1.{name}.{w}"] = part
            out[d + f"attn1.to_out.0.{w}"] = sd[b + f"attn.proj.{w}"]
            out[d + f"ff.net.0.proj.{w}"] = sd[b + f"mlp.fc1.{w}"]
            out[d + f"ff.net.2.{w}"] = sd[b + f"mlp.fc2.{w}"]
        out[emb + "class_embedder.embedding_table.weight"] = sd["y_embedder.embedding_table.weight"]
    used = {"x_embedder.proj.weight", "x_embedder.proj.bias", "y_embedder.embedding_table.weight",
            *(f"{p}.{w}" for p in ("final_layer.adaLN_modulation.1", "final_layer.linear", "t_embedder.mlp.0",
                                   "t_embedder.mlp.2") for w in ("weight", "bias"))}
    block_keys = r"blocks\.\d+\.(adaLN_modulation\.1|attn\.qkv|attn\.proj|mlp\.fc[12])\."
    used |= {k for k in sd if re.match(block_keys, k)}
    return out, [k for k in sd if k not in used]


def dit_to_sit_state_dict(sd: dict, depth: int, pos_embed: torch.Tensor) -> dict:
    """A DiT state dict -> a SiT one (pos_embed: the SiT's own sin-cos table). The per-block copies of the
    time and label embedders must be equal: a SiT has one."""
    first = "transformer_blocks.0.norm1.emb."
    for i in range(1, depth):
        emb = f"transformer_blocks.{i}.norm1.emb."
        differ = [k for k in sd if k.startswith(first) and not torch.equal(sd[k], sd[emb + k[len(first):]])]
        if differ:
            raise CheckpointError(f"diffusers' DiT holds a time / label embedder per block and block {i}'s "
                                  f"differs from block 0's ({differ[0]}): a SiT has one, so this model "
                                  "cannot be expressed as a SiT")
    out = {"pos_embed": pos_embed, "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
           "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
           "y_embedder.embedding_table.weight": sd[first + "class_embedder.embedding_table.weight"],
           "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
           "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
           "final_layer.linear.weight": sd["proj_out_2.weight"],
           "final_layer.linear.bias": sd["proj_out_2.bias"]}
    for w in ("weight", "bias"):
        out[f"t_embedder.mlp.0.{w}"] = sd[first + f"timestep_embedder.linear_1.{w}"]
        out[f"t_embedder.mlp.2.{w}"] = sd[first + f"timestep_embedder.linear_2.{w}"]
        for i in range(depth):
            b, d = f"blocks.{i}.", f"transformer_blocks.{i}."
            out[b + f"adaLN_modulation.1.{w}"] = sd[d + f"norm1.linear.{w}"]
            out[b + f"attn.qkv.{w}"] = torch.cat([sd[d + f"attn1.{n}.{w}"] for n in ("to_q", "to_k", "to_v")])
            out[b + f"attn.proj.{w}"] = sd[d + f"attn1.to_out.0.{w}"]
            out[b + f"mlp.fc1.{w}"] = sd[d + f"ff.net.0.proj.{w}"]
            out[b + f"mlp.fc2.{w}"] = sd[d + f"ff.net.2.{w}"]
    return out


# ------------------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------------------

def sit_time_embedding(dit: nn.Module) -> nn.Module:
    """Give every block's time embedding SiT's frequencies 10000^(-k / 128) (downscale_freq_shift 0;
    diffusers' DiT hard-codes 1, which no config field changes). In place; returns `dit`."""
    for block in dit.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    return dit


def to_diffusers(model: SiT) -> tuple[nn.Module, list[str]]:
    """A SiT (in this codebase's time convention) -> (DiTTransformer2DModel computing the same velocity, the
    SiT tensors left out). qk-norm is refused: DiT has no such setting."""
    from diffusers import DiTTransformer2DModel

    if isinstance(model, SiTTimeFlip):
        raise CheckpointError("a SiT-convention network: convert its weights with checkpoint.sit_to_ours "
                              "first (to_diffusers_from_file does)")
    if any(isinstance(b.attn.q_norm, nn.LayerNorm) for b in model.blocks):
        raise CheckpointError("this SiT uses qk-norm, which diffusers' DiTTransformer2DModel cannot express "
                              "(its attention has no normalisation of q and k)")
    if model.blocks[0].mlp.fc1.out_features != 4 * model.hidden_size:
        raise CheckpointError("diffusers' DiT has an MLP ratio of 4 only")
    dit = DiTTransformer2DModel(**dit_config(model))
    sd, left_out = sit_to_dit_state_dict(model.state_dict(), model.depth)
    if not torch.allclose(dit.pos_embed.pos_embed, model.pos_embed.detach().float().cpu(), atol=1e-6, rtol=0):
        raise CheckpointError("the SiT's pos_embed is not the sin-cos table diffusers computes")
    dit.load_state_dict(sd, strict=True)
    dtype = next(model.parameters()).dtype
    return sit_time_embedding(dit if dtype == torch.float32 else dit.to(dtype)).eval(), left_out


def from_diffusers(dit: nn.Module) -> SiT:
    """A DiTTransformer2DModel in SiT's layout -> SiT (eval mode). Its weights, not its meaning: a network
    that to_diffusers wrote is a velocity model in this codebase's convention; a DDPM DiT (e.g. DiT-XL-2-256
    converted to diffusers) predicts noise from 1000-step timesteps and diffusers' frequencies."""
    c = dit.config
    width = c.num_attention_heads * c.attention_head_dim
    for key, want in DIT_FIXED.items():
        if key != "dropout" and c[key] != want:
            raise CheckpointError(f"diffusers' DiT config has {key}={c[key]!r}, a SiT has {want!r}")
    name = model_name_for(c.num_layers, width, c.patch_size)
    out = c.out_channels or c.in_channels
    model = SiT_models[name](input_size=c.sample_size, in_channels=c.in_channels,
                             num_classes=c.num_embeds_ada_norm, learn_sigma=out == 2 * c.in_channels).eval()
    if model.num_heads != c.num_attention_heads:
        raise CheckpointError(f"{name} has {model.num_heads} heads, this DiT {c.num_attention_heads}")
    sd = dit_to_sit_state_dict(dit.state_dict(), c.num_layers, model.pos_embed.detach().clone())
    model.load_state_dict(sd, strict=True)
    return model


def to_diffusers_from_file(path: str, time_convention: str | None = None) -> tuple[nn.Module, dict, list]:
    """A checkpoint or model folder's EMA -> (DiTTransformer2DModel, the file's settings, tensors left out);
    a SiT-convention file is converted to ours first."""
    model, info = load_checkpoint(path, time_convention=time_convention)
    if isinstance(model, SiTTimeFlip):
        inner = model.model
        inner.load_state_dict(sit_to_ours(inner.state_dict()))
        model = inner
    dit, left_out = to_diffusers(model)
    return dit, info, left_out


# ------------------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------------------

def _pipeline_base():
    from diffusers import DiffusionPipeline
    return DiffusionPipeline


class _Velocity(nn.Module):
    """A DiT called as the samplers call a SiT: v = net(x, t, y), t in [0, 1]; learn_sigma channels
    dropped."""

    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit
        self.in_channels = dit.config.in_channels
        self.input_size = dit.config.sample_size
        self.num_classes = dit.config.num_embeds_ada_norm

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.dit(x, timestep=t, class_labels=y).sample[:, : self.in_channels]


def pipeline_class() -> type:
    """SiTFlowPipeline, built on diffusers' DiffusionPipeline when diffusers is imported (lazily: the module
    imports without diffusers)."""
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    class SiTFlowPipeline(_pipeline_base()):
        """Class-conditional flow matching (t = 1 noise -> t = 0 data) with a DiTTransformer2DModel in SiT's
        convention and, for latent models, the SD-VAE. The images are sample_ddp.py's for the same seeds and
        settings: image k starts from torch.Generator(seeds[k]) and draws all its SDE noise from it
        (samplers.sample_images)."""

        model_cpu_offload_seq = "transformer->vae"
        _optional_components = ["vae"]

        def __init__(self, transformer: nn.Module, vae: nn.Module | None = None, path_type: str = "linear"):
            super().__init__()
            self.register_modules(transformer=sit_time_embedding(transformer), vae=vae)
            self.register_to_config(path_type=path_type)

        @torch.no_grad()
        def __call__(self, class_labels: Sequence[int], seeds: Sequence[int] | None = None,
                     generator: Sequence[torch.Generator] | None = None, mode: str = "sde",
                     num_inference_steps: int = 250, heun: bool = False, guidance_scale: float = 1.0,
                     guidance_low: float = 0.0, guidance_high: float = 1.0, cfg_channels: int | None = None,
                     quantize: str = "release", output_type: str = "pil", return_dict: bool = True):
            """class_labels (N,); seeds (N,) or generator (N torch.Generators, one per image) -> images:
            output_type pil (PIL images), np (uint8 (N, H, W, 3)), latent (float (N, C, h, w), before the
            VAE). CFG: guidance_scale > 1 inside guidance_low <= t <= guidance_high, on the first
            cfg_channels channels (None: all)."""
            import samplers

            if seeds is None and generator is None:
                raise ValueError("pass seeds= (one per image) or generator= (one torch.Generator per image)")
            device = self._execution_device
            net = _Velocity(self.transformer)
            gens = list(generator) if generator is not None else samplers.per_image_generators(seeds, device)
            shape = (net.in_channels, net.input_size, net.input_size)
            z = samplers.per_image_randn(gens, shape, device)
            y = torch.as_tensor(np.asarray(class_labels), dtype=torch.int64, device=device)
            x = samplers.sample(net, z, y, mode=mode, num_steps=num_inference_steps, heun=heun,
                                cfg_scale=guidance_scale, guidance_low=guidance_low,
                                guidance_high=guidance_high, cfg_channels=cfg_channels, generators=gens,
                                path_type=self.config.path_type)
            if output_type == "latent":
                images = x
            else:
                # z / 0.18215 through the SD-VAE (none: a pixel model)
                images = samplers.to_uint8(decode_latents(self.vae, x), quantize)
                if output_type == "pil":
                    from PIL import Image
                    images = [Image.fromarray(a) for a in images]
            return ImagePipelineOutput(images=images) if return_dict else (images,)

    return SiTFlowPipeline


def __getattr__(name: str):
    # SiTFlowPipeline needs diffusers: built on first use
    if name == "SiTFlowPipeline":
        return pipeline_class()
    raise AttributeError(name)


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------

def write_pipeline(src: str, out: str, vae: str | None = None, time_convention: str | None = None) -> dict:
    """A checkpoint / model folder -> a diffusers pipeline folder (SiTFlowPipeline). -> what was written."""
    from models.vae import load_vae_spec

    dit, info, left_out = to_diffusers_from_file(src, time_convention)
    decoder = None if vae is None else load_vae_spec(vae)
    pipe = pipeline_class()(dit, decoder, path_type=info["path_type"] or "linear")
    pipe.save_pretrained(out)
    return dict(model=info["model_name"], left_out=left_out, path_type=pipe.config.path_type, out=out)


def write_sit(src: str, out: str) -> dict:
    """A diffusers pipeline folder (or its transformer/) -> a single-file export (models/export.py's
    format)."""
    from diffusers import DiTTransformer2DModel
    from safetensors.torch import save_file

    folder = os.path.join(src, "transformer") if os.path.isdir(os.path.join(src, "transformer")) else src
    model = from_diffusers(DiTTransformer2DModel.from_pretrained(folder, local_files_only=True))
    index = os.path.join(src, "model_index.json")
    path_type = json.load(open(index)).get("path_type", "linear") if os.path.isfile(index) else "linear"
    settings = dict(model=model_name_for(model.depth, model.hidden_size, model.patch_size),
                    num_classes=model.num_classes, path_type=path_type, time_convention="ours", steps=None,
                    args={}, source_file=os.path.abspath(src))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out,
              metadata={"format": "pt", EXPORT_KEY: json.dumps(settings)})
    return settings


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m models.diffusers_io", description=__doc__.split("\n")[0])
    p.add_argument("src", help="a checkpoint or model folder (with --to-sit: a diffusers pipeline folder)")
    p.add_argument("out", help="the diffusers pipeline folder to write (with --to-sit: OUT.safetensors)")
    p.add_argument("--vae", default=None, help="an SD-VAE folder (or ema / mse from the HF cache) to include")
    p.add_argument("--time-convention", choices=["ours", "repa", "sit"], default=None,
                   help="for a bare state dict, which does not say")
    p.add_argument("--to-sit", action="store_true", help="diffusers -> a single-file SiT export")
    args = p.parse_args(argv)
    try:
        done = write_sit(args.src, args.out) if args.to_sit else write_pipeline(args.src, args.out, args.vae,
                                                                                 args.time_convention)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        sys.exit(f"python -m models.diffusers_io: error: {e}")
    print(json.dumps(done))
    return done


if __name__ == "__main__":
    main()
