"""The pass manager and the contracts passes declare: one pipeline for compile, explain and
debug_dir; a user pass inserted at a position; requirements checked and named."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import fxtrt
from benchmarks.corpus import select_specs
from fxtrt.passes import (REGISTRY, REQUIRED, PassManager, PassResult, contract_of, graph_pass, insert_pass,
                          order_problem, resolve)
from fxtrt.passes.canonicalize_flatten import canonicalize_flatten
from fxtrt.passes.infra import change
from tests import seed_models as sm
from tests.backend.test_translate import captured_for
from tests.passes.conftest import assert_same

aten = torch.ops.aten


@graph_pass(requires=("generalize_batch",))
def relu_as_clamp(gm, ctx):
    """relu(x) -> clamp_min(x, 0.0): the same values, so verification and the debug check pass."""
    changes = []
    for node in gm.graph.find_nodes(op="call_function", target=aten.relu.default):
        node.target, node.args = aten.clamp_min.default, (node.args[0], 0.0)
        changes.append(change(node, "relu", "clamp_min(0.0)"))
    gm.recompile()
    return PassResult(gm, changes)


@graph_pass(requires=("relax_views",))
def after_relax_views(gm, ctx):
    return PassResult(gm, [])


def test_a_user_pass_at_a_position_is_in_the_same_place_in_compile_explain_and_debug_dir(tmp_path):
    passes = insert_pass(relu_as_clamp, after="generalize_batch")
    names = [*list(REGISTRY)[:4], "relu_as_clamp", *list(REGISTRY)[4:]]
    model, x = sm.IntSizeView().eval(), torch.randn(1, 3, 16, 16)

    compiled = fxtrt.compile(model, x, batch=(1, 4, 8), passes=passes, debug_dir=tmp_path / "debug")
    assert [p.name for p in compiled.report.passes] == names
    assert compiled.report.verified
    assert next(p for p in compiled.report.passes if p.name == "relu_as_clamp").changes

    explained = fxtrt.explain(model, x, batch=(1, 4, 8), passes=passes)
    assert explained.passes == names
    assert "relu_as_clamp" in explained.to_text() and explained.to_dict()["passes"] == names

    dumps = sorted(p.name for p in (tmp_path / "debug").iterdir() if p.is_dir())
    assert dumps == ["00_captured", *(f"{i:02d}_{n}" for i, n in enumerate(names, start=1))]


def test_insert_pass_takes_an_index_or_a_neighbour_and_changes_nothing_global():
    assert insert_pass(relu_as_clamp, index=0)[0] is relu_as_clamp
    assert insert_pass(relu_as_clamp, before="fix_dtypes")[-2:] == (relu_as_clamp, "fix_dtypes")
    assert insert_pass(relu_as_clamp, after="canonicalize_flatten", passes=["canonicalize_flatten"]) == \
        ("canonicalize_flatten", relu_as_clamp)
    assert "relu_as_clamp" not in REGISTRY
    with pytest.raises(fxtrt.ConfigError, match="no pass named 'nope'"):
        insert_pass(relu_as_clamp, after="nope")
    with pytest.raises(fxtrt.ConfigError, match="exactly one"):
        insert_pass(relu_as_clamp, index=1, after="fix_dtypes")


def test_a_missing_requirement_is_refused_before_any_work_naming_both_passes(tmp_path):
    with pytest.raises(fxtrt.ConfigError, match="pass after_relax_views requires pass relax_views") as info:
        fxtrt.compile(sm.SizeView().eval(), torch.randn(1, 3, 16, 16), passes=[after_relax_views],
                      out_dir=tmp_path / "out")
    assert "is not in the pipeline" in info.value.message
    assert not (tmp_path / "out").exists()
    with pytest.raises(fxtrt.ConfigError, match="requires pass relax_views to run before it, and relax_views runs after it"):
        fxtrt.explain(sm.SizeView().eval(), torch.randn(1, 3, 16, 16), passes=[after_relax_views, "relax_views"])


def test_the_manager_checks_requirements_before_each_pass(traced):
    gm, ctx = traced(sm.IntSizeView(), torch.randn(1, 3, 16, 16))
    with pytest.raises(fxtrt.PassError, match="pass canonicalize_flatten requires pass generalize_batch"):
        PassManager([("canonicalize_flatten", canonicalize_flatten)]).run(gm, ctx)
    reads_only = graph_pass(reads_meta=("fxtrt_shapes",))(lambda g, c: PassResult(g, []))
    assert "reads node.meta['fxtrt_shapes'], and no pass before it provides it" in \
        order_problem([("reads_only", reads_only)])[1]


def test_the_registry_keeps_its_own_contracts():
    assert order_problem(resolve(None)) is None
    assert REQUIRED == ("drop_shape_guards", "fold_constant_reads", "scalar_reads_as_tensors", "generalize_batch")
    assert [n for n, fn in REGISTRY.items() if contract_of(fn).generalizes] == ["generalize_batch"]
    assert "fxtrt_shapes" in contract_of(REGISTRY["generalize_batch"]).provides_meta


def test_a_pass_that_breaks_its_in_place_promise_is_named(traced):
    gm, ctx = traced(sm.SizeView(), torch.randn(1, 3, 16, 16))

    @graph_pass()
    def copies(g, c):
        return PassResult(torch.fx.GraphModule(g, g.graph), [])

    with pytest.raises(fxtrt.PassError, match="pass copies is declared in place but returned another GraphModule"):
        PassManager([("copies", copies)]).run(gm, ctx)


def test_the_context_is_read_only(traced):
    _, ctx = traced(sm.SizeView(), torch.randn(1, 3, 16, 16))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.subgraph = "true_graph_0"


def test_kept_going_past_a_failure_it_skips_only_what_requires_the_failed_pass(traced):
    """explain's mode: a StructureError is listed, passes that require generalize_batch are
    skipped, and the rest still run on the graph."""
    model = sm.PerSampleLoop()
    gm, ctx = traced(model, torch.randn(1, 8))
    events = []
    run = PassManager(resolve(None), observers=[events.append], keep_going=(fxtrt.GeneralizationError,)).run(gm, ctx)
    failed = [e for e in events if e.error is not None]
    assert [e.name for e in failed] == ["generalize_batch"] and isinstance(failed[0].error, fxtrt.StructureError)
    assert "canonicalize_flatten" in run.skipped and "fix_dtypes" in run.ran
    assert_same(gm, model, torch.randn(ctx.captured.base.sizes["batch"], 8))  # the base trace's size


QUICK = select_specs(quick=True)


@pytest.mark.parametrize("spec", QUICK, ids=[s.name for s in QUICK])
def test_every_pass_that_changes_the_graph_says_so(spec):
    """The manager regenerates a graph's code only after a pass that reports a change (codegen is
    ~15 ms a pass on resnet50). That is sound only if no pass changes the graph silently: the code
    freshly generated after each pass differs from the one before exactly when it reported a change."""
    captured, ctx = captured_for(spec)
    fresh = [captured.base.gm.graph.python_code("self").src]
    silent: list[str] = []

    def observe(event):
        now = event.gm.graph.python_code("self").src
        changed = bool(event.result.changes) if event.result is not None else False
        if now != fresh[-1] and not changed:
            silent.append(event.name)
        fresh.append(now)

    PassManager(resolve(ctx.settings.passes), observers=[observe]).run(captured.base.gm, ctx)
    assert not silent, f"passes changed the graph without reporting it: {silent}"
