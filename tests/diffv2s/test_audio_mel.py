"""Log-mel features: filterbank against the Slaney formulas, STFT framing against a numpy reference, WAV I/O."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from diffv2s.audio import hz_to_mel, load_wav, mel_filterbank, mel_spectrogram, n_frames, save_wav, wav_bytes
from diffv2s.config import PAPER_AUDIO, AudioConfig

torch.set_num_threads(2)
CFG = AudioConfig()


def _slaney_mel(hz: float) -> float:
    """Slaney's scale written independently: 3 mels per 200 Hz below 1 kHz, 27 mels per ×6.4 above."""
    if hz < 1000.0:
        return 3.0 * hz / 200.0
    return 15.0 + 27.0 * math.log10(hz / 1000.0) / math.log10(6.4)


def _slaney_hz(mel: float) -> float:
    if mel < 15.0:
        return 200.0 * mel / 3.0
    return 1000.0 * 6.4 ** ((mel - 15.0) / 27.0)


def test_slaney_scale_anchor_points() -> None:
    assert hz_to_mel(200.0) == pytest.approx(3.0)
    assert hz_to_mel(1000.0) == pytest.approx(15.0)
    assert hz_to_mel(6400.0) == pytest.approx(42.0)
    for hz in (55.0, 440.0, 999.0, 1500.0, 7600.0, 11025.0):
        assert hz_to_mel(hz) == pytest.approx(_slaney_mel(hz), rel=1e-12)


@pytest.mark.parametrize("cfg", [CFG, PAPER_AUDIO], ids=["hifigan", "paper16k"])
def test_filterbank_triangles_match_formula(cfg: AudioConfig) -> None:
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax).astype(np.float64)
    assert fb.shape == (cfg.n_mels, cfg.n_fft // 2 + 1)
    lo, hi = _slaney_mel(cfg.fmin), _slaney_mel(cfg.fmax)
    edges = [_slaney_hz(lo + (hi - lo) * k / (cfg.n_mels + 1)) for k in range(cfg.n_mels + 2)]
    bin_hz = cfg.sample_rate / cfg.n_fft
    for m in range(cfg.n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        height = 2.0 / (right - left)  # unit area in Hz
        for k in np.nonzero(fb[m])[0]:
            f = k * bin_hz
            expected = height * (
                (f - left) / (centre - left) if f <= centre else (right - f) / (right - centre)
            )
            assert fb[m, k] == pytest.approx(expected, rel=1e-5, abs=1e-9)
        # Nothing outside the triangle's support, and the peak sits on the bin nearest the centre.
        support = (np.arange(fb.shape[1]) * bin_hz > left) & (np.arange(fb.shape[1]) * bin_hz < right)
        assert np.all(fb[m, ~support] == 0.0)
        assert abs(int(np.argmax(fb[m])) * bin_hz - centre) <= bin_hz
        # Slaney normalisation: each filter's area in Hz is 1 (the Riemann sum is close once it spans many bins).
        if right - left > 10 * bin_hz:
            assert fb[m].sum() * bin_hz == pytest.approx(1.0, rel=0.02)


def test_filterbank_matches_librosa_when_installed() -> None:
    if importlib.util.find_spec("librosa") is None:
        pytest.skip("librosa not installed (optional cross-check)")
    import librosa

    for cfg in (CFG, PAPER_AUDIO):
        ours = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
        theirs = librosa.filters.mel(
            sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
        )
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-7)


def _numpy_reference_mel(wav: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """The HiFi-GAN recipe with explicit frames and numpy's FFT (float64)."""
    pad = (cfg.n_fft - cfg.hop_length) // 2
    x = np.pad(wav.astype(np.float64), (pad, pad), mode="reflect")
    n = np.arange(cfg.win_length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / cfg.win_length)  # periodic Hann
    count = 1 + (len(x) - cfg.n_fft) // cfg.hop_length
    frames = np.stack([x[i * cfg.hop_length : i * cfg.hop_length + cfg.n_fft] * window for i in range(count)])
    spec = np.fft.rfft(frames, axis=1)
    mag = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9).T
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax).astype(np.float64)
    return np.log(np.maximum(fb @ mag, cfg.log_clamp))


def test_mel_matches_numpy_reference_and_frame_count() -> None:
    rng = np.random.default_rng(0)
    for n in (5000, 22050, 22050 + 255, 22050 + 256):
        wav = (0.3 * rng.standard_normal(n)).astype(np.float32)
        mel = mel_spectrogram(torch.from_numpy(wav), CFG)
        assert mel.shape == (1, CFG.n_mels, n // CFG.hop_length) == (1, CFG.n_mels, n_frames(n, CFG))
        np.testing.assert_allclose(mel[0].numpy(), _numpy_reference_mel(wav, CFG), atol=2e-4)
    batch = torch.from_numpy((0.1 * rng.standard_normal((3, 8000))).astype(np.float32))
    mel_batch = mel_spectrogram(batch, CFG)
    assert mel_batch.shape == (3, 80, 8000 // 256)
    torch.testing.assert_close(mel_batch[1:2], mel_spectrogram(batch[1], CFG), atol=1e-5, rtol=0)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 2500.0, 6000.0])
def test_sine_peaks_in_its_mel_band(freq: float) -> None:
    t = np.arange(CFG.sample_rate) / CFG.sample_rate
    wav = torch.from_numpy((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32))
    mel = mel_spectrogram(wav, CFG)[0].mean(dim=1)
    lo, hi = _slaney_mel(CFG.fmin), _slaney_mel(CFG.fmax)
    centres = np.array([_slaney_hz(lo + (hi - lo) * k / (CFG.n_mels + 1)) for k in range(1, CFG.n_mels + 1)])
    # The band whose centre is nearest the tone, or its neighbour when the tone falls between two centres.
    assert abs(int(mel.argmax()) - int(np.argmin(np.abs(centres - freq)))) <= 1
    assert float(mel.max()) > float(mel.median()) + 5.0  # a clear peak in log magnitude


def test_silence_is_at_the_log_floor() -> None:
    mel = mel_spectrogram(torch.zeros(4096), CFG)
    assert torch.all(mel <= math.log(1e-4))
    assert torch.all(mel >= math.log(CFG.log_clamp) - 1e-6)


def test_wav_roundtrip_resample_and_bytes(tmp_path) -> None:
    sr = 16000
    t = np.arange(sr) / sr
    wav = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    path = tmp_path / "tone.wav"
    save_wav(path, wav, sr)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (sr, 1, "PCM_16")
    back = load_wav(path, sr)
    assert back.dtype == np.float32 and back.shape == wav.shape
    assert np.max(np.abs(back - wav)) < 1e-4  # 16-bit quantisation
    # Resampling keeps duration and the tone's frequency.
    up = load_wav(path, 22050)
    assert up.shape == (22050,)
    spectrum = np.abs(np.fft.rfft(up))
    assert np.argmax(spectrum) * 22050 / len(up) == pytest.approx(440.0, abs=2.0)
    # wav_bytes is a complete WAV file; clipping keeps out-of-range samples in range.
    data = wav_bytes(np.array([0.0, 2.0, -2.0], dtype=np.float32), sr)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    path2 = tmp_path / "b.wav"
    path2.write_bytes(data)
    decoded, rate = sf.read(str(path2), dtype="int16")
    assert rate == sr and decoded.tolist() == [0, 32767, -32767]


def test_stereo_is_averaged(tmp_path) -> None:
    stereo = np.stack([np.full(800, 0.5), np.full(800, -0.1)], axis=1).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), stereo, 8000, subtype="PCM_16")
    mono = load_wav(path, 8000)
    assert mono.shape == (800,) and np.allclose(mono, 0.2, atol=1e-3)
