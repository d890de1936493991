"""Pose geometry, E's explicit-pose keypoints, first-order motion, CAP's warp direction, the
temporal loss and the bf16 warp gradient: exact properties, on small real inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data
from skimage.transform import resize as sk_resize

from pechead_jax import face_model, losses
from pechead_jax.models import geometry, layers
from pechead_jax.models import motion as motion_lib
from pechead_jax.models.keypoints import PoseKeypointEstimator
from pechead_jax.models.pechead import context_displacement


def pose(yaw=0.0, pitch=0.0, roll=0.0, log_scale=0.0, tx=0.0, ty=0.0):
    return jnp.array([[yaw, pitch, roll, log_scale, tx, ty]], jnp.float32)


def test_rotation_matrix_is_the_face_models():
    """One rotation function: the face model's landmarks and the model's keypoints agree."""
    r = geometry.rotation_matrix(0.3, -0.2, 0.1)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
    assert face_model.rotation_matrix is geometry.rotation_matrix
    # yaw > 0 turns the face towards the image's left: the nose tip (towards the camera,
    # z < 0 in the camera frame) moves to x < 0.
    nose = jnp.array([0.0, 0.0, -1.0])
    assert float((geometry.rotation_matrix(0.4, 0.0, 0.0) @ nose)[0]) < -0.3


def test_repose_is_the_rigid_head_motion():
    points = jnp.array([[[0.1, -0.2, 0.05], [-0.3, 0.4, -0.1], [0.0, 0.0, 0.0]]])
    src = pose(0.1, -0.05, 0.02, np.log(0.9), 0.05, -0.02)
    # Same pose: the identity.
    np.testing.assert_allclose(geometry.repose(points, src, src), points, atol=1e-6)
    # A yaw edit of 20 degrees about a frontal source at the origin rotates by exactly that.
    angle = np.radians(20.0)
    moved = geometry.repose(points, pose(), pose(yaw=angle))
    expected = np.einsum("ij,bnj->bni", np.asarray(geometry.rotation_matrix(angle, 0.0, 0.0)),
                         points)
    np.testing.assert_allclose(moved, expected, atol=1e-6)
    # Scale and translation: the head centre t maps to t'.
    dst = pose(0.0, 0.0, 0.0, np.log(1.2), -0.1, 0.1)
    centre = jnp.array([[[0.05, -0.02, 0.0]]])
    np.testing.assert_allclose(geometry.repose(centre, src, dst)[0, 0, :2], (-0.1, 0.1),
                               atol=1e-6)
    # The 2D backward affine agrees with repose (driving -> source) on driving points at
    # the head centre's depth.
    affine = geometry.backward_affine(src, dst)[0]
    drv = points.at[..., 2].set(0.0)
    back = drv[0, :, :2] @ affine[:, :2].T + affine[:, 2]
    np.testing.assert_allclose(back, geometry.repose(drv, dst, src)[0, :, :2], atol=1e-5)


@pytest.fixture(scope="module")
def pose_e():
    e = PoseKeypointEstimator(
        num_keypoints=5, scale=0.5, block_expansion=8, max_features=32, num_blocks=3,
        condition_features=16, temperature=0.1,
    )
    image = jnp.asarray(sk_resize(data.astronaut(), (64, 64), anti_aliasing=True)[None], "f4")
    cond = jnp.zeros((1, 58)).at[0, 6:].set(0.2)
    params = e.init(jax.random.key(0), image, cond, cond)
    # A trained E has nonzero depth and expression heads: give them some.
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.05 * jax.random.normal(jax.random.key(len(str(p))), x.shape)
        if ("depth" in str(p) or "expression_out" in str(p)) else x,
        params,
    )
    return e, params, image, cond


def test_pose_edit_rotates_keypoints_exactly(pose_e):
    e, params, image, cond = pose_e
    points3d = e.apply(params, image, method=e.detect3d)
    assert float(jnp.std(points3d[..., 2])) > 0  # the depth head is in play
    for angles in ((np.radians(25.0), 0.0, 0.0), (0.0, np.radians(-15.0), np.radians(10.0))):
        edited = cond.at[0, :3].set(jnp.asarray(angles))
        source_kp, driving_kp = e.apply(params, image, cond, edited)
        expected = geometry.repose(points3d, cond[:, :6], edited[:, :6])[..., :2]
        np.testing.assert_allclose(source_kp, points3d[..., :2], atol=1e-6)
        np.testing.assert_allclose(driving_kp, expected, atol=1e-5)
        # The rotation is rigid: 3D distances between points are kept (checked in 2D via
        # the equality above; here: the points really moved).
        assert float(jnp.abs(driving_kp - source_kp).max()) > 1e-3


def test_expression_deformation(pose_e):
    e, params, image, cond = pose_e
    # The source's own expression: zero deformation (driving = source points exactly).
    source_kp, same = e.apply(params, image, cond, cond)
    np.testing.assert_allclose(same, source_kp, atol=1e-6)
    # Another expression moves the points; clips ([B,T,C]) give one set per frame.
    other = cond.at[0, 6:].set(0.8)
    _, moved = e.apply(params, image, cond, other)
    assert float(jnp.abs(moved - source_kp).max()) > 1e-4
    _, clip = e.apply(params, image, cond, jnp.stack([cond, other], axis=1))
    assert clip.shape == (1, 2, 5, 2)
    np.testing.assert_allclose(clip[:, 0], same, atol=1e-6)
    np.testing.assert_allclose(clip[:, 1], moved, atol=1e-6)


def test_first_order_motion_recovers_a_known_affine():
    """A point pair with its local affine: the sparse motion is that affine map everywhere."""
    a = jnp.array([[0.9, -0.2], [0.15, 1.1]])
    src, drv = jnp.array([[[0.2, -0.1]]]), jnp.array([[[-0.1, 0.25]]])
    grids = motion_lib.sparse_motions(src, drv, 9, 7, a[None, None])
    z = layers.identity_grid(9, 7)
    expected = src[0, 0] + (z - drv[0, 0]) @ a.T
    np.testing.assert_allclose(grids[0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(grids[0, 1], z)  # the background: the identity
    # Warping an image by it moves content by the affine: the source point's pixel value
    # shows at the driving point.
    image = jnp.asarray(sk_resize(data.camera(), (64, 64))[None, ..., None], jnp.float32)
    g = motion_lib.sparse_motions(src, drv, 64, 64, a[None, None])[:, 0]
    warped = layers.warp(image, g)
    at = layers.warp(image, src[:, None])[0, 0, 0]
    out = layers.warp(warped, drv[:, None])[0, 0, 0]
    np.testing.assert_allclose(out, at, atol=2e-2)


def test_cap_warp_direction():
    """A blob moves between two frames: the previous frame warped by CAP's grid shows it
    where the current frame has it."""
    h = w = 32
    z = layers.identity_grid(h, w)

    def blob(cx, cy):
        return jnp.exp(-((z[..., 0] - cx) ** 2 + (z[..., 1] - cy) ** 2) / 0.1)[None, ..., None]

    previous_point, current_point = jnp.array([-0.3, 0.1]), jnp.array([0.2, -0.15])
    masks = jnp.zeros((1, h, w, 2)).at[..., 0].set(1.0)  # all pixels follow point 0
    displacement = context_displacement(
        masks, previous_point[None, None], current_point[None, None]
    )
    grid = z[None] + displacement
    warped_previous = layers.warp(blob(*previous_point), grid)
    peak = np.unravel_index(int(jnp.argmax(warped_previous)), (h, w))
    expected = np.unravel_index(int(jnp.argmax(blob(*current_point))), (h, w))
    assert peak == expected
    np.testing.assert_allclose(warped_previous, blob(*current_point), atol=2e-2)


def test_temporal_loss_counts_flicker_not_motion():
    rng = np.random.default_rng(0)
    real = jnp.asarray(rng.uniform(size=(1, 3, 16, 16, 3)), jnp.float32)
    grid = jnp.broadcast_to(layers.identity_grid(16, 16), (1, 3, 16, 16, 2))
    # The real clip itself, and a brightness change the real clip makes too: no cost.
    assert float(losses.temporal_loss(real, real, grid)) == 0.0
    # Flicker: a frame brighter than the real one.
    flicker = real.at[:, 1].add(0.1)
    assert float(losses.temporal_loss(flicker, real, grid)) == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 frames"):
        losses.temporal_loss(real[:, :1], real[:, :1], grid[:, :1])


def test_bf16_warp_backward_is_within_half_a_percent():
    """The warp's backward accumulates in float32: on a smooth map under a contracting flow
    the bf16 flow gradient is within 0.5% of float32's."""
    h = w = 48
    z = layers.identity_grid(h, w)
    features = jnp.stack(
        [jnp.sin(3 * z[..., 0] + k) * jnp.cos(2 * z[..., 1] - k) for k in range(16)], -1
    )[None]
    # The same values in both dtypes (bf16-representable), so what differs is the backward's
    # arithmetic, not the rounding of the input.
    features = features.astype(jnp.bfloat16).astype(jnp.float32)
    grid = (0.6 * z + 0.05)[None]  # contracting: many outputs share input pixels
    weights = jnp.cos(jnp.arange(16.0))

    def loss(grid, feats):
        return jnp.sum(layers.warp(feats, grid).astype(jnp.float32) * weights)

    g32 = jax.grad(loss)(grid, features)
    g16 = jax.grad(loss)(grid, features.astype(jnp.bfloat16))
    rel = float(jnp.linalg.norm(g16 - g32) / jnp.linalg.norm(g32))
    assert rel < 5e-3, rel
    d32 = jax.grad(loss, argnums=1)(grid, features)
    d16 = jax.grad(loss, argnums=1)(grid, features.astype(jnp.bfloat16)).astype(jnp.float32)
    assert float(jnp.linalg.norm(d16 - d32) / jnp.linalg.norm(d32)) < 5e-3
