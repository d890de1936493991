"""The training step's speed and memory on this machine, as JSON.

    python benchmarks/train_step.py [--config configs/vfhq.py[:512]] [--per_device_batch 1]
        [--steps 3] [--devices 1]

Times, after compilation, the whole jitted train step (G+E and D forward, backward, both
Adam updates, the EMA) and its two halves separately: the G+E part (generator losses incl.
the VGG16 perceptual loss, gradient, update) and the D part (hinge loss on real and generated
frames, gradient, update). Reports samples/s, seconds per step, the FLOPs of each compiled
program from XLA's cost analysis and the achieved GFLOP/s, and peak memory: the device's
`peak_bytes_in_use` where the platform reports it (GPU/TPU), else the process's peak resident
memory (CPU), plus XLA's own estimate for the compiled step. Random weights, random images.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import resource
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/vfhq.py", help="config file[:arg]")
    p.add_argument("--per_device_batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed calls of each program")
    p.add_argument("--devices", type=int, default=1, help="devices in the mesh (default 1)")
    p.add_argument("--no_perceptual", action="store_true", help="without the VGG16 loss")
    return p.parse_args()


def load_config(spec: str):
    path, _, arg = spec.partition(":")
    sys.path.insert(0, str(REPO))
    module_spec = importlib.util.spec_from_file_location("bench_config", REPO / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def main() -> None:
    args = parse_args()
    if args.devices > 1 and "xla_force_host_platform_device_count" not in os.environ.get(
        "XLA_FLAGS", ""
    ):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count="
            f"{args.devices}"
        )
    import jax
    import numpy as np
    import optax

    from pechead_jax import sharding, train

    config = load_config(args.config)
    if args.no_perceptual:
        config.loss.perceptual = 0.0
    mesh = sharding.make_mesh(args.devices)
    batch_size = args.per_device_batch * args.devices
    config.data.batch_size = batch_size
    parts = train.make_parts(config)
    perceptual, perceptual_params = train.load_perceptual(config)
    parts = dataclasses.replace(parts, perceptual=perceptual)
    rep = sharding.replicated(mesh)
    perceptual_params = jax.device_put(perceptual_params, rep)
    state = train.init_state(config, parts, mesh)

    rng = np.random.default_rng(0)
    host = train.dummy_batch(config, batch_size)
    host = {k: (rng.uniform(0, 1, v.shape) if k in train.IMAGE_KEYS else
                rng.normal(0, 0.1, v.shape)).astype(np.float32) for k, v in host.items()}
    batch = sharding.put_batch(host, mesh)

    # The two halves, as the step computes them (without the non-finite guard and the EMA).
    def ge_part(state, batch, perceptual_params):
        rng_step = jax.random.fold_in(state.rng, state.step)

        def loss(g_params):
            return train.generator_losses(config, parts, g_params, state.d_params,
                                          perceptual_params, batch, rng_step, 1.0)

        (_, (_, generated, _)), grads = jax.value_and_grad(loss, has_aux=True)(state.g_params)
        updates, opt_state = parts.g_tx.update(grads, state.g_opt_state, state.g_params)
        return optax.apply_updates(state.g_params, updates), opt_state, generated

    def d_part(state, batch, generated):
        real = train._frames(batch["driving"])

        def loss(params):
            return train.discriminator_loss(parts, {**state.d_params, "params": params}, real,
                                            generated)[0]

        grads = jax.grad(loss)(state.d_params["params"])
        updates, opt_state = parts.d_tx.update(grads, state.d_opt_state,
                                               state.d_params["params"])
        return optax.apply_updates(state.d_params["params"], updates), opt_state

    step_fn = train.make_train_step(config, parts)
    programs = {
        "ge": (jax.jit(ge_part), (state, batch, perceptual_params)),
        "step": (jax.jit(step_fn), (state, batch, perceptual_params)),
    }
    results = {}
    compiled = {}
    for name, (fn, call_args) in programs.items():
        t0 = time.perf_counter()
        compiled[name] = fn.lower(*call_args).compile()
        results[f"{name}_compile_s"] = round(time.perf_counter() - t0, 1)
    generated = compiled["ge"](state, batch, perceptual_params)[2]
    programs["d"] = (jax.jit(d_part), (state, batch, generated))
    t0 = time.perf_counter()
    compiled["d"] = programs["d"][0].lower(*programs["d"][1]).compile()
    results["d_compile_s"] = round(time.perf_counter() - t0, 1)

    def flops(c) -> float:
        cost = c.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        return float(cost.get("flops", float("nan")))

    timings = {}
    for name in ("ge", "d", "step"):
        call_args = programs[name][1]
        jax.block_until_ready(compiled[name](*call_args))  # warm-up
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[name](*call_args))
            times.append(time.perf_counter() - t0)
        timings[name] = float(np.median(times))

    step_s = timings["step"]
    step_flops = flops(compiled["step"])
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    memory = compiled["step"].memory_analysis()
    out = {
        "benchmark": "train_step",
        "config": args.config,
        "resolution": int(config.model.resolution),
        "variant": config.model.variant,
        "mode": config.data.mode,
        "perceptual_loss": config.loss.perceptual > 0,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "devices": args.devices,
        "per_device_batch": args.per_device_batch,
        "cpu_threads": os.cpu_count(),
        "samples_per_s": round(batch_size / step_s, 4),
        "samples_per_s_per_device": round(batch_size / step_s / args.devices, 4),
        "step_s": round(step_s, 4),
        "ge_part_s": round(timings["ge"], 4),
        "d_part_s": round(timings["d"], 4),
        "step_gflop": round(step_flops / 1e9, 2),
        "step_gflop_per_sample": round(step_flops / 1e9 / batch_size, 2),
        "ge_part_gflop": round(flops(compiled["ge"]) / 1e9, 2),
        "d_part_gflop": round(flops(compiled["d"]) / 1e9, 2),
        "achieved_gflop_per_s": round(step_flops / 1e9 / step_s, 1),
        "ge_part_gflop_per_s": round(flops(compiled["ge"]) / 1e9 / timings["ge"], 1),
        "d_part_gflop_per_s": round(flops(compiled["d"]) / 1e9 / timings["d"], 1),
        "peak_device_memory_gb": (round(stats["peak_bytes_in_use"] / 2**30, 3)
                                  if "peak_bytes_in_use" in stats else None),
        "peak_host_rss_gb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3
        ),
        "xla_step_temp_gb": (round(memory.temp_size_in_bytes / 2**30, 3)
                             if memory is not None else None),
        **results,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
