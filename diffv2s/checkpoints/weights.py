"""DiffV2S weights in and out of a checkpoint file.

The speaker extractor holds the encoder module itself (`model.speaker.encoder is model.encoder`), so a
state dict names the encoder's weights twice; files store them once, under `encoder.*`. These two
functions are the only places that know it: every writer (training export, the initial checkpoint) and
every reader (the pipeline, the exporter, verify, benchmarks) goes through them.
"""

from __future__ import annotations

import torch

from diffv2s.checkpoints.store import Checkpoint
from diffv2s.errors import CheckpointError
from diffv2s.model import DiffV2S

SHARED_ENCODER_PREFIX = "speaker.encoder."


def checkpoint_state(model: DiffV2S) -> dict[str, torch.Tensor]:
    """The model's weights as a checkpoint file stores them: the shared encoder once."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(SHARED_ENCODER_PREFIX)}


def load_model(ckpt: Checkpoint) -> DiffV2S:
    """The DiffV2S model of a checkpoint, in eval mode on the CPU. Every weight must be in the file, the
    shared encoder's under either of its names (see `checkpoint_state`); anything else missing or
    unexpected is a CheckpointError."""
    model = DiffV2S(ckpt.config)
    missing, unexpected = model.load_state_dict(ckpt.state_dict, strict=False)
    missing = [
        k
        for k in missing
        if not (k.startswith(SHARED_ENCODER_PREFIX) and k.removeprefix("speaker.") in ckpt.state_dict)
    ]
    if missing or unexpected:
        raise CheckpointError(
            f"Checkpoint {ckpt.path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()
