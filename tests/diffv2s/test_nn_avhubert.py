"""AV-HuBERT encoder: shapes, padding invariance, modality handling, reference maths, parameter counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from diffv2s.config import ENCODER_PRESETS, EncoderConfig
from diffv2s.nn.avhubert import AVHubertEncoder, WeightNormConv1d, count_parameters
from diffv2s.nn.layers import TransformerLayer, attention_mask

torch.set_num_threads(1)

TINY = EncoderConfig(
    name="tiny",
    embed_dim=32,
    layers=2,
    heads=4,
    ffn_dim=64,
    resnet_width=4,
    pos_conv_kernel=8,
    pos_conv_groups=4,
)
HW = 20  # small frames: the stem and ResNet accept any size >= 1 after the strides


def _encoder(cfg: EncoderConfig = TINY, seed: int = 0) -> AVHubertEncoder:
    torch.manual_seed(seed)
    enc = AVHubertEncoder(cfg)
    # Non-trivial BatchNorm statistics, so eval-mode BN is not an identity.
    for m in enc.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return enc.eval()


def test_shapes_and_single_frame() -> None:
    enc = _encoder()
    out = enc(torch.randn(2, 1, 5, HW, HW), None, None)
    assert out.features.shape == (2, 5, 32)
    assert out.prompt_out is None
    one = enc(torch.randn(1, 1, 1, HW, HW), torch.randn(1, 1, 104), torch.zeros(1, 1, dtype=torch.bool))
    assert one.features.shape == (1, 1, 32)
    assert torch.isfinite(one.features).all()
    with pytest.raises(ValueError):
        enc(None, None, None)


def test_prompts_are_returned_separately() -> None:
    enc = _encoder()
    video = torch.randn(2, 1, 4, HW, HW)
    prompts = torch.randn(2, 3, 32)
    out = enc(video, None, None, prompts=prompts)
    assert out.features.shape == (2, 4, 32)
    assert out.prompt_out is not None and out.prompt_out.shape == (2, 3, 32)
    # The prompt outputs depend on the video (prompts attend to the frames).
    other = enc(torch.randn(2, 1, 4, HW, HW), None, None, prompts=prompts)
    assert other.prompt_out is not None
    assert not torch.allclose(out.prompt_out, other.prompt_out)


@pytest.mark.parametrize("with_prompts", [False, True])
def test_padding_does_not_change_valid_frames(with_prompts: bool) -> None:
    enc = _encoder()
    lengths = [4, 9, 6]
    t_max = max(lengths)
    torch.manual_seed(1)
    videos = [torch.randn(1, 1, n, HW, HW) for n in lengths]
    audios = [torch.randn(1, n, 104) for n in lengths]
    prompts = torch.randn(1, 2, 32) if with_prompts else None
    video = torch.full((3, 1, t_max, HW, HW), 7.0)  # garbage in padded frames on purpose
    audio = torch.full((3, t_max, 104), -3.0)
    pad = torch.ones(3, t_max, dtype=torch.bool)
    for i, n in enumerate(lengths):
        video[i, :, :n] = videos[i][0]
        audio[i, :n] = audios[i][0]
        pad[i, :n] = False
    batch_prompts = prompts.expand(3, -1, -1) if prompts is not None else None
    with torch.no_grad():
        for v, a in ((video, None), (None, audio), (video, audio)):
            batched = enc(v, a, pad, prompts=batch_prompts)
            for i, n in enumerate(lengths):
                alone = enc(
                    videos[i] if v is not None else None,
                    audios[i] if a is not None else None,
                    torch.zeros(1, n, dtype=torch.bool),
                    prompts=prompts,
                )
                torch.testing.assert_close(batched.features[i, :n], alone.features[0], atol=1e-5, rtol=1e-5)
                if with_prompts:
                    assert batched.prompt_out is not None and alone.prompt_out is not None
                    torch.testing.assert_close(
                        batched.prompt_out[i], alone.prompt_out[0], atol=1e-5, rtol=1e-5
                    )


def test_missing_modality_is_zeros_of_projected_features() -> None:
    enc = _encoder()
    video = torch.randn(1, 1, 5, HW, HW)
    audio = torch.randn(1, 5, 104)
    with torch.no_grad():
        visual_only = enc(video, None, None).features
        # Audio that the audio front end maps to exactly zero must give the visual-only result.
        enc.feature_extractor_audio.proj.bias.zero_()
        zero_audio = enc(video, torch.zeros(1, 5, 104), None).features
        torch.testing.assert_close(visual_only, zero_audio)
        # ...while real audio changes it (the fusion uses both halves).
        assert not torch.allclose(visual_only, enc(video, audio, None).features, atol=1e-4)
        audio_only = enc(None, audio, None).features
        enc.feature_extractor_video.proj.weight.zero_()
        enc.feature_extractor_video.proj.bias.zero_()
        torch.testing.assert_close(audio_only, enc(video, audio, None).features)


def test_weight_norm_conv_matches_torch_weight_norm() -> None:
    torch.manual_seed(0)
    ours = WeightNormConv1d(16, kernel_size=6, groups=4)
    with torch.no_grad():
        ours.weight_g.uniform_(0.5, 2.0)
    conv = nn.Conv1d(16, 16, 6, padding=3, groups=4)
    ref = torch.nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(ours.weight_g)
        ref.parametrizations.weight.original1.copy_(ours.weight_v)
        ref.bias.copy_(ours.bias)
    x = torch.randn(2, 16, 11)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("pre_ln", [True, False])
def test_transformer_layer_matches_reference(pre_ln: bool) -> None:
    """Our fairseq-named layer against a reference built on torch.nn.MultiheadAttention."""
    torch.manual_seed(0)
    d, heads = 24, 3
    layer = TransformerLayer(d, 40, heads, layer_norm_first=pre_ln).eval()
    mha = nn.MultiheadAttention(d, heads, batch_first=True).eval()
    sa = layer.self_attn
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([sa.q_proj.bias, sa.k_proj.bias, sa.v_proj.bias]))
        mha.out_proj.weight.copy_(sa.out_proj.weight)
        mha.out_proj.bias.copy_(sa.out_proj.bias)
    x = torch.randn(2, 7, d)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True

    def ffn(h: torch.Tensor) -> torch.Tensor:
        return layer.fc2(torch.nn.functional.gelu(layer.fc1(h)))

    def attn(h: torch.Tensor) -> torch.Tensor:
        return mha(h, h, h, key_padding_mask=pad, need_weights=False)[0]

    with torch.no_grad():
        if pre_ln:
            h = x + attn(layer.self_attn_layer_norm(x))
            expected = h + ffn(layer.final_layer_norm(h))
        else:
            h = layer.self_attn_layer_norm(x + attn(x))
            expected = layer.final_layer_norm(h + ffn(h))
        got = layer(x, attention_mask(~pad))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_output_layer_stops_early() -> None:
    enc = _encoder()
    video = torch.randn(1, 1, 3, HW, HW)
    with torch.no_grad():
        full = enc(video, None, None).features
        first = enc(video, None, None, output_layer=1).features
        last = enc(video, None, None, output_layer=TINY.layers).features
    assert not torch.allclose(full, first)
    # fairseq skips the final layer norm when a layer is asked for.
    torch.testing.assert_close(enc.encoder.layer_norm(last), full)


def test_official_parameter_counts() -> None:
    """AV-HuBERT Large ~ 325 M and Base ~ 103 M parameters (paper / model zoo); built on the meta device."""
    with torch.device("meta"):
        large = count_parameters(AVHubertEncoder(ENCODER_PRESETS["large"]))
        base = count_parameters(AVHubertEncoder(ENCODER_PRESETS["base"]))
    assert abs(large - 325e6) / 325e6 < 0.02, large
    assert abs(base - 103e6) / 103e6 < 0.02, base


def test_small_preset_builds_and_names_mirror_fairseq() -> None:
    with torch.device("meta"):
        enc = AVHubertEncoder(dataclasses.replace(ENCODER_PRESETS["small"]))
    names = set(enc.state_dict())
    for key in (
        "feature_extractor_video.resnet.frontend3D.0.weight",
        "feature_extractor_video.resnet.trunk.layer1.0.conv1.weight",
        "feature_extractor_video.resnet.trunk.layer2.0.downsample.1.running_var",
        "feature_extractor_audio.proj.weight",
        "layer_norm.weight",
        "post_extract_proj.weight",
        "mask_emb",
        "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv.0.weight_v",
        "encoder.layers.0.self_attn.k_proj.weight",
        "encoder.layers.3.final_layer_norm.bias",
        "encoder.layer_norm.weight",
    ):
        assert key in names, key
