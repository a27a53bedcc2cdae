"""Deferred runtime asserts are checked at every size the artifact claims."""
from __future__ import annotations

import pytest
import torch

import fxtrt
from torch.export import Dim

from fxtrt.errors import ConfigError
from fxtrt.frontend.guards import check_deferred_asserts
from fxtrt.settings import DynamicDim


class NotMultipleOfThree(torch.nn.Module):
    def forward(self, x):
        torch._check(x.shape[1] % 3 != 0)  # only some sizes are valid
        return x * 2


class EvenSplit(torch.nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], 2, x.shape[1] // 2)


def _export(model, h, step=None):
    dim = Dim("h", min=4 // (step or 1), max=64 // (step or 1))
    shape = {1: dim if step is None else step * dim}
    return torch.export.export(model, (torch.randn(2, h),), dynamic_shapes=(shape,), strict=False,
                               prefer_deferred_runtime_asserts_over_guards=True)


def _dim(step=None):
    return DynamicDim("h", 4, 16, 64, ((0, 1),), 16, step)


def test_an_assert_failing_inside_the_range_is_a_hole_sampled_where_it_fails():
    check = check_deferred_asserts(_export(NotMultipleOfThree(), 16), [_dim()])
    (hole,) = check.holes
    assert hole.points == ({"h": 6}, {"h": 36}, {"h": 63}), "first, middle and last of 6, 9, ..., 63"
    assert "Ne(Mod(h, 3), 0)" in hole.fact and hole.covers({"batch": 2, "h": 36}) and not hole.covers({"h": 7})
    # torch records no stack for some deferred asserts; then there is no line, never torch's own
    assert hole.source is None or "test_guards.py" in hole.source


def test_a_step_restricts_the_check_to_the_sizes_claimed():
    assert check_deferred_asserts(_export(EvenSplit(), 16, step=2), [_dim(step=2)]).holes == ()
    assert check_deferred_asserts(_export(EvenSplit(), 16), [_dim()]).holes[0].points[0] == {"h": 5}


def test_a_hole_where_the_model_cannot_run_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"served only on multiples of 2: the model runs at 4, 6, 8 and fails at "
                                          r"h=5.*which fails at h=5") as info:
        fxtrt.compile(EvenSplit(), torch.randn(2, 16), batch=None, dynamic={0: {1: ("h", 4, 16, 64)}},
                      out_dir=tmp_path / "out")
    assert info.value.hint == "declare the step: (4, 16, 64, 2) for 'h'"
    assert info.value.source is not None and "test_guards.py" in info.value.source
    assert not (tmp_path / "out").exists()


class ParityBranch(torch.nn.Module):
    def forward(self, x):
        if x.size(2) % 4 == 0:  # another path at multiples of 4
            return x * 2
        return x + 1


def test_a_hole_where_the_model_takes_another_path_names_the_assumption(tmp_path):
    r = ("hw", 8, 11, 20)
    with pytest.raises(fxtrt.VerificationError, match=r"assuming Ne\(Mod\(hw, 4\), 0\), which fails at hw=8, "
                                                      r"hw=16, hw=20; there the artifact differs"):
        fxtrt.compile(ParityBranch(), torch.randn(1, 4, 11, 11), batch=(1, 2, 4), dynamic={0: {2: r, 3: r}},
                      out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_asserts_that_hold_everywhere_are_counted_in_a_note():
    class EvenProduct(torch.nn.Module):
        def forward(self, x):
            h = x.shape[1]
            torch._check((h * h + h) % 2 == 0)  # true for every h; sympy cannot prove it
            return x + 1

    check = check_deferred_asserts(_export(EvenProduct(), 16), [_dim()])
    assert check.exhaustive and check.asserts == 1 and check.points == 61  # h = 4..64
    assert "hold" in check.note()


def test_failures_only_at_the_low_end_of_one_dim_raise_its_low():
    from fxtrt.frontend.guards import _low_end

    assert _low_end([(4,), (5,)], [range(4, 10)]) == (0, 6)
    assert _low_end([(6,)], [range(4, 10)]) is None, "a hole inside the range is not a low end"
    both = [(b, t) for b in range(1, 4) for t in (1, 2)]
    assert _low_end(both, [range(1, 4), range(1, 6)]) == (1, 3)
    assert _low_end(both[:-1], [range(1, 4), range(1, 6)]) is None
