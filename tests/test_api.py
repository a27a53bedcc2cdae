"""compile() end to end on the seed's failure patterns, with real torch / onnx / ORT / Polygraphy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import fxtrt
from tests import seed_models as sm

SEED_FILE = str(Path(sm.__file__).resolve())
SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat"}


def ops(compiled) -> set[str]:
    return {n.op_type for n in onnx.load(str(compiled.onnx_path)).graph.node}


def dims(compiled) -> dict[str, list]:
    model = onnx.load(str(compiled.onnx_path))
    return {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in [*model.graph.input, *model.graph.output]}


def assert_matches_eager(model, compiled, inputs, atol=1e-4, rtol=1e-3):
    with torch.no_grad():
        ref = model(*inputs)
    refs = ref if isinstance(ref, tuple) else (ref,)
    outs = compiled.run(*inputs)
    assert len(outs) == len(refs)
    for r, o in zip(refs, outs):
        assert tuple(o.shape) == tuple(r.shape)
        np.testing.assert_allclose(o.astype(np.float64), r.double().numpy(), atol=atol, rtol=rtol)


def verified_batches(compiled) -> set[int]:
    return {r.sizes["batch"] for r in compiled.report.verification if r.passed}


@pytest.fixture(scope="module")
def int_view(tmp_path_factory):
    model = sm.IntSizeView().eval()
    out = tmp_path_factory.mktemp("int_view") / "out"
    return model, fxtrt.compile(model, torch.randn(1, 3, 16, 16), batch=(1, 8, 32), out_dir=out)


def test_int_size_view_becomes_dynamic(int_view):
    model, compiled = int_view
    assert dims(compiled)["x"][0] == "batch" and dims(compiled)["output"][0] == "batch"
    assert verified_batches(compiled) == {1, 3, 8, 32}
    for b in (1, 3, 8, 32, 5):
        assert_matches_eager(model, compiled, (torch.randn(b, 3, 16, 16),))


def test_int_size_view_change_names_the_user_line(int_view):
    _, compiled = int_view
    changes = [c for p in compiled.report.passes if p.name == "generalize_batch" for c in p.changes]
    assert changes, "the baked batch must be reported"
    assert changes[0].source == f"{SEED_FILE}:{sm.line_of(sm.IntSizeView, 'int-view')}"
    assert "[2, -1]" in changes[0].before and "batch" in changes[0].after


def test_artifacts_and_report_json(int_view):
    _, compiled = int_view
    out = compiled.onnx_path.parent
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json"]
    data = json.loads((out / "report.json").read_text())
    assert data == json.loads(json.dumps(compiled.report.to_dict()))
    assert data["verified"] is True
    assert {r["sizes"]["batch"] for r in data["verification"]} == {1, 3, 8, 32}
    assert set(data["timings_s"]) == {"capture", "passes", "emit", "cleanup", "verify"}
    assert "verification:" in compiled.report.to_text()


@pytest.mark.parametrize("cls", [sm.IntSizeView, sm.SizeView])
def test_flatten_leaves_no_shape_chain(cls):
    compiled = fxtrt.compile(cls().eval(), torch.randn(1, 3, 16, 16), batch=(1, 4, 8))
    assert not ops(compiled) & SHAPE_OPS, ops(compiled)
    assert ops(compiled) >= {"Reshape"}


def test_reshape_unsqueeze_pattern():
    model = sm.ReshapeUnsqueeze().eval()
    compiled = fxtrt.compile(model, torch.randn(1, 3, 8, 8), batch=(1, 8, 32))
    assert not ops(compiled) & SHAPE_OPS
    assert_matches_eager(model, compiled, (torch.randn(13, 3, 8, 8),))


def test_bool_mask_becomes_float():
    model = sm.BoolMask().eval()
    tokens = torch.tensor([[1, 2, 3, 2, 0, 5]])
    compiled = fxtrt.compile(model, tokens, batch=(1, 8, 32))
    changes = [c for p in compiled.report.passes if p.name == "fix_dtypes" for c in p.changes]
    assert any("bool" in c.before and "float32" in c.after for c in changes)
    assert changes[0].source.endswith(f"seed_models.py:{sm.line_of(sm.BoolMask, 'bool-mask') + 1}")
    assert_matches_eager(model, compiled, (tokens.repeat(5, 1),))


def test_float64_buffer_becomes_float32():
    model = sm.Float64Buffer().eval()
    compiled = fxtrt.compile(model, torch.randn(1, 12), batch=(1, 8, 32))
    graph = onnx.load(str(compiled.onnx_path)).graph
    assert all(t.data_type != onnx.TensorProto.DOUBLE for t in graph.initializer)
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert_matches_eager(model, compiled, (torch.randn(7, 12),))


def test_layernorm_block_at_opset_17():
    model = sm.TransformerBlock().eval()
    compiled = fxtrt.compile(model, torch.randn(1, 6, 32), batch=(1, 8, 32))
    assert "LayerNormalization" in ops(compiled)
    assert onnx.load(str(compiled.onnx_path)).opset_import[0].version == 17
    assert not any("LayerNorm" in n for n in compiled.report.notes)


def test_layernorm_below_opset_17_is_decomposed_and_reported():
    model = sm.TransformerBlock().eval()
    compiled = fxtrt.compile(model, torch.randn(1, 6, 32), batch=(1, 4, 8), opset=16)
    assert "LayerNormalization" not in ops(compiled)
    assert any("LayerNorm" in n and "opset" in n for n in compiled.report.notes)
    assert_matches_eager(model, compiled, (torch.randn(3, 6, 32),))


def test_seq_first_attention_batch_on_dim_1():
    model = sm.SeqFirstAttention().eval()
    compiled = fxtrt.compile(model, torch.randn(5, 1, 32), batch=(1, 8, 32), batch_dims=(1,))
    assert dims(compiled)["x"] == [5, "batch", 32]
    assert verified_batches(compiled) == {1, 3, 8, 32}
    afters = [c.after for p in compiled.report.passes if p.name == "generalize_batch" for c in p.changes]
    assert any("4*batch" in a for a in afters), "B*heads inside the attention must become 4*batch"
    assert_matches_eager(model, compiled, (torch.randn(5, 6, 32),))


def test_seq_first_gru_two_inputs_batch_on_dim_1():
    model = sm.SeqFirstGRU().eval()
    compiled = fxtrt.compile(model, (torch.randn(7, 1, 16), torch.randn(2, 1, 32)), batch=(1, 4, 16),
                             batch_dims=(1, 1))
    d = dims(compiled)
    assert d["x"][1] == "batch" and d["h0"][1] == "batch"
    assert_matches_eager(model, compiled, (torch.randn(7, 5, 16), torch.randn(2, 5, 32)))


def test_speech_encoder_dynamic_batch_and_time():
    model = sm.SpeechEncoder().eval()
    x, mask = torch.randn(1, 30, 80), torch.ones(1, 1, 30)
    mask[..., 25:] = 0
    compiled = fxtrt.compile(model, (x, mask), batch=(1, 2, 4),
                             dynamic={0: {1: (20, 50, 100)}, 1: {2: (20, 50, 100)}})
    d = dims(compiled)
    t_name = d["x"][1]
    assert d["x"][0] == "batch" and isinstance(t_name, str) and d["mask"] == ["batch", 1, t_name]
    seen = {(r.sizes["batch"], r.sizes[t_name]) for r in compiled.report.verification}
    assert {(1, 20), (4, 100), (4, 20), (1, 100)} <= seen
    assert_matches_eager(model, compiled, (x.repeat(3, 3, 1)[:, :77], mask.repeat(3, 1, 3)[..., :77]))


def test_structure_depending_on_a_non_batch_dim_is_refused_with_source_line(tmp_path):
    # A loop over the batch falls back to a bucket set (tests/test_buckets_api.py); over another
    # dynamic dim there is nothing to fall back to.
    out = tmp_path / "out"
    with pytest.raises(fxtrt.StructureError) as info:
        fxtrt.compile(sm.PerStepLoop(), torch.randn(1, 4, 8), batch=None, dynamic={0: {1: (2, 4, 8)}}, out_dir=out)
    assert info.value.source == f"{SEED_FILE}:{sm.line_of(sm.PerStepLoop, 'step-loop')}"
    assert "structure depends on the size of 'x_dim1'" in str(info.value)
    assert not out.exists()


def test_value_dependent_shapes_are_refused_with_source_line():
    with pytest.raises(fxtrt.GeneralizationError) as info:
        fxtrt.compile(sm.ValueDependent(), (torch.randn(1, 8), torch.tensor([3])), batch=(1, 8, 32))
    assert info.value.source == f"{SEED_FILE}:{sm.line_of(sm.ValueDependent, 'tolist')}"


def test_static_model_with_batch_none():
    model = sm.IntSizeView().eval()
    compiled = fxtrt.compile(model, torch.randn(2, 3, 16, 16), batch=None)
    assert dims(compiled)["x"] == [2, 3, 16, 16]
    assert [r.sizes for r in compiled.report.verification] == [{}]


def test_train_mode_model_is_compiled_in_eval_mode_and_restored():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(4)).train()
    compiled = fxtrt.compile(model, torch.randn(1, 4), batch=(1, 4, 8))
    assert model.training, "the user's model must be left in the mode it came in"
    assert any("train mode" in n for n in compiled.report.notes)
    assert compiled.report.verified


def test_structured_outputs_come_back_in_the_same_structure():
    class DictOut(torch.nn.Module):
        def forward(self, x):
            return {"double": x * 2, "pair": (x + 1, x.sum(1))}

    model = DictOut()
    compiled = fxtrt.compile(model, torch.randn(1, 3), batch=(1, 4, 8))
    x = torch.randn(5, 3)
    got, want = compiled(x), model(x)
    assert set(got) == {"double", "pair"} and isinstance(got["pair"], tuple)
    torch.testing.assert_close(got["pair"][1], want["pair"][1])
    assert isinstance(compiled.run(x)[0], np.ndarray)


def test_same_model_and_options_give_the_same_onnx_bytes(tmp_path):
    model = sm.SizeView().eval()
    x = torch.randn(1, 3, 16, 16)
    a = fxtrt.compile(model, x, batch=(1, 4, 8), out_dir=tmp_path / "a", verify=False)
    b = fxtrt.compile(model, x, batch=(1, 4, 8), out_dir=tmp_path / "b", verify=False)
    assert a.onnx_path.read_bytes() == b.onnx_path.read_bytes()


def test_verification_failure_raises_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(fxtrt.VerificationError) as info:
        fxtrt.compile(sm.TransformerBlock().eval(), torch.randn(1, 6, 32), batch=(1, 2, 4), out_dir=out,
                      atol=0.0, rtol=0.0)
    assert info.value.rows and not all(r.passed for r in info.value.rows)
    assert "max_abs" in str(info.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fxtrt")]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model="not a module"), "torch.nn.Module"),
        (dict(example_inputs=[1, 2]), "example_inputs"),
        (dict(example_inputs={"x": torch.randn(1, 3)}), "'x' is not a parameter of Linear.forward"),
        (dict(example_inputs=(torch.randn(1, 3), 2)), "must be tensors"),
        (dict(batch_dims=(4,)), "out of range"),
        (dict(batch=(8, 4, 2)), "min <= opt <= max"),
        (dict(batch=(0, 1, 2)), "min must be >= 1"),
        (dict(opset=7), "opset"),
        (dict(target="tflite"), "target"),
        (dict(passes=["no_such_pass"]), "unknown pass"),
        (dict(out_dir="/proc/fxtrt-cannot-write-here"), "not writable"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, kwargs, message):
    args = dict(model=torch.nn.Linear(3, 2), example_inputs=torch.randn(1, 3), out_dir=tmp_path / "out")
    args.update(kwargs)
    with pytest.raises(fxtrt.ConfigError, match=message):
        fxtrt.compile(args.pop("model"), args.pop("example_inputs"), **args)
    assert list(tmp_path.iterdir()) == [], "a refused compile leaves nothing in out_dir's parent"


def test_onnx_export_helper(tmp_path):
    model = sm.SizeView().eval()
    path = fxtrt.onnx_export(model, tmp_path / "m.onnx", input=torch.randn(1, 3, 16, 16))
    assert path == tmp_path / "m.onnx" and path.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_same_bytes_for_a_model_with_subgraphs_whatever_ran_before_in_the_process(tmp_path):
    """torch numbers every GraphModule it compiles in the process (``<eval_with_key>.N``), and
    that number reached the stack traces of If-branch nodes: compiling anything in between made
    the bytes differ."""
    from tests.backend.test_higher_order import CondOnValue

    def model():
        torch.manual_seed(0)
        return CondOnValue().eval()

    x = torch.randn(2, 4)
    a = fxtrt.compile(model(), x, batch=(1, 2, 4), out_dir=tmp_path / "a", verify=False)
    fxtrt.compile(sm.SizeView().eval(), torch.randn(1, 3, 16, 16), batch=(1, 2, 4), out_dir=tmp_path / "c",
                  verify=False)
    b = fxtrt.compile(model(), x, batch=(1, 2, 4), out_dir=tmp_path / "b", verify=False)
    assert a.onnx_path.read_bytes() == b.onnx_path.read_bytes()
