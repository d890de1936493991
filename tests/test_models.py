"""Tests of E, the motion networks, G and PECHead on the tiny config and real photos."""

import functools
import pathlib
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data
from skimage.transform import resize as sk_resize

# `configs/` is not an installed package; until pytest's `pythonpath` names the repository
# root, make it importable from here.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs.common import VARIANTS, get_config  # noqa: E402
from pechead_jax.models import generator as gen_lib
from pechead_jax.models import keypoints as kp_lib
from pechead_jax.models import layers
from pechead_jax.models import motion as motion_lib
from pechead_jax.models.pechead import PECHead

B = 2

# Test-size models run in milliseconds but compile for seconds; LLVM's optimisations cost
# about 40% of the compile time and buy nothing here.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def tiny_config(variant: str):
    config = get_config("tiny").model
    config.variant = variant
    return config


def init_key():
    # The rbg generator compiles parameter initialisation several times faster than threefry.
    return jax.random.key(0, impl="unsafe_rbg")


@pytest.fixture(scope="module")
def batch():
    """Two real photos (astronaut, coffee cup) as sources and plausible points/conditions."""
    m = get_config("tiny").model
    r = m.resolution
    photos = [data.astronaut(), data.coffee()]
    source = np.stack([sk_resize(p, (r, r), anti_aliasing=True) for p in photos]).astype("f4")
    rng = np.random.default_rng(0)
    c = m.pose_dim + m.expression_dim
    conds = rng.normal(scale=0.3, size=(3, B, c)).astype("f4")
    # A ring of landmarks inside the face area, moved a little from frame to frame.
    angles = np.linspace(0, 2 * np.pi, m.num_landmarks, endpoint=False)
    ring = np.stack([0.5 * np.cos(angles), 0.6 * np.sin(angles)], -1)
    landmarks = ring + rng.normal(scale=0.03, size=(3, B, m.num_landmarks, 2))
    return {
        "source": jnp.asarray(source),
        "source_cond": jnp.asarray(conds[0]),
        "driving_conds": jnp.asarray(np.swapaxes(conds[1:], 0, 1)),  # [B, 2, C]
        "source_landmarks": jnp.asarray(landmarks[0], jnp.float32),
        "driving_landmarks": jnp.asarray(np.swapaxes(landmarks[1:], 0, 1), jnp.float32),
    }


def frame_args(batch, t: int = 0):
    return (
        batch["source"],
        batch["source_cond"],
        batch["source_landmarks"],
        batch["driving_conds"][:, t],
        batch["driving_landmarks"][:, t],
    )


def test_make_condition():
    cond = kp_lib.make_condition(jnp.ones((2, 3, 6)), jnp.zeros((2, 3, 52)))
    assert cond.shape == (2, 3, 58)
    np.testing.assert_array_equal(cond[..., :6], 1.0)
    with pytest.raises(ValueError, match="pose must end in 6"):
        kp_lib.make_condition(jnp.ones((2, 5)), jnp.zeros((2, 52)))
    with pytest.raises(ValueError, match="leading axes"):
        kp_lib.make_condition(jnp.ones((2, 6)), jnp.zeros((3, 52)))


def test_sparse_motions_and_soft_argmax():
    source = jnp.array([[[0.2, -0.1]]])
    driving = jnp.array([[[0.0, 0.3]]])
    grids = motion_lib.sparse_motions(source, driving, 5, 5)
    assert grids.shape == (1, 2, 5, 5, 2)
    # At the driving point the backward grid points at the source point; the last is identity.
    np.testing.assert_allclose(grids[0, 0, 2, 2] + driving[0, 0], source[0, 0], atol=1e-6)
    np.testing.assert_allclose(grids[0, 1, 4, 0], (-1.0, 1.0))
    logits = jnp.full((1, 5, 5, 1), -1e3).at[0, 1, 3, 0].set(0.0)
    np.testing.assert_allclose(kp_lib.expected_coordinates(logits, 0.1)[0, 0], (0.5, -0.5))


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_shapes_and_gradients(variant, batch):
    m = tiny_config(variant)
    model = PECHead(m)
    args = frame_args(batch)
    params = fast_jit(model.init)(init_key(), *args)
    r, h = m.resolution, round(m.resolution * m.motion_scale)
    context = None
    if variant == "full":
        # A nonzero previous context and moved points, so the CAP parameters get gradients.
        shape = (B, r // 2**m.cap_level, r // 2**m.cap_level, m.cap_features)
        n = m.num_keypoints + int(m.head_motion)
        context = {
            "features": jax.random.normal(jax.random.key(3), shape),
            "points": {
                "kp": jax.random.uniform(jax.random.key(4), (B, n, 2)) - 0.5,
                "lmk": jnp.concatenate(
                    [batch["driving_landmarks"][:, 1], jnp.zeros((B, n - m.num_keypoints, 2))],
                    axis=1,
                ),
            },
        }
    target = batch["source"][::-1]

    @fast_jit
    def loss_and_grad(params):
        def loss_fn(params):
            out = model.apply(params, *args, context=context)
            loss = jnp.mean(jnp.abs(out["image"] - target))
            loss += sum(jnp.mean(jnp.abs(w - target)) for w in out["warped"].values())
            # E also feeds the keypoint losses; `lmk` uses E only through them.
            loss += jnp.mean(out["driving_keypoints"] ** 2)
            return loss, out

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    # Source = driving (same condition and landmarks): every flow is the identity grid and,
    # at initialisation, the output is the source (the blend starts on the warped source).
    same = (args[0], args[1], args[2], args[1], args[2])
    still = fast_jit(model.apply)(params, *same)
    for name, flow in still["flows"].items():
        np.testing.assert_allclose(
            flow, jnp.broadcast_to(layers.identity_grid(*flow.shape[1:3]), flow.shape),
            atol=1e-5, err_msg=name,
        )
    np.testing.assert_allclose(still["driving_keypoints"], still["source_keypoints"], atol=1e-5)
    assert float(jnp.abs(still["image"] - batch["source"]).max()) < 1e-3

    (loss, out), grads = loss_and_grad(params)
    assert np.isfinite(float(loss))
    assert out["image"].shape == (B, r, r, 3)
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0
    kp_shape = (B, m.num_keypoints, 2)
    assert out["source_keypoints"].shape == out["driving_keypoints"].shape == kp_shape
    # Source points come from a soft-argmax (inside the frame); re-posed ones may leave it.
    assert float(jnp.abs(out["source_keypoints"]).max()) <= 1.0
    names = {"direct": ["direct"], "kp": ["kp"], "lmk": ["lmk"]}.get(variant, ["kp", "lmk"])
    assert sorted(out["flows"]) == sorted(out["warped"]) == sorted(names)
    for name in names:
        assert out["flows"][name].shape == (B, h, h, 2)
        assert out["warped"][name].shape == (B, r, r, 3)
    assert [o.shape for o in out["occlusions"]] == [
        (B, r // 2**lv, r // 2**lv, 1) for lv in range(m.num_down_blocks + 1)
    ]
    assert ("context" in out) == (variant == "full")
    if variant == "full":
        assert out["context"]["features"].shape == context["features"].shape

    leaves = jax.tree_util.tree_leaves_with_path(grads)
    for path, g in leaves:
        assert np.all(np.isfinite(g)), f"non-finite gradient at {jax.tree_util.keystr(path)}"
    zero = [jax.tree_util.keystr(p) for p, g in leaves if not np.any(g)]
    # Zero-initialised layers starve what feeds them at initialisation (only): E's
    # expression MLP (its output layer starts at zero), CAP's gate (its injection starts at
    # zero); CAP's context output feeds only the next frame. Every other parameter must get
    # a gradient.
    allowed = ("expression_hidden", "context_out", "'gate'")
    assert all(any(a in z for a in allowed) for z in zero), zero
    assert len(leaves) - len(zero) >= 60


@pytest.fixture(scope="module")
def full_model(batch):
    model = PECHead(tiny_config("full"))
    params = fast_jit(model.init)(init_key(), *frame_args(batch))
    return model, params


def test_frame_call_compiles_once_and_context_matters(full_model, batch):
    model, params = full_model

    @fast_jit
    @chex.assert_max_traces(n=1)
    def frame(params, args, context):
        return model.apply(params, *args, context=context)

    m = model.config
    zero = model.apply(params, *frame_args(batch, 0), method=model.initial_context)
    first = frame(params, frame_args(batch, 0), zero)
    second = frame(params, frame_args(batch, 1), first["context"])
    again = frame(params, frame_args(batch, 1), zero | {"features": zero["features"] + 0})
    # At initialisation CAP's injection is zero: the context cannot change the frame yet, so
    # stage 2 starts exactly at the stage-1 model ...
    np.testing.assert_allclose(second["image"], again["image"], atol=1e-6)
    # ... and once the injection is nonzero (and the blend lets the decoder show) a
    # different context changes the frame.
    def trained(path, x):
        name = jax.tree_util.keystr(path)
        if "inject" in name:
            return x + 0.5
        return jnp.zeros_like(x) if "'blend'" in name and "bias" in name else x

    moved = jax.tree_util.tree_map_with_path(trained, params)
    second = frame(moved, frame_args(batch, 1), first["context"])
    again = frame(moved, frame_args(batch, 1), zero | {"features": zero["features"] + 0})
    assert float(jnp.abs(second["image"] - again["image"]).max()) > 1e-3
    second = frame(params, frame_args(batch, 1), first["context"])

    # bfloat16 compute with the same float32 parameters: close to float32, but not equal.
    config16 = tiny_config("full")
    config16.dtype = "bfloat16"
    low = fast_jit(PECHead(config16).apply)(params, *frame_args(batch, 0), context=zero)
    assert low["image"].dtype == jnp.float32
    diff = float(jnp.abs(low["image"] - first["image"]).max())
    mean = float(jnp.abs(low["image"] - first["image"]).mean())
    # (max: edges under slightly different bf16 flows; the mean stays small.)
    assert 0 < diff < 0.15 and mean < 0.01, (diff, mean)

    clip = fast_jit(
        lambda p, b: model.apply(
            p,
            *(
                b[k]
                for k in (
                    "source",
                    "source_cond",
                    "source_landmarks",
                    "driving_conds",
                    "driving_landmarks",
                )
            ),
            method=model.animate,
        )
    )(params, batch)
    assert clip["image"].shape == (B, 2, m.resolution, m.resolution, 3)
    assert clip["driving_keypoints"].shape == (B, 2, m.num_keypoints, 2)
    # The scan equals the frame call chained by hand: zero context first, then the carry.
    np.testing.assert_allclose(clip["image"][:, 0], first["image"], atol=1e-5)
    np.testing.assert_allclose(clip["image"][:, 1], second["image"], atol=1e-5)


def test_bad_inputs_are_named(full_model, batch):
    model, params = full_model
    args = list(frame_args(batch))
    args[2] = args[2][:, :10]
    with pytest.raises(ValueError, match="source_landmarks must have shape"):
        model.apply(params, *args)
    args = list(frame_args(batch))
    args[1] = args[1][:, :7]
    with pytest.raises(ValueError, match="source_cond"):
        model.apply(params, *args)
    bad = tiny_config("mmfa")
    bad.variant = "nope"
    with pytest.raises(ValueError, match="variant"):
        PECHead(bad).init(init_key(), *frame_args(batch))


def test_warp_source_padding(batch):
    # The source moved half its width (whole pixels) to the left: the right half of the
    # output samples beyond the image.
    source = batch["source"]
    r = source.shape[1]
    grid = layers.identity_grid(r, r) + jnp.array([2.0 * (r // 2) / (r - 1), 0.0])
    grid = jnp.broadcast_to(grid, (B, r, r, 2))
    border = gen_lib.warp_source(source, grid, "border")
    zeros = gen_lib.warp_source(source, grid, "zeros")
    right = slice(r // 2, None)
    edge = jnp.broadcast_to(source[:, :, -1:], border[:, :, right].shape)
    np.testing.assert_allclose(border[:, :, right], edge, atol=1e-6)
    assert float(jnp.abs(zeros[:, :, right]).max()) == 0.0
    # Inside the image both are the same sampling of the source.
    np.testing.assert_allclose(border[:, :, : r // 2], zeros[:, :, : r // 2], atol=1e-6)
    np.testing.assert_allclose(border[:, :, : r // 2], source[:, :, r // 2 : r], atol=1e-5)
    with pytest.raises(ValueError, match="source_padding='mirror'"):
        gen_lib.warp_source(source, grid, "mirror")
