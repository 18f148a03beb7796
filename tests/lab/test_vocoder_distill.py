"""The vocoder distillation tool (lab/vocoder_distill.py) on a tiny student and a tiny mel set: it trains,
its output has hop x frames samples, and a resumed run continues the step count."""

from __future__ import annotations

from pathlib import Path

import torch

from diffv2s.audio import mel_spectrogram
from diffv2s.config import AudioConfig, VocoderConfig
from lab.vocoder_distill import ResBlock2, distill, load_student, small_generator

TINY = VocoderConfig(
    weights="",
    upsample_rates=(8, 8, 4),
    upsample_kernel_sizes=(16, 16, 8),
    upsample_initial_channel=16,
    resblock_kernel_sizes=(3,),
    resblock_dilation_sizes=((1, 2),),
)


def tiny_pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two 'teacher' targets (a buzzy tone) and their log-mels, 40 frames each."""
    audio = AudioConfig()
    t = torch.arange(40 * 256) / audio.sample_rate
    pairs = []
    for f0 in (140.0, 210.0):
        wav = 0.3 * torch.stack([torch.sin(2 * torch.pi * f0 * k * t) / k for k in range(1, 5)]).sum(0)
        pairs.append((mel_spectrogram(wav, audio)[0], wav))
    return pairs


def test_student_is_v3_shaped_and_keeps_the_hop() -> None:
    generator = small_generator(TINY)
    assert generator.hop_length == 256
    assert all(isinstance(block, ResBlock2) for block in generator.resblocks)
    mel = torch.randn(2, 80, 17)
    assert generator(mel).shape == (2, 1, 17 * 256)
    v3 = small_generator()
    assert [up.stride[0] for up in v3.ups if isinstance(up, torch.nn.ConvTranspose1d)] == [8, 8, 4]
    assert v3.conv_pre.out_channels == 256


def test_two_steps_train_and_resume_continues(tmp_path: Path) -> None:
    torch.manual_seed(0)
    out = tmp_path / "student.pt"
    pairs = tiny_pairs()
    first = distill(pairs, out, cfg=TINY, max_steps=2, batch_size=2, frames=16, log_every=100)
    assert first["step"] == 2
    totals = [row[2] for row in first["history"]]
    assert all(torch.isfinite(torch.tensor(totals)))
    saved = torch.load(out, weights_only=True)
    assert saved["step"] == 2
    # Same seed, same initialisation: the trained weights differ from a fresh student's.
    torch.manual_seed(0)
    before = small_generator(TINY)
    changed = [not torch.equal(saved["student"][name], value) for name, value in before.state_dict().items()]
    assert sum(changed) > len(changed) // 2

    resumed = distill(pairs, out, cfg=TINY, max_steps=1, resume=True, batch_size=2, frames=16)
    assert resumed["step"] == 3
    assert [row[0] for row in resumed["history"]] == [1, 2, 3]
    assert torch.load(out, weights_only=True)["step"] == 3

    vocoder = load_student(out)
    mel = pairs[0][0].unsqueeze(0)
    wav = vocoder(mel)
    assert wav.shape == (1, mel.shape[-1] * 256)
    assert torch.isfinite(wav).all()
