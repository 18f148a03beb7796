"""What the frozen encoder and speaker extractor compute, cached once per split.

After stage A: `tokens.npy` (Transformer inputs) and `features.npy` (encoder outputs f_v), float16
[sum T, D] in the cache's utterance order (offsets from `CacheSet.frame_offsets`). After stage B:
`speaker.npz` with s_v (from video) and s_a (from the ground-truth mel) per utterance, [N, 256].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffv2s.model import DiffV2S
from diffv2s.nn.speaker import mel_to_audio_features
from lab.training.batches import pad_time
from lab.training.cache import CacheSet
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
def compute_encoder_features(model: DiffV2S, data: CacheSet, out_dir: Path) -> None:
    """Write tokens.npy and features.npy for every utterance of `data` (encoder in eval mode)."""
    encoder = model.encoder.eval()
    offsets = data.frame_offsets()
    d = encoder.embed_dim
    tokens_all = np.zeros((int(offsets[-1]), d), np.float16)
    feats_all = np.zeros((int(offsets[-1]), d), np.float16)
    for group in _length_batches(data.n_frames, BATCH_FRAMES):
        video, valid = pad_time([torch.from_numpy(data.roi(i)) for i in group])
        pad = ~valid
        tokens = video_tokens(encoder, video[:, None], pad)
        feats = encode_tokens(encoder, tokens, pad).features
        for b, i in enumerate(group):
            n = int(data.n_frames[i])
            tokens_all[offsets[i] : offsets[i] + n] = tokens[b, :n].numpy()
            feats_all[offsets[i] : offsets[i] + n] = feats[b, :n].numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_npy(out_dir / "tokens.npy", tokens_all)
    _save_npy(out_dir / "features.npy", feats_all)


@torch.inference_mode()
def compute_speaker_embeddings(model: DiffV2S, data: CacheSet, feature_dir: Path) -> None:
    """Write speaker.npz (s_v, s_a: float32 [N, 256]) from the cached tokens and mels of `data`."""
    speaker = model.speaker.eval()
    offsets = data.frame_offsets()
    tokens_all = np.load(feature_dir / "tokens.npy", mmap_mode="r")
    mel_rate = model.cfg.audio.mel_rate
    fps = model.cfg.video.fps
    s_v = np.zeros((len(data), speaker.cfg.embed_dim), np.float32)
    s_a = np.zeros_like(s_v)
    for group in _length_batches(data.n_frames, BATCH_FRAMES):
        tok, valid = pad_time(
            [torch.from_numpy(np.asarray(tokens_all[offsets[i] : offsets[i + 1]], np.float32)) for i in group]
        )
        s_v[group] = speaker_from_tokens(speaker, tok, ~valid).numpy()
        mel, mel_valid = pad_time([torch.from_numpy(data.mel(i)) for i in group])
        audio = mel_to_audio_features(
            mel.transpose(1, 2), mel_rate, n_frames=tok.shape[1], mel_mask=mel_valid, video_fps=fps
        )
        s_a[group] = speaker.embed_audio(audio, ~valid).numpy()
    np.savez(feature_dir / "speaker.npz", s_v=s_v, s_a=s_a)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


class FeatureSet:
    """Cached features of one split next to its `CacheSet` (same utterance order)."""

    def __init__(self, data: CacheSet, feature_dir: Path, with_speaker: bool = True) -> None:
        self.data = data
        self.offsets = data.frame_offsets()
        self.tokens_all = np.load(feature_dir / "tokens.npy", mmap_mode="r")
        self.features_all = np.load(feature_dir / "features.npy", mmap_mode="r")
        self.s_v: np.ndarray | None = None
        self.s_a: np.ndarray | None = None
        if with_speaker:
            spk = np.load(feature_dir / "speaker.npz")
            self.s_v, self.s_a = spk["s_v"], spk["s_a"]

    def __len__(self) -> int:
        return len(self.data)

    def tokens(self, i: int) -> np.ndarray:
        """float32 [T, D]."""
        return np.asarray(self.tokens_all[self.offsets[i] : self.offsets[i + 1]], np.float32)

    def features(self, i: int) -> np.ndarray:
        """float32 [T, D]."""
        return np.asarray(self.features_all[self.offsets[i] : self.offsets[i + 1]], np.float32)
