"""Loss curves as PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SKIP = {"step", "elapsed", "lr"}


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Trailing mean over `window` points (shorter at the start): [len(values)]."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0 or window <= 1:
        return x
    csum = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(1, len(x) + 1)
    start = np.maximum(idx - window, 0)
    return (csum[idx] - csum[start]) / (idx - start)


def plot_stage(name: str, train: dict[str, list[float]], evals: dict[str, list[float]], path: Path) -> None:
    """Training losses (raw and smoothed) on the left, evaluation metrics on the right, against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    steps = train.get("step", [])
    window = max(1, len(steps) // 50)
    for key, values in train.items():
        if key in SKIP or not values:
            continue
        line = ax_train.plot(steps, values, alpha=0.25, linewidth=0.6)[0]
        ax_train.plot(steps, moving_average(values, window), color=line.get_color(), label=key)
    ax_train.set_xlabel("step")
    ax_train.set_title(f"{name}: training losses")
    if len(ax_train.lines):
        ax_train.legend()
    eval_steps = evals.get("step", [])
    for key, values in evals.items():
        if key in SKIP or not values:
            continue
        ax_eval.plot(eval_steps, values, marker="o", label=key)
    ax_eval.set_xlabel("step")
    ax_eval.set_title(f"{name}: evaluation")
    if len(ax_eval.lines):
        ax_eval.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
