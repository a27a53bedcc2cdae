"""Weights kept aside of protobuf until the file is written: the file has the same bytes as when
every weight went through protobuf, on the fidelity benchmark's quick set and on the cases that
read a weight on the way (onnxsim folding a Gather of constants, the C++ opset converter)."""
from __future__ import annotations

import pytest
import torch

from benchmarks.corpus import select_specs
from fxtrt.backend.cleanup import cleanup, save_onnx
from fxtrt.backend.emit import emit_onnx
from fxtrt.backend.weights import Weights
from tests.backend.test_translate import emitted_program

QUICK = select_specs(quick=True)


def written(program, captured, opset, tmp_path, aside: bool) -> bytes:
    weights = Weights() if aside else None
    emitted = emit_onnx(program, captured, captured.declared, opset, weights)
    stubs = len(weights) if weights is not None else 0
    cleaned = cleanup(emitted.take_model(), weights=weights)
    path = tmp_path / f"{int(aside)}.onnx"
    save_onnx(cleaned.model, path, weights=weights)
    return path.read_bytes(), stubs


@pytest.mark.parametrize("spec", QUICK, ids=[s.name for s in QUICK])
def test_the_file_is_the_same_with_the_weights_aside(spec, tmp_path):
    program, captured = emitted_program(spec)
    aside, stubs = written(program, captured, 17, tmp_path, aside=True)
    whole, _ = written(program, captured, 17, tmp_path, aside=False)
    assert aside == whole
    if spec.name == "tv/squeezenet1_1":
        assert stubs > 10  # the path was taken: its convolutions' weights went aside


class Tables(torch.nn.Module):
    """A table onnxsim folds (a Gather of a constant index), a large int64 buffer indexed by
    the input, and a Linear: weights read on the way and weights only written."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(4096, 16)
        self.register_buffer("rows", torch.arange(4096 * 2, dtype=torch.int64).reshape(4096, 2) % 4096)
        self.fc = torch.nn.Linear(16, 2048)

    def forward(self, x):
        fixed = self.table(torch.tensor([3, 5]))  # constant: onnxsim folds the Gather
        picked = self.table(self.rows[x.argmax(-1)]).sum(1)
        return self.fc(picked + fixed.sum(0)) + x.mean()


@pytest.mark.parametrize("opset", [17, 16])
def test_weights_read_on_the_way_are_the_real_ones(opset, tmp_path):
    import fxtrt

    torch.manual_seed(0)
    model = Tables().eval()
    x = torch.randn(2, 16)
    compiled = fxtrt.compile(model, x, batch=(1, 4, 8), opset=opset, out_dir=tmp_path / "o")
    assert compiled.report.verified
    y = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(y), model(y), atol=1e-4, rtol=1e-3)


def test_stubs_of_numpy_and_torch_tensors_write_as_their_protos(tmp_path):
    """onnx_ir writes a numpy-backed tensor through the file descriptor and torch.onnx's from
    torch's memory: between the Python-buffered pieces around them, the bytes stay in order."""
    import numpy as np
    import onnx
    import onnx_ir as ir
    from onnx import helper
    from torch.onnx._internal.exporter._core import TorchTensor

    from fxtrt.backend.stream_write import write_model
    from fxtrt.backend.weights import serialize_aside

    tensors = [ir.Tensor(np.arange(3000, dtype=np.float32).reshape(60, 50), name="a"),
               TorchTensor(torch.arange(2000, dtype=torch.int64), name="b"),
               ir.Tensor(np.ones(5, np.float32), name="small"),
               TorchTensor(torch.randn(40, 40).to(torch.bfloat16), name="c")]
    graph = helper.make_graph([helper.make_node("Identity", [t.name], [t.name + "_out"]) for t in tensors], "g", [],
                              [helper.make_tensor_value_info(t.name + "_out", onnx.TensorProto.UNDEFINED, None)
                               for t in tensors], doc_string="after the initializers",
                              initializer=[onnx.numpy_helper.from_array(np.zeros(1, np.float32), t.name) for t in tensors])
    model = ir.serde.deserialize_model(helper.make_model(graph))
    for t in tensors:
        model.graph.initializers[t.name].const_value = t
    whole = ir.serde.serialize_model(model).SerializeToString()
    weights = Weights()
    stubs = serialize_aside(model, weights)
    assert sorted(weights.tensors) == ["a", "b", "c"] and all(not t.raw_data for t in stubs.graph.initializer[:2])
    write_model(stubs, tmp_path / "m.onnx", weights)
    assert (tmp_path / "m.onnx").read_bytes() == whole
