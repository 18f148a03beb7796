"""Each speech engine: phones from the engine line up with its own audio; letters are said as names."""

import numpy as np
import pytest

from lab.corpus.phones import SILENCE
from lab.corpus.sentences import Sentence
from lab.corpus.speech import Synthesis, VoiceSpec
from lab.corpus.tts import synthesize

VOICES = [
    VoiceSpec("festival", "kal_diphone"),
    VoiceSpec("festival", "cmu_us_slt_arctic_hts"),
    VoiceSpec("flite", "rms"),
    VoiceSpec("espeak", "en-us+f2"),
    VoiceSpec("piper", "joe"),
]
SENTENCE = Sentence("place", "green", "at", "a", "seven", "soon")


def _rms_frames(syn: Synthesis, hop_s: float = 0.01) -> np.ndarray:
    hop = int(hop_s * syn.sample_rate)
    n = len(syn.audio) // hop
    return np.sqrt((syn.audio[: n * hop].reshape(n, hop) ** 2).mean(axis=1))


@pytest.fixture(scope="module", params=VOICES, ids=lambda v: f"{v.engine}-{v.name}")
def syn(request) -> Synthesis:
    return synthesize(request.param, SENTENCE.spoken_words)


def test_phones_tile_the_audio_and_follow_the_words(syn):
    assert syn.phones[0].start == 0.0
    assert abs(syn.phones[-1].end - syn.duration) < 1e-9
    for a, b in zip(syn.phones, syn.phones[1:], strict=False):
        assert a.end == pytest.approx(b.start) and a.end > a.start
    words = [p.word for p in syn.phones if p.word >= 0]
    assert words == sorted(words) and set(words) == set(range(6))


def test_letter_a_is_said_as_its_name(syn):
    letter = [p.phone for p in syn.phones if p.word == 3]
    assert "ey" in letter or "eh" in letter, letter  # /eɪ/ ("eh" in accents without the glide)
    assert "ah" not in letter  # not the article


def test_speech_energy_lies_inside_speech_phones(syn):
    rms = _rms_frames(syn)
    t = (np.arange(len(rms)) + 0.5) * 0.01
    speech = np.zeros(len(rms), bool)
    for p in syn.phones:
        if p.phone != SILENCE:
            speech |= (t >= p.start) & (t < p.end)
    active = rms > 0.02 * rms.max()  # -34 dB: a final nasal is quiet
    # Nearly all loud frames fall inside speech phones (allowing 30 ms at each boundary).
    grown = np.convolve(speech, np.ones(7), mode="same") > 0
    assert active[~grown].sum() <= 2
    first = next(p for p in syn.phones if p.phone != SILENCE)
    last = next(p for p in reversed(syn.phones) if p.phone != SILENCE)
    onset, offset = t[np.argmax(active)], t[len(active) - 1 - np.argmax(active[::-1])]
    assert abs(offset - last.end) < 0.1, (offset, last.end)
    assert -0.03 < onset - first.start < 0.15, (onset, first.start)  # a stop's closure is silent


def test_engines_are_deterministic_and_tempo_changes_timing():
    voice = VoiceSpec("espeak", "en-us+m3")
    a = synthesize(voice, SENTENCE.spoken_words)
    b = synthesize(voice, SENTENCE.spoken_words)
    np.testing.assert_array_equal(a.audio, b.audio)
    fast = synthesize(voice, SENTENCE.spoken_words, rate=1.3)
    assert fast.duration < 0.9 * a.duration
    p1 = synthesize(VoiceSpec("piper", "joe"), SENTENCE.spoken_words)
    p2 = synthesize(VoiceSpec("piper", "joe"), SENTENCE.spoken_words)
    np.testing.assert_array_equal(p1.audio, p2.audio)
