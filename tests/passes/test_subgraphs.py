"""Passes run inside the subgraphs of higher-order ops (torch.cond's branches) as in the model's
graph; a pass that cannot handle a subgraph leaves it as captured, and the report says so."""
from __future__ import annotations

import pytest
import torch

import fxtrt
from fxtrt.passes import PassResult, run_passes


class BranchPatterns(torch.nn.Module):
    """A ``contiguous()`` in one branch (relax_views), float64 arithmetic in the other (fix_dtypes).
    The weight is lifted: both branches take it and ``x`` as operands."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        def pos(x):
            return x.transpose(1, 2).contiguous().flatten(1)

        def neg(x):
            return (x.to(torch.float64) * self.scale).transpose(1, 2).flatten(1).to(torch.float32)

        return torch.cond(x.sum() > 0, pos, neg, (x,))


class BakedOutsideTheBranch(torch.nn.Module):
    """``int(x.size(0))`` bakes the batch, so the branch is traced at concrete sizes too: its
    ``reshape(y, [2, 2, 4])`` at batch 2 must become ``[batch, 2, 4]``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = x.view(int(x.size(0)), -1)
        return torch.cond(y.sum() > 0, lambda y: self.lin(y.reshape(y.size(0), 2, 4).flatten(1)).relu(),
                          lambda y: self.lin(y) * 2, (y,))


def _matches(compiled, model, shape):
    for b in (1, 3, 8):
        for sign in (1, -1):
            x = sign * torch.rand(b, *shape)
            with torch.no_grad():
                want = model(x)
            torch.testing.assert_close(compiled(x), want, atol=1e-4, rtol=1e-3)


def _in_subgraph(compiled, pass_name):
    record = next(r for r in compiled.report.passes if r.name == pass_name)
    return [c.note for c in record.changes if "(in subgraph" in c.note]


def test_passes_rewrite_inside_the_branches(tmp_path):
    model = BranchPatterns().eval()
    compiled = fxtrt.compile(model, torch.randn(1, 5, 4), batch=(1, 4, 8), out_dir=tmp_path / "out")
    assert compiled.report.verified
    assert _in_subgraph(compiled, "relax_views") == [
        "contiguous() that must copy for every size (in subgraph true_graph_0)"]
    assert _in_subgraph(compiled, "fix_dtypes") == ["float64 computation done in float32 (in subgraph false_graph_0)"]
    _matches(compiled, model, (5, 4))


def test_a_literal_in_a_branch_follows_a_baked_batch(tmp_path):
    model = BakedOutsideTheBranch().eval()
    compiled = fxtrt.compile(model, torch.randn(1, 2, 4), batch=(1, 4, 8), out_dir=tmp_path / "out")
    assert compiled.report.verified
    assert not compiled.report.stages["capture"]["one_capture"], "the batch is baked, and traced at concrete sizes"
    assert _in_subgraph(compiled, "generalize_batch") == [
        "size-following literal made symbolic (in subgraph true_graph_0)"]
    _matches(compiled, model, (2, 4))


def label_inputs(gm, ctx):
    """A user's pass written for the model's graph only: it labels each placeholder with the
    model's input name, and fails where the placeholders are a subgraph's operands."""
    for node, name in zip([n for n in gm.graph.nodes if n.op == "placeholder"], ctx.captured.input_names,
                          strict=True):
        node.meta["input_name"] = name
    return PassResult(gm, [])


def test_a_pass_that_cannot_handle_a_subgraph_leaves_it_as_captured(traced):
    from fxtrt.passes.subgraphs import run_in_subgraphs

    gm, ctx = traced(BranchPatterns(), torch.randn(1, 5, 4), batch=(1, 4, 8))
    changes, notes = run_in_subgraphs("label_inputs", label_inputs, gm, ctx)
    assert changes == []
    assert [n.split(" (")[0] for n in notes] == [
        "pass label_inputs could not rewrite the subgraph true_graph_0 of a higher-order op",
        "pass label_inputs could not rewrite the subgraph false_graph_0 of a higher-order op",
    ]
    assert all(n.endswith("that subgraph is emitted as captured by it") for n in notes)
    for name in ("true_graph_0", "false_graph_0"):  # restored: no label the pass wrote before failing
        assert not any("input_name" in n.meta for n in getattr(gm, name).graph.nodes)


def test_the_report_says_which_subgraph_a_pass_left_as_captured(tmp_path):
    model = BranchPatterns().eval()
    compiled = fxtrt.compile(model, torch.randn(1, 5, 4), batch=(1, 4, 8), out_dir=tmp_path / "out",
                             passes=["relax_views", label_inputs])
    assert compiled.report.verified
    assert any(n.startswith("pass label_inputs could not rewrite the subgraph true_graph_0")
               for n in compiled.report.notes)
    _matches(compiled, model, (5, 4))


def test_an_fxtrt_error_inside_a_subgraph_stops_the_compile(traced):
    """A refusal is the model's, wherever it is: it is not turned into a note."""
    gm, ctx = traced(BranchPatterns(), torch.randn(1, 5, 4), batch=(1, 4, 8))

    def refuse_in_branches(g, c):
        if c.subgraph is not None:
            raise fxtrt.errors.PassError(f"refused in {c.subgraph}")
        return PassResult(g, [])

    with pytest.raises(fxtrt.errors.PassError, match="refused in true_graph_0"):
        run_passes(gm, ctx, [("refuse_in_branches", refuse_in_branches)])
