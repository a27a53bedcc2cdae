"""tune_for_onnxruntime: the three patterns that made fxtrt's BERT slower on ONNX Runtime than
the legacy exporter's file (issue 19, item 4) are rewritten into forms ORT runs fast, with the
same values, and every dynamic dim left symbolic.

Each test first checks the premise on the file as compiled (ORT leaves torch.onnx's GELU
unfused, fuses the residual Add into SkipLayerNormalization), so a test fails without the
rewrite and says so if an ORT upgrade makes the rewrite unnecessary.
"""
from __future__ import annotations

import collections
import copy
import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import fxtrt
import fxtrt.stages.lower
from fxtrt.backend.cleanup import cleanup
from fxtrt.backend.onnxruntime import SessionLoader
from fxtrt.backend.onnxruntime.tune import tune_for_onnxruntime
from fxtrt.compare import compare_arrays

HIDDEN, HEADS = 32, 4


class PostNormBlock(torch.nn.Module):
    """A BERT layer: attention and a GELU MLP, each followed by residual Add + LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(HIDDEN, HIDDEN) for _ in range(4))
        self.up, self.down = torch.nn.Linear(HIDDEN, 2 * HIDDEN), torch.nn.Linear(2 * HIDDEN, HIDDEN)
        self.ln1, self.ln2 = torch.nn.LayerNorm(HIDDEN), torch.nn.LayerNorm(HIDDEN)

    def forward(self, x, keep):
        b, s, _ = x.shape
        q, k, v = (p(x).view(b, s, HEADS, HIDDEN // HEADS).transpose(1, 2) for p in (self.q, self.k, self.v))
        mask = keep[:, None, None, :] > 0  # BERT's padding mask
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, s, HIDDEN)
        x = self.ln1(x + self.o(a))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


def example(batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states and a padding mask (the first sequence's second half masked out)."""
    keep = torch.ones(batch, seq, dtype=torch.long)
    keep[0, seq // 2:] = 0
    return torch.randn(batch, seq, HIDDEN), keep


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    return PostNormBlock().eval()


def untuned(model, example_inputs, out_dir, **options) -> onnx.ModelProto:
    """What compile writes with the rewrites left out: the premise each test checks first."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fxtrt.stages.lower, "cleanup", functools.partial(cleanup, tune=False))
        c = fxtrt.compile(model, example_inputs, out_dir=out_dir, verify=False, **options)
    return onnx.load(str(c.onnx_path))


@pytest.fixture(scope="module")
def static_seq(block, tmp_path_factory):
    """Batch dynamic, sequence 16: where ORT fuses the residual Adds into SkipLayerNormalization."""
    return untuned(block, example(1, 16), tmp_path_factory.mktemp("s"), batch=(1, 4, 8))


@pytest.fixture(scope="module")
def dynamic_seq(block, tmp_path_factory):
    seq = ("seq", 4, 16, 32)
    return untuned(block, example(1, 16), tmp_path_factory.mktemp("d"), batch=(1, 4, 8),
                   dynamic={0: {1: seq}, 1: {1: seq}})


def ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def ort_ops(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    """The op types ONNX Runtime runs after its graph fusions."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return ops(onnx.load(options.optimized_model_filepath))


def dims(model: onnx.ModelProto) -> dict[str, list]:
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*model.graph.input, *model.graph.output)}


def assert_matches_eager(model: onnx.ModelProto, block, shapes) -> None:
    """fxtrt's rule, |a - b| <= 1e-4 + 1e-3 * |ref| elementwise, at each (batch, seq)."""
    session = SessionLoader(model, quiet=True)()
    names = [i.name for i in session.get_inputs()]
    for b, s in shapes:
        inputs = example(b, s)
        with torch.no_grad():
            want = block(*inputs).numpy()
        got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0]
        result = compare_arrays(want, got, 1e-4, 1e-3)
        assert result.passed, f"batch {b}, seq {s}: max abs err {result.max_abs:.3g}"


def test_ort_fuses_the_gelu_and_runs_no_skip_layer_norm(static_seq, tmp_path):
    before = ort_ops(static_seq, tmp_path)
    # the premise, with ORT as installed: torch.onnx's GELU stays 5 kernels, the residual Adds fuse
    assert before["SkipLayerNormalization"] == 2 and before["Erf"] == 1
    tuned = tune_for_onnxruntime(copy.deepcopy(static_seq))
    after = ort_ops(tuned.model, tmp_path)
    assert after["SkipLayerNormalization"] == 0
    assert after["Erf"] == 0 and after["Gelu"] + after["BiasGelu"] == 1  # BiasGelu when the bias Add precedes it
    assert after["LayerNormalization"] == 2
    assert after["Transpose"] == before["Transpose"] - 1  # the key is transposed once
    assert tuned.rewrites == {"gelu": 1, "key_transpose": 1, "residual_sum": 2, "global_average_pool": 0,
                              "squeeze_unit_axis": 0}


def test_the_tuned_model_matches_eager_and_keeps_the_batch_dynamic(static_seq, block):
    tuned = tune_for_onnxruntime(copy.deepcopy(static_seq)).model
    onnx.checker.check_model(tuned)
    assert dims(tuned) == dims(static_seq) and dims(tuned)["x"] == ["batch", 16, HIDDEN]
    assert_matches_eager(tuned, block, [(1, 16), (3, 16), (8, 16)])


def test_with_a_dynamic_sequence_the_key_chain_and_its_shape_ops_go(dynamic_seq, block):
    before = ops(dynamic_seq)
    tuned = tune_for_onnxruntime(copy.deepcopy(dynamic_seq))
    after = ops(tuned.model)
    assert after["Transpose"] == before["Transpose"] - 1 and after["Reshape"] == before["Reshape"] - 2
    assert after["Shape"] < before["Shape"] and after["Concat"] < before["Concat"]  # run-time shapes of the chain
    # ORT's fusion needs static dims 1 and 2, so it leaves these Adds alone: so does the rewrite
    assert tuned.rewrites == {"gelu": 1, "key_transpose": 1, "residual_sum": 0, "global_average_pool": 0,
                              "squeeze_unit_axis": 0}
    assert dims(tuned.model) == dims(dynamic_seq)
    assert dims(tuned.model)["x"] == ["batch", "seq", HIDDEN] and dims(tuned.model)["keep"] == ["batch", "seq"]
    assert_matches_eager(tuned.model, block, [(1, 4), (3, 17), (8, 32)])


def test_compile_serves_the_tuned_model_and_it_is_verified(block, static_seq, tmp_path):
    c = fxtrt.compile(block, example(1, 16), batch=(1, 4, 8), out_dir=tmp_path / "o")
    assert c.report.verified
    served = onnx.load(str(c.onnx_path))
    assert served.SerializeToString() == tune_for_onnxruntime(copy.deepcopy(static_seq)).model.SerializeToString()
    assert any(n.startswith("tuned for ONNX Runtime: gelu x1") for n in c.report.notes), c.report.notes
    x, keep = example(3, 16)
    with torch.no_grad():
        want = block(x, keep).numpy()
    assert compare_arrays(want, c(x, keep).numpy(), 1e-4, 1e-3).passed


def test_tuning_is_deterministic_and_a_second_pass_finds_nothing(static_seq):
    first = tune_for_onnxruntime(copy.deepcopy(static_seq)).model
    second = tune_for_onnxruntime(copy.deepcopy(static_seq)).model
    assert first.SerializeToString() == second.SerializeToString()
    again = tune_for_onnxruntime(first)
    assert not any(again.rewrites.values()) and again.notes == []


class SqueezeExcite(torch.nn.Module):
    """A conv stage with squeeze-and-excitation and a global pool: means over H and W."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.fc1, self.fc2 = torch.nn.Conv2d(16, 4, 1), torch.nn.Conv2d(4, 16, 1)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = F.silu(self.conv(x))
        x = x * torch.sigmoid(self.fc2(F.silu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_spatial_means_become_global_average_pools_ort_keeps_in_its_conv_layout(tmp_path):
    torch.manual_seed(0)
    model = SqueezeExcite().eval()
    compiled = untuned(model, torch.randn(1, 3, 24, 24), tmp_path / "o", batch=(1, 4, 8),
                       dynamic={0: {2: ("h", 16, 24, 32)}})
    before = ort_ops(compiled, tmp_path)
    assert before["ReduceMean"] == 2  # the premise: torch.onnx emits both means as ReduceMean
    tuned = tune_for_onnxruntime(copy.deepcopy(compiled))
    after = ort_ops(tuned.model, tmp_path)
    assert after["ReduceMean"] == 0 and after["GlobalAveragePool"] == 2
    assert after["ReorderInput"] < before["ReorderInput"]  # on x86, where ORT blocks convolutions as NCHWc
    assert tuned.rewrites["global_average_pool"] == 2
    assert dims(tuned.model) == dims(compiled) and dims(tuned.model)["x"] == ["batch", 3, "h", 24]
    session = SessionLoader(tuned.model, quiet=True)()
    for shape in [(1, 3, 16, 24), (3, 3, 29, 24), (8, 3, 32, 24)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = model(x).numpy()
        result = compare_arrays(want, session.run(None, {"x": x.numpy()})[0], 1e-4, 1e-3)
        assert result.passed, f"{shape}: max abs err {result.max_abs:.3g}"


def test_a_recurrent_layers_output_is_squeezed_not_transposed_and_reshaped(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.RNN(8, 16, num_layers=2, batch_first=True).eval()
    compiled = untuned(model, torch.randn(1, 6, 8), tmp_path / "o", batch=(1, 4, 8),
                       dynamic={0: {1: ("seq", 2, 6, 12)}})
    before = ops(compiled)
    tuned = tune_for_onnxruntime(copy.deepcopy(compiled))
    after = ops(tuned.model)
    # per layer: Y (T, 1, B, H) moved to (T, B, 1, H) and reshaped, now one Squeeze of axis 1
    assert after["Squeeze"] == before["Squeeze"] + 2 and after["Transpose"] == before["Transpose"] - 2
    assert tuned.rewrites["squeeze_unit_axis"] == 2
    assert dims(tuned.model) == dims(compiled) and dims(tuned.model)["input"] == ["batch", "seq", 8]
    session = SessionLoader(tuned.model, quiet=True)()
    for shape in [(1, 2, 8), (3, 11, 8), (8, 12, 8)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = [t.numpy() for t in model(x)]
        for w, got in zip(want, session.run(None, {"input": x.numpy()})):
            assert compare_arrays(w, got, 1e-4, 1e-3).passed, shape


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def _f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32 if isinstance(value, float) else np.int64), name)


def test_lookalikes_are_left_alone():
    """A GELU-like chain scaled by 0.6, a reshape that does not keep the last two dims, a residual
    Add that is read twice (pre-norm: ORT does not fuse it either), a mean over H alone and one
    that drops the pooled dims."""
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["not_half", "a"], ["m"]),
        helper.make_node("Mul", ["x", "m"], ["gelu_like"]),
        helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["t1", "s3"], ["r1"]), helper.make_node("Transpose", ["r1"], ["t2"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["t2", "s4"], ["not_key"]),
        helper.make_node("Add", ["y", "y"], ["res"]),
        helper.make_node("LayerNormalization", ["res", "gamma"], ["ln"], axis=-1),
        helper.make_node("Add", ["res", "ln"], ["pre_norm"]),
        helper.make_node("ReduceMean", ["x"], ["mean_h"], axes=[2], keepdims=1),
        helper.make_node("ReduceMean", ["x"], ["mean_hw_dropped"], axes=[2, 3], keepdims=0),
    ]
    inits = [_const("sqrt2", float(np.sqrt(2.0))), _const("one", 1.0), _const("not_half", 0.6),
             _const("s3", [4, 6, 5]), _const("s4", [2, 3, 4, 5]), numpy_helper.from_array(np.ones(8, np.float32), "gamma")]
    model = _model(nodes, [_f32("x", [2, 3, 4, 5]), _f32("y", ["b", 4, 8])],
                   [_f32(n, None) for n in ("gelu_like", "not_key", "pre_norm", "mean_h", "mean_hw_dropped")], inits)
    before = model.SerializeToString()
    tuned = tune_for_onnxruntime(model)
    assert not any(tuned.rewrites.values())
    assert model.SerializeToString() == before


def test_an_unknown_rewrite_is_refused():
    with pytest.raises(ValueError, match="unknown rewrite"):
        tune_for_onnxruntime(onnx.ModelProto(), rewrites=["fuse_everything"])
