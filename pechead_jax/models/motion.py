"""Dense motion: two point sets -> a dense backward flow and occlusion maps."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from pechead_jax.models import layers

Array = jax.Array
# Head convolutions (few output channels) take their kernel gradient by one matmul.
_conv = layers.conv_general_dilated


def resize_flow(flow: Array, shape: tuple[int, int]) -> Array:
    """Resize a sampling grid `[B,h,w,2]` to `shape`, resizing only its displacement.

    Grids use pixel-centre corners while `jax.image.resize` uses half-pixel centres;
    resizing the displacement from the identity keeps an identity flow exactly the identity.
    """
    if flow.shape[1:3] == tuple(shape):
        return flow
    displacement = flow - layers.identity_grid(*flow.shape[1:3], flow.dtype)
    return layers.resize(displacement, shape) + layers.identity_grid(*shape, flow.dtype)


def sparse_motions(
    source_points: Array, driving_points: Array, h: int, w: int, affines: Array | None = None
) -> Array:
    """Per-point first-order motions plus the identity: `[B,N+1,h,w,2]` backward grids.

    Grid n maps a driving-frame pixel z to `source_n + A_n (z - driving_n)` (FOMM's local
    affine motion, `affines [B,N,2,2]`; None = translations, A_n = I); the last grid is the
    identity (background that does not move).
    """
    identity = layers.identity_grid(h, w, source_points.dtype)
    offset = identity[None, None] - driving_points[:, :, None, None, :]  # [B, N, h, w, 2]
    if affines is not None:
        offset = jnp.einsum("bnij,bnhwj->bnhwi", affines.astype(offset.dtype), offset)
    moved = source_points[:, :, None, None, :] + offset
    still = jnp.broadcast_to(identity, (moved.shape[0], 1, h, w, 2))
    return jnp.concatenate([moved, still], axis=1)


class DenseMotion(nn.Module):
    """`(source [B,H,W,3], source_points [B,N,2], driving_points [B,N,2], affines)` -> dict.

    At `scale` of the source resolution (h, w): the inputs are the Gaussian heatmap
    differences (driving minus source) and the source deformed by each sparse motion
    (`sparse_motions`, with the optional local affines `[B,N,2,2]`); an
    hourglass predicts softmax masks over the N+1 motions, whose weighted sum is the dense
    backward flow. Returns `flow [B,h,w,2]` (driving -> source coordinates, for `warp`),
    `masks [B,h,w,N+1]` and `occlusions`, a list over `num_levels` of `[B,H/2^l,W/2^l,1]`
    in (0, 1) (1 = visible in the source).
    """

    scale: float
    block_expansion: int
    max_features: int
    num_blocks: int
    variance: float
    num_levels: int
    use_occlusion: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        source: Array,
        source_points: Array,
        driving_points: Array,
        affines: Array | None = None,
    ) -> dict:
        if source_points.shape != driving_points.shape or source_points.ndim != 3:
            raise ValueError(
                f"DenseMotion: source_points {source_points.shape} and driving_points "
                f"{driving_points.shape} must both be [B,N,2]"
            )
        b, height, width, _ = source.shape
        n = source_points.shape[1]
        h, w = round(height * self.scale), round(width * self.scale)
        small = layers.resize(source, (h, w))
        source_points = source_points.astype(jnp.float32)
        driving_points = driving_points.astype(jnp.float32)

        heatmaps = layers.point_heatmaps(
            driving_points, h, w, self.variance
        ) - layers.point_heatmaps(source_points, h, w, self.variance)
        heatmaps = jnp.concatenate([heatmaps, jnp.zeros((b, h, w, 1), heatmaps.dtype)], -1)

        motions = sparse_motions(source_points, driving_points, h, w, affines)  # [B,N+1,h,w,2]
        repeated = jnp.broadcast_to(small[:, None], (b, n + 1, h, w, small.shape[-1]))
        deformed = layers.warp(
            repeated.reshape(b * (n + 1), h, w, -1), motions.reshape(b * (n + 1), h, w, 2)
        )
        deformed = deformed.reshape(b, n + 1, h, w, -1).transpose(0, 2, 3, 1, 4)
        inputs = jnp.concatenate([heatmaps, deformed.reshape(b, h, w, -1)], axis=-1)

        features = layers.Hourglass(
            self.block_expansion, self.max_features, self.num_blocks, self.dtype
        )(inputs)
        # 3x3 heads: the features are wide (decoder + all N+1 deformed sources), and a 7x7
        # head over them would cost as much as the whole hourglass.
        head = nn.Conv(n + 1, (3, 3), dtype=self.dtype, conv_general_dilated=_conv)
        logits = head(features).astype(jnp.float32)
        masks = jax.nn.softmax(logits, axis=-1)
        flow = jnp.einsum("bhwk,bkhwc->bhwc", masks, motions)

        occlusions = []
        if self.use_occlusion:
            occ_logits = nn.Conv(
                self.num_levels, (3, 3), dtype=self.dtype, conv_general_dilated=_conv
            )(features)
            occ_logits = occ_logits.astype(jnp.float32)
            for level in range(self.num_levels):
                shape = (height // 2**level, width // 2**level)
                occ = layers.resize(occ_logits[..., level : level + 1], shape)
                occlusions.append(jax.nn.sigmoid(occ))
        else:
            for level in range(self.num_levels):
                occlusions.append(jnp.ones((b, height // 2**level, width // 2**level, 1)))
        return {"flow": flow, "masks": masks, "occlusions": occlusions}
