"""The hazard generator and the fuzzer's property (benchmarks/fuzz.py), and a fixed-seed subset of
it: every generated model is served and matches eager at sizes compile did not verify, or is
refused with an FxtrtError, and only where the generator marked it unservable."""
from __future__ import annotations

import collections
import time

import pytest
import torch

from benchmarks.fuzz import check_sizes, generate, load_model_module, markdown, run_model, summarize, tables
from benchmarks.hazards import BLOCKS, ModelSpec, render

SEED = 20261202
N = 10


def test_every_block_variant_runs_eagerly_and_keeps_the_layout(tmp_path):
    for name, layouts in BLOCKS.items():
        for layout, variants in layouts.items():
            for i in range(len(variants)):
                kind = "seq" if layout == "seq" else "hw"
                spec = ModelSpec(layout=layout, blocks=((name, i),), batch=(1, 4, 8), extra_kind=kind,
                                 extra=(4, 8, 16) if kind == "seq" else (8, 12, 24))
                path = tmp_path / f"{name}_{layout}_{i}.py"
                path.write_text(render(spec).text)
                module = load_model_module(path)
                for sizes in ({"batch": 1, kind: spec.extra[0]}, {"batch": 5, kind: spec.extra[2] - 1}):
                    x = module.inputs_at(sizes)
                    assert module.build()(x).shape == x.shape, (name, layout, i)


def test_the_hazard_line_is_where_the_renderer_says():
    spec = ModelSpec(layout="seq", blocks=(("view_sizes", 0), ("input_read", 1)), batch=(1, 4, 8))
    rendered = render(spec)
    lines = rendered.text.splitlines()
    assert ".tolist()" in lines[rendered.hazard_lines["b1:input_read"] - 1]
    first, last = rendered.spans["b1:input_read"]
    assert "x = x + b1_v[0]" in lines[last - 1] and first == rendered.hazard_lines["b1:input_read"]
    assert spec.unservable == "a value read from the input"
    assert ModelSpec(layout="seq", blocks=(("per_sample_loop", 0), ("batch_stat", 0))).unservable is not None
    assert ModelSpec(layout="seq", blocks=(("per_sample_loop", 0),)).unservable is None, "a loop alone is served"
    assert ModelSpec(layout="seq", blocks=(("batch_stat", 0),)).unservable is None, "a batch statistic too"


def test_checks_run_at_sizes_compile_did_not_verify():
    spec = ModelSpec(layout="seq", blocks=(("view_sizes", 0),), batch=(1, 4, 8), extra_kind="seq", extra=(4, 8, 16))
    verified = [{"batch": b, "seq": s} for b in (1, 3, 4, 8) for s in (4, 8, 10, 16)]
    points = check_sizes(spec, verified)
    assert points and all(p["batch"] not in (1, 3, 4, 8) and p["seq"] not in (4, 8, 10, 16) for p in points)


def test_the_summary_counts_what_the_issue_names():
    rows = [{"outcome": o, "spec": {"blocks": [["bool_mask", 0]]}, "dim_kind": "batch", "source_at": "hazard"}
            for o in ("PASS", "PASS", "REFUSED", "SILENT", "CRASH", "TIMEOUT", "PARTIAL", "REFUSED_UNEXPECTED")]
    summary = summarize(rows)
    assert {k: summary[k] for k in ("total", "pass", "refused", "silent", "crash", "timeout", "partial")} == {
        "total": 8, "pass": 2, "refused": 2, "silent": 1, "crash": 1, "timeout": 1, "partial": 1}
    assert summary["failures"] == 5 and summary["refused_with_source"] == 1
    counts = tables(rows)
    assert counts["per_block"]["bool_mask"]["PASS"] == 2 and counts["per_dim_kind"]["batch"]["SILENT"] == 1
    text = markdown({"summary": summary, "seed": 0, "command": "x", "wall_s": 1.0, "jobs": 1, "cpus": 2,
                     "tables": counts, "rows": [dict(r, id=f"m{i}", label="l") for i, r in enumerate(rows)]})
    assert "| bool_mask | 8 |" in text and "## Failures" in text


def test_generation_is_deterministic_for_a_seed():
    assert generate(5, seed=3) == generate(5, seed=3)


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    start = time.perf_counter()
    rows = [run_model(spec, root / f"m{i}") for i, spec in enumerate(generate(N, seed=SEED, max_blocks=2))]
    return rows, time.perf_counter() - start


def test_a_fixed_seed_subset_keeps_the_promise(subset):
    rows, wall = subset
    bad = [(r["label"], r["outcome"], r.get("detail")) for r in rows if r["outcome"] not in ("PASS", "REFUSED")]
    assert not bad, bad
    outcomes = collections.Counter(r["outcome"] for r in rows)
    assert outcomes["PASS"] >= N // 2, outcomes
    for r in rows:
        if r["outcome"] == "REFUSED":
            assert r["unservable"], r
            if "read" in r["unservable"]:
                assert r["source_at"] == "hazard", r
    print(f"{N} generated models in {wall:.0f} s: {dict(outcomes)}")


def test_sub_specs_shrink_to_the_blocks_a_failure_needs():
    """What --shrink relies on: Hypothesis, searching sub_specs for a failure, ends at the fewest
    blocks that still fail (here a stand-in failure that needs input_read and batch_stat)."""
    from hypothesis import HealthCheck, Phase, find, settings

    from benchmarks.hazards import sub_specs

    spec = ModelSpec(layout="seq", blocks=(("view_sizes", 0), ("input_read", 0), ("bool_mask", 1), ("batch_stat", 0)))
    needed = {"input_read", "batch_stat"}
    small = find(sub_specs(spec), lambda s: needed <= {n for n, _ in s.blocks},
                 settings=settings(max_examples=200, database=None, phases=[Phase.generate, Phase.shrink],
                                   suppress_health_check=list(HealthCheck)))
    assert small.blocks == (("input_read", 0), ("batch_stat", 0))
