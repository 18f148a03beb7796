"""ONNX export of the `small` preset and the ONNX Runtime CPU engine: files, metadata, parity with torch
after full sampling (same noise), start-up errors on mismatching files and on a provider fallback, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffv2s.checkpoints.store import Checkpoint, load_checkpoint, save_checkpoint
from diffv2s.config import preset
from diffv2s.engines import Engines, torch_engines
from diffv2s.engines_onnx import CUDA, NETWORKS, build_engines, network_specs
from diffv2s.errors import CheckpointError, EngineUnavailable
from diffv2s.model import build_initial_model
from diffv2s.nn.hifigan import make_vocoder

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from model_export.cli import main as export_main  # noqa: E402
from model_export.onnx_export import export_onnx, load_model  # noqa: E402
from model_export.verify import random_video, sample_mel  # noqa: E402

torch.set_num_threads(1)  # one thread: OpenMP barriers stall badly on a loaded machine
CPU = torch.device("cpu")


def _checkpoint(path: Path, seed: int) -> Checkpoint:
    model = build_initial_model(preset("small"), seed=seed)
    with torch.no_grad():  # non-zero null vectors so the unconditional path differs from the conditional
        model.denoiser.null_visual.normal_(generator=torch.Generator().manual_seed(seed))
        model.denoiser.null_speaker.normal_(generator=torch.Generator().manual_seed(seed + 1))
    save_checkpoint(path, model.cfg, model.state_dict(), {"trained": False})
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path]:
    root = tmp_path_factory.mktemp("export")
    ckpt = _checkpoint(root / "small.pt", seed=0)
    export_onnx(ckpt, root / "engines", int8=True)
    return ckpt, root / "engines"


@pytest.fixture(scope="module")
def both(exported: tuple[Checkpoint, Path]) -> tuple[Engines, Engines]:
    """(torch reference, ONNX Runtime CPU) engines of the same checkpoint."""
    ckpt, engine_dir = exported
    cfg = ckpt.config
    ref = torch_engines(load_model(ckpt), make_vocoder(cfg.vocoder, cfg.audio, CPU), CPU)
    eng = build_engines(
        "onnxruntime-cpu", load_model(ckpt), make_vocoder(cfg.vocoder, cfg.audio, CPU), CPU, engine_dir, ckpt
    )
    return ref, eng


def test_one_file_per_network_with_metadata_and_dynamic_axes(exported: tuple[Checkpoint, Path]) -> None:
    ckpt, engine_dir = exported
    specs = network_specs(ckpt.config)
    for name in NETWORKS:
        model = onnx.load(str(engine_dir / f"{name}.onnx"))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["diffv2s.network"] == name
        assert meta["diffv2s.checkpoint_sha256"] == ckpt.sha256
        assert json.loads(meta["diffv2s.config"]) == json.loads(json.dumps(ckpt.config.to_dict()))
        assert meta["diffv2s.format_version"] == "1"
        axes = json.loads(meta["diffv2s.axes"])
        for value in (*model.graph.input, *model.graph.output):
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            assert dims == axes[value.name]
            assert dims[0] == "batch"  # every tensor has a dynamic batch axis
        # Time axes are named (dynamic), never frozen to the example size.
        time_axes = {d for v in model.graph.input for d in axes[v.name] if isinstance(d, str)} - {"batch"}
        assert time_axes, name
        assert [i.name for i in model.graph.input] == [t.name for t in specs[name].inputs]


@pytest.mark.parametrize(
    ("frames", "sampler", "steps"),
    [([12], "dpmpp", 4), ([20, 9], "dpmpp", 4), ([16, 5, 11, 16], "ddpm", 3)],
    ids=["batch1", "batch2", "batch4-ddpm"],
)
def test_onnxruntime_cpu_mel_matches_torch_after_full_sampling(
    both: tuple[Engines, Engines],
    exported: tuple[Checkpoint, Path],
    frames: list[int],
    sampler: str,
    steps: int,
) -> None:
    ref, eng = both
    cfg = exported[0].config
    video, _ = random_video(cfg, batch=len(frames), frames=max(frames), seed=len(frames))
    pad = torch.arange(max(frames))[None, :] >= torch.tensor(frames)[:, None]
    seeds = [7 + i for i in range(len(frames))]
    expected = sample_mel(ref, cfg, video, pad, seeds, steps, sampler)
    got = sample_mel(eng, cfg, video, pad, seeds, steps, sampler)
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
    plain = sample_mel(ref, cfg, video, pad, [1, 2], 2)
    expected = sample_mel(ref, cfg, video, pad, [1, 2], 2, guidance_scale=5.0)
    got = sample_mel(eng, cfg, video, pad, [1, 2], 2, guidance_scale=5.0)
    assert (
        expected - plain
    ).abs().max() > 1e-2  # guidance changes the output, so the check below means something
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
    other = _checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(CheckpointError, match="exported from checkpoint sha256") as info:
        Synthesizer.load(other.path, engine="onnxruntime-cpu", engine_dir=engine_dir)
    assert other.sha256[:12] in info.value.message
    assert "diffv2s export" in info.value.message


def test_swapped_or_foreign_engine_files_fail_at_start(
    exported: tuple[Checkpoint, Path], tmp_path: Path
) -> None:
    ckpt, engine_dir = exported
    cfg = ckpt.config
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for name in NETWORKS:
        (swapped / f"{name}.onnx").symlink_to(engine_dir / f"{name}.onnx")
    (swapped / "encoder.onnx").unlink()
    (swapped / "encoder.onnx").symlink_to(engine_dir / "denoiser.onnx")
    vocoder = make_vocoder(cfg.vocoder, cfg.audio, CPU)
    with pytest.raises(CheckpointError, match="holds the 'denoiser' network, expected 'encoder'"):
        build_engines("onnxruntime-cpu", load_model(ckpt), vocoder, CPU, swapped, ckpt)

    foreign = onnx.load(str(engine_dir / "speaker.onnx"))
    del foreign.metadata_props[:]
    (swapped / "encoder.onnx").unlink()
    onnx.save(foreign, str(swapped / "encoder.onnx"))
    with pytest.raises(CheckpointError, match="not a DiffV2S engine file"):
        build_engines("onnxruntime-cpu", load_model(ckpt), vocoder, CPU, swapped, ckpt)

    (swapped / "encoder.onnx").unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        build_engines("onnxruntime-cpu", load_model(ckpt), vocoder, CPU, swapped, ckpt)


def test_provider_fallback_is_a_startup_error(exported: tuple[Checkpoint, Path]) -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA: no fallback to provoke")
    ckpt, engine_dir = exported
    cfg = ckpt.config
    vocoder = make_vocoder(cfg.vocoder, cfg.audio, CPU)
    # ONNX Runtime itself accepts this request and quietly runs on the CPU; the engine must refuse.
    with pytest.raises(EngineUnavailable) as info:
        build_engines("onnxruntime-cuda", load_model(ckpt), vocoder, CPU, engine_dir, ckpt)
    assert "CUDAExecutionProvider" in info.value.message
    assert "runs on ['CPUExecutionProvider']" in info.value.message
    assert isinstance(info.value, CheckpointError)  # start-up errors are handled as one kind


def test_cli_export_and_verify_exit_codes(
    exported: tuple[Checkpoint, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, engine_dir = exported
    assert (
        export_main(["--checkpoint", str(ckpt.path), "--out", str(tmp_path), "--networks", "denoiser"]) == 0
    )
    with pytest.raises(SystemExit):  # --int8 quantises the denoiser, which this call would not export
        export_main(
            ["--checkpoint", str(ckpt.path), "--out", str(tmp_path), "--networks", "encoder", "--int8"]
        )
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "denoiser.onnx")).metadata_props}
    assert meta["diffv2s.checkpoint_sha256"] == ckpt.sha256

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
    quick = ["--video", "none", "--steps", "2", "--frames", "4", "--guidance", "0"]
    assert export_main([*base, *quick, "--json", str(report)]) == 0
    checks = json.loads(report.read_text())
    names = {c["check"] for c in checks}
    assert {"encoder/random", "speaker/random", "denoiser/random", "vocoder/random", "mel/random"} <= names
    assert all(c["passed"] and c["max_abs"] <= 1e-3 for c in checks)
    # The int8 engine is checked against its own tolerance, found in the folder without asking.
    int8 = tmp_path / "verify-int8.json"
    assert export_main([*base[:-2], *quick, "--json", str(int8)]) == 0
    by_engine = {(c["engine"], c["check"]): c for c in json.loads(int8.read_text())}
    assert by_engine[("onnxruntime-cpu-int8", "mel/random")]["mean_abs"] > 1e-5
    assert by_engine[("onnxruntime-cpu", "mel/random")]["max_abs"] <= 1e-3
    # A zero tolerance cannot hold for a different runtime: the command must say so in its exit status.
    assert export_main([*base, *quick, "--atol", "0", "--rtol", "0"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_int8_denoiser_file_has_int8_weights_and_says_so(exported: tuple[Checkpoint, Path]) -> None:
    ckpt, engine_dir = exported
    fp32 = onnx.load(str(engine_dir / "denoiser.onnx"))
    int8 = onnx.load(str(engine_dir / "denoiser.int8.onnx"))
    weights = {i.name for i in int8.graph.initializer}
    ops = [n.op_type for n in int8.graph.node]
    # Every linear layer's MatMul became an integer MatMul on int8 weights; float MatMuls left are the
    # attention's two activation x activation products per layer.
    float_matmuls = [n for n in int8.graph.node if n.op_type == "MatMul"]
    assert all(not set(n.input) & weights for n in float_matmuls)
    assert len(float_matmuls) == 2 * ckpt.config.denoiser.layers
    fp32_ops = [n.op_type for n in fp32.graph.node]
    # (the quantiser turns each Gemm, the timestep MLP's, into a MatMul first)
    linear = fp32_ops.count("MatMul") + fp32_ops.count("Gemm") - len(float_matmuls)
    assert ops.count("MatMulInteger") == linear
    int8_weights = [i for i in int8.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8_weights
    # 7-bit weights: uint8 x int8 pair sums then fit int16 on CPUs without VNNI (see quantize_int8).
    for w in int8_weights:
        values = onnx.numpy_helper.to_array(w)
        assert values.min() >= -64 and values.max() <= 64, (w.name, values.min(), values.max())
    meta = {p.key: p.value for p in int8.metadata_props}
    fp32_meta = {p.key: p.value for p in fp32.metadata_props}
    assert meta["diffv2s.weights"] == "int8" and fp32_meta["diffv2s.weights"] == "fp32"
    assert {k: v for k, v in meta.items() if k != "diffv2s.weights"} == {
        k: v for k, v in fp32_meta.items() if k != "diffv2s.weights"
    }
    assert (engine_dir / "denoiser.int8.onnx").stat().st_size < 0.5 * (
        engine_dir / "denoiser.onnx"
    ).stat().st_size


def test_int8_engine_mel_is_close_to_torch_but_not_equal(
    both: tuple[Engines, Engines], exported: tuple[Checkpoint, Path]
) -> None:
    ref, _ = both
    ckpt, engine_dir = exported
    cfg = ckpt.config
    eng = build_engines(
        "onnxruntime-cpu-int8",
        load_model(ckpt),
        make_vocoder(cfg.vocoder, cfg.audio, CPU),
        CPU,
        engine_dir,
        ckpt,
    )
    assert eng.details["denoiser_weights"].startswith("int8")
    frames = [20, 9]
    video, _ = random_video(cfg, batch=2, frames=20, seed=2)
    pad = torch.arange(20)[None, :] >= torch.tensor(frames)[:, None]
    expected = sample_mel(ref, cfg, video, pad, [3, 4], 4)
    got = sample_mel(eng, cfg, video, pad, [3, 4], 4)
    err = (got - expected).abs()
    assert err.max() > 1e-4  # the quantised file really runs (float32 would be within 1e-5)
    assert err.mean() <= 0.05 * expected.abs().mean(), (float(err.mean()), float(expected.abs().mean()))


def test_int8_engine_refuses_a_missing_or_float_file(
    exported: tuple[Checkpoint, Path], tmp_path: Path
) -> None:
    import shutil

    ckpt, engine_dir = exported
    cfg = ckpt.config
    for name in NETWORKS:
        shutil.copy(engine_dir / f"{name}.onnx", tmp_path / f"{name}.onnx")

    def start() -> None:
        vocoder = make_vocoder(cfg.vocoder, cfg.audio, CPU)
        build_engines("onnxruntime-cpu-int8", load_model(ckpt), vocoder, CPU, tmp_path, ckpt)

    with pytest.raises(CheckpointError, match=r"does not exist.*--int8"):
        start()
    shutil.copy(engine_dir / "denoiser.onnx", tmp_path / "denoiser.int8.onnx")
    with pytest.raises(CheckpointError, match="holds fp32 weights, expected int8"):
        start()


def test_load_model_takes_the_shipped_checkpoint_with_shared_encoder_weights_stored_once() -> None:
    from diffv2s.checkpoints.store import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("the shipped checkpoint is not built yet")
    ckpt = load_checkpoint(DEFAULT_CHECKPOINT)
    model = load_model(ckpt)
    for key, value in model.state_dict().items():
        stored = ckpt.state_dict.get(key, ckpt.state_dict.get(key.removeprefix("speaker.")))
        assert stored is not None, key
        assert torch.equal(value, stored), key
    broken = Checkpoint(
        ckpt.config, {k: v for k, v in ckpt.state_dict.items() if not k.startswith("denoiser.")}
    )
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_model(broken)
