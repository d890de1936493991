"""L1, PSNR and MS-SSIM against plain NumPy/SciPy re-implementations on real photos."""

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
import skimage.data
import skimage.metrics

from pechead_jax.metrics import image

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _reference_ssim_cs(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean SSIM and contrast-structure of one channel, float64, 'valid' 11x11 Gaussian."""
    t = np.arange(11) - 5.0
    g = np.exp(-t * t / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def f(x):
        return scipy.signal.fftconvolve(x, w, mode="valid")

    c1, c2 = 0.01**2, 0.03**2
    ma, mb = f(a), f(b)
    va, vb, cov = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
    cs = (2 * cov + c2) / (va + vb + c2)
    lum = (2 * ma * mb + c1) / (ma**2 + mb**2 + c1)
    return float(np.mean(lum * cs)), float(np.mean(cs))


def _reference_halve(x: np.ndarray) -> np.ndarray:
    if x.shape[0] % 2:
        x = np.vstack([x, x[-1:]])
    if x.shape[1] % 2:
        x = np.hstack([x, x[:, -1:]])
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4


def _reference_ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2003 for one HxWxC image pair, channel mean of per-channel MS-SSIM."""
    values = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        value = 1.0
        for s, weight in enumerate(WEIGHTS):
            ssim, cs = _reference_ssim_cs(x, y)
            value *= max(ssim if s == len(WEIGHTS) - 1 else cs, 0.0) ** weight
            x, y = _reference_halve(x), _reference_halve(y)
        values.append(value)
    return float(np.mean(values))


@pytest.fixture(scope="module")
def pairs():
    """Real photos (odd and even sizes) with known distortions, in [0, 1]."""
    astro = skimage.data.astronaut()[::2, ::2].astype(np.float32) / 255  # 256x256
    coffee = skimage.data.coffee()[:203, 50:283].astype(np.float32) / 255  # odd 203x233
    rng = np.random.default_rng(0)
    out = []
    for clean in (astro, coffee):
        noisy = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1).astype(np.float32)
        blurred = scipy.ndimage.gaussian_filter(clean, (2, 2, 0)).astype(np.float32)
        darker = (clean * 0.7).astype(np.float32)
        out.append((clean, np.stack([noisy, blurred, darker])))
    return out


def test_ms_ssim_matches_reference(pairs):
    for clean, distorted in pairs:
        ref = np.stack([clean] * len(distorted))
        got = np.asarray(image.ms_ssim(ref, distorted))
        want = [_reference_ms_ssim(clean, d) for d in distorted]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert 0.3 < got.min() and got.max() < 0.999  # distortions the metric actually sees
        np.testing.assert_allclose(np.asarray(image.ms_ssim(ref, ref)), 1.0, atol=1e-6)


def test_single_scale_ssim_matches_skimage(pairs):
    clean, distorted = pairs[0]
    for d in distorted:
        want = skimage.metrics.structural_similarity(
            clean, d, channel_axis=-1, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0)
        ssim, _ = image._ssim_terms(clean[None], d[None], image.gaussian_window())
        np.testing.assert_allclose(float(np.mean(ssim)), want, atol=1e-5)


def test_psnr_and_l1_match_reference(pairs):
    for clean, distorted in pairs:
        ref = np.stack([clean] * len(distorted))
        mse = np.mean((ref.astype(np.float64) - distorted) ** 2, axis=(1, 2, 3))
        np.testing.assert_allclose(np.asarray(image.psnr(ref, distorted)),
                                   10 * np.log10(1 / mse), atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.asarray(image.l1(ref, distorted)),
                                   np.mean(np.abs(ref.astype(np.float64) - distorted),
                                           axis=(1, 2, 3)), atol=1e-6)


def test_psnr_known_values():
    x = np.full((2, 8, 8, 3), 0.25, np.float32)
    y = x.copy()
    y[0] += 0.1  # MSE 0.01 -> exactly 20 dB
    got = np.asarray(image.psnr(x, y))
    np.testing.assert_allclose(got[0], 20.0, atol=1e-4)
    assert got[1] == np.inf  # identical images: +inf by definition, documented


def test_ms_ssim_rejects_small_and_mismatched():
    small = np.zeros((1, 160, 200, 3), np.float32)
    with pytest.raises(ValueError, match=r"min\(H, W\) must be >= 161"):
        image.ms_ssim(small, small)
    with pytest.raises(ValueError, match="same shape"):
        image.ms_ssim(np.zeros((1, 200, 200, 3)), np.zeros((1, 200, 201, 3)))
    with pytest.raises(ValueError, match="divide uint8"):
        image.psnr(np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8))
    assert image.min_ms_ssim_size() == 161
    ok = np.random.default_rng(1).uniform(size=(1, 161, 161, 3)).astype(np.float32)
    assert float(image.ms_ssim(ok, ok)[0]) == pytest.approx(1.0, abs=1e-6)


def test_resize_legacy_matches_formula():
    x = skimage.data.astronaut()[:10, :7].astype(np.float32) / 255
    out = np.asarray(image.resize_bilinear_legacy(x[None], (23, 5)))[0]
    # Direct: out[i, j] = bilinear at (i * 10/23, j * 7/5), edges clamped.
    for i, j in ((0, 0), (22, 4), (11, 2), (7, 3)):
        sy, sx = i * 10 / 23, j * 7 / 5
        y0, x0 = int(sy), int(sx)
        y1, x1 = min(y0 + 1, 9), min(x0 + 1, 6)
        fy, fx = sy - y0, sx - x0
        want = ((1 - fy) * ((1 - fx) * x[y0, x0] + fx * x[y0, x1])
                + fy * ((1 - fx) * x[y1, x0] + fx * x[y1, x1]))
        np.testing.assert_allclose(out[i, j], want, atol=1e-6)
