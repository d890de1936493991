"""Evaluate a trained run: same-identity reconstruction on the test split (docs/evaluation.md).

    python -m pechead_jax.evaluate --workdir W [--data DATA] [--split test] \\
        [--metrics l1,psnr,ms_ssim,fid,fvd,akd,ard,auh,csim] [--max_clips N] [--output W/eval]

Protocol (the authors' evaluation of their baselines): for every test clip, frame 0 is the
source and every later frame drives (its pose, expression and landmarks); the generated
frames 1..T-1 are compared with the real ones. Means are over all frames of the split.
The copy-the-source baseline (frame 0 repeated) is measured the same way, next to the model.

Writes `OUTPUT/metrics.json` (values, frame counts, faces not found, the provenance of every
network) and `OUTPUT/metrics.md` (a Markdown table), both atomically. A metric whose
weights are absent (the converted FID Inception, typically) or that cannot apply (MS-SSIM
below 161 px, FVD without a 17-frame clip) is skipped, with the reason in both files.
`evaluate_workdir(...)` is the same as a Python function (the notebook calls it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from pechead_jax import fileio

METRICS = ("l1", "psnr", "ms_ssim", "lpips", "fid", "fvd", "akd", "ard", "auh", "csim")
FACE_METRICS = ("akd", "ard", "auh")
# Direction of "better" and the column title of each metric in the Markdown table.
TITLES = {
    "l1": "L1 ↓", "psnr": "PSNR ↑", "ms_ssim": "MS-SSIM ↑", "lpips": "LPIPS ↓", "fid": "FID ↓",
    "fvd": "FVD ↓",
    "akd": "AKD ↓", "ard": "ARD ↓", "auh": "AUH ↓", "csim": "CSIM ↑",
}  # fmt: skip
BASELINE = "copy-the-source"
PROTOCOL = ("same-identity reconstruction: source = frame 0 of each clip, frames 1..T-1 drive "
            "(pose, expression, landmarks) and are the targets; means over all target frames")
BATCH = 16  # frames per feature-network call
# The frames are face crops: data_prep's 0.8 guards whole video frames against text, here it
# would only drop the faces of small generated frames (data_prep analyses its crops at 0.5).
FACE_CONFIDENCE = 0.5


class EvaluationError(ValueError):
    """A user-facing problem with the inputs (workdir, data, metric names)."""


# ----------------------------------------------------------------------------- inputs


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """`"l1,psnr"` or a sequence -> validated names in the canonical order."""
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    names = [m for m in names if m]
    unknown = sorted(set(names) - set(METRICS))
    if unknown or not names:
        raise EvaluationError(f"--metrics: unknown {unknown or 'empty list'}; choose from "
                              f"{','.join(METRICS)}")
    return tuple(m for m in METRICS if m in names)


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
    """Per-frame values of one method (the model or the baseline), appended clip by clip."""

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


def _concat_faces(parts: list):
    from pechead_jax.metrics.face import FaceMeasurement

    fields = ("landmarks", "pose", "aus", "found")
    return FaceMeasurement(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields},
                           provenance=parts[0].provenance)


def _repeat_face(measurement, n: int):
    """One frame's measurement repeated for `n` frames (the baseline's static source)."""
    return dataclasses.replace(
        measurement, **{f: np.repeat(getattr(measurement, f), n, axis=0)
                        for f in ("landmarks", "pose", "aus", "found")})


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

                self.analyser = face_analyser.FaceAnalyser(
                    min_detection_confidence=FACE_CONFIDENCE)
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

    def measure_clip(self, model: _Row, baseline: _Row, source: np.ndarray,
                     generated: np.ndarray, real: np.ndarray, real_row: _Row) -> None:
        """Per-frame values / features of one clip's generated, copied and real frames."""
        import jax.numpy as jnp

        from pechead_jax.metrics import image as image_metrics

        n = len(real)
        copied = np.broadcast_to(source, real.shape)
        for name, fn in (("l1", image_metrics.l1), ("psnr", image_metrics.psnr),
                         ("ms_ssim", image_metrics.ms_ssim)):
            if name in self.metrics:
                model.add(name, _batched(lambda a, b, f=fn: f(jnp.asarray(a), jnp.asarray(b)),
                                         generated, real))
                baseline.add(name, _batched(lambda a, b, f=fn: f(jnp.asarray(a), jnp.asarray(b)),
                                            copied, real))
        if "lpips" in self.metrics:
            model.add("lpips", self.lpips.frames(generated, real).per_frame)
            baseline.add("lpips", self.lpips.frames(np.ascontiguousarray(copied), real).per_frame)
        if "fid" in self.metrics:
            from pechead_jax.metrics import inception

            def feats(x):
                return inception.inception_features(self.inception, jnp.asarray(x))

            real_row.add_features("fid", _batched(feats, real))
            model.add_features("fid", _batched(feats, generated))
            baseline.add_features("fid", np.repeat(np.asarray(feats(source[None])), n, 0))
        if "fvd" in self.metrics and n >= 16:
            from pechead_jax.metrics import i3d

            def clip_feats(video):
                clips = i3d.split_clips(video)
                return np.concatenate([np.asarray(i3d.i3d_features(self.i3d, jnp.asarray(c[None])))
                                       for c in clips])

            real_row.add_features("fvd", clip_feats(real))
            model.add_features("fvd", clip_feats(generated))
            baseline.add_features("fvd", clip_feats(np.ascontiguousarray(copied)))
        if self.analyser is not None and any(m in self.metrics for m in FACE_METRICS):
            from pechead_jax.metrics import face

            real_row.faces.append(face.measure(self.analyser, real))
            model.faces.append(face.measure(self.analyser, generated))
            baseline.faces.append(_repeat_face(face.measure(self.analyser, source[None]), n))
        if "csim" in self.metrics:
            from pechead_jax.metrics import identity

            model.add("csim", identity.csim(self.embedder, generated, source[None]).per_frame)
            same = identity.csim(self.embedder, source[None], source[None]).per_frame
            baseline.add("csim", np.repeat(same, n))


# ----------------------------------------------------------------------------- summaries


def _summarise(row: _Row, real: _Row, nets: _Networks) -> dict[str, dict]:
    from pechead_jax.metrics import face, frechet, result

    out: dict[str, dict] = {}
    for name in ("l1", "psnr", "ms_ssim", "lpips", "csim"):
        if name in nets.metrics and row.values.get(name):
            per_frame = np.concatenate(row.values[name])
            if name == "csim":
                m = result.from_per_frame("csim", per_frame, nets.provenance["csim"])
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
            ref = np.concatenate(real.features[name])
            if len(gen) < 2:
                continue  # reported as skipped by the caller
            value = frechet.frechet_distance_from_features(ref, gen)
            out[name] = {"value": value, "real": len(ref), "generated": len(gen)}
    if row.faces:
        gen, ref = _concat_faces(row.faces), _concat_faces(real.faces)
        for name, fn in (("akd", face.akd), ("ard", face.ard), ("auh", face.auh)):
            if name in nets.metrics:
                m = fn(gen, ref)
                out[name] = {"value": m.value, "frames": m.total, "missing": m.missing}
                nets.provenance.setdefault(
                    name, {**m.provenance, "min_detection_confidence": str(FACE_CONFIDENCE)})
    return out


def _json_safe(x: Any) -> Any:
    """NaN -> null, +-inf -> "inf"/"-inf" (strict JSON has neither), numpy -> Python."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        if math.isnan(x):
            return None
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, np.integer):
        return int(x)
    return x


def _fmt(entry: dict | None, name: str) -> str:
    if entry is None:
        return "–"
    v = entry["value"]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        text = "n/a"
    elif isinstance(v, str):
        text = v
    else:
        digits = {"l1": 4, "ms_ssim": 4, "csim": 4, "auh": 4}.get(name, 2)
        text = f"{v:.{digits}f}"
    if entry.get("missing"):
        text += f" ({entry['missing']}/{entry['frames']} no face)"
    return text


def markdown_table(result: dict) -> str:
    """The Markdown report of an `evaluate_workdir` result."""
    metrics = result["metrics"]
    lines = [
        f"# Evaluation of `{result['workdir']}` (step {result['step']})",
        "",
        f"{result['protocol']}. Split `{result['split']}` of `{result['data']}`: "
        f"{result['clips']} clip(s), {result['frames']} target frames at "
        f"{result['resolution']}x{result['resolution']}.",
        "",
        "| method | " + " | ".join(TITLES[m] for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for method, row in result["rows"].items():
        lines.append(f"| {method} | " + " | ".join(_fmt(row.get(m), m) for m in metrics) + " |")
    notes = []
    for method, row in result["rows"].items():
        psnr = row.get("psnr")
        if psnr and psnr.get("identical_pairs"):
            notes.append(f"{method}: {psnr['identical_pairs']} identical pairs make PSNR inf; "
                         f"without them {psnr['value_without_identical']}")
    if result["skipped"]:
        lines += ["", "Skipped:"]
        lines += [f"- {m}: {reason}" for m, reason in result["skipped"].items()]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    if result["provenance"]:
        lines += ["", "Networks:"]
        for m, p in result["provenance"].items():
            sha = {k: p.get(k.replace("weights", "sha256"), "")[:12] for k in p}
            files = [f"`{pathlib.Path(v).name}` (sha256 {sha[k]})"
                     for k, v in p.items() if k.startswith("weights")]
            lines.append(f"- {m}: {p.get('network', '?')}; {', '.join(files)}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the run


def evaluate_workdir(
    workdir: str | pathlib.Path,
    *,
    data: str | pathlib.Path | None = None,
    split: str = "test",
    metrics: str | Sequence[str] = METRICS,
    max_clips: int | None = None,
    output: str | pathlib.Path | None = None,
    step: int | None = None,
    identity_backend: str = "dlib",
    identity_weights: str = "",
    inception_weights: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate the checkpoint of `workdir` (latest, or `step`) on `split` of `data` (default:
    the run's `config.data.root`); write `output` (default `W/eval`) `/metrics.{json,md}`.

    Returns the dict written to `metrics.json` (NaN as None, inf as "inf"), plus `output`.
    Raises `EvaluationError` / `FileNotFoundError` naming the missing workdir, checkpoint or
    records, or an unknown metric.
    """
    from tqdm.auto import tqdm

    from pechead_jax import checkpointing, face_model, inference, input_pipeline, records

    workdir = pathlib.Path(workdir)
    wanted = parse_metrics(metrics)
    if max_clips is not None and max_clips < 1:
        raise EvaluationError(f"--max_clips {max_clips}: must be at least 1")
    config = checkpointing.read_config(workdir)
    step = checkpoint_step(workdir, step)
    root = pathlib.Path(data or config.data.root or "")
    if not str(data or config.data.root or ""):
        raise EvaluationError(f"{workdir}/config.json names no data.root; pass --data DATA")
    source_clips = records.ClipSource(root, split)  # clear errors for a missing folder/split
    total = len(source_clips) if max_clips is None else min(max_clips, len(source_clips))
    source_clips.close()
    face_path = root / "face_model.npz"
    face = face_model.LandmarkModel.load(face_path) if face_path.is_file() else None
    animator = inference.Animator.from_workdir(workdir, step=step)
    if face is not None:
        animator.face_model = face  # the face model of the data evaluated, not the run's
    res = animator.resolution

    nets = _Networks(wanted, res, identity_backend, identity_weights, inception_weights)
    model, baseline, real = _Row(), _Row(), _Row()
    clips = frames = 0
    too_short = []
    try:
        stream = input_pipeline.load_clips(root, split, resolution=res)
        bar = tqdm(stream, desc=f"evaluate {split}", unit="clip", disable=not progress,
                   total=total)
        for clip, arrays in bar:
            if len(arrays["frames"]) < 2:
                too_short.append(clip.clip_id)
                continue
            source, motion = inference.clip_source_and_motion(arrays, 0)
            generated = animator.reenact(source, motion)[1:]
            target = arrays["frames"][1:]
            nets.measure_clip(model, baseline, np.asarray(source.image, np.float32),
                              generated, target, real)
            clips += 1
            frames += len(target)
            bar.set_postfix(frames=frames)
            if max_clips is not None and clips >= max_clips:
                break
        bar.close()
    finally:
        nets.close()
    if clips == 0:
        raise EvaluationError(f"split {split!r} of {root} has no clip of 2 or more frames")

    method = f"PECHead ({config.model.variant}, step {step})"
    rows = {method: _summarise(model, real, nets), BASELINE: _summarise(baseline, real, nets)}
    for name in ("fid", "fvd"):
        if name in nets.metrics and name not in rows[method]:
            count = sum(len(f) for f in model.features.get(name, []))
            unit = "16-frame clips (from test clips of 17+ frames)" if name == "fvd" else "frames"
            nets.skipped[name] = f"needs at least 2 {unit} for a covariance, got {count}"
            nets.metrics.remove(name)
    missing = {m: {r: rows[r][m]["missing"] for r in rows}
               for m in (*FACE_METRICS, "csim") if m in nets.metrics}
    result = {
        "workdir": str(workdir),
        "step": step,
        "data": str(root),
        "split": split,
        "protocol": PROTOCOL,
        "resolution": res,
        "clips": clips,
        "frames": frames,
        "metrics": [m for m in METRICS if m in nets.metrics],
        "rows": rows,
        "skipped": dict(nets.skipped),
        "faces_missing": missing,
        "clips_too_short": too_short,
        "provenance": {m: nets.provenance[m] for m in METRICS if m in nets.provenance
                       and m in nets.metrics},
    }
    result = _json_safe(result)
    out = pathlib.Path(output) if output is not None else workdir / "eval"
    fileio.write_text(out / "metrics.json", json.dumps(result, indent=1, allow_nan=False) + "\n")
    fileio.write_text(out / "metrics.md", markdown_table(result))
    result["output"] = str(out)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pechead_jax.evaluate",
                                description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="training workdir (config.json, checkpoints/)")
    p.add_argument("--data", default=None, help="records folder (default: the run's data.root)")
    p.add_argument("--split", default="test")
    p.add_argument("--metrics", default=",".join(METRICS), help=f"from {','.join(METRICS)}")
    p.add_argument("--max_clips", type=int, default=None)
    p.add_argument("--output", default=None, help="output folder (default: WORKDIR/eval)")
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
    try:
        result = evaluate_workdir(
            args.workdir, data=args.data, split=args.split, metrics=args.metrics,
            max_clips=args.max_clips, output=args.output, step=args.step,
            identity_backend=args.identity_backend, identity_weights=args.identity_weights,
            inception_weights=args.inception_weights, progress=not args.no_progress,
        )
    except (EvaluationError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"evaluate: {e}") from None
    sys.stdout.write(pathlib.Path(result["output"], "metrics.md").read_text())
    return result


if __name__ == "__main__":
    main()
