"""Train PECHead: `python -m pechead_jax.main --config configs/vfhq.py --workdir W`.

`--config file.py:arg` passes `arg` to the file's `get_config`; `--config.train.g_lr=1e-4`
overrides a field. On a TPU pod or a multi-host GPU job run the same command on every host
with `PECHEAD_DISTRIBUTED=1` (see launch/): `jax.distributed.initialize()` then finds the
coordinator from the environment.
"""

import logging
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from pechead_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard and config.json.")
flags.mark_flags_as_required(["config", "workdir"])


def _multi_host() -> bool:
    """True when launched as one process of several (pod workers, SLURM tasks)."""
    if os.environ.get("PECHEAD_DISTRIBUTED", "") in ("1", "true"):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _multi_host():
        jax.distributed.initialize()
    logging.info(
        "process %d/%d, %d local / %d global devices (%s)",
        jax.process_index(), jax.process_count(), jax.local_device_count(),
        jax.device_count(), jax.devices()[0].platform,
    )
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
