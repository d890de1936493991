"""Animate a portrait with a driving video, or edit its head pose and expression by hand.

    python -m pechead_jax.animate --workdir W --source portrait.jpg --driving video.mp4 \\
        --output out.mp4 [--mode relative|absolute] [--paste_back] [--side_by_side]
    python -m pechead_jax.animate --workdir W --source portrait.jpg --yaw -30:30:7 \\
        --output sweep.png
    python -m pechead_jax.animate --workdir W --source portrait.jpg --frontalize --output f.png
    python -m pechead_jax.animate --workdir W --source portrait.jpg \\
        --expression jawOpen=0.5,mouthSmileLeft=0.4 --sweep 10 --output smile.mp4

The portrait is cropped around its largest face the way data_prep crops videos (MediaPipe's
face detector, a square of `--margin` x the face box, moved up a tenth), at the model's
resolution, and analysed by the face analyser: pose, expression (52 blendshapes) and the
identity code of the run's face model, whose reconstruction gives the source landmarks.

A driving video is decoded once, in a stream: one crop box from the faces of its first
`BOX_FRAMES` frames (as data_prep crops a clip with one box), each frame cropped and
analysed as it is read; only the per-frame geometry is kept, so memory does not grow with
the video's frames. Frames where the analyser loses the face hold the last good pose and
expression (counted and reported). `--mode relative` (the default) keeps the portrait's own
pose and expression and applies the driving video's changes from its first frame;
`--mode absolute` copies the driving pose and expression (`inference.relative_motion`).
Landmarks are reconstructed from the portrait's identity (cross-identity reenactment).
Frames are generated in fixed-size chunks (one compilation for any length; `full` carries
CAP's context between chunks) and written as they come, with a progress bar in frames/s.

Edits: `--yaw/--pitch/--roll` in degrees, absolute (`20`, `0`) or, with a sign, relative to
the portrait's own angle (`+10`, `-10`, `-30:30:7`); `A:B:N` is N values from A to B,
`A,B,C` a list. `--frontalize` sets yaw, pitch and roll to 0 (the rest kept). `--fov DEG`
re-renders the landmarks as if the portrait had been taken with that field of view at the
same head size (a camera-distance change; `inference.perspective_landmarks`).
`--expression NAME=SCORE,...` sets blendshapes. `--sweep N` turns single-valued edits into
an N-frame clip from the portrait as it is to the edit.

Output by extension: `.mp4` (H.264 with the driving video's sound and frame rate when an
ffmpeg is found, `pechead_jax.media`; `--side_by_side` adds the source and the driving
crop), or `.png` (a strip: the source, then each generated frame). `--paste_back` writes each
generated face into the full source photo (its size, the crop's inverse transform, a
feathered mask around the face, `paste_back`). Written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import pathlib
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pechead_jax import face_analyser, fileio, media
from pechead_jax.logging_utils import to_uint8

if TYPE_CHECKING:
    from pechead_jax import inference

EDIT_FPS = 10.0  # frame rate of an edit written as mp4
BOX_FRAMES = 25  # driving frames whose faces fix the crop box (buffered, then streamed)


class AnimateError(ValueError):
    """A user-facing problem with an input (file, face, value)."""


# ----------------------------------------------------------------------------- arguments


@dataclasses.dataclass(frozen=True)
class Angles:
    """Parsed `--yaw/--pitch/--roll` values: `degrees [T]`, `relative` (added to the
    portrait's own angle) when the text starts with a sign."""

    degrees: np.ndarray
    relative: bool


def parse_angles(text: str, name: str) -> Angles:
    """`"A:B:N"` (N values from A to B), `"A,B,C"` or `"A"` -> `Angles`; a leading `+` or `-`
    makes them relative to the portrait's angle (`+10`, `-30:30:7`)."""
    text = text.strip()
    try:
        if ":" in text:
            a, b, n = text.split(":")
            if int(n) < 1:
                raise ValueError
            degrees = np.linspace(float(a), float(b), int(n))
        else:
            degrees = np.asarray([float(v) for v in text.split(",")], np.float64)
    except ValueError:
        raise AnimateError(f"--{name} {text!r}: expected degrees as A:B:N, A,B,C or A (a "
                           "leading + or - makes them relative to the portrait)") from None
    if not np.all(np.isfinite(degrees)) or np.any(np.abs(degrees) > 180):
        raise AnimateError(f"--{name} {text!r}: angles must be finite, within +-180 degrees")
    return Angles(degrees, relative=text[:1] in "+-")


def parse_values(text: str, name: str, low: float, high: float) -> np.ndarray:
    """`"A:B:N"`, `"A,B,C"` or `"A"` -> `[T]`, each in [low, high] (e.g. `--fov`)."""
    values = parse_angles(text, name).degrees
    if np.any(values < low) or np.any(values > high):
        raise AnimateError(f"--{name} {text!r}: values must be in [{low:g}, {high:g}]")
    return values


def parse_expression(text: str) -> dict[str, float]:
    """`"jawOpen=0.5,eyeBlinkLeft=1"` -> {name: score}; names are `BLENDSHAPE_NAMES`."""
    names = face_analyser.BLENDSHAPE_NAMES
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise AnimateError(f"--expression: unknown blendshape {name!r}{hint} (the 52 names "
                               "are face_analyser.BLENDSHAPE_NAMES, e.g. jawOpen, "
                               "mouthSmileLeft, eyeBlinkRight)")
        try:
            score = float(value) if sep else float("nan")
        except ValueError:
            score = float("nan")
        if not 0.0 <= score <= 1.0:  # NaN fails too
            raise AnimateError(f"--expression {item!r}: expected {name}=SCORE with SCORE in "
                               "[0, 1]")
        out[name] = score
    if not out:
        raise AnimateError("--expression: give NAME=SCORE pairs, e.g. jawOpen=0.5")
    return out


# ----------------------------------------------------------------------------- analysis


def _largest(boxes: np.ndarray) -> np.ndarray:
    """The largest of `[n, 5]` detections (x0, y0, x1, y1, score) -> `[4]`."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[int(np.argmax(area)), :4]


def source_from_image(image_rgb: np.ndarray, resolution: int, model, *, where: str = "image",
                      margin: float = 2.0, landmarker: str | None = None):
    """A portrait `uint8 [H,W,3]` -> `inference.Source` (crop `[res,res,3]` in [0, 1], pose,
    expression, identity of `model`, reconstructed landmarks `[N,2]`, the crop box in the
    photo). `where` names the input in errors."""
    from data_prep import video as video_lib
    from pechead_jax import face_model, inference

    with video_lib.FaceDetector(landmarker) as detector:
        boxes = detector.detect(image_rgb)
    if len(boxes) == 0:
        raise AnimateError(f"{where}: no face found (MediaPipe's face detector at confidence "
                           "0.8); use a photo with one clearly visible face")
    box = video_lib.crop_box(_largest(boxes)[None], margin)
    crop = video_lib.crop(image_rgb, box, resolution)
    with face_analyser.FaceAnalyser(landmarker, min_detection_confidence=0.5) as analyser:
        analysis = analyser.analyse(crop)
    if analysis is None:
        raise AnimateError(f"{where}: a face was detected but the landmarker found none in its "
                           f"{resolution}x{resolution} crop (too small or occluded?)")
    mesh = face_analyser.canonical_mesh(landmarker)
    geo = face_model.frame_geometry(analysis.landmarks[None], analysis.blendshapes[None],
                                    (resolution, resolution), mesh, smooth=1)
    identity = model.identity_code(geo["canonical"], geo["expression"])
    landmarks = np.asarray(model.reconstruct(geo["pose"], identity[None], geo["expression"]))
    return inference.Source(
        image=crop.astype(np.float32) / 255.0, pose=geo["pose"][0],
        expression=geo["expression"][0], landmarks=landmarks[0].astype(np.float32),
        identity=identity, crop_box=box,
    )


@dataclasses.dataclass
class Driving:
    """A driving video analysed: `motion` (pose `[T,6]`, expression `[T,E]`), its `fps`, the
    crop `box` (x0, y0, side), `held` (frames where the face was lost and the last good
    geometry held) and whether it has sound."""

    path: pathlib.Path
    motion: inference.Motion
    fps: float
    box: tuple[float, float, float]
    held: int
    audio: bool


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, leave=False,
                dynamic_ncols=True)


def analyse_driving(path: str | pathlib.Path, resolution: int, *, margin: float = 2.0,
                    max_frames: int | None = None, smooth: int = 5,
                    landmarker: str | None = None, progress: bool = False) -> Driving:
    """A driving video -> `Driving`, decoding it once as a stream.

    The faces of the first `BOX_FRAMES` frames (buffered) fix one crop box; every frame is
    then cropped and analysed as it is read (MediaPipe in video mode) and only its landmarks
    and blendshapes are kept. A frame without a face holds the last good one's (the first
    good one's before any)."""
    from data_prep import video as video_lib
    from pechead_jax import face_model, inference

    path = pathlib.Path(path)
    where = f"--driving {path}"
    if not path.is_file():
        raise AnimateError(f"{where}: no such file")
    try:
        info = video_lib.probe(path)
    except video_lib.VideoError as e:
        raise AnimateError(f"{where}: {e}") from None
    fps = info.fps or 25.0
    total = info.frame_count if max_frames is None else min(info.frame_count or max_frames,
                                                            max_frames)
    frames = video_lib.read_frames(path, 0, max_frames)
    buffered, boxes = [], []
    with video_lib.FaceDetector(landmarker) as detector:
        for _, rgb in frames:
            buffered.append(rgb)
            found = detector.detect(rgb)
            if len(found):
                boxes.append(_largest(found))
            if len(buffered) >= BOX_FRAMES and boxes:
                break
            if len(buffered) >= 10 * BOX_FRAMES:  # no face in the first 250 frames
                break
    if not boxes:
        raise AnimateError(f"{where}: no face found in its first {len(buffered)} frames")
    box = video_lib.crop_box(np.stack(boxes), margin)
    landmarks, blendshapes, found = [], [], []

    def all_frames():
        yield from buffered
        buffered.clear()  # the stream takes over: no frame is kept
        for _, rgb in frames:
            yield rgb

    with face_analyser.FaceAnalyser(landmarker, video=True,
                                    min_detection_confidence=0.5) as analyser, \
            _progress(total or None, "analysing the driving video", progress) as bar:
        last = -1
        for i, rgb in enumerate(all_frames()):
            last = max(int(i * 1000.0 / fps), last + 1)  # strictly increasing timestamps
            analysis = analyser.analyse(video_lib.crop(rgb, box, resolution), last)
            found.append(analysis is not None)
            if analysis is not None:
                landmarks.append(analysis.landmarks)
                blendshapes.append(analysis.blendshapes)
            elif landmarks:  # hold the last good frame
                landmarks.append(landmarks[-1])
                blendshapes.append(blendshapes[-1])
            else:
                landmarks.append(None)
                blendshapes.append(None)
            bar.update(1)
    found = np.asarray(found)
    if not found.any():
        raise AnimateError(f"{where}: the landmarker found no face in the cropped frames")
    first = int(np.argmax(found))
    for i in range(first):  # before the first face: hold the first good frame
        landmarks[i], blendshapes[i] = landmarks[first], blendshapes[first]
    mesh = face_analyser.canonical_mesh(landmarker)
    geo = face_model.frame_geometry(np.stack(landmarks), np.stack(blendshapes),
                                    (resolution, resolution), mesh, smooth)
    motion = inference.Motion(pose=geo["pose"], expression=geo["expression"])
    held = int((~found).sum())
    if held:
        logging.warning("%s: no face in %d of %d frames (the last good pose and expression "
                        "held)", where, held, len(found))
    return Driving(path, motion, float(fps), box, held, media.has_audio(path))


def motion_from_video(path: str | pathlib.Path, resolution: int, *, margin: float = 2.0,
                      max_frames: int | None = None, smooth: int = 5,
                      landmarker: str | None = None):
    """A driving video -> `(Motion, crops uint8 [T,res,res,3], fps, frames held)` in memory
    (short videos, the notebook); `analyse_driving` + `driving_crops` stream."""
    driving = analyse_driving(path, resolution, margin=margin, max_frames=max_frames,
                              smooth=smooth, landmarker=landmarker)
    crops = np.stack(list(driving_crops(driving, resolution, max_frames)))
    return driving.motion, crops, driving.fps, driving.held


def driving_crops(driving: Driving, resolution: int,
                  max_frames: int | None = None) -> Iterator[np.ndarray]:
    """The driving video's crops `uint8 [res,res,3]`, decoded again as a stream (for
    `--side_by_side`)."""
    from data_prep import video as video_lib

    for _, rgb in video_lib.read_frames(driving.path, 0, max_frames):
        yield video_lib.crop(rgb, driving.box, resolution)


# ----------------------------------------------------------------------------- edits


def edit_motion(source, yaw: Angles | None = None, pitch: Angles | None = None,
                roll: Angles | None = None, expression: dict | None = None,
                frontalize: bool = False, sweep: int = 0):
    """Poses `[T,6]` and expressions `[T,E]` for an edit of `source`: `Angles` (one value
    broadcasts; the others must have equal lengths), `frontalize` (yaw, pitch, roll 0),
    blendshapes set by name; `sweep` N > 0 makes an N-frame clip from the source to the
    (single-valued) edit."""
    given = dict(enumerate((yaw, pitch, roll)))
    given = {i: a for i, a in given.items() if a is not None}
    if frontalize:
        if given:
            raise AnimateError("--frontalize sets yaw, pitch and roll to 0: give it without "
                               "--yaw/--pitch/--roll")
        given = {i: Angles(np.zeros(1), relative=False) for i in range(3)}
    lengths = {len(a.degrees) for a in given.values() if len(a.degrees) > 1}
    if len(lengths) > 1:
        raise AnimateError(f"--yaw/--pitch/--roll give different numbers of values: "
                           f"{sorted(lengths)}")
    if sweep and lengths:
        raise AnimateError("--sweep N interpolates single values: give one value per angle "
                           "(or a range A:B:N without --sweep)")
    t = lengths.pop() if lengths else 1
    pose = np.repeat(np.asarray(source.pose, np.float32)[None], t, 0)
    for i, a in given.items():
        radians = np.radians(np.broadcast_to(a.degrees, (t,)))
        pose[:, i] = pose[:, i] + radians if a.relative else radians
    expr = np.repeat(np.asarray(source.expression, np.float32)[None], t, 0)
    for name, score in (expression or {}).items():
        expr[:, face_analyser.BLENDSHAPE_NAMES.index(name)] = score
    if sweep:
        w = np.linspace(0.0, 1.0, sweep, dtype=np.float32)[:, None]
        pose = (1 - w) * np.asarray(source.pose, np.float32)[None] + w * pose
        expr = (1 - w) * np.asarray(source.expression, np.float32)[None] + w * expr
    return pose.astype(np.float32), expr.astype(np.float32)


# ----------------------------------------------------------------------------- outputs


def write_png(path: str | pathlib.Path, tiles: Sequence[np.ndarray]) -> None:
    """Frames `[h,w,3]` (float in [0, 1] or uint8) side by side as one PNG, atomically."""
    fileio.write_png(path, np.concatenate([to_uint8(t) for t in tiles], axis=1))


def face_mask(landmarks: np.ndarray, resolution: int) -> np.ndarray:
    """A feathered mask `[res,res]` in [0, 1] around the face of iBUG-68 `landmarks
    [M,68,2]` in [-1, 1] (the union of M frames' faces, e.g. the source and the output).

    The landmarks' convex hull, extended over the forehead (the brows moved away from the
    chin by 0.6 of the chin-brow distance), dilated by a tenth of the face size and blurred;
    it falls to 0 before the crop's border, so the crop's edge never shows."""
    import cv2

    r = resolution
    pts = (np.asarray(landmarks, np.float64).reshape(-1, 68, 2) + 1.0) * (r - 1) / 2.0
    brows, chin = pts[:, 17:27], pts[:, 8:9]
    forehead = brows + 0.6 * (brows.mean(1, keepdims=True) - chin)
    hull = cv2.convexHull(np.concatenate([pts, forehead], 1).reshape(-1, 2).astype(np.float32))
    mask = np.zeros((r, r), np.float32)
    cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1.0)
    size = float(np.ptp(pts.reshape(-1, 2), axis=0).max())
    k = max(3, int(0.1 * size) | 1)
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.04 * r))
    edge = np.minimum(np.arange(r), np.arange(r)[::-1]).astype(np.float32)
    taper = np.clip(edge / max(1.0, 0.06 * r), 0.0, 1.0)
    return mask * np.minimum(taper[:, None], taper[None, :])


def paste_back(photo: np.ndarray, box: tuple[float, float, float], frame: np.ndarray,
               mask: np.ndarray) -> np.ndarray:
    """The generated crop `frame [res,res,3]` (in [0, 1]) written into `photo uint8 [H,W,3]`
    through the inverse of the crop transform (`data_prep.video.crop`), blended by `mask
    [res,res]`: `uint8 [H,W,3]`; pixels where the mask is 0 (all outside the crop) are the
    photo's own."""
    import cv2

    x0, y0, side = box
    res = frame.shape[0]
    h, w = photo.shape[:2]
    inverse = np.array([[side / res, 0.0, x0], [0.0, side / res, y0]], np.float32)
    big = cv2.warpAffine(np.asarray(frame, np.float32), inverse, (w, h), flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(np.asarray(mask, np.float32), inverse, (w, h),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[..., None]
    out = photo.astype(np.float32) * (1.0 - alpha) + np.clip(big, 0, 1) * 255.0 * alpha
    out = np.where(alpha > 0, out, photo)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the command


def read_image(path: str | pathlib.Path) -> np.ndarray:
    """An image file -> RGB uint8 `[H,W,3]` (clear errors for a missing or unreadable file)."""
    import cv2

    p = pathlib.Path(path)
    if not p.is_file():
        raise AnimateError(f"--source {p}: no such file")
    bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if bgr is None:
        raise AnimateError(f"--source {p}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _attach_negative_angles(argv: Sequence[str]) -> list[str]:
    """`--yaw -30:30:7` -> `--yaw=-30:30:7` (argparse reads `-30:30:7` as an option)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--yaw", "--pitch", "--roll") and arg[:1] in "+-":
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pechead_jax.animate",
                                description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="training workdir (config, checkpoints)")
    p.add_argument("--source", required=True, help="portrait image (jpg, png, ...)")
    p.add_argument("--driving", default=None, help="driving video")
    p.add_argument("--mode", choices=("relative", "absolute"), default="relative",
                   help="driving motion: the video's changes from its first frame applied to "
                        "the portrait (relative), or its pose and expression copied (absolute)")
    p.add_argument("--yaw", default=None, help="degrees: A:B:N, A,B,C or A (+/- : relative)")
    p.add_argument("--pitch", default=None, help="degrees: A:B:N, A,B,C or A (+/- : relative)")
    p.add_argument("--roll", default=None, help="degrees: A:B:N, A,B,C or A (+/- : relative)")
    p.add_argument("--frontalize", action="store_true", help="yaw, pitch and roll to 0")
    p.add_argument("--fov", default=None,
                   help="field of view in degrees (A:B:N, A,B,C or A), at the same head size")
    p.add_argument("--source_fov", type=float, default=40.0,
                   help="the field of view the portrait is taken to have (for --fov)")
    p.add_argument("--expression", default=None, help="NAME=SCORE,... (52 blendshape names)")
    p.add_argument("--sweep", type=int, default=0,
                   help="N frames from the portrait as it is to the (single-valued) edit")
    p.add_argument("--output", required=True, help="out.mp4 or out.png")
    p.add_argument("--paste_back", action="store_true",
                   help="write the generated face into the full source photo")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--face_model", default=None,
                   help="face_model.npz (default: the one beside the run's records)")
    p.add_argument("--margin", type=float, default=2.0, help="crop side / face box side")
    p.add_argument("--max_frames", type=int, default=None, help="driving frames to use")
    p.add_argument("--side_by_side", action="store_true", help="mp4: source | driving | result")
    p.add_argument("--no_audio", action="store_true", help="do not copy the driving sound")
    p.add_argument("--chunk", type=int, default=16, help="frames generated per model call")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--face_landmarker", default=None, help="MediaPipe face_landmarker.task")
    args = p.parse_args(_attach_negative_angles(sys.argv[1:] if argv is None else argv))
    edits = [n for n in ("yaw", "pitch", "roll", "expression", "fov")
             if getattr(args, n) is not None] + (["frontalize"] if args.frontalize else [])
    if (args.driving is None) == (not edits):
        p.error("give either --driving VIDEO or edits (--yaw/--pitch/--roll/--frontalize/"
                "--fov/--expression)")
    if args.sweep < 0 or (args.sweep and args.driving):
        p.error("--sweep N (N >= 1) is for edits")
    if args.chunk < 1:
        p.error("--chunk must be at least 1")
    if pathlib.Path(args.output).suffix.lower() not in (".mp4", ".png"):
        p.error(f"--output {args.output}: the extension must be .mp4 or .png")
    return args


def _edit_landmarks(animator, source, pose, expr, fov: np.ndarray | None,
                    source_fov: float) -> np.ndarray | None:
    """Landmarks `[T,N,2]` for an edit with `--fov` (None without: the face model's)."""
    from pechead_jax import inference

    if fov is None:
        return None
    t = max(len(pose), len(fov))
    if len(pose) not in (1, t) or len(fov) not in (1, t):
        raise AnimateError(f"--fov gives {len(fov)} values, the other edits {len(pose)}")
    return inference.perspective_landmarks(
        animator.face_model, np.broadcast_to(pose, (t, 6)), source.identity,
        np.broadcast_to(expr, (t, expr.shape[-1])), np.broadcast_to(fov, (t,)), source_fov)


def run(args: argparse.Namespace) -> dict:
    """Animate or edit as `args` asks, streaming frames to the output; returns what was
    written (`frames`, `fps`, `codec`, `audio`, `held_frames`, `size`, ...)."""
    from pechead_jax import inference

    angles = {n: parse_angles(getattr(args, n), n) for n in ("yaw", "pitch", "roll")
              if getattr(args, n) is not None}
    fov = parse_values(args.fov, "fov", 1.0, 150.0) if args.fov is not None else None
    expression = parse_expression(args.expression) if args.expression is not None else None
    image = read_image(args.source)
    animator = inference.Animator.from_workdir(args.workdir, step=args.step,
                                               face_model_path=args.face_model)
    animator.chunk = args.chunk
    if animator.face_model is None:
        raise AnimateError(f"--workdir {args.workdir}: no face model found beside the run's "
                           "records (face_model.npz, written by data_prep); pass --face_model")
    res = animator.resolution
    progress = not args.no_progress
    source = source_from_image(image, res, animator.face_model, where=f"--source {args.source}",
                               margin=args.margin, landmarker=args.face_landmarker)
    output = pathlib.Path(args.output)
    info = {"output": str(output), "resolution": res}
    driving = None
    if args.driving is not None:
        driving = analyse_driving(args.driving, res, margin=args.margin,
                                  max_frames=args.max_frames, landmarker=args.face_landmarker,
                                  progress=progress)
        motion = animator.prepare(source, driving.motion, args.mode)
        fps = driving.fps
        info.update(mode=args.mode, held_frames=driving.held)
    else:
        pose, expr = edit_motion(source, **angles, expression=expression,
                                 frontalize=args.frontalize, sweep=args.sweep)
        if fov is not None and args.sweep:
            fov = np.linspace(args.source_fov, float(fov[-1]), args.sweep)
        landmarks = _edit_landmarks(animator, source, pose, expr, fov, args.source_fov)
        if landmarks is not None and len(pose) == 1:
            pose = np.repeat(pose, len(landmarks), 0)
            expr = np.repeat(expr, len(landmarks), 0)
        motion = animator.prepare(source, inference.Motion(pose, expr, landmarks))
        fps = EDIT_FPS

    # The generated frames, then what each output frame shows.
    encoded = animator.encode(source)  # the source side, once for this portrait
    generated = (f for chunk in animator.stream(source, motion, encoded=encoded) for f in chunk)
    if args.paste_back:
        if output.suffix.lower() == ".png" and len(motion) > 8:
            logging.warning("--paste_back to a PNG strip of %d full photos: a wide image",
                            len(motion))
        # The model's own rendering of the source fixes its colour bias once (not per frame:
        # that would flicker); the mask covers the source's face and each output face.
        still = animator.reenact(source, inference.Motion(
            source.pose[None], source.expression[None], source.landmarks[None]),
            encoded=encoded)[0]
        region = face_mask(source.landmarks[None], res)[..., None]
        bias = ((source.image - still) * region).sum((0, 1)) / max(region.sum(), 1.0)

        def shown(i, frame):
            mask = face_mask(np.stack([source.landmarks, motion.landmarks[i]]), res)
            return paste_back(image, source.crop_box, np.clip(frame + bias, 0, 1), mask)

        first = image
        info["size"] = list(image.shape[:2])
    else:
        def shown(i, frame):
            return to_uint8(frame)

        first = to_uint8(source.image)
        info["size"] = [res, res]
    frames = (shown(i, f) for i, f in enumerate(generated))
    if output.suffix.lower() == ".png":
        tiles = list(frames)
        write_png(output, [first, *tiles])
        info.update(frames=len(tiles), fps=fps, codec="png", audio=False)
        return info
    if args.side_by_side:
        crops = driving_crops(driving, first.shape[0], args.max_frames) if driving else None
        frames = (np.concatenate([first, *([next(crops)] if crops else []), f], axis=1)
                  for f in frames)
    audio_from = driving.path if driving is not None and not args.no_audio else None
    with media.VideoWriter(output, fps, audio_from=audio_from) as writer, \
            _progress(len(motion), "generating", progress) as bar:
        for frame in frames:
            writer.write(frame)
            bar.update(1)
    info.update(frames=writer.frames, fps=fps, codec=writer.codec, audio=writer.audio)
    return info


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        info = run(args)
    except (AnimateError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"animate: {e}") from None
    logging.info("animate: wrote %s (%d frames, %dx%d, %s%s)", info["output"], info["frames"],
                 info["size"][1], info["size"][0], info["codec"],
                 ", with sound" if info.get("audio") else "")
    return info


if __name__ == "__main__":
    main()
