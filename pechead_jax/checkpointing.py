"""Checkpoints: orbax `CheckpointManager` (asynchronous, keep-N) holding the train state and
the Grain iterator state, plus the resolved config in `W/config.json` for resume checks.

Layout of a workdir `W`: `W/checkpoints/<step>/{state,data}`, `W/config.json`.
"""

import json
import os
import pathlib
from typing import Any

import grain
import ml_collections
import orbax.checkpoint as ocp

from pechead_jax import fileio

# Fields that may differ between a run and its resume: they change how long or how often
# things happen, never the shapes or the meaning of the saved state.
RESUMABLE_FIELDS = (
    "train.num_steps",
    "train.time_budget_minutes",
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.eval_every",
    "train.eval_batches",
    "train.max_nonfinite_in_a_row",
    "data.root",
    "data.workers",
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def config_to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as JSON (tuples become lists)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The resolved config a run saved in `W/config.json` (JSON lists back to tuples)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a training workdir (train writes it)")

    def tuples(x):
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        if isinstance(x, list):
            return tuple(tuples(v) for v in x)
        return x

    return ml_collections.ConfigDict(tuples(json.loads(path.read_text())))


def run_directory(path: str | os.PathLike) -> pathlib.Path:
    """A run's workdir from `W` or `W/checkpoints`."""
    path = pathlib.Path(path)
    return path.parent if path.name == "checkpoints" else path


def config_differences(saved: dict, current: dict) -> list[str]:
    """The config fields, other than `RESUMABLE_FIELDS`, whose values differ."""
    a, b = _flatten(saved), _flatten(json.loads(json.dumps(current, default=str)))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RESUMABLE_FIELDS:
            continue
        old, new = a.get(key, "<missing>"), b.get(key, "<missing>")
        if old != new:
            diffs.append(f"{key}: saved {old!r}, now {new!r}")
    return diffs


def check_and_save_config(
    workdir: pathlib.Path, config: ml_collections.ConfigDict, write: bool = True
) -> None:
    """Save `W/config.json` (if `write`); if a run already lives in `W`, refuse a config that
    changes it. Every process checks (so all stop together); only one should write.

    Raises a ValueError listing every differing field: a resumed run with a different model,
    loss or data layout would silently continue a different experiment.
    """
    path = workdir / "config.json"
    if path.exists() and any((workdir / "checkpoints").glob("[0-9]*")):
        diffs = config_differences(json.loads(path.read_text()), config.to_dict())
        if diffs:
            raise ValueError(
                f"workdir {workdir} holds a run with a different config; resume refused. "
                "Use a new --workdir, or restore these fields:\n  " + "\n  ".join(diffs)
            )
    if write:
        fileio.write_text(path, config_to_json(config))


def make_manager(
    workdir: pathlib.Path, keep: int, async_save: bool = True
) -> ocp.CheckpointManager:
    """An orbax manager for `W/checkpoints` keeping the last `keep` steps."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=options,
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
        },
    )


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any = None,
         force: bool = False) -> bool:
    """Start an (asynchronous) save of `state` and the iterator's position at `step`."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iterator: Any = None) -> Any:
    """Restore the state (shardings from `abstract_state`) and, in place, the iterator."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None and "data" in manager.item_metadata(step):
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def _read_only_manager(checkpoint_dir: str | os.PathLike) -> tuple[pathlib.Path, Any]:
    path = pathlib.Path(checkpoint_dir)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    manager = ocp.CheckpointManager(
        path.absolute(),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    )
    return path, manager


def saved_steps(checkpoint_dir: str | os.PathLike) -> list[int]:
    """The steps kept in a run's checkpoint dir (`W` or `W/checkpoints`), ascending."""
    _, manager = _read_only_manager(checkpoint_dir)
    steps = sorted(manager.all_steps())
    manager.close()
    return steps


def load_params(checkpoint_dir: str | os.PathLike, abstract_state: Any,
                step: int | None = None) -> Any:
    """Read the train state of a run's checkpoint dir (`W` or `W/checkpoints`), latest step."""
    path, manager = _read_only_manager(checkpoint_dir)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {path}")
    state = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )["state"]
    manager.close()
    return state
