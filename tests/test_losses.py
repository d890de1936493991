"""Losses: the TPS sampler and grid, and every loss on hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pechead_jax import losses
from pechead_jax.models import layers


def _translation(tx: float, ty: float, batch: int = 1) -> losses.TPS:
    affine = np.tile(np.array([[1.0, 0.0, tx], [0.0, 1.0, ty]], np.float32), (batch, 1, 1))
    return losses.TPS(
        affine=jnp.asarray(affine),
        control_points=jnp.zeros((0, 2), jnp.float32),
        weights=jnp.zeros((batch, 0, 2), jnp.float32),
    )


# ----------------------------------------------------------------------------- TPS


def test_tps_with_zero_sigma_is_the_identity():
    tps = losses.sample_tps(jax.random.key(0), 2, 0.0, 0.0, 5)
    assert tps.affine.shape == (2, 2, 3) and tps.weights.shape == (2, 25, 2)
    grid = losses.tps_grid(tps, 12, 16)
    np.testing.assert_array_equal(grid, jnp.broadcast_to(layers.identity_grid(12, 16), grid.shape))
    points = jax.random.uniform(jax.random.key(1), (2, 7, 2), minval=-1.2, maxval=1.2)
    np.testing.assert_allclose(losses.tps_transform_points(tps, points), points, atol=1e-7)
    image = jax.random.uniform(jax.random.key(2), (2, 12, 16, 3))
    np.testing.assert_allclose(layers.warp(image, grid), image, atol=1e-5)


def test_tps_radial_basis_by_hand_and_finite_gradient_on_control_points():
    # One control point at the origin with weight (0.5, -0.25): T(p) = p + w |p|^2 log|p|.
    tps = losses.TPS(
        affine=jnp.asarray(np.eye(2, 3, dtype=np.float32)[None]),
        control_points=jnp.zeros((1, 2), jnp.float32),
        weights=jnp.asarray([[[0.5, -0.25]]], jnp.float32),
    )
    points = jnp.asarray([[[2.0, 0.0], [1.0, 0.0], [0.0, 0.0]]])
    u = 4.0 * np.log(2.0)
    want = [[2.0 + 0.5 * u, -0.25 * u], [1.0, 0.0], [0.0, 0.0]]
    np.testing.assert_allclose(losses.tps_transform_points(tps, points)[0], want, rtol=1e-6)
    grad = jax.grad(lambda p: jnp.sum(losses.tps_transform_points(tps, p)))(points)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[0, 2], [1.0, 1.0])  # U'(0) = 0: only the affine part


def test_tps_grid_and_points_agree_and_warp_shows_the_source_at_T():
    tps = losses.sample_tps(jax.random.key(3), 2, 0.05, 0.005, 5)
    h, w = 48, 40
    grid = losses.tps_grid(tps, h, w)
    ident = jnp.broadcast_to(layers.identity_grid(h, w).reshape(1, h * w, 2), (2, h * w, 2))
    np.testing.assert_allclose(
        grid.reshape(2, h * w, 2), losses.tps_transform_points(tps, ident), atol=1e-6
    )
    assert float(jnp.max(jnp.abs(grid - layers.identity_grid(h, w)))) > 1e-3  # not identity

    # A smooth image f sampled on the pixel centres; the warped image at pixel p is f(T(p)).
    def f(xy):
        x, y = xy[..., 0], xy[..., 1]
        return jnp.stack([jnp.sin(2 * x) + 0.5 * y, jnp.cos(1.5 * y) * x, x * y], axis=-1)

    image = f(jnp.broadcast_to(layers.identity_grid(h, w), (2, h, w, 2)))
    warped = layers.warp(image, grid)
    inside = jnp.all(jnp.abs(grid) <= 1.0, axis=-1)
    error = jnp.where(inside[..., None], jnp.abs(warped - f(grid)), 0.0)
    assert float(jnp.max(error)) < 3e-3  # bilinear interpolation error only


def test_tps_sampling_is_deterministic_per_key():
    a = losses.sample_tps(jax.random.key(4), 3, 0.05, 0.005, 3)
    b = losses.sample_tps(jax.random.key(4), 3, 0.05, 0.005, 3)
    c = losses.sample_tps(jax.random.key(5), 3, 0.05, 0.005, 3)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert not np.allclose(a.affine, c.affine)


# ----------------------------------------------------------------------------- Lk, Le


def test_keypoint_spread_by_hand():
    # Batch 0: two points 0.2 apart (squared 0.04 < 0.1): 2 ordered pairs x 0.06 = 0.12.
    # Batch 1: two points far apart: 0. Mean over the batch: 0.06.
    kp = jnp.asarray([[[0.0, 0.0], [0.2, 0.0]], [[-0.5, -0.5], [0.5, 0.5]]])
    np.testing.assert_allclose(losses.keypoint_spread_loss(kp, 0.1), 0.06, rtol=1e-6)
    # Three points on a line, 0.1 apart: pairs at squared 0.01, 0.01, 0.04.
    kp3 = jnp.asarray([[[0.0, 0.0], [0.1, 0.0], [0.2, 0.0]]])
    np.testing.assert_allclose(
        losses.keypoint_spread_loss(kp3, 0.1), 2 * (0.09 + 0.09 + 0.06), rtol=1e-5
    )
    # The gradient pushes the close points apart, and coincident points stay finite.
    grad = jax.grad(losses.keypoint_spread_loss)(kp, 0.1)
    assert grad[0, 0, 0] > 0 and grad[0, 1, 0] < 0
    assert np.all(np.isfinite(jax.grad(losses.keypoint_spread_loss)(jnp.zeros((1, 3, 2)), 0.1)))


def test_equivariance_by_hand():
    tps = _translation(0.1, 0.3)
    kp_original = jnp.asarray([[[0.1, 0.2], [-0.4, 0.5]]])
    # E's points on the warped image, mapped by T(q) = q + (0.1, 0.3), land on the originals.
    exact = kp_original - jnp.asarray([0.1, 0.3])
    np.testing.assert_allclose(losses.equivariance_loss(kp_original, exact, tps), 0.0, atol=1e-7)
    # First point off by (0, 0.1), second by (0.2, 0): L1 mean over 4 coordinates = 0.075.
    off = exact + jnp.asarray([[[0.0, 0.1], [0.2, 0.0]]])
    np.testing.assert_allclose(losses.equivariance_loss(kp_original, off, tps), 0.075, rtol=1e-5)


def test_equivariance_of_an_exact_detector_under_a_tps_warp_is_small():
    # An exact "detector": a bright Gaussian blob's centre of mass. Warping moves the blob to
    # q with T(q) = p, so the loss of the detections must be near zero (up to resampling).
    h = w = 64
    p = jnp.asarray([[[0.15, -0.1]]])
    image = layers.point_heatmaps(p, h, w, 0.004)  # [1,h,w,1]
    tps = losses.sample_tps(jax.random.key(6), 1, 0.05, 0.005, 5)
    warped = layers.warp(image, losses.tps_grid(tps, h, w))

    def detect(img):
        weights = img[..., 0].reshape(1, h * w, 1)
        grid = layers.identity_grid(h, w).reshape(1, h * w, 2)
        return jnp.sum(weights * grid, axis=1, keepdims=True) / jnp.sum(weights)

    assert float(losses.equivariance_loss(detect(image), detect(warped), tps)) < 2e-3
    naive = float(losses.pixel_loss(detect(image), detect(warped)))
    assert naive > 0.01  # the warp did move the blob


# ----------------------------------------------------------------------------- images


def test_pixel_and_warp_loss_by_hand():
    a = jnp.full((2, 16, 16, 3), 0.2)
    b = jnp.full((2, 16, 16, 3), 0.5)
    np.testing.assert_allclose(losses.pixel_loss(a, b), 0.3, rtol=1e-5)
    np.testing.assert_allclose(losses.warp_loss(a, b, (1.0, 0.5, 0.25)), 0.3, rtol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        losses.pixel_loss(a, b[:1])


def test_warp_loss_is_zero_for_a_perfect_warp():
    h, w = 16, 20
    image = jax.random.uniform(jax.random.key(7), (1, h, w, 3))
    # The target is the image moved 2 pixels to the left (zeros enter on the right, as the
    # warp's zero padding does); the matching flow samples 2 pixels to the right.
    target = jnp.concatenate([image[:, :, 2:], jnp.zeros((1, h, 2, 3))], axis=2)
    grid = layers.identity_grid(h, w) + jnp.asarray([2 * 2.0 / (w - 1), 0.0])
    warped = layers.warp(image, grid[None])
    assert float(losses.warp_loss(warped, target, (1.0, 0.5))) < 1e-5
    assert float(losses.warp_loss(image, target, (1.0, 0.5))) > 0.1


def test_perceptual_loss_sums_weighted_layers_over_scales():
    def features(x):
        return [x, 2.0 * x, x[..., :1]]

    gen = jnp.full((2, 16, 16, 3), 0.2)
    target = jnp.full((2, 16, 16, 3), 0.5)
    # Per scale: 1 * 0.3 + 0.5 * 0.6 + 0 = 0.6; two scales: 1.2.
    value = losses.perceptual_loss(features, gen, target, (1.0, 0.5), (1.0, 0.5, 0.0))
    np.testing.assert_allclose(value, 1.2, rtol=1e-6)
    d_gen, d_target = jax.grad(
        lambda g, t: losses.perceptual_loss(features, g, t, (1.0, 0.5), (1.0, 0.5, 1.0)),
        argnums=(0, 1),
    )(gen, target)
    assert float(jnp.sum(jnp.abs(d_gen))) > 0 and float(jnp.sum(jnp.abs(d_target))) == 0
    with pytest.raises(ValueError, match="layer weights"):
        losses.perceptual_loss(features, gen, target, (1.0,), (1.0, 1.0))


# ----------------------------------------------------------------------------- GAN


def test_hinge_losses_by_hand():
    real = [jnp.asarray([[[[2.0]]], [[[0.5]]]]), jnp.ones((2, 1, 1, 1))]
    fake = [jnp.asarray([[[[-2.0]]], [[[0.0]]]]), -jnp.ones((2, 1, 1, 1))]
    # Scale 0: real mean(relu(1 - [2, 0.5])) = 0.25, fake mean(relu(1 + [-2, 0])) = 0.5.
    # Scale 1: 0 + 0. Mean over scales: 0.375.
    np.testing.assert_allclose(losses.hinge_d_loss(real, fake), 0.375, rtol=1e-6)
    # G: -mean(fake) per scale: 1.0 and 1.0.
    np.testing.assert_allclose(losses.hinge_g_loss(fake), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="scales"):
        losses.hinge_d_loss(real, fake[:1])


def test_feature_matching_by_hand():
    real = [[jnp.zeros((1, 4, 4, 2)), jnp.ones((1, 2, 2, 3))], [jnp.zeros((1, 2, 2, 2))]]
    fake = [[jnp.full((1, 4, 4, 2), 0.5), jnp.ones((1, 2, 2, 3))], [jnp.full((1, 2, 2, 2), -1.0)]]
    # Scale 0: mean over layers of (0.5, 0) = 0.25; scale 1: 1.0. Mean over scales: 0.625.
    np.testing.assert_allclose(losses.feature_matching_loss(real, fake), 0.625, rtol=1e-6)
