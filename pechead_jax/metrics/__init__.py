"""Evaluation metrics of the paper's Tables 1-4 and their feature networks (docs/metrics.md).

- `image`: L1, PSNR, MS-SSIM (pure JAX functions over `[B, H, W, C]` in [0, 1]).
- `frechet`: the Fréchet distance (float64, host) for FID and FVD.
- `inception` (+ `convert_inception` CLI): the FID InceptionV3 in Flax.
- `i3d`: I3D Kinetics-400 in Flax for FVD.
- `identity`: CSIM with dlib's face descriptor or a user-supplied ArcFace.
- `face`: AKD, ARD, AUH, ARE from the face analyser.
Every network loader returns a provenance record (network, weight files, SHA-256).
"""

from pechead_jax.metrics.frechet import frechet_distance, frechet_distance_from_features
from pechead_jax.metrics.image import l1, ms_ssim, psnr
from pechead_jax.metrics.result import FrameMetric

__all__ = [
    "FrameMetric",
    "frechet_distance",
    "frechet_distance_from_features",
    "l1",
    "ms_ssim",
    "psnr",
]
