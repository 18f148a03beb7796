"""Audio features and WAV I/O.

`mel_spectrogram` is the log-mel the HiFi-GAN vocoder was trained on (official `meldataset.mel_spectrogram`):
reflect-pad (n_fft - hop) / 2 on each side, STFT without centring, magnitude sqrt(re² + im² + 1e-9),
Slaney-scale mel filterbank with Slaney area normalisation (librosa's defaults), log(clamp(x, 1e-5)).
A signal of N samples gives exactly N // hop frames, so a vocoder output of T * hop samples maps back to T
frames.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly
from torch import Tensor

from diffv2s.config import AudioConfig

# Slaney's "auditory toolbox" mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above,
# with 27 mels per factor 6.4 in frequency.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale (librosa `htk=False`)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney mel filterbank with Slaney (unit-area) normalisation: float32 [n_mels, n_fft // 2 + 1].

    Filter m is a triangle in Hz rising from edge m to a peak at edge m + 1 and falling to edge m + 2, where
    the n_mels + 2 edges are equally spaced on the mel scale between fmin and fmax; it is scaled by
    2 / (edge[m + 2] - edge[m]) so each triangle has unit area in Hz.
    """
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    rising = (fft_hz[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - fft_hz[None, :]) / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=8)
def _cached_filterbank(cfg: AudioConfig) -> Tensor:
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    return torch.from_numpy(fb)


def mel_spectrogram(wav: Tensor, cfg: AudioConfig) -> Tensor:
    """Log-mel spectrogram as HiFi-GAN computes it.

    wav: [B, N] or [N] float waveform in [-1, 1] at `cfg.sample_rate` (N > (n_fft - hop) / 2 for the
    reflect padding). Returns [B, n_mels, N // hop] (a [N] input gets B = 1).
    """
    if wav.dim() == 1:
        wav = wav.unsqueeze(0)
    if wav.dim() != 2:
        raise ValueError(f"wav must be [B, N] or [N]; got shape {tuple(wav.shape)}")
    wav = wav.float()
    pad = (cfg.n_fft - cfg.hop_length) // 2
    padded = torch.nn.functional.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    window = torch.hann_window(cfg.win_length, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(
        padded,
        cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    # The 1e-9 inside the root is the official recipe's; it sets the floor of silent bins.
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    mel = torch.matmul(_cached_filterbank(cfg).to(device=wav.device, dtype=wav.dtype), magnitude)
    return torch.log(torch.clamp(mel, min=cfg.log_clamp))


def n_frames(n_samples: int, cfg: AudioConfig) -> int:
    """Number of mel frames of a signal of `n_samples` samples."""
    return n_samples // cfg.hop_length


def load_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read an audio file as float32 mono [N] at `sample_rate` (channels averaged, polyphase resampling)."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wav = data.mean(axis=1)
    if rate != sample_rate:
        g = math.gcd(int(rate), int(sample_rate))
        wav = resample_poly(wav, sample_rate // g, int(rate) // g)
    return np.ascontiguousarray(wav, dtype=np.float32)


def read_media_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """The first audio stream of a media file (mp4, mkv, ...) as float32 mono [N] and its rate.

    Channels are averaged; with `sample_rate` the audio is resampled to it (polyphase). Raises ValueError
    when the file has no audio stream.
    """
    import av

    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio track")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        for frame in container.decode(stream):
            arr = frame.to_ndarray().astype(np.float32)
            if frame.format.is_planar:
                chunks.append(arr.mean(axis=0))
            else:
                chunks.append(arr.reshape(-1, len(frame.layout.channels)).mean(axis=1))
    wav = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if sample_rate is not None and sample_rate != rate and len(wav):
        g = math.gcd(rate, sample_rate)
        wav = resample_poly(wav, sample_rate // g, rate // g)
        rate = sample_rate
    return np.ascontiguousarray(wav, dtype=np.float32), rate


def _as_pcm16(wav: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(wav, Tensor):
        wav = wav.detach().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    return (np.clip(wav, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def save_wav(path: str | Path, wav: np.ndarray | Tensor, sample_rate: int) -> None:
    """Write a mono waveform [N] in [-1, 1] (values outside are clipped) as 16-bit PCM WAV."""
    sf.write(str(path), _as_pcm16(wav), sample_rate, subtype="PCM_16", format="WAV")


def wav_bytes(wav: np.ndarray | Tensor, sample_rate: int) -> bytes:
    """The bytes of a 16-bit PCM WAV file holding the mono waveform [N]."""
    buffer = io.BytesIO()
    sf.write(buffer, _as_pcm16(wav), sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()
