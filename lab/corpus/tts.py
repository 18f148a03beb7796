"""Speech engines behind one call: `synthesize(voice, words, rate) -> Synthesis`.

Phone timings always come from the engine itself: festival's Segment end times, flite's `-psdur`,
espeak-ng's phoneme events, piper's per-phoneme sample counts (its duration predictor's output).
"""

from __future__ import annotations

from collections.abc import Callable

from lab.corpus.engines.espeak import synthesize_espeak
from lab.corpus.engines.festival import synthesize_festival
from lab.corpus.engines.flite import synthesize_flite
from lab.corpus.engines.piper import synthesize_piper
from lab.corpus.phones import SILENCE, PhoneSegment, merge_silences
from lab.corpus.speech import Synthesis, VoiceEngineFailed, VoiceEngineUnavailable, VoiceSpec

# Each engine's module imports its own dependencies (piper, libespeak-ng) only when it speaks.
_ENGINES: dict[str, Callable[[VoiceSpec, list[str], float], Synthesis]] = {
    "festival": synthesize_festival,
    "flite": synthesize_flite,
    "espeak": synthesize_espeak,
    "piper": synthesize_piper,
}


def synthesize(voice: VoiceSpec, words: list[str], rate: float = 1.0) -> Synthesis:
    """Speak `words` (already spelled for engines, see `Sentence.spoken_words`) at tempo `rate` (>1 faster).

    Phone `word` fields index `words`. Raises VoiceEngineUnavailable / VoiceEngineFailed.
    """
    syn = _ENGINES[voice.engine](voice, words, rate)
    if syn.audio.size == 0:
        raise VoiceEngineFailed(f"{voice.engine}/{voice.name} produced no audio for {' '.join(words)!r}")
    syn.phones = fit_to_duration(syn.phones, syn.duration)
    spoken = {p.word for p in syn.phones if p.word >= 0}
    if spoken != set(range(len(words))):
        raise VoiceEngineFailed(
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


def voice_available(voice: VoiceSpec) -> bool:
    """Whether this voice can be synthesised on this machine (engine and voice data installed)."""
    try:
        synthesize(voice, ["now"])
    except (VoiceEngineUnavailable, VoiceEngineFailed):
        return False
    return True
