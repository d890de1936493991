"""The inference API without a trained run: relative motion, chunked streaming (one compile
for any length, CAP's context carried), edits, paste-back and video out with sound."""

import dataclasses
import pathlib
import sys

import cv2
import jax
import numpy as np
import pytest
from test_data_prep import feat_data

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs.common import get_config  # noqa: E402
from pechead_jax import animate, inference, media  # noqa: E402
from pechead_jax.face_analyser import BLENDSHAPE_NAMES  # noqa: E402
from pechead_jax.models import pechead  # noqa: E402
from pechead_jax.models.pechead import PECHead  # noqa: E402

E = len(BLENDSHAPE_NAMES)


def rotation(pose):
    return inference._rotations(np.asarray(pose)[..., :3])


def test_relative_motion_composes_rotations_and_keeps_frame_zero():
    rng = np.random.default_rng(0)
    src_pose = np.array([0.1, -0.05, 0.4, 0.2, 0.05, -0.1], np.float32)  # a rolled portrait
    source = inference.Source(np.zeros((8, 8, 3)), src_pose, rng.uniform(0.2, 0.4, E),
                              np.zeros((68, 2)))
    ref = np.array([-0.2, 0.1, 0.0, -0.1, 0.2, 0.0], np.float32)
    turned = ref + np.array([0.35, 0.0, 0.0, 0.3, 0.1, -0.05], np.float32)
    expr = rng.uniform(0.0, 0.5, (2, E)).astype(np.float32)
    expr[1, 0] = expr[0, 0] + 0.9  # pushes the source's blendshape 0 past 1: clamped
    out = inference.relative_motion(source, inference.Motion(np.stack([ref, turned]), expr))
    # Frame 0 (the driving reference) is the portrait exactly.
    np.testing.assert_array_equal(out.pose[0, :3], src_pose[:3])
    np.testing.assert_allclose(out.pose[0], src_pose, atol=1e-6)
    np.testing.assert_allclose(out.expression[0], source.expression, atol=1e-6)
    assert out.landmarks is None
    # Frame 1: R_t R_ref^T R_s, composed -- not angles added (the portrait is rolled).
    want = rotation(turned) @ rotation(ref).T @ rotation(src_pose)
    np.testing.assert_allclose(rotation(out.pose[1]), want, atol=1e-5)
    added = src_pose[:3] + turned[:3] - ref[:3]
    assert np.abs(rotation(added) - want).max() > 0.05
    # Scale relative; the translation is the driving shift at the portrait's size.
    np.testing.assert_allclose(out.pose[1, 3], src_pose[3] + 0.3, atol=1e-6)
    np.testing.assert_allclose(out.pose[1, 4:], src_pose[4:] + np.array([0.1, -0.05])
                               * np.exp(src_pose[3] - ref[3]), atol=1e-6)
    assert out.expression[1, 0] == 1.0
    np.testing.assert_allclose(out.expression[1, 1:],
                               np.clip(source.expression[1:] + expr[1, 1:] - expr[0, 1:], 0, 1),
                               atol=1e-6)


@pytest.fixture(scope="module")
def full_animator():
    """A tiny `full` model, decoded output only, with perturbed initial parameters (CAP's
    zero-initialised inject made non-zero, so that the carried context changes the frames)."""
    config = get_config("tiny")
    config.model.variant = "full"
    config.model.composite = False
    model = PECHead(config.model)
    inputs = pechead.model_inputs(pechead.dummy_batch(config.model, 1, 2))
    params = model.init(jax.random.key(0, impl="unsafe_rbg"), *inputs,
                        method=PECHead.animate)["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys)])
    return inference.Animator(config, params, chunk=4), model, params


def test_full_streams_in_chunks_with_context_carried_and_one_compile(full_animator):
    animator, model, params = full_animator
    m = animator.config.model
    r = m.resolution
    rng = np.random.default_rng(0)
    source = inference.Source(rng.uniform(0, 1, (r, r, 3)).astype(np.float32),
                              np.zeros(6, np.float32), np.full(E, 0.1, np.float32),
                              rng.uniform(-0.5, 0.5, (m.num_landmarks, 2)).astype(np.float32))
    t = 11  # three chunks of 4, the last padded
    pose = np.zeros((t, 6), np.float32)
    pose[:, 0] = np.linspace(0, 0.3, t)
    motion = inference.Motion(pose, np.full((t, E), 0.1, np.float32),
                              source.landmarks + np.linspace(0, 0.05, t)[:, None, None])
    frames = animator.reenact(source, motion)
    assert frames.shape == (t, r, r, 3)
    assert animator.reenact(source, motion.__class__(pose[:5], motion.expression[:5],
                                                     motion.landmarks[:5])).shape[0] == 5
    assert animator.traces == 1  # lengths 11 and 5: one compilation of the chunk
    # The chunks equal one scan over the whole clip: CAP's context crossed the chunk borders.
    image, cond, lmk = animator._source_arrays(source)
    cond_d = np.asarray(inference.make_condition(pose, motion.expression))
    whole = model.apply({"params": params}, image, cond, lmk, cond_d[None],
                        motion.landmarks[None].astype(np.float32),
                        method=PECHead.animate)["image"][0]
    np.testing.assert_allclose(frames, np.asarray(whole), atol=5e-4)
    # ... and the context matters: a chunk started afresh at frame 4 differs there.
    lmk_d = motion.landmarks.astype(np.float32)
    encoded = animator.encode(source)
    context = animator._initial_context_fn(params, image, cond, lmk, cond_d[4], lmk_d[4],
                                           encoded)
    fresh, _ = animator._chunk_fn(params, image, cond, lmk, cond_d[4:8], lmk_d[4:8], context,
                                  encoded)
    assert np.abs(np.asarray(fresh[0]) - frames[4]).max() > 1e-2
    assert animator.traces == 1
    # The source side is computed once and reused: passing it gives the same frames, and
    # it is what the chunks use (another portrait's encoding changes them).
    np.testing.assert_allclose(animator.reenact(source, motion, encoded=encoded), frames,
                               atol=1e-6)
    other = dataclasses.replace(source, image=source.image[::-1].copy())
    mixed = animator.reenact(source, motion, encoded=animator.encode(other))
    assert np.abs(mixed - frames).max() > 1e-2
    assert animator.traces == 1


def test_edit_motion_frontalize_deltas_and_sweep():
    src_pose = np.array([0.2, -0.1, 0.05, 0.3, 0.1, -0.2], np.float32)
    source = inference.Source(None, src_pose, np.full(E, 0.2, np.float32), None)
    pose, expr = animate.edit_motion(source, frontalize=True)
    np.testing.assert_array_equal(pose[0, :3], 0.0)
    np.testing.assert_array_equal(pose[0, 3:], src_pose[3:])  # the rest kept
    np.testing.assert_array_equal(expr[0], source.expression)
    with pytest.raises(animate.AnimateError, match="--frontalize"):
        animate.edit_motion(source, yaw=animate.parse_angles("10", "yaw"), frontalize=True)
    # A sign makes an angle relative; no sign is absolute.
    assert animate.parse_angles("+10", "yaw").relative
    assert not animate.parse_angles("10", "yaw").relative
    pose, _ = animate.edit_motion(source, yaw=animate.parse_angles("+10", "yaw"),
                                  pitch=animate.parse_angles("5", "pitch"))
    np.testing.assert_allclose(pose[0, :2], [src_pose[0] + np.radians(10), np.radians(5)],
                               atol=1e-6)
    # A sweep runs from the portrait to the edit.
    pose, expr = animate.edit_motion(source, yaw=animate.parse_angles("30", "yaw"),
                                     expression={"jawOpen": 0.8}, sweep=5)
    assert pose.shape == (5, 6) and expr.shape == (5, E)
    np.testing.assert_allclose(pose[0], src_pose, atol=1e-6)
    np.testing.assert_allclose(pose[-1, 0], np.radians(30), atol=1e-6)
    jaw = BLENDSHAPE_NAMES.index("jawOpen")
    np.testing.assert_allclose(expr[[0, -1], jaw], [0.2, 0.8], atol=1e-6)
    assert np.all(np.diff(expr[:, jaw]) > 0)
    with pytest.raises(animate.AnimateError, match="within"):
        animate.parse_angles("400", "roll")


def synthetic_face(res: int) -> np.ndarray:
    """68 points shaped like a face (jaw arc, brows, a nose line) in [-1, 1]."""
    pts = np.zeros((68, 2), np.float32)
    a = np.linspace(np.pi * 0.95, np.pi * 0.05, 17)
    pts[:17] = np.stack([0.4 * np.cos(a), 0.1 + 0.4 * np.sin(a)], -1)
    pts[17:27] = np.stack([np.linspace(-0.35, 0.35, 10), np.full(10, -0.2)], -1)
    pts[27:] = np.stack([np.zeros(41), np.linspace(-0.15, 0.35, 41)], -1)
    return pts


def test_paste_back_keeps_the_photo_away_from_the_face():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    res = 64
    box = (120.0, 40.0, 160.0)  # x0, y0, side: the crop lies inside the photo
    frame = np.full((res, res, 3), 0.5, np.float32)
    mask = animate.face_mask(synthetic_face(res)[None], res)
    assert mask.max() > 0.99 and mask[0].max() == 0 and mask[:, -1].max() == 0
    out = animate.paste_back(photo, box, frame, mask)
    assert out.shape == photo.shape and out.dtype == np.uint8
    outside = np.ones(photo.shape[:2], bool)
    outside[40:200, 120:280] = False
    np.testing.assert_array_equal(out[outside], photo[outside])  # far pixels: the photo's
    centre = out[120, 200].astype(int)  # the face centre in the photo: the generated grey
    assert np.abs(centre - 128).max() <= 2


def test_video_writer_h264_with_sound_and_silent_fallback(tmp_path):
    driving = feat_data() / "single_face.mp4"
    frames = [np.full((48, 62, 3), 8 * i, np.uint8) for i in range(12)]
    with media.VideoWriter(tmp_path / "a.mp4", 30.0, audio_from=driving) as w:
        for f in frames:
            w.write(f)
    assert w.codec == "h264" and w.audio
    assert media.probe_streams(tmp_path / "a.mp4") == ["video", "audio"]
    cap = cv2.VideoCapture(str(tmp_path / "a.mp4"))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 12 and cap.get(cv2.CAP_PROP_FPS) == 30
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (62, 48)
    silent = tmp_path / "silent.mp4"
    cv2_writer = cv2.VideoWriter(str(silent), cv2.VideoWriter_fourcc(*"mp4v"), 10, (62, 48))
    cv2_writer.write(frames[0])
    cv2_writer.release()
    with media.VideoWriter(tmp_path / "b.mp4", 10.0, audio_from=silent) as w:
        w.write(frames[0])
    assert not w.audio and media.probe_streams(tmp_path / "b.mp4") == ["video"]
    with pytest.raises(ValueError, match="no frames"):
        with media.VideoWriter(tmp_path / "c.mp4", 10.0):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4", "silent.mp4"]


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs several (simulated) devices")
def test_chunks_split_over_all_local_devices_give_the_same_frames():
    """With a mesh over every local device, a chunk's frames are computed where they live
    (one slice per device) and equal the single-device frames."""
    config = get_config("tiny")
    model = PECHead(config.model)
    inputs = pechead.model_inputs(pechead.dummy_batch(config.model, 1, None))
    params = model.init(jax.random.key(0), *inputs)["params"]
    n = jax.local_device_count()
    mesh = inference.Animator.local_mesh(config, chunk=n)
    assert mesh is not None and mesh.devices.size == n
    one = inference.Animator(config, params, chunk=n)
    many = inference.Animator(config, params, chunk=n, mesh=mesh)
    m, r = config.model, config.model.resolution
    rng = np.random.default_rng(0)
    source = inference.Source(rng.uniform(0, 1, (r, r, 3)).astype(np.float32),
                              np.zeros(6, np.float32), np.full(E, 0.1, np.float32),
                              rng.uniform(-0.5, 0.5, (m.num_landmarks, 2)).astype(np.float32))
    t = n + 3
    pose = np.zeros((t, 6), np.float32)
    pose[:, 0] = np.linspace(-0.3, 0.3, t)
    motion = inference.Motion(pose, np.full((t, E), 0.1, np.float32),
                              source.landmarks + np.linspace(0, 0.05, t)[:, None, None])
    np.testing.assert_allclose(many.reenact(source, motion), one.reenact(source, motion),
                               atol=1e-5)
    image, cond, lmk = many._source_arrays(source)
    driving = np.asarray(inference.make_condition(pose, motion.expression))[:n]
    frames, _ = many._chunk_fn(many.params, image, cond, lmk, driving,
                               motion.landmarks[:n].astype(np.float32), None, many.encode(source))
    assert len(frames.sharding.device_set) == n
    with pytest.raises(ValueError, match="multiple"):
        inference.Animator(config, params, chunk=n + 1, mesh=mesh)
