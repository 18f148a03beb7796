"""ONNX engine files (their interface and metadata) and the ONNX Runtime backend of the engine protocol.

One ONNX file per network, written by `diffv2s export` (package `model_export`):

    encoder.onnx   video [B, 1, Tv, 88, 88], padding_mask [B, Tv] bool -> features [B, Tv, D]
    speaker.onnx   video [B, 1, Tv, 88, 88], padding_mask [B, Tv] bool -> speaker [B, 256]
    denoiser.onnx  one denoiser call (x_t, t, visual, visual_mask, speaker, mask, drop_cond) -> x0_hat
    vocoder.onnx   mel [B, n_mels, T] -> wav [B, T * hop]   (HiFi-GAN only; Griffin-Lim stays in torch)

Every file carries `metadata_props` (format, version, network, checkpoint sha256, config JSON, axis names,
vocoder weights hash) and a backend refuses to start on a file that does not belong to the checkpoint it
runs with: a mismatch is a start-up `CheckpointError`, never wrong audio.

Backends here: "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-trt" (execution providers in the order
TensorRT -> CUDA -> CPU) and "onnxruntime" (CUDA on a CUDA device, else CPU). "onnxruntime-cpu-int8" is
the CPU backend with the denoiser (the network the sampling loop calls 10-25 times per job) replaced by
`denoiser.int8.onnx`, its weight MatMuls quantised to int8 (`diffv2s export --int8`); its output is not
float-equal to torch's, so `diffv2s export verify` holds it to its own, looser tolerance.

ONNX Runtime silently falls back to the CPU provider when CUDA or TensorRT libraries cannot be loaded;
`build_engines` compares the provider each session really runs on with the one asked for and raises
`EngineUnavailable` otherwise.
"tensorrt" / "tensorrt-fp32" (native engines) live in `diffv2s.engines_trt`.

Speaker guidance needs d speaker(x0(x_t)) / d x_t, which an exported graph cannot give. These backends
keep the torch modules (loaded anyway): a denoiser call whose x_t requires grad (only speaker guidance
makes one) runs the PyTorch denoiser, and `speaker_from_mel` is the PyTorch speaker extractor. Guided
requests therefore produce the same mel as on the torch engine, at torch speed for the guided steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffv2s.checkpoints.store import Checkpoint, file_sha256
from diffv2s.config import ModelConfig
from diffv2s.engines import Engines, VocoderEngine, torch_engines
from diffv2s.errors import CheckpointError, EngineUnavailable
from diffv2s.model import DiffV2S

ENGINE_FORMAT = "diffv2s-onnx"
ENGINE_FORMAT_VERSION = 1
NETWORKS = ("encoder", "speaker", "denoiser", "vocoder")
META = "diffv2s."  # prefix of our metadata_props keys

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
ORT_ENGINES: dict[str, tuple[str, ...]] = {
    "onnxruntime-cpu": (CPU,),
    "onnxruntime-cuda": (CUDA, CPU),
    "onnxruntime-trt": (TRT, CUDA, CPU),
    "onnxruntime-cpu-int8": (CPU,),
}
# Engines that run the int8 denoiser file; every other network stays float32.
INT8_ENGINES = frozenset({"onnxruntime-cpu-int8"})
WEIGHTS = ("fp32", "int8")  # "weights" metadata: float32 export, or dynamic int8 quantisation of it
ENGINE_NAMES = ("torch", "onnxruntime", *ORT_ENGINES, "tensorrt", "tensorrt-fp32")


# ---------------------------------------------------------------------------------------------- interface
@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. shape: fixed sizes as ints, dynamic axes by name."""

    name: str
    dtype: str  # "float32" | "bool"
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor name: {axis index: axis name}} for every named (dynamic) axis, as torch.onnx wants it."""
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
        }

    def axes_json(self) -> str:
        return json.dumps({t.name: list(t.shape) for t in (*self.inputs, *self.outputs)})


def network_specs(cfg: ModelConfig) -> dict[str, NetworkSpec]:
    """The ONNX interface of each network for a model config (axis names: batch, video_frames,
    mel_frames, samples)."""
    roi, d, s, m = cfg.video.roi_size, cfg.encoder.embed_dim, cfg.speaker.embed_dim, cfg.audio.n_mels
    video = (
        TensorSpec("video", "float32", ("batch", 1, "video_frames", roi, roi)),
        TensorSpec("padding_mask", "bool", ("batch", "video_frames")),
    )
    return {
        "encoder": NetworkSpec(
            "encoder", video, (TensorSpec("features", "float32", ("batch", "video_frames", d)),)
        ),
        "speaker": NetworkSpec("speaker", video, (TensorSpec("speaker", "float32", ("batch", s)),)),
        "denoiser": NetworkSpec(
            "denoiser",
            (
                TensorSpec("x_t", "float32", ("batch", m, "mel_frames")),
                TensorSpec("t", "float32", ("batch",)),
                TensorSpec("visual", "float32", ("batch", "video_frames", d)),
                TensorSpec("visual_mask", "bool", ("batch", "video_frames")),
                TensorSpec("speaker", "float32", ("batch", s)),
                TensorSpec("mask", "bool", ("batch", "mel_frames")),
                TensorSpec("drop_cond", "bool", ("batch",)),
            ),
            (TensorSpec("x0_hat", "float32", ("batch", m, "mel_frames")),),
        ),
        "vocoder": NetworkSpec(
            "vocoder",
            (TensorSpec("mel", "float32", ("batch", m, "mel_frames")),),
            (TensorSpec("wav", "float32", ("batch", "samples")),),
        ),
    }


def onnx_path(engine_dir: Path, network: str, weights: str = "fp32") -> Path:
    """`{network}.onnx`, or `{network}.int8.onnx` for the int8-quantised file."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights {weights!r}: choose one of {WEIGHTS}")
    return Path(engine_dir) / (f"{network}.onnx" if weights == "fp32" else f"{network}.{weights}.onnx")


# --------------------------------------------------------------------------------------------- metadata
def vocoder_weights_sha256(cfg: ModelConfig) -> str:
    """sha256 of the HiFi-GAN weight file the config names ("" for Griffin-Lim, which has none)."""
    if cfg.vocoder.kind != "hifigan":
        return ""
    from diffv2s.nn.hifigan import resolve_weights

    return file_sha256(resolve_weights(cfg.vocoder.weights))


def engine_metadata(
    network: str, cfg: ModelConfig, checkpoint_sha256: str, weights: str = "fp32"
) -> dict[str, str]:
    """The metadata_props an exported file carries, and what a backend expects to find in it."""
    spec = network_specs(cfg)[network]
    meta = {
        "format": ENGINE_FORMAT,
        "format_version": str(ENGINE_FORMAT_VERSION),
        "network": network,
        "checkpoint_sha256": checkpoint_sha256,
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "axes": spec.axes_json(),
        "vocoder_weights_sha256": vocoder_weights_sha256(cfg) if network == "vocoder" else "",
        "weights": weights,
    }
    return {META + k: v for k, v in meta.items()}


def read_metadata(path: Path) -> dict[str, str]:
    """metadata_props of an ONNX file (with `onnx` when installed, else through an ONNX Runtime session)."""
    try:
        import onnx
    except ImportError:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=[CPU])
        return dict(sess.get_modelmeta().custom_metadata_map)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a damaged file
        raise CheckpointError(
            f"Engine file {path} cannot be read as ONNX ({type(exc).__name__}: {exc})."
        ) from exc
    return {p.key: p.value for p in model.metadata_props}


def check_engine_file(
    path: Path, network: str, ckpt: Checkpoint, hint: str = "", weights: str = "fp32"
) -> dict[str, str]:
    """Raise CheckpointError unless `path` is the `network` exported from `ckpt` (with `weights`: "fp32" or
    "int8"). Returns its metadata."""
    if not hint:
        flag = " --int8" if weights == "int8" else ""
        hint = f"Re-export: diffv2s export --checkpoint {ckpt.path or 'CKPT'}{flag} --out {Path(path).parent}"
    if not Path(path).is_file():
        raise CheckpointError(f"Engine file {path} does not exist. {hint}")
    meta = read_metadata(path)
    want = engine_metadata(network, ckpt.config, ckpt.sha256, weights)

    def field(key: str) -> str:
        return meta.get(META + key, "")

    if field("format") != ENGINE_FORMAT:
        raise CheckpointError(f"{path} is not a DiffV2S engine file (no '{META}format' metadata). {hint}")
    if field("format_version") != str(ENGINE_FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has engine format version {field('format_version')!r}; this code reads "
            f"{ENGINE_FORMAT_VERSION}. {hint}"
        )
    if field("network") != network:
        raise CheckpointError(f"{path} holds the {field('network')!r} network, expected {network!r}. {hint}")
    if field("checkpoint_sha256") != want[META + "checkpoint_sha256"]:
        raise CheckpointError(
            f"{path} was exported from checkpoint sha256 {field('checkpoint_sha256')[:12]}..., but this process "
            f"runs checkpoint {ckpt.sha256[:12]}... ({ckpt.path}). {hint}"
        )
    if field("vocoder_weights_sha256") != want[META + "vocoder_weights_sha256"]:
        raise CheckpointError(
            f"{path} holds vocoder weights sha256 {field('vocoder_weights_sha256')[:12]}..., but the config names "
            f"{ckpt.config.vocoder.weights!r} ({want[META + 'vocoder_weights_sha256'][:12]}...). {hint}"
        )
    try:
        got_cfg = json.loads(field("config"))
    except json.JSONDecodeError:
        got_cfg = None
    want_cfg = json.loads(want[META + "config"])
    if got_cfg != want_cfg:
        parts = sorted(k for k in want_cfg if not isinstance(got_cfg, dict) or got_cfg.get(k) != want_cfg[k])
        raise CheckpointError(f"{path} was exported with a different model config (parts: {parts}). {hint}")
    # Files written before the field existed are float32 exports.
    if (field("weights") or "fp32") != weights:
        raise CheckpointError(
            f"{path} holds {field('weights') or 'fp32'} weights, expected {weights}. {hint}"
        )
    if field("axes") != want[META + "axes"]:
        raise CheckpointError(
            f"{path} has inputs/outputs {field('axes')} instead of {want[META + 'axes']}. {hint}"
        )
    return meta


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
            from diffv2s.engines_trt import shape_profile

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
    """An ONNX Runtime session of one file on the providers of `engine`; raises EngineUnavailable when the
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
        raise EngineUnavailable(
            f"engine {engine!r} asked ONNX Runtime for {wanted}, but {spec.name} runs on {net.providers} "
            f"(providers this onnxruntime build offers: {ort.get_available_providers()}). ONNX Runtime falls "
            "back to the CPU when the CUDA/cuDNN/TensorRT libraries cannot be loaded; install onnxruntime-gpu "
            "with matching CUDA libraries, or choose engine 'onnxruntime-cpu'."
        )
    return net


def build_engines(
    engine: str,
    model: DiffV2S,
    vocoder: VocoderEngine,
    device: torch.device,
    engine_dir: Path | None,
    ckpt: Checkpoint,
    threads: int | None = None,
) -> Engines:
    """Engines of a non-torch backend from the exported files in `engine_dir`, checked against `ckpt`.

    engine: "onnxruntime" | "onnxruntime-cpu" | "onnxruntime-cpu-int8" | "onnxruntime-cuda" |
    "onnxruntime-trt" | "tensorrt" (fp16) | "tensorrt-fp32".
    model/vocoder: the loaded torch modules (speaker guidance and Griffin-Lim stay in torch).
    threads: ONNX Runtime intra-op threads (default: torch's thread count, which the worker sets).
    """
    if engine in ("tensorrt", "tensorrt-fp32"):
        from diffv2s.engines_trt import build_tensorrt_engines

        return build_tensorrt_engines(model, vocoder, device, engine_dir, ckpt, fp16=engine == "tensorrt")
    if engine == "onnxruntime":
        engine = "onnxruntime-cuda" if device.type == "cuda" else "onnxruntime-cpu"
    if engine not in ORT_ENGINES:
        raise CheckpointError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINE_NAMES)}")
    if engine_dir is None:
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
    return assemble_engines(engine, model, vocoder, device, sessions, details)


def assemble_engines(
    name: str,
    model: DiffV2S,
    vocoder: VocoderEngine,
    device: torch.device,
    nets: Mapping[str, Callable[..., torch.Tensor]],
    details: dict[str, str],
) -> Engines:
    """An `Engines` from exported-network callables (ONNX Runtime sessions or TensorRT engines).

    Speaker guidance keeps the torch path (see the module docstring); a missing "vocoder" (Griffin-Lim)
    keeps the torch vocoder.
    """
    reference = torch_engines(model, vocoder, device)
    encoder_net, speaker_net, denoiser_net = nets["encoder"], nets["speaker"], nets["denoiser"]
    torch_denoiser = model.denoiser

    def encoder(video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return encoder_net(video, padding_mask)

    def speaker(video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return speaker_net(video, padding_mask)

    def denoiser(
        x_t: torch.Tensor,
        t: torch.Tensor,
        visual: torch.Tensor,
        visual_mask: torch.Tensor,
        speaker: torch.Tensor,
        mask: torch.Tensor,
        drop_cond: torch.Tensor,
    ) -> torch.Tensor:
        if torch.is_grad_enabled() and x_t.requires_grad:
            # Speaker guidance differentiates through this call: only the torch module can.
            return torch_denoiser(x_t, t, visual.to(x_t), visual_mask, speaker.to(x_t), mask, drop_cond)
        return denoiser_net(x_t, t, visual, visual_mask, speaker, mask, drop_cond)

    voc: VocoderEngine = vocoder
    if "vocoder" in nets:
        vocoder_net = nets["vocoder"]

        def voc(mel: torch.Tensor) -> torch.Tensor:
            return vocoder_net(mel)

    details = dict(details)
    details.setdefault("vocoder", "exported" if "vocoder" in nets else f"torch ({model.cfg.vocoder.kind})")
    details["speaker_guidance"] = "torch (denoiser + speaker extractor, for the gradient)"
    return Engines(
        name=name,
        encoder=encoder,
        speaker=speaker,
        denoiser=denoiser,
        vocoder=voc,
        speaker_from_mel=reference.speaker_from_mel,
        details=details,
    )


def session_inputs(spec: NetworkSpec, tensors: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """Feed dict of a network for raw ONNX Runtime calls (verification, benchmarks)."""
    return {s.name: _numpy(x, s.dtype) for s, x in zip(spec.inputs, tensors, strict=True)}
