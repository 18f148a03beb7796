"""The denoiser exports to ONNX (TorchScript exporter, opset 17) with dynamic batch/time axes and
onnxruntime reproduces torch on shapes other than the export shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffv2s.config import preset
from diffv2s.nn.denoiser import Denoiser

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

torch.set_num_threads(1)

NAMES = ["x_t", "t", "visual", "visual_mask", "speaker", "mask", "drop_cond"]


def _inputs(batch: int, t: int, tv: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    mel_lens = torch.randint(t // 2, t + 1, (batch,), generator=g)
    mel_lens[0] = t
    vid_lens = (mel_lens.float() / (t / tv)).ceil().long().clamp(1, tv)
    return (
        torch.randn(batch, 80, t, generator=g),
        torch.rand(batch, generator=g) * 999,
        torch.randn(batch, tv, 256, generator=g),
        torch.arange(tv)[None, :] < vid_lens[:, None],
        torch.nn.functional.normalize(torch.randn(batch, 256, generator=g), dim=-1),
        torch.arange(t)[None, :] < mel_lens[:, None],
        torch.arange(batch) % 2 == 1,
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_small_denoiser_onnx_matches_torch_on_new_shapes(tmp_path: Path) -> None:
    cfg = preset("small")
    torch.manual_seed(0)
    den = Denoiser(
        cfg.denoiser,
        cfg.audio.n_mels,
        cfg.encoder.embed_dim,
        cfg.speaker.embed_dim,
        cfg.audio.mel_rate / cfg.video.fps,
    ).eval()
    with torch.no_grad():
        den.null_visual.normal_()
        den.null_speaker.normal_()
    path = tmp_path / "denoiser.onnx"
    dynamic = {
        "x_t": {0: "batch", 2: "frames"},
        "t": {0: "batch"},
        "visual": {0: "batch", 1: "video_frames"},
        "visual_mask": {0: "batch", 1: "video_frames"},
        "speaker": {0: "batch"},
        "mask": {0: "batch", 1: "frames"},
        "drop_cond": {0: "batch"},
        "x0_hat": {0: "batch", 2: "frames"},
    }
    torch.onnx.export(
        den,
        _inputs(2, 50, 15, seed=0),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=NAMES,
        output_names=["x0_hat"],
        dynamic_axes=dynamic,
    )
    onnx.checker.check_model(onnx.load(str(path)))

    inputs = _inputs(3, 70, 21, seed=1)
    with torch.no_grad():
        expected = den(*inputs).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {n: v.numpy() for n, v in zip(NAMES, inputs, strict=True)})
    assert got.shape == (3, 80, 70)
    assert abs(got - expected).max() < 1e-4
