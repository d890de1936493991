"""PECHead's losses as pure functions of arrays (no module state, no training or data code).

Lp `pixel_loss`, Lv `perceptual_loss`, Lk `keypoint_spread_loss`, Le `equivariance_loss`
(with the random thin-plate-spline warp `sample_tps` / `tps_grid` / `tps_transform_points`),
Lw `warp_loss`, the temporal consistency `temporal_loss` (stage 2), and the GAN terms
`hinge_g_loss`, `hinge_d_loss`, `feature_matching_loss`.
Every function returns a float32 scalar. Reductions, weights and reasons: docs/losses.md.
Images are `[N,H,W,3]` in [0, 1]; points are (x, y) in [-1, 1] as everywhere in the project.
"""

from collections.abc import Callable, Sequence

import flax
import jax
import jax.numpy as jnp

from pechead_jax.models import layers

Array = jax.Array


def _check_same_shape(name: str, a: Array, b: Array) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: inputs must have the same shape, got {a.shape} and {b.shape}")


def _l1(a: Array, b: Array) -> Array:
    return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


# ----------------------------------------------------------------------------- images


def pixel_loss(generated: Array, target: Array) -> Array:
    """Lp: mean absolute error between `generated` and `target` `[N,H,W,3]`."""
    _check_same_shape("pixel_loss", generated, target)
    return _l1(generated, target)


def perceptual_loss(
    features_fn: Callable[[Array], Sequence[Array]],
    generated: Array,
    target: Array,
    scales: Sequence[float],
    layer_weights: Sequence[float],
) -> Array:
    """Lv: sum over pyramid scales and feature layers of `w_l * mean|f_l(gen) - f_l(target)|`.

    `features_fn(images [M,h,w,3]) -> list of feature maps` (the perceptual network, see
    `models/perceptual.py`). The target's features are constants (`stop_gradient`), so the
    target goes through the network in its own call, outside the differentiated path: run
    as one batch with the generated frames, the backward pass would also propagate (zero)
    cotangents through the target half, about a third more VGG work per step.
    Pyramid: `layers.image_pyramid`.
    """
    _check_same_shape("perceptual_loss", generated, target)
    total = jnp.zeros((), jnp.float32)
    gen_pyramid = layers.image_pyramid(generated, scales)
    target_pyramid = layers.image_pyramid(
        jax.lax.stop_gradient(target.astype(generated.dtype)), scales
    )
    for gen, tgt in zip(gen_pyramid, target_pyramid):
        gen_features = features_fn(gen)
        target_features = jax.lax.stop_gradient(features_fn(tgt))
        if len(gen_features) != len(layer_weights):
            raise ValueError(
                f"perceptual_loss: {len(layer_weights)} layer weights for {len(gen_features)} "
                "feature maps from the perceptual network"
            )
        for weight, f, t in zip(layer_weights, gen_features, target_features):
            if weight:
                total = total + weight * _l1(f, t)
    return total


def warp_loss(warped: Array, target: Array, scales: Sequence[float]) -> Array:
    """Lw: mean over pyramid scales of the L1 between `warped` and `target` `[N,H,W,3]`.

    `warped` is the source sampled by one flow (`PECHead` output `warped[name]`).
    """
    _check_same_shape("warp_loss", warped, target)
    if not scales:
        raise ValueError("warp_loss: scales is empty")
    pairs = zip(layers.image_pyramid(warped, scales), layers.image_pyramid(target, scales))
    return sum(_l1(w, t) for w, t in pairs) / len(scales)


def temporal_loss(generated: Array, target: Array, previous_grid: Array) -> Array:
    """Temporal consistency over clips `generated`, `target` `[B,T,H,W,3]`.

    With `previous_grid [B,T,H,W,2]` the grid from frame t to frame t-1 (CAP's inter-frame
    flow, `PECHead.animate`), each frame's change from its warped predecessor must match
    the real clip's change under the same warp:
    `mean |(g_t - W(g_{t-1})) - (x_t - W(x_{t-1}))|` over t >= 1. Flicker (a change the real
    clip does not make) costs; real motion and lighting changes do not. The grid is a
    constant here (the flow is trained by the other terms).
    """
    _check_same_shape("temporal_loss", generated, target)
    b, t, h, w, c = generated.shape
    if t < 2:
        raise ValueError(f"temporal_loss: clips need at least 2 frames, got T={t}")
    if previous_grid.shape != (b, t, h, w, 2):
        raise ValueError(
            f"temporal_loss: previous_grid must be {(b, t, h, w, 2)}, got {previous_grid.shape}"
        )
    grid = jax.lax.stop_gradient(previous_grid[:, 1:].reshape(b * (t - 1), h, w, 2))

    def change(x):
        x = x.astype(jnp.float32)
        prev = layers.warp(x[:, :-1].reshape(b * (t - 1), h, w, c), grid)
        return x[:, 1:].reshape(b * (t - 1), h, w, c) - prev

    return _l1(change(generated), change(target))


# ----------------------------------------------------------------------------- keypoints


def keypoint_spread_loss(keypoints: Array, min_distance: float) -> Array:
    """Lk: `mean_b sum_{i != j} max(0, min_distance - |x_i - x_j|^2)` for `keypoints [B,K,2]`.

    Ordered pairs (each unordered pair counts twice), the diagonal excluded, so a spread-out
    set costs exactly zero; `min_distance` is a squared distance in normalised coordinates.
    """
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoint_spread_loss: keypoints must be [B,K,2], got {keypoints.shape}")
    kp = keypoints.astype(jnp.float32)
    diff = kp[:, :, None, :] - kp[:, None, :, :]
    squared = jnp.sum(diff * diff, axis=-1)  # [B, K, K]
    off_diagonal = 1.0 - jnp.eye(kp.shape[1], dtype=jnp.float32)
    penalty = jnp.maximum(0.0, min_distance - squared) * off_diagonal
    return jnp.mean(jnp.sum(penalty, axis=(1, 2)))


@flax.struct.dataclass
class TPS:
    """A random thin-plate-spline map T per batch element (a pytree of arrays).

    `T(p) = A p + t + sum_k w_k U(|p - c_k|)`, `U(r) = r^2 log r`, with `affine [B,2,3]`
    = [A | t], `control_points [P*P,2]` (a regular grid over [-1, 1]^2) and `weights
    [B,P*P,2]` (one 2-vector per control point).
    """

    affine: Array
    control_points: Array
    weights: Array


def sample_tps(
    rng: Array, batch: int, sigma_affine: float, sigma_tps: float, points: int
) -> TPS:
    """A TPS per batch element: affine `I + N(0, sigma_affine^2)`, weights `N(0, sigma_tps^2)`
    on a `points x points` control grid. Zero sigmas give the identity map exactly."""
    if points < 0:
        raise ValueError(f"sample_tps: points must be >= 0, got {points}")
    affine_key, weights_key = jax.random.split(rng)
    identity = jnp.eye(2, 3, dtype=jnp.float32)
    affine = identity + sigma_affine * jax.random.normal(affine_key, (batch, 2, 3), jnp.float32)
    control_points = layers.identity_grid(points, points).reshape(points * points, 2)
    weights = sigma_tps * jax.random.normal(weights_key, (batch, points * points, 2), jnp.float32)
    return TPS(affine=affine, control_points=control_points, weights=weights)


def _radial_basis(squared: Array) -> Array:
    """`U(r) = r^2 log r = 0.5 r^2 log r^2`, 0 at r = 0 with a finite (zero) gradient there."""
    positive = squared > 0
    safe = jnp.where(positive, squared, 1.0)
    return jnp.where(positive, 0.5 * safe * jnp.log(safe), 0.0)


def tps_transform_points(tps: TPS, points: Array) -> Array:
    """`T(points)`: `points [B,N,2]` -> `[B,N,2]`, each batch element through its own map."""
    if points.ndim != 3 or points.shape[-1] != 2 or points.shape[0] != tps.affine.shape[0]:
        raise ValueError(
            f"tps_transform_points: points must be [B,N,2] with B={tps.affine.shape[0]}, "
            f"got {points.shape}"
        )
    p = points.astype(jnp.float32)
    out = jnp.einsum("bij,bnj->bni", tps.affine[:, :, :2], p) + tps.affine[:, None, :, 2]
    if tps.control_points.shape[0]:
        diff = p[:, :, None, :] - tps.control_points[None, None, :, :]  # [B, N, P*P, 2]
        basis = _radial_basis(jnp.sum(diff * diff, axis=-1))  # [B, N, P*P]
        out = out + jnp.einsum("bnk,bki->bni", basis, tps.weights)
    return out


def tps_grid(tps: TPS, h: int, w: int) -> Array:
    """The sampling grid `[B,h,w,2]` of `T` over the identity grid, for `layers.warp`.

    `warp(image, tps_grid(tps, H, W))` at pixel p shows `image` at `T(p)`.
    """
    b = tps.affine.shape[0]
    grid = jnp.broadcast_to(layers.identity_grid(h, w).reshape(1, h * w, 2), (b, h * w, 2))
    return tps_transform_points(tps, grid).reshape(b, h, w, 2)


def equivariance_loss(kp_original: Array, kp_on_warped: Array, tps: TPS) -> Array:
    """Le: L1 between E's points on the image `[B,K,2]` and `T(E's points on the warped image)`.

    The warped image at p shows the original at `T(p)`, so a point that E finds at q on the
    warped image should be where E finds it on the original: at `T(q)`.
    """
    _check_same_shape("equivariance_loss", kp_original, kp_on_warped)
    return _l1(kp_original, tps_transform_points(tps, kp_on_warped))


# ----------------------------------------------------------------------------- GAN


def _check_scales(name: str, *lists: Sequence) -> None:
    if not lists[0] or any(len(x) != len(lists[0]) for x in lists):
        raise ValueError(f"{name}: expected equally long, non-empty lists over scales, got "
                         f"{[len(x) for x in lists]}")


def hinge_g_loss(fake_logits: Sequence[Array]) -> Array:
    """LG: mean over discriminator scales of `-mean(D(fake))`."""
    _check_scales("hinge_g_loss", fake_logits)
    return sum(-jnp.mean(x.astype(jnp.float32)) for x in fake_logits) / len(fake_logits)


def hinge_d_loss(real_logits: Sequence[Array], fake_logits: Sequence[Array]) -> Array:
    """LD: mean over scales of `mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))`."""
    _check_scales("hinge_d_loss", real_logits, fake_logits)
    total = sum(
        jnp.mean(jax.nn.relu(1.0 - r.astype(jnp.float32)))
        + jnp.mean(jax.nn.relu(1.0 + f.astype(jnp.float32)))
        for r, f in zip(real_logits, fake_logits)
    )
    return total / len(real_logits)


def feature_matching_loss(
    real_features: Sequence[Sequence[Array]], fake_features: Sequence[Sequence[Array]]
) -> Array:
    """L1 between D's features on real and fake, averaged over layers, then over scales.

    `real_features[s][l]`: scale s, layer l (the discriminator's per-scale feature lists).
    The caller stops the gradient through the real features.
    """
    _check_scales("feature_matching_loss", real_features, fake_features)
    total = jnp.zeros((), jnp.float32)
    for real, fake in zip(real_features, fake_features):
        _check_scales("feature_matching_loss (layers)", real, fake)
        total = total + sum(_l1(r, f) for r, f in zip(real, fake)) / len(real)
    return total / len(real_features)
