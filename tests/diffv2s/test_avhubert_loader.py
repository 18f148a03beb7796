"""Loading official-format AV-HuBERT fairseq checkpoints without fairseq.

The key/shape table below is written by hand from the public code (facebookresearch/av_hubert
`avhubert/hubert.py` AVHubertModel + `avhubert/resnet.py` ResEncoder, and fairseq's wav2vec2
`TransformerEncoder` / `TransformerSentenceEncoderLayer` / `MultiheadAttention`), not from our module.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from diffv2s.checkpoints.avhubert_fairseq import load_avhubert_checkpoint
from diffv2s.config import EncoderConfig
from diffv2s.errors import CheckpointError

torch.set_num_threads(1)

# Tiny architecture: ResNet width W (64 official), D, layers, FFN, conv_pos K with G groups.
W, D, LAYERS, HEADS, FFN, K, G, AUDIO, FINAL, N_LABELS = 4, 32, 2, 4, 64, 8, 4, 104, 16, 10


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def official_key_shapes(final_proj: bool = True) -> dict[str, tuple[int, ...]]:
    """AVHubertModel state dict (concat fusion, input masking, sub_encoder_layers=0) for the tiny sizes."""
    v = "feature_extractor_video.resnet."
    t: dict[str, tuple[int, ...]] = {}
    # ResEncoder.frontend3D = Sequential(Conv3d(1, 64, (5,7,7), bias=False), BatchNorm3d, PReLU, MaxPool3d)
    t[v + "frontend3D.0.weight"] = (W, 1, 5, 7, 7)
    t.update(_bn(v + "frontend3D.1", W))
    t[v + "frontend3D.2.weight"] = (W,)
    # ResNet(BasicBlock, [2, 2, 2, 2], relu_type='prelu'): layer1..4 with planes 64, 128, 256, 512
    inplanes = W
    for stage, planes in enumerate([W, 2 * W, 4 * W, 8 * W], start=1):
        for block in range(2):
            p = f"{v}trunk.layer{stage}.{block}."
            cin = inplanes if block == 0 else planes
            t[p + "conv1.weight"] = (planes, cin, 3, 3)
            t.update(_bn(p + "bn1", planes))
            t[p + "relu1.weight"] = (planes,)
            t[p + "conv2.weight"] = (planes, planes, 3, 3)
            t.update(_bn(p + "bn2", planes))
            t[p + "relu2.weight"] = (planes,)
            if block == 0 and stage > 1:  # downsample_basic_block: Conv2d 1x1 stride 2 + BatchNorm2d
                t[p + "downsample.0.weight"] = (planes, cin, 1, 1)
                t.update(_bn(p + "downsample.1", planes))
        inplanes = planes
    # SubModel.proj for each modality
    t["feature_extractor_video.proj.weight"] = (D, 8 * W)
    t["feature_extractor_video.proj.bias"] = (D,)
    t["feature_extractor_audio.proj.weight"] = (D, AUDIO)
    t["feature_extractor_audio.proj.bias"] = (D,)
    t["post_extract_proj.weight"] = (D, 2 * D)
    t["post_extract_proj.bias"] = (D,)
    t["mask_emb"] = (AUDIO,)
    # TransformerEncoder: weight-normed (dim=2) grouped pos conv, layers, final layer norm
    t["encoder.pos_conv.0.bias"] = (D,)
    t["encoder.pos_conv.0.weight_g"] = (1, 1, K)
    t["encoder.pos_conv.0.weight_v"] = (D, D // G, K)
    for i in range(LAYERS):
        p = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            t[p + f"self_attn.{proj}.weight"] = (D, D)
            t[p + f"self_attn.{proj}.bias"] = (D,)
        t[p + "self_attn_layer_norm.weight"] = (D,)
        t[p + "self_attn_layer_norm.bias"] = (D,)
        t[p + "fc1.weight"] = (FFN, D)
        t[p + "fc1.bias"] = (FFN,)
        t[p + "fc2.weight"] = (D, FFN)
        t[p + "fc2.bias"] = (D,)
        t[p + "final_layer_norm.weight"] = (D,)
        t[p + "final_layer_norm.bias"] = (D,)
    t["encoder.layer_norm.weight"] = (D,)
    t["encoder.layer_norm.bias"] = (D,)
    t["layer_norm.weight"] = (2 * D,)
    t["layer_norm.bias"] = (2 * D,)
    if final_proj:  # removed by remove_pretraining_modules() in fine-tuned models
        t["final_proj.weight"] = (FINAL, D)
        t["final_proj.bias"] = (FINAL,)
    t["label_embs_concat"] = (N_LABELS, FINAL)
    return t


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(123)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.1
    return sd


FAKE_MODULE = textwrap.dedent(
    """
    class FairseqConfig:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class DictConfig:
        # omegaconf-like: pickled state keeps children under `_content`, leaves as nodes with `_val`
        def __init__(self, content):
            self._content = content
            self._parent = None

    class ValueNode:
        def __init__(self, val):
            self._val = val

    class Dictionary:
        def __init__(self, symbols):
            self.symbols = symbols
    """
)


@pytest.fixture
def fake_fairseq(tmp_path: Path) -> Any:
    """Import a throwaway `fairseq_fake.dataclass.configs`, yield it, then make it un-importable."""
    root = tmp_path / "fakepkgs"
    pkg = root / "fairseq_fake" / "dataclass"
    pkg.mkdir(parents=True)
    (root / "fairseq_fake" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "configs.py").write_text(FAKE_MODULE)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    module = importlib.import_module("fairseq_fake.dataclass.configs")

    def forget() -> None:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == "fairseq_fake" or n.startswith("fairseq_fake.")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        assert importlib.util.find_spec("fairseq_fake") is None

    module.forget = forget
    yield module
    if str(root) in sys.path:
        forget()


def _pretrained_file(path: Path, fake: Any, sd: dict[str, torch.Tensor]) -> None:
    model_cfg = fake.FairseqConfig(
        _name="av_hubert",
        encoder_layers=LAYERS,
        encoder_embed_dim=D,
        encoder_ffn_embed_dim=FFN,
        encoder_attention_heads=HEADS,
        layer_norm_first=True,
        conv_pos=K,
        conv_pos_groups=G,
        audio_feat_dim=AUDIO,
    )
    torch.save(
        {
            "args": None,
            "cfg": {"model": model_cfg, "task": {"_name": "av_hubert_pretraining", "labels": ["km"]}},
            "model": sd,
            "criterion": None,
            "optimizer_history": [{"criterion_name": "AVHubertCriterion", "num_updates": 5}],
            "task_state": {"dictionaries": [fake.Dictionary(["a", "b"])]},
            "extra_state": {"epoch": 3},
        },
        path,
    )


def _assert_loaded(model: torch.nn.Module, file_sd: dict[str, torch.Tensor]) -> None:
    ours = model.state_dict()
    for k, v in file_sd.items():
        assert torch.equal(ours[k], v), k


def test_pretrained_checkpoint_loads_without_fairseq(tmp_path: Path, fake_fairseq: Any) -> None:
    shapes = official_key_shapes()
    sd = random_state_dict(shapes)
    path = tmp_path / "large_vox_iter5.pt"
    _pretrained_file(path, fake_fairseq, sd)
    fake_fairseq.forget()
    # The file really needs the fake package for ordinary unpickling...
    with pytest.raises(ModuleNotFoundError):
        torch.load(path, weights_only=False)
    # ...but not for ours. Heads are dropped by default, so the config comes from shapes + the file's cfg.
    model, cfg = load_avhubert_checkpoint(path)
    assert (cfg.embed_dim, cfg.layers, cfg.heads, cfg.ffn_dim) == (D, LAYERS, HEADS, FFN)
    assert (cfg.resnet_width, cfg.pos_conv_kernel, cfg.pos_conv_groups) == (W, K, G)
    assert cfg.layer_norm_first is True
    assert model.final_proj is None and model.label_embs_concat is None
    _assert_loaded(model, {k: v for k, v in sd.items() if not k.startswith(("final_proj", "label_embs"))})

    with_heads, _ = load_avhubert_checkpoint(path, keep_heads=True)
    _assert_loaded(with_heads, sd)
    assert set(with_heads.state_dict()) == set(shapes)

    out = model(torch.randn(2, 1, 3, 20, 20), None, torch.tensor([[False] * 3, [False, False, True]]))
    assert out.features.shape == (2, 3, D)
    assert torch.isfinite(out.features).all()


def test_finetuned_checkpoint_with_prefix_and_nested_w2v_args(tmp_path: Path, fake_fairseq: Any) -> None:
    sd = random_state_dict(official_key_shapes(final_proj=False), seed=1)
    model_sd = {f"encoder.w2v_model.{k}": v for k, v in sd.items()}
    # Seq2seq parts outside the encoder must be ignored.
    model_sd["decoder.embed_tokens.weight"] = torch.randn(20, D)
    model_sd["decoder.layers.0.fc1.weight"] = torch.randn(8, D)
    node = fake_fairseq.ValueNode
    w2v_args = fake_fairseq.DictConfig(
        {
            "model": fake_fairseq.DictConfig(
                {
                    "encoder_layers": node(LAYERS),
                    "encoder_embed_dim": node(D),
                    "encoder_attention_heads": node(HEADS),
                    "layer_norm_first": node(False),
                }
            )
        }
    )
    path = tmp_path / "finetuned.pt"
    torch.save(
        {"cfg": {"model": {"_name": "av_hubert_seq2seq", "w2v_args": w2v_args}}, "model": model_sd}, path
    )
    fake_fairseq.forget()
    model, cfg = load_avhubert_checkpoint(path)
    assert cfg.heads == HEADS
    assert cfg.layer_norm_first is False  # read through the omegaconf-like nesting
    _assert_loaded(model, {k: v for k, v in sd.items() if k != "label_embs_concat"})
    assert torch.isfinite(model(None, torch.randn(1, 4, AUDIO), None).features).all()


def test_weight_norm_parametrization_names_are_mapped(tmp_path: Path) -> None:
    sd = random_state_dict(official_key_shapes(), seed=2)
    g = sd.pop("encoder.pos_conv.0.weight_g")
    v = sd.pop("encoder.pos_conv.0.weight_v")
    sd["encoder.pos_conv.0.parametrizations.weight.original0"] = g
    sd["encoder.pos_conv.0.parametrizations.weight.original1"] = v
    path = tmp_path / "new_fairseq.pt"
    torch.save({"model": sd}, path)
    cfg = EncoderConfig(
        embed_dim=D,
        layers=LAYERS,
        heads=HEADS,
        ffn_dim=FFN,
        resnet_width=W,
        pos_conv_kernel=K,
        pos_conv_groups=G,
    )
    model, _ = load_avhubert_checkpoint(path, cfg)
    assert torch.equal(model.encoder.pos_conv[0].weight_g, g)
    assert torch.equal(model.encoder.pos_conv[0].weight_v, v)


@pytest.mark.parametrize("breakage", ["missing", "unexpected", "shape"])
def test_mismatching_checkpoints_raise_checkpoint_error(tmp_path: Path, breakage: str) -> None:
    sd = random_state_dict(official_key_shapes(), seed=3)
    if breakage == "missing":
        del sd["encoder.layers.1.fc2.weight"]
        needle = "encoder.layers.1.fc2.weight"
    elif breakage == "unexpected":
        sd["feature_extractor_audio.encoder.layers.0.fc1.weight"] = torch.zeros(3)
        needle = "feature_extractor_audio.encoder"
    else:
        sd["encoder.layers.0.fc1.bias"] = torch.zeros(FFN + 1)
        needle = "encoder.layers.0.fc1.bias"
    path = tmp_path / "broken.pt"
    torch.save({"model": sd}, path)
    cfg = EncoderConfig(
        embed_dim=D,
        layers=LAYERS,
        heads=HEADS,
        ffn_dim=FFN,
        resnet_width=W,
        pos_conv_kernel=K,
        pos_conv_groups=G,
    )
    with pytest.raises(CheckpointError, match="does not match") as info:
        load_avhubert_checkpoint(path, cfg)
    assert needle in str(info.value)


def test_wrong_preset_for_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save({"model": random_state_dict(official_key_shapes())}, path)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_avhubert_checkpoint(path, EncoderConfig(embed_dim=D, layers=LAYERS, heads=HEADS, ffn_dim=FFN))


def test_unreadable_files_raise_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_avhubert_checkpoint(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_avhubert_checkpoint(junk)
    not_avhubert = tmp_path / "other.pt"
    torch.save({"model": {"something.weight": torch.zeros(2)}}, not_avhubert)
    with pytest.raises(CheckpointError, match="not an AV-HuBERT checkpoint"):
        load_avhubert_checkpoint(not_avhubert)


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.mkdir, (str(self.target),))


def test_unpickling_never_calls_foreign_callables(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": random_state_dict(official_key_shapes()), "task_state": _Exploit(target)}, path)
    model, cfg = load_avhubert_checkpoint(path)
    assert not target.exists()
    assert cfg.layer_norm_first  # no cfg in the file: an AV-HuBERT release, all of which are pre-LN
    assert model.encoder.layers[0].fc1.weight.shape == (FFN, D)
