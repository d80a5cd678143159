"""Train SiT with flow matching + self-representation alignment (SRA), DTS and AS. Wiring only: the math is
in loss.py. The defaults are the release's recipe (presets.RELEASE); a preset is one row over them.

    python train.py --preset digits                                   # the embedded quickstart, CPU, minutes
    python train.py --preset sit-b2 --print-config                    # what a preset resolves to
    accelerate launch --multi_gpu --num_processes 8 train.py --preset ours-b2 --data-dir /data/imagenet256
    accelerate launch --multi_gpu --num_processes 8 train.py --preset ours-xl2 --data-dir ... --resume auto
"""
import argparse
import dataclasses
import datetime
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import (DistributedDataParallelKwargs, InitProcessGroupKwargs, broadcast_object_list,
                              gather_object, set_seed)
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import Dataset, default_collate
from tqdm import tqdm

import samplers
from dataset import DataError, EpochOrder, build_dataset, train_batches
from evaluations.fid_proxy import FidProxy, log_fid_proxy
from infra import fileio, flags, runlog, tracking
from infra.fileio import atomic_write_json, remove_stale_temporaries, unusable_folder
from infra.preemption import RunControl, StopSignals, follow_launcher, parse_signals, survive_closed_output
from loss import STEP_SCHEDULES, LossConfig, REPATarget, TrainingLoss, VAELatentTarget, student_head
from models import (DIT_NAMES, SIZES, CheckpointError, SiT, SiT_models, init_from_checkpoint,
                    load_state_dict_strict, patch_size_of, read_training_state)
from models.dinov2 import DINOV2_DIMS
from models.sit import SRA2_HEAD_DEPTH
from models.vae import LATENT_SCALE, decode_latents, load_vae_spec
from presets import PRESETS, RELEASE

# The alignment target objects of --align-target repa / sra2 (loss.py); None is the EMA teacher.
AlignTarget = REPATarget | VAELatentTarget


# ------------------------------------------------------------------------------------------------------------
# Flags (names as in the public release; a preset fills the defaults, explicit flags win)
# ------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """train.py's flags. The defaults are the release's recipe (presets.RELEASE); the loss flags are
    loss.LossConfig's fields, one --field-name flag each; the release's / REPA's spellings come from
    infra/flags.py's tables."""
    p = flags.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B = argparse.BooleanOptionalAction
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="the paper's recipes (presets.py)")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default="runs")
    g.add_argument("--exp-name", default=None, help="run folder name (default: preset or model)")
    g.add_argument("--data-dir", default="digits",
                   help="preprocessed latents, REPA vae-sd folder, or 'digits[:R]'")
    g.add_argument("--resume", default=None, help="a checkpoint path, or 'auto' (the run folder's latest)")
    g.add_argument("--init-ckpt", default=None, metavar="PATH",
                   help="start from these weights (and EMA), fresh optimizer, step 0: a checkpoint of this "
                        "codebase, a SiT / REPA / SRA file or an exported .safetensors (a checkpoint to "
                        "resume wins)")
    g.add_argument("--init-time-convention", choices=["ours", "repa", "sit"], default=None,
                   help="time convention of a bare --init-ckpt state dict: sit (t = 0 noise) or repa / ours")
    g.add_argument("--init-keep-classes", action="store_true",
                   help="--init-ckpt onto another number of classes: keep the file's label rows for the "
                        "shared classes 0..K-1 (default: fresh class rows; the null-class row is kept)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-train-steps", type=int)
    g.add_argument("--checkpoint-steps", type=int)
    g.add_argument("--dist-timeout-minutes", type=float, default=120.0,
                   help="how long a collective waits for the slowest rank (an evaluation, a checkpoint "
                        "write) before the run fails")
    g.add_argument("--checkpoint-minutes", type=float, default=30.0,
                   help="rolling checkpoints/latest.pt every N minutes (one file, replaced; 0 = never)")
    g.add_argument("--stop-signals", default="SIGTERM,SIGUSR1,SIGHUP",
                   help="signals that stop the run after the step in flight, with a checkpoint ('none': off; "
                        "SIGHUP: the terminal or ssh session closed)")
    g.add_argument("--keep-last", type=int, default=0, help="keep only the newest N checkpoints (0 = all)")
    g.add_argument("--keep-every", type=int, default=100_000,
                   help="with --keep-last, also keep multiples of this")
    g.add_argument("--sample-steps", type=int, help="EMA preview grid every N steps (0 = never)")
    g.add_argument("--log-every", type=int, default=100)
    g.add_argument("--report-to", choices=["none", "all", *tracking.supported_trackers()], default="none",
                   help="a tracker accelerate supports, all (the installed ones) or none (infra/tracking.py)")
    g.add_argument("--num-workers", type=int, default=8)
    g.add_argument("--threads", type=int, default=0,
                   help="CPU intra-op threads (0: auto, one for the small models of CPU runs: they slow down "
                        "several-fold when other processes share the cores; torch's default otherwise)")
    g.add_argument("--vae", default="ema", help="SD-VAE for previews: ema | mse (HF cache) | a local folder")
    g.add_argument("--eval-samples", type=int, default=0,
                   help="digits: samples for the embedded metric at the end")
    g.add_argument("--preview-num-steps", type=int, default=50)
    g.add_argument("--preview-cfg-scale", type=float, default=1.0)
    g.add_argument("--fid-every", type=int, default=0,
                   help="fid_proxy every N steps (0 = never): FID of --fid-samples EMA samples (preview "
                        "sampler) vs --fid-ref, torch backend (evaluations/fid_proxy.py)")
    g.add_argument("--fid-ref", default=None, help="reference batch npz for --fid-every (mu/sigma or arr_0)")
    g.add_argument("--fid-samples", type=int, default=5000, help="EMA samples per fid_proxy")
    g.add_argument("--fid-inception", default=None,
                   help="Inception graph (default: $ADM_INCEPTION_GRAPH or cache)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--model", choices=sorted(SiT_models) + sorted(DIT_NAMES),
                   help="SiT-{S,B,L,XL}/{2,4,8} (and T, N for CPU runs); DiT-X/p is SiT-X/p with --process "
                        "ddpm (DiT's spelling)")
    g.add_argument("--qk-norm", action=B, default=False)
    g.add_argument("--sra2-head-depth", type=int, default=SRA2_HEAD_DEPTH,
                   help="--align-target sra2: the head's Linear + SiLU layers before its SiT-style final "
                        "layer (models/sit.py SRA2Head; presets.py says which reading)")
    g.add_argument("--batch-size", type=int, help="global batch (all GPUs, all accumulation steps)")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1)
    g.add_argument("--learning-rate", type=float)
    g.add_argument("--adam-beta1", type=float)
    g.add_argument("--adam-beta2", type=float)
    g.add_argument("--adam-weight-decay", type=float)
    g.add_argument("--adam-epsilon", type=float)
    g.add_argument("--max-grad-norm", type=float)
    g.add_argument("--ema-decay", type=float)
    g.add_argument("--mixed-precision", choices=["bf16", "fp16", "no"])
    g.add_argument("--compile", action=B, default=False, help="torch.compile (--compile-scope)")
    g.add_argument("--compile-scope", choices=["blocks", "step"], default="blocks",
                   help="blocks: every block of the student and of the EMA teacher; step: the whole loss "
                        "(the draws, student, teacher, distances) as one graph, fullgraph on one process")
    g.add_argument("--grad-checkpointing", action=B, default=False,
                   help="recompute each student block in the backward pass (less memory, more compute)")
    add_loss_flags(p.add_argument_group("loss (loss.LossConfig)"))
    g = p.add_argument_group("REPA's encoder (--align-target repa)")
    g.add_argument("--enc-type", choices=sorted(DINOV2_DIMS) + sorted(flags.REPA_ENCODERS),
                   default="dinov2_vitb14", help="REPA encoder")
    g.add_argument("--enc-weights", default=None, help="REPA encoder weights file (local; never downloaded)")
    g.add_argument("--repa-features", default=None, metavar="NAME",
                   help="REPA's targets precomputed from the real images: a folder under --data-dir written "
                        "by `python -m preprocessing repa-features DATA_DIR --enc-type ENC --patch-size P` "
                        "(NAME = repa-ENC-pP, e.g. repa-dinov2_vitb14-p2), or auto (the REPA presets): that "
                        "folder on latents, none on the pixel digits (DINOv2 on the images); needs "
                        "--align-target repa")
    p.set_defaults(**RELEASE)
    flags.add_train_flags(p)
    return p


def add_loss_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per loss.LossConfig field: --field-name, help / choices / nargs / type from its metadata,
    booleans as --x / --no-x; the release's values of a field (flags.TRAIN_VALUES) are accepted too."""
    for f in dataclasses.fields(LossConfig):
        kw = dict(f.metadata)
        if f.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif f.name == "mask_ratio":
            # "0.25", "[0.5,0.3,0.2]", "0.5,0.5": the release's spellings
            kw["type"] = flags.mask_ratio_values
        else:
            kw.setdefault("type", f.type)
        if "choices" in kw and f.name in flags.TRAIN_VALUES:
            kw["choices"] = (*kw["choices"], *flags.TRAIN_VALUES[f.name][0])
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=f.default, **kw)


def parse_args(argv: list[str] | None = None, notes: list[str] | None = None) -> argparse.Namespace:
    """Flags -> args (the preset fills the defaults; the release's / REPA's spellings are converted,
    infra/flags.py). notes: a list that receives one line per release / REPA flag met."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    known, _ = parser.parse_known_args(argv)
    if known.preset:
        parser.set_defaults(**PRESETS[known.preset])
    args = parser.parse_args(argv)
    if args.exp_name is None:
        args.exp_name = args.preset or args.model.replace("/", "-")
    given = flags.given_dests(parser, argv)
    dit = dit_model(parser, args, given)
    found = ([dit] if dit else []) + flags.resolve_train(parser, args, given)
    if args.repa_features == "auto":
        args.repa_features = repa_features_for(args)
    if notes is not None:
        notes.extend(found)
    return args


def dit_model(parser: argparse.ArgumentParser, args: argparse.Namespace, given: set) -> str | None:
    """--model DiT-X/p (DiT's and the release's DiT-SRA spelling): the same network as SiT-X/p, trained with
    DDPM. -> a note, or None for a SiT name; a DiT name with --process flow given is refused."""
    if args.model not in DIT_NAMES:
        return None
    if "process" in given and args.process != "ddpm":
        parser.error(f"--model {args.model} is DiT: the {DIT_NAMES[args.model]} network with --process ddpm, "
                     f"but --process is {args.process}")
    name = args.model
    args.model = DIT_NAMES[name]
    args.process = "ddpm"
    return f"--model {name} -> --model {args.model} --process ddpm (DiT: the same network, trained with DDPM)"


def repa_features_for(args: argparse.Namespace) -> str | None:
    """--repa-features auto: REPA's targets come from the real images, so on latents they are the
    precomputed folder (`python -m preprocessing repa-features`), on the pixel digits the images themselves
    (None)."""
    from preprocessing.repa_features import features_folder_name

    if args.align_target != "repa" or str(args.data_dir).split(":")[0] == "digits":
        return None
    return features_folder_name(args.enc_type, patch_size_of(args.model))


# Every numeric flag's allowed values (interval notation; "inf]" admits infinity, NaN never passes), checked
# at start: a value outside crashes deep inside torch, or trains or previews silently wrong. --seed depends
# on the number of processes (check_args). tests/test_flag_ranges.py enumerates the parser against it.
RANGES = {
    "max_train_steps": "[1, inf)", "checkpoint_steps": "[1, inf)", "log_every": "[1, inf)",
    "dist_timeout_minutes": "(0, inf)", "checkpoint_minutes": "[0, inf)", "keep_last": "[0, inf)",
    "keep_every": "[0, inf)", "sample_steps": "[0, inf)", "num_workers": "[0, inf)", "threads": "[0, inf)",
    "eval_samples": "[0, inf)", "preview_num_steps": "[1, inf)", "preview_cfg_scale": "[0, inf)",
    "fid_every": "[0, inf)", "fid_samples": "[1, inf)", "sra2_head_depth": "[1, inf)",
    "batch_size": "[1, inf)", "gradient_accumulation_steps": "[1, inf)", "learning_rate": "[0, inf)",
    "adam_beta1": "[0, 1)", "adam_beta2": "[0, 1)", "adam_weight_decay": "[0, inf)",
    "adam_epsilon": "(0, inf)", "max_grad_norm": "(0, inf]", "ema_decay": "[0, 1]",
    "class_dropout_prob": "[0, 1)", "align_weight": "[0, inf)", "align_until": "[0, inf)",
    "block_out_s": "[1, inf)", "block_out_t": "[1, inf)", "full_sample_prob": "[0, 1]", "t_max": "[0, 1]",
    "mask_ratio": "[0, 1)", "epochs": "[1, inf)", "checkpoint_epochs": "[1, inf)", "resolution": "[1, inf)",
    "num_classes": "[1, inf)",
}


def out_of_range(flag: str, value: float, interval: str) -> str:
    """The message for `value` outside `interval` ("[0, 1)", "(0, inf]", ...), "" when inside. NaN is
    outside every interval."""
    low, high = (float(v) for v in interval[1:-1].split(","))
    above_low = value > low or (interval[0] == "[" and value == low)
    below_high = value < high or (interval[-1] == "]" and value == high)
    if above_low and below_high:
        return ""
    return f"{flag} must lie in {interval}, got {value}"


def check_args(args: argparse.Namespace, world_size: int) -> None:
    """Flag values that would crash deep inside torch or train silently wrong, refused in one line each."""
    problems = []
    for dest, interval in RANGES.items():
        values = getattr(args, dest, None)
        # --mask-ratio is a list; None: unset (a default that depends on the data or the run)
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if value is not None:
                problems.append(out_of_range(f"--{dest.replace('_', '-')}", value, interval))
    # rank r draws with seed + r + 1
    if not 0 <= args.seed < 2 ** 32 - world_size - 1:
        problems.append(f"--seed must lie in [0, 2**32 - {world_size + 1}), got {args.seed}")
    # a run folder of its own, inside --output-dir (sub-folders such as sweep/run1 are fine)
    name = os.path.normpath(args.exp_name or ".")
    if name == "." or name.startswith("..") or os.path.isabs(name):
        problems.append(f"--exp-name must name a folder inside --output-dir, got {args.exp_name!r}")
    run_dir = os.path.join(args.output_dir, args.exp_name)
    problems.append(unusable_folder(run_dir, "--output-dir / --exp-name"))
    problems = [p for p in problems if p]
    if problems:
        several = f"{len(problems)} bad flags: {'; '.join(problems)}"
        raise SystemExit(problems[0] if len(problems) == 1 else several)
    if args.batch_size % (world_size * args.gradient_accumulation_steps):
        raise SystemExit(f"--batch-size {args.batch_size} is the global batch: it must be divisible by "
                         f"{world_size} processes x --gradient-accumulation-steps "
                         f"{args.gradient_accumulation_steps}")
    if args.process == "ddpm" and args.preview_num_steps > 1000:
        raise SystemExit(f"--preview-num-steps {args.preview_num_steps}: --process ddpm respaces DiT's 1000 "
                         "steps, so at most 1000")
    if args.process == "ddpm" and args.init_ckpt:
        raise SystemExit("--init-ckpt with --process ddpm: warm starts are implemented for flow-matching "
                         "files only (their time conventions); start the DDPM run from scratch")
    if args.repa_features and args.align_target != "repa":
        raise SystemExit(f"--repa-features {args.repa_features} holds REPA targets: it needs "
                         f"--use-alignment-loss --align-target repa (or --align-target repa alone; e.g. "
                         f"--preset repa-b2)")


# ------------------------------------------------------------------------------------------------------------
# Builders: what the run trains. bench.py builds its step through these too.
# ------------------------------------------------------------------------------------------------------------

def build_target(args: argparse.Namespace, dataset: Dataset, device: torch.device) -> AlignTarget | None:
    """The alignment target (loss.py): None = the EMA teacher, built by the loss itself."""
    if args.align_target in ("none", "ema"):
        return None
    if args.align_target == "sra2":
        return VAELatentTarget()
    # The targets come with the batches.
    if args.repa_features:
        info = dataset.features_info
        tokens = (dataset.latent_size // patch_size_of(args.model)) ** 2
        if info["encoder"] != args.enc_type or info["tokens"] != tokens:
            raise SystemExit(f"--repa-features {args.repa_features}: written for {info['encoder']} with "
                             f"{info['tokens']} tokens, this run has --enc-type {args.enc_type} and "
                             f"{args.model} with {tokens} tokens")
        return REPATarget(dim=DINOV2_DIMS[args.enc_type])
    # Never DINOv2 on VAE reconstructions: REPA sees the real images.
    if dataset.is_latent:
        raise SystemExit(f"REPA on latents ({args.data_dir}) reads DINOv2 targets precomputed from the real "
                         f"images: run `python -m preprocessing repa-features {args.data_dir} --enc-type "
                         f"{args.enc_type} --patch-size {patch_size_of(args.model)}` and pass "
                         f"--repa-features auto (the presets do)")
    from models.dinov2 import load_dinov2
    try:
        encoder = load_dinov2(args.enc_type, path=args.enc_weights).to(device)
    except (FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"--enc-weights: {e}") from None
    # Pixel data: x0 is the image.
    return REPATarget(encoder, to_images=lambda x0: x0)


def build_model(args: argparse.Namespace, dataset: Dataset, target: AlignTarget | None = None) -> SiT:
    """SiT with the alignment head the target asks for (target None: the EMA teacher's, at the model's
    width)."""
    head, z_dim = student_head(target, patch_size_of(args.model), dataset.latent_channels) \
        if args.align_target != "none" else (None, None)
    # DDPM (DiT): eps and the learned variance, 2C output channels
    model = SiT_models[args.model](input_size=dataset.latent_size, in_channels=dataset.latent_channels,
                                   num_classes=dataset.num_classes, learn_sigma=args.process == "ddpm",
                                   qk_norm=args.qk_norm, align_head=head,
                                   z_dim=z_dim, head_depth=args.sra2_head_depth if head == "sra2" else None)
    # the student's block for every target; the teacher's only for the EMA teacher
    blocks = {"none": (), "ema": (("--block-out-s", args.block_out_s), ("--block-out-t", args.block_out_t))}
    for flag, block in blocks.get(args.align_target, (("--block-out-s", args.block_out_s),)):
        if not 1 <= block <= model.depth:
            raise SystemExit(f"{flag} {block} is outside {args.model}'s blocks 1..{model.depth}")
    model.grad_checkpointing = args.grad_checkpointing
    return model


def build_ema(model: SiT) -> SiT:
    """The EMA teacher: an exact copy of the student at the start (Sec. 3), no gradients, eval mode."""
    return deepcopy(model).requires_grad_(False).eval()


def build_loss(args: argparse.Namespace, model: SiT, dataset: Dataset, target: AlignTarget | None = None,
               ema: torch.nn.Module | None = None) -> TrainingLoss:
    """The loss of the LossConfig that args spell (one flag per field), its EMA teacher bound to `ema`."""
    cfg = LossConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LossConfig)})
    try:
        return TrainingLoss(cfg, num_tokens=model.num_tokens, grid=model.grid, patch=model.patch_size,
                            num_classes=dataset.num_classes, target=target, ema=ema)
    except ValueError as e:
        raise SystemExit(f"invalid flags: {e}") from None


def build_optimizer(args: argparse.Namespace, model: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW with the run's settings (fused on CUDA)."""
    fused = next(model.parameters()).device.type == "cuda"
    betas = (args.adam_beta1, args.adam_beta2)
    return torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=betas,
                             weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, fused=fused)


def compile_step(scope: str, model: SiT, ema: SiT, loss_fn: TrainingLoss, fullgraph: bool = True) -> None:
    """torch.compile: every block of the student and of the EMA teacher (scope "blocks"), or the loss's terms,
    the whole forward of a step, as one graph (scope "step"; fullgraph: no graph break allowed)."""
    if scope == "blocks":
        for block in [*model.blocks, *ema.blocks]:
            block.compile()
    else:
        loss_fn.terms = torch.compile(loss_fn.terms, fullgraph=fullgraph)


# ------------------------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------------------------

def train_step(accelerator: Accelerator, model: torch.nn.Module, loss_fn: TrainingLoss,
               opt: torch.optim.Optimizer, batches: Iterator, args: argparse.Namespace,
               epoch: int, step: int = 0) -> dict[str, torch.Tensor]:
    """One optimizer step over --gradient-accumulation-steps batches: the loss (student and alignment target,
    loss.py), backward, gradient clipping, AdamW. -> the logged values summed over the micro-batches, on the
    device (no host sync)."""
    sums = {}
    for _ in range(args.gradient_accumulation_steps):
        x, y, extra = next(batches)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss, logs = loss_fn(model, x, y, epoch=epoch, step=step, **extra)
            loss = loss.mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                logs["grad_norm"] = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        logs["loss"] = loss.detach()
        for k, v in logs.items():
            sums[k] = sums.get(k, 0) + v.detach().float()
    return sums


def ema_updater(model: torch.nn.Module, ema: torch.nn.Module, decay: float):
    """update_ema(): ema <- decay ema + (1 - decay) model on every tensor, one fused multi-tensor lerp."""
    params = list(model.parameters())
    ema_params = list(ema.parameters())
    lerp = get_ema_multi_avg_fn(decay)
    return lambda: lerp(ema_params, params, None)


# ------------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    notes = []
    args = parse_args(argv, notes)
    # No data, no weights, no run folder.
    if args.print_config:
        flags.print_config(args, notes, drop=("print_config",))
        return None
    # before anything runs (the launchers export WORLD_SIZE)
    check_args(args, int(os.environ.get("WORLD_SIZE", "1")))
    try:
        signals = StopSignals(parse_signals(args.stop_signals))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    # The launcher's death stops this rank, and its closed pipe (or a closed terminal) cannot end it first.
    follow_launcher()
    survive_closed_output()
    # TF32 matmuls (the releases' setting), set once for the run
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    set_threads(args)
    try:
        return train(args, signals, notes)
    # a damaged dataset file, named (dataset.py), met while training
    except DataError as e:
        raise SystemExit(f"--data-dir: {e}") from None
    # a full disk, a read-only or unwritable folder at a checkpoint or a preview (infra/fileio.py)
    except fileio.WriteError as e:
        output = os.path.join(args.output_dir, args.exp_name)
        raise SystemExit(f"{e}. Stopping; the last good checkpoint is kept: "
                         f"{runlog.last_good_checkpoint(output)} (free space, then --resume auto)") from None
    finally:
        signals.restore()
        runlog.release_run_folders()


# SiT widths up to this train with one CPU thread by default (--threads 0)
SMALL_WIDTH = 256


def set_threads(args: argparse.Namespace) -> None:
    """--threads: torch's intra-op threads on the CPU. Auto: one for small models without a GPU (measured on
    the digits preset, BENCHMARKS.md: 4.0 steps/s with one thread and 5.6 with two on an idle 2-core machine,
    but 4.0 against 1.0 when two runs share the cores), torch's default otherwise."""
    width = SIZES[args.model.split("-")[1].split("/")[0]][1]
    threads = args.threads or (1 if width <= SMALL_WIDTH and not torch.cuda.is_available() else 0)
    if threads:
        torch.set_num_threads(threads)


def train(args: argparse.Namespace, signals: StopSignals, notes: Sequence[str] = ()) -> None:
    accelerator, run_dir, logger = start_run(args)
    device = accelerator.device
    rank = accelerator.process_index
    world = accelerator.num_processes
    dataset, order, run = load_data(args, rank, world)
    if args.align_weight_schedule in STEP_SCHEDULES and args.align_until is None:
        # linear / cosine decay over the whole run
        args.align_until = run["max_train_steps"]
        run["notes"].append(f"--align-weight-schedule {args.align_weight_schedule}: lambda reaches 0 at the "
                            f"run's last step, --align-until {args.align_until}")
    for note in [*notes, *run.pop("notes")]:
        logger.info(note)
    # None: the EMA teacher.
    target = build_target(args, dataset, device)
    # The same initial weights on every rank.
    set_seed(args.seed)
    model = build_model(args, dataset, target).to(device)
    ema = build_ema(model)
    loss_fn = build_loss(args, model, dataset, target, ema)
    opt = build_optimizer(args, model)
    if args.compile:
        compile_step(args.compile_scope, model, ema, loss_fn, fullgraph=world == 1)
    model, opt = accelerator.prepare(model, opt)
    raw = accelerator.unwrap_model(model)
    record = {**vars(args), **run}
    step, ckpt, source = resume(args, record, run_dir, raw, ema, opt, accelerator, logger)
    batches = train_batches(dataset, order, step * args.gradient_accumulation_steps, device, args.num_workers,
                            ignore_signals=signals.signals)
    # Per-rank draws (t, eps, groups, dropout): the checkpoint's, or fresh ones.
    set_seed(args.seed + rank + 1)
    sums = {}
    counts = {}
    if ckpt is not None:
        if len(ckpt["rng"]) == world:
            dropped = runlog.set_rng_state(ckpt["rng"][rank])
            if dropped:
                logger.warning(dropped)
            sums, counts = runlog.log_sums_from(ckpt, rank, device)
        else:
            logger.warning(f"checkpoint has RNG states of {len(ckpt['rng'])} processes, this run has "
                           f"{world}: random draws are reseeded, the data order still continues exactly")
        logger.info(f"resumed from {source} at step {step}")
    # the checkpoint is memory-mapped: release the file's pages once everything is copied out
    del ckpt
    if accelerator.is_main_process:
        atomic_write_json(os.path.join(run_dir, "args.json"), record)
        # a later, abandoned branch is kept aside
        runlog.set_aside(run_dir, step, logger)
    tracking.init_trackers(accelerator, args, run_dir, config=record)
    trainable = sum(p.numel() for p in raw.parameters() if p.requires_grad)
    logger.info(f"{args.model}: {trainable / 1e6:.2f}M params, {len(dataset)} items, global batch "
                f"{args.batch_size}, {world} process(es), {torch.get_num_threads()} CPU thread(s) "
                f"(--threads), run folder {run_dir}")
    try:
        loop = Loop(args, record, accelerator, run_dir, logger, dataset, model, raw, ema, loss_fn, opt,
                    signals)
        step, stopped = loop.run(step, batches, sums, counts)
    finally:
        # the data loader's workers end with it
        batches.close()
    if accelerator.is_main_process and args.eval_samples and not dataset.is_latent and not stopped:
        evaluate_digits(ema, args, dataset, run_dir, step, device, logger, signals)
    accelerator.end_training()
    if accelerator.is_main_process:
        logger.info(f"done: {run_dir} (checkpoints/, samples/, metrics.jsonl, loss.png)")


def start_run(args: argparse.Namespace) -> tuple[Accelerator, str, logging.Logger]:
    """The accelerator (CPU: gloo under torchrun), the checked flags, the run folder and its log; the
    temporaries of a dead writer are removed."""
    # a collective waits --dist-timeout-minutes for the slowest rank (a checkpoint write, an evaluation)
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=args.dist_timeout_minutes))
    # DDP's gradients as views of its all-reduce buckets: one copy of the gradients less
    ddp = DistributedDataParallelKwargs(gradient_as_bucket_view=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision,
                              log_with=tracking.report_to_trackers(args.report_to) or None,
                              project_dir=os.path.join(args.output_dir, args.exp_name),
                              kwargs_handlers=[timeout, ddp])
    run_dir = os.path.join(args.output_dir, args.exp_name)
    # one training per run folder: rank 0 holds RUN/.lock, every rank hears a refusal
    refused = [""]
    if accelerator.is_main_process:
        os.makedirs(run_dir, exist_ok=True)
        refused = [runlog.lock_run_folder(run_dir)]
    refused = broadcast_object_list(refused)
    if refused[0]:
        raise SystemExit(refused[0])
    if accelerator.is_main_process:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
        os.makedirs(os.path.join(run_dir, "samples"), exist_ok=True)
    accelerator.wait_for_everyone()
    logger = runlog.make_logger(run_dir, main=accelerator.is_main_process)
    # accelerate launch exports its --mixed_precision (or its config's default); Accelerator's argument wins
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher and launcher != args.mixed_precision:
        mp = args.mixed_precision
        logger.warning(f"accelerate launch's mixed precision is {launcher} (its --mixed_precision or its "
                       f"config's default) but --mixed-precision is {mp}: the run trains in {mp}, train.py's "
                       "flag (the preset's or the release recipe's unless given) wins")
    if accelerator.is_main_process:
        for folder in (run_dir, os.path.join(run_dir, "checkpoints"), os.path.join(run_dir, "samples")):
            for path, size in remove_stale_temporaries(folder):
                logger.info(f"removed {path} ({size / 2 ** 20:.1f} MiB): the temporary file of a dead writer")
    return accelerator, run_dir, logger


def load_data(args: argparse.Namespace, rank: int, world: int) -> tuple[Dataset, EpochOrder, dict]:
    """The dataset, this rank's data order (where one global batch must fit) and the run's length in steps:
    {max_train_steps, steps_per_epoch, checkpoint_epoch_steps, notes} (--epochs converted, flags.py)."""
    try:
        dataset = build_dataset(args.data_dir, features=args.repa_features)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--data-dir{' / --repa-features' if args.repa_features else ''}: {e}") from None
    flags.check_train_data(args, dataset)
    local_batch = args.batch_size // world // args.gradient_accumulation_steps
    try:
        order = EpochOrder(len(dataset), local_batch, seed=args.seed, rank=rank, world_size=world,
                           grad_accum=args.gradient_accumulation_steps)
    except ValueError as e:
        raise SystemExit(f"--batch-size {args.batch_size} with --data-dir {args.data_dir}: {e}") from None
    last, every, notes = flags.epoch_steps(args, order.steps_per_epoch, len(dataset))
    return dataset, order, dict(max_train_steps=last, steps_per_epoch=order.steps_per_epoch,
                                checkpoint_epoch_steps=every, notes=notes)


def resume(args: argparse.Namespace, record: dict, run_dir: str, raw: torch.nn.Module, ema: torch.nn.Module,
           opt: torch.optim.Optimizer, accelerator: Accelerator,
           logger: logging.Logger) -> tuple[int, dict | None, str | None]:
    """--resume (a file, or auto: the newest readable checkpoint of the run folder) or --init-ckpt into the
    model, EMA and optimizer. -> (step, the checkpoint or None, its path)."""
    source = args.resume
    ckpt = None
    if source == "auto":
        source, ckpt = runlog.newest_resumable(run_dir, read_resume, logger)
    if not source:
        if args.init_ckpt:
            try:
                for note in init_from_checkpoint(raw, ema, args.init_ckpt, args.init_time_convention,
                                                 keep_classes=args.init_keep_classes):
                    logger.info(note)
            except CheckpointError as e:
                raise SystemExit(f"--init-ckpt: {e}") from None
        return 0, None, None
    ckpt = ckpt if ckpt is not None else read_resume(source)
    try:
        load_state_dict_strict(raw, ckpt["model"], source=f"{source} ['model']")
        load_state_dict_strict(ema, ckpt["ema"], source=f"{source} ['ema']")
    except CheckpointError as e:
        raise SystemExit(f"--resume: {e}") from None
    if args.init_ckpt:
        logger.info(f"--init-ckpt {args.init_ckpt} not used: resuming from {source}")
    changed = [k for k in ("model", "batch_size", "seed", "data_dir", "gradient_accumulation_steps")
               if ckpt.get("args", {}).get(k) != getattr(args, k)]
    if changed:
        logger.warning(f"--resume: {', '.join(changed)} differ from the checkpoint's run: the data order "
                       "and random draws will not continue exactly")
    opt.load_state_dict(ckpt["opt"])
    # This run's flags, not the file's.
    for group in opt.param_groups:
        group.update(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                     weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    changes = runlog.flag_changes(flags.saved_train_args(ckpt.get("args", {})), record)
    if changes:
        logger.info(f"--resume: flags that differ from the checkpoint's run apply from step "
                    f"{ckpt['steps']}: {changes}")
    if ckpt.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(ckpt["scaler"])
    return int(ckpt["steps"]), ckpt, source


def read_resume(path: str) -> dict:
    """A training checkpoint for --resume (models/checkpoint.py), or a one-line SystemExit naming the file."""
    try:
        return read_training_state(path)
    except CheckpointError as e:
        raise SystemExit(f"--resume: {e}") from None


# ------------------------------------------------------------------------------------------------------------
# The loop: the step, the EMA, then what the step's number asks for (log, checkpoint, preview, FID proxy)
# ------------------------------------------------------------------------------------------------------------

class Loop:
    """The training loop of one run and what it writes along the way."""

    def __init__(self, args: argparse.Namespace, record: dict, accelerator: Accelerator, run_dir: str,
                 logger: logging.Logger, dataset: Dataset, model: torch.nn.Module, raw: torch.nn.Module,
                 ema: torch.nn.Module, loss_fn: TrainingLoss, opt: torch.optim.Optimizer,
                 signals: StopSignals):
        self.args = args
        self.record = record
        self.acc = accelerator
        self.run_dir = run_dir
        self.logger = logger
        self.dataset = dataset
        self.model = model
        self.raw = raw
        self.ema = ema
        self.loss_fn = loss_fn
        self.opt = opt
        self.signals = signals
        self.main = accelerator.is_main_process
        self.last_step = record["max_train_steps"]
        self.control = RunControl(signals, accelerator.device, accelerator.num_processes, self.main,
                                  args.checkpoint_minutes)
        self.metrics = runlog.MetricsWriter(run_dir) if self.main else None
        # every rank samples its share of the fid_proxy images; the main process holds the reference
        self.fid_proxy = None
        if args.fid_every or args.fid_ref:
            self.fid_proxy = FidProxy.from_args(args, accelerator.device, reference=self.main)
        # the SD-VAE decodes latent previews (main process) and fid_proxy samples (every rank); None: pixels
        self.vae = None
        if dataset.is_latent and ((args.sample_steps and self.main) or self.fid_proxy is not None):
            self.vae = load_vae_for(args, accelerator.device, logger)

    def run(self, step: int, batches: Iterator, sums: dict, counts: dict) -> tuple[int, bool]:
        """From `step` to the last step, or to a stop signal. -> (the step reached, stopped by a signal)."""
        args = self.args
        update_ema = ema_updater(self.raw, self.ema, args.ema_decay)
        # the ground-truth grid is the previews' yardstick: none without previews
        if self.main and args.sample_steps:
            save_ground_truth(self.acc, self.dataset, self.run_dir, step, self.acc.device, self.vae)
        self.t_log = time.time()
        self.step_log = step
        bar = tqdm(total=self.last_step, initial=step, disable=not self.main, dynamic_ncols=True,
                   desc="train")
        self.model.train()
        while step < self.last_step:
            epoch = step // self.record["steps_per_epoch"]
            logs = train_step(self.acc, self.model, self.loss_fn, self.opt, batches, args, epoch, step)
            # the EMA teacher, every optimizer step
            update_ema()
            step += 1
            bar.update(1)
            # device-side sums: no host sync until a log step
            for k, v in logs.items():
                sums[k] = sums.get(k, 0) + v
                counts[k] = counts.get(k, 0) + (1 if k == "grad_norm" else args.gradient_accumulation_steps)
            if step % args.log_every == 0 or step == self.last_step:
                self.log_row(step, sums, counts, bar)
                sums = {}
                counts = {}
            if self.checkpoint_or_stop(step, sums, counts):
                bar.close()
                return step, True
            self.previews(step)
        bar.close()
        return step, False

    def log_row(self, step: int, sums: dict, counts: dict, bar: tqdm) -> None:
        """The means since the last log step, reduced over the ranks -> metrics.jsonl, the log, the trackers;
        a non-finite loss stops the run."""
        args = self.args
        keys = sorted(sums)
        means = torch.stack([sums[k] / counts[k] for k in keys])
        vals = self.acc.reduce(means, reduction="mean").tolist()
        row = dict(zip(keys, vals))
        dt = time.time() - self.t_log
        row.update(step=step, steps_per_s=(step - self.step_log) / dt,
                   img_per_s=(step - self.step_log) * args.batch_size / dt, lr=self.opt.param_groups[0]["lr"])
        if self.acc.device.type == "cuda":
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.acc.device) / 2 ** 30
        self.t_log = time.time()
        self.step_log = step
        if not all(math.isfinite(row[k]) for k in keys):
            last_good = runlog.last_good_checkpoint(self.run_dir)
            raise SystemExit(f"non-finite loss at step {step}: {row}. Stopping; the last good checkpoint is "
                             f"kept: {last_good} (resume with --resume auto).")
        bar.set_postfix({k: f"{row[k]:.4f}" for k in ("loss", "loss_gen", "loss_align") if k in row}
                        | {"img/s": f"{row['img_per_s']:.0f}"})
        if self.main:
            self.metrics.write(row)
            self.logger.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in row.items()))
        if args.report_to != "none":
            self.acc.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def checkpoint_or_stop(self, step: int, sums: dict, counts: dict) -> bool:
        """The step checkpoint, the rolling one, or the one a stop signal asks for (the same decision on every
        rank). -> whether to stop."""
        stop, rolling = self.control.poll()
        every = self.record["checkpoint_epoch_steps"]
        numbered = step % self.args.checkpoint_steps == 0 or bool(every and step % every == 0) \
            or step == self.last_step
        if not (numbered or stop or rolling):
            return False
        path = save_checkpoint(self.run_dir, self.args, self.record, self.raw, self.ema, self.opt, self.acc,
                               step, sums, counts, rolling=not numbered)
        self.control.latest_written()
        if stop:
            self.logger.info(f"stopping on {self.signals.received} after step {step}: {path} holds this "
                             f"step; continue with --resume auto")
        return stop

    def previews(self, step: int) -> None:
        """The EMA preview grid and the in-training FID proxy, when the step's number asks for them."""
        args = self.args
        # a stop signal abandons them within a sampler step: the checkpoint comes after the next step
        stop = self.signals.stop_requested
        if args.sample_steps and (step % args.sample_steps == 0 or step == self.last_step):
            if self.main:
                save_preview(self.acc, self.ema, args, self.dataset, self.run_dir, step, self.acc.device,
                             self.logger, self.vae, stop)
            self.acc.wait_for_everyone()
        if args.fid_every and step % args.fid_every == 0:
            if self.fid_proxy is not None:
                log_fid_proxy(self.fid_proxy, self.ema, self.dataset.num_classes, step, self.metrics,
                              self.logger, vae=self.vae, latent=self.dataset.is_latent,
                              rank=self.acc.process_index, world=self.acc.num_processes, gather=gather_object,
                              stop=stop)
            self.acc.wait_for_everyone()


def save_checkpoint(run_dir: str, args: argparse.Namespace, record: dict, raw: torch.nn.Module,
                    ema: torch.nn.Module, opt: torch.optim.Optimizer, accelerator: Accelerator, step: int,
                    sums: dict[str, torch.Tensor], counts: dict[str, int], rolling: bool) -> str:
    """Every rank: refuse a non-finite state (checked on the device, here only), gather the per-rank RNG and
    log sums; rank 0 writes checkpoints/NNNNNNN.pt, or the rolling latest.pt. -> the path."""
    finite = runlog.all_finite([*raw.parameters(), *ema.parameters(), *runlog.optimizer_tensors(opt)])
    # Identical weights on every rank.
    if not finite.item():
        raise SystemExit(f"non-finite values in the model, EMA or optimizer state at step {step}: no "
                         f"checkpoint written. Stopping; the last good checkpoint is kept: "
                         f"{runlog.last_good_checkpoint(run_dir)} (resume with --resume auto).")
    per_rank = gather_object([{"rng": runlog.rng_state(),
                               "log": {k: [sums[k].cpu(), counts[k]] for k in sums}}])
    path = runlog.rolling_path(run_dir) if rolling else None
    if accelerator.is_main_process:
        state = {"model": raw.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                 "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                 "args": record, "steps": step, "rng": [r["rng"] for r in per_rank],
                 "time_convention": "ours", "log_sums": [r["log"] for r in per_rank]}
        path = runlog.write_checkpoint(run_dir, state, rolling, args.keep_last, args.keep_every)
        if not rolling:
            runlog.plot_loss_curves(run_dir)
    accelerator.wait_for_everyone()
    return path or os.path.join(run_dir, "checkpoints", f"{step:07d}.pt")


# ------------------------------------------------------------------------------------------------------------
# Previews, the ground truth and the embedded metric
# ------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def save_preview(accelerator: Accelerator, ema: torch.nn.Module, args: argparse.Namespace, dataset: Dataset,
                 run_dir: str, step: int, device: torch.device, logger: logging.Logger,
                 vae: torch.nn.Module | None = None, stop: Callable[[], bool] | None = None) -> None:
    """EMA samples from fixed per-image seeds and labels -> samples/NNNNNNN.png (decoded with `vae` for
    latents; none without it) and the trackers; the log line names the sampler. stop() (a stop signal's
    flag) abandons it between two sampler steps."""
    if dataset.is_latent and vae is None:
        return
    n = 64 if not dataset.is_latent else 16
    labels = [i % dataset.num_classes for i in range(n)]
    # bf16 autocast on a GPU, as sample_ddp.py (the sampler's state stays fp64)
    kw = samplers.run_sampler(args.process, args.preview_num_steps, args.path_type, args.preview_cfg_scale,
                              bf16=device.type == "cuda")
    try:
        img = samplers.sample_images(ema, range(args.seed, args.seed + n), labels, device, vae=vae, stop=stop,
                                     **kw)
    except samplers.Stopped:
        logger.warning(f"preview at step {step} abandoned: a stop signal came during it")
        return
    path = os.path.join(run_dir, "samples", f"{step:07d}.png")
    grid = fileio.save_grid(img, path, nrow=int(math.sqrt(n)), min_width=tracking.PREVIEW_WIDTH)
    sampler = samplers.sampler_name(kw).upper()
    settings = (f"EMA at step {step}, {sampler} {args.preview_num_steps} steps, CFG "
                f"{args.preview_cfg_scale}, "
                f"seeds {args.seed}..{args.seed + n - 1}, label of image i = i mod {dataset.num_classes}")
    tracking.log_image(accelerator, "samples/ema", grid, step, caption=settings)
    logger.info(f"preview {path}: {settings}")


@torch.no_grad()
def save_ground_truth(accelerator: Accelerator, dataset: Dataset, run_dir: str, step: int,
                      device: torch.device, vae: torch.nn.Module | None = None) -> None:
    """Decoded training items (posterior means for latents) -> samples/ground_truth.png and the trackers: what
    the previews should look like (checks the latent scaling and the VAE). Latents need `vae`."""
    if dataset.is_latent and vae is None:
        return
    n = 64 if not dataset.is_latent else 16
    # (moments | images, labels[, features])
    x = default_collate([dataset[i] for i in tracking.ground_truth_indices(len(dataset), n)])[0]
    if dataset.is_latent:
        # the posterior mean, model-space
        x = x.float().chunk(2, dim=1)[0] * LATENT_SCALE
    path = os.path.join(run_dir, "samples", "ground_truth.png")
    images = samplers.to_uint8(decode_latents(vae, x.to(device)))
    grid = fileio.save_grid(images, path, nrow=int(math.sqrt(n)), min_width=tracking.PREVIEW_WIDTH)
    tracking.log_image(accelerator, "samples/ground_truth", grid, step, caption="decoded training data")


def load_vae_for(args: argparse.Namespace, device: torch.device,
                 logger: logging.Logger) -> torch.nn.Module | None:
    """The SD-VAE (--vae: ema | mse from the HF cache, or a folder) that decodes latent previews and fid_proxy
    samples; None, said in the log, when its weights are not on disk (those are then skipped)."""
    try:
        return load_vae_spec(args.vae, device)
    except FileNotFoundError as e:
        logger.warning(f"previews and fid_proxy skipped: {e}")
        return None


def evaluate_digits(ema: torch.nn.Module, args: argparse.Namespace, dataset: Dataset, run_dir: str, step: int,
                    device: torch.device, logger: logging.Logger, signals: StopSignals) -> None:
    """The embedded metric on class-balanced EMA samples (evaluations/digits_metric.py) -> eval_digits.json.
    A stop signal ends it between sample batches, without a result (the checkpoint is already written)."""
    from evaluations.digits_metric import digits_metric

    n = args.eval_samples
    labels = [i % dataset.num_classes for i in range(n)]
    images = []
    # far from the preview seeds
    seeds = range(10 ** 6 + args.seed, 10 ** 6 + args.seed + n)
    for a in tqdm(range(0, n, 250), desc="eval samples"):
        kw = samplers.run_sampler(args.process, args.preview_num_steps, args.path_type)
        try:
            images.append(samplers.sample_images(ema, seeds[a:a + 250], labels[a:a + 250], device,
                                                 stop=signals.stop_requested, **kw))
        except samplers.Stopped:
            pass
        if signals.received:
            logger.warning(f"evaluation stopped on {signals.received}: no eval_digits.json; --resume auto "
                           f"evaluates the final checkpoint again")
            return
    # a class subset (digits:R:0,1,2) is scored by the digits its labels stand for
    res = digits_metric(np.concatenate(images), torch.tensor([dataset.classes[c] for c in labels]))
    kw = samplers.run_sampler(args.process, args.preview_num_steps, args.path_type)
    res.update(step=step, sampler=f"{samplers.sampler_name(kw)}-{args.preview_num_steps}", n=n)
    atomic_write_json(os.path.join(run_dir, "eval_digits.json"), res)
    logger.info(f"embedded metric on {n} EMA samples: Frechet distance {res['fd']:.3f} (classifier "
                f"features), {100 * res['accuracy']:.1f}% classified as their label -> "
                f"{run_dir}/eval_digits.json")


if __name__ == "__main__":
    main()
