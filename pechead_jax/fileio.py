"""Atomic file writes, the one way the project writes a file a reader may see half-done.

The data goes to a hidden temporary file in the target's folder, which is renamed onto the
target only once it is complete: a crash leaves either the old file or the new one, never a
truncated mix, and no temporary file behind.
"""

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[pathlib.Path]:
    """Yield a temporary path beside `path`; rename it onto `path` when the block succeeds.

    `suffix` (default: `path`'s) is kept on the temporary name for writers that choose the
    format by extension (`np.savez`, `cv2.VideoWriter`). On an exception nothing is renamed
    and the temporary file is removed.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix
    )
    os.close(fd)
    tmp = pathlib.Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """`np.savez` to `path` atomically (uncompressed)."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """An RGB uint8 `[H,W,3]` image as a PNG, atomically."""
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    write_bytes(path, data.tobytes())
