"""flite (Debian `flite`): `-psdur` prints each segment with its end time.

flite prints no word membership, so each word's phone count is taken from flite saying that word
alone (same lexicon and letter-to-sound rules) and the sentence's phones are shared out in order.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.corpus.engines.wavio import read_wav
from lab.corpus.phones import SILENCE, PhoneSegment, arpabet_to_phone
from lab.corpus.speech import Synthesis, VoiceEngineFailed, VoiceEngineUnavailable, VoiceSpec

_VOICES = ("kal", "kal16", "awb", "rms", "slt")  # compiled into Debian's flite


def _exe() -> str:
    exe = shutil.which("flite")
    if exe is None:
        raise VoiceEngineUnavailable("flite is not installed (apt-get install flite)")
    return exe


def _run(args: list[str]) -> str:
    proc = subprocess.run([_exe(), *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise VoiceEngineFailed(f"flite {' '.join(args[:2])} failed: {proc.stderr.strip()[-400:]}")
    return proc.stdout


@functools.lru_cache(maxsize=512)
def _word_phone_count(voice: str, word: str) -> int:
    out = _run(["-voice", voice, "-ps", "-t", word, "-o", "none"])
    return sum(1 for p in out.split() if arpabet_to_phone(p) != SILENCE)


def synthesize_flite(voice: VoiceSpec, words: list[str], rate: float) -> Synthesis:
    if voice.name not in _VOICES:
        raise VoiceEngineUnavailable(f"flite voice {voice.name!r} is not one of {_VOICES}")
    with tempfile.TemporaryDirectory(prefix="flite-") as tmp:
        wav = Path(tmp) / "out.wav"
        args = ["-voice", voice.name, "-psdur", "--setf", f"duration_stretch={1.0 / rate:.4f}"]
        if voice.pitch != 1.0:
            args += ["--setf", f"f0_shift={voice.pitch:.4f}"]  # scales the whole F0 contour
        out = _run([*args, "-t", " ".join(words), "-o", str(wav)])
        audio, sr = read_wav(wav)
    counts = [_word_phone_count(voice.name, w) for w in words]
    return Synthesis(audio, sr, _parse_psdur(out, counts), {"engine": "flite"})


def _parse_psdur(stdout: str, counts: list[int]) -> list[PhoneSegment]:
    """Tokens `<phone>:<end>`; speech phones are given to words by the per-word counts."""
    owners = [w for w, n in enumerate(counts) for _ in range(n)]
    phones: list[PhoneSegment] = []
    start = 0.0
    k = 0
    for token in stdout.split():
        label, sep, end_text = token.rpartition(":")
        if not sep:
            continue
        phone, end = arpabet_to_phone(label), float(end_text)
        if phone == SILENCE:
            word = -1
        else:
            if k >= len(owners):
                raise VoiceEngineFailed(f"flite said more phones than its words have: {stdout!r}")
            word = owners[k]
            k += 1
        phones.append(PhoneSegment(phone, label, start, end, word))
        start = end
    if k != len(owners):
        raise VoiceEngineFailed(f"flite said {k} phones, its words have {len(owners)}")
    return phones
