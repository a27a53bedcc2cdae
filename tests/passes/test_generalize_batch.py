from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch

from fxtrt.errors import GeneralizationError
from fxtrt.passes.drop_shape_guards import drop_shape_guards
from fxtrt.passes.generalize_batch import fit, generalize_batch
from tests import seed_models as sm
from tests.passes.conftest import assert_same

SEED_FILE = str(Path(sm.__file__).resolve())


def run(gm, ctx):
    drop_shape_guards(gm, ctx)
    return generalize_batch(gm, ctx)


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
