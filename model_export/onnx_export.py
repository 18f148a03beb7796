"""Export the four networks of a checkpoint to ONNX (one file each, opset >= 17, dynamic batch and time).

The TorchScript exporter (`dynamo=False`) traces each network on example inputs with batch 2 and several
frames, items of different lengths, so no axis is frozen to an example size and the masking paths are
traced. After export every file gets the metadata a backend checks at start-up (`engine_metadata`) and
passes `onnx.checker`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from diffv2s.checkpoints.store import Checkpoint
from diffv2s.checkpoints.weights import load_model
from diffv2s.config import ModelConfig
from diffv2s.engines.files import engine_metadata, onnx_path
from diffv2s.engines.spec import NETWORKS, NetworkSpec, network_specs
from diffv2s.errors import CheckpointError
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
def _lean_attention(opset: int) -> Iterator[None]:
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
    """The nn.Module that is exported as network `name`."""
    if name == "encoder":
        return EncoderNet(model).eval()
    if name == "speaker":
        return SpeakerNet(model).eval()
    if name == "denoiser":
        return model.denoiser.eval()
    if name == "vocoder":
        if vocoder_generator is None:
            raise CheckpointError("exporting the vocoder needs a HiFi-GAN generator")
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


def _pin_shapes(model: onnx.ModelProto, spec: NetworkSpec) -> None:
    """Write the spec's axis names and fixed sizes onto the graph's inputs and outputs: shape inference
    names some fixed output dims symbolically (e.g. after a normalise), which TensorRT would treat as
    dynamic."""
    tensors = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        t = tensors[value.name]
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(t.shape):
            raise RuntimeError(
                f"{spec.name}: exported {value.name} has rank {len(dims)}, expected {len(t.shape)}"
            )
        for dim, want in zip(dims, t.shape, strict=True):
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = want


def export_network(
    name: str, module: nn.Module, cfg: ModelConfig, checkpoint_sha256: str, path: Path, opset: int = OPSET
) -> Path:
    """Export one network to `path` with its metadata; returns the path."""
    if opset < 17:
        raise ValueError(f"opset {opset} < 17: LayerNormalization needs opset 17")
    spec = network_specs(cfg)[name]
    # Video networks trace on 6 frames, the vocoder on a shorter mel (its cost grows with hop x frames).
    inputs = example_inputs(spec, cfg, batch=2, video_frames=6 if name != "vocoder" else 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo; it is the one that keeps our
        # dynamic axes symbolic without guards, so its deprecation warning is expected here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad(), _lean_attention(opset):
            torch.onnx.export(
                module,
                inputs,
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes=spec.dynamic_axes(),
                do_constant_folding=True,
            )
    model = onnx.load(str(tmp))
    _pin_shapes(model, spec)
    onnx.helper.set_model_props(model, engine_metadata(name, cfg, checkpoint_sha256))
    model.producer_name = "diffv2s-export"
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def quantize_int8(fp32_path: Path, out_path: Path, metadata: dict[str, str]) -> Path:
    """Dynamic int8 quantisation of an exported file (ONNX Runtime's `quantize_dynamic`): the MatMuls with
    a weight (every linear layer) get per-output-channel signed int8 weights, and their activations are
    quantised to uint8 on the fly at each call; MatMuls of two activations (attention scores and mixing)
    and everything else stay float32. `metadata`: the file's metadata_props (`engine_metadata(...,
    weights="int8")`).

    The weights use 7 bits ([-64, 64], `reduce_range`): x86 CPUs without VNNI multiply uint8 x int8 with
    an instruction that adds pairs of products into int16 and saturates (255 * 127 * 2 > 32767). With
    8-bit weights the small preset's denoiser was 0.095 off torch on average on CI's non-VNNI CPU against
    0.006 on a VNNI CPU; with 7-bit weights a pair is at most 255 * 64 * 2 = 32640, nothing saturates, and
    the VNNI CPU measures 0.007 (`diffv2s export verify`, denoiser/random)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = out_path.with_suffix(".tmp.onnx")
    quantize_dynamic(
        str(fp32_path),
        str(tmp),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=["MatMul"],
        extra_options={"MatMulConstBOnly": True},
    )
    model = onnx.load(str(tmp))
    onnx.helper.set_model_props(model, metadata)
    model.producer_name = "diffv2s-export"
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    tmp.replace(out_path)
    return out_path


def export_onnx(
    ckpt: Checkpoint,
    out_dir: Path,
    networks: Sequence[str] = NETWORKS,
    opset: int = OPSET,
    vocoder_generator: nn.Module | None = None,
    int8: bool = False,
) -> dict[str, Path]:
    """Export `networks` of a checkpoint into `out_dir` as <network>.onnx. Returns {network: path}.

    The vocoder is exported only for a HiFi-GAN config (Griffin-Lim has no network); its generator is
    loaded from the config's weights unless `vocoder_generator` is given. With `int8` (and the denoiser
    among `networks`) the denoiser is also written as denoiser.int8.onnx (key "denoiser.int8").
    """
    model = load_model(ckpt)
    cfg = ckpt.config
    out: dict[str, Path] = {}
    for name in networks:
        if name == "vocoder":
            if cfg.vocoder.kind != "hifigan":
                continue
            if vocoder_generator is None:
                from diffv2s.nn.hifigan import load_hifigan, resolve_weights

                vocoder_generator = load_hifigan(resolve_weights(cfg.vocoder.weights), cfg.vocoder)
        module = network_module(name, model, vocoder_generator)
        out[name] = export_network(name, module, cfg, ckpt.sha256, onnx_path(out_dir, name), opset)
    if int8 and "denoiser" in out:
        out["denoiser.int8"] = quantize_int8(
            out["denoiser"],
            onnx_path(out_dir, "denoiser", "int8"),
            engine_metadata("denoiser", cfg, ckpt.sha256, weights="int8"),
        )
    return out
