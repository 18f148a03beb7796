"""Phone segments and the mapping of each engine's phone labels onto one ARPAbet-like set.

festival and flite speak the US "radio" phone set (ARPAbet, lower case); espeak-ng and piper give IPA.
Everything is mapped onto `PHONES` so the viseme model has one table.
"""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

SILENCE = "sil"
VOWELS = frozenset("aa ae ah ao aw ay eh er ey ih iy ow oy uh uw".split())
CONSONANTS = frozenset("b ch d dh f g hh jh k l m n ng p r s sh t th v w y z zh".split())
PHONES = frozenset(VOWELS | CONSONANTS | {SILENCE})
BILABIALS = frozenset({"p", "b", "m"})


@dataclass(frozen=True)
class PhoneSegment:
    """One phone: canonical `phone`, the engine's own `label`, times in seconds, index of its word.

    `word` indexes the sentence's words; -1 for silence.
    """

    phone: str
    label: str
    start: float
    end: float
    word: int

    @property
    def centre(self) -> float:
        return 0.5 * (self.start + self.end)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhoneSegment:
        return cls(str(d["phone"]), str(d["label"]), float(d["start"]), float(d["end"]), int(d["word"]))


_ARPABET_ALIASES = {
    "ax": "ah",
    "axr": "er",
    "ix": "ih",
    "dx": "d",
    "el": "l",
    "em": "m",
    "en": "n",
    "nx": "n",
    "h#": SILENCE,
    "pau": SILENCE,
    "#": SILENCE,
    "brth": SILENCE,
}


def arpabet_to_phone(label: str) -> str:
    """festival / flite label -> canonical phone ("ax" -> "ah", "pau" -> "sil")."""
    lab = label.lower().rstrip("012")
    lab = _ARPABET_ALIASES.get(lab, lab)
    if lab not in PHONES:
        raise ValueError(f"unknown ARPAbet phone {label!r}")
    return lab


# Longest match first. Two-letter IPA units cover diphthongs and affricates.
_IPA_UNITS: dict[str, tuple[str, ...]] = {
    "aɪə": ("ay",),
    "eɪ": ("ey",),
    "aɪ": ("ay",),
    "ɑɪ": ("ay",),
    "aʊ": ("aw",),
    "oʊ": ("ow",),
    "əʊ": ("ow",),
    "ɔɪ": ("oy",),
    "ɪə": ("ih", "ah"),
    "iə": ("iy", "ah"),
    "eə": ("eh",),
    "ɛə": ("eh",),
    "ʊə": ("uh",),
    "tʃ": ("ch",),
    "dʒ": ("jh",),
    "əl": ("l",),
    "i": ("iy",),
    "ɪ": ("ih",),
    "ᵻ": ("ih",),
    "ɨ": ("ih",),
    "e": ("eh",),
    "ɛ": ("eh",),
    "æ": ("ae",),
    "a": ("aa",),
    "ɑ": ("aa",),
    "ɒ": ("ao",),
    "ɔ": ("ao",),
    "o": ("ow",),
    "ʊ": ("uh",),
    "u": ("uw",),
    "ʌ": ("ah",),
    "ə": ("ah",),
    "ɐ": ("ah",),
    "ɚ": ("er",),
    "ɜ": ("er",),
    "ɝ": ("er",),
    "b": ("b",),
    "d": ("d",),
    "f": ("f",),
    "g": ("g",),
    "ɡ": ("g",),
    "h": ("hh",),
    "ç": ("hh",),
    "x": ("k",),
    "j": ("y",),
    "k": ("k",),
    "l": ("l",),
    "ɫ": ("l",),
    "m": ("m",),
    "n": ("n",),
    "ŋ": ("ng",),
    "p": ("p",),
    "ɹ": ("r",),
    "r": ("r",),
    "ɾ": ("d",),
    "s": ("s",),
    "ʃ": ("sh",),
    "t": ("t",),
    "ʔ": ("t",),  # a glottal stop stands in for /t/ ("at" in British voices)
    "θ": ("th",),
    "ð": ("dh",),
    "v": ("v",),
    "w": ("w",),
    "z": ("z",),
    "ʒ": ("zh",),
    "ʉ": ("uw",),
    "ɯ": ("uw",),
    "y": ("uw",),
    "ɵ": ("ow",),
    "ø": ("ow",),
    "œ": ("eh",),
    "ɘ": ("ah",),
    "ɤ": ("ah",),
    "ɬ": ("l",),
    "ʎ": ("l",),
    "ʍ": ("w",),
    "ɣ": ("g",),
    "ɟ": ("g",),
    "c": ("k",),
    "q": ("k",),
    "χ": ("k",),
    "β": ("b",),
    "ɸ": ("f",),
    "ʋ": ("v",),
    "ɻ": ("r",),
    "ʁ": ("r",),
    "ɽ": ("d",),
    "ɲ": ("n",),
    "ɕ": ("sh",),
    "ʑ": ("zh",),
    "_": (SILENCE,),
}
# Marks that carry no articulation of their own: stress, length, ties, and (below) every combining
# diacritic (dental, syllabic, ...) and modifier letter (aspiration, palatalisation, ...).
_IPA_MARKS = frozenset("ˈˌː͡‿.- ")
_FALLBACK = ("ah",)  # an unknown symbol: a neutral open mouth rather than a failed corpus


def _is_mark(ch: str) -> bool:
    return ch in _IPA_MARKS or unicodedata.combining(ch) > 0 or unicodedata.category(ch) in ("Lm", "Mn", "Sk")


def strip_ipa_marks(label: str) -> str:
    return "".join(ch for ch in label if not _is_mark(ch))


def ipa_to_phones(label: str) -> tuple[str, ...]:
    """An IPA phoneme string (one espeak-ng phoneme event) -> canonical phones ("eɪ" -> ("ey",)).

    A symbol outside the table becomes a neutral vowel; the segment keeps the engine's label.
    """
    text = strip_ipa_marks(label)
    if not text:
        return (SILENCE,)
    out: list[str] = []
    i = 0
    while i < len(text):
        for size in (3, 2, 1):
            unit = text[i : i + size]
            if unit in _IPA_UNITS:
                out.extend(_IPA_UNITS[unit])
                i += size
                break
        else:
            out.extend(_FALLBACK)
            i += 1
    return tuple(out)


def merge_silences(segments: list[PhoneSegment]) -> list[PhoneSegment]:
    """Join neighbouring silences and drop zero-length segments."""
    out: list[PhoneSegment] = []
    for seg in segments:
        if seg.end - seg.start <= 1e-6:
            continue
        if out and seg.phone == SILENCE and out[-1].phone == SILENCE:
            prev = out[-1]
            out[-1] = PhoneSegment(SILENCE, prev.label, prev.start, seg.end, -1)
        else:
            out.append(seg)
    return out
