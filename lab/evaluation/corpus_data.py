"""The utterances of one corpus split with their ground-truth audio.

Reads a corpus that `diffv2s corpus make` wrote through its manifest (`lab.corpus.manifest`); an
utterance's transcript `.json` gives its exact length (`duration`). The ground truth is the mp4's own
audio track, so it is exactly what a camera with a microphone would have recorded of that video.

An LRS3 tree (`{split}/{speaker_id}/{clip}.mp4` + `.txt`) is read by the training's own reader
(`lab.training.data.list_utterances`, which parses each `.txt`'s "Text:" line through `lab.corpus.lrs3`);
its clips have no `.json`, so the reference is the whole audio track. A clip that cannot be scored (no
transcript, no audio track) is refused with its reason rather than failing the run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from diffv2s.audio import read_media_audio
from lab.corpus.manifest import CorpusItem, load_corpus

T = TypeVar("T")


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
    return interleave_speakers(list(load_corpus(root, split)), lambda item: item.speaker)


def interleave_speakers(items: list[T], speaker: Callable[[T], str]) -> list[T]:
    """`items` reordered round-robin over speakers (sorted), each speaker's own order kept, so the first
    N cover every speaker."""
    by_speaker: dict[str, list[T]] = {}
    for item in items:
        by_speaker.setdefault(speaker(item), []).append(item)
    queues = [by_speaker[s] for s in sorted(by_speaker)]
    out: list[T] = []
    for k in range(max((len(q) for q in queues), default=0)):
        out.extend(q[k] for q in queues if k < len(q))
    return out


def refusal(utt_id: str, reason: str, message: str) -> dict[str, str]:
    """One refused clip as a report lists it (`reason` is an error code, e.g. no_face_found)."""
    return {"utt_id": utt_id, "reason": reason, "error": f"{reason}: {message}"}


def refusal_counts(refused: list[dict[str, str]]) -> dict[str, int]:
    """How many clips were refused for each reason."""
    counts: dict[str, int] = {}
    for entry in refused:
        counts[entry["reason"]] = counts.get(entry["reason"], 0) + 1
    return dict(sorted(counts.items()))


_LRS3_TAG = re.compile(r"\{[^}]*\}")


def lrs3_reference(text: str) -> str:
    """The words of an LRS3 "Text:" line that were spoken: its non-speech tags ({LG}, {NS}) dropped."""
    return " ".join(_LRS3_TAG.sub(" ", text).split())


def check_lrs3_tree(root: Path, split: str) -> None:
    """Raise ValueError unless `root` is an LRS3 tree with the split `split` (checked before a model loads)."""
    from lab.training.data import corpus_kind

    if not Path(root).is_dir():
        raise ValueError(f"--lrs3 {root}: no such folder")
    if corpus_kind(Path(root)) != "lrs3":
        raise ValueError(f"{root} is not an LRS3 tree ({{split}}/{{speaker}}/{{clip}}.mp4 + .txt)")
    if not (Path(root) / split).is_dir():
        raise ValueError(f"{root} has no LRS3 split {split!r}")


def load_lrs3_items(
    root: Path, split: str, sample_rate: int, limit: int | None = None
) -> tuple[list[EvalItem], list[dict[str, str]]]:
    """(items, refused) of one split of an LRS3 tree: the first `limit` clips (speakers interleaved) with
    their transcript's text and their own audio track at `sample_rate`. Clips without a `.txt` and clips
    whose audio cannot be read are refused (`no_transcript`, `no_audio_track`), not fatal."""
    from lab.training.data import list_utterances

    root = Path(root)
    check_lrs3_tree(root, split)
    utterances = list_utterances(root, split)
    # The reader skips clips without a transcript; count them here as refused.
    listed = {u.video for u in utterances}
    untranscribed = [v for v in sorted((root / split).glob("*/*.mp4")) if v not in listed]
    ordered: list[tuple[str, str, str, Path]] = [
        (u.utt_id, u.speaker, lrs3_reference(u.text), u.video) for u in utterances
    ]
    ordered += [(f"{v.parent.name}/{v.stem}", v.parent.name, "", v) for v in untranscribed]
    ordered = interleave_speakers(ordered, lambda c: c[1])[: limit if limit else None]
    items: list[EvalItem] = []
    refused: list[dict[str, str]] = []
    for utt_id, speaker, text, video in ordered:
        if not text:
            refused.append(refusal(utt_id, "no_transcript", f"no {video.stem}.txt with a 'Text:' line"))
            continue
        try:
            audio = read_audio_track(video, sample_rate)
        except (ValueError, OSError) as exc:
            refused.append(refusal(utt_id, "no_audio_track", str(exc)))
            continue
        items.append(EvalItem(utt_id, speaker, text, video, audio, sample_rate))
    return items, refused


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
