"""The paper's evaluation protocols as lists of cases (docs/evaluation.md, "Protocols").

A case is what one generator call renders and what its frames are measured against:
- `reconstruction` (Table 1): frame 0 of each test clip is the source, the clip drives it
  (absolute pose, expression and landmarks); frames 1..T-1 are compared with the real ones.
- `cross_identity` (Table 2): each test clip drives the frame 0 of a test clip of *another
  video*, chosen by a seeded draw (`cross_identity_pairs`); relative motion by default, as
  `animate`; frames 1..T-1 are measured against the driving clip (pose, action units) and
  the source (identity).
- `editing` (Table 3): frame 0 of each test clip re-posed by each of `EDIT_POSES` and
  re-expressed by each of `EDIT_EXPRESSIONS`, one still per edit; measured against the
  requested angles and action units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from pechead_jax import inference
from pechead_jax.face_analyser import BLENDSHAPE_NAMES

PROTOCOLS = ("reconstruction", "cross_identity", "editing")
PAIRING_SEED = 0

# Pose edits, as changes (degrees) of (yaw, pitch, roll) from the source's own pose: the
# request is the source's pose plus the change, and ARE is measured against the analyser's
# angles of the source plus the change (so an output that does not move scores the change).
EDIT_POSES: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("yaw -30", (-30.0, 0.0, 0.0)),
    ("yaw -15", (-15.0, 0.0, 0.0)),
    ("yaw +15", (15.0, 0.0, 0.0)),
    ("yaw +30", (30.0, 0.0, 0.0)),
    ("pitch -15", (0.0, -15.0, 0.0)),
    ("pitch +15", (0.0, 15.0, 0.0)),
    ("roll -15", (0.0, 0.0, -15.0)),
    ("roll +15", (0.0, 0.0, 15.0)),
)
# Expression edits: blendshape scores set on the source's own expression ("neutral": all 0).
# AUH is measured against the action units of the requested blendshapes.
EDIT_EXPRESSIONS: tuple[tuple[str, Mapping[str, float] | None], ...] = (
    ("neutral", None),
    ("smile", {"mouthSmileLeft": 0.8, "mouthSmileRight": 0.8}),
    ("jaw open", {"jawOpen": 0.6}),
    ("eyes closed", {"eyeBlinkLeft": 0.9, "eyeBlinkRight": 0.9}),
)


@dataclasses.dataclass(frozen=True)
class TestClip:
    """One test clip as evaluation uses it: ids, its frame-0 source, its whole motion and
    its real frames `[T,H,W,3]` (a source-only entry of the pairing pass has one frame)."""

    clip_id: str
    video_id: str
    source: inference.Source
    motion: inference.Motion
    frames: np.ndarray


@dataclasses.dataclass(frozen=True)
class Request:
    """What a generator is asked to render: `source` animated by `motion` (`mode` as in
    `Animator.reenact`). `driving` holds the real driving frames `[T,H,W,3]` when the motion
    comes from a video (None for edits); `independent` asks for every frame rendered on its
    own (edits: no temporal context between unrelated stills)."""

    source: inference.Source
    motion: inference.Motion
    mode: str = "absolute"
    driving: np.ndarray | None = None
    independent: bool = False


@dataclasses.dataclass(frozen=True)
class Case:
    """One generator call of a protocol and what its output is measured against.

    `keep` selects the measured output frames (frames 1..T-1 for video protocols).
    Reconstruction: `target` (real frames). Cross-identity: `driving` (real frames, for pose
    and action units) and `source_clip`/`driving_clip` ids. Editing: `pose_change [T,3]`
    degrees (zero rows for expression edits) and `expression [T,E]` requested, `edit` names.
    """

    protocol: str
    request: Request
    keep: slice
    target: np.ndarray | None = None
    source_clip: str = ""
    driving_clip: str = ""
    pose_change: np.ndarray | None = None
    expression: np.ndarray | None = None
    edits: tuple[str, ...] = ()


def reconstruction_cases(clip: TestClip) -> list[Case]:
    """Table 1: the clip reconstructs itself from its frame 0 (none for a 1-frame clip)."""
    if len(clip.frames) < 2:
        return []
    return [Case("reconstruction", Request(clip.source, clip.motion, "absolute", clip.frames),
                 slice(1, None), target=clip.frames[1:], source_clip=clip.clip_id,
                 driving_clip=clip.clip_id)]


def cross_identity_pairs(video_ids: Sequence[str], seed: int = PAIRING_SEED) -> list[int]:
    """For every clip (by its `video_ids` entry, in split order) the index of its source
    clip, drawn uniformly among the clips of other videos by `np.random.default_rng(seed)`:
    the pairing is fixed by the split and the seed. Raises with fewer than two videos."""
    if len(set(video_ids)) < 2:
        raise ValueError(
            f"cross_identity needs test clips of at least 2 videos (identities); this split "
            f"has {len(video_ids)} clip(s) of {len(set(video_ids))} video(s)"
        )
    rng = np.random.default_rng(seed)
    pairs = []
    for video in video_ids:
        others = [j for j, v in enumerate(video_ids) if v != video]
        pairs.append(others[int(rng.integers(len(others)))])
    return pairs


def cross_identity_cases(driving: TestClip, source: TestClip, mode: str = "relative"
                         ) -> list[Case]:
    """Table 2: `driving` drives `source`'s frame 0 (another video's: `cross_identity_pairs`).
    The motion carries no landmarks: they are rebuilt with the source's identity."""
    if len(driving.frames) < 2:
        return []
    motion = inference.Motion(driving.motion.pose, driving.motion.expression)
    return [Case("cross_identity", Request(source.source, motion, mode, driving.frames),
                 slice(1, None), source_clip=source.clip_id, driving_clip=driving.clip_id)]


def edited_expression(source_expression: np.ndarray, scores: Mapping[str, float] | None
                      ) -> np.ndarray:
    """The source's expression `[E]` with `scores` set by blendshape name (None: all zero)."""
    if scores is None:
        return np.zeros_like(np.asarray(source_expression, np.float32))
    out = np.array(source_expression, np.float32)
    for name, value in scores.items():
        out[BLENDSHAPE_NAMES.index(name)] = value
    return out


def editing_cases(clip: TestClip) -> list[Case]:
    """Table 3: on the clip's frame 0, every edit of `EDIT_POSES` (expression kept), then of
    `EDIT_EXPRESSIONS` (pose kept): one case of 12 stills, each rendered on its own."""
    src = clip.source
    pose0 = np.asarray(src.pose, np.float32)
    changes = np.array([d for _, d in EDIT_POSES] + [(0.0, 0.0, 0.0)] * len(EDIT_EXPRESSIONS),
                       np.float32)
    pose = np.repeat(pose0[None], len(changes), 0)
    pose[:, :3] += np.radians(changes)
    expr = np.stack([np.asarray(src.expression, np.float32)] * len(EDIT_POSES)
                    + [edited_expression(src.expression, s) for _, s in EDIT_EXPRESSIONS])
    names = tuple(n for n, _ in EDIT_POSES) + tuple(n for n, _ in EDIT_EXPRESSIONS)
    return [Case("editing", Request(src, inference.Motion(pose, expr), independent=True),
                 slice(None), source_clip=clip.clip_id, pose_change=changes, expression=expr,
                 edits=names)]
