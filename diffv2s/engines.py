"""One protocol per exported network, so the pipeline does not care which backend runs it.

Backends: `torch` (reference, here), `onnxruntime` and `tensorrt` (in `diffv2s.engines_onnx` /
`model_export`). The sampler loop stays in Python and calls `denoiser` once per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from diffv2s.model import DiffV2S


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
    name: str
    encoder: EncoderEngine
    speaker: SpeakerEngine
    denoiser: DenoiserEngine
    vocoder: VocoderEngine
    # Speaker guidance needs d(speaker(x0))/d(x_t); only engines that can backpropagate provide it.
    speaker_from_mel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    details: dict[str, str] = field(default_factory=dict)


def torch_engines(model: DiffV2S, vocoder: VocoderEngine, device: torch.device) -> Engines:
    """The reference backend: the PyTorch modules themselves."""
    from diffv2s.nn.speaker import mel_to_audio_features

    model = model.to(device).eval()
    mel_rate = model.cfg.audio.mel_rate

    @torch.inference_mode()
    def encoder(video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        features, _ = model.encoder(video=video, audio=None, padding_mask=padding_mask)
        return features

    @torch.inference_mode()
    def speaker(video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return model.speaker.embed_visual(video, padding_mask)

    # No inference_mode here: speaker guidance differentiates through the denoiser (samplers run it
    # under no_grad and the guidance wrapper re-enables grad only where it needs it).
    def denoiser(x_t, t, visual, visual_mask, speaker, mask, drop_cond):  # type: ignore[no-untyped-def]
        return model.denoiser(x_t, t, visual, visual_mask, speaker, mask, drop_cond)

    def speaker_from_mel(mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """mel: [B, n_mels, T] (requires grad); mask: [B, T] True = valid -> [B, 256]."""
        feats = mel_to_audio_features(mel, mel_rate, mel_mask=mask)
        # Audio-feature frames (25 Hz) that fall past an item's last mel frame are padding.
        n = feats.shape[1]
        lengths = (mask.sum(dim=1).float() * n / max(mask.shape[1], 1)).ceil().long().clamp(min=1)
        pad = torch.arange(n, device=mel.device)[None, :] >= lengths[:, None]
        return model.speaker.embed_audio(feats, pad)

    return Engines(
        name="torch",
        encoder=encoder,
        speaker=speaker,
        denoiser=denoiser,
        vocoder=vocoder,
        speaker_from_mel=speaker_from_mel,
        details={"device": str(device)},
    )
