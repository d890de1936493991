"""E: learned keypoints of a source image under a pose + expression condition."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from pechead_jax.models import layers

Array = jax.Array
# Head convolutions (few output channels) take their kernel gradient by one matmul.
_conv = layers.conv_general_dilated


def make_condition(pose: Array, expression: Array) -> Array:
    """`pose [..., 6]` and `expression [..., E]` -> condition `[..., 6 + E]` (the one concat)."""
    if pose.shape[-1:] != (6,):
        raise ValueError(
            f"make_condition: pose must end in 6 values (yaw, pitch, roll, log-scale, tx, ty), "
            f"got shape {pose.shape}"
        )
    if pose.shape[:-1] != expression.shape[:-1]:
        raise ValueError(
            f"make_condition: pose {pose.shape} and expression {expression.shape} "
            f"must share their leading axes"
        )
    return jnp.concatenate([pose, expression.astype(pose.dtype)], axis=-1)


def expected_coordinates(logits: Array, temperature: float) -> Array:
    """Soft-argmax: `logits [B,h,w,K]` -> softmax over pixels -> mean (x, y) `[B,K,2]`."""
    b, h, w, k = logits.shape
    probs = jax.nn.softmax(logits.astype(jnp.float32).reshape(b, h * w, k) / temperature, axis=1)
    grid = layers.identity_grid(h, w).reshape(h * w, 2)
    return jnp.einsum("bpk,pc->bkc", probs, grid)


class ConditionEmbedding(nn.Module):
    """Two-layer MLP: condition `[B, C]` -> embedding `[B, features]`."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, cond: Array) -> Array:
        x = nn.relu(nn.Dense(self.features, dtype=self.dtype)(cond))
        return nn.relu(nn.Dense(self.features, dtype=self.dtype)(x))


class KeypointEstimator(nn.Module):
    """`(image [B,H,W,3], cond [B,C]) -> keypoints [B,K,2]` in [-1, 1].

    The image is resized by `scale`; an hourglass whose every block is FiLM-modulated by an
    MLP embedding of the condition gives K heatmaps; a temperature softmax turns each into
    expected coordinates.
    """

    num_keypoints: int
    scale: float
    block_expansion: int
    max_features: int
    num_blocks: int
    condition_features: int
    temperature: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, cond: Array) -> Array:
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"KeypointEstimator: image must be [B,H,W,3], got {image.shape}")
        if cond.ndim != 2 or cond.shape[0] != image.shape[0]:
            raise ValueError(
                f"KeypointEstimator: cond must be [B,C] with B={image.shape[0]}, got {cond.shape}"
            )
        h, w = (round(s * self.scale) for s in image.shape[1:3])
        x = layers.resize(image, (h, w))
        embedding = ConditionEmbedding(self.condition_features, self.dtype)(cond)
        features = layers.Hourglass(
            self.block_expansion, self.max_features, self.num_blocks, self.dtype
        )(x, embedding)
        logits = nn.Conv(
            self.num_keypoints, (7, 7), dtype=self.dtype, conv_general_dilated=_conv
        )(features)
        return expected_coordinates(logits, self.temperature)
