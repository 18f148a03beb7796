"""A tiny learnable fake cache for training tests: mouth images whose opening drives the spectrum.

Each frame shows a bright ellipse whose height is the frame's mouth opening a_t in [0, 1]; the log-mel
of the frame has a formant-like bump whose position follows a_t and whose height depends on the
speaker; each speaker has a fixed random unit GE2E vector (plus a little noise per clip). So the encoder
can read the mel from the pixels, and the speaker extractor can tell speakers apart from both sides.
Phone timings follow the opening too ("aa" while the mouth is more than half open, "m" otherwise), so
the encoder's phone head has something to learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffv2s.config import ModelConfig
from diffv2s.training.cache import CachedUtterance, write_shard


def _frame(opening: float, size: int, brightness: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy = cx = size / 2
    ry = 3 + 25 * opening
    rx = 28.0
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    img = np.full((size, size), 90.0 * brightness, np.float32)
    img[inside] = 20.0
    return img.astype(np.uint8)


def fake_utterances(
    cfg: ModelConfig, n_speakers: int = 3, per_speaker: int = 4, n_frames: int = 16, seed: int = 0
) -> list[CachedUtterance]:
    rng = np.random.default_rng(seed)
    ratio = cfg.audio.mel_rate / cfg.video.fps
    n_mel = int(round(n_frames * ratio))
    bands = np.arange(cfg.audio.n_mels, dtype=np.float32)
    voices = rng.normal(size=(n_speakers, 256)).astype(np.float32)
    voices /= np.linalg.norm(voices, axis=1, keepdims=True)
    out = []
    for s in range(n_speakers):
        for u in range(per_speaker):
            phase = rng.uniform(0, 2 * np.pi)
            speed = rng.uniform(0.2, 0.5)
            opening = 0.5 + 0.5 * np.sin(phase + speed * np.arange(n_frames))
            frames = np.stack([_frame(a, cfg.video.roi_size, 1.0 + 0.3 * s) for a in opening])
            at_mel = np.interp((np.arange(n_mel) + 0.5) / ratio - 0.5, np.arange(n_frames), opening)
            centre = 10 + 50 * at_mel[:, None]
            mel = -8.0 + (3.0 + s) * np.exp(-0.5 * ((bands[None, :] - centre) / 4.0) ** 2)
            ge2e = voices[s] + 0.05 * rng.normal(size=256).astype(np.float32)
            fps = cfg.video.fps
            phones = [("aa" if a > 0.5 else "m", t / fps, (t + 1) / fps) for t, a in enumerate(opening)]
            out.append(
                CachedUtterance(
                    f"s{s}_{u}",
                    f"spk{s}",
                    "fake",
                    frames,
                    mel.astype(np.float16),
                    (ge2e / np.linalg.norm(ge2e)).astype(np.float32),
                    phones,
                )
            )
    return out


def write_fake_cache(run_dir: Path, cfg: ModelConfig) -> None:
    """Shards for `train` (3 speakers x 4 clips) and `val` (3 x 1) as the cache step would leave them."""
    items = fake_utterances(cfg, per_speaker=5)
    train = [it for k, it in enumerate(items) if k % 5 != 0]
    val = [it for k, it in enumerate(items) if k % 5 == 0]
    write_shard(run_dir / "cache" / "train" / "shard-00000", train[:7])
    write_shard(run_dir / "cache" / "train" / "shard-00001", train[7:])
    write_shard(run_dir / "cache" / "val" / "shard-00000", val)
