"""CSIM: cosine similarity of identity embeddings of generated and reference faces.

Backends (docs/metrics.md):
- `DlibEmbedder` (default): dlib's ResNet face descriptor (128-d) from the
  `face-recognition-models` package, faces found by dlib's HOG detector (largest face) and
  aligned by its 5-point shape predictor (`get_face_chip` alignment, 150x150, padding 0.25).
- `ArcFaceEmbedder`: a user-supplied ArcFace file, `.onnx` (run with onnxruntime, which must
  be installed) or `.npz` (the insightface `iresnet` PyTorch state dict saved with
  `np.savez`, run in JAX here). Faces are found the same way; the 112x112 crop is the
  similarity transform that takes the eye centres and the nose (from dlib's 5 points) to
  the ArcFace template's eye centres and nose tip.
A frame where no face is found gets NaN and is counted as missing by `csim`.
"""

import functools
import pathlib
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from pechead_jax.metrics import result, weights

_DLIB_PIP = "pip install dlib-bin face-recognition-models"
DLIB_NETWORK = "dlib_face_recognition_resnet_model_v1 (128-d), HOG detector, 5-point alignment"
ARCFACE_NETWORK = "ArcFace (user-supplied)"


def to_uint8(images) -> np.ndarray:
    """`[B, H, W, 3]` float in [0, 1] (or uint8) -> uint8 RGB, rounded."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected RGB images [B, H, W, 3], got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


class Embedder(Protocol):
    provenance: dict[str, str]

    def embed(self, images) -> np.ndarray:
        """`[B, H, W, 3]` -> embeddings `[B, D]`, rows of NaN where no face was found."""
        ...


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity in float64, `[B, D] x2 -> [B]` (NaN rows stay NaN)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1)


def csim(embedder: Embedder, generated, reference) -> result.FrameMetric:
    """CSIM between generated frames `[B, H, W, 3]` and reference faces (same shape, or one
    reference `[1, H, W, 3]`, e.g. the source portrait in cross-identity reenactment)."""
    gen = embedder.embed(generated)
    ref = embedder.embed(reference)
    if ref.shape[0] == 1:
        ref = np.broadcast_to(ref, gen.shape)
    if ref.shape != gen.shape:
        raise ValueError(f"csim: {gen.shape[0]} generated frames but {ref.shape[0]} references")
    return result.from_per_frame("csim", cosine_similarity(gen, ref), embedder.provenance)


@functools.cache
def _dlib_models(predictor_path: str, recognition_path: str):
    import dlib

    return (dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path),
            dlib.face_recognition_model_v1(recognition_path))


def _model_path(name: str) -> pathlib.Path:
    return weights.package_file("face_recognition_models", f"models/{name}", _DLIB_PIP)


class DlibFaces:
    """dlib's HOG detector (largest face) and 5-point shape predictor, shared by backends."""

    def __init__(self, upsample: int = 1):
        self.upsample = upsample
        self.predictor_path = _model_path("shape_predictor_5_face_landmarks.dat")
        self.recognition_path = _model_path("dlib_face_recognition_resnet_model_v1.dat")
        self.detector, self.predictor, self.recognition = _dlib_models(
            str(self.predictor_path), str(self.recognition_path))

    def shape(self, image: np.ndarray):
        """The 5-point `full_object_detection` of the largest face, or None."""
        rects = self.detector(image, self.upsample)
        if len(rects) == 0:
            return None
        rect = max(rects, key=lambda r: r.width() * r.height())
        return self.predictor(image, rect)


class DlibEmbedder:
    """dlib ResNet face descriptor (128-d); deterministic (no jitter)."""

    def __init__(self, upsample: int = 1):
        self.faces = DlibFaces(upsample)
        self.provenance = weights.provenance(
            DLIB_NETWORK, self.faces.recognition_path, self.faces.predictor_path)

    def embed(self, images) -> np.ndarray:
        images = to_uint8(images)
        out = np.full((images.shape[0], 128), np.nan)
        for i, image in enumerate(images):
            image = np.ascontiguousarray(image)
            shape = self.faces.shape(image)
            if shape is not None:
                out[i] = np.asarray(self.faces.recognition.compute_face_descriptor(image, shape))
        return out


# ArcFace's 112x112 template (insightface): eye centres, nose tip, mouth corners.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) taking `src [N,2]` to `dst`: `[2, 3]`."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    fix = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ fix @ vt
    scale = np.trace(np.diag(sig) @ fix) / s.var(0).sum()
    return np.concatenate([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]], axis=1)


def arcface_alignment(shape) -> np.ndarray:
    """`[2, 3]` similarity taking eye centres + nose from dlib's 5 points to the template."""
    p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float64)
    # dlib's 5 points: 0, 1 outer and inner corner of the eye on the image's right (the
    # subject's left eye), 2, 3 outer and inner corner of the image-left eye, 4 nose base.
    # The template lists the image-left eye first.
    src = np.stack([(p[2] + p[3]) / 2, (p[0] + p[1]) / 2, p[4]])
    return similarity_transform(src, ARCFACE_TEMPLATE[:3])


def arcface_crop(image: np.ndarray, shape) -> np.ndarray:
    """112x112 RGB crop aligned on eye centres + nose from dlib's 5 points."""
    import cv2

    return cv2.warpAffine(image, arcface_alignment(shape), (112, 112), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _bn(p: dict, name: str, x: jax.Array) -> jax.Array:
    scale = p[f"{name}.weight"] * jax.lax.rsqrt(p[f"{name}.running_var"] + 1e-5)
    return (x - p[f"{name}.running_mean"]) * scale + p[f"{name}.bias"]


def _conv(p: dict, name: str, x: jax.Array, stride: int) -> jax.Array:
    w = p[f"{name}.weight"]  # [O, I, kh, kw] as saved from PyTorch
    pad = w.shape[-1] // 2
    return jax.lax.conv_general_dilated(x, jnp.transpose(w, (2, 3, 1, 0)), (stride, stride),
                                        ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _prelu(p: dict, name: str, x: jax.Array) -> jax.Array:
    return jnp.where(x > 0, x, x * p[f"{name}.weight"])


def iresnet_forward(p: dict, x: jax.Array) -> jax.Array:
    """insightface `iresnet` (depth read from the keys): `[B,112,112,3]` in [-1,1] -> `[B,512]`."""
    x = _prelu(p, "prelu", _bn(p, "bn1", _conv(p, "conv1", x, 1)))
    for stage in range(1, 5):
        block = 0
        while f"layer{stage}.{block}.conv1.weight" in p:
            name = f"layer{stage}.{block}"
            down = f"{name}.downsample.0.weight" in p
            stride = 2 if block == 0 else 1
            y = _bn(p, f"{name}.bn1", x)
            y = _prelu(p, f"{name}.prelu", _bn(p, f"{name}.bn2", _conv(p, f"{name}.conv1", y, 1)))
            y = _bn(p, f"{name}.bn3", _conv(p, f"{name}.conv2", y, stride))
            if down:
                x = _bn(p, f"{name}.downsample.1", _conv(p, f"{name}.downsample.0", x, stride))
            x = x + y
            block += 1
    x = _bn(p, "bn2", x)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch flattens C, H, W
    x = x @ p["fc.weight"].T + p["fc.bias"]
    return _bn(p, "features", x)


class ArcFaceEmbedder:
    """ArcFace embeddings from a user-supplied `.onnx` or `.npz` (see module docstring)."""

    def __init__(self, path: str | pathlib.Path, upsample: int = 1):
        path = pathlib.Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"ArcFace weights not found: {path}. No ArcFace weights ship with any package; "
                "supply an insightface model as .onnx (needs onnxruntime) or .npz "
                "(see docs/metrics.md, 'CSIM'), or use the default dlib backend."
            )
        self.faces = DlibFaces(upsample)
        self.provenance = weights.provenance(ARCFACE_NETWORK, path, self.faces.predictor_path)
        if path.suffix == ".onnx":
            try:
                import onnxruntime
            except ImportError as e:
                raise ImportError(f"{path}: running an .onnx ArcFace needs onnxruntime "
                                  "(pip install onnxruntime)") from e
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self._run = lambda x: session.run(None, {name: np.transpose(x, (0, 3, 1, 2))})[0]
        elif path.suffix == ".npz":
            with np.load(path) as data:
                params = {k: jnp.asarray(data[k], jnp.float32) for k in data.files}
            missing = [k for k in ("conv1.weight", "fc.weight", "features.running_var")
                       if k not in params]
            if missing:
                raise ValueError(f"{path}: not an insightface iresnet state dict (no {missing})")
            forward = jax.jit(iresnet_forward)
            self._run = lambda x: np.asarray(forward(params, jnp.asarray(x)))
        else:
            raise ValueError(f"{path}: ArcFace weights must be .onnx or .npz, got {path.suffix!r}")

    def embed(self, images) -> np.ndarray:
        images = to_uint8(images)
        crops, index = [], []
        for i, image in enumerate(images):
            image = np.ascontiguousarray(image)
            shape = self.faces.shape(image)
            if shape is not None:
                crops.append(arcface_crop(image, shape))
                index.append(i)
        out = None
        if crops:
            x = (np.stack(crops).astype(np.float32) / 255.0 - 0.5) / 0.5
            emb = np.asarray(self._run(x), np.float64)
            out = np.full((images.shape[0], emb.shape[-1]), np.nan)
            out[index] = emb
        return out if out is not None else np.full((images.shape[0], 512), np.nan)


def make_embedder(backend: str = "dlib", path: str = "") -> Embedder:
    """`'dlib'` (default) or `'arcface'` (needs `path`)."""
    if backend == "dlib":
        return DlibEmbedder()
    if backend == "arcface":
        if not path:
            raise ValueError("identity backend 'arcface' needs a weights path (.onnx or .npz)")
        return ArcFaceEmbedder(path)
    raise ValueError(f"unknown identity backend {backend!r}; expected 'dlib' or 'arcface'")
