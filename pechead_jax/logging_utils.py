"""TensorBoard event files (tensorboardX, no TensorFlow), sample grids and terminal lines."""

import logging
import pathlib
from collections.abc import Mapping

import cv2
import jax
import numpy as np
from clu import parameter_overview

POINT_COLOURS = ((255, 64, 64), (64, 255, 64))  # learned keypoints red, landmarks green


class Writer:
    """Scalars and images to `W/tensorboard` (process 0 only; other processes drop them)."""

    def __init__(self, logdir: str | pathlib.Path):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(logdir), flush_secs=30)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, float(v), step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """`image [H,W,3]` uint8 or float in [0,1]."""
        if self._writer is not None:
            self._writer.add_image(name, to_uint8(image), step, dataformats="HWC")

    def text(self, step: int, name: str, text: str) -> None:
        if self._writer is not None:
            self._writer.add_text(name, text, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def to_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def draw_points(image: np.ndarray, points: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Draw `points [N,2]` in [-1,1] (x right, y down) as dots on a copy of `image [H,W,3]`."""
    out = np.ascontiguousarray(to_uint8(image))
    h, w = out.shape[:2]
    radius = max(1, round(min(h, w) / 96))
    for x, y in np.asarray(points, np.float32):
        if np.isfinite(x) and np.isfinite(y):
            centre = (round((x + 1) / 2 * (w - 1)), round((y + 1) / 2 * (h - 1)))
            cv2.circle(out, centre, radius, colour, -1, lineType=cv2.LINE_AA)
    return out


def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = to_uint8(image)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    if image.shape[:2] != size:
        image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_NEAREST)
    return image


def sample_grid(columns: Mapping[str, np.ndarray], max_rows: int = 4) -> np.ndarray:
    """Stack named image batches as columns (`[B,h,w,c]` each, resized to the first) into
    one `[rows*H, cols*W, 3]` uint8 grid, one row per sample."""
    names = list(columns)
    first = np.asarray(columns[names[0]])
    size = first.shape[1:3]
    rows = min(max_rows, first.shape[0])
    return np.concatenate(
        [
            np.concatenate([_fit(np.asarray(columns[n])[r], size) for n in names], axis=1)
            for r in range(rows)
        ],
        axis=0,
    )


def training_grid(batch: Mapping[str, np.ndarray], out: Mapping, max_rows: int = 4) -> np.ndarray:
    """The grid logged during training: source (keypoints + landmarks drawn), driving (its
    keypoints + landmarks), generated, the source warped by each flow, level-0 occlusion."""
    rows = min(max_rows, len(batch["source"]))

    def annotate(images, keypoints, landmarks):
        return np.stack(
            [
                draw_points(
                    draw_points(images[i], landmarks[i], POINT_COLOURS[1]),
                    keypoints[i],
                    POINT_COLOURS[0],
                )
                for i in range(rows)
            ]
        )

    columns = {
        "source": annotate(batch["source"], out["source_keypoints"], batch["source_landmarks"]),
        "driving": annotate(batch["driving"], out["driving_keypoints"], batch["driving_landmarks"]),
        "generated": np.asarray(out["image"])[:rows],
    }
    for name, warped in out.get("warped", {}).items():
        columns[f"warped_{name}"] = np.asarray(warped)[:rows]
    if out.get("occlusions"):
        # The finest level: the list's order is the generator's business.
        finest = max(out["occlusions"], key=lambda o: o.shape[1])
        columns["occlusion"] = np.asarray(finest)[:rows]
    return sample_grid(columns, rows)


def log_parameter_overview(name: str, params) -> int:
    """Log a table of parameter shapes and counts; return the number of parameters."""
    logging.info("%s parameters:\n%s", name, parameter_overview.get_parameter_overview(params))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def progress_line(step: int, num_steps: int, metrics: Mapping[str, float], rate: float) -> str:
    """One concise terminal line: step, main losses, samples/s."""
    keys = {"g/total": "G", "d/total": "D", "g/pixel": "pixel", "g/perceptual": "perceptual",
            "nonfinite/skipped": "skipped"}
    parts = [f"{name}={metrics[k]:.4g}" for k, name in keys.items() if k in metrics]
    return f"step {step}/{num_steps}  " + "  ".join(parts) + f"  {rate:.2f} samples/s"
