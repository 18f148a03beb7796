"""Which utterances a training run reads: the synthetic corpus or a tree in the LRS3 layout.

A synthetic corpus (made by `diffv2s corpus make`) has a `corpus.json` manifest and splits `train`,
`test_unseen_sentences`, `test_unseen_speaker`. LRS3 ships `{split}/{speaker}/{utt}.mp4 + .txt` with splits
`pretrain`, `trainval`, `test`. Both become a list of `Utterance`.

Validation is held out of the training split (`HOLDOUT`) by default, not taken from a test split: what
the training logs report on validation then never looks at the utterances the evaluation scores, and a
stage may keep its best validation state without selecting on the test set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from diffv2s.errors import InputError
from lab.corpus.manifest import MANIFEST, has_manifest, load_corpus, read_manifest

# The validation "split" that is a slice of the training split (`hold_out`), taken out of training.
HOLDOUT = "holdout"
SYNTHETIC_TRAIN_SPLIT = "train"
LRS3_TRAIN_SPLITS = ("trainval", "pretrain")
LRS3_SPLITS = (*LRS3_TRAIN_SPLITS, "test")


@dataclass(frozen=True)
class Utterance:
    """One clip: `utt_id` is unique within its split (LRS3: `speaker/utt`); video is an mp4 with audio."""

    utt_id: str
    speaker: str
    split: str
    text: str
    video: Path
    # The synthetic corpus's transcript JSON (its phone timings label stage A's frames); None for LRS3.
    transcript: Path | None = None


def corpus_kind(root: Path) -> str:
    """'synthetic' (has corpus.json) or 'lrs3' (has split folders of speaker folders)."""
    if has_manifest(root):
        return "synthetic"
    if any((root / s).is_dir() for s in LRS3_SPLITS):
        return "lrs3"
    raise InputError(
        f"{root} is neither a synthetic corpus (no {MANIFEST}) nor an LRS3 tree (no pretrain/trainval/test "
        "folder). Make one with `diffv2s corpus make --out DIR ...`."
    )


def default_splits(root: Path) -> tuple[str, str]:
    """(train split, validation split) for the corpus at `root`; validation is `HOLDOUT`."""
    if corpus_kind(root) == "synthetic":
        return SYNTHETIC_TRAIN_SPLIT, HOLDOUT
    train = next((s for s in LRS3_TRAIN_SPLITS if (root / s).is_dir()), None)
    if train is None:
        raise InputError(f"{root} has no LRS3 training split ({' or '.join(LRS3_TRAIN_SPLITS)}).")
    return train, HOLDOUT


def hold_out(items: list[Utterance], n: int) -> tuple[list[Utterance], list[Utterance]]:
    """(kept, held): about `n` utterances held out of `items` for validation, never more than a fifth of
    them (at least one when there are two or more). Each speaker gives its last utterances in turn, so
    every speaker is represented and the choice does not depend on how many are trained on."""
    count = min(n, max(1, len(items) // 5)) if len(items) >= 2 else 0
    held = spread(items[::-1], count) if count else []
    ids = {u.utt_id for u in held}
    return [u for u in items if u.utt_id not in ids], held


def list_utterances(root: Path, split: str, limit: int | None = None) -> list[Utterance]:
    """The utterances of one split, in a stable order; `limit` keeps an even share per speaker."""
    root = Path(root)
    if corpus_kind(root) == "synthetic":
        items = [
            Utterance(c.utt_id, c.speaker, c.split, c.text, c.video, c.transcript)
            for c in load_corpus(root, split)
        ]
    else:
        from lab.corpus.lrs3 import iter_lrs3

        items = [
            Utterance(f"{c.speaker}/{c.utt}", c.speaker, c.split, c.text.lower(), c.video)
            for c in iter_lrs3(root, split)
        ]
    if limit is not None and len(items) > limit:
        items = spread(items, limit)
    return items


def spread(items: list[Utterance], limit: int) -> list[Utterance]:
    """`limit` items taken round-robin over speakers, so every speaker stays represented."""
    by_speaker: dict[str, list[Utterance]] = {}
    for item in items:
        by_speaker.setdefault(item.speaker, []).append(item)
    queues = [list(v) for v in by_speaker.values()]
    out: list[Utterance] = []
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def corpus_info(root: Path) -> dict[str, object]:
    """What the final checkpoint records about its training data (no absolute paths)."""
    root = Path(root)
    kind = corpus_kind(root)
    info: dict[str, object] = {"kind": kind, "name": root.name}
    if kind == "synthetic":
        manifest = read_manifest(root)
        info.update(
            {
                "format": manifest.get("format"),
                "version": manifest.get("version"),
                "seed": manifest.get("seed"),
                "speakers": [s["id"] for s in manifest.get("speakers", [])],
                "unseen_speakers": manifest.get("unseen_speakers", []),
                "utterances": {k: len(v) for k, v in manifest.get("splits", {}).items()},
            }
        )
    return info


# The synthetic corpus's test splits (what `diffv2s evaluate` scores).
TEST_SPLITS = ("test_unseen_sentences", "test_unseen_speaker")
# Splits of an extra corpus that may train: both hold only the corpus's training speakers.
EXTRA_SPLITS = ("train", "test_unseen_sentences")


def check_extra(main: Path, extra: Path) -> None:
    """An extra training corpus (`--extra-data`) must be a synthetic corpus of the main corpus's speakers."""
    if corpus_kind(main) != "synthetic" or corpus_kind(extra) != "synthetic":
        raise InputError(
            f"--extra-data {extra}: extra training corpora are for the synthetic corpus (both the main "
            "corpus and the extra one need a corpus.json); put more LRS3 clips in its training split instead."
        )
    main_m, extra_m = read_manifest(main), read_manifest(extra)
    ids = [[s["id"] for s in m.get("speakers", [])] for m in (main_m, extra_m)]
    if ids[0] != ids[1] or main_m.get("unseen_speakers") != extra_m.get("unseen_speakers"):
        raise InputError(
            f"--extra-data {extra} has other speakers than {main} ({ids[1]} vs {ids[0]}); make it with the "
            "same --speakers and another --seed."
        )
    if extra_m.get("seed") == main_m.get("seed"):
        raise InputError(
            f"--extra-data {extra} was made with the main corpus's seed {main_m.get('seed')}: it holds the same "
            "sentences; make it with another --seed."
        )


def extra_utterances(extras: list[Path], exclude_texts: set[str]) -> tuple[list[Utterance], int]:
    """Training utterances from extra corpora (new sentences of the same speakers): every clip of their
    `EXTRA_SPLITS` whose sentence is not in `exclude_texts` (the main corpus's test and validation
    sentences, so neither is ever trained on). Ids get an `x{k}:` prefix (k counts from 1) so
    they never collide with the main corpus's. Returns (utterances, clips left out for their sentence)."""
    out: list[Utterance] = []
    dropped = 0
    for k, root in enumerate(extras, start=1):
        for split in EXTRA_SPLITS:
            for u in list_utterances(root, split):
                if u.text in exclude_texts:
                    dropped += 1
                    continue
                out.append(replace(u, utt_id=f"x{k}:{u.utt_id}"))
    return out, dropped
