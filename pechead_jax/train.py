"""Training: the train state, one jitted step per stage, the loop, evaluation, checkpoints.

Stage 1 trains on frame pairs (`config.data.mode='image'`, variants up to `mmfa`); stage 2 on
clips (`'video'`, variant `full`: CAP scanned over the clip), initialised from the stage-1
checkpoint in `config.train.init_from`. The step is one `jax.jit` over a 1-D `data` mesh:
the batch is split over devices, parameters are replicated, the state is donated. G+E and D
losses come from one generator forward pass; both optimizers and the EMA update inside the
step. A non-finite loss or gradient skips the whole update (counted, no host sync).
"""

import dataclasses
import logging
import math
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pechead_jax import checkpointing, logging_utils, sharding
from pechead_jax.models import pechead
from pechead_jax.models.pechead import BATCH_KEYS, PECHead, apply_to_batch, conditions

Array = jax.Array
PyTree = Any

IMAGE_KEYS = ("source", "driving")


class NonFiniteError(RuntimeError):
    """Training produced non-finite losses or gradients too many steps in a row."""


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs, as one pytree (checkpointed as is).

    `nonfinite`: `run` (current streak of skipped steps), `max_run` (the longest streak so far:
    the loop reads it only every `log_every` steps, so a streak between reads is not missed),
    `total` (all skipped steps).
    """

    step: Array
    rng: Array
    g_params: PyTree  # PECHead (E + motion + G)
    d_params: PyTree  # discriminator variables ({'params': ...} and any other collection)
    g_opt_state: PyTree
    d_opt_state: PyTree
    ema_params: PyTree
    nonfinite: dict[str, Array]


@dataclasses.dataclass(frozen=True)
class Parts:
    """The modules and optimizers a run is built from (static, not checkpointed)."""

    model: PECHead
    disc: nn.Module
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    g_schedule: optax.Schedule
    d_schedule: optax.Schedule
    perceptual: nn.Module | None


# ----------------------------------------------------------------------------- config


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise a ValueError naming the field when the config cannot train."""
    variant, mode = config.model.variant, config.data.mode
    if mode not in ("image", "video"):
        raise ValueError(f"config.data.mode={mode!r}, expected 'image' or 'video'")
    if (variant == "full") != (mode == "video"):
        raise ValueError(
            f"config.model.variant={variant!r} with config.data.mode={mode!r}: the 'full' "
            "variant (CAP) trains on clips (mode 'video', stage 2); the others on frame "
            "pairs (mode 'image', stage 1)"
        )
    if config.data.resolution != config.model.resolution:
        raise ValueError(
            f"config.data.resolution={config.data.resolution} differs from "
            f"config.model.resolution={config.model.resolution}"
        )
    # A loss term the variant cannot provide is refused, not silently dropped.
    if config.loss.temporal > 0 and variant != "full":
        raise ValueError(
            f"config.loss.temporal={config.loss.temporal} needs consecutive frames from CAP, "
            f"which config.model.variant={variant!r} does not provide (only 'full' does): "
            "set config.loss.temporal=0"
        )
    t = config.train
    if t.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"config.train.lr_schedule={t.lr_schedule!r}, expected constant/cosine")
    if t.num_steps < 1:
        raise ValueError(f"config.train.num_steps={t.num_steps} must be positive")


def _schedule(lr: float, t: ml_collections.ConfigDict) -> optax.Schedule:
    warmup = max(int(t.warmup_steps), 0)
    if t.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, max(warmup, 1), max(t.num_steps, warmup + 1), end_value=lr * t.lr_final_factor
        )
    if warmup == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )


def make_optimizer(lr: float, t: ml_collections.ConfigDict):
    """Adam(b1, b2) on a warmup + constant/cosine schedule, optionally global-norm clipped."""
    schedule = _schedule(lr, t)
    parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
    parts.append(optax.adam(schedule, b1=t.b1, b2=t.b2))
    return optax.chain(*parts), schedule


def make_parts(config: ml_collections.ConfigDict) -> Parts:
    """Build the modules and optimizers of a run (no parameters yet)."""
    from pechead_jax.models.discriminator import MultiScaleDiscriminator

    check_config(config)
    g_tx, g_schedule = make_optimizer(config.train.g_lr, config.train)
    d_tx, d_schedule = make_optimizer(config.train.d_lr, config.train)
    return Parts(
        model=PECHead(config.model),
        disc=MultiScaleDiscriminator(config.model),
        g_tx=g_tx,
        d_tx=d_tx,
        g_schedule=g_schedule,
        d_schedule=d_schedule,
        perceptual=None,
    )


def load_perceptual(config: ml_collections.ConfigDict) -> tuple[nn.Module | None, PyTree]:
    """The frozen perceptual network, or (None, {}) when its loss weight is zero."""
    if config.loss.perceptual <= 0:
        return None, {}
    from pechead_jax.models.perceptual import load_perceptual as load

    return load(config.loss.perceptual_backbone, config.loss.perceptual_weights_path)


# ----------------------------------------------------------------------------- state


def dummy_batch(config: ml_collections.ConfigDict, batch: int = 1) -> dict[str, np.ndarray]:
    """Zeros shaped like a batch of `config.data.mode` (`pechead.dummy_batch`)."""
    clip = config.data.clip_length if config.data.mode == "video" else None
    return pechead.dummy_batch(config.model, batch, clip)


def init_state(config: ml_collections.ConfigDict, parts: Parts, mesh) -> TrainState:
    """Create the train state, replicated over `mesh`, from `config.train.seed`."""
    rng = jax.random.key(config.train.seed)
    g_key, d_key, rng = jax.random.split(rng, 3)
    batch = dummy_batch(config)

    def init(g_key, d_key, rng):
        g_params = parts.model.init(
            {"params": g_key}, *pechead.model_inputs(batch),
            method=PECHead.animate if config.data.mode == "video" else None,
        )["params"]
        frames = batch["driving"].reshape(-1, *batch["driving"].shape[-3:])
        d_params = flax.core.unfreeze(parts.disc.init({"params": d_key}, frames))
        zero = jnp.zeros((), jnp.int32)
        return TrainState(
            step=zero,
            rng=rng,
            g_params=g_params,
            d_params=d_params,
            g_opt_state=parts.g_tx.init(g_params),
            d_opt_state=parts.d_tx.init(d_params["params"]),
            ema_params=jax.tree.map(jnp.copy, g_params),
            nonfinite={"run": zero, "max_run": zero, "total": zero},
        )

    return jax.jit(init, out_shardings=sharding.replicated(mesh))(g_key, d_key, rng)


def abstract_state(config: ml_collections.ConfigDict, parts: Parts, mesh) -> TrainState:
    """The train state's `ShapeDtypeStruct`s, replicated over `mesh` (restore targets)."""
    shapes = jax.eval_shape(lambda: init_state(config, parts, mesh))
    rep = sharding.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)


def merge_params(target: PyTree, source: PyTree) -> tuple[PyTree, int, int]:
    """Copy every leaf of `source` whose path and shape exist in `target` (stage 1 -> 2).

    Returns (merged, copied, kept): parameters new in `target` (CAP) keep their init.
    """
    flat_source = {k: v for k, v in flax.traverse_util.flatten_dict(source).items()}
    flat = flax.traverse_util.flatten_dict(target)
    copied = 0
    for k, v in flat.items():
        if k in flat_source and tuple(flat_source[k].shape) == tuple(v.shape):
            flat[k] = jnp.asarray(flat_source[k], v.dtype)
            copied += 1
    return flax.traverse_util.unflatten_dict(flat), copied, len(flat) - copied


# ----------------------------------------------------------------------------- step


def _frames(x: Array) -> Array:
    """Merge a clip's time axis into the batch: `[B,T,...] -> [B*T,...]` for images."""
    return x.reshape(-1, *x.shape[-3:])


def generator_losses(
    config: ml_collections.ConfigDict,
    parts: Parts,
    g_params: PyTree,
    d_params: PyTree,
    perceptual_params: PyTree,
    batch: Mapping[str, Array],
    rng: Array,
    gan_on: Array,
) -> tuple[Array, tuple[dict, Array, dict]]:
    """The weighted G+E loss; aux = (unweighted terms, generated frames `[N,H,W,3]`, out)."""
    from pechead_jax import losses

    lc = config.loss
    out = apply_to_batch(parts.model, g_params, batch)
    generated = _frames(out["image"]).astype(jnp.float32)
    target = _frames(batch["driving"])
    terms = {"pixel": losses.pixel_loss(generated, target)}
    if parts.perceptual is not None:

        def features(x):
            return parts.perceptual.apply(perceptual_params, x)

        terms["perceptual"] = losses.perceptual_loss(
            features, generated, target, lc.perceptual_scales, lc.perceptual_layer_weights
        )
    driving_kp = out["driving_keypoints"].reshape(-1, *out["driving_keypoints"].shape[-2:])
    terms["keypoint"] = losses.keypoint_spread_loss(
        driving_kp.astype(jnp.float32), lc.keypoint_min_distance
    )
    if lc.equivariance > 0:
        # E must move its points with the image: warp the source by a random TPS and
        # compare E's points on the warped image, mapped back, with those on the original.
        source_cond, _ = conditions(batch)
        source = batch["source"]
        tps = losses.sample_tps(
            rng, source.shape[0], lc.tps_sigma_affine, lc.tps_sigma_tps, lc.tps_points
        )
        from pechead_jax.models import layers

        warped = layers.warp(source, losses.tps_grid(tps, *source.shape[1:3]))
        points = parts.model.apply(
            {"params": g_params}, warped, source_cond, method=PECHead.detect
        ).astype(jnp.float32)
        original = out["source_keypoints"].astype(jnp.float32)
        terms["equivariance"] = losses.equivariance_loss(original, points, tps)
    if lc.warp > 0:
        terms["warp"] = sum(
            losses.warp_loss(_frames(w).astype(jnp.float32), target, lc.warp_scales)
            for w in out["warped"].values()
        )
    if lc.temporal > 0:
        terms["temporal"] = losses.temporal_loss(
            out["image"].astype(jnp.float32), batch["driving"], out["previous_grid"]
        )
    if lc.gan > 0:
        fake = parts.disc.apply(d_params, generated)
        real = parts.disc.apply(d_params, target)
        real = jax.tree.map(jax.lax.stop_gradient, real)
        terms["gan"] = losses.hinge_g_loss([logits for logits, _ in fake])
        if lc.feature_matching > 0:
            terms["feature_matching"] = losses.feature_matching_loss(
                [f for _, f in real], [f for _, f in fake]
            )
    weights = {k: getattr(lc, k) for k in terms}
    for k in ("gan", "feature_matching"):
        if k in weights:
            weights[k] = weights[k] * gan_on
    total = sum(weights[k] * v for k, v in terms.items())
    return total, (terms, generated, out)


def discriminator_loss(
    parts: Parts, d_params: PyTree, real: Array, fake: Array
) -> tuple[Array, dict]:
    """Hinge D loss on real driving frames and (stopped) generated frames `[N,H,W,3]`."""
    from pechead_jax import losses

    real_out = parts.disc.apply(d_params, real)
    fake_out = parts.disc.apply(d_params, jax.lax.stop_gradient(fake))
    real_logits = [logits for logits, _ in real_out]
    fake_logits = [logits for logits, _ in fake_out]
    loss = losses.hinge_d_loss(real_logits, fake_logits)
    aux = {
        "real_logit": jnp.mean(jnp.stack([jnp.mean(x) for x in real_logits])),
        "fake_logit": jnp.mean(jnp.stack([jnp.mean(x) for x in fake_logits])),
    }
    return loss, aux


def make_train_step(config: ml_collections.ConfigDict, parts: Parts) -> Callable:
    """The un-jitted step `(state, batch, perceptual_params) -> (state, metrics)`."""
    t = config.train
    use_gan = config.loss.gan > 0

    def step_fn(state: TrainState, batch: dict, perceptual_params: PyTree):
        rng = jax.random.fold_in(state.rng, state.step)
        gan_on = (state.step >= t.gan_start_step).astype(jnp.float32)

        def g_loss(g_params):
            return generator_losses(
                config, parts, g_params, state.d_params, perceptual_params, batch, rng, gan_on
            )

        (g_total, (terms, generated, _)), g_grads = jax.value_and_grad(g_loss, has_aux=True)(
            state.g_params
        )
        g_updates, g_opt_state = parts.g_tx.update(g_grads, state.g_opt_state, state.g_params)
        g_params = optax.apply_updates(state.g_params, g_updates)
        g_norm = optax.tree.norm(g_grads)

        metrics = {f"g/{k}": v for k, v in terms.items()}
        metrics["g/total"] = g_total
        metrics["grad_norm/g"] = g_norm
        finite = jnp.isfinite(g_total) & jnp.isfinite(g_norm)

        d_params, d_opt_state = state.d_params, state.d_opt_state
        if use_gan:
            target = _frames(batch["driving"])

            def d_loss(params):
                return discriminator_loss(
                    parts, {**state.d_params, "params": params}, target, generated
                )

            (d_total, d_aux), d_grads = jax.value_and_grad(d_loss, has_aux=True)(
                state.d_params["params"]
            )
            d_updates, d_opt_state = parts.d_tx.update(
                d_grads, state.d_opt_state, state.d_params["params"]
            )
            d_params = {
                **state.d_params, "params": optax.apply_updates(state.d_params["params"], d_updates)
            }
            d_norm = optax.tree.norm(d_grads)
            metrics.update({"d/total": d_total, "grad_norm/d": d_norm})
            metrics.update({f"d/{k}": v for k, v in d_aux.items()})
            finite &= jnp.isfinite(d_total) & jnp.isfinite(d_norm)

        # EMA with a warm-up so short runs (the demo) are not dominated by the random init.
        step = state.step.astype(jnp.float32)
        decay = jnp.minimum(t.ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, g_params)

        # Non-finite guard: keep the old parameters and optimizer states, count the skip.
        def pick(new, old):
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        run = jnp.where(finite, 0, state.nonfinite["run"] + 1)
        nonfinite = {
            "run": run,
            "max_run": jnp.maximum(state.nonfinite["max_run"], run),
            "total": state.nonfinite["total"] + (1 - finite.astype(jnp.int32)),
        }
        metrics["nonfinite/skipped"] = nonfinite["total"]
        new_state = TrainState(
            step=state.step + 1,
            rng=state.rng,
            g_params=pick(g_params, state.g_params),
            d_params=pick(d_params, state.d_params),
            g_opt_state=pick(g_opt_state, state.g_opt_state),
            d_opt_state=pick(d_opt_state, state.d_opt_state),
            ema_params=pick(ema, state.ema_params),
            nonfinite=nonfinite,
        )
        return new_state, metrics

    return step_fn


def jit_train_step(step_fn: Callable, mesh, traces: list | None = None) -> Callable:
    """`jax.jit` the step with a replicated, donated state and replicated metrics.

    Each trace (= compilation) of the step appends to `traces` if given: a second one means
    the batch or state changed shape, dtype or sharding between steps (minutes at 256).
    """
    rep = sharding.replicated(mesh)

    def train_step(state, batch, perceptual_params):
        if traces is not None:
            traces.append(1)
        return step_fn(state, batch, perceptual_params)

    return jax.jit(train_step, donate_argnums=0, out_shardings=(rep, rep))


def make_preview(config: ml_collections.ConfigDict, parts: Parts) -> Callable:
    """Jitted `(params, image-mode batch) -> PECHead outputs` (samples and evaluation)."""

    def preview(params, batch):
        return apply_to_batch(parts.model, params, batch)

    return jax.jit(preview)


def image_pairs(batch: Mapping[str, Any]) -> dict:
    """An image-mode view of a batch: a clip's first driving frame (for samples)."""
    if np.ndim(batch["driving"]) == 5:
        return {k: (v[:, 0] if k.startswith("driving") else v) for k, v in batch.items()}
    return dict(batch)


def make_eval_step(config: ml_collections.ConfigDict, parts: Parts, mesh=None) -> Callable:
    """Jitted `(params, batch) -> per-sample [B] L1/PSNR` for the model and the
    copy-the-source baseline (same identity: the driving frame is the target). With a
    `mesh` the results are replicated, so every process can read all of them."""
    from pechead_jax.metrics import image as image_metrics

    def eval_step(params, batch):
        generated = apply_to_batch(parts.model, params, batch)["image"].astype(jnp.float32)
        target = batch["driving"]
        return {
            "l1": image_metrics.l1(generated, target),
            "psnr": image_metrics.psnr(generated, target),
            "baseline_l1": image_metrics.l1(batch["source"], target),
            "baseline_psnr": image_metrics.psnr(batch["source"], target),
        }

    out_shardings = sharding.replicated(mesh) if mesh is not None else None
    return jax.jit(eval_step, out_shardings=out_shardings)


# ----------------------------------------------------------------------------- data


def _select(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch from the input pipeline lacks {missing}; has {sorted(batch)}")
    return {k: np.asarray(batch[k], np.float32) for k in BATCH_KEYS}


def create_iterator(config: ml_collections.ConfigDict, split: str, *, train: bool):
    """A Grain iterator over `config.data` for this process (a checkpointable iterator)."""
    from pechead_jax import input_pipeline

    if not config.data.root:
        raise ValueError("config.data.root is empty: set it to the data_prep output folder")
    dataset = input_pipeline.create_dataset(
        config.data,
        config.data.root,
        split,
        train=train,
        seed=config.data.shuffle_seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return iter(dataset)


def evaluate(
    config: ml_collections.ConfigDict, parts: Parts, params: PyTree, mesh,
    eval_step: Callable | None = None,
) -> dict[str, float]:
    """Mean L1/PSNR over `config.train.eval_batches` held-out image pairs (and baseline)."""
    eval_config = ml_collections.ConfigDict(config.to_dict())
    eval_config.data.mode = "image"
    eval_config.data.batch_size = config.data.eval_batch_size
    eval_step = eval_step or make_eval_step(config, parts, mesh)
    sums: dict[str, float] = {}
    count = 0
    iterator = create_iterator(eval_config, config.train.eval_split, train=False)
    for _, batch in zip(range(config.train.eval_batches), iterator):
        values = jax.device_get(eval_step(params, sharding.put_batch(_select(batch), mesh)))
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(v))
        count += len(values["l1"])
    if count == 0:
        raise ValueError(f"evaluation split {config.train.eval_split!r} yielded no batch")
    return {k: v / count for k, v in sums.items()} | {"samples": count}


# ----------------------------------------------------------------------------- loop


class _Preemption:
    """Turns SIGTERM into a flag the loop polls (save, then exit cleanly). The handler stays
    installed until the checkpoint write has finished, so a second SIGTERM cannot kill it."""

    def __init__(self):
        self.requested = threading.Event()
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested.is_set():
            logging.warning("SIGTERM received again: still writing the checkpoint")
        else:
            logging.warning("SIGTERM received: saving a checkpoint and exiting")
        self.requested.set()

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _all_processes_agree(flag: bool) -> bool:
    """True on every process if it is true on any: hosts must leave the loop at the same
    step (SIGTERM and clocks reach them at different steps), or the others would wait in
    the next step's collectives forever. A no-op with one process."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _initialise_from(config, state: TrainState, mesh) -> TrainState:
    """Stage 2: copy the stage-1 checkpoint's G+E, EMA and D parameters where they fit.

    The stage-1 state is restored with the shapes of its own `config.json` onto this run's
    mesh; its optimizer states and step are not carried over (a new stage, a new schedule).
    """
    source_dir = checkpointing.run_directory(config.train.init_from)
    source_config = checkpointing.read_config(source_dir)
    source_abstract = abstract_state(source_config, make_parts(source_config), mesh)
    raw = checkpointing.load_params(source_dir, source_abstract)
    g, copied, kept = merge_params(state.g_params, raw.g_params)
    ema, _, _ = merge_params(state.ema_params, raw.ema_params)
    d, _, _ = merge_params(state.d_params, raw.d_params)
    logging.info("init_from %s: %d tensors copied, %d new (kept at init)",
                 config.train.init_from, copied, kept)
    rep = sharding.replicated(mesh)
    return state.replace(
        g_params=jax.device_put(g, rep), ema_params=jax.device_put(ema, rep),
        d_params=jax.device_put(d, rep),
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train from `config`, resuming from the latest checkpoint in `workdir`.

    Returns a summary: the last step, last metrics, last evaluation, whether the run was
    preempted or hit its time budget, and how many times the step was traced (compiled).
    """
    workdir_path = pathlib.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    check_config(config)
    t = config.train
    mesh = sharding.make_mesh()
    sharding.check_batch_size(config.data.batch_size, mesh)
    sharding.check_batch_size(config.data.eval_batch_size, mesh, "eval_batch")
    checkpointing.check_and_save_config(workdir_path, config, write=jax.process_index() == 0)

    parts = make_parts(config)
    perceptual, perceptual_params = load_perceptual(config)
    parts = dataclasses.replace(parts, perceptual=perceptual)
    perceptual_params = jax.device_put(perceptual_params, sharding.replicated(mesh))

    train_iter = create_iterator(config, "train", train=True)
    manager = checkpointing.make_manager(workdir_path, t.keep_checkpoints)
    latest = manager.latest_step()
    if latest is not None:
        # Restore into the state's shapes and shardings (no need to run the initialisers).
        abstract = abstract_state(config, parts, mesh)
        state = checkpointing.restore(manager, latest, abstract, train_iter)
        logging.info("resumed from %s at step %d", manager.directory, latest)
    else:
        state = init_state(config, parts, mesh)
        if t.init_from:
            state = _initialise_from(config, state, mesh)
        elif config.model.variant == "full":
            logging.warning("stage 2 ('full') without config.train.init_from: everything, not "
                            "only CAP, starts from random weights")

    writer = logging_utils.Writer(workdir_path / "tensorboard")
    step = int(jax.device_get(state.step))
    if step == 0:
        counts = {
            name: logging_utils.log_parameter_overview(name, params)
            for name, params in (("G+E", state.g_params), ("D", state.d_params))
        }
        writer.text(0, "parameters", ", ".join(f"{k}: {v:,}" for k, v in counts.items()))

    traces: list[int] = []
    train_step = jit_train_step(make_train_step(config, parts), mesh, traces)
    preview = make_preview(config, parts)
    eval_step = make_eval_step(config, parts, mesh)
    start_time = time.monotonic()
    budget = 60.0 * t.time_budget_minutes if t.time_budget_minutes > 0 else math.inf
    summary: dict[str, Any] = {"preempted": False, "time_budget_reached": False}
    metrics_np: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    window_start, window_steps = time.monotonic(), 0
    devices = jax.device_count()

    with _Preemption() as preemption:
        try:
            while step < t.num_steps:
                host_batch = _select(next(train_iter))
                batch = sharding.put_batch(host_batch, mesh)
                state, metrics = train_step(state, batch, perceptual_params)
                step += 1
                window_steps += 1
                last = step == t.num_steps
                out_of_time = time.monotonic() - start_time >= budget
                stop = _all_processes_agree(preemption.requested.is_set() or out_of_time)
                if step % t.log_every == 0 or last or stop:
                    metrics_np = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    max_run = int(jax.device_get(state.nonfinite["max_run"]))
                    if max_run >= t.max_nonfinite_in_a_row:
                        manager.wait_until_finished()
                        raise NonFiniteError(
                            f"{max_run} steps in a row had non-finite losses or gradients (limit "
                            f"config.train.max_nonfinite_in_a_row={t.max_nonfinite_in_a_row}) by "
                            f"step {step}; last metrics: {metrics_np}"
                        )
                    elapsed = time.monotonic() - window_start
                    rate = window_steps * config.data.batch_size / max(elapsed, 1e-9)
                    metrics_np.update({
                        "lr/g": float(parts.g_schedule(step - 1)),
                        "lr/d": float(parts.d_schedule(step - 1)),
                        "perf/samples_per_second": rate,
                        "perf/samples_per_second_per_device": rate / devices,
                        "perf/step_time_s": elapsed / window_steps,
                    })
                    writer.scalars(step, metrics_np)
                    logging.info(logging_utils.progress_line(step, t.num_steps, metrics_np, rate))
                    window_start, window_steps = time.monotonic(), 0
                if stop:
                    # Save first: a preempted VM has seconds. No eval or samples (the eval
                    # would compile); the wait for the write is in the `finally` below.
                    checkpointing.save(manager, step, state, train_iter, force=True)
                    summary["preempted"] = preemption.requested.is_set()
                    summary["time_budget_reached"] = out_of_time
                    logging.info("stopping at step %d (%s): checkpoint saved, eval skipped",
                                 step, "SIGTERM" if summary["preempted"] else "time budget")
                    break
                if step % t.checkpoint_every == 0 or last:
                    checkpointing.save(manager, step, state, train_iter, force=True)
                if t.sample_every and (step % t.sample_every == 0 or last):
                    _write_samples(writer, step, preview, state.ema_params, host_batch)
                if t.eval_every and (step % t.eval_every == 0 or last):
                    last_eval = evaluate(config, parts, state.ema_params, mesh, eval_step)
                    writer.scalars(step, {f"eval/{k}": v for k, v in last_eval.items()})
                    logging.info("eval at step %d: %s", step, last_eval)
        finally:
            # Inside the handler's scope: a second SIGTERM cannot interrupt the write.
            manager.wait_until_finished()
    manager.close()
    writer.flush()
    writer.close()
    summary.update({
        "step": step,
        "metrics": metrics_np,
        "eval": last_eval,
        "compiles": len(traces),
        "seconds": time.monotonic() - start_time,
    })
    summary["state"] = state
    return summary


def _write_samples(writer, step: int, preview: Callable, params: PyTree,
                   host_batch: dict[str, np.ndarray]) -> None:
    """The sample grid of the first rows of this process's part of the batch."""
    pairs = image_pairs(host_batch)
    rows = min(4, pairs["source"].shape[0])
    host = {k: np.asarray(v)[:rows] for k, v in pairs.items()}
    out = jax.device_get(preview(params, host))
    writer.image(step, "samples", logging_utils.training_grid(host, out, rows))


def iterate_batches(iterator: Iterator, mesh) -> Iterator[dict[str, Array]]:
    """Device batches from a host iterator (used by benchmarks and the demo)."""
    for batch in iterator:
        yield sharding.put_batch(_select(batch), mesh)
