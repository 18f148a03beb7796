"""The two offline ASRs of the evaluation: pocketsphinx with the corpus's JSGF grammar on GRID sentences
spoken by flite and espeak-ng, and Whisper base (packaged weights) on CMU ARCTIC a0007."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from diffv2s.audio import load_wav
from lab.corpus.sentences import Sentence
from lab.evaluation.grammar_asr import GrammarASR, grammar_dictionary, jsgf_grammar
from lab.evaluation.text import word_errors
from lab.evaluation.whisper_asr import WhisperASR, whisper_base_dir

# (engine, voice, sentence): spoken with letter names as the corpus generator spells them.
SPOKEN = [
    ("flite", "slt", "bin blue at f two now"),
    ("flite", "awb", "set white in q zero please"),
    ("flite", "kal", "place red by a seven soon"),
    ("flite", "rms", "lay green with s nine again"),
    ("espeak-ng", "en+f3", "bin red with m zero now"),
    ("espeak-ng", "en", "set green in y five soon"),
]
# CMU ARCTIC prompt a0007.
ARCTIC_A0007 = "and you always want to see it in the superlative degree"


def speak(engine: str, voice: str, text: str, path: Path) -> None:
    words = " ".join(Sentence.from_text(text).spoken_words)
    if engine == "flite":
        subprocess.run(["flite", "-voice", voice, "-t", words, "-o", str(path)], check=True)
    else:
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), words], check=True)


def test_grammar_lists_every_slot_word_with_a_pronunciation() -> None:
    gram = jsgf_grammar()
    assert "public <sentence> = <verb> <colour> <preposition> <letter> <digit> <adverb>;" in gram
    entries = dict(line.split(" ", 1) for line in grammar_dictionary().splitlines())
    for text in ("bin blue at f two now", "place red by a seven soon"):
        for word in text.split():
            assert word in entries
    assert entries["a"] == "EY"  # the letter's name, not the article


@pytest.mark.skipif(
    shutil.which("flite") is None or shutil.which("espeak-ng") is None, reason="needs flite + espeak-ng"
)
def test_grammar_asr_recognises_grid_sentences_spoken_by_speech_engines(tmp_path: Path) -> None:
    asr = GrammarASR()
    refs, hyps = [], []
    for k, (engine, voice, text) in enumerate(SPOKEN):
        path = tmp_path / f"s{k}.wav"
        speak(engine, voice, text, path)
        # 22.05 kHz, as the evaluation hands it audio; the ASR resamples to 16 kHz itself.
        refs.append(text)
        hyps.append(asr.transcribe(load_wav(path, 22050), 22050))
    assert word_errors(refs, hyps).wer <= 0.2, list(zip(refs, hyps, strict=True))


def test_grammar_asr_returns_no_sentence_for_silence() -> None:
    assert GrammarASR().transcribe(np.zeros(16000, np.float32), 16000) == ""


def test_whisper_model_is_assembled_from_the_packaged_parts(tmp_path: Path) -> None:
    folder = whisper_base_dir(tmp_path)
    size = folder.joinpath("model.bin").stat().st_size
    assert size > 100_000_000
    assert {p.name for p in folder.iterdir()} == {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.json",
    }
    # Second call reuses the joined file.
    mtime = folder.joinpath("model.bin").stat().st_mtime_ns
    assert whisper_base_dir(tmp_path) == folder
    assert folder.joinpath("model.bin").stat().st_mtime_ns == mtime


def test_whisper_transcribes_arctic_a0007(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("pysptk")
    assert spec is not None and spec.submodule_search_locations
    wav = Path(next(iter(spec.submodule_search_locations))) / "example_audio_data" / "arctic_a0007.wav"
    asr = WhisperASR(cache_dir=tmp_path, threads=1)
    hyp = asr.transcribe(load_wav(wav, 16000), 16000)
    # Whisper base writes "separative" for "superlative": 1 error in 11 words.
    assert word_errors([ARCTIC_A0007], [hyp]).wer <= 0.2, hyp
