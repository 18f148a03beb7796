"""AV-HuBERT encoder (Shi et al. 2022), rebuilt so official fairseq weights load by parameter name.

Layout and names follow `avhubert/hubert.py` + `avhubert/resnet.py` of facebookresearch/av_hubert and the
wav2vec2 `TransformerEncoder` of fairseq (commit pinned by av_hubert):

    feature_extractor_video.resnet.frontend3D.{0: Conv3d, 1: BatchNorm3d, 2: PReLU}  (3: MaxPool3d)
    feature_extractor_video.resnet.trunk.layer{1..4}.{0,1}.{conv1,bn1,relu1,conv2,bn2,relu2,downsample.{0,1}}
    feature_extractor_video.proj              Linear(8w, D)      (w = resnet_width, 64 official)
    feature_extractor_audio.proj              Linear(104, D)
    layer_norm                                LayerNorm(2D)      over [audio, video] ("concat" fusion)
    post_extract_proj                         Linear(2D, D)
    mask_emb                                  [audio_feat_dim]   (input masking; unused at inference)
    encoder.pos_conv.0.{weight_g,weight_v,bias}  weight-normed grouped Conv1d (dim=2)
    encoder.layers.N.{self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm}
    encoder.layer_norm                        LayerNorm(D), applied last when pre-LN
    final_proj, label_embs_concat             pretraining heads, only built when asked for

Inference follows `AVHubertModel.extract_finetune`: a missing modality is replaced by zeros of the
projected feature size, so visual-only input puts zeros in place of the audio features.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from diffv2s.config import EncoderConfig
from diffv2s.nn.layers import TransformerLayer, attention_mask


class EncoderOutput(NamedTuple):
    """features: [B, T, D] per-frame features; prompt_out: [B, P, D] outputs of prompt tokens, or None."""

    features: torch.Tensor
    prompt_out: torch.Tensor | None


# ----------------------------------------------------------------------------------------------------------
# Video front end: 3-D conv stem + ResNet-18 (PReLU) applied to every frame.


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.PReLU(num_parameters=cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.PReLU(num_parameters=cout)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + residual)


class ResNetTrunk(nn.Module):
    """ResNet-18 body (2 blocks per stage, widths w, 2w, 4w, 8w) + global average pool."""

    def __init__(self, width: int) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        cin = width
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(
                self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout))
            )
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, w, H, W] -> [N, 8w]."""
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        return self.avgpool(x).flatten(1)


class ResEncoder(nn.Module):
    """`avhubert/resnet.py::ResEncoder` with PReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, width, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.PReLU(num_parameters=width),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.trunk = ResNetTrunk(width)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: [B, 1, T, H, W] -> [B, T, 8w]."""
        x = self.frontend3D(video)
        b, c, t, h, w = x.shape
        x = self.trunk(x.transpose(1, 2).reshape(b * t, c, h, w))
        return x.reshape(b, t, -1)


class VideoFrontEnd(nn.Module):
    """`SubModel(resnet=ResEncoder, input_dim=8w)` with no sub-encoder (sub_encoder_layers = 0)."""

    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        self.resnet = ResEncoder(width)
        self.proj = nn.Linear(8 * width, embed_dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: [B, 1, T, H, W] -> [B, T, D]."""
        return self.proj(self.resnet(video))


class AudioFrontEnd(nn.Module):
    """`SubModel(resnet=None, input_dim=104)`: one linear layer on stacked log filterbanks."""

    def __init__(self, feat_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(feat_dim, embed_dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio: [B, T, F] -> [B, T, D]."""
        return self.proj(audio)


# ----------------------------------------------------------------------------------------------------------
# Transformer encoder (fairseq wav2vec2 `TransformerEncoder`).


class WeightNormConv1d(nn.Module):
    """Conv1d with weight normalisation over dim=2, stored as `weight_g` / `weight_v` like the checkpoints.

    weight = weight_g * weight_v / ||weight_v||, the norm taken over every dim except 2 (the kernel axis),
    which is what `torch.nn.utils.weight_norm(conv, dim=2)` computes. Keeping the parameters plain (no
    parametrisation hooks) keeps state-dict names identical to fairseq's and traces cleanly to ONNX.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        if channels % groups != 0:
            raise ValueError(f"channels {channels} not divisible by pos_conv_groups {groups}")
        self.padding = kernel_size // 2
        self.groups = groups
        v = torch.empty(channels, channels // groups, kernel_size)
        # fairseq init: normal with std sqrt(4 / (kernel * channels)), bias 0.
        nn.init.normal_(v, mean=0.0, std=(4.0 / (kernel_size * channels)) ** 0.5)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True).detach().clone())
        self.weight_v = nn.Parameter(v)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T] -> [B, C, T + 1 - kernel % 2]."""
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the extra last frame an even kernel with padding k // 2 produces."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : x.shape[2] - self.remove] if self.remove else x


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.layer_norm_first = cfg.layer_norm_first
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(cfg.embed_dim, cfg.pos_conv_kernel, cfg.pos_conv_groups),
            SamePad(cfg.pos_conv_kernel),
            nn.GELU(),
        )
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.embed_dim, cfg.ffn_dim, cfg.heads, cfg.dropout, cfg.layer_norm_first)
            for _ in range(cfg.layers)
        )
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        valid: torch.Tensor,
        prompts: torch.Tensor | None = None,
        output_layer: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, T, D]; valid: [B, T] bool (True = real frame); prompts: [B, P, D] | None.

        Returns ([B, T, D], [B, P, D] | None). `output_layer` (1-based) stops early and, like fairseq,
        then skips the final layer norm.
        """
        # Padded frames are zeroed before the positional conv so they add nothing to valid frames: an item
        # sees exactly what it sees alone (the conv's own zero padding).
        x = x * valid[..., None].to(x.dtype)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        n_prompts = 0
        if prompts is not None:
            n_prompts = prompts.shape[1]
            x = torch.cat([prompts.to(x.dtype), x], dim=1)
            prompt_valid = torch.ones(valid.shape[0], n_prompts, dtype=torch.bool, device=valid.device)
            valid = torch.cat([prompt_valid, valid], dim=1)
        mask = attention_mask(valid)
        n_layers = len(self.layers) if output_layer is None else output_layer
        for layer in self.layers[:n_layers]:
            x = layer(x, mask)
        if self.layer_norm_first and output_layer is None:
            x = self.layer_norm(x)
        if prompts is None:
            return x, None
        return x[:, n_prompts:], x[:, :n_prompts]


# ----------------------------------------------------------------------------------------------------------


class AVHubertEncoder(nn.Module):
    """AV-HuBERT with "concat" fusion. `final_dim` / `label_embs_shape` ([classes, final_dim]) build the
    pretraining heads (`final_proj`, `label_embs_concat`) so a checkpoint holding them can be loaded
    strictly; `forward` never uses them. `mask_emb_dim` defaults to the audio feature size (input masking, as all released
    configs use)."""

    def __init__(
        self,
        cfg: EncoderConfig,
        final_dim: int | None = None,
        label_embs_shape: tuple[int, int] | None = None,
        mask_emb_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.feature_extractor_audio = AudioFrontEnd(cfg.audio_feat_dim, d)
        self.feature_extractor_video = VideoFrontEnd(cfg.resnet_width, d)
        self.post_extract_proj = nn.Linear(2 * d, d)
        self.mask_emb = nn.Parameter(torch.rand(mask_emb_dim or cfg.audio_feat_dim))
        self.encoder = TransformerEncoder(cfg)
        self.layer_norm = nn.LayerNorm(2 * d)
        self.final_proj: nn.Linear | None = nn.Linear(d, final_dim) if final_dim else None
        self.label_embs_concat: nn.Parameter | None = None
        if label_embs_shape is not None:
            self.label_embs_concat = nn.Parameter(torch.rand(*label_embs_shape))

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def forward(
        self,
        video: torch.Tensor | None,
        audio: torch.Tensor | None,
        padding_mask: torch.Tensor | None = None,
        prompts: torch.Tensor | None = None,
        output_layer: int | None = None,
    ) -> EncoderOutput:
        """video: [B, 1, T, H, W] (normalised mouth ROIs) | None; audio: [B, T, 104] | None;
        padding_mask: [B, T] bool, True = padding | None; prompts: [B, P, D] | None, prepended as extra
        tokens after the positional conv (never masked).

        Returns `EncoderOutput(features [B, T, D], prompt_out [B, P, D] | None)`.
        """
        if video is None and audio is None:
            raise ValueError("AVHubertEncoder needs video, audio or both")
        if video is not None:
            b, t = video.shape[0], video.shape[2]
            ref = video
        else:
            assert audio is not None
            b, t = audio.shape[0], audio.shape[1]
            ref = audio
        if padding_mask is None:
            valid = torch.ones(b, t, dtype=torch.bool, device=ref.device)
        else:
            valid = ~padding_mask
        keep = valid.to(ref.dtype)
        d = self.cfg.embed_dim
        if video is not None:
            # Zero padded frames: the 3-D stem mixes 5 frames in time, and zeros are what an item alone
            # sees past its end (the conv's zero padding).
            f_video = self.feature_extractor_video(video * keep[:, None, :, None, None])
        else:
            f_video = ref.new_zeros(b, t, d)
        if audio is not None:
            f_audio = self.feature_extractor_audio(audio * keep[..., None])
        else:
            f_audio = ref.new_zeros(b, t, d)
        x = self.post_extract_proj(self.layer_norm(torch.cat([f_audio, f_video], dim=-1)))
        features, prompt_out = self.encoder(x, valid, prompts, output_layer)
        return EncoderOutput(features, prompt_out)


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())
