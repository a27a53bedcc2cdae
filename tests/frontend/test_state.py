"""Every trace starts from the model as the user handed it, and compile leaves it that way."""
from __future__ import annotations

import pytest
import torch

import fxtrt
from fxtrt.frontend.state import ModuleState


class Caching(torch.nn.Module):
    """Caches in forward the way ultralytics' Detect head does, and updates a buffer in place."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.register_buffer("seen", torch.zeros(()))
        self.shape = None
        self.anchors = torch.empty(0)
        self.calls: list[int] = []

    def forward(self, x):
        if self.shape != x.shape:
            self.anchors = torch.arange(x.shape[0], dtype=x.dtype).reshape(-1, 1)
            self.shape = x.shape
        self.calls.append(1)
        self.seen.add_(1)
        self.extra = "set in forward"
        return self.lin(x) + self.anchors


def _fingerprint(model: Caching):
    return (model.shape, model.anchors.shape, list(model.calls), float(model.seen), hasattr(model, "extra"),
            model.training, id(model.lin.weight))


def test_restore_undoes_attributes_lists_buffers_and_the_training_flag():
    model = Caching().train()
    before = _fingerprint(model)
    state = ModuleState(model)
    model.eval()
    with torch.no_grad():
        model(torch.randn(3, 4))
    assert _fingerprint(model) != before
    state.restore()
    assert _fingerprint(model) == before


def test_compile_leaves_a_caching_model_as_it_found_it(tmp_path):
    model = Caching().eval()
    before = _fingerprint(model)
    compiled = fxtrt.compile(model, torch.randn(1, 4), batch=(1, 4, 8), out_dir=tmp_path)
    assert _fingerprint(model) == before
    x = torch.randn(5, 4)
    want = Caching.forward(model, x).detach()
    torch.testing.assert_close(torch.as_tensor(compiled(x)), want, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_ultralytics_detect_head_cache_is_restored_and_the_batch_stays_dynamic(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    model = tasks.DetectionModel("yolov8n.yaml", verbose=False).eval()
    head = model.model[-1]
    before = {k: (v.shape if isinstance(v, torch.Tensor) else v) for k, v in vars(head).items()
              if k in ("anchors", "strides", "shape", "dynamic", "export")}
    compiled = fxtrt.compile(model, torch.randn(1, 3, 64, 64), batch=(1, 2, 4), out_dir=tmp_path / "out")
    after = {k: (v.shape if isinstance(v, torch.Tensor) else v) for k, v in vars(head).items() if k in before}
    assert after == before
    assert compiled.report.stages.get("buckets") is None, "a plain DetectionModel needs no buckets"
    assert compiled.report.stages["capture"]["dims"]["batch"]["how"] == "symbolic from capture"
