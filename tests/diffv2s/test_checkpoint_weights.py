"""The model of a checkpoint: the shared encoder's weights stored once, loaded under both names, and a
checkpoint that does not match its config refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffv2s.checkpoints.store import DEFAULT_CHECKPOINT, Checkpoint, load_checkpoint, save_checkpoint
from diffv2s.checkpoints.weights import SHARED_ENCODER_PREFIX, checkpoint_state, load_model
from diffv2s.config import preset
from diffv2s.errors import CheckpointError
from diffv2s.model import build_initial_model


def test_a_saved_state_stores_the_shared_encoder_once_and_loads_back_equal(tmp_path: Path) -> None:
    model = build_initial_model(preset("small"), seed=3)
    state = checkpoint_state(model)
    assert not any(k.startswith(SHARED_ENCODER_PREFIX) for k in state)
    assert any(k.startswith("encoder.") for k in state)
    save_checkpoint(tmp_path / "c.pt", model.cfg, state, {})
    loaded = load_model(load_checkpoint(tmp_path / "c.pt"))
    assert loaded.speaker.encoder is loaded.encoder
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_load_model_takes_the_shipped_checkpoint_with_shared_encoder_weights_stored_once() -> None:
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("the shipped checkpoint is not built yet")
    ckpt = load_checkpoint(DEFAULT_CHECKPOINT)
    model = load_model(ckpt)
    for key, value in model.state_dict().items():
        stored = ckpt.state_dict.get(key, ckpt.state_dict.get(key.removeprefix("speaker.")))
        assert stored is not None, key
        assert torch.equal(value, stored), key


@pytest.mark.parametrize("drop", ["denoiser.", "encoder."])
def test_a_checkpoint_missing_weights_is_refused(drop: str) -> None:
    """Missing encoder weights are missing under both names: the speaker extractor's copy does not
    excuse them."""
    model = build_initial_model(preset("small"))
    state = {k: v for k, v in checkpoint_state(model).items() if not k.startswith(drop)}
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_model(Checkpoint(model.cfg, state))
