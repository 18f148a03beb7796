"""ONNX export of the `small` preset (the production exporter, `model_export.onnx_export`): one file per
network with its metadata and dynamic axes, every network reproducing torch on shapes other than the ones it
was traced with, the int8 denoiser file, the `diffv2s export` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffv2s.checkpoints.store import Checkpoint
from diffv2s.checkpoints.weights import load_model
from diffv2s.engines.ort_backend import session_inputs
from diffv2s.engines.spec import NETWORKS, network_specs
from diffv2s.nn.hifigan import load_hifigan, resolve_weights
from tests.fixtures.engines import export_small

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from model_export.cli import main as export_main  # noqa: E402
from model_export.onnx_export import example_inputs, network_module  # noqa: E402

torch.set_num_threads(1)  # one thread: OpenMP barriers stall badly on a loaded machine


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path]:
    return export_small(tmp_path_factory.mktemp("export"))


def test_one_file_per_network_with_metadata_and_dynamic_axes(exported: tuple[Checkpoint, Path]) -> None:
    ckpt, engine_dir = exported
    specs = network_specs(ckpt.config)
    for name in NETWORKS:
        model = onnx.load(str(engine_dir / f"{name}.onnx"))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["diffv2s.network"] == name
        assert meta["diffv2s.checkpoint_sha256"] == ckpt.sha256
        assert json.loads(meta["diffv2s.config"]) == json.loads(json.dumps(ckpt.config.to_dict()))
        assert meta["diffv2s.format_version"] == "1"
        axes = json.loads(meta["diffv2s.axes"])
        for value in (*model.graph.input, *model.graph.output):
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            assert dims == axes[value.name]
            assert dims[0] == "batch"  # every tensor has a dynamic batch axis
        # Time axes are named (dynamic), never frozen to the example size.
        time_axes = {d for v in model.graph.input for d in axes[v.name] if isinstance(d, str)} - {"batch"}
        assert time_axes, name
        assert [i.name for i in model.graph.input] == [t.name for t in specs[name].inputs]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", NETWORKS)
def test_exported_network_matches_torch_on_shapes_other_than_the_trace(
    exported: tuple[Checkpoint, Path], name: str
) -> None:
    """The files `export_onnx` wrote, run by ONNX Runtime on batch 3 and 9 video frames (traced on batch 2
    and 6 frames, the vocoder on 2), items of different lengths, against the torch module they came from."""
    ckpt, engine_dir = exported
    cfg = ckpt.config
    spec = network_specs(cfg)[name]
    generator = load_hifigan(resolve_weights(cfg.vocoder.weights), cfg.vocoder) if name == "vocoder" else None
    module = network_module(name, load_model(ckpt), generator)
    inputs = example_inputs(spec, cfg, batch=3, video_frames=9, seed=1)
    with torch.no_grad():
        expected = module(*inputs).numpy()
    session = ort.InferenceSession(str(engine_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, session_inputs(spec, inputs))
    assert got.shape == expected.shape and got.shape[0] == 3
    assert abs(got - expected).max() <= 1e-3 * max(1.0, float(abs(expected).max()))


def test_cli_export_writes_the_networks_asked_for(exported: tuple[Checkpoint, Path], tmp_path: Path) -> None:
    ckpt, _ = exported
    assert (
        export_main(["--checkpoint", str(ckpt.path), "--out", str(tmp_path), "--networks", "denoiser"]) == 0
    )
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["denoiser.onnx"]
    with pytest.raises(SystemExit):  # --int8 quantises the denoiser, which this call would not export
        export_main(
            ["--checkpoint", str(ckpt.path), "--out", str(tmp_path), "--networks", "encoder", "--int8"]
        )
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "denoiser.onnx")).metadata_props}
    assert meta["diffv2s.checkpoint_sha256"] == ckpt.sha256


def test_int8_denoiser_file_has_int8_weights_and_says_so(exported: tuple[Checkpoint, Path]) -> None:
    ckpt, engine_dir = exported
    fp32 = onnx.load(str(engine_dir / "denoiser.onnx"))
    int8 = onnx.load(str(engine_dir / "denoiser.int8.onnx"))
    weights = {i.name for i in int8.graph.initializer}
    ops = [n.op_type for n in int8.graph.node]
    # Every linear layer's MatMul became an integer MatMul on int8 weights; float MatMuls left are the
    # attention's two activation x activation products per layer.
    float_matmuls = [n for n in int8.graph.node if n.op_type == "MatMul"]
    assert all(not set(n.input) & weights for n in float_matmuls)
    assert len(float_matmuls) == 2 * ckpt.config.denoiser.layers
    fp32_ops = [n.op_type for n in fp32.graph.node]
    # (the quantiser turns each Gemm, the timestep MLP's, into a MatMul first)
    linear = fp32_ops.count("MatMul") + fp32_ops.count("Gemm") - len(float_matmuls)
    assert ops.count("MatMulInteger") == linear
    int8_weights = [i for i in int8.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8_weights
    # 7-bit weights: uint8 x int8 pair sums then fit int16 on CPUs without VNNI (see quantize_int8).
    for w in int8_weights:
        values = onnx.numpy_helper.to_array(w)
        assert values.min() >= -64 and values.max() <= 64, (w.name, values.min(), values.max())
    meta = {p.key: p.value for p in int8.metadata_props}
    fp32_meta = {p.key: p.value for p in fp32.metadata_props}
    assert meta["diffv2s.weights"] == "int8" and fp32_meta["diffv2s.weights"] == "fp32"
    assert {k: v for k, v in meta.items() if k != "diffv2s.weights"} == {
        k: v for k, v in fp32_meta.items() if k != "diffv2s.weights"
    }
    assert (engine_dir / "denoiser.int8.onnx").stat().st_size < 0.5 * (
        engine_dir / "denoiser.onnx"
    ).stat().st_size
