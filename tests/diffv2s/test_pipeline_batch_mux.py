"""Issue 17, finding 5: one item's mux failure fails that item alone; the batch's other items keep their
results (the real Synthesizer with the shipped checkpoint on CPU, short clips, 2 sampling steps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffv2s.errors import MuxFailed
from diffv2s.pipeline import Synthesizer
from diffv2s.schemas import SynthesisParams, SynthesisRequest
from tests.fixtures.videos import carphone_path, read_rgb_frames, write_video


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    torch.set_num_threads(2)
    return Synthesizer.load()


def test_one_items_mux_failure_fails_it_alone(synth: Synthesizer, tmp_path: Path) -> None:
    frames = read_rgb_frames(carphone_path())[:25]
    odd = write_video(tmp_path / "odd.avi", [f[:143, :175] for f in frames], fps=25.0, codec="mpeg4")
    clip = write_video(tmp_path / "clip.mp4", frames, fps=25.0)
    blocker = tmp_path / "not-a-folder"  # the failing item's mp4 goes under a file: its mux raises
    blocker.write_bytes(b"x")
    params = SynthesisParams(steps=2, seed=1)
    reqs = [
        SynthesisRequest(
            video=odd, params=params, output="mp4", mp4_path=tmp_path / "odd.mp4", request_id="odd"
        ),
        SynthesisRequest(
            video=clip, params=params, output="mp4", mp4_path=blocker / "x.mp4", request_id="bad"
        ),
        SynthesisRequest(video=clip, params=params, request_id="wav"),
    ]
    results = synth.synthesize_batch(reqs)

    bad = results[1]
    assert isinstance(bad.error, MuxFailed) and bad.error.code == "mux_failed"
    assert bad.mp4_path is None
    for res in (results[0], results[2]):
        assert res.error is None, res.error
        assert res.batch_size == 3  # one batch: nobody was re-run alone
        assert res.waveform.dtype == np.float32 and np.isfinite(res.waveform).all()
        assert abs(res.audio_seconds - 1.0) <= 0.05
    # The odd-sized item (re-encoded, padded to 176 x 144) has its mp4.
    assert results[0].mp4_path == tmp_path / "odd.mp4" and results[0].mp4_path.is_file()
    assert read_rgb_frames(results[0].mp4_path)[0].shape == (144, 176, 3)
