"""The ONNX Runtime backend on the `small` preset's exported files: parity with torch after full sampling on
the production path (same noise), the guidance gradient path, start-up errors on mismatching files and on
a provider fallback, the int8 engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from diffv2s.checkpoints.store import Checkpoint
from diffv2s.config import ModelConfig
from diffv2s.engines.spec import CUDA, NETWORKS, Engines
from diffv2s.errors import CheckpointError, InferenceEngineUnavailable
from diffv2s.schemas import SynthesisParams
from tests.fixtures.engines import engines_of, export_small, small_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from model_export.verify import production_mels, random_video  # noqa: E402

torch.set_num_threads(1)  # one thread: OpenMP barriers stall badly on a loaded machine


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path]:
    return export_small(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def both(exported: tuple[Checkpoint, Path]) -> tuple[Engines, Engines]:
    """(torch reference, ONNX Runtime CPU) engines of the same checkpoint."""
    ckpt, engine_dir = exported
    return engines_of("torch", ckpt), engines_of("onnxruntime-cpu", ckpt, engine_dir)


def _video(cfg: ModelConfig, frames: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    video, _ = random_video(cfg, batch=len(frames), frames=max(frames), seed=len(frames))
    return video, torch.arange(max(frames))[None, :] >= torch.tensor(frames)[:, None]


@pytest.mark.parametrize(
    ("frames", "params"),
    [
        ([12], SynthesisParams()),
        ([20, 9], SynthesisParams(sampler="dpmpp", steps=4)),
        ([16, 5, 11, 16], SynthesisParams(sampler="ddpm", steps=3, cfg_scale=1.0, noise_scale=1.0)),
    ],
    ids=["batch1-defaults", "batch2-dpmpp", "batch4-ddpm-no-cfg"],
)
def test_onnxruntime_cpu_mel_matches_torch_after_full_sampling(
    both: tuple[Engines, Engines],
    exported: tuple[Checkpoint, Path],
    frames: list[int],
    params: SynthesisParams,
) -> None:
    ref, eng = both
    cfg = exported[0].config
    video, pad = _video(cfg, frames)
    seeds = [7 + i for i in range(len(frames))]
    expected = production_mels(ref, cfg, video, pad, seeds, params)
    got = production_mels(eng, cfg, video, pad, seeds, params)
    assert got.shape == expected.shape == (len(frames), 80, round(max(frames) * cfg.audio.mel_rate / 25))
    assert expected.abs().max() > 0.1  # a real signal, not an all-zero output
    assert (got - expected).abs().max() <= 1e-3


def test_speaker_guidance_on_onnxruntime_matches_torch(
    both: tuple[Engines, Engines], exported: tuple[Checkpoint, Path]
) -> None:
    ref, eng = both
    cfg = exported[0].config
    assert eng.speaker_from_mel is not None
    video, pad = random_video(cfg, batch=2, frames=6, seed=3)
    plain = production_mels(ref, cfg, video, pad, [1, 2], SynthesisParams(steps=2))
    guided = SynthesisParams(steps=2, guidance=5.0)
    expected = production_mels(ref, cfg, video, pad, [1, 2], guided)
    got = production_mels(eng, cfg, video, pad, [1, 2], guided)
    # Guidance changes the output, so the check below means something.
    assert (expected - plain).abs().max() > 1e-2
    assert (got - expected).abs().max() <= 1e-3


def test_vocoder_engine_matches_torch(both: tuple[Engines, Engines]) -> None:
    ref, eng = both
    mel = torch.rand(2, 80, 24, generator=torch.Generator().manual_seed(0)) * 10 - 9
    with torch.inference_mode():
        expected, got = ref.vocoder(mel), eng.vocoder(mel)
    assert got.shape == expected.shape == (2, 24 * 256)
    assert (got - expected).abs().max() <= 1e-3


def test_synthesizer_starts_on_onnxruntime_and_reports_providers(exported: tuple[Checkpoint, Path]) -> None:
    from diffv2s.pipeline import Synthesizer

    ckpt, engine_dir = exported
    synth = Synthesizer.load(ckpt.path, engine="onnxruntime-cpu", engine_dir=engine_dir)
    info = synth.info
    assert info["engine"] == "onnxruntime-cpu"
    for name in NETWORKS:
        assert info["engine_details"][name] == "CPUExecutionProvider"
    synth.warmup(n_frames=8)


def test_engine_files_of_another_checkpoint_fail_at_start(
    exported: tuple[Checkpoint, Path], tmp_path: Path
) -> None:
    from diffv2s.pipeline import Synthesizer

    _, engine_dir = exported
    other = small_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(CheckpointError, match="exported from checkpoint sha256") as info:
        Synthesizer.load(other.path, engine="onnxruntime-cpu", engine_dir=engine_dir)
    assert other.sha256[:12] in info.value.message
    assert "diffv2s export" in info.value.message


def test_swapped_or_foreign_engine_files_fail_at_start(
    exported: tuple[Checkpoint, Path], tmp_path: Path
) -> None:
    ckpt, engine_dir = exported
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for name in NETWORKS:
        (swapped / f"{name}.onnx").symlink_to(engine_dir / f"{name}.onnx")
    (swapped / "encoder.onnx").unlink()
    (swapped / "encoder.onnx").symlink_to(engine_dir / "denoiser.onnx")
    with pytest.raises(CheckpointError, match="holds the 'denoiser' network, expected 'encoder'"):
        engines_of("onnxruntime-cpu", ckpt, swapped)

    foreign = onnx.load(str(engine_dir / "speaker.onnx"))
    del foreign.metadata_props[:]
    (swapped / "encoder.onnx").unlink()
    onnx.save(foreign, str(swapped / "encoder.onnx"))
    with pytest.raises(CheckpointError, match="not a DiffV2S engine file"):
        engines_of("onnxruntime-cpu", ckpt, swapped)

    (swapped / "encoder.onnx").unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        engines_of("onnxruntime-cpu", ckpt, swapped)


def test_provider_fallback_is_a_startup_error(exported: tuple[Checkpoint, Path]) -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA: no fallback to provoke")
    ckpt, engine_dir = exported
    # ONNX Runtime itself accepts this request and quietly runs on the CPU; the engine must refuse.
    with pytest.raises(InferenceEngineUnavailable) as info:
        engines_of("onnxruntime-cuda", ckpt, engine_dir)
    assert "CUDAExecutionProvider" in info.value.message
    assert "runs on ['CPUExecutionProvider']" in info.value.message
    assert isinstance(info.value, CheckpointError)  # start-up errors are handled as one kind


def test_int8_engine_mel_is_close_to_torch_but_not_equal(
    both: tuple[Engines, Engines], exported: tuple[Checkpoint, Path]
) -> None:
    ref, _ = both
    ckpt, engine_dir = exported
    cfg = ckpt.config
    eng = engines_of("onnxruntime-cpu-int8", ckpt, engine_dir)
    assert eng.details["denoiser_weights"].startswith("int8")
    video, pad = _video(cfg, [20, 9])
    params = SynthesisParams(sampler="dpmpp", steps=4)
    expected = production_mels(ref, cfg, video, pad, [3, 4], params)
    got = production_mels(eng, cfg, video, pad, [3, 4], params)
    err = (got - expected).abs()
    assert err.max() > 1e-4  # the quantised file really runs (float32 would be within 1e-5)
    assert err.mean() <= 0.05 * expected.abs().mean(), (float(err.mean()), float(expected.abs().mean()))


def test_int8_engine_refuses_a_missing_or_float_file(
    exported: tuple[Checkpoint, Path], tmp_path: Path
) -> None:
    ckpt, engine_dir = exported
    for name in NETWORKS:
        shutil.copy(engine_dir / f"{name}.onnx", tmp_path / f"{name}.onnx")
    with pytest.raises(CheckpointError, match=r"does not exist.*--int8"):
        engines_of("onnxruntime-cpu-int8", ckpt, tmp_path)
    shutil.copy(engine_dir / "denoiser.onnx", tmp_path / "denoiser.int8.onnx")
    with pytest.raises(CheckpointError, match="holds fp32 weights, expected int8"):
        engines_of("onnxruntime-cpu-int8", ckpt, tmp_path)
