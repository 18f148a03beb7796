"""The torch backend: the reference engines (the PyTorch modules themselves), and the torch parts every
exported backend keeps.

Speaker guidance needs d speaker(x0(x_t)) / d x_t, which an exported graph cannot give. `hybrid_engines`
therefore puts exported networks (ONNX Runtime sessions, TensorRT engines) beside the torch modules
(loaded anyway): a denoiser call whose x_t requires grad (only speaker guidance makes one) runs the
PyTorch denoiser, and `speaker_from_mel` is the PyTorch speaker extractor. Guided requests produce the
same mel as on the torch engine, at torch speed for the guided steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from diffv2s.engines.spec import Engines, VocoderEngine
from diffv2s.model import DiffV2S
from diffv2s.nn.speaker import mel_to_audio_features


def torch_engines(model: DiffV2S, vocoder: VocoderEngine, device: torch.device) -> Engines:
    """The reference backend: the PyTorch modules themselves, on `device`."""
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


def hybrid_engines(
    name: str,
    model: DiffV2S,
    vocoder: VocoderEngine,
    device: torch.device,
    nets: Mapping[str, Callable[..., torch.Tensor]],
    details: dict[str, str],
) -> Engines:
    """An `Engines` from exported-network callables (ONNX Runtime sessions or TensorRT engines), keeping
    the torch gradient path for speaker guidance (see the module docstring). A missing "vocoder"
    (Griffin-Lim) keeps the torch vocoder."""
    reference = torch_engines(model, vocoder, device)
    encoder_net, speaker_net, denoiser_net = nets["encoder"], nets["speaker"], nets["denoiser"]
    torch_denoiser = model.denoiser

    def encoder(video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return encoder_net(video, padding_mask)

    def speaker(video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return speaker_net(video, padding_mask)

    def denoiser(
        x_t: torch.Tensor,
        t: torch.Tensor,
        visual: torch.Tensor,
        visual_mask: torch.Tensor,
        speaker: torch.Tensor,
        mask: torch.Tensor,
        drop_cond: torch.Tensor,
    ) -> torch.Tensor:
        if torch.is_grad_enabled() and x_t.requires_grad:
            # Speaker guidance differentiates through this call: only the torch module can.
            return torch_denoiser(x_t, t, visual.to(x_t), visual_mask, speaker.to(x_t), mask, drop_cond)
        return denoiser_net(x_t, t, visual, visual_mask, speaker, mask, drop_cond)

    voc: VocoderEngine = vocoder
    if "vocoder" in nets:
        vocoder_net = nets["vocoder"]

        def voc(mel: torch.Tensor) -> torch.Tensor:
            return vocoder_net(mel)

    details = dict(details)
    details.setdefault("vocoder", "exported" if "vocoder" in nets else f"torch ({model.cfg.vocoder.kind})")
    details["speaker_guidance"] = "torch (denoiser + speaker extractor, for the gradient)"
    return Engines(
        name=name,
        encoder=encoder,
        speaker=speaker,
        denoiser=denoiser,
        vocoder=voc,
        speaker_from_mel=reference.speaker_from_mel,
        details=details,
    )
