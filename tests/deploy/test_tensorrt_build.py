"""The TensorRT engine build (diffv2s/engines/trt_backend.py) without a GPU: the builder code uses only the
strongly typed API that TensorRT 10 and 11 share (checked on its syntax tree), and the fp16 graph it
parses keeps the precision policy and computes what the float32 graph does (run in ONNX Runtime on the
CPU). Building and running engines needs a CUDA GPU: tests/diffv2s/engines/test_engines_trt.py.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffv2s.engines import trt_backend

SOURCE = Path(trt_backend.__file__)
# The weak-typing API TensorRT 11 removed: using any of it crash-loops every worker on its engine build.
REMOVED = {"FP16", "BF16", "INT8", "PREFER_PRECISION_CONSTRAINTS", "OBEY_PRECISION_CONSTRAINTS", "precision"}


def test_builder_uses_no_weak_typing_api() -> None:
    tree = ast.parse(SOURCE.read_text())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert used & REMOVED == set()
    assert "set_output_type" not in used and "set_flag" not in used
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "create_network"
    ]
    assert calls, "no create_network call found"
    for call in calls:
        assert "STRONGLY_TYPED" in ast.unparse(call), ast.unparse(call)


class _Block(nn.Module):
    """What the real networks mix: a sinusoidal embedding of a large argument, linear layers, layer norm,
    a convolution, attention-style matmuls."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.conv = nn.Conv1d(32, 32, 3, padding=1)
        self.out = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.arange(8, dtype=torch.float32)
        emb = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=-1)  # t ~ 1000
        h = self.norm(self.proj(x + emb[:, None, :]))
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        scores = torch.softmax(h @ h.transpose(1, 2) / 32**0.5, dim=-1)
        return self.out(scores @ h)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trt") / "block.onnx"
    torch.manual_seed(0)
    # The TorchScript exporter, as model_export uses it; its deprecation warnings are expected.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _Block().eval(),
            (torch.randn(2, 5, 16), torch.tensor([3.0, 999.0])),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x", "t"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch", 1: "frames"}, "t": {0: "batch"}, "y": {0: "batch", 1: "frames"}},
        )
    return path


def test_fp16_graph_puts_only_matmul_and_conv_in_fp16(exported: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(trt_backend.fp16_graph(exported))
    f16 = onnx.TensorProto.FLOAT16
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)
    }
    types |= {i.name: i.data_type for i in model.graph.initializer}
    by_op: dict[str, set[int]] = {}
    for node in model.graph.node:
        if node.op_type == "Cast":
            continue
        ins = {types[i] for i in node.input if i in types}
        by_op.setdefault(node.op_type, set()).update(ins)
    assert by_op["MatMul"] == {f16} and by_op["Conv"] == {f16}
    for op in ("Sin", "Cos", "LayerNormalization", "Softmax", "Add"):
        assert f16 not in by_op.get(op, set()), op
    # The graph's interface is unchanged: the engine is fed and read as before.
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT] * 2
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_fp16_graph_computes_what_the_fp32_graph_does(exported: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    feeds = {
        "x": np.random.default_rng(0).standard_normal((3, 7, 16)).astype(np.float32),
        "t": np.array([0.0, 500.0, 999.0], dtype=np.float32),
    }
    providers = ["CPUExecutionProvider"]
    (want,) = ort.InferenceSession(str(exported), providers=providers).run(None, feeds)
    (got,) = ort.InferenceSession(trt_backend.fp16_graph(exported), providers=providers).run(None, feeds)
    assert got.dtype == np.float32
    # fp16 products with float32 everywhere else: the half-precision budget of `diffv2s export verify`.
    assert np.abs(got - want).max() <= 5e-2 + 2e-2 * np.abs(want).max()
