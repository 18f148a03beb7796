"""The vocoder engine "onnxruntime-cpu": HiFi-GAN exported in memory and run by ONNX Runtime, the CPU
default of the torch engine. Same waveform as the torch module up to float rounding, the same vocoder
ceiling on real speech, and which engine runs the vocoder when."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pystoi import stoi
from scipy.signal import resample_poly

from diffv2s.audio import load_wav, mel_spectrogram
from diffv2s.config import AudioConfig, VocoderConfig, preset
from diffv2s.engines.ort_backend import ort_cpu_vocoder
from diffv2s.engines.spec import resolve_vocoder_engine
from diffv2s.errors import CheckpointError
from diffv2s.nn.hifigan import Vocoder, make_vocoder
from tests.fixtures.engines import engines_of, small_checkpoint

pytest.importorskip("onnxruntime")
torch.set_num_threads(2)
AUDIO = AudioConfig()
CFG = preset("small")


def _arctic_wav() -> Path:
    """CMU ARCTIC a0007 (16 kHz, 4 s of a real recorded male voice) shipped inside pysptk: the README's
    real-speech vocoder ceiling."""
    spec = importlib.util.find_spec("pysptk")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "example_audio_data" / "arctic_a0007.wav"


@pytest.fixture(scope="module")
def vocoder() -> Vocoder:
    voc = make_vocoder(VocoderConfig())
    assert isinstance(voc, Vocoder)
    return voc


def _stoi(wav: torch.Tensor) -> float:
    reference = load_wav(_arctic_wav(), 16000)
    synthesized = resample_poly(wav[0].numpy().astype(np.float64), 320, 441)
    n = min(len(reference), len(synthesized))
    return float(stoi(reference[:n], synthesized[:n], 16000, extended=False))


def test_onnxruntime_vocoder_keeps_the_real_speech_ceiling(vocoder: Vocoder) -> None:
    """Recorded speech -> log-mel -> both vocoders: the same waveform up to 1e-4, STOI within 0.005."""
    mel = mel_spectrogram(torch.from_numpy(load_wav(_arctic_wav(), AUDIO.sample_rate)), AUDIO)
    net = ort_cpu_vocoder(vocoder.generator, CFG, threads=2)
    reference, ours = vocoder(mel), net(mel)
    assert ours.shape == reference.shape == (1, mel.shape[-1] * AUDIO.hop_length)
    assert float((ours - reference).abs().max()) < 1e-4
    assert abs(_stoi(ours) - _stoi(reference)) < 0.005


def test_onnxruntime_vocoder_takes_any_batch_and_length(vocoder: Vocoder) -> None:
    net = ort_cpu_vocoder(vocoder.generator, CFG, threads=1)
    mel = torch.rand(3, 80, 7, generator=torch.Generator().manual_seed(1)) * 8 - 9
    torch.testing.assert_close(net(mel), vocoder(mel), atol=1e-4, rtol=0)


def test_which_engine_runs_the_vocoder() -> None:
    assert resolve_vocoder_engine(None, "torch", "cpu", CFG) == "onnxruntime-cpu"
    assert resolve_vocoder_engine(None, "torch", "cuda", CFG) == "engine"
    assert resolve_vocoder_engine(None, "onnxruntime-cpu", "cpu", CFG) == "engine"
    assert resolve_vocoder_engine("torch", "tensorrt", "cuda", CFG) == "torch"
    griffin = replace(CFG, vocoder=replace(CFG.vocoder, kind="griffinlim"))
    assert resolve_vocoder_engine(None, "torch", "cpu", griffin) == "engine"
    with pytest.raises(ValueError, match="HiFi-GAN only"):
        resolve_vocoder_engine("onnxruntime-cpu", "torch", "cpu", griffin)
    with pytest.raises(ValueError, match="needs the model on the CPU"):
        resolve_vocoder_engine("onnxruntime-cpu", "torch", "cuda", CFG)
    with pytest.raises(ValueError, match="unknown vocoder engine"):
        resolve_vocoder_engine("tensorrt", "torch", "cpu", CFG)


def test_the_torch_engine_runs_the_vocoder_in_onnxruntime_unless_asked_for_torch(tmp_path: Path) -> None:
    from diffv2s.checkpoints.weights import load_model
    from diffv2s.engines.build import build_engines

    ckpt = small_checkpoint(tmp_path / "small.pt", seed=0)
    default = engines_of("torch", ckpt)
    assert default.details["vocoder"].startswith("onnxruntime-cpu")
    voc = make_vocoder(ckpt.config.vocoder, ckpt.config.audio)
    plain = build_engines(
        "torch", load_model(ckpt), voc, torch.device("cpu"), ckpt=ckpt, vocoder_engine="torch"
    )
    assert plain.vocoder is voc and plain.details["vocoder"] == "torch"
    mel = torch.rand(1, 80, 5, generator=torch.Generator().manual_seed(2)) * 8 - 9
    torch.testing.assert_close(default.vocoder(mel), plain.vocoder(mel), atol=1e-4, rtol=0)
    with pytest.raises(CheckpointError, match="unknown vocoder engine"):
        build_engines("torch", load_model(ckpt), voc, torch.device("cpu"), ckpt=ckpt, vocoder_engine="nope")
