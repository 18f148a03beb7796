"""Long videos are sampled in overlapping windows: where they are cut, which noise each one draws, and how
their mels are cross-faded back into one.

Pure functions of lengths and seeds; the sampling path (`diffv2s.sampling.generate_mels`) uses them, and
the evaluation asks them how many windows a video becomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

WINDOW_FRAMES = 250  # video frames per window (10 s at 25 fps)
OVERLAP_FRAMES = 25  # video frames two consecutive windows share


@dataclass(frozen=True)
class Window:
    """One window of one item: video frames [v0, v1) and mel frames [m0, m1)."""

    item: int
    index: int
    v0: int
    v1: int
    m0: int
    m1: int


def mel_frames(n_frames: int, ratio: float) -> int:
    """Mel frames of a video of `n_frames` (`ratio` = mel frames per video frame), at least 1."""
    return max(1, int(round(n_frames * ratio)))


def plan_windows(
    n_frames: int, n_mel: int, ratio: float, window: int, overlap: int
) -> list[tuple[int, int, int, int]]:
    """Split [0, n_frames) into windows of `window` video frames overlapping by `overlap`.

    Returns (v0, v1, m0, m1) per window; the mel range is the video range times `ratio` (mel frames
    per video frame), the last window ends exactly at `n_mel`.
    """
    if n_frames <= window:
        return [(0, n_frames, 0, n_mel)]
    step = window - overlap
    starts = list(range(0, n_frames - window + 1, step))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    out = []
    for s in starts:
        e = min(s + window, n_frames)
        m0 = int(round(s * ratio))
        m1 = n_mel if e == n_frames else min(n_mel, int(round(e * ratio)))
        out.append((s, e, m0, m1))
    return out


def plan_batch(
    n_frames: Sequence[int], ratio: float, window: int = WINDOW_FRAMES, overlap: int = OVERLAP_FRAMES
) -> list[Window]:
    """Every window of a batch of videos (their frame counts), item by item, in the order they run."""
    out: list[Window] = []
    for i, n in enumerate(n_frames):
        for k, (v0, v1, m0, m1) in enumerate(plan_windows(n, mel_frames(n, ratio), ratio, window, overlap)):
            out.append(Window(i, k, v0, v1, m0, m1))
    return out


def window_seed(seed: int, window: int) -> int:
    """The noise seed of window `window` of an item seeded `seed`: windows of one video need different
    noise, and it stays a pure function of (seed, window) so an item's audio does not depend on its batch."""
    return (seed * 1_000_003 + window * 7919) % (2**63 - 1)


def crossfade(pieces: Sequence[tuple[int, torch.Tensor]], n_mel: int) -> torch.Tensor:
    """Overlap-add mel windows with linear cross-fades. pieces: (m0, mel [C, L]) -> [C, n_mel]."""
    channels = pieces[0][1].shape[0]
    acc = torch.zeros(channels, n_mel)
    weight = torch.zeros(n_mel)
    for m0, mel in pieces:
        length = mel.shape[1]
        ramp = torch.ones(length)
        # Triangular-ish weights: ramps at both ends so overlaps blend smoothly.
        edge = max(1, min(length // 4, 32))
        fade = torch.linspace(0.0, 1.0, edge + 2)[1:-1]
        if m0 > 0:
            ramp[:edge] = fade
        if m0 + length < n_mel:
            ramp[-edge:] = torch.minimum(ramp[-edge:], fade.flip(0))
        acc[:, m0 : m0 + length] += mel * ramp
        weight[m0 : m0 + length] += ramp
    return acc / weight.clamp(min=1e-6)
