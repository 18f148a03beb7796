"""The trainable DiffV2S model: frozen AV-HuBERT encoder + prompt-tuned speaker extractor + denoiser.

The vocoder is not part of it: it has its own official weights (see `diffv2s.nn.hifigan`).
"""

from __future__ import annotations

import torch
from torch import nn

from diffv2s.config import ModelConfig
from diffv2s.nn.avhubert import AVHubertEncoder
from diffv2s.nn.denoiser import Denoiser
from diffv2s.nn.speaker import SpeakerExtractor


class DiffV2S(nn.Module):
    """encoder: video -> f_v; speaker: video -> s_v; denoiser: (x_t, t, f_v, s_v) -> x0."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = AVHubertEncoder(cfg.encoder)
        self.speaker = SpeakerExtractor(self.encoder, cfg.speaker)
        self.denoiser = Denoiser(
            cfg.denoiser,
            n_mels=cfg.audio.n_mels,
            visual_dim=cfg.encoder.embed_dim,
            speaker_dim=cfg.speaker.embed_dim,
            frame_ratio=cfg.audio.mel_rate / cfg.video.fps,
        )
        for p in self.encoder.parameters():
            p.requires_grad_(False)


def build_initial_model(cfg: ModelConfig, seed: int = 0) -> DiffV2S:
    """A deterministically initialised model (same seed => same weights on any machine)."""
    devnull = torch.random.fork_rng(devices=[])
    with devnull:
        torch.manual_seed(seed)
        model = DiffV2S(cfg)
    return model.eval()
