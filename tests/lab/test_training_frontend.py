"""The split encoder forward used by training equals the model's own forward."""

from __future__ import annotations

import torch

from diffv2s.config import preset
from diffv2s.model import build_initial_model
from lab.training.frontend import encode_tokens, speaker_from_tokens, video_tokens


def test_tokens_then_transformer_equals_the_encoder_forward() -> None:
    torch.manual_seed(0)
    model = build_initial_model(preset("small"), seed=1)
    video = torch.randn(2, 1, 9, 88, 88)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    with torch.no_grad():
        expected = model.encoder(video, None, pad).features
        tokens = video_tokens(model.encoder, video, pad)
        got = encode_tokens(model.encoder, tokens, pad).features
        s_expected = model.speaker.embed_visual(video, pad)
        s_got = speaker_from_tokens(model.speaker, tokens, pad)
    valid = ~pad
    torch.testing.assert_close(got[valid], expected[valid], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_got, s_expected, rtol=1e-4, atol=1e-5)
    # The padded item's speaker embedding is the one it gets alone.
    with torch.no_grad():
        alone = model.speaker.embed_visual(video[1:, :, :6])
    torch.testing.assert_close(s_got[1:], alone, rtol=1e-4, atol=1e-5)
