"""Pass 1 of data_prep, one video at a time: scan, crop, analyse, encode, cache.

`analyse_video` is the per-video function the process pool (or a distributed engine) runs.
It never raises for a bad video: it returns the manifest line, with status 'ok' (and a cache
file under DATA/.cache/) or 'skipped' and the reason. The cache holds everything pass 2
needs, so the face model can be fitted and the records written without decoding again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import time
import traceback

import cv2
import numpy as np

from data_prep import video as video_lib
from data_prep.recipes import VideoItem
from pechead_jax import face_analyser, fileio


@dataclasses.dataclass(frozen=True)
class Options:
    """Per-video settings (the CLI flags)."""

    resolution: int = 256
    min_clip_frames: int = 16
    max_clip_frames: int = 300
    min_face_size: float = 64.0
    margin: float = 2.0
    max_frames: int | None = None
    min_detection_confidence: float = 0.8
    min_landmark_iou: float = 0.25
    jpeg_quality: int = 95
    face_landmarker: str | None = None


def cache_path(cache_dir: str | os.PathLike, video_id: str) -> pathlib.Path:
    """A flat, filesystem-safe cache file name for a video id."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in video_id)[-80:]
    digest = hashlib.sha1(video_id.encode()).hexdigest()[:10]
    return pathlib.Path(cache_dir) / f"{safe}-{digest}.npz"


class Worker:
    """The MediaPipe models of one process, created once and reused for every video."""

    def __init__(self, options: Options):
        self.options = options
        self.detector = video_lib.FaceDetector(
            options.face_landmarker, options.min_detection_confidence
        )

    def close(self) -> None:
        self.detector.close()

    def __call__(self, item: VideoItem, cache_dir: str) -> dict:
        """The manifest line for `item`; writes the cache on success."""
        t0 = time.perf_counter()
        line = {"video_id": item.video_id, "path": item.path, "split": item.split}
        timings: dict[str, float] = {}
        try:
            result = self._analyse(item, cache_dir, timings)
            line.update(result)
        except video_lib.VideoError as e:
            line.update(status="skipped", reason=str(e))
        except Exception as e:  # noqa: BLE001 - a batch job must survive any one video
            line.update(
                status="failed",
                reason=f"{type(e).__name__}: {e}",
                traceback=traceback.format_exc(limit=4),
            )
        line["seconds"] = round(time.perf_counter() - t0, 3)
        line["timings"] = {k: round(v, 4) for k, v in timings.items()}
        return line

    def _analyse(self, item: VideoItem, cache_dir: str, timings: dict) -> dict:
        o = self.options
        end = item.end
        if o.max_frames is not None:
            end = item.start + o.max_frames if end is None else min(end, item.start + o.max_frames)
        scan = video_lib.scan_video(
            item.path,
            self.detector,
            start=item.start,
            end=end,
            min_clip_frames=o.min_clip_frames,
            max_clip_frames=o.max_clip_frames,
            min_face_size=o.min_face_size,
            margin=o.margin,
            timings=timings,
        )
        notes = ["grayscale"] if scan.grayscale else []
        base = {"frames_read": scan.frames_read, "notes": notes}
        if not scan.clips:
            if scan.faces_seen == 0:
                raise video_lib.VideoError("no face")
            worst = max(scan.rejected, key=scan.rejected.get)
            raise video_lib.VideoError(worst if scan.rejected[worst] else "no usable face track")
        info = video_lib.probe(item.path)
        arrays = self._analyse_clips(item, scan, info, timings)
        if arrays is None:
            raise video_lib.VideoError("face landmarks implausible or missing (no clip left)")
        t = time.perf_counter()
        fileio.save_npz(cache_path(cache_dir, item.video_id), **arrays)
        timings["write_cache"] = time.perf_counter() - t
        n_clips = int(arrays["clip"].max()) + 1
        return dict(base, status="ok", clips=n_clips, frames=int(len(arrays["clip"])))

    def _clip_frames(self, item: VideoItem, scan: video_lib.ScanResult, timings: dict):
        """Yield (clip number, plan, [frames]) from the scan's frames or one more decode pass
        (clips are sorted by start and do not overlap, so one sequential pass serves all)."""
        if scan.frames is not None:
            for k, plan in enumerate(scan.clips):
                a, b = plan.start - scan.first_index, plan.end - scan.first_index
                yield k, plan, scan.frames[a:b]
            return
        plans = iter(enumerate(scan.clips))
        k, plan = next(plans)
        frames: list = []
        t = time.perf_counter()
        for index, rgb in video_lib.read_frames(item.path, plan.start, scan.clips[-1].end):
            if index >= plan.start:
                frames.append(rgb)
            if index + 1 == plan.end:
                timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - t
                yield k, plan, frames
                t = time.perf_counter()
                frames = []
                nxt = next(plans, None)
                if nxt is None:
                    return
                k, plan = nxt

    def _analyse_clips(self, item, scan, info, timings) -> dict | None:
        o = self.options
        res = o.resolution
        jpegs, landmarks, blendshapes, clip_ids, frame_ids, boxes = [], [], [], [], [], []
        clip_count = 0
        for _, plan, frames in self._clip_frames(item, scan, timings):
            t = time.perf_counter()
            crops = [video_lib.crop(f, plan.box, res) for f in frames]
            timings["crop"] = timings.get("crop", 0.0) + time.perf_counter() - t
            face_boxes = video_lib.box_to_crop(plan.boxes, plan.box, res)
            t = time.perf_counter()
            results, last_ms = [], -1
            with face_analyser.FaceAnalyser(
                o.face_landmarker, video=True, min_detection_confidence=0.5
            ) as analyser:
                for i, img in enumerate(crops):
                    # Video mode needs strictly increasing timestamps; rounding may repeat one.
                    last_ms = max(int((plan.start + i) * 1000.0 / info.fps), last_ms + 1)
                    results.append(analyser.analyse(img, last_ms))
            timings["analyse"] = timings.get("analyse", 0.0) + time.perf_counter() - t
            valid = np.array(
                [
                    r is not None
                    and _plausible(r.landmarks, face_boxes[i], res, o.min_landmark_iou)
                    for i, r in enumerate(results)
                ]
            )
            # The clip is cut where the landmarks fail; runs long enough become clips.
            t = time.perf_counter()
            for a, b in _runs(valid):
                if b - a < o.min_clip_frames:
                    continue
                for i in range(a, b):
                    ok, buf = cv2.imencode(
                        ".jpg",
                        cv2.cvtColor(crops[i], cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, o.jpeg_quality],
                    )
                    if not ok:
                        raise RuntimeError("JPEG encoding failed")
                    jpegs.append(buf.tobytes())
                    landmarks.append(results[i].landmarks)
                    blendshapes.append(results[i].blendshapes)
                    clip_ids.append(clip_count)
                    frame_ids.append(plan.start + i)
                boxes.append(plan.box)
                clip_count += 1
            timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - t
        if not jpegs:
            return None
        offsets = np.cumsum([0] + [len(j) for j in jpegs]).astype(np.int64)
        return {
            "jpeg": np.frombuffer(b"".join(jpegs), np.uint8),
            "jpeg_offsets": offsets,
            "landmarks": np.stack(landmarks).astype(np.float32),
            "blendshapes": np.stack(blendshapes).astype(np.float32),
            "clip": np.asarray(clip_ids, np.int32),
            "frame_index": np.asarray(frame_ids, np.int32),
            "clip_boxes": np.asarray(boxes, np.float32),
            "fps": np.float32(info.fps),
            "resolution": np.int32(res),
        }


def _plausible(landmarks: np.ndarray, face_box: np.ndarray, res: int, min_iou: float) -> bool:
    """The landmarks lie on the tracked face: their extent overlaps the detector's box.

    Catches the landmarker holding on to text or another face after the tracked face left.
    """
    pts = landmarks[: face_analyser.NUM_MESH_VERTICES, :2] * res
    box = np.array([*pts.min(0), *pts.max(0)])
    return video_lib.iou(box, face_box) >= min_iou


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the runs of True in a boolean vector."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def load_cache(path: str | os.PathLike) -> dict:
    """A cache file as a dict of arrays, plus `jpegs` (list of bytes)."""
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    buf, off = data.pop("jpeg"), data.pop("jpeg_offsets")
    data["jpegs"] = [buf[off[i] : off[i + 1]].tobytes() for i in range(len(off) - 1)]
    return data
