"""Grain input pipelines over the records: frame pairs (image mode) and clips (video mode).

No model code. `create_dataset` returns a `grain.IterDataset`; `iter()` of it is a
checkpointable `grain.DatasetIterator` (`get_state` / `set_state`, saved by the trainer with
`grain.checkpoint.CheckpointSave`). Sampling, augmentation, sharding and resume are described
in `docs/data.md`. Batch layout (`docs/interfaces.md`), image mode:

    source, driving [B,H,W,3] float32 in [0, 1]     source_pose, driving_pose [B,6]
    source_expression, driving_expression [B,E]      source_landmarks, driving_landmarks [B,N,2]
    identity [B,I]

Video mode: the `driving*` entries gain a time axis after B (`[B,T,...]`).
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Iterator, Sequence

import cv2
import grain
import ml_collections
import numpy as np

from pechead_jax import face_model, records

MODES = ("image", "video")
# RGB -> YIQ (NTSC); hue rotates the (I, Q) plane.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)
_LUMA = _YIQ[0]


# ----------------------------------------------------------------------------- frames


def decode_frame(jpeg: bytes, resolution: int | None = None, *, where: str = "frame") -> np.ndarray:
    """JPEG bytes -> RGB uint8 `[H,W,3]`, resized to `resolution` (square) if given."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{where}: not a decodable JPEG ({len(jpeg)} bytes)")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if resolution is not None and rgb.shape[:2] != (resolution, resolution):
        shrink = resolution < max(rgb.shape[:2])
        rgb = cv2.resize(
            rgb,
            (resolution, resolution),
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
        )
    return rgb


def rescale_factor(from_size: int, to_size: int) -> float:
    """Factor by which [-1, 1] coordinates (pixel centres at -1 and 1, `to_crop_coords`)
    scale when a square image is resized from `from_size` to `to_size` pixels: a point keeps
    its place in the continuous image, so x' = x (from - 1) to / (from (to - 1))."""
    return (from_size - 1) * to_size / (from_size * (to_size - 1))


def rescale_geometry(pose: np.ndarray, landmarks: np.ndarray, factor: float):
    """Pose `[...,6]` and landmarks `[...,N,2]` of the image resized by `rescale_factor`:
    landmarks and (tx, ty) scale by `factor`, log-scale grows by log(factor)."""
    if factor == 1.0:
        return pose, landmarks
    pose = pose.copy()
    pose[..., 3] += np.float32(math.log(factor))
    pose[..., 4:6] *= np.float32(factor)
    return pose, (landmarks * np.float32(factor)).astype(np.float32)


def color_jitter(images: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """One random brightness, contrast, saturation and hue change, the same for all `images`
    `[..., H, W, 3]` float32 in [0, 1] (each factor in [1 - s, 1 + s], hue +-s of the circle)."""
    if strength <= 0:
        return images
    s = strength
    brightness, contrast, saturation = rng.uniform(1 - s, 1 + s, size=3)
    theta = 2 * np.pi * rng.uniform(-s, s)
    rot = np.array(
        [[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]]
    )
    hue = _YIQ_INV @ rot @ _YIQ
    sat = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), _LUMA)
    matrix = (brightness * hue @ sat).astype(np.float32)
    out = images @ matrix.T
    mean = (out @ _LUMA.astype(np.float32)).mean(axis=(-2, -1), keepdims=True)[..., None]
    out = (out - mean) * np.float32(contrast) + mean
    return np.clip(out, 0.0, 1.0, out=out)


# ----------------------------------------------------------------------------- sampling


class _Sampler(grain.transforms.RandomMap):
    """Clip -> one training example (dict of arrays), deterministic in the given rng."""

    def __init__(
        self,
        *,
        mode: str,
        clip_length: int,
        resolution: int,
        flip: bool,
        jitter: float,
        mirror: np.ndarray | None,
    ):
        self.mode = mode
        self.clip_length = clip_length
        self.resolution = resolution
        self.flip = flip
        self.jitter = jitter
        self.mirror = mirror

    def random_map(self, clip: records.Clip, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if clip.height != clip.width:
            raise ValueError(
                f"clip {clip.clip_id}: frames are {clip.height}x{clip.width}, not square"
            )
        t = clip.num_frames
        if self.mode == "image":
            source, driving = (int(i) for i in rng.choice(t, size=2, replace=False))
            drive = np.array([driving])
        else:
            length = self.clip_length
            start = int(rng.integers(0, t - length + 1))
            drive = np.arange(start, start + length)
            outside = np.setdiff1d(np.arange(t), drive)  # a source outside the window
            source = int(rng.choice(outside))
        picks = np.concatenate([[source], drive])
        images = np.stack(
            [
                decode_frame(
                    clip.frames[i], self.resolution, where=f"clip {clip.clip_id} frame {i}"
                )
                for i in picks
            ]
        ).astype(np.float32) * np.float32(1 / 255)
        pose = np.asarray(clip.pose, np.float32)[picks]
        expression = np.asarray(clip.expression, np.float32)[picks]
        landmarks = np.asarray(clip.landmarks, np.float32)[picks]
        pose, landmarks = rescale_geometry(
            pose, landmarks, rescale_factor(clip.width, self.resolution)
        )
        if self.flip and rng.random() < 0.5:
            images = np.ascontiguousarray(images[:, :, ::-1])
            pose = face_model.flip_pose(pose).astype(np.float32)
            expression = face_model.flip_expression(expression)
            landmarks = face_model.flip_landmarks(landmarks, self.mirror).astype(np.float32)
        images = color_jitter(images, self.jitter, rng)
        sample = {
            "source": images[0],
            "source_pose": pose[0],
            "source_expression": expression[0],
            "source_landmarks": landmarks[0],
            "identity": np.asarray(clip.identity, np.float32),
        }
        driving = {
            "driving": images[1:],
            "driving_pose": pose[1:],
            "driving_expression": expression[1:],
            "driving_landmarks": landmarks[1:],
        }
        if self.mode == "image":
            driving = {k: v[0] for k, v in driving.items()}
        return sample | driving


def mirror_permutation(root: str | os.PathLike, num_landmarks: int) -> np.ndarray | None:
    """The landmark mirror permutation `[N]` of `root/face_model.npz` if there is one, else
    None (then `face_model.flip_landmarks` uses its default for N: 68 iBUG, 468/478 mesh)."""
    path = pathlib.Path(root) / "face_model.npz"
    if path.exists():
        with np.load(path) as data:
            if "mirror_permutation" in data:
                perm = np.asarray(data["mirror_permutation"])
                if perm.shape == (num_landmarks,):
                    return perm
    return None


# ----------------------------------------------------------------------------- datasets


def create_dataset(
    data_config: ml_collections.ConfigDict,
    root: str | os.PathLike,
    split: str,
    *,
    train: bool,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Batches of this process's part of `split` in `root` (see the module docstring).

    train=True: this process's clips (every `process_count`-th from `process_index`),
    shuffled with `seed`, repeated forever (reshuffled each epoch), random frames per clip,
    flip and colour jitter per `data_config`. train=False: one deterministic pass, one sample
    per clip, no augmentation. Batches hold `data_config.batch_size // process_count`
    samples; an incomplete last batch is dropped. `data_config.workers > 0` decodes in that
    many worker processes.
    """
    d = data_config
    if d.mode not in MODES:
        raise ValueError(f"data.mode must be one of {MODES}, got {d.mode!r}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if d.batch_size % process_count:
        raise ValueError(
            f"data.batch_size {d.batch_size} (global) is not divisible by the {process_count} "
            "processes"
        )
    batch = d.batch_size // process_count
    if batch < 1:
        raise ValueError(f"data.batch_size must be positive, got {d.batch_size}")
    if d.mode == "video" and d.clip_length < 1:
        raise ValueError(f"data.clip_length must be positive, got {d.clip_length}")
    need = 2 if d.mode == "image" else d.clip_length + 1
    source = records.ClipSource(root, split, min_frames=need)
    if len(source) == 0:
        raise ValueError(
            f"split {split!r} in {root} has no clip of at least {need} frames (mode {d.mode!r})"
        )
    flip = bool(d.flip) and train
    if flip:
        probe = source[0]
        if np.shape(probe.expression)[1] != len(face_model.BLENDSHAPE_MIRROR):
            raise ValueError(
                f"data.flip needs the {len(face_model.BLENDSHAPE_MIRROR)} MediaPipe blendshapes "
                f"to mirror the expression, the records have {np.shape(probe.expression)[1]}; "
                "set data.flip=False"
            )
        mirror = mirror_permutation(root, np.shape(probe.landmarks)[1])
        face_model.flip_landmarks(np.asarray(probe.landmarks[:1]), mirror)  # fails early if N
    else:
        mirror = None
    sampler = _Sampler(
        mode=d.mode,
        clip_length=int(d.clip_length),
        resolution=int(d.resolution),
        flip=flip,
        jitter=float(d.color_jitter) if train else 0.0,
        mirror=mirror,
    )
    ds = grain.MapDataset.source(source).slice(slice(process_index, None, process_count))
    if len(ds) == 0:
        raise ValueError(
            f"process {process_index} of {process_count} gets no clip of split {split!r} "
            f"({len(source)} clips in all)"
        )
    if train:
        ds = ds.shuffle(seed=seed).repeat(None)
    elif len(ds) < batch:
        raise ValueError(
            f"split {split!r}: {len(ds)} clips for this process, fewer than one batch of {batch} "
            "(evaluation is one pass with full batches)"
        )
    # One seed per process so that processes do not draw the same frames and flips.
    sample_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])
    ds = ds.random_map(sampler, seed=sample_seed)
    ds = ds.batch(batch, drop_remainder=True)
    threads = max(1, int(d.get("read_threads", 2)))
    iter_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
    )
    if d.workers > 0:
        _allow_unparsed_flags()
        iter_ds = iter_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=int(d.workers), per_worker_buffer_size=2)
        )
    return iter_ds


def _allow_unparsed_flags() -> None:
    """Grain's worker processes read absl flags; outside `absl.app.run` (tests, notebooks)
    they were never parsed and Grain raises `UnparsedFlagAccessError`. Mark them parsed
    with their defaults (a later `app.run` still parses the command line)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


# ----------------------------------------------------------------------------- whole clips


def clip_arrays(clip: records.Clip, resolution: int | None = None) -> dict[str, np.ndarray]:
    """A whole clip as arrays: `frames [T,H,W,3]` float32 in [0, 1], `pose [T,6]`,
    `expression [T,E]`, `landmarks [T,N,2]`, `visible [T,N]`, `identity [I]`, `fps`;
    resized (with the geometry) to `resolution` if given."""
    size = resolution or clip.width
    frames = np.stack(
        [
            decode_frame(f, size, where=f"clip {clip.clip_id} frame {i}")
            for i, f in enumerate(clip.frames)
        ]
    ).astype(np.float32) * np.float32(1 / 255)
    pose, landmarks = rescale_geometry(
        np.asarray(clip.pose, np.float32),
        np.asarray(clip.landmarks, np.float32),
        rescale_factor(clip.width, size),
    )
    return {
        "frames": frames,
        "pose": pose,
        "expression": np.asarray(clip.expression, np.float32),
        "landmarks": landmarks,
        "visible": np.asarray(clip.visible, bool),
        "identity": np.asarray(clip.identity, np.float32),
        "fps": np.float32(clip.fps),
    }


def load_clips(
    root: str | os.PathLike,
    split: str,
    *,
    resolution: int | None = None,
    clip_ids: Sequence[str] | None = None,
) -> Iterator[tuple[records.Clip, dict[str, np.ndarray]]]:
    """`(clip, clip_arrays(clip, resolution))` for the clips of a split in record order
    (only `clip_ids`, if given): for evaluation over whole clips and demos."""
    wanted = None if clip_ids is None else set(clip_ids)
    source = records.ClipSource(root, split)
    try:
        for i, cid in enumerate(source.clip_ids):
            if wanted is None or cid in wanted:
                clip = source[i]
                yield clip, clip_arrays(clip, resolution)
    finally:
        source.close()
