"""The one parser of experiment arguments shared by the dataset configs.

`configs/<dataset>.py:ARG` where ARG is a comma-separated list of tokens:
- `256` (default) or `512`: the resolution;
- `stage1` (default) or `stage2`: frame pairs with the `mmfa` variant, or clips with `full`
  (CAP) initialised from a stage-1 workdir (`init=PATH`, or `--config.train.init_from=PATH`);
- `variant=NAME`: a stage-1 ablation of the paper's Table 4 (`kp`, `lmk`, `direct`,
  `featcat`, `mmfa`); every variant trains from the same file by this one field.

Examples: `configs/vfhq.py`, `configs/vfhq.py:512`, `configs/vfhq.py:stage2,init=/ckpt/vfhq`,
`configs/voxceleb2.py:variant=kp`.
"""

import ml_collections

from configs import common


def parse_arg(arg: str | None) -> dict[str, str]:
    """`'512,stage2,init=/w'` -> {'resolution': '512', 'stage': '2', 'init': '/w'}."""
    out = {"resolution": "256", "stage": "1", "variant": "", "init": ""}
    for token in (arg or "").split(","):
        token = token.strip()
        if not token:
            continue
        if token in ("256", "512"):
            out["resolution"] = token
        elif token in ("stage1", "stage2"):
            out["stage"] = token[-1]
        elif "=" in token and token.split("=", 1)[0] in ("variant", "init"):
            key, value = token.split("=", 1)
            out[key] = value
        else:
            raise ValueError(
                f"config argument {arg!r}: unknown token {token!r}; expected 256, 512, stage1, "
                "stage2, variant=NAME or init=PATH (comma-separated)"
            )
    return out


def apply_stage(config: ml_collections.ConfigDict, stage: str, variant: str, init: str) -> None:
    """Stage 1: frame pairs, `variant` (default mmfa). Stage 2: clips, `full`, init_from."""
    if stage == "2":
        if variant and variant != "full":
            raise ValueError(f"stage2 trains the 'full' variant (CAP), not variant={variant!r}")
        config.model.variant = "full"
        config.data.mode = "video"
        config.train.stage = 2
        config.train.init_from = init
        config.loss.temporal = 1.0
        # A short stage: CAP is new, the rest starts from stage 1.
        config.train.num_steps = config.train.num_steps // 4
        config.train.warmup_steps = 500
        # Clips of T frames cost T times a pair: keep the frames per step about the same.
        config.data.batch_size = max(config.data.batch_size // config.data.clip_length, 8)
        return
    variant = variant or "mmfa"
    if variant not in common.VARIANTS or variant == "full":
        raise ValueError(
            f"variant={variant!r}: stage 1 trains one of {common.VARIANTS[:-1]} "
            "('full' is stage2)"
        )
    config.model.variant = variant
    config.data.mode = "image"
    config.train.stage = 1


def make(arg: str | None, root: str) -> ml_collections.ConfigDict:
    """`common.get_config` at the parsed resolution, the stage applied, `data.root` = `root`
    (`{resolution}` in it is filled in)."""
    parsed = parse_arg(arg)
    config = common.get_config("512" if parsed["resolution"] == "512" else None)
    config.data.root = root.format(resolution=parsed["resolution"])
    if parsed["resolution"] == "512":
        # 4x the pixels: half the batch, bf16 compute, a deeper pyramid keeps the bottleneck
        # at the same 64x64 as at 256 (the motion and keypoint nets run at the same size).
        config.model.dtype = "bfloat16"
        config.model.num_down_blocks = 3
        config.model.kp_scale = 0.125
        config.model.motion_scale = 0.125
        config.model.landmark_motion_scale = 0.25
        config.model.cap_level = 2
        config.data.batch_size = 16
        config.data.eval_batch_size = 8
    apply_stage(config, parsed["stage"], parsed["variant"], parsed["init"])
    return config
