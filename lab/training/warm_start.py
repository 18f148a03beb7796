"""`diffv2s train --init-from CHECKPOINT`: fine-tune a trained DiffV2S checkpoint instead of starting fresh.

Each stage still runs its own warmup + cosine schedule over its own budget (a warm restart), but from the
checkpoint's weights:

- stage A (visual encoder): the encoder's weights; the mel head starts as the checkpoint's visual prior
  rewritten back into per-band units (the inverse of `prior_from_encoder_head`, so the head predicts what
  the shipped prior predicted), the phone head starts fresh (checkpoints do not carry it), so the first
  `--head-warmup-steps` steps train the two heads with the encoder frozen;
- stage B (speaker extractor): fresh, from its least-squares start on the new encoder (it takes a few
  minutes and must follow the encoder's new features anyway);
- stage C (denoiser): every denoiser weight, except the visual prior, which starts from the new encoder
  head as in a fresh run (it reads the new encoder's features).

So that a later session or a user can add training time to a checkpoint (the shipped one, on the synthetic
corpus it was trained on, or on LRS3) without paying for the steps it already had. Only a checkpoint of
the same architecture can be fine-tuned: every config section except the diffusion's log-mel normalisation
(measured on the new corpus) must match the preset's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffv2s.checkpoints.store import Checkpoint, load_checkpoint
from diffv2s.config import ModelConfig
from diffv2s.errors import CheckpointError, InputError

# Config sections a warm start leaves free: the vocoder is not trained by the recipe; the diffusion's
# mel_mean/mel_std are measured on the run's own train cache.
FREE_FIELDS = {"vocoder": None, "diffusion": ("mel_mean", "mel_std")}


def _comparable(cfg: ModelConfig) -> dict[str, Any]:
    data = cfg.to_dict()
    for section, fields in FREE_FIELDS.items():
        if fields is None:
            data.pop(section, None)
        else:
            for name in fields:
                data.get(section, {}).pop(name, None)
    return data


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_differences(va, vb, f"{prefix}{key}."))
        elif va != vb:
            out.append(f"{prefix}{key}: checkpoint {vb!r}, preset {va!r}")
    return out


def load_init(path: Path, cfg: ModelConfig) -> Checkpoint:
    """The checkpoint at `path`, checked to have the architecture of `cfg` (raises InputError if not)."""
    try:
        ckpt = load_checkpoint(Path(path))
    except CheckpointError as exc:
        raise InputError(f"--init-from: {exc}") from exc
    diff = _differences(_comparable(cfg), _comparable(ckpt.config))
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise InputError(
            f"--init-from {path} has another architecture than preset {cfg.preset!r} ({shown}); "
            f"pass the --preset it was trained with (its config says {ckpt.config.preset!r})."
        )
    return ckpt


def init_record(ckpt: Checkpoint) -> dict[str, Any]:
    """What run.json and the exported checkpoint's meta keep about the starting point."""
    meta = ckpt.meta
    return {
        "path": str(ckpt.path),
        "sha256": ckpt.sha256,
        "steps": meta.get("steps", {}),
        "init_from": meta.get("init_from"),
    }


def part(ckpt: Checkpoint, prefix: str) -> dict[str, torch.Tensor]:
    """The checkpoint's weights under `prefix.` (encoder | denoiser), prefix stripped."""
    cut = len(prefix) + 1
    found = {k[cut:]: v for k, v in ckpt.state_dict.items() if k.startswith(prefix + ".")}
    if not found:
        raise InputError(f"--init-from {ckpt.path} holds no {prefix} weights")
    return found


def head_from_prior(
    ckpt: Checkpoint, band_mean: np.ndarray, band_std: np.ndarray
) -> dict[str, torch.Tensor] | None:
    """The checkpoint's denoiser prior (diffusion data space) as stage A's mel head (per-band normalised
    log-mel): the inverse of `prior_from_encoder_head`. None when the checkpoint has no prior."""
    weights = part(ckpt, "denoiser")
    if "prior.weight" not in weights:
        return None
    d = ckpt.config.diffusion
    weight, bias = weights["prior.weight"].float(), weights["prior.bias"].float()
    r = weight.shape[0] // len(band_mean)
    scale = torch.as_tensor(np.tile(np.asarray(band_std, np.float32) / d.mel_std, r))
    shift = torch.as_tensor(np.tile((np.asarray(band_mean, np.float32) - d.mel_mean) / d.mel_std, r))
    return {"weight": weight / scale[:, None], "bias": (bias - shift) / scale}


def recorded_init(record: dict[str, Any], cfg: ModelConfig) -> Checkpoint:
    """The checkpoint a run recorded at its start, checked to be the same file still."""
    ckpt = load_init(Path(record["path"]), cfg)
    if ckpt.sha256 != record.get("sha256"):
        raise InputError(
            f"{ckpt.path} changed since this run started from it (sha256 {str(record.get('sha256'))[:12]} "
            f"then, {ckpt.sha256[:12]} now); put the original file back to resume."
        )
    return ckpt
