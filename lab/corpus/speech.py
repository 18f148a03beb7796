"""What a speech engine takes and gives: a voice, its synthesis with phone timings, and its two failures.

A leaf of the corpus: `tts` picks an engine, each module of `engines/` speaks with one, and both build on
these types, so no engine imports the dispatcher that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffv2s.errors import DiffV2SError
from lab.corpus.phones import PhoneSegment

ENGINES = ("festival", "flite", "espeak", "piper")


class VoiceEngineUnavailable(DiffV2SError):
    """A speech engine or voice is not installed (see deploy/apt-packages.txt)."""

    code = "voice_engine_unavailable"


class VoiceEngineFailed(DiffV2SError):
    """A speech engine ran but its output could not be used (no audio, timings that do not parse)."""

    code = "voice_engine_failed"


@dataclass(frozen=True)
class VoiceSpec:
    """A voice of one engine. `pitch` scales the voice's mean F0 where the engine allows it."""

    engine: str
    name: str
    pitch: float = 1.0

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {ENGINES}")


@dataclass
class Synthesis:
    """Engine output. audio: [N] float32 in [-1, 1] at `sample_rate`; phones cover [0, N / sample_rate]."""

    audio: np.ndarray
    sample_rate: int
    phones: list[PhoneSegment]
    info: dict[str, str] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate
