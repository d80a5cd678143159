"""In-training FID proxy (train.py --fid-every N --fid-ref REF.npz): the Frechet distance between the pool_3
features of --fid-samples EMA samples and REF.npz's statistics, with the evaluator's PyTorch backend.

Logged as `fid_proxy` (with `fid_proxy_n`), never as ADM FID: the sample count and the sampler (train.py's
preview sampler: SDE, --preview-num-steps, --preview-cfg-scale) are the run's choice, not the ADM protocol's
50K samples. The samples come from fixed per-image seeds and class-balanced labels, the same at every step, so
the curve compares checkpoints and nothing else. The reference statistics are REF's stored mu / sigma when it
has them, else computed once from its arr_0 (cached as evaluations/evaluator.py caches them). Runs on the main
process.
"""
import os

import numpy as np

import samplers
from evaluations import metrics

SEED_OFFSET = 2 * 10 ** 6           # far from the preview and digits-metric seeds


class FidProxy:
    def __init__(self, ref_path: str, num_samples: int, graph: str, device, seed: int = 0,
                 batch_size: int = 250, sampler_kwargs=None, log=print):
        from evaluations.evaluator import _sha256, check_batch_file, load_reference_stats, reference_features
        from evaluations.inception import load_network
        keys = check_batch_file(ref_path, "--fid-ref")
        self.net = load_network(graph, "torch", device)
        if "mu" in keys:
            (self.mu, self.sigma), _ = load_reference_stats(ref_path)
        else:
            _, (self.mu, self.sigma), _, _ = reference_features(self.net, ref_path, _sha256(graph), 64,
                                                                progress=False, log=log)
        self.ref_path = ref_path
        self.num_samples = num_samples
        self.seed = seed
        self.batch_size = batch_size
        self.sampler_kwargs = dict(sampler_kwargs or {})

    @classmethod
    def from_args(cls, args, device, log=print):
        """From train.py's flags; one-line SystemExit for a bad --fid-* flag or file."""
        from evaluations.evaluator import check_batch_file
        from evaluations.inception import resolve_graph_path
        if args.fid_every < 0:
            raise SystemExit(f"--fid-every must be >= 0 (0 = never), got {args.fid_every}")
        if not args.fid_every:
            raise SystemExit(f"--fid-ref {args.fid_ref} needs --fid-every N (steps between fid_proxy "
                             f"evaluations)")
        if not args.fid_ref:
            raise SystemExit("--fid-every needs --fid-ref REF.npz (a reference batch: "
                             "evaluations/make_reference.py or ADM's VIRTUAL_*.npz)")
        if args.fid_samples < 2:
            raise SystemExit(f"--fid-samples must be >= 2, got {args.fid_samples}")
        try:
            check_batch_file(args.fid_ref, "--fid-ref")
            graph = resolve_graph_path(args.fid_inception)
            return cls(args.fid_ref, args.fid_samples, graph, device, seed=args.seed, log=log,
                       sampler_kwargs=dict(mode="sde", num_steps=args.preview_num_steps,
                                           cfg_scale=args.preview_cfg_scale))
        except (FileNotFoundError, KeyError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) else str(e)
            raise SystemExit(f"--fid-ref / --fid-inception: {' '.join(msg.split())}") from None

    def __call__(self, ema, num_classes: int, vae=None) -> float:
        """fid_proxy of the EMA model now."""
        n = self.num_samples
        seeds = range(SEED_OFFSET + self.seed, SEED_OFFSET + self.seed + n)
        labels = [i % num_classes for i in range(n)]
        pools = []
        for a in range(0, n, self.batch_size):
            batch = slice(a, a + self.batch_size)
            images = samplers.sample_images(ema, seeds[batch], labels[batch], next(ema.parameters()).device,
                                            vae=vae, **self.sampler_kwargs)
            pools.append(self.net.features(images)[0])
        return metrics.frechet_distance(*metrics.feature_stats(np.concatenate(pools)), self.mu, self.sigma)


def log_fid_proxy(fid_proxy, ema, num_classes, step, metrics_writer, logger, vae=None, latent=False):
    """Computes fid_proxy and writes it to metrics.jsonl and the log (skipped, said, for latents without a
    VAE)."""
    if latent and vae is None:
        logger.warning(f"step {step}: fid_proxy skipped: latent samples need the SD-VAE (--vae) to be "
                       f"decoded")
        return None
    value = fid_proxy(ema, num_classes, vae)
    metrics_writer.write({"step": step, "fid_proxy": value, "fid_proxy_n": fid_proxy.num_samples})
    logger.info(f"step {step}: fid_proxy {value:.4f} ({fid_proxy.num_samples} EMA samples vs "
                f"{os.path.basename(fid_proxy.ref_path)}; not ADM FID)")
    return value
