"""DiffV2S denoiser: a Transformer over mel frames that predicts x0 from x_t, conditioned on visual
features (resampled to the mel frame rate) and the speaker embedding.

Every operation acts per item (conditioning resampled with each item's own valid length, key-padding mask
in attention, positions counted from each item's first frame), so an item's output does not depend on
padding or on the other items of its batch. The forward has no Python control flow on tensor values:
it traces to ONNX with dynamic batch and time axes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffv2s.config import AudioConfig, DenoiserConfig, VideoConfig
from diffv2s.nn.layers import TransformerLayer, attention_mask, sinusoidal_embedding

DEFAULT_FRAME_RATIO = AudioConfig().mel_rate / VideoConfig().fps


def resample_to_frames(
    visual: torch.Tensor, visual_mask: torch.Tensor, n_frames: int, frame_ratio: float
) -> torch.Tensor:
    """Linear interpolation of per-video-frame features onto mel frames at a fixed rate.

    visual: [B, Tv, Dv]; visual_mask: [B, Tv] bool True = valid; n_frames: T (mel frames).
    Mel frame j reads video position (j + 0.5) / frame_ratio - 0.5, clamped to the item's valid range.
    Returns [B, T, Dv].
    """
    b, _, dv = visual.shape
    j = torch.arange(n_frames, device=visual.device, dtype=torch.float32)
    src = ((j + 0.5) / frame_ratio - 0.5)[None, :].expand(b, -1)
    last = (visual_mask.sum(dim=1, keepdim=True) - 1).clamp(min=0).to(torch.float32)
    src = torch.minimum(src.clamp(min=0.0), last)
    i0 = src.floor()
    w = (src - i0)[..., None].to(visual.dtype)
    i1 = torch.minimum(i0 + 1, last).long()
    i0 = i0.long()
    v0 = visual.gather(1, i0[..., None].expand(-1, -1, dv))
    v1 = visual.gather(1, i1[..., None].expand(-1, -1, dv))
    return v0 * (1 - w) + v1 * w


class Denoiser(nn.Module):
    """x0-prediction Transformer. `paper` preset: 8 layers x 512 wide x 4 heads.

    Conditioning: [resampled visual features, speaker embedding] -> linear -> added to the projected x_t,
    with sinusoidal frame positions. The timestep goes through a sinusoid + MLP and is added at the input
    of every layer (one linear per layer). `drop_cond` swaps an item's visual features and speaker
    embedding for learned null vectors (classifier-free guidance).

    With `cfg.prior_subframes` = r > 0 a visual prior mu (as Grad-TTS's encoder output) is added: a linear
    head reads each video frame's features and writes r log-mel sub-frames (r x fps, 100 Hz for r = 4, so
    the mouth's movement within a video frame is not lost to interpolation), resampled to the mel frames.
    mu enters the Transformer beside x_t and the output is mu + a correction. Training initialises the
    head from the visual encoder stage's own mel head, so the denoiser starts from the estimate the
    encoder already makes instead of having to relearn it from interpolated features.
    """

    def __init__(
        self,
        cfg: DenoiserConfig,
        n_mels: int,
        visual_dim: int,
        speaker_dim: int = 256,
        frame_ratio: float = DEFAULT_FRAME_RATIO,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_mels = n_mels
        self.frame_ratio = float(frame_ratio)
        w = cfg.width
        self.prior_subframes = int(cfg.prior_subframes)
        self.prior = (
            nn.Linear(visual_dim, self.prior_subframes * n_mels) if self.prior_subframes > 0 else None
        )
        self.in_proj = nn.Linear(n_mels * (2 if self.prior is not None else 1), w)
        self.cond_proj = nn.Linear(visual_dim + speaker_dim, w)
        self.null_visual = nn.Parameter(torch.zeros(visual_dim))
        self.null_speaker = nn.Parameter(torch.zeros(speaker_dim))
        self.time_mlp = nn.Sequential(nn.Linear(w, 4 * w), nn.SiLU(), nn.Linear(4 * w, w))
        self.time_proj = nn.ModuleList(nn.Linear(w, w) for _ in range(cfg.layers))
        self.layers = nn.ModuleList(
            TransformerLayer(w, cfg.ffn_mult * w, cfg.heads, cfg.dropout, layer_norm_first=True)
            for _ in range(cfg.layers)
        )
        self.norm_out = nn.LayerNorm(w)
        self.out_proj = nn.Linear(w, n_mels)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        visual: torch.Tensor,
        visual_mask: torch.Tensor,
        speaker: torch.Tensor,
        mask: torch.Tensor,
        drop_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_t: [B, n_mels, T]; t: [B] float timestep (0..T-1, fractional allowed);
        visual: [B, Tv, Dv]; visual_mask: [B, Tv] bool True = valid; speaker: [B, S];
        mask: [B, T] bool True = valid; drop_cond: [B] bool (True = unconditional) | None.
        Returns x0_hat: [B, n_mels, T], zero at padded frames.
        """
        n = x_t.shape[2]
        spk = speaker
        if drop_cond is not None:
            drop = drop_cond.to(torch.bool)
            visual = torch.where(drop[:, None, None], self.null_visual.to(visual.dtype), visual)
            spk = torch.where(drop[:, None], self.null_speaker.to(spk.dtype), spk)
        vis = resample_to_frames(visual, visual_mask, n, self.frame_ratio)  # [B, T, Dv]
        cond = torch.cat([vis, spk[:, None, :].expand(-1, vis.shape[1], -1)], dim=-1)

        x_in = x_t.transpose(1, 2)
        mu = None
        if self.prior is not None:
            mu = self.prior_mel(visual, visual_mask, n).to(x_t.dtype)  # [B, T, n_mels]
            x_in = torch.cat([x_in, mu], dim=-1)

        w = self.cfg.width
        positions = torch.arange(n, device=x_t.device, dtype=torch.float32)
        pos_emb = sinusoidal_embedding(positions, w).to(x_t.dtype)
        h = self.drop(self.in_proj(x_in) + self.cond_proj(cond.to(x_t.dtype)) + pos_emb)
        t_emb = F.silu(self.time_mlp(sinusoidal_embedding(t, w).to(x_t.dtype)))  # [B, W]
        attn = attention_mask(mask)
        for time_proj, layer in zip(self.time_proj, self.layers, strict=True):
            h = layer(h + time_proj(t_emb)[:, None, :], attn)
        out = self.out_proj(self.norm_out(h))
        if mu is not None:
            out = out + mu
        out = out * mask[..., None].to(h.dtype)
        return out.transpose(1, 2)

    def prior_mel(self, visual: torch.Tensor, visual_mask: torch.Tensor, n_frames: int) -> torch.Tensor:
        """The visual prior mu in the diffusion's data space: visual [B, Tv, Dv] (already swapped for the
        null vector where the condition is dropped), visual_mask [B, Tv] -> [B, n_frames, n_mels]."""
        if self.prior is None:
            raise RuntimeError("this denoiser has no visual prior (prior_subframes = 0)")
        b = visual.shape[0]
        r = self.prior_subframes
        sub = self.prior(visual).reshape(b, -1, self.n_mels)  # [B, Tv * r, n_mels]
        sub_mask = visual_mask[:, :, None].expand(-1, -1, r).reshape(b, -1)
        return resample_to_frames(sub, sub_mask, n_frames, self.frame_ratio / r)
