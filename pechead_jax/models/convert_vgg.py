"""One-off converter: a torchvision VGG state dict (`.pth`) -> the `.npz` `perceptual.py` loads.

    python -m pechead_jax.models.convert_vgg --input vgg19-dcbb9e9d.pth --output vgg19.npz

`--backbone vgg19` (default) or `vgg16`. The input is the state dict of
`torchvision.models.vgg19(weights=...)` (or of its `features` trunk): convolution weights
`features.N.weight` `[O, I, 3, 3]` and biases `features.N.bias`, taken in order of N and
named `conv1_1, conv1_2, conv2_1, ...`; kernels are transposed to Flax's HWIO. The classifier
is dropped. torch is needed here only, and it loads the file with `weights_only=True` (no
arbitrary code). The output is written atomically (temp file + rename) and loaded back to
check the shapes.
"""

import argparse
import os
import pathlib
import pickle
import re
import sys

import numpy as np

from pechead_jax import fileio
from pechead_jax.models import perceptual

_CONV = re.compile(r"^(?:features\.)?(\d+)\.weight$")


def convert_state_dict(state: dict[str, np.ndarray], backbone: str) -> dict[str, np.ndarray]:
    """torchvision VGG state dict (numpy arrays) -> `{'convB_I/kernel': HWIO, 'convB_I/bias'}`."""
    names = perceptual.conv_names(backbone)
    indices = sorted(
        int(m.group(1)) for k in state if (m := _CONV.match(k)) and np.ndim(state[k]) == 4
    )
    if len(indices) != len(names):
        raise ValueError(
            f"expected the {len(names)} convolutions of torchvision's {backbone} "
            f"('features.N.weight', 4-D), found {len(indices)}"
        )
    prefix = "features." if any(k.startswith("features.") for k in state) else ""
    flat = {}
    for name, index in zip(names, indices):
        weight = np.asarray(state[f"{prefix}{index}.weight"], np.float32)
        bias_key = f"{prefix}{index}.bias"
        if bias_key not in state:
            raise ValueError(f"state dict has {prefix}{index}.weight but no {bias_key}")
        flat[f"{name}/kernel"] = weight.transpose(2, 3, 1, 0)
        flat[f"{name}/bias"] = np.asarray(state[bias_key], np.float32)
    return flat


def load_torch_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A `.pth` state dict as numpy arrays (`torch.load(weights_only=True)`)."""
    try:
        import torch
    except ImportError as e:
        raise SystemExit("convert_vgg needs torch (pip install torch); only for converting") from e
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def write_npz(flat: dict[str, np.ndarray], output: str | os.PathLike) -> pathlib.Path:
    """Write `flat` to `output` atomically; returns the path."""
    output = pathlib.Path(output)
    fileio.save_npz(output, **flat)
    return output


def convert(
    source: str | os.PathLike, output: str | os.PathLike, backbone: str = "vgg19"
) -> pathlib.Path:
    """Convert the `.pth` at `source` into `output` and check it loads as `backbone`."""
    flat = convert_state_dict(load_torch_state(source), backbone)
    out = write_npz(flat, output)
    perceptual.load_perceptual(backbone, str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="torchvision VGG state dict (.pth)")
    parser.add_argument("--output", required=True, help="output .npz")
    parser.add_argument("--backbone", default="vgg19", choices=tuple(perceptual.BLOCKS))
    args = parser.parse_args(argv)
    try:
        if not pathlib.Path(args.input).is_file():
            raise FileNotFoundError(f"--input {args.input}: no such file")
        out = convert(args.input, args.output, args.backbone)
    except (FileNotFoundError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({args.backbone}, {len(perceptual.conv_names(args.backbone))} convs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
