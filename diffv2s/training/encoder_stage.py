"""Stage A: train the AV-HuBERT visual encoder from pixels, supervised by the utterance's own audio.

Choice: *supervised* frame-level prediction of the log-mel, not AV-HuBERT's masked prediction of audio
clusters. AV-HuBERT's self-supervision needs several k-means/re-clustering iterations over hundreds of
hours to converge; here the recipe has about 40 minutes of two CPU cores for this stage and every clip
comes with its aligned audio, so the most direct signal is used: a linear head on each encoder frame
predicts the 4 log-mel frames at 100 Hz that the video frame covers (targets normalised per band, L1
loss). The targets carry both what is said and how the voice sounds, so the frozen features later serve
the denoiser (content) and the prompt-tuned speaker extractor (identity). Like AV-HuBERT's modality
dropout, every step also runs the audio-only path (the same targets from `mel_to_audio_features` of the
mel) at half weight, which trains the audio front end that the speaker extractor's `embed_audio` and
speaker guidance use. Augmentation as in AV-HuBERT: random horizontal flip and a random shift of up to
4 pixels (its 96 -> 88 random crop); clips are random crops of equal length, so batch norm never sees
padding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffv2s.model import DiffV2S
from diffv2s.nn.speaker import mel_to_audio_features
from diffv2s.training.batches import crop_start, draw
from diffv2s.training.cache import CacheSet

TARGET_RATE = 100.0  # mel frames per second the head predicts (4 per 25 fps video frame)


def mel_at_rate(mel: torch.Tensor, n_out: int) -> torch.Tensor:
    """mel: [T_mel, C] -> [n_out, C] by linear interpolation (frame centres kept aligned)."""
    return F.interpolate(mel.T[None], size=n_out, mode="linear", align_corners=False)[0].T


class EncoderStage:
    name = "encoder"

    def __init__(
        self,
        model: DiffV2S,
        train: CacheSet,
        val: CacheSet | None,
        mel_mean: np.ndarray,
        mel_std: np.ndarray,
        *,
        batch_clips: int = 8,
        max_frames: int = 100,
        audio_weight: float = 0.5,
        max_shift: int = 4,
        weight_decay: float = 0.01,
        max_val: int = 48,
        seed: int = 0,
    ) -> None:
        self.encoder = model.encoder
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        cfg = model.cfg
        self.fps = cfg.video.fps
        self.mel_rate = cfg.audio.mel_rate
        self.per_frame = int(round(TARGET_RATE / self.fps))
        self.n_mels = cfg.audio.n_mels
        self.head = nn.Linear(cfg.encoder.embed_dim, self.per_frame * self.n_mels)
        self.train_set, self.val_set = train, val
        self.mean = torch.as_tensor(mel_mean, dtype=torch.float32)
        self.std = torch.as_tensor(mel_std, dtype=torch.float32)
        self.batch_clips, self.max_frames = batch_clips, max_frames
        self.audio_weight, self.max_shift = audio_weight, max_shift
        self.max_val, self.seed = max_val, seed
        params = [p for p in self.encoder.parameters()] + list(self.head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98), weight_decay=weight_decay)

    # ------------------------------------------------------------------------------------------ data
    def _targets(self, data: CacheSet, i: int) -> torch.Tensor:
        """Raw log-mel at 100 Hz for utterance i: [T * 4, n_mels]."""
        n = int(data.n_frames[i])
        return mel_at_rate(torch.from_numpy(data.mel(i)), n * self.per_frame)

    def _augment(self, clip: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """clip: [T, H, W] -> flipped (p = 0.5) and shifted by up to max_shift pixels (edge replicated)."""
        if torch.rand((), generator=g) < 0.5:
            clip = clip.flip(-1)
        s = self.max_shift
        if s > 0:
            dy, dx = (int(v) for v in torch.randint(-s, s + 1, (2,), generator=g))
            padded = F.pad(clip[None], (s, s, s, s), mode="replicate")[0]
            h, w = clip.shape[-2:]
            clip = padded[:, s + dy : s + dy + h, s + dx : s + dx + w]
        return clip

    def _batch(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """-> video [B, 1, L, 88, 88], raw mel targets [B, L * 4, n_mels] (equal-length random crops)."""
        idx = draw(g, len(self.train_set), self.batch_clips)
        length = int(min(self.max_frames, *(int(self.train_set.n_frames[i]) for i in idx)))
        clips, targets = [], []
        for i in idx:
            v0 = crop_start(g, int(self.train_set.n_frames[i]), length)
            roi = torch.from_numpy(self.train_set.roi(i)[v0 : v0 + length])
            clips.append(self._augment(roi, g))
            k = self.per_frame
            targets.append(self._targets(self.train_set, i)[v0 * k : (v0 + length) * k])
        return torch.stack(clips)[:, None], torch.stack(targets)

    # ------------------------------------------------------------------------------------- training
    def _loss(
        self, features: torch.Tensor, raw: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """features: [B, L, D]; raw targets: [B, 4L, C]; valid: [B, L] -> masked L1 on normalised mel."""
        b, n = features.shape[:2]
        pred = self.head(features).reshape(b, n * self.per_frame, self.n_mels)
        err = (pred - (raw - self.mean) / self.std).abs()
        if valid is None:
            return err.mean()
        w = valid.repeat_interleave(self.per_frame, dim=1)[..., None].to(err.dtype)
        return (err * w).sum() / (w.sum() * self.n_mels).clamp(min=1.0)

    def _audio_input(self, raw: torch.Tensor, n_frames: int, valid: torch.Tensor | None) -> torch.Tensor:
        """raw: [B, 4L, C] 100 Hz log-mel -> AV-HuBERT audio features [B, L, 104]."""
        mask = None if valid is None else valid.repeat_interleave(self.per_frame, dim=1)
        return mel_to_audio_features(
            raw.transpose(1, 2), TARGET_RATE, n_frames=n_frames, mel_mask=mask, video_fps=self.fps
        )

    def train_step(self, step: int, lr: float) -> dict[str, float]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        video, raw = self._batch(g)
        self.encoder.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_v = self._loss(self.encoder(video=video, audio=None).features, raw)
        audio = self._audio_input(raw, video.shape[2], None)
        loss_a = self._loss(self.encoder(video=None, audio=audio).features, raw)
        loss = loss_v + self.audio_weight * loss_a
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], 5.0)
        self.optimizer.step()
        return {"video_l1": loss_v.item(), "audio_l1": loss_a.item()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Masked L1 on the validation clips (whole utterances): video-only, audio-only, and the L1 of
        always predicting the mean mel (the level a model that ignores its input reaches)."""
        data = self.val_set
        if data is None:
            return {}
        self.encoder.eval()
        idx = list(range(min(len(data), self.max_val)))
        sums = {"val_video_l1": 0.0, "val_audio_l1": 0.0, "val_mean_l1": 0.0}
        for start in range(0, len(idx), 8):
            chunk = idx[start : start + 8]
            t_max = max(int(data.n_frames[i]) for i in chunk)
            video = torch.zeros(len(chunk), 1, t_max, *data.frames(chunk[0]).shape[1:])
            raw = torch.zeros(len(chunk), t_max * self.per_frame, self.n_mels)
            valid = torch.zeros(len(chunk), t_max, dtype=torch.bool)
            for b, i in enumerate(chunk):
                n = int(data.n_frames[i])
                video[b, 0, :n] = torch.from_numpy(data.roi(i))
                raw[b, : n * self.per_frame] = self._targets(data, i)
                valid[b, :n] = True
            pad = ~valid
            w = len(chunk)
            sums["val_video_l1"] += w * float(self._loss(self.encoder(video, None, pad).features, raw, valid))
            audio = self._audio_input(raw, t_max, valid)
            sums["val_audio_l1"] += w * float(self._loss(self.encoder(None, audio, pad).features, raw, valid))
            wk = valid.repeat_interleave(self.per_frame, dim=1)[..., None].float()
            base = ((raw - self.mean) / self.std).abs() * wk
            sums["val_mean_l1"] += w * float(base.sum() / (wk.sum() * self.n_mels))
        return {k: v / len(idx) for k, v in sums.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
