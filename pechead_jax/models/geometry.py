"""Head-pose geometry shared by the model and the face model: rotations and pose transforms.

Pose `[..., 6]` = (yaw, pitch, roll, log_scale, tx, ty), the face model's convention
(`pechead_jax/face_model.py`): a canonical point C (camera frame of a frontal face) appears
in the crop at `s R C + t`, projected orthographically to (x, y) in [-1, 1], with
`R = rotation_matrix(yaw, pitch, roll)`, `s = exp(log_scale)` and `t = (tx, ty, 0)`.
Everything here is pure jnp and differentiable.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def rotation_matrix(yaw, pitch, roll) -> Array:
    """Rz(roll) @ Ry(yaw) @ Rx(pitch) for angles `[...]` (radians) -> `[..., 3, 3]`.

    Right-handed rotations about the camera axes (x right, y down, z away from the camera).
    """
    yaw, pitch, roll = (jnp.asarray(a, jnp.float32) for a in (yaw, pitch, roll))
    cy, sy = jnp.cos(yaw), jnp.sin(yaw)
    cp, sp = jnp.cos(pitch), jnp.sin(pitch)
    cr, sr = jnp.cos(roll), jnp.sin(roll)
    # The product written out (rows), so it stays cheap and differentiable under jit.
    rows = [
        [cr * cy, cr * sy * sp - sr * cp, cr * sy * cp + sr * sp],
        [sr * cy, sr * sy * sp + cr * cp, sr * sy * cp - cr * sp],
        [-sy, cy * sp, cy * cp],
    ]
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def pose_transform(pose: Array) -> tuple[Array, Array, Array]:
    """`pose [..., 6]` -> (R `[..., 3, 3]`, s `[...]`, t `[..., 3]` with t_z = 0)."""
    pose = pose.astype(jnp.float32)
    rotation = rotation_matrix(pose[..., 0], pose[..., 1], pose[..., 2])
    scale = jnp.exp(pose[..., 3])
    t = jnp.concatenate([pose[..., 4:6], jnp.zeros_like(pose[..., :1])], axis=-1)
    return rotation, scale, t


def repose(points: Array, source_pose: Array, driving_pose: Array) -> Array:
    """Move 3D points `[..., N, 3]` seen under `source_pose [..., 6]` to `driving_pose`.

    `x -> s_d R_d R_s^T (x - t_s) / s_s + t_d`: the rigid head motion between the two poses.
    """
    rs, ss, ts = pose_transform(source_pose)
    rd, sd, td = pose_transform(driving_pose)
    relative = (sd / ss)[..., None, None] * jnp.einsum("...ij,...kj->...ik", rd, rs)
    return jnp.einsum("...ij,...nj->...ni", relative, points - ts[..., None, :]) + td[..., None, :]


def backward_affine(source_pose: Array, driving_pose: Array) -> Array:
    """The head's rigid motion from driving to source as a 2D affine `[..., 2, 3]`.

    A driving-frame point z (at the head centre's depth) came from source point
    `A (z - t_d) + t_s`, with A the (x, y) block of `s_s R_s R_d^T / s_d`: the local
    (first-order) motion of any point on the head. Returns `[A | t_s - A t_d]`.
    """
    rs, ss, ts = pose_transform(source_pose)
    rd, sd, td = pose_transform(driving_pose)
    linear = (ss / sd)[..., None, None] * jnp.einsum("...ij,...kj->...ik", rs, rd)
    a = linear[..., :2, :2]
    offset = ts[..., :2] - jnp.einsum("...ij,...j->...i", a, td[..., :2])
    return jnp.concatenate([a, offset[..., None]], axis=-1)
