"""The corpus manifest `{root}/corpus.json` and its one reader, shared by the corpus, training and evaluation.

`diffv2s corpus make` writes the manifest last:

    {"format": "diffv2s-synthetic-corpus", "version": 1, "seed", "fps", "sample_rate", "frame_size",
     "utterances_per_speaker", "speakers": [...], "unseen_speakers": [...],
     "splits": {split: [{"utt_id", "speaker", "text"}, ...]}}

and each utterance is `{root}/{split}/{speaker}/{utt_id}.mp4` (H.264 + AAC) with its transcript `.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.corpus.writer import read_json, write_json

MANIFEST = "corpus.json"
FORMAT = "diffv2s-synthetic-corpus"
FORMAT_VERSION = 1
SPLITS = ("train", "test_unseen_sentences", "test_unseen_speaker")


@dataclass(frozen=True)
class CorpusItem:
    """One utterance of a corpus on disk; `video` and `transcript` are under the corpus root."""

    utt_id: str
    speaker: str
    split: str
    text: str
    video: Path
    transcript: Path


def has_manifest(root: Path | str) -> bool:
    """Whether `root` is a corpus made by `diffv2s corpus make` (it holds corpus.json)."""
    return (Path(root) / MANIFEST).is_file()


def read_manifest(root: Path | str) -> dict[str, Any]:
    """The manifest of the corpus at `root`."""
    return read_json(Path(root) / MANIFEST)


def write_manifest(root: Path | str, manifest: dict[str, Any]) -> None:
    """Write `{root}/corpus.json` in one step (a reader never sees half a manifest)."""
    write_json(Path(root) / MANIFEST, manifest)


def load_corpus(root: Path | str, split: str | None = None) -> list[CorpusItem]:
    """The utterances of the corpus at `root` in manifest order: all `SPLITS`, or one split.

    Raises ValueError for a split the corpus does not have."""
    root = Path(root)
    splits = read_manifest(root)["splits"]
    items: list[CorpusItem] = []
    for name in SPLITS if split is None else (split,):
        if name not in splits:
            raise ValueError(f"unknown split {name!r}; {root} has {sorted(splits)}")
        for entry in splits[name]:
            base = root / name / entry["speaker"] / entry["utt_id"]
            items.append(
                CorpusItem(
                    entry["utt_id"],
                    entry["speaker"],
                    name,
                    entry["text"],
                    base.with_suffix(".mp4"),
                    base.with_suffix(".json"),
                )
            )
    return items
