"""E: learned keypoints of a source image under pose + expression conditions.

Two estimators with one interface, `(image [B,H,W,3], source_cond [B,C], driving_cond
[B,...,C]) -> (source_kp [B,K,2], driving_kp [B,...,K,2])`, split as `encode(image)` (what
depends on the source image alone, computed once per portrait at inference) and
`from_encoded(encoded, source_cond, driving_cond)`; the driving side never sees a driving
image, so an edit and a reenactment take the same path:
- `PoseKeypointEstimator` (`model.keypoints='pose'`, the default): 3D points found on the
  source image, taken to the canonical frame by R's source pose, deformed by the expression
  change, and re-posed by the driving pose (face-vid2vid / LivePortrait's formulation with
  R's pose). A pose edit rotates the points exactly.
- `KeypointEstimator` (`'film'`): the first wave's E, whose hourglass is FiLM-modulated by
  the condition, run once per condition.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from pechead_jax.models import geometry, layers

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
    """FiLM E: `(image, source_cond [B,C], driving_cond [B,...,C]) -> (source, driving)` kp.

    `detect(image [B,H,W,3], cond [B,C]) -> [B,K,2]` in [-1, 1]: the image is resized by
    `scale`; an hourglass whose every block is FiLM-modulated by an MLP embedding of the
    condition gives K heatmaps; a temperature softmax turns each into expected coordinates.
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
    def detect(self, image: Array, cond: Array) -> Array:
        """E on one condition: `image [B,H,W,3]`, `cond [B,C]` -> `[B,K,2]`."""
        _check_image_and_cond("KeypointEstimator", image, cond)
        h, w = (round(s * self.scale) for s in image.shape[1:3])
        x = layers.resize(image, (h, w))
        embedding = ConditionEmbedding(self.condition_features, self.dtype, name="embedding")(
            cond
        )
        features = layers.Hourglass(
            self.block_expansion, self.max_features, self.num_blocks, self.dtype,
            name="hourglass",
        )(x, embedding)
        # The heatmap head in float32: soft-argmax coordinates are sensitive to logit noise.
        logits = nn.Conv(
            self.num_keypoints, (7, 7), dtype=jnp.float32, conv_general_dilated=_conv,
            name="heatmaps",
        )(features.astype(jnp.float32))
        return expected_coordinates(logits, self.temperature)

    def encode(self, image: Array) -> Array:
        """What E keeps of the source for any number of driving conditions: the image
        itself (this E runs its hourglass once per condition)."""
        return image

    def from_encoded(
        self, encoded: Array, source_cond: Array, driving_cond: Array
    ) -> tuple[Array, Array]:
        """`__call__` on `encode(image)`."""
        return self(encoded, source_cond, driving_cond)

    def __call__(
        self, image: Array, source_cond: Array, driving_cond: Array
    ) -> tuple[Array, Array]:
        b = image.shape[0]
        lead = driving_cond.shape[1:-1]
        n = math.prod(lead)
        # One E call for all conditions: the driving keypoints come from the source image.
        conds = jnp.concatenate([source_cond, driving_cond.reshape(b * n, -1)])
        images = jnp.concatenate([image, jnp.repeat(image, n, axis=0)])
        points = self.detect(images, conds)
        return points[:b], points[b:].reshape(b, *lead, *points.shape[1:])


def _check_image_and_cond(name: str, image: Array, cond: Array) -> None:
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"{name}: image must be [B,H,W,3], got {image.shape}")
    if cond.ndim != 2 or cond.shape[0] != image.shape[0]:
        raise ValueError(f"{name}: cond must be [B,C] with B={image.shape[0]}, got {cond.shape}")


class PoseKeypointEstimator(nn.Module):
    """E with explicit pose: `(image, source_cond, driving_cond) -> (source_kp, driving_kp)`.

    On the source image an hourglass gives K heatmaps (soft-argmax: x, y) and K depth maps
    (their heatmap-weighted mean: z), the 3D points `P_s` in the camera frame. With R's poses
    (the first `pose_dim` condition values) and an expression deformation `delta(e) [K,3]`
    (an MLP of the expression, zero at initialisation, in canonical units):
    `P_d = s_d R_d (R_s^T (P_s - t_s) / s_s + delta(e_d) - delta(e_s)) + t_d`, projected to
    (x, y). Same pose and expression give `P_d = P_s` exactly; a pose edit rotates the
    points rigidly about the head centre. Returns the 2D points and, through `depth`, z.
    """

    num_keypoints: int
    scale: float
    block_expansion: int
    max_features: int
    num_blocks: int
    condition_features: int
    temperature: float
    pose_dim: int = 6
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.hourglass = layers.Hourglass(
            self.block_expansion, self.max_features, self.num_blocks, self.dtype
        )
        # Heads in float32: soft-argmax coordinates are sensitive to logit noise.
        self.heatmaps = nn.Conv(
            self.num_keypoints, (7, 7), dtype=jnp.float32, conv_general_dilated=_conv
        )
        self.depth = nn.Conv(
            self.num_keypoints, (7, 7), dtype=jnp.float32, conv_general_dilated=_conv,
            kernel_init=nn.initializers.zeros,
        )
        self.expression_hidden = nn.Dense(self.condition_features, dtype=self.dtype)
        # No bias: only differences delta(e_d) - delta(e_s) are used, where it cancels.
        self.expression_out = nn.Dense(
            3 * self.num_keypoints, use_bias=False, kernel_init=nn.initializers.zeros,
            dtype=jnp.float32,
        )

    def detect3d(self, image: Array) -> Array:
        """3D points on the image `[B,H,W,3]` -> `[B,K,3]` (x, y in [-1, 1], z likewise)."""
        h, w = (round(s * self.scale) for s in image.shape[1:3])
        features = self.hourglass(layers.resize(image, (h, w))).astype(jnp.float32)
        logits = self.heatmaps(features)
        b, hh, ww, k = logits.shape
        probs = jax.nn.softmax(logits.reshape(b, hh * ww, k) / self.temperature, axis=1)
        grid = layers.identity_grid(hh, ww).reshape(hh * ww, 2)
        xy = jnp.einsum("bpk,pc->bkc", probs, grid)
        z = jnp.einsum("bpk,bpk->bk", probs, self.depth(features).reshape(b, hh * ww, k))
        return jnp.concatenate([xy, z[..., None]], axis=-1)

    def detect(self, image: Array, cond: Array) -> Array:
        """The source keypoints alone: `[B,H,W,3]`, `[B,C]` -> `[B,K,2]` (cond unused)."""
        _check_image_and_cond("PoseKeypointEstimator", image, cond)
        return self.detect3d(image)[..., :2]

    def deformation(self, expression: Array) -> Array:
        """`expression [..., E]` -> canonical offsets `[..., K, 3]`."""
        x = nn.relu(self.expression_hidden(expression.astype(self.dtype)))
        out = self.expression_out(x.astype(jnp.float32))
        return out.reshape(*expression.shape[:-1], self.num_keypoints, 3)

    def encode(self, image: Array) -> Array:
        """What E keeps of the source for any number of driving conditions: its 3D points
        `[B,K,3]` (the only part that looks at the image)."""
        return self.detect3d(image)

    def __call__(
        self, image: Array, source_cond: Array, driving_cond: Array
    ) -> tuple[Array, Array]:
        _check_image_and_cond("PoseKeypointEstimator", image, source_cond)
        return self.from_encoded(self.detect3d(image), source_cond, driving_cond)

    def from_encoded(
        self, points: Array, source_cond: Array, driving_cond: Array
    ) -> tuple[Array, Array]:
        """`__call__` from the source's 3D points `points [B,K,3]` (`encode`)."""
        b, p = points.shape[0], self.pose_dim
        lead = driving_cond.shape[1:-1]
        delta = self.deformation(driving_cond[..., p:]) - self.deformation(
            source_cond[..., p:]
        ).reshape(b, *(1,) * len(lead), self.num_keypoints, 3)
        src_pose = source_cond[..., :p].reshape(b, *(1,) * len(lead), p)
        drv_pose = driving_cond[..., :p]
        drv_rotation, drv_scale, _ = geometry.pose_transform(drv_pose)
        offset = drv_scale[..., None, None] * jnp.einsum(
            "...ij,...nj->...ni", drv_rotation, delta
        )
        points_b = points.reshape(b, *(1,) * len(lead), *points.shape[1:])
        driving = geometry.repose(points_b, src_pose, drv_pose) + offset
        return points[..., :2], driving[..., :2]
