"""The Grain loader on tiny real records: shapes, determinism, flips, resume, sharding."""

import grain
import numpy as np
import pytest
from test_records import make_clip, real_frames

from configs import common
from pechead_jax import face_model, input_pipeline, records

NUM_CLIPS = 8


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """8 clips of 6 real 64x64 face frames; identity[0] is the clip number."""
    frames = real_frames(NUM_CLIPS + 6)
    path = tmp_path_factory.mktemp("records")
    clips = [make_clip(frames[k : k + 6], k) for k in range(NUM_CLIPS)]
    records.write_shards(clips, path, "train", max_shard_bytes=40_000)  # several shards
    return path


def data_config(**overrides):
    d = common.get_config("tiny").data
    d.batch_size, d.workers, d.read_threads = 4, 0, 1
    d.update(overrides)
    return d


def first_batches(d, root, n=1, **kwargs):
    kwargs = {"train": True, "seed": 0} | kwargs
    it = iter(input_pipeline.create_dataset(d, root, "train", **kwargs))
    return it, [next(it) for _ in range(n)]


def assert_equal_batches(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_shapes_image_and_video(root):
    b, r, t = 4, 64, 3
    _, (batch,) = first_batches(data_config(), root)
    want = {
        "source": (b, r, r, 3), "driving": (b, r, r, 3),
        "source_pose": (b, 6), "driving_pose": (b, 6),
        "source_expression": (b, 52), "driving_expression": (b, 52),
        "source_landmarks": (b, 68, 2), "driving_landmarks": (b, 68, 2), "identity": (b, 8),
    }  # fmt: skip
    assert {k: v.shape for k, v in batch.items()} == want
    assert all(v.dtype == np.float32 for v in batch.values())
    assert 0 <= batch["source"].min() and batch["source"].max() <= 1
    assert batch["source"].std() > 0.1  # real faces, not blank
    _, (video,) = first_batches(data_config(mode="video", clip_length=t, resolution=32), root)
    assert video["source"].shape == (b, 32, 32, 3)
    assert video["driving"].shape == (b, t, 32, 32, 3)
    assert video["driving_pose"].shape == (b, t, 6)
    assert video["driving_expression"].shape == (b, t, 52)
    assert video["driving_landmarks"].shape == (b, t, 68, 2)
    assert video["source_landmarks"].shape == (b, 68, 2) and video["identity"].shape == (b, 8)


def test_clips_in_order_and_resizing_keeps_geometry(root):
    (clip, full), *_ = input_pipeline.load_clips(root, "train")
    assert full["frames"].shape == (6, 64, 64, 3)
    np.testing.assert_array_equal(full["landmarks"], clip.landmarks)
    (_, half), *_ = input_pipeline.load_clips(root, "train", resolution=32)
    assert half["frames"].shape == (6, 32, 32, 3)
    factor = input_pipeline.rescale_factor(64, 32)  # pixel centres move slightly inwards
    np.testing.assert_allclose(half["landmarks"], clip.landmarks * factor, rtol=1e-6)
    # The point at pixel centre 0 of 64 is at continuous position 0.5/64 = 0.25/32.
    assert np.isclose(-1 * factor, 2 * (0.25 - 0.5) / 31 - 1)


def test_same_seed_same_batches(root):
    d = data_config()
    _, a = first_batches(d, root, 2)
    _, b = first_batches(d, root, 2)
    _, c = first_batches(d, root, 2, seed=1)
    for x, y in zip(a, b, strict=True):
        assert_equal_batches(x, y)
    assert not np.array_equal(a[0]["source"], c[0]["source"])


def test_flip_mirrors_images_pose_expression_and_landmarks(root):
    _, (plain,) = first_batches(data_config(flip=False, color_jitter=0.0), root)
    _, (maybe,) = first_batches(data_config(flip=True, color_jitter=0.0), root)
    np.testing.assert_array_equal(plain["identity"], maybe["identity"])  # same clips, frames
    flipped = [not np.array_equal(plain["source"][i], maybe["source"][i]) for i in range(4)]
    assert any(flipped) and not all(flipped)
    for i in np.flatnonzero(flipped):
        for side in ("source", "driving"):
            np.testing.assert_array_equal(maybe[side][i], plain[side][i][:, ::-1])
            np.testing.assert_array_equal(
                maybe[f"{side}_landmarks"][i],
                face_model.flip_landmarks(plain[f"{side}_landmarks"][i]),
            )
            p, q = plain[f"{side}_pose"][i], maybe[f"{side}_pose"][i]
            np.testing.assert_array_equal(q, p * [-1, 1, -1, 1, -1, 1])  # yaw, roll, tx
            np.testing.assert_array_equal(
                maybe[f"{side}_expression"][i],
                plain[f"{side}_expression"][i][list(face_model.BLENDSHAPE_MIRROR)],
            )
    # The subject's right eye corner (iBUG 36) stays index 36 and moves to the image's right.
    i = int(np.flatnonzero(flipped)[0])
    lm, mirrored = plain["source_landmarks"][i], maybe["source_landmarks"][i]
    assert mirrored[36, 0] == -lm[45, 0] and mirrored[36, 1] == lm[45, 1]


def test_resume_from_iterator_state(root):
    d = data_config(mode="video")
    it, _ = first_batches(d, root, 3)  # past the end of the first epoch of 8 clips
    state = it.get_state()
    want = next(it)
    fresh = iter(input_pipeline.create_dataset(d, root, "train", train=True, seed=0))
    fresh.set_state(state)
    assert_equal_batches(next(fresh), want)


def test_worker_processes_give_the_same_batches_and_resume(root):
    it0, (a0, b0) = first_batches(data_config(), root, 2)
    it1, (a1,) = first_batches(data_config(workers=1), root, 1)
    assert_equal_batches(a0, a1)
    state = it1.get_state()
    fresh = iter(
        input_pipeline.create_dataset(data_config(workers=1), root, "train", train=True, seed=0)
    )
    fresh.set_state(state)
    assert_equal_batches(next(fresh), b0)
    assert isinstance(fresh, grain.DatasetIterator)


def test_eval_pass_is_finite_deterministic_and_sharded_by_process(root):
    d = data_config()

    def clip_numbers(process_index, process_count=2):
        ds = input_pipeline.create_dataset(
            d, root, "train", train=False, seed=0,
            process_index=process_index, process_count=process_count,
        )  # fmt: skip
        batches = list(ds)
        assert all(b["source"].shape[0] == 4 // process_count for b in batches)
        return [int(x) for b in batches for x in b["identity"][:, 0]], batches

    first, batches = clip_numbers(0)
    second, _ = clip_numbers(1)
    assert sorted(first + second) == list(range(NUM_CLIPS))  # disjoint, all clips
    assert first == [0, 2, 4, 6]
    _, again = clip_numbers(0)
    for x, y in zip(batches, again, strict=True):
        assert_equal_batches(x, y)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        clip_numbers(0, 3)
