"""Frames per second of the metric feature networks on this machine; prints JSON.

    python benchmarks/metrics.py [--resolution 256] [--repeats 3]

Inception (FID) and I3D (FVD) run jitted on JAX's default device after one warm-up call;
the face analyser (MediaPipe) and the dlib identity embedder run on the host, one frame at a
time, on a real face photo resized to the evaluation resolution. The FID weights must have
been converted (python -m pechead_jax.metrics.convert_inception).
"""

import argparse
import json
import os
import platform
import time

import jax
import numpy as np
import skimage.data
import skimage.transform


def _time(fn, repeats: int) -> float:
    """Best-of-`repeats` wall time of `fn()` in seconds (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="Inception and MS-SSIM batch")
    args = parser.parse_args()

    from pechead_jax.metrics import i3d, identity, inception
    from pechead_jax.metrics import image as image_metrics

    res = args.resolution
    face = skimage.transform.resize(skimage.data.astronaut()[:300, 100:400], (res, res),
                                    anti_aliasing=True).astype(np.float32)
    out = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "resolution": res,
           # Other work on a shared machine slows every figure: record how busy it was.
           "load_average_1min_before": round(os.getloadavg()[0], 2)}

    try:
        params, _ = inception.load_inception()
        images = np.stack([face] * args.batch)
        t = _time(lambda: inception.inception_features(params, images).block_until_ready(),
                  args.repeats)
        out["inception_fps"] = args.batch / t
    except FileNotFoundError as e:
        out["inception_fps"] = None
        out["inception_error"] = str(e)

    if res >= image_metrics.min_ms_ssim_size():  # not a network, but it costs about as much
        pair = np.stack([face] * args.batch), np.stack([face[::-1]] * args.batch)
        t = _time(lambda: image_metrics.ms_ssim(*pair).block_until_ready(), args.repeats)
        out["ms_ssim_fps"] = args.batch / t

    params, _ = i3d.load_i3d()
    clip = np.stack([face] * i3d.CLIP_LENGTH)[None]
    t = _time(lambda: i3d.i3d_features(params, clip).block_until_ready(), args.repeats)
    out["i3d_fps"] = i3d.CLIP_LENGTH / t

    embedder = identity.DlibEmbedder()
    frames = np.stack([face] * 4)
    out["dlib_identity_fps"] = len(frames) / _time(lambda: embedder.embed(frames), args.repeats)

    try:
        from pechead_jax import face_analyser
        from pechead_jax.metrics import face as face_metrics

        with face_analyser.FaceAnalyser() as analyser:
            t = _time(lambda: face_metrics.measure(analyser, frames), args.repeats)
        out["analyser_fps"] = len(frames) / t
    except ImportError as e:
        out["analyser_fps"] = None
        out["analyser_error"] = str(e)
    out["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
