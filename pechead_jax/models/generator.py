"""G: source feature pyramid -> warp by the motion(s) -> fuse (MMFA) -> decode, with CAP."""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pechead_jax.models import layers
from pechead_jax.models.motion import resize_flow

Array = jax.Array
# Head convolutions (few output channels) take their kernel gradient by one matmul.
_conv = layers.conv_general_dilated

# Motion names each variant uses, in the order fusion weights refer to them.
VARIANT_MOTIONS = {
    "kp": ("kp",),
    "lmk": ("lmk",),
    "direct": ("direct",),
    "featcat": ("kp", "lmk"),
    "mmfa": ("kp", "lmk"),
    "full": ("kp", "lmk"),
}
# How the composite's warped source treats samples beyond the image: the edge pixel, or zero.
SOURCE_PADDINGS = ("border", "zeros")


def warp_source(source: Array, grid: Array, padding: str = "zeros") -> Array:
    """`source [B,H,W,3]` sampled at `grid [B,H,W,2]` (float32), for the composite.

    With `padding="border"` samples beyond the image take the nearest edge pixel instead of
    black: where the head moves away from an edge, the composite then starts from the
    stretched edge (hair, neck, background) rather than a black band the decoder must paint
    over (docs/model.md). With align_corners=True coordinates, clamping the grid to [-1, 1]
    is exactly border padding.
    """
    if padding not in SOURCE_PADDINGS:
        raise ValueError(f"source_padding={padding!r}, expected one of {SOURCE_PADDINGS}")
    grid = grid.astype(jnp.float32)
    if padding == "border":
        grid = jnp.clip(grid, -1.0, 1.0)
    return layers.warp(source, grid)


def level_features(block_expansion: int, max_features: int, level: int) -> int:
    """Channels of pyramid level `level` (level 0 is full resolution)."""
    return min(max_features, block_expansion * 2**level)


class Encoder(nn.Module):
    """`source [B,H,W,3]` -> pyramid: list over levels l of `[B,H/2^l,W/2^l,c_l]`."""

    block_expansion: int
    max_features: int
    num_down_blocks: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, source: Array) -> list[Array]:
        x = nn.Conv(self.block_expansion, (7, 7), dtype=self.dtype)(source)
        pyramid = [nn.relu(layers.Norm(self.dtype)(x))]
        for level in range(1, self.num_down_blocks + 1):
            c = level_features(self.block_expansion, self.max_features, level)
            pyramid.append(layers.DownBlock(c, self.dtype)(pyramid[-1]))
        return pyramid


class MotionAwareFusion(nn.Module):
    """MMFA at one level: per-pixel softmax weights over the warped candidates.

    The weights come from the (occlusion-masked) warped features, the displacement of each
    flow and each occlusion map, so the network sees both what each warp produced and how
    far it moved. Returns (fused `[B,h,w,c]`, weights `[B,h,w,M]`).
    """

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, warped: Sequence[Array], displacements: Sequence[Array], occlusions: Sequence[Array]
    ) -> tuple[Array, Array]:
        c = warped[0].shape[-1]
        x = jnp.concatenate(
            [w.astype(self.dtype) for w in (*warped, *displacements, *occlusions)], axis=-1
        )
        x = nn.Conv(max(8, c // 4), (3, 3), dtype=self.dtype, conv_general_dilated=_conv)(x)
        x = nn.relu(layers.Norm(self.dtype)(x))
        head = nn.Conv(len(warped), (3, 3), dtype=self.dtype, conv_general_dilated=_conv)
        logits = head(x).astype(jnp.float32)
        weights = jax.nn.softmax(logits, axis=-1)
        fused = sum(weights[..., i : i + 1].astype(w.dtype) * w for i, w in enumerate(warped))
        return fused, weights


class ContextPropagation(nn.Module):
    """CAP: gate the previous frame's (already warped) context into the current features.

    `(x [B,h,w,c], previous [B,h,w,cap]) -> (x', context [B,h,w,cap])`. The injection has
    no bias and starts at zero, so a zero context (first frame) leaves x unchanged, and so
    does any context before training; the returned context is a
    projection of the fused features, so information can persist over several frames.
    """

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, previous: Array) -> tuple[Array, Array]:
        c = x.shape[-1]
        previous = previous.astype(x.dtype)
        gate = nn.Conv(c, (1, 1), dtype=self.dtype, name="gate")(jnp.concatenate([x, previous], -1))
        # Zero-initialised: stage 2 starts exactly at the stage-1 model and CAP only adds.
        inject = nn.Conv(
            c, (1, 1), use_bias=False, kernel_init=nn.initializers.zeros, dtype=self.dtype,
            name="inject",
        )(previous)
        x = x + nn.sigmoid(gate) * inject
        # Learns only through the next frame of a clip (the scan), never from one frame.
        context = nn.Conv(self.features, (1, 1), dtype=self.dtype, name="context_out")(x)
        return x, context


class Generator(nn.Module):
    """Warp, fuse and decode the source pyramid; composite with the warped source.

    `__call__(source, pyramid, motions, context=None, context_motion=None) -> dict` where
    `source [B,H,W,3]` is the source image, `pyramid` is `Encoder`'s output (`encode` makes
    it), `motions` maps each name of `VARIANT_MOTIONS[variant]` to a `DenseMotion` output,
    and for `full` `context` `[B,h_c,w_c,cap_features]` is the previous frame's CAP context
    (None: zeros) and
    `context_motion` maps motion names to the displacement `[B,h,w,2]` from the current frame
    to the previous one. Returns `image [B,H,W,3]` in (0, 1), `occlusions` (list per level of
    the fused `[B,h,w,1]`), `fusion_weights` (list per level, `[B,h,w,M]`, mmfa/full),
    `fused_grid [B,H,W,2]` (the flows mixed by the level-0 fusion weights), `warped_source`
    (the source warped by it; beyond the image `source_padding` "border" repeats the edge
    pixel, "zeros" gives black), `blend [B,H,W,1]` and `context` (full only).

    With `composite` the image is `blend * warped_source + (1 - blend) * decoded` (the TPSMM /
    LivePortrait pattern): the source's own pixels carry texture and identity wherever they
    are visible, and the decoder paints what the warp cannot show. The blend's logit head
    starts at zero weights with bias `blend_bias`, so an untrained model already returns the
    warped source (docs/model.md, "Composited output").
    """

    variant: str
    block_expansion: int
    max_features: int
    num_down_blocks: int
    num_bottleneck_blocks: int
    cap_features: int
    cap_level: int
    composite: bool = True
    blend_bias: float = 8.0
    source_padding: str = "zeros"
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        if self.source_padding not in SOURCE_PADDINGS:
            raise ValueError(
                f"Generator: source_padding={self.source_padding!r}, expected one of "
                f"{SOURCE_PADDINGS}"
            )
        if self.variant not in VARIANT_MOTIONS:
            raise ValueError(
                f"Generator: unknown variant {self.variant!r}; expected one of "
                f"{tuple(VARIANT_MOTIONS)}"
            )
        if not 0 <= self.cap_level <= self.num_down_blocks:
            raise ValueError(
                f"Generator: cap_level={self.cap_level} must be in [0, {self.num_down_blocks}]"
            )
        self.encoder = Encoder(
            self.block_expansion, self.max_features, self.num_down_blocks, self.dtype
        )
        levels = range(self.num_down_blocks + 1)
        if self.variant == "featcat":
            self.fusions = [
                nn.Conv(self.channels(lv), (1, 1), dtype=self.dtype, name=f"featcat_{lv}")
                for lv in levels
            ]
        elif self.variant in ("mmfa", "full"):
            self.fusions = [MotionAwareFusion(self.dtype, name=f"mmfa_{lv}") for lv in levels]
        self.decoder = Decoder(
            self.block_expansion,
            self.max_features,
            self.num_down_blocks,
            self.num_bottleneck_blocks,
            self.cap_features if self.variant == "full" else 0,
            self.cap_level,
            self.composite,
            self.blend_bias,
            self.dtype,
        )

    def channels(self, level: int) -> int:
        return level_features(self.block_expansion, self.max_features, level)

    def encode(self, source: Array) -> list[Array]:
        """`source [B,H,W,3]` -> the source feature pyramid."""
        return self.encoder(source)

    def context_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of the CAP context for a `[batch, height, width, 3]` source."""
        s = 2**self.cap_level
        return (batch, height // s, width // s, self.cap_features)

    def __call__(
        self,
        source: Array,
        pyramid: Sequence[Array],
        motions: Mapping[str, dict],
        context: Array | None = None,
        context_motion: Mapping[str, Array] | None = None,
    ) -> dict:
        names = VARIANT_MOTIONS[self.variant]
        if set(motions) != set(names):
            raise ValueError(
                f"Generator: variant {self.variant!r} needs motions {names}, got {tuple(motions)}"
            )
        fused, occlusions, weights = [], [], []
        fused_grid = None
        for level, features in enumerate(pyramid):
            shape = features.shape[1:3]
            grids = [resize_flow(motions[n]["flow"], shape) for n in names]
            if level == 0:
                fused_grid = grids[0] if len(grids) == 1 else sum(grids) / len(grids)
            occs = [motions[n]["occlusions"][level] for n in names]
            warped = [
                layers.warp(features, g) * o.astype(features.dtype) for g, o in zip(grids, occs)
            ]
            if len(names) == 1:
                fused.append(warped[0])
                occlusions.append(occs[0])
            elif self.variant == "featcat":
                fused.append(self.fusions[level](jnp.concatenate(warped, axis=-1)))
                occlusions.append(sum(occs) / len(occs))
            else:
                identity = layers.identity_grid(*shape)
                displacements = [g - identity for g in grids]
                f, w = self.fusions[level](warped, displacements, occs)
                if level == 0:
                    fused_grid = sum(w[..., i : i + 1] * g for i, g in enumerate(grids))
                fused.append(f)
                weights.append(w)
                occlusions.append(sum(w[..., i : i + 1] * o for i, o in enumerate(occs)))

        cap_grid = None
        if self.variant == "full":
            b, height, width = pyramid[0].shape[:3]
            if context is None:
                context = jnp.zeros(self.context_shape(b, height, width), jnp.float32)
            shape = context.shape[1:3]
            grid = layers.identity_grid(*shape)
            if context_motion is not None:
                # Per-pixel mix of the two displacements with the MMFA weights of that level.
                w = weights[self.cap_level]
                for i, name in enumerate(names):
                    grid = grid + w[..., i : i + 1] * layers.resize(context_motion[name], shape)
            cap_grid = jnp.broadcast_to(grid, (b, *shape, 2))
        previous_grid = None
        if self.variant == "full" and context_motion is not None:
            # The same mix at full resolution: where each output pixel was one frame ago
            # (the temporal loss warps the previous output by it).
            b, height, width = pyramid[0].shape[:3]
            previous_grid = layers.identity_grid(height, width)
            for i, name in enumerate(names):
                previous_grid = previous_grid + weights[0][..., i : i + 1] * layers.resize(
                    context_motion[name], (height, width)
                )
        warped_source = warp_source(source, fused_grid, self.source_padding)
        image, blend, new_context = self.decoder(fused, context, cap_grid, warped_source)
        out = {
            "image": image,
            "occlusions": occlusions,
            "fusion_weights": weights,
            "fused_grid": fused_grid,
            "warped_source": warped_source,
            "blend": blend,
        }
        if previous_grid is not None:
            out["previous_grid"] = previous_grid
        if self.variant == "full":
            out["context"] = new_context
        return out


class Decoder(nn.Module):
    """Fused pyramid -> image: bottleneck ResBlocks, up blocks with skips, CAP at one level,
    and (with `composite`) the blend with the warped source `[B,H,W,3]`."""

    block_expansion: int
    max_features: int
    num_down_blocks: int
    num_bottleneck_blocks: int
    cap_features: int  # 0: no CAP
    cap_level: int
    composite: bool = True
    blend_bias: float = 8.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        fused: Sequence[Array],
        context: Array | None,
        cap_grid: Array | None,
        warped_source: Array,
    ) -> tuple[Array, Array, Array | None]:
        new_context = None
        y = fused[-1]
        for _ in range(self.num_bottleneck_blocks):
            y = layers.ResBlock(self.dtype)(y)
        for level in reversed(range(self.num_down_blocks + 1)):
            if level < self.num_down_blocks:
                c = level_features(self.block_expansion, self.max_features, level)
                y = layers.UpBlock(c, self.dtype)(y)
                y = nn.Conv(c, (3, 3), dtype=self.dtype)(jnp.concatenate([y, fused[level]], -1))
                y = nn.relu(layers.Norm(self.dtype)(y))
            if self.cap_features and level == self.cap_level:
                previous = layers.warp(context.astype(y.dtype), cap_grid)
                y, new_context = ContextPropagation(self.cap_features, self.dtype)(y, previous)
                new_context = new_context.astype(jnp.float32)
        decoded = nn.Conv(3, (7, 7), dtype=self.dtype, conv_general_dilated=_conv)(y)
        decoded = nn.sigmoid(decoded.astype(jnp.float32))
        if not self.composite:
            return decoded, jnp.zeros_like(decoded[..., :1]), new_context
        # The blend head sees the decoder features and the warped source itself.
        blend_logit = nn.Conv(
            1, (3, 3), dtype=jnp.float32, conv_general_dilated=_conv, name="blend",
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.constant(self.blend_bias),
        )(jnp.concatenate([y.astype(jnp.float32), warped_source.astype(jnp.float32)], -1))
        blend = nn.sigmoid(blend_logit)
        image = blend * warped_source.astype(jnp.float32) + (1.0 - blend) * decoded
        return image, blend, new_context
