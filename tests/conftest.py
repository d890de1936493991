"""Test set-up: 8 simulated CPU devices and parsed absl flags (Grain workers need them)."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


import jax  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402


@pytest.fixture(scope="module")
def fast_compilation(tmp_path_factory):
    """For modules that train: identical programs (the same config in several runs, the
    Animator in evaluate and animate) compile once per module through a persistent cache,
    and the rbg generator compiles parameter initialisation several times faster than
    threefry. Use with `pytestmark = pytest.mark.usefixtures("fast_compilation")`."""
    settings = {
        "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
        "jax_default_prng_impl": "unsafe_rbg",
    }
    old = {n: getattr(jax.config, n) for n in settings}
    for n, v in settings.items():
        jax.config.update(n, v)
    yield
    for n, v in old.items():
        jax.config.update(n, v)
    compilation_cache.reset_cache()  # later modules start without this module's cache
