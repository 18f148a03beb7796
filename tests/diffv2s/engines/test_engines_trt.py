"""Native TensorRT engines: profiles and cache keys (everywhere), clear errors without TensorRT, and on a CUDA
GPU with TensorRT: parity with torch (fp32 and fp16) and the engine cache being built once, then reused."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from diffv2s.checkpoints.store import Checkpoint, load_checkpoint, save_checkpoint
from diffv2s.checkpoints.weights import load_model
from diffv2s.config import preset
from diffv2s.engines.build import build_engines
from diffv2s.engines.profiles import ShapeLimits, shape_profile
from diffv2s.engines.spec import NETWORKS, network_specs
from diffv2s.engines.torch_backend import torch_engines
from diffv2s.engines.trt_backend import CACHE_DIR, cache_key
from diffv2s.errors import InferenceEngineUnavailable
from diffv2s.model import build_initial_model
from diffv2s.nn.hifigan import make_vocoder
from diffv2s.schemas import SynthesisParams

HAS_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
CPU = torch.device("cpu")
torch.set_num_threads(1)  # one thread: OpenMP barriers stall badly on a loaded machine


def test_profiles_cover_the_pipeline_windows_and_the_longest_video() -> None:
    cfg = preset("small")
    ratio = cfg.audio.mel_rate / cfg.video.fps
    specs = network_specs(cfg)
    limits = ShapeLimits()
    for name in NETWORKS:
        profile = shape_profile(specs[name], cfg, limits)
        assert set(profile) == {t.name for t in specs[name].inputs}
        for lo, mid, hi in profile.values():
            assert all(a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True))
            assert lo[0] == 1
    # The pipeline's windows are 250 video frames: the denoiser must take their mel length.
    assert shape_profile(specs["denoiser"], cfg)["x_t"][2][2] >= math.ceil(250 * ratio)
    assert shape_profile(specs["encoder"], cfg)["video"][2][2] >= 250
    # The vocoder sees a whole video, up to VideoConfig.max_seconds.
    assert shape_profile(specs["vocoder"], cfg)["mel"][2][2] >= cfg.video.max_seconds * cfg.audio.mel_rate


def test_cache_key_changes_with_everything_an_engine_depends_on() -> None:
    profile = shape_profile(network_specs(preset("small"))["denoiser"], preset("small"))
    base = cache_key("onnx-a", "NVIDIA H100 sm_90", "10.7.0", True, profile)
    assert base == cache_key("onnx-a", "NVIDIA H100 sm_90", "10.7.0", True, profile)
    other_profile = shape_profile(
        network_specs(preset("small"))["denoiser"], preset("small"), ShapeLimits(max_batch=32)
    )
    variants = [
        cache_key("onnx-b", "NVIDIA H100 sm_90", "10.7.0", True, profile),
        cache_key("onnx-a", "NVIDIA L4 sm_89", "10.7.0", True, profile),
        cache_key("onnx-a", "NVIDIA H100 sm_90", "10.8.0", True, profile),
        cache_key("onnx-a", "NVIDIA H100 sm_90", "10.7.0", False, profile),
        cache_key("onnx-a", "NVIDIA H100 sm_90", "10.7.0", True, other_profile),
    ]
    assert len({base, *variants}) == 6


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: no missing-TensorRT error to see")
def test_tensorrt_engine_without_tensorrt_or_gpu_is_a_clear_startup_error(tmp_path: Path) -> None:
    cfg = preset("small")
    model = build_initial_model(cfg)
    save_checkpoint(tmp_path / "c.pt", cfg, model.state_dict(), {})
    ckpt = load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(InferenceEngineUnavailable, match="TensorRT|CUDA"):
        build_engines("tensorrt", model, make_vocoder(cfg.vocoder, cfg.audio, CPU), CPU, tmp_path, ckpt)


# ------------------------------------------------------------------------------------ on a CUDA GPU only
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path]:
    if not HAS_TRT:
        pytest.skip("needs a CUDA GPU with TensorRT")
    from model_export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("trt")
    model = build_initial_model(preset("small"))
    save_checkpoint(root / "small.pt", model.cfg, model.state_dict(), {})
    ckpt = load_checkpoint(root / "small.pt")
    export_onnx(ckpt, root / "engines")
    return ckpt, root / "engines"


@pytest.mark.parametrize(("engine", "atol"), [("tensorrt-fp32", 1e-3), ("tensorrt", 5e-2)])
def test_tensorrt_matches_torch_and_reuses_its_cache(
    exported: tuple[Checkpoint, Path], engine: str, atol: float
) -> None:
    from model_export.verify import production_mels, random_video

    ckpt, engine_dir = exported
    cfg = ckpt.config
    gpu = torch.device("cuda")
    ref = torch_engines(load_model(ckpt), make_vocoder(cfg.vocoder, cfg.audio, CPU), CPU)
    eng = build_engines(
        engine, load_model(ckpt), make_vocoder(cfg.vocoder, cfg.audio, gpu), gpu, engine_dir, ckpt
    )
    for name in ("encoder", "speaker", "denoiser", "vocoder"):
        assert "built" in eng.details[name] or "cached" in eng.details[name]
    plans = sorted((engine_dir / CACHE_DIR).glob("*.plan"))
    stamps = {p: p.stat().st_mtime_ns for p in plans}

    for frames in ([12], [20, 9, 16]):
        video, _ = random_video(cfg, batch=len(frames), frames=max(frames), seed=len(frames))
        pad = torch.arange(max(frames))[None, :] >= torch.tensor(frames)[:, None]
        seeds = list(range(len(frames)))
        # The production path at the checkpoint's defaults (DDIM 4, CFG 1.5, noise 0.5).
        expected = production_mels(ref, cfg, video, pad, seeds, SynthesisParams())
        got = production_mels(eng, cfg, video, pad, seeds, SynthesisParams(), gpu)
        err = float((got - expected).abs().max())
        print(f"{engine} frames={frames}: max |mel - torch| = {err:.3g}")
        assert err <= atol
    mel = torch.rand(2, 80, 40) * 10 - 9
    with torch.inference_mode():
        assert (eng.vocoder(mel).cpu() - ref.vocoder(mel)).abs().max() <= atol

    again = build_engines(
        engine, load_model(ckpt), make_vocoder(cfg.vocoder, cfg.audio, gpu), gpu, engine_dir, ckpt
    )
    for name in NETWORKS:
        assert "cached" in again.details[name]
    assert {p: p.stat().st_mtime_ns for p in sorted((engine_dir / CACHE_DIR).glob("*.plan"))} == stamps
