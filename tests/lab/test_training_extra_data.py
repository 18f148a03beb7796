"""`diffv2s train --extra-data`: more sentences of the same speakers from corpora made with other seeds,
on real tiny corpora from the generator and the real cache step: the extra clips are cached for training
under their own ids, the unseen speaker's clips and any sentence of a test split or the validation stay
out, and a corpus that cannot add data safely is refused before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from diffv2s.errors import InputError
from lab.corpus.make import make_corpus
from lab.corpus.manifest import load_corpus
from lab.training.data import extra_utterances
from lab.training.options import TrainOptions
from lab.training.recipe import train


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("corpora")
    # Main: 2 speakers x 3 (speaker 1: one unseen-sentence test clip, two train clips, one of which is
    # held out for validation; speaker 2: the unseen speaker). Extra: the same speakers, seed 1.
    make_corpus(root / "main", speakers=2, utterances=3, seed=0)
    make_corpus(root / "extra", speakers=2, utterances=3, seed=1)
    # A copy of the extra corpus where one train clip says a sentence of the main corpus's test split
    # (random draws from 64,000 sentences almost never collide, so the collision is written in).
    shutil.copytree(root / "extra", root / "colliding")
    manifest_path = root / "colliding" / "corpus.json"
    manifest = json.loads(manifest_path.read_text())
    test_text = manifest_text(root / "main", "test_unseen_sentences")[0]
    manifest["splits"]["train"][0]["text"] = test_text
    manifest_path.write_text(json.dumps(manifest))
    make_corpus(root / "other-speakers", speakers=3, utterances=1, seed=2)
    return {
        "main": root / "main",
        "extra": root / "extra",
        "colliding": root / "colliding",
        "other": root / "other-speakers",
    }


def manifest_text(root: Path, split: str) -> list[str]:
    return [item.text for item in load_corpus(root, split)]


def _cached_items(run: Path, name: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    for shard in sorted((run / "cache" / name).glob("shard-*")):
        items.extend(json.loads((shard / "items.json").read_text()))
    return items


def test_extra_clips_train_and_test_sentences_never_do(corpora: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    opts = TrainOptions(
        data=corpora["main"],
        out=run_dir,
        stage="cache",
        workers=1,
        threads=1,
        extra_data=(corpora["colliding"],),
        progress_bar=False,
    )
    lines: list[str] = []
    train(opts, log=lines.append)
    train_items, val_items = _cached_items(run_dir, "train"), _cached_items(run_dir, "val")
    ids = [str(item["utt_id"]) for item in train_items]
    extra = load_corpus(corpora["colliding"])
    unseen = {item.speaker for item in load_corpus(corpora["main"], "test_unseen_speaker")}
    trainable = [e for e in extra if e.split != "test_unseen_speaker"]
    main_tests = set(manifest_text(corpora["main"], "test_unseen_sentences")) | set(
        manifest_text(corpora["main"], "test_unseen_speaker")
    )
    # Every extra clip of a training speaker but the one saying a test sentence, under an x1: id.
    expected = {f"x1:{e.utt_id}" for e in trainable if e.text not in main_tests}
    assert len(expected) == len(trainable) - 1
    assert {i for i in ids if i.startswith("x1:")} == expected
    assert not any(str(item["speaker"]) in unseen for item in train_items)
    trained_texts = {str(item["text"]) for item in train_items}
    assert not trained_texts & main_tests
    assert not trained_texts & {str(item["text"]) for item in val_items}
    # The main corpus's own training clips are all still there (held-out ones in val).
    main_train = {e.utt_id for e in load_corpus(corpora["main"], "train")}
    assert {i for i in ids if not i.startswith("x1:")} | {str(v["utt_id"]) for v in val_items} == main_train
    assert any("extra corpora: 2 training utterances (1 left out" in line for line in lines), lines
    info = json.loads((run_dir / "run.json").read_text())
    assert info["corpus"]["extra"][0]["seed"] == 1


def test_extra_utterances_prefix_ids_by_corpus(corpora: dict[str, Path]) -> None:
    utts, dropped = extra_utterances([corpora["extra"], corpora["extra"]], set())
    assert dropped == 0
    assert len({u.utt_id for u in utts}) == len(utts) == 6  # 2 x 3: the training speaker's clips
    assert {u.utt_id.split(":")[0] for u in utts} == {"x1", "x2"}


def test_a_corpus_that_cannot_add_data_safely_is_refused_before_writing(
    corpora: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cases = [
        (corpora["other"], "has other speakers"),
        (corpora["main"], "was made with the main corpus's seed 0"),
    ]
    for extra, message in cases:
        with pytest.raises(InputError, match=message):
            train(TrainOptions(data=corpora["main"], out=out, extra_data=(extra,)))
        assert not out.exists()
    lrs3 = tmp_path / "lrs3"
    (lrs3 / "trainval").mkdir(parents=True)
    with pytest.raises(InputError, match="extra training corpora are for the synthetic corpus"):
        train(TrainOptions(data=lrs3, out=out, extra_data=(corpora["extra"],)))
    assert not out.exists()
