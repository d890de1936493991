"""The Python API for reenactment and editing (used by the demo, the CLIs, the notebook and
evaluation). Models never import this module.

    animator = Animator.from_workdir("workdirs/demo")
    frames = animator.reenact(source, motion)          # [T,H,W,3] float in [0, 1]
    sweep = animator.edit_pose(source, yaw=np.radians([-30, 0, 30]))

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

from pechead_jax import checkpointing
from pechead_jax.face_model import LandmarkModel
from pechead_jax.models import pechead
from pechead_jax.models.keypoints import make_condition
from pechead_jax.models.pechead import PECHead

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Source:
    """One source portrait: `image [H,W,3]` float in [0,1], `pose [6]`, `expression [E]`,
    `landmarks [N,2]` in [-1,1], `identity [I]` (the face model's code; None if unknown)."""

    image: np.ndarray
    pose: np.ndarray
    expression: np.ndarray
    landmarks: np.ndarray
    identity: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Motion:
    """A driving sequence: `pose [T,6]`, `expression [T,E]`, optional `landmarks [T,N,2]`."""

    pose: np.ndarray
    expression: np.ndarray
    landmarks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pose)


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
                 face_model: LandmarkModel | None = None, chunk: int = 8):
        self.config = config
        self.params = params
        self.face_model = face_model
        self.chunk = chunk
        self.model = PECHead(config.model)
        self.resolution = int(config.model.resolution)

    @classmethod
    def from_workdir(cls, workdir: str | pathlib.Path, *, step: int | None = None,
                     face_model_path: str | pathlib.Path | None = None) -> Animator:
        """Load `W/config.json`, the EMA params of the latest checkpoint, and the face model
        (`face_model_path`, default `config.data.root/face_model.npz` when it exists)."""
        config = checkpointing.read_config(workdir)
        params, loaded_step = load_ema_params(workdir, config, step)
        if face_model_path is None and config.data.root:
            candidate = pathlib.Path(config.data.root) / "face_model.npz"
            face_model_path = candidate if candidate.is_file() else None
        face = LandmarkModel.load(face_model_path) if face_model_path else None
        logging.info("loaded %s at step %d (face model: %s)", workdir, loaded_step,
                     face_model_path or "none")
        return cls(config, params, face)

    # -- the model calls (jitted once per shape)

    @functools.cached_property
    def _clip_fn(self):
        """One source, driving `[T,C]` and `[T,N,2]` -> frames `[T,H,W,3]` (`animate`: E and
        the source encoder run once; for `full` a scan carries CAP's context)."""

        def run(params, source, source_cond, source_lmk, driving_cond, driving_lmk):
            return self.model.apply(
                {"params": params}, source, source_cond, source_lmk, driving_cond[None],
                driving_lmk[None], method=PECHead.animate,
            )["image"][0]

        return jax.jit(run)

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

    def reenact(self, source: Source, motion: Motion) -> np.ndarray:
        """Animate `source` with `motion`: frames `[T,H,W,3]`.

        Variant `full` runs the clip as one scan carrying CAP's context; other variants
        render frames independently, in fixed-size chunks (one compilation)."""
        landmarks = self.landmarks_for(source, motion)
        image, source_cond, source_lmk = self._source_arrays(source)
        driving_cond = np.asarray(
            make_condition(jnp.asarray(motion.pose), jnp.asarray(motion.expression)), np.float32
        )
        if self.config.model.variant == "full":
            out = self._clip_fn(self.params, image, source_cond, source_lmk, driving_cond,
                                landmarks)
            return np.asarray(out, np.float32)
        t, chunk = len(motion), self.chunk
        pad = -t % chunk
        driving_cond = np.concatenate([driving_cond, np.repeat(driving_cond[-1:], pad, 0)])
        landmarks = np.concatenate([landmarks, np.repeat(landmarks[-1:], pad, 0)])
        outs = [
            np.asarray(self._clip_fn(self.params, image, source_cond, source_lmk,
                                     driving_cond[i:i + chunk], landmarks[i:i + chunk]))
            for i in range(0, t + pad, chunk)
        ]
        return np.concatenate(outs)[:t].astype(np.float32)

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
