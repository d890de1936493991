"""Model benchmark: parameters, FLOPs, compile time and speed of E + G; the warp vs torch.

Prints one JSON line per measurement. Run from the repository root:

    .venv/bin/python benchmarks/model.py [--variant mmfa] [--repeats 3] [--batches 1,8]

On the 2-core CPU of the dev machines a full run takes about two minutes.
"""

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs.common import get_config  # noqa: E402
from pechead_jax.models import layers  # noqa: E402
from pechead_jax.models.pechead import PECHead  # noqa: E402


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def best_seconds(fn, repeats: int) -> float:
    """Best wall time of `fn()` over `repeats` runs after one warm-up run."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def flops_of(compiled) -> float:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis["flops"])


def model_inputs(m, batch: int, key) -> tuple:
    keys = jax.random.split(key, 5)
    r, c, n = m.resolution, m.pose_dim + m.expression_dim, m.num_landmarks
    landmarks = jax.random.uniform(keys[3], (batch, n, 2), minval=-0.6, maxval=0.6)
    # The model's one call order: (source, source_cond, source_landmarks, driving_cond,
    # driving_landmarks).
    return (
        jax.random.uniform(keys[0], (batch, r, r, 3)),
        0.3 * jax.random.normal(keys[1], (batch, c)),
        landmarks,
        0.3 * jax.random.normal(keys[2], (batch, c)),
        landmarks + 0.03 * jax.random.normal(keys[4], (batch, n, 2)),
    )


def bench_model(variant: str, batches: list[int], repeats: int) -> None:
    config = get_config()
    m = config.model
    m.variant = variant
    model = PECHead(m)
    args = model_inputs(m, 1, jax.random.key(0))
    params = jax.jit(model.init)(jax.random.key(1, impl="unsafe_rbg"), *args)
    sizes = {name: count(tree) for name, tree in params["params"].items()}
    motion = sum(v for k, v in sizes.items() if k.startswith("motion_"))
    record = {"E": sizes["keypoint_estimator"], "motion": motion, "G": sizes["generator"]}
    try:
        from pechead_jax.models.discriminator import MultiScaleDiscriminator

        disc = MultiScaleDiscriminator(m)
        record["D"] = count(jax.eval_shape(disc.init, jax.random.key(0), args[0]))
    except ImportError:
        record["D"] = None
    emit(measure="parameters", variant=variant, resolution=m.resolution, **record)

    for batch in batches:
        args = model_inputs(m, batch, jax.random.key(batch))
        start = time.perf_counter()
        compiled = jax.jit(model.apply).lower(params, *args).compile()
        compile_s = time.perf_counter() - start
        flops = flops_of(compiled) / batch
        seconds = best_seconds(lambda c=compiled, a=args: c(params, *a), repeats) / batch
        emit(
            measure="forward",
            variant=variant,
            resolution=m.resolution,
            batch=batch,
            gflop_per_frame=round(flops / 1e9, 2),
            compile_s=round(compile_s, 1),
            ms_per_frame=round(1000 * seconds, 1),
            gflop_per_s=round(flops / seconds / 1e9, 1),
        )


def bench_warp(h: int, w: int, c: int, repeats: int) -> None:
    """Forward and forward+backward of `layers.warp` next to torch `grid_sample`."""
    import torch

    torch.set_num_threads(2)  # the dev machines have 2 cores; XLA uses both too
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, h, w, c)).astype(np.float32)
    # The identity stretched by 5% plus noise of about a pixel: some samples fall outside.
    grid = np.asarray(layers.identity_grid(h, w))[None] * 1.05
    grid = (grid + rng.normal(scale=0.02, size=grid.shape)).astype(np.float32)
    cotangent = rng.normal(size=(1, h, w, c)).astype(np.float32)

    forward = jax.jit(layers.warp)
    both = jax.jit(jax.grad(lambda im, g, ct: jnp.sum(layers.warp(im, g) * ct), argnums=(0, 1)))
    jax_fwd = best_seconds(lambda: forward(image, grid), repeats)
    jax_both = best_seconds(lambda: both(image, grid, cotangent), repeats)

    timage = torch.tensor(image).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    tgrid = torch.tensor(grid).requires_grad_(True)
    tct = torch.tensor(cotangent).permute(0, 3, 1, 2).contiguous()

    def sample():
        return torch.nn.functional.grid_sample(
            timage, tgrid, mode="bilinear", padding_mode="zeros", align_corners=True
        )

    def torch_forward():
        with torch.no_grad():
            return sample()

    def torch_both():
        return torch.autograd.grad((sample() * tct).sum(), (timage, tgrid))

    torch_fwd = best_seconds(torch_forward, repeats)
    torch_both_s = best_seconds(torch_both, repeats)
    emit(
        measure="warp",
        shape=[1, h, w, c],
        forward_ms=round(1000 * jax_fwd, 2),
        torch_forward_ms=round(1000 * torch_fwd, 2),
        forward_backward_ms=round(1000 * jax_both, 2),
        torch_forward_backward_ms=round(1000 * torch_both_s, 2),
        ratio_to_torch=round(jax_both / torch_both_s, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="mmfa")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args()
    if not args.skip_model:
        bench_model(args.variant, [int(b) for b in args.batches.split(",")], args.repeats)
    for shape in ((64, 64, 256), (128, 128, 128)):
        bench_warp(*shape, args.repeats)


if __name__ == "__main__":
    main()
