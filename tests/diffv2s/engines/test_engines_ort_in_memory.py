"""The engine "onnxruntime-cpu" without exported files: the networks traced in memory at load, the default
of `Synthesizer.load()` on a CPU. Parity with torch after full sampling on the production path (same noise,
guidance included), the same graphs as `diffv2s export` writes, and which engine a process runs when."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffv2s.checkpoints.store import Checkpoint
from diffv2s.checkpoints.weights import load_model
from diffv2s.engines.ort_backend import build_ort_engines
from diffv2s.engines.spec import NETWORKS, Engines, resolve_engine
from diffv2s.errors import CheckpointError
from diffv2s.nn.hifigan import make_vocoder
from diffv2s.schemas import SynthesisParams
from tests.fixtures.engines import engines_of, small_checkpoint

ort = pytest.importorskip("onnxruntime")

from model_export.verify import production_mels, random_video  # noqa: E402

torch.set_num_threads(1)  # one thread: OpenMP barriers stall badly on a loaded machine


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    return small_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt", seed=0)


@pytest.fixture(scope="module")
def both(ckpt: Checkpoint) -> tuple[Engines, Engines]:
    """(torch reference, ONNX Runtime CPU traced in memory) engines of the same checkpoint."""
    return engines_of("torch", ckpt), engines_of("onnxruntime-cpu", ckpt)


def test_in_memory_engine_runs_every_network_in_onnxruntime(both: tuple[Engines, Engines]) -> None:
    _, eng = both
    assert eng.name == "onnxruntime-cpu"
    for name in ("encoder", "speaker", "denoiser"):
        assert eng.details[name] == "CPUExecutionProvider"
    assert eng.details["vocoder"].startswith("onnxruntime-cpu")
    assert eng.details["files"].startswith("none")
    assert eng.speaker_from_mel is not None  # guidance keeps the torch gradient path


@pytest.mark.parametrize(
    ("frames", "params"),
    [
        ([12], SynthesisParams()),
        ([20, 9], SynthesisParams(sampler="dpmpp", steps=4)),
        ([10, 6], SynthesisParams(steps=2, guidance=5.0)),
    ],
    ids=["batch1-defaults", "batch2-dpmpp", "batch2-speaker-guidance"],
)
def test_in_memory_mel_matches_torch_after_full_sampling(
    both: tuple[Engines, Engines], ckpt: Checkpoint, frames: list[int], params: SynthesisParams
) -> None:
    """Same production path (`diffv2s.sampling`: the engine's one-call denoiser -> CFG -> guidance ->
    sampler) on both engines, same noise: the mels agree to 1e-3."""
    ref, eng = both
    cfg = ckpt.config
    video, _ = random_video(cfg, batch=len(frames), frames=max(frames), seed=len(frames))
    pad = torch.arange(max(frames))[None, :] >= torch.tensor(frames)[:, None]
    seeds = [7 + i for i in range(len(frames))]
    expected = production_mels(ref, cfg, video, pad, seeds, params)
    got = production_mels(eng, cfg, video, pad, seeds, params)
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.1  # a real signal, not an all-zero output
    assert (got - expected).abs().max() <= 1e-3


def test_in_memory_vocoder_matches_torch(both: tuple[Engines, Engines]) -> None:
    ref, eng = both
    mel = torch.rand(2, 80, 24, generator=torch.Generator().manual_seed(0)) * 10 - 9
    with torch.inference_mode():
        expected, got = ref.vocoder(mel), eng.vocoder(mel)
    assert got.shape == expected.shape == (2, 24 * 256)
    assert (got - expected).abs().max() <= 1e-3


def test_in_memory_graphs_are_the_exported_graphs(ckpt: Checkpoint, tmp_path: Path) -> None:
    """`diffv2s export` and the in-memory trace give the same nodes (the files add metadata and shape
    pins only)."""
    onnx = pytest.importorskip("onnx")
    from diffv2s.engines.graphs import network_module, network_onnx
    from model_export.onnx_export import export_onnx

    paths = export_onnx(ckpt, tmp_path, networks=("encoder", "speaker", "denoiser"))
    model = load_model(ckpt)
    for name, path in paths.items():
        exported = onnx.load(str(path))
        traced = onnx.load_from_string(network_onnx(name, network_module(name, model), ckpt.config))
        assert [n.op_type for n in traced.graph.node] == [n.op_type for n in exported.graph.node], name
        assert len(traced.graph.initializer) == len(exported.graph.initializer), name


def test_which_engine_a_process_runs() -> None:
    assert resolve_engine(None, "cpu") == "onnxruntime-cpu"
    assert resolve_engine(None, "cuda") == "torch"
    assert resolve_engine("torch", "cpu") == "torch"
    assert resolve_engine("tensorrt", "cuda") == "tensorrt"


def test_synthesizer_defaults_to_onnxruntime_on_the_cpu_and_torch_stays_available(ckpt: Checkpoint) -> None:
    from diffv2s.pipeline import Synthesizer

    default = Synthesizer.load(ckpt.path)
    assert default.info["engine"] == "onnxruntime-cpu"
    assert all(default.info["engine_details"][n] for n in NETWORKS)
    default.warmup(n_frames=8)
    plain = Synthesizer.load(ckpt.path, engine="torch")
    assert plain.info["engine"] == "torch"
    assert plain.info["engine_details"]["vocoder"].startswith("onnxruntime-cpu")


def test_other_onnxruntime_engines_still_need_their_files(ckpt: Checkpoint) -> None:
    with pytest.raises(CheckpointError, match="needs the folder of exported files"):
        engines_of("onnxruntime-cpu-int8", ckpt)
    cfg = ckpt.config
    model = load_model(ckpt)
    voc = make_vocoder(cfg.vocoder, cfg.audio)
    with pytest.raises(CheckpointError, match="runs on the CPU"):
        build_ort_engines("onnxruntime-cpu", model, voc, torch.device("cuda"), None, ckpt)
