"""Dataset recipes: where each dataset keeps its videos and how it splits them.

A recipe turns a raw folder into `VideoItem`s: a file, an id that is unique within the
dataset (and stable across runs: it names the cache entry and the manifest line), the split,
and optionally a frame range for datasets that publish clip boundaries. Layouts are in
`data_prep/README.md`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import re

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class RecipeError(Exception):
    """The raw folder does not have the recipe's layout."""


@dataclasses.dataclass(frozen=True)
class VideoItem:
    path: str
    video_id: str
    split: str  # 'train' or 'test'
    start: int = 0  # first frame (inclusive)
    end: int | None = None  # last frame (exclusive); None = to the end
    group: str = ""  # source video / person, for grouping (informational)


def hashed_split(key: str, test_fraction: float) -> str:
    """A deterministic split from a hash of `key` (stable across machines and runs)."""
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    return "test" if h < test_fraction else "train"


def _videos_under(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
    )


def _require_dir(root: pathlib.Path) -> None:
    if not root.is_dir():
        raise RecipeError(f"--input {root}: not a folder")


def folder(root: pathlib.Path, test_fraction: float = 0.05) -> list[VideoItem]:
    """Any videos below `root`; id = path relative to root; split by a hash of the id."""
    _require_dir(root)
    items = []
    for p in _videos_under(root):
        vid = p.relative_to(root).as_posix()
        items.append(VideoItem(str(p), vid, hashed_split(vid, test_fraction), group=vid))
    return items


def voxceleb2(root: pathlib.Path, test_fraction: float = 0.0) -> list[VideoItem]:
    """`root/{dev,test}/[mp4/]ID/YOUTUBE_ID/UTT.mp4`; dev -> train, test -> test."""
    _require_dir(root)
    items = []
    for folder_name, split in (("dev", "train"), ("test", "test")):
        base = root / folder_name
        if (base / "mp4").is_dir():
            base = base / "mp4"
        if not base.is_dir():
            continue
        for p in _videos_under(base):
            rel = p.relative_to(base)
            if len(rel.parts) != 3:
                continue  # not ID/VIDEO/UTT
            vid = f"{folder_name}/{rel.with_suffix('').as_posix()}"
            items.append(VideoItem(str(p), vid, split, group=rel.parts[0]))
    if not items:
        raise RecipeError(f"--input {root}: no dev/ or test/ folders of ID/VIDEO/UTT.mp4 files")
    return items


_VFHQ_NAME = re.compile(r"Clip\+(?P<yt>.+?)\+P(?P<p>\d+)\+C(?P<c>\d+)\+F(?P<s>\d+)-(?P<e>\d+)")


def vfhq(root: pathlib.Path, test_fraction: float = 0.0) -> list[VideoItem]:
    """`root/meta_info/{train,test}/Clip+YTID+Pn+Cm+Fs-e.txt` and `root/videos/YTID.*`.

    The clip name carries the frame range [s, e]; our own tracking runs inside it.
    """
    _require_dir(root)
    videos = (
        {p.stem: p for p in _videos_under(root / "videos")} if (root / "videos").is_dir() else {}
    )
    items = []
    for split in ("train", "test"):
        meta = root / "meta_info" / split
        if not meta.is_dir():
            continue
        for txt in sorted(meta.glob("*.txt")):
            m = _VFHQ_NAME.match(txt.stem)
            if not m:
                continue
            path = videos.get(m["yt"])
            items.append(
                VideoItem(
                    str(path) if path else str(root / "videos" / f"{m['yt']}.mp4"),
                    txt.stem,
                    split,
                    start=int(m["s"]),
                    end=int(m["e"]) + 1,
                    group=m["yt"],
                )
            )
    if not items:
        raise RecipeError(f"--input {root}: no meta_info/{{train,test}}/Clip+*.txt files")
    return items


def talkinghead1kh(root: pathlib.Path, test_fraction: float = 0.0) -> list[VideoItem]:
    """`root/data_list/{train,val}_video_tubes.txt` (lines `NAME, H, W, S, E, L, T, R, B`) and
    `root/{train,val}/raw_videos/NAME.mp4`; val -> test. Each tube is one item."""
    _require_dir(root)
    items = []
    for listed, split in (("train", "train"), ("val", "test")):
        tubes = root / "data_list" / f"{listed}_video_tubes.txt"
        if not tubes.is_file():
            continue
        for k, line in enumerate(tubes.read_text().splitlines()):
            parts = [x.strip() for x in line.split(",")]
            if len(parts) < 5 or not parts[3].isdigit():
                continue
            name, start, end = parts[0], int(parts[3]), int(parts[4])
            path = root / listed / "raw_videos" / f"{name}.mp4"
            items.append(VideoItem(str(path), f"{listed}/{name}#{k}", split, start, end + 1, name))
    if not items:
        raise RecipeError(f"--input {root}: no data_list/{{train,val}}_video_tubes.txt")
    return items


def celebvhq(root: pathlib.Path, test_fraction: float = 0.05) -> list[VideoItem]:
    """`root/celebvhq_info.json` (`{"clips": {CLIP_ID: {"ytb_id": ..., ...}}}`) and the
    downloaded clips `CLIP_ID.mp4` anywhere below root. No official split: hashed by the
    YouTube id so one source video never lands in both splits."""
    _require_dir(root)
    info_file = root / "celebvhq_info.json"
    if not info_file.is_file():
        raise RecipeError(f"--input {root}: no celebvhq_info.json")
    try:
        clips = json.loads(info_file.read_text())["clips"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise RecipeError(f"{info_file}: not CelebV-HQ metadata ({e})") from e
    files = {p.stem: p for p in _videos_under(root)}
    items = []
    for clip_id in sorted(clips):
        yt = str(clips[clip_id].get("ytb_id", clip_id))
        path = files.get(clip_id, root / f"{clip_id}.mp4")
        items.append(VideoItem(str(path), clip_id, hashed_split(yt, test_fraction), group=yt))
    return items


RECIPES = {
    "folder": folder,
    "voxceleb2": voxceleb2,
    "vfhq": vfhq,
    "talkinghead1kh": talkinghead1kh,
    "celebvhq": celebvhq,
}


def list_videos(recipe: str, root: str | pathlib.Path, test_fraction: float | None = None):
    """The items of `recipe` under `root`; `test_fraction` overrides hashed splits' default."""
    if recipe not in RECIPES:
        raise RecipeError(f"--recipe {recipe!r}: expected one of {sorted(RECIPES)}")
    fn = RECIPES[recipe]
    kwargs = (
        {}
        if test_fraction is None or math.isnan(test_fraction)
        else {"test_fraction": test_fraction}
    )
    return fn(pathlib.Path(root), **kwargs)
