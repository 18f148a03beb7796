"""Evaluation metrics on real speech (CMU ARCTIC a0007 carried by pysptk): STOI/ESTOI, PESQ, MCD, SECS,
DNSMOS, and the transcript normalisation / WER / slot accuracy."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from diffv2s.audio import load_wav
from lab.evaluation.dnsmos import dnsmos
from lab.evaluation.mcd import mel_cepstral_distortion
from lab.evaluation.signal_metrics import pesq_wb, stoi
from lab.evaluation.speaker_similarity import SpeakerSimilarity
from lab.evaluation.text import normalize_transcript, slot_accuracy, slot_hits, word_errors

SR = 16000


def arctic_path() -> Path:
    spec = importlib.util.find_spec("pysptk")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "example_audio_data" / "arctic_a0007.wav"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    torch.set_num_threads(1)
    return load_wav(arctic_path(), SR).astype(np.float64)


@pytest.fixture(scope="module")
def other_utterance(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A different sentence by a different (synthetic) voice."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path_factory.mktemp("espeak") / "other.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "lay green with the red ball again"], check=True)
    return load_wav(path, SR).astype(np.float64)


def noisy(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(x))
    scale = np.sqrt(np.mean(x**2) / 10 ** (snr_db / 10) / np.mean(noise**2))
    return x + scale * noise


def test_stoi_and_estoi_are_one_for_the_signal_itself_and_lower_with_noise(speech: np.ndarray) -> None:
    assert stoi(speech, speech, SR) == pytest.approx(1.0, abs=1e-6)
    assert stoi(speech, speech, SR, extended=True) == pytest.approx(1.0, abs=1e-6)
    mild, heavy = noisy(speech, 10.0), noisy(speech, -5.0)
    assert stoi(speech, heavy, SR) < stoi(speech, mild, SR) < 0.99
    assert stoi(speech, heavy, SR, extended=True) < stoi(speech, mild, SR, extended=True) < 0.99


def test_stoi_resamples_other_rates(speech: np.ndarray) -> None:
    at_22k = resample_poly(speech, 441, 320)
    assert stoi(at_22k, at_22k, 22050) == pytest.approx(1.0, abs=1e-6)


def test_pesq_is_maximal_for_the_signal_itself_and_drops_with_noise(speech: np.ndarray) -> None:
    assert pesq_wb(speech, speech, SR) > 4.5
    assert pesq_wb(speech, noisy(speech, 0.0), SR) < 2.0


def test_mcd_is_zero_for_itself_and_grows_with_distortion(
    speech: np.ndarray, other_utterance: np.ndarray
) -> None:
    assert mel_cepstral_distortion(speech, speech, SR) == pytest.approx(0.0, abs=1e-9)
    slight = mel_cepstral_distortion(speech, noisy(speech, 30.0), SR)
    different = mel_cepstral_distortion(speech, other_utterance, SR)
    assert 0.0 < slight < different
    assert different > 5.0  # another sentence by another voice is far in cepstral distance


def test_secs_is_high_for_the_same_voice_and_lower_for_a_changed_or_other_voice(
    speech: np.ndarray, other_utterance: np.ndarray
) -> None:
    sim = SpeakerSimilarity()
    same = sim.secs(speech, speech, SR)
    noisy_same = sim.secs(speech, noisy(speech, 20.0), SR)
    # Played 30 % faster: pitch and formants up by the same factor, i.e. another voice.
    shifted = sim.secs(speech, resample_poly(speech, 10, 13), SR)
    other = sim.secs(speech, other_utterance, SR)
    assert same == pytest.approx(1.0, abs=1e-5)
    assert noisy_same > 0.75
    assert shifted < noisy_same - 0.1
    assert other < noisy_same - 0.1


def test_dnsmos_rates_speech_above_noise(speech: np.ndarray) -> None:
    clean = dnsmos(speech, SR)
    noise = dnsmos(0.1 * np.random.default_rng(1).standard_normal(2 * SR), SR)
    assert set(clean) == {"ovrl", "sig", "bak", "p808"}
    assert all(1.0 <= v <= 5.0 for v in clean.values())
    assert clean["ovrl"] > noise["ovrl"] + 1.0


def test_normalisation_spells_digits_and_letter_names() -> None:
    assert normalize_transcript("Bin blue at F2, now.") == "bin blue at f two now"
    assert normalize_transcript("Play screen by G-3 now!") == "play screen by g three now"
    assert normalize_transcript("set white by eff 27 soon") == "set white by f two seven soon"
    assert normalize_transcript("Lay red with zed nine please") == "lay red with z nine please"


def test_wer_counts_edits_over_reference_words() -> None:
    refs = ["bin blue at f two now", "set red by a one soon"]
    hyps = ["Bin blue at F2 now, please.", "set red by one soon"]  # 1 insertion, then 1 deletion
    errors = word_errors(refs, hyps)
    assert (errors.substitutions, errors.deletions, errors.insertions) == (0, 1, 1)
    assert errors.wer == pytest.approx(2 / 12)
    assert word_errors(["bin blue at f two now"], [""]).wer == 1.0


def test_slot_accuracy_follows_the_alignment_not_the_position() -> None:
    # "at" dropped: the later slots are still right although every position after it shifted.
    assert slot_hits("bin blue at f two now", "bin blue f two now") == {
        "verb": True,
        "colour": True,
        "preposition": False,
        "letter": True,
        "digit": True,
        "adverb": True,
    }
    acc = slot_accuracy(["bin blue at f two now", "lay green by s nine soon"], ["bin blue at s two now", ""])
    assert acc["verb"] == 0.5 and acc["letter"] == 0.0 and acc["digit"] == 0.5
