"""`diffv2s export verify` checks the path production runs: the pipeline, verify and the evaluation's
`model` system sample identical mels for the same inputs and seeds at the checkpoint's defaults; the
command's exit status and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffv2s.checkpoints.store import Checkpoint
from diffv2s.pipeline import Synthesizer
from diffv2s.sampling import MelBatch
from diffv2s.schemas import SynthesisParams, resolve_sampling
from diffv2s.video.mouth_roi import MouthROI
from tests.fixtures.engines import export_small
from tests.fixtures.videos import fake_roi

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from model_export.cli import main as export_main  # noqa: E402
from model_export.verify import production_mels  # noqa: E402

# The second video is longer than a window, so windowing is on the path too.
ROIS = [fake_roi(30, seed=1), fake_roi(270, seed=2), fake_roi(9, seed=3)]
SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    torch.set_num_threads(2)
    return Synthesizer.load()  # the shipped checkpoint, the default engine (onnxruntime-cpu here)


@pytest.fixture(scope="module")
def served(synth: Synthesizer) -> MelBatch:
    """What the service makes of ROIS: `Synthesizer.generate_mels`, no sampling parameter set."""
    return synth.generate_mels(ROIS, [SynthesisParams(seed=s) for s in SEEDS])


def _padded(rois: list[MouthROI]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(r.n_frames for r in rois)
    video = torch.zeros(len(rois), 1, n, 88, 88)
    for b, roi in enumerate(rois):
        video[b, 0, : roi.n_frames] = torch.from_numpy(roi.frames)
    return video, torch.arange(n)[None, :] >= torch.tensor([r.n_frames for r in rois])[:, None]


def test_the_served_mels_ran_with_the_checkpoints_defaults(synth: Synthesizer, served: MelBatch) -> None:
    defaults = resolve_sampling(SynthesisParams(), synth.cfg)
    d = synth.cfg.diffusion
    assert (defaults.sampler, defaults.steps) == (d.default_sampler, d.default_steps)
    # The shipped defaults exercise classifier-free guidance and a scaled starting noise.
    assert defaults.cfg_scale != 1.0 and defaults.noise_scale != 1.0
    assert [s.as_dict() for s in served.sampling] == [{**defaults.as_dict(), "seed": s} for s in SEEDS]


def test_verify_samples_the_served_mels_to_the_bit(synth: Synthesizer, served: MelBatch) -> None:
    """`production_mels` (what `diffv2s export verify` compares every engine on) on the same frames and
    seeds gives exactly the mels the service made."""
    verified = production_mels(synth.engines, synth.cfg, *_padded(ROIS), SEEDS)
    for b, mel in enumerate(served.mels):
        assert torch.equal(verified[b, :, : mel.shape[1]], mel), b
        assert not verified[b, :, mel.shape[1] :].any()


def test_the_evaluations_model_system_samples_the_served_mels_to_the_bit(
    synth: Synthesizer, served: MelBatch
) -> None:
    """The evaluation's `model` system at default options scores exactly what the service makes."""
    harness = pytest.importorskip("lab.evaluation.harness")
    from lab.evaluation.systems import system_mels

    model_spec, _ = harness.plan_systems(synth, harness.EvalOptions())
    evaluated = system_mels(synth, model_spec, ROIS, SEEDS)
    for b, (got, want) in enumerate(zip(evaluated, served.mels, strict=True)):
        assert torch.equal(got, want), b


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path]:
    return export_small(tmp_path_factory.mktemp("export"))


def test_cli_verify_checks_the_checkpoints_defaults_and_says_so_in_its_exit_status(
    exported: tuple[Checkpoint, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.set_num_threads(1)
    ckpt, engine_dir = exported
    base = [
        "verify",
        "--engines",
        str(engine_dir),
        "--checkpoint",
        str(ckpt.path),
        "--engine",
        "onnxruntime-cpu",
    ]
    report = tmp_path / "verify.json"
    quick = ["--video", "none", "--frames", "4", "--guidance", "0"]
    assert export_main([*base, *quick, "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "mel checks: sampler ddim, 4 steps, cfg_scale 1.5, noise_scale 0.5" in out
    checks = json.loads(report.read_text())
    names = {c["check"] for c in checks}
    assert {"encoder/random", "speaker/random", "denoiser/random", "vocoder/random", "mel/random"} <= names
    assert "mel/guided" not in names  # --guidance 0 skips it
    assert all(c["passed"] and c["max_abs"] <= 1e-3 for c in checks)
    # The int8 engine is checked against its own tolerance, found in the folder without asking.
    int8 = tmp_path / "verify-int8.json"
    assert export_main([*base[:-2], *quick, "--steps", "2", "--json", str(int8)]) == 0
    by_engine = {(c["engine"], c["check"]): c for c in json.loads(int8.read_text())}
    assert by_engine[("onnxruntime-cpu-int8", "mel/random")]["mean_abs"] > 1e-5
    assert by_engine[("onnxruntime-cpu", "mel/random")]["max_abs"] <= 1e-3
    # A zero tolerance cannot hold for a different runtime: the command must say so in its exit status.
    assert export_main([*base, *quick, "--steps", "2", "--atol", "0", "--rtol", "0"]) == 1
    assert "FAIL" in capsys.readouterr().out
