import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fxtrt.backend.cleanup import cleanup, op_counts, save_onnx
from fxtrt.backend.dynamic_dims import check_dynamic_dims
from fxtrt.backend.emit import emit_onnx
from fxtrt.errors import EmitError
from fxtrt.frontend.capture import capture
from fxtrt.frontend.program import exported as as_program
from fxtrt.settings import make_settings, normalize_inputs


def exported(model, x):
    return torch.onnx.export(model, (x,), dynamo=True, optimize=False, verbose=False,
                             dynamic_shapes=({0: torch.export.Dim("batch")},)).model_proto


class ConstArith(torch.nn.Module):
    def forward(self, x):
        w = torch.ones(4) * 2 + 1  # constant subgraph: folded away
        return x.view(x.size(0), -1) * w


def test_cleanup_folds_and_keeps_the_batch_symbolic():
    model = exported(ConstArith(), torch.randn(2, 2, 2))
    cleaned = cleanup(model)
    assert sum(cleaned.ops_after.values()) < sum(cleaned.ops_before.values())
    assert cleaned.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    sess = ort.InferenceSession(cleaned.model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.randn(5, 2, 2).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], x.reshape(5, 4) * 3)


def test_large_models_use_external_data(tmp_path):
    model = exported(torch.nn.Linear(256, 256), torch.randn(2, 256))
    cleaned = cleanup(model, size_limit=1024)
    assert any("over 2 GB" in n for n in cleaned.notes), "the big-model path skips onnxsim"
    path = tmp_path / "model.onnx"
    save_onnx(cleaned.model, path, threshold=1024)
    assert (tmp_path / "model.onnx.data").stat().st_size >= 256 * 256 * 4
    assert path.stat().st_size < 256 * 256
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {sess.get_inputs()[0].name: np.ones((3, 256), np.float32)})[0].shape == (3, 256)


def test_op_counts():
    model = exported(ConstArith(), torch.randn(2, 2, 2))
    assert op_counts(model) == dict(sorted(op_counts(model).items()))
    assert sum(op_counts(model).values()) == len(model.graph.node)



def test_a_dynamic_dim_lost_on_the_way_is_an_emit_error():
    model = torch.nn.Linear(4, 3).eval()
    inputs = normalize_inputs(torch.randn(1, 4))
    settings = make_settings(model, inputs, batch=(1, 4, 8), batch_dims=None, dynamic=None, out_dir=None, opset=17,
                             target="onnx", precision="fp32", passes=None, verify=True, atol=1e-4, rtol=1e-3)
    captured = capture(model, inputs, settings)
    onnx_model = cleanup(emit_onnx(as_program(captured.base.gm, captured, settings.dims)[0], captured, settings.dims,
                                      17).model).model
    check_dynamic_dims(onnx_model, captured, settings)
    out_dim = onnx_model.graph.output[0].type.tensor_type.shape.dim[0]
    out_dim.dim_value = 4  # baked in
    with pytest.raises(EmitError, match="'output' dim 0 changes with the input size but is static"):
        check_dynamic_dims(onnx_model, captured, settings)
    out_dim.dim_param = "batch"
    onnx_model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    with pytest.raises(EmitError, match="input 'input' dim 0 should be 'batch', is 4"):
        check_dynamic_dims(onnx_model, captured, settings)


def test_a_dim_cleanup_renamed_gets_its_name_back(tmp_path):
    """issue 17, class 5: shape inference or onnxsim may call a dynamic input dim 'unk__0'; it is
    still symbolic, so it gets its name back (and verification checks it serves every size)."""
    import types

    import fxtrt
    from fxtrt.backend.cleanup import restore_dim_names

    model = torch.nn.Linear(4, 2).eval()
    c = fxtrt.compile(model, torch.randn(1, 4), batch=(1, 2, 4), out_dir=tmp_path / "o")
    proto = onnx.load(str(c.onnx_path))
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == "batch":
                dim.dim_param = "unk__0"
    captured = types.SimpleNamespace(input_names=c.input_names)
    notes = restore_dim_names(proto, captured, c.settings)
    assert notes and "unk__0" in notes[0]
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", ""]
    assert [d.dim_param for d in proto.graph.output[0].type.tensor_type.shape.dim] == ["batch", ""]
    assert restore_dim_names(proto, captured, c.settings) == []
