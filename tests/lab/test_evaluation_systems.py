"""Evaluation systems: the speaker embedding each ablation hands the denoiser, and the vocoder ceiling."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from diffv2s.audio import load_wav
from diffv2s.errors import InputError
from diffv2s.nn.speaker import mel_to_audio_features
from diffv2s.pipeline import Synthesizer
from diffv2s.video.mouth_roi import MouthROI
from lab.evaluation.harness import EvalOptions, plan_systems
from lab.evaluation.signal_metrics import stoi
from lab.evaluation.systems import (
    SweepEntry,
    SystemSpec,
    ground_truth_mel,
    parse_sampler,
    synthesize_system,
    visual_prior_spec,
    vocode_ground_truth,
)
from tests.fixtures.videos import fake_roi


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    torch.set_num_threads(1)
    # The torch engine: the test edits the denoiser's weights, which ONNX Runtime sessions would not see.
    s = Synthesizer.load(engine="torch")
    # A distinct learned null vector, so "null" and "zero" are told apart (the shipped one may be zeros).
    with torch.no_grad():
        s.model.denoiser.null_speaker.copy_(torch.linspace(-1.0, 1.0, s.cfg.speaker.embed_dim))
    # Short windows so a 1.6 s clip is sampled as several windows, like a long video would be.
    s.window_frames, s.overlap_frames = 16, 4
    return s


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    spec = importlib.util.find_spec("pysptk")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "example_audio_data" / "arctic_a0007.wav"
    return load_wav(path, 22050)


def speakers_seen(
    synth: Synthesizer, spec: SystemSpec, rois: list[MouthROI], mels: list[torch.Tensor]
) -> torch.Tensor:
    """Run a system and return the speaker rows the denoiser received on its first call: [n_windows, 256]."""
    seen: list[torch.Tensor] = []
    base = synth.engines.denoiser

    def recording(x_t, t, visual, visual_mask, speaker, mask, drop_cond):  # type: ignore[no-untyped-def]
        seen.append(speaker.detach().clone())
        return base(x_t, t, visual, visual_mask, speaker, mask, drop_cond)

    engines = dataclasses.replace(synth.engines, denoiser=recording)
    wavs = synthesize_system(synth, spec, rois, [1] * len(rois), mels, engines=engines)
    for roi, wav in zip(rois, wavs, strict=True):
        assert wav.shape == (int(round(roi.duration * synth.cfg.audio.sample_rate)),)
        assert np.isfinite(wav).all()
    return seen[0]


def spec(speaker: str) -> SystemSpec:
    return SystemSpec(speaker, "test", speaker=speaker, sampler="ddim", steps=2)


def test_each_speaker_mode_feeds_the_denoiser_its_embedding(synth: Synthesizer, speech: np.ndarray) -> None:
    n_frames = 40  # 1.6 s -> 3 windows of 16 frames
    roi = fake_roi(n_frames, seed=3)
    wav = speech[: int(n_frames / 25 * 22050)]
    mel = ground_truth_mel(synth, wav)
    served = synth.engines

    visual = speakers_seen(synth, spec("visual"), [roi], [mel])
    audio = speakers_seen(synth, spec("audio"), [roi], [mel])
    null = speakers_seen(synth, spec("null"), [roi], [mel])
    zero = speakers_seen(synth, spec("zero"), [roi], [mel])
    assert synth.engines is served  # systems never swap the synthesizer's engines
    assert visual.shape[0] == 3 and audio.shape[0] == 3

    with torch.inference_mode():
        s_a = synth.model.speaker.embed_audio(mel_to_audio_features(mel[None], synth.cfg.audio.mel_rate))[0]
    torch.testing.assert_close(audio, s_a.expand(3, -1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(null, synth.model.denoiser.null_speaker.detach().expand(3, -1))
    assert torch.count_nonzero(zero) == 0
    # The served path uses the video's own embedding, a different (unit) vector.
    assert (visual - audio).abs().max() > 1e-3
    torch.testing.assert_close(visual.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)


def test_audio_mode_keeps_items_apart_in_a_batch(synth: Synthesizer, speech: np.ndarray) -> None:
    rois = [fake_roi(40, seed=1), fake_roi(12, seed=2)]
    wavs = [speech[: int(40 / 25 * 22050)], speech[22050 : 22050 + int(12 / 25 * 22050)]]
    mels = [ground_truth_mel(synth, w) for w in wavs]
    rows = speakers_seen(synth, spec("audio"), rois, mels)
    # 3 windows of item 0, then 1 of item 1; each row is its own item's audio embedding.
    assert rows.shape[0] == 4
    torch.testing.assert_close(rows[0], rows[2])
    assert (rows[0] - rows[3]).abs().max() > 1e-3


def test_vocoder_ceiling_reproduces_speech(synth: Synthesizer, speech: np.ndarray) -> None:
    (out,) = vocode_ground_truth(synth, [speech])
    assert out.shape == speech.shape
    assert stoi(speech, out, 22050) > 0.85


def test_parse_sampler() -> None:
    assert parse_sampler("ddim-25") == SweepEntry("ddim", 25)
    assert parse_sampler(" dpmpp-10-cfg2.5 ") == SweepEntry("dpmpp", 10, cfg_scale=2.5)
    assert parse_sampler("ddim-4-cfg1.5-noise1") == SweepEntry("ddim", 4, cfg_scale=1.5, noise_scale=1.0)
    assert parse_sampler("ddim-4-noise0.5-cfg2") == SweepEntry("ddim", 4, cfg_scale=2.0, noise_scale=0.5)
    assert parse_sampler("ddim-4-noise0").noise_scale == 0.0
    assert parse_sampler("ddim-4-cfg1.5-noise1").name == "ddim-4-cfg1.5-noise1"
    for bad in (
        "ddim",
        "ddim-",
        "-10",
        "ddim-10-cfg",
        "ddim-10-cfgx",
        "ddim-10-cfg-1",
        "ddim-10-cfg25",
        "ddim-10x",
        "ddim-4-noise",
        "ddim-4-noise3",
        "ddim-4-cfg1-cfg2",
        "ddim-4-eta1",
    ):
        with pytest.raises(ValueError, match="sampler-steps"):
            parse_sampler(bad)


def test_sweep_entries_become_ablations_with_their_own_guidance(synth: Synthesizer) -> None:
    opts = EvalOptions(
        cfg_scale=1.5,
        noise_scale=0.7,
        sweep=["ddim-4", "dpmpp-3-cfg2", "ddim-4-noise1"],
        speaker_ablations=False,
    )
    model, ablations = plan_systems(synth, opts)
    assert (model.cfg_scale, model.noise_scale) == (1.5, 0.7)
    assert [(a.name, a.sampler, a.steps, a.cfg_scale, a.noise_scale) for a in ablations] == [
        ("ddim-4", "ddim", 4, 1.5, 0.7),
        ("dpmpp-3-cfg2", "dpmpp", 3, 2.0, 0.7),
        ("ddim-4-noise1", "ddim", 4, 1.5, 1.0),
    ]
    # Unset, the model system samples as the checkpoint says.
    model, _ = plan_systems(synth, EvalOptions(sweep=[], speaker_ablations=False))
    d = synth.cfg.diffusion
    assert (model.sampler, model.steps, model.cfg_scale, model.noise_scale) == (
        d.default_sampler,
        d.default_steps,
        d.default_cfg_scale,
        d.default_noise_scale,
    )


def test_visual_prior_system_is_the_denoisers_prior_alone(synth: Synthesizer) -> None:
    rois = [fake_roi(40, seed=4)]
    prior = visual_prior_spec()
    model_one_step = dataclasses.replace(prior, name="model", denoiser="model")
    (a,) = synthesize_system(synth, prior, rois, [1])
    (b,) = synthesize_system(synth, dataclasses.replace(prior, noise_scale=1.0), rois, [7])
    np.testing.assert_array_equal(a, b)  # mu does not depend on the starting noise
    (m,) = synthesize_system(synth, model_one_step, rois, [1])
    assert np.abs(m - a).max() > 1e-3  # the trained network corrects mu
    # With the network's correction zeroed, its x0 prediction is mu: the model system becomes the prior.
    out = synth.model.denoiser.out_proj
    saved = [p.detach().clone() for p in out.parameters()]
    try:
        with torch.no_grad():
            for p in out.parameters():
                p.zero_()
        (z,) = synthesize_system(synth, model_one_step, rois, [7])
    finally:
        with torch.no_grad():
            for p, s in zip(out.parameters(), saved, strict=True):
                p.copy_(s)
    np.testing.assert_allclose(z, a, atol=1e-5)


def test_prior_ablation_is_planned_only_when_asked_and_possible(synth: Synthesizer) -> None:
    _, ablations = plan_systems(synth, EvalOptions(sweep=["ddim-4"], speaker_ablations=False))
    assert [a.name for a in ablations] == ["ddim-4"]
    _, ablations = plan_systems(
        synth, EvalOptions(sweep=["ddim-4"], speaker_ablations=False, prior_ablation=True)
    )
    assert [(a.name, a.denoiser, a.steps, a.cfg_scale) for a in ablations] == [
        ("visual_prior", "prior", 1, 1.0),
        ("ddim-4", "model", 4, synth.cfg.diffusion.default_cfg_scale),
    ]
    layer, synth.model.denoiser.prior = synth.model.denoiser.prior, None
    try:
        with pytest.raises(InputError, match="no visual prior"):
            plan_systems(synth, EvalOptions(sweep=[], prior_ablation=True))
        with pytest.raises(ValueError, match="no visual prior"):
            synthesize_system(synth, visual_prior_spec(), [fake_roi(8, seed=1)], [1])
    finally:
        synth.model.denoiser.prior = layer
