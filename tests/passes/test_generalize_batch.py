from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch

from fxtrt.errors import GeneralizationError
from fxtrt.passes.generalize_batch import fit, generalize_batch
from tests import seed_models as sm
from tests.passes.conftest import assert_same, run_with_requirements
from tests.regressions.test_fuzz_findings import PoolThenUpsample1d

SEED_FILE = str(Path(sm.__file__).resolve())
aten = torch.ops.aten


def run(gm, ctx):
    return run_with_requirements(gm, ctx, "generalize_batch")


def test_fit_linear_in_one_dim():
    e = fit(["batch"], [{"batch": 2}, {"batch": 3}], [9, 13])
    assert str(e) == "1 + 4*batch" and e.is_integral


def test_fit_multilinear_in_two_dims():
    points = [{"batch": b, "T": t} for b in (2, 3) for t in (30, 31)]
    e = fit(["batch", "T"], points, [3 * p["batch"] * p["T"] + 5 for p in points])
    assert dict(e.terms)[("batch", "T")] == 3 and dict(e.terms)[()] == 5
    assert dict(e.terms)[("batch",)] == 0 and dict(e.terms)[("T",)] == 0


def test_fit_rejects_non_integral_slopes():
    e = fit(["batch"], [{"batch": 2}, {"batch": 3}], [1, 1 + Fraction(1, 2)])
    assert not e.is_integral


def test_int_size_view_becomes_symbolic_and_runs_at_other_sizes(traced):
    model = sm.IntSizeView()
    gm, ctx = traced(model, torch.randn(1, 3, 16, 16))
    result = run(gm, ctx)
    assert result.modified
    (c,) = result.changes
    assert c.before.endswith("[2, -1])") and c.after.endswith("[batch, -1])")
    assert c.source == f"{SEED_FILE}:{sm.line_of(sm.IntSizeView, 'int-view')}"
    for b in (1, 5, 32):
        assert_same(gm, model, torch.randn(b, 3, 16, 16))


def test_batch_inside_seq_first_attention_fits_a_times_batch(traced):
    model = sm.SeqFirstAttention()
    gm, ctx = traced(model, torch.randn(5, 1, 32), batch_dims=(1,))
    result = run(gm, ctx)
    assert any("4*batch" in c.after for c in result.changes)
    assert_same(gm, model, torch.randn(5, 7, 32))


def test_two_dynamic_dims(traced):
    model = sm.SpeechEncoder()
    x, mask = torch.randn(1, 30, 80), torch.ones(1, 1, 30)
    gm, ctx = traced(model, (x, mask), batch=(1, 2, 4), dynamic={0: {1: (20, 50, 100)}, 1: {2: (20, 50, 100)}})
    assert len(ctx.captured.captures) == 4, "two dims need the four corners"
    result = run(gm, ctx)
    assert any("batch" in c.after and "x_dim1" in c.after for c in result.changes)
    assert_same(gm, model, torch.randn(3, 41, 80), torch.ones(3, 1, 41))


def test_constant_whose_length_follows_the_batch_is_rebuilt(traced):
    class AddRow(torch.nn.Module):
        def forward(self, x):
            return x + torch.tensor([0.5] * x.size(0)).unsqueeze(1)

    gm, ctx = traced(AddRow(), torch.randn(1, 4))
    result = run(gm, ctx)
    assert any("expand" in c.after for c in result.changes)
    assert_same(gm, AddRow(), torch.randn(9, 4))


def test_constant_with_batch_dependent_values_is_refused(traced):
    class Positions(torch.nn.Module):
        def forward(self, x):
            return x + torch.tensor([float(i) for i in range(x.size(0))]).unsqueeze(1)

    gm, ctx = traced(Positions(), torch.randn(1, 4))
    with pytest.raises(GeneralizationError, match="change with the input size"):
        run(gm, ctx)


def test_float_literal_divided_by_the_batch(traced):
    class MeanOverBatch(torch.nn.Module):
        def forward(self, x):
            return x * (1.0 / int(x.size(0)))

    gm, ctx = traced(MeanOverBatch(), torch.randn(1, 4))
    result = run(gm, ctx)
    assert any("/batch" in c.after for c in result.changes)
    assert_same(gm, MeanOverBatch(), torch.randn(6, 4))


def test_sizes_computed_from_shapes_stay_symbolic_and_need_no_rewrite(traced):
    class MeanOverBatch(torch.nn.Module):
        def forward(self, x):
            return x * (1.0 / x.size(0))

    gm, ctx = traced(MeanOverBatch(), torch.randn(1, 4))
    assert ctx.captured.symbolic and len(ctx.captured.captures) == 1
    assert not run(gm, ctx).modified
    assert_same(gm, MeanOverBatch(), torch.randn(6, 4))


def test_a_literal_that_only_looks_affine_on_the_fit_sizes_is_refused(traced):
    class HalfBatch(torch.nn.Module):
        def forward(self, x):
            return x[:, : int(x.size(0)) // 2 + 1]  # 2 at B=2 and B=3, 3 at B=4

    gm, ctx = traced(HalfBatch(), torch.randn(1, 12), batch=(1, 2, 12))
    with pytest.raises(GeneralizationError, match="non-affinely") as info:
        run(gm, ctx)
    assert info.value.source.startswith(SEED_FILE.replace("seed_models.py", "passes/test_generalize_batch.py"))


def test_per_sample_loop_is_refused_at_the_loop_line(traced):
    gm, ctx = traced(sm.PerSampleLoop(), torch.randn(1, 8))
    with pytest.raises(GeneralizationError) as info:
        run(gm, ctx)
    assert info.value.source == f"{SEED_FILE}:{sm.line_of(sm.PerSampleLoop, 'loop')}"


def test_static_model_is_left_alone(traced):
    gm, ctx = traced(sm.SizeView(), torch.randn(2, 3, 16, 16), batch=None)
    code = gm.code
    assert not generalize_batch(gm, ctx).modified and gm.code == code


def test_a_value_read_from_an_input_is_refused_at_its_line(traced):
    """The pass's declared precondition: the manager raises the first read it refuses."""
    class ReadsLength(torch.nn.Module):
        def forward(self, x, lengths):
            n = max(lengths.tolist())  # value read
            return x[:, :n]

    gm, ctx = traced(ReadsLength(), (torch.randn(1, 8), torch.tensor([4])), batch_dims=(0, None))
    with pytest.raises(GeneralizationError, match="read from tensor contents") as info:
        run(gm, ctx)
    assert info.value.source.endswith(f"test_generalize_batch.py:{_line('# value read')}")


def test_the_traces_it_aligns_are_returned_and_the_context_is_left_as_it_was(traced):
    """torch writes a no-op crop as ``alias`` at even lengths: the pass aligns copies of the other
    traces and returns them in ``PassResult.captured``; the frozen context's traces are untouched."""
    model = PoolThenUpsample1d().eval()
    gm, ctx = traced(model, torch.randn(2, 12, 8), batch=None, dynamic={0: {1: ("seq", 8, 12, 12)}})
    others = ctx.captured.captures[1:] + ctx.captured.checks
    codes = [c.gm.code for c in others]
    aliases = sum(n.target == aten.alias.default for c in others for n in c.gm.graph.nodes)
    assert aliases, "the check trace at an even length has the alias"
    result = run(gm, ctx)
    assert [c.gm.code for c in others] == codes, "the context's traces are as the frontend left them"
    learned = result.captured.captures[1:] + result.captured.checks
    assert not any(n.target == aten.alias.default for c in learned for n in c.gm.graph.nodes)
    assert [c.sizes for c in learned] == [c.sizes for c in others]


def _line(marker):
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, t in enumerate(lines, start=1) if marker in t and "_line(" not in t)
