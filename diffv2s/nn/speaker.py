"""Prompt-tuned speaker extractor on the frozen AV-HuBERT encoder (DiffV2S, Sec. 3.2).

Learnable prompt tokens (one set for video, one for audio) are prepended to the encoder's token sequence;
their outputs are mean-pooled, projected to 256-d and L2-normalised. Only the prompts and the projection
train; gradients still flow through the frozen encoder to its inputs, which speaker guidance needs
(d s(x0) / d x0 through `mel_to_audio_features` and `embed_audio`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffv2s.config import SpeakerConfig
from diffv2s.nn.avhubert import AVHubertEncoder

# AV-HuBERT audio input: python_speech_features.logfbank at 16 kHz (25 ms window, 10 ms hop, 26 filters,
# HTK mel scale 0..8000 Hz), 4 frames stacked -> 104-d at 25 Hz, then layer norm per frame.
FBANK_BANDS = 26
FBANK_RATE = 100.0
FBANK_WINDOW_S = 0.025
FBANK_FMAX = 8000.0
STACK = 4


class SpeakerExtractor(nn.Module):
    """s_v = embed_visual(video), s_a = embed_audio(audio features); both [B, cfg.embed_dim], unit norm.

    The encoder is registered as a submodule (so `.to()` moves it) but frozen: its parameters never require
    grad and `train()` keeps it in eval mode (BatchNorm statistics stay fixed).
    """

    def __init__(self, encoder: AVHubertEncoder, cfg: SpeakerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        d = encoder.embed_dim
        self.visual_prompts = nn.Parameter(torch.randn(cfg.n_prompts, d) * 0.02)
        self.audio_prompts = nn.Parameter(torch.randn(cfg.n_prompts, d) * 0.02)
        self.proj = nn.Linear(d, cfg.embed_dim)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> SpeakerExtractor:
        super().train(mode)
        self.encoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The prompts and the projection; nothing of the encoder."""
        return [self.visual_prompts, self.audio_prompts, *self.proj.parameters()]

    def _embed(self, prompt_out: torch.Tensor | None) -> torch.Tensor:
        assert prompt_out is not None
        return F.normalize(self.proj(prompt_out.mean(dim=1)), dim=-1)

    def embed_visual(self, video: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """video: [B, 1, T, H, W]; padding_mask: [B, T] True = padding -> s_v: [B, embed_dim], unit norm."""
        prompts = self.visual_prompts.expand(video.shape[0], -1, -1)
        out = self.encoder(video=video, audio=None, padding_mask=padding_mask, prompts=prompts)
        return self._embed(out.prompt_out)

    def embed_audio(
        self, audio_feats: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """audio_feats: [B, T, 104] (see `mel_to_audio_features`); padding_mask: [B, T] True = padding
        -> s_a: [B, embed_dim], unit norm. Differentiable w.r.t. `audio_feats`."""
        prompts = self.audio_prompts.expand(audio_feats.shape[0], -1, -1)
        out = self.encoder(video=None, audio=audio_feats, padding_mask=padding_mask, prompts=prompts)
        return self._embed(out.prompt_out)


# ----------------------------------------------------------------------------------------------------------
# Log-mel (vocoder features) -> AV-HuBERT audio features.


def _slaney_hz_to_mel(f: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    lin = f / f_sp
    log = min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log, lin)


def _slaney_mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=8)
def fbank_from_mel_matrix(n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """[26, n_mels] map from our mel-band powers to AV-HuBERT's 26 HTK filterbank energies.

    Our log-mel is log of a Slaney-normalised mel filterbank on the *magnitude* spectrum (librosa /
    HiFi-GAN), so exp(2 * logmel_i) estimates the power density at band centre c_i, up to one constant for
    all bands (area normalisation makes every band's weight sum equal). The power spectrum is rebuilt by
    linear interpolation between band centres and integrated under each of the 26 triangular filters.
    Constant factors do not matter: the per-frame layer norm removes them after the log.
    """
    grid = np.linspace(0.0, FBANK_FMAX, 8001)
    mel_pts = np.linspace(_slaney_hz_to_mel(np.array(fmin)), _slaney_hz_to_mel(np.array(fmax)), n_mels + 2)
    centres = _slaney_mel_to_hz(mel_pts)[1:-1]
    # hat[i, g]: weight of band i in the piecewise-linear spectrum at grid[g] (constant beyond the ends).
    hat = np.stack([np.interp(grid, centres, np.eye(n_mels)[i]) for i in range(n_mels)])
    htk = np.linspace(0.0, 2595.0 * np.log10(1.0 + FBANK_FMAX / 700.0), FBANK_BANDS + 2)
    edges = 700.0 * (10.0 ** (htk / 2595.0) - 1.0)
    tri = np.stack(
        [np.interp(grid, edges[b : b + 3], [0.0, 1.0, 0.0], left=0.0, right=0.0) for b in range(FBANK_BANDS)]
    )
    return (tri @ hat.T) * (grid[1] - grid[0])


def mel_to_audio_features(
    mel: torch.Tensor,
    mel_rate: float,
    n_frames: int | None = None,
    mel_mask: torch.Tensor | None = None,
    fmin: float = 0.0,
    fmax: float = 8000.0,
    video_fps: float = 25.0,
) -> torch.Tensor:
    """Differentiable log-mel -> AV-HuBERT audio input, so the speaker extractor can embed generated mels.

    mel: [B, n_mels, T_mel] natural-log magnitude mel at `mel_rate` Hz (bands fmin..fmax, Slaney scale);
    n_frames: output frames T_v at `video_fps` (default round(T_mel * video_fps / mel_rate));
    mel_mask: [B, T_mel] bool True = valid, optional: time interpolation never reads past an item's valid
    length, so an item's features do not depend on how it was padded.
    Returns [B, T_v, 104]: 26 log filterbank energies at 100 Hz, 4 stacked, layer-normed per frame.
    """
    b, n_mels, t_mel = mel.shape
    if n_frames is None:
        n_frames = max(1, round(t_mel * video_fps / mel_rate))
    steps = int(round(FBANK_RATE / video_fps)) * n_frames
    dev = mel.device
    matrix = torch.as_tensor(
        fbank_from_mel_matrix(n_mels, float(fmin), float(fmax)), dtype=mel.dtype, device=dev
    )
    power = torch.exp(2.0 * mel)
    log_fb = torch.log(torch.einsum("fm,bmt->bft", matrix, power) + 1e-10)  # [B, 26, T_mel]
    # fbank frame k covers [k / 100, k / 100 + 25 ms]; mel frame j is centred at (j + 0.5) / mel_rate.
    centre_s = torch.arange(steps, device=dev, dtype=mel.dtype) / FBANK_RATE + FBANK_WINDOW_S / 2
    src = (centre_s * mel_rate - 0.5)[None, :].expand(b, -1)
    if mel_mask is None:
        last = torch.full((b, 1), t_mel - 1, device=dev, dtype=mel.dtype)
    else:
        last = (mel_mask.sum(dim=1, keepdim=True) - 1).clamp(min=0).to(mel.dtype)
    src = torch.minimum(src.clamp(min=0.0), last)
    i0 = src.floor()
    w = (src - i0)[:, None, :]
    i1 = torch.minimum(i0 + 1, last).long()
    i0 = i0.long()
    idx0 = i0[:, None, :].expand(-1, FBANK_BANDS, -1)
    idx1 = i1[:, None, :].expand(-1, FBANK_BANDS, -1)
    frames = log_fb.gather(2, idx0) * (1 - w) + log_fb.gather(2, idx1) * w  # [B, 26, steps]
    stacked = frames.transpose(1, 2).reshape(b, n_frames, STACK * FBANK_BANDS)
    return F.layer_norm(stacked, (STACK * FBANK_BANDS,))


# ----------------------------------------------------------------------------------------------------------
# Contrastive training loss.


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE with a[i] <-> b[i] as positives and the other b[j] of the batch as negatives.

    a, b: [B, E], unit norm -> scalar loss (cross-entropy over cosine similarities / temperature).
    """
    logits = a @ b.transpose(0, 1) / temperature
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def speaker_loss(
    s_v: torch.Tensor, s_a: torch.Tensor, s_g: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """DiffV2S speaker loss: InfoNCE over (s_v, s_G), (s_a, s_G), (s_v, s_a), (s_a, s_v).

    s_v: [B, E] from video, s_a: [B, E] from audio, s_g: [B, E] target (GE2E) embeddings -> scalar.
    """
    return (
        info_nce(s_v, s_g, temperature)
        + info_nce(s_a, s_g, temperature)
        + info_nce(s_v, s_a, temperature)
        + info_nce(s_a, s_v, temperature)
    )
