"""Optimisation profiles: the min / opt / max input shapes a TensorRT engine is built for.

Both TensorRT paths use them: the native backend (`trt_backend`) and ONNX Runtime's TensorRT execution
provider (`ort_backend`, engine "onnxruntime-trt").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffv2s.config import ModelConfig
from diffv2s.engines.spec import NetworkSpec


@dataclass(frozen=True)
class ShapeLimits:
    """Shapes the optimisation profiles are built for. The pipeline's windows are 250 video frames; the
    vocoder sees a whole video (up to `VideoConfig.max_seconds`), so it gets its own batch cap (its
    activations at 60 s are large) and callers split bigger batches."""

    max_batch: int = 16
    opt_batch: int = 4
    max_video_frames: int = 256
    opt_video_frames: int = 125
    vocoder_max_batch: int = 4


def shape_profile(
    spec: NetworkSpec, cfg: ModelConfig, limits: ShapeLimits = ShapeLimits()
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """{input name: (min shape, opt shape, max shape)} of one network."""
    ratio = cfg.audio.mel_rate / cfg.video.fps
    vocoder = spec.name == "vocoder"
    max_mel = (
        math.ceil(cfg.video.max_seconds * cfg.audio.mel_rate) + 1
        if vocoder
        else math.ceil(limits.max_video_frames * ratio) + 1
    )
    axes = {
        "batch": (
            1,
            min(limits.opt_batch, limits.vocoder_max_batch if vocoder else limits.max_batch),
            limits.vocoder_max_batch if vocoder else limits.max_batch,
        ),
        "video_frames": (1, limits.opt_video_frames, limits.max_video_frames),
        "mel_frames": (1, round(limits.opt_video_frames * ratio), max_mel),
    }
    out = {}
    for t in spec.inputs:
        shapes = tuple(tuple(axes[d][k] if isinstance(d, str) else d for d in t.shape) for k in range(3))
        out[t.name] = (shapes[0], shapes[1], shapes[2])
    return out
