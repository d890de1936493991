"""Animate a portrait with a driving video, or edit its head pose and expression by hand.

    python -m pechead_jax.animate --workdir W --source portrait.jpg --driving video.mp4 \\
        --output out.mp4
    python -m pechead_jax.animate --workdir W --source portrait.jpg --yaw -30:30:7 \\
        --output sweep.png
    python -m pechead_jax.animate --workdir W --source portrait.jpg \\
        --expression jawOpen=0.5,mouthSmileLeft=0.4 --output smile.png

The portrait is cropped around its largest face the way data_prep crops videos (MediaPipe's
face detector, a square of `--margin` x the face box, moved up a tenth), at the model's
resolution, and analysed by the face analyser: pose, expression (52 blendshapes) and the
identity code of the run's face model, whose reconstruction gives the source landmarks.
A driving video is cropped with one box for the whole video (as data_prep crops a clip) and
analysed frame by frame; its poses and expressions drive the portrait, with landmarks
reconstructed from the portrait's identity (cross-identity reenactment). Angles on the
command line are in degrees: `A:B:N` is N values from A to B, `A,B,C` a list, `A` one value.

Output by extension: `.mp4` (the generated frames; `--side_by_side` adds the source and the
driving crop), or `.png` (a strip: the source crop, then each generated frame, each
RESxRES). Written atomically.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from pechead_jax import face_analyser, fileio
from pechead_jax.logging_utils import to_uint8

EDIT_FPS = 10.0  # frame rate of an edit written as mp4


class AnimateError(ValueError):
    """A user-facing problem with an input (file, face, value)."""


# ----------------------------------------------------------------------------- arguments


def parse_angles(text: str, name: str) -> np.ndarray:
    """`"A:B:N"` (N values from A to B), `"A,B,C"` or `"A"` -> degrees `[T]`."""
    try:
        if ":" in text:
            a, b, n = text.split(":")
            if int(n) < 1:
                raise ValueError
            return np.linspace(float(a), float(b), int(n))
        return np.asarray([float(v) for v in text.split(",")], np.float64)
    except ValueError:
        raise AnimateError(f"--{name} {text!r}: expected degrees as A:B:N, A,B,C or A") from None


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
    expression, identity of `model`, reconstructed landmarks `[N,2]`). `where` names the
    input in errors."""
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
        identity=identity,
    )


def motion_from_video(path: str | pathlib.Path, resolution: int, *, margin: float = 2.0,
                      max_frames: int | None = None, smooth: int = 5,
                      landmarker: str | None = None):
    """A driving video -> `(inference.Motion` (pose `[T,6]`, expression `[T,E]`, no
    landmarks), its crops `uint8 [T,res,res,3]`, fps, frames without a face)`.

    Frames where the analyser finds no face take the geometry of the nearest frame that has
    one (counted in the last return value)."""
    from data_prep import video as video_lib
    from pechead_jax import face_model, inference

    where = f"--driving {path}"
    if not pathlib.Path(path).is_file():
        raise AnimateError(f"{where}: no such file")
    try:
        fps = video_lib.probe(path).fps or 25.0
    except video_lib.VideoError as e:
        raise AnimateError(f"{where}: {e}") from None
    boxes = []
    with video_lib.FaceDetector(landmarker) as detector:
        for _, rgb in video_lib.read_frames(path, 0, max_frames):
            found = detector.detect(rgb)
            if len(found):
                boxes.append(_largest(found))
    if not boxes:
        raise AnimateError(f"{where}: no face found in any frame")
    box = video_lib.crop_box(np.stack(boxes), margin)
    crops = [video_lib.crop(rgb, box, resolution)
             for _, rgb in video_lib.read_frames(path, 0, max_frames)]
    analyses = []
    with face_analyser.FaceAnalyser(landmarker, video=True,
                                    min_detection_confidence=0.5) as analyser:
        last = -1
        for i, crop in enumerate(crops):
            last = max(int(i * 1000.0 / fps), last + 1)  # strictly increasing timestamps
            analyses.append(analyser.analyse(crop, last))
    found = np.array([a is not None for a in analyses])
    if not found.any():
        raise AnimateError(f"{where}: the landmarker found no face in the cropped frames")
    have = np.flatnonzero(found)
    nearest = have[np.abs(np.arange(len(crops))[:, None] - have[None]).argmin(1)]
    landmarks = np.stack([analyses[i].landmarks for i in nearest])
    blendshapes = np.stack([analyses[i].blendshapes for i in nearest])
    mesh = face_analyser.canonical_mesh(landmarker)
    geo = face_model.frame_geometry(landmarks, blendshapes, (resolution, resolution), mesh, smooth)
    motion = inference.Motion(pose=geo["pose"], expression=geo["expression"])
    return motion, np.stack(crops), float(fps), int((~found).sum())


def edit_motion(source, yaw=None, pitch=None, roll=None, expression: dict | None = None):
    """Poses `[T,6]` and expressions `[T,E]` for an edit of `source`: angles in degrees (one
    value broadcasts; the others must have equal lengths), blendshapes set by name."""
    given = {i: np.asarray(v, np.float64) for i, v in enumerate((yaw, pitch, roll))
             if v is not None}
    lengths = {len(v) for v in given.values() if len(v) > 1}
    if len(lengths) > 1:
        raise AnimateError(f"--yaw/--pitch/--roll give different numbers of values: "
                           f"{sorted(lengths)}")
    t = lengths.pop() if lengths else 1
    pose = np.repeat(np.asarray(source.pose, np.float32)[None], t, 0)
    for i, degrees in given.items():
        pose[:, i] = np.radians(np.broadcast_to(degrees, (t,)))
    expr = np.repeat(np.asarray(source.expression, np.float32)[None], t, 0)
    for name, score in (expression or {}).items():
        expr[:, face_analyser.BLENDSHAPE_NAMES.index(name)] = score
    return pose, expr


# ----------------------------------------------------------------------------- outputs


def write_png(path: str | pathlib.Path, tiles: Sequence[np.ndarray]) -> None:
    """Frames `[res,res,3]` in [0, 1] side by side as one PNG, atomically."""
    fileio.write_png(path, np.concatenate([to_uint8(t) for t in tiles], axis=1))


def write_mp4(path: str | pathlib.Path, columns: Sequence[np.ndarray], fps: float) -> None:
    """Videos `[T,H,W,3]` in [0, 1] side by side as one mp4 (mp4v), atomically."""
    fileio.write_mp4(path, np.concatenate([to_uint8(c) for c in columns], axis=2), fps)


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
        if out and out[-1] in ("--yaw", "--pitch", "--roll") and arg.startswith("-"):
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
    p.add_argument("--yaw", default=None, help="degrees: A:B:N, A,B,C or A")
    p.add_argument("--pitch", default=None, help="degrees: A:B:N, A,B,C or A")
    p.add_argument("--roll", default=None, help="degrees: A:B:N, A,B,C or A")
    p.add_argument("--expression", default=None, help="NAME=SCORE,... (52 blendshape names)")
    p.add_argument("--output", required=True, help="out.mp4 or out.png")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--face_model", default=None,
                   help="face_model.npz (default: the one beside the run's records)")
    p.add_argument("--margin", type=float, default=2.0, help="crop side / face box side")
    p.add_argument("--max_frames", type=int, default=None, help="driving frames to use")
    p.add_argument("--side_by_side", action="store_true", help="mp4: source | driving | result")
    p.add_argument("--face_landmarker", default=None, help="MediaPipe face_landmarker.task")
    args = p.parse_args(_attach_negative_angles(sys.argv[1:] if argv is None else argv))
    edits = [n for n in ("yaw", "pitch", "roll", "expression") if getattr(args, n) is not None]
    if (args.driving is None) == (not edits):
        p.error("give either --driving VIDEO or edits (--yaw/--pitch/--roll/--expression)")
    if pathlib.Path(args.output).suffix.lower() not in (".mp4", ".png"):
        p.error(f"--output {args.output}: the extension must be .mp4 or .png")
    return args


def run(args: argparse.Namespace) -> dict:
    """Animate or edit as `args` asks; returns what was written."""
    from pechead_jax import inference

    angles = {n: parse_angles(getattr(args, n), n) for n in ("yaw", "pitch", "roll")
              if getattr(args, n) is not None}
    expression = parse_expression(args.expression) if args.expression is not None else None
    image = read_image(args.source)
    animator = inference.Animator.from_workdir(args.workdir, step=args.step,
                                               face_model_path=args.face_model)
    if animator.face_model is None:
        raise AnimateError(f"--workdir {args.workdir}: no face model found beside the run's "
                           "records (face_model.npz, written by data_prep); pass --face_model")
    res = animator.resolution
    source = source_from_image(image, res, animator.face_model, where=f"--source {args.source}",
                               margin=args.margin, landmarker=args.face_landmarker)
    output = pathlib.Path(args.output)
    info = {"output": str(output), "resolution": res}
    if args.driving is not None:
        motion, crops, fps, missing = motion_from_video(
            args.driving, res, margin=args.margin, max_frames=args.max_frames,
            landmarker=args.face_landmarker)
        if missing:
            logging.warning("--driving %s: no face in %d of %d frames (nearest frame used)",
                            args.driving, missing, len(motion))
        frames = animator.reenact(source, motion)
        driving = crops.astype(np.float32) / 255.0
        info.update(frames=len(frames), missing_faces=missing)
    else:
        pose, expr = edit_motion(source, **angles, expression=expression)
        frames = animator.edit(source, pose=pose, expression=expr)
        driving, fps = None, EDIT_FPS
        info.update(frames=len(frames))
    if output.suffix.lower() == ".png":
        write_png(output, [source.image, *frames])
    else:
        columns = [frames]
        if args.side_by_side:
            columns = [np.broadcast_to(source.image, frames.shape)]
            columns += [driving] if driving is not None else []
            columns += [frames]
        write_mp4(output, columns, fps)
    return info


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        info = run(args)
    except (AnimateError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"animate: {e}") from None
    logging.info("animate: wrote %s (%d frames at %dx%d)", info["output"], info["frames"],
                 info["resolution"], info["resolution"])
    return info


if __name__ == "__main__":
    main()
