"""The check itself: our elementwise rule, our CPU torch runner, Polygraphy's Comparator."""
import numpy as np
import pytest
import torch
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

from fxtrt.backend.graph_inputs import input_metadata
from fxtrt.backend.torch import TorchRunner
from fxtrt.backend.verify import raise_on_failure, run_comparison
from fxtrt.errors import VerificationError


@pytest.fixture
def linear_onnx(tmp_path):
    model = torch.nn.Linear(4, 3).eval()
    path = tmp_path / "m.onnx"
    program = torch.onnx.export(model, (torch.randn(2, 4),), dynamo=True, input_names=["x"],
                                output_names=["output"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(str(path))
    return model, path


def feeds(*batches):
    return [({"batch": b}, {"x": np.random.RandomState(b).randn(b, 4).astype(np.float32)}) for b in batches]


def test_comparator_passes_the_matching_model(linear_onnx):
    model, path = linear_onnx
    torch_runner = TorchRunner(model, ["x"], [torch.float32], ["output"], input_metadata(path))
    ort_runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]))
    rows = run_comparison([torch_runner, ort_runner], feeds(1, 5), 1e-4, 1e-3)
    assert [r.sizes["batch"] for r in rows] == [1, 5] and all(r.passed for r in rows)
    raise_on_failure(rows, 1e-4, 1e-3)


def test_comparator_catches_a_wrong_model(linear_onnx):
    model, path = linear_onnx
    other = torch.nn.Linear(4, 3).eval()  # different weights
    torch_runner = TorchRunner(other, ["x"], [torch.float32], ["output"], input_metadata(path))
    ort_runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]))
    rows = run_comparison([torch_runner, ort_runner], feeds(2), 1e-4, 1e-3)
    assert not rows[0].passed and rows[0].max_abs > 1e-3
    with pytest.raises(VerificationError, match="does not match") as info:
        raise_on_failure(rows, 1e-4, 1e-3)
    assert info.value.rows == rows


class Counting(torch.nn.Module):
    """A Linear that counts its eager calls."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_the_reference_runs_each_feed_once_for_every_artifact_it_checks(linear_onnx):
    from fxtrt.artifacts import OnnxModel
    from fxtrt.backend.verify import ReferenceRunner, verify
    from fxtrt.compare import Tolerance
    from fxtrt.settings import DynamicDim

    model, path = linear_onnx
    batch = DynamicDim("batch", 1, 4, 8, ((0, 0),), 1)
    counting = Counting(model)
    reference = ReferenceRunner(counting, (torch.randn(1, 4),), (batch,), ["x"], ["output"])
    points = [{"batch": 1}, {"batch": 5}]
    fp32 = OnnxModel(path, ["x"], ["output"], dims=(batch,), tolerance=Tolerance(1e-4, 1e-3))
    twin = OnnxModel(path, ["x"], ["output"], dims=(batch,), tolerance=Tolerance(1e-2, 1e-2, "fp16 (atol=0.01)"),
                     name="onnxruntime-fp16")
    first = verify(fp32, reference, points, fp32.tolerance)
    second = verify(twin, reference, points, twin.tolerance)
    assert counting.calls == reference.runs == 2, "one eager run per size, whatever checks it"
    assert [r.passed for r in first + second] == [True] * 4
    assert [r.note for r in first] == ["", ""] and [r.note for r in second] == ["fp16 (atol=0.01)"] * 2
    assert [f["x"].shape for _, f in reference.feeds(points)] == [(1, 4), (5, 4)]
    (out,) = reference.outputs(reference.feeds([{"batch": 5}]))
    assert counting.calls == 2 and out["output"].shape == (5, 3)


def test_with_several_runners_the_note_names_the_part_and_the_runner(linear_onnx):
    """An engine's rows read "model.engine: tensorrt vs torch"; here two ONNX Runtime sessions stand in."""
    from polygraphy.backend.onnxrt import OnnxrtRunner as Runner

    from fxtrt.artifacts import OnnxModel
    from fxtrt.backend.verify import ReferenceRunner, verify
    from fxtrt.compare import Tolerance
    from fxtrt.settings import DynamicDim

    class TwoSessions(OnnxModel):
        def describe(self, sizes):
            return "m.onnx"

        def verify_runners(self):
            return [self.runner(), Runner(SessionFromOnnx(str(self.path), providers=["CPUExecutionProvider"]),
                                          name="second")]

    model, path = linear_onnx
    batch = DynamicDim("batch", 1, 4, 8, ((0, 0),), 1)
    reference = ReferenceRunner(model, (torch.randn(1, 4),), (batch,), ["x"], ["output"])
    part = TwoSessions(path, ["x"], ["output"], dims=(batch,), tolerance=Tolerance(1e-4, 1e-3))
    rows = verify(part, reference, [{"batch": 2}, {"batch": 9}], part.tolerance)  # 9: outside, not checked
    assert [r.note for r in rows] == ["m.onnx: onnxruntime vs torch", "m.onnx: second vs torch"]


# -- the float64 rule: round-off is told from a wrong export (issue 17, class 8) ---------------

def test_roundoff_verdict_accepts_the_artifact_as_close_to_float64_as_eager_and_refuses_more():
    from fxtrt.compare import roundoff_verdict

    ref64 = np.linspace(-400, 400, 101)
    eager = (ref64 + 0.01).astype(np.float32)
    assert roundoff_verdict(eager, (ref64 - 0.015).astype(np.float32), ref64, 1e-4)[0]
    ok, note = roundoff_verdict(eager, (ref64 + 0.05).astype(np.float32), ref64, 1e-4)
    assert not ok and "float64 rule" in note


def test_eager_in_another_accumulation_order_widens_the_float64_rule():
    """timm maxvit_large at batch 3: eager float32 is 0.0069 from float64 on one thread and 0.055
    on two, so an artifact at 0.031 is round-off; judged on the one order alone it looked wrong."""
    from fxtrt.compare import roundoff_verdict

    ref64 = np.linspace(-1, 1, 101)
    one_thread = (ref64 + 0.0069).astype(np.float32)
    two_threads = (ref64 - 0.055).astype(np.float32)
    artifact = (ref64 + 0.031).astype(np.float32)
    assert not roundoff_verdict(one_thread, artifact, ref64, 1e-5)[0]
    ok, note = roundoff_verdict(one_thread, artifact, ref64, 1e-5, [two_threads])
    assert ok and "over 2 accumulation orders" in note
    assert not roundoff_verdict(one_thread, (ref64 + 0.2).astype(np.float32), ref64, 1e-5, [two_threads])[0]


def test_the_other_order_runs_on_another_thread_count_and_restores_it():
    from fxtrt.backend.verify import ReferenceRunner
    from fxtrt.compare import other_thread_count

    threads = torch.get_num_threads()
    with other_thread_count():
        assert torch.get_num_threads() == (1 if threads > 1 else 2)
    assert torch.get_num_threads() == threads
    model = torch.nn.Linear(4, 3).eval()
    x = torch.randn(2, 4)
    reference = ReferenceRunner(model, [x], [], ["x"], ["y"])
    again = reference.float32_other_order({"x": x.numpy()})
    assert torch.get_num_threads() == threads
    np.testing.assert_allclose(again["y"], model(x).detach().numpy(), rtol=1e-6)


def test_a_real_one_op_error_of_round_off_size_is_still_caught():
    """Outputs of about +-100 shifted by 0.02 at one op: per element that fails near zero, and eager
    float32 is 1000x closer to float64 than that, so the float64 rule refuses it too."""
    import fxtrt

    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(64, 64)
            with torch.no_grad():
                self.lin.weight.mul_(60.0)

        def forward(self, x):
            return self.lin(x)  # values of about +-100, many near zero

    def bump(gm, ctx):
        (out,) = [n for n in gm.graph.nodes if n.op == "output"]
        value = out.args[0][0]
        with gm.graph.inserting_after(value):
            shifted = gm.graph.call_function(torch.ops.aten.add.Tensor, (value, 0.02))
        shifted.meta = dict(value.meta)
        out.args = ((shifted,),)
        gm.recompile()
        return fxtrt.PassResult(gm, [])

    model = Wide().eval()
    with pytest.raises(fxtrt.VerificationError) as info:
        fxtrt.compile(model, torch.randn(1, 64), batch=(1, 2, 4), passes=["fix_dtypes", bump])
    assert any("float64 rule" in r.note and "above" in r.note for r in info.value.rows)


@pytest.mark.slow
def test_saturated_attention_with_large_logits_passes_by_the_float64_rule():
    """timm visformer_tiny with random weights: its float32 results, eager's too, are off by
    round-off that the per-element rule refuses; the artifact is as close to float64 as eager."""
    timm = pytest.importorskip("timm")
    import fxtrt

    torch.manual_seed(0)
    model = timm.create_model("visformer_tiny", pretrained=False).eval()
    c = fxtrt.compile(model, torch.randn(1, 3, 224, 224), batch=(1, 2, 3))
    assert c.report.verified
    decided = [r for r in c.report.verification if "float64 rule" in r.note]
    assert decided and all("within" in r.note for r in decided)
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        want = model(x)
    assert (c(x) - want).abs().max() <= 1e-4 + 1e-3 * want.abs().max()


class _Convs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))

    def forward(self, x):
        return self.body(x).mean((2, 3))


def test_verification_reports_its_time_and_its_measured_floor(tmp_path):
    """report.stages["verify"]: the whole of verification and its floor (each eager run, each
    ONNX Runtime run, each session opened), timed in the same run; one eager run per size."""
    import fxtrt

    compiled = fxtrt.compile(_Convs().eval(), torch.randn(2, 3, 16, 16), batch=(1, 4, 8), out_dir=tmp_path / "out")
    timing = compiled.report.stages["verify"]
    sizes = {tuple(sorted(r.sizes.items())) for r in compiled.report.verification}
    assert timing["eager_runs"] == timing["runtime_runs"] == len(sizes) >= 3
    assert 0 < timing["eager_seconds"] and 0 < timing["runtime_seconds"] and 0 < timing["session_seconds"]
    assert timing["floor_seconds"] == pytest.approx(
        timing["eager_seconds"] + timing["runtime_seconds"] + timing["session_seconds"], abs=2e-3)
    assert timing["floor_seconds"] <= timing["seconds"] <= compiled.report.timings["verify"] + 1e-3


def test_a_second_artifact_reuses_every_eager_run(tmp_path):
    """fp16's verification compares with the same reference: no eager call is made twice."""
    import fxtrt

    compiled = fxtrt.compile(_Convs().eval(), torch.randn(2, 3, 16, 16), batch=(1, 4, 8), precision="fp16",
                             out_dir=tmp_path / "out")
    timing = compiled.report.stages["verify"]
    sizes = {tuple(sorted(r.sizes.items())) for r in compiled.report.verification}
    assert timing["eager_runs"] == len(sizes)
    assert timing["runtime_runs"] == 2 * len(sizes)  # the fp32 model's and the fp16 model's
