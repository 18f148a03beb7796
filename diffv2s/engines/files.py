"""Exported engine files: where each network's ONNX file lives, the metadata it carries, and the check
that it belongs to the checkpoint a process runs.

One ONNX file per network, written by `diffv2s export` (package `model_export`): `{network}.onnx`, and
`denoiser.int8.onnx` for the int8 engine. Every file carries `metadata_props` (format, version, network,
checkpoint sha256, config JSON, axis names, vocoder weights hash, weights precision) and a backend refuses
to start on a file that does not belong to the checkpoint it runs with: a mismatch is a start-up
`CheckpointError`, never wrong audio. Both the ONNX Runtime and the TensorRT backend read these files.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffv2s.checkpoints.store import Checkpoint, file_sha256
from diffv2s.config import ModelConfig
from diffv2s.engines.spec import CPU, network_specs
from diffv2s.errors import CheckpointError

ENGINE_FORMAT = "diffv2s-onnx"
ENGINE_FORMAT_VERSION = 1
META = "diffv2s."  # prefix of our metadata_props keys
WEIGHTS = ("fp32", "int8")  # "weights" metadata: float32 export, or dynamic int8 quantisation of it


def onnx_path(engine_dir: Path, network: str, weights: str = "fp32") -> Path:
    """`{network}.onnx`, or `{network}.int8.onnx` for the int8-quantised file."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights {weights!r}: choose one of {WEIGHTS}")
    return Path(engine_dir) / (f"{network}.onnx" if weights == "fp32" else f"{network}.{weights}.onnx")


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
