"""pechead-jax: PECHead (CVPR 2023) talking-head generation in JAX/Flax."""

__version__ = "0.1.0"
