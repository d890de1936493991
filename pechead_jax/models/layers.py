"""Shared model pieces: the warp, point heatmaps, resizing, and the conv blocks.

Coordinates. Points and sampling grids are (x, y) in [-1, 1], x to the right, y down.
The corners are pixel centres: (-1, -1) is the centre of the top-left pixel and (1, 1) the
centre of the bottom-right one, so pixel column x_pix = (x + 1) / 2 * (W - 1) and row
y_pix = (y + 1) / 2 * (H - 1). This is PyTorch's `grid_sample(..., align_corners=True)`.
Sampling is bilinear; a neighbour that falls outside the image contributes zero (PyTorch's
`padding_mode='zeros'`), so a sample half a pixel beyond the border gets half the edge value.
"""

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def identity_grid(h: int, w: int, dtype=jnp.float32) -> Array:
    """The grid that `warp` maps to the unchanged image: `[h, w, 2]`, (x, y) in [-1, 1]."""
    xs = jnp.linspace(-1.0, 1.0, w, dtype=dtype) if w > 1 else jnp.zeros((1,), dtype)
    ys = jnp.linspace(-1.0, 1.0, h, dtype=dtype) if h > 1 else jnp.zeros((1,), dtype)
    gx, gy = jnp.meshgrid(xs, ys, indexing="xy")
    return jnp.stack([gx, gy], axis=-1)


def _corners(grid: Array, height: int, width: int):
    """Bilinear corners of `grid [B,h,w,2]` on an HxW image.

    Returns the fractional offsets (fx, fy) `[B, h*w]` (at least float32) and, for the corners
    (x0,y0), (x0+1,y0), (x0,y0+1), (x0+1,y0+1), the flat pixel index (clipped into range)
    and whether the corner lies inside the image, each `[B, h*w]`.
    """
    b, h, w, _ = grid.shape
    grid = grid.astype(jnp.promote_types(grid.dtype, jnp.float32))
    x = (grid[..., 0].reshape(b, h * w) + 1.0) * (0.5 * (width - 1))
    y = (grid[..., 1].reshape(b, h * w) + 1.0) * (0.5 * (height - 1))
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    fx, fy = x - x0, y - y0
    x0 = x0.astype(jnp.int32)
    y0 = y0.astype(jnp.int32)
    corners = []
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            valid = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)
            corners.append((index, valid))
    return fx, fy, corners


def _corner_values(flat: Array, corners) -> list[Array]:
    """The four corner values `[B, h*w, C]` of `flat [B, H*W, C]`, zero outside the image."""
    values = []
    for index, valid in corners:
        # One gather per corner; the [B, h*w, 1] index broadcasts over channels.
        v = jnp.take_along_axis(flat, index[..., None], axis=1, mode="promise_in_bounds")
        values.append(jnp.where(valid[..., None], v, jnp.zeros((), flat.dtype)))
    return values


def _check_warp_inputs(image: Array, grid: Array) -> None:
    if image.ndim != 4:
        raise ValueError(f"warp: image must be [B,H,W,C], got shape {image.shape}")
    if grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != image.shape[0]:
        raise ValueError(
            f"warp: grid must be [B,h,w,2] with B={image.shape[0]}, got shape {grid.shape}"
        )


def _warp_forward(image: Array, grid: Array) -> Array:
    b, height, width, c = image.shape
    _, h, w, _ = grid.shape
    fx, fy, corners = _corners(grid, height, width)
    v00, v10, v01, v11 = _corner_values(image.reshape(b, height * width, c), corners)
    fx = fx.astype(image.dtype)[..., None]
    fy = fy.astype(image.dtype)[..., None]
    top = v00 + fx * (v10 - v00)
    bottom = v01 + fx * (v11 - v01)
    return (top + fy * (bottom - top)).reshape(b, h, w, c)


@jax.custom_vjp
def _warp(image: Array, grid: Array) -> Array:
    return _warp_forward(image, grid)


def _warp_fwd(image: Array, grid: Array):
    # Residuals are the inputs: the backward pass re-gathers the corners, which is cheaper
    # than keeping four [B, h*w, C] arrays alive until then.
    return _warp_forward(image, grid), (image, grid)


def _warp_bwd(residuals, cotangent: Array):
    image, grid = residuals
    b, height, width, c = image.shape
    _, h, w, _ = grid.shape
    fx, fy, corners = _corners(grid, height, width)
    # Accumulate in (at least) float32 whatever the image dtype: a bf16 scatter-add and bf16
    # slopes put about 14% error into the flow gradient of a contracting flow.
    acc = jnp.promote_types(image.dtype, jnp.float32)
    ct = cotangent.reshape(b, h * w, c).astype(acc)

    # d image: one scatter-add of the four weighted cotangents (invalid corners weigh 0).
    weights = ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)
    offsets = (jnp.arange(b, dtype=jnp.int32) * (height * width))[:, None]
    index = jnp.concatenate([i + offsets for i, _ in corners], axis=1).reshape(-1)
    updates = jnp.concatenate(
        [
            ct * jnp.where(v, wt, 0.0).astype(ct.dtype)[..., None]
            for wt, (_, v) in zip(weights, corners)
        ],
        axis=1,
    ).reshape(-1, c)
    d_image = jnp.zeros((b * height * width, c), acc).at[index].add(updates)

    # d grid: the bilinear interpolant's slope along x and y, projected on the cotangent.
    v00, v10, v01, v11 = _corner_values(image.reshape(b, height * width, c).astype(acc), corners)
    fx_c = fx.astype(acc)[..., None]
    fy_c = fy.astype(acc)[..., None]
    slope_x = (v10 - v00) + fy_c * ((v11 - v01) - (v10 - v00))
    slope_y = (v01 - v00) + fx_c * ((v11 - v10) - (v01 - v00))
    dx = jnp.einsum("bpc,bpc->bp", ct, slope_x, preferred_element_type=jnp.float32)
    dy = jnp.einsum("bpc,bpc->bp", ct, slope_y, preferred_element_type=jnp.float32)
    d_grid = jnp.stack([dx * (0.5 * (width - 1)), dy * (0.5 * (height - 1))], axis=-1)
    d_image = d_image.reshape(image.shape).astype(image.dtype)
    return d_image, d_grid.reshape(grid.shape).astype(grid.dtype)


_warp.defvjp(_warp_fwd, _warp_bwd)


def warp(image: Array, grid: Array) -> Array:
    """Bilinear sampling of `image [B,H,W,C]` at `grid [B,h,w,2]` -> `[B,h,w,C]`.

    Semantics in the module docstring (PyTorch `grid_sample`, bilinear, zeros,
    align_corners=True). The image is flattened to `[B, H*W, C]` and each of the four
    corners is one gather of a `[B, h*w, 1]` index broadcast over channels. Differentiable
    in both inputs by a custom VJP (reverse mode only): autodiff of the gathers made XLA's
    CPU backend spend 25 ms on the grid gradient at 64x64x256, against 2 ms here. The
    output has the image's dtype; the coordinates are computed in float32.
    """
    _check_warp_inputs(image, grid)
    return _warp(image, grid)


def point_heatmaps(points: Array, h: int, w: int, variance: float) -> Array:
    """Gaussian bumps `exp(-|p - q|^2 / (2 variance))` at `points [B,N,2]` -> `[B,h,w,N]`.

    `variance` is in normalised coordinates squared; the peak value is 1 at each point.
    """
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"point_heatmaps: points must be [B,N,2], got shape {points.shape}")
    grid = identity_grid(h, w, points.dtype)  # [h, w, 2]
    diff = grid[None, :, :, None, :] - points[:, None, None, :, :]  # [B, h, w, N, 2]
    return jnp.exp(-0.5 * jnp.sum(diff * diff, axis=-1) / variance)


def resize(image: Array, shape: tuple[int, int]) -> Array:
    """Resize `image [B,H,W,C]` to `[B,h,w,C]`, anti-aliased when shrinking (linear kernel)."""
    b, height, width, c = image.shape
    h, w = shape
    if (h, w) == (height, width):
        return image
    return jax.image.resize(image, (b, h, w, c), method="linear", antialias=True)


def image_pyramid(image: Array, scales: Sequence[float]) -> tuple[Array, ...]:
    """`image [B,H,W,C]` resized by each of `scales` (1.0 returns the input unchanged)."""
    height, width = image.shape[1:3]
    return tuple(
        resize(image, (max(1, round(height * s)), max(1, round(width * s)))) for s in scales
    )


def num_groups(channels: int) -> int:
    """GroupNorm groups: up to 32, always dividing `channels` (tiny models get per-channel)."""
    return math.gcd(channels, 32)


class Norm(nn.Module):
    """GroupNorm, optionally followed by FiLM from a condition embedding `cond [B,D]`.

    GroupNorm keeps the model stateless (no batch statistics), so the train state is
    params only and a frame's output does not depend on its batch mates.
    """

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cond: Array | None = None) -> Array:
        c = x.shape[-1]
        x = nn.GroupNorm(num_groups=num_groups(c), dtype=self.dtype)(x)
        if cond is not None:
            # Zero-initialised FiLM starts as the identity, so E first learns from the image.
            film = nn.Dense(2 * c, kernel_init=nn.initializers.zeros, dtype=self.dtype)(cond)
            scale, shift = jnp.split(film[:, None, None, :], 2, axis=-1)
            x = x * (1.0 + scale) + shift
        return x


class ResBlock(nn.Module):
    """Pre-activation residual block: (norm, relu, conv3x3) x 2 plus the input."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cond: Array | None = None) -> Array:
        c = x.shape[-1]
        y = nn.relu(Norm(self.dtype)(x, cond))
        y = nn.Conv(c, (3, 3), dtype=self.dtype)(y)
        y = nn.relu(Norm(self.dtype)(y, cond))
        y = nn.Conv(c, (3, 3), dtype=self.dtype)(y)
        return x + y


class DownBlock(nn.Module):
    """conv3x3 -> norm -> relu -> 2x2 average pool: `[B,H,W,*] -> [B,H/2,W/2,features]`."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cond: Array | None = None) -> Array:
        x = nn.Conv(self.features, (3, 3), dtype=self.dtype)(x)
        x = nn.relu(Norm(self.dtype)(x, cond))
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class UpBlock(nn.Module):
    """2x nearest upsampling -> conv3x3 -> norm -> relu: `[B,H,W,*] -> [B,2H,2W,features]`."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cond: Array | None = None) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        x = nn.Conv(self.features, (3, 3), dtype=self.dtype)(x)
        return nn.relu(Norm(self.dtype)(x, cond))


class Hourglass(nn.Module):
    """U-Net encoder/decoder with skips; returns decoder features at the input resolution.

    Level i of the encoder has `min(max_features, block_expansion * 2**(i+1))` channels. The
    output is the last decoder features concatenated with the input:
    `[B,H,W,C] -> [B,H,W,block_expansion + C]`. H and W must be divisible by 2**num_blocks.
    With `cond [B,D]` every block's normalisation is FiLM-modulated by it.
    """

    block_expansion: int
    max_features: int
    num_blocks: int
    dtype: jnp.dtype = jnp.float32

    def channels(self, i: int) -> int:
        return min(self.max_features, self.block_expansion * 2 ** (i + 1))

    @nn.compact
    def __call__(self, x: Array, cond: Array | None = None) -> Array:
        factor = 2**self.num_blocks
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"Hourglass: spatial size {x.shape[1:3]} must be divisible by {factor} "
                f"(num_blocks={self.num_blocks})"
            )
        skips = [x]
        for i in range(self.num_blocks):
            skips.append(DownBlock(self.channels(i), self.dtype)(skips[-1], cond))
        y = skips.pop()
        for i in reversed(range(self.num_blocks)):
            features = self.block_expansion if i == 0 else self.channels(i - 1)
            y = UpBlock(features, self.dtype)(y, cond)
            y = jnp.concatenate([y, skips.pop().astype(y.dtype)], axis=-1)
        return y


def _conv(x: Array, kernel: Array, padding) -> Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_same(x: Array, kernel: Array, padding) -> Array:
    return _conv(x, kernel, padding)


def _conv_same_fwd(x: Array, kernel: Array, padding):
    return _conv(x, kernel, padding), (x, kernel)


def _conv_same_bwd(padding, residuals, dy: Array):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1:3]
    # d x: XLA's own transposed convolution (fast on CPU).
    _, vjp_x = jax.vjp(lambda x: _conv(x, kernel, padding), x)
    (dx,) = vjp_x(dy)
    # d kernel[i, j] = sum_q x[q] dy[q - (i, j) + pad_lo]: the k*k shifted copies of dy
    # (padded by (pad_hi, pad_lo)) against x as one matmul; XLA's CPU filter gradient is
    # ~25x slower than the forward for large maps with few output channels.
    (lo_h, hi_h), (lo_w, hi_w) = padding
    dy_pad = jnp.pad(dy, ((0, 0), (hi_h, lo_h), (hi_w, lo_w), (0, 0)))
    shifted = jnp.stack(
        [dy_pad[:, a : a + h, b : b + w, :] for a in range(kh) for b in range(kw)], axis=3
    )  # [B, H, W, kh*kw, O]; offset (a, b) is kernel tap (kh-1-a, kw-1-b)
    dk = jnp.einsum("bhwc,bhwko->kco", x, shifted, preferred_element_type=jnp.float32)
    dk = dk.reshape(kh, kw, *dk.shape[1:])[::-1, ::-1].astype(kernel.dtype)
    return dx, dk


_conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers):
        return tuple(map(tuple, dimension_numbers)) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
    dimension_numbers=None, feature_group_count=1, precision=None, **kwargs,
):
    """`lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)`: the same result.

    A plain NHWC stride-1 convolution with at most 16 output channels (the heads) gets its
    kernel gradient as one matmul (`_conv_same_bwd`): 5x faster than XLA's CPU filter
    gradient for a 7x7 conv 64 -> 3 at 256x256, but slower for wide outputs, which keep
    XLA's own gradient. Parameters and forward are those of `nn.Conv`.
    """
    ones = (1,) * (lhs.ndim - 2)
    plain = (
        lhs.ndim == 4
        and tuple(window_strides) == (1, 1)
        and tuple(lhs_dilation or ones) == ones
        and tuple(rhs_dilation or ones) == ones
        and feature_group_count == 1
        and precision is None
        and not kwargs
        and (padding in ("SAME", "VALID") or not isinstance(padding, str))
        and _is_nhwc(dimension_numbers)
        and rhs.shape[-1] <= 16
    )
    if plain:
        if padding == "SAME":  # lax's split for stride 1: the smaller half before
            padding = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in rhs.shape[:2]]
        elif padding == "VALID":
            padding = [(0, 0), (0, 0)]
        padding = tuple(tuple(int(p) for p in pair) for pair in padding)
        # The custom gradient assumes the output is the input's size (total padding k - 1).
        if all(lo + hi == k - 1 for (lo, hi), k in zip(padding, rhs.shape[:2])):
            return _conv_same(lhs, rhs, padding)
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs,
    )
