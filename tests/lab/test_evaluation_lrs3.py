"""`diffv2s evaluate --lrs3 ROOT` end to end: a tiny LRS3 tree written by `diffv2s corpus to-lrs3` (plus a clip
without a face and one without a transcript), scored with the shipped checkpoint: Whisper WER against each
clip's `.txt` "Text:" line, the signal metrics against each clip's own audio, the refused clips with their
reason, and the paper's LRS3 figures beside the model's in the markdown table. Then a paper-preset
checkpoint trained with `--avhubert` (the tiny run of tests/lab/conftest.py) evaluated the same way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lab.corpus.cli import corpus_main
from lab.corpus.lrs3 import format_lrs3_text, read_lrs3
from lab.evaluation.cli import evaluate_main
from lab.evaluation.paper import CITATION, PAPER_TABLE, UNCONFIRMED
from lab.evaluation.scoring import METRICS
from tests.lab.conftest import write_talking_clip

SIGNAL_METRICS = ("stoi", "estoi", "pesq", "mcd", "secs", "dnsmos")


@pytest.fixture(scope="module")
def lrs3_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 speakers x 2 utterances of the synthetic corpus in the LRS3 layout: 3 test clips (one unseen
    sentence of spk00, both clips of the unseen spk01), plus a test clip with no face and one mp4 without
    its .txt."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("lrs3-eval")
    corpus, root = base / "corpus", base / "lrs3"
    assert (
        corpus_main(["make", "--out", str(corpus), "--speakers", "2", "--utterances", "2", "--seed", "0"])
        == 0
    )
    assert corpus_main(["to-lrs3", "--corpus", str(corpus), "--out", str(root)]) == 0
    blank = root / "test" / "spk-blank" / "00001.mp4"
    blank.parent.mkdir()
    write_talking_clip(blank, [np.full((144, 176, 3), 128, np.uint8)] * 20, 150.0, seed=9)
    blank.with_suffix(".txt").write_text(format_lrs3_text("nobody is here", []))
    # A non-speech tag as LRS3 writes them: not part of the reference.
    tagged = root / "test" / "spk01" / "00001.txt"
    tagged.write_text(tagged.read_text().replace("\nConf:", " {LG}\nConf:", 1))
    untranscribed = root / "test" / "spk00" / "00009.mp4"
    untranscribed.write_bytes((root / "test" / "spk00" / "00001.mp4").read_bytes())
    return root


@pytest.fixture(scope="module")
def evaluated(lrs3_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, Path]:
    out = tmp_path_factory.mktemp("eval") / "lrs3.json"
    cache = tmp_path_factory.mktemp("cache")
    argv = ["--lrs3", str(lrs3_root), "--json", str(out), "--no-speaker-ablations", "--cache-dir", str(cache)]
    # Speakers interleaved (spk-blank, spk00, spk01, then each one's next clip): the first 4 clips are the
    # face-less one, spk00/00001, spk01/00001 and spk00's clip without a transcript.
    rc = evaluate_main([*argv, "--limit", "4"])
    return rc, json.loads(out.read_text()), out


def test_every_scored_clip_has_whisper_wer_and_signal_metrics(evaluated: tuple[int, dict, Path]) -> None:
    rc, report, out = evaluated
    assert rc == 0
    meta = report["meta"]
    assert (meta["corpus"], meta["split"], meta["grammar_asr"]) == ("lrs3", "test", False)
    assert (meta["n_items_requested"], meta["n_items_scored"]) == (4, 2)
    for name in ("model", "vocoder_ceiling", "ground_truth"):
        entry = report[name]
        assert entry["n_utterances"] == 2, name
        assert entry["wer"] is None and "slot_accuracy" not in entry  # no GRID grammar on LRS3
        assert isinstance(entry["wer_whisper"], float), name
        for key in SIGNAL_METRICS:
            assert isinstance(entry[key], float), (name, key)
    assert report["ablations"] == {}  # no sweep by default with --lrs3, speaker ablations off here
    # The clips' own audio against itself: the ceiling of every signal metric.
    assert report["ground_truth"]["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert report["ground_truth"]["secs"] == pytest.approx(1.0, abs=1e-4)
    # Whisper hears the ground truth (espeak/festival speech) far better than the model's output.
    assert report["ground_truth"]["wer_whisper"] < 0.6
    assert report["model"]["estoi"] < report["vocoder_ceiling"]["estoi"]

    rows = [json.loads(line) for line in out.with_name("lrs3.utterances.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # 2 clips x 3 systems
    for row in rows:
        assert row["hyp_grammar"] is None and isinstance(row["hyp_whisper"], str)
        for key in ("stoi", "estoi", "pesq", "secs"):
            assert row[key] is None or isinstance(row[key], float)


def test_references_are_the_transcripts_text_lines(
    evaluated: tuple[int, dict, Path], lrs3_root: Path
) -> None:
    _, _, out = evaluated
    texts = {f"{c.speaker}/{c.utt}": c.text.lower() for c in read_lrs3(lrs3_root, "test")}
    assert texts["spk01/00001"].endswith(" {lg}")
    texts["spk01/00001"] = texts["spk01/00001"].removesuffix(" {lg}")
    rows = [json.loads(line) for line in out.with_name("lrs3.utterances.jsonl").read_text().splitlines()]
    scored = {row["utt_id"] for row in rows}
    assert scored == {"spk00/00001", "spk01/00001"}
    for row in rows:
        assert row["reference"] == texts[row["utt_id"]]


def test_refused_clips_are_counted_with_their_reason(evaluated: tuple[int, dict, Path]) -> None:
    _, report, _ = evaluated
    meta = report["meta"]
    assert meta["refused"] == {"no_face_found": 1, "no_transcript": 1}
    by_id = {entry["utt_id"]: entry["reason"] for entry in meta["skipped"]}
    assert by_id == {"spk-blank/00001": "no_face_found", "spk00/00009": "no_transcript"}


def test_markdown_puts_the_papers_figures_beside_the_model(evaluated: tuple[int, dict, Path]) -> None:
    _, report, out = evaluated
    paper = report["paper"]
    assert paper["citation"] == CITATION and paper["dataset"] == "LRS3"
    assert paper["rows"] == [row.to_dict() for row in PAPER_TABLE if row.dataset == "LRS3"]
    assert paper["rows"][0]["metrics"]["wer"] == pytest.approx(0.392)
    md = out.with_suffix(".md").read_text()
    assert "2308.07787" in md and UNCONFIRMED in md
    assert "refused clips: 2 (no_face_found 1, no_transcript 1)" in md
    assert "WER (grammar)" not in md and "Grammar-ASR accuracy per slot" not in md
    paper_line = next(line for line in md.splitlines() if line.startswith("| paper: DiffV2S |"))
    assert paper_line.split("|")[2].strip() == "0.392"
    model_line = next(line for line in md.splitlines() if line.startswith("| this model |"))
    assert model_line.split("|")[2].strip() == f"{report['model']['wer_whisper']:.3f}"
    assert model_line.split("|")[3].strip() == f"{report['model']['stoi']:.3f}"


def test_a_paper_preset_checkpoint_trained_with_avhubert_evaluates(
    paper_run: Path, lrs3_tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "paper.json"
    argv = ["--lrs3", str(lrs3_tree), "--checkpoint", str(paper_run / "diffv2s-paper.pt"), "--json", str(out)]
    assert evaluate_main([*argv, "--no-whisper", "--limit", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["preset"] == "paper"
    assert report["meta"]["n_items_scored"] == 1
    assert set(report["ablations"]) == {"gt_audio_speaker", "no_speaker"}
    for entry in (report["model"], *report["ablations"].values()):
        assert entry["wer_whisper"] is None  # --no-whisper
        assert isinstance(entry["estoi"], float) and isinstance(entry["secs"], float)
    assert "| paper: DiffV2S |" in out.with_suffix(".md").read_text()


def test_refuses_a_tree_that_is_not_lrs3(
    lrs3_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "nothing").mkdir()
    argv = ["--lrs3", str(tmp_path / "nothing"), "--json", str(tmp_path / "x.json"), "--no-whisper"]
    assert evaluate_main(argv) == 2
    assert "LRS3" in capsys.readouterr().err
    # The synthetic corpus the tree was made from is not an LRS3 tree; a split the tree lacks is refused.
    argv[1] = str(lrs3_root.parent / "corpus")
    assert evaluate_main(argv) == 2
    assert "not an LRS3 tree" in capsys.readouterr().err
    assert evaluate_main(["--lrs3", str(lrs3_root), "--split", "pretrain", *argv[2:]]) == 2
    assert "no LRS3 split 'pretrain'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_metrics_cover_the_harness(evaluated: tuple[int, dict, Path]) -> None:
    _, report, _ = evaluated
    assert set(METRICS) <= set(report["model"])
