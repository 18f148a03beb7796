"""espeak-ng through libespeak-ng (ctypes): phoneme and word events carry their sample positions.

The command line has no timings for its own voices (`--pho` is for mbrola only), so the library is
called in synchronous mode with phoneme events switched on, names in IPA. The library keeps state
from one utterance to the next (pitch flutter phase), so the same text would not give the same
samples twice in one process: each utterance is spoken by a fresh child process running this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import subprocess
import sys
from typing import Any

import numpy as np

from diffv2s.corpus.phones import SILENCE, PhoneSegment, ipa_to_phones
from diffv2s.corpus.tts import EngineFailed, EngineUnavailable, Synthesis, VoiceSpec

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_RATE, _PITCH = 1, 3
_DEFAULT_WPM, _DEFAULT_PITCH = 175, 50


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class _Espeak:
    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng")
        if path is None:
            raise EngineUnavailable("libespeak-ng is not installed (apt-get install espeak-ng)")
        self.lib = ctypes.CDLL(path)
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT
        self.sample_rate = int(self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, options))
        if self.sample_rate <= 0:
            raise EngineUnavailable("libespeak-ng failed to initialise (espeak-ng-data missing?)")
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[int, int, str]] = []  # (type, sample, phoneme name)
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: C holds only the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]

    def _on_audio(self, wav: Any, n: int, events: Any) -> int:
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type in (_EVENT_WORD, _EVENT_PHONEME):
                name = bytes(ev.id).split(b"\0", 1)[0].decode("utf-8", "replace")
                self.events.append((ev.type, ev.sample, name))
            i += 1
        return 0

    def speak(
        self, voice: str, text: str, wpm: int, pitch: int
    ) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EngineUnavailable(f"espeak-ng voice {voice!r} is not installed")
        self.lib.espeak_SetParameter(_RATE, wpm, 0)
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)
        self.chunks, self.events = [], []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        return audio, self.events


def _speak_here(request: dict[str, Any]) -> None:
    """Child side: speak one request, write a JSON header line then float32 samples to stdout."""
    try:
        engine = _Espeak()
        audio, events = engine.speak(request["voice"], request["text"], request["wpm"], request["pitch"])
        header = {"sample_rate": engine.sample_rate, "events": events, "n": len(audio)}
    except EngineUnavailable as exc:
        header, audio = {"unavailable": exc.message}, np.zeros(0, np.float32)
    sys.stdout.buffer.write(json.dumps(header).encode() + b"\n" + audio.astype("<f4").tobytes())
    sys.stdout.buffer.flush()


def synthesize_espeak(voice: VoiceSpec, words: list[str], rate: float) -> Synthesis:
    request = {
        "voice": voice.name,
        "text": " ".join(words),
        "wpm": int(round(_DEFAULT_WPM * rate)),
        "pitch": int(np.clip(round(_DEFAULT_PITCH * voice.pitch), 0, 99)),
    }
    proc = subprocess.run(
        [sys.executable, "-m", __name__], input=json.dumps(request).encode(), capture_output=True, timeout=120
    )
    head, sep, body = proc.stdout.partition(b"\n")
    if proc.returncode != 0 or not sep:
        raise EngineFailed(f"espeak-ng child failed: {proc.stderr.decode(errors='replace')[-400:]}")
    header = json.loads(head)
    if "unavailable" in header:
        raise EngineUnavailable(header["unavailable"])
    audio = np.frombuffer(body, dtype="<f4").copy()
    sr = int(header["sample_rate"])
    events = [(int(k), int(s), str(n)) for k, s, n in header["events"]]
    return Synthesis(audio, sr, _events_to_phones(events, sr, len(audio), len(words)), {"engine": "espeak"})


def _events_to_phones(
    events: list[tuple[int, int, str]], sr: int, n_samples: int, n_words: int
) -> list[PhoneSegment]:
    """Each phoneme event marks its phoneme's start; the next event (or the end) marks its end."""
    starts: list[tuple[float, str, int]] = []
    word = -1
    for kind, sample, name in events:
        if kind == _EVENT_WORD:
            word += 1
            continue
        starts.append((sample / sr, name, word))
    if word + 1 != n_words:
        raise EngineFailed(f"espeak-ng reported {word + 1} words, expected {n_words}")
    phones: list[PhoneSegment] = []
    for i, (t0, name, w) in enumerate(starts):
        t1 = starts[i + 1][0] if i + 1 < len(starts) else n_samples / sr
        units = ipa_to_phones(name)
        # A diphone-like event ("ɪə") is split evenly; its parts share the word.
        step = (t1 - t0) / len(units)
        for k, ph in enumerate(units):
            phones.append(
                PhoneSegment(ph, name, t0 + k * step, t0 + (k + 1) * step, -1 if ph == SILENCE else w)
            )
    return phones


if __name__ == "__main__":
    _speak_here(json.loads(sys.stdin.read()))
