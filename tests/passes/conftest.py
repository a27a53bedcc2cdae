from __future__ import annotations

import dataclasses

import pytest
import torch

from fxtrt.frontend.capture import capture
from fxtrt.passes import PassContext, PassManager, resolve
from fxtrt.settings import make_settings, normalize_inputs


def trace(model, example, *, batch=(1, 8, 32), batch_dims=None, dynamic=None):
    """The base trace and a PassContext, as compile() hands them to the passes."""
    inputs = normalize_inputs(example)
    settings = make_settings(model, inputs, batch=batch, batch_dims=batch_dims, dynamic=dynamic, out_dir=None,
                             opset=17, target="onnx", precision="fp32", passes=None, verify=True,
                             atol=1e-4, rtol=1e-3)
    captured = capture(model.eval(), inputs, settings)
    # as compile() does: the dims as captured (dims torch.export proves equal are one)
    return captured.base.gm, PassContext(dataclasses.replace(settings, dims=captured.declared), captured)


def run_with_requirements(gm, ctx, name):
    """Pass ``name`` under the pass manager, after the passes it requires (as compile orders
    them): its PassResult. The graph is rewritten in place, as by compile."""
    results = []
    PassManager(resolve([name]), observers=[results.append]).run(gm, ctx)
    return results[-1].result


@pytest.fixture
def traced():
    return trace


def assert_same(gm, model, *inputs):
    """The rewritten GraphModule still computes what the model computes, at these inputs."""
    with torch.no_grad():
        want = model(*inputs)
        got = gm(*inputs)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), atol=1e-5, rtol=1e-4)
