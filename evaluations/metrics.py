"""The math of the ADM evaluation protocol, in NumPy only (no TensorFlow), so tests can check it directly.

Protocol: openai/guided-diffusion evaluations/evaluator.py (the "ADM evaluator"):
- FID / sFID: Frechet distance between Gaussians fitted to Inception features (mean, np.cov with ddof=1).
  Computed here from eigenvalues in float64 instead of scipy.linalg.sqrtm (see frechet_distance).
- IS: exp(mean_i KL(p_i || mean p)) per consecutive split of 5000 samples in file order, mean over splits.
- Precision / recall: k = 3 nearest-neighbour balls in squared L2 (ADM's ManifoldEstimator with
  nhood_sizes=(3,)): precision = fraction of samples inside any reference ball, recall = fraction of
  references inside any sample ball.
"""
import numpy as np
from scipy.special import xlogy

# ADM: 10 splits at 50K samples, 2 at 10K
IS_SPLIT_SIZE = 5000
# ADM: ManifoldEstimator(nhood_sizes=(3,))
NHOOD_SIZE = 3
FULL_SAMPLE_COUNT = 50000


# ------------------------------------------------------------------------------------------------------------
# Gaussian statistics and the Frechet distance

def feature_stats(features: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of an (N, D) feature array in float64: mean and np.cov(rowvar=False) (ddof=1), two-pass.

    Chunked so that a float32 (50000, 2048) array never gets a full float64 copy.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature_stats needs an (N, D) array with N >= 2, got shape {features.shape}")
    n, d = features.shape
    mu = np.zeros(d, dtype=np.float64)
    for i in range(0, n, chunk):
        mu += features[i:i + chunk].sum(axis=0, dtype=np.float64)
    mu /= n
    sigma = np.zeros((d, d), dtype=np.float64)
    for i in range(0, n, chunk):
        x = features[i:i + chunk].astype(np.float64) - mu        # (c, D)
        sigma += x.T @ x
    sigma /= n - 1
    return mu, sigma


class RunningStats:
    """Streaming (mu, sigma) for feature sets too large to hold (e.g. a reference over all of ImageNet).

    Accumulates sums of (x - shift) and (x - shift)(x - shift)^T in float64, with the shift set to the mean of
    the first batch, which keeps the cancellation in sigma = E[xx^T] - mu mu^T small. Matches np.cov (ddof=1).
    """

    def __init__(self):
        self.n = 0
        self.shift = None
        self.s1 = None
        self.s2 = None

    def update(self, features: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64)              # (B, D)
        if x.ndim != 2:
            raise ValueError(f"RunningStats.update expects (B, D) features, got shape {x.shape}")
        if self.shift is None:
            self.shift = x.mean(axis=0)
            self.s1 = np.zeros_like(self.shift)
            self.s2 = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
        x = x - self.shift
        self.n += x.shape[0]
        self.s1 += x.sum(axis=0)
        self.s2 += x.T @ x

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"RunningStats needs at least 2 feature vectors, got {self.n}")
        # mean of the shifted data
        m = self.s1 / self.n
        sigma = (self.s2 - self.n * np.outer(m, m)) / (self.n - 1)
        return self.shift + m, sigma


def _clip_tiny(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with round-off noise removed: values below the numerical-rank
    tolerance d * eps * max|w| (as np.linalg.matrix_rank uses), negative ones included, are set to 0. Without
    this, each zero eigenvalue of a rank-deficient covariance would add sqrt(noise) ~ 1e-8 to tr sqrt(.)."""
    tol = w.shape[0] * np.finfo(np.float64).eps * np.abs(w).max()
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix via eigh (tiny and negative eigenvalues set to 0)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(_clip_tiny(w))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64:

        |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2).

    tr sqrt(sigma1 sigma2) = sum_i sqrt(lambda_i) with lambda_i the eigenvalues of the symmetric PSD matrix
    sqrt(sigma1) sigma2 sqrt(sigma1), which is similar to sigma1 sigma2. ADM uses scipy.linalg.sqrtm on the
    non-symmetric product instead; that is the same number in exact arithmetic, but sqrtm has returned wrong
    values in some SciPy releases and is ill-conditioned when the covariances are singular (fewer samples than
    dimensions).
    """
    mu1 = np.asarray(mu1, np.float64).ravel()
    mu2 = np.asarray(mu2, np.float64).ravel()
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
                         f"mu2 {mu2.shape}, sigma2 {sigma2.shape}")
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"frechet_distance: {name} has non-finite entries")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    lam = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = np.sqrt(_clip_tiny(lam)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


# ------------------------------------------------------------------------------------------------------------
# Inception score

def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (max-subtracted), in the input's float dtype."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(probs: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
    """ADM's IS: for consecutive splits of `split_size` rows in the given order (the last one may be shorter;
    fewer rows than split_size give one split), exp(mean_i KL(p_i || mean_j p_j)), then the mean over splits.

    probs: (N, C) class probabilities (rows sum to 1). Computed in float64; 0 log 0 = 0.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"inception_score expects an (N, C) probability array, got shape {probs.shape}")
    scores = []
    for i in range(0, probs.shape[0], split_size):
        part = probs[i:i + split_size]                           # (n, C)
        marginal = part.mean(axis=0, keepdims=True)              # (1, C)
        kl = (xlogy(part, part) - xlogy(part, marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def num_is_splits(n: int, split_size: int = IS_SPLIT_SIZE) -> int:
    return max(1, -(-n // split_size))


# ------------------------------------------------------------------------------------------------------------
# Precision and recall (k-NN manifolds)

def _round16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest float16 (overflow gives inf), kept as float32."""
    with np.errstate(over="ignore"):
        return x.astype(np.float16).astype(np.float32)


class _Distances:
    """Squared L2 distances between feature blocks, |u|^2 - 2 u.v + |v|^2 clipped at 0 (ADM's formula).

    dtype "float16" emulates ADM's arithmetic (features cast to fp16, each result rounded to fp16, products
    accumulated in fp32 as a GPU fp16 GEMM does; a block with any non-finite value is recomputed in fp32, as
    ADM does). dtype "float32" computes everything in fp32.
    """

    def __init__(self, dtype: str = "float16"):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"distance dtype must be 'float16' or 'float32', got {dtype!r}")
        self.half = dtype == "float16"

    def prepare(self, feats: np.ndarray):
        """Returns (features, squared norms) in float32, the fp16-rounded versions in half mode."""
        f32 = np.ascontiguousarray(feats, dtype=np.float32)
        if self.half:
            f16 = _round16(f32)
            return f32, f16, _round16(np.einsum("ij,ij->i", f16, f16)), np.einsum("ij,ij->i", f32, f32)
        return f32, None, None, np.einsum("ij,ij->i", f32, f32)

    def __call__(self, a, b) -> np.ndarray:
        """a, b: prepared tuples (possibly row-sliced).
        Returns the (len(a), len(b)) float32 distance block."""
        if self.half:
            # fp16 overflow -> inf/nan -> fp32 fallback
            with np.errstate(over="ignore", invalid="ignore"):
                dot2 = _round16(2.0 * _round16(a[1] @ b[1].T))
                d = _round16(_round16(a[2][:, None] - dot2) + b[2][None, :])
            if np.all(np.isfinite(d)):
                return np.maximum(d, 0.0)
        d = a[3][:, None] - 2.0 * (a[0] @ b[0].T) + b[3][None, :]
        return np.maximum(d, 0.0)


def _rows(prepared, start, stop):
    return tuple(None if p is None else p[start:stop] for p in prepared)


def _block_rows(n_cols: int, budget: int) -> int:
    """Rows per block so that one float32 block of rows x n_cols stays under `budget` entries."""
    return max(1, min(n_cols, budget // max(1, n_cols)))


def knn_radii(features: np.ndarray, k: int = NHOOD_SIZE, dtype: str = "float16",
              block_entries: int = 1 << 25) -> np.ndarray:
    """Squared distance from each row to its k-th nearest other row (ADM: np.partition of the full distance
    row, entry k, where entry 0 is the point itself). Returns float32 (N,)."""
    n = len(features)
    if n <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} feature vectors, got {n}")
    dist = _Distances(dtype)
    prep = dist.prepare(features)
    radii = np.empty(n, dtype=np.float32)
    rows = _block_rows(n, block_entries)
    for i in range(0, n, rows):
        block = dist(_rows(prep, i, i + rows), prep)                # (rows, N)
        radii[i:i + rows] = np.partition(block, k, axis=1)[:, k]
    return radii


def precision_recall(ref_features: np.ndarray, sample_features: np.ndarray, k: int = NHOOD_SIZE,
                     dtype: str = "float16", block_entries: int = 1 << 25) -> tuple[float, float]:
    """(precision, recall) of samples against references, ADM semantics (ball membership is distance <=
    radius):

    precision = fraction of samples within the k-NN ball of at least one reference,
    recall    = fraction of references within the k-NN ball of at least one sample.
    """
    ref_radii = knn_radii(ref_features, k, dtype, block_entries)
    sample_radii = knn_radii(sample_features, k, dtype, block_entries)
    dist = _Distances(dtype)
    ref, smp = dist.prepare(ref_features), dist.prepare(sample_features)
    n_ref, n_smp = len(ref_features), len(sample_features)
    # reference inside some sample ball  -> recall
    ref_inside = np.zeros(n_ref, dtype=bool)
    # sample inside some reference ball  -> precision
    smp_inside = np.zeros(n_smp, dtype=bool)
    rows = _block_rows(n_smp, block_entries)
    for i in range(0, n_ref, rows):
        block = dist(_rows(ref, i, i + rows), smp)                  # (rows, n_smp)
        ref_inside[i:i + rows] |= (block <= sample_radii[None, :]).any(axis=1)
        smp_inside |= (block <= ref_radii[i:i + rows, None]).any(axis=0)
    return float(smp_inside.mean()), float(ref_inside.mean())


# ------------------------------------------------------------------------------------------------------------
# Naming

def count_suffix(n: int) -> str:
    """'' for the full 50K protocol, else '-NK' with N = n / 1000 rounded (e.g. '-10K'); below 500 samples the
    exact count ('-200'). Used as FID-10K, sFID-10K, IS-10K, ... in output and records."""
    if n >= FULL_SAMPLE_COUNT:
        return ""
    k = int(round(n / 1000))
    return f"-{k}K" if k >= 1 else f"-{n}"
