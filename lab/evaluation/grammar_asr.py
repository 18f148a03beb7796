"""Grammar-constrained ASR: pocketsphinx (its bundled en-us acoustic model) with a JSGF grammar of the corpus.

The grammar is the GRID sentence grammar itself (verb colour preposition letter digit adverb), so every
hypothesis is a six-word GRID sentence and the errors are the acoustic confusions within a slot, which is
what an intelligibility score of this corpus should count. The pronunciation dictionary holds only the
grammar's words, taken from the bundled CMU dictionary, with the letter "a" as its name /EY/ only (CMUdict
also lists the article /AH/, which would let any schwa pass for the letter).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from lab.evaluation.signals import resample
from lab.evaluation.text import grid_vocabulary

SAMPLE_RATE = 16000
_LETTER_OVERRIDES = {"a": "EY"}


def jsgf_grammar() -> str:
    """The corpus grammar as JSGF text (one public rule, `<sentence>`)."""
    lines = ["#JSGF V1.0;", "grammar grid;"]
    slots = grid_vocabulary()
    for name, words in slots.items():
        lines.append(f"<{name}> = {' | '.join(words)};")
    lines.append("public <sentence> = " + " ".join(f"<{name}>" for name in slots) + ";")
    return "\n".join(lines) + "\n"


def _model_dir() -> Path:
    from pocketsphinx import get_model_path

    return Path(get_model_path()) / "en-us"


def grammar_dictionary() -> str:
    """Pronunciations of the grammar's words (CMUdict format), from the dictionary bundled with pocketsphinx."""
    words = {w for options in grid_vocabulary().values() for w in options}
    prons: dict[str, list[str]] = {w: [] for w in words}
    with open(_model_dir() / "cmudict-en-us.dict", encoding="utf-8") as fh:
        for line in fh:
            head, _, phones = line.strip().partition(" ")
            word = head.split("(")[0]
            if word in prons and word not in _LETTER_OVERRIDES:
                prons[word].append(phones.strip())
    for word, phones in _LETTER_OVERRIDES.items():
        prons[word] = [phones]
    missing = sorted(w for w, p in prons.items() if not p)
    if missing:
        raise RuntimeError(f"the pocketsphinx dictionary has no pronunciation for {missing}")
    lines = []
    for word in sorted(prons):
        for k, phones in enumerate(prons[word]):
            lines.append(f"{word if k == 0 else f'{word}({k + 1})'} {phones}")
    return "\n".join(lines) + "\n"


class GrammarASR:
    """Recognise GRID sentences. One decoder, reused; not thread-safe."""

    def __init__(self) -> None:
        from pocketsphinx import Config, Decoder

        model = _model_dir()
        with tempfile.TemporaryDirectory(prefix="diffv2s-asr-") as tmp:
            dict_path = Path(tmp) / "grid.dict"
            gram_path = Path(tmp) / "grid.gram"
            dict_path.write_text(grammar_dictionary())
            gram_path.write_text(jsgf_grammar())
            config = Config(
                hmm=str(model / "en-us"),
                dict=str(dict_path),
                jsgf=str(gram_path),
                lm=None,
                samprate=SAMPLE_RATE,
                # Speech engines write exact digital silence; without dither its log energies sink to the
                # floor and the decoder loses the sentence after a pause. A fixed seed keeps it repeatable.
                dither=True,
                seed=1,
                # The lattice best-path pass may end the hypothesis at a non-final grammar state (half a
                # sentence); the FSG search's own backtrace ends at the sentence's end.
                bestpath=False,
                loglevel="FATAL",
            )
            # The decoder reads both files while it is built; they are not needed afterwards.
            self._decoder = Decoder(config)

    def transcribe(self, wav: np.ndarray, sample_rate: int) -> str:
        """wav: [N] float in [-1, 1] -> the recognised sentence ("" when nothing was recognised)."""
        audio = resample(wav, sample_rate, SAMPLE_RATE)
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        dec = self._decoder
        dec.start_utt()
        dec.process_raw(pcm, no_search=False, full_utt=True)
        dec.end_utt()
        hyp = dec.hyp()
        return "" if hyp is None else str(hyp.hypstr).strip()
