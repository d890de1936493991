"""The Fréchet distance against a direct scipy.linalg.sqrtm computation."""

import numpy as np
import pytest
import scipy.linalg

from pechead_jax.metrics import frechet


def _direct(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_matches_scipy_sqrtm_on_gaussians():
    rng = np.random.default_rng(0)
    d = 24
    a = rng.normal(size=(d, d))
    x = rng.normal(size=(500, d))
    y = rng.normal(size=(400, d)) @ (np.eye(d) + 0.3 * a) + 0.5
    got = frechet.frechet_distance_from_features(x, y)
    want = _direct(x, y)
    assert want > 1.0  # the two distributions really differ
    np.testing.assert_allclose(got, want, rtol=1e-9)
    # Known case: N(0, I) vs N(m, 4I) -> |m|^2 + d (1 + 4 - 2*2) = |m|^2 + d.
    m = np.full(d, 0.5)
    assert frechet.frechet_distance(np.zeros(d), np.eye(d), m, 4 * np.eye(d)) == pytest.approx(
        d * 0.25 + d, rel=1e-12)


def test_same_set_is_zero_and_singular_covariance_is_finite():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 32))  # fewer samples than dimensions: singular covariances
    # Round-off eigenvalues (~1e-15) of the rank-9 product enter through a square root.
    assert abs(frechet.frechet_distance_from_features(x, x)) < 1e-5
    y = rng.normal(size=(12, 32))
    assert np.isfinite(frechet.frechet_distance_from_features(x, y))


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        frechet.feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        frechet.feature_statistics(np.zeros(4))
    with pytest.raises(ValueError, match="sigma2"):
        frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def test_metric_record():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(60, 4)) + 1
    record = frechet.frechet_metric("fid", x, y, {"network": "n"})
    assert record["real"] == 50 and record["generated"] == 60
    assert record["value"] == pytest.approx(_direct(x, y), rel=1e-9)
    assert record["provenance"] == {"network": "n"}
