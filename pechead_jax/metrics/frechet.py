"""The Fréchet distance between Gaussians fitted to feature sets (FID, FVD), in float64 on host.

d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).
tr((S1 S2)^{1/2}) equals tr((A)^{1/2}) with A = S1^{1/2} S2 S1^{1/2}, which is symmetric
positive semi-definite: its square root's trace is the sum of the square roots of its
eigenvalues (negative round-off clipped to 0). Two symmetric eigendecompositions are stable
where the general `scipy.linalg.sqrtm` of the non-symmetric S1 S2 can return complex
values or fail on singular covariances (fewer samples than feature dimensions).
"""

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[D]` and unbiased covariance `[D, D]` (float64) of features `[N, D]`, N >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or Inf")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    for name, value, shape in (("mu2", mu2, (d,)), ("sigma1", sigma1, (d, d)),
                               ("sigma2", sigma2, (d, d))):
        if value.shape != shape:
            raise ValueError(f"{name} has shape {value.shape}, expected {shape} (mu1 is [{d}])")
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    w = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sum(np.sqrt(np.clip(w, 0.0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between two feature sets `[N1, D]`, `[N2, D]`."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def frechet_metric(name: str, real: np.ndarray, generated: np.ndarray,
                   provenance: dict[str, str]) -> dict:
    """FID/FVD as a JSON-ready record: value, sample counts and the feature network used."""
    return {"metric": name, "value": frechet_distance_from_features(real, generated),
            "real": int(np.shape(real)[0]), "generated": int(np.shape(generated)[0]),
            "provenance": dict(provenance)}
