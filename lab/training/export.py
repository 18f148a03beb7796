"""The final step: one checkpoint from the three stages' weights, with what was trained recorded in its meta."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffv2s.checkpoints.store import save_checkpoint
from diffv2s.checkpoints.weights import checkpoint_state
from diffv2s.config import ModelConfig
from diffv2s.errors import InputError
from lab.training.loop import StageRecord
from lab.training.options import TrainOptions
from lab.training.run_folder import Run, model_with_stages

MAX_CHECKPOINT_MB = 25.0


def _last(table: dict[str, list[float]], n: int = 50) -> dict[str, float]:
    out = {}
    for key, values in table.items():
        if key in ("step", "elapsed", "lr") or not values:
            continue
        tail = values[-n:]
        out[key] = round(sum(tail) / len(tail), 5)
    return out


def export_run(run: Run, opts: TrainOptions, cfg: ModelConfig, log: Callable[[str], None]) -> Path:
    """Assemble encoder (stage A), speaker prompts + projection (stage B) and the EMA denoiser (stage C)
    into one float16 checkpoint that `Synthesizer.load` reads; also the summary curves."""
    from lab.training.curves import plot_stage

    finished = run.stage_done("denoiser")
    if not finished and not (opts.force and run.state("denoiser").exists()):
        raise InputError(
            f"stage 'denoiser' has not finished in {run.dir}; nothing to export yet "
            "(--force exports its last saved state, if it has one)."
        )
    model = model_with_stages(run, cfg, opts.seed, ("encoder", "speaker", "denoiser"))
    state = checkpoint_state(model)
    records = {name: run.record(name) for name in ("encoder", "speaker", "denoiser")}
    meta: dict[str, Any] = {
        "trained": True,
        "denoiser_finished": finished,
        "recipe": "lab.training",
        "stage_a": (
            "official AV-HuBERT, frozen (not trained)"
            if run.info.get("avhubert")
            else "supervised: encoder frames -> 100 Hz log-mel (L1), plus the audio-only path"
        ),
        # The paper's path: which official checkpoint the encoder weights are (file name and sha256).
        "avhubert": {k: run.info["avhubert"][k] for k in ("file", "sha256")}
        if run.info.get("avhubert")
        else None,
        "corpus": run.info.get("corpus", {}),
        "splits": run.info.get("splits", {}),
        "cache": run.info.get("cache", {}),
        "seed": opts.seed,
        "steps": {k: r.step for k, r in records.items() if r is not None},
        # A fine-tuned run (`--init-from`): the starting checkpoint's file name, sha256 and steps (and its own
        # starting point, recursively), so the total training behind a checkpoint stays traceable.
        "init_from": _init_meta(run.info.get("init_from")),
        # The step whose weights were exported (a stage with a selection metric may end on an earlier one).
        "kept_steps": {k: r.kept_step for k, r in records.items() if r is not None},
        "stage_minutes": {k: round(r.elapsed / 60.0, 2) for k, r in records.items() if r is not None},
        "wall_minutes": {k: round(v / 60.0, 2) for k, v in run.info.get("wall_seconds", {}).items()},
        "losses": {k: _last(r.train) for k, r in records.items() if r is not None},
        "eval": {
            k: {m: round(v[-1], 5) for m, v in r.evals.items() if v}
            for k, r in records.items()
            if r is not None
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "torch": str(torch.__version__),
        "machine": platform.machine(),
    }
    path = Path(opts.checkpoint) if opts.checkpoint else run.dir / f"diffv2s-{cfg.preset}.pt"
    sha = save_checkpoint(path, cfg, state, meta, half=True)
    size_mb = path.stat().st_size / 1e6
    if size_mb > MAX_CHECKPOINT_MB:
        log(f"[export] warning: {path.name} is {size_mb:.1f} MB (> {MAX_CHECKPOINT_MB} MB)")
    for name, rec in records.items():
        if rec is not None:
            plot_stage(name, rec.train, rec.evals, run.dir / "curves" / f"{name}.png")
    _summary_figure(records, run.dir / "curves.png")
    run.info["export"] = {"path": path.name, "sha256": sha, "mb": round(size_mb, 2)}
    run.save()
    log(f"[export] wrote {path} ({size_mb:.1f} MB, sha256 {sha[:12]})")
    return path


def _init_meta(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {**record, "path": Path(str(record.get("path", ""))).name}


def _summary_figure(records: dict[str, StageRecord | None], path: Path) -> None:
    """One row per stage: its first training loss (smoothed) and its validation metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lab.training.curves import SKIP, moving_average

    rows = [(k, r) for k, r in records.items() if r is not None]
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 3.2 * max(len(rows), 1)), squeeze=False)
    for (name, rec), (ax_t, ax_e) in zip(rows, axes, strict=True):
        steps = rec.train.get("step", [])
        for key, values in rec.train.items():
            if key not in SKIP and values:
                ax_t.plot(steps, moving_average(values, max(1, len(values) // 50)), label=key)
        ax_t.set_title(f"{name}: training")
        ax_t.legend(fontsize=7)
        for key, values in rec.evals.items():
            if key not in SKIP and values:
                ax_e.plot(rec.evals.get("step", []), values, marker="o", label=key)
        ax_e.set_title(f"{name}: validation")
        if len(ax_e.lines):
            ax_e.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
