"""`diffv2s evaluate` end to end on a tiny corpus made by the corpus generator: the JSON document's schema,
the markdown table, the per-utterance rows, the no-ground-truth video mode and input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffv2s.checkpoints.store import load_checkpoint
from lab.corpus.make import make_corpus
from lab.evaluation.cli import evaluate_main
from lab.evaluation.scoring import METRICS
from lab.evaluation.text import SLOT_NAMES

SYSTEMS = ("model", "vocoder_ceiling", "ground_truth")
DEFAULT_SAMPLER = load_checkpoint().config.diffusion.default_sampler
ABLATIONS = ("gt_audio_speaker", "no_speaker", "visual_prior", f"{DEFAULT_SAMPLER}-2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("corpus")
    # 2 speakers x 2 utterances: one unseen-sentence test utterance, two of the unseen speaker.
    make_corpus(root, speakers=2, utterances=2, seed=0)
    return root


@pytest.fixture(scope="module")
def evaluated(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("eval") / "report.json"
    cache = tmp_path_factory.mktemp("cache")
    argv = ["--data", str(corpus), "--split", "test_unseen_sentences", "--json", str(out), "--steps", "2"]
    # The sweep's one entry equals the model's settings, so its audio is reused rather than sampled again.
    argv += ["--sweep", f"{DEFAULT_SAMPLER}-2", "--cache-dir", str(cache), "--limit", "1"]
    argv += ["--mel-figure", str(out.parent / "mels.png"), "--prior"]
    return evaluate_main(argv), out


def test_report_has_every_system_with_every_metric(evaluated: tuple[int, Path]) -> None:
    rc, out = evaluated
    assert rc == 0
    report = json.loads(out.read_text())
    entries = {name: report[name] for name in SYSTEMS}
    assert set(report["ablations"]) == set(ABLATIONS)
    entries.update(report["ablations"])
    for name, entry in entries.items():
        assert entry["n_utterances"] == 1, name
        for key in METRICS:
            assert isinstance(entry[key], float), (name, key)
        assert set(entry["slot_accuracy"]) == set(SLOT_NAMES.values())
    # No --sampler: the checkpoint's own default.
    assert report["model"]["sampler"] == DEFAULT_SAMPLER and report["model"]["steps"] == 2
    assert report["ablations"]["gt_audio_speaker"]["speaker"] == "audio"
    assert report["ablations"]["no_speaker"]["speaker"] == "null"
    assert report["model"]["denoiser"] == "model"
    prior = report["ablations"]["visual_prior"]
    assert (prior["denoiser"], prior["sampler"], prior["steps"]) == ("prior", "ddim", 1)
    assert prior["mcd"] != report["model"]["mcd"]  # sampled on its own, not reused from the model's audio
    assert report["meta"]["split"] == "test_unseen_sentences"
    same = report["ablations"][f"{DEFAULT_SAMPLER}-2"]
    assert all(same[key] == report["model"][key] for key in METRICS)


def test_mel_figure_has_one_row_per_utterance(evaluated: tuple[int, Path]) -> None:
    from PIL import Image

    _, out = evaluated
    report = json.loads(out.read_text())
    figure = Path(report["meta"]["mel_figure"])
    assert figure == out.parent / "mels.png"
    with Image.open(figure) as image:
        assert image.format == "PNG"
        # 12 x 2.6 inches per row at 80 dpi; --limit 1 gives one row (generated | ground truth).
        assert image.size == (960, 208)
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 10.0  # the spectrograms were drawn, not an empty canvas


def test_ceilings_score_as_ceilings(evaluated: tuple[int, Path]) -> None:
    report = json.loads(evaluated[1].read_text())
    gt, voc = report["ground_truth"], report["vocoder_ceiling"]
    assert gt["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert gt["mcd"] == pytest.approx(0.0, abs=1e-9)
    assert gt["secs"] == pytest.approx(1.0, abs=1e-5)
    # The grammar ASR understands the corpus's own speech, and HiFi-GAN keeps it intelligible.
    assert gt["wer"] <= 0.2
    assert voc["stoi"] > 0.8
    assert voc["secs"] > 0.8


def test_markdown_table_and_utterance_rows_are_written(evaluated: tuple[int, Path]) -> None:
    out = evaluated[1]
    table = out.with_suffix(".md").read_text()
    for label in (
        "ground_truth",
        "vocoder_ceiling",
        "model",
        "ablation: gt_audio_speaker",
        f"ablation: {DEFAULT_SAMPLER}-2",
    ):
        assert f"| {label} |" in table
    assert "| verb | colour | preposition | letter | digit | adverb |" in table
    rows = [json.loads(line) for line in out.with_name("report.utterances.jsonl").read_text().splitlines()]
    assert {r["system"] for r in rows} == {*SYSTEMS, *ABLATIONS}
    assert all(r["utt_id"] == rows[0]["utt_id"] and r["hyp_whisper"] is not None for r in rows)


def test_video_mode_describes_audio_without_ground_truth(corpus: Path, tmp_path: Path) -> None:
    video = next((corpus / "test_unseen_speaker").rglob("*.mp4"))
    duration = json.loads(video.with_suffix(".json").read_text())["duration"]
    out = tmp_path / "videos.json"
    rc = evaluate_main(["--video", str(video), "--json", str(out), "--steps", "2", "--no-whisper"])
    assert rc == 0
    (entry,) = json.loads(out.read_text())["videos"]
    assert entry["seconds"] == pytest.approx(duration, abs=0.05)
    assert 1.0 <= entry["dnsmos"] <= 5.0
    assert entry["hyp_whisper"] is None


def test_exported_engines_are_evaluated_from_their_folder(corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from model_export.cli import main as export_main

    engines = tmp_path / "engines"
    assert (
        export_main(["--out", str(engines), "--networks", "encoder,speaker,denoiser,vocoder", "--int8"]) == 0
    )
    video = next((corpus / "test_unseen_speaker").rglob("*.mp4"))
    out = tmp_path / "int8.json"
    argv = ["--video", str(video), "--json", str(out), "--steps", "2", "--no-whisper"]
    # The engine needs its exported files: without the folder it is a clear input error, not a crash.
    assert evaluate_main([*argv, "--engine", "onnxruntime-cpu-int8"]) == 2
    assert not out.exists()
    assert evaluate_main([*argv, "--engine", "onnxruntime-cpu-int8", "--engine-dir", str(engines)]) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["engine"] == "onnxruntime-cpu-int8"
    assert 1.0 <= report["videos"][0]["dnsmos"] <= 5.0


def test_bad_inputs_exit_with_an_input_error(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    assert evaluate_main(["--data", str(corpus), "--split", "nope", "--json", str(out), "--no-whisper"]) == 2
    assert evaluate_main(["--data", str(tmp_path / "missing"), "--json", str(out), "--no-whisper"]) == 2
    assert evaluate_main(["--data", str(corpus), "--json", str(out), "--sweep", "ddim-10-cfgx"]) == 2
    assert not out.exists()


def test_evaluate_takes_the_sampling_flags_of_synthesize_defaulting_to_the_checkpoint() -> None:
    from lab.evaluation.cli import build_parser

    base = ["--data", "corpus", "--json", "out.json"]
    flags = [
        "--sampler",
        "ddim",
        "--steps",
        "3",
        "--guidance",
        "0.5",
        "--cfg-scale",
        "2",
        "--noise-scale",
        "0.4",
    ]
    ns = build_parser().parse_args([*base, *flags])
    assert (ns.sampler, ns.steps, ns.guidance, ns.cfg_scale, ns.noise_scale) == ("ddim", 3, 0.5, 2.0, 0.4)
    ns = build_parser().parse_args(base)
    assert (ns.sampler, ns.steps, ns.cfg_scale, ns.noise_scale) == (None, None, None, None)
