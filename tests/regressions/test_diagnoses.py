"""Issue 17, class 7: refusals name the real cause, at the user's line."""
from __future__ import annotations

import inspect

import pytest
import torch

import fxtrt
from fxtrt.frontend.source import is_library


def _line(cls, tag: str) -> str:
    lines, start = inspect.getsourcelines(cls)
    return f"{__file__}:{start + next(i for i, t in enumerate(lines) if f'# {tag}' in t)}"


class CountsSamples(torch.nn.Module):
    def forward(self, x):
        return x + len(x.unbind(0))  # COUNT


class OnePerSample(torch.nn.Module):
    def forward(self, x):
        return tuple(row * 2 for row in x)  # LOOP


def test_reading_the_batch_size_as_a_value_is_named_not_a_batch_statistic():
    with pytest.raises(fxtrt.VerificationError, match="reads the batch size as a value") as info:
        fxtrt.compile(CountsSamples().eval(), torch.randn(1, 4), batch=(1, 4, 8))
    assert "statistic over the batch" not in info.value.message
    assert info.value.source == _line(CountsSamples, "COUNT")


def test_a_statistic_over_the_batch_is_still_named_as_one():
    class Centred(torch.nn.Module):
        def forward(self, x):
            return torch.stack([r * (i + 1) for i, r in enumerate(x)]) - x.mean(0)

    with pytest.raises(fxtrt.VerificationError, match="statistic over the batch"):
        fxtrt.compile(Centred().eval(), torch.randn(1, 4), batch=(1, 4, 8))


def test_one_output_per_sample_says_the_number_of_outputs_follows_the_batch():
    with pytest.raises(fxtrt.GeneralizationError, match="the number of outputs follows the batch size") as info:
        fxtrt.compile(OnePerSample().eval(), torch.randn(1, 4), batch=(1, 4, 8))
    assert info.value.source == _line(OnePerSample, "LOOP")
    assert "returned 1 tensors" not in str(info.value)


def test_sympy_and_numpy_frames_are_never_a_source():
    import numpy
    import sympy

    assert is_library(sympy.__file__) and is_library(numpy.__file__)


class LoopAndCondOnBatch(torch.nn.Module):
    """A per-sample loop (so a bucket set serves it) and a branch on the batch size: batch 2
    padded to bucket 4 would take the other branch, at a size verification does not visit."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        x = torch.stack([self.fc(row) * (i + 1) for i, row in enumerate(x)])
        return torch.cond(x.size(0) > 2, lambda t: t * 2 + 1, lambda t: t.flip(1) - 1, (x,))  # COND


def test_a_bucket_set_for_a_model_that_branches_on_the_batch_size_is_refused():
    with pytest.raises(fxtrt.VerificationError, match="reads the batch size as a value"):
        fxtrt.compile(LoopAndCondOnBatch().eval(), torch.randn(1, 6, 8), batch=(1, 4, 8))
