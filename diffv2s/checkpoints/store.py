"""DiffV2S checkpoint files: one file = format version + ModelConfig + weights (+ free-form meta).

Weights are stored as float16 when `half=True` (keeps shipped files small); loading always returns
float32 tensors. Loading never unpickles arbitrary objects (`weights_only=True`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffv2s.config import ModelConfig
from diffv2s.errors import CheckpointError

FORMAT = "diffv2s"
FORMAT_VERSION = 1
ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CHECKPOINT = ASSETS / "diffv2s-small.pt"


@dataclass
class Checkpoint:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    path: Path | None = None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path: Path,
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any],
    half: bool = False,
) -> str:
    """Write a checkpoint atomically; returns its sha256."""
    weights = {}
    for key, value in state_dict.items():
        value = value.detach().cpu()
        if half and value.is_floating_point():
            value = value.half()
        weights[key] = value.contiguous()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "state_dict": weights,
        "meta": meta,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return file_sha256(path)


def load_checkpoint(path: Path | None = None) -> Checkpoint:
    """Read a checkpoint file (default: the shipped `small` checkpoint)."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Pass --checkpoint with a DiffV2S .pt file.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"Checkpoint {path} cannot be read ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a DiffV2S checkpoint (no 'format': 'diffv2s' field).")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this code reads version {FORMAT_VERSION}."
        )
    config = ModelConfig.from_dict(payload["config"])
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    return Checkpoint(config, state, dict(payload.get("meta", {})), file_sha256(path), path)
