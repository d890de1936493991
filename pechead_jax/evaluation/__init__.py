"""Evaluation parts: the protocols as cases (`protocols`) and the tables (`report`); the run
and the CLI are `pechead_jax.evaluate`."""
