"""Export a checkpoint's EMA weights alone, with the run's settings: one .safetensors file, or a Hugging
Face-style model folder.

    python -m models.export runs/ours-xl2/checkpoints/4000000.pt ours-xl2-4M.safetensors
    python -m models.export SiT-XL-2-256x256.pt sit-xl2.safetensors --time-convention sit
    python -m models.export runs/ours-xl2/checkpoints/4000000.pt ours-xl2-4M --format hf [--records results]

(a bare state dict, like the second, does not say its time convention). The .safetensors file holds the EMA
tensors (a quarter of a training checkpoint: no student, no AdamW moments) and, in the safetensors header's
metadata under "sit_settings", a JSON object: model, input_size, in_channels, num_classes, learn_sigma,
qk_norm, align_head, z_dim, head_depth, patch_size, path_type, resolution, time_convention, steps, the source
file and its training args, and the sha256 of the weights (sample_ddp records it in its sample folders).
`--format hf` writes a folder instead: config.json, model.safetensors (the same file) and a README.md model
card (models/hf.py; SiT.from_pretrained reads it), in this codebase's time convention (a SiT-convention file
is converted). sample_ddp.py --ckpt and train.py --init-ckpt read both like any checkpoint. Files are written
atomically.
"""
import argparse
import json
import os
import sys

from safetensors.torch import save_file

from infra.fileio import atomic_path
from models.checkpoint import CONVENTIONS, EXPORT_KEY, CheckpointError, export_settings, read_checkpoint


def export(ckpt: str, out: str, time_convention: str | None = None) -> dict:
    """Write `ckpt`'s EMA and settings to `out` (.safetensors) -> the settings written."""
    if not out.endswith(".safetensors"):
        raise CheckpointError(f"{out}: the output must end with .safetensors")
    ck = read_checkpoint(ckpt)
    sd = ck.state_dict("ema")
    settings = export_settings(ck, sd, time_convention)
    tensors = {k: v.contiguous() for k, v in sd.items()}
    with atomic_path(out) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", EXPORT_KEY: json.dumps(settings)})
        # safetensors creates 0600: give the usual mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    return settings


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m models.export", description=__doc__.split("\n")[0])
    p.add_argument("ckpt", help="a checkpoint of this codebase, a REPA / SRA / SiT training file or a bare "
                   "state dict")
    p.add_argument("out", help="output file ending in .safetensors, or (--format hf) a folder")
    p.add_argument("--format", choices=["safetensors", "hf"], default="safetensors",
                   help="hf: a Hugging Face-style folder (config.json, model.safetensors, a README.md card)")
    p.add_argument("--records", nargs="*", default=[], metavar="DIR",
                   help="--format hf: folders to search for evaluator records of these weights, besides the "
                   "run folder (e.g. results/)")
    p.add_argument("--time-convention", choices=CONVENTIONS, default=None,
                   help="for a bare state dict (which does not say): sit (public SiT) or repa (REPA / SRA)")
    args = p.parse_args(argv)
    try:
        if args.format == "hf":
            from models.hf import export_hf
            s = export_hf(args.ckpt, args.out, args.time_convention, tuple(args.records))
        else:
            s = export(args.ckpt, args.out, args.time_convention)
    except CheckpointError as e:
        sys.exit(f"python -m models.export: error: {e}")
    print(f"wrote {args.out}: {s['model']} EMA, {s['input_size']}x{s['input_size']}x{s['in_channels']}, "
          f"{s['num_classes']} classes, path {s['path_type']}, time convention {s['time_convention']}, "
          f"step {s['steps']}")
    return s


if __name__ == "__main__":
    main()
