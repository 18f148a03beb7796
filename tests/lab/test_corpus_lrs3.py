"""LRS3 layout: parse/format of the .txt files, and a round trip through the CLI (make -> to-lrs3 -> read)."""

import json

import pytest

from lab.corpus.cli import corpus_main
from lab.corpus.lrs3 import WordTiming, format_lrs3_text, parse_lrs3_text, read_lrs3
from lab.corpus.manifest import load_corpus

LRS3_SAMPLE = """Text:  AND WE'RE GOING TO LOOK AT IT
Conf:  3

WORD START END ASDSCORE
AND 0.10 0.22 5.4
WE'RE 0.22 0.39 6.1
"""


def test_parse_real_lrs3_text_and_format_back():
    text, conf, words = parse_lrs3_text(LRS3_SAMPLE)
    assert text == "AND WE'RE GOING TO LOOK AT IT" and conf == "3"
    assert words == (WordTiming("AND", 0.10, 0.22, 5.4), WordTiming("WE'RE", 0.22, 0.39, 6.1))
    assert parse_lrs3_text(format_lrs3_text(text, words, conf)) == (text, conf, words)
    with pytest.raises(ValueError):
        parse_lrs3_text("no text here")


def test_cli_make_then_lrs3_tree_round_trip(tmp_path, capsys):
    corpus, tree = tmp_path / "corpus", tmp_path / "lrs3"
    assert (
        corpus_main(["make", "--out", str(corpus), "--speakers", "2", "--utterances", "1", "--seed", "3"])
        == 0
    )
    assert corpus_main(["to-lrs3", "--corpus", str(corpus), "--out", str(tree)]) == 0
    items = load_corpus(corpus)
    clips = read_lrs3(tree, "trainval") + read_lrs3(tree, "test")
    assert len(clips) == len(items) == 2
    by_speaker = {c.speaker: c for c in clips}
    for item in items:
        clip = by_speaker[item.speaker]
        assert clip.split == ("trainval" if item.split == "train" else "test")
        assert clip.utt == "00001"
        assert clip.text_lower == item.text
        assert clip.video.read_bytes() == item.video.read_bytes()
        words = json.loads(item.transcript.read_text())["words"]
        assert [w.word.lower() for w in clip.words] == [w["word"] for w in words]
        for got, want in zip(clip.words, words, strict=True):
            assert got.start == pytest.approx(want["start"], abs=0.006)
            assert got.end == pytest.approx(want["end"], abs=0.006)


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert corpus_main(["make", "--out", str(tmp_path), "--speakers", "99", "--utterances", "1"]) == 2
    assert "speakers" in capsys.readouterr().err
