"""Prompt-tuned speaker extractor, log-mel -> AV-HuBERT audio features, InfoNCE losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffv2s.config import AudioConfig, EncoderConfig, SpeakerConfig
from diffv2s.nn.avhubert import AVHubertEncoder
from diffv2s.nn.speaker import (
    SpeakerExtractor,
    fbank_from_mel_matrix,
    info_nce,
    mel_to_audio_features,
    speaker_loss,
)

torch.set_num_threads(1)

TINY = EncoderConfig(
    embed_dim=32, layers=2, heads=4, ffn_dim=64, resnet_width=4, pos_conv_kernel=8, pos_conv_groups=4
)
HW = 20
MEL_RATE = AudioConfig().mel_rate


def _extractor(seed: int = 0) -> SpeakerExtractor:
    torch.manual_seed(seed)
    return SpeakerExtractor(AVHubertEncoder(TINY), SpeakerConfig(n_prompts=3, embed_dim=256))


def test_embeddings_are_unit_norm_256d() -> None:
    ext = _extractor()
    pad = torch.tensor([[False] * 4, [False, False, True, True]])
    s_v = ext.embed_visual(torch.randn(2, 1, 4, HW, HW), pad)
    s_a = ext.embed_audio(torch.randn(2, 4, 104), pad)
    for s in (s_v, s_a):
        assert s.shape == (2, 256)
        torch.testing.assert_close(s.norm(dim=-1), torch.ones(2))
    # Different prompt sets: the same encoder gives different embeddings per modality.
    assert not torch.allclose(s_v, s_a)


def test_only_prompts_and_projection_train() -> None:
    ext = _extractor()
    trainable = {n for n, p in ext.named_parameters() if p.requires_grad}
    assert trainable == {"visual_prompts", "audio_prompts", "proj.weight", "proj.bias"}
    assert {id(p) for p in ext.trainable_parameters()} == {id(p) for p in ext.parameters() if p.requires_grad}
    ext.train()
    assert ext.training and not ext.encoder.training  # BatchNorm statistics stay frozen


def test_gradient_reaches_audio_input_and_prompts_but_not_encoder() -> None:
    ext = _extractor()
    audio = torch.randn(2, 5, 104, requires_grad=True)
    target = F.normalize(torch.randn(2, 256), dim=-1)
    loss = (1 - F.cosine_similarity(ext.embed_audio(audio), target)).sum()
    loss.backward()
    assert audio.grad is not None and audio.grad.abs().sum() > 0
    assert ext.audio_prompts.grad is not None and ext.audio_prompts.grad.abs().sum() > 0
    assert ext.proj.weight.grad is not None
    assert all(p.grad is None for p in ext.encoder.parameters())


def test_speaker_guidance_path_from_mel() -> None:
    """Gradient of the speaker similarity reaches a generated mel through the feature mapping."""
    ext = _extractor()
    mel = torch.randn(1, 80, 40, requires_grad=True)
    feats = mel_to_audio_features(mel, MEL_RATE)
    s = ext.embed_audio(feats)
    (1 - F.cosine_similarity(s, F.normalize(torch.ones(1, 256), dim=-1))).sum().backward()
    assert mel.grad is not None and mel.grad.abs().sum() > 0


def test_mel_to_audio_features_shape_and_norm() -> None:
    mel = torch.randn(2, 80, 86)  # ~1 s at 22050/256 Hz -> 25 video frames
    feats = mel_to_audio_features(mel, MEL_RATE)
    assert feats.shape == (2, 25, 104)
    torch.testing.assert_close(feats.mean(-1), torch.zeros(2, 25), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.std(-1, unbiased=False), torch.ones(2, 25), atol=1e-3, rtol=0)
    assert mel_to_audio_features(mel, MEL_RATE, n_frames=10).shape == (2, 10, 104)


def _htk_bands_around(freq: float) -> set[int]:
    """The (one or two) 26-band HTK filters (0..8000 Hz) whose peaks are nearest below/above `freq`."""
    top = 2595 * math.log10(1 + 8000 / 700)
    peaks = [700 * (10 ** (top * (b + 1) / 27 / 2595) - 1) for b in range(26)]
    below = [b for b in range(26) if peaks[b] <= freq]
    above = [b for b in range(26) if peaks[b] >= freq]
    return {max(below, default=0), min(above, default=25)}


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0, 6000.0])
def test_energy_lands_in_the_right_fbank_band(freq: float) -> None:
    """A narrow-band log-mel (peak at the Slaney band centred nearest `freq`) peaks in the HTK band at `freq`."""
    n_mels = 80
    lin, logstep = 200 / 3, math.log(6.4) / 27  # Slaney mel scale (librosa default)

    def hz_to_mel(f: float) -> float:
        return f / lin if f < 1000 else 1000 / lin + math.log(f / 1000) / logstep

    def mel_to_hz(m: float) -> float:
        return m * lin if m < 1000 / lin else 1000 * math.exp(logstep * (m - 1000 / lin))

    step = hz_to_mel(8000.0) / (n_mels + 1)
    band = round(hz_to_mel(freq) / step) - 1
    centre = mel_to_hz((band + 1) * step)
    mel = torch.full((1, n_mels, 8), math.log(1e-5))
    mel[0, band] = 0.0
    feats = mel_to_audio_features(mel, MEL_RATE, n_frames=1)
    first = feats[0, 0, :26]  # first of the 4 stacked 100 Hz frames
    assert int(first.argmax()) in _htk_bands_around(centre)
    assert fbank_from_mel_matrix(n_mels, 0.0, 8000.0).shape == (26, n_mels)


def test_mel_mask_makes_features_independent_of_padding() -> None:
    torch.manual_seed(0)
    mel = torch.randn(1, 80, 50)
    alone = mel_to_audio_features(mel, MEL_RATE, n_frames=14)
    padded = torch.cat([mel, torch.full((1, 80, 30), 5.0)], dim=2)
    mask = torch.zeros(1, 80, dtype=torch.bool)
    mask[0, :50] = True
    batched = mel_to_audio_features(padded, MEL_RATE, n_frames=14, mel_mask=mask)
    torch.testing.assert_close(batched, alone)


def test_info_nce_matches_definition_and_orders_correctly() -> None:
    torch.manual_seed(0)
    a = F.normalize(torch.randn(5, 256), dim=-1)
    b = F.normalize(torch.randn(5, 256), dim=-1)
    sims = (a[:, None, :] * b[None, :, :]).sum(-1) / 0.1
    expected = -torch.stack([sims[i, i] - torch.logsumexp(sims[i], 0) for i in range(5)]).mean()
    torch.testing.assert_close(info_nce(a, b, 0.1), expected)
    assert info_nce(a, a, 0.05) < 0.01  # perfect positives (random 256-d vectors are near orthogonal)
    assert info_nce(a, a.roll(1, 0), 0.05) > 5.0


def test_speaker_loss_is_the_four_infonce_terms_and_trains_prompts() -> None:
    torch.manual_seed(0)
    s_v, s_a, s_g = (F.normalize(torch.randn(4, 256), dim=-1) for _ in range(3))
    expected = info_nce(s_v, s_g) + info_nce(s_a, s_g) + info_nce(s_v, s_a) + info_nce(s_a, s_v)
    torch.testing.assert_close(speaker_loss(s_v, s_a, s_g), expected)
    ext = _extractor()
    video = torch.randn(4, 1, 3, HW, HW)
    audio = torch.randn(4, 3, 104)
    opt = torch.optim.Adam(ext.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = speaker_loss(ext.embed_visual(video), ext.embed_audio(audio), s_g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
