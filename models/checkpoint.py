"""Reading checkpoints of this codebase and of the public SiT / REPA / SRA releases: one reader, one-line
errors.

Files accepted (every read of a checkpoint goes through `read_checkpoint`):
- this codebase's training files {model, ema, opt, rng, args (dict), steps, time_convention, ...};
- REPA's and the SRA release's training files {model, ema, opt, args, steps[, epoch]}, whose `args` is an
  argparse.Namespace, and SiT's {model, ema, opt, args};
- bare state dicts (the public SiT, REPA and SRA releases) and `python -m models.export` safetensors files;
- model folders (config.json + model.safetensors: `python -m models.export ... --format hf`, models/hf.py).

Safety: pickles are read with torch's weights-only unpickler, whose allow-list is widened by exactly one
type, argparse.Namespace (what the releases' `args` holds: numbers, strings, lists). Any other pickled object
is refused with its type named; a file is never fully unpickled. Integrity: torch.save writes a CRC-32 of
every record of its zip archive; they are all checked before the file is used (one sequential read, ~0.3 s
per GiB from the page cache, BENCHMARKS.md), so a flipped bit or a partial copy is refused, named, and
--resume auto falls back to an older file. Memory: .pt files are memory-mapped (torch.load(mmap=True)), and
the model's parameters are those mapped tensors themselves (`assign`), not a second copy.

Time conventions (see samplers.py): this codebase, REPA and SRA use t = 1 noise, v = eps - x0 ('ours' /
'repa'); SiT uses t = 0 noise, v = x0 - eps ('sit'), so v_ours(x, t) = -v_sit(x, 1 - t). Our files record
theirs; a training file whose args mark it as REPA / SRA is 'repa' and one of SiT's is 'sit'; for a bare state
dict the caller must say which, never a guess.
"""
import argparse
import hashlib
import json
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .sit import DIT_NAMES, SiT, SiT_models, model_name_for, sincos_pos_embed_2d

CONVENTIONS = ("ours", "repa", "sit")
# the generative processes (loss.py --process): flow matching, or DDPM as DiT (ddpm.py); a DDPM network sees
# integer steps, so it has no flow time convention ('ddpm' stands in its place in the settings)
PROCESSES = ("flow", "ddpm")
ALLOWED_GLOBALS = (argparse.Namespace,)
HEAD_PREFIXES = ("ap_head.", "projectors.")
# the safetensors metadata entry that models.export writes
EXPORT_KEY = "sit_settings"
# args keys that only the REPA (train.py), SRA (DTS_AS/arguments.py, SiT-SRA/train.py) and SiT trainers write
REPA_ARGS = ("enc_type", "proj_coeff", "encoder_depth")
SRA_ARGS = ("block_out_s", "block_out_t", "use_alignment_loss", "align_weight", "t_max")
SIT_ARGS = ("global_batch_size", "image_size", "ckpt_every")
# SiT's path names (t = 0 noise) -> ours: its GVP path (alpha = sin(pi t/2) on the data) is our cosine path
SIT_PATHS = {"Linear": "linear", "GVP": "cosine"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, as one line naming the file and the cause."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    pass


class SiTTimeFlip(nn.Module):
    """Wraps a network trained in SiT's convention so that calling it is in ours: -v_sit(x, 1 - t)."""

    def __init__(self, model: SiT):
        super().__init__()
        self.model = model
        for name in ("in_channels", "input_size", "num_classes", "patch_size", "learn_sigma", "depth"):
            setattr(self, name, getattr(model, name))

    def forward(self, x, t, y, **kwargs):
        return -self.model(x, 1 - t, y, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# Reading a file
# ------------------------------------------------------------------------------------------------------------

def _is_safetensors(path: str, head: bytes) -> bool:
    """safetensors: 8-byte little-endian header length, then a JSON header starting with '{'."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") < os.path.getsize(path)


def _unreadable(path: str, cause: str) -> CheckpointError:
    return CheckpointError(f"{path}: cannot read this checkpoint: {cause}")


def _torch_load(path: str, head: bytes):
    """torch.load with the weights-only unpickler + argparse.Namespace; memory-mapped for zip files."""
    is_zip = head[:4] == b"PK\x03\x04"
    # neither a zip nor a (legacy) pickle
    if not is_zip and head[:1] != b"\x80":
        raise _unreadable(path, f"not a PyTorch or safetensors file (it starts with {head[:8]!r})")
    if is_zip and not zipfile.is_zipfile(path):
        raise _unreadable(path, "truncated or corrupt (its zip archive has no central directory)")
    if is_zip:
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("data.pkl") for n in z.namelist()):
                raise _unreadable(path, "a zip archive but not a torch.save file (it has no data.pkl)")
            # torch.save stores a CRC-32 of every record: one read of the file (BENCHMARKS.md: seconds per GB)
            try:
                damaged = z.testzip()
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                damaged = f"? ({e})"
            if damaged is not None:
                raise _unreadable(path, f"damaged: the checksum of its record {damaged} does not match what "
                                        f"was written (a flipped bit or a partial copy)")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        # torch's wordings: "Unsupported global: GLOBAL x.Y ...", "unsupported GLOBAL x.Y whose module ..."
        refused = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(e))
        if refused:
            raise CheckpointError(
                f"{path}: refused to unpickle an object of type {refused.group(1)} (only tensors, plain "
                "containers, numbers, strings and argparse.Namespace are read; a full unpickle could run any "
                "code)") from None
        last = str(e).strip().splitlines()[-1][:120]
        raise _unreadable(path, f"corrupt pickle data ({last})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        cause = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise _unreadable(path, f"truncated or corrupt ({cause})") from None


def _safetensors_load(path: str):
    """-> (tensors, settings dict from the export metadata)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(path, f"corrupt safetensors file ({str(e).strip()[:160]})") from None
    try:
        settings = json.loads(meta[EXPORT_KEY]) if EXPORT_KEY in meta else {}
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its '{EXPORT_KEY}' metadata is not JSON") from None
    return tensors, settings


def _args_dict(path: str, args) -> dict:
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, dict):
        return dict(args)
    raise CheckpointError(f"{path}: its 'args' is a {type(args).__name__}, expected a dict or "
                          "argparse.Namespace")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


@dataclass
class Checkpoint:
    """What a file holds. `weights` maps 'model' / 'ema' to state dicts (memory-mapped tensors); a bare state
    dict or an export has one set, under 'ema'. source: ours | repa | sra | sit | training file | state dict |
    export. entries: the file's other top-level entries (opt, rng, ...); settings: an export's recorded
    ones."""
    path: str
    source: str
    weights: dict
    args: dict = field(default_factory=dict)
    time_convention: str | None = None
    steps: int | None = None
    entries: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def describe(self) -> str:
        what = {"ours": "a training checkpoint of this codebase", "repa": "a REPA training checkpoint",
                "sra": "an SRA release training checkpoint", "sit": "a SiT training checkpoint",
                "training file": "a training checkpoint of an unknown trainer",
                "state dict": "a bare state dict (weights only)",
                "export": "an exported EMA (python -m models.export; weights only)"}[self.source]
        if self.source == "state dict":
            return what
        return f"{what} with {' and '.join(sorted(self.weights))} weights"

    def state_dict(self, which: str = "ema") -> dict:
        """The weights `which` names, prefixes of DDP / torch.compile removed, checked to be finite."""
        if which not in self.weights:
            raise CheckpointError(f"{self.path} has no '{which}' weights (it is {self.describe()})")
        sd = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in self.weights[which].items()}
        check_finite(sd, self.path if self.source in ("state dict", "export") else f"{self.path} ['{which}']")
        return sd


def read_checkpoint(path: str) -> Checkpoint:
    """The one function that opens a checkpoint file: every failure is a CheckpointError naming the file."""
    if not os.path.exists(path):
        raise CheckpointNotFound(f"{path}: no such checkpoint")
    if os.path.isdir(path):
        # a model folder: python -m models.export CKPT DIR --format hf
        from .hf import read_folder
        return read_folder(path)
    if os.path.getsize(path) == 0:
        raise _unreadable(path, "the file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(16)
    if path.endswith(".safetensors") or _is_safetensors(path, head):
        tensors, settings = _safetensors_load(path)
        if not tensors:
            raise CheckpointError(f"{path}: holds no tensors")
        # a safetensors file without this codebase's metadata is a bare state dict
        source = "export" if settings else "state dict"
        return Checkpoint(path, source, {"ema": tensors}, args=settings.get("args") or {},
                          time_convention=settings.get("time_convention"), steps=settings.get("steps"),
                          settings=settings)
    obj = _torch_load(path, head)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    if "model" in obj or "ema" in obj:
        weights = {k: obj[k] for k in ("model", "ema") if k in obj}
        for k, sd in weights.items():
            if not _is_state_dict(sd):
                raise CheckpointError(f"{path}: its '{k}' entry is a {type(sd).__name__}, not a state dict")
        args = _args_dict(path, obj.get("args"))
        conv, source = obj.get("time_convention"), "training file"
        if conv is not None:
            source = "ours"
        elif any(k in args for k in REPA_ARGS):
            source, conv = "repa", "repa"
        elif any(k in args for k in SRA_ARGS):
            source, conv = "sra", "repa"
        elif any(k in args for k in SIT_ARGS) or args.get("path_type") in ("Linear", "GVP", "VP"):
            source, conv = "sit", "sit"
        if conv is not None and conv not in CONVENTIONS:
            raise CheckpointError(f"{path}: records time convention {conv!r}, expected one of {CONVENTIONS}")
        steps = obj.get("steps")
        rest = {k: v for k, v in obj.items() if k not in ("model", "ema", "args", "steps", "time_convention")}
        return Checkpoint(path, source, weights, args=args, time_convention=conv,
                          steps=None if steps is None else int(steps), entries=rest)
    if _is_state_dict(obj):
        return Checkpoint(path, "state dict", {"ema": obj})
    raise CheckpointError(f"{path}: neither a state dict nor a checkpoint dict with 'model' / 'ema' "
                          f"(its keys: {', '.join(map(str, list(obj)[:8]))})")


def check_finite(sd: dict, source: str):
    """Refuse weights holding NaN / inf, naming the file and the first tensors."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source} holds non-finite values in {len(bad)} tensor(s) ("
                              f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}): refusing to use it")


def weights_digest(sd: dict) -> str:
    """sha256 of the weights' content (names, dtypes, shapes, bytes), independent of the file format."""
    h = hashlib.sha256()
    for k in sorted(sd):
        v = sd[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(memoryview(v.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------------
# What the weights and the args say
# ------------------------------------------------------------------------------------------------------------

def infer_config(sd: dict, source: str = "state dict") -> dict:
    """Model constructor arguments read off the tensor shapes of a SiT state dict."""
    need = ["pos_embed", "x_embedder.proj.weight", "y_embedder.embedding_table.weight",
            "final_layer.linear.weight"]
    missing = [k for k in need if k not in sd]
    if missing or not any(k.startswith("blocks.") for k in sd):
        raise CheckpointError(f"{source}: not a SiT state dict (missing {missing or ['blocks.*']}; it has "
                              f"{len(sd)} tensors, e.g. {', '.join(list(sd)[:3])})")
    width, c_in, patch, _ = sd["x_embedder.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    grid = int(round(sd["pos_embed"].shape[1] ** 0.5))
    out = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
    try:
        name = model_name_for(depth, width, patch)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    cfg = dict(model=name, input_size=grid * patch, in_channels=c_in,
               num_classes=sd["y_embedder.embedding_table.weight"].shape[0] - 1, learn_sigma=out == 2 * c_in,
               qk_norm="blocks.0.attn.q_norm.weight" in sd, align_head=None, z_dim=None, head_depth=None)
    if "ap_head.final_layer.linear.weight" in sd:
        depth = sum(1 for k in sd if re.fullmatch(r"ap_head\.mlp\.\d+\.weight", k))
        z_dim = sd["ap_head.final_layer.linear.weight"].shape[0]
        cfg.update(align_head="sra2", z_dim=z_dim, head_depth=depth)
    elif "ap_head.linear2.weight" in sd:
        cfg.update(align_head="ap_head", z_dim=sd["ap_head.linear2.weight"].shape[0])
    elif "projectors.0.4.weight" in sd:
        cfg.update(align_head="projector", z_dim=sd["projectors.0.4.weight"].shape[0])
    return cfg


def _path_type(ck: Checkpoint) -> str | None:
    """The interpolation path the file was trained on, in our names (linear | cosine); None if unrecorded."""
    p = ck.settings.get("path_type") if ck.source == "export" else ck.args.get("path_type")
    if p is None:
        return None
    if ck.source == "sit":
        if p not in SIT_PATHS:
            raise CheckpointError(f"{ck.path}: trained on SiT's {p} path, which this codebase does not "
                                  f"implement (it has {', '.join(SIT_PATHS)})")
        return SIT_PATHS[p]
    # SiT-SRA's choice name for its cosine path
    p = {"cos": "cosine"}.get(p, p)
    if p not in ("linear", "cosine"):
        raise CheckpointError(f"{ck.path}: its args record path type {p!r}, expected linear or cosine")
    return p


def _process(ck: Checkpoint) -> str | None:
    """flow | ddpm as the file records it: our args' / an export's `process`, or a DiT model name (DiT's own
    training files, the release's DiT-SRA ones: args.model = 'DiT-XL/2'); None when it does not say."""
    a = ck.settings if ck.source == "export" else ck.args
    recorded = a.get("process")
    # a model folder's config.json describes its flow-matching process as a dict (models/hf.py)
    if isinstance(recorded, dict):
        return "flow"
    if recorded is not None:
        if recorded not in PROCESSES:
            raise CheckpointError(f"{ck.path}: records process {recorded!r}, expected one of {PROCESSES}")
        return recorded
    return "ddpm" if str(a.get("model", "")) in DIT_NAMES else None


def file_settings(ck: Checkpoint, sd: dict) -> dict:
    """Constructor arguments (from the shapes) and the run's settings (from the args), checked against each
    other.

    -> model, input_size, in_channels, num_classes, learn_sigma, qk_norm, align_head, z_dim, head_depth,
       patch_size, path_type, resolution, time_convention, steps, source."""
    cfg = infer_config(sd, ck.path)
    a = ck.settings if ck.source == "export" else ck.args
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    # the label table has num_classes rows, and one more for the null class when there is one
    if a.get("num_classes") is not None:
        if rows not in (a["num_classes"], a["num_classes"] + 1):
            raise CheckpointError(f"{ck.path}: its args say {a['num_classes']} classes but the label table "
                                  f"has {rows} rows")
        cfg["num_classes"] = int(a["num_classes"])
    for key, flag in (("model", "model"), ("qk_norm", "qk_norm")):
        # DiT-X/p is the network SiT-X/p
        said = DIT_NAMES.get(a.get(flag), a.get(flag)) if flag == "model" else a.get(flag)
        if said is not None and said != cfg[key]:
            raise CheckpointError(f"{ck.path}: its args say {flag} {a[flag]!r} but its weights are "
                                  f"{cfg[key]!r}")
    resolution = a.get("resolution", a.get("image_size"))
    if resolution is not None and cfg["in_channels"] == 4 and int(resolution) // 8 != cfg["input_size"]:
        raise CheckpointError(f"{ck.path}: its args say resolution {resolution} but its weights are for "
                              f"{cfg['input_size']}x{cfg['input_size']} latents ({8 * cfg['input_size']} px)")
    if resolution is None and cfg["in_channels"] == 4:
        resolution = 8 * cfg["input_size"]
    patch = int(sd["x_embedder.proj.weight"].shape[2])
    process = _process(ck)
    # a DDPM file has no flow time convention (DiT's own files look like SiT's to read_checkpoint)
    conv = "ddpm" if process == "ddpm" else ck.time_convention
    return dict(cfg, patch_size=patch, path_type=None if process == "ddpm" else _path_type(ck),
                resolution=resolution, time_convention=conv, steps=ck.steps, source=ck.source,
                process=process)


# names of flags that sample_ddp (or any caller) may give, and the setting of the file each one must equal
FLAG_SETTINGS = {"model": "model", "path_type": "path_type", "num_classes": "num_classes",
                 "resolution": "resolution", "qk_norm": "qk_norm", "time_convention": "time_convention"}


def check_flags(settings: dict, path: str, **flags):
    """Every flag given (not None) must equal what the file says: otherwise an error naming both values."""
    for flag, value in flags.items():
        have = settings.get(FLAG_SETTINGS[flag])
        if value is None or have is None:
            continue
        if flag == "path_type":
            value = {"cos": "cosine"}.get(value, value)
        if value != have:
            what = "a" if flag == "model" else FLAG_SETTINGS[flag].replace("_", " ")
            raise CheckpointError(f"{path} holds {what} {have} but --{flag.replace('_', '-')} is {value}")


def _listed(items: list, limit: int = 12) -> str:
    """'a, b, c' of the first `limit` items, then how many more."""
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def state_dict_mismatch(model: nn.Module, sd: dict) -> str:
    """An empty string when `sd` holds exactly the model's keys with its shapes, else one line naming the
    missing keys (model order), the unexpected ones (file order; a value that is not a tensor is unexpected)
    and the shape mismatches. The repo's one strict-load check (checkpoints here, DINOv2 files)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k, v in sd.items() if k not in own or not isinstance(v, torch.Tensor)]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
              if isinstance(sd.get(k), torch.Tensor) and sd[k].shape != v.shape]
    found = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
    return "; ".join(f"{title} ({len(items)}): {_listed(items)}" for title, items in found if items)


def load_state_dict_strict(model: nn.Module, sd: dict, source: str = "state dict", assign: bool = False):
    """load_state_dict(strict=True), or a CheckpointError "{source} does not match the model: ..." listing
    what differs (state_dict_mismatch). assign: the tensors become the model's (a model built on the meta
    device); its non-saved constants are then rebuilt next to them."""
    problem = state_dict_mismatch(model, sd)
    if problem:
        raise CheckpointError(f"{source} does not match the model: {problem}")
    model.load_state_dict(sd, strict=True, assign=assign)
    if assign and hasattr(model, "materialize_constants"):
        model.materialize_constants()


def load_checkpoint(path: str, which: str = "ema", model_name: str | None = None,
                    time_convention: str | None = None, process: str | None = None, **flags):
    """-> (model in eval mode, info) for sampling. Flags given (model_name, time_convention, process,
    path_type, ...; None = not given) are checked against the file, never override it. A DiT model name
    (DiT-XL/2) is the SiT network of that size with process ddpm; process ddpm tells a bare state dict
    (DiT's DiT-XL-2-256x256.pt) apart from a flow model, and needs no time convention.

    info: the file's settings (file_settings) plus model_name, time_convention, process, args and digest
    (weights_digest)."""
    ck = read_checkpoint(path)
    sd = ck.state_dict(which)
    s = file_settings(ck, sd)
    if model_name in DIT_NAMES:
        if process == "flow":
            raise CheckpointError(f"--model {model_name} is DiT (DDPM) but --process is flow")
        model_name, process = DIT_NAMES[model_name], "ddpm"
    if process is not None and process not in PROCESSES:
        raise CheckpointError(f"process must be one of {PROCESSES}, got {process!r}")
    if s["process"] is not None and process is not None and process != s["process"]:
        raise CheckpointError(f"{path} holds a {s['process']} model but --process is {process}")
    s["process"] = s["process"] or process or "flow"
    if s["process"] == "ddpm":
        if time_convention is not None:
            raise CheckpointError(f"{path} is a DDPM model (integer steps 0..999): --time-convention "
                                  f"{time_convention} is a flow-matching setting")
        s["time_convention"] = time_convention = "ddpm"
        if flags.get("path_type") is not None:
            raise CheckpointError(f"{path} is a DDPM model: --path-type {flags['path_type']} is a "
                                  "flow-matching setting")
    if s["time_convention"] is None and time_convention is None:
        raise CheckpointError(
            f"{path} is {ck.describe()}, which does not say its time convention: pass --time-convention sit "
            "(public SiT files: t = 0 is noise) or repa (REPA / SRA files: t = 1 is noise, as here)")
    check_flags(s, path, model=model_name, time_convention=time_convention, **flags)
    conv = s["time_convention"] or time_convention
    if conv not in CONVENTIONS + ("ddpm",):
        raise CheckpointError(f"time convention must be one of {CONVENTIONS}, got {conv!r}")
    kwargs = {k: s[k] for k in ("input_size", "in_channels", "num_classes", "learn_sigma", "qk_norm",
                                "align_head", "z_dim", "head_depth")}
    # built without storage: the parameters become sd's (memory-mapped) tensors, no second copy
    with torch.device("meta"):
        model = SiT_models[s["model"]](**kwargs)
    load_state_dict_strict(model, sd, source=path, assign=True)
    model.float().eval()
    info = dict(s, model_name=s["model"], time_convention=conv, args=ck.args, digest=weights_digest(sd))
    return (SiTTimeFlip(model).eval() if conv == "sit" else model), info


def read_training_state(path: str) -> dict:
    """The full state of one of our training files for --resume: model, ema, opt, rng, ... (all finite)."""
    ck = read_checkpoint(path)
    lacking = [k for k in ("model", "ema") if k not in ck.weights] + \
              [k for k in ("opt", "rng") if k not in ck.entries]
    if ck.source != "ours" or lacking:
        missing = ", ".join(lacking) or "the RNG and data state"
        raise CheckpointError(f"{path} is {ck.describe()}, not a resumable checkpoint of this codebase (it "
                              f"lacks {missing}): start a run from its weights with --init-ckpt {path}")
    state = dict(ck.entries, model=ck.state_dict("model"), ema=ck.state_dict("ema"), args=ck.args,
                 steps=ck.steps, time_convention=ck.time_convention)
    opt_state = {f"opt.state.{i}.{k}": v for i, s in state["opt"].get("state", {}).items()
                 for k, v in s.items() if torch.is_tensor(v)}
    check_finite(opt_state, f"{path} ['opt']")
    return state


# ------------------------------------------------------------------------------------------------------------
# --init-ckpt: start a new run from a file's weights
# ------------------------------------------------------------------------------------------------------------

def sit_to_ours(sd: dict) -> dict:
    """Rewrite SiT-convention weights (t = 0 noise) so the network computes v_ours(x, t) = -v_sit(x, 1 - t).

    The time embedding's features f(t) = [cos(t w), sin(t w)] satisfy f(1 - t) = M f(t) with
    M = [[diag(cos w), diag(sin w)], [diag(sin w), -diag(cos w)]], so the first t-MLP layer becomes W M; the
    sign flip is the final linear layer's weight and bias negated."""
    sd = dict(sd)
    w = sd["t_embedder.mlp.0.weight"]
    half = w.shape[1] // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    c, s = torch.diag(torch.cos(freqs)), torch.diag(torch.sin(freqs))
    m = torch.cat([torch.cat([c, s], 1), torch.cat([s, -c], 1)], 0)
    sd["t_embedder.mlp.0.weight"] = (w.double() @ m).to(w.dtype)
    for k in ("final_layer.linear.weight", "final_layer.linear.bias"):
        sd[k] = -sd[k]
    return sd


LABEL_TABLE = "y_embedder.embedding_table.weight"


def adapt_label_table(own: torch.Tensor, file: torch.Tensor, keep_classes: bool = False
                      ) -> tuple[torch.Tensor, str]:
    """A file's label table (K_file classes + the null row, last) fitted to a run with K classes (own: the
    run's freshly initialised table, K + 1 rows) -> (table, note for the log).

    The null-class row (classifier-free guidance's unconditional embedding) is kept: file row K_file becomes
    row K. The class rows are the run's fresh N(0, 0.02) ones, or with keep_classes the file's rows
    0..min(K, K_file) - 1 (class i of the new data takes the file's class i) and fresh ones beyond."""
    k_new = own.shape[0] - 1
    k_file = file.shape[0] - 1
    table = own.clone()
    table[k_new] = file[k_file]
    shared = min(k_new, k_file) if keep_classes else 0
    table[:shared] = file[:shared]
    fresh = f"rows {shared}..{k_new - 1} re-initialised (N(0, 0.02))" if shared < k_new else ""
    kept = f"rows 0..{shared - 1} kept (the file's classes 0..{shared - 1})" if shared else ""
    rows = "; ".join(x for x in (kept, fresh) if x)
    return table, (f"{LABEL_TABLE}: the file's {k_file} classes -> this run's {k_new}: class {rows}; the "
                   f"null-class row (CFG) kept (file row {k_file} -> row {k_new})")


def adapt_weights(model: SiT, sd: dict, source: str, keep_classes: bool = False) -> tuple[dict, list[str]]:
    """Fit a file's SiT weights to a new run's model -> (state dict to load strictly, notes for the log).

    Allowed differences, each noted: alignment heads the new run adds (kept at their fresh init) or drops, or
    whose shape differs (fresh init); the sin-cos pos_embed rebuilt for another grid (256 -> 512 warm starts);
    a learned-sigma output (SiT's) reduced to its velocity channels; another number of classes (the label
    table, adapt_label_table). Anything else must match exactly."""
    own = model.state_dict()
    out, notes = dict(sd), []
    table = out.get(LABEL_TABLE)
    if table is not None and table.shape[0] != own[LABEL_TABLE].shape[0] \
            and table.shape[1:] == own[LABEL_TABLE].shape[1:]:
        out[LABEL_TABLE], note = adapt_label_table(own[LABEL_TABLE], table, keep_classes)
        notes.append(note)
    dropped = sorted(k for k in out if k.startswith(HEAD_PREFIXES) and k not in own)
    for k in dropped:
        del out[k]
    reset = sorted(k for k in own
                   if k.startswith(HEAD_PREFIXES) and (k not in out or out[k].shape != own[k].shape))
    for k in reset:
        out[k] = own[k]
    if dropped:
        notes.append(f"alignment head dropped (not in this run): {', '.join(dropped)}")
    if reset:
        notes.append(f"alignment head freshly initialised (not in {source} or another shape): "
                     f"{', '.join(reset)}")
    pe = out.get("pos_embed")
    if pe is not None and pe.shape != own["pos_embed"].shape and pe.shape[-1] == own["pos_embed"].shape[-1]:
        old = int(round(pe.shape[1] ** 0.5))
        out["pos_embed"] = torch.from_numpy(sincos_pos_embed_2d(model.hidden_size, model.grid))[None]
        notes.append(f"pos_embed: sin-cos table rebuilt for a {model.grid}x{model.grid} token grid "
                     f"(the file's is {old}x{old})")
    w = out.get("final_layer.linear.weight")
    p, c = model.patch_size, model.out_channels
    sigma_half = w is not None and w.shape[0] == 2 * p * p * c
    if sigma_half and own["final_layer.linear.weight"].shape[0] == p * p * c:
        for k in ("final_layer.linear.weight", "final_layer.linear.bias"):
            v = out[k]
            out[k] = v.reshape(p * p, 2 * c, *v.shape[1:])[:, :c].reshape(p * p * c, *v.shape[1:])
        notes.append("final_layer: the learned-sigma half of the output dropped (velocity channels kept)")
    return out, notes


def init_from_checkpoint(model: SiT, ema: SiT, path: str, time_convention: str | None = None,
                         flag: str = "--init-time-convention", keep_classes: bool = False) -> list[str]:
    """Load a file's student weights into `model` and its EMA into `ema` (a file with one set: both),
    converted to our time convention (adapt_weights; keep_classes: --init-keep-classes). -> notes for the
    log. The optimizer and the step count are not touched (a fresh start)."""
    ck = read_checkpoint(path)
    if _process(ck) == "ddpm":
        raise CheckpointError(f"{path} holds a DDPM (DiT) model: --init-ckpt starts flow-matching runs from "
                              "flow-matching files only")
    conv = ck.time_convention
    if conv is None and time_convention is None:
        raise CheckpointError(f"{path} is {ck.describe()}, which does not say its time convention: pass "
                              f"{flag} sit (public SiT files: t = 0 is noise) or repa (REPA / SRA files: "
                              "t = 1 is noise)")
    if conv is not None and time_convention is not None and conv != time_convention:
        raise CheckpointError(f"{path} records time convention {conv!r} but {flag} is {time_convention!r}")
    conv = conv or time_convention
    notes = [f"--init-ckpt {path}: {ck.describe()}, time convention {conv}"]
    if "model" not in ck.weights:
        notes.append("the student and the EMA teacher both start from its weights")
    for which, target in (("model", model), ("ema", ema)):
        sd = ck.state_dict(which if which in ck.weights else "ema")
        infer_config(sd, path)
        if conv == "sit":
            sd = sit_to_ours(sd)
        sd, extra = adapt_weights(target, sd, path, keep_classes)
        load_state_dict_strict(target, sd, source=f"{path} ['{which}']")
        if which == "model":
            if conv == "sit":
                extra.append("converted from SiT's time convention: v(x, t) = -v_sit(x, 1 - t)")
            notes.extend(extra)
    return notes


def export_settings(ck: Checkpoint, sd: dict, time_convention: str | None = None) -> dict:
    """The metadata `python -m models.export` records next to the EMA (JSON in the safetensors header)."""
    s = file_settings(ck, sd)
    if s["process"] == "ddpm":
        raise CheckpointError(f"{ck.path} holds a DDPM (DiT) model: export writes flow-matching models only "
                              "(their model card and config describe a velocity network)")
    conv = s["time_convention"] or time_convention
    if conv is None:
        raise CheckpointError(f"{ck.path} is {ck.describe()}, which does not say its time convention: pass "
                              "--time-convention sit or repa")
    args = json.loads(json.dumps(ck.args, default=str))
    return dict(s, time_convention=conv, source=ck.source, source_file=os.path.abspath(ck.path), args=args,
                digest=weights_digest(sd))

