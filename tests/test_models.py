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
from pechead_jax.models import keypoints as kp_lib
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
        batch["driving_conds"][:, t],
        batch["source_landmarks"],
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
        context = {
            "features": jax.random.normal(jax.random.key(3), shape),
            "keypoints": jax.random.uniform(jax.random.key(4), (B, m.num_keypoints, 2)) - 0.5,
            "landmarks": batch["driving_landmarks"][:, 1],
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

    (loss, out), grads = loss_and_grad(params)
    assert np.isfinite(float(loss))
    assert out["image"].shape == (B, r, r, 3)
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0
    kp_shape = (B, m.num_keypoints, 2)
    assert out["source_keypoints"].shape == out["driving_keypoints"].shape == kp_shape
    assert float(jnp.abs(out["driving_keypoints"]).max()) <= 1.0
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
    # E's FiLM layers start at zero, so at initialisation (only) the condition embedding
    # they read gets no gradient; CAP's context output feeds only the next frame. Every
    # other parameter must get a gradient.
    assert all("ConditionEmbedding" in z or "context_out" in z for z in zero), zero
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
    r = m.resolution // 2**m.cap_level
    zero = {
        "features": jnp.zeros((B, r, r, m.cap_features)),
        "keypoints": model.apply(
            params, batch["source"], batch["driving_conds"][:, 0], method=model.keypoints
        ),
        "landmarks": batch["driving_landmarks"][:, 0],
    }
    first = frame(params, frame_args(batch, 0), zero)
    second = frame(params, frame_args(batch, 1), first["context"])
    again = frame(params, frame_args(batch, 1), zero | {"features": zero["features"] + 0})
    # A different context changes the frame (second vs. the same inputs with a zero context).
    assert float(jnp.abs(second["image"] - again["image"]).max()) > 1e-3

    # bfloat16 compute with the same float32 parameters: close to float32, but not equal.
    config16 = tiny_config("full")
    config16.dtype = "bfloat16"
    low = fast_jit(PECHead(config16).apply)(params, *frame_args(batch, 0), context=zero)
    assert low["image"].dtype == jnp.float32
    diff = float(jnp.abs(low["image"] - first["image"]).max())
    assert 0 < diff < 0.05, diff

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
    args[3] = args[3][:, :10]
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
