"""The Python API for reenactment and editing (used by the demo, the CLIs, the notebook and
evaluation). Models never import this module.

    animator = Animator.from_workdir("workdirs/demo")
    frames = animator.reenact(source, motion)          # [T,H,W,3] float in [0, 1]
    sweep = animator.edit_pose(source, yaw=np.radians([-30, 0, 30]))
    for chunk in animator.stream(source, motion):      # bounded memory for long videos
        ...

Motion modes (`MOTION_MODES`): `absolute` copies the driving pose and expression onto the
portrait; `relative` (FOMM's and LivePortrait's default for another person) keeps the
portrait's own pose and expression and applies the driving video's changes from its first
frame (`relative_motion`). Landmarks are then reconstructed from the portrait's identity.

A `Source` is one portrait with its face-model coefficients (pose, expression, identity) and
predefined landmarks; a `Motion` is a sequence of poses and expressions (from a driving video,
or set by hand) with, optionally, its landmarks. Where a motion has no landmarks (an edit),
they are reconstructed by the face model R from the source's identity and the motion's pose
and expression: that is what makes the model freely controllable.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pechead_jax import checkpointing, sharding
from pechead_jax.face_model import LandmarkModel, euler_angles
from pechead_jax.models import geometry, pechead
from pechead_jax.models.keypoints import make_condition
from pechead_jax.models.pechead import PECHead

PyTree = Any
MOTION_MODES = ("relative", "absolute")


@dataclasses.dataclass(frozen=True)
class Source:
    """One source portrait: `image [H,W,3]` float in [0,1], `pose [6]`, `expression [E]`,
    `landmarks [N,2]` in [-1,1], `identity [I]` (the face model's code; None if unknown)."""

    image: np.ndarray
    pose: np.ndarray
    expression: np.ndarray
    landmarks: np.ndarray
    identity: np.ndarray | None = None
    crop_box: tuple[float, float, float] | None = None  # (x0, y0, side) in the photo, pixels


@dataclasses.dataclass(frozen=True)
class Motion:
    """A driving sequence: `pose [T,6]`, `expression [T,E]`, optional `landmarks [T,N,2]`."""

    pose: np.ndarray
    expression: np.ndarray
    landmarks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pose)


def _rotations(angles: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) `[..., 3]` radians -> `[..., 3, 3]` (geometry.rotation_matrix)."""
    a = np.asarray(angles, np.float32)
    return np.asarray(geometry.rotation_matrix(a[..., 0], a[..., 1], a[..., 2]), np.float64)


def compose_relative_rotation(source: np.ndarray, driving: np.ndarray,
                              reference: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) radians of `R_t R_ref^T R_s`: the source's rotation `[3]` turned
    by each driving rotation `[T,3]` relative to `reference [3]` -> `[T,3]` radians."""
    rotation = (_rotations(driving) @ _rotations(reference).T) @ _rotations(source)
    return euler_angles(rotation)


def relative_motion(source: Source, motion: Motion, face_model: LandmarkModel | None = None,
                    reference: int = 0) -> Motion:
    """The driving motion's changes from its frame `reference`, applied to the source.

    Rotation `R_t R_ref^T R_s` (composed, not angles added: a driving head turning 20 degrees
    turns a tilted portrait 20 degrees about the camera's axis); log-scale `+ (log s_t -
    log s_ref)`; translation `t_s + (t_t - t_ref) s_s / s_ref` (the driving head's shift, in
    units of its size, at the portrait's size); expression `e_s + (e_t - e_ref)`, clamped to
    the face model's fitted range (to [0, 1] without one). The result has no landmarks: they
    are reconstructed from the portrait's identity. Frame `reference` gives the source's own
    pose and expression exactly.
    """
    pose = np.asarray(motion.pose, np.float64)
    if pose.ndim != 2 or pose.shape[1] != 6 or not len(pose):
        raise ValueError(f"relative_motion: motion.pose must be [T,6] with T>0, got {pose.shape}")
    if not 0 <= reference < len(pose):
        raise ValueError(f"relative_motion: reference {reference} outside 0..{len(pose) - 1}")
    src = np.asarray(source.pose, np.float64)
    ref = pose[reference]
    out = np.empty_like(pose)
    out[:, :3] = compose_relative_rotation(src[:3], pose[:, :3], ref[:3])
    out[:, 3] = src[3] + pose[:, 3] - ref[3]
    out[:, 4:6] = src[4:6] + (pose[:, 4:6] - ref[4:6]) * np.exp(src[3] - ref[3])
    expression = np.asarray(motion.expression, np.float64)
    expression = np.asarray(source.expression, np.float64) + expression - expression[reference]
    if face_model is not None:
        expression = np.asarray(face_model.clamp_expression(expression))
    else:
        expression = np.clip(expression, 0.0, 1.0)
    out[reference, :3] = src[:3]  # exact (the Euler round trip is only accurate to ~1e-7)
    return Motion(pose=out.astype(np.float32), expression=expression.astype(np.float32))


def perspective_landmarks(face_model: LandmarkModel, pose: np.ndarray, identity: np.ndarray,
                          expression: np.ndarray, fov: float | np.ndarray,
                          source_fov: float = 40.0) -> np.ndarray:
    """Landmarks `[T,N,2]` for `pose [T,6]`, `expression [T,E]` as if the portrait had been
    taken with a `fov`-degree (one value, or `[T]`) field of view across the crop at the
    same head size (a camera-distance change, "dolly zoom").

    R is orthographic. A camera at distance `D = 1 / tan(fov / 2)` crop half-widths sees a
    point at depth z (z away from the camera, the head centre at 0) at `x D / (D + z)`;
    the portrait is taken as shot at `source_fov` (about 40 degrees: a phone at arm's
    length framing twice the face), so the edit adds `persp(fov) - persp(source_fov)` to R's
    landmarks: a wider field of view (a closer camera) enlarges what is nearer than the head
    centre (the nose) and shrinks what is behind it (ears, jaw corners); a narrower one
    flattens the face. The head centre keeps its position and size.
    """
    pose = np.asarray(pose, np.float32)
    fov = np.broadcast_to(np.asarray(fov, np.float64), (len(pose),))
    for name, value in (("fov", fov), ("source_fov", np.asarray([source_fov]))):
        if np.any(value < 1.0) or np.any(value > 150.0):
            raise ValueError(f"perspective_landmarks: {name}={value} degrees, expected 1..150")
    identity = np.broadcast_to(identity, (len(pose), len(identity)))
    points = face_model.shape(identity, np.asarray(expression, np.float32),
                              indices=face_model.landmark_indices)
    camera = np.asarray(face_model.transform(pose, points), np.float64)  # [T,N,3]
    centre = np.concatenate([pose[:, 4:6], np.zeros((len(pose), 1))], axis=1)[:, None]
    rel = camera - centre

    def project(degrees):  # [T] or scalar degrees
        d = (1.0 / np.tan(np.radians(degrees) / 2.0)) * np.ones((len(pose), 1, 1))
        return rel[..., :2] * (d / np.maximum(d + rel[..., 2:], 1e-3 * d))

    return (camera[..., :2] + project(fov) - project(source_fov)).astype(np.float32)


def clip_source_and_motion(arrays: dict, source_index: int = 0) -> tuple[Source, Motion]:
    """A whole clip as `input_pipeline.clip_arrays` gives it -> (its frame `source_index`
    as the source, the clip as the motion, with its landmarks)."""
    i = source_index
    source = Source(
        image=arrays["frames"][i], pose=arrays["pose"][i], expression=arrays["expression"][i],
        landmarks=arrays["landmarks"][i], identity=arrays.get("identity"),
    )
    return source, Motion(arrays["pose"], arrays["expression"], arrays["landmarks"])


def load_ema_params(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                    step: int | None = None) -> tuple[PyTree, int]:
    """The EMA G+E parameters of the latest (or `step`) checkpoint in `W/checkpoints`.

    Read without the trainer: the checkpoint's `ema_params` are checked against the
    parameter shapes `PECHead(config.model)` expects, naming the first difference."""
    state = checkpointing.load_params(workdir, None, step)
    params = state["ema_params"]
    clip = config.data.clip_length if config.model.variant == "full" else None
    model = PECHead(config.model)
    expected = jax.eval_shape(
        lambda: model.init(jax.random.key(0), *pechead.model_inputs(
            pechead.dummy_batch(config.model, 1, clip)),
            method=PECHead.animate if clip else None)
    )["params"]
    flat = flax.traverse_util.flatten_dict(params)
    expected = flax.traverse_util.flatten_dict(expected)
    extra = sorted("/".join(p) for p in set(flat) - set(expected))
    if extra:
        raise ValueError(f"{workdir}: checkpoint has parameters the model in its config.json "
                         f"does not: {', '.join(extra[:3])} (a checkpoint of another version?)")
    for path, leaf in expected.items():
        got = flat.get(path)
        if got is None or tuple(got.shape) != tuple(leaf.shape):
            raise ValueError(
                f"{workdir}: checkpoint parameter {'/'.join(path)} is "
                f"{'missing' if got is None else tuple(got.shape)}, the model in its "
                f"config.json expects {tuple(leaf.shape)} (a checkpoint of another version?)"
            )
    return jax.tree.map(jnp.asarray, params), int(state["step"])


class Animator:
    """A trained PECHead (EMA parameters) with the face model that makes its landmarks.

    All frames come out as `[T,H,W,3]` float32 in [0, 1] at `config.model.resolution`.
    """

    def __init__(self, config: ml_collections.ConfigDict, params: PyTree,
                 face_model: LandmarkModel | None = None, chunk: int = 16,
                 mesh: jax.sharding.Mesh | None = None):
        if chunk < 1:
            raise ValueError(f"Animator: chunk={chunk}, expected >= 1")
        self.traces = 0
        self.config = config
        self.face_model = face_model
        self.chunk = chunk
        self.model = PECHead(config.model)
        self.resolution = int(config.model.resolution)
        # With a mesh, each chunk's frames are split over its devices (frames of a chunk are
        # independent except under `full`, whose scan over them is sequential).
        self.mesh = mesh
        if mesh is not None:
            n = mesh.devices.size
            if config.model.variant == "full":
                raise ValueError("Animator: a mesh splits a chunk's frames over devices; the "
                                 "'full' variant scans them in order (use one device)")
            if chunk % n:
                raise ValueError(f"Animator: chunk={chunk} must be a multiple of the mesh's "
                                 f"{n} devices")
            params = jax.device_put(params, sharding.replicated(mesh))
        self.params = params

    @staticmethod
    def local_mesh(config: ml_collections.ConfigDict, chunk: int = 16) -> jax.sharding.Mesh | None:
        """A mesh over this host's devices for `Animator(mesh=...)`, or None where one device
        is all there is to use (one device, the `full` variant, or `chunk` not a multiple)."""
        n = jax.local_device_count()
        if n < 2 or config.model.variant == "full" or chunk % n:
            return None
        return jax.make_mesh((n,), (sharding.DATA_AXIS,), devices=jax.local_devices(),
                             axis_types=(jax.sharding.AxisType.Auto,))

    @classmethod
    def from_workdir(cls, workdir: str | pathlib.Path, *, step: int | None = None,
                     face_model_path: str | pathlib.Path | None = None,
                     all_devices: bool = False) -> Animator:
        """Load `W/config.json`, the EMA params of the latest checkpoint, and the face model
        (`face_model_path`, default `config.data.root/face_model.npz` when it exists);
        `all_devices`: split each chunk over this host's devices (`local_mesh`)."""
        config = checkpointing.read_config(workdir)
        params, loaded_step = load_ema_params(workdir, config, step)
        if face_model_path is None and config.data.root:
            candidate = pathlib.Path(config.data.root) / "face_model.npz"
            face_model_path = candidate if candidate.is_file() else None
        face = LandmarkModel.load(face_model_path) if face_model_path else None
        mesh = cls.local_mesh(config) if all_devices else None
        logging.info("loaded %s at step %d (face model: %s; %d device(s))", workdir,
                     loaded_step, face_model_path or "none", 1 if mesh is None else
                     mesh.devices.size)
        return cls(config, params, face, mesh=mesh)

    # -- the model calls (jitted once: every chunk has the same shape)

    @functools.cached_property
    def _chunk_fn(self):
        """One source, driving `[chunk,C]` and `[chunk,N,2]`, CAP context (None unless
        `full`) -> (frames `[chunk,H,W,3]`, the context after them). E and the source
        encoder run once per chunk; `full` scans the chunk carrying CAP's context."""

        def run(params, source, source_cond, source_lmk, driving_cond, driving_lmk, context,
                encoded):
            self.traces += 1  # runs once per compilation (tests check one for any length)
            out = self.model.apply(
                {"params": params}, source, source_cond, source_lmk, driving_cond[None],
                driving_lmk[None], context, encoded, method=PECHead.animate,
            )
            return out["image"][0], out.get("context")

        if self.mesh is None:
            return jax.jit(run)
        rep = sharding.replicated(self.mesh)
        frames = sharding.batch_sharding(self.mesh)
        return jax.jit(run, in_shardings=(rep, rep, rep, rep, frames, frames, rep, rep),
                       out_shardings=(frames, rep))

    @functools.cached_property
    def _initial_context_fn(self):
        def run(params, source, source_cond, source_lmk, driving_cond, driving_lmk, encoded):
            return self.model.apply(
                {"params": params}, source, source_cond, source_lmk, driving_cond[None],
                driving_lmk[None], encoded, method=PECHead.initial_context,
            )

        return jax.jit(run)

    @functools.cached_property
    def _encode_fn(self):
        out = None if self.mesh is None else sharding.replicated(self.mesh)
        return jax.jit(lambda params, image: self.model.apply(
            {"params": params}, image, method=PECHead.encode_source), out_shardings=out)

    def encode(self, source: Source) -> dict:
        """The source side of the model for `source` (G's encoder pyramid, E's source
        points): computed once per portrait; pass it to `stream`/`reenact` to reuse it."""
        image, _, _ = self._source_arrays(source)
        return self._encode_fn(self.params, image)

    def _source_arrays(self, source: Source):
        image = np.asarray(source.image, np.float32)
        if image.shape != (self.resolution, self.resolution, 3):
            raise ValueError(
                f"source.image has shape {image.shape}; the model takes "
                f"[{self.resolution},{self.resolution},3] (resize the crop first)"
            )
        cond = make_condition(jnp.asarray(source.pose)[None], jnp.asarray(source.expression)[None])
        return image[None], cond, np.asarray(source.landmarks, np.float32)[None]

    def landmarks_for(self, source: Source, motion: Motion) -> np.ndarray:
        """Predefined landmarks `[T,N,2]` for `motion`: its own if it has them, else the face
        model's reconstruction with the source's identity."""
        if motion.landmarks is not None:
            return np.asarray(motion.landmarks, np.float32)
        if self.face_model is None:
            raise ValueError("this motion has no landmarks and no face model is loaded "
                             "(pass face_model_path, or a Motion with landmarks)")
        if source.identity is None:
            raise ValueError("source.identity is needed to reconstruct landmarks for an edit")
        self.face_model.check_expression(motion.expression)
        identity = np.broadcast_to(source.identity, (len(motion), len(source.identity)))
        return np.asarray(
            self.face_model.reconstruct(motion.pose, identity, motion.expression), np.float32
        )

    def prepare(self, source: Source, motion: Motion, mode: str = "absolute") -> Motion:
        """`motion` as the model takes it for `mode` (`MOTION_MODES`), with its landmarks
        (`relative` drops the driving landmarks: they are rebuilt from the source)."""
        if mode not in MOTION_MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MOTION_MODES}")
        if mode == "relative":
            motion = relative_motion(source, motion, self.face_model)
        return dataclasses.replace(motion, landmarks=self.landmarks_for(source, motion))

    def stream(self, source: Source, motion: Motion, mode: str = "absolute",
               encoded: dict | None = None):
        """Animate `source` with `motion`, chunk by chunk: yields frames `[<=chunk,H,W,3]`.

        Every chunk has `self.chunk` frames (the last padded by repeating its final frame,
        the padding dropped), so one compilation serves any length; for `full`, CAP's
        context is carried from chunk to chunk, as one scan over the whole video would.
        The source side (`encode(source)`, or `encoded` when given) runs once, not per
        chunk. Memory is bounded by a chunk whatever the length of the motion."""
        motion = self.prepare(source, motion, mode)
        image, source_cond, source_lmk = self._source_arrays(source)
        if encoded is None:
            encoded = self._encode_fn(self.params, image)
        driving_cond = np.asarray(
            make_condition(jnp.asarray(motion.pose), jnp.asarray(motion.expression)), np.float32
        )
        landmarks = np.asarray(motion.landmarks, np.float32)
        t, chunk = len(motion), self.chunk
        context = None
        if self.config.model.variant == "full":
            context = self._initial_context_fn(self.params, image, source_cond, source_lmk,
                                               driving_cond[0], landmarks[0], encoded)
        for i in range(0, t, chunk):
            cond, lmk = driving_cond[i:i + chunk], landmarks[i:i + chunk]
            n = len(cond)
            if n < chunk:
                cond = np.concatenate([cond, np.repeat(cond[-1:], chunk - n, 0)])
                lmk = np.concatenate([lmk, np.repeat(lmk[-1:], chunk - n, 0)])
            frames, context = self._chunk_fn(self.params, image, source_cond, source_lmk,
                                             cond, lmk, context, encoded)
            yield np.asarray(frames, np.float32)[:n]

    def reenact(self, source: Source, motion: Motion, mode: str = "absolute",
                encoded: dict | None = None) -> np.ndarray:
        """Animate `source` with `motion` (`mode`: `MOTION_MODES`): frames `[T,H,W,3]`.

        Runs `stream` and gathers its chunks (for long videos, iterate `stream`)."""
        return np.concatenate(list(self.stream(source, motion, mode, encoded)))

    def edit(self, source: Source, pose: np.ndarray | None = None,
             expression: np.ndarray | None = None) -> np.ndarray:
        """Render the source under new `pose [T,6]` and/or `expression [T,E]` (the source's
        own where None); landmarks come from the face model. Returns `[T,H,W,3]`."""
        if pose is None and expression is None:
            raise ValueError("edit: give a pose, an expression, or both")
        t = len(pose) if pose is not None else len(expression)
        pose = np.broadcast_to(source.pose, (t, 6)) if pose is None else np.asarray(pose)
        expression = (np.broadcast_to(source.expression, (t, len(source.expression)))
                      if expression is None else np.asarray(expression))
        motion = Motion(pose=np.asarray(pose, np.float32),
                        expression=np.asarray(expression, np.float32))
        return self.reenact(source, motion)

    def edit_pose(self, source: Source, yaw: Sequence[float] | None = None,
                  pitch: Sequence[float] | None = None,
                  roll: Sequence[float] | None = None) -> np.ndarray:
        """The source re-posed: one frame per value of `yaw`/`pitch`/`roll` (radians; those
        given must have the same length, the others keep the source's angle)."""
        given = {i: np.asarray(v, np.float32)
                 for i, v in enumerate((yaw, pitch, roll)) if v is not None}
        if not given:
            raise ValueError("edit_pose: give yaw, pitch or roll values (radians)")
        lengths = {len(v) for v in given.values()}
        if len(lengths) != 1:
            raise ValueError(f"edit_pose: yaw/pitch/roll lengths differ: {sorted(lengths)}")
        pose = np.repeat(np.asarray(source.pose, np.float32)[None], lengths.pop(), axis=0)
        for i, values in given.items():
            pose[:, i] = values
        return self.edit(source, pose=pose)
