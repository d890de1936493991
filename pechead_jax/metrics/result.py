"""The result of a per-frame face metric: its mean, per-frame values, what was missing, and why."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class FrameMetric:
    """A metric over N frames. `per_frame[i]` is NaN where a face was not found.

    `value` is the mean over the frames where every face it needs was found (NaN if none);
    `missing` counts the others, so they are reported, never silently dropped.
    """

    name: str
    value: float
    per_frame: np.ndarray
    missing: int
    provenance: dict[str, str]

    @property
    def total(self) -> int:
        return int(self.per_frame.shape[0])

    def as_dict(self) -> dict:
        """JSON-ready summary (per-frame values left out)."""
        return {"metric": self.name, "value": self.value, "frames": self.total,
                "missing": self.missing, "provenance": dict(self.provenance)}


def from_per_frame(name: str, per_frame: np.ndarray, provenance: dict[str, str]) -> FrameMetric:
    """Summarise per-frame values `[N]` (NaN = a face was not found)."""
    per_frame = np.asarray(per_frame, np.float64)
    found = np.isfinite(per_frame)
    value = float(per_frame[found].mean()) if found.any() else float("nan")
    return FrameMetric(name, value, per_frame, int((~found).sum()), provenance)
