"""Synthesizer and the sampling path it runs: batch invariance of the mel, the checkpoint's defaults and
mel statistics, per-item failures, durations, the settings a result reports, mp4 output."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffv2s.config import ModelConfig
from diffv2s.errors import NoVideoStream, UnsupportedVideo
from diffv2s.pipeline import Synthesizer
from diffv2s.sampling import generate_mels
from diffv2s.schemas import SynthesisParams, SynthesisRequest
from tests.fixtures.videos import carphone_path, fake_roi


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    torch.set_num_threads(2)
    return Synthesizer.load()


@pytest.mark.parametrize("sampler", ["dpmpp", "ddim", "ddpm"])
def test_item_mel_is_the_same_alone_and_in_a_batch_of_four(synth: Synthesizer, sampler: str) -> None:
    rois = [fake_roi(n, seed=n) for n in (31, 12, 47, 20)]
    params = [SynthesisParams(sampler=sampler, steps=4, seed=100 + i) for i in range(4)]
    batched = synth.generate_mels(rois, params).mels
    for i in (0, 2):
        (alone,) = synth.generate_mels([rois[i]], [params[i]]).mels
        assert alone.shape == batched[i].shape == (80, round(rois[i].n_frames * 22050 / 256 / 25))
        # Float32 round-off of batched vs single matmuls only (log-mel values reach -13): a padding or
        # masking leak between items shows as differences of 1e-2 and more.
        torch.testing.assert_close(alone, batched[i], atol=1e-4, rtol=1e-5)


def _with_diffusion(cfg: ModelConfig, **fields: object) -> ModelConfig:
    """A copy of `cfg` with other diffusion fields (the synthesizer's own config is never changed)."""
    return dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, **fields))


def test_samples_are_denormalised_with_the_checkpoint_mel_statistics(synth: Synthesizer) -> None:
    """The sampler works in the normalised space; the same noise and network give mel·std + mean."""
    clips = [fake_roi(20, seed=3).frames]
    params = [SynthesisParams(steps=3, seed=9)]
    identity = _with_diffusion(synth.cfg, mel_mean=0.0, mel_std=1.0)
    scaled = _with_diffusion(synth.cfg, mel_mean=-5.5, mel_std=2.25)
    (raw,) = generate_mels(synth.engines, identity, clips, params).mels
    (mel,) = generate_mels(synth.engines, scaled, clips, params).mels
    torch.testing.assert_close(mel, raw * 2.25 - 5.5, atol=1e-4, rtol=1e-5)


def test_seed_decides_the_noise(synth: Synthesizer) -> None:
    roi = fake_roi(20, seed=1)
    a = synth.generate_mels(
        [roi, roi], [SynthesisParams(steps=3, seed=5), SynthesisParams(steps=3, seed=5)]
    ).mels
    b = synth.generate_mels([roi], [SynthesisParams(steps=3, seed=6)]).mels
    assert torch.equal(a[0], a[1])
    assert (a[0] - b[0]).abs().max().item() > 1e-2


@pytest.mark.parametrize(
    ("field", "new", "old"), [("default_cfg_scale", 1.5, 1.0), ("default_noise_scale", 0.5, 1.0)]
)
def test_checkpoints_older_than_a_sampling_default_keep_sampling_as_they_did(
    field: str, new: float, old: float
) -> None:
    from diffv2s.config import ModelConfig

    stored = ModelConfig().to_dict()
    assert stored["diffusion"].pop(field) == new  # what new checkpoints get
    assert getattr(ModelConfig.from_dict(stored).diffusion, field) == old  # what older ones did


@pytest.mark.parametrize(
    ("param", "config_field", "values"),
    [
        ("sampler", "default_sampler", ("ddim", "dpmpp")),
        ("cfg_scale", "default_cfg_scale", (1.0, 2.0)),
        ("noise_scale", "default_noise_scale", (1.0, 0.5)),
    ],
)
def test_an_unset_parameter_means_the_checkpoints_default(
    synth: Synthesizer, param: str, config_field: str, values: tuple[object, object]
) -> None:
    clips = [fake_roi(20, seed=4).frames]

    def mel(cfg: ModelConfig, value: object) -> torch.Tensor:
        params = SynthesisParams(steps=3, seed=2, **{param: value})  # type: ignore[arg-type]
        batch = generate_mels(synth.engines, cfg, clips, params=[params])
        resolved = getattr(batch.sampling[0], param)
        assert resolved == (getattr(cfg.diffusion, config_field) if value is None else value)
        return batch.mels[0]

    for default, other in (values, values[::-1]):
        cfg = _with_diffusion(synth.cfg, **{config_field: default})
        unset = mel(cfg, None)
        assert torch.equal(unset, mel(cfg, default))
        assert (unset - mel(cfg, other)).abs().max().item() > 1e-3


def test_mixed_sampling_parameters_in_one_batch(synth: Synthesizer) -> None:
    rois = [fake_roi(15, 1), fake_roi(18, 2)]
    params = [
        SynthesisParams(sampler="ddim", steps=2, seed=1),
        SynthesisParams(sampler="dpmpp", steps=3, seed=1),
    ]
    seen: list[tuple[int, int]] = []
    batch = synth.generate_mels(rois, params, progress=lambda k, n: seen.append((k, n)))
    assert [m.shape[1] for m in batch.mels] == [round(15 * 3.4453125), round(18 * 3.4453125)]
    assert seen == [(k, 5) for k in range(1, 6)]
    assert set(batch.timings) == {"encoder", "speaker", "sampling"}
    assert [(s.sampler, s.steps) for s in batch.sampling] == [("ddim", 2), ("dpmpp", 3)]


def test_long_video_is_windowed_and_keeps_its_length(synth: Synthesizer) -> None:
    small = Synthesizer(synth.model, synth.engines, window_frames=20, overlap_frames=5)
    roi = fake_roi(57, seed=3)
    (mel,) = small.generate_mels([roi], [SynthesisParams(steps=2, seed=1)]).mels
    assert mel.shape == (80, round(57 * 22050 / 256 / 25))
    assert torch.isfinite(mel).all()


def test_bad_item_fails_alone_and_good_item_has_video_duration(synth: Synthesizer, tmp_path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    from tests.fixtures.videos import write_audio_only_mp4

    audio_only = write_audio_only_mp4(tmp_path / "audio.mp4")
    out_mp4 = tmp_path / "out.mp4"
    reqs = [
        SynthesisRequest(video=junk, request_id="junk"),
        SynthesisRequest(
            video=carphone_path(),
            params=SynthesisParams(steps=2),
            output="mp4",
            mp4_path=out_mp4,
            request_id="ok",
        ),
        SynthesisRequest(video=audio_only, request_id="audio"),
    ]
    results = synth.synthesize_batch(reqs)
    assert isinstance(results[0].error, UnsupportedVideo)
    assert isinstance(results[2].error, NoVideoStream)
    ok = results[1]
    assert ok.error is None, ok.error
    assert ok.sample_rate == 22050
    assert abs(ok.audio_seconds - ok.video_seconds) <= 0.01 * ok.video_seconds
    assert ok.waveform.dtype == np.float32 and np.isfinite(ok.waveform).all()
    stages = {"preprocess", "encoder", "speaker", "sampling", "vocoder", "mux"}
    assert set(ok.timings) == stages | {"total"}
    # Every stage ran (a clock read around work that was skipped would be ~1e-7 s).
    assert all(ok.timings[stage] > 1e-5 for stage in stages), ok.timings
    assert ok.timings["total"] == pytest.approx(sum(ok.timings[stage] for stage in stages))
    d = synth.cfg.diffusion
    assert ok.sampling == {
        "sampler": d.default_sampler,
        "steps": 2,
        "seed": 0,
        "guidance": 0.0,
        "cfg_scale": d.default_cfg_scale,
        "noise_scale": d.default_noise_scale,
    }
    assert results[0].sampling == {}  # failed before sampling: nothing ran
    import av

    with av.open(str(out_mp4)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
