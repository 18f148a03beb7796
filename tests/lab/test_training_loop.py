"""The training loop's best-state selection, on a toy stage whose validation score peaks mid-run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lab.training.loop import Budget, LoopSettings, StopFlag, load_state, run_stage


class Climb:
    """x counts the steps taken; validation prefers x near `peak` and gets worse after it."""

    name = "climb"

    def __init__(self, peak: float = 6.0, step_seconds: float = 0.01) -> None:
        self.x = 0
        self.peak, self.step_seconds = peak, step_seconds

    def train_step(self, step: int, lr: float) -> dict[str, float]:
        time.sleep(self.step_seconds)
        self.x += 1
        return {"loss": float(abs(self.x - self.peak))}

    def evaluate(self) -> dict[str, float]:
        return {"score": -((self.x - self.peak) ** 2)}

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x = int(state["x"])


SETTINGS = LoopSettings(save_every_s=3600.0, log_every_s=3600.0, evals=20, progress_bar=False)


def test_select_ends_on_the_best_evaluated_state(tmp_path: Path) -> None:
    stage = Climb()
    record = run_stage(
        stage,
        tmp_path / "state.pt",
        Budget(0.4, max_steps=40),
        StopFlag(),
        SETTINGS,
        lambda _: None,
        ("score", "max"),
    )
    scores = record.evals["score"]
    assert len(scores) >= 5 and scores[-1] < max(scores)  # the run went past its best evaluation
    best = record.evals["step"][scores.index(max(scores))]
    assert record.best_step == best and record.best_value == max(scores)
    assert record.kept_step == best and record.step > best
    assert stage.x == best  # the stage holds the best state, not the last one
    saved = load_state(tmp_path / "state.pt")
    assert saved is not None and saved["stage"]["x"] == best and saved["record"]["kept_step"] == best


def test_without_select_the_stage_ends_on_its_last_state(tmp_path: Path) -> None:
    stage = Climb()
    record = run_stage(
        stage, tmp_path / "state.pt", Budget(0.4, max_steps=40), StopFlag(), SETTINGS, lambda _: None
    )
    assert stage.x == record.step == record.kept_step and record.best_step is None


def test_the_best_state_survives_a_stop_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    stop = StopFlag()
    first = Climb()

    def stop_past_the_peak(message: str) -> None:
        if first.x > 12:
            stop.request()

    # The loop logs each evaluation: past the peak, the first run is told to stop and saves its state.
    budget = Budget(0.6, max_steps=60)
    select = ("score", "max")
    record = run_stage(first, path, budget, stop, SETTINGS, stop_past_the_peak, select)
    assert not record.done and record.best_step is not None and record.best_step <= 12
    best = record.best_step
    saved = load_state(path)
    assert saved is not None and saved["best"] == {"x": best}

    # Resumed, the later evaluations are all worse: it still ends on the state from before the stop.
    second = Climb()
    record = run_stage(second, path, budget, StopFlag(), SETTINGS, lambda _: None, select)
    assert record.done and record.step > 12
    assert second.x == best == record.kept_step


def test_select_needs_a_direction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max"):
        run_stage(
            Climb(), tmp_path / "s.pt", Budget(0.1), StopFlag(), SETTINGS, lambda _: None, ("score", "up")
        )
