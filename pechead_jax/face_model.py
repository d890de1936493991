"""The face model R: Procrustes pose, a linear landmark morphable model, and flips.

Coordinates. Landmarks in the crop are (x, y) in [-1, 1] with pixel-centre corners (the
convention of `models/layers.py`): MediaPipe's normalised x in [0, 1] maps to pixel column
`x * W - 0.5` and then to `2 * col / (W - 1) - 1`. 3D points live in the camera frame
x right, y down, z away from the camera, in the same normalised units (crops are square).

Pose `[yaw, pitch, roll, log_scale, tx, ty]`. Landmarks are
`s * R(yaw, pitch, roll) @ R0 @ C + t`, projected orthographically to (x, y), where C is a
point of the canonical face (MediaPipe's canonical mesh frame: cm, y up, z out of the face),
R0 = diag(1, -1, -1) turns that frame into the camera frame of a face looking straight at the
camera, s = exp(log_scale) and t = (tx, ty). `rotation_matrix` is Rz(roll) Ry(yaw) Rx(pitch)
with right-handed rotations about the camera axes, so (as seen in the image):
- yaw > 0: the face turns towards the image's left (the subject's right);
- pitch > 0: the face tilts down (chin towards the chest);
- roll > 0: the face rotates clockwise in the image.
A horizontal image flip maps (yaw, pitch, roll, log_scale, tx, ty) to
(-yaw, pitch, -roll, log_scale, -tx, ty).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import warnings
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from pechead_jax import face_analyser, fileio
from pechead_jax.models.geometry import rotation_matrix

POSE_DIM = 6
POSE_NAMES = ("yaw", "pitch", "roll", "log_scale", "tx", "ty")
R0 = np.diag([1.0, -1.0, -1.0]).astype(np.float32)

# The classic iBUG 68-point layout as mesh vertex indices (jaw 0-16, brows 17-26, nose 27-35,
# eyes 36-47, outer lips 48-59, inner lips 60-67; "right" = the subject's right = image left
# for a frontal face). Derived by us (docs/face_model.md): dlib's 68-point predictor and
# MediaPipe on the same real faces, the mesh vertex nearest each dlib point in the image
# (distance normalised by the inter-ocular distance, averaged over faces), then made exactly
# mirror-symmetric through the canonical mesh's mirror permutation.
IBUG68_INDICES: tuple[int, ...] = (
    127, 234, 177, 215, 172, 136, 149, 148, 152, 377, 378, 365, 397, 435, 401, 454, 356,  # jaw
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # brows
    168, 197, 195, 4, 240, 97, 2, 326, 460,  # nose
    33, 160, 158, 155, 153, 144, 382, 385, 387, 263, 373, 380,  # eyes
    61, 39, 37, 11, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips
)  # fmt: skip
# The iBUG 68 point that each point becomes under a horizontal flip.
IBUG68_MIRROR: tuple[int, ...] = (
    *range(16, -1, -1),  # jaw
    *range(26, 16, -1),  # brows
    27, 28, 29, 30,  # nose bridge
    35, 34, 33, 32, 31,  # lower nose
    45, 44, 43, 42, 47, 46,  # right eye <- left eye
    39, 38, 37, 36, 41, 40,  # left eye <- right eye
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,  # outer lips
    64, 63, 62, 61, 60, 67, 66, 65,  # inner lips
)  # fmt: skip
# MediaPipe's 10 iris points (468-477) under a flip: centres swap, and within each iris the
# points run (image right, up, left, down), so right and left swap too.
_IRIS_MIRROR = (473, 476, 475, 474, 477, 468, 471, 470, 469, 472)


def _blendshape_mirror() -> tuple[int, ...]:
    names = face_analyser.BLENDSHAPE_NAMES
    index = {n: i for i, n in enumerate(names)}
    out = []
    for n in names:
        if n.endswith("Left"):
            out.append(index[n[: -len("Left")] + "Right"])
        elif n.endswith("Right"):
            out.append(index[n[: -len("Right")] + "Left"])
        else:
            out.append(index[n])
    return tuple(out)


BLENDSHAPE_MIRROR = _blendshape_mirror()


# ----------------------------------------------------------------------------- rotations


def euler_angles(rotation: np.ndarray) -> np.ndarray:
    """Inverse of `rotation_matrix`: `[..., 3, 3]` -> `[..., 3]` (yaw, pitch, roll), numpy."""
    r = np.asarray(rotation, np.float64)
    yaw = np.arcsin(np.clip(-r[..., 2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[..., 2, 1], r[..., 2, 2])
    roll = np.arctan2(r[..., 1, 0], r[..., 0, 0])
    return np.stack([yaw, pitch, roll], axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------- Procrustes


def to_crop_coords(landmarks: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """MediaPipe landmarks `[..., P, 3]` ([0,1] of an HxW image) -> camera-frame points in
    [-1, 1] crop units (pixel-centre corners; z scaled like x)."""
    h, w = image_size
    lm = np.asarray(landmarks, np.float64)
    x = 2.0 * (lm[..., 0] * w - 0.5) / (w - 1) - 1.0
    y = 2.0 * (lm[..., 1] * h - 0.5) / (h - 1) - 1.0
    z = 2.0 * lm[..., 2] * w / (w - 1)
    return np.stack([x, y, z], axis=-1)


@dataclasses.dataclass
class PoseFit:
    """Result of `procrustes_pose`: `rotation [...,3,3]` (the head rotation R, without R0),
    `scale [...]` (crop units per cm), `translation [...,3]` (crop units), `pose [...,6]`."""

    rotation: np.ndarray
    scale: np.ndarray
    translation: np.ndarray
    pose: np.ndarray

    def canonical(self, points: np.ndarray) -> np.ndarray:
        """Camera-frame points `[..., P, 3]` -> canonical frame: R0^T R^T (L - t) / s."""
        full = self.rotation @ R0
        centred = np.asarray(points, np.float64) - self.translation[..., None, :]
        return (centred @ full) / self.scale[..., None, None]


def procrustes_pose(
    landmarks: np.ndarray,
    image_size: tuple[int, int],
    mesh: face_analyser.CanonicalMesh,
) -> PoseFit:
    """Weighted similarity fit of the canonical mesh onto `landmarks [..., 478|468, 3]`.

    Minimises sum_i w_i |s R R0 c_i + t - l_i|^2 over the mesh's Procrustes anchors (the rigid
    points), with l_i the landmarks in crop units (`to_crop_coords`), R a proper rotation.
    `image_size` is (H, W) of the image the landmarks were measured on (a square crop).
    """
    lm = np.asarray(landmarks)
    if lm.ndim < 2 or lm.shape[-2] < face_analyser.NUM_MESH_VERTICES or lm.shape[-1] != 3:
        raise ValueError(f"landmarks must be [..., 468 or 478, 3], got {lm.shape}")
    points = to_crop_coords(lm[..., : face_analyser.NUM_MESH_VERTICES, :], image_size)
    w = mesh.weights.astype(np.float64)
    w = w / w.sum()
    src = mesh.vertices.astype(np.float64) @ R0.T  # canonical face in the camera frame
    mu_s = w @ src
    mu_d = np.einsum("i,...ij->...j", w, points)
    xs = src - mu_s
    xd = points - mu_d[..., None, :]
    cov = np.einsum("i,...ij,ik->...jk", w, xd, xs)  # [..., 3 (dst), 3 (src)]
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    sig = sig.copy()
    sig[..., 2] *= d
    u = u.copy()
    u[..., :, 2] *= d[..., None]
    rotation = u @ vt
    var_s = w @ (xs**2).sum(-1)
    scale = sig.sum(-1) / var_s
    translation = mu_d - scale[..., None] * np.einsum("...ij,j->...i", rotation, mu_s)
    angles = euler_angles(rotation)
    pose = np.concatenate([angles, np.log(scale)[..., None], translation[..., :2]], axis=-1).astype(
        np.float32
    )
    return PoseFit(rotation, scale, translation, pose)


# ----------------------------------------------------------------------------- flips


@functools.cache
def mesh_mirror_permutation(model_path: str | None = None) -> np.ndarray:
    """`[478]`: the landmark each MediaPipe landmark becomes under a horizontal flip, from the
    canonical mesh geometry (the vertex nearest the mirror image (-x, y, z) of each vertex)."""
    v = face_analyser.canonical_mesh(model_path).vertices
    d = ((v[:, None, :] - (v * np.array([-1.0, 1.0, 1.0]))[None]) ** 2).sum(-1)
    perm = d.argmin(1)
    if not np.array_equal(perm[perm], np.arange(len(v))):
        raise ValueError("the canonical mesh is not mirror symmetric")
    return np.concatenate([perm, np.asarray(_IRIS_MIRROR)]).astype(np.int32)


def flip_pose(pose):
    """Pose `[..., 6]` of a horizontally flipped image (see the module docstring)."""
    return pose * np.array([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0], np.float32)


def flip_expression(expression):
    """Blendshapes `[..., 52]` of a horizontally flipped image: Left and Right swap by name."""
    if expression.shape[-1] != len(BLENDSHAPE_MIRROR):
        raise ValueError(
            f"expression must have {len(BLENDSHAPE_MIRROR)} blendshapes, got {expression.shape}"
        )
    return expression[..., np.asarray(BLENDSHAPE_MIRROR)]


def flip_landmarks(points, permutation: Sequence[int] | np.ndarray | None = None):
    """Points `[..., N, 2]` in [-1, 1] of a horizontally flipped image: x negated and the points
    reordered so index i still names the same facial point (the subject's right eye corner
    stays at its index). `permutation` defaults by N: 68 (iBUG), 468/478 (MediaPipe mesh);
    other subsets pass their own (`LandmarkModel.mirror_permutation`)."""
    n = points.shape[-2]
    if permutation is None:
        if n == 68:
            permutation = IBUG68_MIRROR
        elif n in (468, 478):
            permutation = mesh_mirror_permutation()[:n]
        else:
            raise ValueError(f"flip_landmarks: no default mirror permutation for N={n} points")
    permutation = np.asarray(permutation)
    if permutation.shape != (n,):
        raise ValueError(f"permutation must be [{n}], got {permutation.shape}")
    return points[..., permutation, :] * np.array([-1.0, 1.0], np.float32)


def subset_mirror_permutation(indices: Sequence[int]) -> np.ndarray:
    """Mirror permutation of a mesh-vertex subset (must be closed under the mirror)."""
    perm = mesh_mirror_permutation()
    where = {int(v): i for i, v in enumerate(indices)}
    try:
        return np.asarray([where[int(perm[v])] for v in indices], np.int32)
    except KeyError as e:
        raise ValueError(f"landmark subset is not mirror-closed: vertex {e} missing") from e


# ----------------------------------------------------------------------------- the model


def smooth_expression(expression: np.ndarray, window: int = 5) -> np.ndarray:
    """Centred moving average of `[T, E]` over `window` frames (shrinking at the clip ends)."""
    e = np.asarray(expression, np.float64)
    if window <= 1 or len(e) <= 1:
        return e.astype(np.float32)
    half = window // 2
    csum = np.concatenate([np.zeros((1, e.shape[1])), np.cumsum(e, axis=0)])
    t = np.arange(len(e))
    lo, hi = np.maximum(t - half, 0), np.minimum(t + half + 1, len(e))
    return ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(np.float32)


def frame_geometry(
    landmarks: np.ndarray,
    blendshapes: np.ndarray,
    image_size: tuple[int, int],
    mesh: face_analyser.CanonicalMesh,
    smooth: int = 5,
) -> dict[str, np.ndarray]:
    """Analyses of consecutive frames of one clip -> what the model needs per frame.

    From `landmarks [T,478,3]` (MediaPipe, [0,1] of an HxW crop) and `blendshapes [T,52]`:
    `pose [T,6]`, `canonical [T,468,3]` (C = R0^T R^T (L - t) / s), `points [T,468,2]` (the
    raw landmarks in [-1, 1]) and `expression [T,52]` (blendshapes averaged over `smooth`
    frames). One frame (T = 1) is fine: the source image of an edit.
    """
    fit = procrustes_pose(landmarks, image_size, mesh)
    points = to_crop_coords(np.asarray(landmarks)[:, : face_analyser.NUM_MESH_VERTICES], image_size)
    return {
        "pose": fit.pose,
        "canonical": fit.canonical(points).astype(np.float32),
        "points": points[..., :2].astype(np.float32),
        "expression": smooth_expression(blendshapes, smooth),
    }


def vertex_normals(vertices, triangles: np.ndarray):
    """Unit outward normals `[..., V, 3]` of a mesh `[..., V, 3]` (jnp; area-weighted)."""
    v = jnp.asarray(vertices)
    a, b, c = (v[..., triangles[:, k], :] for k in range(3))
    face = jnp.cross(b - a, c - a)
    normals = jnp.zeros_like(v)
    for k in range(3):
        normals = normals.at[..., triangles[:, k], :].add(face)
    return normals / (jnp.linalg.norm(normals, axis=-1, keepdims=True) + 1e-9)


class FitStatistics:
    """Sufficient statistics of the landmark model fit, accumulated one video at a time, so
    data_prep never holds all frames: the within-video scatter E'E and E'X, and per video
    the mean canonical shape and mean expression.

    `finish` solves B by ridge least squares on the within-video-centred data (so identity
    does not leak into expression; the penalty is `ridge` times the mean expression variance
    times the frame count) and the identity basis by PCA of the per-video offsets (video
    mean minus B @ video-mean expression), with codes whitened to unit variance.
    """

    def __init__(self):
        self.gram = None  # [E, E]
        self.cross = None  # [E, D]
        self.offsets_c: list[np.ndarray] = []
        self.offsets_e: list[np.ndarray] = []
        self.e_min = self.e_max = None
        self.frames = 0
        self.shape: tuple = ()

    def add(self, canonical: np.ndarray, expression: np.ndarray) -> None:
        """One video: canonical landmarks `[T, V, 3]`, blendshapes `[T, E]`."""
        c = np.asarray(canonical, np.float64).reshape(len(canonical), -1)
        e = np.asarray(expression, np.float64)
        if len(c) != len(e) or len(c) == 0:
            raise ValueError(f"video with {len(c)} landmark frames and {len(e)} expressions")
        self.shape = np.shape(canonical)[1:]
        cm, em = c.mean(0), e.mean(0)
        ec = e - em
        if self.gram is None:
            self.gram = np.zeros((e.shape[1], e.shape[1]))
            self.cross = np.zeros((e.shape[1], c.shape[1]))
            self.e_min, self.e_max = e.min(0), e.max(0)
        self.gram += ec.T @ ec
        self.cross += ec.T @ (c - cm)
        self.e_min = np.minimum(self.e_min, e.min(0))
        self.e_max = np.maximum(self.e_max, e.max(0))
        self.offsets_c.append(cm)
        self.offsets_e.append(em)
        self.frames += len(c)

    def finish(
        self,
        *,
        triangles: np.ndarray,
        identity_dim: int = 16,
        ridge: float = 1e-3,
        landmark_indices: Sequence[int] | None = None,
    ) -> LandmarkModel:
        if self.gram is None:
            raise ValueError("no training frames to fit the face model on")
        e_dim = self.gram.shape[0]
        v = self.shape[0]
        lam = ridge * max(np.trace(self.gram) / e_dim, 1e-8)
        basis = np.linalg.solve(self.gram + lam * np.eye(e_dim), self.cross)  # [E, D]
        offsets = np.stack(self.offsets_c) - np.stack(self.offsets_e) @ basis
        mean = offsets.mean(0)
        identity = np.zeros((identity_dim, v * 3))
        if len(offsets) > 1:
            _, sv, vt = np.linalg.svd(offsets - mean, full_matrices=False)
            std = sv / np.sqrt(len(offsets) - 1)
            k = int(min(identity_dim, (std > 1e-6 * max(std[0], 1e-12)).sum()))
            identity[:k] = vt[:k] * std[:k, None]
        indices = np.asarray(
            IBUG68_INDICES if landmark_indices is None else landmark_indices, np.int32
        )
        return LandmarkModel(
            mean=mean.reshape(v, 3).astype(np.float32),
            identity_basis=identity.reshape(identity_dim, v, 3).astype(np.float32),
            expression_basis=basis.reshape(e_dim, v, 3).astype(np.float32),
            expression_min=self.e_min.astype(np.float32),
            expression_max=self.e_max.astype(np.float32),
            landmark_indices=indices,
            triangles=np.asarray(triangles, np.int32),
            mirror_permutation=subset_mirror_permutation(indices),
        )


@dataclasses.dataclass
class LandmarkModel:
    """C ~ mean + identity_basis^T id + expression_basis^T expr, on the 468 mesh vertices.

    Arrays: `mean [V,3]`, `identity_basis [I,V,3]` (scaled so codes have unit variance over
    the training videos; unused components are zero), `expression_basis [E,V,3]`,
    `expression_min/max [E]` (the fitted range), `landmark_indices [N]` (the predefined
    landmarks, iBUG 68 by default), `triangles [F,3]` (for normals), `mirror [N]`.
    """

    mean: np.ndarray
    identity_basis: np.ndarray
    expression_basis: np.ndarray
    expression_min: np.ndarray
    expression_max: np.ndarray
    landmark_indices: np.ndarray
    triangles: np.ndarray
    mirror_permutation: np.ndarray

    @property
    def identity_dim(self) -> int:
        return self.identity_basis.shape[0]

    @property
    def expression_dim(self) -> int:
        return self.expression_basis.shape[0]

    @property
    def num_landmarks(self) -> int:
        return len(self.landmark_indices)

    # -- fitting

    @classmethod
    def fit(
        cls,
        canonical: Sequence[np.ndarray],
        expressions: Sequence[np.ndarray],
        *,
        triangles: np.ndarray,
        identity_dim: int = 16,
        ridge: float = 1e-3,
        landmark_indices: Sequence[int] | None = None,
    ) -> LandmarkModel:
        """Fit on per-video canonical landmarks `[T_v, V, 3]` and blendshapes `[T_v, E]`
        (see `FitStatistics`, which does the same streaming over videos)."""
        if len(canonical) != len(expressions) or not canonical:
            raise ValueError("fit needs the same nonzero number of canonical and expression arrays")
        stats = FitStatistics()
        for c, e in zip(canonical, expressions, strict=True):
            stats.add(c, e)
        return stats.finish(
            triangles=triangles,
            identity_dim=identity_dim,
            ridge=ridge,
            landmark_indices=landmark_indices,
        )

    def identity_code(self, canonical: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """Identity code `[I]` of one video from its canonical landmarks `[T,V,3]` and
        blendshapes `[T,E]` (least squares on the mean offset; a single frame works)."""
        c = np.asarray(canonical, np.float64).reshape(len(canonical), -1).mean(0)
        e = np.asarray(expression, np.float64).mean(0)
        offset = c - e @ self.expression_basis.reshape(self.expression_dim, -1) - self.mean.ravel()
        u = self.identity_basis.reshape(self.identity_dim, -1).astype(np.float64)
        code, *_ = np.linalg.lstsq(u.T, offset, rcond=None)
        return code.astype(np.float32)

    # -- evaluation (jnp; jit-friendly, used by training and editing)

    def clamp_expression(self, expression):
        """Clip `[..., E]` to the range seen in training (far extrapolation distorts)."""
        return jnp.clip(expression, self.expression_min, self.expression_max)

    def check_expression(self, expression: np.ndarray, tolerance: float = 0.05) -> list[str]:
        """Host-side: names of blendshapes outside the fitted range (+ tolerance); warns."""
        e = np.asarray(expression).reshape(-1, self.expression_dim)
        out = (e < self.expression_min - tolerance) | (e > self.expression_max + tolerance)
        names = [face_analyser.BLENDSHAPE_NAMES[i] for i in np.flatnonzero(out.any(0))]
        if names:
            warnings.warn(
                f"expression outside the face model's fitted range (it will be clamped): "
                f"{', '.join(names)}",
                stacklevel=2,
            )
        return names

    def shape(self, identity, expression, *, indices=None, clamp: bool = True):
        """Canonical points `[..., P, 3]` (P = len(indices), default all V vertices)."""
        if clamp:
            expression = self.clamp_expression(expression)
        sel = slice(None) if indices is None else np.asarray(indices)
        mean = jnp.asarray(self.mean[sel])
        ident = jnp.asarray(self.identity_basis[:, sel])
        expr = jnp.asarray(self.expression_basis[:, sel])
        return (
            mean
            + jnp.einsum("...i,ipk->...pk", identity, ident)
            + jnp.einsum("...e,epk->...pk", expression, expr)
        )

    def transform(self, pose, points):
        """Canonical points `[..., P, 3]` -> camera-frame points `[..., P, 3]` in crop units."""
        pose = jnp.asarray(pose)
        rot = rotation_matrix(pose[..., 0], pose[..., 1], pose[..., 2]) @ jnp.asarray(R0)
        scale = jnp.exp(pose[..., 3])[..., None, None]
        t = jnp.concatenate([pose[..., 4:6], jnp.zeros_like(pose[..., :1])], axis=-1)
        return scale * jnp.einsum("...ij,...pj->...pi", rot, points) + t[..., None, :]

    def project(self, pose, points):
        """Canonical points `[..., P, 3]` -> image points `[..., P, 2]` in [-1, 1]."""
        return self.transform(pose, points)[..., :2]

    def reconstruct(self, pose, identity, expression, *, clamp: bool = True):
        """Predefined landmarks `[..., N, 2]` in [-1, 1] from pose `[...,6]`, identity `[...,I]`
        and expression `[...,E]`: s R (mean + identity + B expr) + t, projected."""
        points = self.shape(identity, expression, indices=self.landmark_indices, clamp=clamp)
        return self.project(pose, points)

    def visibility(self, pose, identity, expression, *, clamp: bool = True, tolerance=0.1):
        """`[..., N]` bool: the landmark's mesh normal faces the camera after rotation.

        Points on the silhouette (the jaw line of a frontal face) have normals almost
        perpendicular to the view; `tolerance` (the sine of the angle by which a normal may
        point away) keeps them visible.
        """
        full = self.shape(identity, expression, clamp=clamp)
        normals = vertex_normals(full, self.triangles)[..., self.landmark_indices, :]
        pose = jnp.asarray(pose)
        rot = rotation_matrix(pose[..., 0], pose[..., 1], pose[..., 2]) @ jnp.asarray(R0)
        # Camera z points away from the viewer, so a visible surface has a negative z normal.
        nz = jnp.einsum("...j,...pj->...p", rot[..., 2, :], normals)
        return nz < tolerance

    # -- files

    def save(self, path: str | os.PathLike) -> None:
        """Write `face_model.npz` atomically (temp file + rename)."""
        path = pathlib.Path(path)
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        arrays["blendshape_names"] = np.asarray(face_analyser.BLENDSHAPE_NAMES)
        arrays["format_version"] = np.asarray(1)
        fileio.save_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LandmarkModel:
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"face model not found: {path} (data_prep writes it)")
        with np.load(path) as z:
            missing = [f.name for f in dataclasses.fields(cls) if f.name not in z]
            if missing:
                raise ValueError(f"{path}: not a face model, missing arrays {missing}")
            return cls(**{f.name: z[f.name] for f in dataclasses.fields(cls)})


def log_fit_report(model: LandmarkModel) -> None:
    logging.info(
        "face model: %d vertices, identity %d, expression %d, %d landmarks",
        model.mean.shape[0],
        model.identity_dim,
        model.expression_dim,
        model.num_landmarks,
    )
