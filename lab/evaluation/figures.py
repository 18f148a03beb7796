"""Generated vs ground-truth log-mel spectrograms as one PNG (matplotlib, Agg backend: no display needed).

Both sides are the log-mel *of the audio* (the model's output after the vocoder, and the corpus audio),
computed with the model's own mel analysis, so the two columns are directly comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class MelPair:
    title: str  # e.g. "spk03/u0012: bin blue at f two now"
    generated: np.ndarray  # log-mel [n_mels, T]
    ground_truth: np.ndarray  # log-mel [n_mels, T']
    frames_per_second: float


def write_mel_figure(pairs: Sequence[MelPair], path: Path) -> Path:
    """One row per pair: generated (left) and ground truth (right), shared colour scale per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not pairs:
        raise ValueError("no mel pairs to draw")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Constrained layout keeps titles, axis labels and the colour bars from running into each other.
    fig, axes = plt.subplots(
        len(pairs), 2, figsize=(12, 2.6 * len(pairs)), squeeze=False, layout="constrained"
    )
    for row, pair in zip(axes, pairs, strict=True):
        lo = float(min(pair.generated.min(), pair.ground_truth.min()))
        hi = float(max(pair.generated.max(), pair.ground_truth.max()))
        for ax, mel, side in (
            (row[0], pair.generated, "generated"),
            (row[1], pair.ground_truth, "ground truth"),
        ):
            seconds = mel.shape[1] / pair.frames_per_second
            image = ax.imshow(
                mel, origin="lower", aspect="auto", vmin=lo, vmax=hi, extent=(0.0, seconds, 0, mel.shape[0])
            )
            ax.set_title(f"{side} — {pair.title}", fontsize=9)
            ax.set_xlabel("s")
            ax.set_ylabel("mel band")
        fig.colorbar(image, ax=list(row), fraction=0.02, pad=0.01, label="log-mel")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
