"""Feature PCA: the block-k hidden states of one or several EMA models at noise level t, three principal
components per image shown as RGB beside the image (the SRA release's pca-vis figures).

    python -m evaluations.pca runs/sit/checkpoints/0002000.pt runs/ours/checkpoints/0002000.pt \
        --digits 8 --block 4 --t 0.3 --out docs/figures/pca-digits.png
    python -m evaluations.pca CKPT --images DIR --vae ema --block 8 --t 0.5 --out fig.png   # latent models
    python -m evaluations.pca CKPT --latents latents.npy --block 8 --t 0.5 --out fig.png

Inputs (one of): --images DIR (image files, centre-cropped and resized to the model's side; latent models
encode them with --vae, the posterior mean scaled by 0.18215), --latents FILE (.npy / .npz arr_0 / .pt of
model-space inputs (N, C, H, W)), --digits N (the first N held-out embedded digits, for the digits preset).
Every model sees the same x_t: flow matching x_t = alpha_t x0 + sigma_t eps on the path its checkpoint says
(t = 1 noise), DDPM (ddpm.py) x_t at the integer step round(t * 999); eps from --seed, label = the null class
(unconditional). Per image, the (T, D) features are centred over the tokens and projected on their top three
principal directions (SVD); each component is scaled to [0, 1] over the image's tokens, its sign fixed so
that the token of largest magnitude is positive, and shown as one colour channel of a grid x grid map.
"""
import argparse
import os
import sys

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def pca_components(features: torch.Tensor, k: int = 3) -> torch.Tensor:
    """(N, T, D) -> (N, T, k): each image's tokens centred over T and projected on its top-k right singular
    vectors (U S of the SVD), the sign of each component fixed so that its entry of largest magnitude is
    positive. float64."""
    x = features.double()
    x = x - x.mean(dim=1, keepdim=True)                                      # (N, T, D)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)                       # (N, T, r), (N, r)
    proj = u[..., :k] * s[:, None, :k]                                       # (N, T, k)
    top = proj.abs().argmax(dim=1, keepdim=True)                             # (N, 1, k)
    sign = torch.sign(proj.gather(1, top))
    return proj * torch.where(sign == 0, torch.ones_like(sign), sign)


def to_rgb(components: torch.Tensor, grid: int) -> np.ndarray:
    """(N, T, 3) -> (N, grid, grid, 3) in [0, 1]: each component min-max scaled over the image's tokens."""
    lo = components.amin(dim=1, keepdim=True)
    hi = components.amax(dim=1, keepdim=True)
    scaled = (components - lo) / (hi - lo).clamp_min(1e-12)
    return scaled.reshape(components.shape[0], grid, grid, -1).cpu().numpy()


def noised(model, info: dict, x0: torch.Tensor, t: float,
           eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (x_t (N, C, H, W), the network's time input (N,)) at noise level t for the model's process."""
    n = x0.shape[0]
    if info.get("process") == "ddpm":
        import ddpm

        step = int(round(t * (ddpm.NUM_TIMESTEPS - 1)))
        steps = torch.full((n,), step, dtype=torch.long)
        return ddpm.GaussianDiffusion.dit().q_sample(x0, steps, eps), steps.float()
    from loss import noised as flow_noised

    tau = torch.full((n, 1, 1, 1), float(t))
    x_t = flow_noised(info.get("path_type") or "linear", x0, eps, tau)
    # SiT's own files are wrapped to take our t (models/checkpoint.py SiTTimeFlip)
    return x_t, torch.full((n,), float(t))


@torch.no_grad()
def block_features(model, info: dict, x0: torch.Tensor, block: int, t: float, seed: int = 0) -> torch.Tensor:
    """(N, T, D) hidden state after block `block` (1-based) of the EMA model on x_t, unconditional."""
    net = getattr(model, "model", model)
    if not 1 <= block <= net.depth:
        raise ValueError(f"--block {block} is outside the model's blocks 1..{net.depth}")
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=gen)
    x_t, t_in = noised(model, info, x0, t, eps)
    y = torch.full((x0.shape[0],), net.num_classes, dtype=torch.long)
    if info.get("time_convention") == "sit":
        # SiT's convention inside: t_sit = 1 - t
        t_in = 1 - t_in
    return net.forward_features(x_t.float(), t_in, y, layer=block)


def read_images(folder: str, side: int, limit: int) -> torch.Tensor:
    """Image files of `folder` (sorted) -> (N, 3, side, side) float in [-1, 1], centre-cropped squares."""
    from PIL import Image

    if not os.path.isdir(folder):
        raise ValueError(f"--images {folder}: no such folder")
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))[:limit]
    if not names:
        raise ValueError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for name in names:
        img = Image.open(os.path.join(folder, name)).convert("RGB")
        w, h = img.size
        c = min(w, h)
        img = img.crop(((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c))
        img = img.resize((side, side), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(out)


def read_latents(path: str, limit: int) -> torch.Tensor:
    if not os.path.isfile(path):
        raise ValueError(f"--latents {path}: no such file")
    if path.endswith(".pt"):
        x = torch.load(path, map_location="cpu", weights_only=True)
    else:
        z = np.load(path)
        if isinstance(z, np.lib.npyio.NpzFile):
            with z:
                z = z["arr_0"]
        x = torch.from_numpy(np.asarray(z))
    if not torch.is_tensor(x) or x.ndim != 4:
        raise ValueError(f"--latents {path}: expected one (N, C, H, W) array, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    return x[:limit].float()


def inputs_for(args: argparse.Namespace, info: dict, vae) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (model-space x0 (N, C, H, W), images to show (N, 3 or 1, H', W') in [-1, 1])."""
    side, channels = info["input_size"], info["in_channels"]
    if args.digits:
        from dataset import digits_images

        x, _ = digits_images(resolution=side, split="heldout")
        x = x[:args.digits]
        return x, x
    if args.latents:
        x = read_latents(args.latents, args.num_images)
        return x, (decode(vae, x) if vae is not None else x[:, :3])
    pixels = read_images(args.images, side * (8 if channels == 4 else 1), args.num_images)
    if channels == 4:
        if vae is None:
            raise ValueError("--images with a latent model needs --vae (ema | mse | a folder) to encode them")
        from models.vae import LATENT_SCALE, encode_moments

        u8 = ((pixels.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return encode_moments(vae, u8)[:, :4] * LATENT_SCALE, pixels
    return (pixels if channels == 3 else pixels.mean(dim=1, keepdim=True)), pixels


def decode(vae, x: torch.Tensor) -> torch.Tensor:
    from models.vae import decode_latents

    return decode_latents(vae, x).clamp(-1, 1)


def label_of(path: str) -> str:
    """runs/NAME/checkpoints/0002000.pt -> 'NAME 0002000'; other files: their name."""
    stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.basename(parent) == "checkpoints":
        return f"{os.path.basename(os.path.dirname(parent))} {stem}"
    return stem


def figure(images: torch.Tensor, maps: list[np.ndarray], titles: list[str], out: str, caption: str) -> None:
    """One row per image: the image, then one PCA map per checkpoint -> `out` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, cols = images.shape[0], 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n + 0.5), squeeze=False)
    shown = ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        img = shown[i] if shown.shape[-1] == 3 else shown[i, ..., 0]
        axes[i, 0].imshow(img, cmap=None if shown.shape[-1] == 3 else "gray", vmin=0, vmax=1)
        for j, m in enumerate(maps, start=1):
            axes[i, j].imshow(m[i], interpolation="nearest")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for j, title in enumerate(["input", *titles]):
        axes[0, j].set_title(title, fontsize=8)
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def parse_args(argv: list | None = None) -> argparse.Namespace:
    from infra.flags import Parser

    p = Parser(prog="python -m evaluations.pca", description=__doc__.split("\n")[0])
    p.add_argument("ckpts", nargs="+", metavar="CKPT", help="checkpoints (their EMA weights), side by side")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", default=None, metavar="DIR", help="a folder of images")
    src.add_argument("--latents", default=None, metavar="FILE", help="model-space inputs (N, C, H, W)")
    src.add_argument("--digits", type=int, default=0, metavar="N", help="the first N held-out digits")
    p.add_argument("--block", type=int, required=True, help="k: the block whose output is shown (1-based)")
    p.add_argument("--t", type=float, required=True,
                   help="noise level in [0, 1] (1 = noise): flow t, DDPM step round(t * 999)")
    p.add_argument("--out", required=True, help="the figure (.png, .pdf, ...)")
    p.add_argument("--num-images", type=int, default=8, help="images from --images / --latents (default 8)")
    p.add_argument("--seed", type=int, default=0, help="the noise eps of x_t")
    p.add_argument("--vae", default=None, help="latent models: ema | mse | a folder, to encode --images and "
                                               "show --latents decoded")
    p.add_argument("--time-convention", choices=["ours", "repa", "sit"], default=None,
                   help="for bare state dicts (as sample_ddp.py)")
    p.add_argument("--process", choices=["flow", "ddpm"], default=None,
                   help="for bare state dicts (as sample_ddp.py): ddpm for DiT's files")
    args = p.parse_args(argv)
    if not 0 <= args.t <= 1:
        p.error(f"--t must lie in [0, 1], got {args.t}")
    if args.block < 1 or args.num_images < 1 or args.digits < 0:
        p.error("--block and --num-images must be >= 1, --digits >= 0")
    return args


def main(argv: list | None = None) -> str:
    from models import load_checkpoint
    from models.vae import load_vae_spec

    args = parse_args(argv)
    with torch.no_grad():
        return _main(args, load_checkpoint, load_vae_spec)


def _main(args: argparse.Namespace, load_checkpoint, load_vae_spec) -> str:
    loaded = [load_checkpoint(c, which="ema", time_convention=args.time_convention, process=args.process)
              for c in args.ckpts]
    shapes = {(i["input_size"], i["in_channels"], i["patch_size"]) for _, i in loaded}
    if len({s[:2] for s in shapes}) > 1:
        raise ValueError(f"the checkpoints take different inputs (side, channels): {sorted(shapes)}")
    info0 = loaded[0][1]
    vae = load_vae_spec(args.vae, "cpu") if args.vae else None
    x0, shown = inputs_for(args, info0, vae)
    maps, titles = [], []
    for path, (model, info) in zip(args.ckpts, loaded):
        feats = block_features(model, info, x0, args.block, args.t, args.seed)     # (N, T, D)
        grid = info["input_size"] // info["patch_size"]
        maps.append(to_rgb(pca_components(feats), grid))
        titles.append(f"{label_of(path)} ({info['process']})")
    caption = f"block {args.block}, t = {args.t:g}, 3 principal components per image as RGB"
    figure(shown, maps, titles, args.out, caption)
    print(f"wrote {args.out}: {x0.shape[0]} images x {len(maps)} checkpoint(s), {caption}")
    return args.out


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"evaluations.pca: error: {e}")
