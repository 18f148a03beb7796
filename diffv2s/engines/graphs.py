"""The networks of a loaded model as ONNX graphs in memory: the modules that are exported, the inputs they
are traced on, the attention symbolic, and `network_onnx(name, module, cfg) -> bytes`.

What `diffv2s export` writes to files (package `model_export`, which adds the metadata and the shape pins
a TensorRT build needs) and what the engine "onnxruntime-cpu" traces at load when it is given no folder
of exported files (`diffv2s.engines.ort_backend.ort_cpu_engines_in_memory`): the same traced graphs, so a
process never runs a file that does not belong to its checkpoint. Imports the spec and the model only.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from diffv2s.config import ModelConfig
from diffv2s.engines.spec import NETWORKS, NetworkSpec, network_specs
from diffv2s.model import DiffV2S

OPSET = 17
_SDPA = "aten::scaled_dot_product_attention"


def _attention_symbolic(
    g: Any, query: Any, key: Any, value: Any, attn_mask: Any, dropout_p: Any, is_causal: Any, *rest: Any
) -> Any:
    """SDPA -> ONNX as softmax(q k^T / sqrt(d) + mask) v, like torch's own symbolic minus its NaN guard.

    torch's exporter follows the softmax with Where(IsNaN(p), 0, p) over the whole [B, H, S, S] tensor, for
    rows whose keys are all masked. `attention_mask` never produces such a row, and that guard costs ~17 %
    of the denoiser's ONNX Runtime CPU time. q and k are each scaled by d^-1/4 before the product, as torch
    does. Only boolean masks or none occur in our networks.
    """
    from torch.onnx import symbolic_helper

    rank = symbolic_helper._get_tensor_rank(key) or 4  # [B, H, S, d] in our attention
    # d^-1/4 from the traced shape: the head size is symbolic in the trace.
    shape = g.op("Shape", query)
    head = g.op(
        "Slice",
        shape,
        g.op("Constant", value_t=torch.tensor([-1])),
        g.op("Constant", value_t=torch.tensor([rank])),
    )
    head = g.op("Cast", head, to_i=1)  # 1 = FLOAT
    root_scale = g.op("Div", g.op("Constant", value_t=torch.tensor(1.0)), g.op("Sqrt", g.op("Sqrt", head)))
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    scores = g.op(
        "MatMul", g.op("Mul", query, root_scale), g.op("Mul", g.op("Transpose", key, perm_i=perm), root_scale)
    )
    if not symbolic_helper._is_none(attn_mask):
        bias = g.op(
            "Where",
            attn_mask,
            g.op("Constant", value_t=torch.tensor([0.0])),
            g.op("Constant", value_t=torch.tensor([-math.inf])),
        )
        scores = g.op("Add", scores, bias)
    return g.op("MatMul", g.op("Softmax", scores, axis_i=-1), value)


@contextlib.contextmanager
def lean_attention(opset: int) -> Iterator[None]:
    """Export SDPA through `_attention_symbolic` inside the block."""
    torch.onnx.register_custom_op_symbolic(_SDPA, _attention_symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(_SDPA, opset)


class EncoderNet(nn.Module):
    """video [B, 1, Tv, H, W], padding_mask [B, Tv] (True = pad) -> features [B, Tv, D]."""

    def __init__(self, model: DiffV2S) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(video, None, padding_mask).features


class SpeakerNet(nn.Module):
    """video [B, 1, Tv, H, W], padding_mask [B, Tv] (True = pad) -> s_v [B, 256], unit norm."""

    def __init__(self, model: DiffV2S) -> None:
        super().__init__()
        self.speaker = model.speaker

    def forward(self, video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.speaker.embed_visual(video, padding_mask)


class VocoderNet(nn.Module):
    """mel [B, n_mels, T] -> wav [B, T * hop] (the HiFi-GAN generator, weight norm folded)."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.generator(mel).squeeze(1)


def network_module(name: str, model: DiffV2S, vocoder_generator: nn.Module | None = None) -> nn.Module:
    """The nn.Module that is exported as network `name` (the denoiser: one denoiser call, the module
    itself; classifier-free and speaker guidance stay in `diffv2s.sampling`)."""
    if name == "encoder":
        return EncoderNet(model).eval()
    if name == "speaker":
        return SpeakerNet(model).eval()
    if name == "denoiser":
        return model.denoiser.eval()
    if name == "vocoder":
        if vocoder_generator is None:
            raise ValueError("exporting the vocoder needs a HiFi-GAN generator")
        return VocoderNet(vocoder_generator).eval()
    raise ValueError(f"unknown network {name!r}; choose from {NETWORKS}")


def example_inputs(
    spec: NetworkSpec, cfg: ModelConfig, batch: int = 2, video_frames: int = 6, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random inputs of a network with `batch` items of different lengths (the first one full length).

    Video frames `video_frames`, mel frames = video frames x mel-per-video-frame ratio (rounded up).
    Masks follow each input's convention (padding_mask True = pad; visual_mask / mask True = valid).
    """
    g = torch.Generator().manual_seed(seed)
    ratio = cfg.audio.mel_rate / cfg.video.fps
    mel_frames = int(-(-video_frames * ratio // 1))
    v_len = torch.randint(max(1, video_frames // 2), video_frames + 1, (batch,), generator=g)
    v_len[0] = video_frames
    m_len = (v_len.float() * ratio).ceil().long().clamp(1, mel_frames)
    sizes = {"batch": batch, "video_frames": video_frames, "mel_frames": mel_frames}
    out: list[torch.Tensor] = []
    for t in spec.inputs:
        shape = [sizes[d] if isinstance(d, str) else d for d in t.shape]
        if t.name == "padding_mask":
            out.append(torch.arange(video_frames)[None, :] >= v_len[:, None])
        elif t.name == "visual_mask":
            out.append(torch.arange(video_frames)[None, :] < v_len[:, None])
        elif t.name == "mask":
            out.append(torch.arange(mel_frames)[None, :] < m_len[:, None])
        elif t.name == "drop_cond":
            out.append(torch.arange(batch) % 2 == 1)
        elif t.name == "t":
            out.append(torch.rand(batch, generator=g) * (cfg.diffusion.timesteps - 1))
        elif t.name == "speaker":
            out.append(nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1))
        elif t.name == "mel":
            # Log-mel in the vocoder's range: log(1e-5) ~ -11.5 (silence) up to ~2.
            out.append(torch.rand(*shape, generator=g) * 10.0 - 9.0)
        else:
            out.append(torch.randn(*shape, generator=g))
    return tuple(out)


def trace_onnx(name: str, module: nn.Module, cfg: ModelConfig, f: Any, opset: int = OPSET) -> None:
    """Trace network `name` into `f` (a path or a binary file object): the TorchScript exporter on
    `example_inputs` (batch 2, items of different lengths; video networks on 6 frames, the vocoder on a
    shorter mel, its cost grows with hop x frames), dynamic batch and time axes, the lean attention."""
    if opset < 17:
        raise ValueError(f"opset {opset} < 17: LayerNormalization needs opset 17")
    spec = network_specs(cfg)[name]
    inputs = example_inputs(spec, cfg, batch=2, video_frames=6 if name != "vocoder" else 2)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo; it is the one that keeps our
        # dynamic axes symbolic without guards, so its deprecation warning is expected here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad(), lean_attention(opset):
            torch.onnx.export(
                module,
                inputs,
                f,
                dynamo=False,
                opset_version=opset,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes=spec.dynamic_axes(),
                do_constant_folding=True,
            )


def network_onnx(name: str, module: nn.Module, cfg: ModelConfig, opset: int = OPSET) -> bytes:
    """Network `name` (`network_module`) as a serialised ONNX model in memory (`trace_onnx`)."""
    buf = io.BytesIO()
    trace_onnx(name, module, cfg, buf, opset)
    return buf.getvalue()
