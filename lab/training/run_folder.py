"""The run folder: everything a training run writes lives in it, so `--resume` continues from it alone.

{run}/run.json                 options, data, time budgets, wall time per stage
{run}/train.log                the log lines also printed to stdout
{run}/cache/{train,val}/       decoded utterances (`lab.training.cache`)
{run}/encoder/state.pt         stage A (encoder + head + optimiser + curves), encoder.png
{run}/features/{train,val}/    frozen-encoder tokens/features (one shard per cache shard), speaker embeddings
{run}/speaker/state.pt         stage B, speaker.png
{run}/denoiser/state.pt        stage C (weights, EMA, optimiser), denoiser.png
{run}/diffv2s-{preset}.pt      the final checkpoint (float16, loadable by `Synthesizer.load`)
{run}/curves.png               all stages' curves in one figure
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from diffv2s.config import ModelConfig
from diffv2s.model import DiffV2S, build_initial_model
from lab.training.loop import StageRecord, load_state, stage_record


class RunLog:
    """print() that also appends to {run}/train.log, with a clock."""

    def __init__(self, path: Path, echo: bool = True) -> None:
        self.path = path
        self.echo = echo

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        if self.echo:
            print(line, flush=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


class Run:
    """The run folder and its run.json."""

    def __init__(self, out: Path, writable: bool = True) -> None:
        self.dir = Path(out)
        self.json_path = self.dir / "run.json"
        # Under torchrun only rank 0 writes; the others read run.json again after each stage (`reload`).
        self.writable = writable
        self.info: dict[str, Any] = {}
        self.reload()

    def reload(self) -> None:
        self.info = json.loads(self.json_path.read_text()) if self.json_path.exists() else {}

    def save(self) -> None:
        if not self.writable:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.info, indent=1))
        tmp.replace(self.json_path)

    def state(self, stage: str) -> Path:
        return self.dir / stage / "state.pt"

    def record(self, stage: str) -> StageRecord | None:
        return stage_record(self.state(stage))

    def stage_done(self, stage: str) -> bool:
        if stage == "cache":
            return bool(self.info.get("cache", {}).get("complete"))
        if stage == "export":
            return bool(self.info.get("export"))
        if stage == "encoder" and self.info.get("avhubert"):
            # The paper's path: the official encoder is frozen; its step is the feature cache.
            return bool(self.info.get("features", {}).get("encoder"))
        rec = self.record(stage)
        return rec is not None and rec.done

    def add_wall(self, stage: str, seconds: float) -> None:
        wall = self.info.setdefault("wall_seconds", {})
        wall[stage] = wall.get(stage, 0.0) + seconds
        self.save()


def model_with_stages(run: Run, cfg: ModelConfig, seed: int, parts: tuple[str, ...]) -> DiffV2S:
    """A model whose `parts` (encoder | speaker | denoiser) carry the trained weights of their stage."""
    model = build_initial_model(cfg, seed)
    if "encoder" in parts and run.info.get("avhubert"):
        from lab.training.official_encoder import load_official

        model.encoder.load_state_dict(load_official(run.info["avhubert"]).state_dict())
    elif "encoder" in parts:
        state = load_state(run.state("encoder"))
        assert state is not None
        model.encoder.load_state_dict(state["stage"]["encoder"])
    if "speaker" in parts:
        state = load_state(run.state("speaker"))
        assert state is not None
        model.speaker.load_state_dict(state["stage"]["speaker"], strict=False)
    if "denoiser" in parts:
        state = load_state(run.state("denoiser"))
        assert state is not None
        model.denoiser.load_state_dict(state["stage"]["ema"])
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    return model


def run_exists(out: Path) -> bool:
    return (Path(out) / "run.json").exists()
