"""Batch building shared by the stages: random crops, padding, mel ranges of video crops."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def draw(generator: torch.Generator, n: int, k: int) -> list[int]:
    """k indices from range(n): without replacement when k <= n, else with."""
    if k <= n:
        return [int(i) for i in torch.randperm(n, generator=generator)[:k]]
    return [int(i) for i in torch.randint(0, n, (k,), generator=generator)]


def crop_start(generator: torch.Generator, n: int, length: int) -> int:
    """A uniform start for a crop of `length` out of `n` (0 when it does not fit)."""
    if n <= length:
        return 0
    return int(torch.randint(0, n - length + 1, (1,), generator=generator))


def mel_span(v0: int, v1: int, ratio: float, n_mel: int) -> tuple[int, int]:
    """Mel frames [m0, m1) under video frames [v0, v1), like the pipeline's windows (rounded)."""
    m0 = min(int(round(v0 * ratio)), n_mel - 1)
    m1 = n_mel if v1 * ratio >= n_mel - 0.5 else int(round(v1 * ratio))
    return m0, max(m1, m0 + 1)


def pad_time(items: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """items: [T_i, ...] -> (padded [B, max T, ...] zeros after each item, valid [B, max T] bool)."""
    t_max = max(int(x.shape[0]) for x in items)
    out = items[0].new_zeros((len(items), t_max, *items[0].shape[1:]))
    valid = torch.zeros(len(items), t_max, dtype=torch.bool)
    for b, x in enumerate(items):
        out[b, : x.shape[0]] = x
        valid[b, : x.shape[0]] = True
    return out, valid


def speaker_batch(generator: torch.Generator, speaker_of: Sequence[int] | np.ndarray, size: int) -> list[int]:
    """`size` utterances, each of a different speaker where possible (InfoNCE treats the rest of the
    batch as negatives, so two clips of one voice would be pushed apart)."""
    by_speaker: dict[int, list[int]] = {}
    for i, s in enumerate(speaker_of):
        by_speaker.setdefault(int(s), []).append(i)
    speakers = sorted(by_speaker)
    chosen = [speakers[i] for i in draw(generator, len(speakers), min(size, len(speakers)))]
    out = []
    for s in chosen:
        pool = by_speaker[s]
        out.append(pool[int(torch.randint(0, len(pool), (1,), generator=generator))])
    return out
