"""Tests of the warp, heatmaps, resizing and conv blocks in `pechead_jax.models.layers`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from skimage import data

from pechead_jax.models import layers

# Tiny blocks compile for longer than they run; skip LLVM's optimisations.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def reference_warp(image: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Plain bilinear sampling with zero padding; pixel centres at the [-1, 1] corners."""
    b, height, width, c = image.shape
    _, h, w, _ = grid.shape
    out = np.zeros((b, h, w, c), np.float64)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                x = (grid[n, i, j, 0] + 1) / 2 * (width - 1)
                y = (grid[n, i, j, 1] + 1) / 2 * (height - 1)
                x0, y0 = int(np.floor(x)), int(np.floor(y))
                for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                    if 0 <= xi < width and 0 <= yi < height:
                        weight = (1 - abs(x - xi)) * (1 - abs(y - yi))
                        out[n, i, j] += weight * image[n, yi, xi]
    return out


def test_warp_matches_reference_with_borders_and_outside_samples():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 7, 9, 3)).astype(np.float32)
    # Up to 1.4 reaches well outside the image; the edges get partial-zero samples.
    grid = rng.uniform(-1.4, 1.4, size=(2, 6, 5, 2)).astype(np.float32)
    grid[0, 0, 0] = (-1.0, -1.0)  # exactly the top-left pixel centre
    grid[0, 0, 1] = (1.0, 1.0)  # exactly the bottom-right pixel centre
    grid[0, 0, 2] = (1.0 + 1.0 / 8, 0.0)  # half a pixel beyond the right border
    grid[1, :2] = rng.uniform(1.35, 1.6, size=(2, 5, 2)) * rng.choice((-1, 1), size=(2, 5, 2))
    got = np.asarray(jax.jit(layers.warp)(image, grid))
    want = reference_warp(image.astype(np.float64), grid.astype(np.float64))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got[0, 0, 0], image[0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(got[0, 0, 1], image[0, -1, -1], atol=1e-6)
    np.testing.assert_allclose(got[0, 0, 2], 0.5 * image[0, 3, -1], atol=1e-6)
    # Some samples are fully outside (zero) and some are not: the test cannot pass by chance.
    outside = (np.abs(grid[..., 0]) > 1 + 2.0 / 8) | (np.abs(grid[..., 1]) > 1 + 2.0 / 6)
    assert outside.any() and np.all(got[outside] == 0)
    assert np.abs(got[~outside]).mean() > 0.1


def test_identity_grid_returns_the_image():
    image = data.astronaut()[::8, ::8].astype(np.float32) / 255.0  # 64x64 real photo
    image = np.stack([image, image[::-1]])
    grid = jnp.broadcast_to(layers.identity_grid(64, 64), (2, 64, 64, 2))
    # Exact up to one float32 ulp of the pixel coordinate (as in PyTorch).
    np.testing.assert_allclose(np.asarray(layers.warp(image, grid)), image, atol=1e-5)
    g = np.asarray(layers.identity_grid(3, 5))
    assert g.shape == (3, 5, 2)
    np.testing.assert_allclose(g[0, 0], (-1, -1))
    np.testing.assert_allclose(g[-1, -1], (1, 1))
    np.testing.assert_allclose(g[1, 2], (0, 0))


def test_warp_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        image = jnp.asarray(rng.normal(size=(2, 5, 6, 2)))
        grid = jnp.asarray(rng.uniform(-1.2, 1.2, size=(2, 4, 3, 2)))
        check_grads(layers.warp, (image, grid), order=1, modes=("rev",), eps=1e-6)
        # The gradient w.r.t. the grid is not zero (bilinear weights carry it).
        g = jax.grad(lambda gr: jnp.sum(layers.warp(image, gr) ** 2))(grid)
        assert float(jnp.abs(g).max()) > 0.1


def test_warp_rejects_bad_shapes():
    with pytest.raises(ValueError, match="grid must be"):
        layers.warp(jnp.zeros((2, 4, 4, 3)), jnp.zeros((1, 4, 4, 2)))
    with pytest.raises(ValueError, match="image must be"):
        layers.warp(jnp.zeros((4, 4, 3)), jnp.zeros((1, 4, 4, 2)))


def test_point_heatmaps_peak_at_points():
    points = jnp.array([[[-1.0, -1.0], [0.5, -0.25], [0.0, 1.0]]])  # on pixel centres of 9x9
    maps = np.asarray(layers.point_heatmaps(points, 9, 9, variance=0.01))
    assert maps.shape == (1, 9, 9, 3)
    for n, (x, y) in enumerate(np.asarray(points[0])):
        row, col = np.unravel_index(np.argmax(maps[0, :, :, n]), (9, 9))
        assert (col, row) == (round((x + 1) * 4), round((y + 1) * 4))
        np.testing.assert_allclose(maps[0, row, col, n], 1.0, atol=1e-6)
    # One pixel (0.25 units) away: exp(-0.0625 / 0.02).
    np.testing.assert_allclose(maps[0, 0, 1, 0], np.exp(-0.0625 / 0.02), rtol=1e-5)


def test_pyramid_shapes_and_antialiasing():
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
    image = jnp.asarray(np.broadcast_to(checker[None, :, :, None], (2, 64, 64, 3)))
    levels = layers.image_pyramid(image, (1.0, 0.5, 0.25, 0.125))
    assert [lv.shape for lv in levels] == [
        (2, 64, 64, 3),
        (2, 32, 32, 3),
        (2, 16, 16, 3),
        (2, 8, 8, 3),
    ]
    assert levels[0] is image
    for lv in levels[1:]:
        # A 1-pixel checkerboard averages out to 0.5; point sampling would give 0 or 1.
        np.testing.assert_allclose(np.asarray(lv), 0.5, atol=0.02)
    # A smooth real photo keeps its content (the mean is preserved).
    photo = jnp.asarray(data.astronaut()[None].astype(np.float32) / 255.0)
    small = layers.resize(photo, (64, 64))
    np.testing.assert_allclose(float(small.mean()), float(photo.mean()), atol=2e-3)


def test_hourglass_shapes_film_and_errors():
    hourglass = layers.Hourglass(block_expansion=8, max_features=16, num_blocks=3)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 5))
    cond = jax.random.normal(jax.random.key(1), (2, 4))
    params = fast_jit(hourglass.init)(jax.random.key(2, impl="unsafe_rbg"), x, cond)
    apply = fast_jit(hourglass.apply)
    y = apply(params, x, cond)
    assert y.shape == (2, 16, 16, 8 + 5)
    # FiLM starts as the identity; a nonzero FiLM kernel makes the condition matter.
    np.testing.assert_allclose(y, apply(params, x, 0 * cond), atol=1e-6)
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.5 if "Dense" in jax.tree_util.keystr(p) else v, params
    )
    assert float(jnp.abs(apply(params, x, cond) - apply(params, x, -cond)).max()) > 1e-2
    with pytest.raises(ValueError, match="divisible by 8"):
        hourglass.apply(params, x[:, :12], cond)


def test_resblock_and_blocks_shapes():
    x = jnp.ones((2, 8, 8, 16))
    for block, shape in (
        (layers.ResBlock(), (2, 8, 8, 16)),
        (layers.DownBlock(24), (2, 4, 4, 24)),
        (layers.UpBlock(4), (2, 16, 16, 4)),
    ):
        params = jax.eval_shape(block.init, jax.random.key(0), x)
        assert jax.eval_shape(block.apply, params, x).shape == shape


@pytest.mark.parametrize(
    "kernel_size,padding,out_channels",
    [((7, 7), "SAME", 3), ((3, 3), "SAME", 16), ((4, 2), "SAME", 5), ((3, 3), "VALID", 2),
     ((3, 3), ((2, 0), (1, 1)), 4), ((3, 3), "SAME", 17)],
)
def test_head_conv_matches_lax_value_and_gradients(kernel_size, padding, out_channels):
    """`layers.conv_general_dilated` (custom kernel gradient for narrow heads) is lax's conv."""
    kx, kk, kc = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (2, 11, 9, 6), jnp.float32)
    kernel = jax.random.normal(kk, (*kernel_size, 6, out_channels), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")

    def ours(x, k):
        return layers.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=dn)

    def reference(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=dn)

    y = ours(x, kernel)
    np.testing.assert_allclose(y, reference(x, kernel), rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(kc, y.shape, jnp.float32)
    got = jax.vjp(ours, x, kernel)[1](cot)
    want = jax.vjp(reference, x, kernel)[1](cot)
    for g, w, name in zip(got, want, ("input", "kernel")):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)


def test_head_conv_keeps_the_flax_parameter_tree():
    import flax.linen as nn

    x = jnp.ones((1, 8, 8, 4))
    plain = nn.Conv(3, (7, 7)).init(jax.random.key(0), x)
    head = nn.Conv(3, (7, 7), conv_general_dilated=layers.conv_general_dilated)
    params = head.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, plain)
    np.testing.assert_allclose(head.apply(params, x), nn.Conv(3, (7, 7)).apply(params, x),
                               rtol=1e-5, atol=1e-5)
