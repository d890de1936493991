"""AKD, ARD, AUH, ARE on real face photos through the project's face analyser."""

import importlib.util
import os

import cv2
import numpy as np
import pytest

from pechead_jax.metrics import face


def _photo(name: str, size: int = 256) -> np.ndarray:
    path = os.path.join(importlib.util.find_spec("feat").submodule_search_locations[0],
                        "tests", "data", name)
    image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def test_pure_functions_known_values():
    a = np.zeros((2, 3, 2))
    b = a.copy()
    b[0, :, 0] = 3.0
    b[0, :, 1] = 4.0  # every point 5 px away in frame 0
    np.testing.assert_allclose(face.keypoint_distance(a, b), [5.0, 0.0])
    # 179 vs -179 degrees is 2 degrees apart, not 358.
    np.testing.assert_allclose(
        face.angle_difference([[179.0, 10.0, 0.0]], [[-179.0, 4.0, -3.0]]), [(2 + 6 + 3) / 3])
    aus = face.au_hamming([[1, 0, 1, 1], [0, 0, 0, 0]], [[1, 1, 0, 1], [np.nan] * 4])
    assert aus[0] == 0.5 and np.isnan(aus[1])
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        face.angle_difference(np.zeros((2, 6)), np.zeros((2, 6)))


@pytest.fixture(scope="module")
def measured():
    from pechead_jax import face_analyser

    photo = _photo("0-f1-su-ph.jpg")
    turned = _photo("45-m7-di-ph.jpg")  # yaw about 44 degrees
    no_face = _photo("free-mountain-vector-01.jpg")
    frames = np.stack([photo, turned, turned[:, ::-1], no_face, photo])
    with face_analyser.FaceAnalyser() as analyser:
        return frames, face.measure(analyser, frames)


def test_self_is_zero_and_no_face_is_reported(measured):
    _, m = measured
    assert m.found.tolist() == [True, True, True, False, True]
    assert m.aus.shape == (5, len(face.AU_NAMES))
    same = np.array([0, 1, 4])
    gen = face.FaceMeasurement(m.landmarks[same], m.pose[same], m.aus[same], m.found[same],
                               m.provenance)
    real = face.FaceMeasurement(m.landmarks[[4, 1, 0]], m.pose[[4, 1, 0]], m.aus[[4, 1, 0]],
                                m.found[[4, 1, 0]], m.provenance)
    for metric in (face.akd(gen, real), face.akd(gen, real, "mesh"), face.ard(gen, real),
                   face.auh(gen, real)):
        assert metric.value == pytest.approx(0.0, abs=1e-9) and metric.missing == 0, metric
    assert face.akd(gen, real).provenance["akd_landmarks"].startswith("ibug68")
    # Frame 3 has no face: counted, not dropped silently and not a crash.
    metric = face.akd(m, face.FaceMeasurement(m.landmarks[::-1], m.pose[::-1], m.aus[::-1],
                                              m.found[::-1], m.provenance))
    assert metric.missing == 2 and metric.total == 5 and np.isfinite(metric.value)
    assert "FaceLandmarker" in metric.as_dict()["provenance"]["network"]


def test_flip_changes_yaw_sign(measured):
    frames, m = measured
    yaw, pitch, roll = m.pose[1]
    f_yaw, f_pitch, f_roll = m.pose[2]
    assert abs(yaw) > 20.0, "the test photo should be turned"
    assert np.sign(f_yaw) == -np.sign(yaw) and abs(f_yaw + yaw) < 4.0, (yaw, f_yaw)
    assert abs(f_pitch - pitch) < 3.0 and abs(f_roll + roll) < 3.0
    pair = [1], [2]
    gen = face.FaceMeasurement(*(x[pair[0]] for x in (m.landmarks, m.pose, m.aus, m.found)),
                               m.provenance)
    real = face.FaceMeasurement(*(x[pair[1]] for x in (m.landmarks, m.pose, m.aus, m.found)),
                                m.provenance)
    assert face.ard(gen, real).value > abs(yaw) * 2 / 3 - 2.0
    assert face.akd(gen, real).value > 2.0  # the face moved: mirrored landmarks differ
    assert face.akd(gen, real, "mesh").value > 2.0
    with pytest.raises(ValueError, match="mesh vertices"):
        face.akd(gen, real, [0, 468])
    # ARE: the measured pose requested back gives 0; 9 degrees more yaw gives 9 / 3.
    assert face.are(gen, m.pose[[1]]).value == pytest.approx(0.0, abs=1e-9)
    assert face.are(gen, m.pose[[1]] + [9.0, 0, 0]).value == pytest.approx(3.0, abs=1e-6)


def test_blendshape_aus_follow_the_mapping():
    from pechead_jax import face_analyser

    names = face_analyser.BLENDSHAPE_NAMES
    scores = np.zeros((2, len(names)))
    scores[0, names.index("jawOpen")] = 0.9
    scores[0, names.index("mouthSmileRight")] = 0.6  # one side is enough
    scores[1, names.index("jawOpen")] = 0.4  # below the 0.5 threshold
    aus = face.blendshapes_to_aus(scores, names)
    on = [face.AU_NAMES[i] for i in np.flatnonzero(aus[0])]
    assert on == ["AU12", "AU26"] and aus[1].sum() == 0
    with pytest.raises(ValueError, match="jawOpen"):
        face.blendshapes_to_aus(scores[:, :10], names[:10])
