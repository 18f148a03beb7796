"""The corpus speakers: fixed, numbered identities (voice + face) that no seed changes.

Each speaker pairs one voice with one face, so a face predicts its voice as DiffV2S assumes. Voices
come from four engines; faces are three package photos made into distinct people by shape, skin,
lips, glasses and surroundings. Female voices get the two women's photos; male voices mostly the man's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lab.corpus.face import FaceSpec
from lab.corpus.speech import VoiceSpec


@dataclass(frozen=True)
class SpeakerSpec:
    """`rate` is the speaker's habitual tempo (>1 faster); per-utterance jitter multiplies it."""

    id: str
    voice: VoiceSpec
    face: FaceSpec
    rate: float = 1.0
    gender: str = "m"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _f(photo: str, **kw: Any) -> FaceSpec:
    return FaceSpec(photo=photo, **kw)


_TABLE: tuple[tuple[VoiceSpec, FaceSpec, float, str], ...] = (
    (VoiceSpec("festival", "kal_diphone"), _f("carphone"), 1.0, "m"),
    (
        VoiceSpec("festival", "ked_diphone", pitch=0.85),
        _f("grace_hopper", mirror=True, face_width=1.12, skin_tone=(0.75, 4.0, 8.0), lip_color=(85, 80, 150),
           surround_hue=100, zoom=0.95),
        0.95,
        "m",
    ),
    (
        VoiceSpec("festival", "cmu_us_slt_arctic_hts"),
        _f("astronaut", lip_color=(110, 90, 185), zoom=1.05),
        1.0,
        "f",
    ),
    (
        VoiceSpec("flite", "awb"),
        _f("carphone", mirror=True, face_width=1.1, chin_length=1.08, skin_tone=(0.88, 4.0, 4.0),
           lip_color=(90, 80, 160), glasses=(20, 20, 20), surround_hue=60),
        1.0,
        "m",
    ),
    (
        VoiceSpec("flite", "rms"),
        _f("carphone", face_width=0.92, chin_length=1.12, skin_tone=(0.6, 6.0, 12.0), lip_color=(80, 75, 140),
           mouth_width=1.1, surround_hue=140),
        0.95,
        "m",
    ),
    (
        VoiceSpec("flite", "slt", pitch=1.1),
        _f("grace_hopper", lip_color=(100, 70, 190), surround_hue=30),
        1.05,
        "f",
    ),
    (
        VoiceSpec("flite", "kal", pitch=0.85),
        _f("astronaut", mirror=True, face_width=1.1, chin_length=1.1, skin_tone=(0.72, 5.0, 9.0),
           lip_color=(85, 80, 150), glasses=(40, 60, 120), surround_hue=90, mouth_width=1.1),
        1.0,
        "m",
    ),
    (
        VoiceSpec("piper", "joe"),
        _f("carphone", face_width=1.04, chin_length=0.93, skin_tone=(1.08, 2.0, -2.0), lip_color=(95, 95, 170),
           glasses=(60, 40, 30), surround_hue=20, lip_thickness=0.8),
        1.0,
        "m",
    ),
    (
        VoiceSpec("espeak", "en-us+m3"),
        _f("grace_hopper", face_width=0.94, chin_length=1.1, skin_tone=(0.62, 6.0, 12.0), lip_color=(80, 72, 135),
           surround_hue=150, zoom=1.08),
        1.0,
        "m",
    ),
    (
        VoiceSpec("espeak", "en-us+f2"),
        _f("astronaut", face_width=0.93, skin_tone=(1.1, 3.0, -3.0), lip_color=(120, 85, 200),
           surround_hue=120, lip_thickness=1.25),
        1.0,
        "f",
    ),
    (
        VoiceSpec("espeak", "en-gb-x-rp+m1"),
        _f("carphone", mirror=True, face_width=0.95, chin_length=1.05, skin_tone=(0.52, 7.0, 13.0),
           lip_color=(75, 70, 125), surround_hue=75, mouth_width=1.12, lip_thickness=1.2),
        0.97,
        "m",
    ),
    (
        VoiceSpec("espeak", "en-gb-scotland+f4"),
        _f("grace_hopper", mirror=True, face_width=1.02, chin_length=0.94, skin_tone=(1.06, 1.0, -4.0),
           lip_color=(105, 80, 180), glasses=(10, 10, 140), surround_hue=170),
        1.0,
        "f",
    ),
    (
        VoiceSpec("espeak", "en-029+m7"),
        _f("astronaut", mirror=True, face_width=1.06, chin_length=1.12, skin_tone=(0.55, 6.0, 12.0),
           lip_color=(78, 72, 130), surround_hue=45, lip_thickness=1.3, mouth_width=1.08),
        1.03,
        "m",
    ),
    (
        VoiceSpec("espeak", "en-us+f5", pitch=1.1),
        _f("carphone", face_width=0.9, chin_length=0.95, skin_tone=(1.12, 4.0, -1.0), lip_color=(115, 80, 195),
           glasses=(150, 150, 150), surround_hue=110, mouth_width=0.92, lip_thickness=1.2),
        1.0,
        "f",
    ),
)  # fmt: skip

SPEAKERS: tuple[SpeakerSpec, ...] = tuple(
    SpeakerSpec(f"spk{i:02d}", voice, face, rate, gender)
    for i, (voice, face, rate, gender) in enumerate(_TABLE)
)
SPEAKER_BY_ID = {s.id: s for s in SPEAKERS}


def select_speakers(speakers: int | list[str]) -> list[SpeakerSpec]:
    """The first `n` speakers, or the speakers with these ids (in table order)."""
    if isinstance(speakers, int):
        if not 1 <= speakers <= len(SPEAKERS):
            raise ValueError(f"--speakers must be 1..{len(SPEAKERS)}, got {speakers}")
        return list(SPEAKERS[:speakers])
    unknown = [s for s in speakers if s not in SPEAKER_BY_ID]
    if unknown:
        raise ValueError(f"unknown speakers {unknown}; known: {sorted(SPEAKER_BY_ID)}")
    return [s for s in SPEAKERS if s.id in set(speakers)]
