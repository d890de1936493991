"""D: shapes per scale, stateless spectral normalisation, finite gradients of the hinge loss."""

import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ (as test_models)
from configs import common  # noqa: E402
from pechead_jax import losses
from pechead_jax.models import discriminator
from pechead_jax.models.discriminator import MultiScaleDiscriminator


def _config(spectral_norm: bool):
    config = common.get_config("tiny").model
    config.disc_spectral_norm = spectral_norm
    return config


@pytest.fixture(scope="module")
def images():
    return jax.random.uniform(jax.random.key(0), (2, 64, 64, 3))


@pytest.fixture(scope="module")
def variables(images):
    # The same parameter tree serves both settings (spectral norm only rescales kernels).
    return MultiScaleDiscriminator(_config(False)).init({"params": jax.random.key(1)}, images)


def test_shapes_per_scale(images, variables):
    assert set(variables) == {"params"}  # no state: apply needs no mutable collection
    config = _config(False)
    out = MultiScaleDiscriminator(config).apply(variables, images)
    assert len(out) == len(config.disc_scales) == 2
    for (logits, features), size in zip(out, (64, 32)):
        assert logits.shape == (2, size // 2, size // 2, 1) and logits.dtype == jnp.float32
        assert [f.shape for f in features] == [
            (2, size // 2, size // 2, 16), (2, size // 2, size // 2, 32)
        ]


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_finite_gradients(images, variables, spectral_norm):
    disc = MultiScaleDiscriminator(_config(spectral_norm))
    fake = images[::-1] * 0.5

    def d_loss(params):
        real = [x for x, _ in disc.apply({"params": params}, images)]
        fakes = [x for x, _ in disc.apply({"params": params}, fake)]
        return losses.hinge_d_loss(real, fakes)

    value, grads = jax.jit(jax.value_and_grad(d_loss))(variables["params"])
    assert np.isfinite(float(value))
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0


def test_spectral_norm_changes_the_output_and_is_deterministic(images, variables):
    plain = MultiScaleDiscriminator(_config(False)).apply(variables, images)
    disc = MultiScaleDiscriminator(_config(True))
    first = disc.apply(variables, images)
    again = jax.jit(disc.apply)(variables, images)
    np.testing.assert_allclose(first[0][0], again[0][0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain[0][0], first[0][0], atol=1e-4)


def test_spectral_normalize_brings_the_top_singular_value_to_one():
    rng = np.random.default_rng(0)
    # A kernel with a clear top singular value: exact after a few iterations.
    u, v = rng.standard_normal((4 * 4 * 8, 1)), rng.standard_normal((1, 16))
    dominant = (5.0 * u @ v / np.linalg.norm(u) / np.linalg.norm(v)
                + 0.1 * rng.standard_normal((128, 16))).reshape(4, 4, 8, 16).astype(np.float32)
    top = np.linalg.svd(np.asarray(discriminator.spectral_normalize(jnp.asarray(dominant)))
                        .reshape(-1, 16), compute_uv=False)[0]
    np.testing.assert_allclose(top, 1.0, rtol=1e-4)
    # Random kernels (flat spectrum: the hardest case) stay within a few percent.
    for shape in [(4, 4, 3, 16), (4, 4, 16, 32)]:
        kernel = nn.initializers.lecun_normal()(jax.random.key(2), shape)
        normalised = np.asarray(discriminator.spectral_normalize(kernel)).reshape(-1, shape[-1])
        assert 0.99 < np.linalg.svd(normalised, compute_uv=False)[0] < 1.1


def test_too_small_an_image_is_a_clear_error():
    config = _config(False)
    config.disc_num_blocks = 4
    with pytest.raises(ValueError, match="disc_num_blocks"):
        MultiScaleDiscriminator(config).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
