"""Video out: H.264 with the driving video's sound when an ffmpeg is found, else a silent mp4v.

The ffmpeg is the one inside the `imageio-ffmpeg` wheel (a pinned dependency, so it is found
offline), else `$PECHEAD_FFMPEG`, else an `ffmpeg` on PATH. With it, `VideoWriter` streams RGB
frames into ffmpeg's libx264 (yuv420p, `+faststart`: browsers and Colab play it) and muxes the
audio of `audio_from` (re-encoded to AAC, cut to the video's length). Without one, OpenCV
writes mp4v without sound and a warning says why. Either way the file appears atomically.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pathlib
import re
import shutil
import subprocess
import warnings

import numpy as np

from pechead_jax import fileio


@contextlib.contextmanager
def _quiet_fork():
    """JAX warns at every fork; ffmpeg is started with fork+exec at once (subprocess), which
    is safe, so the warning is silenced around it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
        yield


@functools.cache
def ffmpeg_exe() -> str | None:
    """The ffmpeg binary to use, or None (see the module docstring for the order)."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        pass
    env = os.environ.get("PECHEAD_FFMPEG")
    if env and pathlib.Path(env).is_file():
        return env
    return shutil.which("ffmpeg")


def probe_streams(path: str | os.PathLike) -> list[str]:
    """The stream kinds of a media file (e.g. `["video", "audio"]`), read by ffmpeg; [] when
    no ffmpeg is found or the file is unreadable."""
    exe = ffmpeg_exe()
    if exe is None:
        return []
    with _quiet_fork():
        result = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True,
                                text=True, check=False)
    return [m.lower() for m in re.findall(r"Stream #\d+:\d+.*?: (Video|Audio):", result.stderr)]


def has_audio(path: str | os.PathLike) -> bool:
    """Whether `path` has an audio stream (False when no ffmpeg can tell)."""
    return "audio" in probe_streams(path)


class VideoWriter:
    """Write RGB uint8 frames `[H,W,3]` one at a time to an mp4, atomically.

        with VideoWriter("out.mp4", fps=25, audio_from="driving.mp4") as w:
            for frame in frames:
                w.write(frame)

    `codec` after the file is closed: "h264" or "mp4v"; `audio`: whether sound was muxed.
    Odd frame sizes are padded by one black row or column for H.264's 4:2:0 chroma.
    """

    def __init__(self, path: str | os.PathLike, fps: float,
                 audio_from: str | os.PathLike | None = None, quality: int = 18):
        self.path = pathlib.Path(path)
        self.fps = float(fps)
        if not self.fps > 0:
            raise ValueError(f"{path}: frame rate {fps} must be positive")
        self.audio_from = audio_from
        self.quality = quality
        self.frames = 0
        self.codec = "h264" if ffmpeg_exe() else "mp4v"
        self.audio = bool(audio_from) and self.codec == "h264" and has_audio(audio_from)
        if audio_from and not self.audio:
            why = ("no ffmpeg found (imageio-ffmpeg not installed, no PECHEAD_FFMPEG, none on "
                   "PATH)" if self.codec == "mp4v" else f"{audio_from} has no audio stream")
            logging.warning("%s: written without sound: %s", self.path, why)
        self._stack = contextlib.ExitStack()
        self._sink = None

    def __enter__(self) -> VideoWriter:
        self._tmp = self._stack.enter_context(fileio.atomic_path(self.path, ".mp4"))
        return self

    def _open(self, height: int, width: int) -> None:
        if self.codec == "h264":
            import imageio_ffmpeg

            output = ["-movflags", "+faststart", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
            if self.audio:
                output += ["-shortest"]
            self._sink = imageio_ffmpeg.write_frames(
                str(self._tmp), (width, height), fps=self.fps, codec="libx264",
                macro_block_size=1, output_params=output, ffmpeg_log_level="error",
                audio_path=str(self.audio_from) if self.audio else None,
                audio_codec="aac" if self.audio else None,
            )
            with _quiet_fork():
                self._sink.send(None)  # starts ffmpeg
            self._stack.callback(self._sink.close)
        else:
            import cv2

            writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                     (width, height))
            if not writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write {self.path} (mp4v)")
            self._sink = writer
            self._stack.callback(writer.release)
        self._size = (height, width)

    def write(self, frame: np.ndarray) -> None:
        """One RGB uint8 frame `[H,W,3]` (every frame the same size)."""
        frame = np.ascontiguousarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"{self.path}: frames must be uint8 [H,W,3], got {frame.dtype} "
                             f"{frame.shape}")
        if self._sink is None:
            self._open(*frame.shape[:2])
        elif frame.shape[:2] != self._size:
            raise ValueError(f"{self.path}: frame {self.frames} is {frame.shape[:2]}, the "
                             f"first was {self._size}")
        if self.codec == "h264":
            self._sink.send(frame)
        else:
            import cv2

            self._sink.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.frames == 0:
            error = ValueError(f"{self.path}: no frames to write")
            self._stack.__exit__(ValueError, error, None)  # removes the temporary file
            raise error
        # Closing the sink finishes the file; then atomic_path renames it (or, on an error,
        # removes it).
        self._stack.__exit__(exc_type, exc, tb)


def write_mp4(path: str | os.PathLike, frames, fps: float,
              audio_from: str | os.PathLike | None = None) -> VideoWriter:
    """RGB uint8 frames `[H,W,3]` (an array `[T,H,W,3]` or any iterable) as one mp4 through
    `VideoWriter`, atomically; returns the closed writer (`codec`, `audio`, `frames`)."""
    with VideoWriter(path, fps, audio_from=audio_from) as writer:
        for frame in frames:
            writer.write(frame)
    return writer
