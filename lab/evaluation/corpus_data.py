"""The utterances of one corpus split with their ground-truth audio.

Reads a corpus that `diffv2s corpus make` wrote through its manifest (`lab.corpus.manifest`); an
utterance's transcript `.json` gives its exact length (`duration`). The ground truth is the mp4's own
audio track, so it is exactly what a camera with a microphone would have recorded of that video.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffv2s.audio import read_media_audio
from lab.corpus.manifest import CorpusItem, load_corpus


@dataclass
class EvalItem:
    """One utterance. audio: ground-truth waveform [N] float32 at `sample_rate`."""

    utt_id: str
    speaker: str
    text: str
    video: Path
    audio: np.ndarray
    sample_rate: int


def read_audio_track(path: Path, sample_rate: int) -> np.ndarray:
    """The first audio stream of a media file as mono float32 [N] at `sample_rate`.

    Raises ValueError when the file has no audio stream."""
    return read_media_audio(path, sample_rate)[0]


def split_items(root: Path, split: str) -> list[CorpusItem]:
    """The utterances of `split`, interleaved across speakers (so `--limit N` covers every speaker)."""
    by_speaker: dict[str, list[CorpusItem]] = {}
    for item in load_corpus(root, split):
        by_speaker.setdefault(item.speaker, []).append(item)
    queues = [by_speaker[s] for s in sorted(by_speaker)]
    out: list[CorpusItem] = []
    for k in range(max((len(q) for q in queues), default=0)):
        out.extend(q[k] for q in queues if k < len(q))
    return out


def load_items(root: Path, split: str, sample_rate: int, limit: int | None = None) -> list[EvalItem]:
    """The first `limit` utterances of `split` (speakers interleaved) with ground-truth audio at
    `sample_rate`, cut to the transcript's duration (AAC pads its last frame)."""
    items: list[EvalItem] = []
    for item in split_items(Path(root), split)[: limit if limit else None]:
        audio = read_audio_track(item.video, sample_rate)
        if item.transcript.is_file():
            duration = float(json.loads(item.transcript.read_text()).get("duration", 0.0))
            if duration > 0:
                audio = audio[: int(round(duration * sample_rate))]
        items.append(EvalItem(item.utt_id, item.speaker, item.text, item.video, audio, sample_rate))
    return items
