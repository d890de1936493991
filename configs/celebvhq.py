"""CelebV-HQ (35k clips of 15k identities; split hashed by source video).

PECHead at 256x256 (or 512x512), stage 1 (frame pairs) or stage 2 (clips with CAP).

Data (records, face model):
    python -m data_prep.build --recipe celebvhq --input RAW \
        --output /data/celebvhq-256 --workers 32
Stage 1:
    python -m pechead_jax.main --config configs/celebvhq.py --workdir /ckpt/celebvhq
Stage 2 (initialised from stage 1):
    python -m pechead_jax.main --config configs/celebvhq.py:stage2,init=/ckpt/celebvhq \
        --workdir /ckpt/celebvhq-stage2
512x512: `configs/celebvhq.py:512`
    (data built with `--resolution 512` in /data/celebvhq-512).
Ablations (the paper's Table 4): `configs/celebvhq.py:variant=kp` (kp, lmk, direct, featcat).
Another data folder: `--config.data.root=PATH`.

Sized for one host with 8 GPUs of 40-80 GB (A100/H100) or a TPU v4-16 / v5e-16 slice: global
batch 32 at 256 (4 per device), 16 in bf16 at 512; several hosts: see launch/.
Expected runtime (150,000 stage-1 steps, 37,500 stage-2 steps):
stage 1 about 6 hours, stage 2 about 1.5 hours on 8 A100s at 256 (an estimate, not a measurement);
docs/training.md derives it from the measured cost of a step (benchmarks/train_step.py).
"""

from configs import experiment

NUM_STEPS = 150_000


def get_config(arg: str | None = None):
    config = experiment.make(arg, root="/data/celebvhq-{resolution}")
    config.train.num_steps = NUM_STEPS if config.train.stage == 1 else NUM_STEPS // 4
    config.data.flip = True
    return config
