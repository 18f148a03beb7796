"""The visual encoder and the visual speaker embedding export to ONNX (TorchScript exporter, opset 17)
with dynamic batch/time axes, and onnxruntime reproduces torch on other shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffv2s.config import EncoderConfig, SpeakerConfig
from diffv2s.nn.avhubert import AVHubertEncoder
from diffv2s.nn.speaker import SpeakerExtractor

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

torch.set_num_threads(1)

TINY = EncoderConfig(
    embed_dim=32, layers=2, heads=4, ffn_dim=64, resnet_width=4, pos_conv_kernel=8, pos_conv_groups=4
)
HW = 20


class _VisualFeatures(nn.Module):
    def __init__(self, encoder: AVHubertEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(video, None, padding_mask).features


class _VisualSpeaker(nn.Module):
    def __init__(self, speaker: SpeakerExtractor) -> None:
        super().__init__()
        self.speaker = speaker

    def forward(self, video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.speaker.embed_visual(video, padding_mask)


def _inputs(batch: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (batch,), generator=g)
    lengths[0] = t
    return torch.randn(batch, 1, t, HW, HW, generator=g), torch.arange(t)[None, :] >= lengths[:, None]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("which", ["features", "speaker"])
def test_encoder_onnx_matches_torch_on_new_shapes(tmp_path: Path, which: str) -> None:
    torch.manual_seed(0)
    encoder = AVHubertEncoder(TINY)
    net: nn.Module = (
        _VisualFeatures(encoder)
        if which == "features"
        else _VisualSpeaker(SpeakerExtractor(encoder, SpeakerConfig()))
    )
    net.eval()
    path = tmp_path / f"{which}.onnx"
    out_axes = {0: "batch", 1: "frames"} if which == "features" else {0: "batch"}
    torch.onnx.export(
        net,
        _inputs(2, 6, seed=0),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["video", "padding_mask"],
        output_names=["out"],
        dynamic_axes={
            "video": {0: "batch", 2: "frames"},
            "padding_mask": {0: "batch", 1: "frames"},
            "out": out_axes,
        },
    )
    assert not net.training  # the exporter restores the mode it found
    video, pad = _inputs(3, 9, seed=1)
    with torch.no_grad():
        expected = net(video, pad).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"video": video.numpy(), "padding_mask": pad.numpy()})
    assert got.shape == expected.shape
    assert abs(got - expected).max() < 1e-4
