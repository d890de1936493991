"""The one record schema: one `tf.train.Example` per clip, TFRecord shards, offset index.

Written by `data_prep.build` (`write_shards`), read by the loader (`ClipSource`). No
TensorFlow: Examples are built and parsed with the proto copy inside tensorflow-datasets, the
TFRecord framing and its masked CRC32C are implemented here (numpy, vectorised).

On disk, for a split `S` in a folder `DATA`:

    DATA/S-NNNNN-of-MMMMM.tfrecord          the records (TFRecord framing, TF-compatible)
    DATA/S-NNNNN-of-MMMMM.tfrecord.index    JSON: schema version, write id, shard size and per
                                            record offset, length, clip id and frame count

Feature keys of an Example (T frames, N landmarks, E expression size, I identity size):

    version int64[1]      clip_id, video_id, dataset, split bytes[1]
    frames bytes[T] (JPEG)  frame_index int64[T]  num_frames, height, width int64[1]  fps float[1]
    pose float[T*6]  expression float[T*E]  landmarks, raw_landmarks float[T*N*2]
    visible int64[T*N] (0/1)  identity float[I]

Layout and guarantees are described in `data_prep/README.md`, section "Records".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
import secrets
import struct
import threading
from collections.abc import Iterable, Iterator

import numpy as np
from tensorflow_datasets.proto import tf_example_pb2, tf_feature_pb2

VERSION = 1  # bump when the schema changes; readers refuse other versions
DEFAULT_MAX_SHARD_BYTES = 256 << 20
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")
_JPEG_SOI = b"\xff\xd8"


class RecordError(ValueError):
    """A record or shard that cannot be read: corrupt, truncated, wrong version, bad index."""


# ----------------------------------------------------------------------------- the schema


@dataclasses.dataclass(eq=False)
class Clip:
    """One clip of one video: T JPEG frames of H x W and their per-frame conditions.

    Arrays: `pose [T,6]` float32 (yaw, pitch, roll, log-scale, tx, ty), `expression [T,E]`
    float32, `landmarks [T,N,2]` float32 in [-1, 1] (reconstructed by the face model),
    `raw_landmarks [T,N,2]` (the detections), `visible [T,N]` bool, `identity [I]` float32,
    `frame_index [T]` int (frame number in the source video). `fps` is stored as float32.
    """

    clip_id: str
    video_id: str
    dataset: str
    split: str
    frames: list[bytes]
    pose: np.ndarray
    expression: np.ndarray
    landmarks: np.ndarray
    raw_landmarks: np.ndarray
    visible: np.ndarray
    identity: np.ndarray
    frame_index: np.ndarray
    fps: float
    height: int
    width: int
    num_frames: int
    version: int = VERSION

    def validate(self) -> None:
        """Raise `ValueError` naming the clip and field if a shape or type is wrong."""

        def fail(field: str, what: str) -> None:
            raise ValueError(f"clip {self.clip_id!r}: field {field!r} {what}")

        for name in ("clip_id", "video_id", "dataset", "split"):
            if not isinstance(getattr(self, name), str):
                fail(name, f"must be a str, got {type(getattr(self, name)).__name__}")
        if not self.clip_id:
            fail("clip_id", "is empty")
        t = len(self.frames)
        if t == 0:
            fail("frames", "is empty (a clip needs at least one frame)")
        if self.num_frames != t:
            fail("num_frames", f"is {self.num_frames} but there are {t} frames")
        for i, f in enumerate(self.frames):
            if not isinstance(f, bytes | bytearray | memoryview) or bytes(f[:2]) != _JPEG_SOI:
                fail("frames", f"[{i}] is not JPEG bytes")
        if self.height <= 0 or self.width <= 0:
            fail("height/width", f"must be positive, got {self.height}x{self.width}")
        if not np.isfinite(self.fps) or self.fps <= 0:
            fail("fps", f"must be positive, got {self.fps}")
        pose, expr = np.asarray(self.pose), np.asarray(self.expression)
        lmk, raw = np.asarray(self.landmarks), np.asarray(self.raw_landmarks)
        vis, ident = np.asarray(self.visible), np.asarray(self.identity)
        index = np.asarray(self.frame_index)
        if pose.shape != (t, 6):
            fail("pose", f"must be [{t}, 6], got {list(pose.shape)}")
        if expr.ndim != 2 or expr.shape[0] != t or expr.shape[1] == 0:
            fail("expression", f"must be [{t}, E], got {list(expr.shape)}")
        if lmk.ndim != 3 or lmk.shape[0] != t or lmk.shape[2] != 2 or lmk.shape[1] == 0:
            fail("landmarks", f"must be [{t}, N, 2], got {list(lmk.shape)}")
        n = lmk.shape[1]
        if raw.shape != (t, n, 2):
            fail("raw_landmarks", f"must be [{t}, {n}, 2] like landmarks, got {list(raw.shape)}")
        if vis.shape != (t, n):
            fail("visible", f"must be [{t}, {n}], got {list(vis.shape)}")
        if vis.dtype != bool and not np.isin(vis, (0, 1)).all():
            fail("visible", "must be boolean (0/1)")
        if ident.ndim != 1:
            fail("identity", f"must be [I], got {list(ident.shape)}")
        if index.shape != (t,) or not np.issubdtype(index.dtype, np.integer):
            fail("frame_index", f"must be [{t}] integers, got {list(index.shape)} {index.dtype}")
        for name, a in (("pose", pose), ("expression", expr), ("landmarks", lmk),
                        ("raw_landmarks", raw), ("identity", ident)):  # fmt: skip
            if not np.isfinite(a).all():
                fail(name, "has non-finite values")


def _bytes(values) -> tf_feature_pb2.Feature:
    return tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=values))


def _floats(array) -> tf_feature_pb2.Feature:
    values = np.asarray(array, np.float32).ravel()
    return tf_feature_pb2.Feature(float_list=tf_feature_pb2.FloatList(value=values))


def _ints(array) -> tf_feature_pb2.Feature:
    values = np.asarray(array, np.int64).ravel()
    return tf_feature_pb2.Feature(int64_list=tf_feature_pb2.Int64List(value=values))


def serialize(clip: Clip) -> bytes:
    """Validate `clip` and return its `tf.train.Example` bytes."""
    clip.validate()
    feature = {
        "version": _ints([VERSION]),
        "clip_id": _bytes([clip.clip_id.encode()]),
        "video_id": _bytes([clip.video_id.encode()]),
        "dataset": _bytes([clip.dataset.encode()]),
        "split": _bytes([clip.split.encode()]),
        "frames": _bytes([bytes(f) for f in clip.frames]),
        "frame_index": _ints(clip.frame_index),
        "num_frames": _ints([clip.num_frames]),
        "height": _ints([clip.height]),
        "width": _ints([clip.width]),
        "fps": _floats([clip.fps]),
        "pose": _floats(clip.pose),
        "expression": _floats(clip.expression),
        "landmarks": _floats(clip.landmarks),
        "raw_landmarks": _floats(clip.raw_landmarks),
        "visible": _ints(np.asarray(clip.visible, bool)),
        "identity": _floats(clip.identity),
    }
    example = tf_example_pb2.Example(features=tf_feature_pb2.Features(feature=feature))
    return example.SerializeToString()


def parse(data: bytes, where: str = "record") -> Clip:
    """`tf.train.Example` bytes -> `Clip`; `where` names the record in error messages."""
    example = tf_example_pb2.Example()
    try:
        example.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError has no stable import path
        raise RecordError(f"{where}: not a tf.train.Example ({e})") from e
    f = example.features.feature

    def get(key: str, kind: str):
        if key not in f:
            raise RecordError(f"{where}: field {key!r} is missing")
        return getattr(f[key], kind).value

    version = list(get("version", "int64_list"))
    if version != [VERSION]:
        raise RecordError(
            f"{where}: record schema version {version} but this reader reads version {VERSION}; "
            "rebuild the records with this version of data_prep (or use the matching code)"
        )
    t = int(get("num_frames", "int64_list")[0])

    def floats(key: str, shape_tail: tuple[int, ...] | None) -> np.ndarray:
        a = np.asarray(get(key, "float_list"), np.float32)
        if shape_tail is None:
            return a
        per = int(np.prod(shape_tail)) if shape_tail else 1
        if t == 0 or a.size % t or (per and (a.size // t) % per):
            raise RecordError(f"{where}: field {key!r} has {a.size} values for {t} frames")
        return a.reshape(t, -1, *shape_tail) if shape_tail else a.reshape(t, -1)

    frames = list(get("frames", "bytes_list"))
    if len(frames) != t:
        raise RecordError(f"{where}: {len(frames)} frames but num_frames is {t}")
    landmarks = floats("landmarks", (2,))
    n = landmarks.shape[1]
    pose = floats("pose", ())
    if pose.shape[1] != 6:
        raise RecordError(f"{where}: field 'pose' has {pose.shape[1]} values per frame, want 6")
    visible = np.asarray(get("visible", "int64_list"), np.int64)
    if visible.size != t * n:
        raise RecordError(f"{where}: field 'visible' has {visible.size} values, want {t * n}")
    return Clip(
        clip_id=get("clip_id", "bytes_list")[0].decode(),
        video_id=get("video_id", "bytes_list")[0].decode(),
        dataset=get("dataset", "bytes_list")[0].decode(),
        split=get("split", "bytes_list")[0].decode(),
        frames=frames,
        pose=pose,
        expression=floats("expression", ()),
        landmarks=landmarks,
        raw_landmarks=floats("raw_landmarks", (2,)),
        visible=visible.reshape(t, n).astype(bool),
        identity=floats("identity", None),
        frame_index=np.asarray(get("frame_index", "int64_list"), np.int64),
        fps=float(get("fps", "float_list")[0]),
        height=int(get("height", "int64_list")[0]),
        width=int(get("width", "int64_list")[0]),
        num_frames=t,
        version=VERSION,
    )


# ----------------------------------------------------------------------------- CRC32C

_POLY = 0x82F63B78  # Castagnoli, reflected
_CHUNK_LOG2 = 6  # the vectorised CRC runs over chunks of 64 bytes in parallel


@functools.cache
def _crc_tables() -> tuple[np.ndarray, np.ndarray]:
    """The byte table [256] and the two-byte table [65536] of the reflected CRC register."""
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    t16 = np.arange(65536, dtype=np.uint32)
    for _ in range(2):
        t16 = t[t16 & 0xFF] ^ (t16 >> 8)
    return t, t16


def _apply_linear(tables: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A GF(2)-linear map of 32-bit values given as four byte tables [4, 256]."""
    return (
        tables[0][x & 0xFF]
        ^ tables[1][(x >> 8) & 0xFF]
        ^ tables[2][(x >> 16) & 0xFF]
        ^ (tables[3][x >> 24])
    )


@functools.cache
def _zeros_operator(log2_bytes: int) -> np.ndarray:
    """[4, 256] tables of 'run the register over 2**log2_bytes zero bytes' (linear)."""
    t, _ = _crc_tables()
    basis = np.uint32(1) << np.arange(32, dtype=np.uint32)
    if log2_bytes == 0:
        columns = t[basis & 0xFF] ^ (basis >> 8)
    else:
        half = _zeros_operator(log2_bytes - 1)
        columns = _apply_linear(half, _apply_linear(half, basis))
    bits = (np.arange(256, dtype=np.uint32)[:, None] >> np.arange(8, dtype=np.uint32)) & 1
    tables = np.zeros((4, 256), np.uint32)
    for k in range(4):
        picked = np.where(bits.astype(bool), columns[8 * k : 8 * k + 8][None], np.uint32(0))
        tables[k] = np.bitwise_xor.reduce(picked, axis=1)
    return tables


def _crc32c_small(data: bytes) -> int:
    t = _crc_tables()[0].tolist()
    c = 0xFFFFFFFF
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C (Castagnoli) of `data`, about 400 MB/s on one core.

    The data is cut into 64-byte chunks whose CRC registers advance together (numpy, two bytes
    per table lookup); the chunk registers are then merged pairwise with the linear operator
    'advance over k zero bytes' (CRC is linear over GF(2)). The initial value 0xFFFFFFFF
    equals complementing the first four data bytes.
    """
    n = len(data)
    if n < 256:
        return _crc32c_small(bytes(data))
    t16 = _crc_tables()[1]
    size = 1 << _CHUNK_LOG2
    pad = -n % size
    buf = np.zeros(n + pad, np.uint8)  # leading zeros leave a zero register unchanged
    buf[pad:] = np.frombuffer(data, np.uint8)
    buf[pad : pad + 4] ^= 0xFF
    words = buf.view("<u2").reshape(-1, size // 2).T.copy()  # [32, chunks]
    reg = np.zeros(words.shape[1], np.uint32)
    for w in words:
        reg ^= w
        reg = t16[reg & 0xFFFF] ^ (reg >> 16)
    level = _CHUNK_LOG2
    while len(reg) > 1:
        if len(reg) & 1:  # a leading all-zero chunk keeps the pairs aligned
            reg = np.concatenate([np.zeros(1, np.uint32), reg])
        reg = _apply_linear(_zeros_operator(level), reg[0::2]) ^ reg[1::2]
        level += 1
    return int(reg[0]) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC-32C."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """TFRecord framing: length u64, masked CRC of the length, data, masked CRC of the data."""
    header = struct.pack("<Q", len(data))
    return b"".join(
        [
            header,
            struct.pack("<I", masked_crc32c(header)),
            data,
            struct.pack("<I", masked_crc32c(data)),
        ]
    )


# ----------------------------------------------------------------------------- writing


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _check_split(split: str) -> None:
    if not _SPLIT_RE.match(split):
        raise ValueError(f"split name {split!r}: use letters, digits and '_' only")


def _shard_pattern(split: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(split)}-(\d{{5}})-of-(\d{{5}})\.tfrecord$")


def _fsync_dir(path: pathlib.Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _ShardWriter:
    """One shard being written under a temporary name, with its index entries."""

    def __init__(self, output: pathlib.Path, split: str, number: int, token: str):
        self.path = output / f".{split}-{number:05d}.tfrecord.tmp-{token}"
        self.file = open(self.path, "wb")  # noqa: SIM115 (closed in finish/abort)
        self.size = 0
        self.entries: list[dict] = []

    def add(self, clip: Clip, data: bytes) -> None:
        framed = frame_record(data)
        self.file.write(framed)
        self.entries.append(
            {"offset": self.size, "length": len(data), "clip_id": clip.clip_id,
             "num_frames": clip.num_frames}
        )  # fmt: skip
        self.size += len(framed)

    def finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def write_shards(
    clips: Iterable[Clip],
    output_dir: str | os.PathLike,
    split: str,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> list[pathlib.Path]:
    """Write `clips` as the shards of `split` in `output_dir`, replacing any earlier ones.

    A shard is closed when the next record would take it past `max_shard_bytes` (a larger
    record gets a shard of its own). Shards and indexes are written to hidden temporary names,
    synced, and renamed to `split-NNNNN-of-MMMMM.tfrecord` (+ `.index`) once all are complete;
    then shards of an earlier write of this split that the new one did not replace are
    deleted. An error while writing removes the temporary files and leaves the old split as it
    was. No clips gives one empty shard (the split exists and has no records).
    Returns the shard paths.
    """
    _check_split(split)
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    output = pathlib.Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(6)
    shards: list[_ShardWriter] = []
    temp_indexes: list[pathlib.Path] = []
    try:
        current = _ShardWriter(output, split, 0, token)
        shards.append(current)
        seen: set[str] = set()
        for clip in clips:
            if clip.split != split:
                raise ValueError(
                    f"clip {clip.clip_id!r} has split {clip.split!r}, writing {split!r}"
                )
            if clip.clip_id in seen:
                raise ValueError(f"clip id {clip.clip_id!r} appears twice in split {split!r}")
            seen.add(clip.clip_id)
            data = serialize(clip)
            if current.entries and current.size + len(data) + 16 > max_shard_bytes:
                current.finish()
                current = _ShardWriter(output, split, len(shards), token)
                shards.append(current)
            current.add(clip, data)
        current.finish()
        count = len(shards)
        finals = [output / shard_name(split, i, count) for i in range(count)]
        for shard, final in zip(shards, finals, strict=True):
            index = {
                "version": VERSION, "write_id": token, "split": split, "shard": final.name,
                "shard_bytes": shard.size, "records": shard.entries,
            }  # fmt: skip
            tmp = output / f".{final.name}.index.tmp-{token}"
            temp_indexes.append(tmp)
            with open(tmp, "w") as f:
                json.dump(index, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(output)
        # Commit: each file appears complete or not at all (rename is atomic).
        for shard, tmp, final in zip(shards, temp_indexes, finals, strict=True):
            os.replace(shard.path, final)
            os.replace(tmp, final.with_name(final.name + ".index"))
    except BaseException:
        for shard in shards:
            if not shard.file.closed:
                shard.file.close()
            shard.path.unlink(missing_ok=True)
        for tmp in temp_indexes:
            tmp.unlink(missing_ok=True)
        raise
    keep = {p.name for p in finals} | {p.name + ".index" for p in finals}
    pattern = _shard_pattern(split)
    for p in output.iterdir():
        stale = pattern.match(p.name.removesuffix(".index")) and p.name not in keep
        leftover = p.name.startswith(f".{split}-") and ".tmp-" in p.name  # a crashed write
        if stale or leftover:
            p.unlink(missing_ok=True)
    _fsync_dir(output)
    return finals


# ----------------------------------------------------------------------------- reading


def find_shards(root: str | os.PathLike, split: str) -> list[pathlib.Path]:
    """The complete, consistent shard set of `split` in `root`, in order (clear errors)."""
    _check_split(split)
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"record folder {root} does not exist")
    pattern = _shard_pattern(split)
    found = sorted(
        (int(m[2]), int(m[1]), p) for p in root.iterdir() if (m := pattern.match(p.name))
    )
    if not found:
        raise FileNotFoundError(
            f"no shards of split {split!r} in {root} (expected {shard_name(split, 0, 1)} ...); "
            "run python -m data_prep.build to write them"
        )
    counts = {c for c, _, _ in found}
    numbers = [i for _, i, _ in found]
    if len(counts) != 1 or numbers != list(range(counts.pop())):
        names = ", ".join(p.name for *_, p in found[:6])
        raise RecordError(
            f"split {split!r} in {root}: the shard set is incomplete or mixes two writes "
            f"({names}{', ...' if len(found) > 6 else ''}); re-run data_prep for this split"
        )
    return [p for *_, p in found]


def read_index(shard: pathlib.Path) -> dict:
    """The JSON index of a shard, checked against the shard (version, size)."""
    path = shard.with_name(shard.name + ".index")
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{shard}: its index {path.name} is missing; re-run data_prep") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: unreadable index ({e}); re-run data_prep") from None
    if index.get("version") != VERSION:
        raise RecordError(
            f"{path}: record schema version {index.get('version')} but this reader reads "
            f"version {VERSION}; rebuild the records with this version of data_prep"
        )
    size = shard.stat().st_size
    if index.get("shard_bytes") != size:
        raise RecordError(
            f"{shard}: {size} bytes but its index says {index.get('shard_bytes')} (truncated, or "
            "the index belongs to another write); re-run data_prep for this split"
        )
    return index


class ClipSource:
    """Grain `RandomAccessDataSource` of the clips of one split: `source[i] -> Clip`.

    `min_frames` keeps only clips with at least that many frames (from the index, without
    reading the records). Reads a record with `os.pread` (safe from Grain's reader threads;
    picklable for worker processes, which reopen the files) and verifies both TFRecord CRCs;
    a corrupt record raises `RecordError` naming the shard file and byte offset.
    """

    def __init__(self, root: str | os.PathLike, split: str, *, min_frames: int = 1):
        self.root = pathlib.Path(root)
        self.split = split
        self.shards = find_shards(self.root, split)
        indexes = [read_index(s) for s in self.shards]
        write_ids = {ix.get("write_id") for ix in indexes}
        if len(write_ids) != 1:
            raise RecordError(
                f"split {split!r} in {self.root}: shards come from different writes; re-run "
                "data_prep for this split"
            )
        rows = [
            (k, r)
            for k, ix in enumerate(indexes)
            for r in ix["records"]
            if r["num_frames"] >= min_frames
        ]
        self._shard = np.asarray([k for k, _ in rows], np.int32)
        self._offset = np.asarray([r["offset"] for _, r in rows], np.int64)
        self._length = np.asarray([r["length"] for _, r in rows], np.int64)
        self.num_frames = np.asarray([r["num_frames"] for _, r in rows], np.int64)
        self.clip_ids = [r["clip_id"] for _, r in rows]
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._offset)

    def __repr__(self) -> str:
        return f"ClipSource(root={str(self.root)!r}, split={self.split!r}, clips={len(self)})"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"], state["_lock"] = {}, None  # file descriptors do not travel
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def read_bytes(self, index: int) -> bytes:
        """The verified Example bytes of record `index`."""
        i = int(index)
        if not 0 <= i < len(self):
            raise IndexError(f"record {index} out of range for {self!r}")
        shard, offset, length = int(self._shard[i]), int(self._offset[i]), int(self._length[i])
        path = self.shards[shard]
        framed = os.pread(self._fd(shard), length + 16, offset)
        where = f"{path} at byte offset {offset}"
        if len(framed) != length + 16:
            raise RecordError(f"{where}: truncated record ({len(framed)} of {length + 16} bytes)")
        header = framed[:8]
        (stored_length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", framed[8:12])
        if masked_crc32c(header) != length_crc:
            raise RecordError(f"{where}: corrupt record (length CRC mismatch)")
        if stored_length != length:
            raise RecordError(f"{where}: record length {stored_length} but the index says {length}")
        data = framed[12 : 12 + length]
        (data_crc,) = struct.unpack("<I", framed[12 + length :])
        if masked_crc32c(data) != data_crc:
            raise RecordError(f"{where}: corrupt record (data CRC mismatch)")
        return data

    def __getitem__(self, index: int) -> Clip:
        i = int(index)
        data = self.read_bytes(i)
        path, offset = self.shards[int(self._shard[i])], int(self._offset[i])
        return parse(data, where=f"{path} at byte offset {offset}")


def read_split(root: str | os.PathLike, split: str) -> Iterator[Clip]:
    """Every clip of a split, in record order (decoded arrays: `input_pipeline.load_clips`)."""
    source = ClipSource(root, split)
    try:
        for i in range(len(source)):
            yield source[i]
    finally:
        source.close()
