"""The embedded digits metric of one checkpoint's EMA under several samplers, with train.py's evaluation
seeds (10**6 + i) and labels (i % 10):

    python studies/ddpm-digits/eval_samplers.py runs/digits-ddpm/checkpoints/0002000.pt 1000 \
        ddpm-50 ddim-50 ddpm-250

writes CKPT.modes.json (sampler -> digits FD, accuracy)."""
import json
import os
import sys

import numpy as np
import torch

# the repository root, for a run from anywhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import samplers  # noqa: E402
from evaluations.digits_metric import digits_metric  # noqa: E402
from models import load_checkpoint  # noqa: E402


def main(ckpt: str, n: int, specs: list[str]) -> dict:
    torch.set_grad_enabled(False)
    model, info = load_checkpoint(ckpt)
    labels = [i % 10 for i in range(n)]
    seeds = range(10 ** 6, 10 ** 6 + n)
    out = {}
    for spec in specs:
        mode, steps = spec.split("-")
        kw = dict(mode=mode, num_steps=int(steps))
        if info["process"] == "ddpm":
            kw["process"] = "ddpm"
        batches = [samplers.sample_images(model, seeds[a:a + 250], labels[a:a + 250], "cpu", **kw)
                   for a in range(0, n, 250)]
        images = np.concatenate(batches)
        res = digits_metric(images, torch.tensor(labels))
        out[spec] = dict(fd=round(res["fd"], 2), accuracy=round(res["accuracy"], 3))
        print(ckpt, spec, out[spec], flush=True)
    with open(ckpt + ".modes.json", "w") as f:
        json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
