"""Hugging Face-style model folders: `python -m models.export CKPT OUT_DIR --format hf` writes one, and
`SiT.from_pretrained(DIR)`, sample_ddp.py --ckpt DIR and train.py --init-ckpt DIR read it.

    OUT_DIR/config.json         SiT.__init__'s arguments (what PyTorchModelHubMixin.from_pretrained builds),
                                the model name, the process and time convention, the latent scale and the
                                VAE, the training step, the weights' sha256, the run's args, the FID record
    OUT_DIR/model.safetensors   the EMA weights, with the single-file export's metadata (models/export.py), so
                                the file alone is a valid export too
    OUT_DIR/README.md           the model card: method, preset, steps, data, the sampler and CFG of the FID
                                record (if the run folder, or a --records folder, has one), a license
                                placeholder

Every folder holds one time convention: t = 1 noise, t = 0 data, v = d x_t / dt (this codebase's, REPA's and
SRA's). A SiT-convention file (t = 0 noise) is folded into it on export (checkpoint.sit_to_ours: the first
t-MLP layer and the sign of the output layer rewritten; exact up to fp32 rounding of that one product).
The time input is t itself in [0, 1] (no x1000), the null class of classifier-free guidance is label
num_classes.
"""
import glob
import inspect
import json
import os

import torch

from infra.fileio import atomic_path, atomic_write_json, atomic_write_text

from .checkpoint import (EXPORT_KEY, Checkpoint, CheckpointError, check_finite, export_settings,
                         load_state_dict_strict, read_checkpoint, sit_to_ours, weights_digest)
from .vae import DEFAULT_VAE_ID, LATENT_SCALE

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"
# SiT.__init__'s arguments, in config.json under their own names
INIT_KEYS = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
             "num_classes", "learn_sigma", "qk_norm", "align_head", "z_dim", "head_depth")
PROCESSES = {
    "linear": "x_t = (1 - t) x0 + t eps",
    "cosine": "x_t = cos(pi t / 2) x0 + sin(pi t / 2) eps",
}


# ------------------------------------------------------------------------------------------------------------
# Reading a folder (read_checkpoint, SiT.from_pretrained)
# ------------------------------------------------------------------------------------------------------------

def is_model_folder(path: str) -> bool:
    """A folder with config.json and model.safetensors (an export, or a PyTorchModelHubMixin save)."""
    return all(os.path.isfile(os.path.join(path, f)) for f in (CONFIG, WEIGHTS))


def read_config(path: str) -> dict:
    try:
        with open(os.path.join(path, CONFIG)) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: its {CONFIG} cannot be read ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its {CONFIG} is not a JSON object")
    return config


def read_folder(path: str) -> Checkpoint:
    """A model folder as a Checkpoint (source 'export'): the EMA from model.safetensors, the settings from
    config.json (a folder without a time convention, e.g. a plain save_pretrained, is like a bare state
    dict: the caller must say it)."""
    if not is_model_folder(path):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (a model folder holds {CONFIG} "
                              f"and {WEIGHTS}: python -m models.export CKPT {path} --format hf)")
    config = read_config(path)
    weights = read_checkpoint(os.path.join(path, WEIGHTS))
    settings = {k: v for k, v in config.items() if v is not None}
    return Checkpoint(path, "export", weights.weights, args=config.get("args") or {},
                      time_convention=config.get("time_convention"), steps=config.get("steps"),
                      settings=settings)


def load_pretrained(cls: type, model_id: str, model_kwargs: dict, config: dict | None, map_location: str,
                    hub: dict) -> torch.nn.Module:
    """SiT._from_pretrained: build `cls(**model_kwargs)` without storage and load model.safetensors strictly
    (every key, every shape, finite values), in eval mode. model_id: a folder, or a Hub repository (hub:
    revision, cache_dir, force_download, local_files_only, token)."""
    from safetensors.torch import load_file

    if os.path.isdir(model_id):
        path = os.path.join(model_id, WEIGHTS)
        if not os.path.isfile(path):
            raise CheckpointError(f"{model_id}: no {WEIGHTS} in this folder")
    else:
        from huggingface_hub import hf_hub_download
        path = hf_hub_download(repo_id=model_id, filename=WEIGHTS, **hub)
    if (config or {}).get("time_convention") == "sit":
        raise CheckpointError(f"{model_id}: its {CONFIG} says time convention 'sit' (t = 0 noise); "
                              "SiT.from_pretrained returns networks in this codebase's (t = 1 noise): export "
                              "the checkpoint with python -m models.export, which converts it")
    init = set(inspect.signature(cls.__init__).parameters)
    sd = load_file(path, device=map_location)
    check_finite(sd, path)
    with torch.device("meta"):
        model = cls(**{k: v for k, v in model_kwargs.items() if k in init})
    load_state_dict_strict(model, sd, source=path, assign=True)
    return model.float().eval()


# ------------------------------------------------------------------------------------------------------------
# Writing a folder
# ------------------------------------------------------------------------------------------------------------

def vae_name(args: dict, in_channels: int) -> str | None:
    """The SD-VAE that decodes the model's latents (None: a pixel model). The ema and mse variants share the
    encoder, so the latents are the same; the run's --vae names the decoder its previews used."""
    if in_channels != 4:
        return None
    vae = str(args.get("vae") or "ema")
    if vae in ("ema", "mse"):
        return f"stabilityai/sd-vae-ft-{vae}"
    return os.path.basename(os.path.normpath(vae)) or DEFAULT_VAE_ID


def hf_config(settings: dict, model: torch.nn.Module) -> dict:
    """config.json: SiT.__init__'s arguments, then what the network means (process, time, latents)."""
    init = {k: getattr(model, "_hub_mixin_config", {}).get(k) for k in INIT_KEYS}
    path_type = settings["path_type"] or "linear"
    latent = settings["in_channels"] == 4
    process = dict(path_type=path_type, interpolant=PROCESSES[path_type], t_noise=1.0, t_data=0.0,
                   prediction="velocity v = d x_t / dt" + (" = eps - x0" if path_type == "linear" else ""),
                   time_input="t in [0, 1] as it is (no x1000)", null_class=settings["num_classes"])
    return dict(init, model=settings["model"], time_convention=settings["time_convention"], process=process,
                resolution=settings["resolution"], latent_scale=LATENT_SCALE if latent else None,
                vae=vae_name(settings["args"], settings["in_channels"]),
                pixel_range=None if latent else [-1.0, 1.0], steps=settings["steps"], weights="ema",
                digest=settings["digest"], source=settings["source"], source_file=settings["source_file"],
                converted_from=settings.get("converted_from"), path_type=path_type, args=settings["args"])


def export_hf(ckpt: str, out_dir: str, time_convention: str | None = None, records: tuple[str, ...] = ()
              ) -> dict:
    """Write `ckpt`'s EMA as a model folder (module docstring) -> its config. records: folders searched for
    an FID record besides the run folder (find_records)."""
    from safetensors.torch import save_file

    from .sit import SiT_models

    if os.path.exists(out_dir):
        other = [f for f in os.listdir(out_dir) if f not in (CONFIG, WEIGHTS, CARD)]
        if not os.path.isdir(out_dir) or other:
            raise CheckpointError(f"{out_dir}: exists and is not an earlier model folder (it holds "
                                  f"{', '.join(sorted(other)[:4]) or 'a file'}): choose another OUT_DIR")
    ck = read_checkpoint(ckpt)
    sd = ck.state_dict("ema")
    settings = export_settings(ck, sd, time_convention)
    # the digest sample folders and evaluator records know these weights by
    source_digest = settings["digest"]
    if settings["time_convention"] == "sit":
        sd = sit_to_ours(sd)
        settings.update(time_convention="ours", converted_from="sit", digest=weights_digest(sd))
    kwargs = {k: settings[k] for k in ("input_size", "in_channels", "num_classes", "learn_sigma", "qk_norm",
                                       "align_head", "z_dim", "head_depth")}
    with torch.device("meta"):
        model = SiT_models[settings["model"]](**kwargs)
    load_state_dict_strict(model, sd, source=ckpt, assign=True)
    config = hf_config(settings, model)
    config["evaluation"] = find_records(run_folder(ckpt), records, source_digest, settings["steps"])
    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, WEIGHTS)) as tmp:
        meta = json.dumps({**settings, "source_digest": source_digest})
        tensors = {k: v.contiguous() for k, v in sd.items()}
        save_file(tensors, tmp, metadata={"format": "pt", EXPORT_KEY: meta})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    atomic_write_json(os.path.join(out_dir, CONFIG), config)
    atomic_write_text(os.path.join(out_dir, CARD), model_card(config))
    return config


# ------------------------------------------------------------------------------------------------------------
# The FID record of the exported weights
# ------------------------------------------------------------------------------------------------------------

def run_folder(ckpt: str) -> str | None:
    """runs/RUN for runs/RUN/checkpoints/NNNNNNN.pt, else None."""
    parent = os.path.dirname(os.path.abspath(ckpt))
    return os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else None


def _json(path: str) -> dict | None:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _sampling_of(record_path: str, record: dict) -> dict | None:
    """The sampling.json sample_ddp.py wrote next to the evaluated samples (or next to the record)."""
    for folder in (os.path.dirname(record_path), os.path.dirname(str(record.get("samples", "")))):
        found = _json(os.path.join(folder, "sampling.json"))
        if found:
            return found
    return None


def find_records(run_dir: str | None, extra: tuple[str, ...], digest: str, steps: int | None) -> list[dict]:
    """The evaluations of these weights found under the run folder and `extra`: ADM evaluator records
    (*_eval.json) whose sampling.json names the same weights (sha256), the digits metric (eval_digits.json)
    and the in-training fid_proxy at the same step. -> [{kind, ...numbers, sampler}]."""
    found = []
    for root in [r for r in (run_dir, *extra) if r]:
        for path in sorted(glob.glob(os.path.join(root, "**", "*_eval.json"), recursive=True)):
            rec = _json(path)
            sampling = _sampling_of(path, rec or {})
            if not rec or "fid" not in rec or not sampling or sampling.get("weights_digest") != digest:
                continue
            found.append(dict(kind="adm", record=os.path.abspath(path), metrics=rec.get("metrics"),
                              num_samples=rec.get("num_samples"), sampler=sampling.get("settings")))
    if run_dir is None:
        return found
    digits = _json(os.path.join(run_dir, "eval_digits.json"))
    if digits and digits.get("step") == steps:
        found.append(dict(kind="digits", record=os.path.join(run_dir, "eval_digits.json"),
                          metrics={"fd": digits.get("fd"), "accuracy": digits.get("accuracy")},
                          num_samples=digits.get("n"),
                          sampler={"mode": "sde", "num_steps": int(str(digits.get("sampler")).split("-")[-1]),
                                   "cfg_scale": 1.0}))
    args = _json(os.path.join(run_dir, "args.json")) or {}
    metrics = os.path.join(run_dir, "metrics.jsonl")
    rows = []
    if os.path.isfile(metrics):
        with open(metrics) as f:
            rows = [json.loads(line) for line in f if '"fid_proxy"' in line]
    for row in rows:
        if row.get("step") == steps:
            found.append(dict(kind="fid_proxy", record=metrics, metrics={"fid_proxy": row["fid_proxy"]},
                              num_samples=args.get("fid_samples"),
                              sampler={"mode": "sde", "num_steps": args.get("preview_num_steps"),
                                       "cfg_scale": args.get("preview_cfg_scale")}))
    return found


# ------------------------------------------------------------------------------------------------------------
# The model card
# ------------------------------------------------------------------------------------------------------------

def method_of(args: dict) -> str:
    """The paper's name for what a run's flags train (README.md's method table)."""
    target = args.get("align_target")
    if target is None:
        target = "ema" if args.get("use_alignment_loss", True) else "none"
    if target == "none":
        return "SiT (flow matching, no alignment)"
    if target == "repa":
        return "REPA (alignment to DINOv2-B patch tokens)"
    if target == "sra2":
        return "SRA 2 (alignment to the clean VAE latent; our reading)"
    groups = args.get("dual_time_scheduling") or args.get("attention_separation")
    if args.get("teacher_t") == "self_flow":
        return "Self-Flow (DTS, teacher on the whole image at t_lo; as the release renders it)"
    if groups and args.get("full_sample_prob"):
        return "SRA + DTS + AS with full-image mixing (the paper's scheme)"
    if groups:
        return "SRA + DTS + AS (the paper's scheme)"
    if str(args.get("align_weight_schedule", "constant")).startswith("sra-"):
        return "SRA (the original SiT-SRA recipe)"
    return "SRA (EMA-teacher self-representation alignment)"


def _sampler_text(s: dict | None) -> str:
    if not s:
        return "not recorded"
    modes = {"ode": "Euler ODE", "sde": "Euler-Maruyama SDE"}
    mode = "Heun ODE" if s.get("heun") else modes.get(s.get("mode"))
    cfg = s.get("cfg_scale")
    text = f"{mode}, {s.get('num_steps')} steps, "
    if cfg is None or cfg <= 1:
        return text + "no CFG"
    low, high = s.get("guidance_low", 0.0), s.get("guidance_high", 1.0)
    return text + (f"CFG {cfg:g} on channels {s.get('cfg_channels', 'all')} for t in [{low:g}, {high:g}]")


def _evaluation_lines(config: dict) -> list[str]:
    records = config.get("evaluation") or []
    if not records:
        return ["No FID record was found for these weights (none in the run folder, or in the folders given "
                "with --records). Measure one with sample_ddp.py and evaluations/evaluator.py (README.md, "
                "steps 3-4), then export again."]
    lines = ["| record | metrics | samples | sampler and CFG |", "|---|---|---|---|"]
    for r in records:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in (r.get("metrics") or {}).items() if v is not None)
        what = {"adm": "ADM evaluator", "digits": "digits metric (Frechet distance in a digit classifier's "
                "features, accuracy)", "fid_proxy": "in-training FID proxy"}[r["kind"]]
        lines.append(f"| {what} | {metrics} | {r.get('num_samples')} | {_sampler_text(r.get('sampler'))} |")
    return lines


def model_card(config: dict) -> str:
    """README.md of a model folder: YAML metadata for the Hub, then the card."""
    args = config.get("args") or {}
    name = args.get("exp_name") or config["model"]
    data = args.get("data_dir", "not recorded")
    process = config["process"]
    shape = f"{config['in_channels']} x {config['input_size']} x {config['input_size']}"
    if config["vae"]:
        scale = config["latent_scale"]
        space = f"SD-VAE latents ({config['vae']}), {shape}, scaled by {scale} (decode z / {scale})"
    else:
        space = f"pixels in [-1, 1], {shape}"
    warm = f"warm-started from {args['init_ckpt']}" if args.get("init_ckpt") else "trained from scratch"
    rows = [
        ("method", method_of(args)),
        ("preset", f"`{args['preset']}`" if args.get("preset") else "none (flags only)"),
        ("model", f"{config['model']}, {config['num_classes']} classes (label {config['num_classes']} is the "
                  f"null class for CFG)"),
        ("training steps", f"{config['steps']} ({warm}; global batch {args.get('batch_size')}, lr "
                           f"{args.get('learning_rate')}, EMA decay {args.get('ema_decay')})"),
        ("data", f"`{data}` at {config['resolution'] or config['input_size']} px"),
        ("weights", f"EMA, sha256 {config['digest'][:16]}..."),
        ("process", f"{process['interpolant']}; t = 1 noise, t = 0 data; the network predicts "
                    f"{process['prediction']}; time input {process['time_input']}"),
        ("space", space),
    ]
    if config.get("converted_from") == "sit":
        rows.append(("converted", "from SiT's time convention (t = 0 noise): v(x, t) = -v_sit(x, 1 - t)"))
    lines = ["---", "license: other", "library_name: pytorch",
             "tags:", "- sit", "- flow-matching", "- class-conditional-image-generation",
             "- pytorch_model_hub_mixin", "---", "",
             f"# {name}: {config['model']}, {method_of(args)}", "",
             "A SiT (Scalable Interpolant Transformer) exported by `python -m models.export ... --format hf` "
             "from the SiT / SRA / Self-Flow codebase of \"From SRA to Self-Flow: Data Augmentation or "
             "Self-Supervision?\" (arXiv 2607.02508).", "",
             "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
             "## Evaluation", "", *_evaluation_lines(config), "",
             "## Use", "", "```bash",
             "python sample_ddp.py --ckpt THIS_FOLDER --num-fid-samples 50000          # this codebase",
             "python -m models.diffusers_io THIS_FOLDER DIFFUSERS_FOLDER                # diffusers' DiT",
             "```", "", "```python", "from models import SiT",
             "model = SiT.from_pretrained(\"THIS_FOLDER\")  # v = model(x_t, t, y), t in [0, 1], t = 1 noise",
             "```", "",
             "## License", "",
             "License: to be filled in before publishing (the YAML header says `other`). The weights "
             "inherit the terms of the training data and of any checkpoint they were warm-started from.", ""]
    return "\n".join(lines)
