"""Stage B: the prompt-tuned speaker extractor (DiffV2S Sec. 3.2) on the frozen stage-A encoder.

Only the visual/audio prompts and the projection train. The loss is the paper's `speaker_loss` (InfoNCE
over (s_v, s_G), (s_a, s_G), (s_v, s_a), (s_a, s_v), with s_G the resemblyzer GE2E embedding of the clip's
audio) plus `align_weight` x (2 - cos(s_v, s_G) - cos(s_a, s_G)). Why the extra term: with a handful of
training speakers InfoNCE is satisfied by any rotation of the GE2E space that keeps speakers apart. On
the 7-speaker corpus, InfoNCE alone raised speaker identification from 0.91 to 0.98 while the validation
cos(s_v, s_G) fell from 0.82 (after `initialise`) to 0.39, which would put s_v outside the space that s_G
and s_a live in (the ablations swap them in, and speaker guidance compares them).
Each batch holds one clip per speaker (InfoNCE's negatives are the other items). The video side runs the
Transformer on cached tokens (`frontend.speaker_from_tokens`), so no step pays for the ResNet.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffv2s.model import DiffV2S
from diffv2s.nn.speaker import mel_to_audio_features, speaker_loss
from lab.training.batches import crop_start, draw, mel_span, pad_time, speaker_batch
from lab.training.features import FeatureSet
from lab.training.frontend import audio_tokens, encode_tokens, positioned_tokens, speaker_from_tokens


class SpeakerStage:
    name = "speaker"

    def __init__(
        self,
        model: DiffV2S,
        train: FeatureSet,
        val: FeatureSet | None,
        *,
        batch_size: int = 32,
        max_frames: int = 150,
        temperature: float = 0.1,
        align_weight: float = 4.0,
        weight_decay: float = 0.0,
        max_val: int = 128,
        seed: int = 0,
        device: torch.device | None = None,
    ) -> None:
        self.device = device or torch.device("cpu")
        self.speaker = model.speaker.to(self.device)
        self.mel_rate = model.cfg.audio.mel_rate
        self.fps = model.cfg.video.fps
        self.ratio = self.mel_rate / self.fps
        self.train_set, self.val_set = train, val
        self.batch_size, self.max_frames = batch_size, max_frames
        self.temperature, self.max_val, self.seed = temperature, max_val, seed
        self.align_weight = align_weight
        self.optimizer = torch.optim.AdamW(
            self.speaker.trainable_parameters(), lr=1e-3, weight_decay=weight_decay
        )

    def _inputs(
        self, data: FeatureSet, idx: list[int], g: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> cached video tokens [B, T, D], valid [B, T], audio features [B, T, 104], s_G [B, 256]
        for the utterances `idx` (random crops of at most max_frames when g is given)."""
        tokens, mels = [], []
        for i in idx:
            n = int(data.data.n_frames[i])
            length = min(n, self.max_frames)
            v0 = crop_start(g, n, length) if g is not None else 0
            full_mel = data.data.mel(i)
            m0, m1 = mel_span(v0, v0 + length, self.ratio, len(full_mel))
            tokens.append(torch.from_numpy(data.tokens(i)[v0 : v0 + length]))
            mels.append(torch.from_numpy(full_mel[m0:m1]))
        tok, valid = pad_time(tokens)
        mel, mel_valid = pad_time(mels)
        audio = mel_to_audio_features(
            mel.transpose(1, 2), self.mel_rate, n_frames=tok.shape[1], mel_mask=mel_valid, video_fps=self.fps
        )
        s_g = torch.from_numpy(np.stack([data.data.ge2e(i) for i in idx]))
        on = self.device
        return tok.to(on), valid.to(on), audio.to(on), s_g.to(on)

    def _embed(
        self, data: FeatureSet, idx: list[int], g: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> s_v, s_a, s_G: [B, 256] for the utterances `idx`."""
        tok, valid, audio, s_g = self._inputs(data, idx, g)
        s_v = speaker_from_tokens(self.speaker, tok, ~valid)
        s_a = self.speaker.embed_audio(audio, ~valid)
        return s_v, s_a, s_g

    @torch.no_grad()
    def initialise(self, max_items: int = 256, chunk: int = 32) -> None:
        """Start prompt tuning from a sensible point (only the trainable parts change).

        Random prompts of norm ~0.3 next to tokens of norm ~15 mostly attend to themselves, so their
        outputs hardly differ between clips and InfoNCE starts from a flat landscape. The prompts start as
        the mean positioned token of their modality (plus a little noise, so they differ), and the
        projection as the ridge regression from the pooled prompt outputs to the GE2E targets.
        InfoNCE then trains both as usual.
        """
        enc = self.speaker.encoder
        g = torch.Generator().manual_seed(self.seed)
        idx = draw(g, len(self.train_set), min(len(self.train_set), max_items))
        sums = {
            "v": torch.zeros(enc.embed_dim, device=self.device),
            "a": torch.zeros(enc.embed_dim, device=self.device),
        }
        count = 0.0
        batches = [idx[k : k + chunk] for k in range(0, len(idx), chunk)]
        for part in batches:
            tok, valid, audio, _ = self._inputs(self.train_set, part, None)
            w = valid[..., None].float()
            sums["v"] += (positioned_tokens(enc, tok, ~valid) * w).sum((0, 1))
            sums["a"] += (positioned_tokens(enc, audio_tokens(enc, audio, ~valid), ~valid) * w).sum((0, 1))
            count += float(w.sum())
        for name, prompts in (("v", self.speaker.visual_prompts), ("a", self.speaker.audio_prompts)):
            noise = 0.02 * torch.randn(prompts.shape, generator=g)
            prompts.copy_(sums[name] / count + noise.to(self.device))
        pooled, targets = [], []
        for part in batches:
            tok, valid, audio, s_g = self._inputs(self.train_set, part, None)
            prompts_v = self.speaker.visual_prompts.expand(len(part), -1, -1)
            out_v = encode_tokens(enc, tok, ~valid, prompts_v).prompt_out
            prompts_a = self.speaker.audio_prompts.expand(len(part), -1, -1)
            out_a = enc(video=None, audio=audio, padding_mask=~valid, prompts=prompts_a).prompt_out
            assert out_v is not None and out_a is not None
            pooled += [out_v.mean(1), out_a.mean(1)]
            targets += [s_g, s_g]
        x, y = torch.cat(pooled).double(), torch.cat(targets).double()
        x_mean, y_mean = x.mean(0), y.mean(0)
        xc, yc = x - x_mean, y - y_mean
        gram = xc.T @ xc
        ridge = 1e-2 * float(torch.trace(gram)) / gram.shape[0] + 1e-6
        weight = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)
        self.speaker.proj.weight.copy_(weight.T.float())
        self.speaker.proj.bias.copy_((y_mean - x_mean @ weight).float())

    def train_step(self, step: int, lr: float) -> dict[str, float]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = speaker_batch(g, self.train_set.data.speaker_index, self.batch_size)
        self.speaker.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        s_v, s_a, s_g = self._embed(self.train_set, idx, g)
        info_nce = speaker_loss(s_v, s_a, s_g, self.temperature)
        align = (2.0 - F.cosine_similarity(s_v, s_g) - F.cosine_similarity(s_a, s_g)).mean()
        loss = info_nce + self.align_weight * align
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {
            "info_nce": info_nce.item(),
            "align": align.item(),
            "cos_v_g": F.cosine_similarity(s_v, s_g).mean().item(),
            "cos_a_g": F.cosine_similarity(s_a, s_g).mean().item(),
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """On validation clips: mean cos(s_v, s_G), cos(s_a, s_G), and how often s_v is nearest to its own
        speaker's mean GE2E embedding among the training speakers (speakers unseen in training skipped)."""
        data = self.val_set
        if data is None:
            return {}
        self.speaker.eval()
        train = self.train_set.data
        centroids = np.stack(
            [train.ge2e_all[train.speaker_index == k].mean(0) for k in range(len(train.speakers))]
        )
        centroids_t = F.normalize(torch.from_numpy(centroids), dim=-1).to(self.device)
        idx = list(range(min(len(data), self.max_val)))
        cos_v, cos_a, hits, known = [], [], 0, 0
        for start in range(0, len(idx), 32):
            chunk = idx[start : start + 32]
            s_v, s_a, s_g = self._embed(data, chunk, None)
            cos_v += F.cosine_similarity(s_v, s_g).tolist()
            cos_a += F.cosine_similarity(s_a, s_g).tolist()
            nearest = (s_v @ centroids_t.T).argmax(dim=1)
            for b, i in enumerate(chunk):
                name = data.data.items[i]["speaker"]
                if name in train.speakers:
                    known += 1
                    hits += int(train.speakers[int(nearest[b])] == name)
        out = {"val_cos_v_g": float(np.mean(cos_v)), "val_cos_a_g": float(np.mean(cos_a))}
        if known:
            out["val_speaker_acc"] = hits / known
        return out

    def state_dict(self) -> dict[str, Any]:
        trainable = {k: v for k, v in self.speaker.state_dict().items() if not k.startswith("encoder.")}
        return {"speaker": trainable, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing, unexpected = self.speaker.load_state_dict(state["speaker"], strict=False)
        if unexpected or any(not k.startswith("encoder.") for k in missing):
            raise RuntimeError(
                f"speaker state does not match: missing {missing[:4]}, unexpected {unexpected[:4]}"
            )
        self.optimizer.load_state_dict(state["optimizer"])
