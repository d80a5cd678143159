"""In-training FID proxy (train.py --fid-every N --fid-ref REF.npz): the Frechet distance between the pool_3
features of --fid-samples EMA samples and REF.npz's statistics, with the evaluator's PyTorch backend.

Logged as `fid_proxy` (with `fid_proxy_n`), never as ADM FID: the sample count and the sampler (train.py's
preview sampler: SDE, --preview-num-steps, --preview-cfg-scale) are the run's choice, not the ADM protocol's
50K samples. The samples come from fixed per-image seeds and class-balanced labels, the same at every step, so
the curve compares checkpoints and nothing else. The reference statistics are REF's stored mu / sigma when it
has them, else computed once from its arr_0 (cached as evaluations/evaluator.py caches them). Every rank
samples and featurizes its share of the images (image i on rank i % world; a seed per image, so the set does
not depend on the split), in bf16 on a GPU; the features are gathered to the main process, which holds the
reference statistics and computes the distance.
"""
import os

import numpy as np

import samplers
from evaluations import metrics

SEED_OFFSET = 2 * 10 ** 6           # far from the preview and digits-metric seeds


class FidProxy:
    def __init__(self, ref_path: str, num_samples: int, graph: str, device, seed: int = 0,
                 batch_size: int = 250, sampler_kwargs=None, log=print, reference: bool = True):
        """reference: hold the reference statistics (the main process; the others only sample)."""
        from evaluations.evaluator import _sha256, check_batch_file, load_reference_stats, reference_features
        from evaluations.inception import load_network
        keys = check_batch_file(ref_path, "--fid-ref")
        self.net = load_network(graph, "torch", device)
        self.mu = None
        self.sigma = None
        if reference and "mu" in keys:
            (self.mu, self.sigma), _ = load_reference_stats(ref_path)
        elif reference:
            _, (self.mu, self.sigma), _, _ = reference_features(self.net, ref_path, _sha256(graph), 64,
                                                                progress=False, log=log)
        self.ref_path = ref_path
        self.num_samples = num_samples
        self.seed = seed
        self.batch_size = batch_size
        self.sampler_kwargs = dict(sampler_kwargs or {})

    @classmethod
    def from_args(cls, args, device, log=print, reference: bool = True):
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
            # bf16 autocast on a GPU (the sampler's state stays fp64)
            # the run's process and path (the SDE's score depends on the path)
            sampler = samplers.run_sampler(getattr(args, "process", "flow"), args.preview_num_steps,
                                           getattr(args, "path_type", "linear"), args.preview_cfg_scale,
                                           bf16=str(device).startswith("cuda"))
            return cls(args.fid_ref, args.fid_samples, graph, device, seed=args.seed, log=log,
                       sampler_kwargs=sampler, reference=reference)
        except (FileNotFoundError, KeyError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) else str(e)
            raise SystemExit(f"--fid-ref / --fid-inception: {' '.join(msg.split())}") from None

    def __call__(self, ema, num_classes: int, vae=None, rank: int = 0, world: int = 1,
                 gather=None, stop=None) -> float | None:
        """fid_proxy of the EMA model now: this rank's images (i % world == rank); with several ranks,
        gather(list) -> the lists of all ranks (accelerate's gather_object). -> the value on the process
        holding the reference statistics, None elsewhere. stop() (a stop signal's flag), asked before every
        sampler step: True abandons the pass on every rank (samplers.Stopped), agreed through one gather."""
        n = self.num_samples
        mine = list(range(rank, n, world))
        pools = [np.zeros((0, 2048), dtype=np.float64)]
        abandoned = False
        for a in range(0, len(mine), self.batch_size):
            index = mine[a:a + self.batch_size]
            seeds = [SEED_OFFSET + self.seed + i for i in index]
            labels = [i % num_classes for i in index]
            try:
                images = samplers.sample_images(ema, seeds, labels, next(ema.parameters()).device, vae=vae,
                                                stop=stop, **self.sampler_kwargs)
            except samplers.Stopped:
                abandoned = True
                break
            pools.append(self.net.features(images)[0])
        # a rank that saw no signal finishes its share; then all agree
        if world > 1:
            abandoned = any(gather([abandoned]))
        if abandoned:
            raise samplers.Stopped("fid_proxy abandoned")
        pool = np.concatenate(pools)
        if world > 1:
            pool = np.concatenate(gather([pool]))
        if self.mu is None:
            return None
        return metrics.frechet_distance(*metrics.feature_stats(pool), self.mu, self.sigma)


def log_fid_proxy(fid_proxy, ema, num_classes, step, metrics_writer, logger, vae=None, latent=False,
                  rank: int = 0, world: int = 1, gather=None, stop=None):
    """Computes fid_proxy (every rank its share, FidProxy.__call__) and writes it to metrics.jsonl and the log
    on the main process (skipped, said, for latents without a VAE; abandoned, said, when stop() turns
    true)."""
    if latent and vae is None:
        logger.warning(f"step {step}: fid_proxy skipped: latent samples need the SD-VAE (--vae) to be "
                       f"decoded")
        return None
    try:
        value = fid_proxy(ema, num_classes, vae, rank=rank, world=world, gather=gather, stop=stop)
    except samplers.Stopped:
        logger.warning(f"step {step}: fid_proxy abandoned: a stop signal came during it")
        return None
    if value is None:
        return None
    metrics_writer.write({"step": step, "fid_proxy": value, "fid_proxy_n": fid_proxy.num_samples})
    logger.info(f"step {step}: fid_proxy {value:.4f} ({fid_proxy.num_samples} EMA samples vs "
                f"{os.path.basename(fid_proxy.ref_path)}; not ADM FID)")
    return value
