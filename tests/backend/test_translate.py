"""The private translation path (decompose once, registry built once) gives the same ONNX bytes as
the public ``torch.onnx.export(ep)`` on the fidelity benchmark's quick set.

Every torch upgrade runs this: if torch.onnx's internals change what they produce, the two paths
differ here before any user sees it.
"""
from __future__ import annotations

import hashlib

import pytest
import torch

from benchmarks.corpus import select_specs
from benchmarks.model_prep import make_inputs, prepare_model
from fxtrt.backend.emit import layer_norm_decompositions
from fxtrt.backend.recurrent import TRANSLATIONS
from fxtrt.backend.translate import private_path_available, translate
from fxtrt.frontend.bind import bind, resolve_dims
from fxtrt.frontend.capture import capture
from fxtrt.frontend.program import exported
from fxtrt.passes import PassContext, PassManager, resolve
from fxtrt.settings import DEFAULT_BATCH, make_settings

QUICK = select_specs(quick=True)


def captured_for(spec):
    """The quick-set model ``spec`` captured as compile captures it, and the passes' context."""
    model = prepare_model(spec, 0).module
    example = make_inputs(spec, spec.example_case, 0)
    model, inputs, binding = bind(model, example, None)
    dynamic = {i: {d: (dyn.name, *dyn.range) for d, dyn in per.items()} for i, per in spec.dynamic.items()} or None
    batch_dims, dynamic = resolve_dims(binding, inputs, spec.batch_range or DEFAULT_BATCH, list(spec.batch_dims),
                                       dynamic, None)
    settings = make_settings(model, inputs, batch=spec.batch_range or DEFAULT_BATCH, batch_dims=batch_dims,
                             dynamic=dynamic, out_dir=None, opset=17, target="onnx", precision="fp32", passes=None,
                             verify=False, atol=1e-4, rtol=1e-3, input_names=binding.names)
    captured = capture(model, inputs, settings)
    return captured, PassContext(settings, captured)


def emitted_program(spec):
    """What compile hands emission for ``spec``: the quick-set model captured, its passes run, as a program."""
    captured, ctx = captured_for(spec)
    run = PassManager(resolve(ctx.settings.passes)).run(captured.base.gm, ctx)
    program, _ = exported(run.gm, run.captured, captured.declared)
    return program, run.captured


def digest(ep, captured, public: bool) -> str:
    proto = translate(ep, opset=18, input_names=captured.input_names, output_names=captured.output_names,
                      custom=TRANSLATIONS, extra_decompositions={}, public=public)
    return hashlib.sha256(proto.SerializeToString()).hexdigest()


def test_the_pinned_torch_has_the_private_path():
    assert private_path_available(), "torch.onnx's internals moved: fxtrt falls back to the slower public path"


@pytest.mark.parametrize("spec", QUICK, ids=[s.name for s in QUICK])
def test_private_and_public_paths_give_the_same_bytes(spec):
    ep, captured = emitted_program(spec)
    assert digest(ep, captured, public=False) == digest(ep, captured, public=True)


def test_a_layer_norm_below_opset_17_is_decomposed_in_the_one_retrace():
    """The extra table joins torch.onnx's: no LayerNormalization node, one decomposition."""
    ln = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)).eval()
    ep = torch.export.export(ln, (torch.randn(2, 8),))
    proto = translate(ep, opset=18, input_names=["x"], output_names=["y"], custom={},
                      extra_decompositions=layer_norm_decompositions())
    assert "LayerNormalization" not in {n.op_type for n in proto.graph.node}
    plain = translate(ep, opset=18, input_names=["x"], output_names=["y"], custom={}, extra_decompositions={})
    assert "LayerNormalization" in {n.op_type for n in plain.graph.node}
