"""Generate N samples from a checkpoint: PNGs and one ADM-format .npz, seeded per image, resumable.

    torchrun --nproc_per_node=8 sample_ddp.py --ckpt runs/x/checkpoints/0400000.pt --num-fid-samples 50000
    python sample_ddp.py --ckpt SiT-XL-2-256x256.pt --time-convention sit --mode ode --heun --num-steps 125 \
        --cfg-scale 1.5 --cfg-channels 3                      # SiT's released setting (FID 2.06)
    python sample_ddp.py --ckpt ... --grid --grid-classes 207 360 387 974 88 979 417 279

Image i (0 <= i < N) is made by rank i % world from its own seed global_seed + i: one torch.Generator draws
its initial noise and then all its SDE noise (samplers.py), and its label is a function of
(global_seed, i) too. The set therefore does not depend on the number of processes or the batch size, images
of a smaller N are the first images of a larger one, and note that seed s + 1 gives image i of seed s as its
image i - 1 (pick seeds far apart).
Labels: uniform over classes from numpy's default_rng(global_seed + i) (random as the releases, reproducible
per index), or with --balanced-labels, i % num_classes.
Decoding: latents (in_channels 4) through the SD-VAE, x = vae.decode(z / 0.18215); pixel models (in_channels
1 or 3, data in [-1, 1]) pass through. uint8 (--quantize): the rule of samplers.to_uint8, `release`
(default, the SRA release's and REPA's, so FIDs compare with the paper's) or `dit` (DiT / SiT's, half a grey
level brighter).
The SDE's score depends on the path the model was trained on: --path-type is read from the checkpoint's
settings (a flag that contradicts the file is an error), linear when the file does not say.
Output: <sample-dir>/<folder named after every setting that changes the samples>/ with {i:06d}.png (or, with
--npz-only, chunk files chunks/chunk-{first index}.npz), sampling.json and samples_{N}.npz (arr_0 uint8
(N, H, W, 3) in index order, labels int64 (N,)). Every file is written to a temporary name and renamed, so a
killed run leaves only complete files; rerunning the same command skips what exists. A folder belongs to one
checkpoint's weights: sampling.json records their sha256, and a rerun with other weights is refused.
The checkpoint describes the run (models/checkpoint.py): model, classes, patch, learn_sigma, qk-norm, path
type and time convention are read from it; a flag that is given and contradicts it is an error naming both
values.
DDPM (DiT, ddpm.py): the process is read from the checkpoint too (our --process ddpm runs, DiT's and the
release's DiT-SRA training files, whose args say model DiT-XL/2); a bare state dict such as DiT's
DiT-XL-2-256x256.pt needs --process ddpm (or --model DiT-XL/2). DDPM samples with DiT's ancestral sampler
(--mode ddpm, the default) or DDIM (--mode ddim, eta 0), respaced to --num-steps (DiT's --num-sampling-steps,
250 by default) and CFG on the first 3 channels unless --cfg-channels says otherwise (DiT's forward_with_cfg):
    python sample_ddp.py --ckpt DiT-XL-2-256x256.pt --process ddpm --cfg-scale 1.5 --quantize dit
                                                     # DiT-XL/2's published setting (FID 2.27)
"""
import argparse
import json
import os
import re
import sys
import time

import numpy as np
import torch
from PIL import Image

import samplers
from infra import flags
from infra.distributed import barrier, setup_distributed, teardown
from infra.fileio import (WriteError, atomic_path, atomic_write_json, ensure_free_space, free_bytes,
                          human_bytes, remove_stale_temporaries, save_grid, save_png, scratch_file,
                          stream_npz, unusable_folder, write_error)
from models.sit import DIT_NAMES
from models.vae import load_vae_spec
from samplers import QUANTIZE_OFFSET, sample_images

PNG_RE = re.compile(r"^(\d{6,})\.png$")
CHUNK_RE = re.compile(r"^chunk-(\d{6,})\.npz$")


# ------------------------------------------------------------------------------------------------------------
# Pure helpers (importable by the training loop without side effects)
# ------------------------------------------------------------------------------------------------------------

def image_labels(indices, num_classes: int, global_seed: int, balanced: bool = False) -> np.ndarray:
    """Label of each image index: i % num_classes if balanced, else uniform from
    default_rng(global_seed + i)."""
    idx = np.asarray(indices, dtype=np.int64)
    if balanced:
        return idx % num_classes
    labels = [np.random.default_rng(global_seed + int(i)).integers(num_classes) for i in idx]
    return np.array(labels, dtype=np.int64)


def todo_batches(indices: range, done: set, batch_size: int):
    """The indices not in `done`, in lists of batch_size, made as they are needed."""
    batch = []
    for i in indices:
        if i not in done:
            batch.append(i)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def vae_factor(vae) -> int:
    """Pixels per latent cell along a side: 2^(blocks - 1) for a diffusers AutoencoderKL (8 for the SD-VAE),
    1 without a VAE."""
    if vae is None:
        return 1
    return 2 ** (len(getattr(getattr(vae, "config", None), "block_out_channels", (0,) * 4)) - 1)


def check_npz_space(npz_path: str, n: int, side: int) -> None:
    """Refuse, before sampling, a --num-fid-samples whose npz cannot be assembled: the npz and the scratch
    file it is gathered in (write_npz) hold n x side x side x 3 bytes each."""
    need = 2 * n * side * side * 3
    free = free_bytes(os.path.dirname(npz_path))
    if need > free:
        raise ValueError(f"--num-fid-samples {n}: assembling {npz_path} needs {human_bytes(need)} ({n} "
                         f"images of {side}x{side}, the npz and its scratch file), {human_bytes(free)} are "
                         f"free there")


# ------------------------------------------------------------------------------------------------------------
# Output stores: which indices exist, writing batches, reading back in index order
# ------------------------------------------------------------------------------------------------------------

class PngStore:
    def __init__(self, folder):
        self.folder = folder

    def done(self):
        return {int(m.group(1)) for f in os.listdir(self.folder) if (m := PNG_RE.match(f))}

    def write(self, indices, images):
        for i, img in zip(indices, images):
            save_png(img, os.path.join(self.folder, f"{i:06d}.png"))

    def read_all(self, n):
        """Yields (indices, (B, H, W, 3) uint8) in index order."""
        for s in range(0, n, 256):
            idx = range(s, min(n, s + 256))
            paths = [os.path.join(self.folder, f"{i:06d}.png") for i in idx]
            yield idx, np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])


class ChunkStore:
    """--npz-only: one chunks/chunk-{first index}.npz (indices, images) per generated batch."""

    def __init__(self, folder):
        self.folder = os.path.join(folder, "chunks")
        os.makedirs(self.folder, exist_ok=True)

    def _chunks(self):
        return sorted(f for f in os.listdir(self.folder) if CHUNK_RE.match(f))

    def done(self):
        out = set()
        for f in self._chunks():
            with np.load(os.path.join(self.folder, f)) as z:
                out.update(z["indices"].tolist())
        return out

    def write(self, indices, images):
        path = os.path.join(self.folder, f"chunk-{indices[0]:06d}.npz")
        with atomic_path(path) as tmp:
            np.savez(tmp, indices=np.asarray(indices, dtype=np.int64), images=images)

    def read_all(self, n):
        for f in self._chunks():
            with np.load(os.path.join(self.folder, f)) as z:
                idx = z["indices"]
                keep = idx < n
                yield idx[keep], z["images"][keep]


def write_npz(path: str, n: int, store, labels):
    """Stream the store into an ADM .npz (arr_0 (N, H, W, 3) uint8 in index order, labels), atomically.

    The store yields rows in any order (--npz-only: each rank's chunks): they are first written at their
    offsets into a scratch file beside the npz (memory stays O(batch); plain writes, no memory map, so a full
    disk is one line naming the file, never a SIGBUS), then copied into the zip in index order. The free
    space for both is checked before the first row is written."""
    seen = np.zeros(n, dtype=bool)
    shape = None
    with scratch_file(path[:-len(".npz")] + "-rows.bin") as (fd, tmp):
        for idx, imgs in store.read_all(n):
            if shape is None:
                shape = (n,) + imgs.shape[1:]
                row = int(np.prod(shape[1:]))
                ensure_free_space(path, 2 * n * row)
            if imgs.shape[1:] != shape[1:]:
                raise ValueError(f"image shape {imgs.shape[1:]} differs from {shape[1:]} in {store.folder}")
            try:
                for i, img in zip(idx, imgs):
                    os.pwrite(fd, np.ascontiguousarray(img).tobytes(), int(i) * row)
            except OSError as exc:
                raise (write_error(exc, tmp, n * row) or exc) from None
            seen[np.asarray(idx)] = True
        if shape is None or not seen.all():
            raise RuntimeError(f"{store.folder}: {int((~seen).sum())} of {n} images missing; rerun to "
                               f"complete")

        def rows():
            for s in range(0, n, 1024):
                k = min(1024, n - s)
                yield np.frombuffer(os.pread(fd, k * row, s * row), dtype=np.uint8).reshape((k,) + shape[1:])

        stream_npz(path, shape, rows(), extra={"labels": np.asarray(labels, dtype=np.int64)})


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------

def parse_args(argv: list | None = None, notes: list | None = None) -> argparse.Namespace:
    """Flags -> args; the release's / REPA's generate.py spellings are checked or accepted (flags.py).
    notes: a list that receives one line per such flag."""
    p = flags.Parser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True,
                   help="checkpoint of this codebase, or a public SiT / REPA / SRA file")
    p.add_argument("--which", choices=["ema", "model"], default="ema", help="weights to load (default: EMA)")
    p.add_argument("--model", default=None,
                   help="expected model name (checked against the file), e.g. SiT-XL/2")
    p.add_argument("--time-convention", choices=["ours", "repa", "sit"], default=None,
                   help="for a bare state dict, which does not say (training files and exports do): 'sit' "
                   "(public SiT, t = 0 noise) or 'repa' (REPA / SRA)")
    p.add_argument("--vae", default="auto", help="'ema' | 'mse' (HF cache) | a local folder | 'none' (pixel "
                   "model); auto = ema for 4-channel latent models, none otherwise")
    p.add_argument("--process", choices=["flow", "ddpm"], default=None,
                   help="the checkpoint's process (default: what it says, else flow): ddpm for a bare DiT "
                        "state dict such as DiT-XL-2-256x256.pt")
    p.add_argument("--mode", choices=["sde", "ode", "ddpm", "ddim"], default=None,
                   help="flow: sde (default) or ode; ddpm: ddpm (DiT's ancestral sampler, default) or ddim "
                        "(eta 0)")
    p.add_argument("--heun", action=argparse.BooleanOptionalAction, default=False,
                   help="Heun ODE (2 NFE per step but the last)")
    p.add_argument("--num-steps", type=int, default=250,
                   help="steps of the sampler (ddpm: the respaced process, DiT's --num-sampling-steps)")
    p.add_argument("--num-sampling-steps", dest="num_sampling_steps", type=int, default=None,
                   help="DiT's spelling of --num-steps")
    p.add_argument("--image-size", dest="image_size", type=int, default=None,
                   help="DiT's spelling of --resolution (checked against the checkpoint)")
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument("--guidance-low", type=float, default=0.0)
    p.add_argument("--guidance-high", type=float, default=1.0)
    p.add_argument("--cfg-channels", type=int, choices=[3, 4], default=None,
                   help="default: all channels for flow (REPA / SRA), 3 for ddpm (DiT); 3 reproduces DiT / "
                        "SiT's released numbers")
    p.add_argument("--global-seed", type=int, default=0)
    p.add_argument("--balanced-labels", action="store_true", help="label of image i = i %% num_classes")
    p.add_argument("--num-fid-samples", type=int, default=50000)
    p.add_argument("--per-proc-batch-size", type=int, default=None,
                   help="images per process and batch (default: one that fills the device: 256 at 256 px on "
                        "a GPU, 64 at 512 px, 32 on the CPU; CFG doubles it inside the model)")
    p.add_argument("--sample-dir", default="samples")
    p.add_argument("--npz-only", action="store_true", help="no PNGs: per-batch chunk files, then the npz")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="the network's precision (the sampler's state stays fp64): auto = bf16 autocast on a "
                        "GPU, fp32 on the CPU; recorded in sampling.json and the folder name")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="= --precision bf16")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="TF32 matmuls on GPU in fp32 mode (the releases' default)")
    p.add_argument("--grid", action="store_true", help="write one grid PNG of --grid-classes and exit")
    p.add_argument("--grid-classes", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 7])
    p.add_argument("--grid-per-class", type=int, default=8)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quantize", choices=sorted(QUANTIZE_OFFSET), default="release",
                   help="uint8 rule (samplers.to_uint8): release = floor(127.5 x + 127.5) (SRA / REPA), "
                   "dit = floor(127.5 x + 128)")
    p.add_argument("--path-type", choices=list(samplers.PATH_TYPES), default=None,
                   help="the path the model was trained on (default: what the checkpoint says, else linear)")
    flags.add_sample_flags(p)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    found = flags.resolve_sample(p, args) + dit_spellings(p, args, argv)
    if notes is not None:
        notes.extend(found)
    if args.num_steps < 1:
        p.error(f"--num-steps must be >= 1, got {args.num_steps}")
    if args.global_seed < 0:
        p.error(f"--global-seed must be >= 0 (image i uses seed global_seed + i), got {args.global_seed}")
    batch = args.per_proc_batch_size
    if args.num_fid_samples < 1 or (batch is not None and batch < 1):
        p.error("--num-fid-samples and --per-proc-batch-size must be >= 1")
    if args.heun and args.mode != "ode":
        p.error("--heun needs --mode ode (the SDE sampler is Euler-Maruyama)")
    if args.process is not None and args.mode is not None and args.mode not in PROCESS_MODES[args.process]:
        p.error(f"--mode {args.mode} is not a {args.process} sampler (--process {args.process}: "
                f"{' or '.join(PROCESS_MODES[args.process])})")
    if args.process == "ddpm" and args.path_type is not None:
        p.error(f"--path-type {args.path_type} is a flow-matching setting; --process ddpm has none")
    if not 0 <= args.guidance_low <= args.guidance_high <= 1:
        p.error(f"need 0 <= --guidance-low <= --guidance-high <= 1, got {args.guidance_low}, "
                f"{args.guidance_high}")
    check_args(args)
    return args


def dit_spellings(p: argparse.ArgumentParser, args: argparse.Namespace, argv: list) -> list[str]:
    """DiT's sample_ddp.py flags: --num-sampling-steps N = --num-steps N, --image-size R = --resolution R
    (checked against the checkpoint), --model DiT-X/p = the SiT-X/p network with --process ddpm. -> notes."""
    notes = []
    if args.num_sampling_steps is not None:
        said = any(a == "--num-steps" or a.startswith("--num-steps=") for a in argv)
        if said and args.num_steps != args.num_sampling_steps:
            p.error(f"--num-sampling-steps {args.num_sampling_steps} and --num-steps {args.num_steps} "
                    "disagree")
        args.num_steps = args.num_sampling_steps
        notes.append(f"--num-sampling-steps {args.num_steps} -> --num-steps {args.num_steps}")
    if args.image_size is not None:
        if args.resolution is not None and args.resolution != args.image_size:
            p.error(f"--image-size {args.image_size} and --resolution {args.resolution} disagree")
        args.resolution = args.image_size
        notes.append(f"--image-size {args.image_size} -> --resolution {args.image_size} (checked against the "
                     "checkpoint)")
    if args.model in DIT_NAMES:
        if args.process == "flow":
            p.error(f"--model {args.model} is DiT (DDPM) but --process is flow")
        notes.append(f"--model {args.model}: the {DIT_NAMES[args.model]} network with --process ddpm")
        args.model, args.process = DIT_NAMES[args.model], "ddpm"
    return notes


# the samplers of each process
PROCESS_MODES = {"flow": ("sde", "ode"), "ddpm": ("ddpm", "ddim")}


def fill_process_defaults(args: argparse.Namespace, info: dict) -> None:
    """The process's sampler: --mode sde (flow) or ddpm (DDPM) unless given, DiT's guidance on 3 channels for
    DDPM latents unless --cfg-channels is given; a sampler of the other process is refused."""
    process = info["process"]
    if args.mode is None:
        args.mode = PROCESS_MODES[process][0]
    if args.mode not in PROCESS_MODES[process]:
        raise ValueError(f"--mode {args.mode}: {args.ckpt} holds a {process} model, sampled with --mode "
                         f"{' or '.join(PROCESS_MODES[process])}")
    if process == "ddpm" and args.path_type is not None:
        raise ValueError(f"--path-type {args.path_type}: {args.ckpt} holds a DDPM model, which has no path")
    # DiT's 3 of 4 latent channels; a pixel model with fewer (the 1-channel digits) is guided on all
    if process == "ddpm" and args.cfg_channels is None and info["in_channels"] > 3:
        args.cfg_channels = 3
    if process == "ddpm" and args.num_steps > 1000:
        raise ValueError(f"--num-steps {args.num_steps}: DiT's process has 1000 steps to respace, at most "
                         "1000")


def fill_device_defaults(args: argparse.Namespace, model: torch.nn.Module, device: torch.device) -> None:
    """--precision auto and the default batch, for this device: bf16 and a batch that fills a GPU (256 at
    32 x 32 latents, fewer for larger ones), fp32 and 32 on the CPU."""
    gpu = device.type == "cuda"
    if args.precision == "auto":
        args.precision = "bf16" if gpu else "fp32"
    if args.per_proc_batch_size is None:
        args.per_proc_batch_size = max(1, 256 * 32 ** 2 // model.input_size ** 2) if gpu else 32


def resolve_path_type(flag: str | None, info: dict, ckpt: str) -> str | None:
    """The model's path: what the checkpoint's settings say; --path-type must agree (default linear). None for
    a DDPM model."""
    if info.get("process") == "ddpm":
        return None
    # models/checkpoint.py gives it in our names, also for SiT's files
    recorded = info.get("path_type")
    if flag is not None and recorded is not None and flag != recorded:
        raise ValueError(f"--path-type {flag} but {ckpt} was trained with --path-type {recorded}")
    return flag or recorded or "linear"


def check_args(args: argparse.Namespace):
    """Values that would crash after the model is loaded, or give NaN images: ValueError naming the flag."""
    if not 0 <= args.cfg_scale < float("inf"):
        raise ValueError(f"--cfg-scale must be a finite number >= 0 (1 = no guidance), got {args.cfg_scale}")
    last = args.global_seed + max(args.num_fid_samples, args.grid_per_class)
    # torch generators take int64 seeds
    if last >= 2 ** 63:
        raise ValueError(f"--global-seed {args.global_seed}: image i uses seed global_seed + i, which must "
                         f"stay below 2**63 for all {max(args.num_fid_samples, args.grid_per_class)} images")
    if args.grid and args.grid_per_class < 1:
        raise ValueError(f"--grid-per-class must be >= 1, got {args.grid_per_class}")
    if args.vae not in ("auto", "none", "ema", "mse") and os.path.isfile(args.vae):
        raise ValueError(f"--vae {args.vae} is a file: pass the diffusers AutoencoderKL folder that holds it "
                         f"(config.json + weights), or ema | mse")
    problem = unusable_folder(args.sample_dir, "--sample-dir")
    if problem:
        raise ValueError(problem)


def settings_of(args: argparse.Namespace, info: dict, device: torch.device) -> dict:
    """Everything that changes the samples (and so names the folder)."""
    c = info["in_channels"]
    vae = args.vae if args.vae != "auto" else ("ema" if c == 4 else "none")
    if vae == "none" and c not in (1, 3):
        raise ValueError(f"--vae none: a {c}-channel model is not a pixel model; pass --vae ema|mse|PATH")
    if args.cfg_channels is not None and args.cfg_channels > c:
        raise ValueError(f"--cfg-channels {args.cfg_channels} but the model has {c} channels")
    stem = os.path.splitext(os.path.basename(args.ckpt))[0]
    parent = os.path.basename(os.path.dirname(os.path.abspath(args.ckpt)))
    # runs/<run>/checkpoints/0050000.pt
    if parent == "checkpoints":
        stem = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(args.ckpt)))) + "-" + stem
    tf32 = args.tf32 and device.type == "cuda"
    precision = "bf16" if args.precision == "bf16" else ("tf32" if tf32 else "fp32")
    return dict(model=info["model_name"], ckpt=stem, steps=info["steps"], which=args.which,
                time_convention=info["time_convention"], mode=args.mode, heun=args.heun,
                num_steps=args.num_steps,
                cfg_scale=args.cfg_scale, guidance_low=args.guidance_low, guidance_high=args.guidance_high,
                cfg_channels=args.cfg_channels if args.cfg_channels and args.cfg_channels < c else "all",
                global_seed=args.global_seed, labels="balanced" if args.balanced_labels else "uniform",
                precision=precision, vae=os.path.basename(os.path.normpath(vae)),
                noise_block=samplers.NOISE_BLOCK,
                path_type=resolve_path_type(args.path_type, info, args.ckpt),
                quantize=args.quantize, **({"process": "ddpm"} if info.get("process") == "ddpm" else {}))


def folder_name(s: dict) -> str:
    step = "" if s["steps"] is None or str(s["steps"]) in s["ckpt"] else f"-step{s['steps']}"
    sampler = f"{s['mode']}{'-heun' if s['heun'] else ''}{s['num_steps']}"
    # a DDPM model has no path: its folder says the process there (flow folders keep their names)
    path = s["path_type"] if s.get("process") != "ddpm" else "ddpm"
    return (f"{s['model'].replace('/', '-')}-{s['ckpt']}{step}-{s['which']}-{sampler}-cfg{s['cfg_scale']:g}"
            f"-g{s['guidance_low']:g}-{s['guidance_high']:g}-ch{s['cfg_channels']}-seed{s['global_seed']}"
            f"-{s['labels']}-{s['precision']}-vae{s['vae']}-{path}-q{s['quantize']}")


def check_folder_owner(folder: str, json_path: str, done: set, digest: str, ckpt: str):
    """A sample folder belongs to one checkpoint's weights (sha256 of their content, in sampling.json): images
    of other weights are never reused, whatever the file or folder is called."""
    if not os.path.exists(json_path):
        if done:
            raise ValueError(f"{folder} holds {len(done)} images but no sampling.json, so the checkpoint "
                             f"that made them is unknown: remove them or use another --sample-dir")
        return
    with open(json_path) as f:
        record = json.load(f)
    old = record.get("weights_digest")
    if old != digest:
        had = old[:16] if old else "not recorded"
        raise ValueError(f"{json_path} holds samples of {record.get('checkpoint')} (weights sha256 {had}) "
                         f"but --ckpt {os.path.abspath(ckpt)} has other weights (sha256 {digest[:16]}): use "
                         "another --sample-dir")


def main(argv: list | None = None) -> str | None:
    notes = []
    args = parse_args(argv, notes)
    # reads no weights
    if args.print_config:
        flags.print_config(args, notes, drop=("print_config", "local_rank"))
        return None
    rank, world, device = setup_distributed(local_rank=args.local_rank)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    from models import load_checkpoint

    model, info = load_checkpoint(args.ckpt, which=args.which, model_name=args.model,
                                  time_convention=args.time_convention, process=args.process)
    model = model.to(device).eval()
    flags.check_sample_checkpoint(args, info)
    fill_process_defaults(args, info)
    fill_device_defaults(args, model, device)
    s = settings_of(args, info, device)
    vae = None if s["vae"] == "none" else load_vae_spec(args.vae if args.vae != "auto" else "ema", device)
    kw = dict(mode=args.mode, num_steps=args.num_steps, cfg_scale=args.cfg_scale,
              guidance_low=args.guidance_low, guidance_high=args.guidance_high,
              bf16=args.precision == "bf16", cfg_channels=args.cfg_channels, quantize=s["quantize"])
    if info["process"] == "ddpm":
        kw.update(process="ddpm")
    else:
        kw.update(heun=args.heun, path_type=s["path_type"])
    folder = os.path.join(args.sample_dir, folder_name(s))
    os.makedirs(folder, exist_ok=True)

    if args.grid:
        bad = [c for c in args.grid_classes if not 0 <= c < info["num_classes"]]
        if bad:
            raise ValueError(f"--grid-classes {bad} outside 0..{info['num_classes'] - 1}")
        if rank == 0:
            # column j uses seed global_seed + j in every row
            k = args.grid_per_class
            seeds = [args.global_seed + j for _ in args.grid_classes for j in range(k)]
            labels = [c for c in args.grid_classes for _ in range(k)]
            imgs = np.concatenate([sample_images(model, seeds[b:b + args.per_proc_batch_size],
                                                 labels[b:b + args.per_proc_batch_size], device, vae, **kw)
                                   for b in range(0, len(seeds), args.per_proc_batch_size)])
            path = os.path.join(folder, "grid-" + "-".join(map(str, args.grid_classes)) + ".png")
            save_grid(imgs, path, nrow=k)
            print(f"wrote {path}")
        barrier(device)
        return folder

    n = args.num_fid_samples
    npz_path = os.path.join(folder, f"samples_{n}.npz")
    json_path = os.path.join(folder, "sampling.json")
    store = ChunkStore(folder) if args.npz_only else PngStore(folder)
    done = store.done()
    # every rank checks, so none waits on a dead one
    check_folder_owner(folder, json_path, done, info["digest"], args.ckpt)
    old = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            old = json.load(f).get("settings", {})
    diff = {k: (old.get(k), v) for k, v in s.items() if k in old and old[k] != v}
    if diff:
        raise ValueError(f"{json_path} was written with other settings {diff}; use another --sample-dir")
    # every rank checks, so none waits on a dead one
    check_npz_space(npz_path, n, model.input_size * vae_factor(vae))
    if rank == 0:
        # before any rank writes: what killed runs left (their writers are dead)
        for path, size in remove_stale_temporaries(folder) + remove_stale_temporaries(store.folder):
            print(f"removed {path} ({human_bytes(size)}), left by a killed run", flush=True)
    barrier(device)
    # lazily, in batches: memory does not grow with --num-fid-samples
    mine = range(rank, n, world)
    num_todo = len(mine) - sum(1 for i in done if i < n and i % world == rank)
    if rank == 0:
        nfe = samplers.num_function_evals(args.mode, args.num_steps, args.heun)
        nfe *= 2 if args.cfg_scale > 1 else 1
        atomic_write_json(json_path, dict(settings=s, checkpoint=os.path.abspath(args.ckpt),
                                          weights_digest=info["digest"], num_fid_samples=n,
                                          world_size=world, per_proc_batch_size=args.per_proc_batch_size,
                                          nfe_per_image=nfe, status="running", argv=sys.argv[1:]))
        print(f"{folder}: {sum(1 for i in done if i < n)} of {n} images exist; generating the rest on "
              f"{world} process(es)", flush=True)

    from tqdm import tqdm
    t0 = time.time()
    bar = tqdm(total=num_todo, unit="img", disable=rank != 0 or args.no_progress)
    for idx in todo_batches(mine, done, args.per_proc_batch_size):
        labels = image_labels(idx, info["num_classes"], args.global_seed, args.balanced_labels)
        imgs = sample_images(model, [args.global_seed + i for i in idx], labels, device, vae, **kw)
        store.write(idx, imgs)
        bar.update(len(idx))
    bar.close()
    elapsed = time.time() - t0
    barrier(device)

    if rank == 0:
        write_npz(npz_path, n, store,
                  image_labels(range(n), info["num_classes"], args.global_seed, args.balanced_labels))
        with open(json_path) as f:
            record = json.load(f)
        record.update(status="done", npz=os.path.abspath(npz_path),
                      last_run=dict(rank0_images=num_todo, rank0_seconds=round(elapsed, 3)))
        atomic_write_json(json_path, record)
        print(f"wrote {npz_path} ({n} images); rank 0 made {num_todo} in {elapsed:.1f} s", flush=True)
    barrier(device)
    teardown()
    return npz_path


if __name__ == "__main__":
    try:
        main()
    # a bad checkpoint, flag or folder, a full disk: one line, no traceback
    except (FileNotFoundError, ValueError, WriteError) as e:
        sys.exit(f"sample_ddp.py: error: {e}")
