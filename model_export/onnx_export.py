"""Export the four networks of a checkpoint to ONNX (one file each, opset >= 17, dynamic batch and time).

The TorchScript exporter (`dynamo=False`) traces each network on example inputs with batch 2 and several
frames, items of different lengths, so no axis is frozen to an example size and the masking paths are
traced. After export every file gets the metadata a backend checks at start-up (`engine_metadata`) and
passes `onnx.checker`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
from torch import nn

from diffv2s.checkpoints.store import Checkpoint
from diffv2s.checkpoints.weights import load_model
from diffv2s.config import ModelConfig
from diffv2s.engines.files import engine_metadata, onnx_path
from diffv2s.engines.graphs import OPSET, example_inputs, network_module, trace_onnx
from diffv2s.engines.spec import NETWORKS, NetworkSpec, network_specs
from diffv2s.errors import CheckpointError

# The modules, their example inputs, the attention symbolic and the trace itself are the library's
# (`diffv2s.engines.graphs`), shared with the in-memory ONNX Runtime engine: a file written here and a graph
# traced at load are the same graph. This module adds what files need: shape pins, metadata, int8.
__all__ = ["OPSET", "example_inputs", "export_network", "export_onnx", "network_module", "quantize_int8"]


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
    spec = network_specs(cfg)[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    trace_onnx(name, module, cfg, str(tmp), opset)
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
        try:
            module = network_module(name, model, vocoder_generator)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
        out[name] = export_network(name, module, cfg, ckpt.sha256, onnx_path(out_dir, name), opset)
    if int8 and "denoiser" in out:
        out["denoiser.int8"] = quantize_int8(
            out["denoiser"],
            onnx_path(out_dir, "denoiser", "int8"),
            engine_metadata("denoiser", cfg, ckpt.sha256, weights="int8"),
        )
    return out
