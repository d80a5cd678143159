"""The embedded metric for the embedded digits dataset (no download): a small conv-net classifier trained
once, deterministically, on scikit-learn's bundled digits (dataset.digits_images), cached on disk.

    digits_metric(images, labels, resolution=None, reference="all") -> {"fd": ..., "accuracy": ..., ...}
    python -m evaluations.digits_metric SAMPLES.npz [--out JSON]     # arr_0 uint8 (N, R, R[, C]) and labels
    python -m evaluations.digits_metric SAMPLES.npz --reference heldout   # runs trained on digits:R:train
    python -m evaluations.digits_metric --real --resolution 16 [--reference heldout]   # the real digits' own

- fd: Frechet distance (evaluations.metrics.frechet_distance, the FID formula) between Gaussians fitted to the
  classifier's penultimate 128-d features of the samples and of all 1797 real digits. Like FID it is biased
  upwards for small N; compare runs at the same N (--real prints the floor of a random half of the real
  digits).
- accuracy: fraction of samples the classifier assigns to their conditioning label (class-conditional
  samples).
--reference heldout (runs trained on 'digits:R:train', dataset.digits_split_indices): the classifier trains
on the train split only and fd compares with the 445 held-out digits, which neither the model nor the
classifier saw. It adds
- memorisation: the share of samples whose nearest training digit (pixel L2, the 1352 of the train split) is
  closer than their nearest held-out digit; memorisation_real is the same share for the real held-out digits
  (each against the other 444), the figure of a model that makes new digits as the data does. Samples that
  copy training digits push it towards 1 above memorisation_real.
- heldout_accuracy: the classifier's accuracy on the real held-out digits (the ceiling of accuracy);
  fd_train_same_n: fd of min(N, 1352) random training digits (the floor of fd at this N).
The classifier: fixed seed, fixed epochs, CPU, a few seconds; cached as $SIT_SRA_CACHE (or ~/.cache/sit_sra)
/digits_classifier_{R}.pt (digits_classifier_{R}_train.pt on the train split; atomic write) and retrained
when the recipe below changes.
"""
import argparse
import os
import sys
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# run as a script: python evaluations/<this file>.py
if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset import digits_images
from evaluations.common import cache_dir, now_iso, versions
from evaluations.metrics import feature_stats, frechet_distance
from infra.fileio import atomic_torch_save, atomic_write_json

RECIPE = {"version": 1, "seed": 0, "epochs": 20, "batch_size": 128, "lr": 3e-3, "weight_decay": 1e-4,
          "max_shift_fraction": 0.125, "channels": (16, 32, 32), "feature_dim": 128, "threads": 1}
# --reference -> the split the classifier trains on
REFERENCES = {"all": "all", "heldout": "train"}
# (resolution, reference) -> the classifier and the real digits' features, per process
_MODELS = {}


class DigitsNet(nn.Module):
    """(N, 1, R, R) in [-1, 1] -> 10 logits; features() gives the 128-d penultimate activations."""

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 32), feature_dim: int = 128):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)                 # (N, c1, R, R)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)      # (N, c2, R/2, R/2)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)      # (N, c3, R/4, R/4)
        self.fc = nn.Linear(c3 * 4 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.adaptive_avg_pool2d(x, 4).flatten(1)                  # (N, c3 * 16)
        return F.relu(self.fc(x))                                   # (N, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _random_shift(x, max_shift, gen):
    """Translate each image by up to max_shift pixels (background -1 fills in): light augmentation."""
    if max_shift == 0:
        return x
    n, _, r, _ = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    shift = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)
    out = torch.empty_like(x)
    for dy in range(2 * max_shift + 1):
        for dx in range(2 * max_shift + 1):
            sel = (shift[0] == dy) & (shift[1] == dx)
            out[sel] = padded[sel, :, dy:dy + r, dx:dx + r]
    return out


def train_classifier(resolution: int, recipe: dict = RECIPE, log: Callable[[str], None] = print,
                     split: str = "all") -> tuple[DigitsNet, float]:
    """Trains DigitsNet on the digits of `split` at `resolution` with the fixed recipe; returns (net, train
    accuracy).
    Deterministic for a given torch build; leaves the caller's global RNG state and thread count untouched
    (trains on recipe["threads"] threads: the net is tiny, and spare threads only spin on a shared
    machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe["threads"])
    try:
        return _train(resolution, recipe, log, digits_images(resolution, split))
    finally:
        torch.set_num_threads(threads)


# callers may sit inside torch.no_grad()
@torch.enable_grad()
def _train(resolution, recipe, log, data):
    x, y = data
    gen = torch.Generator().manual_seed(recipe["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        net = DigitsNet(recipe["channels"], recipe["feature_dim"])
    opt = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps = recipe["epochs"] * -(-len(x) // recipe["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps)
    max_shift = int(resolution * recipe["max_shift_fraction"]) // 2
    net.train()
    for _ in range(recipe["epochs"]):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), recipe["batch_size"]):
            idx = order[i:i + recipe["batch_size"]]
            loss = F.cross_entropy(net(_random_shift(x[idx], max_shift, gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(x).argmax(1) == y).float().mean())
    log(f"digits classifier {resolution}x{resolution}: trained {recipe['epochs']} epochs on {len(x)} digits, "
        f"train accuracy {accuracy:.4f}")
    return net, accuracy


def classifier_path(resolution: int, split: str = "all") -> str:
    suffix = "" if split == "all" else f"_{split}"
    return os.path.join(cache_dir(), f"digits_classifier_{resolution}{suffix}.pt")


def load_classifier(resolution: int, log: Callable[[str], None] = print, split: str = "all") -> DigitsNet:
    """The cached classifier for `resolution` trained on `split`, trained (and cached atomically) when missing
    or outdated."""
    path = classifier_path(resolution, split)
    if os.path.isfile(path):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        # a corrupt cache file is rebuilt, not fatal
        except Exception as e:
            log(f"ignoring unreadable {path}: {e}")
            saved = None
        if saved is not None and saved.get("recipe") == RECIPE and saved.get("resolution") == resolution \
                and saved.get("split", "all") == split:
            net = DigitsNet(RECIPE["channels"], RECIPE["feature_dim"])
            net.load_state_dict(saved["state_dict"])
            return net.eval()
    net, accuracy = train_classifier(resolution, log=log, split=split)
    atomic_torch_save({"recipe": RECIPE, "resolution": resolution, "split": split, "train_accuracy": accuracy,
                       "state_dict": net.state_dict()}, path)
    return net


@torch.no_grad()
def _features(net, x, batch_size=512):
    return np.concatenate([net.features(x[i:i + batch_size]).double().numpy()
                           for i in range(0, len(x), batch_size)])


def _model(resolution: int, log=print, reference: str = "all") -> dict:
    """The classifier for `reference` and the real digits it is read against, memoised per process:
    net, feats (the reference digits' features), and for 'heldout' the train / held-out pixels (flattened) and
    the real held-out digits' own numbers."""
    key = (resolution, reference)
    if key not in _MODELS:
        net = load_classifier(resolution, log=log, split=REFERENCES[reference])
        x, y = digits_images(resolution, "all" if reference == "all" else "heldout")
        m = dict(net=net, feats=_features(net, x), labels=y.numpy())
        if reference == "heldout":
            train, _ = digits_images(resolution, "train")
            m.update(train_pixels=train.flatten(1), heldout_pixels=x.flatten(1),
                     train_feats=_features(net, train))
            m["memorisation_real"] = nearest_train_share(x.flatten(1), m["train_pixels"], x.flatten(1),
                                                         exclude_self=True)
            m["heldout_accuracy"] = _accuracy(net, x, y)
        _MODELS[key] = m
    return _MODELS[key]


@torch.no_grad()
def _accuracy(net, x, labels) -> float:
    predicted = torch.cat([net(x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)])
    return float((predicted == labels).float().mean())


def nearest_train_share(queries: torch.Tensor | np.ndarray, train: torch.Tensor | np.ndarray,
                        heldout: torch.Tensor | np.ndarray, exclude_self: bool = False) -> float:
    """Share of `queries` (N, P) whose nearest row of `train` (M, P) is strictly closer (L2) than their
    nearest row of `heldout` (H, P). exclude_self: the queries are `heldout` itself (N == H), each one's own
    row is skipped (leave-one-out)."""
    queries, train, heldout = (torch.as_tensor(a, dtype=torch.float64) for a in (queries, train, heldout))
    to_train = torch.cdist(queries, train).min(1).values
    to_heldout = torch.cdist(queries, heldout)
    if exclude_self:
        if to_heldout.shape[0] != to_heldout.shape[1]:
            raise ValueError(f"exclude_self needs the queries to be the held-out rows, got distances of "
                             f"shape {tuple(to_heldout.shape)}")
        to_heldout.fill_diagonal_(float("inf"))
    return float((to_train < to_heldout.min(1).values).double().mean())


def to_model_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """float [-1, 1] (N, 1, R, R) or (N, R, R); uint8 0..255 (N, R, R), (N, R, R, C) or (N, C, R, R) with C in
    {1, 3} (colour is averaged to grey) -> float32 (N, 1, R, R) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).detach().cpu()
    if x.dtype == torch.uint8:
        if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] == x.shape[2]:
            x = x.permute(0, 3, 1, 2)                                 # NHWC -> NCHW
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3]:
            raise ValueError(f"uint8 digit images must be (N, R, R), (N, R, R, C) or (N, C, R, R) with C in "
                             f"{{1, 3}}, got shape {tuple(x.shape)}")
        return (x.float().mean(1, keepdim=True) / 127.5 - 1.0).contiguous()
    if not torch.is_floating_point(x):
        raise ValueError(f"digit images must be float in [-1, 1] or uint8, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
        raise ValueError(f"float digit images must be (N, 1, R, R) in [-1, 1], got shape {tuple(x.shape)}")
    return x.float().contiguous()


def digits_metric(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | None = None,
                  resolution: int | None = None, log: Callable[[str], None] = print,
                  reference: str = "all") -> dict:
    """fd and accuracy of digit samples (see the module docstring), and with reference='heldout' the
    memorisation figures. labels: (N,) ints or None (accuracy None)."""
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    x = to_model_input(images)
    n = x.shape[0]
    r = x.shape[-1]
    if resolution is not None and resolution != r:
        raise ValueError(f"images are {r}x{r} but resolution={resolution} was asked for")
    if n < 2:
        raise ValueError(f"digits_metric needs at least 2 images, got {n}")
    m = _model(r, log=log, reference=reference)
    net = m["net"]
    real_feats = m["feats"]
    feats = _features(net, x)
    fd = frechet_distance(*feature_stats(feats), *feature_stats(real_feats))
    accuracy = None
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long().cpu()
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        accuracy = _accuracy(net, x, labels)
    out = {"fd": float(fd), "accuracy": accuracy, "n": int(n), "resolution": int(r),
           "real_n": int(len(real_feats)), "reference": reference}
    if reference == "heldout":
        pick = np.random.default_rng(0).permutation(len(m["train_feats"]))[:n]
        floor = frechet_distance(*feature_stats(m["train_feats"][pick]), *feature_stats(real_feats))
        out.update(memorisation=nearest_train_share(x.flatten(1), m["train_pixels"], m["heldout_pixels"]),
                   memorisation_real=m["memorisation_real"], heldout_accuracy=m["heldout_accuracy"],
                   fd_train_same_n=float(floor), train_n=int(len(m["train_pixels"])))
    return out


def real_reference(resolution: int, seed: int = 0, log: Callable[[str], None] = print,
                   reference: str = "all") -> dict:
    """The real digits' own numbers. 'all': all real vs real (fd 0 by construction, train accuracy) and a
    random half vs all real (the small-N floor of fd to read sample numbers against). 'heldout': the whole
    train split read as samples (memorisation 1: each is its own nearest training digit) and the real held-out
    digits' figures (heldout_accuracy, memorisation_real)."""
    if reference == "heldout":
        train, y_train = digits_images(resolution, "train")
        m = _model(resolution, log=log, reference="heldout")
        return {"train_vs_heldout": digits_metric(train, y_train, log=log, reference="heldout"),
                "real_heldout": {"heldout_accuracy": m["heldout_accuracy"],
                                 "memorisation_real": m["memorisation_real"], "n": len(m["feats"])}}
    x, y = digits_images(resolution)
    full = digits_metric(x, y, log=log)
    half = torch.from_numpy(np.random.default_rng(seed).permutation(len(x))[:len(x) // 2])
    return {"real_vs_real": full, "real_half_vs_real": digits_metric(x[half], y[half], log=log)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", nargs="?", help="npz with arr_0 (uint8 digit images) and optionally labels")
    p.add_argument("--resolution", type=int, help="expected image size (checked); needed with --real")
    p.add_argument("--real", action="store_true", help="print the real digits' own numbers instead")
    p.add_argument("--reference", choices=sorted(REFERENCES), default="all",
                   help="all: every digit (the quickstart); heldout: the held-out split, for runs trained on "
                        "digits:R:train, with the memorisation figures")
    p.add_argument("--out", help="JSON record (default: SAMPLES_digits_metric.json)")
    args = p.parse_args(argv)
    if args.real:
        if not args.resolution:
            p.error("--real needs --resolution")
        result = real_reference(args.resolution, reference=args.reference)
        for name, r in result.items():
            print(f"{name}: " + "  ".join(f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float))
                  + f"  (n={r['n']})")
        return result
    if not args.samples:
        p.error("give SAMPLES.npz or --real")
    try:
        with np.load(args.samples) as z:
            if "arr_0" not in z.files:
                raise KeyError(f"{args.samples}: no 'arr_0' array (arrays in file: {z.files})")
            images = z["arr_0"]
            labels = z["labels"] if "labels" in z.files else None
        result = digits_metric(images, labels, args.resolution, reference=args.reference)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        raise SystemExit(2)
    acc = "n/a (no labels in file)" if result["accuracy"] is None else f"{result['accuracy']:.4f}"
    extra = ""
    if args.reference == "heldout":
        extra = f"  memorisation: {result['memorisation']:.4f} (real held-out digits: " \
            f"{result['memorisation_real']:.4f})"
    print(f"digits fd: {result['fd']:.4f}  accuracy: {acc}{extra}  (n={result['n']}, "
          f"{result['resolution']}px, reference {args.reference})")
    classifier = classifier_path(result["resolution"], REFERENCES[args.reference])
    record = {"samples": os.path.abspath(args.samples), **result, "classifier": classifier,
              "recipe": RECIPE, "versions": versions("numpy", "scipy", "torch"), "time": now_iso()}
    base = args.samples[:-4] if args.samples.endswith(".npz") else args.samples
    out = args.out or base + "_digits_metric.json"
    atomic_write_json(out, record)
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
