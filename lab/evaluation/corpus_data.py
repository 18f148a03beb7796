"""The utterances of one corpus split with their ground-truth audio.

Reads the layout `diffv2s corpus make` writes: `{root}/corpus.json` (manifest: `splits` -> list of
`{utt_id, speaker, text}`), and per utterance `{root}/{split}/{speaker}/{utt_id}.mp4` (H.264 + AAC) and
`.json` (transcript; its `duration` is the utterance's exact length). The ground truth is the mp4's own
audio track, so it is exactly what a camera with a microphone would have recorded of that video.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffv2s.audio import read_media_audio

MANIFEST = "corpus.json"


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


def split_entries(root: Path, split: str) -> list[dict[str, str]]:
    """Manifest entries of `split`, interleaved across speakers (so `--limit N` covers every speaker)."""
    manifest = json.loads((Path(root) / MANIFEST).read_text())
    splits = manifest.get("splits", {})
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; {root} has {sorted(splits)}")
    by_speaker: dict[str, list[dict[str, str]]] = {}
    for entry in splits[split]:
        by_speaker.setdefault(entry["speaker"], []).append(entry)
    queues = [by_speaker[s] for s in sorted(by_speaker)]
    out: list[dict[str, str]] = []
    for k in range(max((len(q) for q in queues), default=0)):
        out.extend(q[k] for q in queues if k < len(q))
    return out


def load_items(root: Path, split: str, sample_rate: int, limit: int | None = None) -> list[EvalItem]:
    """The first `limit` utterances of `split` (speakers interleaved) with ground-truth audio at
    `sample_rate`, cut to the transcript's duration (AAC pads its last frame)."""
    root = Path(root)
    items: list[EvalItem] = []
    for entry in split_entries(root, split)[: limit if limit else None]:
        base = root / split / entry["speaker"] / entry["utt_id"]
        video = base.with_suffix(".mp4")
        audio = read_audio_track(video, sample_rate)
        transcript = base.with_suffix(".json")
        if transcript.is_file():
            duration = float(json.loads(transcript.read_text()).get("duration", 0.0))
            if duration > 0:
                audio = audio[: int(round(duration * sample_rate))]
        items.append(EvalItem(entry["utt_id"], entry["speaker"], entry["text"], video, audio, sample_rate))
    return items
