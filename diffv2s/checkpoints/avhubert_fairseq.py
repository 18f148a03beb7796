"""Load official AV-HuBERT fairseq checkpoints (pretrained or fine-tuned) without fairseq installed.

A fairseq checkpoint is a torch pickle whose top level holds `model` (the state dict) next to `cfg` /
`args`, `task_state`, `optimizer_history`, ... Those other entries contain pickled fairseq, omegaconf and
hydra objects. The unpickler below resolves only an allow-list of classes (tensors, containers, numpy
arrays, `argparse.Namespace`); every other class becomes an inert placeholder that just records what it
was given. So loading needs neither fairseq nor omegaconf, and a pickle cannot run arbitrary callables.

Key handling:
- fine-tuned files (`AVHubertSeq2Seq` / `AVHubertCtc`) prefix encoder keys with `encoder.w2v_model.`; the
  prefix is stripped and everything outside it (decoder, CTC projection) is ignored;
- pretraining heads (`final_proj`, `label_embs_concat`, `target_glu`) are dropped unless `keep_heads`;
- weight norm stored either the old way (`weight_g`/`weight_v`), the parametrisation way
  (`parametrizations.weight.original0/1`) or folded (`weight`) all map to `weight_g`/`weight_v`;
- everything else must match the encoder exactly (names and shapes) or `CheckpointError` is raised.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import re
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from diffv2s.config import ENCODER_PRESETS, EncoderConfig
from diffv2s.errors import CheckpointError
from diffv2s.nn.avhubert import AVHubertEncoder

FINETUNE_PREFIX = "encoder.w2v_model."
HEAD_PREFIXES = ("final_proj.", "label_embs_concat", "target_glu.")
POS_CONV = "encoder.pos_conv.0."

# ----------------------------------------------------------------------------------------------------------
# Unpickling without fairseq.


class Placeholder:
    """Stands in for a class that is not on the allow-list. Records constructor args and pickled state."""

    _origin = "?"
    _args: tuple[Any, ...]
    _state: Any
    _items: dict[Any, Any]
    _list: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = super().__new__(cls)
        obj.__dict__.update(_args=args, _state=None, _items={}, _list=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        self._state = state

    # Containers subclasses are rebuilt through SETITEMS / APPENDS.
    def __setitem__(self, key: Any, value: Any) -> None:
        self._items[key] = value

    def append(self, value: Any) -> None:
        self._list.append(value)

    def extend(self, values: Any) -> None:
        self._list.extend(values)

    def __repr__(self) -> str:
        return f"<placeholder {self._origin}>"


_placeholder_classes: dict[tuple[str, str], type] = {}


def _placeholder(module: str, name: str) -> type:
    key = (module, name)
    if key not in _placeholder_classes:
        _placeholder_classes[key] = type(name, (Placeholder,), {"_origin": f"{module}.{name}"})
    return _placeholder_classes[key]


_SAFE_BUILTINS = {
    "set",
    "frozenset",
    "list",
    "dict",
    "tuple",
    "int",
    "float",
    "bool",
    "str",
    "bytes",
    "bytearray",
    "complex",
    "slice",
    "range",
    "object",
    "NoneType",
}
_SAFE = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("collections", "deque"),
    ("copyreg", "_reconstructor"),
    ("_codecs", "encode"),
    ("argparse", "Namespace"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "Tensor"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch._tensor", "_rebuild_from_type"),
    ("torch.nn.parameter", "Parameter"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


def _allowed(module: str, name: str) -> bool:
    if (module, name) in _SAFE:
        return True
    if module == "builtins":
        return name in _SAFE_BUILTINS
    if module == "torch._utils":
        return name.startswith("_rebuild_")
    if module == "torch":
        return isinstance(getattr(torch, name, None), torch.dtype)
    return module == "numpy.dtypes"


class SafeUnpickler(pickle.Unpickler):
    """Resolves allow-listed classes; replaces every other class by a `Placeholder` subclass."""

    def find_class(self, module: str, name: str) -> Any:
        if _allowed(module, name):
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                pass
        return _placeholder(module, name)


def _safe_load(file: Any, **kwargs: Any) -> Any:
    return SafeUnpickler(file, **kwargs).load()


# torch.load only needs `Unpickler` and `load` from its pickle_module.
safe_pickle = types.ModuleType("diffv2s_safe_pickle")
safe_pickle.Unpickler = SafeUnpickler  # type: ignore[attr-defined]
safe_pickle.load = _safe_load  # type: ignore[attr-defined]


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw top-level dict of a fairseq checkpoint, with foreign classes as placeholders."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"AV-HuBERT checkpoint not found: {p}")
    try:
        # weights_only=False is required to pass a pickle_module; SafeUnpickler is the restriction.
        state = torch.load(p, map_location="cpu", pickle_module=safe_pickle, weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{p} is not a readable torch checkpoint: {exc}") from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{p}: expected a dict at the top level, got {type(state).__name__}")
    return dict(state)


def to_plain(obj: Any, _depth: int = 0) -> Any:
    """Turn placeholders (omegaconf DictConfig / ValueNode, enums, ...) and Namespaces into dicts/values."""
    if _depth > 50:
        return None
    nxt = _depth + 1
    if isinstance(obj, Mapping):
        return {k: to_plain(v, nxt) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v, nxt) for v in obj]
    if isinstance(obj, argparse.Namespace):
        return {k: to_plain(v, nxt) for k, v in vars(obj).items()}
    if isinstance(obj, Placeholder):
        state = obj._state
        if isinstance(state, tuple) and state and isinstance(state[0], Mapping):
            state = state[0]
        if isinstance(state, Mapping):
            if "_content" in state:  # omegaconf containers
                return to_plain(state["_content"], nxt)
            if "_val" in state:  # omegaconf value nodes
                return to_plain(state["_val"], nxt)
            return {k: to_plain(v, nxt) for k, v in state.items()}
        if obj._items:
            return {k: to_plain(v, nxt) for k, v in obj._items.items()}
        if obj._list:
            return [to_plain(v, nxt) for v in obj._list]
        if len(obj._args) == 1:  # e.g. a string enum pickled as Enum(value)
            return to_plain(obj._args[0], nxt)
        return None
    return obj


# ----------------------------------------------------------------------------------------------------------
# State-dict and config handling.


def encoder_model_config(state: Mapping[str, Any]) -> dict[str, Any]:
    """The `model` section describing the AV-HuBERT encoder (fine-tuned files nest it in `w2v_args`)."""
    cfg = to_plain(state.get("cfg"))
    model: Any = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict):
        args = to_plain(state.get("args"))
        model = args if isinstance(args, dict) else None
    if not isinstance(model, dict):
        return {}
    w2v = model.get("w2v_args")
    if isinstance(w2v, dict):
        inner = w2v.get("model", w2v)
        return inner if isinstance(inner, dict) else {}
    return model


def encoder_state_dict(model_sd: Mapping[str, Any], keep_heads: bool = False) -> dict[str, torch.Tensor]:
    """Encoder keys of a pretrained or fine-tuned state dict, in our naming."""
    keys = list(model_sd)
    if any(k.startswith(FINETUNE_PREFIX) for k in keys):
        items = {k[len(FINETUNE_PREFIX) :]: v for k, v in model_sd.items() if k.startswith(FINETUNE_PREFIX)}
    else:
        items = dict(model_sd)
    if not keep_heads:
        items = {k: v for k, v in items.items() if not k.startswith(HEAD_PREFIXES)}
    bad = [k for k, v in items.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint entries are not tensors: {bad[:5]}")
    out: dict[str, torch.Tensor] = {}
    for k, v in items.items():
        k = k.replace("parametrizations.weight.original0", "weight_g")
        k = k.replace("parametrizations.weight.original1", "weight_v")
        out[k] = v
    folded = POS_CONV + "weight"
    if folded in out and POS_CONV + "weight_v" not in out:
        # Weight norm removed before saving: v = w, g = ||w|| gives back the same weight.
        w = out.pop(folded)
        out[POS_CONV + "weight_v"] = w
        out[POS_CONV + "weight_g"] = w.float().norm(dim=(0, 1), keepdim=True).to(w.dtype)
    return out


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"not an AV-HuBERT checkpoint: key {key!r} is missing")
    return tuple(sd[key].shape)


def infer_encoder_config(sd: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any]) -> EncoderConfig:
    """Encoder config from the weights' shapes, plus what only the file's cfg can tell (heads, pre-LN)."""
    d = _shape(sd, "post_extract_proj.weight")[0]
    layer_ids = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
    n_layers = max(layer_ids) + 1 if layer_ids else 0
    ffn = _shape(sd, "encoder.layers.0.fc1.weight")[0] if n_layers else 4 * d
    width = _shape(sd, "feature_extractor_video.resnet.frontend3D.0.weight")[0]
    feat_dim = _shape(sd, "feature_extractor_audio.proj.weight")[1]
    v_shape = _shape(sd, POS_CONV + "weight_v")
    heads = model_cfg.get("encoder_attention_heads")
    if not isinstance(heads, int):
        heads = {1024: 16, 768: 12}.get(d, max(1, d // 64))
    ln_first = model_cfg.get("layer_norm_first")
    if not isinstance(ln_first, bool):
        # An explicit encoder section without the flag means fairseq's default (post-LN); no encoder section
        # at all (bare state dict, fine-tuned cfg without w2v_args) means an AV-HuBERT release (all pre-LN).
        ln_first = not any(k.startswith("encoder_") for k in model_cfg)
    for name, value in (
        ("encoder_layers", n_layers),
        ("encoder_embed_dim", d),
        ("encoder_ffn_embed_dim", ffn),
    ):
        declared = model_cfg.get(name)
        if isinstance(declared, int) and declared != value:
            raise CheckpointError(f"checkpoint cfg says {name}={declared} but its weights have {value}")
    inferred = EncoderConfig(
        name="fairseq",
        embed_dim=d,
        layers=n_layers,
        heads=heads,
        ffn_dim=ffn,
        resnet_width=width,
        audio_feat_dim=feat_dim,
        pos_conv_kernel=v_shape[2],
        pos_conv_groups=d // v_shape[1],
        layer_norm_first=ln_first,
        dropout=0.0,
    )
    for name, preset in ENCODER_PRESETS.items():
        if dataclasses.replace(inferred, name=preset.name) == preset:
            return dataclasses.replace(inferred, name=name)
    return inferred


def _check_keys(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = [
        f"{k}: file {tuple(sd[k].shape)} vs model {expected[k]}"
        for k in sorted(set(expected) & set(sd))
        if tuple(sd[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})")
    if mismatched:
        problems.append(f"{len(mismatched)} with the wrong shape (e.g. {mismatched[:3]})")
    if problems:
        raise CheckpointError(f"{source} does not match the AV-HuBERT encoder: " + "; ".join(problems))


def load_avhubert_checkpoint(
    path: str | os.PathLike[str], cfg: EncoderConfig | None = None, keep_heads: bool = False
) -> tuple[AVHubertEncoder, EncoderConfig]:
    """Build an `AVHubertEncoder` from an official fairseq checkpoint (eval mode, on CPU).

    cfg: the expected architecture; None infers it from the file (weights' shapes + its `cfg`/`args`).
    keep_heads: also load the pretraining heads (`final_proj`, `label_embs_concat`) present in the file.
    Raises `CheckpointError` when the file is missing/unreadable or its keys or shapes do not match.
    """
    state = read_checkpoint(path)
    model_sd = state.get("model", state)
    if not isinstance(model_sd, Mapping):
        raise CheckpointError(f"{path}: `model` is not a state dict")
    sd = encoder_state_dict(model_sd, keep_heads=keep_heads)
    if cfg is None:
        cfg = infer_encoder_config(sd, encoder_model_config(state))
    final_dim = sd["final_proj.weight"].shape[0] if "final_proj.weight" in sd else None
    labels = sd.get("label_embs_concat")
    mask_emb = sd.get("mask_emb")
    model = AVHubertEncoder(
        cfg,
        final_dim=final_dim,
        label_embs_shape=tuple(labels.shape) if labels is not None else None,  # type: ignore[arg-type]
        mask_emb_dim=mask_emb.shape[0] if mask_emb is not None and mask_emb.dim() == 1 else None,
    )
    _check_keys(model, sd, str(path))
    model.load_state_dict(sd, strict=True)
    return model.eval(), cfg
