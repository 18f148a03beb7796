"""The resumable, time-budgeted loop every training stage runs in.

A stage is an object with `train_step(step, lr) -> losses`, `evaluate() -> metrics`, `state_dict()` and
`load_state_dict()`. The loop owns what all stages share: a wall-clock budget (and optional step cap)
that drives a warmup + cosine learning-rate schedule, periodic evaluation, a state file written every
few minutes and when SIGINT/SIGTERM arrives, a tqdm bar on a terminal and plain log lines otherwise,
and the loss curves as PNG.

The schedule follows *progress* = max(step / max_steps, elapsed / budget), so a stage resumed after an
interruption continues the same schedule where it stopped.

With `select=(metric, "max" | "min")` the loop also keeps the state of the best evaluation so far (in the
state file, so a resume keeps it too) and ends the stage on it when the last evaluation is worse. Only
for a validation set held out of training: selecting on a test split would flatter the test.

Under torchrun (`dist`) every process runs the loop; before each step they agree on the schedule's
progress (rank 0's clock) and on whether any of them was asked to stop, so all take the same number of
steps at the same learning rate. Only rank 0 evaluates, logs and writes the state file.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import torch

from lab.training.curves import plot_stage
from lab.training.devices import Distributed

LogFn = Callable[[str], None]


class Stage(Protocol):
    name: str

    def train_step(self, step: int, lr: float) -> dict[str, float]:
        """One optimiser step at learning rate `lr`; returns the losses (the first key is plotted first)."""
        ...

    def evaluate(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StopFlag:
    """Turns SIGINT / SIGTERM into a request to save and stop (a second signal acts as usual).

    Use as a context manager around a training run; `requested` tells the loop to stop.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def request(self, signum: int = signal.SIGINT) -> None:
        self.signal = signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum
        # A second signal gets the previous behaviour (e.g. KeyboardInterrupt) if the save hangs.
        old = self._old.get(signum, signal.SIG_DFL)
        signal.signal(signum, old)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


@dataclass
class Budget:
    """Wall-clock seconds for a stage, an optional step cap, and the learning-rate schedule."""

    seconds: float
    max_steps: int | None = None
    lr: float = 1e-3
    warmup: float = 0.05  # share of progress spent in linear warmup
    min_lr_ratio: float = 0.05  # the cosine ends at lr * min_lr_ratio

    def progress(self, step: int, elapsed: float) -> float:
        by_time = elapsed / max(self.seconds, 1e-9)
        by_steps = step / self.max_steps if self.max_steps else 0.0
        return min(1.0, max(by_time, by_steps))

    def lr_at(self, progress: float) -> float:
        if progress < self.warmup:
            return self.lr * max(progress / self.warmup, 0.01)
        x = (progress - self.warmup) / max(1.0 - self.warmup, 1e-9)
        cos = 0.5 * (1.0 + math.cos(math.pi * min(x, 1.0)))
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cos)


@dataclass
class StageRecord:
    """What the state file keeps besides the stage's own weights: counters and curves."""

    step: int = 0
    elapsed: float = 0.0
    done: bool = False
    train: dict[str, list[float]] = field(default_factory=dict)
    evals: dict[str, list[float]] = field(default_factory=dict)
    # With a selection metric: the step and value of the best evaluation, and the step the stage ended on.
    best_step: int | None = None
    best_value: float | None = None
    kept_step: int | None = None

    def add(self, table: dict[str, list[float]], row: dict[str, float]) -> None:
        for key, value in row.items():
            table.setdefault(key, []).append(float(value))

    def recent(self, key: str, n: int = 50) -> float:
        values = self.train.get(key, [])[-n:]
        return sum(values) / len(values) if values else float("nan")


@dataclass
class LoopSettings:
    save_every_s: float = 300.0
    log_every_s: float = 30.0
    evals: int = 8  # evaluations spread over the budget (plus one at the end)
    progress_bar: bool | None = None  # None: only on a terminal


def load_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def stage_record(path: Path) -> StageRecord | None:
    """The counters and curves in a stage's state file (None before the stage has run)."""
    state = load_state(path)
    return None if state is None else StageRecord(**state["record"])


def _quiet(message: str) -> None:
    pass


def run_stage(
    stage: Stage,
    state_path: Path,
    budget: Budget,
    stop: StopFlag,
    settings: LoopSettings | None = None,
    log: LogFn = print,
    select: tuple[str, str] | None = None,
    dist: Distributed | None = None,
    device: torch.device | None = None,
) -> StageRecord:
    """Train `stage` until its budget is spent or a stop is requested; resumes from `state_path`.

    The state file holds the stage's weights and optimiser, the counters, the curves and the budget the
    stage started with (a resumed stage keeps that budget). Curves go to `{state dir}/{name}.png`.
    `select` = (metric, "max" | "min"): end on the state of the best evaluation (see the module doc).
    """
    if select is not None and select[1] not in ("max", "min"):
        raise ValueError(f"select must be (metric, 'max' | 'min'); got {select!r}")
    settings = settings or LoopSettings()
    dist = dist or Distributed()
    sync_device = device or torch.device("cpu")
    main = dist.is_main
    if not main:
        log = _quiet
    record = StageRecord()
    best: dict[str, Any] | None = None
    saved = load_state(state_path)
    if saved is not None:
        record = StageRecord(**saved["record"])
        budget = Budget(**saved["budget"])
        stage.load_state_dict(saved["stage"])
        torch.set_rng_state(saved["rng"])
        best = saved.get("best")
        log(
            f"[{stage.name}] resumed at step {record.step} ({record.elapsed / 60:.1f} of {budget.seconds / 60:.1f} min)"
        )
    if record.done:
        return record
    curve_path = state_path.parent / f"{stage.name}.png"

    def save() -> None:
        if not main:
            return
        state = {
            "record": asdict(record),
            "budget": asdict(budget),
            "stage": stage.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if best is not None:
            state["best"] = best
        save_state(state_path, state)
        plot_stage(stage.name, record.train, record.evals, curve_path)

    def evaluate() -> None:
        nonlocal best
        if not main:
            return
        metrics = stage.evaluate()
        if metrics:
            record.add(record.evals, {"step": record.step, **metrics})
            shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            log(f"[{stage.name}] eval at step {record.step}: {shown}")
        if select is not None and select[0] in metrics:
            value = float(metrics[select[0]])
            sign = 1.0 if select[1] == "max" else -1.0
            if record.best_value is None or sign * (value - record.best_value) > 0:
                record.best_step, record.best_value = record.step, value
                best = copy.deepcopy(stage.state_dict())

    show_bar = sys.stderr.isatty() if settings.progress_bar is None else settings.progress_bar
    from tqdm import tqdm

    bar = tqdm(
        total=1000, desc=stage.name, disable=not (show_bar and main), bar_format="{l_bar}{bar}| {postfix}"
    )
    eval_every = budget.seconds / max(settings.evals, 1)
    next_eval = (math.floor(record.elapsed / eval_every) + 1) * eval_every
    if record.step == 0:
        evaluate()
    last_save = last_log = time.perf_counter()
    t_prev = time.perf_counter()
    try:
        while True:
            progress = budget.progress(record.step, record.elapsed)
            progress, stops = dist.all_max(
                [progress if main else 0.0, 1.0 if stop.requested else 0.0], sync_device
            )
            if stops > 0 and not stop.requested:
                stop.request()
            if progress >= 1.0 or stop.requested:
                break
            lr = budget.lr_at(progress)
            losses = stage.train_step(record.step, lr)
            record.step += 1
            now = time.perf_counter()
            record.elapsed += now - t_prev
            t_prev = now
            record.add(record.train, {"step": record.step, "elapsed": record.elapsed, "lr": lr, **losses})
            first = next(iter(losses))
            bar.n = int(1000 * budget.progress(record.step, record.elapsed))
            bar.set_postfix_str(f"step {record.step} {first} {record.recent(first, 20):.4f} lr {lr:.2e}")
            if now - last_log >= settings.log_every_s:
                last_log = now
                parts = " ".join(f"{k} {record.recent(k):.4f}" for k in losses)
                log(
                    f"[{stage.name}] step {record.step} {record.elapsed / 60:.1f}/{budget.seconds / 60:.1f} min "
                    f"{parts} lr {lr:.2e}"
                )
            if record.elapsed >= next_eval:
                next_eval += eval_every
                evaluate()
                t_prev = time.perf_counter()
                record.elapsed += t_prev - now
            if now - last_save >= settings.save_every_s:
                save()
                last_save = t_prev = time.perf_counter()
        if not stop.requested:
            if record.evals.get("step", [None])[-1] != record.step:
                evaluate()
            record.kept_step = record.step
            if select is not None and best is not None and record.best_step != record.step:
                stage.load_state_dict(best)
                record.kept_step = record.best_step
                last = record.evals[select[0]][-1]
                log(
                    f"[{stage.name}] ends on the state of step {record.best_step} ({select[0]} "
                    f"{record.best_value:.4g}; the last step's {last:.4g})"
                )
            record.done = True
    finally:
        bar.close()
        # Always leave a resumable state, also when a step raised.
        save()
    if stop.requested:
        log(f"[{stage.name}] stopped at step {record.step}; state saved to {state_path}")
    else:
        log(f"[{stage.name}] done: {record.step} steps in {record.elapsed / 60:.1f} min")
    return record
