"""TalkingHead-1KH (about 500k tubes from 1080p talking-head videos).

PECHead at 256x256 (or 512x512), stage 1 (frame pairs) or stage 2 (clips with CAP).

Data (records, face model):
    python -m data_prep.build --recipe talkinghead1kh --input RAW \
        --output /data/talkinghead1kh-256 --workers 32
Stage 1:
    python -m pechead_jax.main --config configs/talkinghead1kh.py --workdir /ckpt/talkinghead1kh
Stage 2 (initialised from stage 1):
    python -m pechead_jax.main --config configs/talkinghead1kh.py:stage2,init=/ckpt/talkinghead1kh \
        --workdir /ckpt/talkinghead1kh-stage2
512x512: `configs/talkinghead1kh.py:512`
    (data built with `--resolution 512` in /data/talkinghead1kh-512).
Ablations (the paper's Table 4): `configs/talkinghead1kh.py:variant=kp` (kp, lmk, direct, featcat).
Another data folder: `--config.data.root=PATH`.

Sized for one host with 8 GPUs of 40-80 GB (A100/H100) or a TPU v4-16 / v5e-16 slice: global
batch 32 at 256 (4 per device), 16 in bf16 at 512; several hosts: see launch/.
Expected runtime (200,000 stage-1 steps, 50,000 stage-2 steps):
stage 1 about 8 hours, stage 2 about 2 hours on 8 A100s at 256 (an estimate, not a measurement);
docs/training.md derives it from the measured cost of a step (benchmarks/train_step.py).
"""

from configs import experiment

NUM_STEPS = 200_000


def get_config(arg: str | None = None):
    config = experiment.make(arg, root="/data/talkinghead1kh-{resolution}")
    config.train.num_steps = NUM_STEPS if config.train.stage == 1 else NUM_STEPS // 4
    config.train.eval_split = "test"  # the recipe maps the published val tubes here
    return config
