"""Sampling parameters: declared once, validated once, resolved against the checkpoint's defaults."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from diffv2s.config import DiffusionConfig, ModelConfig
from diffv2s.errors import InvalidParameter
from diffv2s.schemas import ResolvedSampling, SynthesisParams, resolve_sampling

CHECKPOINT = ModelConfig(
    diffusion=DiffusionConfig(
        default_sampler="dpmpp", default_steps=7, default_cfg_scale=2.5, default_noise_scale=0.25
    )
)


def test_unset_parameters_take_the_checkpoints_defaults() -> None:
    got = resolve_sampling(SynthesisParams(seed=3, guidance=0.5), CHECKPOINT)
    assert got == ResolvedSampling(
        sampler="dpmpp", steps=7, seed=3, guidance=0.5, cfg_scale=2.5, noise_scale=0.25
    )
    assert resolve_sampling(SynthesisParams(), CHECKPOINT.diffusion) == resolve_sampling(
        SynthesisParams(), CHECKPOINT
    )


def test_set_parameters_win_even_when_they_are_falsy() -> None:
    params = SynthesisParams(sampler="ddpm", steps=1, seed=0, cfg_scale=0.0, noise_scale=0.0)
    got = resolve_sampling(params, CHECKPOINT)
    assert (got.sampler, got.steps, got.cfg_scale, got.noise_scale) == ("ddpm", 1, 0.0, 0.0)


def test_resolving_validates() -> None:
    with pytest.raises(InvalidParameter, match="cfg_scale"):
        resolve_sampling(SynthesisParams(cfg_scale=21.0), CHECKPOINT)


def test_resolved_settings_are_plain_json_and_name_every_parameter() -> None:
    got = resolve_sampling(SynthesisParams(seed=11), CHECKPOINT).as_dict()
    assert set(got) == {f.name for f in dataclasses.fields(SynthesisParams)}
    assert got == {
        "sampler": "dpmpp",
        "steps": 7,
        "seed": 11,
        "guidance": 0.0,
        "cfg_scale": 2.5,
        "noise_scale": 0.25,
    }


def test_params_round_trip_through_a_dict_and_refuse_unknown_keys() -> None:
    params = SynthesisParams(sampler="ddim", steps=4, seed=9, cfg_scale=None, noise_scale=0.5)
    assert SynthesisParams.from_dict(params.as_dict()) == params
    assert SynthesisParams.from_dict({"seed": 2}) == SynthesisParams(seed=2)
    with pytest.raises(InvalidParameter, match="unknown sampling parameters"):
        SynthesisParams.from_dict({"temperature": 0.7})


def test_schemas_import_no_torch() -> None:
    """The gateway resolves and validates with these types and must not load torch."""
    code = "import sys, diffv2s.schemas, diffv2s.engines.spec; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
