"""Evaluate a trained run with the paper's protocols on the test split (docs/evaluation.md).

    python -m pechead_jax.evaluate --workdir W [--data DATA] [--split test] \\
        [--protocol reconstruction|cross_identity|editing|all] [--cross_mode relative] \\
        [--metrics l1,psnr,...] [--max_clips N] [--output W/eval]
    python -m pechead_jax.evaluate --ablation W_kp W_lmk W_mmfa ... [--output DIR]

Protocols (`pechead_jax.evaluation.protocols`):
- `reconstruction` (Table 1): frame 0 of every test clip is the source, the clip drives it;
  generated frames 1..T-1 against the real ones (L1, MS-SSIM, PSNR, FID, AKD; and LPIPS,
  FVD, ARD, AUH, CSIM).
- `cross_identity` (Table 2): every test clip drives frame 0 of another video's clip (a
  seeded draw), relative motion by default; CSIM to the source, ARD and AUH to the driving
  frames, FVD of the outputs (and FID).
- `editing` (Table 3): frame 0 of every clip under 8 pose and 4 expression edits; ARE to the
  requested angles, FID against the real test frames, AUH to the requested action units (and
  CSIM to the source).
Every table has the copy-the-source baseline row, measured the same way.

Writes `OUTPUT/metrics.json` (values, frame counts, faces not found, the pairing, the
provenance of every network) and `OUTPUT/metrics.md` (one table per protocol, laid out like
the paper's), atomically. A metric whose weights are absent (the converted FID Inception,
typically) or that cannot apply (MS-SSIM below 161 px, FVD without 17-frame clips) is skipped
with the reason in both files. `evaluate_workdir(...)` and `evaluate_ablation(...)` are the
same as Python functions (the notebook calls them); `generator=` replaces the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import pathlib
import sys
from collections.abc import Callable, Sequence

import numpy as np

from pechead_jax import fileio
from pechead_jax.evaluation import protocols, report
from pechead_jax.evaluation.protocols import PROTOCOLS, Case, Request, TestClip

METRICS = ("l1", "psnr", "ms_ssim", "lpips", "fid", "fvd", "akd", "ard", "auh", "csim", "are")
FACE_METRICS = ("akd", "ard", "auh", "are")
BASELINE = "copy-the-source"
PROTOCOL_TEXT = {
    "reconstruction": "same-identity reconstruction: source = frame 0 of each clip, frames "
                      "1..T-1 drive (pose, expression, landmarks) and are the targets; means "
                      "over all target frames",
    "cross_identity": "cross-identity reenactment: each clip drives frame 0 of a clip of another "
                      "video (seeded draw), {mode} motion; CSIM to the source, ARD and AUH to "
                      "the driving frames 1..T-1, FVD/FID against the real driving frames",
    "editing": "pose and expression editing: frame 0 of each clip under 8 pose edits (yaw "
               "+-15/30, pitch +-15, roll +-15 degrees from its own pose) and 4 expression "
               "edits (neutral, smile, jaw open, eyes closed), each a still; ARE to the "
               "analyser's source angles plus the change, AUH to the requested action units, "
               "FID against the real test frames",
}
BATCH = 16  # frames per feature-network call
# The frames are face crops: data_prep's 0.8 guards whole video frames against text, here it
# would only drop the faces of small generated frames (data_prep analyses its crops at 0.5).
FACE_CONFIDENCE = 0.5

Generator = Callable[[Request], np.ndarray]


class EvaluationError(ValueError):
    """A user-facing problem with the inputs (workdir, data, metric or protocol names)."""


# ----------------------------------------------------------------------------- inputs


def parse_names(value: str | Sequence[str], allowed: Sequence[str], flag: str,
                expand_all: bool = False) -> tuple[str, ...]:
    """`"a,b"` or a sequence -> validated names in `allowed` order (`all` = every one)."""
    names = [m.strip() for m in (value.split(",") if isinstance(value, str) else value)]
    names = [m for m in names if m]
    if expand_all and names == ["all"]:
        return tuple(allowed)
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise EvaluationError(f"{flag}: unknown {unknown or 'empty list'}; choose from "
                              f"{','.join(allowed)}" + (" or all" if expand_all else ""))
    return tuple(m for m in allowed if m in names)


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """`"l1,psnr"` or a sequence -> validated names in the canonical order."""
    return parse_names(metrics, METRICS, "--metrics")


def checkpoint_step(workdir: str | pathlib.Path, step: int | None = None) -> int:
    """The step to evaluate: `step` if its checkpoint exists, else the latest one."""
    root = pathlib.Path(workdir) / "checkpoints"
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
    if not steps:
        raise EvaluationError(f"--workdir {workdir}: no checkpoint in {root} (train first: "
                              "python -m pechead_jax.main --config ... --workdir W)")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise EvaluationError(f"--step {step}: no such checkpoint in {root} (have {steps})")
    return step


# ----------------------------------------------------------------------------- accumulation


@dataclasses.dataclass
class _Row:
    """Per-frame values of one method (the model or the baseline), appended case by case."""

    values: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    features: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    faces: list = dataclasses.field(default_factory=list)

    def add(self, name: str, per_frame) -> None:
        self.values.setdefault(name, []).append(np.asarray(per_frame, np.float64))

    def add_features(self, name: str, features) -> None:
        self.features.setdefault(name, []).append(np.asarray(features, np.float64))


def _batched(fn, *arrays, batch: int = BATCH) -> np.ndarray:
    """`fn` over the leading axis in fixed-size batches (the last one padded: one compile)."""
    n = len(arrays[0])
    pad = -n % batch
    padded = [np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if pad else a for a in arrays]
    out = [np.asarray(fn(*(a[i:i + batch] for a in padded))) for i in range(0, n + pad, batch)]
    return np.concatenate(out)[:n]


def _repeat_face(measurement, n: int):
    """One frame's measurement repeated for `n` frames (the baseline's static source)."""
    return dataclasses.replace(
        measurement, **{f: np.repeat(getattr(measurement, f), n, axis=0)
                        for f in ("landmarks", "pose", "aus", "found")})


def relative_expected_pose(source_deg: np.ndarray, driving_deg: np.ndarray) -> np.ndarray:
    """The pose relative motion asks for, from the analyser's angles: the source's rotation
    composed with the driving rotation relative to its frame 0 (`inference.relative_motion`'s
    rule), `[3]`, `[T,3]` degrees -> `[T,3]` degrees (NaN where a face is missing)."""
    from pechead_jax import inference

    source = np.radians(np.asarray(source_deg, np.float64))
    driving = np.radians(np.asarray(driving_deg, np.float64))
    out = np.full(driving.shape, np.nan)
    if not (np.isfinite(source).all() and np.isfinite(driving[0]).all()):
        return out
    ok = np.isfinite(driving).all(-1)
    out[ok] = np.degrees(inference.compose_relative_rotation(source, driving[ok], driving[0]))
    return out


class _Networks:
    """The feature networks the chosen metrics need; those that cannot load are skipped."""

    def __init__(self, metrics: tuple[str, ...], resolution: int, identity_backend: str,
                 identity_weights: str, inception_weights: str | None):
        from pechead_jax.metrics import image as image_metrics

        self.metrics = list(metrics)
        self.skipped: dict[str, str] = {}
        self.provenance: dict[str, dict] = {}
        self.inception = self.i3d = self.analyser = self.embedder = self.lpips = None
        if "lpips" in metrics:
            try:
                from pechead_jax.metrics.lpips import LPIPS

                self.lpips = LPIPS()
                self.provenance["lpips"] = dict(self.lpips.provenance)
            except (FileNotFoundError, ValueError) as e:
                self._skip("lpips", str(e))
        if "ms_ssim" in metrics and resolution < image_metrics.min_ms_ssim_size():
            self._skip("ms_ssim", f"needs images of at least {image_metrics.min_ms_ssim_size()} "
                       f"px for 5 scales; the model's resolution is {resolution}")
        if "fid" in metrics:
            try:
                from pechead_jax.metrics import inception

                self.inception, self.provenance["fid"] = inception.load_inception(
                    inception_weights)
            except (FileNotFoundError, ValueError) as e:
                self._skip("fid", str(e))
        if "fvd" in metrics:
            try:
                from pechead_jax.metrics import i3d

                self.i3d, self.provenance["fvd"] = i3d.load_i3d()
            except (FileNotFoundError, ValueError, ImportError) as e:
                self._skip("fvd", str(e))
        if any(m in metrics for m in FACE_METRICS):
            try:
                from pechead_jax import face_analyser
                from pechead_jax.metrics import face

                self.analyser = face_analyser.FaceAnalyser(
                    min_detection_confidence=FACE_CONFIDENCE)
                provenance = face.analyser_provenance(self.analyser.model_path)
                for m in FACE_METRICS:
                    if m in metrics:
                        self.provenance[m] = {**provenance,
                                              "min_detection_confidence": str(FACE_CONFIDENCE)}
            except (FileNotFoundError, ValueError, ImportError) as e:
                for m in FACE_METRICS:
                    if m in metrics:
                        self._skip(m, str(e))
        if "csim" in metrics:
            try:
                from pechead_jax.metrics import identity

                self.embedder = identity.make_embedder(identity_backend, identity_weights)
                self.provenance["csim"] = dict(self.embedder.provenance)
            except (FileNotFoundError, ValueError, ImportError) as e:
                self._skip("csim", str(e))

    def _skip(self, metric: str, reason: str) -> None:
        self.skipped[metric] = reason
        self.metrics.remove(metric)
        logging.warning("evaluate: %s skipped: %s", metric, reason)

    def close(self) -> None:
        if self.analyser is not None:
            self.analyser.close()

    def wants(self, *names: str) -> bool:
        return any(n in self.metrics for n in names)

    # -- feature extractors

    def fid_features(self, frames: np.ndarray) -> np.ndarray:
        import jax.numpy as jnp

        from pechead_jax.metrics import inception

        return _batched(lambda x: inception.inception_features(self.inception, jnp.asarray(x)),
                        frames)

    def fvd_features(self, video: np.ndarray) -> np.ndarray:
        """I3D features of the non-overlapping 16-frame clips of `video` (none if shorter)."""
        import jax.numpy as jnp

        from pechead_jax.metrics import i3d

        clips = i3d.split_clips(np.ascontiguousarray(video))
        if not len(clips):
            return np.zeros((0, 400))
        return np.concatenate([np.asarray(i3d.i3d_features(self.i3d, jnp.asarray(c[None])))
                               for c in clips])

    def faces(self, frames: np.ndarray):
        from pechead_jax.metrics import face

        return face.measure(self.analyser, frames)

    def csim(self, frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
        from pechead_jax.metrics import identity

        return identity.csim(self.embedder, frames, reference).per_frame

    # -- the protocols' measurements

    def measure_reconstruction(self, rows: dict[str, _Row], real: _Row, case: Case,
                               generated: np.ndarray) -> None:
        """Generated and copied frames against the real targets (Table 1)."""
        import jax.numpy as jnp

        from pechead_jax.metrics import face
        from pechead_jax.metrics import image as image_metrics

        model, baseline = rows["model"], rows["baseline"]
        source, target = np.asarray(case.request.source.image, np.float32), case.target
        generated = generated[case.keep]
        n = len(target)
        copied = np.broadcast_to(source, target.shape)
        for name, fn in (("l1", image_metrics.l1), ("psnr", image_metrics.psnr),
                         ("ms_ssim", image_metrics.ms_ssim)):
            if name in self.metrics:
                def metric(a, b, f=fn):
                    return f(jnp.asarray(a), jnp.asarray(b))

                model.add(name, _batched(metric, generated, target))
                baseline.add(name, _batched(metric, copied, target))
        if "lpips" in self.metrics:
            model.add("lpips", self.lpips.frames(generated, target).per_frame)
            baseline.add("lpips", self.lpips.frames(np.ascontiguousarray(copied), target).per_frame)
        if "fid" in self.metrics:
            real.add_features("fid", self.fid_features(target))
            model.add_features("fid", self.fid_features(generated))
            baseline.add_features("fid", np.repeat(self.fid_features(source[None]), n, 0))
        if "fvd" in self.metrics and n >= 16:
            real.add_features("fvd", self.fvd_features(target))
            model.add_features("fvd", self.fvd_features(generated))
            baseline.add_features("fvd", self.fvd_features(copied))
        if self.wants("akd", "ard", "auh"):
            real_faces = self.faces(target)
            gen_faces, src_faces = self.faces(generated), self.faces(source[None])
            for row, faces in ((model, gen_faces), (baseline, _repeat_face(src_faces, n))):
                if "akd" in self.metrics:
                    row.add("akd", face.akd(faces, real_faces).per_frame)
                if "ard" in self.metrics:
                    row.add("ard", face.ard(faces, real_faces).per_frame)
                if "auh" in self.metrics:
                    row.add("auh", face.auh(faces, real_faces).per_frame)
        if "csim" in self.metrics:
            model.add("csim", self.csim(generated, source[None]))
            baseline.add("csim", np.repeat(self.csim(source[None], source[None]), n))

    def measure_cross_identity(self, rows: dict[str, _Row], real: _Row, case: Case,
                               generated: np.ndarray) -> None:
        """Outputs against the source (identity) and the driving frames (pose, AUs; Table 2).

        ARD compares the analyser's angles of the output with the pose the motion asks for:
        the driving frames' angles (absolute) or the source's composed with the driving
        rotation relative to its frame 0 (relative), both measured by the analyser."""
        from pechead_jax.metrics import face

        model, baseline = rows["model"], rows["baseline"]
        source = np.asarray(case.request.source.image, np.float32)
        driving = case.request.driving
        gen = generated[case.keep]
        n = len(gen)
        copied = np.broadcast_to(source, gen.shape)
        if "csim" in self.metrics:
            model.add("csim", self.csim(gen, source[None]))
            baseline.add("csim", np.repeat(self.csim(source[None], source[None]), n))
        if self.wants("ard", "auh"):
            drv_faces, src_faces = self.faces(driving), self.faces(source[None])
            gen_faces = self.faces(gen)
            if case.request.mode == "relative":
                expected = relative_expected_pose(src_faces.pose[0], drv_faces.pose)[case.keep]
            else:
                expected = drv_faces.pose[case.keep]
            drv_aus = drv_faces.aus[case.keep]
            for row, faces in ((model, gen_faces), (baseline, _repeat_face(src_faces, n))):
                if "ard" in self.metrics:
                    row.add("ard", face.angle_difference(faces.pose, expected))
                if "auh" in self.metrics:
                    row.add("auh", face.au_hamming(faces.aus, drv_aus))
        if "fvd" in self.metrics and n >= 16:
            real.add_features("fvd", self.fvd_features(driving[case.keep]))
            model.add_features("fvd", self.fvd_features(gen))
            baseline.add_features("fvd", self.fvd_features(copied))
        if "fid" in self.metrics:
            real.add_features("fid", self.fid_features(driving[case.keep]))
            model.add_features("fid", self.fid_features(gen))
            baseline.add_features("fid", np.repeat(self.fid_features(source[None]), n, 0))

    def measure_editing(self, rows: dict[str, _Row], real: _Row, case: Case,
                        generated: np.ndarray, real_frames: np.ndarray | None) -> None:
        """Edited stills against the requested angles and action units (Table 3).

        ARE: the analyser's angles of each still against the analyser's angles of the
        source plus the requested change; AUH: the still's action units against those of the
        requested blendshapes (`face.blendshapes_to_aus`)."""
        from pechead_jax.face_analyser import BLENDSHAPE_NAMES
        from pechead_jax.metrics import face

        model, baseline = rows["model"], rows["baseline"]
        source = np.asarray(case.request.source.image, np.float32)
        n = len(generated)
        if self.wants("are", "auh"):
            src_faces, gen_faces = self.faces(source[None]), self.faces(generated)
            requested_pose = src_faces.pose[0] + case.pose_change
            requested_aus = face.blendshapes_to_aus(case.expression, BLENDSHAPE_NAMES)
            for row, faces in ((model, gen_faces), (baseline, _repeat_face(src_faces, n))):
                if "are" in self.metrics:
                    row.add("are", face.angle_difference(faces.pose, requested_pose))
                if "auh" in self.metrics:
                    row.add("auh", face.au_hamming(faces.aus, requested_aus))
        if "fid" in self.metrics:
            if real_frames is not None:
                real.add_features("fid", self.fid_features(real_frames))
            model.add_features("fid", self.fid_features(generated))
            baseline.add_features("fid", np.repeat(self.fid_features(source[None]), n, 0))
        if "csim" in self.metrics:
            model.add("csim", self.csim(generated, source[None]))
            baseline.add("csim", np.repeat(self.csim(source[None], source[None]), n))


# ----------------------------------------------------------------------------- summaries


def _summarise(row: _Row, real: _Row, nets: _Networks) -> dict[str, dict]:
    from pechead_jax.metrics import frechet, result

    out: dict[str, dict] = {}
    for name, parts in row.values.items():
        if name not in nets.metrics or not parts:
            continue
        per_frame = np.concatenate(parts)
        if name in (*FACE_METRICS, "csim"):
            m = result.from_per_frame(name, per_frame, nets.provenance.get(name, {}))
            out[name] = {"value": m.value, "frames": m.total, "missing": m.missing}
        else:
            out[name] = {"value": float(per_frame.mean()), "frames": int(per_frame.size)}
        if name == "psnr":
            finite = np.isfinite(per_frame)
            out[name]["identical_pairs"] = int((~finite).sum())
            out[name]["value_without_identical"] = (
                float(per_frame[finite].mean()) if finite.any() else math.nan)
    for name in ("fid", "fvd"):
        if name in nets.metrics and row.features.get(name):
            gen = np.concatenate(row.features[name])
            ref = np.concatenate(real.features.get(name, [np.zeros((0, 1))]))
            if len(gen) < 2 or len(ref) < 2:
                continue  # reported as skipped by the caller
            value = frechet.frechet_distance_from_features(ref, gen)
            out[name] = {"value": value, "real": len(ref), "generated": len(gen)}
    return out


# ----------------------------------------------------------------------------- the run


def animator_generator(animator) -> Generator:
    """The trained model as a `Generator`: `Animator.reenact`, the source side computed
    once per call; independent stills (edits) of the `full` variant are rendered one by one
    (a 1-frame chunk: no CAP context between unrelated stills)."""
    from pechead_jax import inference

    single = None

    def generate(request: Request) -> np.ndarray:
        nonlocal single
        if request.independent and animator.config.model.variant == "full":
            if single is None:
                single = inference.Animator(animator.config, animator.params,
                                            animator.face_model, chunk=1)
            encoded = single.encode(request.source)
            m = request.motion
            return np.concatenate([
                single.reenact(request.source, inference.Motion(
                    m.pose[i:i + 1], m.expression[i:i + 1],
                    None if m.landmarks is None else m.landmarks[i:i + 1]),
                    request.mode, encoded)
                for i in range(len(m))])
        return animator.reenact(request.source, request.motion, request.mode)

    return generate


def _test_clip(clip, arrays) -> TestClip:
    from pechead_jax import inference

    source, motion = inference.clip_source_and_motion(arrays, 0)
    return TestClip(clip.clip_id, clip.video_id, source, motion, arrays["frames"])


def _check_options(protocol, metrics, cross_mode, max_clips) -> tuple[tuple, tuple]:
    from pechead_jax import inference

    wanted = parse_metrics(metrics)
    chosen = parse_names(protocol, PROTOCOLS, "--protocol", expand_all=True)
    if cross_mode not in inference.MOTION_MODES:
        raise EvaluationError(f"--cross_mode {cross_mode!r}: expected one of "
                              f"{inference.MOTION_MODES}")
    if max_clips is not None and max_clips < 1:
        raise EvaluationError(f"--max_clips {max_clips}: must be at least 1")
    return wanted, chosen


def evaluate_workdir(
    workdir: str | pathlib.Path,
    *,
    data: str | pathlib.Path | None = None,
    step: int | None = None,
    output: str | pathlib.Path | None = None,
    protocol: str | Sequence[str] = "reconstruction",
    metrics: str | Sequence[str] = METRICS,
    cross_mode: str = "relative",
    max_clips: int | None = None,
    **kwargs,
) -> dict:
    """Evaluate the checkpoint of `workdir` (latest, or `step`) on the records `data`
    (default: the run's `config.data.root`); write `output` (default `W/eval`)
    `/metrics.{json,md}`. Other arguments: `evaluate_animator`'s.

    Raises `EvaluationError` / `FileNotFoundError` naming the missing workdir, checkpoint or
    records, an unknown metric or protocol, or a split that a protocol cannot use.
    """
    from pechead_jax import checkpointing, face_model, inference

    _check_options(protocol, metrics, cross_mode, max_clips)
    workdir = pathlib.Path(workdir)
    config = checkpointing.read_config(workdir)
    step = checkpoint_step(workdir, step)
    root = pathlib.Path(data or config.data.root or "")
    if not str(data or config.data.root or ""):
        raise EvaluationError(f"{workdir}/config.json names no data.root; pass --data DATA")
    animator = inference.Animator.from_workdir(workdir, step=step, all_devices=True)
    face_path = root / "face_model.npz"
    if face_path.is_file():  # the face model of the data evaluated, not the run's
        animator.face_model = face_model.LandmarkModel.load(face_path)
    kwargs.setdefault("generator_name", f"PECHead ({config.model.variant}, step {step})")
    return evaluate_animator(
        animator, root, output=workdir / "eval" if output is None else output,
        info={"workdir": str(workdir), "step": step}, protocol=protocol, metrics=metrics,
        cross_mode=cross_mode, max_clips=max_clips, **kwargs)


def evaluate_animator(
    animator,
    data: str | pathlib.Path,
    *,
    output: str | pathlib.Path,
    split: str = "test",
    protocol: str | Sequence[str] = "reconstruction",
    metrics: str | Sequence[str] = METRICS,
    max_clips: int | None = None,
    identity_backend: str = "dlib",
    identity_weights: str = "",
    inception_weights: str | None = None,
    cross_mode: str = "relative",
    seed: int = protocols.PAIRING_SEED,
    generator: Generator | None = None,
    generator_name: str | None = None,
    info: dict | None = None,
    progress: bool = True,
) -> dict:
    """Run `protocol` (names of `PROTOCOLS`, comma-separated, or "all") with `animator`
    (an `inference.Animator`: its resolution and face model) on `split` of the records
    `data`, the first `max_clips` clips; write `output/metrics.{json,md}`.

    `generator` replaces the model (a `Request -> frames [T,H,W,3]` function), labelled
    `generator_name`. `info` (workdir, step) goes into the report. Returns the dict written
    to `metrics.json` (NaN as None, inf as "inf"), plus `output`.
    """
    from tqdm.auto import tqdm

    from pechead_jax import input_pipeline, records

    wanted, chosen = _check_options(protocol, metrics, cross_mode, max_clips)
    root = pathlib.Path(data)
    clip_source = records.ClipSource(root, split)  # clear errors for a missing folder/split
    clip_ids = clip_source.clip_ids[:max_clips]
    clip_source.close()
    res = animator.resolution
    generate = generator or animator_generator(animator)
    info = {"workdir": None, "step": None, **(info or {})}
    method = generator_name or f"PECHead ({animator.config.model.variant})"

    def clips():
        return (_test_clip(c, a) for c, a in
                input_pipeline.load_clips(root, split, resolution=res, clip_ids=clip_ids))

    pairing = sources = None
    if "cross_identity" in chosen:
        # A first pass for the video ids and the frame-0 sources (one frame per clip).
        sources = [dataclasses.replace(c, frames=c.frames[:1]) for c in clips()]
        try:
            pairing = protocols.cross_identity_pairs([c.video_id for c in sources], seed)
        except ValueError as e:
            raise EvaluationError(f"split {split!r} of {root}: {e}") from None

    needed = set().union(*(set(sum(report.COLUMNS[p], ())) for p in chosen))
    nets = _Networks(tuple(m for m in wanted if m in needed), res, identity_backend,
                     identity_weights, inception_weights)
    parts: dict[str, dict] = {}
    too_short: list[str] = []
    try:
        for name in chosen:
            rows = {"model": _Row(), "baseline": _Row()}
            real = _Row()
            cases = frames = 0
            pairs = []
            bar = tqdm(clips(), desc=f"evaluate {name}", unit="clip", disable=not progress,
                       total=len(clip_ids))
            for i, clip in enumerate(bar):
                if name == "reconstruction":
                    todo = protocols.reconstruction_cases(clip)
                    if not todo:
                        too_short.append(clip.clip_id)
                elif name == "cross_identity":
                    todo = protocols.cross_identity_cases(clip, sources[pairing[i]], cross_mode)
                else:
                    todo = protocols.editing_cases(clip)
                for k, case in enumerate(todo):
                    generated = np.asarray(generate(case.request), np.float32)
                    if generated.shape != (len(case.request.motion), res, res, 3):
                        raise EvaluationError(
                            f"generator returned {generated.shape} for {len(case.request.motion)}"
                            f" frames at {res}x{res}")
                    if name == "reconstruction":
                        nets.measure_reconstruction(rows, real, case, generated)
                    elif name == "cross_identity":
                        nets.measure_cross_identity(rows, real, case, generated)
                        pairs.append([case.driving_clip, case.source_clip])
                    else:
                        nets.measure_editing(rows, real, case, generated,
                                             clip.frames if k == 0 else None)
                    cases += 1
                    frames += len(generated[case.keep])
                bar.set_postfix(frames=frames)
            bar.close()
            if cases == 0:
                raise EvaluationError(f"split {split!r} of {root} has no clip of 2 or more "
                                      f"frames for {name}")
            part_rows = {method: _summarise(rows["model"], real, nets),
                         BASELINE: _summarise(rows["baseline"], real, nets)}
            skipped = {}
            measured = [m for m in sum(report.COLUMNS[name], ()) if m in nets.metrics]
            for m in ("fid", "fvd"):
                if m in measured and m not in part_rows[method]:
                    count = sum(len(f) for f in rows["model"].features.get(m, []))
                    unit = ("16-frame clips (from clips of 17+ frames)" if m == "fvd"
                            else "frames")
                    skipped[m] = f"needs at least 2 {unit} for a covariance, got {count}"
                    measured.remove(m)
            parts[name] = {
                "protocol": PROTOCOL_TEXT[name].format(mode=cross_mode),
                "clips": cases,
                "frames": frames,
                "metrics": measured,
                "paper_metrics": [m for m in report.COLUMNS[name][0] if m in measured],
                "rows": part_rows,
                "skipped": skipped,
                "faces_missing": {m: {r: part_rows[r][m]["missing"] for r in part_rows}
                                  for m in measured if m in (*FACE_METRICS, "csim")},
            }
            if name == "cross_identity":
                parts[name]["pairs"] = pairs
                parts[name]["mode"] = cross_mode
                parts[name]["seed"] = seed
            if name == "editing":
                parts[name]["edits"] = {"pose_degrees": dict(protocols.EDIT_POSES),
                                        "expression": dict(protocols.EDIT_EXPRESSIONS)}
    finally:
        nets.close()

    result = {
        **info,
        "data": str(root),
        "split": split,
        "resolution": res,
        "method": method,
        "protocols": parts,
        "skipped": dict(nets.skipped),
        "clips_too_short": too_short,
        "provenance": {m: nets.provenance[m] for m in METRICS if m in nets.provenance
                       and m in nets.metrics},
    }
    result = report.json_safe(result)
    out = pathlib.Path(output)
    fileio.write_text(out / "metrics.json", json.dumps(result, indent=1, allow_nan=False) + "\n")
    fileio.write_text(out / "metrics.md", report.markdown_report(result))
    result["output"] = str(out)
    return result


def evaluate_ablation(workdirs: Sequence[str | pathlib.Path], *,
                      output: str | pathlib.Path, **kwargs) -> dict:
    """Table 4: `evaluate_workdir` (reconstruction and cross-identity) on each run, one row
    per run labelled by its `config.model.variant` (and the folder when two share one);
    writes `output/ablation.{json,md}` and each run's own report under `output/<i>-<folder>`."""
    from pechead_jax import checkpointing

    if len(workdirs) < 1:
        raise EvaluationError("--ablation: give one or more workdirs")
    output = pathlib.Path(output)
    variants = [checkpointing.read_config(w).model.variant for w in workdirs]
    results = {}
    for i, (w, variant) in enumerate(zip(workdirs, variants)):
        label = variant if variants.count(variant) == 1 else f"{variant} ({pathlib.Path(w).name})"
        if label in results:
            label += f" #{i + 1}"
        results[label] = evaluate_workdir(
            w, protocol=("reconstruction", "cross_identity"),
            output=output / f"{i + 1}-{pathlib.Path(w).name}", **kwargs)
    table = report.ablation_table(results)
    summary = {"runs": {k: {"workdir": r["workdir"], "step": r["step"],
                            "protocols": r["protocols"]} for k, r in results.items()},
               "columns": [f"{p}.{m}" for p, m in report.ABLATION_COLUMNS]}
    fileio.write_text(output / "ablation.json",
                      json.dumps(report.json_safe(summary), indent=1, allow_nan=False) + "\n")
    fileio.write_text(output / "ablation.md", table)
    return {**summary, "output": str(output), "table": table}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pechead_jax.evaluate",
                                description=__doc__.split("\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--workdir", help="training workdir (config.json, checkpoints/)")
    target.add_argument("--ablation", nargs="+", metavar="WORKDIR",
                        help="several runs (one per variant) into one Table 4")
    p.add_argument("--data", default=None, help="records folder (default: the run's data.root)")
    p.add_argument("--split", default="test")
    p.add_argument("--protocol", default="reconstruction",
                   help=f"{','.join(PROTOCOLS)} or all (comma-separated)")
    p.add_argument("--cross_mode", default="relative", help="cross-identity motion: "
                   "relative (the portrait keeps its pose, takes the changes) or absolute")
    p.add_argument("--seed", type=int, default=protocols.PAIRING_SEED,
                   help="seed of the cross-identity pairing")
    p.add_argument("--metrics", default=",".join(METRICS), help=f"from {','.join(METRICS)}")
    p.add_argument("--max_clips", type=int, default=None)
    p.add_argument("--output", default=None,
                   help="output folder (default: WORKDIR/eval; required with --ablation)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--identity_backend", default="dlib", choices=("dlib", "arcface"))
    p.add_argument("--identity_weights", default="", help="ArcFace .onnx/.npz (arcface only)")
    p.add_argument("--inception_weights", default=None,
                   help="converted FID Inception .npz (default: the cache; see docs/metrics.md)")
    p.add_argument("--no_progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    common = dict(data=args.data, split=args.split, metrics=args.metrics,
                  max_clips=args.max_clips, step=args.step,
                  identity_backend=args.identity_backend,
                  identity_weights=args.identity_weights,
                  inception_weights=args.inception_weights, cross_mode=args.cross_mode,
                  seed=args.seed, progress=not args.no_progress)
    try:
        if args.ablation:
            if args.output is None:
                raise EvaluationError("--ablation needs --output DIR")
            result = evaluate_ablation(args.ablation, output=args.output, **common)
            sys.stdout.write(result["table"])
            return result
        result = evaluate_workdir(args.workdir, protocol=args.protocol, output=args.output,
                                  **common)
    except (EvaluationError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"evaluate: {e}") from None
    sys.stdout.write(pathlib.Path(result["output"], "metrics.md").read_text())
    return result


if __name__ == "__main__":
    main()
