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

Where the corpus has phone timings (the synthetic corpus: the speech engine's own), a second linear head
classifies the phone sounding in each of those 4 sub-frames (cross-entropy, weight `phone_weight`): a
discriminative target beside the regression, as the multi-task lip-to-speech recipe of Kim, Hong and Ro
(ICASSP 2023) adds text supervision. The L1 on the mel alone lets look-alike phones (b/p/m, d/t/z/n)
share one blurred prediction; the classifier keeps them apart where the pixels allow it. A corpus
without timings (LRS3) trains with the mel targets only.

A fine-tune (`--init-from`) starts the phone head fresh on a trained encoder: for its first
`frozen_steps` steps only the two heads learn (encoder frozen, at `head_lr`), so that an untrained head's
gradients do not pull the warm encoder away from what it knew (seen as holdout val L1 rising 0.02-0.03 in
the first hundred steps of earlier fine-tunes, and some 400 steps to win it back).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffv2s.errors import InputError
from diffv2s.model import DiffV2S
from diffv2s.nn.speaker import mel_to_audio_features
from lab.training.batches import crop_start, draw
from lab.training.cache import NO_PHONE, PHONE_CLASSES, CacheSet

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
        phone_weight: float = 0.2,
        max_shift: int = 4,
        weight_decay: float = 0.01,
        max_val: int = 48,
        seed: int = 0,
        frozen_steps: int = 0,
        head_lr: float = 1e-3,
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
        self.n_phones = len(PHONE_CLASSES)
        self.phone_head = nn.Linear(cfg.encoder.embed_dim, self.per_frame * self.n_phones)
        # No phone loss when the training set carries no timings (its labels would all be ignored).
        self.phone_weight = phone_weight if train.has_phones else 0.0
        self.train_set, self.val_set = train, val
        self.mean = torch.as_tensor(mel_mean, dtype=torch.float32)
        self.std = torch.as_tensor(mel_std, dtype=torch.float32)
        self.batch_clips, self.max_frames = batch_clips, max_frames
        self.audio_weight, self.max_shift = audio_weight, max_shift
        self.max_val, self.seed = max_val, seed
        self.frozen_steps, self.head_lr = frozen_steps, head_lr
        heads = [*self.head.parameters(), *self.phone_head.parameters()]
        groups = [{"params": list(self.encoder.parameters())}, {"params": heads}]
        self.optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.98), weight_decay=weight_decay)

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

    def _labels(self, data: CacheSet, i: int) -> torch.Tensor:
        """Phone class per 100 Hz sub-frame of utterance i: int64 [T * 4] (NO_PHONE where unknown)."""
        return torch.from_numpy(data.phone_labels(i, TARGET_RATE))

    def _batch(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> video [B, 1, L, 88, 88], raw mel targets [B, L * 4, n_mels], phone labels [B, L * 4]
        (equal-length random crops)."""
        idx = draw(g, len(self.train_set), self.batch_clips)
        length = int(min(self.max_frames, *(int(self.train_set.n_frames[i]) for i in idx)))
        clips, targets, labels = [], [], []
        k = self.per_frame
        for i in idx:
            v0 = crop_start(g, int(self.train_set.n_frames[i]), length)
            roi = torch.from_numpy(self.train_set.roi(i)[v0 : v0 + length])
            clips.append(self._augment(roi, g))
            targets.append(self._targets(self.train_set, i)[v0 * k : (v0 + length) * k])
            labels.append(self._labels(self.train_set, i)[v0 * k : (v0 + length) * k])
        return torch.stack(clips)[:, None], torch.stack(targets), torch.stack(labels)

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

    def _phone_loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """features: [B, L, D]; labels: [B, 4L] (NO_PHONE ignored) -> (mean cross-entropy over the
        labelled sub-frames (0 when there are none), correctly classified ones, labelled ones)."""
        b, n = features.shape[:2]
        logits = self.phone_head(features).reshape(b * n * self.per_frame, self.n_phones)
        flat = labels.reshape(-1)
        known = flat != NO_PHONE
        if not bool(known.any()):
            return logits.sum() * 0.0, 0, 0
        logits, flat = logits[known], flat[known]
        hits = int((logits.argmax(-1) == flat).sum())
        return F.cross_entropy(logits, flat), hits, len(flat)

    def _audio_input(self, raw: torch.Tensor, n_frames: int, valid: torch.Tensor | None) -> torch.Tensor:
        """raw: [B, 4L, C] 100 Hz log-mel -> AV-HuBERT audio features [B, L, 104]."""
        mask = None if valid is None else valid.repeat_interleave(self.per_frame, dim=1)
        return mel_to_audio_features(
            raw.transpose(1, 2), TARGET_RATE, n_frames=n_frames, mel_mask=mask, video_fps=self.fps
        )

    def train_step(self, step: int, lr: float) -> dict[str, float]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        video, raw, labels = self._batch(g)
        frozen = step < self.frozen_steps
        encoder_group, head_group = self.optimizer.param_groups
        encoder_group["lr"] = 0.0 if frozen else lr
        head_group["lr"] = self.head_lr if frozen else lr
        # Frozen: eval mode (batch-norm statistics stay too) and no graph through the encoder.
        self.encoder.train(not frozen)
        audio = self._audio_input(raw, video.shape[2], None)
        with torch.set_grad_enabled(not frozen):
            feats_v = self.encoder(video=video, audio=None).features
            feats_a = self.encoder(video=None, audio=audio).features
        loss_v = self._loss(feats_v, raw)
        loss_a = self._loss(feats_a, raw)
        loss = loss_v + self.audio_weight * loss_a
        logs = {"video_l1": loss_v.item(), "audio_l1": loss_a.item()}
        if self.phone_weight > 0:
            ce_v, hits, labelled = self._phone_loss(feats_v, labels)
            ce_a = self._phone_loss(feats_a, labels)[0]
            loss = loss + self.phone_weight * (ce_v + self.audio_weight * ce_a)
            acc = hits / labelled if labelled else float("nan")
            logs.update({"video_phone_ce": ce_v.item(), "video_phone_acc": acc})
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 5.0)
        self.optimizer.step()
        return logs

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
        hits = labelled = 0
        for start in range(0, len(idx), 8):
            chunk = idx[start : start + 8]
            t_max = max(int(data.n_frames[i]) for i in chunk)
            video = torch.zeros(len(chunk), 1, t_max, *data.frames(chunk[0]).shape[1:])
            raw = torch.zeros(len(chunk), t_max * self.per_frame, self.n_mels)
            labels = torch.full((len(chunk), t_max * self.per_frame), NO_PHONE, dtype=torch.int64)
            valid = torch.zeros(len(chunk), t_max, dtype=torch.bool)
            for b, i in enumerate(chunk):
                n = int(data.n_frames[i])
                video[b, 0, :n] = torch.from_numpy(data.roi(i))
                raw[b, : n * self.per_frame] = self._targets(data, i)
                labels[b, : n * self.per_frame] = self._labels(data, i)
                valid[b, :n] = True
            pad = ~valid
            w = len(chunk)
            feats = self.encoder(video, None, pad).features
            sums["val_video_l1"] += w * float(self._loss(feats, raw, valid))
            _, chunk_hits, chunk_labelled = self._phone_loss(feats, labels)
            hits, labelled = hits + chunk_hits, labelled + chunk_labelled
            audio = self._audio_input(raw, t_max, valid)
            sums["val_audio_l1"] += w * float(self._loss(self.encoder(None, audio, pad).features, raw, valid))
            wk = valid.repeat_interleave(self.per_frame, dim=1)[..., None].float()
            base = ((raw - self.mean) / self.std).abs() * wk
            sums["val_mean_l1"] += w * float(base.sum() / (wk.sum() * self.n_mels))
        out = {k: v / len(idx) for k, v in sums.items()}
        if labelled:
            out["val_phone_acc"] = hits / labelled
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.state_dict(),
            "head": self.head.state_dict(),
            "phone_head": self.phone_head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_groups = len(state["optimizer"]["param_groups"])
        if saved_groups != len(self.optimizer.param_groups):
            raise InputError(
                f"this run folder's stage A state has {saved_groups} optimizer parameter group(s), this version "
                f"trains with {len(self.optimizer.param_groups)} (encoder, heads): it was saved by an older "
                "version and cannot be resumed. Start a new --out folder (with --init-from to continue from "
                "a checkpoint this run exported)."
            )
        self.encoder.load_state_dict(state["encoder"])
        self.head.load_state_dict(state["head"])
        self.phone_head.load_state_dict(state["phone_head"])
        self.optimizer.load_state_dict(state["optimizer"])
