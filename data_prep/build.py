r"""Build a PECHead dataset from raw videos: records, face model, manifest.

    python -m data_prep.build --recipe voxceleb2 --input RAW --output DATA \
        [--resolution 256] [--workers N] [--face_landmarker PATH] [--max_frames N] ...

Pass 1 (process pool, one video per task): decode, detect and track the face, cut clips,
crop, analyse every crop with MediaPipe, JPEG-encode; the result of each video is cached
under DATA/.cache/ and a line is appended to DATA/manifest.jsonl (ok, or skipped and why).
Videos already in the manifest are not redone, so an interrupted run resumes.
Pass 2 (this process): Procrustes pose per frame, fit the landmark face model on the train
split (streamed, one video at a time), save DATA/face_model.npz, then per video the identity
code, smoothed expression and reconstructed landmarks, written as records per split.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import dataclasses
import json
import logging
import multiprocessing
import os
import pathlib
import sys
import time

import numpy as np

from data_prep import analyse as analyse_lib
from data_prep import recipes
from pechead_jax import face_analyser, face_model

log = logging.getLogger("data_prep")


# ----------------------------------------------------------------------------- pass 1

_WORKER: analyse_lib.Worker | None = None


def _init_worker(options: analyse_lib.Options) -> None:
    global _WORKER
    logging.getLogger().setLevel(logging.WARNING)
    _WORKER = analyse_lib.Worker(options)


def _run_one(args) -> dict:
    item, cache_dir = args
    return _WORKER(item, cache_dir)


def _run_serial(tasks, options):
    _init_worker(options)
    try:
        for task in tasks:
            yield _run_one(task)
    finally:
        _WORKER.close()


def _run_pool(tasks, options, workers):
    """Results as they finish. A worker that dies (a native crash in a decoder or MediaPipe)
    breaks the pool: its in-flight videos are reported as failed and a new pool goes on."""
    # spawn: MediaPipe's native threads do not survive a fork.
    ctx = multiprocessing.get_context("spawn")
    pending = list(reversed(tasks))
    while pending:
        pool = cf.ProcessPoolExecutor(workers, ctx, initializer=_init_worker, initargs=(options,))
        in_flight: dict[cf.Future, tuple] = {}
        try:
            while pending or in_flight:
                while pending and len(in_flight) < 2 * workers:
                    task = pending.pop()
                    in_flight[pool.submit(_run_one, task)] = task
                done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    task = in_flight.pop(fut)
                    try:
                        yield fut.result()
                    except cf.process.BrokenProcessPool:
                        yield _crashed(task)
                        for other in in_flight.values():
                            yield _crashed(other)
                        in_flight.clear()
                        raise
        except cf.process.BrokenProcessPool:
            continue
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _crashed(task) -> dict:
    item = task[0]
    return {
        "video_id": item.video_id,
        "path": item.path,
        "split": item.split,
        "status": "failed",
        "reason": "worker process crashed on this video (or on one processed with it)",
    }


def read_manifest(path: pathlib.Path) -> dict[str, dict]:
    """The latest manifest line per video id (a torn last line from a crash is ignored)."""
    lines: dict[str, dict] = {}
    if path.exists():
        for raw in path.read_text().splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            lines[line["video_id"]] = line
    return lines


def _is_done(line: dict, cache_dir: pathlib.Path) -> bool:
    if line.get("status") == "skipped":
        return True
    return (
        line.get("status") == "ok" and analyse_lib.cache_path(cache_dir, line["video_id"]).exists()
    )


def analyse_all(
    items: list[recipes.VideoItem],
    output: pathlib.Path,
    options: analyse_lib.Options,
    workers: int,
    progress: bool = True,
) -> dict[str, dict]:
    """Pass 1 over the videos not yet done; returns the full manifest (by video id)."""
    from tqdm import tqdm

    cache_dir = output / ".cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = output / "manifest.jsonl"
    manifest = read_manifest(manifest_path)
    todo = [
        it
        for it in items
        if not (it.video_id in manifest and _is_done(manifest[it.video_id], cache_dir))
    ]
    log.info(
        "%d videos, %d already done, %d to analyse", len(items), len(items) - len(todo), len(todo)
    )
    if not todo:
        return manifest
    tasks = [(it, str(cache_dir)) for it in todo]
    results = _run_serial(tasks, options) if workers <= 1 else _run_pool(tasks, options, workers)
    t0, frames = time.perf_counter(), 0
    bar = tqdm(total=len(todo), unit="video", disable=not progress, file=sys.stderr)
    try:
        if manifest_path.exists() and not manifest_path.read_bytes().endswith(b"\n"):
            with manifest_path.open("a") as f:  # end a line torn by a crash before appending
                f.write("\n")
        with manifest_path.open("a") as f:
            for line in results:
                f.write(json.dumps(line) + "\n")
                f.flush()
                manifest[line["video_id"]] = line
                frames += line.get("frames_read", 0)
                dt = max(time.perf_counter() - t0, 1e-9)
                bar.update(1)
                bar.set_postfix(videos_s=f"{bar.n / dt:.2f}", frames_s=f"{frames / dt:.1f}")
                if line["status"] == "failed":
                    log.warning("%s failed: %s", line["video_id"], line["reason"])
    finally:
        bar.close()
        results.close()
    return manifest


# ----------------------------------------------------------------------------- pass 2


def _clip_spans(clip: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(clip)) + 1
    bounds = [0, *edges.tolist(), len(clip)]
    return list(zip(bounds[:-1], bounds[1:]))


def video_geometry(cache: dict, mesh, smooth: int) -> dict:
    """`face_model.frame_geometry` of a cached video, clip by clip (smoothing never crosses a
    cut): pose `[T,6]`, canonical `[T,468,3]`, points `[T,468,2]`, expression `[T,52]`."""
    res = int(cache["resolution"])
    parts = [
        face_model.frame_geometry(
            cache["landmarks"][a:b], cache["blendshapes"][a:b], (res, res), mesh, smooth
        )
        for a, b in _clip_spans(cache["clip"])
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def fit_face_model(caches: list[pathlib.Path], mesh, args) -> face_model.LandmarkModel:
    """Fit the landmark model on the train videos, reading one cache at a time."""
    stats = face_model.FitStatistics()
    for path in caches:
        geo = video_geometry(analyse_lib.load_cache(path), mesh, args.smooth)
        stats.add(geo["canonical"], geo["expression"])
    if stats.frames == 0:
        raise SystemExit("data_prep: no usable train video, cannot fit the face model")
    return stats.finish(triangles=mesh.triangles, identity_dim=args.identity_dim, ridge=args.ridge)


def _second_difference(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x[2:] - 2 * x[1:-1] + x[:-2], axis=-1) if len(x) > 2 else np.zeros((0,))


def _chunked(fn, *arrays, chunk: int = 64) -> np.ndarray:
    """`fn` over the frames in fixed-size chunks (the last one padded), so every clip length
    reuses the same compiled shapes instead of compiling anew for each."""
    n = len(arrays[0])
    pad = -n % chunk
    padded = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in arrays]
    outs = [np.asarray(fn(*(a[i : i + chunk] for a in padded))) for i in range(0, n + pad, chunk)]
    return np.concatenate(outs)[:n]


def video_clips(cache: dict, geo: dict, model: face_model.LandmarkModel, video_id: str, stats):
    """The clips of one video, as the dicts `records` writes; accumulates error statistics."""
    identity = model.identity_code(geo["canonical"], geo["expression"])
    res = int(cache["resolution"])
    to_px = (res - 1) / 2
    clips = []
    for k, (a, b) in enumerate(_clip_spans(cache["clip"])):
        pose, expr = geo["pose"][a:b], geo["expression"][a:b]
        ident = np.broadcast_to(identity, (b - a, len(identity)))
        lmk = _chunked(model.reconstruct, pose, ident, expr).astype(np.float32)
        visible = _chunked(model.visibility, pose, ident, expr)
        raw = geo["points"][a:b][:, model.landmark_indices]
        stats["error"].append(np.linalg.norm(lmk - raw, axis=-1).ravel() * to_px)
        stats["jitter_raw"].append(_second_difference(raw).ravel() * to_px)
        stats["jitter_model"].append(_second_difference(lmk).ravel() * to_px)
        clips.append(
            {
                "clip_id": f"{video_id}#{k}",
                "video_id": video_id,
                "frames": cache["jpegs"][a:b],
                "pose": pose.astype(np.float32),
                "expression": expr.astype(np.float32),
                "landmarks": lmk,
                "raw_landmarks": raw.astype(np.float32),
                "visible": visible,
                "identity": identity.astype(np.float32),
                "frame_index": cache["frame_index"][a:b],
                "fps": float(cache["fps"]),
            }
        )
    return clips


def ok_videos(manifest: dict[str, dict], items) -> dict[str, list[str]]:
    """Video ids with status ok, per split, in a stable order (those of the current items)."""
    known = {it.video_id for it in items}
    out: dict[str, list[str]] = {"train": [], "test": []}
    for vid, line in sorted(manifest.items()):
        if line.get("status") == "ok" and vid in known:
            out.setdefault(line["split"], []).append(vid)
    return out


def iter_clips(output: pathlib.Path, video_ids, model, mesh, args, stats=None):
    """The record dicts of the given videos' clips, read from the pass-1 cache."""
    stats = collections.defaultdict(list) if stats is None else stats
    for vid in video_ids:
        cache = analyse_lib.load_cache(analyse_lib.cache_path(output / ".cache", vid))
        geo = video_geometry(cache, mesh, args.smooth)
        yield from video_clips(cache, geo, model, vid, stats)


def write_split(output: pathlib.Path, split: str, clips, args) -> None:
    """Write one split's clips through `pechead_jax.records` (the one record schema)."""
    try:
        from pechead_jax import records
    except ImportError as e:
        raise SystemExit(
            f"data_prep: cannot write records, pechead_jax.records is unavailable ({e}); the "
            f"analysis cache and face_model.npz in {output} are kept, re-run when it is installed"
        ) from e
    # Pass the fields the schema has (e.g. frame_index only if it keeps it).
    fields = {f.name for f in dataclasses.fields(records.Clip)}

    def to_record(clip: dict):
        values = dict(
            clip,
            dataset=args.recipe,
            split=split,
            height=args.resolution,
            width=args.resolution,
            num_frames=len(clip["frames"]),
        )
        return records.Clip(**{k: v for k, v in values.items() if k in fields})

    records.write_shards(
        (to_record(c) for c in clips), output, split, max_shard_bytes=args.max_shard_mb << 20
    )


def write_all(output: pathlib.Path, manifest: dict[str, dict], items, args) -> dict:
    """Pass 2: fit the face model on train, write records for every split; returns stats."""
    mesh = face_analyser.canonical_mesh(args.face_landmarker)
    ok = ok_videos(manifest, items)
    t = time.perf_counter()
    train = [analyse_lib.cache_path(output / ".cache", v) for v in ok["train"]]
    model = fit_face_model(train, mesh, args)
    model.save(output / "face_model.npz")
    summary = {"fit_seconds": round(time.perf_counter() - t, 3), "splits": {}}
    t = time.perf_counter()
    for split, vids in ok.items():
        counts = collections.Counter()
        stats = collections.defaultdict(list)

        def counted(clip_iter, counts=counts):
            for clip in clip_iter:
                counts["clips"] += 1
                counts["frames"] += len(clip["frames"])
                yield clip

        clip_iter = iter_clips(output, vids, model, mesh, args, stats)
        write_split(output, split, counted(clip_iter), args)
        summary["splits"][split] = {"videos": len(vids), **dict(counts)}
        # Pixels at the crop resolution: reconstruction error against the raw detections
        # (held out for the test split) and frame-to-frame jitter (second difference).
        for key, values in stats.items():
            v = np.concatenate(values) if values else np.zeros((0,))
            summary["splits"][split][f"landmark_{key}_px"] = {
                "mean": round(float(v.mean()), 3) if len(v) else None,
                "p95": round(float(np.percentile(v, 95)), 3) if len(v) else None,
            }
            log.info(
                "%s landmark %s: %s px", split, key, summary["splits"][split][f"landmark_{key}_px"]
            )
    summary["write_seconds"] = round(time.perf_counter() - t, 3)
    return summary


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.build", description=__doc__.split("\n")[0]
    )
    p.add_argument("--recipe", required=True, choices=sorted(recipes.RECIPES))
    p.add_argument(
        "--input", required=True, help="raw dataset folder (layouts: data_prep/README.md)"
    )
    p.add_argument(
        "--output", required=True, help="output folder (records, face_model.npz, manifest)"
    )
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--face_landmarker", default=None, help="MediaPipe face_landmarker.task")
    p.add_argument("--min_clip_frames", type=int, default=16)
    p.add_argument("--max_clip_frames", type=int, default=300)
    p.add_argument("--min_face_size", type=float, default=64.0, help="face box side, source px")
    p.add_argument("--margin", type=float, default=2.0, help="crop side / face box side")
    p.add_argument("--max_frames", type=int, default=None, help="frames per video (tests)")
    p.add_argument("--min_detection_confidence", type=float, default=0.8)
    p.add_argument("--test_fraction", type=float, default=None, help="hashed-split recipes")
    p.add_argument("--identity_dim", type=int, default=16)
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument("--smooth", type=int, default=5, help="blendshape moving-average frames")
    p.add_argument("--jpeg_quality", type=int, default=95)
    p.add_argument("--max_shard_mb", type=int, default=256, help="record shard size")
    p.add_argument(
        "--stage",
        choices=("analyse", "all"),
        default="all",
        help="'analyse': pass 1 only (e.g. one shard of the videos per machine), 'all': both",
    )
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    if args.resolution < 32:
        p.error(f"--resolution {args.resolution}: must be at least 32")
    if args.min_clip_frames < 1 or args.max_clip_frames < args.min_clip_frames:
        p.error("--min_clip_frames must be >= 1 and <= --max_clip_frames")
    if args.max_frames is not None and args.max_frames < 1:
        p.error("--max_frames must be positive")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    try:
        landmarker = str(face_analyser.find_face_landmarker(args.face_landmarker))
        items = recipes.list_videos(args.recipe, args.input, args.test_fraction)
    except (FileNotFoundError, recipes.RecipeError) as e:
        raise SystemExit(f"data_prep: {e}") from None
    if not items:
        raise SystemExit(
            f"data_prep: --input {args.input}: no videos found for --recipe {args.recipe}"
        )
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    options = analyse_lib.Options(
        resolution=args.resolution,
        min_clip_frames=args.min_clip_frames,
        max_clip_frames=args.max_clip_frames,
        min_face_size=args.min_face_size,
        margin=args.margin,
        max_frames=args.max_frames,
        min_detection_confidence=args.min_detection_confidence,
        jpeg_quality=args.jpeg_quality,
        face_landmarker=landmarker,
    )
    t0 = time.perf_counter()
    manifest = analyse_all(items, output, options, args.workers, progress=not args.no_progress)
    analyse_seconds = time.perf_counter() - t0
    lines = [manifest[it.video_id] for it in items if it.video_id in manifest]
    reasons = collections.Counter(ln.get("reason") for ln in lines if ln["status"] != "ok")
    summary = write_all(output, manifest, items, args) if args.stage == "all" else {}
    summary.update(
        videos=len(items),
        ok=sum(ln["status"] == "ok" for ln in lines),
        not_ok=dict(reasons),
        analyse_seconds=round(analyse_seconds, 3),
        seconds=round(time.perf_counter() - t0, 3),
    )
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
