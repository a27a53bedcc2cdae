"""compile() with a static-batch bucket set: asked for, or chosen automatically when the graph's
structure follows the batch. Real torch / onnx / onnxruntime / Polygraphy; served on ORT."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision

import fxtrt
from tests import seed_models as sm

SEED_FILE = str(Path(sm.__file__).resolve())
SERVE_BATCHES = (1, 3, 5, 8, 13, 16)


def input_dims(path: Path) -> list:
    model = onnx.load(str(path))
    return [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A loop over the samples with a dynamic batch asked for: falls back to buckets by itself."""
    model = sm.PerSampleLoop().eval()
    out = tmp_path_factory.mktemp("loop") / "out"
    return model, fxtrt.compile(model, torch.randn(1, 8), batch=(1, 8, 16), out_dir=out)


def test_loop_over_samples_falls_back_to_buckets_and_says_why(loop):
    _, compiled = loop
    assert compiled.buckets == (1, 4, 8, 16)
    stage = compiled.report.stages["buckets"]
    assert stage["automatic"] is True and stage["buckets"] == [1, 4, 8, 16]
    assert "structure depends on the batch size" in stage["why"]
    assert stage["source"] == f"{SEED_FILE}:{sm.line_of(sm.PerSampleLoop, 'loop')}"
    assert any("static-batch model per bucket" in n for n in compiled.report.notes)
    text = compiled.report.to_text()
    assert "buckets: one static-batch model per batch size [1, 4, 8, 16] (chosen automatically)" in text
    assert f"at: {stage['source']}" in text


def test_bucket_artifacts_are_static_one_per_bucket(loop):
    _, compiled = loop
    out = compiled.onnx_path.parent
    names = sorted(p.name for p in out.iterdir())
    assert names == ["model_b1.onnx", "model_b16.onnx", "model_b4.onnx", "model_b8.onnx", "report.json"]
    assert compiled.onnx_paths == {b: out / f"model_b{b}.onnx" for b in (1, 4, 8, 16)}
    assert compiled.onnx_path == out / "model_b16.onnx"  # the largest bucket
    for b, path in compiled.onnx_paths.items():
        assert input_dims(path) == [b, 8]
    data = json.loads((out / "report.json").read_text())
    assert data["artifacts"]["onnx_b4"] == str(out / "model_b4.onnx")
    assert data["stages"]["buckets"]["models"] == {"1": "model_b1.onnx", "4": "model_b4.onnx", "8": "model_b8.onnx",
                                                   "16": "model_b16.onnx"}


def test_verification_covers_every_bucket_and_sizes_between_through_the_server(loop):
    _, compiled = loop
    rows = compiled.report.verification
    assert all(r.passed for r in rows) and compiled.report.verified
    assert [r.sizes["batch"] for r in rows] == [1, 3, 4, 7, 8, 13, 16, 17]
    notes = {r.sizes["batch"]: r.note for r in rows}
    assert notes[13] == "served as 13->16" and notes[17] == "served as 16+1"


@pytest.mark.parametrize("batch", SERVE_BATCHES)
def test_loop_model_serves_any_batch_like_eager(loop, batch):
    model, compiled = loop
    x = torch.randn(batch, 8)
    with torch.no_grad():
        want = model(x)
    got = compiled(x)  # torch tensors, in the model's own output structure
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def squeezenet(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.get_model("squeezenet1_1", weights=None).eval()
    out = tmp_path_factory.mktemp("squeezenet") / "out"
    return model, fxtrt.compile(model, torch.randn(1, 3, 64, 64), buckets=(1, 4, 8, 16), out_dir=out)


@pytest.mark.slow
def test_torchvision_bucket_set_serves_any_batch_like_eager(squeezenet):
    model, compiled = squeezenet
    stage = compiled.report.stages["buckets"]
    assert stage["automatic"] is False and stage["why"] == "buckets= was given"
    assert compiled.report.verified
    for batch in SERVE_BATCHES:
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            want = model(x).numpy()
        (got,) = compiled.run(x)
        assert got.shape == (batch, 1000)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_value_dependent_sizes_never_fall_back(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(fxtrt.GeneralizationError) as info:
        fxtrt.compile(sm.ValueDependent(), (torch.randn(1, 8), torch.tensor([3])), batch=(1, 8, 32), out_dir=out)
    assert not isinstance(info.value, fxtrt.StructureError)
    assert info.value.source == f"{SEED_FILE}:{sm.line_of(sm.ValueDependent, 'tolist')}"
    assert not out.exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(buckets=(4, 1)), "buckets must be sorted and unique"),
        (dict(buckets=(1, 1, 4)), "buckets must be sorted and unique"),
        (dict(buckets=(0, 4)), "buckets must be positive"),
        (dict(buckets=()), "buckets must be a non-empty sequence of ints"),
        (dict(buckets=(1, True)), "buckets must be a non-empty sequence of ints"),
        (dict(buckets="1,4"), "buckets must be a non-empty sequence of ints"),
        (dict(buckets=(1, 4), batch=(1, 4, 64)), "pass either batch or buckets"),
        # compile()'s default sizes passed explicitly are still a batch the buckets would ignore
        (dict(buckets=(1, 4), batch=(1, 8, 32)), "pass either batch or buckets"),
    ],
)
def test_bad_buckets_are_a_config_error_naming_the_argument(tmp_path, kwargs, message):
    with pytest.raises(fxtrt.ConfigError, match=message):
        fxtrt.compile(torch.nn.Linear(3, 2), torch.randn(1, 3), out_dir=tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_the_command_refuses_an_explicit_batch_with_buckets(tmp_path, capsys):
    """``--batch 1:8:32 --buckets ...`` is a batch the buckets would ignore; left out, it is not."""
    from fxtrt.cli import main

    assert main(["compile", "torchvision:resnet18", "--input", "1x3x32x32", "--batch", "1:8:32", "--buckets", "1,2",
                 "--out", str(tmp_path / "out"), "--no-verify"]) == 2
    assert "pass either batch or buckets" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_bucket_set_report_keeps_every_bucket_passes_and_io(loop):
    """Each bucket is lowered on its own: the report keeps each one's passes, op counts and I/O,
    not only the last bucket's (the top-level fields stay the last bucket's, as before)."""
    _, compiled = loop
    report = compiled.report
    assert sorted(report.buckets) == [1, 4, 8, 16]
    for b, rec in report.buckets.items():
        assert rec["io"] == {"x": [b, 8], "output": [b, 8]} or rec["io"]["x"] == [b, 8]
        assert [p.name for p in rec["passes"]] == [p.name for p in report.passes] and rec["ops_after_cleanup"]
    assert report.io == report.buckets[16]["io"] and report.passes is report.buckets[16]["passes"]
    written = json.loads((compiled.onnx_path.parent / "report.json").read_text())
    assert sorted(written["buckets"], key=int) == ["1", "4", "8", "16"]
    assert written["buckets"]["4"]["io"]["x"] == [4, 8] and written["buckets"]["4"]["passes"][0]["name"]
    assert "batch 4:" in report.to_text()


def test_buckets_with_batch_none_and_batch_dims(tmp_path):
    """batch=None is accepted with buckets; batch_dims still says where the batch is."""
    model = sm.SeqFirstGRU().eval()
    compiled = fxtrt.compile(model, (torch.randn(3, 1, 16), torch.randn(2, 1, 32)), batch=None, batch_dims=(1, 1),
                             buckets=(1, 2), out_dir=tmp_path / "out")
    assert input_dims(compiled.onnx_paths[2]) == [3, 2, 16]
    assert compiled.report.stages["buckets"]["output_batch_axes"] == {"output_0": 1, "output_1": 1}
    x, h0 = torch.randn(3, 5, 16), torch.randn(2, 5, 32)
    with torch.no_grad():
        want = model(x, h0)
    got = compiled(x, h0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


class PositionDependent(torch.nn.Module):
    """issue 11's example: a per-sample loop whose output also depends on the sample's position."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.stack([self.fc(img) * (i % 3 + 1) for i, img in enumerate(x)])


def test_a_position_dependent_loop_is_served_in_one_padded_call_and_chunking_is_refused(tmp_path):
    """issue 11's done-when: served correctly at 1, 3, 5, 8, 13, 16 by the automatic buckets of
    (1, 8, 16); batch 17 would be chunks 16+1, which verification shows changes the outputs, so
    the set serves at most 16 per call and says why."""
    model = PositionDependent().eval()
    compiled = fxtrt.compile(model, torch.randn(1, 8), batch=(1, 8, 16), out_dir=tmp_path / "out")
    assert compiled.buckets == (1, 4, 8, 16) and compiled.report.verified
    assert {r.sizes["batch"] for r in compiled.report.verification} >= {1, 3, 4, 8, 16}
    for n in (1, 3, 5, 8, 13, 16):
        x = torch.randn(n, 8)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-4)
    chunking = compiled.report.stages["buckets"]["chunking"]
    assert chunking["served"] is False and chunking["max_batch"] == 16
    assert "17 as 16+1" in chunking["why"] and "not independent" in chunking["why"]
    assert {r["sizes"]["batch"] for r in chunking["rows"]} == {17}
    assert not all(r["passed"] for r in chunking["rows"])
    assert any("batches above 16 are not served" in n for n in compiled.report.notes)
    with pytest.raises(fxtrt.ConfigError, match="serves at most 16 samples per call.*17 as 16\\+1"):
        compiled(torch.randn(17, 8))
