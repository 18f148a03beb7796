"""The LRS3 layout, read and written, so one training recipe reads real LRS3 and the synthetic corpus.

LRS3 (TED talks) ships `{split}/{speaker_id}/{utt}.mp4` with a `{utt}.txt` beside each clip:

    Text:  SO I WANT TO TELL YOU
    Conf:  4

    WORD START END ASDSCORE
    SO 0.23 0.41 7.5
    ...

`corpus_to_lrs3` writes a tiny LRS3-shaped tree from a synthetic corpus (copies of its mp4 files).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lab.corpus.manifest import load_corpus
from lab.corpus.writer import read_json

LRS3_SPLITS = ("pretrain", "trainval", "test")
# LRS3's test speakers are not in trainval; both synthetic test splits go there.
DEFAULT_SPLIT_MAP = {"train": "trainval", "test_unseen_sentences": "test", "test_unseen_speaker": "test"}
_ASD_SCORE = 10.0  # LRS3's active-speaker score; a synthetic face is always the speaker


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float
    end: float
    score: float = _ASD_SCORE


@dataclass(frozen=True)
class LRS3Item:
    """One LRS3 clip. `text` is as written in the file (upper case); `words` may be empty."""

    split: str
    speaker: str
    utt: str
    video: Path
    text: str
    conf: str = ""
    words: tuple[WordTiming, ...] = field(default_factory=tuple)

    @property
    def text_lower(self) -> str:
        return self.text.lower()


def parse_lrs3_text(content: str) -> tuple[str, str, tuple[WordTiming, ...]]:
    """The content of an LRS3 .txt file -> (text, conf, word timings)."""
    text, conf = "", ""
    words: list[WordTiming] = []
    in_words = False
    for raw in content.splitlines():
        line = raw.strip()
        if line.startswith("Text:"):
            text = line[len("Text:") :].strip()
        elif line.startswith("Conf:"):
            conf = line[len("Conf:") :].strip()
        elif line.startswith("WORD START END"):
            in_words = True
        elif in_words and line:
            parts = line.split()
            if len(parts) >= 3:
                score = float(parts[3]) if len(parts) > 3 else _ASD_SCORE
                words.append(WordTiming(parts[0], float(parts[1]), float(parts[2]), score))
    if not text:
        raise ValueError("not an LRS3 transcript: no 'Text:' line")
    return text, conf, tuple(words)


def format_lrs3_text(text: str, words: list[WordTiming] | tuple[WordTiming, ...], conf: str = "4") -> str:
    lines = [f"Text:  {text.upper()}", f"Conf:  {conf}", "", "WORD START END ASDSCORE"]
    lines += [f"{w.word.upper()} {w.start:.2f} {w.end:.2f} {w.score:.1f}" for w in words]
    return "\n".join(lines) + "\n"


def iter_lrs3(root: Path | str, split: str) -> Iterator[LRS3Item]:
    """Clips of one split, sorted by speaker then utterance. Clips without a .txt are skipped."""
    base = Path(root) / split
    if not base.is_dir():
        raise FileNotFoundError(f"no LRS3 split {split!r} under {root}")
    for video in sorted(base.glob("*/*.mp4")):
        txt = video.with_suffix(".txt")
        if not txt.exists():
            continue
        text, conf, words = parse_lrs3_text(txt.read_text())
        yield LRS3Item(split, video.parent.name, video.stem, video, text, conf, words)


def read_lrs3(root: Path | str, split: str) -> list[LRS3Item]:
    return list(iter_lrs3(root, split))


def corpus_to_lrs3(
    corpus: Path | str, out: Path | str, split_map: dict[str, str] | None = None
) -> dict[str, int]:
    """Write an LRS3-shaped tree from a synthetic corpus. Returns clips written per LRS3 split.

    Utterance names become LRS3-style numbers (`00001`, ...) per speaker, in corpus order.
    """
    split_map = DEFAULT_SPLIT_MAP if split_map is None else split_map
    out = Path(out)
    counts: dict[str, int] = {}
    next_number: dict[tuple[str, str], int] = {}
    for item in load_corpus(corpus):
        target = split_map.get(item.split)
        if target is None:
            continue
        key = (target, item.speaker)
        number = next_number.get(key, 1)
        next_number[key] = number + 1
        dest = out / target / item.speaker / f"{number:05d}.mp4"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.video, dest)
        transcript = read_json(item.transcript)
        words = [WordTiming(w["word"], float(w["start"]), float(w["end"])) for w in transcript["words"]]
        dest.with_suffix(".txt").write_text(format_lrs3_text(transcript["text"], words))
        counts[target] = counts.get(target, 0) + 1
    return counts
