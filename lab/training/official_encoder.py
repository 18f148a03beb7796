"""The paper's visual encoder: an official AV-HuBERT checkpoint (Large or Base, pretrained or fine-tuned),
read by `diffv2s.checkpoints.avhubert_fairseq` and kept frozen (`diffv2s train --avhubert FILE`).

run.json records the file (its path, size and sha256) and the encoder config inferred from it; every later
step and a resumed run load the same file again and refuse another one of another size.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from diffv2s.checkpoints.avhubert_fairseq import load_avhubert_checkpoint
from diffv2s.config import EncoderConfig, ModelConfig, preset
from diffv2s.errors import CheckpointError, InputError
from diffv2s.nn.avhubert import AVHubertEncoder


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def official_record(path: Path) -> dict[str, Any]:
    """What run.json keeps of `--avhubert FILE`; raises InputError when it is not a readable checkpoint."""
    path = Path(path).resolve()
    try:
        _, cfg = load_avhubert_checkpoint(path)
    except CheckpointError as exc:
        raise InputError(f"--avhubert {path}: {exc.message}") from exc
    return {
        "path": str(path),
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "encoder": dataclasses.asdict(cfg),
    }


def recorded_encoder_config(record: dict[str, Any]) -> EncoderConfig:
    return EncoderConfig(**record["encoder"])


def load_official(record: dict[str, Any]) -> AVHubertEncoder:
    """The recorded official encoder, frozen, in eval mode on the CPU."""
    path = Path(record["path"])
    if not path.is_file() or path.stat().st_size != record["bytes"]:
        raise InputError(
            f"the run's AV-HuBERT checkpoint {path} is missing or has changed (expected {record['bytes']} "
            f"bytes, sha256 {record['sha256'][:12]}); put it back where the run started."
        )
    encoder, _ = load_avhubert_checkpoint(path, recorded_encoder_config(record))
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
    """`part.field=value` strings -> {part: {field: value}} (values as int, float, bool or str)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        part, dot, name = key.partition(".")
        if not sep or not dot:
            raise InputError(f"--override {item!r}: expected PART.FIELD=VALUE, e.g. denoiser.layers=4")
        value: Any = raw
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                continue
        if raw in ("true", "false"):
            value = raw == "true"
        out.setdefault(part, {})[name] = value
    return out


def run_model_config(
    name: str, overrides: tuple[str, ...] | list[str], avhubert: dict[str, Any] | None
) -> ModelConfig:
    """The preset `name`, with `--override` fields applied and, on the paper path, the encoder config of
    the official checkpoint."""
    try:
        cfg = preset(name)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    for part, fields in parse_overrides(overrides).items():
        current = getattr(cfg, part, None)
        if part in ("preset", "encoder") or not dataclasses.is_dataclass(current):
            raise InputError(f"--override {part}.*: only audio, video, speaker, denoiser, diffusion fields")
        known = {f.name for f in dataclasses.fields(current)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise InputError(
                f"--override: {part} has no field {unknown[0]!r} (fields: {', '.join(sorted(known))})"
            )
        changed: Any = dataclasses.replace(current, **fields)  # type: ignore[type-var]
        cfg = dataclasses.replace(cfg, **{part: changed})
    if avhubert is not None:
        cfg = dataclasses.replace(cfg, encoder=recorded_encoder_config(avhubert))
    return cfg
