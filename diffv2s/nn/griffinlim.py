"""Griffin-Lim vocoder from log-mel. FALLBACK ONLY: intelligible but buzzy, far below HiFi-GAN.

Used when the HiFi-GAN weights are unavailable, or to check a pipeline without any trained vocoder.
The linear magnitude is recovered with the pseudo-inverse of the mel filterbank (clamped at 0), then the
phase is estimated by the Griffin-Lim iteration (Griffin & Lim 1984) with the momentum of Perraudin et al.
(2013, "fast Griffin-Lim").
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffv2s.audio import mel_filterbank
from diffv2s.config import AudioConfig


class GriffinLimVocoder:
    """Log-mel [B, n_mels, T] → waveform [B, T * hop] by Griffin-Lim (fallback vocoder).

    Frame t of HiFi-GAN's mel is centred at sample t * hop + hop / 2; this STFT centres frame t at t * hop.
    The half-hop shift (~6 ms) is inaudible and not corrected.
    """

    is_fallback = True

    def __init__(self, audio: AudioConfig | None = None, n_iter: int = 32, momentum: float = 0.99) -> None:
        self.audio = audio or AudioConfig()
        self.n_iter = n_iter
        self.momentum = momentum
        self.hop_length = self.audio.hop_length
        fb = mel_filterbank(
            self.audio.sample_rate, self.audio.n_fft, self.audio.n_mels, self.audio.fmin, self.audio.fmax
        )
        self._inverse = torch.from_numpy(np.linalg.pinv(fb.astype(np.float64)).astype(np.float32))

    def to(self, device: torch.device | str) -> GriffinLimVocoder:
        self._inverse = self._inverse.to(device)
        return self

    def _stft(self, wav: Tensor, window: Tensor) -> Tensor:
        cfg = self.audio
        return torch.stft(wav, cfg.n_fft, cfg.hop_length, cfg.win_length, window=window, return_complex=True)

    def _istft(self, spec: Tensor, window: Tensor, length: int) -> Tensor:
        cfg = self.audio
        return torch.istft(spec, cfg.n_fft, cfg.hop_length, cfg.win_length, window=window, length=length)

    def __call__(self, mel: Tensor) -> Tensor:
        with torch.inference_mode():
            mel = mel.to(device=self._inverse.device, dtype=torch.float32)
            length = mel.shape[-1] * self.hop_length
            magnitude = torch.clamp(torch.matmul(self._inverse, torch.exp(mel)), min=0.0)
            # A signal of T * hop samples has T + 1 centred frames; repeat the last one.
            magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)
            window = torch.hann_window(self.audio.win_length, device=mel.device)
            # Deterministic start phase: the fallback must give the same audio for the same mel.
            angles = torch.ones_like(magnitude, dtype=torch.complex64)
            previous = torch.zeros_like(angles)
            for _ in range(self.n_iter):
                rebuilt = self._stft(self._istft(magnitude * angles, window, length), window)
                accelerated = rebuilt - (self.momentum / (1 + self.momentum)) * previous
                previous = rebuilt
                angles = accelerated / accelerated.abs().clamp(min=1e-8)
            return self._istft(magnitude * angles, window, length).clamp(-1.0, 1.0)
