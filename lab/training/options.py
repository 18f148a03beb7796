"""`TrainOptions`: everything `diffv2s train` can be told, with the shipped recipe's values as defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrainOptions:
    data: Path | None
    out: Path
    minutes: float = 110.0
    stage: str = "all"
    resume: bool = False
    preset: str = "small"
    seed: int = 0
    workers: int = 2
    threads: int = 2
    save_every_min: float = 5.0
    log_every_s: float = 30.0
    train_split: str | None = None
    val_split: str | None = None
    max_utterances: int | None = None
    extra_data: tuple[Path, ...] = ()
    max_val: int = 64
    encoder_steps: int | None = None
    speaker_steps: int | None = None
    denoiser_steps: int | None = None
    encoder_batch: int = 8
    speaker_batch: int = 32
    denoiser_batch: int = 16
    encoder_lr: float = 1e-3
    phone_weight: float = 0.2
    encoder_share: float = 0.38
    speaker_lr: float = 1e-4
    denoiser_lr: float = 3e-4
    checkpoint: Path | None = None
    init_from: Path | None = None
    head_warmup_steps: int = 200
    force: bool = False
    progress_bar: bool | None = None
    avhubert: Path | None = None
    device: str = "cpu"
    precision: str = "auto"
    loader_workers: int = 0
    override: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v

        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}
