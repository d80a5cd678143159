"""The ADM metric math (evaluations/metrics.py) against closed forms and brute force. NumPy/SciPy only."""
import numpy as np
import pytest
import scipy.linalg

from evaluations import metrics
from evaluations.metrics import (
    RunningStats,
    count_suffix,
    feature_stats,
    frechet_distance,
    inception_score,
    knn_radii,
    precision_recall,
)


def random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def sqrtm_fid(mu1, s1, mu2, s2):
    """The textbook formula with scipy.linalg.sqrtm of the (non-symmetric) product, as ADM computes it."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


# ---------------------------------------------------------------------------------------------------- Frechet

def test_fid_equal_covariances_is_mean_distance():
    rng = np.random.default_rng(0)
    s = random_spd(rng, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9, abs=1e-9)
    assert frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-9)


def test_fid_unequal_commuting_covariances_closed_form():
    # Shared eigenvectors Q: FID = |dmu|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(1)
    d = 32
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.0, 4.0, d)
    # singular second covariance is fine
    b[:3] = 0.0
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fid_one_dimensional():
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(2.0 ** 2 + (2.0 - 3.0) ** 2)


@pytest.mark.parametrize("d", [2, 5, 12])
def test_fid_matches_sqrtm_at_small_dimension(d):
    rng = np.random.default_rng(d)
    # non-commuting
    s1, s2 = random_spd(rng, d), random_spd(rng, d, scale=3.0)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(sqrtm_fid(mu1, s1, mu2, s2), rel=1e-8)


def test_fid_is_symmetric_and_handles_rank_deficient_covariances():
    # 20 samples in 64 dimensions: rank-19 covariances, where sqrtm of the product is ill-conditioned.
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5
    (m1, s1), (m2, s2) = feature_stats(x), feature_stats(y)
    f12, f21 = frechet_distance(m1, s1, m2, s2), frechet_distance(m2, s2, m1, s1)
    assert np.isfinite(f12) and f12 > 0
    assert f12 == pytest.approx(f21, rel=1e-8)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-10)


def test_fid_from_samples_approaches_population_value():
    rng = np.random.default_rng(3)
    d, n = 4, 200_000
    a, b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([2.0, 1.0, 1.0, 0.5])
    x = rng.normal(size=(n, d)) * np.sqrt(a)
    y = rng.normal(size=(n, d)) * np.sqrt(b) + 1.0
    expected = d * 1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(*feature_stats(x), *feature_stats(y)) == pytest.approx(expected, abs=0.03)


def test_fid_rejects_bad_shapes_and_non_finite():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))


def test_feature_stats_and_running_stats_match_numpy():
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(1000, 7)) * 3 + 100).astype(np.float32)
    mu, sigma = feature_stats(x, chunk=128)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)
    rs = RunningStats()
    for i in range(0, 1000, 300):
        rs.update(x[i:i + 300])
    mu2, sigma2 = rs.stats()
    np.testing.assert_allclose(mu2, mu, rtol=1e-12)
    np.testing.assert_allclose(sigma2, sigma, rtol=1e-9)


# ---------------------------------------------------------------------------------------------------- IS

def soft_onehot(labels, c, eps):
    p = np.full((len(labels), c), eps / c)
    p[np.arange(len(labels)), labels] += 1 - eps
    return p


def is_closed_form(c, eps):
    # Balanced labels: marginal uniform, KL(p || u) = sum_j p_j log(c p_j), the same for every sample.
    hi, lo = 1 - eps + eps / c, eps / c
    kl = hi * np.log(c * hi) + (c - 1) * (lo * np.log(c * lo) if lo > 0 else 0.0)
    return np.exp(kl)


def test_is_one_hot_balanced_equals_class_count():
    p = soft_onehot(np.arange(1000) % 10, 10, 0.0)
    assert inception_score(p) == pytest.approx(10.0, rel=1e-12)


def test_is_identical_predictions_is_one():
    p = np.tile(metrics.softmax(np.random.default_rng(5).normal(size=(1, 50))), (300, 1))
    assert inception_score(p) == pytest.approx(1.0, abs=1e-12)


def test_is_splits_of_5000_in_file_order_are_averaged():
    # 10,000 samples -> 2 splits (ADM's IS-10K); each split has its own closed form.
    c = 20
    # IS = is_closed_form(20, 0.3)
    first = soft_onehot(np.arange(5000) % c, c, 0.3)
    # four classes used -> IS = 4
    second = soft_onehot(np.arange(5000) % 4, c, 0.0)
    p = np.concatenate([first, second])
    expected = (is_closed_form(c, 0.3) + 4.0) / 2
    assert inception_score(p) == pytest.approx(expected, rel=1e-10)
    assert metrics.num_is_splits(10_000) == 2 and metrics.num_is_splits(200) == 1
    assert metrics.num_is_splits(50_000) == 10
    # Shuffling across the split boundary changes the number: order matters, as in ADM.
    assert inception_score(p[::-1].copy()) == pytest.approx(expected, rel=1e-10)
    shuffled = np.concatenate([first[::2], second[::2], first[1::2], second[1::2]])
    assert inception_score(shuffled) != pytest.approx(expected)


def test_is_fewer_than_split_size_is_one_split():
    p = soft_onehot(np.arange(200) % 8, 8, 0.5)
    assert inception_score(p) == pytest.approx(is_closed_form(8, 0.5), rel=1e-10)


# ---------------------------------------------------------------------------------------------------- P / R

def brute_force_pr(ref, smp, k=3):
    def radii(x):
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]
    r_ref, r_smp = radii(ref), radii(smp)
    d = ((ref[:, None, :] - smp[None, :, :]) ** 2).sum(-1)       # (n_ref, n_smp)
    precision = np.mean([(d[:, j] <= r_ref).any() for j in range(len(smp))])
    recall = np.mean([(d[i, :] <= r_smp).any() for i in range(len(ref))])
    return precision, recall


def on_axis(values, d=6):
    x = np.zeros((len(values), d), dtype=np.float32)
    x[:, 0] = values
    return x


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pr_known_answers_on_a_line(dtype):
    # References at 0..39; samples copy 0..19 (small integers: every distance is exact in fp16 too).
    # Interior radius^2 = 4 (third neighbour at distance 2), an end point's is 9. Precision: every sample sits
    # on a reference -> 1. Recall: references 0..19 sit on samples; 20, 21, 22 are within the end sample's
    # ball (19, radius^2 9: 1, 4, 9 <= 9), 23 (16) is not -> 23/40.
    ref, smp = on_axis(np.arange(40)), on_axis(np.arange(20))
    r = knn_radii(ref, 3, dtype)
    assert r[0] == 9 and r[20] == 4 and r[39] == 9
    assert precision_recall(ref, smp, 3, dtype) == (1.0, 23 / 40)
    assert precision_recall(smp, ref, 3, dtype) == (23 / 40, 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pr_identical_disjoint_and_half_outside(dtype):
    rng = np.random.default_rng(6)
    ref = rng.normal(size=(120, 8)).astype(np.float32)
    assert precision_recall(ref, ref.copy(), dtype=dtype) == (1.0, 1.0)
    assert precision_recall(ref, ref + 100.0, dtype=dtype) == (0.0, 0.0)
    # Half the samples are copies of references, half are a far-away cluster: precision 0.5 exactly.
    smp = np.concatenate([ref[:60], rng.normal(size=(60, 8)).astype(np.float32) + 100.0])
    precision, recall = precision_recall(ref, smp, dtype=dtype)
    assert precision == 0.5
    assert recall == pytest.approx(brute_force_pr(ref.astype(np.float64), smp.astype(np.float64))[1])


@pytest.mark.parametrize("block_entries", [7 * 90, 1 << 25])
def test_pr_matches_brute_force_and_is_block_size_independent(block_entries):
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(90, 5))
    smp = rng.normal(size=(70, 5)) * 1.3 + 0.4
    got = precision_recall(ref, smp, dtype="float32", block_entries=block_entries)
    want = brute_force_pr(ref, smp)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0.0 < got[0] < 1.0 and 0.0 < got[1] < 1.0


def test_pr_needs_more_than_k_points():
    with pytest.raises(ValueError, match="more than 3"):
        knn_radii(np.zeros((3, 2)), 3)


def test_count_suffix():
    assert count_suffix(50_000) == "" and count_suffix(10_000) == "-10K" and count_suffix(9_600) == "-10K"
    assert count_suffix(1_000) == "-1K" and count_suffix(200) == "-200"
