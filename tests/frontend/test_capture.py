from pathlib import Path

import pytest
import torch

from fxtrt.errors import CaptureError
from fxtrt.frontend.capture import capture
from fxtrt.frontend.source import source_of
from fxtrt.settings import make_settings
from tests import seed_models as sm

SEED_FILE = str(Path(sm.__file__).resolve())


def settings_for(model, inputs, **kw):
    args = dict(batch=(1, 8, 32), batch_dims=None, dynamic=None, out_dir=None, opset=17, target="onnx",
                precision="fp32", passes=None, verify=True, atol=1e-4, rtol=1e-3)
    args.update(kw)
    return make_settings(model, inputs, **args)


def test_two_traces_at_sizes_other_than_the_example():
    model = sm.IntSizeView()
    x = torch.randn(1, 3, 16, 16)
    cg = capture(model, (x,), settings_for(model, (x,)))
    assert [c.sizes for c in cg.captures] == [{"batch": 2}, {"batch": 3}]
    assert [c.inputs[0].shape[0] for c in cg.captures] == [2, 3]
    assert cg.input_names == ("x",) and cg.output_names == ("output",)


def test_flat_module_runs_and_keeps_source_lines():
    model = sm.IntSizeView().eval()
    x = torch.randn(1, 3, 16, 16)
    cg = capture(model, (x,), settings_for(model, (x,)))
    gm = cg.base.gm
    (out,) = gm(cg.base.inputs[0])
    torch.testing.assert_close(out, model(cg.base.inputs[0]))
    view = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.view.default)
    assert source_of(view) == f"{SEED_FILE}:{sm.line_of(sm.IntSizeView, 'int-view')}"
    assert not any(n.op == "call_module" for n in gm.graph.nodes), "export's guard function is dropped"


def test_library_frames_are_skipped_for_the_users_line():
    model = sm.IntSizeView().eval()
    x = torch.randn(1, 3, 16, 16)
    gm = capture(model, (x,), settings_for(model, (x,))).base.gm
    linear = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default)
    assert source_of(linear).startswith(SEED_FILE), "nn.Linear's own frame is not the user's line"


def test_train_mode_is_noted_and_restored():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout()).train()
    x = torch.randn(1, 3)
    cg = capture(model, (x,), settings_for(model, (x,)))
    assert model.training and any("train mode" in n for n in cg.notes)


def test_model_failing_at_another_batch_is_a_capture_error_at_its_line():
    class OnlyBatchOne(torch.nn.Module):
        def forward(self, x):
            return x.view(1, 3)  # only valid at batch 1

    x = torch.randn(1, 3)
    with pytest.raises(CaptureError) as info:
        capture(OnlyBatchOne(), (x,), settings_for(OnlyBatchOne(), (x,)))
    assert info.value.source is not None and info.value.source.endswith(".py:" + str(
        OnlyBatchOne.forward.__code__.co_firstlineno + 1))


# --- symbolic-first capture ---------------------------------------------------------------

from fxtrt.errors import ConfigError  # noqa: E402
from fxtrt.frontend.capture import SYMBOLIC, TRACE_DIFF  # noqa: E402

TOOLCHAIN = ("/torch/", "/onnx/", "/onnxscript/", "/fxtrt/")


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        y = self.conv(x)
        return self.pool(y).flatten(1), y.flatten(2)


class PositionTable(torch.nn.Module):
    """BERT's limit in miniature: 16 learned positions."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = torch.nn.Parameter(torch.randn(16, 4))

    def forward(self, x):
        return x + self.pos[: x.shape[1]]  # LIMIT


class StridedAdd(torch.nn.Module):
    """A stride-2 conv whose output torch assumes is never 1 long (the 0/1 rule)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = torch.nn.Conv1d(4, 4, 3, stride=2)
        self.mix = torch.nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.down(x)
        return y + self.mix(y)


def _line(cls, tag):
    import inspect

    lines, start = inspect.getsourcelines(cls)
    return start + next(i for i, t in enumerate(lines) if f"# {tag}" in t)


def test_a_clean_model_is_one_symbolic_capture_over_every_dim():
    model = ConvNet().eval()
    x = torch.randn(1, 3, 64, 64)
    cg = capture(model, (x,), settings_for(model, (x,), dynamic={0: {2: (32, 64, 96), 3: (32, 64, 96)}}))
    assert cg.exports == 1 and len(cg.captures) == 1 and not cg.checks and cg.symbolic
    assert {d.how for d in cg.dims.values()} == {SYMBOLIC}
    assert cg.dims["x_dim2"].low == 32 and cg.dims["x_dim2"].high == 96
    assert cg.program is not None


def test_only_the_baked_dim_is_diffed_and_checked_at_a_held_out_size():
    model = sm.IntSizeView().eval()
    x = torch.randn(1, 3, 16, 16)
    cg = capture(model, (x,), settings_for(model, (x,)))
    assert cg.baked == ["batch"] and cg.dims["batch"].how == TRACE_DIFF
    fit = {c.sizes["batch"] for c in cg.captures}
    (check,) = cg.checks
    assert check.sizes["batch"] not in fit and 1 not in fit
    assert cg.dims["batch"].why, "the report says which guard baked it"


def test_a_limit_the_model_sets_is_a_config_error_at_its_line():
    model = PositionTable().eval()
    x = torch.randn(1, 8, 4)
    with pytest.raises(ConfigError, match=r"works only for 4\.\.16") as info:
        capture(model, (x,), settings_for(model, (x,), dynamic={0: {1: (4, 8, 64)}}))
    assert info.value.source is not None
    assert info.value.source.endswith(f"test_capture.py:{_line(PositionTable, 'LIMIT')}")


def test_the_zero_one_rule_traces_from_above_and_serves_from_min():
    model = StridedAdd().eval()
    x = torch.randn(1, 4, 40)
    cg = capture(model, (x,), settings_for(model, (x,), batch=(1, 2, 4), dynamic={0: {2: (4, 40, 80)}}))
    assert cg.dims["x_dim2"].how == SYMBOLIC and cg.dims["x_dim2"].low > 4
    assert any("only from" in n for n in cg.notes)


def test_sources_are_never_toolchain_files():
    class ReadsInput(torch.nn.Module):
        def forward(self, x):
            return x.new_zeros(int(x[0, 0].item()) + 1)

    for model, x, kw in [(PositionTable().eval(), torch.randn(1, 8, 4), {"dynamic": {0: {1: (4, 8, 64)}}}),
                         (ReadsInput(), torch.ones(1, 3), {})]:
        with pytest.raises(Exception) as info:
            capture(model, (x,), settings_for(model, (x,), **kw))
        source = getattr(info.value, "source", None)
        assert source is None or not any(t in source for t in TOOLCHAIN), source
