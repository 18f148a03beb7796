"""What every engine backend agrees on: engine names, the four networks' interfaces, the call protocol.

The leaf of `diffv2s.engines`: it imports no backend and no runtime (torch only for type checking), so
settings, command lines and exporters can name engines and networks without loading one.

Networks (one exported file each, see `diffv2s.engines.files`):

    encoder   video [B, 1, Tv, 88, 88], padding_mask [B, Tv] bool -> features [B, Tv, D]
    speaker   video [B, 1, Tv, 88, 88], padding_mask [B, Tv] bool -> speaker [B, 256]
    denoiser  one denoiser call (x_t, t, visual, visual_mask, speaker, mask, drop_cond) -> x0_hat
    vocoder   mel [B, n_mels, T] -> wav [B, T * hop]   (HiFi-GAN only; Griffin-Lim stays in torch)
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from diffv2s.config import ModelConfig

if TYPE_CHECKING:
    import torch

NETWORKS = ("encoder", "speaker", "denoiser", "vocoder")

# ONNX Runtime engines and their execution providers, first choice first.
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
ORT_ENGINES: dict[str, tuple[str, ...]] = {
    "onnxruntime-cpu": (CPU,),
    "onnxruntime-cuda": (CUDA, CPU),
    "onnxruntime-trt": (TRT, CUDA, CPU),
    "onnxruntime-cpu-int8": (CPU,),
}
# Engines that run the int8 denoiser file; every other network stays float32.
INT8_ENGINES = frozenset({"onnxruntime-cpu-int8"})
TENSORRT_ENGINES = ("tensorrt", "tensorrt-fp32")  # native TensorRT: fp16, fp32
# "onnxruntime" is CUDA on a CUDA device, else the CPU.
ENGINE_NAMES = ("torch", "onnxruntime", *ORT_ENGINES, *TENSORRT_ENGINES)
# Who runs the HiFi-GAN vocoder, whatever the engine: its torch module, or ONNX Runtime on the CPU (the
# module exported in memory at load, float32). On a 2-core CPU ONNX Runtime runs it 1.3-1.7x faster than
# torch (bench/bench_synthesize.py) for the same waveform up to ~4e-5; see `resolve_vocoder_engine`.
VOCODER_ENGINES = ("torch", "onnxruntime-cpu")


def resolve_engine(engine: str | None, device_type: str) -> str:
    """The engine a process runs: `engine` when given, else "onnxruntime-cpu" on a CPU with onnxruntime
    installed (without a folder of exported files its networks are traced in memory at load) and "torch"
    otherwise. Same scores to 4 decimals as torch (bench/quality_levers.py); on 2 CPU threads as fast as
    torch on a quiet machine and a little faster on a busy one, where torch's threads suffer more
    (bench/bench_synthesize.py)."""
    if engine is not None:
        return engine
    if device_type == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
        return "onnxruntime-cpu"
    return "torch"


def resolve_vocoder_engine(
    vocoder_engine: str | None, engine: str, device_type: str, cfg: ModelConfig
) -> str:
    """The vocoder engine a process runs: `vocoder_engine` when given, else "onnxruntime-cpu" for the
    "torch" engine on a CPU with the HiFi-GAN vocoder and onnxruntime installed, else "engine" (the vocoder of `engine` itself:
    the exported file of an ONNX Runtime / TensorRT engine, the torch module of the torch engine or of
    Griffin-Lim). Raises ValueError for a name outside `VOCODER_ENGINES` or a combination that cannot run.
    """
    if vocoder_engine is None:
        cpu_hifigan = engine == "torch" and device_type == "cpu" and cfg.vocoder.kind == "hifigan"
        if cpu_hifigan and importlib.util.find_spec("onnxruntime") is not None:
            return "onnxruntime-cpu"
        return "engine"
    if vocoder_engine not in VOCODER_ENGINES:
        raise ValueError(
            f"unknown vocoder engine {vocoder_engine!r}; choose one of {', '.join(VOCODER_ENGINES)}"
        )
    if vocoder_engine == "onnxruntime-cpu" and cfg.vocoder.kind != "hifigan":
        raise ValueError(f"vocoder engine 'onnxruntime-cpu' runs HiFi-GAN only, not {cfg.vocoder.kind!r}")
    if vocoder_engine == "onnxruntime-cpu" and device_type != "cpu":
        raise ValueError(f"vocoder engine 'onnxruntime-cpu' needs the model on the CPU, not {device_type!r}")
    return vocoder_engine


# ---------------------------------------------------------------------------------------------- protocol
class EncoderEngine(Protocol):
    def __call__(self, video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """video: [B, 1, T, 88, 88] normalised ROI; padding_mask: [B, T] True = pad -> f_v [B, T, D]."""
        ...


class SpeakerEngine(Protocol):
    def __call__(self, video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """video: [B, 1, T, 88, 88]; padding_mask: [B, T] True = pad -> s_v [B, 256] unit vectors."""
        ...


class DenoiserEngine(Protocol):
    def __call__(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        visual: torch.Tensor,
        visual_mask: torch.Tensor,
        speaker: torch.Tensor,
        mask: torch.Tensor,
        drop_cond: torch.Tensor,
    ) -> torch.Tensor:
        """x_t: [B, n_mels, T]; t: [B]; visual: [B, Tv, D]; visual_mask: [B, Tv] True = valid;
        speaker: [B, 256]; mask: [B, T] True = valid; drop_cond: [B] bool -> x0_hat [B, n_mels, T]."""
        ...


class VocoderEngine(Protocol):
    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: [B, n_mels, T] log-mel -> waveform [B, T * hop]."""
        ...


@dataclass
class Engines:
    """One backend's four networks behind the protocol; what the sampling assembly and the pipeline run."""

    name: str
    encoder: EncoderEngine
    speaker: SpeakerEngine
    denoiser: DenoiserEngine
    vocoder: VocoderEngine
    # Speaker guidance needs d(speaker(x0))/d(x_t); only engines that can backpropagate provide it.
    speaker_from_mel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    details: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- interface
@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. shape: fixed sizes as ints, dynamic axes by name."""

    name: str
    dtype: str  # "float32" | "bool"
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor name: {axis index: axis name}} for every named (dynamic) axis, as torch.onnx wants it."""
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
        }

    def axes_json(self) -> str:
        return json.dumps({t.name: list(t.shape) for t in (*self.inputs, *self.outputs)})


def network_specs(cfg: ModelConfig) -> dict[str, NetworkSpec]:
    """The interface of each network for a model config (axis names: batch, video_frames, mel_frames,
    samples)."""
    roi, d, s, m = cfg.video.roi_size, cfg.encoder.embed_dim, cfg.speaker.embed_dim, cfg.audio.n_mels
    video = (
        TensorSpec("video", "float32", ("batch", 1, "video_frames", roi, roi)),
        TensorSpec("padding_mask", "bool", ("batch", "video_frames")),
    )
    return {
        "encoder": NetworkSpec(
            "encoder", video, (TensorSpec("features", "float32", ("batch", "video_frames", d)),)
        ),
        "speaker": NetworkSpec("speaker", video, (TensorSpec("speaker", "float32", ("batch", s)),)),
        "denoiser": NetworkSpec(
            "denoiser",
            (
                TensorSpec("x_t", "float32", ("batch", m, "mel_frames")),
                TensorSpec("t", "float32", ("batch",)),
                TensorSpec("visual", "float32", ("batch", "video_frames", d)),
                TensorSpec("visual_mask", "bool", ("batch", "video_frames")),
                TensorSpec("speaker", "float32", ("batch", s)),
                TensorSpec("mask", "bool", ("batch", "mel_frames")),
                TensorSpec("drop_cond", "bool", ("batch",)),
            ),
            (TensorSpec("x0_hat", "float32", ("batch", m, "mel_frames")),),
        ),
        "vocoder": NetworkSpec(
            "vocoder",
            (TensorSpec("mel", "float32", ("batch", m, "mel_frames")),),
            (TensorSpec("wav", "float32", ("batch", "samples")),),
        ),
    }
