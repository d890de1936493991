"""Where metric weights live, and how a result names the network and weights behind it.

Weights that ship in installed packages are located with `importlib` (never imported for their
side effects); converted files go to a user cache directory, never into git.
"""

import functools
import hashlib
import importlib.util
import os
import pathlib

CACHE_ENV = "PECHEAD_CACHE"


def cache_dir() -> pathlib.Path:
    """`$PECHEAD_CACHE` if set, else `~/.cache/pechead_jax/` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path("~/.cache/pechead_jax").expanduser()


def package_file(package: str, relative: str, pip_hint: str) -> pathlib.Path:
    """Path of a data file shipped inside an installed package, without importing it.

    Raises FileNotFoundError naming the package and how to install it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; it carries {relative}. Install: {pip_hint}"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed package {package!r}")
    return path


@functools.lru_cache(maxsize=32)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    del mtime_ns, size  # part of the cache key only: a rewritten file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (memoised per path, size and modification time)."""
    stat = os.stat(path)
    return _sha256(str(path), stat.st_mtime_ns, stat.st_size)


def provenance(network: str, *paths: str | os.PathLike, **extra: str) -> dict[str, str]:
    """The record every metric result carries: network name, weight files and their hashes."""
    record = {"network": network}
    for i, path in enumerate(paths):
        suffix = "" if len(paths) == 1 else f"_{i}"
        record[f"weights{suffix}"] = str(path)
        record[f"sha256{suffix}"] = sha256(path)
    record.update(extra)
    return record
