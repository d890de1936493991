"""D: a multi-scale patch discriminator with optional, stateless spectral normalisation.

One patch discriminator per scale of `config.model.disc_scales`, each on the image resized by
`layers.image_pyramid`. A patch discriminator is `disc_num_blocks` blocks of conv4x4 ->
InstanceNorm (not in the first block) -> leaky ReLU(0.2) -> 2x2 average pool (not after the
last block), then a 1x1 conv to one logit per patch. Choices and reasons: docs/model.md,
'Discriminator'.

Spectral normalisation (`disc_spectral_norm`) divides each conv kernel by an estimate of its
largest singular value. The estimate is recomputed on every call by `SPECTRAL_NORM_ITERATIONS`
power iterations from a fixed start vector, so D has no state besides its parameters: `apply`
needs no mutable collection and the train state stays `{'params': ...}`.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pechead_jax.models import layers

Array = jax.Array

SPECTRAL_NORM_ITERATIONS = 10


def _normalize(x: Array, eps: float = 1e-12) -> Array:
    return x / (jnp.linalg.norm(x) + eps)


def spectral_normalize(kernel: Array, iterations: int = SPECTRAL_NORM_ITERATIONS) -> Array:
    """`kernel [..., C_out]` divided by its estimated largest singular value.

    The kernel is viewed as a `[prod(...), C_out]` matrix; `iterations` power iterations start
    from a fixed pseudo-random vector (the same on every call). As in SN-GAN the gradient flows
    through `sigma = v^T W u` with the singular vectors held constant.
    """
    c_out = kernel.shape[-1]
    matrix = kernel.reshape(-1, c_out).astype(jnp.float32)
    start = np.random.default_rng(c_out).standard_normal(c_out).astype(np.float32)
    frozen = jax.lax.stop_gradient(matrix)

    def step(_, uv):
        u, _ = uv
        v = _normalize(frozen @ u)
        return _normalize(frozen.T @ v), v

    u0 = jnp.asarray(start / np.linalg.norm(start))
    u, v = jax.lax.fori_loop(0, iterations, step, (u0, jnp.zeros(matrix.shape[0], jnp.float32)))
    sigma = v @ matrix @ u
    return (kernel / jnp.maximum(sigma, 1e-12)).astype(kernel.dtype)


class Conv(nn.Module):
    """A 'SAME' convolution with parameters `kernel [kh,kw,C_in,features]` and `bias`
    (the names of `nn.Conv`), optionally spectrally normalised."""

    features: int
    kernel_size: tuple[int, int]
    spectral_norm: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        if self.spectral_norm:
            kernel = spectral_normalize(kernel)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(1, 1),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias.astype(self.dtype)


class PatchDiscriminator(nn.Module):
    """`image [B,H,W,3]` -> (logits `[B,h,w,1]` float32, features: one `[B,h_i,w_i,c_i]` per
    block), with `h = H / 2**(num_blocks - 1)`."""

    block_expansion: int
    max_features: int
    num_blocks: int
    spectral_norm: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array) -> tuple[Array, list[Array]]:
        x = image
        features = []
        for i in range(self.num_blocks):
            channels = min(self.max_features, self.block_expansion * 2 ** (i + 1))
            x = Conv(channels, (4, 4), self.spectral_norm, self.dtype)(x)
            if i > 0:
                x = nn.InstanceNorm(dtype=self.dtype)(x)
            x = nn.leaky_relu(x, 0.2)
            if i < self.num_blocks - 1:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            features.append(x)
        logits = Conv(1, (1, 1), self.spectral_norm, self.dtype)(x)
        return logits.astype(jnp.float32), features


class MultiScaleDiscriminator(nn.Module):
    """D over `config.model.disc_scales`: `image [B,H,W,3]` -> one `(logits [B,h,w,1],
    features [B,h_i,w_i,c_i] per block)` per scale, each scale its own patch discriminator."""

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, image: Array) -> list[tuple[Array, list[Array]]]:
        m = self.config
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"MultiScaleDiscriminator: image must be [B,H,W,3], got {image.shape}")
        scales: Sequence[float] = tuple(m.disc_scales)
        if not scales:
            raise ValueError("MultiScaleDiscriminator: config.model.disc_scales is empty")
        factor = 2 ** (m.disc_num_blocks - 1)
        for s in scales:
            size = round(image.shape[1] * s), round(image.shape[2] * s)
            if min(size) < factor:
                raise ValueError(
                    f"MultiScaleDiscriminator: scale {s} of a {image.shape[1:3]} image is "
                    f"{size}, smaller than 2**(disc_num_blocks - 1) = {factor}"
                )
        if m.dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"MultiScaleDiscriminator: config.model.dtype={m.dtype!r}, "
                "expected float32/bfloat16"
            )
        outputs = []
        for i, x in enumerate(layers.image_pyramid(image, scales)):
            outputs.append(
                PatchDiscriminator(
                    block_expansion=m.disc_block_expansion,
                    max_features=m.disc_max_features,
                    num_blocks=m.disc_num_blocks,
                    spectral_norm=m.disc_spectral_norm,
                    dtype=jnp.dtype(m.dtype),
                    name=f"scale_{i}",
                )(x)
            )
        return outputs
