"""The AV-HuBERT forward split in two, so training can cache what a frozen encoder computes.

`video_tokens` runs the expensive part (3-D stem + ResNet + fusion projection) once per utterance;
`encode_tokens` runs the Transformer on those tokens, with or without prompt tokens. Together they equal
`AVHubertEncoder.forward(video, audio=None, ...)` (a test checks it), so the speaker stage can train the
prompts on cached tokens instead of running the ResNet at every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffv2s.nn.avhubert import AVHubertEncoder, EncoderOutput
from diffv2s.nn.speaker import SpeakerExtractor


def video_tokens(
    encoder: AVHubertEncoder, video: torch.Tensor, padding_mask: torch.Tensor | None
) -> torch.Tensor:
    """video: [B, 1, T, H, W] normalised ROIs; padding_mask: [B, T] True = pad | None -> tokens [B, T, D].

    The tokens are the fused features that enter the Transformer (audio part zero: visual-only input).
    """
    b, t = video.shape[0], video.shape[2]
    if padding_mask is None:
        padding_mask = torch.zeros(b, t, dtype=torch.bool, device=video.device)
    keep = (~padding_mask).to(video.dtype)
    f_video = encoder.feature_extractor_video(video * keep[:, None, :, None, None])
    f_audio = torch.zeros_like(f_video)
    return encoder.post_extract_proj(encoder.layer_norm(torch.cat([f_audio, f_video], dim=-1)))


def encode_tokens(
    encoder: AVHubertEncoder,
    tokens: torch.Tensor,
    padding_mask: torch.Tensor | None,
    prompts: torch.Tensor | None = None,
) -> EncoderOutput:
    """tokens: [B, T, D] from `video_tokens`; padding_mask: [B, T] True = pad; prompts: [B, P, D] | None.

    Returns EncoderOutput(features [B, T, D], prompt_out [B, P, D] | None).
    """
    if padding_mask is None:
        valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    else:
        valid = ~padding_mask
    features, prompt_out = encoder.encoder(tokens, valid, prompts)
    return EncoderOutput(features, prompt_out)


def speaker_from_tokens(
    speaker: SpeakerExtractor, tokens: torch.Tensor, padding_mask: torch.Tensor | None
) -> torch.Tensor:
    """s_v from cached tokens: [B, T, D] -> [B, E] unit vectors, equal to `speaker.embed_visual(video)`."""
    prompts = speaker.visual_prompts.expand(tokens.shape[0], -1, -1)
    out = encode_tokens(speaker.encoder, tokens, padding_mask, prompts)
    assert out.prompt_out is not None
    return F.normalize(speaker.proj(out.prompt_out.mean(dim=1)), dim=-1)


def audio_tokens(
    encoder: AVHubertEncoder, audio: torch.Tensor, padding_mask: torch.Tensor | None
) -> torch.Tensor:
    """audio: [B, T, 104] AV-HuBERT audio features -> tokens [B, T, D] (video part zero: audio-only input)."""
    if padding_mask is not None:
        audio = audio * (~padding_mask).to(audio.dtype)[..., None]
    f_audio = encoder.feature_extractor_audio(audio)
    f_video = torch.zeros_like(f_audio)
    return encoder.post_extract_proj(encoder.layer_norm(torch.cat([f_audio, f_video], dim=-1)))


def positioned_tokens(
    encoder: AVHubertEncoder, tokens: torch.Tensor, padding_mask: torch.Tensor | None
) -> torch.Tensor:
    """Tokens after the positional convolution, i.e. what prompt tokens sit next to: [B, T, D]."""
    x = tokens if padding_mask is None else tokens * (~padding_mask).to(tokens.dtype)[..., None]
    return x + encoder.encoder.pos_conv(x.transpose(1, 2)).transpose(1, 2)
