"""Reconstruction metrics: L1, PSNR, MS-SSIM. Pure functions, images `[B, H, W, C]` in [0, 1].

Each returns one value per image (`[B]`); averaging over a test set is the caller's choice.
Conventions (docs/metrics.md):
- Data range 1.
- PSNR of an identical pair is `+inf`, exactly (no epsilon that would fake a finite value).
- MS-SSIM follows Wang, Simoncelli & Bovik (2003): 11x11 Gaussian window (sigma 1.5), 'valid'
  filtering, K1 0.01, K2 0.03, five scales with weights (0.0448, 0.2856, 0.3001, 0.2363,
  0.1333); contrast-structure at scales 1-4, full SSIM at scale 5; between scales a 2x2 mean
  with odd sizes edge-padded (the reference MATLAB's symmetric filter then subsampling); the
  per-scale terms are clipped at 0 before the powers (as TF and pytorch-msssim do) so a
  negative correlation cannot give NaN; computed per channel, then averaged over channels.
  The coarsest scale must still hold one 11x11 window: min(H, W) >= 161, else ValueError.
"""

import jax
import jax.numpy as jnp
import numpy as np

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1 = 0.01
K2 = 0.03


def _check_pair(a: jax.Array, b: jax.Array, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim != 4:
        raise ValueError(f"{name}: expected images [B, H, W, C], got shape {a.shape}")
    for x in (a, b):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name}: expected float images in [0, 1] (data range 1), got "
                             f"dtype {x.dtype}; divide uint8 frames by 255")


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean absolute difference per image: `[B,H,W,C] x2 -> [B]`."""
    _check_pair(a, b, "l1")
    return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=(1, 2, 3))


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    """Peak signal-to-noise ratio in dB for data range 1: `[B,H,W,C] x2 -> [B]`; inf if equal."""
    _check_pair(a, b, "psnr")
    mse = jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=(1, 2, 3))
    # -10 log10(0) is +inf in IEEE arithmetic: exactly the documented value for identical images.
    return -10.0 * jnp.log10(mse)


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian `[size]`; the 2-D window is its outer product."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def _band(n: int, window: np.ndarray) -> np.ndarray:
    """`[n - k + 1, n]` matrix whose rows are the window slid along a side of length n."""
    size = window.shape[0]
    rows = np.arange(n - size + 1)
    band = np.zeros((n - size + 1, n), np.float32)
    band[rows[:, None], rows[:, None] + np.arange(size)] = window
    return band


def _filter(x: jax.Array, window: np.ndarray) -> jax.Array:
    """Separable 'valid' Gaussian filter of each channel: `[B,H,W,C] -> [B,H-10,W-10,C]`.

    Written as two matrix products with banded matrices: XLA runs these several times faster
    than depthwise convolutions on CPU, with the same float32 sums.
    """
    _, h, w, _ = x.shape
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(_band(h, window)), x, precision=hp)
    return jnp.einsum("pw,bowc->bopc", jnp.asarray(_band(w, window)), x, precision=hp)


def _ssim_terms(a: jax.Array, b: jax.Array, window: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean SSIM and contrast-structure: `[B,H,W,C] x2 -> ([B,C], [B,C])`."""
    c1 = K1**2
    c2 = K2**2
    # SSIM does not change when both images shift by the same constant in the variance terms;
    # centring on a shared per-channel mean keeps E[x^2] - mu^2 accurate in float32.
    offset = jnp.mean(a + b, axis=(1, 2), keepdims=True) / 2
    ac, bc = a - offset, b - offset
    moments = _filter(jnp.concatenate([ac, bc, ac * ac, bc * bc, ac * bc], axis=-1), window)
    mu_a, mu_b, e_aa, e_bb, e_ab = jnp.split(moments, 5, axis=-1)
    var_a = e_aa - mu_a**2
    var_b = e_bb - mu_b**2
    cov = e_ab - mu_a * mu_b
    cs_map = (2 * cov + c2) / (var_a + var_b + c2)
    mu_a, mu_b = mu_a + offset, mu_b + offset
    lum_map = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return jnp.mean(lum_map * cs_map, axis=(1, 2)), jnp.mean(cs_map, axis=(1, 2))


def _downsample(x: jax.Array) -> jax.Array:
    """2x2 mean, odd sizes padded by repeating the last row/column: `[B,H,W,C] -> ceil/2`."""
    _, h, w, _ = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def min_ms_ssim_size(scales: int = len(MS_SSIM_WEIGHTS), window: int = WINDOW_SIZE) -> int:
    """Smallest min(H, W) for which the coarsest scale still holds one window (161 for 5)."""
    return (window - 1) * 2 ** (scales - 1) + 1


def ms_ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Multi-scale SSIM per image, data range 1: `[B,H,W,C] x2 -> [B]` (1 for equal images)."""
    _check_pair(a, b, "ms_ssim")
    smallest = min(a.shape[1], a.shape[2])
    need = min_ms_ssim_size()
    if smallest < need:
        raise ValueError(
            f"ms_ssim: images of {a.shape[1]}x{a.shape[2]} are too small for 5 scales with an "
            f"{WINDOW_SIZE}x{WINDOW_SIZE} window; min(H, W) must be >= {need}"
        )
    return _ms_ssim(a, b)


@jax.jit
def _ms_ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    window = gaussian_window()
    weights = jnp.asarray(MS_SSIM_WEIGHTS, jnp.float32)
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    cs_terms = []
    for scale in range(len(MS_SSIM_WEIGHTS)):
        ssim, cs = _ssim_terms(a, b, window)
        if scale < len(MS_SSIM_WEIGHTS) - 1:
            cs_terms.append(cs)
            a, b = _downsample(a), _downsample(b)
    terms = jnp.stack(cs_terms + [ssim], axis=0)  # [S, B, C]
    terms = jnp.maximum(terms, 0.0)
    per_channel = jnp.prod(terms ** weights[:, None, None], axis=0)  # [B, C]
    return jnp.mean(per_channel, axis=-1)


def _resize_axis_legacy(x: jax.Array, size: int, axis: int) -> jax.Array:
    n = x.shape[axis]
    src = np.arange(size, dtype=np.float64) * (n / size)
    lo = np.minimum(np.floor(src).astype(np.int32), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = size
    frac = jnp.asarray((src - lo).astype(np.float32)).reshape(shape)
    return jnp.take(x, lo, axis=axis) * (1 - frac) + jnp.take(x, hi, axis=axis) * frac


def resize_bilinear_legacy(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """TF1 `resize_bilinear(align_corners=False)`, the resize FID and FVD were defined with.

    Source coordinate = destination * in / out (no half-pixel offset), edges clamped, no
    anti-aliasing. Resizes axes -3 and -2 of `[..., H, W, C]` to `size = (h, w)`.
    """
    x = _resize_axis_legacy(images, size[0], images.ndim - 3)
    return _resize_axis_legacy(x, size[1], images.ndim - 2)
