"""PECHead: E (learned keypoints), the dense-motion networks and G in one linen module."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from pechead_jax.models import layers
from pechead_jax.models.generator import VARIANT_MOTIONS, Generator
from pechead_jax.models.keypoints import KeypointEstimator
from pechead_jax.models.motion import DenseMotion, resize_flow

Array = jax.Array


def _check(name: str, x: Array, shape: tuple) -> None:
    """Raise a ValueError naming `name` unless `x.shape` matches `shape` (None = any)."""
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "[" + ",".join("?" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"PECHead: {name} must have shape {want}, got {tuple(x.shape)}")


class PECHead(nn.Module):
    """The generator side of PECHead, configured by `config.model` (see configs/common.py).

    Methods (shapes in docs/interfaces.md): `__call__` (one frame), `keypoints` (E alone)
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
        dtype = jnp.dtype(m.dtype)
        self.keypoint_estimator = KeypointEstimator(
            num_keypoints=m.num_keypoints,
            scale=m.kp_scale,
            block_expansion=m.kp_block_expansion,
            max_features=m.kp_max_features,
            num_blocks=m.kp_num_blocks,
            condition_features=m.condition_features,
            temperature=m.kp_temperature,
            dtype=dtype,
        )
        self.motion = {
            name: DenseMotion(
                scale=m.motion_scale,
                block_expansion=m.motion_block_expansion,
                max_features=m.motion_max_features,
                num_blocks=m.motion_num_blocks,
                variance=m.heatmap_variance,
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
            dtype=dtype,
        )

    def _check_inputs(self, source: Array, source_cond: Array, source_landmarks: Array) -> None:
        m = self.config
        _check("source", source, (None, None, None, 3))
        b = source.shape[0]
        _check("source_cond", source_cond, (b, m.pose_dim + m.expression_dim))
        _check("source_landmarks", source_landmarks, (b, m.num_landmarks, 2))

    def keypoints(self, image: Array, cond: Array) -> Array:
        """E alone: `image [B,H,W,3]`, `cond [B,C]` -> keypoints `[B,K,2]`."""
        return self.keypoint_estimator(image, cond)

    def _motions(self, source, source_kp, driving_kp, source_lmk, driving_lmk) -> dict:
        points = {
            "kp": (source_kp, driving_kp),
            "lmk": (source_lmk, driving_lmk),
            "direct": (
                jnp.concatenate([source_kp, source_lmk.astype(source_kp.dtype)], axis=1),
                jnp.concatenate([driving_kp, driving_lmk.astype(driving_kp.dtype)], axis=1),
            ),
        }
        return {name: net(source, *points[name]) for name, net in self.motion.items()}

    def _frame(
        self,
        source: Array,
        pyramid: list[Array],
        source_kp: Array,
        driving_kp: Array,
        source_landmarks: Array,
        driving_landmarks: Array,
        context: dict | None,
    ) -> dict:
        """One frame from the precomputed source pyramid and keypoints."""
        motions = self._motions(source, source_kp, driving_kp, source_landmarks, driving_landmarks)
        features, context_motion = None, None
        if self.variant == "full" and context is not None:
            features = context["features"]
            # Displacement to the previous frame: each pixel follows its points' motion,
            # mixed by the same masks that built the current flow.
            previous = {"kp": context["keypoints"], "lmk": context["landmarks"]}
            current = {"kp": driving_kp, "lmk": driving_landmarks}
            context_motion = {
                name: jnp.einsum(
                    "bhwn,bnc->bhwc",
                    motions[name]["masks"][..., :-1],
                    (previous[name] - current[name]).astype(jnp.float32),
                )
                for name in ("kp", "lmk")
            }
        out = self.generator(pyramid, motions, features, context_motion)
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
            "occlusions": out["occlusions"],
        }
        if self.variant == "full":
            result["context"] = {
                "features": out["context"],
                "keypoints": driving_kp,
                "landmarks": driving_landmarks.astype(jnp.float32),
            }
        return result

    def __call__(
        self,
        source: Array,
        source_cond: Array,
        driving_cond: Array,
        source_landmarks: Array,
        driving_landmarks: Array,
        context: dict | None = None,
    ) -> dict:
        """One frame. `source [B,H,W,3]`, conds `[B,C]`, landmarks `[B,N,2]`.

        `context` (full only): the previous call's `context` (None for the first frame: a
        zero context). Returns `image`, `source_keypoints`, `driving_keypoints`, `flows`,
        `warped`, `occlusions` and, for `full`, `context`.
        """
        self._check_inputs(source, source_cond, source_landmarks)
        _check("driving_cond", driving_cond, source_cond.shape)
        _check("driving_landmarks", driving_landmarks, source_landmarks.shape)
        b = source.shape[0]
        # One E call for both conditions: the driving keypoints come from the source image.
        keypoints = self.keypoints(
            jnp.concatenate([source, source]), jnp.concatenate([source_cond, driving_cond])
        )
        source_kp, driving_kp = keypoints[:b], keypoints[b:]
        pyramid = self.generator.encode(source)
        return self._frame(
            source, pyramid, source_kp, driving_kp, source_landmarks, driving_landmarks, context
        )

    def animate(
        self,
        source: Array,
        source_cond: Array,
        source_landmarks: Array,
        driving_conds: Array,
        driving_landmarks: Array,
    ) -> dict:
        """A clip: `driving_conds [B,T,C]`, `driving_landmarks [B,T,N,2]` -> dict.

        Returns `image [B,T,H,W,3]` and `driving_keypoints [B,T,K,2]`. For `full` a scan
        over T carries the CAP context (zero at the first frame); the source keypoints and
        the source pyramid are computed once. Other variants run all frames as one batch.
        """
        self._check_inputs(source, source_cond, source_landmarks)
        b = source.shape[0]
        _check("driving_conds", driving_conds, (b, None, source_cond.shape[-1]))
        t = driving_conds.shape[1]
        _check("driving_landmarks", driving_landmarks, (b, t, *source_landmarks.shape[1:]))

        if self.variant != "full":

            def tile(x):
                return jnp.repeat(x[:, None], t, axis=1).reshape(b * t, *x.shape[1:])

            out = self(
                tile(source),
                tile(source_cond),
                driving_conds.reshape(b * t, -1),
                tile(source_landmarks),
                driving_landmarks.reshape(b * t, *driving_landmarks.shape[2:]),
            )
            return {
                "image": out["image"].reshape(b, t, *out["image"].shape[1:]),
                "driving_keypoints": out["driving_keypoints"].reshape(b, t, -1, 2),
            }

        source_kp = self.keypoints(source, source_cond)
        pyramid = self.generator.encode(source)
        height, width = source.shape[1:3]
        context = {
            "features": jnp.zeros(self.generator.context_shape(b, height, width), jnp.float32),
            # Previous points = the first frame's: zero motion into the first frame.
            "keypoints": self.keypoints(source, driving_conds[:, 0]),
            "landmarks": driving_landmarks[:, 0].astype(jnp.float32),
        }

        def step(module, carry, inputs):
            cond, landmarks = inputs
            driving_kp = module.keypoints(source, cond)
            out = module._frame(
                source, pyramid, source_kp, driving_kp, source_landmarks, landmarks, carry
            )
            return out["context"], (out["image"], driving_kp)

        scan = nn.scan(
            step,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=0,
            out_axes=1,
        )
        inputs = (jnp.swapaxes(driving_conds, 0, 1), jnp.swapaxes(driving_landmarks, 0, 1))
        _, (images, keypoints) = scan(self, context, inputs)
        return {"image": images, "driving_keypoints": keypoints}
