"""VoxCeleb2 (about 1M utterances of 6k speakers, 224p upscaled).

PECHead at 256x256 (or 512x512), stage 1 (frame pairs) or stage 2 (clips with CAP).

Data (records, face model):
    python -m data_prep.build --recipe voxceleb2 --input RAW \
        --output /data/voxceleb2-256 --workers 32
Stage 1:
    python -m pechead_jax.main --config configs/voxceleb2.py --workdir /ckpt/voxceleb2
Stage 2 (initialised from stage 1):
    python -m pechead_jax.main --config configs/voxceleb2.py:stage2,init=/ckpt/voxceleb2 \
        --workdir /ckpt/voxceleb2-stage2
512x512: `configs/voxceleb2.py:512`
    (data built with `--resolution 512` in /data/voxceleb2-512).
Ablations (the paper's Table 4): `configs/voxceleb2.py:variant=kp` (kp, lmk, direct, featcat).
Another data folder: `--config.data.root=PATH`.

Sized for one host with 8 GPUs of 40-80 GB (A100/H100) or a TPU v4-16 / v5e-16 slice: global
batch 32 at 256 (4 per device), 16 in bf16 at 512; several hosts: see launch/.
Expected runtime (300,000 stage-1 steps, 75,000 stage-2 steps):
stage 1 about 12 hours, stage 2 about 3 hours on 8 A100s at 256 (an estimate, not a measurement);
docs/training.md derives it from the measured cost of a step (benchmarks/train_step.py).
"""

from configs import experiment

NUM_STEPS = 300_000


def get_config(arg: str | None = None):
    config = experiment.make(arg, root="/data/voxceleb2-{resolution}")
    config.train.num_steps = NUM_STEPS if config.train.stage == 1 else NUM_STEPS // 4
    config.data.color_jitter = 0.0  # compressed, low-light frames: no extra colour noise
    return config
