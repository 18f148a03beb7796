"""espeak-ng through libespeak-ng (ctypes): phoneme and word events carry their sample positions.

The command line has no timings for its own voices (`--pho` is for mbrola only), so the library is
called in synchronous mode with phoneme events switched on, names in IPA. The library keeps state
from one utterance to the next (pitch flutter phase), so the same text would not give the same
samples twice in one process: each utterance is spoken by a fresh child process running this module.

Phonemes are given to words by the character position each word event carries, not by counting word
events: a library that has spoken before can end an utterance with an extra word event at position 0
(seen with en-us+m3 after a change of rate), and a count then no longer matches the words.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

# The child imports only the standard library: numpy alone would triple its start-up time, which is
# paid once per utterance. The parent side imports what it needs inside its functions.
if TYPE_CHECKING:
    import numpy as np

    from lab.corpus.phones import PhoneSegment
    from lab.corpus.speech import Synthesis, VoiceSpec

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

# (event type, sample where it starts, phoneme name ("" for a word), 1-based character position in the text)
Event = tuple[int, int, str, int]


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


class _Unavailable(RuntimeError):
    """The library or a voice is missing (the parent turns it into VoiceEngineUnavailable)."""


class _Espeak:
    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng")
        if path is None:
            raise _Unavailable("libespeak-ng is not installed (apt-get install espeak-ng)")
        self.lib = ctypes.CDLL(path)
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT
        self.sample_rate = int(self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, options))
        if self.sample_rate <= 0:
            raise _Unavailable("libespeak-ng failed to initialise (espeak-ng-data missing?)")
        self.chunks: list[bytes] = []
        self.events: list[Event] = []
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: C holds only the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]

    def _on_audio(self, wav: Any, n: int, events: Any) -> int:
        if n > 0:
            self.chunks.append(ctypes.string_at(wav, 2 * n))  # n int16 samples
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type in (_EVENT_WORD, _EVENT_PHONEME):
                name = bytes(ev.id).split(b"\0", 1)[0].decode("utf-8", "replace")
                self.events.append((ev.type, ev.sample, name, ev.text_position))
            i += 1
        return 0

    def speak(self, voice: str, text: str, wpm: int, pitch: int) -> tuple[bytes, list[Event]]:
        """-> (native-endian int16 samples at `sample_rate`, events)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise _Unavailable(f"espeak-ng voice {voice!r} is not installed")
        self.lib.espeak_SetParameter(_RATE, wpm, 0)
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)
        self.chunks, self.events = [], []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        return b"".join(self.chunks), self.events


def _speak_here(request: dict[str, Any]) -> None:
    """Child side: speak one request, write a JSON header line then the int16 samples to stdout."""
    try:
        engine = _Espeak()
        pcm, events = engine.speak(request["voice"], request["text"], request["wpm"], request["pitch"])
        header: dict[str, Any] = {"sample_rate": engine.sample_rate, "events": events, "n": len(pcm) // 2}
    except _Unavailable as exc:
        header, pcm = {"unavailable": str(exc)}, b""
    sys.stdout.buffer.write(json.dumps(header).encode() + b"\n" + pcm)
    sys.stdout.buffer.flush()


def synthesize_espeak(voice: VoiceSpec, words: list[str], rate: float) -> Synthesis:
    import numpy as np

    from lab.corpus.speech import Synthesis, VoiceEngineFailed, VoiceEngineUnavailable

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
        raise VoiceEngineFailed(f"espeak-ng child failed: {proc.stderr.decode(errors='replace')[-400:]}")
    header = json.loads(head)
    if "unavailable" in header:
        raise VoiceEngineUnavailable(header["unavailable"])
    if len(body) != 2 * int(header["n"]):
        raise VoiceEngineFailed(f"espeak-ng child sent {len(body)} bytes for {header['n']} samples")
    audio = _pcm_to_float(body)
    sr = int(header["sample_rate"])
    events = [(int(k), int(s), str(n), int(p)) for k, s, n, p in header["events"]]
    return Synthesis(audio, sr, _events_to_phones(events, sr, len(audio), words), {"engine": "espeak"})


def _pcm_to_float(pcm: bytes) -> np.ndarray:
    """Native int16 samples -> audio: [N] float32 in [-1, 1)."""
    import numpy as np

    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0


def _word_at(position: int, spans: list[tuple[int, int]]) -> int:
    """Index of the word whose characters hold 1-based `position`, or -1 (a space, 0, past the end)."""
    for w, (start, end) in enumerate(spans):
        if start < position <= end:
            return w
    return -1


def _events_to_phones(events: list[Event], sr: int, n_samples: int, words: list[str]) -> list[PhoneSegment]:
    """Each phoneme event marks its phoneme's start; the next event (or the end) marks its end.

    A word event sets the word of the phonemes after it by its text position in `" ".join(words)`.
    A word event outside every word is ignored, as is a second one inside the same word; a word that
    no event lands in, or events that go back to an earlier word, raise VoiceEngineFailed.
    """
    from lab.corpus.phones import SILENCE, PhoneSegment, ipa_to_phones
    from lab.corpus.speech import VoiceEngineFailed

    spans: list[tuple[int, int]] = []
    offset = 0
    for text in words:
        spans.append((offset, offset + len(text)))  # 0-based [start, end) == 1-based (start, end]
        offset += len(text) + 1
    starts: list[tuple[float, str, int]] = []
    word = -1
    for kind, sample, name, position in events:
        if kind == _EVENT_WORD:
            w = _word_at(position, spans)
            if 0 <= w < word:
                raise VoiceEngineFailed(f"espeak-ng went back from word {word} to word {w} in {words}")
            word = max(word, w)
            continue
        starts.append((sample / sr, name, word))
    heard = {w for _, _, w in starts}
    missing = [text for w, text in enumerate(words) if w not in heard]
    if missing:
        raise VoiceEngineFailed(f"espeak-ng gave no phonemes for {missing} in {words}")
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
