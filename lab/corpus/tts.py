"""Speech engines behind one call: `synthesize(voice, words, rate) -> Synthesis`.

Phone timings always come from the engine itself: festival's Segment end times, flite's `-psdur`,
espeak-ng's phoneme events, piper's per-phoneme sample counts (its duration predictor's output).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from diffv2s.errors import DiffV2SError
from lab.corpus.phones import SILENCE, PhoneSegment, merge_silences

ENGINES = ("festival", "flite", "espeak", "piper")


class EngineUnavailable(DiffV2SError):
    """A speech engine or voice is not installed (see deploy/apt-packages.txt)."""

    code = "engine_unavailable"


class EngineFailed(DiffV2SError):
    """An engine ran but its output could not be used (no audio, timings that do not parse)."""

    code = "engine_failed"


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


def synthesize(voice: VoiceSpec, words: list[str], rate: float = 1.0) -> Synthesis:
    """Speak `words` (already spelled for engines, see `Sentence.spoken_words`) at tempo `rate` (>1 faster).

    Phone `word` fields index `words`. Raises EngineUnavailable / EngineFailed.
    """
    engine = _engine(voice.engine)
    syn = engine(voice, words, rate)
    if syn.audio.size == 0:
        raise EngineFailed(f"{voice.engine}/{voice.name} produced no audio for {' '.join(words)!r}")
    syn.phones = fit_to_duration(syn.phones, syn.duration)
    spoken = {p.word for p in syn.phones if p.word >= 0}
    if spoken != set(range(len(words))):
        raise EngineFailed(
            f"{voice.engine}/{voice.name}: phones cover words {sorted(spoken)} of {len(words)} in {words}"
        )
    return syn


def fit_to_duration(phones: list[PhoneSegment], duration: float) -> list[PhoneSegment]:
    """Clip segments to [0, duration]; silence fills any gap at the start or end."""
    out: list[PhoneSegment] = []
    for p in phones:
        start, end = max(0.0, p.start), min(duration, p.end)
        if end > start:
            out.append(PhoneSegment(p.phone, p.label, start, end, p.word))
    if not out or out[0].start > 0.0:
        first = out[0].start if out else duration
        out.insert(0, PhoneSegment(SILENCE, "", 0.0, first, -1))
    if out[-1].end < duration:
        out.append(PhoneSegment(SILENCE, "", out[-1].end, duration, -1))
    # Engines give end times only for some phones; make the list contiguous.
    for i in range(1, len(out)):
        if out[i].start != out[i - 1].end:
            prev = out[i - 1]
            out[i - 1] = PhoneSegment(prev.phone, prev.label, prev.start, out[i].start, prev.word)
    return merge_silences(out)


def _engine(name: str) -> Callable[[VoiceSpec, list[str], float], Synthesis]:
    if name == "festival":
        from lab.corpus.engines.festival import synthesize_festival

        return synthesize_festival
    if name == "flite":
        from lab.corpus.engines.flite import synthesize_flite

        return synthesize_flite
    if name == "espeak":
        from lab.corpus.engines.espeak import synthesize_espeak

        return synthesize_espeak
    if name == "piper":
        from lab.corpus.engines.piper import synthesize_piper

        return synthesize_piper
    raise ValueError(f"unknown engine {name!r}")


def voice_available(voice: VoiceSpec) -> bool:
    """Whether this voice can be synthesised on this machine (engine and voice data installed)."""
    try:
        synthesize(voice, ["now"])
    except (EngineUnavailable, EngineFailed):
        return False
    return True
