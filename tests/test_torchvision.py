"""Real torchvision models (random weights), compiled from example batch 1.

compile()'s own verification runs each model against eager at batches 1, 3, 8 and 32 with
Polygraphy; the tests check that it did, and check one more size independently through
``compiled(...)``. Image sizes are reduced where the architecture allows, to keep the suite fast;
vit_b_16 runs in the fidelity benchmark (``python -m benchmarks.fidelity --models tv/vit_b_16``).
"""
from __future__ import annotations

import onnx
import pytest
import torch
import torchvision

import fxtrt

MODELS = {
    "resnet50": 64,
    "mobilenet_v3_small": 64,
    "shufflenet_v2_x0_5": 64,
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"image_size": MODELS[name]} if name.startswith("vit") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    # torchvision zero-initialises ViT's head: every output would be the bias and any export "matches".
    for p in model.parameters():
        if p.dim() and not p.abs().sum():
            torch.nn.init.normal_(p, std=0.02)
    return model


@pytest.fixture(scope="module", params=list(MODELS))
def compiled(request, tmp_path_factory):
    name = request.param
    model = build(name)
    size = MODELS[name]
    out = tmp_path_factory.mktemp(name) / "out"
    return name, model, size, fxtrt.compile(model, torch.randn(1, 3, size, size), batch=(1, 8, 32), out_dir=out)


def test_verified_against_eager_at_1_3_8_32(compiled):
    name, model, size, c = compiled
    rows = c.report.verification
    assert sorted(r.sizes["batch"] for r in rows) == [1, 3, 8, 32]
    assert all(r.passed for r in rows), c.report.to_text()
    assert all(r.shape == (r.sizes["batch"], 1000) for r in rows)


def test_onnx_batch_is_symbolic(compiled):
    _, _, _, c = compiled
    graph = onnx.load(str(c.onnx_path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_independent_run_at_batch_5(compiled):
    _, model, size, c = compiled
    x = torch.randn(5, 3, size, size)
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(c(x), want, atol=1e-4, rtol=1e-3)


def test_no_shape_or_gather_in_resnet_and_shufflenet(compiled):
    name, _, _, c = compiled
    ops = {n.op_type for n in onnx.load(str(c.onnx_path)).graph.node}
    if name in ("resnet50", "shufflenet_v2_x0_5"):
        assert not ops & {"Shape", "Gather"}, sorted(ops)
