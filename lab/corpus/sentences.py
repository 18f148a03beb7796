"""GRID-style sentences: command + colour + preposition + letter + digit + adverb.

The written transcript keeps the GRID convention ("bin blue at f two now"). Speech engines read a
lone "a" as the article and some spell lowercase letters oddly, so the text handed to an engine
spells each letter so that every engine says its *name* (checked against each engine's phones).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMMANDS = ("bin", "lay", "place", "set")
COLOURS = ("blue", "green", "red", "white")
PREPOSITIONS = ("at", "by", "in", "with")
LETTERS = tuple("abcdefghijklmnopqrstuvxyz")  # GRID has no "w" (three syllables)
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ADVERBS = ("again", "now", "please", "soon")

SLOTS = ("command", "colour", "preposition", "letter", "digit", "adverb")
SLOT_WORDS: dict[str, tuple[str, ...]] = {
    "command": COMMANDS,
    "colour": COLOURS,
    "preposition": PREPOSITIONS,
    "letter": LETTERS,
    "digit": DIGITS,
    "adverb": ADVERBS,
}
N_SENTENCES = int(np.prod([len(SLOT_WORDS[s]) for s in SLOTS]))  # 64 000

# A capital letter alone is read as its name by festival, flite, espeak-ng and piper, except "A",
# which all of them read as the article; "eigh" is said /eɪ/ by all four.
_LETTER_SPELLING = {letter: letter.upper() for letter in LETTERS} | {"a": "eigh"}


@dataclass(frozen=True, order=True)
class Sentence:
    """One GRID sentence; `index` is its position in the full grammar (0 <= index < N_SENTENCES)."""

    command: str
    colour: str
    preposition: str
    letter: str
    digit: str
    adverb: str

    @property
    def words(self) -> list[str]:
        """Transcript words in GRID convention, e.g. ["bin", "blue", "at", "f", "two", "now"]."""
        return [self.command, self.colour, self.preposition, self.letter, self.digit, self.adverb]

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def spoken_words(self) -> list[str]:
        """The words as handed to a speech engine (letters spelled so they are said as names)."""
        words = self.words
        words[3] = _LETTER_SPELLING[self.letter]
        return words

    @property
    def index(self) -> int:
        idx = 0
        for slot in SLOTS:
            options = SLOT_WORDS[slot]
            idx = idx * len(options) + options.index(getattr(self, slot))
        return idx

    @classmethod
    def from_index(cls, index: int) -> Sentence:
        if not 0 <= index < N_SENTENCES:
            raise ValueError(f"sentence index {index} outside 0..{N_SENTENCES - 1}")
        picks: list[str] = []
        for slot in reversed(SLOTS):
            options = SLOT_WORDS[slot]
            index, k = divmod(index, len(options))
            picks.append(options[k])
        return cls(*reversed(picks))

    @classmethod
    def from_text(cls, text: str) -> Sentence:
        """Parse a GRID transcript ("bin blue at f two now"); raises ValueError if it is not one."""
        words = normalize_text(text).split()
        if len(words) != len(SLOTS):
            raise ValueError(f"not a GRID sentence: {text!r}")
        for slot, word in zip(SLOTS, words, strict=True):
            if word not in SLOT_WORDS[slot]:
                raise ValueError(f"{word!r} is not a GRID {slot} in {text!r}")
        return cls(*words)


def normalize_text(text: str) -> str:
    """Lower case, letters and digits spelled as GRID words ("F2" -> "f two"), single spaces."""
    out: list[str] = []
    for token in text.lower().replace(",", " ").replace(".", " ").split():
        if token.isdigit():
            out.extend(DIGITS[int(d)] for d in token)
        elif len(token) == 2 and token[0].isalpha() and token[1].isdigit():
            out.extend([token[0], DIGITS[int(token[1])]])
        else:
            out.append(token)
    return " ".join(out)


def draw_sentences(rng: np.random.Generator, n: int) -> list[Sentence]:
    """`n` distinct sentences drawn uniformly from the grammar, in draw order."""
    if n > N_SENTENCES:
        raise ValueError(f"the grammar has only {N_SENTENCES} sentences, asked for {n}")
    indices = rng.choice(N_SENTENCES, size=n, replace=False)
    return [Sentence.from_index(int(i)) for i in indices]
