"""Native TensorRT backend ("tensorrt" = fp16, "tensorrt-fp32"): engines built from the exported ONNX files.

At first start each network's ONNX file (`diffv2s.engines.files`, checked against the checkpoint like the
ONNX Runtime backend does) is parsed and built with one optimisation profile (min/opt/max batch and length
from `diffv2s.engines.profiles.ShapeLimits`); the serialized engine goes to `<engine_dir>/tensorrt-cache/`,
keyed by GPU name + compute capability + TensorRT version + ONNX file hash + precision + profile, and later
starts deserialize it. A file lock keeps two workers on one machine from building the same engine twice.
Speaker guidance keeps the torch path (`diffv2s.engines.torch_backend.hybrid_engines`).

Networks are strongly typed (`NetworkDefinitionCreationFlag.STRONGLY_TYPED`, TensorRT 10; the only mode
in TensorRT 11): every tensor has the type the ONNX graph gives it, and the builder picks no precision of
its own. fp16 is therefore chosen in the graph: `fp16_graph` rewrites the exported float32 file so that
matrix multiplies and convolutions (and their weights) are float16, with Casts around them, and every
other node stays float32: normalisation, element-wise, unary (sin/cos/erf/exp) and reductions, because the
timestep and frame-position sinusoids take arguments up to ~1000, where fp16's resolution (0.5) would
scramble them, and the conditioning resampler computes frame indices in float. Inputs and outputs keep
their exported types. TF32 is off where the flag exists, so "fp32" means fp32.

`tensorrt` is imported lazily: this module imports on machines without it. Buffers are torch CUDA tensors,
run on torch's current stream, so no other CUDA binding is needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from diffv2s.checkpoints.store import Checkpoint, file_sha256
from diffv2s.config import ModelConfig
from diffv2s.engines.files import check_engine_file, onnx_path
from diffv2s.engines.profiles import ShapeLimits, shape_profile
from diffv2s.engines.spec import NETWORKS, Engines, NetworkSpec, VocoderEngine, network_specs
from diffv2s.engines.torch_backend import hybrid_engines
from diffv2s.errors import CheckpointError, DiffV2SError, InferenceEngineUnavailable
from diffv2s.model import DiffV2S

CACHE_DIR = "tensorrt-cache"
PRECISION_POLICY = "strongly-typed/fp16-matmul-conv/fp32-rest-v2"  # in the cache key: change with the policy
# The ONNX ops whose float tensors become float16 in the fp16 graph; every other op keeps float32.
FP16_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
WORKSPACE_BYTES = 4 << 30

_LOGGER: Any = None


def import_tensorrt() -> Any:
    """The `tensorrt` module, or InferenceEngineUnavailable with what to install."""
    try:
        import tensorrt
    except ImportError as exc:
        raise InferenceEngineUnavailable(
            "engine 'tensorrt' needs the TensorRT Python package (pip install 'diffv2s[gpu]': tensorrt-cu13 10) "
            "and a CUDA GPU; choose engine 'onnxruntime' or 'torch' otherwise."
        ) from exc
    return tensorrt


def _logger(trt: Any) -> Any:
    global _LOGGER
    if _LOGGER is None:  # TensorRT wants one logger per process
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def cuda_device(device: torch.device) -> torch.device:
    if device.type != "cuda" or not torch.cuda.is_available():
        raise InferenceEngineUnavailable(
            f"engine 'tensorrt' needs a CUDA device (got device {str(device)!r}, CUDA available: "
            f"{torch.cuda.is_available()}); set the device to 'cuda' or choose engine 'onnxruntime-cpu'."
        )
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


def cache_key(onnx_sha256: str, gpu: str, trt_version: str, fp16: bool, profile: dict[str, Any]) -> str:
    """Everything a serialized engine depends on, hashed: a change in any of them builds a new engine."""
    blob = json.dumps(
        {
            "onnx": onnx_sha256,
            "gpu": gpu,
            "tensorrt": trt_version,
            "fp16": fp16,
            "policy": PRECISION_POLICY,
            "profile": profile,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def gpu_identity(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm_{major}{minor}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fp16_graph(onnx_file: Path) -> bytes:
    """The exported float32 graph with FP16_OPS in float16 (see the module docstring), serialized.

    Each FP16_OPS node reads float16 inputs (a weight used only by such nodes is stored as float16, the
    output of another such node is read as is, any other input goes through one Cast per tensor) and its
    outputs are cast back to float32 under their original names, so every other node, the graph's inputs
    and its outputs are untouched.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_file))
    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    half_weights: set[str] = set()
    casts: dict[str, str] = {}  # float32 tensor -> its float16 Cast
    half_outputs: dict[str, str] = {}  # output of an FP16_OPS node -> its float16 name (no Cast needed)
    nodes = []
    for node in graph.node:
        if node.op_type not in FP16_OPS:
            nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if not name:
                continue
            w = weights.get(name)
            if w is not None and w.data_type == TensorProto.FLOAT and readers[name] <= FP16_OPS:
                if name not in half_weights:
                    data = np.clip(numpy_helper.to_array(w), -65504, 65504).astype(np.float16)
                    w.CopyFrom(numpy_helper.from_array(data, name))
                    half_weights.add(name)
                continue
            if name in half_outputs:
                node.input[k] = half_outputs[name]
                continue
            if name not in casts:
                casts[name] = f"{name}/to_fp16"
                nodes.append(helper.make_node("Cast", [name], [casts[name]], to=TensorProto.FLOAT16))
            node.input[k] = casts[name]
        outputs = list(node.output)
        for k, name in enumerate(outputs):
            half_outputs[name] = node.output[k] = f"{name}/fp16"
        nodes.append(node)
        for name in outputs:
            nodes.append(helper.make_node("Cast", [f"{name}/fp16"], [name], to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    # Shape inference's recorded types of the converted weights would now be wrong; TensorRT re-infers.
    stale = [v for v in graph.value_info if v.name in half_weights]
    for v in stale:
        graph.value_info.remove(v)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def build_serialized(
    onnx_file: Path, profile: Mapping[str, tuple[tuple[int, ...], ...]], fp16: bool
) -> bytes:
    """Parse an ONNX file into a strongly typed network and build a serialized engine with one optimisation
    profile. fp16 = parse `fp16_graph(onnx_file)` instead of the file as exported."""
    trt = import_tensorrt()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    # Explicit batch is the only mode since TensorRT 10; strongly typed is the only one in 11, where the
    # flag is kept and ignored.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    parsed = (
        parser.parse(fp16_graph(onnx_file), str(onnx_file))
        if fp16
        else parser.parse_from_file(str(onnx_file))
    )
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckpointError(f"TensorRT cannot parse {onnx_file}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)  # absent where TensorRT no longer has the flag
    if tf32 is not None:
        config.clear_flag(tf32)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckpointError(f"TensorRT failed to build an engine from {onnx_file} (see the log above).")
    return bytes(serialized)


def load_or_build(
    onnx_file: Path,
    spec: NetworkSpec,
    cfg: ModelConfig,
    device: torch.device,
    fp16: bool,
    limits: ShapeLimits,
) -> tuple[Any, Path, bool]:
    """(deserialized engine, cache file, whether it was built now) for one network."""
    trt = import_tensorrt()
    profile = shape_profile(spec, cfg, limits)
    key = cache_key(file_sha256(onnx_file), gpu_identity(device), trt.__version__, fp16, profile)
    cache = Path(onnx_file).parent / CACHE_DIR / f"{spec.name}-{'fp16' if fp16 else 'fp32'}-{key[:20]}.plan"
    built = False
    with torch.cuda.device(device), _file_lock(cache.with_suffix(".lock")):
        if not cache.is_file():
            data = build_serialized(onnx_file, profile, fp16)
            tmp = cache.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(cache)
            built = True
        runtime = trt.Runtime(_logger(trt))
        engine = runtime.deserialize_cuda_engine(cache.read_bytes())
    if engine is None:
        raise CheckpointError(f"TensorRT cannot load the cached engine {cache}; delete it to rebuild.")
    return (runtime, engine), cache, built


def _dims(dims: Any) -> tuple[int, ...]:
    """A TensorRT Dims (or any sequence) as a tuple of ints."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _dtype_table(trt: Any) -> dict[Any, torch.dtype]:
    return {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.bool: torch.bool,
        trt.int8: torch.int8,
    }


class TrtNetwork:
    """One TensorRT engine behind a torch-tensor call: inputs on any device, output on the engine's GPU.

    Batches larger than the profile's maximum are split (items are independent, so this changes nothing).
    """

    def __init__(self, runtime_engine: tuple[Any, Any], spec: NetworkSpec, device: torch.device) -> None:
        trt = import_tensorrt()
        self.runtime, self.engine = runtime_engine  # the runtime must outlive its engine
        self.spec = spec
        self.device = device
        self.context = self.engine.create_execution_context()
        table = _dtype_table(trt)
        self.dtypes = {
            s.name: table[self.engine.get_tensor_dtype(s.name)] for s in (*spec.inputs, *spec.outputs)
        }
        # [min, opt, max] shapes of each input in profile 0.
        self.limits = {
            s.name: [_dims(d) for d in self.engine.get_tensor_profile_shape(s.name, 0)] for s in spec.inputs
        }
        self.max_batch = min(shape[2][0] for shape in self.limits.values())

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch = inputs[0].shape[0]
        if batch <= self.max_batch:
            return self._run(inputs)
        parts = [
            self._run(tuple(x[i : i + self.max_batch] for x in inputs))
            for i in range(0, batch, self.max_batch)
        ]
        return torch.cat(parts, dim=0)

    def _run(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            keep = []
            for s, x in zip(self.spec.inputs, inputs, strict=True):
                hi = self.limits[s.name][2]
                if any(n > m for n, m in zip(x.shape, hi, strict=True)):
                    raise DiffV2SError(
                        f"{self.spec.name}: input {s.name} {tuple(x.shape)} exceeds the TensorRT profile maximum "
                        f"{hi}; rebuild the engines with larger ShapeLimits."
                    )
                x = x.detach().to(self.device, self.dtypes[s.name]).contiguous()
                keep.append(x)
                if not self.context.set_input_shape(s.name, tuple(x.shape)):
                    raise DiffV2SError(
                        f"TensorRT rejects shape {tuple(x.shape)} for {self.spec.name}.{s.name}"
                    )
                self.context.set_tensor_address(s.name, x.data_ptr())
            out_name = self.spec.outputs[0].name
            out = torch.empty(
                _dims(self.context.get_tensor_shape(out_name)),
                dtype=self.dtypes[out_name],
                device=self.device,
            )
            self.context.set_tensor_address(out_name, out.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise DiffV2SError(f"TensorRT failed to run the {self.spec.name} engine.")
            # Inputs stay referenced until here; later work on this stream is ordered after the engine.
            del keep
        return out.float()


def build_tensorrt_engines(
    model: DiffV2S,
    vocoder: VocoderEngine,
    device: torch.device,
    engine_dir: Path | None,
    ckpt: Checkpoint,
    fp16: bool = True,
    limits: ShapeLimits = ShapeLimits(),
) -> Engines:
    """Engines of the native TensorRT backend (see the module docstring); builds missing cached engines."""
    import_tensorrt()
    dev = cuda_device(device)
    if engine_dir is None:
        raise CheckpointError(
            "engine 'tensorrt' needs the folder of exported files (diffv2s export --out DIR)."
        )
    cfg = model.cfg
    specs = network_specs(cfg)
    nets: dict[str, Any] = {}
    details: dict[str, str] = {"files": str(engine_dir), "gpu": gpu_identity(dev), "fp16": str(fp16)}
    for name in NETWORKS:
        if name == "vocoder" and cfg.vocoder.kind != "hifigan":
            continue
        path = onnx_path(engine_dir, name)
        check_engine_file(path, name, ckpt)
        t0 = time.perf_counter()
        engine, cache, built = load_or_build(path, specs[name], cfg, dev, fp16, limits)
        nets[name] = TrtNetwork(engine, specs[name], dev)
        details[name] = f"{cache.name} ({'built' if built else 'cached'} in {time.perf_counter() - t0:.1f} s)"
    return hybrid_engines("tensorrt" if fp16 else "tensorrt-fp32", model, vocoder, dev, nets, details)
