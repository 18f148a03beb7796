"""festival (Debian `festival` + festvox voices): Segment end times and word membership per phone."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.corpus.engines.wavio import read_wav
from lab.corpus.phones import SILENCE, PhoneSegment, arpabet_to_phone
from lab.corpus.speech import Synthesis, VoiceEngineFailed, VoiceEngineUnavailable, VoiceSpec

# Diphone voices take their intonation targets from int_lr_params; HTS voices have their own F0 model.
_PITCHABLE = ("_diphone",)

_SCRIPT = """
(voice_{voice})
(Parameter.set 'Duration_Stretch (* (Parameter.get 'Duration_Stretch) {stretch:.4f}))
{pitch}
(set! utt (SynthText "{text}"))
(utt.save.wave utt "{wav}" 'riff)
(mapcar
  (lambda (s)
    (format t "SEG %s %.5f %s\\n" (item.name s) (item.feat s "end")
            (item.feat s "R:SylStructure.parent.parent.name")))
  (utt.relation.items utt 'Segment))
"""


def synthesize_festival(voice: VoiceSpec, words: list[str], rate: float) -> Synthesis:
    exe = shutil.which("festival")
    if exe is None:
        raise VoiceEngineUnavailable("festival is not installed (apt-get install festival)")
    pitch = ""
    if voice.pitch != 1.0 and voice.name.endswith(_PITCHABLE):
        # assoc finds the first entry, so consing a new mean overrides the voice's own.
        pitch = (
            "(set! int_lr_params (cons (list 'target_f0_mean "
            f"(* {voice.pitch:.4f} (car (cdr (assoc 'target_f0_mean int_lr_params))))) int_lr_params))"
        )
    with tempfile.TemporaryDirectory(prefix="festival-") as tmp:
        wav = Path(tmp) / "out.wav"
        script = Path(tmp) / "say.scm"
        script.write_text(
            _SCRIPT.format(voice=voice.name, stretch=1.0 / rate, pitch=pitch, text=" ".join(words), wav=wav)
        )
        proc = subprocess.run([exe, "-b", str(script)], capture_output=True, text=True, timeout=120)
        if not wav.exists():
            # festival reports an unknown voice as an unbound `voice_<name>` and writes no audio.
            if f"voice_{voice.name}" in proc.stderr:
                raise VoiceEngineUnavailable(f"festival voice {voice.name!r} is not installed")
            raise VoiceEngineFailed(f"festival failed for {voice.name}: {proc.stderr.strip()[-400:]}")
        audio, sr = read_wav(wav)
    return Synthesis(audio, sr, _parse_segments(proc.stdout, len(words)), {"engine": "festival"})


def _parse_segments(stdout: str, n_words: int) -> list[PhoneSegment]:
    """Lines `SEG <phone> <end> <word name>`; a phone's word is found by counting word changes."""
    phones: list[PhoneSegment] = []
    start = 0.0
    word = -1
    prev_name: str | None = None
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[0] != "SEG":
            continue
        label, end, name = parts[1], float(parts[2]), parts[3]
        phone = arpabet_to_phone(label)
        if phone == SILENCE:
            idx = -1
            prev_name = None
        else:
            if name != prev_name:
                word += 1
                prev_name = name
            idx = word
        phones.append(PhoneSegment(phone, label, start, end, idx))
        start = end
    if word + 1 != n_words:
        raise VoiceEngineFailed(f"festival said {word + 1} words, expected {n_words}")
    return phones
