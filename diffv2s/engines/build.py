"""`build_engines(name, ...)`: the engines of any backend by name, the one entry the pipeline and the
export tools start an engine through."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from diffv2s.checkpoints.store import Checkpoint
from diffv2s.engines.ort_backend import build_ort_engines, ort_cpu_vocoder
from diffv2s.engines.spec import (
    ENGINE_NAMES,
    TENSORRT_ENGINES,
    Engines,
    VocoderEngine,
    resolve_vocoder_engine,
)
from diffv2s.engines.torch_backend import torch_engines
from diffv2s.engines.trt_backend import build_tensorrt_engines
from diffv2s.errors import CheckpointError
from diffv2s.model import DiffV2S


def build_engines(
    engine: str,
    model: DiffV2S,
    vocoder: VocoderEngine,
    device: torch.device,
    engine_dir: Path | None = None,
    ckpt: Checkpoint | None = None,
    threads: int | None = None,
    vocoder_engine: str | None = None,
) -> Engines:
    """Engines named `engine` (one of `ENGINE_NAMES`) for a loaded model and vocoder.

    "torch" runs the modules themselves; every other engine runs the files exported from `ckpt` into
    `engine_dir` (checked against it at start) and keeps the torch modules for speaker guidance and
    Griffin-Lim. threads: ONNX Runtime intra-op threads (default: torch's thread count).
    vocoder_engine: one of `VOCODER_ENGINES`, or None for the default of `resolve_vocoder_engine` (ONNX
    Runtime for the torch engine on a CPU). `vocoder` is the loaded torch vocoder either way.
    Raises CheckpointError (missing or mismatching files, unknown name) or InferenceEngineUnavailable.
    """
    try:
        which = resolve_vocoder_engine(vocoder_engine, engine, device.type, model.cfg)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    engines = _build(engine, model, vocoder, device, engine_dir, ckpt, threads)
    if which == "torch":
        engines = replace(engines, vocoder=vocoder, details={**engines.details, "vocoder": "torch"})
    elif which == "onnxruntime-cpu":
        generator = getattr(vocoder, "generator", None)
        if not isinstance(generator, torch.nn.Module):
            raise CheckpointError("vocoder engine 'onnxruntime-cpu' needs the HiFi-GAN generator")
        net = ort_cpu_vocoder(generator, model.cfg, threads)

        def ort_vocoder(mel: torch.Tensor) -> torch.Tensor:
            return net(mel)

        details = {**engines.details, "vocoder": "onnxruntime-cpu (float32, exported at load)"}
        engines = replace(engines, vocoder=ort_vocoder, details=details)
    return engines


def _build(
    engine: str,
    model: DiffV2S,
    vocoder: VocoderEngine,
    device: torch.device,
    engine_dir: Path | None,
    ckpt: Checkpoint | None,
    threads: int | None,
) -> Engines:
    if engine == "torch":
        return torch_engines(model, vocoder, device)
    if engine not in ENGINE_NAMES:
        raise CheckpointError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINE_NAMES)}")
    if ckpt is None:
        raise CheckpointError(f"engine {engine!r} needs the checkpoint its files were exported from")
    if engine in TENSORRT_ENGINES:
        return build_tensorrt_engines(model, vocoder, device, engine_dir, ckpt, fp16=engine == "tensorrt")
    return build_ort_engines(engine, model, vocoder, device, engine_dir, ckpt, threads)
