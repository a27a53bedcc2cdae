"""The fidelity benchmark's quick run, as a user runs it: ``python -m benchmarks.fidelity --quick``.

The quick set (at most 8 small models, about 2 minutes on 2 cores) includes a dynamic
``view(x.size(0), -1)`` and patterns that bake the batch in with ``int(x.size(0))``, which at
least one torch.onnx baseline must get wrong. Fast unit tests pin down how a cell is judged, and
what a model with dynamic dims besides the batch (the dyn family) is judged at and tells the exporters.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
from benchmarks.corpus import QUICK_LIMIT, select_specs

MODELS = tuple(s.name for s in select_specs(quick=True))
EXPORTERS = ("fxtrt", "onnx_dynamo", "onnx_legacy")
BASELINES = ("onnx_dynamo", "onnx_legacy")
OUTCOMES = {"PASS", "SILENT", "LOUD", "REFUSED", "CRASH"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fidelity")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fidelity", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout, json.loads((out / "results.json").read_text())


def test_quick_set_is_small():
    assert 0 < len(MODELS) <= QUICK_LIMIT <= 8
    assert {"seed/view_size", "seed/view_int_size"} <= set(MODELS)


def test_writes_every_artifact(quick_run):
    out, _, _ = quick_run
    for name in ("results.json", "results.csv", "results.md", "fidelity.png"):
        assert (out / name).stat().st_size > 0, f"{name} is missing or empty"
    assert (out / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "the figure is a PNG"
    assert not list(out.glob(".*.tmp*")), "no temporary files are left behind"


def test_every_model_gets_one_valid_outcome_per_exporter(quick_run):
    out, _, results = quick_run
    cells = {(r["model"], r["exporter"]): r["outcome"] for r in results["rows"]}
    assert set(cells) == {(m, e) for m in MODELS for e in EXPORTERS}
    assert set(cells.values()) <= OUTCOMES, "ERROR means the harness itself failed"
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(MODELS) * len(EXPORTERS)
    assert results["meta"]["complete"] is True


def test_progress_is_shown_per_model(quick_run):
    _, stdout, _ = quick_run
    lines = stdout.splitlines()
    for model in MODELS:
        assert any(line.endswith(f"/{len(MODELS)}] {model}") for line in lines), f"no progress line for {model}"


def test_a_baked_batch_is_caught_failing_in_a_torch_onnx_baseline(quick_run):
    _, _, results = quick_run
    baked = {(r["model"], r["exporter"]): r for r in results["rows"] if r["model"] != "seed/view_size"}
    caught = [k for k, r in baked.items() if k[1] in BASELINES and r["outcome"] in ("SILENT", "LOUD")]
    assert caught, "int(x.size(0)) should break the seed recipe at batch 3"
    for row in baked.values():
        if row["outcome"] in ("SILENT", "LOUD"):
            assert row["batches"]["1"]["status"] == "ok", "batch 1 is the export batch and must match"
            assert "batch 3" in row["detail"], "the first failing batch size is named"


def test_a_passing_cell_has_its_measurements(quick_run):
    _, _, results = quick_run
    row = next(r for r in results["rows"] if r["model"] == "seed/view_size" and r["exporter"] == "onnx_legacy")
    assert row["outcome"] == "PASS"
    assert row["max_abs_err"] < 1e-4
    assert row["onnx_nodes"] >= row["shape_ops"] > 0, "view(x.size(0), -1) costs shape ops in the legacy exporter"
    for key in ("export_s", "ort_ms_b1", "ort_ms_b8", "peak_rss_mb"):
        assert row[key] > 0, key


def test_a_child_that_dies_is_judged_by_the_phase_it_was_in(tmp_path):
    from benchmarks.runner import ChildExit, finish_row

    segfault = ChildExit(exitcode=-11, timed_out=False)
    row = finish_row({"phase": "export"}, segfault, 900, tmp_path)
    assert (row["outcome"], row["detail"]) == ("CRASH", "process died with signal 11 during export")
    row = finish_row({"phase": "evaluate@8", "batches": {"1": {"status": "ok"}}}, segfault, 900, tmp_path)
    assert row["outcome"] == "LOUD" and "at batch 8" in row["detail"]
    row = finish_row({"phase": "evaluate@8", "batches": {"3": {"status": "wrong", "detail": "x"}}}, segfault, 900, tmp_path)
    assert row["outcome"] == "SILENT", "a wrong answer outranks a later crash"
    row = finish_row({"phase": "export"}, ChildExit(exitcode=None, timed_out=True), 900, tmp_path)
    assert row["detail"] == "timed out after 900 s during export"


def test_outputs_are_compared_by_shape_then_scaled_error():
    import numpy as np

    from benchmarks.outcomes import Tolerance, check_output

    want = np.array([[100.0, 0.0], [1.0, -50.0]], dtype=np.float32)
    assert check_output(want + 0.05, want, Tolerance()).ok, "within 1e-3 of the output's largest magnitude"
    assert not check_output(want + 0.5, want, Tolerance()).ok
    assert "shape" in check_output(want[:1], want, Tolerance()).reason
    assert not check_output(np.array([True, False]), np.array([True, True]), Tolerance()).ok


def test_a_dyn_model_is_judged_at_every_batch_and_size_and_every_exporter_is_told_its_dims():
    from benchmarks.corpus import get_spec
    from benchmarks.exporters import ExportSpec
    from benchmarks.model_prep import make_inputs

    spec = get_spec("dyn/bert")
    assert not any(m.startswith("dyn/") for m in MODELS), "dyn models stay out of the quick set"
    cases = spec.cases((1, 3, 8, 32))
    assert {(c.batch, dict(c.sizes)["seq"]) for c in cases} == {(b, s) for b in (1, 3, 8) for s in (4, 23, 64)}
    assert spec.example_case.key == "1,seq=16", "the export example is batch 1 at the dim's opt, not a judged size"
    ids, mask = make_inputs(spec, cases[-1], seed=0)
    assert ids.shape == mask.shape == (8, 64)
    export = ExportSpec(spec.input_names, spec.batch_dims, (0,), dynamic=spec.dynamic, output_dynamic=({1: "seq"},))
    both = {0: "batch_size", 1: "seq"}
    assert export.dynamic_axes() == {"input_ids": both, "attention_mask": both, "output_0": both}
    assert export.fxtrt_dynamic() == {0: {1: ("seq", 4, 16, 64)}, 1: {1: ("seq", 4, 16, 64)}}


class _Cancels(torch.nn.Module):
    """``(x + 1e7) - 1e7``: float32 rounds x to whole numbers, float64 keeps it."""

    def forward(self, x):
        return (x + 1e7) - 1e7


def test_the_judge_forgives_float32_round_off_but_not_a_wrong_value(tmp_path):
    """An exporter closer to the float64 model than eager float32 is not SILENT (fxtrt's own rule,
    ``roundoff_verdict``, asked only when the scaled check fails); a value off by more is."""
    import numpy as np

    from benchmarks.model_spec import ModelSpec
    from benchmarks.outcomes import check_output
    from benchmarks.worker import REFERENCE_ARRAYS, JobSettings, _Cell

    spec = ModelSpec("unit/cancels", build=_Cancels, make_inputs=lambda b, gen, sizes: (torch.zeros(b, 4),))
    x = torch.tensor([[0.3, -1.7, 2.4, 0.6]])
    np.savez(tmp_path / REFERENCE_ARRAYS, in_1_0=x.numpy())
    settings = JobSettings()
    cell = _Cell(spec.name, "onnx_legacy", settings, tmp_path, tmp_path, resolve=lambda _: spec)
    eager = _Cancels()(x).numpy()
    for got, forgiven in ((x.numpy(), True), (2 * x.numpy(), False)):
        checks = [check_output(got, eager, settings.tolerance)]
        assert not checks[0].ok, "the scaled check alone fails both"
        bad, unstable, notes = cell._second_opinion("1", [got], [eager], checks)
        assert (not bad) is forgiven and bool(notes) is forgiven and not unstable, (bad, notes)
        assert "float64 rule" in (notes or bad)[0]


class _OffsetSum(torch.nn.Module):
    """A sum near 1e7 less its float64 value: float32 rounds the sum to whole numbers, and
    differently on one thread and on two (another summation order)."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return x.sum(-1, keepdim=True) - self.offset


def test_a_mismatch_where_eager_differs_from_itself_is_unstable_not_silent(tmp_path):
    """ultralytics rtdetr-l: top-300 detections with scores tied to 1e-6 swap places between eager
    on one thread and on two; every exporter differed from eager there. The judge calls such a
    case UNSTABLE (the reference decides nothing), and a wrong value where eager is stable SILENT."""
    import numpy as np

    from benchmarks.model_spec import ModelSpec
    from benchmarks.outcomes import check_output
    from benchmarks.worker import REFERENCE_ARRAYS, JobSettings, _Cell
    from fxtrt.compare import other_thread_count

    x = torch.randn(1, 1 << 20, generator=torch.Generator().manual_seed(0)) * 1e4
    offset = float(x.double().sum())
    spec = ModelSpec("unit/offset-sum", build=lambda: _OffsetSum(offset), make_inputs=lambda b, gen, sizes: (x,))
    np.savez(tmp_path / REFERENCE_ARRAYS, in_1_0=x.numpy())
    settings = JobSettings()
    cell = _Cell(spec.name, "onnx_legacy", settings, tmp_path, tmp_path, resolve=lambda _: spec)
    with torch.no_grad():
        eager = _OffsetSum(offset)(x).numpy()
        with other_thread_count():
            again = _OffsetSum(offset)(x).numpy()
    assert not check_output(again, eager, settings.tolerance).ok, "the premise: eager moves with the thread count"
    for got, verdict in ((eager + 20, "unstable"), (eager + 0.5, "round-off")):
        checks = [check_output(got, eager, settings.tolerance)]
        assert not checks[0].ok
        bad, unstable, notes = cell._second_opinion("1", [got], [eager], checks)
        assert not bad and bool(unstable) is (verdict == "unstable"), (bad, unstable, notes)
        assert "eager itself moves by" in (unstable or ["eager itself moves by"])[0]


def test_the_corpus_compile_time_benchmark_times_both_exporters_and_writes_its_median(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.compile_time_corpus", "--models", "seed/view_size", "--rounds", "1",
         "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads((tmp_path / "compile_time_corpus.json").read_text())
    assert row["model"] == "seed/view_size" and len(row["runs"]["fxtrt"]) == len(row["runs"]["dynamo"]) == 1
    assert row["fxtrt_vs_dynamo"] == row["runs"]["fxtrt"][0] / row["runs"]["dynamo"][0]
    assert "Median fxtrt / dynamo over 1 models" in (tmp_path / "compile_time_corpus.md").read_text()


def test_a_bucket_set_is_judged_as_fxtrt_serves_it(tmp_path):
    """fxtrt's answer to a per-sample loop is a static-batch bucket set; the benchmark judges it
    through fxtrt's own serving (padding, slicing back), not by one bucket's file (zoo: hf pixtral
    was LOUD, 'the file fixes dims declared dynamic', while the set serves batch 3)."""
    import numpy as np

    from benchmarks.exporters import EXPORTERS, ExportSpec
    from benchmarks.ort_runner import build_feed, fixed_dims, make_session, run
    from tests.seed_models import PerSampleLoop

    model = PerSampleLoop().eval()
    result = EXPORTERS["fxtrt"].export(model, (torch.randn(1, 3, 8, 8),),
                                       ExportSpec(("input",), (0,), (0,), batch_profile=(1, 4, 8)), tmp_path / "model.onnx")
    assert result.served_by == tmp_path
    session = make_session(result.served_by)
    assert not fixed_dims(session, 1, result.input_names, {0: [0]})
    x = torch.randn(3, 3, 8, 8)
    (got,) = run(session, build_feed(session, [x.numpy()], result.input_names))
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-3)
