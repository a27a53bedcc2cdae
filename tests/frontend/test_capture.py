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
