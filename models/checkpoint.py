"""Loading checkpoints of this codebase and the public SiT / REPA / SRA releases, with strict key checks.

Time conventions (METHOD.md section 1): this codebase, REPA and SRA use t = 1 noise, v = eps - x0 ('ours' / 'repa');
the public SiT checkpoints use t = 0 noise, v = x0 - eps ('sit'), so v_ours(x, t) = -v_sit(x, 1 - t). A file of
this codebase records its convention; for any other file the caller must say which one it uses, never a guess.
"""
import os

import torch
import torch.nn as nn

from .sit import SiT, SiT_models, model_name_for

CONVENTIONS = ("ours", "repa", "sit")


class SiTTimeFlip(nn.Module):
    """Wraps a network trained in SiT's convention so that calling it is in ours: -v_sit(x, 1 - t)."""

    def __init__(self, model: SiT):
        super().__init__()
        self.model = model
        for name in ("in_channels", "input_size", "num_classes", "patch_size", "learn_sigma", "depth"):
            setattr(self, name, getattr(model, name))

    def forward(self, x, t, y, **kwargs):
        return -self.model(x, 1 - t, y, **kwargs)


def read_state_dict(path: str, which: str = "ema"):
    """-> (state_dict, meta). Accepts a raw state dict or a dict with 'ema' / 'model' entries."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a state dict or a dict with 'ema'/'model', got {type(ckpt).__name__}")
    meta = {k: ckpt[k] for k in ("args", "steps", "time_convention") if k in ckpt}
    if "ema" in ckpt or "model" in ckpt:
        if which not in ckpt:
            raise ValueError(f"{path} has no '{which}' weights (it has: {sorted(k for k in ckpt if k in ('ema', 'model'))})")
        sd = ckpt[which]
    else:
        sd = ckpt
    sd = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in sd.items()}
    return sd, meta


def infer_config(sd: dict) -> dict:
    """Model constructor arguments read off the tensor shapes of a SiT state dict."""
    need = ["pos_embed", "x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(f"not a SiT state dict: missing {missing}")
    width, c_in, patch, _ = sd["x_embedder.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    grid = int(round(sd["pos_embed"].shape[1] ** 0.5))
    out = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
    cfg = dict(model=model_name_for(depth, width, patch), input_size=grid * patch, in_channels=c_in,
               num_classes=sd["y_embedder.embedding_table.weight"].shape[0] - 1, learn_sigma=out == 2 * c_in,
               qk_norm="blocks.0.attn.q_norm.weight" in sd, align_head=None, z_dim=None)
    if "ap_head.linear2.weight" in sd:
        cfg.update(align_head="ap_head", z_dim=sd["ap_head.linear2.weight"].shape[0])
    elif "projectors.0.4.weight" in sd:
        cfg.update(align_head="projector", z_dim=sd["projectors.0.4.weight"].shape[0])
    return cfg


def load_state_dict_strict(model: nn.Module, sd: dict, source: str = "state dict"):
    """load_state_dict(strict=True) with a readable message listing missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{source} does not match the model:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12]) + (" ..." if len(items) > 12 else ""))
        raise ValueError("\n".join(lines))
    model.load_state_dict(sd, strict=True)


def load_checkpoint(path: str, which: str = "ema", model_name: str | None = None,
                    time_convention: str | None = None, **model_kwargs):
    """-> (model in eval mode, info). `model_name` and `model_kwargs` override what is read from the file.

    info: model_name, time_convention, steps, learn_sigma, input_size, num_classes, in_channels, args."""
    sd, meta = read_state_dict(path, which)
    cfg = infer_config(sd)
    if model_name is not None and model_name != cfg["model"]:
        raise ValueError(f"{path} holds a {cfg['model']} but --model is {model_name}")
    conv = meta.get("time_convention", time_convention)
    if time_convention is not None and conv != time_convention:
        raise ValueError(f"{path} records time convention {conv!r} but {time_convention!r} was asked for")
    if conv is None:
        raise ValueError(f"{path} is not a checkpoint of this codebase, so its time convention is unknown: pass "
                         "--time-convention sit (public SiT checkpoints: t = 0 is noise) or repa "
                         "(REPA / SRA checkpoints: t = 1 is noise, as here)")
    if conv not in CONVENTIONS:
        raise ValueError(f"time convention must be one of {CONVENTIONS}, got {conv!r}")
    name = cfg.pop("model")
    cfg.update(model_kwargs)
    model = SiT_models[name](**cfg)
    load_state_dict_strict(model, sd, source=path)
    model.eval()
    info = dict(model_name=name, time_convention=conv, steps=meta.get("steps"), args=meta.get("args"),
                learn_sigma=cfg["learn_sigma"], input_size=cfg["input_size"], num_classes=cfg["num_classes"],
                in_channels=cfg["in_channels"])
    return (SiTTimeFlip(model).eval() if conv == "sit" else model), info
