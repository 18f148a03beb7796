"""Waveform helpers shared by the metrics: resampling and length matching."""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import resample_poly


def resample(wav: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """wav: [N] -> [N * target_rate / source_rate] float64 (polyphase, exact ratio)."""
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    if int(source_rate) == int(target_rate):
        return x
    g = math.gcd(int(source_rate), int(target_rate))
    return np.asarray(resample_poly(x, int(target_rate) // g, int(source_rate) // g), dtype=np.float64)


def match_length(reference: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut both [N] signals to the shorter length (the synthesizer's output and the corpus audio of one
    video differ by at most a frame of rounding)."""
    n = min(len(reference), len(other))
    return reference[:n], other[:n]
