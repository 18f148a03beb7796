"""Reading the PCM WAV files that festival and flite write."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """-> (audio [N] float32 in [-1, 1], sample rate). Mono 16-bit PCM, as both engines write."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path.name}: expected 16-bit PCM, got {8 * w.getsampwidth()} bit")
        raw = w.readframes(w.getnframes())
        channels = w.getnchannels()
        rate = w.getframerate()
    audio = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        audio = audio.reshape(-1, channels).mean(axis=1)
    return audio, rate
