"""Video decoding, face detection and tracking, clip cutting and square cropping.

One video goes through `find_clips` (decode, detect on downscaled frames, track boxes by IoU,
cut at lost faces and shot changes) and `crop_clip` (a fixed square box per clip, resized to
the output resolution). Problems a user can act on raise `VideoError` with a short reason
that ends up in the manifest.
"""

from __future__ import annotations

import dataclasses
import os
import time
import zipfile
from collections.abc import Iterator

import cv2
import numpy as np

from pechead_jax import face_analyser

DETECT_MAX_SIDE = 320  # frames are downscaled to this longest side for detection
KEEP_FRAMES_BYTES = 768 << 20  # decode once and keep frames when the video fits in this


class VideoError(Exception):
    """A video that cannot be used; `str(e)` is the manifest reason."""


@dataclasses.dataclass
class VideoInfo:
    fps: float
    width: int
    height: int
    frame_count: int  # as the container reports it (may be wrong for broken files)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Open `path` and read its header; raises VideoError for empty or unreadable files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError("missing file")
    if os.path.getsize(path) == 0:
        raise VideoError("empty file (0 bytes)")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoError(_unreadable_reason(path))
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    if width <= 0 or height <= 0:
        raise VideoError("not a readable video (no frame size)")
    if not np.isfinite(fps) or fps <= 0 or fps > 1000:
        fps = 25.0  # a broken header; timestamps only need to be monotone
    return VideoInfo(fps=fps, width=width, height=height, frame_count=count)


def _unreadable_reason(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(512)
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "not a video (a text file)"
    return "not a readable video (truncated or corrupt)"


def read_frames(
    path: str | os.PathLike, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, RGB uint8 [H,W,3]) for frames in [start, end), sequentially.

    Frames before `start` are skipped with `grab()` (exact, unlike seeking by frame number,
    which lands on keyframes for many codecs). Grayscale videos come out as 3 equal channels.
    """
    cap = cv2.VideoCapture(os.fspath(path))
    try:
        index = 0
        while end is None or index < end:
            if index < start:
                if not cap.grab():
                    return
                index += 1
                continue
            ok, bgr = cap.read()
            if not ok or bgr is None:
                return
            if bgr.ndim == 2:
                bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
            yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()


class FaceDetector:
    """MediaPipe's short-range face detector (the one inside the landmarker bundle)."""

    def __init__(self, model_path: str | os.PathLike | None = None, min_confidence: float = 0.8):
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        path = face_analyser.find_face_landmarker(model_path)
        with zipfile.ZipFile(path) as z:
            buffer = z.read("face_detector.tflite")
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_buffer=buffer),
            min_detection_confidence=min_confidence,
        )
        self._detector = vision.FaceDetector.create_from_options(options)

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None

    def detect(self, image_rgb: np.ndarray) -> np.ndarray:
        """Faces in `image_rgb [H,W,3]` as `[n, 5]` (x0, y0, x1, y1, score) in its pixels."""
        import mediapipe as mp

        h, w = image_rgb.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = image_rgb
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(small))
        boxes = []
        for d in self._detector.detect(image).detections:
            b = d.bounding_box
            box = np.array([b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height])
            boxes.append([*(box / scale), d.categories[0].score])
        return np.asarray(boxes, np.float32).reshape(-1, 5)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def colour_histogram(image_rgb: np.ndarray) -> np.ndarray:
    """Normalised hue-saturation histogram (16x16) of a (small) frame, for shot changes."""
    hsv = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [16, 16], [0, 180, 0, 256]).ravel()
    return hist / max(hist.sum(), 1.0)


@dataclasses.dataclass
class Track:
    """A face followed over consecutive frames: `boxes [T,4]` from frame `start` on."""

    start: int
    boxes: list
    last_seen: int

    @property
    def end(self) -> int:
        return self.start + len(self.boxes)

    @property
    def side(self) -> float:
        b = np.asarray(self.boxes)
        return float(np.median(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))


@dataclasses.dataclass
class ClipPlan:
    """A clip to cut: frames [start, end) of the video, square `box` (x0, y0, side) in source
    pixels, and the detector's face `boxes [T,4]` (source pixels) for plausibility checks."""

    start: int
    end: int
    box: tuple[float, float, float]
    boxes: np.ndarray


@dataclasses.dataclass
class ScanResult:
    clips: list[ClipPlan]
    frames_read: int
    faces_seen: int  # frames with at least one detection
    frames: list | None  # the decoded frames, when small enough to keep
    first_index: int
    grayscale: bool
    rejected: dict  # reason -> count of tracks dropped


def scan_video(
    path: str | os.PathLike,
    detector: FaceDetector,
    *,
    start: int = 0,
    end: int | None = None,
    min_clip_frames: int = 16,
    max_clip_frames: int = 300,
    min_face_size: float = 64.0,
    margin: float = 2.0,
    iou_threshold: float = 0.3,
    max_gap: int = 2,
    shot_threshold: float = 0.5,
    keep_frames: bool = True,
    timings: dict | None = None,
) -> ScanResult:
    """Decode, detect, track and cut one video into clip plans (see the module docstring).

    A track ends when its face is unmatched for more than `max_gap` frames (short detector
    misses are bridged by interpolation) or at a shot change (the Bhattacharyya distance of
    consecutive colour histograms above `shot_threshold`). Where tracks overlap in time the
    one with the larger face wins. `timings` (optional) accumulates seconds per stage.
    """
    timings = {} if timings is None else timings
    timings.setdefault("decode", 0.0)
    timings.setdefault("detect_track", 0.0)
    info = probe(path)
    # Keep decoded frames for the crop stage when they surely fit in memory (an unknown frame
    # count, as some containers report, means decoding twice rather than risking it).
    span = (info.frame_count if end is None else min(end, info.frame_count)) - start
    keep = (
        keep_frames
        and 0 < info.frame_count
        and span * info.width * info.height * 3 <= KEEP_FRAMES_BYTES
    )
    frames: list | None = [] if keep else None
    active: list[Track] = []
    done: list[Track] = []
    prev_hist = None
    n = faces_seen = 0
    first_index = start
    grayscale = True
    frame_iter = read_frames(path, start, end)
    while True:
        t = time.perf_counter()
        nxt = next(frame_iter, None)
        timings["decode"] += time.perf_counter() - t
        if nxt is None:
            break
        index, rgb = nxt
        t = time.perf_counter()
        if n == 0:
            first_index = index
        n += 1
        if frames is not None:
            frames.append(rgb)
        if grayscale and n <= 8:
            small = rgb[::8, ::8].astype(np.int16)
            grayscale = bool(np.abs(small - small[..., :1]).max() <= 8)
        dets = detector.detect(rgb)
        hist = colour_histogram(rgb[::4, ::4])
        if prev_hist is not None:
            d = cv2.compareHist(prev_hist, hist, cv2.HISTCMP_BHATTACHARYYA)
            if d > shot_threshold:  # a cut: no track may continue across it
                done.extend(active)
                active = []
        prev_hist = hist
        if len(dets):
            faces_seen += 1
        matched = set()
        for det in sorted(dets, key=lambda x: -x[4]):
            best, best_iou = None, iou_threshold
            for k, tr in enumerate(active):
                if k not in matched:
                    overlap = iou(np.asarray(tr.boxes[-1]), det[:4])
                    if overlap >= best_iou:
                        best, best_iou = k, overlap
            if best is None:
                active.append(Track(start=index, boxes=[det[:4].copy()], last_seen=index))
                matched.add(len(active) - 1)
                continue
            tr = active[best]
            gap = index - tr.last_seen - 1
            last = np.asarray(tr.boxes[-1])
            for g in range(1, gap + 1):  # bridge a short detector miss linearly
                tr.boxes.append(last + (det[:4] - last) * g / (gap + 1))
            tr.boxes.append(det[:4].copy())
            tr.last_seen = index
            matched.add(best)
        still = []
        for tr in active:
            if index - tr.last_seen > max_gap:
                done.append(tr)
            else:
                still.append(tr)
        active = still
        timings["detect_track"] += time.perf_counter() - t
    done.extend(active)
    if n == 0:
        raise VideoError("no decodable frames (truncated or not a video)")
    clips, rejected = _plan_clips(
        done, info, min_clip_frames, max_clip_frames, min_face_size, margin
    )
    return ScanResult(clips, n, faces_seen, frames, first_index, grayscale, rejected)


def _plan_clips(tracks, info, min_frames, max_frames, min_face_size, margin):
    rejected = {"face too small": 0, "clip too short": 0}
    candidates = []
    for tr in tracks:
        if len(tr.boxes) < min_frames:
            rejected["clip too short"] += 1
        elif tr.side < min_face_size:
            rejected["face too small"] += 1
        else:
            candidates.append(tr)
    candidates.sort(key=lambda t: -t.side)
    taken: list[Track] = []
    for tr in candidates:
        if all(tr.end <= o.start or tr.start >= o.end for o in taken):
            taken.append(tr)
    clips = []
    for tr in sorted(taken, key=lambda t: t.start):
        boxes = np.asarray(tr.boxes, np.float32)
        # Split long tracks into near-equal chunks no longer than max_frames.
        pieces = max(1, -(-len(boxes) // max_frames))
        bounds = np.linspace(0, len(boxes), pieces + 1).round().astype(int)
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b - a >= min_frames:
                clips.append(
                    ClipPlan(tr.start + a, tr.start + b, crop_box(boxes[a:b], margin), boxes[a:b])
                )
    return clips, rejected


def crop_box(boxes: np.ndarray, margin: float) -> tuple[float, float, float]:
    """One square (x0, y0, side) for a clip: `margin` x the median face-box side, centred on
    the median face centre moved up by a tenth of the side (the detector's box is centred
    below the head's centre: it spans brows to chin, not hair)."""
    cx = np.median((boxes[:, 0] + boxes[:, 2]) / 2)
    cy = np.median((boxes[:, 1] + boxes[:, 3]) / 2)
    side = margin * float(
        np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))
    )
    cy -= 0.1 * side
    return float(cx - side / 2), float(cy - side / 2), side


def crop(image_rgb: np.ndarray, box: tuple[float, float, float], resolution: int) -> np.ndarray:
    """The square `box` of `image_rgb`, resized to `resolution`; outside the frame is black."""
    x0, y0, side = box
    scale = resolution / side
    # One affine warp does crop, pad and resize; INTER_AREA-like quality comes from
    # pre-shrinking large downscales with pyrDown.
    src = image_rgb
    while scale < 0.5 and min(src.shape[:2]) > 2:
        src = cv2.pyrDown(src)
        x0, y0, side = x0 / 2, y0 / 2, side / 2
        # pyrDown maps pixel centre i to (i - 0.5) / 2 + 0.5 approximately; ignored here:
        # a quarter-pixel shift of the crop is below what anything downstream can see.
        scale = resolution / side
    m = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]], np.float32)
    return cv2.warpAffine(
        src, m, (resolution, resolution), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


def box_to_crop(boxes: np.ndarray, box: tuple[float, float, float], resolution: int) -> np.ndarray:
    """Face boxes `[T,4]` in source pixels -> the same boxes in crop pixels."""
    x0, y0, side = box
    s = resolution / side
    return (boxes - np.array([x0, y0, x0, y0], np.float32)) * s
