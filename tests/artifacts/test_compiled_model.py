"""What compile hands back serves through its artifact's runner: the one verification drove."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fxtrt
from fxtrt.artifacts import OnnxModel


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    return model, fxtrt.compile(model, torch.randn(1, 4), batch=(1, 2, 4), out_dir=tmp_path_factory.mktemp("c") / "out")


def test_the_compiled_model_is_its_artifact_at_its_final_paths(compiled) -> None:
    _, c = compiled
    assert isinstance(c.artifact, OnnxModel) and c.artifact.primary == c.onnx_path
    assert c.onnx_path.parent == c.settings.out_dir and c.onnx_path.is_file()
    assert c.buckets is None and c.onnx_paths == {} and c.engines is None


def test_run_and_call_serve_through_the_artifact(compiled) -> None:
    model, c = compiled
    x = np.random.default_rng(0).standard_normal((3, 4))  # float64 numpy: cast to the model's float32
    (got,) = c.run(x)
    np.testing.assert_allclose(got, c.artifact.run([x])[0])
    with torch.no_grad():
        want = model(torch.from_numpy(x).float())
    torch.testing.assert_close(c(torch.from_numpy(x).float()), want, atol=1e-5, rtol=1e-4)
    with pytest.raises(fxtrt.ConfigError, match="expected 1 input"):
        c.run(x, x)
