"""Emission of a symbolic capture as captured: the lifted ExportedProgram must survive torch.onnx's
decompositions for graphs as packaged models write them."""
from __future__ import annotations

import onnx
import torch

import fxtrt


def test_an_output_straight_from_eval_dropout(tmp_path):
    """Decompositions remove the dropout and rename the output (T5's encoder ends this way)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1)).eval()
    compiled = fxtrt.compile(model, torch.randn(1, 4), batch=(1, 4, 8), out_dir=tmp_path / "out")
    assert compiled.report.verified
    assert compiled.report.stages["capture"]["one_capture"]


def test_module_names_that_are_not_identifiers(tmp_path):
    """torchvision's RegNet names blocks "block1-0"; a weight's placeholder must still be valid Python."""
    model = torch.nn.Sequential()
    model.add_module("block1-0", torch.nn.Conv2d(3, 4, 3))
    model.add_module("head", torch.nn.Flatten())
    compiled = fxtrt.compile(model.eval(), torch.randn(1, 3, 8, 8), batch=(1, 4, 8), out_dir=tmp_path / "out")
    assert compiled.report.verified
    graph = onnx.load(str(compiled.onnx_path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
