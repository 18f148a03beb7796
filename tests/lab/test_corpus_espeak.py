"""espeak-ng speakers: every GRID letter and digit, each word's phones and timing go to the right word.

A long-lived libespeak-ng can end an utterance with an extra word event that belongs to no word; the
word of each phoneme must come from the event's text position, not from counting word events.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lab.corpus.engines.espeak import _EVENT_WORD, _Espeak, _events_to_phones
from lab.corpus.phones import SILENCE
from lab.corpus.sentences import ADVERBS, COLOURS, COMMANDS, DIGITS, LETTERS, PREPOSITIONS, Sentence
from lab.corpus.speech import Synthesis, VoiceEngineFailed
from lab.corpus.tts import fit_to_duration, synthesize
from lab.corpus.voices import SPEAKERS

ESPEAK_SPEAKERS = [s for s in SPEAKERS if s.voice.engine == "espeak"]
# 25 sentences: each letter once, each digit 2-3 times, every other slot word several times.
SENTENCES = [
    Sentence(
        COMMANDS[i % 4], COLOURS[(i // 4) % 4], PREPOSITIONS[(i // 2) % 4], LETTERS[i], DIGITS[i % 10],
        ADVERBS[(i + 1) % 4],
    )
    for i in range(len(LETTERS))
]  # fmt: skip
# Tempo changes from one sentence to the next, as the corpus's per-utterance jitter does.
RATES = [0.9 + 0.2 * ((7 * i) % 25) / 24 for i in range(len(SENTENCES))]

# How each word starts (alternatives where the accents differ) and the phones that must follow, in
# order: enough to tell every word from its neighbours in all six accents (US, RP, Scottish, Caribbean).
_V_A = ("ey", "eh")  # /eɪ/, a monophthong in Scottish English
_PATTERNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "bin": (("b",), ("n",)),
    "lay": (("l",), _V_A),
    "place": (("p",), ("l",), ("s",)),
    "set": (("s",), ("t",)),
    "blue": (("b",), ("l",), ("uw",)),
    "green": (("g",), ("r",), ("n",)),
    "red": (("r",), ("d",)),
    "white": (("w",), ("ay",), ("t",)),
    "at": (("ae", "aa"), ("t", "d")),
    "by": (("b",), ("ay",)),
    "in": (("ih",), ("n",)),
    "with": (("w",), ("ih",)),
    "a": (_V_A,),
    "b": (("b",), ("iy",)),
    "c": (("s",), ("iy",)),
    "d": (("d",), ("iy",)),
    "e": (("iy",),),
    "f": (("eh",), ("f",)),
    "g": (("jh",), ("iy",)),
    "h": (_V_A, ("ch",)),
    "i": (("ay",),),
    "j": (("jh",), _V_A),
    "k": (("k",), _V_A),
    "l": (("eh",), ("l",)),
    "m": (("eh",), ("m",)),
    "n": (("eh",), ("n",)),
    "o": (("ow",),),
    "p": (("p",), ("iy",)),
    "q": (("k",), ("uw",)),
    "r": (("aa", "ao"),),
    "s": (("eh",), ("s",)),
    "t": (("t",), ("iy",)),
    "u": (("y",), ("uw",)),
    "v": (("v",), ("iy",)),
    "x": (("eh",), ("k",), ("s",)),
    "y": (("w",), ("ay",)),
    "z": (("z",),),  # "zee" or "zed"
    "zero": (("z",), ("r",)),
    "one": (("w",), ("n",)),
    "two": (("t",), ("uw",)),
    "three": (("th", "t"), ("r",), ("iy",)),  # Caribbean English says "tree"
    "four": (("f",),),  # RP and Scottish lose or keep the /r/
    "five": (("f",), ("ay",), ("v",)),
    "six": (("s",), ("k",), ("s",)),
    "seven": (("s",), ("v",), ("n",)),
    "eight": (_V_A, ("t",)),
    "nine": (("n",), ("ay",), ("n",)),
    "again": (("ah", "aa"), ("g",), ("n",)),
    "now": (("n",),),
    "please": (("p",), ("l",), ("z",)),
    "soon": (("s",), ("uw",), ("n",)),
}


def _says(phones: list[str], pattern: tuple[tuple[str, ...], ...]) -> bool:
    """Whether `phones` starts with pattern[0] and holds the rest of the pattern in order."""
    if not phones or phones[0] not in pattern[0]:
        return False
    rest = iter(phones[1:])
    return all(any(p in alts for p in rest) for alts in pattern[1:])


def _word_labels(phones: list, n_words: int) -> list[list[str]]:
    return [[p.label for p in phones if p.word == w] for w in range(n_words)]


@pytest.fixture(scope="module")
def spoken() -> dict[str, list[Synthesis]]:
    """speaker id -> one synthesis per sentence, through the corpus's `synthesize` (a child per utterance)."""
    jobs = [(spk, s, rate) for spk in ESPEAK_SPEAKERS for s, rate in zip(SENTENCES, RATES, strict=True)]
    with ThreadPoolExecutor(2) as pool:  # the work is in the child processes
        results = list(pool.map(lambda j: synthesize(j[0].voice, j[1].spoken_words, j[0].rate * j[2]), jobs))
    out: dict[str, list[Synthesis]] = {spk.id: [] for spk in ESPEAK_SPEAKERS}
    for (spk, _, _), syn in zip(jobs, results, strict=True):
        out[spk.id].append(syn)
    return out


def test_sentences_cover_every_letter_and_digit():
    assert {s.letter for s in SENTENCES} == set(LETTERS)
    assert {s.digit for s in SENTENCES} == set(DIGITS)
    assert len(ESPEAK_SPEAKERS) == 6


@pytest.mark.parametrize("speaker", ESPEAK_SPEAKERS, ids=lambda s: f"{s.id}-{s.voice.name}")
def test_word_timings_go_to_the_right_words(spoken, speaker):
    for sentence, syn in zip(SENTENCES, spoken[speaker.id], strict=True):
        words = sentence.words
        timings = []
        for w, word in enumerate(words):
            segs = [p for p in syn.phones if p.word == w]
            assert segs, (speaker.id, sentence.text, word)
            timings.append((segs[0].start, segs[-1].end))
            said = [p.phone for p in segs if p.phone != SILENCE]
            assert _says(said, _PATTERNS[word]), (speaker.id, sentence.text, word, said)
        # One span per word, in order, without overlap, inside the audio.
        owners = [p.word for p in syn.phones if p.word >= 0]
        assert owners == sorted(owners), (speaker.id, sentence.text)
        assert 0.0 <= timings[0][0]
        assert timings[-1][1] <= syn.duration + 1e-9
        for (s0, e0), (s1, _) in zip(timings, timings[1:], strict=False):
            assert s0 < e0 <= s1 + 1e-9, (speaker.id, sentence.text, timings)


def test_a_stray_word_event_leaves_the_words_alone(spoken):
    """One library speaking many utterances (as the corpus once did) gives extra word events at the end.

    Their phonemes must go to the same words as in the fresh child process the corpus uses.
    """
    engine = _Espeak()
    stray = 0
    for spk in ESPEAK_SPEAKERS:
        pitch = int(np.clip(round(50 * spk.voice.pitch), 0, 99))
        for k, (sentence, rate) in enumerate(zip(SENTENCES, RATES, strict=True)):
            words = sentence.spoken_words
            wpm = int(round(175 * spk.rate * rate))
            pcm, events = engine.speak(spk.voice.name, " ".join(words), wpm, pitch)
            stray += sum(1 for e in events if e[0] == _EVENT_WORD) != len(words)
            n = len(pcm) // 2
            phones = fit_to_duration(
                _events_to_phones(events, engine.sample_rate, n, words), n / engine.sample_rate
            )
            assert _word_labels(phones, len(words)) == _word_labels(spoken[spk.id][k].phones, len(words))
    if stray == 0:
        pytest.skip("this libespeak-ng gave no stray word events; nothing to check against")


def test_a_word_without_phonemes_is_an_error():
    words = ["bin", "blue"]
    # Word events at text positions 1 ("bin") and 0 (no word): "blue" never starts.
    events = [
        (_EVENT_WORD, 0, "", 1),
        (7, 0, "b", 1),
        (7, 100, "ɪ", 1),
        (_EVENT_WORD, 200, "", 0),
        (7, 200, "", 0),
    ]
    with pytest.raises(VoiceEngineFailed, match="blue"):
        _events_to_phones(events, 1000, 300, words)


def test_word_events_are_placed_by_text_position():
    words = ["set", "Z", "two"]  # characters 1-3, 5, 7-9 of "set Z two"
    events = [
        (_EVENT_WORD, 0, "", 1),
        (7, 0, "s", 1),
        (7, 10, "ɛ", 1),
        (_EVENT_WORD, 20, "", 2),  # a second event inside "set" does not start a new word
        (7, 20, "t", 2),
        (_EVENT_WORD, 30, "", 5),
        (7, 30, "z", 5),
        (7, 40, "ɛd", 5),
        (_EVENT_WORD, 60, "", 7),
        (7, 60, "t", 7),
        (7, 70, "uː", 7),
        (7, 90, "", 10),
        (_EVENT_WORD, 95, "", 0),  # the stray end-of-utterance event
        (7, 95, "", 0),
    ]
    phones = _events_to_phones(events, 100, 100, words)
    assert [(p.phone, p.word) for p in phones] == [
        ("s", 0), ("eh", 0), ("t", 0), ("z", 1), ("eh", 1), ("d", 1), ("t", 2), ("uw", 2),
        (SILENCE, -1), (SILENCE, -1),
    ]  # fmt: skip
    assert phones[5].start == pytest.approx(0.5) and phones[5].end == pytest.approx(0.6)
