"""Transcript normalisation, word error rate and per-slot accuracy of GRID sentences.

Both ASRs' outputs and the references go through `normalize_transcript` before scoring, so "F2",
"f-2", "eff two" and "f two" all read "f two". Spelled letter names map to the letter: the GRID vocabulary
has no word that is also a letter name ("see", "why", "you", "are" never occur in a GRID sentence), so the
mapping can only turn an open-vocabulary ASR's spelling of the letter into the letter itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer

from lab.corpus.sentences import DIGITS, SLOT_WORDS, SLOTS

# The issue calls GRID's first slot "verb"; the corpus grammar calls it "command".
SLOT_NAMES: dict[str, str] = {slot: ("verb" if slot == "command" else slot) for slot in SLOTS}

LETTER_NAMES: dict[str, str] = {
    "ay": "a", "eigh": "a", "bee": "b", "be": "b", "cee": "c", "see": "c", "sea": "c", "dee": "d",
    "ee": "e", "eff": "f", "ef": "f", "gee": "g", "aitch": "h", "eye": "i", "jay": "j", "kay": "k",
    "el": "l", "ell": "l", "em": "m", "en": "n", "oh": "o", "pee": "p", "cue": "q", "queue": "q",
    "ar": "r", "are": "r", "ess": "s", "es": "s", "tee": "t", "tea": "t", "you": "u", "vee": "v",
    "ex": "x", "why": "y", "wye": "y", "zed": "z", "zee": "z",
}  # fmt: skip

_NON_WORD = re.compile(r"[^a-z0-9']+")
_ALPHA_OR_DIGITS = re.compile(r"[a-z']+|\d+")


def normalize_transcript(text: str) -> str:
    """Lower case, punctuation dropped, letters and digits split apart and digits spelled ("F2" -> "f two",
    "27" -> "two seven", "G3" -> "g three"), letter names as letters ("eff" -> "f"), single spaces."""
    out: list[str] = []
    for chunk in _NON_WORD.sub(" ", text.lower().replace("'", "")).split():
        for token in _ALPHA_OR_DIGITS.findall(chunk):
            if token.isdigit():
                out.extend(DIGITS[int(d)] for d in token)
            else:
                out.append(LETTER_NAMES.get(token, token))
    return " ".join(out)


@dataclass(frozen=True)
class WordErrors:
    """Word-level edit counts summed over utterances; `wer` = errors / reference words."""

    substitutions: int
    deletions: int
    insertions: int
    reference_words: int

    @property
    def wer(self) -> float:
        errors = self.substitutions + self.deletions + self.insertions
        return errors / self.reference_words if self.reference_words else float("nan")


def word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> WordErrors:
    """Edit counts between normalised references and hypotheses (an empty hypothesis = all deleted)."""
    refs = [normalize_transcript(r) for r in references]
    hyps = [normalize_transcript(h) for h in hypotheses]
    if not refs:
        return WordErrors(0, 0, 0, 0)
    out = jiwer.process_words(refs, hyps)
    n_ref = sum(len(r.split()) for r in refs)
    return WordErrors(out.substitutions, out.deletions, out.insertions, n_ref)


def slot_hits(reference: str, hypothesis: str) -> dict[str, bool]:
    """Which GRID slots of `reference` the hypothesis got right: a reference word counts as right when the
    minimum-edit alignment pairs it with an identical hypothesis word (so an inserted or dropped word
    elsewhere does not shift the slots). The reference must be a six-word GRID sentence."""
    ref = normalize_transcript(reference).split()
    if len(ref) != len(SLOTS):
        raise ValueError(f"not a GRID sentence: {reference!r}")
    hyp = normalize_transcript(hypothesis)
    hit = [False] * len(ref)
    if hyp:
        for chunk in jiwer.process_words(" ".join(ref), hyp).alignments[0]:
            if chunk.type == "equal":
                for k in range(chunk.ref_start_idx, chunk.ref_end_idx):
                    hit[k] = True
    return {SLOT_NAMES[slot]: hit[k] for k, slot in enumerate(SLOTS)}


def slot_accuracy(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Share of utterances whose slot was recognised, per slot name (verb, colour, ..., adverb)."""
    counts = dict.fromkeys(SLOT_NAMES.values(), 0)
    for ref, hyp in zip(references, hypotheses, strict=True):
        for name, ok in slot_hits(ref, hyp).items():
            counts[name] += int(ok)
    n = len(references)
    return {name: (c / n if n else float("nan")) for name, c in counts.items()}


def grid_vocabulary() -> dict[str, tuple[str, ...]]:
    """Slot name -> the words that slot allows, in grammar order."""
    return {SLOT_NAMES[slot]: SLOT_WORDS[slot] for slot in SLOTS}
