"""PECHead: E (learned keypoints), the dense-motion networks and G in one linen module.

One way to call the model: `PECHead.__call__` (a frame) and `PECHead.animate` (a clip) take
`(source, source_cond, source_landmarks, driving_cond, driving_landmarks)` in that order, and
`apply_to_batch` / `model_inputs` / `dummy_batch` below build those from a batch dict
(docs/interfaces.md), for training, evaluation and inference alike.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pechead_jax.models import geometry, layers
from pechead_jax.models.generator import VARIANT_MOTIONS, Generator
from pechead_jax.models.keypoints import (
    KeypointEstimator,
    PoseKeypointEstimator,
    make_condition,
)
from pechead_jax.models.motion import DenseMotion, resize_flow

Array = jax.Array
KEYPOINT_ESTIMATORS = ("pose", "film")


def _check(name: str, x: Array, shape: tuple) -> None:
    """Raise a ValueError naming `name` unless `x.shape` matches `shape` (None = any)."""
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "[" + ",".join("?" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"PECHead: {name} must have shape {want}, got {tuple(x.shape)}")


def context_displacement(masks: Array, previous: Array, current: Array) -> Array:
    """CAP's displacement from the current frame to the previous one `[B,h,w,2]`.

    Each pixel follows its points' motion, mixed by the dense-motion `masks [B,h,w,N+1]`
    that built the current flow (the last, background, does not move): `sum_n m_n
    (previous_n - current_n)` for points `[B,N,2]`. The previous frame sampled at
    `identity + displacement` shows its content where the current frame has it.
    """
    return jnp.einsum(
        "bhwn,bnc->bhwc", masks[..., :-1], (previous - current).astype(jnp.float32)
    )


class PECHead(nn.Module):
    """The generator side of PECHead, configured by `config.model` (see configs/common.py).

    Methods (shapes in docs/interfaces.md): `__call__` (one frame), `keypoints` (E: source
    and driving points), `detect` (E's points on an image under its own condition),
    `encode_source` (the source side: G's pyramid and E's source points, once per portrait)
    and `animate` (a clip; a scan carrying the CAP context for the `full` variant).
    """

    config: ml_collections.ConfigDict

    def setup(self):
        m = self.config
        self.variant = m.variant
        if self.variant not in VARIANT_MOTIONS:
            raise ValueError(
                f"PECHead: config.model.variant={m.variant!r}, expected one of "
                f"{tuple(VARIANT_MOTIONS)}"
            )
        if m.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"PECHead: config.model.dtype={m.dtype!r}, expected float32/bfloat16")
        if m.keypoints not in KEYPOINT_ESTIMATORS:
            raise ValueError(
                f"PECHead: config.model.keypoints={m.keypoints!r}, expected one of "
                f"{KEYPOINT_ESTIMATORS}"
            )
        dtype = jnp.dtype(m.dtype)
        estimator = PoseKeypointEstimator if m.keypoints == "pose" else KeypointEstimator
        extra = {"pose_dim": m.pose_dim} if m.keypoints == "pose" else {}
        self.keypoint_estimator = estimator(
            num_keypoints=m.num_keypoints,
            scale=m.kp_scale,
            block_expansion=m.kp_block_expansion,
            max_features=m.kp_max_features,
            num_blocks=m.kp_num_blocks,
            condition_features=m.condition_features,
            temperature=m.kp_temperature,
            dtype=dtype,
            **extra,
        )
        # Landmarks get their own (finer) heatmaps and motion resolution: eyelid and lip
        # points are a few pixels apart (docs/model.md, "Landmarks").
        scale = {"kp": m.motion_scale, "lmk": m.landmark_motion_scale, "direct": m.motion_scale}
        variance = {
            "kp": m.heatmap_variance,
            "lmk": m.landmark_heatmap_variance,
            "direct": m.heatmap_variance,
        }
        self.motion = {
            name: DenseMotion(
                scale=scale[name],
                block_expansion=m.motion_block_expansion,
                max_features=m.motion_max_features,
                num_blocks=m.motion_num_blocks,
                variance=variance[name],
                num_levels=m.num_down_blocks + 1,
                use_occlusion=m.use_occlusion,
                dtype=dtype,
                name=f"motion_{name}",
            )
            for name in VARIANT_MOTIONS[self.variant]
        }
        self.generator = Generator(
            variant=m.variant,
            block_expansion=m.block_expansion,
            max_features=m.max_features,
            num_down_blocks=m.num_down_blocks,
            num_bottleneck_blocks=m.num_bottleneck_blocks,
            cap_features=m.cap_features,
            cap_level=m.cap_level,
            composite=m.composite,
            blend_bias=m.blend_bias,
            source_padding=m.source_padding,
            dtype=dtype,
        )

    def _check_inputs(self, source: Array, source_cond: Array, source_landmarks: Array) -> None:
        m = self.config
        _check("source", source, (None, None, None, 3))
        b = source.shape[0]
        _check("source_cond", source_cond, (b, m.pose_dim + m.expression_dim))
        _check("source_landmarks", source_landmarks, (b, m.num_landmarks, 2))

    def keypoints(self, image: Array, source_cond: Array, driving_cond: Array):
        """E: `image [B,H,W,3]`, `source_cond [B,C]`, `driving_cond [B,...,C]` ->
        (source keypoints `[B,K,2]`, driving keypoints `[B,...,K,2]`)."""
        return self.keypoint_estimator(image, source_cond, driving_cond)

    def encode_source(self, source: Array) -> dict:
        """The source side, which no driving frame changes: `source [B,H,W,3]` -> `pyramid`
        (G's encoder, a list per level) and `points` (E's `encode`: the 3D points `[B,K,3]`
        for the pose E). Compute it once per portrait and pass it to `animate`."""
        return {
            "pyramid": self.generator.encode(source),
            "points": self.keypoint_estimator.encode(source),
        }

    def detect(self, image: Array, cond: Array) -> Array:
        """E's points on `image [B,H,W,3]` under its own condition `[B,C]` -> `[B,K,2]`
        (the equivariance loss's view of E)."""
        return self.keypoint_estimator.detect(image, cond)

    def _point_sets(self, source_cond, driving_cond, source_kp, driving_kp, source_lmk,
                    driving_lmk) -> tuple[dict, Array | None]:
        """The (source, driving) point sets of each motion network, with the head centre
        appended when `head_motion`, and the local affine `[B,2,2]` of every point (None
        without `local_affine`: translations)."""
        m = self.config
        p = m.pose_dim
        sets = {
            "kp": (source_kp, driving_kp),
            "lmk": (source_lmk.astype(jnp.float32), driving_lmk.astype(jnp.float32)),
        }
        sets["direct"] = tuple(jnp.concatenate([a, b], axis=1) for a, b in zip(*sets.values()))
        if m.head_motion:
            # The rigid head motion from R's pose as one more candidate (hair, neck).
            head = (source_cond[:, None, 4:6], driving_cond[:, None, 4:6])
            sets = {
                k: tuple(jnp.concatenate([pts, c.astype(pts.dtype)], axis=1)
                         for pts, c in zip(v, head))
                for k, v in sets.items()
            }
        affine = None
        if m.local_affine:
            affine = geometry.backward_affine(source_cond[:, :p], driving_cond[:, :p])[..., :2]
        return {k: sets[k] for k in self.motion}, affine

    def _frame(
        self,
        source: Array,
        pyramid: list[Array],
        source_cond: Array,
        driving_cond: Array,
        source_kp: Array,
        driving_kp: Array,
        source_landmarks: Array,
        driving_landmarks: Array,
        context: dict | None,
    ) -> dict:
        """One frame from the precomputed source pyramid and keypoints."""
        points, affine = self._point_sets(
            source_cond, driving_cond, source_kp, driving_kp, source_landmarks, driving_landmarks
        )
        motions = {}
        for name, net in self.motion.items():
            src, drv = points[name]
            affines = None if affine is None else jnp.broadcast_to(
                affine[:, None], (src.shape[0], src.shape[1], 2, 2)
            )
            motions[name] = net(source, src, drv, affines)
        features, context_motion = None, None
        if self.variant == "full" and context is not None:
            features = context["features"]
            # Displacement to the previous frame: each pixel follows its points' motion,
            # mixed by the same masks that built the current flow.
            context_motion = {
                name: context_displacement(
                    motions[name]["masks"], context["points"][name], points[name][1]
                )
                for name in ("kp", "lmk")
            }
        out = self.generator(source, pyramid, motions, features, context_motion)
        height, width = source.shape[1:3]
        flows = {name: mo["flow"] for name, mo in motions.items()}
        result = {
            "image": out["image"],
            "source_keypoints": source_kp,
            "driving_keypoints": driving_kp,
            "flows": flows,
            "warped": {
                name: layers.warp(source, resize_flow(flow, (height, width)))
                for name, flow in flows.items()
            },
            "warped_source": out["warped_source"],
            "blend": out["blend"],
            "occlusions": out["occlusions"],
        }
        if self.variant == "full":
            result["context"] = {
                "features": out["context"],
                "points": {name: points[name][1].astype(jnp.float32) for name in ("kp", "lmk")},
            }
            if "previous_grid" in out:
                result["previous_grid"] = out["previous_grid"]
        return result

    def initial_context(self, source: Array, source_cond: Array, source_landmarks: Array,
                        driving_cond: Array, driving_landmarks: Array,
                        encoded: dict | None = None) -> dict:
        """The CAP context before the first frame `driving_cond [B,C]`: zero features and
        that frame's own points (zero motion into the first frame). `encoded`: as `animate`."""
        b, height, width = source.shape[:3]
        points = self.keypoint_estimator.encode(source) if encoded is None else encoded["points"]
        source_kp, driving_kp = self.keypoint_estimator.from_encoded(
            points, source_cond, driving_cond
        )
        points, _ = self._point_sets(
            source_cond, driving_cond, source_kp, driving_kp, source_landmarks, driving_landmarks
        )
        return {
            "features": jnp.zeros(self.generator.context_shape(b, height, width), jnp.float32),
            "points": {name: points[name][1].astype(jnp.float32) for name in ("kp", "lmk")},
        }

    def __call__(
        self,
        source: Array,
        source_cond: Array,
        source_landmarks: Array,
        driving_cond: Array,
        driving_landmarks: Array,
        context: dict | None = None,
    ) -> dict:
        """One frame. `source [B,H,W,3]`, conds `[B,C]`, landmarks `[B,N,2]`.

        `context` (full only): the previous call's `context` (None: no CAP context, as
        before training's first frame; `initial_context` gives the zero one). Returns
        `image`, `source_keypoints`, `driving_keypoints`, `flows`, `warped`, `warped_source`,
        `blend`, `occlusions` and, for `full`, `context` (and `previous_grid [B,H,W,2]`, the
        grid from this frame to the previous one, when a context was given).
        """
        self._check_inputs(source, source_cond, source_landmarks)
        _check("driving_cond", driving_cond, source_cond.shape)
        _check("driving_landmarks", driving_landmarks, source_landmarks.shape)
        source_kp, driving_kp = self.keypoints(source, source_cond, driving_cond)
        pyramid = self.generator.encode(source)
        return self._frame(
            source, pyramid, source_cond, driving_cond, source_kp, driving_kp,
            source_landmarks, driving_landmarks, context,
        )

    def animate(
        self,
        source: Array,
        source_cond: Array,
        source_landmarks: Array,
        driving_cond: Array,
        driving_landmarks: Array,
        context: dict | None = None,
        encoded: dict | None = None,
    ) -> dict:
        """A clip: `driving_cond [B,T,C]`, `driving_landmarks [B,T,N,2]` -> dict.

        Returns `image [B,T,H,W,3]`, `driving_keypoints [B,T,K,2]`, `source_keypoints
        [B,K,2]`, `warped` (per motion, `[B,T,H,W,3]`) and, for `full`, `previous_grid
        [B,T,H,W,2]` and `context` (CAP's context after the last frame). E and the source
        pyramid run once per clip; for `full` a scan over T carries the CAP context: from
        `context` (a previous chunk's, so that a long video runs as fixed-size chunks) or,
        when None, the zero one at the first frame. Other variants render all frames as one
        batch (`context` must be None). `encoded`: `encode_source(source)`, computed once per
        portrait (None: computed here).
        """
        self._check_inputs(source, source_cond, source_landmarks)
        b = source.shape[0]
        _check("driving_cond", driving_cond, (b, None, source_cond.shape[-1]))
        t = driving_cond.shape[1]
        _check("driving_landmarks", driving_landmarks, (b, t, *source_landmarks.shape[1:]))
        if encoded is None:
            encoded = self.encode_source(source)
        source_kp, driving_kp = self.keypoint_estimator.from_encoded(
            encoded["points"], source_cond, driving_cond
        )
        pyramid = encoded["pyramid"]

        def tile(x):
            return jnp.repeat(x[:, None], t, axis=1).reshape(b * t, *x.shape[1:])

        def frames(x):
            return x.reshape(b * t, *x.shape[2:])

        def clips(x):
            return x.reshape(b, t, *x.shape[1:])

        if self.variant != "full":
            if context is not None:
                raise ValueError(f"PECHead.animate: a context is only carried by the 'full' "
                                 f"variant, not {self.variant!r}")
            out = self._frame(
                tile(source), [tile(f) for f in pyramid], tile(source_cond),
                frames(driving_cond), tile(source_kp), frames(driving_kp),
                tile(source_landmarks), frames(driving_landmarks), None,
            )
            return {
                "image": clips(out["image"]),
                "driving_keypoints": driving_kp,
                "source_keypoints": source_kp,
                "warped": {k: clips(v) for k, v in out["warped"].items()},
            }

        if context is None:
            context = self.initial_context(
                source, source_cond, source_landmarks, driving_cond[:, 0],
                driving_landmarks[:, 0], encoded,
            )

        def step(module, carry, inputs):
            cond, kp, landmarks = inputs
            out = module._frame(
                source, pyramid, source_cond, cond, source_kp, kp, source_landmarks,
                landmarks, carry,
            )
            keep = (out["image"], out["warped"], out["previous_grid"])
            return out["context"], keep

        scan = nn.scan(
            step,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=0,
            out_axes=1,
        )
        inputs = tuple(jnp.swapaxes(x, 0, 1) for x in (driving_cond, driving_kp, driving_landmarks))
        context, (images, warped, previous_grid) = scan(self, context, inputs)
        return {
            "context": context,
            "image": images,
            "driving_keypoints": driving_kp,
            "source_keypoints": source_kp,
            "warped": warped,
            "previous_grid": previous_grid,
        }


# ----------------------------------------------------------------------------- batches

BATCH_KEYS = (
    "source", "driving", "source_pose", "driving_pose", "source_expression",
    "driving_expression", "source_landmarks", "driving_landmarks",
)


def conditions(batch: Mapping[str, Array]) -> tuple[Array, Array]:
    """(source_cond `[B,C]`, driving_cond `[B,C]` or `[B,T,C]`) from pose + expression."""
    return (
        make_condition(batch["source_pose"], batch["source_expression"]),
        make_condition(batch["driving_pose"], batch["driving_expression"]),
    )


def model_inputs(batch: Mapping[str, Array]) -> tuple[Array, ...]:
    """The model's positional arguments from a batch: `(source, source_cond,
    source_landmarks, driving_cond, driving_landmarks)`, for `__call__` and `animate` alike."""
    source_cond, driving_cond = conditions(batch)
    return (batch["source"], source_cond, batch["source_landmarks"], driving_cond,
            batch["driving_landmarks"])


def apply_to_batch(model: PECHead, params, batch: Mapping[str, Array]) -> dict:
    """Run the model on a batch: `__call__` for frame pairs, `animate` for clips
    (`batch['driving_pose']` of rank 3)."""
    method = PECHead.animate if batch["driving_pose"].ndim == 3 else None
    return model.apply({"params": params}, *model_inputs(batch), method=method)


def dummy_batch(
    model_config: ml_collections.ConfigDict, batch: int = 1, clip_length: int | None = None
) -> dict[str, np.ndarray]:
    """Zeros shaped like a batch (docs/interfaces.md): frame pairs, or clips of
    `clip_length` driving frames."""
    m = model_config
    r = m.resolution
    t = (clip_length,) if clip_length else ()
    shapes = {
        "source": (batch, r, r, 3),
        "source_pose": (batch, m.pose_dim),
        "source_expression": (batch, m.expression_dim),
        "source_landmarks": (batch, m.num_landmarks, 2),
    }
    shapes.update({k.replace("source", "driving"): (batch, *t, *s[1:]) for k, s in shapes.items()})
    return {k: np.zeros(s, np.float32) for k, s in shapes.items()}
