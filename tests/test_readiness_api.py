"""compile(target="tensorrt") and ``fxtrt explain --target tensorrt`` say which nodes TensorRT's ONNX
parser would not take, at the user's line; ``strict=True`` makes that an EngineError."""
from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import pytest
import torch

import fxtrt
from fxtrt.cli import main
from fxtrt.errors import EngineError


class BitwiseModel(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = torch.bitwise_and(x, y)
        return z + 1


LINE = f"{Path(__file__).resolve()}:{inspect.getsourcelines(BitwiseModel.forward)[1] + 1}"


def make_bitwise() -> torch.nn.Module:
    return BitwiseModel()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 100, (2, 8), generator=g), torch.randint(0, 100, (2, 8), generator=g)


def test_unsupported_op_is_in_report_json_with_the_line_and_warned(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        compiled = fxtrt.compile(BitwiseModel(), _inputs(), opset=18, target="tensorrt", out_dir=tmp_path)
    stage = json.loads((tmp_path / "report.json").read_text())["stages"]["engines"]
    ten = stage["readiness"]["tensorrt"]["10"]
    assert ten["coverage"] < 100 and ten["unsupported"][0]["op"] == "BitwiseAnd"
    assert ten["unsupported"][0]["source"] == LINE
    assert stage["readiness"]["tensorrt"]["11"]["checked"] is False
    assert any("BitwiseAnd" in r.getMessage() and "TensorRT 10" in r.getMessage() for r in caplog.records)
    assert "BitwiseAnd x1" in compiled.report.to_text() and LINE in compiled.report.to_text()


def test_strict_raises_engine_error_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(EngineError, match="BitwiseAnd") as info:
        fxtrt.compile(BitwiseModel(), _inputs(), opset=18, target="tensorrt", strict=True, out_dir=out)
    assert info.value.source == LINE and "node_bitwise_and" in str(info.value)
    assert not out.exists() or not any(out.iterdir())


def test_explain_target_tensorrt_lists_the_op_and_line(capsys) -> None:
    spec = f"{Path(__file__).resolve()}:make_bitwise"
    assert main(["explain", spec, "--input", "2x8:int64", "--input", "2x8:int64", "--opset", "18",
                 "--target", "tensorrt"]) == 0
    text = capsys.readouterr().out
    assert "TensorRT 10:" in text and "BitwiseAnd x1" in text and LINE in text
