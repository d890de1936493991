"""Train PECHead: `python -m pechead_jax.main --config configs/vfhq.py --workdir W`.

`--config file.py:arg` passes `arg` to the file's `get_config`; `--config.train.g_lr=1e-4`
overrides a field. On a TPU pod or a multi-host GPU job run the same command on every host
with `PECHEAD_DISTRIBUTED=1` (see launch/): `jax.distributed.initialize()` then finds the
coordinator from the environment.
"""

import logging
import os
import pathlib
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from pechead_jax import train

# Config files import their shared parts (`from configs import experiment`); `configs/` is a
# folder of the checkout, not an installed package, so make it importable from any cwd.
_REPO = pathlib.Path(__file__).resolve().parents[1]
if (_REPO / "configs").is_dir() and str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

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
    # Orbax reports every checkpoint phase at INFO through absl's logger; keep its warnings.
    logging.getLogger("absl").setLevel(logging.WARNING)
    if _multi_host():
        jax.distributed.initialize()
    logging.info(
        "process %d/%d, %d local / %d global devices (%s)",
        jax.process_index(), jax.process_count(), jax.local_device_count(),
        jax.device_count(), jax.devices()[0].platform,
    )
    try:
        summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, FileNotFoundError, train.NonFiniteError) as e:
        # A user's mistake (config, paths, a refused resume) or a diverged run: the message
        # names the field or file; the traceback would only bury it.
        raise SystemExit(f"pechead_jax.main: {type(e).__name__}: {e}") from None
    if summary["preempted"]:
        logging.warning("stopped by SIGTERM at step %d; rerun the same command to resume",
                        summary["step"])


if __name__ == "__main__":
    app.run(main)
