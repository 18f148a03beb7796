"""The ONNX Runtime backend: engines "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-trt" (execution
providers in the order TensorRT -> CUDA -> CPU), "onnxruntime" (CUDA on a CUDA device, else CPU) and
"onnxruntime-cpu-int8", the CPU backend with the denoiser (the network the sampling loop calls at every
step) replaced by `denoiser.int8.onnx`, its weight MatMuls quantised to int8 (`diffv2s export --int8`);
its output is not float-equal to torch's, so `diffv2s export verify` holds it to its own, looser tolerance.

Sessions run the exported files of `diffv2s.engines.files`, each checked against the checkpoint first;
"onnxruntime-cpu" without a folder traces the loaded model's networks in memory instead
(`ort_cpu_engines_in_memory`, ~2 s at load), the default engine of `Synthesizer.load()` on a CPU.
ONNX Runtime silently falls back to the CPU provider when CUDA or TensorRT libraries cannot be loaded;
`open_session` compares the provider each session really runs on with the one asked for and raises
`InferenceEngineUnavailable` otherwise. Speaker guidance keeps the torch path (`hybrid_engines`).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffv2s.checkpoints.store import Checkpoint
from diffv2s.config import ModelConfig
from diffv2s.engines.files import check_engine_file, onnx_path
from diffv2s.engines.profiles import shape_profile
from diffv2s.engines.spec import (
    CPU,
    CUDA,
    INT8_ENGINES,
    NETWORKS,
    ORT_ENGINES,
    TRT,
    Engines,
    NetworkSpec,
    VocoderEngine,
    network_specs,
)
from diffv2s.engines.torch_backend import hybrid_engines
from diffv2s.errors import CheckpointError, InferenceEngineUnavailable
from diffv2s.model import DiffV2S


# ---------------------------------------------------------------------------------------- ORT backend
def _numpy(x: torch.Tensor, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(
        x.detach().to("cpu", torch.bool if dtype == "bool" else torch.float32).numpy()
    )


class OrtNetwork:
    """One ONNX Runtime session: torch tensors in (any device), torch tensors out on `device`."""

    def __init__(self, session: Any, spec: NetworkSpec, device: torch.device) -> None:
        self.session = session
        self.spec = spec
        self.device = device

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {s.name: _numpy(x, s.dtype) for s, x in zip(self.spec.inputs, inputs, strict=True)}
        (out,) = self.session.run([self.spec.outputs[0].name], feeds)
        return torch.from_numpy(out).to(self.device)


def _provider_list(
    engine: str, device: torch.device, spec: NetworkSpec, cfg: ModelConfig, cache_dir: Path
) -> list[Any]:
    device_id = (device.index or 0) if device.type == "cuda" else 0
    out: list[Any] = []
    for name in ORT_ENGINES[engine]:
        if name == TRT:
            profile = shape_profile(spec, cfg)

            def shapes(k: int, profile: dict[str, Any] = profile) -> str:
                return ",".join(f"{n}:{'x'.join(map(str, s[k]))}" for n, s in profile.items())

            cache_dir.mkdir(parents=True, exist_ok=True)
            out.append(
                (
                    TRT,
                    {
                        "device_id": device_id,
                        "trt_fp16_enable": True,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache_dir),
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": str(cache_dir),
                        "trt_profile_min_shapes": shapes(0),
                        "trt_profile_opt_shapes": shapes(1),
                        "trt_profile_max_shapes": shapes(2),
                    },
                )
            )
        elif name == CUDA:
            out.append((CUDA, {"device_id": device_id}))
        else:
            out.append(CPU)
    return out


def open_session(
    path: Path,
    engine: str,
    device: torch.device,
    spec: NetworkSpec,
    cfg: ModelConfig,
    threads: int | None = None,
) -> OrtNetwork:
    """An ONNX Runtime session of one file on the providers of `engine`; raises InferenceEngineUnavailable when the
    provider asked for is not the one running (ONNX Runtime's silent fallback)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # ENABLE_ALL adds the layout and fusion passes (GELU, LayerNorm, MatMul+Add) on top of the default.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
    opts.inter_op_num_threads = 1
    # Idle intra-op threads would otherwise spin after each run and starve the torch ops of the sampler loop
    # that run between two denoiser calls in the same process.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # the fallback warning is turned into our own error below
    providers = _provider_list(engine, device, spec, cfg, Path(path).parent / "ort-trt-cache")
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise CheckpointError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    net = OrtNetwork(session, spec, device)
    wanted = ORT_ENGINES[engine][0]
    if net.providers[:1] != [wanted]:
        raise InferenceEngineUnavailable(
            f"engine {engine!r} asked ONNX Runtime for {wanted}, but {spec.name} runs on {net.providers} "
            f"(providers this onnxruntime build offers: {ort.get_available_providers()}). ONNX Runtime falls "
            "back to the CPU when the CUDA/cuDNN/TensorRT libraries cannot be loaded; install onnxruntime-gpu "
            "with matching CUDA libraries, or choose engine 'onnxruntime-cpu'."
        )
    return net


def build_ort_engines(
    engine: str,
    model: DiffV2S,
    vocoder: VocoderEngine,
    device: torch.device,
    engine_dir: Path | None,
    ckpt: Checkpoint,
    threads: int | None = None,
) -> Engines:
    """Engines of an ONNX Runtime backend from the exported files in `engine_dir`, checked against `ckpt`.

    engine: "onnxruntime" | one of `ORT_ENGINES`. engine_dir None: "onnxruntime-cpu" traces the networks of
    `model` in memory at load (`ort_cpu_engines_in_memory`); every other engine needs the folder.
    model/vocoder: the loaded torch modules (speaker guidance and Griffin-Lim stay in torch).
    threads: ONNX Runtime intra-op threads (default: torch's thread count, which the worker sets).
    """
    if engine == "onnxruntime":
        engine = "onnxruntime-cuda" if device.type == "cuda" else "onnxruntime-cpu"
    if engine not in ORT_ENGINES:
        raise CheckpointError(
            f"{engine!r} is not an ONNX Runtime engine; choose one of {', '.join(ORT_ENGINES)}"
        )
    if engine_dir is None:
        if engine == "onnxruntime-cpu":
            return ort_cpu_engines_in_memory(model, vocoder, device, threads)
        raise CheckpointError(
            f"engine {engine!r} needs the folder of exported files (diffv2s export --out DIR)."
        )
    cfg = model.cfg
    specs = network_specs(cfg)
    sessions: dict[str, OrtNetwork] = {}
    for name in NETWORKS:
        if name == "vocoder" and cfg.vocoder.kind != "hifigan":
            continue
        weights = "int8" if name == "denoiser" and engine in INT8_ENGINES else "fp32"
        path = onnx_path(engine_dir, name, weights)
        check_engine_file(path, name, ckpt, weights=weights)
        sessions[name] = open_session(path, engine, device, specs[name], cfg, threads)
    details = {name: ",".join(net.providers) for name, net in sessions.items()}
    details.update(files=str(engine_dir), provider=ORT_ENGINES[engine][0])
    if engine in INT8_ENGINES:
        details["denoiser_weights"] = "int8 (dynamic quantisation)"
    return hybrid_engines(engine, model, vocoder, device, sessions, details)


def session_inputs(spec: NetworkSpec, tensors: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """Feed dict of a network for raw ONNX Runtime calls (verification, benchmarks)."""
    return {s.name: _numpy(x, s.dtype) for s, x in zip(spec.inputs, tensors, strict=True)}


# -------------------------------------------------------------------------------------- vocoder alone
def vocoder_onnx(generator: torch.nn.Module, cfg: ModelConfig, opset: int = 17) -> bytes:
    """The HiFi-GAN generator (weight norm folded) as an ONNX graph in memory, with the vocoder's network
    interface: mel [batch, n_mels, mel_frames] -> wav [batch, samples]. Traced on 2 x 2 mel frames with
    both axes dynamic, as `diffv2s export` does for vocoder.onnx (it takes ~2 s on 2 cores)."""
    spec = network_specs(cfg)["vocoder"]

    class _Wav(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = generator

        def forward(self, mel: torch.Tensor) -> torch.Tensor:
            return self.generator(mel).squeeze(1)

    mel = torch.rand(2, cfg.audio.n_mels, 2, generator=torch.Generator().manual_seed(0)) * 10.0 - 9.0
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of dynamo; it keeps the dynamic axes symbolic.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            _Wav().eval(),
            (mel,),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to any binary file object
            dynamo=False,
            opset_version=opset,
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_axes=spec.dynamic_axes(),
            do_constant_folding=True,
        )
    return buf.getvalue()


def _cpu_session(graph: bytes, spec: NetworkSpec, threads: int | None) -> OrtNetwork:
    """An ONNX Runtime CPU session of a graph in memory, with the settings of `open_session`: `threads`
    intra-op threads (default: torch's), no spinning, all graph optimisations; outputs on the CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    session = ort.InferenceSession(graph, opts, providers=[CPU])
    return OrtNetwork(session, spec, torch.device("cpu"))


def ort_cpu_vocoder(generator: torch.nn.Module, cfg: ModelConfig, threads: int | None = None) -> OrtNetwork:
    """The vocoder engine "onnxruntime-cpu": `generator` exported in memory (`vocoder_onnx`) and run by
    ONNX Runtime on the CPU, float32. Same session settings as the exported engines: `threads` intra-op
    threads (default: torch's), no spinning, all graph optimisations. Output: waveform [B, samples] on the
    CPU, equal to the torch module's up to float rounding (~4e-5)."""
    return _cpu_session(vocoder_onnx(generator, cfg), network_specs(cfg)["vocoder"], threads)


def ort_cpu_engines_in_memory(
    model: DiffV2S, vocoder: VocoderEngine, device: torch.device, threads: int | None = None
) -> Engines:
    """The engine "onnxruntime-cpu" without exported files: encoder, speaker and denoiser traced from the
    loaded `model` in memory at load (`diffv2s.engines.graphs`, the graphs `diffv2s export` writes), the
    HiFi-GAN generator as `ort_cpu_vocoder`, all run by ONNX Runtime on the CPU in float32. Nothing is
    read from or written to disk, so the graphs always belong to the weights this process runs.
    Griffin-Lim and speaker guidance stay in torch (`hybrid_engines`). Costs a few seconds at load."""
    from diffv2s.engines.graphs import network_module, network_onnx

    if device.type != "cpu":
        raise CheckpointError(
            f"engine 'onnxruntime-cpu' without exported files runs on the CPU, not {device}"
        )
    cfg = model.cfg
    specs = network_specs(cfg)
    model = model.to(device).eval()
    sessions: dict[str, OrtNetwork] = {}
    for name in ("encoder", "speaker", "denoiser"):
        graph = network_onnx(name, network_module(name, model), cfg)
        sessions[name] = _cpu_session(graph, specs[name], threads)
    generator = getattr(vocoder, "generator", None)
    if cfg.vocoder.kind == "hifigan":
        if not isinstance(generator, torch.nn.Module):
            raise CheckpointError("engine 'onnxruntime-cpu' needs the HiFi-GAN generator")
        sessions["vocoder"] = ort_cpu_vocoder(generator, cfg, threads)
    details = {name: ",".join(net.providers) for name, net in sessions.items()}
    details.update(files="none: traced from the loaded model at start-up", provider=CPU)
    if "vocoder" in sessions:
        details["vocoder"] = "onnxruntime-cpu (float32, exported at load)"
    return hybrid_engines("onnxruntime-cpu", model, vocoder, device, sessions, details)
