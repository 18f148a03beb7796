"""What the frozen encoder and speaker extractor compute, cached once per clip.

After stage A (or, on the paper path, from the official AV-HuBERT): one feature shard per cache shard,
`{split}/shard-NNNNN/tokens.npy` (Transformer inputs) and `features.npy` (encoder outputs f_v), float16
[sum T, D] in the cache shard's utterance order. A shard is written to a temporary folder and renamed, so
an interrupted feature step resumes at the first missing shard; under torchrun each process writes every
world-th shard. After stage B: `speaker.npz` with s_v (from video) and s_a (from the ground-truth mel) per
utterance, [N, 256]. Run folders written before the shards keep their single `tokens.npy` /
`features.npy` per split, which `FeatureSet` still reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from diffv2s.model import DiffV2S
from diffv2s.nn.avhubert import AVHubertEncoder
from diffv2s.nn.speaker import mel_to_audio_features
from lab.training.batches import pad_time
from lab.training.cache import CacheSet, shard_dirs
from lab.training.devices import Distributed, autocast
from lab.training.frontend import encode_tokens, speaker_from_tokens, video_tokens

BATCH_FRAMES = 600


def _length_batches(lengths: np.ndarray, batch_frames: int) -> list[list[int]]:
    """Indices grouped by similar length (little padding), each group about `batch_frames` frames."""
    order = np.argsort(lengths, kind="stable")
    groups: list[list[int]] = [[]]
    total = 0
    for i in order:
        if groups[-1] and total + int(lengths[i]) > batch_frames:
            groups.append([])
            total = 0
        groups[-1].append(int(i))
        total += int(lengths[i])
    return groups


@torch.inference_mode()
def compute_encoder_features(
    encoder: AVHubertEncoder,
    data: CacheSet,
    out_dir: Path,
    device: torch.device | None = None,
    precision: str = "fp32",
    dist: Distributed | None = None,
    batch_frames: int = BATCH_FRAMES,
) -> int:
    """Write tokens.npy and features.npy of every cache shard of `data` not written yet (encoder in eval
    mode on `device`); returns the shards this process wrote."""
    device = device or torch.device("cpu")
    dist = dist or Distributed()
    encoder = encoder.eval().to(device)
    d = encoder.embed_dim
    written = 0
    for k, _ in enumerate(shard_dirs(data.split_dir)):
        target = out_dir / f"shard-{k:05d}"
        if k % dist.world != dist.rank or (target / "features.npy").exists():
            continue
        rows = [i for i, it in enumerate(data.items) if it["shard"] == k]
        total = sum(int(data.n_frames[i]) for i in rows)
        tokens_all = np.zeros((total, d), np.float16)
        feats_all = np.zeros((total, d), np.float16)
        for group in _length_batches(data.n_frames[rows], batch_frames):
            items = [rows[j] for j in group]
            video, valid = pad_time([torch.from_numpy(data.roi(i)) for i in items])
            pad = (~valid).to(device)
            with autocast(device, precision):
                tokens = video_tokens(encoder, video[:, None].to(device), pad)
                feats = encode_tokens(encoder, tokens, pad).features
            for b, i in enumerate(items):
                f0, f1 = data.items[i]["frames"]
                tokens_all[f0:f1] = tokens[b, : f1 - f0].float().cpu().numpy()
                feats_all[f0:f1] = feats[b, : f1 - f0].float().cpu().numpy()
        tmp = target.with_name(target.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        np.save(tmp / "tokens.npy", tokens_all)
        np.save(tmp / "features.npy", feats_all)
        tmp.rename(target)
        written += 1
    return written


def features_complete(data: CacheSet, out_dir: Path) -> bool:
    """Whether every cache shard of `data` has its feature shard under `out_dir`."""
    n = len(shard_dirs(data.split_dir))
    return all((out_dir / f"shard-{k:05d}" / "features.npy").exists() for k in range(n))


@torch.inference_mode()
def compute_speaker_embeddings(model: DiffV2S, data: CacheSet, feature_dir: Path) -> None:
    """Write speaker.npz (s_v, s_a: float32 [N, 256]) from the cached tokens and mels of `data`."""
    speaker = model.speaker.eval()
    feats = FeatureSet(data, feature_dir, with_speaker=False)
    mel_rate = model.cfg.audio.mel_rate
    fps = model.cfg.video.fps
    s_v = np.zeros((len(data), speaker.cfg.embed_dim), np.float32)
    s_a = np.zeros_like(s_v)
    for group in _length_batches(data.n_frames, BATCH_FRAMES):
        tok, valid = pad_time([torch.from_numpy(feats.tokens(i)) for i in group])
        s_v[group] = speaker_from_tokens(speaker, tok, ~valid).numpy()
        mel, mel_valid = pad_time([torch.from_numpy(data.mel(i)) for i in group])
        audio = mel_to_audio_features(
            mel.transpose(1, 2), mel_rate, n_frames=tok.shape[1], mel_mask=mel_valid, video_fps=fps
        )
        s_a[group] = speaker.embed_audio(audio, ~valid).numpy()
    np.savez(feature_dir / "speaker.npz", s_v=s_v, s_a=s_a)


class FeatureSet:
    """Cached features of one split next to its `CacheSet` (same utterance order)."""

    def __init__(self, data: CacheSet, feature_dir: Path, with_speaker: bool = True) -> None:
        self.data = data
        self._tokens: list[np.ndarray] = []
        self._features: list[np.ndarray] = []
        self._single = (feature_dir / "features.npy").exists()
        if self._single:  # a run folder from before the shards
            self.offsets = data.frame_offsets()
            self._tokens.append(np.load(feature_dir / "tokens.npy", mmap_mode="r"))
            self._features.append(np.load(feature_dir / "features.npy", mmap_mode="r"))
        else:
            for k in range(len(shard_dirs(data.split_dir))):
                shard = feature_dir / f"shard-{k:05d}"
                self._tokens.append(np.load(shard / "tokens.npy", mmap_mode="r"))
                self._features.append(np.load(shard / "features.npy", mmap_mode="r"))
        self.s_v: np.ndarray | None = None
        self.s_a: np.ndarray | None = None
        if with_speaker:
            spk = np.load(feature_dir / "speaker.npz")
            self.s_v, self.s_a = spk["s_v"], spk["s_a"]

    def __len__(self) -> int:
        return len(self.data)

    def _rows(self, arrays: list[np.ndarray], i: int) -> np.ndarray:
        if self._single:
            return np.asarray(arrays[0][self.offsets[i] : self.offsets[i + 1]], np.float32)
        it = self.data.items[i]
        f0, f1 = it["frames"]
        return np.asarray(arrays[it["shard"]][f0:f1], np.float32)

    def tokens(self, i: int) -> np.ndarray:
        """float32 [T, D]."""
        return self._rows(self._tokens, i)

    def features(self, i: int) -> np.ndarray:
        """float32 [T, D]."""
        return self._rows(self._features, i)
